/* Unit tests of the cancellation token (src/core/token.c): reasons,
 * callbacks and their removal (including against a callback running on
 * another thread), the eventfd, waits, parent/child links and a multi-thread
 * stress run. Threads hand off through semaphores and joins, never sleeps;
 * the one short sleep only gives a remover the chance to block, and the
 * assertions hold whatever the scheduling. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "apex/apex.h"

/* ------------------------------------------------------------- helpers */

typedef struct {
  atomic_int runs;
  char reason[64];
  apex_token_t *seen_tok;
} counter_t;

static void count_cb(apex_token_t *tok, const char *reason, void *user) {
  counter_t *c = user;
  if (atomic_fetch_add(&c->runs, 1) == 0) {
    snprintf(c->reason, sizeof c->reason, "%s", reason ? reason : "(null)");
    c->seen_tok = tok;
  }
}

static apex_token_t *new_token(void) {
  apex_token_t *tok = NULL;
  assert_int_equal(apex_token_new(&tok), APEX_OK);
  assert_non_null(tok);
  return tok;
}

static apex_token_t *new_child(apex_token_t *parent) {
  apex_token_t *tok = NULL;
  assert_int_equal(apex_token_new_child(parent, &tok), APEX_OK);
  assert_non_null(tok);
  return tok;
}

static int poll_now(int fd) {
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  int n;
  do {
    n = poll(&pfd, 1, 0);
  } while (n < 0 && errno == EINTR);
  assert_true(n >= 0);
  return n == 1 && (pfd.revents & POLLIN) ? 1 : 0;
}

static int64_t now_ms(void) {
  struct timespec ts;
  assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sem_wait_all(sem_t *s) {
  while (sem_wait(s) != 0) assert_int_equal(errno, EINTR);
}

/* --------------------------------------------------- reasons and flags */

static void test_new_token_is_not_cancelled(void **st) {
  apex_token_t *tok = new_token();
  assert_int_equal(apex_token_is_cancelled(tok), 0);
  assert_null(apex_token_reason(tok));
  apex_token_unref(tok);
}

static void test_cancel_sets_flag_and_reason(void **st) {
  apex_token_t *tok = new_token();
  assert_int_equal(apex_token_cancel(tok, "timeout"), APEX_OK);
  assert_int_equal(apex_token_is_cancelled(tok), 1);
  assert_string_equal(apex_token_reason(tok), "timeout");
  apex_token_unref(tok);
}

static void test_cancel_with_null_reason_means_user(void **st) {
  apex_token_t *tok = new_token();
  assert_int_equal(apex_token_cancel(tok, NULL), APEX_OK);
  assert_string_equal(apex_token_reason(tok), "user");
  apex_token_unref(tok);
}

static void test_second_cancel_returns_already_and_keeps_first_reason(void **st) {
  apex_token_t *tok = new_token();
  assert_int_equal(apex_token_cancel(tok, "timeout"), APEX_OK);
  assert_int_equal(apex_token_cancel(tok, "user"), APEX_E_ALREADY);
  assert_string_equal(apex_token_reason(tok), "timeout");
  apex_token_unref(tok);
}

static void test_cancel_copies_reason(void **st) {
  char shortr[] = "short reason";
  char longr[200];
  memset(longr, 'x', sizeof longr - 1);
  longr[sizeof longr - 1] = '\0';
  apex_token_t *a = new_token(), *b = new_token();
  assert_int_equal(apex_token_cancel(a, shortr), APEX_OK);
  assert_int_equal(apex_token_cancel(b, longr), APEX_OK);
  char expect[200];
  memcpy(expect, longr, sizeof longr);
  shortr[0] = 'S';
  longr[0] = 'L';
  assert_string_equal(apex_token_reason(a), "short reason");
  assert_string_equal(apex_token_reason(b), expect);
  apex_token_unref(a);
  apex_token_unref(b);
}

static void noop_cb(apex_token_t *tok, const char *reason, void *user) {}

static void test_null_arguments_are_rejected(void **st) {
  apex_token_t *tok = new_token();
  apex_token_t *out = (apex_token_t *)&out;
  uint64_t id = 99;
  assert_int_equal(apex_token_new(NULL), APEX_E_INVALID);
  assert_int_equal(apex_token_new_child(NULL, &out), APEX_E_INVALID);
  assert_null(out);
  assert_int_equal(apex_token_new_child(tok, NULL), APEX_E_INVALID);
  assert_int_equal(apex_token_cancel(NULL, "x"), APEX_E_INVALID);
  assert_int_equal(apex_token_on_cancel(NULL, noop_cb, NULL, &id), APEX_E_INVALID);
  assert_int_equal(apex_token_on_cancel(tok, NULL, NULL, &id), APEX_E_INVALID);
  assert_int_equal(apex_token_remove_callback(NULL, 1), APEX_E_INVALID);
  assert_int_equal(apex_token_fd(NULL), APEX_E_INVALID);
  assert_int_equal(apex_token_wait(NULL, 0), APEX_E_INVALID);
  assert_int_equal(apex_token_is_cancelled(NULL), 0);
  assert_null(apex_token_reason(NULL));
  assert_null(apex_token_ref(NULL));
  apex_token_unref(NULL);
  assert_int_equal(apex_token_is_cancelled(tok), 0);
  apex_token_unref(tok);
}

static void test_ref_keeps_token_alive(void **st) {
  apex_token_t *tok = new_token();
  assert_ptr_equal(apex_token_ref(tok), tok);
  apex_token_unref(tok);
  assert_int_equal(apex_token_cancel(tok, "still here"), APEX_OK);
  assert_string_equal(apex_token_reason(tok), "still here");
  apex_token_unref(tok);
}

/* ---------------------------------------------------------- callbacks */

static void test_callback_runs_exactly_once_with_reason(void **st) {
  apex_token_t *tok = new_token();
  counter_t c = {0};
  uint64_t id = 0;
  assert_int_equal(apex_token_on_cancel(tok, count_cb, &c, &id), APEX_OK);
  assert_true(id != 0);
  assert_int_equal(atomic_load(&c.runs), 0);
  assert_int_equal(apex_token_cancel(tok, "stop"), APEX_OK);
  assert_int_equal(apex_token_cancel(tok, "again"), APEX_E_ALREADY);
  assert_int_equal(atomic_load(&c.runs), 1);
  assert_string_equal(c.reason, "stop");
  assert_ptr_equal(c.seen_tok, tok);
  apex_token_unref(tok);
}

static void test_callback_ids_are_distinct_and_nonzero(void **st) {
  apex_token_t *tok = new_token();
  uint64_t a = 0, b = 0;
  assert_int_equal(apex_token_on_cancel(tok, noop_cb, NULL, &a), APEX_OK);
  assert_int_equal(apex_token_on_cancel(tok, noop_cb, NULL, &b), APEX_OK);
  assert_true(a != 0 && b != 0 && a != b);
  apex_token_unref(tok);
}

static void test_callback_registered_after_cancel_runs_at_once_with_id_0(void **st) {
  apex_token_t *tok = new_token();
  counter_t c = {0};
  uint64_t id = 77;
  assert_int_equal(apex_token_cancel(tok, "early"), APEX_OK);
  assert_int_equal(apex_token_on_cancel(tok, count_cb, &c, &id), APEX_OK);
  assert_int_equal(id, 0);
  assert_int_equal(atomic_load(&c.runs), 1);
  assert_string_equal(c.reason, "early");
  /* id may be NULL */
  assert_int_equal(apex_token_on_cancel(tok, count_cb, &c, NULL), APEX_OK);
  assert_int_equal(atomic_load(&c.runs), 2);
  apex_token_unref(tok);
}

static void test_remove_before_cancel_succeeds_and_callback_never_runs(void **st) {
  apex_token_t *tok = new_token();
  counter_t c = {0}, other = {0};
  uint64_t id = 0, other_id = 0;
  assert_int_equal(apex_token_on_cancel(tok, count_cb, &c, &id), APEX_OK);
  assert_int_equal(apex_token_on_cancel(tok, count_cb, &other, &other_id), APEX_OK);
  assert_int_equal(apex_token_remove_callback(tok, id), APEX_OK);
  assert_int_equal(apex_token_remove_callback(tok, id), APEX_E_ALREADY);
  assert_int_equal(apex_token_cancel(tok, NULL), APEX_OK);
  assert_int_equal(atomic_load(&c.runs), 0);
  assert_int_equal(atomic_load(&other.runs), 1);
  apex_token_unref(tok);
}

static void test_remove_after_run_returns_already(void **st) {
  apex_token_t *tok = new_token();
  counter_t c = {0};
  uint64_t id = 0;
  assert_int_equal(apex_token_on_cancel(tok, count_cb, &c, &id), APEX_OK);
  assert_int_equal(apex_token_cancel(tok, NULL), APEX_OK);
  assert_int_equal(apex_token_remove_callback(tok, id), APEX_E_ALREADY);
  assert_int_equal(atomic_load(&c.runs), 1);
  apex_token_unref(tok);
}

static void test_remove_of_zero_or_unknown_id_returns_already(void **st) {
  apex_token_t *tok = new_token();
  assert_int_equal(apex_token_remove_callback(tok, 0), APEX_E_ALREADY);
  assert_int_equal(apex_token_remove_callback(tok, 12345), APEX_E_ALREADY);
  apex_token_unref(tok);
}

typedef struct {
  uint64_t id;
  apex_status_t rc;
  int runs;
} self_remove_t;

static void self_remove_cb(apex_token_t *tok, const char *reason, void *user) {
  self_remove_t *s = user;
  s->runs++;
  s->rc = apex_token_remove_callback(tok, s->id);
}

static void test_remove_from_inside_own_callback_does_not_deadlock(void **st) {
  apex_token_t *tok = new_token();
  self_remove_t s = {0, APEX_OK, 0};
  assert_int_equal(apex_token_on_cancel(tok, self_remove_cb, &s, &s.id), APEX_OK);
  assert_int_equal(apex_token_cancel(tok, NULL), APEX_OK);
  assert_int_equal(s.runs, 1);
  assert_int_equal(s.rc, APEX_E_ALREADY);
  apex_token_unref(tok);
}

/* The first callback removes the second before it started: it never runs. */
static void test_callback_can_remove_a_later_pending_callback(void **st) {
  apex_token_t *tok = new_token();
  self_remove_t s = {0, APEX_OK, 0};
  counter_t c = {0};
  assert_int_equal(apex_token_on_cancel(tok, self_remove_cb, &s, NULL), APEX_OK);
  assert_int_equal(apex_token_on_cancel(tok, count_cb, &c, &s.id), APEX_OK);
  assert_int_equal(apex_token_cancel(tok, NULL), APEX_OK);
  assert_int_equal(s.rc, APEX_OK);
  assert_int_equal(atomic_load(&c.runs), 0);
  apex_token_unref(tok);
}

typedef struct {
  sem_t started, release;
  atomic_int finished;
} blocking_t;

/* Runs on the canceller thread, where cmocka must not assert. */
static void blocking_cb(apex_token_t *tok, const char *reason, void *user) {
  blocking_t *b = user;
  (void)sem_post(&b->started);
  while (sem_wait(&b->release) != 0 && errno == EINTR) {
  }
  atomic_store(&b->finished, 1);
}

static void *cancel_thread(void *arg) {
  (void)apex_token_cancel(arg, "from thread");
  return NULL;
}

typedef struct {
  apex_token_t *tok;
  uint64_t id;
  apex_status_t rc;
  int finished_when_returned;
  atomic_int returned;
  atomic_int tid; /* the remover's thread id, once it runs */
  blocking_t *b;
} remover_t;

/* The scheduler state of thread tid of this process ('R' running, 'S'
 * sleeping, ...), from /proc; 0 if it cannot be read. */
static char thread_state(int tid) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *paren = strrchr(buf, ')'); /* "tid (comm) S ..." */
  return paren && paren[1] == ' ' ? paren[2] : 0;
}

static void *remove_thread(void *arg) {
  remover_t *r = arg;
  atomic_store(&r->tid, (int)gettid());
  r->rc = apex_token_remove_callback(r->tok, r->id);
  r->finished_when_returned = atomic_load(&r->b->finished);
  atomic_store(&r->returned, 1);
  return NULL;
}

static void test_remove_waits_for_callback_running_on_another_thread(void **st) {
  apex_token_t *tok = new_token();
  blocking_t b;
  assert_int_equal(sem_init(&b.started, 0, 0), 0);
  assert_int_equal(sem_init(&b.release, 0, 0), 0);
  atomic_init(&b.finished, 0);
  remover_t r = {.tok = tok, .rc = APEX_OK, .b = &b};
  atomic_init(&r.returned, 0);
  atomic_init(&r.tid, 0);
  assert_int_equal(apex_token_on_cancel(tok, blocking_cb, &b, &r.id), APEX_OK);

  pthread_t canceller, remover;
  assert_int_equal(pthread_create(&canceller, NULL, cancel_thread, tok), 0);
  sem_wait_all(&b.started); /* the callback is now running, blocked */
  assert_int_equal(pthread_create(&remover, NULL, remove_thread, &r), 0);
  /* Awaits the remover asleep in its wait (or back, which is the bug this
   * catches): a remove that does not wait for the running callback would
   * have returned by then. */
  int64_t until = now_ms() + 10000;
  while (now_ms() < until && !atomic_load(&r.returned) &&
         !(atomic_load(&r.tid) && thread_state(atomic_load(&r.tid)) == 'S'))
    sched_yield();
  assert_true(atomic_load(&r.tid) != 0);
  assert_int_equal(thread_state(atomic_load(&r.tid)), 'S');
  assert_int_equal(atomic_load(&r.returned), 0);
  assert_int_equal(sem_post(&b.release), 0);
  assert_int_equal(pthread_join(remover, NULL), 0);
  assert_int_equal(pthread_join(canceller, NULL), 0);

  assert_int_equal(r.rc, APEX_E_ALREADY);
  assert_int_equal(r.finished_when_returned, 1);
  sem_destroy(&b.started);
  sem_destroy(&b.release);
  apex_token_unref(tok);
}

typedef struct {
  apex_token_t *other;
  apex_token_t *self_ref;
} chain_t;

static void cancel_other_and_unref_cb(apex_token_t *tok, const char *reason, void *user) {
  chain_t *c = user;
  assert_int_equal(apex_token_cancel(c->other, reason), APEX_OK);
  assert_int_equal(apex_token_cancel(tok, "again"), APEX_E_ALREADY);
  apex_token_unref(c->self_ref); /* the caller's only reference */
}

static void test_callback_may_cancel_and_drop_last_reference(void **st) {
  apex_token_t *tok = new_token(), *other = new_token();
  chain_t c = {other, tok};
  assert_int_equal(apex_token_on_cancel(tok, cancel_other_and_unref_cb, &c, NULL), APEX_OK);
  assert_int_equal(apex_token_cancel(tok, "chain"), APEX_OK);
  assert_string_equal(apex_token_reason(other), "chain");
  apex_token_unref(other);
}

/* ------------------------------------------------------------ fd, wait */

static void test_fd_becomes_readable_on_cancel(void **st) {
  apex_token_t *tok = new_token();
  int fd = apex_token_fd(tok);
  assert_true(fd >= 0);
  assert_int_equal(apex_token_fd(tok), fd);
  assert_int_equal(poll_now(fd), 0);
  assert_int_equal(apex_token_cancel(tok, NULL), APEX_OK);
  assert_int_equal(poll_now(fd), 1);
  apex_token_unref(tok);
}

static void test_fd_is_readable_at_once_if_already_cancelled(void **st) {
  apex_token_t *tok = new_token();
  assert_int_equal(apex_token_cancel(tok, NULL), APEX_OK);
  int fd = apex_token_fd(tok);
  assert_true(fd >= 0);
  assert_int_equal(poll_now(fd), 1);
  apex_token_unref(tok);
}

static void test_fd_wakes_a_blocked_poll(void **st) {
  apex_token_t *tok = new_token();
  int fd = apex_token_fd(tok);
  assert_true(fd >= 0);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, cancel_thread, tok), 0);
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  int n;
  do {
    n = poll(&pfd, 1, -1);
  } while (n < 0 && errno == EINTR);
  assert_int_equal(n, 1);
  assert_true(pfd.revents & POLLIN);
  assert_int_equal(pthread_join(t, NULL), 0);
  apex_token_unref(tok);
}

static void test_wait_returns_cancelled_when_cancelled_from_another_thread(void **st) {
  apex_token_t *tok = new_token();
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, cancel_thread, tok), 0);
  assert_int_equal(apex_token_wait(tok, -1), APEX_E_CANCELLED);
  assert_int_equal(pthread_join(t, NULL), 0);
  assert_string_equal(apex_token_reason(tok), "from thread");
  apex_token_unref(tok);
}

static void test_wait_with_timeout_returns_cancelled_when_cancelled(void **st) {
  apex_token_t *tok = new_token();
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, cancel_thread, tok), 0);
  /* Far longer than any scheduling delay; returns as soon as cancelled. */
  assert_int_equal(apex_token_wait(tok, 600000), APEX_E_CANCELLED);
  assert_int_equal(pthread_join(t, NULL), 0);
  apex_token_unref(tok);
}

static void test_wait_returns_ok_after_its_timeout(void **st) {
  apex_token_t *tok = new_token();
  int64_t start = now_ms();
  assert_int_equal(apex_token_wait(tok, 60), APEX_OK);
  assert_true(now_ms() - start >= 60);
  apex_token_unref(tok);
}

static void test_wait_zero_polls(void **st) {
  apex_token_t *tok = new_token();
  assert_int_equal(apex_token_wait(tok, 0), APEX_OK);
  assert_int_equal(apex_token_cancel(tok, NULL), APEX_OK);
  assert_int_equal(apex_token_wait(tok, 0), APEX_E_CANCELLED);
  assert_int_equal(apex_token_wait(tok, -1), APEX_E_CANCELLED);
  apex_token_unref(tok);
}

/* -------------------------------------------------------- parent/child */

static void test_child_is_cancelled_with_reason_parent(void **st) {
  apex_token_t *parent = new_token();
  apex_token_t *child = new_child(parent);
  apex_token_t *grandchild = new_child(child);
  counter_t c = {0};
  assert_int_equal(apex_token_on_cancel(grandchild, count_cb, &c, NULL), APEX_OK);
  int fd = apex_token_fd(child);
  assert_true(fd >= 0);
  assert_int_equal(apex_token_is_cancelled(child), 0);
  assert_int_equal(apex_token_cancel(parent, "shutdown"), APEX_OK);
  assert_int_equal(apex_token_is_cancelled(child), 1);
  assert_string_equal(apex_token_reason(child), "parent");
  assert_string_equal(apex_token_reason(grandchild), "parent");
  assert_int_equal(atomic_load(&c.runs), 1);
  assert_string_equal(c.reason, "parent");
  assert_int_equal(poll_now(fd), 1);
  apex_token_unref(grandchild);
  apex_token_unref(child);
  apex_token_unref(parent);
}

static void test_child_of_cancelled_parent_is_born_cancelled(void **st) {
  apex_token_t *parent = new_token();
  assert_int_equal(apex_token_cancel(parent, "timeout"), APEX_OK);
  apex_token_t *child = new_child(parent);
  assert_int_equal(apex_token_is_cancelled(child), 1);
  assert_string_equal(apex_token_reason(child), "parent");
  assert_int_equal(apex_token_cancel(child, "user"), APEX_E_ALREADY);
  apex_token_unref(child);
  apex_token_unref(parent);
}

static void test_cancelling_child_does_not_cancel_parent(void **st) {
  apex_token_t *parent = new_token();
  apex_token_t *child = new_child(parent);
  apex_token_t *sibling = new_child(parent);
  assert_int_equal(apex_token_cancel(child, "mine"), APEX_OK);
  assert_int_equal(apex_token_is_cancelled(parent), 0);
  assert_int_equal(apex_token_is_cancelled(sibling), 0);
  /* The child's own reason wins over the parent's later one. */
  assert_int_equal(apex_token_cancel(parent, NULL), APEX_OK);
  assert_string_equal(apex_token_reason(child), "mine");
  assert_string_equal(apex_token_reason(sibling), "parent");
  apex_token_unref(child);
  apex_token_unref(sibling);
  apex_token_unref(parent);
}

static void test_unref_child_before_parent_is_clean(void **st) {
  apex_token_t *parent = new_token();
  apex_token_t *child = new_child(parent);
  apex_token_t *kept = new_child(parent);
  apex_token_unref(child); /* unlinks itself: cancel must not touch it */
  assert_int_equal(apex_token_cancel(parent, NULL), APEX_OK);
  assert_string_equal(apex_token_reason(kept), "parent");
  apex_token_unref(kept);
  apex_token_unref(parent);
}

static void test_unref_parent_before_child_is_clean(void **st) {
  apex_token_t *parent = new_token();
  apex_token_t *child = new_child(parent);
  apex_token_unref(parent); /* the child keeps it alive */
  assert_int_equal(apex_token_cancel(child, "own"), APEX_OK);
  assert_string_equal(apex_token_reason(child), "own");
  apex_token_unref(child); /* frees both; ASan reports a leak otherwise */
}

/* Deep enough that recursion per level would overflow an 8 MiB stack. */
static void test_deep_chain_cancels_and_frees_without_recursion(void **st) {
  enum { DEPTH = 200000 };
  apex_token_t *root = new_token();
  apex_token_t *leaf = apex_token_ref(root);
  for (int i = 0; i < DEPTH; i++) {
    apex_token_t *c = new_child(leaf);
    apex_token_unref(leaf); /* kept alive by c's link */
    leaf = c;
  }
  assert_int_equal(apex_token_cancel(root, "deep"), APEX_OK);
  assert_string_equal(apex_token_reason(leaf), "parent");
  apex_token_unref(root);
  apex_token_unref(leaf); /* frees the whole chain */
}

/* -------------------------------------------------------------- stress */

enum { STRESS_THREADS = 8, STRESS_ITERS = 3000, STRESS_SLOTS = 6 };

typedef struct {
  apex_token_t *tok; /* a reference held by the record */
  uint64_t id;
  atomic_int runs;
  bool remove_tried;
  bool removed;
} stress_rec_t;

typedef struct {
  stress_rec_t **recs;
  size_t n, cap;
  unsigned seed;
  int failures;
} stress_thread_t;

static pthread_mutex_t slots_mu = PTHREAD_MUTEX_INITIALIZER;
static apex_token_t *slots[STRESS_SLOTS];
static atomic_int stress_double_runs;

static void stress_cb(apex_token_t *tok, const char *reason, void *user) {
  stress_rec_t *r = user;
  if (!reason || tok != r->tok) atomic_fetch_add(&stress_double_runs, 1);
  if (atomic_fetch_add(&r->runs, 1) != 0) atomic_fetch_add(&stress_double_runs, 1);
}

static apex_token_t *slot_get(unsigned i) {
  pthread_mutex_lock(&slots_mu);
  apex_token_t *t = apex_token_ref(slots[i]);
  pthread_mutex_unlock(&slots_mu);
  return t;
}

static void slot_put(unsigned i, apex_token_t *t) {
  pthread_mutex_lock(&slots_mu);
  apex_token_t *old = slots[i];
  slots[i] = t;
  pthread_mutex_unlock(&slots_mu);
  apex_token_unref(old); /* may be the final unref, racing other threads */
}

static void *stress_thread(void *arg) {
  stress_thread_t *th = arg;
  for (int i = 0; i < STRESS_ITERS; i++) {
    unsigned op = (unsigned)rand_r(&th->seed) % 100;
    apex_token_t *t = slot_get((unsigned)rand_r(&th->seed) % STRESS_SLOTS);
    if (op < 8) {
      apex_status_t rc = apex_token_cancel(t, (op & 1) ? "stress" : NULL);
      if (rc != APEX_OK && rc != APEX_E_ALREADY) th->failures++;
    } else if (op < 50) {
      stress_rec_t *r = calloc(1, sizeof *r);
      if (!r || th->n == th->cap) {
        free(r);
        th->failures++;
      } else {
        r->tok = apex_token_ref(t);
        atomic_init(&r->runs, 0);
        th->recs[th->n++] = r;
        if (apex_token_on_cancel(t, stress_cb, r, &r->id) != APEX_OK) th->failures++;
        if (r->id == 0 && atomic_load(&r->runs) != 1) th->failures++;
      }
    } else if (op < 70) {
      if (th->n > 0) {
        stress_rec_t *r = th->recs[(unsigned)rand_r(&th->seed) % th->n];
        if (!r->remove_tried) {
          r->remove_tried = true;
          apex_status_t rc = apex_token_remove_callback(r->tok, r->id);
          if (rc == APEX_OK)
            r->removed = true;
          else if (rc != APEX_E_ALREADY || atomic_load(&r->runs) != 1)
            th->failures++; /* ALREADY: it must have finished running */
        }
      }
    } else if (op < 85) {
      apex_token_t *c = NULL;
      if (apex_token_new_child(t, &c) != APEX_OK)
        th->failures++;
      else
        slot_put((unsigned)rand_r(&th->seed) % STRESS_SLOTS, c);
    } else {
      apex_token_t *n = NULL;
      if (apex_token_new(&n) != APEX_OK)
        th->failures++;
      else
        slot_put((unsigned)rand_r(&th->seed) % STRESS_SLOTS, n);
    }
    apex_token_unref(t);
  }
  return NULL;
}

static void test_stress_concurrent_cancel_register_remove_child_unref(void **st) {
  for (unsigned i = 0; i < STRESS_SLOTS; i++) slots[i] = new_token();
  atomic_store(&stress_double_runs, 0);
  stress_thread_t th[STRESS_THREADS];
  pthread_t tid[STRESS_THREADS];
  for (unsigned i = 0; i < STRESS_THREADS; i++) {
    th[i] = (stress_thread_t){.cap = STRESS_ITERS, .seed = 1234 + i};
    th[i].recs = calloc(STRESS_ITERS, sizeof *th[i].recs);
    assert_non_null(th[i].recs);
    assert_int_equal(pthread_create(&tid[i], NULL, stress_thread, &th[i]), 0);
  }
  for (unsigned i = 0; i < STRESS_THREADS; i++) assert_int_equal(pthread_join(tid[i], NULL), 0);

  size_t total = 0, removed = 0;
  for (unsigned i = 0; i < STRESS_THREADS; i++) {
    assert_int_equal(th[i].failures, 0);
    for (size_t k = 0; k < th[i].n; k++) {
      stress_rec_t *r = th[i].recs[k];
      /* Everything not removed must run once the token is cancelled. */
      apex_status_t rc = apex_token_cancel(r->tok, "final");
      assert_true(rc == APEX_OK || rc == APEX_E_ALREADY);
      assert_int_equal(atomic_load(&r->runs), r->removed ? 0 : 1);
      total++;
      removed += r->removed;
      apex_token_unref(r->tok);
      free(r);
    }
    free(th[i].recs);
  }
  assert_int_equal(atomic_load(&stress_double_runs), 0);
  assert_true(total > 0);
  assert_true(removed > 0);
  for (unsigned i = 0; i < STRESS_SLOTS; i++) slot_put(i, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_new_token_is_not_cancelled),
      cmocka_unit_test(test_cancel_sets_flag_and_reason),
      cmocka_unit_test(test_cancel_with_null_reason_means_user),
      cmocka_unit_test(test_second_cancel_returns_already_and_keeps_first_reason),
      cmocka_unit_test(test_cancel_copies_reason),
      cmocka_unit_test(test_null_arguments_are_rejected),
      cmocka_unit_test(test_ref_keeps_token_alive),
      cmocka_unit_test(test_callback_runs_exactly_once_with_reason),
      cmocka_unit_test(test_callback_ids_are_distinct_and_nonzero),
      cmocka_unit_test(test_callback_registered_after_cancel_runs_at_once_with_id_0),
      cmocka_unit_test(test_remove_before_cancel_succeeds_and_callback_never_runs),
      cmocka_unit_test(test_remove_after_run_returns_already),
      cmocka_unit_test(test_remove_of_zero_or_unknown_id_returns_already),
      cmocka_unit_test(test_remove_from_inside_own_callback_does_not_deadlock),
      cmocka_unit_test(test_callback_can_remove_a_later_pending_callback),
      cmocka_unit_test(test_remove_waits_for_callback_running_on_another_thread),
      cmocka_unit_test(test_callback_may_cancel_and_drop_last_reference),
      cmocka_unit_test(test_fd_becomes_readable_on_cancel),
      cmocka_unit_test(test_fd_is_readable_at_once_if_already_cancelled),
      cmocka_unit_test(test_fd_wakes_a_blocked_poll),
      cmocka_unit_test(test_wait_returns_cancelled_when_cancelled_from_another_thread),
      cmocka_unit_test(test_wait_with_timeout_returns_cancelled_when_cancelled),
      cmocka_unit_test(test_wait_returns_ok_after_its_timeout),
      cmocka_unit_test(test_wait_zero_polls),
      cmocka_unit_test(test_child_is_cancelled_with_reason_parent),
      cmocka_unit_test(test_child_of_cancelled_parent_is_born_cancelled),
      cmocka_unit_test(test_cancelling_child_does_not_cancel_parent),
      cmocka_unit_test(test_unref_child_before_parent_is_clean),
      cmocka_unit_test(test_unref_parent_before_child_is_clean),
      cmocka_unit_test(test_deep_chain_cancels_and_frees_without_recursion),
      cmocka_unit_test(test_stress_concurrent_cancel_register_remove_child_unref),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
