/* Partial results (apex_ctx_partial_result, APEX_EVENT_PARTIAL,
 * apex_task_partial_result, apex_error_partial_result): the Done-when line
 * of issue 11 (example_async.long_task cancelled at 60 % leaves its done
 * steps in the C API, on its error and in `apex run --json`), coalescing
 * (100,000 publishes make rate-bounded events and the last one always
 * arrives, before DONE), invalid values refused with a reason, calls after
 * complete and after the task ended, concurrent publishers, and values
 * coming back exactly as published. */
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/recorder.h"
#include "integration/cli_harness.h"

#define ALL_EVENTS                                                                         \
  (APEX_EVENT_ATTEMPT | APEX_EVENT_PROGRESS | APEX_EVENT_RETRY | APEX_EVENT_DONE |         \
   APEX_EVENT_PARTIAL)

/* A manager delivering every event type named in mask to rec (LOOP mode),
 * with partial_kit and example_async loaded. */
static apex_manager_t *make_manager(rec_t *rec, unsigned mask, double rate_hz) {
  apex_manager_config_t cfg = base_config(2);
  cfg.on_event = rec_on_event;
  cfg.event_user = rec;
  cfg.event_mask = mask;
  if (rate_hz > 0) cfg.progress_rate_hz = rate_hz;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/partial_kit.so");
  load_ok(m, APEX_PLUGIN_BUILD_DIR "/example_async.so");
  return m;
}

/* Waits until rec holds a PROGRESS event of task id at pct or more;
 * asserts one came within 10 s. No sleeps: the recorder's condition
 * variable. */
static void await_progress_at_least(rec_t *r, uint64_t id, double pct) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 10;
  int seen = 0;
  pthread_mutex_lock(&r->mu);
  for (;;) {
    for (size_t i = 0; i < r->n && !seen; i++)
      seen = r->ev[i].task_id == id && r->ev[i].type == APEX_EVENT_PROGRESS && r->ev[i].pct >= pct;
    if (seen || pthread_cond_timedwait(&r->cv, &r->mu, &until) != 0) break;
  }
  pthread_mutex_unlock(&r->mu);
  assert_true(seen);
}

/* The last recorded event of task id and type, or NULL. Call once the
 * task's DONE was delivered (nothing is recorded for it after that). */
static const rec_ev_t *last_of(rec_t *r, uint64_t id, apex_event_type_t type) {
  const rec_ev_t *last = NULL;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n; i++)
    if (r->ev[i].task_id == id && r->ev[i].type == type) last = &r->ev[i];
  pthread_mutex_unlock(&r->mu);
  return last;
}

static json_int_t int_at(const json_t *o, const char *key) {
  const json_t *v = json_object_get(o, key);
  if (!json_is_integer(v)) fail_msg("no integer '%s'", key);
  return json_integer_value(v);
}

/* ------------------------------------------------ the Done-when line */

static void test_long_task_cancelled_at_60_percent_keeps_its_done_steps(void **st) {
  (void)st;
  rec_t rec;
  rec_init(&rec);
  apex_manager_t *m = make_manager(&rec, ALL_EVENTS, 0);
  /* 10 steps of 100 ms: 60 % after about 600 ms, 400 ms before the end. */
  apex_task_t *t = submit_json(m, "example_async", "long_task", "{\"steps\": 10, \"step_ms\": 100}",
                               NULL);
  await_progress_at_least(&rec, apex_task_id(t), 60.0);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);

  /* The C API: the steps done, at least the 6 the progress showed, and
   * exactly what the last delivered progress said (the plugin publishes a
   * step's partial before its progress). */
  json_t *partial = apex_task_partial_result(t);
  assert_non_null(partial);
  json_int_t done = int_at(partial, "steps_done");
  assert_true(done >= 6 && done < 10);
  assert_int_equal(int_at(partial, "of"), 10);
  apex_progress_t *prog = apex_task_progress(t);
  assert_non_null(prog);
  assert_int_equal((json_int_t)(apex_progress_percentage(prog) / 10.0 + 0.5), done);
  apex_progress_unref(prog);

  /* The error: the same value, also in its JSON. */
  apex_error_t *e = apex_task_error(t);
  assert_non_null(e);
  assert_int_equal(apex_error_code(e), APEX_E_CANCELLED);
  assert_true(json_equal((json_t *)apex_error_partial_result(e), partial));
  json_t *ej = apex_error_to_json(e);
  assert_non_null(ej);
  assert_true(json_equal(json_object_get(ej, "partial_result"), partial));
  json_decref(ej);
  apex_error_unref(e);

  /* The events: the last PARTIAL says the same and came before DONE. */
  rec_await_dones(&rec, 1);
  const rec_ev_t *lp = last_of(&rec, apex_task_id(t), APEX_EVENT_PARTIAL);
  const rec_ev_t *dn = last_of(&rec, apex_task_id(t), APEX_EVENT_DONE);
  assert_non_null(lp);
  assert_non_null(dn);
  assert_true(json_equal(lp->result, partial));
  assert_true(lp->seq < dn->seq);
  json_decref(partial);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  rec_fini(&rec);
}

/* Returns: 1 if out holds a progress line at 60 % to 90 %. */
static int at_least_60(const char *out) {
  static const char *const pcts[] = {"\"percentage\":60.0", "\"percentage\":70.0",
                                     "\"percentage\":80.0", "\"percentage\":90.0"};
  for (size_t i = 0; i < 4; i++)
    if (strstr(out, pcts[i])) return 1;
  return 0;
}

/* `apex run --json`: the partial lines and the result line's error. */
static void test_cli_json_cancelled_at_60_percent_carries_partial_result(void **st) {
  (void)st;
  proc_t p;
  proc_start(&p, "run", "--json", "example_async.long_task", "--param", "steps=10", "--param",
             "step_ms=100", NULL);
  /* A progress line at 60 % or more (the CLI writes 60.0; coalescing may
   * skip one on a loaded machine), then the cancel. */
  int64_t end = now_ms() + DEADLINE_MS;
  while (!at_least_60(buf_str(&p.out)) && now_ms() < end && proc_pump(&p, 100)) {
  }
  assert_true(at_least_60(buf_str(&p.out)));
  assert_int_equal(kill(p.pid, SIGINT), 0);
  proc_wait(&p);
  if (p.code != 130) fail_msg("exit %d, want 130; stderr: %s", p.code, buf_str(&p.err));
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(r, "state")), "cancelled");
  json_t *pr = json_object_get(json_object_get(r, "error"), "partial_result");
  assert_non_null(pr);
  json_int_t done = int_at(pr, "steps_done");
  assert_true(done >= 6 && done < 10);
  assert_int_equal(int_at(pr, "of"), 10);
  /* Partial lines: {"event": "partial", "task", "attempt", "partial_result"};
   * the last is the result's, and one came for 6 steps at least. */
  assert_true(count_event(lines, "partial") >= 1);
  json_t *last = NULL, *j;
  size_t i;
  json_array_foreach(lines, i, j) {
    if (strcmp(json_string_value(json_object_get(j, "event")), "partial") != 0) continue;
    assert_int_equal(json_integer_value(json_object_get(j, "task")), 1);
    assert_int_equal(json_integer_value(json_object_get(j, "attempt")), 1);
    last = json_object_get(j, "partial_result");
  }
  assert_true(json_equal(last, pr));
  json_decref(lines);
  proc_free(&p);
}

/* The terminal view: a partial line under the bar while it runs, and the
 * partial result after the outcome of a task that did not succeed. */
static void test_terminal_shows_partial_line_and_partial_on_failure(void **st) {
  (void)st;
  char name[128];
  int master = pty_open(name, sizeof name);
  char *argv[] = {(char *)APEX_CLI_PATH, "run", "example_async.long_task", "--param", "steps=20",
                  "--param", "step_ms=50", "--timeout", "0.6", NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  proc_wait(&p);
  if (p.code != 124) fail_msg("exit %d, want 124; output:\n%s", p.code, buf_str(&p.out));
  const char *out = buf_str(&p.out);
  assert_contains(out, "  partial: {\"steps_done\":");
  assert_contains(out, "timed_out: ");
  assert_contains(out, "partial result: {\"steps_done\":");
  proc_free(&p);
}

/* ------------------------------------------------------- coalescing */

static void test_100000_partials_make_rate_bounded_events_and_the_last_arrives(void **st) {
  (void)st;
  rec_t rec;
  rec_init(&rec);
  const double rate = 20;
  apex_manager_t *m = make_manager(&rec, ALL_EVENTS, rate);
  int64_t start = now_ms();
  apex_task_t *t = submit_json(m, "partial_kit", "flood", "{\"n\": 100000, \"fail\": true}", NULL);
  wait_done(t);
  rec_await_dones(&rec, 1);
  int64_t elapsed = now_ms() - start;
  size_t n = rec_count(&rec, apex_task_id(t), APEX_EVENT_PARTIAL);
  /* About one flush per interval while it ran, plus the final flush: the
   * flush timer counts from libuv's cached loop time, so an interval may
   * come out a little short; twice the rate still tells coalescing (a
   * dozen events) from none (100,000). */
  size_t bound = (size_t)((double)elapsed / 1000.0 * rate * 2) + 3;
  if (n < 1 || n > bound)
    fail_msg("%zu PARTIAL events in %lld ms (bound %zu)", n, (long long)elapsed, bound);
  const rec_ev_t *lp = last_of(&rec, apex_task_id(t), APEX_EVENT_PARTIAL);
  const rec_ev_t *dn = last_of(&rec, apex_task_id(t), APEX_EVENT_DONE);
  assert_int_equal(int_at(lp->result, "i"), 100000);
  assert_true(lp->seq < dn->seq);
  assert_true(error_mentions(t, "refused 0"));
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(int_at(apex_error_partial_result(e), "i"), 100000);
  apex_error_unref(e);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  rec_fini(&rec);
}

/* Many short tasks, each publishing 1,000 and ending at once: the last
 * value is never lost at the end, whatever the flush timing. */
static void test_the_last_partial_is_delivered_before_done_every_time(void **st) {
  (void)st;
  rec_t rec;
  rec_init(&rec);
  apex_manager_t *m = make_manager(&rec, ALL_EVENTS, 0);
  enum { TASKS = 50 };
  apex_task_t *ts[TASKS];
  for (int i = 0; i < TASKS; i++)
    ts[i] = submit_json(m, "partial_kit", "flood", "{\"n\": 1000}", NULL);
  rec_await_dones(&rec, TASKS);
  for (int i = 0; i < TASKS; i++) {
    assert_int_equal(apex_task_state(ts[i]), APEX_TASK_SUCCEEDED);
    const rec_ev_t *lp = last_of(&rec, apex_task_id(ts[i]), APEX_EVENT_PARTIAL);
    const rec_ev_t *dn = last_of(&rec, apex_task_id(ts[i]), APEX_EVENT_DONE);
    assert_non_null(lp);
    assert_int_equal(int_at(lp->result, "i"), 1000);
    assert_true(lp->seq < dn->seq);
    /* Succeeded: the result is the result, the partial stays readable. */
    assert_int_equal(int_at(dn->result, "published"), 1000);
    json_t *pr = apex_task_partial_result(ts[i]);
    assert_int_equal(int_at(pr, "i"), 1000);
    json_decref(pr);
    assert_null(apex_task_error(ts[i]));
    apex_task_release(ts[i]);
  }
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  rec_fini(&rec);
}

/* A host that does not name PARTIAL gets no such event (an older host
 * never sees a type it does not know), and still reads the value. */
static void test_no_partial_event_without_the_mask_bit(void **st) {
  (void)st;
  rec_t rec;
  rec_init(&rec);
  apex_manager_t *m = make_manager(&rec, 0, 0);
  apex_task_t *t = submit_json(m, "partial_kit", "flood", "{\"n\": 500, \"fail\": true}", NULL);
  wait_done(t);
  rec_await_dones(&rec, 1);
  assert_int_equal(rec_count(&rec, 0, APEX_EVENT_PARTIAL), 0);
  json_t *pr = apex_task_partial_result(t);
  assert_int_equal(int_at(pr, "i"), 500);
  json_decref(pr);
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(int_at(apex_error_partial_result(e), "i"), 500);
  apex_error_unref(e);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  rec_fini(&rec);
}

/* --------------------------------------------------------- bad input */

typedef struct logs {
  pthread_mutex_t mu;
  char text[4096];
} logs_t;

static void keep_log(int level, const char *msg, void *user) {
  (void)level;
  logs_t *l = user;
  pthread_mutex_lock(&l->mu);
  size_t n = strlen(l->text);
  snprintf(l->text + n, sizeof l->text - n, "%s\n", msg);
  pthread_mutex_unlock(&l->mu);
}

static void test_invalid_values_are_refused_with_a_reason_and_the_last_stays(void **st) {
  (void)st;
  logs_t logs = {.mu = PTHREAD_MUTEX_INITIALIZER};
  apex_manager_config_t cfg = base_config(1);
  cfg.log = keep_log;
  cfg.log_user = &logs;
  cfg.log_level = APEX_LOG_WARN;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/partial_kit.so");
  apex_task_t *t = submit_json(m, "partial_kit", "bad", NULL, NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_FAILED);
  char want[128];
  snprintf(want, sizeof want, "ok=0 deep=%d cycle=%d utf8=%d", APEX_E_INVALID, APEX_E_INVALID,
           APEX_E_INVALID);
  assert_true(error_mentions(t, want));
  /* The valid one before them stays: on the error and in the C API. */
  json_t *pr = apex_task_partial_result(t);
  assert_int_equal(int_at(pr, "ok"), 1);
  assert_int_equal(json_object_size(pr), 1);
  json_decref(pr);
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(int_at(apex_error_partial_result(e), "ok"), 1);
  apex_error_unref(e);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  /* Each refusal is logged with the place and the reason. */
  assert_contains(logs.text, "partial result refused: partial");
  assert_contains(logs.text, "nested deeper than");
  assert_contains(logs.text, "partial.child.parent: contains itself (a cycle)");
  assert_contains(logs.text, "partial.name: not valid UTF-8");
}

static void test_partial_after_complete_is_misuse_and_ignored(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/partial_kit.so");
  apex_task_t *t = submit_json(m, "partial_kit", "after", NULL, NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  /* One worker: last_rc runs after `after`'s handler returned. */
  json_t *res = NULL;
  assert_int_equal(apex_manager_execute(m, "partial_kit", "last_rc", NULL, NULL, &res, NULL),
                   APEX_OK);
  assert_int_equal(int_at(res, "rc"), APEX_E_INVALID);
  json_decref(res);
  assert_int_equal(stats_of(m).late_reports, 1);
  json_t *pr = apex_task_partial_result(t);
  assert_true(json_is_true(json_object_get(pr, "before")));
  assert_null(json_object_get(pr, "after"));
  json_decref(pr);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

/* A timeout ends the task at once; the handler's later publish is ignored
 * (APEX_OK, counted late) and the error keeps what came before. */
static void test_timeout_keeps_the_partial_before_it_and_ignores_a_later_one(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/partial_kit.so");
  apex_submit_opts_t o = opts_timeout(0.2);
  apex_task_t *t = submit_json(m, "partial_kit", "wait", NULL, &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  apex_error_t *e = apex_task_error(t);
  assert_string_equal(json_string_value(json_object_get(apex_error_partial_result(e), "stage")),
                      "started");
  apex_error_unref(e);
  /* The handler's late publish, once its sleep ended: awaited through
   * the open attempts (a handler still running after its task timed out
   * counts), as last_rc may run on a replacement worker meanwhile. */
  AWAIT(stats_of(m).running == 0, 10000);
  json_t *res = NULL;
  assert_int_equal(apex_manager_execute(m, "partial_kit", "last_rc", NULL, NULL, &res, NULL),
                   APEX_OK);
  assert_int_equal(int_at(res, "rc"), APEX_OK);
  json_decref(res);
  assert_true(stats_of(m).late_reports >= 1);
  json_t *pr = apex_task_partial_result(t);
  assert_string_equal(json_string_value(json_object_get(pr, "stage")), "started");
  json_decref(pr);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

static void test_null_clears_the_partial(void **st) {
  (void)st;
  rec_t rec;
  rec_init(&rec);
  apex_manager_t *m = make_manager(&rec, ALL_EVENTS, 0);
  apex_task_t *t = submit_json(m, "partial_kit", "clear", NULL, NULL);
  wait_done(t);
  assert_true(error_mentions(t, "cleared=0"));
  assert_null(apex_task_partial_result(t));
  apex_error_t *e = apex_task_error(t);
  assert_null(apex_error_partial_result(e));
  json_t *ej = apex_error_to_json(e);
  assert_null(json_object_get(ej, "partial_result"));
  json_decref(ej);
  apex_error_unref(e);
  rec_await_dones(&rec, 1);
  /* Its one coalesced event says "none". */
  const rec_ev_t *lp = last_of(&rec, apex_task_id(t), APEX_EVENT_PARTIAL);
  assert_non_null(lp);
  assert_null(lp->result);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  rec_fini(&rec);
}

/* The value is the task's, not the attempt's: a failed attempt's partial
 * is there while the task waits to retry (its PARTIAL event before the
 * RETRY), and the retry's publishes replace it. */
static void test_partial_survives_a_retry_until_replaced(void **st) {
  (void)st;
  rec_t rec;
  rec_init(&rec);
  apex_manager_t *m = make_manager(&rec, ALL_EVENTS, 0);
  apex_retry_policy_t policy = {.max_attempts = 2, .initial_interval_s = 30};
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &policy;
  apex_task_t *t = submit_json(m, "example_async", "long_task",
                               "{\"steps\": 3, \"step_ms\": 1, \"fail_attempts\": 1}", &o);
  AWAIT(rec_count(&rec, apex_task_id(t), APEX_EVENT_RETRY) == 1, 10000);
  assert_int_equal(apex_task_state(t), APEX_TASK_RETRY_WAIT);
  json_t *pr = apex_task_partial_result(t);
  assert_int_equal(int_at(pr, "steps_done"), 1);
  json_decref(pr);
  const rec_ev_t *lp = last_of(&rec, apex_task_id(t), APEX_EVENT_PARTIAL);
  const rec_ev_t *rt = last_of(&rec, apex_task_id(t), APEX_EVENT_RETRY);
  assert_non_null(lp);
  assert_int_equal(lp->attempt, 1);
  assert_true(lp->seq < rt->seq);
  /* Cancelled while it waits: the error carries the failed attempt's. */
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  wait_done(t);
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(apex_error_code(e), APEX_E_CANCELLED);
  assert_int_equal(int_at(apex_error_partial_result(e), "steps_done"), 1);
  apex_error_unref(e);
  apex_task_release(t);
  /* Retried at once instead: the second attempt's value replaces it. */
  policy.initial_interval_s = 0.001;
  t = submit_json(m, "example_async", "long_task",
                  "{\"steps\": 3, \"step_ms\": 1, \"fail_attempts\": 1}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  pr = apex_task_partial_result(t);
  assert_int_equal(int_at(pr, "steps_done"), 3);
  json_decref(pr);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  rec_fini(&rec);
}

/* ------------------------------------------------ values and threads */

static void test_every_json_type_comes_back_exactly(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/partial_kit.so");
  const char *value =
      "{\"value\": {\"z\": 1, \"a\": [1, -9223372036854775808, 9223372036854775807, 0.1, "
      "-1.5e300, 5e-324, true, false, null, \"\", \"h\\u00e9llo \\u4e16\\u754c \\ud83d\\ude00\", "
      "[], {}, [[[{\"deep\": [\"x\"]}]]]], \"\\u00fc\": {\"k\": \"v\"}, \"m\": 2}}";
  apex_task_t *t = submit_json(m, "partial_kit", "types", value, NULL);
  wait_done(t);
  json_t *res = apex_task_result(t);
  assert_int_equal(int_at(res, "rc"), APEX_OK);
  json_decref(res);
  json_t *want = json_loads(value, 0, NULL);
  json_t *got = apex_task_partial_result(t);
  assert_non_null(got);
  assert_true(json_equal(got, json_object_get(want, "value")));
  /* Types and bits, not just equality: reals stay reals, members keep
   * their order. */
  json_t *a = json_object_get(got, "a");
  assert_true(json_is_real(json_array_get(a, 3)));
  assert_true(json_real_value(json_array_get(a, 3)) == 0.1);
  assert_true(json_real_value(json_array_get(a, 5)) == 5e-324);
  assert_true(json_is_integer(json_array_get(a, 1)));
  const char *order[] = {"z", "a", "\xc3\xbc", "m"};
  size_t k = 0;
  for (void *it = json_object_iter(got); it; it = json_object_iter_next(got, it), k++)
    assert_string_equal(json_object_iter_key(it), order[k]);
  assert_int_equal(k, 4);
  /* Each read is a copy of its own. */
  json_t *again = apex_task_partial_result(t);
  assert_ptr_not_equal(again, got);
  assert_true(json_equal(again, got));
  json_decref(again);
  json_decref(got);
  json_decref(want);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

/* Four threads of one handler publish at once (TSan watches), while the
 * host reads; the handler's last publish wins. */
static void test_concurrent_publishers_and_readers(void **st) {
  (void)st;
  rec_t rec;
  rec_init(&rec);
  apex_manager_t *m = make_manager(&rec, ALL_EVENTS, 1000);
  apex_task_t *t = submit_json(m, "partial_kit", "threads", "{\"n\": 5000}", NULL);
  size_t reads = 0;
  while (apex_task_wait(t, 0) != APEX_OK) {
    json_t *pr = apex_task_partial_result(t);
    if (pr) {
      assert_true(json_is_object(pr));
      reads++;
    }
    json_decref(pr);
  }
  json_t *pr = apex_task_partial_result(t);
  assert_true(json_is_true(json_object_get(pr, "final")));
  json_decref(pr);
  rec_await_dones(&rec, 1);
  const rec_ev_t *lp = last_of(&rec, apex_task_id(t), APEX_EVENT_PARTIAL);
  assert_true(json_is_true(json_object_get(lp->result, "final")));
  (void)reads;
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  rec_fini(&rec);
}

/* files.checksum publishes the bytes hashed. */
static void test_checksum_publishes_bytes_hashed(void **st) {
  (void)st;
  char path[] = "/tmp/apex-partial-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  static char chunk[1 << 16];
  memset(chunk, 'x', sizeof chunk);
  for (int i = 0; i < 48; i++)
    assert_int_equal(write(fd, chunk, sizeof chunk), (ssize_t)sizeof chunk);
  close(fd);
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_PLUGIN_BUILD_DIR "/files.so");
  json_t *params = json_pack("{s:s}", "path", path);
  apex_task_t *t = NULL;
  assert_int_equal(apex_manager_submit(m, "files", "checksum", params, NULL, &t, NULL), APEX_OK);
  json_decref(params);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *pr = apex_task_partial_result(t);
  assert_int_equal(int_at(pr, "bytes_hashed"), 48 << 16);
  assert_int_equal(int_at(pr, "bytes_total"), 48 << 16);
  json_decref(pr);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  unlink(path);
}

int main(void) {
  setenv("APEX_LOG", "off", 1); /* the CLI children stay quiet */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_long_task_cancelled_at_60_percent_keeps_its_done_steps),
      cmocka_unit_test(test_cli_json_cancelled_at_60_percent_carries_partial_result),
      cmocka_unit_test(test_terminal_shows_partial_line_and_partial_on_failure),
      cmocka_unit_test(test_100000_partials_make_rate_bounded_events_and_the_last_arrives),
      cmocka_unit_test(test_the_last_partial_is_delivered_before_done_every_time),
      cmocka_unit_test(test_no_partial_event_without_the_mask_bit),
      cmocka_unit_test(test_invalid_values_are_refused_with_a_reason_and_the_last_stays),
      cmocka_unit_test(test_partial_after_complete_is_misuse_and_ignored),
      cmocka_unit_test(test_timeout_keeps_the_partial_before_it_and_ignores_a_later_one),
      cmocka_unit_test(test_null_clears_the_partial),
      cmocka_unit_test(test_partial_survives_a_retry_until_replaced),
      cmocka_unit_test(test_every_json_type_comes_back_exactly),
      cmocka_unit_test(test_concurrent_publishers_and_readers),
      cmocka_unit_test(test_checksum_publishes_bytes_hashed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
