/* A child's reference on its family's shared token comes from a batch the
 * family takes 256 at a time (ops/children.c, sh_refs; submit takes the
 * paid one, manager.c). Each way a spawn can go must leave the count
 * exact: a spawn refused before its task was made (an unknown action: the
 * family takes the reference back), one refused after (a full queue: the
 * task took it and drops it with the task), and spawns past a batch (the
 * family takes another). A count one short frees the token under a live
 * child (ASan: a use after free); one over leaks it (ASan's leak check).
 * The plugin is tests/plugins/spawn_kit.c (qfan, fan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/spawn_kit.so"

static apex_manager_t *make(unsigned workers, size_t max_queued) {
  apex_manager_config_t cfg = base_config(workers);
  cfg.max_queued = max_queued;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  return m;
}

/* 2 workers, at most 4 queued: the parent runs on one worker, its first
 * hang child on the other, 4 more wait, every later spawn is refused with
 * QUEUE_FULL after its task (and its token reference) was made. The
 * parent's return cancels the ones spawned; each ends cancelled. */
static void test_spawns_refused_by_a_full_queue_give_their_reference_back(void **st) {
  (void)st;
  enum { N = 300 };
  apex_manager_t *m = make(2, 4);
  apex_task_t *t = submit_json(m, "spawn_kit", "qfan", "{\"n\": 300}", NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *res = apex_task_result(t);
  assert_non_null(res);
  json_t *codes = json_object_get(res, "codes");
  assert_int_equal(json_array_size(codes), N);
  int ok = 0, full = 0;
  for (int i = 0; i < N; i++) {
    int rc = (int)json_integer_value(json_array_get(codes, (size_t)i));
    if (rc == APEX_OK) ok++;
    else if (rc == APEX_E_QUEUE_FULL) full++;
    else fail_msg("spawn %d: %d, want APEX_OK or APEX_E_QUEUE_FULL", i, rc);
  }
  /* At most 4 queued and the one running: the rest refused. */
  assert_true(ok >= 1 && ok <= 5);
  assert_int_equal(ok + full, N);
  json_decref(res);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* Refused before a task was made (no such action), 300 times: every
 * paid reference goes back to the batch; and a parent of 300 nil children
 * (a second batch) sees them all succeed. */
static void test_spawns_refused_before_a_task_and_past_a_batch(void **st) {
  (void)st;
  apex_manager_t *m = make(3, 0);
  apex_task_t *t = submit_json(m, "spawn_kit", "fan", "{\"n\": 300}", NULL);
  apex_task_t *u = submit_json(m, "spawn_kit", "qfan", "{\"n\": 300, \"action\": \"none\"}", NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *res = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(res, "nulls")), 300);
  assert_int_equal(json_integer_value(json_object_get(res, "ids")), 300);
  json_decref(res);
  wait_done(u);
  assert_int_equal(apex_task_state(u), APEX_TASK_SUCCEEDED);
  res = apex_task_result(u);
  json_t *codes = json_object_get(res, "codes");
  assert_int_equal(json_array_size(codes), 300);
  for (size_t i = 0; i < 300; i++)
    assert_int_equal(json_integer_value(json_array_get(codes, i)), APEX_E_ACTION_NOT_FOUND);
  json_decref(res);
  apex_task_release(t);
  apex_task_release(u);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_spawns_refused_by_a_full_queue_give_their_reference_back),
      cmocka_unit_test(test_spawns_refused_before_a_task_and_past_a_batch),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
