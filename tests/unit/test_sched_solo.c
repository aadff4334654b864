/* The scheduler's solo queue (src/sched/sched.c, solo_end): a fairness
 * queue that empties while it is the only one, or joins the rings as the
 * only one, stays in its ring and counts its own tasks, so a host that submits one task at a time does not make
 * the pick and the submit rewrite the levels and the shared count each
 * time; any other queue joining (another fairness key, another priority)
 * ends it. The rings are checked directly (apex__sched_check_locked:
 * links, places, each queue's count and the shared one, and no empty
 * queue in a ring but the solo one), with the worker held so the tasks
 * stay where the test put them, and every task then runs.
 *
 * Plugins: cancel_probe's `hold` keeps the only worker busy; testkit's
 * `noop` is what waits. Threads: cmocka's is the host. */
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
#include "sched/sched_priv.h"

/* The runnable count as the rings show it (-1: they disagree), and
 * whether a queue is solo. */
static long rings(apex_manager_t *m, int *solo) {
  apex__lock(&m->pool_mu);
  long n = apex__sched_check_locked(m);
  if (n >= 0 && (size_t)n != apex__sched_queued_locked(m)) n = -1;
  *solo = m->sched->solo != NULL;
  apex__unlock(&m->pool_mu);
  return n;
}

static apex_task_t *noop(apex_manager_t *m, const char *fairness_key, int32_t priority) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.fairness_key = fairness_key;
  o.priority = priority;
  return submit_json(m, "testkit", "noop", NULL, &o);
}

static void test_the_only_queue_goes_solo_until_another_joins(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", fds[0]);
  apex_task_t *hold = submit_json(m, "cancel_probe", "hold", params, NULL);
  AWAIT(apex_task_state(hold) == APEX_TASK_RUNNING, PROMPT_MS);
  int solo = 0;
  /* The hold's queue emptied at its pick: solo. */
  assert_int_equal(rings(m, &solo), 0);
  assert_true(solo);

  enum { N = 8 };
  apex_task_t *t[N];
  int n = 0;
  /* A task of another queue (testkit's default) joins: the solo one
   * leaves its ring first, and the one that joins, alone, is solo
   * (test_sched_solo_join.c). */
  t[n++] = noop(m, NULL, 0);
  assert_int_equal(rings(m, &solo), 1);
  assert_true(solo);
  /* Emptied by a cancel: solo; refilled: still solo, counting its own. */
  assert_int_equal(apex_task_cancel(t[0], NULL), APEX_OK);
  assert_int_equal(rings(m, &solo), 0);
  assert_true(solo);
  t[n++] = noop(m, NULL, 0);
  assert_int_equal(rings(m, &solo), 1);
  assert_true(solo);
  assert_int_equal(apex_task_cancel(t[1], NULL), APEX_OK);
  assert_int_equal(rings(m, &solo), 0);
  assert_true(solo);
  /* Another fairness key at the same priority (alone once the empty solo
   * one left: solo), then the first one's own: two queues in one ring. */
  t[n++] = noop(m, "other", 0);
  assert_int_equal(rings(m, &solo), 1);
  assert_true(solo);
  t[n++] = noop(m, NULL, 0);
  assert_int_equal(rings(m, &solo), 2);
  assert_false(solo);
  /* Emptying one of two does not park it: it leaves its ring. */
  assert_int_equal(apex_task_cancel(t[2], NULL), APEX_OK);
  assert_int_equal(rings(m, &solo), 1);
  assert_false(solo);
  assert_int_equal(apex_task_cancel(t[3], NULL), APEX_OK);
  assert_int_equal(rings(m, &solo), 0);
  assert_true(solo);
  /* Solo with a task; another priority joins: the solo queue keeps its
   * task and its place, and the shared count takes it. */
  t[n++] = noop(m, NULL, 0);
  assert_int_equal(rings(m, &solo), 1);
  assert_true(solo);
  t[n++] = noop(m, NULL, 10);
  assert_int_equal(rings(m, &solo), 2);
  assert_false(solo);
  t[n++] = noop(m, "other", 0);
  assert_int_equal(rings(m, &solo), 3);
  assert_false(solo);

  /* Released, the worker runs the three left; the last queue goes solo. */
  assert_int_equal(write(fds[1], "x", 1), 1);
  assert_int_equal(apex_task_wait(hold, 10000), APEX_OK);
  for (int i = 0; i < n; i++) {
    assert_int_equal(apex_task_wait(t[i], 10000), APEX_OK);
    assert_int_equal(apex_task_state(t[i]),
                     i < 4 ? APEX_TASK_CANCELLED : APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  apex_task_release(hold);
  assert_int_equal(rings(m, &solo), 0);
  assert_true(solo);
  close(fds[0]);
  close(fds[1]);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_the_only_queue_goes_solo_until_another_joins),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
