# pg_dialer — `make demo`, `make test`, `make bench`. Each runs the idempotent set-up first.
# The extension is installed into a private copy of the system Postgres 15 (target/pg15), so
# that tests, the demo and the benchmarks of this checkout never race another checkout's install.
PG_PREFIX ?= $(CURDIR)/target/pg15
PG_CONFIG := $(PG_PREFIX)/lib/postgresql/15/bin/pg_config
export PG_DIALER_PG_BIN := $(PG_PREFIX)/lib/postgresql/15/bin
PGRX_TEST_DATA ?= /tmp/pg_dialer-pgrx-test
CARGO ?= cargo

.PHONY: setup install install-release install-upgrades test pg-test sim-test integration-test demo bench clean

setup:
	@bash scripts/setup.sh
	@bash scripts/pg-prefix.sh $(PG_PREFIX)

# Debug build: fast to compile, used by the tests.
install: setup
	$(CARGO) pgrx install --pg-config $(PG_CONFIG)
	@$(MAKE) -s install-upgrades

install-release: setup
	$(CARGO) pgrx install --release --pg-config $(PG_CONFIG)
	@$(MAKE) -s install-upgrades

# ALTER EXTENSION pg_dialer UPDATE: the upgrade scripts, and the previous release's install script
# (CREATE EXTENSION pg_dialer VERSION '0.1.0', for the upgrade test).
install-upgrades:
	cp sql/upgrade/pg_dialer--*.sql "$$($(PG_CONFIG) --sharedir)/extension/"

# Unit tests (pure modules) and #[pg_test]s run together under cargo pgrx test (which installs
# into the Postgres that `cargo pgrx init` registered, the system one).
pg-test: setup
	@mkdir -p $(PGRX_TEST_DATA)
	@if [ "$$(id -u)" = 0 ]; then chown postgres $(PGRX_TEST_DATA); fi
	$(CARGO) pgrx test pg15 $$( [ "$$(id -u)" = 0 ] && echo --runas postgres ) --pgdata $(PGRX_TEST_DATA)/data

sim-test: setup
	$(CARGO) test -p provider-sim -p provider-contract

# A real cluster with the worker preloaded, the simulator on loopback (see pgrx-tests/).
integration-test: install
	$(CARGO) test -p pg_dialer_integration -- --test-threads=2
	$(CARGO) test -p pg_dialer_console -- --test-threads=1

test: pg-test sim-test integration-test

demo: install-release
	$(CARGO) build --release -q -p pg_dialer_console
	$(CARGO) run --release -q -p pg_dialer_demo -- $(DEMO_ARGS)

bench: install-release
	$(CARGO) run --release -q -p pg_dialer_bench -- $(BENCH_ARGS)

clean:
	$(CARGO) clean
	rm -rf $(PGRX_TEST_DATA)
