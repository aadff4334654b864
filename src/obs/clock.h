/* Internal: what the observers of a task (src/obs/metrics.c and
 * src/obs/trace.c) share per thread: its slot, one clock read per task
 * transition, and the clock they read (src/obs/clock.c).
 *
 * An attempt's start and its end are each observed twice under the task's
 * lock: by the metrics (a histogram) and, with tracing on, by the span.
 * Each used to read CLOCK_MONOTONIC or CLOCK_REALTIME itself. Whichever
 * hook comes first reads the clock and leaves the value in this thread's
 * stamp, keyed by the task, its attempt and the transition; the second
 * finds it there. The key makes the order of the hooks at their call sites
 * irrelevant, and a stamp of another task, attempt or transition is never
 * taken for this one (a start and an end happen once per attempt).
 *
 * The clock is CLOCK_MONOTONIC's time, read from the CPU's time-stamp
 * counter where the kernel itself keeps CLOCK_MONOTONIC on it (clock.c
 * says when and how exactly): two of these reads a task were most of what
 * the metrics cost W1 (bench/analysis.md, issue 12's W1 section).
 *
 * Thread-safety: the stamp and the clock's anchor are the calling
 * thread's own. */
#ifndef APEX_OBS_CLOCK_H
#define APEX_OBS_CLOCK_H

#include <stdint.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "exec/internal.h"

/* Returns: the calling thread's slot (src/obs/metrics.c: process-wide,
 * taken on first use, given back when the thread exits), below
 * APEX__MX_SLOTS, or APEX__MX_SLOTS for a thread that shares the last one
 * with the others past them. A slot's data (metrics cells, the tracer's
 * free spans, an exporter lane) is its thread's alone. */
unsigned apex__obs_thread_slot(void);

enum { APEX__OBS_START = 1, APEX__OBS_END = 2 };

typedef struct apex__obs_stamp {
  const apex_task_t *t;
  const void *plugin; /* with id: the same task of the same manager */
  uint64_t id;
  uint32_t attempt, kind;
  uint64_t ns; /* CLOCK_MONOTONIC */
} apex__obs_stamp_t;

/* The calling thread's anchor of the TSC clock (clock.c): CLOCK_MONOTONIC
 * read at TSC value tsc0, and the scale. span 0: no anchor (read the
 * kernel's clock). */
typedef struct apex__obs_clk {
  uint64_t tsc0;
  uint64_t ns0;
  uint64_t mult; /* ns per TSC tick, 32.32 fixed point (below 2^32: a TSC of 1 GHz or more) */
  uint64_t span; /* ticks past tsc0 the anchor serves (about 2 ms); at most 2^31 */
} apex__obs_clk_t;

/* initial-exec: read on every clock read (src/obs/metrics.c says why). */
extern _Thread_local apex__obs_clk_t apex__obs_clk __attribute__((tls_model("initial-exec")));

/* Returns: CLOCK_MONOTONIC now, read from the kernel, and anchors the
 * calling thread's TSC clock on that read when the TSC may be used
 * (clock.c). The out-of-line half of apex__obs_clock_ns. */
uint64_t apex__obs_clock_slow(void);

/* Returns: CLOCK_MONOTONIC now in ns: the TSC scaled from the thread's
 * anchor (an anchor at most about 2 ms old, within a microsecond of the
 * kernel's clock; clock.c), else the kernel's clock. A plain rdtsc, not
 * ordered against the loads around it: two reads on one thread may come
 * out a few ns apart in either order, so a difference of two is clamped at
 * 0 by its user. Any thread. */
static inline uint64_t apex__obs_clock_ns(void) {
#if defined(__x86_64__)
  apex__obs_clk_t *c = &apex__obs_clk;
  uint64_t d = __rdtsc() - c->tsc0; /* a TSC behind the anchor (another CPU's) wraps: slow */
  if (__builtin_expect(d < c->span, 1)) return c->ns0 + ((d * c->mult) >> 32);
#endif
  return apex__obs_clock_slow();
}

/* Turns the TSC clock off for the process and drops the calling thread's
 * anchor (other threads drop theirs at their next re-anchor, within 2 ms
 * of their own reads): every read is then the kernel's. For tests. */
void apex__obs_clock_tsc_off(void);
/* Returns: 1 when the TSC clock is in use for the process. */
int apex__obs_clock_tsc_on(void);

/* initial-exec: read on every transition (src/obs/metrics.c says why). */
extern _Thread_local apex__obs_stamp_t apex__obs_stamp
    __attribute__((tls_model("initial-exec")));

/* Returns: CLOCK_MONOTONIC ns of transition kind (APEX__OBS_*) of t's
 * current attempt: the value another observer read for it on this thread,
 * else a fresh read (kept for the next). Under t's lock. */
static inline uint64_t apex__obs_now(const apex_task_t *t, uint32_t kind) {
  apex__obs_stamp_t *s = &apex__obs_stamp;
  if (s->t == t && s->id == t->id && s->attempt == t->attempt && s->kind == kind &&
      s->plugin == (const void *)t->plugin)
    return s->ns;
  uint64_t ns = apex__obs_clock_ns();
  s->t = t;
  s->plugin = t->plugin;
  s->id = t->id;
  s->attempt = t->attempt;
  s->kind = kind;
  s->ns = ns;
  return ns;
}

#endif
