/* Internal: what the observers of a task (src/obs/metrics.c and
 * src/obs/trace.c) share per thread: its slot, and one clock read per task
 * transition.
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
 * Thread-safety: the stamp is the calling thread's own. */
#ifndef APEX_OBS_CLOCK_H
#define APEX_OBS_CLOCK_H

#include <stdint.h>

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
  uint64_t ns = apex__now_ns();
  s->t = t;
  s->plugin = t->plugin;
  s->id = t->id;
  s->attempt = t->attempt;
  s->kind = kind;
  s->ns = ns;
  return ns;
}

#endif
