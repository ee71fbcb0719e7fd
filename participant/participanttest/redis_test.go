package participanttest_test

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/examples/trip"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/participant/participanttest"
)

// TestHotel runs the suite against the hotel participant of examples/trip:
// participant.Script effects in a real redis-server. A room of hotel
// "h-<key>" is the key's effect; the hotel starts with ten rooms, or none
// for the failure subtest (NO_ROOMS) until Heal gives it one.
func TestHotel(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	const rooms = 10
	set := func(t testing.TB, key string, n int) {
		t.Helper()
		// The number the hotel started with sits beside its counter, so
		// Effects is what was taken since.
		if err := rdb.MSet(ctx, trip.RoomsKey("h-"+key), n, "test:rooms-at-start:"+key, n).Err(); err != nil {
			t.Fatal(err)
		}
	}
	book := func(t testing.TB, key string) participant.Request {
		t.Helper()
		payload, err := json.Marshal(trip.Room{TripID: key, Hotel: "h-" + key, Nights: 2})
		if err != nil {
			t.Fatal(err)
		}
		return participant.Request{Type: trip.BookRoom, Payload: payload}
	}
	participanttest.Run(t, func(t *testing.T) participanttest.Fixture {
		return participanttest.Fixture{
			NewHandler: func() participant.Handler { return trip.NewHotel(rdb) },
			Success: func(t testing.TB, key string) participant.Request {
				set(t, key, rooms)
				return book(t, key)
			},
			Failure: func(t testing.TB, key string) participant.Request {
				set(t, key, 0)
				return book(t, key)
			},
			Heal: func(t testing.TB, key string) { set(t, key, 1) },
			Effects: func(t testing.TB, key string) int {
				t.Helper()
				vals, err := rdb.MGet(ctx, "test:rooms-at-start:"+key, trip.RoomsKey("h-"+key)).Result()
				if err != nil {
					t.Fatal(err)
				}
				return atoi(t, vals[0]) - atoi(t, vals[1])
			},
		}
	})
}

// counter is a Script whose effect is not idempotent by itself: every run
// adds one to KEYS[1]. Only the Script's dedupe record keeps a redelivery
// from counting twice. A request whose limit (ARGV[1]) is already reached
// fails with FULL.
var counter = participant.NewScript("counter", `
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return failure('FULL') end
redis.call('INCR', KEYS[1])
return success()`)

type count struct {
	Key   string `json:"key"`
	Limit int    `json:"limit"`
}

// TestScript runs the suite against a bare participant.Script whose effect
// counts: the test that the Script's dedupe, and not the effect's own
// checks, makes a redelivery act once.
func TestScript(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	h := participant.Routes{
		"Count": participant.Typed(func(ctx context.Context, c *count) (participant.Reply, error) {
			return counter.Run(ctx, rdb, []string{"test:count:" + c.Key}, c.Limit)
		}),
	}
	req := func(t testing.TB, key string, limit int) participant.Request {
		payload, err := json.Marshal(count{Key: key, Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		return participant.Request{Type: "Count", Payload: payload}
	}
	participanttest.Run(t, func(t *testing.T) participanttest.Fixture {
		return participanttest.Fixture{
			NewHandler: func() participant.Handler { return h },
			Success:    func(t testing.TB, key string) participant.Request { return req(t, key, 1000) },
			// The limit is in the payload, so Heal moves the count back
			// instead, to -1, which leaves room for one; Effects counts
			// from where the count was set.
			Failure: func(t testing.TB, key string) participant.Request { return req(t, key, 0) },
			Heal: func(t testing.TB, key string) {
				if err := rdb.MSet(ctx, "test:count:"+key, -1, "test:count-base:"+key, -1).Err(); err != nil {
					t.Fatal(err)
				}
			},
			Effects: func(t testing.TB, key string) int {
				t.Helper()
				vals, err := rdb.MGet(ctx, "test:count:"+key, "test:count-base:"+key).Result()
				if err != nil {
					t.Fatal(err)
				}
				for i, v := range vals {
					if v == nil {
						vals[i] = "0"
					}
				}
				return atoi(t, vals[0]) - atoi(t, vals[1])
			},
		}
	})
}

func atoi(t testing.TB, v any) int {
	t.Helper()
	s, ok := v.(string)
	if !ok {
		t.Fatalf("got %v (%T), want a number", v, v)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
