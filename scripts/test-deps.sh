#!/usr/bin/env bash
# Installs what the tests need on a Debian machine: a real redis-server,
# PostgreSQL's server programs (tests start their own servers on free ports,
# in temporary directories; no service is left running) and chromium, the
# headless browser the web console's tests drive (console/browser_test.go).
set -euo pipefail
need=()
if ! command -v redis-server >/dev/null 2>&1; then
  need+=(redis-server)
fi
# internal/pgtest runs initdb and postgres from /usr/lib/postgresql/*/bin.
if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
  need+=(postgresql)
fi
if ! command -v chromium >/dev/null 2>&1; then
  need+=(chromium)
fi
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
echo "installing ${need[*]} (apt-get)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
# The packages start system services; the tests do not use them.
for svc in redis-server postgresql; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
