/* mcp_kit: actions the `apex mcp` tests call (tests/integration/
 * test_mcp_stdio.c, tests/mcp/).
 *
 *   sleep   sleeps `ms` (cancellably, reporting progress every `tick_ms`:
 *           1, 2, 3 ... percent) and succeeds with {"slept": ms}; if its
 *           token fires it writes the cancel reason to the file `reason_file`
 *           (when given) and fails with APEX_E_CANCELLED.
 *   noop    succeeds at once with {} (the benchmark's no-op tool).
 *   say     logs `text` at info through apex_ctx_log and succeeds with
 *           {"said": text}.
 *   wobble  reports progress 10, 10 (another message), 5, 20, 80 ms apart
 *           (so each is delivered), then succeeds: MCP wants progress
 *           strictly increasing, so only 10 and 20 may reach a client.
 *   bounds  takes an int in [1, 10], a string of 2..5 bytes, an array of
 *           at most 3 items and a required bool, to check the schema
 *           tools/list derives; succeeds with its params.
 *
 * Threads: handlers run on host workers; no plugin state. What can fail:
 * writing reason_file (then the cancel is still reported). */
#include <stdio.h>
#include <stdint.h>

#include "apex/plugin.h"

static int do_sleep(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  json_int_t ms = json_integer_value(json_object_get(p, "ms"));
  json_int_t tick = json_integer_value(json_object_get(p, "tick_ms"));
  json_int_t done = 0;
  int pct = 0;
  while (done < ms) {
    json_int_t step = tick > 0 && tick < ms - done ? tick : ms - done;
    if (apex_ctx_sleep_ms(ctx, (uint64_t)step) == APEX_E_CANCELLED) {
      const char *why = apex_ctx_cancel_reason(ctx);
      const char *file = json_string_value(json_object_get(p, "reason_file"));
      FILE *f = file ? fopen(file, "w") : NULL;
      if (f) {
        fputs(why ? why : "(none)", f);
        fclose(f);
      }
      return apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled (%s)", why ? why : "(none)");
    }
    done += step;
    if (tick > 0 && pct < 99) apex_ctx_progress(ctx, ++pct, "sleeping");
  }
  apex_ctx_set_result(ctx, json_pack("{s:I}", "slept", (json_int_t)ms));
  return APEX_OK;
}

static int noop(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

static int say(apex_ctx_t *ctx) {
  const char *text = json_string_value(json_object_get(apex_ctx_params(ctx), "text"));
  apex_ctx_log(ctx, APEX_LOG_INFO, "%s", text);
  apex_ctx_set_result(ctx, json_pack("{s:s}", "said", text));
  return APEX_OK;
}

static int wobble(apex_ctx_t *ctx) {
  static const double steps[] = {10, 10, 5, 20};
  static const char *const msgs[] = {"a", "b", "c", "d"};
  for (int i = 0; i < 4; i++) {
    apex_ctx_progress(ctx, steps[i], msgs[i]);
    if (apex_ctx_sleep_ms(ctx, 80) == APEX_E_CANCELLED)
      return apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled");
  }
  return APEX_OK;
}

static int bounds(apex_ctx_t *ctx) {
  apex_ctx_set_result(ctx, json_deep_copy(apex_ctx_params(ctx)));
  return APEX_OK;
}

static const apex_param_spec_t k_sleep[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = 0,
     .description = "milliseconds to sleep"},
    {.name = "tick_ms", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1, .min = 0,
     .description = "report progress this often (0: never)"},
    {.name = "reason_file", .type = APEX_PARAM_STRING, .description = "where a cancel reason goes"},
};
static const apex_param_spec_t k_say[] = {
    {.name = "text", .type = APEX_PARAM_STRING, .required = 1},
};
static const apex_param_spec_t k_bounds[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "5", .has_min = 1, .min = 1,
     .has_max = 1, .max = 10, .description = "a small number"},
    {.name = "s", .type = APEX_PARAM_STRING, .has_min = 1, .min = 2, .has_max = 1, .max = 5},
    {.name = "a", .type = APEX_PARAM_ARRAY, .has_max = 1, .max = 3},
    {.name = "x", .type = APEX_PARAM_NUMBER, .has_min = 1, .min = 0.5},
    {.name = "flag", .type = APEX_PARAM_BOOL, .required = 1},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "sleep", .description = "Sleeps ms milliseconds, cancellably", .handler = do_sleep,
     .params = k_sleep, .n_params = 3},
    {.name = "noop", .description = "Does nothing", .handler = noop,
     .flags = APEX_ACTION_F_IDEMPOTENT},
    {.name = "say", .description = "Logs text at info", .handler = say, .params = k_say,
     .n_params = 1},
    {.name = "bounds", .description = "Echoes bounded params", .handler = bounds,
     .params = k_bounds, .n_params = 5},
    {.name = "wobble", .description = "Reports progress that goes back", .handler = wobble},
};

static const apex_plugin_desc_t k_plugin = {APEX_PLUGIN_DESC_INIT, .name = "mcp_kit",
                                            .version = "1.0.0",
                                            .description = "actions for the apex mcp tests",
                                            .actions = k_actions, .n_actions = 5};
APEX_PLUGIN_DEFINE(k_plugin)
