package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// proc is a child process that the harness starts, signals and restarts.
// Each start appends to the same log file. A supervised proc that exits on
// its own (not by the harness's hand) is logged and restarted after
// restartDelay.
//
// proc is safe for concurrent use: the fault schedule signals it while its
// wait goroutine may be restarting it.
type proc struct {
	name      string
	path      string
	args      []string
	logPath   string
	supervise bool
	// sagad says the process is a sagad, which exits with status 1 when
	// it finds itself fenced or cannot reach its dependencies.
	sagad bool
	h     *harness

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when cmd has exited
	starts   int
	held     bool      // the harness is killing it: its exit is expected
	stopping bool      // the run is ending: no more restarts
	stopped  bool      // SIGSTOPped and not continued yet
	lastCont time.Time // last SIGCONT after a SIGSTOP
	exits    []exit    // exits of its own
	wg       sync.WaitGroup
}

// exit is an exit that the harness did not cause.
type exit struct {
	at     time.Time
	status string
	// fenced says the process exited with status 1 soon after a
	// SIGSTOP/SIGCONT: the expected end of a fenced zombie.
	fenced bool
	// crash says the exit status was neither 0 nor 1 (a Go panic exits 2)
	// or a signal that the harness did not send.
	crash bool
}

// restartDelay is the pause before a proc that exited on its own is
// restarted.
const restartDelay = time.Second

// fencedWindow is how long after a SIGCONT an exit with status 1 counts as
// the fenced zombie's expected exit.
const fencedWindow = 2 * time.Minute

// start starts the process. It fails when it is already running.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startLocked()
}

func (p *proc) startLocked() error {
	if p.done != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s is already running (pid %d)", p.name, p.cmd.Process.Pid)
		}
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s: open log: %w", p.name, err)
	}
	fmt.Fprintf(logf, "=== sagachaos: start #%d of %s at %s: %s %q\n", p.starts+1, p.name, time.Now().Format(time.RFC3339Nano), p.path, p.args)
	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.starts++
	p.cmd, p.done, p.held, p.stopped = cmd, make(chan struct{}), false, false
	p.wg.Add(1)
	go p.wait(cmd, p.done, logf)
	return nil
}

// wait reaps cmd and restarts a supervised proc that exited on its own.
func (p *proc) wait(cmd *exec.Cmd, done chan struct{}, logf *os.File) {
	defer p.wg.Done()
	err := cmd.Wait()
	fmt.Fprintf(logf, "=== sagachaos: %s exited at %s: %v\n", p.name, time.Now().Format(time.RFC3339Nano), exitStatus(cmd, err))
	logf.Close()

	p.mu.Lock()
	defer p.mu.Unlock()
	// Whether the exit was the harness's doing is read before done is
	// closed: kill waits for done, and a restart right after it (the
	// crash-loop fault) clears held.
	expected := p.held || p.stopping
	close(done)
	if expected {
		return
	}
	e := exit{at: time.Now(), status: exitStatus(cmd, err)}
	code := cmd.ProcessState.ExitCode()
	switch {
	case !p.sagad:
		e.crash = true // a broker or Redis has no reason to exit
	case code == 1 && !p.lastCont.IsZero() && time.Since(p.lastCont) < fencedWindow:
		e.fenced = true
	case code != 0 && code != 1:
		e.crash = true
	}
	p.exits = append(p.exits, e)
	what := "exited on its own"
	switch {
	case e.fenced:
		what = "exited after being fenced (expected)"
	case e.crash:
		what = "CRASHED"
	}
	p.h.logf("%s (pid %d) %s: %s; see %s", p.name, cmd.Process.Pid, what, e.status, p.logPath)
	if !p.supervise {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		time.Sleep(restartDelay)
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.stopping || p.held || p.done != done {
			return // stopping, or someone else restarted it
		}
		if err := p.startLocked(); err != nil {
			p.h.logf("restart %s: %v", p.name, err)
			return
		}
		p.h.logf("restarted %s (pid %d)", p.name, p.cmd.Process.Pid)
	}()
}

func exitStatus(cmd *exec.Cmd, err error) string {
	if cmd.ProcessState != nil {
		return cmd.ProcessState.String()
	}
	if err != nil {
		return err.Error()
	}
	return "exited"
}

// setArgs sets the arguments of the process's next starts (a restart, the
// supervisor's restart after an exit of its own); the running process keeps
// its own.
func (p *proc) setArgs(args []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.args = slicesClone(args)
}

// argsNow returns the arguments of the process's next start.
func (p *proc) argsNow() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slicesClone(p.args)
}

// pid returns the running process's id, or 0.
func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// kill sends SIGKILL and waits for the process to exit. The exit is
// expected: the proc is not restarted until restart.
func (p *proc) kill() error {
	p.mu.Lock()
	if p.cmd == nil {
		p.mu.Unlock()
		return fmt.Errorf("%s was never started", p.name)
	}
	p.held = true
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	err := cmd.Process.Signal(syscall.SIGKILL)
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("SIGKILL %s: %w", p.name, err)
	}
	<-done
	return nil
}

// term sends SIGTERM and waits for the process to exit, sending SIGKILL
// after grace. Like kill, the exit is expected.
func (p *proc) term(grace time.Duration) error {
	p.mu.Lock()
	if p.cmd == nil {
		p.mu.Unlock()
		return fmt.Errorf("%s was never started", p.name)
	}
	p.held = true
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("SIGTERM %s: %w", p.name, err)
	}
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
	return nil
}

// restart starts the process again after kill (or after it exited). It is
// a no-op when the run is ending.
func (p *proc) restart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return nil
	}
	if p.done != nil {
		select {
		case <-p.done:
		default:
			p.held = false
			return nil // the supervisor restarted it already
		}
	}
	return p.startLocked()
}

// signal sends sig to the running process (SIGSTOP, SIGCONT).
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%s was never started", p.name)
	}
	select {
	case <-p.done:
		return fmt.Errorf("%s is not running", p.name)
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%v %s: %w", sig, p.name, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		p.stopped = true
	case syscall.SIGCONT:
		p.stopped, p.lastCont = false, time.Now()
	}
	return nil
}

// stop ends the process for good: SIGTERM, then SIGKILL after grace. It
// waits for the supervisor's goroutines.
func (p *proc) stop(grace time.Duration) {
	p.mu.Lock()
	p.stopping = true
	cmd, done, stopped := p.cmd, p.done, p.stopped
	p.mu.Unlock()
	if cmd != nil {
		select {
		case <-done:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			if stopped {
				_ = cmd.Process.Signal(syscall.SIGCONT)
			}
			select {
			case <-done:
			case <-time.After(grace):
				p.h.logf("%s did not stop within %v of SIGTERM: SIGKILL", p.name, grace)
				_ = cmd.Process.Signal(syscall.SIGKILL)
				<-done
			}
		}
	}
	p.wg.Wait()
}

// summary returns the exits of its own and how many of them were expected
// (fenced) or crashes.
func (p *proc) summary() (restarts, fenced, crashes int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.exits {
		restarts++
		if e.fenced {
			fenced++
		}
		if e.crash {
			crashes++
		}
	}
	return restarts, fenced, crashes
}
