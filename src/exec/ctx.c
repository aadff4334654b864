/* The host services a plugin reaches through ctx->api (include/apex/plugin.h).
 *
 * A ctx is the head of its task's run state (internal.h), so these calls
 * are a pointer hop and a few field reads. They run on whatever thread the plugin calls from: a worker
 * running a blocking handler, or any thread of a deferred plugin. The ctx
 * stays valid while its attempt is open (see task.c, the "life" reference),
 * so every call here is safe until the handler returns or complete() runs;
 * a call after the task ended is accepted and ignored.
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

static json_t *ctx_params(apex_ctx_t *c) {
  apex_task_t *t = APEX__TASK_OF(c);
  json_t *p = atomic_load_explicit(&t->params, memory_order_acquire);
  if (p) return p;
  json_t *fresh = json_object(); /* NULL on no memory: the handler sees NULL */
  if (!fresh || atomic_compare_exchange_strong(&t->params, &p, fresh)) return fresh;
  json_decref(fresh); /* another thread of the handler's made it first */
  return p;
}
static uint64_t ctx_task_id(apex_ctx_t *c) { return APEX__TASK_OF(c)->id; }

static uint32_t ctx_attempt(apex_ctx_t *c) {
  return apex_task_attempts(APEX__TASK_OF(c));
}

static void *ctx_plugin_state(apex_ctx_t *c) { return APEX__TASK_OF(c)->plugin->state; }

static int ctx_is_cancelled(apex_ctx_t *c) {
  return apex_token_is_cancelled(apex__task_token_peek(APEX__TASK_OF(c)));
}

static const char *ctx_cancel_reason(apex_ctx_t *c) {
  return apex_token_reason(apex__task_token_peek(APEX__TASK_OF(c)));
}

static int ctx_cancel_fd(apex_ctx_t *c) {
  apex_token_t *tok = apex__task_token(APEX__TASK_OF(c));
  return tok ? apex_token_fd(tok) : APEX_E_NOMEM;
}

static int ctx_sleep_ms(apex_ctx_t *c, uint64_t ms) {
  int64_t t = ms > INT64_MAX / 2 ? INT64_MAX / 2 : (int64_t)ms;
  apex_token_t *tok = apex__task_token(APEX__TASK_OF(c));
  if (!tok) { /* no memory for a token: still sleep, uncancellably */
    struct timespec ts = {(time_t)(t / 1000), (long)(t % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return APEX_OK;
  }
  return apex_token_wait(tok, t) == APEX_E_CANCELLED ? APEX_E_CANCELLED : APEX_OK;
}

static int ctx_wait_fd(apex_ctx_t *c, int fd, short events, int64_t timeout_ms) {
  if (fd < 0) return APEX_E_INVALID;
  apex_token_t *tok = apex__task_token(APEX__TASK_OF(c));
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

static int reject(apex_task_t *t, const char *why) {
  atomic_fetch_add_explicit(&apex__task_m(t)->st_prog_rejected, 1, memory_order_relaxed);
  if (apex__log_enabled(&apex__task_m(t)->log, APEX_LOG_DEBUG))
    apex__log(&apex__task_m(t)->log, APEX_LOG_DEBUG, "%s.%s task %llu: progress rejected: %s",
              t->plugin->desc.name, t->action->name, (unsigned long long)t->id, why);
  return APEX_E_INVALID;
}

/* The fast path's rejection: the reason is the validator's own, so a
 * plugin reads the same words whichever call it made; it is worked out only
 * here, off the path of a valid report. */
static int reject_short(apex_task_t *t, double pct, const char *msg) {
  char why[256] = "";
  if (apex__log_enabled(&apex__task_m(t)->log, APEX_LOG_DEBUG)) {
    apex_progress_update_t u = {.percentage = pct, .message = msg};
    apex_progress_update_validate(&u, why, sizeof why);
  }
  return reject(t, why);
}

static int ctx_progress(apex_ctx_t *c, double pct, const char *msg) {
  apex_task_t *t = APEX__TASK_OF(c);
  if (!(pct >= 0.0 && pct <= 100.0)) return reject_short(t, pct, msg);
  size_t len = 0;
  if (msg) {
    len = strnlen(msg, APEX_PROGRESS_MESSAGE_MAX + 1);
    if (len > APEX_PROGRESS_MESSAGE_MAX || !apex__utf8_valid(msg, len))
      return reject_short(t, pct, msg);
  }
  return apex__task_report(t, pct, msg, len, NULL, NULL, NULL);
}

static int ctx_progress_update(apex_ctx_t *c, const apex_progress_update_t *u) {
  apex_task_t *t = APEX__TASK_OF(c);
  char why[256];
  if (apex_progress_update_validate(u, why, sizeof why) != APEX_OK) return reject(t, why);
  json_t *details = u->details ? json_deep_copy(u->details) : NULL;
  json_t *subs = u->sub_tasks ? json_deep_copy(u->sub_tasks) : NULL;
  if ((u->details && !details) || (u->sub_tasks && !subs)) {
    json_decref(details);
    json_decref(subs);
    return APEX_E_NOMEM;
  }
  return apex__task_report(t, u->percentage, u->message, u->message ? strlen(u->message) : 0,
                           u->status, details, subs);
}

/* The result is checked here, on the plugin's thread, so its cost lands on
 * the plugin and nothing past this point (a copy for the host, the CLI's
 * printing, the task's release) ever walks a value that could overflow a
 * stack or never end. A refused value was taken, so it is ours to free,
 * without recursion; the refusal waits in the run state for the attempt's
 * end (task.c), which fails the attempt with it if the handler reports
 * success. A later set_result replaces it, as it replaces a result. */
static void ctx_set_result(apex_ctx_t *c, json_t *result) {
  apex_task_t *t = APEX__TASK_OF(c);
  apex_manager_t *m = apex__task_m(t);
  pthread_mutex_t *mu = apex__task_mu(t);
  apex_error_t *refused = NULL;
  char why[320];
  apex__value_budget_t budget = APEX__VALUE_BUDGET_INIT;
  if (result && apex__value_check(result, "result", &budget, why, sizeof why) != APEX_OK) {
    apex__value_free(result);
    result = NULL;
    pthread_mutex_lock(mu);
    apex__where_t w = {t->plugin->desc.name, t->action->name, t->id, t->attempt};
    pthread_mutex_unlock(mu);
    refused = apex__error_new(APEX_E_INVALID_RESULT, &w, NULL, "%s", why);
    apex__log(&m->log, APEX_LOG_WARN, "%s.%s task %llu: result refused: %s", t->plugin->desc.name,
              t->action->name, (unsigned long long)t->id, why);
  }
  pthread_mutex_lock(mu);
  json_t *old = t->run->attempt_result;
  apex_error_t *old_refused = t->run->result_refused;
  t->run->attempt_result = result;
  t->run->result_refused = refused;
  pthread_mutex_unlock(mu);
  json_decref(old); /* checked when it was set: safe to free recursively */
  apex_error_unref(old_refused);
}

static int ctx_failv(apex_ctx_t *c, int code, const char *fmt, va_list ap) {
  apex_task_t *t = APEX__TASK_OF(c);
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  apex__where_t w = {t->plugin->desc.name, t->action->name, t->id, t->attempt};
  pthread_mutex_unlock(mu);
  apex_error_t *e = apex__error_newv(code, &w, NULL, fmt, ap);
  pthread_mutex_lock(mu);
  apex_error_t *old = t->run->attempt_error;
  t->run->attempt_error = e;
  pthread_mutex_unlock(mu);
  apex_error_unref(old);
  return code;
}

static void ctx_complete(apex_ctx_t *c, int status) {
  apex_task_t *t = APEX__TASK_OF(c);
  apex_manager_t *m = apex__task_m(t);
  if (t->action->kind != APEX_ACTION_DEFERRED) {
    apex__log(&m->log, APEX_LOG_WARN,
              "%s.%s: complete() called by a blocking handler; it finishes by returning",
              t->plugin->desc.name, t->action->name);
    return;
  }
  if (status == APEX_PENDING) status = APEX_E_EXECUTION;
  /* The life reference may go inside attempt_end; keep t readable. */
  apex__task_ref(t);
  int teardown = apex__task_attempt_end(t, status);
  apex__task_unref(t);
  /* On a worker (complete() inside the handler) the worker tears down once
   * back in its loop; on a plugin's own thread, here. */
  if (teardown && !apex__pool_defer_teardown(m)) apex__manager_teardown(m, 0);
}

static void ctx_logv(apex_ctx_t *c, int level, const char *fmt, va_list ap) {
  apex_task_t *t = APEX__TASK_OF(c);
  if (!apex__log_enabled(&apex__task_m(t)->log, level)) return;
  char msg[900];
  if (vsnprintf(msg, sizeof msg, fmt, ap) < 0) return;
  apex__log(&apex__task_m(t)->log, level, "%s.%s task %llu: %s", t->plugin->desc.name, t->action->name,
            (unsigned long long)t->id, msg);
}

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
}
