package participant_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/participant"
)

// room is the payload of the BookRoom command.
type room struct {
	TripID string `json:"trip_id"`
	Hotel  string `json:"hotel"`
}

// book takes one of a hotel's rooms (KEYS[2]) and records the booking
// (KEYS[1]), or fails with NO_ROOMS. participant.Script adds the dedupe
// record and the stored reply to it, in the same script.
var book = participant.NewScript("hotel", `
if tonumber(redis.call('GET', KEYS[2]) or '0') < 1 then return failure('NO_ROOMS') end
redis.call('DECR', KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'booked', 'hotel', ARGV[1])
return success()
`)

// A participant's handler: a typed function per command type, whose effect
// happens once per command however often the command is delivered.
func Example() {
	mr, _ := miniredis.Run() // a real Redis in production
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	rdb.Set(ctx, "rooms:h-1", 1, 0)

	h := participant.Routes{
		"BookRoom": participant.Typed(func(ctx context.Context, r *room) (participant.Reply, error) {
			return book.Run(ctx, rdb, []string{"booking:" + r.TripID, "rooms:" + r.Hotel}, r.Hotel)
		}),
	}
	req := func(tripID string) participant.Request {
		return participant.Request{SagaID: tripID, SagaType: "trip", Type: "BookRoom", MessageID: tripID + "/book-hotel/do",
			Payload: []byte(`{"trip_id":"` + tripID + `","hotel":"h-1"}`)}
	}
	// t-1 is delivered twice (a retried batch): it books once. t-2 finds no
	// room left. An unknown command type is refused.
	reqs := []participant.Request{req("t-1"), req("t-1"), req("t-2"), {SagaID: "t-3", Type: "Teleport", MessageID: "m"}}
	replies, err := h.Handle(ctx, reqs)
	if err != nil {
		fmt.Println(err)
		return
	}
	for i, r := range replies {
		fmt.Println(strings.TrimSpace(reqs[i].SagaID + " " + r.Outcome + " " + r.Reason))
	}
	fmt.Println("rooms left:", rdb.Get(ctx, "rooms:h-1").Val())
	// Output:
	// t-1 success
	// t-1 success
	// t-2 failure NO_ROOMS
	// t-3 failure BAD_COMMAND
	// rooms left: 0
}
