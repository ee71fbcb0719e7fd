package conn

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/aws"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// SASL mechanisms of Kafka.SASLMechanism.
const (
	// PLAIN sends the username and password as they are: use it over
	// TLS only.
	PLAIN = "PLAIN"
	// SCRAMSHA256 and SCRAMSHA512 prove the password without sending it
	// (Confluent Platform, Strimzi, Redpanda, MSK's SCRAM listener).
	SCRAMSHA256 = "SCRAM-SHA-256"
	SCRAMSHA512 = "SCRAM-SHA-512"
	// AWSMSKIAM signs the login with AWS credentials (Amazon MSK's IAM
	// listener, port 9098, TLS). The credentials come from the environment
	// variables AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, for
	// temporary credentials, AWS_SESSION_TOKEN, read for every new
	// connection; the region from the broker's host name, else AWS_REGION
	// or AWS_DEFAULT_REGION.
	AWSMSKIAM = "AWS_MSK_IAM"
)

// Kafka is how a Kafka client connects: TLS and SASL. The zero value is a
// plaintext connection without authentication, kgo's default. It is plain
// data, safe to copy.
type Kafka struct {
	// TLS turns TLS on. Setting CAFile, CertFile, KeyFile or ServerName
	// turns it on too.
	TLS bool
	// CAFile is a PEM file of the CA certificates that sign the brokers'
	// certificates. Empty trusts the system's roots (public CAs: MSK,
	// Confluent Cloud).
	CAFile string
	// CertFile and KeyFile are a client certificate and its private key
	// (PEM), for brokers that authenticate clients by certificate
	// (mutual TLS, Strimzi's tls listener). Both or neither; empty sends
	// no certificate.
	CertFile, KeyFile string
	// ServerName is the name the brokers' certificates must be valid for.
	// Empty means the host of each broker's address, which is right
	// unless the brokers are reached through an address their
	// certificates do not name.
	ServerName string

	// SASLMechanism is PLAIN, SCRAMSHA256, SCRAMSHA512 or AWSMSKIAM (in
	// any letter case), or empty for no SASL.
	SASLMechanism string
	// Username is the SASL user (PLAIN and SCRAM).
	Username string
	// Password is the SASL password (PLAIN and SCRAM). PasswordFile names
	// a file that holds it instead (a trailing line break is dropped),
	// read again for every new connection. Set one of them.
	Password, PasswordFile string
}

// Opts returns the kgo options that make a client connect as k says: none
// for the zero value; kgo.DialTLSConfig with TLS; kgo.SASL (and a hook,
// see below) with a mechanism. It reads the files, so its errors name the
// flag and the file that could not be used (exit 2 material): a
// certificate without its key, an unknown mechanism, a missing username or
// password, an unreadable or empty file, a key that does not match its
// certificate, AWS_MSK_IAM without AWS credentials in the environment.
//
// With SASL, the options also make a rejected login fail fast. A broker
// that rejects the credentials answers SASL_AUTHENTICATION_FAILED, which
// kgo does not retry; but some brokers (kfake, brokers before Kafka 1.0)
// close the connection instead, which kgo takes for a network blip and
// retries for as long as the request may take. When the brokers have
// closed the connection right after the credentials three times in a row,
// with no request answered in between, the next login fails with an error
// that IsAuthError recognises and kgo does not retry. The count then
// starts again, so a client that ignores the error keeps trying at kgo's
// pace. Clients built from one Opts result share that count.
func (k Kafka) Opts() ([]kgo.Opt, error) {
	var opts []kgo.Opt
	mech, err := k.mechanism()
	if err != nil {
		return nil, err
	}
	files := k.tlsFiles()
	if k.TLS || files.set() {
		cfg, err := files.config()
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	if mech != nil {
		g := &saslGuard{}
		opts = append(opts, kgo.SASL(guarded{Mechanism: mech, g: g, user: k.Username}), kgo.WithHooks(g))
	}
	return opts, nil
}

// Warnings returns what is allowed but probably wrong in k, one sentence
// each, for the caller to log at start: SASL without TLS.
func (k Kafka) Warnings() []string {
	if k.TLS || k.tlsFiles().set() {
		return nil
	}
	switch strings.ToUpper(k.SASLMechanism) {
	case PLAIN:
		return []string{"--kafka-sasl-mechanism PLAIN without --kafka-tls: the password crosses the network in clear text"}
	case SCRAMSHA256, SCRAMSHA512:
		return []string{"--kafka-sasl-mechanism " + strings.ToUpper(k.SASLMechanism) + " without --kafka-tls: the password is not sent, but everything else crosses the network in clear text"}
	case AWSMSKIAM:
		return []string{"--kafka-sasl-mechanism AWS_MSK_IAM without --kafka-tls: Amazon MSK accepts IAM logins on its TLS listener only (port 9098)"}
	}
	return nil
}

func (k Kafka) tlsFiles() tlsFiles {
	return tlsFiles{flag: "kafka-tls", caFile: k.CAFile, certFile: k.CertFile, keyFile: k.KeyFile, serverName: k.ServerName}
}

// mechanism validates the SASL settings and returns the mechanism, nil
// for none.
func (k Kafka) mechanism() (sasl.Mechanism, error) {
	name := strings.ToUpper(k.SASLMechanism)
	if name == "" {
		for _, f := range []struct{ flag, v string }{{"username", k.Username}, {"password", k.Password}, {"password-file", k.PasswordFile}} {
			if f.v != "" {
				return nil, fmt.Errorf("--kafka-sasl-%s is set but --kafka-sasl-mechanism is not: want PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM", f.flag)
			}
		}
		return nil, nil
	}
	switch name {
	case PLAIN, SCRAMSHA256, SCRAMSHA512:
	case AWSMSKIAM:
		if k.Username != "" || k.Password != "" || k.PasswordFile != "" {
			return nil, fmt.Errorf("--kafka-sasl-mechanism AWS_MSK_IAM takes its credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN: unset --kafka-sasl-username, --kafka-sasl-password and --kafka-sasl-password-file")
		}
		if _, err := awsAuth(context.Background()); err != nil {
			return nil, err
		}
		return aws.ManagedStreamingIAM(awsAuth), nil
	default:
		return nil, fmt.Errorf("--kafka-sasl-mechanism %q: unknown mechanism: want PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM", k.SASLMechanism)
	}
	if k.Username == "" {
		return nil, fmt.Errorf("--kafka-sasl-mechanism %s needs --kafka-sasl-username", name)
	}
	var password func() (string, error)
	switch {
	case k.Password != "" && k.PasswordFile != "":
		return nil, errBothPasswords("kafka-sasl")
	case k.Password != "":
		password = func() (string, error) { return k.Password, nil }
	case k.PasswordFile != "":
		if _, err := readPassword("kafka-sasl-password-file", k.PasswordFile); err != nil {
			return nil, err
		}
		password = func() (string, error) { return readPassword("kafka-sasl-password-file", k.PasswordFile) }
	default:
		return nil, fmt.Errorf("--kafka-sasl-mechanism %s needs --kafka-sasl-password or --kafka-sasl-password-file", name)
	}
	if name == PLAIN {
		return plain.Plain(func(context.Context) (plain.Auth, error) {
			p, err := password()
			return plain.Auth{User: k.Username, Pass: p}, err
		}), nil
	}
	auth := func(context.Context) (scram.Auth, error) {
		p, err := password()
		return scram.Auth{User: k.Username, Pass: p}, err
	}
	if name == SCRAMSHA256 {
		return scram.Sha256(auth), nil
	}
	return scram.Sha512(auth), nil
}

// awsAuth returns the AWS credentials of the environment.
func awsAuth(context.Context) (aws.Auth, error) {
	a := aws.Auth{
		AccessKey:    os.Getenv("AWS_ACCESS_KEY_ID"),
		SecretKey:    os.Getenv("AWS_SECRET_ACCESS_KEY"),
		SessionToken: os.Getenv("AWS_SESSION_TOKEN"),
	}
	if a.AccessKey == "" || a.SecretKey == "" {
		return a, fmt.Errorf("--kafka-sasl-mechanism AWS_MSK_IAM needs AWS credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones): they are not set")
	}
	return a, nil
}
