#!/usr/bin/env bash
# A Debian root (debootstrap) holding a Postgres major the host's Debian does not ship, for
# building and testing pg_dialer against it: Debian 13 "trixie" for Postgres 17 (and Debian 14
# "forky" for 18, headers only). Idempotent: it is built once, cached under .pg-root/ (ignored by
# git), and rebuilt only when the package list below changes or a previous build did not finish.
#
#   scripts/pg-root.sh 17        # prints nothing when the root is ready; builds it otherwise
#
# The host's Rust toolchain and cargo-pgrx run inside it (scripts/in-pg-root.sh bind-mounts
# them); everything Postgres (server, headers, pg_config, pg_cron) comes from the root's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

MAJOR="${1:-17}"
case "$MAJOR" in
  17) SUITE=trixie; SECURITY="trixie-security"
      PACKAGES=(postgresql-17 postgresql-server-dev-17 postgresql-17-cron) ;;
  # Debian 14 (testing) has 18: its headers, for `make check PG=18` (no tests on 18 here yet).
  18) SUITE=forky; SECURITY=""
      PACKAGES=(postgresql-server-dev-18) ;;
  *) echo "pg-root: no Debian root for Postgres $MAJOR (15 is the host's own)" >&2; exit 2 ;;
esac
# What cargo-pgrx and the tests need besides Postgres: bindgen's libclang, a C compiler and
# linker for build scripts, sudo for `cargo pgrx test --runas`, OpenSSL for cargo-pgrx's deps.
PACKAGES+=(clang libclang-dev gcc libc6-dev make pkg-config libssl-dev sudo ca-certificates procps)
MIRROR="${PG_ROOT_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${PG_ROOT_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

ROOT="$(pwd)/.pg-root/pg$MAJOR"
want="$(printf '%s\n' "$SUITE" "${PACKAGES[@]}" | sha256sum | cut -c1-16)"
stamp="$ROOT/.pg_dialer-root-$want"
[ -f "$stamp" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "pg-root: building the Debian $SUITE root needs root (debootstrap, chroot)" >&2
  exit 1
fi
for tool in debootstrap unshare; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "pg-root: installing $tool"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap util-linux >/dev/null
  fi
done

t0=$SECONDS
# A root that exists but has no stamp is a half-finished one (or an older package list): if its
# base system is complete, only the packages are (re)installed; else it is started over.
if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ ! -f "$ROOT/.pg_dialer-base" ]; then
  # Never rm -rf a root that may still have something mounted in it (the bind mounts are made in
  # a private mount namespace that ends with its command, but be careful all the same).
  if [ -d "$ROOT" ] && grep -q " $ROOT/" /proc/self/mounts; then
    echo "pg-root: $ROOT has mounts in it; unmount them first (grep $ROOT /proc/self/mounts)" >&2
    exit 1
  fi
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  echo "pg-root: debootstrap $SUITE into $ROOT"
  # An older debootstrap has no script for forky yet: sid's is the same.
  script=""; [ -e "/usr/share/debootstrap/scripts/$SUITE" ] || script=/usr/share/debootstrap/scripts/sid
  debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" $script >"$ROOT.debootstrap.log" 2>&1 || {
    tail -30 "$ROOT.debootstrap.log" >&2; exit 1; }
  # No service starts inside the root, and installing postgresql-NN creates no cluster (it would
  # start one on port 5432 otherwise, beside the host's).
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  mkdir -p "$ROOT/etc/postgresql-common"
  echo "create_main_cluster = false" >"$ROOT/etc/postgresql-common/createcluster.conf"
  # A mirror that is a dated snapshot serves testing's Release files past their Valid-Until.
  echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99pg-dialer-snapshot"
  {
    echo "deb $MIRROR $SUITE main"
    [ -n "$SECURITY" ] && echo "deb $SECURITY_MIRROR $SECURITY main"
    [ "$SUITE" = trixie ] && echo "deb $MIRROR $SUITE-updates main"
  } >"$ROOT/etc/apt/sources.list"
  touch "$ROOT/.pg_dialer-base"
fi
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true

echo "pg-root: installing ${PACKAGES[*]} into the $SUITE root"
unshare --mount --propagation private bash -euo pipefail -c '
  ROOT="$1"; shift
  mount -t proc proc "$ROOT/proc"
  mount --rbind /dev "$ROOT/dev"
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C \
    sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends \"\$@\" >/dev/null && apt-get clean" sh "$@"
' bash "$ROOT" "${PACKAGES[@]}"
rm -f "$ROOT"/.pg_dialer-root-*
touch "$stamp"
echo "pg-root: Debian $SUITE root for Postgres $MAJOR ready in $((SECONDS - t0)) s ($(du -sh "$ROOT" 2>/dev/null | cut -f1))"
