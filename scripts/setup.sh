#!/usr/bin/env bash
# Idempotent machine set-up: Debian packages, cargo-pgrx 0.18.0, `cargo pgrx init` on the
# system Postgres 15. Safe to run on every `make` target; it only does what is missing.
set -euo pipefail

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
# prometheus (for `promtool check metrics`) and prometheus-postgres-exporter: the metrics tests run
# their own instances on free ports; the packages' own services are never started (below).
PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-cron libclang-dev clang sudo pkg-config libssl-dev chromium chromium-driver
          prometheus prometheus-postgres-exporter)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  # No service may be started by the install (prometheus on :9090, the exporter on :9187 would
  # take ports and scrape on their own): a policy-rc.d that refuses, for the install only.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null || { [ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
  # Under systemd, the units are disabled and stopped if a package started them anyway.
  if [ -d /run/systemd/system ]; then
    for u in prometheus prometheus-postgres-exporter prometheus-node-exporter; do
      $SUDO systemctl disable --now "$u" >/dev/null 2>&1 || true
    done
  fi
fi

if ! command -v cargo-pgrx >/dev/null 2>&1 || ! cargo pgrx --version 2>/dev/null | grep -q '0\.18\.0'; then
  echo "setup: installing cargo-pgrx 0.18.0"
  cargo install cargo-pgrx --version 0.18.0 --locked
fi

if ! grep -q "pg15" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
  echo "setup: cargo pgrx init --pg15 $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG"
fi

# Postgres refuses to run as root: tests and the demo run the cluster as `postgres`,
# which must be able to write the directories pgrx installs the extension into.
if [ "$(id -u)" -eq 0 ]; then
  for d in "$($PG_CONFIG --pkglibdir)" "$($PG_CONFIG --sharedir)/extension"; do
    [ -d "$d" ] && chmod o+rx "$d" || true
  done
fi
echo "setup: ok"
