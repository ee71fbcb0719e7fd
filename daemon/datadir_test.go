package daemon

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/saga"
)

// holderEnv makes the test binary, re-executed by TestDataDirLock, hold the
// lock of the data directory it names until its stdin closes.
const holderEnv = "KSAGA_TEST_DATADIR_HOLDER"

// holdDataDir is the second process of TestDataDirLock: it locks dir as
// tripd, says "locked", and holds the lock until its stdin closes or it
// is killed. It does not return.
func holdDataDir(dir string) {
	l, err := lockDataDir(dir, "tripd", time.Now())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println("locked")
	_, _ = io.Copy(io.Discard, os.Stdin)
	l.release()
	os.Exit(0)
}

// TestDataDirLock locks a data directory in another process, and checks
// that a lock and a whole daemon of this one are refused with the holder's
// name and pid, and that once the holder is killed (leaving its lock file
// behind) the directory can be locked again.
func TestDataDirLock(t *testing.T) {
	if dir := os.Getenv(holderEnv); dir != "" {
		holdDataDir(dir)
	}
	dir := filepath.Join(t.TempDir(), "data")
	cmd := exec.Command(os.Args[0], "-test.run=^TestDataDirLock$")
	cmd.Env = append(os.Environ(), holderEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "locked" {
	}
	if sc.Err() != nil || sc.Text() != "locked" {
		t.Fatalf("the holder did not lock %s: %v", dir, sc.Err())
	}
	pid := cmd.Process.Pid
	want := fmt.Sprintf("the data directory %s is in use by tripd (pid %d, since ", dir, pid)
	const fix = "; stop it, or pass --data-dir with another directory"

	t.Run("a second lock", func(t *testing.T) {
		l, err := lockDataDir(dir, "sagad", time.Now())
		if err == nil {
			l.release()
			t.Fatal("got the lock, want it refused")
		}
		var inUse *dataDirInUseError
		if !errors.As(err, &inUse) || !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), fix) {
			t.Errorf("got %v, want a *dataDirInUseError %q…%q", err, want, fix)
		}
	})

	t.Run("a second daemon", func(t *testing.T) {
		var stderr bytes.Buffer
		def := saga.New("locktest", saga.Step[struct{}]{Name: "s", Local: func(context.Context, *struct{}) error { return nil }})
		code := Run(context.Background(), []string{"--data-dir", dir, "--metrics-addr", "", "--log-format", "text"},
			Name("sagad"), Saga(def), Output(io.Discard, &stderr), Getenv(func(string) string { return "" }))
		if code != ExitError {
			t.Errorf("got exit status %d, want %d", code, ExitError)
		}
		var lines []string
		for line := range strings.Lines(stderr.String()) {
			if strings.Contains(line, "level=ERROR") {
				lines = append(lines, line)
			}
		}
		if len(lines) != 1 || !strings.Contains(lines[0], want) || !strings.Contains(lines[0], fix) {
			t.Errorf("got errors %q, want one line naming the holder: %q…%q", lines, want, fix)
		}
		if strings.Contains(stderr.String(), "embedded Kafka and Redis started") {
			t.Errorf("the daemon started its Kafka:\n%s", &stderr)
		}
	})

	t.Run("after the holder is killed", func(t *testing.T) {
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		b, err := os.ReadFile(filepath.Join(dir, lockFileName))
		if err != nil || !strings.Contains(string(b), fmt.Sprintf(`"pid":%d`, pid)) {
			t.Fatalf("the killed holder's lock file: got %q, %v, want it to name pid %d still", b, err, pid)
		}
		l, err := lockDataDir(dir, "sagad", time.Now())
		if err != nil {
			t.Fatalf("got %v, want the lock", err)
		}
		defer l.release()
		f, err := os.Open(filepath.Join(dir, lockFileName))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if h := readHolder(f); h.PID != os.Getpid() || h.Program != "sagad" {
			t.Errorf("the lock file names %+v, want sagad with pid %d", h, os.Getpid())
		}
	})
}

// TestDataDirLockTwice checks that one process cannot lock a directory
// twice either (two daemons in one process), and that a released lock can
// be taken again.
func TestDataDirLockTwice(t *testing.T) {
	dir := t.TempDir()
	l, err := lockDataDir(dir, "sagad", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockDataDir(dir, "sagad", time.Now())
	var inUse *dataDirInUseError
	if !errors.As(err, &inUse) || inUse.holder.PID != os.Getpid() {
		t.Errorf("a second lock: got %v, want a *dataDirInUseError naming pid %d", err, os.Getpid())
	}
	l.release()
	l, err = lockDataDir(dir, "sagad", time.Now())
	if err != nil {
		t.Fatalf("after release: got %v, want the lock", err)
	}
	l.release()
}

func TestDataDirInUseError(t *testing.T) {
	since := time.Date(2026, 12, 7, 9, 0, 0, 0, time.FixedZone("CET", 3600))
	for _, tc := range []struct {
		name   string
		holder lockHolder
		want   string
	}{
		{"named", lockHolder{PID: 1234, Program: "sagad", Since: since},
			"the data directory /tmp/ksaga-sagad is in use by sagad (pid 1234, since 2026-12-07T08:00:00Z); stop it, or pass --data-dir with another directory"},
		{"not written yet", lockHolder{},
			"the data directory /tmp/ksaga-sagad is in use by another process; stop it, or pass --data-dir with another directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := &dataDirInUseError{dir: "/tmp/ksaga-sagad", holder: tc.holder}
			if got := err.Error(); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
