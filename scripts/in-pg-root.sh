#!/usr/bin/env bash
# Runs a command inside the Debian root of a Postgres major (scripts/pg-root.sh builds it), in
# the current directory, with the host's Rust toolchain (rustup, cargo, cargo-pgrx):
#
#   scripts/in-pg-root.sh 17 cargo pgrx install --pg-config ...
#
# The bind mounts (the checkout at its own path, ~/.cargo read-write, ~/.rustup, the providers'
# specs read-only, /proc, /dev, /sys) are made in a private mount namespace (unshare): they exist
# only while the command runs and vanish with it, so nothing stays mounted in .pg-root/ and
# removing the checkout can never reach through into ~/.cargo. Running it twice at once is fine.
#
# The command runs as root inside the root, as on the host; Postgres programs are started as the
# root's own `postgres` user (its uid differs from the host's) by the callers (runuser, --runas).
# Environment: a clean one, plus CARGO_TERM_*, RUST_BACKTRACE/RUST_LOG, PG_DIALER_*, PGRX_TEST_*,
# PROVIDER_SPEC_DIR; PGRX_HOME is the root's own /root/.pgrx (`cargo pgrx init --pg17` there never
# touches the host's ~/.pgrx), and CARGO_TARGET_DIR is target/pgNN-build unless set.
set -euo pipefail
MAJOR="${1:?usage: in-pg-root.sh MAJOR COMMAND [ARG...]}"
shift
[ $# -gt 0 ] || { echo "usage: in-pg-root.sh MAJOR COMMAND [ARG...]" >&2; exit 2; }

PROJECT="$(cd "$(dirname "$0")/.." && pwd -P)"
ROOT="$PROJECT/.pg-root/pg$MAJOR"
if ! ls "$ROOT"/.pg_dialer-root-* >/dev/null 2>&1; then
  echo "in-pg-root: no Debian root for Postgres $MAJOR in $ROOT: run scripts/pg-root.sh $MAJOR (make setup PG=$MAJOR)" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$MAJOR" "$@"
fi
CWD="$(pwd -P)"
case "$CWD/" in
  "$PROJECT"/*) ;;
  *) echo "in-pg-root: run it from inside the checkout ($PROJECT), not $CWD" >&2; exit 2 ;;
esac

CARGO_HOME_HOST="$(cd "${CARGO_HOME:-$HOME/.cargo}" && pwd -P)"
RUSTUP_HOME_HOST="$(cd "${RUSTUP_HOME:-$HOME/.rustup}" && pwd -P)"
# The providers' published specs, found as provider_contract::default_spec_dir finds them.
SPEC_DIR="${PROVIDER_SPEC_DIR:-}"
if [ -z "$SPEC_DIR" ]; then
  d="$PROJECT"
  while [ "$d" != / ]; do
    if [ -d "$d/shared/provider-specs" ]; then SPEC_DIR="$d/shared/provider-specs"; break; fi
    d="$(dirname "$d")"
  done
fi

envs=(HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM="${TERM:-dumb}"
      PATH="$CARGO_HOME_HOST/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
      CARGO_HOME="$CARGO_HOME_HOST" RUSTUP_HOME="$RUSTUP_HOME_HOST" RUSTUP_AUTO_INSTALL=0
      PGRX_HOME=/root/.pgrx CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PROJECT/target/pg$MAJOR-build}")
[ -n "$SPEC_DIR" ] && envs+=(PROVIDER_SPEC_DIR="$SPEC_DIR")
while IFS= read -r name; do
  envs+=("$name=${!name}")
done < <(compgen -e | grep -E '^(CARGO_TERM_|CARGO_BUILD_JOBS$|CARGO_INCREMENTAL$|RUST_BACKTRACE$|RUST_LOG$|RUST_TEST_THREADS$|PG_DIALER_|PGRX_TEST_|DEMO_|BENCH_)' || true)

exec unshare --mount --propagation private bash -euo pipefail -c '
  ROOT="$1" PROJECT="$2" CARGO_H="$3" RUSTUP_H="$4" SPEC="$5" CWD="$6"; shift 6
  bind() { mkdir -p "$ROOT$2"; mount --bind "$1" "$ROOT$2"; }
  mount -t proc proc "$ROOT/proc"
  mount --rbind /dev "$ROOT/dev"
  mount --rbind /sys "$ROOT/sys"
  bind "$PROJECT" "$PROJECT"
  bind "$CARGO_H" "$CARGO_H"
  bind "$RUSTUP_H" "$RUSTUP_H"
  if [ -n "$SPEC" ] && [ -d "$SPEC" ]; then bind "$SPEC" "$SPEC"; mount -o remount,bind,ro "$ROOT$SPEC"; fi
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  nenv="$1"; shift
  envs=("${@:1:$nenv}"); shift "$nenv"
  exec chroot "$ROOT" /usr/bin/env -i "${envs[@]}" bash -c "cd \"\$0\" && exec \"\$@\"" "$CWD" "$@"
' in-pg-root "$ROOT" "$PROJECT" "$CARGO_HOME_HOST" "$RUSTUP_HOME_HOST" "$SPEC_DIR" "$CWD" "${#envs[@]}" "${envs[@]}" "$@"
