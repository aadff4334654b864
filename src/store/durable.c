/* Durable tasks in the manager (durable.h, docs/store.md): the store a
 * manager opens, the rows of its durable tasks through their lives, the
 * checkpoints, the keeper thread (lease renewal, cancel requests from
 * other processes), recovery, and lookup by id.
 *
 * Who holds a row: the manager that submitted or recovered it, by its
 * owner id, until a lease that the keeper renews every lease/3. Another
 * manager takes a row over only when that lease expired or, on one
 * machine, at once when the owner's process is gone: each manager on an
 * SQLite file holds an flock on PATH.owners/OWNER.lock for its life, and a
 * lock that can be taken is an owner that died (flock dies with its
 * process). Two live managers never share an owner id: the second one's
 * lock fails and apex_manager_new refuses it.
 *
 * What waits for a commit (the cost of durability, paid only by durable
 * tasks): the submit (its row: APEX_OK means journaled), each checkpoint,
 * and, for an action that is neither idempotent nor resumable, the claim
 * of each attempt (the handler starts only once the store knows it ran,
 * so a crash can never make recovery run it twice) and its outcome. For
 * an idempotent or resumable action those two are queued: a crash that
 * loses them makes recovery run it again (from its last checkpoint), which
 * such an action allows.
 *
 * Lock order: a task's lock is never held across a store call; d->id_mu
 * and d->kmu are leaves. */
#include "store/durable.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "core/log.h"
#include "exec/internal.h"
#include "store/store.h"

/* Ids a manager takes from the store at a time (one write per block): the
 * first block is one id and each next one twice the last, up to ID_BLOCK,
 * so a process that submits one task (apex run --enqueue, --detach) takes
 * one id, not 4,096 (ids 1, 2, 3 rather than 1, 4097, 8193), and a busy
 * one writes once per 4,096 submits after its first dozen blocks. */
#define ID_BLOCK 4096
/* How often the keeper looks for cancel requests, ms. */
#define KEEPER_POLL_MS 500
#define OWNER_MAX 128

struct apex__durable {
  apex_manager_t *m;
  apex__store_t *s;
  char id[OWNER_MAX + 1];     /* the owner id (config.store_owner): its lock's name */
  char owner[OWNER_MAX + 24]; /* what its rows say: "ID#NONCE", this life's */
  double lease_s;
  int all; /* APEX_STORE_F_DURABLE_ALL */
  /* the owner lock (SQLite): PATH.owners/OWNER.lock, flocked */
  char *lock_dir, *lock_path;
  int lock_fd;
  /* ids */
  pthread_mutex_t id_mu;
  uint64_t id_next, id_end;
  uint64_t id_block; /* the size of the next block (next_id) */
  /* the keeper */
  pthread_t keeper;
  int keeper_started;
  pthread_mutex_t kmu;
  pthread_cond_t kcv;
  int kstop;
  /* apex_manager_serve's state (worker.c), or NULL */
  struct apex__serve *srv;
};

static int must_wait(uint32_t flags) {
  return !(flags & (APEX_ACTION_F_IDEMPOTENT | APEX_ACTION_F_RESUMABLE));
}

static apex__dtask_t *dtask_of(apex_task_t *t) { return t->opts ? t->opts->durable : NULL; }

/* ------------------------------------------------------------ owner lock */

static int owner_ok(const char *o) {
  size_t n = strlen(o);
  if (n == 0 || n > OWNER_MAX) return 0;
  for (const char *p = o; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '.' || *p == '_' || *p == ':' || *p == '-'))
      return 0;
  return strcmp(o, ".") != 0 && strcmp(o, "..") != 0;
}

/* Takes this manager's owner lock. Returns: APEX_OK; APEX_E_STORE with why. */
static int owner_lock(apex__durable_t *d, const char *db, char *why, size_t n) {
  size_t len = strlen(db);
  d->lock_dir = malloc(len + 8);
  d->lock_path = malloc(len + 8 + 1 + strlen(d->id) + 6);
  if (!d->lock_dir || !d->lock_path) {
    snprintf(why, n, "out of memory");
    return APEX_E_NOMEM;
  }
  sprintf(d->lock_dir, "%s.owners", db);
  sprintf(d->lock_path, "%s/%s.lock", d->lock_dir, d->id);
  if (mkdir(d->lock_dir, 0700) != 0 && errno != EEXIST) {
    snprintf(why, n, "cannot make the owner-lock directory %s: %s", d->lock_dir, strerror(errno));
    return APEX_E_STORE;
  }
  d->lock_fd = open(d->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (d->lock_fd < 0) {
    snprintf(why, n, "cannot open the owner lock %s: %s", d->lock_path, strerror(errno));
    return APEX_E_STORE;
  }
  if (flock(d->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    close(d->lock_fd);
    d->lock_fd = -1;
    snprintf(why, n, "owner id '%s' is in use by another live manager (%s is locked%s%s)",
             d->id, d->lock_path, e == EWOULDBLOCK ? "" : ": ",
             e == EWOULDBLOCK ? "" : strerror(e));
    return APEX_E_STORE;
  }
  return APEX_OK;
}

static void owner_unlock(apex__durable_t *d) {
  if (d->lock_fd >= 0) {
    unlink(d->lock_path); /* before the unlock: no one finds a stale file */
    close(d->lock_fd);
    d->lock_fd = -1;
  }
  free(d->lock_dir);
  free(d->lock_path);
  d->lock_dir = d->lock_path = NULL;
}

/* apex__owner_dead_fn. A row's owner is "ID#NONCE": the manager of owner
 * id ID in one life (NONCE). Another life of this manager's own id is gone
 * (this manager holds the id's lock); this life is not. Another id is gone
 * when its lock can be taken (or it has none; its stale file is removed);
 * without lock files (a store that is no file) only its lease tells. */
static int owner_dead(const char *owner, void *user) {
  apex__durable_t *d = user;
  const char *hash = strchr(owner, '#');
  size_t idlen = hash ? (size_t)(hash - owner) : strlen(owner);
  if (idlen == strlen(d->id) && strncmp(owner, d->id, idlen) == 0)
    return strcmp(owner, d->owner) != 0;
  char id[OWNER_MAX + 1];
  if (!d->lock_dir || idlen == 0 || idlen > OWNER_MAX) return 0;
  memcpy(id, owner, idlen);
  id[idlen] = '\0';
  if (!owner_ok(id)) return 0;
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/%s.lock", d->lock_dir, id) >= (int)sizeof path) return 0;
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT;
  int dead = flock(fd, LOCK_EX | LOCK_NB) == 0;
  if (dead) unlink(path);
  close(fd);
  return dead;
}

/* ------------------------------------------------------------ the keeper */

static void cancel_from_store(apex__durable_t *d, uint64_t id) {
  apex_task_t *t = NULL;
  if (apex_ops_find(d->m, id, &t) != APEX_OK) return;
  apex__srec_t r;
  char reason[256] = "user";
  if (d->s->ops->get(d->s, id, &r, NULL) == APEX_OK) {
    if (r.cancel_reason) snprintf(reason, sizeof reason, "%s", r.cancel_reason);
    apex__srec_clear(&r);
  }
  (void)apex_task_cancel(t, reason);
  apex_task_release(t);
}

static void *keeper_main(void *arg) {
  apex__durable_t *d = arg;
  double renew_every = d->lease_s / 3, last_renew = apex__store_now();
  pthread_mutex_lock(&d->kmu);
  while (!d->kstop) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)KEEPER_POLL_MS * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&d->kcv, &d->kmu, &ts);
    if (d->kstop) break;
    pthread_mutex_unlock(&d->kmu);
    double now = apex__store_now();
    apex_error_t *err = NULL;
    if (now - last_renew >= renew_every) {
      if (d->s->ops->renew(d->s, d->owner, now + d->lease_s, &err) != APEX_OK) {
        apex__log(&d->m->log, APEX_LOG_ERROR, "store: cannot renew the leases of owner %s: %s",
                  d->owner, apex_error_message(err));
        apex_error_unref(err);
        err = NULL;
      } else {
        last_renew = now;
      }
    }
    uint64_t *ids = NULL;
    size_t n = 0;
    if (d->s->ops->cancel_requests(d->s, d->owner, &ids, &n, &err) == APEX_OK) {
      for (size_t i = 0; i < n; i++) cancel_from_store(d, ids[i]);
      free(ids);
    } else {
      apex_error_unref(err);
    }
    pthread_mutex_lock(&d->kmu);
  }
  pthread_mutex_unlock(&d->kmu);
  return NULL;
}

/* ------------------------------------------------------------ open, close */

int apex__durable_open(apex_manager_t *m) {
  const apex_manager_config_t *c = &m->cfg;
  char why[512] = "";
  int rc = APEX_OK;
  if (!(c->store_lease_s >= 0 && c->store_lease_s <= 86400 * 365)) {
    apex__log(&m->log, APEX_LOG_ERROR,
              "apex_manager_new: config.store_lease_s %g: want seconds in [0, 1 year]",
              c->store_lease_s);
    return APEX_E_INVALID;
  }
  if (c->store_flags & ~APEX_STORE_F_DURABLE_ALL) {
    apex__log(&m->log, APEX_LOG_ERROR, "apex_manager_new: config.store_flags 0x%x: unknown bits",
              c->store_flags);
    return APEX_E_INVALID;
  }
  if (c->store_owner && !owner_ok(c->store_owner)) {
    apex__log(&m->log, APEX_LOG_ERROR,
              "apex_manager_new: config.store_owner: want 1 to %d bytes of [A-Za-z0-9._:-]",
              OWNER_MAX);
    return APEX_E_INVALID;
  }
  apex__durable_t *d = calloc(1, sizeof *d);
  if (!d) return APEX_E_NOMEM;
  d->m = m;
  d->lock_fd = -1;
  d->lease_s = c->store_lease_s > 0 ? c->store_lease_s : APEX_STORE_LEASE_S;
  d->all = (c->store_flags & APEX_STORE_F_DURABLE_ALL) != 0;
  pthread_mutex_init(&d->id_mu, NULL);
  pthread_mutex_init(&d->kmu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&d->kcv, &ca);
  pthread_condattr_destroy(&ca);
  uint64_t rnd[2] = {0, 0};
  if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
    rnd[0] = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)d;
    rnd[1] = rnd[0] * 0x9e3779b97f4a7c15ull;
  }
  if (c->store_owner)
    snprintf(d->id, sizeof d->id, "%s", c->store_owner);
  else
    snprintf(d->id, sizeof d->id, "pid%d-%016llx", (int)getpid(), (unsigned long long)rnd[0]);
  /* This life's rows: a restart under the same id tells its own old rows
   * (another nonce) from the ones it holds now. */
  snprintf(d->owner, sizeof d->owner, "%s#%016llx", d->id, (unsigned long long)rnd[1]);
  apex_error_t *err = NULL;
  rc = apex__store_open(c->store, &d->s, &err);
  if (rc != APEX_OK) snprintf(why, sizeof why, "%s", apex_error_message(err));
  apex_error_unref(err);
  const char *db = rc == APEX_OK ? apex__store_sqlite_path(d->s) : NULL;
  if (rc == APEX_OK && db) rc = owner_lock(d, db, why, sizeof why);
  if (rc == APEX_OK) {
    m->dur = d; /* before the keeper reads it through m */
    if (pthread_create(&d->keeper, NULL, keeper_main, d) != 0) {
      snprintf(why, sizeof why, "cannot start the store's keeper thread: %s", strerror(errno));
      rc = APEX_E_IO;
      m->dur = NULL;
    } else {
      d->keeper_started = 1;
    }
  }
  if (rc != APEX_OK) {
    apex__log(&m->log, APEX_LOG_ERROR, "apex_manager_new: config.store '%s': %s", c->store, why);
    owner_unlock(d);
    if (d->s) d->s->ops->close(d->s);
    pthread_mutex_destroy(&d->id_mu);
    pthread_mutex_destroy(&d->kmu);
    pthread_cond_destroy(&d->kcv);
    free(d);
    return rc;
  }
  return APEX_OK;
}

void apex__durable_close(apex_manager_t *m) {
  apex__durable_t *d = m->dur;
  if (!d) return;
  apex__serve_free(m);
  if (d->keeper_started) {
    pthread_mutex_lock(&d->kmu);
    d->kstop = 1;
    pthread_cond_signal(&d->kcv);
    pthread_mutex_unlock(&d->kmu);
    pthread_join(d->keeper, NULL);
  }
  apex_error_t *err = NULL;
  if (d->s->ops->sync(d->s, &err) != APEX_OK)
    apex__log(&m->log, APEX_LOG_ERROR, "store: a queued write failed: %s",
              apex_error_message(err));
  apex_error_unref(err);
  d->s->ops->close(d->s);
  owner_unlock(d);
  pthread_mutex_destroy(&d->id_mu);
  pthread_mutex_destroy(&d->kmu);
  pthread_cond_destroy(&d->kcv);
  m->dur = NULL;
  free(d);
}

/* ------------------------------------------------------------ submit */

/* A recovery in progress on this thread (apex_manager_recover): the row
 * the submit it makes re-creates. */
static _Thread_local const apex__srec_t *tl_recovering;
/* The row being re-created was claimed for this manager (claim_next or a
 * rescue's claim: worker.c): its attempt is recorded already. */
static _Thread_local int tl_claimed;
/* apex_manager_enqueue on this thread: the row is written unheld and the
 * submit stops there (its id goes here). */
static _Thread_local int tl_enqueue;
static _Thread_local uint64_t tl_enqueued_id;

int apex__durable_wanted(apex_manager_t *m, const apex_submit_opts_t *o, int child) {
  if (!m->dur || child) return 0;
  if (tl_recovering) return 1;
  return m->dur->all || (o && (o->durable || o->idempotency_key));
}

static uint64_t next_id(apex__durable_t *d, apex_error_t **err) {
  pthread_mutex_lock(&d->id_mu);
  if (d->id_next == d->id_end) {
    uint64_t first = 0, n = d->id_block ? d->id_block : 1;
    if (d->s->ops->alloc_ids(d->s, n, &first, err) != APEX_OK) {
      pthread_mutex_unlock(&d->id_mu);
      return 0;
    }
    d->id_next = first;
    d->id_end = first + n;
    d->id_block = n < ID_BLOCK ? n * 2 : ID_BLOCK;
  }
  uint64_t id = d->id_next++;
  pthread_mutex_unlock(&d->id_mu);
  return id;
}

/* The submit options a recovery needs, as JSON text (NULL: none). */
static char *opts_json(const apex_submit_opts_t *o, int *bad) {
  if (!o) return NULL;
  json_t *j = json_object();
  if (!j) {
    *bad = 1;
    return NULL;
  }
  if (o->retry) {
    const apex_retry_policy_t *p = o->retry;
    json_t *r = json_pack("{s:i, s:f, s:f, s:f, s:f}", "max_attempts", (json_int_t)p->max_attempts,
                          "initial_interval_s", p->initial_interval_s, "backoff_coefficient",
                          p->backoff_coefficient, "max_interval_s", p->max_interval_s, "jitter",
                          p->jitter);
    json_t *nr = json_array();
    for (size_t i = 0; r && nr && i < p->n_non_retryable; i++)
      json_array_append_new(nr, json_integer(p->non_retryable[i]));
    if (r && nr) json_object_set_new(r, "non_retryable", nr);
    else json_decref(nr);
    if (r) json_object_set_new(j, "retry", r);
  }
  if (o->priority) json_object_set_new(j, "priority", json_integer(o->priority));
  if (o->concurrency_key)
    json_object_set_new(j, "concurrency_key", json_string(o->concurrency_key));
  if (o->fairness_key) json_object_set_new(j, "fairness_key", json_string(o->fairness_key));
  if (o->schedule_to_start_s != 0)
    json_object_set_new(j, "schedule_to_start_s", json_real(o->schedule_to_start_s));
  if (o->start_to_close_s != 0)
    json_object_set_new(j, "start_to_close_s", json_real(o->start_to_close_s));
  if (o->heartbeat_timeout_s != 0)
    json_object_set_new(j, "heartbeat_timeout_s", json_real(o->heartbeat_timeout_s));
  char *text = json_object_size(j) ? json_dumps(j, JSON_COMPACT) : NULL;
  if (json_object_size(j) && !text) *bad = 1;
  json_decref(j);
  return text;
}

/* The wall-clock time a monotonic instant stands for. */
static double wall_of(uint64_t mono_ns) {
  uint64_t now = apex__now_ns();
  double w = apex__store_now();
  return mono_ns >= now ? w + (double)(mono_ns - now) / 1e9 : w - (double)(now - mono_ns) / 1e9;
}

/* The status code named name (apex_status_name), or APEX_E_EXECUTION. */
static int code_named(const char *name) {
  for (int c = -1; name && c >= -99; c--)
    if (strcmp(apex_status_name(c), name) == 0) return c;
  return APEX_E_EXECUTION;
}

/* A handle on ended row r of t's plugin and action (apex__task_new_ended). */
static apex_task_t *ended_handle(apex_manager_t *m, apex_task_t *t, const apex__srec_t *r) {
  json_t *res = NULL;
  apex_error_t *e = NULL;
  if (r->state == APEX_TASK_SUCCEEDED) {
    res = r->result ? json_loads(r->result, JSON_DECODE_ANY, NULL) : NULL;
  } else {
    json_t *ej = r->error ? json_loads(r->error, 0, NULL) : NULL;
    const char *msg = json_string_value(json_object_get(ej, "message"));
    apex__where_t w = {t->plugin->desc.name, t->action->name, r->id, r->attempts};
    e = apex__error_new(code_named(json_string_value(json_object_get(ej, "code"))), &w, NULL,
                        "%s", msg ? msg : "ended before this process (no message stored)");
    json_decref(ej);
  }
  return apex__task_new_ended(m, t->plugin, t->action, r->id, r->state, r->attempts, res, e);
}

static int key_ok(const char *k) {
  size_t n = strnlen(k, 256);
  return n >= 1 && n <= 255;
}

/* m->next_id stays past every id m gave (apex_ops_find refuses ids
 * beyond it as never given), whichever way the id came. */
static void saw_id(apex_manager_t *m, uint64_t id) {
  uint64_t cur = atomic_load(&m->next_id);
  while (cur <= id && !atomic_compare_exchange_weak(&m->next_id, &cur, id + 1)) {
  }
}

int apex__durable_submit(apex_manager_t *m, apex_task_t *t, const apex_submit_opts_t *o,
                         json_t *vp, int child, apex_task_t **dup, apex_error_t **err) {
  apex__durable_t *d = m->dur;
  *dup = NULL;
  const apex__srec_t *rec = tl_recovering;
  /* resolve_opts made a private opts block for a durable submit */
  int durable = apex__durable_wanted(m, o, child) && t->opts && !t->opts->shared;
  if (durable) {
    apex__dtask_t *dt = calloc(1, sizeof *dt);
    if (!dt) return apex__fail(err, APEX_E_NOMEM, "out of memory");
    dt->action_flags = t->action->flags;
    ((apex__task_opts_t *)t->opts)->durable = dt;
  }
  if (rec) { /* a recovered task keeps its id and row */
    t->id = rec->id;
    saw_id(m, t->id);
    if (durable) t->opts->durable->attempt_base = rec->attempts;
    if (durable && tl_claimed) {
      /* claim_next (or a rescue's claim) counted this attempt already */
      apex__dtask_t *dt = t->opts->durable;
      dt->attempt_base = rec->attempts ? rec->attempts - 1 : 0;
      dt->claimed = 1;
      dt->served = 1;
    }
    if (durable && rec->checkpoint && (t->action->flags & APEX_ACTION_F_RESUMABLE))
      t->opts->durable->cp_recovered = json_loads(rec->checkpoint, JSON_DECODE_ANY, NULL);
    return APEX_OK;
  }
  if (!(t->id = next_id(d, err))) return APEX_E_STORE;
  saw_id(m, t->id);
  if (!durable) return APEX_OK;
  if (o && o->idempotency_key && !key_ok(o->idempotency_key))
    return apex__fail(err, APEX_E_INVALID, "idempotency_key: want 1 to 255 bytes");
  int bad = 0;
  apex__srec_t r = {0};
  r.id = t->id;
  r.plugin = (char *)t->plugin->desc.name;
  r.action = (char *)t->action->name;
  r.plugin_version = (char *)(t->plugin->desc.version ? t->plugin->desc.version : "");
  char *params = vp ? json_dumps(vp, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
  if (vp && !params)
    return apex__fail(err, APEX_E_INVALID_PARAMS,
                      "%s.%s: params cannot be stored (not serializable as JSON)",
                      t->plugin->desc.name, t->action->name);
  r.params = params ? params : (char *)"{}";
  r.opts = opts_json(o, &bad);
  r.idem_key = o ? (char *)o->idempotency_key : NULL;
  int scheduled = atomic_load(&t->state) == APEX_TASK_SCHEDULED;
  r.state = scheduled ? APEX_TASK_SCHEDULED : APEX_TASK_QUEUED;
  r.action_flags = t->opts->durable->action_flags;
  r.created_at = r.updated_at = apex__store_now();
  if (scheduled && t->opts->start_ns) r.run_at = wall_of(t->opts->start_ns);
  if (t->deadline_ns) r.deadline = wall_of(t->deadline_ns);
  /* Enqueued for the workers serving the store: held by none, so the
   * first claim_next takes it. */
  r.owner = tl_enqueue ? NULL : d->owner;
  r.lease_until = tl_enqueue ? 0 : r.created_at + d->lease_s;
  int rc;
  if (bad) {
    rc = apex__fail(err, APEX_E_NOMEM, "out of memory");
  } else {
    uint64_t existing = 0;
    apex_error_t *e = NULL;
    rc = d->s->ops->enqueue(d->s, &r, &existing, &e);
    if (rc == APEX_OK && tl_enqueue) {
      /* Not run here: the submit stops (apex_manager_enqueue reads the id). */
      tl_enqueued_id = existing ? existing : t->id;
      rc = APEX__ENQUEUED;
    } else if (rc == APEX_OK && existing) {
      /* The key's task: this manager's live one, or say where it is. */
      apex_task_t *h = NULL;
      apex__srec_t x;
      int got = 0;
      if (apex_ops_find(m, existing, &h) == APEX_OK) {
        *dup = h;
        rc = 1;
      } else if ((got = d->s->ops->get(d->s, existing, &x, NULL) == APEX_OK) &&
                 apex_task_state_is_terminal((apex_task_state_t)x.state)) {
        /* Ended (here or in an earlier life): a handle on its outcome. */
        *dup = ended_handle(m, t, &x);
        rc = *dup ? 1 : apex__fail(err, APEX_E_NOMEM, "out of memory");
      } else {
        rc = apex__fail(err, APEX_E_ALREADY,
                        "idempotency key '%s': task %llu was submitted under it already (now %s, "
                        "held by another manager or not yet recovered): read it with "
                        "apex_manager_task_info",
                        o->idempotency_key, (unsigned long long)existing,
                        got ? apex_task_state_name((apex_task_state_t)x.state) : "unknown");
      }
      if (got) apex__srec_clear(&x);
    } else if (rc != APEX_OK) {
      apex__error_put(err, e);
      e = NULL;
    }
    apex_error_unref(e);
  }
  free(params);
  free(r.opts);
  return rc;
}

void apex__durable_unsubmit(apex_manager_t *m, apex_task_t *t) {
  apex__durable_t *d = m->dur;
  if (tl_recovering) return; /* the row stays for the next recovery */
  apex_error_t *err = NULL;
  if (d->s->ops->discard(d->s, t->id, &err) != APEX_OK && err)
    apex__log(&m->log, APEX_LOG_ERROR, "store: task %llu: cannot take its row back: %s",
              (unsigned long long)t->id, apex_error_message(err));
  apex_error_unref(err);
}

/* ------------------------------------------------------------ attempts */

int apex__durable_attempt_start(apex_task_t *t, apex__run_t *r) {
  apex_manager_t *m = apex__task_m(t);
  apex__durable_t *d = m->dur;
  apex__dtask_t *dt = dtask_of(t);
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  uint32_t attempt = dt->attempt_base + t->attempt;
  int recorded = dt->claimed;
  dt->claimed = 0;
  if (dt->cp_recovered) { /* the first attempt of a recovered task resumes */
    apex__progress_slot_t *s = r->prog;
    if (!s) s = r->prog = calloc(1, sizeof *s);
    if (s) {
      json_decref(s->cp_last);
      json_decref(s->cp_prev);
      s->cp_last = dt->cp_recovered;
      s->cp_prev = json_incref(dt->cp_recovered);
      dt->cp_recovered = NULL;
    }
  }
  pthread_mutex_unlock(mu);
  if (!d) return APEX_OK; /* the store is gone: teardown */
  /* A served row's first attempt: claim_next wrote its start, durably. */
  if (recorded) return APEX_OK;
  double now = apex__store_now();
  /* An idempotent or resumable action may run again after a crash, so
   * its claim need not be durable before it runs: queued, not waited for
   * (a cancel request then reaches it through the keeper). */
  int wait = must_wait(dt->action_flags);
  apex_error_t *err = NULL;
  int rc = d->s->ops->claim(d->s, t->id, d->owner, attempt, now, now + d->lease_s, wait, &err);
  if (rc == APEX_OK) return APEX_OK;
  apex__where_t w = {t->plugin->desc.name, t->action->name, t->id, attempt};
  apex_error_t *e;
  if (rc == APEX_E_CANCELLED) {
    cancel_from_store(d, t->id);
    apex_error_unref(err);
    return APEX_E_CANCELLED;
  }
  if (rc == APEX_E_ALREADY)
    e = apex__error_new(APEX_E_STORE, &w, NULL,
                        "task %llu: its row in the store has ended or is held by another owner; "
                        "not run here",
                        (unsigned long long)t->id);
  else
    e = apex__error_new(APEX_E_STORE, &w, err ? apex_error_ref(err) : NULL,
                        "task %llu: the store could not record the attempt's start, so it was "
                        "not run: %s",
                        (unsigned long long)t->id, err ? apex_error_message(err) : "");
  apex_error_unref(err);
  pthread_mutex_lock(mu);
  apex_error_unref(r->attempt_error);
  r->attempt_error = e;
  pthread_mutex_unlock(mu);
  return APEX_E_STORE;
}

/* JSON text of a value (NULL for NULL). */
static char *dump(const json_t *v) {
  return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
}

void apex__durable_ended(apex_task_t *t) {
  apex_manager_t *m = apex__task_m(t);
  apex__durable_t *d = m->dur;
  apex__dtask_t *dt = dtask_of(t);
  if (!d || !dt) return;
  int st = atomic_load(&t->state);
  if (dt->served && atomic_load(&dt->released)) {
    /* Its row goes back to the queue instead (a draining worker released
     * it): nothing to record. */
    apex__serve_ended(m, t->id);
    return;
  }
  /* Cancelled by a shutdown: the row stays as it was (queued, running),
   * for the next manager to recover; the process is going, not the task. */
  /* (By its reason: a task cancelled before the shutdown, whose handler
   * returns during it, ended for good and is recorded.) */
  if (st == APEX_TASK_CANCELLED && atomic_load(&m->shutting_down)) {
    apex_token_t *tok = apex__task_token_peek(t);
    const char *why = tok ? apex_token_reason(tok) : NULL;
    if (!why || strcmp(why, "shutdown") == 0) {
      if (dt->served) apex__serve_ended(m, t->id);
      return;
    }
  }
  json_t *res = st == APEX_TASK_SUCCEEDED ? apex_task_result(t) : NULL;
  apex_error_t *e = st == APEX_TASK_SUCCEEDED ? NULL : apex_task_error(t);
  json_t *ej = e ? apex_error_to_json(e) : NULL;
  json_t *part = apex_task_partial_result(t);
  char *rt = dump(res), *et = dump(ej), *pt = dump(part);
  json_decref(res);
  json_decref(ej);
  json_decref(part);
  apex_error_unref(e);
  /* A served task waits for its outcome's write too (off the runtime
   * thread): the serve loop must learn of a refusal (the lease was lost)
   * and of a store error (it retries the write). */
  int wait = (must_wait(dt->action_flags) || dt->served) && !apex__on_runtime_thread(m);
  apex_error_t *err = NULL;
  int rc = d->s->ops->finish(d->s, t->id, d->owner, st, apex__store_now(), 0,
                             rt ? rt : (st == APEX_TASK_SUCCEEDED ? "null" : NULL), et, pt, wait,
                             &err);
  if (dt->served && rc == APEX_E_ALREADY) {
    apex__serve_discarded(m, t->id, apex_task_state_name((apex_task_state_t)st));
    apex__serve_ended(m, t->id);
  } else if (dt->served && rc != APEX_OK && wait) {
    /* The store is away: the serve loop writes it once it answers (the
     * row stays held meanwhile, so no one else runs the task). */
    apex__log(&m->log, APEX_LOG_WARN,
              "store: task %llu: its outcome (%s) is not recorded yet (%s); retrying",
              (unsigned long long)t->id, apex_task_state_name((apex_task_state_t)st),
              apex_error_message(err));
    apex__serve_pending(m, t->id, st, rt ? rt : (st == APEX_TASK_SUCCEEDED ? "null" : NULL), et,
                        pt);
  } else if (dt->served) {
    apex__serve_ended(m, t->id);
  }
  if (rc != APEX_OK && rc != APEX_E_ALREADY && !(dt->served && wait))
    apex__log(&m->log, APEX_LOG_ERROR, "store: task %llu: its outcome (%s) was not recorded: %s",
              (unsigned long long)t->id, apex_task_state_name((apex_task_state_t)st),
              apex_error_message(err));
  apex_error_unref(err);
  free(rt);
  free(et);
  free(pt);
}

void apex__durable_retry(apex_task_t *t, double delay_s, const apex_error_t *e) {
  apex_manager_t *m = apex__task_m(t);
  apex__durable_t *d = m->dur;
  apex__dtask_t *dt = dtask_of(t);
  if (!d || !dt) return;
  json_t *ej = e ? apex_error_to_json(e) : NULL;
  char *et = dump(ej);
  json_decref(ej);
  double now = apex__store_now();
  apex_error_t *err = NULL;
  int rc = d->s->ops->finish(d->s, t->id, d->owner, APEX_TASK_RETRY_WAIT, now, now + delay_s, NULL,
                             et, NULL, 0, &err);
  if (rc != APEX_OK && rc != APEX_E_ALREADY)
    apex__log(&m->log, APEX_LOG_ERROR, "store: task %llu: its retry was not recorded: %s",
              (unsigned long long)t->id, apex_error_message(err));
  apex_error_unref(err);
  free(et);
}

void apex__durable_task_free(apex__dtask_t *d) {
  if (!d) return;
  json_decref(d->cp_recovered);
  free(d);
}

/* ------------------------------------------------------------ checkpoints */

void apex__checkpoint_rotate_locked(apex__progress_slot_t *s) {
  if (!s || !s->cp_last || s->cp_prev == s->cp_last) return;
  json_decref(s->cp_prev);
  s->cp_prev = json_incref(s->cp_last);
}

int apex__run_checkpoint(apex__run_t *r, const json_t *v) {
  apex_manager_t *m = apex__run_m(r);
  char *text = dump(v);
  if (!text) return APEX_E_NOMEM;
  size_t len = strlen(text);
  json_t *copy = len <= APEX_CHECKPOINT_MAX_BYTES ? json_deep_copy(v) : NULL;
  apex_task_t *t = apex__run_lock_live(r);
  if (!t) {
    apex__ctx_misuse(m, atomic_load_explicit(&r->id, memory_order_relaxed), "apex_ctx_checkpoint");
    free(text);
    json_decref(copy);
    return APEX_E_INVALID;
  }
  pthread_mutex_t *mu = apex__task_mu(t);
  if (len > APEX_CHECKPOINT_MAX_BYTES) {
    const char *pn = t->plugin->desc.name, *an = t->action->name;
    uint64_t id = t->id;
    pthread_mutex_unlock(mu);
    apex__log(&m->log, APEX_LOG_WARN,
              "%s.%s task %llu: checkpoint refused: %zu bytes, over APEX_CHECKPOINT_MAX_BYTES "
              "(%u)",
              pn, an, (unsigned long long)id, len, (unsigned)APEX_CHECKPOINT_MAX_BYTES);
    free(text);
    return APEX_E_INVALID;
  }
  if (!copy) {
    pthread_mutex_unlock(mu);
    free(text);
    return APEX_E_NOMEM;
  }
  if (apex_task_state_is_terminal((apex_task_state_t)atomic_load(&t->state))) {
    pthread_mutex_unlock(mu); /* after a timeout or cancel: ignored */
    atomic_fetch_add_explicit(&m->st_late, 1, memory_order_relaxed);
    free(text);
    json_decref(copy);
    return APEX_OK;
  }
  apex__progress_slot_t *s = r->prog;
  if (!s && !(s = r->prog = calloc(1, sizeof *s))) {
    pthread_mutex_unlock(mu);
    free(text);
    json_decref(copy);
    return APEX_E_NOMEM;
  }
  json_decref(s->cp_last);
  s->cp_last = copy;
  apex__dtask_t *dt = dtask_of(t);
  char prog[APEX_PROGRESS_MESSAGE_MAX * 2 + 64];
  prog[0] = '\0';
  if (dt) {
    json_t *p = json_pack("{s:f, s:s}", "percentage", s->pct, "message", s->msg);
    char *pt = p ? json_dumps(p, JSON_COMPACT) : NULL;
    if (pt && strlen(pt) < sizeof prog) memcpy(prog, pt, strlen(pt) + 1);
    free(pt);
    json_decref(p);
  }
  uint64_t id = t->id;
  apex__task_ref(t);
  pthread_mutex_unlock(mu);
  int rc = apex__run_heartbeat(r, NULL); /* it counts as one */
  apex__durable_t *d = m->dur;
  if (dt && d) {
    double now = apex__store_now();
    apex_error_t *err = NULL;
    int src = d->s->ops->heartbeat(d->s, id, d->owner, now, now + d->lease_s, text,
                                   prog[0] ? prog : NULL, 1, &err);
    /* The store away (a lost connection, a server restart: the backend
     * reconnects by itself): the checkpoint waits for it, up to half the
     * lease (past that another owner may take the task over), rather than
     * failing an attempt that a restart of a second would otherwise end. */
    double give_up = now + d->lease_s / 2, pause = 0.05;
    while (src == APEX_E_STORE && apex__store_now() + pause < give_up &&
           !apex_task_state_is_terminal((apex_task_state_t)atomic_load(&t->state))) {
      if (pause == 0.05)
        apex__log(&m->log, APEX_LOG_WARN,
                  "store: task %llu: its checkpoint waits for the store (%s)",
                  (unsigned long long)id, apex_error_message(err));
      struct timespec ts = {0, (long)(pause * 1e9)};
      nanosleep(&ts, NULL);
      pause = pause * 2 < 1.0 ? pause * 2 : 1.0;
      apex_error_unref(err);
      err = NULL;
      now = apex__store_now();
      src = d->s->ops->heartbeat(d->s, id, d->owner, now, now + d->lease_s, text,
                                 prog[0] ? prog : NULL, 1, &err);
    }
    if (src == APEX_E_CANCELLED) {
      cancel_from_store(d, id);
    } else if (src == APEX_E_ALREADY) {
      apex__log(&m->log, APEX_LOG_ERROR,
                "store: task %llu: checkpoint not saved: its row has ended or another owner "
                "holds it",
                (unsigned long long)id);
      rc = APEX_E_STORE;
    } else if (src != APEX_OK) {
      apex__log(&m->log, APEX_LOG_ERROR, "store: task %llu: checkpoint not saved: %s",
                (unsigned long long)id, apex_error_message(err));
      rc = APEX_E_STORE;
    }
    apex_error_unref(err);
  }
  apex__task_unref(t);
  free(text);
  return rc;
}

json_t *apex__run_checkpoint_get(apex__run_t *r) {
  apex_task_t *t = apex__run_lock_live(r);
  if (!t) {
    apex__ctx_misuse(apex__run_m(r), atomic_load_explicit(&r->id, memory_order_relaxed),
                     "apex_ctx_checkpoint_get");
    return NULL;
  }
  json_t *v = r->prog ? r->prog->cp_prev : NULL;
  pthread_mutex_unlock(apex__task_mu(t));
  return v;
}

/* ------------------------------------------------------------ recovery */

/* The major version: the number before the first '.', or -1. */
static long major_of(const char *v) {
  if (!v) return -1;
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (end == v || errno) return -1;
  return n;
}

/* Ends row r in the store with state and an error (code, message). */
static void end_row(apex__durable_t *d, const apex__srec_t *r, int state, int code,
                    const char *msg) {
  json_t *e = json_pack("{s:s, s:s, s:s, s:s, s:I, s:i}", "code", apex_status_name(code),
                        "message", msg, "plugin", r->plugin, "action", r->action, "task",
                        (json_int_t)r->id, "attempt", (int)r->attempts);
  char *et = dump(e);
  json_decref(e);
  apex_error_t *err = NULL;
  if (d->s->ops->finish(d->s, r->id, d->owner, state, apex__store_now(), 0, NULL, et, NULL, 1,
                        &err) != APEX_OK &&
      err)
    apex__log(&d->m->log, APEX_LOG_ERROR, "store: task %llu: cannot record its end: %s",
              (unsigned long long)r->id, apex_error_message(err));
  apex_error_unref(err);
  free(et);
}

/* Submit options from a row's opts text; *policy and *nr hold the retry
 * policy the options point at. */
static void opts_from(const apex__srec_t *r, apex_submit_opts_t *o, apex_retry_policy_t *policy,
                      apex_status_t *nr, size_t nr_cap, json_t **keep) {
  apex_submit_opts_init(o);
  o->durable = 1;
  json_t *j = r->opts ? json_loads(r->opts, 0, NULL) : NULL;
  *keep = j;
  if (!json_is_object(j)) return;
  json_t *rp = json_object_get(j, "retry");
  if (json_is_object(rp)) {
    memset(policy, 0, sizeof *policy);
    policy->max_attempts = (uint32_t)json_integer_value(json_object_get(rp, "max_attempts"));
    policy->initial_interval_s = json_number_value(json_object_get(rp, "initial_interval_s"));
    policy->backoff_coefficient = json_number_value(json_object_get(rp, "backoff_coefficient"));
    policy->max_interval_s = json_number_value(json_object_get(rp, "max_interval_s"));
    policy->jitter = json_number_value(json_object_get(rp, "jitter"));
    json_t *a = json_object_get(rp, "non_retryable");
    size_t n = 0;
    for (size_t i = 0; i < json_array_size(a) && n < nr_cap; i++)
      nr[n++] = (apex_status_t)json_integer_value(json_array_get(a, i));
    policy->non_retryable = n ? nr : NULL;
    policy->n_non_retryable = n;
    o->retry = policy;
  }
  o->priority = (int32_t)json_integer_value(json_object_get(j, "priority"));
  o->concurrency_key = json_string_value(json_object_get(j, "concurrency_key"));
  o->fairness_key = json_string_value(json_object_get(j, "fairness_key"));
  o->schedule_to_start_s = json_number_value(json_object_get(j, "schedule_to_start_s"));
  o->start_to_close_s = json_number_value(json_object_get(j, "start_to_close_s"));
  o->heartbeat_timeout_s = json_number_value(json_object_get(j, "heartbeat_timeout_s"));
}

/* Re-creates row r as a task of m. cut_off: r was running when its owner
 * went (the rules for an action neither resumable nor idempotent apply);
 * claimed: this manager claimed r's attempt already (worker.c). Returns 1
 * if it was taken over (queued again, *out (may be NULL) a handle on the
 * task, or ended in the store as the rules say, *out NULL), 0 if left. */
static int adopt_row(apex__durable_t *d, const apex__srec_t *r, int cut_off, int claimed,
                     apex_task_t **out) {
  if (out) *out = NULL;
  apex_manager_t *m = d->m;
  char msg[512];
  if (r->cancel_requested) {
    snprintf(msg, sizeof msg, "cancelled (%s)", r->cancel_reason ? r->cancel_reason : "user");
    end_row(d, r, APEX_TASK_CANCELLED, APEX_E_CANCELLED, msg);
    return 1;
  }
  const apex_plugin_desc_t *p = apex_manager_plugin_v2(m, r->plugin);
  if (!p) {
    snprintf(msg, sizeof msg,
             "task %llu: plugin '%s' (version %s when submitted) is not loaded; not run",
             (unsigned long long)r->id, r->plugin, r->plugin_version ? r->plugin_version : "?");
    end_row(d, r, APEX_TASK_FAILED, APEX_E_PLUGIN_NOT_FOUND, msg);
    return 1;
  }
  const apex_action_desc_t *a = NULL;
  for (size_t i = 0; i < p->n_actions && !a; i++) {
    const apex_action_desc_t *x = apex_plugin_desc_action(p, i);
    if (x && strcmp(x->name, r->action) == 0) a = x;
  }
  if (!a) {
    snprintf(msg, sizeof msg, "task %llu: plugin '%s' %s has no action '%s' any more; not run",
             (unsigned long long)r->id, r->plugin, p->version ? p->version : "", r->action);
    end_row(d, r, APEX_TASK_FAILED, APEX_E_ACTION_NOT_FOUND, msg);
    return 1;
  }
  if (major_of(r->plugin_version) != major_of(p->version)) {
    snprintf(msg, sizeof msg,
             "task %llu: plugin '%s' was version %s when the task was submitted and is %s now "
             "(another major version); not run with other code",
             (unsigned long long)r->id, r->plugin, r->plugin_version ? r->plugin_version : "?",
             p->version ? p->version : "?");
    end_row(d, r, APEX_TASK_FAILED, APEX_E_PLUGIN, msg);
    return 1;
  }
  double now = apex__store_now();
  if (r->deadline != 0 && r->deadline <= now) {
    snprintf(msg, sizeof msg, "task %llu: its overall deadline passed while no process ran it",
             (unsigned long long)r->id);
    end_row(d, r, APEX_TASK_TIMED_OUT, APEX_E_TIMEOUT, msg);
    return 1;
  }
  uint32_t flags = a->flags;
  if (cut_off && !(flags & (APEX_ACTION_F_RESUMABLE | APEX_ACTION_F_IDEMPOTENT))) {
    snprintf(msg, sizeof msg,
             "task %llu: %s.%s was running (attempt %u) when its process stopped; the action is "
             "neither resumable nor idempotent, so it is not run again",
             (unsigned long long)r->id, r->plugin, r->action, r->attempts);
    end_row(d, r, APEX_TASK_FAILED, APEX_E_INTERRUPTED, msg);
    return 1;
  }
  /* Queued again, as a submit with its own id, params and options. */
  apex_submit_opts_t o;
  apex_retry_policy_t policy;
  apex_status_t nr[APEX__MAX_NON_RETRYABLE];
  json_t *keep = NULL;
  opts_from(r, &o, &policy, nr, APEX__MAX_NON_RETRYABLE, &keep);
  if (r->deadline != 0) o.timeout_s = r->deadline - now;
  else o.timeout_s = APEX_TIMEOUT_NONE;
  if (r->run_at > now) o.run_at = r->run_at;
  json_t *params = r->params ? json_loads(r->params, 0, NULL) : NULL;
  tl_recovering = r;
  tl_claimed = claimed;
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(m, r->plugin, r->action, params, &o, &t, &err);
  tl_recovering = NULL;
  tl_claimed = 0;
  json_decref(params);
  json_decref(keep);
  if (rc != APEX_OK) {
    if (rc == APEX_E_SHUTTING_DOWN || rc == APEX_E_QUEUE_FULL || rc == APEX_E_NOMEM) {
      apex_error_unref(err);
      return 0; /* left for a later recovery */
    }
    snprintf(msg, sizeof msg, "task %llu: cannot be queued again: %s", (unsigned long long)r->id,
             apex_error_message(err));
    apex_error_unref(err);
    end_row(d, r, APEX_TASK_FAILED, rc, msg);
    return 1;
  }
  if (out) *out = t;
  else apex_task_release(t);
  return 1;
}

static int recover_one(apex__durable_t *d, const apex__srec_t *r) {
  return adopt_row(d, r, r->state == APEX_TASK_RUNNING, 0, NULL);
}

/* ------------------------------------------------------------ worker.c's hooks */

apex__store_t *apex__durable_store(apex__durable_t *d) { return d->s; }
const char *apex__durable_owner(apex__durable_t *d) { return d->owner; }
double apex__durable_lease_s(apex__durable_t *d) { return d->lease_s; }
struct apex__serve **apex__durable_serve_slot(apex__durable_t *d) { return &d->srv; }

int apex__durable_adopt(apex__durable_t *d, const apex__srec_t *r, int cut_off,
                        apex_task_t **out) {
  return adopt_row(d, r, cut_off, 1, out);
}

void apex__durable_end_row(apex__durable_t *d, const apex__srec_t *r, int state, int code,
                           const char *msg) {
  end_row(d, r, state, code, msg);
}

int apex__durable_release_mark(apex_task_t *t, uint32_t *flags) {
  apex__dtask_t *dt = dtask_of(t);
  if (!dt) return -1;
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  int started = !dt->claimed;
  pthread_mutex_unlock(mu);
  atomic_store(&dt->released, 1);
  *flags = dt->action_flags;
  return started;
}

apex_status_t apex_manager_enqueue(apex_manager_t *m, const char *plugin, const char *action,
                                   const json_t *params, const apex_submit_opts_t *opts,
                                   uint64_t *id, apex_error_t **err) {
  if (id) *id = 0;
  if (!m || !id)
    return apex__fail(err, APEX_E_INVALID, "apex_manager_enqueue: NULL %s", !m ? "manager" : "id");
  if (!m->dur)
    return apex__fail(err, APEX_E_INVALID, "apex_manager_enqueue: the manager has no store");
  if (opts && opts->parent)
    return apex__fail(err, APEX_E_INVALID,
                      "apex_manager_enqueue: a child task (opts.parent) cannot be enqueued");
  apex_submit_opts_t o;
  if (opts) o = *opts;
  else apex_submit_opts_init(&o);
  o.durable = 1;
  tl_enqueue = 1;
  tl_enqueued_id = 0;
  apex_task_t *t = NULL;
  int rc = apex_manager_submit(m, plugin, action, (json_t *)params, &o, &t, err);
  tl_enqueue = 0;
  if (rc == APEX__ENQUEUED) {
    *id = tl_enqueued_id;
    apex__serve_poke(m);
    return APEX_OK;
  }
  if (rc == APEX_OK) { /* cannot happen: every durable submit stops at its row */
    apex_task_cancel(t, "user");
    apex_task_release(t);
    return apex__fail(err, APEX_E_INVALID, "apex_manager_enqueue: the task was not durable");
  }
  return rc;
}

apex_store_t *apex_manager_store(apex_manager_t *m) { return m && m->dur ? m->dur->s : NULL; }

apex_status_t apex_manager_recover(apex_manager_t *m, size_t *n_recovered, apex_error_t **err) {
  if (n_recovered) *n_recovered = 0;
  if (!m) return apex__fail(err, APEX_E_INVALID, "apex_manager_recover: NULL manager");
  apex__durable_t *d = m->dur;
  if (!d) return apex__fail(err, APEX_E_INVALID, "apex_manager_recover: the manager has no store");
  if (apex__on_runtime_thread(m))
    return apex__fail(err, APEX_E_INVALID, "apex_manager_recover: not on Apex's runtime thread");
  if (atomic_load(&m->shutting_down))
    return apex__fail(err, APEX_E_SHUTTING_DOWN, "the manager is shutting down");
  apex__srec_t *rows = NULL;
  size_t n = 0;
  double now = apex__store_now();
  int rc = d->s->ops->recover(d->s, d->owner, now, now + d->lease_s, owner_dead, d, &rows, &n,
                              err);
  if (rc != APEX_OK) return rc;
  size_t taken = 0;
  for (size_t i = 0; i < n; i++) {
    /* Rows of tasks this manager runs now (its own, live) stay as they are. */
    apex_task_t *live = NULL;
    if (apex_ops_find(m, rows[i].id, &live) == APEX_OK) {
      apex_task_release(live);
      continue;
    }
    taken += (size_t)recover_one(d, &rows[i]);
  }
  apex__srec_free_array(rows, n);
  apex__log(&m->log, APEX_LOG_INFO, "store: recovered %zu task(s) as owner %s", taken, d->owner);
  if (n_recovered) *n_recovered = taken;
  return APEX_OK;
}

/* ------------------------------------------------------------ lookup */

static json_t *live_json(apex_task_t *t) {
  json_t *o = json_object();
  if (!o) return NULL;
  apex_task_state_t st = apex_task_state(t);
  json_object_set_new(o, "id", json_integer((json_int_t)apex_task_id(t)));
  json_object_set_new(o, "plugin", json_string(t->plugin->desc.name));
  json_object_set_new(o, "action", json_string(t->action->name));
  json_object_set_new(o, "state", json_string(apex_task_state_name(st)));
  json_object_set_new(o, "attempts", json_integer(apex_task_attempts(t)));
  return o;
}

/* Overlays what m knows now of live task t on o. */
static void overlay_live(json_t *o, apex_task_t *t) {
  apex_task_state_t st = apex_task_state(t);
  apex__dtask_t *dt = dtask_of(t);
  json_object_set_new(o, "state", json_string(apex_task_state_name(st)));
  json_object_set_new(o, "attempts",
                      json_integer(apex_task_attempts(t) + (dt ? dt->attempt_base : 0)));
  apex_progress_t *p = apex_task_progress(t);
  if (p) {
    json_object_set_new(o, "progress",
                        json_pack("{s:f, s:s}", "percentage", apex_progress_percentage(p),
                                  "message", apex_progress_message(p)));
    apex_progress_unref(p);
  }
  json_t *part = apex_task_partial_result(t);
  if (part) json_object_set_new(o, "partial_result", part);
  if (st == APEX_TASK_SUCCEEDED) {
    json_t *res = apex_task_result(t);
    json_object_set_new(o, "result", res ? res : json_null());
  } else if (apex_task_state_is_terminal(st)) {
    apex_error_t *e = apex_task_error(t);
    if (e) json_object_set_new(o, "error", apex_error_to_json(e));
    apex_error_unref(e);
  }
}

apex_status_t apex_manager_task_info(apex_manager_t *m, uint64_t id, json_t **out,
                                     apex_error_t **err) {
  if (out) *out = NULL;
  if (!m || !out || id == 0)
    return apex__fail(err, APEX_E_INVALID, "apex_manager_task_info: %s",
                      !m ? "NULL manager" : !out ? "NULL out" : "id 0");
  apex_task_t *t = NULL;
  int live = apex_ops_find(m, id, &t) == APEX_OK;
  json_t *o = NULL;
  apex__durable_t *d = m->dur;
  if (d) {
    apex__srec_t r;
    apex_error_t *e = NULL;
    int rc = d->s->ops->get(d->s, id, &r, &e);
    if (rc == APEX_OK) {
      o = apex__srec_to_json(&r, 1);
      apex__srec_clear(&r);
      apex_error_unref(e);
    } else if (!live || rc != APEX_E_INVALID) {
      if (t) apex_task_release(t);
      if (rc == APEX_E_INVALID) {
        apex_error_unref(e);
        return apex__fail(err, APEX_E_INVALID, "no task %llu in this manager or its store",
                          (unsigned long long)id);
      }
      return apex__error_put(err, e);
    } else {
      apex_error_unref(e);
    }
  }
  if (!o && live) o = live_json(t);
  if (!o && !live)
    return apex__fail(err, APEX_E_INVALID, "no live task %llu in this manager (and no store)",
                      (unsigned long long)id);
  if (o && live) overlay_live(o, t);
  if (t) apex_task_release(t);
  if (!o) return apex__fail(err, APEX_E_NOMEM, "out of memory");
  *out = o;
  return APEX_OK;
}
