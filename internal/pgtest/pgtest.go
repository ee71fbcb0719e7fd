// Package pgtest starts a real PostgreSQL server for tests: Debian's
// postgresql package (initdb and postgres from /usr/lib/postgresql/*/bin),
// a fresh cluster in a temporary directory, listening on a free port of the
// loopback interface, stopped and removed when the test ends.
//
//	dsn := pgtest.Start(t)
//	pool, err := pgxpool.New(ctx, dsn)
//
// PostgreSQL refuses to run as root: run as root (CI, a container), the
// server runs as the user nobody. Durability is off (fsync=off): the
// server is for tests only.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server is a running PostgreSQL server.
type Server struct {
	// DSN connects to database postgres as the superuser postgres
	// (no password).
	DSN    string
	Port   int
	cmd    *exec.Cmd
	exited chan struct{}
	dir    string
}

// Start starts a server and returns its DSN. It fails the test when
// PostgreSQL is not installed (apt-get install postgresql, or
// scripts/test-deps.sh) or does not come up within 30 seconds.
func Start(t testing.TB) string {
	t.Helper()
	return StartServer(t).DSN
}

// StartServer is Start, returning the Server.
func StartServer(t testing.TB) *Server {
	t.Helper()
	s, err := Run()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// BinDir returns the directory of PostgreSQL's server programs:
// $KSAGA_PG_BIN, else the newest /usr/lib/postgresql/<version>/bin that
// holds postgres.
func BinDir() (string, error) {
	if d := os.Getenv("KSAGA_PG_BIN"); d != "" {
		return d, nil
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(found) == 0 {
		return "", errors.New("PostgreSQL not found in /usr/lib/postgresql/*/bin: install it (apt-get install postgresql, or scripts/test-deps.sh), or set KSAGA_PG_BIN")
	}
	version := func(p string) int {
		v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p))))
		return v
	}
	slices.SortFunc(found, func(a, b string) int { return version(a) - version(b) })
	return filepath.Dir(found[len(found)-1]), nil
}

// Run starts a server outside a test. Stop it when done.
func Run() (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ksaga-pgtest-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir}
	ok := false
	defer func() {
		if !ok {
			s.Stop()
		}
	}()
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			return nil, fmt.Errorf("running as root, and there is no user nobody to run postgres as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		// The server's user must own its directory and reach it.
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	command := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		return cmd
	}
	out, err := command("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.Port = port
		s.DSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
		log, err := os.Create(filepath.Join(dir, "postgres.log"))
		if err != nil {
			return nil, err
		}
		s.cmd = command("postgres", "-D", data, "-p", strconv.Itoa(port), "-c", "listen_addresses=127.0.0.1",
			"-k", dir, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
			"-c", "max_connections=200")
		s.cmd.Stdout, s.cmd.Stderr = log, log
		err = s.cmd.Start()
		log.Close()
		if err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
		exited := make(chan struct{})
		s.exited = exited
		go func(cmd *exec.Cmd) {
			_ = cmd.Wait()
			close(exited)
		}(s.cmd)
		if err := waitReady(s.DSN, exited); err == nil {
			ok = true
			return s, nil
		} else if attempt >= 2 || !portTaken(dir) {
			logText, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			s.Stop()
			return nil, fmt.Errorf("postgres on port %d did not come up: %w\n%s", port, err, logText)
		}
		// Another process took the port between freePort and the
		// server's bind: try another.
		s.kill()
	}
}

// waitReady waits until the server at dsn answers a query, or exits.
func waitReady(dsn string, exited <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("postgres exited")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, dsn)
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not ready within 30s: %w", last)
}

func portTaken(dir string) bool {
	logText, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
	return strings.Contains(string(logText), "Address already in use")
}

// kill stops the server at once (SIGQUIT: immediate shutdown) and waits
// for it to exit.
func (s *Server) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Stop stops the server and removes its directory. It is safe to call
// more than once.
func (s *Server) Stop() {
	s.kill()
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
		s.dir = ""
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
