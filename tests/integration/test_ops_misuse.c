/* Bad input to operation groups and the operation manager: NULLs, a group
 * used after release, a group of another manager in a filter, filters with
 * states no live operation has or a bad struct_size, reserved cancel
 * reasons, ids never given, a blocking group wait on Apex's runtime
 * thread, a failed submit into a group. Each is a clear error, with no
 * crash and (under ASan) no leak.
 *
 * Plugin: ops_kit (tests/plugins/ops_kit.c). Threads: cmocka's thread is
 * the host; one test calls from a LOOP-mode event callback (Apex's
 * runtime thread). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "harness.h"

static apex_manager_t *make(void) {
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/ops_kit.so");
  return m;
}

static void test_nulls(void **state) {
  (void)state;
  apex_manager_t *m = make();
  apex_group_t *g = NULL;
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_group_new(NULL, &g), APEX_E_INVALID);
  assert_null(g);
  assert_int_equal(apex_group_new(m, NULL), APEX_E_INVALID);
  assert_int_equal(apex_group_submit(NULL, "ops_kit", "quick", NULL, NULL, &t, &err),
                   APEX_E_INVALID);
  assert_null(t);
  assert_non_null(strstr(apex_error_message(err), "NULL"));
  apex_error_unref(err);
  assert_int_equal(apex_group_id(NULL), 0);
  assert_int_equal(apex_group_size(NULL), 0);
  assert_null(apex_group_task(NULL, 0));
  assert_int_equal(apex_group_wait_any(NULL, 0, &t), APEX_E_INVALID);
  assert_int_equal(apex_group_wait_all(NULL, 0), APEX_E_INVALID);
  assert_int_equal(apex_group_cancel(NULL, NULL, NULL), APEX_E_INVALID);
  apex_group_stats_t s = APEX_GROUP_STATS_INIT;
  assert_int_equal(apex_group_stats(NULL, &s), APEX_E_INVALID);
  assert_null(apex_group_results(NULL));
  assert_int_equal(apex_group_release(NULL), APEX_OK);

  assert_int_equal(apex_group_new(m, &g), APEX_OK);
  /* NULL names, out and stats: refused, the group unchanged. */
  assert_int_equal(apex_group_submit(g, NULL, "quick", NULL, NULL, &t, NULL), APEX_E_INVALID);
  assert_int_equal(apex_group_submit(g, "ops_kit", NULL, NULL, NULL, &t, NULL), APEX_E_INVALID);
  assert_int_equal(apex_group_submit(g, "nope", "quick", NULL, NULL, &t, NULL),
                   APEX_E_PLUGIN_NOT_FOUND);
  json_t *three = json_integer(3);
  assert_int_equal(apex_group_submit(g, "ops_kit", "quick", three, NULL, &t, NULL),
                   APEX_E_INVALID_PARAMS);
  json_decref(three);
  assert_int_equal(apex_group_size(g), 0);
  assert_int_equal(apex_group_wait_all(g, 0), APEX_OK); /* failed submits are no members */
  assert_int_equal(apex_group_wait_any(g, 0, &t), APEX_E_ALREADY);
  assert_int_equal(apex_group_wait_any(g, 0, NULL), APEX_E_INVALID);
  assert_int_equal(apex_group_stats(g, NULL), APEX_E_INVALID);
  s.struct_size = 3;
  assert_int_equal(apex_group_stats(g, &s), APEX_E_INVALID);
  /* A newer caller's larger struct: filled up to this library's size, the
   * rest left alone, struct_size saying how much. */
  struct {
    apex_group_stats_t s;
    uint64_t newer;
  } big = {{.struct_size = sizeof big}, 77};
  assert_int_equal(apex_group_stats(g, &big.s), APEX_OK);
  assert_int_equal(big.s.struct_size, sizeof(apex_group_stats_t));
  assert_int_equal(big.newer, 77);
  assert_int_equal(apex_group_cancel(g, "shutdown", NULL), APEX_E_INVALID);
  assert_int_equal(apex_group_release(g), APEX_OK);

  apex_op_list_t *l = NULL;
  assert_int_equal(apex_ops_list(NULL, NULL, &l), APEX_E_INVALID);
  assert_int_equal(apex_ops_list(m, NULL, NULL), APEX_E_INVALID);
  assert_int_equal(apex_op_list_count(NULL), 0);
  assert_null(apex_op_list_at(NULL, 0));
  apex_op_list_free(NULL);
  assert_int_equal(apex_ops_find(NULL, 1, &t), APEX_E_INVALID);
  assert_int_equal(apex_ops_find(m, 1, NULL), APEX_E_INVALID);
  assert_int_equal(apex_ops_find(m, 0, &t), APEX_E_INVALID);
  assert_int_equal(apex_ops_find(m, 1u << 30, &t), APEX_E_INVALID); /* never given */
  assert_null(t);
  assert_int_equal(apex_ops_cancel_id(NULL, 1, NULL), APEX_E_INVALID);
  assert_int_equal(apex_ops_cancel(NULL, NULL, NULL, NULL), APEX_E_INVALID);
  assert_int_equal(apex_ops_cancel(m, NULL, "timeout", NULL), APEX_E_INVALID);
  assert_int_equal(apex_ops_cancel_id(m, 1, "parent"), APEX_E_INVALID);
  assert_null(apex_ops_snapshot(NULL, NULL));
  assert_int_equal(apex_manager_execute_all(NULL, NULL, 0, 0, NULL, NULL), APEX_E_INVALID);
  json_t *res = NULL;
  assert_int_equal(apex_manager_execute_all(m, NULL, 1, 0, &res, NULL), APEX_E_INVALID);
  assert_int_equal(apex_manager_execute_all(m, NULL, 0, 0, &res, NULL), APEX_OK);
  assert_int_equal(json_array_size(res), 0);
  json_decref(res);

  /* An id that ended. */
  apex_task_t *q = submit_json(m, "ops_kit", "quick", NULL, NULL);
  wait_done(q);
  assert_int_equal(apex_ops_find(m, apex_task_id(q), &t), APEX_E_ALREADY);
  assert_null(t);
  apex_task_release(q);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
}

/* A released group: every call refused, nothing read from it. */
static void test_after_release(void **state) {
  (void)state;
  apex_manager_t *m = make();
  apex_group_t *g = NULL, *live = NULL;
  assert_int_equal(apex_group_new(m, &g), APEX_OK);
  assert_int_equal(apex_group_new(m, &live), APEX_OK); /* keeps its own memory in use */
  apex_task_t *p = NULL;
  assert_int_equal(apex_group_submit(g, "ops_kit", "park", NULL, NULL, &p, NULL), APEX_OK);
  assert_int_equal(apex_group_release(g), APEX_OK);
  /* Its member runs on (release does not cancel). */
  assert_false(apex_task_state_is_terminal(apex_task_state(p)));
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_group_submit(g, "ops_kit", "quick", NULL, NULL, &t, &err),
                   APEX_E_INVALID);
  assert_non_null(strstr(apex_error_message(err), "released"));
  apex_error_unref(err);
  assert_null(t);
  assert_int_equal(apex_group_id(g), 0);
  assert_int_equal(apex_group_size(g), 0);
  assert_null(apex_group_task(g, 0));
  assert_int_equal(apex_group_wait_any(g, 0, &t), APEX_E_INVALID);
  assert_int_equal(apex_group_wait_all(g, 0), APEX_E_INVALID);
  assert_int_equal(apex_group_cancel(g, NULL, NULL), APEX_E_INVALID);
  apex_group_stats_t s = APEX_GROUP_STATS_INIT;
  assert_int_equal(apex_group_stats(g, &s), APEX_E_INVALID);
  assert_null(apex_group_results(g));
  assert_int_equal(apex_group_release(g), APEX_E_INVALID); /* twice */
  apex_ops_filter_t f = APEX_OPS_FILTER_INIT;
  f.group = g;
  apex_op_list_t *l = NULL;
  assert_int_equal(apex_ops_list(m, &f, &l), APEX_E_INVALID);
  assert_null(l);
  /* Not a group at all (an address no group has). */
  int not_a_group;
  assert_int_equal(apex_group_wait_all((apex_group_t *)(void *)&not_a_group, 0), APEX_E_INVALID);
  assert_int_equal(apex_group_release((apex_group_t *)(void *)&not_a_group), APEX_E_INVALID);

  assert_int_equal(apex_task_cancel(p, NULL), APEX_OK);
  wait_done(p);
  apex_task_release(p);
  assert_int_equal(apex_group_release(live), APEX_OK);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
}

/* Filters: states no live operation has, unknown bits, a bad size, a group
 * of another manager. */
static void test_bad_filters(void **state) {
  (void)state;
  apex_manager_t *m = make(), *m2 = make();
  apex_group_t *g2 = NULL;
  assert_int_equal(apex_group_new(m2, &g2), APEX_OK);
  apex_op_list_t *l = NULL;
  size_t n = 99;
  apex_ops_filter_t f = APEX_OPS_FILTER_INIT;
  f.group = g2;
  assert_int_equal(apex_ops_list(m, &f, &l), APEX_E_INVALID);
  assert_int_equal(apex_ops_cancel(m, &f, NULL, &n), APEX_E_INVALID);
  assert_int_equal(n, 0);
  assert_null(apex_ops_snapshot(m, &f));
  f.group = NULL;
  f.states = APEX_OPS_STATE(APEX_TASK_SUCCEEDED); /* terminal: never live */
  assert_int_equal(apex_ops_list(m, &f, &l), APEX_E_INVALID);
  f.states = 1u << 20; /* no such state */
  assert_int_equal(apex_ops_list(m, &f, &l), APEX_E_INVALID);
  f.states = APEX_OPS_STATE(APEX_TASK_SCHEDULED) | APEX_OPS_STATE(APEX_TASK_RETRY_WAIT);
  assert_int_equal(apex_ops_list(m, &f, &l), APEX_OK);
  apex_op_list_free(l);
  f.states = 0;
  f.struct_size = 2;
  assert_int_equal(apex_ops_list(m, &f, &l), APEX_E_INVALID);
  f.struct_size = 100000;
  assert_int_equal(apex_ops_list(m, &f, &l), APEX_E_INVALID);
  /* A newer caller's field this library does not know, set: refused. */
  struct {
    apex_ops_filter_t f;
    uint64_t newer;
  } big = {{.struct_size = sizeof big}, 1};
  assert_int_equal(apex_ops_list(m, &big.f, &l), APEX_E_INVALID);
  big.newer = 0;
  assert_int_equal(apex_ops_list(m, &big.f, &l), APEX_OK);
  apex_op_list_free(l);
  assert_int_equal(apex_group_release(g2), APEX_OK);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
  assert_int_equal(apex_manager_destroy(m2, 1000), APEX_OK);
}

/* Group waits on Apex's runtime thread (a LOOP callback) are refused;
 * checks that return at once are not. */
typedef struct cb {
  apex_manager_t *m;
  apex_group_t *g;
  _Atomic int any_rc, all_rc, exec_rc, seen;
} cb_t;

static void on_event(const apex_event_t *ev, void *user) {
  cb_t *c = user;
  if (ev->type != APEX_EVENT_DONE || atomic_load(&c->seen)) return;
  apex_task_t *t = NULL;
  atomic_store(&c->any_rc, apex_group_wait_any(c->g, 1000, &t));
  apex_task_release(t);
  atomic_store(&c->all_rc, apex_group_wait_all(c->g, 1000));
  json_t *res = NULL;
  atomic_store(&c->exec_rc, apex_manager_execute_all(c->m, NULL, 0, 0, &res, NULL));
  json_decref(res);
  atomic_store(&c->seen, 1);
}

static void test_runtime_thread(void **state) {
  (void)state;
  cb_t c = {0};
  apex_manager_config_t cfg = base_config(2);
  cfg.on_event = on_event;
  cfg.event_user = &c;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/ops_kit.so");
  c.m = m;
  assert_int_equal(apex_group_new(m, &c.g), APEX_OK);
  apex_task_t *t = NULL;
  assert_int_equal(apex_group_submit(c.g, "ops_kit", "quick", NULL, NULL, &t, NULL), APEX_OK);
  AWAIT(atomic_load(&c.seen), PROMPT_MS);
  assert_int_equal(atomic_load(&c.any_rc), APEX_E_INVALID);
  assert_int_equal(atomic_load(&c.all_rc), APEX_E_INVALID);
  assert_int_equal(atomic_load(&c.exec_rc), APEX_E_INVALID);
  /* From the host's thread the same calls work. */
  apex_task_t *first = NULL;
  assert_int_equal(apex_group_wait_any(c.g, 10000, &first), APEX_OK);
  assert_ptr_equal(first, t);
  apex_task_release(first);
  apex_task_release(t);
  assert_int_equal(apex_group_release(c.g), APEX_OK);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
}

/* A group outlives its manager: released after destroy, with its members
 * still held; submitting into it then is refused. */
static void test_group_after_destroy(void **state) {
  (void)state;
  apex_manager_t *m = make();
  apex_group_t *g = NULL;
  assert_int_equal(apex_group_new(m, &g), APEX_OK);
  assert_int_equal(apex_group_submit(g, "ops_kit", "park", NULL, NULL, NULL, NULL), APEX_OK);
  assert_int_equal(apex_group_submit(g, "ops_kit", "quick", NULL, NULL, NULL, NULL), APEX_OK);
  assert_int_equal(apex_manager_destroy(m, 0), APEX_OK);
  assert_int_equal(apex_group_wait_all(g, 0), APEX_OK);
  apex_group_stats_t s = APEX_GROUP_STATS_INIT;
  assert_int_equal(apex_group_stats(g, &s), APEX_OK);
  assert_int_equal(s.total, 2);
  assert_int_equal(s.cancelled + s.succeeded, 2);
  apex_error_t *err = NULL;
  assert_int_equal(apex_group_submit(g, "ops_kit", "quick", NULL, NULL, NULL, &err),
                   APEX_E_SHUTTING_DOWN);
  apex_error_unref(err);
  assert_int_equal(apex_group_release(g), APEX_OK); /* frees the manager's memory */
}

/* Release from one thread while another waits on the group and a third
 * submits into it: the waiter returns APEX_E_INVALID, the submits either
 * make members (which run on) or are refused, nothing leaks. */
typedef struct racer {
  apex_group_t *g;
  _Atomic int wait_rc, submitted, refused, started;
} racer_t;

static void *waiter(void *arg) {
  racer_t *r = arg;
  atomic_store(&r->started, 1);
  atomic_store(&r->wait_rc, apex_group_wait_all(r->g, 20000));
  return NULL;
}

static void *feeder(void *arg) {
  racer_t *r = arg;
  for (int i = 0; i < 200; i++) {
    apex_status_t rc = apex_group_submit(r->g, "ops_kit", "quick", NULL, NULL, NULL, NULL);
    if (rc == APEX_OK)
      atomic_fetch_add(&r->submitted, 1);
    else if (rc == APEX_E_INVALID)
      atomic_fetch_add(&r->refused, 1);
  }
  return NULL;
}

static void test_release_races(void **state) {
  (void)state;
  apex_manager_t *m = make();
  racer_t r = {0};
  atomic_store(&r.wait_rc, 1);
  assert_int_equal(apex_group_new(m, &r.g), APEX_OK);
  apex_task_t *p = NULL;
  assert_int_equal(apex_group_submit(r.g, "ops_kit", "park", NULL, NULL, &p, NULL), APEX_OK);
  /* Running before the release, so that it still runs after says release
   * cancelled nothing (under TSan on a loaded machine it was once still
   * queued when the release came). */
  AWAIT(apex_task_state(p) == APEX_TASK_RUNNING, PROMPT_MS);
  pthread_t w, f;
  assert_int_equal(pthread_create(&w, NULL, waiter, &r), 0);
  assert_int_equal(pthread_create(&f, NULL, feeder, &r), 0);
  AWAIT(atomic_load(&r.started) && atomic_load(&r.submitted) > 0, PROMPT_MS);
  assert_int_equal(apex_group_release(r.g), APEX_OK);
  pthread_join(w, NULL);
  pthread_join(f, NULL);
  assert_int_equal(atomic_load(&r.wait_rc), APEX_E_INVALID); /* the park never ends by itself */
  assert_int_equal(atomic_load(&r.submitted) + atomic_load(&r.refused), 200);
  assert_int_equal(apex_task_state(p), APEX_TASK_RUNNING); /* release cancels nothing */
  assert_int_equal(apex_task_cancel(p, NULL), APEX_OK);
  wait_done(p);
  apex_task_release(p);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_nulls),
      cmocka_unit_test(test_after_release),
      cmocka_unit_test(test_bad_filters),
      cmocka_unit_test(test_runtime_thread),
      cmocka_unit_test(test_group_after_destroy),
      cmocka_unit_test(test_release_races),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
