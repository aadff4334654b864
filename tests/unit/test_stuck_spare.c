/* A timeout does not cost a thread when an idle worker can take the next
 * task (src/exec/pool.c, replace_stuck_locked). A handler that outlives
 * its deadline is stuck; the pool starts a replacement only once queued
 * work finds no idle worker. The submit right after such a timeout wakes
 * the one idle worker, taking it off the idle stack in the same pool_mu
 * section that decides on a replacement: that worker takes the task, so
 * no thread is started (before, it counted as busy, and W4 of
 * bench/README.md started and joined a thread per timeout).
 *
 * Reads pool counters under pool_mu (internals no public call shows in
 * one step). Plugins: hostile (ignore_cancel) and testkit (noop).
 * Threads: cmocka's is the host. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"

/* The one idle worker sleeps on the idle stack (not watching the queue,
 * where a push hands it the task without waking it). */
static int asleep_on_stack(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  int yes = m->n_idle == 1 && m->spinner == NULL;
  apex__unlock(&m->pool_mu);
  return yes;
}

static void test_timeout_then_submit_wakes_the_idle_worker(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  /* Deaf for 2 s against a 0.05 s timeout: stuck all through the checks. */
  apex_submit_opts_t o = opts_timeout(0.05);
  apex_task_t *deaf = submit_json(m, "hostile", "ignore_cancel", "{\"ms\": 2000}", &o);
  wait_done(deaf);
  assert_int_equal(apex_task_state(deaf), APEX_TASK_TIMED_OUT);
  AWAIT(asleep_on_stack(m), PROMPT_MS);
  apex_task_t *next = submit_json(m, "testkit", "noop", NULL, NULL);
  apex__lock(&m->pool_mu);
  unsigned threads = m->n_threads, stuck = m->n_stuck;
  apex__unlock(&m->pool_mu);
  if (threads != 2 || stuck != 1) print_error("threads %u stuck %u\n", threads, stuck);
  assert_int_equal(stuck, 1); /* the check below is about a stuck pool */
  assert_int_equal(threads, 2);
  wait_done(next);
  assert_int_equal(apex_task_state(next), APEX_TASK_SUCCEEDED);
  assert_int_equal(stats_of(m).workers, 2);
  apex_task_release(next);
  apex_task_release(deaf);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

/* Still a replacement when no worker is idle: both held, one of them
 * stuck, a queued task gets a thread. */
static void test_no_idle_worker_still_gets_a_replacement(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_submit_opts_t o = opts_timeout(0.05);
  apex_task_t *deaf = submit_json(m, "hostile", "ignore_cancel", "{\"ms\": 2000}", &o);
  wait_done(deaf);
  assert_int_equal(apex_task_state(deaf), APEX_TASK_TIMED_OUT);
  apex_task_t *next = submit_json(m, "testkit", "noop", NULL, NULL);
  wait_done(next); /* run by the replacement, long before the deaf one returns */
  assert_int_equal(apex_task_state(next), APEX_TASK_SUCCEEDED);
  apex__lock(&m->pool_mu);
  unsigned stuck = m->n_stuck;
  apex__unlock(&m->pool_mu);
  assert_int_equal(stuck, 1);
  apex_task_release(next);
  apex_task_release(deaf);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_timeout_then_submit_wakes_the_idle_worker),
      cmocka_unit_test(test_no_idle_worker_still_gets_a_replacement),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
