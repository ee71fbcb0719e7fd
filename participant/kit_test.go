package participant_test

import (
	"context"
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/participant"
)

// The deprecated name still compiles as the new one.
var _ participant.Command = participant.Request{}

// counter counts its runs in KEYS[1] and fails with reason ARGV[1] when
// one is given.
var counter = participant.NewScript("counter", `
redis.call('INCR', KEYS[1])
if ARGV[1] ~= '' then return failure(ARGV[1]) end
return success()
`)

// TestScript checks the exactly-once pattern on a real Redis: one effect
// per message id (of one saga type), the stored reply returned to a
// redelivery, the dedupe record where DedupeKey says and with its TTL, and
// a script that survives SCRIPT FLUSH (a restarted Redis).
func TestScript(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	defer rdb.Close()
	ctx := context.Background()
	run := func(sagaType, msgID, fail string) participant.Reply {
		t.Helper()
		rctx := participant.WithRequest(ctx, participant.Request{SagaID: "s", SagaType: sagaType, MessageID: msgID, Type: "Count"})
		r, err := counter.Run(rctx, rdb, []string{"n"}, fail)
		if err != nil {
			t.Fatalf("Run(%s, %s): %v", sagaType, msgID, err)
		}
		return r
	}
	tests := []struct {
		sagaType, msgID, fail string
		want                  participant.Reply
		count                 string // of runs, afterwards
	}{
		{"trip", "m-1", "", participant.Success(), "1"},
		{"trip", "m-1", "", participant.Success(), "1"},                             // redelivered: stored reply
		{"trip", "m-1", "NOPE", participant.Success(), "1"},                         // the stored reply wins
		{"order", "m-1", "", participant.Success(), "2"},                            // another saga type's m-1
		{"trip", "m-2", "NOPE", participant.Failure("NOPE"), "3"},                   // a failure is stored too
		{"trip", "m-2", "", participant.Failure("NOPE"), "3"},                       // and returned again
		{"trip", "m-3", `it's "quoted"`, participant.Failure(`it's "quoted"`), "4"}, // any reason encodes
	}
	for i, tt := range tests {
		if i == 3 {
			if err := rdb.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if got := run(tt.sagaType, tt.msgID, tt.fail); got != tt.want {
			t.Errorf("#%d Run(%s, %s): got %+v, want %+v", i, tt.sagaType, tt.msgID, got, tt.want)
		}
		if got := rdb.Get(ctx, "n").Val(); got != tt.count {
			t.Errorf("#%d runs: got %s, want %s", i, got, tt.count)
		}
	}
	ttl := rdb.TTL(ctx, participant.DedupeKey("counter", "trip", "m-1")).Val()
	if ttl <= 0 || ttl > participant.DedupeTTL {
		t.Errorf("TTL of the dedupe record: got %v, want up to %v", ttl, participant.DedupeTTL)
	}
}

func TestScriptErrors(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	defer rdb.Close()
	ctx := context.Background()
	if _, err := counter.Run(ctx, rdb, []string{"n"}, ""); !errors.Is(err, participant.ErrNoRequest) {
		t.Errorf("Run without a Request: got %v, want ErrNoRequest", err)
	}
	rctx := participant.WithRequest(ctx, participant.Request{SagaID: "s", SagaType: "trip", MessageID: "m-1"})
	silent := participant.NewScript("silent", `redis.call('SET', KEYS[1], 'x')`)
	if _, err := silent.Run(rctx, rdb, []string{"k"}); err == nil {
		t.Error("Run of a body without a reply: got nil error, want one")
	}
	if n := rdb.Exists(ctx, participant.DedupeKey("silent", "trip", "m-1")).Val(); n != 0 {
		t.Error("a body without a reply stored a dedupe record")
	}
}

type payload struct {
	N int `json:"n"`
}

func (p *payload) Validate() error {
	if p.N < 0 {
		return errors.New("negative")
	}
	return nil
}

// TestRoutes checks the routing, the decoding and the errors of Routes and
// Typed.
func TestRoutes(t *testing.T) {
	boom := errors.New("boom")
	h := participant.Routes{
		"Ok": participant.Typed(func(ctx context.Context, p *payload) (participant.Reply, error) {
			if req, ok := participant.RequestFrom(ctx); !ok || req.Type != "Ok" {
				return participant.Failure("NO_REQUEST_IN_CTX"), nil
			}
			return participant.Success(), nil
		}),
		"Err": participant.Typed(func(context.Context, *payload) (participant.Reply, error) { return participant.Reply{}, boom }),
	}
	for _, tc := range []struct {
		name, typ, payload string
		want               participant.Reply
		err                error
	}{
		{"typed", "Ok", `{"n":1,"extra":true}`, participant.Success(), nil},
		{"undecodable", "Ok", `{"n":"one"}`, participant.Failure(participant.ReasonBadCommand), nil},
		{"invalid", "Ok", `{"n":-1}`, participant.Failure(participant.ReasonBadCommand), nil},
		{"unknown type", "Other", `{}`, participant.Failure(participant.ReasonBadCommand), nil},
		{"error", "Err", `{}`, participant.Reply{}, boom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			replies, err := h.Handle(context.Background(), []participant.Request{{Type: tc.typ, MessageID: "m", Payload: []byte(tc.payload)}})
			switch {
			case !errors.Is(err, tc.err):
				t.Errorf("error: got %v, want %v", err, tc.err)
			case err == nil && (len(replies) != 1 || replies[0] != tc.want):
				t.Errorf("replies: got %+v, want [%+v]", replies, tc.want)
			}
		})
	}
	if s := participant.Success(); s.Outcome != message.OutcomeSuccess || s.Reason != "" {
		t.Errorf("Success(): got %+v", s)
	}
}
