package conn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sync"
	"syscall"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
)

// IsAuthError reports whether err means that Kafka or Redis refused who the
// client is or what it may do, or that a TLS connection could not be set
// up: retrying will not help, so a caller should stop at once and print
// the error (one line) rather than retry. It is KindOf(err) != KindNone;
// KindOf lists what is recognised. A context deadline or a refused
// connection is not an auth error (a TLS client talking to a plaintext
// listener may just wait for the deadline).
func IsAuthError(err error) bool { return KindOf(err) != KindNone }

// Kind is what an auth error is about, so that a caller can name the
// settings to check.
type Kind int

const (
	// KindNone is not an auth error.
	KindNone Kind = iota
	// KindLogin is refused credentials: Kafka's SASL_AUTHENTICATION_FAILED,
	// UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE and the fail-fast
	// error of Kafka.Opts's SASL guard; Redis's WRONGPASS and NOAUTH.
	KindLogin
	// KindPermission is a login that worked and a request that its ACLs
	// forbid: Kafka's TOPIC_, GROUP_, CLUSTER_ and
	// TRANSACTIONAL_ID_AUTHORIZATION_FAILED; Redis's NOPERM.
	KindPermission
	// KindCertificate is a TLS handshake that failed on a certificate: the
	// server's does not verify (unknown authority, another host name,
	// expired), or the server refused or wants the client's (its alert).
	KindCertificate
	// KindMismatch is one side using TLS or SASL and the other not: a
	// server that does not answer TLS, or kgo.ErrFirstReadEOF (a broker
	// that closed the connection at the first request, which kgo does not
	// retry either).
	KindMismatch
)

// KindOf returns what err is about, KindNone for an error that is not an
// auth error (or nil).
func KindOf(err error) Kind {
	if err == nil {
		return KindNone
	}
	if _, ok := errors.AsType[*authError](err); ok {
		return KindLogin
	}
	for _, ke := range []error{kerr.SaslAuthenticationFailed, kerr.UnsupportedSaslMechanism, kerr.IllegalSaslState} {
		if errors.Is(err, ke) {
			return KindLogin
		}
	}
	for _, ke := range []error{kerr.TopicAuthorizationFailed, kerr.GroupAuthorizationFailed,
		kerr.ClusterAuthorizationFailed, kerr.TransactionalIDAuthorizationFailed} {
		if errors.Is(err, ke) {
			return KindPermission
		}
	}
	switch {
	case redis.IsPermissionError(err):
		return KindPermission
	case redis.IsAuthError(err):
		return KindLogin
	}
	if _, ok := errors.AsType[*kgo.ErrFirstReadEOF](err); ok {
		return KindMismatch
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return KindMismatch
	}
	if isCertificateError(err) {
		return KindCertificate
	}
	return KindNone
}

// isCertificateError reports whether err is a TLS handshake that failed
// on a certificate.
func isCertificateError(err error) bool {
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		return true
	}
	if alert, ok := tlsAlert(err); ok {
		// The alerts a server sends when it rejects the client's
		// certificate or wants one (RFC 8446 section 6.2).
		switch alert {
		case 42, // bad_certificate
			43,  // unsupported_certificate
			44,  // certificate_revoked
			45,  // certificate_expired
			46,  // certificate_unknown
			48,  // unknown_ca
			49,  // access_denied
			116: // certificate_required
			return true
		}
	}
	return false
}

// tlsAlert returns the TLS alert that the peer sent, if err is one. Over
// TCP, crypto/tls reports it as a *net.OpError "remote error" around a
// value of its unexported alert type (tls.AlertError is QUIC's), so the
// alert is recognised as crypto/tls's uint8 kind.
func tlsAlert(err error) (uint8, bool) {
	if a, ok := errors.AsType[tls.AlertError](err); ok {
		return uint8(a), true
	}
	op, ok := errors.AsType[*net.OpError](err)
	if !ok || op.Op != "remote error" || op.Err == nil {
		return 0, false
	}
	v := reflect.ValueOf(op.Err)
	if v.Kind() != reflect.Uint8 || v.Type().PkgPath() != "crypto/tls" {
		return 0, false
	}
	return uint8(v.Uint()), true
}

// authError is a login that failed although the server did not say so in
// so many words: a broker that closed the connection after the
// credentials.
type authError struct{ msg string }

func (e *authError) Error() string { return e.msg }

// cutLimit is how many SASL exchanges in a row a broker may cut off right
// after the credentials before the next login fails fast. One cut can be a
// broker going down at that moment; several in a row, with no request
// answered in between, are a broker that rejects the credentials.
const cutLimit = 3

// saslGuard counts SASL exchanges that brokers cut off right after the
// credentials (see Kafka.Opts). It is a kgo hook, called concurrently by
// the client's connections.
type saslGuard struct {
	mu   sync.Mutex
	cuts int
	last string // the broker address of the last cut
}

var _ kgo.HookBrokerE2E = (*saslGuard)(nil)

// OnBrokerE2E counts a SaslAuthenticate whose response never came because
// the broker closed the connection, and resets the count when any other
// request is answered: the credentials worked on some connection.
func (g *saslGuard) OnBrokerE2E(meta kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	switch kmsg.Key(key) {
	case kmsg.SASLAuthenticate:
		if e2e.WriteErr == nil && isCut(e2e.ReadErr) {
			g.mu.Lock()
			g.cuts++
			g.last = net.JoinHostPort(meta.Host, fmt.Sprint(meta.Port))
			g.mu.Unlock()
		}
	case kmsg.ApiVersions, kmsg.SASLHandshake:
	default:
		if e2e.Err() == nil {
			g.mu.Lock()
			g.cuts = 0
			g.mu.Unlock()
		}
	}
}

// isCut reports whether a read error means the peer closed the connection.
func isCut(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// check returns the fail-fast error when the brokers have cut cutLimit
// logins in a row, and starts the count again.
func (g *saslGuard) check(mechanism, user string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cuts < cutLimit {
		return nil
	}
	n, addr := g.cuts, g.last
	g.cuts = 0
	who := ""
	if user != "" {
		who = fmt.Sprintf(" as user %q", user)
	}
	return &authError{fmt.Sprintf("SASL %s login%s failed: the broker at %s closed the connection right after the credentials, %d times in a row (wrong username or password, no %s credentials for this user, or a listener without SASL)",
		mechanism, who, addr, n, mechanism)}
}

// guarded is a SASL mechanism that fails fast when its guard says so.
type guarded struct {
	sasl.Mechanism
	g    *saslGuard
	user string
}

func (m guarded) Authenticate(ctx context.Context, host string) (sasl.Session, []byte, error) {
	if err := m.g.check(m.Name(), m.user); err != nil {
		return nil, nil, err
	}
	return m.Mechanism.Authenticate(ctx, host)
}
