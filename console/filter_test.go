package console

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// filterFixture is a console on a redis-server whose view holds sagas
// of type t (3 partitions): s-00 to s-39 running, on version 1 or 2
// (even or odd), at step a or b (i%4 < 2 or not), with deadlines in ties
// of three across partitions; their StepStarted is i minutes ago. s-gone
// has a deadline and no state. The events index has s-00 to s-09 parked,
// s-09 the latest.
func filterFixture(t *testing.T, examine int) (*Console, *sagaType, time.Time) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	t.Cleanup(func() { rdb.Close() })
	now := time.UnixMilli(10_000_000)
	c := &Console{cfg: Config{Redis: rdb, Timeout: 5 * time.Second, Now: func() time.Time { return now },
		Limits: Limits{Examine: examine}.withDefaults()}, log: slog.New(slog.DiscardHandler)}
	st := &sagaType{Saga: Saga{InboxPartitions: 3}, name: "t", events: newEventIndex(Limits{}.withDefaults())}
	ctx := context.Background()
	for i := range 40 {
		id := fmt.Sprintf("s-%02d", i)
		s := orchestrator.State{ID: id, Type: "t", Status: message.StatusRunning, DefinitionVersion: 1 + i%2,
			StepName: []string{"a", "b"}[i%4/2], Undoing: -1, StepStarted: now.Add(-time.Duration(i) * time.Minute).UnixMilli()}
		raw, _ := json.Marshal(s)
		p := message.HomePartition(id, 3)
		if err := rdb.HSet(ctx, orchestrator.StateKey("t", p, id), "state", raw).Err(); err != nil {
			t.Fatal(err)
		}
		// Deadlines in ties of three, spread over the partitions.
		rdb.ZAdd(ctx, deadlinesKey("t", int32(i%3)), redis.Z{Score: float64(9_000_000 + i/3*1000), Member: id})
	}
	rdb.ZAdd(ctx, deadlinesKey("t", 0), redis.Z{Score: 9_000_000, Member: "s-gone"})
	for i := range 10 {
		v, _ := json.Marshal(message.Event{SagaID: fmt.Sprintf("s-%02d", i), Type: message.EventSagaParked, State: message.StatusParked, At: now})
		st.events.add(&kgo.Record{Partition: 0, Offset: int64(i), Value: v})
	}
	return c, st, now
}

// TestWalkFlightPages walks the filtered in-flight list page by page, with
// pages and examine bounds that end mid-tie, and checks that the pages
// together list every match once, in deadline order, each page full
// unless it stopped at the bound or is the last.
func TestWalkFlightPages(t *testing.T) {
	for _, examine := range []int{4, 7, 1000} {
		c, st, _ := filterFixture(t, examine)
		for _, tc := range []struct {
			f    filter
			want int
		}{{filter{}, 41}, {filter{Version: 2}, 20}, {filter{Step: "b"}, 20}, {filter{Version: 2, Step: "a"}, 10}, {filter{Version: 3}, 0}} {
			for _, n := range []int{1, 3, 50} {
				t.Run(fmt.Sprintf("examine=%d/%+v/n=%d", examine, tc.f, n), func(t *testing.T) {
					var got []string
					var after *cursor
					last := cursor{score: -1}
					for page := 0; ; page++ {
						if page > 200 {
							t.Fatal("more than 200 pages")
						}
						rows, ex, next, err := c.walkFlight(context.Background(), st, after, n, func(r *flightRow) bool {
							return tc.f.match(st, r.State)
						})
						if err != nil {
							t.Fatal(err)
						}
						if ex.Count > examine {
							t.Errorf("page %d read %d states, want at most %d", page, ex.Count, examine)
						}
						if next != "" && !ex.Capped && len(rows) != n {
							t.Errorf("page %d has %d rows and a next page, want %d", page, len(rows), n)
						}
						for _, r := range rows {
							cu := cursor{float64(r.Deadline.UnixMilli()), r.ID}
							if !last.less(cu) {
								t.Errorf("page %d: %v after %v: not in deadline order", page, cu, last)
							}
							last = cu
							got = append(got, r.ID)
						}
						if next == "" {
							break
						}
						cu, ok := parseCursor(next)
						if !ok {
							t.Fatalf("next %q is not a cursor", next)
						}
						after = &cu
					}
					if len(got) != tc.want {
						t.Errorf("got %d sagas, want %d: %v", len(got), tc.want, got)
					}
					if len(slices.Compact(slices.Sorted(slices.Values(got)))) != len(got) {
						t.Errorf("a saga is listed twice: %v", got)
					}
				})
			}
		}
	}
}

// TestStuck holds the stuck rule (the engine's: longer in the step than
// its budget) and the stuck list's walk over it.
func TestStuck(t *testing.T) {
	c, st, now := filterFixture(t, 1000)
	b := budgets{do: map[string]time.Duration{"a": 10 * time.Minute, "b": 30 * time.Minute}, undo: map[string]time.Duration{"a": time.Minute}}
	at := func(min int) int64 { return now.Add(-time.Duration(min) * time.Minute).UnixMilli() }
	for _, tc := range []struct {
		name string
		s    viewState
		want bool
	}{
		{"within its budget", viewState{orchestrator.State{Status: message.StatusRunning, StepName: "a", Undoing: -1, StepStarted: at(9)}}, false},
		{"past its budget", viewState{orchestrator.State{Status: message.StatusRunning, StepName: "a", Undoing: -1, StepStarted: at(11)}}, true},
		{"another step's budget", viewState{orchestrator.State{Status: message.StatusRunning, StepName: "b", Undoing: -1, StepStarted: at(11)}}, false},
		{"compensating, past the undo's budget", viewState{orchestrator.State{Status: message.StatusRunning, StepName: "b", Undoing: 0, UndoingName: "a", StepStarted: at(2)}}, true},
		{"a step without a budget", viewState{orchestrator.State{Status: message.StatusRunning, StepName: "c", Undoing: -1, StepStarted: at(600)}}, false},
		{"parked", viewState{orchestrator.State{Status: message.StatusParked, StepName: "a", Undoing: -1, StepStarted: at(600)}}, false},
		{"no StepStarted", viewState{orchestrator.State{Status: message.StatusRunning, StepName: "a", Undoing: -1}}, false},
	} {
		if got, _, _ := b.stuck(st, &tc.s, now); got != tc.want {
			t.Errorf("%s: stuck %v, want %v", tc.name, got, tc.want)
		}
	}
	// In the fixture, s-11 and on are past a's budget and s-31 and on
	// past b's: 14 at a (7 of them on version 1), 5 at b.
	keep := func(f filter) func(*flightRow) bool {
		return func(r *flightRow) bool {
			ok, _, _ := b.stuck(st, r.State, now)
			return ok && f.match(st, r.State)
		}
	}
	for _, tc := range []struct {
		f    filter
		want int
	}{{filter{}, 19}, {filter{Step: "b"}, 5}, {filter{Version: 1, Step: "a"}, 7}} {
		rows, _, next, err := c.walkFlight(context.Background(), st, nil, 50, keep(tc.f))
		if err != nil || next != "" {
			t.Fatalf("%+v: next %q, err %v", tc.f, next, err)
		}
		if len(rows) != tc.want {
			t.Errorf("%+v: %d stuck, want %d", tc.f, len(rows), tc.want)
		}
	}
}

// TestWalkParkedPages walks the filtered parked list by pages and checks
// every match comes once, the latest parked first.
func TestWalkParkedPages(t *testing.T) {
	for _, examine := range []int{3, 1000} {
		c, st, _ := filterFixture(t, examine)
		f := filter{Version: 2}
		var got []string
		for from, page := 0, 0; from >= 0; page++ {
			if page > 50 {
				t.Fatal("more than 50 pages")
			}
			rows, ex, total, next, err := c.walkParked(context.Background(), st, from, 2, func(r *flightRow) bool { return f.match(st, r.State) })
			if err != nil {
				t.Fatal(err)
			}
			if total != 10 || ex.Count > examine {
				t.Errorf("examine %d page %d: total %d, read %d, want 10, at most %d", examine, page, total, ex.Count, examine)
			}
			for _, r := range rows {
				got = append(got, r.ID)
			}
			from = next
		}
		if want := []string{"s-09", "s-07", "s-05", "s-03", "s-01"}; !slices.Equal(got, want) {
			t.Errorf("examine %d: got %v, want %v", examine, got, want)
		}
	}
}
