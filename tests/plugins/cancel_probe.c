/* cancel_probe: blocking actions that show a host what a handler sees of a
 * cancellation and of its ctx's waits.
 *
 *   gate      waits (cancellably) until its token fires, reports progress
 *             whose message is "saw REASON", then blocks in poll() on the
 *             pipe fd `release_fd` (a test's, same process) until the test
 *             writes to it, and fails with APEX_E_CANCELLED "stopped
 *             (REASON)". While it sits in that poll the task must still be
 *             running: only its return may end it (unless Apex shuts down).
 *   hold      blocks in poll() on `release_fd` until the test writes to it,
 *             never touching its token (so the task has none unless the
 *             host makes one), then succeeds.
 *   sleep_rc  calls apex_ctx_sleep_ms(ctx, `ms`) once and succeeds with the
 *             result {"rc": what it returned}.
 *
 * Threads: handlers run on host workers; no plugin state. What can fail:
 * poll() (the gate then fails with APEX_E_IO). */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdint.h>

#include "apex/plugin.h"

/* Blocks in poll() until the test writes to release_fd. Returns: APEX_OK,
 * APEX_E_IO (errno set). */
static int wait_release(apex_ctx_t *ctx) {
  struct pollfd p = {.fd = (int)json_integer_value(json_object_get(apex_ctx_params(ctx),
                                                                   "release_fd")),
                     .events = POLLIN};
  while (poll(&p, 1, -1) < 0)
    if (errno != EINTR) return APEX_E_IO;
  return APEX_OK;
}

static int gate(apex_ctx_t *ctx) {
  while (apex_ctx_sleep_ms(ctx, 10000) != APEX_E_CANCELLED) {
  }
  const char *why = apex_ctx_cancel_reason(ctx);
  char msg[128];
  snprintf(msg, sizeof msg, "saw %s", why ? why : "(null)");
  apex_ctx_progress(ctx, 50, msg);
  if (wait_release(ctx) != APEX_OK) return apex_ctx_fail(ctx, APEX_E_IO, "poll: %d", errno);
  return apex_ctx_fail(ctx, APEX_E_CANCELLED, "stopped (%s)", why ? why : "(null)");
}

static int hold(apex_ctx_t *ctx) {
  int rc = wait_release(ctx);
  return rc == APEX_OK ? APEX_OK : apex_ctx_fail(ctx, rc, "poll: %d", errno);
}

static int sleep_rc(apex_ctx_t *ctx) {
  json_int_t ms = json_integer_value(json_object_get(apex_ctx_params(ctx), "ms"));
  int rc = apex_ctx_sleep_ms(ctx, (uint64_t)ms);
  apex_ctx_set_result(ctx, json_pack("{s:i}", "rc", rc));
  return APEX_OK;
}

static const apex_param_spec_t k_gate_params[] = {
    {.name = "release_fd", .type = APEX_PARAM_INT, .required = 1},
};
static const apex_param_spec_t k_sleep_params[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = 0},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "gate",
     .description = "reports the cancel reason it saw, then waits for the test's release",
     .handler = gate,
     .kind = APEX_ACTION_BLOCKING,
     .params = k_gate_params,
     .n_params = 1},
    {.name = "hold",
     .description = "blocks until the test's release, never touching its token",
     .handler = hold,
     .kind = APEX_ACTION_BLOCKING,
     .params = k_gate_params,
     .n_params = 1},
    {.name = "sleep_rc",
     .description = "returns what apex_ctx_sleep_ms returned",
     .handler = sleep_rc,
     .kind = APEX_ACTION_BLOCKING,
     .params = k_sleep_params,
     .n_params = 1},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "cancel_probe",
    .version = "1.0.0",
    .description = "what a handler sees of cancellation and waits",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
