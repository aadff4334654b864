/* The scheduler's figures before any limit, rate or bound is set (src/sched/sched.c,
 * eager()): then a task counts only in its action's scope (and its key's),
 * and apex_manager_scope_stats makes the global and plugin figures from
 * the actions' when read; the first setting folds them into the global and
 * plugin scopes, which count every task from then on. Each test reads
 * every scope while tasks wait, are scheduled and run, across that switch,
 * and after all ended (all zero: a task counted one way and uncounted the
 * other would leave a figure off by one).
 *
 * Plugins: testkit (noop, echo), gate (deaf_read: runs until the test
 * writes to its FIFO), neither with a descriptor limit (which would make
 * the counts eager at the first submit).
 * Threads: cmocka's is the host. */
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
#include "integration/gate.h"
#include "integration/sched_harness.h"

typedef struct want {
  uint64_t scheduled, queued, running;
} want_t;

static void check(apex_manager_t *m, apex_scope_t scope, const char *name, want_t w) {
  apex_scope_stats_t s = scope_of(m, scope, name);
  if (s.scheduled != w.scheduled || s.queued != w.queued || s.running != w.running ||
      s.waiting_on_limit || s.waiting_on_rate)
    print_error("scope %d %s: scheduled %llu queued %llu running %llu limit %llu rate %llu; "
                "want %llu %llu %llu 0 0\n",
                (int)scope, name ? name : "-", (unsigned long long)s.scheduled,
                (unsigned long long)s.queued, (unsigned long long)s.running,
                (unsigned long long)s.waiting_on_limit, (unsigned long long)s.waiting_on_rate,
                (unsigned long long)w.scheduled, (unsigned long long)w.queued,
                (unsigned long long)w.running);
  assert_int_equal(s.scheduled, w.scheduled);
  assert_int_equal(s.queued, w.queued);
  assert_int_equal(s.running, w.running);
  assert_int_equal(s.waiting_on_limit, 0);
  assert_int_equal(s.waiting_on_rate, 0);
}

/* The state both tests build: one worker held by gate.deaf_read, behind it
 * three testkit.noop and one testkit.echo with concurrency key "k1"
 * waiting, and one testkit.noop scheduled an hour ahead; then one of the
 * waiting noops cancelled. */
typedef struct scene {
  gate_t g;
  apex_task_t *held, *noop[3], *echo, *later;
} scene_t;

static apex_manager_t *scene_make(scene_t *sc) {
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  load_gate(m);
  gate_init(&sc->g);
  sc->held = submit_json(m, "gate", "deaf_read", sc->g.params, NULL);
  AWAIT(apex_task_state(sc->held) == APEX_TASK_RUNNING, PROMPT_MS);
  for (int i = 0; i < 3; i++) sc->noop[i] = submit_json(m, "testkit", "noop", NULL, NULL);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.concurrency_key = "k1";
  sc->echo = submit_json(m, "testkit", "echo", "{\"value\": {}}", &o);
  apex_submit_opts_init(&o);
  o.run_after_s = 3600;
  sc->later = submit_json(m, "testkit", "noop", NULL, &o);
  assert_int_equal(apex_task_cancel(sc->noop[2], NULL), APEX_OK);
  assert_int_equal(apex_task_state(sc->noop[2]), APEX_TASK_CANCELLED);
  return m;
}

/* Every scope's figures for the scene. */
static void scene_check(apex_manager_t *m) {
  check(m, APEX_SCOPE_GLOBAL, NULL, (want_t){1, 3, 1});
  check(m, APEX_SCOPE_PLUGIN, "testkit", (want_t){1, 3, 0});
  check(m, APEX_SCOPE_PLUGIN, "gate", (want_t){0, 0, 1});
  check(m, APEX_SCOPE_ACTION, "testkit.noop", (want_t){1, 2, 0});
  check(m, APEX_SCOPE_ACTION, "testkit.echo", (want_t){0, 1, 0});
  check(m, APEX_SCOPE_ACTION, "gate.deaf_read", (want_t){0, 0, 1});
  check(m, APEX_SCOPE_KEY, "k1", (want_t){0, 1, 0});
  assert_int_equal(stats_of(m).queued, 3);
}

/* Opens the gate, waits for every task (the scheduled one cancelled),
 * and checks that every figure went back to zero. */
static void scene_end(apex_manager_t *m, scene_t *sc) {
  gate_open(&sc->g);
  assert_int_equal(apex_task_cancel(sc->later, NULL), APEX_OK);
  apex_task_t *all[] = {sc->held, sc->noop[0], sc->noop[1], sc->noop[2], sc->echo, sc->later};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) wait_done(all[i]);
  assert_int_equal(apex_task_state(sc->held), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_state(sc->noop[0]), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_state(sc->echo), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_state(sc->later), APEX_TASK_CANCELLED);
  /* A worker gives a task's slots back in its next pool section, which
   * may come a moment after the DONE: awaited, not assumed. */
  AWAIT(scope_of(m, APEX_SCOPE_GLOBAL, NULL).running == 0, PROMPT_MS);
  const want_t zero = {0, 0, 0};
  check(m, APEX_SCOPE_GLOBAL, NULL, zero);
  check(m, APEX_SCOPE_PLUGIN, "testkit", zero);
  check(m, APEX_SCOPE_PLUGIN, "gate", zero);
  check(m, APEX_SCOPE_ACTION, "testkit.noop", zero);
  check(m, APEX_SCOPE_ACTION, "testkit.echo", zero);
  check(m, APEX_SCOPE_ACTION, "gate.deaf_read", zero);
  check(m, APEX_SCOPE_KEY, "k1", zero);
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) apex_task_release(all[i]);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  gate_fini(&sc->g);
}

/* No setting at all: the global and plugin figures are the actions' sums. */
static void test_figures_without_any_setting(void **st) {
  (void)st;
  scene_t sc;
  apex_manager_t *m = scene_make(&sc);
  scene_check(m);
  scene_end(m, &sc);
}

/* A setting arrives while tasks wait, are scheduled and run: the figures
 * read the same right after it, and the tasks counted before it leave the
 * scopes they were folded into. The limit is on an action none of them
 * runs, so it holds nothing back. */
static void test_figures_across_the_first_setting(void **st) {
  (void)st;
  scene_t sc;
  apex_manager_t *m = scene_make(&sc);
  scene_check(m);
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_ACTION, "testkit.params_all", 5, err));
  scene_check(m);
  /* One more of each kind, counted the eager way, then back. */
  apex_task_t *more = submit_json(m, "testkit", "noop", NULL, NULL);
  check(m, APEX_SCOPE_GLOBAL, NULL, (want_t){1, 4, 1});
  check(m, APEX_SCOPE_PLUGIN, "testkit", (want_t){1, 4, 0});
  assert_int_equal(apex_task_cancel(more, NULL), APEX_OK);
  apex_task_release(more);
  scene_check(m);
  scene_end(m, &sc);
}

/* A max_queued bound is a setting too: set while tasks wait, it counts
 * what waits from then on (the fold), so the bound refuses the submit that
 * would pass it. */
static void test_a_bound_counts_what_waited_before_it(void **st) {
  (void)st;
  scene_t sc;
  apex_manager_t *m = scene_make(&sc);
  SCHED_OK(apex_manager_set_max_queued(m, APEX_SCOPE_PLUGIN, "testkit", 4, err));
  scene_check(m);
  /* 3 waiting and 1 scheduled count against 4: full. */
  int rc = APEX_OK;
  apex_task_t *t = NULL;
  apex_error_t *e = NULL;
  rc = apex_manager_submit(m, "testkit", "noop", NULL, NULL, &t, &e);
  assert_int_equal(rc, APEX_E_QUEUE_FULL);
  assert_null(t);
  apex_error_unref(e);
  scene_end(m, &sc);
}

/* config.max_queued (live tasks) refuses before any scheduler setting,
 * when no scope counts globally. */
static void test_config_max_queued_without_any_setting(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  cfg.max_queued = 2;
  apex_manager_t *m = make_test_manager(&cfg);
  load_gate(m);
  gate_t g;
  gate_init(&g);
  apex_task_t *held = submit_json(m, "gate", "deaf_read", g.params, NULL);
  apex_task_t *waits = submit_json(m, "testkit", "noop", NULL, NULL);
  apex_task_t *t = NULL;
  apex_error_t *e = NULL;
  assert_int_equal(apex_manager_submit(m, "testkit", "noop", NULL, NULL, &t, &e),
                   APEX_E_QUEUE_FULL);
  assert_non_null(strstr(apex_error_message(e), "config.max_queued"));
  apex_error_unref(e);
  gate_open(&g);
  wait_done(held);
  wait_done(waits);
  apex_task_release(held);
  apex_task_release(waits);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  gate_fini(&g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_figures_without_any_setting),
      cmocka_unit_test(test_figures_across_the_first_setting),
      cmocka_unit_test(test_a_bound_counts_what_waited_before_it),
      cmocka_unit_test(test_config_max_queued_without_any_setting),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
