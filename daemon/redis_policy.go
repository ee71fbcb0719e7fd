package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/ksaga/ksaga/metrics"
)

// watchRedis registers the eviction metrics of the engines' Redis
// (metrics.WatchRedis, labelled with the first engine's saga type) and,
// against a real Redis, logs once whether its maxmemory-policy lets it
// evict saga states. The embedded Redis never evicts and has no CONFIG:
// it gets the metrics and no line.
func (a *app) watchRedis(ctx context.Context, env *Env) error {
	ctx, cancel := context.WithTimeout(ctx, redisPingTimeout)
	defer cancel()
	rs, err := metrics.WatchRedis(ctx, env.Registry, env.svc.engines[0].saga, env.rdb)
	if err != nil {
		return err
	}
	env.afterClose(rs.Close)
	if !a.cfg.Embedded() {
		policy, err := rs.Policy()
		logRedisPolicy(a.log, policy, err)
	}
	return nil
}

// logRedisPolicy logs what Redis's maxmemory-policy means for the saga
// states it holds: an ERROR line for a policy that evicts any key, a WARN
// line when the policy cannot be read or is unknown, a DEBUG line when it
// is safe.
func logRedisPolicy(log *slog.Logger, policy string, err error) {
	switch {
	case errors.Is(err, metrics.ErrConfigRefused):
		log.Warn("cannot read redis maxmemory-policy (CONFIG is disabled on this server): make sure it is noeviction or volatile-*", "err", err)
	case err != nil:
		log.Warn("cannot read redis maxmemory-policy: make sure it is noeviction or volatile-*", "err", err)
	case metrics.PolicySafety(policy) == metrics.PolicyUnsafe:
		log.Error(fmt.Sprintf("redis maxmemory-policy is %s: Redis may evict saga states; the engine stays correct by reading them back from the state topic, at a cost per lost key; set maxmemory-policy to noeviction", policy),
			"policy", policy)
	case metrics.PolicySafety(policy) == metrics.PolicyUnknown:
		log.Warn(fmt.Sprintf("redis maxmemory-policy is %s, which ksaga does not know: make sure it never evicts keys without a TTL (noeviction or volatile-*)", policy),
			"policy", policy)
	default:
		log.Debug("redis maxmemory-policy keeps saga states", "policy", policy)
	}
}
