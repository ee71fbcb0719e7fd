package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/participant"
)

// services are the engines and the participants of one daemon.
type services struct {
	engines []*namedEngine
	parts   []*namedParticipant

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	// failed is closed by the first Run that returns before stop; err is
	// its error.
	failed   chan struct{}
	failOnce sync.Once
	err      error
}

type namedEngine struct {
	saga string
	eng  *orchestrator.Engine
}

type namedParticipant struct {
	name string
	p    *participant.Participant
}

func newServices() *services { return &services{failed: make(chan struct{})} }

// ready reports whether every engine has joined its group and restored its
// partitions.
func (s *services) ready() bool {
	for _, e := range s.engines {
		if !e.eng.Ready() {
			return false
		}
	}
	return true
}

func (s *services) fail(err error) {
	s.failOnce.Do(func() {
		s.err = err
		close(s.failed)
	})
}

// start runs the engines and the participants in goroutines until stop. A
// Run that returns before stop closes s.failed.
func (s *services) start(ctx context.Context) {
	ctx, s.cancel = context.WithCancel(ctx)
	runOne := func(what string, run func(context.Context) error) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			err := run(ctx)
			if ctx.Err() != nil {
				return // stopping
			}
			if err == nil {
				err = errors.New("stopped unexpectedly")
			}
			s.fail(fmt.Errorf("%s: %w", what, err))
		}()
	}
	for _, e := range s.engines {
		what := "engine"
		if len(s.engines) > 1 {
			what = "engine of saga " + e.saga
		}
		runOne(what, e.eng.Run)
	}
	for _, np := range s.parts {
		runOne("participant "+np.name, np.p.Run)
	}
}

// stop cancels the Runs, waits for them to return (each finishes or aborts
// its current transaction) and closes the Kafka clients. It is safe to call
// more than once, and without start.
func (s *services) stop() {
	s.once.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		for _, np := range s.parts {
			np.p.Close()
		}
		for _, e := range s.engines {
			e.eng.Close()
		}
	})
}
