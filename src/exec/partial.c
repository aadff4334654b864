/* Partial results: what a task has achieved so far (apex_ctx_partial_result),
 * kept as the task's latest, delivered as a coalesced PARTIAL event, readable
 * with apex_task_partial_result and carried by the task's error when it
 * fails, is cancelled or times out (docs/architecture.md, "Partial
 * results").
 *
 * Cost. A plugin may publish per item, and coalescing delivers at most
 * progress_rate_hz of those a second, so the publish path keeps the latest
 * value as cheaply as it can and builds jansson values only for what is
 * delivered or read: the value (checked on the plugin's thread by ctx.c) is
 * flattened into a byte buffer (core/flat.c), outside the task lock, into
 * the spare buffer the publish before left, and swapped in under the lock;
 * the buffer it replaces becomes the next spare. Two lock sections and a
 * walk per publish, no allocation once warm. The flush rebuilds the JSON of
 * the one value it delivers; apex_task_partial_result rebuilds it from a
 * referenced buffer outside the lock; the terminal transition rebuilds it
 * once for the error.
 *
 * State: in the task's progress slot (internal.h), guarded by the task's
 * lock: it outlives attempts and the task's end as progress does (the run
 * state is kept while the slot exists). Threads: any plugin thread
 * publishes; the runtime thread (or the ending thread) flushes; any host
 * thread reads. Failure: no memory keeps the last value (publish) or
 * delivers nothing (flush, attach); the task's outcome never depends on a
 * partial. */
#include <stdlib.h>

#include "core/error.h"
#include "core/flat.h"
#include "exec/internal.h"

static int terminal(const apex_task_t *t) {
  return apex_task_state_is_terminal(
      (apex_task_state_t)atomic_load_explicit(&t->state, memory_order_relaxed));
}

/* Nothing of the slot waits for a flush: a report that finds it so must
 * ask for one. */
static int slot_idle(const apex__progress_slot_t *s) {
  return !s->dirty && s->n_backlog == 0 && !s->hb_dirty && !s->partial_dirty;
}

/* Locks r's task if its attempt is open and the task not ended. Returns:
 * the task, locked; NULL with *rc APEX_E_INVALID (misuse: counted) or
 * APEX_OK (late: counted), unlocked. */
static apex_task_t *lock_live(apex__run_t *r, int *rc) {
  apex_manager_t *m = apex__run_m(r);
  apex_task_t *t = apex__run_lock_live(r);
  if (!t) {
    apex__ctx_misuse(m, atomic_load_explicit(&r->id, memory_order_relaxed),
                     "apex_ctx_partial_result");
    *rc = APEX_E_INVALID;
    return NULL;
  }
  if (terminal(t)) { /* timed out or cancelled at shutdown: the ctx is still the handler's */
    pthread_mutex_unlock(apex__task_mu(t));
    atomic_fetch_add_explicit(&m->st_late, 1, memory_order_relaxed);
    *rc = APEX_OK;
    return NULL;
  }
  return t;
}

int apex__run_partial(apex__run_t *r, const json_t *v) {
  apex_manager_t *m = apex__run_m(r);
  int rc;
  apex_task_t *t = lock_live(r, &rc);
  if (!t) return rc;
  apex__progress_slot_t *s = r->prog;
  if (!s && !(s = r->prog = calloc(1, sizeof *s))) {
    pthread_mutex_unlock(apex__task_mu(t));
    return APEX_E_NOMEM;
  }
  apex__flat_t *f = NULL;
  if (v) {
    /* Flattened unlocked (a walk of the value): into the spare, which this
     * call now owns alone; another thread publishing meanwhile finds none
     * and makes its own. The slot stays: it goes only with the task, which
     * the open attempt keeps. */
    f = s->partial_spare;
    s->partial_spare = NULL;
    pthread_mutex_unlock(apex__task_mu(t));
    rc = apex__flat_encode(v, &f);
    if (rc != APEX_OK) {
      apex__flat_unref(f);
      return rc;
    }
    if (!(t = lock_live(r, &rc))) { /* ended meanwhile */
      apex__flat_unref(f);
      return rc;
    }
  }
  int want = apex__events_wanted(m, t, APEX_EVENT_PARTIAL);
  int request = want && slot_idle(s);
  if (want) s->partial_dirty = 1;
  apex__flat_t *old = s->partial, *drop = NULL;
  s->partial = f;
  /* The value replaced is the next spare unless a reader holds it
   * (apex_task_partial_result: its reference goes when it is done) or a
   * concurrent publisher left one already. */
  if (old && !s->partial_spare && apex__flat_unshared(old))
    s->partial_spare = old;
  else
    drop = old;
  if (request) apex__task_ref(t); /* the request runs unlocked: see task.c, report() */
  pthread_mutex_unlock(apex__task_mu(t));
  apex__flat_unref(drop);
  if (request) {
    apex__flush_request(m, t);
    apex__task_unref(t);
  }
  return APEX_OK;
}

void apex__partial_flush_locked(apex_task_t *t, apex__progress_slot_t *s) {
  if (!s->partial_dirty) return;
  s->partial_dirty = 0;
  apex_manager_t *m = apex__task_m(t);
  if (!apex__events_wanted(m, t, APEX_EVENT_PARTIAL)) return;
  json_t *v = NULL;
  if (s->partial && !(v = apex__flat_decode(s->partial))) return; /* no memory: not delivered */
  apex__ev_t *ev = apex__ev_new(t, APEX_EVENT_PARTIAL);
  if (!ev) {
    json_decref(v);
    return;
  }
  ev->ev.result = v; /* the event's own (apex__ev_free) */
  apex__events_push(m, ev);
}

apex_error_t *apex__partial_attach_locked(apex_task_t *t, apex_error_t *e) {
  apex__progress_slot_t *s = t->run ? t->run->prog : NULL;
  if (!e || !s || !s->partial) return e;
  json_t *v = apex__flat_decode(s->partial);
  return v ? apex__error_with_partial(e, v) : e;
}

void apex__partial_free(apex__progress_slot_t *s) {
  apex__flat_unref(s->partial);
  apex__flat_unref(s->partial_spare);
}

json_t *apex_task_partial_result(apex_task_t *t) {
  if (!t) return NULL;
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  apex__flat_t *f = t->run && t->run->prog ? apex__flat_ref(t->run->prog->partial) : NULL;
  pthread_mutex_unlock(mu);
  /* Rebuilt outside the lock from a buffer nobody writes while referenced
   * (a publish flattens only into an unshared one). */
  json_t *v = apex__flat_decode(f);
  apex__flat_unref(f);
  return v;
}
