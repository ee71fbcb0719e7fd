#!/usr/bin/env bash
# Pins the images make image and make image-tripd built in the kustomize
# manifests (make pin-image): in every kustomization.yaml of deploy/k8s,
# deploy/overlays/* and examples/*/deploy, each `images:` entry for
# ghcr.io/ksaga/sagad (or whose newName is it) gets
#
#     newTag: "<VERSION>"
#     digest: sha256:<build/image/digest>
#
# and each one for ghcr.io/ksaga/tripd the digest of build/image-tripd/digest;
# comments and the other lines stay as they are. An image that was not built
# (no digest file) is left alone. Run it after pushing the image (crane push
# build/image/oci ghcr.io/ksaga/sagad:<VERSION>): the digest is that of the
# OCI manifest, which crane push keeps.
#
# Environment: VERSION (make passes the Makefile's), KSAGA_ROOT (the
# repository; default this script's).
set -euo pipefail
cd "${KSAGA_ROOT:-$(dirname "$0")/..}"

VERSION="${VERSION:?set VERSION, the image tag (make pin-image passes the Makefile one)}"
pins=""
for p in "ghcr.io/ksaga/sagad=build/image/digest" "ghcr.io/ksaga/tripd=build/image-tripd/digest"; do
  image="${p%%=*}" file="${p#*=}"
  [ -s "$file" ] || continue
  digest="$(tr -d '[:space:]' <"$file")"
  if ! [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
    echo "$file: $digest is not a sha256 digest" >&2
    exit 1
  fi
  pins="$pins $image=$digest"
done
if [ -z "$pins" ]; then
  echo "no build/image/digest nor build/image-tripd/digest: run make image (or make image-tripd) first" >&2
  exit 1
fi

shopt -s nullglob
for f in deploy/k8s/kustomization.yaml deploy/overlays/*/kustomization.yaml examples/*/deploy/kustomization.yaml; do
  awk -v pins="$pins" -v version="$VERSION" '
    # value returns the value of a "key: value  # comment" line, unquoted.
    function value(line) {
      sub(/^[^:]*:[ \t]*/, "", line)
      sub(/[ \t]+#.*$/, "", line)
      gsub(/["\047 \t]/, "", line)
      return line
    }
    # flush prints the buffered images entry, pinned when its image is one
    # of pins.
    function flush(   i, target, d, tagAt, digestAt) {
      if (n == 0) return
      target = ""
      for (i = 1; i <= n; i++) if (buf[i] ~ /^  - name:/) target = value(buf[i])
      for (i = 1; i <= n; i++) if (buf[i] ~ /^    newName:/) target = value(buf[i])
      d = digest[target]
      tagAt = 0; digestAt = 0
      for (i = 1; i <= n; i++) {
        if (d != "" && buf[i] ~ /^    newTag:/) { buf[i] = "    newTag: \"" version "\""; tagAt = i }
        if (d != "" && buf[i] ~ /^    digest:/) { buf[i] = "    digest: " d; digestAt = i }
      }
      for (i = 1; i <= n; i++) {
        print buf[i]
        if (d != "" && i == n && tagAt == 0) print "    newTag: \"" version "\""
        if (d != "" && i == n && digestAt == 0) print "    digest: " d
      }
      if (d != "") pinned[target]++
      n = 0
    }
    BEGIN {
      split(pins, list, " ")
      for (i in list) if (list[i] != "") { split(list[i], kv, "="); digest[kv[1]] = kv[2] }
    }
    /^[^ \t#-]/ { flush(); inImages = ($0 ~ /^images:/) ; print; next }
    inImages && /^  - / { flush(); buf[++n] = $0; next }
    inImages && n > 0 && /^    / { buf[++n] = $0; next }
    { flush(); print }
    END {
      flush()
      for (t in pinned) printf "%s: pinned %s:%s@%s\n", FILENAME, t, version, digest[t] > "/dev/stderr"
    }
  ' "$f" >"$f.pin"
  if cmp -s "$f" "$f.pin"; then rm "$f.pin"; else mv "$f.pin" "$f"; fi
done
