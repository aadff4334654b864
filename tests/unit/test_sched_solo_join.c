/* The scheduler's solo queue from the first push (src/sched/sched.c,
 * runnable): a fairness queue that joins the rings as the only queue of
 * the only level, with nothing else runnable, is solo at once, so the
 * short paths serve its tasks even when the queue never empties (a host
 * that outruns its workers from the first submit). Before, a queue went
 * solo only once it had emptied, and W1 under valgrind or a loaded machine
 * ran its whole million tasks on the general code (bench/analysis.md, the
 * seventh session's W1 section).
 *
 * The rings are checked directly (apex__sched_check_locked), with the only
 * worker held so the tasks stay queued; every task then runs. A second
 * queue still ends it; and with a limit set (eager counts) the queue is
 * solo the same way, with the three scopes' counts right.
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

/* What the rings show, read under pool_mu: the runnable count (-1: they
 * disagree) and the solo queue (solo 0: none; then n, head, tail unset). */
typedef struct {
  int solo;
  size_t n;
  const apex_task_t *head, *tail;
} solo_t;

static long rings(apex_manager_t *m, solo_t *q) {
  apex__lock(&m->pool_mu);
  long n = apex__sched_check_locked(m);
  if (n >= 0 && (size_t)n != apex__sched_queued_locked(m)) n = -1;
  const apex__fq_t *s = m->sched->solo;
  q->solo = s != NULL;
  if (s) {
    q->n = (size_t)(s->n_in - s->n_out);
    q->head = s->head;
    q->tail = s->tail;
  }
  apex__unlock(&m->pool_mu);
  return n;
}

static apex_task_t *noop(apex_manager_t *m, const char *fairness_key) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.fairness_key = fairness_key;
  return submit_json(m, "testkit", "noop", NULL, &o);
}

/* One worker, held by cancel_probe's hold; returns it. */
static apex_task_t *hold_worker(apex_manager_t *m, int fds[2]) {
  load_ok(m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  assert_int_equal(pipe(fds), 0);
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", fds[0]);
  apex_task_t *hold = submit_json(m, "cancel_probe", "hold", params, NULL);
  AWAIT(apex_task_state(hold) == APEX_TASK_RUNNING, PROMPT_MS);
  return hold;
}

static void release_and_run(apex_manager_t *m, apex_task_t *hold, int fds[2],
                            apex_task_t **t, int n) {
  assert_int_equal(write(fds[1], "x", 1), 1);
  assert_int_equal(apex_task_wait(hold, 10000), APEX_OK);
  for (int i = 0; i < n; i++) {
    assert_int_equal(apex_task_wait(t[i], 10000), APEX_OK);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  apex_task_release(hold);
  solo_t solo;
  assert_int_equal(rings(m, &solo), 0);
  close(fds[0]);
  close(fds[1]);
}

static void test_a_queue_that_joins_alone_is_solo_before_it_empties(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  int fds[2];
  apex_task_t *hold = hold_worker(m, fds);
  enum { N = 5 };
  apex_task_t *t[N + 1];
  solo_t solo;
  /* testkit's default queue joins while the hold's (empty) was solo: it
   * is solo from its first task, and stays so as it fills without ever
   * emptying. */
  for (int i = 0; i < N; i++) {
    t[i] = noop(m, NULL);
    assert_int_equal(rings(m, &solo), i + 1);
    assert_true(solo.solo);
    assert_int_equal(solo.n, (size_t)i + 1);
    assert_ptr_equal(solo.head, t[0]);
    assert_ptr_equal(solo.tail, t[i]);
  }
  /* A second queue joins: solo ends, the shared count takes both. */
  t[N] = noop(m, "other");
  assert_int_equal(rings(m, &solo), N + 1);
  assert_false(solo.solo);
  release_and_run(m, hold, fds, t, N + 1);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

static void test_with_a_limit_the_joined_queue_is_solo_and_counts_every_scope(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_set_concurrency(m, APEX_SCOPE_GLOBAL, NULL, 64, &err), APEX_OK);
  int fds[2];
  apex_task_t *hold = hold_worker(m, fds);
  enum { N = 4 };
  apex_task_t *t[N];
  solo_t solo;
  for (int i = 0; i < N; i++) {
    t[i] = noop(m, NULL);
    /* check_locked also compares the global scope's runnable count with
     * the rings' once a limit is set. */
    assert_int_equal(rings(m, &solo), i + 1);
    assert_true(solo.solo);
    assert_int_equal(solo.n, (size_t)i + 1);
  }
  release_and_run(m, hold, fds, t, N);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_queue_that_joins_alone_is_solo_before_it_empties),
      cmocka_unit_test(test_with_a_limit_the_joined_queue_is_solo_and_counts_every_scope),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
