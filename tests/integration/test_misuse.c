/* A plugin that uses its ctx after apex_ctx_complete (include/apex/plugin.h;
 * docs/plugin-developer-guide.md, "Misuse Apex catches"): a second complete
 * in sequence, two threads completing at once, any other ctx call after
 * complete, complete from a blocking handler. Each task still has exactly
 * one outcome, delivered once; each misuse is ignored and counted in
 * late_reports; the host never crashes (these ran into freed memory
 * before: exit 139, or an ASan report).
 *
 * Plugin: hostile_misuse (tests/plugins/hostile_misuse.c). The races run
 * 2,000 tasks so ASan and TSan see many interleavings, and the plugin counts
 * the tasks whose two completes overlapped, which must be some.
 *
 * Threads: cmocka's thread is the host; events arrive on the runtime
 * thread (LOOP mode) and are counted per task id with atomics. Conditions
 * are awaited (AWAIT, apex_task_wait) with generous bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"

enum { MAX_IDS = 8192 };

/* DONE events per task id, and the misuse warnings logged. */
static atomic_int g_done[MAX_IDS];
static atomic_int g_done_bad; /* a DONE with an id past MAX_IDS */
static atomic_int g_misuse_warnings, g_blocking_warnings;

static void on_event(const apex_event_t *ev, void *user) {
  (void)user;
  if (ev->type != APEX_EVENT_DONE) return;
  uint64_t id = apex_task_id(ev->task);
  if (id < MAX_IDS)
    atomic_fetch_add(&g_done[id], 1);
  else
    atomic_fetch_add(&g_done_bad, 1);
}

static void count_log(int level, const char *msg, void *user) {
  (void)user;
  if (level != APEX_LOG_WARN) return;
  if (strstr(msg, "after its attempt completed; ignored")) atomic_fetch_add(&g_misuse_warnings, 1);
  if (strstr(msg, "complete() called by a blocking handler"))
    atomic_fetch_add(&g_blocking_warnings, 1);
}

static apex_manager_t *make_misuse(unsigned workers) {
  memset(g_done, 0, sizeof g_done);
  atomic_store(&g_done_bad, 0);
  atomic_store(&g_misuse_warnings, 0);
  atomic_store(&g_blocking_warnings, 0);
  apex_manager_config_t cfg = base_config(workers);
  cfg.on_event = on_event;
  cfg.event_mask = APEX_EVENT_DONE;
  cfg.log = count_log;
  cfg.log_level = APEX_LOG_WARN;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/hostile_misuse.so");
  return m;
}

/* Sum of DONE events over ids, and asserts none was delivered twice. */
static int dones_once(void) {
  int n = 0;
  for (int i = 0; i < MAX_IDS; i++) {
    int d = atomic_load(&g_done[i]);
    assert_true(d <= 1);
    n += d;
  }
  assert_int_equal(atomic_load(&g_done_bad), 0);
  return n;
}

/* Runs n tasks of action, keeping (keep) or releasing at once (!keep) the
 * handles, and checks: every one succeeded, one DONE each, one misuse
 * each in late_reports. */
static void run_each_misusing_once(apex_manager_t *m, const char *action, int n, int keep) {
  apex_task_t **t = calloc((size_t)n, sizeof *t);
  assert_non_null(t);
  for (int i = 0; i < n; i++) {
    t[i] = submit_json(m, "hostile_misuse", action, NULL, NULL);
    if (!keep) {
      apex_task_release(t[i]);
      t[i] = NULL;
    }
  }
  for (int i = 0; i < n && keep; i++) {
    assert_int_equal(apex_task_wait(t[i], 60000), APEX_OK);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
  }
  AWAIT(stats_of(m).succeeded == (uint64_t)n && stats_of(m).late_reports == (uint64_t)n &&
            dones_once() == n,
        60000);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.submitted, n);
  assert_int_equal(s.succeeded, n);
  assert_int_equal(s.failed + s.cancelled + s.timed_out, 0);
  assert_int_equal(s.late_reports, n);
  /* Logged at the 1st, 2nd, 4th... misuse: a loop on a dead ctx cannot
   * flood the log. */
  int want = 0;
  for (int k = 1; k <= n; k *= 2) want++;
  assert_int_equal(atomic_load(&g_misuse_warnings), want);
  for (int i = 0; i < n && keep; i++) apex_task_release(t[i]);
  free(t);
}

static void test_complete_twice_in_sequence_is_ignored_and_counted(void **st) {
  (void)st;
  apex_manager_t *m = make_misuse(2);
  run_each_misusing_once(m, "complete_twice", 300, 1);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* The host let go of each task at once: the task (and, before run states
 * were kept, the ctx's memory) can be gone before the second complete. */
static void test_complete_twice_after_host_released_the_task(void **st) {
  (void)st;
  apex_manager_t *m = make_misuse(2);
  run_each_misusing_once(m, "complete_twice", 300, 0);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

static json_t *stats_result(apex_manager_t *m) {
  apex_task_t *t = submit_json(m, "hostile_misuse", "stats", NULL, NULL);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  apex_task_release(t);
  assert_non_null(r);
  return r;
}

static void test_racing_completes_end_each_task_once(void **st) {
  (void)st;
  enum { N = 2000 };
  apex_manager_t *m = make_misuse(2);
  run_each_misusing_once(m, "complete_race", N, 1);
  /* The race was hit: in some tasks both completes were in flight at once
   * (the plugin's counter lives while this manager keeps it loaded). */
  json_t *r = stats_result(m);
  json_int_t overlaps = json_integer_value(json_object_get(r, "overlaps"));
  json_decref(r);
  print_message("complete_race: %lld of %d tasks had overlapping completes\n",
                (long long)overlaps, N);
  assert_true(overlaps >= 1);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

static void test_every_ctx_call_after_complete_is_ignored(void **st) {
  (void)st;
  /* One worker: `stats` runs after after_complete's handler returned. */
  apex_manager_t *m = make_misuse(1);
  apex_task_t *t = submit_json(m, "hostile_misuse", "after_complete", NULL, NULL);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  /* 3 progress, set_result, fail, log, 9 queries and waits, a complete. */
  enum { MISUSES = 16 };
  AWAIT(stats_of(m).late_reports == MISUSES, 10000);
  json_t *r = stats_result(m);
  json_t *a = json_object_get(r, "after");
  assert_int_equal(json_integer_value(json_object_get(a, "progress")), APEX_OK);
  assert_int_equal(json_integer_value(json_object_get(a, "progress_update")), APEX_OK);
  assert_int_equal(json_integer_value(json_object_get(a, "progress_invalid")), APEX_E_INVALID);
  assert_int_equal(json_integer_value(json_object_get(a, "fail")), APEX_E_EXECUTION);
  assert_true(json_is_true(json_object_get(a, "params_null")));
  assert_int_equal(json_integer_value(json_object_get(a, "task_id")), 0);
  assert_int_equal(json_integer_value(json_object_get(a, "attempt")), 0);
  assert_true(json_is_true(json_object_get(a, "plugin_state_null")));
  assert_int_equal(json_integer_value(json_object_get(a, "is_cancelled")), 1);
  assert_string_equal(json_string_value(json_object_get(a, "cancel_reason")), "completed");
  assert_int_equal(json_integer_value(json_object_get(a, "cancel_fd")), APEX_E_INVALID);
  assert_int_equal(json_integer_value(json_object_get(a, "sleep_ms")), APEX_E_CANCELLED);
  assert_int_equal(json_integer_value(json_object_get(a, "wait_fd")), APEX_E_CANCELLED);
  json_decref(r);
  /* The outcome is the first complete's, with the result set before it. */
  json_t *res = apex_task_result(t);
  assert_true(json_is_true(json_object_get(res, "completed")));
  assert_null(json_object_get(res, "late"));
  json_decref(res);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.late_reports, MISUSES);
  assert_int_equal(s.progress_reported, 0);
  assert_int_equal(s.progress_rejected, 0);
  assert_int_equal(s.succeeded, 2); /* after_complete and stats */
  assert_int_equal(s.failed, 0);
  AWAIT(dones_once() == 2, 10000); /* DONE callbacks may trail apex_task_wait */
  assert_int_equal(atomic_load(&g_misuse_warnings), 5); /* the 1st, 2nd, 4th, 8th, 16th */
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

static void test_complete_in_blocking_handler_is_ignored(void **st) {
  (void)st;
  apex_manager_t *m = make_misuse(1);
  apex_task_t *t = submit_json(m, "hostile_misuse", "complete_in_blocking", NULL, NULL);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED); /* its return decides */
  json_t *res = apex_task_result(t);
  assert_string_equal(json_string_value(json_object_get(res, "by")), "return");
  json_decref(res);
  AWAIT(dones_once() == 1, 10000);
  assert_int_equal(atomic_load(&g_blocking_warnings), 1);
  assert_int_equal(stats_of(m).late_reports, 0);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_complete_twice_in_sequence_is_ignored_and_counted),
      cmocka_unit_test(test_complete_twice_after_host_released_the_task),
      cmocka_unit_test(test_racing_completes_end_each_task_once),
      cmocka_unit_test(test_every_ctx_call_after_complete_is_ignored),
      cmocka_unit_test(test_complete_in_blocking_handler_is_ignored),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
