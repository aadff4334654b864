/* Unit tests of src/core/value.c: the rules for JSON values a plugin hands
 * over (depth, cycles, UTF-8, size), the exact reasons they give, freeing a
 * refused value without recursion (deep and cyclic ones too, leaving what
 * the caller still holds intact: ASan's leak check sees the rest), the
 * progress validator applying them to details, and the shared words and
 * number format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "core/utf8.h"
#include "core/value.h"

/* ----------------------------------------------------------------- helpers */

static json_t *parse(const char *text) {
  json_error_t e;
  json_t *j = json_loads(text, 0, &e);
  if (!j) fail_msg("bad test JSON at %d: %s", e.position, e.text);
  return j;
}

/* depth arrays, each the only element of the one outside it, built and
 * (by the caller) freed without recursion. */
static json_t *nested(size_t depth) {
  json_t *v = json_array();
  for (size_t i = 1; i < depth; i++) {
    json_t *outer = json_array();
    assert_non_null(outer);
    assert_int_equal(json_array_append_new(outer, v), 0);
    v = outer;
  }
  return v;
}

static void expect_ok(const json_t *v) {
  apex__value_budget_t b = APEX__VALUE_BUDGET_INIT;
  char why[320] = "untouched";
  assert_int_equal(apex__value_check(v, "result", &b, why, sizeof why), APEX_OK);
  assert_string_equal(why, "");
}

static void expect_reason(const json_t *v, const char *reason) {
  apex__value_budget_t b = APEX__VALUE_BUDGET_INIT;
  char why[320];
  assert_int_equal(apex__value_check(v, "result", &b, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, reason);
}

/* "<where>" followed by n copies of "[0]". */
static void zeros_path(char *out, size_t cap, const char *where, int n) {
  size_t used = (size_t)snprintf(out, cap, "%s", where);
  for (int i = 0; i < n; i++) used += (size_t)snprintf(out + used, cap - used, "[0]");
}

/* {"n": 1, "child": {"parent": <the outer object>}}: a cycle jansson allows. */
static json_t *cyclic(void) {
  json_t *v = parse("{\"n\": 1, \"child\": {}}");
  assert_int_equal(json_object_set(json_object_get(v, "child"), "parent", v), 0);
  return v;
}

/* --------------------------------------------------------------- accepted */

static void test_check_accepts_scalars_and_flat_values(void **st) {
  (void)st;
  json_t *v = parse("{\"s\": \"h\\u00e9llo\", \"i\": 1, \"r\": 0.5, \"b\": true, \"n\": null,"
                    " \"a\": [1, \"x\", {}], \"o\": {\"k\": []}}");
  expect_ok(v);
  json_decref(v);
  json_t *s = json_string("plain");
  expect_ok(s);
  json_decref(s);
}

static void test_check_accepts_exactly_max_depth(void **st) {
  (void)st;
  json_t *v = nested(APEX_VALUE_MAX_DEPTH);
  json_t *inner = v;
  while (json_array_size(inner)) inner = json_array_get(inner, 0);
  assert_int_equal(json_array_append_new(inner, json_integer(7)), 0); /* scalars count no level */
  expect_ok(v);
  apex__value_free(v);
}

static void test_check_accepts_a_value_shared_twice_as_no_cycle(void **st) {
  (void)st;
  json_t *shared = parse("{\"k\": [1, 2]}");
  json_t *v = json_pack("[O, O]", shared, shared);
  expect_ok(v);
  json_decref(v);
  json_decref(shared);
}

/* --------------------------------------------------------------- refused */

static void test_check_refuses_one_level_past_max_depth_naming_the_path(void **st) {
  (void)st;
  json_t *v = nested(APEX_VALUE_MAX_DEPTH + 1);
  char want[320];
  zeros_path(want, sizeof want, "result", APEX_VALUE_MAX_DEPTH);
  strcat(want, ": nested deeper than 64 levels (APEX_VALUE_MAX_DEPTH)");
  expect_reason(v, want);
  apex__value_free(v);
}

static void test_check_refuses_a_million_levels_like_sixty_five(void **st) {
  (void)st;
  json_t *v = nested(1000000);
  char want[320];
  zeros_path(want, sizeof want, "result", APEX_VALUE_MAX_DEPTH);
  strcat(want, ": nested deeper than 64 levels (APEX_VALUE_MAX_DEPTH)");
  expect_reason(v, want);
  apex__value_free(v); /* json_decref would overflow the stack here */
}

static void test_check_names_object_keys_and_indexes_in_the_path(void **st) {
  (void)st;
  json_t *v = parse("{\"a\": {\"b\": [1, 2, {}]}}");
  json_t *arr = json_object_get(json_object_get(v, "a"), "b");
  assert_int_equal(json_array_append_new(arr, json_stringn_nocheck("ok\xe2\x82", 4)), 0);
  expect_reason(v, "result.a.b[3]: not valid UTF-8 at byte 2");
  json_decref(v);
}

static void test_check_refuses_a_key_that_is_not_utf8(void **st) {
  (void)st;
  json_t *v = parse("{\"a\": {}}");
  assert_int_equal(json_object_set_new_nocheck(json_object_get(v, "a"), "k\xff", json_true()), 0);
  expect_reason(v, "result.a: key 'k?' not valid UTF-8 at byte 1");
  json_decref(v);
}

static void test_check_refuses_nul_in_a_string_and_in_a_key(void **st) {
  (void)st;
  json_t *v = json_stringn("ab\0cd", 5); /* jansson takes U+0000; C readers would cut it */
  assert_non_null(v);
  expect_reason(v, "result: not valid UTF-8 at byte 2");
  json_decref(v);
  json_t *o = json_object();
  assert_int_equal(json_object_setn_new(o, "k\0x", 3, json_null()), 0);
  expect_reason(o, "result: key 'k?x' not valid UTF-8 at byte 1");
  json_decref(o);
}

static void test_check_refuses_overlongs_and_surrogates(void **st) {
  (void)st;
  json_t *v = json_pack("[o, o]", json_stringn_nocheck("\xed\xa0\x80", 3),
                        json_stringn_nocheck("\xc0\xaf", 2));
  expect_reason(v, "result[0]: not valid UTF-8 at byte 0");
  json_array_remove(v, 0);
  expect_reason(v, "result[0]: not valid UTF-8 at byte 0");
  json_decref(v);
}

static void test_check_refuses_a_cycle_naming_where_it_closes(void **st) {
  (void)st;
  json_t *v = cyclic();
  expect_reason(v, "result.child.parent: contains itself (a cycle)");
  apex__value_free(v);
}

static void test_check_refuses_a_cycle_through_an_array(void **st) {
  (void)st;
  json_t *a = json_array(), *o = json_object();
  assert_int_equal(json_array_append_new(a, o), 0);
  assert_int_equal(json_object_set(o, "back", a), 0);
  expect_reason(a, "result[0].back: contains itself (a cycle)");
  apex__value_free(a);
}

static void test_check_refuses_more_than_max_nodes(void **st) {
  (void)st;
  json_t *one = json_integer(1), *v = json_array();
  for (size_t i = 0; i < APEX_VALUE_MAX_NODES - 1; i++) assert_int_equal(json_array_append(v, one), 0);
  expect_ok(v); /* the array and its elements: exactly the limit */
  assert_int_equal(json_array_append(v, one), 0);
  expect_reason(v, "result: more than 1000000 values (APEX_VALUE_MAX_NODES)");
  json_decref(v);
  json_decref(one);
}

static void test_check_counts_string_and_key_bytes_against_the_budget(void **st) {
  (void)st;
  json_t *v = parse("{\"abc\": \"defg\"}"); /* 3 + 4 bytes */
  apex__value_budget_t b = {100, 7};
  assert_int_equal(apex__value_check(v, "x", &b, NULL, 0), APEX_OK);
  assert_int_equal(b.bytes, 0);
  assert_int_equal(b.nodes, 98);
  char why[128];
  b = (apex__value_budget_t){100, 6};
  assert_int_equal(apex__value_check(v, "x", &b, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, "x: more than 67108864 bytes of strings and keys (APEX_VALUE_MAX_BYTES)");
  json_decref(v);
}

static void test_check_refuses_more_than_max_bytes(void **st) {
  (void)st;
  /* One MiB string, shared: 65 of them are just over 64 MiB. */
  size_t mib = 1024 * 1024;
  char *text = malloc(mib + 1);
  assert_non_null(text);
  memset(text, 'x', mib);
  text[mib] = '\0';
  json_t *s = json_string(text), *v = json_array();
  free(text);
  for (int i = 0; i < 64; i++) assert_int_equal(json_array_append(v, s), 0);
  expect_ok(v);
  assert_int_equal(json_array_append(v, s), 0);
  expect_reason(v, "result: more than 67108864 bytes of strings and keys (APEX_VALUE_MAX_BYTES)");
  json_decref(v);
  json_decref(s);
}

static void test_check_echoes_keys_safely_and_cuts_long_paths(void **st) {
  (void)st;
  char key[100];
  memset(key, 'k', sizeof key - 1);
  key[0] = '\x1b'; /* an escape must not reach a log through a reason */
  key[sizeof key - 1] = '\0';
  json_t *v = json_object();
  json_t *leaf = json_stringn_nocheck("\xff", 1);
  assert_int_equal(json_object_set_new(v, key, leaf), 0);
  char want[128];
  snprintf(want, sizeof want, "result.?%.31s...: not valid UTF-8 at byte 0", key + 1);
  expect_reason(v, want);
  json_decref(v);
}

static void test_check_cuts_a_path_too_long_to_show_once(void **st) {
  (void)st;
  /* 65 objects under keys of 10 bytes: the path is cut after the 17th key,
   * and nothing is written after the cut. */
  json_t *v = json_object();
  for (int i = 0; i < APEX_VALUE_MAX_DEPTH; i++) {
    json_t *outer = json_object();
    assert_int_equal(json_object_set_new(outer, "abcdefghij", v), 0);
    v = outer;
  }
  char want[320] = "result";
  for (int i = 0; i < 17; i++) strcat(want, ".abcdefghij");
  strcat(want, "...: nested deeper than 64 levels (APEX_VALUE_MAX_DEPTH)");
  expect_reason(v, want);
  json_decref(v);
}

static void test_check_with_null_why_or_value(void **st) {
  (void)st;
  apex__value_budget_t b = APEX__VALUE_BUDGET_INIT;
  char why[32];
  assert_int_equal(apex__value_check(NULL, "result", &b, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, "result: NULL");
  json_t *v = json_stringn_nocheck("\xff", 1);
  assert_int_equal(apex__value_check(v, "result", &b, NULL, 0), APEX_E_INVALID);
  json_decref(v);
}

/* -------------------------------------------------------------------- free */

static void test_free_takes_null_and_scalars(void **st) {
  (void)st;
  apex__value_free(NULL);
  apex__value_free(json_string("x"));
  apex__value_free(json_true());
}

static void test_free_frees_a_million_levels_of_objects(void **st) {
  (void)st;
  json_t *v = json_object();
  for (int i = 1; i < 1000000; i++) {
    json_t *outer = json_object();
    assert_int_equal(json_object_set_new_nocheck(outer, "a", v), 0);
    v = outer;
  }
  apex__value_free(v); /* ASan reports any of them left */
}

static void test_free_frees_cycles(void **st) {
  (void)st;
  apex__value_free(cyclic());
  json_t *a = json_array(), *b = json_array();
  assert_int_equal(json_array_append(a, b), 0);
  assert_int_equal(json_array_append(b, a), 0);
  json_decref(b);
  apex__value_free(a);
}

static void test_free_leaves_what_the_caller_still_holds(void **st) {
  (void)st;
  json_t *kept = parse("{\"k\": [1, 2, {\"deep\": true}]}");
  json_t *v = json_pack("{s:O, s:[O], s:{}}", "a", kept, "b", kept, "c");
  assert_int_equal(kept->refcount, 3);
  apex__value_free(v);
  assert_int_equal(kept->refcount, 1);
  assert_int_equal(json_array_size(json_object_get(kept, "k")), 3);
  json_t *want = parse("{\"k\": [1, 2, {\"deep\": true}]}");
  assert_true(json_equal(kept, want));
  json_decref(want);
  json_decref(kept);
}

static void test_free_leaves_a_cycle_the_caller_still_holds(void **st) {
  (void)st;
  /* a <-> b, and the caller keeps b: freeing a must not empty either. */
  json_t *a = json_object(), *b = json_object();
  assert_int_equal(json_object_set(a, "b", b), 0);
  assert_int_equal(json_object_set(b, "a", a), 0);
  apex__value_free(a);
  assert_ptr_equal(json_object_get(json_object_get(b, "a"), "b"), b);
  /* The caller breaks its cycle as it would have had to anyway. */
  json_object_del(b, "a");
  json_decref(b);
}

/* ------------------------------------------------- progress details use it */

static void test_progress_details_follow_the_value_rules(void **st) {
  (void)st;
  json_t *d = json_pack("{s:o}", "d", nested(1000000));
  apex_progress_update_t u = {.percentage = 1, .details = d};
  char want[320], why[320];
  zeros_path(want, sizeof want, "details.d", APEX_VALUE_MAX_DEPTH - 1);
  strcat(want, ": nested deeper than 64 levels (APEX_VALUE_MAX_DEPTH)");
  assert_int_equal(apex_progress_update_validate(&u, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, want);
  json_t *j = json_pack("{s:i, s:O}", "percentage", 1, "details", d);
  assert_int_equal(apex_progress_validate(j, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, want);
  json_decref(j);
  apex__value_free(d);
}

static void test_progress_sub_task_details_are_named_by_their_path(void **st) {
  (void)st;
  json_t *j = parse("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 2},"
                    " {\"name\": \"b\", \"percentage\": 3, \"details\": {\"x\": []}}]}");
  json_t *x = json_object_get(json_object_get(json_array_get(json_object_get(j, "sub_tasks"), 1),
                                              "details"),
                              "x");
  assert_int_equal(json_array_append_new(x, json_stringn_nocheck("\xc3", 1)), 0);
  char why[256];
  assert_int_equal(apex_progress_validate(j, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, "sub_tasks[1].details.x[0]: not valid UTF-8 at byte 0");
  json_decref(j);
}

static void test_progress_counts_all_details_of_an_update_together(void **st) {
  (void)st;
  /* Two sub-tasks' details of 600,000 values each: fine alone, too many
   * in one update. */
  json_t *one = json_integer(1), *big = json_array();
  for (int i = 0; i < 600000; i++) assert_int_equal(json_array_append(big, one), 0);
  json_t *j = json_pack("{s:i, s:[{s:s, s:i, s:{s:O}}, {s:s, s:i, s:{s:O}}]}", "percentage", 1,
                        "sub_tasks", "name", "a", "percentage", 1, "details", "v", big, "name",
                        "b", "percentage", 1, "details", "v", big);
  assert_non_null(j);
  char why[256];
  assert_int_equal(apex_progress_validate(j, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, "sub_tasks[1].details: more than 1000000 values (APEX_VALUE_MAX_NODES)");
  json_array_remove(json_object_get(j, "sub_tasks"), 1);
  assert_int_equal(apex_progress_validate(j, why, sizeof why), APEX_OK);
  json_decref(j);
  json_decref(big);
  json_decref(one);
}

/* ------------------------------------------------------------ words, numbers */

static void test_json_kind_words(void **st) {
  (void)st;
  json_t *v = parse("[{}, [], \"s\", 1, 1.5, true, false, null]");
  const char *want[] = {"object", "array", "string", "integer", "real", "boolean", "boolean", "null"};
  for (size_t i = 0; i < json_array_size(v); i++)
    assert_string_equal(apex__json_kind(json_array_get(v, i)), want[i]);
  json_decref(v);
}

static void test_fmt_num_is_shortest_exact_and_never_exponent_for_moderate_values(void **st) {
  (void)st;
  char buf[40];
  const struct {
    double d;
    const char *s;
  } cases[] = {{1000000, "1000000"}, {0.1, "0.1"}, {100.0000001, "100.0000001"},
               {1.0 / 3, "0.3333333333333333"}, {-0.5, "-0.5"}, {101, "101"}, {1e300, "1e+300"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    apex__fmt_num(buf, sizeof buf, cases[i].d);
    assert_string_equal(buf, cases[i].s);
  }
}

static void test_echo_cuts_and_replaces_unprintable_bytes(void **st) {
  (void)st;
  char out[8];
  apex__echo(out, sizeof out, "ab\ncd", 5);
  assert_string_equal(out, "ab?c...");
  apex__echo(out, sizeof out, "abcd", 4);
  assert_string_equal(out, "abcd");
}

/* ------------------------------------------------------------------ UTF-8 */

static void test_utf8_bad_at_names_the_first_bad_byte(void **st) {
  (void)st;
  assert_int_equal(apex__utf8_bad_at("abc", 3), 3);
  assert_int_equal(apex__utf8_bad_at("a\xc3\xa9z\xff", 5), 4);
  assert_int_equal(apex__utf8_bad_at("\xe2\x82", 2), 0);
  assert_int_equal(apex__utf8_bad_at(NULL, 0), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_check_accepts_scalars_and_flat_values),
      cmocka_unit_test(test_check_accepts_exactly_max_depth),
      cmocka_unit_test(test_check_accepts_a_value_shared_twice_as_no_cycle),
      cmocka_unit_test(test_check_refuses_one_level_past_max_depth_naming_the_path),
      cmocka_unit_test(test_check_refuses_a_million_levels_like_sixty_five),
      cmocka_unit_test(test_check_names_object_keys_and_indexes_in_the_path),
      cmocka_unit_test(test_check_refuses_a_key_that_is_not_utf8),
      cmocka_unit_test(test_check_refuses_nul_in_a_string_and_in_a_key),
      cmocka_unit_test(test_check_refuses_overlongs_and_surrogates),
      cmocka_unit_test(test_check_refuses_a_cycle_naming_where_it_closes),
      cmocka_unit_test(test_check_refuses_a_cycle_through_an_array),
      cmocka_unit_test(test_check_refuses_more_than_max_nodes),
      cmocka_unit_test(test_check_counts_string_and_key_bytes_against_the_budget),
      cmocka_unit_test(test_check_refuses_more_than_max_bytes),
      cmocka_unit_test(test_check_echoes_keys_safely_and_cuts_long_paths),
      cmocka_unit_test(test_check_cuts_a_path_too_long_to_show_once),
      cmocka_unit_test(test_check_with_null_why_or_value),
      cmocka_unit_test(test_free_takes_null_and_scalars),
      cmocka_unit_test(test_free_frees_a_million_levels_of_objects),
      cmocka_unit_test(test_free_frees_cycles),
      cmocka_unit_test(test_free_leaves_what_the_caller_still_holds),
      cmocka_unit_test(test_free_leaves_a_cycle_the_caller_still_holds),
      cmocka_unit_test(test_progress_details_follow_the_value_rules),
      cmocka_unit_test(test_progress_sub_task_details_are_named_by_their_path),
      cmocka_unit_test(test_progress_counts_all_details_of_an_update_together),
      cmocka_unit_test(test_json_kind_words),
      cmocka_unit_test(test_fmt_num_is_shortest_exact_and_never_exponent_for_moderate_values),
      cmocka_unit_test(test_echo_cuts_and_replaces_unprintable_bytes),
      cmocka_unit_test(test_utf8_bad_at_names_the_first_bad_byte),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
