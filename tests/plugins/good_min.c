/* Test plugin: the smallest well-formed plugin with something to check. One
 * blocking action with params that have defaults and bounds, one deferred
 * action without params, init/shutdown hooks. The counters are exported so a
 * test holding its own dlopen handle can see that the loader ran the hooks. */
#include <stddef.h>

#include "apex/plugin.h"

APEX_PLUGIN_EXPORT int good_min_init_calls;
APEX_PLUGIN_EXPORT int good_min_shutdown_calls;
APEX_PLUGIN_EXPORT const apex_host_api_t *good_min_api_seen;
APEX_PLUGIN_EXPORT void *good_min_shutdown_state;

static int state_token = 42;

static int run(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

static int later(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_PENDING;
}

static const apex_param_spec_t run_params[] = {
    {.name = "path", .type = APEX_PARAM_STRING, .required = 1, .has_min = 1, .min = 1,
     .description = "where"},
    {.name = "steps", .type = APEX_PARAM_INT, .default_json = "3", .has_min = 1, .min = 0,
     .has_max = 1, .max = 10},
    {.name = "label", .type = APEX_PARAM_STRING, .default_json = "\"x\""},
    {.name = "verbose", .type = APEX_PARAM_BOOL},
};

static const apex_status_t never_retry[] = {APEX_E_INVALID_PARAMS};

static const apex_action_desc_t actions[] = {
    {.name = "run",
     .description = "runs",
     .handler = run,
     .kind = APEX_ACTION_BLOCKING,
     .params = run_params,
     .n_params = sizeof run_params / sizeof run_params[0],
     .default_timeout_s = 2.5,
     .default_retry = {.max_attempts = 3, .initial_interval_s = 0.1, .backoff_coefficient = 2,
                       .jitter = 0.5, .non_retryable = never_retry, .n_non_retryable = 1},
     .flags = APEX_ACTION_F_IDEMPOTENT},
    {.name = "later", .handler = later, .kind = APEX_ACTION_DEFERRED},
};

static int init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  (void)why;
  (void)why_len;
  good_min_init_calls++;
  good_min_api_seen = api;
  *state = &state_token;
  return 0;
}

static void shutdown_hook(void *state) {
  good_min_shutdown_calls++;
  good_min_shutdown_state = state;
}

static const apex_plugin_desc_t desc = {
    APEX_PLUGIN_DESC_INIT,
    .name = "good_min",
    .version = "1.0.0",
    .description = "minimal valid plugin",
    .init = init,
    .shutdown = shutdown_hook,
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
};

APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api);
const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api) {
  (void)api;
  return &desc;
}
