package main

import (
	"context"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
)

// TestChaos runs the short (CI) chaos run: 2,000 sagas with the full mix
// of orders and bad input; two engine SIGKILLs, a participant SIGKILL, a
// SIGSTOP past the transaction timeout, a Redis FLUSHALL, a Redis restart, a
// broker restart, an orders-store outage and injected EndTxn,
// TxnOffsetCommit and Produce errors; then chaos/check. It takes about two
// minutes.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("a chaos run takes about two minutes; run without -short")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found: install it (apt-get install redis-server or ./scripts/test-deps.sh): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
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

func TestPlan(t *testing.T) {
	const n = 2000
	p := newPlan(n, rand.New(rand.NewPCG(1, 2)))
	if got := len(p.sagas); got != n {
		t.Fatalf("got %d sagas, want %d", got, n)
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
	for _, m := range mix {
		want := n * m.weight / 100
		if got := kinds[m.kind]; got < want/2 || got > want*2 {
			t.Errorf("got %d %s orders, want about %d", got, m.kind, want)
		}
	}
	// Every duplicate start is sent twice, the second time after the first.
	starts := make(map[string][]int)
	markers := make(map[string]bool)
	for i, r := range p.recs {
		if r.Topic != message.Inbox("order") {
			t.Fatalf("record %d goes to %s", i, r.Topic)
		}
		if m := header(r, headerMarker); m != "" {
			if markers[m] {
				t.Errorf("marker %s used twice", m)
			}
			markers[m] = true
			continue
		}
		starts[string(r.Key)] = append(starts[string(r.Key)], i)
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
	for _, e := range p.exps {
		if e.Kind == kindPoison && (e.Marker == "" || e.Poison == "") {
			t.Errorf("poison expectation %+v has no marker or reason", e)
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
