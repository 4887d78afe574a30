#!/usr/bin/env bash
# RUSTC_WRAPPER for scripts/check-pg.sh 16: passes `--cfg docsrs` to rustc for pgrx-pg-sys only,
# so that it compiles the Postgres 16 bindings it ships instead of generating them.
rustc="$1"; shift
for a in "$@"; do
  if [ "$a" = pgrx_pg_sys ]; then exec "$rustc" "$@" --cfg docsrs; fi
done
exec "$rustc" "$@"
