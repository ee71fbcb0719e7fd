package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ksaga/ksaga/metrics"
	"github.com/ksaga/ksaga/outbox"
	"github.com/ksaga/ksaga/saga"
)

// OutboxConfig is the configuration of the outbox relays (the --outbox-*
// flags): which outboxes the daemon relays to the inboxes of its saga
// types (package outbox).
type OutboxConfig struct {
	// Relay lists the outboxes relayed, "redis" and/or "postgres"
	// (--outbox-relay); empty relays none.
	Relay []string
	// RedisAddrs is the Redis of the outbox streams (--outbox-redis-addr);
	// empty means the engine's (Config.RedisAddrs, or the embedded Redis).
	RedisAddrs []string
	// PostgresDSN is the PostgreSQL of the outbox table
	// (--outbox-postgres-dsn), required with "postgres".
	PostgresDSN string
}

// Relays reports whether the outbox kind ("redis", "postgres") is relayed.
func (c OutboxConfig) Relays(kind string) bool { return slices.Contains(c.Relay, kind) }

// register binds the --outbox-* flags to c's fields.
func (c *OutboxConfig) register(fs *flag.FlagSet) {
	fs.Var((*listFlag)(&c.Relay), "outbox-relay", "outboxes to relay to the inboxes of every saga type: `redis`, postgres or redis,postgres (package outbox); empty relays none")
	fs.Var((*listFlag)(&c.RedisAddrs), "outbox-redis-addr", "Redis `addresses` of the outbox streams ksaga:outbox:{<type>}, comma-separated (several: Redis Cluster) (default: --redis-addr)")
	fs.StringVar(&c.PostgresDSN, "outbox-postgres-dsn", "", "PostgreSQL `DSN` of the outbox table ksaga_outbox (postgres://user@host/db; pass the password by PGPASSWORD or a mounted PGPASSFILE, not here)")
}

// validate checks the --outbox-* flags in c and normalizes them: Relay to
// its lower-case kinds, once each; name names a flag as it was given.
func (c *OutboxConfig) validate(name func(string) string, set map[string]string, embedded bool) error {
	relay := c.Relay
	c.Relay = nil
	for _, k := range relay {
		switch k = strings.ToLower(k); k {
		case "redis", "postgres":
			if !slices.Contains(c.Relay, k) {
				c.Relay = append(c.Relay, k)
			}
		case "none":
		default:
			return fmt.Errorf("%s: unknown outbox %q (want redis, postgres or redis,postgres)", name("outbox-relay"), k)
		}
	}
	c.PostgresDSN = strings.TrimSpace(c.PostgresDSN)
	if _, ok := set["outbox-redis-addr"]; ok {
		switch {
		case !c.Relays("redis"):
			return fmt.Errorf("%s applies only with --outbox-relay redis", name("outbox-redis-addr"))
		case len(c.RedisAddrs) == 0:
			return fmt.Errorf("%s is empty: want host:port[,host:port…], or leave it out to use --redis-addr", name("outbox-redis-addr"))
		case embedded:
			return fmt.Errorf("%s applies only with --kafka-brokers and --redis-addr (the embedded demo relays its own Redis)", name("outbox-redis-addr"))
		}
	}
	switch _, given := set["outbox-postgres-dsn"]; {
	case given && !c.Relays("postgres"):
		return fmt.Errorf("%s applies only with --outbox-relay postgres", name("outbox-postgres-dsn"))
	case c.Relays("postgres") && c.PostgresDSN == "":
		return fmt.Errorf("%s postgres needs --outbox-postgres-dsn (or KSAGA_OUTBOX_POSTGRES_DSN): the PostgreSQL that holds the outbox table", name("outbox-relay"))
	case c.PostgresDSN != "":
		// The error names the flag, not the DSN, which may hold a password.
		if _, err := pgxpool.ParseConfig(c.PostgresDSN); err != nil {
			return fmt.Errorf("%s is not a valid PostgreSQL DSN or connection string (want postgres://user@host:5432/db?sslmode=require)", name("outbox-postgres-dsn"))
		}
	}
	return nil
}

// pgTimeout bounds the check of the outbox's PostgreSQL at start.
const pgTimeout = 10 * time.Second

// startOutbox runs the relays of --outbox-relay, one per saga type and
// outbox, until the returned stop is called; stop waits for them and
// closes their Kafka clients. A relay that stops on its own (fenced)
// stops the daemon. It fails when the outbox's Redis or PostgreSQL cannot
// be reached, or the outbox table does not exist.
func (a *app) startOutbox(ctx context.Context, env *Env, defs []*saga.Definition) (stop func(), err error) {
	c := a.cfg.Outbox
	if len(c.Relay) == 0 {
		return func() {}, nil
	}
	if len(defs) == 0 {
		return nil, errors.New("--outbox-relay: no saga type is registered, so there is nothing to relay to")
	}
	var relays []*outbox.Relay
	var names []string // "<kind> outbox relay of saga <type>"
	defer func() {
		if err != nil {
			for _, r := range relays {
				r.Close()
			}
		}
	}()
	opts := func(kind, sagaType string) []outbox.RelayOpt {
		return []outbox.RelayOpt{
			outbox.Brokers(env.Brokers...),
			outbox.KafkaOpts(append(slices.Clone(env.kafkaOpts), metrics.Kafka(env.Registry, sagaType, "outbox-"+kind))...),
			outbox.TransactionalID(a.cfg.TransactionalID + "-outbox-" + kind + "-" + sagaType),
			outbox.Logger(a.compLog),
			outbox.Registerer(env.Registry),
		}
	}
	if c.Relays("redis") {
		rdb, flagName := env.rdb, "--redis-addr"
		if len(c.RedisAddrs) > 0 {
			if rdb, err = env.NewRedis("outbox", c.RedisAddrs); err != nil {
				return nil, err
			}
			flagName = "--outbox-redis-addr"
			if err := pingRedis(ctx, rdb); err != nil {
				return nil, fmt.Errorf("cannot reach the outbox's Redis at %s: %v; %s", strings.Join(c.RedisAddrs, ","), err, redisHint(err, flagName))
			}
		}
		for _, def := range defs {
			r, err := outbox.Redis(rdb, def.Name()).Relay(opts("redis", def.Name())...)
			if err != nil {
				return nil, err
			}
			relays, names = append(relays, r), append(names, "redis outbox relay of saga "+def.Name())
		}
	}
	if c.Relays("postgres") {
		pool, err := a.outboxPostgres(ctx, env)
		if err != nil {
			return nil, err
		}
		tbl := outbox.Postgres()
		for _, def := range defs {
			r, err := tbl.Relay(pool, def.Name(), opts("postgres", def.Name())...)
			if err != nil {
				return nil, err
			}
			relays, names = append(relays, r), append(names, "postgres outbox relay of saga "+def.Name())
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, r := range relays {
		what := names[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := r.Run(runCtx)
			if runCtx.Err() != nil {
				return // stopping
			}
			if err == nil {
				err = errors.New("stopped unexpectedly")
			}
			env.svc.fail(fmt.Errorf("%s: %w", what, err))
		}()
	}
	a.log.Info("relaying outboxes", "outboxes", strings.Join(c.Relay, ","), "relays", len(relays))
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			for _, r := range relays {
				r.Close()
			}
		})
	}, nil
}

// outboxPostgres connects to --outbox-postgres-dsn and checks that the
// outbox table is there. The daemon closes the pool when it stops.
func (a *app) outboxPostgres(ctx context.Context, env *Env) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(a.cfg.Outbox.PostgresDSN)
	if err != nil {
		return nil, errors.New("--outbox-postgres-dsn is not a valid PostgreSQL DSN")
	}
	where := fmt.Sprintf("%s:%d/%s as %s", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, cfg.ConnConfig.User)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("outbox PostgreSQL at %s: %w", where, err)
	}
	env.mu.Lock()
	env.closers = append(env.closers, func() error { pool.Close(); return nil })
	env.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, pgTimeout)
	defer cancel()
	var table *string
	if err := pool.QueryRow(pctx, `SELECT to_regclass($1)::text`, outbox.DefaultTable).Scan(&table); err != nil {
		return nil, fmt.Errorf("cannot reach the outbox's PostgreSQL at %s: %w; check --outbox-postgres-dsn (and PGPASSWORD or PGPASSFILE)", where, err)
	}
	if table == nil {
		return nil, fmt.Errorf("the outbox table %s does not exist in PostgreSQL at %s: create it with the service's migrations (outbox.Schema) before relaying", outbox.DefaultTable, where)
	}
	return pool, nil
}
