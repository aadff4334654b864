/* metrics_kit: actions whose metrics tests/integration/test_metrics.c and
 * the Prometheus tests count exactly.
 *
 *   ok        returns APEX_OK
 *   fail      fails with the code named by param code ("execution",
 *             "transient", "invalid_params"...; apex_status_name's names)
 *   flaky     fails transient until attempt == succeed_on (retries quickly)
 *   progress  reports param n updates (the last one 100 %), then succeeds
 *   sleep     waits (cancellably) param ms; cancelled, returns
 *             APEX_E_CANCELLED
 *
 * Its version string holds what a Prometheus label value must escape (a
 * double quote, a backslash, a newline) and a byte that is not UTF-8: the
 * apex_plugin_info metric carries it.
 *
 * Threads: handlers on workers; no state. */
#include <string.h>

#include "apex/plugin.h"

static int ok(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

static const int k_codes[] = {APEX_E_EXECUTION, APEX_E_TRANSIENT, APEX_E_INVALID_PARAMS,
                              APEX_E_TIMEOUT, APEX_E_IO};

static int fail(apex_ctx_t *ctx) {
  const char *name = json_string_value(json_object_get(apex_ctx_params(ctx), "code"));
  for (size_t i = 0; i < sizeof k_codes / sizeof k_codes[0]; i++)
    if (name && strcmp(name, apex_status_name(k_codes[i])) == 0)
      return apex_ctx_fail(ctx, k_codes[i], "failing with %s on purpose", name);
  return apex_ctx_fail(ctx, APEX_E_EXECUTION, "unknown code; failing with execution");
}

static int flaky(apex_ctx_t *ctx) {
  json_int_t on = json_integer_value(json_object_get(apex_ctx_params(ctx), "succeed_on"));
  if ((json_int_t)apex_ctx_attempt(ctx) < on)
    return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "attempt %u fails", (unsigned)apex_ctx_attempt(ctx));
  return APEX_OK;
}

static int progress(apex_ctx_t *ctx) {
  json_int_t n = json_integer_value(json_object_get(apex_ctx_params(ctx), "n"));
  for (json_int_t i = 1; i <= n; i++) {
    int rc = apex_ctx_progress(ctx, 100.0 * (double)i / (double)n, "step");
    if (rc != APEX_OK) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "progress refused: %d", rc);
  }
  return APEX_OK;
}

static int sleep_ms(apex_ctx_t *ctx) {
  json_int_t ms = json_integer_value(json_object_get(apex_ctx_params(ctx), "ms"));
  if (apex_ctx_sleep_ms(ctx, (uint64_t)ms) == APEX_E_CANCELLED) return APEX_E_CANCELLED;
  return APEX_OK;
}

static const apex_param_spec_t k_fail_params[] = {
    {.name = "code", .type = APEX_PARAM_STRING, .default_json = "\"execution\""},
};
static const apex_param_spec_t k_flaky_params[] = {
    {.name = "succeed_on", .type = APEX_PARAM_INT, .default_json = "2", .has_min = 1, .min = 1},
};
static const apex_param_spec_t k_progress_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "10", .has_min = 1, .min = 1},
};
static const apex_param_spec_t k_sleep_params[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .default_json = "60000", .has_min = 1, .min = 0},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const apex_action_desc_t k_actions[] = {
    {.name = "ok", .description = "succeeds", .handler = ok, .kind = APEX_ACTION_BLOCKING},
    {.name = "fail", .description = "fails with param code", .handler = fail,
     .kind = APEX_ACTION_BLOCKING, .params = k_fail_params, .n_params = N(k_fail_params)},
    {.name = "flaky", .description = "fails transient until attempt succeed_on", .handler = flaky,
     .kind = APEX_ACTION_BLOCKING, .params = k_flaky_params, .n_params = N(k_flaky_params),
     .default_retry = {.max_attempts = 5, .initial_interval_s = 0.001,
                       .backoff_coefficient = 1.0}},
    {.name = "progress", .description = "reports n updates", .handler = progress,
     .kind = APEX_ACTION_BLOCKING, .params = k_progress_params, .n_params = N(k_progress_params)},
    {.name = "sleep", .description = "waits ms, cancellably", .handler = sleep_ms,
     .kind = APEX_ACTION_BLOCKING, .params = k_sleep_params, .n_params = N(k_sleep_params)},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "metrics_kit",
    .version = "1.0 \"q\" \\ b\nnl \xff end",
    .description = "Actions whose metrics the tests count",
    .actions = k_actions,
    .n_actions = N(k_actions),
};

APEX_PLUGIN_DEFINE(k_plugin)
