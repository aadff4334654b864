/* Test plugin: well-formed, but init refuses to start. With
 * APEX_TEST_INIT_SILENT set, init fails without writing a reason, so the
 * host has only the return code to report. */
#include <stdio.h>
#include <stdlib.h>

#include "apex/plugin.h"

APEX_PLUGIN_EXPORT int init_fails_shutdown_calls;

static int run(apex_ctx_t *ctx) {
  (void)ctx;
  return 0;
}

static const apex_action_desc_t actions[] = {{.name = "run", .handler = run}};

static int init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  (void)api;
  (void)state;
  if (getenv("APEX_TEST_INIT_SILENT")) return 5;
  snprintf(why, why_len, "database not reachable");
  return -1;
}

static void shutdown_hook(void *state) {
  (void)state;
  init_fails_shutdown_calls++;
}

static const apex_plugin_desc_t desc = {
    APEX_PLUGIN_DESC_INIT,
    .name = "init_fails",
    .version = "1.0.0",
    .init = init,
    .shutdown = shutdown_hook,
    .actions = actions,
    .n_actions = 1,
};

APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api);
const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api) {
  (void)api;
  return &desc;
}
