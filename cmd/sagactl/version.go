package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// versionInfo is what sagactl version prints.
type versionInfo struct {
	// Version is the module version sagactl was built from: a tag when
	// installed with go install ...@v1.2.3, "(devel)" when built in a
	// checkout.
	Version string `json:"version"`
	Module  string `json:"module"`
	// Revision is the commit of a build in a checkout, with "-dirty"
	// when it had changes.
	Revision string `json:"revision,omitempty"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

// readVersion reads sagactl's version from the build information the Go
// toolchain embeds in the binary.
func readVersion() versionInfo {
	v := versionInfo{Version: "(devel)", Module: "github.com/ksaga/ksaga", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if info.Main.Version != "" {
		v.Version = info.Main.Version
	}
	if info.Main.Path != "" {
		v.Module = info.Main.Path
	}
	if info.GoVersion != "" {
		v.Go = info.GoVersion
	}
	var rev string
	var dirty bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" && dirty {
		rev += "-dirty"
	}
	v.Revision = rev
	return v
}

// newVersion returns the version command.
func (c *cli) newVersion() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "sagactl's version, module and Go version",
		Long: `Prints the version of the module sagactl was built from (a tag when it was installed with
go install github.com/ksaga/ksaga/cmd/sagactl@VERSION, "(devel)" when built in a checkout, then
with the commit), the Go version that built it and the platform.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := readVersion()
			switch output {
			case outTable:
			case outJSON, outYAML:
				return writeData(cmd.OutOrStdout(), output, v)
			default:
				return &usageError{fmt.Errorf("version: -o %q: want table, json or yaml", output)}
			}
			line := "sagactl " + v.Version
			if v.Revision != "" {
				line += " (" + v.Revision + ")"
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s, module %s, %s, %s\n", line, v.Module, v.Go, v.Platform)
			return err
		},
		ValidArgsFunction: cobra.NoFileCompletions,
	}
	cmd.Flags().StringVarP(&output, "output", "o", outTable, "output `format`: table, json or yaml")
	registerEnum(cmd, "output", outTable, outJSON, outYAML)
	return cmd
}
