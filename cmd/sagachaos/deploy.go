package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ksaga/ksaga/internal/ctxtime"
)

// orderBuild is a build of sagad as the rolling-deploy fault deploys it:
// the order saga's versions it hosts and the one new sagas start on ("":
// the highest).
type orderBuild struct{ versions, start string }

// orderBuilds are the builds the engines go through. The engines start on
// the first; each rolling-deploy moves them to the next: the order saga's
// version 3 hosted beside 2 while sagas still start on 2 (a not yet
// replaced engine must be able to run whatever a replaced one starts),
// then started on, then hosted alone (it adopts version 2's running
// sagas). Further deploys go back and forth between the last two.
var orderBuilds = []orderBuild{{"2", ""}, {"2,3", "2"}, {"2,3", "3"}, {"3", ""}}

// buildAfter returns the build of the n-th rolling deploy (1-based).
func buildAfter(n int) orderBuild {
	if n < len(orderBuilds) {
		return orderBuilds[n]
	}
	return orderBuilds[len(orderBuilds)-2+(n-len(orderBuilds))%2]
}

// buildArgs returns the order-saga flags of b.
func (b orderBuild) args() []string {
	args := []string{"--order-versions", b.versions}
	if b.start != "" {
		args = append(args, "--order-start-version", b.start)
	}
	return args
}

// withBuild returns args with its order-saga flags set to b's.
func withBuild(args []string, b orderBuild) []string {
	out := make([]string, 0, len(args)+4)
	for i := 0; i < len(args); i++ {
		if args[i] == "--order-versions" || args[i] == "--order-start-version" {
			i++ // and its value
			continue
		}
		out = append(out, args[i])
	}
	return append(out, b.args()...)
}

// rollingDeploy replaces the engines one after the other with the next
// build (SIGTERM, start with the new flags, wait until ready), as a
// StatefulSet's rolling update does, while the load runs.
func (h *harness) rollingDeploy(ctx context.Context, kind string) error {
	h.outMu.Lock()
	h.deploys++
	n := h.deploys
	h.outMu.Unlock()
	b := buildAfter(n)
	for i, p := range h.engines {
		h.faultf("%s: deploy #%d: SIGTERM %s (pid %d), start it as %v", kind, n, p.name, p.pid(), b.args())
		if err := p.term(30 * time.Second); err != nil {
			return err
		}
		p.setArgs(withBuild(p.argsNow(), b))
		ctxtime.Sleep(ctx, restartAfter)
		if err := p.restart(); err != nil {
			return err
		}
		if err := h.waitReady(ctx, p, h.engineHTTP[i], 90*time.Second); err != nil {
			return fmt.Errorf("%s: deploy #%d: %w", kind, n, err)
		}
	}
	h.tally(kind, "builds", 1)
	if slices.Equal(b.args(), buildAfter(len(orderBuilds)-1).args()) {
		h.tally(kind, "hosting-v3-alone", 1)
	}
	return nil
}
