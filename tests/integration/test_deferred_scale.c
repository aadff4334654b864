/* Pending deferred tasks at scale, apex_ctx_on_cancel, and queued tasks
 * that leave the run queue when cancelled (issue 9, items 2, 3 and 5).
 *
 * Plugin: pend_kit (tests/plugins/pend_kit.c): deferred actions that park
 * with apex_ctx_on_cancel and complete from the callback. The test dlopens
 * the same image so the plugin's counters (callbacks run, by reason,
 * violations of the callback's promises) stay readable across managers,
 * shutdown included. cancel_probe's `hold` blocks the only worker for the
 * queued-cancel test.
 *
 * Threads: cmocka's thread is the host; events arrive on Apex's runtime
 * thread (LOOP delivery) and are counted with atomics. Conditions are
 * awaited with generous bounds, never slept for. Sizes shrink under
 * sanitizers (SCALE_N, ITER): the plain build runs 200,000 pending tasks,
 * ten times what one cancel fd per task would allow here. */
#include <dirent.h>
#include <dlfcn.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "apex/plugin.h"
#include "integration/harness.h"

#if defined(__SANITIZE_THREAD__)
#define SCALE_N 20000
#define ITER(plain, tsan) (tsan)
#elif defined(__SANITIZE_ADDRESS__)
#define SCALE_N 100000
#define ITER(plain, tsan) ((plain) / 2)
#else
#define SCALE_N 200000
#define ITER(plain, tsan) (plain)
#endif

#define LONG_MS 120000 /* bounds for what the sanitizers make slow */
#define PEND_KIT APEX_TEST_PLUGIN_DIR "/pend_kit.so"

/* The plugin's counters (pend_kit.c), read through the test's own handle. */
typedef struct kit {
  void *dl;
  atomic_uint_fast64_t *fires, *violations, *bad_register;
  atomic_uint_fast64_t *by_timeout, *by_shutdown, *by_parent, *by_other;
  atomic_uint_fast64_t *registered;
  atomic_uint_fast64_t *quick_starts;
  _Atomic uintptr_t *quick_thread;
} kit_t;

static kit_t g_kit;

static atomic_uint_fast64_t *kit_sym(const char *name) {
  atomic_uint_fast64_t *p = dlsym(g_kit.dl, name);
  assert_non_null(p);
  return p;
}

static int setup(void **st) {
  (void)st;
  g_kit.dl = dlopen(PEND_KIT, RTLD_NOW);
  assert_non_null(g_kit.dl);
  g_kit.fires = kit_sym("g_fires");
  g_kit.violations = kit_sym("g_violations");
  g_kit.bad_register = kit_sym("g_bad_register");
  g_kit.by_timeout = kit_sym("g_by_timeout");
  g_kit.by_shutdown = kit_sym("g_by_shutdown");
  g_kit.by_parent = kit_sym("g_by_parent");
  g_kit.by_other = kit_sym("g_by_other");
  g_kit.registered = kit_sym("g_registered");
  g_kit.quick_starts = kit_sym("g_quick_starts");
  g_kit.quick_thread = dlsym(g_kit.dl, "g_quick_thread");
  assert_non_null(g_kit.quick_thread);
  return 0;
}

static int teardown(void **st) {
  (void)st;
  dlclose(g_kit.dl);
  return 0;
}

static uint64_t kv(atomic_uint_fast64_t *p) { return atomic_load(p); }

#define ATTEMPT_IDS 8

/* What the event callback counts. */
typedef struct counts {
  uint64_t base; /* the first task id of the batch */
  uint64_t n;
  atomic_uchar *done;         /* DONE events per task, by id - base */
  atomic_uint_fast64_t n_done, n_bad, n_attempt;
  atomic_uint_fast64_t attempt_ids[ATTEMPT_IDS]; /* the first ATTEMPT events' tasks, in order */
  /* What each DONE must say; atomics: the test changes them between
   * batches while the runtime thread delivers. */
  _Atomic int want;           /* apex_task_state_t */
  _Atomic(const char *) want_msg; /* the DONE error's message, or NULL: any */
} counts_t;

static void on_event(const apex_event_t *ev, void *user) {
  counts_t *c = user;
  if (ev->type == APEX_EVENT_ATTEMPT) {
    uint64_t k = atomic_fetch_add(&c->n_attempt, 1);
    if (k < ATTEMPT_IDS) atomic_store(&c->attempt_ids[k], ev->task_id);
    return;
  }
  if (ev->type != APEX_EVENT_DONE) return;
  if (c->done && ev->task_id >= c->base && ev->task_id - c->base < c->n)
    atomic_fetch_add(&c->done[ev->task_id - c->base], 1);
  else if (c->done)
    atomic_fetch_add(&c->n_bad, 1);
  const char *msg = atomic_load(&c->want_msg);
  if ((int)ev->state != atomic_load(&c->want) ||
      (msg && (!ev->error || strcmp(apex_error_message(ev->error), msg) != 0)))
    atomic_fetch_add(&c->n_bad, 1);
  atomic_fetch_add(&c->n_done, 1);
}

static apex_manager_t *make(unsigned workers, counts_t *c) {
  apex_manager_config_t cfg = base_config(workers);
  if (c) {
    cfg.on_event = on_event;
    cfg.event_user = c;
  }
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, PEND_KIT);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  return m;
}

static apex_stats_t stats(apex_manager_t *m) {
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s), APEX_OK);
  return s;
}

static uint64_t running(apex_manager_t *m) { return stats(m).running; }

/* The kit's registrations before the last submit (the tests' waits). */
static uint64_t g_reg_mark;

static apex_task_t *submit_to(apex_manager_t *m, const char *action, const char *params,
                              double timeout_s) {
  g_reg_mark = kv(g_kit.registered);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = timeout_s;
  return submit_json(m, "pend_kit", action, params, &o);
}

/* Open fds of this process. */
static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* The Done-when test of issue 9: SCALE_N pending deferred tasks, each with
 * a timeout, cancelled in a shuffled order; each has exactly one outcome,
 * cancelled by its own callback, and no fd was made for any. */
static void many_pending_cancelled_once_each(const char *action, uint64_t n) {
  counts_t c = {.n = n, .want = APEX_TASK_CANCELLED, .want_msg = "oc user"};
  c.done = calloc(n, sizeof *c.done);
  apex_task_t **tasks = calloc(n, sizeof *tasks);
  assert_non_null(c.done);
  assert_non_null(tasks);
  apex_manager_t *m = make(2, &c);
  uint64_t fires0 = kv(g_kit.fires);
  int fds0 = count_fds();
  for (uint64_t i = 0; i < n; i++) {
    tasks[i] = submit_to(m, action, NULL, 600.0);
    if (i == 0) c.base = apex_task_id(tasks[0]);
    assert_int_equal(apex_task_id(tasks[i]), c.base + i); /* one host thread: consecutive */
  }
  AWAIT(running(m) == n, LONG_MS);
  assert_int_equal(stats(m).queued, 0);
  /* No fd per pending task (a few for the manager's own are fine). */
  assert_true(count_fds() - fds0 < 16);
  assert_int_equal(atomic_load(&c.n_done), 0);
  /* A shuffled order (fixed seed: reproducible). */
  uint64_t x = 88172645463325252ull;
  for (uint64_t i = n - 1; i > 0; i--) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    uint64_t j = x % (i + 1);
    apex_task_t *tmp = tasks[i];
    tasks[i] = tasks[j];
    tasks[j] = tmp;
  }
  for (uint64_t i = 0; i < n; i++) {
    assert_int_equal(apex_task_cancel(tasks[i], NULL), APEX_OK);
    apex_task_release(tasks[i]);
  }
  AWAIT(atomic_load(&c.n_done) == n, LONG_MS);
  assert_int_equal(atomic_load(&c.n_bad), 0);
  for (uint64_t i = 0; i < n; i++)
    if (atomic_load(&c.done[i]) != 1) fail_msg("task %" PRIu64 ": %u DONE events", c.base + i,
                                                (unsigned)atomic_load(&c.done[i]));
  assert_int_equal(kv(g_kit.fires) - fires0, n);
  apex_stats_t s = stats(m);
  assert_int_equal(s.cancelled, n);
  assert_int_equal(s.running, 0);
  assert_int_equal(s.late_reports, 0);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  /* Nothing is left to fire: no outcome twice after the manager went. */
  assert_int_equal(atomic_load(&c.n_done), n);
  free(c.done);
  free(tasks);
}

static void test_many_pending_deferred_tasks_cancelled_once_each(void **st) {
  (void)st;
  many_pending_cancelled_once_each("pend", SCALE_N);
}

/* The same with starts on the submitting thread (APEX_ACTION_F_START_INLINE):
 * every one of them started there, none on a worker. */
static void test_many_pending_inline_started_tasks_cancelled_once_each(void **st) {
  (void)st;
  uint64_t s0 = kv(g_kit.quick_starts);
  many_pending_cancelled_once_each("quick", SCALE_N);
  assert_int_equal(kv(g_kit.quick_starts) - s0, SCALE_N);
  assert_true(atomic_load(g_kit.quick_thread) == (uintptr_t)pthread_self());
}

/* A start flagged APEX_ACTION_F_START_INLINE runs inside the submit, on the
 * submitting thread, as a worker would have run it: the task is running
 * and its callback registered when apex_manager_submit returns, its
 * ATTEMPT event and counts are as for any start, and its cancel and DONE
 * are as pend's. An unflagged deferred start still goes to a worker. */
static void test_inline_start_runs_inside_the_submit(void **st) {
  (void)st;
  counts_t c = {.want = APEX_TASK_CANCELLED, .want_msg = "oc user"};
  apex_manager_t *m = make(2, &c);
  uint64_t s0 = kv(g_kit.quick_starts);
  apex_task_t *t = submit_to(m, "quick", NULL, 600.0);
  /* No wait: it started before the submit returned, on this thread. */
  assert_int_equal(kv(g_kit.quick_starts), s0 + 1);
  assert_true(atomic_load(g_kit.quick_thread) == (uintptr_t)pthread_self());
  assert_int_equal(apex_task_state(t), APEX_TASK_RUNNING);
  assert_true(kv(g_kit.registered) > g_reg_mark);
  apex_stats_t s = stats(m);
  assert_int_equal(s.running, 1);
  assert_int_equal(s.queued, 0);
  assert_int_equal(s.attempts, 1);
  AWAIT(atomic_load(&c.n_attempt) == 1, PROMPT_MS);
  assert_int_equal(apex_task_attempts(t), 1);
  /* A plain pend goes to a worker: it is not started by the submit's
   * return unless a worker was that quick, and never on this thread. */
  apex_task_t *p = submit_to(m, "pend", NULL, 600.0);
  AWAIT(apex_task_state(p) == APEX_TASK_RUNNING && kv(g_kit.registered) > g_reg_mark, PROMPT_MS);
  assert_int_equal(kv(g_kit.quick_starts), s0 + 1);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  assert_int_equal(apex_task_cancel(p, NULL), APEX_OK);
  AWAIT(atomic_load(&c.n_done) == 2, LONG_MS);
  assert_int_equal(atomic_load(&c.n_bad), 0);
  apex_task_release(t);
  apex_task_release(p);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* An inline start takes nobody's turn: with a task already waiting for a
 * worker, a flagged task queues behind it like any other and a worker
 * starts it in its turn; and a task that ends before it starts (cancelled
 * in the queue) never starts. */
static void test_inline_start_waits_its_turn(void **st) {
  (void)st;
  counts_t c = {.want = APEX_TASK_SUCCEEDED};
  apex_manager_t *m = make(1, &c);
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", fds[0]);
  apex_task_t *hold = submit_json(m, "cancel_probe", "hold", params, NULL);
  AWAIT(apex_task_state(hold) == APEX_TASK_RUNNING, PROMPT_MS);
  /* The only worker is busy: a blocking task waits for it. */
  apex_task_t *second = submit_json(m, "cancel_probe", "hold", params, NULL);
  assert_int_equal(apex_task_state(second), APEX_TASK_QUEUED);
  uint64_t s0 = kv(g_kit.quick_starts);
  apex_task_t *q = submit_to(m, "quick", NULL, 600.0);
  assert_int_equal(apex_task_state(q), APEX_TASK_QUEUED); /* behind `second` */
  apex_task_t *gone = submit_to(m, "quick", NULL, 600.0);
  assert_int_equal(apex_task_state(gone), APEX_TASK_QUEUED);
  assert_int_equal(apex_task_cancel(gone, NULL), APEX_OK);
  assert_int_equal(kv(g_kit.quick_starts), s0);
  assert_int_equal(stats(m).queued, 2);
  /* Free the worker (both holds read one byte each): `second`, then q. */
  assert_int_equal(write(fds[1], "xx", 2), 2);
  assert_int_equal(apex_task_wait(hold, LONG_MS), APEX_OK);
  assert_int_equal(apex_task_wait(second, LONG_MS), APEX_OK);
  AWAIT(apex_task_state(q) == APEX_TASK_RUNNING && kv(g_kit.quick_starts) == s0 + 1, LONG_MS);
  /* Started by the worker, in its turn: after `second` (FIFO at one
   * priority), and `gone` never. */
  assert_true(atomic_load(g_kit.quick_thread) != (uintptr_t)pthread_self());
  AWAIT(atomic_load(&c.n_attempt) == 3, LONG_MS);
  assert_int_equal(atomic_load(&c.attempt_ids[0]), apex_task_id(hold));
  assert_int_equal(atomic_load(&c.attempt_ids[1]), apex_task_id(second));
  assert_int_equal(atomic_load(&c.attempt_ids[2]), apex_task_id(q));
  assert_int_equal(apex_task_state(gone), APEX_TASK_CANCELLED);
  assert_int_equal(apex_task_cancel(q, NULL), APEX_OK);
  assert_int_equal(apex_task_state(q), APEX_TASK_CANCELLED);
  AWAIT(atomic_load(&c.n_done) == 4, LONG_MS);
  assert_int_equal(kv(g_kit.quick_starts), s0 + 1);
  assert_int_equal(atomic_load(&c.n_attempt), 3);
  apex_task_release(hold);
  apex_task_release(second);
  apex_task_release(q);
  apex_task_release(gone);
  close(fds[0]);
  close(fds[1]);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* The callback runs for each kind of cancellation, with its reason, and
 * the outcome is the one the cancel decides. */
static void test_on_cancel_fires_for_user_timeout_shutdown_parent(void **st) {
  (void)st;
  apex_manager_t *m = make(2, NULL);
  /* user: the host's own text reaches the callback */
  apex_task_t *t = submit_to(m, "pend", NULL, 600.0);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING && running(m) == 1 &&
            kv(g_kit.registered) > g_reg_mark,
        PROMPT_MS);
  uint64_t f0 = kv(g_kit.fires);
  assert_int_equal(apex_task_cancel(t, "enough"), APEX_OK);
  /* On the cancelling thread, before apex_task_cancel returned. */
  assert_int_equal(kv(g_kit.fires), f0 + 1);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  apex_error_t *e = apex_task_error(t);
  assert_int_equal(apex_error_code(e), APEX_E_CANCELLED);
  assert_string_equal(apex_error_message(e), "oc enough");
  apex_error_unref(e);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_E_ALREADY);
  assert_int_equal(kv(g_kit.fires), f0 + 1); /* once */
  apex_task_release(t);

  /* timeout: the runtime thread fires it; the task is timed out */
  uint64_t to0 = kv(g_kit.by_timeout);
  t = submit_to(m, "pend", NULL, 0.2);
  assert_int_equal(apex_task_wait(t, LONG_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  AWAIT(kv(g_kit.by_timeout) == to0 + 1, PROMPT_MS);
  AWAIT(running(m) == 0, PROMPT_MS); /* the callback's complete closed the attempt */
  apex_task_release(t);

  /* parent: the parent token's cancel reaches it */
  apex_token_t *parent = NULL;
  assert_int_equal(apex_token_new(&parent), APEX_OK);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.parent = parent;
  g_reg_mark = kv(g_kit.registered);
  t = submit_json(m, "pend_kit", "pend", NULL, &o);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING && running(m) == 1 &&
            kv(g_kit.registered) > g_reg_mark,
        PROMPT_MS);
  uint64_t p0 = kv(g_kit.by_parent);
  assert_int_equal(apex_token_cancel(parent, "anything"), APEX_OK);
  assert_int_equal(apex_task_wait(t, LONG_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  assert_int_equal(kv(g_kit.by_parent), p0 + 1);
  apex_task_release(t);
  apex_token_unref(parent);

  /* shutdown: destroy ends the pending task and fires its callback */
  t = submit_to(m, "pend", NULL, 600.0);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING && running(m) == 1 &&
            kv(g_kit.registered) > g_reg_mark,
        PROMPT_MS);
  uint64_t s0 = kv(g_kit.by_shutdown);
  /* No drain: destroy cancels it at once. */
  assert_int_equal(apex_manager_destroy(m, 0), APEX_OK);
  assert_int_equal(kv(g_kit.by_shutdown), s0 + 1);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  apex_task_release(t);
  assert_int_equal(kv(g_kit.violations), 0);
}

/* A registration made after the cancellation fired runs the callback at
 * once, on the registering thread, inside the call. */
static void test_on_cancel_after_cancel_runs_at_once(void **st) {
  (void)st;
  apex_manager_t *m = make(1, NULL);
  apex_task_t *t = submit_to(m, "late", NULL, 600.0);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, PROMPT_MS);
  assert_int_equal(apex_task_cancel(t, "now"), APEX_OK);
  assert_int_equal(apex_task_wait(t, LONG_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  apex_error_t *e = apex_task_error(t);
  assert_string_equal(apex_error_message(e), "oc now inline=1");
  apex_error_unref(e);
  apex_task_release(t);
  assert_int_equal(kv(g_kit.bad_register), 0);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* One registration per attempt: a second is refused and never runs; a NULL
 * callback is refused. */
static void test_on_cancel_one_registration_per_attempt(void **st) {
  (void)st;
  apex_manager_t *m = make(1, NULL);
  uint64_t f0 = kv(g_kit.fires);
  apex_task_t *t = submit_to(m, "twice", NULL, 600.0);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING && running(m) == 1 &&
            kv(g_kit.registered) > g_reg_mark,
        PROMPT_MS);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  apex_error_t *e = apex_task_error(t);
  assert_string_equal(apex_error_message(e), "oc user");
  apex_error_unref(e);
  assert_int_equal(kv(g_kit.fires), f0 + 1);
  assert_int_equal(kv(g_kit.bad_register), 0);
  assert_int_equal(kv(g_kit.violations), 0);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* A plain cancel of a pending deferred task makes no token: the attempt
 * still reads cancelled ("user") after its callback ran, a token made
 * afterwards is born cancelled, and a second cancel is refused. */
static void test_on_cancel_tokenless_cancel_still_reads_cancelled(void **st) {
  (void)st;
  apex_manager_t *m = make(2, NULL);
  apex_task_t *t = submit_to(m, "park", NULL, 600.0);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING && running(m) == 1 &&
            kv(g_kit.registered) > g_reg_mark,
        PROMPT_MS);
  uint64_t f0 = kv(g_kit.fires);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(kv(g_kit.fires), f0 + 1);
  assert_int_equal(apex_task_state(t), APEX_TASK_RUNNING); /* parked, not completed */
  assert_int_equal(apex_task_cancel(t, NULL), APEX_E_ALREADY);
  assert_int_equal(apex_task_cancel(t, "again"), APEX_E_ALREADY);
  apex_token_t *tok = apex_task_token(t);
  assert_true(apex_token_is_cancelled(tok));
  assert_string_equal(apex_token_reason(tok), "user");
  apex_task_t *u = submit_to(m, "unpark", NULL, 600.0);
  assert_int_equal(apex_task_wait(u, LONG_MS), APEX_OK);
  assert_int_equal(apex_task_state(u), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_wait(t, LONG_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  apex_error_t *e = apex_task_error(t);
  assert_string_equal(apex_error_message(e), "parked user cancelled=1");
  apex_error_unref(e);
  assert_int_equal(kv(g_kit.fires), f0 + 1);
  apex_task_release(u);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* Shutdown ends a running task at once even when a plain cancel already
 * fired its callback without a token (the callback parked the ctx and never
 * completes it): destroy returns BUSY after its grace instead of finding
 * that task again on every pass for ever. The parked ctx, completed after,
 * frees the orphaned manager. */
static void test_destroy_ends_a_task_whose_callback_fired_tokenless(void **st) {
  (void)st;
  apex_manager_t *m = make(2, NULL);
  apex_task_t *t = submit_to(m, "park", NULL, 600.0);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING && running(m) == 1 &&
            kv(g_kit.registered) > g_reg_mark,
        PROMPT_MS);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK); /* fired, parked, no token */
  assert_int_equal(apex_task_state(t), APEX_TASK_RUNNING);
  assert_int_equal(apex_manager_destroy(m, 0), APEX_E_BUSY);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  int (*unpark)(void) = (int (*)(void))dlsym(g_kit.dl, "pend_kit_unpark");
  assert_non_null(unpark);
  assert_int_equal(unpark(), 0); /* the last handler: tears the manager down */
  apex_task_release(t);
}

/* A complete racing the cancel: the plugin completes on the worker while
 * the host cancels. Every round ends exactly once; the callback runs at
 * most once and never after complete returned (the plugin counts
 * violations); both orders happen, and each cancelled round leaves the
 * worker's complete late (counted), a succeeded one runs no callback. */
static void test_on_cancel_complete_racing_cancel(void **st) {
  (void)st;
  const int rounds = ITER(2000, 300);
  apex_manager_t *m = make(1, NULL);
  int efd = eventfd(0, EFD_CLOEXEC);
  assert_true(efd >= 0);
  uint64_t f0 = kv(g_kit.fires), late0 = stats(m).late_reports;
  int n_ok = 0, n_cancelled = 0;
  for (int i = 0; i < rounds; i++) {
    char params[96];
    /* From no spin (complete usually wins) to a long one (cancel wins),
     * growing as a square: up to about a millisecond, so the cancel also
     * wins on a loaded machine, where the host's wake-up is slow. */
    snprintf(params, sizeof params, "{\"ready_fd\": %d, \"spin\": %d}", efd,
             (i % 40) * (i % 40) * 500);
    apex_task_t *t = submit_to(m, "race", params, 600.0);
    uint64_t one;
    assert_int_equal(read(efd, &one, sizeof one), (ssize_t)sizeof one);
    int rc = apex_task_cancel(t, NULL);
    assert_true(rc == APEX_OK || rc == APEX_E_ALREADY);
    assert_int_equal(apex_task_wait(t, LONG_MS), APEX_OK);
    apex_task_state_t s = apex_task_state(t);
    if (s == APEX_TASK_SUCCEEDED)
      n_ok++;
    else if (s == APEX_TASK_CANCELLED)
      n_cancelled++;
    else
      fail_msg("round %d: state %s", i, apex_task_state_name(s));
    apex_task_release(t);
  }
  AWAIT(running(m) == 0, PROMPT_MS);
  print_message("complete first: %d, cancel first: %d\n", n_ok, n_cancelled);
  assert_int_equal(kv(g_kit.violations), 0);
  assert_int_equal(kv(g_kit.bad_register), 0);
  assert_true(n_ok > 0);
  assert_true(n_cancelled > 0);
  assert_int_equal(kv(g_kit.fires) - f0, (uint64_t)n_cancelled);
  AWAIT(stats(m).late_reports - late0 == (uint64_t)n_cancelled, PROMPT_MS);
  close(efd);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* An older host's table ends before on_cancel: the wrapper refuses without
 * calling past its end. */
static int g_stub_calls;
static int stub_on_cancel(apex_ctx_t *c, apex_ctx_cancel_fn fn, void *user) {
  (void)c;
  (void)fn;
  (void)user;
  g_stub_calls++;
  return APEX_OK;
}
static void noop_cb(apex_ctx_t *c, void *user) {
  (void)c;
  (void)user;
}

static void test_on_cancel_wrapper_refuses_on_older_host(void **st) {
  (void)st;
  apex_host_api_t api;
  memset(&api, 0, sizeof api);
  api.on_cancel = stub_on_cancel;
  apex_ctx_t ctx = {.api = &api};
  api.struct_size = (uint32_t)offsetof(apex_host_api_t, on_cancel);
  assert_int_equal(apex_ctx_on_cancel(&ctx, noop_cb, NULL), APEX_E_INVALID);
  assert_int_equal(g_stub_calls, 0);
  api.struct_size = (uint32_t)sizeof api;
  assert_int_equal(apex_ctx_on_cancel(&ctx, noop_cb, NULL), APEX_OK);
  assert_int_equal(g_stub_calls, 1);
}

/* Cancelled while queued behind a blocked worker, tasks leave the queue at
 * once (queued 0, cancelled counted, before the worker is free) and are
 * never popped: no attempt starts for any of them. */
static void test_cancelled_queued_tasks_leave_the_queue(void **st) {
  (void)st;
  const uint64_t n = 10000;
  counts_t c = {.want = APEX_TASK_CANCELLED, .want_msg = "cancelled (user)"};
  apex_manager_t *m = make(1, &c);
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", fds[0]);
  apex_task_t *hold = submit_json(m, "cancel_probe", "hold", params, NULL);
  AWAIT(apex_task_state(hold) == APEX_TASK_RUNNING, PROMPT_MS);
  AWAIT(atomic_load(&c.n_attempt) == 1, PROMPT_MS);
  apex_task_t **tasks = calloc(n, sizeof *tasks);
  assert_non_null(tasks);
  for (uint64_t i = 0; i < n; i++) tasks[i] = submit_to(m, "pend", NULL, 600.0);
  assert_int_equal(stats(m).queued, n);
  for (uint64_t i = 0; i < n; i++) {
    assert_int_equal(apex_task_cancel(tasks[i], NULL), APEX_OK);
    assert_int_equal(apex_task_state(tasks[i]), APEX_TASK_CANCELLED);
  }
  apex_stats_t s = stats(m);
  assert_int_equal(s.queued, 0);
  assert_int_equal(s.cancelled, n);
  assert_int_equal(s.running, 1);
  for (uint64_t i = 0; i < n; i++) apex_task_release(tasks[i]);
  free(tasks);
  AWAIT(atomic_load(&c.n_done) == n, LONG_MS);
  /* Free the worker; it finds nothing queued. */
  atomic_store(&c.want, APEX_TASK_SUCCEEDED);
  atomic_store(&c.want_msg, NULL);
  assert_int_equal(write(fds[1], "x", 1), 1);
  assert_int_equal(apex_task_wait(hold, LONG_MS), APEX_OK);
  assert_int_equal(apex_task_state(hold), APEX_TASK_SUCCEEDED);
  AWAIT(atomic_load(&c.n_done) == n + 1, LONG_MS);
  assert_int_equal(atomic_load(&c.n_bad), 0);
  s = stats(m);
  assert_int_equal(s.attempts, 1);
  assert_int_equal(atomic_load(&c.n_attempt), 1);
  apex_task_release(hold);
  close(fds[0]);
  close(fds[1]);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_on_cancel_wrapper_refuses_on_older_host),
      cmocka_unit_test(test_on_cancel_fires_for_user_timeout_shutdown_parent),
      cmocka_unit_test(test_on_cancel_after_cancel_runs_at_once),
      cmocka_unit_test(test_on_cancel_one_registration_per_attempt),
      cmocka_unit_test(test_on_cancel_tokenless_cancel_still_reads_cancelled),
      cmocka_unit_test(test_destroy_ends_a_task_whose_callback_fired_tokenless),
      cmocka_unit_test(test_on_cancel_complete_racing_cancel),
      cmocka_unit_test(test_cancelled_queued_tasks_leave_the_queue),
      cmocka_unit_test(test_many_pending_deferred_tasks_cancelled_once_each),
      cmocka_unit_test(test_many_pending_inline_started_tasks_cancelled_once_each),
      cmocka_unit_test(test_inline_start_runs_inside_the_submit),
      cmocka_unit_test(test_inline_start_waits_its_turn),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
