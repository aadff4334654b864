/* Operation groups (apex_group_t): tasks a host submits together, to wait
 * for the first or all of them, cancel as one and read as one.
 *
 * What it owns: the group (a mutex and condition variable, its members in
 * submit order, and the order in which they ended), and the process-wide
 * set of live groups through which every call checks its handle.
 *
 * How a member is tracked: apex_group_submit reserves the member's slot
 * (index idx) before it submits, and the submit stores (group, idx) in the
 * task's options block (exec/manager.c), so the task's terminal transition
 * (exec/task.c, finish_locked) finds its slot without a search and without
 * a byte in the 120-byte task: apex__group_member_end, under the task's
 * lock, appends idx to the end order, wakes waiters and queues the GROUP
 * event. A task that ends before its submit returned is recorded all the
 * same (the hook fills in the slot's task).
 *
 * References: the group holds one on each member task until release (so
 * apex_group_wait_any can hand a task out after it ended). The group is
 * itself counted: the host's handle, each member not yet ended (taken
 * before its submit, handed by its end to the GROUP event it queues, or
 * dropped), each queued GROUP event, and each call in progress. The group
 * holds a manager reference (memory, not threads) until it is freed.
 * Release drops the host's handle and the task references at once, and
 * from then on every call refuses the group (each checks `released` under
 * its lock, also one that validated the handle just before); the rest (a
 * shell whose slots a live member's end or a submit still returning
 * marks) goes with the last reference.
 *
 * Locks: the group's mutex is a leaf taken under a task stripe lock (the
 * hook), never the other way round: calls copy what they need under it and
 * call into tasks after dropping it. The live-groups set's mutex is a leaf
 * taken alone. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/abi.h"
#include "core/error.h"
#include "exec/internal.h"
#include "ops/group.h"
#include "ops/ops.h"

/* ------------------------------------------------------ live-groups set */

#define LIVE_BUCKETS 256u
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static apex_group_t *live[LIVE_BUCKETS];
static atomic_uint_fast64_t next_group_id = 1;

static unsigned live_bucket(const apex_group_t *g) {
  uintptr_t p = (uintptr_t)g;
  return (unsigned)((p >> 6) ^ (p >> 14)) % LIVE_BUCKETS;
}

/* Returns g with a call reference if it is a live group, else NULL. Only
 * compares addresses of groups in the set: never reads a stale handle. */
apex_group_t *apex__group_get(apex_group_t *g) {
  if (!g) return NULL;
  pthread_mutex_lock(&live_mu);
  apex_group_t *f = live[live_bucket(g)];
  while (f && f != g) f = f->live_next;
  if (f) atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
  pthread_mutex_unlock(&live_mu);
  return f;
}

static void group_free(apex_group_t *g) {
  pthread_mutex_destroy(&g->mu);
  pthread_cond_destroy(&g->cv);
  free(g->members);
  free(g->order);
  apex_manager_t *m = g->m;
  free(g);
  apex__manager_unref(m);
}

void apex__group_unref(apex_group_t *g) {
  if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1) group_free(g);
}

void apex__group_event_done(apex_group_t *g) { apex__group_unref(g); }

apex_status_t apex_group_new(apex_manager_t *m, apex_group_t **out) {
  if (out) *out = NULL;
  if (!m || !out) return APEX_E_INVALID;
  if (atomic_load(&m->shutting_down)) return APEX_E_SHUTTING_DOWN;
  apex_group_t *g = calloc(1, sizeof *g);
  if (!g) return APEX_E_NOMEM;
  pthread_condattr_t ca;
  int ok = pthread_condattr_init(&ca) == 0;
  if (ok) {
    ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&g->cv, &ca) == 0;
    pthread_condattr_destroy(&ca);
  }
  if (!ok) {
    free(g);
    return APEX_E_NOMEM;
  }
  if (pthread_mutex_init(&g->mu, NULL) != 0) {
    pthread_cond_destroy(&g->cv);
    free(g);
    return APEX_E_NOMEM;
  }
  g->m = m;
  atomic_fetch_add(&m->refs, 1); /* its memory, as a task's handle keeps it */
  g->id = atomic_fetch_add(&next_group_id, 1);
  atomic_init(&g->refs, 1);
  pthread_mutex_lock(&live_mu);
  unsigned b = live_bucket(g);
  g->live_next = live[b];
  live[b] = g;
  pthread_mutex_unlock(&live_mu);
  *out = g;
  return APEX_OK;
}

/* ------------------------------------------------------------- members */

/* Reserves a member slot (g->mu held). Returns 0 on no memory. Both
 * arrays grow together, so the hook never allocates: order has room for
 * every slot. */
static int reserve_locked(apex_group_t *g, size_t *idx) {
  if (g->n == g->cap) {
    size_t cap = g->cap ? g->cap * 2 : 16;
    apex__gmember_t *mem = realloc(g->members, cap * sizeof *mem);
    if (!mem) return 0;
    g->members = mem;
    size_t *ord = realloc(g->order, cap * sizeof *ord);
    if (!ord) return 0; /* members grew; cap stays: retried next time */
    g->order = ord;
    g->cap = cap;
  }
  *idx = g->n++;
  memset(&g->members[*idx], 0, sizeof g->members[*idx]);
  return 1;
}

void apex__group_member_end(apex_task_t *t, int state) {
  apex_group_t *g = t->opts->group;
  size_t idx = t->opts->group_idx;
  apex_manager_t *m = apex__task_m(t);
  /* Made before the group's lock; what it depends on is immutable. NULL:
   * not wanted, or no memory (the event is lost; the group's record is
   * not). */
  apex__ev_t *n = apex__events_wanted(m, t, APEX_EVENT_GROUP) ? calloc(1, sizeof *n) : NULL;
  pthread_mutex_lock(&g->mu);
  apex__gmember_t *e = &g->members[idx]; /* the arrays outlive release */
  e->ended = 1; /* also tells a submit still returning that it was queued */
  if (g->released) {
    pthread_mutex_unlock(&g->mu);
    free(n);
    apex__group_unref(g); /* the membership's; t's manager ref keeps m */
    return;
  }
  if (!e->task) { /* ended before its submit returned */
    e->task = t;
    apex__task_ref(t);
  }
  g->order[g->n_ended++] = idx;
  uint64_t change = ++g->changes;
  if (g->waiters) pthread_cond_broadcast(&g->cv);
  if (n) {
    n->ev.type = APEX_EVENT_GROUP;
    n->ev.task = t;
    n->ev.task_id = t->id;
    n->ev.seq = change;
    n->ev.attempt = t->attempt;
    n->ev.state = (apex_task_state_t)state;
    n->ev.group = g; /* the membership's reference moves to the event */
    apex__task_ref(t);
    /* Pushed under the group's lock (ev_mu nests under it, and nothing
     * holding ev_mu takes it), so GROUP events queue in seq order. */
    apex__events_push(m, n);
  }
  pthread_mutex_unlock(&g->mu);
  if (!n) apex__group_unref(g);
}

uint64_t apex__group_of(apex_task_t *t) {
  return t->opts && t->opts->group ? t->opts->group->id : 0;
}

apex_status_t apex_group_submit(apex_group_t *g, const char *plugin, const char *action,
                                 json_t *params, const apex_submit_opts_t *opts,
                                 apex_task_t **out, apex_error_t **err) {
  if (out) *out = NULL;
  apex_group_t *gr = apex__group_get(g);
  if (!gr) return apex__fail(err, APEX_E_INVALID, "apex_group_submit: %s",
                             g ? "the group was released (or is no group)" : "group is NULL");
  pthread_mutex_lock(&g->mu);
  size_t idx = 0;
  int released = g->released, cancelled = g->cancelled;
  int ok = !released && !cancelled && reserve_locked(g, &idx);
  if (ok) {
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed); /* the membership's */
  }
  pthread_mutex_unlock(&g->mu);
  if (!ok) {
    apex__group_unref(g);
    if (released) return apex__fail(err, APEX_E_INVALID, "apex_group_submit: the group was released");
    return cancelled ? apex__fail(err, APEX_E_CANCELLED, "apex_group_submit: group %llu was cancelled",
                                  (unsigned long long)g->id)
                     : apex__fail(err, APEX_E_NOMEM, "out of memory");
  }
  apex__member_t mem = {g, idx};
  apex_task_t *t = NULL;
  int rc = apex__submit(g->m, plugin, action, params, opts, NULL, &mem, &t, err);
  pthread_mutex_lock(&g->mu);
  apex__gmember_t *e = &g->members[idx];
  int never_queued = rc != APEX_OK && !e->ended;
  if (never_queued) {
    /* No end will come: a void slot, no member, and the membership's
     * reference is ours to drop. (A submit that failed after queueing its
     * task ended it, and that end took the slot and the reference.) */
    e->voided = 1;
    g->n_void++;
    if (g->waiters) pthread_cond_broadcast(&g->cv);
  } else if (t && !g->released && !e->task) {
    e->task = t;
    apex__task_ref(t);
  }
  cancelled = g->cancelled;
  pthread_mutex_unlock(&g->mu);
  if (never_queued) apex__group_unref(g); /* the membership's */
  if (rc == APEX_OK && cancelled) (void)apex_task_cancel(t, NULL); /* cancel raced the submit */
  if (rc == APEX_OK && out)
    *out = t;
  else
    apex_task_release(t);
  apex__group_unref(g);
  return rc;
}

uint64_t apex_group_id(apex_group_t *g) {
  if (!apex__group_get(g)) return 0;
  uint64_t id = g->id;
  apex__group_unref(g);
  return id;
}

size_t apex_group_size(apex_group_t *g) {
  if (!apex__group_get(g)) return 0;
  pthread_mutex_lock(&g->mu);
  size_t n = g->released ? 0 : g->n - g->n_void;
  pthread_mutex_unlock(&g->mu);
  apex__group_unref(g);
  return n;
}

/* The i-th member that is not void, or NULL (g->mu held). */
static apex_task_t *member_at_locked(apex_group_t *g, size_t i) {
  for (size_t k = 0; k < g->n; k++) {
    if (g->members[k].voided) continue;
    if (i-- == 0) return g->members[k].task;
  }
  return NULL;
}

apex_task_t *apex_group_task(apex_group_t *g, size_t i) {
  if (!apex__group_get(g)) return NULL;
  pthread_mutex_lock(&g->mu);
  apex_task_t *t = g->released ? NULL : member_at_locked(g, i);
  if (t) apex__task_ref(t);
  pthread_mutex_unlock(&g->mu);
  apex__group_unref(g);
  return t;
}

/* Copies the members' task pointers, each with a reference (g->mu held);
 * NULL with *n 0 when there are none or no memory (*nomem then). A slot
 * whose submit has not returned yet has no task and is left out. */
static apex_task_t **members_copy_locked(apex_group_t *g, size_t *n, int *nomem) {
  *n = 0;
  *nomem = 0;
  if (!g->n || g->released) return NULL;
  apex_task_t **a = malloc(g->n * sizeof *a);
  if (!a) {
    *nomem = 1;
    return NULL;
  }
  for (size_t k = 0; k < g->n; k++) {
    apex_task_t *t = g->members[k].task;
    if (g->members[k].voided || !t) continue;
    apex__task_ref(t);
    a[(*n)++] = t;
  }
  return a;
}

static void tasks_unref(apex_task_t **a, size_t n) {
  for (size_t i = 0; i < n; i++) apex__task_unref(a[i]);
  free(a);
}

/* ms left until `until` (ns; UINT64_MAX: forever -> -1). */
static int64_t ms_left(uint64_t until) {
  if (until == UINT64_MAX) return -1;
  uint64_t now = apex__now_ns();
  return now >= until ? 0 : (int64_t)((until - now + 999999u) / 1000000u);
}

/* Waits on g->cv until `until` (g->mu held). Returns 0 once it passed. */
static int cv_wait_until(apex_group_t *g, uint64_t until) {
  if (until == UINT64_MAX) {
    pthread_cond_wait(&g->cv, &g->mu);
    return 1;
  }
  if (apex__now_ns() >= until) return 0;
  struct timespec ts = {(time_t)(until / 1000000000u), (long)(until % 1000000000u)};
  pthread_cond_timedwait(&g->cv, &g->mu, &ts);
  return 1;
}

static apex_status_t wait_refused(apex_group_t *g, const char *what) {
  if (!apex__group_get(g)) return APEX_E_INVALID;
  if (apex__on_runtime_thread(g->m)) {
    apex__log(&g->m->log, APEX_LOG_WARN,
              "%s: called on Apex's runtime thread (a LOOP event callback), which must not block",
              what);
    apex__group_unref(g);
    return APEX_E_INVALID;
  }
  return APEX_OK;
}

apex_status_t apex_group_wait_any(apex_group_t *g, int64_t timeout_ms, apex_task_t **out) {
  if (out) *out = NULL;
  if (!out) return APEX_E_INVALID;
  apex_status_t rc = wait_refused(g, "apex_group_wait_any");
  if (rc != APEX_OK) return rc;
  uint64_t until = apex__ns_after_ms(timeout_ms);
  apex_task_t *t = NULL;
  pthread_mutex_lock(&g->mu);
  g->waiters++;
  for (;;) {
    if (g->released) { /* by another thread meanwhile */
      rc = APEX_E_INVALID;
      break;
    }
    if (g->taken < g->n_ended) {
      t = g->members[g->order[g->taken++]].task;
      apex__task_ref(t);
      break;
    }
    if (g->taken + g->n_void == g->n) {
      rc = APEX_E_ALREADY;
      break;
    }
    if (!cv_wait_until(g, until)) {
      rc = APEX_E_AGAIN;
      break;
    }
  }
  g->waiters--;
  pthread_mutex_unlock(&g->mu);
  if (t) {
    /* Terminal already; in LOOP mode its DONE callback may still run. */
    rc = apex_task_wait(t, ms_left(until));
    if (rc == APEX_OK) {
      *out = t;
    } else {
      /* Give it back to the next call: it ended, only its callback is late. */
      pthread_mutex_lock(&g->mu);
      for (size_t k = g->taken; !g->released && k-- > 0;)
        if (g->members[g->order[k]].task == t) {
          size_t idx = g->order[k];
          memmove(&g->order[k], &g->order[k + 1], (g->taken - k - 1) * sizeof g->order[0]);
          g->order[--g->taken] = idx;
          break;
        }
      pthread_mutex_unlock(&g->mu);
      apex__task_unref(t);
    }
  }
  apex__group_unref(g);
  return rc;
}

apex_status_t apex_group_wait_all(apex_group_t *g, int64_t timeout_ms) {
  apex_status_t rc = wait_refused(g, "apex_group_wait_all");
  if (rc != APEX_OK) return rc;
  uint64_t until = apex__ns_after_ms(timeout_ms);
  pthread_mutex_lock(&g->mu);
  g->waiters++;
  while (!g->released && g->n_ended + g->n_void < g->n)
    if (!cv_wait_until(g, until)) {
      rc = APEX_E_AGAIN;
      break;
    }
  if (g->released) rc = APEX_E_INVALID; /* by another thread meanwhile */
  g->waiters--;
  size_t n = 0;
  int nomem = 0;
  apex_task_t **a = rc == APEX_OK ? members_copy_locked(g, &n, &nomem) : NULL;
  pthread_mutex_unlock(&g->mu);
  if (nomem) rc = APEX_E_NOMEM;
  /* Every member is terminal; in LOOP mode their DONE callbacks may still
   * be running: wait for those as apex_task_wait does. */
  for (size_t i = 0; i < n && rc == APEX_OK; i++) rc = apex_task_wait(a[i], ms_left(until));
  tasks_unref(a, n);
  apex__group_unref(g);
  return rc;
}

static int reason_reserved(const char *r) {
  return r && (!strcmp(r, "timeout") || !strcmp(r, "shutdown") || !strcmp(r, "parent"));
}

apex_status_t apex_group_cancel(apex_group_t *g, const char *reason, size_t *n_cancelled) {
  if (n_cancelled) *n_cancelled = 0;
  if (reason_reserved(reason) || !apex__group_get(g)) return APEX_E_INVALID;
  pthread_mutex_lock(&g->mu);
  g->cancelled = 1; /* a submit that returns after this cancels its own task */
  size_t n = 0;
  int nomem = 0;
  apex_task_t **a = members_copy_locked(g, &n, &nomem);
  pthread_mutex_unlock(&g->mu);
  size_t k = 0;
  if (nomem) { /* cancel one by one instead of from a copy */
    for (size_t i = 0;; i++) {
      pthread_mutex_lock(&g->mu);
      int more = i < g->n && !g->released;
      apex_task_t *t = more && !g->members[i].voided ? g->members[i].task : NULL;
      if (t) apex__task_ref(t);
      pthread_mutex_unlock(&g->mu);
      if (!more) break;
      if (t && apex_task_cancel(t, reason) == APEX_OK) k++;
      if (t) apex__task_unref(t);
    }
  }
  for (size_t i = 0; i < n; i++)
    if (apex_task_cancel(a[i], reason) == APEX_OK) k++;
  tasks_unref(a, n);
  if (n_cancelled) *n_cancelled = k;
  apex__group_unref(g);
  return APEX_OK;
}

apex_status_t apex_group_stats(apex_group_t *g, apex_group_stats_t *out) {
  if (!out || !apex__group_get(g)) return APEX_E_INVALID;
  pthread_mutex_lock(&g->mu);
  size_t n = 0;
  int nomem = 0;
  apex_task_t **a = members_copy_locked(g, &n, &nomem);
  int released = g->released;
  size_t pending = released ? 0 : g->n - g->n_void - n; /* submits not yet returned: queued */
  pthread_mutex_unlock(&g->mu);
  if (nomem || released) {
    apex__group_unref(g);
    return released ? APEX_E_INVALID : APEX_E_NOMEM;
  }
  apex_group_stats_t s = {.struct_size = sizeof s};
  s.total = n + pending;
  s.queued = pending;
  double sum = 0;
  for (size_t i = 0; i < n; i++) {
    apex_task_state_t st = apex_task_state(a[i]);
    switch (st) {
    case APEX_TASK_SCHEDULED: s.scheduled++; break;
    case APEX_TASK_QUEUED: s.queued++; break;
    case APEX_TASK_RUNNING: s.running++; break;
    case APEX_TASK_RETRY_WAIT: s.retry_wait++; break;
    case APEX_TASK_SUCCEEDED: s.succeeded++; break;
    case APEX_TASK_FAILED: s.failed++; break;
    case APEX_TASK_CANCELLED: s.cancelled++; break;
    case APEX_TASK_TIMED_OUT: s.timed_out++; break;
    }
    if (apex_task_state_is_terminal(st)) {
      sum += 100.0;
    } else {
      double pct = apex__task_last_pct(a[i]);
      if (pct > 0) sum += pct;
    }
  }
  s.percentage = s.total ? sum / (double)s.total : 0.0;
  tasks_unref(a, n);
  apex__group_unref(g);
  return apex__struct_copy_out(out, &s, sizeof s, APEX__END_OF(apex_group_stats_t, percentage))
             ? APEX_OK
             : APEX_E_INVALID;
}

json_t *apex_group_results(apex_group_t *g) {
  if (!apex__group_get(g)) return NULL;
  pthread_mutex_lock(&g->mu);
  size_t n = 0;
  int nomem = 0;
  apex_task_t **a = members_copy_locked(g, &n, &nomem);
  int released = g->released;
  pthread_mutex_unlock(&g->mu);
  json_t *arr = nomem || released ? NULL : json_array();
  for (size_t i = 0; arr && i < n; i++) {
    apex_task_t *t = a[i];
    apex_task_state_t st = apex_task_state(t);
    json_t *o = json_pack("{s:I, s:s, s:s, s:s}", "task", (json_int_t)t->id, "plugin",
                          t->plugin->desc.name, "action", t->action->name, "state",
                          apex_task_state_name(st));
    int bad = !o;
    if (!bad && st == APEX_TASK_SUCCEEDED) {
      json_t *r = apex_task_result(t);
      bad = json_object_set_new(o, "result", r ? r : json_null()) != 0;
    } else if (!bad && apex_task_state_is_terminal(st)) {
      apex_error_t *e = apex_task_error(t);
      json_t *ej = apex_error_to_json(e);
      apex_error_unref(e);
      bad = !ej || json_object_set_new(o, "error", ej) != 0;
    }
    if (bad || json_array_append_new(arr, o) != 0) {
      if (bad) json_decref(o);
      json_decref(arr);
      arr = NULL;
    }
  }
  tasks_unref(a, n);
  apex__group_unref(g);
  return arr;
}

apex_status_t apex_group_release(apex_group_t *g) {
  if (!g) return APEX_OK;
  pthread_mutex_lock(&live_mu);
  apex_group_t **p = &live[live_bucket(g)];
  while (*p && *p != g) p = &(*p)->live_next;
  int found = *p != NULL;
  if (found) *p = g->live_next; /* no call finds it from now on */
  pthread_mutex_unlock(&live_mu);
  if (!found) return APEX_E_INVALID;
  pthread_mutex_lock(&g->mu);
  /* From here on every call refuses (each checks this under the lock),
   * no slot is added, and a member's end or a submit still returning only
   * marks its own slot (ended, voided): the task pointers are this call's
   * alone, read below without the lock. The slots are freed with the
   * group. */
  g->released = 1;
  size_t n = g->n;
  if (g->waiters) pthread_cond_broadcast(&g->cv); /* they return INVALID */
  pthread_mutex_unlock(&g->mu);
  for (size_t k = 0; k < n; k++) {
    apex_task_t *t = g->members[k].task;
    g->members[k].task = NULL;
    if (t) apex__task_unref(t);
  }
  apex__group_unref(g); /* the host's */
  return APEX_OK;
}

/* ------------------------------------------------------- execute_all */

apex_status_t apex_manager_execute_all(apex_manager_t *m, const apex_call_t *calls, size_t n,
                                       int64_t timeout_ms, json_t **results, apex_error_t **err) {
  if (results) *results = NULL;
  if (!m || !results || (n && !calls))
    return apex__fail(err, APEX_E_INVALID, "apex_manager_execute_all: %s is NULL",
                      !m ? "manager" : !results ? "results" : "calls");
  if (apex__on_runtime_thread(m))
    return apex__fail(err, APEX_E_INVALID,
                      "apex_manager_execute_all: called on Apex's runtime thread (a LOOP event "
                      "callback), which must not block");
  apex_group_t *g = NULL;
  apex_status_t rc = apex_group_new(m, &g);
  if (rc != APEX_OK) return apex__fail(err, rc, "apex_manager_execute_all: %s", apex_strerror(rc));
  for (size_t i = 0; i < n && rc == APEX_OK; i++)
    rc = apex_group_submit(g, calls[i].plugin, calls[i].action, calls[i].params, calls[i].opts,
                           NULL, err);
  if (rc == APEX_OK) {
    rc = apex_group_wait_all(g, timeout_ms);
    if (rc == APEX_E_AGAIN)
      apex__fail(err, rc, "apex_manager_execute_all: timed out waiting for %zu calls", n);
  }
  if (rc != APEX_OK) {
    (void)apex_group_cancel(g, NULL, NULL);
    (void)apex_group_wait_all(g, -1);
  } else if (!(*results = apex_group_results(g))) {
    rc = apex__fail(err, APEX_E_NOMEM, "out of memory");
  }
  apex_group_release(g);
  return rc;
}
