/* Allocation-failure injection for the core objects, in the
 * manner of curl's torture tests: for N = 1, 2, 3, ... the Nth allocation
 * made by the call under test fails, and the test checks that the call
 * fails with its documented code, leaks nothing and leaves what it was
 * given usable; the loop ends at the first N the call gets through without
 * reaching, where it must succeed (N = infinity). Each test also asserts
 * that some allocation did fail, so a call that stops allocating (or an
 * interposition that stops working) fails the test instead of passing
 * vacuously. A failure the call absorbs (glibc's vasprintf shrinking its
 * buffer, ld.so inside dlopen) may still yield success; the loop goes on.
 * apex_manager_new runs each N in a forked child, because libuv aborts on
 * some allocation failures (on_child_abort below: only inside its loop setup).
 *
 * How: this program defines malloc, calloc, realloc, free, strdup, strndup
 * and posix_memalign itself. The executable's definitions win over every
 * shared object's (libc's own internal allocations, jansson, libuv and
 * ld.so's thread setup included), so no link flag is needed. They forward
 * to glibc's __libc_* entry points, or, in sanitizer builds, to the
 * sanitizer's __interceptor_* entry points, so ASan still tracks (and LSan
 * still leak-checks) every block and TSan still sees every allocation.
 * eventfd and pthread_create are wrapped the same way (forwarded through
 * dlsym(RTLD_NEXT)), with a separate countdown, to make "a system resource
 * could not be had" (APEX_E_IO) happen on demand too.
 *
 * Threads: the manager runs threads that allocate on their own schedule, so
 * a countdown is armed for the test thread only (a thread-local flag),
 * around the one call under test: which allocation fails is deterministic.
 * The countdowns and counters are atomics anyway, since every thread passes
 * through the wrappers.
 *
 * Leaks: besides ASan's leak check at exit, the wrappers count live blocks,
 * so the plain build also catches a leak, as a nonzero difference in that
 * count across one iteration. The manager cases warm up first (glibc keeps
 * the thread-control blocks of exited threads in a cache) and compare
 * against zero after that. */
#include <dlfcn.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <uv.h>

#include "apex/apex.h"
#include "core/error.h"
#include "core/progress_internal.h"

/* No call under test makes anywhere near this many allocations; reaching it
 * means the loop never saw a run without a failure. */
#define MAX_N 5000

/* ---------------------------------------------------- the interposition */

/* The wrappers run before the sanitizer runtime has set up its shadow
 * memory (it allocates while initialising), so they must not be
 * instrumented. */
#if defined(__SANITIZE_ADDRESS__)
#define NO_SANITIZE __attribute__((no_sanitize_address))
#elif defined(__SANITIZE_THREAD__)
#define NO_SANITIZE __attribute__((no_sanitize_thread))
#else
#define NO_SANITIZE
#endif

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
extern void *__interceptor_malloc(size_t n);
extern void *__interceptor_calloc(size_t k, size_t n);
extern void *__interceptor_realloc(void *p, size_t n);
extern void __interceptor_free(void *p);
extern int __interceptor_posix_memalign(void **out, size_t align, size_t n);
#define REAL_MALLOC __interceptor_malloc
#define REAL_CALLOC __interceptor_calloc
#define REAL_REALLOC __interceptor_realloc
#define REAL_FREE __interceptor_free
NO_SANITIZE static int real_posix_memalign(void **out, size_t align, size_t n) {
  return __interceptor_posix_memalign(out, align, n);
}
#else
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t k, size_t n);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t n);
#define REAL_MALLOC __libc_malloc
#define REAL_CALLOC __libc_calloc
#define REAL_REALLOC __libc_realloc
#define REAL_FREE __libc_free
NO_SANITIZE static int real_posix_memalign(void **out, size_t align, size_t n) {
  if (align < sizeof(void *) || (align & (align - 1)) != 0) return EINVAL;
  void *p = __libc_memalign(align, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
#endif

/* The build hides symbols by default; these must be seen by every shared
 * object (libc, jansson, libuv, ld.so) to replace theirs. */
#define INTERPOSE __attribute__((visibility("default"))) NO_SANITIZE

/* 0: disarmed. k > 0: the k-th wrapped call from now fails (once). */
static atomic_long g_mem_countdown;
static atomic_long g_sys_countdown;
static atomic_int g_mem_hits, g_sys_hits;
static atomic_long g_live; /* blocks allocated and not yet freed */
static _Thread_local int tl_armed;

NO_SANITIZE static int take_countdown(atomic_long *c, atomic_int *hits) {
  if (!tl_armed) return 0;
  long n = atomic_load(c);
  while (n > 0) {
    if (atomic_compare_exchange_weak(c, &n, n - 1)) {
      if (n != 1) return 0;
      atomic_fetch_add(hits, 1);
      return 1;
    }
  }
  return 0;
}

NO_SANITIZE static int mem_should_fail(void) {
  return take_countdown(&g_mem_countdown, &g_mem_hits);
}
NO_SANITIZE static int sys_should_fail(void) {
  return take_countdown(&g_sys_countdown, &g_sys_hits);
}

INTERPOSE void *malloc(size_t n) {
  if (mem_should_fail()) {
    errno = ENOMEM;
    return NULL;
  }
  void *p = REAL_MALLOC(n);
  if (p) atomic_fetch_add_explicit(&g_live, 1, memory_order_relaxed);
  return p;
}

INTERPOSE void *calloc(size_t k, size_t n) {
  if (mem_should_fail()) {
    errno = ENOMEM;
    return NULL;
  }
  void *p = REAL_CALLOC(k, n);
  if (p) atomic_fetch_add_explicit(&g_live, 1, memory_order_relaxed);
  return p;
}

INTERPOSE void *realloc(void *p, size_t n) {
  if (p && n == 0) { /* glibc frees here and returns NULL */
    atomic_fetch_sub_explicit(&g_live, 1, memory_order_relaxed);
    return REAL_REALLOC(p, n);
  }
  if (mem_should_fail()) {
    errno = ENOMEM;
    return NULL;
  }
  void *q = REAL_REALLOC(p, n);
  if (q && !p) atomic_fetch_add_explicit(&g_live, 1, memory_order_relaxed);
  return q;
}

INTERPOSE void free(void *p) {
  if (!p) return;
  atomic_fetch_sub_explicit(&g_live, 1, memory_order_relaxed);
  REAL_FREE(p);
}

INTERPOSE int posix_memalign(void **out, size_t align, size_t n) {
  if (mem_should_fail()) return ENOMEM;
  int rc = real_posix_memalign(out, align, n);
  if (rc == 0) atomic_fetch_add_explicit(&g_live, 1, memory_order_relaxed);
  return rc;
}

/* The sanitizers' own strdup would allocate behind the wrappers' back. */
#undef strdup
#undef strndup
INTERPOSE char *strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

INTERPOSE char *strndup(const char *s, size_t max) {
  size_t n = strnlen(s, max);
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

typedef int (*eventfd_fn)(unsigned, int);
typedef int (*pthread_create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

/* Looked up once, before any test: dlsym allocates (and frees) on its
 * first calls, which would blur the first measured iteration. */
static eventfd_fn real_eventfd;
static pthread_create_fn real_pthread_create;

static void resolve_real_functions(void) {
  real_eventfd = (eventfd_fn)dlsym(RTLD_NEXT, "eventfd");
  real_pthread_create = (pthread_create_fn)dlsym(RTLD_NEXT, "pthread_create");
  assert_non_null(real_eventfd);
  assert_non_null(real_pthread_create);
}

INTERPOSE int eventfd(unsigned initval, int flags) {
  if (sys_should_fail()) {
    errno = EMFILE;
    return -1;
  }
  return real_eventfd(initval, flags);
}

INTERPOSE int pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *),
                             void *arg) {
  if (sys_should_fail()) return EAGAIN;
  return real_pthread_create(th, attr, fn, arg);
}

/* Arms the Nth allocation (or system call) on this thread to fail. */
static void arm_mem(long n) {
  atomic_store(&g_mem_hits, 0);
  atomic_store(&g_mem_countdown, n);
  tl_armed = 1;
}

static void arm_sys(long n) {
  atomic_store(&g_sys_hits, 0);
  atomic_store(&g_sys_countdown, n);
  tl_armed = 1;
}

/* Returns: 1 if the armed failure happened. */
static int disarm(void) {
  tl_armed = 0;
  atomic_store(&g_mem_countdown, 0);
  atomic_store(&g_sys_countdown, 0);
  return atomic_exchange(&g_mem_hits, 0) + atomic_exchange(&g_sys_hits, 0) > 0;
}

static long live_blocks(void) { return atomic_load(&g_live); }

/* For the longer loops: notes every N that leaked and goes on, so one run
 * reports them all. */
typedef struct {
  char text[512];
  size_t len;
} leak_ledger_t;

static void note_leak(leak_ledger_t *lk, long before, long n) {
  long delta = live_blocks() - before;
  if (delta == 0 || lk->len >= sizeof lk->text - 1) return;
  int w = snprintf(lk->text + lk->len, sizeof lk->text - lk->len, "%sN=%ld: %+ld",
                   lk->len ? ", " : "", n, delta);
  if (w > 0) lk->len += (size_t)w;
  if (lk->len >= sizeof lk->text) lk->len = sizeof lk->text - 1;
}

#define assert_no_leaks(lk, what)                                                             \
  do {                                                                                        \
    if ((lk)->len) fail_msg("%s leaked (live blocks after cleanup): %s", (what), (lk)->text); \
  } while (0)

/* Fails naming the injection point, so a report says which N leaked. */
#define assert_no_leak(before, n)                                                      \
  do {                                                                                 \
    long delta_ = live_blocks() - (before);                                            \
    if (delta_ != 0) fail_msg("N=%ld: %+ld live block(s) after cleanup", (n), delta_); \
  } while (0)

/* ----------------------------------------------------------- helpers */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int thread_count(void) {
  DIR *d = opendir("/proc/self/task");
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* Waits (up to 5 s) for the thread count to come back to want: a joined
 * thread may linger in /proc for a moment after pthread_join returns. */
static int threads_settle(int want) {
  int64_t until = now_ms() + 5000;
  int n;
  while ((n = thread_count()) != want && now_ms() < until) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  return n;
}

static void quiet_log(int level, const char *msg, void *user) {
  (void)level;
  (void)msg;
  (void)user;
}

static apex_manager_config_t small_config(void) {
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = 2;
  cfg.log = quiet_log;
  return cfg;
}

static apex_manager_t *new_manager(void) {
  apex_manager_config_t cfg = small_config();
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  assert_non_null(m);
  return m;
}

static apex_manager_t *new_manager_with_testkit(void) {
  apex_manager_t *m = new_manager();
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_load(m, APEX_TEST_PLUGIN_DIR "/testkit.so", &err), APEX_OK);
  assert_null(err);
  return m;
}

typedef struct {
  atomic_int runs;
} cb_count_t;

static void count_cb(apex_token_t *tok, const char *reason, void *user) {
  (void)tok;
  (void)reason;
  cb_count_t *c = user;
  atomic_fetch_add(&c->runs, 1);
}

static int fd_readable(int fd) {
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  int n;
  do {
    n = poll(&pfd, 1, 0);
  } while (n < 0 && errno == EINTR);
  return n == 1 && (pfd.revents & POLLIN);
}

/* ------------------------------------------------------------ tokens */

static void test_token_new_fails_nomem_without_leak(void **st) {
  (void)st;
  long n;
  for (n = 1; n < MAX_N; n++) {
    long live = live_blocks();
    apex_token_t *tok = (apex_token_t *)&n; /* must be overwritten */
    arm_mem(n);
    apex_status_t rc = apex_token_new(&tok);
    int hit = disarm();
    if (!hit) {
      assert_int_equal(rc, APEX_OK);
      assert_non_null(tok);
      assert_int_equal(apex_token_cancel(tok, "done"), APEX_OK);
      assert_string_equal(apex_token_reason(tok), "done");
      apex_token_unref(tok);
      assert_no_leak(live, n);
      break;
    }
    assert_int_equal(rc, APEX_E_NOMEM);
    assert_null(tok);
    assert_no_leak(live, n);
  }
  assert_true(n > 1);
  assert_true(n < MAX_N);
}

static void test_token_new_child_fails_nomem_and_parent_stays_usable(void **st) {
  (void)st;
  long n;
  for (n = 1; n < MAX_N; n++) {
    long live = live_blocks();
    apex_token_t *parent = NULL;
    assert_int_equal(apex_token_new(&parent), APEX_OK);
    apex_token_t *child = (apex_token_t *)&n;
    arm_mem(n);
    apex_status_t rc = apex_token_new_child(parent, &child);
    int hit = disarm();
    if (hit) {
      assert_int_equal(rc, APEX_E_NOMEM);
      assert_null(child);
      /* The parent still takes children, and cancels them. */
      assert_int_equal(apex_token_new_child(parent, &child), APEX_OK);
    } else {
      assert_int_equal(rc, APEX_OK);
    }
    assert_non_null(child);
    assert_int_equal(apex_token_cancel(parent, "stop"), APEX_OK);
    assert_string_equal(apex_token_reason(child), "parent");
    apex_token_unref(child);
    apex_token_unref(parent);
    assert_no_leak(live, n);
    if (!hit) break;
  }
  assert_true(n > 1);
  assert_true(n < MAX_N);
}

static void test_token_on_cancel_fails_nomem_and_callback_never_runs(void **st) {
  (void)st;
  long n;
  for (n = 1; n < MAX_N; n++) {
    long live = live_blocks();
    apex_token_t *tok = NULL;
    assert_int_equal(apex_token_new(&tok), APEX_OK);
    /* The token's own node holds one callback without an allocation (a
     * child task's watch of its token, a wait's): only a second one can
     * fail. */
    cb_count_t first = {0};
    uint64_t first_id = 0;
    arm_mem(1);
    assert_int_equal(apex_token_on_cancel(tok, count_cb, &first, &first_id), APEX_OK);
    assert_false(disarm());
    assert_int_not_equal(first_id, 0);
    cb_count_t c = {0};
    uint64_t id = 99;
    arm_mem(n);
    apex_status_t rc = apex_token_on_cancel(tok, count_cb, &c, &id);
    int hit = disarm();
    /* Still registrable after a failure. */
    cb_count_t later = {0};
    uint64_t later_id = 0;
    assert_int_equal(apex_token_on_cancel(tok, count_cb, &later, &later_id), APEX_OK);
    assert_int_equal(apex_token_cancel(tok, NULL), APEX_OK);
    assert_int_equal(atomic_load(&later.runs), 1);
    assert_int_equal(atomic_load(&first.runs), 1);
    if (hit) {
      assert_int_equal(rc, APEX_E_NOMEM);
      assert_int_equal(id, 0);
      assert_int_equal(atomic_load(&c.runs), 0);
    } else {
      assert_int_equal(rc, APEX_OK);
      assert_int_not_equal(id, 0);
      assert_int_equal(atomic_load(&c.runs), 1);
    }
    apex_token_unref(tok);
    assert_no_leak(live, n);
    if (!hit) break;
  }
  assert_true(n > 1);
  assert_true(n < MAX_N);
}

/* The fd allocates no memory; what can fail is the eventfd itself. */
static void test_token_fd_fails_io_and_next_call_makes_it(void **st) {
  (void)st;
  long n;
  for (n = 1; n < MAX_N; n++) {
    long live = live_blocks();
    apex_token_t *tok = NULL;
    assert_int_equal(apex_token_new(&tok), APEX_OK);
    arm_sys(n);
    int fd = apex_token_fd(tok);
    int hit = disarm();
    if (hit) {
      assert_int_equal(fd, APEX_E_IO);
      fd = apex_token_fd(tok);
    }
    assert_true(fd >= 0);
    assert_int_equal(fd_readable(fd), 0);
    assert_int_equal(apex_token_cancel(tok, NULL), APEX_OK);
    assert_int_equal(fd_readable(fd), 1);
    apex_token_unref(tok);
    assert_no_leak(live, n);
    if (!hit) break;
  }
  assert_true(n > 1);
  assert_true(n < MAX_N);
}

/* A reason too long for the inline buffer needs a heap copy; without one
 * the cancel still happens, with the reason truncated. */
static void test_token_cancel_with_long_reason_never_fails(void **st) {
  (void)st;
  const char *reason = "a reason much longer than the forty-eight bytes kept inline in the token";
  long n;
  for (n = 1; n < MAX_N; n++) {
    long live = live_blocks();
    apex_token_t *tok = NULL;
    assert_int_equal(apex_token_new(&tok), APEX_OK);
    arm_mem(n);
    apex_status_t rc = apex_token_cancel(tok, reason);
    int hit = disarm();
    assert_int_equal(rc, APEX_OK);
    assert_int_equal(apex_token_is_cancelled(tok), 1);
    if (hit)
      assert_memory_equal(apex_token_reason(tok), reason, strlen(apex_token_reason(tok)));
    else
      assert_string_equal(apex_token_reason(tok), reason);
    apex_token_unref(tok);
    assert_no_leak(live, n);
    if (!hit) break;
  }
  assert_true(n > 1);
  assert_true(n < MAX_N);
}

/* ------------------------------------------------------------ errors */

static void test_error_new_returns_static_nomem_error(void **st) {
  (void)st;
  long n;
  apex_error_t *seen_nomem = NULL;
  for (n = 1; n < MAX_N; n++) {
    long live = live_blocks();
    /* The cause is taken by error_new, failure or not. */
    apex_error_t *cause = apex__error_new(APEX_E_IO, NULL, NULL, "cause %d", 1);
    assert_int_equal(apex_error_code(cause), APEX_E_IO);
    apex__where_t w = {"plug", "act", 7, 2};
    arm_mem(n);
    apex_error_t *e = apex__error_new(APEX_E_TIMEOUT, &w, cause, "timed out after %d s", 30);
    int hit = disarm();
    assert_non_null(e);
    /* glibc's vasprintf shrinks its buffer with a realloc whose failure it
     * absorbs: a hit there still yields a full error. */
    if (hit && apex_error_code(e) != APEX_E_TIMEOUT) {
      assert_int_equal(apex_error_code(e), APEX_E_NOMEM);
      assert_string_equal(apex_error_message(e), "out of memory");
      assert_null(apex_error_cause(e));
      /* One shared object: ref and unref leave it alone. */
      if (seen_nomem) assert_ptr_equal(e, seen_nomem);
      seen_nomem = e;
      assert_ptr_equal(apex_error_ref(e), e);
      apex_error_unref(e);
      apex_error_unref(e);
      apex_error_unref(e);
      assert_int_equal(apex_error_code(e), APEX_E_NOMEM);
      assert_no_leak(live, n);
      continue;
    }
    assert_int_equal(apex_error_code(e), APEX_E_TIMEOUT);
    assert_string_equal(apex_error_message(e), "timed out after 30 s");
    assert_string_equal(apex_error_plugin(e), "plug");
    assert_string_equal(apex_error_action(e), "act");
    assert_int_equal(apex_error_task_id(e), 7);
    assert_int_equal(apex_error_attempt(e), 2);
    assert_ptr_equal(apex_error_cause(e), cause);
    apex_error_unref(e);
    assert_no_leak(live, n);
    if (!hit) break;
  }
  /* One block holds the error and its strings: exactly one way to fail. */
  assert_int_equal(n, 2);
  assert_true(n < MAX_N);
}

static void test_error_to_json_fails_with_null(void **st) {
  (void)st;
  apex__where_t w = {"plug", "act", 7, 2};
  apex_error_t *e =
      apex__error_new(APEX_E_TIMEOUT, &w, apex__error_new(APEX_E_IO, NULL, NULL, "inner"), "outer");
  long n;
  for (n = 1; n < MAX_N; n++) {
    long live = live_blocks();
    arm_mem(n);
    json_t *j = apex_error_to_json(e);
    int hit = disarm();
    if (hit) {
      assert_null(j);
      assert_no_leak(live, n);
      continue;
    }
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "code")), "timeout");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "cause"), "message")),
                        "inner");
    json_decref(j);
    assert_no_leak(live, n);
    break;
  }
  apex_error_unref(e);
  assert_true(n > 1);
  assert_true(n < MAX_N);
}

/* ---------------------------------------------------------- progress */

static void progress_torture(int give_json) {
  long n;
  for (n = 1; n < MAX_N; n++) {
    long live = live_blocks();
    json_t *details = NULL, *subs = NULL;
    if (give_json) {
      details = json_pack("{s:i}", "bytes", 42);
      subs = json_pack("[{s:s, s:f}]", "name", "part", "percentage", 10.0);
      assert_non_null(details);
      assert_non_null(subs);
    }
    arm_mem(n);
    apex_progress_t *p = apex__progress_new(3, 12.5, "copying", "running", details, subs);
    int hit = disarm();
    if (hit) {
      assert_null(p);
      assert_no_leak(live, n); /* details and subs were taken */
      continue;
    }
    assert_non_null(p);
    assert_int_equal(apex_progress_seq(p), 3);
    assert_true(apex_progress_percentage(p) == 12.5);
    assert_string_equal(apex_progress_message(p), "copying");
    assert_string_equal(apex_progress_status(p), "running");
    assert_true(json_is_object(apex_progress_details(p)));
    assert_int_equal(json_array_size(apex_progress_sub_tasks(p)), give_json ? 1 : 0);
    apex_progress_unref(p);
    assert_no_leak(live, n);
    break;
  }
  assert_true(n > 1);
  assert_true(n < MAX_N);
}

static void test_progress_new_fails_null_and_frees_taken_json(void **st) {
  (void)st;
  progress_torture(1);
}

static void test_progress_new_fails_null_making_default_json(void **st) {
  (void)st;
  progress_torture(0);
}

/* ----------------------------------------------------------- manager */

/* Submits testkit.echo and checks it completes with its params echoed. */
static void submit_and_check(apex_manager_t *m, const apex_submit_opts_t *opts) {
  json_t *params = json_pack("{s:{s:[i,i,i], s:s}}", "value", "k", 1, 2, 3, "s", "text");
  assert_non_null(params);
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_submit(m, "testkit", "echo", params, opts, &t, &err), APEX_OK);
  assert_null(err);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_non_null(r);
  assert_true(json_equal(r, params));
  json_decref(r);
  apex_task_release(t);
  json_decref(params);
}

/* Managers up and down, so that what glibc and libuv keep for the process
 * is in place before anything is counted: the cache of exited threads'
 * control blocks, libuv's one-time setup, and ld.so's _dl_find_object
 * table, which grows (and is kept) on the second dlopen. */
static void warm_up(void) {
  for (int i = 0; i < 2; i++) {
    apex_manager_t *m = new_manager_with_testkit();
    submit_and_check(m, NULL);
    assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
  }
}

/* libuv aborts on allocation failure: at N=3, in both delivery modes,
 * apex_manager_new aborts the process inside libuv. apex__runtime_start
 * (src/exec/runtime.c) calls uv_loop_init, whose uv_signal_init ->
 * uv__io_start grows the watcher array with uv__reallocf and calls abort()
 * when that fails (libuv 1.44, src/unix/core.c maybe_resize); uv_async_init
 * and uv_poll_start go through the same uv__io_start. libuv cannot report
 * this failure, and apex_manager_new's header says so. Apex's own code must
 * never abort: an abort is tolerated only while the child is inside one of
 * those libuv calls (the wrappers below mark it), so an abort from Apex's
 * own code, or from libuv anywhere else, fails the test. */
static _Thread_local int tl_in_libuv_init;

#define LIBUV_WRAP(ret, name, params, args)                              \
  INTERPOSE ret name params {                                            \
    static ret(*real) params;                                            \
    if (!real) *(void **)&real = dlsym(RTLD_NEXT, #name);                \
    tl_in_libuv_init++;                                                  \
    ret rc = real args;                                                  \
    tl_in_libuv_init--;                                                  \
    return rc;                                                           \
  }
LIBUV_WRAP(int, uv_loop_init, (uv_loop_t * loop), (loop))
LIBUV_WRAP(int, uv_async_init, (uv_loop_t * loop, uv_async_t *a, uv_async_cb cb), (loop, a, cb))
LIBUV_WRAP(int, uv_poll_init, (uv_loop_t * loop, uv_poll_t *p, int fd), (loop, p, fd))
LIBUV_WRAP(int, uv_poll_start, (uv_poll_t * p, int events, uv_poll_cb cb), (p, events, cb))

/* In the child: an abort inside libuv's loop setup exits with
 * CHILD_LIBUV_ABORT; any other abort keeps its signal, which fails the
 * test. Only async-signal-safe calls. */
static void on_child_abort(int sig) {
  if (tl_in_libuv_init) _exit(4 /* CHILD_LIBUV_ABORT */);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* apex_manager_new runs each N in a child process: libuv aborts the
 * process when some allocations fail (see the note on the tests below), and
 * one abort must not take the rest of the run, or the other Ns, with it.
 * The child reports through its exit status and, for a failed check, a
 * message in shared memory; it uses no cmocka assertion (a failure would
 * unwind into a copy of the test runner). */
enum {
  CHILD_OK = 0,
  CHILD_CLEAN_FAILURE = 1,
  CHILD_ABSORBED = 2,
  CHILD_CHECK_FAILED = 3,
  CHILD_LIBUV_ABORT = 4 /* libuv aborted in its loop setup: tolerated */
};

typedef struct {
  char msg[256];
} child_report_t;

#define CHILD_CHECK(report, cond, ...)                           \
  do {                                                           \
    if (!(cond)) {                                               \
      snprintf((report)->msg, sizeof(report)->msg, __VA_ARGS__); \
      _exit(CHILD_CHECK_FAILED);                                 \
    }                                                            \
  } while (0)

static int thread_count_or_error(void) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

static _Noreturn void manager_new_child(long n, int sys, apex_delivery_t delivery,
                                        child_report_t *rep) {
  int threads = thread_count_or_error();
  long live = live_blocks();
  apex_manager_config_t cfg = small_config();
  cfg.delivery = delivery;
  apex_manager_t *m = (apex_manager_t *)&n;
  if (sys)
    arm_sys(n);
  else
    arm_mem(n);
  apex_status_t rc = apex_manager_new(&cfg, &m);
  int hit = disarm();
  int outcome;
  if (rc != APEX_OK) {
    CHILD_CHECK(rep, hit, "N=%ld: failed (%d) with nothing injected", n, rc);
    CHILD_CHECK(rep, rc == APEX_E_NOMEM || rc == APEX_E_IO, "N=%ld: rc %d, want NOMEM or IO", n,
                rc);
    CHILD_CHECK(rep, m == NULL, "N=%ld: *out not NULL after a failure", n);
    outcome = CHILD_CLEAN_FAILURE;
  } else {
    CHILD_CHECK(rep, m != NULL && m != (apex_manager_t *)&n, "N=%ld: OK but no manager", n);
    apex_stats_t s = APEX_STATS_INIT;
    CHILD_CHECK(rep, apex_manager_stats_v2(m, &s) == APEX_OK && s.workers == 2,
                "N=%ld: %llu workers, want 2", n, (unsigned long long)s.workers);
    CHILD_CHECK(rep, apex_manager_destroy(m, 1000) == APEX_OK, "N=%ld: destroy failed", n);
    outcome = hit ? CHILD_ABSORBED : CHILD_OK;
  }
  /* Threads started before a failure were stopped and joined. */
  int64_t until = now_ms() + 5000;
  int now;
  while ((now = thread_count_or_error()) != threads && now_ms() < until) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  CHILD_CHECK(rep, now == threads, "N=%ld: %d threads left, %d before", n, now, threads);
  long delta = live_blocks() - live;
  CHILD_CHECK(rep, delta == 0, "N=%ld: %+ld live block(s) after cleanup", n, delta);
  _exit(outcome);
}

static void manager_new_torture(int sys, apex_delivery_t delivery) {
  warm_up();
  child_report_t *rep =
      mmap(NULL, sizeof *rep, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  assert_true(rep != MAP_FAILED);
  char crashed[512] = "";
  size_t crashed_len = 0;
  int failures = 0, libuv_aborts = 0;
  long n;
  for (n = 1; n < MAX_N; n++) {
    memset(rep, 0, sizeof *rep);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      signal(SIGABRT, on_child_abort);
      manager_new_child(n, sys, delivery, rep);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) assert_int_equal(errno, EINTR);
    if (WIFSIGNALED(status)) { /* an abort outside libuv's loop setup, or a crash */
      crashed_len +=
          (size_t)snprintf(crashed + crashed_len, sizeof crashed - crashed_len,
                           "%sN=%ld (signal %d)", crashed_len ? ", " : "", n, WTERMSIG(status));
      if (crashed_len >= sizeof crashed) crashed_len = sizeof crashed - 1;
      continue;
    }
    assert_true(WIFEXITED(status));
    int outcome = WEXITSTATUS(status);
    if (outcome == CHILD_LIBUV_ABORT) {
      libuv_aborts++;
      continue;
    }
    if (outcome == CHILD_CHECK_FAILED) fail_msg("%s", rep->msg);
    if (outcome == CHILD_CLEAN_FAILURE) failures++;
    if (outcome == CHILD_OK) break;
    assert_true(outcome == CHILD_CLEAN_FAILURE || outcome == CHILD_ABSORBED);
  }
  munmap(rep, sizeof *rep);
  assert_true(n < MAX_N);
  if (crashed_len) fail_msg("apex_manager_new killed the process at %s", crashed);
  assert_true(failures > 0);
  /* The wrappers saw libuv's known abort (memory injection only): if none
   * happens the tolerance above is dead code, and this note says so. */
  if (!sys) print_message("manager_new torture: %d abort(s) inside libuv's loop setup\n", libuv_aborts);
}

static void test_manager_new_fails_nomem_without_leak_or_threads(void **st) {
  (void)st;
  manager_new_torture(0, APEX_DELIVER_LOOP);
}

static void test_manager_new_dispatch_fails_nomem_without_leak_or_threads(void **st) {
  (void)st;
  manager_new_torture(0, APEX_DELIVER_DISPATCH);
}

/* eventfd (dispatch mode) then the runtime thread, then each worker. */
static void test_manager_new_thread_or_fd_failure_tears_down(void **st) {
  (void)st;
  manager_new_torture(1, APEX_DELIVER_DISPATCH);
}

/* Found a leak once (every param default of testkit, in check_default in
 * src/plugin/loader.c: the parsed default was lost when json_object()
 * failed); keeps it fixed. */
static void test_manager_load_fails_cleanly_and_manager_stays_usable(void **st) {
  (void)st;
  warm_up();
  leak_ledger_t leaks = {0};
  long n;
  for (n = 1; n < MAX_N; n++) {
    int threads = thread_count();
    long live = live_blocks();
    apex_manager_t *m = new_manager();
    apex_error_t *err = NULL;
    arm_mem(n);
    apex_status_t rc = apex_manager_load(m, APEX_TEST_PLUGIN_DIR "/testkit.so", &err);
    int hit = disarm();
    if (rc != APEX_OK) { /* (a failure inside dlopen may be absorbed) */
      if (!hit) fail_msg("load failed (%d) with no failure injected", rc);
      if (rc != APEX_E_NOMEM) assert_int_equal(rc, APEX_E_PLUGIN_LOAD);
      assert_non_null(err);
      /* The error names the failure, or is the no-memory error itself. */
      if (apex_error_code(err) != APEX_E_NOMEM) assert_int_equal(apex_error_code(err), rc);
      apex_error_unref(err);
      err = NULL;
      assert_int_equal(apex_manager_plugin_count(m), 0);
      assert_null(apex_manager_plugin(m, "testkit"));
      /* A failed load leaves the manager as it was: loading works now. */
      assert_int_equal(apex_manager_load(m, APEX_TEST_PLUGIN_DIR "/testkit.so", &err), APEX_OK);
    } else {
      assert_int_equal(rc, APEX_OK);
    }
    assert_null(err);
    assert_int_equal(apex_manager_plugin_count(m), 1);
    json_t *result = NULL;
    assert_int_equal(apex_manager_execute(m, "testkit", "noop", NULL, NULL, &result, &err),
                     APEX_OK);
    assert_null(err);
    json_decref(result);
    assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
    assert_int_equal(threads_settle(threads), threads);
    note_leak(&leaks, live, n);
    if (!hit) break;
  }
  assert_true(n > 1);
  assert_true(n < MAX_N);
  assert_no_leaks(&leaks, "apex_manager_load");
}

static void submit_torture(int with_opts) {
  warm_up();
  leak_ledger_t leaks = {0};
  long n;
  for (n = 1; n < MAX_N; n++) {
    int threads = thread_count();
    long live = live_blocks();
    apex_manager_t *m = new_manager_with_testkit();
    apex_token_t *parent = NULL;
    apex_submit_opts_t opts;
    apex_submit_opts_init(&opts);
    if (with_opts) {
      assert_int_equal(apex_token_new(&parent), APEX_OK);
      opts.parent = parent;
      opts.timeout_s = 60; /* reserves a timer slot */
    }
    json_t *params = json_pack("{s:{s:[i,i,i], s:s}}", "value", "k", 1, 2, 3, "s", "text");
    assert_non_null(params);
    apex_task_t *t = (apex_task_t *)&n;
    apex_error_t *err = NULL;
    arm_mem(n);
    apex_status_t rc = apex_manager_submit(m, "testkit", "echo", params, &opts, &t, &err);
    int hit = disarm();
    if (rc != APEX_OK) {
      assert_true(hit);
      assert_int_equal(rc, APEX_E_NOMEM);
      assert_null(t);
      assert_non_null(err);
      assert_int_equal(apex_error_code(err), APEX_E_NOMEM);
      apex_error_unref(err);
    } else {
      /* A failure the submit absorbed (none should reach the task). */
      assert_null(err);
      assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
      assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
      json_t *r = apex_task_result(t);
      assert_true(json_equal(r, params));
      json_decref(r);
      apex_task_release(t);
    }
    json_decref(params);
    /* The manager takes the next submit as if nothing happened. */
    submit_and_check(m, &opts);
    assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
    apex_token_unref(parent);
    assert_int_equal(threads_settle(threads), threads);
    note_leak(&leaks, live, n);
    if (!hit) break;
  }
  assert_true(n > 1);
  assert_true(n < MAX_N);
  assert_no_leaks(&leaks, "apex_manager_submit");
}

static void test_manager_submit_fails_nomem_and_next_submit_completes(void **st) {
  (void)st;
  submit_torture(0);
}

static void test_manager_submit_with_parent_and_timeout_fails_nomem_cleanly(void **st) {
  (void)st;
  submit_torture(1);
}

int main(int argc, char **argv) {
  if (argc > 1) cmocka_set_test_filter(argv[1]);
  resolve_real_functions();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_token_new_fails_nomem_without_leak),
      cmocka_unit_test(test_token_new_child_fails_nomem_and_parent_stays_usable),
      cmocka_unit_test(test_token_on_cancel_fails_nomem_and_callback_never_runs),
      cmocka_unit_test(test_token_fd_fails_io_and_next_call_makes_it),
      cmocka_unit_test(test_token_cancel_with_long_reason_never_fails),
      cmocka_unit_test(test_error_new_returns_static_nomem_error),
      cmocka_unit_test(test_error_to_json_fails_with_null),
      cmocka_unit_test(test_progress_new_fails_null_and_frees_taken_json),
      cmocka_unit_test(test_progress_new_fails_null_making_default_json),
      cmocka_unit_test(test_manager_new_fails_nomem_without_leak_or_threads),
      cmocka_unit_test(test_manager_new_dispatch_fails_nomem_without_leak_or_threads),
      cmocka_unit_test(test_manager_new_thread_or_fd_failure_tears_down),
      cmocka_unit_test(test_manager_load_fails_cleanly_and_manager_stays_usable),
      cmocka_unit_test(test_manager_submit_fails_nomem_and_next_submit_completes),
      cmocka_unit_test(test_manager_submit_with_parent_and_timeout_fails_nomem_cleanly),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
