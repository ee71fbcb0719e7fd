//go:build ksaga_production

package main

import (
	"flag"
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/saga/order"
)

// The production build (go build -tags ksaga_production, as make image
// does) has no chaos fault hooks: no --chaos-faults flag, and nothing that
// reads the chaos suite's keys (chaos.go, left out of this build).

// registerChaosFlag adds no flag: --chaos-faults is test code.
func registerChaosFlag(*flag.FlagSet, *bool) {}

// withChaos returns s as it is.
func withChaos(s order.Store, _ redis.UniversalClient, _ *slog.Logger) order.Store { return s }
