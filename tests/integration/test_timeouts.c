/* The four timeouts (docs/scheduling.md): schedule-to-close, schedule-to-
 * start, start-to-close and heartbeat, each ending a task timed_out with an
 * error that names it (apex_error_timeout_kind and the message), blocking
 * and deferred; start-to-close and heartbeat timeouts retried by the
 * policy; heartbeats keeping an attempt alive, their details reaching the
 * host as HEARTBEAT events and the next attempt; bad values refused.
 * Plugin: tests/plugins/timeouts_kit.c. Time bounds are generous (the
 * timeouts are 0.2-0.5 s, waits up to 10 s): a loaded box or TSan passes. */
#include <dlfcn.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/timeouts_kit.so"

static void *g_dl;
static atomic_uint_fast64_t *g_cancel_timeout;

static int setup(void **st) {
  (void)st;
  g_dl = dlopen(KIT, RTLD_NOW);
  assert_non_null(g_dl);
  g_cancel_timeout = dlsym(g_dl, "g_cancel_timeout");
  assert_non_null(g_cancel_timeout);
  return 0;
}

static int teardown(void **st) {
  (void)st;
  dlclose(g_dl);
  return 0;
}

/* HEARTBEAT and DONE events, as the callback saw them. */
typedef struct hb_rec {
  pthread_mutex_t mu;
  int heartbeats, dones, others;
  json_t *last; /* the last HEARTBEAT's details (a copy) */
} hb_rec_t;

static void on_event(const apex_event_t *ev, void *user) {
  hb_rec_t *r = user;
  pthread_mutex_lock(&r->mu);
  if (ev->type == APEX_EVENT_HEARTBEAT) {
    r->heartbeats++;
    json_decref(r->last);
    r->last = ev->result ? json_deep_copy(ev->result) : NULL;
  } else if (ev->type == APEX_EVENT_DONE) {
    r->dones++;
  } else {
    r->others++;
  }
  pthread_mutex_unlock(&r->mu);
}

static apex_manager_t *new_manager(unsigned workers, hb_rec_t *rec, unsigned mask) {
  apex_manager_config_t cfg = base_config(workers);
  if (rec) {
    cfg.on_event = on_event;
    cfg.event_user = rec;
    cfg.event_mask = mask;
  }
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  return m;
}

static apex_submit_opts_t opts(double s2s, double s2c, double hb) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.schedule_to_start_s = s2s;
  o.start_to_close_s = s2c;
  o.heartbeat_timeout_s = hb;
  return o;
}

/* Asserts t ended timed_out by the timeout `kind`, its message saying so
 * and containing `words`. */
static void assert_timed_out(apex_task_t *t, const char *kind, const char *words) {
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  apex_error_t *e = apex_task_error(t);
  assert_non_null(e);
  assert_int_equal(apex_error_code(e), APEX_E_TIMEOUT);
  const char *k = apex_error_timeout_kind(e);
  if (!k || strcmp(k, kind) != 0) print_error("kind %s, want %s\n", k ? k : "NULL", kind);
  assert_non_null(k);
  assert_string_equal(k, kind);
  char want[64];
  snprintf(want, sizeof want, "(%s timeout)", kind);
  assert_non_null(strstr(apex_error_message(e), want));
  assert_true(error_mentions(t, words));
  json_t *j = apex_error_to_json(e);
  assert_string_equal(json_string_value(json_object_get(j, "timeout")), kind);
  json_decref(j);
  apex_error_unref(e);
}

static void test_schedule_to_close_names_itself(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  const char *actions[] = {"work", "pend"}; /* blocking, deferred */
  for (size_t i = 0; i < 2; i++) {
    apex_submit_opts_t o = opts_timeout(0.2);
    apex_task_t *t = submit_json(m, "timeouts_kit", actions[i], "{\"stall_attempts\": 1}", &o);
    assert_timed_out(t, "schedule_to_close", "timed out after 0.200 s");
    apex_task_release(t);
  }
  apex_manager_destroy(m, 5000);
}

/* One worker held by a task that waits to be cancelled: the second one
 * never starts, and leaves the queue at once when its timeout fires. */
static void test_schedule_to_start_never_ran(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(1, NULL, 0);
  apex_task_t *busy = submit_json(m, "timeouts_kit", "work", "{\"stall_attempts\": 1}", NULL);
  AWAIT(apex_task_state(busy) == APEX_TASK_RUNNING, PROMPT_MS);
  apex_submit_opts_t o = opts(0.2, 0, 0);
  int64_t t0 = now_ms();
  apex_task_t *t = submit_json(m, "timeouts_kit", "work", NULL, &o);
  apex_task_t *d = submit_json(m, "timeouts_kit", "pend", NULL, &o); /* deferred */
  assert_int_equal(stats_of(m).queued, 2);
  assert_timed_out(t, "schedule_to_start", "never ran");
  assert_timed_out(d, "schedule_to_start", "not started within 0.200 s");
  assert_true(now_ms() - t0 >= 190);
  assert_int_equal(apex_task_attempts(t), 0);
  assert_int_equal(apex_task_attempts(d), 0);
  assert_int_equal(stats_of(m).queued, 0); /* left the run queue with their end */
  apex_task_release(d);
  assert_int_equal(apex_task_state(busy), APEX_TASK_RUNNING);
  assert_int_equal(apex_task_cancel(busy, NULL), APEX_OK);
  wait_done(busy);
  apex_task_release(busy);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

/* A task that starts in time is not touched by its schedule-to-start
 * timeout, however long it then runs. */
static void test_schedule_to_start_stops_at_start(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_submit_opts_t o = opts(0.1, 0, 0);
  apex_task_t *t = submit_json(m, "timeouts_kit", "work", "{\"ms\": 400}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

static void test_start_to_close_blocking(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  uint64_t seen = atomic_load(g_cancel_timeout);
  apex_submit_opts_t o = opts(0, 0.2, 0);
  apex_task_t *t = submit_json(m, "timeouts_kit", "work", "{\"stall_attempts\": 1}", &o);
  assert_timed_out(t, "start_to_close", "attempt 1 ran longer than 0.200 s");
  assert_int_equal(apex_task_attempts(t), 1);
  /* Its handler was cancelled with the reason "timeout". */
  AWAIT(atomic_load(g_cancel_timeout) == seen + 1, PROMPT_MS);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

static void test_start_to_close_deferred(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  uint64_t seen = atomic_load(g_cancel_timeout);
  apex_submit_opts_t o = opts(0, 0.2, 0);
  apex_task_t *t = submit_json(m, "timeouts_kit", "pend", NULL, &o);
  assert_timed_out(t, "start_to_close", "ran longer than 0.200 s");
  AWAIT(atomic_load(g_cancel_timeout) == seen + 1, PROMPT_MS); /* its on_cancel ran */
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

static apex_retry_policy_t retries(uint32_t max) {
  apex_retry_policy_t p = {.max_attempts = max};
  return p;
}

/* Attempt 1 times out, attempt 2 succeeds: blocking and deferred. */
static void test_start_to_close_retried(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  const char *actions[] = {"work", "pend"};
  for (size_t i = 0; i < 2; i++) {
    uint64_t seen = atomic_load(g_cancel_timeout);
    apex_retry_policy_t p = retries(3);
    apex_submit_opts_t o = opts(0, 0.2, 0);
    o.retry = &p;
    apex_task_t *t = submit_json(m, "timeouts_kit", actions[i], "{\"stall_attempts\": 1}", &o);
    wait_done(t);
    assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
    assert_int_equal(apex_task_attempts(t), 2);
    json_t *r = apex_task_result(t);
    assert_int_equal(json_integer_value(json_object_get(r, "attempt")), 2);
    json_decref(r);
    /* The first attempt saw "timeout"; the second ran with a fresh token. */
    assert_int_equal(atomic_load(g_cancel_timeout), seen + 1);
    apex_task_release(t);
  }
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.retries, 2);
  assert_int_equal(s.timed_out, 0);
  assert_int_equal(s.stuck_workers, 0);
  apex_manager_destroy(m, 5000);
}

/* Every attempt times out: the last error says which timeout. */
static void test_start_to_close_retries_exhausted(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_retry_policy_t p = retries(2);
  apex_submit_opts_t o = opts(0, 0.15, 0);
  o.retry = &p;
  apex_task_t *t = submit_json(m, "timeouts_kit", "work", "{\"stall_attempts\": 9}", &o);
  assert_timed_out(t, "start_to_close", "attempt 2 ran longer");
  assert_int_equal(apex_task_attempts(t), 2);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

/* A policy that lists APEX_E_TIMEOUT as non-retryable: no retry. */
static void test_start_to_close_non_retryable(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_status_t nr[] = {APEX_E_TIMEOUT};
  apex_retry_policy_t p = {.max_attempts = 3, .non_retryable = nr, .n_non_retryable = 1};
  apex_submit_opts_t o = opts(0, 0.2, 0);
  o.retry = &p;
  apex_task_t *t = submit_json(m, "timeouts_kit", "work", "{\"stall_attempts\": 1}", &o);
  assert_timed_out(t, "start_to_close", "attempt 1");
  assert_int_equal(apex_task_attempts(t), 1);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

/* The overall deadline bounds everything: a larger attempt timeout never
 * fires first. */
static void test_overall_timeout_wins(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_submit_opts_t o = opts(30, 30, 30);
  o.timeout_s = 0.2;
  apex_task_t *t = submit_json(m, "timeouts_kit", "work", "{\"stall_attempts\": 1}", &o);
  assert_timed_out(t, "schedule_to_close", "timed out after");
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

/* The descriptor's default (slow_default: 0.2 s) applies, and a negative
 * value switches it off for one call. */
static void test_action_default_and_none(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_task_t *t = submit_json(m, "timeouts_kit", "slow_default", "{\"stall_attempts\": 1}", NULL);
  assert_timed_out(t, "start_to_close", "0.200 s");
  apex_task_release(t);
  apex_submit_opts_t o = opts(0, APEX_TIMEOUT_NONE, 0);
  t = submit_json(m, "timeouts_kit", "slow_default", "{\"ms\": 500}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

/* A deferred attempt that ignores its timeout: the task ends at the
 * timeout, and the complete that comes later is ignored and counted. */
static void test_deferred_late_complete_ignored(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_submit_opts_t o = opts(0, 0.2, 0);
  apex_task_t *t = submit_json(m, "timeouts_kit", "hang", NULL, &o);
  assert_timed_out(t, "start_to_close", "ran longer");
  uint64_t late = stats_of(m).late_reports;
  apex_task_t *u = submit_json(m, "timeouts_kit", "unhang", NULL, NULL);
  wait_done(u);
  assert_int_equal(apex_task_state(u), APEX_TASK_SUCCEEDED);
  assert_int_equal(stats_of(m).late_reports, late + 1);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  apex_task_release(u);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

/* Heartbeats every 50 ms keep an attempt with a 1 s heartbeat timeout
 * alive for 2.5 s. (The timeout is twenty heartbeats long: a loaded
 * machine that holds the worker off its CPU for a few hundred ms must not
 * time it out.) */
static void test_heartbeat_keeps_alive(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_submit_opts_t o = opts(0, 0, 1.0);
  apex_task_t *t = submit_json(m, "timeouts_kit", "work", "{\"ms\": 2500, \"hb_ms\": 50}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

/* No heartbeat at all: the attempt times out, blocking and deferred. */
static void test_heartbeat_absent_times_out(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  const char *actions[] = {"work", "pend"};
  for (size_t i = 0; i < 2; i++) {
    uint64_t seen = atomic_load(g_cancel_timeout);
    apex_submit_opts_t o = opts(0, 0, 0.2);
    int64_t t0 = now_ms();
    apex_task_t *t = submit_json(m, "timeouts_kit", actions[i], "{\"stall_attempts\": 1}", &o);
    assert_timed_out(t, "heartbeat", "no heartbeat for 0.200 s");
    assert_true(now_ms() - t0 >= 190);
    AWAIT(atomic_load(g_cancel_timeout) == seen + 1, PROMPT_MS);
    apex_task_release(t);
  }
  apex_manager_destroy(m, 5000);
}

/* Details reach a host that asks for HEARTBEAT events, and the next
 * attempt reads the last ones; a host with the default mask gets none. */
static void test_heartbeat_details_events_and_next_attempt(void **st) {
  (void)st;
  hb_rec_t rec = {.mu = PTHREAD_MUTEX_INITIALIZER};
  apex_manager_t *m =
      new_manager(2, &rec, APEX_EVENT_HEARTBEAT | APEX_EVENT_DONE);
  apex_retry_policy_t p = retries(2);
  apex_submit_opts_t o = opts(0, 0.5, 0);
  o.retry = &p;
  apex_task_t *t =
      submit_json(m, "timeouts_kit", "work", "{\"stall_attempts\": 1, \"hb_ms\": 40}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  json_t *prev = json_object_get(r, "prev");
  assert_true(json_is_object(prev));
  assert_int_equal(json_integer_value(json_object_get(prev, "attempt")), 1);
  assert_true(json_integer_value(json_object_get(prev, "i")) >= 1);
  json_decref(r);
  AWAIT(__atomic_load_n(&rec.dones, __ATOMIC_SEQ_CST) == 1, PROMPT_MS);
  pthread_mutex_lock(&rec.mu);
  /* Coalesced at the progress rate: some, and fewer than ~12 sent. */
  assert_true(rec.heartbeats >= 1);
  assert_int_equal(rec.others, 0); /* the mask asked for no other type */
  assert_non_null(rec.last);
  assert_int_equal(json_integer_value(json_object_get(rec.last, "attempt")), 1);
  pthread_mutex_unlock(&rec.mu);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
  json_decref(rec.last);

  /* Default mask (0): the ABI-1 types only. */
  hb_rec_t rec2 = {.mu = PTHREAD_MUTEX_INITIALIZER};
  m = new_manager(2, &rec2, 0);
  apex_submit_opts_t o2 = opts(0, 0, 0);
  t = submit_json(m, "timeouts_kit", "work", "{\"ms\": 200, \"hb_ms\": 20}", &o2);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
  assert_int_equal(rec2.heartbeats, 0);
  assert_int_equal(rec2.dones, 1);
  json_decref(rec2.last);
}

/* Details beyond the value limits are refused (APEX_E_INVALID). */
static void test_heartbeat_bad_details_refused(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_task_t *t = submit_json(m, "timeouts_kit", "hb_bad", NULL, NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(r, "rc1")), APEX_E_INVALID);
  assert_int_equal(json_integer_value(json_object_get(r, "rc2")), APEX_E_INVALID);
  json_decref(r);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

/* NaN, infinities and values over 1e9 are refused, naming the field;
 * nothing is submitted. */
static void test_bad_values_refused(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  const char *fields[] = {"schedule_to_start_s", "start_to_close_s", "heartbeat_timeout_s"};
  double bad[] = {NAN, INFINITY, -INFINITY, 2e9};
  for (size_t f = 0; f < 3; f++) {
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
      double v[3] = {0, 0, 0};
      v[f] = bad[b];
      apex_submit_opts_t o = opts(v[0], v[1], v[2]);
      apex_task_t *t = NULL;
      apex_error_t *err = NULL;
      assert_int_equal(apex_manager_submit(m, "timeouts_kit", "work", NULL, &o, &t, &err),
                       APEX_E_INVALID);
      assert_null(t);
      assert_non_null(strstr(apex_error_message(err), fields[f]));
      apex_error_unref(err);
    }
  }
  assert_int_equal(stats_of(m).submitted, 0);
  apex_manager_destroy(m, 5000);
}

static void test_timeout_kind_of_other_errors(void **st) {
  (void)st;
  assert_null(apex_error_timeout_kind(NULL));
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_error_t *err = NULL;
  apex_task_t *t = NULL;
  assert_int_equal(apex_manager_submit(m, "timeouts_kit", "nope", NULL, NULL, &t, &err),
                   APEX_E_ACTION_NOT_FOUND);
  assert_null(apex_error_timeout_kind(err));
  apex_error_unref(err);
  apex_manager_destroy(m, 5000);
}

/* A retry waits until the timed-out attempt lets go of its ctx: a deferred
 * one that ignores its cancel holds the task (running, one attempt) until
 * the overall deadline ends it; its complete after that is late. */
static void test_overall_deadline_bounds_an_attempt_that_never_lets_go(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_retry_policy_t p = retries(3);
  apex_submit_opts_t o = opts(0, 0.1, 0);
  o.retry = &p;
  o.timeout_s = 0.6;
  apex_task_t *t = submit_json(m, "timeouts_kit", "hang", NULL, &o);
  assert_timed_out(t, "schedule_to_close", "timed out after 0.600 s");
  assert_int_equal(apex_task_attempts(t), 1);
  uint64_t late = stats_of(m).late_reports;
  apex_task_t *u = submit_json(m, "timeouts_kit", "unhang", NULL, NULL);
  wait_done(u);
  assert_int_equal(apex_task_state(u), APEX_TASK_SUCCEEDED);
  assert_int_equal(stats_of(m).late_reports, late + 1);
  assert_int_equal(stats_of(m).retries, 0);
  apex_task_release(u);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

/* An attempt heartbeats for 0.45 s (past its 0.3 s heartbeat timeout),
 * then goes silent: it times out 0.3 s after its last heartbeat, and the
 * retry resumes from that heartbeat's details. */
static void test_heartbeat_stops_then_retry_resumes(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(2, NULL, 0);
  apex_retry_policy_t p = retries(2);
  apex_submit_opts_t o = opts(0, 0, 0.3);
  o.retry = &p;
  int64_t t0 = now_ms();
  apex_task_t *t = submit_json(
      m, "timeouts_kit", "work",
      "{\"stall_attempts\": 1, \"hb_ms\": 30, \"hb_count\": 15}", &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_attempts(t), 2);
  assert_true(now_ms() - t0 >= 15 * 30 + 300 - 10);
  json_t *r = apex_task_result(t);
  json_t *prev = json_object_get(r, "prev");
  assert_int_equal(json_integer_value(json_object_get(prev, "attempt")), 1);
  assert_int_equal(json_integer_value(json_object_get(prev, "i")), 14); /* the last one */
  json_decref(r);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

/* DISPATCH mode: the host's own dispatch fires the attempt timeout. */
static void dispatch_until_done(apex_manager_t *m, apex_task_t *t) {
  int64_t end = now_ms() + 10000;
  while (!apex_task_state_is_terminal(apex_task_state(t)) && now_ms() < end) {
    struct pollfd pfd = {.fd = apex_manager_fd(m), .events = POLLIN};
    poll(&pfd, 1, 50);
    apex_manager_dispatch(m);
  }
}

static void test_dispatch_mode_times_out(void **st) {
  (void)st;
  hb_rec_t rec = {.mu = PTHREAD_MUTEX_INITIALIZER};
  apex_manager_config_t cfg = base_config(2);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  cfg.on_event = on_event;
  cfg.event_user = &rec;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  apex_submit_opts_t o = opts(0, 0.2, 0);
  apex_task_t *t = submit_json(m, "timeouts_kit", "work", "{\"stall_attempts\": 1}", &o);
  dispatch_until_done(m, t);
  assert_timed_out(t, "start_to_close", "attempt 1");
  apex_manager_dispatch(m);
  assert_int_equal(rec.dones, 1);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
  json_decref(rec.last);
}

/* Many tasks at once, on few workers: each deferred one times out once and
 * succeeds on its retry; each blocking one heartbeats well within its
 * timeout and succeeds. The timeout heap is shared by all of them. */
static void test_many_tasks(void **st) {
  (void)st;
  enum { N = 200 };
  apex_manager_t *m = new_manager(4, NULL, 0);
  apex_task_t *t[2 * N];
  apex_retry_policy_t p = retries(3);
  for (int i = 0; i < N; i++) {
    apex_submit_opts_t o = opts(0, 0.05, 0);
    o.retry = &p;
    t[i] = submit_json(m, "timeouts_kit", "pend", "{\"stall_attempts\": 1}", &o);
    apex_submit_opts_t h = opts(30, 0, 5);
    t[N + i] = submit_json(m, "timeouts_kit", "work", "{\"ms\": 5, \"hb_ms\": 1}", &h);
  }
  for (int i = 0; i < 2 * N; i++) {
    wait_done(t[i]);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    assert_int_equal(apex_task_attempts(t[i]), i < N ? 2 : 1);
    apex_task_release(t[i]);
  }
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.succeeded, 2 * N);
  assert_int_equal(s.retries, N);
  apex_manager_destroy(m, 5000);
}

/* A descriptor default that is not a number of seconds: the plugin does
 * not load, and the error names the field. */
static void test_bad_descriptor_default_refused(void **st) {
  (void)st;
  apex_manager_t *m = new_manager(1, NULL, 0);
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_load(m, APEX_TEST_PLUGIN_DIR "/bad_timeout_desc.so", &err),
                   APEX_E_PLUGIN_LOAD);
  assert_non_null(strstr(apex_error_message(err), "heartbeat_timeout_s"));
  apex_error_unref(err);
  apex_manager_destroy(m, 5000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_schedule_to_close_names_itself),
      cmocka_unit_test(test_schedule_to_start_never_ran),
      cmocka_unit_test(test_schedule_to_start_stops_at_start),
      cmocka_unit_test(test_start_to_close_blocking),
      cmocka_unit_test(test_start_to_close_deferred),
      cmocka_unit_test(test_start_to_close_retried),
      cmocka_unit_test(test_start_to_close_retries_exhausted),
      cmocka_unit_test(test_start_to_close_non_retryable),
      cmocka_unit_test(test_overall_timeout_wins),
      cmocka_unit_test(test_action_default_and_none),
      cmocka_unit_test(test_deferred_late_complete_ignored),
      cmocka_unit_test(test_heartbeat_keeps_alive),
      cmocka_unit_test(test_heartbeat_absent_times_out),
      cmocka_unit_test(test_heartbeat_details_events_and_next_attempt),
      cmocka_unit_test(test_heartbeat_bad_details_refused),
      cmocka_unit_test(test_bad_values_refused),
      cmocka_unit_test(test_timeout_kind_of_other_errors),
      cmocka_unit_test(test_heartbeat_stops_then_retry_resumes),
      cmocka_unit_test(test_overall_deadline_bounds_an_attempt_that_never_lets_go),
      cmocka_unit_test(test_dispatch_mode_times_out),
      cmocka_unit_test(test_many_tasks),
      cmocka_unit_test(test_bad_descriptor_default_refused),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
