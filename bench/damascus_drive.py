#!/usr/bin/env python3
"""Drives one damascus drain for bench/damascus.sh under bench/peers/measure.py: prints READY, waits for GO on
stdin, enables refine_spec (the tickets were loaded with it disabled, so loading is not timed), then polls until
N tickets are done and exits. It never touches a ticket itself: the static workers inside Postgres do the work.

  damascus_drive.py --dsn DSN --n N [--poll-ms 20]
"""

import argparse
import sys
import time

import psycopg


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--poll-ms", type=int, default=20)
    args = ap.parse_args()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        print("READY", flush=True)
        sys.stdin.readline()
        conn.execute("UPDATE damascus.phases SET enabled = true WHERE name = 'refine_spec'")
        while True:
            # The N timed tickets are ids 1..N (loaded first into an emptied table). Counting their accepted
            # verdicts in damascus.cycles (N rows at most) keeps the poll's own cost flat however many tickets
            # wait behind; a count over damascus.tickets would scan them all fifty times a second.
            (done,) = conn.execute(
                "SELECT count(*) FROM damascus.cycles WHERE verdict = 'spec_ok' AND ticket_id <= %s",
                (args.n,),
            ).fetchone()
            if done >= args.n:
                return 0
            time.sleep(args.poll_ms / 1000)


if __name__ == "__main__":
    sys.exit(main())
