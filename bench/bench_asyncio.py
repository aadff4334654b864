#!/usr/bin/env python3
"""The Python asyncio peer of the benchmarks (bench/README.md has the spec).

python3 bench/bench_asyncio.py WORKLOAD SIZE

Python 3.11, standard library only, as a competent asyncio user writes it:
asyncio.run(main()), jobs on a 2-thread concurrent.futures.ThreadPoolExecutor
through loop.run_in_executor, completions are the awaits on the event loop
thread (the host), timeouts by asyncio.wait_for, cancellation by task.cancel().
A handler that waits "cancellably" blocks on a threading.Event, its token.

Implements W1 W2 W3 W3q W4 W5 W11; other workloads exit 3. Each workload checks
that every job completed with the right outcome before printing a figure; any
failure goes to stderr with exit status 1 and no figure. Times are
time.perf_counter_ns() (CLOCK_MONOTONIC on Linux); CPU is the process's user +
system time from resource.getrusage(RUSAGE_SELF), read right before a wall
interval starts and right after it ends (cpu_ns_per_task).

Where the executor's own future is needed (to see the worker side of a
cancelled or timed-out job) the code calls ex.submit + asyncio.wrap_future,
which is exactly what loop.run_in_executor does in 3.11 (its body is
`return futures.wrap_future(executor.submit(func, *args), loop=self)`), so the
path measured is the same.
"""

import asyncio
import concurrent.futures
import gc
import os
import resource
import sys
import threading
import time

PEER = "asyncio"
WORKERS = 2
KNOWN = ("W1", "W2", "W3", "W3q", "W4", "W5", "W6", "W6t", "W7", "W8", "W11", "W12", "Wroll")
IMPLEMENTED = ("W1", "W2", "W3", "W3q", "W4", "W5", "W11")
W4_TIMEOUT_NS = 5_000_000

now = time.perf_counter_ns


def cpu_ns():
    """User + system CPU of the whole process (every thread), in ns."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return round((ru.ru_utime + ru.ru_stime) * 1e9)

# Every Event a blocked job waits on. Whatever happens, they are all set
# before the executor is shut down, or its shutdown (and the interpreter's
# exit, which joins executor threads) would wait forever.
_tokens = []


class BenchError(Exception):
    pass


def die(msg, code=1):
    print(f"bench: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def emit(workload, size, figure, value, unit):
    sys.stdout.write(f"peer={PEER} workload={workload} size={size} figure={figure} "
                     f"value={'%.6g' % value} unit={unit}\n")
    sys.stdout.flush()


def quantile(sorted_v, q):
    """Nearest rank on a sorted list, as bench_util.h's bench_quantile."""
    if not sorted_v:
        raise BenchError("quantile of no samples")
    i = int(q * len(sorted_v))
    if i >= len(sorted_v):
        i = len(sorted_v) - 1
    return sorted_v[i]


def token():
    ev = threading.Event()
    _tokens.append(ev)
    return ev


def release_all():
    for ev in _tokens:
        ev.set()


def submit(loop, ex, fn, *args):
    """loop.run_in_executor(ex, fn, *args), keeping the executor's future."""
    cf = ex.submit(fn, *args)
    return cf, asyncio.wrap_future(cf, loop=loop)


def noop():
    return True


def blocker(loop, ready, ev):
    """Tells the host it is waiting (ready may be None), then waits on its token."""
    if ready is not None:
        loop.call_soon_threadsafe(ready.set_result, None)
    return ev.wait()  # True: it returned because it was cancelled


async def occupy_workers(loop, ex):
    """Both worker threads blocked; returns their (token, executor future)."""
    held = []
    for _ in range(WORKERS):
        ready = loop.create_future()
        ev = token()
        cf, _afut = submit(loop, ex, blocker, loop, ready, ev)
        held.append((ev, cf))
        await ready
    return held


async def free_workers(loop, held):
    for ev, _cf in held:
        ev.set()
    for _ev, cf in held:
        if await asyncio.wrap_future(cf, loop=loop) is not True:
            raise BenchError("a blocker ended without its token set")


async def await_job(fut):
    """The host's task for one job: what task.cancel() cancels."""
    return await fut


async def w1(loop, ex, n):
    futs = [None] * n
    c0 = cpu_ns()
    t0 = now()
    for i in range(n):
        futs[i] = loop.run_in_executor(ex, noop)
    results = await asyncio.gather(*futs)
    dt = now() - t0
    cpu = cpu_ns() - c0
    if len(results) != n or not all(r is True for r in results):
        raise BenchError(f"W1: {n} jobs submitted, not all completed with their result")
    return [("tasks_per_s", n * 1e9 / dt, "tasks/s"), ("ns_per_task", dt / n, "ns"),
            ("cpu_ns_per_task", cpu / n, "ns")]


async def w2(loop, ex, n):
    lat = [0] * n
    cpu = 0
    for i in range(n):
        c0 = cpu_ns()
        t0 = now()
        r = await loop.run_in_executor(ex, noop)
        lat[i] = now() - t0
        cpu += cpu_ns() - c0
        if r is not True:
            raise BenchError(f"W2: job {i} completed without its result")
    lat.sort()
    return [("p50", quantile(lat, 0.5), "ns"), ("p99", quantile(lat, 0.99), "ns"),
            ("p999", quantile(lat, 0.999), "ns"), ("cpu_ns_per_task", cpu / n, "ns")]


async def w3(loop, ex, n):
    # Cancelling a running executor job in asyncio takes two steps: task.cancel()
    # of the host task awaiting it (asyncio cannot interrupt a thread: it only
    # cancels the wrapping asyncio future, so the task sees CancelledError on the
    # next loop iteration while the worker still runs) and setting the job's
    # token so the worker stops. The other peers' "cancelled completion" is the
    # job actually over: the handler returned, its thread free, and the host
    # told so. So t1 is when the loop has seen both: the task's CancelledError
    # and the executor future's completion, which reaches the loop the way every
    # run_in_executor completion does (call_soon_threadsafe from the worker).
    # Timing only the CancelledError would time a cancel that has not reached
    # the worker yet, a few microseconds with no thread involved.
    lat = [0] * n
    cpu = 0
    for i in range(n):
        ready = loop.create_future()
        ev = token()
        cf, afut = submit(loop, ex, blocker, loop, ready, ev)
        task = loop.create_task(await_job(afut))
        exited = asyncio.wrap_future(cf, loop=loop)  # the worker side, made untimed
        await ready  # untimed: the handler is in its cancellable wait
        c0 = cpu_ns()
        t0 = now()
        ev.set()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:
            raise BenchError(f"W3: sample {i}: the cancelled task completed normally")
        returned = await exited
        lat[i] = now() - t0
        cpu += cpu_ns() - c0
        if not task.cancelled() or returned is not True:
            raise BenchError(f"W3: sample {i}: the job did not end by its cancellation")
        _tokens.remove(ev)
    lat.sort()
    return [("p50", quantile(lat, 0.5), "ns"), ("p99", quantile(lat, 0.99), "ns"),
            ("cpu_ns_per_task", cpu / n, "ns")]


async def w3q(loop, ex, n):
    # The queued job is awaited by a host task and cancelled by task.cancel(),
    # as for W3. That cancels the asyncio future, whose done callbacks run on
    # the next loop iteration in the order they were added: first the one
    # wrap_future chained (it cancels the executor's future, which removes the
    # job: a worker will skip it), then the task's wakeup (CancelledError).
    # So when the host sees the task cancelled, the cancel has reached the
    # executor. Cancelling the bare future and awaiting it would raise at once,
    # before the executor's future is cancelled (the job could still run).
    ran = []

    def must_not_run():
        ran.append(True)  # list.append is atomic: the check needs no lock
        return True

    held = await occupy_workers(loop, ex)
    lat = [0] * n
    cpu = 0
    cfs = [None] * n
    for i in range(n):
        cf, afut = submit(loop, ex, must_not_run)
        cfs[i] = cf
        task = loop.create_task(await_job(afut))
        await asyncio.sleep(0)  # untimed: the task runs up to its await of the job
        if cf.done() or cf.running():
            raise BenchError(f"W3q: sample {i}: the job is not queued")
        c0 = cpu_ns()
        t0 = now()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:
            raise BenchError(f"W3q: sample {i}: the cancelled task completed normally")
        lat[i] = now() - t0
        cpu += cpu_ns() - c0
        if not cf.cancelled():
            raise BenchError(f"W3q: sample {i}: the executor's job was not cancelled")
    await free_workers(loop, held)
    # One more job through each thread behind the cancelled ones: once it has
    # run, every cancelled work item has been taken off the queue and skipped.
    await asyncio.gather(*(loop.run_in_executor(ex, noop) for _ in range(WORKERS)))
    if ran or not all(cf.cancelled() for cf in cfs):
        raise BenchError(f"W3q: {len(ran)} cancelled jobs ran anyway")
    lat.sort()
    return [("p50", quantile(lat, 0.5), "ns"), ("p99", quantile(lat, 0.99), "ns"),
            ("cpu_ns_per_task", cpu / n, "ns")]


async def w4(loop, ex, n):
    late = [0] * n
    cpu = 0
    for i in range(n):
        ev = token()
        c0 = cpu_ns()
        t_submit = now()
        cf, afut = submit(loop, ex, blocker, loop, None, ev)
        try:
            await asyncio.wait_for(afut, timeout=W4_TIMEOUT_NS / 1e9)
        except TimeoutError:
            late[i] = now() - (t_submit + W4_TIMEOUT_NS)
            cpu += cpu_ns() - c0
        else:
            raise BenchError(f"W4: sample {i}: the job completed instead of timing out")
        # Untimed: wait_for cancelled the asyncio future, the worker still waits;
        # its token frees the thread before the next sample. On a loaded machine
        # no thread may have taken the job within the timeout: the chained cancel
        # then removes it from the queue (cf cancelled, the job never runs), which
        # is also an end by its cancellation. asyncio.wait does not raise for it.
        ev.set()
        await asyncio.wait([asyncio.wrap_future(cf, loop=loop)])
        ended = cf.cancelled() or cf.result() is True
        if not ended or not afut.cancelled():
            raise BenchError(f"W4: sample {i}: the job did not end by its cancellation")
        _tokens.remove(ev)
    late.sort()
    return [("p50", quantile(late, 0.5), "ns"), ("p99", quantile(late, 0.99), "ns"),
            ("cpu_ns_per_task", cpu / n, "ns")]


def rss_bytes():
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    if len(fields) < 2:
        raise BenchError("parse /proc/self/statm")
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


async def w5(loop, ex, n):
    held = await occupy_workers(loop, ex)
    futs = [None] * n
    gc.collect()
    rss0 = rss_bytes()
    c0 = cpu_ns()
    for i in range(n):
        futs[i] = loop.run_in_executor(ex, noop)
    cpu = cpu_ns() - c0
    rss1 = rss_bytes()
    await free_workers(loop, held)
    results = await asyncio.gather(*futs)
    if len(results) != n or not all(r is True for r in results):
        raise BenchError(f"W5: {n} jobs queued, not all completed with their result")
    return [("bytes_per_task", (rss1 - rss0) / n, "B"), ("cpu_ns_per_task", cpu / n, "ns")]


async def w11(loop, ex, n):
    """W11's peer: asyncio.gather of n no-op tasks (the fan-out of one parent)."""
    async def child():
        return True

    c0 = cpu_ns()
    t0 = now()
    results = await asyncio.gather(*[asyncio.ensure_future(child()) for _ in range(n)])
    dt = now() - t0
    cpu = cpu_ns() - c0
    if len(results) != n or not all(r is True for r in results):
        raise BenchError(f"W11: {n} children gathered, not all completed with their result")
    return [("ns_per_child", dt / n, "ns"), ("cpu_ns_per_child", cpu / n, "ns")]


WORKLOADS = {"W11": w11, "W1": w1, "W2": w2, "W3": w3, "W3q": w3q, "W4": w4, "W5": w5}


async def main(workload, n):
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as ex:
        try:
            figures = await WORKLOADS[workload](loop, ex, n)
        finally:
            release_all()  # no blocked job may outlive a failure
    # The executor is shut down (joined): every job is over.
    return figures


def parse_args(argv):
    if len(argv) != 3:
        die(f"usage: {argv[0]} WORKLOAD SIZE  ({' '.join(IMPLEMENTED)})")
    workload, size = argv[1], argv[2]
    if not (size.isascii() and size.isdigit()) or int(size) == 0 or int(size) >= 2**64:
        die(f"size must be a positive integer, got '{size}'")
    if workload not in KNOWN:
        die(f"unknown workload '{workload}' ({' '.join(KNOWN)})")
    if workload not in IMPLEMENTED:
        die(f"{workload} not implemented by {PEER}", 3)
    return workload, int(size)


def run():
    workload, n = parse_args(sys.argv)
    try:
        figures = asyncio.run(main(workload, n))
    except BenchError as e:
        die(str(e))
    except Exception as e:  # a benchmark that cannot measure prints no figure
        die(f"{workload}: {type(e).__name__}: {e}")
    for figure, value, unit in figures:
        emit(workload, n, figure, value, unit)


if __name__ == "__main__":
    run()
