#!/usr/bin/env python3
"""Turns the lines of bench/run.py into docs/performance.md.

    python3 bench/report.py --in FILE --out docs/performance.md [--analysis bench/analysis.md]

Per workload: each peer's figures (median over the runs, min-max spread),
CPU per task beside the wall figures, Apex's ratio to every peer, and for a
workload run at several sizes (W7) each peer's growth from the smallest size
to the largest; then the issues' targets computed from the same figures with
pass/fail, then the failed runs and the runs a peer does not implement. The
output depends only on the input (no clock, no environment), so the same
results give the same page. Standard library only.
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile

# ------------------------------------------------------------------ targets
# A term is (factor, peer, figure[, size[, workload]]): factor x the median of
# that figure of that peer, at that size (default or None: the largest size
# the peer ran), in that workload (default: the target's own). The figure
# "size" is the size itself. A term can also be ("ratio", term, term): the
# first over the second (a growth). A bound is a term or a number. A target
# whose terms were not measured fails. An optional sixth element names a
# floor peer: a server that does no work, driven by the same client in the
# same run (W16's null). When the same target with the floor peer in place
# of the left term's peer fails too, the result says so: no server can meet
# that target with that client on that machine (the target stays, and fails
# honestly).
TARGETS = [
    # workload, left term, op, right bound, note[, floor peer]
    ("W1", (1, "apex", "tasks_per_s"), ">=", (1, "libuv", "tasks_per_s"), ""),
    # Issue 9: CPU per task at or below libuv's in both of its harness styles,
    # and throughput at least that of the preallocated one.
    ("W1", (1, "apex", "cpu_ns_per_task"), "<=", (1, "libuv", "cpu_ns_per_task"),
     "libuv with a malloc per request"),
    ("W1", (1, "apex", "cpu_ns_per_task"), "<=", (1, "libuv_prealloc", "cpu_ns_per_task"),
     "libuv with preallocated requests"),
    ("W1", (1, "apex", "tasks_per_s"), ">=", (1.0, "libuv_prealloc", "tasks_per_s"), ""),
    ("W2", (1, "apex", "p50"), "<=", (1.1, "floor", "p50"), ""),
    ("W2", (1, "apex", "p99"), "<=", (1, "libuv", "p99"), ""),
    ("W3", (1, "apex", "p50"), "<=", (1, "libuv", "p50"), ""),
    ("W3q", (1, "apex", "p50"), "<=", (2, "floor", "p50"), ""),
    ("W3q", (1, "apex", "p99"), "<=", (1.5, "libuv", "p99"), ""),
    ("W4", (1, "apex", "p50"), "<=", (0.75, "libuv", "p50"), ""),
    ("W4", (1, "apex", "p99"), "<=", (1, "libuv", "p99"), ""),
    ("W5", (1, "apex", "bytes_per_task"), "<=", (1, "libuv", "bytes_per_task"), ""),
    ("W6", (1, "apex", "ns_per_update"), "<=", 100, ""),
    ("W6", (20, "apex", "ns_per_update"), "<=", (1, "glib", "ns_per_update"), ""),
    ("W6", (1, "apex", "delivered"), "<", (0.01, "apex", "size"), "under 1 % of the updates"),
    ("W6", (1, "apex", "final"), "==", 1, "the last update reached the host"),
    ("W6t", (1, "apex", "ns_per_update"), "<=", (2, "apex", "ns_per_update", None, "W6"),
     "one node of a 1,000-node tree per report, against W6's flat report"),
    ("W7", (1, "apex", "ns_per_task", 1000000), "<=", (1.5, "apex", "ns_per_task", 1000),
     "wall time per task flat from 1k to 1M pending"),
    ("W7", ("ratio", (1, "apex", "cpu_ns_per_task", 1000000),
            (1, "apex", "cpu_ns_per_task", 1000)), "<=", 1.5,
     "CPU per task grows at most 1.5× from 1k to 1M pending"),
    ("W7", (1, "apex", "cpu_ns_per_task", 1000000), "<=", 1000,
     "create and cancel a pending task in at most 1 µs of CPU"),
    ("W7", (1, "apex", "bytes_per_task", 1000000), "<=", 250,
     "a pending task in at most 250 bytes"),
    ("W8", (1, "apex", "wall_ms"), "<=", (0.2, "python", "wall_ms"), ""),
    # Issue 10: the http plugin's download keeps up with curl itself.
    ("Whttp", (1, "apex", "mib_per_s"), ">=", (0.9, "curl", "mib_per_s"),
     "http.download against curl -o, same server, same run"),
    # Issue 10: the scheduler.
    ("W1", (1, "apex_limits", "tasks_per_s"), ">=", (0.95, "apex", "tasks_per_s"),
     "a global and a per-plugin limit set"),
    ("W1", (1, "apex_limits", "tasks_per_s"), ">=", (1, "libuv", "tasks_per_s"),
     "a global and a per-plugin limit set"),
    # Issue 12: tracing on (ratio 1.0, OTLP/JSON lines to a file) against off.
    ("W1", (1, "apex_traced", "tasks_per_s"), ">=", (0.8, "apex", "tasks_per_s"),
     "every task traced, spans exported to a file"),
    ("W9", (1, "apex", "p99"), "<=", (0.05, "apex_fifo", "p99"),
     "the second key's p99 wait, against FIFO"),
    ("W10", (1, "apex", "cpu_ns_per_task"), "<=", (1.5, "apex", "w1_cpu_ns_per_task"),
     "1,000 keys limited to 1 each, against W1's workload run just before and after it "
     "in the same process"),
    ("W10", (1, "apex", "bytes_per_task"), "<=", (1.2, "apex", "bytes_per_task", None, "W5"),
     "a queued task with a key, against W5's"),
    # Issue 12: operation metrics (on by default) cost at most 5 %.
    ("W1", (1, "apex", "tasks_per_s"), ">=", (0.95, "apex_nometrics", "tasks_per_s"),
     "metrics on (the default) against off, same run"),
    ("W6", (1, "apex_nometrics", "ns_per_update"), ">=", (0.95, "apex", "ns_per_update"),
     "metrics on (the default) against off, same run: on at most 1/0.95 x off's time"),
    ("W1", (1, "apex", "tasks_per_s"), ">=", (1, "apex_mutexmx", "tasks_per_s"),
     "Apex's metrics against the same counters kept one mutex per metric"),
    # Issue 11: child tasks.
    ("W11", (1, "apex", "ns_per_child"), "<=", (1.5, "apex", "ns_per_task", None, "W1"),
     "a child spawned and awaited costs at most 1.5x a W1 task"),
    ("Wroll", (1, "apex", "host_cpu_ns_per_delivered"), "<=",
     (2, "apex", "single_host_cpu_ns_per_delivered"),
     "host CPU per delivered update of a 1,000-child parent, against one task alone"),
    # Issue 13: durable tasks on SQLite.
    ("W13", (1, "store", "tasks_per_s"), ">=", 30000,
     "durable no-op tasks end to end, group commit"),
    ("W13", (1, "store", "tasks_per_s"), ">=", (1, "store", "single_tasks_per_s"),
     "group commit against one transaction per write, same run"),
    ("W14", (1, "store", "checkpoints_per_s"), ">=", 50000,
     "100 tasks checkpointing in a loop"),
    ("Wrecover", (1, "store", "recover_ms"), "<=", 2000,
     "100,000 unfinished tasks running again"),
    # Issue 14: the shared queue, 3 apex worker processes on one store.
    ("W15", (1, "worker_pg", "tasks_per_s"), ">=", 20000,
     "no-op durable tasks claimed and completed by 3 workers on PostgreSQL"),
    ("W15", (1, "worker_pg", "tasks_per_s"), ">=", (1, "worker_pg", "naive_tasks_per_s"),
     "3 workers against the naive one-row claim+complete loop, same run"),
    ("W15", (1, "worker_pg", "p50"), "<=", 5000000,
     "claim latency (enqueue to start), 3 idle workers woken by NOTIFY"),
    # Issue 15: apex mcp against the official TypeScript SDK's McpServer, both
    # driven by the SDK's own client (whose cost dominates) and by a raw
    # newline-JSON client (bench/mcp_raw_client.c; the servers' own cost). The
    # targets name the null peer (a server answering with canned bytes at once)
    # as their floor: what the client alone allows (for the SDK client's rows
    # it is at or under the bound, bench/analysis.md, W16).
    ("W16", (1, "apex", "stdio_calls_per_s"), ">=", (2, "mcp_sdk", "stdio_calls_per_s"),
     "stdio calls in a row, SDK client", "null"),
    ("W16", (1, "apex", "stdio_p50"), "<=", (0.5, "mcp_sdk", "stdio_p50"),
     "stdio round trip, SDK client", "null"),
    ("W16", (1, "apex", "raw_stdio_calls_per_s"), ">=", (2, "mcp_sdk", "raw_stdio_calls_per_s"),
     "stdio calls in a row, raw client", "null"),
    ("W16", (1, "apex", "raw_stdio_p50"), "<=", (0.5, "mcp_sdk", "raw_stdio_p50"),
     "stdio round trip, raw client", "null"),
    ("W16", (1, "apex", "http_calls_per_s"), ">=", (2, "mcp_sdk", "http_calls_per_s"),
     "HTTP, 100 in flight, SDK client", "null"),
    ("W16", (1, "apex", "raw_http_calls_per_s"), ">=", (2, "mcp_sdk", "raw_http_calls_per_s"),
     "HTTP, 100 in flight, raw client", "null"),
]

# Which way is better for each figure; figures not listed get no ratio.
BETTER = {
    "tasks_per_s": "higher",
    "ns_per_task": "lower", "cpu_ns_per_task": "lower", "p50": "lower", "p99": "lower",
    "p999": "lower", "bytes_per_task": "lower", "ns_per_update": "lower",
    "cpu_ns_per_update": "lower", "host_cpu_ms": "lower",
    "wall_ms": "lower", "cpu_ms": "lower", "peak_rss_kb": "lower",
    "mib_per_s": "higher",
    "ns_per_child": "lower", "cpu_ns_per_child": "lower", "ms_to_last_cancelled": "lower",
    "host_cpu_ns_per_delivered": "lower", "single_host_cpu_ns_per_delivered": "lower",
    "single_tasks_per_s": "higher", "naive_tasks_per_s": "higher", "single_cpu_ns_per_task": "lower",
    "checkpoints_per_s": "higher", "cpu_ns_per_checkpoint": "lower",
    "recover_ms": "lower", "to_last_done_ms": "lower",
    "stdio_p50": "lower", "stdio_p99": "lower", "stdio_calls_per_s": "higher",
    "server_cpu_ns_per_call": "lower", "rss_bytes_per_open_call": "lower",
    "http_calls_per_s": "higher", "http_server_cpu_ns_per_call": "lower",
    "raw_stdio_p50": "lower", "raw_stdio_p99": "lower", "raw_stdio_calls_per_s": "higher",
    "raw_server_cpu_ns_per_call": "lower", "raw_server_main_cpu_ns_per_call": "lower",
    "raw_http_calls_per_s": "higher", "raw_http_server_cpu_ns_per_call": "lower",
    "server_cpu_ns_per_task": "lower",
}
# Figures that grow with SIZE: compared between peers only at equal sizes.
SIZE_DEPENDENT = {"delivered", "host_cpu_ms"}
# A flag holds only if it held in every run: its summary is the minimum.
FLAGS = {"final"}

WORKLOAD_ORDER = ["W1", "W2", "W3", "W3q", "W4", "W5", "W6", "W6t", "W7", "W8", "W9", "W10",
                  "Whttp", "W11", "W12", "Wroll", "W13", "W14", "Wrecover", "W15", "W16"]
WORKLOAD_TITLE = {
    "W1": "W1: throughput of no-op tasks",
    "W2": "W2: latency of one no-op task, submit to completion",
    "W3": "W3: cancelling a running task",
    "W3q": "W3q: cancelling a queued task",
    "W4": "W4: lateness of a 5 ms timeout",
    "W5": "W5: memory per queued task",
    "W6": "W6: progress updates",
    "W6t": "W6t: progress of a 1,000-node sub-task tree, one node per report",
    "W7": "W7: pending deferred tasks with a timeout, cancelled in random order",
    "W8": "W8: start-up of a one-shot command",
    "Whttp": "Whttp: a 1 GiB download from a loopback server, http.download against curl -o",
    "W9": "W9: fairness: 100 tasks of one key behind another's flood (wait to DONE)",
    "W10": "W10: 1,000,000 tasks across 1,000 concurrency keys limited to 1 each",
    "W11": "W11: one parent spawns 10,000 no-op children and waits for all",
    "W12": "W12: cancelling a parent of 10,000 pending deferred children (libuv: 10,000 timers)",
    "Wroll": "Wroll: host CPU per delivered update, 1,000 children of 10,000 updates each",
    "W13": "W13: durable no-op tasks on SQLite, group commit against a transaction per write",
    "W14": "W14: checkpoints of 100 durable tasks in a loop",
    "Wrecover": "Wrecover: recovering 100,000 unfinished durable tasks",
    "W15": "W15: a shared queue: no-op durable tasks through 3 apex worker processes on one store",
    "W16": "W16: MCP tool calls, apex mcp against the TypeScript SDK's McpServer",
}
# A sentence printed under a workload's table: what a peer there stands for
# when its name does not say it.
WORKLOAD_NOTES = {
    "W16": "Peer `null` is a server that does no work (`mcp_raw_client --serve`, "
           "`--serve-http`: canned answers at once): its rows are each client's own floor, "
           "the best any server could do with that client in this run.",
}
PEER_ORDER = ["apex", "apex_deferred", "apex_full", "apex_limits", "apex_fifo", "apex_nometrics",
              "apex_mutexmx", "apex_traced", "libuv",
              "libuv_prealloc", "glib", "gtask", "floor", "asyncio", "python", "apex_fsync", "curl",
              "store", "worker", "worker_pg", "mcp_sdk", "null"]
# CPU right after the wall figures it was measured with.
FIGURE_ORDER = ["tasks_per_s", "ns_per_task", "p50", "p99", "p999", "cpu_ns_per_task", "spans_dropped",
                "bytes_per_task", "ns_per_update", "cpu_ns_per_update", "delivered",
                "host_cpu_ms", "final", "mib_per_s", "wall_ms", "cpu_ms", "peak_rss_kb"]
META_ORDER = [
    ("date", "date (UTC)"), ("cpu", "CPU"), ("nproc", "cores"), ("kernel", "kernel"),
    ("os", "OS"), ("gcc", "compiler"), ("libuv", "libuv"), ("glib", "GLib"),
    ("python", "Python"), ("apex", "Apex"), ("commit", "commit"), ("dirty", "uncommitted changes"),
    ("build_type", "build type"), ("sanitize", "sanitizer"), ("loadavg", "load average at start"),
    ("mode", "sizes"), ("runs", "runs"), ("wall_s", "driver wall time (s)"),
    ("command", "command"),
]
OPS = {
    ">=": (lambda a, b: a >= b, "≥"),
    "<=": (lambda a, b: a <= b, "≤"),
    "<": (lambda a, b: a < b, "<"),
    ">": (lambda a, b: a > b, ">"),
    "==": (lambda a, b: a == b, "="),
}


# ------------------------------------------------------------------ parsing
def parse_kv(line):
    try:
        tokens = shlex.split(line, posix=True)
    except ValueError:
        return None
    out = {}
    for t in tokens:
        if "=" not in t:
            return None
        k, v = t.split("=", 1)
        out[k] = v
    return out or None


def to_int(s):
    try:
        return int(s)
    except (TypeError, ValueError):
        try:
            return int(float(s))
        except (TypeError, ValueError):
            return None


class Results:
    def __init__(self):
        self.meta = {}
        self.errors = []  # dicts, in file order
        self.not_run = []  # dicts of skipped= lines (exit 3), in file order
        self.values = {}  # (workload, peer, size, figure) -> [(run, value)]
        self.units = {}  # (workload, figure) -> unit
        self.skipped = 0

    def read(self, path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for raw in f:
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("meta "):
                    kv = parse_kv(line[5:])
                    if kv:
                        self.meta.update(kv)
                    else:
                        self.skipped += 1
                    continue
                kv = parse_kv(line)
                if kv is None:
                    self.skipped += 1
                elif "error" in kv:
                    self.errors.append(kv)
                elif "skipped" in kv:
                    self.not_run.append(kv)
                elif self.add(kv) is False:
                    self.skipped += 1

    def add(self, kv):
        try:
            w, peer, fig = kv["workload"], kv["peer"], kv["figure"]
            size = to_int(kv["size"])
            value = float(kv["value"])
        except (KeyError, ValueError):
            return False
        if size is None:
            return False
        self.values.setdefault((w, peer, size, fig), []).append((to_int(kv.get("run")), value))
        self.units.setdefault((w, fig), kv.get("unit", ""))
        return True

    def workloads(self):
        ws = ({k[0] for k in self.values} | {e.get("workload", "?") for e in self.errors}
              | {e.get("workload", "?") for e in self.not_run})
        return sorted(ws, key=lambda w: (WORKLOAD_ORDER.index(w) if w in WORKLOAD_ORDER
                                         else len(WORKLOAD_ORDER), w))

    def rows(self, w):
        """(peer, size) pairs measured in workload w, in display order."""
        pairs = {(k[1], k[2]) for k in self.values if k[0] == w}
        return sorted(pairs, key=lambda ps: (peer_key(ps[0]), ps[1]))

    def figures(self, w):
        figs = {k[3] for k in self.values if k[0] == w}
        return sorted(figs, key=lambda f: (FIGURE_ORDER.index(f) if f in FIGURE_ORDER
                                           else len(FIGURE_ORDER), f))

    def sizes(self, w, peer):
        return sorted({k[2] for k in self.values if k[0] == w and k[1] == peer})

    def summary(self, w, peer, size, fig):
        """(central, min, max, n) of a figure, or None if never measured."""
        vals = [v for _, v in self.values.get((w, peer, size, fig), [])]
        if not vals:
            return None
        central = min(vals) if fig in FLAGS else statistics.median(vals)
        return central, min(vals), max(vals), len(vals)


def peer_key(p):
    return (PEER_ORDER.index(p) if p in PEER_ORDER else len(PEER_ORDER), p)


# --------------------------------------------------------------- formatting
def num(v):
    """A figure for a human: thousands separated, three significant digits
    below 100, no float noise."""
    if v != v:  # NaN
        return "nan"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if v == int(v):
        return str(int(v))
    return f"{v:.3g}"


def ratio(v):
    if abs(v) >= 100:
        return f"{v:,.0f}×"
    return f"{v:.2f}×" if abs(v) >= 0.1 else f"{v:.2g}×"


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header, rows):
    out = ["| " + " | ".join(cell(h) for h in header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return out


def unit_of(res, w, fig):
    u = res.units.get((w, fig), "")
    return "" if u in ("", "flag", "bool") else u


def with_unit(v, unit):
    return f"{num(v)} {unit}".strip()


# ------------------------------------------------------------------ targets
def resolve(res, w, term, unit_hint=""):
    """(value, text) of a term or number (a number is in unit_hint); value
    None if not measured."""
    if not isinstance(term, tuple):
        if unit_hint == "×":
            return float(term), ratio(float(term))
        return float(term), with_unit(float(term), unit_hint)
    if term[0] == "ratio":
        a, atext = resolve(res, w, term[1])
        b, btext = resolve(res, w, term[2])
        if a is None or b is None or b == 0:
            return None, None
        return a / b, f"{ratio(a / b)} ({atext} ÷ {btext})"
    factor, peer, fig = term[0], term[1], term[2]
    size = term[3] if len(term) > 3 else None
    if len(term) > 4 and term[4]:
        w = term[4]
    sizes = res.sizes(w, peer)
    if size is None:
        size = sizes[-1] if sizes else None
    if size is None or size not in sizes:
        return None, None
    if fig == "size":
        base, unit = float(size), ""
    else:
        s = res.summary(w, peer, size, fig)
        if s is None:
            return None, None
        base, unit = s[0], unit_of(res, w, fig)
    value = factor * base
    if factor == 1:
        return value, with_unit(value, unit)
    return value, f"{with_unit(value, unit)} ({num(factor)} × {num(base)})"


def describe(term):
    if not isinstance(term, tuple):
        return num(term)
    if term[0] == "ratio":
        return f"{describe(term[1])} ÷ {describe(term[2])}"
    factor, peer, fig = term[0], term[1], term[2]
    at = f" at {term[3]:,}" if len(term) > 3 and term[3] is not None else ""
    where = f" in {term[4]}" if len(term) > 4 and term[4] else ""
    lead = "" if factor == 1 else f"{num(factor)} × "
    return f"{lead}{peer} {fig}{at}{where}"


def term_unit(res, w, term):
    """The unit a plain number compared with term is in ("×" for a ratio)."""
    if not isinstance(term, tuple):
        return ""
    if term[0] == "ratio":
        return "×"
    return unit_of(res, term[4] if len(term) > 4 and term[4] else w, term[2])


def targets_section(res):
    out = ["## Targets", "",
           "The issue's targets, computed from the medians above. A figure that "
           "was not measured fails its target.", ""]
    rows = []
    passed = 0
    for w, left, op, right, note, *floor in TARGETS:
        test, sym = OPS[op]
        text = f"{describe(left)} {sym} {describe(right)}"
        if note:
            text += f" ({note})"
        lv, ltext = resolve(res, w, left)
        rv, rtext = resolve(res, w, right, term_unit(res, w, left))
        if lv is None or rv is None:
            verdict = "fail (not measured)"
        elif test(lv, rv):
            verdict = "pass"
            passed += 1
        else:
            verdict = "fail"
        if floor and verdict == "fail":
            fv, ftext = resolve(res, w, (left[0], floor[0]) + tuple(left[2:]))
            if fv is not None and not test(fv, rv):
                verdict += (f" (even the {floor[0]} peer, a server that does no work, "
                            f"misses it: {ftext})")
        rows.append([w, text, ltext or "not measured", rtext or "not measured", verdict])
    out += table(["workload", "target", "measured", "bound", "result"], rows)
    out += ["", f"{passed} of {len(TARGETS)} targets pass.", ""]
    return out


# ----------------------------------------------------------------- sections
def workload_section(res, w):
    out = [f"### {WORKLOAD_TITLE.get(w, w)}", ""]
    figs = res.figures(w)
    if not figs:
        return out + ["No figures: every run of this workload failed (see Failed runs).", ""]
    header = ["peer", "size", "runs"] + [
        f"{f} ({unit_of(res, w, f)})" if unit_of(res, w, f) else f for f in figs]
    rows = []
    for peer, size in res.rows(w):
        runs = max((s[3] for s in (res.summary(w, peer, size, f) for f in figs) if s), default=0)
        row = [peer, f"{size:,}", str(runs)]
        for f in figs:
            s = res.summary(w, peer, size, f)
            if s is None:
                row.append("—")
            elif s[1] == s[2]:
                row.append(num(s[0]))
            else:
                row.append(f"{num(s[0])} ({num(s[1])}–{num(s[2])})")
        rows.append(row)
    out += table(header, rows)
    out += [""]
    if w in WORKLOAD_NOTES:
        out += [WORKLOAD_NOTES[w], ""]
    out += ratio_lines(res, w, figs)
    out += growth_lines(res, w, figs)
    return out


def ratio_lines(res, w, figs):
    """Apex against every other peer, figure by figure, at matching sizes:
    one row per peer (and size), one column per figure that has a better
    direction."""
    apex_sizes = res.sizes(w, "apex")
    figs = [f for f in figs if f in BETTER]
    if not apex_sizes or not figs:
        return []
    rows = []
    for peer, size in res.rows(w):
        if peer == "apex":
            continue
        row, any_cell = [peer, None], False
        for f in figs:
            if size in apex_sizes:
                asize = size
            elif len(apex_sizes) == 1 and f not in SIZE_DEPENDENT:
                asize = apex_sizes[0]  # per-task figures compare across sizes
            else:
                row.append("—")
                continue
            a = res.summary(w, "apex", asize, f)
            b = res.summary(w, peer, size, f)
            if a is None or b is None or b[0] == 0:
                row.append("—")
                continue
            r = a[0] / b[0]
            if r == 1:
                verdict = "equal"
            elif (r > 1) == (BETTER[f] == "higher"):
                verdict = "Apex better"
            else:
                verdict = "Apex worse"
            row.append(f"{ratio(r)} ({verdict})")
            row[1] = f"{asize:,}" if asize == size else f"{asize:,} vs {size:,}"
            any_cell = True
        if any_cell:
            rows.append(row)
    if not rows:
        return []
    header = ["peer", "size (Apex vs peer)"] + [f"{f}: {BETTER[f]} is better" for f in figs]
    return (["Apex ÷ peer, median over median:", ""] + table(header, rows) + [""])


def growth_lines(res, w, figs):
    """For a workload run at several sizes: each peer's per-task figures at
    its largest size over the same at its smallest (1.00× is flat)."""
    figs = [f for f in figs if f in BETTER and f not in SIZE_DEPENDENT]
    rows = []
    for peer in sorted({p for p, _ in res.rows(w)}, key=peer_key):
        sizes = res.sizes(w, peer)
        if len(sizes) < 2:
            continue
        lo, hi = sizes[0], sizes[-1]
        row, any_cell = [peer, f"{lo:,} → {hi:,}"], False
        for f in figs:
            a, b = res.summary(w, peer, hi, f), res.summary(w, peer, lo, f)
            if a is None or b is None or b[0] == 0:
                row.append("—")
                continue
            row.append(ratio(a[0] / b[0]))
            any_cell = True
        if any_cell:
            rows.append(row)
    if not rows:
        return []
    header = ["peer", "sizes"] + [f"{f}: growth" for f in figs]
    return (["Growth, each peer's median at its largest size ÷ at its smallest:", ""]
            + table(header, rows) + [""])


def machine_section(res):
    rows = [[label, res.meta[k]] for k, label in META_ORDER if k in res.meta]
    known = {k for k, _ in META_ORDER}
    rows += [[k, res.meta[k]] for k in sorted(res.meta) if k not in known]
    if not rows:
        return ["## Machine and versions", "", "Not recorded in the results.", ""]
    return ["## Machine and versions", ""] + table(["", ""], rows) + [""]


def failures_section(res):
    out = ["## Failed runs", ""]
    if not res.errors and not res.skipped:
        out += ["None.", ""]
    if res.errors:
        rows = [[e.get("workload", "?"), e.get("peer", "?"), e.get("size", "?"),
                 e.get("run", "?"), e.get("error", "")] for e in res.errors]
        out += table(["workload", "peer", "size", "run", "error"], rows) + [""]
    if res.skipped:
        out += [f"{res.skipped} line(s) of the results could not be read.", ""]
    if res.not_run:
        # One row per (workload, peer, size, reason): the runs say the same.
        seen, rows = set(), []
        for e in res.not_run:
            key = (e.get("workload", "?"), e.get("peer", "?"), e.get("size", "?"),
                   e.get("skipped", ""))
            if key not in seen:
                seen.add(key)
                rows.append(list(key))
        out += ["## Not implemented", "",
                "Runs whose program exited 3: this build of the peer does not implement the "
                "workload (its targets count as not measured).", ""]
        out += table(["workload", "peer", "size", "reason"], rows) + [""]
    return out


def render(res, analysis_text, source_name):
    out = [
        "# Performance: Apex and its peers",
        "",
        "The same workloads run by Apex and by its peers (libuv, GLib, Python asyncio and a "
        "hand-written floor), interleaved in one session of the benchmark driver "
        "(`bench/README.md` defines the peers, workloads and figures). Absolute times are "
        "noise on a shared machine; the claims are the ratios, measured in one run, on one "
        "machine, under the same conditions for every peer. Each cell is the median over the "
        "runs with the spread (min–max) in parentheses.",
        "",
        "Reproduce with `make bench && make bench-report` (this page was made from "
        f"`{source_name}`).",
        "",
    ]
    out += machine_section(res)
    out += ["## Results", ""]
    for w in res.workloads():
        out += workload_section(res, w)
    if not res.workloads():
        out += ["No results.", ""]
    out += targets_section(res)
    if analysis_text is not None:
        out += ["## Where the time goes", "", analysis_text.rstrip("\n"), ""]
    out += failures_section(res)
    return "\n".join(out).rstrip("\n") + "\n"


def write_atomic(path, text):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    ap = argparse.ArgumentParser(description="Write docs/performance.md from bench results.")
    ap.add_argument("--in", dest="inp", required=True, help="results of bench/run.py")
    ap.add_argument("--out", required=True, help="Markdown file to write")
    ap.add_argument("--analysis", help="hand-written profile notes, included if the file exists")
    args = ap.parse_args()
    res = Results()
    try:
        res.read(args.inp)
    except OSError as e:
        print(f"report: cannot read {args.inp}: {e.strerror}", file=sys.stderr)
        return 2
    analysis = None
    if args.analysis and os.path.isfile(args.analysis):
        with open(args.analysis, encoding="utf-8", errors="replace") as f:
            analysis = f.read()
    text = render(res, analysis, os.path.basename(args.inp))
    write_atomic(args.out, text)
    print(f"report: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
