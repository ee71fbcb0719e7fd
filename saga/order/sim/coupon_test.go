package sim_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

func issue(t *testing.T, msgID, orderID, customer, code string) participant.Request {
	return cmd(t, order.ReserveCoupon, msgID, order.CouponCommand{OrderID: orderID, CustomerID: customer, Code: code})
}

func giveBack(t *testing.T, msgID, orderID, customer, code string) participant.Request {
	return cmd(t, order.ReleaseCoupon, msgID, order.CouponCommand{OrderID: orderID, CustomerID: customer, Code: code})
}

func seedCoupons(t *testing.T, rdb *redis.Client, limits map[string]int64) {
	t.Helper()
	if err := sim.SeedCoupons(context.Background(), rdb, limits); err != nil {
		t.Fatalf("SeedCoupons: %v", err)
	}
}

// wantCoupon checks the issued count and the customers of a code.
func wantCoupon(t *testing.T, rdb *redis.Client, code string, issued int64, customers ...string) {
	t.Helper()
	ctx := context.Background()
	n, err := rdb.Get(ctx, sim.CouponIssuedKey(code)).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	if n != issued {
		t.Errorf("%s issued: got %d, want %d", code, n, issued)
	}
	got, err := rdb.SMembers(ctx, sim.CouponCustomersKey(code)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(sorted(got), ",") != strings.Join(sorted(customers), ",") {
		t.Errorf("%s customers: got %v, want %v", code, got, customers)
	}
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }

func TestCouponIssue(t *testing.T) {
	rdb := newRedis(t)
	cp := sim.NewCoupon(rdb)
	seedCoupons(t, rdb, map[string]int64{"SPRING": 2, "NONE": 0})
	tests := []struct {
		name  string
		cmd   participant.Request
		want  message.Reply
		claim map[string]string
	}{
		{"first", issue(t, "m-1", "o-1", "c-1", "SPRING"), ok,
			map[string]string{"status": "issued", "code": "SPRING", "customer_id": "c-1"}},
		{"same customer again", issue(t, "m-2", "o-2", "c-1", "SPRING"), fail(order.ReasonCouponAlreadyUsed), nil},
		{"second customer", issue(t, "m-3", "o-3", "c-2", "SPRING"), ok,
			map[string]string{"status": "issued", "code": "SPRING", "customer_id": "c-2"}},
		{"limit reached", issue(t, "m-4", "o-4", "c-3", "SPRING"), fail(order.ReasonCouponExhausted), nil},
		{"unknown code", issue(t, "m-5", "o-5", "c-3", "WINTER"), fail(order.ReasonCouponUnknown), nil},
		{"limit zero", issue(t, "m-6", "o-6", "c-3", "NONE"), fail(order.ReasonCouponExhausted), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c order.CouponCommand
			_ = jsonDecode(tt.cmd.Payload, &c)
			wantReplies(t, handle(t, cp, tt.cmd), tt.want)
			wantHash(t, rdb, sim.CouponClaimKey(c.OrderID), tt.claim)
		})
	}
	wantCoupon(t, rdb, "SPRING", 2, "c-1", "c-2")
	wantCoupon(t, rdb, "NONE", 0)
	if n, _ := rdb.Exists(context.Background(), sim.CouponIssuedKey("WINTER"), sim.CouponCustomersKey("WINTER")).Result(); n != 0 {
		t.Errorf("an unknown code got %d ledger keys, want 0", n)
	}
}

// A release gives back the count and the customer once, whatever the
// redeliveries; the customer may then use the code again, and a late issue
// of the released order is refused.
func TestCouponReleaseOnce(t *testing.T) {
	rdb := newRedis(t)
	cp := sim.NewCoupon(rdb)
	seedCoupons(t, rdb, map[string]int64{"SPRING": 1})
	wantReplies(t, handle(t, cp, issue(t, "m-1", "o-1", "c-1", "SPRING"), issue(t, "m-1", "o-1", "c-1", "SPRING")), ok, ok)
	wantCoupon(t, rdb, "SPRING", 1, "c-1")

	wantReplies(t, handle(t, cp, giveBack(t, "m-2", "o-1", "c-1", "SPRING"), giveBack(t, "m-2", "o-1", "c-1", "SPRING")), ok, ok)
	wantReplies(t, handle(t, cp, giveBack(t, "m-3", "o-1", "c-1", "SPRING")), ok)
	wantCoupon(t, rdb, "SPRING", 0)
	wantHash(t, rdb, sim.CouponClaimKey("o-1"), map[string]string{"status": "released", "code": "SPRING", "customer_id": "c-1"})

	// The redelivered issue answers from its record; a new one for the
	// released order is refused.
	wantReplies(t, handle(t, cp, issue(t, "m-1", "o-1", "c-1", "SPRING"), issue(t, "m-4", "o-1", "c-1", "SPRING")), ok, fail(sim.ReasonCancelled))
	wantCoupon(t, rdb, "SPRING", 0)

	// The coupon and the customer are free again.
	wantReplies(t, handle(t, cp, issue(t, "m-5", "o-2", "c-1", "SPRING")), ok)
	wantCoupon(t, rdb, "SPRING", 1, "c-1")
}

// A release for an order that never claimed leaves a tombstone and takes
// nothing; the issue that comes after it is refused.
func TestCouponReleaseBeforeIssue(t *testing.T) {
	rdb := newRedis(t)
	cp := sim.NewCoupon(rdb)
	seedCoupons(t, rdb, map[string]int64{"SPRING": 5})
	wantReplies(t, handle(t, cp, issue(t, "m-1", "o-1", "c-1", "SPRING")), ok)

	wantReplies(t, handle(t, cp, giveBack(t, "m-2", "o-2", "c-1", "SPRING")), ok)
	wantHash(t, rdb, sim.CouponClaimKey("o-2"), map[string]string{"status": "released"})
	wantCoupon(t, rdb, "SPRING", 1, "c-1") // o-1's coupon is untouched

	wantReplies(t, handle(t, cp, issue(t, "m-3", "o-2", "c-2", "SPRING")), fail(sim.ReasonCancelled))
	wantCoupon(t, rdb, "SPRING", 1, "c-1")
}

// A failed issue is stored: a redelivery answers the same even when it
// would now succeed.
func TestCouponFailureIsStored(t *testing.T) {
	rdb := newRedis(t)
	cp := sim.NewCoupon(rdb)
	c := issue(t, "m-1", "o-1", "c-1", "SPRING")
	wantReplies(t, handle(t, cp, c), fail(order.ReasonCouponUnknown))
	seedCoupons(t, rdb, map[string]int64{"SPRING": 5})
	wantReplies(t, handle(t, cp, c), fail(order.ReasonCouponUnknown))
	wantCoupon(t, rdb, "SPRING", 0)
}

// A command without a code (an order without a coupon; the saga skips the
// step, so it sends none) is answered without Redis: the handler's client
// points nowhere.
func TestCouponWithoutCodeTouchesNothing(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer rdb.Close()
	cp := sim.NewCoupon(rdb)
	wantReplies(t, handle(t, cp, issue(t, "m-1", "o-1", "c-1", ""), giveBack(t, "m-2", "o-1", "c-1", "")), ok, ok)
}

// A limit that is not an integer fails the batch before anything is
// written.
func TestCouponCorruptLimitWritesNothing(t *testing.T) {
	rdb := newRedis(t)
	cp := sim.NewCoupon(rdb)
	if err := rdb.Set(context.Background(), sim.CouponLimitKey("SPRING"), "many", 0).Err(); err != nil {
		t.Fatal(err)
	}
	_, err := cp.Handle(context.Background(), []participant.Request{issue(t, "m-1", "o-1", "c-1", "SPRING")})
	if err == nil || !strings.Contains(err.Error(), "want an integer") {
		t.Fatalf("Handle: got error %v, want one for a non-integer limit", err)
	}
	if n, _ := rdb.Exists(context.Background(), sim.DedupeKey(order.Coupon, order.Name, "m-1"), sim.CouponClaimKey("o-1"),
		sim.CouponIssuedKey("SPRING"), sim.CouponCustomersKey("SPRING")).Result(); n != 0 {
		t.Errorf("keys written: got %d, want 0", n)
	}
}

func TestCouponBadCommand(t *testing.T) {
	rdb := newRedis(t)
	cp := sim.NewCoupon(rdb)
	for _, c := range []participant.Request{
		issue(t, "m-1", "", "c-1", "SPRING"),
		issue(t, "m-2", "o-1", "", "SPRING"),
		cmd(t, "IssueEverything", "m-3", order.CouponCommand{OrderID: "o-1", CustomerID: "c-1", Code: "SPRING"}),
	} {
		wantReplies(t, handle(t, cp, c), fail(sim.ReasonBadCommand))
	}
}

// TestCouponRace: 40 handlers (participant instances) issue one code with
// a limit of 25 to 400 orders of 100 customers at once, each order's
// command delivered twice, while every fifth order is released again. The
// count, the set and the claims agree, and the limit holds.
func TestCouponRace(t *testing.T) {
	rdb := newRedis(t)
	seedCoupons(t, rdb, map[string]int64{"RACE": 25})
	issues, releases := make([]participant.Request, 400), make([]participant.Request, 400)
	for i := range 400 {
		id, customer := fmt.Sprintf("o-%d", i), fmt.Sprintf("c-%d", i%100)
		issues[i], releases[i] = issue(t, "issue-"+id, id, customer, "RACE"), giveBack(t, "release-"+id, id, customer, "RACE")
	}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for w := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cp := sim.NewCoupon(rdb)
			for i := w; i < 400; i += 40 {
				if _, err := cp.Handle(context.Background(), []participant.Request{issues[i], issues[i]}); err != nil {
					errs <- err
					return
				}
				if i%5 == 0 {
					if _, err := cp.Handle(context.Background(), []participant.Request{releases[i]}); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ctx := context.Background()
	held := make(map[string]int)
	for i := range 400 {
		h := rdb.HGetAll(ctx, sim.CouponClaimKey(fmt.Sprintf("o-%d", i))).Val()
		if h["status"] == "issued" {
			held[h["customer_id"]]++
		}
	}
	issued, _ := rdb.Get(ctx, sim.CouponIssuedKey("RACE")).Int64()
	customers := rdb.SMembers(ctx, sim.CouponCustomersKey("RACE")).Val()
	if issued > 25 || issued != int64(len(held)) || len(customers) != len(held) {
		t.Errorf("issued %d (limit 25), %d customers in the set, %d customers hold a claim", issued, len(customers), len(held))
	}
	for _, c := range customers {
		if held[c] != 1 {
			t.Errorf("customer %s is in the set and holds %d claims", c, held[c])
		}
	}
	if issued < 20 {
		t.Errorf("only %d issued: the race should fill the limit but for the releases", issued)
	}
}

func jsonDecode(b []byte, v any) error { return json.Unmarshal(b, v) }
