package trip

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/participant"
)

// Failure reasons of the participants.
const (
	ReasonNoRooms  = "NO_ROOMS"
	ReasonDeclined = "CARD_DECLINED"
)

// DefaultCardLimitCents is the largest charge the card participant accepts
// unless told otherwise.
const DefaultCardLimitCents = 200_000

// BookingKey is the hotel's hash of a trip: status (booked or cancelled),
// hotel, nights.
func BookingKey(tripID string) string { return "trip:booking:" + tripID }

// RoomsKey counts the rooms a hotel has left; a hotel without it takes
// every booking.
func RoomsKey(hotel string) string { return "trip:rooms:" + hotel }

// ChargeKey is the card's hash of a trip: status (charged or refunded),
// amount_cents.
func ChargeKey(tripID string) string { return "trip:charge:" + tripID }

// Each script is an effect made exactly-once by participant.Script: it runs
// once per command, and a compensation that arrives before its action leaves
// a tombstone that refuses the action. The keys of a script share one Redis
// node (not Redis Cluster).
var (
	book = participant.NewScript(Hotel, `
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'cancelled' then return failure('CANCELLED') end
if status == 'booked' then return success({reference = redis.call('HGET', KEYS[1], 'reference')}) end
local left = redis.call('GET', KEYS[2])
if left and tonumber(left) < 1 then return failure('`+ReasonNoRooms+`') end
if left then redis.call('DECR', KEYS[2]) end
redis.call('HSET', KEYS[1], 'status', 'booked', 'hotel', ARGV[1], 'nights', ARGV[2], 'reference', ARGV[3])
return success({reference = ARGV[3]})`)
	cancelBooking = participant.NewScript(Hotel, `
if redis.call('HGET', KEYS[1], 'status') == 'booked' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCR', KEYS[2])
end
redis.call('HSET', KEYS[1], 'status', 'cancelled')
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'cancelled_reference', ARGV[1]) end
return success()`)
	charge = participant.NewScript(Card, `
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'refunded' then return failure('CANCELLED') end
if status == 'charged' then return success() end
if tonumber(ARGV[1]) > tonumber(ARGV[2]) then return failure('`+ReasonDeclined+`') end
redis.call('HSET', KEYS[1], 'status', 'charged', 'amount_cents', ARGV[1])
return success()`)
	refund = participant.NewScript(Card, `
redis.call('HSET', KEYS[1], 'status', 'refunded')
return success()`)
)

// BookingReference is the reference the hotel gives a trip's booking.
func BookingReference(tripID string) string { return "HTL-" + tripID }

// NewHotel returns the hotel participant: BookRoom takes a room (failing
// with ReasonNoRooms when the hotel's counter is at 0) and returns its
// booking reference (Booking), CancelRoom gives it back.
func NewHotel(rdb redis.UniversalClient) participant.Handler {
	return participant.Routes{
		BookRoom: participant.Typed(func(ctx context.Context, r *Room) (participant.Reply, error) {
			return book.Run(ctx, rdb, []string{BookingKey(r.TripID), RoomsKey(r.Hotel)}, r.Hotel, r.Nights, BookingReference(r.TripID))
		}),
		CancelRoom: participant.Typed(func(ctx context.Context, r *Room) (participant.Reply, error) {
			return cancelBooking.Run(ctx, rdb, []string{BookingKey(r.TripID), RoomsKey(r.Hotel)}, r.Reference)
		}),
	}
}

// NewCard returns the card participant: ChargeCard fails with
// ReasonDeclined above limitCents, RefundCard refunds.
func NewCard(rdb redis.UniversalClient, limitCents int64) participant.Handler {
	return participant.Routes{
		ChargeCard: participant.Typed(func(ctx context.Context, c *Charge) (participant.Reply, error) {
			return charge.Run(ctx, rdb, []string{ChargeKey(c.TripID)}, c.AmountCents, limitCents)
		}),
		RefundCard: participant.Typed(func(ctx context.Context, c *Charge) (participant.Reply, error) {
			return refund.Run(ctx, rdb, []string{ChargeKey(c.TripID)})
		}),
	}
}
