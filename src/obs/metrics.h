/* Internal: the operation metrics' hooks in the task lifecycle
 * (src/obs/metrics.c) and what the snapshot (metrics_snapshot.c) reads.
 *
 * Every hook is an inline test of m->mx (NULL when the manager's metrics
 * are off: one predictable branch). When on, the four every task pays (a
 * submit, an attempt's start and end, a success's finish) do their common
 * case inline, in the calling thread's own cell, and call into metrics.c
 * for the rest; the others always call. The call sites are single lines
 * in exec/manager.c, exec/task.c, exec/ctx.c and exec/events.c; none
 * allocates, blocks or takes a lock but the first event of an action (its
 * series is made then, lock-free). */
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

/* The calling thread's state (metrics.c), one initial-exec block read
 * by the hooks' inline halves below: its cell slot and the attempt it
 * started last (the run state has no byte to spare for the start time).
 * Only the calling thread reads or writes its block. */
typedef struct apex__mx_tl {
  unsigned slot;      /* its cell slot + 1; 0: none taken yet */
  uint32_t attempt;   /* t's attempt started here last */
  const apex_task_t *t; /* NULL once that attempt's end was observed */
  uint64_t id;        /* t's id: with plugin, the same task (a thread may serve two managers) */
  const apex__plugin_t *plugin;
  uint64_t start_ns;  /* that attempt's start */
  uint64_t end_ns;    /* its end's clock read, for the same task's finish; 0: none */
  apex__mx_series_t *series; /* of that task */
  apex__mx_hot_t *hot; /* this thread's cell of it */
  size_t hot_off;     /* offsetof(apex__mx_series_t, hot[slot]) once slot is set */
} apex__mx_tl_t;
extern _Thread_local apex__mx_tl_t apex__mx_tl __attribute__((tls_model("initial-exec")));

/* apex__obs_thread_slot (obs/clock.h) with no call once the thread has
 * taken its slot: the tracer asks twice a task (its pair, its push). */
static inline unsigned apex__obs_slot(void) {
  unsigned s = apex__mx_tl.slot;
  return __builtin_expect(s != 0, 1) ? s - 1 : apex__obs_thread_slot();
}

/* The out-of-line halves of the hooks below: every case (a series not
 * made yet, a thread past APEX__MX_SLOTS, tracing on, an end or a finish
 * not on the thread that started it). */
void apex__mx_submitted_of_(const apex__plugin_t *p, const apex_action_desc_t *a);
void apex__mx_submitted_(apex_task_t *t); /* of t's plugin and action */
void apex__mx_rejected_(const apex__plugin_t *p, const apex_action_desc_t *a, int code);
void apex__mx_started_(apex_manager_t *m, apex_task_t *t);
void apex__mx_attempt_end_(apex_manager_t *m, apex_task_t *t);
void apex__mx_retried_(apex_task_t *t);
void apex__mx_finished_(apex_task_t *t, int state, apex_error_t *e);
void apex__mx_progress_flushed_(apex_task_t *t, apex__progress_slot_t *s);
void apex__mx_progress_rejected_(apex_task_t *t);
void apex__mx_progress_event_(apex__ev_t *ev, const apex__progress_slot_t *s);
void apex__mx_progress_delivered_(apex_manager_t *m, const apex__ev_t *ev);

/* The inline halves take the common case of every task with no call:
 * the series made, the calling thread owning its cell (tracing on or off:
 * with it on, the start's and end's clock reads go through the stamp the
 * span shares, obs/clock.h). The
 * four calls (a submit, an attempt's start and end, the finish) with their
 * register saves were about a fifth of what the metrics cost W1 on one
 * CPU (bench/analysis.md, the seventh session's W1 section). */

/* Adds v to a counter of the calling thread's own cell: its only writer
 * (a relaxed load and store, no lock prefix). */
static inline void apex__mx_own_add(_Atomic uint64_t *c, uint64_t v) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                        memory_order_relaxed);
}

/* Observes ns in histogram which of the calling thread's own cell h. */
static inline void apex__mx_own_observe(apex__mx_hot_t *h, int which, uint64_t ns) {
  apex__mx_own_add(&h->hist[which][apex__mx_bucket_of(ns)], 1);
  apex__mx_own_add(&h->hist[which][APEX__MX_BUCKETS], ns);
}

/* The series of action a of p if made, else NULL: two loads. */
static inline apex__mx_series_t *apex__mx_series_of(const apex__plugin_t *p,
                                                   const apex_action_desc_t *a) {
  apex__mx_plugin_t *b = atomic_load_explicit(&((apex__plugin_t *)p)->mx, memory_order_acquire);
  return b ? atomic_load_explicit(&b->series[a - p->actions], memory_order_acquire) : NULL;
}

/* The calling thread's own cell of series s, or NULL when it has no slot
 * yet or shares the last cell (the out-of-line half then). */
static inline apex__mx_hot_t *apex__mx_own_cell(const apex__mx_tl_t *x, apex__mx_series_t *s) {
  if (!s || x->slot - 1u >= APEX__MX_SLOTS) return NULL;
  return (apex__mx_hot_t *)((char *)s + x->hot_off);
}

/* A submit of action a of p was accepted (after the task is queued: the
 * task is not read, a worker may be writing it). */
static inline void apex__mx_submitted(apex_manager_t *m, const apex__plugin_t *p,
                                      const apex_action_desc_t *a) {
  if (!m->mx) return;
  apex__mx_hot_t *h = apex__mx_own_cell(&apex__mx_tl, apex__mx_series_of(p, a));
  if (__builtin_expect(h != NULL, 1))
    apex__mx_own_add(&h->submitted, 1);
  else
    apex__mx_submitted_of_(p, a);
}
/* A submit naming action a of p was refused with code. */
static inline void apex__mx_rejected(apex_manager_t *m, const apex__plugin_t *p,
                                     const apex_action_desc_t *a, int code) {
  if (m->mx) apex__mx_rejected_(p, a, code);
}
/* An attempt opened on this thread (under t's lock, t->attempt counted). */
static inline void apex__mx_started(apex_manager_t *m, apex_task_t *t) {
  if (!m->mx) return;
  apex__mx_tl_t *x = &apex__mx_tl;
  const apex__plugin_t *p = t->plugin;
  apex__mx_series_t *s = apex__mx_series_of(p, t->action);
  apex__mx_hot_t *h = apex__mx_own_cell(x, s);
  if (__builtin_expect(!h, 0)) {
    apex__mx_started_(m, t);
    return;
  }
  /* With tracing on, the span's start too (obs/clock.h): the read its
   * hook made just before, found in the thread's stamp. */
  uint64_t now = m->tracer ? apex__obs_now(t, APEX__OBS_START) : apex__obs_clock_ns();
  apex__mx_own_add(&h->started, 1);
  uint32_t attempt = t->attempt;
  if (attempt == 1) {
    /* From the submit, or from its start time when it had one (it was
     * scheduled, not waiting, until then). */
    uint64_t from = t->out.submitted_ns;
    if (t->opts && t->opts->start_ns > from) from = t->opts->start_ns;
    apex__mx_own_observe(h, APEX__MX_H_QUEUE_WAIT, now > from ? now - from : 0);
  }
  x->t = t;
  x->id = t->id;
  x->plugin = p;
  x->attempt = attempt;
  x->start_ns = now;
  x->end_ns = 0;
  x->series = s;
  x->hot = h;
}
/* The open attempt of t ends (under t's lock). */
static inline void apex__mx_attempt_end(apex_manager_t *m, apex_task_t *t) {
  if (!m->mx) return;
  apex__mx_tl_t *x = &apex__mx_tl;
  /* Started on this thread, in its own cell (started above). */
  if (__builtin_expect(x->t == t && x->id == t->id && x->plugin == t->plugin &&
                           x->attempt == t->attempt && x->slot - 1u < APEX__MX_SLOTS, 1)) {
    x->t = NULL;
    /* With tracing on, the span's end too (obs/clock.h): its hook, after
     * this one, finds the read in the thread's stamp. */
    uint64_t now = m->tracer ? apex__obs_now(t, APEX__OBS_END) : apex__obs_clock_ns();
    /* Clamped: two TSC reads may come out a few ns apart in either order. */
    apex__mx_own_observe(x->hot, APEX__MX_H_ATTEMPT, now > x->start_ns ? now - x->start_ns : 0);
    x->end_ns = now; /* the finish reuses this read for the same task */
    return;
  }
  apex__mx_attempt_end_(m, t);
}
/* t waits to retry (under t's lock). */
static inline void apex__mx_retried(apex_manager_t *m, apex_task_t *t) {
  if (m->mx) apex__mx_retried_(t);
}
/* t became terminal in state with error e (NULL when it succeeded; may be
 * lazy), under t's lock. Most tasks: a success whose attempt just ended on
 * this thread, in its own cell; that end's clock read and cell serve. */
static inline void apex__mx_finished(apex_manager_t *m, apex_task_t *t, int state,
                                     apex_error_t *e) {
  if (!m->mx) return;
  apex__mx_tl_t *x = &apex__mx_tl;
  uint64_t now = x->end_ns;
  if (__builtin_expect(now && state == APEX_TASK_SUCCEEDED && x->id == t->id &&
                           x->plugin == t->plugin && x->slot - 1u < APEX__MX_SLOTS, 1)) {
    x->end_ns = 0;
    apex__mx_hot_t *h = x->hot;
    apex__mx_own_add(&h->succeeded, 1);
    /* Called before finish_locked stores the outcome in t->out: the word
     * still holds the submit time. */
    uint64_t from = t->out.submitted_ns;
    apex__mx_own_observe(h, APEX__MX_H_E2E, now > from ? now - from : 0);
    return;
  }
  apex__mx_finished_(t, state, e);
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
