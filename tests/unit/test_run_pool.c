/* Run states are kept per manager for reuse (src/exec/internal.h,
 * apex__run_t; a worker keeps those its tasks gave back in a list of its
 * own, task.c, which counts here too): oldest first, none reused before APEX__RUNS_KEEP others
 * ended after it (the window in which a plugin's late ctx call is caught),
 * at most APEX__RUNS_MAX kept, the rest freed, and every one freed with
 * the manager (ASan's leak check sees the last).
 *
 * Reads the manager's list under runs_mu and the workers' counts under
 * pool_mu (internal.h). Plugins: testkit
 * and hostile (flood: one progress report keeps a task's run state
 * attached to it until the task is freed). Threads: cmocka's thread is the
 * host; the put happens on the thread that ends or frees a task, so counts
 * are awaited. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"

/* The manager's list alone: the one APEX__RUNS_MAX caps. */
static uint32_t n_runs_m(apex_manager_t *m) {
  pthread_mutex_lock(&m->runs_mu);
  uint32_t n = m->n_runs;
  pthread_mutex_unlock(&m->runs_mu);
  return n;
}

/* Every kept run state: the manager's and the workers'. */
static uint32_t n_runs(apex_manager_t *m) {
  uint32_t n = n_runs_m(m);
  apex__lock(&m->pool_mu);
  for (apex__worker_t *w = m->workers; w; w = w->next) n += atomic_load(&w->n_runs);
  apex__unlock(&m->pool_mu);
  return n;
}

static apex__run_t *runs_head(apex_manager_t *m) {
  pthread_mutex_lock(&m->runs_mu);
  apex__run_t *r = m->runs_head;
  pthread_mutex_unlock(&m->runs_mu);
  return r;
}

static void run_one(apex_manager_t *m, const char *plugin, const char *action, const char *p) {
  apex_task_t *t = submit_json(m, plugin, action, p, NULL);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
}

static void test_run_state_is_not_reused_before_keep_others_ended(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  for (uint32_t i = 1; i <= 10; i++) {
    run_one(m, "testkit", "noop", NULL);
    AWAIT(n_runs(m) == i, PROMPT_MS); /* each task's went back; none was taken */
  }
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

static void test_run_states_are_capped_and_reused_oldest_first(void **st) {
  (void)st;
  enum { N = APEX__RUNS_MAX + 500 };
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t **t = calloc(N, sizeof *t);
  assert_non_null(t);
  for (int i = 0; i < N; i++) t[i] = submit_json(m, "hostile", "flood", "{\"count\": 1}", NULL);
  for (int i = 0; i < N; i++) assert_int_equal(apex_task_wait(t[i], 60000), APEX_OK);
  /* Each keeps its run state (it reported progress) until it is freed. */
  for (int i = 0; i < N; i++) apex_task_release(t[i]);
  free(t);
  /* Every task freed (the flush list may hold one a moment longer than
   * the host): only the destroyer's reference on m is left. */
  AWAIT(apex__manager_task_refs(m) == 0, 10000);
  /* The 500 oldest were freed (a task freed on a worker leaves its run
   * state in that worker's list, uncapped there and counted apart). */
  assert_int_equal(n_runs_m(m), APEX__RUNS_MAX);
  uint32_t total = n_runs(m);

  /* The next task takes the oldest kept one. */
  apex__run_t *oldest = runs_head(m);
  apex_task_t *probe = submit_json(m, "hostile", "flood", "{\"count\": 1}", NULL);
  assert_int_equal(apex_task_wait(probe, 10000), APEX_OK);
  pthread_mutex_lock(apex__task_mu(probe));
  apex__run_t *r = probe->run;
  pthread_mutex_unlock(apex__task_mu(probe));
  assert_ptr_equal(r, oldest);
  assert_ptr_equal(apex__run_m(r), m);
  assert_int_equal(atomic_load(&r->id), apex_task_id(probe));
  assert_int_equal(n_runs_m(m), APEX__RUNS_MAX - 1);
  apex_task_release(probe);
  AWAIT(apex__manager_task_refs(m) == 0, 10000);
  assert_int_equal(n_runs(m), total); /* back, to m's list or a worker's */
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_run_state_is_not_reused_before_keep_others_ended),
      cmocka_unit_test(test_run_states_are_capped_and_reused_oldest_first),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
