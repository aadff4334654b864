/* Wide fan-outs of small children (plugin tests/plugins/spawn_kit.c): a
 * child that succeeded with no result is let go by its parent's family
 * (its task freed while the family lives on, ops/children.c), and its node
 * still answers for it: outcome, state, task id, its name and state in the
 * parent's roll-up; beside it, a child with a result and a failed one keep
 * theirs. Once after a wait for every child, once with the parent polling
 * the outcomes while the children end (the race of a read with the let
 * go: ASan and TSan runs catch a read of a freed task).
 *
 * And the tokens of children that never asked for one (they carry their
 * family's shared token): a cancel of one child, by apex_task_cancel or
 * through its apex_task_token, reaches that child alone; a cancel of the
 * parent reaches every child, running ones with the reason "parent" and
 * queued ones at once, never started; a parent's retry under a new
 * attempt token spawns children that are not born cancelled. */
#include <pthread.h>
#include <string.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/spawn_kit.so"

static apex_manager_t *make(unsigned workers) {
  apex_manager_config_t cfg = base_config(workers);
  cfg.progress_rate_hz = 50;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  return m;
}

/* n children, the one at 7 with a result, the one at 13 failing. */
static void fan_and_check(int poll) {
  enum { N = 300, VAL_AT = 7, BAD_AT = 13 };
  apex_manager_t *m = make(3);
  char params[128];
  snprintf(params, sizeof params, "{\"n\": %d, \"val_at\": %d, \"bad_at\": %d, \"poll\": %d}", N,
           VAL_AT, BAD_AT, poll);
  apex_task_t *t = submit_json(m, "spawn_kit", "fan", params, NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *res = apex_task_result(t);
  assert_non_null(res);
  json_t *codes = json_object_get(res, "codes"), *states = json_object_get(res, "states");
  assert_int_equal(json_array_size(codes), N);
  assert_int_equal(json_array_size(states), N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(json_integer_value(json_array_get(codes, (size_t)i)),
                     i == BAD_AT ? APEX_E_EXECUTION : APEX_OK);
    assert_int_equal(json_integer_value(json_array_get(states, (size_t)i)),
                     i == BAD_AT ? APEX_TASK_FAILED : APEX_TASK_SUCCEEDED);
  }
  assert_int_equal(json_integer_value(json_object_get(res, "nulls")), N - 2);
  assert_int_equal(json_integer_value(json_object_get(res, "val")), VAL_AT);
  assert_int_equal(json_integer_value(json_object_get(res, "ids")), N);
  json_decref(res);

  /* The roll-up at the parent's end: every child counted, and the listed
   * ones named and in their final state, let go or not. */
  apex_progress_t *p = apex_task_progress(t);
  assert_non_null(p);
  json_t *kids = json_object_get(apex_progress_details(p), "children");
  assert_int_equal(json_integer_value(json_object_get(kids, "total")), N);
  assert_int_equal(json_integer_value(json_object_get(kids, "succeeded")), N - 1);
  assert_int_equal(json_integer_value(json_object_get(kids, "failed")), 1);
  const json_t *subs = apex_progress_sub_tasks(p);
  assert_int_equal(json_array_size(subs), 64);
  size_t i;
  json_t *s;
  int seen_val = 0, seen_bad = 0;
  json_array_foreach((json_t *)subs, i, s) {
    const char *action = json_string_value(json_object_get(s, "action"));
    const char *status = json_string_value(json_object_get(s, "status"));
    assert_non_null(action);
    assert_non_null(status);
    if (strcmp(action, "spawn_kit.bad") == 0) {
      seen_bad = 1;
      assert_string_equal(status, "failed");
    } else {
      if (strcmp(action, "spawn_kit.val") == 0)
        seen_val = 1;
      else
        assert_string_equal(action, "spawn_kit.nil");
      assert_string_equal(status, "succeeded");
      assert_true(json_number_value(json_object_get(s, "percentage")) == 100.0);
    }
    assert_true(json_integer_value(json_object_get(s, "task")) > 0);
  }
  assert_true(seen_val && seen_bad); /* spawn order: 7 and 13 are among the first 64 */
  apex_progress_unref(p);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

/* ------------------------------------------------ shared tokens */

typedef struct rev {
  apex_event_type_t type;
  uint64_t id, parent;
  apex_task_state_t state;
  char msg[160];
} rev_t;

typedef struct rec {
  pthread_mutex_t mu;
  rev_t ev[4096];
  size_t n;
} rec_t;

static void rec_on_event(const apex_event_t *ev, void *user) {
  rec_t *r = user;
  pthread_mutex_lock(&r->mu);
  if (r->n < sizeof r->ev / sizeof r->ev[0]) {
    rev_t *e = &r->ev[r->n++];
    e->type = ev->type;
    e->id = ev->task_id;
    e->parent = apex_task_parent_id(ev->task);
    e->state = ev->state;
    snprintf(e->msg, sizeof e->msg, "%s", ev->error ? apex_error_message(ev->error) : "");
  }
  pthread_mutex_unlock(&r->mu);
}

static apex_manager_t *make_rec(rec_t *r, unsigned workers) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  apex_manager_config_t cfg = base_config(workers);
  cfg.on_event = rec_on_event;
  cfg.event_user = r;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  return m;
}

/* The ids of parent's children with an event of type, in event order. */
static size_t kids_with(rec_t *r, uint64_t parent, apex_event_type_t type, uint64_t *ids,
                        size_t cap) {
  size_t k = 0;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n; i++)
    if (r->ev[i].parent == parent && r->ev[i].type == type) {
      if (k < cap) ids[k] = r->ev[i].id;
      k++;
    }
  pthread_mutex_unlock(&r->mu);
  return k;
}

/* Task id's DONE, copied into *out; 0 if it did not come yet. */
static int done_of(rec_t *r, uint64_t id, rev_t *out) {
  int found = 0;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n && !found; i++)
    if (r->ev[i].id == id && r->ev[i].type == APEX_EVENT_DONE) {
      *out = r->ev[i];
      found = 1;
    }
  pthread_mutex_unlock(&r->mu);
  return found;
}

static apex_task_state_t state_of(apex_manager_t *m, uint64_t id) {
  apex_task_t *t = NULL;
  assert_int_equal(apex_ops_find(m, id, &t), APEX_OK);
  apex_task_state_t st = apex_task_state(t);
  apex_task_release(t);
  return st;
}

/* Three running children that carry the shared token: one cancelled by
 * apex_task_cancel, one through its own apex_task_token; each ends alone,
 * "user" and "solo", the third still running; the parent's cancel ends
 * the third with "parent". */
static void test_one_child_cancelled_alone(void **state) {
  (void)state;
  rec_t *r = calloc(1, sizeof *r);
  assert_non_null(r);
  apex_manager_t *m = make_rec(r, 4);
  apex_task_t *t = submit_json(m, "spawn_kit", "hfan", "{\"n\": 3}", NULL);
  uint64_t pid = apex_task_id(t), ids[3];
  AWAIT(kids_with(r, pid, APEX_EVENT_ATTEMPT, ids, 3) == 3, 10000);
  rev_t d;

  apex_task_t *c = NULL;
  assert_int_equal(apex_ops_find(m, ids[0], &c), APEX_OK);
  assert_int_equal(apex_task_cancel(c, NULL), APEX_OK);
  apex_task_release(c);
  AWAIT(done_of(r, ids[0], &d), 10000);
  assert_int_equal(d.state, APEX_TASK_CANCELLED);
  assert_non_null(strstr(d.msg, "hang cancelled (user)"));
  assert_int_equal(state_of(m, ids[1]), APEX_TASK_RUNNING);
  assert_int_equal(state_of(m, ids[2]), APEX_TASK_RUNNING);

  assert_int_equal(apex_ops_find(m, ids[1], &c), APEX_OK);
  apex_token_t *tok = apex_task_token(c);
  assert_non_null(tok);
  assert_false(apex_token_is_cancelled(tok));
  assert_int_equal(apex_token_cancel(tok, "solo"), APEX_OK);
  AWAIT(done_of(r, ids[1], &d), 10000);
  assert_true(apex_token_is_cancelled(apex_task_token(c)));
  apex_task_release(c);
  assert_int_equal(d.state, APEX_TASK_CANCELLED);
  assert_non_null(strstr(d.msg, "hang cancelled (solo)"));
  assert_int_equal(state_of(m, ids[2]), APEX_TASK_RUNNING);
  assert_int_equal(apex_task_state(t), APEX_TASK_RUNNING);

  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  wait_done(t);
  AWAIT(done_of(r, pid, &d), 10000);
  assert_true(done_of(r, ids[2], &d));
  assert_int_equal(d.state, APEX_TASK_CANCELLED);
  assert_non_null(strstr(d.msg, "hang cancelled (parent)"));
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

/* Two workers: the parent holds one, its first child the other, the rest
 * wait in the queue. The parent's cancel ends them all "cancelled": the
 * running one says "parent", and the queued ones never started (no
 * ATTEMPT event) and ended before the parent did. */
static void test_queued_children_end_at_once(void **state) {
  (void)state;
  enum { N = 6 };
  rec_t *r = calloc(1, sizeof *r);
  assert_non_null(r);
  apex_manager_t *m = make_rec(r, 2);
  apex_task_t *t = submit_json(m, "spawn_kit", "hfan", "{\"n\": 6}", NULL);
  uint64_t pid = apex_task_id(t), run[N];
  AWAIT(kids_with(r, pid, APEX_EVENT_ATTEMPT, run, N) == 1, 10000);
  /* every spawn returned: the parent is waiting (its state says nothing
   * of that, so wait for the spawns' SUBMITTED-free sign: the queue) */
  AWAIT(stats_of(m).queued == N - 1, 10000);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  wait_done(t);
  rev_t d;
  AWAIT(done_of(r, pid, &d), 10000);
  assert_int_equal(d.state, APEX_TASK_CANCELLED);
  uint64_t done[N];
  assert_int_equal(kids_with(r, pid, APEX_EVENT_DONE, done, N), N);
  assert_int_equal(kids_with(r, pid, APEX_EVENT_ATTEMPT, run, N), 1);
  for (size_t i = 0; i < N; i++) {
    assert_true(done_of(r, done[i], &d));
    assert_int_equal(d.state, APEX_TASK_CANCELLED);
    if (done[i] == run[0]) assert_non_null(strstr(d.msg, "hang cancelled (parent)"));
    else assert_non_null(strstr(d.msg, "parent"));
  }
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

/* A parent with an attempt timeout: its first attempt's children are
 * cancelled with that attempt's token ("parent"), and the retry's
 * children, spawned under the next attempt's token, run and succeed. */
static void retry_children(int own_token) {
  rec_t *r = calloc(1, sizeof *r);
  assert_non_null(r);
  apex_manager_t *m = make_rec(r, 4);
  apex_retry_policy_t rp = {.max_attempts = 2, .initial_interval_s = 0.01};
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.start_to_close_s = 2.0; /* ample for 3 spawns on a loaded machine; the test waits it out */
  o.retry = &rp;
  char params[96];
  snprintf(params, sizeof params, "{\"n\": 3, \"nil_after\": 1, \"token\": %d}", own_token);
  apex_task_t *t = submit_json(m, "spawn_kit", "hfan", params, &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *res = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(res, "attempt")), 2);
  json_t *codes = json_object_get(res, "codes");
  assert_int_equal(json_array_size(codes), 3);
  for (size_t i = 0; i < 3; i++) assert_int_equal(json_integer_value(json_array_get(codes, i)), 0);
  json_decref(res);
  uint64_t pid = apex_task_id(t), done[6];
  AWAIT(kids_with(r, pid, APEX_EVENT_DONE, done, 6) == 6, 10000);
  size_t cancelled = 0, succeeded = 0;
  for (size_t i = 0; i < 6; i++) {
    rev_t d;
    assert_true(done_of(r, done[i], &d));
    if (d.state == APEX_TASK_CANCELLED && strstr(d.msg, "hang cancelled (parent)")) cancelled++;
    if (d.state == APEX_TASK_SUCCEEDED) succeeded++;
  }
  assert_int_equal(cancelled, 3);
  assert_int_equal(succeeded, 3);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

static void test_retry_spawns_under_a_new_token(void **state) {
  (void)state;
  retry_children(0);
}

static void test_retry_spawns_under_a_new_token_own_tokens(void **state) {
  (void)state;
  retry_children(1);
}

/* A deferred parent of pending deferred children, none with a token of
 * its own: the parent's cancel reaches each child's cancel callback (the
 * shared token's callback tells them), whose completes end the parent. */
static void test_pending_children_hear_the_parents_cancel(void **state) {
  (void)state;
  enum { N = 50 };
  rec_t *r = calloc(1, sizeof *r);
  assert_non_null(r);
  apex_manager_t *m = make_rec(r, 2);
  apex_task_t *t = submit_json(m, "spawn_kit", "dfan", "{\"n\": 50}", NULL);
  uint64_t pid = apex_task_id(t), ids[N];
  AWAIT(kids_with(r, pid, APEX_EVENT_ATTEMPT, ids, N) == N, 10000);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  rev_t d;
  AWAIT(done_of(r, pid, &d), 10000);
  assert_int_equal(kids_with(r, pid, APEX_EVENT_DONE, ids, N), N);
  for (size_t i = 0; i < N; i++) {
    assert_true(done_of(r, ids[i], &d));
    assert_int_equal(d.state, APEX_TASK_CANCELLED);
  }
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

static void test_let_go_children_answer_after_a_wait(void **state) {
  (void)state;
  fan_and_check(0);
}

static void test_let_go_children_answer_while_they_end(void **state) {
  (void)state;
  fan_and_check(1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_let_go_children_answer_after_a_wait),
      cmocka_unit_test(test_let_go_children_answer_while_they_end),
      cmocka_unit_test(test_one_child_cancelled_alone),
      cmocka_unit_test(test_queued_children_end_at_once),
      cmocka_unit_test(test_pending_children_hear_the_parents_cancel),
      cmocka_unit_test(test_retry_spawns_under_a_new_token),
      cmocka_unit_test(test_retry_spawns_under_a_new_token_own_tokens),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
