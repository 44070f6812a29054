#!/usr/bin/env bash
# Benchmarks damascus end to end on this machine and writes bench/results.md:
#   - pure core (cargo bench --bench core): ns per spec judgement / response decode;
#   - drain throughput of the static worker(s) against the offline stand-in LLM (no model latency),
#     i.e. what the three-transaction cycle itself costs;
#   - damascus_tick() latency (a dynamic background worker per call), with and without work;
#   - the worker's resident memory after 500 and after 2000 more cycles (a leak would show as growth).
# Uses its own throwaway cluster under /tmp, as the postgres user when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
BIN="$("$PG_CONFIG" --bindir)"
PORT="${BENCH_PORT:-28816}"
DIR="/tmp/damascus-bench"
N1="${BENCH_TICKETS:-500}"
N2="${BENCH_TICKETS_MORE:-2000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/damascus/target}"
OUT="bench/results.md"

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_b() { "$BIN/psql" -X -q -At -h "$DIR" -p "$PORT" -U postgres -d bench -v ON_ERROR_STOP=1 "$@"; }
step() { printf '\n== %s\n' "$*"; }

cleanup() {
  [ -f "$DIR/data/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  [ -n "${FAKE_PID:-}" ] && kill "$FAKE_PID" 2>/dev/null || true
}
trap cleanup EXIT

step "building (release): extension and fakellm"
SUDO_FLAG=(); [ "$(id -u)" -ne 0 ] && SUDO_FLAG=(--sudo)
cargo pgrx install --release --pg-config "$PG_CONFIG" "${SUDO_FLAG[@]}" > /tmp/damascus-bench-build.log 2>&1 \
  || { tail -30 /tmp/damascus-bench-build.log; exit 1; }
cargo build --release -p fakellm >> /tmp/damascus-bench-build.log 2>&1

step "core micro-benchmark"
CORE="$(cargo bench --bench core 2>/dev/null)"
echo "$CORE"

step "cluster"
cleanup
rm -rf "$DIR"; mkdir -p "$DIR"; [ "$(id -u)" -eq 0 ] && chown postgres "$DIR"
as_pg "$BIN/initdb" -D "$DIR/data" -A trust >/dev/null
"$CARGO_TARGET_DIR/release/fakellm" --addr 127.0.0.1:0 > "$DIR/fakellm.out" 2>/dev/null &
FAKE_PID=$!
for _ in $(seq 50); do grep -q listening "$DIR/fakellm.out" && break; sleep 0.1; done
LLM_URL="$(sed -n 's/^fakellm listening on //p' "$DIR/fakellm.out")"
start_pg() { # $1 = number of static workers
  cat > "$DIR/data/postgresql.auto.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
shared_preload_libraries = 'damascus'
damascus.database = 'bench'
damascus.workers = $1
damascus.naptime = 50
damascus.llm_url = '$LLM_URL'
damascus.llm_api_key = 'bench'
CONF
  as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w start >/dev/null
}
stop_pg() { as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null; }
start_pg 0
"$BIN/createdb" -h "$DIR" -p "$PORT" -U postgres bench
psql_b -c "CREATE EXTENSION damascus"
# refine_spec only, so each ticket is one cycle: an accepted spec ends the ticket (done) instead of going on
# to implement. The figures are the cost of one cycle.
psql_b -c "UPDATE damascus.phases SET transitions = '{\"spec_ok\": \"done\"}' WHERE name = 'refine_spec'"

submit() { psql_b -c "SELECT count(damascus_submit('Bench ticket ' || g, 'Body of ticket ' || g)) FROM generate_series(1, $1) g" >/dev/null; }
wait_drained() { # prints seconds taken to reach zero tickets in state new
  local t0 t1; t0=$(date +%s.%N)
  until [ "$(psql_b -c "SELECT count(*) FROM damascus.tickets WHERE state = 'new'")" = 0 ]; do sleep 0.05; done
  t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}'
}
worker_pids() { psql_b -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'damascus worker' ORDER BY pid"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

step "damascus_tick() latency"
cat > "$DIR/tick.sql" <<'SQL'
SELECT * FROM damascus_tick();
SQL
IDLE_TICK="$("$BIN/pgbench" -n -h "$DIR" -p "$PORT" -U postgres -f "$DIR/tick.sql" -t 200 -c 1 bench 2>/dev/null | sed -n 's/^latency average = //p')"
submit 200
BUSY_TICK="$("$BIN/pgbench" -n -h "$DIR" -p "$PORT" -U postgres -f "$DIR/tick.sql" -t 200 -c 1 bench 2>/dev/null | sed -n 's/^latency average = //p')"
echo "idle tick: $IDLE_TICK   tick with a ticket: $BUSY_TICK"
psql_b -c "TRUNCATE damascus.tickets, damascus.cycles"

results=()
for W in 1 2; do
  step "drain with $W static worker(s)"
  stop_pg; start_pg "$W"
  until [ "$(worker_pids | wc -l)" = "$W" ]; do sleep 0.1; done
  psql_b -c "TRUNCATE damascus.tickets, damascus.cycles"
  submit "$N1"
  SECS=$(wait_drained)
  RATE=$(awk -v n="$N1" -v s="$SECS" 'BEGIN {print n / s}')
  OVERHEAD=$(psql_b -c "SELECT round(avg(extract(epoch FROM finished_at - started_at) * 1000 - llm_ms)::numeric, 2) FROM damascus.cycles")
  LLM=$(psql_b -c "SELECT round(avg(llm_ms)::numeric, 2) FROM damascus.cycles")
  OK=$(psql_b -c "SELECT count(*) FROM damascus.tickets WHERE state = 'done'")
  printf 'workers=%s tickets=%s seconds=%.2f rate=%.1f/s specified=%s avg_llm_ms=%s avg_non_llm_ms=%s\n' "$W" "$N1" "$SECS" "$RATE" "$OK" "$LLM" "$OVERHEAD"
  results+=("| $W | $N1 | $(printf %.2f "$SECS") | $(printf %.1f "$RATE") | $OK | $LLM | $OVERHEAD |")
  if [ "$W" = 1 ]; then
    PID=$(worker_pids | head -1)
    RSS1=$(rss_kb "$PID"); HWM1=$(hwm_kb "$PID")
    psql_b -c "TRUNCATE damascus.tickets, damascus.cycles"
    submit "$N2"; wait_drained >/dev/null
    RSS2=$(rss_kb "$PID"); HWM2=$(hwm_kb "$PID")
    psql_b -c "TRUNCATE damascus.tickets, damascus.cycles"
    submit "$N2"; wait_drained >/dev/null
    RSS3=$(rss_kb "$PID"); HWM3=$(hwm_kb "$PID")
    echo "worker $PID: RSS ${RSS1} kB after $N1 cycles, ${RSS2} kB after $N2 more, ${RSS3} kB after $N2 more (peak ${HWM1} -> ${HWM2} -> ${HWM3} kB)"
  fi
done

{
  echo "# damascus benchmark results"
  echo
  echo "Measured by \`make bench\` (bench/run.sh) on $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m), PostgreSQL $("$BIN/postgres" --version | awk '{print $3}'), release build."
  echo "The LLM is the offline stand-in (fakellm) on 127.0.0.1, so these figures are the cost of damascus itself, not of a model."
  echo
  echo "## Pure core (cargo bench --bench core)"
  echo
  echo '```'
  echo "$CORE"
  echo '```'
  echo
  echo "## damascus_tick() latency (pgbench, 200 calls, 1 client)"
  echo
  echo "- nothing claimable: $IDLE_TICK"
  echo "- one full cycle (claim, phase, HTTP call, verdict): $BUSY_TICK"
  echo
  echo "## Drain throughput of the static worker(s)"
  echo
  echo "| workers | tickets | seconds | tickets/s | specified | avg llm_ms | avg ms outside the call (phase txn to verdict) |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${results[@]}"
  echo
  echo "## Worker memory"
  echo
  echo "Resident memory of one static worker process (VmRSS, peak VmHWM) as cycles accumulate:"
  echo
  echo "| cycles run | VmRSS kB | VmHWM kB |"
  echo "|---|---|---|"
  echo "| $N1 | $RSS1 | $HWM1 |"
  echo "| $((N1 + N2)) | $RSS2 | $HWM2 |"
  echo "| $((N1 + 2 * N2)) | $RSS3 | $HWM3 |"
  echo
  echo "Growth over the last $N2 cycles: $(( (RSS3 - RSS2) * 1024 / N2 )) bytes per cycle."
} > "$OUT"
step "wrote $OUT"
cat "$OUT"
