/* Fuzz target: arbitrary bytes parsed as JSON and validated against a fixed
 * spec holding every param type with bounds, a required param and defaults.
 * Must never crash or leak; on success the output must be an object holding
 * every param with a default, and on failure a reason must be written. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plugin/loader.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int noop(apex_ctx_t *ctx) {
  (void)ctx;
  return 0;
}

static const apex_param_spec_t spec[] = {
    {.name = "s", .type = APEX_PARAM_STRING, .has_min = 1, .min = 1, .has_max = 1, .max = 16},
    {.name = "i", .type = APEX_PARAM_INT, .default_json = "7", .has_min = 1, .min = -5,
     .has_max = 1, .max = 100},
    {.name = "n", .type = APEX_PARAM_NUMBER, .has_min = 1, .min = -1.5, .has_max = 1, .max = 1e6},
    {.name = "b", .type = APEX_PARAM_BOOL, .default_json = "true"},
    {.name = "o", .type = APEX_PARAM_OBJECT, .default_json = "{\"k\": [1, 2]}"},
    {.name = "a", .type = APEX_PARAM_ARRAY, .has_max = 1, .max = 4},
    {.name = "r", .type = APEX_PARAM_STRING, .required = 1},
    {.name = "big", .type = APEX_PARAM_INT, .has_min = 1, .min = -9.3e18, .has_max = 1,
     .max = 9007199254740992.0},
};
static const apex_action_desc_t action = {
    .name = "fuzz", .handler = noop, .params = spec, .n_params = sizeof spec / sizeof spec[0]};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_error_t e;
  json_t *in = json_loadb((const char *)data, size, JSON_DECODE_ANY, &e);
  if (!in) return 0;
  json_t *before = json_deep_copy(in);
  json_t *out = NULL;
  char why[128];
  int rc = apex__params_validate(&action, in, &out, why, sizeof why);
  if (rc == APEX_OK) {
    if (!json_is_object(out) || !json_object_get(out, "i") || !json_object_get(out, "b") ||
        !json_object_get(out, "o") || !json_is_string(json_object_get(out, "r")))
      abort();
  } else if (rc == APEX_E_INVALID_PARAMS) {
    if (out || why[0] == '\0' || !memchr(why, '\0', sizeof why)) abort();
  } else if (rc != APEX_E_NOMEM) {
    abort();
  }
  if (before && !json_equal(before, in)) abort(); /* the input is never mutated */
  json_decref(out);
  json_decref(before);
  json_decref(in);
  return 0;
}
