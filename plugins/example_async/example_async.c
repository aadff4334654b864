/* example_async: the plugin that ships as the worked example of the plugin
 * API (plan task 3.4.1). Two actions:
 *
 *   long_task      blocking: `steps` steps of `step_ms` each, progress after
 *                  every step (details, optional named sub-tasks, milestones)
 *                  and the steps done as its partial result,
 *                  cancellable between and during steps; can fail its first
 *                  attempts on purpose (to show retries) or ignore its token
 *                  on purpose (to show timeouts of a misbehaving handler).
 *   deferred_task  deferred: returns APEX_PENDING at once and completes
 *                  from a thread of its own after `delay_ms`.
 *
 * Threads: long_task runs on a host worker. deferred_task's handler runs on a
 * worker and starts one thread per task; those threads are joinable, not
 * detached, and tracked in the plugin state (a list under state->mu) so that
 * shutdown can join every one before the host dlcloses us: a detached thread
 * still executing its last instructions after apex_ctx_complete() would run
 * unmapped code. Finished threads are reaped at the next start.
 *
 * What can fail: out of memory building JSON (the task fails with
 * APEX_E_NOMEM), pthread_create (APEX_E_EXECUTION). Cancellation ends a task
 * with APEX_E_CANCELLED. Nothing here aborts or prints.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "apex/plugin.h"

/* ------------------------------------------------------------ plugin state */

typedef struct ea_thread {
  pthread_t tid;
  int done; /* set under state->mu after the thread's last ctx call */
  apex_ctx_t *ctx;
  struct ea_state *state;
  struct ea_thread *next;
} ea_thread_t;

typedef struct ea_state {
  pthread_mutex_t mu;
  ea_thread_t *threads; /* started and not yet joined */
} ea_state_t;

static int ea_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  ea_state_t *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(why, why_len, "example_async: out of memory for plugin state");
    return -1;
  }
  int rc = pthread_mutex_init(&s->mu, NULL);
  if (rc != 0) {
    snprintf(why, why_len, "example_async: pthread_mutex_init: %s", strerror(rc));
    free(s);
    return -1;
  }
  *state = s;
  return 0;
}

/* The host calls this after every task completed, so each thread is at most
 * returning from its function: the joins are short. */
static void ea_shutdown(void *state) {
  ea_state_t *s = state;
  if (!s) return;
  ea_thread_t *t = s->threads;
  while (t) {
    ea_thread_t *next = t->next;
    pthread_join(t->tid, NULL);
    free(t);
    t = next;
  }
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* Joins the threads that already finished. Called with s->mu held; a thread
 * marked done has released s->mu for the last time, so the join cannot wait
 * on us. */
static void ea_reap_locked(ea_state_t *s) {
  ea_thread_t **pp = &s->threads;
  while (*pp) {
    ea_thread_t *t = *pp;
    if (t->done) {
      *pp = t->next;
      pthread_join(t->tid, NULL);
      free(t);
    } else {
      pp = &t->next;
    }
  }
}

/* ---------------------------------------------------------------- helpers */

static int64_t param_int(apex_ctx_t *ctx, const char *name, int64_t dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static int param_bool(apex_ctx_t *ctx, const char *name, int dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* Sleeps without looking at any token: what a badly written handler does. */
static void sleep_uncancellable(uint64_t ms) {
  struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Names read better than numbers in a progress view; past the list, "part N". */
static const char *const k_sub_names[] = {"fetch", "parse", "transform", "validate",
                                          "index", "store", "verify",    "publish"};
#define N_SUB_NAMES (sizeof k_sub_names / sizeof k_sub_names[0])

static void sub_name(int j, char *buf, size_t len) {
  if ((size_t)j < N_SUB_NAMES)
    snprintf(buf, len, "%s", k_sub_names[j]);
  else
    snprintf(buf, len, "part %d", j + 1);
}

/* Sub-task j covers steps [first, end) of `steps`; the split is even to
 * within one step. */
static int64_t sub_first(int j, int n, int64_t steps) { return steps * j / n; }

/* Returns: a new array of n sub-task objects for `done` of `steps` steps
 * finished, or NULL on no memory. */
static json_t *sub_tasks_json(int n, int64_t done, int64_t steps) {
  json_t *arr = json_array();
  if (!arr) return NULL;
  for (int j = 0; j < n; j++) {
    int64_t first = sub_first(j, n, steps), end = sub_first(j + 1, n, steps);
    int64_t mine = done <= first ? 0 : (done >= end ? end - first : done - first);
    double pct = end > first ? 100.0 * (double)mine / (double)(end - first) : 100.0;
    char name[32];
    sub_name(j, name, sizeof name);
    /* A sub-task whose steps have not begun is "pending", not "running". */
    const char *st = mine == end - first ? "completed" : mine == 0 && done < first ? "pending"
                                                                                  : "running";
    json_t *o = json_pack("{s:s, s:f, s:s, s:i}", "name", name, "percentage", pct, "status", st,
                          "weight", 1);
    if (!o || json_array_append_new(arr, o) != 0) {
      json_decref(arr);
      return NULL;
    }
  }
  return arr;
}

/* Sends one update; details and sub_tasks are built here so every call site
 * reports the same shape. Returns: APEX_OK or APEX_E_NOMEM. A rejected
 * update (the host's validation) is not this task's failure. */
static int report(apex_ctx_t *ctx, int64_t done, int64_t steps, int n_sub, const char *status,
                  const char *message) {
  json_t *details = json_pack("{s:I, s:I, s:I}", "step", (json_int_t)done, "steps",
                              (json_int_t)steps, "attempt", (json_int_t)apex_ctx_attempt(ctx));
  json_t *subs = n_sub > 0 ? sub_tasks_json(n_sub, done, steps) : NULL;
  if (!details || (n_sub > 0 && !subs)) {
    json_decref(details);
    json_decref(subs);
    return APEX_E_NOMEM;
  }
  apex_progress_update_t u = {
      .percentage = steps > 0 ? 100.0 * (double)done / (double)steps : 100.0,
      .message = message,
      .status = status,
      .details = details,
      .sub_tasks = subs,
  };
  (void)apex_ctx_progress_update(ctx, &u);
  json_decref(details);
  json_decref(subs);
  return APEX_OK;
}

/* ------------------------------------------------------------- long_task */

/* Publishes {"steps_done": done, "of": steps} as the task's partial result
 * (a host without apex_ctx_partial_result just does not get it). Returns:
 * APEX_OK, or APEX_E_NOMEM building the value. */
static int publish_partial(apex_ctx_t *ctx, int64_t done, int64_t steps) {
#ifdef APEX_HAVE_CTX_PARTIAL_RESULT
  json_t *p = json_pack("{s:I, s:I}", "steps_done", (json_int_t)done, "of", (json_int_t)steps);
  if (!p) return APEX_E_NOMEM;
  (void)apex_ctx_partial_result(ctx, p); /* borrowed: ours to free */
  json_decref(p);
#else
  (void)ctx;
  (void)done;
  (void)steps;
#endif
  return APEX_OK;
}

static int long_task(apex_ctx_t *ctx) {
  int64_t steps = param_int(ctx, "steps", 10);
  int64_t step_ms = param_int(ctx, "step_ms", 100);
  int64_t fail_attempts = param_int(ctx, "fail_attempts", 0);
  int ignore_cancel = param_bool(ctx, "ignore_cancel", 0);
  int64_t n_sub = param_int(ctx, "sub_tasks", 0);
  uint32_t attempt = apex_ctx_attempt(ctx);
  char msg[128];

  /* More sub-tasks than steps would leave some with nothing to do. */
  if (n_sub > steps) n_sub = steps;

  if (steps == 0) {
    if (attempt <= (uint64_t)fail_attempts)
      return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "attempt %u of the first %lld fails on purpose",
                           (unsigned)attempt, (long long)fail_attempts);
    if (report(ctx, 0, 0, 0, "completed", "nothing to do") != APEX_OK)
      return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building progress");
  }

  for (int64_t i = 0; i < steps; i++) {
    if (ignore_cancel) {
      sleep_uncancellable((uint64_t)step_ms);
    } else if (apex_ctx_sleep_ms(ctx, (uint64_t)step_ms) == APEX_E_CANCELLED ||
               apex_ctx_is_cancelled(ctx)) {
      return apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled after step %lld", (long long)i);
    }
    int64_t done = i + 1;

    /* The steps done so far, before the progress that says so: a host that
     * saw this step's progress finds at least this partial when the task
     * stops (it is the result a cancel or timeout leaves). Published per
     * step; the host coalesces. */
    if (publish_partial(ctx, done, steps) != APEX_OK)
      return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the partial result");

    /* A sub-task whose last step this was gets its own milestone, which the
     * host never coalesces away. */
    for (int j = 0; j < (int)n_sub; j++) {
      if (sub_first(j + 1, (int)n_sub, steps) != done) continue;
      char name[32];
      sub_name(j, name, sizeof name);
      snprintf(msg, sizeof msg, "sub-task %s done", name);
      if (report(ctx, done, steps, (int)n_sub, "milestone_reached", msg) != APEX_OK)
        return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building progress");
    }
    snprintf(msg, sizeof msg, "step %lld/%lld", (long long)done, (long long)steps);
    if (report(ctx, done, steps, (int)n_sub, done == steps ? "completed" : "running", msg) !=
        APEX_OK)
      return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building progress");

    if (done == 1 && attempt <= (uint64_t)fail_attempts)
      return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "attempt %u of the first %lld fails on purpose",
                           (unsigned)attempt, (long long)fail_attempts);
  }

  json_t *result = json_pack("{s:I, s:I}", "steps", (json_int_t)steps, "attempt",
                             (json_int_t)attempt);
  if (!result) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result");
  apex_ctx_set_result(ctx, result);
  return APEX_OK;
}

/* --------------------------------------------------------- deferred_task */

static void *deferred_main(void *arg) {
  ea_thread_t *t = arg;
  apex_ctx_t *ctx = t->ctx;
  int64_t delay_ms = param_int(ctx, "delay_ms", 100);

  if (apex_ctx_sleep_ms(ctx, (uint64_t)delay_ms) == APEX_E_CANCELLED) {
    const char *why = apex_ctx_cancel_reason(ctx);
    apex_ctx_complete(ctx, apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled (%s) while waiting",
                                         why ? why : "unknown"));
  } else {
    json_t *result = json_pack("{s:I}", "delayed_ms", (json_int_t)delay_ms);
    if (!result) {
      apex_ctx_complete(ctx, apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result"));
    } else {
      apex_ctx_set_result(ctx, result);
      apex_ctx_complete(ctx, APEX_OK);
    }
  }
  /* ctx is gone now; only our own node is touched from here on. */
  pthread_mutex_lock(&t->state->mu);
  t->done = 1;
  pthread_mutex_unlock(&t->state->mu);
  return NULL;
}

static int deferred_task(apex_ctx_t *ctx) {
  ea_state_t *s = apex_ctx_plugin_state(ctx);
  if (!s) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "example_async: plugin state missing");
  ea_thread_t *t = calloc(1, sizeof *t);
  if (!t) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory starting the deferred thread");
  t->ctx = ctx;
  t->state = s;

  pthread_mutex_lock(&s->mu);
  ea_reap_locked(s);
  int rc = pthread_create(&t->tid, NULL, deferred_main, t);
  if (rc != 0) {
    pthread_mutex_unlock(&s->mu);
    free(t);
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot start the deferred thread: %s",
                         strerror(rc));
  }
  t->next = s->threads;
  s->threads = t;
  pthread_mutex_unlock(&s->mu);
  /* The thread may already have completed the ctx: do not touch it again. */
  return APEX_PENDING;
}

/* ------------------------------------------------------------ descriptor */

static const apex_param_spec_t k_long_task_params[] = {
    {.name = "steps", .type = APEX_PARAM_INT, .default_json = "10", .has_min = 1, .min = 0,
     .has_max = 1, .max = 1000000, .description = "number of steps"},
    {.name = "step_ms", .type = APEX_PARAM_INT, .default_json = "100", .has_min = 1, .min = 0,
     .has_max = 1, .max = 3600000, .description = "milliseconds each step sleeps"},
    {.name = "fail_attempts", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1,
     .min = 0, .description = "attempts 1..N fail with a transient error after one step"},
    {.name = "ignore_cancel", .type = APEX_PARAM_BOOL, .default_json = "false",
     .description = "misbehave: never look at the cancellation token"},
    {.name = "sub_tasks", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1, .min = 0,
     .has_max = 1, .max = 64, .description = "split the steps into this many named sub-tasks"},
};

static const apex_param_spec_t k_deferred_params[] = {
    {.name = "delay_ms", .type = APEX_PARAM_INT, .default_json = "100", .has_min = 1, .min = 0,
     .description = "milliseconds before the task completes"},
};

static const apex_action_desc_t k_actions[] = {
    {
        .name = "long_task",
        .description = "Sleeps through `steps` steps of `step_ms`, reporting progress after each; "
                       "cancellable, optionally failing its first attempts or ignoring cancel",
        .handler = long_task,
        .kind = APEX_ACTION_BLOCKING,
        .params = k_long_task_params,
        .n_params = sizeof k_long_task_params / sizeof k_long_task_params[0],
        .default_timeout_s = 0,
        .default_retry = {.max_attempts = 1, .initial_interval_s = 0.05,
                          .backoff_coefficient = 2.0},
    },
    {
        .name = "deferred_task",
        .description = "Returns at once and completes from its own thread after `delay_ms`",
        .handler = deferred_task,
        .kind = APEX_ACTION_DEFERRED,
        .params = k_deferred_params,
        .n_params = sizeof k_deferred_params / sizeof k_deferred_params[0],
        .default_timeout_s = 0,
        .default_retry = {.max_attempts = 1, .initial_interval_s = 0.05,
                          .backoff_coefficient = 2.0},
    },
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "example_async",
    .version = "1.0.0",
    .description = "Example long-running actions: progress, cancellation, retries, deferral",
    .init = ea_init,
    .shutdown = ea_shutdown,
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
