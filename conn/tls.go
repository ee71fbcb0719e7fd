package conn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// tlsFiles are the TLS settings shared by Kafka and Redis; flag is the
// prefix of their flags ("kafka-tls", "redis-tls"), which errors name.
type tlsFiles struct {
	flag                                  string
	caFile, certFile, keyFile, serverName string
}

// validate checks what can be checked without reading the files.
func (f tlsFiles) validate() error {
	switch {
	case f.certFile != "" && f.keyFile == "":
		return fmt.Errorf("--%s-cert is set but --%s-key is not: a client certificate needs its private key", f.flag, f.flag)
	case f.keyFile != "" && f.certFile == "":
		return fmt.Errorf("--%s-key is set but --%s-cert is not: a private key needs its client certificate", f.flag, f.flag)
	}
	return nil
}

// set reports whether any file or the server name is set, which turns TLS
// on.
func (f tlsFiles) set() bool {
	return f.caFile != "" || f.certFile != "" || f.keyFile != "" || f.serverName != ""
}

// config reads the files and returns the client's TLS configuration: TLS
// 1.2 or later, the CA file's certificates as the only roots (the system's
// roots without one), the client certificate when given.
func (f tlsFiles) config() (*tls.Config, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.serverName}
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("--%s-ca: read the CA file: %w", f.flag, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--%s-ca %s: no PEM certificate in the file (want one or more -----BEGIN CERTIFICATE----- blocks)", f.flag, f.caFile)
		}
		cfg.RootCAs = pool
	}
	if f.certFile != "" {
		for _, p := range []struct{ flag, file string }{{f.flag + "-cert", f.certFile}, {f.flag + "-key", f.keyFile}} {
			if _, err := os.Stat(p.file); err != nil {
				return nil, fmt.Errorf("--%s: %w", p.flag, err)
			}
		}
		cert, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--%s-cert %s, --%s-key %s: %w", f.flag, f.certFile, f.flag, f.keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// readPassword reads a password file: its content without the trailing
// line break that editors and `echo` add. An empty password is an error.
func readPassword(flagName, file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flagName, err)
	}
	pass := strings.TrimRight(string(b), "\r\n")
	if pass == "" {
		return "", fmt.Errorf("--%s %s: the file is empty", flagName, file)
	}
	return pass, nil
}

// errBothPasswords is returned when a password and a password file are
// both given.
func errBothPasswords(prefix string) error {
	return errors.New("both --" + prefix + "-password (" + EnvName(prefix+"-password") + ") and --" + prefix +
		"-password-file (" + EnvName(prefix+"-password-file") + ") are set: use one")
}
