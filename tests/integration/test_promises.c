/* Promises of the public headers that no other test walks: the parts of a
 * retry policy (non-retryable codes, the backoff cap, jitter bounds), a
 * task timing out while it waits in the queue, the cap on replacement
 * workers for stuck handlers, and the cap on milestones waiting between
 * two progress deliveries.
 *
 * Plugins: testkit, hostile, example_async (harness.h) and gate
 * (tests/plugins/gate.c: handlers that block, deaf to cancellation, until
 * the test opens a FIFO), so nothing here races a time window.
 *
 * Threads: cmocka's thread; events are recorded on the runtime thread. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/gate.h"
#include "integration/recorder.h"

static apex_manager_t *make_recording(rec_t *r, unsigned workers) {
  apex_manager_config_t cfg = base_config(workers);
  cfg.on_event = rec_on_event;
  cfg.event_user = r;
  apex_manager_t *m = make_test_manager(&cfg);
  load_gate(m);
  return m;
}

static int error_code_of(apex_task_t *t) {
  apex_error_t *e = apex_task_error(t);
  int code = e ? apex_error_code(e) : APEX_OK;
  apex_error_unref(e);
  return code;
}

/* ---------------------------------------------------------------- retries */

/* A code listed as non-retryable ends the task at its first failure, even
 * a transient one with attempts left. */
static void test_non_retryable_code_is_never_retried(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_t *m = make_recording(&r, 2);
  const apex_status_t never[] = {APEX_E_TRANSIENT};
  apex_retry_policy_t p = {.max_attempts = 5, .initial_interval_s = 0.001,
                           .non_retryable = never, .n_non_retryable = 1};
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &p;
  apex_task_t *t = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 3}", &o);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_FAILED);
  assert_int_equal(error_code_of(t), APEX_E_TRANSIENT);
  assert_int_equal(apex_task_attempts(t), 1);
  assert_int_equal(stats_of(m).retries, 0);
  /* The same policy without the list retries until attempt 3 succeeds. */
  p.n_non_retryable = 0;
  p.non_retryable = NULL;
  apex_task_t *u = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 3}", &o);
  assert_int_equal(apex_task_wait(u, PROMPT_MS), APEX_OK);
  assert_int_equal(apex_task_state(u), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_attempts(u), 3);
  apex_task_release(t);
  apex_task_release(u);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  rec_fini(&r);
}

/* Collects the RETRY delays of task id, in attempt order. */
static size_t retry_delays(rec_t *r, uint64_t id, double *out, size_t max) {
  size_t n = 0;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n && n < max; i++)
    if (r->ev[i].task_id == id && r->ev[i].type == APEX_EVENT_RETRY) out[n++] = r->ev[i].retry_delay;
  pthread_mutex_unlock(&r->mu);
  return n;
}

/* Delays grow by the coefficient up to max_interval_s; jitter then scales
 * each by a factor in [1 - jitter, 1 + jitter] (plugin.h), drawn per task
 * and attempt. */
static void test_retry_delays_follow_backoff_cap_and_jitter_bounds(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_t *m = make_recording(&r, 2);
  const double base[] = {0.001, 0.01, 0.03, 0.03}; /* 0.1 and 1 capped at 0.03 */
  enum { TASKS = 20 };
  for (int jittered = 0; jittered < 2; jittered++) {
    apex_retry_policy_t p = {.max_attempts = 5, .initial_interval_s = 0.001,
                             .backoff_coefficient = 10, .max_interval_s = 0.03,
                             .jitter = jittered ? 0.5 : 0};
    apex_submit_opts_t o;
    apex_submit_opts_init(&o);
    o.retry = &p;
    apex_task_t *t[TASKS];
    for (int i = 0; i < TASKS; i++)
      t[i] = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 5}", &o);
    int moved = 0;
    for (int i = 0; i < TASKS; i++) {
      assert_int_equal(apex_task_wait(t[i], 10000), APEX_OK);
      assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
      double d[4];
      assert_int_equal(retry_delays(&r, apex_task_id(t[i]), d, 4), 4);
      for (int k = 0; k < 4; k++) {
        if (!jittered) {
          assert_true(fabs(d[k] - base[k]) < 1e-12);
          continue;
        }
        assert_true(d[k] >= base[k] * 0.5 - 1e-12);
        assert_true(d[k] <= base[k] * 1.5 + 1e-12);
        if (fabs(d[k] - base[k]) > 1e-9) moved++;
      }
      apex_task_release(t[i]);
    }
    /* Jitter does move the delays (80 draws; all equal to the base would
     * mean it is ignored). */
    if (jittered) assert_true(moved > 40);
  }
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  rec_fini(&r);
}

/* ------------------------------------------------------- queued timeout */

/* A task whose deadline passes while every worker is busy ends timed_out
 * in the queue: its handler never runs, and the error says where it was. */
static void test_task_times_out_while_still_queued(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_t *m = make_recording(&r, 1);
  gate_t g;
  gate_init(&g);
  apex_task_t *busy = submit_json(m, "gate", "deaf_read", g.params, NULL);
  AWAIT(apex_task_state(busy) == APEX_TASK_RUNNING, PROMPT_MS);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = 0.05;
  apex_task_t *t = submit_json(m, "testkit", "noop", NULL, &o);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(apex_error_code(e), APEX_E_TIMEOUT);
  assert_non_null(strstr(apex_error_message(e), "still queued"));
  apex_error_unref(e);
  gate_open(&g);
  assert_int_equal(apex_task_wait(busy, PROMPT_MS), APEX_OK);
  assert_int_equal(apex_task_state(busy), APEX_TASK_SUCCEEDED);
  /* Its handler never ran: no attempt, no ATTEMPT event. */
  assert_int_equal(apex_task_attempts(t), 0);
  rec_await_dones(&r, 2);
  assert_int_equal(rec_count(&r, apex_task_id(t), APEX_EVENT_ATTEMPT), 0);
  assert_int_equal(rec_count(&r, apex_task_id(t), APEX_EVENT_DONE), 1);
  apex_task_release(t);
  apex_task_release(busy);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  gate_fini(&g);
  rec_fini(&r);
}

/* A retrying task's deadline can pass while it waits out its backoff (its
 * retry time is set before the deadline, but both come due together when
 * the runtime thread is held up, here by a slow LOOP callback, and
 * deadlines are fired first): it ends timed_out there and never runs
 * again. */
static int64_t g_retry_submit_ms;

static void on_retry_hold_runtime(const apex_event_t *ev, void *user) {
  rec_on_event(ev, user);
  /* Holds Apex's runtime thread past both the retry time (50 ms after the
   * failure) and the deadline (1 s after the submit): elapsed time, not
   * scheduling, makes both due. The deadline leaves a loaded machine a
   * second to start the first attempt (it was 150 ms, which a TSan build
   * under load once spent before the attempt failed). */
  if (ev->type == APEX_EVENT_RETRY) {
    int64_t left = g_retry_submit_ms + 1300 - now_ms();
    if (left > 0) nap_ms(left);
  }
}

static void test_task_times_out_while_waiting_to_retry(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = base_config(1);
  cfg.on_event = on_retry_hold_runtime;
  cfg.event_user = &r;
  apex_manager_t *m = make_test_manager(&cfg);
  apex_retry_policy_t p = {.max_attempts = 3, .initial_interval_s = 0.05};
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &p;
  o.timeout_s = 1.0;
  g_retry_submit_ms = now_ms();
  apex_task_t *t = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 3}", &o);
  assert_int_equal(apex_task_wait(t, 2 * PROMPT_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(apex_error_code(e), APEX_E_TIMEOUT);
  assert_null(strstr(apex_error_message(e), "still queued")); /* it was backing off */
  apex_error_unref(e);
  rec_await_dones(&r, 1);
  assert_int_equal(apex_task_attempts(t), 1);
  assert_int_equal(rec_count(&r, apex_task_id(t), APEX_EVENT_ATTEMPT), 1);
  assert_int_equal(rec_count(&r, apex_task_id(t), APEX_EVENT_RETRY), 1);
  assert_int_equal(stats_of(m).timed_out, 1);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  rec_fini(&r);
}

/* ------------------------------------------------------- stuck workers */

/* Past max_stuck_workers stuck handlers no replacement starts: queued
 * work waits for a handler to return instead of growing the pool. */
/* Submits gate.deaf_read with opts o (a short timeout) until one attempt
 * started and timed out in its handler, stranding its worker; returns
 * that task. A task whose deadline passes while it is still queued (a
 * loaded machine: the worker did not pick it within the timeout) times
 * out without an attempt and strands nothing: it is released and the
 * submit tried again, up to 20 times. */
static apex_task_t *submit_stranding(apex_manager_t *m, gate_t *g, const apex_submit_opts_t *o) {
  for (int i = 0; i < 20; i++) {
    apex_task_t *t = submit_json(m, "gate", "deaf_read", g->params, o);
    assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
    assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
    if (apex_task_attempts(t) == 1) return t;
    assert_int_equal(apex_task_attempts(t), 0);
    apex_task_release(t);
  }
  fail_msg("no attempt of gate.deaf_read started within its timeout in 20 submits");
  return NULL;
}

static void test_no_replacement_past_max_stuck_workers(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  cfg.max_stuck_workers = 1;
  apex_manager_t *m = make_test_manager(&cfg);
  load_gate(m);
  gate_t g;
  gate_init(&g);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = 0.05;
  apex_task_t *a = submit_stranding(m, &g, &o);
  AWAIT(stats_of(m).stuck_workers == 1, PROMPT_MS);
  /* Under the cap: the next task gets a replacement and strands it too. */
  apex_task_t *b = submit_stranding(m, &g, &o);
  AWAIT(stats_of(m).stuck_workers == 2, PROMPT_MS);
  assert_int_equal(stats_of(m).workers, 2);
  /* At the cap: a submit starts no thread (decided inside the submit). */
  apex_task_t *c = submit_json(m, "testkit", "noop", NULL, NULL);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.workers, 2);
  assert_int_equal(s.stuck_workers, 2);
  assert_int_equal(apex_task_state(c), APEX_TASK_QUEUED);
  /* A stuck handler returning frees its worker for the queued task. */
  gate_open(&g);
  assert_int_equal(apex_task_wait(c, PROMPT_MS), APEX_OK);
  assert_int_equal(apex_task_state(c), APEX_TASK_SUCCEEDED);
  gate_open(&g);
  AWAIT(stats_of(m).stuck_workers == 0 && stats_of(m).running == 0, PROMPT_MS);
  apex_task_release(a);
  apex_task_release(b);
  apex_task_release(c);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  gate_fini(&g);
}

/* --------------------------------------------------------- milestones */

/* Milestones are never coalesced away, up to 64 waiting between two
 * deliveries; past that they coalesce like plain updates (the latest
 * wins), so a burst delivers 64 updates, the last of them the burst's
 * last (plugin.h, apex_ctx_progress_update). */
static void test_milestone_burst_delivers_64_ending_with_the_last(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = base_config(1);
  cfg.on_event = rec_on_event;
  cfg.event_user = &r;
  cfg.event_mask = APEX_EVENT_PROGRESS | APEX_EVENT_DONE;
  cfg.progress_rate_hz = 0.01; /* one delivery per 100 s: the burst waits for the end */
  apex_manager_t *m = make_test_manager(&cfg);
  load_gate(m);
  gate_t g;
  gate_init(&g);
  char params[256];
  snprintf(params, sizeof params, "{\"path\": \"%s\", \"count\": 200}", g.path);
  apex_task_t *t = submit_json(m, "gate", "milestones", params, NULL);
  /* The warm-up update is delivered at once (the first flush is due), so
   * the burst after it all waits for the task's end. */
  AWAIT(rec_count(&r, 0, APEX_EVENT_PROGRESS) == 1, PROMPT_MS);
  gate_open(&g);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  rec_await_dones(&r, 1);
  assert_int_equal(rec_count(&r, 0, APEX_EVENT_PROGRESS), 1 + 64);
  pthread_mutex_lock(&r.mu);
  int k = 0, last = 0;
  for (size_t i = 0; i < r.n; i++) {
    if (r.ev[i].type != APEX_EVENT_PROGRESS) continue;
    assert_int_equal(r.ev[i].pseq, (uint64_t)++k);
    if (k == 1) {
      assert_string_equal(r.ev[i].msg, "warm-up");
      continue;
    }
    int n = 0;
    assert_int_equal(sscanf(r.ev[i].msg, "milestone %d", &n), 1);
    assert_true(n > last); /* in order, none twice */
    last = n;
    assert_string_equal(r.ev[i].status, "milestone_reached");
  }
  pthread_mutex_unlock(&r.mu);
  assert_int_equal(last, 200);
  assert_int_equal(stats_of(m).progress_reported, 201);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  gate_fini(&g);
  rec_fini(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_non_retryable_code_is_never_retried),
      cmocka_unit_test(test_retry_delays_follow_backoff_cap_and_jitter_bounds),
      cmocka_unit_test(test_task_times_out_while_still_queued),
      cmocka_unit_test(test_task_times_out_while_waiting_to_retry),
      cmocka_unit_test(test_no_replacement_past_max_stuck_workers),
      cmocka_unit_test(test_milestone_burst_delivers_64_ending_with_the_last),
  };
  if (getenv("APEX_TEST_FILTER")) cmocka_set_test_filter(getenv("APEX_TEST_FILTER"));
  return cmocka_run_group_tests(tests, NULL, NULL);
}
