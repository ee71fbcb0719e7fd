package main

import (
	"context"
	"time"

	"github.com/ksaga/ksaga/chaos/check"
	"github.com/ksaga/ksaga/saga/order"
)

// checkResult is what the checker reported.
type checkResult struct {
	ok        bool
	anomalies int
	// first holds the first few anomalies, one line each.
	first []string
	text  string
	// full lists every anomaly (report.txt).
	full string
	// tombstones counts the tombstones on the state topics, expired the
	// sagas they deleted; deletedAfter is the least and the most time
	// from a saga's end to its tombstone.
	tombstones, expired int
	deletedAfter        [2]time.Duration
}

// check runs chaos/check on the run's topics and Redis servers.
func (h *harness) check(ctx context.Context, p *plan) (checkResult, error) {
	ex := make([]check.Expectation, 0, len(p.exps))
	for _, e := range p.exps {
		if e.Skipped {
			continue // never sent
		}
		ex = append(ex, check.Expectation{ID: e.ID, Kind: e.Kind, Order: e.Order, Transfer: e.Transfer, Poison: e.Poison, Marker: e.Marker, Landed: e.Landed, Resumed: e.Resumed})
	}
	rep, err := check.Run(ctx, check.Config{
		Brokers:        []string{h.kafkaAddr},
		EngineRedis:    h.redisAddr[redisEngine],
		SimRedis:       h.redisAddr[redisSim],
		OrdersRedis:    h.redisAddr[redisOrders],
		SagaType:       order.Name,
		LocalFirst:     true,
		HoldsRedis:     h.redisAddr[redisOrders],
		InitialStock:   initialStock,
		InitialCoupons: p.coupons,
		Expect:         ex,
		Idle:           checkIdle,
		Retention:      h.cfg.retention(),
	})
	if err != nil {
		return checkResult{}, err
	}
	res := checkResult{ok: rep.OK(), anomalies: len(rep.Anomalies), text: rep.String(), full: rep.Text(0),
		tombstones: rep.Tombstones, expired: rep.Expired, deletedAfter: rep.DeletedAfter}
	for _, a := range rep.Anomalies[:min(len(rep.Anomalies), 5)] {
		res.first = append(res.first, a.String())
	}
	return res, nil
}
