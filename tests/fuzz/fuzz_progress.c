/* Fuzz target for the ProgressUpdate validator and snapshots: any bytes that
 * parse as JSON are validated; what passes is turned into a snapshot the way
 * the runtime does, rendered with apex_progress_to_json, and that rendering
 * (less "seq") must validate again. The C form must agree with the JSON form
 * on every accepted update. A disagreement traps, so the fuzzer reports it. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "apex/apex.h"
#include "core/progress_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_error_t jerr;
  /* ALLOW_NUL so strings with NUL bytes reach the UTF-8 check. */
  json_t *u = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
  char why[256];
  apex_status_t rc = apex_progress_validate(u, why, sizeof why);
  if (rc != APEX_OK) {
    if (rc != APEX_E_INVALID || why[0] == '\0') __builtin_trap();
    json_decref(u);
    return 0;
  }

  const json_t *msg = json_object_get(u, "message");
  const json_t *status = json_object_get(u, "status");
  apex_progress_update_t cu = {
      .percentage = json_number_value(json_object_get(u, "percentage")),
      .message = json_is_string(msg) ? json_string_value(msg) : NULL,
      .status = status ? json_string_value(status) : NULL,
      .details = json_object_get(u, "details"),
      .sub_tasks = json_object_get(u, "sub_tasks"),
  };
  if (apex_progress_update_validate(&cu, why, sizeof why) != APEX_OK) __builtin_trap();

  /* The snapshot takes its JSON: hand it copies, as the runtime does. */
  json_t *details = cu.details ? json_deep_copy(cu.details) : NULL;
  json_t *subs = cu.sub_tasks ? json_deep_copy(cu.sub_tasks) : NULL;
  apex_progress_t *p =
      apex__progress_new(1, cu.percentage, cu.message, cu.status, details, subs);
  if (p) {
    json_t *out = apex_progress_to_json(p);
    if (out) {
      json_object_del(out, "seq");
      if (apex_progress_validate(out, why, sizeof why) != APEX_OK) __builtin_trap();
      if (json_number_value(json_object_get(out, "percentage")) != cu.percentage) __builtin_trap();
      json_decref(out);
    }
    apex_progress_unref(p);
  }
  json_decref(u);
  return 0;
}
