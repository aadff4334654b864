#!/usr/bin/env python3
"""W3 by placement: interleaved rounds of apex (another build), apex (this one) and libuv.

    python3 bench/ab_w3.py ROUNDS SIZE /tmp/base-lib [OUT.json]

Each round runs `BENCH_PLACEMENT=1 nice -n -20 build/bench/bench_PEER W3 SIZE` for
"base" (bench_apex with LD_LIBRARY_PATH set to the directory holding the other
build's libapex.so.0), "new" (bench_apex as linked) and "libuv", the order
rotating each round. Prints, per peer: the whole-run p50's median and range, how
many runs had a p50 over 20 us (a cross-CPU sample's), the cross-CPU share per
run (runs with none, runs past 50 %, the largest), the per-mode p50s, the CPU per
sample; then how many rounds each peer's p50 was the lower (bench/analysis.md,
"W3: a sequential host's push and the watcher's CPU").
"""
import json
import os
import statistics
import subprocess
import sys


def fmt(xs):
    return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})" if xs else "-"


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds, size, base = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    peers = [("base", "apex", base), ("new", "apex", None), ("libuv", "libuv", None)]
    res = []
    for r in range(rounds):
        for name, prog, lib in peers[r % 3:] + peers[:r % 3]:
            env = dict(os.environ, BENCH_PLACEMENT="1")
            if lib:
                env["LD_LIBRARY_PATH"] = lib
            out = subprocess.run(["nice", "-n", "-20", f"build/bench/bench_{prog}", "W3", size],
                                 capture_output=True, text=True, env=env, check=True).stdout
            d = {"peer": name, "round": r}
            for line in out.splitlines():
                kv = dict(t.split("=", 1) for t in line.split())
                d[kv["figure"]] = float(kv["value"])
            res.append(d)
    if len(sys.argv) > 4:
        with open(sys.argv[4], "w") as f:
            json.dump(res, f)
    by = {}
    for d in res:
        by.setdefault(d["peer"], []).append(d)
    for p, v in by.items():
        sh = [d["cross_cpu_share"] for d in v]
        print(f"{p}: p50 {fmt([d['p50'] for d in v])}, over 20 us in {sum(d['p50'] > 20000 for d in v)}"
              f" of {len(v)}; cross share: none in {sum(x == 0 for x in sh)}, past 50 % in"
              f" {sum(x > 50 for x in sh)}, largest {max(sh):.1f} %, mean {statistics.mean(sh):.2f} %;"
              f" p50 same-CPU {fmt([d['p50_same_cpu'] for d in v if d['cross_cpu_share'] < 100])},"
              f" cross-CPU {fmt([d['p50_cross_cpu'] for d in v if d['cross_cpu_share'] > 0])};"
              f" CPU per sample {fmt([d['cpu_ns_per_task'] for d in v])}")
    for a, b in (("new", "base"), ("new", "libuv"), ("base", "libuv")):
        lower = sum(1 for x, y in zip(by[a], by[b]) if x["p50"] < y["p50"])
        print(f"{a} p50 lower than {b} in {lower} of {rounds} rounds")


if __name__ == "__main__":
    main()
