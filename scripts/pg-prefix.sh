#!/usr/bin/env bash
# A private, relocated copy of the system Postgres MAJOR (default 15) for this checkout (the
# Makefile's target/pgMAJOR), so that `make install` here never overwrites the extension another
# checkout (or CI) is testing. Postgres finds its share and lib directories relative to its
# binaries, so a copy just works. For 17 it runs inside the Debian 13 root (scripts/in-pg-root.sh),
# which is where /usr/lib/postgresql/17 is; the copy lands in the checkout all the same.
set -euo pipefail
PREFIX="${1:?usage: pg-prefix.sh DIR [MAJOR]}"
MAJOR="${2:-15}"
SYS_LIB=/usr/lib/postgresql/$MAJOR
SYS_SHARE=/usr/share/postgresql/$MAJOR
if [ ! -x "$SYS_LIB/bin/postgres" ]; then
  echo "pg-prefix: Postgres $MAJOR is not installed here ($SYS_LIB/bin/postgres is missing): run \`make setup PG=$MAJOR\`" >&2
  exit 1
fi
stamp="$PREFIX/.from-$(dpkg-query -W -f='${Version}' "postgresql-$MAJOR" 2>/dev/null || echo unknown)"
if [ -f "$stamp" ]; then
  exit 0
fi
rm -rf "$PREFIX"
mkdir -p "$PREFIX/lib/postgresql" "$PREFIX/share/postgresql"
cp -a "$SYS_LIB" "$PREFIX/lib/postgresql/$MAJOR"
cp -a "$SYS_SHARE" "$PREFIX/share/postgresql/$MAJOR"
ln -sfn /usr/include "$PREFIX/include"
# Runs as `postgres` when we are root: it must be able to reach and read the copy.
chmod -R a+rX "$PREFIX"
touch "$stamp"
echo "pg-prefix: private Postgres $MAJOR in $PREFIX"
