/* The scheduler's queue (src/sched/, docs/scheduling.md): rate limits
 * (start times fit the token bucket), priorities with aging, max_queued
 * per scope with queue_wait_ms woken when room frees, delayed starts (the
 * scheduled state and its event), cancel of a task in each place it can
 * wait, shutdown with tasks waiting everywhere (one DONE each), and bad
 * input for every call.
 *
 * Plugins: sched_a, sched_b, sched_c (tests/plugins/sched_kit.h).
 * Threads: cmocka's is the host; a second host thread waits for room. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/sched_harness.h"

/* 50 per second, burst 5, over 200 tasks: the k-th start (from 0) comes
 * no sooner than (k - 5) / 50 s after the first. */
static void test_rate_limit_start_times_fit_the_bucket(void **st) {
  (void)st;
  enum { N = 200 };
  apex_manager_config_t cfg = base_config(4);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_rate(m, APEX_SCOPE_PLUGIN, "sched_c", 50, 5, err));
  apex_task_t *t[N];
  int64_t t0 = now_ms();
  for (int i = 0; i < N; i++) t[i] = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 0, 0, NULL);
  AWAIT(scope_of(m, APEX_SCOPE_PLUGIN, "sched_c").waiting_on_rate > 0, PROMPT_MS);
  for (int i = 0; i < N; i++) {
    assert_int_equal(apex_task_wait(t[i], 30000), APEX_OK);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  int64_t took = now_ms() - t0;
  assert_int_equal(atomic_load(&p->n_starts), N);
  int64_t first = p->start_ns[0];
  for (int k = 0; k < N; k++) {
    double at = (double)(p->start_ns[k] - first) / 1e9;
    double earliest = (k - 5) / 50.0 - 0.005; /* clock rounding */
    if (at < earliest) print_error("start %d at %.4f s, before %.4f s\n", k, at, earliest);
    assert_true(at >= earliest);
  }
  /* And not much slower: 195 tokens at 50/s is 3.9 s (generous bound). */
  print_message("200 tasks at 50/s burst 5: %lld ms\n", (long long)took);
  assert_true(took >= 3800 && took < 9000);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

/* Tasks a rate holds back wait without a worker: with C at 1 per 10 s,
 * C's second task waits for its token while B's run on the one worker. */
static void test_rate_limited_task_holds_back_nobody(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_rate(m, APEX_SCOPE_PLUGIN, "sched_c", 0.1, 1, err));
  apex_task_t *c[3];
  for (int i = 0; i < 3; i++) c[i] = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 0, -1, NULL);
  apex_task_t *b[20];
  for (int i = 0; i < 20; i++) b[i] = sk_submit(m, p, "sched_b", "x", -1, -1, -1, -1, 0, -1, NULL);
  for (int i = 0; i < 20; i++) {
    assert_int_equal(apex_task_wait(b[i], PROMPT_MS), APEX_OK);
    apex_task_release(b[i]);
  }
  wait_done(c[0]);
  assert_int_equal(scope_of(m, APEX_SCOPE_PLUGIN, "sched_c").waiting_on_rate, 2);
  assert_int_equal(apex_task_state(c[1]), APEX_TASK_QUEUED);
  /* Removing the rate lets them go at once. */
  SCHED_OK(apex_manager_set_rate(m, APEX_SCOPE_PLUGIN, "sched_c", 0, 0, err));
  for (int i = 1; i < 3; i++) assert_int_equal(apex_task_wait(c[i], PROMPT_MS), APEX_OK);
  for (int i = 0; i < 3; i++) apex_task_release(c[i]);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

/* One worker, held; then 20 low and 20 high priority tasks: the high ones
 * go first, but one pick in 8 goes to the low ones (aging). */
static void test_priorities_and_aging(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  apex_task_t *gate = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 300000, -1, NULL);
  AWAIT(atomic_load(&p->started) == 1, PROMPT_MS);
  apex_submit_opts_t lo, hi;
  apex_submit_opts_init(&lo);
  apex_submit_opts_init(&hi);
  lo.priority = APEX_PRIORITY_LOW;
  hi.priority = APEX_PRIORITY_HIGH;
  apex_task_t *t[40];
  for (int i = 0; i < 20; i++) t[i] = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, 0, &lo);
  for (int i = 0; i < 20; i++) t[20 + i] = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, 1, &hi);
  for (int i = 0; i < 40; i++) {
    wait_done(t[i]);
    apex_task_release(t[i]);
  }
  wait_done(gate);
  apex_task_release(gate);
  char order[41];
  for (int i = 0; i < 40; i++) order[i] = p->start_tag[i] ? 'H' : 'l';
  order[40] = '\0';
  print_message("start order: %s\n", order);
  /* Of the first 8 starts, 7 are high and the 8th low: aged. */
  for (int i = 0; i < 7; i++) assert_int_equal(order[i], 'H');
  assert_int_equal(order[7], 'l');
  /* The high ones are all done within 20 + 20/7 + 1 picks. */
  int last_h = 0;
  for (int i = 0; i < 40; i++)
    if (order[i] == 'H') last_h = i;
  assert_true(last_h <= 23);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

typedef struct waiter {
  apex_manager_t *m;
  sk_probe_t *p;
  int64_t wait_ms;
  double run_after_s;
  int rc;
  int64_t took_ms;
  apex_task_t *t;
} waiter_t;

static void *wait_for_room(void *arg) {
  waiter_t *w = arg;
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.queue_wait_ms = w->wait_ms;
  o.run_after_s = w->run_after_s;
  int64_t t0 = now_ms();
  w->t = sk_submit_rc(w->m, w->p, "sched_a", "x", -1, -1, -1, -1, 0, -1, &o, &w->rc, NULL);
  w->took_ms = now_ms() - t0;
  return NULL;
}

/* max_queued per plugin: a submit past it fails at once, waits up to
 * queue_wait_ms, or is let in the moment a task leaves (a cancel here). */
static void test_max_queued_and_wait_for_room(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_max_queued(m, APEX_SCOPE_PLUGIN, "sched_a", 5, err));
  apex_task_t *gate = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 2000000, -1, NULL);
  AWAIT(atomic_load(&p->started) == 1, PROMPT_MS);
  apex_task_t *t[5];
  for (int i = 0; i < 5; i++) t[i] = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, -1, NULL);
  int rc;
  apex_error_t *e2 = NULL;
  apex_task_t *x = sk_submit_rc(m, p, "sched_a", "x", -1, -1, -1, -1, 0, -1, NULL, &rc, &e2);
  assert_int_equal(rc, APEX_E_QUEUE_FULL);
  assert_null(x);
  assert_non_null(strstr(apex_error_message(e2), "sched_a"));
  apex_error_unref(e2);
  /* Other plugins are not bounded by it. */
  apex_task_t *b = sk_submit(m, p, "sched_b", "x", -1, -1, -1, -1, 0, -1, NULL);
  /* A bounded wait gives up. */
  waiter_t w1 = {.m = m, .p = p, .wait_ms = 100};
  wait_for_room(&w1);
  assert_int_equal(w1.rc, APEX_E_QUEUE_FULL);
  assert_true(w1.took_ms >= 100);
  /* An unbounded one is let in when a task leaves. */
  waiter_t w2 = {.m = m, .p = p, .wait_ms = -1};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, wait_for_room, &w2), 0);
  nap_ms(50); /* not for correctness: lets it reach the wait */
  int64_t c0 = now_ms();
  assert_int_equal(apex_task_cancel(t[0], NULL), APEX_OK);
  pthread_join(th, NULL);
  assert_int_equal(w2.rc, APEX_OK);
  assert_true(now_ms() - c0 < PROMPT_MS);
  assert_int_equal(scope_of(m, APEX_SCOPE_PLUGIN, "sched_a").queued, 5);
  /* The global bound replaces config.max_queued. */
  SCHED_OK(apex_manager_set_max_queued(m, APEX_SCOPE_GLOBAL, NULL, 6, err));
  e2 = NULL;
  apex_task_t *c = sk_submit_rc(m, p, "sched_c", "x", -1, -1, -1, -1, 0, -1, NULL, &rc, &e2);
  assert_int_equal(rc, APEX_E_QUEUE_FULL); /* 5 of A and 1 of B wait */
  assert_null(c);
  assert_non_null(strstr(apex_error_message(e2), "global"));
  apex_error_unref(e2);
  wait_done(gate);
  for (int i = 0; i < 5; i++) {
    wait_done(t[i]);
    apex_task_release(t[i]);
  }
  wait_done(w2.t);
  apex_task_release(w2.t);
  wait_done(b);
  apex_task_release(b);
  apex_task_release(gate);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

/* A scheduled task counts against max_queued, and one waiting for room
 * is let in when a scheduled one is cancelled; tasks of the waiter's lock
 * stripe keep running meanwhile (it holds no task lock while it waits). */
static void test_scheduled_tasks_wait_for_room(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_max_queued(m, APEX_SCOPE_PLUGIN, "sched_a", 1, err));
  apex_submit_opts_t later;
  apex_submit_opts_init(&later);
  later.run_after_s = 3600;
  apex_task_t *first = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, -1, &later);
  waiter_t w = {.m = m, .p = p, .wait_ms = -1, .run_after_s = 3600};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, wait_for_room, &w), 0);
  nap_ms(100); /* not for correctness: lets the waiter reach its wait first */
  /* 200 tasks of another plugin, every lock stripe among them, run. */
  apex_task_t *b[200];
  for (int i = 0; i < 200; i++) b[i] = sk_submit(m, p, "sched_b", "x", -1, -1, -1, -1, 0, -1, NULL);
  for (int i = 0; i < 200; i++) {
    wait_done(b[i]);
    apex_task_release(b[i]);
  }
  assert_int_equal(apex_task_cancel(first, NULL), APEX_OK);
  pthread_join(th, NULL);
  assert_int_equal(w.rc, APEX_OK);
  assert_int_equal(apex_task_state(w.t), APEX_TASK_SCHEDULED);
  assert_int_equal(scope_of(m, APEX_SCOPE_PLUGIN, "sched_a").scheduled, 1);
  apex_task_release(first);
  apex_task_release(w.t);
  assert_int_equal(apex_manager_destroy(m, 0), APEX_OK);
  free(p);
}

/* Events the tests count: DONE and SCHEDULED, per tag in event_user. */
typedef struct counts {
  atomic_int done[64], scheduled[64];
  atomic_int other_done;
} counts_t;

static void on_event(const apex_event_t *ev, void *user) {
  counts_t *c = user;
  intptr_t tag = (intptr_t)apex_task_id(ev->task) % 64;
  if (ev->type == APEX_EVENT_DONE) atomic_fetch_add(&c->done[tag], 1);
  if (ev->type == APEX_EVENT_SCHEDULED) {
    assert_int_equal(ev->state, APEX_TASK_SCHEDULED);
    atomic_fetch_add(&c->scheduled[tag], 1);
  }
}

static void test_run_after_and_run_at(void **st) {
  (void)st;
  counts_t *c = calloc(1, sizeof *c);
  apex_manager_config_t cfg = base_config(2);
  cfg.on_event = on_event;
  cfg.event_user = c;
  cfg.event_mask = APEX_EVENT_DONE | APEX_EVENT_SCHEDULED;
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.run_after_s = 0.3;
  int64_t t0 = now_ms();
  apex_task_t *t = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, 0, &o);
  assert_int_equal(apex_task_state(t), APEX_TASK_SCHEDULED);
  assert_int_equal(scope_of(m, APEX_SCOPE_PLUGIN, "sched_a").scheduled, 1);
  assert_int_equal(stats_of(m).queued, 0);
  wait_done(t);
  assert_true(now_ms() - t0 >= 300);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(scope_of(m, APEX_SCOPE_PLUGIN, "sched_a").scheduled, 0);
  AWAIT(atomic_load(&c->done[apex_task_id(t) % 64]) == 1, PROMPT_MS);
  assert_int_equal(atomic_load(&c->scheduled[apex_task_id(t) % 64]), 1);
  apex_task_release(t);
  /* A past run_at runs now. */
  struct timeval tv;
  gettimeofday(&tv, NULL);
  apex_submit_opts_t past;
  apex_submit_opts_init(&past);
  past.run_at = (double)tv.tv_sec - 100;
  t = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, 0, &past);
  assert_true(apex_task_state(t) != APEX_TASK_SCHEDULED);
  wait_done(t);
  AWAIT(atomic_load(&c->done[apex_task_id(t) % 64]) == 1, PROMPT_MS);
  assert_int_equal(atomic_load(&c->scheduled[apex_task_id(t) % 64]), 0);
  apex_task_release(t);
  /* A run_at one second out. */
  apex_submit_opts_t at;
  apex_submit_opts_init(&at);
  at.run_at = (double)tv.tv_sec + (double)tv.tv_usec / 1e6 + 0.5;
  t0 = now_ms();
  t = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, 0, &at);
  assert_int_equal(apex_task_state(t), APEX_TASK_SCHEDULED);
  wait_done(t);
  assert_true(now_ms() - t0 >= 300);
  apex_task_release(t);
  /* One beyond the overall deadline is refused, naming run_at. */
  apex_submit_opts_t late;
  apex_submit_opts_init(&late);
  late.run_at = (double)tv.tv_sec + 100;
  late.timeout_s = 10;
  apex_error_t *e2 = NULL;
  int rc;
  t = sk_submit_rc(m, p, "sched_a", "x", -1, -1, -1, -1, 0, 0, &late, &rc, &e2);
  assert_int_equal(rc, APEX_E_INVALID);
  assert_non_null(strstr(apex_error_message(e2), "run_at"));
  apex_error_unref(e2);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
  free(c);
}

/* A task in each place it can wait (runnable, on a limit, on a rate,
 * scheduled) ends at once when cancelled, leaves every count, and the
 * held task behind the limit runs. */
static void test_cancel_in_each_waiting_place(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_PLUGIN, "sched_a", 1, err));
  SCHED_OK(apex_manager_set_rate(m, APEX_SCOPE_PLUGIN, "sched_b", 0.001, 1, err));
  apex_task_t *hold = sk_submit(m, p, "sched_a", "d", -1, -1, -1, -1, 1000000, -1, NULL);
  AWAIT(atomic_load(&p->started) == 1, PROMPT_MS);
  apex_task_t *lim = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, -1, NULL);
  apex_task_t *rate0 = sk_submit(m, p, "sched_b", "x", -1, -1, -1, -1, 0, -1, NULL); /* the burst */
  apex_task_t *rate = sk_submit(m, p, "sched_b", "x", -1, -1, -1, -1, 0, -1, NULL);
  apex_submit_opts_t later;
  apex_submit_opts_init(&later);
  later.run_after_s = 3600;
  apex_task_t *sch = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 0, -1, &later);
  wait_done(rate0);
  AWAIT(scope_of(m, APEX_SCOPE_PLUGIN, "sched_a").waiting_on_limit == 1, PROMPT_MS);
  AWAIT(scope_of(m, APEX_SCOPE_PLUGIN, "sched_b").waiting_on_rate == 1, PROMPT_MS);
  assert_int_equal(scope_of(m, APEX_SCOPE_PLUGIN, "sched_c").scheduled, 1);
  apex_task_t *each[] = {lim, rate, sch};
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(apex_task_cancel(each[i], NULL), APEX_OK);
    assert_int_equal(apex_task_state(each[i]), APEX_TASK_CANCELLED);
  }
  apex_scope_stats_t g = scope_of(m, APEX_SCOPE_GLOBAL, NULL);
  assert_int_equal(g.waiting_on_limit + g.waiting_on_rate + g.scheduled + g.queued, 0);
  assert_int_equal(stats_of(m).queued, 0);
  /* Runnable: held by the busy worker (one worker, the deferred hold
   * does not occupy it; a blocking one of C does). */
  apex_task_t *busy = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 500000, -1, NULL);
  AWAIT(atomic_load(&p->started) == 3, PROMPT_MS);
  apex_task_t *run = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 0, -1, NULL);
  assert_int_equal(scope_of(m, APEX_SCOPE_PLUGIN, "sched_c").queued, 1);
  assert_int_equal(apex_task_cancel(run, NULL), APEX_OK);
  assert_int_equal(apex_task_state(run), APEX_TASK_CANCELLED);
  assert_int_equal(scope_of(m, APEX_SCOPE_PLUGIN, "sched_c").queued, 0);
  apex_task_t *all[] = {hold, lim, rate0, rate, sch, busy, run};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    wait_done(all[i]);
    apex_task_release(all[i]);
  }
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

/* Destroy with tasks waiting everywhere: each gets exactly one DONE, and
 * destroy returns promptly. */
static void test_shutdown_with_tasks_parked_everywhere(void **st) {
  (void)st;
  counts_t *c = calloc(1, sizeof *c);
  apex_manager_config_t cfg = base_config(1);
  cfg.on_event = on_event;
  cfg.event_user = c;
  cfg.event_mask = APEX_EVENT_DONE;
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  SCHED_OK(apex_manager_set_concurrency(m, APEX_SCOPE_PLUGIN, "sched_a", 1, err));
  SCHED_OK(apex_manager_set_rate(m, APEX_SCOPE_PLUGIN, "sched_b", 0.001, 1, err));
  apex_submit_opts_t later;
  apex_submit_opts_init(&later);
  later.run_after_s = 3600;
  enum { N = 48 };
  apex_task_t *t[N];
  t[0] = sk_submit(m, p, "sched_a", "d", -1, -1, -1, -1, 100000, -1, NULL);
  t[1] = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 200000, -1, NULL);
  AWAIT(atomic_load(&p->started) == 2, PROMPT_MS);
  for (int i = 2; i < N; i++) {
    switch (i % 4) {
      case 0: t[i] = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, -1, NULL); break;
      case 1: t[i] = sk_submit(m, p, "sched_b", "x", -1, -1, -1, -1, 0, -1, NULL); break;
      case 2: t[i] = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 0, -1, &later); break;
      default: t[i] = sk_submit(m, p, "sched_c", "x", -1, -1, -1, -1, 0, -1, NULL); break;
    }
  }
  int64_t t0 = now_ms();
  assert_int_equal(apex_manager_destroy(m, 0), APEX_OK);
  assert_true(now_ms() - t0 < 5000);
  for (int i = 0; i < N; i++) {
    assert_true(apex_task_state_is_terminal(apex_task_state(t[i])));
    assert_int_equal(atomic_load(&c->done[apex_task_id(t[i]) % 64]), 1);
    apex_task_release(t[i]);
  }
  free(p);
  free(c);
}

/* A LOOP callback runs on Apex's runtime thread: a submit from there may
 * not wait for room. */
static apex_manager_t *g_cb_m;
static sk_probe_t *g_cb_p;
static atomic_int g_cb_rc = 1;
static void on_done_submit(const apex_event_t *ev, void *user) {
  (void)user;
  if (ev->type != APEX_EVENT_DONE || atomic_load(&g_cb_rc) != 1) return;
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.queue_wait_ms = 10;
  int rc;
  apex_error_t *err = NULL;
  apex_task_t *t =
      sk_submit_rc(g_cb_m, g_cb_p, "sched_a", "x", -1, -1, -1, -1, 0, -1, &o, &rc, &err);
  if (t) apex_task_release(t);
  if (rc == APEX_E_INVALID && !strstr(apex_error_message(err), "queue_wait_ms")) rc = 99;
  apex_error_unref(err);
  atomic_store(&g_cb_rc, rc);
}

/* Expects rc APEX_E_INVALID and an error mentioning `field`. */
static void expect_invalid(int rc, apex_error_t *err, const char *field) {
  if (rc != APEX_E_INVALID || !err || !strstr(apex_error_message(err), field))
    print_error("want INVALID naming %s; got %d '%s'\n", field, rc, apex_error_message(err));
  assert_int_equal(rc, APEX_E_INVALID);
  assert_non_null(strstr(apex_error_message(err), field));
  apex_error_unref(err);
}

static void test_bad_input_for_every_call(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  cfg.on_event = on_done_submit;
  apex_manager_t *m = sched_manager(&cfg);
  sk_probe_t *p = probe_new();
  g_cb_m = m;
  g_cb_p = p;
  apex_error_t *e = NULL;
#define BAD(call, field)   \
  do {                     \
    e = NULL;              \
    int rc_ = (call);      \
    expect_invalid(rc_, e, field); \
  } while (0)
  BAD(apex_manager_set_concurrency(m, (apex_scope_t)7, NULL, 1, &e), "scope");
  BAD(apex_manager_set_concurrency(m, APEX_SCOPE_GLOBAL, "x", 1, &e), "name");
  BAD(apex_manager_set_concurrency(m, APEX_SCOPE_PLUGIN, NULL, 1, &e), "name");
  BAD(apex_manager_set_concurrency(m, APEX_SCOPE_PLUGIN, "nope", 1, &e), "nope");
  BAD(apex_manager_set_concurrency(m, APEX_SCOPE_ACTION, "sched_a", 1, &e), "plugin.action");
  BAD(apex_manager_set_concurrency(m, APEX_SCOPE_ACTION, "sched_a.zz", 1, &e), "zz");
  BAD(apex_manager_set_concurrency(m, APEX_SCOPE_ACTION, "nope.x", 1, &e), "nope");
  BAD(apex_manager_set_concurrency(m, APEX_SCOPE_KEY, "", 1, &e), "name");
  BAD(apex_manager_set_concurrency(m, APEX_SCOPE_KEY, "\xff\xfe", 1, &e), "name");
  BAD(apex_manager_set_concurrency(m, APEX_SCOPE_GLOBAL, NULL, APEX_LIMIT_MAX + 1, &e), "limit");
  BAD(apex_manager_set_concurrency(NULL, APEX_SCOPE_GLOBAL, NULL, 1, &e), "manager");
  BAD(apex_manager_set_rate(m, APEX_SCOPE_PLUGIN, "sched_a", -1, 1, &e), "per_second");
  BAD(apex_manager_set_rate(m, APEX_SCOPE_PLUGIN, "sched_a", NAN, 1, &e), "per_second");
  BAD(apex_manager_set_rate(m, APEX_SCOPE_PLUGIN, "sched_a", 2e9, 1, &e), "per_second");
  BAD(apex_manager_set_rate(m, APEX_SCOPE_PLUGIN, "sched_a", 10, 0, &e), "burst");
  BAD(apex_manager_set_rate(m, (apex_scope_t)-1, NULL, 10, 1, &e), "scope");
  BAD(apex_manager_set_max_queued(m, APEX_SCOPE_PLUGIN, "nope", 1, &e), "nope");
  BAD(apex_manager_set_max_queued(m, APEX_SCOPE_GLOBAL, NULL, (size_t)-1, &e), "max");
  BAD(apex_manager_set_weight(m, NULL, 2, &e), "fairness_key");
  BAD(apex_manager_set_weight(m, "", 2, &e), "fairness_key");
  BAD(apex_manager_set_weight(m, "a", APEX_WEIGHT_MAX + 1, &e), "weight");
  apex_scope_stats_t ss = APEX_SCOPE_STATS_INIT;
  assert_int_equal(apex_manager_scope_stats(m, APEX_SCOPE_PLUGIN, "nope", &ss), APEX_E_INVALID);
  assert_int_equal(apex_manager_scope_stats(m, APEX_SCOPE_KEY, NULL, &ss), APEX_E_INVALID);
  assert_int_equal(apex_manager_scope_stats(m, (apex_scope_t)9, NULL, &ss), APEX_E_INVALID);
  assert_int_equal(apex_manager_scope_stats(m, APEX_SCOPE_GLOBAL, NULL, NULL), APEX_E_INVALID);
  ss.struct_size = 2;
  assert_int_equal(apex_manager_scope_stats(m, APEX_SCOPE_GLOBAL, NULL, &ss), APEX_E_INVALID);
  /* A key never used reads all zero. */
  apex_scope_stats_t k = scope_of(m, APEX_SCOPE_KEY, "never");
  assert_int_equal(k.queued + k.running + k.scheduled, 0);
  /* Submit options. */
  static const char *const fields[] = {"priority",     "priority",    "concurrency_key",
                                       "fairness_key", "run_after_s", "run_after_s",
                                       "run_at",       "run_after_s", "queue_wait_ms"};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    apex_submit_opts_t o;
    apex_submit_opts_init(&o);
    switch (i) {
      case 0: o.priority = 101; break;
      case 1: o.priority = -101; break;
      case 2: o.concurrency_key = ""; break;
      case 3: o.fairness_key = "\xc3"; break;
      case 4: o.run_after_s = -1; break;
      case 5: o.run_after_s = INFINITY; break;
      case 6: o.run_at = NAN; break;
      case 7: o.run_after_s = 20; o.timeout_s = 5; break;
      default: o.queue_wait_ms = -2; break;
    }
    int rc;
    e = NULL;
    apex_task_t *t = sk_submit_rc(m, p, "sched_a", "x", -1, -1, -1, -1, 0, -1, &o, &rc, &e);
    assert_null(t);
    expect_invalid(rc, e, fields[i]);
  }
  /* queue_wait_ms from the runtime thread (a LOOP callback). */
  apex_task_t *t = sk_submit(m, p, "sched_a", "x", -1, -1, -1, -1, 0, -1, NULL);
  wait_done(t);
  apex_task_release(t);
  AWAIT(atomic_load(&g_cb_rc) != 1, PROMPT_MS);
  assert_int_equal(atomic_load(&g_cb_rc), APEX_E_INVALID);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rate_limit_start_times_fit_the_bucket),
      cmocka_unit_test(test_rate_limited_task_holds_back_nobody),
      cmocka_unit_test(test_priorities_and_aging),
      cmocka_unit_test(test_max_queued_and_wait_for_room),
      cmocka_unit_test(test_scheduled_tasks_wait_for_room),
      cmocka_unit_test(test_run_after_and_run_at),
      cmocka_unit_test(test_cancel_in_each_waiting_place),
      cmocka_unit_test(test_shutdown_with_tasks_parked_everywhere),
      cmocka_unit_test(test_bad_input_for_every_call),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
