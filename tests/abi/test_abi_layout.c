/* The 0.1.0 layout is still today's: every field of the first ABI-1 headers
 * at the same offset with the same size, every constant with the same
 * value, the frozen structs the same size (layout_v1.c records them from the
 * frozen copies in tests/abi/v1). Also checks the library's own idea of the
 * first layouts (src/core/abi.h), which the loader's action stride and the
 * 0.1.0 init calls depend on, and that each appended field starts past
 * 0.1.0's sizeof, where an older caller's struct cannot hold padding bytes
 * a library would read as the field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "apex/apex.h"
#include "core/abi.h"

#include "abi_fields.h"

static const abi_row_t now_rows[] = {
    ABI_V1_FIELDS(ABI_ROW_F) ABI_V1_FROZEN_STRUCTS(ABI_ROW_S) ABI_V1_CONSTANTS(ABI_ROW_C){NULL, 0, 0}};

static void test_every_0_1_0_field_and_constant_unchanged(void **st) {
  (void)st;
  size_t n = 0;
  for (; abi_v1_rows[n].name; n++) {
    const abi_row_t *was = &abi_v1_rows[n], *is = &now_rows[n];
    assert_non_null(is->name);
    assert_string_equal(was->name, is->name);
    if (was->offset != is->offset || was->size != is->size)
      fail_msg("%s: 0.1.0 had offset %lld size %lld (or value %lld), now %lld size %lld", was->name,
               was->offset, was->size, was->offset, is->offset, is->size);
  }
  assert_null(now_rows[n].name);
  assert_true(n > 100); /* the lists expanded */
}

static void test_library_first_layout_sizes_match_0_1_0(void **st) {
  (void)st;
  assert_int_equal(APEX__ACTION_V1_SIZE, abi_v1_sizeof_action_desc);
  assert_int_equal(APEX__CONFIG_V1_SIZE, abi_v1_sizeof_config);
  assert_int_equal(APEX__SUBMIT_OPTS_V1_SIZE, abi_v1_sizeof_submit_opts);
  assert_true(APEX__CONFIG_V1_MIN <= (size_t)abi_v1_sizeof_config);
  assert_true(APEX__SUBMIT_OPTS_V1_MIN <= (size_t)abi_v1_sizeof_submit_opts);
  assert_true(APEX__PLUGIN_DESC_V1_MIN <= (size_t)abi_v1_sizeof_plugin_desc);
  /* apex_stats_t is new: its first layout is today's. */
  assert_int_equal(APEX__STATS_V1_MIN, sizeof(apex_stats_t));
}

/* Fields appended since 0.1.0, each with the 0.1.0 sizeof it must start at
 * or past. Append a row for every field appended to a public struct. */
#define APPENDED(A)                                                                       \
  A(apex_plugin_desc_t, action_size, abi_v1_sizeof_plugin_desc)                           \
  A(apex_plugin_desc_t, flags, abi_v1_sizeof_plugin_desc)                                 \
  A(apex_host_api_t, progress_node, abi_v1_sizeof_host_api)                               \
  A(apex_host_api_t, on_cancel, abi_v1_sizeof_host_api)                                   \
  A(apex_manager_config_t, shutdown_grace_ms, abi_v1_sizeof_config)                      \
  A(apex_submit_opts_t, priority, abi_v1_sizeof_submit_opts)                              \
  A(apex_submit_opts_t, heartbeat_timeout_s, abi_v1_sizeof_submit_opts)                   \
  A(apex_action_desc_t, concurrency_key, abi_v1_sizeof_action_desc)                       \
  A(apex_action_desc_t, heartbeat_timeout_s, abi_v1_sizeof_action_desc)                   \
  A(apex_host_api_t, heartbeat, abi_v1_sizeof_host_api)                                   \
  A(apex_host_api_t, retry_after, abi_v1_sizeof_host_api)                                 \
  A(apex_host_api_t, partial_result, abi_v1_sizeof_host_api)                             \
  /* operation metrics (include/apex/metrics.h) */                                     \
  A(apex_manager_config_t, metrics, abi_v1_sizeof_config) \
  A(apex_plugin_desc_t, action_schema, abi_v1_sizeof_plugin_desc) \
  /* structured logs and traces */                                                        \
  A(apex_manager_config_t, log_record, abi_v1_sizeof_config)                              \
  A(apex_manager_config_t, trace_ratio, abi_v1_sizeof_config)                             \
  A(apex_submit_opts_t, traceparent, abi_v1_sizeof_submit_opts)                           \
  A(apex_submit_opts_t, tracestate, abi_v1_sizeof_submit_opts)                            \
  A(apex_host_api_t, traceparent, abi_v1_sizeof_host_api) \
  /* durable tasks (docs/store.md) */                                                    \
  A(apex_manager_config_t, store, abi_v1_sizeof_config)                                  \
  A(apex_manager_config_t, store_lease_s, abi_v1_sizeof_config)                          \
  A(apex_submit_opts_t, durable, abi_v1_sizeof_submit_opts)                              \
  A(apex_submit_opts_t, idempotency_key, abi_v1_sizeof_submit_opts)                      \
  A(apex_host_api_t, checkpoint, abi_v1_sizeof_host_api)                                 \
  A(apex_host_api_t, checkpoint_get, abi_v1_sizeof_host_api)                             \
  /* tracestate for plugins (issue 12, helper hK) */                                     \
  A(apex_host_api_t, tracestate, abi_v1_sizeof_host_api)

static void test_appended_fields_start_past_0_1_0_sizeof(void **st) {
  (void)st;
#define CHECK_APPENDED(type, field, v1_sizeof)                                           \
  if ((long long)offsetof(type, field) < v1_sizeof)                                       \
    fail_msg(#type "." #field " at %zu lies inside 0.1.0's %lld bytes", offsetof(type, field), \
             v1_sizeof);
  APPENDED(CHECK_APPENDED)
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_0_1_0_field_and_constant_unchanged),
      cmocka_unit_test(test_library_first_layout_sizes_match_0_1_0),
      cmocka_unit_test(test_appended_fields_start_past_0_1_0_sizeof),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
