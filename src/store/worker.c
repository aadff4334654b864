/* Serving a shared queue (apex_manager_serve, docs/workers.md): the loop
 * by which a manager on a store that several processes share claims due
 * rows and runs them, and takes over the running rows of owners that died.
 *
 * One thread per serving manager (the server) does, in turn:
 * - rescue, every lease/2 (at least 0.25 s, at most 10 s): lists the
 *   store's running rows and claims (claim(), one row at a time, the
 *   store's conditional write) those whose lease expired, so a dead
 *   worker's tasks resume here from their last checkpoint. claim_next
 *   takes only waiting rows, and recover() would take every unheld row of
 *   the store at once (the whole queue), so the rescue is this narrower
 *   scan. A rescued row goes through recovery's rules (an action neither
 *   resumable nor idempotent that was cut off ends failed, interrupted).
 * - claim: up to min(batch, room) due rows with claim_next under the
 *   limits (which the store counts across every owner), each then run as
 *   a task of the manager with the row's id (apex__durable_adopt, the path
 *   recovery takes), its first attempt's start already recorded;
 * - wait: while it holds `concurrency` rows, on its own condition variable
 *   until a task's end brings it down to the low-water mark (so claims
 *   stay batched); else in the store's wait_work (NOTIFY on PostgreSQL, a
 *   same-process signal or the poll timeout otherwise).
 * The rest is the manager's (durable.c): the keeper renews the owner's
 * leases every lease/3 and polls cancel requests every 0.5 s; a task's
 * outcome is written with finish(owner), which the store refuses once
 * another owner holds the row (apex__serve_discarded logs it).
 *
 * A store error (a lost connection) makes the server stop claiming and
 * retry with a backoff from 0.1 s doubling to 5 s, logging the outage once
 * and its end once; the tasks it holds run on (a checkpoint waits for the
 * store up to half the lease, durable.c), an outcome the store could not
 * take is kept and written again once it answers, and a row held here that
 * no task runs any more (its queued outcome write was lost) is given back
 * or ended interrupted after two rescue passes.
 *
 * Lock order: v->mu is a leaf; no store call and no task call is made
 * under it. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "core/log.h"
#include "exec/internal.h"
#include "store/durable.h"
#include "store/store.h"

#define DEFAULT_CONCURRENCY 8
#define MAX_CONCURRENCY 65536
#define MAX_BATCH 1024
#define DEFAULT_BATCH_MAX 64
#define DEFAULT_POLL_S 0.25
#define BACKOFF_MIN_S 0.1
#define BACKOFF_MAX_S 5.0
/* Rows a rescue scan reads per page. */
#define RESCUE_PAGE 256
/* How long a free slot waits for others before the next claim while more
 * rows are due (serve_main). */
#define GATHER_S 0.005
/* How long serve_stop waits for cancelled handlers before giving their
 * rows back anyway. */
#define STOP_GRACE_S 3.0

/* An outcome the store could not take yet (the serve loop retries it). */
typedef struct pend {
  uint64_t id;
  int state;
  char *result, *error, *partial;
  struct pend *next;
} pend_t;

typedef struct apex__serve {
  apex_manager_t *m;
  apex__durable_t *d;
  apex__store_t *s;
  uint32_t conc, batch, low;
  double poll_s, rescue_s;
  apex__slimit_t *limits;
  size_t n_limits;
  pthread_t th;
  atomic_int stop;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* held went down to low, or stop */
  /* the rows held: ids of served tasks not yet ended (mu) */
  uint64_t *ids;
  size_t n_ids;
  int waiting_room; /* the server waits on cv for room (mu) */
  pend_t *pend;     /* outcomes to write again (mu); they count as held */
  size_t n_pend;
  /* the rows this owner holds that no task here runs (their outcome's
   * write was lost): seen by the last rescue pass (server thread only) */
  uint64_t *orphans;
  size_t n_orphans;
  /* counters */
  atomic_uint_least64_t claimed, rescued, ended, discarded, released, store_errors;
  atomic_int store_ok;
} apex__serve_t;

static apex__serve_t *serve_of(apex_manager_t *m) {
  return m && m->dur ? *apex__durable_serve_slot(m->dur) : NULL;
}

/* ------------------------------------------------------------ held rows */

static void track(apex__serve_t *v, uint64_t id) {
  pthread_mutex_lock(&v->mu);
  v->ids[v->n_ids++] = id; /* room: the server claims only up to conc */
  pthread_mutex_unlock(&v->mu);
}

/* Returns 1 if id was held. */
static int untrack(apex__serve_t *v, uint64_t id) {
  int found = 0;
  pthread_mutex_lock(&v->mu);
  for (size_t i = 0; i < v->n_ids; i++)
    if (v->ids[i] == id) {
      v->ids[i] = v->ids[--v->n_ids];
      found = 1;
      break;
    }
  if (found && (v->n_ids <= v->low || atomic_load(&v->stop)) && v->waiting_room)
    pthread_cond_broadcast(&v->cv);
  else if (found && v->n_ids == 0)
    pthread_cond_broadcast(&v->cv); /* serve_stop waits for none */
  pthread_mutex_unlock(&v->mu);
  return found;
}

static size_t held(apex__serve_t *v) {
  pthread_mutex_lock(&v->mu);
  size_t n = v->n_ids + v->n_pend;
  pthread_mutex_unlock(&v->mu);
  return n;
}

void apex__serve_ended(apex_manager_t *m, uint64_t id) {
  apex__serve_t *v = serve_of(m);
  if (v && untrack(v, id)) atomic_fetch_add(&v->ended, 1);
}

static char *dup_or_null(const char *s, int *bad) {
  char *d = s ? strdup(s) : NULL;
  if (s && !d) *bad = 1;
  return d;
}

static void pend_free(pend_t *p) {
  free(p->result);
  free(p->error);
  free(p->partial);
  free(p);
}

void apex__serve_pending(apex_manager_t *m, uint64_t id, int state, const char *result,
                         const char *error, const char *partial) {
  apex__serve_t *v = serve_of(m);
  if (!v) return;
  pend_t *p = calloc(1, sizeof *p);
  int bad = !p;
  if (p) {
    p->id = id;
    p->state = state;
    p->result = dup_or_null(result, &bad);
    p->error = dup_or_null(error, &bad);
    p->partial = dup_or_null(partial, &bad);
  }
  if (bad) { /* the row stays held; the orphan sweep gives it back */
    if (p) pend_free(p);
    apex__serve_ended(m, id);
    return;
  }
  pthread_mutex_lock(&v->mu);
  p->next = v->pend;
  v->pend = p;
  v->n_pend++;
  pthread_mutex_unlock(&v->mu);
  untrack(v, id); /* held on as pending */
}

/* Writes the pending outcomes again. Returns APEX_OK, or the store's error
 * (the rest stay pending). */
static int retry_pending(apex__serve_t *v, apex_error_t **err) {
  for (;;) {
    pthread_mutex_lock(&v->mu);
    pend_t *p = v->pend;
    if (p) {
      v->pend = p->next;
      v->n_pend--;
    }
    pthread_mutex_unlock(&v->mu);
    if (!p) return APEX_OK;
    int rc = v->s->ops->finish(v->s, p->id, apex__durable_owner(v->d), p->state,
                               apex__store_now(), 0, p->result, p->error, p->partial, 1, err);
    if (rc != APEX_OK && rc != APEX_E_ALREADY && rc != APEX_E_INVALID) {
      pthread_mutex_lock(&v->mu);
      p->next = v->pend;
      v->pend = p;
      v->n_pend++;
      pthread_mutex_unlock(&v->mu);
      return rc;
    }
    if (rc == APEX_E_ALREADY) {
      apex_error_unref(*err);
      *err = NULL;
      apex__serve_discarded(v->m, p->id, apex_task_state_name((apex_task_state_t)p->state));
    } else {
      apex__log(&v->m->log, APEX_LOG_INFO, "worker: task %llu: its outcome (%s) is recorded now",
                (unsigned long long)p->id, apex_task_state_name((apex_task_state_t)p->state));
    }
    atomic_fetch_add(&v->ended, 1);
    pend_free(p);
    pthread_mutex_lock(&v->mu);
    if (v->waiting_room) pthread_cond_broadcast(&v->cv);
    pthread_mutex_unlock(&v->mu);
  }
}

static size_t n_pending(apex__serve_t *v) {
  pthread_mutex_lock(&v->mu);
  size_t n = v->n_pend;
  pthread_mutex_unlock(&v->mu);
  return n;
}

static int tracked(apex__serve_t *v, uint64_t id) {
  int found = 0;
  pthread_mutex_lock(&v->mu);
  for (size_t i = 0; i < v->n_ids && !found; i++) found = v->ids[i] == id;
  for (pend_t *p = v->pend; p && !found; p = p->next) found = p->id == id;
  pthread_mutex_unlock(&v->mu);
  return found;
}

void apex__serve_discarded(apex_manager_t *m, uint64_t id, const char *state) {
  apex__serve_t *v = serve_of(m);
  if (v) atomic_fetch_add(&v->discarded, 1);
  apex__log(&m->log, APEX_LOG_WARN,
            "worker: task %llu: its outcome (%s) was discarded: this worker's lease on it was "
            "lost (another worker holds the task now, or it ended elsewhere)",
            (unsigned long long)id, state);
}

void apex__serve_poke(apex_manager_t *m) {
  apex__serve_t *v = serve_of(m);
  if (v && v->s->ops->wake) v->s->ops->wake(v->s);
}

/* ------------------------------------------------------------ the server */

/* Runs row r (claimed for this owner) here; gives it back when the
 * manager cannot take it. */
static void adopt(apex__serve_t *v, const apex__srec_t *r, int cut_off) {
  track(v, r->id);
  apex_task_t *t = NULL;
  int taken = apex__durable_adopt(v->d, r, cut_off, &t);
  if (t) {
    apex_task_release(t);
    return; /* its end untracks it */
  }
  untrack(v, r->id);
  if (!taken) {
    apex_error_t *err = NULL;
    if (v->s->ops->release(v->s, r->id, apex__durable_owner(v->d), apex__store_now(), &err) !=
            APEX_OK &&
        err)
      apex__log(&v->m->log, APEX_LOG_WARN, "worker: task %llu: cannot give it back: %s",
                (unsigned long long)r->id, apex_error_message(err));
    apex_error_unref(err);
  }
}

/* The store failed (code rc, err): counted and, once per outage, logged. */
static void store_down(apex__serve_t *v, const char *what, apex_error_t *err, double backoff) {
  atomic_fetch_add(&v->store_errors, 1);
  if (atomic_exchange(&v->store_ok, 0))
    apex__log(&v->m->log, APEX_LOG_ERROR,
              "worker: the store failed (%s: %s); not claiming, the tasks held run on; retrying "
              "from %.1f s up to every %.0f s",
              what, err ? apex_error_message(err) : "unknown error", backoff, BACKOFF_MAX_S);
}

static void store_up(apex__serve_t *v) {
  if (!atomic_exchange(&v->store_ok, 1))
    apex__log(&v->m->log, APEX_LOG_INFO, "worker: the store answers again; claiming");
}

/* A running row this owner holds: fine while a task here runs it (or its
 * outcome waits to be written). Else its outcome's write was lost (a
 * queued write that failed): seen so in two passes in a row, it is given
 * back (a resumable or idempotent action: run again from its checkpoint)
 * or ended interrupted (any other), as recovery would. */
static void orphan_check(apex__serve_t *v, const apex__srec_t *r, uint64_t *orphans,
                         size_t *n_orphans) {
  apex_task_t *t = NULL;
  if (tracked(v, r->id)) return;
  if (apex_ops_find(v->m, r->id, &t) == APEX_OK) {
    apex_task_release(t);
    return;
  }
  int seen = 0;
  for (size_t i = 0; i < v->n_orphans && !seen; i++) seen = v->orphans[i] == r->id;
  if (!seen) {
    if (orphans && *n_orphans < v->conc) orphans[(*n_orphans)++] = r->id;
    return;
  }
  const char *me = apex__durable_owner(v->d);
  if (r->action_flags & (APEX_ACTION_F_RESUMABLE | APEX_ACTION_F_IDEMPOTENT)) {
    apex__log(&v->m->log, APEX_LOG_WARN,
              "worker: task %llu: held here but run by no task (its outcome's write was lost); "
              "given back to run again from its last checkpoint",
              (unsigned long long)r->id);
    (void)v->s->ops->release(v->s, r->id, me, apex__store_now(), NULL);
  } else {
    char msg[300];
    snprintf(msg, sizeof msg,
             "task %llu: %s.%s ended here but its outcome's write was lost; the action is "
             "neither resumable nor idempotent, so it is not run again",
             (unsigned long long)r->id, r->plugin, r->action);
    apex__durable_end_row(v->d, r, APEX_TASK_FAILED, APEX_E_INTERRUPTED, msg);
  }
}

static int rescue_pass(apex__serve_t *v, const char *me, apex__sfilter_t *fp, uint64_t *orphans,
                       size_t *n_orphans, apex_error_t **err);

/* Takes over running rows whose lease expired. Returns APEX_OK or the
 * store's error (*err). */
static int rescue(apex__serve_t *v, apex_error_t **err) {
  const char *me = apex__durable_owner(v->d);
  apex__sfilter_t f = {.states = APEX_OPS_STATE(APEX_TASK_RUNNING), .limit = RESCUE_PAGE};
  /* This pass's orphans (at most conc are remembered: enough, a few rows
   * at most go astray at a time). */
  uint64_t *orphans = calloc(v->conc, sizeof *orphans);
  size_t n_orphans = 0;
  int rc = rescue_pass(v, me, &f, orphans, &n_orphans, err);
  free(v->orphans);
  v->orphans = orphans;
  v->n_orphans = orphans ? n_orphans : 0;
  return rc;
}

static int rescue_pass(apex__serve_t *v, const char *me, apex__sfilter_t *fp, uint64_t *orphans,
                       size_t *n_orphans, apex_error_t **err) {
  apex__sfilter_t f = *fp;
  for (;;) {
    apex__srec_t *rows = NULL;
    size_t n = 0;
    int rc = v->s->ops->list(v->s, &f, &rows, &n, err);
    if (rc != APEX_OK) return rc;
    double now = apex__store_now();
    for (size_t i = 0; i < n && !atomic_load(&v->stop); i++) {
      apex__srec_t *r = &rows[i];
      if (r->state == APEX_TASK_RUNNING && r->owner && strcmp(r->owner, me) == 0) {
        orphan_check(v, r, orphans, n_orphans);
        continue;
      }
      if (r->state != APEX_TASK_RUNNING || r->lease_until > now) continue;
      if (held(v) >= v->conc) continue; /* no room: left for another worker */
      uint32_t attempt = r->attempts + 1;
      rc = v->s->ops->claim(v->s, r->id, me, attempt, now, now + apex__durable_lease_s(v->d), 1,
                            err);
      if (rc == APEX_E_ALREADY || rc == APEX_E_INVALID) { /* taken or gone meanwhile */
        apex_error_unref(*err);
        *err = NULL;
        continue;
      }
      if (rc == APEX_E_CANCELLED) {
        apex_error_unref(*err);
        *err = NULL;
        char msg[300];
        snprintf(msg, sizeof msg, "cancelled (%s)", r->cancel_reason ? r->cancel_reason : "user");
        apex__durable_end_row(v->d, r, APEX_TASK_CANCELLED, APEX_E_CANCELLED, msg);
        continue;
      }
      if (rc != APEX_OK) {
        apex__srec_free_array(rows, n);
        return rc;
      }
      /* The row as the claim left it: the list's copy may predate a
       * checkpoint its last owner saved before the claim (its later ones
       * are refused now), and resuming from an older one would run a step
       * again that is recorded done. */
      apex__srec_t cur;
      rc = v->s->ops->get(v->s, r->id, &cur, err);
      if (rc != APEX_OK) { /* give it back rather than hold it unrun */
        (void)v->s->ops->release(v->s, r->id, me, apex__store_now(), NULL);
        apex__srec_free_array(rows, n);
        return rc;
      }
      apex__log(&v->m->log, APEX_LOG_INFO,
                "worker: task %llu: taken over from %s, whose lease expired (attempt %u%s)",
                (unsigned long long)r->id, r->owner ? r->owner : "no owner", attempt,
                cur.checkpoint ? ", from its last checkpoint" : "");
      atomic_fetch_add(&v->rescued, 1);
      adopt(v, &cur, 1);
      apex__srec_clear(&cur);
    }
    uint64_t last = n ? rows[n - 1].id : 0;
    apex__srec_free_array(rows, n);
    if (n < RESCUE_PAGE || atomic_load(&v->stop)) return APEX_OK;
    f.after_id = last;
  }
}

/* Claims up to the room there is. *full: it got all it asked for (more
 * may be due). */
static int claim_some(apex__serve_t *v, int *full, apex_error_t **err) {
  *full = 0;
  size_t h = held(v);
  if (h >= v->conc) return APEX_OK;
  size_t want = v->conc - h;
  if (want > v->batch) want = v->batch;
  double now = apex__store_now();
  apex__srec_t *rows = NULL;
  size_t n = 0;
  int rc = v->s->ops->claim_next(v->s, apex__durable_owner(v->d), now,
                                 now + apex__durable_lease_s(v->d), want, v->limits, v->n_limits,
                                 &rows, &n, err);
  if (rc != APEX_OK) return rc;
  atomic_fetch_add(&v->claimed, n);
  for (size_t i = 0; i < n; i++) adopt(v, &rows[i], 0);
  apex__srec_free_array(rows, n);
  *full = n == want;
  return APEX_OK;
}

/* Waits on v->cv up to s seconds (or until woken). */
static void wait_cv(apex__serve_t *v, double s, int for_room) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  double whole = floor(s);
  ts.tv_sec += (time_t)whole;
  ts.tv_nsec += (long)((s - whole) * 1e9);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&v->mu);
  v->waiting_room = for_room;
  if (!atomic_load(&v->stop) && (!for_room || v->n_ids + v->n_pend > v->low))
    pthread_cond_timedwait(&v->cv, &v->mu, &ts);
  v->waiting_room = 0;
  pthread_mutex_unlock(&v->mu);
}

static void *serve_main(void *arg) {
  apex__serve_t *v = arg;
  double backoff = 0, next_try = 0, next_rescue = 0;
  while (!atomic_load(&v->stop)) {
    double now = apex__store_now();
    int full = 0;
    if (now >= next_try) {
      apex_error_t *err = NULL;
      const char *what = "rescue";
      int rc = APEX_OK;
      if (n_pending(v)) {
        what = "outcome";
        rc = retry_pending(v, &err);
      }
      if (rc == APEX_OK && now >= next_rescue) {
        what = "rescue";
        rc = rescue(v, &err);
        next_rescue = now + v->rescue_s;
      }
      if (rc == APEX_OK) {
        what = "claim";
        rc = claim_some(v, &full, &err);
      }
      if (rc == APEX_OK) {
        backoff = 0;
        store_up(v);
      } else {
        backoff = backoff > 0 ? fmin(backoff * 2, BACKOFF_MAX_S) : BACKOFF_MIN_S;
        store_down(v, what, err, backoff);
        next_try = now + backoff;
        next_rescue = now; /* first thing once it answers */
        full = 0;
      }
      apex_error_unref(err);
    }
    if (atomic_load(&v->stop)) break;
    /* The queue had more than was claimed: claim again once a batch's
     * worth of room is free (held down to low), not for each task that
     * ends (a claim costs the store about the same for 1 row as for 32),
     * but a slot waits for company at most GATHER_S (long tasks end
     * seldom: their free slots would stay idle). */
    size_t h = held(v);
    if (full && h <= v->low) continue;
    now = apex__store_now();
    if (!atomic_load(&v->store_ok)) {
      wait_cv(v, fmax(0.01, next_try - now), 0);
    } else if (h >= v->conc) {
      wait_cv(v, fmax(0.01, fmin(v->poll_s, next_rescue - now)), 1);
    } else if (full) {
      wait_cv(v, GATHER_S, 1);
    } else {
      apex_error_t *err = NULL;
      double t = fmax(0.001, fmin(v->poll_s, next_rescue - now));
      if (v->s->ops->wait_work(v->s, t, &err) != APEX_OK) {
        backoff = backoff > 0 ? fmin(backoff * 2, BACKOFF_MAX_S) : BACKOFF_MIN_S;
        store_down(v, "wait", err, backoff);
        next_try = apex__store_now() + backoff;
      }
      apex_error_unref(err);
    }
  }
  return NULL;
}

/* ------------------------------------------------------------ the API */

void apex_serve_config_init(apex_serve_config_t *c) {
  if (!c) return;
  memset(c, 0, sizeof *c);
  c->struct_size = sizeof *c;
}

static void serve_free(apex__serve_t *v) {
  while (v->pend) {
    pend_t *p = v->pend;
    v->pend = p->next;
    pend_free(p);
  }
  free(v->orphans);
  for (size_t i = 0; i < v->n_limits; i++) free((char *)v->limits[i].name);
  free(v->limits);
  free(v->ids);
  pthread_mutex_destroy(&v->mu);
  pthread_cond_destroy(&v->cv);
  free(v);
}

apex_status_t apex_manager_serve(apex_manager_t *m, const apex_serve_config_t *cin,
                                 apex_error_t **err) {
  if (!m) return apex__fail(err, APEX_E_INVALID, "apex_manager_serve: NULL manager");
  if (!m->dur) return apex__fail(err, APEX_E_INVALID, "apex_manager_serve: the manager has no store");
  if (apex__on_runtime_thread(m))
    return apex__fail(err, APEX_E_INVALID, "apex_manager_serve: not on Apex's runtime thread");
  if (atomic_load(&m->shutting_down))
    return apex__fail(err, APEX_E_SHUTTING_DOWN, "the manager is shutting down");
  apex_serve_config_t c;
  apex_serve_config_init(&c);
  if (cin) {
    if (cin->struct_size == 0 || cin->struct_size > sizeof c)
      return apex__fail(err, APEX_E_INVALID,
                        "apex_manager_serve: config.struct_size %u: want apex_serve_config_init's "
                        "(at most %zu)",
                        (unsigned)cin->struct_size, sizeof c);
    memcpy(&c, cin, cin->struct_size);
  }
  if (c.concurrency > MAX_CONCURRENCY)
    return apex__fail(err, APEX_E_INVALID, "apex_manager_serve: concurrency %u: at most %u",
                      (unsigned)c.concurrency, (unsigned)MAX_CONCURRENCY);
  if (!(c.poll_s >= 0 && c.poll_s <= 3600))
    return apex__fail(err, APEX_E_INVALID, "apex_manager_serve: poll_s %g: want 0 to 3600 s",
                      c.poll_s);
  if (c.n_limits && !c.limits)
    return apex__fail(err, APEX_E_INVALID, "apex_manager_serve: n_limits %zu with NULL limits",
                      c.n_limits);
  for (size_t i = 0; i < c.n_limits; i++) {
    const apex_serve_limit_t *l = &c.limits[i];
    int named = l->scope == APEX_SCOPE_PLUGIN || l->scope == APEX_SCOPE_ACTION;
    if ((l->scope != APEX_SCOPE_GLOBAL && !named && l->scope != APEX_SCOPE_KEY) ||
        (named && (!l->name || !*l->name)) || (l->scope == APEX_SCOPE_GLOBAL && l->name) ||
        (l->scope == APEX_SCOPE_ACTION && !strchr(l->name, '.')) || l->max < 1 ||
        l->max > APEX_LIMIT_MAX)
      return apex__fail(err, APEX_E_INVALID,
                        "apex_manager_serve: limits[%zu]: want a scope (global without a name, "
                        "plugin, plugin.action, key) and max 1 to %u",
                        i, (unsigned)APEX_LIMIT_MAX);
  }
  apex__durable_t *d = m->dur;
  if (*apex__durable_serve_slot(d))
    return apex__fail(err, APEX_E_INVALID, "apex_manager_serve: the manager serves already");
  apex__serve_t *v = calloc(1, sizeof *v);
  if (!v) return apex__fail(err, APEX_E_NOMEM, "out of memory");
  v->m = m;
  v->d = d;
  v->s = apex__durable_store(d);
  v->conc = c.concurrency ? c.concurrency : DEFAULT_CONCURRENCY;
  v->batch = c.batch ? c.batch : v->conc / 2;
  if (!c.batch && v->batch > DEFAULT_BATCH_MAX) v->batch = DEFAULT_BATCH_MAX;
  if (v->batch < 1) v->batch = 1;
  if (v->batch > MAX_BATCH) v->batch = MAX_BATCH;
  if (v->batch > v->conc) v->batch = v->conc;
  /* Room for a batch before the server claims again. */
  v->low = v->conc - (v->batch + 1) / 2;
  v->poll_s = c.poll_s > 0 ? c.poll_s : DEFAULT_POLL_S;
  v->rescue_s = fmin(10.0, fmax(0.25, apex__durable_lease_s(d) / 2));
  atomic_init(&v->store_ok, 1);
  pthread_mutex_init(&v->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&v->cv, &ca);
  pthread_condattr_destroy(&ca);
  v->ids = calloc(v->conc, sizeof *v->ids);
  v->limits = c.n_limits ? calloc(c.n_limits, sizeof *v->limits) : NULL;
  int bad = !v->ids || (c.n_limits && !v->limits);
  for (size_t i = 0; !bad && i < c.n_limits; i++) {
    v->limits[i].kind = (int)c.limits[i].scope;
    v->limits[i].max = c.limits[i].max;
    if (c.limits[i].name && !(v->limits[i].name = strdup(c.limits[i].name))) bad = 1;
    v->n_limits = i + 1;
  }
  if (bad) {
    serve_free(v);
    return apex__fail(err, APEX_E_NOMEM, "out of memory");
  }
  *apex__durable_serve_slot(d) = v; /* before the thread reads it through m */
  if (pthread_create(&v->th, NULL, serve_main, v) != 0) {
    int e = errno;
    *apex__durable_serve_slot(d) = NULL;
    serve_free(v);
    return apex__fail(err, APEX_E_IO, "apex_manager_serve: cannot start its thread: %s",
                      strerror(e));
  }
  apex__log(&m->log, APEX_LOG_INFO,
            "worker: serving %s as %s: %u at once, claims of up to %u, %zu limit(s), lease %.1f s",
            m->cfg.store, apex__durable_owner(d), (unsigned)v->conc, (unsigned)v->batch,
            v->n_limits, apex__durable_lease_s(d));
  return APEX_OK;
}

apex_status_t apex_manager_serve_stop(apex_manager_t *m, double drain_s, size_t *n_released,
                                      apex_error_t **err) {
  if (n_released) *n_released = 0;
  apex__serve_t *v = serve_of(m);
  if (!v) return apex__fail(err, APEX_E_INVALID, "apex_manager_serve_stop: not serving");
  if (!(drain_s >= 0)) drain_s = 0;
  /* 1. No more claims. */
  if (atomic_exchange(&v->stop, 1))
    return apex__fail(err, APEX_E_INVALID, "apex_manager_serve_stop: stopped already");
  if (v->s->ops->wake) v->s->ops->wake(v->s);
  pthread_mutex_lock(&v->mu);
  pthread_cond_broadcast(&v->cv);
  pthread_mutex_unlock(&v->mu);
  pthread_join(v->th, NULL);
  apex_error_t *pe = NULL;
  (void)retry_pending(v, &pe); /* what is still pending: rescued once our leases end */
  apex_error_unref(pe);
  /* 2. What is held gets drain_s to end. */
  double until = apex__store_now() + drain_s;
  while (held(v) > 0) {
    double left = until - apex__store_now();
    if (left <= 0) break;
    wait_cv(v, fmin(left, 0.1), 0);
  }
  /* 3. The rest: marked (their ends are not recorded), cancelled, and,
   * once their handlers returned (or a grace passed), their rows given
   * back or, for an action that must not run twice and started, ended
   * interrupted. */
  pthread_mutex_lock(&v->mu);
  size_t n = v->n_ids;
  uint64_t *ids = n ? malloc(n * sizeof *ids) : NULL;
  if (ids) memcpy(ids, v->ids, n * sizeof *ids);
  pthread_mutex_unlock(&v->mu);
  if (n && !ids) n = 0; /* no memory: the rows' leases expire instead */
  uint32_t *flags = n ? calloc(n, sizeof *flags) : NULL;
  int *started = n ? calloc(n, sizeof *started) : NULL;
  if (n && (!flags || !started)) n = 0;
  for (size_t i = 0; i < n; i++) {
    apex_task_t *t = NULL;
    started[i] = 0;
    if (apex_ops_find(m, ids[i], &t) == APEX_OK) {
      started[i] = apex__durable_release_mark(t, &flags[i]) > 0;
      (void)apex_task_cancel(t, "shutdown");
      apex_task_release(t);
    }
  }
  double grace_until = apex__store_now() + STOP_GRACE_S;
  while (n && held(v) > 0 && apex__store_now() < grace_until) wait_cv(v, 0.05, 0);
  const char *me = apex__durable_owner(v->d);
  size_t released = 0;
  for (size_t i = 0; i < n; i++) {
    apex_error_t *e = NULL;
    int again = !started[i] || (flags[i] & (APEX_ACTION_F_RESUMABLE | APEX_ACTION_F_IDEMPOTENT));
    if (again) {
      int rc = v->s->ops->release(v->s, ids[i], me, apex__store_now(), &e);
      if (rc == APEX_OK) released++;
      else if (rc != APEX_E_ALREADY)
        apex__log(&m->log, APEX_LOG_WARN,
                  "worker: task %llu: cannot give it back (%s); another worker takes it once "
                  "its lease expires",
                  (unsigned long long)ids[i], apex_error_message(e));
    } else {
      apex__srec_t r;
      if (v->s->ops->get(v->s, ids[i], &r, &e) == APEX_OK) {
        char msg[300];
        snprintf(msg, sizeof msg,
                 "task %llu: %s.%s was running when its worker stopped; the action is neither "
                 "resumable nor idempotent, so it is not run again",
                 (unsigned long long)r.id, r.plugin, r.action);
        apex__durable_end_row(v->d, &r, APEX_TASK_FAILED, APEX_E_INTERRUPTED, msg);
        apex__srec_clear(&r);
      }
    }
    apex_error_unref(e);
  }
  atomic_fetch_add(&v->released, released);
  if (n_released) *n_released = released;
  if (released || n)
    apex__log(&m->log, APEX_LOG_INFO, "worker: stopped; %zu task(s) given back to the queue",
              released);
  free(ids);
  free(flags);
  free(started);
  /* The tasks still marked untrack themselves through serve_of: detach v
   * only once none can (the handlers that ignored their cancel keep no
   * reference to v, only the manager's slot does). */
  pthread_mutex_lock(&v->mu);
  v->n_ids = 0;
  pthread_mutex_unlock(&v->mu);
  /* Counters survive for apex_manager_serve_stats: v stays until destroy. */
  return APEX_OK;
}

apex_status_t apex_manager_serve_stats(apex_manager_t *m, apex_serve_stats_t *out) {
  if (!m || !out || out->struct_size == 0) return APEX_E_INVALID;
  apex_serve_stats_t s;
  memset(&s, 0, sizeof s);
  apex__serve_t *v = serve_of(m);
  if (v) {
    s.claimed = atomic_load(&v->claimed);
    s.rescued = atomic_load(&v->rescued);
    s.ended = atomic_load(&v->ended);
    s.discarded = atomic_load(&v->discarded);
    s.released = atomic_load(&v->released);
    s.store_errors = atomic_load(&v->store_errors);
    s.held = (uint32_t)held(v);
    s.store_ok = atomic_load(&v->store_ok);
  }
  size_t k = out->struct_size < sizeof s ? out->struct_size : sizeof s;
  s.struct_size = (uint32_t)k;
  memcpy(out, &s, k);
  return APEX_OK;
}

void apex__serve_destroy(apex_manager_t *m) {
  apex__serve_t *v = serve_of(m);
  if (!v) return;
  if (!atomic_load(&v->stop)) (void)apex_manager_serve_stop(m, 0, NULL, NULL);
}

/* After the workers stopped (apex__durable_close): frees the state. */
void apex__serve_free(apex_manager_t *m) {
  apex__serve_t *v = serve_of(m);
  if (!v) return;
  *apex__durable_serve_slot(m->dur) = NULL;
  serve_free(v);
}
