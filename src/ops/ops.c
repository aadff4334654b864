/* The operation manager: every live task of a manager (submitted, not yet
 * terminal) seen as an operation to list, find, cancel or snapshot, and the
 * graceful shutdown that reports what became of each.
 *
 * No registry of its own: a task costs the hot path nothing for being
 * listable. Operations are found where the engine already keeps them
 * (docs/architecture.md, "Operation groups and the operation manager"): the
 * scheduler (tasks waiting to start, under pool_mu: sched/sched.h) and the
 * per-stripe live lists (started tasks, each under its stripe lock). A walk
 * takes pool_mu once and each stripe lock once, collecting task references;
 * what a task shows (state, attempt, progress, group) is then read under
 * its own lock, one task at a time. The cost a listing puts on submits and
 * workers is pool_mu for the scheduler's walk (a reference per waiting
 * task: about 10 ns each, so 10 ms with a million queued) and each stripe
 * lock for its list's walk.
 *
 * A task a worker has taken from the scheduler and not yet opened its
 * first attempt for is in neither place: the worker holds it (its
 * `holding`, pool.c), and the walk reads the scheduler and the workers'
 * held tasks in one pool_mu section before the live lists, so a task seen
 * in none of them has ended. (A pick handed to a watching worker can wait
 * there as long as that thread waits for a CPU: looking again a few times,
 * as apex_ops_find did, was not enough under load.) */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "core/abi.h"
#include "core/error.h"
#include "exec/internal.h"
#include "ops/group.h"
#include "ops/ops.h"
#include "sched/sched.h"

/* ------------------------------------------------------------- filters */

#define LIVE_STATES                                                                  \
  (APEX_OPS_STATE(APEX_TASK_QUEUED) | APEX_OPS_STATE(APEX_TASK_RUNNING) |            \
   APEX_OPS_STATE(APEX_TASK_RETRY_WAIT) | APEX_OPS_STATE(APEX_TASK_SCHEDULED))

typedef struct flt {
  unsigned states; /* 0: any */
  const char *plugin, *action;
  apex_group_t *group; /* with a call reference (apex__group_get) */
} flt_t;

/* Reads a caller's filter. Returns APEX_OK or APEX_E_INVALID (why set). */
static int flt_read(apex_manager_t *m, const apex_ops_filter_t *in, flt_t *f, char *why,
                    size_t n) {
  memset(f, 0, sizeof *f);
  if (!in) return APEX_OK;
  apex_ops_filter_t c = {.struct_size = sizeof c};
  if (!apex__struct_copy_in(&c, sizeof c, in, in->struct_size,
                            APEX__END_OF(apex_ops_filter_t, group), "ops filter",
                            "APEX_OPS_FILTER_INIT", why, n))
    return APEX_E_INVALID;
  if (c.states & ~(unsigned)LIVE_STATES) {
    snprintf(why, n, "ops filter: states 0x%x names a state no live operation has (0x%x)",
             c.states & ~(unsigned)LIVE_STATES, (unsigned)LIVE_STATES);
    return APEX_E_INVALID;
  }
  if (c.group) {
    apex_group_t *g = apex__group_get(c.group);
    if (!g || g->m != m) {
      snprintf(why, n, "ops filter: group %s", g ? "belongs to another manager"
                                                 : "was released (or is no group)");
      if (g) apex__group_unref(g);
      return APEX_E_INVALID;
    }
    f->group = g;
  }
  f->states = c.states;
  f->plugin = c.plugin;
  f->action = c.action;
  return APEX_OK;
}

static void flt_done(flt_t *f) {
  if (f->group) apex__group_unref(f->group);
}

/* The filters on what never changes after submit. */
static int flt_static(const flt_t *f, const apex_task_t *t) {
  if (f->plugin && strcmp(f->plugin, t->plugin->desc.name) != 0) return 0;
  if (f->action && strcmp(f->action, t->action->name) != 0) return 0;
  if (f->group && (!t->opts || t->opts->group != f->group)) return 0;
  return 1;
}

/* ------------------------------------------------------------- walking */

typedef struct tvec {
  apex_task_t **v;
  size_t n, cap;
  int nomem;
} tvec_t;

static void tvec_push(tvec_t *a, apex_task_t *t) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 64;
    apex_task_t **v = realloc(a->v, cap * sizeof *v);
    if (!v) {
      a->nomem = 1;
      return;
    }
    a->v = v;
    a->cap = cap;
  }
  apex__task_ref(t);
  a->v[a->n++] = t;
}

static void tvec_free(tvec_t *a) {
  for (size_t i = 0; i < a->n; i++)
    if (a->v[i]) apex__task_unref(a->v[i]);
  free(a->v);
  memset(a, 0, sizeof *a);
}

static int by_id(const void *x, const void *y) {
  uint64_t a = (*(apex_task_t *const *)x)->id, b = (*(apex_task_t *const *)y)->id;
  return a < b ? -1 : a > b;
}

/* Every task waiting in the scheduler (runnable, held by a limit or a
 * rate, or scheduled for a start time) and every task a worker holds on
 * its way to its first attempt, each with a reference; NULL with
 * *n 0 when there are none or no memory (*nomem). One pool_mu section
 * (sched/sched.h, apex__sched_collect_locked); what it holds is live, so
 * n_live bounds it, and a submit racing the read makes the next try. */
static apex_task_t **waiting(apex_manager_t *m, size_t *n, int *nomem) {
  *n = 0;
  size_t cap = apex__pool_n_live(m) + 64;
  for (;;) {
    apex_task_t **v = malloc(cap * sizeof *v);
    if (!v) {
      *nomem = 1;
      return NULL;
    }
    apex__lock(&m->pool_mu);
    size_t k = apex__sched_collect_locked(m, v, cap);
    /* With the tasks workers hold between the queue and their live list
     * (in the same section: a task moves from one to the other under it). */
    size_t h = k < cap ? apex__pool_collect_held_locked(m, v + k, cap - k) : 0;
    apex__unlock(&m->pool_mu);
    if (k < cap && h < cap - k) {
      *n = k + h;
      return v;
    }
    /* Too many for v: again, bigger (each reference taken dropped). */
    if (k < cap) k += h < cap - k ? h : cap - k;
    for (size_t i = 0; i < k; i++) apex__task_unref(v[i]);
    free(v);
    cap *= 2;
  }
}

/* Collects a reference on every live task matching f's static part: the
 * scheduler's first, then the live lists, so a task that starts in between
 * is seen twice rather than not at all (and one waiting to retry is in
 * both); sorted by id, duplicates dropped. */
static void collect(apex_manager_t *m, const flt_t *f, tvec_t *a) {
  size_t nw = 0;
  apex_task_t **w = waiting(m, &nw, &a->nomem);
  for (size_t i = 0; i < nw; i++) {
    /* Plugin, action and group never change: no lock needed. */
    if (!a->nomem && flt_static(f, w[i])) tvec_push(a, w[i]);
    apex__task_unref(w[i]);
  }
  free(w);
  for (int i = 0; i < APEX__LOCK_STRIPES && !a->nomem; i++) {
    pthread_mutex_lock(&m->stripes[i].mu);
    for (apex__run_t *r = m->stripes[i].live_head; r && !a->nomem; r = r->live_next)
      if (flt_static(f, r->task)) tvec_push(a, r->task);
    pthread_mutex_unlock(&m->stripes[i].mu);
  }
  if (a->n < 2) return;
  qsort(a->v, a->n, sizeof a->v[0], by_id);
  size_t k = 1;
  for (size_t i = 1; i < a->n; i++) {
    if (a->v[i] == a->v[k - 1])
      apex__task_unref(a->v[i]);
    else
      a->v[k++] = a->v[i];
  }
  a->n = k;
}

double apex__task_last_pct(apex_task_t *t) {
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  double pct = t->run && t->run->prog ? t->run->prog->pct : -1.0;
  pthread_mutex_unlock(mu);
  return pct;
}

/* What an operation shows, read under its task lock. message: a copy
 * (malloc) or NULL for none. Returns 0 if t is no longer live. */
static int info_read(apex_task_t *t, apex_op_info_t *o, char **message) {
  memset(o, 0, sizeof *o);
  *message = NULL;
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  apex_task_state_t st = (apex_task_state_t)atomic_load(&t->state);
  if (apex_task_state_is_terminal(st)) {
    pthread_mutex_unlock(mu);
    return 0;
  }
  o->struct_size = sizeof *o;
  o->id = t->id;
  o->plugin = t->plugin->desc.name;
  o->action = t->action->name;
  o->state = st;
  o->attempt = t->attempt;
  o->percentage = -1.0;
  apex__progress_slot_t *p = t->run ? t->run->prog : NULL;
  if (p) {
    o->percentage = p->pct;
    if (p->msg[0]) *message = strdup(p->msg); /* NULL on no memory: shown as none */
  }
  o->group = apex__group_of(t);
  uint64_t sub = t->out.submitted_ns; /* live: the outcome's word holds it */
  pthread_mutex_unlock(mu);
  uint64_t now = apex__now_ns();
  o->age_s = sub ? (now > sub ? (double)(now - sub) / 1e9 : 0.0) : -1.0;
  return 1;
}

/* ---------------------------------------------------------------- list */

struct apex_op_list {
  size_t n;
  apex_op_info_t *v;
  char **msgs;
};

static const char empty[] = "";

void apex_op_list_free(apex_op_list_t *l) {
  if (!l) return;
  for (size_t i = 0; i < l->n; i++) free(l->msgs[i]);
  free(l->msgs);
  free(l->v);
  free(l);
}

size_t apex_op_list_count(const apex_op_list_t *l) { return l ? l->n : 0; }

const apex_op_info_t *apex_op_list_at(const apex_op_list_t *l, size_t i) {
  return l && i < l->n ? &l->v[i] : NULL;
}

/* Lists into a new list; why names a refusal. */
static int list(apex_manager_t *m, const apex_ops_filter_t *filter, apex_op_list_t **out,
                tvec_t *keep, char *why, size_t why_len) {
  *out = NULL;
  flt_t f;
  int rc = flt_read(m, filter, &f, why, why_len);
  if (rc != APEX_OK) return rc;
  tvec_t a = {0};
  collect(m, &f, &a);
  apex_op_list_t *l = calloc(1, sizeof *l);
  if (l && a.n) {
    l->v = malloc(a.n * sizeof *l->v);
    l->msgs = calloc(a.n, sizeof *l->msgs);
  }
  if (a.nomem || !l || (a.n && (!l->v || !l->msgs))) {
    if (l) {
      free(l->v);
      free(l->msgs);
      free(l);
    }
    tvec_free(&a);
    flt_done(&f);
    snprintf(why, why_len, "out of memory");
    return APEX_E_NOMEM;
  }
  size_t k = 0;
  for (size_t i = 0; i < a.n; i++) {
    apex_op_info_t o;
    char *msg;
    int take = info_read(a.v[i], &o, &msg);
    if (take && f.states && !(f.states & APEX_OPS_STATE(o.state))) {
      free(msg);
      take = 0;
    }
    if (!take) { /* its reference goes now: a kept one may move into its place */
      apex__task_unref(a.v[i]);
      a.v[i] = NULL;
      continue;
    }
    o.message = msg ? msg : empty;
    l->msgs[k] = msg;
    l->v[k] = o;
    if (keep) { /* moved down: kept in id order */
      apex_task_t *t = a.v[i];
      a.v[i] = NULL;
      a.v[k] = t;
    }
    k++;
  }
  l->n = k;
  if (keep) {
    a.n = k; /* every reference past k went or moved */
    *keep = a;
  } else {
    tvec_free(&a);
  }
  flt_done(&f);
  *out = l;
  return APEX_OK;
}

apex_status_t apex_ops_list(apex_manager_t *m, const apex_ops_filter_t *filter,
                            apex_op_list_t **out) {
  if (out) *out = NULL;
  if (!m || !out) return APEX_E_INVALID;
  char why[200];
  int rc = list(m, filter, out, NULL, why, sizeof why);
  if (rc == APEX_E_INVALID) apex__log(&m->log, APEX_LOG_WARN, "apex_ops_list: %s", why);
  return rc;
}

/* ---------------------------------------------------------- find, cancel */

/* t with a reference if live task id is found, else NULL. */
static apex_task_t *find_once(apex_manager_t *m, uint64_t id) {
  apex_task_t *t = NULL;
  size_t nw = 0;
  int nomem = 0;
  apex_task_t **w = waiting(m, &nw, &nomem);
  for (size_t i = 0; i < nw; i++) {
    if (!t && w[i]->id == id)
      t = w[i]; /* its reference is ours */
    else
      apex__task_unref(w[i]);
  }
  free(w);
  if (t) return t;
  apex__stripe_t *s = &m->stripes[id % APEX__LOCK_STRIPES];
  pthread_mutex_lock(&s->mu);
  for (apex__run_t *r = s->live_head; r && !t; r = r->live_next)
    if (r->task->id == id) {
      t = r->task;
      apex__task_ref(t);
    }
  pthread_mutex_unlock(&s->mu);
  return t;
}

apex_status_t apex_ops_find(apex_manager_t *m, uint64_t id, apex_task_t **out) {
  if (out) *out = NULL;
  if (!m || !out || id == 0) return APEX_E_INVALID;
  if (id >= atomic_load(&m->next_id)) return APEX_E_INVALID;
  /* One look finds a live task wherever it is (the top of this file). */
  apex_task_t *t = find_once(m, id);
  if (t && !apex_task_state_is_terminal(apex_task_state(t))) {
    *out = t;
    return APEX_OK;
  }
  if (t) apex__task_unref(t);
  return APEX_E_ALREADY;
}

static int reason_reserved(const char *r) {
  return r && (!strcmp(r, "timeout") || !strcmp(r, "shutdown") || !strcmp(r, "parent"));
}

apex_status_t apex_ops_cancel_id(apex_manager_t *m, uint64_t id, const char *reason) {
  if (reason_reserved(reason)) return APEX_E_INVALID;
  apex_task_t *t = NULL;
  apex_status_t rc = apex_ops_find(m, id, &t);
  if (rc != APEX_OK) return rc;
  rc = apex_task_cancel(t, reason);
  apex__task_unref(t);
  return rc;
}

apex_status_t apex_ops_cancel(apex_manager_t *m, const apex_ops_filter_t *filter,
                              const char *reason, size_t *n_cancelled) {
  if (n_cancelled) *n_cancelled = 0;
  if (!m || reason_reserved(reason)) return APEX_E_INVALID;
  apex_op_list_t *l = NULL;
  tvec_t a = {0};
  char why[200];
  int rc = list(m, filter, &l, &a, why, sizeof why);
  if (rc != APEX_OK) {
    if (rc == APEX_E_INVALID) apex__log(&m->log, APEX_LOG_WARN, "apex_ops_cancel: %s", why);
    return rc;
  }
  size_t k = 0;
  for (size_t i = 0; i < a.n; i++)
    if (apex_task_cancel(a.v[i], reason) == APEX_OK) k++;
  tvec_free(&a);
  apex_op_list_free(l);
  if (n_cancelled) *n_cancelled = k;
  return APEX_OK;
}

/* ------------------------------------------------------------ snapshot */

json_t *apex_ops_snapshot(apex_manager_t *m, const apex_ops_filter_t *filter) {
  if (!m) return NULL;
  apex_op_list_t *l = NULL;
  char why[200];
  if (list(m, filter, &l, NULL, why, sizeof why) != APEX_OK) return NULL;
  json_t *ops = json_array(), *counts = json_object();
  json_t *snap = json_object();
  int bad = !ops || !counts || !snap;
  static const apex_task_state_t live_states[] = {APEX_TASK_SCHEDULED, APEX_TASK_QUEUED,
                                                  APEX_TASK_RUNNING, APEX_TASK_RETRY_WAIT};
  size_t by_state[8] = {0};
  for (size_t i = 0; i < l->n && !bad; i++) {
    const apex_op_info_t *o = &l->v[i];
    by_state[(unsigned)o->state & 7u]++;
    json_t *e = json_pack("{s:I, s:s, s:s, s:s, s:i, s:o, s:s, s:o, s:o}", "id",
                          (json_int_t)o->id, "plugin", o->plugin, "action", o->action, "state",
                          apex_task_state_name(o->state), "attempt", (int)o->attempt,
                          "percentage", o->percentage < 0 ? json_null() : json_real(o->percentage),
                          "message", o->message, "age_s",
                          o->age_s < 0 ? json_null() : json_real(o->age_s), "group",
                          o->group ? json_integer((json_int_t)o->group) : json_null());
    bad = !e || json_array_append_new(ops, e) != 0;
  }
  for (size_t i = 0; i < 4 && !bad; i++)
    bad = json_object_set_new(counts, apex_task_state_name(live_states[i]),
                              json_integer((json_int_t)by_state[live_states[i]])) != 0;
  if (!bad)
    bad = json_object_set_new(snap, "live", json_integer((json_int_t)l->n)) ||
          json_object_set(snap, "counts", counts) || json_object_set(snap, "operations", ops);
  json_decref(ops);
  json_decref(counts);
  apex_op_list_free(l);
  if (bad) {
    json_decref(snap);
    return NULL;
  }
  return snap;
}

/* ------------------------------------------------------------ shutdown */

typedef struct report {
  apex_shutdown_report_t pub; /* first: the host's pointer */
  apex_shutdown_op_t *ops;    /* finished, then cancelled, then abandoned */
  char **names;               /* 2 per op */
  size_t n;
} report_t;

void apex_shutdown_report_free(apex_shutdown_report_t *r) {
  if (!r) return;
  report_t *x = (report_t *)(void *)r;
  for (size_t i = 0; i < 2 * x->n; i++) free(x->names[i]);
  free(x->names);
  free(x->ops);
  free(x);
}

json_t *apex_shutdown_report_to_json(const apex_shutdown_report_t *r) {
  if (!r) return NULL;
  json_t *o = json_pack("{s:s}", "status", r->status == APEX_OK ? "ok" : apex_status_name(r->status));
  const char *keys[3] = {"finished", "cancelled", "abandoned"};
  const apex_shutdown_op_t *lists[3] = {r->finished, r->cancelled, r->abandoned};
  size_t ns[3] = {r->n_finished, r->n_cancelled, r->n_abandoned};
  for (int k = 0; k < 3 && o; k++) {
    json_t *a = json_array();
    int bad = !a;
    for (size_t i = 0; i < ns[k] && !bad; i++) {
      const apex_shutdown_op_t *op = &lists[k][i];
      json_t *e = json_pack("{s:I, s:s, s:s, s:s}", "id", (json_int_t)op->id, "plugin",
                            op->plugin, "action", op->action, "state",
                            apex_task_state_name(op->state));
      bad = !e || json_array_append_new(a, e) != 0;
    }
    if (bad || json_object_set_new(o, keys[k], a) != 0) {
      if (bad) json_decref(a);
      json_decref(o);
      o = NULL;
    }
  }
  return o;
}

/* Every live task of m (submits refused already), with references, names
 * copied. Collects again until it holds as many live tasks as m counts
 * (a task being submitted is counted a moment before the scheduler has it). */
static void collect_all(apex_manager_t *m, tvec_t *a) {
  flt_t none = {0};
  for (int tries = 0;; tries++) {
    collect(m, &none, a);
    size_t live = 0;
    for (size_t i = 0; i < a->n; i++)
      live += !apex_task_state_is_terminal(apex_task_state(a->v[i]));
    if (a->nomem || live >= apex__pool_n_live(m) || tries == 1000) return;
    tvec_free(a);
    sched_yield();
  }
}

static report_t *report_new(tvec_t *a) {
  report_t *x = calloc(1, sizeof *x);
  if (!x) return NULL;
  x->pub.struct_size = sizeof x->pub;
  x->n = a->n;
  x->ops = calloc(a->n ? a->n : 1, sizeof *x->ops);
  x->names = calloc(a->n ? 2 * a->n : 1, sizeof *x->names);
  int bad = !x->ops || !x->names;
  for (size_t i = 0; i < a->n && !bad; i++) {
    bad = !(x->names[2 * i] = strdup(a->v[i]->plugin->desc.name)) ||
          !(x->names[2 * i + 1] = strdup(a->v[i]->action->name));
  }
  if (bad) {
    apex_shutdown_report_free(&x->pub);
    return NULL;
  }
  return x;
}

/* 1 if a handler still owns t's ctx (destroy gave up on it). */
static int still_running(apex_task_t *t) {
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  apex__run_t *r = t->run;
  int open = r && atomic_load_explicit(&r->attempt_open, memory_order_relaxed) &&
             atomic_load_explicit(&r->id, memory_order_relaxed) == t->id;
  pthread_mutex_unlock(mu);
  return open;
}

apex_status_t apex_manager_shutdown(apex_manager_t *m, int64_t drain_ms,
                                    apex_shutdown_report_t **report) {
  if (report) *report = NULL;
  if (!m) return APEX_OK;
  if (!report) return apex_manager_destroy(m, drain_ms);
  /* As destroy's first step (under pool_mu, where submit checks it): from
   * here on the live tasks are a closed set. */
  apex__lock(&m->pool_mu);
  atomic_store(&m->shutting_down, 1);
  apex__unlock(&m->pool_mu);
  tvec_t a = {0};
  collect_all(m, &a);
  report_t *x = a.nomem ? NULL : report_new(&a);
  if (!x) apex__log(&m->log, APEX_LOG_ERROR, "shutdown: no memory for the report");
  /* Our references keep the tasks, and through them m's memory, after
   * destroy returned (as a host's handles do). */
  apex_status_t rc = apex_manager_destroy(m, drain_ms);
  if (x) {
    x->pub.status = rc;
    /* Each task's kind once (a deaf handler may return meanwhile); then
     * three passes keep each kind
     * contiguous, in id order. */
    unsigned char *kinds = malloc(a.n ? 2 * a.n : 1);
    unsigned char *states = kinds ? kinds + a.n : NULL;
    for (size_t i = 0; kinds && i < a.n; i++) {
      apex_task_t *t = a.v[i];
      int abandoned = rc == APEX_E_BUSY && still_running(t);
      apex_task_state_t st = apex_task_state(t);
      /* Not in a handler and not terminal yet: a worker popped it as
       * destroy began and ends it, cancelled, right after destroy returned
       * BUSY (docs/architecture.md, Shutdown). It is reported as what it
       * is about to be, not as finished. */
      if (!abandoned && !apex_task_state_is_terminal(st)) st = APEX_TASK_CANCELLED;
      states[i] = (unsigned char)st;
      kinds[i] = abandoned ? 2 : st == APEX_TASK_CANCELLED ? 1 : 0;
    }
    size_t k = 0;
    for (int kind = 0; kinds && kind < 3; kind++) {
      size_t first = k;
      for (size_t i = 0; i < a.n; i++) {
        if (kinds[i] != kind) continue;
        apex_task_t *t = a.v[i];
        x->ops[k] = (apex_shutdown_op_t){t->id, x->names[2 * i], x->names[2 * i + 1],
                                         kind == 2 ? apex_task_state(t)
                                                   : (apex_task_state_t)states[i]};
        k++;
      }
      size_t n = k - first;
      const apex_shutdown_op_t *p = n ? &x->ops[first] : NULL;
      if (kind == 0) x->pub.finished = p, x->pub.n_finished = n;
      if (kind == 1) x->pub.cancelled = p, x->pub.n_cancelled = n;
      if (kind == 2) x->pub.abandoned = p, x->pub.n_abandoned = n;
    }
    if (kinds) {
      *report = &x->pub;
    } else {
      apex__log(&m->log, APEX_LOG_ERROR, "shutdown: no memory for the report");
      apex_shutdown_report_free(&x->pub);
    }
    free(kinds);
  }
  tvec_free(&a); /* the last may free m's memory */
  return rc;
}
