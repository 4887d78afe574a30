#!/usr/bin/env bash
# Idempotent machine set-up for one Postgres major (default 15): `scripts/setup.sh [15|17]`.
# Safe to run on every `make` target; it only does what is missing.
#
#  15  the host's own Debian 12 packages, cargo-pgrx 0.18.0, `cargo pgrx init --pg15` (~/.pgrx).
#  17  cargo-pgrx 0.18.0 on the host, a Debian 13 root with Postgres 17 (scripts/pg-root.sh), and
#      `cargo pgrx init --pg17` inside it (its own PGRX_HOME, /root/.pgrx of the root).
set -euo pipefail
cd "$(dirname "$0")/.."
MAJOR="${1:-15}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo

apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    # No service may be started by the install (prometheus on :9090, the exporter on :9187 would
    # take ports and scrape on their own): a policy-rc.d that refuses, for the install only.
    local made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
      $SUDO chmod +x /usr/sbin/policy-rc.d
      made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null || { [ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
    if [ -n "$made_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
    # Under systemd, the units are disabled and stopped if a package started them anyway.
    if [ -d /run/systemd/system ]; then
      for u in prometheus prometheus-postgres-exporter prometheus-node-exporter; do
        $SUDO systemctl disable --now "$u" >/dev/null 2>&1 || true
      done
    fi
  fi
}

install_cargo_pgrx() {
  if ! command -v cargo-pgrx >/dev/null 2>&1 || ! cargo pgrx --version 2>/dev/null | grep -q '0\.18\.0'; then
    echo "setup: installing cargo-pgrx 0.18.0"
    cargo install cargo-pgrx --version 0.18.0 --locked
  fi
}

case "$MAJOR" in
15)
  PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
  # prometheus (for `promtool check metrics`) and prometheus-postgres-exporter: the metrics tests
  # run their own instances on free ports.
  apt_install postgresql-15 postgresql-server-dev-15 postgresql-15-cron libclang-dev clang sudo pkg-config libssl-dev chromium chromium-driver \
    prometheus prometheus-postgres-exporter
  install_cargo_pgrx
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
  ;;
17|18)
  # cargo-pgrx needs OpenSSL's headers to build on the host; the root is made with debootstrap.
  apt_install debootstrap pkg-config libssl-dev gcc
  install_cargo_pgrx
  bash scripts/pg-root.sh "$MAJOR"
  if [ "$MAJOR" = 17 ]; then
    # Inside the root: PGRX_HOME is the root's /root/.pgrx, so this never rewrites ~/.pgrx.
    bash scripts/in-pg-root.sh 17 bash -c '
      PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config
      if ! grep -q "pg17" "$PGRX_HOME/config.toml" 2>/dev/null; then
        echo "setup: cargo pgrx init --pg17 $PG_CONFIG (in the Debian 13 root)"
        cargo pgrx init --pg17 "$PG_CONFIG" >/dev/null
      fi
      for d in "$($PG_CONFIG --pkglibdir)" "$($PG_CONFIG --sharedir)/extension"; do
        [ -d "$d" ] && chmod o+rx "$d" || true
      done'
  fi
  ;;
*)
  echo "setup: Postgres $MAJOR: there is no set-up for it here (15 on the host, 17 in a Debian 13 root; 16 and 18: see docs/postgres-versions.md)" >&2
  exit 2
  ;;
esac
echo "setup: ok"
