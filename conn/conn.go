// Package conn configures secure connections to Kafka and Redis: TLS with a
// CA of your own and an optional client certificate, Kafka SASL (PLAIN,
// SCRAM-SHA-256, SCRAM-SHA-512, AWS_MSK_IAM) and Redis ACL users, from
// flags with KSAGA_* environment twins.
//
//	var k conn.Kafka
//	var r conn.Redis
//	fs := flag.NewFlagSet("sagad", flag.ContinueOnError)
//	k.RegisterFlags(fs)
//	r.RegisterFlags(fs)
//	if err := fs.Parse(os.Args[1:]); err != nil { ... }
//	if err := conn.FromEnv(fs, os.Getenv); err != nil { ... } // exit 2
//	for _, w := range append(k.Warnings(), r.Warnings()...) {
//		slog.Warn(w)
//	}
//	opts, err := k.Opts() // exit 2: err names the flag and the file
//	cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(brokers...))...)
//	ro := &redis.UniversalOptions{Addrs: addrs}
//	if err := r.Apply(ro); err != nil { ... }
//	rdb := redis.NewUniversalClient(ro)
//	...
//	if conn.IsAuthError(err) { // wrong password, unknown CA, missing ACL
//		fmt.Fprintln(os.Stderr, err) // one line, then exit 1: retrying will not help
//	}
//
// The flags and their environment twins (a flag given on the command line
// wins over its twin):
//
//	--kafka-tls                 KSAGA_KAFKA_TLS
//	--kafka-tls-ca              KSAGA_KAFKA_TLS_CA
//	--kafka-tls-cert            KSAGA_KAFKA_TLS_CERT
//	--kafka-tls-key             KSAGA_KAFKA_TLS_KEY
//	--kafka-tls-server-name     KSAGA_KAFKA_TLS_SERVER_NAME
//	--kafka-sasl-mechanism      KSAGA_KAFKA_SASL_MECHANISM
//	--kafka-sasl-username       KSAGA_KAFKA_SASL_USERNAME
//	--kafka-sasl-password       KSAGA_KAFKA_SASL_PASSWORD
//	--kafka-sasl-password-file  KSAGA_KAFKA_SASL_PASSWORD_FILE
//	--redis-username            KSAGA_REDIS_USERNAME
//	--redis-password            KSAGA_REDIS_PASSWORD
//	--redis-password-file       KSAGA_REDIS_PASSWORD_FILE
//	--redis-tls                 KSAGA_REDIS_TLS
//	--redis-tls-ca              KSAGA_REDIS_TLS_CA
//	--redis-tls-cert            KSAGA_REDIS_TLS_CERT
//	--redis-tls-key             KSAGA_REDIS_TLS_KEY
//	--redis-tls-server-name     KSAGA_REDIS_TLS_SERVER_NAME
//
// Passwords are best given by a file (a mounted Kubernetes Secret: the file
// is read again for every new connection, so a rotated Secret is picked up
// without a restart) or the environment, not on the command line, where
// other users of the machine can read them.
//
// The package exports no metrics.
package conn

import (
	"strings"
)

// SplitList splits a comma-separated flag value (addresses, names),
// trimming spaces and dropping blanks: " a, ,b" is [a b]; "" is nil.
func SplitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// EnvName returns the environment twin of a flag: KSAGA_KAFKA_TLS_CA for
// kafka-tls-ca (upper case, dashes to underscores).
func EnvName(flagName string) string {
	return "KSAGA_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}
