/* bench_apex: the Apex peer of the benchmarks (bench/README.md has the
 * workloads, figures and output protocol). `bench_apex W N [deferred|full]`.
 *
 * It is a host like any other: the public API only (apex/apex.h), plugin
 * `bench` (bench/plugin_bench.c) loaded from APEX_BENCH_PLUGIN, 2 workers,
 * every task with a deadline, outcomes delivered on this thread by polling
 * apex_manager_fd and calling apex_manager_dispatch. The variant `deferred`
 * (peer apex_deferred) runs W1 and W2 with the plugin's deferred no-op. W6t
 * is the incremental tree report (peer apex; it exits 3 unless plugin.h has
 * APEX_HAVE_PROGRESS_NODE) or, with the variant `full`, the whole tree per
 * report (peer apex_full). W7's pending tasks are the plugin's deferred
 * `pend`, cancelled by the host in bench_util.h's seeded order. The
 * variant `limits` (peer apex_limits) runs W1 with a global and a
 * per-plugin concurrency limit set (high enough never to hold a task: the
 * scheduler's checks are what it measures); W9 (fairness: one fairness key
 * floods N no-op tasks, then another submits 100; the p50/p99 of the
 * latter's wait, from submit to the start its handler stamps) runs with two keys (peer apex) or, with
 * the variant `fifo` (peer apex_fifo), both under one key, which is FIFO;
 * The variant `traced` (peer apex_traced) runs W1 with every task traced
 * and its spans exported to a file (docs/observability.md).
 * W10 queues N tasks across 1,000 concurrency keys limited to 1 each:
 * bytes per queued task (workers held), then CPU per task run through.
 *
 * Threads: main only; Apex's runtime and worker threads run the plugin and
 * never touch this file's state (events are dispatched on main).
 *
 * What can fail: any Apex call (the program dies naming the error), a task
 * ending in another state than the workload expects, a system call. On any
 * failure nothing goes to stdout and the exit status is nonzero; a workload
 * this peer does not run exits 3. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <apex/apex.h>

#include "bench_util.h"

#ifndef APEX_BENCH_PLUGIN
#error "APEX_BENCH_PLUGIN must name the bench plugin's .so (bench/CMakeLists.txt)"
#endif

#define DEADLINE_S 3600.0

/* host_t.want for "any terminal state" (W9: cancelled holders, succeeded
 * tasks, in whatever order they end). */
#define ANY_STATE ((apex_task_state_t)-1)

/* Metrics (issue 12): `nometrics` (peer apex_nometrics) turns Apex's
 * operation metrics off, the default being on; `mutexmx` (peer
 * apex_mutexmx) turns them off and keeps the same counters the way a
 * one-mutex-per-metric client would (no C Prometheus client is packaged in
 * Debian): submitted at the submit, outcome and end-to-end time at DONE
 * here, attempts and attempt time in the plugin's noop_mx. */
static int g_metrics_off;
#define MX_BOUNDS 15
static const uint64_t k_mx_bounds_ns[MX_BOUNDS] = {
    10000ull, 50000ull, 100000ull, 500000ull, 1000000ull, 5000000ull, 10000000ull, 50000000ull,
    100000000ull, 500000000ull, 1000000000ull, 5000000000ull, 10000000000ull, 60000000000ull,
    300000000000ull};
typedef struct mx_counter {
  pthread_mutex_t mu;
  uint64_t n;
} mx_counter_t;
static struct {
  int on;
  mx_counter_t submitted, succeeded;
  pthread_mutex_t e2e_mu;
  uint64_t e2e[MX_BOUNDS + 1], e2e_sum_ns;
  uint64_t *submit_ns; /* by task id - 1 */
  uint64_t n;
} g_mx = {0, {PTHREAD_MUTEX_INITIALIZER, 0}, {PTHREAD_MUTEX_INITIALIZER, 0},
          PTHREAD_MUTEX_INITIALIZER, {0}, 0, NULL, 0};

static void mx_add(mx_counter_t *c) {
  pthread_mutex_lock(&c->mu);
  c->n++;
  pthread_mutex_unlock(&c->mu);
}

static void mx_done(uint64_t id) {
  mx_add(&g_mx.succeeded);
  uint64_t d = id >= 1 && id <= g_mx.n ? bench_now_ns() - g_mx.submit_ns[id - 1] : 0;
  unsigned b = 0;
  while (b < MX_BOUNDS && d > k_mx_bounds_ns[b]) b++;
  pthread_mutex_lock(&g_mx.e2e_mu);
  g_mx.e2e[b]++;
  g_mx.e2e_sum_ns += d;
  pthread_mutex_unlock(&g_mx.e2e_mu);
}

/* What the event callback learns; read by the workloads between dispatches. */
typedef struct host {
  apex_manager_t *m;
  int fd;                  /* apex_manager_fd */
  const char *peer;
  apex_task_state_t want;  /* the terminal state every DONE must have */
  uint64_t done;           /* DONE events seen */
  /* W9: the second key's tasks, by id: their start times (stamp) */
  uint64_t b_first, b_n;
  uint64_t *b_done_ns;
  /* W6, W6t */
  uint64_t progress;       /* PROGRESS events seen */
  double last_pct;         /* percentage of the last one */
  int64_t flood_ns, flood_cpu_ns, flood_process_cpu_ns;
  int64_t flood_cpu_sum; /* every flood's thread CPU (Wroll) */
} host_t;

static void on_event(const apex_event_t *ev, void *user) {
  host_t *h = user;
  if (ev->type == APEX_EVENT_PROGRESS) {
    h->progress++;
    h->last_pct = apex_progress_percentage(ev->progress);
    return;
  }
  if (ev->type != APEX_EVENT_DONE) return;
  if (g_mx.on) mx_done(ev->task_id);
  if (h->b_n && ev->task_id >= h->b_first && ev->task_id < h->b_first + h->b_n)
    h->b_done_ns[ev->task_id - h->b_first] =
        (uint64_t)json_integer_value(json_object_get(ev->result, "t"));
  if (h->want != ANY_STATE && ev->state != h->want)
    bench_die("task %" PRIu64 " ended %s, want %s: %s", ev->task_id,
              apex_task_state_name(ev->state), apex_task_state_name(h->want),
              ev->error ? apex_error_message(ev->error) : "no error");
  if (ev->result && json_is_object(ev->result)) { /* flood's and tree's; others' is null */
    json_t *ns = json_object_get(ev->result, "ns");
    json_t *cpu = json_object_get(ev->result, "thread_cpu_ns");
    json_t *pcpu = json_object_get(ev->result, "cpu_ns");
    if (json_is_integer(ns) && json_is_integer(cpu) && json_is_integer(pcpu)) {
      h->flood_ns = (int64_t)json_integer_value(ns);
      h->flood_cpu_ns = (int64_t)json_integer_value(cpu);
      h->flood_process_cpu_ns = (int64_t)json_integer_value(pcpu);
      h->flood_cpu_sum += h->flood_cpu_ns;
    }
  }
  h->done++;
}

/* Variant `traced` (peer apex_traced): every manager records every task
 * (ratio 1.0) and exports its spans as OTLP/JSON lines to this file, which
 * is unlinked as soon as the manager has it open (the writes still happen:
 * the cost measured is the spans' and the file's, not the disk's). */
static char g_trace_file[64];

static void host_open(host_t *h, const char *peer, unsigned mask) {
  memset(h, 0, sizeof *h);
  h->peer = peer;
  h->want = APEX_TASK_SUCCEEDED;
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = 2;
  cfg.delivery = APEX_DELIVER_DISPATCH;
  cfg.on_event = on_event;
  cfg.event_user = h;
  cfg.event_mask = mask;
  cfg.log_level = APEX_LOG_WARN;
#ifdef APEX_METRICS_OFF
  if (g_metrics_off) cfg.metrics = APEX_METRICS_OFF;
#endif
  if (g_trace_file[0]) {
    int fd = mkstemp(strcpy(g_trace_file, "/tmp/apex_bench_spans_XXXXXX"));
    if (fd < 0) bench_die("mkstemp: %s", strerror(errno));
    close(fd);
    cfg.trace_file = g_trace_file;
    cfg.trace_sampler = APEX_TRACE_RATIO;
    cfg.trace_ratio = 1.0;
  }
  int rc = apex_manager_new(&cfg, &h->m);
  if (g_trace_file[0]) unlink(g_trace_file);
  if (rc != APEX_OK) bench_die("apex_manager_new: %s", apex_strerror(rc));
  h->fd = apex_manager_fd(h->m);
  if (h->fd < 0) bench_die("apex_manager_fd: %s", apex_strerror(h->fd));
  apex_error_t *err = NULL;
  rc = apex_manager_load(h->m, APEX_BENCH_PLUGIN, &err);
  if (rc != APEX_OK) bench_die("load %s: %s", APEX_BENCH_PLUGIN, apex_error_message(err));
}

static void host_close(host_t *h) {
  int rc = apex_manager_destroy(h->m, -1);
  if (rc != APEX_OK) bench_die("apex_manager_destroy: %s", apex_strerror(rc));
  h->m = NULL;
}

/* Polls the manager's fd and dispatches until `target` DONE events came. */
static void pump_until(host_t *h, uint64_t target) {
  while (h->done < target) {
    struct pollfd p = {.fd = h->fd, .events = POLLIN};
    int n = poll(&p, 1, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      bench_die("poll: %s", strerror(errno));
    }
    int d = apex_manager_dispatch(h->m);
    if (d < 0) bench_die("apex_manager_dispatch: %s", apex_strerror(d));
  }
}

static apex_task_t *submit_o(host_t *h, const char *action, json_t *params,
                             apex_submit_opts_t *o) {
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(h->m, "bench", action, params, o, &t, &err);
  if (rc != APEX_OK) bench_die("submit bench.%s: %s", action, apex_error_message(err));
  return t;
}

static void sched_ok(int rc, apex_error_t *err, const char *what) {
  if (rc != APEX_OK) bench_die("%s: %s", what, apex_error_message(err));
}

static apex_task_t *submit(host_t *h, const char *action, json_t *params, double timeout_s) {
  apex_submit_opts_t opts;
  apex_submit_opts_init(&opts);
  opts.timeout_s = timeout_s;
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(h->m, "bench", action, params, &opts, &t, &err);
  if (rc != APEX_OK) bench_die("submit bench.%s: %s", action, apex_error_message(err));
  return t;
}

static void cancel(apex_task_t *t) {
  int rc = apex_task_cancel(t, NULL);
  if (rc != APEX_OK) bench_die("apex_task_cancel: %s", apex_strerror(rc));
}

/* Blocks (untimed) until the wait handlers have signalled `count` times. */
static void await_ready(int efd, uint64_t count) {
  uint64_t seen = 0;
  while (seen < count) seen += bench_efd_wait(efd);
  if (seen != count) bench_die("eventfd: %" PRIu64 " ready signals, want %" PRIu64, seen, count);
}

static json_t *wait_params(int efd) {
  json_t *p = json_pack("{s:i}", "ready_fd", efd);
  if (!p) bench_die("out of memory");
  return p;
}

/* Starts two wait tasks and returns once both handlers are blocked. */
static void occupy_workers(host_t *h, apex_task_t *w[2]) {
  int efd = bench_efd_new(0);
  json_t *p = wait_params(efd);
  for (int i = 0; i < 2; i++) w[i] = submit(h, "wait", p, DEADLINE_S);
  await_ready(efd, 2);
  json_decref(p);
  close(efd);
}

/* ------------------------------------------------------------ workloads */

static void w1(const char *peer, uint64_t n, const char *noop, int limits) {
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  if (limits) {
    apex_error_t *err = NULL;
    sched_ok(apex_manager_set_concurrency(h.m, APEX_SCOPE_GLOBAL, NULL, 64, &err), err,
             "global limit");
    sched_ok(apex_manager_set_concurrency(h.m, APEX_SCOPE_PLUGIN, "bench", 64, &err), err,
             "plugin limit");
  }
  if (g_mx.on) { /* task ids run 1..n in a new manager */
    g_mx.submit_ns = bench_xcalloc(n, sizeof *g_mx.submit_ns);
    g_mx.n = n;
  }
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    if (g_mx.on) {
      mx_add(&g_mx.submitted);
      g_mx.submit_ns[i] = bench_now_ns();
    }
    apex_task_release(submit(&h, noop, NULL, DEADLINE_S));
  }
  pump_until(&h, n);
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  apex_trace_stats_t ts = {.struct_size = sizeof ts};
  if (g_trace_file[0] && apex_manager_trace_stats(h.m, &ts) != APEX_OK) bench_die("trace stats");
  host_close(&h);
  double ns = (double)(t1 - t0);
  if (g_trace_file[0]) /* the spans the bounded queue let go by the last task's end */
    bench_emit(peer, "W1", n, "spans_dropped", (double)ts.spans_dropped, "spans");
  bench_emit(peer, "W1", n, "tasks_per_s", (double)n / (ns / 1e9), "tasks/s");
  bench_emit(peer, "W1", n, "ns_per_task", ns / (double)n, "ns");
  bench_emit_cpu(peer, "W1", n, "cpu_ns_per_task", cpu1 - cpu0, n);
  if (g_mx.on && (g_mx.submitted.n != n || g_mx.succeeded.n != n))
    bench_die("mutexmx counted %" PRIu64 " submits and %" PRIu64 " successes of %" PRIu64,
              g_mx.submitted.n, g_mx.succeeded.n, n);
  free(g_mx.submit_ns);
}

static void w2(const char *peer, uint64_t n, const char *noop) {
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  uint64_t *lat = bench_xcalloc(n, sizeof *lat);
  uint64_t cpu_sum = 0;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    apex_task_release(submit(&h, noop, NULL, DEADLINE_S));
    pump_until(&h, i + 1);
    lat[i] = bench_now_ns() - t0;
    cpu_sum += bench_cpu_ns() - cpu0;
  }
  host_close(&h);
  bench_emit_latencies(peer, "W2", n, lat, 1);
  bench_emit_cpu(peer, "W2", n, "cpu_ns_per_task", cpu_sum, n);
  free(lat);
}

static void w3(const char *peer, uint64_t n) {
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  h.want = APEX_TASK_CANCELLED;
  uint64_t *lat = bench_xcalloc(n, sizeof *lat);
  uint64_t cpu_sum = 0;
  int efd = bench_efd_new(0);
  json_t *p = wait_params(efd);
  /* BENCH_PLACEMENT=1: the handler adds the CPU it woke on (+1) to cpu_fd. */
  unsigned char *same = NULL;
  int cpu_fd = -1;
  if (bench_placement_on()) {
    same = bench_xcalloc(n, 1);
    cpu_fd = bench_efd_new(0);
    if (json_object_set_new(p, "cpu_fd", json_integer(cpu_fd)) != 0) bench_die("out of memory");
  }
  for (uint64_t i = 0; i < n; i++) {
    apex_task_t *t = submit(&h, "wait", p, DEADLINE_S);
    await_ready(efd, 1);
    int host_cpu = same ? bench_cpu_now() : -1;
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    cancel(t);
    pump_until(&h, i + 1);
    lat[i] = bench_now_ns() - t0;
    cpu_sum += bench_cpu_ns() - cpu0;
    if (same) same[i] = bench_efd_wait(cpu_fd) == (uint64_t)host_cpu + 1;
    apex_task_release(t);
  }
  json_decref(p);
  close(efd);
  host_close(&h);
  if (same) {
    close(cpu_fd);
    bench_emit_placement(peer, "W3", n, lat, same);
    free(same);
  }
  bench_emit_latencies(peer, "W3", n, lat, 0);
  bench_emit_cpu(peer, "W3", n, "cpu_ns_per_task", cpu_sum, n);
  free(lat);
}

static void w3q(const char *peer, uint64_t n) {
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  h.want = APEX_TASK_CANCELLED;
  uint64_t *lat = bench_xcalloc(n, sizeof *lat);
  uint64_t cpu_sum = 0;
  apex_task_t *w[2];
  occupy_workers(&h, w);
  for (uint64_t i = 0; i < n; i++) {
    apex_task_t *t = submit(&h, "noop", NULL, DEADLINE_S);
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    cancel(t);
    pump_until(&h, i + 1);
    lat[i] = bench_now_ns() - t0;
    cpu_sum += bench_cpu_ns() - cpu0;
    apex_task_release(t);
  }
  for (int i = 0; i < 2; i++) cancel(w[i]);
  pump_until(&h, n + 2);
  for (int i = 0; i < 2; i++) apex_task_release(w[i]);
  host_close(&h);
  bench_emit_latencies(peer, "W3q", n, lat, 0);
  bench_emit_cpu(peer, "W3q", n, "cpu_ns_per_task", cpu_sum, n);
  free(lat);
}

static void w4(const char *peer, uint64_t n) {
  const double timeout_s = 0.005;
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  h.want = APEX_TASK_TIMED_OUT;
  uint64_t *late = bench_xcalloc(n, sizeof *late);
  uint64_t cpu_sum = 0;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t_submit = bench_now_ns();
    apex_task_release(submit(&h, "wait", NULL, timeout_s));
    pump_until(&h, i + 1);
    uint64_t t_done = bench_now_ns(), due = t_submit + (uint64_t)(timeout_s * 1e9);
    cpu_sum += bench_cpu_ns() - cpu0;
    if (t_done < due)
      bench_die("timed out %" PRIu64 " ns before its deadline", due - t_done);
    late[i] = t_done - due;
  }
  host_close(&h);
  bench_emit_latencies(peer, "W4", n, late, 0);
  bench_emit_cpu(peer, "W4", n, "cpu_ns_per_task", cpu_sum, n);
  free(late);
}

static void w5(const char *peer, uint64_t n) {
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  h.want = APEX_TASK_CANCELLED;
  apex_task_t **tasks = bench_xcalloc(n, sizeof *tasks);
  memset(tasks, 0xff, n * sizeof *tasks); /* resident before rss0 */
  apex_task_t *w[2];
  occupy_workers(&h, w);
  uint64_t rss0 = bench_rss_bytes();
  uint64_t cpu0 = bench_cpu_ns();
  for (uint64_t i = 0; i < n; i++) tasks[i] = submit(&h, "noop", NULL, DEADLINE_S);
  uint64_t cpu1 = bench_cpu_ns();
  uint64_t rss1 = bench_rss_bytes();
  /* The queued ones first, so none starts when the workers come free. */
  for (uint64_t i = 0; i < n; i++) cancel(tasks[i]);
  for (int i = 0; i < 2; i++) cancel(w[i]);
  pump_until(&h, n + 2);
  for (uint64_t i = 0; i < n; i++) apex_task_release(tasks[i]);
  for (int i = 0; i < 2; i++) apex_task_release(w[i]);
  host_close(&h);
  free(tasks);
  double growth = rss1 > rss0 ? (double)(rss1 - rss0) : 0.0;
  bench_emit(peer, "W5", n, "bytes_per_task", growth / (double)n, "B");
  bench_emit_cpu(peer, "W5", n, "cpu_ns_per_task", cpu1 - cpu0, n);
}

/* W6 (nodes 0: the flood action, flat reports) and W6t (the tree action:
 * `nodes` sub-tasks, one changed per report; incremental or full). */
static void w6(const char *peer, const char *wl, uint64_t n, uint64_t nodes, int incremental) {
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE | APEX_EVENT_PROGRESS);
  h.flood_ns = h.flood_cpu_ns = h.flood_process_cpu_ns = -1;
  json_t *p = nodes ? json_pack("{s:I, s:I, s:i}", "n", (json_int_t)n, "nodes",
                                (json_int_t)nodes, "incremental", incremental)
                    : json_pack("{s:I}", "n", (json_int_t)n);
  if (!p) bench_die("out of memory");
  uint64_t cpu0 = bench_process_cpu_ns();
  apex_task_release(submit(&h, nodes ? "tree" : "flood", p, DEADLINE_S));
  pump_until(&h, 1);
  uint64_t cpu1 = bench_process_cpu_ns();
  json_decref(p);
  host_close(&h);
  if (h.flood_ns < 0 || h.flood_cpu_ns < 0 || h.flood_process_cpu_ns < 0)
    bench_die("%s: no {ns, thread_cpu_ns, cpu_ns} result", wl);
  if (h.progress == 0) bench_die("%s: no progress update reached the host", wl);
  double host_cpu = (double)(cpu1 - cpu0) - (double)h.flood_cpu_ns;
  bench_emit(peer, wl, n, "ns_per_update", (double)h.flood_ns / (double)n, "ns");
  bench_emit_cpu(peer, wl, n, "cpu_ns_per_update", (uint64_t)h.flood_process_cpu_ns, n);
  bench_emit(peer, wl, n, "delivered", (double)h.progress, "updates");
  bench_emit(peer, wl, n, "host_cpu_ms", host_cpu / 1e6, "ms");
  bench_emit(peer, wl, n, "final", h.last_pct == 100.0 ? 1 : 0, "bool");
}

/* Blocks until the plugin's pend starts signalled efd, dispatching events
 * meanwhile: a task that ends before its cancel (it could not be parked, or
 * timed out) ends the run in on_event, not in a wait that never returns. */
static void await_pending(host_t *h, int efd) {
  for (;;) {
    struct pollfd p[2] = {{.fd = efd, .events = POLLIN}, {.fd = h->fd, .events = POLLIN}};
    int r = poll(p, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      bench_die("poll: %s", strerror(errno));
    }
    if (p[1].revents & POLLIN) {
      int d = apex_manager_dispatch(h->m);
      if (d < 0) bench_die("apex_manager_dispatch: %s", apex_strerror(d));
    }
    if (p[0].revents & POLLIN) {
      bench_efd_wait(efd);
      return;
    }
  }
}

static void w7(const char *peer, uint64_t n) {
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  apex_task_t **tasks = bench_xcalloc(n, sizeof *tasks);
  memset(tasks, 0xff, n * sizeof *tasks); /* the harness's: resident before rss0 */
  uint32_t *order = bench_cancel_order(n);
  int efd = bench_efd_new(0);
  /* The set-up: the n-th pend start signals efd (pend itself has no params). */
  json_t *p = json_pack("{s:i, s:I}", "ready_fd", efd, "batch", (json_int_t)n);
  if (!p) bench_die("out of memory");
  apex_task_release(submit(&h, "pend_arm", p, DEADLINE_S));
  json_decref(p);
  pump_until(&h, 1);
  h.done = 0;
  h.want = APEX_TASK_CANCELLED;
  const double timeout_s = BENCH_W7_TIMEOUT_MS / 1e3;

  uint64_t rss0 = bench_rss_bytes();
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) tasks[i] = submit(&h, "pend", NULL, timeout_s);
  await_pending(&h, efd);
  uint64_t ph_s = bench_now_ns(), pc_s = bench_cpu_ns();
  if (h.done != 0) bench_die("W7: %" PRIu64 " tasks ended before their cancel", h.done);
  /* Every task is pending: the peak. Reading /proc costs microseconds; its
   * time and CPU are taken out of the figures below. */
  uint64_t tr0 = bench_now_ns(), cr0 = bench_cpu_ns();
  uint64_t rss1 = bench_rss_bytes();
  uint64_t cr1 = bench_cpu_ns(), tr1 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    apex_task_t *t = tasks[order[i]];
    cancel(t);
    apex_task_release(t); /* the host keeps no handle: the DONE event is its outcome */
  }
  uint64_t ph_c = bench_now_ns(), pc_c = bench_cpu_ns();
  pump_until(&h, n); /* on_event: each one cancelled, or the run dies */
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  /* With W7_PHASES set, the three phases' wall and CPU per task go to
   * stderr (bench/analysis.md reads them; the protocol's stdout is
   * unchanged): the submits until every task is pending (the workers'
   * starts included), the cancels, the delivery of the DONEs. */
  if (getenv("W7_PHASES"))
    fprintf(stderr,
            "phases ns/task wall: submit %.0f cancel %.0f pump %.0f | "
            "cpu: submit %.0f cancel %.0f pump %.0f\n",
            (double)(ph_s - t0) / (double)n, (double)(ph_c - tr1) / (double)n,
            (double)(t1 - ph_c) / (double)n, (double)(pc_s - cpu0) / (double)n,
            (double)(pc_c - cr1) / (double)n, (double)(cpu1 - pc_c) / (double)n);
  host_close(&h);
  close(efd);
  free(order);
  free(tasks);
  double ns = (double)(t1 - t0 - (tr1 - tr0));
  bench_emit(peer, "W7", n, "ns_per_task", ns / (double)n, "ns");
  bench_emit_cpu(peer, "W7", n, "cpu_ns_per_task", (cpu1 - cpu0) - (cr1 - cr0), n);
  bench_emit(peer, "W7", n, "bytes_per_task", ((double)rss1 - (double)rss0) / (double)n, "B");
}

/* W9: n no-op tasks under fairness key "A", then 100 under "B" (both "A"
 * with fifo), queued while both workers are held: how long B's tasks wait
 * from the workers' release to the start each handler stamps (a DONE's
 * delivery would queue behind A's). */
static void w9(const char *peer, uint64_t n, int fifo) {
  enum { NB = 100 };
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  apex_submit_opts_t a, b;
  apex_submit_opts_init(&a);
  apex_submit_opts_init(&b);
  a.timeout_s = b.timeout_s = DEADLINE_S;
  a.fairness_key = "A";
  b.fairness_key = fifo ? "A" : "B";
  uint64_t lat[NB];
  h.b_done_ns = bench_xcalloc(NB, sizeof *h.b_done_ns);
  /* The backlog is real: both workers held while the flood and B's tasks
   * are queued, then let go; a wait counts from that moment. */
  apex_task_t *w[2];
  occupy_workers(&h, w);
  for (uint64_t i = 0; i < n; i++) apex_task_release(submit_o(&h, "noop", NULL, &a));
  for (int i = 0; i < NB; i++) {
    apex_task_t *t = submit_o(&h, "stamp", NULL, &b);
    if (i == 0) h.b_first = apex_task_id(t);
    h.b_n = (uint64_t)i + 1;
    if (apex_task_id(t) != h.b_first + (uint64_t)i) bench_die("W9: B's task ids are not consecutive");
    apex_task_release(t);
  }
  h.want = ANY_STATE;
  uint64_t released = bench_now_ns();
  for (int i = 0; i < 2; i++) cancel(w[i]);
  pump_until(&h, n + NB + 2);
  for (int i = 0; i < 2; i++) apex_task_release(w[i]);
  for (int i = 0; i < NB; i++) lat[i] = h.b_done_ns[i] > released ? h.b_done_ns[i] - released : 0;
  host_close(&h);
  /* Quantiles of B's NB waits (size is the flood's). */
  bench_emit(peer, "W9", n, "p50", (double)bench_quantile(lat, NB, 0.50), "ns");
  bench_emit(peer, "W9", n, "p99", (double)bench_quantile(lat, NB, 0.99), "ns");
  free(h.b_done_ns);
}

/* One cost phase of W10: n no-op tasks submitted and run to the end in a
 * new manager, with a key each (keys[i % W10_KEYS], each limited to 1) or, with
 * keys NULL, none and no key limit: W1's workload. Returns the CPU time;
 * the wall time goes to *wall_ns when asked for. */
enum { W10_KEYS = 1000 };

static uint64_t w10_cost(const char *peer, uint64_t n, char (*keys)[8], uint64_t *wall_ns) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = DEADLINE_S;
  apex_error_t *err = NULL;
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  if (keys)
    sched_ok(apex_manager_set_concurrency(h.m, APEX_SCOPE_KEY, NULL, 1, &err), err,
             "key limit");
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < n; i++) {
    o.concurrency_key = keys ? keys[i % W10_KEYS] : NULL;
    apex_task_release(submit_o(&h, "noop", NULL, &o));
  }
  pump_until(&h, n);
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  host_close(&h);
  if (wall_ns) *wall_ns = t1 - t0;
  return cpu1 - cpu0;
}

/* W10: n tasks across 1,000 concurrency keys, each key limited to 1. */
static void w10(const char *peer, uint64_t n) {
  enum { KEYS = W10_KEYS };
  static char keys[KEYS][8];
  for (int i = 0; i < KEYS; i++) snprintf(keys[i], sizeof keys[i], "k%d", i);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = DEADLINE_S;
  apex_error_t *err = NULL;
  /* Memory: queued behind two held workers. */
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  sched_ok(apex_manager_set_concurrency(h.m, APEX_SCOPE_KEY, NULL, 1, &err), err, "key limit");
  h.want = APEX_TASK_CANCELLED;
  apex_task_t **tasks = bench_xcalloc(n, sizeof *tasks);
  memset(tasks, 0xff, n * sizeof *tasks);
  apex_task_t *w[2];
  occupy_workers(&h, w);
  uint64_t rss0 = bench_rss_bytes();
  for (uint64_t i = 0; i < n; i++) {
    o.concurrency_key = keys[i % KEYS];
    tasks[i] = submit_o(&h, "noop", NULL, &o);
  }
  uint64_t rss1 = bench_rss_bytes();
  for (uint64_t i = 0; i < n; i++) cancel(tasks[i]);
  for (int i = 0; i < 2; i++) cancel(w[i]);
  pump_until(&h, n + 2);
  for (uint64_t i = 0; i < n; i++) apex_task_release(tasks[i]);
  for (int i = 0; i < 2; i++) apex_task_release(w[i]);
  host_close(&h);
  free(tasks);
  double growth = rss1 > rss0 ? (double)(rss1 - rss0) : 0.0;
  bench_emit(peer, "W10", n, "bytes_per_task", growth / (double)n, "B");
  /* Cost: submitted and run through, in a new manager. W1's workload runs
   * just before and just after it in this process (a manager without the
   * key limit, the same tasks without a key), and the target compares W10
   * with their mean: on this shared VM the cost of every build moves by 2x
   * in phases of minutes, so W1's runs elsewhere in the driver's plan can
   * fall in another phase (bench/analysis.md, "W10 against W1"). */
  uint64_t ref0 = w10_cost(peer, n, NULL, NULL);
  uint64_t wall = 0;
  uint64_t cpu = w10_cost(peer, n, keys, &wall);
  uint64_t ref1 = w10_cost(peer, n, NULL, NULL);
  bench_emit(peer, "W10", n, "ns_per_task", (double)wall / (double)n, "ns");
  bench_emit_cpu(peer, "W10", n, "cpu_ns_per_task", cpu, n);
  bench_emit_cpu(peer, "W10", n, "w1_cpu_ns_per_task", (ref0 + ref1) / 2, n);
}

/* W11 fan-out: one task spawns n no-op children (apex_ctx_spawn) and
 * waits for them all; per child, against W1's per task. */
static void w11(const char *peer, uint64_t n) {
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  json_t *p = json_pack("{s:I}", "n", (json_int_t)n);
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  apex_task_release(submit(&h, "fan", p, DEADLINE_S));
  pump_until(&h, n + 1); /* every child's DONE, then the parent's */
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  host_close(&h);
  json_decref(p);
  bench_emit(peer, "W11", n, "ns_per_child", (double)(t1 - t0) / (double)n, "ns");
  bench_emit_cpu(peer, "W11", n, "cpu_ns_per_child", cpu1 - cpu0, n);
}

/* W12 cascade: a parent of n pending deferred children (bench.pend) is
 * cancelled; the time until the last child's DONE (they all come before
 * the parent's, which ends the wait). */
static void w12(const char *peer, uint64_t n) {
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE);
  h.want = APEX_TASK_CANCELLED;
  int efd = bench_efd_new(0);
  json_t *arm = json_pack("{s:i, s:I}", "ready_fd", efd, "batch", (json_int_t)n);
  h.want = APEX_TASK_SUCCEEDED;
  apex_task_release(submit(&h, "pend_arm", arm, DEADLINE_S));
  pump_until(&h, 1);
  h.done = 0;
  h.want = APEX_TASK_CANCELLED;
  json_t *p = json_pack("{s:I, s:s}", "n", (json_int_t)n, "child", "pend");
  apex_task_t *t = submit(&h, "fan", p, DEADLINE_S);
  await_ready(efd, 1); /* all n pending */
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  cancel(t);
  pump_until(&h, n + 1);
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  apex_task_release(t);
  host_close(&h);
  close(efd);
  json_decref(arm);
  json_decref(p);
  bench_emit(peer, "W12", n, "ms_to_last_cancelled", (double)(t1 - t0) / 1e6, "ms");
  bench_emit(peer, "W12", n, "ns_per_child", (double)(t1 - t0) / (double)n, "ns");
  bench_emit_cpu(peer, "W12", n, "cpu_ns_per_child", cpu1 - cpu0, n);
}

/* Host CPU per delivered update of a run: the process's CPU less the
 * flood handlers' own threads', over progress_delivered. */
static double host_cpu_per_delivered(host_t *h, uint64_t cpu, uint64_t *delivered) {
  apex_stats_t s = APEX_STATS_INIT;
  if (apex_manager_stats_v2(h->m, &s) != APEX_OK) bench_die("stats");
  *delivered = s.progress_delivered;
  double host = (double)cpu - (double)h->flood_cpu_sum;
  return s.progress_delivered ? host / (double)s.progress_delivered : 0;
}

/* Wroll: a parent of n flood children each reporting `updates` updates;
 * host CPU per delivered update, against one flood task alone. */
static void wroll(const char *peer, uint64_t n) {
  const uint64_t updates = 10000;
  uint64_t d1 = 0, dn = 0;
  host_t h;
  host_open(&h, peer, APEX_EVENT_DONE | APEX_EVENT_PROGRESS);
  json_t *p1 = json_pack("{s:I}", "n", (json_int_t)updates);
  uint64_t c0 = bench_cpu_ns();
  apex_task_release(submit(&h, "flood", p1, DEADLINE_S));
  pump_until(&h, 1);
  double single = host_cpu_per_delivered(&h, bench_cpu_ns() - c0, &d1);
  host_close(&h);
  host_open(&h, peer, APEX_EVENT_DONE | APEX_EVENT_PROGRESS);
  json_t *p = json_pack("{s:I, s:s, s:I}", "n", (json_int_t)n, "child", "flood", "child_n",
                        (json_int_t)updates);
  c0 = bench_cpu_ns();
  apex_task_release(submit(&h, "fan", p, DEADLINE_S));
  pump_until(&h, n + 1);
  double tree = host_cpu_per_delivered(&h, bench_cpu_ns() - c0, &dn);
  host_close(&h);
  json_decref(p1);
  json_decref(p);
  bench_emit(peer, "Wroll", n, "host_cpu_ns_per_delivered", tree, "ns");
  bench_emit(peer, "Wroll", n, "single_host_cpu_ns_per_delivered", single, "ns");
  bench_emit(peer, "Wroll", n, "delivered", (double)dn, "updates");
}

/* W6t's tree: as many nodes as issue 9 names. */
#define W6T_NODES 1000

int main(int argc, char **argv) {
  const char *wl = NULL, *variant = NULL;
  uint64_t n = 0;
  bench_args(argc, argv, &wl, &n, &variant);
  int deferred = 0, full = 0, limits = 0, fifo = 0, nometrics = 0, traced = 0;
  if (variant) {
    if (strcmp(variant, "nometrics") == 0)
      nometrics = g_metrics_off = 1;
    else if (strcmp(variant, "mutexmx") == 0)
      g_mx.on = g_metrics_off = 1;
    else if (strcmp(variant, "deferred") == 0)
      deferred = 1;
    else if (strcmp(variant, "full") == 0)
      full = 1;
    else if (strcmp(variant, "limits") == 0)
      limits = 1;
    else if (strcmp(variant, "fifo") == 0)
      fifo = 1;
    else if (strcmp(variant, "traced") == 0)
      traced = 1;
    else
      bench_die("unknown variant '%s' (deferred, full, limits, fifo, nometrics, mutexmx or traced)",
                variant);
  }
  const char *peer = deferred ? "apex_deferred"
                     : full   ? "apex_full"
                     : limits ? "apex_limits"
                     : fifo   ? "apex_fifo"
                     : nometrics ? "apex_nometrics"
                     : g_mx.on   ? "apex_mutexmx"
                     : traced    ? "apex_traced"
                              : "apex";
  if ((limits && strcmp(wl, "W1") != 0) || (fifo && strcmp(wl, "W9") != 0) ||
      (nometrics && strcmp(wl, "W1") != 0 && strcmp(wl, "W6") != 0) ||
      (g_mx.on && strcmp(wl, "W1") != 0) || (traced && strcmp(wl, "W1") != 0)) {
    fprintf(stderr, "bench: %s not implemented by %s\n", wl, peer);
    return 3;
  }
  const char *noop = deferred ? "noop_deferred" : g_mx.on ? "noop_mx" : "noop";
  if (traced) g_trace_file[0] = '-'; /* host_open makes the file */
  if (full) { /* only W6t has the variant */
    if (strcmp(wl, "W6t") != 0) {
      fprintf(stderr, "bench: %s not implemented by %s\n", wl, peer);
      return 3;
    }
    w6(peer, wl, n, W6T_NODES, 0);
  } else if (strcmp(wl, "W1") == 0) {
    w1(peer, n, noop, limits);
  } else if (!deferred && strcmp(wl, "W9") == 0) {
    w9(peer, n, fifo);
  } else if (!deferred && strcmp(wl, "W10") == 0) {
    w10(peer, n);
  } else if (strcmp(wl, "W2") == 0) {
    w2(peer, n, noop);
  } else if (!deferred && strcmp(wl, "W3") == 0) {
    w3(peer, n);
  } else if (!deferred && strcmp(wl, "W3q") == 0) {
    w3q(peer, n);
  } else if (!deferred && strcmp(wl, "W4") == 0) {
    w4(peer, n);
  } else if (!deferred && strcmp(wl, "W5") == 0) {
    w5(peer, n);
  } else if (!deferred && strcmp(wl, "W6") == 0) {
    w6(peer, wl, n, 0, 0);
  } else if (!deferred && strcmp(wl, "W6t") == 0) {
#ifdef APEX_HAVE_PROGRESS_NODE
    w6(peer, wl, n, W6T_NODES, 1);
#else
    fprintf(stderr, "bench: W6t not implemented by %s: its incremental reports need "
                    "APEX_HAVE_PROGRESS_NODE (apex/plugin.h); `full` runs today's\n", peer);
    return 3;
#endif
  } else if (!deferred && strcmp(wl, "W7") == 0) {
    w7(peer, n);
  } else if (!deferred && strcmp(wl, "W11") == 0) {
    w11(peer, n);
  } else if (!deferred && strcmp(wl, "W12") == 0) {
    w12(peer, n);
  } else if (!deferred && strcmp(wl, "Wroll") == 0) {
    wroll(peer, n);
  } else {
    fprintf(stderr, "bench: %s not implemented by %s\n", wl, peer);
    return 3;
  }
  return 0;
}
