#!/usr/bin/env bash
# `make soak`: damascus under sustained load with LLM faults and a crash, for a fixed time, then checked.
#
#   bench/soak.sh [TICKETS] [SECONDS]        (defaults 10000 and 600)
#
# The release extension must already be installed (bench/run.sh or `make install` does it); this builds and
# installs nothing (only fakellm, with cargo, when its binary is missing). It starts its own cluster in
# /tmp/damascus-soak (port 28818, as postgres when run as root) with 4 static workers x 16 calls in flight, a
# 5 s LLM timeout, 2 s heartbeats and a 1 minute stale-claim window, and fakellm on a free port. Then, within
# SECONDS of the start:
#   - submits TICKETS tickets in 50 batches spread over the first 40% of the run; every 10th ticket carries a
#     fault marker, taking in turn status=503, status=529, flaky=429:2, hang, reset, garbage, status=500;
#     the rest are plain (spec, diff, approving review: done after three cycles);
#   - runs 2 loops of `SELECT * FROM damascus_tick()` beside the workers (errors counted, not fatal);
#   - a third into the run, kill -9 the damascus worker with the most calls in flight: the postmaster restarts
#     every backend (crash recovery); the script waits for the cluster to take connections again, and the
#     submitter (idempotent batches) and the tick loops retry through it;
#   - waits until every ticket is done, failed or cancelled, or SECONDS have passed. Expect the full SECONDS:
#     status=5xx, hang and reset tickets never get an answer and back off for ever (10 s, 20 s ... 10 min);
#     garbage fails after 3 bad answers; flaky=429:2 is retried within its cycles and finishes.
# Then checks (bench/soak_check.sql) and prints SOAK<TAB>name<TAB>value lines on stdout and a summary on
# stderr. Exit 0 only if duplicate_accepts = 0 (no ticket and phase with two accepted verdicts),
# orphaned_cycles = 0 (no open cycle row whose ticket is not claimed with its claim token), stalled_tickets = 0
# (every ticket terminal, or progressing: claimed on a live lease, or backing off until a time still ahead;
# a ticket that is neither must move within a 30 s recheck), all TICKETS were submitted, and the kill caused a
# crash restart the cluster came back from, and nothing else crashed the server. Otherwise exit 1.
# Everything it starts is stopped on exit; the cluster's files and logs stay in /tmp/damascus-soak.
set -euo pipefail
export LC_ALL=C
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TICKETS="${1:-10000}"
DURATION="${2:-600}"
if ! [[ "$TICKETS" =~ ^[1-9][0-9]*$ && "$DURATION" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bench/soak.sh [TICKETS] [SECONDS]   (defaults 10000 600)" >&2
  exit 2
fi
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_CONFIG="${PG_CONFIG:-$PG_BIN/pg_config}"
PORT=28818
DIR="/tmp/damascus-soak"
DB=soak
WORKERS=4
INFLIGHT=16
STALE_MIN=1
TICK_LOOPS=2
BATCHES=50
SETTLE_S=30
FAULTS=(status=503 status=529 flaky=429:2 hang reset garbage status=500)
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/damascus/target}"
export PGCONNECT_TIMEOUT=5
FAKELLM="$CARGO_TARGET_DIR/release/fakellm"

now_ms() { local t="$EPOCHREALTIME"; echo $((10#${t/./} / 1000)); }
secs() { printf '%d.%d' $(($1 / 1000)) $((($1 % 1000) / 100)); }   # ms -> seconds with one decimal
T0="$(now_ms)"
log() { printf '[soak %s +%ss] %s\n' "$(date +%H:%M:%S)" $((($(now_ms) - T0) / 1000)) "$*" >&2; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_s() { "$PG_BIN/psql" -X -q -At -h "$DIR" -p "$PORT" -U postgres -d "$DB" -v ON_ERROR_STOP=1 "$@"; }
check() { psql_s -v step="$1" -v stale_min="$STALE_MIN" -f "$HERE/soak_check.sql"; }
# Sleeps until the given time (ms since the epoch): pacing only, never waiting for a condition.
pace_until() { local d=$(($1 - $(now_ms))); if [ "$d" -gt 0 ]; then sleep "$((d / 1000)).$(printf '%03d' $((d % 1000)))"; fi; }

FAKE_PID=""
BG_PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  touch "$DIR/stop" 2>/dev/null || true
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -f "$DIR/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  if [ -n "$FAKE_PID" ]; then kill "$FAKE_PID" 2>/dev/null || true; wait "$FAKE_PID" 2>/dev/null || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ ! -f "$("$PG_CONFIG" --sharedir)/extension/damascus.control" ] || [ ! -f "$("$PG_CONFIG" --pkglibdir)/damascus.so" ]; then
  log "damascus is not installed in $("$PG_CONFIG" --pkglibdir): install the release build first (make install, or bench/run.sh)"
  exit 1
fi
[ -x "$FAKELLM" ] || (cd "$ROOT" && cargo build --release -p fakellm) >&2

# --- the cluster and the stand-in LLM -------------------------------------------------------------------
[ -f "$DIR/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
rm -rf "$DIR"; mkdir -p "$DIR"; [ "$(id -u)" -eq 0 ] && chown postgres: "$DIR"
as_pg "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null

"$FAKELLM" --addr 127.0.0.1:0 > "$DIR/fakellm.out" 2> "$DIR/fakellm.log" &
FAKE_PID=$!
for _ in $(seq 100); do grep -q '^fakellm listening on ' "$DIR/fakellm.out" 2>/dev/null && break; sleep 0.05; done
LLM_URL="$(sed -n 's/^fakellm listening on //p' "$DIR/fakellm.out")"
[ -n "$LLM_URL" ] || { log "fakellm did not start"; exit 1; }

cat >> "$DIR/data/postgresql.auto.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
max_worker_processes = 16
shared_preload_libraries = 'damascus'
damascus.database = '$DB'
damascus.workers = $WORKERS
damascus.max_inflight = $INFLIGHT
damascus.naptime = 50
damascus.heartbeat_seconds = 2
damascus.stale_claim_minutes = $STALE_MIN
damascus.llm_timeout = 5
damascus.llm_url = '$LLM_URL'
damascus.llm_api_key = 'soak'
CONF
as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w start >/dev/null
"$PG_BIN/createdb" -h "$DIR" -p "$PORT" -U postgres "$DB"
psql_s -c "CREATE EXTENSION damascus" >/dev/null
worker_count() { psql_s -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'damascus worker' AND coalesce(query, '') NOT LIKE '%waiting%'" 2>/dev/null || echo 0; }
# Workers whose database did not exist yet are restarted every 5 s; wait until all of them serve it.
for _ in $(seq 300); do [ "$(worker_count)" = "$WORKERS" ] && break; sleep 0.1; done
[ "$(worker_count)" = "$WORKERS" ] || { log "the $WORKERS damascus workers did not start (see $DIR/postgres.log)"; exit 1; }
log "cluster up in $DIR (port $PORT), fakellm at $LLM_URL; $TICKETS tickets, ${DURATION}s"

# --- the run ---------------------------------------------------------------------------------------------
T0="$(now_ms)"
DEADLINE_MS=$((T0 + DURATION * 1000))
FAULT_ARRAY="ARRAY[$(printf "'%s'," "${FAULTS[@]}" | sed 's/,$//')]"

# Tickets lo..hi. Idempotent: a batch whose commit made it to disk just before a crash broke the connection
# is not submitted twice when retried (titles are unique).
batch_sql() {
  cat <<SQL
SELECT count(damascus_submit('soak ' || g, 'Soak ticket ' || g || ': add the endpoint /soak/' || g || '.' || x.marker))
FROM generate_series($1, $2) AS g
CROSS JOIN LATERAL (SELECT CASE WHEN g % 10 = 0
                                THEN ' [fakellm:' || ($FAULT_ARRAY)[(g / 10) % ${#FAULTS[@]} + 1] || ']'
                                ELSE '' END) AS x(marker)
WHERE 'soak ' || g NOT IN (SELECT title FROM damascus.tickets)
SQL
}

submitter() {
  set +e
  local per=$(((TICKETS + BATCHES - 1) / BATCHES)) span_ms=$((DURATION * 400)) b lo hi retries=0
  for ((b = 0; b < BATCHES; b++)); do
    lo=$((b * per + 1)); hi=$(((b + 1) * per))
    [ "$lo" -gt "$TICKETS" ] && break
    [ "$hi" -gt "$TICKETS" ] && hi="$TICKETS"
    pace_until $((T0 + b * span_ms / BATCHES))
    until psql_s -c "$(batch_sql "$lo" "$hi")" >/dev/null 2>>"$DIR/submit.err"; do
      retries=$((retries + 1))
      echo "$retries" > "$DIR/submit.retries"
      [ "$(now_ms)" -ge "$DEADLINE_MS" ] && return 1
      sleep 0.5
    done
  done
  echo "$retries" > "$DIR/submit.retries"
  touch "$DIR/submit.done"
}

tick_loop() {
  set +e
  local i="$1" calls=0 errors=0 cycles=0 out
  while [ ! -e "$DIR/stop" ]; do
    calls=$((calls + 1))
    if out="$(psql_s -c 'SELECT * FROM damascus_tick()' 2>>"$DIR/tick$i.err")"; then
      [ -n "$out" ] && cycles=$((cycles + 1))
    else
      errors=$((errors + 1))
      sleep 0.2
    fi
    echo "$calls $errors $cycles" > "$DIR/tick$i.count"
  done
}

submitter &
SUB_PID=$!
BG_PIDS+=("$SUB_PID")
for i in $(seq "$TICK_LOOPS"); do tick_loop "$i" & BG_PIDS+=("$!"); done
log "submitting $TICKETS tickets in $BATCHES batches over $((DURATION * 4 / 10))s; $TICK_LOOPS tick loops running"

KILL_PID=none KILL_INFLIGHT=- KILL_AT_MS=-1 CRASH_RESTART=0 RECOVERY_MS=-1 WORKERS_BACK_MS=-1
kill_one_worker() {
  local pid="" inflight="" off t_kill try
  for try in 1 2 3 4 5 6 7 8 9 10; do
    pid="" inflight=""
    read -r pid inflight < <(psql_s -F ' ' -c "SELECT pid, coalesce(substring(query FROM '(\d+) calls in flight')::int, 0)
      FROM pg_stat_activity WHERE backend_type = 'damascus worker' ORDER BY 2 DESC, pid LIMIT 1" 2>/dev/null) || true
    off="$(stat -c %s "$DIR/postgres.log")"
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null && break
    pid=""
    sleep 0.5
  done
  if [ -z "$pid" ]; then log "found no damascus worker to kill"; return; fi
  t_kill="$(now_ms)"
  KILL_PID="$pid" KILL_INFLIGHT="$inflight" KILL_AT_MS=$((t_kill - T0))
  log "kill -9 damascus worker $pid ($inflight calls in flight)"
  # The postmaster sees the worker die and restarts every backend; wait for that before probing connections,
  # or the probe could reach the cluster before it noticed.
  until tail -c +$((off + 1)) "$DIR/postgres.log" | grep -q 'all server processes terminated; reinitializing'; do
    if [ $(($(now_ms) - t_kill)) -gt 60000 ]; then log "no crash restart in the log within 60 s"; return; fi
    sleep 0.1
  done
  CRASH_RESTART=1
  until psql_s -c 'SELECT 1' >/dev/null 2>&1; do
    if [ $(($(now_ms) - t_kill)) -gt 120000 ]; then log "the cluster did not take connections within 120 s"; return; fi
    sleep 0.1
  done
  RECOVERY_MS=$(($(now_ms) - t_kill))
  log "cluster takes connections again, $(secs "$RECOVERY_MS")s after the kill"
  until [ "$(worker_count)" = "$WORKERS" ]; do
    if [ $(($(now_ms) - t_kill)) -gt 120000 ]; then log "the damascus workers did not come back within 120 s"; return; fi
    sleep 0.2
  done
  WORKERS_BACK_MS=$(($(now_ms) - t_kill))
  log "all $WORKERS damascus workers back, $(secs "$WORKERS_BACK_MS")s after the kill"
}

next_log=0
while :; do
  el=$(($(now_ms) - T0))
  [ "$el" -ge $((DURATION * 1000)) ] && break
  if [ "$KILL_PID" = none ] && [ "$KILL_AT_MS" = -1 ] && [ "$el" -ge $((DURATION * 1000 / 3)) ]; then
    KILL_AT_MS=0
    kill_one_worker
    continue
  fi
  if status="$(psql_s -c "SELECT count(*), count(*) FILTER (WHERE state NOT IN ('done', 'failed', 'cancelled')),
        count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed'),
        count(*) FILTER (WHERE claim_token IS NOT NULL), count(*) FILTER (WHERE not_before > now())
      FROM damascus.tickets" -F ' ' 2>/dev/null)"; then
    read -r n_all n_open n_done n_failed n_claimed n_backoff <<< "$status"
    if [ "$el" -ge "$next_log" ]; then
      log "tickets $n_all: done $n_done, failed $n_failed, not terminal $n_open (claimed $n_claimed, backing off $n_backoff)"
      next_log=$((el + 30000))
    fi
    if [ -e "$DIR/submit.done" ] && [ "$KILL_AT_MS" != -1 ] && [ "$n_all" = "$TICKETS" ] && [ "$n_open" = 0 ]; then
      log "every ticket is terminal"
      break
    fi
  fi
  sleep 1
done
ELAPSED_MS=$(($(now_ms) - T0))
touch "$DIR/stop"
[ -e "$DIR/submit.done" ] || kill "$SUB_PID" 2>/dev/null || true
for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
BG_PIDS=()
log "run over after $(secs "$ELAPSED_MS")s; checking"

# --- the checks --------------------------------------------------------------------------------------------
read -r s_t s_c < <(check snapshot)
settle_until=$(($(now_ms) + SETTLE_S * 1000))
while [ "$s_t $s_c" != "0 0" ] && [ "$(now_ms)" -lt "$settle_until" ]; do
  sleep 1
  read -r s_t s_c < <(check recheck)
done
OUT="$DIR/soak.out"
{
  printf 'SOAK\t%s\t%s\n' tickets_requested "$TICKETS" seconds_bound "$DURATION" \
    workers "$WORKERS" max_inflight "$INFLIGHT"
  check report || printf 'SOAK\t%s\t%s\n' check_failed 1
  calls=0 errors=0 cycles=0
  for f in "$DIR"/tick*.count; do
    [ -f "$f" ] || continue
    read -r c e y < "$f"; calls=$((calls + c)); errors=$((errors + e)); cycles=$((cycles + y))
  done
  printf 'SOAK\t%s\t%s\n' tick_calls "$calls" tick_errors "$errors" tick_cycles "$cycles" \
    submit_retries "$(cat "$DIR/submit.retries" 2>/dev/null || echo 0)" \
    kill_pid "$KILL_PID" kill_inflight "$KILL_INFLIGHT" kill_at_s "$([ "$KILL_PID" = none ] && echo - || secs "$KILL_AT_MS")" \
    crash_restart "$CRASH_RESTART" server_restarts "$(grep -c 'all server processes terminated; reinitializing' "$DIR/postgres.log" || true)" \
    recovery_s "$([ "$RECOVERY_MS" -ge 0 ] && secs "$RECOVERY_MS" || echo -)" \
    workers_back_s "$([ "$WORKERS_BACK_MS" -ge 0 ] && secs "$WORKERS_BACK_MS" || echo -)" \
    llm_requests "$(wc -l < "$DIR/fakellm.log")"
  awk '$3 == "->" {print ($4 == "no" ? "no_answer" : $4)}' "$DIR/fakellm.log" | sort | uniq -c | awk '{printf "SOAK\tllm_requests.%s\t%s\n", $2, $1}'
  printf 'SOAK\t%s\t%s\n' elapsed_s "$(secs "$ELAPSED_MS")"
} > "$OUT"
val() { awk -F'\t' -v k="$1" '$2 == k {print $3; exit}' "$OUT"; }

fail=()
[ "$(val duplicate_accepts)" = 0 ] || fail+=("duplicate_accepts=$(val duplicate_accepts)")
[ "$(val orphaned_cycles)" = 0 ] || fail+=("orphaned_cycles=$(val orphaned_cycles)")
[ "$(val stalled_tickets)" = 0 ] || fail+=("stalled_tickets=$(val stalled_tickets)")
[ "$(val tickets)" = "$TICKETS" ] || fail+=("submitted $(val tickets) of $TICKETS tickets")
[ "$CRASH_RESTART" = 1 ] && [ "$RECOVERY_MS" -ge 0 ] || fail+=("no crash restart recovered from (kill_pid=$KILL_PID)")
[ "$(val server_restarts)" -le 1 ] || fail+=("server_restarts=$(val server_restarts): a backend crashed besides the one killed (see $DIR/postgres.log)")
if [ "${#fail[@]}" -eq 0 ]; then result=PASS; else result=FAIL; fi
printf 'SOAK\t%s\t%s\n' result "$result" >> "$OUT"
cat "$OUT"

{
  echo
  echo "soak: $TICKETS tickets, ${DURATION}s bound, $WORKERS workers x $INFLIGHT in flight, $TICK_LOOPS tick loops; ran $(val elapsed_s)s"
  printf '  tickets by state:'; awk -F'\t' '$2 ~ /^tickets\./ {sub(/^tickets\./, "", $2); printf " %s %s", $2, $3}' "$OUT"; echo
  printf '  by kind:'; awk -F'\t' '$2 ~ /^by_kind\./ {sub(/^by_kind\./, "", $2); printf " %s=%s", $2, $3}' "$OUT"; echo
  echo "  not terminal: $(val not_terminal) (progressing $(val not_terminal.progressing): claimed $(val not_terminal.claimed), backing off $(val not_terminal.backing_off); waiting: stale claim $(val not_terminal.stale_claim), ready $(val not_terminal.ready)); stalled after the ${SETTLE_S}s recheck: $(val stalled_tickets)"
  echo "  duplicate accepted verdicts: $(val duplicate_accepts); orphaned cycle rows: $(val orphaned_cycles); done tickets missing an accepted phase: $(val done_missing_accepts)"
  printf '  cycles %s:' "$(val cycles)"; awk -F'\t' '$2 ~ /^cycles\./ {sub(/^cycles\./, "", $2); printf " %s %s", $2, $3}' "$OUT"; echo
  echo "  damascus_tick(): $(val tick_calls) calls, $(val tick_errors) errors, $(val tick_cycles) ran a cycle; submit retries: $(val submit_retries)"
  if [ "$(val tick_errors)" != 0 ]; then
    echo "  tick errors, most frequent first:"
    { cat "$DIR"/tick*.err 2>/dev/null | sed -n 's/^psql: //; s/^\(ERROR\|FATAL\|error\): *//p' | sed 's/[0-9]\{3,\}/N/g' \
        | sort | uniq -c | sort -rn | head -5 | sed 's/^/    /'; } || true
  fi
  echo "  kill -9 of worker $KILL_PID ($KILL_INFLIGHT calls in flight) at $(val kill_at_s)s; crash restarts: $(val server_restarts); connections again after $(val recovery_s)s, all workers back after $(val workers_back_s)s"
  printf '  llm requests %s:' "$(val llm_requests)"; awk -F'\t' '$2 ~ /^llm_requests\./ {sub(/^llm_requests\./, "", $2); printf " %s %s", $2, $3}' "$OUT"; echo
  if [ "$result" = PASS ]; then echo "  PASS"; else echo "  FAIL: ${fail[*]}"; fi
  echo "  (logs and the stopped cluster in $DIR)"
} >&2
[ "$result" = PASS ]
