/* bench_libuv: the libuv 1.44 peers of the benchmarks (bench/README.md).
 * `bench_libuv W N` is peer libuv; `bench_libuv W1 N prealloc` is peer
 * libuv_prealloc.
 *
 * What a competent libuv user writes: every task is a malloc'd struct holding
 * a uv_work_t, submitted with uv_queue_work from the loop thread, and its
 * after_work_cb (on the loop) checks the outcome and frees it. The variant
 * prealloc (W1 only) is the other way libuv users often write it: the
 * requests live in one array allocated before the clock starts, so no task
 * costs a malloc or a free. The pool is libuv's own, sized by
 * UV_THREADPOOL_SIZE=2. libuv cannot stop running work, so a blocked task
 * waits on its own "cancel" eventfd that the host writes; a task still in
 * libuv's queue is cancelled with uv_cancel; timeouts are uv_timer_t on the
 * loop. W7's deferred operations are a uv_timer_t each (the timeout), ended
 * by uv_timer_stop and the operation's callback.
 *
 * Threads: main = the loop thread = the host thread (submits, cancels, runs
 * every callback); libuv's 2 pool threads run work_cb. Work results cross to
 * the loop through libuv's own queue mutex.
 *
 * Failure: any failed call or wrong outcome ends the program (bench_die)
 * before a figure is printed. W6 is not implemented (exit 3): libuv has no
 * progress channel of its own; the floor peer measures the plain one. */
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/eventfd.h>
#include <uv.h>

#include "bench_util.h"

#define NS_PER_MS 1000000u
#define W4_TIMEOUT_MS 5u

/* "libuv", or "libuv_prealloc" for the variant: what every figure names. */
static const char *peer = "libuv";

#define CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr) - offsetof(type, field)))

/* ---------------------------------------------------------------- helpers */

static void uv_check(int r, const char *what) {
  if (r != 0) bench_die("%s: %s", what, uv_strerror(r));
}

/* uv_run(DEFAULT) returns nonzero only after uv_stop (W7's timeout), which
 * the workload then reports; every caller checks its own counts after. */
static void loop_run(uv_loop_t *loop) { (void)uv_run(loop, UV_RUN_DEFAULT); }

/* ------------------------------------------------------------------ tasks */

/* A no-op task: the struct a user allocates per uv_queue_work. */
typedef struct {
  uv_work_t req; /* req.data: the workload's context */
} noop_task_t;

static void noop_work(uv_work_t *req) { (void)req; }

static noop_task_t *noop_new(void *ctx) {
  noop_task_t *t = bench_xmalloc(sizeof *t);
  t->req.data = ctx;
  return t;
}

/* A task that blocks in work_cb until the host writes its cancel eventfd;
 * it first signals ready_fd (when >= 0) so the host knows it is waiting. */
typedef struct {
  uv_work_t req; /* req.data: the workload's context */
  int cancel_fd;
  int ready_fd;
  bool saw_cancel; /* written by work_cb, read in after_work_cb */
  int woke_cpu;    /* the CPU work_cb woke on (BENCH_PLACEMENT), as saw_cancel */
} blocked_task_t;

static void blocked_work(uv_work_t *req) {
  blocked_task_t *b = CONTAINER_OF(req, blocked_task_t, req);
  if (b->ready_fd >= 0) bench_efd_signal(b->ready_fd);
  bench_wait_readable(b->cancel_fd);
  b->woke_cpu = bench_cpu_now();
  b->saw_cancel = true;
}

static blocked_task_t *blocked_new(void *ctx, int ready_fd) {
  blocked_task_t *b = bench_xmalloc(sizeof *b);
  b->req.data = ctx;
  b->cancel_fd = bench_efd_new(0);
  b->ready_fd = ready_fd;
  b->saw_cancel = false;
  return b;
}

/* Checks a finished blocked task's outcome and frees it. */
static void blocked_finish(blocked_task_t *b, int status) {
  if (status != 0) bench_die("blocked task finished with %s", uv_strerror(status));
  if (!b->saw_cancel) bench_die("blocked task returned without its cancel");
  if (close(b->cancel_fd) != 0) bench_die("close: %s", strerror(errno));
  free(b);
}

/* Both pool threads held by blocked tasks (W3q, W5), so new work stays in
 * libuv's queue. */
typedef struct {
  blocked_task_t *b[2];
  int ready_fd;
  int done;
} blockers_t;

static void blocker_after(uv_work_t *req, int status) {
  blocked_task_t *b = CONTAINER_OF(req, blocked_task_t, req);
  blockers_t *bl = req->data;
  blocked_finish(b, status);
  bl->done++;
}

static void blockers_occupy(uv_loop_t *loop, blockers_t *bl) {
  bl->ready_fd = bench_efd_new(EFD_SEMAPHORE);
  bl->done = 0;
  for (int i = 0; i < 2; i++) {
    bl->b[i] = blocked_new(bl, bl->ready_fd);
    uv_check(uv_queue_work(loop, &bl->b[i]->req, blocked_work, blocker_after), "uv_queue_work");
  }
  bench_efd_wait(bl->ready_fd);
  bench_efd_wait(bl->ready_fd);
}

/* Lets both blockers return; the caller runs the loop to finish them. */
static void blockers_release(blockers_t *bl) {
  bench_efd_signal(bl->b[0]->cancel_fd);
  bench_efd_signal(bl->b[1]->cancel_fd);
}

static void blockers_check(blockers_t *bl) {
  if (bl->done != 2) bench_die("%d of 2 blockers finished", bl->done);
  if (close(bl->ready_fd) != 0) bench_die("close: %s", strerror(errno));
}

/* libuv starts its pool on the first uv_queue_work; one task through it
 * first keeps thread creation out of every peer's timings. */
static void warm_after(uv_work_t *req, int status) {
  uv_check(status, "warm-up task");
  *(bool *)req->data = true;
  free(CONTAINER_OF(req, noop_task_t, req));
}

static void warm_pool(uv_loop_t *loop) {
  bool done = false;
  noop_task_t *t = noop_new(&done);
  uv_check(uv_queue_work(loop, &t->req, noop_work, warm_after), "uv_queue_work");
  loop_run(loop);
  if (!done) bench_die("warm-up task did not complete");
}

/* ----------------------------------------------------------- W1 throughput */

typedef struct {
  uint64_t size, done;
  uint64_t t_last, cpu_last;
} w1_ctx_t;

static void w1_count(w1_ctx_t *c) {
  if (++c->done == c->size) {
    c->t_last = bench_now_ns();
    c->cpu_last = bench_cpu_ns();
  }
}

static void w1_after(uv_work_t *req, int status) {
  w1_ctx_t *c = req->data;
  uv_check(status, "W1 task");
  free(CONTAINER_OF(req, noop_task_t, req));
  w1_count(c);
}

/* The preallocated style: the request is a slot of the caller's array. */
static void w1_after_prealloc(uv_work_t *req, int status) {
  uv_check(status, "W1 task");
  w1_count(req->data);
}

static void run_w1_style(uv_loop_t *loop, uint64_t size, bool prealloc) {
  w1_ctx_t c = {.size = size};
  /* The array is allocated, not touched: its pages fault in as the submits
   * reach them, as in a program that sets it up and uses it once (and as in
   * the malloc style, whose requests are all live at once here). This is
   * how issue 9 measured libuv at 1.6-1.7 M tasks/s; an array touched
   * beforehand, reused as a long-running program would, runs 3-5x faster
   * on this machine, being then little more than libuv's queue. */
  noop_task_t *slots = prealloc ? bench_xmalloc(size * sizeof *slots) : NULL;
  warm_pool(loop);
  uint64_t c0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  /* All submits before the loop runs: the host thread is busy submitting,
   * completions pile up in libuv's queue and are taken in batches. */
  for (uint64_t i = 0; i < size; i++) {
    noop_task_t *t = prealloc ? &slots[i] : noop_new(&c);
    t->req.data = &c;
    uv_check(uv_queue_work(loop, &t->req, noop_work, prealloc ? w1_after_prealloc : w1_after),
             "uv_queue_work");
  }
  loop_run(loop);
  if (c.done != size) bench_die("W1: %" PRIu64 " of %" PRIu64 " completed", c.done, size);
  free(slots);
  double ns = (double)(c.t_last - t0);
  bench_emit(peer, "W1", size, "tasks_per_s", (double)size * 1e9 / ns, "tasks/s");
  bench_emit(peer, "W1", size, "ns_per_task", ns / (double)size, "ns");
  bench_emit_cpu(peer, "W1", size, "cpu_ns_per_task", c.cpu_last - c0, size);
}

static void run_w1(uv_loop_t *loop, uint64_t size) { run_w1_style(loop, size, false); }

static void run_w1_prealloc(uv_loop_t *loop, uint64_t size) { run_w1_style(loop, size, true); }

/* -------------------------------------------------------- W2 sequential */

typedef struct {
  uv_loop_t *loop;
  uint64_t size, done;
  uint64_t t_submit, cpu_submit, cpu_sum;
  uint64_t *lat;
} w2_ctx_t;

static void w2_after(uv_work_t *req, int status);

static void w2_submit(w2_ctx_t *c) {
  c->cpu_submit = bench_cpu_ns();
  c->t_submit = bench_now_ns();
  noop_task_t *t = noop_new(c);
  uv_check(uv_queue_work(c->loop, &t->req, noop_work, w2_after), "uv_queue_work");
}

static void w2_after(uv_work_t *req, int status) {
  uint64_t t1 = bench_now_ns();
  w2_ctx_t *c = req->data;
  c->cpu_sum += bench_cpu_ns() - c->cpu_submit;
  uv_check(status, "W2 task");
  free(CONTAINER_OF(req, noop_task_t, req));
  c->lat[c->done++] = t1 - c->t_submit;
  if (c->done < c->size) w2_submit(c);
}

static void run_w2(uv_loop_t *loop, uint64_t size) {
  w2_ctx_t c = {.loop = loop, .size = size, .lat = bench_xcalloc(size, sizeof(uint64_t))};
  warm_pool(loop);
  w2_submit(&c);
  loop_run(loop);
  if (c.done != size) bench_die("W2: %" PRIu64 " of %" PRIu64 " completed", c.done, size);
  bench_emit_latencies(peer, "W2", size, c.lat, true);
  bench_emit_cpu(peer, "W2", size, "cpu_ns_per_task", c.cpu_sum, size);
  free(c.lat);
}

/* ------------------------------------------------- W3 cancel a blocked task */

typedef struct {
  uint64_t done;
  uint64_t t1, cpu1;
  int woke_cpu; /* the last handler's (BENCH_PLACEMENT) */
} w3_ctx_t;

static void w3_after(uv_work_t *req, int status) {
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  w3_ctx_t *c = req->data;
  c->woke_cpu = CONTAINER_OF(req, blocked_task_t, req)->woke_cpu;
  blocked_finish(CONTAINER_OF(req, blocked_task_t, req), status);
  c->t1 = t1;
  c->cpu1 = cpu1;
  c->done++;
}

static void run_w3(uv_loop_t *loop, uint64_t size) {
  w3_ctx_t c = {0};
  uint64_t *lat = bench_xcalloc(size, sizeof(uint64_t));
  uint64_t cpu_sum = 0;
  int ready_fd = bench_efd_new(EFD_SEMAPHORE);
  unsigned char *same = bench_placement_on() ? bench_xcalloc(size, 1) : NULL;
  warm_pool(loop);
  for (uint64_t i = 0; i < size; i++) {
    blocked_task_t *b = blocked_new(&c, ready_fd);
    uv_check(uv_queue_work(loop, &b->req, blocked_work, w3_after), "uv_queue_work");
    bench_efd_wait(ready_fd); /* the loop is idle here: the task is in its wait */
    int host_cpu = same ? bench_cpu_now() : -1;
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    bench_efd_signal(b->cancel_fd);
    loop_run(loop);
    if (c.done != i + 1) bench_die("W3: sample %" PRIu64 " did not complete", i);
    lat[i] = c.t1 - t0;
    cpu_sum += c.cpu1 - cpu0;
    if (same) same[i] = c.woke_cpu == host_cpu;
  }
  if (close(ready_fd) != 0) bench_die("close: %s", strerror(errno));
  if (same) {
    bench_emit_placement(peer, "W3", size, lat, same);
    free(same);
  }
  bench_emit_latencies(peer, "W3", size, lat, false);
  bench_emit_cpu(peer, "W3", size, "cpu_ns_per_task", cpu_sum, size);
  free(lat);
}

/* ------------------------------------------------ W3q cancel a queued task */

typedef struct {
  uint64_t done, ran;
  uint64_t t1, cpu1;
} w3q_ctx_t;

static void w3q_work(uv_work_t *req) {
  /* Must never run: the task is cancelled while both threads are held.
   * Only read after the loop is done with the task. */
  ((w3q_ctx_t *)req->data)->ran++;
}

static void w3q_after(uv_work_t *req, int status) {
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  w3q_ctx_t *c = req->data;
  if (status != UV_ECANCELED) bench_die("W3q: queued task finished with status %d", status);
  free(CONTAINER_OF(req, noop_task_t, req));
  c->t1 = t1;
  c->cpu1 = cpu1;
  c->done++;
}

static void run_w3q(uv_loop_t *loop, uint64_t size) {
  w3q_ctx_t c = {0};
  blockers_t bl;
  uint64_t *lat = bench_xcalloc(size, sizeof(uint64_t));
  uint64_t cpu_sum = 0;
  blockers_occupy(loop, &bl);
  for (uint64_t i = 0; i < size; i++) {
    noop_task_t *t = noop_new(&c);
    uv_check(uv_queue_work(loop, &t->req, w3q_work, w3q_after), "uv_queue_work");
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    uv_check(uv_cancel((uv_req_t *)&t->req), "uv_cancel");
    /* The blockers keep the loop alive: turn it until this one is back. */
    while (c.done == i) (void)uv_run(loop, UV_RUN_ONCE);
    lat[i] = c.t1 - t0;
    cpu_sum += c.cpu1 - cpu0;
  }
  blockers_release(&bl);
  loop_run(loop);
  blockers_check(&bl);
  if (c.done != size || c.ran != 0)
    bench_die("W3q: %" PRIu64 " cancelled, %" PRIu64 " ran", c.done, c.ran);
  bench_emit_latencies(peer, "W3q", size, lat, false);
  bench_emit_cpu(peer, "W3q", size, "cpu_ns_per_task", cpu_sum, size);
  free(lat);
}

/* --------------------------------------------------------- W4 timeouts */

typedef struct {
  uint64_t size, fired, done;
  uint64_t t_submit, cpu_submit, cpu_sum;
  blocked_task_t *cur;
  uint64_t *lat;
} w4_ctx_t;

static void w4_timeout(uv_timer_t *timer) {
  uint64_t now = bench_now_ns();
  w4_ctx_t *c = timer->data;
  c->cpu_sum += bench_cpu_ns() - c->cpu_submit;
  uint64_t deadline = c->t_submit + W4_TIMEOUT_MS * NS_PER_MS;
  /* libuv's clock is in whole ms, cached per loop turn: a timer can fire a
   * little before the ns deadline; that is no lateness. */
  c->lat[c->fired++] = now > deadline ? now - deadline : 0;
  bench_efd_signal(c->cur->cancel_fd);
}

static void w4_after(uv_work_t *req, int status) {
  w4_ctx_t *c = req->data;
  if (c->fired != c->done + 1) bench_die("W4: task finished before its timeout");
  blocked_finish(CONTAINER_OF(req, blocked_task_t, req), status);
  c->done++;
}

static void run_w4(uv_loop_t *loop, uint64_t size) {
  w4_ctx_t c = {.size = size, .lat = bench_xcalloc(size, sizeof(uint64_t))};
  uv_timer_t timer;
  uv_check(uv_timer_init(loop, &timer), "uv_timer_init");
  timer.data = &c;
  warm_pool(loop);
  for (uint64_t i = 0; i < size; i++) {
    c.cur = blocked_new(&c, -1);
    c.cpu_submit = bench_cpu_ns();
    c.t_submit = bench_now_ns();
    uv_check(uv_queue_work(loop, &c.cur->req, blocked_work, w4_after), "uv_queue_work");
    uv_check(uv_timer_start(&timer, w4_timeout, W4_TIMEOUT_MS, 0), "uv_timer_start");
    loop_run(loop);
    if (c.done != i + 1) bench_die("W4: sample %" PRIu64 " did not complete", i);
  }
  uv_close((uv_handle_t *)&timer, NULL);
  loop_run(loop);
  bench_emit_latencies(peer, "W4", size, c.lat, false);
  bench_emit_cpu(peer, "W4", size, "cpu_ns_per_task", c.cpu_sum, size);
  free(c.lat);
}

/* ------------------------------------------------- W5 memory per queued task */

typedef struct {
  uint64_t done;
} w5_ctx_t;

static void w5_after(uv_work_t *req, int status) {
  w5_ctx_t *c = req->data;
  uv_check(status, "W5 task");
  free(CONTAINER_OF(req, noop_task_t, req));
  c->done++;
}

static void run_w5(uv_loop_t *loop, uint64_t size) {
  w5_ctx_t c = {0};
  blockers_t bl;
  blockers_occupy(loop, &bl);
  /* Each task's memory is its own malloc'd struct (libuv's queue is
   * intrusive): nothing to preallocate. */
  uint64_t rss0 = bench_rss_bytes();
  uint64_t cpu0 = bench_cpu_ns();
  for (uint64_t i = 0; i < size; i++) {
    noop_task_t *t = noop_new(&c);
    uv_check(uv_queue_work(loop, &t->req, noop_work, w5_after), "uv_queue_work");
  }
  uint64_t cpu1 = bench_cpu_ns();
  uint64_t rss1 = bench_rss_bytes();
  blockers_release(&bl);
  loop_run(loop);
  blockers_check(&bl);
  if (c.done != size) bench_die("W5: %" PRIu64 " of %" PRIu64 " completed", c.done, size);
  double growth = (double)rss1 - (double)rss0;
  bench_emit(peer, "W5", size, "bytes_per_task", growth / (double)size, "B");
  bench_emit_cpu(peer, "W5", size, "cpu_ns_per_task", cpu1 - cpu0, size);
}

/* ----------------------- W7 pending deferred operations, cancelled at random */

/* One deferred operation as a libuv user writes it: its timeout is a
 * uv_timer_t, its completion a callback with a status. Nothing runs it: it is
 * pending until its timeout fires or the host cancels it, which stops the
 * timer and calls the callback with UV_ECANCELED. */
typedef struct w7_op w7_op_t;
typedef struct w7_ctx w7_ctx_t;

struct w7_op {
  uv_timer_t timeout; /* timeout.data: the op */
  void (*cb)(w7_op_t *op, int status);
  w7_ctx_t *c;
};

struct w7_ctx {
  uint64_t size;
  uint64_t cancelled, timed_out, closed;
};

static void w7_closed(uv_handle_t *h) {
  w7_op_t *op = CONTAINER_OF(h, w7_op_t, timeout);
  op->c->closed++;
  free(op);
}

/* The operation's callback: counts the outcome, then lets its handle go. */
static void w7_done(w7_op_t *op, int status) {
  if (status == UV_ECANCELED)
    op->c->cancelled++;
  else
    op->c->timed_out++;
  uv_close((uv_handle_t *)&op->timeout, w7_closed);
}

static void w7_timed_out(uv_timer_t *timer) {
  w7_op_t *op = timer->data;
  op->cb(op, UV_ETIMEDOUT);
}

static void w7_cancel(w7_op_t *op) {
  uv_check(uv_timer_stop(&op->timeout), "uv_timer_stop");
  op->cb(op, UV_ECANCELED);
}

static void run_w7(uv_loop_t *loop, uint64_t size) {
  w7_ctx_t c = {.size = size};
  w7_op_t **ops = bench_xmalloc(size * sizeof *ops);
  memset(ops, 0xff, size * sizeof *ops); /* the harness's: resident before rss0 */
  uint32_t *order = bench_cancel_order(size);
  uint64_t rss0 = bench_rss_bytes();
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < size; i++) {
    w7_op_t *op = bench_xmalloc(sizeof *op);
    op->cb = w7_done;
    op->c = &c;
    uv_check(uv_timer_init(loop, &op->timeout), "uv_timer_init");
    op->timeout.data = op;
    uv_check(uv_timer_start(&op->timeout, w7_timed_out, BENCH_W7_TIMEOUT_MS, 0),
             "uv_timer_start");
    ops[i] = op;
  }
  /* Every operation is pending: the peak. Reading /proc costs microseconds;
   * its time and CPU are taken out of the figures below. */
  uint64_t tr0 = bench_now_ns(), cr0 = bench_cpu_ns();
  uint64_t rss1 = bench_rss_bytes();
  uint64_t cr1 = bench_cpu_ns(), tr1 = bench_now_ns();
  for (uint64_t i = 0; i < size; i++) w7_cancel(ops[order[i]]);
  loop_run(loop); /* the close callbacks: every op freed */
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  if (c.cancelled != size || c.timed_out != 0 || c.closed != size)
    bench_die("W7: %" PRIu64 " cancelled, %" PRIu64 " timed out, %" PRIu64 " freed of %" PRIu64,
              c.cancelled, c.timed_out, c.closed, size);
  double ns = (double)(t1 - t0 - (tr1 - tr0));
  if (ns >= BENCH_W7_TIMEOUT_MS * (double)NS_PER_MS)
    bench_die("W7: took %.1f s, past the operations' timeout", ns / 1e9);
  free(order);
  free(ops);
  bench_emit(peer, "W7", size, "ns_per_task", ns / (double)size, "ns");
  bench_emit_cpu(peer, "W7", size, "cpu_ns_per_task", (cpu1 - cpu0) - (cr1 - cr0), size);
  bench_emit(peer, "W7", size, "bytes_per_task", ((double)rss1 - (double)rss0) / (double)size, "B");
}

/* W12's peer: n pending timers (W7's operations) cancelled one by one; the
 * time from the first cancel until the last one's callback ran. */
static void run_w12(uv_loop_t *loop, uint64_t size) {
  w7_ctx_t c = {.size = size};
  w7_op_t **ops = bench_xmalloc(size * sizeof *ops);
  for (uint64_t i = 0; i < size; i++) {
    w7_op_t *op = bench_xmalloc(sizeof *op);
    op->cb = w7_done;
    op->c = &c;
    uv_check(uv_timer_init(loop, &op->timeout), "uv_timer_init");
    op->timeout.data = op;
    uv_check(uv_timer_start(&op->timeout, w7_timed_out, BENCH_W7_TIMEOUT_MS, 0),
             "uv_timer_start");
    ops[i] = op;
  }
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < size; i++) w7_cancel(ops[i]);
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  loop_run(loop); /* the close callbacks: every op freed */
  if (c.cancelled != size || c.timed_out != 0 || c.closed != size)
    bench_die("W12: %" PRIu64 " cancelled, %" PRIu64 " timed out of %" PRIu64, c.cancelled,
              c.timed_out, size);
  free(ops);
  bench_emit(peer, "W12", size, "ms_to_last_cancelled", (double)(t1 - t0) / 1e6, "ms");
  bench_emit(peer, "W12", size, "ns_per_child", (double)(t1 - t0) / (double)size, "ns");
  bench_emit_cpu(peer, "W12", size, "cpu_ns_per_child", cpu1 - cpu0, size);
}

/* ------------------------------------------------------------------- main */

static const struct {
  const char *name;
  void (*run)(uv_loop_t *loop, uint64_t size);
} workloads[] = {
    {"W1", run_w1}, {"W2", run_w2}, {"W3", run_w3}, {"W3q", run_w3q},
    {"W4", run_w4}, {"W5", run_w5}, {"W7", run_w7}, {"W12", run_w12},
};

int main(int argc, char **argv) {
  const char *workload, *variant;
  uint64_t size;
  bench_args(argc, argv, &workload, &size, &variant);
  void (*run)(uv_loop_t *, uint64_t) = NULL;
  if (variant) {
    if (strcmp(variant, "prealloc") != 0)
      bench_die("unknown variant '%s' (only 'prealloc')", variant);
    peer = "libuv_prealloc";
    if (strcmp(workload, "W1") == 0) run = run_w1_prealloc;
  } else {
    for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++)
      if (strcmp(workloads[i].name, workload) == 0) run = workloads[i].run;
  }
  if (!run) {
    fprintf(stderr, "bench: %s not implemented by %s\n", workload, peer);
    return 3;
  }
  /* libuv reads it once, when its pool starts: before any uv call. */
  if (setenv("UV_THREADPOOL_SIZE", "2", 1) != 0) bench_die("setenv: %s", strerror(errno));
  uv_loop_t loop;
  uv_check(uv_loop_init(&loop), "uv_loop_init");
  run(&loop, size);
  uv_check(uv_loop_close(&loop), "uv_loop_close");
  return 0;
}
