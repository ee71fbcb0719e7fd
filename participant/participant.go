// Package participant is the runtime of a saga participant: it consumes the
// participant's commands, hands them to a Handler that performs their effects
// exactly once, and produces one reply per command to the command's
// ksaga-reply-to topic in the same Kafka transaction that commits the
// commands' offsets.
//
//	p, err := participant.New("inventory", handler,
//		participant.Brokers("localhost:9092"),
//		participant.TransactionalID(os.Getenv("POD_NAME")))
//	if err != nil {
//		return err
//	}
//	defer p.Close()
//	return p.Run(ctx) // nil once ctx is cancelled
//
// Kafka's transaction makes the reply and the consumed offset atomic; it
// cannot make the handler's own effect (a Redis write, a database row) part of
// it. That is the Handler's job: it writes a dedupe record keyed by the
// command's message id atomically with the effect, and answers a redelivered
// command with the stored reply. A command is redelivered whenever a
// transaction aborts: a Handler error, a failed commit, a rebalance, a crash.
//
// A command record without a ksaga-message-id header, without a
// ksaga-reply-to header or with an empty key cannot be answered. It is
// dead-lettered to "<name>.commands-dlt" (see package dlq) in the same
// transaction and never reaches the Handler, so the partition moves on.
//
// The topics "<name>.commands", "<name>.commands-dlt" and the reply topics
// must exist: a record produced to a missing topic fails its batch, which is
// then retried until the topic appears.
//
// A participant that restarts after a crash should get its partitions back
// at once: give it a stable TransactionalID and StaticMembership, and a
// SessionTimeout longer than a restart. Run registers the transactional id
// before its first poll, which fences the dead predecessor and aborts the
// transaction it left open, so the restarted instance need not wait for that
// transaction to time out before it reads its committed offsets.
//
// The package exports no metrics of its own; pass kgo hooks (kprom, kotel)
// with KafkaOpts.
package participant

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/retry"
)

// MaxBatch is the most command records one poll hands to one Handle call.
const MaxBatch = 1000

// ReasonMalformed is the dlq reason of a command that cannot be answered.
const ReasonMalformed = "malformed-command"

// endTimeout bounds producing a batch's records and ending its transaction.
// Both run on a context detached from Run's, so that a shutdown finishes the
// current transaction instead of cancelling an EndTxn whose outcome would
// then be unknown (kgo's EndTransaction docs advise against cancelling it).
const endTimeout = 30 * time.Second

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("participant is closed")

// ErrRunning is returned by Run while another Run of the same Participant is
// still running.
var ErrRunning = errors.New("participant is already running")

// Request is one command record, decoded from its headers: what a saga
// step asks of this participant. (It was called Command, which clashed with
// saga.Command, the step's side of the same message; Command remains as a
// deprecated alias.)
type Request struct {
	// SagaID is the ksaga-saga-id header, or the record key when the
	// header is missing.
	SagaID string
	// SagaType is the ksaga-saga-type header, e.g. "order".
	SagaType string
	// Type is the ksaga-message-type header: the command, e.g.
	// "ReserveInventory".
	Type string
	// MessageID is the ksaga-message-id header, unique per command and
	// kept across re-sends: the Handler's dedupe key. It is never empty.
	MessageID string
	// Step is the ksaga-step header: the saga step that sent the command.
	Step string
	// ReplyTo is the ksaga-reply-to header: the topic of the reply. It is
	// never empty.
	ReplyTo string
	// Attempt is the ksaga-step-attempt header, or 0 when it is missing or
	// not a number.
	Attempt int
	// Payload is the record value (JSON).
	Payload []byte
	// Record is the original record. The Handler must not modify it.
	Record *kgo.Record
}

// Handler performs the effects of a batch of commands exactly once each
// (dedupe keyed by Request.MessageID, written atomically with the effect) and
// returns one reply per command, in order. A redelivered command must return
// the stored reply instead of acting again. An error aborts the whole batch's
// transaction; the batch is re-delivered after a backoff. Handle must be safe
// to call again with the same commands.
//
// A command the Handler cannot understand (unknown type, undecodable payload)
// should get a failure reply, not an error: an error is retried forever.
// Handle is called from one goroutine at a time.
type Handler interface {
	Handle(ctx context.Context, cmds []Request) ([]message.Reply, error)
}

// HandlerFunc adapts a function to a Handler.
type HandlerFunc func(ctx context.Context, cmds []Request) ([]message.Reply, error)

// Handle calls f(ctx, cmds).
func (f HandlerFunc) Handle(ctx context.Context, cmds []Request) ([]message.Reply, error) {
	return f(ctx, cmds)
}

// Opt is an option of New. Its implementations are the functions of this
// package.
type Opt interface{ apply(*config) }

type optFunc func(*config)

func (f optFunc) apply(c *config) { f(c) }

type config struct {
	brokers          []string
	txnID            string
	group            string
	logger           *slog.Logger
	kopts            []kgo.Opt
	backoff          retry.Policy
	static           bool
	sessionTimeout   time.Duration
	rebalanceTimeout time.Duration
	tracer           Tracer
	txnInterval      time.Duration
}

// Tracer traces the handling of commands; package tracing implements it
// with OpenTelemetry. It is called from Run's goroutine.
type Tracer interface {
	// TraceRequest is called before the Handler gets req, with the
	// context the Handler gets. end is called once the Handler returned,
	// with req's reply or the error that aborts the batch; it returns the
	// W3C trace context (traceparent, tracestate) that the reply carries:
	// the handling span's. Empty values keep the command's.
	TraceRequest(ctx context.Context, req Request) (end func(reply message.Reply, err error) (traceparent, tracestate string))
}

// Trace sets the tracer of the commands' handling (see package tracing). A
// nil t traces nothing: replies then carry their command's trace context.
func Trace(t Tracer) Opt { return optFunc(func(c *config) { c.tracer = t }) }

// TransactionInterval sets the least time from the beginning of one
// transaction to the beginning of the next, unless the last one was full
// (MaxBatch): the commands that come meanwhile join the next one. A
// transaction costs about as much CPU with one command as with a hundred,
// so at low rates an interval of a few milliseconds saves much of it, for
// up to the interval more per command. The default, 0, begins a
// transaction as soon as commands are there.
func TransactionInterval(d time.Duration) Opt { return optFunc(func(c *config) { c.txnInterval = d }) }

// Brokers sets the Kafka seed brokers, host:port, replacing any set before
// (as orchestrator.Brokers and kgo.SeedBrokers do). It is required.
func Brokers(addrs ...string) Opt {
	return optFunc(func(c *config) { c.brokers = addrs })
}

// TransactionalID sets the Kafka transactional id. It must be stable per
// instance (a StatefulSet pod name, say) and unique among running instances:
// a restarted instance fences its zombie through it. The default is
// "ksaga-participant-<name>-<hostname>".
func TransactionalID(id string) Opt { return optFunc(func(c *config) { c.txnID = id }) }

// Group sets the consumer group. The default is "ksaga-participant-<name>".
// A group without committed offsets starts at the beginning of the topic, so
// no command sent before the first start is lost.
func Group(g string) Opt { return optFunc(func(c *config) { c.group = g }) }

// Logger sets the logger. The default is slog.Default().
func Logger(l *slog.Logger) Opt { return optFunc(func(c *config) { c.logger = l }) }

// StaticMembership joins the consumer group as a static member whose
// instance id is the transactional id (KIP-345). A restarted instance takes
// its predecessor's place in the group at once, without a rebalance and
// without waiting for the old session to time out or for the other members
// to rejoin. Static members do not leave the group when they close: an
// instance that stops for good keeps its partitions until its session times
// out. Use it with a transactional id that is stable per instance and
// unique among running ones (a StatefulSet pod name plus the participant's
// name), and a SessionTimeout longer than a restart.
func StaticMembership() Opt { return optFunc(func(c *config) { c.static = true }) }

// SessionTimeout sets the consumer group session timeout: how long the group
// waits for a silent member (a crashed or paused process) before it gives
// its partitions to the others. The heartbeat interval is a third of it, at
// most kgo's default of 3s. Zero keeps kgo's default, 45s; the broker
// accepts values between its group.min.session.timeout.ms (6s by default)
// and group.max.session.timeout.ms.
func SessionTimeout(d time.Duration) Opt { return optFunc(func(c *config) { c.sessionTimeout = d }) }

// RebalanceTimeout sets how long the group waits, once a rebalance started,
// for its members to rejoin; a member that does not is dropped. Every
// member's join waits for the slowest, up to this timeout. Zero keeps kgo's
// default, 60s.
func RebalanceTimeout(d time.Duration) Opt {
	return optFunc(func(c *config) { c.rebalanceTimeout = d })
}

// KafkaOpts appends options to the kgo client, after the participant's own
// (production uses it for hooks and TLS). Options that change the consumed
// topics, the group, the isolation level, the transactional id or the
// partition callbacks break the participant's guarantees or its logs.
func KafkaOpts(opts ...kgo.Opt) Opt {
	return optFunc(func(c *config) { c.kopts = append(c.kopts, opts...) })
}

// Backoff sets the wait between failed attempts of a batch. Only its
// intervals, multiplier and jitter apply: a batch is retried until it
// succeeds, since giving up would drop commands. The default is
// retry.Policy{}: 200ms doubling up to 5s, with jitter.
func Backoff(p retry.Policy) Opt { return optFunc(func(c *config) { c.backoff = p }) }

// Participant consumes <name>.commands and replies inside Kafka
// transactions. Create it with New, start it with Run, stop it by
// cancelling Run's context or with Close.
type Participant struct {
	name    string
	topic   string
	dlt     string
	h       Handler
	cfg     config
	log     *slog.Logger
	sess    *kgo.GroupTransactSession
	closeMu sync.Once

	mu      sync.Mutex
	closed  bool
	running bool
	cancel  context.CancelFunc
	done    chan struct{}

	// ownedMu guards owned, the partitions of the command topic that the
	// group assigned to this instance; the kgo partition callbacks
	// update it.
	ownedMu sync.Mutex
	owned   map[int32]bool
}

// defaultHeartbeat is kgo's default heartbeat interval.
const defaultHeartbeat = 3 * time.Second

// assign records a change of the assigned partitions and logs it.
func (p *Participant) assign(parts []int32, assigned bool, msg string) {
	p.ownedMu.Lock()
	for _, n := range parts {
		if assigned {
			p.owned[n] = true
		} else {
			delete(p.owned, n)
		}
	}
	owned := len(p.owned)
	p.ownedMu.Unlock()
	if len(parts) > 0 || assigned {
		p.log.Info(msg, "topic", p.topic, "partitions", parts, "owned", owned)
	}
}

// ownedCount returns how many partitions of the command topic this instance
// owns.
func (p *Participant) ownedCount() int {
	p.ownedMu.Lock()
	defer p.ownedMu.Unlock()
	return len(p.owned)
}

// New returns the participant name, whose handler h answers the commands of
// the topic "<name>.commands". It validates its arguments (a non-empty name,
// a non-nil h, Brokers set, no negative timeout) and creates the Kafka
// client, which starts joining the consumer group in the background: call
// Run soon after, and Close in any case.
func New(name string, h Handler, opts ...Opt) (*Participant, error) {
	if name == "" {
		return nil, errors.New("participant name is required")
	}
	if h == nil {
		return nil, fmt.Errorf("participant %s: handler is nil", name)
	}
	cfg := config{backoff: retry.Policy{}}
	for _, o := range opts {
		o.apply(&cfg)
	}
	switch {
	case len(cfg.brokers) == 0:
		return nil, fmt.Errorf("participant %s: no brokers: use Brokers", name)
	case cfg.sessionTimeout < 0:
		return nil, fmt.Errorf("participant %s: SessionTimeout %v is negative", name, cfg.sessionTimeout)
	case cfg.rebalanceTimeout < 0:
		return nil, fmt.Errorf("participant %s: RebalanceTimeout %v is negative", name, cfg.rebalanceTimeout)
	case cfg.txnInterval < 0:
		return nil, fmt.Errorf("participant %s: TransactionInterval %v is negative", name, cfg.txnInterval)
	}
	if cfg.group == "" {
		cfg.group = "ksaga-participant-" + name
	}
	if cfg.txnID == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("participant %s: default transactional id needs the hostname, or use TransactionalID: %w", name, err)
		}
		cfg.txnID = "ksaga-participant-" + name + "-" + host
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	p := &Participant{
		name:  name,
		topic: message.Commands(name),
		dlt:   message.Commands(name) + "-dlt",
		h:     h,
		cfg:   cfg,
		log:   cfg.logger.With("participant", name, "group", cfg.group, "transactional_id", cfg.txnID),
		owned: make(map[int32]bool),
	}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(cfg.brokers...),
		kgo.TransactionalID(cfg.txnID),
		kgo.ConsumerGroup(cfg.group),
		kgo.ConsumeTopics(p.topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RequireStableFetchOffsets(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			p.assign(m[p.topic], true, "partitions assigned")
		}),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			p.assign(m[p.topic], false, "partitions revoked")
		}),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			p.assign(m[p.topic], false, "partitions lost")
		}),
	}
	if cfg.static {
		kopts = append(kopts, kgo.InstanceID(cfg.txnID))
	}
	if d := cfg.sessionTimeout; d > 0 {
		kopts = append(kopts, kgo.SessionTimeout(d), kgo.HeartbeatInterval(min(d/3, defaultHeartbeat)))
	}
	if d := cfg.rebalanceTimeout; d > 0 {
		kopts = append(kopts, kgo.RebalanceTimeout(d))
	}
	sess, err := kgo.NewGroupTransactSession(append(kopts, cfg.kopts...)...)
	if err != nil {
		return nil, fmt.Errorf("participant %s: kafka client: %w", name, err)
	}
	p.sess = sess
	return p, nil
}

// Run registers the transactional id (fencing a predecessor with the same id
// and aborting the transaction it left open; a failure is retried after the
// Backoff wait), then consumes and answers commands until ctx is cancelled,
// Close is called or a fatal error occurs. On cancellation it finishes (or
// aborts) the current transaction and returns nil. A batch that fails
// (Handler error, failed produce or commit) is aborted, re-consumed from the
// committed offsets and retried after the Backoff wait, without limit. The
// fatal errors are those after which this instance cannot commit again: the
// transactional id was fenced by another instance, or it is not authorized;
// the caller should exit (and be restarted). Run returns ErrClosed after
// Close and ErrRunning while another Run is running. Run may be called again
// after it returned.
func (p *Participant) Run(ctx context.Context) error {
	p.mu.Lock()
	switch {
	case p.closed:
		p.mu.Unlock()
		return ErrClosed
	case p.running:
		p.mu.Unlock()
		return ErrRunning
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	p.running, p.cancel, p.done = true, cancel, done
	p.mu.Unlock()
	defer func() {
		cancel()
		p.mu.Lock()
		p.running = false
		p.mu.Unlock()
		close(done)
	}()
	if err := p.initProducer(ctx); err != nil {
		return err
	}
	return p.loop(ctx)
}

// initProducer registers the transactional id with the transaction
// coordinator before the first poll, as a producer would only before its
// first transaction. The coordinator bumps the id's epoch, which fences a
// predecessor that died with the same id and aborts the transaction it left
// open: its replies are discarded and its pending offset commit released,
// so the group's offsets are readable (RequireStableFetchOffsets) at once
// instead of after the transaction timeout.
func (p *Participant) initProducer(ctx context.Context) error {
	for failures := 1; ; failures++ {
		p.log.Debug("registering the transactional id")
		id, epoch, err := p.sess.Client().ProducerID(ctx)
		switch {
		case err == nil:
			p.log.Debug("transactional id registered", "producer_id", id, "epoch", epoch)
			return nil
		case ctx.Err() != nil || errors.Is(err, kgo.ErrClientClosed):
			return nil
		case fatal(err):
			return fmt.Errorf("participant %s: register transactional id %s: %w", p.name, p.cfg.txnID, err)
		}
		wait := p.cfg.backoff.Backoff(failures + 1)
		p.log.Warn("cannot register the transactional id; retrying", "failures", failures, "wait", wait, "err", err)
		if !ctxtime.Sleep(ctx, wait) {
			return nil
		}
	}
}

// Close stops Run, waits for it to finish its current transaction and
// return, and then closes the Kafka client. A dynamic member leaves the
// consumer group, so its partitions move to another instance at once; a
// static one (StaticMembership) does not, so that its restart takes them
// back without a rebalance. It is safe to call after Run returned, without
// Run, and more than once.
func (p *Participant) Close() {
	p.mu.Lock()
	p.closed = true
	running, cancel, done := p.running, p.cancel, p.done
	p.mu.Unlock()
	if running {
		cancel()
		<-done
	}
	p.closeMu.Do(p.sess.Close)
}

func (p *Participant) loop(ctx context.Context) error {
	failures := 0 // consecutive failed batches; reset by a commit
	// began is when the last batch began (zero: none yet, so no wait), and
	// full whether it had MaxBatch records (see TransactionInterval).
	var began time.Time
	full := false
	for {
		if wait := p.cfg.txnInterval - time.Since(began); !full && wait > 0 && !ctxtime.Sleep(ctx, wait) {
			return nil
		}
		if n := p.ownedCount(); n == 0 {
			p.log.Debug("waiting to join the group: no partitions assigned yet")
		} else {
			p.log.Debug("polling for commands", "owned", n)
		}
		fetches := p.sess.PollRecords(ctx, MaxBatch)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(t string, part int32, err error) {
			if !errors.Is(err, context.Canceled) {
				p.log.Warn("fetch error", "topic", t, "partition", part, "err", err)
			}
		})
		recs := fetches.Records()
		if len(recs) == 0 {
			continue
		}
		began, full = time.Now(), len(recs) >= MaxBatch
		committed, err := p.batch(ctx, recs)
		switch {
		case committed:
			failures = 0
			continue
		case err == nil:
			// Aborted by a rebalance: the records belong to someone else
			// now, or come back from the committed offsets. Not a failure.
			p.log.Info("transaction aborted by a rebalance", "records", len(recs))
			continue
		case fatal(err):
			return fmt.Errorf("participant %s: %w", p.name, err)
		case ctx.Err() != nil:
			// The shutdown interrupted the handler; the batch was aborted
			// and the next owner of its partitions redoes it.
			return nil
		}
		failures++
		wait := p.cfg.backoff.Backoff(failures + 1)
		p.log.Warn("batch failed; aborted, retrying", "records", len(recs), "failures", failures, "wait", wait, "err", err)
		if !ctxtime.Sleep(ctx, wait) {
			return nil
		}
	}
}

// batch runs one transaction over recs. It returns whether the transaction
// committed; err is nil when it aborted only because of a rebalance.
func (p *Participant) batch(ctx context.Context, recs []*kgo.Record) (committed bool, err error) {
	if err := p.sess.Begin(); err != nil {
		// Begin fails only when the client cannot transact any more.
		return false, &fatalError{fmt.Errorf("begin transaction: %w", err)}
	}
	// See endTimeout for why the end of the transaction ignores ctx.
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), endTimeout)
	defer cancel()
	abort := func(cause error) (bool, error) {
		if _, err := p.sess.End(endCtx, kgo.TryAbort); err != nil {
			// The session is left inside a transaction it cannot end.
			return false, &fatalError{errors.Join(cause, fmt.Errorf("abort transaction: %w", err))}
		}
		return false, cause
	}

	out := make([]*kgo.Record, 0, len(recs))
	cmds := make([]Command, 0, len(recs))
	now := time.Now()
	for _, r := range recs {
		cmd, err := decode(r)
		if err != nil {
			p.log.Warn("dead-lettering malformed command", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
			out = append(out, dlq.New(r, p.dlt, dlq.Failure{
				Group: p.cfg.group, Err: err, Reason: ReasonMalformed, Attempts: 1, First: now, Last: now,
			}))
			continue
		}
		cmds = append(cmds, cmd)
	}
	if len(cmds) > 0 {
		var ends []func(message.Reply, error) (string, string)
		if t := p.cfg.tracer; t != nil {
			// One span per command, child of the step attempt that sent
			// it; the batch's Handle call lies within all of them.
			ends = make([]func(message.Reply, error) (string, string), len(cmds))
			for i, c := range cmds {
				ends[i] = t.TraceRequest(ctx, c)
			}
		}
		replies, err := p.h.Handle(ctx, cmds)
		if err != nil {
			err = fmt.Errorf("handler: %w", err)
		} else if len(replies) != len(cmds) {
			err = fmt.Errorf("handler returned %d replies for %d commands", len(replies), len(cmds))
		}
		traces := make([][2]string, len(cmds))
		for i, end := range ends {
			var reply message.Reply
			if err == nil {
				reply = replies[i]
			}
			traces[i][0], traces[i][1] = end(reply, err)
		}
		if err != nil {
			return abort(err)
		}
		for i, c := range cmds {
			rec, err := replyRecord(c, replies[i], traces[i][0], traces[i][1])
			if err != nil {
				return abort(err)
			}
			out = append(out, rec)
		}
	}
	// ProduceSync keeps the records of one partition in order and waits for
	// all of them, so a failed record aborts the batch instead of being
	// committed around.
	if err := p.sess.ProduceSync(endCtx, out...).FirstErr(); err != nil {
		return abort(fmt.Errorf("produce replies: %w", err))
	}
	committed, err = p.sess.End(endCtx, kgo.TryCommit)
	if err != nil {
		// The commit's outcome is unknown (the broker went away, the
		// request timed out) or the commit was refused. kgo leaves the
		// session inside the transaction and asks for a TryAbort, which
		// fences whatever is still open broker-side. Whether or not the
		// commit went through, the batch is then safe to redo: if it
		// did, its offsets moved and nothing comes back; if not, the
		// commands come back and the handler's dedupe answers them again.
		return abort(fmt.Errorf("commit transaction: %w", err))
	}
	return committed, nil
}

// fatalError marks an error after which the Kafka client cannot be used.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

// fatal reports whether err means this instance can no longer commit.
func fatal(err error) bool {
	var f *fatalError
	return errors.As(err, &f) ||
		errors.Is(err, kerr.ProducerFenced) ||
		errors.Is(err, kerr.TransactionalIDAuthorizationFailed) ||
		errors.Is(err, kerr.GroupAuthorizationFailed) ||
		errors.Is(err, kerr.ClusterAuthorizationFailed)
}

// malformedError says why a command record cannot be answered. Its type name
// goes to the dead-letter record's exception-fqcn header.
type malformedError struct{ why string }

func (e *malformedError) Error() string { return "malformed command: " + e.why }

func decode(r *kgo.Record) (Command, error) {
	c := Command{Payload: r.Value, Record: r}
	for _, h := range r.Headers {
		v := string(h.Value)
		switch h.Key {
		case message.HeaderSagaID:
			c.SagaID = v
		case message.HeaderSagaType:
			c.SagaType = v
		case message.HeaderMessageType:
			c.Type = v
		case message.HeaderMessageID:
			c.MessageID = v
		case message.HeaderStep:
			c.Step = v
		case message.HeaderReplyTo:
			c.ReplyTo = v
		case message.HeaderStepAttempt:
			c.Attempt, _ = strconv.Atoi(v)
		}
	}
	switch {
	case c.MessageID == "":
		return Command{}, &malformedError{"no " + message.HeaderMessageID + " header"}
	case c.ReplyTo == "":
		return Command{}, &malformedError{"no " + message.HeaderReplyTo + " header"}
	case len(r.Key) == 0:
		return Command{}, &malformedError{"empty key: want the saga id"}
	}
	if c.SagaID == "" {
		c.SagaID = string(r.Key)
	}
	return c, nil
}

// replyValue is a reply record's value.
type replyValue struct {
	Outcome string          `json:"outcome"`
	Reason  string          `json:"reason,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
}

// replyRecord returns the reply to c. It carries the trace context
// traceparent, tracestate (the handling span's) or, when traceparent is
// empty, c's.
func replyRecord(c Request, r message.Reply, traceparent, tracestate string) (*kgo.Record, error) {
	if r.Outcome != message.OutcomeSuccess && r.Outcome != message.OutcomeFailure {
		return nil, fmt.Errorf("handler replied outcome %q to message %s, want %q or %q",
			r.Outcome, c.MessageID, message.OutcomeSuccess, message.OutcomeFailure)
	}
	if r.Data != "" && !json.Valid([]byte(r.Data)) {
		return nil, fmt.Errorf("handler replied data that is not JSON to message %s", c.MessageID)
	}
	value, err := json.Marshal(replyValue{Outcome: r.Outcome, Reason: r.Reason, Data: json.RawMessage(r.Data)})
	if err != nil {
		return nil, fmt.Errorf("encode reply to message %s: %w", c.MessageID, err)
	}
	hdr := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	headers := []kgo.RecordHeader{
		hdr(message.HeaderSagaID, c.SagaID),
		hdr(message.HeaderSagaType, c.SagaType),
		hdr(message.HeaderMessageType, message.TypeReply),
		hdr(message.HeaderMessageID, c.MessageID+"/reply"),
		hdr(message.HeaderInReplyTo, c.MessageID),
		hdr(message.HeaderStep, c.Step),
	}
	for _, h := range c.Record.Headers {
		switch h.Key {
		case message.HeaderStepAttempt:
			headers = append(headers, h)
		case message.HeaderTraceParent, message.HeaderTraceState:
			if traceparent == "" {
				headers = append(headers, h)
			}
		}
	}
	if traceparent != "" {
		headers = append(headers, hdr(message.HeaderTraceParent, traceparent))
		if tracestate != "" {
			headers = append(headers, hdr(message.HeaderTraceState, tracestate))
		}
	}
	headers = append(headers, hdr(message.HeaderOutcome, r.Outcome))
	if r.Reason != "" {
		headers = append(headers, hdr(message.HeaderReason, r.Reason))
	}
	return &kgo.Record{Topic: c.ReplyTo, Key: c.Record.Key, Value: value, Headers: headers}, nil
}
