package console

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/ops"
)

// The console's actions are package ops's, as sagactl's are: a compensate
// or resume is the Compensate or Resume message and its audit record in one
// Kafka transaction; a redrive re-produces the original and writes its
// audit record in one transaction under the redrive transactional id that
// sagactl uses too, so that the two fence each other and never redrive a
// record twice. The audit record's by is the name of the user's token.

// actor runs the console's actions through package ops.
type actor struct {
	c *Console
	k ops.Kafka
	r ops.Redis
}

func newActor(c *Console) *actor {
	return &actor{c: c,
		k: ops.Kafka{Brokers: c.cfg.Brokers, Opts: c.cfg.KafkaOpts, Timeout: c.cfg.Timeout, Idle: 3 * time.Second},
		r: ops.Redis{Client: c.cfg.Redis, Timeout: c.cfg.Timeout}}
}

// close has nothing to close: ops makes and closes its clients per action.
func (a *actor) close() {}

// errChanged means the saga or the dead letter changed between the
// preview the user saw and the action.
var errChanged = errors.New("it changed since you looked")

// sagaAction sends saga id of t a Compensate (a Resume with resume), by
// and note for its audit record, if the saga's version is still version.
func (a *actor) sagaAction(ctx context.Context, t *sagaType, id, by, note string, version int64, resume bool) (*audit.Record, error) {
	act := ops.Action{SagaType: t.name, SagaID: id, By: by, Note: note, Tool: a.c.cfg.Tool,
		Confirm: func(s *ops.Saga) error {
			if s.State.Version != version {
				return fmt.Errorf("%w: the saga is at version %d now (%s), you saw version %d", errChanged, s.State.Version, s.State.Status, version)
			}
			return nil
		}}
	do := ops.Compensate
	if resume {
		do = ops.Resume
	}
	res, err := do(ctx, a.k, a.r, act)
	if err != nil {
		return nil, err
	}
	return &res.Compensation.Record, nil
}

// redrive redrives dead letter d of t, by and note for its audit record.
// It selects d alone (its saga id and the millisecond it was
// dead-lettered), and confirms that ops selected exactly d.
func (a *actor) redrive(ctx context.Context, t *sagaType, d *deadLetter, by, note string) (*audit.Record, error) {
	var rec *audit.Record
	res, err := ops.Redrive(ctx, a.k, ops.RedriveRequest{
		SagaType: t.name,
		Selection: ops.Selection{
			Filter:      ops.Filter{SagaID: d.SagaID, Since: d.Timestamp, Until: d.Timestamp.Add(time.Millisecond)},
			MaxRedrives: maxRedrives,
		},
		By: by, Note: note, Tool: a.c.cfg.Tool,
		Confirm: func(sel []audit.Entry) error {
			if len(sel) != 1 || sel[0].Partition != d.Partition || sel[0].Offset != d.Offset {
				return fmt.Errorf("%w: the redrive would select %d dead letters, not this one alone: use sagactl dlq redrive", errChanged, len(sel))
			}
			return nil
		},
		Committed: func(r audit.Record) { rec = &r },
	})
	if err != nil {
		return nil, err
	}
	if len(res.Redriven) == 0 || rec == nil {
		return nil, fmt.Errorf("%w: nothing was redriven (it was redriven already, or its original was redriven %d times)", errChanged, maxRedrives)
	}
	return rec, nil
}

// actionView is the data of an action's page: what it will do.
type actionView struct {
	Type, ID, Action string
	State            *viewState
	Step             string
	// Undo lists the steps a compensation would undo, in order.
	Undo    []string
	Inbox   string
	Home    int32
	Audit   string
	By      string
	Note    string
	Version int64
}

// sagaActions are the actions of a saga's page, each also the action of
// the scope it takes.
var sagaActions = map[string]bool{ActionCompensate: true, ActionResume: true}

// actionPage shows what an action will do and asks for a note.
func (c *Console) actionPage(w http.ResponseWriter, r *http.Request, u *user) {
	c.serveAction(w, r, u, false)
}

// action runs an action.
func (c *Console) action(w http.ResponseWriter, r *http.Request, u *user) {
	c.serveAction(w, r, u, true)
}

func (c *Console) serveAction(w http.ResponseWriter, r *http.Request, u *user, run bool) {
	t := c.sagaTypeOf(w, r, u)
	if t == nil {
		return
	}
	id, verb := r.PathValue("id"), r.PathValue("action")
	if !sagaActions[verb] {
		c.fail(w, r, u, http.StatusNotFound, "No such action: compensate or resume.")
		return
	}
	if !u.may(verb, t.name) {
		c.log.Warn("console: action refused: the token may not act", "token", u.Name, "action", verb, "saga", t.name)
		c.fail(w, r, u, http.StatusForbidden, fmt.Sprintf("Token %s may not %s sagas of type %s: its scopes do not include %s:%s.", u.Name, verb, t.name, verb, t.name))
		return
	}
	s, err := c.readState(r.Context(), t, id)
	if err != nil {
		c.fail(w, r, u, http.StatusServiceUnavailable, err.Error())
		return
	}
	if s == nil {
		c.fail(w, r, u, http.StatusNotFound, fmt.Sprintf("No saga %s/%s in the Redis view: nothing to %s.", t.name, id, verb))
		return
	}
	v := actionView{Type: t.name, ID: id, Action: verb, State: s, Step: cmp.Or(s.StepName, t.stepName(s.Step)),
		Inbox: message.Inbox(t.name), Home: message.HomePartition(id, t.InboxPartitions), Audit: "saga." + t.name + ".audit",
		By: u.Name, Version: s.Version}
	for i := s.Step; i >= 0; i-- {
		if i < len(t.steps) && t.steps[i].Undoable {
			v.Undo = append(v.Undo, t.steps[i].Name)
		}
	}
	applies := s.Status == message.StatusRunning || s.Status == message.StatusParked
	if verb == "resume" {
		applies = s.Status == message.StatusParked
	}
	p := c.newPage(u, verb+" "+t.name+" "+id, &v)
	if !applies {
		p.Error = fmt.Sprintf("Saga %s/%s is %s: there is nothing to %s.", t.name, id, s.Status, verb)
		c.render(w, http.StatusConflict, "action", p)
		return
	}
	if !run {
		c.render(w, http.StatusOK, "action", p)
		return
	}
	v.Note = r.PostFormValue("note")
	version, _ := strconv.ParseInt(r.PostFormValue("version"), 10, 64)
	if err := checkNote(v.Note); err != nil {
		p.Error = err.Error()
		c.render(w, http.StatusBadRequest, "action", p)
		return
	}
	rec, err := c.act.sagaAction(r.Context(), t, id, u.Name, v.Note, version, verb == "resume")
	if err != nil {
		c.log.Warn("console: action failed", "token", u.Name, "action", verb, "saga", t.name, "id", id, "err", err)
		p.Error = fmt.Sprintf("Nothing was sent: %v.", err)
		code := http.StatusServiceUnavailable
		if errors.Is(err, errChanged) || errors.Is(err, ops.ErrSagaNotRunning) {
			code = http.StatusConflict
		}
		c.render(w, code, "action", p)
		return
	}
	c.log.Info("console: action committed with its audit record", "token", u.Name, "action", verb, "saga", t.name, "id", id, "run", rec.Run)
	http.Redirect(w, r, "/sagas/"+url.PathEscape(t.name)+"/"+url.PathEscape(id)+"?done="+verb, http.StatusSeeOther)
}

// redrive redrives one dead letter.
func (c *Console) redrive(w http.ResponseWriter, r *http.Request, u *user) {
	t := c.sagaTypeOf(w, r, u)
	if t == nil {
		return
	}
	d, ok := c.deadLetterOf(w, r, u, t)
	if !ok {
		return
	}
	if !u.may(ActionCompensate, t.name) {
		c.log.Warn("console: redrive refused: the token may not act", "token", u.Name, "saga", t.name)
		c.fail(w, r, u, http.StatusForbidden, fmt.Sprintf("Token %s may not redrive dead letters of type %s: its scopes do not include compensate:%s.", u.Name, t.name, t.name))
		return
	}
	v := deadLetterView{Type: t.name, D: d, Value: prettyJSON(d.Value), Redrives: t.audit.redrivesOf(d.pos), MayAct: true}
	var err error
	if v.Preview, err = c.previewRedrive(r.Context(), t, d); err != nil {
		c.fail(w, r, u, http.StatusServiceUnavailable, err.Error())
		return
	}
	p := c.newPage(u, "Dead letter "+d.pos.String()+" of "+t.name, v)
	switch note := r.PostFormValue("note"); {
	case v.Preview.Refused != "":
		p.Error = v.Preview.Refused
		c.render(w, http.StatusConflict, "deadletter", p)
		return
	case checkNote(note) != nil:
		p.Error = errNote.Error()
		c.render(w, http.StatusBadRequest, "deadletter", p)
		return
	default:
		rec, err := c.act.redrive(r.Context(), t, d, u.Name, note)
		if err != nil {
			c.log.Warn("console: redrive failed", "token", u.Name, "saga", t.name, "dlt", d.pos.String(), "err", err)
			p.Error = fmt.Sprintf("Nothing was redriven: %v.", err)
			code := http.StatusServiceUnavailable
			if errors.Is(err, errChanged) {
				code = http.StatusConflict
			}
			c.render(w, code, "deadletter", p)
			return
		}
		c.log.Info("console: redriven with its audit record", "token", u.Name, "saga", t.name, "dlt", d.pos.String(), "run", rec.Run)
	}
	http.Redirect(w, r, "/dlq/"+url.PathEscape(t.name)+"/"+d.pos.String()+"?done=redrive", http.StatusSeeOther)
}
