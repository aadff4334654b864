/* Integration tests of the engine's races, through the public API: cancel
 * against completion, a deadline against completion, releasing a handle
 * from another thread while the task runs, many threads submitting and
 * cancelling at once, and several threads waiting on one task.
 *
 * What each checks is the engine's invariant, whichever way a race goes:
 * every task ends in exactly one terminal state, gets exactly one DONE event
 * whose state is that one, and the counters add up. Built for TSan too, so
 * iteration counts shrink under sanitizers (ITER).
 *
 * DONE events are counted per task id in an array of atomics (ids start at 1
 * in a fresh manager and go up by one); apex_manager_destroy delivers every
 * queued event before it returns, so the counts are final after it.
 *
 * Threads: the test thread, helper threads each test starts and joins, and
 * the engine's threads (the DONE counter runs on the runtime thread). */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
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

#if defined(__SANITIZE_THREAD__)
#define ITER(plain, tsan) (tsan)
#elif defined(__SANITIZE_ADDRESS__)
#define ITER(plain, tsan) ((plain) / 2)
#else
#define ITER(plain, tsan) (plain)
#endif

#define MAX_IDS 20000


/* ------------------------------------------------------------ DONE counter */

typedef struct dones {
  atomic_uint count[MAX_IDS + 1];
  atomic_int state[MAX_IDS + 1]; /* the state the DONE event carried */
  atomic_uint out_of_range;
} dones_t;

static void on_done(const apex_event_t *ev, void *user) {
  dones_t *d = user;
  if (ev->type != APEX_EVENT_DONE) return;
  if (ev->task_id == 0 || ev->task_id > MAX_IDS) {
    atomic_fetch_add(&d->out_of_range, 1);
    return;
  }
  atomic_fetch_add(&d->count[ev->task_id], 1);
  atomic_store(&d->state[ev->task_id], (int)ev->state);
}

static dones_t *dones_new(void) {
  dones_t *d = calloc(1, sizeof *d); /* all-zero atomics are valid zeros */
  assert_non_null(d);
  return d;
}

/* ----------------------------------------------------------------- helpers */


static apex_manager_t *make_manager(dones_t *d) {
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = 2;
  cfg.log = quiet_log;
  if (d) {
    cfg.on_event = on_done;
    cfg.event_user = d;
    cfg.event_mask = APEX_EVENT_DONE;
  }
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_test_plugins(m);
  return m;
}

static uint64_t outcomes(apex_manager_t *m) {
  apex_stats_t s = stats_of(m);
  return s.succeeded + s.failed + s.cancelled + s.timed_out;
}

/* After destroy: ids [first, first + n) got exactly one DONE each, carrying
 * the state in states[i - first] (NULL: not checked). */
static void assert_one_done_each(dones_t *d, uint64_t first, size_t n, const int *states) {
  for (size_t i = 0; i < n; i++) {
    unsigned c = atomic_load(&d->count[first + i]);
    if (c != 1) print_error("task %llu: %u DONE events\n", (unsigned long long)(first + i), c);
    assert_int_equal(c, 1);
    if (states) assert_int_equal(atomic_load(&d->state[first + i]), states[i]);
  }
  assert_int_equal(atomic_load(&d->out_of_range), 0);
}

/* ------------------------------------------------------ cancel/completion */

/* Spins for about n loop turns: moves a cancel along a task's life. */
static void spin(unsigned n) {
  for (volatile unsigned i = 0; i < n; i++) {
  }
}

/* The three ways a cancel can meet a task whose handler ignores its token
 * (noop, or every fourth round a 1 ms deaf one): before it started (it ends
 * cancelled), while its handler runs (succeeded, and the cancel returned
 * OK), after it ended (APEX_E_ALREADY). The delay between submit and
 * cancel adapts, so it hovers where the task starts and each interleaving
 * is seen; the test requires every one at least once. */
enum { BEFORE_START, WHILE_RUNNING, AFTER_END };

static void test_cancel_racing_completion_ends_once(void **st) {
  (void)st;
  const int n = ITER(1000, 200), max = ITER(20000, 4000);
  dones_t *d = dones_new();
  apex_manager_t *m = make_manager(d);
  int *states = calloc((size_t)max, sizeof *states);
  assert_non_null(states);
  uint64_t first = 0;
  int cancelled = 0, seen[3] = {0, 0, 0}, i;
  unsigned delay = 0;
  for (i = 0; i < max && (i < n || !seen[BEFORE_START] || !seen[WHILE_RUNNING] ||
                          !seen[AFTER_END]);
       i++) {
    /* Every fourth round a handler that runs 1 ms deaf to its token, and
     * the cancel as soon as it is seen started: each wait returns after the
     * DONE callback, so the worker is asleep when the next task comes, and
     * on a loaded machine its wake-up varies far more than a noop runs; the
     * delay alone then rarely lands on a running handler. */
    int slow = i % 4 == 3;
    apex_task_t *t = slow ? submit_json(m, "hostile", "ignore_cancel", "{\"ms\": 1}", NULL)
                          : submit_json(m, "testkit", "noop", NULL, NULL);
    if (i == 0) first = apex_task_id(t);
    if (slow)
      while (apex_task_state(t) == APEX_TASK_QUEUED) sched_yield();
    else
      spin(delay);
    int rc = apex_task_cancel(t, NULL);
    assert_true(rc == APEX_OK || rc == APEX_E_ALREADY);
    assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
    int s = apex_task_state(t);
    assert_true(s == APEX_TASK_SUCCEEDED || s == APEX_TASK_CANCELLED);
    /* ALREADY means it had ended (noop ignores its token: succeeded). */
    if (rc == APEX_E_ALREADY) assert_int_equal(s, APEX_TASK_SUCCEEDED);
    int how = rc == APEX_E_ALREADY ? AFTER_END : s == APEX_TASK_CANCELLED ? BEFORE_START
                                                                          : WHILE_RUNNING;
    seen[how]++;
    /* Too early: wait longer next time; too late: shorter. */
    if (slow) {
    } else if (how == BEFORE_START) {
      delay = delay + delay / 4 + 64;
    } else if (how == AFTER_END) {
      delay -= delay / 4;
    }
    if (s == APEX_TASK_CANCELLED) cancelled++;
    states[i] = s;
    apex_task_release(t);
  }
  print_message("cancel vs completion: %d tasks: %d before start, %d while running, %d after end\n",
                i, seen[BEFORE_START], seen[WHILE_RUNNING], seen[AFTER_END]);
  assert_true(seen[BEFORE_START] > 0);
  assert_true(seen[WHILE_RUNNING] > 0);
  assert_true(seen[AFTER_END] > 0);
  AWAIT(outcomes(m) == (uint64_t)i, 10000);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.submitted, i);
  assert_int_equal(s.cancelled, cancelled);
  assert_int_equal(s.succeeded, i - cancelled);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  assert_one_done_each(d, first, (size_t)i, states);
  free(states);
  free(d);
}

/* ---------------------------------------------------- timeout/completion */

static void test_deadline_racing_completion_ends_once(void **st) {
  (void)st;
  const int n = ITER(600, 150), batch = 50;
  dones_t *d = dones_new();
  apex_manager_t *m = make_manager(d);
  int *states = calloc((size_t)n, sizeof *states);
  assert_non_null(states);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = 0.001;
  uint64_t first = 0;
  int timed_out = 0;
  apex_task_t *ts[50];
  for (int i = 0; i < n; i += batch) {
    for (int k = 0; k < batch; k++) {
      /* A noop usually beats 1 ms; a 1 ms sleep races it evenly. */
      ts[k] = k % 2 ? submit_json(m, "hostile", "sleep", "{\"ms\": 1}", &o)
                    : submit_json(m, "testkit", "noop", NULL, &o);
      if (i + k == 0) first = apex_task_id(ts[k]);
    }
    for (int k = 0; k < batch; k++) {
      assert_int_equal(apex_task_wait(ts[k], 10000), APEX_OK);
      int s = apex_task_state(ts[k]);
      assert_true(s == APEX_TASK_SUCCEEDED || s == APEX_TASK_TIMED_OUT);
      if (s == APEX_TASK_TIMED_OUT) timed_out++;
      states[i + k] = s;
      apex_task_release(ts[k]);
    }
  }
  AWAIT(outcomes(m) == (uint64_t)n, 10000);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.timed_out, timed_out);
  assert_int_equal(s.succeeded, n - timed_out);
  print_message("deadline vs completion: %d of %d timed out\n", timed_out, n);
  /* Both sides of the race were hit. */
  assert_true(timed_out > 0);
  assert_true(timed_out < n);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  assert_one_done_each(d, first, (size_t)n, states);
  free(states);
  free(d);
}

/* ------------------------------------------------ release from elsewhere */

typedef struct handoff {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  apex_task_t *slot[64];
  size_t head, tail; /* ring of handles to release; tail - head <= 64 */
  int done;
  /* Handles released while their task was still live / already ended. */
  atomic_int released_before, released_after;
} handoff_t;

static void *releaser_main(void *arg) {
  handoff_t *h = arg;
  pthread_mutex_lock(&h->mu);
  for (;;) {
    while (h->head == h->tail && !h->done) pthread_cond_wait(&h->cv, &h->mu);
    if (h->head == h->tail) break;
    apex_task_t *t = h->slot[h->head++ % 64];
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    if (apex_task_state_is_terminal(apex_task_state(t)))
      atomic_fetch_add(&h->released_after, 1);
    else
      atomic_fetch_add(&h->released_before, 1);
    apex_task_release(t);
    pthread_mutex_lock(&h->mu);
  }
  pthread_mutex_unlock(&h->mu);
  return NULL;
}

static void handoff_put(handoff_t *h, apex_task_t *t) {
  pthread_mutex_lock(&h->mu);
  while (h->tail - h->head == 64) pthread_cond_wait(&h->cv, &h->mu);
  h->slot[h->tail++ % 64] = t;
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
}

static void test_release_from_another_thread_while_running(void **st) {
  (void)st;
  const int n = ITER(600, 150);
  apex_manager_t *m = make_manager(NULL);
  handoff_t h = {.head = 0};
  assert_int_equal(pthread_mutex_init(&h.mu, NULL), 0);
  assert_int_equal(pthread_cond_init(&h.cv, NULL), 0);
  pthread_t rel;
  assert_int_equal(pthread_create(&rel, NULL, releaser_main, &h), 0);
  for (int i = 0; i < n; i++) {
    /* Blocking, deferred completed in the handler, deferred completed from
     * the plugin's own thread. */
    apex_task_t *t = i % 3 == 0   ? submit_json(m, "testkit", "noop", NULL, NULL)
                     : i % 3 == 1 ? submit_json(m, "testkit", "noop_deferred", NULL, NULL)
                                  : submit_json(m, "example_async", "deferred_task",
                                           "{\"delay_ms\": 0}", NULL);
    handoff_put(&h, t);
  }
  pthread_mutex_lock(&h.mu);
  h.done = 1;
  pthread_cond_broadcast(&h.cv);
  pthread_mutex_unlock(&h.mu);
  assert_int_equal(pthread_join(rel, NULL), 0);
  AWAIT(stats_of(m).succeeded == (uint64_t)n, 20000);
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.submitted, n);
  assert_int_equal(s.failed + s.cancelled + s.timed_out, 0);
  /* The race was hit: some handles went while their task was live. */
  print_message("release: %d before the end, %d after\n", atomic_load(&h.released_before),
                atomic_load(&h.released_after));
  assert_true(atomic_load(&h.released_before) > 0);
  assert_int_equal(atomic_load(&h.released_before) + atomic_load(&h.released_after), n);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  pthread_mutex_destroy(&h.mu);
  pthread_cond_destroy(&h.cv);
}

/* -------------------------------------------- many submitters, cancelling */

enum { SUBMITTERS = 8 };

typedef struct submitter {
  apex_manager_t *m;
  int n;
  int bad; /* tasks that did not end as expected */
  int cancelled;
} submitter_t;

static void *submitter_main(void *arg) {
  submitter_t *s = arg;
  apex_task_t **ts = calloc((size_t)s->n, sizeof *ts);
  if (!ts) {
    s->bad = s->n;
    return NULL;
  }
  for (int i = 0; i < s->n; i++) {
    if (apex_manager_submit(s->m, "testkit", "noop", NULL, NULL, &ts[i], NULL) != APEX_OK) {
      s->bad++;
      ts[i] = NULL;
      continue;
    }
    if (i % 2) (void)apex_task_cancel(ts[i], NULL);
  }
  for (int i = 0; i < s->n; i++) {
    if (!ts[i]) continue;
    if (apex_task_wait(ts[i], 30000) != APEX_OK) s->bad++;
    int st = apex_task_state(ts[i]);
    if (st == APEX_TASK_CANCELLED) s->cancelled++;
    else if (st != APEX_TASK_SUCCEEDED) s->bad++;
    apex_task_release(ts[i]);
  }
  free(ts);
  return NULL;
}

static void test_many_threads_submitting_and_cancelling_add_up(void **st) {
  (void)st;
  const int per = ITER(2000, 250);
  dones_t *d = dones_new();
  apex_manager_t *m = make_manager(d);
  submitter_t s[SUBMITTERS];
  pthread_t th[SUBMITTERS];
  for (int i = 0; i < SUBMITTERS; i++) {
    s[i] = (submitter_t){.m = m, .n = per};
    assert_int_equal(pthread_create(&th[i], NULL, submitter_main, &s[i]), 0);
  }
  int cancelled = 0;
  for (int i = 0; i < SUBMITTERS; i++) {
    assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(s[i].bad, 0);
    cancelled += s[i].cancelled;
  }
  const uint64_t total = (uint64_t)SUBMITTERS * (uint64_t)per;
  AWAIT(outcomes(m) == total, 20000);
  /* An outcome is published before its worker closes the attempt and a
   * task cancelled in the queue leaves it when a worker pops it: the
   * counts of running and queued settle a moment after the outcomes. */
  AWAIT(stats_of(m).running == 0 && stats_of(m).queued == 0, 20000);
  apex_stats_t x = stats_of(m);
  assert_int_equal(x.submitted, total);
  assert_int_equal(x.submitted, x.succeeded + x.cancelled + x.failed + x.timed_out);
  assert_int_equal(x.cancelled, cancelled);
  assert_int_equal(x.failed, 0);
  assert_int_equal(x.timed_out, 0);
  assert_int_equal(x.queued, 0);
  assert_int_equal(x.running, 0);
  print_message("%d threads: %llu tasks, %d cancelled\n", SUBMITTERS, (unsigned long long)total,
                cancelled);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  /* Ids 1..total were handed out across the threads. */
  assert_one_done_each(d, 1, (size_t)total, NULL);
  free(d);
}

/* ------------------------------------------------------- several waiters */

enum { WAITERS = 4 };

typedef struct waiter {
  apex_task_t *t;
  pthread_barrier_t *start;
  int rc, state;
} waiter_t;

static void *waiter_main(void *arg) {
  waiter_t *w = arg;
  pthread_barrier_wait(w->start);
  w->rc = apex_task_wait(w->t, 10000);
  w->state = apex_task_state(w->t);
  return NULL;
}

static void test_four_threads_waiting_on_one_task_all_wake(void **st) {
  (void)st;
  apex_manager_t *m = make_manager(NULL);
  /* Waits on a pipe nobody writes: only our cancel ends it. */
  apex_task_t *t = submit_json(m, "hostile", "wait_fd", NULL, NULL);
  pthread_barrier_t start;
  assert_int_equal(pthread_barrier_init(&start, NULL, WAITERS + 1), 0);
  waiter_t w[WAITERS];
  pthread_t th[WAITERS];
  for (int i = 0; i < WAITERS; i++) {
    w[i] = (waiter_t){.t = t, .start = &start, .rc = 99, .state = -1};
    assert_int_equal(pthread_create(&th[i], NULL, waiter_main, &w[i]), 0);
  }
  pthread_barrier_wait(&start);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, 2000);
  (void)apex_task_cancel(t, NULL);
  for (int i = 0; i < WAITERS; i++) {
    assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(w[i].rc, APEX_OK);
    assert_int_equal(w[i].state, APEX_TASK_CANCELLED);
  }
  pthread_barrier_destroy(&start);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

/* ------------------------------------------------- shutdown and retries */

/* A worker may have taken a task from the queue but not yet opened its
 * attempt when destroy sweeps: the task is in neither the run queue nor
 * the live list then. It must still end (cancelled), never run its
 * handler uncancelled: a 60 s sleep would hold destroy or the task. */
static void test_destroy_ends_a_task_taken_just_before_the_sweep(void **st) {
  (void)st;
  const int n = ITER(300, 60);
  for (int i = 0; i < n; i++) {
    apex_manager_t *m = make_manager(NULL);
    apex_task_t *t[2];
    for (int k = 0; k < 2; k++) t[k] = submit_json(m, "hostile", "sleep", "{\"ms\": 60000}", NULL);
    int64_t t0 = now_ms();
    int rc = apex_manager_destroy(m, 0); /* OK, or BUSY while a handler returns */
    assert_true(rc == APEX_OK || rc == APEX_E_BUSY);
    assert_true(now_ms() - t0 < 5000);
    for (int k = 0; k < 2; k++) {
      AWAIT(apex_task_state_is_terminal(apex_task_state(t[k])), 5000);
      assert_int_equal(apex_task_state(t[k]), APEX_TASK_CANCELLED);
      apex_task_release(t[k]);
    }
  }
}

/* A cancel that finds the task running leaves the ending to its attempt;
 * if that attempt fails transiently at the same moment, the task must not
 * sit out the retry backoff (30 s here) before it ends. */
static void test_cancel_racing_a_retry_ends_the_task_at_once(void **st) {
  (void)st;
  const int n = ITER(600, 100), max = ITER(20000, 4000);
  apex_manager_t *m = make_manager(NULL);
  /* slow_transient: a 1 ms attempt, then a transient failure */
  load_ok(m, APEX_TEST_PLUGIN_DIR "/shutdown_kit.so");
  apex_retry_policy_t retry = {.max_attempts = 3, .initial_interval_s = 30};
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &retry;
  /* The state each cancel found (read just before it): the race is hit
   * when a cancel lands on a running attempt and when it lands in the
   * backoff; both must happen. The delay adapts as in the test above. */
  int found[APEX_TASK_TIMED_OUT + 1] = {0};
  unsigned delay = 0;
  int i;
  for (i = 0; i < max && (i < n || !found[APEX_TASK_RUNNING] || !found[APEX_TASK_RETRY_WAIT]);
       i++) {
    apex_task_t *t = submit_json(m, "shutdown_kit", "slow_transient", "{\"ms\": 1}", &o);
    spin(delay);
    int before = apex_task_state(t);
    found[before]++;
    if (before == APEX_TASK_QUEUED || before == APEX_TASK_RUNNING) delay = delay + delay / 4 + 64;
    else delay -= delay / 4;
    (void)apex_task_cancel(t, NULL);
    /* Ended at once: cancelled, or succeeded/failed had it ended first;
     * never left waiting for its retry. */
    assert_int_equal(apex_task_wait(t, 5000), APEX_OK);
    assert_int_not_equal(apex_task_state(t), APEX_TASK_RETRY_WAIT);
    apex_task_release(t);
  }
  print_message("cancel vs retry: %d tasks: %d queued, %d running, %d in backoff\n", i,
                found[APEX_TASK_QUEUED], found[APEX_TASK_RUNNING], found[APEX_TASK_RETRY_WAIT]);
  assert_true(found[APEX_TASK_RUNNING] > 0);
  assert_true(found[APEX_TASK_RETRY_WAIT] > 0);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cancel_racing_completion_ends_once),
      cmocka_unit_test(test_deadline_racing_completion_ends_once),
      cmocka_unit_test(test_release_from_another_thread_while_running),
      cmocka_unit_test(test_many_threads_submitting_and_cancelling_add_up),
      cmocka_unit_test(test_four_threads_waiting_on_one_task_all_wake),
      cmocka_unit_test(test_destroy_ends_a_task_taken_just_before_the_sweep),
      cmocka_unit_test(test_cancel_racing_a_retry_ends_the_task_at_once),
  };
  if (getenv("APEX_TEST_FILTER")) cmocka_set_test_filter(getenv("APEX_TEST_FILTER"));
  return cmocka_run_group_tests(tests, NULL, NULL);
}
