/* The submit inbox (src/exec/pool.c, "the inbox"): a plain submit that
 * finds no worker idle puts its task in a ring without pool_mu, and the
 * next holder of pool_mu for the scheduler moves it in. Checked here,
 * with the only worker held busy so that the tasks stay in the ring:
 * - a task cancelled while in the inbox leaves the queue at once (moved
 *   in and taken out in its cancel's section) and never runs;
 * - destroy with tasks in the inbox ends every one of them, one DONE
 *   each, before it returns;
 * - a task whose deadline comes before anything armed is moved in by its
 *   submitter, so it times out on time while the worker is busy;
 * - a max_queued bound closes the inbox: the bound is checked for every
 *   submit after it was set.
 *
 * Plugins: cancel_probe's `hold` keeps the only worker busy; testkit's
 * `noop` is what waits. Threads: cmocka's is the host. */
#include <pthread.h>
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

enum { N = 10 }; /* fewer than APEX__INBOX_BATCH: all stay in the ring */

typedef struct {
  apex_manager_t *m;
  apex_task_t *hold;
  int fds[2];
} scene_t;

static void scene_make(scene_t *sc, apex_manager_config_t *cfg) {
  sc->m = make_test_manager(cfg);
  load_ok(sc->m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  assert_int_equal(pipe(sc->fds), 0);
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", sc->fds[0]);
  sc->hold = submit_json(sc->m, "cancel_probe", "hold", params, NULL);
  AWAIT(apex_task_state(sc->hold) == APEX_TASK_RUNNING, PROMPT_MS);
  /* The worker is in the handler: none idle, so plain submits go to the
   * inbox (the gate reads 0 once its watch and sleep are over). */
  AWAIT(atomic_load(&sc->m->inbox_gate) == 0, PROMPT_MS);
}

static void release_hold(scene_t *sc) {
  assert_int_equal(write(sc->fds[1], "x", 1), 1);
  wait_done(sc->hold);
  apex_task_release(sc->hold);
  close(sc->fds[0]);
  close(sc->fds[1]);
}

/* Under pool_mu, without moving anything in: tasks in the ring. */
static uint64_t in_ring(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  uint64_t n = atomic_load(&m->in_tail) - m->in_head;
  apex__unlock(&m->pool_mu);
  return n;
}

static long queued(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  apex__pool_inbox_drain_locked(m);
  long n = apex__sched_check_locked(m);
  apex__unlock(&m->pool_mu);
  return n;
}

static void test_cancelled_in_the_inbox_leaves_the_queue_and_never_runs(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  scene_t sc;
  scene_make(&sc, &cfg);
  apex_manager_t *m = sc.m;
  uint64_t attempts0 = stats_of(m).attempts;
  apex_task_t *t[N];
  for (int i = 0; i < N; i++) t[i] = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_int_equal(in_ring(m), N);
  /* The cancel moves the ring in and takes its task out in one section. */
  assert_int_equal(apex_task_cancel(t[N / 2], NULL), APEX_OK);
  assert_int_equal(apex_task_state(t[N / 2]), APEX_TASK_CANCELLED);
  assert_int_equal(in_ring(m), 0);
  assert_int_equal(queued(m), N - 1);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.queued, N - 1);
  assert_int_equal(s.cancelled, 1);
  release_hold(&sc);
  for (int i = 0; i < N; i++) wait_done(t[i]);
  for (int i = 0; i < N; i++) {
    assert_int_equal(apex_task_state(t[i]), i == N / 2 ? APEX_TASK_CANCELLED : APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  /* The hold's attempt and N - 1 noops': the cancelled one never started. */
  assert_int_equal(stats_of(m).attempts - attempts0, N - 1); /* counted before */
  assert_int_equal(stats_of(m).submitted, N + 1);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

static int n_done;
static void count_done(const apex_event_t *ev, void *user) {
  (void)user;
  if (ev->type == APEX_EVENT_DONE) __atomic_add_fetch(&n_done, 1, __ATOMIC_RELAXED);
}

typedef struct {
  apex_manager_t *m;
  int rc;
} destroy_arg_t;

static void *destroy_thread(void *v) {
  destroy_arg_t *d = v;
  d->rc = apex_manager_destroy(d->m, 0);
  return NULL;
}

static int all_cancelled(apex_task_t **t) {
  for (int i = 0; i < N; i++)
    if (apex_task_state(t[i]) != APEX_TASK_CANCELLED) return 0;
  return 1;
}

static void test_destroy_ends_every_task_in_the_inbox(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  cfg.on_event = count_done;
  n_done = 0;
  scene_t sc;
  scene_make(&sc, &cfg);
  apex_manager_t *m = sc.m;
  apex_task_t *t[N];
  for (int i = 0; i < N; i++) t[i] = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_int_equal(in_ring(m), N);
  /* The hold ignores its token, so the worker stays in it: the tasks
   * must be found and ended by destroy's sweep itself, not by the worker
   * once the hold returns (released only after they all ended). */
  destroy_arg_t d = {m, -1};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, destroy_thread, &d), 0);
  AWAIT(all_cancelled(t), PROMPT_MS);
  assert_int_equal(write(sc.fds[1], "x", 1), 1);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(d.rc, APEX_OK);
  assert_int_equal(__atomic_load_n(&n_done, __ATOMIC_RELAXED), N + 1);
  for (int i = 0; i < N; i++) apex_task_release(t[i]);
  apex_task_release(sc.hold);
  close(sc.fds[0]);
  close(sc.fds[1]);
}

static void test_an_earlier_deadline_is_linked_by_its_submitter(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  scene_t sc;
  scene_make(&sc, &cfg);
  apex_manager_t *m = sc.m;
  /* A far deadline first (whatever is armed, this one or the hold's),
   * then one 50 ms away: before what is armed, so not left in the ring. */
  apex_submit_opts_t far = opts_timeout(60), near = opts_timeout(0.05);
  apex_task_t *a = submit_json(m, "testkit", "noop", NULL, &far);
  apex_task_t *b = submit_json(m, "testkit", "noop", NULL, &near);
  int64_t t0 = now_ms();
  assert_int_equal(apex_task_wait(b, 2000), APEX_OK);
  assert_int_equal(apex_task_state(b), APEX_TASK_TIMED_OUT);
  assert_true(now_ms() - t0 < 1000); /* the worker is still busy */
  assert_int_equal(apex_task_state(sc.hold), APEX_TASK_RUNNING);
  release_hold(&sc);
  wait_done(a);
  assert_int_equal(apex_task_state(a), APEX_TASK_SUCCEEDED);
  apex_task_release(a);
  apex_task_release(b);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

static void test_a_max_queued_bound_closes_the_inbox(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  scene_t sc;
  scene_make(&sc, &cfg);
  apex_manager_t *m = sc.m;
  apex_task_t *t[N];
  for (int i = 0; i < 3; i++) t[i] = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_int_equal(in_ring(m), 3);
  /* Set with three waiting (the ring is moved in first, so they count). */
  assert_int_equal(apex_manager_set_max_queued(m, APEX_SCOPE_PLUGIN, "testkit", 5, NULL), APEX_OK);
  assert_int_equal(in_ring(m), 0);
  for (int i = 3; i < 5; i++) t[i] = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_int_equal(in_ring(m), 0); /* through pool_mu, where the bound is */
  apex_task_t *x = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_submit(m, "testkit", "noop", NULL, NULL, &x, &err),
                   APEX_E_QUEUE_FULL);
  assert_null(x);
  apex_error_unref(err);
  release_hold(&sc);
  for (int i = 0; i < 5; i++) {
    wait_done(t[i]);
    apex_task_release(t[i]);
  }
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cancelled_in_the_inbox_leaves_the_queue_and_never_runs),
      cmocka_unit_test(test_destroy_ends_every_task_in_the_inbox),
      cmocka_unit_test(test_an_earlier_deadline_is_linked_by_its_submitter),
      cmocka_unit_test(test_a_max_queued_bound_closes_the_inbox),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
