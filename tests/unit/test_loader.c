/* Unit tests of the plugin loader: a valid plugin's normalized descriptor and
 * hooks, old and new descriptor sizes, and every way a load can fail, each
 * with its exact code and a message naming the file and the field. After a
 * failed load the module must not stay resident (and ASan checks that
 * nothing leaks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/abi.h"
#include "plugin/loader.h"

#define PLUGIN(name) APEX_TEST_PLUGIN_DIR "/" name ".so"

/* The loader only hands this to entry and init; no plugin here calls it. */
static const apex_host_api_t api = {.abi_version = APEX_PLUGIN_ABI,
                                    .struct_size = sizeof(apex_host_api_t)};

static int is_resident(const char *path) {
  void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  if (!h) return 0;
  dlclose(h);
  return 1;
}

static void *sym(void *h, const char *name) {
  void *s = dlsym(h, name);
  assert_non_null(s);
  return s;
}

/* Loads a file that must fail; returns the error (caller unrefs). */
static apex_error_t *expect_fail(const char *path, int code) {
  apex__plugin_t *p = (apex__plugin_t *)0x1;
  apex_error_t *err = NULL;
  assert_int_equal(apex__plugin_load(path, &api, &p, &err), code);
  assert_null(p);
  assert_non_null(err);
  assert_int_equal(apex_error_code(err), code);
  assert_false(is_resident(path));
  return err;
}

static void expect_message(const char *path, int code, const char *want) {
  apex_error_t *err = expect_fail(path, code);
  assert_string_equal(apex_error_message(err), want);
  apex_error_unref(err);
}

static void expect_prefix(const char *path, int code, const char *want) {
  apex_error_t *err = expect_fail(path, code);
  const char *msg = apex_error_message(err);
  if (strncmp(msg, want, strlen(want)) != 0) fail_msg("message '%s' lacks prefix '%s'", msg, want);
  apex_error_unref(err);
}

/* ---------------------------------------------------------------- names */

static void test_name_valid_accepts_up_to_64_of_a_z_0_9_underscore(void **st) {
  (void)st;
  char n64[65], n65[66];
  memset(n64, 'a', 64);
  n64[64] = '\0';
  memset(n65, 'a', 65);
  n65[65] = '\0';
  assert_int_equal(apex__name_valid("a_z0_9"), 1);
  assert_int_equal(apex__name_valid(n64), 1);
  assert_int_equal(apex__name_valid(n65), 0);
  assert_int_equal(apex__name_valid(""), 0);
  assert_int_equal(apex__name_valid(NULL), 0);
  assert_int_equal(apex__name_valid("Run"), 0);
  assert_int_equal(apex__name_valid("a-b"), 0);
  assert_int_equal(apex__name_valid("a b"), 0);
}

/* ------------------------------------------------------------ good_min */

static void test_good_min_descriptor_normalized(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex__plugin_load(PLUGIN("good_min"), &api, &p, &err), APEX_OK);
  assert_null(err);
  assert_string_equal(p->file, PLUGIN("good_min"));
  assert_int_equal(p->desc.abi_version, APEX_PLUGIN_ABI);
  assert_string_equal(p->desc.name, "good_min");
  assert_string_equal(p->desc.version, "1.0.0");
  assert_int_equal(p->desc.n_actions, 2);
  assert_ptr_equal(p->desc.actions, p->actions);
  const apex_action_desc_t *run = &p->actions[0];
  assert_string_equal(run->name, "run");
  assert_int_equal(run->kind, APEX_ACTION_BLOCKING);
  assert_int_equal(run->n_params, 4);
  assert_string_equal(run->params[1].name, "steps");
  assert_string_equal(run->params[1].default_json, "3");
  assert_true(run->default_timeout_s == 2.5);
  assert_int_equal(run->default_retry.max_attempts, 3);
  assert_int_equal(run->default_retry.n_non_retryable, 1);
  assert_int_equal(run->flags, APEX_ACTION_F_IDEMPOTENT);
  assert_int_equal(p->actions[1].kind, APEX_ACTION_DEFERRED);
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

static void test_good_min_init_and_shutdown_run_once(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  assert_int_equal(apex__plugin_load(PLUGIN("good_min"), &api, &p, NULL), APEX_OK);
  /* Our own reference keeps the image (and its counters) alive past unload. */
  void *h = dlopen(PLUGIN("good_min"), RTLD_NOW | RTLD_NOLOAD);
  assert_non_null(h);
  assert_int_equal(*(int *)sym(h, "good_min_init_calls"), 1);
  assert_ptr_equal(*(const apex_host_api_t **)sym(h, "good_min_api_seen"), &api);
  assert_int_equal(p->inited, 1);
  assert_int_equal(*(int *)p->state, 42);
  void *state = p->state;
  apex__plugin_unload(p);
  apex__plugin_free(p);
  assert_int_equal(*(int *)sym(h, "good_min_shutdown_calls"), 1);
  assert_ptr_equal(*(void **)sym(h, "good_min_shutdown_state"), state);
  dlclose(h);
  assert_false(is_resident(PLUGIN("good_min")));
}

static void test_plugin_action_lookup(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  assert_int_equal(apex__plugin_load(PLUGIN("good_min"), &api, &p, NULL), APEX_OK);
  const apex_action_desc_t *a = apex__plugin_action(p, "later");
  assert_ptr_equal(a, &p->actions[1]);
  assert_null(apex__plugin_action(p, "nope"));
  assert_null(apex__plugin_action(p, NULL));
  assert_null(apex__plugin_action(NULL, "run"));
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

/* NULL is a no-op: it must neither crash nor touch a plugin that is loaded
 * (no shutdown hook run, nothing closed), and the real unload still runs the
 * hook exactly once afterwards. */
static void test_unload_null_is_noop(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  assert_int_equal(apex__plugin_load(PLUGIN("good_min"), &api, &p, NULL), APEX_OK);
  void *h = dlopen(PLUGIN("good_min"), RTLD_NOW | RTLD_NOLOAD);
  assert_non_null(h);
  int *shutdowns = sym(h, "good_min_shutdown_calls");
  int before = *shutdowns;
  apex__plugin_unload(NULL);
  apex__plugin_free(NULL);
  assert_int_equal(*shutdowns, before);
  assert_int_equal(p->inited, 1);
  assert_non_null(p->dl);
  assert_ptr_equal(apex__plugin_action(p, "run"), &p->actions[0]);
  apex__plugin_unload(p);
  assert_int_equal(*shutdowns, before + 1);
  apex__plugin_free(p);
  dlclose(h);
}

/* ---------------------------------------------------- descriptor sizes */

/* old_abi_small is built against the 0.1.0 headers (tests/abi/v1): its
 * descriptor is smaller than this build's and ends at a guard page, as does
 * its actions array (0.1.0's stride). Reading one byte too many of either
 * crashes this test. */
static void test_old_abi_small_loads_without_reading_past_struct_size(void **st) {
  (void)st;
  assert_true(APEX__PLUGIN_DESC_V1_MIN < sizeof(apex_plugin_desc_t)); /* else nothing to catch */
  apex__plugin_t *p = NULL;
  apex_error_t *err = NULL;
  int rc = apex__plugin_load(PLUGIN("old_abi_small"), &api, &p, &err);
  if (rc != APEX_OK) fail_msg("load failed: %s", apex_error_message(err));
  assert_int_equal(p->desc_size, APEX__PLUGIN_DESC_V1_MIN);
  assert_int_equal(p->action_stride, APEX__ACTION_V1_SIZE);
  /* Normalized: this build's layout, the fields it lacked zero. */
  assert_int_equal(p->desc.struct_size, sizeof(apex_plugin_desc_t));
  assert_int_equal(p->desc.action_size, sizeof(apex_action_desc_t));
  assert_string_equal(p->desc.name, "old_abi_small");
  assert_null(p->desc.init);
  assert_int_equal(p->desc.n_actions, 2);
  assert_string_equal(p->actions[0].name, "run");
  assert_string_equal(p->actions[1].name, "second");
  assert_int_equal(p->actions[1].kind, APEX_ACTION_DEFERRED);
  assert_true(p->actions[1].default_timeout_s == 7);
  assert_int_equal(p->actions[1].flags, APEX_ACTION_F_IDEMPOTENT);
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

/* ------------------------------------------------------- file failures */

static void test_bad_abi_names_both_versions(void **st) {
  (void)st;
  expect_message(PLUGIN("bad_abi"), APEX_E_ABI_MISMATCH,
                 PLUGIN("bad_abi") ": plugin ABI 7, host ABI 1");
}

static void test_no_entry_symbol(void **st) {
  (void)st;
  expect_message(PLUGIN("no_entry"), APEX_E_PLUGIN_LOAD,
                 PLUGIN("no_entry") ": no apex_plugin_entry symbol");
}

static void test_entry_returning_null(void **st) {
  (void)st;
  unsetenv("APEX_TEST_BAD_DESC"); /* bad_desc returns NULL without a case */
  expect_message(PLUGIN("bad_desc"), APEX_E_PLUGIN_LOAD,
                 PLUGIN("bad_desc") ": apex_plugin_entry returned NULL");
}

static void test_not_a_plugin(void **st) {
  (void)st;
  expect_prefix(PLUGIN("not_a_plugin"), APEX_E_PLUGIN_LOAD,
                PLUGIN("not_a_plugin") ": not a loadable shared object: ");
}

static void test_missing_file(void **st) {
  (void)st;
  expect_prefix(APEX_TEST_PLUGIN_DIR "/does_not_exist.so", APEX_E_PLUGIN_LOAD,
                APEX_TEST_PLUGIN_DIR "/does_not_exist.so: not a loadable shared object: ");
}

static void test_bare_name_not_searched_in_library_path(void **st) {
  (void)st;
  /* libc is on every library path; a loader that let dlopen search would
   * open it and fail later with "no apex_plugin_entry symbol". */
  apex_error_t *err = NULL;
  apex__plugin_t *p = NULL;
  assert_int_equal(apex__plugin_load("libc.so.6", &api, &p, &err), APEX_E_PLUGIN_LOAD);
  assert_non_null(strstr(apex_error_message(err), "libc.so.6: not a loadable shared object"));
  apex_error_unref(err);
}

static void test_null_arguments_invalid(void **st) {
  (void)st;
  apex__plugin_t *p = NULL;
  assert_int_equal(apex__plugin_load(NULL, &api, &p, NULL), APEX_E_INVALID);
  assert_int_equal(apex__plugin_load(PLUGIN("good_min"), NULL, &p, NULL), APEX_E_INVALID);
  assert_int_equal(apex__plugin_load(PLUGIN("good_min"), &api, NULL, NULL), APEX_E_INVALID);
}

/* ------------------------------------------------------------------ init */

static void test_init_failure_reports_plugin_reason(void **st) {
  (void)st;
  apex_error_t *err = expect_fail(PLUGIN("init_fails"), APEX_E_PLUGIN_LOAD);
  assert_string_equal(apex_error_message(err),
                      PLUGIN("init_fails") ": init failed: database not reachable");
  assert_string_equal(apex_error_plugin(err), "init_fails");
  apex_error_unref(err);
}

static void test_init_failure_without_reason_reports_code(void **st) {
  (void)st;
  setenv("APEX_TEST_INIT_SILENT", "1", 1);
  expect_message(PLUGIN("init_fails"), APEX_E_PLUGIN_LOAD,
                 PLUGIN("init_fails") ": init returned 5");
  unsetenv("APEX_TEST_INIT_SILENT");
}

static void test_failed_init_skips_shutdown(void **st) {
  (void)st;
  void *h = dlopen(PLUGIN("init_fails"), RTLD_NOW | RTLD_LOCAL);
  assert_non_null(h);
  apex__plugin_t *p = NULL;
  assert_int_equal(apex__plugin_load(PLUGIN("init_fails"), &api, &p, NULL), APEX_E_PLUGIN_LOAD);
  assert_int_equal(*(int *)sym(h, "init_fails_shutdown_calls"), 0);
  dlclose(h);
}

/* ------------------------------------------------------ bad descriptors */

/* Loads bad_desc.so with case c; the message must equal want, or start with
 * it when want ends in '*'. */
static void expect_bad_desc(const char *c, int code, const char *want) {
  setenv("APEX_TEST_BAD_DESC", c, 1);
  apex_error_t *err = expect_fail(PLUGIN("bad_desc"), code);
  unsetenv("APEX_TEST_BAD_DESC");
  const char *msg = apex_error_message(err);
  char full[512];
  snprintf(full, sizeof full, "%s: %s", PLUGIN("bad_desc"), want);
  size_t n = strlen(full);
  if (full[n - 1] == '*') {
    if (strncmp(msg, full, n - 1) != 0) fail_msg("message '%s' lacks prefix '%s'", msg, full);
  } else {
    assert_string_equal(msg, full);
  }
  apex_error_unref(err);
}

static void test_bad_desc_control_case_loads(void **st) {
  (void)st;
  setenv("APEX_TEST_BAD_DESC", "valid", 1);
  apex__plugin_t *p = NULL;
  int rc = apex__plugin_load(PLUGIN("bad_desc"), &api, &p, NULL);
  unsetenv("APEX_TEST_BAD_DESC");
  assert_int_equal(rc, APEX_OK);
  apex__plugin_unload(p);
  apex__plugin_free(p);
}

static void test_bad_desc_error_names_plugin_and_action(void **st) {
  (void)st;
  setenv("APEX_TEST_BAD_DESC", "bad_kind", 1);
  apex_error_t *err = expect_fail(PLUGIN("bad_desc"), APEX_E_PLUGIN_LOAD);
  unsetenv("APEX_TEST_BAD_DESC");
  assert_string_equal(apex_error_plugin(err), "bad_desc");
  assert_string_equal(apex_error_action(err), "run");
  apex_error_unref(err);
}

#define BAD_DESC_TEST(c, code, want)                                 \
  static void test_bad_desc_##c(void **st) {                         \
    (void)st;                                                        \
    expect_bad_desc(#c, code, want);                                 \
  }

BAD_DESC_TEST(dup_action, APEX_E_PLUGIN_LOAD, "duplicate action 'run'")
BAD_DESC_TEST(bad_name, APEX_E_PLUGIN_LOAD, "name 'Bad-Name' is not [a-z0-9_]+ of 1..64 bytes")
BAD_DESC_TEST(bad_action_name, APEX_E_PLUGIN_LOAD,
              "action #1: name '' is not [a-z0-9_]+ of 1..64 bytes")
BAD_DESC_TEST(long_name, APEX_E_PLUGIN_LOAD, "name 'a2345678901234567890*")
BAD_DESC_TEST(null_version, APEX_E_PLUGIN_LOAD, "version is NULL")
BAD_DESC_TEST(no_actions, APEX_E_PLUGIN_LOAD, "n_actions 0 is outside 1..1024")
BAD_DESC_TEST(null_actions, APEX_E_PLUGIN_LOAD, "actions is NULL")
BAD_DESC_TEST(null_handler, APEX_E_PLUGIN_LOAD, "action 'other': handler is NULL")
BAD_DESC_TEST(bad_kind, APEX_E_PLUGIN_LOAD, "action 'run': kind 7 is neither BLOCKING nor DEFERRED")
BAD_DESC_TEST(too_many_params, APEX_E_PLUGIN_LOAD,
              "action 'run': n_params 65 is above the maximum 64")
BAD_DESC_TEST(null_params, APEX_E_PLUGIN_LOAD, "action 'run': params is NULL but n_params is 2")
BAD_DESC_TEST(dup_param, APEX_E_PLUGIN_LOAD, "action 'run': duplicate param 'n'")
BAD_DESC_TEST(bad_type, APEX_E_PLUGIN_LOAD, "action 'run': param 's': type 99 is unknown")
BAD_DESC_TEST(bad_default, APEX_E_PLUGIN_LOAD,
              "action 'run': param 'n': default '\"x\"' is not an int")
BAD_DESC_TEST(unparsable_default, APEX_E_PLUGIN_LOAD,
              "action 'run': param 'n': default '{nope' is not valid JSON: *")
BAD_DESC_TEST(default_out_of_bounds, APEX_E_PLUGIN_LOAD,
              "action 'run': param 'n': default '11' is out of bounds: 11 is above the maximum 10")
BAD_DESC_TEST(required_with_default, APEX_E_PLUGIN_LOAD,
              "action 'run': param 'n': required but has a default_json")
BAD_DESC_TEST(bounds_on_bool, APEX_E_PLUGIN_LOAD,
              "action 'run': param 's': has_min/has_max set but type bool takes no bounds")
BAD_DESC_TEST(min_above_max, APEX_E_PLUGIN_LOAD, "action 'run': param 'n': min 20 is above max 10")
BAD_DESC_TEST(nan_bound, APEX_E_PLUGIN_LOAD, "action 'run': param 'n': max is not finite")
BAD_DESC_TEST(bad_timeout, APEX_E_PLUGIN_LOAD,
              "action 'run': default_timeout_s -1 is not in [0, 1e+09]")
BAD_DESC_TEST(huge_timeout, APEX_E_PLUGIN_LOAD,
              "action 'run': default_timeout_s 2e+09 is not in [0, 1e+09]")
BAD_DESC_TEST(bad_retry, APEX_E_PLUGIN_LOAD,
              "action 'run': default_retry.backoff_coefficient 0.5: want 0 (default 2) or [1, 1000]")
BAD_DESC_TEST(huge_backoff, APEX_E_PLUGIN_LOAD,
              "action 'run': default_retry.backoff_coefficient 5000: want 0 (default 2) or [1, 1000]")
BAD_DESC_TEST(bad_jitter, APEX_E_PLUGIN_LOAD, "action 'run': default_retry.jitter 1.5: want [0, 1]")
BAD_DESC_TEST(many_non_retryable, APEX_E_PLUGIN_LOAD,
              "action 'run': default_retry.n_non_retryable 20: at most 16")
BAD_DESC_TEST(null_non_retryable, APEX_E_PLUGIN_LOAD,
              "action 'run': default_retry.non_retryable is NULL but n_non_retryable is 2")
BAD_DESC_TEST(small_struct, APEX_E_PLUGIN_LOAD, "struct_size 16 is outside *")
BAD_DESC_TEST(huge_struct, APEX_E_PLUGIN_LOAD, "struct_size 1048576 is outside *")

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_name_valid_accepts_up_to_64_of_a_z_0_9_underscore),
      cmocka_unit_test(test_good_min_descriptor_normalized),
      cmocka_unit_test(test_good_min_init_and_shutdown_run_once),
      cmocka_unit_test(test_plugin_action_lookup),
      cmocka_unit_test(test_unload_null_is_noop),
      cmocka_unit_test(test_old_abi_small_loads_without_reading_past_struct_size),
      cmocka_unit_test(test_bad_abi_names_both_versions),
      cmocka_unit_test(test_no_entry_symbol),
      cmocka_unit_test(test_entry_returning_null),
      cmocka_unit_test(test_not_a_plugin),
      cmocka_unit_test(test_missing_file),
      cmocka_unit_test(test_bare_name_not_searched_in_library_path),
      cmocka_unit_test(test_null_arguments_invalid),
      cmocka_unit_test(test_init_failure_reports_plugin_reason),
      cmocka_unit_test(test_init_failure_without_reason_reports_code),
      cmocka_unit_test(test_failed_init_skips_shutdown),
      cmocka_unit_test(test_bad_desc_control_case_loads),
      cmocka_unit_test(test_bad_desc_error_names_plugin_and_action),
      cmocka_unit_test(test_bad_desc_dup_action),
      cmocka_unit_test(test_bad_desc_bad_name),
      cmocka_unit_test(test_bad_desc_bad_action_name),
      cmocka_unit_test(test_bad_desc_long_name),
      cmocka_unit_test(test_bad_desc_null_version),
      cmocka_unit_test(test_bad_desc_no_actions),
      cmocka_unit_test(test_bad_desc_null_actions),
      cmocka_unit_test(test_bad_desc_null_handler),
      cmocka_unit_test(test_bad_desc_bad_kind),
      cmocka_unit_test(test_bad_desc_too_many_params),
      cmocka_unit_test(test_bad_desc_null_params),
      cmocka_unit_test(test_bad_desc_dup_param),
      cmocka_unit_test(test_bad_desc_bad_type),
      cmocka_unit_test(test_bad_desc_bad_default),
      cmocka_unit_test(test_bad_desc_unparsable_default),
      cmocka_unit_test(test_bad_desc_default_out_of_bounds),
      cmocka_unit_test(test_bad_desc_required_with_default),
      cmocka_unit_test(test_bad_desc_bounds_on_bool),
      cmocka_unit_test(test_bad_desc_min_above_max),
      cmocka_unit_test(test_bad_desc_nan_bound),
      cmocka_unit_test(test_bad_desc_bad_timeout),
      cmocka_unit_test(test_bad_desc_bad_retry),
      cmocka_unit_test(test_bad_desc_bad_jitter),
      cmocka_unit_test(test_bad_desc_huge_timeout),
      cmocka_unit_test(test_bad_desc_huge_backoff),
      cmocka_unit_test(test_bad_desc_many_non_retryable),
      cmocka_unit_test(test_bad_desc_null_non_retryable),
      cmocka_unit_test(test_bad_desc_small_struct),
      cmocka_unit_test(test_bad_desc_huge_struct),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
