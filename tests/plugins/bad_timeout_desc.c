/* bad_timeout_desc: an action whose heartbeat_timeout_s default is NaN. The
 * loader refuses the plugin, naming the field (tests/integration/
 * test_timeouts.c); nothing of it runs. */
#include <math.h>

#include "apex/plugin.h"

static int run(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

static const apex_action_desc_t k_actions[] = {
    {.name = "run", .description = "never runs", .handler = run, .kind = APEX_ACTION_BLOCKING,
     .heartbeat_timeout_s = NAN},
};

static const apex_plugin_desc_t k_desc = {
    APEX_PLUGIN_DESC_INIT,
    .name = "bad_timeout_desc",
    .version = "1.0.0",
    .description = "A NaN heartbeat timeout default",
    .actions = k_actions,
    .n_actions = 1,
};

APEX_PLUGIN_DEFINE(k_desc)
