//go:build ksaga_production

package daemon

// startEmbedded refuses the embedded mode: this is the production build
// (-tags ksaga_production), which has no in-process Kafka or Redis
// (embedded.go, left out of this build). It returns nil and ExitUsage.
func (a *app) startEmbedded(*Env) (stop func(), code int) {
	a.log.Error(a.o.name + " is the production build (-tags ksaga_production): it has no embedded demo; set --kafka-brokers and --redis-addr (or KSAGA_KAFKA_BROKERS and KSAGA_REDIS_ADDR)")
	return nil, ExitUsage
}
