#!/usr/bin/env bash
# `make bench`: damascus side by side with the architectures it replaces, in one run on this machine, with the
# same stand-in LLM (fakellm) and the same work (refine_spec items); writes bench/RESULTS.md and prints it.
#   1. the pure core (cargo bench --bench core);
#   2. the peers (bench/peers/run.sh): a Python psycopg worker running the three transactions over a socket,
#      and graphile-worker, each with 1 and 4 processes;
#   3. damascus (bench/damascus.sh): workers x max_inflight 1x1, 1x8, 1x32, 2x8; 1x8 with 1,000,000 tickets
#      waiting behind; a 200 ms LLM with 1x16 and 1x64; claim latency at 1k/100k/1M waiting; worker memory.
# Every drain checks correctness in the same pass (exactly one accepted verdict per ticket, one call each).
# BENCH_TICKETS (default 5000) sets N. Speed is shown here, never asserted by tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
N="${BENCH_TICKETS:-5000}"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/damascus/target}"
OUT="bench/RESULTS.md"
TMP="$(mktemp -d)"
step() { printf '\n== %s\n' "$*" >&2; }

step "building (release): extension and fakellm"
SUDO_FLAG=(); [ "$(id -u)" -ne 0 ] && SUDO_FLAG=(--sudo)
cargo pgrx install --release --pg-config "$PG_CONFIG" "${SUDO_FLAG[@]}" > "$TMP/build.log" 2>&1 \
  || { tail -30 "$TMP/build.log"; exit 1; }
cargo build --release -p fakellm >> "$TMP/build.log" 2>&1

step "core micro-benchmark"
cargo bench --bench core 2>/dev/null | tee "$TMP/core.txt" >&2

step "peers (N=$N)"
FAKELLM_BIN="$CARGO_TARGET_DIR/release/fakellm" bench/peers/run.sh "$N" | tee "$TMP/peers.tsv" >&2

step "damascus (N=$N)"
bench/damascus.sh "$N" | tee "$TMP/damascus.tsv" >&2

step "writing $OUT"
bench/peers/.venv/bin/python bench/report.py --core "$TMP/core.txt" --peers "$TMP/peers.tsv" \
  --damascus "$TMP/damascus.tsv" --n "$N" --analysis bench/analysis.md \
  --machine "$(nproc) cores, $(free -g | awk '/^Mem/ {print $2}') GB, $(uname -m), PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}')" > "$OUT"
cat "$OUT"
rm -rf "$TMP"
