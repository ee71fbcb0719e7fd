package conn

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Redis is how a Redis client connects: an ACL user or password, and TLS.
// The zero value is a plaintext connection as the default user without a
// password, go-redis's default. It is plain data, safe to copy.
type Redis struct {
	// Username is the ACL user (Redis 6 and later). Empty is the default
	// user, which a --requirepass server knows by its password alone.
	Username string
	// Password is the user's password. PasswordFile names a file that
	// holds it instead (a trailing line break is dropped), read again for
	// every new connection. Set at most one of them; a Username needs
	// one.
	Password, PasswordFile string

	// TLS turns TLS on. Setting CAFile, CertFile, KeyFile or ServerName
	// turns it on too.
	TLS bool
	// CAFile is a PEM file of the CA certificates that sign the server's
	// certificate. Empty trusts the system's roots.
	CAFile string
	// CertFile and KeyFile are a client certificate and its private key
	// (PEM), for a server with tls-auth-clients yes. Both or neither.
	CertFile, KeyFile string
	// ServerName is the name the server's certificate must be valid for.
	// Empty means the host of the address dialled.
	ServerName string
}

// Apply sets o's credentials and TLS configuration from r and leaves the
// rest of o as it is (nothing at all for the zero Redis). With
// PasswordFile it sets o.CredentialsProviderContext, which reads the file
// for every new connection (go-redis then disables its client-side cache).
// It reads the files, so its errors name the flag and the file that could
// not be used: a certificate without its key, a username without a
// password, an unreadable or empty file, a key that does not match its
// certificate.
func (r Redis) Apply(o *redis.UniversalOptions) error {
	files := r.tlsFiles()
	if err := files.validate(); err != nil {
		return err
	}
	switch {
	case r.Password != "" && r.PasswordFile != "":
		return errBothPasswords("redis")
	case r.Username != "" && r.Password == "" && r.PasswordFile == "":
		return fmt.Errorf("--redis-username is set but no password: set --redis-password or --redis-password-file")
	}
	if r.PasswordFile != "" {
		if _, err := readPassword("redis-password-file", r.PasswordFile); err != nil {
			return err
		}
	}
	if r.TLS || files.set() {
		cfg, err := files.config()
		if err != nil {
			return err
		}
		o.TLSConfig = cfg
	}
	switch {
	case r.PasswordFile != "":
		user, file := r.Username, r.PasswordFile
		o.CredentialsProviderContext = func(context.Context) (string, string, error) {
			p, err := readPassword("redis-password-file", file)
			return user, p, err
		}
	case r.Password != "":
		o.Username, o.Password = r.Username, r.Password
	}
	return nil
}

// Warnings returns what is allowed but probably wrong in r, one sentence
// each, for the caller to log at start: a password without TLS.
func (r Redis) Warnings() []string {
	if (r.Password != "" || r.PasswordFile != "") && !r.TLS && !r.tlsFiles().set() {
		return []string{"--redis-password without --redis-tls: the password crosses the network in clear text"}
	}
	return nil
}

func (r Redis) tlsFiles() tlsFiles {
	return tlsFiles{flag: "redis-tls", caFile: r.CAFile, certFile: r.CertFile, keyFile: r.KeyFile, serverName: r.ServerName}
}
