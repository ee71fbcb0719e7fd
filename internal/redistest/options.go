package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Options are the settings of StartWith. The zero value is Start's server.
type Options struct {
	// Args are more redis-server arguments, for example
	// "--requirepass", "secret" (the default user's password) or
	// "--user", "alice", "on", ">pw", "~*", "&*", "+@all" (an ACL user).
	Args []string
	// TLS, when its CertFile is set, makes the server listen with TLS
	// only: --tls-port on the free port, --port 0.
	TLS TLS
}

// TLS is the TLS listener of StartWith.
type TLS struct {
	// CertFile and KeyFile are the server's certificate and key (PEM),
	// CAFile the CA that client certificates must be signed by.
	CertFile, KeyFile, CAFile string
	// AuthClients is --tls-auth-clients: "" or "yes" requires a client
	// certificate, "optional" checks one when the client sends it, "no"
	// does not ask for one.
	AuthClients string
}

// StartWith starts a redis-server like StartServer, with more arguments
// and optionally a TLS listener instead of the plain one. It waits until
// the server answers a command (any reply counts: NOAUTH too) or, with
// TLS, until it accepts TCP connections. It fails the test when the
// server does not come up within 10 seconds; the server is killed when
// the test ends.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: install it (apt-get install redis-server) or run .ci/run: %v", err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	args := []string{"--port", fmt.Sprint(port)}
	ready := answers
	if o.TLS.CertFile != "" {
		auth := o.TLS.AuthClients
		if auth == "" {
			auth = "yes"
		}
		args = []string{"--port", "0", "--tls-port", fmt.Sprint(port),
			"--tls-cert-file", o.TLS.CertFile, "--tls-key-file", o.TLS.KeyFile,
			"--tls-ca-cert-file", o.TLS.CAFile, "--tls-auth-clients", auth}
		ready = accepts
	}
	args = append(args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--loglevel", "warning", "--enable-debug-command", "local")
	s.cmd = exec.Command(bin, append(args, o.Args...)...)
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(s.Kill)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ready(s.Addr) {
			return s
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("redis-server on %s did not come up within 10s (args %q)", s.Addr, o.Args)
	return nil
}

// answers reports whether a server at addr answers PING, with PONG or an
// error such as NOAUTH.
func answers(addr string) bool {
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
	return err == nil && (strings.HasPrefix(line, "+") || strings.HasPrefix(line, "-"))
}

// accepts reports whether addr accepts TCP connections.
func accepts(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
