/* The plugin of the shared-queue benchmark (bench_worker.c, W15): plugin
 * "bench_worker", run by `apex worker` processes.
 *   noop   idempotent no-op (throughput)
 *   stamp  idempotent; its result is {"t": the wall-clock time its handler
 *          started, seconds since the epoch}: the bench subtracts the time
 *          it enqueued the task (claim latency; one host, one clock) */
#define _GNU_SOURCE /* clock_gettime under -std=c11 */
#include <time.h>

#include "apex/plugin.h"

static int noop(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

static int stamp(apex_ctx_t *ctx) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  json_t *r = json_pack("{s:f}", "t", (double)ts.tv_sec + ts.tv_nsec / 1e9);
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "no memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

static const apex_action_desc_t actions[] = {
    {.name = "noop", .handler = noop, .flags = APEX_ACTION_F_IDEMPOTENT},
    {.name = "stamp", .handler = stamp, .flags = APEX_ACTION_F_IDEMPOTENT},
};

static const apex_plugin_desc_t plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "bench_worker",
    .version = "1.0.0",
    .actions = actions,
    .n_actions = sizeof actions / sizeof actions[0],
};

APEX_PLUGIN_DEFINE(plugin)
