/* testkit: a well-behaved test plugin with the smallest actions the host's
 * tests need:
 *
 *   noop            returns APEX_OK with no result (checks it got its state)
 *   echo            result = a copy of its params
 *   noop_deferred   deferred; completes from inside its own handler, then
 *                   returns APEX_PENDING (legal: the handler must not touch
 *                   the ctx after completing it, and does not)
 *   count_attempts  fails transient until attempt == succeed_on
 *   params_all      one param of every type with bounds and defaults;
 *                   result = the validated params
 *
 * init allocates a small state and shutdown frees it, so a host that skips
 * shutdown shows up as a leak under ASan.
 *
 * Threads: every handler runs on a host worker; the state is read-only after
 * init. Nothing here fails except on purpose or out of memory (APEX_E_NOMEM).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "apex/plugin.h"

#define TESTKIT_MAGIC 0x7e57c17u

typedef struct tk_state {
  uint32_t magic;
} tk_state_t;

static int tk_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  tk_state_t *s = malloc(sizeof *s);
  if (!s) {
    snprintf(why, why_len, "testkit: out of memory");
    return -1;
  }
  s->magic = TESTKIT_MAGIC;
  *state = s;
  return 0;
}

static void tk_shutdown(void *state) { free(state); }

static int noop(apex_ctx_t *ctx) {
  const tk_state_t *s = apex_ctx_plugin_state(ctx);
  if (!s || s->magic != TESTKIT_MAGIC)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "testkit: plugin state not handed to the handler");
  return APEX_OK;
}

static int copy_params(apex_ctx_t *ctx) {
  json_t *copy = json_deep_copy(apex_ctx_params(ctx));
  if (!copy) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory copying params");
  apex_ctx_set_result(ctx, copy);
  return APEX_OK;
}

static int noop_deferred(apex_ctx_t *ctx) {
  apex_ctx_complete(ctx, APEX_OK);
  return APEX_PENDING;
}

static int count_attempts(apex_ctx_t *ctx) {
  json_t *v = json_object_get(apex_ctx_params(ctx), "succeed_on");
  int64_t succeed_on = json_is_integer(v) ? (int64_t)json_integer_value(v) : 3;
  uint32_t attempt = apex_ctx_attempt(ctx);
  if ((int64_t)attempt < succeed_on)
    return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "attempt %u fails; attempt %lld will succeed",
                         (unsigned)attempt, (long long)succeed_on);
  json_t *r = json_pack("{s:I}", "attempt", (json_int_t)attempt);
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

static const apex_param_spec_t k_echo_params[] = {
    {.name = "value", .type = APEX_PARAM_OBJECT, .description = "echoed back"},
};
static const apex_param_spec_t k_count_params[] = {
    {.name = "succeed_on", .type = APEX_PARAM_INT, .default_json = "3", .has_min = 1, .min = 1,
     .has_max = 1, .max = 100},
};
/* STRING and ARRAY bounds are lengths. */
static const apex_param_spec_t k_all_params[] = {
    {.name = "str", .type = APEX_PARAM_STRING, .default_json = "\"abc\"", .has_min = 1, .min = 1,
     .has_max = 1, .max = 8},
    {.name = "int", .type = APEX_PARAM_INT, .default_json = "42", .has_min = 1, .min = -100,
     .has_max = 1, .max = 100},
    {.name = "num", .type = APEX_PARAM_NUMBER, .default_json = "1.5", .has_min = 1, .min = 0,
     .has_max = 1, .max = 10},
    {.name = "flag", .type = APEX_PARAM_BOOL, .default_json = "false"},
    {.name = "obj", .type = APEX_PARAM_OBJECT, .default_json = "{\"k\": \"v\"}"},
    {.name = "arr", .type = APEX_PARAM_ARRAY, .default_json = "[1, 2]", .has_min = 1, .min = 0,
     .has_max = 1, .max = 4},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const apex_action_desc_t k_actions[] = {
    {.name = "noop", .description = "does nothing", .handler = noop,
     .kind = APEX_ACTION_BLOCKING, .flags = APEX_ACTION_F_IDEMPOTENT},
    {.name = "echo", .description = "result = params", .handler = copy_params,
     .kind = APEX_ACTION_BLOCKING, .params = k_echo_params, .n_params = N(k_echo_params)},
    {.name = "noop_deferred", .description = "completes inside its handler",
     .handler = noop_deferred, .kind = APEX_ACTION_DEFERRED},
    {.name = "count_attempts", .description = "fails transient until attempt == succeed_on",
     .handler = count_attempts, .kind = APEX_ACTION_BLOCKING, .params = k_count_params,
     .n_params = N(k_count_params),
     /* Retries by default, quickly, so the default succeed_on=3 succeeds. */
     .default_retry = {.max_attempts = 5, .initial_interval_s = 0.001,
                       .backoff_coefficient = 2.0}},
    {.name = "params_all", .description = "one param of every type; result = params",
     .handler = copy_params, .kind = APEX_ACTION_BLOCKING, .params = k_all_params,
     .n_params = N(k_all_params)},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "testkit",
    .version = "0.0.1",
    .description = "Minimal well-behaved actions for the host's tests",
    .init = tk_init,
    .shutdown = tk_shutdown,
    .actions = k_actions,
    .n_actions = N(k_actions),
};

APEX_PLUGIN_DEFINE(k_plugin)
