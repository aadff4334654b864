#!/usr/bin/env python3
"""A/B of two builds of libapex on one bench_apex workload, rounds interleaved.

    python3 bench/ab_lib.py W4 200 10 /tmp/base-lib [build/bench/bench_apex]

Runs `nice -n -20 BENCH WORKLOAD SIZE` ROUNDS times against each library:
"base" with LD_LIBRARY_PATH set to the directory holding the other build's
libapex.so.0 (bench_apex's RUNPATH yields to it), "new" with the library the
binary was linked to; the order alternates each round, so a phase of a
shared machine falls on both. Prints each figure's median and range per
build, then every round's values (bench/analysis.md cites its runs).
"""
import os
import statistics
import subprocess
import sys


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    wl, size, rounds, base = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    bench = sys.argv[5] if len(sys.argv) > 5 else "build/bench/bench_apex"
    res = {"base": {}, "new": {}}
    for r in range(rounds):
        for v in ("base", "new") if r % 2 == 0 else ("new", "base"):
            env = dict(os.environ)
            if v == "base":
                env["LD_LIBRARY_PATH"] = base
            out = subprocess.run(["nice", "-n", "-20", bench, wl, size], capture_output=True,
                                 text=True, env=env, check=True).stdout
            for line in out.splitlines():
                kv = dict(t.split("=", 1) for t in line.split())
                res[v].setdefault(kv["figure"], []).append(float(kv["value"]))
    for v in ("base", "new"):
        print(v, "  ".join(f"{f}: median {statistics.median(x):.0f} ({min(x):.0f}-{max(x):.0f})"
                           for f, x in res[v].items()))
    for f in res["base"]:
        print(f, "base", [int(x) for x in res["base"][f]], "new", [int(x) for x in res["new"][f]])


if __name__ == "__main__":
    main()
