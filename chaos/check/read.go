package check

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/internal/committed"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// Config is where a run left its data and what it must come to.
type Config struct {
	Brokers []string
	// EngineRedis is the engine's Redis; SimRedis holds the participants'
	// ledgers; OrdersRedis the orders store.
	EngineRedis, SimRedis, OrdersRedis string
	// SagaType names the topics and the engine's keys ("order").
	SagaType string
	// LocalFirst says the run also ran the local-first saga (package
	// localfirst): its topics, its states in the engine's Redis and its
	// ledgers are read too. Its holds are on HoldsRedis (default
	// OrdersRedis), its approvals on SimRedis.
	LocalFirst   bool
	HoldsRedis   string
	InitialStock map[string]int64
	// InitialCoupons are the coupon limits seeded, by code.
	InitialCoupons map[string]int64
	Expect         []Expectation
	// Idle is how long the topics must be quiet before they are read to
	// the end (default DefaultIdle).
	Idle time.Duration
	// ReadTimeout bounds reading the topics (default 5 minutes).
	ReadTimeout time.Duration
	// Retention is the engines' retention (sagad --retention): an ended
	// saga is deleted from the state topic and Redis this long after it
	// ended (InvRetention). 0 means the engines keep ended sagas forever,
	// so any tombstone is an anomaly.
	Retention time.Duration
}

// DeleteGrace is how long Read waits for the engine to delete the Redis
// key of a saga whose tombstone it read: the engine deletes the key once
// the tombstone's transaction has committed, so the Redis view read
// before the topics may still hold it.
const DeleteGrace = 10 * time.Second

// Run reads everything back and analyzes it.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	d, read, err := Read(ctx, cfg)
	if err != nil {
		return nil, err
	}
	rep := Analyze(cfg.Expect, Initial{Stock: cfg.InitialStock, Coupons: cfg.InitialCoupons}, d)
	rep.Read = read
	return rep, nil
}

// Read gathers the Data of a run: every committed record of the saga's
// state, events and dead-letter topics and of the participants' command and
// dead-letter topics, the engine's saga states in Redis, the participants'
// ledgers (coupons included) and the orders store. It returns a line saying what it read.
//
// Once the topics are quiet, it reads the engine's Redis view first and
// the topics after, up to ends listed then: while ended sagas expire (a
// retention), a saga whose key the view has lost was deleted by a
// tombstone committed before, which the topics then hold. A saga whose
// tombstone the topics hold while the view still had its key gets
// DeleteGrace for its key to go.
func Read(ctx context.Context, cfg Config) (*Data, string, error) {
	if cfg.OrdersRedis == "" {
		return nil, "", errors.New("check: Config.OrdersRedis is required")
	}
	if cfg.Idle <= 0 {
		cfg.Idle = DefaultIdle
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 5 * time.Minute
	}
	d := &Data{
		Events: make(map[string][]message.Event), States: make(map[string][]byte),
		StatePartitions: make(map[string][]int32),
		Redis:           make(map[string]RedisState), RedisDuplicates: make(map[string][]RedisState),
		Commands: make(map[CommandKey]int),
		Stock:    make(map[string]int64), Reservations: make(map[string]map[string]string),
		Payments: make(map[string]map[string]string), Shipments: make(map[string]map[string]string),
		Orders:  make(map[string]map[string]string),
		Coupons: make(map[string]CouponLedger), CouponClaims: make(map[string]map[string]string),
		Holds: make(map[string]map[string]string), Held: make(map[string]int64), Approvals: make(map[string]map[string]string),
		Tombstones: make(map[string][]Tombstone), Retention: cfg.Retention,
	}
	tr, err := newTopicReader(cfg)
	if err != nil {
		return nil, "", err
	}
	defer tr.close()
	if err := tr.waitQuiet(ctx); err != nil {
		return nil, "", err
	}
	eng := redis.NewClient(&redis.Options{Addr: cfg.EngineRedis})
	defer eng.Close()
	var view []string
	for _, t := range cfg.types() {
		n, err := scanHashes(ctx, eng, orchestrator.StateKeyPattern(t), func(key string, h map[string]string) {
			id, p := parseStateKey(t, key)
			rs := RedisState{Key: key, Partition: p, Version: h["version"], State: []byte(h["state"])}
			if _, ok := d.Redis[id]; ok {
				d.RedisDuplicates[id] = append(d.RedisDuplicates[id], rs)
				return
			}
			d.Redis[id] = rs
		})
		if err != nil {
			return nil, "", fmt.Errorf("engine redis %s: %w", cfg.EngineRedis, err)
		}
		view = append(view, fmt.Sprintf("%d engine states of %s", n, t))
	}
	counts, err := tr.read(ctx, d)
	if err != nil {
		return nil, "", err
	}
	counts = append(counts, view...)
	if n, err := awaitDeleted(ctx, eng, d); err != nil {
		return nil, "", fmt.Errorf("engine redis %s: %w", cfg.EngineRedis, err)
	} else if n > 0 {
		counts = append(counts, fmt.Sprintf("%d engine states deleted after their tombstones while the topics were read", n))
	}

	ord := redis.NewClient(&redis.Options{Addr: cfg.OrdersRedis})
	defer ord.Close()
	orderPrefix := sim.OrderKey("")
	n, err := scanHashes(ctx, ord, orderPrefix+"*", func(key string, h map[string]string) {
		d.Orders[strings.TrimPrefix(key, orderPrefix)] = h
	})
	if err != nil {
		return nil, "", fmt.Errorf("orders store redis %s: %w", cfg.OrdersRedis, err)
	}
	counts = append(counts, fmt.Sprintf("%d orders in the orders store", n))

	rdb := redis.NewClient(&redis.Options{Addr: cfg.SimRedis})
	defer rdb.Close()
	for _, l := range []struct {
		prefix string
		m      map[string]map[string]string
	}{
		{sim.ReservationKey(""), d.Reservations},
		{sim.PaymentKey(""), d.Payments},
		{sim.ShipmentKey(""), d.Shipments},
		{sim.CouponClaimKey(""), d.CouponClaims},
	} {
		n, err := scanHashes(ctx, rdb, l.prefix+"*", func(key string, h map[string]string) {
			l.m[strings.TrimPrefix(key, l.prefix)] = h
		})
		if err != nil {
			return nil, "", fmt.Errorf("participants' redis %s: %w", cfg.SimRedis, err)
		}
		counts = append(counts, fmt.Sprintf("%d %s", n, strings.TrimSuffix(strings.TrimPrefix(l.prefix, "ksaga:sim:"), ":")))
	}
	stockPrefix := sim.StockKey("")
	keys, err := scanKeys(ctx, rdb, stockPrefix+"*")
	if err != nil {
		return nil, "", fmt.Errorf("participants' redis %s: %w", cfg.SimRedis, err)
	}
	for _, k := range keys {
		v, err := rdb.Get(ctx, k).Int64()
		if err != nil {
			return nil, "", fmt.Errorf("participants' redis %s: stock %s: %w", cfg.SimRedis, k, err)
		}
		d.Stock[strings.TrimPrefix(k, stockPrefix)] = v
	}
	if err := readCoupons(ctx, rdb, d); err != nil {
		return nil, "", fmt.Errorf("participants' redis %s: %w", cfg.SimRedis, err)
	}
	var issued []string
	for _, code := range slices.Sorted(maps.Keys(d.Coupons)) {
		l := d.Coupons[code]
		issued = append(issued, fmt.Sprintf("%s %d/%d", code, l.Issued, l.Limit))
	}
	counts = append(counts, fmt.Sprintf("%d coupon claims, coupons issued/limit: %s", len(d.CouponClaims), strings.Join(issued, " ")))
	if cfg.LocalFirst {
		c, err := readLocal(ctx, cfg, d)
		if err != nil {
			return nil, "", err
		}
		counts = append(counts, c)
	}
	return d, strings.Join(counts, ", "), nil
}

// types returns the saga types whose topics and states Read reads.
func (cfg Config) types() []string {
	if cfg.LocalFirst {
		return []string{cfg.SagaType, localfirst.Name}
	}
	return []string{cfg.SagaType}
}

// readLocal reads the local-first saga's ledgers: the holds and the
// accounts' held totals on cfg.HoldsRedis, the approvals on cfg.SimRedis.
func readLocal(ctx context.Context, cfg Config, d *Data) (string, error) {
	addr := cfg.HoldsRedis
	if addr == "" {
		addr = cfg.OrdersRedis
	}
	holds := redis.NewClient(&redis.Options{Addr: addr})
	defer holds.Close()
	prefix := localfirst.HoldKey("")
	n, err := scanHashes(ctx, holds, prefix+"*", func(key string, h map[string]string) {
		d.Holds[strings.TrimPrefix(key, prefix)] = h
	})
	if err != nil {
		return "", fmt.Errorf("holds redis %s: %w", addr, err)
	}
	prefix = localfirst.HeldKey("")
	keys, err := scanKeys(ctx, holds, prefix+"*")
	if err != nil {
		return "", fmt.Errorf("holds redis %s: %w", addr, err)
	}
	for _, k := range keys {
		v, err := holds.Get(ctx, k).Int64()
		if err != nil {
			return "", fmt.Errorf("holds redis %s: %s: %w", addr, k, err)
		}
		d.Held[strings.TrimPrefix(k, prefix)] = v
	}
	sim := redis.NewClient(&redis.Options{Addr: cfg.SimRedis})
	defer sim.Close()
	prefix = localfirst.ApprovalKey("")
	m, err := scanHashes(ctx, sim, prefix+"*", func(key string, h map[string]string) {
		d.Approvals[strings.TrimPrefix(key, prefix)] = h
	})
	if err != nil {
		return "", fmt.Errorf("participants' redis %s: %w", cfg.SimRedis, err)
	}
	return fmt.Sprintf("%d holds, %d accounts, %d approvals", n, len(keys), m), nil
}

// readCoupons reads the coupon ledger: the keys
// ksaga:sim:coupon:<code>:limit|issued|customers of every code.
func readCoupons(ctx context.Context, rdb *redis.Client, d *Data) error {
	prefix := strings.TrimSuffix(sim.CouponLimitKey(""), ":limit")
	keys, err := scanKeys(ctx, rdb, prefix+"*")
	if err != nil {
		return err
	}
	for _, k := range keys {
		i := strings.LastIndexByte(k, ':')
		code, field := strings.TrimPrefix(k[:i], prefix), k[i+1:]
		l := d.Coupons[code]
		switch field {
		case "limit", "issued":
			v, err := rdb.Get(ctx, k).Int64()
			if err != nil {
				return fmt.Errorf("coupon %s: %s: %w", code, field, err)
			}
			if field == "limit" {
				l.Limit, l.HasLimit = v, true
			} else {
				l.Issued = v
			}
		case "customers":
			if l.Customers, err = rdb.SMembers(ctx, k).Result(); err != nil {
				return fmt.Errorf("coupon %s: customers: %w", code, err)
			}
		default:
			return fmt.Errorf("unexpected coupon ledger key %s", k)
		}
		d.Coupons[code] = l
	}
	return nil
}

// topicReader reads the topics of a run with read_committed.
type topicReader struct {
	cfg                  Config
	adm                  *kadm.Client
	topics               []string
	states, events, dlts map[string]bool
}

func newTopicReader(cfg Config) (*topicReader, error) {
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		return nil, err
	}
	tr := &topicReader{cfg: cfg, adm: adm, states: make(map[string]bool), events: make(map[string]bool), dlts: make(map[string]bool)}
	for _, t := range cfg.types() {
		tr.states[message.State(t)], tr.events[message.Events(t)], tr.dlts[message.DLT(t)] = true, true, true
	}
	return tr, nil
}

func (tr *topicReader) close() { tr.adm.Close() }

// waitQuiet lists the topics to read and waits until they have been quiet
// for cfg.Idle. With a retention, the state topics are left out of the
// wait: tombstones come on them until the last saga to end has expired,
// and every other change of a saga writes its events too.
func (tr *topicReader) waitQuiet(ctx context.Context) error {
	listed, err := tr.adm.ListTopics(ctx)
	if err != nil {
		return fmt.Errorf("list topics: %w", err)
	}
	var watched []string
	for _, t := range listed.Names() {
		switch {
		case tr.states[t] || tr.events[t] || tr.dlts[t],
			strings.HasSuffix(t, ".commands"), strings.HasSuffix(t, ".commands-dlt"):
			tr.topics = append(tr.topics, t)
			if !tr.states[t] || tr.cfg.Retention <= 0 {
				watched = append(watched, t)
			}
		}
	}
	_, err = quietEnds(ctx, tr.adm, watched, tr.cfg.Idle)
	return err
}

// read reads the topics listed by waitQuiet into d, up to their ends as
// they are now, and returns what it read.
func (tr *topicReader) read(ctx context.Context, d *Data) ([]string, error) {
	cfg, topics, states, events, dlts := tr.cfg, tr.topics, tr.states, tr.events, tr.dlts
	listed, err := tr.adm.ListTopics(ctx, message.Inbox(cfg.SagaType))
	if err != nil {
		return nil, fmt.Errorf("list topics: %w", err)
	}
	if td, ok := listed[message.Inbox(cfg.SagaType)]; ok && td.Err == nil {
		d.Partitions = int32(len(td.Partitions))
	}
	ends, err := tr.adm.ListEndOffsets(ctx, topics...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list end offsets: %w", err)
	}

	cl, err := kgo.NewClient(
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Transaction markers tell where a partition ends.
		kgo.KeepControlRecords(),
		kgo.FetchMaxWait(200*time.Millisecond),
	)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.ReadTimeout)
	defer cancel()

	type tp struct {
		topic string
		p     int32
	}
	left := make(map[tp]int64) // partitions not read to the end, and their end
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			left[tp{o.Topic, o.Partition}] = o.Offset
		}
	})
	perTopic := make(map[string]int)
	last := make(map[tp]int64) // the last offset read of each partition
	idle := time.Now()
	unmarked := 0
	var undecodable []string
	keep := func(r *kgo.Record) {
		perTopic[r.Topic]++
		switch {
		case states[r.Topic]:
			d.addState(string(r.Key), r.Partition, r.Offset, r.Timestamp, r.Value)
		case events[r.Topic]:
			var ev message.Event
			if err := json.Unmarshal(r.Value, &ev); err != nil {
				undecodable = append(undecodable, fmt.Sprintf("event %s/%d@%d: %v", r.Topic, r.Partition, r.Offset, err))
				return
			}
			d.Events[ev.SagaID] = append(d.Events[ev.SagaID], ev)
		case dlts[r.Topic]:
			d.DeadLetters = append(d.DeadLetters, deadLetter(r))
		case strings.HasSuffix(r.Topic, ".commands-dlt"):
			d.ParticipantDeadLetters = append(d.ParticipantDeadLetters, deadLetter(r))
		default:
			d.Commands[CommandKey{
				Topic: r.Topic, SagaID: header(r, message.HeaderSagaID),
				MessageID: header(r, message.HeaderMessageID), Attempt: header(r, message.HeaderStepAttempt),
			}]++
		}
	}
	for len(left) > 0 {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		fs := cl.PollFetches(pctx)
		pcancel()
		if err := ctx.Err(); err != nil {
			var at []string
			for k, end := range left {
				at = append(at, fmt.Sprintf("%s/%d (end %d)", k.topic, k.p, end))
			}
			return nil, fmt.Errorf("topics not read to the end within %v: %s; an open transaction that never ends is itself a stuck partition", cfg.ReadTimeout, strings.Join(at, ", "))
		}
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				undecodable = append(undecodable, fmt.Sprintf("fetch %s/%d: %v", t, p, err))
			}
		})
		n := 0
		fs.EachRecord(func(r *kgo.Record) {
			k := tp{r.Topic, r.Partition}
			end, ok := left[k]
			if !ok || r.Offset >= end {
				return // read to the end already
			}
			n++
			last[k] = r.Offset
			if r.Offset+1 >= end {
				delete(left, k)
			}
			if !r.Attrs.IsControl() {
				keep(r)
			}
		})
		if n > 0 {
			idle = time.Now()
			continue
		}
		if time.Since(idle) < 2*time.Second {
			continue
		}
		// Nothing came for a while: the rest of a partition may be records
		// of a transaction that has no marker, which are not committed and
		// never delivered (package committed).
		for k, end := range left {
			from := int64(0)
			if o, ok := last[k]; ok {
				from = o + 1
			}
			ok, err := committed.OnlyUnmarked(ctx, []kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, k.topic, k.p, from, end)
			if err != nil {
				return nil, err
			}
			if ok {
				unmarked += int(end - from)
				delete(left, k)
			}
		}
		idle = time.Now()
	}
	if len(undecodable) > 0 {
		return nil, fmt.Errorf("%d records could not be read: %s", len(undecodable), strings.Join(undecodable[:min(5, len(undecodable))], "; "))
	}
	var counts []string
	if unmarked > 0 {
		counts = append(counts, fmt.Sprintf("%d offsets of transactions with no marker skipped", unmarked))
	}
	for _, t := range topics {
		counts = append(counts, fmt.Sprintf("%d %s", perTopic[t], t))
	}
	return counts, nil
}

// quietEnds waits until the end offsets of topics have not moved for idle,
// and returns them.
func quietEnds(ctx context.Context, adm *kadm.Client, topics []string, idle time.Duration) (kadm.ListedOffsets, error) {
	var last kadm.ListedOffsets
	since := time.Now()
	for {
		ends, err := adm.ListEndOffsets(ctx, topics...)
		if err == nil {
			err = ends.Error()
		}
		if err != nil {
			return nil, fmt.Errorf("list end offsets: %w", err)
		}
		if last == nil || !sameOffsets(last, ends) {
			last, since = ends, time.Now()
		} else if time.Since(since) >= idle {
			return ends, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(idle / 4):
		}
	}
}

func sameOffsets(a, b kadm.ListedOffsets) bool {
	same := true
	b.Each(func(o kadm.ListedOffset) {
		if x, ok := a.Lookup(o.Topic, o.Partition); !ok || x.Offset != o.Offset {
			same = false
		}
	})
	return same && len(a) == len(b)
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func deadLetter(r *kgo.Record) DeadLetter {
	return DeadLetter{
		Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Key: string(r.Key),
		Reason: header(r, dlq.HeaderReason), Exception: header(r, dlq.HeaderExceptionMessage),
		Marker: header(r, HeaderMarker), ForwardedFrom: header(r, message.HeaderForwardedFrom),
	}
}

// awaitDeleted waits, up to DeleteGrace, for the engine to delete the
// Redis keys of the sagas whose last state record is a tombstone, and
// drops those it deleted from d.Redis. It returns how many it dropped; a
// key still there after DeleteGrace stays in d.Redis (InvRetention).
func awaitDeleted(ctx context.Context, rdb *redis.Client, d *Data) (int, error) {
	keys := make(map[string]string) // id → key
	for id, ts := range d.Tombstones {
		if r, ok := d.Redis[id]; ok && ts[len(ts)-1].Followed == 0 {
			keys[id] = r.Key
		}
	}
	dropped := 0
	deadline := time.Now().Add(DeleteGrace)
	for len(keys) > 0 {
		for id, key := range keys {
			n, err := rdb.Exists(ctx, key).Result()
			if err != nil {
				return dropped, err
			}
			if n == 0 {
				delete(d.Redis, id)
				delete(keys, id)
				dropped++
			}
		}
		if len(keys) == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return dropped, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return dropped, nil
}

// parseStateKey returns the saga id and the partition of an engine state
// key, ksaga:{<type>:<partition>}:state:<id> (orchestrator.StateKey); the
// partition is -1 when the key has no such tag.
func parseStateKey(sagaType, key string) (id string, partition int32) {
	tag, id, ok := strings.Cut(key, "}:state:")
	if !ok {
		return key, -1
	}
	p, err := strconv.ParseInt(strings.TrimPrefix(tag, "ksaga:{"+sagaType+":"), 10, 32)
	if err != nil || !strings.HasPrefix(tag, "ksaga:{"+sagaType+":") {
		return id, -1
	}
	return id, int32(p)
}

// scanHashes calls f with every hash whose key matches pattern, and returns
// how many there were.
func scanHashes(ctx context.Context, rdb *redis.Client, pattern string, f func(key string, h map[string]string)) (int, error) {
	keys, err := scanKeys(ctx, rdb, pattern)
	if err != nil {
		return 0, err
	}
	for i := 0; i < len(keys); i += 1000 {
		batch := keys[i:min(i+1000, len(keys))]
		cmds := make([]*redis.MapStringStringCmd, len(batch))
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, k := range batch {
				cmds[j] = p.HGetAll(ctx, k)
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		for j, c := range cmds {
			f(batch[j], c.Val())
		}
	}
	return len(keys), nil
}

func scanKeys(ctx context.Context, rdb *redis.Client, pattern string) ([]string, error) {
	var keys []string
	seen := make(map[string]bool) // SCAN may return a key twice
	it := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for it.Next(ctx) {
		if k := it.Val(); !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	return keys, it.Err()
}

// version returns the version of a state record's value, or -1.
func version(b []byte) int64 {
	var v struct {
		Version int64 `json:"version"`
	}
	if json.Unmarshal(b, &v) != nil {
		return -1
	}
	return v.Version
}
