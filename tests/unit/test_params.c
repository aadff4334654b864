/* Unit tests of apex__params_validate: every param type accepted and
 * rejected with its exact message, bounds, required and unknown names,
 * defaults, ordering of errors, and that the input is never mutated. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "plugin/loader.h"

static int noop(apex_ctx_t *ctx) {
  (void)ctx;
  return 0;
}

static const apex_param_spec_t run_params[] = {
    {.name = "path", .type = APEX_PARAM_STRING, .required = 1, .has_min = 1, .min = 1,
     .has_max = 1, .max = 8},
    {.name = "steps", .type = APEX_PARAM_INT, .default_json = "3", .has_min = 1, .min = 0,
     .has_max = 1, .max = 1000000},
    {.name = "ratio", .type = APEX_PARAM_NUMBER, .has_min = 1, .min = -1, .has_max = 1, .max = 1},
    {.name = "verbose", .type = APEX_PARAM_BOOL, .default_json = "false"},
    {.name = "opts", .type = APEX_PARAM_OBJECT},
    {.name = "items", .type = APEX_PARAM_ARRAY, .has_max = 1, .max = 2},
    {.name = "label", .type = APEX_PARAM_STRING, .default_json = "\"x\""},
};
static const apex_action_desc_t run_action = {
    .name = "run", .handler = noop, .params = run_params, .n_params = 7};

static const apex_param_spec_t opt_params[] = {
    {.name = "steps", .type = APEX_PARAM_INT, .default_json = "3"},
    {.name = "big", .type = APEX_PARAM_INT, .has_max = 1, .max = 9007199254740992.0},
};
static const apex_action_desc_t opt_action = {
    .name = "opt", .handler = noop, .params = opt_params, .n_params = 2};

static json_t *parse(const char *text) {
  json_error_t e;
  json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
  assert_non_null(v);
  return v;
}

static void expect_reject(const apex_action_desc_t *a, const char *text, const char *want) {
  json_t *in = parse(text);
  json_t *out = (json_t *)0x1;
  char why[256];
  assert_int_equal(apex__params_validate(a, in, &out, why, sizeof why), APEX_E_INVALID_PARAMS);
  assert_null(out);
  assert_string_equal(why, want);
  json_decref(in);
}

/* Returns: the validated object (new reference). */
static json_t *expect_accept(const apex_action_desc_t *a, const char *text) {
  json_t *in = parse(text);
  json_t *out = NULL;
  char why[256];
  int rc = apex__params_validate(a, in, &out, why, sizeof why);
  if (rc != APEX_OK) fail_msg("rejected %s: %s", text, why);
  assert_true(json_is_object(out));
  json_decref(in);
  return out;
}

static void accept_ok(const apex_action_desc_t *a, const char *text) {
  json_decref(expect_accept(a, text));
}

/* ------------------------------------------------------------- strings */

static void test_string_accepted(void **st) {
  (void)st;
  json_t *out = expect_accept(&run_action, "{\"path\": \"a/b\"}");
  assert_string_equal(json_string_value(json_object_get(out, "path")), "a/b");
  json_decref(out);
}

static void test_string_rejects_int(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": 5}", "param 'path': want string, got integer");
}

static void test_string_above_max_length(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"123456789\"}",
                "param 'path': length 9 is above the maximum 8");
}

static void test_string_below_min_length(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"\"}", "param 'path': length 0 is below the minimum 1");
}

static void test_string_bounds_count_utf8_bytes(void **st) {
  (void)st;
  accept_ok(&run_action, "{\"path\": \"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"}"); /* 4 chars, 8 bytes */
  expect_reject(&run_action, "{\"path\": \"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"}",
                "param 'path': length 10 is above the maximum 8");
}

/* ---------------------------------------------------------------- ints */

static void test_int_accepted_at_both_bounds(void **st) {
  (void)st;
  json_t *out = expect_accept(&run_action, "{\"path\": \"p\", \"steps\": 0}");
  assert_int_equal(json_integer_value(json_object_get(out, "steps")), 0);
  json_decref(out);
  out = expect_accept(&run_action, "{\"path\": \"p\", \"steps\": 1000000}");
  assert_int_equal(json_integer_value(json_object_get(out, "steps")), 1000000);
  json_decref(out);
}

static void test_int_rejects_integral_real(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"steps\": 3.0}",
                "param 'steps': want int, got real");
}

static void test_int_rejects_string(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"steps\": \"3\"}",
                "param 'steps': want int, got string");
}

static void test_int_above_max(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"steps\": 5000000}",
                "param 'steps': 5000000 is above the maximum 1000000");
}

static void test_int_below_min(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"steps\": -1}",
                "param 'steps': -1 is below the minimum 0");
}

static void test_int_bound_exact_beyond_2_pow_53(void **st) {
  (void)st;
  accept_ok(&opt_action, "{\"big\": 9007199254740992}");
  expect_reject(&opt_action, "{\"big\": 9007199254740993}",
                "param 'big': 9007199254740993 is above the maximum 9007199254740992");
}

/* ------------------------------------------------------------- numbers */

static void test_number_accepts_int_and_real(void **st) {
  (void)st;
  json_t *out = expect_accept(&run_action, "{\"path\": \"p\", \"ratio\": 1}");
  assert_true(json_is_integer(json_object_get(out, "ratio")));
  json_decref(out);
  out = expect_accept(&run_action, "{\"path\": \"p\", \"ratio\": -0.25}");
  assert_true(json_real_value(json_object_get(out, "ratio")) == -0.25);
  json_decref(out);
}

static void test_number_above_max(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"ratio\": 1.5}",
                "param 'ratio': 1.5 is above the maximum 1");
}

static void test_number_below_min(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"ratio\": -2}",
                "param 'ratio': -2 is below the minimum -1");
}

static void test_number_rejects_bool(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"ratio\": true}",
                "param 'ratio': want number, got boolean");
}

/* ------------------------------------------------- bool, object, array */

static void test_bool_accepted(void **st) {
  (void)st;
  json_t *out = expect_accept(&run_action, "{\"path\": \"p\", \"verbose\": true}");
  assert_true(json_is_true(json_object_get(out, "verbose")));
  json_decref(out);
}

static void test_bool_rejects_null(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"verbose\": null}",
                "param 'verbose': want bool, got null");
}

static void test_object_accepted(void **st) {
  (void)st;
  json_t *out = expect_accept(&run_action, "{\"path\": \"p\", \"opts\": {\"k\": [1]}}");
  assert_int_equal(json_integer_value(json_array_get(
                       json_object_get(json_object_get(out, "opts"), "k"), 0)),
                   1);
  json_decref(out);
}

static void test_object_rejects_array(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"opts\": []}",
                "param 'opts': want object, got array");
}

static void test_array_accepted_at_max_length(void **st) {
  (void)st;
  json_t *out = expect_accept(&run_action, "{\"path\": \"p\", \"items\": [1, \"a\"]}");
  assert_int_equal(json_array_size(json_object_get(out, "items")), 2);
  json_decref(out);
}

static void test_array_above_max_length(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"items\": [1, 2, 3]}",
                "param 'items': length 3 is above the maximum 2");
}

static void test_array_rejects_object(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"items\": {}}",
                "param 'items': want array, got object");
}

/* ----------------------------------------------- required and unknown */

static void test_missing_required(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"steps\": 2}", "param 'path' is required");
}

static void test_unknown_param(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"path\": \"p\", \"stepz\": 2}", "unknown param 'stepz'");
}

static void test_unknown_reported_before_missing_required(void **st) {
  (void)st;
  expect_reject(&run_action, "{\"pathh\": \"p\"}", "unknown param 'pathh'");
}

static void test_first_wrong_in_declaration_order(void **st) {
  (void)st;
  /* steps comes first in the object but after path in the spec. */
  expect_reject(&run_action, "{\"steps\": \"x\", \"path\": 1}",
                "param 'path': want string, got integer");
}

/* ------------------------------------------------------------ defaults */

static void test_defaults_applied_to_absent_params(void **st) {
  (void)st;
  json_t *out = expect_accept(&run_action, "{\"path\": \"p\"}");
  json_t *want = parse("{\"path\": \"p\", \"steps\": 3, \"verbose\": false, \"label\": \"x\"}");
  assert_true(json_equal(out, want));
  json_decref(want);
  json_decref(out);
}

static void test_given_value_overrides_default(void **st) {
  (void)st;
  json_t *out = expect_accept(&run_action, "{\"path\": \"p\", \"steps\": 7}");
  assert_int_equal(json_integer_value(json_object_get(out, "steps")), 7);
  json_decref(out);
}

static void test_unparsable_default_is_invalid_params(void **st) {
  (void)st;
  apex_param_spec_t s = {.name = "n", .type = APEX_PARAM_INT, .default_json = "{nope"};
  apex_action_desc_t a = {.name = "x", .handler = noop, .params = &s, .n_params = 1};
  json_t *out = NULL;
  char why[256];
  assert_int_equal(apex__params_validate(&a, NULL, &out, why, sizeof why), APEX_E_INVALID_PARAMS);
  assert_null(out);
  assert_non_null(strstr(why, "param 'n': default does not parse"));
}

/* ---------------------------------------------- input and edge shapes */

static void test_input_not_mutated(void **st) {
  (void)st;
  json_t *in = parse("{\"path\": \"p\", \"opts\": {\"k\": 1}}");
  json_t *copy = json_deep_copy(in);
  json_t *out = NULL;
  char why[256];
  assert_int_equal(apex__params_validate(&run_action, in, &out, why, sizeof why), APEX_OK);
  assert_ptr_not_equal(out, in);
  assert_true(json_equal(in, copy));
  /* Nested values are copies too: a caller editing its params later cannot
   * reach the validated object a handler reads. */
  assert_ptr_not_equal(json_object_get(out, "opts"), json_object_get(in, "opts"));
  json_decref(out);
  json_decref(copy);
  json_decref(in);
}

static void test_null_params_is_empty_object(void **st) {
  (void)st;
  json_t *out = NULL;
  char why[256];
  assert_int_equal(apex__params_validate(&opt_action, NULL, &out, why, sizeof why), APEX_OK);
  json_t *want = parse("{\"steps\": 3}");
  assert_true(json_equal(out, want));
  json_decref(want);
  json_decref(out);
}

static void test_null_params_still_needs_required(void **st) {
  (void)st;
  json_t *out = NULL;
  char why[256];
  assert_int_equal(apex__params_validate(&run_action, NULL, &out, why, sizeof why),
                   APEX_E_INVALID_PARAMS);
  assert_string_equal(why, "param 'path' is required");
}

static void test_non_object_params_rejected(void **st) {
  (void)st;
  expect_reject(&run_action, "[1]", "params: want object, got array");
  expect_reject(&run_action, "\"s\"", "params: want object, got string");
}

static void test_short_why_buffer_is_terminated(void **st) {
  (void)st;
  json_t *in = parse("{\"path\": 5}");
  json_t *out = NULL;
  char why[8];
  memset(why, 'z', sizeof why);
  assert_int_equal(apex__params_validate(&run_action, in, &out, why, sizeof why),
                   APEX_E_INVALID_PARAMS);
  assert_string_equal(why, "param '");
  assert_int_equal(apex__params_validate(&run_action, in, &out, NULL, 0), APEX_E_INVALID_PARAMS);
  json_decref(in);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_string_accepted),
      cmocka_unit_test(test_string_rejects_int),
      cmocka_unit_test(test_string_above_max_length),
      cmocka_unit_test(test_string_below_min_length),
      cmocka_unit_test(test_string_bounds_count_utf8_bytes),
      cmocka_unit_test(test_int_accepted_at_both_bounds),
      cmocka_unit_test(test_int_rejects_integral_real),
      cmocka_unit_test(test_int_rejects_string),
      cmocka_unit_test(test_int_above_max),
      cmocka_unit_test(test_int_below_min),
      cmocka_unit_test(test_int_bound_exact_beyond_2_pow_53),
      cmocka_unit_test(test_number_accepts_int_and_real),
      cmocka_unit_test(test_number_above_max),
      cmocka_unit_test(test_number_below_min),
      cmocka_unit_test(test_number_rejects_bool),
      cmocka_unit_test(test_bool_accepted),
      cmocka_unit_test(test_bool_rejects_null),
      cmocka_unit_test(test_object_accepted),
      cmocka_unit_test(test_object_rejects_array),
      cmocka_unit_test(test_array_accepted_at_max_length),
      cmocka_unit_test(test_array_above_max_length),
      cmocka_unit_test(test_array_rejects_object),
      cmocka_unit_test(test_missing_required),
      cmocka_unit_test(test_unknown_param),
      cmocka_unit_test(test_unknown_reported_before_missing_required),
      cmocka_unit_test(test_first_wrong_in_declaration_order),
      cmocka_unit_test(test_defaults_applied_to_absent_params),
      cmocka_unit_test(test_given_value_overrides_default),
      cmocka_unit_test(test_unparsable_default_is_invalid_params),
      cmocka_unit_test(test_input_not_mutated),
      cmocka_unit_test(test_null_params_is_empty_object),
      cmocka_unit_test(test_null_params_still_needs_required),
      cmocka_unit_test(test_non_object_params_rejected),
      cmocka_unit_test(test_short_why_buffer_is_terminated),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
