#!/usr/bin/env bash
# `make run`: build and install damascus, start a local PostgreSQL 15 cluster under .run/ with the
# background worker preloaded, submit a few sample tickets and show them moving through the cycle.
# `make stop` (scripts/run.sh stop): stop that cluster and the stand-in LLM.
#
# Everything lives under <repo>/.run/ (git-ignored):
#   pgdata/        the cluster (owned by the postgres OS user when run as root, else by you)
#   postgres.log   the server log        build.log    cargo output of the last run
#   fakellm.log    stand-in LLM log      fakellm.pid  its process id
#
# Environment knobs:
#   DAMASCUS_PORT            port of the cluster (default 28815; it listens on 127.0.0.1 only)
#   DAMASCUS_LLM_URL         use this LLM endpoint instead of the default
#   DAMASCUS_LLM_PROVIDER    its wire format: anthropic (default) or openai (vLLM, llama.cpp, Ollama, gateways)
#   ANTHROPIC_API_KEY        with no DAMASCUS_LLM_URL, talk to the real Anthropic API with this key; the key
#                            reaches the server only through its environment and is never written to a file
#   DAMASCUS_WATCH_SECONDS   how long to watch the sample tickets (default 60 with the stand-in, 300 otherwise)
#   PG_CONFIG                pg_config of the PostgreSQL 15 to use (the Makefile sets it)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$REPO/.run"
PGDATA="$RUN_DIR/pgdata"
PORT="${DAMASCUS_PORT:-28815}"
DB=damascus
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
BUILD_LOG="$RUN_DIR/build.log"
PG_LOG="$RUN_DIR/postgres.log"
FAKELLM_LOG="$RUN_DIR/fakellm.log"
FAKELLM_PID="$RUN_DIR/fakellm.pid"
CONF_NAME="damascus-run.conf"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/damascus/target}"

STARTED_AT=$SECONDS
STEP=0
STEPS=7

# ---------------------------------------------------------------------------------------------- output

step() {
  STEP=$((STEP + 1))
  printf '\n==> [%d/%d] %s\n' "$STEP" "$STEPS" "$*"
}
info() { printf '    %s\n' "$*"; }
warn() { printf '    WARNING: %s\n' "$*" >&2; }
die() {
  printf '\nERROR: %s\n' "$1" >&2
  shift
  local line
  for line in "$@"; do printf '       %s\n' "$line" >&2; done
  exit 1
}

# Runs a build command with its output going to .run/build.log only; on failure shows the log's tail.
build_quietly() {
  local what="$1"
  shift
  local t0=$SECONDS
  printf '\n$ %s\n' "$*" >>"$BUILD_LOG"
  if ! "$@" >>"$BUILD_LOG" 2>&1; then
    printf '\n----- last 40 lines of %s -----\n' "$BUILD_LOG" >&2
    tail -n 40 "$BUILD_LOG" >&2
    printf -- '-----\n' >&2
    die "$what failed (full log: $BUILD_LOG)."
  fi
  info "$what: done in $((SECONDS - t0))s"
}

# ------------------------------------------------------------------------------------- users and paths

is_root() { [ "$(id -u)" -eq 0 ]; }

# The OS user that owns (or will own) the cluster: postgres when we are root (initdb refuses root).
cluster_user() {
  if [ -d "$PGDATA" ]; then
    stat -c %U "$PGDATA"
  elif is_root; then
    echo postgres
  else
    id -un
  fi
}

# Runs a command as the cluster's OS user. runuser keeps the environment (unlike sudo's env_reset),
# which is how ANTHROPIC_API_KEY reaches the postmaster without being written anywhere.
as_cluster_user() {
  local user
  user="$(cluster_user)"
  if [ "$user" = "$(id -un)" ]; then
    "$@"
  elif is_root; then
    (cd / && runuser -u "$user" -- "$@")
  else
    die "the cluster in $PGDATA belongs to OS user '$user', not to you ($(id -un))." \
      "Run make as root or as '$user', or remove $PGDATA to start over."
  fi
}

# Single-quotes a value for postgresql.conf.
conf_quote() { printf "'%s'" "${1//\'/\'\'}"; }

# Unix sockets are limited to ~107 bytes of path; Debian's default /var/run/postgresql may not be ours.
socket_dir() {
  local sock="$RUN_DIR/.s.PGSQL.$PORT"
  if [ "${#sock}" -gt 100 ]; then echo /tmp; else echo "$RUN_DIR"; fi
}

pgbin() { echo "$BINDIR/$1"; }

pg_running() { [ -f "$PGDATA/PG_VERSION" ] && as_cluster_user "$(pgbin pg_ctl)" status -D "$PGDATA" >/dev/null 2>&1; }

# psql as superuser postgres over the unix socket; trust auth, so no password.
sql() { "$(pgbin psql)" -X -q -v ON_ERROR_STOP=1 -h "$(socket_dir)" -p "$PORT" -U postgres "$@"; }

# ----------------------------------------------------------------------------------------------- stop

stop_fakellm() {
  if [ -f "$FAKELLM_PID" ]; then
    local pid
    pid="$(cat "$FAKELLM_PID")"
    # Only signal the pid if it still is our fakellm, not some process that reused the number.
    if [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q fakellm; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      info "stopped the stand-in LLM (fakellm, pid $pid)"
    else
      info "the stand-in LLM (pid ${pid:-?}) was not running; removed its stale pid file"
    fi
    rm -f "$FAKELLM_PID"
  fi
}

stop_all() {
  BINDIR="$("$PG_CONFIG" --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)"
  local did=0
  if pg_running; then
    as_cluster_user "$(pgbin pg_ctl)" stop -D "$PGDATA" -m fast -w >/dev/null
    info "stopped the damascus cluster ($PGDATA)"
    did=1
  fi
  if [ -f "$FAKELLM_PID" ]; then
    stop_fakellm
    did=1
  fi
  if [ "$did" -eq 0 ]; then info "nothing to stop: no damascus cluster or stand-in LLM is running"; fi
  if [ -d "$PGDATA" ]; then info "data kept in $PGDATA (make run starts it again; rm -rf .run to forget it)"; fi
}

# ------------------------------------------------------------------------------------------ the steps

check_prerequisites() {
  [ -x "$PG_CONFIG" ] || die "pg_config not found at $PG_CONFIG." \
    "Install PostgreSQL 15 (make deps does it) or set PG_CONFIG=/path/to/pg_config."
  BINDIR="$("$PG_CONFIG" --bindir)"
  local version
  version="$("$PG_CONFIG" --version)"
  case "$version" in
    "PostgreSQL 15"*) ;;
    *) die "$PG_CONFIG is $version; damascus is built for PostgreSQL 15." ;;
  esac
  command -v cargo >/dev/null || die "cargo not found on PATH." "Install Rust (https://rustup.rs), then run make run again."
  cargo pgrx --version >/dev/null 2>&1 || die "cargo-pgrx is not installed." "Run 'make deps' (make run does it first)."
  if is_root; then
    id postgres >/dev/null 2>&1 || die "running as root, but there is no 'postgres' OS user to own the cluster." \
      "Install the postgresql-15 package (make deps does it), which creates that user."
  fi

  mkdir -p "$RUN_DIR"
  : >"$BUILD_LOG"
  local user
  user="$(cluster_user)"
  if is_root && [ "$user" != root ]; then
    # The server writes its socket, lock file and log into .run/, so its owner must own .run/.
    chown "$user:" "$RUN_DIR"
    # ...and must be able to walk from / down to the repo.
    if ! runuser -u "$user" -- test -x "$RUN_DIR"; then
      local dir="$RUN_DIR" blocker=""
      while [ "$dir" != / ]; do
        if ! runuser -u "$user" -- test -x "$dir"; then blocker="$dir"; fi
        dir="$(dirname "$dir")"
      done
      die "the '$user' OS user cannot reach $RUN_DIR (it cannot enter ${blocker:-a parent directory})." \
        "The cluster runs as '$user' and keeps its data, socket and log under the repo, so every directory" \
        "on the way must be searchable by it. Either allow that:  chmod o+x ${blocker:-<that directory>}" \
        "or clone the repo somewhere world-searchable (e.g. /srv/damascus or /opt/damascus) and run make run there."
    fi
  fi
}

build_and_install() {
  step "Building and installing the extension (cargo pgrx install; output in .run/build.log)"
  info "first build takes several minutes; later ones reuse $CARGO_TARGET_DIR"
  BINDIR="$("$PG_CONFIG" --bindir)"
  if pg_running; then
    # Never change the library under a running server: a file rewritten in place (as `sudo cp` does) breaks
    # the code its processes have mapped, and new backends would load a second copy. Step 4 restarts it anyway;
    # if the build fails, the cluster stays stopped until the next successful `make run`.
    as_cluster_user "$(pgbin pg_ctl)" stop -D "$PGDATA" -m fast -w >/dev/null
    info "stopped the running damascus cluster first, so no server sees its library replaced"
  fi
  local args=(cargo pgrx install --pg-config "$PG_CONFIG")
  is_root || args+=(--sudo)
  build_quietly "cargo pgrx install" "${args[@]}"
  info "installed $("$PG_CONFIG" --pkglibdir)/damascus.so"
}

LLM_URL=""
LLM_KIND=""

start_fakellm() {
  build_quietly "cargo build -p fakellm" cargo build -p fakellm
  local bin="$CARGO_TARGET_DIR/debug/fakellm"
  [ -x "$bin" ] || die "cargo built fakellm but $bin is missing."
  stop_fakellm >/dev/null
  : >"$FAKELLM_LOG"
  # setsid + nohup: it outlives this script and a Ctrl-C in the terminal, like the cluster does.
  setsid nohup "$bin" --addr 127.0.0.1:0 >>"$FAKELLM_LOG" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$FAKELLM_PID"
  for _ in $(seq 100); do
    LLM_URL="$(sed -n 's/^fakellm listening on \(http:[^ ]*\)$/\1/p' "$FAKELLM_LOG" | head -n 1)"
    [ -n "$LLM_URL" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$LLM_URL" ]; then
    tail -n 20 "$FAKELLM_LOG" >&2 || true
    die "fakellm did not start (log: $FAKELLM_LOG)."
  fi
}

choose_llm() {
  step "Choosing the LLM"
  if [ -n "${DAMASCUS_LLM_URL:-}" ]; then
    stop_fakellm
    LLM_URL="$DAMASCUS_LLM_URL"
    LLM_KIND=custom
    info "LLM: $LLM_URL (from DAMASCUS_LLM_URL, wire format ${DAMASCUS_LLM_PROVIDER:-anthropic})"
    if [ -n "${ANTHROPIC_API_KEY:-}" ]; then
      info "ANTHROPIC_API_KEY is passed to the server's environment (not written to any file)"
    else
      warn "ANTHROPIC_API_KEY is not set, so requests carry no x-api-key header (the real API and fakellm answer 401)"
    fi
  elif [ -n "${ANTHROPIC_API_KEY:-}" ]; then
    stop_fakellm
    LLM_URL="https://api.anthropic.com"
    LLM_KIND=real
    info "LLM: the real Anthropic API at $LLM_URL (key from ANTHROPIC_API_KEY)"
    info "the key reaches the server only through its environment; it is not written to any file"
    info "(so a restart by hand, without ANTHROPIC_API_KEY set, leaves the worker without a key)"
  else
    LLM_KIND=fake
    info "neither DAMASCUS_LLM_URL nor ANTHROPIC_API_KEY is set: starting the offline stand-in"
    start_fakellm
    info ""
    info "*** An OFFLINE STAND-IN LLM (fakellm) is answering at $LLM_URL, NOT a real model. ***"
    info "*** Its specs are canned text. Set ANTHROPIC_API_KEY to use the real API.          ***"
  fi
}

init_cluster() {
  step "Preparing the cluster in .run/pgdata (port $PORT)"
  local user
  user="$(cluster_user)"
  if [ -d "$PGDATA" ] && [ ! -f "$PGDATA/PG_VERSION" ]; then
    warn "$PGDATA exists but holds no cluster (an interrupted first run?); recreating it"
    rm -rf "$PGDATA"
  fi
  if [ -f "$PGDATA/PG_VERSION" ]; then
    [ "$(cat "$PGDATA/PG_VERSION")" = 15 ] || die "$PGDATA holds a PostgreSQL $(cat "$PGDATA/PG_VERSION") cluster, not 15." \
      "Remove it (make stop; rm -rf .run/pgdata) and run make run again."
    info "reusing the existing cluster (owner: $user)"
  else
    info "initdb as OS user '$user' (superuser role 'postgres', trust auth on the socket and 127.0.0.1 only)"
    build_quietly "initdb" as_cluster_user "$(pgbin initdb)" -D "$PGDATA" -U postgres -E UTF8 --locale=C \
      --auth-local=trust --auth-host=trust
    as_cluster_user sh -c "cat >'$PGDATA/pg_hba.conf'" <<'EOF'
# Written by scripts/run.sh: a local development cluster, no passwords, nothing beyond this machine.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
EOF
    echo "include_if_exists = '$CONF_NAME'" | as_cluster_user sh -c "cat >>'$PGDATA/postgresql.conf'"
  fi

  local sockdir
  sockdir="$(socket_dir)"
  if [ "$sockdir" != "$RUN_DIR" ]; then
    warn "the socket path under $RUN_DIR would be too long for a unix socket; using /tmp for the socket"
  fi
  # Rewritten on every run, so a changed port or LLM takes effect. The API key is never put here.
  {
    echo "# Written by scripts/run.sh on every 'make run'; change scripts/run.sh, not this file."
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $PORT"
    echo "unix_socket_directories = $(conf_quote "$sockdir")"
    echo "shared_preload_libraries = 'damascus'"
    echo "damascus.database = '$DB'"
    echo "damascus.naptime = 500"
    echo "damascus.llm_url = $(conf_quote "$LLM_URL")"
    echo "damascus.llm_provider = $(conf_quote "${DAMASCUS_LLM_PROVIDER:-anthropic}")"
    if [ "$LLM_KIND" = fake ]; then
      # fakellm, like the real API, answers 401 without an x-api-key header; any value will do for it.
      echo "damascus.llm_api_key = 'offline-stand-in-needs-no-real-key'"
    fi
    echo "logging_collector = on"
    echo "log_directory = $(conf_quote "$RUN_DIR")"
    echo "log_filename = 'postgres.log'"
    echo "log_rotation_age = 0"
    echo "log_rotation_size = 0"
    echo "log_file_mode = 0644"
  } | as_cluster_user sh -c "cat >'$PGDATA/$CONF_NAME'"
  info "settings in .run/pgdata/$CONF_NAME: shared_preload_libraries = 'damascus', damascus.database = '$DB', damascus.naptime = 500"
}

start_cluster() {
  step "Starting PostgreSQL (log: .run/postgres.log)"
  if pg_running; then
    info "the cluster is running; restarting it so the freshly installed library is loaded"
    as_cluster_user "$(pgbin pg_ctl)" stop -D "$PGDATA" -m fast -w >/dev/null
  fi
  # -l catches what the server says before its logging collector takes over, into the same file.
  if ! as_cluster_user "$(pgbin pg_ctl)" start -D "$PGDATA" -l "$PG_LOG" -w -t 60 >/dev/null; then
    printf '\n----- last 30 lines of %s -----\n' "$PG_LOG" >&2
    tail -n 30 "$PG_LOG" >&2 || true
    printf -- '-----\n' >&2
    die "PostgreSQL did not start (log: $PG_LOG)." \
      "If the port is taken, choose another: DAMASCUS_PORT=28816 make run"
  fi
  info "PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}') is up on 127.0.0.1:$PORT (socket in $(socket_dir))"
}

create_extension() {
  step "Creating database '$DB' and the extension"
  if [ "$(sql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    sql -d postgres -c "CREATE DATABASE $DB"
    info "created database '$DB'"
  else
    info "database '$DB' exists"
  fi
  # A version is frozen only once released: while the installed script of this version differs from the one
  # this database was created with (an earlier make run of unreleased work), create the extension afresh.
  local script sum
  script="$("$PG_CONFIG" --sharedir)/extension/damascus--$(sed -n "s/^default_version = '\(.*\)'/\1/p" \
    "$("$PG_CONFIG" --sharedir)/extension/damascus.control").sql"
  sum="$(md5sum "$script" | cut -d' ' -f1)"
  if [ "$(cat "$RUN_DIR/extension.md5" 2>/dev/null)" != "$sum" ] &&
    [ "$(sql -d "$DB" -tAc "SELECT 1 FROM pg_extension WHERE extname = 'damascus'")" = 1 ]; then
    warn "the install script of this damascus version changed since '$DB' was created (unreleased work):"
    warn "creating the extension afresh; the demo's tickets and cycles are dropped."
    sql -d "$DB" -c "SET client_min_messages = warning; DROP EXTENSION damascus CASCADE"
  fi
  sql -d "$DB" -c "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS damascus"
  echo "$sum" >"$RUN_DIR/extension.md5"
  # A cluster from an earlier make run may have an older version: bring it up to the installed library.
  sql -d "$DB" -c "SET client_min_messages = warning; ALTER EXTENSION damascus UPDATE"
  info "extension damascus $(sql -d "$DB" -tAc "SELECT extversion FROM pg_extension WHERE extname = 'damascus'") is created"
}

TICKET_IDS=""

submit_tickets() {
  step "Submitting sample tickets"
  # With the stand-in, markers in the text pick how it answers that ticket (see fakellm --help); with a real
  # model the same tickets go out without them.
  local slow="" missing="" reject=""
  if [ "$LLM_KIND" = fake ]; then
    slow=" [fakellm:slow=2000]"
    missing=" [fakellm:missing=Test Command]"
    reject=" [fakellm:reject]"
  fi
  TICKET_IDS="$(sql -d "$DB" -tA -v slow="$slow" -v missing="$missing" -v reject="$reject" <<'EOF'
SELECT string_agg(id::text, ',' ORDER BY id) FROM (
  SELECT damascus_submit('Add a health endpoint',
                         'GET /healthz returns 200 and the git sha of the running build as JSON.' || :'slow') AS id
  UNION ALL
  SELECT damascus_submit('Rate-limit the login form',
                         'After 5 failed logins from one IP within 10 minutes, answer 429 for 15 minutes.', 5)
  UNION ALL
  SELECT damascus_submit('Export tickets as CSV',
                         'A CSV download of all tickets with id, title, state and created_at, newest first.' || :'slow')
  UNION ALL
  SELECT damascus_submit('Soft-delete tickets',
                         'Deleting a ticket moves it to an archive table instead of losing it.' || :'missing')
  UNION ALL
  SELECT damascus_submit('Show build version in the footer',
                         'Every page footer shows the version and short git sha, e.g. "v1.4.2 (3f9c2ab)".' || :'reject')
) AS submitted;
EOF
)"
  [ -n "$TICKET_IDS" ] || die "damascus_submit returned no ids."
  info "submitted tickets $TICKET_IDS ('Rate-limit the login form' has priority 5, so it is claimed first)"
  if [ "$LLM_KIND" = fake ]; then
    info "Each ticket goes refine_spec -> implement -> review (new -> specified -> implemented -> done)."
    info "What the markers in four of them make the stand-in do:"
    info "- 'Add a health endpoint' and 'Export tickets as CSV' carry [fakellm:slow=2000]: good answers after 2s,"
    info "  so you can see a ticket held by a worker (claimed_by) while its LLM call runs."
    info "- 'Soft-delete tickets' carries [fakellm:missing=Test Command]: every spec lacks the Test Command"
    info "  section, so damascus refuses it (spec_wrong), retries, and after 3 refused answers marks it failed."
    info "- 'Show build version in the footer' carries [fakellm:reject]: the review rejects every change, so it goes"
    info "  back to implement with the reviewer's reasons as feedback, and fails after the third rejection."
    info "The other three should reach 'done'."
  fi
}

# One frame of the live view: progress toward done, the queue by state, calls in flight, the last cycles.
live_frame() {
  local ids="$1" elapsed="$2"
  watch_sql -tA -F ' ' -c "
    SELECT format('damascus live, %ss: %s of %s sample tickets finished (done %s, failed %s)  [%s%s]',
                  $elapsed, count(*) FILTER (WHERE state IN ('done', 'failed', 'cancelled')), count(*),
                  count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed'),
                  repeat('#', (20 * count(*) FILTER (WHERE state IN ('done', 'failed', 'cancelled')) / greatest(count(*), 1))::int),
                  repeat('.', 20 - (20 * count(*) FILTER (WHERE state IN ('done', 'failed', 'cancelled')) / greatest(count(*), 1))::int))
    FROM damascus.tickets WHERE id = ANY ('$ids'::bigint[])"
  printf '%s\n' "queue (damascus.queue):"
  watch_sql -tA -F ' ' -c "
    SELECT format('  %-12s %-12s %3s tickets  %2s claimed  %2s waiting  %2s backing off',
                  q.state, coalesce(q.phase, '-'), q.tickets, q.claimed, q.waiting, q.backing_off)
    FROM damascus.queue AS q
    ORDER BY coalesce((SELECT p.position FROM damascus.phases AS p WHERE p.name = q.phase), 1000), q.state"
  printf '%s\n' "in flight (damascus.worker_status):"
  watch_sql -tA -F ' ' -c "
    SELECT format('  %s: %s', w.worker,
                  coalesce((SELECT string_agg(format('ticket %s %s (%s s)', c->>'ticket_id', c->>'phase', c->>'seconds'), ', ')
                            FROM jsonb_array_elements(w.calls) AS c), 'idle'))
    FROM damascus.worker_status AS w ORDER BY w.pid"
  printf '%s\n' "last cycles (damascus.cycles):"
  watch_sql -tA -F ' ' -c "
    SELECT format('  #%s ticket %s %-11s %-16s %s ms', y.id, y.ticket_id, y.phase, coalesce(y.verdict, '(running)'),
                  coalesce(y.llm_ms::text, '-'))
    FROM (SELECT * FROM damascus.cycles WHERE ticket_id = ANY ('$ids'::bigint[]) ORDER BY id DESC LIMIT 6) AS y
    ORDER BY y.id"
}

# The live view: redrawn in place every second on a terminal, printed when it changes otherwise (a log, CI).
watch_tickets() {
  local limit
  if [ "$LLM_KIND" = fake ]; then limit="${DAMASCUS_WATCH_SECONDS:-60}"; else limit="${DAMASCUS_WATCH_SECONDS:-300}"; fi
  step "Watching the workers move them (live, up to ${limit}s)"
  local ids="{$TICKET_IDS}" prev="" frame open t0=$SECONDS lines=0 tty=0
  [ -t 1 ] && tty=1
  while :; do
    frame="$(live_frame "$ids" "$((SECONDS - t0))")"
    if [ "$tty" = 1 ]; then
      [ "$lines" -gt 0 ] && printf '\033[%dA\033[J' "$lines"
      sed 's/^/    /' <<<"$frame"
      lines="$(wc -l <<<"$frame")"
    elif [ "$(sed 1d <<<"$frame")" != "$prev" ]; then
      printf '\n'
      sed 's/^/    /' <<<"$frame"
      prev="$(sed 1d <<<"$frame")"
    fi
    open="$(watch_sql -tAc "SELECT count(*) FROM damascus.tickets
                               WHERE id = ANY ('$ids'::bigint[]) AND state NOT IN ('done', 'failed', 'cancelled')")"
    if [ "$open" = 0 ]; then
      info ""
      info "all sample tickets reached 'done' or 'failed' in $((SECONDS - t0))s"
      break
    fi
    if [ $((SECONDS - t0)) -ge "$limit" ]; then
      info ""
      warn "$open sample ticket(s) are not finished after ${limit}s; the worker keeps going in the background."
      explain_idle_worker
      break
    fi
    sleep 1
  done

  printf '\n    The tickets:\n'
  sql -d "$DB" -P footer=off -c "
    SELECT id, left(title, 34) AS title, state, attempts, rejections, coalesce(last_verdict, '') AS last_verdict
    FROM damascus.tickets WHERE id = ANY ('$ids'::bigint[]) ORDER BY id" | sed '/^ *$/d; s/^/    /'
  printf '\n    Cycles that ran on them (damascus.cycles; each cycle is three committed transactions):\n'
  sql -d "$DB" -P footer=off -c "
    SELECT id, ticket_id, phase, attempt, coalesce(verdict, '(running)') AS verdict, claim_xid, phase_xid, verdict_xid,
           llm_ms, left(coalesce(detail, ''), 40) AS detail
    FROM damascus.cycles WHERE ticket_id = ANY ('$ids'::bigint[]) ORDER BY id" | sed '/^ *$/d; s/^/    /'
  printf '\n    What damascus_analyze() makes of it:\n'
  sql -d "$DB" -P footer=off -c "SELECT severity, finding FROM damascus_analyze()" | sed '/^ *$/d; s/^/    /'
}

# sql for the watch loop: if the server went away under us, say so with the log instead of a bare psql error.
watch_sql() {
  local out
  if out="$(sql -d "$DB" "$@" 2>&1)"; then
    printf '%s\n' "$out"
    return
  fi
  printf '%s\n' "$out" >&2
  if ! pg_running; then
    printf '\n----- last 25 lines of %s -----\n' "$PG_LOG" >&2
    tail -n 25 "$PG_LOG" >&2 || true
    printf -- '-----\n' >&2
    die "the server stopped while the tickets were being watched (log above; full log: $PG_LOG)." \
      "make run starts it again."
  fi
  die "a query on the tickets failed (see above)."
}

# Printed when tickets did not move: is a worker process there, and what did the log say about damascus?
explain_idle_worker() {
  local workers
  workers="$(sql -d postgres -tAc "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'damascus%' OR application_name LIKE 'damascus worker%'")"
  info "damascus worker processes seen in pg_stat_activity: $workers"
  info "recent damascus lines in .run/postgres.log:"
  grep -i -E 'damascus|panic|FATAL' "$PG_LOG" | tail -n 15 | sed 's/^/      /' || true
}

print_howto() {
  local elapsed=$((SECONDS - STARTED_AT))
  cat <<EOF

==> Done in ${elapsed}s. The cluster$([ "$LLM_KIND" = fake ] && echo " and the stand-in LLM") keep running.

    Connect:
      psql -h 127.0.0.1 -p $PORT -U postgres -d $DB

    Try:
      SELECT damascus_submit('Add a logout button', 'POST /logout ends the session and redirects to /');
      SELECT * FROM damascus_tick();      -- run one cycle now, in addition to the background worker
      SELECT * FROM damascus.queue;       -- and damascus.phase_stats, damascus.worker_status
      SELECT * FROM damascus_analyze();   -- findings with evidence and a hint
      SELECT id, state, last_verdict FROM damascus.tickets;
      SELECT ticket_id, phase, verdict, llm_ms, detail FROM damascus.cycles ORDER BY id DESC LIMIT 5;
      SELECT name, from_state, transitions, max_tokens FROM damascus.phases ORDER BY position;

    Server log: .run/postgres.log$([ "$LLM_KIND" = fake ] && echo "   stand-in LLM ($LLM_URL) log: .run/fakellm.log")
    Stop everything: make stop   (make run again rebuilds and restarts; data stays in .run/pgdata)
    'make test' stops this cluster first: its pgrx tests reinstall damascus.so in place (sudo cp), which
    would crash a server that has the library loaded; 'make run' afterwards brings this one back.
EOF
  if [ "$LLM_KIND" = fake ]; then
    echo "    Reminder: answers come from the OFFLINE STAND-IN (fakellm), not a real model."
  fi
}

main() {
  case "${1:-run}" in
    stop)
      stop_all
      return
      ;;
    run) ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      return
      ;;
    *) die "unknown command '$1'; usage: scripts/run.sh [run|stop]" ;;
  esac
  check_prerequisites
  build_and_install
  choose_llm
  init_cluster
  start_cluster
  create_extension
  submit_tickets
  watch_tickets
  print_howto
}

main "$@"
