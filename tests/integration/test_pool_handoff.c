/* The pool's hand-off (src/exec/pool.c, handoff_locked): a push that finds
 * a worker watching the queue picks the next task for it under pool_mu and
 * hands it over through the worker's own word, so the watcher runs it
 * without taking pool_mu. Hammered from several submitting threads at
 * once against two workers (the watcher is taken and handed to as fast as
 * the submits come): every task runs exactly once and ends succeeded, the
 * counts end at zero, and a concurrency limit holds for handed-over tasks
 * as for popped ones (the hand-off is the scheduler's pick, not a bypass).
 *
 * Plugins: sched_a, sched_b, sched_c (tests/plugins/sched_kit.h).
 * Threads: cmocka's is the host; SUBMITTERS threads submit. */
#include <pthread.h>
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
#include "integration/sched_harness.h"

enum { SUBMITTERS = 4 };

typedef struct submitter {
  pthread_t th;
  apex_manager_t *m;
  sk_probe_t *p;
  apex_task_t **out;
  int n;
  long us;
  int failed; /* a submit that did not return APEX_OK */
} submitter_t;

static void *submit_loop(void *arg) {
  submitter_t *s = arg;
  apex_submit_opts_t deadline;
  apex_submit_opts_init(&deadline);
  deadline.timeout_s = 60;
  for (int i = 0; i < s->n; i++) {
    int rc = APEX_OK;
    /* Half with a deadline (its list is linked in the section that hands
     * the task over), half without. */
    s->out[i] = sk_submit_rc(s->m, s->p, "sched_a", "x", SL_GLOBAL, SL_A, -1, -1, s->us, -1,
                             i % 2 ? &deadline : NULL, &rc, NULL);
    if (rc != APEX_OK) s->failed++;
  }
  return NULL;
}

/* Runs SUBMITTERS threads of per tasks each; returns the handles
 * (SUBMITTERS * per), every one waited for and succeeded. */
static apex_task_t **run_submitters(apex_manager_t *m, sk_probe_t *p, int per, long us) {
  apex_task_t **t = calloc((size_t)SUBMITTERS * per, sizeof *t);
  assert_non_null(t);
  submitter_t s[SUBMITTERS];
  for (int i = 0; i < SUBMITTERS; i++) {
    s[i] = (submitter_t){.m = m, .p = p, .out = t + (size_t)i * per, .n = per, .us = us};
    assert_int_equal(pthread_create(&s[i].th, NULL, submit_loop, &s[i]), 0);
  }
  for (int i = 0; i < SUBMITTERS; i++) {
    pthread_join(s[i].th, NULL);
    assert_int_equal(s[i].failed, 0);
  }
  for (int i = 0; i < SUBMITTERS * per; i++) {
    assert_non_null(t[i]);
    /* A task lost in a hand-off never ends: the wait fails. */
    assert_int_equal(apex_task_wait(t[i], 60000), APEX_OK);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
  }
  return t;
}

static void release_all(apex_task_t **t, int n) {
  for (int i = 0; i < n; i++) apex_task_release(t[i]);
  free(t);
}

static void test_handoff_runs_every_task_exactly_once(void **st) {
  (void)st;
  enum { PER = 20000, N = SUBMITTERS * PER };
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  apex_task_t **t = run_submitters(m, p, PER, 0);
  /* Each handler ran once: a task handed twice, or handed and popped,
   * counts twice; one never run was caught by the wait above. */
  assert_int_equal(atomic_load(&p->started), N);
  assert_int_equal(atomic_load(&p->finished), N);
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s), APEX_OK);
  assert_int_equal(s.submitted, N);
  assert_int_equal(s.succeeded, N);
  assert_int_equal(s.attempts, N);
  assert_int_equal(s.queued, 0);
  /* Slots go back in the worker's next pool_mu section: awaited. */
  AWAIT(scope_of(m, APEX_SCOPE_PLUGIN, "sched_a").running == 0, PROMPT_MS);
  release_all(t, N);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  free(p);
}

static void test_handoff_keeps_a_concurrency_limit(void **st) {
  (void)st;
  enum { PER = 1500, N = SUBMITTERS * PER };
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_PLUGIN, "sched_a", 1, err));
  /* Short handlers: the watcher is often idle when a push comes while the
   * other worker still runs the plugin's one allowed task. */
  apex_task_t **t = run_submitters(m, p, PER, 1);
  assert_int_equal(atomic_load(&p->started), N);
  assert_int_equal(atomic_load(&p->max[SL_A]), 1);
  AWAIT(scope_of(m, APEX_SCOPE_PLUGIN, "sched_a").running == 0, PROMPT_MS);
  release_all(t, N);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_handoff_runs_every_task_exactly_once),
      cmocka_unit_test(test_handoff_keeps_a_concurrency_limit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
