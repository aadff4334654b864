/* retry_hint: a test plugin for apex_ctx_retry_after (include/apex/plugin.h).
 *
 *   fail   fails with `code` ("transient", "execution" or "crashed") until
 *          attempt == succeed_on (0: never succeeds), giving the hint
 *          `hint_s` (absent: none) before each failure, or only on the
 *          attempts listed in `hint_on` when that is given. On success the
 *          result is {"attempt": N, "waited_ms": W}, W the time from the
 *          end of the last failed attempt to this one's start, by this
 *          plugin's clock (-1: no earlier attempt). With deferred=true it does the same from
 *          inside its handler, through apex_ctx_complete.
 *   bad    calls apex_ctx_retry_after with -1, NaN and +inf and returns
 *          their codes as {"neg", "nan", "inf"}; then gives a valid hint
 *          of 0 and reports its code as "zero".
 *
 * Threads: handlers run on host workers; the table of attempt end times
 * is guarded by its mutex.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "apex/plugin.h"

static int code_of(const char *name) {
  if (name && strcmp(name, "execution") == 0) return APEX_E_EXECUTION;
  if (name && strcmp(name, "crashed") == 0) return APEX_E_CRASHED;
  return APEX_E_TRANSIENT;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* When each task's last failed attempt ended (by this plugin's clock), so
 * the next attempt can tell how long it waited: a few slots, reused by
 * task id (tests run a handful of tasks at a time). */
#define SLOTS 64
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
  uint64_t task, end_ns;
} g_ends[SLOTS];

static void note_end(uint64_t task) {
  pthread_mutex_lock(&g_mu);
  g_ends[task % SLOTS].task = task;
  g_ends[task % SLOTS].end_ns = now_ns();
  pthread_mutex_unlock(&g_mu);
}

/* Returns: ms since task's last failed attempt ended, or -1: none. */
static double waited_ms(uint64_t task) {
  double ms = -1;
  pthread_mutex_lock(&g_mu);
  if (g_ends[task % SLOTS].task == task)
    ms = (double)(now_ns() - g_ends[task % SLOTS].end_ns) / 1e6;
  pthread_mutex_unlock(&g_mu);
  return ms;
}

/* One attempt's outcome: APEX_OK with a result, or the failure (after the
 * hint, when this attempt gives one). */
static int attempt_outcome(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  uint32_t attempt = apex_ctx_attempt(ctx);
  uint64_t task = apex_ctx_task_id(ctx);
  json_int_t succeed_on = json_integer_value(json_object_get(p, "succeed_on"));
  if (succeed_on > 0 && (json_int_t)attempt >= succeed_on) {
    apex_ctx_set_result(ctx, json_pack("{s:i, s:f}", "attempt", (int)attempt, "waited_ms",
                                       waited_ms(task)));
    return APEX_OK;
  }
  json_t *hint = json_object_get(p, "hint_s");
  json_t *on = json_object_get(p, "hint_on");
  int give = json_is_number(hint);
  if (give && json_is_array(on)) {
    give = 0;
    size_t i;
    json_t *v;
    json_array_foreach(on, i, v) if (json_integer_value(v) == (json_int_t)attempt) give = 1;
  }
  if (give) {
    int rc = apex_ctx_retry_after(ctx, json_number_value(hint));
    if (rc != APEX_OK) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "retry_after refused: %d", rc);
  }
  int code = code_of(json_string_value(json_object_get(p, "code")));
  int rc = apex_ctx_fail(ctx, code, "attempt %u fails on purpose", attempt);
  note_end(task); /* the last thing before the attempt ends */
  return rc;
}

static int fail(apex_ctx_t *ctx) {
  if (!json_is_true(json_object_get(apex_ctx_params(ctx), "deferred"))) return attempt_outcome(ctx);
  /* Completed from inside the handler (legal: the ctx is not touched
   * after): the hint goes through apex_ctx_complete's path. */
  apex_ctx_complete(ctx, attempt_outcome(ctx));
  return APEX_PENDING;
}

static int bad(apex_ctx_t *ctx) {
  int neg = apex_ctx_retry_after(ctx, -1.0);
  int nan_rc = apex_ctx_retry_after(ctx, NAN);
  int inf = apex_ctx_retry_after(ctx, INFINITY);
  int zero = apex_ctx_retry_after(ctx, 0.0);
  apex_ctx_set_result(ctx, json_pack("{s:i, s:i, s:i, s:i}", "neg", neg, "nan", nan_rc, "inf", inf,
                                     "zero", zero));
  return APEX_OK;
}

static const apex_param_spec_t k_fail_params[] = {
    {.name = "succeed_on", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1, .min = 0},
    {.name = "hint_s", .type = APEX_PARAM_NUMBER, .description = "the hint; absent: none"},
    {.name = "hint_on", .type = APEX_PARAM_ARRAY, .description = "attempts that give it"},
    {.name = "code", .type = APEX_PARAM_STRING, .default_json = "\"transient\""},
    {.name = "deferred", .type = APEX_PARAM_BOOL, .default_json = "false"},
};

/* The default policy: 5 attempts, a 60 s backoff, so a test that sees a
 * retry within seconds knows the hint, not the policy, set its delay. */
static const apex_action_desc_t k_actions[] = {
    {.name = "fail",
     .description = "fails with a retry hint until attempt == succeed_on",
     .handler = fail,
     .kind = APEX_ACTION_DEFERRED,
     .params = k_fail_params,
     .n_params = sizeof k_fail_params / sizeof k_fail_params[0],
     .default_retry = {.max_attempts = 5, .initial_interval_s = 60, .backoff_coefficient = 1}},
    {.name = "bad",
     .description = "invalid hints; result = their codes",
     .handler = bad,
     .kind = APEX_ACTION_BLOCKING},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "retry_hint",
    .version = "1.0.0",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
