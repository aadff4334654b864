/* trace_kit: a test plugin for structured logs and traces
 * (tests/integration/test_obs_traces.c, tests/obs/check_otlp.sh).
 *
 *   flaky    attempts before `fail_until` (default 3) fail with
 *            APEX_E_TRANSIENT ("flaky attempt N"); later ones wait for
 *            their cancellation (a timeout) and return APEX_E_CANCELLED,
 *            or succeed at once when `hang` is false.
 *   echo_tp  logs one line and returns {"traceparent": ...} (its ctx's, or
 *            null with "rc" when apex_ctx_traceparent refuses).
 *   spawner  spawns trace_kit.echo_tp as a child, waits for it, returns
 *            {"child": <its result>, "traceparent": <its own>}.
 *   chatty   logs `n` lines in a tight loop, then, with `then_ms`, waits
 *            that long and logs one more (the rate limit's summary comes
 *            with it).
 *
 * Threads: handlers run on host workers; no state of its own. */
#include <stdio.h>
#include <string.h>

#include "apex/plugin.h"

static int flaky(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  json_int_t until = json_integer_value(json_object_get(p, "fail_until"));
  uint32_t a = apex_ctx_attempt(ctx);
  apex_ctx_log(ctx, APEX_LOG_WARN, "attempt %u starts (\"flaky\")", a);
  if ((json_int_t)a < until) return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "flaky attempt %u", a);
  if (!json_is_true(json_object_get(p, "hang"))) return APEX_OK;
  while (apex_ctx_sleep_ms(ctx, 60000) == APEX_OK) {
  }
  return APEX_E_CANCELLED;
}

static json_t *own_traceparent(apex_ctx_t *ctx) {
  char tp[64];
  int rc = apex_ctx_traceparent(ctx, tp, sizeof tp);
  return rc == APEX_OK ? json_string(tp) : json_null();
}

static int echo_tp(apex_ctx_t *ctx) {
  apex_ctx_log(ctx, APEX_LOG_WARN, "echo \"quoted\" line\nsecond half");
  char tp[64];
  int rc = apex_ctx_traceparent(ctx, tp, sizeof tp);
  int small = apex_ctx_traceparent(ctx, tp, 10);
  apex_ctx_set_result(ctx, json_pack("{s:o, s:i, s:i}", "traceparent", own_traceparent(ctx), "rc",
                                     rc, "small_rc", small));
  return APEX_OK;
}

static int spawner(apex_ctx_t *ctx) {
  apex_child_t *kid = NULL;
  int rc = apex_ctx_spawn(ctx, "trace_kit", "echo_tp", NULL, NULL, &kid);
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "spawn failed");
  rc = apex_ctx_wait_children(ctx, &kid, 1, -1);
  json_t *res = NULL;
  int st;
  if (rc == APEX_OK) rc = apex_ctx_child_outcome(ctx, kid, &st, &res, NULL);
  apex_ctx_child_release(ctx, kid);
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "child failed");
  apex_ctx_set_result(ctx, json_pack("{s:o, s:o}", "child", res, "traceparent",
                                     own_traceparent(ctx)));
  return APEX_OK;
}

static int chatty(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  json_int_t n = json_integer_value(json_object_get(p, "n"));
  json_int_t then_ms = json_integer_value(json_object_get(p, "then_ms"));
  for (json_int_t i = 0; i < n; i++) apex_ctx_log(ctx, APEX_LOG_WARN, "line %lld", (long long)i);
  if (then_ms > 0) {
    apex_ctx_sleep_ms(ctx, (uint64_t)then_ms);
    apex_ctx_log(ctx, APEX_LOG_WARN, "after the pause");
  }
  return APEX_OK;
}

static const apex_param_spec_t k_flaky_params[] = {
    {.name = "fail_until", .type = APEX_PARAM_INT, .default_json = "3"},
    {.name = "hang", .type = APEX_PARAM_BOOL, .default_json = "true"},
};
static const apex_param_spec_t k_chatty_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "10"},
    {.name = "then_ms", .type = APEX_PARAM_INT, .default_json = "0"},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "flaky",
     .description = "fails transiently, then hangs until timed out",
     .handler = flaky,
     .kind = APEX_ACTION_BLOCKING,
     .params = k_flaky_params,
     .n_params = sizeof k_flaky_params / sizeof k_flaky_params[0],
     .default_retry = {.max_attempts = 3, .initial_interval_s = 0.01, .backoff_coefficient = 1}},
    {.name = "echo_tp", .description = "returns its traceparent", .handler = echo_tp,
     .kind = APEX_ACTION_BLOCKING},
    {.name = "spawner", .description = "spawns echo_tp", .handler = spawner,
     .kind = APEX_ACTION_BLOCKING},
    {.name = "chatty",
     .description = "logs in a tight loop",
     .handler = chatty,
     .kind = APEX_ACTION_BLOCKING,
     .params = k_chatty_params,
     .n_params = sizeof k_chatty_params / sizeof k_chatty_params[0]},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "trace_kit",
    .version = "1.0.0",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
