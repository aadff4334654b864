/* Concurrency limits and fairness (src/sched/, docs/scheduling.md): no
 * limit is ever exceeded under load, with deferred tasks holding their
 * slots (the handlers count themselves with atomics: sched_kit); a task
 * held by a limit never holds back another (no head-of-line blocking); a
 * raised limit starts waiting work at once and a lowered one cancels
 * nothing; a plugin's flood delays another plugin's tasks by a few picks,
 * not by its backlog (W9 as a test, against FIFO).
 *
 * Plugins: sched_a, sched_b, sched_c (tests/plugins/sched_kit.h).
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
#include "integration/sched_harness.h"

/* Done-when of issue 10: 10,000 tasks across three plugins, global 8 with
 * 8 workers, plugin A 2, action B.x 1, key "k" 3, deferred tasks
 * included; no limit is ever exceeded, and each is reached. */
static void test_stress_limits_never_exceeded(void **st) {
  (void)st;
  enum { N = 10000 };
  apex_manager_config_t cfg = base_config(8);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_GLOBAL, NULL, 8, err));
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_PLUGIN, "sched_a", 2, err));
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_ACTION, "sched_b.x", 1, err));
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_KEY, "k", 3, err));
  static const char *const plugins[] = {"sched_a", "sched_b", "sched_c"};
  apex_task_t **t = calloc(N, sizeof *t);
  assert_non_null(t);
  apex_submit_opts_t keyed;
  apex_submit_opts_init(&keyed);
  keyed.concurrency_key = "k";
  for (int i = 0; i < N; i++) {
    int pl = i % 3;
    const char *action = (i / 3) % 3 == 2 ? "d" : "x";
    int key = i % 5 == 0;
    int bx = pl == 1 && action[0] == 'x';
    t[i] = sk_submit(m, p, plugins[pl], action, SL_GLOBAL, SL_A + pl, bx ? SL_BX : -1,
                     key ? SL_KEY : -1, 20 + (i % 4) * 20, -1, key ? &keyed : NULL);
  }
  for (int i = 0; i < N; i++) {
    wait_done(t[i]);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  free(t);
  print_message("max running: global %d, A %d, B.x %d, key k %d\n", atomic_load(&p->max[SL_GLOBAL]),
                atomic_load(&p->max[SL_A]), atomic_load(&p->max[SL_BX]),
                atomic_load(&p->max[SL_KEY]));
  assert_true(atomic_load(&p->max[SL_GLOBAL]) <= 8);
  assert_true(atomic_load(&p->max[SL_A]) <= 2);
  assert_true(atomic_load(&p->max[SL_BX]) <= 1);
  assert_true(atomic_load(&p->max[SL_KEY]) <= 3);
  /* The limits were reached, so the bound above was tested. */
  assert_int_equal(atomic_load(&p->max[SL_A]), 2);
  assert_int_equal(atomic_load(&p->max[SL_BX]), 1);
  assert_true(atomic_load(&p->max[SL_KEY]) >= 2);
  assert_true(atomic_load(&p->max[SL_GLOBAL]) >= 3);
  /* Everything ended: every scope is empty again. A slot goes back in its
   * worker's next pool_mu section (docs/architecture.md), so `running` may
   * lag the last DONE a little: awaited. */
  AWAIT(scope_of(m, APEX_SCOPE_GLOBAL, NULL).running == 0, PROMPT_MS);
  AWAIT(scope_of(m, APEX_SCOPE_KEY, "k").running == 0, PROMPT_MS);
  apex_scope_stats_t g = scope_of(m, APEX_SCOPE_GLOBAL, NULL);
  assert_int_equal(g.queued + g.waiting_on_limit + g.waiting_on_rate + g.running + g.scheduled, 0);
  apex_scope_stats_t k = scope_of(m, APEX_SCOPE_KEY, "k");
  assert_int_equal(k.running + k.waiting_on_limit, 0);
  assert_int_equal(stats_of(m).queued, 0);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

/* A task a limit holds back waits without a worker, and the tasks behind
 * it run: plugin A at 1, its first task holding the slot, 50 more queued,
 * then one of B, which must finish while A's first still runs. */
static void test_blocked_task_holds_back_nobody(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_PLUGIN, "sched_a", 1, err));
  apex_task_t *first = sk_submit(m, p, "sched_a", "x", SL_A, -1, -1, -1, 3000000, -1, NULL);
  AWAIT(atomic_load(&p->cur[SL_A]) == 1, PROMPT_MS);
  apex_task_t *a[50];
  for (int i = 0; i < 50; i++) a[i] = sk_submit(m, p, "sched_a", "x", SL_A, -1, -1, -1, 0, -1, NULL);
  apex_task_t *b = sk_submit(m, p, "sched_b", "x", SL_B, -1, -1, -1, 0, -1, NULL);
  assert_int_equal(apex_task_wait(b, 2000), APEX_OK);
  assert_int_equal(apex_task_state(b), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_state(first), APEX_TASK_RUNNING);
  /* The 50 wait on A's limit, none runnable, none running. */
  AWAIT(scope_of(m, APEX_SCOPE_PLUGIN, "sched_a").waiting_on_limit == 50, PROMPT_MS);
  apex_scope_stats_t s = scope_of(m, APEX_SCOPE_PLUGIN, "sched_a");
  assert_int_equal(s.running, 1);
  assert_int_equal(s.queued, 0);
  assert_int_equal(stats_of(m).queued, 50); /* parked tasks are queued */
  assert_int_equal(atomic_load(&p->max[SL_A]), 1);
  apex_task_release(b);
  /* Cancelling the holder's neighbours leaves them at once. */
  for (int i = 0; i < 10; i++) assert_int_equal(apex_task_cancel(a[i], NULL), APEX_OK);
  for (int i = 0; i < 10; i++) assert_int_equal(apex_task_state(a[i]), APEX_TASK_CANCELLED);
  assert_int_equal(scope_of(m, APEX_SCOPE_PLUGIN, "sched_a").waiting_on_limit, 40);
  wait_done(first);
  for (int i = 10; i < 50; i++) {
    wait_done(a[i]);
    assert_int_equal(apex_task_state(a[i]), APEX_TASK_SUCCEEDED);
  }
  for (int i = 0; i < 50; i++) apex_task_release(a[i]);
  apex_task_release(first);
  assert_int_equal(atomic_load(&p->max[SL_A]), 1);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

/* Raising a limit starts the waiting tasks at once; lowering it below the
 * running count cancels none of them. */
static void test_raise_starts_waiting_lower_cancels_nothing(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_ACTION, "sched_a.d", 1, err));
  apex_task_t *t[10];
  /* Deferred: they hold their slots, not workers. */
  for (int i = 0; i < 10; i++) t[i] = sk_submit(m, p, "sched_a", "d", SL_A, -1, -1, -1, 300000, -1, NULL);
  AWAIT(scope_of(m, APEX_SCOPE_ACTION, "sched_a.d").waiting_on_limit == 9, PROMPT_MS);
  /* The first holds the slot from its pick (the push that handed it to a
   * watching worker, pool.c), its handler a moment later: awaited. */
  AWAIT(atomic_load(&p->cur[SL_A]) == 1, PROMPT_MS);
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_ACTION, "sched_a.d", 10, err));
  AWAIT(atomic_load(&p->started) == 10, PROMPT_MS);
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_ACTION, "sched_a.d", 1, err));
  for (int i = 0; i < 10; i++) {
    wait_done(t[i]);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  assert_true(atomic_load(&p->max[SL_A]) >= 5);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

/* The action descriptor's defaults apply when the host set nothing
 * (sched_kit's actions have none: the host's key default stands in), and a
 * retry counts against the limit again. */
static void test_retries_reenter_the_limits(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(4);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_KEY, NULL, 1, err)); /* every key: 1 */
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.concurrency_key = "host-1";
  apex_task_t *t[40];
  for (int i = 0; i < 40; i++) {
    json_t *params = json_pack("{s:I, s:[i], s:i}", "probe", (json_int_t)(uintptr_t)p, "slots",
                               SL_KEY, "fails", 2);
    assert_int_equal(apex_manager_submit(m, i % 2 ? "sched_a" : "sched_b", "f", params, &o, &t[i], NULL),
                     APEX_OK);
    json_decref(params);
  }
  for (int i = 0; i < 40; i++) {
    wait_done(t[i]);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    assert_int_equal(apex_task_attempts(t[i]), 3);
    apex_task_release(t[i]);
  }
  assert_int_equal(atomic_load(&p->max[SL_KEY]), 1);
  assert_int_equal(atomic_load(&p->started), 120);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

/* An action's descriptor defaults: max_concurrency 2, key_concurrency 1,
 * the key from its hook (the `host` param); a host's setting wins. */
static void test_descriptor_defaults(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(6);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  apex_task_t *t[40];
  for (int i = 0; i < 40; i++) {
    json_t *params = json_pack("{s:I, s:[ii], s:i, s:s}", "probe", (json_int_t)(uintptr_t)p,
                               "slots", SL_A, i % 2 ? 6 : 7, "us", 5000, "host", i % 2 ? "a" : "b");
    assert_int_equal(apex_manager_submit(m, "sched_a", "h", params, NULL, &t[i], NULL), APEX_OK);
    json_decref(params);
  }
  AWAIT(scope_of(m, APEX_SCOPE_KEY, "a").waiting_on_limit > 0, PROMPT_MS);
  for (int i = 0; i < 40; i++) {
    wait_done(t[i]);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  assert_int_equal(atomic_load(&p->max[6]), 1);
  assert_int_equal(atomic_load(&p->max[7]), 1);
  assert_int_equal(atomic_load(&p->max[SL_A]), 2);
  /* The host's limit for the action replaces the descriptor's. */
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_ACTION, "sched_a.h", 1, err));
  memset(p, 0, sizeof *p);
  for (int i = 0; i < 20; i++) {
    json_t *params = json_pack("{s:I, s:[i], s:i, s:s}", "probe", (json_int_t)(uintptr_t)p,
                               "slots", SL_A, "us", 2000, "host", i % 2 ? "a" : "b");
    assert_int_equal(apex_manager_submit(m, "sched_a", "h", params, NULL, &t[i], NULL), APEX_OK);
    json_decref(params);
  }
  for (int i = 0; i < 20; i++) {
    wait_done(t[i]);
    apex_task_release(t[i]);
  }
  assert_int_equal(atomic_load(&p->max[SL_A]), 1);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

/* W9 as a test: plugin A floods, then B submits 50. With fairness, B's
 * tasks all start before A's backlog is half done; with both under one
 * fairness key (FIFO), B waits behind the flood, which shows the measure
 * can fail. Both workers are held by gate tasks while A and B submit, so
 * the whole flood is queued when B arrives and the order does not depend
 * on how fast the host submits (under TSan at load, the workers used to
 * get through part of the flood first). Returns the index, in start
 * order, of B's last start. */
static long flood_then_b(int fifo) {
  enum { NA = 2000, NB = 50, WORKERS = 2 };
  apex_manager_config_t cfg = base_config(WORKERS);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.fairness_key = "one";
  const apex_submit_opts_t *op = fifo ? &o : NULL;
  atomic_store(&p->hold, 1);
  apex_task_t *gate[WORKERS];
  for (int i = 0; i < WORKERS; i++)
    gate[i] = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, -1, -1, NULL);
  AWAIT(atomic_load(&p->started) == WORKERS, PROMPT_MS);
  apex_task_t **t = calloc(NA + NB, sizeof *t);
  assert_non_null(t);
  for (int i = 0; i < NA; i++) t[i] = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 100, 0, op);
  for (int i = 0; i < NB; i++)
    t[NA + i] = sk_submit(m, p, "sched_b", "x", -1, -1, -1, -1, 100, 1, op);
  assert_int_equal(atomic_load(&p->n_starts), 0); /* all of it queued behind the gates */
  atomic_store(&p->hold, 0);
  for (int i = 0; i < WORKERS; i++) {
    wait_done(gate[i]);
    apex_task_release(gate[i]);
  }
  for (int i = 0; i < NA + NB; i++) {
    wait_done(t[i]);
    apex_task_release(t[i]);
  }
  free(t);
  long last_b = -1, n = (long)atomic_load(&p->n_starts);
  assert_int_equal(n, NA + NB);
  for (long i = 0; i < n; i++)
    if (p->start_tag[i] == 1) last_b = i;
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
  return last_b;
}

static void test_flood_does_not_starve_another_plugin(void **st) {
  (void)st;
  long fair = flood_then_b(0);
  long fifo = flood_then_b(1);
  print_message("B's last start: %ld with fairness, %ld in FIFO\n", fair, fifo);
  /* Picks alternate between the two plugins' keys while both wait: B's 50
   * come within the first 100 starts or so (99 with today's scheduler),
   * not behind A's 2000. */
  assert_true(fair < 150);
  assert_true(fifo >= 2000);  /* FIFO: after all of A's */
}

/* Weights: a fairness key of weight 3 gets three picks to another's one
 * while both have tasks waiting. */
static void test_weights_share_picks(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_weight(m, "sched_a", 3, err));
  apex_task_t *gate = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 300000, -1, NULL);
  AWAIT(atomic_load(&p->started) == 1, PROMPT_MS);
  apex_task_t *t[400];
  for (int i = 0; i < 200; i++) t[i] = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, 0, NULL);
  for (int i = 0; i < 200; i++) t[200 + i] = sk_submit(m, p, "sched_b", "x", -1, -1, -1, -1, 0, 1, NULL);
  for (int i = 0; i < 400; i++) {
    wait_done(t[i]);
    apex_task_release(t[i]);
  }
  wait_done(gate);
  apex_task_release(gate);
  /* Of the first 200 starts, about 150 are A's. */
  int a = 0;
  for (int i = 0; i < 200; i++) a += p->start_tag[i] == 0;
  print_message("A's share of the first 200 starts: %d\n", a);
  assert_in_range(a, 140, 160);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stress_limits_never_exceeded),
      cmocka_unit_test(test_blocked_task_holds_back_nobody),
      cmocka_unit_test(test_raise_starts_waiting_lower_cancels_nothing),
      cmocka_unit_test(test_retries_reenter_the_limits),
      cmocka_unit_test(test_descriptor_defaults),
      cmocka_unit_test(test_flood_does_not_starve_another_plugin),
      cmocka_unit_test(test_weights_share_picks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
