/* The cancel's error, put together without formatting
 * (apex__error_cancelled), and an error of Apex's own words
 * (apex__error_clean): the same objects apex__error_new made with
 * "cancelled (%s)" and "%s", so hosts see no difference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "core/error.h"

/* Every field of a against b's. */
static void assert_same_error(const apex_error_t *a, const apex_error_t *b) {
  assert_int_equal(apex_error_code(a), apex_error_code(b));
  assert_string_equal(apex_error_message(a), apex_error_message(b));
  if (apex_error_plugin(b))
    assert_string_equal(apex_error_plugin(a), apex_error_plugin(b));
  else
    assert_null(apex_error_plugin(a));
  if (apex_error_action(b))
    assert_string_equal(apex_error_action(a), apex_error_action(b));
  else
    assert_null(apex_error_action(a));
  assert_int_equal(apex_error_task_id(a), apex_error_task_id(b));
  assert_int_equal(apex_error_attempt(a), apex_error_attempt(b));
}

static void test_it_is_what_the_formatted_one_was(void **st) {
  (void)st;
  apex__where_t w = {"bench", "pend", 77, 2};
  const char *reasons[] = {"user", "shutdown", "", "a host's own words, rather long ones"};
  for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++) {
    apex_error_t *a = apex__error_cancelled(&w, NULL, reasons[i]);
    apex_error_t *b = apex__error_new(APEX_E_CANCELLED, &w, NULL, "cancelled (%s)", reasons[i]);
    assert_same_error(a, b);
    assert_null(apex_error_cause(a));
    apex_error_unref(a);
    apex_error_unref(b);
  }
  apex_error_t *a = apex__error_cancelled(&w, NULL, "user");
  assert_string_equal(apex_error_message(a), "cancelled (user)");
  assert_string_equal(apex_error_plugin(a), "bench");
  assert_string_equal(apex_error_action(a), "pend");
  assert_int_equal(apex_error_task_id(a), 77);
  assert_int_equal(apex_error_attempt(a), 2);
  apex_error_unref(a);
}

static void test_no_where_and_a_cause(void **st) {
  (void)st;
  apex_error_t *cause = apex__error_new(APEX_E_TRANSIENT, NULL, NULL, "flaky");
  apex_error_t *a = apex__error_cancelled(NULL, cause, "timeout");
  assert_int_equal(apex_error_code(a), APEX_E_CANCELLED);
  assert_string_equal(apex_error_message(a), "cancelled (timeout)");
  assert_null(apex_error_plugin(a));
  assert_null(apex_error_action(a));
  assert_int_equal(apex_error_task_id(a), 0);
  assert_ptr_equal(apex_error_cause(a), cause); /* taken, freed with a */
  apex_error_unref(a);
  apex_error_t *n = apex__error_cancelled(NULL, NULL, NULL);
  assert_string_equal(apex_error_message(n), "cancelled ((null))");
  apex_error_unref(n);
}

static void test_a_reason_that_is_not_utf8_is_scrubbed(void **st) {
  (void)st;
  apex__where_t w = {"p", "a", 1, 1};
  apex_error_t *a = apex__error_cancelled(&w, NULL, "bad \xc3(byte)");
  assert_string_equal(apex_error_message(a), "cancelled (bad ?(byte))");
  json_t *j = apex_error_to_json(a);
  assert_non_null(j);
  json_decref(j);
  apex_error_unref(a);
}

static void test_a_clean_error_is_the_formatted_one(void **st) {
  (void)st;
  apex__where_t w = {"lazy_kit", "pend", 9, 1};
  const char *msgs[] = {apex_strerror(APEX_E_CANCELLED), "cancelled (shutdown)", ""};
  for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++) {
    apex_error_t *a = apex__error_clean(APEX_E_CANCELLED, &w, msgs[i]);
    apex_error_t *b = apex__error_new(APEX_E_CANCELLED, &w, NULL, "%s", msgs[i]);
    assert_same_error(a, b);
    assert_null(apex_error_cause(a));
    apex_error_unref(a);
    apex_error_unref(b);
  }
  apex_error_t *n = apex__error_clean(APEX_E_TIMEOUT, NULL, "late");
  assert_int_equal(apex_error_code(n), APEX_E_TIMEOUT);
  assert_string_equal(apex_error_message(n), "late");
  assert_null(apex_error_plugin(n));
  assert_int_equal(apex_error_task_id(n), 0);
  apex_error_unref(n);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_it_is_what_the_formatted_one_was),
      cmocka_unit_test(test_no_where_and_a_cause),
      cmocka_unit_test(test_a_reason_that_is_not_utf8_is_scrubbed),
      cmocka_unit_test(test_a_clean_error_is_the_formatted_one),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
