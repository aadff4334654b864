/* apex_ops_find (src/ops/ops.c) on a task a worker has just taken from
 * the scheduler: the worker holds it (popped, or handed over while it
 * watched the queue) until its first attempt puts it on a live list, and
 * the lookup reads the scheduler and the workers' held tasks in one pool_mu
 * section before the live lists. So a lookup of a task the host knows is
 * not over never says it has ended: each of 20,000 submitted no-op tasks
 * is looked up at once, and a lookup that answers APEX_E_ALREADY must see
 * the task terminal. Two busy threads take the CPU now and then, so a
 * worker between the pick and the attempt loses it there (where a few
 * looks and yields, the old way, missed tasks under load). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "harness.h"

enum { N = 20000 };

static atomic_int g_stop;

static void *busy(void *arg) {
  (void)arg;
  while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
  }
  return NULL;
}

static void test_a_starting_task_is_found(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  pthread_t b[2];
  atomic_store(&g_stop, 0);
  for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&b[i], NULL, busy, NULL), 0);
  int missed = 0, found = 0;
  for (int i = 0; i < N && !missed; i++) {
    apex_task_t *t = submit_json(m, "testkit", "noop", NULL, NULL);
    apex_task_t *f = NULL;
    int rc = apex_ops_find(m, apex_task_id(t), &f);
    if (rc == APEX_OK) {
      found++;
      apex_task_release(f);
    } else {
      assert_int_equal(rc, APEX_E_ALREADY);
      /* Ended, then: its state says so now (it cannot go back). */
      if (!apex_task_state_is_terminal(apex_task_state(t))) {
        print_error("task %d (id %llu): not found, yet %s\n", i,
                    (unsigned long long)apex_task_id(t), apex_task_state_name(apex_task_state(t)));
        missed = 1;
      }
    }
    apex_task_release(t);
  }
  atomic_store(&g_stop, 1);
  for (int i = 0; i < 2; i++) pthread_join(b[i], NULL);
  assert_int_equal(missed, 0);
  assert_true(found > 0);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_starting_task_is_found),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
