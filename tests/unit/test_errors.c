/* The error model: status names and sentences, the category tests of the
 * hierarchy (a timeout is an execution error), and error objects. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "core/error.h"
#include "core/utf8.h"

static void test_timeout_is_an_execution_error(void **st) {
  (void)st;
  assert_int_equal(apex_status_is_execution(APEX_E_TIMEOUT), 1);
  assert_int_equal(apex_status_is_plugin_error(APEX_E_TIMEOUT), 1);
  assert_int_equal(apex_status_is_load_error(APEX_E_TIMEOUT), 0);
}

static void test_categories_follow_the_hierarchy(void **st) {
  (void)st;
  const int execution[] = {APEX_E_EXECUTION, APEX_E_TIMEOUT, APEX_E_CANCELLED, APEX_E_TRANSIENT,
                           APEX_E_CRASHED,   APEX_E_INVALID_RESULT};
  for (size_t i = 0; i < sizeof execution / sizeof execution[0]; i++) {
    assert_int_equal(apex_status_is_execution(execution[i]), 1);
    assert_int_equal(apex_status_is_plugin_error(execution[i]), 1);
    assert_int_equal(apex_status_is_load_error(execution[i]), 0);
  }
  assert_int_equal(apex_status_is_execution(APEX_E_INVALID_PARAMS), 0);
  assert_int_equal(apex_status_is_plugin_error(APEX_E_INVALID_PARAMS), 1);
  assert_int_equal(apex_status_is_load_error(APEX_E_ABI_MISMATCH), 1);
  assert_int_equal(apex_status_is_plugin_error(APEX_E_ABI_MISMATCH), 1);
  assert_int_equal(apex_status_is_plugin_error(APEX_E_NOMEM), 0);
  assert_int_equal(apex_status_is_execution(APEX_OK), 0);
}

static void test_every_code_has_a_snake_case_name_and_a_sentence(void **st) {
  (void)st;
  assert_string_equal(apex_status_name(APEX_E_TIMEOUT), "timeout");
  assert_string_equal(apex_status_name(APEX_E_INVALID_PARAMS), "invalid_params");
  assert_string_equal(apex_status_name(APEX_E_PLUGIN_NOT_FOUND), "plugin_not_found");
  assert_string_equal(apex_status_name(APEX_E_ACTION_NOT_FOUND), "action_not_found");
  assert_string_equal(apex_status_name(APEX_E_TRANSIENT), "transient");
  assert_string_equal(apex_status_name(APEX_E_EXECUTION), "execution");
  assert_string_equal(apex_status_name(APEX_E_CANCELLED), "cancelled");
  assert_string_equal(apex_status_name(APEX_E_INVALID_RESULT), "invalid_result");
  assert_string_equal(apex_strerror(APEX_E_INVALID_RESULT), "the action's result is not a valid value");
  for (int c = 0; c >= -50; c--) {
    const char *name = apex_status_name(c);
    if (strcmp(name, "unknown") == 0) {
      assert_string_equal(apex_strerror(c), "unknown error");
      continue;
    }
    for (const char *p = name; *p; p++) assert_true((*p >= 'a' && *p <= 'z') || *p == '_');
    assert_true(strlen(apex_strerror(c)) > 0);
  }
  assert_string_equal(apex_status_name(12345), "unknown");
  /* The lookup is a table by -code (status.c): its gaps and both sides of
   * its edges name nothing, and every code names itself. */
  const int none[] = {1, -10, -19, -26, -39, -47, -63, -64, -65, -1000, INT_MIN, INT_MAX};
  for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
    assert_string_equal(apex_status_name(none[i]), "unknown");
    assert_string_equal(apex_strerror(none[i]), "unknown error");
  }
  assert_string_equal(apex_status_name(APEX_OK), "ok");
  assert_string_equal(apex_status_name(APEX_E_STORE), "store");
  assert_string_equal(apex_status_name(APEX_E_PLUGIN), "plugin_error");
  assert_string_equal(apex_status_name(APEX_E_INTERRUPTED), "interrupted");
}

static void test_error_object_carries_where_and_cause(void **st) {
  (void)st;
  apex__where_t w = {"files", "copy", 42, 3};
  apex_error_t *cause = apex__error_new(APEX_E_IO, NULL, NULL, "disk %s", "full");
  apex_error_t *e = apex__error_new(APEX_E_TRANSIENT, &w, cause, "copy failed: %d", 7);
  assert_int_equal(apex_error_code(e), APEX_E_TRANSIENT);
  assert_string_equal(apex_error_message(e), "copy failed: 7");
  assert_string_equal(apex_error_plugin(e), "files");
  assert_string_equal(apex_error_action(e), "copy");
  assert_int_equal(apex_error_task_id(e), 42);
  assert_int_equal(apex_error_attempt(e), 3);
  assert_ptr_equal(apex_error_cause(e), cause);
  json_t *j = apex_error_to_json(e);
  assert_non_null(j);
  char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
  assert_string_equal(s, "{\"action\":\"copy\",\"attempt\":3,\"cause\":{\"code\":\"io\",\"message\":"
                         "\"disk full\"},\"code\":\"transient\",\"message\":\"copy failed: 7\","
                         "\"plugin\":\"files\",\"task\":42}");
  free(s);
  json_decref(j);
  apex_error_unref(e);
}

static void test_null_error_getters_are_safe(void **st) {
  (void)st;
  assert_int_equal(apex_error_code(NULL), APEX_E_INVALID);
  assert_string_equal(apex_error_message(NULL), "");
  assert_null(apex_error_plugin(NULL));
  assert_null(apex_error_to_json(NULL));
  apex_error_unref(NULL);
}

static void test_invalid_utf8_in_a_message_is_scrubbed_so_json_renders(void **st) {
  (void)st;
  apex__where_t w = {"p", "a\xff", 1, 1};
  apex_error_t *e = apex__error_new(APEX_E_EXECUTION, &w, NULL, "bad \xc3(byte) \xe2\x82 end \xc3\xa9");
  assert_string_equal(apex_error_message(e), "bad ?(byte) ?? end \xc3\xa9");
  assert_string_equal(apex_error_action(e), "a?");
  json_t *j = apex_error_to_json(e);
  assert_non_null(j);
  json_decref(j);
  apex_error_unref(e);
}

static void test_scrub_keeps_valid_text_and_cuts_truncated_sequences(void **st) {
  (void)st;
  char ok[] = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80";
  apex__utf8_scrub(ok);
  assert_string_equal(ok, "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80");
  char cut[] = "ab\xf0\x9f\x98";
  apex__utf8_scrub(cut);
  assert_string_equal(cut, "ab???");
  char surrogate[] = "\xed\xa0\x80x";
  apex__utf8_scrub(surrogate);
  assert_string_equal(surrogate, "???x");
}

static void test_fail_stores_error_only_when_asked(void **st) {
  (void)st;
  assert_int_equal(apex__fail(NULL, APEX_E_INVALID, "x"), APEX_E_INVALID);
  apex_error_t *e = NULL;
  assert_int_equal(apex__fail(&e, APEX_E_QUEUE_FULL, "queue %d", 5), APEX_E_QUEUE_FULL);
  assert_string_equal(apex_error_message(e), "queue 5");
  apex_error_unref(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_timeout_is_an_execution_error),
      cmocka_unit_test(test_categories_follow_the_hierarchy),
      cmocka_unit_test(test_every_code_has_a_snake_case_name_and_a_sentence),
      cmocka_unit_test(test_error_object_carries_where_and_cause),
      cmocka_unit_test(test_null_error_getters_are_safe),
      cmocka_unit_test(test_invalid_utf8_in_a_message_is_scrubbed_so_json_renders),
      cmocka_unit_test(test_scrub_keeps_valid_text_and_cuts_truncated_sequences),
      cmocka_unit_test(test_fail_stores_error_only_when_asked),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
