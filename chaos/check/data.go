package check

import (
	"encoding/json"
	"reflect"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

// InvData is the invariant that the terminal event of every order saga
// carries the saga's final data (message.Event.Data), and that the data
// agrees with the order it started with and with the ledgers. The rules are
// those of analysis.terminalData.
const InvData = "terminal-data"

// terminalData checks the data of each order saga's terminal event:
//
//  1. It is there, it decodes as an order, and apart from what the saga
//     folds in from its replies (authorization_id, tracking_number) it is
//     the order the saga started with.
//  2. A completed order names the authorization and the tracking number
//     its payment and shipment hashes hold (authorization_id of
//     ksaga:sim:payment:<id>, tracking_number of ksaga:sim:shipment:<id>);
//     any order that names one names those.
//  3. A payment's cancelled_authorization_id (CancelPayment names the
//     authorization the saga holds), when set, is the payment's own
//     authorization_id; a compensated order whose data names an
//     authorization and whose payment was cancelled cancelled that one.
func (a *analysis) terminalData() {
	for _, id := range a.orderIDs() {
		end, ok := a.ended[id]
		if !ok {
			continue // the terminal rule reports it
		}
		var ev message.Event
		for _, e := range a.d.Events[id] {
			if message.Terminal(e.Type) {
				ev = e
				break
			}
		}
		a.rep.Checked[InvData]++
		if len(ev.Data) == 0 {
			a.fail(InvData, id, "%s (version %d) carries no data", end, ev.Version)
			continue
		}
		var got order.Order
		if err := json.Unmarshal(ev.Data, &got); err != nil {
			a.fail(InvData, id, "%s carries data that is not an order: %v", end, err)
			continue
		}
		started := got
		started.AuthorizationID, started.TrackingNumber = "", ""
		if want := a.sagas[id].Order; !reflect.DeepEqual(started, *want) {
			a.fail(InvData, id, "%s carries order %s of %d cents (customer %s, coupon %q), not the order it started with: %s of %d cents (customer %s, coupon %q)",
				end, got.OrderID, got.AmountCents, got.CustomerID, got.Coupon, want.OrderID, want.AmountCents, want.CustomerID, want.Coupon)
		}
		p, s := a.d.Payments[id], a.d.Shipments[id]
		if got.AuthorizationID != "" || end == message.EventSagaCompleted {
			if got.AuthorizationID == "" || got.AuthorizationID != p["authorization_id"] {
				a.fail(InvData, id, "%s names authorization %q, the payment holds %q", end, got.AuthorizationID, p["authorization_id"])
			}
		}
		if got.TrackingNumber != "" || end == message.EventSagaCompleted {
			if got.TrackingNumber == "" || got.TrackingNumber != s["tracking_number"] {
				a.fail(InvData, id, "%s names tracking number %q, the shipment holds %q", end, got.TrackingNumber, s["tracking_number"])
			}
		}
		if c := p["cancelled_authorization_id"]; c != "" && c != p["authorization_id"] {
			a.fail(InvData, id, "the payment's cancelled_authorization_id is %q, its authorization_id %q: CancelPayment named another authorization", c, p["authorization_id"])
		}
		if end == message.EventSagaCompensated && got.AuthorizationID != "" && p["status"] == "cancelled" && p["cancelled_authorization_id"] != got.AuthorizationID {
			a.fail(InvData, id, "compensated holding authorization %q, but the cancelled payment's cancelled_authorization_id is %q: CancelPayment did not name it", got.AuthorizationID, p["cancelled_authorization_id"])
		}
	}
}
