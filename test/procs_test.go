package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildBinaries builds the commands named (under ./cmd) into a temporary
// directory once per test binary run, and returns that directory.
func buildBinaries(t *testing.T, names ...string) string {
	t.Helper()
	builtMu.Lock()
	defer builtMu.Unlock()
	if builtDir == "" {
		dir, err := os.MkdirTemp("", "ksaga-test-bin-")
		if err != nil {
			t.Fatal(err)
		}
		builtDir = dir
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	for _, name := range names {
		if built[name] {
			continue
		}
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", filepath.Join(builtDir, name), "./cmd/"+name)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, out)
		}
		built[name] = true
		t.Logf("built %s in %.1fs", name, time.Since(start).Seconds())
	}
	return builtDir
}

var (
	builtMu  sync.Mutex
	builtDir string
	built    = make(map[string]bool)
)

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// proc is a child process (kfaked, sagad) that a test starts, SIGKILLs and
// restarts; every start appends to the same log file. Each one is killed
// when the test ends.
type proc struct {
	t       *testing.T
	name    string
	path    string
	args    []string
	logPath string

	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	kills int
}

func newProc(t *testing.T, name, path string, args ...string) *proc {
	p := &proc{t: t, name: name, path: path, args: args, logPath: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() { p.stop() })
	return p
}

// start starts the process.
func (p *proc) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
}

// kill SIGKILLs the process and waits for it: no shutdown of any kind, a
// transaction it had open stays open.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.kills++
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Errorf("SIGKILL %s: %v", p.name, err)
	}
	<-done
}

// exited reports whether the process has exited (on its own, or killed).
func (p *proc) exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return true
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process: SIGTERM, SIGKILL after 10s.
func (p *proc) stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

// logTail returns the last lines of the process's log.
func (p *proc) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// freeAddr returns a loopback address with a port that is free now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitReady polls a sagad's /readyz until it answers 200.
func waitReady(ctx context.Context, t *testing.T, p *proc, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	cl := &http.Client{Timeout: time.Second}
	for {
		resp, err := cl.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if p.exited() {
			t.Fatalf("%s exited before it was ready:\n%s", p.name, p.logTail(30))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s not ready on http://%s/readyz after %v (last: %v):\n%s", p.name, addr, timeout, err, p.logTail(30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// String names the process for logs.
func (p *proc) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return p.name
	}
	return fmt.Sprintf("%s (pid %d)", p.name, p.cmd.Process.Pid)
}
