/* The roll-up's running sums (src/ops/children.c: the family keeps the
 * counts and weighted percentage of its settled children, and a roll-up
 * visits only the children from the first open one on): a parent of 100
 * children, more than the 64 a snapshot lists, one of them failing, the
 * first one sleeping 300 ms while the 99 others end, so most updates see
 * settled children behind an open first one. Every parent update the host
 * receives must add up (the per-state counts to the total, the listed ones
 * to min(total, 64)), its count of ended children only grows, and so does
 * its percentage once every child is spawned (before, each new child joins
 * the average at 0 % and lowers it, as the roll-up's formula says), and
 * the last one, after every child ended, says 99 succeeded, 1
 * failed and 100 %. A sum that missed a settled child, or counted one
 * twice, breaks one of these. Plugin: tests/plugins/rollup_kit.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>
#include <pthread.h>

#include "apex/apex.h"
#include "harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/rollup_kit.so"
#define N_KIDS 100
#define MAX_EV 4096

typedef struct rec {
  pthread_mutex_t mu;
  uint64_t pid; /* the parent's id once known; 0: record every progress */
  json_t *details[MAX_EV]; /* the parent's PROGRESS details, in order */
  double pct[MAX_EV];
  size_t n;
  int parent_done;
} rec_t;

static void on_event(const apex_event_t *ev, void *user) {
  rec_t *r = user;
  if (apex_task_parent_id(ev->task) != 0) return; /* a child's */
  pthread_mutex_lock(&r->mu);
  if (ev->type == APEX_EVENT_PROGRESS && ev->progress && r->n < MAX_EV) {
    const json_t *d = apex_progress_details(ev->progress);
    r->details[r->n] = d ? json_deep_copy(d) : NULL;
    r->pct[r->n] = apex_progress_percentage(ev->progress);
    r->n++;
  }
  if (ev->type == APEX_EVENT_DONE) r->parent_done = 1;
  pthread_mutex_unlock(&r->mu);
}

static json_int_t count(const json_t *cs, const char *k) {
  return json_integer_value(json_object_get(cs, k));
}

static void test_rollup_sums_add_up(void **st) {
  (void)st;
  rec_t r = {0};
  pthread_mutex_init(&r.mu, NULL);
  apex_manager_config_t cfg = base_config(4);
  cfg.on_event = on_event;
  cfg.event_user = &r;
  cfg.progress_rate_hz = 200;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  json_t *p = json_pack("{s:i, s:i}", "n", N_KIDS, "slow_ms", 300);
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_submit(m, "rollup_kit", "fan", p, NULL, &t, &err), APEX_OK);
  json_decref(p);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  int64_t end = now_ms() + 20000;
  for (;;) { /* the DONE event is delivered on the runtime thread */
    pthread_mutex_lock(&r.mu);
    int done = r.parent_done;
    pthread_mutex_unlock(&r.mu);
    if (done) break;
    assert_true(now_ms() < end);
    nap_ms(2);
  }

  pthread_mutex_lock(&r.mu);
  assert_true(r.n >= 1);
  json_int_t ended_before = 0;
  double pct_before = 0;
  for (size_t i = 0; i < r.n; i++) {
    const json_t *cs = json_object_get(r.details[i], "children");
    assert_non_null(cs);
    json_int_t total = count(cs, "total");
    assert_true(total >= 1 && total <= N_KIDS);
    assert_int_equal(count(cs, "listed"), total < 64 ? total : 64);
    json_int_t sum = count(cs, "queued") + count(cs, "running") + count(cs, "retry_wait") +
                     count(cs, "succeeded") + count(cs, "failed") + count(cs, "cancelled") +
                     count(cs, "timed_out");
    if (sum != total) {
      print_error("update %zu: states add up to %lld of %lld\n", i, (long long)sum,
                  (long long)total);
      fail();
    }
    json_int_t ended = count(cs, "succeeded") + count(cs, "failed");
    assert_true(ended >= ended_before);
    ended_before = ended;
    if (total == N_KIDS) {
      if (r.pct[i] < pct_before) {
        print_error("update %zu: %g %% after %g %%, all children spawned\n", i, r.pct[i],
                    pct_before);
        fail();
      }
      pct_before = r.pct[i];
    }
  }
  const json_t *last = json_object_get(r.details[r.n - 1], "children");
  assert_int_equal(count(last, "total"), N_KIDS);
  assert_int_equal(count(last, "succeeded"), N_KIDS - 1);
  assert_int_equal(count(last, "failed"), 1);
  assert_true(r.pct[r.n - 1] == 100.0);
  for (size_t i = 0; i < r.n; i++) json_decref(r.details[i]);
  pthread_mutex_unlock(&r.mu);

  apex_task_release(t);
  apex_manager_destroy(m, -1);
  pthread_mutex_destroy(&r.mu);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rollup_sums_add_up),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
