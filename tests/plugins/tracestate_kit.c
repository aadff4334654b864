/* tracestate_kit: a test plugin for apex_ctx_tracestate
 * (tests/integration/test_obs_tracestate.c).
 *
 *   echo_ts  returns {"tracestate": <its ctx's, or null>, "rc": <the
 *            call's status>, "small_rc": <the call's status with a buffer
 *            of 2 bytes>, "traceparent": <its ctx's, or null>}.
 *   spawner  spawns tracestate_kit.echo_ts as a child, waits for it, and
 *            returns {"child": <its result>}.
 *
 * Threads: handlers run on host workers; no state of its own. */
#include <stdio.h>
#include <string.h>

#include "apex/plugin.h"

static int echo_ts(apex_ctx_t *ctx) {
  char ts[APEX_TRACESTATE_MAX + 1], tp[64], small[2];
  int rc = apex_ctx_tracestate(ctx, ts, sizeof ts);
  int small_rc = apex_ctx_tracestate(ctx, small, sizeof small);
  int tp_rc = apex_ctx_traceparent(ctx, tp, sizeof tp);
  apex_ctx_set_result(ctx, json_pack("{s:o, s:i, s:i, s:o}", "tracestate",
                                     rc == APEX_OK ? json_string(ts) : json_null(), "rc", rc,
                                     "small_rc", small_rc, "traceparent",
                                     tp_rc == APEX_OK ? json_string(tp) : json_null()));
  return APEX_OK;
}

static int spawner(apex_ctx_t *ctx) {
  apex_child_t *kid = NULL;
  int rc = apex_ctx_spawn(ctx, "tracestate_kit", "echo_ts", NULL, NULL, &kid);
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "spawn failed");
  rc = apex_ctx_wait_children(ctx, &kid, 1, -1);
  json_t *res = NULL;
  int st;
  if (rc == APEX_OK) rc = apex_ctx_child_outcome(ctx, kid, &st, &res, NULL);
  apex_ctx_child_release(ctx, kid);
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "child failed");
  apex_ctx_set_result(ctx, json_pack("{s:o}", "child", res));
  return APEX_OK;
}

static const apex_action_desc_t k_actions[] = {
    {.name = "echo_ts", .description = "returns its tracestate", .handler = echo_ts,
     .kind = APEX_ACTION_BLOCKING},
    {.name = "spawner", .description = "spawns echo_ts", .handler = spawner,
     .kind = APEX_ACTION_BLOCKING},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "tracestate_kit",
    .version = "1.0.0",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
