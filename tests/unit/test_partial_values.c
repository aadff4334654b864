/* The pieces under partial results: flattened values (core/flat.c) come
 * back exactly, a warm buffer is reused without allocating, bytes cut
 * short decode to nothing rather than garbage, and an outcome error gets
 * the partial in place when it is unshared and on a copy when it is not
 * (core/error.c, apex__error_with_partial). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "core/error.h"
#include "core/flat.h"

static json_t *roundtrip(const char *text) {
  json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
  assert_non_null(v);
  apex__flat_t *f = NULL;
  assert_int_equal(apex__flat_encode(v, &f), APEX_OK);
  json_t *back = apex__flat_decode(f);
  assert_non_null(back);
  if (!json_equal(back, v)) fail_msg("%s did not come back", text);
  assert_int_equal(json_typeof(back), json_typeof(v));
  apex__flat_unref(f);
  json_decref(v);
  return back;
}

static void test_every_kind_comes_back(void **st) {
  (void)st;
  const char *texts[] = {"null", "true", "false", "0", "-9223372036854775808", "1.5", "1e300",
                         "\"\"", "\"caf\\u00e9 \\ud83d\\ude00\"", "[]", "{}",
                         "{\"b\": [1, {\"c\": null}], \"a\": {\"x\": [[], {}]}}"};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) json_decref(roundtrip(texts[i]));
  json_t *o = roundtrip("{\"z\": 1, \"a\": 2, \"m\": 3}");
  const char *order[] = {"z", "a", "m"};
  size_t k = 0;
  for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it)) {
    assert_true(k < 3);
    assert_string_equal(json_object_iter_key(it), order[k++]);
  }
  json_decref(o);
}

/* The point of flattening: a publish per item reuses the buffer. */
static void test_a_warm_buffer_is_reused(void **st) {
  (void)st;
  json_t *big = json_pack("{s:s, s:i}", "name", "a fairly long string value here", "i", 1);
  apex__flat_t *f = NULL;
  assert_int_equal(apex__flat_encode(big, &f), APEX_OK);
  apex__flat_t *first = f;
  size_t cap = f->cap;
  for (int i = 0; i < 1000; i++) {
    json_t *v = json_pack("{s:s, s:i}", "name", "short", "i", i);
    assert_int_equal(apex__flat_encode(v, &f), APEX_OK);
    json_decref(v);
  }
  assert_ptr_equal(f, first);
  assert_int_equal(f->cap, cap);
  json_t *back = apex__flat_decode(f);
  assert_int_equal(json_integer_value(json_object_get(back, "i")), 999);
  json_decref(back);
  assert_true(apex__flat_unshared(f));
  apex__flat_ref(f);
  assert_false(apex__flat_unshared(f));
  apex__flat_unref(f);
  apex__flat_unref(f);
  json_decref(big);
}

static void test_growth_keeps_what_was_written(void **st) {
  (void)st;
  json_t *a = json_array();
  for (int i = 0; i < 10000; i++) json_array_append_new(a, json_sprintf("item %d", i));
  apex__flat_t *f = NULL;
  assert_int_equal(apex__flat_encode(a, &f), APEX_OK);
  json_t *back = apex__flat_decode(f);
  assert_true(json_equal(back, a));
  json_decref(back);
  apex__flat_unref(f);
  json_decref(a);
}

/* A buffer cut anywhere decodes to NULL, never past its end (ASan). */
static void test_short_bytes_decode_to_null(void **st) {
  (void)st;
  json_t *v = json_loads("{\"a\": [1, \"two\", 3.0, {\"b\": true}]}", 0, NULL);
  apex__flat_t *f = NULL;
  assert_int_equal(apex__flat_encode(v, &f), APEX_OK);
  size_t len = f->len;
  for (size_t cut = 0; cut < len; cut++) {
    f->len = cut;
    assert_null(apex__flat_decode(f));
  }
  f->len = len;
  json_t *back = apex__flat_decode(f);
  assert_true(json_equal(back, v));
  json_decref(back);
  apex__flat_unref(f);
  json_decref(v);
  assert_null(apex__flat_decode(NULL));
}

/* Deeper than the limit (a value changed after its check): refused, no
 * unbounded recursion. */
static void test_too_deep_is_refused(void **st) {
  (void)st;
  json_t *root = json_array(), *at = root;
  for (int i = 0; i < APEX_VALUE_MAX_DEPTH + 5; i++) {
    json_t *next = json_array();
    json_array_append_new(at, next);
    at = next;
  }
  apex__flat_t *f = NULL;
  assert_int_equal(apex__flat_encode(root, &f), APEX_E_INVALID);
  apex__flat_unref(f);
  json_decref(root);
}

static void test_error_gets_the_partial_in_place_or_on_a_copy(void **st) {
  (void)st;
  apex__where_t w = {"p", "a", 7, 2};
  apex_error_t *cause = apex__error_new(APEX_E_EXECUTION, &w, NULL, "inner");
  apex_error_t *e = apex__error_new(APEX_E_CANCELLED, &w, cause, "cancelled (%s)", "user");
  /* Unshared: in place. */
  apex_error_t *same = apex__error_with_partial(e, json_pack("{s:i}", "n", 1));
  assert_ptr_equal(same, e);
  assert_int_equal(json_integer_value(json_object_get(apex_error_partial_result(e), "n")), 1);
  /* Shared (another holder, as a RETRY event): a copy with every field. */
  apex_error_t *held = apex_error_ref(e);
  apex_error_t *c = apex__error_with_partial(e, json_pack("{s:i}", "n", 2));
  assert_ptr_not_equal(c, held);
  assert_int_equal(json_integer_value(json_object_get(apex_error_partial_result(held), "n")), 1);
  assert_int_equal(json_integer_value(json_object_get(apex_error_partial_result(c), "n")), 2);
  assert_int_equal(apex_error_code(c), APEX_E_CANCELLED);
  assert_string_equal(apex_error_message(c), "cancelled (user)");
  assert_string_equal(apex_error_plugin(c), "p");
  assert_string_equal(apex_error_action(c), "a");
  assert_int_equal(apex_error_task_id(c), 7);
  assert_int_equal(apex_error_attempt(c), 2);
  assert_ptr_equal(apex_error_cause(c), cause);
  json_t *j = apex_error_to_json(c);
  json_t *jp = json_object_get(j, "partial_result");
  assert_int_equal(json_integer_value(json_object_get(jp, "n")), 2);
  assert_null(json_object_get(json_object_get(j, "cause"), "partial_result"));
  json_decref(j);
  apex_error_unref(c);
  apex_error_unref(held);
  /* NULL partial: nothing changes. */
  apex_error_t *plain = apex__error_new(APEX_E_EXECUTION, &w, NULL, "x");
  assert_ptr_equal(apex__error_with_partial(plain, NULL), plain);
  assert_null(apex_error_partial_result(plain));
  assert_null(apex_error_partial_result(NULL));
  apex_error_unref(plain);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_kind_comes_back),
      cmocka_unit_test(test_a_warm_buffer_is_reused),
      cmocka_unit_test(test_growth_keeps_what_was_written),
      cmocka_unit_test(test_short_bytes_decode_to_null),
      cmocka_unit_test(test_too_deep_is_refused),
      cmocka_unit_test(test_error_gets_the_partial_in_place_or_on_a_copy),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
