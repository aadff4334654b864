/* Integration tests of the guide's deferred example
 * (examples/deferred_plugin.c, built as APEX_EXAMPLES_DIR/deferred.so),
 * driven through the public host API: a countdown succeeds with its result
 * and last progress; a cancel ends one at once with the plugin's own
 * message (its thread polls the cancel fd); many more countdowns than
 * workers are in flight at once (a deferred action holds no worker); and
 * destroying the manager with countdowns pending returns APEX_OK, the
 * plugin's thread completing them and shutdown joining it (ASan and TSan
 * report a leaked or running thread).
 *
 * No event callback: the test thread waits on task handles.
 * Threads: the test thread, Apex's, and the plugin's one thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"

#define DEFERRED_SO APEX_EXAMPLES_DIR "/deferred.so"

static apex_manager_t *make_manager(void) {
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, DEFERRED_SO);
  return m;
}

static uint64_t running(apex_manager_t *m) {
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s), APEX_OK);
  return s.running;
}

static void test_countdown_succeeds_with_its_result_and_last_progress(void **st) {
  (void)st;
  apex_manager_t *m = make_manager();
  apex_task_t *t = submit_json(m, "deferred", "countdown", "{\"steps\": 3, \"step_ms\": 5}", NULL);
  assert_int_equal(apex_task_wait(t, 30000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  json_t *want = json_pack("{s:i}", "steps", 3);
  assert_true(json_equal(r, want));
  json_decref(want);
  json_decref(r);
  apex_progress_t *p = apex_task_progress(t);
  assert_non_null(p);
  assert_true(apex_progress_percentage(p) == 100.0);
  assert_string_equal(apex_progress_message(p), "step 3 of 3");
  apex_progress_unref(p);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

static void test_cancel_ends_a_countdown_at_once_with_the_plugins_message(void **st) {
  (void)st;
  apex_manager_t *m = make_manager();
  /* 1000 steps of a second: only a cancel the plugin notices ends it soon. */
  apex_task_t *t =
      submit_json(m, "deferred", "countdown", "{\"steps\": 1000, \"step_ms\": 1000}", NULL);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, 30000);
  int64_t sent = now_ms();
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(t, 30000), APEX_OK);
  assert_true(now_ms() - sent < PROMPT_MS);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(apex_error_code(e), APEX_E_CANCELLED);
  assert_string_equal(apex_error_message(e), "countdown cancelled (user) after 0 of 1000 steps");
  apex_error_unref(e);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

#define MANY 200

static void test_many_more_countdowns_than_workers_are_in_flight_at_once(void **st) {
  (void)st;
  apex_manager_t *m = make_manager(); /* 2 workers */
  apex_task_t *t[MANY];
  for (int i = 0; i < MANY; i++)
    t[i] = submit_json(m, "deferred", "countdown", "{\"steps\": 1, \"step_ms\": 2000}", NULL);
  /* All running at once on 2 workers: none holds a worker while it waits. */
  AWAIT(running(m) == MANY, 30000);
  for (int i = 0; i < MANY; i++) {
    assert_int_equal(apex_task_wait(t[i], 30000), APEX_OK);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

static void test_destroy_with_countdowns_pending_returns_ok_and_cancels_them(void **st) {
  (void)st;
  apex_manager_t *m = make_manager();
  apex_task_t *t[10];
  for (int i = 0; i < 10; i++)
    t[i] = submit_json(m, "deferred", "countdown", "{\"steps\": 1000, \"step_ms\": 1000}", NULL);
  AWAIT(running(m) == 10, 30000);
  int64_t start = now_ms();
  /* They outlast the 1 s drain, are cancelled ("shutdown"), and the plugin's
   * thread completes them within the second wait, well before its end;
   * then shutdown stops and joins the thread. */
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
  assert_true(now_ms() - start < 1000 + PROMPT_MS);
  for (int i = 0; i < 10; i++) {
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_CANCELLED);
    apex_task_release(t[i]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_countdown_succeeds_with_its_result_and_last_progress),
      cmocka_unit_test(test_cancel_ends_a_countdown_at_once_with_the_plugins_message),
      cmocka_unit_test(test_many_more_countdowns_than_workers_are_in_flight_at_once),
      cmocka_unit_test(test_destroy_with_countdowns_pending_returns_ok_and_cancels_them),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
