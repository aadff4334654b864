/* The plugin of the durable-store benchmarks (bench_store.c, W13, W14,
 * Wrecover): plugin "bench_store".
 *   noop     idempotent no-op (W13, Wrecover)
 *   cp_loop  resumable: params {"n", "sink", "base"}: n checkpoints in a
 *            loop, each one's latency (ns, CLOCK_MONOTONIC around
 *            apex_ctx_checkpoint) written to ((uint64_t *)sink)[base + i]:
 *            the bench and its plugin share the process, and the samples
 *            stay out of the result (W14)
 *   block    waits until cancelled (holds a worker: Wrecover) */
#define _GNU_SOURCE /* clock_gettime under -std=c11 */
#include <stdint.h>
#include <time.h>

#include "apex/plugin.h"

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int noop(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

static int cp_loop(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  json_int_t n = json_integer_value(json_object_get(p, "n"));
  uint64_t *sink = (uint64_t *)(uintptr_t)json_integer_value(json_object_get(p, "sink"));
  json_int_t base = json_integer_value(json_object_get(p, "base"));
  json_t *cp = json_pack("{s:i}", "i", 0);
  if (!cp) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "no memory");
  for (json_int_t i = 0; i < n; i++) {
    json_object_set_new(cp, "i", json_integer(i));
    uint64_t t0 = now_ns();
    int rc = apex_ctx_checkpoint(ctx, cp);
    uint64_t t1 = now_ns();
    if (rc != APEX_OK) {
      json_decref(cp);
      return apex_ctx_fail(ctx, APEX_E_EXECUTION, "checkpoint %lld: %d", (long long)i, rc);
    }
    if (sink) sink[base + i] = t1 - t0;
  }
  json_decref(cp);
  return APEX_OK;
}

static int block(apex_ctx_t *ctx) {
  return ctx->api->sleep_ms(ctx, 3600000) == APEX_E_CANCELLED ? APEX_E_CANCELLED : APEX_OK;
}

static const apex_param_spec_t loop_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .required = 1},
    {.name = "sink", .type = APEX_PARAM_INT, .default_json = "0"},
    {.name = "base", .type = APEX_PARAM_INT, .default_json = "0"},
};

static const apex_action_desc_t actions[] = {
    {.name = "noop", .handler = noop, .flags = APEX_ACTION_F_IDEMPOTENT},
    {.name = "cp_loop", .handler = cp_loop, .params = loop_params, .n_params = 3,
     .flags = APEX_ACTION_F_RESUMABLE},
    {.name = "block", .handler = block},
};

static const apex_plugin_desc_t plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "bench_store",
    .version = "1.0.0",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
};

APEX_PLUGIN_DEFINE(plugin)
