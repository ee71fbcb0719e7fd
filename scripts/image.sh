#!/usr/bin/env bash
# Builds sagad's OCI image (make image) without a Docker daemon and without
# pulling a base image. The image holds one layer:
#
#   /sagad                                static binary (CGO_ENABLED=0, -trimpath,
#                                         -tags ksaga_production: no embedded demo,
#                                         no kfake, miniredis or gopher-lua, no
#                                         --chaos-faults)
#   /etc/ssl/certs/ca-certificates.crt    this machine's ca-certificates bundle
#   /etc/passwd, /etc/group               root and nonroot (65532)
#   /etc/nsswitch.conf                    hosts: files dns
#   /tmp                                  1777 (the manifests mount an emptyDir there)
#
# and a config with entrypoint /sagad, user 65532:65532 and
# KSAGA_REQUIRE_CONFIG=true (a missing Kafka or Redis setting exits 2 instead
# of starting the embedded demo), KSAGA_LOG_FORMAT=json.
#
# It is assembled with crane (scripts/tools.sh) in crane's in-memory registry
# on 127.0.0.1, then written to $IMAGE_DIR (default build/image):
#
#   oci/                     OCI image layout:   crane push build/image/oci ghcr.io/ksaga/sagad:<version>
#   sagad-<version>.tar      docker-style tarball tagged $IMAGE:<version>: docker load -i / podman load -i
#   config.json, digest      the image config (as `crane config` prints it) and the OCI manifest's digest
#
# Environment: VERSION (the tag; make passes the Makefile's), NAME and PKG
# (the daemon: default sagad and ./cmd/sagad; make image-tripd builds
# examples/trip's tripd), IMAGE (default ghcr.io/ksaga/$NAME), GOARCH (default the Go toolchain's), IMAGE_DIR,
# TAGS (Go build tags, default ksaga_production: the production build, which
# leaves the test code out),
# SOURCE_DATE_EPOCH (file times in the layer; default the last commit's time,
# so an unchanged tree gives the same layer).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${VERSION:-dev}"
NAME="${NAME:-sagad}"
PKG="${PKG:-./cmd/sagad}"
IMAGE="${IMAGE:-ghcr.io/ksaga/$NAME}"
OUT="${IMAGE_DIR:-build/image}"
GOARCH="${GOARCH:-$(go env GOARCH)}"
TAGS="${TAGS-ksaga_production}"
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
revision="$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)"
ca=/etc/ssl/certs/ca-certificates.crt

if [ ! -s "$ca" ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing ca-certificates (apt-get) for $ca" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ca-certificates >/dev/null
fi

crane="$(scripts/tools.sh crane)"
work="$(mktemp -d)"
reg_pid=
cleanup() {
  if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null || true; wait "$reg_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# crane logs every blob it pushes: keep that for failures.
run_crane() {
  "$crane" "$@" 2>>"$work/crane.log" || { cat "$work/crane.log" >&2; echo "crane $1 failed" >&2; return 1; }
}

# The root filesystem of the layer.
root="$work/root"
mkdir -p "$root/etc/ssl/certs" "$root/tmp"
ldflags="-s -w"
# Stamp the version if the daemon has a variable for it (none has yet).
if grep -qE '^[[:space:]]*(var[[:space:]]+)?version[[:space:]]+(string|=)' "$PKG"/*.go; then
  ldflags="$ldflags -X main.version=$VERSION"
fi
echo "building $NAME $VERSION for linux/$GOARCH (tags: ${TAGS:-none})" >&2
CGO_ENABLED=0 GOOS=linux GOARCH="$GOARCH" go build -trimpath -tags="$TAGS" -ldflags="$ldflags" -o "$root/$NAME" "$PKG"
echo "$NAME: $(wc -c <"$root/$NAME") bytes" >&2
cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -exec chmod 0644 {} +
chmod 0755 "$root/$NAME"
chmod 1777 "$root/tmp"
tar --create --file="$work/layer.tar" --directory="$root" --format=gnu --sort=name \
  --owner=0 --group=0 --numeric-owner --mtime="@$epoch" etc "$NAME" tmp

# crane's registry, in memory, on a free port of the loopback.
"$crane" registry serve --address 127.0.0.1:0 2>"$work/registry.log" &
reg_pid=$!
port=
for _ in $(seq 100); do
  port="$(sed -n 's/.*serving on port \([0-9][0-9]*\).*/\1/p' "$work/registry.log")"
  [ -n "$port" ] && break
  kill -0 "$reg_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "crane registry did not start:" >&2
  cat "$work/registry.log" >&2
  exit 1
fi
ref="127.0.0.1:$port/ksaga/$NAME:$VERSION"

run_crane append --oci-empty-base --new_layer "$work/layer.tar" --new_tag "$ref" >/dev/null
run_crane mutate "$ref" --tag "$ref" \
  --entrypoint "/$NAME" \
  --user 65532:65532 \
  --workdir / \
  --env KSAGA_REQUIRE_CONFIG=true \
  --env KSAGA_LOG_FORMAT=json \
  --exposed-ports 9090/tcp \
  --set-platform "linux/$GOARCH" \
  --label "org.opencontainers.image.title=$NAME" \
  --label "org.opencontainers.image.version=$VERSION" \
  --label "org.opencontainers.image.revision=$revision" \
  --label org.opencontainers.image.source=https://github.com/ksaga/ksaga >/dev/null

rm -rf "$OUT"
mkdir -p "$OUT"
run_crane pull --format=oci "$ref" "$OUT/oci"
# The same config and layer, under the image's public name, as a
# docker-style tarball (Docker media types, so another manifest digest).
run_crane mutate "$ref" --tag "$IMAGE:$VERSION" --output "$OUT/$NAME-$VERSION.tar" >/dev/null
digest="$(run_crane digest "$ref")"
run_crane config "$ref" >"$OUT/config.json"
echo "$digest" >"$OUT/digest"

echo "$IMAGE:$VERSION@$digest ($(du -sh "$OUT/oci" | cut -f1)) in $OUT" >&2
echo "config:" >&2
cat "$OUT/config.json"
echo
