package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ksaga/ksaga/conn"
)

// helpWidth is the width help texts wrap flag descriptions at.
const helpWidth = 100

// exitStatusHelp ends every help text.
const exitStatusHelp = `
Exit status: 0 on success; 1 when the command failed (Kafka or Redis unreachable or refusing the
login, no such topic, saga or record, a confirmation answered no); 2 for invalid flags or
arguments, including a change without --yes when stdin is not a terminal.
`

// writeHelp writes the help of cmd, generated from its definition: what
// it does, its usage line, its subcommands, its flags and the global
// flags, each with its environment variable, and the exit statuses.
func writeHelp(w io.Writer, cmd *cobra.Command) {
	text := cmd.Long
	if text == "" {
		text = cmd.Short
	}
	fmt.Fprintf(w, "%s\n\n", strings.TrimSpace(text))
	fmt.Fprintf(w, "Usage: %s\n", cmd.UseLine())
	if cmd.HasAvailableSubCommands() {
		fmt.Fprintln(w, "\nCommands:")
		var rows [][2]string
		for _, sub := range cmd.Commands() {
			if !sub.IsAvailableCommand() {
				continue
			}
			if !cmd.HasParent() && isGroup(sub.Name()) {
				// The general help lists every command in full.
				for _, leaf := range sub.Commands() {
					rows = append(rows, [2]string{sub.Name() + " " + leaf.Name(), leaf.Short})
				}
				continue
			}
			rows = append(rows, [2]string{sub.Name(), sub.Short})
		}
		if !cmd.HasParent() {
			rows = append(rows, [2]string{"help COMMAND", "help on one command, as sagactl COMMAND --help"})
		}
		width := 0
		for _, r := range rows {
			width = max(width, len(r[0]))
		}
		for _, r := range rows {
			fmt.Fprintf(w, "  %-*s  %s\n", width, r[0], r[1])
		}
	}
	// Flags in the order they are defined: --saga first, -o and --help
	// last.
	local := pflag.NewFlagSet("local", pflag.ContinueOnError)
	local.SortFlags = false
	global := pflag.NewFlagSet("global", pflag.ContinueOnError)
	global.SortFlags = false
	persistent := cmd.Root().PersistentFlags()
	if cmd.HasParent() {
		cmd.Flags().VisitAll(func(f *pflag.Flag) {
			if persistent.Lookup(f.Name) == nil {
				local.AddFlag(f)
			}
		})
	}
	isConn := make(map[string]bool)
	for _, name := range conn.FlagNames() {
		isConn[name] = true
	}
	persistent.VisitAll(func(f *pflag.Flag) {
		if !cmd.HasParent() || !isConn[f.Name] {
			global.AddFlag(f)
		}
	})
	if local.HasAvailableFlags() {
		fmt.Fprintf(w, "\nFlags:\n%s", local.FlagUsagesWrapped(helpWidth))
	}
	fmt.Fprintf(w, "\nGlobal flags:\n%s", global.FlagUsagesWrapped(helpWidth))
	if cmd.HasParent() {
		fmt.Fprint(w, "\nThe connection flags (--kafka-tls*, --kafka-sasl-*, --redis-username, --redis-password*,\n--redis-tls*) are global flags too: sagactl --help lists them.\n")
	}
	fmt.Fprint(w, exitStatusHelp)
}
