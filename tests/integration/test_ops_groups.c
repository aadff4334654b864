/* Operation groups (apex_group_t, include/apex/apex.h): a group of 1,000
 * tasks where wait-any returns the first to end, cancel-all ends the rest
 * and every task has exactly one outcome event; wait-all and the results;
 * apex_manager_execute_all; GROUP events through the DISPATCH fd (and none
 * for a host whose event_mask does not name them); the combined progress.
 *
 * Plugin: ops_kit (tests/plugins/ops_kit.c): `quick` returns at once,
 * `park` is pending (holding no worker) until cancelled.
 *
 * Threads: cmocka's thread is the host; LOOP events run on Apex's runtime
 * thread and are recorded under a mutex. Conditions are awaited (wait
 * calls, AWAIT), never slept for. */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "harness.h"

#define MAX_ID 4096

/* What the events said, per task id. */
typedef struct evlog {
  pthread_mutex_t mu;
  unsigned done[MAX_ID];   /* DONE events */
  unsigned grp[MAX_ID];    /* GROUP events */
  int grp_after_done[MAX_ID]; /* its GROUP came after its DONE */
  uint64_t first_done;     /* the first DONE's task id */
  uint64_t last_grp_seq;   /* GROUP seqs must rise 1, 2, ... */
  int grp_seq_ok;
  apex_group_t *group;     /* every GROUP event must name it */
  int grp_group_ok;
  int grp_state_ok;        /* a GROUP event's state is terminal */
  size_t n_done, n_grp;
} evlog_t;

static void evlog_init(evlog_t *l) {
  memset(l, 0, sizeof *l);
  pthread_mutex_init(&l->mu, NULL);
  l->grp_seq_ok = l->grp_group_ok = l->grp_state_ok = 1;
}

static void on_event(const apex_event_t *ev, void *user) {
  evlog_t *l = user;
  pthread_mutex_lock(&l->mu);
  uint64_t id = ev->task_id < MAX_ID ? ev->task_id : 0;
  if (ev->type == APEX_EVENT_DONE) {
    if (!l->n_done++) l->first_done = ev->task_id;
    l->done[id]++;
  } else if (ev->type == APEX_EVENT_GROUP) {
    l->n_grp++;
    l->grp[id]++;
    l->grp_after_done[id] = l->done[id] == 1;
    if (ev->seq != l->last_grp_seq + 1) l->grp_seq_ok = 0;
    l->last_grp_seq = ev->seq;
    if (ev->group != l->group) l->grp_group_ok = 0;
    if (!apex_task_state_is_terminal(ev->state) || ev->state != apex_task_state(ev->task))
      l->grp_state_ok = 0;
  }
  pthread_mutex_unlock(&l->mu);
}

static apex_manager_t *make(unsigned workers, apex_delivery_t d, unsigned mask, evlog_t *l) {
  apex_manager_config_t cfg = base_config(workers);
  cfg.delivery = d;
  cfg.event_mask = mask;
  cfg.on_event = l ? on_event : NULL;
  cfg.event_user = l;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/ops_kit.so");
  return m;
}

static apex_task_t *gsubmit(apex_group_t *g, const char *action, const char *params_json,
                            int want) {
  json_t *p = params_json ? json_loads(params_json, 0, NULL) : NULL;
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_group_submit(g, "ops_kit", action, p, NULL, want ? &t : NULL, &err);
  if (rc != APEX_OK) print_error("group submit: %s\n", apex_error_message(err));
  apex_error_unref(err);
  json_decref(p);
  assert_int_equal(rc, APEX_OK);
  return t;
}

static apex_group_stats_t gstats(apex_group_t *g) {
  apex_group_stats_t s = APEX_GROUP_STATS_INIT;
  assert_int_equal(apex_group_stats(g, &s), APEX_OK);
  return s;
}

/* The Done-when test of issue 11: 1,000 tasks, one of them (not the first
 * submitted) ends first; wait-any returns it, cancel-all ends the other
 * 999, and the events show exactly one DONE and one GROUP per task. */
static void test_thousand_wait_any_cancel_all(void **state) {
  (void)state;
  evlog_t *l = calloc(1, sizeof *l);
  assert_non_null(l);
  evlog_init(l);
  apex_manager_t *m = make(2, APEX_DELIVER_LOOP, APEX_EVENT_DONE | APEX_EVENT_GROUP, l);
  apex_group_t *g = NULL;
  assert_int_equal(apex_group_new(m, &g), APEX_OK);
  l->group = g;
  enum { N = 1000, QUICK = 637 };
  apex_task_t *quick = NULL;
  uint64_t ids[N];
  for (int i = 0; i < N; i++) {
    apex_task_t *t = gsubmit(g, i == QUICK ? "quick" : "park", NULL, 1);
    ids[i] = apex_task_id(t);
    assert_true(ids[i] < MAX_ID);
    if (i == QUICK)
      quick = t;
    else
      apex_task_release(t);
  }
  assert_int_equal(apex_group_size(g), N);

  apex_task_t *first = NULL;
  assert_int_equal(apex_group_wait_any(g, 20000, &first), APEX_OK);
  assert_ptr_equal(first, quick);
  assert_int_equal(apex_task_state(first), APEX_TASK_SUCCEEDED);
  pthread_mutex_lock(&l->mu); /* LOOP: its DONE callback has returned */
  assert_int_equal(l->first_done, ids[QUICK]);
  pthread_mutex_unlock(&l->mu);
  apex_task_release(first);
  apex_task_release(quick); /* a handle of its own */

  apex_group_stats_t s = gstats(g);
  assert_int_equal(s.total, N);
  assert_int_equal(s.succeeded, 1);
  assert_int_equal(s.queued + s.running, N - 1);
  assert_true(s.percentage > 0.0999 && s.percentage < 0.1001); /* (100 + 999 * 0) / 1000 */

  size_t n = 0;
  assert_int_equal(apex_group_cancel(g, "enough", &n), APEX_OK);
  assert_int_equal(n, N - 1);
  assert_int_equal(apex_group_wait_all(g, 20000), APEX_OK);
  s = gstats(g);
  assert_int_equal(s.succeeded, 1);
  assert_int_equal(s.cancelled, N - 1);
  assert_int_equal(s.queued + s.running + s.retry_wait + s.scheduled + s.failed + s.timed_out, 0);
  assert_true(s.percentage == 100.0);
  /* Later submits are refused once the group was cancelled. */
  apex_error_t *err = NULL;
  assert_int_equal(apex_group_submit(g, "ops_kit", "quick", NULL, NULL, NULL, &err),
                   APEX_E_CANCELLED);
  apex_error_unref(err);
  assert_int_equal(apex_group_size(g), N);

  /* wait-any hands out the rest, each once, then says so. */
  for (int i = 0; i < N - 1; i++) {
    apex_task_t *t = NULL;
    assert_int_equal(apex_group_wait_any(g, 0, &t), APEX_OK);
    assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
    assert_true(apex_task_id(t) != ids[QUICK]);
    apex_task_release(t);
  }
  apex_task_t *none = NULL;
  assert_int_equal(apex_group_wait_any(g, 0, &none), APEX_E_ALREADY);
  assert_null(none);

  assert_int_equal(apex_group_release(g), APEX_OK);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK); /* every event delivered */
  assert_int_equal(l->n_done, N);
  assert_int_equal(l->n_grp, N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(l->done[ids[i]], 1);
    assert_int_equal(l->grp[ids[i]], 1);
    assert_true(l->grp_after_done[ids[i]]);
  }
  assert_true(l->grp_seq_ok);
  assert_true(l->grp_group_ok);
  assert_true(l->grp_state_ok);
  pthread_mutex_destroy(&l->mu);
  free(l);
}

/* wait-all, then the outcomes in submit order. */
static void test_wait_all_results(void **state) {
  (void)state;
  apex_manager_t *m = make(2, APEX_DELIVER_LOOP, 0, NULL);
  apex_group_t *g = NULL;
  assert_int_equal(apex_group_new(m, &g), APEX_OK);
  assert_int_equal(apex_group_wait_all(g, 0), APEX_OK); /* empty: at once */
  enum { N = 50 };
  for (int i = 0; i < N; i++) {
    char p[32];
    snprintf(p, sizeof p, "{\"i\": %d}", i);
    gsubmit(g, "quick", p, 0);
  }
  apex_task_t *park = gsubmit(g, "park", NULL, 1);
  assert_int_equal(apex_group_wait_all(g, 0), APEX_E_AGAIN); /* the park is live */
  assert_int_equal(apex_task_cancel(park, NULL), APEX_OK);
  assert_int_equal(apex_group_wait_all(g, 20000), APEX_OK);
  apex_task_t *t0 = apex_group_task(g, N);
  assert_ptr_equal(t0, park);
  apex_task_release(t0);
  assert_null(apex_group_task(g, N + 1));
  apex_task_release(park);
  json_t *r = apex_group_results(g);
  assert_non_null(r);
  assert_int_equal(json_array_size(r), N + 1);
  for (int i = 0; i < N; i++) {
    json_t *e = json_array_get(r, (size_t)i);
    assert_string_equal(json_string_value(json_object_get(e, "state")), "succeeded");
    assert_string_equal(json_string_value(json_object_get(e, "action")), "quick");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(e, "result"), "i")), i);
  }
  json_t *last = json_array_get(r, N);
  assert_string_equal(json_string_value(json_object_get(last, "state")), "cancelled");
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(last, "error"), "code")), "cancelled");
  json_decref(r);
  assert_int_equal(apex_group_release(g), APEX_OK);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
}

static void test_execute_all(void **state) {
  (void)state;
  apex_manager_t *m = make(2, APEX_DELIVER_LOOP, 0, NULL);
  apex_call_t calls[20];
  json_t *params[20];
  for (int i = 0; i < 20; i++) {
    params[i] = json_pack("{s:i}", "i", i * 10);
    calls[i] = (apex_call_t){"ops_kit", "quick", params[i], NULL};
  }
  json_t *res = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_execute_all(m, calls, 20, 20000, &res, &err), APEX_OK);
  assert_null(err);
  assert_int_equal(json_array_size(res), 20);
  for (int i = 0; i < 20; i++)
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(json_array_get(res, (size_t)i), "result"), "i")),
        i * 10);
  json_decref(res);
  /* A bad call: its submit error, nothing left running. */
  calls[5].action = "no_such_action";
  res = NULL;
  assert_int_equal(apex_manager_execute_all(m, calls, 20, 20000, &res, &err),
                   APEX_E_ACTION_NOT_FOUND);
  assert_null(res);
  assert_non_null(strstr(apex_error_message(err), "no_such_action"));
  apex_error_unref(err);
  err = NULL;
  /* A time-out: the calls are cancelled and waited for. */
  uint64_t c0 = stats_of(m).cancelled; /* of the calls before the bad one, maybe */
  apex_call_t parked[3] = {{"ops_kit", "park", NULL, NULL},
                           {"ops_kit", "park", NULL, NULL},
                           {"ops_kit", "quick", NULL, NULL}};
  assert_int_equal(apex_manager_execute_all(m, parked, 3, 50, &res, &err), APEX_E_AGAIN);
  assert_null(res);
  apex_error_unref(err);
  assert_int_equal(stats_of(m).cancelled, c0 + 2); /* waited for: no await needed */
  for (int i = 0; i < 20; i++) json_decref(params[i]);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
}

/* DISPATCH: one GROUP event per member's end, through the host's fd and
 * its own dispatch, each after that member's DONE. */
static void test_dispatch_group_events(void **state) {
  (void)state;
  evlog_t *l = calloc(1, sizeof *l);
  assert_non_null(l);
  evlog_init(l);
  apex_manager_t *m = make(2, APEX_DELIVER_DISPATCH, APEX_EVENT_DONE | APEX_EVENT_GROUP, l);
  apex_group_t *g = NULL;
  assert_int_equal(apex_group_new(m, &g), APEX_OK);
  l->group = g;
  enum { N = 10 };
  for (int i = 0; i < N; i++) gsubmit(g, "quick", NULL, 0);
  /* DISPATCH: wait-all returns at the terminal states, no dispatch needed */
  assert_int_equal(apex_group_wait_all(g, 20000), APEX_OK);
  int fd = apex_manager_fd(m);
  assert_true(fd >= 0);
  int64_t end = now_ms() + 20000;
  while (now_ms() < end) {
    pthread_mutex_lock(&l->mu);
    size_t got = l->n_grp;
    pthread_mutex_unlock(&l->mu);
    if (got == N) break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 1000) > 0) assert_true(apex_manager_dispatch(m) >= 0);
  }
  pthread_mutex_lock(&l->mu);
  assert_int_equal(l->n_grp, N);
  assert_int_equal(l->n_done, N);
  for (uint64_t id = 0; id < MAX_ID; id++)
    if (l->grp[id]) {
      assert_int_equal(l->grp[id], 1);
      assert_true(l->grp_after_done[id]);
    }
  assert_true(l->grp_seq_ok && l->grp_group_ok && l->grp_state_ok);
  pthread_mutex_unlock(&l->mu);
  assert_int_equal(apex_group_release(g), APEX_OK);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
  assert_int_equal(l->n_grp, N); /* nothing more */
  pthread_mutex_destroy(&l->mu);
  free(l);

  /* A host whose mask does not name GROUP (0: the ABI-1 four) never sees one. */
  l = calloc(1, sizeof *l);
  assert_non_null(l);
  evlog_init(l);
  m = make(2, APEX_DELIVER_LOOP, 0, l);
  assert_int_equal(apex_group_new(m, &g), APEX_OK);
  for (int i = 0; i < N; i++) gsubmit(g, "quick", NULL, 0);
  assert_int_equal(apex_group_wait_all(g, 20000), APEX_OK);
  assert_int_equal(apex_group_release(g), APEX_OK);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
  assert_int_equal(l->n_done, N);
  assert_int_equal(l->n_grp, 0);
  pthread_mutex_destroy(&l->mu);
  free(l);
}

/* The combined progress: the mean of the members' last reported
 * percentages, an ended member counting 100. */
static void test_group_progress(void **state) {
  (void)state;
  apex_manager_t *m = make(2, APEX_DELIVER_LOOP, 0, NULL);
  apex_group_t *g = NULL;
  assert_int_equal(apex_group_new(m, &g), APEX_OK);
  apex_task_t *a = gsubmit(g, "park", "{\"pct\": 40}", 1);
  gsubmit(g, "park", "{\"pct\": 80}", 0);
  AWAIT(gstats(g).percentage == 60.0, PROMPT_MS);
  assert_int_equal(gstats(g).running, 2);
  assert_int_equal(apex_task_cancel(a, NULL), APEX_OK);
  AWAIT(gstats(g).percentage == 90.0, PROMPT_MS);
  apex_task_release(a);
  /* Released with a live member: it runs on, the manager ends it. */
  assert_int_equal(apex_group_release(g), APEX_OK);
  assert_int_equal(stats_of(m).cancelled, 1);
  assert_int_equal(apex_manager_destroy(m, 0), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_thousand_wait_any_cancel_all),
      cmocka_unit_test(test_wait_all_results),
      cmocka_unit_test(test_execute_all),
      cmocka_unit_test(test_dispatch_group_events),
      cmocka_unit_test(test_group_progress),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
