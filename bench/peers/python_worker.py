#!/usr/bin/env python3
"""The architecture damascus replaces: an external worker process talking to Postgres over a socket.

Each cycle is the same three committed transactions damascus runs inside Postgres, here as three
round trips from outside (autocommit, one statement each):

  CLAIM    take the best claimable ticket (FOR UPDATE SKIP LOCKED) and stamp claimed_at/claimed_by and a
           fencing token from peers.claim_tokens;
  PHASE    insert the cycles row recording the attempt and read the ticket's title/body, only while the
           claim still stands;
  (HTTP)   POST the refine_spec prompt to the Anthropic Messages endpoint with no transaction open;
  VERDICT  judge the answer (the six ## sections present, in order), then move the ticket and clear its
           claim only if the claim token still matches, and finish the cycles row.

Usage: python_worker.py --dsn DSN --llm-url http://127.0.0.1:PORT [--processes N] [--until-empty] [--wait-go]

With --processes N it forks N worker processes (multiprocessing), each with its own connection and its own
HTTP connection. With --until-empty each exits once nothing is claimable and no unclaimed ticket waits in
state 'new' (a ticket waiting out an LLM-error delay keeps it polling). Exit status 0 when every process
ended cleanly. One summary line per process goes to stderr.

With --wait-go (used by run.sh's measure.py) every process first imports, connects and opens its session, then
the parent prints READY on stdout and waits for a line on stdin before any process claims: the measurement
covers the drain of a running worker fleet, not interpreter start-up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import sys
import threading
import time
import urllib.parse

import psycopg

PHASE = "refine_spec"
FROM_STATE = "new"
OK_STATE = "specified"
MAX_ATTEMPTS = 3
MAX_TOKENS = 4000
MODEL = "claude-sonnet-4-5"
ANTHROPIC_VERSION = "2023-06-01"
# damascus's refine_spec phase, verbatim (sql/damascus--0.1.0--0.2.0.sql), so the request is the same size.
SYSTEM_PROMPT = (
    "You turn a software ticket into an implementation spec. Answer with Markdown only, using exactly these "
    "level-2 sections in this order: ## Summary, ## Context, ## Acceptance Criteria (a numbered list), "
    "## TDD Plan, ## Out of Scope, ## Test Command (one shell command that runs the tests). Every section must "
    "have content. Do not wrap the whole answer in a code fence."
)
SECTIONS = ("Summary", "Context", "Acceptance Criteria", "TDD Plan", "Out of Scope", "Test Command")
STALE_CLAIM_MINUTES = 15
NAPTIME_S = 0.05
HTTP_TIMEOUT_S = 60.0

CLAIM_SQL = """
WITH candidate AS (
    SELECT t.id
    FROM peers.tickets AS t
    WHERE t.state = %(state)s
      AND (t.claimed_at IS NULL OR t.claimed_at < now() - make_interval(mins => %(stale)s))
      AND (t.not_before IS NULL OR t.not_before <= now())
    ORDER BY t.priority DESC, t.created_at, t.id
    LIMIT 1
    FOR UPDATE OF t SKIP LOCKED
)
UPDATE peers.tickets AS t
SET claimed_at  = now(),
    claimed_by  = %(worker)s,
    claim_token = nextval('peers.claim_tokens'),
    updated_at  = now()
FROM candidate
WHERE t.id = candidate.id
RETURNING t.id, t.claim_token, txid_current()
"""

PHASE_SQL = """
WITH ticket AS (
    SELECT t.id, t.title, t.body, t.attempts, t.llm_errors
    FROM peers.tickets AS t
    WHERE t.id = %(id)s AND t.claim_token = %(token)s
), cycle AS (
    INSERT INTO peers.cycles (ticket_id, phase, attempt, worker, claim_token, claim_xid, phase_xid)
    SELECT ticket.id, %(phase)s, ticket.attempts + 1, %(worker)s, %(token)s, %(claim_xid)s, txid_current()
    FROM ticket
    RETURNING id
)
SELECT cycle.id, ticket.title, ticket.body, ticket.attempts, ticket.llm_errors
FROM ticket CROSS JOIN cycle
"""

# damascus's apply_verdict.sql, less the columns the peers' tables do not have.
VERDICT_SQL = """
WITH moved AS (
    UPDATE peers.tickets AS t
    SET state = CASE WHEN %(retry)s THEN t.state ELSE %(state)s END,
        attempts = CASE WHEN %(retry)s THEN t.attempts ELSE %(attempts)s END,
        llm_errors = CASE WHEN %(retry)s THEN t.llm_errors + 1 ELSE 0 END,
        not_before = CASE WHEN %(retry)s THEN now() + make_interval(secs => %(delay)s) ELSE NULL END,
        outputs = CASE WHEN %(output)s::text IS NULL THEN t.outputs
                       ELSE t.outputs || jsonb_build_object(%(phase)s::text, %(output)s::text) END,
        last_verdict = %(verdict)s,
        last_error = %(detail)s,
        claimed_at = NULL,
        claimed_by = NULL,
        claim_token = NULL,
        updated_at = now()
    WHERE t.id = %(id)s AND t.claim_token = %(token)s
    RETURNING t.state
), finished AS (
    UPDATE peers.cycles AS c
    SET verdict = CASE WHEN EXISTS (SELECT 1 FROM moved) THEN %(verdict)s ELSE 'claim_lost' END,
        detail = CASE WHEN EXISTS (SELECT 1 FROM moved) THEN %(detail)s
                      ELSE format('claim token %%s was superseded before the verdict; the late verdict %%s was not applied',
                                  %(token)s, %(verdict)s) END,
        verdict_xid = txid_current(),
        finished_at = now(),
        http_status = %(http_status)s,
        input_tokens = %(input_tokens)s,
        output_tokens = %(output_tokens)s,
        llm_ms = %(llm_ms)s
    WHERE c.id = %(cycle)s
    RETURNING c.verdict
)
SELECT (SELECT state FROM moved), (SELECT verdict FROM finished)
"""

WAITING_SQL = """
SELECT EXISTS (SELECT 1 FROM peers.tickets WHERE state = %(state)s AND claimed_at IS NULL)
"""


def missing_section(text: str) -> str | None:
    """The first of SECTIONS not found, in order, among the answer's `## ` headings; None if all are."""
    headings = [line[3:].strip().lower() for line in text.splitlines() if line.startswith("## ")]
    pos = 0
    for section in SECTIONS:
        want = section.lower()
        while pos < len(headings) and headings[pos] != want:
            pos += 1
        if pos == len(headings):
            return section
        pos += 1
    return None


class Llm:
    """One HTTP connection per process, reused while the server keeps it open (fakellm closes it after
    each answer, so http.client reconnects transparently)."""

    def __init__(self, base_url: str, api_key: str):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise SystemExit(f"--llm-url must be http://host:port, got {base_url!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.path = (u.path.rstrip("/") or "") + "/v1/messages"
        self.headers = {
            "content-type": "application/json",
            "x-api-key": api_key,
            "anthropic-version": ANTHROPIC_VERSION,
        }
        self.conn: http.client.HTTPConnection | None = None

    def call(self, ticket_id: int, title: str, body: str) -> tuple[int, dict | None, str]:
        """(status, parsed body or None, error text). Status 0 means no HTTP response."""
        payload = json.dumps(
            {
                "model": MODEL,
                "max_tokens": MAX_TOKENS,
                "system": SYSTEM_PROMPT,
                "messages": [{"role": "user", "content": f"Ticket #{ticket_id}: {title}\n\n{body}"}],
            }
        ).encode()
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT_S)
            try:
                self.conn.request("POST", self.path, body=payload, headers=self.headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                if resp.will_close:
                    self.conn.close()
                status = resp.status
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                # A kept-alive connection the server had already closed: reconnect once.
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    return 0, None, f"transport: {e}"
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()
                self.conn = None
                return 0, None, f"transport: {e}"
        try:
            doc = json.loads(raw)
        except ValueError:
            return status, None, f"HTTP {status}: body is not JSON"
        if status != 200:
            err = doc.get("error", {}) if isinstance(doc, dict) else {}
            return status, None, f"HTTP {status}: {err.get('type')}: {err.get('message')}"
        return status, doc, ""


def run_worker(index: int, dsn: str, llm_url: str, api_key: str, until_empty: bool, ready=None) -> int:
    """One worker process's loop; `ready()` is called once connected, and returns when work may start."""
    worker = f"python-{socket.gethostname()}-{os.getpid()}"
    llm = Llm(llm_url, api_key)
    counts = {"cycles": 0, "spec_ok": 0, "spec_wrong": 0, "llm_error": 0, "claim_lost": 0, "failed": 0}
    with psycopg.connect(dsn, autocommit=True, application_name=worker) as conn:
        if ready is not None:
            ready()
        started = time.monotonic()
        while True:
            # CLAIM (one transaction)
            row = conn.execute(
                CLAIM_SQL, {"state": FROM_STATE, "stale": STALE_CLAIM_MINUTES, "worker": worker}
            ).fetchone()
            if row is None:
                if until_empty and not conn.execute(WAITING_SQL, {"state": FROM_STATE}).fetchone()[0]:
                    break
                time.sleep(NAPTIME_S)
                continue
            ticket_id, token, claim_xid = row
            # PHASE (one transaction): record the attempt, read the inputs
            ph = conn.execute(
                PHASE_SQL,
                {"id": ticket_id, "token": token, "phase": PHASE, "worker": worker, "claim_xid": claim_xid},
            ).fetchone()
            if ph is None:
                counts["claim_lost"] += 1
                continue
            cycle_id, title, body, attempts, llm_errors = ph
            counts["cycles"] += 1
            # HTTP, no transaction open
            t0 = time.monotonic()
            status, doc, error = llm.call(ticket_id, title, body)
            llm_ms = int((time.monotonic() - t0) * 1000)
            # judge
            params = {
                "id": ticket_id, "token": token, "cycle": cycle_id, "phase": PHASE,
                "retry": False, "state": FROM_STATE, "attempts": attempts, "delay": 0.0, "output": None,
                "http_status": status or None, "input_tokens": None, "output_tokens": None, "llm_ms": llm_ms,
            }
            if doc is None:
                params.update(retry=True, verdict="llm_error", detail=error,
                              delay=float(min(600, 10 * 2 ** min(llm_errors, 16))))
            else:
                usage = doc.get("usage") or {}
                params.update(input_tokens=usage.get("input_tokens"), output_tokens=usage.get("output_tokens"))
                text = "".join(b.get("text", "") for b in doc.get("content") or [] if b.get("type") == "text")
                missing = missing_section(text) if doc.get("stop_reason") != "max_tokens" else "(truncated)"
                if missing is None:
                    params.update(verdict="spec_ok", detail=None, state=OK_STATE, attempts=0, output=text)
                else:
                    tries = attempts + 1
                    params.update(verdict="spec_wrong", detail=f"missing section: {missing}", attempts=tries,
                                  state="failed" if tries >= MAX_ATTEMPTS else FROM_STATE)
            # VERDICT (one transaction): fenced on the claim token
            new_state, verdict = conn.execute(VERDICT_SQL, params).fetchone()
            counts[verdict if verdict in counts else "claim_lost"] += 1
            if new_state == "failed":
                counts["failed"] += 1
    secs = time.monotonic() - started
    print(
        f"python worker {index} ({worker}): {counts['cycles']} cycles in {secs:.2f}s "
        + " ".join(f"{k}={v}" for k, v in counts.items() if k != "cycles"),
        file=sys.stderr,
    )
    return 0


def announce_and_wait_go() -> None:
    print("READY", flush=True)
    if not sys.stdin.readline():
        raise SystemExit("stdin closed before GO")


def _child(index: int, args: argparse.Namespace, barrier, go) -> None:
    def ready() -> None:
        barrier.wait()
        go.wait()

    sys.exit(run_worker(index, args.dsn, args.llm_url, args.api_key, args.until_empty, ready))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True, help="libpq connection string to the database holding schema peers")
    ap.add_argument("--llm-url", required=True, help="base URL of the Anthropic-compatible server, e.g. http://127.0.0.1:8787")
    ap.add_argument("--api-key", default=os.environ.get("PEERS_LLM_API_KEY", "bench"))
    ap.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--until-empty", action="store_true", help="exit when nothing is claimable")
    ap.add_argument("--wait-go", action="store_true", help="once connected, print READY and wait for a stdin line")
    args = ap.parse_args(argv)
    if args.processes < 1:
        ap.error("--processes must be at least 1")
    if args.processes == 1:
        return run_worker(0, args.dsn, args.llm_url, args.api_key, args.until_empty,
                          announce_and_wait_go if args.wait_go else None)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(args.processes + 1, timeout=120)
    go = ctx.Event()
    procs = [ctx.Process(target=_child, args=(i, args, barrier, go), name=f"python-worker-{i}")
             for i in range(args.processes)]
    for p in procs:
        p.start()
    rc = 0
    try:
        barrier.wait()  # every process is connected
        if args.wait_go:
            announce_and_wait_go()
        go.set()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                print(f"{p.name} exited with {p.exitcode}", file=sys.stderr)
                rc = 1
    except threading.BrokenBarrierError:
        print("a worker process failed to start", file=sys.stderr)
        for p in procs:
            p.terminate()
        rc = 1
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        rc = 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
