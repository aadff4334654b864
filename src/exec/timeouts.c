/* The schedule-to-start, start-to-close and heartbeat timeouts (Temporal's
 * model; docs/scheduling.md): resolving them at submit, and the one timer
 * each task with any of them has.
 *
 * A task without these timeouts has no block and costs nothing here: no
 * clock read, no timer, no heap slot. One that has them gets a block
 * (apex__tmo_t) in its opts allocation and one entry in the manager's
 * timeout heap, armed for the earliest of what is pending: the first
 * attempt's start (schedule-to-start), the open attempt's end
 * (start-to-close) or its next heartbeat. The overall deadline
 * (schedule-to-close) stays in the deadline lists of runtime.c, which this
 * leaves as they are. A heartbeat only records its time under the task
 * lock; when the timer goes off before what is due (the attempt
 * heartbeated meanwhile) apex__task_on_timeout re-arms it for the new
 * time, so a plugin that heartbeats per item pays no heap operation for
 * it. The heap holds no task reference (a task in it is not yet released:
 * apex__timer_release_locked takes it out when the task ends), and a slot
 * is reserved at submit, so arming never allocates.
 *
 * Locks: the heap and each block's heap_idx, due and in_heap_reserved are
 * under pool_mu; the block's other mutable fields under the task lock,
 * which comes first (internal.h). Failure: a heap slot that cannot be
 * reserved fails the submit with APEX_E_NOMEM. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/policy.h"
#include "exec/internal.h"

/* One field: the call's value (0: the action's default, negative: none). */
static int pick(double call, double dflt, const char *field, uint64_t *ns, char *why, size_t n) {
  if (isnan(call) || isinf(call) || call > APEX__MAX_TIMEOUT_S) {
    snprintf(why, n,
             "%s %g: want a finite number of seconds, at most %g (0: the action's default, "
             "negative: none)",
             field, call, APEX__MAX_TIMEOUT_S);
    return APEX_E_INVALID;
  }
  double v = call == 0 ? dflt : call;
  *ns = v > 0 ? (uint64_t)(v * 1e9) : 0;
  if (v > 0 && *ns == 0) *ns = 1; /* a positive timeout below 1 ns is still one */
  return APEX_OK;
}

int apex__tmo_resolve(const apex_action_desc_t *a, const apex_submit_opts_t *o, uint64_t ns[3],
                      char *why, size_t n) {
  /* o is in this library's layout (submit copied it in), zero where the
   * caller's struct ended. The usual case first: nothing set anywhere. */
  if ((!o || (o->schedule_to_start_s == 0 && o->start_to_close_s == 0 &&
              o->heartbeat_timeout_s == 0)) &&
      a->schedule_to_start_s == 0 && a->start_to_close_s == 0 && a->heartbeat_timeout_s == 0) {
    ns[0] = ns[1] = ns[2] = 0;
    return APEX_OK;
  }
  int rc = pick(o ? o->schedule_to_start_s : 0, a->schedule_to_start_s, "schedule_to_start_s",
                &ns[0], why, n);
  if (rc == APEX_OK)
    rc = pick(o ? o->start_to_close_s : 0, a->start_to_close_s, "start_to_close_s", &ns[1], why,
              n);
  if (rc == APEX_OK)
    rc = pick(o ? o->heartbeat_timeout_s : 0, a->heartbeat_timeout_s, "heartbeat_timeout_s",
              &ns[2], why, n);
  return rc;
}

/* When the task may start, from o's run_after_s and run_at (the scheduler
 * holds it until then and checks them; here only finite, positive values
 * count). A start time is no queue time: schedule-to-start runs from it. */
static uint64_t start_time(const apex_submit_opts_t *o, uint64_t now) {
  uint64_t at = now;
  if (!o) return at;
  if (isfinite(o->run_after_s) && o->run_after_s > 0 && o->run_after_s <= APEX__MAX_TIMEOUT_S)
    at = now + (uint64_t)(o->run_after_s * 1e9);
  if (isfinite(o->run_at) && o->run_at > 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double wait = o->run_at - ((double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    if (wait > 0 && wait <= APEX__MAX_TIMEOUT_S) {
      uint64_t b = now + (uint64_t)(wait * 1e9);
      if (b > at) at = b;
    }
  }
  return at;
}

void apex__tmo_init(apex__tmo_t *tmo, apex_task_t *t, const uint64_t ns[3], uint64_t now,
                    const apex_submit_opts_t *o) {
  tmo->task = t;
  tmo->s2s_ns = ns[0];
  tmo->s2c_ns = ns[1];
  tmo->hb_ns = ns[2];
  tmo->s2s_at = ns[0] ? start_time(o, now) + ns[0] : 0;
  tmo->heap_idx = APEX__NOT_IN_HEAP;
}

/* ------------------------------------------------------------ the heap */

static void place(apex_manager_t *m, uint32_t i, apex__tmo_t *x) {
  m->theap[i] = x;
  x->heap_idx = i;
}

static void up(apex_manager_t *m, uint32_t i) {
  apex__tmo_t *x = m->theap[i];
  while (i > 0) {
    uint32_t p = (i - 1) / 2;
    if (m->theap[p]->due <= x->due) break;
    place(m, i, m->theap[p]);
    i = p;
  }
  place(m, i, x);
}

static void down(apex_manager_t *m, uint32_t i) {
  apex__tmo_t *x = m->theap[i];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= m->theap_len) break;
    if (c + 1 < m->theap_len && m->theap[c + 1]->due < m->theap[c]->due) c++;
    if (x->due <= m->theap[c]->due) break;
    place(m, i, m->theap[c]);
    i = c;
  }
  place(m, i, x);
}

static void remove_locked(apex_manager_t *m, apex__tmo_t *x) {
  uint32_t i = x->heap_idx;
  x->heap_idx = APEX__NOT_IN_HEAP;
  apex__tmo_t *last = m->theap[--m->theap_len];
  if (i == m->theap_len) return;
  place(m, i, last);
  if (i > 0 && m->theap[(i - 1) / 2]->due > last->due)
    up(m, i);
  else
    down(m, i);
}

int apex__tmo_reserve(apex_manager_t *m, apex__tmo_t *tmo) {
  int rc = APEX_OK;
  apex__lock(&m->pool_mu);
  if (m->theap_reserved == m->theap_cap) {
    uint64_t cap = m->theap_cap ? (uint64_t)m->theap_cap * 2 : 64;
    apex__tmo_t **h = cap < APEX__NOT_IN_HEAP ? realloc(m->theap, cap * sizeof *h) : NULL;
    if (h) {
      m->theap = h;
      m->theap_cap = (uint32_t)cap;
    }
  }
  if (m->theap_reserved < m->theap_cap) {
    m->theap_reserved++;
    tmo->in_heap_reserved = 1;
  } else {
    rc = APEX_E_NOMEM;
  }
  apex__unlock(&m->pool_mu);
  return rc;
}

void apex__tmo_unreserve(apex_manager_t *m, apex__tmo_t *tmo) {
  apex__lock(&m->pool_mu);
  apex__tmo_release_locked(m, tmo);
  apex__unlock(&m->pool_mu);
}

void apex__tmo_arm_locked(apex_manager_t *m, apex__tmo_t *tmo, uint64_t at) {
  if (!at || !tmo->in_heap_reserved) return;
  if (tmo->heap_idx != APEX__NOT_IN_HEAP) {
    /* Armed for that or earlier: it goes off then and re-arms for what is
     * due by that time. */
    if (tmo->due <= at) return;
    tmo->due = at;
    up(m, tmo->heap_idx);
  } else {
    tmo->due = at;
    m->theap[m->theap_len] = tmo; /* the slot reserved at submit */
    tmo->heap_idx = m->theap_len++;
    up(m, tmo->heap_idx);
  }
  apex__timer_earlier_locked(m, at);
}

void apex__tmo_submitted(apex_manager_t *m, apex_task_t *t) {
  apex__tmo_t *tmo = apex__task_tmo(t);
  if (!tmo || !tmo->s2s_ns) return;
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  /* Not if it started or ended meanwhile (an ended task's slot may be
   * given back already). */
  int st = atomic_load(&t->state);
  if (t->attempt == 0 && (st == APEX_TASK_QUEUED || st == APEX_TASK_SCHEDULED) && tmo->s2s_at) {
    apex__lock(&m->pool_mu);
    apex__tmo_arm_locked(m, tmo, tmo->s2s_at);
    apex__unlock(&m->pool_mu);
  }
  pthread_mutex_unlock(mu);
}

void apex__tmo_release_locked(apex_manager_t *m, apex__tmo_t *tmo) {
  if (tmo->heap_idx != APEX__NOT_IN_HEAP) remove_locked(m, tmo);
  if (tmo->in_heap_reserved) {
    tmo->in_heap_reserved = 0;
    m->theap_reserved--;
  }
}

uint64_t apex__tmo_next_locked(apex_manager_t *m) { return m->theap_len ? m->theap[0]->due : 0; }

apex_task_t *apex__tmo_pop_due_locked(apex_manager_t *m, uint64_t now) {
  if (!m->theap_len || m->theap[0]->due > now) return NULL;
  apex__tmo_t *x = m->theap[0];
  remove_locked(m, x);
  apex__task_ref(x->task); /* alive while in the heap (not yet released) */
  return x->task;
}

void apex__tmo_fini(apex_manager_t *m) {
  free(m->theap);
  m->theap = NULL;
  m->theap_len = m->theap_cap = m->theap_reserved = 0;
}
