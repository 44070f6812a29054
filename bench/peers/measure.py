#!/usr/bin/env python3
"""Runs one peer command and measures it; used by run.sh.

  measure.py --postmaster PID --llm-pid PID --llm-log FILE [--timeout SECS] [--go] -- COMMAND ARGS...

With --go, COMMAND is expected to start up, print READY on its stdout and then wait for a line on its stdin;
the span measured starts when READY is read (GO is written right after the snapshots), so process start-up,
imports and connecting are left out. Without it the span starts when COMMAND is launched.

Prints one tab-separated line on stdout:

  seconds  pg_ms  worker_ms  llm_ms  llm_requests  llm_ok  exit_code  timed_out

* seconds: wall time from the start of the span to COMMAND's exit;
* pg_ms: CPU (user+system) of the whole cluster over that span: the postmaster itself plus every child of it
  (backends, autovacuum, checkpointer, walwriter ...), read from /proc/<pid>/stat in clock ticks. Children
  that exit during the span are counted through the postmaster's cutime/cstime (it reaps them), so
  short-lived backends are not lost; after COMMAND exits we wait (up to 5 s) for its backends to be reaped;
* worker_ms: CPU of COMMAND and all its descendants (getrusage(RUSAGE_CHILDREN), so forked worker
  processes count once they are joined), less what its process tree had used when it printed READY;
* llm_ms: CPU of the fakellm process (all its threads) over the span;
* llm_requests / llm_ok: lines fakellm logged over the span (one per request) / those answered 200;
* timed_out: 1 when COMMAND was killed for exceeding --timeout.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import threading
import time

TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state, 1 the ppid ...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def own_ticks(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime + stime


def children_of(ppid: int) -> dict[int, list[str]]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = stat_fields(int(name))
        if f is not None and int(f[1]) == ppid:
            out[int(name)] = f
    return out


def cluster_ticks(postmaster: int) -> tuple[int, int]:
    """(CPU ticks of the postmaster, its reaped children and its live children; number of live children)."""
    pm = stat_fields(postmaster)
    if pm is None:
        raise SystemExit(f"measure: postmaster {postmaster} is gone")
    kids = children_of(postmaster)
    total = own_ticks(pm) + int(pm[13]) + int(pm[14])  # + cutime + cstime (reaped children)
    total += sum(own_ticks(f) for f in kids.values())
    return total, len(kids)


def tree_ticks(root: int) -> int:
    """CPU ticks of `root` and its live descendants, with the children they already reaped."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = stat_fields(int(name))
            if f is not None:
                procs[int(name)] = f
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        f = procs.get(pid)
        if f is None:
            continue
        total += own_ticks(f) + int(f[13]) + int(f[14])
        todo.extend(p for p, g in procs.items() if int(g[1]) == pid)
    return total


def process_ticks(pid: int) -> int:
    f = stat_fields(pid)
    if f is None:
        raise SystemExit(f"measure: process {pid} is gone")
    return own_ticks(f)


def log_counts(path: str) -> tuple[int, int]:
    total = ok = 0
    with open(path, "rb") as f:
        for line in f:
            total += 1
            if b" -> 200 " in line:
                ok += 1
    return total, ok


def children_cpu_ms() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * 1000.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--postmaster", type=int, required=True)
    ap.add_argument("--llm-pid", type=int, required=True)
    ap.add_argument("--llm-log", required=True)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--go", action="store_true", help="start the span at the child's READY line, then send GO")
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command")

    child: subprocess.Popen | None = None

    def stop_child(signum, _frame):
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop_child)
    signal.signal(signal.SIGINT, stop_child)

    def snapshot():
        pg, kids = cluster_ticks(args.postmaster)
        return pg, kids, process_ticks(args.llm_pid), log_counts(args.llm_log)

    def no_ready() -> int:
        print(f"measure: no READY from {cmd[0]} within {args.ready_timeout:.0f}s", file=sys.stderr)
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        rc = child.wait()
        print("\t".join(["0.000", "0", "0", "0", "0", "0", str(rc if rc != 0 else 98), "0"]))
        return 0

    # The peer's backends are gone again when the cluster is back to this many children.
    _, kids_base = cluster_ticks(args.postmaster)
    cpu0 = children_cpu_ms()
    ready_ms = 0.0
    timed_out = 0
    if not args.go:
        (pg0, _, llm0, (req0, ok0)) = snapshot()
        t0 = time.monotonic()
        child = subprocess.Popen(cmd, start_new_session=True)
    else:
        child = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ready = threading.Event()

        def forward_stdout():
            for line in child.stdout:
                if not ready.is_set() and line.strip() == b"READY":
                    ready.set()
                else:
                    sys.stderr.buffer.write(line)
                    sys.stderr.flush()

        threading.Thread(target=forward_stdout, daemon=True).start()
        limit = time.monotonic() + args.ready_timeout
        while not ready.wait(0.05):
            if child.poll() is not None or time.monotonic() > limit:
                break
        if not ready.is_set():
            return no_ready()
        ready_ms = tree_ticks(child.pid) * TICK_MS
        (pg0, _, llm0, (req0, ok0)) = snapshot()
        t0 = time.monotonic()
        child.stdin.write(b"GO\n")
        child.stdin.flush()
    try:
        rc = child.wait(args.timeout)
    except subprocess.TimeoutExpired:
        timed_out = 1
        os.killpg(child.pid, signal.SIGTERM)
        try:
            rc = child.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            rc = child.wait()
    seconds = time.monotonic() - t0
    cpu1 = children_cpu_ms()
    # Let the peer's backends finish exiting and be reaped, so their CPU lands in the postmaster's cutime.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        _, kids = cluster_ticks(args.postmaster)
        if kids <= kids_base:
            break
        time.sleep(0.02)
    pg1, _ = cluster_ticks(args.postmaster)
    llm1 = process_ticks(args.llm_pid)
    req1, ok1 = log_counts(args.llm_log)
    print(
        "\t".join(
            str(v)
            for v in (
                f"{seconds:.3f}",
                f"{(pg1 - pg0) * TICK_MS:.0f}",
                f"{cpu1 - cpu0 - ready_ms:.0f}",
                f"{(llm1 - llm0) * TICK_MS:.0f}",
                req1 - req0,
                ok1 - ok0,
                rc,
                timed_out,
            )
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
