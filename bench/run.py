#!/usr/bin/env python3
"""Runs every benchmark workload on every peer (bench/README.md), interleaved.

    python3 bench/run.py --build BUILD [--out FILE] [--runs 3] [--tiny] [--only W1,W2]

Run k of every (workload, peer) happens before run k+1 of any, and the peer
order is rotated from one run to the next, so drift of a shared machine hits
every peer alike. Each program's `key=value` figure lines are kept with
`run=K` added; a run that fails (nonzero exit, timeout, no figure, a line
that breaks the protocol) becomes an `error="..."` line and the driver goes
on, exiting nonzero at the end. A program that exits 3 does not implement
what it was asked (bench/README.md): that becomes a `skipped="..."` line, not
a failure (a peer whose build lacks an API the workload needs says so that
way). W8 (start-up) is measured here: the driver launches `apex run ...` and
`python3 -c 'import asyncio'` itself and reads their peak RSS and CPU time
from wait4. So is Whttp (a download from the http tests' loopback server by
`apex run http.download` and by `curl -o`).

Which peer runs which workload comes from bench/tiny.txt (the tiny runs CTest
makes), so the two never disagree; --tiny also takes its sizes from there.
Output: meta lines, then result lines; appended to FILE.partial as they come
(an interrupted run is not lost), FILE written atomically at the end.
Standard library only.
"""

import argparse
import datetime
import os
import platform
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# --------------------------------------------------------------- full sizes
# Size of each workload in a full run; a dict gives per-peer exceptions
# ("*" is every other peer), a list runs the workload once per size.
FULL_SIZES = {
    "W1": {"*": 1000000, "asyncio": 100000},
    "W2": {"*": 100000, "asyncio": 20000},
    "W3": 2000,
    "W3q": 2000,
    "W4": 200,
    "W5": 100000,
    "W6": {"*": 10000000, "glib": 1000000},  # GLib delivers every update: slow
    # A full-tree report of 1,000 nodes costs about a millisecond today:
    # 1,000,000 of them would not fit the budget; 5,000 give its per-report cost.
    "W6t": {"*": 1000000, "apex_full": 5000},
    "W7": [1000, 10000, 100000, 1000000],
    "W8": 10,  # launches of each program per run, the driver's own workload
    "W9": 100000,  # tasks of the flooding fairness key
    "W10": 1000000,
    "Whttp": 1 << 30,  # bytes of the download, the driver's own workload
    "W11": 10000,  # children of one parent (issue 11)
    "W12": 10000,  # pending children cancelled with their parent
    "Wroll": 1000,  # flood children of one parent, 10,000 updates each
    "W16": 10000,  # MCP tool calls in a row over stdio, and over HTTP 100 in flight
    "W13": 100000,  # durable no-op tasks (issue 13), each configuration
    "W14": 200000,  # checkpoints, over 100 tasks
    "Wrecover": 100000,  # unfinished tasks recovered
    "W15": 100000,  # no-op tasks through 3 apex workers (issue 14)
}
WORKLOADS = ["W1", "W2", "W3", "W3q", "W4", "W5", "W6", "W6t", "W7", "W8", "W9", "W10",
             "Whttp", "W11", "W12", "Wroll", "W16", "W13", "W14", "Wrecover", "W15"]
NOT_IMPLEMENTED = 3  # a program's exit status for "not implemented by this peer"
TINY_W8_LAUNCHES = 3
TINY_WHTTP_BYTES = 16 << 20
# Whttp's peers: what downloads the body (bench/README.md).
WHTTP_PEERS = ("apex", "apex_fsync", "curl")
TIMEOUT_S = 120

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
TINY_FILE = os.path.join(HERE, "tiny.txt")


class Plan:
    """One program run of a run k: what to start and how to label it."""

    def __init__(self, workload, size, peer, argv):
        self.workload, self.size, self.peer, self.argv = workload, size, peer, argv

    def group(self):
        # Peers are rotated within a group: the peers of one workload, or of
        # one size of a workload run at several (W7).
        several = isinstance(FULL_SIZES.get(self.workload), list)
        return (self.workload, self.size if several else None)


# ------------------------------------------------------------------ helpers
def fmt_kv(key, value):
    """key=value, the value in double quotes when it needs them."""
    s = str(value).replace("\n", " ").replace("\r", " ")
    if s == "" or re.search(r'[\s"\'\\=#]', s):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{key}={s}"


def parse_kv(line):
    """The key=value pairs of one line, or None if it is not such a line."""
    try:
        tokens = shlex.split(line, comments=False, posix=True)
    except ValueError:
        return None
    out = {}
    for t in tokens:
        if "=" not in t:
            return None
        k, v = t.split("=", 1)
        if not k:
            return None
        out[k] = v
    return out or None


def read_tiny(path):
    """[(program, workload, size, variant, peer)] from tiny.txt, in order."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) not in (3, 4) or not parts[2].isdigit():
                raise SystemExit(f"{path}:{n}: expected 'PROGRAM WORKLOAD SIZE [VARIANT]'")
            prog, workload, size = parts[0], parts[1], int(parts[2])
            variant = parts[3] if len(parts) == 4 else None
            if variant is None:
                peer = prog
            elif prog == "glib" and variant == "gtask":
                peer = "gtask"
            elif prog == "mcp":
                peer = variant  # apex, mcp_sdk or null (bench_mcp.sh)
            else:
                peer = f"{prog}_{variant}"
            rows.append((prog, workload, size, variant, peer))
    return rows


def full_size(workload, peer):
    spec = FULL_SIZES[workload]
    if isinstance(spec, dict):
        return [spec.get(peer, spec["*"])]
    if isinstance(spec, list):
        return list(spec)
    return [spec]


def program_argv(build, prog, workload, size, variant):
    if prog == "asyncio":
        argv = [sys.executable, os.path.join(HERE, "bench_asyncio.py")]
    elif prog == "mcp":
        argv = ["/bin/sh", os.path.join(HERE, "bench_mcp.sh"), build]
    else:
        argv = [os.path.join(build, "bench", f"bench_{prog}")]
    argv += [workload, str(size)]
    if variant:
        argv.append(variant)
    return argv


def w8_argv(build, peer):
    if peer == "apex":
        return [os.path.join(build, "bin", "apex"), "run", "example_async.long_task",
                "--param", "steps=0"]
    return [sys.executable, "-c", "import asyncio"]


def make_plan(build, tiny, only):
    rows = read_tiny(TINY_FILE)
    for r in rows:
        if r[1] not in FULL_SIZES or r[1] in ("W8", "Whttp"):
            raise SystemExit(f"tiny.txt names workload {r[1]}, which run.py does not know")
    plan = []
    for w in WORKLOADS:
        if only and w not in only:
            continue
        if w == "W8":
            launches = TINY_W8_LAUNCHES if tiny else FULL_SIZES["W8"]
            plan += [Plan(w, launches, p, w8_argv(build, p)) for p in ("apex", "python")]
            continue
        if w == "Whttp":
            size = TINY_WHTTP_BYTES if tiny else FULL_SIZES["Whttp"]
            plan += [Plan(w, size, p, [build]) for p in WHTTP_PEERS]
            continue
        entries = []
        for prog, workload, tsize, variant, peer in rows:
            if workload != w:
                continue
            sizes = [tsize] if tiny else full_size(w, peer)
            for s in sizes:
                entries.append(Plan(w, s, peer, program_argv(build, prog, w, s, variant)))
        if isinstance(FULL_SIZES[w], list):
            # Every peer at the smallest size, then the next size, ...
            entries.sort(key=lambda e: e.size)
        plan += entries
    return plan


def kill_group(pgid):
    # The leader is not reaped yet, so its group id cannot have been reused.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def capture(argv, timeout, env=None):
    """(exit code, stdout, stderr) of a command run in its own process group,
    so that a timeout or ^C ends everything it started."""
    child = subprocess.Popen(argv, cwd=SRC, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             errors="replace", start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except BaseException:
        kill_group(child.pid)
        child.communicate()
        raise
    return child.returncode, stdout, stderr


def run_text(argv):
    """First line of a command's stdout, or None when it cannot run."""
    try:
        code, out, _ = capture(argv, 10)
    except (OSError, subprocess.SubprocessError):
        return None
    if code != 0 or not out.strip():
        return None
    return out.strip().splitlines()[0].strip()


def cmake_cache(build):
    out = {}
    try:
        with open(os.path.join(build, "CMakeCache.txt"), encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.match(r"^([A-Za-z0-9_]+):[A-Z_]+=(.*)$", line.rstrip("\n"))
                if m:
                    out[m.group(1)] = m.group(2)
    except OSError:
        pass
    return out


def meta_lines(build, args):
    def cpu_model():
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.lower().startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or "unknown"

    def os_name():
        try:
            with open("/etc/os-release", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("PRETTY_NAME="):
                        return line.split("=", 1)[1].strip().strip('"')
        except OSError:
            pass
        return "unknown"

    def loadavg():
        try:
            with open("/proc/loadavg", encoding="utf-8") as f:
                return " ".join(f.read().split()[:3])
        except OSError:
            return "unknown"

    def apex_version():
        exe = os.path.join(build, "bin", "apex")
        if os.access(exe, os.X_OK):
            v = run_text([exe, "--version"])
            if v:
                return v.split()[-1]
        try:
            with open(os.path.join(SRC, "CMakeLists.txt"), encoding="utf-8") as f:
                m = re.search(r"project\s*\(\s*apex\b[^)]*?VERSION\s+([0-9][0-9.]*)", f.read())
                if m:
                    return m.group(1)
        except OSError:
            pass
        return "unknown"

    cache = cmake_cache(build)
    compiler = cache.get("CMAKE_C_COMPILER") or "gcc"
    commit = run_text(["git", "-C", SRC, "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = "unknown"
    if commit != "unknown":
        try:
            code, out, _ = capture(["git", "-C", SRC, "status", "--porcelain",
                                    "--untracked-files=no"], 30)
            if code == 0:
                dirty = "yes" if out.strip() else "no"
        except (OSError, subprocess.SubprocessError):
            pass
    meta = [
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("cpu", cpu_model()),
        ("nproc", str(os.cpu_count() or "unknown")),
        ("kernel", platform.release()),
        ("os", os_name()),
        ("gcc", run_text([compiler, "--version"]) or "unknown"),
        ("libuv", run_text(["pkg-config", "--modversion", "libuv"]) or "unknown"),
        ("glib", run_text(["pkg-config", "--modversion", "glib-2.0"]) or "unknown"),
        ("python", platform.python_version()),
        ("apex", apex_version()),
        ("commit", commit),
        ("dirty", dirty),
        ("build_type", cache.get("CMAKE_BUILD_TYPE") or "none"),
        ("sanitize", cache.get("APEX_SANITIZE") or "none"),
        ("loadavg", loadavg()),
        ("runs", str(args.runs)),
        ("mode", "tiny" if args.tiny else "full"),
        ("command", shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv))),
    ]
    return ["meta " + fmt_kv(k, v) for k, v in meta]


def error_line(p, k, reason, key="error"):
    return " ".join([fmt_kv("peer", p.peer), fmt_kv("workload", p.workload),
                     fmt_kv("size", p.size), fmt_kv("run", k), fmt_kv(key, reason)])


def last_line(text):
    lines = [l.strip() for l in (text or "").splitlines() if l.strip()]
    return lines[-1][:300] if lines else ""


# ------------------------------------------------------------- program runs
class NotImplementedRun(Exception):
    """The program exited 3: the peer does not implement this workload."""


def run_program(p, k, env, timeout):
    """(lines, error) of one program run; error is None when it succeeded.
    Raises NotImplementedRun (with the program's reason) on exit 3."""
    needed = p.argv[1] if p.argv[0] in (sys.executable, "/bin/sh") else p.argv[0]
    if not os.path.isfile(needed):
        return [], f"not built: {needed}"
    try:
        code, stdout, stderr = capture(p.argv, timeout, env)
    except subprocess.TimeoutExpired:
        return [], f"timeout after {timeout:g} s"
    except OSError as e:
        return [], f"cannot start: {e}"
    if code == NOT_IMPLEMENTED:
        raise NotImplementedRun(last_line(stderr) or "not implemented")
    if code != 0:
        why = last_line(stderr) or "no message"
        if code < 0:
            return [], f"killed by signal {-code}: {why}"
        return [], f"exit {code}: {why}"
    lines = []
    for raw in stdout.splitlines():
        if not raw.strip():
            continue
        kv = parse_kv(raw)
        need = ("peer", "workload", "size", "figure", "value", "unit")
        if kv is None or any(n not in kv for n in need):
            return [], f"protocol: not a figure line: {raw.strip()[:200]}"
        if kv["peer"] != p.peer or kv["workload"] != p.workload:
            return [], (f"protocol: expected peer={p.peer} workload={p.workload}, "
                        f"got peer={kv['peer']} workload={kv['workload']}")
        try:
            float(kv["value"])
        except ValueError:
            return [], f"protocol: value is not a number: {raw.strip()[:200]}"
        lines.append(raw.strip() + f" run={k}")
    if not lines:
        return [], "no figure lines"
    return lines, None


def launch_once(argv, env, timeout):
    """(wall_ns, maxrss_kb, cpu_ns, error) of one launch, waited for with
    wait4 (cpu: its user + system time). Its stdout is discarded; its stderr
    kept to explain a failure."""
    with tempfile.TemporaryFile() as err:
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_DUP2, err.fileno(), 2)]
        t0 = time.perf_counter_ns()
        try:
            pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setpgroup=0)
        except OSError as e:
            return None, None, None, f"cannot start {argv[0]}: {e}"
        timed_out = False
        try:
            # A pidfd turns "the child exited" into a pollable event, so the
            # wait has a deadline; wait4 then reaps it and gives its rusage.
            fd = os.pidfd_open(pid)
            try:
                po = select.poll()
                po.register(fd, select.POLLIN)
                if not po.poll(int(timeout * 1000)):
                    timed_out = True
                    kill_group(pid)
            finally:
                os.close(fd)
        except BaseException:
            kill_group(pid)
            os.wait4(pid, 0)
            raise
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter_ns() - t0
        if timed_out:
            return None, None, None, f"timeout after {timeout:g} s"
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            why = last_line(err.read().decode("utf-8", "replace")) or "no message"
            return None, None, None, f"exit {code}: {why}"
        return wall, ru.ru_maxrss, (ru.ru_utime + ru.ru_stime) * 1e9, None


def run_w8(p, k, env, timeout):
    exe = p.argv[0]
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        return [], f"not built: {exe}"
    walls, rss, cpus = [], [], []
    for _ in range(p.size):
        wall, kb, cpu, err = launch_once(p.argv, env, timeout)
        if err:
            return [], err
        walls.append(wall / 1e6)
        rss.append(kb)
        cpus.append(cpu / 1e6)
    base = [fmt_kv("peer", p.peer), fmt_kv("workload", "W8"), fmt_kv("size", p.size)]
    return [" ".join(base + ["figure=wall_ms", f"value={statistics.median(walls):.6g}",
                             "unit=ms", f"run={k}"]),
            " ".join(base + ["figure=cpu_ms", f"value={statistics.median(cpus):.6g}",
                             "unit=ms", f"run={k}"]),
            " ".join(base + ["figure=peak_rss_kb", f"value={statistics.median(rss):.6g}",
                             "unit=kB", f"run={k}"])], None


def start_http_server(build):
    """(process, port) of the http tests' loopback server (tests/support/
    http_server.c): it prints its port, and stops when its stdin closes."""
    exe = os.path.join(build, "tests", "http_test_server")
    if not os.access(exe, os.X_OK):
        raise OSError(f"not built: {exe}")
    srv = subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    ready, _, _ = select.select([srv.stdout], [], [], 10)
    line = srv.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        stop_http_server(srv)
        raise OSError("the http test server gave no port")
    return srv, int(line)


def stop_http_server(srv):
    try:
        srv.stdin.close()
        srv.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        kill_group(srv.pid)
        srv.wait()


def run_w11(p, k, env, timeout):
    """Whttp, measured here: one download of p.size bytes from the loopback
    test server into a file beside the results, by `apex run http.download`
    (fsync off, as curl does; apex_fsync: the default, fsync on) or by
    `curl -o`; wall and CPU time from wait4 (the server's CPU is in
    neither; no peak RSS: a spawned child's counts the driver's own from
    before its exec). The file is checked for its size, then removed.

    Each measured download follows one that is not measured (curl's, or the
    peer's own without curl), into a file removed before the measured one
    starts. This machine's VM hands freed guest memory back to the host
    (DAMON pageout), and the first touch of 1 GiB of page cache then cost
    whichever peer came first up to 1.7 s more CPU (apex 2.7 s against
    0.8 s, curl 2.1 s against 0.8 s in one run: bench/analysis.md, "Whttp's
    spread"); after the warm-up every peer starts from the same memory."""
    build = p.argv[0]
    apex = os.path.join(build, "bin", "apex")
    if p.peer.startswith("apex") and not os.access(apex, os.X_OK):
        return [], f"not built: {apex}"
    curl = shutil.which("curl")
    if p.peer == "curl" and not curl:
        return [], "curl not installed"
    try:
        srv, port = start_http_server(build)
    except OSError as e:
        return [], str(e)
    tmpdir = tempfile.mkdtemp(prefix="w11-", dir=os.path.join(build, "bench"))
    path = os.path.join(tmpdir, "body")
    url = f"http://127.0.0.1:{port}/bytes/{p.size}"
    try:
        warm = os.path.join(tmpdir, "warm-up")
        if curl:
            _, _, _, err = launch_once([curl, "-sS", "-f", "-o", warm, url], env, timeout)
        else:
            _, _, _, err = launch_once([apex, "run", "http.download", "--json", "--param",
                                        f"url={url}", "--param", f"path={warm}", "--param",
                                        "fsync=false"], env, timeout)
        if err:
            return [], f"warm-up download: {err}"
        os.remove(warm)
        if p.peer == "curl":
            argv = [curl, "-sS", "-f", "-o", path, url]
        else:
            argv = [apex, "run", "http.download", "--json", "--param", f"url={url}",
                    "--param", f"path={path}"]
            if p.peer == "apex":
                argv += ["--param", "fsync=false"]
        wall, _, cpu, err = launch_once(argv, env, timeout)
        if err:
            return [], err
        try:
            got = os.path.getsize(path)
        except OSError:
            got = -1
        if got != p.size:
            return [], f"downloaded {got} bytes, want {p.size}"
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        stop_http_server(srv)
    base = [fmt_kv("peer", p.peer), fmt_kv("workload", "Whttp"), fmt_kv("size", p.size)]
    mib_s = (p.size / (1 << 20)) / (wall / 1e9)
    return [" ".join(base + ["figure=mib_per_s", f"value={mib_s:.6g}", "unit=MiB/s", f"run={k}"]),
            " ".join(base + ["figure=wall_ms", f"value={wall / 1e6:.6g}", "unit=ms", f"run={k}"]),
            " ".join(base + ["figure=cpu_ms", f"value={cpu / 1e6:.6g}", "unit=ms", f"run={k}"])], None


# --------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description="Run the Apex benchmarks against their peers.")
    ap.add_argument("--build", required=True, help="CMake build directory")
    ap.add_argument("--out", help="results file (default BUILD/bench/results.txt)")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    ap.add_argument("--tiny", action="store_true", help="the sizes of bench/tiny.txt")
    ap.add_argument("--only", help="comma-separated workloads, e.g. W1,W2")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S,
                    help=f"seconds one program run may take (default {TIMEOUT_S})")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.timeout <= 0:
        ap.error("--timeout must be positive")
    only = None
    if args.only:
        only = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in only if w not in WORKLOADS]
        if unknown:
            ap.error(f"unknown workload(s) {','.join(unknown)}; known: {' '.join(WORKLOADS)}")
    build = os.path.abspath(args.build)
    out = os.path.abspath(args.out or os.path.join(build, "bench", "results.txt"))
    plan = make_plan(build, args.tiny, only)
    if not plan:
        ap.error("nothing to run")

    env = dict(os.environ)
    env.setdefault("APEX_LOG", "warn")
    env.setdefault("UV_THREADPOOL_SIZE", "2")

    os.makedirs(os.path.dirname(out), exist_ok=True)
    partial_path = out + ".partial"
    lines = meta_lines(build, args)
    meta = dict(l[5:].split("=", 1) for l in lines)
    if meta["build_type"] not in ("Release", "RelWithDebInfo") or meta["sanitize"] != "none":
        print(f"bench: note: build type {meta['build_type']}, sanitize {meta['sanitize']}: "
              "figures will not be representative", file=sys.stderr)

    groups = []
    for p in plan:
        if not groups or groups[-1][0] != p.group():
            groups.append((p.group(), []))
        groups[-1][1].append(p)

    failed = not_implemented = 0
    t_start = time.monotonic()
    with open(partial_path, "w", encoding="utf-8") as partial:
        def keep(line):
            lines.append(line)
            partial.write(line + "\n")
            partial.flush()

        for line in lines:
            partial.write(line + "\n")
        partial.flush()
        try:
            for k in range(1, args.runs + 1):
                for _, members in groups:
                    r = (k - 1) % len(members)
                    for p in members[r:] + members[:r]:
                        t0 = time.monotonic()
                        skipped = None
                        try:
                            if p.workload == "W8":
                                got, err = run_w8(p, k, env, args.timeout)
                            elif p.workload == "Whttp":
                                got, err = run_w11(p, k, env, args.timeout)
                            else:
                                got, err = run_program(p, k, env, args.timeout)
                        except NotImplementedRun as e:
                            got, err, skipped = [], None, str(e)
                        dt = time.monotonic() - t0
                        if err:
                            failed += 1
                            keep(error_line(p, k, err))
                        if skipped:
                            not_implemented += 1
                            keep(error_line(p, k, skipped, key="skipped"))
                        for g in got:
                            keep(g)
                        status = ("ok" if not err and not skipped else
                                  f"not implemented: {skipped}" if skipped else f"FAILED: {err}")
                        print(f"[run {k}/{args.runs}] {p.workload} {p.peer} size={p.size}: "
                              f"{dt:.2f} s {status}", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            print(f"bench: interrupted; what was measured is in {partial_path}", file=sys.stderr)
            return 130
        total = time.monotonic() - t_start
        keep("meta " + fmt_kv("wall_s", f"{total:.1f}"))

    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(out) + ".", dir=os.path.dirname(out))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    os.unlink(partial_path)
    print(f"bench: {len(plan) * args.runs} program runs in {total:.1f} s "
          f"({total / 60:.1f} min), {failed} failed, {not_implemented} not implemented; "
          f"results in {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
