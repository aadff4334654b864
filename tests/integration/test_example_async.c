/* Integration tests of the shipped `example_async` plugin
 * (plugins/example_async/example_async.c), loaded from the build tree and
 * driven through the public host API only: long_task's result, defaults,
 * named sub-tasks and milestones, the empty run, retries of its deliberate
 * failures, a timeout of a handler that ignores its token, cancellation
 * during a step, deferred_task's result and cancellation, and validation of
 * its params.
 *
 * Each test gets its own manager with LOOP delivery into a small recorder
 * that copies what the assertions need (sub_tasks deep-copied: jansson's
 * counts are not shared across threads) under its mutex.
 *
 * Threads: the test thread, and Apex's runtime thread running the recorder. */
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
#include "integration/recorder.h"

#define EXAMPLE_SO APEX_PLUGIN_BUILD_DIR "/example_async.so"

/* ----------------------------------------------------------------- fixture */

typedef struct fx {
  rec_t rec;
  apex_manager_t *m;
} fx_t;

static int setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  rec_init(&f->rec);
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = 2;
  cfg.log = quiet_log;
  cfg.on_event = rec_on_event;
  cfg.event_user = &f->rec;
  cfg.delivery = APEX_DELIVER_LOOP;
  assert_int_equal(apex_manager_new(&cfg, &f->m), APEX_OK);
  load_ok(f->m, EXAMPLE_SO);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx_t *f = *state;
  /* Drains: an ignore_cancel handler still sleeping is waited for. */
  assert_int_equal(apex_manager_destroy(f->m, 10000), APEX_OK);
  rec_fini(&f->rec);
  free(f);
  return 0;
}

/* ----------------------------------------------------------------- helpers */

static apex_task_t *start(fx_t *f, const char *action, const char *params,
                          const apex_submit_opts_t *opts) {
  return submit_json(f->m, "example_async", action, params, opts);
}

/* Runs to the end and awaits the DONE event, so the recording of this task
 * is complete (the final progress precedes DONE). */
static apex_task_t *run(fx_t *f, const char *action, const char *params,
                        const apex_submit_opts_t *opts) {
  apex_task_t *t = start(f, action, params, opts);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  AWAIT(rec_count(&f->rec, apex_task_id(t), APEX_EVENT_DONE) == 1, PROMPT_MS);
  return t;
}

/* Asserts t succeeded with result equal to the JSON text want. */
static void assert_result(apex_task_t *t, const char *want) {
  apex_error_t *e = apex_task_error(t);
  if (e) print_error("task error: %s\n", apex_error_message(e));
  apex_error_unref(e);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t), *w = json_loads(want, 0, NULL);
  assert_non_null(r);
  assert_non_null(w);
  if (!json_equal(r, w)) {
    char *s = json_dumps(r, JSON_SORT_KEYS);
    print_error("result %s, want %s\n", s ? s : "?", want);
    free(s);
  }
  assert_true(json_equal(r, w));
  json_decref(r);
  json_decref(w);
}

/* Asserts t ended in state with code and a message containing part. */
static void assert_ended(apex_task_t *t, apex_task_state_t state, int code, const char *part) {
  assert_string_equal(apex_task_state_name(apex_task_state(t)), apex_task_state_name(state));
  apex_error_t *e = apex_task_error(t);
  assert_non_null(e);
  if (apex_error_code(e) != code || !strstr(apex_error_message(e), part))
    print_error("error %s: %s\n", apex_status_name(apex_error_code(e)), apex_error_message(e));
  assert_int_equal(apex_error_code(e), code);
  assert_non_null(strstr(apex_error_message(e), part));
  apex_error_unref(e);
}

/* The last PROGRESS event of task id, copied (sub_tasks not kept). */
static rec_ev_t last_progress(fx_t *f, uint64_t id) {
  rec_ev_t last = {.pct = -1};
  pthread_mutex_lock(&f->rec.mu);
  for (size_t i = 0; i < f->rec.n; i++)
    if (f->rec.ev[i].task_id == id && f->rec.ev[i].type == APEX_EVENT_PROGRESS) {
      last = f->rec.ev[i];
      last.sub_tasks = NULL;
    }
  pthread_mutex_unlock(&f->rec.mu);
  return last;
}

/* -------------------------------------------------------------- long_task */

static void test_long_task_result_names_steps_and_attempt(void **state) {
  fx_t *f = *state;
  apex_task_t *t = run(f, "long_task", "{\"steps\": 3, \"step_ms\": 1}", NULL);
  assert_result(t, "{\"steps\": 3, \"attempt\": 1}");
  rec_ev_t last = last_progress(f, apex_task_id(t));
  assert_true(last.pct == 100.0);
  assert_string_equal(last.status, "completed");
  assert_string_equal(last.msg, "step 3/3");
  apex_task_release(t);
}

static void test_long_task_defaults_are_ten_steps_of_100_ms(void **state) {
  fx_t *f = *state;
  int64_t t0 = now_ms();
  apex_task_t *t = run(f, "long_task", NULL, NULL);
  int64_t took = now_ms() - t0;
  assert_result(t, "{\"steps\": 10, \"attempt\": 1}");
  assert_true(took >= 1000 - 20); /* ten sleeps of 100 ms (clock granularity aside) */
  apex_task_release(t);
}

/* Asserts the sub_tasks array names fetch, parse, transform, each weight 1. */
static void assert_three_named_sub_tasks(const json_t *subs) {
  static const char *const names[] = {"fetch", "parse", "transform"};
  assert_int_equal(json_array_size(subs), 3);
  for (size_t j = 0; j < 3; j++) {
    const json_t *s = json_array_get(subs, j);
    assert_string_equal(json_string_value(json_object_get(s, "name")), names[j]);
    assert_int_equal(json_integer_value(json_object_get(s, "weight")), 1);
    assert_true(json_is_number(json_object_get(s, "percentage")));
  }
}

static void test_long_task_sub_tasks_are_named_with_a_milestone_each(void **state) {
  fx_t *f = *state;
  apex_task_t *t = run(f, "long_task", "{\"steps\": 6, \"step_ms\": 1, \"sub_tasks\": 3}", NULL);
  assert_result(t, "{\"steps\": 6, \"attempt\": 1}");
  uint64_t id = apex_task_id(t);
  static const char *const want_milestones[] = {"sub-task fetch done", "sub-task parse done",
                                                "sub-task transform done"};
  size_t milestones = 0, progress = 0;
  rec_ev_t last = {.pct = -1};
  pthread_mutex_lock(&f->rec.mu);
  for (size_t i = 0; i < f->rec.n; i++) {
    rec_ev_t *e = &f->rec.ev[i];
    if (e->task_id != id || e->type != APEX_EVENT_PROGRESS) continue;
    progress++;
    assert_three_named_sub_tasks(e->sub_tasks);
    if (strcmp(e->status, "milestone_reached") == 0) {
      assert_true(milestones < 3);
      assert_string_equal(e->msg, want_milestones[milestones]);
      /* the sub-task this milestone is about is complete */
      const json_t *s = json_array_get(e->sub_tasks, milestones);
      assert_true(json_number_value(json_object_get(s, "percentage")) == 100.0);
      assert_string_equal(json_string_value(json_object_get(s, "status")), "completed");
      milestones++;
    }
    last = *e;
  }
  pthread_mutex_unlock(&f->rec.mu);
  assert_int_equal(milestones, 3); /* never coalesced away */
  assert_true(progress > milestones);
  assert_true(last.pct == 100.0);
  assert_string_equal(last.status, "completed");
  apex_task_release(t);
}

static void test_long_task_of_zero_steps_succeeds_at_once_with_a_full_update(void **state) {
  fx_t *f = *state;
  apex_task_t *t = run(f, "long_task", "{\"steps\": 0, \"step_ms\": 60000}", NULL);
  assert_result(t, "{\"steps\": 0, \"attempt\": 1}");
  assert_int_equal(rec_count(&f->rec, apex_task_id(t), APEX_EVENT_PROGRESS), 1);
  rec_ev_t last = last_progress(f, apex_task_id(t));
  assert_true(last.pct == 100.0);
  assert_string_equal(last.status, "completed");
  apex_task_release(t);
}

static apex_retry_policy_t fast_retry(uint32_t attempts) {
  apex_retry_policy_t p = {.max_attempts = attempts, .initial_interval_s = 0.01,
                           .backoff_coefficient = 1.0};
  return p;
}

static void test_long_task_failing_twice_succeeds_on_the_third_attempt(void **state) {
  fx_t *f = *state;
  apex_retry_policy_t p = fast_retry(3);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &p;
  apex_task_t *t =
      run(f, "long_task", "{\"steps\": 2, \"step_ms\": 1, \"fail_attempts\": 2}", &o);
  /* Each retry resumed from the step the attempt before checkpointed: the
   * third found both steps done. */
  assert_result(t, "{\"steps\": 2, \"attempt\": 3, \"resumed_at\": 2}");
  assert_int_equal(apex_task_attempts(t), 3);
  assert_int_equal(rec_count(&f->rec, apex_task_id(t), APEX_EVENT_RETRY), 2);
  apex_task_release(t);
}

static void test_long_task_failing_twice_with_two_attempts_fails_transient(void **state) {
  fx_t *f = *state;
  apex_retry_policy_t p = fast_retry(2);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &p;
  apex_task_t *t =
      run(f, "long_task", "{\"steps\": 2, \"step_ms\": 1, \"fail_attempts\": 2}", &o);
  assert_ended(t, APEX_TASK_FAILED, APEX_E_TRANSIENT, "attempt 2 of the first 2 fails on purpose");
  assert_int_equal(apex_task_attempts(t), 2);
  apex_task_release(t);
}

static void test_long_task_ignoring_cancel_times_out_before_the_handler_ends(void **state) {
  fx_t *f = *state;
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = 0.05;
  int64_t t0 = now_ms();
  apex_task_t *t =
      start(f, "long_task", "{\"steps\": 1, \"step_ms\": 4000, \"ignore_cancel\": true}", &o);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  int64_t took = now_ms() - t0;
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(f->m, &s), APEX_OK);
  assert_ended(t, APEX_TASK_TIMED_OUT, APEX_E_TIMEOUT, "timed out");
  /* Read well inside the handler's 4 s (the task ended after ~50 ms): the
   * margin is seconds, generous on a loaded machine. */
  assert_true(took < 2000);
  assert_int_equal(s.running, 1); /* the handler sleeps on, past the outcome */
  AWAIT(apex_manager_stats_v2(f->m, &s) == APEX_OK && s.running == 0, 10000);
  assert_true(now_ms() - t0 >= 4000 - 20);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT); /* its late success is ignored */
  apex_task_release(t);
}

static void test_long_task_cancelled_during_a_step_names_the_step(void **state) {
  fx_t *f = *state;
  apex_task_t *t = start(f, "long_task", "{\"steps\": 3, \"step_ms\": 60000}", NULL);
  AWAIT(rec_count(&f->rec, apex_task_id(t), APEX_EVENT_ATTEMPT) == 1, PROMPT_MS);
  int64_t t0 = now_ms();
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_true(now_ms() - t0 < PROMPT_MS);
  assert_ended(t, APEX_TASK_CANCELLED, APEX_E_CANCELLED, "cancelled after step 0");
  apex_task_release(t);
}

static void test_long_task_cancelled_in_a_later_step_names_that_step(void **state) {
  fx_t *f = *state;
  apex_task_t *t = start(f, "long_task", "{\"steps\": 3, \"step_ms\": 500}", NULL);
  /* Step 0 reported: the handler sleeps through step 1 for ~500 ms now. */
  AWAIT(rec_count(&f->rec, apex_task_id(t), APEX_EVENT_PROGRESS) >= 1, 5000);
  assert_int_equal(apex_task_cancel(t, "operator"), APEX_OK);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_ended(t, APEX_TASK_CANCELLED, APEX_E_CANCELLED, "cancelled after step 1");
  apex_task_release(t);
}

/* ---------------------------------------------------------- deferred_task */

static void test_deferred_task_completes_after_its_delay(void **state) {
  fx_t *f = *state;
  int64_t t0 = now_ms();
  apex_task_t *t = run(f, "deferred_task", "{\"delay_ms\": 50}", NULL);
  assert_result(t, "{\"delayed_ms\": 50}");
  assert_true(now_ms() - t0 >= 50 - 5);
  apex_task_release(t);
}

static void test_deferred_task_is_cancelled_promptly(void **state) {
  fx_t *f = *state;
  apex_task_t *t = start(f, "deferred_task", "{\"delay_ms\": 60000}", NULL);
  AWAIT(rec_count(&f->rec, apex_task_id(t), APEX_EVENT_ATTEMPT) == 1, PROMPT_MS);
  int64_t t0 = now_ms();
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_true(now_ms() - t0 < PROMPT_MS);
  assert_ended(t, APEX_TASK_CANCELLED, APEX_E_CANCELLED, "cancelled (user)");
  apex_task_release(t);
}

/* ------------------------------------------------------------ validation */

/* Asserts a submit of long_task with params is refused naming param. */
static void assert_invalid(fx_t *f, const char *params, const char *param) {
  json_t *p = json_loads(params, 0, NULL);
  assert_non_null(p);
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(f->m, "example_async", "long_task", p, NULL, &t, &err);
  json_decref(p);
  assert_int_equal(rc, APEX_E_INVALID_PARAMS);
  assert_null(t);
  assert_non_null(err);
  assert_int_equal(apex_error_code(err), APEX_E_INVALID_PARAMS);
  if (!strstr(apex_error_message(err), param))
    print_error("%s: %s\n", params, apex_error_message(err));
  assert_non_null(strstr(apex_error_message(err), param));
  apex_error_unref(err);
}

static void test_negative_steps_are_invalid_params(void **state) {
  assert_invalid(*state, "{\"steps\": -1}", "steps");
}

static void test_too_many_sub_tasks_are_invalid_params(void **state) {
  assert_invalid(*state, "{\"sub_tasks\": 65}", "sub_tasks");
}

static void test_a_string_step_ms_is_invalid_params(void **state) {
  assert_invalid(*state, "{\"step_ms\": \"x\"}", "step_ms");
}

int main(void) {
  const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
      T(test_long_task_result_names_steps_and_attempt),
      T(test_long_task_defaults_are_ten_steps_of_100_ms),
      T(test_long_task_sub_tasks_are_named_with_a_milestone_each),
      T(test_long_task_of_zero_steps_succeeds_at_once_with_a_full_update),
      T(test_long_task_failing_twice_succeeds_on_the_third_attempt),
      T(test_long_task_failing_twice_with_two_attempts_fails_transient),
      T(test_long_task_ignoring_cancel_times_out_before_the_handler_ends),
      T(test_long_task_cancelled_during_a_step_names_the_step),
      T(test_long_task_cancelled_in_a_later_step_names_that_step),
      T(test_deferred_task_completes_after_its_delay),
      T(test_deferred_task_is_cancelled_promptly),
      T(test_negative_steps_are_invalid_params),
      T(test_too_many_sub_tasks_are_invalid_params),
      T(test_a_string_step_ms_is_invalid_params),
#undef T
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
