/* The scheduler's second short path (src/sched/sched.c, eager_action): once
 * a limit is set (eager counts), a task of its plugin's default class while
 * no rate was ever set is pushed to, and picked from, the solo queue, and
 * its slots given back, without the general code's four-scope walks. It
 * must leave the same lists, places and counts as the general code
 * (apex__sched_check_locked walks the rings), with keyed tasks (the general
 * path) in the same queue between them, and a limit it reaches must hold
 * the task back as the general pick does (the task parks on the limit).
 *
 * Plugins: cancel_probe's `hold` keeps workers busy; testkit's `noop` is
 * what waits. Threads: cmocka's is the host. */
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

/* 1 when the solo queue holds exactly t[0..n-1], in that order. */
static int solo_order(apex_manager_t *m, apex_task_t **t, int n) {
  apex__lock(&m->pool_mu);
  apex__fq_t *q = m->sched->solo;
  int ok = q != NULL;
  apex_task_t *x = q ? q->head : NULL;
  for (int i = 0; ok && i < n; i++, x = x->run_next) ok = x == t[i];
  ok = ok && x == NULL;
  apex__unlock(&m->pool_mu);
  return ok;
}

static apex_task_t *noop(apex_manager_t *m, const char *key) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.concurrency_key = key;
  return submit_json(m, "testkit", "noop", NULL, &o);
}

static apex_scope_stats_t scope(apex_manager_t *m, apex_scope_t kind, const char *name) {
  apex_scope_stats_t s = APEX_SCOPE_STATS_INIT;
  assert_int_equal(apex_manager_scope_stats(m, kind, name, &s), APEX_OK);
  return s;
}

static void want_scope(apex_manager_t *m, apex_scope_t kind, const char *name, uint64_t queued,
                       uint64_t running) {
  apex_scope_stats_t s = scope(m, kind, name);
  if (s.queued != queued || s.running != running)
    print_error("scope %d %s: queued %llu running %llu, want %llu %llu\n", (int)kind,
                name ? name : "-", (unsigned long long)s.queued, (unsigned long long)s.running,
                (unsigned long long)queued, (unsigned long long)running);
  assert_int_equal(s.queued, queued);
  assert_int_equal(s.running, running);
  assert_int_equal(s.waiting_on_limit, 0);
  assert_int_equal(s.waiting_on_rate, 0);
}

static void limit(apex_manager_t *m, apex_scope_t kind, const char *name, uint32_t n) {
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_set_concurrency(m, kind, name, n, &err), APEX_OK);
}

/* A held task on cancel_probe; Returns: it (release_fd fds[0]). */
static apex_task_t *hold(apex_manager_t *m, int fds[2]) {
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", fds[0]);
  return submit_json(m, "cancel_probe", "hold", params, NULL);
}

static apex_manager_t *make(unsigned workers) {
  apex_manager_config_t cfg = base_config(workers);
  apex_manager_t *m = make_test_manager(&cfg);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  return m;
}

enum { N = 9 };

/* W1's apex_limits: a global and a plugin limit high enough never to hold a
 * task, set before anything is queued. Default-class tasks (the eager short
 * path) with keyed ones between them (the general path) wait behind the
 * only worker in one solo queue, in order, counted in every scope; they
 * run, and every figure is back at zero. */
static void test_eager_short_and_general_paths_share_the_solo_queue(void **st) {
  (void)st;
  apex_manager_t *m = make(1);
  limit(m, APEX_SCOPE_GLOBAL, NULL, 64);
  limit(m, APEX_SCOPE_PLUGIN, "testkit", 64);
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  apex_task_t *h = hold(m, fds);
  AWAIT(apex_task_state(h) == APEX_TASK_RUNNING, PROMPT_MS);
  /* The default queue made solo: a task pushed and cancelled emptied it
   * while it was the only queue. */
  apex_task_t *x = noop(m, NULL);
  assert_int_equal(apex_task_cancel(x, NULL), APEX_OK);
  apex_task_release(x);
  apex_task_t *t[N];
  for (int i = 0; i < N; i++) t[i] = noop(m, i % 3 == 1 ? "k" : NULL);
  int solo = 0;
  assert_int_equal(rings(m, &solo), N);
  assert_true(solo);
  assert_true(solo_order(m, t, N));
  want_scope(m, APEX_SCOPE_ACTION, "testkit.noop", N, 0);
  want_scope(m, APEX_SCOPE_KEY, "k", 3, 0);
  want_scope(m, APEX_SCOPE_PLUGIN, "testkit", N, 0);
  want_scope(m, APEX_SCOPE_GLOBAL, NULL, N, 1);
  assert_int_equal(write(fds[1], "x", 1), 1);
  assert_int_equal(apex_task_wait(h, 10000), APEX_OK);
  for (int i = 0; i < N; i++) {
    assert_int_equal(apex_task_wait(t[i], 10000), APEX_OK);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  apex_task_release(h);
  /* Slots go back in the worker's section after the task ended (pool.c). */
  AWAIT(scope(m, APEX_SCOPE_GLOBAL, NULL).running == 0, 10000);
  assert_int_equal(rings(m, &solo), 0);
  want_scope(m, APEX_SCOPE_ACTION, "testkit.noop", 0, 0);
  want_scope(m, APEX_SCOPE_KEY, "k", 0, 0);
  want_scope(m, APEX_SCOPE_PLUGIN, "testkit", 0, 0);
  want_scope(m, APEX_SCOPE_ACTION, "cancel_probe.hold", 0, 0);
  want_scope(m, APEX_SCOPE_GLOBAL, NULL, 0, 0);
  close(fds[0]);
  close(fds[1]);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

/* A limit the short path reaches holds the task back: two default-class
 * holds under a plugin limit of 1 with two workers, the second parks on
 * the limit (the general pick's doing) and runs once the first ends. */
static void test_eager_short_path_parks_on_a_reached_limit(void **st) {
  (void)st;
  apex_manager_t *m = make(2);
  limit(m, APEX_SCOPE_PLUGIN, "cancel_probe", 1);
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  apex_task_t *a = hold(m, fds);
  AWAIT(apex_task_state(a) == APEX_TASK_RUNNING, PROMPT_MS);
  apex_task_t *b = hold(m, fds);
  AWAIT(scope(m, APEX_SCOPE_PLUGIN, "cancel_probe").waiting_on_limit == 1, PROMPT_MS);
  apex_scope_stats_t s = scope(m, APEX_SCOPE_PLUGIN, "cancel_probe");
  assert_int_equal(s.running, 1);
  assert_int_equal(apex_task_state(b), APEX_TASK_QUEUED);
  /* One byte ends both holds (each poll sees it; neither reads it). */
  assert_int_equal(write(fds[1], "x", 1), 1);
  assert_int_equal(apex_task_wait(a, 10000), APEX_OK);
  assert_int_equal(apex_task_wait(b, 10000), APEX_OK);
  assert_int_equal(apex_task_state(b), APEX_TASK_SUCCEEDED);
  apex_task_release(a);
  apex_task_release(b);
  AWAIT(scope(m, APEX_SCOPE_GLOBAL, NULL).running == 0, 10000);
  want_scope(m, APEX_SCOPE_PLUGIN, "cancel_probe", 0, 0);
  close(fds[0]);
  close(fds[1]);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_eager_short_and_general_paths_share_the_solo_queue),
      cmocka_unit_test(test_eager_short_path_parks_on_a_reached_limit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
