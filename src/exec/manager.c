/* The manager: configuration, the plugin registry and its search path,
 * submitting tasks, shutdown, and the host-facing event and stats calls.
 *
 * The manager's memory is reference counted: the host's reference (dropped
 * by destroy, or by the last stuck handler after a destroy that timed out)
 * and one per task not yet freed, so a task handle the host still holds
 * after destroy can be queried and released safely.
 *
 * Threads: every public call here may come from any host thread. The
 * registry is guarded by reg_mu; plugin init hooks run with no lock held,
 * so a duplicate is detected after init and that copy is unloaded again.
 * Failure: every bad input returns an error naming it; a failed load leaves
 * the registry as it was. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/abi.h"
#include "core/error.h"
#include "core/policy.h"
#include "core/utf8.h"
#include "exec/internal.h"
#include "obs/clock.h"
#include "obs/metrics.h"
#include "ops/ops.h"

#define MAX_WORKERS 1024

/* The init calls write the caller's size, never the library's: a host built
 * against an older header has a smaller struct (docs/abi.md). */
apex_status_t apex_manager_config_init_v2(apex_manager_config_t *cfg, size_t size) {
  if (!cfg || size < APEX__CONFIG_V1_MIN || size > APEX__STRUCT_MAX) return APEX_E_INVALID;
  apex_manager_config_t d;
  memset(&d, 0, sizeof d);
  d.max_stuck_workers = 4;
  d.progress_rate_hz = 20;
  d.log_level = -1;
  d.shutdown_grace_ms = APEX_SHUTDOWN_GRACE_MS;
  memset(cfg, 0, size);
  memcpy(cfg, &d, size < sizeof d ? size : sizeof d);
  cfg->struct_size = (uint32_t)size;
  return APEX_OK;
}

void(apex_manager_config_init)(apex_manager_config_t *cfg) {
  apex_manager_config_init_v2(cfg, APEX__CONFIG_V1_SIZE);
}

apex_status_t apex_submit_opts_init_v2(apex_submit_opts_t *opts, size_t size) {
  if (!opts || size < APEX__SUBMIT_OPTS_V1_MIN || size > APEX__STRUCT_MAX) return APEX_E_INVALID;
  memset(opts, 0, size);
  opts->struct_size = (uint32_t)size;
  return APEX_OK;
}

void(apex_submit_opts_init)(apex_submit_opts_t *opts) {
  apex_submit_opts_init_v2(opts, APEX__SUBMIT_OPTS_V1_SIZE);
}

static void manager_free(apex_manager_t *m) {
  apex__mx_fini(m); /* before the plugins that hold the series */
  for (size_t i = 0; i < m->n_plugins; i++) apex__plugin_free(m->plugins[i]);
  free(m->plugins);
  for (int i = 0; i < APEX__LOCK_STRIPES; i++) pthread_mutex_destroy(&m->stripes[i].mu);
  pthread_mutex_destroy(&m->reg_mu);
  pthread_mutex_destroy(&m->flush_mu);
  pthread_mutex_destroy(&m->wait_mu);
  pthread_cond_destroy(&m->wait_cv);
  apex__runs_free(m); /* after the last task: none is in use */
  apex__sched_fini(m); /* after the last task: none points at a class */
  pthread_mutex_destroy(&m->runs_mu);
  free(m);
}

void apex__manager_unref(apex_manager_t *m) {
  if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) manager_free(m);
}

void apex__manager_unref_n(apex_manager_t *m, unsigned n) {
  if (atomic_fetch_sub_explicit(&m->refs, n, memory_order_acq_rel) == n) manager_free(m);
}

static int check_config(const apex_manager_config_t *in, apex_manager_config_t *out,
                        char *why, size_t n) {
  apex_manager_config_init(out);
  if (!in) return 1;
  if (!apex__struct_copy_in(out, sizeof *out, in, in->struct_size, APEX__CONFIG_V1_MIN, "config",
                            "apex_manager_config_init", why, n))
    return 0;
  out->struct_size = sizeof *out;
  if (out->workers > MAX_WORKERS) {
    snprintf(why, n, "config.workers %u: at most %d", out->workers, MAX_WORKERS);
    return 0;
  }
  if (out->max_stuck_workers > MAX_WORKERS) {
    snprintf(why, n, "config.max_stuck_workers %u: at most %d", out->max_stuck_workers,
             MAX_WORKERS);
    return 0;
  }
  if (!(out->progress_rate_hz > 0 && out->progress_rate_hz <= 1e6)) {
    snprintf(why, n, "config.progress_rate_hz %g: want a number in (0, 1e6]",
             out->progress_rate_hz);
    return 0;
  }
  if (out->delivery != APEX_DELIVER_LOOP && out->delivery != APEX_DELIVER_DISPATCH) {
    snprintf(why, n, "config.delivery %d: want APEX_DELIVER_LOOP or APEX_DELIVER_DISPATCH",
             (int)out->delivery);
    return 0;
  }
  unsigned all = APEX_EVENT_ATTEMPT | APEX_EVENT_PROGRESS | APEX_EVENT_RETRY | APEX_EVENT_DONE |
                 APEX_EVENT_HEARTBEAT | APEX_EVENT_SCHEDULED | APEX_EVENT_PARTIAL;
  all |= APEX_EVENT_GROUP; /* operation groups (ops/group.c) */
  if (out->event_mask & ~all) {
    snprintf(why, n, "config.event_mask 0x%x: unknown bits", out->event_mask);
    return 0;
  }
  if (out->log_level > APEX_LOG_DEBUG) {
    snprintf(why, n, "config.log_level %d: want -1 or APEX_LOG_ERROR..APEX_LOG_DEBUG",
             out->log_level);
    return 0;
  }
  if (out->metrics < APEX_METRICS_DEFAULT || out->metrics > APEX_METRICS_OFF) {
    snprintf(why, n, "config.metrics %d: want APEX_METRICS_DEFAULT, _ON or _OFF", out->metrics);
    return 0;
  }
  if (out->shutdown_grace_ms < 0 || out->shutdown_grace_ms > 86400000) {
    snprintf(why, n, "config.shutdown_grace_ms %lld: want [0, 86400000]",
             (long long)out->shutdown_grace_ms);
    return 0;
  }
  if (!out->store && (out->store_flags || out->store_owner || out->store_lease_s != 0)) {
    snprintf(why, n, "config.store_flags/store_owner/store_lease_s set without config.store");
    return 0;
  }
  return apex__obs_check_config(out, why, n);
}

apex_status_t apex_manager_new(const apex_manager_config_t *cfg, apex_manager_t **out) {
  if (!out) return APEX_E_INVALID;
  *out = NULL;
  apex_manager_config_t c;
  char why[256];
  if (!check_config(cfg, &c, why, sizeof why)) {
    apex__logger_t lg;
    apex__logger_init(&lg, cfg && cfg->struct_size >= offsetof(apex_manager_config_t, log_user)
                               ? cfg->log : NULL,
                      cfg ? cfg->log_user : NULL, -1);
    if (cfg && cfg->struct_size >= offsetof(apex_manager_config_t, log_record_user) + sizeof(void *)) {
      lg.rec_fn = cfg->log_record; /* a host's record sink hears of it too */
      lg.rec_user = cfg->log_record_user;
    }
    apex__log(&lg, APEX_LOG_ERROR, "apex_manager_new: %s", why);
    return APEX_E_INVALID;
  }
  if (c.workers == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    c.workers = n > 2 ? (unsigned)(n > 64 ? 64 : n) : 2;
  }
  /* Cache-line aligned, as its layout assumes. */
  void *mem = NULL;
  if (posix_memalign(&mem, APEX__CACHE_LINE, sizeof(apex_manager_t)) != 0) return APEX_E_NOMEM;
  apex_manager_t *m = memset(mem, 0, sizeof *m);
  m->cfg = c;
  apex__logger_init_cfg(&m->log, &c);
  apex__host_api_init(&m->api);
  atomic_init(&m->refs, 1);
  atomic_init(&m->next_id, 1);
  m->flush_interval_ns = (uint64_t)(1e9 / c.progress_rate_hz);
  for (int i = 0; i < APEX__LOCK_STRIPES; i++) pthread_mutex_init(&m->stripes[i].mu, NULL);
  pthread_mutex_init(&m->reg_mu, NULL);
  /* pool_mu and ev_mu are apex__lock_t (exec/lock.h), zero when free:
   * the memset above made them. */
  pthread_mutex_init(&m->flush_mu, NULL);
  pthread_mutex_init(&m->wait_mu, NULL);
  pthread_mutex_init(&m->runs_mu, NULL);
  pthread_condattr_t ca;
  int rc = APEX_E_IO;
  if (pthread_condattr_init(&ca) == 0) {
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_cond_init(&m->wait_cv, &ca) == 0) rc = APEX_OK;
    pthread_condattr_destroy(&ca);
  }
  if (rc == APEX_OK) rc = apex__sched_init(m);
  if (rc == APEX_OK) rc = apex__mx_init(m);
  if (rc != APEX_OK) {
    manager_free(m);
    return rc;
  }
  if ((rc = apex__trace_init(m)) != APEX_OK || (rc = apex__events_init(m)) != APEX_OK ||
      (rc = apex__runtime_start(m)) != APEX_OK ||
      (rc = apex__pool_start(m, c.workers)) != APEX_OK) {
    apex__log(&m->log, APEX_LOG_ERROR, "apex_manager_new: cannot start: %s", strerror(errno));
    apex__manager_teardown(m, 1);
    return rc;
  }
  /* Durable tasks (src/store/durable.c): the store is opened last, so a
   * refusal (logged, naming the file and the reason) tears down what is
   * already running the usual way. */
  if (c.store && (rc = apex__durable_open(m)) != APEX_OK) {
    apex__manager_teardown(m, 1);
    return rc;
  }
  *out = m;
  return APEX_OK;
}

/* --------------------------------------------------------------- shutdown
 *
 * apex_manager_destroy, in order (docs/architecture.md, "Shutdown"):
 *  1. refuse submits and start no attempt (shutting_down, sweeping); end
 *     at once what waits for one: every task waiting in the scheduler, and the
 *     started tasks waiting to retry;
 *  2. let the running attempts finish for up to drain_ms;
 *  3. cancel what is left ("shutdown"): every task ends at once, running or
 *     not, and the handlers' tokens fire;
 *  4. give the handlers at least config.shutdown_grace_ms to return;
 *  5. wait until every task is terminal and every DONE event queued: a
 *     worker that took a task just before step 1 ends it as it opens the
 *     attempt, and a DONE is queued under its task's lock;
 *  6. stop the runtime thread (in LOOP mode it delivers what is queued
 *     first) and, in DISPATCH mode, deliver on this thread: after this no
 *     event is made, so no host callback runs once destroy returned;
 *  7. handlers still running: BUSY, and the last of them tears down; else
 *     tear down here. */

/* Waits on wait_cv until the live tasks (handlers 0) or the open attempts
 * (handlers 1) are none, or until passes. Returns the last count seen. */
static size_t wait_zero(apex_manager_t *m, int handlers, uint64_t until) {
  pthread_mutex_lock(&m->wait_mu);
  atomic_fetch_add(&m->waiters, 1);
  size_t n;
  for (;;) {
    if (handlers) {
      n = apex__n_active_of(atomic_load(&m->n_active));
    } else {
      n = apex__pool_n_live(m);
    }
    uint64_t now = apex__now_ns();
    if (n == 0 || now >= until) break;
    /* Wake at least every 50 ms: a count that reaches zero without a
     * broadcast (none is owed outside shutdown) is still noticed. */
    uint64_t at = until - now > 50000000u ? now + 50000000u : until;
    struct timespec ts = {(time_t)(at / 1000000000u), (long)(at % 1000000000u)};
    pthread_cond_timedwait(&m->wait_cv, &m->wait_mu, &ts);
  }
  atomic_fetch_sub(&m->waiters, 1);
  pthread_mutex_unlock(&m->wait_mu);
  return n;
}

/* Cancels ("shutdown") every task still waiting in the scheduler:
 * runnable, parked on a limit or a rate, or scheduled. Each leaves it
 * through apex__sched_remove_locked as it ends; collected in batches (a
 * reference each) and cancelled without pool_mu, until none waits. A
 * runnable one a worker pops meanwhile is ended by that worker
 * (apex__pool_attempt_open sees sweeping). */
static void cancel_queued(apex_manager_t *m) {
  for (;;) {
    apex_task_t *batch[256];
    size_t n = apex__pool_collect_waiting(m, batch, 256);
    if (!n) break;
    for (size_t i = 0; i < n; i++) {
      apex__task_cancel(batch[i], APEX__CAUSE_SHUTDOWN, NULL);
      apex__task_unref(batch[i]);
    }
  }
}

/* Cancels ("shutdown") the started tasks on the live lists (one a lock
 * stripe): all of them, or only those waiting to retry (all == 0).
 * Collected under each stripe lock in batches and cancelled without it; a
 * cancelled task leaves its list, so each pass starts again at the first
 * stripe, until a pass finds nothing to do. */
static void cancel_started(apex_manager_t *m, int all) {
  for (;;) {
    apex_task_t *batch[64];
    size_t n = 0;
    for (int i = 0; i < APEX__LOCK_STRIPES && n < 64; i++) {
      pthread_mutex_lock(&m->stripes[i].mu);
      for (apex__run_t *r = m->stripes[i].live_head; r && n < 64; r = r->live_next) {
        /* seq_cst: pairs with the attempt end that puts a task in
         * retry_wait and then reads shutting_down (task.c). */
        if (!all && atomic_load(&r->task->state) != APEX_TASK_RETRY_WAIT) continue;
        apex__task_ref(r->task);
        batch[n++] = r->task;
      }
      pthread_mutex_unlock(&m->stripes[i].mu);
    }
    if (!n) break;
    for (size_t i = 0; i < n; i++) {
      apex__task_cancel(batch[i], APEX__CAUSE_SHUTDOWN, NULL);
      apex__task_unref(batch[i]);
    }
  }
}

apex_status_t apex_manager_destroy(apex_manager_t *m, int64_t drain_ms) {
  if (!m) return APEX_OK;
  /* 0. A serving manager stops claiming and gives its rows back first
   * (src/store/worker.c): other workers take them at once. */
  if (m->dur) apex__serve_destroy(m);
  /* 1. Under pool_mu, where submit checks it: a submit is either refused or
   * its task is in the scheduler swept below. `sweeping` (seq_cst, as
   * the worker's count of its attempt and its read) makes a worker that
   * took a task from the queue just before end it instead of running it
   * (apex__pool_attempt_open). */
  apex__lock(&m->pool_mu);
  atomic_store(&m->shutting_down, 1);
  apex__unlock(&m->pool_mu);
  atomic_store(&m->sweeping, 1);
  cancel_queued(m);
  cancel_started(m, 0);
  /* 2. */
  wait_zero(m, 0, apex__ns_after_ms(drain_ms));
  /* 3. */
  cancel_started(m, 1);
  /* 4. A cooperative handler needs a moment to see its token and return;
   * a drain of 0 must not report it as deaf. */
  int64_t grace = m->cfg.shutdown_grace_ms;
  int64_t grace_ms = drain_ms < 0 || drain_ms > grace ? drain_ms : grace;
  wait_zero(m, 1, apex__ns_after_ms(grace_ms));
  /* 5. Prompt: what is not terminal yet is inside Apex's own code. Then
   * each stripe lock once: a DONE is queued under its task's lock, after
   * the live count dropped. */
  wait_zero(m, 0, UINT64_MAX);
  for (int i = 0; i < APEX__LOCK_STRIPES; i++) {
    pthread_mutex_lock(&m->stripes[i].mu);
    pthread_mutex_unlock(&m->stripes[i].mu);
  }
  /* 6. Every task is terminal: nothing makes an event any more, and the
   * runtime thread has nothing left to time or flush. */
  apex__runtime_stop(m);
  if (m->cfg.delivery == APEX_DELIVER_DISPATCH) apex__events_deliver(m);
  /* 7. */
  unsigned active = apex__n_active_of(atomic_load(&m->n_active));
  if (active) {
    /* Logged first: once the flag is set, the last handler may free m. */
    apex__log(&m->log, APEX_LOG_WARN,
              "shutdown: %u handler(s) still running %lld ms after their tasks were cancelled "
              "(they ignore cancellation); the manager is freed when the last one returns",
              active, (long long)grace_ms);
    /* Still running: the close that brings the count to zero sees the
     * flag and tears down (apex__pool_attempt_close). All returned
     * meanwhile: no close is left to see it, so tear down here. */
    if ((uint32_t)atomic_fetch_or(&m->n_active, APEX__ORPHANED) != 0) return APEX_E_BUSY;
  }
  apex__manager_teardown(m, 1);
  return APEX_OK;
}

void apex__manager_teardown(apex_manager_t *m, int can_unload) {
  apex__pool_stop(m);
  apex__runtime_stop(m);
  apex__durable_close(m); /* after the last outcome was journaled */
  apex__events_fini(m);
  apex__trace_stop(m); /* every task is terminal: its spans are queued */
  for (size_t i = 0; i < m->n_plugins; i++) {
    if (can_unload) {
      apex__plugin_unload(m->plugins[i]);
    } else {
      apex__log(&m->log, APEX_LOG_WARN,
                "plugin %s stays loaded: its own thread finished the last task",
                m->plugins[i]->desc.name);
      m->plugins[i]->dl = NULL; /* never closed: it may still run */
    }
  }
  /* The plugin structs stay until the manager's memory goes: tasks the
   * host still holds find their manager through them. */
  for (size_t i = 0; i < m->n_paths; i++) free(m->paths[i]);
  free(m->paths);
  free(m->heap);
  apex__tmo_fini(m);
  free(m->lheap);
  for (size_t b = 0; b < sizeof m->dl_hash / sizeof m->dl_hash[0]; b++)
    for (apex__dlist_t *l = m->dl_hash[b], *next; l; l = next) {
      next = l->hnext;
      free(l);
    }
  /* No submit takes a reference any more (destroy set shutting_down, or
   * the manager never served one). */
  apex__lock(&m->pool_mu);
  apex__pool_refs_return_locked(m);
  apex__unlock(&m->pool_mu);
  apex__manager_unref(m);
}

/* ----------------------------------------------------------- registry */

apex_status_t apex_manager_add_plugin_path(apex_manager_t *m, const char *dir) {
  if (!m || !dir || !*dir) return APEX_E_INVALID;
  char *d = strdup(dir);
  if (!d) return APEX_E_NOMEM;
  pthread_mutex_lock(&m->reg_mu);
  char **p = realloc(m->paths, (m->n_paths + 1) * sizeof *p);
  if (!p) {
    pthread_mutex_unlock(&m->reg_mu);
    free(d);
    return APEX_E_NOMEM;
  }
  m->paths = p;
  m->paths[m->n_paths++] = d;
  pthread_mutex_unlock(&m->reg_mu);
  return APEX_OK;
}

/* The directory of plugins that sits beside this library, in the build
 * tree and installed alike: <dir of libapex.so>/apex/plugins. */
static int default_plugin_dir(char *buf, size_t n) {
  Dl_info info;
  if (!dladdr((void *)apex_version, &info) || !info.dli_fname) return 0;
  char real[PATH_MAX];
  if (!realpath(info.dli_fname, real)) return 0;
  char *slash = strrchr(real, '/');
  if (!slash) return 0;
  *slash = '\0';
  return snprintf(buf, n, "%s/%s", real, APEX_PLUGIN_SUBDIR) < (int)n;
}

json_t *apex_manager_plugin_path(apex_manager_t *m) {
  if (!m) return NULL;
  json_t *a = json_array();
  if (!a) return NULL;
  int bad = 0;
  pthread_mutex_lock(&m->reg_mu);
  for (size_t i = 0; i < m->n_paths && !bad; i++)
    bad = json_array_append_new(a, json_string(m->paths[i]));
  pthread_mutex_unlock(&m->reg_mu);
  const char *env = getenv("APEX_PLUGIN_PATH");
  if (env && !bad) {
    char *copy = strdup(env), *save = NULL;
    bad = !copy;
    for (char *d = copy ? strtok_r(copy, ":", &save) : NULL; d && !bad;
         d = strtok_r(NULL, ":", &save))
      bad = json_array_append_new(a, json_string(d));
    free(copy);
  }
  char dir[PATH_MAX];
  if (!bad && default_plugin_dir(dir, sizeof dir)) bad = json_array_append_new(a, json_string(dir));
  if (bad) {
    json_decref(a);
    return NULL;
  }
  return a;
}

static apex__plugin_t *find_locked(apex_manager_t *m, const char *name) {
  for (size_t i = 0; i < m->n_plugins; i++)
    if (strcmp(m->plugins[i]->desc.name, name) == 0) return m->plugins[i];
  return NULL;
}

/* Unloads p, which was loaded but never registered, so none of its
 * handlers ran: shutdown is owed only to undo an init. A plugin without
 * init has nothing to undo, and a second dlopen of a file already loaded
 * shares the first copy's globals: its shutdown would stop the threads the
 * registered copy starts lazily. */
static void discard(apex__plugin_t *p) {
  if (!p->desc.init) p->inited = 0;
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

static int load_file(apex_manager_t *m, const char *file, apex_error_t **err) {
  apex__plugin_t *p = NULL;
  int rc = apex__plugin_load(file, &m->api, &p, err);
  if (rc != APEX_OK) return rc;
  p->m = m;
  pthread_mutex_lock(&m->reg_mu);
  apex__plugin_t *dup = find_locked(m, p->desc.name);
  if (dup) {
    char *other = strdup(dup->file);
    pthread_mutex_unlock(&m->reg_mu);
    apex__where_t w = {p->desc.name, NULL, 0, 0};
    rc = apex__error_put(err, apex__error_new(APEX_E_PLUGIN_LOAD, &w, NULL,
                                              "%s: duplicate plugin '%s' (already loaded from %s)",
                                              file, p->desc.name, other ? other : "?"));
    free(other);
    discard(p);
    return rc;
  }
  if (m->n_plugins == m->cap_plugins) {
    size_t cap = m->cap_plugins ? m->cap_plugins * 2 : 8;
    apex__plugin_t **np = realloc(m->plugins, cap * sizeof *np);
    if (!np) {
      pthread_mutex_unlock(&m->reg_mu);
      discard(p);
      return apex__fail(err, APEX_E_NOMEM, "%s: out of memory", file);
    }
    m->plugins = np;
    m->cap_plugins = cap;
  }
  m->plugins[m->n_plugins++] = p;
  pthread_mutex_unlock(&m->reg_mu);
  apex__log(&m->log, APEX_LOG_INFO, "loaded plugin %s %s from %s", p->desc.name,
            p->desc.version, file);
  return APEX_OK;
}

static int so_filter(const struct dirent *d) {
  size_t n = strlen(d->d_name);
  return n > 3 && d->d_name[0] != '.' && strcmp(d->d_name + n - 3, ".so") == 0;
}

/* Loads the *.so files of dir in name order. skip_loaded: skip files whose
 * stem names a loaded plugin. Returns the first failure (goes on past it). */
static int load_dir(apex_manager_t *m, const char *dir, int skip_loaded, apex_error_t **err) {
  struct dirent **names = NULL;
  int n = scandir(dir, &names, so_filter, alphasort);
  if (n < 0)
    return apex__fail(err, APEX_E_PLUGIN_LOAD, "%s: cannot read directory: %s", dir,
                      strerror(errno));
  int first = APEX_OK;
  for (int i = 0; i < n; i++) {
    char path[PATH_MAX];
    char stem[256];
    snprintf(stem, sizeof stem, "%.*s", (int)(strlen(names[i]->d_name) - 3), names[i]->d_name);
    int skip = 0;
    if (skip_loaded) {
      pthread_mutex_lock(&m->reg_mu);
      skip = find_locked(m, stem) != NULL;
      pthread_mutex_unlock(&m->reg_mu);
    }
    if (!skip && snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name) < (int)sizeof path) {
      apex_error_t *e = NULL;
      int rc = load_file(m, path, &e);
      if (rc != APEX_OK && first == APEX_OK) {
        first = apex__error_put(err, e);
      } else {
        if (rc != APEX_OK)
          apex__log(&m->log, APEX_LOG_WARN, "%s", apex_error_message(e));
        apex_error_unref(e);
      }
    }
    free(names[i]);
  }
  free(names);
  return first;
}

apex_status_t apex_manager_load(apex_manager_t *m, const char *path, apex_error_t **err) {
  if (!m || !path || !*path)
    return apex__fail(err, APEX_E_INVALID, "apex_manager_load: %s is NULL or empty",
                      m ? "path" : "manager");
  struct stat st;
  if (stat(path, &st) != 0)
    return apex__fail(err, APEX_E_PLUGIN_LOAD, "%s: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode)) return load_dir(m, path, 0, err);
  return load_file(m, path, err);
}

apex_status_t apex_manager_load_named(apex_manager_t *m, const char *name, apex_error_t **err) {
  if (!m || !name) return apex__fail(err, APEX_E_INVALID, "apex_manager_load_named: NULL argument");
  if (!apex__name_valid(name))
    return apex__fail(err, APEX_E_PLUGIN_NOT_FOUND,
                      "plugin '%s': not a valid plugin name (want [a-z0-9_]+)", name);
  pthread_mutex_lock(&m->reg_mu);
  int loaded = find_locked(m, name) != NULL;
  pthread_mutex_unlock(&m->reg_mu);
  if (loaded) return APEX_OK;
  json_t *dirs = apex_manager_plugin_path(m);
  if (!dirs) return apex__fail(err, APEX_E_NOMEM, "out of memory");
  size_t i;
  json_t *d;
  json_array_foreach(dirs, i, d) {
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s.so", json_string_value(d), name) >= (int)sizeof path)
      continue;
    if (access(path, F_OK) == 0) {
      json_decref(dirs);
      return load_file(m, path, err);
    }
  }
  char *list = json_dumps(dirs, JSON_COMPACT);
  int rc = apex__fail(err, APEX_E_PLUGIN_NOT_FOUND, "unknown plugin '%s' (searched: %s)", name,
                      list ? list : "?");
  free(list);
  json_decref(dirs);
  return rc;
}

apex_status_t apex_manager_load_all(apex_manager_t *m, apex_error_t **err) {
  if (!m) return apex__fail(err, APEX_E_INVALID, "apex_manager_load_all: NULL manager");
  json_t *dirs = apex_manager_plugin_path(m);
  if (!dirs) return apex__fail(err, APEX_E_NOMEM, "out of memory");
  int first = APEX_OK;
  size_t i;
  json_t *d;
  json_array_foreach(dirs, i, d) {
    struct stat st;
    const char *dir = json_string_value(d);
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    int rc = load_dir(m, dir, 1, first == APEX_OK ? err : NULL);
    if (rc != APEX_OK && first == APEX_OK) first = rc;
  }
  json_decref(dirs);
  return first;
}

size_t apex_manager_plugin_count(apex_manager_t *m) {
  if (!m) return 0;
  pthread_mutex_lock(&m->reg_mu);
  size_t n = m->n_plugins;
  pthread_mutex_unlock(&m->reg_mu);
  return n;
}

static apex__plugin_t *plugin_at(apex_manager_t *m, size_t i) {
  if (!m) return NULL;
  pthread_mutex_lock(&m->reg_mu);
  apex__plugin_t *p = i < m->n_plugins ? m->plugins[i] : NULL;
  pthread_mutex_unlock(&m->reg_mu);
  return p;
}

static apex__plugin_t *plugin_named(apex_manager_t *m, const char *name) {
  if (!m || !name) return NULL;
  pthread_mutex_lock(&m->reg_mu);
  apex__plugin_t *p = find_locked(m, name);
  pthread_mutex_unlock(&m->reg_mu);
  return p;
}

const apex_plugin_desc_t *apex_manager_plugin_at_v2(apex_manager_t *m, size_t i) {
  apex__plugin_t *p = plugin_at(m, i);
  return p ? &p->desc : NULL;
}

const apex_plugin_desc_t *apex_manager_plugin_v2(apex_manager_t *m, const char *name) {
  apex__plugin_t *p = plugin_named(m, name);
  return p ? &p->desc : NULL;
}

const apex_plugin_desc_t *(apex_manager_plugin_at)(apex_manager_t *m, size_t i) {
  apex__plugin_t *p = plugin_at(m, i);
  return p ? &p->desc_v1 : NULL;
}

const apex_plugin_desc_t *(apex_manager_plugin)(apex_manager_t *m, const char *name) {
  apex__plugin_t *p = plugin_named(m, name);
  return p ? &p->desc_v1 : NULL;
}

const char *apex_manager_plugin_file(apex_manager_t *m, const char *name) {
  if (!m || !name) return NULL;
  pthread_mutex_lock(&m->reg_mu);
  apex__plugin_t *p = find_locked(m, name);
  pthread_mutex_unlock(&m->reg_mu);
  return p ? p->file : NULL;
}

/* ------------------------------------------------------------- submit */

/* Runs whenever the task's token fires; it matters when the parent's
 * cancellation did it, which no other path notices for a queued task. The
 * cause is the parent's whatever the reason says: a parent token cancelled
 * with "shutdown" (or the task's own token cancelled so by the host through
 * apex_task_token) is not Apex's shutdown, and must not end a running task
 * under its handler. When Apex's own cancel fired the token, this nested
 * call finds a running task left to that cancel, or the task already
 * ended. */
static void on_token_cancel(apex_token_t *tok, const char *reason, void *user) {
  (void)tok;
  apex__task_cancel(user, APEX__CAUSE_PARENT, reason);
}

_Static_assert(sizeof(apex__task_opts_t) <= sizeof(apex_task_t) &&
                   _Alignof(apex__task_opts_t) <= _Alignof(apex_task_t),
               "a plain opts block fits a task slot (tmem.c)");
_Static_assert(sizeof(apex__task_opts_t) % _Alignof(apex__tmo_t) == 0 &&
                   sizeof(apex__task_opts_t) % _Alignof(apex__own_retry_t) == 0 &&
                   sizeof(apex__tmo_t) % _Alignof(apex__own_retry_t) == 0,
               "the opts block's parts follow each other aligned");

/* Sets t's deadline and, when the call overrides a default (retry policy,
 * event callback, parent token, a start time), its opts; a call that
 * overrides nothing costs no allocation here. */
static int resolve_opts(apex_manager_t *m, const apex_action_desc_t *a,
                        const apex_submit_opts_t *o, const apex__spawn_info_t *sp, apex_task_t *t,
                        uint64_t start_ns, const apex__member_t *g,
                        apex_error_t **err) {
  double timeout = o ? o->timeout_s : 0;
  if (timeout == 0) timeout = a->default_timeout_s;
  char why[160];
  if (!apex__timeout_check(timeout, why, sizeof why))
    return apex__fail(err, APEX_E_INVALID, "%s", why);
  if (timeout < 0) timeout = 0; /* APEX_TIMEOUT_NONE, or any negative: none */
  t->timeout_s = (float)timeout;
  /* The observers' clock (obs/clock.h): CLOCK_MONOTONIC from the TSC where
   * the kernel keeps it on the TSC, within a microsecond of the kernel's
   * read, which was the only system clock read on W1's submit path (about
   * 25 ns of it: bench/analysis.md, issue 9's W1 section of the fifth
   * session). A deadline a microsecond off fires within the timerfd's own
   * wake-up latency either way. */
  if (timeout > 0) t->deadline_ns = apex__obs_clock_ns() + apex__timeout_ns(t->timeout_s);
  int capped = 0;
  if (sp && sp->cap_ns && (!t->deadline_ns || t->deadline_ns > sp->cap_ns)) {
    /* A child never outlives its parent's deadline: it gets what is left
     * of it (the float rounds; the deadline itself is the parent's, which
     * the parent's timer ends it at: no timer of its own, see the submit
     * below). The clock the parent's deadline was read from. */
    uint64_t now = apex__obs_clock_ns();
    uint64_t left = sp->cap_ns > now ? sp->cap_ns - now : 1;
    t->timeout_s = (float)((double)left / 1e9);
    if (t->timeout_s <= 0) t->timeout_s = 1e-9f;
    t->deadline_ns = sp->cap_ns;
    capped = 1;
  }
  if (o && o->retry && !apex__retry_policy_check(o->retry, why, sizeof why))
    return apex__fail(err, APEX_E_INVALID, "retry policy: %s", why);
  /* The other three timeouts (timeouts.c): a task with none of them
   * costs nothing more here. */
  uint64_t tns[3];
  if (apex__tmo_resolve(a, o, tns, why, sizeof why) != APEX_OK)
    return apex__fail(err, APEX_E_INVALID, "%s", why);
  int tmo = tns[0] || tns[1] || tns[2];
  /* A plain child (no options of the call's, no timeouts, no key hook, no
   * store) whose deadline needs no list of its own (none, or capped: the
   * parent's timer ends it): its options are its family's, one block the
   * family keeps for all of them (sp->fo; the spawn paid this task's count
   * on it), and its node goes in the task's child_node. A slot of its own
   * per child was 128 bytes of fresh memory on the spawner and a free on
   * the host (bench/analysis.md, W11 of the eighth session). */
  if (sp && sp->fo && !o && !tmo && !g && !a->concurrency_key && !m->dur &&
      (capped || !t->deadline_ns)) {
    t->opts = &sp->fo[capped];
    t->child_node = sp->node;
    return APEX_OK;
  }
  if (!tmo && !sp && !g && (!o || (!o->retry && !o->on_event && !o->parent && !start_ns)) &&
      !(m->dur && apex__durable_wanted(m, o, 0)))
    return APEX_OK;
  /* One block: the options, then the timeouts' state and the call's own
   * retry policy if any (each a multiple of 8 bytes: aligned in turn). */
  size_t tmo_sz = tmo ? sizeof(apex__tmo_t) : 0;
  int own_retry = o && o->retry;
  /* A plain block (a child's, an event callback's) is a task slot, as
   * the task is (tmem.c): no malloc, and a free from another thread that
   * takes no arena lock (each was about 250 and 100 instructions of a
   * child's spawn and free: bench/analysis.md, W11 of the sixth session). */
  int in_slot = !tmo && !own_retry;
  apex__task_opts_t *x =
      in_slot ? (apex__task_opts_t *)(void *)apex__task_mem_new()
              : calloc(1, sizeof *x + tmo_sz + (own_retry ? sizeof(apex__own_retry_t) : 0));
  if (!x) return apex__fail(err, APEX_E_NOMEM, "out of memory");
  x->in_slot = (uint8_t)in_slot;
  x->start_ns = start_ns;
  x->sheap_idx = APEX__NOT_IN_HEAP;
  if (tmo) {
    x->tmo = (apex__tmo_t *)(void *)(x + 1);
    apex__tmo_init(x->tmo, t, tns, apex__now_ns(), o);
  }
  if (own_retry) x->retry = (apex__own_retry_t *)(void *)((char *)(x + 1) + tmo_sz);
  t->opts = x;
  if (sp) {
    x->child = sp->node;
    x->parent_id = sp->parent_id;
    x->child_depth = sp->depth;
    x->child_capped = (uint8_t)capped;
  }
  if (g) {
    x->group = g->group;
    x->group_idx = g->idx;
  }
  if (!o) return APEX_OK;
  if (own_retry) {
    x->retry->policy = *o->retry;
    for (size_t i = 0; i < o->retry->n_non_retryable; i++)
      x->retry->codes[i] = o->retry->non_retryable[i];
    x->retry->policy.non_retryable = x->retry->codes; /* the copy, in the same block */
  }
  x->on_event = o->on_event;
  x->event_user = o->on_event ? o->event_user : NULL;
  (void)m;
  return APEX_OK;
}

/* Room for a concurrency key the action's hook writes. */
#define APEX__KEY_BUF 256

/* A concurrency or fairness key: 1 to 255 bytes of UTF-8. */
static int key_ok(const char *k) {
  size_t n = strnlen(k, 256);
  return n >= 1 && n <= 255 && apex__utf8_valid(k, n);
}

/* Checks the scheduling options and fills req; *start_ns the start time
 * (monotonic; 0: now). vp: the validated params, for the action's
 * concurrency_key hook, which writes into keybuf (APEX__KEY_BUF bytes;
 * req->key may point there or at the caller's opts). Returns: APEX_OK or APEX_E_INVALID naming the
 * field. */
static int resolve_sched(apex_manager_t *m, const apex_action_desc_t *a,
                         const apex_submit_opts_t *o, const json_t *vp, uint64_t deadline_ns,
                         apex__sched_req_t *req, char *keybuf, uint64_t *start_ns,
                         apex_error_t **err) {
  memset(req, 0, sizeof *req);
  *start_ns = 0;
  if (o) {
    if (o->priority < APEX_PRIORITY_MIN || o->priority > APEX_PRIORITY_MAX)
      return apex__fail(err, APEX_E_INVALID, "priority %d: want %d..%d", (int)o->priority,
                        APEX_PRIORITY_MIN, APEX_PRIORITY_MAX);
    req->priority = o->priority;
    if (o->concurrency_key && !key_ok(o->concurrency_key))
      return apex__fail(err, APEX_E_INVALID, "concurrency_key: want 1 to 255 bytes of UTF-8");
    if (o->fairness_key && !key_ok(o->fairness_key))
      return apex__fail(err, APEX_E_INVALID, "fairness_key: want 1 to 255 bytes of UTF-8");
    req->fairness_key = o->fairness_key;
    req->key = o->concurrency_key;
    if (o->queue_wait_ms < -1)
      return apex__fail(err, APEX_E_INVALID, "queue_wait_ms %lld: want -1, 0 or more",
                        (long long)o->queue_wait_ms);
    if (o->queue_wait_ms && (apex__pool_self(m) || apex__on_runtime_thread(m)))
      return apex__fail(err, APEX_E_INVALID,
                        "queue_wait_ms: a submit from Apex's own thread (a handler or a LOOP "
                        "callback) must not wait for room");
    req->wait_ms = o->queue_wait_ms;
    if (!isfinite(o->run_after_s) || o->run_after_s < 0 || o->run_after_s > 1e9)
      return apex__fail(err, APEX_E_INVALID, "run_after_s %g: want 0 to 1e9 seconds",
                        o->run_after_s);
    if (!isfinite(o->run_at) || o->run_at < 0)
      return apex__fail(err, APEX_E_INVALID, "run_at %g: want seconds since the Unix epoch",
                        o->run_at);
    uint64_t now = apex__now_ns();
    double after = o->run_after_s;
    const char *field = "run_after_s";
    if (o->run_at > 0) {
      struct timespec wall;
      clock_gettime(CLOCK_REALTIME, &wall);
      double in = o->run_at - ((double)wall.tv_sec + (double)wall.tv_nsec / 1e9);
      if (in > 1e9) in = 1e9;
      if (in > after) {
        after = in;
        field = "run_at";
      }
    }
    if (after > 0) {
      *start_ns = now + (uint64_t)(after * 1e9);
      if (deadline_ns && *start_ns >= deadline_ns)
        return apex__fail(err, APEX_E_INVALID,
                          "%s: the start (in %.3f s) is past the task's deadline (in %.3f s)",
                          field, after, (double)(deadline_ns - now) / 1e9);
    }
  }
  if (!req->key && a->concurrency_key) {
    /* The action's default key, from the params (a plugin hook: it must be
     * quick and thread-safe). A key that is not one is no key. */
    memset(keybuf, 0, APEX__KEY_BUF);
    if (a->concurrency_key(vp, keybuf, APEX__KEY_BUF) == 0) {
      keybuf[APEX__KEY_BUF - 1] = '\0';
      if (key_ok(keybuf)) req->key = keybuf;
    }
  }
  /* Hashed here, not under pool_mu. */
  if (req->key) req->key_hash = apex__sched_key_hash(req->key);
  return APEX_OK;
}

static int action_list(const apex__plugin_t *p, char *buf, size_t n) {
  size_t off = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < p->desc.n_actions && off < n; i++) {
    int w = snprintf(buf + off, n - off, "%s%s", i ? ", " : "", p->actions[i].name);
    if (w < 0) break;
    off += (size_t)w;
  }
  return 0;
}

apex_status_t apex_manager_submit(apex_manager_t *m, const char *plugin, const char *action,
                                  json_t *params, const apex_submit_opts_t *opts,
                                  apex_task_t **out, apex_error_t **err) {
  return apex__submit(m, plugin, action, params, opts, NULL, NULL, out, err);
}

apex_status_t apex__submit(apex_manager_t *m, const char *plugin, const char *action,
                           json_t *params, const apex_submit_opts_t *opts,
                           const apex__spawn_info_t *sp, const apex__member_t *g,
                           apex_task_t **out, apex_error_t **err) {
  if (out) *out = NULL;
  if (!m || !plugin || !action || !out)
    return apex__fail(err, APEX_E_INVALID, "apex_manager_submit: %s is NULL",
                      !m ? "manager" : !plugin ? "plugin" : !action ? "action" : "out");
  apex_submit_opts_t o_copy; /* opts in this library's layout (docs/abi.md) */
  /* A caller built against this header passes this layout already: read it
   * in place (no unknown tail to check, nothing missing to default). */
  if (opts && opts->struct_size != sizeof o_copy) {
    char why[256];
    uint32_t size = opts->struct_size ? opts->struct_size : (uint32_t)APEX__SUBMIT_OPTS_V1_SIZE;
    apex_submit_opts_init(&o_copy);
    if (!apex__struct_copy_in(&o_copy, sizeof o_copy, opts, size, APEX__SUBMIT_OPTS_V1_MIN,
                              "submit opts", "apex_submit_opts_init", why, sizeof why))
      return apex__fail(err, APEX_E_INVALID, "%s", why);
    opts = &o_copy;
  }
  if (opts && (opts->durable || opts->idempotency_key) && !m->dur)
    return apex__fail(err, APEX_E_INVALID, "submit opts: durable: the manager has no store");
  /* Checked before anything is reserved (an id, a row): a key the store
   * would keep but could not give back as JSON text (apex_store_get,
   * `apex show`) is refused here, as the other keys are. */
  if (opts && opts->idempotency_key && !key_ok(opts->idempotency_key))
    return apex__fail(err, APEX_E_INVALID, "idempotency_key: want 1 to 255 bytes of UTF-8");
  if (atomic_load(&m->shutting_down))
    return apex__fail(err, APEX_E_SHUTTING_DOWN, "the manager is shutting down");
  /* A registered plugin is never removed before the manager goes, and its
   * name never changes: the one found last is checked without reg_mu
   * (acquire pairs with the release store below). */
  apex__plugin_t *p = atomic_load_explicit(&m->last_plugin, memory_order_acquire);
  if (!p || strcmp(p->desc.name, plugin) != 0) {
    pthread_mutex_lock(&m->reg_mu);
    p = find_locked(m, plugin);
    pthread_mutex_unlock(&m->reg_mu);
    if (!p)
      return apex__fail(err, APEX_E_PLUGIN_NOT_FOUND, "unknown plugin '%s' (not loaded)", plugin);
    atomic_store_explicit(&m->last_plugin, p, memory_order_release);
  }
  const apex_action_desc_t *a = apex__plugin_action(p, action);
  if (!a) {
    char list[512];
    action_list(p, list, sizeof list);
    apex__where_t w = {p->desc.name, action, 0, 0};
    return apex__error_put(err, apex__error_new(APEX_E_ACTION_NOT_FOUND, &w, NULL,
                                                "plugin '%s' has no action '%s' (actions: %s)",
                                                plugin, action, list));
  }
  if (params && !json_is_object(params)) {
    apex__mx_rejected(m, p, a, APEX_E_INVALID_PARAMS);
    return apex__fail(err, APEX_E_INVALID_PARAMS, "%s.%s: params: want object", plugin, action);
  }
  json_t *vp = NULL;
  if (a->n_params == 0 && (!params || json_object_size(params) == 0)) {
    vp = NULL; /* the handler's {} is made if it asks (ctx.c) */
  } else {
    char why[300];
    int rc = apex__params_validate(a, params, &vp, why, sizeof why);
    if (rc != APEX_OK) {
      apex__where_t w = {p->desc.name, a->name, 0, 0};
      apex__mx_rejected(m, p, a, rc);
      return apex__error_put(err, apex__error_new(rc, &w, NULL, "%s.%s: %s", plugin, action,
                                                  rc == APEX_E_NOMEM ? "out of memory" : why));
    }
  }

  apex_task_t *t = apex__task_alloc(m, a); /* zeroed */
  if (!t) {
    json_decref(vp);
    return apex__fail(err, APEX_E_NOMEM, "out of memory");
  }
  t->plugin = p; /* and through it, m */
  t->action = a;
  atomic_init(&t->params, vp);
  /* The handle, the life reference, and the scheduler's, which the
   * submit's push takes over (apex__sched_push_new_locked): made here, not
   * by an atomic add under pool_mu. A refused submit frees t without
   * looking at the count. */
  atomic_init(&t->refs, 3);
  atomic_init(&t->state, APEX_TASK_QUEUED);
  apex__sched_req_t req;
  char keybuf[APEX__KEY_BUF];
  uint64_t start_ns = 0;
  int rc = apex__sched_pblock(m, p) ? APEX_OK
                                    : apex__fail(err, APEX_E_NOMEM, "out of memory");
  if (rc == APEX_OK) rc = resolve_opts(m, a, opts, sp, t, 0, g, err);
  /* Most submits set no scheduling option and name an action without a
   * key hook: they need no request at all (the plugin's default class). */
  int sched = a->concurrency_key ||
              (opts && (opts->priority || opts->concurrency_key || opts->fairness_key ||
                        opts->run_after_s != 0 || opts->run_at != 0 || opts->queue_wait_ms));
  if (rc == APEX_OK && sched)
    rc = resolve_sched(m, a, opts, vp, t->deadline_ns, &req, keybuf, &start_ns, err);
  if (rc == APEX_OK && start_ns) {
    /* Private options for the start time (the heap's index is there). */
    if (!t->opts) {
      apex__task_opts_t *x = calloc(1, sizeof *x);
      if (!x) rc = apex__fail(err, APEX_E_NOMEM, "out of memory");
      else t->opts = x;
    }
    if (rc == APEX_OK) {
      apex__task_opts_t *x = (apex__task_opts_t *)t->opts;
      x->start_ns = start_ns;
      x->sheap_idx = APEX__NOT_IN_HEAP;
      atomic_init(&t->state, APEX_TASK_SCHEDULED);
    }
  }
  /* Its age for the operation manager (ops/ops.c), in the outcome's word
   * until there is an outcome: the deadline's clock read when it has one,
   * else the coarse clock (a few ns, no system call). */
  t->out.submitted_ns = t->deadline_ns ? t->deadline_ns - apex__timeout_ns(t->timeout_s)
                                       : apex__coarse_now_ns();
  if (rc == APEX_OK && opts && opts->parent) {
    apex_token_t *tok = NULL;
    rc = apex_token_new_child(opts->parent, &tok);
    if (rc != APEX_OK) rc = apex__fail(err, rc, "cannot make the task's token: %s", apex_strerror(rc));
    atomic_init(&t->token, tok);
  }
  /* A child carries its family's shared token (ops/children.c), with a
   * reference the family paid (tok_taken; every spawn's) or one of its
   * own. */
  if (rc == APEX_OK && sp && sp->tok) {
    atomic_init(&t->token, sp->tok_taken ? sp->tok : apex_token_ref(sp->tok));
    if (sp->tok_taken) *sp->tok_taken = 1;
  }
  apex__tmo_t *tmo = apex__task_tmo(t);
  if (rc == APEX_OK && tmo && (rc = apex__tmo_reserve(m, tmo)) != APEX_OK)
    apex__fail(err, rc, "out of memory for the task's timer");
  /* A manager with a store (src/store/durable.c): the store gives the id,
   * and a durable task's row is durable before the task can run. */
  apex_task_t *dup = NULL;
  int picked = 0; /* to start here (apex__pool_start_inline) */
  if (rc == APEX_OK && m->dur) {
    rc = apex__durable_submit(m, t, opts, vp, sp != NULL, &dup, err);
    if (rc != APEX_OK && tmo) apex__tmo_unreserve(m, tmo);
  }
  if (rc == APEX_OK) {
    /* The id and the manager reference are taken in the section that
     * queues the task (apex__pool_submit), before it is visible; a
     * scheduled task's lock and a traced task's span need the id first. */
    if (!m->dur && (start_ns || m->tracer)) t->id = apex__pool_new_id(m);
    if (m->tracer) apex__trace_submit(t, opts);
    /* Queued from here on: a worker may start it before we return. A
     * scheduled one is pushed under its own lock, so its SCHEDULED event
     * comes before anything its start makes. */
    char why[200]; /* written before it is read (a refusal); not cleared: 200 bytes a submit */
    why[0] = '\0';
    pthread_mutex_t *mu = apex__task_mu(t);
    /* A scheduled task is pushed under its own lock (its stripe's), so
     * its SCHEDULED event comes before anything its start makes; it never
     * waits for room holding that lock (a task of the same stripe may be
     * what has to end to make room): it tries, and waits between tries. */
    apex__sched_req_t once;
    uint64_t until = 0;
    if (start_ns) {
      once = req;
      once.wait_ms = 0;
      until = req.wait_ms ? apex__ns_after_ms(req.wait_ms) : 0;
    }
    for (;;) {
      if (start_ns) pthread_mutex_lock(mu);
      /* A capped child's deadline is its parent's: the parent's timer
       * ends it (apex__family_deadline, src/ops/children.c), so it joins
       * no deadline list (a list per distinct remaining time, made and
       * unlinked under pool_mu for every child: bench/analysis.md, W11 of
       * the sixth session). */
      int own_dl = t->deadline_ns != 0 && !(t->opts && t->opts->child_capped);
      rc = apex__pool_submit(m, t, own_dl, apex__retry_policy(t)->max_attempts > 1,
                             start_ns ? &once : sched ? &req : NULL, why, sizeof why,
                             !start_ns && apex__pool_may_inline(t) ? &picked : NULL);
      if (rc == APEX_OK && start_ns && apex__events_wanted(m, t, APEX_EVENT_SCHEDULED)) {
        apex__ev_t *ev = apex__ev_new(t, APEX_EVENT_SCHEDULED);
        if (ev) apex__events_push(m, ev);
      }
      if (start_ns) pthread_mutex_unlock(mu);
      if (!start_ns || rc != APEX_E_QUEUE_FULL || !req.wait_ms || apex__now_ns() >= until) break;
      apex__pool_await_room(m, t, until);
    }
    if (rc != APEX_OK && tmo) apex__tmo_unreserve(m, tmo);
    if (rc != APEX_OK && t->opts && t->opts->durable) apex__durable_unsubmit(m, t);
    if (rc == APEX_E_SHUTTING_DOWN)
      apex__fail(err, rc, "the manager is shutting down");
    else if (rc == APEX_E_QUEUE_FULL)
      apex__fail(err, rc, "%s", why);
    else if (rc == APEX_E_NOMEM)
      apex__fail(err, rc, "out of memory for the task's timer or scheduling class");
    if (rc != APEX_OK && m->tracer) apex__trace_forget(t);
  }
  if (rc != APEX_OK) {
    apex__mx_rejected(m, p, a, rc);
    json_decref(vp);
    apex_token_unref(apex__task_token_peek(t));
    if (t->opts && !t->opts->shared) {
      apex__durable_task_free(t->opts->durable);
      apex__task_opts_free(t->opts);
    }
    apex__task_discard(t); /* a deferred action's block, or a slot */
    if (dup) { /* an idempotency key's task: that one is the answer */
      *out = dup;
      return APEX_OK;
    }
    return rc;
  }
  apex__mx_submitted(m, p, a); /* not t: a worker may be writing it */
  if (tmo) apex__tmo_submitted(m, t); /* arms its schedule-to-start timer */
  if (opts && opts->parent) {
    /* Ends a queued task at once when the parent is cancelled. The
     * registration holds no reference: task_free removes it. Only this
     * thread writes parent_cb_id, and task_free reads it after the handle
     * this thread holds is released. */
    apex__task_opts_t *x = (apex__task_opts_t *)t->opts;
    if (apex_token_on_cancel(apex__task_token_peek(t), on_token_cancel, t, &x->parent_cb_id) !=
        APEX_OK) {
      /* Live already: end it (its life reference goes with it) and drop
       * the handle the caller will not get. */
      apex__task_finish(t, APEX_TASK_FAILED,
                        apex__error_new(APEX_E_NOMEM, NULL, NULL, "out of memory"));
      if (picked) apex__pool_start_inline(m, t); /* finds it ended: gives back the pick */
      apex__task_unref(t);
      return apex__fail(err, APEX_E_NOMEM, "out of memory watching the parent token");
    }
  }
  /* A deferred start that its plugin says is quick (APEX_ACTION_F_START_INLINE),
   * picked for this thread because nothing else was runnable: it runs here,
   * last, as a worker would have run it (no worker's hand-over and wake-up;
   * W7 of bench/analysis.md). */
  if (picked) apex__pool_start_inline(m, t);
  *out = t;
  return APEX_OK;
}

apex_status_t apex_manager_execute(apex_manager_t *m, const char *plugin, const char *action,
                                   json_t *params, const apex_submit_opts_t *opts,
                                   json_t **result, apex_error_t **err) {
  if (result) *result = NULL;
  /* Refused before submitting: the wait below would block the thread that
   * fires the task's deadline and delivers LOOP events. */
  if (m && apex__on_runtime_thread(m))
    return apex__fail(err, APEX_E_INVALID,
                      "apex_manager_execute: called on Apex's runtime thread (a LOOP event "
                      "callback), which must not block");
  apex_task_t *t = NULL;
  int rc = apex_manager_submit(m, plugin, action, params, opts, &t, err);
  if (rc != APEX_OK) return rc;
  rc = apex_task_wait(t, -1);
  if (rc != APEX_OK) { /* not expected (only the thread above is refused) */
    (void)apex_task_cancel(t, NULL);
    apex_task_release(t);
    return apex__fail(err, rc, "apex_manager_execute: waiting for the task failed: %s",
                      apex_strerror(rc));
  }
  if (apex_task_state(t) == APEX_TASK_SUCCEEDED) {
    if (result) *result = apex_task_result(t);
  } else {
    apex_error_t *e = apex_task_error(t);
    rc = apex_error_code(e);
    if (rc == APEX_OK || !e) rc = APEX_E_EXECUTION;
    if (err)
      *err = e;
    else
      apex_error_unref(e);
  }
  apex_task_release(t);
  return rc;
}

/* ------------------------------------------------------ events, stats */

int apex_manager_fd(apex_manager_t *m) {
  if (!m || m->cfg.delivery != APEX_DELIVER_DISPATCH) return APEX_E_INVALID;
  return m->host_fd;
}

int apex_manager_dispatch(apex_manager_t *m) {
  if (!m || m->cfg.delivery != APEX_DELIVER_DISPATCH) return APEX_E_INVALID;
  return apex__events_dispatch(m);
}

/* Reads every counter into s (this library's layout). */
static void stats_read(apex_manager_t *m, apex_stats_t *s) {
  memset(s, 0, sizeof *s);
  s->struct_size = sizeof *s;
  s->submitted = atomic_load(&m->st_submitted);
  s->retries = atomic_load(&m->st_retries);
  s->progress_reported = atomic_load(&m->st_prog_reported);
  s->progress_delivered = atomic_load(&m->st_prog_delivered);
  s->progress_rejected = atomic_load(&m->st_prog_rejected);
  s->late_reports = atomic_load(&m->st_late);
  apex__lock(&m->pool_mu);
  /* Workers count these in their own lines (pool.c). */
  s->succeeded = apex__pool_stat_locked(m, APEX_TASK_SUCCEEDED);
  s->failed = apex__pool_stat_locked(m, APEX_TASK_FAILED);
  s->cancelled = apex__pool_stat_locked(m, APEX_TASK_CANCELLED);
  s->timed_out = apex__pool_stat_locked(m, APEX_TASK_TIMED_OUT);
  s->attempts = apex__pool_stat_locked(m, -1);
  s->queued = apex__sched_queued_locked(m);
  s->workers = m->n_threads;
  s->stuck_workers = m->n_stuck;
  apex__unlock(&m->pool_mu);
  s->running = apex__n_active_of(atomic_load(&m->n_active));
}

apex_status_t apex_manager_stats_v2(apex_manager_t *m, apex_stats_t *out) {
  if (!m || !out) return APEX_E_INVALID;
  apex_stats_t s;
  stats_read(m, &s);
  return apex__struct_copy_out(out, &s, sizeof s, APEX__STATS_V1_MIN) ? APEX_OK : APEX_E_INVALID;
}

apex_status_t apex_manager_stats(apex_manager_t *m, apex_manager_stats_t *out) {
  if (!m || !out) return APEX_E_INVALID;
  apex_stats_t s;
  stats_read(m, &s);
  *out = (apex_manager_stats_t){
      .submitted = s.submitted,
      .succeeded = s.succeeded,
      .failed = s.failed,
      .cancelled = s.cancelled,
      .timed_out = s.timed_out,
      .attempts = s.attempts,
      .retries = s.retries,
      .queued = s.queued,
      .running = s.running,
      .workers = s.workers,
      .stuck_workers = s.stuck_workers,
      .progress_reported = s.progress_reported,
      .progress_delivered = s.progress_delivered,
      .progress_rejected = s.progress_rejected,
      .late_reports = s.late_reports,
  };
  return APEX_OK;
}
