/* The held tasks the ops walk looks at (apex__pool_collect_held_locked,
 * src/exec/pool.c) include an inline start's (APEX_ACTION_F_START_INLINE)
 * from its pick to the end of its start, as they include a worker's
 * popped task in its holding word: between the pick and the attempt's open
 * such a task is in neither the scheduler nor a live list, and without
 * this apex_ops_list and apex_ops_find could miss a live task there.
 * Looked at while pend_kit's gate start runs on another thread (the
 * window itself is inside the submit, with no plugin code in it).
 * Reads the pool's internals. Plugins: pend_kit. Threads: cmocka's is the
 * host; one more submits. */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"

#define PEND_KIT APEX_TEST_PLUGIN_DIR "/pend_kit.so"

static atomic_int g_done;

static void on_event(const apex_event_t *ev, void *user) {
  (void)user;
  if (ev->type == APEX_EVENT_DONE && ev->state == APEX_TASK_CANCELLED) atomic_fetch_add(&g_done, 1);
}

static void *submit_gate(void *arg) {
  return submit_json(arg, "pend_kit", "gate", NULL, NULL);
}

static size_t held(apex_manager_t *m, apex_task_t **v, size_t max) {
  apex__lock(&m->pool_mu);
  size_t n = apex__pool_collect_held_locked(m, v, max);
  apex__unlock(&m->pool_mu);
  return n;
}

static void test_inline_start_is_held_for_the_ops_walk(void **st) {
  (void)st;
  void *dl = dlopen(PEND_KIT, RTLD_NOW);
  assert_non_null(dl);
  atomic_int *in = dlsym(dl, "g_gate_in"), *open = dlsym(dl, "g_gate_open");
  assert_non_null(in);
  assert_non_null(open);
  apex_manager_config_t cfg = base_config(1);
  cfg.on_event = on_event;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, PEND_KIT);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, submit_gate, m), 0);
  AWAIT(atomic_load(in) == 1, PROMPT_MS);
  apex_task_t *v[4];
  size_t n = held(m, v, 4);
  atomic_store(open, 1);
  void *r = NULL;
  assert_int_equal(pthread_join(th, &r), 0);
  apex_task_t *t = r;
  assert_non_null(t);
  assert_int_equal(n, 1);
  assert_ptr_equal(v[0], t);
  apex__task_unref(v[0]);
  /* Its start over: no longer held (the only worker is idle). */
  assert_int_equal(held(m, v, 4), 0);
  assert_int_equal(apex_task_state(t), APEX_TASK_RUNNING);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  AWAIT(atomic_load(&g_done) == 1, 10 * PROMPT_MS);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  dlclose(dl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_inline_start_is_held_for_the_ops_walk),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
