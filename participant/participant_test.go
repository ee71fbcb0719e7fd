package participant_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/retry"
)

const (
	name    = "inventory"
	inbox   = "saga.order.inbox"
	cmdsDLT = "inventory.commands-dlt"
)

func newCluster(t *testing.T) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1),
		kfake.SeedTopics(2, message.Commands(name), cmdsDLT, inbox))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// start runs a participant for h until the test ends; it returns the
// participant so a test can Close it early. opts are applied after the
// test defaults.
func start(t *testing.T, c *kfake.Cluster, h participant.Handler, opts ...participant.Opt) *participant.Participant {
	t.Helper()
	p, err := participant.New(name, h, append([]participant.Opt{
		participant.Brokers(c.ListenAddrs()...),
		participant.TransactionalID("test-" + t.Name()),
		participant.Logger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		participant.Backoff(retry.Policy{InitialInterval: 5 * time.Millisecond, Jitter: -1}),
		participant.KafkaOpts(kgo.FetchMaxWait(100 * time.Millisecond)),
	}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
		p.Close()
	})
	return p
}

func command(msgID, sagaID string) *kgo.Record {
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	return &kgo.Record{
		Topic: message.Commands(name),
		Key:   []byte(sagaID),
		Value: []byte(`{"order_id":"` + sagaID + `"}`),
		Headers: []kgo.RecordHeader{
			h(message.HeaderSagaID, sagaID),
			h(message.HeaderSagaType, "order"),
			h(message.HeaderMessageType, "ReserveInventory"),
			h(message.HeaderMessageID, msgID),
			h(message.HeaderStep, "reserve-inventory"),
			h(message.HeaderStepAttempt, "2"),
			h(message.HeaderReplyTo, inbox),
			h(message.HeaderTraceParent, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
		},
	}
}

func produce(t *testing.T, c *kfake.Cluster, recs ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// reader reads a topic with read_committed from the start, in the background.
type reader struct {
	t    *testing.T
	cl   *kgo.Client
	mu   sync.Mutex
	recs []*kgo.Record
	last time.Time // when the last record arrived
	stop context.CancelFunc
	done chan struct{}
}

func newReader(t *testing.T, c *kfake.Cluster, topic string) *reader {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &reader{t: t, cl: cl, stop: cancel, done: make(chan struct{}), last: time.Now()}
	go func() {
		defer close(r.done)
		for ctx.Err() == nil {
			recs := cl.PollFetches(ctx).Records()
			if len(recs) > 0 {
				r.mu.Lock()
				r.recs = append(r.recs, recs...)
				r.last = time.Now()
				r.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-r.done; cl.Close() })
	return r
}

// waitFor waits until at least n records arrived, or fails the test.
func (r *reader) waitFor(n int) {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		got := len(r.recs)
		r.mu.Unlock()
		if got >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.t.Fatalf("waited 10s for %d records on %v: got %d", n, r.cl.GetConsumeTopics(), len(r.all()))
}

// settle waits until no record arrived for quiet, then returns all records.
func (r *reader) settle(quiet time.Duration) []*kgo.Record {
	for {
		r.mu.Lock()
		idle := time.Since(r.last)
		r.mu.Unlock()
		if idle >= quiet {
			return r.all()
		}
		time.Sleep(quiet - idle)
	}
}

func (r *reader) all() []*kgo.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*kgo.Record(nil), r.recs...)
}

func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// counting replies success to every command, except that it fails with
// OUT_OF_STOCK the saga ids in fail, and remembers the commands it saw.
type counting struct {
	mu    sync.Mutex
	calls int
	seen  []participant.Command
	fail  map[string]bool
	err   func(call int) error // the error of call number call (1-based), if any
}

func (h *counting) Handle(_ context.Context, cmds []participant.Command) ([]message.Reply, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if h.err != nil {
		if err := h.err(h.calls); err != nil {
			return nil, err
		}
	}
	replies := make([]message.Reply, len(cmds))
	for i, c := range cmds {
		h.seen = append(h.seen, c)
		replies[i] = message.Reply{Outcome: message.OutcomeSuccess}
		if h.fail[c.SagaID] {
			replies[i] = message.Reply{Outcome: message.OutcomeFailure, Reason: "OUT_OF_STOCK"}
		}
	}
	return replies, nil
}

func (h *counting) snapshot() (int, []participant.Command) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls, append([]participant.Command(nil), h.seen...)
}

func TestNewValidates(t *testing.T) {
	h := &counting{}
	tests := []struct {
		name  string
		pname string
		h     participant.Handler
		opts  []participant.Opt
	}{
		{"no name", "", h, []participant.Opt{participant.Brokers("127.0.0.1:1")}},
		{"no handler", name, nil, []participant.Opt{participant.Brokers("127.0.0.1:1")}},
		{"no brokers", name, h, nil},
		{"negative session timeout", name, h, []participant.Opt{participant.Brokers("127.0.0.1:1"), participant.SessionTimeout(-time.Second)}},
		{"negative rebalance timeout", name, h, []participant.Opt{participant.Brokers("127.0.0.1:1"), participant.RebalanceTimeout(-time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := participant.New(tt.pname, tt.h, tt.opts...)
			if err == nil {
				p.Close()
				t.Fatalf("New: got nil error, want one")
			}
		})
	}
}

func TestReplyHeaders(t *testing.T) {
	c := newCluster(t)
	h := &counting{fail: map[string]bool{"o-2": true}}
	start(t, c, h)
	replies := newReader(t, c, inbox)

	produce(t, c, command("m-1", "o-1"), command("m-2", "o-2"))
	replies.waitFor(2)
	got := replies.settle(300 * time.Millisecond)
	if len(got) != 2 {
		t.Fatalf("got %d replies, want 2", len(got))
	}
	bySaga := map[string]*kgo.Record{}
	for _, r := range got {
		bySaga[string(r.Key)] = r
	}
	tests := []struct {
		saga, msgID, outcome, reason, value string
	}{
		{"o-1", "m-1", message.OutcomeSuccess, "", `{"outcome":"success"}`},
		{"o-2", "m-2", message.OutcomeFailure, "OUT_OF_STOCK", `{"outcome":"failure","reason":"OUT_OF_STOCK"}`},
	}
	for _, tt := range tests {
		t.Run(tt.saga, func(t *testing.T) {
			r := bySaga[tt.saga]
			if r == nil {
				t.Fatalf("no reply keyed %s", tt.saga)
			}
			if string(r.Value) != tt.value {
				t.Errorf("value: got %s, want %s", r.Value, tt.value)
			}
			want := map[string]string{
				message.HeaderSagaID:      tt.saga,
				message.HeaderSagaType:    "order",
				message.HeaderMessageType: message.TypeReply,
				message.HeaderMessageID:   tt.msgID + "/reply",
				message.HeaderInReplyTo:   tt.msgID,
				message.HeaderStep:        "reserve-inventory",
				message.HeaderStepAttempt: "2",
				message.HeaderOutcome:     tt.outcome,
				message.HeaderTraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
			}
			if tt.reason != "" {
				want[message.HeaderReason] = tt.reason
			}
			for k, v := range want {
				if got, ok := header(r, k); !ok || got != v {
					t.Errorf("header %s: got %q (present %v), want %q", k, got, ok, v)
				}
			}
			if tt.reason == "" {
				if v, ok := header(r, message.HeaderReason); ok {
					t.Errorf("header %s: got %q, want none", message.HeaderReason, v)
				}
			}
			if _, ok := header(r, message.HeaderTraceState); ok {
				t.Errorf("header %s: got one, want none (the command had none)", message.HeaderTraceState)
			}
		})
	}
	_, seen := h.snapshot()
	if len(seen) != 2 {
		t.Fatalf("handler saw %d commands, want 2", len(seen))
	}
	for _, c := range seen {
		if c.Type != "ReserveInventory" || c.ReplyTo != inbox || c.Attempt != 2 || c.SagaType != "order" || c.Step != "reserve-inventory" {
			t.Errorf("command %s: got %+v, want type ReserveInventory, reply-to %s, attempt 2", c.MessageID, c, inbox)
		}
		if want := `{"order_id":"` + c.SagaID + `"}`; string(c.Payload) != want {
			t.Errorf("command %s payload: got %s, want %s", c.MessageID, c.Payload, want)
		}
	}
}

func TestMalformedGoesToDLT(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*kgo.Record)
	}{
		{"no message id", func(r *kgo.Record) { r.Headers = without(r.Headers, message.HeaderMessageID) }},
		{"no reply-to", func(r *kgo.Record) { r.Headers = without(r.Headers, message.HeaderReplyTo) }},
		{"empty key", func(r *kgo.Record) { r.Key = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t)
			h := &counting{}
			start(t, c, h)
			replies := newReader(t, c, inbox)
			dead := newReader(t, c, cmdsDLT)

			bad := command("m-bad", "o-1")
			tt.mod(bad)
			good := command("m-good", "o-1")
			produceTo(t, c, 0, bad, good) // one partition: bad first

			replies.waitFor(1)
			dead.waitFor(1)
			gotReplies, gotDead := replies.settle(300*time.Millisecond), dead.settle(0)
			if len(gotReplies) != 1 {
				t.Fatalf("got %d replies, want 1", len(gotReplies))
			}
			if v, _ := header(gotReplies[0], message.HeaderInReplyTo); v != "m-good" {
				t.Errorf("reply in-reply-to: got %q, want m-good", v)
			}
			if len(gotDead) != 1 {
				t.Fatalf("got %d dead letters, want 1", len(gotDead))
			}
			info, err := dlq.Parse(gotDead[0])
			if err != nil {
				t.Fatalf("dlq.Parse: %v", err)
			}
			if info.Topic != message.Commands(name) || info.Reason != participant.ReasonMalformed || info.Attempts != 1 || info.Group != "ksaga-participant-"+name {
				t.Errorf("dead letter: got topic %s reason %s attempts %d group %s, want %s %s 1 ksaga-participant-%s",
					info.Topic, info.Reason, info.Attempts, info.Group, message.Commands(name), participant.ReasonMalformed, name)
			}
			if string(gotDead[0].Value) != string(bad.Value) {
				t.Errorf("dead letter value: got %s, want %s", gotDead[0].Value, bad.Value)
			}
			_, seen := h.snapshot()
			if len(seen) != 1 || seen[0].MessageID != "m-good" {
				t.Errorf("handler saw %d commands (%+v), want only m-good", len(seen), seen)
			}
		})
	}
}

func without(hs []kgo.RecordHeader, key string) []kgo.RecordHeader {
	var out []kgo.RecordHeader
	for _, h := range hs {
		if h.Key != key {
			out = append(out, h)
		}
	}
	return out
}

// produceTo produces recs to one partition, in order.
func produceTo(t *testing.T, c *kfake.Cluster, partition int32, recs ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	defer cl.Close()
	for _, r := range recs {
		r.Partition = partition
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

func TestHandlerErrorRetries(t *testing.T) {
	c := newCluster(t)
	h := &counting{err: func(call int) error {
		if call <= 2 {
			return fmt.Errorf("redis down (call %d)", call)
		}
		return nil
	}}
	start(t, c, h)
	replies := newReader(t, c, inbox)

	produce(t, c, command("m-1", "o-1"))
	replies.waitFor(1)
	got := replies.settle(300 * time.Millisecond)
	if len(got) != 1 {
		t.Fatalf("got %d replies, want 1", len(got))
	}
	if v, _ := header(got[0], message.HeaderInReplyTo); v != "m-1" {
		t.Errorf("reply in-reply-to: got %q, want m-1", v)
	}
	if calls, _ := h.snapshot(); calls != 3 {
		t.Errorf("handler calls: got %d, want 3", calls)
	}
}

// TestFailedCommitAbortsReplies fails the transactional offset commit once,
// after the reply was produced: the reply must be aborted (invisible to
// read_committed) and the command handled again, so exactly one reply is
// committed.
func TestFailedCommitAbortsReplies(t *testing.T) {
	c := newCluster(t)
	var injected atomic.Int32
	c.ControlKey(kmsg.TxnOffsetCommit.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		req := kr.(*kmsg.TxnOffsetCommitRequest)
		if injected.Add(1) > 1 {
			return nil, nil, false
		}
		c.KeepControl() // keep counting the commits after this one
		resp := req.ResponseKind().(*kmsg.TxnOffsetCommitResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewTxnOffsetCommitResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewTxnOffsetCommitResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.OffsetMetadataTooLarge.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	h := &counting{}
	start(t, c, h)
	replies := newReader(t, c, inbox)

	produce(t, c, command("m-1", "o-1"))
	replies.waitFor(1)
	got := replies.settle(300 * time.Millisecond)
	if len(got) != 1 {
		t.Fatalf("got %d committed replies, want 1", len(got))
	}
	if n := injected.Load(); n < 2 {
		t.Fatalf("txn offset commits: got %d, want at least 2 (one failed, one good)", n)
	}
	if calls, _ := h.snapshot(); calls != 2 {
		t.Errorf("handler calls: got %d, want 2 (the aborted one and the retry)", calls)
	}
}

func TestHandlerReplyCountMismatchRetries(t *testing.T) {
	c := newCluster(t)
	var calls atomic.Int32
	h := participant.HandlerFunc(func(_ context.Context, cmds []participant.Command) ([]message.Reply, error) {
		if calls.Add(1) == 1 {
			return nil, nil // a bug: no replies
		}
		out := make([]message.Reply, len(cmds))
		for i := range out {
			out[i].Outcome = message.OutcomeSuccess
		}
		return out, nil
	})
	start(t, c, h)
	replies := newReader(t, c, inbox)
	produce(t, c, command("m-1", "o-1"))
	replies.waitFor(1)
	if got := replies.settle(200 * time.Millisecond); len(got) != 1 {
		t.Fatalf("got %d replies, want 1", len(got))
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("handler calls: got %d, want 2", n)
	}
}

func TestCloseStopsRun(t *testing.T) {
	c := newCluster(t)
	p, err := participant.New(name, &counting{}, participant.Brokers(c.ListenAddrs()...),
		participant.Logger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- p.Run(context.Background()) }()
	time.Sleep(100 * time.Millisecond)
	p.Close()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Run after Close: got %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of Close")
	}
	p.Close() // twice is fine
	if err := p.Run(context.Background()); !errors.Is(err, participant.ErrClosed) {
		t.Errorf("Run after Close: got %v, want ErrClosed", err)
	}
}

// cutter is a kgo dialer that can cut a client off the network, as the
// death of its process would: cut closes the connections it made and
// refuses new ones.
type cutter struct {
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func (c *cutter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut {
		return nil, errors.New("cut off the network")
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		c.conns = append(c.conns, conn)
	}
	return conn, err
}

func (c *cutter) cutOff() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = true
	for _, conn := range c.conns {
		conn.Close()
	}
}

// TestStaticRestartAnswersAtOnce kills a static participant in the middle
// of a transaction (its reply produced and its offset commit added, the
// commit not sent) and starts its successor with the same transactional id
// and long timeouts, as sagad restarts after a SIGKILL. The successor must
// take the dead member's place in the group at once (no rebalance that waits
// for the dead member's session to time out) and abort the open
// transaction at once (no wait for the transaction timeout before the
// committed offsets are readable), so it answers the redelivered command
// and a new one within a few seconds; the dead one's reply stays aborted.
func TestStaticRestartAnswersAtOnce(t *testing.T) {
	const (
		txnID   = "sagad-0-inventory"
		timeout = 30 * time.Second // session and rebalance: far above the bound below
		bound   = 5 * time.Second
	)
	c := newCluster(t)
	static := []participant.Opt{
		participant.TransactionalID(txnID),
		participant.StaticMembership(),
		participant.SessionTimeout(timeout),
		participant.RebalanceTimeout(timeout),
	}
	replies := newReader(t, c, inbox)

	var nw cutter
	dead, err := participant.New(name, &counting{}, append(static,
		participant.Brokers(c.ListenAddrs()...),
		participant.Logger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		participant.KafkaOpts(kgo.Dialer(nw.dial), kgo.FetchMaxWait(100*time.Millisecond)))...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	deadCtx, kill := context.WithCancel(context.Background())
	go dead.Run(deadCtx) // its error is that of a dead process: ignored
	t.Cleanup(func() {
		kill()
		// Close waits for Run, which may retry its commit on the dead
		// network until it gives up; do not hold the test for it.
		go dead.Close()
	})
	produce(t, c, command("m-1", "o-1"))
	replies.waitFor(1)

	// The next commit of txnID cuts the participant off instead of
	// reaching the coordinator: the transaction stays open.
	var killed atomic.Bool
	c.ControlKey(kmsg.EndTxn.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		req := kr.(*kmsg.EndTxnRequest)
		if req.TransactionalID != txnID || !req.Commit {
			return nil, nil, false
		}
		nw.cutOff()
		killed.Store(true)
		return nil, errors.New("the process was killed"), true
	})
	produce(t, c, command("m-2", "o-2"))
	waitFor(t, 10*time.Second, "the first participant to die in its commit", killed.Load)

	started := time.Now()
	start(t, c, &counting{}, static...)
	produce(t, c, command("m-3", "o-3"))
	deadline := started.Add(bound)
	for time.Now().Before(deadline) && len(replies.all()) < 3 {
		time.Sleep(10 * time.Millisecond)
	}
	got := replies.settle(300 * time.Millisecond)
	inReplyTo := make(map[string]int)
	for _, r := range got {
		v, _ := header(r, message.HeaderInReplyTo)
		inReplyTo[v]++
	}
	if want := map[string]int{"m-1": 1, "m-2": 1, "m-3": 1}; !reflect.DeepEqual(inReplyTo, want) {
		t.Fatalf("committed replies %d s after the restart: got %v, want %v (one each, within %v)",
			int(time.Since(started).Seconds()), inReplyTo, want, bound)
	}
}

// waitFor polls cond until it holds, or fails the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCommitOutcomeUnknown drops the connection of every EndTxn commit (a
// broker restart, a network cut: the participant cannot know whether it
// committed) until the participant gives up on it. The participant then
// aborts, as kgo asks (a new producer epoch), and goes on instead of
// stopping: the command is answered once, by a later transaction.
func TestCommitOutcomeUnknown(t *testing.T) {
	c := newCluster(t)
	var dropped atomic.Int32
	var recovered atomic.Bool
	c.ControlKey(kmsg.EndTxn.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !kr.(*kmsg.EndTxnRequest).Commit || recovered.Load() {
			return nil, nil, false
		}
		dropped.Add(1)
		return nil, errors.New("connection dropped"), true
	})
	c.ControlKey(kmsg.InitProducerID.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if dropped.Load() > 0 {
			recovered.Store(true) // the abort after the lost commit
		}
		return nil, nil, false
	})
	h := &counting{}
	// Its cleanup fails the test if Run returned an error.
	start(t, c, h, participant.KafkaOpts(kgo.FetchMaxWait(100*time.Millisecond), kgo.RequestRetries(1)))
	replies := newReader(t, c, inbox)

	produce(t, c, command("m-1", "o-1"))
	replies.waitFor(1)
	if got := replies.settle(300 * time.Millisecond); len(got) != 1 {
		t.Fatalf("got %d committed replies, want 1", len(got))
	}
	if !recovered.Load() {
		t.Fatal("the commit was never given up on: the test proves nothing")
	}
	produce(t, c, command("m-2", "o-2"))
	replies.waitFor(2)
}

// endTxns counts the EndTxn requests a client writes.
type endTxns struct{ n atomic.Int64 }

func (e *endTxns) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == kmsg.EndTxn.Int16() && err == nil {
		e.n.Add(1)
	}
}

// TestTransactionInterval sends commands one at a time, every 5ms, to a
// participant with a 50ms TransactionInterval: it ends a transaction at most
// once per interval, and answers every command once.
func TestTransactionInterval(t *testing.T) {
	c := newCluster(t)
	h := &counting{}
	ends := &endTxns{}
	const interval = 50 * time.Millisecond
	start(t, c, h, participant.TransactionInterval(interval), participant.KafkaOpts(kgo.WithHooks(ends)))
	replies := newReader(t, c, inbox)
	produce(t, c, command("warm", "o-warm"))
	replies.waitFor(1)

	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n = 200
	before := ends.n.Load()
	began := time.Now()
	for i := range n {
		cl.Produce(context.Background(), command(fmt.Sprintf("m-%d", i), fmt.Sprintf("o-%d", i)), nil)
		time.Sleep(5 * time.Millisecond)
	}
	replies.waitFor(n + 1)
	elapsed := time.Since(began)
	once := make(map[string]int)
	for _, r := range replies.settle(200 * time.Millisecond) {
		id, _ := header(r, message.HeaderInReplyTo)
		once[id]++
	}
	for i := range n {
		if id := fmt.Sprintf("m-%d", i); once[id] != 1 {
			t.Errorf("command %s: %d replies, want 1", id, once[id])
		}
	}
	txns := ends.n.Load() - before
	if most := int64(elapsed/interval) + 2; txns > most {
		t.Errorf("%d transactions in %v, want at most %d: one per %v", txns, elapsed.Round(time.Millisecond), most, interval)
	}
	t.Logf("%d commands in %d transactions over %v", n, txns, elapsed.Round(time.Millisecond))
}

func TestTransactionIntervalNegative(t *testing.T) {
	_, err := participant.New(name, &counting{}, participant.Brokers("k:9092"), participant.TransactionInterval(-time.Millisecond))
	if err == nil || err.Error() != "participant inventory: TransactionInterval -1ms is negative" {
		t.Errorf("New with a negative interval: %v, want an error that names it", err)
	}
}
