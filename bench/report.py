#!/usr/bin/env python3
"""Turns the lines of bench/peers/run.sh and bench/damascus.sh into bench/RESULTS.md: one table with the
ratios damascus/peer, the targets of the in-flight issue and whether each is met, and the raw figures."""

import argparse
import datetime


def rows(path, tag):
    out = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts and parts[0] == tag:
                out.append(parts[1:])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--core", required=True)
    ap.add_argument("--peers", required=True)
    ap.add_argument("--damascus", required=True)
    ap.add_argument("--n", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--analysis", help="hand-written reading of the profile, appended as is")
    a = ap.parse_args()

    drains = []
    for r in rows(a.peers, "PEER") + rows(a.damascus, "PEER"):
        name, procs, items, secs, rate, pg, worker, llm, correct, note = r
        drains.append(dict(name=name, procs=procs, items=int(items), secs=float(secs), rate=float(rate),
                           cpu=float(pg) + float(worker), pg=float(pg), worker=float(worker), llm=float(llm),
                           correct=correct, note=note))
    # Keyed by depth, e.g. "1000000", or "1000000+busy" (100,000 backing off and 1,000 claimed ahead).
    claims = {d: (float(p50), float(p99)) for d, p50, p99 in rows(a.damascus, "CLAIM")}
    rss = {what: int(kb) for what, kb, _ in rows(a.damascus, "RSS")}
    anon = {what: int(kb) for what, _, kb in rows(a.damascus, "RSS")}

    def dam(cfg, behind="behind=0", llm="llm=fast"):
        for d in drains:
            if d["name"] == "damascus" and d["procs"] == cfg and behind in d["note"] and llm in d["note"]:
                return d
        return None

    peers = [d for d in drains if d["name"] != "damascus"]
    best = max(peers, key=lambda d: d["rate"]) if peers else None
    d18 = dam("1x8")
    out = []
    p = out.append
    p("# damascus benchmark results")
    p("")
    p(f"Measured by `make bench` on {datetime.date.today().isoformat()}: {a.machine}; release build; "
      f"N = {a.n} refine_spec items; the LLM is the offline stand-in (fakellm) on 127.0.0.1, so these are the "
      "costs of the orchestration, not of a model. CPU ms per item: every process of the cluster (backends, "
      "damascus workers, checkpointer ...) plus, for the peers, their own worker processes; fakellm's CPU apart.")
    p("")
    p("## Side by side")
    p("")
    p("| system | procs / workers x in flight | items/s | CPU ms/item | of which Postgres | LLM CPU ms/item | correct | items/s vs best peer | CPU vs best peer |")
    p("|---|---|---|---|---|---|---|---|---|")
    for d in drains:
        label = d["name"] + ("" if "behind=0" in d["note"] or d["name"] != "damascus" else " (1M waiting behind)")
        if "slow=200" in d["note"]:
            continue
        ratio = f"{d['rate'] / best['rate']:.2f}x" if best else "-"
        cpu_ratio = f"{d['cpu'] / best['cpu']:.2f}x" if best and best["cpu"] > 0 else "-"
        p(f"| {label} | {d['procs']} | {d['rate']:.1f} | {d['cpu']:.2f} | {d['pg']:.2f} | {d['llm']:.2f} | {d['correct']} | {ratio} | {cpu_ratio} |")
    p("")
    if best:
        p(f"Best peer: {best['name']} x{best['procs']} at {best['rate']:.1f} items/s and {best['cpu']:.2f} CPU ms/item.")
        p("")
    p("## Targets")
    p("")
    p("| target | measured | met |")
    p("|---|---|---|")
    if best and d18:
        r = d18["rate"] / best["rate"]
        p(f"| 1 worker x 8 in flight >= 1.5x the best peer's throughput | {r:.2f}x | {'yes' if r >= 1.5 else 'no'} |")
        c = d18["cpu"] / best["cpu"]
        p(f"| ... at <= 0.5x its CPU per item | {c:.2f}x | {'yes' if c <= 0.5 else 'no'} |")
    for cfg, ideal in (("1x16", 80.0), ("1x64", 320.0)):
        d = dam(cfg, llm="slow=200")
        if d:
            share = d["rate"] / ideal
            p(f"| 200 ms LLM, {cfg}: >= 90% of the ideal {ideal:.0f}/s | {d['rate']:.1f}/s = {share:.0%} | {'yes' if share >= 0.9 else 'no'} |")
    behind = dam("1x8", behind="behind=1000000")
    if behind and d18:
        s = behind["rate"] / d18["rate"]
        p(f"| draining with 1,000,000 waiting >= 2/3 the rate with none | {s:.2f} | {'yes' if s >= 2 / 3 else 'no'} |")
    for deep, what in (("1000000", "1M waiting"), ("1000000+busy", "1M waiting, 100k backing off and 1k claimed ahead")):
        if "1000" in claims and deep in claims:
            s = claims[deep][0] / claims["1000"][0]
            p(f"| claim p50 at {what} within 1.5x of 1k | {s:.2f}x | {'yes' if s <= 1.5 else 'no'} |")
    if "idle" in rss:
        p(f"| worker RSS idle <= 32 MB | {rss['idle'] / 1024:.1f} MB | {'yes' if rss['idle'] <= 32 * 1024 else 'no'} |")
    if "64 in flight" in rss:
        p(f"| worker RSS with 64 calls in flight <= 64 MB | {rss['64 in flight'] / 1024:.1f} MB | {'yes' if rss['64 in flight'] <= 64 * 1024 else 'no'} |")
    if "after 10000 cycles" in anon and "after 20000 cycles" in anon:
        per = (anon["after 20000 cycles"] - anon["after 10000 cycles"]) * 1024 / 10000
        p(f"| no growth per cycle (private memory, 10,000 -> 20,000 cycles) | {per:.0f} bytes/cycle | {'yes' if per < 100 else 'no'} |")
    p("")
    p("## Claim latency (the claim statement alone, rolled back, no worker running)")
    p("")
    p("| tickets waiting | p50 ms | p99 ms |")
    p("|---|---|---|")
    for depth in sorted(claims, key=lambda d: (int(d.split("+")[0]), d)):
        n, _, busy = depth.partition("+")
        label = f"{int(n):,}" + (" (100,000 of them backing off and 1,000 claimed, ahead of the rest)" if busy else "")
        p(f"| {label} | {claims[depth][0]:.3f} | {claims[depth][1]:.3f} |")
    p("")
    for idle, busy in rows(a.damascus, "TICK"):
        p("## damascus_tick() latency (pgbench, 200 calls, 1 client; a dynamic background worker per call that finds work; none when there is nothing to claim)")
        p("")
        p(f"- nothing to claim: {idle} ms")
        p(f"- one full cycle (claim, phase, call, verdict): {busy} ms")
        p("")
    p("## Worker memory")
    p("")
    p("VmRSS includes the shared buffers the worker has touched, which grows with the tables it writes until it")
    p("covers shared_buffers (128 MB here); RssAnon is its private memory, where a leak would show.")
    p("")
    p("| when | VmRSS MB | RssAnon MB |")
    p("|---|---|---|")
    for what in rss:
        p(f"| {what} | {rss[what] / 1024:.1f} | {anon[what] / 1024:.1f} |")
    p("")
    profile = rows(a.damascus, "PROFILE")
    if profile:
        p("## Where the time goes: 1 worker x 8 in flight, profiled")
        p("")
        p("`perf record -e cpu-clock -a -g` during one more drain of N items (its speed is not reported). Share of")
        p("all samples by process name and binary (postgres: the cluster's processes, the worker and the driver's")
        p("backend included; damascus-llm: the worker's HTTP threads):")
        p("")
        p("| process | binary | % of samples |")
        p("|---|---|---|")
        for comm, dso, pct in profile:
            p(f"| {comm} | {dso} | {float(pct):.1f} |")
        p("")
        p("Hottest functions of the cluster's processes and the HTTP threads (% of their samples, with callees / self):")
        p("")
        p("| with callees % | self % | function |")
        p("|---|---|---|")
        for children, self_, sym in rows(a.damascus, "PROFSYM"):
            p(f"| {float(children):.1f} | {float(self_):.1f} | `{sym.replace('|', '/')}` |")
        p("")
    if a.analysis:
        with open(a.analysis) as f:
            p(f.read().rstrip())
        p("")
    p("## Raw lines")
    p("")
    p("```")
    for d in drains:
        p(f"{d['name']} {d['procs']}: {d['items']} items in {d['secs']:.2f} s; {d['note']}")
    p("```")
    p("")
    p("## Pure core (cargo bench --bench core)")
    p("")
    p("```")
    with open(a.core) as f:
        p(f.read().rstrip())
    p("```")
    print("\n".join(out))


if __name__ == "__main__":
    main()
