#!/usr/bin/env bash
# A private, relocated copy of the system Postgres 15 for this checkout (default target/pg15), so
# that `make install` here never overwrites the extension another checkout (or CI) is testing.
# Postgres finds its share and lib directories relative to its binaries, so a copy just works.
set -euo pipefail
PREFIX="${1:?usage: pg-prefix.sh DIR}"
SYS_LIB=/usr/lib/postgresql/15
SYS_SHARE=/usr/share/postgresql/15
stamp="$PREFIX/.from-$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null || echo unknown)"
if [ -f "$stamp" ]; then
  exit 0
fi
rm -rf "$PREFIX"
mkdir -p "$PREFIX/lib/postgresql" "$PREFIX/share/postgresql"
cp -a "$SYS_LIB" "$PREFIX/lib/postgresql/15"
cp -a "$SYS_SHARE" "$PREFIX/share/postgresql/15"
ln -sfn /usr/include "$PREFIX/include"
# Runs as `postgres` when we are root: it must be able to reach and read the copy.
chmod -R a+rX "$PREFIX"
touch "$stamp"
echo "pg-prefix: private Postgres 15 in $PREFIX"
