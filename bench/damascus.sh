#!/usr/bin/env bash
# The damascus side of `make bench`: the same work as bench/peers/run.sh (N refine_spec items, one call to the
# offline stand-in LLM and one accepted verdict each), measured the same way (bench/peers/measure.py: wall time,
# CPU of every process of the cluster, fakellm's CPU apart), for several workers x max_inflight, and with
# 1,000,000 tickets waiting behind; then a 200 ms LLM, claim latency at three queue depths, and worker memory.
#
#   bench/damascus.sh [N]      (default 5000); the release build must be installed (bench/run.sh does it)
#
# Prints to stdout, one per line:
#   PEER<TAB>damascus<TAB>WxK<TAB>items<TAB>seconds<TAB>items_per_s<TAB>pg_cpu_ms_per_item<TAB>driver_cpu_ms_per_item<TAB>llm_cpu_ms_per_item<TAB>correct<TAB>note
#   CLAIM<TAB>waiting<TAB>p50_ms<TAB>p99_ms
#   TICK<TAB>idle_ms<TAB>one_cycle_ms
#   RSS<TAB>what<TAB>VmRSS kB<TAB>RssAnon kB
#   PROFILE<TAB>process name<TAB>binary<TAB>percent of all samples          (when perf is installed)
#   PROFSYM<TAB>percent with callees<TAB>percent self<TAB>function         (the cluster's processes)
# Everything it starts is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
N="${1:-5000}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PORT="${BENCH_PORT:-28816}"
DIR="/tmp/damascus-bench"
PY="$HERE/peers/.venv/bin/python"
CONFIGS="${DAMASCUS_CONFIGS:-1x1 1x8 1x32 2x8}"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/damascus/target}"
FAKELLM="$CARGO_TARGET_DIR/release/fakellm"

log() { printf '[damascus %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_b() { "$PG_BIN/psql" -X -q -At -h "$DIR" -p "$PORT" -U postgres -d bench -v ON_ERROR_STOP=1 "$@"; }

FAKE_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -f "$DIR/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  if [ -n "$FAKE_PID" ]; then kill "$FAKE_PID" 2>/dev/null || true; wait "$FAKE_PID" 2>/dev/null || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$HERE/peers/setup.sh" >&2
[ -x "$FAKELLM" ] || (cd "$ROOT" && cargo build --release -p fakellm) >&2

[ -f "$DIR/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
rm -rf "$DIR"; mkdir -p "$DIR"; [ "$(id -u)" -eq 0 ] && chown postgres: "$DIR"
as_pg "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null

"$FAKELLM" --addr 127.0.0.1:0 > "$DIR/fakellm.out" 2> "$DIR/fakellm.log" &
FAKE_PID=$!
for _ in $(seq 100); do grep -q '^fakellm listening on ' "$DIR/fakellm.out" 2>/dev/null && break; sleep 0.05; done
LLM_URL="$(sed -n 's/^fakellm listening on //p' "$DIR/fakellm.out")"
[ -n "$LLM_URL" ] || { log "fakellm did not start"; exit 1; }

start_pg() { # $1 workers, $2 max_inflight
  cat > "$DIR/data/postgresql.auto.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
shared_preload_libraries = 'damascus'
damascus.database = 'bench'
damascus.workers = $1
damascus.max_inflight = $2
damascus.naptime = 20
damascus.llm_url = '$LLM_URL'
damascus.llm_api_key = 'bench'
CONF
  as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w start >/dev/null
  PM_PID="$(head -1 "$DIR/data/postmaster.pid")"
}
stop_pg() { as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null; }

start_pg 0 1
"$PG_BIN/createdb" -h "$DIR" -p "$PORT" -U postgres bench
psql_b -c "CREATE EXTENSION damascus" >/dev/null
# refine_spec only, like the peers: an accepted spec ends the ticket. Disabled while loading, so loading is
# not timed; the driver enables it at GO.
psql_b -c "UPDATE damascus.phases SET transitions = '{\"spec_ok\": \"done\"}' WHERE name = 'refine_spec'" >/dev/null
stop_pg

# $1 workers, $2 max_inflight, $3 tickets waiting behind, $4 body marker (e.g. [fakellm:slow=200]), $5 n
drain() {
  local w="$1" k="$2" behind="$3" marker="$4" n="$5"
  start_pg "$w" "$k"
  psql_b -c "UPDATE damascus.phases SET enabled = false WHERE name = 'refine_spec'" \
         -c "TRUNCATE damascus.tickets, damascus.cycles RESTART IDENTITY" >/dev/null
  psql_b -c "INSERT INTO damascus.tickets (title, body) SELECT 'Bench ticket ' || g, 'Body of ticket ' || g || '$marker' FROM generate_series(1, $n) g" >/dev/null
  if [ "$behind" -gt 0 ]; then
    psql_b -c "INSERT INTO damascus.tickets (title, body, priority) SELECT 'Waiting ticket ' || g, 'b', -1 FROM generate_series(1, $behind) g" >/dev/null
  fi
  psql_b -c "VACUUM ANALYZE damascus.tickets" -c "CHECKPOINT" >/dev/null
  local load1; load1="$(cut -d' ' -f1 /proc/loadavg)"
  "$PY" "$HERE/peers/measure.py" --postmaster "$PM_PID" --llm-pid "$FAKE_PID" --llm-log "$DIR/fakellm.log" --timeout 900 --go \
    -- "$PY" "$HERE/damascus_drive.py" --dsn "host=$DIR port=$PORT user=postgres dbname=bench" --n "$n" > "$DIR/measure.out" 2>> "$DIR/drive.log"
  IFS=$'\t' read -r secs pg_ms drv_ms llm_ms llm_req llm_ok rc timed_out < "$DIR/measure.out"
  # Stop the workers before counting, so the tickets waiting behind are not worked on meanwhile.
  psql_b -c "UPDATE damascus.phases SET enabled = false WHERE name = 'refine_spec'" >/dev/null
  local accepted dup open
  IFS='|' read -r accepted dup open < <(psql_b -F '|' -c "
    SELECT count(*) FILTER (WHERE t.state = 'done'),
           (SELECT count(*) FROM (SELECT ticket_id FROM damascus.cycles WHERE verdict = 'spec_ok' GROUP BY 1 HAVING count(*) > 1) d),
           (SELECT count(*) FROM damascus.cycles c JOIN damascus.tickets x ON x.id = c.ticket_id WHERE c.verdict IS NULL AND x.priority = 0)
    FROM damascus.tickets t WHERE t.priority = 0")
  local correct=yes
  { [ "$rc" = 0 ] && [ "$timed_out" = 0 ] && [ "$accepted" = "$n" ] && [ "$dup" = 0 ] && [ "$open" = 0 ]; } || correct=no
  # With nothing waiting behind, the stand-in must have been called exactly once per ticket. (With tickets
  # behind, the workers start on those as the last of the N finish, so calls can exceed N.)
  if [ "$behind" = 0 ] && { [ "$llm_req" != "$n" ] || [ "$llm_ok" != "$n" ]; }; then correct=no; fi
  read -r rate pg_per drv_per llm_per < <(awk -v n="$n" -v s="$secs" -v p="$pg_ms" -v d="$drv_ms" -v l="$llm_ms" \
    'BEGIN { printf "%.1f %.3f %.3f %.3f\n", (s > 0 ? n / s : 0), p / n, d / n, l / n }')
  log "${w}x${k} behind=$behind ${marker:-fast}: ${secs}s $rate/s pg ${pg_per} ms/item correct=$correct"
  printf 'PEER\tdamascus\t%sx%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\tbehind=%s llm=%s accepted=%s duplicate_accepts=%s open_cycles=%s llm_calls=%s(200:%s) load1_before=%s\n' \
    "$w" "$k" "$n" "$secs" "$rate" "$pg_per" "$drv_per" "$llm_per" "$correct" "$behind" "${marker:-fast}" "$accepted" "$dup" "$open" "$llm_req" "$llm_ok" "$load1"
  stop_pg
}

ONLY="${DAMASCUS_ONLY:-all}"   # all, or rss (worker memory only)
if [ "$ONLY" = all ]; then
for cfg in $CONFIGS; do drain "${cfg%x*}" "${cfg#*x}" 0 "" "$N"; done
drain 1 8 1000000 "" "$N"
drain 1 16 0 "[fakellm:slow=200]" 1600
drain 1 64 0 "[fakellm:slow=200]" 3200

# Claim latency: the claim statement alone (rolled back), no worker running, at three queue depths.
start_pg 0 1
psql_b -c "UPDATE damascus.phases SET enabled = true WHERE name = 'refine_spec'" >/dev/null
{ echo "BEGIN;"; sed -e 's/\$1/30/g' -e "s/\\\$2/'bench'/g" -e 's/\$3/1/g' -e '/^--/d' "$ROOT/sql/runtime/claim.sql"; echo ";"; echo "ROLLBACK;"; } > "$DIR/claim.sql"
# "1000000+busy": the oldest 100,000 of the million are backing off for an hour and the next 1,000 are
# claimed by a live worker, all ahead of the claimable ones in claim order.
for depth in 1000 100000 1000000 1000000+busy; do
  psql_b -c "TRUNCATE damascus.tickets, damascus.cycles RESTART IDENTITY" \
         -c "INSERT INTO damascus.tickets (title, body) SELECT 'Waiting ' || g, 'b' FROM generate_series(1, ${depth%+busy}) g" >/dev/null
  if [ "$depth" != "${depth%+busy}" ]; then
    psql_b -c "UPDATE damascus.tickets SET not_before = now() + interval '1 hour', llm_errors = 1 WHERE id <= 100000" \
           -c "UPDATE damascus.tickets SET claimed_at = now(), claimed_by = 'live', claim_token = nextval('damascus.claim_tokens') WHERE id > 100000 AND id <= 101000" >/dev/null
  fi
  psql_b -c "VACUUM ANALYZE damascus.tickets" >/dev/null
  rm -f "$DIR"/pgbench_log.*
  (cd "$DIR" && as_pg "$PG_BIN/pgbench" -n -h "$DIR" -p "$PORT" -U postgres -t 300 -f "$DIR/claim.sql" -l bench >/dev/null 2>&1)
  read -r p50 p99 < <(awk '{print $3}' "$DIR"/pgbench_log.* | sort -n | awk '{a[NR] = $1} END {printf "%.3f %.3f\n", a[int(NR * 0.5)] / 1000, a[int(NR * 0.99)] / 1000}')
  log "claim latency at $depth waiting: p50 ${p50} ms, p99 ${p99} ms"
  printf 'CLAIM\t%s\t%s\t%s\n' "$depth" "$p50" "$p99"
done
# damascus_tick(): a dynamic background worker per call, with nothing to claim and with one cycle to run.
echo "SELECT * FROM damascus_tick();" > "$DIR/tick.sql"
psql_b -c "TRUNCATE damascus.tickets, damascus.cycles RESTART IDENTITY" >/dev/null
idle="$(as_pg "$PG_BIN/pgbench" -n -h "$DIR" -p "$PORT" -U postgres -t 200 -f "$DIR/tick.sql" bench 2>/dev/null | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')"
psql_b -c "SELECT count(damascus_submit('Tick ' || g, 'b')) FROM generate_series(1, 200) g" >/dev/null
busy="$(as_pg "$PG_BIN/pgbench" -n -h "$DIR" -p "$PORT" -U postgres -t 200 -f "$DIR/tick.sql" bench 2>/dev/null | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')"
log "damascus_tick(): ${idle} ms with nothing to claim, ${busy} ms for a full cycle"
printf 'TICK\t%s\t%s\n' "$idle" "$busy"
stop_pg

# Where the time goes at 1 worker x 8 in flight: a system-wide cpu-clock profile (perf, from Debian's
# linux-perf) of one more drain, whose speed is not reported (the profiler slows it down).
if command -v perf >/dev/null 2>&1; then
  perf record -e cpu-clock -F 999 -a -g -o "$DIR/perf.data" >/dev/null 2>&1 &
  PERF_PID=$!
  sleep 1
  drain 1 8 0 "" "$N" >/dev/null
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  # Share of all samples per process name and binary; postgres = the cluster's processes (the worker, the
  # driver's backend, walwriter...), damascus-llm = the worker's HTTP threads.
  perf report -i "$DIR/perf.data" --no-children --sort comm,dso --stdio -g none > "$DIR/perf.comm" 2>/dev/null || true
  awk '$1 ~ /%$/ && $1 + 0 >= 0.5 && n++ < 20 {printf "PROFILE\t%s\t%s\t%s\n", $2, $3, $1 + 0}' "$DIR/perf.comm"
  # The hottest functions of the cluster's processes and the HTTP threads, with the calls beneath them.
  perf report -i "$DIR/perf.data" --children --comms postgres,damascus-llm --sort sym --stdio -g none > "$DIR/perf.sym" 2>/dev/null || true
  awk '$1 ~ /%$/ && $2 ~ /%$/ && $NF !~ /^0x/ && n++ < 60 {c = $1 + 0; s = $2 + 0; $1 = ""; $2 = ""; $3 = ""; sub(/^ +/, ""); printf "PROFSYM\t%s\t%s\t%s\n", c, s, $0}' "$DIR/perf.sym"
else
  log "perf not found (Debian's linux-perf): no profile"
fi
fi

# Worker memory: idle, with 64 calls in flight, after 10,000 and 20,000 cycles.
start_pg 1 "${RSS_INFLIGHT:-64}"
psql_b -c "UPDATE damascus.phases SET enabled = true WHERE name = 'refine_spec'" \
       -c "TRUNCATE damascus.tickets, damascus.cycles RESTART IDENTITY" >/dev/null
wpid=""; for _ in $(seq 100); do wpid="$(psql_b -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'damascus worker'")"; [ -n "$wpid" ] && break; sleep 0.1; done
sleep 1
# VmRSS counts the shared buffers a backend has touched, which grows with the tables it writes until
# shared_buffers is covered; RssAnon is the worker's private memory, where a leak would show.
rss() { awk '/^VmRSS/ {r = $2} /^RssAnon/ {a = $2} END {print r "\t" a}' "/proc/$wpid/status"; }
printf 'RSS\tidle\t%s\n' "$(rss)"
psql_b -c "SELECT count(damascus_submit('Slow ' || g, 'b [fakellm:slow=5000]')) FROM generate_series(1, 64) g" >/dev/null
for _ in $(seq 100); do [ "$(psql_b -c "SELECT count(*) FROM damascus.tickets WHERE claim_token IS NOT NULL")" = 64 ] && break; sleep 0.1; done
printf 'RSS\t64 in flight\t%s\n' "$(rss)"
psql_b -c "SELECT count(damascus_cancel(id)) FROM damascus.tickets WHERE state NOT IN ('done', 'cancelled')" >/dev/null
# Two rounds of 10,000: growth per cycle shows as a difference between them.
for round in 1 2; do
  psql_b -c "INSERT INTO damascus.tickets (title, body) SELECT 'Many ' || g, 'b' FROM generate_series(1, 10000) g" >/dev/null
  until [ "$(psql_b -c "SELECT count(*) FROM damascus.tickets WHERE state = 'done'")" -ge $((round * 10000)) ]; do sleep 0.5; done
  printf 'RSS\tafter %s cycles\t%s\n' "$((round * 10000))" "$(rss)"
done
stop_pg
log "done"
