/* Test plugin: descriptors from headers newer than the host's, and bad
 * action_size values, chosen by APEX_TEST_ABI_STRIDE when the host calls
 * apex_plugin_entry:
 *   (unset)        a plain current descriptor (control)
 *   newer_desc     struct_size 32 bytes past the host's, the extra bytes 0xAB
 *                  (fields a newer plugin.h appended, unknown to this host)
 *   newer_actions  action_size 24 bytes past the host's sizeof: each action
 *                  followed by three fields a newer header appended, 0xAB
 *   zero, small, huge, unaligned   action_size 0, 8, 1 MiB, sizeof + 4
 *   zero_v1        action_size 0 in a descriptor that ends before flags (a
 *                  header from before apex_action_desc_t grew): its actions
 *                  at 0.1.0's stride, the scheduling fields absent
 *   flags          flags set to a bit no host defines
 * The descriptor and the actions array each end right before an
 * inaccessible guard page, so a host that reads past struct_size, or past
 * n_actions * action_size, crashes instead of reading garbage. */
#include "guard_page.h" /* first: it sets _DEFAULT_SOURCE for mmap */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "apex/plugin.h"

#define EXTRA 24 /* bytes a "newer" header appended to each struct */

static int run(apex_ctx_t *ctx) {
  (void)ctx;
  return 0;
}

static const apex_param_spec_t params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "2", .has_min = 1, .min = 0,
     .has_max = 1, .max = 9},
};

static const apex_action_desc_t actions[] = {
    {.name = "run", .handler = run, .kind = APEX_ACTION_BLOCKING, .params = params,
     .n_params = 1, .default_timeout_s = 3,
     .default_retry = {.max_attempts = 4, .initial_interval_s = 0.5}},
    {.name = "second", .handler = run, .kind = APEX_ACTION_DEFERRED,
     .flags = APEX_ACTION_F_IDEMPOTENT},
};
#define N_ACTIONS (sizeof actions / sizeof actions[0])

APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api);
const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api) {
  (void)api;
  const char *mode = getenv("APEX_TEST_ABI_STRIDE");
  if (!mode) mode = "";
  guard_release_all();
  size_t desc_size = sizeof(apex_plugin_desc_t);
  size_t stride = sizeof(apex_action_desc_t);
  uint32_t action_size = (uint32_t)stride;
  if (!strcmp(mode, "newer_desc")) {
    desc_size += 32;
  } else if (!strcmp(mode, "newer_actions")) {
    stride += EXTRA;
    action_size = (uint32_t)stride;
  } else if (!strcmp(mode, "zero")) {
    action_size = 0;
  } else if (!strcmp(mode, "small")) {
    action_size = 8;
  } else if (!strcmp(mode, "huge")) {
    action_size = 1u << 20;
  } else if (!strcmp(mode, "zero_v1")) {
    desc_size = offsetof(apex_plugin_desc_t, flags);
    stride = offsetof(apex_action_desc_t, concurrency_key); /* 0.1.0's sizeof */
    action_size = 0;
  } else if (!strcmp(mode, "flags")) {
    /* set below */
  } else if (!strcmp(mode, "unaligned")) {
    action_size = (uint32_t)stride + 4;
  } else if (mode[0]) {
    return NULL;
  }
  char *acts = guard_alloc(0, N_ACTIONS * stride, 0xAB);
  if (!acts) return NULL;
  size_t each = stride < sizeof actions[0] ? stride : sizeof actions[0];
  for (size_t i = 0; i < N_ACTIONS; i++) memcpy(acts + i * stride, &actions[i], each);
  char *desc = guard_alloc(1, desc_size, 0xAB);
  if (!desc) return NULL;
  apex_plugin_desc_t d = {
      APEX_PLUGIN_DESC_INIT,
      .name = "abi_stride",
      .version = "2.0.0",
      .actions = (const apex_action_desc_t *)(const void *)acts,
      .n_actions = N_ACTIONS,
  };
  d.struct_size = (uint32_t)desc_size;
  d.action_size = action_size;
  if (!strcmp(mode, "flags")) d.flags = 0x4;
  memcpy(desc, &d, desc_size < sizeof d ? desc_size : sizeof d);
  return (const apex_plugin_desc_t *)(const void *)desc;
}
