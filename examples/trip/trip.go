// Package trip is a second saga built on ksaga's public API only: book a
// hotel room, charge the card (refunded if a later step fails), then confirm
// the trip in the trip store, a local step fenced by saga.KeyFrom(ctx).
//
//	def := trip.New(trip.NewStore(rdb))
//
// Its participants, hotel and card, are in participants.go; its daemon,
// tripd, in cmd/tripd; its tests run it end to end with package sagatest.
package trip

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
)

// Name is the saga type: its topics are saga.trip.inbox, saga.trip.state, …
const Name = "trip"

// Participants and their commands.
const (
	Hotel      = "hotel"
	BookRoom   = "BookRoom"
	CancelRoom = "CancelRoom"

	Card       = "card"
	ChargeCard = "ChargeCard"
	RefundCard = "RefundCard"
)

// Trip is the saga's data: the start request's JSON value.
type Trip struct {
	TripID      string `json:"trip_id"`
	Traveller   string `json:"traveller"`
	Hotel       string `json:"hotel"`
	Nights      int    `json:"nights"`
	AmountCents int64  `json:"amount_cents"`
	// BookingRef is the hotel's booking reference, kept from its reply to
	// BookRoom; CancelRoom names it. A start request leaves it out.
	BookingRef string `json:"booking_ref,omitempty"`
}

// SagaID names the trip's saga: the engine refuses a start request for
// another id (saga.Identified).
func (t *Trip) SagaID() string { return t.TripID }

// Booking is the hotel's data on a successful BookRoom.
type Booking struct {
	Reference string `json:"reference"`
}

// Validate rejects trips that no retry can fix: the engine dead-letters
// their start request.
func (t *Trip) Validate() error {
	switch {
	case t.TripID == "" || t.Traveller == "" || t.Hotel == "":
		return errors.New("trip_id, traveller and hotel are required")
	case t.Nights < 1 || t.Nights > 365:
		return fmt.Errorf("nights %d is out of range (1..365)", t.Nights)
	case t.AmountCents < 1:
		return fmt.Errorf("amount_cents %d must be positive", t.AmountCents)
	case t.BookingRef != "":
		return errors.New("booking_ref is set by the saga from the hotel's reply: leave it out")
	}
	return nil
}

// New returns the trip saga, confirming trips in store. A client, which
// only starts trips, may pass nil: client.Start needs the definition's name
// and data type only. The saga's name and step names are stored in Kafka
// headers and Redis keys: renaming one orphans trips in flight.
func New(store *Store) *saga.Definition {
	return saga.New(Name,
		saga.Step[Trip]{Name: "book-hotel", Do: bookRoom, Undo: cancelRoom,
			OnReply: saga.OnSuccess(func(t *Trip, b Booking) { t.BookingRef = b.Reference })},
		saga.Step[Trip]{Name: "charge-card", Do: chargeCard, Undo: refundCard, ReplyTimeout: 10 * time.Second},
		saga.Step[Trip]{Name: "confirm", Local: store.Confirm, UndoLocal: store.Cancel, Retry: retry.Policy{MaxAttempts: 5}},
	)
}

// Room is the payload of BookRoom and CancelRoom; CancelRoom names the
// booking's reference when the hotel returned one.
type Room struct {
	TripID    string `json:"trip_id"`
	Hotel     string `json:"hotel"`
	Nights    int    `json:"nights"`
	Reference string `json:"reference,omitempty"`
}

// Charge is the payload of ChargeCard and RefundCard.
type Charge struct {
	TripID      string `json:"trip_id"`
	Traveller   string `json:"traveller"`
	AmountCents int64  `json:"amount_cents"`
}

func bookRoom(_ context.Context, t *Trip) (saga.Command, error) {
	return saga.Command{Participant: Hotel, Type: BookRoom, Payload: Room{TripID: t.TripID, Hotel: t.Hotel, Nights: t.Nights}}, nil
}

func cancelRoom(_ context.Context, t *Trip) (saga.Command, error) {
	return saga.Command{Participant: Hotel, Type: CancelRoom, Payload: Room{TripID: t.TripID, Hotel: t.Hotel, Nights: t.Nights, Reference: t.BookingRef}}, nil
}

func chargeCard(_ context.Context, t *Trip) (saga.Command, error) {
	return saga.Command{Participant: Card, Type: ChargeCard, Payload: Charge{t.TripID, t.Traveller, t.AmountCents}}, nil
}

func refundCard(_ context.Context, t *Trip) (saga.Command, error) {
	return saga.Command{Participant: Card, Type: RefundCard, Payload: Charge{t.TripID, t.Traveller, t.AmountCents}}, nil
}

// ErrBlocked is wrapped by Confirm's error for a traveller on the blocklist
// (the key trip:blocked:<traveller> exists). It is permanent: the trip is
// compensated at once.
var ErrBlocked = errors.New("traveller is blocked")

// Store keeps confirmed trips in Redis: the hash trip:confirmation:<trip id>
// with status (confirmed or cancelled) and fence, the highest saga.Key fence
// it has seen. A write with a lower fence is refused, so a late Confirm of
// an engine that was fenced cannot bring back a cancelled trip.
type Store struct{ rdb redis.UniversalClient }

// NewStore returns a Store on rdb.
func NewStore(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// ConfirmationKey returns the Redis key of a trip's confirmation.
func ConfirmationKey(tripID string) string { return "trip:confirmation:" + tripID }

// BlockedKey returns the Redis key that blocks a traveller.
func BlockedKey(traveller string) string { return "trip:blocked:" + traveller }

// fenced writes status with ARGV[1] = the fence unless a higher fence was
// seen (then it returns the stored status). KEYS[1] = the confirmation,
// KEYS[2] = the blocklist entry when confirming.
var fenced = redis.NewScript(`
local seen = tonumber(redis.call('HGET', KEYS[1], 'fence'))
if seen and seen > tonumber(ARGV[1]) then return redis.call('HGET', KEYS[1], 'status') end
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return 'blocked' end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'fence', ARGV[1])
return 'ok'
`)

// Confirm records the trip as confirmed. It is the saga's local step: it
// may run again for the same fence (idempotent), fails permanently for a
// blocked traveller, and returns Redis errors to be retried.
func (s *Store) Confirm(ctx context.Context, t *Trip) error {
	return s.write(ctx, t, "confirmed", BlockedKey(t.Traveller))
}

// Cancel records the trip as cancelled, also when it was never confirmed,
// so that a late Confirm with a lower fence is refused. It compensates
// Confirm.
func (s *Store) Cancel(ctx context.Context, t *Trip) error { return s.write(ctx, t, "cancelled") }

func (s *Store) write(ctx context.Context, t *Trip, status string, extra ...string) error {
	k, ok := saga.KeyFrom(ctx)
	switch {
	case s == nil:
		return retry.Permanent(errors.New("the trip saga runs without a store: build it with New(NewStore(rdb))"))
	case !ok:
		return retry.Permanent(errors.New("no saga.Key in ctx"))
	}
	got, err := fenced.Run(ctx, s.rdb, append([]string{ConfirmationKey(t.TripID)}, extra...), k.Fence, status).Text()
	switch {
	case err != nil:
		return fmt.Errorf("%s trip %s: %w", status, t.TripID, err)
	case got == "blocked":
		return retry.Permanent(fmt.Errorf("confirm trip %s: %w", t.TripID, ErrBlocked))
	case got != "ok" && got != status:
		return retry.Permanent(fmt.Errorf("%s trip %s at fence %d: it is %s at a higher fence", status, t.TripID, k.Fence, got))
	}
	return nil
}
