/* A sequential host's push skips a watcher on another CPU for an idle
 * worker that went idle on the host's CPU (src/exec/pool.c,
 * near_idle_locked): W3's round trips stayed cross-CPU as long as the
 * watcher that won each hand-off sat on the other CPU
 * (bench/analysis.md, tenth session).
 *
 * The placement itself is the kernel's and is not tested here; the rule
 * is. The pool is put in the rule's state under pool_mu: both workers
 * asleep on the idle stack, then one made the watcher as if it had
 * watched a while (long_watch) on a CPU that is not the host's, the other
 * recorded as idle on the host's CPU (the host thread is pinned to the CPU
 * it is on, so its sched_getcpu is that one). The made-up watcher really
 * sleeps on its futex word: a push that handed the task to it would leave
 * the task with no one to run it, and the test checks the hand-off word
 * right after the submit (it was set before the rule: the test fails
 * there). The task must be run by the other worker, which the section
 * took off the idle stack and woke.
 *
 * Reads and writes pool fields under pool_mu (internals no public call
 * reaches). Plugins: testkit (noop). Threads: cmocka's is the host. */
#include <pthread.h>
#include <sched.h>
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

/* Both workers asleep on the idle stack, no watcher. */
static int both_asleep(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  int yes = m->n_idle == 2 && m->spinner == NULL;
  for (apex__worker_t *w = m->idle_head; yes && w; w = w->idle_next)
    yes = atomic_load(&w->wake) == 0; /* WAKE_ASLEEP: not watching its word */
  apex__unlock(&m->pool_mu);
  return yes;
}

static uint64_t succeeded_by(apex_manager_t *m, apex__worker_t *w) {
  apex__lock(&m->pool_mu);
  uint64_t n = atomic_load(&w->st_outcomes[APEX_TASK_SUCCEEDED - APEX_TASK_SUCCEEDED]);
  apex__unlock(&m->pool_mu);
  return n;
}

static void test_sequential_push_wakes_the_worker_on_its_cpu(void **st) {
  (void)st;
  int cpu = sched_getcpu();
  cpu_set_t one, old;
  CPU_ZERO(&one);
  if (cpu < 0 || pthread_getaffinity_np(pthread_self(), sizeof old, &old) != 0) skip();
  CPU_SET(cpu, &one);
  if (pthread_setaffinity_np(pthread_self(), sizeof one, &one) != 0) skip();
  assert_int_equal(sched_getcpu(), cpu);

  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  for (int round = 0; round < 3; round++) {
    AWAIT(both_asleep(m), PROMPT_MS);
    apex__lock(&m->pool_mu);
    apex__worker_t *watcher = m->idle_head, *near = watcher->idle_next;
    m->idle_head = near;
    m->n_idle--;
    m->spinner = watcher;
    atomic_store(&watcher->long_watch, 1);
    watcher->cpu = cpu + 1; /* another CPU than the host's */
    near->cpu = cpu;
    apex__unlock(&m->pool_mu);
    uint64_t before_near = succeeded_by(m, near), before_watcher = succeeded_by(m, watcher);

    apex_task_t *t = submit_json(m, "testkit", "noop", NULL, NULL);
    apex__lock(&m->pool_mu);
    int handed = atomic_load(&watcher->handoff) != NULL, watching = m->spinner == watcher;
    apex__unlock(&m->pool_mu);
    if (handed) print_error("round %d: the push handed the task to the other CPU's watcher\n", round);
    assert_false(handed); /* else no one runs t: the test ends here */
    assert_true(watching);
    wait_done(t);
    assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
    apex_task_release(t);
    assert_int_equal(succeeded_by(m, near), before_near + 1);
    assert_int_equal(succeeded_by(m, watcher), before_watcher);

    /* The made-up watcher back to the idle stack, where it sleeps. */
    apex__lock(&m->pool_mu);
    assert_ptr_equal(m->spinner, watcher);
    m->spinner = NULL;
    atomic_store(&watcher->long_watch, 0);
    watcher->idle_next = m->idle_head;
    m->idle_head = watcher;
    m->n_idle++;
    apex__unlock(&m->pool_mu);
  }
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  assert_int_equal(pthread_setaffinity_np(pthread_self(), sizeof old, &old), 0);
}

/* A host that submits and waits, many times over, on whatever CPUs the
 * kernel gives: every task runs once, and the pool ends idle with its
 * counts whole (the rule takes a worker from the middle of the stack). */
static void test_sequential_host_round_trips(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  for (int i = 0; i < 3000; i++) {
    apex_task_t *t = submit_json(m, "testkit", "noop", NULL, NULL);
    wait_done(t);
    assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
    apex_task_release(t);
  }
  AWAIT(both_asleep(m), PROMPT_MS);
  apex__lock(&m->pool_mu);
  unsigned on_stack = 0;
  for (apex__worker_t *w = m->idle_head; w; w = w->idle_next) on_stack++;
  assert_int_equal(on_stack, m->n_idle);
  assert_int_equal(m->n_threads, 2);
  apex__unlock(&m->pool_mu);
  assert_int_equal(stats_of(m).succeeded, 3000);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sequential_push_wakes_the_worker_on_its_cpu),
      cmocka_unit_test(test_sequential_host_round_trips),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
