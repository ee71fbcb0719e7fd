// Package order is the reference order saga: issue the order's coupon (only
// for an order that names one), reserve the stock, authorize the payment,
// schedule the shipment, then record the completed order. A failure at any
// step undoes the steps before it, last first; recording the order is undone
// by cancelling it in the store when its attempts run out.
//
//	def := order.New(store) // store records completed and cancelled orders
//
// Its participants (coupon, inventory, payment, shipping) and the Redis
// order store live in package sim.
package order

import (
	"context"
	"errors"
	"fmt"

	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
)

// Name is the saga type: its topics are saga.order.inbox, saga.order.state, …
const Name = "order"

// Participant names; their topics are <name>.commands.
const (
	Coupon    = "coupon"
	Inventory = "inventory"
	Payment   = "payment"
	Shipping  = "shipping"
)

// Participants lists the participants of the order saga, in step order.
var Participants = []string{Coupon, Inventory, Payment, Shipping}

// Command types sent to the participants.
const (
	ReserveCoupon    = "ReserveCoupon"
	ReleaseCoupon    = "ReleaseCoupon"
	ReserveInventory = "ReserveInventory"
	ReleaseInventory = "ReleaseInventory"
	AuthorizePayment = "AuthorizePayment"
	CancelPayment    = "CancelPayment"
	ScheduleShipment = "ScheduleShipment"
	CancelShipment   = "CancelShipment"
)

// Failure reasons the reference participants reply with.
const (
	ReasonOutOfStock      = "OUT_OF_STOCK"
	ReasonPaymentDeclined = "PAYMENT_DECLINED"
	ReasonUndeliverable   = "UNDELIVERABLE"
	// ReasonCouponUnknown: the coupon code has no limit set.
	ReasonCouponUnknown = "COUPON_UNKNOWN"
	// ReasonCouponExhausted: as many coupons of the code are issued as
	// its limit allows.
	ReasonCouponExhausted = "COUPON_EXHAUSTED"
	// ReasonCouponAlreadyUsed: the customer holds a coupon of the code
	// already (through another order).
	ReasonCouponAlreadyUsed = "COUPON_ALREADY_USED"
)

// MaxCouponLen bounds the length of a coupon code.
const MaxCouponLen = 64

// MaxAmountCents bounds an order's amount; larger amounts are rejected as
// invalid input rather than declined.
const MaxAmountCents = 1_000_000_000_00

// Order is the saga's data: the start request's JSON value.
type Order struct {
	OrderID     string  `json:"order_id"`
	CustomerID  string  `json:"customer_id"`
	AmountCents int64   `json:"amount_cents"`
	Currency    string  `json:"currency"`
	Items       []Item  `json:"items"`
	ShipTo      Address `json:"ship_to"`
	// Coupon is the code of a coupon to apply, or empty. Each code is
	// issued up to its limit, once per customer (package sim). An order
	// without one never reaches the coupon participant.
	Coupon string `json:"coupon,omitempty"`
	// AuthorizationID is the payment's authorization, as the payment
	// participant returned it (step authorize-payment); CancelPayment
	// names it. TrackingNumber is the shipment's, as the shipping
	// participant returned it; SagaCompleted carries it. Both are set by
	// the saga from the replies: a start request must leave them out.
	AuthorizationID string `json:"authorization_id,omitempty"`
	TrackingNumber  string `json:"tracking_number,omitempty"`
}

// SagaID names the order's saga: its order_id. The engine refuses a start
// request whose key is another id (saga.Identified).
func (o *Order) SagaID() string { return o.OrderID }

// PaymentResult is the payment participant's data on a successful
// AuthorizePayment.
type PaymentResult struct {
	AuthorizationID string `json:"authorization_id"`
}

// ShippingResult is the shipping participant's data on a successful
// ScheduleShipment.
type ShippingResult struct {
	TrackingNumber string `json:"tracking_number"`
}

// Item is a line of an order.
type Item struct {
	SKU string `json:"sku"`
	Qty int64  `json:"qty"`
}

// Address is where an order ships. An empty or "XX" country is
// undeliverable: the shipping participant fails it.
type Address struct {
	Country string `json:"country"`
	City    string `json:"city"`
}

// Validate rejects orders that no retry can fix.
func (o *Order) Validate() error {
	switch {
	case o.OrderID == "":
		return errors.New("order_id is required")
	case o.AuthorizationID != "" || o.TrackingNumber != "":
		return errors.New("authorization_id and tracking_number are set by the saga from its participants' replies: leave them out")
	case o.CustomerID == "":
		return errors.New("customer_id is required")
	case o.AmountCents <= 0 || o.AmountCents > MaxAmountCents:
		return fmt.Errorf("amount_cents %d is out of range (1..%d)", o.AmountCents, int64(MaxAmountCents))
	case len(o.Currency) != 3:
		return fmt.Errorf("currency %q is not an ISO 4217 code", o.Currency)
	case len(o.Items) == 0:
		return errors.New("items must not be empty")
	}
	for i, it := range o.Items {
		if it.SKU == "" || it.Qty <= 0 || it.Qty > 1_000_000 {
			return fmt.Errorf("item %d: needs a sku and a qty in 1..1000000", i)
		}
	}
	if o.Coupon != "" && !validCoupon(o.Coupon) {
		return fmt.Errorf("coupon %q: want 1 to %d letters, digits, '.', '_' or '-', starting with a letter or digit", o.Coupon, MaxCouponLen)
	}
	return nil
}

// validCoupon reports whether code is a coupon code: it becomes part of
// Redis keys, so it is kept to a plain alphabet.
func validCoupon(code string) bool {
	if len(code) > MaxCouponLen {
		return false
	}
	for i, c := range code {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// Store records completed orders: the saga's local last step. An error
// from Complete is retried under the step's policy, then dead-lettered and
// compensated; the compensation calls Cancel.
//
// The engine puts a saga.Key in the ctx of both (saga.KeyFrom). Its Fence
// grows with every change of the saga: a redelivered attempt of Complete
// gets the same Fence, a later attempt and Cancel a higher one. A store
// keeps the highest Fence it has seen per order and refuses writes with a
// lower one, so that a late write of an older attempt (from an engine
// instance that was fenced while it ran) cannot undo a newer outcome.
type Store interface {
	// Complete records o as completed. It must be idempotent for a given
	// Fence and refuse a Fence lower than one it has seen for o.
	Complete(ctx context.Context, o *Order) error
	// Cancel compensates Complete: it records o as cancelled, also when it
	// was never completed, so that a late Complete of an older attempt is
	// refused. It must be idempotent. The engine calls it when the saga
	// compensates after Complete ran or may have run (its attempts ran
	// out); an error is retried, then the saga ends SagaFailed.
	Cancel(ctx context.Context, o *Order) error
}

// Step names. They are stored in headers, events and state.
const (
	StepReserveCoupon    = "reserve-coupon"
	StepReserveInventory = "reserve-inventory"
	StepAuthorizePayment = "authorize-payment"
	StepScheduleShipping = "schedule-shipping"
	StepCompleteOrder    = "complete-order"
)

// GroupReserve is the parallel group of reserve-inventory and
// authorize-payment: their commands go out together.
const GroupReserve = "reserve"

// CouponCommand is the payload of ReserveCoupon and ReleaseCoupon.
type CouponCommand struct {
	OrderID    string `json:"order_id"`
	CustomerID string `json:"customer_id"`
	Code       string `json:"code"`
}

// InventoryCommand is the payload of ReserveInventory and ReleaseInventory.
type InventoryCommand struct {
	OrderID string `json:"order_id"`
	Items   []Item `json:"items"`
}

// PaymentCommand is the payload of AuthorizePayment and CancelPayment.
// CancelPayment names the authorization it cancels, when the payment
// participant returned one (an authorization whose reply never came has
// none: the participant cancels by order id).
type PaymentCommand struct {
	OrderID         string `json:"order_id"`
	CustomerID      string `json:"customer_id"`
	AmountCents     int64  `json:"amount_cents"`
	Currency        string `json:"currency"`
	AuthorizationID string `json:"authorization_id,omitempty"`
}

// ShippingCommand is the payload of ScheduleShipment and CancelShipment.
type ShippingCommand struct {
	OrderID string  `json:"order_id"`
	ShipTo  Address `json:"ship_to"`
	Items   []Item  `json:"items"`
}

// Versions of the order saga's definition (saga.Definition.WithVersion).
// Version 1 had no coupon step; version 2 added reserve-coupon as its first
// step. A running saga of version 1 cannot take version 2's steps (every
// step moved one place down: saga.Compatible refuses it), so a daemon runs
// both until no version-1 saga is left, then version 2 alone. Version 3
// gives the payment's cancellation more attempts (saga.Step.Compensation):
// a change version 2's sagas can take, so version 3 adopts them
// (saga.Definition.Adopts) and a build hosting version 3 alone runs them.
const (
	V1     = 1
	V2     = 2
	V3     = 3
	Newest = V3
)

// New returns the newest version of the order saga (Newest), recording
// completed orders in store and cancelling them there when the saga
// compensates after complete-order.
//
// Its first step, reserve-coupon, is skipped for an order without a
// coupon: no command, no event, no compensation.
func New(store Store) *saga.Definition { return NewV3(store) }

// Versions returns the order saga's definitions of the versions vs
// (V1, V2), for a daemon that hosts them (daemon.BuildSagaVersions).
func Versions(store Store, vs ...int) ([]*saga.Definition, error) {
	var defs []*saga.Definition
	for _, v := range vs {
		switch v {
		case V1:
			defs = append(defs, NewV1(store))
		case V2:
			defs = append(defs, NewV2(store))
		case V3:
			defs = append(defs, NewV3(store))
		default:
			return nil, fmt.Errorf("the order saga has no version %d (it has %d to %d)", v, V1, Newest)
		}
	}
	return defs, nil
}

// NewV1 returns version 1 of the order saga: reserve stock and authorize
// the payment (in parallel), schedule the shipment, record the order. It
// knows no coupons: an order's coupon field is ignored.
func NewV1(store Store) *saga.Definition { return saga.New(Name, StepsV1(store)...) }

// StepsV1 returns the steps of version 1, for a version that builds on
// them (saga.Definition.Adopts).
func StepsV1(store Store) []saga.Step[Order] {
	return []saga.Step[Order]{
		{Name: StepReserveInventory, Group: GroupReserve, Do: command(Inventory, ReserveInventory, inventory), Undo: command(Inventory, ReleaseInventory, inventory)},
		{Name: StepAuthorizePayment, Group: GroupReserve, Do: command(Payment, AuthorizePayment, payment), Undo: command(Payment, CancelPayment, payment),
			OnReply: saga.OnSuccess(func(o *Order, r PaymentResult) { o.AuthorizationID = r.AuthorizationID })},
		{Name: StepScheduleShipping, Do: command(Shipping, ScheduleShipment, shipping), Undo: command(Shipping, CancelShipment, shipping),
			OnReply: saga.OnSuccess(func(o *Order, r ShippingResult) { o.TrackingNumber = r.TrackingNumber })},
		{Name: StepCompleteOrder, Local: store.Complete, UndoLocal: store.Cancel, Retry: retry.Policy{MaxAttempts: 3}},
	}
}

// NewV3 returns version 3 of the order saga: version 2 whose payment
// cancellation is sent up to 20 times before the saga ends SagaFailed. It
// adopts version 2's sagas.
func NewV3(store Store) *saga.Definition {
	steps := stepsV2(store)
	for i := range steps {
		if steps[i].Name == StepAuthorizePayment {
			steps[i].Compensation = compensation.Policy{MaxAttempts: 20}
		}
	}
	return saga.New(Name, steps...).WithVersion(V3).Adopts(NewV2(store), nil)
}

// NewV2 returns version 2 of the order saga: version 1 with the coupon
// step first.
func NewV2(store Store) *saga.Definition { return saga.New(Name, stepsV2(store)...).WithVersion(V2) }

func stepsV2(store Store) []saga.Step[Order] {
	return []saga.Step[Order]{
		{Name: StepReserveCoupon, Do: command(Coupon, ReserveCoupon, coupon), Undo: command(Coupon, ReleaseCoupon, coupon),
			Skip: func(o *Order) bool { return o.Coupon == "" },
			// A coupon service that stays silent parks the order rather
			// than cancelling it (write-up 004): an operator resumes it
			// once the service is back, and the coupon is issued then.
			Park: true},
		// Stock and payment are reserved at once (a parallel group):
		// one round trip to the participants instead of two.
		{Name: StepReserveInventory, Group: GroupReserve, Do: command(Inventory, ReserveInventory, inventory), Undo: command(Inventory, ReleaseInventory, inventory)},
		{Name: StepAuthorizePayment, Group: GroupReserve, Do: command(Payment, AuthorizePayment, payment), Undo: command(Payment, CancelPayment, payment),
			OnReply: saga.OnSuccess(func(o *Order, r PaymentResult) { o.AuthorizationID = r.AuthorizationID })},
		{Name: StepScheduleShipping, Do: command(Shipping, ScheduleShipment, shipping), Undo: command(Shipping, CancelShipment, shipping),
			OnReply: saga.OnSuccess(func(o *Order, r ShippingResult) { o.TrackingNumber = r.TrackingNumber })},
		{Name: StepCompleteOrder, Local: store.Complete, UndoLocal: store.Cancel, Retry: retry.Policy{MaxAttempts: 3}},
	}
}

func command[P any](participant, typ string, payload func(*Order) P) func(context.Context, *Order) (saga.Command, error) {
	return func(_ context.Context, o *Order) (saga.Command, error) {
		return saga.Command{Participant: participant, Type: typ, Payload: payload(o)}, nil
	}
}

func coupon(o *Order) CouponCommand {
	return CouponCommand{OrderID: o.OrderID, CustomerID: o.CustomerID, Code: o.Coupon}
}

func inventory(o *Order) InventoryCommand {
	return InventoryCommand{OrderID: o.OrderID, Items: o.Items}
}

func payment(o *Order) PaymentCommand {
	return PaymentCommand{OrderID: o.OrderID, CustomerID: o.CustomerID, AmountCents: o.AmountCents, Currency: o.Currency, AuthorizationID: o.AuthorizationID}
}

func shipping(o *Order) ShippingCommand {
	return ShippingCommand{OrderID: o.OrderID, ShipTo: o.ShipTo, Items: o.Items}
}
