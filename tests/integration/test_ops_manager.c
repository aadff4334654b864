/* The operation manager (apex_ops_*, include/apex/apex.h): listing live
 * operations with their state, attempt, progress, age and group, filtered
 * by state, plugin, action and group; finding one by id; cancelling by id
 * and by filter; the JSON snapshot; and all of it racing submits and
 * completions on other threads (run under TSan by make test-tsan).
 *
 * Plugins: ops_kit (tests/plugins/ops_kit.c: `quick`, and `park`, pending
 * until cancelled) and shutdown_kit (`coop_sleep`, to hold a worker).
 *
 * Threads: cmocka's thread is the host; the race test adds submitter,
 * lister and canceller threads. Conditions are awaited, never slept for. */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "harness.h"

static apex_manager_t *make(unsigned workers) {
  apex_manager_config_t cfg = base_config(workers);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/ops_kit.so");
  load_ok(m, APEX_TEST_PLUGIN_DIR "/shutdown_kit.so");
  return m;
}

static apex_task_t *gsubmit(apex_group_t *g, const char *action, const char *params_json,
                            const apex_submit_opts_t *o) {
  json_t *p = params_json ? json_loads(params_json, 0, NULL) : NULL;
  apex_task_t *t = NULL;
  assert_int_equal(apex_group_submit(g, "ops_kit", action, p, o, &t, NULL), APEX_OK);
  json_decref(p);
  return t;
}

static size_t count(apex_manager_t *m, const apex_ops_filter_t *f) {
  apex_op_list_t *l = NULL;
  assert_int_equal(apex_ops_list(m, f, &l), APEX_OK);
  size_t n = apex_op_list_count(l);
  apex_op_list_free(l);
  return n;
}

static void test_list_filter_find_cancel(void **state) {
  (void)state;
  apex_manager_t *m = make(2);
  apex_group_t *g = NULL;
  assert_int_equal(apex_group_new(m, &g), APEX_OK);
  apex_task_t *in[5], *out[3];
  for (int i = 0; i < 5; i++) in[i] = gsubmit(g, "park", "{\"pct\": 25, \"msg\": \"a\"}", NULL);
  apex_submit_opts_t timed = opts_timeout(100), none = opts_timeout(APEX_TIMEOUT_NONE);
  for (int i = 0; i < 3; i++)
    out[i] = submit_json(m, "ops_kit", "park", NULL, i == 0 ? &timed : &none);
  AWAIT(stats_of(m).running == 8, PROMPT_MS);

  assert_int_equal(count(m, NULL), 8);
  apex_ops_filter_t f = APEX_OPS_FILTER_INIT;
  f.group = g;
  assert_int_equal(count(m, &f), 5);
  f.states = APEX_OPS_STATE(APEX_TASK_QUEUED);
  assert_int_equal(count(m, &f), 0);
  f.states = APEX_OPS_STATE(APEX_TASK_RUNNING) | APEX_OPS_STATE(APEX_TASK_QUEUED);
  assert_int_equal(count(m, &f), 5);
  apex_ops_filter_t fp = APEX_OPS_FILTER_INIT;
  fp.plugin = "nope";
  assert_int_equal(count(m, &fp), 0);
  fp.plugin = "ops_kit";
  fp.action = "park";
  assert_int_equal(count(m, &fp), 8);
  fp.action = "quick";
  assert_int_equal(count(m, &fp), 0);

  /* What an entry shows. */
  apex_op_list_t *l = NULL;
  assert_int_equal(apex_ops_list(m, NULL, &l), APEX_OK);
  uint64_t prev = 0;
  for (size_t i = 0; i < apex_op_list_count(l); i++) {
    const apex_op_info_t *o = apex_op_list_at(l, i);
    assert_true(o->id > prev); /* id order */
    prev = o->id;
    assert_int_equal(o->struct_size, sizeof(apex_op_info_t));
    assert_string_equal(o->plugin, "ops_kit");
    assert_string_equal(o->action, "park");
    assert_int_equal(o->state, APEX_TASK_RUNNING);
    assert_int_equal(o->attempt, 1);
    int grouped = o->id <= apex_task_id(in[4]);
    if (grouped) {
      assert_int_equal(o->group, apex_group_id(g));
      assert_true(o->percentage == 25.0);
      assert_string_equal(o->message, "a");
      assert_true(o->age_s >= 0 && o->age_s < 60);
    } else {
      assert_int_equal(o->group, 0);
      assert_true(o->percentage == -1.0);
      assert_string_equal(o->message, "");
      assert_true(o->age_s >= 0 && o->age_s < 60); /* with a deadline or none */
    }
  }
  assert_null(apex_op_list_at(l, apex_op_list_count(l)));
  apex_op_list_free(l);

  /* Find: a new handle on the same task. */
  apex_task_t *t = NULL;
  assert_int_equal(apex_ops_find(m, apex_task_id(out[1]), &t), APEX_OK);
  assert_ptr_equal(t, out[1]);
  apex_task_release(t);

  /* The snapshot. */
  json_t *snap = apex_ops_snapshot(m, &f);
  assert_non_null(snap);
  assert_int_equal(json_integer_value(json_object_get(snap, "live")), 5);
  assert_int_equal(json_array_size(json_object_get(snap, "operations")), 5);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(snap, "counts"), "running")),
                   5);
  json_t *op0 = json_array_get(json_object_get(snap, "operations"), 0);
  assert_int_equal(json_integer_value(json_object_get(op0, "id")), apex_task_id(in[0]));
  assert_string_equal(json_string_value(json_object_get(op0, "state")), "running");
  assert_true(json_real_value(json_object_get(op0, "percentage")) == 25.0);
  assert_int_equal(json_integer_value(json_object_get(op0, "group")), apex_group_id(g));
  json_decref(snap);

  /* Cancel by id, then by filter (the group: 4 left of 5). */
  assert_int_equal(apex_ops_cancel_id(m, apex_task_id(in[2]), "by id"), APEX_OK);
  wait_done(in[2]);
  assert_int_equal(apex_task_state(in[2]), APEX_TASK_CANCELLED);
  assert_int_equal(apex_ops_find(m, apex_task_id(in[2]), &t), APEX_E_ALREADY);
  assert_null(t);
  assert_int_equal(apex_ops_cancel_id(m, apex_task_id(in[2]), NULL), APEX_E_ALREADY);
  size_t n = 0;
  f.states = 0;
  assert_int_equal(apex_ops_cancel(m, &f, "by group", &n), APEX_OK);
  assert_int_equal(n, 4);
  assert_int_equal(apex_group_wait_all(g, 20000), APEX_OK);
  assert_int_equal(count(m, NULL), 3);
  assert_int_equal(apex_ops_cancel(m, NULL, NULL, &n), APEX_OK);
  assert_int_equal(n, 3);
  for (int i = 0; i < 3; i++) {
    wait_done(out[i]);
    assert_int_equal(apex_task_state(out[i]), APEX_TASK_CANCELLED);
    apex_task_release(out[i]);
  }
  for (int i = 0; i < 5; i++) apex_task_release(in[i]);
  assert_int_equal(count(m, NULL), 0);
  assert_int_equal(apex_group_release(g), APEX_OK);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
}

/* Queued operations: found in the run queue, cancelled there at once. */
static void test_queued(void **state) {
  (void)state;
  apex_manager_t *m = make(1);
  apex_task_t *hold = submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 60000}", NULL);
  AWAIT(stats_of(m).running == 1, PROMPT_MS);
  apex_task_t *q[3];
  for (int i = 0; i < 3; i++) q[i] = submit_json(m, "ops_kit", "quick", NULL, NULL);
  apex_ops_filter_t f = APEX_OPS_FILTER_INIT;
  f.states = APEX_OPS_STATE(APEX_TASK_QUEUED);
  assert_int_equal(count(m, &f), 3);
  f.states = APEX_OPS_STATE(APEX_TASK_RUNNING);
  assert_int_equal(count(m, &f), 1);
  apex_task_t *t = NULL;
  assert_int_equal(apex_ops_find(m, apex_task_id(q[1]), &t), APEX_OK);
  assert_ptr_equal(t, q[1]);
  apex_task_release(t);
  assert_int_equal(apex_ops_cancel_id(m, apex_task_id(q[1]), NULL), APEX_OK);
  assert_int_equal(apex_task_state(q[1]), APEX_TASK_CANCELLED); /* at once: it was queued */
  f.states = APEX_OPS_STATE(APEX_TASK_QUEUED);
  assert_int_equal(count(m, &f), 2);
  /* A task scheduled for later (the scheduler's start heap). */
  apex_submit_opts_t later;
  apex_submit_opts_init(&later);
  later.run_after_s = 3600;
  apex_task_t *sch = submit_json(m, "ops_kit", "quick", NULL, &later);
  assert_int_equal(apex_task_state(sch), APEX_TASK_SCHEDULED);
  f.states = APEX_OPS_STATE(APEX_TASK_SCHEDULED);
  apex_op_list_t *l = NULL;
  assert_int_equal(apex_ops_list(m, &f, &l), APEX_OK);
  assert_int_equal(apex_op_list_count(l), 1);
  assert_int_equal(apex_op_list_at(l, 0)->id, apex_task_id(sch));
  assert_true(apex_op_list_at(l, 0)->age_s >= 0);
  apex_op_list_free(l);
  assert_int_equal(count(m, NULL), 4); /* hold, two queued, the scheduled one */
  assert_int_equal(apex_ops_cancel(m, &f, NULL, NULL), APEX_OK);
  assert_int_equal(apex_task_state(sch), APEX_TASK_CANCELLED); /* at once: it waited */
  apex_task_release(sch);
  assert_int_equal(apex_task_cancel(hold, NULL), APEX_OK);
  for (int i = 0; i < 3; i++) {
    wait_done(q[i]);
    apex_task_release(q[i]);
  }
  wait_done(hold);
  apex_task_release(hold);
  assert_int_equal(count(m, NULL), 0);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
}

/* Listing, finding and cancelling by filter while other threads submit
 * and tasks complete. Every park is cancelled exactly once in all. */
enum { SUBMITTERS = 2, PER = 300 };

typedef struct race {
  apex_manager_t *m;
  _Atomic int stop;
  _Atomic size_t cancelled; /* by the canceller's filter */
  _Atomic size_t listed, found, bad;
} race_t;

static void *submitter(void *arg) {
  race_t *r = arg;
  for (int i = 0; i < PER; i++) {
    const char *acts[2] = {"park", "quick"};
    for (int k = 0; k < 2; k++) {
      apex_task_t *t = NULL;
      if (apex_manager_submit(r->m, "ops_kit", acts[k], NULL, NULL, &t, NULL) != APEX_OK)
        atomic_fetch_add(&r->bad, 1);
      apex_task_release(t);
    }
  }
  return NULL;
}

static void *lister(void *arg) {
  race_t *r = arg;
  while (!atomic_load(&r->stop)) {
    apex_op_list_t *l = NULL;
    if (apex_ops_list(r->m, NULL, &l) != APEX_OK) {
      atomic_fetch_add(&r->bad, 1);
      continue;
    }
    for (size_t i = 0; i < apex_op_list_count(l); i++) {
      const apex_op_info_t *o = apex_op_list_at(l, i);
      if (apex_task_state_is_terminal(o->state)) atomic_fetch_add(&r->bad, 1);
      apex_task_t *t = NULL;
      int rc = apex_ops_find(r->m, o->id, &t);
      if (rc == APEX_OK) {
        atomic_fetch_add(&r->found, 1);
        if (apex_task_id(t) != o->id) atomic_fetch_add(&r->bad, 1);
        apex_task_release(t);
      } else if (rc != APEX_E_ALREADY) {
        atomic_fetch_add(&r->bad, 1);
      }
    }
    atomic_fetch_add(&r->listed, apex_op_list_count(l));
    apex_op_list_free(l);
    json_decref(apex_ops_snapshot(r->m, NULL));
  }
  return NULL;
}

static void *canceller(void *arg) {
  race_t *r = arg;
  apex_ops_filter_t f = APEX_OPS_FILTER_INIT;
  f.action = "park";
  while (!atomic_load(&r->stop)) {
    size_t n = 0;
    if (apex_ops_cancel(r->m, &f, NULL, &n) != APEX_OK) atomic_fetch_add(&r->bad, 1);
    atomic_fetch_add(&r->cancelled, n);
  }
  return NULL;
}

static void test_race(void **state) {
  (void)state;
  race_t r = {.m = make(2)};
  pthread_t sub[SUBMITTERS], ls, cn;
  assert_int_equal(pthread_create(&ls, NULL, lister, &r), 0);
  assert_int_equal(pthread_create(&cn, NULL, canceller, &r), 0);
  for (int i = 0; i < SUBMITTERS; i++)
    assert_int_equal(pthread_create(&sub[i], NULL, submitter, &r), 0);
  for (int i = 0; i < SUBMITTERS; i++) pthread_join(sub[i], NULL);
  atomic_store(&r.stop, 1);
  pthread_join(ls, NULL);
  pthread_join(cn, NULL);
  /* What the canceller missed (submitted after its last pass). */
  apex_ops_filter_t f = APEX_OPS_FILTER_INIT;
  f.action = "park";
  AWAIT(stats_of(r.m).succeeded == SUBMITTERS * PER, 20000);
  for (int64_t end = now_ms() + 20000; now_ms() < end;) {
    size_t n = 0;
    assert_int_equal(apex_ops_cancel(r.m, &f, NULL, &n), APEX_OK);
    r.cancelled += n;
    if (stats_of(r.m).cancelled == SUBMITTERS * PER) break;
  }
  apex_stats_t s = stats_of(r.m);
  assert_int_equal(s.cancelled, SUBMITTERS * PER);
  assert_int_equal(s.succeeded, SUBMITTERS * PER);
  assert_int_equal(r.cancelled, SUBMITTERS * PER); /* each park's cancel took once */
  assert_int_equal(r.bad, 0);
  assert_int_equal(count(r.m, NULL), 0);
  assert_int_equal(apex_manager_destroy(r.m, 1000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_list_filter_find_cancel),
      cmocka_unit_test(test_queued),
      cmocka_unit_test(test_race),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
