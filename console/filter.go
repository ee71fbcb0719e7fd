package console

import (
	"cmp"
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/message"
)

// The filtered lists. The in-flight and parked lists filtered by
// definition version or step, and the stuck list, cannot ask Redis for
// the sagas that match: the deadlines sets are ordered by deadline only.
// They walk their candidates in the list's order (the deadlines sets
// merged across partitions; the parked sagas of the events index), read
// the candidates' states in pipelines of statesBatch, and keep those that
// match, until the page is full and one more match shows there is a next
// page, or Limits.Examine candidates were read. A page never scans a
// topic, and costs at most Limits.Examine state reads whatever the number
// of sagas; the next page goes on from where this one stopped (a cursor,
// not a page number, so that a deep page costs no more than the first).

// statesBatch is the states read in one pipeline.
const statesBatch = 500

// filter is what the rows of a filtered list match: the version of the
// saga's definition and the step it waits on. The zero filter matches
// every saga.
type filter struct {
	// Version is the definition version (State.OnVersion), 0 for any.
	Version int
	// Step is the step the saga waits on, by name (the step it
	// compensates while compensating), "" for any.
	Step string
}

// filterOf reads a list's filter from its query: version and step.
func filterOf(q url.Values) filter {
	var f filter
	if v, err := strconv.Atoi(q.Get("version")); err == nil && v > 0 {
		f.Version = v
	}
	f.Step = strings.TrimSpace(q.Get("step"))
	return f
}

// on reports whether f filters anything out.
func (f filter) on() bool { return f.Version > 0 || f.Step != "" }

// match reports whether saga s of t matches f; a saga gone from the view
// matches no filter that is on.
func (f filter) match(t *sagaType, s *viewState) bool {
	if !f.on() {
		return true
	}
	if s == nil {
		return false
	}
	return (f.Version == 0 || s.OnVersion() == f.Version) && (f.Step == "" || t.waitsOn(s) == f.Step)
}

// query is f as query parameters, for the links of a list.
func (f filter) query(q url.Values) url.Values {
	if f.Version > 0 {
		q.Set("version", strconv.Itoa(f.Version))
	}
	if f.Step != "" {
		q.Set("step", f.Step)
	}
	return q
}

// waitsOn names the step saga s waits on: the step it compensates while
// it compensates, else its step.
func (t *sagaType) waitsOn(s *viewState) string {
	if s.Undoing >= 0 {
		return cmp.Or(s.UndoingName, t.stepName(s.Undoing))
	}
	return cmp.Or(s.StepName, t.stepName(s.Step))
}

// budgets are the step budgets of a saga type, by step name.
type budgets struct {
	do, undo map[string]time.Duration
	// fromEngine is set when they are the engine's (Engine.InFlight);
	// otherwise they come from the definition, which gives no budget for
	// compensations (the engine's compensation policy defaults do).
	fromEngine bool
}

// budgetsOf returns t's budgets: those of this process's engine, which
// computes them for its own rule (StepFlight.Budget: a saga longer in its
// step than that is stuck), else the definition's steps' reply deadline
// times their attempts, as the engine computes a step's.
func budgetsOf(t *sagaType) budgets {
	b := budgets{do: map[string]time.Duration{}, undo: map[string]time.Duration{}}
	if t.Engine != nil {
		b.fromEngine = true
		for _, f := range t.Engine.InFlight() {
			switch {
			case f.Parked:
			case f.Compensating:
				b.undo[f.Step] = f.Budget
			default:
				b.do[f.Step] = f.Budget
			}
		}
		return b
	}
	for _, s := range t.steps {
		b.do[s.Name] = s.Deadline * time.Duration(s.Retry.Attempts())
	}
	return b
}

// of returns the budget of the step saga s of t waits on, 0 when none is
// known.
func (b budgets) of(t *sagaType, s *viewState) time.Duration {
	if s.Undoing >= 0 {
		return b.undo[t.waitsOn(s)]
	}
	return b.do[t.waitsOn(s)]
}

// stuck tells whether saga s is stuck at now by the engine's rule: it is
// running and has been in its step (since StepStarted) longer than the
// step's budget. It returns how long it has been there and the budget.
func (b budgets) stuck(t *sagaType, s *viewState, now time.Time) (bool, time.Duration, time.Duration) {
	if s == nil || s.Status != message.StatusRunning || s.StepStarted <= 0 {
		return false, 0, 0
	}
	age, budget := now.Sub(time.UnixMilli(s.StepStarted)), b.of(t, s)
	return budget > 0 && age > budget, age, budget
}

// cursor is a place in the deadline order: a deadline (Unix ms) and a
// saga id, which breaks ties as Redis does.
type cursor struct {
	score float64
	id    string
}

func (c cursor) String() string { return strconv.FormatInt(int64(c.score), 10) + ":" + c.id }

// parseCursor reads a cursor's String; ok is false for none.
func parseCursor(s string) (cursor, bool) {
	ms, id, found := strings.Cut(s, ":")
	n, err := strconv.ParseInt(ms, 10, 64)
	if !found || err != nil {
		return cursor{}, false
	}
	return cursor{float64(n), id}, true
}

func (c cursor) less(d cursor) bool { return c.score < d.score || c.score == d.score && c.id < d.id }

// deadlineWalk walks the running sagas of a type in deadline order, the
// soonest (the most overdue) first, merging the deadlines sets of its
// partitions, from after a cursor. It reads each set in chunks of
// statesBatch, one pipeline for all the sets that need their next chunk.
// The sets change while it walks: a saga whose deadline moves may be met
// twice or not at all, as in any live list.
type deadlineWalk struct {
	c     *Console
	t     *sagaType
	after *cursor
	heads [][]cursor
	offs  []int64
	done  []bool
}

func (c *Console) walkDeadlines(t *sagaType, after *cursor) *deadlineWalk {
	n := int(t.InboxPartitions)
	return &deadlineWalk{c: c, t: t, after: after, heads: make([][]cursor, n), offs: make([]int64, n), done: make([]bool, n)}
}

// refill reads the next chunk of each set whose chunk is used up.
func (w *deadlineWalk) refill(ctx context.Context) error {
	for {
		var need []int
		for i := range w.heads {
			if len(w.heads[i]) == 0 && !w.done[i] {
				need = append(need, i)
			}
		}
		if len(need) == 0 {
			return nil
		}
		min := "-inf"
		if w.after != nil {
			min = strconv.FormatInt(int64(w.after.score), 10)
		}
		cmds := make([]*redis.ZSliceCmd, len(need))
		_, err := w.c.cfg.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, i := range need {
				cmds[j] = p.ZRangeByScoreWithScores(ctx, deadlinesKey(w.t.name, int32(i)), &redis.ZRangeBy{Min: min, Max: "+inf", Offset: w.offs[i], Count: statesBatch})
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			w.c.log.Warn("console: read the deadlines from the Redis view", "saga", w.t.name, "err", err)
			return errRedis
		}
		for j, i := range need {
			zs := cmds[j].Val()
			w.offs[i] += int64(len(zs))
			w.done[i] = len(zs) < statesBatch
			for _, z := range zs {
				id, _ := z.Member.(string)
				if cu := (cursor{z.Score, id}); w.after == nil || w.after.less(cu) {
					w.heads[i] = append(w.heads[i], cu)
				}
			}
		}
	}
}

// next returns the next n sagas at most; fewer when the walk is over.
func (w *deadlineWalk) next(ctx context.Context, n int) ([]cursor, error) {
	var out []cursor
	for len(out) < n {
		if err := w.refill(ctx); err != nil {
			return nil, err
		}
		best := -1
		for i := range w.heads {
			if len(w.heads[i]) > 0 && (best < 0 || w.heads[i][0].less(w.heads[best][0])) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		out = append(out, w.heads[best][0])
		w.heads[best] = w.heads[best][1:]
	}
	return out, nil
}

// examined is what a filtered page says of its walk.
type examined struct {
	// Count is the candidates whose states the page read.
	Count int
	// Capped is set when the page stopped at Limits.Examine candidates
	// before it was full.
	Capped bool
}

// walkFlight returns the running sagas of t in deadline order after
// cursor after (nil: from the first) that keep accepts, at most n, what
// the page examined, and the cursor the next page goes on after ("":
// there is no next page).
func (c *Console) walkFlight(ctx context.Context, t *sagaType, after *cursor, n int, keep func(*flightRow) bool) ([]flightRow, examined, string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	w := c.walkDeadlines(t, after)
	now := c.cfg.Now()
	var out []flightRow
	var ex examined
	var last cursor
	for ex.Count < c.cfg.Limits.Examine {
		zs, err := w.next(ctx, min(statesBatch, c.cfg.Limits.Examine-ex.Count))
		if err != nil {
			return nil, ex, "", err
		}
		if len(zs) == 0 {
			return out, ex, "", nil
		}
		rows := make([]flightRow, len(zs))
		for i, z := range zs {
			d := time.UnixMilli(int64(z.score))
			rows[i] = flightRow{ID: z.id, Deadline: d, Overdue: d.Before(now)}
		}
		if err := c.readStates(ctx, t, rows); err != nil {
			return nil, ex, "", err
		}
		ex.Count += len(rows)
		last = zs[len(zs)-1]
		for i := range rows {
			if !keep(&rows[i]) {
				continue
			}
			if len(out) == n {
				// A match past the page: the next page goes on after
				// the page's last row (only non-matches lie between).
				end := out[n-1]
				return out, ex, cursor{float64(end.Deadline.UnixMilli()), end.ID}.String(), nil
			}
			out = append(out, rows[i])
		}
	}
	// Examine candidates read: the next page goes on after the last,
	// unless there is none.
	if rest, err := w.next(ctx, 1); err != nil || len(rest) == 0 {
		return out, ex, "", err
	}
	ex.Capped = true
	return out, ex, last.String(), nil
}

// walkParked returns the parked sagas of t (the events index's, the most
// recently parked first) from the from-th on that keep accepts, at most n,
// what the page examined, how many parked sagas there are, and the from
// of the next page (-1: there is none).
func (c *Console) walkParked(ctx context.Context, t *sagaType, from, n int, keep func(*flightRow) bool) ([]flightRow, examined, int, int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	evs, total := t.events.parkedPage(from, c.cfg.Limits.Examine)
	var out []flightRow
	var ex examined
	for start := 0; start < len(evs); start += statesBatch {
		batch := evs[start:min(len(evs), start+statesBatch)]
		rows := make([]flightRow, len(batch))
		for i, e := range batch {
			rows[i] = flightRow{ID: e.SagaID, Since: e.At}
		}
		if err := c.readStates(ctx, t, rows); err != nil {
			return nil, ex, total, -1, err
		}
		ex.Count += len(rows)
		for i := range rows {
			if !keep(&rows[i]) {
				continue
			}
			if len(out) == n {
				return out, ex, total, from + start + i, nil
			}
			out = append(out, rows[i])
		}
	}
	if from+ex.Count < total {
		ex.Capped = true
		return out, ex, total, from + ex.Count, nil
	}
	return out, ex, total, -1, nil
}
