#!/usr/bin/env python3
"""Checks report.py's floor notes (W16's null peer) on made-up results:
a failed SDK-client target gets the note exactly when the null peer misses
the same bound, a passing one never does, and the verdict stays "fail".

    python3 bench/test_report_floor.py
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

LINES = """\
peer=apex workload=W16 size=100 figure=stdio_calls_per_s value=15000 unit=calls/s run=1
peer=mcp_sdk workload=W16 size=100 figure=stdio_calls_per_s value=10000 unit=calls/s run=1
peer=null workload=W16 size=100 figure=stdio_calls_per_s value=19000 unit=calls/s run=1
peer=apex workload=W16 size=100 figure=stdio_p50 value=40000 unit=ns run=1
peer=mcp_sdk workload=W16 size=100 figure=stdio_p50 value=70000 unit=ns run=1
peer=null workload=W16 size=100 figure=stdio_p50 value=30000 unit=ns run=1
peer=apex workload=W16 size=100 figure=http_calls_per_s value=2000 unit=calls/s run=1
peer=mcp_sdk workload=W16 size=100 figure=http_calls_per_s value=900 unit=calls/s run=1
peer=null workload=W16 size=100 figure=http_calls_per_s value=1000 unit=calls/s run=1
"""


def verdicts(text):
    """target text -> result cell, W16 rows of the Targets table."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] == "W16":
            out[cells[1]] = cells[4]
    return out


def main():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "results.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(LINES)
        res = report.Results()
        res.read(path)
        v = verdicts(report.render(res, None, "results.txt"))
    calls = next(r for t, r in v.items() if t.startswith("apex stdio_calls_per_s"))
    p50 = next(r for t, r in v.items() if t.startswith("apex stdio_p50"))
    http = next(r for t, r in v.items() if t.startswith("apex http_calls_per_s"))
    raw = next(r for t, r in v.items() if t.startswith("apex raw_stdio_p50"))
    errors = []
    # 15,000 < 2 x 10,000, and null's 19,000 misses it too: the note, with null's figure.
    if not (calls.startswith("fail (even the null peer") and "19,000 calls/s" in calls):
        errors.append(f"stdio_calls_per_s: {calls!r}")
    # 40,000 > 0.5 x 70,000 but null's 30,000 meets it: a plain fail.
    if p50 != "fail":
        errors.append(f"stdio_p50: {p50!r}")
    # 2,000 >= 2 x 900: a pass, whatever null did (1,000 misses).
    if http != "pass":
        errors.append(f"http_calls_per_s: {http!r}")
    # Not measured, and no floor for the raw client's targets.
    if raw != "fail (not measured)":
        errors.append(f"raw_stdio_p50: {raw!r}")
    for e in errors:
        print(f"test_report_floor: unexpected verdict {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
