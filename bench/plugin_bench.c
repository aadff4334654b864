/* bench: the plugin the Apex benchmark peer loads (bench/README.md,
 * bench/bench_apex.c). It does as little as each workload allows, so what is
 * measured is Apex's own cost:
 *
 *   noop           blocking: returns APEX_OK.
 *   noop_mx        blocking: noop, counted as a one-mutex-per-metric
 *                  client would (peer apex_mutexmx; bench/README.md).
 *   stamp          blocking: succeeds with {"t": CLOCK_MONOTONIC ns} taken as
 *                  it starts (W9: when a task left the queue).
 *   noop_deferred  deferred: completes inside its own start (apex_ctx_complete
 *                  before returning APEX_PENDING, which task.c supports), so
 *                  it measures the deferred path without a thread of ours.
 *   wait           blocking: signals the host through the eventfd `ready_fd`
 *                  (if >= 0) that it is about to wait, then waits cancellably
 *                  without limit; ends APEX_E_CANCELLED (cancel or timeout).
 *                  With `cpu_fd` >= 0 it first adds the CPU it woke on, + 1,
 *                  to that eventfd (W3's BENCH_PLACEMENT split).
 *   flood          blocking: reports `n` progress updates as fast as it can,
 *                  the last at 100 %; result {"ns", "thread_cpu_ns",
 *                  "cpu_ns"}: its own wall time, its thread's CPU and the
 *                  process's CPU (getrusage) over the loop (W6).
 *   tree           blocking: `n` reports about a tree of `nodes` sub-tasks,
 *                  each changing one node (W6t); result as flood's. With
 *                  incremental = 0 every report is a full
 *                  apex_ctx_progress_update carrying the whole tree; with 1
 *                  it is one node's update (apex_ctx_progress_node, when
 *                  plugin.h defines APEX_HAVE_PROGRESS_NODE; without it the
 *                  task fails).
 *   pend_arm       blocking: makes the next `batch` pend starts signal the
 *                  eventfd `ready_fd` once all of them are pending (W7's
 *                  set-up, so pend itself needs no params).
 *   fan            blocking, params n, child, child_n: spawns n children of
 *                  bench.<child> (apex_ctx_spawn) and waits for them all
 *                  (W11 fan-out, W12 cascade, Wroll roll-up).
 *   pend           deferred: pending until its token fires (cancel or
 *                  timeout), then completes APEX_E_CANCELLED. It learns of the
 *                  cancel by apex_ctx_on_cancel when the host has it (compiled
 *                  in when plugin.h defines APEX_HAVE_CTX_ON_CANCEL, used when
 *                  the host's api table is long enough), else by the only
 *                  event-driven way the API had before: the task's cancel fd,
 *                  watched by one epoll thread of ours (one fd per pending
 *                  task: the fd limit caps how many can be pending).
 *
 * Threads: every start runs on a host worker, but pend's, which may run on
 * the submitting thread (APEX_ACTION_F_START_INLINE). pend's fallback watcher is one
 * thread of ours, started by the first pend that needs it and joined at
 * shutdown; it is the only thread that completes those ctxs, after taking
 * their fd out of its epoll set (the fd is the host's and goes with the
 * ctx). With apex_ctx_on_cancel, the completion runs in the callback, on the
 * cancelling thread. pend's counters are atomics; the watcher's start is
 * guarded by state->mu; no host call is made under our lock. All of it is
 * plugin state (init/shutdown), so a reloaded plugin starts afresh.
 *
 * What can fail: a write to ready_fd (the task fails APEX_E_EXECUTION), a
 * rejected progress update (flood and tree fail with its code), no memory
 * (APEX_E_NOMEM), no cancel fd or epoll registration for a pend (it fails
 * with the reason: typically the fd limit). Nothing here aborts or prints. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "apex/plugin.h"

typedef struct bp_state {
  /* pend_arm's terms, read by every pend start. */
  atomic_int ready_fd;        /* -1: nobody to tell */
  atomic_uint_fast64_t batch; /* 0: nobody to tell */
  atomic_uint_fast64_t pended; /* pend starts since the last pend_arm */
  /* pend's fallback watcher (no apex_ctx_on_cancel). */
  pthread_mutex_t mu; /* guards watching (the start of the watcher) */
  bool watching;
  int epfd, stop_fd; /* -1 until the watcher starts */
  pthread_t watcher;
} bp_state_t;

static int bp_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  (void)api;
  bp_state_t *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(why, why_len, "bench: out of memory for plugin state");
    return -1;
  }
  int rc = pthread_mutex_init(&s->mu, NULL);
  if (rc != 0) {
    snprintf(why, why_len, "bench: pthread_mutex_init: %s", strerror(rc));
    free(s);
    return -1;
  }
  atomic_init(&s->ready_fd, -1);
  atomic_init(&s->batch, 0);
  atomic_init(&s->pended, 0);
  s->epfd = s->stop_fd = -1;
  *state = s;
  return 0;
}

/* Runs after every handler returned. A pend ctx the watcher has not
 * completed belongs to a task shutdown already ended; it is not ours to
 * complete any more, so the watcher is stopped, not drained. */
static void bp_shutdown(void *state) {
  bp_state_t *s = state;
  if (!s) return;
  if (s->watching) {
    uint64_t one = 1;
    ssize_t w;
    do w = write(s->stop_fd, &one, sizeof one);
    while (w < 0 && errno == EINTR);
    /* An eventfd write fails only on overflow, which one write cannot
     * cause; if it did, joining would hang, so the thread is left. */
    if (w == (ssize_t)sizeof one) pthread_join(s->watcher, NULL);
  }
  if (s->epfd >= 0) close(s->epfd);
  if (s->stop_fd >= 0) close(s->stop_fd);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

static int64_t param_int(apex_ctx_t *ctx, const char *name, int64_t dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static uint64_t clock_ns(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* User + system CPU of the whole process, in ns (bench_util.h's
 * bench_cpu_ns; this plugin does not include the harness's header). 0 if
 * getrusage fails, which it does not for RUSAGE_SELF. */
static uint64_t process_cpu_ns(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return ((uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec +
          (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec) *
         1000u;
}

/* Writes 1 to an eventfd. Returns: 0, or the errno of the failed write. */
static int efd_signal(int fd) {
  uint64_t one = 1;
  ssize_t w;
  do w = write(fd, &one, sizeof one);
  while (w < 0 && errno == EINTR);
  if (w == (ssize_t)sizeof one) return 0;
  return w < 0 ? errno : EIO;
}

/* The result of flood and tree: the loop's wall time and CPU. */
typedef struct loop_clock {
  uint64_t t0, thread0, process0;
} loop_clock_t;

static void loop_clock_start(loop_clock_t *c) {
  c->process0 = process_cpu_ns();
  c->thread0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
  c->t0 = clock_ns(CLOCK_MONOTONIC);
}

static int loop_clock_result(apex_ctx_t *ctx, const loop_clock_t *c) {
  uint64_t t1 = clock_ns(CLOCK_MONOTONIC), thread1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
  uint64_t process1 = process_cpu_ns();
  json_t *res = json_pack("{s:I, s:I, s:I}", "ns", (json_int_t)(t1 - c->t0), "thread_cpu_ns",
                          (json_int_t)(thread1 - c->thread0), "cpu_ns",
                          (json_int_t)(process1 - c->process0));
  if (!res) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result");
  apex_ctx_set_result(ctx, res);
  return APEX_OK;
}

/* ------------------------------------------------------------- handlers */

static int bp_noop(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

/* noop_mx (peer apex_mutexmx): the counters a one-mutex-per-metric client
 * (the prometheus-client-c pattern; no C client is packaged in Debian)
 * keeps around a handler: attempts started, and the attempt's duration in
 * a histogram of Apex's buckets (include/apex/metrics.h), each metric
 * behind its own mutex. The host keeps the rest (bench_apex.c). */
#define BP_MX_BOUNDS 15
static const uint64_t k_mx_bounds_ns[BP_MX_BOUNDS] = {
    10000ull, 50000ull, 100000ull, 500000ull, 1000000ull, 5000000ull, 10000000ull, 50000000ull,
    100000000ull, 500000000ull, 1000000000ull, 5000000000ull, 10000000000ull, 60000000000ull,
    300000000000ull};
static struct {
  pthread_mutex_t mu;
  uint64_t n;
} g_mx_started = {PTHREAD_MUTEX_INITIALIZER, 0};
static struct {
  pthread_mutex_t mu;
  uint64_t buckets[BP_MX_BOUNDS + 1], sum_ns;
} g_mx_attempt = {PTHREAD_MUTEX_INITIALIZER, {0}, 0};

static uint64_t bp_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int bp_noop_mx(apex_ctx_t *ctx) {
  (void)ctx;
  uint64_t t0 = bp_now_ns();
  pthread_mutex_lock(&g_mx_started.mu);
  g_mx_started.n++;
  pthread_mutex_unlock(&g_mx_started.mu);
  uint64_t d = bp_now_ns() - t0; /* the attempt: a no-op's */
  unsigned b = 0;
  while (b < BP_MX_BOUNDS && d > k_mx_bounds_ns[b]) b++;
  pthread_mutex_lock(&g_mx_attempt.mu);
  g_mx_attempt.buckets[b]++;
  g_mx_attempt.sum_ns += d;
  pthread_mutex_unlock(&g_mx_attempt.mu);
  return APEX_OK;
}

static int bp_stamp(apex_ctx_t *ctx) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  json_t *res = json_pack("{s:I}", "t", (json_int_t)ts.tv_sec * 1000000000 + ts.tv_nsec);
  if (!res) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result");
  apex_ctx_set_result(ctx, res);
  return APEX_OK;
}

static int bp_noop_deferred(apex_ctx_t *ctx) {
  apex_ctx_complete(ctx, APEX_OK); /* ctx is invalid from here on */
  return APEX_PENDING;
}

static int bp_wait(apex_ctx_t *ctx) {
  int fd = (int)param_int(ctx, "ready_fd", -1);
  if (fd >= 0) {
    int e = efd_signal(fd);
    if (e != 0)
      return apex_ctx_fail(ctx, APEX_E_EXECUTION, "write ready_fd %d: %s", fd, strerror(e));
  }
  /* "Forever": only the token (cancel, timeout, shutdown) ends it. */
  if (apex_ctx_sleep_ms(ctx, UINT64_MAX) == APEX_E_CANCELLED) {
    /* W3's placement split (bench_util.h): the CPU the handler woke on, plus
     * one, added to cpu_fd's counter before the task ends. */
    int cfd = (int)param_int(ctx, "cpu_fd", -1);
    if (cfd >= 0) {
      int cpu = sched_getcpu();
      uint64_t v = cpu >= 0 ? (uint64_t)cpu + 1 : 1u << 20;
      ssize_t w;
      do w = write(cfd, &v, sizeof v);
      while (w < 0 && errno == EINTR);
    }
    return APEX_E_CANCELLED;
  }
  return apex_ctx_fail(ctx, APEX_E_EXECUTION, "an endless wait ended without a cancel");
}

static int bp_flood(apex_ctx_t *ctx) {
  int64_t n = param_int(ctx, "n", 1);
  loop_clock_t clk;
  loop_clock_start(&clk);
  for (int64_t i = 0; i < n; i++) {
    int rc = apex_ctx_progress(ctx, 100.0 * (double)(i + 1) / (double)n, "working");
    if (rc != APEX_OK)
      return apex_ctx_fail(ctx, rc, "progress %lld of %lld: code %d", (long long)(i + 1),
                           (long long)n, rc);
  }
  return loop_clock_result(ctx, &clk);
}

/* W6t. The tree is a flat array of `nodes` sub-tasks {"name", "percentage"};
 * report i moves node i % nodes forward (it reaches 100 % on its last
 * report) and the task's own percentage to (i + 1) / n. Building the tree
 * and keeping a pointer to each node's percentage happen before the clock
 * starts: the plugin's own cost per report is one json_real_set. */
static int bp_tree(apex_ctx_t *ctx) {
  int64_t n = param_int(ctx, "n", 1), nodes = param_int(ctx, "nodes", 1);
  int incremental = param_int(ctx, "incremental", 0) != 0;
#ifndef APEX_HAVE_PROGRESS_NODE
  if (incremental)
    return apex_ctx_fail(ctx, APEX_E_INVALID,
                         "incremental progress: built without APEX_HAVE_PROGRESS_NODE");
#endif
  json_t *tree = json_array();
  json_t **pct = calloc((size_t)nodes, sizeof *pct);
  if (!tree || !pct) {
    json_decref(tree);
    free(pct);
    return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory for a %lld-node tree",
                         (long long)nodes);
  }
  for (int64_t j = 0; j < nodes; j++) {
    char name[32];
    snprintf(name, sizeof name, "node-%04lld", (long long)j);
    json_t *node = json_pack("{s:s, s:f}", "name", name, "percentage", 0.0);
    if (!node || json_array_append_new(tree, node) != 0) {
      json_decref(tree);
      free(pct);
      return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory for a %lld-node tree",
                           (long long)nodes);
    }
    pct[j] = json_object_get(node, "percentage");
  }
  int64_t rounds = (n + nodes - 1) / nodes; /* reports per node, at most */
  int rc = APEX_OK;
  apex_progress_update_t u = {.message = "working", .sub_tasks = tree};
  loop_clock_t clk;
#ifdef APEX_HAVE_PROGRESS_NODE
  if (incremental) {
    /* The tree once, in full (its declaration); then one node per report
     * (apex_ctx_progress_node: index i is sub_tasks[i] in a flat tree). */
    u.percentage = 0.0;
    rc = apex_ctx_progress_update(ctx, &u);
    loop_clock_start(&clk);
    for (int64_t i = 0; rc == APEX_OK && i < n; i++) {
      double v = 100.0 * (double)(i / nodes + 1) / (double)rounds;
      rc = apex_ctx_progress_node(ctx, (size_t)(i % nodes), v > 100.0 ? 100.0 : v, NULL, NULL);
    }
    /* The task's own 100 %, keeping the tree (apex_ctx_progress would
     * report a whole update without one). */
    if (rc == APEX_OK) rc = apex_ctx_progress_node(ctx, APEX_PROGRESS_ROOT, 100.0, NULL, "done");
  } else
#endif
  {
    loop_clock_start(&clk);
    for (int64_t i = 0; rc == APEX_OK && i < n; i++) {
      double v = 100.0 * (double)(i / nodes + 1) / (double)rounds;
      json_real_set(pct[i % nodes], v > 100.0 ? 100.0 : v);
      u.percentage = 100.0 * (double)(i + 1) / (double)n;
      rc = apex_ctx_progress_update(ctx, &u);
    }
  }
  json_decref(tree);
  free(pct);
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "tree progress: code %d", rc);
  return loop_clock_result(ctx, &clk);
}

/* W7's set-up: the next `batch` pend starts count towards one signal. */
static int bp_pend_arm(apex_ctx_t *ctx) {
  bp_state_t *s = apex_ctx_plugin_state(ctx);
  atomic_store(&s->batch, 0); /* no signal while the terms change */
  atomic_store(&s->pended, 0);
  atomic_store(&s->ready_fd, (int)param_int(ctx, "ready_fd", -1));
  atomic_store(&s->batch, (uint_fast64_t)param_int(ctx, "batch", 1));
  return APEX_OK;
}

/* A pend's cancel: its token fired (the host's cancel, or its timeout). */
static void bp_pend_cancelled(apex_ctx_t *ctx) { apex_ctx_complete(ctx, APEX_E_CANCELLED); }

#ifdef APEX_HAVE_CTX_ON_CANCEL
/* Runs on the cancelling thread (the host's, or the runtime thread for a
 * timeout), with no Apex lock held: completing from here is allowed. */
static void bp_pend_on_cancel(apex_ctx_t *ctx, void *user) {
  (void)user;
  bp_pend_cancelled(ctx);
}
#endif

/* The fallback's thread: completes each pend whose cancel fd fires. */
static void *bp_watch(void *arg) {
  bp_state_t *s = arg;
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(s->epfd, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return NULL; /* cannot happen with a valid epfd; the pends then time out */
    }
    for (int i = 0; i < n; i++) {
      apex_ctx_t *ctx = evs[i].data.ptr;
      if (!ctx) return NULL; /* stop_fd: shutdown */
      /* Out of the set before the ctx (and with it the fd) goes. */
      int fd = apex_ctx_cancel_fd(ctx);
      if (fd >= 0) epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL);
      bp_pend_cancelled(ctx);
    }
  }
}

/* Starts the watcher once. Returns: 0, or the errno of what failed. */
static int bp_watch_start(bp_state_t *s) {
  int e = 0;
  pthread_mutex_lock(&s->mu);
  if (!s->watching) {
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->stop_fd = s->epfd >= 0 ? eventfd(0, EFD_CLOEXEC) : -1;
    struct epoll_event stop = {.events = EPOLLIN, .data.ptr = NULL};
    if (s->epfd < 0 || s->stop_fd < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->stop_fd, &stop) != 0)
      e = errno;
    else
      e = pthread_create(&s->watcher, NULL, bp_watch, s);
    if (e == 0) {
      s->watching = true;
    } else {
      if (s->stop_fd >= 0) close(s->stop_fd);
      if (s->epfd >= 0) close(s->epfd);
      s->epfd = s->stop_fd = -1;
    }
  }
  pthread_mutex_unlock(&s->mu);
  return e;
}

/* Fails a pend that could not be parked; the ctx is gone after. */
static int bp_pend_refuse(apex_ctx_t *ctx, int code, const char *what, const char *why) {
  apex_ctx_fail(ctx, code, "pend: %s: %s", what, why);
  apex_ctx_complete(ctx, code);
  return APEX_PENDING;
}

static int bp_pend(apex_ctx_t *ctx) {
  bp_state_t *s = apex_ctx_plugin_state(ctx);
  bool parked = false;
#ifdef APEX_HAVE_CTX_ON_CANCEL
  const apex_host_api_t *api = ctx->api;
  if (api->struct_size >= offsetof(apex_host_api_t, on_cancel) + sizeof api->on_cancel) {
    /* The callback may run (and complete the ctx) before this returns: the
     * ctx is not touched after. */
    int rc = apex_ctx_on_cancel(ctx, bp_pend_on_cancel, NULL);
    if (rc != APEX_OK) return bp_pend_refuse(ctx, rc, "apex_ctx_on_cancel", "refused");
    parked = true;
  }
#endif
  if (!parked) {
    int e = bp_watch_start(s);
    if (e != 0) return bp_pend_refuse(ctx, APEX_E_EXECUTION, "cancel watcher", strerror(e));
    int fd = apex_ctx_cancel_fd(ctx);
    if (fd < 0)
      return bp_pend_refuse(ctx, fd, "no cancel fd",
                            "without apex_ctx_on_cancel every pending task needs one");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = ctx};
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
      return bp_pend_refuse(ctx, APEX_E_EXECUTION, "epoll_ctl", strerror(errno));
    /* From here the watcher may complete the ctx: not touched after. */
  }
  uint_fast64_t batch = atomic_load(&s->batch);
  uint_fast64_t k = atomic_fetch_add(&s->pended, 1) + 1;
  int fd = atomic_load(&s->ready_fd);
  /* The host's ready_fd outlives the batch; a failed write leaves it
   * waiting, and its tasks time out: reported there. */
  if (batch != 0 && k % batch == 0 && fd >= 0) (void)efd_signal(fd);
  return APEX_PENDING;
}

/* fan: spawns n children of bench.<child> (flood ones with n = child_n),
 * then waits for all of them (W11, W12, Wroll). Ends APEX_OK, or
 * APEX_E_CANCELLED once cancelled (its children are cancelled with it). */
static int bp_fan(apex_ctx_t *ctx) {
#ifdef APEX_HAVE_CTX_SPAWN
  int64_t n = param_int(ctx, "n", 1), child_n = param_int(ctx, "child_n", 1);
  const char *child = json_string_value(json_object_get(apex_ctx_params(ctx), "child"));
  json_t *p = strcmp(child, "flood") == 0 ? json_pack("{s:I}", "n", (json_int_t)child_n) : NULL;
  for (int64_t i = 0; i < n; i++) {
    apex_child_t *c = NULL;
    int rc = apex_ctx_spawn(ctx, "bench", child, p, NULL, &c);
    if (rc != APEX_OK) {
      json_decref(p);
      return apex_ctx_fail(ctx, rc, "spawn %lld: %s", (long long)i, "refused");
    }
  }
  json_decref(p);
  return apex_ctx_wait_children(ctx, NULL, 0, -1);
#else
  return apex_ctx_fail(ctx, APEX_E_EXECUTION, "fan needs APEX_HAVE_CTX_SPAWN");
#endif
}

/* ----------------------------------------------------------- descriptor */

static const apex_param_spec_t k_wait_params[] = {
    {.name = "ready_fd", .type = APEX_PARAM_INT, .default_json = "-1", .has_min = 1, .min = -1,
     .has_max = 1, .max = 2147483647.0,
     .description = "eventfd to write 1 to once waiting; -1: none"},
    {.name = "cpu_fd", .type = APEX_PARAM_INT, .default_json = "-1", .has_min = 1, .min = -1,
     .has_max = 1, .max = 2147483647.0,
     .description = "eventfd to add the CPU it woke on + 1 to once cancelled; -1: none"},
};
static const apex_param_spec_t k_flood_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = 1,
     .description = "progress updates to report"},
};
static const apex_param_spec_t k_tree_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = 1,
     .description = "progress reports to make"},
    {.name = "nodes", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = 1,
     .has_max = 1, .max = 100000, .description = "sub-tasks in the tree"},
    {.name = "incremental", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1,
     .min = 0, .has_max = 1, .max = 1,
     .description = "1: one node's update per report; 0: the whole tree"},
};
static const apex_param_spec_t k_pend_arm_params[] = {
    {.name = "ready_fd", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = -1,
     .has_max = 1, .max = 2147483647.0,
     .description = "eventfd to write 1 to when batch pends are pending; -1: none"},
    {.name = "batch", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = 1,
     .description = "pend starts per signal"},
};

static const apex_param_spec_t k_fan_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = 1,
     .description = "children to spawn"},
    {.name = "child", .type = APEX_PARAM_STRING, .default_json = "\"noop\"",
     .description = "the bench action each child runs: noop, pend or flood"},
    {.name = "child_n", .type = APEX_PARAM_INT, .default_json = "1", .has_min = 1, .min = 1,
     .description = "a flood child's updates"},
};

#define BP_N(a) (sizeof(a) / sizeof((a)[0]))

static const apex_action_desc_t k_actions[] = {
    {.name = "noop", .description = "Returns at once", .handler = bp_noop,
     .kind = APEX_ACTION_BLOCKING},
    {.name = "stamp", .description = "Returns its start time", .handler = bp_stamp,
     .kind = APEX_ACTION_BLOCKING},
    {.name = "noop_mx", .description = "noop counted by a one-mutex-per-metric client",
     .handler = bp_noop_mx, .kind = APEX_ACTION_BLOCKING},
    {.name = "noop_deferred", .description = "Completes inside its start",
     .handler = bp_noop_deferred, .kind = APEX_ACTION_DEFERRED},
    {.name = "wait", .description = "Signals ready_fd, then waits until cancelled",
     .handler = bp_wait, .kind = APEX_ACTION_BLOCKING, .params = k_wait_params,
     .n_params = BP_N(k_wait_params)},
    {.name = "flood", .description = "Reports n progress updates as fast as it can",
     .handler = bp_flood, .kind = APEX_ACTION_BLOCKING, .params = k_flood_params,
     .n_params = BP_N(k_flood_params)},
    {.name = "tree", .description = "Reports n updates of a tree of nodes sub-tasks",
     .handler = bp_tree, .kind = APEX_ACTION_BLOCKING, .params = k_tree_params,
     .n_params = BP_N(k_tree_params)},
    {.name = "pend_arm", .description = "Sets who pend tells once batch pends are pending",
     .handler = bp_pend_arm, .kind = APEX_ACTION_BLOCKING, .params = k_pend_arm_params,
     .n_params = BP_N(k_pend_arm_params)},
    {.name = "fan", .description = "Spawns n children and waits for all", .handler = bp_fan,
     .params = k_fan_params, .n_params = BP_N(k_fan_params)},
    /* Its start registers a callback (or hands the ctx to our watcher)
     * and returns: quick, any thread, so it may start on the submitter. */
    {.name = "pend", .description = "Pending until cancelled or timed out",
     .handler = bp_pend, .kind = APEX_ACTION_DEFERRED, .flags = APEX_ACTION_F_START_INLINE},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "bench",
    .version = "1.0.0",
    .description = "No-op, waiting, progress and pending actions for the benchmarks",
    .init = bp_init,
    .shutdown = bp_shutdown,
    .actions = k_actions,
    .n_actions = BP_N(k_actions),
};

APEX_PLUGIN_DEFINE(k_plugin)
