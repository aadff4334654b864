/* The operation metrics' counting side: the cells every task event adds
 * to, and the hooks the task lifecycle calls (declared in
 * src/obs/metrics.h, which says where each one is called from).
 *
 * Layout. Each action has a series (apex__mx_series_t), made on the first
 * event that names it and kept until the manager goes: one cold cell of
 * atomic counters for what only some tasks pay (a failure by code, a
 * timeout by kind, a cancel by reason, a refused submit or report), and
 * APEX__MX_SLOTS + 1 hot cells, one per thread slot, for what every task
 * pays (submitted, started, succeeded, the histograms). A thread takes a
 * slot on its first event (a process-wide bitmap; the slot goes back when
 * the thread exits, through a pthread key's destructor, after which the
 * thread counts in the shared cell: slot_release) and is then the
 * only writer of that slot's cells: a count is a relaxed load and a
 * relaxed store, no lock prefix, no line shared with another writer.
 * Threads beyond APEX__MX_SLOTS share the last cell with atomic adds. A
 * snapshot sums the cells (relaxed loads): a count read mid-task may lag
 * the task's other counts by that task, never more.
 *
 * Clocks. An attempt's duration needs its start: the run state has no
 * byte to spare for it (exec/internal.h), so the starting thread keeps it
 * in a thread-local and the attempt's end reads it there when it ends on
 * the same thread (every blocking attempt; a deferred one completed from
 * its handler's thread). A deferred attempt completed from another thread
 * is not observed in that histogram (docs/observability.md says so). The
 * end's clock read serves the task's end-to-end time too. Queue wait and
 * end-to-end time start from the submit time the task keeps
 * (t->out.submitted_ns: the deadline's clock read, else the coarse clock).
 * The hooks' own reads are the observers' clock (obs/clock.h: the TSC
 * scaled to CLOCK_MONOTONIC where the kernel keeps its clock on it).
 * A bucket is found from the duration's bit length (metrics.h).
 *
 * Locks: none of its own; the hooks run under the task's lock where their
 * call sites hold it. Failure: a series that cannot be allocated is not
 * made; that action's events are then not counted, and the next event
 * tries again. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "obs/clock.h"
#include "obs/metrics.h"
#include "ops/ops.h"

const uint64_t apex__mx_bounds_ns[APEX_METRICS_N_BOUNDS] = {
    10000ull,     50000ull,      100000ull,     500000ull,      1000000ull,
    5000000ull,   10000000ull,   50000000ull,   100000000ull,   500000000ull,
    1000000000ull, 5000000000ull, 10000000000ull, 60000000000ull, 300000000000ull};
const double apex__mx_bounds_s[APEX_METRICS_N_BOUNDS] = {
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05,
    0.1,     0.5,     1,      5,      10,     60,    300};
/* Generated from the bounds above (bench/analysis.md has the script);
 * tests/unit/test_metrics_cost.c checks it against a search of every bit
 * length's edges and every bound's neighbours. */
#define NONE UINT64_MAX
const apex__mx_blen_t apex__mx_blen[65] = {
    {NONE, 0},          {NONE, 0},          {NONE, 0},          {NONE, 0},
    {NONE, 0},          {NONE, 0},          {NONE, 0},          {NONE, 0},
    {NONE, 0},          {NONE, 0},          {NONE, 0},          {NONE, 0},
    {NONE, 0},          {NONE, 0},          {10000ull, 0},      {NONE, 1},
    {50000ull, 1},      {100000ull, 2},     {NONE, 3},          {500000ull, 3},
    {1000000ull, 4},    {NONE, 5},          {NONE, 5},          {5000000ull, 5},
    {10000000ull, 6},   {NONE, 7},          {50000000ull, 7},   {100000000ull, 8},
    {NONE, 9},          {500000000ull, 9},  {1000000000ull, 10}, {NONE, 11},
    {NONE, 11},         {5000000000ull, 11}, {10000000000ull, 12}, {NONE, 13},
    {60000000000ull, 13}, {NONE, 14},       {NONE, 14},         {300000000000ull, 14},
    {NONE, 15},         {NONE, 15},         {NONE, 15},         {NONE, 15},
    {NONE, 15},         {NONE, 15},         {NONE, 15},         {NONE, 15},
    {NONE, 15},         {NONE, 15},         {NONE, 15},         {NONE, 15},
    {NONE, 15},         {NONE, 15},         {NONE, 15},         {NONE, 15},
    {NONE, 15},         {NONE, 15},         {NONE, 15},         {NONE, 15},
    {NONE, 15},         {NONE, 15},         {NONE, 15},         {NONE, 15},
    {NONE, 15}};
#undef NONE
_Static_assert(APEX_METRICS_N_BOUNDS == 15, "apex__mx_blen is made for these 15 bounds");
const char *const apex__mx_tmo_names[APEX__MX_N_TMO] = {"schedule_to_close", "schedule_to_start",
                                                        "start_to_close", "heartbeat"};
const char *const apex__mx_reason_names[APEX__MX_N_REASONS] = {"user", "parent", "shutdown"};

/* ------------------------------------------------------------ codes */

/* The codes of include/apex/common.h in three runs: -1..-9, -20..-25,
 * -40..-45; anything else is "other" (the last index). */
unsigned apex__mx_code_index(int code) {
  if (code <= -1 && code >= -9) return (unsigned)(-code - 1);
  if (code <= -20 && code >= -25) return (unsigned)(9 + (-code - 20));
  if (code <= -40 && code >= -45) return (unsigned)(15 + (-code - 40));
  return APEX__MX_N_CODES - 1;
}

int apex__mx_code_of(unsigned i) {
  if (i < 9) return -(int)i - 1;
  if (i < 15) return -20 - (int)(i - 9);
  if (i < 21) return -40 - (int)(i - 15);
  return 0;
}

/* ------------------------------------------------------ thread slots */

static pthread_once_t slot_once = PTHREAD_ONCE_INIT;
static pthread_key_t slot_key;
static int slot_key_ok;
static _Atomic uint32_t slot_bits; /* taken slots */

/* The calling thread's state (metrics.h). initial-exec: a hook reads it
 * on every event, and the default model for a shared library costs a call
 * to __tls_get_addr per access (a few bytes of the static TLS block, which
 * glibc keeps room for even when the library is dlopen'ed). With id, which
 * is unique in its manager only, the task's plugin (one per manager) says
 * it is the same task: a thread may serve two managers (a host's, a
 * plugin's thread completing tasks of both). Only a worker sets t
 * (apex__task_run), so only a worker records an end, and a worker never
 * outlives its manager: series and hot are never read after its manager
 * freed them. */
_Thread_local apex__mx_tl_t apex__mx_tl __attribute__((tls_model("initial-exec")));
#define tl apex__mx_tl

_Thread_local apex__obs_stamp_t apex__obs_stamp __attribute__((tls_model("initial-exec")));

/* The key's destructor, on the exiting thread: its slot goes back, and
 * the thread shares the last cell from now on. Other keys' destructors
 * may run after this one on the same thread (destructor order is the
 * keys' order in glibc, unspecified in POSIX): a host's or a plugin's
 * that submits, completes a deferred ctx or ends a task counts then, and
 * with its old slot kept it would write, with plain stores, a cell the
 * slot's next owner writes too, losing counts of both (and trace.c would
 * share that owner's span list). The shared cell takes atomic adds; no
 * slot is taken again (a key set now might find its destructor pass
 * already over, and keep the slot forever). */
static void slot_release(void *v) {
  unsigned s = (unsigned)(uintptr_t)v - 1;
  tl.slot = APEX__MX_SLOTS + 1;
  tl.hot_off = offsetof(apex__mx_series_t, hot) + (size_t)APEX__MX_SLOTS * sizeof(apex__mx_hot_t);
  if (s < APEX__MX_SLOTS) atomic_fetch_and(&slot_bits, ~(1u << s));
}

static void slot_key_make(void) { slot_key_ok = pthread_key_create(&slot_key, slot_release) == 0; }

/* A host that dlcloses the library must not leave a key whose destructor
 * points into unmapped code for its threads' exits. */
__attribute__((destructor)) static void slot_key_drop(void) {
  if (slot_key_ok) pthread_key_delete(slot_key);
}

_Static_assert(APEX__MX_SLOTS <= 32, "slot_bits is one 32-bit word");

/* The calling thread's cell index, taking a slot on first use. */
static unsigned slot_get(void) {
  unsigned s = tl.slot;
  if (__builtin_expect(s != 0, 1)) return s - 1;
  s = APEX__MX_SLOTS; /* shared, unless a slot is free and can be given back */
  pthread_once(&slot_once, slot_key_make);
  if (slot_key_ok) {
    uint32_t bits = atomic_load(&slot_bits);
    while (~bits) {
      unsigned i = (unsigned)__builtin_ctz(~bits);
      if (i >= APEX__MX_SLOTS) break;
      if (atomic_compare_exchange_weak(&slot_bits, &bits, bits | (1u << i))) {
        if (pthread_setspecific(slot_key, (void *)(uintptr_t)(i + 1)) == 0) {
          s = i;
        } else {
          atomic_fetch_and(&slot_bits, ~(1u << i));
        }
        break;
      }
    }
  }
  tl.hot_off = offsetof(apex__mx_series_t, hot) + (size_t)s * sizeof(apex__mx_hot_t);
  tl.slot = s + 1;
  return s;
}

unsigned apex__obs_thread_slot(void) { return slot_get(); }

/* Adds v to a hot counter of cell slot: one writer per owned slot. */
static inline void hot_add(unsigned slot, _Atomic uint64_t *c, uint64_t v) {
  if (__builtin_expect(slot < APEX__MX_SLOTS, 1))
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                          memory_order_relaxed);
  else
    atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static inline void cold_add(_Atomic uint64_t *c) {
  atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static inline void observe(unsigned slot, apex__mx_hot_t *h, int which, uint64_t ns) {
  hot_add(slot, &h->hist[which][apex__mx_bucket_of(ns)], 1);
  hot_add(slot, &h->hist[which][APEX__MX_BUCKETS], ns);
}

/* ------------------------------------------------------------ series */

int apex__mx_init(apex_manager_t *m) {
  m->mx = NULL;
  if (m->cfg.metrics == APEX_METRICS_OFF) return APEX_OK;
  apex__mx_t *mx = calloc(1, sizeof *mx);
  if (!mx) return APEX_E_NOMEM;
  m->mx = mx;
  return APEX_OK;
}

void apex__mx_fini(apex_manager_t *m) {
  for (size_t i = 0; i < m->n_plugins; i++) {
    apex__mx_plugin_t *b = atomic_load(&m->plugins[i]->mx);
    if (!b) continue;
    for (size_t j = 0; j < b->n; j++) free(atomic_load(&b->series[j]));
    free(b);
    atomic_store(&m->plugins[i]->mx, NULL);
  }
  free(m->mx);
  m->mx = NULL;
}

static size_t action_index(const apex__plugin_t *p, const apex_action_desc_t *a) {
  return (size_t)(a - p->actions);
}

apex__mx_series_t *apex__mx_series_peek(const apex__plugin_t *p, const apex_action_desc_t *a) {
  apex__mx_plugin_t *b = atomic_load_explicit(&((apex__plugin_t *)p)->mx, memory_order_acquire);
  if (!b) return NULL;
  return atomic_load_explicit(&b->series[action_index(p, a)], memory_order_acquire);
}

/* series_get's first use of a plugin or an action: makes what is missing
 * (lock-free: a racing maker's copy is freed). NULL on no memory. */
static __attribute__((noinline)) apex__mx_series_t *series_make(apex__plugin_t *p,
                                                               const apex_action_desc_t *a) {
  apex__mx_plugin_t *b = atomic_load_explicit(&p->mx, memory_order_acquire);
  if (!b) {
    /* Lines of its own: every task's first event reads it, and from
     * calloc it shared a line with the submitter's next allocation (a
     * task, which workers write): a cache miss on most starts. */
    size_t n = p->desc.n_actions;
    size_t size = sizeof(apex__mx_plugin_t) + n * sizeof(_Atomic(apex__mx_series_t *));
    size = (size + APEX__CACHE_LINE - 1) / APEX__CACHE_LINE * APEX__CACHE_LINE;
    void *mem = NULL;
    if (posix_memalign(&mem, APEX__CACHE_LINE, size) != 0) return NULL;
    apex__mx_plugin_t *nb = memset(mem, 0, size);
    nb->n = n;
    apex__mx_plugin_t *expect = NULL;
    if (atomic_compare_exchange_strong(&p->mx, &expect, nb)) {
      b = nb;
    } else {
      free(nb);
      b = expect;
    }
  }
  size_t i = action_index(p, a);
  apex__mx_series_t *s = atomic_load_explicit(&b->series[i], memory_order_acquire);
  if (!s) {
    void *mem = NULL;
    if (posix_memalign(&mem, APEX__CACHE_LINE, sizeof *s) != 0) return NULL;
    apex__mx_series_t *ns = memset(mem, 0, sizeof *s);
    apex__mx_series_t *expect = NULL;
    if (atomic_compare_exchange_strong(&b->series[i], &expect, ns)) {
      s = ns;
    } else {
      free(ns);
      s = expect;
    }
  }
  return s;
}

/* The series of a of p, made if needed. NULL on no memory. */
static inline apex__mx_series_t *series_get(const apex__plugin_t *p,
                                            const apex_action_desc_t *a) {
  apex__mx_series_t *s = apex__mx_series_peek(p, a);
  return __builtin_expect(s != NULL, 1) ? s : series_make((apex__plugin_t *)p, a);
}

/* ------------------------------------------------------------- hooks */

void apex__mx_submitted_of_(const apex__plugin_t *p, const apex_action_desc_t *a) {
  apex__mx_series_t *s = series_get(p, a);
  if (!s) return;
  unsigned slot = slot_get();
  hot_add(slot, &s->hot[slot].submitted, 1);
}

void apex__mx_submitted_(apex_task_t *t) { apex__mx_submitted_of_(t->plugin, t->action); }

void apex__mx_rejected_(const apex__plugin_t *p, const apex_action_desc_t *a, int code) {
  apex__mx_series_t *s = series_get(p, a);
  if (s) cold_add(&s->cold.rejected[apex__mx_code_index(code)]);
}

void apex__mx_started_(apex_manager_t *m, apex_task_t *t) {
  apex__mx_series_t *s = series_get(t->plugin, t->action);
  if (!s) return;
  unsigned slot = slot_get();
  /* With tracing on, the span's start too (obs/clock.h); off, no stamp. */
  uint64_t now = m->tracer ? apex__obs_now(t, APEX__OBS_START) : apex__obs_clock_ns();
  hot_add(slot, &s->hot[slot].started, 1);
  if (t->attempt == 1) {
    /* From the submit, or from its start time when it had one (it was
     * scheduled, not waiting, until then). */
    uint64_t from = t->out.submitted_ns;
    if (t->opts && t->opts->start_ns > from) from = t->opts->start_ns;
    observe(slot, &s->hot[slot], APEX__MX_H_QUEUE_WAIT, now > from ? now - from : 0);
  }
  tl.t = t;
  tl.id = t->id;
  tl.attempt = t->attempt;
  tl.start_ns = now;
  tl.end_ns = 0;
  tl.series = s;
  tl.hot = &s->hot[slot];
  tl.plugin = t->plugin;
}

void apex__mx_attempt_end_(apex_manager_t *m, apex_task_t *t) {
  if (tl.t != t || tl.id != t->id || tl.plugin != t->plugin || tl.attempt != t->attempt) return;
  tl.t = NULL;
  unsigned slot = slot_get();
  /* With tracing on, the span's end too (obs/clock.h); off, no stamp. */
  uint64_t now = m->tracer ? apex__obs_now(t, APEX__OBS_END) : apex__obs_clock_ns();
  /* Clamped: two TSC reads may come out a few ns apart in either order. */
  observe(slot, &tl.series->hot[slot], APEX__MX_H_ATTEMPT,
          now > tl.start_ns ? now - tl.start_ns : 0);
  tl.end_ns = now; /* finished_ reuses this read for the same task */
}

void apex__mx_retried_(apex_task_t *t) {
  tl.end_ns = 0; /* this end ends no task: a later end must read the clock */
  apex__mx_series_t *s = apex__mx_series_peek(t->plugin, t->action);
  if (!s) return;
  unsigned slot = slot_get();
  hot_add(slot, &s->hot[slot].retried, 1);
}

/* Why a cancelled task was cancelled, from what it keeps: its token's
 * reason, or a lazy cancel's cause (exec/internal.h); anything else
 * (a plain cancel, a handler's own APEX_E_CANCELLED) counts as "user". */
static unsigned cancel_reason(apex_task_t *t, const apex_error_t *e) {
  const char *why = NULL;
  apex_token_t *tok = apex__task_token_peek(t);
  if (apex_token_is_cancelled(tok)) why = apex_token_reason(tok);
  if (!why && e && apex__error_is_lazy(e) &&
      (((uintptr_t)e >> 1) & 0x7f) == APEX__LAZY_CANCEL)
    why = apex__cause_name((apex__cause_t)((uintptr_t)e >> 8));
  if (why && strcmp(why, "parent") == 0) return 1;
  if (why && strcmp(why, "shutdown") == 0) return 2;
  return 0;
}

/* Which timeout ended t (an index of apex__mx_tmo_names). */
static unsigned timeout_kind(const apex_error_t *e) {
  const char *k = e && !apex__error_is_lazy(e) ? apex_error_timeout_kind(e) : NULL;
  for (unsigned i = 0; k && i < APEX__MX_N_TMO; i++)
    if (strcmp(k, apex__mx_tmo_names[i]) == 0) return i;
  return 0; /* the overall deadline's is the default */
}

static int error_code(const apex_error_t *e) {
  if (!e) return APEX_E_EXECUTION;
  if (apex__error_is_lazy(e)) {
    unsigned kind = ((uintptr_t)e >> 1) & 0x7f;
    return kind == APEX__LAZY_STATUS ? -(int)((uintptr_t)e >> 8) : APEX_E_CANCELLED;
  }
  return apex_error_code(e);
}

/* Every finish the inline half (metrics.h) does not take: a failure, a
 * cancel, a timeout, a success ended elsewhere or in the shared cell. */
void apex__mx_finished_(apex_task_t *t, int state, apex_error_t *e) {
  /* The attempt's end just read the clock for this task on this thread:
   * that read and its series serve (a task ended elsewhere looks up its
   * own). */
  apex__mx_series_t *s;
  uint64_t now;
  if (tl.end_ns && tl.id == t->id && tl.plugin == t->plugin) {
    s = tl.series;
    now = tl.end_ns;
  } else {
    if (!(s = apex__mx_series_peek(t->plugin, t->action))) return;
    now = apex__obs_clock_ns();
  }
  tl.end_ns = 0;
  unsigned slot = slot_get();
  apex__mx_hot_t *h = &s->hot[slot];
  switch (state) {
    case APEX_TASK_SUCCEEDED: hot_add(slot, &h->succeeded, 1); break;
    case APEX_TASK_FAILED: cold_add(&s->cold.failed[apex__mx_code_index(error_code(e))]); break;
    case APEX_TASK_CANCELLED: cold_add(&s->cold.cancelled[cancel_reason(t, e)]); break;
    default: cold_add(&s->cold.timed_out[timeout_kind(e)]); break;
  }
  /* Called before finish_locked stores the outcome in t->out: the word
   * still holds the submit time. */
  uint64_t from = t->out.submitted_ns;
  observe(slot, h, APEX__MX_H_E2E, now > from ? now - from : 0);
}

void apex__mx_progress_flushed_(apex_task_t *t, apex__progress_slot_t *ps) {
  apex__mx_series_t *s = apex__mx_series_peek(t->plugin, t->action);
  uint32_t rep = ps->mx_reports, del = ps->mx_delivered;
  ps->mx_reports = ps->mx_delivered = 0;
  ps->mx_first_ns = 0;
  if (!s) return;
  unsigned slot = slot_get();
  apex__mx_hot_t *h = &s->hot[slot];
  if (rep) hot_add(slot, &h->prog_reported, rep);
  if (del) hot_add(slot, &h->prog_delivered, del);
  if (rep > del) hot_add(slot, &h->prog_coalesced, rep - del);
}

void apex__mx_progress_rejected_(apex_task_t *t) {
  apex__mx_series_t *s = series_get(t->plugin, t->action);
  if (s) cold_add(&s->cold.prog_rejected);
}

void apex__mx_progress_event_(apex__ev_t *ev, const apex__progress_slot_t *s) {
  ev->mx_at = s->mx_first_ns;
}

void apex__mx_progress_delivered_(apex_manager_t *m, const apex__ev_t *ev) {
  (void)m;
  apex_task_t *t = ev->ev.task;
  if (!ev->mx_at || !t) return;
  apex__mx_series_t *s = apex__mx_series_peek(t->plugin, t->action);
  if (!s) return;
  unsigned slot = slot_get();
  uint64_t now = apex__obs_clock_ns(); /* the report's clock (metrics.h) */
  observe(slot, &s->hot[slot], APEX__MX_H_PROGRESS, now > ev->mx_at ? now - ev->mx_at : 0);
}
