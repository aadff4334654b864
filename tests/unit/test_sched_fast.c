/* The scheduler's short paths (src/sched/sched.c, plain_action): while no
 * limit, rate or bound is set, a task of its plugin's default class pushed
 * to, and picked from, the solo queue, and its slot given back, skip the
 * general code. They must leave the same lists, places and counts: checked
 * here with the rings walked directly (apex__sched_check_locked), the solo
 * queue's order against the submit order, every scope's figures while the
 * tasks wait and after they ran, with tasks of a concurrency key (a class
 * of their own, the general path) in the same queue between them, and
 * across the switch to eager counts (a limit set while short-path tasks
 * wait: they were counted in their action only, and the general pick that
 * takes them must find the folded sums). And the pool's live count
 * (submitted less ended: apex__pool_n_live, config.max_queued) and the
 * submitted figure (counted in the submit's pool_mu section).
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

static void want_scope(apex_manager_t *m, apex_scope_t scope, const char *name, uint64_t queued,
                       uint64_t running) {
  apex_scope_stats_t s = APEX_SCOPE_STATS_INIT;
  assert_int_equal(apex_manager_scope_stats(m, scope, name, &s), APEX_OK);
  if (s.queued != queued || s.running != running)
    print_error("scope %d %s: queued %llu running %llu, want %llu %llu\n", (int)scope,
                name ? name : "-", (unsigned long long)s.queued,
                (unsigned long long)s.running, (unsigned long long)queued,
                (unsigned long long)running);
  assert_int_equal(s.queued, queued);
  assert_int_equal(s.running, running);
  assert_int_equal(s.waiting_on_limit, 0);
  assert_int_equal(s.waiting_on_rate, 0);
  assert_int_equal(s.scheduled, 0);
}

static uint64_t global_running(apex_manager_t *m) {
  apex_scope_stats_t s = APEX_SCOPE_STATS_INIT;
  if (apex_manager_scope_stats(m, APEX_SCOPE_GLOBAL, NULL, &s) != APEX_OK) return UINT64_MAX;
  return s.running;
}

typedef struct scene {
  apex_manager_t *m;
  apex_task_t *hold;
  int fds[2];
} scene_t;

/* One worker held; testkit's default queue made solo (a task pushed and
 * cancelled: it emptied while it was the only queue). */
static void scene_make(scene_t *sc, size_t max_queued) {
  apex_manager_config_t cfg = base_config(1);
  cfg.max_queued = max_queued;
  sc->m = make_test_manager(&cfg);
  load_ok(sc->m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  assert_int_equal(pipe(sc->fds), 0);
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", sc->fds[0]);
  sc->hold = submit_json(sc->m, "cancel_probe", "hold", params, NULL);
  AWAIT(apex_task_state(sc->hold) == APEX_TASK_RUNNING, PROMPT_MS);
  apex_task_t *t = noop(sc->m, NULL);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  apex_task_release(t);
  int solo = 0;
  assert_int_equal(rings(sc->m, &solo), 0);
  assert_true(solo);
}

static void scene_run_out(scene_t *sc, apex_task_t **t, int n) {
  assert_int_equal(write(sc->fds[1], "x", 1), 1);
  assert_int_equal(apex_task_wait(sc->hold, 10000), APEX_OK);
  for (int i = 0; i < n; i++) {
    assert_int_equal(apex_task_wait(t[i], 10000), APEX_OK);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  apex_task_release(sc->hold);
  /* A worker gives its task's slots back in its pool_mu section after the
   * task ended (pool.c), a moment after a wait returns. */
  AWAIT(global_running(sc->m) == 0, 10000);
  close(sc->fds[0]);
  close(sc->fds[1]);
}

enum { N = 9 };

/* Default-class tasks with keyed ones between them, all in the solo
 * queue: pushed in order, counted in their action (and the keyed ones in
 * their key), run, and every figure back at zero. */
static void test_short_and_general_paths_share_the_solo_queue(void **st) {
  (void)st;
  scene_t sc;
  scene_make(&sc, 0);
  apex_manager_t *m = sc.m;
  apex_stats_t before = {.struct_size = sizeof before};
  assert_int_equal(apex_manager_stats_v2(m, &before), APEX_OK);
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
  assert_int_equal(apex__pool_n_live(m), N + 1);
  apex_stats_t mid = {.struct_size = sizeof mid};
  assert_int_equal(apex_manager_stats_v2(m, &mid), APEX_OK);
  assert_int_equal(mid.submitted - before.submitted, N);
  assert_int_equal(mid.queued, N);

  scene_run_out(&sc, t, N);
  assert_int_equal(rings(m, &solo), 0);
  assert_true(solo);
  want_scope(m, APEX_SCOPE_ACTION, "testkit.noop", 0, 0);
  want_scope(m, APEX_SCOPE_KEY, "k", 0, 0);
  want_scope(m, APEX_SCOPE_PLUGIN, "testkit", 0, 0);
  want_scope(m, APEX_SCOPE_ACTION, "cancel_probe.hold", 0, 0);
  want_scope(m, APEX_SCOPE_GLOBAL, NULL, 0, 0);
  assert_int_equal(apex__pool_n_live(m), 0);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

/* Short-path tasks wait when the first limit is set (high enough never to
 * hold them): the counts go eager, the general pick takes them from the
 * sums the switch folded in, and every scope ends at zero (a task counted
 * one way and uncounted the other would leave one off by one, or wrapped
 * below zero). */
static void test_a_limit_set_while_short_path_tasks_wait(void **st) {
  (void)st;
  scene_t sc;
  scene_make(&sc, 0);
  apex_manager_t *m = sc.m;
  apex_task_t *t[N];
  for (int i = 0; i < N - 2; i++) t[i] = noop(m, NULL);
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_set_concurrency(m, APEX_SCOPE_PLUGIN, "testkit", 64, &err),
                   APEX_OK);
  /* Pushed after the switch: the general path. */
  t[N - 2] = noop(m, NULL);
  t[N - 1] = noop(m, "k");
  int solo = 0;
  assert_int_equal(rings(m, &solo), N);
  want_scope(m, APEX_SCOPE_ACTION, "testkit.noop", N, 0);
  want_scope(m, APEX_SCOPE_PLUGIN, "testkit", N, 0);
  want_scope(m, APEX_SCOPE_GLOBAL, NULL, N, 1);
  scene_run_out(&sc, t, N);
  assert_int_equal(rings(m, &solo), 0);
  want_scope(m, APEX_SCOPE_ACTION, "testkit.noop", 0, 0);
  want_scope(m, APEX_SCOPE_KEY, "k", 0, 0);
  want_scope(m, APEX_SCOPE_PLUGIN, "testkit", 0, 0);
  want_scope(m, APEX_SCOPE_GLOBAL, NULL, 0, 0);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

/* config.max_queued counts live tasks (submitted less ended): the held
 * task and two waiting fill 3; the fourth is refused, and once they ran
 * there is room again. */
static void test_max_queued_counts_submitted_less_ended(void **st) {
  (void)st;
  scene_t sc;
  scene_make(&sc, 3);
  apex_manager_t *m = sc.m;
  apex_task_t *t[3];
  t[0] = noop(m, NULL);
  t[1] = noop(m, NULL);
  assert_int_equal(apex__pool_n_live(m), 3);
  apex_task_t *x = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_submit(m, "testkit", "noop", NULL, NULL, &x, &err),
                   APEX_E_QUEUE_FULL);
  apex_error_unref(err);
  assert_null(x);
  assert_int_equal(apex__pool_n_live(m), 3);
  scene_run_out(&sc, t, 2);
  assert_int_equal(apex__pool_n_live(m), 0);
  t[2] = noop(m, NULL);
  assert_int_equal(apex_task_wait(t[2], 10000), APEX_OK);
  apex_task_release(t[2]);
  assert_int_equal(apex__pool_n_live(m), 0);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_short_and_general_paths_share_the_solo_queue),
      cmocka_unit_test(test_a_limit_set_while_short_path_tasks_wait),
      cmocka_unit_test(test_max_queued_counts_submitted_less_ended),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
