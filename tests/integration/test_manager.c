/* Integration tests of the execution engine through the public host API
 * (apex/apex.h) only: submitting and waiting, submit and load errors,
 * cancellation, timeouts and stuck workers, retries, late and abusive
 * completions, releasing handles, and shutdown.
 *
 * Plugins: testkit and hostile from APEX_TEST_PLUGIN_DIR, example_async from
 * APEX_PLUGIN_BUILD_DIR. Each test makes its own manager (most need a
 * particular config) and destroys it, so a failure in one does not leak state
 * into the next.
 *
 * Threads: the tests run on cmocka's thread; the engine's threads run the
 * handlers. Nothing here sleeps for correctness: conditions are awaited with
 * apex_task_wait or by polling a state or a counter against a generous
 * deadline (AWAIT), or, for a manager freed after destroy, its threads' end. */
#include <math.h>
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
#include "integration/gate.h"


static apex_manager_t *make_default(void) {
  apex_manager_config_t cfg = base_config(2);
  return make_test_manager(&cfg);
}

/* Tries a submit that must fail; returns its code, the error in *err. */
static int submit_fail(apex_manager_t *m, const char *plugin, const char *action,
                       const char *params_json, const apex_submit_opts_t *opts,
                       apex_error_t **err) {
  json_t *params = params_json ? json_loads(params_json, 0, NULL) : NULL;
  if (params_json) assert_non_null(params);
  apex_task_t *t = (apex_task_t *)&t; /* must be reset to NULL */
  *err = NULL;
  int rc = apex_manager_submit(m, plugin, action, params, opts, &t, err);
  json_decref(params);
  assert_null(t);
  return rc;
}

static void await_state(apex_task_t *t, apex_task_state_t s) {
  AWAIT(apex_task_state(t) == s, PROMPT_MS);
}

static int error_code_of(apex_task_t *t) {
  apex_error_t *e = apex_task_error(t);
  int code = e ? apex_error_code(e) : APEX_OK;
  apex_error_unref(e);
  return code;
}

/* As error_mentions, without printing on a miss. */
static int error_mentions_quietly(apex_task_t *t, const char *needle) {
  apex_error_t *e = apex_task_error(t);
  int found = e && strstr(apex_error_message(e), needle) != NULL;
  apex_error_unref(e);
  return found;
}

static void destroy_ok(apex_manager_t *m) { assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK); }

/* ------------------------------------------------------ submit and wait */

static void test_blocking_task_result_is_its_output(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "testkit", "echo", "{\"value\": {\"a\": 1}}", NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  json_t *want = json_pack("{s:{s:i}}", "value", "a", 1);
  assert_true(json_equal(r, want));
  assert_null(apex_task_error(t));
  assert_int_equal(apex_task_attempts(t), 1);
  json_decref(want);
  json_decref(r);
  apex_task_release(t);
  destroy_ok(m);
}

static void test_deferred_task_completed_in_handler_succeeds(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "testkit", "noop_deferred", NULL, NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_true(json_is_null(r)); /* no result set: JSON null */
  json_decref(r);
  apex_task_release(t);
  destroy_ok(m);
}

static void test_deferred_task_completed_from_plugin_thread_succeeds(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "example_async", "deferred_task", "{\"delay_ms\": 20}", NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(r, "delayed_ms")), 20);
  json_decref(r);
  apex_task_release(t);
  destroy_ok(m);
}

static void test_execute_returns_result(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  json_t *params = json_pack("{s:{s:s}}", "value", "k", "v");
  json_t *result = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_execute(m, "testkit", "echo", params, NULL, &result, &err),
                   APEX_OK);
  assert_null(err);
  assert_true(json_equal(result, params));
  json_decref(result);
  json_decref(params);
  destroy_ok(m);
}

static void test_execute_returns_task_error(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  json_t *params = json_pack("{s:s, s:s}", "code", "execution", "message", "boom");
  json_t *result = (json_t *)&result;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_execute(m, "hostile", "fail", params, NULL, &result, &err),
                   APEX_E_EXECUTION);
  assert_null(result);
  assert_int_equal(apex_error_code(err), APEX_E_EXECUTION);
  assert_string_equal(apex_error_message(err), "boom");
  assert_string_equal(apex_error_plugin(err), "hostile");
  assert_string_equal(apex_error_action(err), "fail");
  apex_error_unref(err);
  json_decref(params);
  destroy_ok(m);
}

static void test_task_ids_increase_by_one(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *a = submit_json(m, "testkit", "noop", NULL, NULL);
  apex_task_t *b = submit_json(m, "testkit", "noop", NULL, NULL);
  apex_task_t *c = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_true(apex_task_id(a) >= 1);
  assert_int_equal(apex_task_id(b), apex_task_id(a) + 1);
  assert_int_equal(apex_task_id(c), apex_task_id(b) + 1);
  wait_done(a);
  wait_done(b);
  wait_done(c);
  apex_task_release(a);
  apex_task_release(b);
  apex_task_release(c);
  destroy_ok(m);
}

static void test_attempts_counted_across_retries(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  /* count_attempts' default policy retries up to 5 times, quickly. */
  apex_task_t *t = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 3}", NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_attempts(t), 3);
  json_t *r = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(r, "attempt")), 3);
  json_decref(r);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.attempts, 3);
  assert_int_equal(s.retries, 2);
  apex_task_release(t);
  destroy_ok(m);
}

/* ---------------------------------------------------------- submit errors */

static void test_submit_unknown_plugin_is_plugin_not_found(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_error_t *err;
  assert_int_equal(submit_fail(m, "no_such_plugin", "noop", NULL, NULL, &err),
                   APEX_E_PLUGIN_NOT_FOUND);
  assert_int_equal(apex_error_code(err), APEX_E_PLUGIN_NOT_FOUND);
  assert_non_null(strstr(apex_error_message(err), "no_such_plugin"));
  apex_error_unref(err);
  assert_int_equal(stats_of(m).submitted, 0);
  destroy_ok(m);
}

static void test_submit_unknown_action_lists_actions(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_error_t *err;
  assert_int_equal(submit_fail(m, "testkit", "no_such_action", NULL, NULL, &err),
                   APEX_E_ACTION_NOT_FOUND);
  assert_int_equal(apex_error_code(err), APEX_E_ACTION_NOT_FOUND);
  assert_string_equal(apex_error_plugin(err), "testkit");
  assert_string_equal(apex_error_action(err), "no_such_action");
  assert_non_null(strstr(apex_error_message(err), "noop, echo, noop_deferred, count_attempts, "
                                                  "params_all"));
  apex_error_unref(err);
  destroy_ok(m);
}

static void test_submit_out_of_bounds_param_names_it(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_error_t *err;
  assert_int_equal(submit_fail(m, "testkit", "params_all", "{\"int\": 500}", NULL, &err),
                   APEX_E_INVALID_PARAMS);
  assert_int_equal(apex_error_code(err), APEX_E_INVALID_PARAMS);
  assert_non_null(strstr(apex_error_message(err), "'int'"));
  apex_error_unref(err);
  destroy_ok(m);
}

static void test_submit_unknown_param_names_it(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_error_t *err;
  assert_int_equal(submit_fail(m, "testkit", "params_all", "{\"bogus\": 1}", NULL, &err),
                   APEX_E_INVALID_PARAMS);
  assert_non_null(strstr(apex_error_message(err), "'bogus'"));
  apex_error_unref(err);
  destroy_ok(m);
}

static void test_submit_null_arguments_are_invalid(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_submit(NULL, "testkit", "noop", NULL, NULL, &t, &err),
                   APEX_E_INVALID);
  assert_int_equal(apex_error_code(err), APEX_E_INVALID);
  apex_error_unref(err);
  assert_int_equal(apex_manager_submit(m, NULL, "noop", NULL, NULL, &t, NULL), APEX_E_INVALID);
  assert_int_equal(apex_manager_submit(m, "testkit", NULL, NULL, NULL, &t, NULL), APEX_E_INVALID);
  assert_int_equal(apex_manager_submit(m, "testkit", "noop", NULL, NULL, NULL, NULL),
                   APEX_E_INVALID);
  assert_null(t);
  assert_int_equal(stats_of(m).submitted, 0);
  destroy_ok(m);
}

static void test_submit_nan_timeout_is_invalid(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_submit_opts_t o = opts_timeout(NAN);
  apex_error_t *err;
  assert_int_equal(submit_fail(m, "testkit", "noop", NULL, &o, &err), APEX_E_INVALID);
  assert_non_null(strstr(apex_error_message(err), "timeout"));
  apex_error_unref(err);
  assert_int_equal(stats_of(m).submitted, 0);
  destroy_ok(m);
}

static void test_submit_beyond_max_queued_is_queue_full(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  cfg.max_queued = 1;
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *busy = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", NULL);
  apex_error_t *err;
  assert_int_equal(submit_fail(m, "testkit", "noop", NULL, NULL, &err), APEX_E_QUEUE_FULL);
  assert_int_equal(apex_error_code(err), APEX_E_QUEUE_FULL);
  apex_error_unref(err);
  /* Room again once the first one ended. (The cancel's code is the subject
   * of test_cancel_of_running_task_returns_ok, not of this test.) */
  (void)apex_task_cancel(busy, NULL);
  wait_done(busy);
  apex_task_t *t = submit_json(m, "testkit", "noop", NULL, NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  apex_task_release(busy);
  destroy_ok(m);
}

/* ------------------------------------------------------------ load errors */

static void assert_still_usable(apex_manager_t *m) {
  assert_int_equal(apex_manager_plugin_count(m), 3);
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_execute(m, "testkit", "noop", NULL, NULL, NULL, &err), APEX_OK);
  assert_null(err);
}

static void test_load_duplicate_plugin_fails_and_keeps_manager(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_load(m, APEX_TEST_PLUGIN_DIR "/testkit.so", &err),
                   APEX_E_PLUGIN_LOAD);
  assert_int_equal(apex_error_code(err), APEX_E_PLUGIN_LOAD);
  assert_non_null(strstr(apex_error_message(err), "duplicate"));
  apex_error_unref(err);
  assert_still_usable(m);
  destroy_ok(m);
}

static void test_load_missing_file_fails_and_keeps_manager(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_load(m, APEX_TEST_PLUGIN_DIR "/no_such_file.so", &err),
                   APEX_E_PLUGIN_LOAD);
  assert_non_null(strstr(apex_error_message(err), "no_such_file.so"));
  apex_error_unref(err);
  assert_still_usable(m);
  destroy_ok(m);
}

static void test_load_named_unknown_says_where_it_searched(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  assert_int_equal(apex_manager_add_plugin_path(m, APEX_TEST_PLUGIN_DIR), APEX_OK);
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_load_named(m, "no_such_plugin", &err), APEX_E_PLUGIN_NOT_FOUND);
  assert_int_equal(apex_error_code(err), APEX_E_PLUGIN_NOT_FOUND);
  assert_non_null(strstr(apex_error_message(err), "searched"));
  assert_non_null(strstr(apex_error_message(err), APEX_TEST_PLUGIN_DIR));
  apex_error_unref(err);
  assert_still_usable(m);
  destroy_ok(m);
}

/* ----------------------------------------------------------------- cancel */

static void test_cancel_queued_task_ends_at_once_and_never_runs(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *busy = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", NULL);
  await_state(busy, APEX_TASK_RUNNING);
  apex_task_t *q = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 1}", NULL);
  assert_int_equal(apex_task_state(q), APEX_TASK_QUEUED);
  assert_int_equal(apex_task_cancel(q, NULL), APEX_OK);
  /* No wait: a queued task has no handler to notice, so it ends now. */
  assert_int_equal(apex_task_state(q), APEX_TASK_CANCELLED);
  assert_int_equal(error_code_of(q), APEX_E_CANCELLED);
  /* Free the only worker; a task run after it proves the queue moved past q. */
  (void)apex_task_cancel(busy, NULL);
  wait_done(busy);
  assert_int_equal(apex_manager_execute(m, "testkit", "noop", NULL, NULL, NULL, NULL), APEX_OK);
  assert_int_equal(apex_task_attempts(q), 0);
  assert_int_equal(apex_task_state(q), APEX_TASK_CANCELLED);
  apex_task_release(q);
  apex_task_release(busy);
  destroy_ok(m);
}

static void test_cancel_running_cooperative_task_ends_promptly(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", NULL);
  await_state(t, APEX_TASK_RUNNING);
  int64_t t0 = now_ms();
  assert_int_equal(apex_task_cancel(t, "test"), APEX_OK);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  assert_true(now_ms() - t0 < PROMPT_MS);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  assert_int_equal(error_code_of(t), APEX_E_CANCELLED);
  assert_string_equal(apex_token_reason(apex_task_token(t)), "test");
  apex_task_release(t);
  destroy_ok(m);
}

/* The first cancel of a running task is the one that cancels it: APEX_OK,
 * however fast its handler reacts. Repeated because the handler's reaction
 * races with the end of apex_task_cancel. */
static void test_cancel_of_running_task_returns_ok(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  int already = 0;
  for (int i = 0; i < 20; i++) {
    apex_task_t *t = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", NULL);
    await_state(t, APEX_TASK_RUNNING);
    int rc = apex_task_cancel(t, NULL);
    if (rc != APEX_OK) already++;
    wait_done(t);
    assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
    apex_task_release(t);
  }
  destroy_ok(m);
  if (already) print_error("%d of 20 first cancels of a running task were not APEX_OK\n", already);
  assert_int_equal(already, 0);
}

static void test_cancel_twice_is_already(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", NULL);
  await_state(t, APEX_TASK_RUNNING);
  assert_int_equal(apex_task_cancel(t, "first"), APEX_OK);
  assert_int_equal(apex_task_cancel(t, "second"), APEX_E_ALREADY);
  wait_done(t);
  assert_string_equal(apex_token_reason(apex_task_token(t)), "first");
  apex_task_release(t);
  destroy_ok(m);
}

static void test_cancel_after_success_is_already(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "testkit", "noop", NULL, NULL);
  wait_done(t);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_E_ALREADY);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_null(apex_task_error(t));
  apex_task_release(t);
  destroy_ok(m);
}

static apex_submit_opts_t opts_parent(apex_token_t *parent) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.parent = parent;
  return o;
}

static void test_parent_cancel_ends_queued_child_at_once(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  /* The only worker is busy with a task that is not the parent's child. */
  apex_task_t *busy = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", NULL);
  await_state(busy, APEX_TASK_RUNNING);
  apex_token_t *parent = NULL;
  assert_int_equal(apex_token_new(&parent), APEX_OK);
  apex_submit_opts_t o = opts_parent(parent);
  apex_task_t *child = submit_json(m, "testkit", "noop", NULL, &o);
  assert_int_equal(apex_task_state(child), APEX_TASK_QUEUED);
  assert_int_equal(apex_token_cancel(parent, "boss"), APEX_OK);
  /* Ended within the parent's cancel call. */
  assert_int_equal(apex_task_state(child), APEX_TASK_CANCELLED);
  assert_int_equal(error_code_of(child), APEX_E_CANCELLED);
  assert_string_equal(apex_token_reason(apex_task_token(child)), "parent");
  assert_int_equal(apex_task_state(busy), APEX_TASK_RUNNING);
  (void)apex_task_cancel(busy, NULL);
  wait_done(busy);
  assert_int_equal(apex_task_attempts(child), 0);
  apex_task_release(child);
  apex_task_release(busy);
  apex_token_unref(parent);
  destroy_ok(m);
}

/* The parent's cancel may end a queued child whose handle the host already
 * released: the child is freed inside the parent token's callback, which
 * must touch it no more (ASan saw a read after free there). Stats tell it
 * ended. */
static void test_parent_cancel_ends_released_queued_children(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *busy = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", NULL);
  await_state(busy, APEX_TASK_RUNNING);
  apex_token_t *parent = NULL;
  assert_int_equal(apex_token_new(&parent), APEX_OK);
  apex_submit_opts_t o = opts_parent(parent);
  for (int i = 0; i < 20; i++) apex_task_release(submit_json(m, "testkit", "noop", NULL, &o));
  assert_int_equal(apex_token_cancel(parent, "boss"), APEX_OK);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.cancelled, 20);
  assert_int_equal(s.queued, 0);
  (void)apex_task_cancel(busy, NULL);
  wait_done(busy);
  apex_task_release(busy);
  apex_token_unref(parent);
  destroy_ok(m);
}

static void test_parent_cancel_ends_running_child(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_token_t *parent = NULL;
  assert_int_equal(apex_token_new(&parent), APEX_OK);
  apex_submit_opts_t o = opts_parent(parent);
  apex_task_t *child = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", &o);
  await_state(child, APEX_TASK_RUNNING);
  int64_t t0 = now_ms();
  assert_int_equal(apex_token_cancel(parent, "boss"), APEX_OK);
  assert_int_equal(apex_task_wait(child, PROMPT_MS), APEX_OK);
  assert_true(now_ms() - t0 < PROMPT_MS);
  assert_int_equal(apex_task_state(child), APEX_TASK_CANCELLED);
  assert_int_equal(error_code_of(child), APEX_E_CANCELLED);
  assert_string_equal(apex_token_reason(apex_task_token(child)), "parent");
  apex_task_release(child);
  apex_token_unref(parent);
  destroy_ok(m);
}

/* A queued child stays queued while its running sibling reacts to the same
 * parent cancel: the worker the sibling frees must not start it. Repeated
 * because the siblings' tokens are cancelled one after the other. */
static void test_parent_cancel_ends_queued_child_behind_running_sibling(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  int ran = 0;
  for (int i = 0; i < 20; i++) {
    apex_token_t *parent = NULL;
    assert_int_equal(apex_token_new(&parent), APEX_OK);
    apex_submit_opts_t o = opts_parent(parent);
    apex_task_t *running = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", &o);
    await_state(running, APEX_TASK_RUNNING);
    apex_task_t *queued = submit_json(m, "testkit", "noop", NULL, &o);
    assert_int_equal(apex_token_cancel(parent, "boss"), APEX_OK);
    wait_done(running);
    wait_done(queued);
    if (apex_task_state(queued) != APEX_TASK_CANCELLED || apex_task_attempts(queued) != 0) ran++;
    apex_task_release(queued);
    apex_task_release(running);
    apex_token_unref(parent);
  }
  destroy_ok(m);
  if (ran) print_error("%d of 20 queued children ran after their parent was cancelled\n", ran);
  assert_int_equal(ran, 0);
}

/* ---------------------------------------------------------------- timeout */

static void test_timeout_of_cooperative_task_is_timed_out(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_submit_opts_t o = opts_timeout(0.05);
  int64_t t0 = now_ms();
  apex_task_t *t = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", &o);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  assert_true(now_ms() - t0 < PROMPT_MS);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  int code = error_code_of(t);
  assert_int_equal(code, APEX_E_TIMEOUT);
  assert_int_equal(apex_status_is_execution(code), 1);
  assert_string_equal(apex_token_reason(apex_task_token(t)), "timeout");
  assert_int_equal(stats_of(m).timed_out, 1);
  apex_task_release(t);
  destroy_ok(m);
}

/* Thread stacks mapped in this process: read-write mappings of exactly the
 * default thread stack size (glibc maps the guard page beside it). A
 * thread that exited but was never joined keeps its stack mapped; glibc
 * frees joined ones beyond a small cache (40 MiB). The size is the one
 * new threads get here (from RLIMIT_STACK), not an assumed 8 MiB, so the
 * count works whatever the limit. */
static int stack_mappings(void) {
  pthread_attr_t attr;
  size_t size = 0;
  assert_int_equal(pthread_getattr_default_np(&attr), 0);
  assert_int_equal(pthread_attr_getstacksize(&attr, &size), 0);
  pthread_attr_destroy(&attr);
  FILE *f = fopen("/proc/self/maps", "r");
  assert_non_null(f);
  char line[512], perms[8];
  int n = 0;
  unsigned long lo, hi;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && hi - lo == size &&
        strncmp(perms, "rw", 2) == 0)
      n++;
  fclose(f);
  return n;
}

/* Many timeouts of deaf handlers, one after another: each strands its
 * worker and gets a replacement; once the handlers returned the pool is
 * back to its size with no dead thread kept (a long-lived host must not
 * grow by a thread stack per timeout). */
static void test_stuck_workers_are_reaped_after_their_handlers_return(void **st) {
  (void)st;
  /* One worker: each next task finds it stranded, so a replacement starts
   * (with two, the idle one would take it and nothing would be tested). */
  apex_manager_config_t cfg = base_config(1);
  cfg.max_stuck_workers = 64;
  apex_manager_t *m = make_test_manager(&cfg);
  int base = stack_mappings();
  /* The count sees this manager's threads (the worker and the runtime
   * thread), so it cannot pass by counting nothing. */
  assert_true(base >= 2);
  unsigned replacements = 0;
  enum { N = 20 };
  /* A per-attempt timeout: its clock starts with the handler, so each task
   * strands a running worker however long a loaded machine keeps it queued
   * (an overall deadline of 200 ms could fire while it waited for the
   * replacement thread, and then nothing was stranded). */
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.start_to_close_s = 0.2;
  for (int i = 0; i < N; i++) {
    apex_task_t *t = submit_json(m, "hostile", "ignore_cancel", "{\"ms\": 400}", &o);
    assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
    assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
    assert_false(error_mentions_quietly(t, "still queued"));
    if (stats_of(m).workers > cfg.workers) replacements++;
    apex_task_release(t);
  }
  /* Replacements were started (most iterations run on one). */
  assert_true(replacements >= N / 2);
  AWAIT(stats_of(m).running == 0, PROMPT_MS);
  AWAIT(stats_of(m).stuck_workers == 0, PROMPT_MS);
  AWAIT(stats_of(m).workers == cfg.workers, PROMPT_MS);
  /* One more stranded worker: its replacement's spawn reaps the exited. */
  apex_task_t *t = submit_json(m, "hostile", "ignore_cancel", "{\"ms\": 400}", &o);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  apex_task_release(t);
  apex_task_t *u = submit_json(m, "testkit", "noop", NULL, NULL);
  wait_done(u);
  apex_task_release(u);
  AWAIT(stats_of(m).running == 0 && stats_of(m).workers == cfg.workers, PROMPT_MS);
  /* Unjoined, the exited replacements would keep ~N stacks mapped. */
  int grown = stack_mappings() - base;
  if (grown > N / 3) print_error("%d more thread stacks mapped\n", grown);
  assert_true(grown <= N / 3);
  destroy_ok(m);
}

/* A huge wait timeout means "no limit", not an overflow to "already late". */
static void test_wait_with_huge_timeout_waits_for_the_end(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *t = submit_json(m, "hostile", "sleep", "{\"ms\": 100}", NULL);
  assert_int_equal(apex_task_wait(t, INT64_MAX), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  destroy_ok(m);
}

static void test_timeout_of_deaf_handler_ends_task_before_handler_returns(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  load_gate(m);
  gate_t g;
  gate_init(&g);
  apex_submit_opts_t o = opts_timeout(0.05);
  int64_t t0 = now_ms();
  /* The handler blocks deaf to its token until the gate opens. */
  apex_task_t *t = submit_json(m, "gate", "deaf_read", g.params, &o);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  assert_true(now_ms() - t0 < PROMPT_MS);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  assert_int_equal(error_code_of(t), APEX_E_TIMEOUT);
  AWAIT(stats_of(m).stuck_workers == 1, PROMPT_MS);
  apex_stats_t s = stats_of(m);
  /* No replacement thread while no queued work needs one. */
  assert_int_equal(s.workers, cfg.workers);
  assert_int_equal(s.running, 1); /* the deaf handler still owns its ctx */
  gate_open(&g);
  AWAIT(stats_of(m).running == 0 && stats_of(m).stuck_workers == 0, PROMPT_MS);
  apex_task_release(t);
  destroy_ok(m);
  gate_fini(&g);
}

static void test_replacement_worker_runs_tasks_while_one_is_stuck(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  load_gate(m);
  gate_t g;
  gate_init(&g);
  apex_submit_opts_t o = opts_timeout(0.05);
  apex_task_t *stuck = submit_json(m, "gate", "deaf_read", g.params, &o);
  wait_done(stuck);
  apex_task_t *t = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  /* ...on a replacement started for it, while the deaf handler is still
   * inside (it stays until the gate opens). */
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.stuck_workers, 1);
  assert_int_equal(s.workers, cfg.workers + 1);
  gate_open(&g);
  apex_task_release(t);
  apex_task_release(stuck);
  destroy_ok(m);
  gate_fini(&g);
}

static void test_stuck_handler_return_is_late_and_its_worker_retires(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_submit_opts_t o = opts_timeout(0.05);
  apex_task_t *t = submit_json(m, "hostile", "ignore_cancel", "{\"ms\": 300}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  AWAIT(stats_of(m).late_reports >= 1, 5000);
  /* The stuck count drops just before the open-attempt count does. */
  AWAIT(stats_of(m).stuck_workers == 0 && stats_of(m).workers == cfg.workers &&
            stats_of(m).running == 0,
        5000);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.late_reports, 1);
  assert_int_equal(s.running, 0);
  /* The late success did not change the outcome. */
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  assert_null(apex_task_result(t));
  assert_int_equal(s.succeeded, 0);
  assert_int_equal(s.timed_out, 1);
  apex_task_release(t);
  destroy_ok(m);
}

/* ---------------------------------------------------------------- retries */

static apex_submit_opts_t opts_retry(const apex_retry_policy_t *p) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = p;
  return o;
}

static void test_retry_policy_retries_transient_until_success(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_retry_policy_t p = {.max_attempts = 3, .initial_interval_s = 0.001};
  apex_submit_opts_t o = opts_retry(&p);
  apex_task_t *t = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 3}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_attempts(t), 3);
  assert_int_equal(stats_of(m).retries, 2);
  apex_task_release(t);
  destroy_ok(m);
}

static void test_retry_exhausted_fails_with_transient(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_retry_policy_t p = {.max_attempts = 2, .initial_interval_s = 0.001};
  apex_submit_opts_t o = opts_retry(&p);
  apex_task_t *t = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 3}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_FAILED);
  assert_int_equal(apex_task_attempts(t), 2);
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(apex_error_code(e), APEX_E_TRANSIENT);
  assert_int_equal(apex_error_attempt(e), 2);
  apex_error_unref(e);
  apex_task_release(t);
  destroy_ok(m);
}

static void test_execution_error_is_never_retried(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_retry_policy_t p = {.max_attempts = 5, .initial_interval_s = 0.001};
  apex_submit_opts_t o = opts_retry(&p);
  apex_task_t *t = submit_json(m, "hostile", "fail", "{\"code\": \"execution\"}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_FAILED);
  assert_int_equal(apex_task_attempts(t), 1);
  assert_int_equal(error_code_of(t), APEX_E_EXECUTION);
  assert_int_equal(stats_of(m).retries, 0);
  apex_task_release(t);
  destroy_ok(m);
}

static void test_cancel_during_retry_backoff_ends_at_once(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_retry_policy_t p = {.max_attempts = 3, .initial_interval_s = 10};
  apex_submit_opts_t o = opts_retry(&p);
  int64_t t0 = now_ms();
  apex_task_t *t = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 3}", &o);
  await_state(t, APEX_TASK_RETRY_WAIT);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED); /* no handler to wait for */
  assert_true(now_ms() - t0 < PROMPT_MS);
  assert_int_equal(apex_task_attempts(t), 1);
  assert_int_equal(error_code_of(t), APEX_E_CANCELLED);
  apex_task_release(t);
  destroy_ok(m);
}

/* The engine's choice when the next backoff would pass the overall deadline:
 * it does not wait for the deadline, it fails at once with the attempt's
 * transient error. */
static void test_deadline_shorter_than_backoff_fails_at_once(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_retry_policy_t p = {.max_attempts = 3, .initial_interval_s = 10};
  apex_submit_opts_t o = opts_retry(&p);
  o.timeout_s = 0.2;
  int64_t t0 = now_ms();
  apex_task_t *t = submit_json(m, "testkit", "count_attempts", "{\"succeed_on\": 3}", &o);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  assert_true(now_ms() - t0 < PROMPT_MS);
  assert_int_equal(apex_task_state(t), APEX_TASK_FAILED);
  assert_int_equal(error_code_of(t), APEX_E_TRANSIENT);
  assert_int_equal(apex_task_attempts(t), 1);
  assert_int_equal(stats_of(m).retries, 0);
  apex_task_release(t);
  destroy_ok(m);
}

/* ------------------------------------------------------ late and abusive */

static void test_late_completion_after_timeout_is_counted_and_ignored(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_submit_opts_t o = opts_timeout(0.05);
  apex_task_t *t = submit_json(m, "hostile", "late_complete", "{\"delay_ms\": 300}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  assert_int_equal(error_code_of(t), APEX_E_TIMEOUT);
  /* The plugin's thread reports progress then completes, both too late. */
  AWAIT(stats_of(m).late_reports >= 2, 5000);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.late_reports, 2);
  assert_int_equal(s.succeeded, 0);
  assert_int_equal(s.timed_out, 1);
  assert_int_equal(s.progress_delivered, 0);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  assert_null(apex_task_result(t));
  assert_null(apex_task_progress(t));
  apex_task_release(t);
  destroy_ok(m);
}

static void test_double_completion_keeps_first_outcome(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "hostile", "double_complete", NULL, NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  AWAIT(stats_of(m).late_reports >= 1, 5000);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.late_reports, 1);
  assert_int_equal(s.succeeded + s.failed + s.cancelled + s.timed_out, 1);
  assert_int_equal(s.succeeded, 1);
  assert_int_equal(apex_task_attempts(t), 1);
  apex_task_release(t);
  destroy_ok(m);
}

static void test_handler_without_result_succeeds_with_null(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "hostile", "crash_null_result", NULL, NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_true(json_is_null(r));
  json_decref(r);
  apex_task_release(t);
  destroy_ok(m);
}

/* ---------------------------------------------------------------- release */

static void test_released_blocking_task_runs_to_its_end(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "hostile", "sleep", "{\"ms\": 100}", NULL);
  apex_task_release(t);
  AWAIT(stats_of(m).succeeded == 1, 5000);
  destroy_ok(m);
}

static void test_released_deferred_task_runs_to_its_end(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "example_async", "deferred_task", "{\"delay_ms\": 50}", NULL);
  apex_task_release(t);
  AWAIT(stats_of(m).succeeded == 1, 5000);
  destroy_ok(m);
}

static void test_handle_outlives_manager(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "testkit", "echo", "{\"value\": {\"x\": true}}", NULL);
  wait_done(t);
  uint64_t id = apex_task_id(t);
  destroy_ok(m);
  /* Everything but the manager is gone; the handle still answers. */
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_id(t), id);
  assert_int_equal(apex_task_attempts(t), 1);
  assert_int_equal(apex_task_wait(t, 0), APEX_OK);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_E_ALREADY);
  json_t *r = apex_task_result(t);
  assert_true(json_is_true(json_object_get(json_object_get(r, "value"), "x")));
  json_decref(r);
  assert_null(apex_task_error(t));
  assert_null(apex_task_progress(t));
  apex_task_release(t);
}

/* --------------------------------------------------------------- shutdown */

static void test_destroy_cancels_queued_and_running_with_reason_shutdown(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *running = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", NULL);
  await_state(running, APEX_TASK_RUNNING);
  apex_task_t *queued[3];
  for (int i = 0; i < 3; i++) queued[i] = submit_json(m, "testkit", "noop", NULL, NULL);
  int64_t t0 = now_ms();
  assert_int_equal(apex_manager_destroy(m, 50), APEX_OK);
  assert_true(now_ms() - t0 < PROMPT_MS);
  assert_int_equal(apex_task_state(running), APEX_TASK_CANCELLED);
  assert_true(error_mentions(running, "shutdown"));
  assert_string_equal(apex_token_reason(apex_task_token(running)), "shutdown");
  for (int i = 0; i < 3; i++) {
    assert_int_equal(apex_task_state(queued[i]), APEX_TASK_CANCELLED);
    assert_true(error_mentions(queued[i], "shutdown"));
    assert_int_equal(apex_task_attempts(queued[i]), 0);
    apex_task_release(queued[i]);
  }
  apex_task_release(running);
}

/* Running, not queued: destroy ends queued tasks at once and lets running
 * ones finish within the drain. */
static void test_destroy_drains_running_tasks_first(void **st) {
  (void)st;
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "hostile", "sleep", "{\"ms\": 50}", NULL);
  await_state(t, APEX_TASK_RUNNING);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
}

static void test_destroy_with_deaf_handler_is_busy_and_returns_quickly(void **st) {
  (void)st;
  int base = count_threads();
  apex_manager_t *m = make_default();
  apex_task_t *t = submit_json(m, "hostile", "ignore_cancel", "{\"ms\": 3000}", NULL);
  await_state(t, APEX_TASK_RUNNING);
  int64_t t0 = now_ms();
  assert_int_equal(apex_manager_destroy(m, 50), APEX_E_BUSY);
  /* After the grace handlers get whatever the drain, before the handler's
   * 3000 ms are up. */
  int64_t took = now_ms() - t0;
  assert_true(took >= APEX_SHUTDOWN_GRACE_MS - 1);
  assert_true(took < 2900);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  assert_true(error_mentions(t, "shutdown"));
  apex_task_release(t);
  /* The orphaned manager is freed by its last handler's thread when the
   * 3000 ms are up: awaited (its threads gone) so that ASan's leak check
   * and the process teardown find it done. */
  AWAIT(count_threads() == base, 10000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_blocking_task_result_is_its_output),
      cmocka_unit_test(test_deferred_task_completed_in_handler_succeeds),
      cmocka_unit_test(test_deferred_task_completed_from_plugin_thread_succeeds),
      cmocka_unit_test(test_execute_returns_result),
      cmocka_unit_test(test_execute_returns_task_error),
      cmocka_unit_test(test_task_ids_increase_by_one),
      cmocka_unit_test(test_attempts_counted_across_retries),
      cmocka_unit_test(test_submit_unknown_plugin_is_plugin_not_found),
      cmocka_unit_test(test_submit_unknown_action_lists_actions),
      cmocka_unit_test(test_submit_out_of_bounds_param_names_it),
      cmocka_unit_test(test_submit_unknown_param_names_it),
      cmocka_unit_test(test_submit_null_arguments_are_invalid),
      cmocka_unit_test(test_submit_nan_timeout_is_invalid),
      cmocka_unit_test(test_submit_beyond_max_queued_is_queue_full),
      cmocka_unit_test(test_load_duplicate_plugin_fails_and_keeps_manager),
      cmocka_unit_test(test_load_missing_file_fails_and_keeps_manager),
      cmocka_unit_test(test_load_named_unknown_says_where_it_searched),
      cmocka_unit_test(test_cancel_queued_task_ends_at_once_and_never_runs),
      cmocka_unit_test(test_cancel_running_cooperative_task_ends_promptly),
      cmocka_unit_test(test_cancel_of_running_task_returns_ok),
      cmocka_unit_test(test_cancel_twice_is_already),
      cmocka_unit_test(test_cancel_after_success_is_already),
      cmocka_unit_test(test_parent_cancel_ends_queued_child_at_once),
      cmocka_unit_test(test_parent_cancel_ends_released_queued_children),
      cmocka_unit_test(test_parent_cancel_ends_running_child),
      cmocka_unit_test(test_parent_cancel_ends_queued_child_behind_running_sibling),
      cmocka_unit_test(test_timeout_of_cooperative_task_is_timed_out),
      cmocka_unit_test(test_timeout_of_deaf_handler_ends_task_before_handler_returns),
      cmocka_unit_test(test_stuck_workers_are_reaped_after_their_handlers_return),
      cmocka_unit_test(test_wait_with_huge_timeout_waits_for_the_end),
      cmocka_unit_test(test_replacement_worker_runs_tasks_while_one_is_stuck),
      cmocka_unit_test(test_stuck_handler_return_is_late_and_its_worker_retires),
      cmocka_unit_test(test_retry_policy_retries_transient_until_success),
      cmocka_unit_test(test_retry_exhausted_fails_with_transient),
      cmocka_unit_test(test_execution_error_is_never_retried),
      cmocka_unit_test(test_cancel_during_retry_backoff_ends_at_once),
      cmocka_unit_test(test_deadline_shorter_than_backoff_fails_at_once),
      cmocka_unit_test(test_late_completion_after_timeout_is_counted_and_ignored),
      cmocka_unit_test(test_double_completion_keeps_first_outcome),
      cmocka_unit_test(test_handler_without_result_succeeds_with_null),
      cmocka_unit_test(test_released_blocking_task_runs_to_its_end),
      cmocka_unit_test(test_released_deferred_task_runs_to_its_end),
      cmocka_unit_test(test_handle_outlives_manager),
      cmocka_unit_test(test_destroy_cancels_queued_and_running_with_reason_shutdown),
      cmocka_unit_test(test_destroy_drains_running_tasks_first),
      cmocka_unit_test(test_destroy_with_deaf_handler_is_busy_and_returns_quickly),
  };
  /* APEX_TEST_FILTER=pattern runs only the matching tests (debugging). */
  if (getenv("APEX_TEST_FILTER")) cmocka_set_test_filter(getenv("APEX_TEST_FILTER"));
  return cmocka_run_group_tests(tests, NULL, NULL);
}
