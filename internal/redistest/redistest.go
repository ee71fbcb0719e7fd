// Package redistest starts a real redis-server for tests, on a free port of
// the loopback interface, and stops it when the test ends.
//
//	addr := redistest.Start(t)
//	rdb := redis.NewClient(&redis.Options{Addr: addr})
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Server is a running redis-server.
type Server struct {
	Addr string
	cmd  *exec.Cmd
	dir  string // removed by Kill (Run only)
}

// Start starts a redis-server with persistence off and returns its address.
// SAVE still writes a snapshot to the server's own directory, and DEBUG
// RELOAD NOSAVE takes the server back to it: that is how tests make a Redis
// go back in time, as a restart from an older RDB file or a failover to a
// lagging replica does.
// It fails the test when redis-server is not installed (apt-get install
// redis-server) or does not come up within 10 seconds. The server is killed
// when the test and its subtests end.
func Start(t testing.TB) string {
	t.Helper()
	return StartServer(t).Addr
}

// StartServer is Start, returning the Server so a test can Kill it.
func StartServer(t testing.TB) *Server {
	t.Helper()
	return start(t)
}

func start(t testing.TB, extra ...string) *Server {
	t.Helper()
	s, err := run(t.TempDir(), extra...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(s.Kill)
	return s
}

// Run starts a redis-server as Start does, for callers without a test (the
// sagatest package's Open): Kill stops it and removes its directory.
func Run() (*Server, error) {
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return nil, err
	}
	s, err := run(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.dir = dir
	return s, nil
}

func run(dir string, extra ...string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found: install it (apt-get install redis-server) or run .ci/run: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	args := append([]string{"--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--loglevel", "warning",
		"--enable-debug-command", "local"}, extra...)
	s.cmd = exec.Command(bin, args...)
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ping(s.Addr) {
			return s, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Kill()
	return nil, fmt.Errorf("redis-server on %s did not answer PING within 10s", s.Addr)
}

// Kill stops the server at once. It is safe to call twice.
func (s *Server) Kill() {
	if s.cmd.Process != nil && s.cmd.ProcessState == nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// StartCluster starts a Redis Cluster of n masters without replicas
// (redis-server --cluster-enabled yes, joined with redis-cli --cluster
// create) and returns the masters, which share the 16384 slots evenly. The
// servers are killed when the test ends.
func StartCluster(t testing.TB, n int) []*Server {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redis-cli not found: install redis-server (apt-get install redis-server): %v", err)
	}
	var nodes []*Server
	args := []string{"--cluster", "create"}
	for range n {
		dir := t.TempDir()
		s := start(t, "--cluster-enabled", "yes", "--cluster-config-file", dir+"/nodes.conf", "--cluster-node-timeout", "2000")
		nodes = append(nodes, s)
		args = append(args, s.Addr)
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	// The cluster is usable once every node agrees that all slots are
	// served.
	deadline := time.Now().Add(20 * time.Second)
	for _, s := range nodes {
		for {
			out, _ := exec.Command(cli, "-h", host(s.Addr), "-p", port(s.Addr), "cluster", "info").Output()
			if strings.Contains(string(out), "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("redis cluster on %s is not ok after 20s: %s", s.Addr, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nodes
}

func host(addr string) string { h, _, _ := net.SplitHostPort(addr); return h }
func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
