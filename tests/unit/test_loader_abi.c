/* Unit tests of how the loader reads descriptors from other headers than
 * its own (docs/abi.md): a newer plugin's larger descriptor and larger
 * actions (read by their declared sizes, the unknown tails ignored), and
 * every bad action_size refused with a message naming the field (0 reads as
 * the layout the descriptor's size tells). The test
 * plugin abi_stride puts each object right before a guard page, so reading
 * past struct_size or past n_actions * action_size crashes the test. The
 * older direction (a 0.1.0 plugin) is test_loader.c's old_abi_small test and
 * tests/abi/. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/abi.h"
#include "plugin/loader.h"

#define PLUGIN APEX_TEST_PLUGIN_DIR "/abi_stride.so"

static const apex_host_api_t api = {.abi_version = APEX_PLUGIN_ABI,
                                    .struct_size = sizeof(apex_host_api_t)};

static int load(const char *mode, apex__plugin_t **p, apex_error_t **err) {
  if (mode)
    setenv("APEX_TEST_ABI_STRIDE", mode, 1);
  else
    unsetenv("APEX_TEST_ABI_STRIDE");
  int rc = apex__plugin_load(PLUGIN, &api, p, err);
  unsetenv("APEX_TEST_ABI_STRIDE");
  return rc;
}

/* Both actions as the plugin declared them, whatever the stride. */
static void assert_actions_intact(const apex__plugin_t *p) {
  assert_int_equal(p->desc.n_actions, 2);
  assert_ptr_equal(p->desc.actions, p->actions);
  assert_int_equal(p->desc.struct_size, sizeof(apex_plugin_desc_t));
  assert_int_equal(p->desc.action_size, sizeof(apex_action_desc_t));
  const apex_action_desc_t *run = &p->actions[0], *second = &p->actions[1];
  assert_string_equal(run->name, "run");
  assert_int_equal(run->n_params, 1);
  assert_string_equal(run->params[0].name, "n");
  assert_true(run->default_timeout_s == 3);
  assert_int_equal(run->default_retry.max_attempts, 4);
  assert_int_equal(run->flags, 0);
  assert_string_equal(second->name, "second");
  assert_int_equal(second->kind, APEX_ACTION_DEFERRED);
  assert_int_equal(second->flags, APEX_ACTION_F_IDEMPOTENT);
  assert_ptr_equal(apex__plugin_action(p, "second"), second);
}

static void test_current_descriptor_loads(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  assert_int_equal(load(NULL, &p, NULL), APEX_OK);
  assert_int_equal(p->desc_size, sizeof(apex_plugin_desc_t));
  assert_int_equal(p->action_stride, sizeof(apex_action_desc_t));
  assert_actions_intact(p);
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

static void test_newer_larger_descriptor_loads_ignoring_tail(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  assert_int_equal(load("newer_desc", &p, NULL), APEX_OK);
  assert_int_equal(p->desc_size, sizeof(apex_plugin_desc_t) + 32);
  assert_string_equal(p->desc.name, "abi_stride");
  assert_actions_intact(p);
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

static void test_newer_larger_actions_read_at_their_stride(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  apex_error_t *err = NULL;
  int rc = load("newer_actions", &p, &err);
  if (rc != APEX_OK) fail_msg("load failed: %s", apex_error_message(err));
  assert_int_equal(p->action_stride, sizeof(apex_action_desc_t) + 24);
  assert_actions_intact(p);
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

static void expect_refused(const char *mode, const char *want) {
  apex__plugin_t *p = (apex__plugin_t *)0x1;
  apex_error_t *err = NULL;
  assert_int_equal(load(mode, &p, &err), APEX_E_PLUGIN_LOAD);
  assert_null(p);
  char full[512];
  snprintf(full, sizeof full, "%s: %s", PLUGIN, want);
  assert_string_equal(apex_error_message(err), full);
  assert_string_equal(apex_error_plugin(err), "abi_stride");
  apex_error_unref(err);
}

/* A plugin that sets struct_size without APEX_PLUGIN_DESC_INIT, built
 * against this header: action_size 0 reads its actions at this header's
 * stride, which its descriptor's flags field tells. */
static void test_action_size_zero_reads_its_headers_layout(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  apex_error_t *err = NULL;
  int rc = load("zero", &p, &err);
  if (rc != APEX_OK) print_error("%s\n", apex_error_message(err));
  assert_int_equal(rc, APEX_OK);
  assert_null(err);
  assert_actions_intact(p);
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

static void test_action_size_below_first_layout_refused(void **st) {
  (void)st;
  char want[256];
  snprintf(want, sizeof want,
           "action_size 8 is outside %zu..65536: set it to sizeof(apex_action_desc_t) "
           "(APEX_PLUGIN_DESC_INIT does)",
           (size_t)APEX__ACTION_V1_SIZE);
  expect_refused("small", want);
}

static void test_action_size_absurd_refused(void **st) {
  (void)st;
  char want[256];
  snprintf(want, sizeof want,
           "action_size 1048576 is outside %zu..65536: set it to sizeof(apex_action_desc_t) "
           "(APEX_PLUGIN_DESC_INIT does)",
           (size_t)APEX__ACTION_V1_SIZE);
  expect_refused("huge", want);
}

static void test_action_size_not_a_struct_stride_refused(void **st) {
  (void)st;
  char want[256];
  snprintf(want, sizeof want, "action_size %zu is not a multiple of %zu",
           sizeof(apex_action_desc_t) + 4, (size_t)_Alignof(apex_action_desc_t));
  expect_refused("unaligned", want);
}

/* The same plugin built against a header from before apex_action_desc_t
 * grew (its descriptor ends before flags): 0.1.0's stride, and the guard
 * page right after its last action catches a read at today's. */
static void test_action_size_zero_before_flags_reads_first_layout(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  apex_error_t *err = NULL;
  int rc = load("zero_v1", &p, &err);
  if (rc != APEX_OK) fail_msg("load failed: %s", apex_error_message(err));
  assert_int_equal(p->action_stride, APEX__ACTION_V1_SIZE);
  assert_actions_intact(p);
  assert_null(p->actions[0].concurrency_key);
  assert_int_equal(p->actions[1].max_concurrency, 0);
  assert_true(p->actions[1].heartbeat_timeout_s == 0);
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

static void test_unknown_plugin_flags_refused(void **st) {
  (void)st;
  expect_refused("flags", "flags 0x4: no plugin flags are defined");
}

/* What a 0.1.0 host's apex_manager_plugin returns: the same actions at
 * 0.1.0's stride, action_size saying so. */
static void test_first_layout_copy_for_old_hosts(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  assert_int_equal(load(NULL, &p, NULL), APEX_OK);
  assert_int_equal(p->desc_v1.action_size, APEX__ACTION_V1_SIZE);
  assert_int_equal(p->desc_v1.n_actions, 2);
  const apex_action_desc_t *second =
      (const apex_action_desc_t *)(const void *)((const char *)p->desc_v1.actions +
                                                 APEX__ACTION_V1_SIZE);
  assert_string_equal(second->name, "second");
  assert_int_equal(second->flags, APEX_ACTION_F_IDEMPOTENT);
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_current_descriptor_loads),
      cmocka_unit_test(test_newer_larger_descriptor_loads_ignoring_tail),
      cmocka_unit_test(test_newer_larger_actions_read_at_their_stride),
      cmocka_unit_test(test_action_size_zero_reads_its_headers_layout),
      cmocka_unit_test(test_action_size_zero_before_flags_reads_first_layout),
      cmocka_unit_test(test_unknown_plugin_flags_refused),
      cmocka_unit_test(test_first_layout_copy_for_old_hosts),
      cmocka_unit_test(test_action_size_below_first_layout_refused),
      cmocka_unit_test(test_action_size_absurd_refused),
      cmocka_unit_test(test_action_size_not_a_struct_stride_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
