/* The host services a plugin reaches through ctx->api (include/apex/plugin.h).
 *
 * A ctx is the head of its task's run state (internal.h), so these calls
 * are a pointer hop and a few field reads. They run on whatever thread the
 * plugin calls from: a worker running a blocking handler, or any thread of
 * a deferred plugin. The ctx is the plugin's while its attempt is open
 * (see task.c, the "life" reference): until the handler returns or
 * complete() runs. A call after the task ended meanwhile (a timeout, a
 * cancel) is accepted and ignored.
 *
 * Misuse: a call after complete() (a second complete, progress, a result)
 * finds the run state's attempt closed and is ignored, counted and logged
 * (apex__ctx_misuse) without touching the task, which may be freed: run
 * states are kept per manager for reuse, so the ctx's memory stays valid
 * (internal.h, apex__run_t). The calls that take the task lock anyway
 * (complete, progress, set_result, fail, log) check under it, so they are
 * caught even when they race the completion on another thread; the ones
 * that take no lock (params, task_id, attempt, plugin_state, is_cancelled,
 * cancel_reason, cancel_fd, sleep_ms, wait_fd) check an acquire load of
 * the attempt flag, which catches a call made after complete() returned
 * but not one racing it (see docs/plugin-developer-guide.md, "Misuse Apex
 * catches").
 *
 * Progress and results are validated here, on the plugin's thread, so an
 * invalid one is rejected with a reason before it costs the host anything
 * (and before anything copies it: see core/value.c for why that matters). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "core/progress_internal.h"
#include "core/utf8.h"
#include "core/value.h"
#include "exec/internal.h"
#include "obs/metrics.h"

static apex__run_t *run_of(apex_ctx_t *c) { return (apex__run_t *)(void *)c; }

/* The task of c, for a call that takes no lock, if its attempt is open
 * and its complete was not called (a complete held for live children
 * counts as called: APEX__ATT_HELD); else NULL, and the call (`what`) is
 * counted and logged as misuse. */
static apex_task_t *open_task(apex_ctx_t *c, const char *what) {
  apex__run_t *r = run_of(c);
  if (atomic_load_explicit(&r->attempt_open, memory_order_acquire) == APEX__ATT_OPEN)
    return r->task;
  apex__ctx_misuse(apex__run_m(r), atomic_load_explicit(&r->id, memory_order_relaxed), what);
  return NULL;
}

/* As open_task, with the task's lock held when it returns non-NULL. */
static apex_task_t *lock_open(apex_ctx_t *c, const char *what) {
  apex__run_t *r = run_of(c);
  apex_task_t *t = apex__run_lock_live(r);
  if (!t) apex__ctx_misuse(apex__run_m(r), atomic_load_explicit(&r->id, memory_order_relaxed), what);
  return t;
}

static json_t *ctx_params(apex_ctx_t *c) {
  apex_task_t *t = open_task(c, "apex_ctx_params");
  if (!t) return NULL;
  json_t *p = atomic_load_explicit(&t->params, memory_order_acquire);
  if (p) return p;
  json_t *fresh = json_object(); /* NULL on no memory: the handler sees NULL */
  if (!fresh || atomic_compare_exchange_strong(&t->params, &p, fresh)) return fresh;
  json_decref(fresh); /* another thread of the handler's made it first */
  return p;
}

static uint64_t ctx_task_id(apex_ctx_t *c) {
  apex_task_t *t = open_task(c, "apex_ctx_task_id");
  return t ? t->id : 0;
}

/* No lock: t->attempt changes only when an attempt starts, never while
 * this one is open. */
static uint32_t ctx_attempt(apex_ctx_t *c) {
  apex_task_t *t = open_task(c, "apex_ctx_attempt");
  return t ? t->attempt : 0;
}

static void *ctx_plugin_state(apex_ctx_t *c) {
  apex_task_t *t = open_task(c, "apex_ctx_plugin_state");
  return t ? t->plugin->state : NULL;
}

/* After complete() the ctx reads as cancelled ("completed"): a plugin
 * thread still working for it should stop. A task cancelled without a
 * token (task.c, cancel_tokenless: a plain apex_task_cancel of a pending
 * deferred task with a cancel callback) shows it in its run state's
 * oc_fired, with the reason "user". */
static int ctx_is_cancelled(apex_ctx_t *c) {
  apex_task_t *t = open_task(c, "apex_ctx_is_cancelled");
  if (!t) return 1;
  /* The attempt's own token when it has one (an attempt timeout cancels
   * it; a cancel of the task reaches it as its child). */
  return apex_token_is_cancelled(apex__ctx_token_peek(t)) ||
         atomic_load_explicit(&run_of(c)->oc_fired, memory_order_acquire);
}

static const char *ctx_cancel_reason(apex_ctx_t *c) {
  apex_task_t *t = open_task(c, "apex_ctx_cancel_reason");
  if (!t) return "completed";
  /* The task's reason first: its attempt token, its child, says "parent"
   * when the task's fired. */
  apex_token_t *tt = apex__task_token_peek(t);
  const char *why = apex_token_is_cancelled(tt) ? apex_token_reason(tt)
                                                : apex_token_reason(apex__ctx_token_peek(t));
  if (!why && atomic_load_explicit(&run_of(c)->oc_fired, memory_order_acquire))
    why = apex__cause_name(APEX__CAUSE_USER);
  return why;
}

static int ctx_cancel_fd(apex_ctx_t *c) {
  apex_task_t *t = open_task(c, "apex_ctx_cancel_fd");
  if (!t) return APEX_E_INVALID;
  apex_token_t *tok = apex__ctx_token(t);
  return tok ? apex_token_fd(tok) : APEX_E_NOMEM;
}

static int ctx_sleep_ms(apex_ctx_t *c, uint64_t ms) {
  apex_task_t *task = open_task(c, "apex_ctx_sleep_ms");
  if (!task) return APEX_E_CANCELLED;
  int64_t t = ms > INT64_MAX / 2 ? INT64_MAX / 2 : (int64_t)ms;
  apex_token_t *tok = apex__ctx_token(task);
  if (!tok) { /* no memory for a token: still sleep, uncancellably */
    struct timespec ts = {(time_t)(t / 1000), (long)(t % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return APEX_OK;
  }
  /* APEX_E_IO passes through: a wait that failed did not sleep the full
   * time, and saying APEX_OK would claim it had. */
  return apex_token_wait(tok, t);
}

static int ctx_wait_fd(apex_ctx_t *c, int fd, short events, int64_t timeout_ms) {
  apex_task_t *task = open_task(c, "apex_ctx_wait_fd");
  if (!task) return APEX_E_CANCELLED;
  if (fd < 0) return APEX_E_INVALID;
  apex_token_t *tok = apex__ctx_token(task);
  if (!tok) return APEX_E_IO;
  int cfd = apex_token_fd(tok);
  if (cfd < 0) return APEX_E_IO;
  struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = cfd, .events = POLLIN}};
  uint64_t until = apex__ns_after_ms(timeout_ms); /* UINT64_MAX: no limit */
  for (;;) {
    int wait = -1;
    if (until != UINT64_MAX) {
      uint64_t now = apex__now_ns();
      uint64_t left = now >= until ? 0 : (until - now + 999999u) / 1000000u;
      wait = left > INT_MAX ? INT_MAX : (int)left;
    }
    int n = poll(p, 2, wait);
    if (n < 0) {
      if (errno == EINTR) continue;
      return APEX_E_IO;
    }
    if (apex_token_is_cancelled(tok)) return APEX_E_CANCELLED;
    if (n == 0) return 0;
    if (p[0].revents) return p[0].revents;
  }
}

/* An invalid update from an open attempt is counted and logged; one after
 * complete() is misuse. Either way the plugin hears APEX_E_INVALID. */
static int reject(apex_ctx_t *c, const char *why) {
  apex_task_t *t = lock_open(c, "progress");
  if (!t) return APEX_E_INVALID;
  apex_manager_t *m = apex__task_m(t);
  /* The names live in the plugin's image, loaded while any attempt is
   * open, and this caller's is. */
  const char *pn = t->plugin->desc.name, *an = t->action->name;
  uint64_t id = t->id;
  apex__mx_progress_rejected(m, t);
  pthread_mutex_unlock(apex__task_mu(t));
  atomic_fetch_add_explicit(&m->st_prog_rejected, 1, memory_order_relaxed);
  if (apex__log_enabled(&m->log, APEX_LOG_DEBUG))
    apex__log(&m->log, APEX_LOG_DEBUG, "%s.%s task %llu: progress rejected: %s", pn, an,
              (unsigned long long)id, why);
  return APEX_E_INVALID;
}

/* The fast path's rejection: the reason is the validator's own, so a
 * plugin reads the same words whichever call it made; it is worked out only
 * here, off the path of a valid report. */
static int reject_short(apex_ctx_t *c, double pct, const char *msg) {
  char why[256] = "";
  if (apex__log_enabled(&apex__run_m(run_of(c))->log, APEX_LOG_DEBUG)) {
    apex_progress_update_t u = {.percentage = pct, .message = msg};
    apex_progress_update_validate(&u, why, sizeof why);
  }
  return reject(c, why);
}

static int ctx_progress(apex_ctx_t *c, double pct, const char *msg) {
  if (!(pct >= 0.0 && pct <= 100.0)) return reject_short(c, pct, msg);
  size_t len = 0;
  if (msg) {
    len = strnlen(msg, APEX_PROGRESS_MESSAGE_MAX + 1);
    if (len > APEX_PROGRESS_MESSAGE_MAX || !apex__utf8_valid(msg, len))
      return reject_short(c, pct, msg);
  }
  return apex__task_report(run_of(c), pct, msg, len, NULL, NULL, NULL);
}

/* The JSON is the plugin's, borrowed for this call: the task merges it into
 * its progress state under its lock, copying only what differs (task.c),
 * so nothing is deep-copied here that coalescing would drop. */
static int ctx_progress_update(apex_ctx_t *c, const apex_progress_update_t *u) {
  char why[256];
  if (apex_progress_update_validate(u, why, sizeof why) != APEX_OK) return reject(c, why);
  return apex__task_report(run_of(c), u->percentage, u->message,
                           u->message ? strlen(u->message) : 0, u->status, u->details,
                           u->sub_tasks);
}

/* The checks a valid node update passes, inline (this runs per item); the
 * validator words a rejection (apex__progress_node_validate), off this
 * path. Whether the index names a sub-task is the task's to say, under its
 * lock. */
static int ctx_progress_node(apex_ctx_t *c, size_t index, double pct, const char *status,
                             const char *msg) {
  size_t len = 0;
  int ok = pct >= 0.0 && pct <= 100.0 && (!status || apex_progress_status_is_known(status));
  if (ok && msg) {
    len = strnlen(msg, APEX_PROGRESS_MESSAGE_MAX + 1);
    ok = len <= APEX_PROGRESS_MESSAGE_MAX && apex__utf8_valid(msg, len);
  }
  char why[256] = "";
  if (!ok) {
    if (apex__log_enabled(&apex__run_m(run_of(c))->log, APEX_LOG_DEBUG))
      apex__progress_node_validate(index, pct, status, msg, why, sizeof why);
    return reject(c, why);
  }
  size_t n_nodes = 0;
  int rc = apex__task_report_node(run_of(c), index, pct, status, msg, len, &n_nodes);
  if (rc != APEX_E_INVALID) return rc;
  snprintf(why, sizeof why, "node[%zu]: no such sub-task (the tree has %zu)", index, n_nodes);
  return reject(c, why);
}

/* The result is checked here, on the plugin's thread, so its cost lands on
 * the plugin and nothing past this point (a copy for the host, the CLI's
 * printing, the task's release) ever walks a value that could overflow a
 * stack or never end. A refused value was taken, so it is ours to free,
 * without recursion; the refusal waits in the run state for the attempt's
 * end (task.c), which fails the attempt with it if the handler reports
 * success. A later set_result replaces it, as it replaces a result. */
static void ctx_set_result(apex_ctx_t *c, json_t *result) {
  apex_error_t *refused = NULL;
  char why[320];
  apex__value_budget_t budget = APEX__VALUE_BUDGET_INIT;
  int bad = result && apex__value_check(result, "result", &budget, why, sizeof why) != APEX_OK;
  if (bad) {
    apex__value_free(result);
    result = NULL;
  }
  apex_task_t *t = lock_open(c, "apex_ctx_set_result");
  if (!t) {
    json_decref(result); /* taken, even when ignored */
    return;
  }
  if (bad) {
    /* The error is made unlocked (it allocates) and stored only if the
     * attempt is still open then, as apex_ctx_fail's is. */
    apex_manager_t *m = apex__task_m(t);
    apex__where_t w = {t->plugin->desc.name, t->action->name, t->id, t->attempt};
    pthread_mutex_unlock(apex__task_mu(t));
    refused = apex__error_new(APEX_E_INVALID_RESULT, &w, NULL, "%s", why);
    apex__log(&m->log, APEX_LOG_WARN, "%s.%s task %llu: result refused: %s", w.plugin, w.action,
              (unsigned long long)w.task, why);
    t = lock_open(c, "apex_ctx_set_result");
    if (!t) {
      apex_error_unref(refused);
      return;
    }
  }
  json_t *old = t->run->attempt_result;
  apex_error_t *old_refused = t->run->result_refused;
  t->run->attempt_result = result;
  t->run->result_refused = refused;
  pthread_mutex_unlock(apex__task_mu(t));
  json_decref(old); /* checked when it was set: safe to free recursively */
  apex_error_unref(old_refused);
}

static int ctx_failv(apex_ctx_t *c, int code, const char *fmt, va_list ap) {
  apex_task_t *t = lock_open(c, "apex_ctx_fail");
  if (!t) return code;
  apex__where_t w = {t->plugin->desc.name, t->action->name, t->id, t->attempt};
  pthread_mutex_unlock(apex__task_mu(t));
  /* Formatted unlocked (it allocates); stored only if the attempt is still
   * open then: a completion may have raced it. */
  apex_error_t *e = apex__error_newv(code, &w, NULL, fmt, ap);
  t = lock_open(c, "apex_ctx_fail");
  if (!t) {
    apex_error_unref(e);
    return code;
  }
  apex_error_t *old = t->run->attempt_error;
  t->run->attempt_error = e;
  pthread_mutex_unlock(apex__task_mu(t));
  apex_error_unref(old);
  return code;
}

static void ctx_complete(apex_ctx_t *c, int status) {
  apex__run_t *r = run_of(c);
  apex_manager_t *m = apex__run_m(r); /* fixed for the run state's life */
  if (status == APEX_PENDING) status = APEX_E_EXECUTION;
  int teardown = apex__run_complete(r, status, 1); /* a family may hold it: children.c */
  /* On a worker (complete() inside the handler) the worker tears down once
   * back in its loop; on a plugin's own thread, here. */
  if (teardown && !apex__pool_defer_teardown(m)) apex__manager_teardown(m, 0);
}

static void ctx_logv(apex_ctx_t *c, int level, const char *fmt, va_list ap) {
  apex__run_t *r = run_of(c);
  if (!apex__log_enabled(&apex__run_m(r)->log, level)) {
    (void)open_task(c, "apex_ctx_log"); /* misuse is still counted, lock-free */
    return;
  }
  apex_task_t *t = lock_open(c, "apex_ctx_log");
  if (!t) return;
  apex_manager_t *m = apex__run_m(r);
  /* The record's fields (src/obs/log.c), read under the lock. */
  char tid[33], sid[17];
  apex__log_where_t w = {t->id,       t->plugin->desc.name, t->action->name, t->attempt,
                        NULL,        NULL,                 APEX_LOG_ORIGIN_PLUGIN};
  if (m->tracer && apex__trace_ids(t, tid, sid)) {
    w.trace_id = tid;
    w.span_id = sid;
  }
  apex__lograte_t *rate = &((apex__plugin_t *)t->plugin)->lograte;
  pthread_mutex_unlock(apex__task_mu(t));
  uint32_t dropped;
  if (!apex__lograte_admit(rate, m->log.rate_limit, &dropped)) return; /* counted */
  if (dropped) {
    char sum[160];
    snprintf(sum, sizeof sum, "%u log records of plugin %s dropped (more than %d a second)",
             dropped, w.plugin, m->log.rate_limit);
    apex__log_where_t pw = {.plugin = w.plugin};
    apex__log_emit(&m->log, APEX_LOG_WARN, &pw, sum, dropped);
  }
  char msg[900];
  if (!fmt || vsnprintf(msg, sizeof msg, fmt, ap) < 0) return; /* glibc's crashes on NULL */
  apex__log_emit(&m->log, level, &w, msg, 0);
}

/* The open attempt's span as the parent of what the plugin calls next. */
static int ctx_traceparent(apex_ctx_t *c, char *buf, size_t size) {
  if (!buf || size < APEX_TRACEPARENT_LEN + 1) {
    (void)open_task(c, "apex_ctx_traceparent");
    return APEX_E_INVALID;
  }
  apex_task_t *t = lock_open(c, "apex_ctx_traceparent");
  if (!t) return APEX_E_INVALID;
  int rc = apex__task_m(t)->tracer ? apex__trace_traceparent(t, buf, size) : APEX_E_INVALID;
  pthread_mutex_unlock(apex__task_mu(t));
  return rc;
}

/* The tracestate that goes with ctx_traceparent's value (trace.c). */
static int ctx_tracestate(apex_ctx_t *c, char *buf, size_t size) {
  apex_task_t *t = lock_open(c, "apex_ctx_tracestate");
  if (!t) return APEX_E_INVALID;
  int rc = apex__task_m(t)->tracer ? apex__trace_tracestate(t, buf, size) : APEX_E_INVALID;
  pthread_mutex_unlock(apex__task_mu(t));
  return rc;
}

static int ctx_on_cancel(apex_ctx_t *c, apex_ctx_cancel_fn fn, void *user) {
  if (!fn) return APEX_E_INVALID;
  return apex__run_on_cancel(run_of(c), fn, user);
}

/* Checks a value a plugin hands over (heartbeat details, a partial result)
 * with the limits on values (core/value.c), on the plugin's thread, before
 * anything copies or keeps it. Returns: APEX_OK, or APEX_E_INVALID with the
 * reason logged as "<what> refused: ..." (a call after complete() is
 * counted as misuse by lock_open instead). */
static int check_handed(apex_ctx_t *c, json_t *v, const char *place, const char *what,
                        const char *call) {
  char why[320];
  apex__value_budget_t budget = APEX__VALUE_BUDGET_INIT;
  if (!v || apex__value_check(v, place, &budget, why, sizeof why) == APEX_OK) return APEX_OK;
  apex_task_t *t = lock_open(c, call);
  if (!t) return APEX_E_INVALID;
  apex_manager_t *m = apex__task_m(t);
  const char *pn = t->plugin->desc.name, *an = t->action->name; /* see reject */
  uint64_t id = t->id;
  pthread_mutex_unlock(apex__task_mu(t));
  apex__log(&m->log, APEX_LOG_WARN, "%s.%s task %llu: %s refused: %s", pn, an,
            (unsigned long long)id, what, why);
  return APEX_E_INVALID;
}

/* Details are checked here, on the plugin's thread, with the limits on
 * progress details (core/value.c), before anything copies them; the task
 * copies them under its lock only when they differ from the last
 * (task.c, "heartbeats"). */
static int ctx_heartbeat(apex_ctx_t *c, json_t *details) {
  if (check_handed(c, details, "details", "heartbeat", "apex_ctx_heartbeat") != APEX_OK)
    return APEX_E_INVALID;
  return apex__run_heartbeat(run_of(c), details);
}

static json_t *ctx_heartbeat_details(apex_ctx_t *c) {
  return apex__run_heartbeat_details(run_of(c));
}

/* The hint waits in the run state for the attempt's end, where
 * apex__retry_next reads it (retry.c says why it replaces the backoff).
 * Only finite, non-negative values are taken; anything past a year is
 * kept as a year, the cap on every retry delay (retry.c), so the float
 * never overflows. */
static int ctx_retry_after(apex_ctx_t *c, double seconds) {
  if (!(seconds >= 0.0 && seconds <= 1e300)) {
    (void)open_task(c, "apex_ctx_retry_after"); /* one after complete() is counted */
    return APEX_E_INVALID;
  }
  if (seconds > 86400.0 * 365) seconds = 86400.0 * 365;
  apex_task_t *t = lock_open(c, "apex_ctx_retry_after");
  if (!t) return APEX_E_INVALID;
  t->run->retry_after_s = (float)seconds;
  pthread_mutex_unlock(apex__task_mu(t));
  return APEX_OK;
}

/* The value is checked here, on the plugin's thread, with the limits on
 * values (core/value.c), before anything reads it further; partial.c keeps
 * it flattened, not copied (why: there). */
static int ctx_partial_result(apex_ctx_t *c, json_t *partial) {
  if (check_handed(c, partial, "partial", "partial result", "apex_ctx_partial_result") !=
      APEX_OK)
    return APEX_E_INVALID;
  return apex__run_partial(run_of(c), partial);
}

/* Checkpoints (src/store/durable.c): the state is checked here, on the
 * plugin's thread, with the limits on values, as heartbeat details are. */
static int ctx_checkpoint(apex_ctx_t *c, json_t *state) {
  if (!state) {
    (void)open_task(c, "apex_ctx_checkpoint");
    return APEX_E_INVALID;
  }
  if (check_handed(c, state, "checkpoint", "checkpoint", "apex_ctx_checkpoint") != APEX_OK)
    return APEX_E_INVALID;
  return apex__run_checkpoint(run_of(c), state);
}

static json_t *ctx_checkpoint_get(apex_ctx_t *c) { return apex__run_checkpoint_get(run_of(c)); }

void apex__host_api_init(apex_host_api_t *api) {
  memset(api, 0, sizeof *api);
  api->abi_version = APEX_PLUGIN_ABI;
  api->struct_size = sizeof *api;
  api->params = ctx_params;
  api->task_id = ctx_task_id;
  api->attempt = ctx_attempt;
  api->plugin_state = ctx_plugin_state;
  api->is_cancelled = ctx_is_cancelled;
  api->cancel_reason = ctx_cancel_reason;
  api->cancel_fd = ctx_cancel_fd;
  api->sleep_ms = ctx_sleep_ms;
  api->wait_fd = ctx_wait_fd;
  api->progress = ctx_progress;
  api->progress_update = ctx_progress_update;
  api->set_result = ctx_set_result;
  api->failv = ctx_failv;
  api->complete = ctx_complete;
  api->logv = ctx_logv;
  api->progress_node = ctx_progress_node;
  api->on_cancel = ctx_on_cancel;
  api->heartbeat = ctx_heartbeat;
  api->heartbeat_details = ctx_heartbeat_details;
  api->retry_after = ctx_retry_after;
  api->partial_result = ctx_partial_result;
  api->traceparent = ctx_traceparent;
  api->tracestate = ctx_tracestate;
  apex__children_api_init(api);
  api->checkpoint = ctx_checkpoint;
  api->checkpoint_get = ctx_checkpoint_get;
}
