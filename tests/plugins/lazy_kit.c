/* lazy_kit: a deferred action that ends with a plain APEX_E_CANCELLED, for
 * tests/unit/test_lazy_error.c.
 *
 *   pend   deferred, no params: registers an apex_ctx_on_cancel callback
 *          and stays pending; the callback completes the task with
 *          APEX_E_CANCELLED and no message of its own (as bench/plugin_bench.c's
 *          pend does), so the task's error is the status's sentence.
 *
 * Threads: the handler runs on a worker, the callback on the cancelling
 * thread. What can fail: the registration (the task then fails with its
 * code). */
#include "apex/plugin.h"

#ifndef APEX_HAVE_CTX_ON_CANCEL
#error "lazy_kit needs apex_ctx_on_cancel (APEX_HAVE_CTX_ON_CANCEL)"
#endif

static void on_cancel(apex_ctx_t *ctx, void *user) {
  (void)user;
  apex_ctx_complete(ctx, APEX_E_CANCELLED);
}

static int pend(apex_ctx_t *ctx) {
  int rc = apex_ctx_on_cancel(ctx, on_cancel, NULL);
  if (rc != APEX_OK) apex_ctx_complete(ctx, rc);
  return APEX_PENDING;
}

static const apex_action_desc_t k_actions[] = {
    {.name = "pend", .description = "Pending until cancelled; ends with a plain code",
     .handler = pend, .kind = APEX_ACTION_DEFERRED},
};

static const apex_plugin_desc_t k_desc = {
    APEX_PLUGIN_DESC_INIT,
    .name = "lazy_kit",
    .version = "1.0.0",
    .description = "A deferred action ending with a plain APEX_E_CANCELLED",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_desc)
