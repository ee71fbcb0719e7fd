package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/message"
)

// TestChaos runs the short (CI) chaos run: 2,000 sagas with the full mix
// of orders (coupon orders racing for three codes with small limits
// included) and bad input, sent through five partitioners (murmur2, CRC32,
// FNV-1a, random, round-robin), with bursts of large orders; two engine
// SIGKILLs, a participant SIGKILL, a participant crash-loop, a SIGSTOP past
// the transaction timeout, a Redis FLUSHALL, a Redis restart, a Redis
// rollback to an older snapshot, ten rollbacks aimed at the engines' batch
// reads (in surges of orders), state keys deleted and evicted, a Redis
// SIGSTOPped past the transaction timeout, a broker restart, an
// orders-store outage, a hung and a panicking complete-order, injected
// EndTxn, TxnOffsetCommit and Produce errors, and a coupon participant
// silent past reserve-coupon's attempts, so that orders park and are
// resumed or compensated; then chaos/check. It takes about six minutes, a
// minute and a half of them the coupon participant's silence.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("a chaos run takes about two minutes; run without -short")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found: install it (apt-get install redis-server or ./scripts/test-deps.sh): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	cfg := config{Short: true, WithSigstop: true, DrainTimeout: 2 * time.Minute}
	if err := run(ctx, cfg, testWriter{t}); err != nil {
		t.Fatalf("chaos run: %v", err)
	}
}

// testWriter sends the harness's output to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestPlan holds the load to its mix, with and without the bound that a
// retention puts on how far back records keyed by an earlier saga reach.
func TestPlan(t *testing.T) {
	for _, recent := range []int{0, 100} {
		t.Run(fmt.Sprintf("recent %d", recent), func(t *testing.T) { testPlan(t, recent) })
	}
}

func testPlan(t *testing.T, recent int) {
	const n = 2000
	p := newPlan(n, rand.New(rand.NewPCG(1, 2)), recent)
	if got, want := len(p.sagas), n+p.large+p.transfers; got != want {
		t.Fatalf("got %d sagas, want %d (%d large, %d transfers)", got, want, p.large, p.transfers)
	}
	if p.transfers < n/localEvery-1 {
		t.Errorf("got %d transfers of the local-first saga, want about %d", p.transfers, n/localEvery)
	}
	if p.bursts < 3 || p.large != p.bursts*largeBurst {
		t.Errorf("got %d large orders in %d bursts, want at least 3 bursts of %d", p.large, p.bursts, largeBurst)
	}
	if len(p.recs) != len(p.via) {
		t.Fatalf("%d records, %d partitioners", len(p.recs), len(p.via))
	}
	for _, via := range partitionerNames {
		if p.partitioners[via] < n/20 {
			t.Errorf("only %d records through %s", p.partitioners[via], via)
		}
	}
	for _, v := range poisonVariants {
		if got := p.variants[v.name]; got == 0 {
			t.Errorf("variant %s never sent", v.name)
		}
	}
	if got, want := p.kinds[kindPoison], n/100; got < want {
		t.Errorf("got %d poison records, want at least %d", got, want)
	}
	kinds := make(map[string]int)
	for _, e := range p.sagas {
		kinds[e.Kind]++
	}
	for _, m := range localMix {
		want := p.transfers * m.weight / 100
		if got := kinds[m.kind]; got < want/2 || got > want*2 {
			t.Errorf("got %d %s transfers, want about %d", got, m.kind, want)
		}
	}
	for _, m := range mix {
		want := n * m.weight / 100
		if got := kinds[m.kind]; got < want/2 || got > want*2 {
			t.Errorf("got %d %s orders, want about %d", got, m.kind, want)
		}
	}
	// Coupon orders outnumber each code's coupons, so that the codes run
	// out; some declined and undeliverable orders hold a coupon too.
	perCode := make(map[string]int)
	compensatedWithCoupon := 0
	for _, e := range p.sagas {
		switch {
		case e.Order == nil:
			if e.Transfer == nil {
				t.Errorf("%s saga %s has neither an order nor a transfer", e.Kind, e.ID)
			}
		case e.Kind == kindCoupon:
			perCode[e.Order.Coupon]++
		case e.Kind == kindCouponUnknown:
			if e.Order.Coupon != couponUnknown {
				t.Errorf("coupon-unknown order %s carries %q, want %s", e.ID, e.Order.Coupon, couponUnknown)
			}
		case (e.Kind == kindDeclined || e.Kind == kindUndeliverable) && e.Order.Coupon != "":
			compensatedWithCoupon++
		case e.Kind != kindCoupon && e.Order.Coupon != "":
			t.Errorf("%s order %s carries a coupon", e.Kind, e.ID)
		}
	}
	for code, limit := range p.coupons {
		if int64(perCode[code]) <= limit {
			t.Errorf("coupon %s: %d orders for %d coupons, want more orders than coupons", code, perCode[code], limit)
		}
	}
	if compensatedWithCoupon < n/50 {
		t.Errorf("only %d declined or undeliverable orders hold a coupon", compensatedWithCoupon)
	}
	// Every duplicate start is sent twice, the second time after the first.
	starts := make(map[string][]int)
	compensates := make(map[string]int)
	markers := make(map[string]bool)
	viaOfMarker := make(map[string]string)
	for i, r := range p.recs {
		if r.Topic != message.Inbox("order") && r.Topic != message.Inbox(localfirst.Name) {
			t.Fatalf("record %d goes to %s", i, r.Topic)
		}
		if (r.Topic == message.Inbox(localfirst.Name)) != (p.sagas[string(r.Key)] != nil && p.sagas[string(r.Key)].Transfer != nil) {
			t.Errorf("record %d for %s goes to %s", i, r.Key, r.Topic)
		}
		if m := header(r, headerMarker); m != "" {
			if markers[m] {
				t.Errorf("marker %s used twice", m)
			}
			markers[m] = true
			viaOfMarker[m] = p.via[i]
			continue
		}
		switch header(r, message.HeaderMessageType) {
		case message.TypeStartSaga:
			starts[string(r.Key)] = append(starts[string(r.Key)], i)
		case message.TypeCompensate:
			// A Compensate waits for its saga's start, sent before it
			// through murmur2.
			dep, ok := p.after[i]
			if !ok || dep >= i || string(p.recs[dep].Key) != string(r.Key) || header(p.recs[dep], message.HeaderMessageType) != message.TypeStartSaga {
				t.Errorf("Compensate %d for %s does not wait for its saga's start (after %v, %v)", i, r.Key, dep, ok)
			}
			if p.sagas[string(r.Key)].Via != viaMurmur2 {
				t.Errorf("compensate order %s started via %s, want murmur2", r.Key, p.sagas[string(r.Key)].Via)
			}
			compensates[string(r.Key)]++
		}
	}
	for id, e := range p.sagas {
		n := len(starts[id])
		switch {
		case e.Kind == kindDupStart && n != 2 && n != 1:
			t.Errorf("dup-start %s sent %d times", id, n)
		case e.Kind != kindDupStart && n != 1:
			t.Errorf("%s %s sent %d times, want once", e.Kind, id, n)
		}
	}
	if p.dupSends == 0 {
		t.Error("no duplicate start sent")
	}
	strays := make(map[string]int)
	for _, e := range p.exps {
		if e.Kind == kindPoison && (e.Marker == "" || e.Poison == "") {
			t.Errorf("poison expectation %+v has no marker or reason", e)
		}
		if (e.Kind == kindCompensate || e.Kind == kindLocalCompensate) && compensates[e.ID] != 1 {
			t.Errorf("compensate order %s got %d Compensates, want 1", e.ID, compensates[e.ID])
		}
		if p.landing[findRecord(p, e.Marker)] == e {
			strays[viaOfMarker[e.Marker]]++
		}
		// A record keyed by a live saga must land after its start.
		if e.Kind == kindPoison && e.Variant != "" && p.sagas[e.ID] != nil && p.sagas[e.ID].Via != viaMurmur2 {
			t.Errorf("poison %s is keyed by %s, which started via %s", e.Marker, e.ID, p.sagas[e.ID].Via)
		}
	}
	for _, via := range foreignPartitioners {
		if strays[via] == 0 {
			t.Errorf("no stray record through %s", via)
		}
	}
	if len(compensates) == 0 {
		t.Error("no Compensate sent")
	}
	// The large orders of a burst share a home partition and fit the
	// inbox's 256 KiB limit.
	homes := make(map[int]map[int32]bool)
	for _, r := range p.recs {
		e := p.sagas[string(r.Key)]
		if e == nil || !e.Large || header(r, message.HeaderMessageType) != message.TypeStartSaga {
			continue
		}
		if len(r.Value) < largeField || len(r.Value) > 256<<10 {
			t.Errorf("large order %s is %d bytes, want %d..%d", e.ID, len(r.Value), largeField, 256<<10)
		}
		var burst int
		fmt.Sscanf(e.ID, "o-large-%d-", &burst)
		if homes[burst] == nil {
			homes[burst] = make(map[int32]bool)
		}
		homes[burst][message.HomePartition(e.ID, partitions)] = true
	}
	for b, hs := range homes {
		if len(hs) != 1 {
			t.Errorf("burst %d spans home partitions %v", b, hs)
		}
	}
	// Every record keyed by a saga of the load after its first start is
	// one that sendLoad may hold back (plan.reuses); with recent, the
	// duplicate starts come at most about that many records after the
	// first, and the records keyed by an earlier saga pick one of the
	// last recent sagas.
	first := make(map[string]int)
	reused := 0
	for i, r := range p.recs {
		id := string(r.Key)
		if p.sagas[id] == nil {
			continue
		}
		j, seen := first[id]
		if !seen {
			first[id] = i
			if _, ok := p.reuses[i]; ok {
				t.Errorf("record %d, the first of saga %s, is in reuses", i, id)
			}
			continue
		}
		reused++
		if got, ok := p.reuses[i]; !ok || got != j {
			t.Errorf("record %d for saga %s: reuses has %d (%v), want its start %d", i, id, got, ok, j)
		}
		if recent > 0 && header(r, message.HeaderMessageType) == message.TypeStartSaga && header(r, headerMarker) == "" && i-j > recent+50 {
			t.Errorf("second start of %s %d records after the first, want at most about %d", id, i-j, recent)
		}
		if recent > 0 && header(r, headerMarker) != "" && slices.Index(p.ids, id) < slices.Index(p.ids, idAt(p, i))-recent {
			t.Errorf("poison %s is keyed by %s, more than %d sagas back", header(r, headerMarker), id, recent)
		}
	}
	if reused != len(p.reuses) {
		t.Errorf("reuses has %d records, want %d", len(p.reuses), reused)
	}
}

// idAt returns the id of the latest saga started at or before record i.
func idAt(p *plan, i int) string {
	for ; i >= 0; i-- {
		id := string(p.recs[i].Key)
		if p.sagas[id] != nil && header(p.recs[i], message.HeaderMessageType) == message.TypeStartSaga && header(p.recs[i], headerMarker) == "" {
			return id
		}
	}
	return ""
}

// A record that sendLoad holds back leaves what the load expects: a
// poison record is not checked, a second start or a Compensate is not
// counted.
func TestSkip(t *testing.T) {
	p := newPlan(2000, rand.New(rand.NewPCG(1, 2)), 0)
	dups, comps := p.dupSends, p.compensates
	skipped := map[string]int{}
	for i := range p.reuses {
		r := p.recs[i]
		p.skip(i)
		switch m := header(r, headerMarker); {
		case m != "":
			skipped["poison"]++
			for _, e := range p.exps {
				if e.Marker == m && !e.Skipped {
					t.Errorf("poison %s not marked skipped", m)
				}
			}
		case header(r, message.HeaderMessageType) == message.TypeStartSaga:
			skipped["second start"]++
		case header(r, message.HeaderMessageType) == message.TypeCompensate:
			skipped["Compensate"]++
		default:
			skipped["other"]++
		}
	}
	if !maps.Equal(p.skipped, skipped) {
		t.Errorf("got skipped %v, want %v", p.skipped, skipped)
	}
	if p.dupSends != dups-skipped["second start"] || p.compensates != comps-skipped["Compensate"] {
		t.Errorf("got %d second starts and %d Compensates, want %d and %d", p.dupSends, p.compensates, dups-skipped["second start"], comps-skipped["Compensate"])
	}
	if skipped["second start"] == 0 || skipped["Compensate"] == 0 || skipped["poison"] == 0 {
		t.Errorf("the plan reuses no second start, Compensate or poison record: %v", skipped)
	}
}

// findRecord returns the record of p tagged with marker.
func findRecord(p *plan, marker string) *kgo.Record {
	for _, r := range p.recs {
		if header(r, headerMarker) == marker {
			return r
		}
	}
	return nil
}

// The partitioners place keys as the clients they imitate do; the vectors
// are those of kafka-go's balancer tests (FNV-1a) and librdkafka's
// 0048-partitioner test (CRC32, murmur2).
func TestPartitioners(t *testing.T) {
	cases := []struct {
		via  string
		key  string
		n    int
		want int
	}{
		{viaFNV1a, "blah", 2, 0},
		{viaFNV1a, "blah", 3, 1},
		{viaFNV1a, "boop", 3, 2},
		{viaFNV1a, "20", 16, 1}, // hash with its top bit set
		{viaCRC32, "23456", 17, 0xb1b451d7 % 17},
		{viaCRC32, "this is another string with more length to it perhaps", 17, 0xb0150df7 % 17},
		{viaCRC32, "hejsan", 17, 0xd077037e % 17},
		{viaMurmur2, "23456", 17, 0x058d780f % 17},
		{viaMurmur2, "hejsan", 17, 0x5ec19395 % 17},
	}
	for _, c := range cases {
		tp := newPartitioner(c.via).ForTopic("t")
		if got := tp.Partition(&kgo.Record{Key: []byte(c.key)}, c.n); got != c.want {
			t.Errorf("%s(%q) over %d partitions = %d, want %d", c.via, c.key, c.n, got, c.want)
		}
	}
	// murmur2 is ksaga's home partition.
	for i := range 1000 {
		id := fmt.Sprintf("o-%06d", i)
		if got, want := newPartitioner(viaMurmur2).ForTopic("t").Partition(&kgo.Record{Key: []byte(id)}, partitions), message.HomePartition(id, partitions); int32(got) != want {
			t.Fatalf("murmur2(%s) = %d, home partition %d", id, got, want)
		}
	}
	// The foreign partitioners send most saga ids elsewhere.
	for _, via := range foreignPartitioners {
		tp, off := newPartitioner(via).ForTopic("t"), 0
		for i := range 600 {
			id := fmt.Sprintf("o-%06d", i)
			if int32(tp.Partition(&kgo.Record{Key: []byte(id)}, partitions)) != message.HomePartition(id, partitions) {
				off++
			}
		}
		if off < 300 {
			t.Errorf("%s sends only %d of 600 ids off their home partition", via, off)
		}
	}
	rr := newPartitioner(viaRoundRobin).ForTopic("t")
	for i := range 12 {
		if got := rr.Partition(&kgo.Record{Key: []byte("same")}, partitions); got != i%partitions {
			t.Fatalf("round-robin record %d went to %d, want %d", i, got, i%partitions)
		}
	}
}

// The coupon participant's silence in a coupon-park parks a saga whose
// reserve-coupon was sent right after it began, surge and restart
// included, and ends before a coupon's compensation sent when it began
// would give up.
func TestCouponWindow(t *testing.T) {
	parkAfter, silentMax := couponWindow()
	if parkAfter <= 0 {
		t.Fatalf("reserve-coupon parks after %v: the order saga has no such step", parkAfter)
	}
	if need := parkAfter + parkSurgeOver + time.Second; need > silentMax-parkRestartFor {
		t.Errorf("a surge sent over %v parks %v after the coupon participant stops at the latest (%v of attempts, 1s of slack), but it must be back by %v (%v minus %v to restart it)",
			parkSurgeOver, need, parkAfter, silentMax-parkRestartFor, silentMax, parkRestartFor)
	}
	if faultDurations[faultCouponPark] != silentMax {
		t.Errorf("coupon-park takes %v in the schedule, want %v", faultDurations[faultCouponPark], silentMax)
	}
	args := []string{"--engine=false", "--participants", "all", "--static-membership"}
	if got, want := withoutCoupon(args), []string{"--engine=false", "--participants", "inventory,payment,shipping", "--static-membership"}; !slices.Equal(got, want) {
		t.Errorf("withoutCoupon(%q) = %q, want %q", args, got, want)
	}
	if args[2] != "all" {
		t.Errorf("withoutCoupon changed its argument: %q", args)
	}
	// Each coupon-park has a surge of coupon orders of its own.
	p := newPlan(200, rand.New(rand.NewPCG(1, 2)), 0)
	n := len(p.sagas)
	p.addParkSurges(2, rand.New(rand.NewPCG(3, 4)))
	if len(p.parkSurges) != 2 || len(p.sagas) != n+2*parkSurgeSize {
		t.Fatalf("got %d park surges and %d new sagas, want 2 and %d", len(p.parkSurges), len(p.sagas)-n, 2*parkSurgeSize)
	}
	for _, recs := range p.parkSurges {
		for _, r := range recs {
			e := p.sagas[string(r.Key)]
			if e == nil || e.Kind != kindCoupon || e.Order.Coupon == "" || header(r, message.HeaderMessageType) != message.TypeStartSaga {
				t.Errorf("park surge record %s: want the start of a coupon order, got %+v", r.Key, e)
			}
		}
	}
}

func TestSchedule(t *testing.T) {
	counts := map[string]int{faultSigkillEngine: 4, faultRedisFlushall: 2, faultOrdersOutage: 1, faultSigstopEngine: 1}
	fs, need := schedule(counts, 6*time.Second, rand.New(rand.NewPCG(1, 2)))
	if len(fs) != 8 {
		t.Fatalf("got %d faults, want 8", len(fs))
	}
	got := make(map[string]int)
	for i, f := range fs {
		got[f.kind]++
		if i > 0 {
			if gap := f.at - fs[i-1].at; gap < slot(fs[i-1].kind, 6*time.Second) {
				t.Errorf("fault %d (%s) starts %v after the one before (%s), want at least its slot", i, f.kind, gap, fs[i-1].kind)
			}
		}
	}
	for k, n := range counts {
		if got[k] != n {
			t.Errorf("got %d %s, want %d", got[k], k, n)
		}
	}
	// The first and the last sigkill-engine are far apart: kinds are
	// spread over the schedule.
	var at []time.Duration
	for _, f := range fs {
		if f.kind == faultSigkillEngine {
			at = append(at, f.at)
		}
	}
	if spread := at[len(at)-1] - at[0]; spread < need/2 {
		t.Errorf("sigkill-engine faults span %v of %v, want them spread", spread, need)
	}
	stretch(fs, need, 3*need, faultLead)
	if last := fs[len(fs)-1].at; last < 2*need {
		t.Errorf("after stretching to %v, the last fault is at %v", 3*need, last)
	}
	if !slices.IsSortedFunc(fs, func(a, b fault) int { return int(a.at - b.at) }) {
		t.Error("faults are not in time order")
	}
}
