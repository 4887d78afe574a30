# pg_dialer — `make demo`, `make test`, `make bench`. Each runs the idempotent set-up first.
# PG picks the Postgres major (default 15): `make test PG=17`, `make install PG=17`, `make demo PG=17`.
#   15  the host's Debian 12 packages.
#   17  Debian 13's packages in a debootstrap root (.pg-root/pg17, built once by `make setup PG=17`);
#       every cargo command runs inside it (scripts/in-pg-root.sh), with its own target folder
#       (target/pg17-build) and PGRX_HOME, since Debian 13's Postgres needs Debian 13's C library.
#   16, 18  type-checked only: `make check PG=18` (see docs/postgres-versions.md).
# The extension is installed into a private copy of the system Postgres (target/pg$(PG)), so
# that tests, the demo and the benchmarks of this checkout never race another checkout's install.
PG ?= 15
ifeq ($(filter $(PG),15 16 17 18),)
$(error PG=$(PG): pg_dialer builds for Postgres 15, 16, 17 and 18)
endif
PG_PREFIX ?= $(CURDIR)/target/pg$(PG)
PG_CONFIG := $(PG_PREFIX)/lib/postgresql/$(PG)/bin/pg_config
export PG_DIALER_PG_BIN := $(PG_PREFIX)/lib/postgresql/$(PG)/bin
PGRX_TEST_DATA ?= /tmp/pg_dialer-pgrx-test
CARGO ?= cargo

ifeq ($(PG),15)
# On the host, as before.
IN_PG :=
# The browser tests (console/tests/browser.rs and the CSP test) run once, on 15.
CONSOLE_TESTS := -p pg_dialer_console -- --test-threads=1
else
IN_PG := bash scripts/in-pg-root.sh $(PG)
CONSOLE_TESTS := -p pg_dialer_console --bins --test hardening -- --test-threads=1 --skip pages_run_under_the_csp_without_violations
endif

.PHONY: setup install install-release install-upgrades check test pg-test sim-test integration-test demo bench clean

setup:
	@bash scripts/setup.sh $(PG)
	@$(IN_PG) bash scripts/pg-prefix.sh $(PG_PREFIX) $(PG)

# Debug build: fast to compile, used by the tests.
install: setup
	$(IN_PG) $(CARGO) pgrx install --pg-config $(PG_CONFIG)
	@$(MAKE) -s install-upgrades

install-release: setup
	$(IN_PG) $(CARGO) pgrx install --release --pg-config $(PG_CONFIG)
	@$(MAKE) -s install-upgrades

# ALTER EXTENSION pg_dialer UPDATE: the upgrade scripts (pg_dialer--A--B.sql). The previous
# releases' full install scripts are test fixtures (pgrx-tests/fixtures/), never installed here.
install-upgrades:
	$(IN_PG) sh -c 'cp sql/upgrade/pg_dialer--*--*.sql "$$($(PG_CONFIG) --sharedir)/extension/"'

# Unit tests (pure modules) and #[pg_test]s run together under cargo pgrx test (which installs
# into the Postgres that `cargo pgrx init` registered: the system one, or the root's for 17).
pg-test: setup
	$(IN_PG) sh -c 'mkdir -p $(PGRX_TEST_DATA) && if [ "$$(id -u)" = 0 ]; then chown postgres $(PGRX_TEST_DATA); fi && \
	  exec $(CARGO) pgrx test pg$(PG) $$( [ "$$(id -u)" = 0 ] && echo --runas postgres ) --pgdata $(PGRX_TEST_DATA)/data'

# The simulator and the providers' contracts: no Postgres in them, so they run once, on 15.
sim-test: setup
	$(CARGO) test -p provider-sim -p provider-contract

# A real cluster with the worker preloaded, the simulator on loopback (see pgrx-tests/).
integration-test: install
	$(IN_PG) $(CARGO) test -p pg_dialer_integration -- --test-threads=2
	$(IN_PG) $(CARGO) test $(CONSOLE_TESTS)

ifeq ($(PG),15)
test: pg-test sim-test integration-test
else
test: pg-test integration-test
endif

# Type-checks the extension against a major's headers (16 and 18 have no server to test on here).
check:
	@bash scripts/check-pg.sh $(PG)

demo: install-release
	$(IN_PG) $(CARGO) build --release -q -p pg_dialer_console
	$(IN_PG) $(CARGO) run --release -q -p pg_dialer_demo -- $(DEMO_ARGS)

bench: install-release
	$(IN_PG) $(CARGO) run --release -q -p pg_dialer_bench -- $(BENCH_ARGS)

clean:
	$(CARGO) clean
	rm -rf $(PGRX_TEST_DATA)
