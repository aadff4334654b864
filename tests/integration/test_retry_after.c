/* Integration tests of apex_ctx_retry_after (include/apex/plugin.h): a failed
 * attempt's hint replaces the retry policy's delay for the next attempt
 * (shorter or longer than the backoff), only for the attempt that gave it;
 * it never adds a retry (permanent failures, non_retryable codes,
 * max_attempts), a hint past the task's deadline fails the task at once
 * with the attempt's error, a cancel during the wait ends it, and invalid
 * hints are refused. Driven through the public host API with the
 * retry_hint test plugin (tests/plugins/retry_hint.c), whose own policy
 * backs off 60 s: a retry within seconds shows the hint set the delay.
 *
 * Delays are checked two ways: the RETRY event's retry_delay_s (exact) and
 * the wait the plugin itself measured between the failed attempt's end and
 * the next one's start (at least the hint; no upper bound on a wall time,
 * as the machine may be loaded).
 *
 * Threads: the test thread, and Apex's runtime thread running the
 * recorder (LOOP delivery), which copies what it sees under its mutex. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"

#define HINT_SO APEX_TEST_PLUGIN_DIR "/retry_hint.so"
#define MAXN 16

typedef struct rec {
  pthread_mutex_t mu;
  double delay[MAXN]; /* each RETRY event's delay */
  size_t n_retries;
  size_t dones;
} rec_t;

static void on_event(const apex_event_t *ev, void *user) {
  rec_t *r = user;
  pthread_mutex_lock(&r->mu);
  if (ev->type == APEX_EVENT_RETRY && r->n_retries < MAXN) r->delay[r->n_retries++] = ev->retry_delay_s;
  if (ev->type == APEX_EVENT_DONE) r->dones++;
  pthread_mutex_unlock(&r->mu);
}

typedef struct fx {
  rec_t rec;
  apex_manager_t *m;
} fx_t;

static int setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(pthread_mutex_init(&f->rec.mu, NULL), 0);
  apex_manager_config_t cfg = base_config(2);
  cfg.on_event = on_event;
  cfg.event_user = &f->rec;
  cfg.event_mask = APEX_EVENT_RETRY | APEX_EVENT_DONE;
  assert_int_equal(apex_manager_new(&cfg, &f->m), APEX_OK);
  load_ok(f->m, HINT_SO);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx_t *f = *state;
  assert_int_equal(apex_manager_destroy(f->m, 5000), APEX_OK);
  pthread_mutex_destroy(&f->rec.mu);
  free(f);
  return 0;
}

static size_t n_retries(fx_t *f) {
  pthread_mutex_lock(&f->rec.mu);
  size_t n = f->rec.n_retries;
  pthread_mutex_unlock(&f->rec.mu);
  return n;
}

static size_t dones(fx_t *f) {
  pthread_mutex_lock(&f->rec.mu);
  size_t n = f->rec.dones;
  pthread_mutex_unlock(&f->rec.mu);
  return n;
}

/* Asserts the task ended in state with the error code (APEX_OK: none) after
 * `attempts` attempts, and waits for its DONE event: every event of the
 * task has then been recorded (DONE is its last), so the test thread may
 * read the recorder (the lock taken by dones() orders those writes). */
static void assert_end(fx_t *f, apex_task_t *t, apex_task_state_t state, int code,
                       uint32_t attempts) {
  AWAIT(dones(f) == 1, PROMPT_MS);
  if (apex_task_state(t) != state)
    print_error("state %s\n", apex_task_state_name(apex_task_state(t)));
  assert_int_equal(apex_task_state(t), state);
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(e ? apex_error_code(e) : APEX_OK, code);
  apex_error_unref(e);
  assert_int_equal(apex_task_attempts(t), attempts);
}

/* Returns: the plugin's own measure of the wait before the successful
 * attempt (its result's waited_ms): from the end of the failed attempt's
 * handler to the start of the next one's, so at least the retry delay,
 * however late the events reach this test. */
static double waited_ms(apex_task_t *t) {
  json_t *r = apex_task_result(t);
  assert_non_null(r);
  double ms = json_number_value(json_object_get(r, "waited_ms"));
  json_decref(r);
  return ms;
}

/* A float-stored hint reads back within a microsecond of what was given. */
static void assert_delay(double got, double want) { assert_true(fabs(got - want) < 1e-6); }

static void test_hint_shorter_than_the_backoff_replaces_it(void **state) {
  fx_t *f = *state;
  apex_submit_opts_t o = opts_timeout(30);
  apex_task_t *t =
      submit_json(f->m, "retry_hint", "fail", "{\"succeed_on\": 2, \"hint_s\": 0.3}", &o);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK); /* the policy alone: 60 s */
  assert_end(f, t, APEX_TASK_SUCCEEDED, APEX_OK, 2);
  assert_int_equal(f->rec.n_retries, 1);
  assert_delay(f->rec.delay[0], 0.3);
  double waited = waited_ms(t);
  print_message("attempt 2 started %.1f ms after attempt 1 ended (hint 300 ms)\n", waited);
  assert_true(waited >= 300.0);
  apex_task_release(t);
}

static void test_hint_longer_than_the_backoff_replaces_it(void **state) {
  fx_t *f = *state;
  apex_retry_policy_t p = {.max_attempts = 3, .initial_interval_s = 0.01, .backoff_coefficient = 1};
  apex_submit_opts_t o = opts_timeout(30);
  o.retry = &p;
  apex_task_t *t =
      submit_json(f->m, "retry_hint", "fail", "{\"succeed_on\": 2, \"hint_s\": 1.0}", &o);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  assert_end(f, t, APEX_TASK_SUCCEEDED, APEX_OK, 2);
  assert_delay(f->rec.delay[0], 1.0);
  double waited = waited_ms(t);
  print_message("attempt 2 started %.1f ms after attempt 1 ended (hint 1000 ms, policy 10 ms)\n",
                waited);
  assert_true(waited >= 1000.0);
  apex_task_release(t);
}

static void test_hint_applies_only_to_the_attempt_that_gave_it(void **state) {
  fx_t *f = *state;
  apex_retry_policy_t p = {.max_attempts = 4, .initial_interval_s = 0.05, .backoff_coefficient = 1};
  apex_submit_opts_t o = opts_timeout(30);
  o.retry = &p;
  apex_task_t *t = submit_json(f->m, "retry_hint", "fail",
                               "{\"succeed_on\": 4, \"hint_s\": 0.2, \"hint_on\": [2]}", &o);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  assert_end(f, t, APEX_TASK_SUCCEEDED, APEX_OK, 4);
  assert_int_equal(f->rec.n_retries, 3);
  assert_delay(f->rec.delay[0], 0.05); /* attempt 1: no hint, the policy's */
  assert_delay(f->rec.delay[1], 0.2);  /* attempt 2's hint */
  assert_delay(f->rec.delay[2], 0.05); /* attempt 3: none again */
  apex_task_release(t);
}

static void test_hint_zero_retries_at_once(void **state) {
  fx_t *f = *state;
  apex_submit_opts_t o = opts_timeout(30);
  apex_task_t *t = submit_json(f->m, "retry_hint", "fail", "{\"succeed_on\": 3, \"hint_s\": 0}", &o);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  assert_end(f, t, APEX_TASK_SUCCEEDED, APEX_OK, 3);
  assert_delay(f->rec.delay[0], 0);
  assert_delay(f->rec.delay[1], 0);
  apex_task_release(t);
}

static void test_hint_on_a_permanent_failure_is_not_retried(void **state) {
  fx_t *f = *state;
  apex_submit_opts_t o = opts_timeout(30);
  apex_task_t *t = submit_json(f->m, "retry_hint", "fail",
                               "{\"succeed_on\": 2, \"hint_s\": 0.01, \"code\": \"execution\"}", &o);
  wait_done(t);
  assert_end(f, t, APEX_TASK_FAILED, APEX_E_EXECUTION, 1);
  assert_int_equal(f->rec.n_retries, 0);
  apex_task_release(t);
}

static void test_hint_on_a_non_retryable_code_is_not_retried(void **state) {
  fx_t *f = *state;
  static const apex_status_t never[] = {APEX_E_TRANSIENT};
  apex_retry_policy_t p = {.max_attempts = 5, .initial_interval_s = 0.01,
                           .non_retryable = never, .n_non_retryable = 1};
  apex_submit_opts_t o = opts_timeout(30);
  o.retry = &p;
  apex_task_t *t =
      submit_json(f->m, "retry_hint", "fail", "{\"succeed_on\": 2, \"hint_s\": 0.01}", &o);
  wait_done(t);
  assert_end(f, t, APEX_TASK_FAILED, APEX_E_TRANSIENT, 1);
  assert_int_equal(f->rec.n_retries, 0);
  apex_task_release(t);
}

static void test_hint_does_not_exceed_max_attempts(void **state) {
  fx_t *f = *state;
  apex_retry_policy_t p = {.max_attempts = 2, .initial_interval_s = 60};
  apex_submit_opts_t o = opts_timeout(30);
  o.retry = &p;
  apex_task_t *t = submit_json(f->m, "retry_hint", "fail", "{\"hint_s\": 0.01}", &o);
  wait_done(t);
  assert_end(f, t, APEX_TASK_FAILED, APEX_E_TRANSIENT, 2);
  assert_int_equal(f->rec.n_retries, 1);
  apex_task_release(t);
}

static void test_hint_past_the_deadline_fails_at_once_with_the_attempts_error(void **state) {
  fx_t *f = *state;
  apex_submit_opts_t o = opts_timeout(20);
  int64_t t0 = now_ms();
  apex_task_t *t = submit_json(f->m, "retry_hint", "fail", "{\"succeed_on\": 2, \"hint_s\": 60}", &o);
  assert_int_equal(apex_task_wait(t, 15000), APEX_OK); /* not the 20 s deadline */
  int64_t took = now_ms() - t0;
  print_message("failed after %lld ms (hint 60 s, deadline 20 s)\n", (long long)took);
  assert_true(took < 10000);
  assert_end(f, t, APEX_TASK_FAILED, APEX_E_TRANSIENT, 1);
  assert_true(error_mentions(t, "attempt 1 fails on purpose"));
  assert_int_equal(f->rec.n_retries, 0);
  apex_task_release(t);
}

static void test_cancel_during_a_hinted_wait_ends_the_task(void **state) {
  fx_t *f = *state;
  apex_submit_opts_t o = opts_timeout(APEX_TIMEOUT_NONE);
  apex_task_t *t = submit_json(f->m, "retry_hint", "fail", "{\"succeed_on\": 2, \"hint_s\": 600}", &o);
  AWAIT(n_retries(f) == 1, PROMPT_MS);
  assert_delay(f->rec.delay[0], 600);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  assert_end(f, t, APEX_TASK_CANCELLED, APEX_E_CANCELLED, 1);
  apex_task_release(t);
}

static void test_hint_through_a_deferred_completion(void **state) {
  fx_t *f = *state;
  apex_submit_opts_t o = opts_timeout(30);
  apex_task_t *t = submit_json(f->m, "retry_hint", "fail",
                               "{\"succeed_on\": 2, \"hint_s\": 0.25, \"deferred\": true}", &o);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  assert_end(f, t, APEX_TASK_SUCCEEDED, APEX_OK, 2);
  assert_delay(f->rec.delay[0], 0.25);
  apex_task_release(t);
}

static void test_invalid_hints_are_refused(void **state) {
  fx_t *f = *state;
  apex_task_t *t = submit_json(f->m, "retry_hint", "bad", NULL, NULL);
  wait_done(t);
  assert_end(f, t, APEX_TASK_SUCCEEDED, APEX_OK, 1);
  json_t *r = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(r, "neg")), APEX_E_INVALID);
  assert_int_equal(json_integer_value(json_object_get(r, "nan")), APEX_E_INVALID);
  assert_int_equal(json_integer_value(json_object_get(r, "inf")), APEX_E_INVALID);
  assert_int_equal(json_integer_value(json_object_get(r, "zero")), APEX_OK);
  json_decref(r);
  apex_task_release(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
      T(test_hint_shorter_than_the_backoff_replaces_it),
      T(test_hint_longer_than_the_backoff_replaces_it),
      T(test_hint_applies_only_to_the_attempt_that_gave_it),
      T(test_hint_zero_retries_at_once),
      T(test_hint_on_a_permanent_failure_is_not_retried),
      T(test_hint_on_a_non_retryable_code_is_not_retried),
      T(test_hint_does_not_exceed_max_attempts),
      T(test_hint_past_the_deadline_fails_at_once_with_the_attempts_error),
      T(test_cancel_during_a_hinted_wait_ends_the_task),
      T(test_hint_through_a_deferred_completion),
      T(test_invalid_hints_are_refused),
#undef T
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
