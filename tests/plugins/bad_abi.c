/* Test plugin: a descriptor from a future, incompatible ABI (7). The host
 * must reject it from the first two fields alone. */
#include <stdint.h>

#include "apex/plugin.h"

static int run(apex_ctx_t *ctx) {
  (void)ctx;
  return 0;
}

static const apex_action_desc_t actions[] = {{.name = "run", .handler = run}};

static const apex_plugin_desc_t desc = {
    .abi_version = 7,
    .struct_size = sizeof(apex_plugin_desc_t),
    .action_size = sizeof(apex_action_desc_t),
    .name = "bad_abi",
    .version = "7.0.0",
    .actions = actions,
    .n_actions = 1,
};

APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api);
const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api) {
  (void)api;
  return &desc;
}
