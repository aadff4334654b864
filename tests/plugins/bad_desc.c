/* Test plugin: one broken descriptor per case, chosen by the environment
 * variable APEX_TEST_BAD_DESC read when the host calls apex_plugin_entry, so
 * one module covers every descriptor check of the loader. Each case starts
 * from a valid descriptor and breaks exactly one field. An unknown or unset
 * case returns NULL. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "apex/plugin.h"

static int run(apex_ctx_t *ctx) {
  (void)ctx;
  return 0;
}

static apex_param_spec_t params[2];
static apex_action_desc_t actions[2];
static apex_plugin_desc_t desc;

static void reset(void) {
  memset(params, 0, sizeof params);
  memset(actions, 0, sizeof actions);
  params[0] = (apex_param_spec_t){.name = "n", .type = APEX_PARAM_INT, .default_json = "1",
                                  .has_min = 1, .min = 0, .has_max = 1, .max = 10};
  params[1] = (apex_param_spec_t){.name = "s", .type = APEX_PARAM_STRING};
  actions[0] = (apex_action_desc_t){.name = "run", .handler = run, .params = params,
                                    .n_params = 2};
  actions[1] = (apex_action_desc_t){.name = "other", .handler = run};
  desc = (apex_plugin_desc_t){.abi_version = APEX_PLUGIN_ABI,
                              .struct_size = sizeof(apex_plugin_desc_t),
                              .action_size = sizeof(apex_action_desc_t),
                              .name = "bad_desc",
                              .version = "1.0.0",
                              .actions = actions,
                              .n_actions = 2};
}

APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api);
const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api) {
  (void)api;
  reset();
  const char *c = getenv("APEX_TEST_BAD_DESC");
  if (!c) return NULL;
  if (!strcmp(c, "valid")) { /* control: the base descriptor loads */
  } else if (!strcmp(c, "dup_action")) {
    actions[1].name = "run";
  } else if (!strcmp(c, "bad_name")) {
    desc.name = "Bad-Name";
  } else if (!strcmp(c, "bad_action_name")) {
    actions[1].name = "";
  } else if (!strcmp(c, "long_name")) {
    desc.name = "a23456789012345678901234567890123456789012345678901234567890123456789";
  } else if (!strcmp(c, "null_version")) {
    desc.version = NULL;
  } else if (!strcmp(c, "no_actions")) {
    desc.n_actions = 0;
  } else if (!strcmp(c, "null_actions")) {
    desc.actions = NULL;
  } else if (!strcmp(c, "null_handler")) {
    actions[1].handler = NULL;
  } else if (!strcmp(c, "bad_kind")) {
    actions[0].kind = (apex_action_kind_t)7;
  } else if (!strcmp(c, "too_many_params")) {
    actions[0].n_params = 65;
  } else if (!strcmp(c, "null_params")) {
    actions[0].params = NULL;
  } else if (!strcmp(c, "dup_param")) {
    params[1].name = "n";
  } else if (!strcmp(c, "bad_type")) {
    params[1].type = (apex_param_type_t)99;
  } else if (!strcmp(c, "bad_default")) {
    params[0].default_json = "\"x\"";
  } else if (!strcmp(c, "unparsable_default")) {
    params[0].default_json = "{nope";
  } else if (!strcmp(c, "default_out_of_bounds")) {
    params[0].default_json = "11";
  } else if (!strcmp(c, "required_with_default")) {
    params[0].required = 1;
  } else if (!strcmp(c, "bounds_on_bool")) {
    params[1].type = APEX_PARAM_BOOL;
    params[1].has_max = 1;
  } else if (!strcmp(c, "min_above_max")) {
    params[0].min = 20;
  } else if (!strcmp(c, "nan_bound")) {
    params[0].max = NAN;
  } else if (!strcmp(c, "bad_timeout")) {
    actions[0].default_timeout_s = -1;
  } else if (!strcmp(c, "huge_timeout")) {
    actions[0].default_timeout_s = 2e9;
  } else if (!strcmp(c, "huge_backoff")) {
    actions[0].default_retry.backoff_coefficient = 5000;
  } else if (!strcmp(c, "many_non_retryable")) {
    static const apex_status_t codes[20] = {APEX_E_EXECUTION};
    actions[0].default_retry.non_retryable = codes;
    actions[0].default_retry.n_non_retryable = 20;
  } else if (!strcmp(c, "bad_retry")) {
    actions[0].default_retry.backoff_coefficient = 0.5;
  } else if (!strcmp(c, "bad_jitter")) {
    actions[0].default_retry.jitter = 1.5;
  } else if (!strcmp(c, "null_non_retryable")) {
    actions[0].default_retry.n_non_retryable = 2;
  } else if (!strcmp(c, "small_struct")) {
    desc.struct_size = 16;
  } else if (!strcmp(c, "huge_struct")) {
    desc.struct_size = 1u << 20;
  } else {
    return NULL;
  }
  return &desc;
}
