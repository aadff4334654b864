/* Internal: the operation metrics' hooks in the task lifecycle
 * (src/obs/metrics.c) and what the snapshot (metrics_snapshot.c) reads.
 *
 * Every hook is an inline test of m->mx (NULL when the manager's metrics
 * are off: one predictable branch) and, when on, one call into metrics.c.
 * The call sites are single lines in exec/manager.c, exec/task.c,
 * exec/ctx.c and exec/events.c; none allocates, blocks or takes a lock
 * but the first event of an action (its series is made then, lock-free). */
#ifndef APEX_OBS_METRICS_H
#define APEX_OBS_METRICS_H

#include <stdint.h>

#include "exec/internal.h"
#include "obs/clock.h"

/* Histogram buckets: APEX_METRICS_N_BOUNDS bounds plus +Inf. */
#define APEX__MX_BUCKETS (APEX_METRICS_N_BOUNDS + 1)
/* The histograms, in apex__mx_hot_t.hist. */
enum {
  APEX__MX_H_QUEUE_WAIT = 0, /* submit (or start time) to the first attempt's start */
  APEX__MX_H_ATTEMPT,        /* one attempt, start to end */
  APEX__MX_H_E2E,            /* submit to the terminal state */
  APEX__MX_H_PROGRESS,       /* a report to the host's PROGRESS callback */
  APEX__MX_N_HIST
};
/* Failure codes counted apart (apex__mx_code_index); the last is "other". */
#define APEX__MX_N_CODES 22
#define APEX__MX_N_TMO 4    /* schedule_to_close, schedule_to_start, start_to_close, heartbeat */
#define APEX__MX_N_REASONS 3 /* user, parent, shutdown */

/* What every task pays, per thread: written by one thread only (plain
 * loads and stores, no lock prefix), summed at read time. */
typedef struct apex__mx_hot {
  _Alignas(APEX__CACHE_LINE) _Atomic uint64_t submitted, started, succeeded, retried;
  _Atomic uint64_t prog_reported, prog_delivered, prog_coalesced;
  /* per histogram: the buckets (not cumulative), then the sum in ns */
  _Atomic uint64_t hist[APEX__MX_N_HIST][APEX__MX_BUCKETS + 1];
} apex__mx_hot_t;

/* What only some tasks pay (failures, timeouts, cancels, rejections):
 * one cell per action, atomic adds. */
typedef struct apex__mx_cold {
  _Alignas(APEX__CACHE_LINE) _Atomic uint64_t failed[APEX__MX_N_CODES];
  _Atomic uint64_t rejected[APEX__MX_N_CODES];
  _Atomic uint64_t timed_out[APEX__MX_N_TMO];
  _Atomic uint64_t cancelled[APEX__MX_N_REASONS];
  _Atomic uint64_t prog_rejected;
} apex__mx_cold_t;

/* Threads get a cell slot each (process-wide, given back when the thread
 * exits); past APEX__MX_SLOTS threads at once, the rest share the last
 * cell with atomic adds. */
#define APEX__MX_SLOTS 32

/* One action's series. */
typedef struct apex__mx_series {
  apex__mx_cold_t cold;
  apex__mx_hot_t hot[APEX__MX_SLOTS + 1];
} apex__mx_series_t;

/* A plugin's series, one pointer per action (made on its first event). */
typedef struct apex__mx_plugin {
  size_t n;
  _Atomic(apex__mx_series_t *) series[];
} apex__mx_plugin_t;

/* The manager's metrics state (m->mx; NULL when off). */
typedef struct apex__mx {
  int unused; /* the series live on the plugins (apex__plugin_t.mx) */
} apex__mx_t;

/* The bucket of a duration by its bit length: consecutive bounds are at
 * least 2 x apart, so the values of one bit length L (2^(L-1) to 2^L - 1,
 * and 0 with 1) hold at most one bound. apex__mx_blen[L] says how many
 * bounds lie below them (below) and that bound (UINT64_MAX: none), so a
 * bucket is a count-leading-zeros, one load and one compare, where a
 * search was four dependent loads and compares (bench/analysis.md). */
typedef struct apex__mx_blen {
  uint64_t bound;
  uint64_t below;
} apex__mx_blen_t;
extern const apex__mx_blen_t apex__mx_blen[65];

/* The first bucket whose bound is >= ns (APEX_METRICS_N_BOUNDS: +Inf). */
static inline unsigned apex__mx_bucket_of(uint64_t ns) {
  const apex__mx_blen_t *b = &apex__mx_blen[64 - __builtin_clzll(ns | 1)];
  return (unsigned)b->below + (ns > b->bound);
}

/* Returns: APEX_OK with m->mx set when m->cfg.metrics is on (NULL when
 * off); APEX_E_NOMEM. From apex_manager_new, no lock held. */
int apex__mx_init(apex_manager_t *m);
/* Frees m->mx and every plugin's series (after the last task). */
void apex__mx_fini(apex_manager_t *m);

/* Returns: the index of a failure code in the code arrays. */
unsigned apex__mx_code_index(int code);
/* Returns: the code of index i (0 for "other"). */
int apex__mx_code_of(unsigned i);
/* The bounds in ns and in seconds, ascending. */
extern const uint64_t apex__mx_bounds_ns[APEX_METRICS_N_BOUNDS];
extern const double apex__mx_bounds_s[APEX_METRICS_N_BOUNDS];
extern const char *const apex__mx_tmo_names[APEX__MX_N_TMO];
extern const char *const apex__mx_reason_names[APEX__MX_N_REASONS];

/* The series of action a of plugin p if made, else NULL (snapshot). */
apex__mx_series_t *apex__mx_series_peek(const apex__plugin_t *p, const apex_action_desc_t *a);

/* The out-of-line halves of the hooks below. */
void apex__mx_submitted_(apex_task_t *t);
void apex__mx_rejected_(const apex__plugin_t *p, const apex_action_desc_t *a, int code);
void apex__mx_started_(apex_task_t *t);
void apex__mx_attempt_end_(apex_task_t *t);
void apex__mx_retried_(apex_task_t *t);
void apex__mx_finished_(apex_task_t *t, int state, apex_error_t *e);
void apex__mx_progress_flushed_(apex_task_t *t, apex__progress_slot_t *s);
void apex__mx_progress_rejected_(apex_task_t *t);
void apex__mx_progress_event_(apex__ev_t *ev, const apex__progress_slot_t *s);
void apex__mx_progress_delivered_(apex_manager_t *m, const apex__ev_t *ev);

/* A submit was accepted (after the task is queued; the caller's handle
 * keeps t). */
static inline void apex__mx_submitted(apex_manager_t *m, apex_task_t *t) {
  if (m->mx) apex__mx_submitted_(t);
}
/* A submit naming action a of p was refused with code. */
static inline void apex__mx_rejected(apex_manager_t *m, const apex__plugin_t *p,
                                     const apex_action_desc_t *a, int code) {
  if (m->mx) apex__mx_rejected_(p, a, code);
}
/* An attempt opened on this thread (under t's lock, t->attempt counted). */
static inline void apex__mx_started(apex_manager_t *m, apex_task_t *t) {
  if (m->mx) apex__mx_started_(t);
}
/* The open attempt of t ends (under t's lock). */
static inline void apex__mx_attempt_end(apex_manager_t *m, apex_task_t *t) {
  if (m->mx) apex__mx_attempt_end_(t);
}
/* t waits to retry (under t's lock). */
static inline void apex__mx_retried(apex_manager_t *m, apex_task_t *t) {
  if (m->mx) apex__mx_retried_(t);
}
/* t became terminal in state with error e (NULL when it succeeded; may be
 * lazy), under t's lock. */
static inline void apex__mx_finished(apex_manager_t *m, apex_task_t *t, int state,
                                     apex_error_t *e) {
  if (m->mx) apex__mx_finished_(t, state, e);
}
/* A report accepted into s (under the task's lock): counted in the slot,
 * with no atomic, and folded into the series when s is flushed. */
static inline void apex__mx_progress_report(apex_manager_t *m, apex__progress_slot_t *s) {
  if (m->mx && s->mx_reports++ == 0) s->mx_first_ns = apex__obs_clock_ns();
}
/* A snapshot of s is delivered (queued for the host; under the lock). */
static inline void apex__mx_progress_delivering(apex_manager_t *m, apex__progress_slot_t *s) {
  if (m->mx) s->mx_delivered++;
}
/* A flush of s ends (under the task's lock): its counts go to the series. */
static inline void apex__mx_progress_flushed(apex_manager_t *m, apex_task_t *t,
                                             apex__progress_slot_t *s) {
  if (m->mx && (s->mx_reports || s->mx_delivered)) apex__mx_progress_flushed_(t, s);
}
/* A report from t's handler was refused (invalid). */
static inline void apex__mx_progress_rejected(apex_manager_t *m, apex_task_t *t) {
  if (m->mx) apex__mx_progress_rejected_(t);
}
/* A PROGRESS event node made from s: it carries when its report came. */
static inline void apex__mx_progress_event(apex_manager_t *m, apex__ev_t *ev,
                                           const apex__progress_slot_t *s) {
  if (m->mx) apex__mx_progress_event_(ev, s);
}
/* A PROGRESS event's callback was called (delivery thread). */
static inline void apex__mx_progress_delivered(apex_manager_t *m, const apex__ev_t *ev) {
  if (m->mx && ev->ev.type == APEX_EVENT_PROGRESS) apex__mx_progress_delivered_(m, ev);
}

#endif
