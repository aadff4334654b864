/* Integration tests of the engine's shutdown, event-delivery, wait and
 * counter contract, through the public host API only (apex/apex.h):
 *
 * - apex_manager_destroy delivers the DONE event of every task before it
 *   returns, for every drain value, in LOOP and DISPATCH mode, and no event
 *   callback runs after it returned, APEX_E_BUSY included; BUSY means only
 *   "a handler ignored cancellation past the grace", and the manager is then
 *   freed by the last such handler, a worker or a plugin's own thread;
 * - queued and retry-waiting tasks end at once at shutdown;
 * - apex_task_wait returns in LOOP mode only after the task's DONE callback
 *   returned, refuses Apex's runtime thread, and so does
 *   apex_manager_execute; a resubmit right after a wait never finds the
 *   queue full;
 * - the `queued` and `running` counters agree with the outcomes the host
 *   was given;
 * - DISPATCH mode with deadlines and retries due: the host's fd, the host's
 *   dispatch firing them, and the runtime thread taking over.
 *
 * Plugin: shutdown_kit (tests/plugins/shutdown_kit.c). Each test makes its
 * own manager. Nothing here sleeps for correctness: conditions are awaited
 * (AWAIT, apex_task_wait, poll on the host's fd) against generous bounds.
 * Where a test widens a race window (a slow log sink, a slow callback) it
 * says so; the window only makes the old fault show, it decides nothing.
 * One test holds the runtime thread inside a token callback, so that only
 * the host's dispatch can fire what comes due.
 *
 * Threads: the test thread; the engine's threads (callbacks in LOOP mode
 * run on the runtime thread); the plugin's threads. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/shutdown_kit.so"

/* ------------------------------------------------------------- helpers */

static apex_manager_t *kit_manager(const apex_manager_config_t *cfg) {
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(cfg, &m), APEX_OK);
  load_ok(m, KIT);
  return m;
}

static int fd_readable(int fd, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int n;
  do n = poll(&p, 1, timeout_ms);
  while (n < 0 && errno == EINTR);
  return n == 1 && (p.revents & POLLIN);
}

/* ------------------------------------------------------------- a tally */

/* What the event callback saw, per task id (a fresh manager numbers its
 * tasks 1, 2, ...), under a mutex. `closed` is set when destroy returned:
 * a callback that runs after that is counted in after_close. */
typedef struct tally {
  pthread_mutex_t mu;
  size_t cap;
  unsigned *done;              /* DONE events per task id */
  apex_task_state_t *state;    /* the state the DONE carried */
  size_t dones, events, progress;
  int check_thread;            /* count callbacks off `thread` */
  pthread_t thread;
  size_t off_thread;
  atomic_int closed;
  size_t after_close;
  int slow_ms;                 /* each DONE callback takes this long */
  apex_manager_t *m;           /* for stats read inside a callback */
  size_t stats_at;             /* read stats in the DONE callback that makes dones == this */
  apex_stats_t stats;
  int have_stats;
} tally_t;

static void tally_init(tally_t *tl, size_t n) {
  memset(tl, 0, sizeof *tl);
  assert_int_equal(pthread_mutex_init(&tl->mu, NULL), 0);
  tl->cap = n + 1;
  tl->done = calloc(tl->cap, sizeof *tl->done);
  tl->state = calloc(tl->cap, sizeof *tl->state);
  assert_non_null(tl->done);
  assert_non_null(tl->state);
}

static void tally_fini(tally_t *tl) {
  free(tl->done);
  free(tl->state);
  pthread_mutex_destroy(&tl->mu);
}

static void tally_on_event(const apex_event_t *ev, void *user) {
  tally_t *tl = user;
  int closed = atomic_load(&tl->closed);
  pthread_mutex_lock(&tl->mu);
  tl->events++;
  if (closed) tl->after_close++;
  if (tl->check_thread && !pthread_equal(pthread_self(), tl->thread)) tl->off_thread++;
  if (ev->type == APEX_EVENT_PROGRESS) tl->progress++;
  if (ev->type == APEX_EVENT_DONE) {
    if (tl->slow_ms) nap_ms(tl->slow_ms);
    tl->dones++;
    if (ev->task_id < tl->cap) {
      tl->done[ev->task_id]++;
      tl->state[ev->task_id] = ev->state;
    }
    if (tl->m && tl->dones == tl->stats_at) {
      tl->stats.struct_size = sizeof tl->stats;
      tl->have_stats = apex_manager_stats_v2(tl->m, &tl->stats) == APEX_OK;
    }
  }
  pthread_mutex_unlock(&tl->mu);
}

static size_t tally_dones(tally_t *tl) {
  pthread_mutex_lock(&tl->mu);
  size_t n = tl->dones;
  pthread_mutex_unlock(&tl->mu);
  return n;
}

static apex_manager_config_t tally_config(tally_t *tl, unsigned workers, apex_delivery_t mode,
                                          unsigned mask) {
  apex_manager_config_t cfg = base_config(workers);
  cfg.on_event = tally_on_event;
  cfg.event_user = tl;
  cfg.event_mask = mask;
  cfg.delivery = mode;
  return cfg;
}

/* DISPATCH: dispatches whenever the fd says so until `want` DONEs came. */
static void dispatch_until(apex_manager_t *m, tally_t *tl, size_t want) {
  int fd = apex_manager_fd(m);
  assert_true(fd >= 0);
  int64_t end = now_ms() + 10000;
  while (tally_dones(tl) < want && now_ms() < end)
    if (fd_readable(fd, 100)) assert_true(apex_manager_dispatch(m) >= 0);
  assert_int_equal(tally_dones(tl), want);
}

/* ----------------------------------------- destroy delivers every DONE */

/* 500 live cooperative tasks, 2 running and 498 queued (2 workers): destroy
 * ends the queued ones at once and delivers exactly one DONE per task
 * before it returns, whatever the drain; a drain without limit lets the
 * two running ones finish, any other drain cancels them. */
static void check_destroy_delivers_every_done(apex_delivery_t mode, int64_t drain) {
  enum { N = 500 };
  tally_t tl;
  tally_init(&tl, N);
  apex_manager_config_t cfg = tally_config(&tl, 2, mode, APEX_EVENT_DONE);
  apex_manager_t *m = kit_manager(&cfg);
  /* The running two: finite when destroy waits for them, else 60 s, which
   * only a cancel ends in time. */
  const char *run_ms = drain < 0 ? "{\"ms\": 200}" : "{\"ms\": 60000}";
  apex_task_t **t = calloc(N, sizeof *t);
  assert_non_null(t);
  for (int i = 0; i < N; i++)
    t[i] = submit_json(m, "shutdown_kit", "coop_sleep", i < 2 ? run_ms : "{\"ms\": 60000}", NULL);
  AWAIT(apex_task_state(t[0]) == APEX_TASK_RUNNING && apex_task_state(t[1]) == APEX_TASK_RUNNING,
        PROMPT_MS);
  assert_int_equal(apex_task_id(t[0]), 1);
  if (mode == APEX_DELIVER_DISPATCH) { /* nothing dispatched yet: destroy delivers it all */
    assert_int_equal(tally_dones(&tl), 0);
    tl.check_thread = 1;
    tl.thread = pthread_self();
  }
  int64_t t0 = now_ms();
  int rc = apex_manager_destroy(m, drain);
  atomic_store(&tl.closed, 1);
  assert_int_equal(rc, APEX_OK); /* cooperative handlers: never BUSY */
  assert_true(now_ms() - t0 < 10000);

  pthread_mutex_lock(&tl.mu);
  size_t dones = tl.dones, off = tl.off_thread;
  int once = 1;
  for (int i = 0; i < N; i++) once &= tl.done[i + 1] == 1;
  pthread_mutex_unlock(&tl.mu);
  if (dones != N) print_error("%zu DONE events before destroy returned, want %d\n", dones, N);
  assert_int_equal(dones, N);
  assert_true(once);
  assert_int_equal(off, 0);
  for (int i = 0; i < N; i++) {
    apex_task_state_t want = i < 2 && drain < 0 ? APEX_TASK_SUCCEEDED : APEX_TASK_CANCELLED;
    assert_int_equal(tl.state[i + 1], want);
    assert_int_equal(apex_task_state(t[i]), want);
    if (i >= 2) { /* never started: ended by the shutdown at once */
      assert_int_equal(apex_task_attempts(t[i]), 0);
      if (i == 2) assert_true(error_mentions(t[i], "shutdown"));
    }
    apex_task_release(t[i]);
  }
  free(t);
  /* Every thread of the manager is joined: nothing can call back now. */
  assert_int_equal(tl.after_close, 0);
  tally_fini(&tl);
}

static void test_destroy_drain_0_loop_delivers_every_done(void **st) {
  (void)st;
  check_destroy_delivers_every_done(APEX_DELIVER_LOOP, 0);
}
static void test_destroy_drain_1_loop_delivers_every_done(void **st) {
  (void)st;
  check_destroy_delivers_every_done(APEX_DELIVER_LOOP, 1);
}
static void test_destroy_drain_100_loop_delivers_every_done(void **st) {
  (void)st;
  check_destroy_delivers_every_done(APEX_DELIVER_LOOP, 100);
}
static void test_destroy_drain_forever_loop_delivers_every_done(void **st) {
  (void)st;
  check_destroy_delivers_every_done(APEX_DELIVER_LOOP, -1);
}
static void test_destroy_drain_0_dispatch_delivers_every_done(void **st) {
  (void)st;
  check_destroy_delivers_every_done(APEX_DELIVER_DISPATCH, 0);
}
static void test_destroy_drain_1_dispatch_delivers_every_done(void **st) {
  (void)st;
  check_destroy_delivers_every_done(APEX_DELIVER_DISPATCH, 1);
}
static void test_destroy_drain_100_dispatch_delivers_every_done(void **st) {
  (void)st;
  check_destroy_delivers_every_done(APEX_DELIVER_DISPATCH, 100);
}
static void test_destroy_drain_forever_dispatch_delivers_every_done(void **st) {
  (void)st;
  check_destroy_delivers_every_done(APEX_DELIVER_DISPATCH, -1);
}

/* Events of every kind still waiting in DISPATCH mode (nobody dispatched)
 * are delivered by destroy, on the destroying thread, in order. */
static void test_destroy_delivers_waiting_dispatch_events_on_its_thread(void **st) {
  (void)st;
  enum { N = 10 };
  tally_t tl;
  tally_init(&tl, N);
  apex_manager_config_t cfg = tally_config(&tl, 2, APEX_DELIVER_DISPATCH, 0);
  apex_manager_t *m = kit_manager(&cfg);
  apex_task_t *t[N];
  for (int i = 0; i < N; i++) t[i] = submit_json(m, "shutdown_kit", "noop", NULL, NULL);
  /* DISPATCH: a wait returns at the terminal state; the events wait. */
  for (int i = 0; i < N; i++) assert_int_equal(apex_task_wait(t[i], 10000), APEX_OK);
  assert_int_equal(tally_dones(&tl), 0);
  tl.check_thread = 1;
  tl.thread = pthread_self();
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  atomic_store(&tl.closed, 1);
  assert_int_equal(tl.dones, N);
  assert_int_equal(tl.events, 2 * N); /* ATTEMPT and DONE each */
  assert_int_equal(tl.off_thread, 0);
  for (int i = 0; i < N; i++) {
    assert_int_equal(tl.done[i + 1], 1);
    assert_int_equal(tl.state[i + 1], APEX_TASK_SUCCEEDED);
    apex_task_release(t[i]);
  }
  tally_fini(&tl);
}

/* Cooperative handlers that take a while to clean up after their token
 * fired (300 ms here) are not taken for deaf ones, even with a drain of 0:
 * destroy gives them APEX_SHUTDOWN_GRACE_MS. */
static void test_destroy_gives_cooperative_handlers_the_grace(void **st) {
  (void)st;
  tally_t tl;
  tally_init(&tl, 2);
  apex_manager_config_t cfg = tally_config(&tl, 2, APEX_DELIVER_LOOP, APEX_EVENT_DONE);
  apex_manager_t *m = kit_manager(&cfg);
  apex_task_t *t[2];
  for (int i = 0; i < 2; i++)
    t[i] = submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 60000, \"exit_ms\": 300}", NULL);
  AWAIT(apex_task_state(t[0]) == APEX_TASK_RUNNING && apex_task_state(t[1]) == APEX_TASK_RUNNING,
        PROMPT_MS);
  int64_t t0 = now_ms();
  assert_int_equal(apex_manager_destroy(m, 0), APEX_OK);
  atomic_store(&tl.closed, 1);
  assert_true(now_ms() - t0 >= 299); /* it waited for them */
  assert_int_equal(tl.dones, 2);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_CANCELLED);
    apex_task_release(t[i]);
  }
  assert_int_equal(tl.after_close, 0);
  tally_fini(&tl);
}

/* config.shutdown_grace_ms sets that grace: handlers that need 1.5 s to
 * clean up are waited for under a 60 s grace (the default 1 s would end in
 * APEX_E_BUSY: they are still inside at its end). */
static void test_destroy_grace_follows_the_config(void **st) {
  (void)st;
  tally_t tl;
  tally_init(&tl, 1);
  apex_manager_config_t cfg = tally_config(&tl, 2, APEX_DELIVER_LOOP, APEX_EVENT_DONE);
  cfg.shutdown_grace_ms = 60000;
  apex_manager_t *m = kit_manager(&cfg);
  apex_task_t *t =
      submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 60000, \"exit_ms\": 1500}", NULL);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, PROMPT_MS);
  int64_t t0 = now_ms();
  assert_int_equal(apex_manager_destroy(m, 0), APEX_OK);
  atomic_store(&tl.closed, 1);
  assert_true(now_ms() - t0 >= 1499);
  assert_int_equal(tl.dones, 1);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  apex_task_release(t);
  assert_int_equal(tl.after_close, 0);
  tally_fini(&tl);
}

static void test_shutdown_grace_out_of_range_is_refused(void **st) {
  (void)st;
  const int64_t bad[] = {-1, 86400001};
  for (size_t i = 0; i < 2; i++) {
    apex_manager_config_t cfg;
    apex_manager_config_init(&cfg);
    assert_int_equal(cfg.shutdown_grace_ms, APEX_SHUTDOWN_GRACE_MS);
    cfg.log = quiet_log;
    cfg.shutdown_grace_ms = bad[i];
    apex_manager_t *m = (apex_manager_t *)&cfg;
    assert_int_equal(apex_manager_new(&cfg, &m), APEX_E_INVALID);
    assert_null(m);
  }
}

/* ------------------------------------- shutdown ends waiting tasks at once */

/* A task backing off before its next attempt (30 s) ends at destroy's
 * start, even with a drain without limit: no attempt starts once destroy
 * began. */
static void test_destroy_ends_a_retry_waiting_task_at_once(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = kit_manager(&cfg);
  apex_retry_policy_t p = {.max_attempts = 3, .initial_interval_s = 30};
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &p;
  apex_task_t *t = submit_json(m, "shutdown_kit", "slow_transient", "{\"ms\": 0}", &o);
  AWAIT(apex_task_state(t) == APEX_TASK_RETRY_WAIT, PROMPT_MS);
  int64_t t0 = now_ms();
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  assert_true(now_ms() - t0 < 10000);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  assert_true(error_mentions(t, "shutdown"));
  assert_int_equal(apex_task_attempts(t), 1);
  apex_task_release(t);
}

/* An attempt that fails transiently while destroy drains is not retried:
 * the task ends at once instead of holding destroy for its backoff. */
static void test_transient_failure_during_drain_is_not_retried(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = kit_manager(&cfg);
  apex_retry_policy_t p = {.max_attempts = 3, .initial_interval_s = 30};
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &p;
  apex_task_t *t = submit_json(m, "shutdown_kit", "slow_transient", "{\"ms\": 200}", &o);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, PROMPT_MS);
  int64_t t0 = now_ms();
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  assert_true(now_ms() - t0 < 10000);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  assert_true(error_mentions(t, "shutdown"));
  assert_int_equal(apex_task_attempts(t), 1);
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(apex_error_code(apex_error_cause(e)), APEX_E_TRANSIENT);
  apex_error_unref(e);
  apex_task_release(t);
}

/* ------------------------------------------------------ BUSY and after */

/* A handler deaf to cancellation outlives the grace: destroy returns BUSY
 * after the grace, with every DONE (the deaf one's too) delivered; the deaf
 * handler's late progress and result produce no event; its worker frees
 * the manager when it returns, running the plugin's shutdown hook. The DONE
 * callbacks are slow on purpose (12 x 100 ms, past the grace): in LOOP mode
 * destroy must wait for the runtime thread to deliver them all. */
static void check_busy_destroy_freed_by_worker(apex_delivery_t mode) {
  enum { N = 12 };
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  char fdtext[16];
  snprintf(fdtext, sizeof fdtext, "%d", pfd[1]);
  assert_int_equal(setenv("SHUTDOWN_KIT_FD", fdtext, 1), 0);
  int base = count_threads();
  tally_t tl;
  tally_init(&tl, N);
  tl.slow_ms = 100;
  apex_manager_config_t cfg = tally_config(&tl, 2, mode, 0);
  apex_manager_t *m = kit_manager(&cfg);
  apex_task_t *t[N];
  t[0] = submit_json(m, "shutdown_kit", "deaf_block", "{\"ms\": 4000}", NULL);
  t[1] = submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 60000}", NULL);
  for (int i = 2; i < N; i++) t[i] = submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 60000}", NULL);
  AWAIT(apex_task_state(t[0]) == APEX_TASK_RUNNING && apex_task_state(t[1]) == APEX_TASK_RUNNING,
        PROMPT_MS);
  if (mode == APEX_DELIVER_DISPATCH) {
    tl.check_thread = 1;
    tl.thread = pthread_self();
  }
  int64_t t0 = now_ms();
  int rc = apex_manager_destroy(m, 0);
  atomic_store(&tl.closed, 1);
  int64_t took = now_ms() - t0;
  assert_int_equal(rc, APEX_E_BUSY);
  /* The deaf handler had the whole grace, and BUSY came before it woke. */
  assert_true(took >= APEX_SHUTDOWN_GRACE_MS - 1);
  assert_true(took < 3900);
  pthread_mutex_lock(&tl.mu);
  size_t dones = tl.dones;
  pthread_mutex_unlock(&tl.mu);
  assert_int_equal(dones, N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(tl.done[i + 1], 1);
    assert_int_equal(tl.state[i + 1], APEX_TASK_CANCELLED);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_CANCELLED);
  }
  /* The deaf handler returns at 4 s; its worker tears the manager down:
   * every thread of it gone, the plugin's shutdown hook run. */
  AWAIT(count_threads() == base, 10000);
  assert_true(fd_readable(pfd[0], PROMPT_MS));
  char c = 0;
  assert_int_equal(read(pfd[0], &c, 1), 1);
  assert_int_equal(c, 'S');
  assert_int_equal(tl.after_close, 0);
  assert_int_equal(tl.off_thread, 0);
  for (int i = 0; i < N; i++) apex_task_release(t[i]);
  tally_fini(&tl);
  unsetenv("SHUTDOWN_KIT_FD");
  close(pfd[0]);
  close(pfd[1]);
}

static void test_busy_destroy_loop_freed_by_worker_no_callback_after(void **st) {
  (void)st;
  check_busy_destroy_freed_by_worker(APEX_DELIVER_LOOP);
}

static void test_busy_destroy_dispatch_freed_by_worker_no_callback_after(void **st) {
  (void)st;
  check_busy_destroy_freed_by_worker(APEX_DELIVER_DISPATCH);
}

/* The last deaf handler is a deferred plugin's own thread: it frees the
 * manager when it completes (the plugin stays loaded: that thread returns
 * into it), and no callback runs after destroy returned. */
static void test_busy_destroy_freed_by_plugin_thread_no_callback_after(void **st) {
  (void)st;
  int base = count_threads();
  tally_t tl;
  tally_init(&tl, 1);
  apex_manager_config_t cfg = tally_config(&tl, 1, APEX_DELIVER_LOOP, 0);
  apex_manager_t *m = kit_manager(&cfg);
  apex_task_t *t = submit_json(m, "shutdown_kit", "deaf_deferred", "{\"ms\": 2500}", NULL);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, PROMPT_MS);
  int64_t t0 = now_ms();
  int rc = apex_manager_destroy(m, 0);
  atomic_store(&tl.closed, 1);
  assert_int_equal(rc, APEX_E_BUSY);
  assert_true(now_ms() - t0 < 2400);
  assert_int_equal(tl.dones, 1);
  assert_int_equal(tl.state[1], APEX_TASK_CANCELLED);
  AWAIT(count_threads() == base, 10000);
  assert_int_equal(tl.after_close, 0);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  apex_task_release(t);
  tally_fini(&tl);
}

/* --------------------------------------------------------------- wait */

typedef struct per_task {
  int magic;
  atomic_int returned; /* set as the DONE callback's last act */
} per_task_t;

static atomic_int g_bad_state; /* callbacks that found their state freed */

/* Widens the window on purpose: a wait that returned before this callback
 * did would find `returned` unset (and the host would free p under it). */
static void slow_done(const apex_event_t *ev, void *user) {
  per_task_t *p = user;
  if (p->magic != 0x5eed) atomic_fetch_add(&g_bad_state, 1);
  if (ev->type != APEX_EVENT_DONE) return;
  nap_ms(10);
  atomic_store(&p->returned, 1);
}

/* LOOP: apex_task_wait returns only after the task's DONE callback
 * returned, so the host may free the callback's state right away (ASan
 * would see the callback touch it otherwise). */
static void test_wait_returns_after_the_done_callback_loop(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = kit_manager(&cfg);
  int early = 0;
  for (int i = 0; i < 40; i++) {
    per_task_t *p = calloc(1, sizeof *p);
    assert_non_null(p);
    p->magic = 0x5eed;
    atomic_init(&p->returned, 0);
    apex_submit_opts_t o;
    apex_submit_opts_init(&o);
    o.on_event = slow_done;
    o.event_user = p;
    apex_task_t *t = submit_json(m, "shutdown_kit", "noop", NULL, &o);
    assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
    if (!atomic_load(&p->returned)) early++;
    apex_task_release(t);
    free(p);
  }
  if (early) print_error("%d of 40 waits returned before the DONE callback did\n", early);
  assert_int_equal(early, 0);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  assert_int_equal(atomic_load(&g_bad_state), 0);
}

/* DISPATCH: the DONE is delivered by the host's own dispatch, so a wait
 * returns at the terminal state; waiting for the dispatch would deadlock a
 * single-threaded host. */
static void test_wait_returns_at_terminal_in_dispatch_mode(void **st) {
  (void)st;
  tally_t tl;
  tally_init(&tl, 1);
  apex_manager_config_t cfg = tally_config(&tl, 1, APEX_DELIVER_DISPATCH, 0);
  apex_manager_t *m = kit_manager(&cfg);
  apex_task_t *t = submit_json(m, "shutdown_kit", "noop", NULL, NULL);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(tally_dones(&tl), 0);
  dispatch_until(m, &tl, 1);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  tally_fini(&tl);
}

typedef struct on_rt {
  apex_manager_t *m;
  atomic_int attempt_rc, done_rc, exec_rc, exec_err;
  atomic_int seen;
} on_rt_t;

/* Calls what must refuse the runtime thread from a LOOP callback. */
static void call_from_callback(const apex_event_t *ev, void *user) {
  on_rt_t *o = user;
  if (ev->task_id != 1) return; /* only the test's own task */
  if (ev->type == APEX_EVENT_ATTEMPT) {
    atomic_store(&o->attempt_rc, apex_task_wait(ev->task, 1000));
    apex_error_t *err = NULL;
    json_t *res = NULL;
    atomic_store(&o->exec_rc,
                 apex_manager_execute(o->m, "shutdown_kit", "noop", NULL, NULL, &res, &err));
    atomic_store(&o->exec_err, err ? apex_error_code(err) : 0);
    apex_error_unref(err);
    json_decref(res);
    atomic_fetch_add(&o->seen, 1);
  } else if (ev->type == APEX_EVENT_DONE) {
    /* Its own DONE is being delivered: a wait here could never return. */
    atomic_store(&o->done_rc, apex_task_wait(ev->task, 1000));
    atomic_fetch_add(&o->seen, 1);
  }
}

static void test_wait_and_execute_refuse_the_runtime_thread(void **st) {
  (void)st;
  on_rt_t o = {0};
  atomic_init(&o.attempt_rc, 99);
  atomic_init(&o.done_rc, 99);
  atomic_init(&o.exec_rc, 99);
  apex_manager_config_t cfg = base_config(1);
  cfg.on_event = call_from_callback;
  cfg.event_user = &o;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  o.m = m;
  load_ok(m, KIT);
  apex_task_t *t = submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 60000}", NULL);
  AWAIT(atomic_load(&o.seen) == 1, PROMPT_MS);
  assert_int_equal(atomic_load(&o.attempt_rc), APEX_E_INVALID);
  assert_int_equal(atomic_load(&o.exec_rc), APEX_E_INVALID);
  assert_int_equal(atomic_load(&o.exec_err), APEX_E_INVALID);
  assert_int_equal(stats_of(m).submitted, 1); /* execute refused before submitting */
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_int_equal(atomic_load(&o.seen), 2);
  assert_int_equal(atomic_load(&o.done_rc), APEX_E_INVALID);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

/* Reads the counters in a loop until told to stop: a host's monitoring
 * thread, whose stats calls contend for the lock a task's end takes. */
typedef struct hammer {
  apex_manager_t *m;
  atomic_int stop;
} hammer_t;

static void *stats_hammer(void *arg) {
  hammer_t *h = arg;
  apex_stats_t s = APEX_STATS_INIT;
  while (!atomic_load(&h->stop)) (void)apex_manager_stats_v2(h->m, &s);
  return NULL;
}

/* A host that resubmits right after its wait, with room for one live
 * task: the ended task no longer counts by the time the wait returns. Half
 * the waits poll (timeout 0), which meets the end of a task at any point,
 * and a second thread reading stats makes that end take longer. */
static void test_resubmit_after_wait_never_finds_the_queue_full(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  cfg.max_queued = 1;
  apex_manager_t *m = kit_manager(&cfg);
  hammer_t h = {.m = m};
  atomic_init(&h.stop, 0);
  pthread_t th[2];
  for (int k = 0; k < 2; k++) assert_int_equal(pthread_create(&th[k], NULL, stats_hammer, &h), 0);
  int full = 0;
  for (int i = 0; i < 2000; i++) {
    apex_task_t *t = NULL;
    apex_error_t *err = NULL;
    int rc = apex_manager_submit(m, "shutdown_kit", "noop", NULL, NULL, &t, &err);
    apex_error_unref(err);
    if (rc == APEX_E_QUEUE_FULL) {
      full++;
      AWAIT(stats_of(m).submitted == stats_of(m).succeeded + stats_of(m).failed, PROMPT_MS);
      continue;
    }
    assert_int_equal(rc, APEX_OK);
    if (i % 2)
      while (apex_task_wait(t, 0) == APEX_E_AGAIN) {
      }
    else
      assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
    apex_task_release(t);
  }
  atomic_store(&h.stop, 1);
  for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
  if (full) print_error("%d of 2000 resubmits found the queue full\n", full);
  assert_int_equal(full, 0);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

/* ------------------------------------------------------------- counters */

/* Widens a window on purpose: the engine logs a task's outcome after its
 * DONE event is queued; a counter updated only after that log line would
 * be seen stale by the DONE callback. */
static void slow_info_log(int level, const char *msg, void *user) {
  (void)msg;
  (void)user;
  if (level == APEX_LOG_INFO) nap_ms(20);
}

/* Three tasks time out while queued and three are cancelled while queued,
 * behind one running; then the running one is cancelled. Once the DONE
 * events are delivered the counters agree with them: queued counts tasks
 * still waiting for a worker, running the attempts still open, both read
 * inside the last DONE callback. */
static void check_counters_agree_with_outcomes(apex_delivery_t mode) {
  enum { N = 7 };
  tally_t tl;
  tally_init(&tl, N);
  apex_manager_config_t cfg = tally_config(&tl, 1, mode, APEX_EVENT_DONE);
  cfg.log = slow_info_log;
  cfg.log_level = APEX_LOG_INFO;
  apex_manager_t *m = kit_manager(&cfg);
  tl.m = m;
  tl.stats_at = N;
  apex_task_t *busy = submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 60000}", NULL);
  AWAIT(apex_task_state(busy) == APEX_TASK_RUNNING, PROMPT_MS);
  apex_submit_opts_t o = opts_timeout(0.05);
  apex_task_t *q[6];
  for (int i = 0; i < 6; i++)
    q[i] = submit_json(m, "shutdown_kit", "noop", NULL, i < 3 ? &o : NULL);
  for (int i = 3; i < 6; i++) assert_int_equal(apex_task_cancel(q[i], NULL), APEX_OK);
  if (mode == APEX_DELIVER_DISPATCH)
    dispatch_until(m, &tl, 6);
  else
    AWAIT(tally_dones(&tl) == 6, PROMPT_MS);
  /* Ended in the queue: no longer queued, though still in the run queue
   * behind the running task. */
  apex_stats_t s = stats_of(m);
  assert_int_equal(s.timed_out, 3);
  assert_int_equal(s.cancelled, 3);
  assert_int_equal(s.queued, 0);
  assert_int_equal(s.running, 1);
  assert_int_equal(apex_task_cancel(busy, NULL), APEX_OK);
  if (mode == APEX_DELIVER_DISPATCH)
    dispatch_until(m, &tl, N);
  else
    AWAIT(tally_dones(&tl) == N, PROMPT_MS);
  pthread_mutex_lock(&tl.mu);
  apex_stats_t last = tl.stats;
  int have = tl.have_stats;
  pthread_mutex_unlock(&tl.mu);
  assert_true(have);
  assert_int_equal(last.queued, 0);
  assert_int_equal(last.running, 0);
  assert_int_equal(last.cancelled, 4);
  assert_int_equal(last.timed_out, 3);
  s = stats_of(m);
  assert_int_equal(s.queued, 0);
  assert_int_equal(s.running, 0);
  for (int i = 0; i < 6; i++) {
    assert_int_equal(apex_task_attempts(q[i]), 0);
    apex_task_release(q[i]);
  }
  apex_task_release(busy);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  tally_fini(&tl);
}

static void test_counters_agree_with_outcomes_loop(void **st) {
  (void)st;
  check_counters_agree_with_outcomes(APEX_DELIVER_LOOP);
}

static void test_counters_agree_with_outcomes_dispatch(void **st) {
  (void)st;
  check_counters_agree_with_outcomes(APEX_DELIVER_DISPATCH);
}

/* ------------------------------------------------- DISPATCH and timers */

typedef struct fired {
  atomic_int ran;
  pthread_t by;
} fired_t;

static void on_token_fired(apex_token_t *tok, const char *reason, void *user) {
  (void)tok;
  (void)reason;
  fired_t *f = user;
  f->by = pthread_self();
  atomic_store(&f->ran, 1);
}

/* Registers f on t's token: its cancel runs on the thread that fired the
 * deadline. */
static uint64_t watch_token(apex_task_t *t, fired_t *f) {
  atomic_init(&f->ran, 0);
  uint64_t id = 0;
  assert_int_equal(apex_token_on_cancel(apex_task_token(t), on_token_fired, f, &id), APEX_OK);
  return id;
}

static apex_manager_t *dispatch_manager(tally_t *tl, unsigned mask) {
  apex_manager_config_t cfg = tally_config(tl, 1, APEX_DELIVER_DISPATCH, mask);
  apex_manager_t *m = kit_manager(&cfg);
  tl->check_thread = 1;
  tl->thread = pthread_self();
  return m;
}

/* Holds the runtime thread inside a token callback (a deadline it fired)
 * until released: what is due meanwhile only the host's dispatch fires.
 * Static: a failed test leaves the thread blocked on it. */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int blocked, release;
  pthread_t by;
} g_block = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};

static void block_runtime(apex_token_t *tok, const char *reason, void *user) {
  (void)tok;
  (void)reason;
  (void)user;
  pthread_mutex_lock(&g_block.mu);
  g_block.by = pthread_self();
  g_block.blocked = 1;
  pthread_cond_broadcast(&g_block.cv);
  while (!g_block.release) pthread_cond_wait(&g_block.cv, &g_block.mu);
  pthread_mutex_unlock(&g_block.mu);
}

static int runtime_blocked(void) {
  pthread_mutex_lock(&g_block.mu);
  int b = g_block.blocked;
  pthread_mutex_unlock(&g_block.mu);
  return b;
}

/* DISPATCH with the runtime thread held (it fired a first deadline the
 * host left, and a callback of that deadline's token blocks it), so that
 * only the host can fire what comes due: the host's fd turns readable when
 * a deadline is due, not before (nothing else makes it readable: only DONE
 * events are wanted), and the host's dispatch fires the deadline on its own
 * thread (the token's cancel runs there), then a retry time. */
static void test_dispatch_fd_and_dispatch_fire_due_deadlines_and_retries(void **st) {
  (void)st;
  tally_t tl;
  tally_init(&tl, 3);
  apex_manager_config_t cfg = tally_config(&tl, 3, APEX_DELIVER_DISPATCH, APEX_EVENT_DONE);
  apex_manager_t *m = kit_manager(&cfg);
  int fd = apex_manager_fd(m);
  g_block.blocked = g_block.release = 0;
  apex_submit_opts_t o = opts_timeout(0.02);
  apex_task_t *hold = submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 60000}", &o);
  uint64_t hold_cb = 0;
  assert_int_equal(apex_token_on_cancel(apex_task_token(hold), block_runtime, NULL, &hold_cb),
                   APEX_OK);
  AWAIT(runtime_blocked(), PROMPT_MS); /* no dispatch yet: the runtime fired it */
  assert_false(pthread_equal(g_block.by, pthread_self()));
  dispatch_until(m, &tl, 1);

  o = opts_timeout(0.3);
  int64_t t0 = now_ms();
  apex_task_t *dl = submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 60000}", &o);
  fired_t f;
  watch_token(dl, &f);
  int early = fd_readable(fd, 100);
  int due = fd_readable(fd, PROMPT_MS);
  int64_t at = now_ms() - t0;
  int n = due ? apex_manager_dispatch(m) : -1;
  int dl_done = tally_dones(&tl) == 2;

  apex_retry_policy_t p = {.max_attempts = 2, .initial_interval_s = 0.05};
  apex_submit_opts_t ro;
  apex_submit_opts_init(&ro);
  ro.retry = &p;
  apex_task_t *rt = submit_json(m, "shutdown_kit", "slow_transient", "{\"ms\": 0}", &ro);
  int64_t end = now_ms() + 10000;
  while (tally_dones(&tl) < 3 && now_ms() < end)
    if (fd_readable(fd, 100)) assert_true(apex_manager_dispatch(m) >= 0);
  int rt_done = tally_dones(&tl) == 3;

  pthread_mutex_lock(&g_block.mu); /* before any assert: destroy needs it */
  g_block.release = 1;
  pthread_cond_broadcast(&g_block.cv);
  pthread_mutex_unlock(&g_block.mu);
  assert_false(early);
  assert_true(due);
  assert_true(at >= 299);
  assert_int_equal(n, 1); /* fired and delivered in the one call */
  assert_true(dl_done);
  assert_int_equal(tl.state[apex_task_id(dl)], APEX_TASK_TIMED_OUT);
  assert_true(atomic_load(&f.ran));
  assert_true(pthread_equal(f.by, pthread_self()));
  assert_true(rt_done);
  assert_int_equal(tl.state[apex_task_id(rt)], APEX_TASK_FAILED);
  assert_int_equal(apex_task_attempts(rt), 2);
  assert_int_equal(tl.off_thread, 0);
  apex_task_release(hold);
  apex_task_release(dl);
  apex_task_release(rt);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  tally_fini(&tl);
}

/* A host that does not dispatch: the runtime thread fires the deadline (a
 * millisecond after it is due), and the DONE waits for the host. */
static void test_runtime_thread_fires_a_deadline_the_host_leaves(void **st) {
  (void)st;
  tally_t tl;
  tally_init(&tl, 1);
  apex_manager_t *m = dispatch_manager(&tl, APEX_EVENT_DONE);
  apex_submit_opts_t o = opts_timeout(0.05);
  apex_task_t *t = submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 60000}", &o);
  fired_t f;
  watch_token(t, &f);
  assert_int_equal(apex_task_wait(t, PROMPT_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  AWAIT(atomic_load(&f.ran), PROMPT_MS);
  assert_false(pthread_equal(f.by, pthread_self()));
  assert_int_equal(tally_dones(&tl), 0);
  assert_true(fd_readable(apex_manager_fd(m), PROMPT_MS));
  dispatch_until(m, &tl, 1);
  assert_int_equal(tl.state[1], APEX_TASK_TIMED_OUT);
  assert_int_equal(tl.off_thread, 0);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  tally_fini(&tl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_destroy_drain_0_loop_delivers_every_done),
      cmocka_unit_test(test_destroy_drain_1_loop_delivers_every_done),
      cmocka_unit_test(test_destroy_drain_100_loop_delivers_every_done),
      cmocka_unit_test(test_destroy_drain_forever_loop_delivers_every_done),
      cmocka_unit_test(test_destroy_drain_0_dispatch_delivers_every_done),
      cmocka_unit_test(test_destroy_drain_1_dispatch_delivers_every_done),
      cmocka_unit_test(test_destroy_drain_100_dispatch_delivers_every_done),
      cmocka_unit_test(test_destroy_drain_forever_dispatch_delivers_every_done),
      cmocka_unit_test(test_destroy_delivers_waiting_dispatch_events_on_its_thread),
      cmocka_unit_test(test_destroy_gives_cooperative_handlers_the_grace),
      cmocka_unit_test(test_destroy_grace_follows_the_config),
      cmocka_unit_test(test_shutdown_grace_out_of_range_is_refused),
      cmocka_unit_test(test_destroy_ends_a_retry_waiting_task_at_once),
      cmocka_unit_test(test_transient_failure_during_drain_is_not_retried),
      cmocka_unit_test(test_busy_destroy_loop_freed_by_worker_no_callback_after),
      cmocka_unit_test(test_busy_destroy_dispatch_freed_by_worker_no_callback_after),
      cmocka_unit_test(test_busy_destroy_freed_by_plugin_thread_no_callback_after),
      cmocka_unit_test(test_wait_returns_after_the_done_callback_loop),
      cmocka_unit_test(test_wait_returns_at_terminal_in_dispatch_mode),
      cmocka_unit_test(test_wait_and_execute_refuse_the_runtime_thread),
      cmocka_unit_test(test_resubmit_after_wait_never_finds_the_queue_full),
      cmocka_unit_test(test_counters_agree_with_outcomes_loop),
      cmocka_unit_test(test_counters_agree_with_outcomes_dispatch),
      cmocka_unit_test(test_dispatch_fd_and_dispatch_fire_due_deadlines_and_retries),
      cmocka_unit_test(test_runtime_thread_fires_a_deadline_the_host_leaves),
  };
  if (getenv("APEX_TEST_FILTER")) cmocka_set_test_filter(getenv("APEX_TEST_FILTER"));
  return cmocka_run_group_tests(tests, NULL, NULL);
}
