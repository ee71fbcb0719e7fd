// Package console is ksaga's web console: find a saga by id, read what
// happened to it (its state, its timeline of events, dead letters,
// redrives and operator actions, a link to its trace), look through the
// dead letters and the in-flight, stuck, parked and recently ended sagas
// (the first three filtered by definition version and step), and act on them
// (compensate, resume, redrive), each action written with its audit record
// in one Kafka transaction, as sagactl writes them.
//
// A daemon serves it on --console-addr (package daemon, console.go):
//
//	c, err := console.New(console.Config{
//		Sagas: []console.Saga{{Def: def, InboxPartitions: 6, AuditPartitions: 6, Engine: eng}},
//		Redis: rdb, Brokers: brokers, Tokens: tokens,
//	})
//	go c.Run(ctx) // fills the indexes of dead letters, audit records and events
//	http.ListenAndServe(addr, c.Handler())
//
// The pages are rendered by html/template, server-side, with no script:
// saga data, reply data and dead-letter values are shown as escaped text in
// <pre>, never as HTML. Authentication, sessions and CSRF: session.go. The
// in-memory indexes and their bounds: index.go. It exports no metrics.
package console

import (
	"context"
	"crypto/sha256"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/topic"
)

// Saga is a saga type the console shows.
type Saga struct {
	Def *saga.Definition
	// InboxPartitions and AuditPartitions are the partition counts of
	// saga.<type>.inbox (which places a saga's Redis key) and
	// saga.<type>.audit.
	InboxPartitions, AuditPartitions int32
	// Engine is this process's engine of the type, whose in-flight index
	// (the sagas of the partitions it owns) the overview shows; nil when
	// the process runs none.
	Engine *orchestrator.Engine
}

// Config is the console's configuration. Sagas, Redis, Brokers and Tokens
// are required.
type Config struct {
	Sagas []Saga
	// Redis is the engines' Redis view.
	Redis redis.UniversalClient
	// Brokers are Kafka's seed brokers; KafkaOpts are added to every
	// Kafka client the console makes (TLS, SASL, a logger): its consumers
	// of the dead-letter, audit and event topics, and those of its
	// actions (package ops).
	Brokers   []string
	KafkaOpts []kgo.Opt
	// Tokens resolves the tokens users log in with.
	Tokens Tokens
	// Logins, when set, slows down guessing: a login is refused (429)
	// while Wait says the request's client must wait, and Failed counts a
	// login with a wrong token.
	Logins LoginLimiter
	// Tool is the Tool of the audit records (default "console").
	Tool string
	// TraceURL is the link to a saga's trace, with {trace_id} replaced by
	// its trace id; empty: no link.
	TraceURL string
	// SessionTTL is how long a login lasts (default 8h).
	SessionTTL time.Duration
	// Timeout bounds a request's reads of Redis and an action's Kafka
	// transaction (default 5s).
	Timeout time.Duration
	Limits  Limits
	Logger  *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// LoginLimiter bounds the failed logins of a client. Its methods must be
// safe for concurrent use.
type LoginLimiter interface {
	// Wait returns how long the client of r must wait before it may try
	// to log in again; 0 when it may now.
	Wait(r *http.Request) time.Duration
	// Failed counts a failed login of the client of r.
	Failed(r *http.Request)
}

// sagaType is a saga type with its indexes.
type sagaType struct {
	Saga
	name   string
	steps  []saga.StepInfo
	dlq    *dlqIndex
	audit  *auditIndex
	events *eventIndex
}

// stepName names step i.
func (t *sagaType) stepName(i int) string {
	if i >= 0 && i < len(t.steps) {
		return t.steps[i].Name
	}
	if i < 0 {
		return ""
	}
	return fmt.Sprintf("#%d", i)
}

// Console serves the web console. Its methods are safe for concurrent use.
type Console struct {
	cfg      Config
	types    map[string]*sagaType
	names    []string
	sessions *sessions
	pages    *template.Template
	act      *actor
	log      *slog.Logger
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// New returns a console. It fails when a required field is missing.
func New(cfg Config) (*Console, error) {
	switch {
	case len(cfg.Sagas) == 0:
		return nil, errors.New("console: no saga type to show")
	case cfg.Redis == nil:
		return nil, errors.New("console: no Redis view")
	case cfg.Tokens == nil:
		return nil, errors.New("console: no tokens")
	case len(cfg.Brokers) == 0:
		return nil, errors.New("console: no Kafka brokers")
	}
	if cfg.Tool == "" {
		cfg.Tool = "console"
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 8 * time.Hour
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Limits = cfg.Limits.withDefaults()
	c := &Console{cfg: cfg, types: make(map[string]*sagaType), sessions: newSessions(cfg.SessionTTL, cfg.Now), log: cfg.Logger}
	for _, s := range cfg.Sagas {
		if s.Def == nil || s.InboxPartitions <= 0 || s.AuditPartitions <= 0 {
			return nil, errors.New("console: a saga type needs its definition and partition counts")
		}
		name := s.Def.Name()
		if _, dup := c.types[name]; dup {
			return nil, fmt.Errorf("console: saga type %s given twice", name)
		}
		c.types[name] = &sagaType{Saga: s, name: name, steps: s.Def.Steps(),
			dlq: newDLQIndex(cfg.Limits), audit: newAuditIndex(cfg.Limits), events: newEventIndex(cfg.Limits)}
		c.names = append(c.names, name)
	}
	slices.Sort(c.names)
	pages, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("console: templates: %w", err)
	}
	c.pages = pages
	c.act = newActor(c)
	return c, nil
}

// Run fills the indexes: for each saga type, one consumer each of its
// dead-letter topic and audit topic from their beginning, and of its event
// topic from a little before its end, each following its topic until ctx
// ends. It returns then, once every consumer has stopped. A consumer whose
// Kafka client cannot be made (invalid options) leaves its index empty;
// its error is returned when Run returns.
func (c *Console) Run(ctx context.Context) error {
	var tails []*tail
	for _, name := range c.names {
		t := c.types[name]
		perPart := int64(c.cfg.Limits.Events)/int64(t.InboxPartitions) + 1
		tails = append(tails,
			&tail{topic: message.DLT(name), from: kgo.NewOffset().AtStart(), add: t.dlq.add, advance: t.dlq.advance},
			&tail{topic: topic.Audit(name), from: kgo.NewOffset().AtStart(), add: t.audit.add, advance: t.audit.advance},
			&tail{topic: message.Events(name), from: kgo.NewOffset().AtEnd().Relative(-perPart), add: t.events.add},
		)
	}
	opts := append([]kgo.Opt{kgo.SeedBrokers(c.cfg.Brokers...)}, c.cfg.KafkaOpts...)
	var wg sync.WaitGroup
	errs := make(chan error, len(tails))
	for _, tl := range tails {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tl.run(ctx, opts, c.log); err != nil {
				errs <- fmt.Errorf("console: consume %s: %w", tl.topic, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// Close closes the Kafka clients of the actions, after the one in
// progress. Call it after Run has returned and the server has stopped.
func (c *Console) Close() { c.act.close() }

// Handler returns the console's pages.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /login", c.loginPage)
	mux.HandleFunc("POST /login", c.login)
	mux.Handle("POST /logout", c.authed(c.logout))
	mux.Handle("GET /{$}", c.authed(c.overview))
	mux.Handle("GET /find", c.authed(c.find))
	mux.Handle("GET /sagas/{type}", c.authed(c.list))
	mux.Handle("GET /sagas/{type}/{id}", c.authed(c.sagaPage))
	mux.Handle("GET /sagas/{type}/{id}/{action}", c.authed(c.actionPage))
	mux.Handle("POST /sagas/{type}/{id}/{action}", c.authed(c.action))
	mux.Handle("GET /dlq", c.authed(c.dlqPage))
	mux.Handle("GET /dlq/{type}/{pos}", c.authed(c.deadLetterPage))
	mux.Handle("POST /dlq/{type}/{pos}/redrive", c.authed(c.redrive))
	return secure(mux)
}

// authed serves h to a logged-in user, checking every POST for its origin
// and CSRF token; others go to the login page (a GET) or get 403 (a POST).
func (c *Console) authed(h func(http.ResponseWriter, *http.Request, *user)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := c.userOf(r)
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			switch {
			case !sameOrigin(r):
				c.fail(w, r, u, http.StatusForbidden, "This request came from another site: refused.")
				return
			case u == nil:
				c.fail(w, r, nil, http.StatusForbidden, "Your session has ended: log in again.")
				return
			case !checkCSRF(r, u.session):
				c.fail(w, r, u, http.StatusForbidden, "This form is stale or was not sent by the console (its CSRF token does not match your session): reload the page and try again.")
				return
			}
		}
		if u == nil {
			clearCookie(w)
			http.Redirect(w, r, "/login?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		h(w, r, u)
	})
}

// sagaTypeOf returns the saga type named in the path, answering 404 when
// there is none; and 403 when u may not read it.
func (c *Console) sagaTypeOf(w http.ResponseWriter, r *http.Request, u *user) *sagaType {
	t, ok := c.types[r.PathValue("type")]
	if !ok {
		c.fail(w, r, u, http.StatusNotFound, "No such saga type: this daemon runs "+strings.Join(c.names, ", ")+".")
		return nil
	}
	if !u.may(ActionRead, t.name) {
		c.fail(w, r, u, http.StatusForbidden, fmt.Sprintf("Token %s may not read sagas of type %s (its scopes do not include read:%s).", u.Name, t.name, t.name))
		return nil
	}
	return t
}

// readable returns the saga types u may read.
func (c *Console) readable(u *user) []*sagaType {
	var out []*sagaType
	for _, n := range c.names {
		if u.may(ActionRead, n) {
			out = append(out, c.types[n])
		}
	}
	return out
}

// tokenSum is the SHA-256 of a token, as Tokens.Lookup takes it.
func tokenSum(token string) [sha256.Size]byte { return sha256.Sum256([]byte(token)) }
