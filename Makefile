# damascus: `make run` starts a local cluster with the worker and shows tickets moving; `make test` runs every test layer.

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
# Kept outside the clone so a fresh clone on the same machine reuses the build.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/damascus/target
TEST_PGDATA ?= /tmp/damascus-test-pgdata
# Tests that boot Postgres share one cluster per test binary, so they run one at a time.
export RUST_TEST_THREADS = 1

.PHONY: all deps test lint unit pgtest run stop stop-demo bench clean

all: test

deps:
	@PG_CONFIG=$(PG_CONFIG) scripts/deps.sh

test: deps lint unit pgtest

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# Plain Rust: spec validation, wire formats, judging, backoff, the HTTP client and the stand-in LLM. No Postgres.
unit:
	cargo test -p fakellm
	cargo test -p damascus --lib -- core:: llm::

# Installing rewrites damascus.so in place, which crashes a server that has it loaded: stop make run's first.
stop-demo:
	@if [ -f .run/pgdata/postmaster.pid ]; then echo "stopping the make run cluster: installing a new damascus.so under it would crash it"; scripts/run.sh stop; fi

# Real Postgres 15 via pgrx-tests, as the postgres user: SQL tests, ticks, the static worker and pg_cron.
pgtest: stop-demo
	@rm -rf $(TEST_PGDATA)
	cargo pgrx test pg15 --runas postgres --pgdata $(TEST_PGDATA)

run: deps
	@PG_CONFIG=$(PG_CONFIG) scripts/run.sh

stop:
	@scripts/run.sh stop

bench: deps stop-demo
	@PG_CONFIG=$(PG_CONFIG) bench/run.sh

clean:
	cargo clean
