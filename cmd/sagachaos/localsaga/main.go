// Command localsaga runs the chaos suite's local-first saga (package
// chaos/check/localfirst) on package daemon: its engine and its approver
// participant, as a team runs a saga type of its own. cmd/sagachaos builds
// and starts it beside sagad; "localsaga -help" lists its flags.
//
//	localsaga --kafka-brokers k:9092 --redis-addr r:6379 --holds-redis-addr h:6379 \
//		--participants all --transactional-id local-1
package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/saga"
)

func main() {
	daemon.TuneGC()
	var (
		holdsAddr string
		chaos     bool
	)
	daemon.Main(
		daemon.Name("localsaga"),
		daemon.About("localsaga runs the chaos suite's local-first saga: a Local first step that holds a transfer's amount in Redis, then the approver participant."),
		daemon.Flags(func(fs *flag.FlagSet) {
			fs.StringVar(&holdsAddr, "holds-redis-addr", "", "Redis `address` of the holds, the Local step's ledger (default: --redis-addr)")
			fs.BoolVar(&chaos, "chaos-faults", false, "TESTS ONLY: before each hold, obey the fault keys "+localfirst.HangKey+" and "+localfirst.PanicKey+" on the holds' Redis")
		}),
		daemon.Validate(func(c *daemon.Config) error {
			if c.IsSet("holds-redis-addr") && strings.TrimSpace(holdsAddr) == "" {
				return fmt.Errorf("%s is empty: want host:port", c.Flag("holds-redis-addr"))
			}
			return nil
		}),
		daemon.BuildSaga(func(_ context.Context, env *daemon.Env) (*saga.Definition, error) {
			rdb := env.Redis()
			if holdsAddr != "" {
				var err error
				if rdb, err = env.NewRedis("holds", []string{strings.TrimSpace(holdsAddr)}); err != nil {
					return nil, err
				}
			}
			if chaos {
				env.Logger.Warn("chaos faults enabled (--chaos-faults): hold-funds obeys " + localfirst.HangKey + " and " + localfirst.PanicKey + "; tests only")
			}
			return localfirst.New(localfirst.NewStore(rdb, chaos, env.Logger)), nil
		}),
		daemon.BuildParticipant(localfirst.Approver, func(_ context.Context, env *daemon.Env) (participant.Handler, error) {
			return localfirst.NewApprover(env.ParticipantsRedis()), nil
		}),
	)
}
