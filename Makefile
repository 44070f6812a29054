# damascus: `make run` starts a local cluster with the worker and shows tickets moving; `make test` runs every test layer.

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
# Kept outside the clone so a fresh clone on the same machine reuses the build.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/damascus/target
TEST_PGDATA ?= /tmp/damascus-test-pgdata
# Tests that boot Postgres share one cluster per test binary, so they run one at a time.
export RUST_TEST_THREADS = 1

.PHONY: all deps test lint unit pgtest install install-sql run stop stop-demo bench soak clean

all: test

deps:
	@PG_CONFIG=$(PG_CONFIG) scripts/deps.sh

test: deps lint unit pgtest

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# Plain Rust, no Postgres bindings built: phases, judging, wire formats, backoff, the HTTP client and the stand-in LLM.
unit:
	cargo test -p fakellm
	cargo test -p damascus-core

# Installing rewrites damascus.so in place, which crashes a server that has it loaded: stop make run's first.
stop-demo:
	@if [ -f .run/pgdata/postmaster.pid ]; then echo "stopping the make run cluster: installing a new damascus.so under it would crash it"; scripts/run.sh stop; fi

# The extension into this machine's PostgreSQL 15 (release build); restart the server to load a new library.
install: deps stop-demo
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	@$(MAKE) --no-print-directory install-sql

# cargo pgrx install copies the current version's script and the upgrade scripts, not older full install
# scripts; this installs those, so CREATE EXTENSION damascus VERSION '0.1.0' works (the upgrade test uses it).
install-sql:
	@for f in sql/damascus--*.sql; do case "$$f" in *--*--*) ;; *) install -m 644 "$$f" "$$($(PG_CONFIG) --sharedir)/extension/" ;; esac; done

# Real Postgres 15 via pgrx-tests, as the postgres user: SQL tests, ticks, pipeline, upgrade, the static worker, pg_cron.
pgtest: stop-demo install-sql
	@rm -rf $(TEST_PGDATA)
	cargo pgrx test pg15 --runas postgres --pgdata $(TEST_PGDATA)

run: deps
	@PG_CONFIG=$(PG_CONFIG) scripts/run.sh

stop:
	@scripts/run.sh stop

bench: deps stop-demo
	@PG_CONFIG=$(PG_CONFIG) bench/run.sh

SOAK_TICKETS ?= 10000
SOAK_SECONDS ?= 600
# A long run under load (about 11 minutes): 4 workers x 16 in flight, tick loops, 10% LLM faults and one
# worker killed with kill -9; it checks exactly one accepted verdict per ticket and phase and no open cycle.
soak: install
	@bench/soak.sh $(SOAK_TICKETS) $(SOAK_SECONDS)

clean:
	cargo clean
