/* bench_glib: the GLib 2.74 peers of bench/README.md, as a competent GLib
 * user writes them. The host thread owns a GMainContext of its own (pushed as
 * its thread-default) and iterates it; every completion comes back to it.
 *
 *   glib   (default)  a GThreadPool of 2 exclusive threads; each task is a
 *                     g_new0'd gb_task_t pushed with g_thread_pool_push; the
 *                     worker runs it, then g_main_context_invoke()s gb_done on
 *                     the host context. Cancel: a GCancellable whose fd the
 *                     worker g_poll()s. Timers: g_timeout_source_new.
 *                     W7's pending operations: a timeout source each on the
 *                     host context, ended by g_source_destroy and the
 *                     operation's callback (libuv's uv_timer_stop plus a
 *                     callback; a GCancellable per operation would add a
 *                     GObject and a signal emission to the same work).
 *                     Workloads W1 W2 W3 W3q W4 W5 W6 W7.
 *   gtask  ("gtask")  g_task_new + g_task_run_in_thread; the GAsyncReadyCallback
 *                     runs on the host context (thread-default at g_task_new).
 *                     GTask's pool is GIO's own: 10 threads, not exclusive,
 *                     growing past 10 only while all are busy. W1 W2 W3 W4.
 *
 * The context is a new one, not g_main_context_default(): a worker with no
 * thread-default context of its own treats the global default as its own, so
 * g_main_context_invoke(default) from a worker may acquire it and run the
 * completion right there, on the worker, while the host is not iterating.
 *
 * Threads: the host thread submits, cancels, owns the context and runs every
 * callback (gb_done, gt_done, gb_on_update, gb_on_timeout, and the W3q
 * "cancelled" handler, which runs in g_cancellable_cancel on the host). The
 * workers touch a task between its pop and its hand-back, and gb_host_t only
 * through fields fixed before the pool started (ctx, ready_fd) and, in W6,
 * the flood figures written before its completion is handed back. A W3q task is
 * claimed by an atomic compare-and-swap, either by the worker starting it or by
 * the host cancelling it while queued; it carries two references, the pool's
 * and the completion's.
 *
 * What can fail: thread or eventfd creation, g_thread_pool_push, a task ending
 * with the wrong outcome or a count that does not add up: each ends the
 * program with a message and no figure (bench_die). */
#include <gio/gio.h>
#include <glib.h>
#include <sys/eventfd.h>

#include "bench_util.h"

#define GB_TIMEOUT_MS 5

/* ThreadSanitizer and an uninstrumented GLib. On Linux GLib's GMutex and
 * GCond are raw futexes (gthread-posix.c, USE_NATIVE_MUTEX), which TSan does
 * not see, so it misses the happens-before GLib documents for
 * g_thread_pool_push -> the pool's func and g_main_context_invoke -> the
 * callback on the context's thread, and reports false races:
 *  - in our code, on the fields of a task (or update) between the thread that
 *    filled it and the one GLib handed it to. GB_HANDOFF / GB_TAKEOVER state
 *    GLib's guarantee to TSan at exactly those hand-overs;
 *  - inside GLib and GObject, on what they allocate, close or realloc on one
 *    thread and touch on another under their own locks: the GSource of every
 *    g_main_context_invoke (malloc'd by the worker, freed by the host's
 *    dispatch), the pool's queue, a GCancellable's GWakeup eventfd (made by
 *    the worker's g_cancellable_make_pollfd, written by the host's
 *    g_cancellable_cancel, closed by the worker's release), GTask's signal
 *    closures and its last reference to the context. Every frame there is
 *    GLib's or an interceptor called from it; we cannot annotate them. TSan's
 *    own switch for this, ignore_noninstrumented_modules=1, silences exactly
 *    interceptors called from uninstrumented libraries and still reports our
 *    code: it is the run's to set (TSAN_OPTIONS), not this file's.
 * The macros are nothing outside a TSan build. */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define GB_HANDOFF(p) __tsan_release(p)
#define GB_TAKEOVER(p) __tsan_acquire(p)
#else
#define GB_HANDOFF(p) ((void)(p))
#define GB_TAKEOVER(p) ((void)(p))
#endif

typedef struct gb_host {
  GMainContext *ctx;
  GThreadPool *pool; /* glib peer only; GTask has its own */
  int ready_fd;      /* eventfd: a wait task is about to block */
  /* Host thread only, written by the callbacks it runs. */
  uint64_t done, cancelled, claimed, timeouts, updates;
  uint64_t t_submit; /* W4: when the timed task was submitted */
  uint64_t cpu_at_timeout; /* W4: process CPU when the timeout callback ran */
  int64_t late_ns;   /* W4: the timeout callback's lateness */
  GCancellable *timed; /* W4: what the timeout cancels */
  double last_pct;
  /* W6: the reporting handler's own wall time, its thread's CPU, and the
   * process's CPU over the same interval. */
  uint64_t flood_ns, flood_cpu_ns, flood_process_cpu_ns;
} gb_host_t;

/* ------------------------------------------------------- shared pieces */

/* Blocks (untimed, outside any measured interval) until n wait tasks said
 * they are about to block. */
static void gb_await_ready(gb_host_t *h, uint64_t n) {
  uint64_t got = 0;
  while (got < n) got += bench_efd_wait(h->ready_fd);
  if (got != n) bench_die("%llu tasks blocked, expected %llu", (unsigned long long)got,
                          (unsigned long long)n);
}

/* The handler of W3/W3q/W4/W5: tells the host (if ready_fd >= 0) that it is
 * about to wait, then waits on the cancellable's fd without limit. The fd is
 * made before the signal, so a cancel racing with it still wakes the poll. */
static gboolean gb_wait_cancelled(GCancellable *c, int ready_fd) {
  GPollFD pfd;
  if (!g_cancellable_make_pollfd(c, &pfd)) bench_die("g_cancellable_make_pollfd failed");
  if (ready_fd >= 0) {
    uint64_t one = 1;
    ssize_t w;
    do w = write(ready_fd, &one, sizeof one);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)sizeof one)
      bench_die("write ready eventfd: %s", w < 0 ? strerror(errno) : "short write");
  }
  int r;
  do r = g_poll(&pfd, 1, -1);
  while (r < 0 && errno == EINTR);
  if (r < 0) bench_die("g_poll: %s", strerror(errno));
  g_cancellable_release_fd(c);
  return g_cancellable_is_cancelled(c);
}

/* Iterates the host context (blocking in its poll) until *count reaches want. */
static void gb_run_until(gb_host_t *h, const uint64_t *count, uint64_t want) {
  while (*count < want) g_main_context_iteration(h->ctx, TRUE);
}

static void gb_host_open(gb_host_t *h) {
  memset(h, 0, sizeof *h);
  h->ctx = g_main_context_new();
  g_main_context_push_thread_default(h->ctx);
  h->ready_fd = bench_efd_new(0);
}

static void gb_host_close(gb_host_t *h) {
  if (h->pool) g_thread_pool_free(h->pool, FALSE, TRUE); /* waits for queued tasks */
  /* Anything a late task handed back is dispatched before the context goes.
   * (A GIO pool thread may still hold the last reference to a finished GTask,
   * and through it to the context, which then goes when that thread lets go.) */
  while (g_main_context_iteration(h->ctx, FALSE)) {
  }
  g_main_context_pop_thread_default(h->ctx);
  g_main_context_unref(h->ctx);
  if (close(h->ready_fd) != 0) bench_die("close: %s", strerror(errno));
}

static gboolean gb_on_timeout(gpointer data) {
  gb_host_t *h = data;
  int64_t late = (int64_t)bench_now_ns() - (int64_t)(h->t_submit + GB_TIMEOUT_MS * 1000000u);
  h->cpu_at_timeout = bench_cpu_ns();
  /* GLib arms the timeout in whole microseconds from its creation (after
   * t_submit), so it can fire < 1 us "early" against our ns clock: that is 0. */
  h->late_ns = late < 0 ? 0 : late;
  h->timeouts++;
  g_cancellable_cancel(h->timed);
  return G_SOURCE_REMOVE;
}

/* Every task completed on the host, with the outcome the workload expects. */
static void gb_check(const gb_host_t *h, const char *wl, uint64_t done, uint64_t cancelled) {
  if (h->done != done || h->cancelled != cancelled)
    bench_die("%s: %llu completed (%llu cancelled), expected %llu (%llu cancelled)", wl,
              (unsigned long long)h->done, (unsigned long long)h->cancelled,
              (unsigned long long)done, (unsigned long long)cancelled);
}

/* ------------------------------------------------ glib: GThreadPool peer */

typedef enum { GB_NOOP, GB_WAIT, GB_FLOOD } gb_kind_t;
enum { GB_QUEUED, GB_STARTED, GB_CLAIMED };

typedef struct gb_task {
  gb_host_t *host;
  gb_kind_t kind;
  GCancellable *cancellable; /* owned; NULL for a no-op */
  int ready_fd;              /* GB_WAIT: signal before blocking, or -1 */
  int refs;                  /* atomic: 1, or 2 for a claimable task */
  int state;                 /* atomic, claimable tasks only: GB_QUEUED... */
  gboolean claimable;
  gboolean cancelled; /* the outcome, set by whoever completes it */
  uint64_t n;         /* GB_FLOOD: updates to report */
} gb_task_t;

typedef struct gb_update {
  gb_host_t *host;
  double percentage;
  char *message;
} gb_update_t;

static void gb_task_unref(gb_task_t *t) {
  if (!g_atomic_int_dec_and_test(&t->refs)) return;
  if (t->cancellable) g_object_unref(t->cancellable);
  g_free(t);
}

static gb_task_t *gb_task_new(gb_host_t *h, gb_kind_t kind) {
  gb_task_t *t = g_new0(gb_task_t, 1);
  t->host = h;
  t->kind = kind;
  t->ready_fd = -1;
  t->refs = 1;
  return t;
}

static void gb_push(gb_host_t *h, gb_task_t *t) {
  GError *err = NULL;
  GB_HANDOFF(t);
  if (!g_thread_pool_push(h->pool, t, &err))
    bench_die("g_thread_pool_push: %s", err ? err->message : "failed");
}

/* Host: a task's completion. */
static gboolean gb_done(gpointer data) {
  gb_task_t *t = data;
  GB_TAKEOVER(t);
  gb_host_t *h = t->host;
  h->done++;
  if (t->cancelled) h->cancelled++;
  gb_task_unref(t);
  return G_SOURCE_REMOVE;
}

static gboolean gb_on_update(gpointer data) {
  gb_update_t *u = data;
  GB_TAKEOVER(u);
  u->host->updates++;
  u->host->last_pct = u->percentage;
  return G_SOURCE_REMOVE;
}

static void gb_update_free(gpointer data) {
  gb_update_t *u = data;
  g_free(u->message);
  g_free(u);
}

/* W6: one update per g_main_context_invoke_full, every one delivered. */
static void gb_flood(gb_task_t *t) {
  gb_host_t *h = t->host;
  uint64_t n = t->n;
  uint64_t p0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns(), c0 = bench_thread_cpu_ns();
  for (uint64_t i = 0; i < n; i++) {
    gb_update_t *u = g_new(gb_update_t, 1);
    u->host = h;
    u->percentage = 100.0 * (double)(i + 1) / (double)n;
    u->message = g_strdup("working");
    GB_HANDOFF(u);
    g_main_context_invoke_full(h->ctx, G_PRIORITY_DEFAULT, gb_on_update, u, gb_update_free);
  }
  uint64_t c1 = bench_thread_cpu_ns(), t1 = bench_now_ns();
  uint64_t p1 = bench_cpu_ns();
  /* The host reads these in gb_done, after gb_worker's invoke hands t over. */
  h->flood_ns = t1 - t0;
  h->flood_cpu_ns = c1 - c0;
  h->flood_process_cpu_ns = p1 - p0;
}

/* Worker: GThreadPool's func. */
static void gb_worker(gpointer data, gpointer pool_data) {
  (void)pool_data;
  gb_task_t *t = data;
  GB_TAKEOVER(t);
  if (t->claimable) {
    if (!g_atomic_int_compare_and_exchange(&t->state, GB_QUEUED, GB_STARTED)) {
      gb_task_unref(t); /* cancelled while queued: the host completed it */
      return;
    }
    gb_task_unref(t); /* the pool's reference; the completion's remains */
  }
  switch (t->kind) {
  case GB_NOOP:
    break;
  case GB_WAIT:
    t->cancelled = gb_wait_cancelled(t->cancellable, t->ready_fd);
    break;
  case GB_FLOOD:
    gb_flood(t);
    break;
  }
  GMainContext *ctx = t->host->ctx; /* t is the host's once handed off */
  GB_HANDOFF(t);
  g_main_context_invoke(ctx, gb_done, t);
}

/* W3q, host: the queued task's GCancellable fired. GThreadPool cannot take an
 * item back out of its queue, so a task that has not started is claimed here
 * and completed as cancelled; the worker that pops it later drops it. This is
 * what GTask does for return-on-cancel (its "cancelled" handler completes the
 * task at once). The completion goes through the host's loop like every
 * other: g_main_context_invoke would run gb_done right inside
 * g_cancellable_cancel, since the host may acquire its own context. */
static void gb_on_cancelled(GCancellable *c, gpointer data) {
  (void)c;
  gb_task_t *t = data;
  if (!g_atomic_int_compare_and_exchange(&t->state, GB_QUEUED, GB_CLAIMED)) return;
  t->cancelled = TRUE;
  t->host->claimed++;
  GSource *s = g_idle_source_new();
  g_source_set_callback(s, gb_done, t, NULL);
  g_source_attach(s, t->host->ctx);
  g_source_unref(s);
}

static void gb_pool_open(gb_host_t *h) {
  gb_host_open(h);
  GError *err = NULL;
  h->pool = g_thread_pool_new(gb_worker, NULL, 2, TRUE, &err);
  if (!h->pool) bench_die("g_thread_pool_new: %s", err ? err->message : "failed");
}

static void gb_submit_noop(gb_host_t *h) { gb_push(h, gb_task_new(h, GB_NOOP)); }

static void gb_submit_wait(gb_host_t *h, GCancellable *c, gboolean signal_ready) {
  gb_task_t *t = gb_task_new(h, GB_WAIT);
  t->cancellable = g_object_ref(c);
  t->ready_fd = signal_ready ? h->ready_fd : -1;
  gb_push(h, t);
}

/* ---------------------------------------------------------- gtask peer */

static void gt_done(GObject *source, GAsyncResult *res, gpointer data) {
  (void)source;
  gb_host_t *h = data;
  GError *err = NULL;
  if (!g_task_propagate_boolean(G_TASK(res), &err)) {
    if (!g_error_matches(err, G_IO_ERROR, G_IO_ERROR_CANCELLED))
      bench_die("task failed: %s", err ? err->message : "no error");
    h->cancelled++;
    g_error_free(err);
  }
  h->done++;
}

static void gt_run_noop(GTask *task, gpointer source, gpointer data, GCancellable *c) {
  (void)source, (void)data, (void)c;
  g_task_return_boolean(task, TRUE);
}

static void gt_run_wait(GTask *task, gpointer source, gpointer data, GCancellable *c) {
  (void)source;
  const gb_host_t *h = data; /* set: signal the host before blocking */
  gb_wait_cancelled(c, h ? h->ready_fd : -1);
  if (!g_task_return_error_if_cancelled(task)) g_task_return_boolean(task, TRUE);
}

static void gt_submit_noop(gb_host_t *h) {
  GTask *task = g_task_new(NULL, NULL, gt_done, h);
  g_task_run_in_thread(task, gt_run_noop);
  g_object_unref(task);
}

static void gt_submit_wait(gb_host_t *h, GCancellable *c, gboolean signal_ready) {
  GTask *task = g_task_new(NULL, c, gt_done, h);
  g_task_set_task_data(task, signal_ready ? h : NULL, NULL);
  g_task_run_in_thread(task, gt_run_wait);
  g_object_unref(task);
}

/* ------------------------------------------------------------ workloads */

typedef struct gb_peer {
  const char *name;
  void (*open)(gb_host_t *h);
  void (*noop)(gb_host_t *h);
  void (*wait)(gb_host_t *h, GCancellable *c, gboolean signal_ready);
} gb_peer_t;

static void w1(const gb_peer_t *p, uint64_t n) {
  gb_host_t h;
  p->open(&h);
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) p->noop(&h);
  gb_run_until(&h, &h.done, n);
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  gb_host_close(&h);
  gb_check(&h, "W1", n, 0);
  double ns = (double)(t1 - t0);
  bench_emit(p->name, "W1", n, "tasks_per_s", (double)n / (ns / 1e9), "tasks/s");
  bench_emit(p->name, "W1", n, "ns_per_task", ns / (double)n, "ns");
  bench_emit_cpu(p->name, "W1", n, "cpu_ns_per_task", cpu1 - cpu0, n);
}

/* W11's GLib peer: n GTasks run in threads, their completions counted on
 * the host context until all n are in (the counter is the fan-in). */
static void w11(const gb_peer_t *p, uint64_t n) {
  gb_host_t h;
  p->open(&h);
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) p->noop(&h);
  gb_run_until(&h, &h.done, n);
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  gb_host_close(&h);
  gb_check(&h, "W11", n, 0);
  bench_emit(p->name, "W11", n, "ns_per_child", (double)(t1 - t0) / (double)n, "ns");
  bench_emit_cpu(p->name, "W11", n, "cpu_ns_per_child", cpu1 - cpu0, n);
}

static void w2(const gb_peer_t *p, uint64_t n) {
  gb_host_t h;
  p->open(&h);
  uint64_t *lat = bench_xcalloc(n, sizeof *lat);
  uint64_t cpu_sum = 0;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    p->noop(&h);
    gb_run_until(&h, &h.done, i + 1);
    lat[i] = bench_now_ns() - t0;
    cpu_sum += bench_cpu_ns() - cpu0;
  }
  gb_host_close(&h);
  gb_check(&h, "W2", n, 0);
  bench_emit_latencies(p->name, "W2", n, lat, 1);
  bench_emit_cpu(p->name, "W2", n, "cpu_ns_per_task", cpu_sum, n);
  free(lat);
}

static void w3(const gb_peer_t *p, uint64_t n) {
  gb_host_t h;
  p->open(&h);
  uint64_t *lat = bench_xcalloc(n, sizeof *lat);
  uint64_t cpu_sum = 0;
  for (uint64_t i = 0; i < n; i++) {
    GCancellable *c = g_cancellable_new();
    p->wait(&h, c, TRUE);
    gb_await_ready(&h, 1);
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    g_cancellable_cancel(c);
    gb_run_until(&h, &h.done, i + 1);
    lat[i] = bench_now_ns() - t0;
    cpu_sum += bench_cpu_ns() - cpu0;
    g_object_unref(c);
  }
  gb_host_close(&h);
  gb_check(&h, "W3", n, n);
  bench_emit_latencies(p->name, "W3", n, lat, 0);
  bench_emit_cpu(p->name, "W3", n, "cpu_ns_per_task", cpu_sum, n);
  free(lat);
}

/* Both pool threads blocked (for all samples); each sample queues a third
 * task and cancels it, see gb_on_cancelled. */
static void w3q(const gb_peer_t *p, uint64_t n) {
  gb_host_t h;
  p->open(&h);
  uint64_t *lat = bench_xcalloc(n, sizeof *lat);
  uint64_t cpu_sum = 0;
  GCancellable *blk[2] = {g_cancellable_new(), g_cancellable_new()};
  for (int i = 0; i < 2; i++) gb_submit_wait(&h, blk[i], TRUE);
  gb_await_ready(&h, 2);
  for (uint64_t i = 0; i < n; i++) {
    gb_task_t *t = gb_task_new(&h, GB_NOOP);
    t->cancellable = g_cancellable_new();
    t->claimable = TRUE;
    t->state = GB_QUEUED;
    t->refs = 2;
    /* Never disconnected: t owns the cancellable, so the handler goes with it. */
    if (g_cancellable_connect(t->cancellable, G_CALLBACK(gb_on_cancelled), t, NULL) == 0)
      bench_die("g_cancellable_connect failed");
    GCancellable *c = t->cancellable;
    gb_push(&h, t);
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    g_cancellable_cancel(c);
    gb_run_until(&h, &h.done, i + 1);
    lat[i] = bench_now_ns() - t0;
    cpu_sum += bench_cpu_ns() - cpu0;
  }
  uint64_t claimed = h.claimed, cancelled = h.cancelled;
  for (int i = 0; i < 2; i++) g_cancellable_cancel(blk[i]);
  gb_run_until(&h, &h.done, n + 2);
  gb_host_close(&h); /* the pool pops and drops the claimed tasks */
  for (int i = 0; i < 2; i++) g_object_unref(blk[i]);
  if (claimed != n || cancelled != n)
    bench_die("W3q: %llu claimed, %llu cancelled while the workers were blocked",
              (unsigned long long)claimed, (unsigned long long)cancelled);
  gb_check(&h, "W3q", n + 2, n + 2);
  bench_emit_latencies(p->name, "W3q", n, lat, 0);
  bench_emit_cpu(p->name, "W3q", n, "cpu_ns_per_task", cpu_sum, n);
  free(lat);
}

/* The timeout is the host's own: a g_timeout_source on its context whose
 * callback sees the timeout (the lateness) and cancels the handler. */
static void w4(const gb_peer_t *p, uint64_t n) {
  gb_host_t h;
  p->open(&h);
  uint64_t *late = bench_xcalloc(n, sizeof *late);
  uint64_t cpu_sum = 0;
  for (uint64_t i = 0; i < n; i++) {
    GCancellable *c = g_cancellable_new();
    h.timed = c;
    uint64_t cpu0 = bench_cpu_ns();
    h.t_submit = bench_now_ns();
    GSource *timeout = g_timeout_source_new(GB_TIMEOUT_MS);
    g_source_set_callback(timeout, gb_on_timeout, &h, NULL);
    p->wait(&h, c, FALSE);
    g_source_attach(timeout, h.ctx);
    g_source_unref(timeout);
    gb_run_until(&h, &h.done, i + 1);
    if (h.timeouts != i + 1) bench_die("W4: the task ended before its timeout");
    late[i] = (uint64_t)h.late_ns;
    cpu_sum += h.cpu_at_timeout - cpu0;
    g_object_unref(c);
  }
  h.timed = NULL;
  gb_host_close(&h);
  gb_check(&h, "W4", n, n);
  bench_emit_latencies(p->name, "W4", n, late, 0);
  bench_emit_cpu(p->name, "W4", n, "cpu_ns_per_task", cpu_sum, n);
  free(late);
}

static void w5(const gb_peer_t *p, uint64_t n) {
  gb_host_t h;
  p->open(&h);
  GCancellable *blk[2] = {g_cancellable_new(), g_cancellable_new()};
  for (int i = 0; i < 2; i++) gb_submit_wait(&h, blk[i], TRUE);
  gb_await_ready(&h, 2);
  uint64_t rss0 = bench_rss_bytes();
  uint64_t cpu0 = bench_cpu_ns();
  for (uint64_t i = 0; i < n; i++) gb_submit_noop(&h);
  uint64_t cpu1 = bench_cpu_ns();
  uint64_t rss1 = bench_rss_bytes();
  guint queued = g_thread_pool_unprocessed(h.pool);
  for (int i = 0; i < 2; i++) g_cancellable_cancel(blk[i]);
  gb_run_until(&h, &h.done, n + 2);
  gb_host_close(&h);
  for (int i = 0; i < 2; i++) g_object_unref(blk[i]);
  if (queued != n) bench_die("W5: %u of %llu tasks queued", queued, (unsigned long long)n);
  gb_check(&h, "W5", n + 2, 2);
  double growth = rss1 > rss0 ? (double)(rss1 - rss0) : 0.0;
  bench_emit(p->name, "W5", n, "bytes_per_task", growth / (double)n, "B");
  bench_emit_cpu(p->name, "W5", n, "cpu_ns_per_task", cpu1 - cpu0, n);
}

static void w6(const gb_peer_t *p, uint64_t n) {
  gb_host_t h;
  p->open(&h);
  gb_task_t *t = gb_task_new(&h, GB_FLOOD);
  t->n = n;
  uint64_t cpu0 = bench_process_cpu_ns();
  gb_push(&h, t);
  /* Same priority, so the idle sources dispatch in order: the task's own
   * completion comes after its last update. */
  gb_run_until(&h, &h.done, 1);
  uint64_t cpu1 = bench_process_cpu_ns();
  gb_host_close(&h);
  gb_check(&h, "W6", 1, 0);
  if (h.updates != n)
    bench_die("W6: %llu of %llu updates delivered", (unsigned long long)h.updates,
              (unsigned long long)n);
  double host_cpu = (double)(cpu1 - cpu0) - (double)h.flood_cpu_ns;
  bench_emit(p->name, "W6", n, "ns_per_update", (double)h.flood_ns / (double)n, "ns");
  bench_emit_cpu(p->name, "W6", n, "cpu_ns_per_update", h.flood_process_cpu_ns, n);
  bench_emit(p->name, "W6", n, "delivered", (double)h.updates, "updates");
  bench_emit(p->name, "W6", n, "host_cpu_ms", host_cpu / 1e6, "ms");
  bench_emit(p->name, "W6", n, "final", h.last_pct == 100.0 ? 1 : 0, "bool");
}

/* W7: one pending operation: its timeout is a source on the host's context,
 * its completion a callback with the outcome. Nothing runs it; it ends by its
 * cancel (the host destroys the source and calls the callback) or its
 * timeout. */
typedef struct gb_op gb_op_t;
struct gb_op {
  gb_host_t *host;
  GSource *timeout; /* ours (a reference), attached to host->ctx */
  void (*cb)(gb_op_t *op, gboolean cancelled);
};

/* The operation's callback: counts the outcome, lets the source go. */
static void gb_op_done(gb_op_t *op, gboolean cancelled) {
  g_source_unref(op->timeout);
  op->host->done++;
  if (cancelled) op->host->cancelled++;
  g_free(op);
}

static gboolean gb_op_timed_out(gpointer data) {
  gb_op_t *op = data;
  op->host->timeouts++;
  op->cb(op, FALSE); /* G_SOURCE_REMOVE destroys the source after this */
  return G_SOURCE_REMOVE;
}

static void gb_op_cancel(gb_op_t *op) {
  g_source_destroy(op->timeout);
  op->cb(op, TRUE);
}

static void w7(const gb_peer_t *p, uint64_t n) {
  gb_host_t h;
  p->open(&h);
  gb_op_t **ops = bench_xmalloc(n * sizeof *ops);
  memset(ops, 0xff, n * sizeof *ops); /* the harness's: resident before rss0 */
  uint32_t *order = bench_cancel_order(n);
  uint64_t rss0 = bench_rss_bytes();
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    gb_op_t *op = g_new(gb_op_t, 1);
    op->host = &h;
    op->cb = gb_op_done;
    op->timeout = g_timeout_source_new(BENCH_W7_TIMEOUT_MS);
    g_source_set_callback(op->timeout, gb_op_timed_out, op, NULL);
    g_source_attach(op->timeout, h.ctx);
    ops[i] = op;
  }
  /* Every operation is pending: the peak. Reading /proc costs microseconds;
   * its time and CPU are taken out of the figures below. */
  uint64_t tr0 = bench_now_ns(), cr0 = bench_cpu_ns();
  uint64_t rss1 = bench_rss_bytes();
  uint64_t cr1 = bench_cpu_ns(), tr1 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) gb_op_cancel(ops[order[i]]);
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  gb_host_close(&h);
  if (h.timeouts != 0) bench_die("W7: %llu operations timed out", (unsigned long long)h.timeouts);
  gb_check(&h, "W7", n, n);
  double ns = (double)(t1 - t0 - (tr1 - tr0));
  if (ns >= BENCH_W7_TIMEOUT_MS * 1e6) bench_die("W7: took %.1f s, past the timeout", ns / 1e9);
  free(order);
  free(ops);
  bench_emit(p->name, "W7", n, "ns_per_task", ns / (double)n, "ns");
  bench_emit_cpu(p->name, "W7", n, "cpu_ns_per_task", (cpu1 - cpu0) - (cr1 - cr0), n);
  bench_emit(p->name, "W7", n, "bytes_per_task", ((double)rss1 - (double)rss0) / (double)n, "B");
}

int main(int argc, char **argv) {
  const char *wl = NULL, *variant = NULL;
  uint64_t n = 0;
  bench_args(argc, argv, &wl, &n, &variant);
  static const gb_peer_t glib_peer = {"glib", gb_pool_open, gb_submit_noop, gb_submit_wait};
  static const gb_peer_t gtask_peer = {"gtask", gb_host_open, gt_submit_noop, gt_submit_wait};
  const gb_peer_t *p = &glib_peer;
  if (variant) {
    if (strcmp(variant, "gtask") != 0) bench_die("unknown variant '%s' (only 'gtask')", variant);
    p = &gtask_peer;
  }
  int gtask = p == &gtask_peer;
  if (strcmp(wl, "W1") == 0) w1(p, n);
  else if (strcmp(wl, "W2") == 0) w2(p, n);
  else if (strcmp(wl, "W3") == 0) w3(p, n);
  else if (!gtask && strcmp(wl, "W3q") == 0) w3q(p, n);
  else if (strcmp(wl, "W4") == 0) w4(p, n);
  else if (!gtask && strcmp(wl, "W5") == 0) w5(p, n);
  else if (!gtask && strcmp(wl, "W6") == 0) w6(p, n);
  else if (!gtask && strcmp(wl, "W7") == 0) w7(p, n);
  else if (gtask && strcmp(wl, "W11") == 0) w11(p, n);
  else {
    fprintf(stderr, "bench: %s not implemented by %s\n", wl, p->name);
    return 3;
  }
  return 0;
}
