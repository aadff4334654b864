/* A task cancelled while queued leaves the run queue at once (issue 9 item
 * 5; src/exec/pool.c, apex__pool_task_end): the queue's links are checked
 * directly, as no public call shows them, with cancels at the head, the
 * tail and in the middle; and the cancel of a queued task with no token
 * makes none (src/exec/task.c, cancel_unstarted).
 *
 * Plugins: cancel_probe's `hold` keeps the only worker busy; testkit's
 * `noop` is what waits in the queue. Threads: cmocka's is the host. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"

/* Walks the scheduler's runnable queues under pool_mu (links both ways,
 * each task's place flag, the count; src/sched/sched.c). Returns their
 * length, or -1 if anything disagrees or the queued count differs. */
static long queue_check(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  long n = apex__sched_check_locked(m);
  if (n >= 0 && (size_t)n != apex__sched_queued_locked(m)) n = -1;
  apex__unlock(&m->pool_mu);
  return n;
}

static void test_cancelled_queued_tasks_are_unlinked_at_once(void **st) {
  (void)st;
  enum { N = 1000 };
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", fds[0]);
  apex_task_t *hold = submit_json(m, "cancel_probe", "hold", params, NULL);
  AWAIT(apex_task_state(hold) == APEX_TASK_RUNNING, PROMPT_MS);
  assert_int_equal(queue_check(m), 0);

  apex_task_t *t[N];
  for (int i = 0; i < N; i++) t[i] = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_int_equal(queue_check(m), N);
  /* The head, the tail, then every third in the middle. */
  int left = N;
  int order[] = {0, N - 1, 1, N - 2};
  for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
    assert_int_equal(apex_task_cancel(t[order[k]], NULL), APEX_OK);
    assert_int_equal(queue_check(m), --left);
  }
  for (int i = 3; i < N - 2; i += 3) {
    assert_int_equal(apex_task_cancel(t[i], NULL), APEX_OK);
    left--;
  }
  assert_int_equal(queue_check(m), left);
  /* No token was made for any cancelled one; none for those still queued. */
  for (int i = 0; i < N; i++) assert_null(apex__task_token_peek(t[i]));
  for (int i = 0; i < N; i++)
    if (apex_task_state(t[i]) == APEX_TASK_QUEUED) {
      assert_int_equal(apex_task_cancel(t[i], NULL), APEX_OK);
      left--;
    }
  assert_int_equal(left, 0);
  assert_int_equal(queue_check(m), 0);
  for (int i = 0; i < N; i++) {
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_CANCELLED);
    assert_int_equal(apex_task_cancel(t[i], NULL), APEX_E_ALREADY);
    assert_int_equal(apex_task_attempts(t[i]), 0);
    apex_task_release(t[i]);
  }
  /* The worker, freed, finds the queue empty and runs a new task normally. */
  assert_int_equal(write(fds[1], "x", 1), 1);
  assert_int_equal(apex_task_wait(hold, 10000), APEX_OK);
  apex_task_release(hold);
  apex_task_t *after = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_int_equal(apex_task_wait(after, 10000), APEX_OK);
  assert_int_equal(apex_task_state(after), APEX_TASK_SUCCEEDED);
  apex_task_release(after);
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s), APEX_OK);
  assert_int_equal(s.attempts, 2); /* hold and after: no cancelled one started */
  close(fds[0]);
  close(fds[1]);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cancelled_queued_tasks_are_unlinked_at_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
