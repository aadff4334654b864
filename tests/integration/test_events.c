/* Integration tests of event delivery through the public host API: LOOP
 * delivery (callbacks on Apex's runtime thread), DISPATCH delivery (a
 * pollable fd and apex_manager_dispatch on the host's thread), per-task
 * sequence numbers and order, exactly one DONE per task, the event mask,
 * per-task callbacks, and what RETRY and DONE events carry.
 *
 * A recorder copies every event it is given (under its own mutex, with a
 * condition variable to await a number of DONE events), so the assertions
 * run on the test thread after delivery. apex_manager_destroy delivers every
 * queued event before it returns, so after it the recording is complete.
 *
 * Threads: the test thread, and in LOOP mode the runtime thread that runs the
 * recorder's callback. */
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/recorder.h"


/* ----------------------------------------------------------------- helpers */


static apex_manager_config_t rec_config(rec_t *r) {
  apex_manager_config_t cfg = base_config(2);
  cfg.on_event = rec_on_event;
  cfg.event_user = r;
  return cfg;
}

static void destroy_ok(apex_manager_t *m) { assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK); }

/* ------------------------------------------------------------------- LOOP */

static void test_loop_callbacks_run_on_the_runtime_thread(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *t = submit_json(m, "testkit", "noop", NULL, NULL);
  rec_await_dones(&r, 1);
  assert_int_equal(rec_count(&r, 0, 0), 2); /* ATTEMPT, DONE */
  pthread_t self = pthread_self();
  for (size_t i = 0; i < r.n; i++) assert_false(pthread_equal(r.ev[i].thread, self));
  assert_true(pthread_equal(r.ev[0].thread, r.ev[1].thread));
  apex_task_release(t);
  destroy_ok(m);
  rec_fini(&r);
}

static void test_fd_and_dispatch_are_invalid_in_loop_mode(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  apex_manager_t *m = make_test_manager(&cfg);
  assert_int_equal(apex_manager_fd(m), APEX_E_INVALID);
  assert_int_equal(apex_manager_dispatch(m), APEX_E_INVALID);
  assert_int_equal(apex_manager_fd(NULL), APEX_E_INVALID);
  assert_int_equal(apex_manager_dispatch(NULL), APEX_E_INVALID);
  destroy_ok(m);
  rec_fini(&r);
}

/* --------------------------------------------------------------- DISPATCH */

static int fd_readable(int fd, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n = poll(&p, 1, timeout_ms);
  return n == 1 && (p.revents & POLLIN);
}

static void test_dispatch_fd_readable_only_while_events_wait(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  apex_manager_t *m = make_test_manager(&cfg);
  int fd = apex_manager_fd(m);
  assert_true(fd >= 0);
  assert_false(fd_readable(fd, 0));
  apex_task_t *t = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_true(fd_readable(fd, PROMPT_MS));
  wait_done(t);
  /* Nothing runs the callbacks but dispatch. */
  assert_int_equal(rec_count(&r, 0, 0), 0);
  int total = 0;
  while (rec_count(&r, 0, APEX_EVENT_DONE) == 0) {
    assert_true(fd_readable(fd, PROMPT_MS));
    int n = apex_manager_dispatch(m);
    assert_true(n > 0);
    total += n;
  }
  assert_int_equal(total, 2); /* ATTEMPT, DONE */
  assert_false(fd_readable(fd, 0));
  assert_int_equal(apex_manager_dispatch(m), 0);
  apex_task_release(t);
  destroy_ok(m);
  rec_fini(&r);
}

static void test_dispatch_runs_callbacks_on_the_calling_thread(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  apex_manager_t *m = make_test_manager(&cfg);
  int fd = apex_manager_fd(m);
  apex_task_t *t = submit_json(m, "example_async", "long_task", "{\"steps\": 3, \"step_ms\": 1}", NULL);
  int total = 0;
  while (rec_count(&r, 0, APEX_EVENT_DONE) == 0) {
    assert_true(fd_readable(fd, PROMPT_MS));
    int n = apex_manager_dispatch(m);
    assert_true(n >= 0);
    total += n;
  }
  assert_true(r.n >= 3);
  /* Its return counts exactly the callbacks it ran. */
  assert_int_equal(total, (int)r.n);
  pthread_t self = pthread_self();
  for (size_t i = 0; i < r.n; i++) assert_true(pthread_equal(r.ev[i].thread, self));
  apex_task_release(t);
  destroy_ok(m);
  rec_fini(&r);
}

/* ------------------------------------------------------------ sequencing */

static void test_event_seq_per_task_counts_up_by_one(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  cfg.progress_rate_hz = 1000;
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *a = submit_json(m, "example_async", "long_task", "{\"steps\": 8, \"step_ms\": 2}", NULL);
  apex_task_t *b = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 2}", NULL);
  rec_await_dones(&r, 2);
  uint64_t ids[2] = {apex_task_id(a), apex_task_id(b)};
  for (int k = 0; k < 2; k++) {
    uint64_t want = 1;
    for (size_t i = 0; i < r.n; i++)
      if (r.ev[i].task_id == ids[k]) assert_int_equal(r.ev[i].seq, want++);
    assert_true(want > 3); /* at least ATTEMPT, something, DONE */
  }
  apex_task_release(a);
  apex_task_release(b);
  destroy_ok(m);
  rec_fini(&r);
}

static void test_attempt_comes_before_progress_before_done(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *t = submit_json(m, "example_async", "long_task", "{\"steps\": 5, \"step_ms\": 2}", NULL);
  rec_await_dones(&r, 1);
  assert_true(r.n >= 3);
  assert_int_equal(r.ev[0].type, APEX_EVENT_ATTEMPT);
  assert_int_equal(r.ev[0].state, APEX_TASK_RUNNING);
  assert_int_equal(r.ev[0].attempt, 1);
  for (size_t i = 1; i + 1 < r.n; i++) assert_int_equal(r.ev[i].type, APEX_EVENT_PROGRESS);
  assert_int_equal(r.ev[r.n - 1].type, APEX_EVENT_DONE);
  assert_int_equal(r.ev[r.n - 1].state, APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  destroy_ok(m);
  rec_fini(&r);
}

static void test_each_task_gets_exactly_one_done(void **st) {
  (void)st;
  enum { N = 60 };
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *t[N];
  for (int i = 0; i < N; i++) {
    /* A mix of outcomes: success, failure, cancellation. */
    if (i % 3 == 0) t[i] = submit_json(m, "testkit", "noop", NULL, NULL);
    else if (i % 3 == 1) t[i] = submit_json(m, "hostile", "fail", NULL, NULL);
    else t[i] = submit_json(m, "hostile", "sleep", "{\"ms\": 5}", NULL);
    if (i % 3 == 2) (void)apex_task_cancel(t[i], NULL);
  }
  for (int i = 0; i < N; i++) wait_done(t[i]);
  destroy_ok(m); /* delivers every queued event before returning */
  for (int i = 0; i < N; i++) {
    assert_int_equal(rec_count(&r, apex_task_id(t[i]), APEX_EVENT_DONE), 1);
    apex_task_release(t[i]);
  }
  assert_int_equal(r.dones, N);
  rec_fini(&r);
}

static void test_event_mask_limits_delivered_types(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  cfg.event_mask = APEX_EVENT_DONE | APEX_EVENT_RETRY;
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *a = submit_json(m, "example_async", "long_task", "{\"steps\": 5, \"step_ms\": 2}", NULL);
  apex_task_t *b = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 2}", NULL);
  wait_done(a);
  wait_done(b);
  destroy_ok(m);
  assert_int_equal(rec_count(&r, 0, APEX_EVENT_ATTEMPT), 0);
  assert_int_equal(rec_count(&r, 0, APEX_EVENT_PROGRESS), 0);
  assert_int_equal(rec_count(&r, 0, APEX_EVENT_RETRY), 1);
  assert_int_equal(rec_count(&r, 0, APEX_EVENT_DONE), 2);
  assert_int_equal(r.n, 3);
  apex_task_release(a);
  apex_task_release(b);
  rec_fini(&r);
}

static void test_per_task_callback_overrides_the_managers(void **st) {
  (void)st;
  rec_t mgr, own;
  rec_init(&mgr);
  rec_init(&own);
  apex_manager_config_t cfg = rec_config(&mgr);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.on_event = rec_on_event;
  o.event_user = &own;
  apex_task_t *mine = submit_json(m, "testkit", "noop", NULL, &o);
  apex_task_t *other = submit_json(m, "testkit", "noop", NULL, NULL);
  wait_done(mine);
  wait_done(other);
  destroy_ok(m);
  assert_int_equal(own.n, 2);
  assert_int_equal(rec_count(&own, apex_task_id(mine), 0), 2);
  assert_int_equal(mgr.n, 2);
  assert_int_equal(rec_count(&mgr, apex_task_id(other), 0), 2);
  apex_task_release(mine);
  apex_task_release(other);
  rec_fini(&mgr);
  rec_fini(&own);
}

/* --------------------------------------------------------- event payloads */

static void test_retry_events_carry_error_and_delay(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_retry_policy_t p = {.max_attempts = 3, .initial_interval_s = 0.001,
                           .backoff_coefficient = 2};
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &p;
  apex_task_t *t = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 3}", &o);
  rec_await_dones(&r, 1);
  assert_int_equal(rec_count(&r, 0, APEX_EVENT_RETRY), 2);
  assert_int_equal(rec_count(&r, 0, APEX_EVENT_ATTEMPT), 3);
  const double want_delay[] = {0.001, 0.002};
  uint32_t retry = 0, attempt = 0;
  for (size_t i = 0; i < r.n; i++) {
    rec_ev_t *e = &r.ev[i];
    if (e->type == APEX_EVENT_ATTEMPT) assert_int_equal(e->attempt, ++attempt);
    if (e->type != APEX_EVENT_RETRY) continue;
    assert_int_equal(e->attempt, retry + 1); /* the attempt that failed */
    assert_int_equal(e->state, APEX_TASK_RETRY_WAIT);
    assert_int_equal(e->err_code, APEX_E_TRANSIENT);
    assert_true(fabs(e->retry_delay - want_delay[retry]) < 1e-9);
    retry++;
  }
  rec_ev_t *done = &r.ev[r.n - 1];
  assert_int_equal(done->type, APEX_EVENT_DONE);
  assert_int_equal(done->attempt, 3);
  assert_int_equal(json_integer_value(json_object_get(done->result, "attempt")), 3);
  apex_task_release(t);
  destroy_ok(m);
  rec_fini(&r);
}

static void test_done_event_carries_result_on_success(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *t = submit_json(m, "testkit", "echo", "{\"value\": {\"n\": 7}}", NULL);
  rec_await_dones(&r, 1);
  rec_ev_t *done = &r.ev[r.n - 1];
  assert_int_equal(done->type, APEX_EVENT_DONE);
  assert_int_equal(done->state, APEX_TASK_SUCCEEDED);
  assert_int_equal(done->err_code, 0);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(done->result, "value"), "n")),
                   7);
  apex_task_release(t);
  destroy_ok(m);
  rec_fini(&r);
}

static void test_done_event_carries_error_on_failure(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_config_t cfg = rec_config(&r);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *t = submit_json(m, "hostile", "fail", NULL, NULL);
  rec_await_dones(&r, 1);
  rec_ev_t *done = &r.ev[r.n - 1];
  assert_int_equal(done->type, APEX_EVENT_DONE);
  assert_int_equal(done->state, APEX_TASK_FAILED);
  assert_int_equal(done->err_code, APEX_E_EXECUTION);
  assert_null(done->result);
  apex_task_release(t);
  destroy_ok(m);
  rec_fini(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_loop_callbacks_run_on_the_runtime_thread),
      cmocka_unit_test(test_fd_and_dispatch_are_invalid_in_loop_mode),
      cmocka_unit_test(test_dispatch_fd_readable_only_while_events_wait),
      cmocka_unit_test(test_dispatch_runs_callbacks_on_the_calling_thread),
      cmocka_unit_test(test_event_seq_per_task_counts_up_by_one),
      cmocka_unit_test(test_attempt_comes_before_progress_before_done),
      cmocka_unit_test(test_each_task_gets_exactly_one_done),
      cmocka_unit_test(test_event_mask_limits_delivered_types),
      cmocka_unit_test(test_per_task_callback_overrides_the_managers),
      cmocka_unit_test(test_retry_events_carry_error_and_delay),
      cmocka_unit_test(test_done_event_carries_result_on_success),
      cmocka_unit_test(test_done_event_carries_error_on_failure),
  };
  if (getenv("APEX_TEST_FILTER")) cmocka_set_test_filter(getenv("APEX_TEST_FILTER"));
  return cmocka_run_group_tests(tests, NULL, NULL);
}
