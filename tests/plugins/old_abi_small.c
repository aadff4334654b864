/* Test plugin: a plugin built against the first ABI-1 header (0.1.0), whose
 * descriptor ends at n_actions and has no action_size. tests/abi/
 * CMakeLists.txt compiles it against the frozen copy in tests/abi/v1, so its
 * sizeof(apex_plugin_desc_t) is the old one, smaller than the host's.
 *
 * The descriptor and the actions array are each placed so that their last
 * byte is the last byte before an inaccessible guard page: a host that reads
 * one byte past struct_size, or steps through the actions with any stride
 * but 0.1.0's sizeof(apex_action_desc_t), crashes here instead of silently
 * reading garbage. */
#include "guard_page.h" /* first: it sets _DEFAULT_SOURCE for mmap */

#include <stddef.h>

#include "apex/plugin.h"

#ifdef APEX_PLUGIN_DESC_INIT
#error "old_abi_small must be built against tests/abi/v1 (see tests/abi/CMakeLists.txt)"
#endif

static int run(apex_ctx_t *ctx) {
  (void)ctx;
  return 0;
}

static const apex_action_desc_t actions[] = {
    {.name = "run", .handler = run, .kind = APEX_ACTION_BLOCKING},
    {.name = "second", .handler = run, .kind = APEX_ACTION_DEFERRED, .default_timeout_s = 7,
     .flags = APEX_ACTION_F_IDEMPOTENT},
};

APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api);
const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api) {
  (void)api;
  guard_release_all();
  char *acts = guard_alloc(0, sizeof actions, 0);
  if (!acts) return NULL;
  memcpy(acts, actions, sizeof actions);
  apex_plugin_desc_t d = {
      .abi_version = APEX_PLUGIN_ABI,
      .struct_size = sizeof(apex_plugin_desc_t), /* 0.1.0's: ends at n_actions */
      .name = "old_abi_small",
      .version = "0.1.0",
      .actions = (const apex_action_desc_t *)(const void *)acts,
      .n_actions = 2,
  };
  char *desc = guard_alloc(1, sizeof d, 0);
  if (!desc) return NULL;
  memcpy(desc, &d, sizeof d);
  return (const apex_plugin_desc_t *)(const void *)desc;
}
