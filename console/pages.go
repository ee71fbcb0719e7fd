package console

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// pageSize is the rows of a list page.
const pageSize = 50

// page is what every template gets.
type page struct {
	Title string
	// User is nil on the login page.
	User *user
	CSRF string
	// Types are the saga types the user may read.
	Types []string
	// Notice and Error are shown above the content.
	Notice, Error string
	Data          any
}

// funcs are the templates' functions.
var funcs = template.FuncMap{
	"pathEscape":  url.PathEscape,
	"queryEscape": url.QueryEscape,
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05.000")
	},
	"dur": func(d time.Duration) string {
		switch {
		case d <= 0:
			return ""
		case d < time.Second:
			return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + " ms"
		case d < time.Minute:
			return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + " s"
		}
		return d.Round(time.Second).String()
	},
	"add": func(a, b int) int { return a + b },
	"short": func(s string, n int) string {
		if len(s) <= n {
			return s
		}
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		return s[:n] + "…"
	},
	"ms": func(ms int64) string {
		if ms <= 0 {
			return "-"
		}
		return time.UnixMilli(ms).UTC().Format("2006-01-02 15:04:05.000")
	},
}

// render writes template name with p, or a 500.
func (c *Console) render(w http.ResponseWriter, code int, name string, p page) {
	var b bytes.Buffer
	if err := c.pages.ExecuteTemplate(&b, name, p); err != nil {
		c.log.Error("console: render a page", "page", name, "err", err)
		http.Error(w, "the console could not render this page (its log says why)", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(b.Bytes())
}

// newPage returns a page for u.
func (c *Console) newPage(u *user, title string, data any) page {
	p := page{Title: title, User: u, Data: data}
	if u != nil {
		p.CSRF = u.session.csrf
		for _, t := range c.readable(u) {
			p.Types = append(p.Types, t.name)
		}
	}
	return p
}

// fail answers code with a page that says msg.
func (c *Console) fail(w http.ResponseWriter, _ *http.Request, u *user, code int, msg string) {
	p := c.newPage(u, http.StatusText(code), nil)
	p.Error = msg
	c.render(w, code, "error", p)
}

// safeNext returns where to go after logging in: a path of the console,
// never another site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") || strings.HasPrefix(next, "/login") {
		return "/"
	}
	return next
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	p := c.newPage(nil, "Log in", struct{ Next string }{safeNext(r.URL.Query().Get("next"))})
	c.render(w, http.StatusOK, "login", p)
}

// login starts a session for a valid token.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	next := safeNext(r.PostFormValue("next"))
	if !sameOrigin(r) {
		c.fail(w, r, nil, http.StatusForbidden, "This request came from another site: refused.")
		return
	}
	if l := c.cfg.Logins; l != nil {
		if wait := l.Wait(r); wait > 0 {
			secs := strconv.Itoa(int(wait.Seconds()) + 1)
			w.Header().Set("Retry-After", secs)
			p := c.newPage(nil, "Log in", struct{ Next string }{next})
			p.Error = "Too many logins with a wrong token from your address: try again in " + secs + " s."
			c.render(w, http.StatusTooManyRequests, "login", p)
			return
		}
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	sum := tokenSum(token)
	pr := c.cfg.Tokens.Lookup(sum)
	if token == "" || pr == nil {
		if c.cfg.Logins != nil {
			c.cfg.Logins.Failed(r)
		}
		c.log.Warn("console: login refused: not a token of the token file", "client", r.RemoteAddr)
		p := c.newPage(nil, "Log in", struct{ Next string }{next})
		p.Error = "This is not a token of the daemon's token file."
		c.render(w, http.StatusUnauthorized, "login", p)
		return
	}
	if old, err := r.Cookie(sessionCookie); err == nil {
		c.sessions.delete(old.Value)
	}
	ss := c.sessions.create(sum)
	c.setCookie(w, ss)
	c.log.Info("console: logged in", "token", pr.Name)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, u *user) {
	c.sessions.delete(u.session.id)
	clearCookie(w)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// flightView is a row of the overview's in-flight table.
type flightView struct {
	orchestrator.StepFlight
	Kind  string
	Age   time.Duration
	Stuck bool
}

// typeOverview is a saga type on the overview.
type typeOverview struct {
	Name          string
	Engine        bool
	Flight        []flightView
	Reasons       []reasonCount
	DeadLetters   int
	Dropped       int
	Ended         []*event
	Actions       []*auditEntry
	ActionsMissed int
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, u *user) {
	now := c.cfg.Now()
	var types []typeOverview
	for _, t := range c.readable(u) {
		o := typeOverview{Name: t.name, Engine: t.Engine != nil}
		if t.Engine != nil {
			for _, f := range t.Engine.InFlight() {
				if f.Sagas == 0 {
					continue
				}
				v := flightView{StepFlight: f, Kind: "step"}
				switch {
				case f.Parked:
					v.Kind = "parked"
				case f.Compensating:
					v.Kind = "compensation"
				}
				if !f.Oldest.IsZero() {
					v.Age = now.Sub(f.Oldest)
				}
				v.Stuck = f.Budget > 0 && v.Age > f.Budget
				o.Flight = append(o.Flight, v)
			}
		}
		o.Reasons, o.DeadLetters, o.Dropped = t.dlq.counts()
		o.Ended, _ = t.events.endedPage("", 0, 10)
		o.Actions = t.audit.latest(10)
		types = append(types, o)
	}
	c.render(w, http.StatusOK, "overview", c.newPage(u, "Overview", types))
}

// find goes to the page of the saga with the id, in the type given or the
// first type whose view, dead letters or audit records have it.
func (c *Console) find(w http.ResponseWriter, r *http.Request, u *user) {
	id := strings.TrimSpace(r.URL.Query().Get("id"))
	typ := r.URL.Query().Get("type")
	if id == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	var cands []*sagaType
	for _, t := range c.readable(u) {
		if typ == "" || typ == t.name {
			cands = append(cands, t)
		}
	}
	for _, t := range cands {
		s, err := c.readState(r.Context(), t, id)
		if err != nil {
			c.fail(w, r, u, http.StatusServiceUnavailable, err.Error())
			return
		}
		if s != nil || len(t.dlq.forSaga(id)) > 0 || len(t.audit.forSaga(id)) > 0 || len(t.events.forSaga(id)) > 0 {
			http.Redirect(w, r, "/sagas/"+url.PathEscape(t.name)+"/"+url.PathEscape(id), http.StatusSeeOther)
			return
		}
	}
	c.fail(w, r, u, http.StatusNotFound, fmt.Sprintf("No saga %q: the Redis view does not have it (it may not be started yet, or ended longer ago than --retention), and no dead letter, audit record or recent event names it.", id))
}

// sagaView is the data of a saga's page.
type sagaView struct {
	Type     string
	ID       string
	State    *viewState
	Step     string
	Undoing  string
	Plan     []string
	Undone   []string
	Deadline time.Time
	Started  time.Time
	Data     string
	TraceID  string
	TraceURL string
	Timeline timeline
	// CanCompensate and CanResume are set when the user may and the saga
	// is in a state the action applies to.
	CanCompensate, CanResume bool
	// MayAct is set when the user's token may act on this saga type.
	MayAct bool
}

func (c *Console) sagaPage(w http.ResponseWriter, r *http.Request, u *user) {
	t := c.sagaTypeOf(w, r, u)
	if t == nil {
		return
	}
	id := r.PathValue("id")
	s, err := c.readState(r.Context(), t, id)
	if err != nil {
		c.fail(w, r, u, http.StatusServiceUnavailable, err.Error())
		return
	}
	v := sagaView{Type: t.name, ID: id, State: s, MayAct: u.may(ActionCompensate, t.name) || u.may(ActionResume, t.name)}
	if s != nil {
		v.Step = cmp.Or(s.StepName, t.stepName(s.Step))
		v.Undoing = t.stepName(s.Undoing)
		for _, i := range s.Plan {
			v.Plan = append(v.Plan, t.stepName(i))
		}
		for _, i := range s.Undone {
			v.Undone = append(v.Undone, t.stepName(i))
		}
		if s.Deadline > 0 {
			v.Deadline = time.UnixMilli(s.Deadline)
		}
		if s.StepStarted > 0 {
			v.Started = time.UnixMilli(s.StepStarted)
		}
		v.Data = prettyJSON(s.Data)
		if s.Trace != nil {
			v.TraceID = traceID(s.Trace.Parent)
			if v.TraceID != "" && c.cfg.TraceURL != "" {
				v.TraceURL = strings.ReplaceAll(c.cfg.TraceURL, "{trace_id}", v.TraceID)
			}
		}
		v.CanCompensate = u.may(ActionCompensate, t.name) && (s.Status == message.StatusRunning || s.Status == message.StatusParked)
		v.CanResume = u.may(ActionResume, t.name) && s.Status == message.StatusParked
	}
	v.Timeline = c.buildTimeline(t, id, s)
	if s == nil && len(v.Timeline.Rows) == 0 {
		c.fail(w, r, u, http.StatusNotFound, fmt.Sprintf("No saga %s/%s in the Redis view, and no dead letter, audit record or recent event names it.", t.name, id))
		return
	}
	p := c.newPage(u, t.name+" "+id, v)
	switch r.URL.Query().Get("done") {
	case "compensate":
		p.Notice = "Compensate requested: the message and its audit record are committed. The timeline shows the engine's events as they come (reload)."
	case "resume":
		p.Notice = "Resume requested: the message and its audit record are committed. The timeline shows the engine's events as they come (reload)."
	}
	c.render(w, http.StatusOK, "saga", p)
}

// traceID returns the trace id of a traceparent, "" when it is not one.
func traceID(parent string) string {
	parts := strings.Split(parent, "-")
	if len(parts) != 4 || len(parts[1]) != 32 {
		return ""
	}
	for _, ch := range parts[1] {
		if !('0' <= ch && ch <= '9' || 'a' <= ch && ch <= 'f') {
			return ""
		}
	}
	return parts[1]
}

// pageOf reads the page number of a list (from 1).
func pageOf(r *http.Request) int {
	n, err := strconv.Atoi(r.URL.Query().Get("page"))
	if err != nil || n < 1 {
		return 1
	}
	return min(n, 1_000_000)
}

// listView is the data of a list page.
type listView struct {
	Type   string
	List   string
	Status string
	Page   int
	Total  int64
	More   bool
	Ended  []endedRow
	Flight []flightRow
	Steps  func(int) string
	// Filter is the list's filter, StepNames the steps it offers.
	Filter    filter
	StepNames []string
	// Walked is set for the lists that walk their candidates (filtered,
	// and the stuck list), which Examined describes; Next is the query
	// of their next page ("": none) and First that of their first.
	Walked   bool
	Examined examined
	Next     string
	First    string
	// EngineBudgets is set when the stuck list judges by this process's
	// engine's budgets, rather than the definition's.
	EngineBudgets bool
}

// endedRow is a row of the ended list: the saga's terminal event and,
// while the view still has the saga's state, the version of the
// definition it ran on (0: gone from the view; events do not carry it).
type endedRow struct {
	*event
	DefVersion int
}

// list serves the lists of a saga type: recently ended sagas (from the
// events index, filtered by status), sagas in flight by deadline (from
// the Redis view), parked sagas and stuck sagas; the in-flight, parked
// and stuck lists filtered by definition version and step (filter.go).
func (c *Console) list(w http.ResponseWriter, r *http.Request, u *user) {
	t := c.sagaTypeOf(w, r, u)
	if t == nil {
		return
	}
	q := r.URL.Query()
	v := listView{Type: t.name, List: q.Get("list"), Status: q.Get("status"), Page: pageOf(r), Steps: t.stepName, Filter: filterOf(q)}
	for _, s := range t.steps {
		v.StepNames = append(v.StepNames, s.Name)
	}
	f := v.Filter
	skip := (v.Page - 1) * pageSize
	// linkTo returns the query of a page of the list walked.
	linkTo := func(page int, key, at string) string {
		lq := f.query(url.Values{"list": {v.List}})
		if page > 1 {
			lq.Set("page", strconv.Itoa(page))
			lq.Set(key, at)
		}
		return lq.Encode()
	}
	var err error
	switch v.List {
	case "", "ended":
		v.List = "ended"
		if !slices.Contains([]string{"", message.StatusCompleted, message.StatusCompensated, message.StatusFailed}, v.Status) {
			v.Status = ""
		}
		var evs []*event
		var total int
		evs, total = t.events.endedPage(v.Status, skip, pageSize)
		v.Total, v.More = int64(total), skip+len(evs) < total
		if v.Ended, err = c.endedRows(r.Context(), t, evs); err != nil {
			c.fail(w, r, u, http.StatusServiceUnavailable, err.Error())
			return
		}
	case "inflight", "stuck":
		if v.List == "inflight" && !f.on() {
			rows, total, err := c.inFlight(r.Context(), t, skip, pageSize)
			if err != nil {
				c.fail(w, r, u, http.StatusServiceUnavailable, err.Error())
				return
			}
			v.Flight, v.Total, v.More = rows, total, int64(skip+len(rows)) < total
			break
		}
		var after *cursor
		if cu, ok := parseCursor(q.Get("after")); ok {
			after = &cu
		} else {
			v.Page = 1
		}
		keep := func(r *flightRow) bool { return f.match(t, r.State) }
		if v.List == "stuck" {
			b, now := budgetsOf(t), c.cfg.Now()
			v.EngineBudgets = b.fromEngine
			keep = func(r *flightRow) bool {
				if !f.match(t, r.State) {
					return false
				}
				var stuck bool
				stuck, r.Age, r.Budget = b.stuck(t, r.State, now)
				return stuck
			}
		}
		var next string
		v.Walked = true
		v.Flight, v.Examined, next, err = c.walkFlight(r.Context(), t, after, pageSize, keep)
		if err != nil {
			c.fail(w, r, u, http.StatusServiceUnavailable, err.Error())
			return
		}
		if next != "" {
			v.More, v.Next = true, linkTo(v.Page+1, "after", next)
		}
		v.First = linkTo(1, "", "")
	case "parked":
		if !f.on() {
			rows, total, err := c.parked(r.Context(), t, skip, pageSize)
			if err != nil {
				c.fail(w, r, u, http.StatusServiceUnavailable, err.Error())
				return
			}
			v.Flight, v.Total, v.More = rows, int64(total), skip+len(rows) < total
			break
		}
		from, _ := strconv.Atoi(q.Get("from"))
		if from <= 0 {
			from, v.Page = 0, 1
		}
		var total, next int
		v.Walked = true
		v.Flight, v.Examined, total, next, err = c.walkParked(r.Context(), t, from, pageSize, func(r *flightRow) bool { return f.match(t, r.State) })
		if err != nil {
			c.fail(w, r, u, http.StatusServiceUnavailable, err.Error())
			return
		}
		v.Total = int64(total)
		if next >= 0 {
			v.More, v.Next = true, linkTo(v.Page+1, "from", strconv.Itoa(next))
		}
		v.First = linkTo(1, "", "")
	default:
		c.fail(w, r, u, http.StatusNotFound, "No such list: ended, inflight, stuck or parked.")
		return
	}
	c.render(w, http.StatusOK, "list", c.newPage(u, t.name+" sagas", v))
}

// endedRows returns the rows of ended sagas evs, with the definition
// version of those whose state the view still has (one pipeline).
func (c *Console) endedRows(ctx context.Context, t *sagaType, evs []*event) ([]endedRow, error) {
	rows := make([]flightRow, len(evs))
	for i, e := range evs {
		rows[i].ID = e.SagaID
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := c.readStates(ctx, t, rows); err != nil {
		return nil, err
	}
	out := make([]endedRow, len(evs))
	for i, e := range evs {
		out[i].event = e
		if s := rows[i].State; s != nil && s.Terminal() {
			out[i].DefVersion = s.OnVersion()
		}
	}
	return out, nil
}

// dlqView is the data of the DLQ page.
type dlqView struct {
	Type     string
	Reason   string
	Page     int
	Total    int
	More     bool
	Reasons  []reasonCount
	All      int
	Dropped  int
	Rows     []dlqRow
	Types    []string
	Selected bool
}

type dlqRow struct {
	*deadLetter
	Redrives int
}

func (c *Console) dlqPage(w http.ResponseWriter, r *http.Request, u *user) {
	readable := c.readable(u)
	if len(readable) == 0 {
		c.fail(w, r, u, http.StatusForbidden, fmt.Sprintf("Token %s may not read any saga type.", u.Name))
		return
	}
	q := r.URL.Query()
	t := readable[0]
	if typ := q.Get("type"); typ != "" {
		if tt, ok := c.types[typ]; ok && u.may(ActionRead, typ) {
			t = tt
		}
	}
	v := dlqView{Type: t.name, Reason: q.Get("reason"), Page: pageOf(r)}
	for _, rt := range readable {
		v.Types = append(v.Types, rt.name)
	}
	v.Reasons, v.All, v.Dropped = t.dlq.counts()
	skip := (v.Page - 1) * pageSize
	var ds []*deadLetter
	ds, v.Total = t.dlq.page(v.Reason, skip, pageSize)
	v.More = skip+len(ds) < v.Total
	for _, d := range ds {
		v.Rows = append(v.Rows, dlqRow{deadLetter: d, Redrives: len(t.audit.redrivesOf(d.pos))})
	}
	c.render(w, http.StatusOK, "dlq", c.newPage(u, "Dead letters of "+t.name, v))
}

// deadLetterView is the data of a dead letter's page.
type deadLetterView struct {
	Type     string
	D        *deadLetter
	Value    string
	Redrives []*auditEntry
	Preview  preview
	MayAct   bool
}

// preview says what a redrive of a dead letter would send, and what the
// engine would do with it given the saga's state now.
type preview struct {
	Sends    string
	Outcome  string
	Refused  string
	Saga     *viewState
	SagaStep string
}

func (c *Console) deadLetterPage(w http.ResponseWriter, r *http.Request, u *user) {
	t := c.sagaTypeOf(w, r, u)
	if t == nil {
		return
	}
	d, ok := c.deadLetterOf(w, r, u, t)
	if !ok {
		return
	}
	v := deadLetterView{Type: t.name, D: d, Value: prettyJSON(d.Value), Redrives: t.audit.redrivesOf(d.pos), MayAct: u.may(ActionCompensate, t.name)}
	var err error
	if v.Preview, err = c.previewRedrive(r.Context(), t, d); err != nil {
		c.fail(w, r, u, http.StatusServiceUnavailable, err.Error())
		return
	}
	p := c.newPage(u, "Dead letter "+d.pos.String()+" of "+t.name, v)
	if r.URL.Query().Get("done") == "redrive" {
		p.Notice = "Redriven: the original and its audit record are committed. The saga's timeline shows what the engine did with it."
	}
	c.render(w, http.StatusOK, "deadletter", p)
}

// deadLetterOf returns the dead letter at the path's position, answering
// 404 when the index does not have it.
func (c *Console) deadLetterOf(w http.ResponseWriter, r *http.Request, u *user, t *sagaType) (*deadLetter, bool) {
	p, ok := parsePos(r.PathValue("pos"))
	var d *deadLetter
	if ok {
		d = t.dlq.get(p)
	}
	if d == nil {
		c.fail(w, r, u, http.StatusNotFound, "No such dead letter in the console's index (it keeps the latest; sagactl dlq show reads any).")
		return nil, false
	}
	return d, true
}

// previewRedrive says what redriving d would do now.
func (c *Console) previewRedrive(ctx context.Context, t *sagaType, d *deadLetter) (preview, error) {
	var pv preview
	if d.Invalid != "" {
		pv.Refused = "This record is not a dead letter (" + d.Invalid + "): it cannot be redriven."
		return pv, nil
	}
	if n := len(t.audit.redrivesOf(d.pos)); n > 0 {
		pv.Refused = "This dead letter was redriven already: a dead letter is redriven once (if it failed again, its new dead letter can be)."
	}
	if depth := c.redriveDepth(t, d); depth >= maxRedrives {
		pv.Refused = fmt.Sprintf("The original of this dead letter was redriven %d times already and failed each time (sagactl's --max-redrives is %d): fix the cause first, then redrive it with sagactl --max-redrives 0.", depth, maxRedrives)
	}
	pv.Sends = fmt.Sprintf("the original %s record (key %q, its value and headers, plus %s: %s) back to %s partition %d, and an audit record of the redrive on saga.%s.audit by you, in one Kafka transaction",
		cmp.Or(d.MessageType, "inbox"), d.SagaID, message.HeaderRedriveOf, d.pos, d.Info.Topic, d.Info.Partition, t.name)
	s, err := c.readState(ctx, t, d.SagaID)
	if err != nil {
		return pv, err
	}
	pv.Saga = s
	if s != nil {
		pv.SagaStep = cmp.Or(s.StepName, t.stepName(s.Step))
	}
	pv.Outcome = predict(d, s)
	return pv, nil
}

// maxRedrives is sagactl's default --max-redrives: the console offers no
// redrive of a record whose original failed that many redrives.
const maxRedrives = 3

// redriveDepth counts the redrives the original of d went through: the
// chain of ksaga-redrive-of from d back to the first dead letter.
func (c *Console) redriveDepth(t *sagaType, d *deadLetter) int {
	n := 0
	for d != nil && d.RedriveOf != "" && n < 100 {
		n++
		p, ok := parsePos(d.RedriveOf)
		if !ok {
			break
		}
		d = t.dlq.get(p)
	}
	return n
}

// predict says what the engine will do with the redriven record of d,
// given the saga's state s (nil: not in the view). It is a forecast from
// the view, which may lag: the saga's timeline shows what happened.
func predict(d *deadLetter, s *viewState) string {
	inReplyTo := ""
	for _, h := range d.Headers {
		if h[0] == message.HeaderInReplyTo {
			inReplyTo = h[1]
		}
	}
	ended := s != nil && s.Terminal()
	switch d.MessageType {
	case message.TypeStartSaga:
		if s != nil {
			return "The saga exists (" + s.Status + "): the engine drops the start as a duplicate, or dead-letters it again (conflicting-start) when its data differs."
		}
		return "The view has no such saga: the engine starts it."
	case message.TypeReply, message.TypeTimeout:
		switch {
		case s == nil:
			return "The view has no such saga: the engine dead-letters it again (unknown-saga)."
		case ended:
			return "The saga has ended (" + s.Status + "): the engine drops it as stale; nothing changes."
		case inReplyTo != "" && (inReplyTo == s.Waiting || slices.ContainsFunc(s.Group, func(m orchestrator.Member) bool { return m.Waiting == inReplyTo })):
			return "The saga waits for this very reply: the engine handles it now."
		}
		return "The saga no longer waits for this command (it waits on " + cmp.Or(s.Waiting, "nothing") + "): the engine drops it as stale, or dead-letters it again (not-waiting-on-step)."
	case message.TypeCompensate:
		switch {
		case s == nil:
			return "The view has no such saga: the engine dead-letters it again (unknown-saga)."
		case s.Status == message.StatusRunning || s.Status == message.StatusParked:
			return "The saga is " + s.Status + ": the engine starts its compensation."
		}
		return "The saga is " + s.Status + ": the engine drops it."
	case message.TypeResume:
		switch {
		case s == nil:
			return "The view has no such saga: the engine dead-letters it again (unknown-saga)."
		case s.Status == message.StatusParked:
			return "The saga is parked: the engine resumes it."
		}
		return "The saga is " + s.Status + ", not parked: the engine drops it."
	}
	if s == nil {
		return "The view has no such saga; the engine handles the record as it handled the original, and may dead-letter it again."
	}
	return "The engine handles it as it handled the original (" + d.Reason + "), and may dead-letter it again."
}

// errNote says what a note must be.
var errNote = errors.New("write a note (why you act, up to 1024 characters, no control characters): it goes into the audit record")

// checkNote validates an action's note.
func checkNote(note string) error {
	if note == "" || len(note) > 1024 {
		return errNote
	}
	for _, ch := range note {
		if ch < 0x20 && ch != '\t' || ch == 0x7f || ch >= 0x80 && ch < 0xa0 || ch == 0x2028 || ch == 0x2029 || ch >= 0x202a && ch <= 0x202e || ch >= 0x2066 && ch <= 0x2069 {
			return errNote
		}
	}
	return nil
}
