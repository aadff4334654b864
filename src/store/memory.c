/* The memory store backend: the rows of store.h in this process's memory,
 * nothing written anywhere. What a manager without a store keeps is its
 * own (the live tasks); this backend is for "memory:" stores: tests, and a
 * host that wants the store's semantics (idempotency keys, lookup by id,
 * cancel requests) without a file. Its writes are "durable" as soon as they
 * return, within the process.
 *
 * Rows live in an array indexed by id - 1 (ids are dense: alloc_ids hands
 * them out in order), NULL where an id was reserved but never used or was
 * purged. One mutex guards everything; no call runs user code. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"

typedef struct mem_store {
  apex__store_t base;
  apex__swake_t wk; /* wait_work, wake */
  pthread_mutex_t mu;
  apex__srec_t **rows; /* [id - 1] */
  size_t cap;
  uint64_t next_id;
} mem_store_t;

static mem_store_t *M(apex__store_t *s) { return (mem_store_t *)s; }

/* A row and its concurrency key (set at enqueue from opts): rows[] points
 * at .r, the first member. */
typedef struct mem_row {
  apex__srec_t r;
  char *ckey;
} mem_row_t;

static const char *ckey_of(const apex__srec_t *r) { return ((const mem_row_t *)r)->ckey; }

static void row_free(apex__srec_t *r) {
  if (!r) return;
  mem_row_t *mr = (mem_row_t *)r;
  apex__srec_clear(&mr->r);
  free(mr->ckey);
  free(mr);
}

static int terminal(int state) { return apex_task_state_is_terminal((apex_task_state_t)state); }

/* The row of id, or NULL. Under mu. */
static apex__srec_t *row(mem_store_t *m, uint64_t id) {
  if (id == 0 || id > m->cap) return NULL;
  return m->rows[id - 1];
}

/* Held by an owner other than `owner` whose lease has not expired. */
static int held_by_other(const apex__srec_t *r, const char *owner, double now) {
  if (!r->owner) return 0;
  if (owner && strcmp(r->owner, owner) == 0) return 0;
  return r->lease_until > now;
}

static int set_str(char **dst, const char *src) {
  char *d = NULL;
  if (src && !(d = strdup(src))) return APEX_E_NOMEM;
  free(*dst);
  *dst = d;
  return APEX_OK;
}

static int mem_alloc_ids(apex__store_t *s, uint64_t n, uint64_t *first, apex_error_t **err) {
  mem_store_t *m = M(s);
  (void)err;
  pthread_mutex_lock(&m->mu);
  *first = m->next_id;
  m->next_id += n;
  pthread_mutex_unlock(&m->mu);
  return APEX_OK;
}

static int mem_find_key_locked(mem_store_t *m, const char *key, uint64_t *id) {
  *id = 0;
  for (size_t i = 0; i < m->cap; i++)
    if (m->rows[i] && m->rows[i]->idem_key && strcmp(m->rows[i]->idem_key, key) == 0) {
      *id = m->rows[i]->id;
      break;
    }
  return APEX_OK;
}

static int same_call(const apex__srec_t *a, const apex__srec_t *b) {
  return strcmp(a->plugin, b->plugin) == 0 && strcmp(a->action, b->action) == 0 &&
         strcmp(a->params ? a->params : "{}", b->params ? b->params : "{}") == 0;
}

static int mem_enqueue(apex__store_t *s, const apex__srec_t *r, uint64_t *existing_id,
                       apex_error_t **err) {
  mem_store_t *m = M(s);
  *existing_id = 0;
  if (r->id == 0 || !r->plugin || !r->action)
    return apex__store_fail(err, APEX_E_INVALID, "store: enqueue: a row needs id, plugin, action");
  pthread_mutex_lock(&m->mu);
  int rc = APEX_OK;
  if (r->idem_key) {
    uint64_t id;
    mem_find_key_locked(m, r->idem_key, &id);
    if (id) {
      *existing_id = id;
      if (!same_call(row(m, id), r))
        rc = apex__store_fail(err, APEX_E_INVALID,
                              "idempotency key '%s' was used for another call (task %llu: %s.%s "
                              "with other params)",
                              r->idem_key, (unsigned long long)id, row(m, id)->plugin,
                              row(m, id)->action);
      pthread_mutex_unlock(&m->mu);
      return rc;
    }
  }
  if (r->id >= m->next_id || row(m, r->id)) {
    pthread_mutex_unlock(&m->mu);
    return apex__store_fail(err, APEX_E_INVALID, "store: enqueue: id %llu %s",
                            (unsigned long long)r->id,
                            r->id >= m->next_id ? "was never allocated" : "is taken");
  }
  if (r->id > m->cap) {
    size_t cap = m->cap ? m->cap : 64;
    while (cap < r->id) cap *= 2;
    apex__srec_t **nr = realloc(m->rows, cap * sizeof *nr);
    if (!nr) {
      pthread_mutex_unlock(&m->mu);
      return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
    }
    memset(nr + m->cap, 0, (cap - m->cap) * sizeof *nr);
    m->rows = nr;
    m->cap = cap;
  }
  mem_row_t *c = calloc(1, sizeof *c);
  int bad = 0;
  if (c) c->ckey = apex__sopts_ckey(r->opts, &bad);
  if (!c || bad || apex__srec_copy(&c->r, r) != APEX_OK) {
    if (c) free(c->ckey);
    free(c);
    pthread_mutex_unlock(&m->mu);
    return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  }
  m->rows[r->id - 1] = &c->r;
  pthread_mutex_unlock(&m->mu);
  apex__swake_signal(&m->wk);
  return APEX_OK;
}

static int mem_discard(apex__store_t *s, uint64_t id, apex_error_t **err) {
  mem_store_t *m = M(s);
  pthread_mutex_lock(&m->mu);
  apex__srec_t *r = row(m, id);
  int rc = APEX_OK;
  if (!r)
    rc = apex__store_fail(err, APEX_E_INVALID, "store: no task %llu", (unsigned long long)id);
  else if (r->attempts > 0 || (r->state != APEX_TASK_QUEUED && r->state != APEX_TASK_SCHEDULED))
    rc = APEX_E_ALREADY;
  else {
    row_free(r);
    m->rows[id - 1] = NULL;
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}

static int mem_claim(apex__store_t *s, uint64_t id, const char *owner, uint32_t attempt,
                     double now, double lease_until, int wait, apex_error_t **err) {
  mem_store_t *m = M(s);
  (void)wait; /* what returns is durable, and its answer costs nothing */
  pthread_mutex_lock(&m->mu);
  apex__srec_t *r = row(m, id);
  int rc = APEX_OK;
  if (!r)
    rc = apex__store_fail(err, APEX_E_INVALID, "store: no task %llu", (unsigned long long)id);
  else if (terminal(r->state) || held_by_other(r, owner, now))
    rc = APEX_E_ALREADY;
  else if (r->cancel_requested)
    rc = APEX_E_CANCELLED;
  else if (set_str(&r->owner, owner) != APEX_OK)
    rc = apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  else {
    r->state = APEX_TASK_RUNNING;
    r->attempts = attempt;
    r->lease_until = lease_until;
    r->updated_at = now;
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}

static int waiting(int state) {
  return state == APEX_TASK_QUEUED || state == APEX_TASK_SCHEDULED ||
         state == APEX_TASK_RETRY_WAIT;
}

/* Appends copies of the rows pick() selects to a growing array. */
static int push_copy(apex__srec_t **a, size_t *n, size_t *cap, const apex__srec_t *r) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    apex__srec_t *na = realloc(*a, c * sizeof *na);
    if (!na) return APEX_E_NOMEM;
    *a = na;
    *cap = c;
  }
  if (apex__srec_copy(&(*a)[*n], r) != APEX_OK) return APEX_E_NOMEM;
  (*n)++;
  return APEX_OK;
}

/* Running rows of live leases counted into a (claim_next's limits). */
static int count_running(mem_store_t *m, apex__slimacct_t *a, double now) {
  for (size_t i = 0; i < m->cap; i++) {
    apex__srec_t *r = m->rows[i];
    if (r && r->state == APEX_TASK_RUNNING && r->lease_until > now &&
        apex__slimacct_add(a, r->plugin, r->action, ckey_of(r), 1) != APEX_OK)
      return APEX_E_NOMEM;
  }
  return APEX_OK;
}

static int mem_claim_next(apex__store_t *s, const char *owner, double now, double lease_until,
                          size_t max, const apex__slimit_t *limits, size_t nlimits,
                          apex__srec_t **out, size_t *n, apex_error_t **err) {
  mem_store_t *m = M(s);
  *out = NULL;
  *n = 0;
  if (max == 0) return APEX_OK;
  apex__slimacct_t *acct = NULL;
  if (nlimits && !(acct = apex__slimacct_new(limits, nlimits)))
    return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  pthread_mutex_lock(&m->mu);
  size_t k = 0, cap = 0;
  apex__srec_t *a = NULL;
  int rc = acct ? count_running(m, acct, now) : APEX_OK;
  for (size_t i = 0; i < m->cap && k < max && rc == APEX_OK; i++) {
    apex__srec_t *r = m->rows[i];
    if (!r || !waiting(r->state) || r->cancel_requested || r->run_at > now ||
        held_by_other(r, owner, now))
      continue;
    if (acct) {
      int ad = apex__slimacct_admit(acct, r->plugin, r->action, ckey_of(r));
      if (ad < 0) rc = APEX_E_NOMEM;
      if (ad <= 0) continue;
    }
    if (set_str(&r->owner, owner) != APEX_OK) {
      rc = APEX_E_NOMEM;
      break;
    }
    r->state = APEX_TASK_RUNNING;
    r->attempts++;
    r->lease_until = lease_until;
    r->updated_at = now;
    rc = push_copy(&a, &k, &cap, r);
  }
  pthread_mutex_unlock(&m->mu);
  apex__slimacct_free(acct);
  if (rc != APEX_OK) {
    apex__srec_free_array(a, k);
    return apex__store_fail(err, rc, "out of memory");
  }
  *out = a;
  *n = k;
  return APEX_OK;
}

static int mem_release(apex__store_t *s, uint64_t id, const char *owner, double now,
                       apex_error_t **err) {
  mem_store_t *m = M(s);
  pthread_mutex_lock(&m->mu);
  apex__srec_t *r = row(m, id);
  int rc = APEX_OK;
  if (!r)
    rc = apex__store_fail(err, APEX_E_INVALID, "store: no task %llu", (unsigned long long)id);
  else if (terminal(r->state) || !r->owner || !owner || strcmp(r->owner, owner) != 0)
    rc = APEX_E_ALREADY;
  else {
    free(r->owner);
    r->owner = NULL;
    r->lease_until = 0;
    if (r->state == APEX_TASK_RUNNING) r->state = APEX_TASK_QUEUED;
    if (r->run_at < now) r->run_at = now;
    r->updated_at = now;
  }
  pthread_mutex_unlock(&m->mu);
  if (rc == APEX_OK) apex__swake_signal(&m->wk);
  return rc;
}

static int mem_wait_work(apex__store_t *s, double timeout_s, apex_error_t **err) {
  (void)err;
  apex__swake_wait(&M(s)->wk, timeout_s);
  return APEX_OK;
}

static void mem_wake(apex__store_t *s) { apex__swake_signal(&M(s)->wk); }

static int mem_heartbeat(apex__store_t *s, uint64_t id, const char *owner, double now,
                         double lease_until, const char *checkpoint, const char *progress,
                         int wait, apex_error_t **err) {
  mem_store_t *m = M(s);
  (void)wait;
  pthread_mutex_lock(&m->mu);
  apex__srec_t *r = row(m, id);
  int rc = APEX_OK;
  if (!r)
    rc = apex__store_fail(err, APEX_E_INVALID, "store: no task %llu", (unsigned long long)id);
  else if (terminal(r->state) || !r->owner || (owner && strcmp(r->owner, owner) != 0))
    rc = APEX_E_ALREADY;
  else if ((checkpoint && set_str(&r->checkpoint, checkpoint) != APEX_OK) ||
           (progress && set_str(&r->progress, progress) != APEX_OK))
    rc = apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  else {
    r->lease_until = lease_until;
    r->updated_at = now;
    if (r->cancel_requested) rc = APEX_E_CANCELLED;
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}

static int mem_finish(apex__store_t *s, uint64_t id, const char *owner, int state, double now,
                      double run_at, const char *result, const char *error, const char *partial,
                      int wait, apex_error_t **err) {
  mem_store_t *m = M(s);
  (void)wait;
  pthread_mutex_lock(&m->mu);
  apex__srec_t *r = row(m, id);
  int rc = APEX_OK;
  if (!r)
    rc = apex__store_fail(err, APEX_E_INVALID, "store: no task %llu", (unsigned long long)id);
  else if (terminal(r->state) || (owner && held_by_other(r, owner, now)))
    rc = APEX_E_ALREADY;
  else if (set_str(&r->result, result) != APEX_OK || set_str(&r->error, error) != APEX_OK ||
           (partial && set_str(&r->partial, partial) != APEX_OK))
    rc = apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  else {
    r->state = state;
    r->updated_at = now;
    if (terminal(state)) {
      r->ended_at = now;
      free(r->owner);
      r->owner = NULL;
      r->lease_until = 0;
    } else {
      r->run_at = run_at;
    }
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}

static int mem_request_cancel(apex__store_t *s, uint64_t id, const char *reason, double now,
                              int *ended, apex_error_t **err) {
  mem_store_t *m = M(s);
  *ended = 0;
  pthread_mutex_lock(&m->mu);
  apex__srec_t *r = row(m, id);
  int rc = APEX_OK;
  if (!r)
    rc = apex__store_fail(err, APEX_E_INVALID, "store: no task %llu", (unsigned long long)id);
  else if (terminal(r->state) || r->cancel_requested)
    rc = APEX_E_ALREADY;
  else if (set_str(&r->cancel_reason, reason ? reason : "user") != APEX_OK)
    rc = apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  else {
    r->cancel_requested = 1;
    r->updated_at = now;
    if (!held_by_other(r, NULL, now)) {
      char *e = apex__store_cancel_error(r->cancel_reason);
      if (!e) {
        rc = apex__store_fail(err, APEX_E_NOMEM, "out of memory");
      } else {
        free(r->error);
        r->error = e;
        r->state = APEX_TASK_CANCELLED;
        r->ended_at = now;
        free(r->owner);
        r->owner = NULL;
        r->lease_until = 0;
        *ended = 1;
      }
    }
  }
  pthread_mutex_unlock(&m->mu);
  if (rc == APEX_OK) apex__swake_signal(&m->wk);
  return rc;
}

static int mem_get(apex__store_t *s, uint64_t id, apex__srec_t *out, apex_error_t **err) {
  mem_store_t *m = M(s);
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&m->mu);
  apex__srec_t *r = row(m, id);
  int rc = !r ? apex__store_fail(err, APEX_E_INVALID, "store: no task %llu", (unsigned long long)id)
              : apex__srec_copy(out, r);
  pthread_mutex_unlock(&m->mu);
  if (rc == APEX_E_NOMEM) return apex__store_fail(err, rc, "out of memory");
  return rc;
}

static int mem_find_key(apex__store_t *s, const char *key, uint64_t *id, apex_error_t **err) {
  mem_store_t *m = M(s);
  (void)err;
  pthread_mutex_lock(&m->mu);
  mem_find_key_locked(m, key, id);
  pthread_mutex_unlock(&m->mu);
  return APEX_OK;
}

static int matches(const apex__srec_t *r, const apex__sfilter_t *f) {
  if (r->id <= f->after_id) return 0;
  if (f->states && !(f->states & (1u << (unsigned)r->state))) return 0;
  if (f->plugin && strcmp(f->plugin, r->plugin) != 0) return 0;
  if (f->action && strcmp(f->action, r->action) != 0) return 0;
  if (f->created_min != 0 && r->created_at < f->created_min) return 0;
  if (f->created_max != 0 && r->created_at > f->created_max) return 0;
  return 1;
}

static int mem_list(apex__store_t *s, const apex__sfilter_t *f, apex__srec_t **out, size_t *n,
                    apex_error_t **err) {
  mem_store_t *m = M(s);
  apex__srec_t *a = NULL;
  size_t k = 0, cap = 0;
  int rc = APEX_OK;
  pthread_mutex_lock(&m->mu);
  size_t from = f->after_id < m->cap ? (size_t)f->after_id : m->cap;
  for (size_t i = from; i < m->cap && k < f->limit && rc == APEX_OK; i++)
    if (m->rows[i] && matches(m->rows[i], f)) rc = push_copy(&a, &k, &cap, m->rows[i]);
  pthread_mutex_unlock(&m->mu);
  if (rc != APEX_OK) {
    apex__srec_free_array(a, k);
    return apex__store_fail(err, rc, "out of memory");
  }
  *out = a;
  *n = k;
  return APEX_OK;
}

static int mem_recover(apex__store_t *s, const char *owner, double now, double lease_until,
                       apex__owner_dead_fn is_dead, void *user, apex__srec_t **out, size_t *n,
                       apex_error_t **err) {
  mem_store_t *m = M(s);
  apex__srec_t *a = NULL;
  size_t k = 0, cap = 0;
  int rc = APEX_OK;
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < m->cap && rc == APEX_OK; i++) {
    apex__srec_t *r = m->rows[i];
    if (!r || terminal(r->state)) continue;
    int take = !r->owner || r->lease_until <= now ||
               (is_dead && is_dead(r->owner, user));
    if (!take) continue;
    rc = push_copy(&a, &k, &cap, r);
    if (rc == APEX_OK && set_str(&r->owner, owner) != APEX_OK) rc = APEX_E_NOMEM;
    if (rc == APEX_OK) {
      r->lease_until = lease_until;
      r->updated_at = now;
    }
  }
  pthread_mutex_unlock(&m->mu);
  if (rc != APEX_OK) {
    apex__srec_free_array(a, k);
    return apex__store_fail(err, rc, "out of memory");
  }
  *out = a;
  *n = k;
  return APEX_OK;
}

static int mem_renew(apex__store_t *s, const char *owner, double lease_until, apex_error_t **err) {
  mem_store_t *m = M(s);
  (void)err;
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < m->cap; i++) {
    apex__srec_t *r = m->rows[i];
    if (r && !terminal(r->state) && r->owner && strcmp(r->owner, owner) == 0)
      r->lease_until = lease_until;
  }
  pthread_mutex_unlock(&m->mu);
  return APEX_OK;
}

static int mem_cancel_requests(apex__store_t *s, const char *owner, uint64_t **ids, size_t *n,
                               apex_error_t **err) {
  mem_store_t *m = M(s);
  *ids = NULL;
  *n = 0;
  size_t cap = 0;
  int rc = APEX_OK;
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < m->cap; i++) {
    apex__srec_t *r = m->rows[i];
    if (!r || terminal(r->state) || !r->cancel_requested || !r->owner ||
        strcmp(r->owner, owner) != 0)
      continue;
    if (*n == cap) {
      size_t c = cap ? cap * 2 : 8;
      uint64_t *na = realloc(*ids, c * sizeof *na);
      if (!na) {
        rc = APEX_E_NOMEM;
        break;
      }
      *ids = na;
      cap = c;
    }
    (*ids)[(*n)++] = r->id;
  }
  pthread_mutex_unlock(&m->mu);
  if (rc != APEX_OK) {
    free(*ids);
    *ids = NULL;
    *n = 0;
    return apex__store_fail(err, rc, "out of memory");
  }
  return APEX_OK;
}

static int mem_purge(apex__store_t *s, double before, size_t *n, apex_error_t **err) {
  mem_store_t *m = M(s);
  (void)err;
  *n = 0;
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < m->cap; i++) {
    apex__srec_t *r = m->rows[i];
    if (r && terminal(r->state) && r->ended_at <= before) {
      row_free(r);
      m->rows[i] = NULL;
      (*n)++;
    }
  }
  pthread_mutex_unlock(&m->mu);
  return APEX_OK;
}

static int mem_sync(apex__store_t *s, apex_error_t **err) {
  (void)s;
  (void)err;
  return APEX_OK;
}

static void mem_close(apex__store_t *s) {
  mem_store_t *m = M(s);
  for (size_t i = 0; i < m->cap; i++)
    row_free(m->rows[i]);
  free(m->rows);
  apex__swake_destroy(&m->wk);
  pthread_mutex_destroy(&m->mu);
  free(m->base.uri);
  free(m);
}

static const apex__store_ops_t mem_ops = {
    .name = "memory",
    .alloc_ids = mem_alloc_ids,
    .enqueue = mem_enqueue,
    .discard = mem_discard,
    .claim = mem_claim,
    .claim_next = mem_claim_next,
    .release = mem_release,
    .wait_work = mem_wait_work,
    .wake = mem_wake,
    .heartbeat = mem_heartbeat,
    .finish = mem_finish,
    .request_cancel = mem_request_cancel,
    .get = mem_get,
    .find_key = mem_find_key,
    .list = mem_list,
    .recover = mem_recover,
    .renew = mem_renew,
    .cancel_requests = mem_cancel_requests,
    .purge = mem_purge,
    .sync = mem_sync,
    .close = mem_close,
};

int apex__store_memory_open(const char *uri, apex__store_t **out, apex_error_t **err) {
  mem_store_t *m = calloc(1, sizeof *m);
  if (!m || !(m->base.uri = strdup(uri))) {
    free(m);
    return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  }
  if (pthread_mutex_init(&m->mu, NULL) != 0) {
    free(m->base.uri);
    free(m);
    return apex__store_fail(err, APEX_E_NOMEM, "store: cannot make a mutex");
  }
  if (apex__swake_init(&m->wk) != APEX_OK) {
    pthread_mutex_destroy(&m->mu);
    free(m->base.uri);
    free(m);
    return apex__store_fail(err, APEX_E_NOMEM, "store: cannot make a condition variable");
  }
  m->base.ops = &mem_ops;
  m->next_id = 1;
  *out = &m->base;
  return APEX_OK;
}
