/* Unit tests of src/core/progress.c: the ProgressUpdate validator (JSON and C
 * forms, with exact reasons), the UTF-8 checker, and progress snapshots
 * (getters, to_json, reference counting, concurrent readers). */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "core/progress_internal.h"
#include "core/utf8.h"

/* ----------------------------------------------------------------- helpers */

static json_t *parse(const char *text) {
  json_error_t e;
  json_t *j = json_loads(text, 0, &e);
  if (!j) fail_msg("bad test JSON at %d: %s", e.position, e.text);
  return j;
}

static void expect_valid(const char *text) {
  json_t *j = parse(text);
  char why[256] = "untouched";
  assert_int_equal(apex_progress_validate(j, why, sizeof why), APEX_OK);
  assert_string_equal(why, "");
  json_decref(j);
}

static void expect_reason_json(json_t *j, const char *reason) {
  char why[256];
  assert_int_equal(apex_progress_validate(j, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, reason);
}

static void expect_invalid(const char *text, const char *reason) {
  json_t *j = parse(text);
  expect_reason_json(j, reason);
  json_decref(j);
}

/* {"percentage": 1, "message": <bytes as given, unchecked by jansson>} */
static void expect_message_reason(const char *bytes, size_t len, const char *reason) {
  json_t *j = json_pack("{s:i, s:o}", "percentage", 1, "message", json_stringn_nocheck(bytes, len));
  assert_non_null(j);
  if (reason) {
    expect_reason_json(j, reason);
  } else {
    assert_int_equal(apex_progress_validate(j, NULL, 0), APEX_OK);
  }
  json_decref(j);
}

/* A chain of `depth` nested sub-tasks, each the only child of the last. */
static json_t *chain(int depth) {
  json_t *root = json_pack("{s:i}", "percentage", 0);
  json_t *holder = root;
  for (int i = 0; i < depth; i++) {
    json_t *node = json_pack("{s:s, s:i}", "name", "n", "percentage", 0);
    assert_int_equal(json_object_set_new(holder, "sub_tasks", json_pack("[o]", node)), 0);
    holder = node;
  }
  return root;
}

/* An update whose sub_tasks is a flat array of n nodes. */
static json_t *flat(size_t n) {
  json_t *arr = json_array();
  for (size_t i = 0; i < n; i++)
    assert_int_equal(json_array_append_new(arr, json_pack("{s:s, s:i}", "name", "n", "percentage", 1)),
                     0);
  return json_pack("{s:i, s:o}", "percentage", 0, "sub_tasks", arr);
}

/* ----------------------------------------------------- JSON form: accepted */

static void test_validate_accepts_minimal_update(void **st) { expect_valid("{\"percentage\": 0}"); }

static void test_validate_accepts_integer_and_real_bounds(void **st) {
  expect_valid("{\"percentage\": 100}");
  expect_valid("{\"percentage\": 100.0}");
  expect_valid("{\"percentage\": 0.0}");
  expect_valid("{\"percentage\": -0.0}");
  expect_valid("{\"percentage\": 57.25}");
}

static void test_validate_accepts_full_update(void **st) {
  expect_valid("{\"percentage\": 40, \"message\": \"t\\u00e9l\\u00e9chargement \\ud83d\\ude00\","
               " \"status\": \"milestone_reached\", \"details\": {\"bytes\": 10, \"x\": [1]},"
               " \"sub_tasks\": [{\"name\": \"fetch\", \"percentage\": 100, \"status\": \"completed\","
               " \"message\": null, \"weight\": 2, \"details\": {},"
               " \"sub_tasks\": [{\"name\": \"dns\", \"percentage\": 100.0, \"weight\": 0.5}]},"
               " {\"name\": \"parse\", \"percentage\": 0, \"message\": \"waiting\", \"sub_tasks\": []}]}");
}

static void test_validate_accepts_null_message(void **st) {
  expect_valid("{\"percentage\": 1, \"message\": null}");
}

static void test_validate_accepts_every_known_status(void **st) {
  static const char *const all[] = {"running",    "completed", "error",  "milestone_reached",
                                    "queued",     "retry_wait", "succeeded", "failed",
                                    "cancelled",  "timed_out"};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    json_t *j = json_pack("{s:i, s:s}", "percentage", 1, "status", all[i]);
    assert_int_equal(apex_progress_validate(j, NULL, 0), APEX_OK);
    json_decref(j);
  }
}

static void test_validate_accepts_message_of_max_length(void **st) {
  char buf[APEX_PROGRESS_MESSAGE_MAX];
  memset(buf, 'a', sizeof buf);
  expect_message_reason(buf, sizeof buf, NULL);
}

/* ----------------------------------------------------- JSON form: rejected */

static void test_validate_rejects_null_update(void **st) {
  char why[64];
  assert_int_equal(apex_progress_validate(NULL, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, "update: NULL");
}

static void test_validate_rejects_non_object_update(void **st) {
  expect_invalid("[1]", "update: want object, got array");
}

static void test_validate_rejects_missing_percentage(void **st) {
  expect_invalid("{\"message\": \"x\"}", "percentage: required");
}

static void test_validate_rejects_percentage_above_100(void **st) {
  expect_invalid("{\"percentage\": 120}", "percentage: 120 is outside [0, 100]");
}

static void test_validate_rejects_negative_percentage(void **st) {
  expect_invalid("{\"percentage\": -0.5}", "percentage: -0.5 is outside [0, 100]");
}

static void test_validate_names_percentage_just_above_100_exactly(void **st) {
  expect_invalid("{\"percentage\": 100.0000001}", "percentage: 100.0000001 is outside [0, 100]");
}

static void test_validate_rejects_string_percentage(void **st) {
  expect_invalid("{\"percentage\": \"50\"}", "percentage: want number, got string");
}

static void test_validate_rejects_boolean_percentage(void **st) {
  expect_invalid("{\"percentage\": true}", "percentage: want number, got boolean");
}

static void test_validate_rejects_non_string_message(void **st) {
  expect_invalid("{\"percentage\": 1, \"message\": 5}", "message: want string, got integer");
}

static void test_validate_rejects_message_over_max_length(void **st) {
  char buf[APEX_PROGRESS_MESSAGE_MAX + 1];
  memset(buf, 'a', sizeof buf);
  expect_message_reason(buf, sizeof buf, "message: 1025 bytes, longer than 1024");
}

static void test_validate_rejects_message_with_invalid_utf8(void **st) {
  expect_message_reason("abcdefg\xff", 8, "message: not valid UTF-8 at byte 7");
}

static void test_validate_rejects_message_with_nul_byte(void **st) {
  expect_message_reason("ab\0cd", 5, "message: not valid UTF-8 at byte 2");
}

static void test_validate_rejects_unknown_status(void **st) {
  expect_invalid("{\"percentage\": 1, \"status\": \"done\"}", "status: unknown status 'done'");
}

static void test_validate_rejects_non_string_status(void **st) {
  expect_invalid("{\"percentage\": 1, \"status\": 3}", "status: want string, got integer");
}

static void test_validate_rejects_status_with_nul_suffix(void **st) {
  json_t *j = json_pack("{s:i, s:o}", "percentage", 1, "status", json_stringn("running\0x", 9));
  expect_reason_json(j, "status: unknown status 'running?x'");
  json_decref(j);
}

static void test_validate_truncates_and_sanitizes_echoed_status(void **st) {
  expect_invalid("{\"percentage\": 1, \"status\": \"a\\nbcdefghijklmnopqrstuvwxyz0123456789\"}",
                 "status: unknown status 'a?bcdefghijklmnopqrstuvwxyz01234...'");
}

static void test_validate_rejects_array_details(void **st) {
  expect_invalid("{\"percentage\": 1, \"details\": []}", "details: want object, got array");
}

static void test_validate_rejects_null_details(void **st) {
  expect_invalid("{\"percentage\": 1, \"details\": null}", "details: want object, got null");
}

static void test_validate_rejects_unknown_top_level_key(void **st) {
  expect_invalid("{\"percentage\": 1, \"colour\": \"red\"}", "update: unknown key 'colour'");
}

static void test_validate_rejects_seq_key(void **st) {
  expect_invalid("{\"percentage\": 1, \"seq\": 3}", "update: unknown key 'seq'");
}

static void test_validate_rejects_object_sub_tasks(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": {}}", "sub_tasks: want array, got object");
}

static void test_validate_rejects_non_object_sub_task(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [7]}", "sub_tasks[0]: want object, got integer");
}

static void test_validate_rejects_sub_task_name_of_wrong_type(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1},"
                 " {\"name\": 5, \"percentage\": 1}]}",
                 "sub_tasks[1].name: want string, got integer");
}

static void test_validate_rejects_sub_task_without_name(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"percentage\": 1}]}",
                 "sub_tasks[0].name: required");
}

static void test_validate_rejects_sub_task_with_empty_name(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"\", \"percentage\": 1}]}",
                 "sub_tasks[0].name: empty");
}

static json_t *named(size_t len) {
  char name[200];
  memset(name, 'n', len);
  json_t *node = json_pack("{s:s%, s:i}", "name", name, len, "percentage", 1);
  return json_pack("{s:i, s:[o]}", "percentage", 1, "sub_tasks", node);
}

static void test_validate_accepts_sub_task_name_of_128_bytes(void **st) {
  json_t *j = named(128);
  assert_int_equal(apex_progress_validate(j, NULL, 0), APEX_OK);
  json_decref(j);
}

static void test_validate_rejects_sub_task_name_of_129_bytes(void **st) {
  json_t *j = named(129);
  expect_reason_json(j, "sub_tasks[0].name: 129 bytes, longer than 128");
  json_decref(j);
}

static void test_validate_rejects_sub_task_name_with_invalid_utf8(void **st) {
  json_t *node = json_pack("{s:o, s:i}", "name", json_stringn_nocheck("ab\xed\xa0\x80", 5),
                           "percentage", 1);
  json_t *j = json_pack("{s:i, s:[o]}", "percentage", 1, "sub_tasks", node);
  expect_reason_json(j, "sub_tasks[0].name: not valid UTF-8 at byte 2");
  json_decref(j);
}

static void test_validate_rejects_sub_task_without_percentage(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\"}]}",
                 "sub_tasks[0].percentage: required");
}

static void test_validate_names_nested_sub_task_percentage(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1,"
                 " \"sub_tasks\": [{\"name\": \"b\", \"percentage\": 1}, {\"name\": \"c\", \"percentage\": 2},"
                 " {\"name\": \"d\", \"percentage\": 101}]}]}",
                 "sub_tasks[0].sub_tasks[2].percentage: 101 is outside [0, 100]");
}

static void test_validate_rejects_unknown_sub_task_status(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1,"
                 " \"status\": \"Running\"}]}",
                 "sub_tasks[0].status: unknown status 'Running'");
}

static void test_validate_rejects_non_string_sub_task_message(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1,"
                 " \"message\": []}]}",
                 "sub_tasks[0].message: want string, got array");
}

static void test_validate_rejects_zero_weight(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1,"
                 " \"weight\": 0}]}",
                 "sub_tasks[0].weight: 0 is not > 0");
}

static void test_validate_rejects_negative_weight(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1,"
                 " \"weight\": -2.5}]}",
                 "sub_tasks[0].weight: -2.5 is not > 0");
}

static void test_validate_rejects_string_weight(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1,"
                 " \"weight\": \"1\"}]}",
                 "sub_tasks[0].weight: want number, got string");
}

static void test_validate_rejects_array_sub_task_details(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1,"
                 " \"details\": [1]}]}",
                 "sub_tasks[0].details: want object, got array");
}

static void test_validate_rejects_unknown_sub_task_key(void **st) {
  expect_invalid("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1,"
                 " \"percent\": 1}]}",
                 "sub_tasks[0]: unknown key 'percent'");
}

static void test_validate_accepts_max_depth(void **st) {
  json_t *j = chain(APEX_PROGRESS_MAX_DEPTH);
  assert_int_equal(apex_progress_validate(j, NULL, 0), APEX_OK);
  json_decref(j);
}

static void test_validate_rejects_one_level_past_max_depth(void **st) {
  json_t *j = chain(APEX_PROGRESS_MAX_DEPTH + 1);
  expect_reason_json(j, "sub_tasks[0].sub_tasks[0].sub_tasks[0].sub_tasks[0].sub_tasks[0]."
                        "sub_tasks[0].sub_tasks[0].sub_tasks[0].sub_tasks[0]: "
                        "nested deeper than 8 levels");
  json_decref(j);
}

static void test_validate_accepts_1000_sub_tasks(void **st) {
  json_t *j = flat(1000);
  assert_int_equal(apex_progress_validate(j, NULL, 0), APEX_OK);
  json_decref(j);
}

static void test_validate_rejects_1001_sub_tasks(void **st) {
  json_t *j = flat(1001);
  expect_reason_json(j, "sub_tasks[1000]: more than 1000 sub-tasks in the tree");
  json_decref(j);
}

static void test_validate_counts_nodes_across_levels(void **st) {
  /* One leaf, then 500 parents of one leaf each: in depth-first order the
   * 1001st sub-task is the child of sub_tasks[500]. */
  json_t *arr = json_array();
  json_array_append_new(arr, json_pack("{s:s, s:i}", "name", "leaf", "percentage", 1));
  for (int i = 1; i <= 500; i++)
    json_array_append_new(arr, json_pack("{s:s, s:i, s:[{s:s, s:i}]}", "name", "p", "percentage", 1,
                                         "sub_tasks", "name", "c", "percentage", 1));
  json_t *j = json_pack("{s:i, s:o}", "percentage", 0, "sub_tasks", arr);
  expect_reason_json(j, "sub_tasks[500].sub_tasks[0]: more than 1000 sub-tasks in the tree");
  json_decref(j);
}

static void test_validate_accepts_null_why(void **st) {
  json_t *j = parse("{\"percentage\": 101}");
  assert_int_equal(apex_progress_validate(j, NULL, 100), APEX_E_INVALID);
  json_decref(j);
}

static void test_validate_leaves_why_alone_when_why_len_is_zero(void **st) {
  json_t *j = parse("{\"percentage\": 101}");
  char why[8] = "keep";
  assert_int_equal(apex_progress_validate(j, why, 0), APEX_E_INVALID);
  assert_string_equal(why, "keep");
  json_decref(j);
}

static void test_validate_truncates_reason_to_why_len(void **st) {
  json_t *j = parse("{\"percentage\": 101}");
  char why[16];
  memset(why, 'x', sizeof why);
  assert_int_equal(apex_progress_validate(j, why, 8), APEX_E_INVALID);
  assert_string_equal(why, "percent");
  assert_int_equal(why[8], 'x');
  json_decref(j);
}

/* ------------------------------------------------------------------ C form */

static void expect_update_reason(const apex_progress_update_t *u, const char *reason) {
  char why[256];
  assert_int_equal(apex_progress_update_validate(u, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, reason);
}

static void test_update_validate_accepts_minimal(void **st) {
  apex_progress_update_t u = {.percentage = 0};
  assert_int_equal(apex_progress_update_validate(&u, NULL, 0), APEX_OK);
}

static void test_update_validate_accepts_full(void **st) {
  json_t *details = parse("{\"k\": 1}");
  json_t *subs = parse("[{\"name\": \"a\", \"percentage\": 100, \"weight\": 3}]");
  apex_progress_update_t u = {55.5, "h\xc3\xa9llo", "error", details, subs};
  assert_int_equal(apex_progress_update_validate(&u, NULL, 0), APEX_OK);
  json_decref(details);
  json_decref(subs);
}

static void test_update_validate_rejects_null(void **st) {
  expect_update_reason(NULL, "update: NULL");
}

static void test_update_validate_rejects_nan(void **st) {
  apex_progress_update_t u = {.percentage = NAN};
  expect_update_reason(&u, "percentage: not finite");
}

static void test_update_validate_rejects_infinity(void **st) {
  apex_progress_update_t u = {.percentage = INFINITY};
  expect_update_reason(&u, "percentage: not finite");
}

static void test_update_validate_rejects_out_of_range(void **st) {
  apex_progress_update_t u = {.percentage = 100.5};
  expect_update_reason(&u, "percentage: 100.5 is outside [0, 100]");
}

static void test_update_validate_rejects_invalid_utf8_message(void **st) {
  apex_progress_update_t u = {.percentage = 1, .message = "abcdefg\xc0\xaf"};
  expect_update_reason(&u, "message: not valid UTF-8 at byte 7");
}

static void test_update_validate_rejects_long_message(void **st) {
  char *m = malloc(2000);
  assert_non_null(m);
  memset(m, 'a', 1999);
  m[1999] = '\0';
  apex_progress_update_t u = {.percentage = 1, .message = m};
  expect_update_reason(&u, "message: 1999 bytes, longer than 1024");
  free(m);
}

static void test_update_validate_rejects_unknown_status(void **st) {
  apex_progress_update_t u = {.percentage = 1, .status = "done"};
  expect_update_reason(&u, "status: unknown status 'done'");
}

static void test_update_validate_rejects_array_details(void **st) {
  json_t *d = json_array();
  apex_progress_update_t u = {.percentage = 1, .details = d};
  expect_update_reason(&u, "details: want object, got array");
  json_decref(d);
}

static void test_update_validate_checks_sub_tasks_like_json_form(void **st) {
  json_t *subs = parse("[{\"name\": \"a\", \"percentage\": 1}, {\"name\": 2, \"percentage\": 1}]");
  apex_progress_update_t u = {.percentage = 1, .sub_tasks = subs};
  expect_update_reason(&u, "sub_tasks[1].name: want string, got integer");
  json_decref(subs);
}

/* ------------------------------------------------------------ statuses */

static void test_status_is_known_accepts_listed_statuses(void **st) {
  assert_int_equal(apex_progress_status_is_known("running"), 1);
  assert_int_equal(apex_progress_status_is_known("milestone_reached"), 1);
  assert_int_equal(apex_progress_status_is_known("retry_wait"), 1);
  assert_int_equal(apex_progress_status_is_known("timed_out"), 1);
}

static void test_status_is_known_rejects_others(void **st) {
  assert_int_equal(apex_progress_status_is_known(NULL), 0);
  assert_int_equal(apex_progress_status_is_known(""), 0);
  assert_int_equal(apex_progress_status_is_known("Running"), 0);
  assert_int_equal(apex_progress_status_is_known("runnin"), 0);
  assert_int_equal(apex_progress_status_is_known("running "), 0);
}

/* ------------------------------------------------------------------- UTF-8 */

#define VALID(lit) apex__utf8_valid(lit, sizeof(lit) - 1)

static void test_utf8_accepts_ascii_and_empty(void **st) {
  assert_int_equal(VALID("hello, world"), 1);
  assert_int_equal(apex__utf8_valid("", 0), 1);
  assert_int_equal(apex__utf8_valid(NULL, 0), 1);
}

static void test_utf8_accepts_multibyte_sequences(void **st) {
  assert_int_equal(VALID("\xc2\x80"), 1);         /* U+0080, smallest 2-byte */
  assert_int_equal(VALID("\xc3\xa9"), 1);         /* é */
  assert_int_equal(VALID("\xe0\xa0\x80"), 1);     /* U+0800, smallest 3-byte */
  assert_int_equal(VALID("\xe2\x82\xac"), 1);     /* € */
  assert_int_equal(VALID("\xed\x9f\xbf"), 1);     /* U+D7FF, below surrogates */
  assert_int_equal(VALID("\xee\x80\x80"), 1);     /* U+E000, above surrogates */
  assert_int_equal(VALID("\xf0\x90\x80\x80"), 1); /* U+10000, smallest 4-byte */
  assert_int_equal(VALID("\xf0\x9f\x98\x80"), 1); /* 😀 */
  assert_int_equal(VALID("\xf4\x8f\xbf\xbf"), 1); /* U+10FFFF */
}

static void test_utf8_rejects_overlongs(void **st) {
  assert_int_equal(VALID("\xc0\xaf"), 0);
  assert_int_equal(VALID("\xc1\xbf"), 0);
  assert_int_equal(VALID("\xe0\x80\xaf"), 0);
  assert_int_equal(VALID("\xe0\x9f\xbf"), 0);
  assert_int_equal(VALID("\xf0\x80\x80\xaf"), 0);
  assert_int_equal(VALID("\xf0\x8f\xbf\xbf"), 0);
}

static void test_utf8_rejects_surrogates(void **st) {
  assert_int_equal(VALID("\xed\xa0\x80"), 0); /* U+D800 */
  assert_int_equal(VALID("\xed\xbf\xbf"), 0); /* U+DFFF */
}

static void test_utf8_rejects_code_points_above_10ffff(void **st) {
  assert_int_equal(VALID("\xf4\x90\x80\x80"), 0);
  assert_int_equal(VALID("\xf5\x80\x80\x80"), 0);
  assert_int_equal(VALID("\xff"), 0);
}

static void test_utf8_rejects_truncated_sequences(void **st) {
  assert_int_equal(VALID("\xe2\x82"), 0);
  assert_int_equal(VALID("a\xf0\x9f\x98"), 0);
  assert_int_equal(VALID("\xc3"), 0);
  assert_int_equal(VALID("\xe2\x82x"), 0); /* continuation replaced by ASCII */
}

static void test_utf8_rejects_stray_continuation_byte(void **st) {
  assert_int_equal(VALID("a\x80"), 0);
}

static void test_utf8_rejects_nul_byte(void **st) {
  assert_int_equal(apex__utf8_valid("a\0b", 3), 0);
}

static void test_utf8_rejects_null_with_length(void **st) {
  assert_int_equal(apex__utf8_valid(NULL, 1), 0);
}

/* --------------------------------------------------------------- snapshots */

static void test_snapshot_getters_return_what_was_given(void **st) {
  json_t *details = parse("{\"k\": 1}");
  json_t *subs = parse("[{\"name\": \"a\", \"percentage\": 5}]");
  apex_progress_t *p = apex__progress_new(7, 42.5, "half", "milestone_reached", details, subs);
  assert_non_null(p);
  assert_int_equal(apex_progress_seq(p), 7);
  assert_true(apex_progress_percentage(p) == 42.5);
  assert_string_equal(apex_progress_message(p), "half");
  assert_string_equal(apex_progress_status(p), "milestone_reached");
  assert_ptr_equal(apex_progress_details(p), details);
  assert_ptr_equal(apex_progress_sub_tasks(p), subs);
  apex_progress_unref(p);
}

static void test_snapshot_defaults_for_null_parts(void **st) {
  apex_progress_t *p = apex__progress_new(1, 0, NULL, NULL, NULL, NULL);
  assert_non_null(p);
  assert_string_equal(apex_progress_message(p), "");
  assert_string_equal(apex_progress_status(p), "running");
  assert_true(json_is_object(apex_progress_details(p)));
  assert_int_equal(json_object_size(apex_progress_details(p)), 0);
  assert_true(json_is_array(apex_progress_sub_tasks(p)));
  assert_int_equal(json_array_size(apex_progress_sub_tasks(p)), 0);
  apex_progress_unref(p);
}

static void test_snapshot_getters_on_null(void **st) {
  assert_int_equal(apex_progress_seq(NULL), 0);
  assert_true(apex_progress_percentage(NULL) == 0.0);
  assert_string_equal(apex_progress_message(NULL), "");
  assert_string_equal(apex_progress_status(NULL), "");
  assert_null(apex_progress_details(NULL));
  assert_null(apex_progress_sub_tasks(NULL));
  assert_null(apex_progress_to_json(NULL));
}

static void test_snapshot_copies_strings(void **st) {
  char msg[] = "mutable";
  char status[] = "running";
  apex_progress_t *p = apex__progress_new(1, 1, msg, status, NULL, NULL);
  assert_non_null(p);
  msg[0] = 'X';
  status[0] = 'X';
  assert_string_equal(apex_progress_message(p), "mutable");
  assert_string_equal(apex_progress_status(p), "running");
  apex_progress_unref(p);
}

static void test_snapshot_takes_json_and_releases_it_on_last_unref(void **st) {
  json_t *details = json_object();
  json_t *subs = json_array();
  json_incref(details); /* our own reference, to watch the count */
  json_incref(subs);
  apex_progress_t *p = apex__progress_new(1, 1, NULL, NULL, details, subs);
  assert_non_null(p);
  assert_int_equal(details->refcount, 2);
  assert_int_equal(subs->refcount, 2);
  apex_progress_unref(p);
  assert_int_equal(details->refcount, 1);
  assert_int_equal(subs->refcount, 1);
  json_decref(details);
  json_decref(subs);
}

static void test_snapshot_ref_keeps_it_alive(void **st) {
  json_t *details = json_object();
  json_incref(details);
  apex_progress_t *p = apex__progress_new(3, 1, "m", NULL, details, NULL);
  assert_ptr_equal(apex_progress_ref(p), p);
  apex_progress_unref(p);
  assert_int_equal(details->refcount, 2); /* still held by p */
  assert_string_equal(apex_progress_message(p), "m");
  apex_progress_unref(p);
  assert_int_equal(details->refcount, 1);
  json_decref(details);
}

static void test_snapshot_ref_and_unref_of_null(void **st) {
  assert_null(apex_progress_ref(NULL));
  apex_progress_unref(NULL);
}

static void test_to_json_has_every_field(void **st) {
  apex_progress_t *p = apex__progress_new(9, 12.5, "msg", "completed", parse("{\"a\": [1, 2]}"),
                                          parse("[{\"name\": \"s\", \"percentage\": 3}]"));
  json_t *j = apex_progress_to_json(p);
  assert_non_null(j);
  json_t *want = parse("{\"seq\": 9, \"percentage\": 12.5, \"status\": \"completed\","
                       " \"message\": \"msg\", \"details\": {\"a\": [1, 2]},"
                       " \"sub_tasks\": [{\"name\": \"s\", \"percentage\": 3}]}");
  assert_true(json_equal(j, want));
  json_decref(want);
  json_decref(j);
  apex_progress_unref(p);
}

static void test_to_json_round_trips_through_validate(void **st) {
  apex_progress_t *p = apex__progress_new(
      2, 100, "done \xe2\x9c\x93", "succeeded", parse("{\"n\": 1}"),
      parse("[{\"name\": \"x\", \"percentage\": 50, \"weight\": 2, \"sub_tasks\": []}]"));
  json_t *j = apex_progress_to_json(p);
  assert_non_null(j);
  assert_int_equal(json_object_del(j, "seq"), 0);
  char why[256];
  assert_int_equal(apex_progress_validate(j, why, sizeof why), APEX_OK);
  json_decref(j);
  apex_progress_unref(p);
}

static void test_to_json_returns_copies_not_the_snapshot_json(void **st) {
  apex_progress_t *p = apex__progress_new(1, 1, NULL, NULL, NULL, NULL);
  json_t *j = apex_progress_to_json(p);
  assert_non_null(j);
  assert_ptr_not_equal(json_object_get(j, "details"), apex_progress_details(p));
  assert_int_equal(json_object_set_new(json_object_get(j, "details"), "x", json_true()), 0);
  assert_int_equal(json_object_size(apex_progress_details(p)), 0);
  json_decref(j);
  apex_progress_unref(p);
}

/* ------------------------------------------------- allocation failures */

/* jansson allocations fail once this many more have succeeded (-1: never). */
static int allocs_left = -1;

static void *failing_malloc(size_t n) {
  if (allocs_left == 0) return NULL;
  if (allocs_left > 0) allocs_left--;
  return malloc(n);
}

static void test_to_json_returns_null_when_any_allocation_fails(void **st) {
  apex_progress_t *p = apex__progress_new(1, 50, "m", "running", parse("{\"a\": {\"b\": [1]}}"),
                                          parse("[{\"name\": \"s\", \"percentage\": 3}]"));
  assert_non_null(p);
  json_set_alloc_funcs(failing_malloc, free);
  int failures = 0;
  json_t *j = NULL;
  for (int n = 0; !j; n++) {
    allocs_left = n;
    j = apex_progress_to_json(p);
    if (!j) failures++;
    assert_true(n < 1000);
  }
  allocs_left = -1;
  json_set_alloc_funcs(malloc, free);
  assert_true(failures > 5); /* every step of the build was made to fail */
  assert_int_equal(json_integer_value(json_object_get(j, "seq")), 1);
  json_decref(j);
  apex_progress_unref(p);
}

static void test_new_releases_taken_json_when_default_object_fails(void **st) {
  json_t *subs = json_array();
  json_incref(subs);
  json_set_alloc_funcs(failing_malloc, free);
  allocs_left = 0; /* the empty details object cannot be made */
  apex_progress_t *p = apex__progress_new(1, 1, NULL, NULL, NULL, subs);
  allocs_left = -1;
  json_set_alloc_funcs(malloc, free);
  assert_null(p);
  assert_int_equal(subs->refcount, 1); /* the taken reference was dropped */
  json_decref(subs);
}

/* ------------------------------------------------------ concurrent readers */

#define READERS 8
#define ROUNDS 200

static void *reader(void *arg) {
  apex_progress_t *p = arg;
  for (int i = 0; i < ROUNDS; i++) {
    apex_progress_t *mine = apex_progress_ref(p);
    json_t *j = apex_progress_to_json(mine);
    if (!j || json_real_value(json_object_get(j, "percentage")) != 33.0 ||
        strcmp(apex_progress_status(mine), "running") != 0) {
      json_decref(j);
      apex_progress_unref(mine);
      return (void *)1;
    }
    json_decref(j);
    apex_progress_unref(mine);
  }
  apex_progress_unref(p); /* each reader was given its own reference */
  return NULL;
}

static void test_snapshot_is_safe_to_share_between_threads(void **st) {
  apex_progress_t *p = apex__progress_new(4, 33, "shared", NULL, parse("{\"k\": [1, 2, 3]}"),
                                          parse("[{\"name\": \"s\", \"percentage\": 1}]"));
  assert_non_null(p);
  pthread_t th[READERS];
  for (int i = 0; i < READERS; i++) {
    apex_progress_ref(p);
    assert_int_equal(pthread_create(&th[i], NULL, reader, p), 0);
  }
  apex_progress_unref(p); /* the readers hold the last references */
  for (int i = 0; i < READERS; i++) {
    void *res;
    assert_int_equal(pthread_join(th[i], &res), 0);
    assert_null(res);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_validate_accepts_minimal_update),
      cmocka_unit_test(test_validate_accepts_integer_and_real_bounds),
      cmocka_unit_test(test_validate_accepts_full_update),
      cmocka_unit_test(test_validate_accepts_null_message),
      cmocka_unit_test(test_validate_accepts_every_known_status),
      cmocka_unit_test(test_validate_accepts_message_of_max_length),
      cmocka_unit_test(test_validate_rejects_null_update),
      cmocka_unit_test(test_validate_rejects_non_object_update),
      cmocka_unit_test(test_validate_rejects_missing_percentage),
      cmocka_unit_test(test_validate_rejects_percentage_above_100),
      cmocka_unit_test(test_validate_rejects_negative_percentage),
      cmocka_unit_test(test_validate_names_percentage_just_above_100_exactly),
      cmocka_unit_test(test_validate_rejects_string_percentage),
      cmocka_unit_test(test_validate_rejects_boolean_percentage),
      cmocka_unit_test(test_validate_rejects_non_string_message),
      cmocka_unit_test(test_validate_rejects_message_over_max_length),
      cmocka_unit_test(test_validate_rejects_message_with_invalid_utf8),
      cmocka_unit_test(test_validate_rejects_message_with_nul_byte),
      cmocka_unit_test(test_validate_rejects_unknown_status),
      cmocka_unit_test(test_validate_rejects_non_string_status),
      cmocka_unit_test(test_validate_rejects_status_with_nul_suffix),
      cmocka_unit_test(test_validate_truncates_and_sanitizes_echoed_status),
      cmocka_unit_test(test_validate_rejects_array_details),
      cmocka_unit_test(test_validate_rejects_null_details),
      cmocka_unit_test(test_validate_rejects_unknown_top_level_key),
      cmocka_unit_test(test_validate_rejects_seq_key),
      cmocka_unit_test(test_validate_rejects_object_sub_tasks),
      cmocka_unit_test(test_validate_rejects_non_object_sub_task),
      cmocka_unit_test(test_validate_rejects_sub_task_name_of_wrong_type),
      cmocka_unit_test(test_validate_rejects_sub_task_without_name),
      cmocka_unit_test(test_validate_rejects_sub_task_with_empty_name),
      cmocka_unit_test(test_validate_accepts_sub_task_name_of_128_bytes),
      cmocka_unit_test(test_validate_rejects_sub_task_name_of_129_bytes),
      cmocka_unit_test(test_validate_rejects_sub_task_name_with_invalid_utf8),
      cmocka_unit_test(test_validate_rejects_sub_task_without_percentage),
      cmocka_unit_test(test_validate_names_nested_sub_task_percentage),
      cmocka_unit_test(test_validate_rejects_unknown_sub_task_status),
      cmocka_unit_test(test_validate_rejects_non_string_sub_task_message),
      cmocka_unit_test(test_validate_rejects_zero_weight),
      cmocka_unit_test(test_validate_rejects_negative_weight),
      cmocka_unit_test(test_validate_rejects_string_weight),
      cmocka_unit_test(test_validate_rejects_array_sub_task_details),
      cmocka_unit_test(test_validate_rejects_unknown_sub_task_key),
      cmocka_unit_test(test_validate_accepts_max_depth),
      cmocka_unit_test(test_validate_rejects_one_level_past_max_depth),
      cmocka_unit_test(test_validate_accepts_1000_sub_tasks),
      cmocka_unit_test(test_validate_rejects_1001_sub_tasks),
      cmocka_unit_test(test_validate_counts_nodes_across_levels),
      cmocka_unit_test(test_validate_accepts_null_why),
      cmocka_unit_test(test_validate_leaves_why_alone_when_why_len_is_zero),
      cmocka_unit_test(test_validate_truncates_reason_to_why_len),
      cmocka_unit_test(test_update_validate_accepts_minimal),
      cmocka_unit_test(test_update_validate_accepts_full),
      cmocka_unit_test(test_update_validate_rejects_null),
      cmocka_unit_test(test_update_validate_rejects_nan),
      cmocka_unit_test(test_update_validate_rejects_infinity),
      cmocka_unit_test(test_update_validate_rejects_out_of_range),
      cmocka_unit_test(test_update_validate_rejects_invalid_utf8_message),
      cmocka_unit_test(test_update_validate_rejects_long_message),
      cmocka_unit_test(test_update_validate_rejects_unknown_status),
      cmocka_unit_test(test_update_validate_rejects_array_details),
      cmocka_unit_test(test_update_validate_checks_sub_tasks_like_json_form),
      cmocka_unit_test(test_status_is_known_accepts_listed_statuses),
      cmocka_unit_test(test_status_is_known_rejects_others),
      cmocka_unit_test(test_utf8_accepts_ascii_and_empty),
      cmocka_unit_test(test_utf8_accepts_multibyte_sequences),
      cmocka_unit_test(test_utf8_rejects_overlongs),
      cmocka_unit_test(test_utf8_rejects_surrogates),
      cmocka_unit_test(test_utf8_rejects_code_points_above_10ffff),
      cmocka_unit_test(test_utf8_rejects_truncated_sequences),
      cmocka_unit_test(test_utf8_rejects_stray_continuation_byte),
      cmocka_unit_test(test_utf8_rejects_nul_byte),
      cmocka_unit_test(test_utf8_rejects_null_with_length),
      cmocka_unit_test(test_snapshot_getters_return_what_was_given),
      cmocka_unit_test(test_snapshot_defaults_for_null_parts),
      cmocka_unit_test(test_snapshot_getters_on_null),
      cmocka_unit_test(test_snapshot_copies_strings),
      cmocka_unit_test(test_snapshot_takes_json_and_releases_it_on_last_unref),
      cmocka_unit_test(test_snapshot_ref_keeps_it_alive),
      cmocka_unit_test(test_snapshot_ref_and_unref_of_null),
      cmocka_unit_test(test_to_json_has_every_field),
      cmocka_unit_test(test_to_json_round_trips_through_validate),
      cmocka_unit_test(test_to_json_returns_copies_not_the_snapshot_json),
      cmocka_unit_test(test_to_json_returns_null_when_any_allocation_fails),
      cmocka_unit_test(test_new_releases_taken_json_when_default_object_fails),
      cmocka_unit_test(test_snapshot_is_safe_to_share_between_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
