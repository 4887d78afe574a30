#!/usr/bin/env bash
# Type-checks (16) or builds (18) the extension for a Postgres major that has no server to test
# on here: `make check PG=16`, `make check PG=18`.
#
#  16  No reachable Debian release ships Postgres 16 (Debian 12 has 15, 13 has 17, 14 has 18, in
#      no backports either). pgrx-pg-sys 0.18.0 ships bindings that its authors generated from the
#      16.13 headers (for docs.rs): `cargo check` uses them, on the host. That checks our Rust
#      against 16's structs, functions and constants; nothing is linked or run.
#  18  Debian 14 "forky" ships postgresql-server-dev-18: a root with its headers (scripts/pg-root.sh
#      18), in which pgrx's bindgen runs on the real headers and the extension is built (.so linked).
#  15, 17  `make check PG=15|17` runs cargo check the ordinary way (17 inside its root).
set -euo pipefail
cd "$(dirname "$0")/.."
MAJOR="${1:?usage: check-pg.sh MAJOR}"
t0=$SECONDS
case "$MAJOR" in
15)
  cargo check --lib --tests --features pg_test ;;
16)
  # DOCS_RS=1: pgrx-pg-sys's build script skips bindgen; --cfg docsrs (given to pgrx-pg-sys
  # alone, by scripts/rustc-cfg-docsrs.sh: other crates read it as "nightly rustdoc") makes it
  # include src/include/pg16.rs.
  DOCS_RS=1 RUSTC_WRAPPER="$(pwd)/scripts/rustc-cfg-docsrs.sh" CARGO_TARGET_DIR="$(pwd)/target/pg16-check" \
    cargo check --lib --tests --no-default-features --features "pg16 pg_test" ;;
17)
  bash scripts/setup.sh 17 >/dev/null
  bash scripts/in-pg-root.sh 17 env PGRX_PG_CONFIG_PATH=/usr/lib/postgresql/17/bin/pg_config \
    cargo check --lib --tests --no-default-features --features "pg17 pg_test" ;;
18)
  bash scripts/setup.sh 18 >/dev/null
  bash scripts/in-pg-root.sh 18 env PGRX_PG_CONFIG_PATH=/usr/lib/postgresql/18/bin/pg_config \
    cargo build --lib --no-default-features --features pg18
  bash scripts/in-pg-root.sh 18 env PGRX_PG_CONFIG_PATH=/usr/lib/postgresql/18/bin/pg_config \
    cargo check --lib --tests --no-default-features --features "pg18 pg_test" ;;
*)
  echo "check-pg: Postgres $MAJOR is not supported (15, 16, 17, 18)" >&2; exit 2 ;;
esac
echo "check-pg: Postgres $MAJOR ok ($((SECONDS - t0)) s)"
