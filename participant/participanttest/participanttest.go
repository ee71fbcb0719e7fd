// Package participanttest is a conformance suite for participant handlers:
// one set of tests that every participant.Handler must pass, whatever keeps
// its dedupe records (a participant.Script in Redis, a pgdedupe.Table in
// PostgreSQL, a store of one's own). It proves, through the Handler alone
// and the effects it reports, that a command delivered twice acts once and
// gets the same reply.
//
//	func TestHotel(t *testing.T) {
//		ctx := context.Background()
//		rdb := redis.NewClient(&redis.Options{Addr: addr})
//		participanttest.Run(t, func(t *testing.T) participanttest.Fixture {
//			return participanttest.Fixture{
//				NewHandler: func() participant.Handler { return trip.NewHotel(rdb) },
//				Success: func(t testing.TB, key string) participant.Request {
//					rdb.Set(ctx, trip.RoomsKey("h-"+key), 10, 0)
//					return participant.Request{Type: trip.BookRoom,
//						Payload: []byte(`{"trip_id":"` + key + `","hotel":"h-` + key + `"}`)}
//				},
//				Effects: func(t testing.TB, key string) int { // the rooms taken
//					left, _ := rdb.Get(ctx, trip.RoomsKey("h-"+key)).Int()
//					return 10 - left
//				},
//			}
//		})
//	}
//
// The suite checks, each in a subtest:
//
//   - the same request twice acts once and gets the same reply;
//   - requests with other message ids act, each once, in one batch or in
//     several; the same message id in another saga type is another command;
//   - a batch that holds one request twice acts once and answers both
//     alike;
//   - a request delivered to several handler instances at once acts once,
//     and all of them answer alike;
//   - a failure reply is repeated identically, acts never, and stays the
//     answer to that command even after the world changed (Fixture.Heal).
//
// Replies are compared as the JSON of message.Reply, the form in which a
// reply is stored and travels. An error from Handle fails the test, except
// in the concurrent subtest, where a delivery may fail (a serialization
// error, say: the participant retries the batch) as long as one of them
// answers and a later delivery gets the same answer.
package participanttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/participant"
)

// Fixture is a participant under test: how to get its handler, build its
// commands and count its effects. Run gets one from the factory for each
// subtest.
type Fixture struct {
	// NewHandler returns an instance of the handler. Instances share
	// their store, as the replicas of a participant share their database
	// or Redis: the suite calls it once per subtest, and several times to
	// deliver one command to several instances at once. Required.
	NewHandler func() participant.Handler

	// Success returns a command that the handler carries out with a
	// success reply and one effect, on key alone: commands for other keys
	// must not change its outcome or its effects. The suite sets the
	// request's SagaID to key and its SagaType, MessageID, Step,
	// ReplyTo, Attempt and Record itself; Success sets Type and Payload
	// (and may prepare the store, seeding stock, say). Required.
	Success func(t testing.TB, key string) participant.Request

	// Failure returns a command, for key alone, that the handler refuses
	// with a failure reply, without an effect; the suite fills the
	// request as for Success. Nil skips the failure subtest.
	Failure func(t testing.TB, key string) participant.Request

	// Heal changes the store so that the command Failure(t, key) returned
	// would now succeed with one effect if it were a new command (stock
	// arrives, a limit rises). The suite then checks that a redelivery of
	// the failed command still gets its failure, and that a new command
	// with the same type and payload acts. Nil skips that part.
	Heal func(t testing.TB, key string)

	// Effects returns how many times an effect of a command for key has
	// happened, read from the handler's store (rows written, units taken):
	// a handler without dedupe must be seen to act twice. Required.
	Effects func(t testing.TB, key string) int
}

// Factory returns the fixture of one subtest; cleanups registered on t run
// when that subtest ends. Fixtures may share one store: every subtest uses
// keys and message ids of its own.
type Factory func(t *testing.T) Fixture

// SagaType is the saga type of the suite's requests, except where a
// subtest needs a second one (SagaType + "-other").
const SagaType = "conformance"

// Timeout bounds each Handle call of the suite.
const Timeout = 30 * time.Second

// Run runs the suite against the fixtures of factory, one subtest per
// property.
func Run(t *testing.T, factory Factory) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := factory(t)
			if f.NewHandler == nil || f.Success == nil || f.Effects == nil {
				t.Fatal("participanttest: Fixture needs NewHandler, Success and Effects")
			}
			if c.needsFailure && f.Failure == nil {
				t.Skip("Fixture.Failure is nil")
			}
			c.run(t, &suite{f: f, prefix: fmt.Sprintf("%s-%s-%d", c.id, process, runs.Add(1))})
		})
	}
}

// process and runs name the suite's runs, so that subtests sharing a
// store (a factory that returns one store every time, a -count=2, a
// database kept from an earlier test process) never share a key.
var (
	process = strconv.FormatInt(time.Now().UnixNano(), 36)
	runs    atomic.Int64
)

// cases are the suite's subtests. They take a testing.TB so that the
// package's own tests can run them against a handler that must fail them.
var cases = []struct {
	name, id     string
	needsFailure bool
	run          func(t testing.TB, s *suite)
}{
	{name: "same request twice acts once", id: "twice", run: testTwice},
	{name: "other message ids act", id: "other", run: testOtherIDs},
	{name: "duplicate in one batch acts once", id: "batch", run: testBatchDuplicate},
	{name: "concurrent deliveries act once", id: "concurrent", run: testConcurrent},
	{name: "failure reply is repeated", id: "failure", needsFailure: true, run: testFailure},
}

// suite is one subtest's fixture and the keys it hands out.
type suite struct {
	f      Fixture
	prefix string
	n      int
}

// key returns a key no other command of the run has used.
func (s *suite) key() string {
	s.n++
	return s.prefix + "-" + strconv.Itoa(s.n)
}

// request completes the command that build returned for key with the
// envelope of a command of sagaType, with message id msgID.
func (s *suite) request(t testing.TB, build func(testing.TB, string) participant.Request, key, sagaType, msgID string) participant.Request {
	t.Helper()
	req := build(t, key)
	req.SagaID = key
	req.SagaType = sagaType
	req.MessageID = msgID
	req.Step = "conformance-step"
	req.Attempt = 1
	req.ReplyTo = message.Inbox(sagaType)
	req.Record = &kgo.Record{
		Topic: "conformance.commands",
		Key:   []byte(key),
		Value: req.Payload,
		Headers: []kgo.RecordHeader{
			{Key: message.HeaderSagaID, Value: []byte(req.SagaID)},
			{Key: message.HeaderSagaType, Value: []byte(req.SagaType)},
			{Key: message.HeaderMessageType, Value: []byte(req.Type)},
			{Key: message.HeaderMessageID, Value: []byte(req.MessageID)},
			{Key: message.HeaderStep, Value: []byte(req.Step)},
			{Key: message.HeaderStepAttempt, Value: []byte(strconv.Itoa(req.Attempt))},
			{Key: message.HeaderReplyTo, Value: []byte(req.ReplyTo)},
		},
	}
	return req
}

// success returns a new command that succeeds, for a new key.
func (s *suite) success(t testing.TB) (participant.Request, string) {
	t.Helper()
	key := s.key()
	return s.request(t, s.f.Success, key, SagaType, key+"/do"), key
}

// handle delivers reqs to h as one batch and checks that there is one reply
// per request.
func handle(t testing.TB, h participant.Handler, reqs ...participant.Request) []participant.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	replies, err := h.Handle(ctx, reqs)
	if err != nil {
		t.Fatalf("Handle(%s): %v", describe(reqs), err)
	}
	if len(replies) != len(reqs) {
		t.Fatalf("Handle(%s): got %d replies, want %d", describe(reqs), len(replies), len(reqs))
	}
	return replies
}

func describe(reqs []participant.Request) string {
	var b bytes.Buffer
	for i, r := range reqs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %s of %s/%s", r.Type, r.MessageID, r.SagaType, r.SagaID)
	}
	return b.String()
}

// encode returns the JSON of r, the form in which replies are compared.
func encode(t testing.TB, r participant.Reply) string {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("encode reply %+v: %v", r, err)
	}
	return string(b)
}

// same fails t unless got and want are the same reply.
func same(t testing.TB, what string, got, want participant.Reply) {
	t.Helper()
	if g, w := encode(t, got), encode(t, want); g != w {
		t.Errorf("%s: got reply %s, want %s (the first delivery's)", what, g, w)
	}
}

// outcome fails t unless r's outcome is want.
func outcome(t testing.TB, what string, r participant.Reply, want string) {
	t.Helper()
	if r.Outcome != want {
		t.Errorf("%s: got reply %s, want outcome %q", what, encode(t, r), want)
	}
	if want == message.OutcomeFailure && r.Reason == "" {
		t.Errorf("%s: got failure reply %s without a reason", what, encode(t, r))
	}
}

// effects fails t unless key's effects number want.
func (s *suite) effects(t testing.TB, what, key string, want int) {
	t.Helper()
	if got := s.f.Effects(t, key); got != want {
		t.Errorf("%s: got %d effects for %s, want %d", what, got, key, want)
	}
}

// testTwice delivers one command twice, in two batches (a batch retried
// after an aborted transaction) and to a second instance (the partition's
// next owner after a rebalance).
func testTwice(t testing.TB, s *suite) {
	h := s.f.NewHandler()
	req, key := s.success(t)
	first := handle(t, h, req)[0]
	outcome(t, "first delivery", first, message.OutcomeSuccess)
	s.effects(t, "after the first delivery", key, 1)

	again := handle(t, h, req)[0]
	same(t, "second delivery", again, first)
	moved := handle(t, s.f.NewHandler(), req)[0]
	same(t, "delivery to another instance", moved, first)
	s.effects(t, "after three deliveries", key, 1)
}

// testOtherIDs checks that the handler does not take distinct commands for
// duplicates: each acts once, alone or in one batch, and so does a command
// with the same message id in another saga type (message ids are unique
// within a saga type only).
func testOtherIDs(t testing.TB, s *suite) {
	h := s.f.NewHandler()
	a, keyA := s.success(t)
	b, keyB := s.success(t)
	c, keyC := s.success(t)
	for i, r := range handle(t, h, a, b) {
		outcome(t, fmt.Sprintf("batch of two, reply %d", i), r, message.OutcomeSuccess)
	}
	outcome(t, "alone", handle(t, h, c)[0], message.OutcomeSuccess)
	s.effects(t, "first of a batch of two", keyA, 1)
	s.effects(t, "second of a batch of two", keyB, 1)
	s.effects(t, "alone", keyC, 1)

	// The same message id as c, in another saga type (and for another
	// key, so that only the dedupe record could make it look done).
	keyD := s.key()
	d := s.request(t, s.f.Success, keyD, SagaType+"-other", c.MessageID)
	outcome(t, "same message id, other saga type", handle(t, h, d)[0], message.OutcomeSuccess)
	s.effects(t, "same message id, other saga type", keyD, 1)
	s.effects(t, "after a command of another saga type with its message id", keyC, 1)
}

// testBatchDuplicate delivers a batch that holds a command twice, as a
// batch does when a command was re-sent (same message id) before the first
// copy was answered.
func testBatchDuplicate(t testing.TB, s *suite) {
	h := s.f.NewHandler()
	a, keyA := s.success(t)
	b, keyB := s.success(t)
	replies := handle(t, h, a, b, a)
	outcome(t, "first copy", replies[0], message.OutcomeSuccess)
	outcome(t, "other command", replies[1], message.OutcomeSuccess)
	same(t, "second copy in the batch", replies[2], replies[0])
	s.effects(t, "command twice in a batch", keyA, 1)
	s.effects(t, "command between the copies", keyB, 1)

	// The whole batch again, as after an aborted transaction.
	again := handle(t, h, a, b, a)
	for i := range replies {
		same(t, fmt.Sprintf("batch redelivered, reply %d", i), again[i], replies[i])
	}
	s.effects(t, "batch redelivered", keyA, 1)
	s.effects(t, "batch redelivered", keyB, 1)
}

// concurrency is how many instances testConcurrent delivers a command to
// at once.
const concurrency = 8

// testConcurrent delivers one command to several instances at once, as
// happens when a rebalance hands a partition to another instance while the
// previous owner (a zombie about to be fenced) is still handling it.
func testConcurrent(t testing.TB, s *suite) {
	for round := range 3 {
		req, key := s.success(t)
		hs := make([]participant.Handler, concurrency)
		for i := range hs {
			hs[i] = s.f.NewHandler()
		}
		replies := make([]participant.Reply, concurrency)
		errs := make([]error, concurrency)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, h := range hs {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), Timeout)
				defer cancel()
				<-start
				rs, err := h.Handle(ctx, []participant.Request{req})
				if err == nil && len(rs) != 1 {
					err = fmt.Errorf("got %d replies, want 1", len(rs))
				}
				if err != nil {
					errs[i] = err
					return
				}
				replies[i] = rs[0]
			})
		}
		close(start)
		wg.Wait()
		var first *participant.Reply
		for i, err := range errs {
			// An error is allowed (a serialization failure, say): the
			// participant retries the batch. Acting twice is not.
			if err != nil {
				t.Logf("round %d: instance %d: %v (the batch would be retried)", round, i, err)
				continue
			}
			if first == nil {
				first = &replies[i]
				outcome(t, fmt.Sprintf("round %d: instance %d", round, i), replies[i], message.OutcomeSuccess)
				continue
			}
			same(t, fmt.Sprintf("round %d: instance %d", round, i), replies[i], *first)
		}
		if first == nil {
			t.Errorf("round %d: all %d deliveries failed, want at least one reply", round, concurrency)
		}
		// The retry of any failed delivery, and a late one.
		last := handle(t, s.f.NewHandler(), req)[0]
		if first != nil {
			same(t, fmt.Sprintf("round %d: a later delivery", round), last, *first)
		}
		s.effects(t, fmt.Sprintf("round %d: %d deliveries at once", round, concurrency), key, 1)
	}
}

// testFailure checks that a failure is a stored answer like a success: a
// redelivery gets it again, identical, even once the cause is gone.
func testFailure(t testing.TB, s *suite) {
	h := s.f.NewHandler()
	key := s.key()
	req := s.request(t, s.f.Failure, key, SagaType, key+"/do")
	first := handle(t, h, req)[0]
	outcome(t, "first delivery", first, message.OutcomeFailure)
	same(t, "second delivery", handle(t, h, req)[0], first)
	same(t, "delivery to another instance", handle(t, s.f.NewHandler(), req)[0], first)
	s.effects(t, "failed command", key, 0)
	if s.f.Heal == nil {
		return
	}

	s.f.Heal(t, key)
	same(t, "redelivery once healed", handle(t, h, req)[0], first)
	s.effects(t, "failed command redelivered once healed", key, 0)
	// A new command (a new message id) with the same content acts: the
	// failure was stored for that message id, not decided anew.
	fresh := s.request(t, func(testing.TB, string) participant.Request {
		return participant.Request{Type: req.Type, Payload: req.Payload}
	}, key, SagaType, key+"/do-again")
	outcome(t, "new command once healed", handle(t, h, fresh)[0], message.OutcomeSuccess)
	s.effects(t, "new command once healed", key, 1)
}
