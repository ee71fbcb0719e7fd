package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/ops"
	"github.com/ksaga/ksaga/orchestrator"
)

// completionTimeout bounds the Kafka request that completes --saga: a
// shell waits for it on every TAB, and must not hang without a broker.
const completionTimeout = 2 * time.Second

// registerEnum completes flag name of cmd with those of values that start
// with what was typed.
func registerEnum(cmd *cobra.Command, name string, values ...string) {
	_ = cmd.RegisterFlagCompletionFunc(name, func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return withPrefix(values, toComplete), cobra.ShellCompDirectiveNoFileComp
	})
}

// withPrefix returns the words that start with prefix.
func withPrefix(words []string, prefix string) []string {
	var out []string
	for _, w := range words {
		if strings.HasPrefix(w, prefix) {
			out = append(out, w)
		}
	}
	return out
}

// registerGlobalCompletions completes the global flags of root that take
// one of a few values.
func registerGlobalCompletions(root *cobra.Command, _ *cli) {
	registerEnum(root, "kafka-sasl-mechanism", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM")
	for _, name := range []string{"kafka-brokers", "redis-addr", "timeout", "kafka-sasl-username", "kafka-sasl-password",
		"kafka-tls-server-name", "redis-username", "redis-password", "redis-tls-server-name"} {
		_ = root.RegisterFlagCompletionFunc(name, cobra.NoFileCompletions)
	}
}

// registerCompletions completes the flags of a leaf command: --saga with
// the saga types of the brokers, --reason with the engine's dead-letter
// reasons, and the flags that take one of a few values.
func registerCompletions(cmd *cobra.Command, c *cli) {
	_ = cmd.RegisterFlagCompletionFunc("saga", c.completeSagaTypes)
	registerEnum(cmd, "output", outTable, outJSON, outYAML)
	if cmd.Flags().Lookup("reason") != nil {
		registerEnum(cmd, "reason", orchestrator.DeadLetterReasons()...)
	}
	if cmd.Flags().Lookup("state") != nil {
		registerEnum(cmd, "state", statePending, stateRedriven, stateInvalid)
	}
	if cmd.Flags().Lookup("status") != nil {
		registerEnum(cmd, "status", message.StatusRunning, message.StatusCompensating, message.StatusParked,
			message.StatusCompleted, message.StatusCompensated, message.StatusFailed)
	}
	if cmd.Flags().Lookup("action") != nil {
		registerEnum(cmd, "action", message.AuditRedrive, message.AuditCompensate, message.AuditResume)
	}
	for _, name := range []string{"saga-id", "since", "until", "limit", "max-redrives", "rate", "note", "as", "partitions", "older-than"} {
		if cmd.Flags().Lookup(name) != nil {
			_ = cmd.RegisterFlagCompletionFunc(name, cobra.NoFileCompletions)
		}
	}
}

// completeSagaTypes completes --saga with the saga types whose inbox topic
// the brokers (--kafka-brokers or KSAGA_KAFKA_BROKERS, with the connection
// flags) have, asking for at most completionTimeout. Without brokers, or
// when they do not answer in time, it offers nothing.
func (c *cli) completeSagaTypes(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if _, err := applyEnv(cmd, c.getenv); err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	brokers := conn.SplitList(c.g.kafkaBrokers)
	sec, err := c.g.kafka.Opts()
	if len(brokers) == 0 || err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, completionTimeout)
	defer cancel()
	types, err := ops.SagaTypes(ctx, kafkaOf(brokers, sec, completionTimeout, 0))
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return withPrefix(types, toComplete), cobra.ShellCompDirectiveNoFileComp
}
