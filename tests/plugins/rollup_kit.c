/* rollup_kit: a fan-out whose first child outlives the others, for
 * tests/integration/test_children_rollup_sums.c (the roll-up's running
 * sums, src/ops/children.c).
 *
 *   fan   blocking, params n, slow_ms: spawns n children of itself
 *         (action "kid"), the first with ms = slow_ms, the others with
 *         ms = 1, the one at index 7 failing; waits for all of them and
 *         succeeds. While the first child sleeps, the others end after it
 *         in spawn order: the family's first open child stays at index 0
 *         while the rest settle.
 *   kid   blocking, params ms, fail: reports 100 %, sleeps ms
 *         (cancellably), then fails APEX_E_EXECUTION "kid failed" when fail
 *         is true, else succeeds.
 *
 * Threads: handlers on workers. State: none. */
#include <stdio.h>

#include "apex/plugin.h"

static int kid(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  apex_ctx_progress(ctx, 100.0, "done");
  if (apex_ctx_sleep_ms(ctx, (uint64_t)json_integer_value(json_object_get(p, "ms"))) != APEX_OK)
    return apex_ctx_fail(ctx, APEX_E_CANCELLED, "kid cancelled");
  if (json_is_true(json_object_get(p, "fail"))) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "kid failed");
  return APEX_OK;
}

static int fan(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  json_int_t n = json_integer_value(json_object_get(p, "n"));
  json_int_t slow = json_integer_value(json_object_get(p, "slow_ms"));
  for (json_int_t i = 0; i < n; i++) {
    json_t *cp = json_pack("{s:I, s:b}", "ms", i == 0 ? slow : (json_int_t)1, "fail", i == 7);
    apex_child_t *c = NULL;
    int rc = apex_ctx_spawn(ctx, "rollup_kit", "kid", cp, NULL, &c);
    json_decref(cp);
    if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "spawn %lld: %d", (long long)i, rc);
  }
  return apex_ctx_wait_children(ctx, NULL, 0, -1);
}

static const apex_param_spec_t k_fan[] = {
    {"n", APEX_PARAM_INT, 1, NULL, 1, 0, 1, 0, "children"},
    {"slow_ms", APEX_PARAM_INT, 1, NULL, 1, 0, 0, 0, "the first child's sleep"},
};
static const apex_param_spec_t k_kid[] = {
    {"ms", APEX_PARAM_INT, 1, NULL, 1, 0, 0, 0, "sleep"},
    {"fail", APEX_PARAM_BOOL, 0, "false", 0, 0, 0, 0, "fail after the sleep"},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "fan", .handler = fan, .params = k_fan, .n_params = 2},
    {.name = "kid", .handler = kid, .params = k_kid, .n_params = 2},
};

static const apex_plugin_desc_t k_plugin = {APEX_PLUGIN_DESC_INIT,
                                            .name = "rollup_kit",
                                            .version = "1.0.0",
                                            .description = "roll-up test actions",
                                            .actions = k_actions,
                                            .n_actions = sizeof k_actions / sizeof k_actions[0]};

APEX_PLUGIN_DEFINE(k_plugin)
