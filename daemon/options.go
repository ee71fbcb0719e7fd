package daemon

import (
	"context"
	"flag"
	"io"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/saga"
)

// Opt configures a daemon (Run, Main). Its implementations are the
// functions of this package.
type Opt interface{ apply(*options) }

type optFunc func(*options)

func (f optFunc) apply(o *options) { f(o) }

// SagaBuilder builds a saga definition once the daemon is configured and
// connected: for a saga whose Local steps need a store made from the
// daemon's Redis. It runs also with --engine=false (the daemon needs the
// saga's name for its topics), so it must not start work of its own.
type SagaBuilder func(ctx context.Context, env *Env) (*saga.Definition, error)

// HandlerBuilder builds a participant's handler once the daemon is
// configured and connected, typically on env.ParticipantsRedis(). It runs
// only when the participant runs in this process (--participants).
type HandlerBuilder func(ctx context.Context, env *Env) (participant.Handler, error)

type options struct {
	name, about string
	sagas       []sagaReg
	parts       []partReg
	flags       []func(*flag.FlagSet)
	validators  []func(*Config) error
	demo        func(context.Context, *Env) error
	kafkaOpts   []kgo.Opt
	kafkaSetup  []func(*Config) ([]kgo.Opt, error)
	redisSetup  []func(*Config, *redis.UniversalOptions) error
	engineOpts  []orchestrator.Opt
	partOpts    []participant.Opt
	stdout      io.Writer
	stderr      io.Writer
	getenv      func(string) string
}

type sagaReg struct {
	build func(ctx context.Context, env *Env) (SagaVersions, error)
	opts  []orchestrator.Opt
}

type partReg struct {
	name  string
	build HandlerBuilder
	opts  []participant.Opt
}

func (o *options) participantNames() []string {
	names := make([]string, len(o.parts))
	for i, p := range o.parts {
		names[i] = p.name
	}
	return names
}

// Name sets the program's name, used in -help, in error messages
// ("<name>: …") and in log lines. The default is "ksaga".
func Name(name string) Opt { return optFunc(func(o *options) { o.name = name }) }

// About sets the first paragraph of -help: what the program runs.
func About(text string) Opt { return optFunc(func(o *options) { o.about = text }) }

// Saga registers a saga type: the daemon creates its topics and runs its
// engine with opts (after the daemon's own options, so they win), unless
// --engine=false. Several versions of one saga type (saga.Definition.
// WithVersion) run in one engine: new sagas start on the newest, the sagas
// of the others run to their end on them (orchestrator.Host). Register several to run several saga types in one
// process: each gets its own engine, consumer group and transactional id
// (see Config.Group and Config.TransactionalID).
func Saga(def *saga.Definition, opts ...orchestrator.Opt) Opt {
	return BuildSaga(func(context.Context, *Env) (*saga.Definition, error) { return def, nil }, opts...)
}

// BuildSaga is Saga for a definition that build makes once the daemon is
// connected, such as one whose Local step writes to env.Redis().
func BuildSaga(build SagaBuilder, opts ...orchestrator.Opt) Opt {
	return BuildSagaVersions(func(ctx context.Context, env *Env) (SagaVersions, error) {
		def, err := build(ctx, env)
		return SagaVersions{Start: def}, err
	}, opts...)
}

// SagaVersions are the versions of one saga type that an engine runs
// (saga.Definition.WithVersion).
type SagaVersions struct {
	// Start is the version new sagas start on.
	Start *saga.Definition
	// Hosted are other versions: their running sagas run to their end
	// (orchestrator.Host). One may be newer than Start: a deploy of a new
	// version to several instances first hosts it everywhere, then starts
	// on it (orchestrator.StartOn).
	Hosted []*saga.Definition
}

// BuildSagaVersions is BuildSaga for the versions of a saga type that the
// configuration chooses. Registering several versions of one saga type
// with Saga runs them too, new sagas starting on the newest.
func BuildSagaVersions(build func(ctx context.Context, env *Env) (SagaVersions, error), opts ...orchestrator.Opt) Opt {
	return optFunc(func(o *options) { o.sagas = append(o.sagas, sagaReg{build, opts}) })
}

// Participant registers participant name, which answers the commands of
// "<name>.commands" with h and options opts (after the daemon's own). The
// daemon creates its topics whether or not it runs in this process, and
// runs it when --participants selects it (by default: none with real
// services, all in the embedded mode). Participant names are unique, and
// neither "all" nor "none".
func Participant(name string, h participant.Handler, opts ...participant.Opt) Opt {
	return BuildParticipant(name, func(context.Context, *Env) (participant.Handler, error) { return h, nil }, opts...)
}

// BuildParticipant is Participant for a handler that build makes once the
// daemon is connected, typically on env.ParticipantsRedis().
func BuildParticipant(name string, build HandlerBuilder, opts ...participant.Opt) Opt {
	return optFunc(func(o *options) { o.parts = append(o.parts, partReg{name, build, opts}) })
}

// Flags adds flags of the program's own to the daemon's. Each gets a
// KSAGA_* environment twin (conn.EnvName) and a line in -help. Check their
// values with Validate.
func Flags(add func(fs *flag.FlagSet)) Opt {
	return optFunc(func(o *options) { o.flags = append(o.flags, add) })
}

// Validate adds a check of the parsed configuration, run after the
// daemon's own. Its error ends the daemon with exit status 2 and the
// message "<name>: <error>": say what to fix, naming flags with c.Flag.
func Validate(check func(c *Config) error) Opt {
	return optFunc(func(o *options) { o.validators = append(o.validators, check) })
}

// Demo sets what the embedded mode runs once the engines and participants
// are running, on the daemon's in-process Kafka and Redis: typically a
// load and a summary printed to env.Stdout. When it returns nil the daemon
// stops (exit status 0), or keeps serving with --serve; an error ends it
// with exit status 1. Its ctx is cancelled on SIGINT or SIGTERM. Without a
// Demo, the embedded mode serves until interrupted.
func Demo(run func(ctx context.Context, env *Env) error) Opt {
	return optFunc(func(o *options) { o.demo = run })
}

// KafkaOpts adds options to every Kafka client the daemon makes (engines,
// participants, the admin client, Env.KafkaOpts), in both modes: hooks such
// as kotel's tracer. Options that change what a client consumes or its
// transactions break the engine's guarantees.
func KafkaOpts(opts ...kgo.Opt) Opt {
	return optFunc(func(o *options) { o.kafkaOpts = append(o.kafkaOpts, opts...) })
}

// KafkaSetup adds options to every Kafka client the daemon makes for real
// services (not the embedded mode's), computed once the flags are parsed:
// TLS and SASL settings read from flags added with Flags. An error ends the
// daemon with exit status 1 before it connects.
func KafkaSetup(setup func(c *Config) ([]kgo.Opt, error)) Opt {
	return optFunc(func(o *options) { o.kafkaSetup = append(o.kafkaSetup, setup) })
}

// RedisSetup edits the options of every Redis client the daemon makes for
// real services (--redis-addr, --participants-redis-addr, Env.NewRedis),
// before it is made: a username and password, TLS. An error ends the daemon
// with exit status 1 before it connects.
func RedisSetup(setup func(c *Config, opts *redis.UniversalOptions) error) Opt {
	return optFunc(func(o *options) { o.redisSetup = append(o.redisSetup, setup) })
}

// EngineOpts adds options to every engine, before those of Saga: hooks
// (tracing) and policies.
func EngineOpts(opts ...orchestrator.Opt) Opt {
	return optFunc(func(o *options) { o.engineOpts = append(o.engineOpts, opts...) })
}

// ParticipantOpts adds options to every participant run in this process,
// before those of Participant.
func ParticipantOpts(opts ...participant.Opt) Opt {
	return optFunc(func(o *options) { o.partOpts = append(o.partOpts, opts...) })
}

// Output sets where the daemon writes: stdout for the demo's output and
// -help, stderr for logs and errors. The defaults are os.Stdout and
// os.Stderr.
func Output(stdout, stderr io.Writer) Opt {
	return optFunc(func(o *options) { o.stdout, o.stderr = stdout, stderr })
}

// Getenv sets how the daemon reads the KSAGA_* environment. The default is
// os.Getenv; tests pass a map's lookup.
func Getenv(getenv func(string) string) Opt {
	return optFunc(func(o *options) { o.getenv = getenv })
}
