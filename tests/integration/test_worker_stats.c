/* The manager's attempt and outcome counters (apex_manager_stats_v2) as the
 * workers keep them: each worker counts the attempts it starts and the
 * tasks that end on its thread in its own struct (src/exec/pool.c,
 * "counters"), a stats read adds them up, and a worker that leaves (a
 * surplus thread once its stuck handler returned, or every worker at
 * destroy's stop) adds its counts into the manager's. So the figures a
 * host reads after the DONE it waited for are exact, and stay exact when
 * the threads that counted them are gone.
 *
 * Plugins: testkit and hostile from APEX_TEST_PLUGIN_DIR.
 * Threads: cmocka's is the host; the engine's run the handlers. */
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

static void destroy_ok(apex_manager_t *m) { assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK); }

/* Two workers, tasks of every outcome but a timeout, many in flight at
 * once so both workers count: the counts equal what the host saw end,
 * read right after the last wait. */
static void test_counts_are_exact_across_workers(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  enum { OK = 3000, FAIL = 300, RETRY = 100 };
  apex_task_t *t[OK + FAIL + RETRY];
  size_t n = 0;
  for (int i = 0; i < OK; i++) t[n++] = submit_json(m, "testkit", "noop", NULL, NULL);
  for (int i = 0; i < FAIL; i++)
    t[n++] = submit_json(m, "hostile", "fail", "{\"code\": \"execution\"}", NULL);
  /* Three attempts each (fails transient twice, then succeeds). */
  for (int i = 0; i < RETRY; i++)
    t[n++] = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 3}", NULL);
  size_t ok = 0, failed = 0;
  for (size_t i = 0; i < n; i++) {
    wait_done(t[i]);
    int s = apex_task_state(t[i]);
    ok += s == APEX_TASK_SUCCEEDED;
    failed += s == APEX_TASK_FAILED;
  }
  if (ok != OK + RETRY || failed != FAIL) print_error("ok %zu failed %zu\n", ok, failed);
  assert_int_equal(ok, OK + RETRY);
  assert_int_equal(failed, FAIL);
  apex_stats_t s = stats_of(m);
  if (s.succeeded != OK + RETRY || s.failed != FAIL || s.attempts != OK + FAIL + 3 * RETRY)
    print_error("succeeded %llu failed %llu attempts %llu\n", (unsigned long long)s.succeeded,
                (unsigned long long)s.failed, (unsigned long long)s.attempts);
  assert_int_equal(s.submitted, OK + FAIL + RETRY);
  assert_int_equal(s.succeeded, OK + RETRY);
  assert_int_equal(s.failed, FAIL);
  assert_int_equal(s.cancelled, 0);
  assert_int_equal(s.timed_out, 0);
  assert_int_equal(s.attempts, OK + FAIL + 3 * RETRY);
  for (size_t i = 0; i < n; i++) apex_task_release(t[i]);
  destroy_ok(m);
}

/* One worker, stranded by deaf handlers that time out: each next task runs
 * on a replacement thread, which leaves once the stuck handler returned.
 * The counts those threads made outlive them. */
static void test_counts_outlive_the_workers_that_made_them(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  cfg.max_stuck_workers = 8;
  apex_manager_t *m = make_test_manager(&cfg);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.start_to_close_s = 0.2;
  enum { N = 4, PER = 50 };
  unsigned replaced = 0;
  for (int i = 0; i < N; i++) {
    /* Deaf for 1.5 s against a 0.2 s timeout: the replacement runs the
     * queued tasks well before the stuck handler returns. */
    apex_task_t *deaf = submit_json(m, "hostile", "ignore_cancel", "{\"ms\": 1500}", &o);
    /* Queued behind the deaf handler: a replacement runs them. */
    apex_task_t *after[PER];
    for (int j = 0; j < PER; j++) after[j] = submit_json(m, "testkit", "noop", NULL, NULL);
    wait_done(deaf);
    assert_int_equal(apex_task_state(deaf), APEX_TASK_TIMED_OUT);
    for (int j = 0; j < PER; j++) {
      wait_done(after[j]);
      assert_int_equal(apex_task_state(after[j]), APEX_TASK_SUCCEEDED);
      apex_task_release(after[j]);
    }
    if (stats_of(m).workers > cfg.workers) replaced++;
    apex_task_release(deaf);
    /* Back to one thread: the surplus one left with its counts. */
    AWAIT(stats_of(m).stuck_workers == 0 && stats_of(m).workers == cfg.workers &&
              stats_of(m).running == 0,
          10 * PROMPT_MS);
    apex_stats_t s = stats_of(m);
    if (s.timed_out != (uint64_t)i + 1 || s.succeeded != (uint64_t)(i + 1) * PER ||
        s.attempts != (uint64_t)(i + 1) * (PER + 1))
      print_error("round %d: timed_out %llu succeeded %llu attempts %llu\n", i,
                  (unsigned long long)s.timed_out, (unsigned long long)s.succeeded,
                  (unsigned long long)s.attempts);
    assert_int_equal(s.timed_out, (uint64_t)i + 1);
    assert_int_equal(s.succeeded, (uint64_t)(i + 1) * PER);
    assert_int_equal(s.attempts, (uint64_t)(i + 1) * (PER + 1));
  }
  /* Replacements ran tasks and left. */
  if (replaced < 1) print_error("no round saw a replacement thread\n");
  assert_true(replaced >= 1);
  destroy_ok(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_counts_are_exact_across_workers),
      cmocka_unit_test(test_counts_outlive_the_workers_that_made_them),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
