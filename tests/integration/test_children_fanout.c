/* Wide fan-outs of small children (plugin tests/plugins/spawn_kit.c): a
 * child that succeeded with no result is let go by its parent's family
 * (its task freed while the family lives on, ops/children.c), and its node
 * still answers for it: outcome, state, task id, its name and state in the
 * parent's roll-up; beside it, a child with a result and a failed one keep
 * theirs. Once after a wait for every child, once with the parent polling
 * the outcomes while the children end (the race of a read with the let
 * go: ASan and TSan runs catch a read of a freed task). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/spawn_kit.so"

static apex_manager_t *make(unsigned workers) {
  apex_manager_config_t cfg = base_config(workers);
  cfg.progress_rate_hz = 50;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  return m;
}

/* n children, the one at 7 with a result, the one at 13 failing. */
static void fan_and_check(int poll) {
  enum { N = 300, VAL_AT = 7, BAD_AT = 13 };
  apex_manager_t *m = make(3);
  char params[128];
  snprintf(params, sizeof params, "{\"n\": %d, \"val_at\": %d, \"bad_at\": %d, \"poll\": %d}", N,
           VAL_AT, BAD_AT, poll);
  apex_task_t *t = submit_json(m, "spawn_kit", "fan", params, NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *res = apex_task_result(t);
  assert_non_null(res);
  json_t *codes = json_object_get(res, "codes"), *states = json_object_get(res, "states");
  assert_int_equal(json_array_size(codes), N);
  assert_int_equal(json_array_size(states), N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(json_integer_value(json_array_get(codes, (size_t)i)),
                     i == BAD_AT ? APEX_E_EXECUTION : APEX_OK);
    assert_int_equal(json_integer_value(json_array_get(states, (size_t)i)),
                     i == BAD_AT ? APEX_TASK_FAILED : APEX_TASK_SUCCEEDED);
  }
  assert_int_equal(json_integer_value(json_object_get(res, "nulls")), N - 2);
  assert_int_equal(json_integer_value(json_object_get(res, "val")), VAL_AT);
  assert_int_equal(json_integer_value(json_object_get(res, "ids")), N);
  json_decref(res);

  /* The roll-up at the parent's end: every child counted, and the listed
   * ones named and in their final state, let go or not. */
  apex_progress_t *p = apex_task_progress(t);
  assert_non_null(p);
  json_t *kids = json_object_get(apex_progress_details(p), "children");
  assert_int_equal(json_integer_value(json_object_get(kids, "total")), N);
  assert_int_equal(json_integer_value(json_object_get(kids, "succeeded")), N - 1);
  assert_int_equal(json_integer_value(json_object_get(kids, "failed")), 1);
  const json_t *subs = apex_progress_sub_tasks(p);
  assert_int_equal(json_array_size(subs), 64);
  size_t i;
  json_t *s;
  int seen_val = 0, seen_bad = 0;
  json_array_foreach((json_t *)subs, i, s) {
    const char *action = json_string_value(json_object_get(s, "action"));
    const char *status = json_string_value(json_object_get(s, "status"));
    assert_non_null(action);
    assert_non_null(status);
    if (strcmp(action, "spawn_kit.bad") == 0) {
      seen_bad = 1;
      assert_string_equal(status, "failed");
    } else {
      if (strcmp(action, "spawn_kit.val") == 0)
        seen_val = 1;
      else
        assert_string_equal(action, "spawn_kit.nil");
      assert_string_equal(status, "succeeded");
      assert_true(json_number_value(json_object_get(s, "percentage")) == 100.0);
    }
    assert_true(json_integer_value(json_object_get(s, "task")) > 0);
  }
  assert_true(seen_val && seen_bad); /* spawn order: 7 and 13 are among the first 64 */
  apex_progress_unref(p);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

static void test_let_go_children_answer_after_a_wait(void **state) {
  (void)state;
  fan_and_check(0);
}

static void test_let_go_children_answer_while_they_end(void **state) {
  (void)state;
  fan_and_check(1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_let_go_children_answer_after_a_wait),
      cmocka_unit_test(test_let_go_children_answer_while_they_end),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
