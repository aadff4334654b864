/* batch_kit: a test plugin for `apex batch` (tests/integration/test_cli_batch.c)
 * that lets a test check, from the results alone, that the scheduler's
 * limits held while the command ran its lines.
 *
 *   hold   sleeps `ms` (cancellable), counting the attempts running at
 *          once with atomics: over all of the plugin's tasks and per
 *          `group` (0-15, a stand-in for a concurrency key, which a handler
 *          cannot see). Returns {"max_all", "max_group", "start_ms", "line"}:
 *          the most seen running at once so far (this one included), when
 *          this attempt started (CLOCK_MONOTONIC, ms) and the `line` param
 *          echoed. With `fail` true it fails (execution) after the sleep;
 *          `progress` true reports 50 % halfway.
 *
 * The counters live as long as the process (one `apex batch` run), so each
 * result's maxima cover every attempt that started before it ended; the
 * largest over all results is the most that ever ran at once.
 *
 * Threads: handlers run on host workers; the counters are atomics, nothing
 * else is shared. What can fail: out of memory building the result
 * (APEX_E_NOMEM); the sleep ends early on cancel (APEX_E_CANCELLED). */
#define _POSIX_C_SOURCE 200809L

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "apex/plugin.h"

#define N_GROUPS 16

static atomic_int g_running_all, g_max_all;
static atomic_int g_running[N_GROUPS], g_max[N_GROUPS];

static void raise_max(atomic_int *max, int seen) {
  int cur = atomic_load(max);
  while (seen > cur && !atomic_compare_exchange_weak(max, &cur, seen)) {
  }
}

static json_int_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (json_int_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int hold(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  json_int_t ms = json_integer_value(json_object_get(p, "ms"));
  int group = (int)json_integer_value(json_object_get(p, "group"));
  json_int_t start = mono_ms();
  raise_max(&g_max_all, atomic_fetch_add(&g_running_all, 1) + 1);
  raise_max(&g_max[group], atomic_fetch_add(&g_running[group], 1) + 1);
  int rc = APEX_OK;
  if (json_is_true(json_object_get(p, "progress"))) {
    rc = apex_ctx_sleep_ms(ctx, (uint64_t)ms / 2);
    if (rc == APEX_OK) apex_ctx_progress(ctx, 50, "halfway");
    if (rc == APEX_OK) rc = apex_ctx_sleep_ms(ctx, (uint64_t)(ms - ms / 2));
  } else {
    rc = apex_ctx_sleep_ms(ctx, (uint64_t)ms);
  }
  /* Read before leaving, so the result covers this attempt's own window. */
  int max_all = atomic_load(&g_max_all), max_group = atomic_load(&g_max[group]);
  atomic_fetch_sub(&g_running[group], 1);
  atomic_fetch_sub(&g_running_all, 1);
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "hold: cancelled while sleeping");
  if (json_is_true(json_object_get(p, "fail")))
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "hold: failing on purpose");
  json_t *r = json_pack("{s:i, s:i, s:I, s:O}", "max_all", max_all, "max_group", max_group,
                        "start_ms", start, "line", json_object_get(p, "line"));
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

static const apex_param_spec_t k_hold[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1, .min = 0,
     .has_max = 1, .max = 600000},
    {.name = "group", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1, .min = 0,
     .has_max = 1, .max = N_GROUPS - 1},
    {.name = "fail", .type = APEX_PARAM_BOOL, .default_json = "false"},
    {.name = "progress", .type = APEX_PARAM_BOOL, .default_json = "false"},
    {.name = "line", .type = APEX_PARAM_INT, .default_json = "0"},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "hold", .handler = hold, .kind = APEX_ACTION_BLOCKING, .params = k_hold,
     .n_params = sizeof k_hold / sizeof k_hold[0]},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "batch_kit",
    .version = "0.0.1",
    .description = "Test plugin for apex batch: records how many ran at once",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
