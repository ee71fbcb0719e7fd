#!/usr/bin/env bash
# Prints the path of a pinned build tool, building it with `go install` the
# first time (Go module proxy only; no prebuilt download):
#
#   scripts/tools.sh crane       go-containerregistry's crane (make image)
#   scripts/tools.sh kustomize   kustomize (make deploy-check)
#   scripts/tools.sh promtool    Prometheus's promtool (go test ./deploy/k8s/monitoring)
#
# Binaries are kept under the Go build cache, $(go env GOCACHE)/ksaga-tools/
# <tool>-<version>/, so CI builds each version once per machine; `go clean
# -cache` removes them. Bump a version here to change it everywhere.
set -euo pipefail

CRANE_VERSION=v0.22.1     # github.com/google/go-containerregistry
KUSTOMIZE_VERSION=v5.8.0  # sigs.k8s.io/kustomize/kustomize/v5
PROMTOOL_VERSION=v0.316.0 # github.com/prometheus/prometheus; keep in step with deploy/k8s/monitoring/monitoring_test.go

case "${1:-}" in
  crane) pkg=github.com/google/go-containerregistry/cmd/crane; version=$CRANE_VERSION ;;
  kustomize) pkg=sigs.k8s.io/kustomize/kustomize/v5; version=$KUSTOMIZE_VERSION ;;
  promtool) pkg=github.com/prometheus/prometheus/cmd/promtool; version=$PROMTOOL_VERSION ;;
  *) echo "usage: $0 crane|kustomize|promtool" >&2; exit 2 ;;
esac

dir="$(go env GOCACHE)/ksaga-tools/$1-$version"
if [ ! -x "$dir/$1" ]; then
  echo "building $1 $version into $dir" >&2
  mkdir -p "$dir"
  # Outside the ksaga module, so its go.mod neither constrains nor records
  # the tool's dependencies.
  (cd / && GOBIN="$dir" GOFLAGS= CGO_ENABLED=0 go install "$pkg@$version") >&2
fi
echo "$dir/$1"
