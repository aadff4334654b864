/* Child tasks (apex_ctx_spawn): the roll-up of weights 1, 3 and 6 checked
 * at every delivered update, the cascade of a cancel and of a timeout (every
 * child cancelled with reason "parent", the parent's DONE last), a deferred
 * parent driven by its children's end callbacks, the refused spawns of the
 * issue's "Bad input", and a shutdown with a tree in flight. Plugin:
 * tests/plugins/children_kit.c. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>
#include <pthread.h>

#include "apex/apex.h"
#include "harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/children_kit.so"

typedef struct cev {
  apex_event_type_t type;
  uint64_t id, parent;
  apex_task_state_t state;
  double pct;
  json_t *subs; /* PROGRESS: a copy */
  char msg[160];  /* DONE: the error's message */
} cev_t;

typedef struct crec {
  pthread_mutex_t mu;
  cev_t *ev;
  size_t n, cap;
} crec_t;

static void crec_on_event(const apex_event_t *ev, void *user) {
  crec_t *r = user;
  cev_t e = {.type = ev->type, .id = ev->task_id, .parent = apex_task_parent_id(ev->task),
             .state = ev->state, .pct = -1};
  if (ev->progress) {
    e.pct = apex_progress_percentage(ev->progress);
    e.subs = json_deep_copy(apex_progress_sub_tasks(ev->progress));
  }
  if (ev->error) snprintf(e.msg, sizeof e.msg, "%s", apex_error_message(ev->error));
  pthread_mutex_lock(&r->mu);
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 256;
    r->ev = realloc(r->ev, r->cap * sizeof *r->ev);
    if (!r->ev) abort();
  }
  r->ev[r->n++] = e;
  pthread_mutex_unlock(&r->mu);
}

static void crec_fini(crec_t *r) {
  for (size_t i = 0; i < r->n; i++) json_decref(r->ev[i].subs);
  free(r->ev);
  pthread_mutex_destroy(&r->mu);
}

static size_t count_of(crec_t *r, uint64_t parent, apex_event_type_t type) {
  size_t c = 0;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n; i++)
    if (r->ev[i].parent == parent && r->ev[i].type == type) c++;
  pthread_mutex_unlock(&r->mu);
  return c;
}

static apex_manager_t *make(crec_t *r, unsigned workers) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  apex_manager_config_t cfg = base_config(workers);
  cfg.on_event = crec_on_event;
  cfg.event_user = r;
  cfg.progress_rate_hz = 50;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  return m;
}

static apex_task_t *submit(apex_manager_t *m, const char *action, const char *params,
                           const apex_submit_opts_t *o) {
  json_error_t je;
  json_t *p = params ? json_loads(params, 0, &je) : NULL;
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(m, "children_kit", action, p, o, &t, &err);
  if (rc != APEX_OK) print_error("submit: %s\n", apex_error_message(err));
  apex_error_unref(err);
  json_decref(p);
  assert_int_equal(rc, APEX_OK);
  return t;
}

/* After the parent's DONE was delivered: every child DONE came before it,
 * n children in all, each in state want with msg_has in its message. */
static void check_children_then_parent(crec_t *r, uint64_t pid, size_t n, apex_task_state_t want,
                                       const char *msg_has) {
  pthread_mutex_lock(&r->mu);
  size_t kids = 0, parent_at = SIZE_MAX, last_kid = 0;
  for (size_t i = 0; i < r->n; i++) {
    cev_t *e = &r->ev[i];
    if (e->type != APEX_EVENT_DONE) continue;
    if (e->id == pid) parent_at = i;
    if (e->parent == pid) {
      kids++;
      last_kid = i;
      assert_int_equal(e->state, want);
      if (msg_has && !strstr(e->msg, msg_has)) {
        print_error("child %llu: '%s' (want '%s')\n", (unsigned long long)e->id, e->msg, msg_has);
        fail();
      }
    }
  }
  pthread_mutex_unlock(&r->mu);
  assert_int_equal(kids, n);
  assert_true(parent_at != SIZE_MAX);
  assert_true(last_kid < parent_at);
}

/* Waits until the DONE of task id was delivered. */
static void await_done_event(crec_t *r, uint64_t id) {
  int64_t end = now_ms() + 20000;
  for (;;) {
    int seen = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n && !seen; i++)
      seen = r->ev[i].id == id && r->ev[i].type == APEX_EVENT_DONE;
    pthread_mutex_unlock(&r->mu);
    if (seen) return;
    assert_true(now_ms() < end);
    nap_ms(2);
  }
}

/* Weights 1, 3 and 6: every delivered update of the parent is the
 * weighted sum of the children it lists, at that update. */
static void test_rollup_weights(void **state) {
  (void)state;
  crec_t r;
  apex_manager_t *m = make(&r, 4);
  apex_task_t *t = submit(m, "parent",
                          "{\"weights\": [1, 3, 6], \"child\": {\"steps\": 25, \"step_ms\": 8}}",
                          NULL);
  wait_done(t);
  uint64_t pid = apex_task_id(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_parent_id(t), 0);
  await_done_event(&r, pid);
  size_t checked = 0, mid = 0;
  double last = -1;
  pthread_mutex_lock(&r.mu);
  for (size_t i = 0; i < r.n; i++) {
    cev_t *e = &r.ev[i];
    if (e->id != pid || e->type != APEX_EVENT_PROGRESS) continue;
    size_t k;
    json_t *s;
    double sw = 0, swp = 0;
    assert_int_equal(json_array_size(e->subs), 3);
    json_array_foreach(e->subs, k, s) {
      double w = json_number_value(json_object_get(s, "weight"));
      double p = json_number_value(json_object_get(s, "percentage"));
      /* listing order: running first, so find the weight by label */
      const char *name = json_string_value(json_object_get(s, "name"));
      assert_non_null(name);
      assert_true(name[0] == 'c');
      int idx = name[1] - '0';
      assert_true(w == (idx == 0 ? 1.0 : idx == 1 ? 3.0 : 6.0));
      assert_true(json_integer_value(json_object_get(s, "task")) > 0);
      sw += w;
      swp += w * p;
    }
    assert_true(sw == 10.0);
    double want = swp / sw;
    if (fabs(e->pct - want) > 1e-9) {
      print_error("update %zu: %.12f, want %.12f\n", checked, e->pct, want);
      fail();
    }
    assert_true(e->pct >= last); /* children only move forward */
    last = e->pct;
    if (e->pct > 0 && e->pct < 100) mid++;
    checked++;
  }
  pthread_mutex_unlock(&r.mu);
  assert_true(checked >= 3);
  assert_true(mid >= 1);
  assert_true(last == 100.0);
  check_children_then_parent(&r, pid, 3, APEX_TASK_SUCCEEDED, NULL);
  json_t *res = apex_task_result(t);
  for (size_t i = 0; i < 3; i++)
    assert_int_equal(json_integer_value(json_array_get(json_object_get(res, "codes"), i)), 0);
  json_decref(res);
  apex_task_release(t);
  apex_manager_destroy(m, -1);
  crec_fini(&r);
}

/* A failing child does not fail its parent: the parent reads its outcome. */
static void test_child_failure_is_the_parents_to_read(void **state) {
  (void)state;
  crec_t r;
  apex_manager_t *m = make(&r, 3);
  apex_task_t *t = submit(
      m, "parent",
      "{\"weights\": [1, 1], \"fail_index\": 1, \"child\": {\"steps\": 2, \"step_ms\": 1}}", NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *res = apex_task_result(t);
  json_t *codes = json_object_get(res, "codes");
  assert_int_equal(json_integer_value(json_array_get(codes, 0)), APEX_OK);
  assert_int_equal(json_integer_value(json_array_get(codes, 1)), APEX_E_EXECUTION);
  assert_non_null(strstr(json_string_value(json_array_get(json_object_get(res, "reasons"), 1)),
                         "leaf failed"));
  json_decref(res);
  apex_task_release(t);
  apex_manager_destroy(m, -1);
  crec_fini(&r);
}

static void cascade(int by_timeout, int deferred) {
  crec_t r;
  apex_manager_t *m = make(&r, 4);
  apex_submit_opts_t o = opts_timeout(by_timeout ? 1.0 : 0);
  apex_task_t *t =
      deferred ? submit(m, "dparent", "{\"n\": 3, \"child\": {\"steps\": 100000, \"step_ms\": 10}}",
                        &o)
               : submit(m, "parent",
                        "{\"weights\": [1, 3, 6], \"child\": {\"steps\": 100000, \"step_ms\": 10}}",
                        &o);
  uint64_t pid = apex_task_id(t);
  /* every child running (ATTEMPT events of tasks whose parent is t) */
  AWAIT(count_of(&r, pid, APEX_EVENT_ATTEMPT) == 3, 10000);
  if (!by_timeout) assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  wait_done(t);
  await_done_event(&r, pid);
  assert_int_equal(apex_task_state(t), by_timeout ? APEX_TASK_TIMED_OUT : APEX_TASK_CANCELLED);
  check_children_then_parent(&r, pid, 3, APEX_TASK_CANCELLED, "parent");
  /* Children cancelled near their start leave the parent's bar there: no
   * update of it reads as done. */
  pthread_mutex_lock(&r.mu);
  for (size_t i = 0; i < r.n; i++)
    if (r.ev[i].id == pid && r.ev[i].type == APEX_EVENT_PROGRESS) assert_true(r.ev[i].pct < 50);
  pthread_mutex_unlock(&r.mu);
  apex_task_release(t);
  apex_manager_destroy(m, -1);
  crec_fini(&r);
}

static void test_cancel_cascades(void **state) {
  (void)state;
  cascade(0, 0);
}
static void test_timeout_cascades(void **state) {
  (void)state;
  cascade(1, 0);
}
static void test_cancel_cascades_deferred(void **state) {
  (void)state;
  cascade(0, 1);
}
static void test_timeout_cascades_deferred(void **state) {
  (void)state;
  cascade(1, 1);
}

/* A deferred parent that holds no worker: its children's end callbacks
 * count the outcomes and the last completes it. */
static void test_deferred_parent_callbacks(void **state) {
  (void)state;
  crec_t r;
  apex_manager_t *m = make(&r, 2);
  apex_task_t *t = submit(
      m, "dparent", "{\"n\": 40, \"fail_index\": 7, \"child\": {\"steps\": 2, \"step_ms\": 1}}",
      NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *res = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(res, "ended")), 40);
  assert_int_equal(json_integer_value(json_object_get(res, "failed")), 1);
  json_decref(res);
  uint64_t pid = apex_task_id(t);
  await_done_event(&r, pid);
  pthread_mutex_lock(&r.mu);
  size_t ok = 0, failed = 0, at = 0, last_kid = 0;
  for (size_t i = 0; i < r.n; i++) {
    if (r.ev[i].type != APEX_EVENT_DONE) continue;
    if (r.ev[i].id == pid) at = i;
    if (r.ev[i].parent != pid) continue;
    last_kid = i;
    if (r.ev[i].state == APEX_TASK_SUCCEEDED) ok++;
    if (r.ev[i].state == APEX_TASK_FAILED) failed++;
  }
  pthread_mutex_unlock(&r.mu);
  assert_int_equal(ok, 39);
  assert_int_equal(failed, 1);
  assert_true(last_kid < at);
  apex_task_release(t);
  apex_manager_destroy(m, -1);
  crec_fini(&r);
}

static json_t *run_ok(apex_manager_t *m, const char *action, const char *params) {
  apex_task_t *t = submit(m, action, params, NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *res = apex_task_result(t);
  apex_task_release(t);
  return res;
}

static void test_bad_input(void **state) {
  (void)state;
  crec_t r;
  apex_manager_t *m = make(&r, 4);
  /* keeper: a child handle of another task, alive while its task is held */
  apex_task_t *keeper = submit(m, "keeper", NULL, NULL);
  wait_done(keeper);
  json_t *res = run_ok(m, "bad", NULL);
  const char *keys[] = {"nan", "neg", "inf", "null_plugin", "label", "size", "wait_null",
                        "foreign", "any_empty"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    if (json_integer_value(json_object_get(res, keys[i])) != APEX_E_INVALID) {
      print_error("%s: %lld\n", keys[i], (long long)json_integer_value(json_object_get(res, keys[i])));
      fail();
    }
  }
  assert_int_equal(json_integer_value(json_object_get(res, "no_plugin")), APEX_E_PLUGIN_NOT_FOUND);
  assert_int_equal(json_integer_value(json_object_get(res, "no_action")), APEX_E_ACTION_NOT_FOUND);
  assert_int_equal(json_integer_value(json_object_get(res, "bad_params")), APEX_E_INVALID_PARAMS);
  assert_true(json_is_true(json_object_get(res, "null_out_set")));
  json_decref(res);
  apex_task_release(keeper);

  /* A cycle of spawns: caught at the depth limit. */
  res = run_ok(m, "deep", NULL);
  assert_int_equal(json_integer_value(json_object_get(res, "depth")), APEX_CHILD_MAX_DEPTH);
  assert_int_equal(json_integer_value(json_object_get(res, "code")), APEX_E_INVALID);
  json_decref(res);

  /* After complete: refused as misuse. */
  apex_stats_t before = stats_of(m);
  apex_task_t *t = submit(m, "after", NULL, NULL);
  wait_done(t);
  apex_task_release(t);
  res = run_ok(m, "stats", NULL);
  assert_int_equal(json_integer_value(json_object_get(res, "after_code")), APEX_E_INVALID);
  json_decref(res);
  assert_true(stats_of(m).late_reports > before.late_reports);

  /* From a cancelled task. */
  t = submit(m, "cspawn", NULL, NULL);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, 10000);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  wait_done(t);
  res = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(res, "code")), APEX_E_CANCELLED);
  json_decref(res);
  apex_task_release(t);
  assert_int_equal(apex_task_parent_id(NULL), 0);
  apex_manager_destroy(m, -1);
  crec_fini(&r);
}

/* Destroy with a tree running: everything ends, nothing leaks (ASan). */
static void test_shutdown_with_tree(void **state) {
  (void)state;
  crec_t r;
  apex_manager_t *m = make(&r, 3);
  apex_task_t *a = submit(m, "parent",
                          "{\"weights\": [1, 2], \"child\": {\"steps\": 100000, \"step_ms\": 5}}",
                          NULL);
  apex_task_t *b =
      submit(m, "dparent", "{\"n\": 5, \"child\": {\"steps\": 100000, \"step_ms\": 5}}", NULL);
  /* Some child running (whose depends on which parent spawned first: the
   * first children take the free workers for good). */
  AWAIT(count_of(&r, apex_task_id(a), APEX_EVENT_ATTEMPT) +
                count_of(&r, apex_task_id(b), APEX_EVENT_ATTEMPT) >=
            1,
        10000);
  assert_int_equal(apex_manager_destroy(m, 0), APEX_OK);
  assert_true(apex_task_state_is_terminal(apex_task_state(a)));
  assert_true(apex_task_state_is_terminal(apex_task_state(b)));
  apex_task_release(a);
  apex_task_release(b);
  crec_fini(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rollup_weights),
      cmocka_unit_test(test_child_failure_is_the_parents_to_read),
      cmocka_unit_test(test_cancel_cascades),
      cmocka_unit_test(test_timeout_cascades),
      cmocka_unit_test(test_cancel_cascades_deferred),
      cmocka_unit_test(test_timeout_cascades_deferred),
      cmocka_unit_test(test_deferred_parent_callbacks),
      cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_shutdown_with_tree),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
