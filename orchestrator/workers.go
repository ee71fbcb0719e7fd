package orchestrator

// workers is a fixed set of long-lived goroutines that run the functions
// handed to them. Their stacks stay grown between batches.
type workers struct{ work chan func() }

func newWorkers(n int) *workers {
	w := &workers{work: make(chan func())}
	for range n {
		go func() {
			for fn := range w.work {
				fn()
			}
		}()
	}
	return w
}

// run runs fn on a worker, waiting for one to be free.
func (w *workers) run(fn func()) { w.work <- fn }

// stop ends the workers once they finish what they run.
func (w *workers) stop() { close(w.work) }
