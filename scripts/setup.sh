#!/usr/bin/env bash
# Idempotent machine set-up: Debian packages, cargo-pgrx 0.18.0, `cargo pgrx init` on the
# system Postgres 15. Safe to run on every `make` target; it only does what is missing.
set -euo pipefail

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-cron libclang-dev clang sudo pkg-config libssl-dev chromium chromium-driver)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
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
