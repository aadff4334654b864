/* Test plugin "durable_kit" (version 1.0.0) for durable tasks
 * (tests/unit/test_durable.c, bench W13/W14):
 *   noop       idempotent; returns {"ok": true}
 *   steps      resumable: params {"n", "fail_at"}; starts at the step its
 *              checkpoint names ({"step": k}, 0 without one), checkpoints
 *              after each step, fails transiently once at step fail_at
 *              (first attempt only, 0: never); returns {"from": first
 *              step it ran, "ran": steps it ran, "attempt": n}
 *   idem       idempotent; returns {"checkpoint": what
 *              apex_ctx_checkpoint_get gave, or null}
 *   plain      neither: returns {"ran": true}
 *   wait       idempotent: waits to be cancelled (or "ms" elapse)
 *   hold       neither: as wait
 *   cp_bad     tries bad checkpoints; returns the codes:
 *              {"null", "huge", "bad_utf8", "ok"}
 *   cp_loop    params {"n"}: n checkpoints in a loop (W14); returns
 *              {"n": n, "failed": k} */
#include <stdlib.h>
#include <string.h>

#include "apex/plugin.h"

static int noop(apex_ctx_t *ctx) {
  apex_ctx_set_result(ctx, json_pack("{s:b}", "ok", 1));
  return APEX_OK;
}

static int steps(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int n = (int)json_integer_value(json_object_get(p, "n"));
  int fail_at = (int)json_integer_value(json_object_get(p, "fail_at"));
  json_t *cp = apex_ctx_checkpoint_get(ctx);
  int from = cp ? (int)json_integer_value(json_object_get(cp, "step")) : 0;
  uint32_t attempt = ctx->api->attempt(ctx);
  int ran = 0;
  for (int i = from; i < n; i++) {
    if (fail_at && i == fail_at && attempt == 1)
      return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "failing once at step %d", i);
    ran++;
    json_t *s = json_pack("{s:i}", "step", i + 1);
    int rc = apex_ctx_checkpoint(ctx, s);
    json_decref(s);
    if (rc != APEX_OK) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "checkpoint: %d", rc);
  }
  apex_ctx_set_result(ctx, json_pack("{s:i, s:i, s:i}", "from", from, "ran", ran, "attempt",
                                     (int)attempt));
  return APEX_OK;
}

static int idem(apex_ctx_t *ctx) {
  json_t *cp = apex_ctx_checkpoint_get(ctx);
  apex_ctx_set_result(ctx, json_pack("{s:O?}", "checkpoint", cp));
  return APEX_OK;
}

static int plain(apex_ctx_t *ctx) {
  apex_ctx_set_result(ctx, json_pack("{s:b}", "ran", 1));
  return APEX_OK;
}

static int wait_cancel(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  json_int_t ms = json_integer_value(json_object_get(p, "ms"));
  int rc = ctx->api->sleep_ms(ctx, ms > 0 ? (uint64_t)ms : 60000);
  if (rc == APEX_E_CANCELLED) return APEX_E_CANCELLED;
  return APEX_OK;
}

static int cp_bad(apex_ctx_t *ctx) {
  int r_null = apex_ctx_checkpoint(ctx, NULL);
  size_t big = APEX_CHECKPOINT_MAX_BYTES + 10;
  char *s = malloc(big + 1);
  int r_huge = APEX_E_NOMEM;
  if (s) {
    memset(s, 'x', big);
    s[big] = '\0';
    json_t *h = json_string(s);
    r_huge = apex_ctx_checkpoint(ctx, h);
    json_decref(h);
    free(s);
  }
  json_t *bad = json_stringn_nocheck("\xff\xfe", 2);
  int r_bad = apex_ctx_checkpoint(ctx, bad);
  json_decref(bad);
  json_t *ok = json_pack("{s:i}", "step", 7);
  int r_ok = apex_ctx_checkpoint(ctx, ok);
  json_decref(ok);
  apex_ctx_set_result(ctx, json_pack("{s:i, s:i, s:i, s:i}", "null", r_null, "huge", r_huge,
                                     "bad_utf8", r_bad, "ok", r_ok));
  return APEX_OK;
}

static int cp_loop(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int n = (int)json_integer_value(json_object_get(p, "n"));
  int failed = 0;
  for (int i = 0; i < n; i++) {
    json_t *s = json_pack("{s:i}", "i", i);
    if (apex_ctx_checkpoint(ctx, s) != APEX_OK) failed++;
    json_decref(s);
  }
  apex_ctx_set_result(ctx, json_pack("{s:i, s:i}", "n", n, "failed", failed));
  return APEX_OK;
}

static const apex_param_spec_t steps_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "5"},
    {.name = "fail_at", .type = APEX_PARAM_INT, .default_json = "0"},
};
static const apex_param_spec_t wait_params[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .default_json = "60000"},
};
static const apex_param_spec_t loop_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "100"},
};

#define F_RES APEX_ACTION_F_RESUMABLE
#define F_IDEM APEX_ACTION_F_IDEMPOTENT

static const apex_action_desc_t actions[] = {
    {.name = "noop", .handler = noop, .flags = F_IDEM},
    {.name = "steps", .handler = steps, .params = steps_params, .n_params = 2, .flags = F_RES,
     .default_retry = {.max_attempts = 3}},
    {.name = "idem", .handler = idem, .flags = F_IDEM},
    {.name = "plain", .handler = plain},
    {.name = "wait", .handler = wait_cancel, .params = wait_params, .n_params = 1,
     .flags = F_IDEM},
    {.name = "hold", .handler = wait_cancel, .params = wait_params, .n_params = 1},
    {.name = "cp_bad", .handler = cp_bad},
    {.name = "cp_loop", .handler = cp_loop, .params = loop_params, .n_params = 1,
     .flags = F_RES},
};

static const apex_plugin_desc_t plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "durable_kit",
    .version = "1.0.0",
    .description = "durable tasks test kit",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
};

APEX_PLUGIN_DEFINE(plugin)
