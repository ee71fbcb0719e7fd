package metrics

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterBuildInfo registers ksaga_build_info{version,goversion,revision},
// always 1, with reg. version is the program's version; empty means the
// main module's version from the binary's build information ("(devel)"
// for a build from a work tree). The revision is the VCS revision Go
// stamped into the binary, "unknown" without one (go build
// -buildvcs=false). It fails when reg is nil or already holds it.
func RegisterBuildInfo(reg prometheus.Registerer, version string) error {
	if reg == nil {
		return errors.New("metrics: nil Registerer")
	}
	revision := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if version == "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && s.Value != "" {
				revision = s.Value
			}
		}
	}
	if version == "" {
		version = "unknown"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "ksaga", Name: "build_info",
		Help:        "The build of this ksaga binary: version, Go version and VCS revision as labels; always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version(), "revision": revision},
	})
	g.Set(1)
	if err := reg.Register(g); err != nil {
		return fmt.Errorf("metrics: register build info: %w", err)
	}
	return nil
}
