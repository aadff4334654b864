/* ops_kit: actions for the operation-group and operation-manager tests
 * (tests/integration/test_ops_*.c).
 *
 *   quick  returns at once with {"i": i}
 *   park   deferred: reports `pct` (when >= 0) with message `msg`, then
 *          holds no worker until its task is cancelled; its cancel callback
 *          completes it APEX_E_CANCELLED. A pending park is a live operation
 *          that costs nothing and ends only by a cancel (or shutdown).
 *
 * Threads: handlers run on workers; park's completion runs on the
 * cancelling thread (apex_ctx_on_cancel). Nothing can fail but a
 * registration refused, which fails the attempt. */
#include "apex/plugin.h"

static int quick(apex_ctx_t *ctx) {
  json_t *i = json_object_get(apex_ctx_params(ctx), "i");
  apex_ctx_set_result(ctx, json_pack("{s:I}", "i", i ? json_integer_value(i) : 0));
  return APEX_OK;
}

static void park_cancelled(apex_ctx_t *ctx, void *user) {
  (void)user;
  apex_ctx_complete(ctx, APEX_E_CANCELLED);
}

static int park(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  double pct = json_number_value(json_object_get(p, "pct"));
  const char *msg = json_string_value(json_object_get(p, "msg"));
  if (pct >= 0) apex_ctx_progress(ctx, pct, msg && *msg ? msg : NULL);
  int rc = apex_ctx_on_cancel(ctx, park_cancelled, NULL);
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "park: on_cancel refused");
  return APEX_PENDING;
}

static const apex_param_spec_t k_quick[] = {
    {.name = "i", .type = APEX_PARAM_INT, .default_json = "0"},
};
static const apex_param_spec_t k_park[] = {
    {.name = "pct", .type = APEX_PARAM_NUMBER, .default_json = "-1"},
    {.name = "msg", .type = APEX_PARAM_STRING, .default_json = "\"\""},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const apex_action_desc_t k_actions[] = {
    {.name = "quick", .description = "returns at once", .handler = quick,
     .kind = APEX_ACTION_BLOCKING, .params = k_quick, .n_params = N(k_quick)},
    {.name = "park", .description = "pending until cancelled", .handler = park,
     .kind = APEX_ACTION_DEFERRED, .params = k_park, .n_params = N(k_park)},
};

static const apex_plugin_desc_t k_plugin = {
    .abi_version = APEX_PLUGIN_ABI,
    .struct_size = sizeof(apex_plugin_desc_t),
    .name = "ops_kit",
    .version = "0.0.1",
    .description = "Actions for the operation group and manager tests",
    .actions = k_actions,
    .n_actions = N(k_actions),
};

APEX_PLUGIN_DEFINE(k_plugin)
