/* A plugin as its author wrote it against Apex 0.1.0: built with the frozen
 * headers in tests/abi/v1 (no action_size, the first layouts of every
 * struct), loaded by today's library in tests/abi/v1_host.c. It uses what a
 * real plugin of that time could: params with bounds and defaults, a
 * default retry policy with a non-retryable code, a default timeout, flags,
 * init/shutdown, progress, results and failures through the host-api table.
 *
 *   add    blocking; {a: int 0..1000 required, b: int default 5} -> {sum, attempt}
 *   flaky  blocking; fails transient until attempt == succeed_on (default
 *          3); retries by default (max_attempts 4, 1 ms apart)
 *   later  deferred; completes from a thread of its own with {done: true}
 *
 * Threads: handlers on host workers; `later`'s threads are joined by
 * shutdown, so none runs plugin code when the host unloads the module. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "apex/plugin.h"

#ifdef APEX_PLUGIN_DESC_INIT
#error "v1_plugin must be built against tests/abi/v1, the 0.1.0 headers"
#endif

static int state_token = 1;

static int v1_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  (void)why;
  (void)why_len;
  if (!api || api->abi_version != APEX_PLUGIN_ABI || api->struct_size < sizeof *api) return 1;
  *state = &state_token;
  return 0;
}

/* `later`'s threads, joined at shutdown. */
#define MAX_LATER 16
static pthread_mutex_t later_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_t later_threads[MAX_LATER];
static size_t n_later;

static void v1_shutdown(void *state) {
  (void)state;
  pthread_mutex_lock(&later_mu);
  for (size_t i = 0; i < n_later; i++) pthread_join(later_threads[i], NULL);
  n_later = 0;
  pthread_mutex_unlock(&later_mu);
}

static int add(apex_ctx_t *ctx) {
  if (apex_ctx_plugin_state(ctx) != &state_token)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "state not handed over");
  json_t *p = apex_ctx_params(ctx);
  json_int_t a = json_integer_value(json_object_get(p, "a"));
  json_int_t b = json_integer_value(json_object_get(p, "b"));
  if (apex_ctx_progress(ctx, 50, "adding") != APEX_OK)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "progress refused");
  json_t *r = json_pack("{s:I, s:i}", "sum", (json_int_t)(a + b), "attempt",
                        (int)apex_ctx_attempt(ctx));
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

static int flaky(apex_ctx_t *ctx) {
  json_int_t want = json_integer_value(json_object_get(apex_ctx_params(ctx), "succeed_on"));
  uint32_t attempt = apex_ctx_attempt(ctx);
  if ((json_int_t)attempt < want)
    return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "attempt %u fails", (unsigned)attempt);
  apex_ctx_set_result(ctx, json_pack("{s:i}", "attempt", (int)attempt));
  return APEX_OK;
}

static void *later_thread(void *arg) {
  apex_ctx_t *ctx = arg;
  apex_ctx_set_result(ctx, json_pack("{s:b}", "done", 1));
  apex_ctx_complete(ctx, APEX_OK);
  return NULL;
}

static int later(apex_ctx_t *ctx) {
  pthread_mutex_lock(&later_mu);
  int ok = n_later < MAX_LATER &&
           pthread_create(&later_threads[n_later], NULL, later_thread, ctx) == 0;
  if (ok) n_later++;
  pthread_mutex_unlock(&later_mu);
  return ok ? APEX_PENDING : apex_ctx_fail(ctx, APEX_E_EXECUTION, "no thread");
}

static const apex_param_spec_t add_params[] = {
    {.name = "a", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = 0, .has_max = 1,
     .max = 1000, .description = "first"},
    {.name = "b", .type = APEX_PARAM_INT, .default_json = "5"},
};
static const apex_param_spec_t flaky_params[] = {
    {.name = "succeed_on", .type = APEX_PARAM_INT, .default_json = "3", .has_min = 1, .min = 1,
     .has_max = 1, .max = 10},
};
static const apex_status_t never[] = {APEX_E_INVALID_PARAMS};

static const apex_action_desc_t actions[] = {
    {.name = "add", .description = "a + b", .handler = add, .kind = APEX_ACTION_BLOCKING,
     .params = add_params, .n_params = 2, .default_timeout_s = 30,
     .flags = APEX_ACTION_F_IDEMPOTENT},
    {.name = "flaky", .description = "fails until succeed_on", .handler = flaky,
     .kind = APEX_ACTION_BLOCKING, .params = flaky_params, .n_params = 1,
     .default_retry = {.max_attempts = 4, .initial_interval_s = 0.001, .backoff_coefficient = 1,
                       .non_retryable = never, .n_non_retryable = 1}},
    {.name = "later", .description = "completes on its own thread", .handler = later,
     .kind = APEX_ACTION_DEFERRED},
};

static const apex_plugin_desc_t desc = {
    .abi_version = APEX_PLUGIN_ABI,
    .struct_size = sizeof(apex_plugin_desc_t),
    .name = "abi_v1",
    .version = "0.1.0",
    .description = "a plugin built against the 0.1.0 headers",
    .init = v1_init,
    .shutdown = v1_shutdown,
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
};

APEX_PLUGIN_DEFINE(desc)
