/* bench_floor: the hand-written "floor" peer of the benchmarks
 * (bench/README.md): the least a runtime can do for the same work, with no
 * library, to show what the others' features cost.
 *
 * The runtime (top of this file): a fixed pool of 2 pthreads taking tasks
 * from a run queue (mutex + condvar + intrusive singly linked FIFO); results
 * come back through a completion queue (mutex + intrusive list + an eventfd
 * written only when the list goes from empty to non-empty), which the host
 * thread poll()s, with a timerfd when it has timeouts; it swaps the whole
 * list out under the mutex and runs the completions with no lock held.
 * Cancel: a per-task atomic flag plus an eventfd the blocked handler polls;
 * a task still queued is unlinked from the run queue and its completion
 * posted to the completion queue, so it reaches the host the way every
 * completion does (a completion called inline from the cancel would cost
 * ~40 ns, but no runtime whose callbacks come from its loop, libuv's
 * uv_cancel included, delivers that way). Timeouts: a timerfd (W4), or a binary min-heap of
 * deadlines with one timerfd armed for the earliest (W7, whose pending
 * operations the host cancels itself: out of the heap, then the operation's
 * callback, as libuv's uv_timer_stop plus a callback).
 *
 * Threads: main = the host (submits, polls, cancels, runs completions); 2
 * workers run handlers and post completions. Locks: run_mu and done_mu are
 * never held together, and no callback runs under either.
 *
 * Failure: any failed call or wrong outcome ends the program (bench_die)
 * before a figure is printed. */
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

#include "bench_util.h"

#define PEER "floor"
#define NS_PER_MS 1000000u
#define NS_PER_S 1000000000u
#define W4_TIMEOUT_NS (5u * NS_PER_MS)
#define W7_TIMEOUT_NS ((uint64_t)BENCH_W7_TIMEOUT_MS * NS_PER_MS)
#define FLOOR_THREADS 2

#define CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr) - offsetof(type, field)))

/* ---------------------------------------------------------------- helpers */

static void lock(pthread_mutex_t *mu) {
  if (pthread_mutex_lock(mu) != 0) bench_die("pthread_mutex_lock");
}

static void unlock(pthread_mutex_t *mu) {
  if (pthread_mutex_unlock(mu) != 0) bench_die("pthread_mutex_unlock");
}

static void xclose(int fd) {
  if (close(fd) != 0) bench_die("close: %s", strerror(errno));
}

/* Reads a non-blocking eventfd or timerfd; false if it had nothing. */
static bool fd_consume(int fd) {
  uint64_t v;
  ssize_t n;
  do n = read(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return false;
  if (n != (ssize_t)sizeof v) bench_die("read fd: %s", strerror(errno));
  return true;
}

static int timerfd_new(void) {
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) bench_die("timerfd_create: %s", strerror(errno));
  return fd;
}

/* Arms fd to expire once at deadline_ns (CLOCK_MONOTONIC, bench_now_ns). */
static void timerfd_arm_at(int fd, uint64_t deadline_ns) {
  struct itimerspec its = {
      .it_value = {.tv_sec = (time_t)(deadline_ns / NS_PER_S),
                   .tv_nsec = (long)(deadline_ns % NS_PER_S)},
  };
  if (timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) != 0)
    bench_die("timerfd_settime: %s", strerror(errno));
}

/* ------------------------------------------------------------ the runtime */

enum { FLOOR_OK = 0, FLOOR_CANCELLED = 1 };

typedef struct floor_task floor_task_t;
struct floor_task {
  floor_task_t *next;            /* in the run queue, then the completion queue */
  void (*run)(floor_task_t *t);  /* on a worker; NULL for a message (W6) */
  void (*done)(floor_task_t *t); /* on the host; owns t from then on */
  void *ctx;                     /* the workload's */
  int status;                    /* FLOOR_OK or FLOOR_CANCELLED */
};

typedef struct {
  floor_task_t *head, *tail;
} floor_list_t;

static void list_append(floor_list_t *l, floor_task_t *t) {
  t->next = NULL;
  if (l->tail)
    l->tail->next = t;
  else
    l->head = t;
  l->tail = t;
}

typedef struct {
  pthread_mutex_t run_mu; /* guards runq, stop */
  pthread_cond_t run_cv;
  floor_list_t runq;
  bool stop;
  pthread_mutex_t done_mu; /* guards doneq */
  floor_list_t doneq;
  int done_fd; /* eventfd: doneq went non-empty */
  pthread_t threads[FLOOR_THREADS];
} floor_t;

/* Any thread: hands t to the host. Only the empty -> non-empty transition
 * writes the eventfd; the host reads it before it swaps the list, so an item
 * pushed after the swap finds the list empty and signals again. */
static void floor_complete(floor_t *f, floor_task_t *t) {
  lock(&f->done_mu);
  bool was_empty = f->doneq.head == NULL;
  list_append(&f->doneq, t);
  unlock(&f->done_mu);
  if (was_empty) bench_efd_signal(f->done_fd);
}

static void *floor_worker(void *arg) {
  floor_t *f = arg;
  for (;;) {
    lock(&f->run_mu);
    while (!f->runq.head && !f->stop)
      if (pthread_cond_wait(&f->run_cv, &f->run_mu) != 0) bench_die("pthread_cond_wait");
    floor_task_t *t = f->runq.head;
    if (!t) { /* stop, and nothing left */
      unlock(&f->run_mu);
      return NULL;
    }
    f->runq.head = t->next;
    if (!f->runq.head) f->runq.tail = NULL;
    unlock(&f->run_mu);
    t->run(t);
    floor_complete(f, t);
  }
}

static void floor_init(floor_t *f) {
  memset(f, 0, sizeof *f);
  if (pthread_mutex_init(&f->run_mu, NULL) != 0 || pthread_cond_init(&f->run_cv, NULL) != 0 ||
      pthread_mutex_init(&f->done_mu, NULL) != 0)
    bench_die("mutex/cond init");
  f->done_fd = bench_efd_new(EFD_NONBLOCK);
  for (int i = 0; i < FLOOR_THREADS; i++)
    if (pthread_create(&f->threads[i], NULL, floor_worker, f) != 0) bench_die("pthread_create");
}

/* The caller has seen every completion it submitted. */
static void floor_destroy(floor_t *f) {
  lock(&f->run_mu);
  f->stop = true;
  if (pthread_cond_broadcast(&f->run_cv) != 0) bench_die("pthread_cond_broadcast");
  unlock(&f->run_mu);
  for (int i = 0; i < FLOOR_THREADS; i++)
    if (pthread_join(f->threads[i], NULL) != 0) bench_die("pthread_join");
  if (f->runq.head || f->doneq.head) bench_die("floor: tasks left at exit");
  xclose(f->done_fd);
  pthread_cond_destroy(&f->run_cv);
  pthread_mutex_destroy(&f->run_mu);
  pthread_mutex_destroy(&f->done_mu);
}

static void floor_submit(floor_t *f, floor_task_t *t) {
  t->status = FLOOR_OK;
  lock(&f->run_mu);
  list_append(&f->runq, t);
  if (pthread_cond_signal(&f->run_cv) != 0) bench_die("pthread_cond_signal");
  unlock(&f->run_mu);
}

/* Host: takes t out of the run queue if no worker has it yet; the caller
 * then runs its completion itself. */
static bool floor_unqueue(floor_t *f, floor_task_t *t) {
  lock(&f->run_mu);
  floor_task_t *prev = NULL, *cur = f->runq.head;
  while (cur && cur != t) {
    prev = cur;
    cur = cur->next;
  }
  if (cur) {
    if (prev)
      prev->next = cur->next;
    else
      f->runq.head = cur->next;
    if (f->runq.tail == cur) f->runq.tail = prev;
  }
  unlock(&f->run_mu);
  return cur != NULL;
}

/* Host: blocks until completions arrive or timer_fd (-1: none) expires.
 * An expiry is returned first, before any completion runs, so the caller
 * sees its timeout as soon as the host wakes; otherwise runs every
 * completion posted so far and returns false. */
static bool floor_wait(floor_t *f, int timer_fd) {
  struct pollfd p[2] = {{.fd = f->done_fd, .events = POLLIN}, {.fd = timer_fd, .events = POLLIN}};
  int r;
  do r = poll(p, timer_fd >= 0 ? 2 : 1, -1);
  while (r < 0 && errno == EINTR);
  if (r < 0) bench_die("poll: %s", strerror(errno));
  if (timer_fd >= 0 && (p[1].revents & POLLIN) && fd_consume(timer_fd)) return true;
  if (!(p[0].revents & POLLIN)) return false;
  fd_consume(f->done_fd);
  lock(&f->done_mu);
  floor_task_t *t = f->doneq.head;
  f->doneq.head = f->doneq.tail = NULL;
  unlock(&f->done_mu);
  while (t) {
    floor_task_t *next = t->next;
    t->done(t);
    t = next;
  }
  return false;
}

/* ------------------------------------------------------------------ tasks */

static void noop_run(floor_task_t *t) { (void)t; }

static floor_task_t *noop_new(void *ctx, void (*done)(floor_task_t *)) {
  floor_task_t *t = bench_xmalloc(sizeof *t);
  t->run = noop_run;
  t->done = done;
  t->ctx = ctx;
  return t;
}

/* A handler that waits, untimed, until cancelled: it signals ready_fd (when
 * >= 0) and polls its cancel eventfd; the flag is what a handler doing CPU
 * work would check, the eventfd what wakes one that is blocked. */
typedef struct {
  floor_task_t base;
  atomic_bool cancel;
  int cancel_fd;
  int ready_fd;
  int woke_cpu; /* the CPU blocked_run woke on (BENCH_PLACEMENT) */
} blocked_task_t;

static void blocked_run(floor_task_t *t) {
  blocked_task_t *b = CONTAINER_OF(t, blocked_task_t, base);
  if (b->ready_fd >= 0) bench_efd_signal(b->ready_fd);
  if (!atomic_load_explicit(&b->cancel, memory_order_acquire)) bench_wait_readable(b->cancel_fd);
  if (!atomic_load_explicit(&b->cancel, memory_order_acquire))
    bench_die("blocked handler woken without its cancel flag");
  b->woke_cpu = bench_cpu_now();
  t->status = FLOOR_CANCELLED;
}

static blocked_task_t *blocked_new(void *ctx, int ready_fd, void (*done)(floor_task_t *)) {
  blocked_task_t *b = bench_xmalloc(sizeof *b);
  b->base.run = blocked_run;
  b->base.done = done;
  b->base.ctx = ctx;
  atomic_init(&b->cancel, false);
  b->cancel_fd = bench_efd_new(0);
  b->ready_fd = ready_fd;
  return b;
}

static void blocked_cancel(blocked_task_t *b) {
  atomic_store_explicit(&b->cancel, true, memory_order_release);
  bench_efd_signal(b->cancel_fd);
}

/* Checks a blocked task came back cancelled, and frees it. */
static void blocked_finish(floor_task_t *t) {
  blocked_task_t *b = CONTAINER_OF(t, blocked_task_t, base);
  if (t->status != FLOOR_CANCELLED) bench_die("blocked task finished with status %d", t->status);
  xclose(b->cancel_fd);
  free(b);
}

/* Both workers held by blocked tasks (W3q, W5), so new tasks stay queued. */
typedef struct {
  blocked_task_t *b[FLOOR_THREADS];
  int ready_fd;
  int done;
} blockers_t;

static void blocker_done(floor_task_t *t) {
  blockers_t *bl = t->ctx;
  blocked_finish(t);
  bl->done++;
}

static void blockers_occupy(floor_t *f, blockers_t *bl) {
  bl->ready_fd = bench_efd_new(EFD_SEMAPHORE);
  bl->done = 0;
  for (int i = 0; i < FLOOR_THREADS; i++) {
    bl->b[i] = blocked_new(bl, bl->ready_fd, blocker_done);
    floor_submit(f, &bl->b[i]->base);
  }
  for (int i = 0; i < FLOOR_THREADS; i++) bench_efd_wait(bl->ready_fd);
}

/* Lets both blockers return; the caller waits for blockers_done(). */
static void blockers_release(blockers_t *bl) {
  for (int i = 0; i < FLOOR_THREADS; i++) blocked_cancel(bl->b[i]);
}

static bool blockers_done(const blockers_t *bl) { return bl->done == FLOOR_THREADS; }

static void blockers_close(blockers_t *bl) { xclose(bl->ready_fd); }

/* ----------------------------------------------------------- W1 throughput */

typedef struct {
  uint64_t size, done;
  uint64_t t_last, cpu_last;
} w1_ctx_t;

static void w1_done(floor_task_t *t) {
  w1_ctx_t *c = t->ctx;
  if (t->status != FLOOR_OK) bench_die("W1: task status %d", t->status);
  free(t);
  if (++c->done == c->size) {
    c->t_last = bench_now_ns();
    c->cpu_last = bench_cpu_ns();
  }
}

static void run_w1(floor_t *f, uint64_t size) {
  w1_ctx_t c = {.size = size};
  /* The workers exist since floor_init: no start-up inside the timing. */
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < size; i++) floor_submit(f, noop_new(&c, w1_done));
  while (c.done < size) floor_wait(f, -1);
  double ns = (double)(c.t_last - t0);
  bench_emit(PEER, "W1", size, "tasks_per_s", (double)size * 1e9 / ns, "tasks/s");
  bench_emit(PEER, "W1", size, "ns_per_task", ns / (double)size, "ns");
  bench_emit_cpu(PEER, "W1", size, "cpu_ns_per_task", c.cpu_last - cpu0, size);
}

/* -------------------------------------------------------- W2 sequential */

/* A sample's end, as its completion sees it: wall clock, then CPU. */
typedef struct {
  uint64_t done;
  uint64_t t1, cpu1;
  int woke_cpu; /* W3: the last handler's (BENCH_PLACEMENT) */
} seq_ctx_t;

static void seq_end(seq_ctx_t *c, uint64_t t1) {
  c->t1 = t1;
  c->cpu1 = bench_cpu_ns();
  c->done++;
}

static void w2_done(floor_task_t *t) {
  uint64_t t1 = bench_now_ns();
  seq_ctx_t *c = t->ctx;
  if (t->status != FLOOR_OK) bench_die("W2: task status %d", t->status);
  free(t);
  seq_end(c, t1);
}

static void run_w2(floor_t *f, uint64_t size) {
  seq_ctx_t c = {0};
  uint64_t *lat = bench_xcalloc(size, sizeof(uint64_t));
  uint64_t cpu_sum = 0;
  for (uint64_t i = 0; i < size; i++) {
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    floor_submit(f, noop_new(&c, w2_done));
    while (c.done == i) floor_wait(f, -1);
    lat[i] = c.t1 - t0;
    cpu_sum += c.cpu1 - cpu0;
  }
  bench_emit_latencies(PEER, "W2", size, lat, true);
  bench_emit_cpu(PEER, "W2", size, "cpu_ns_per_task", cpu_sum, size);
  free(lat);
}

/* ------------------------------------------------- W3 cancel a blocked task */

static void w3_done(floor_task_t *t) {
  uint64_t t1 = bench_now_ns();
  seq_ctx_t *c = t->ctx;
  c->woke_cpu = CONTAINER_OF(t, blocked_task_t, base)->woke_cpu;
  blocked_finish(t);
  seq_end(c, t1);
}

static void run_w3(floor_t *f, uint64_t size) {
  seq_ctx_t c = {0};
  uint64_t *lat = bench_xcalloc(size, sizeof(uint64_t));
  uint64_t cpu_sum = 0;
  int ready_fd = bench_efd_new(EFD_SEMAPHORE);
  unsigned char *same = bench_placement_on() ? bench_xcalloc(size, 1) : NULL;
  for (uint64_t i = 0; i < size; i++) {
    blocked_task_t *b = blocked_new(&c, ready_fd, w3_done);
    floor_submit(f, &b->base);
    bench_efd_wait(ready_fd); /* the handler is in its wait */
    int host_cpu = same ? bench_cpu_now() : -1;
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    blocked_cancel(b);
    while (c.done == i) floor_wait(f, -1);
    lat[i] = c.t1 - t0;
    cpu_sum += c.cpu1 - cpu0;
    if (same) same[i] = c.woke_cpu == host_cpu;
  }
  xclose(ready_fd);
  if (same) {
    bench_emit_placement(PEER, "W3", size, lat, same);
    free(same);
  }
  bench_emit_latencies(PEER, "W3", size, lat, false);
  bench_emit_cpu(PEER, "W3", size, "cpu_ns_per_task", cpu_sum, size);
  free(lat);
}

/* ------------------------------------------------ W3q cancel a queued task */

static void w3q_done(floor_task_t *t) {
  uint64_t t1 = bench_now_ns();
  seq_ctx_t *c = t->ctx;
  if (t->status != FLOOR_CANCELLED) bench_die("W3q: queued task status %d", t->status);
  free(t);
  seq_end(c, t1);
}

static void run_w3q(floor_t *f, uint64_t size) {
  seq_ctx_t c = {0};
  blockers_t bl;
  uint64_t *lat = bench_xcalloc(size, sizeof(uint64_t));
  uint64_t cpu_sum = 0;
  blockers_occupy(f, &bl);
  for (uint64_t i = 0; i < size; i++) {
    floor_task_t *t = noop_new(&c, w3q_done);
    floor_submit(f, t);
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t0 = bench_now_ns();
    if (!floor_unqueue(f, t)) bench_die("W3q: queued task was taken by a worker");
    t->status = FLOOR_CANCELLED;
    floor_complete(f, t);
    while (c.done != i + 1) floor_wait(f, -1);
    lat[i] = c.t1 - t0;
    cpu_sum += c.cpu1 - cpu0;
  }
  blockers_release(&bl);
  while (!blockers_done(&bl)) floor_wait(f, -1);
  blockers_close(&bl);
  bench_emit_latencies(PEER, "W3q", size, lat, false);
  bench_emit_cpu(PEER, "W3q", size, "cpu_ns_per_task", cpu_sum, size);
  free(lat);
}

/* --------------------------------------------------------- W4 timeouts */

typedef struct {
  uint64_t fired, done;
} w4_ctx_t;

static void w4_done(floor_task_t *t) {
  w4_ctx_t *c = t->ctx;
  if (c->fired != c->done + 1) bench_die("W4: task finished before its timeout");
  blocked_finish(t);
  c->done++;
}

static void run_w4(floor_t *f, uint64_t size) {
  w4_ctx_t c = {0};
  uint64_t *lat = bench_xcalloc(size, sizeof(uint64_t));
  uint64_t cpu_sum = 0;
  int tfd = timerfd_new();
  for (uint64_t i = 0; i < size; i++) {
    blocked_task_t *b = blocked_new(&c, -1, w4_done);
    uint64_t cpu0 = bench_cpu_ns();
    uint64_t t_submit = bench_now_ns();
    floor_submit(f, &b->base);
    timerfd_arm_at(tfd, t_submit + W4_TIMEOUT_NS);
    while (c.done == i) {
      if (!floor_wait(f, tfd)) continue;
      uint64_t now = bench_now_ns();
      cpu_sum += bench_cpu_ns() - cpu0;
      /* An expired ABSTIME timerfd is never early; guard anyway. */
      uint64_t deadline = t_submit + W4_TIMEOUT_NS;
      lat[c.fired++] = now > deadline ? now - deadline : 0;
      blocked_cancel(b);
    }
  }
  xclose(tfd);
  bench_emit_latencies(PEER, "W4", size, lat, false);
  bench_emit_cpu(PEER, "W4", size, "cpu_ns_per_task", cpu_sum, size);
  free(lat);
}

/* ------------------------------------------------- W5 memory per queued task */

typedef struct {
  uint64_t done;
} count_ctx_t;

static void w5_done(floor_task_t *t) {
  count_ctx_t *c = t->ctx;
  if (t->status != FLOOR_OK) bench_die("W5: task status %d", t->status);
  free(t);
  c->done++;
}

static void run_w5(floor_t *f, uint64_t size) {
  count_ctx_t c = {0};
  blockers_t bl;
  blockers_occupy(f, &bl);
  /* The run queue is intrusive: each task is its own malloc'd struct. */
  uint64_t rss0 = bench_rss_bytes();
  uint64_t cpu0 = bench_cpu_ns();
  for (uint64_t i = 0; i < size; i++) floor_submit(f, noop_new(&c, w5_done));
  uint64_t cpu1 = bench_cpu_ns();
  uint64_t rss1 = bench_rss_bytes();
  blockers_release(&bl);
  while (c.done < size || !blockers_done(&bl)) floor_wait(f, -1);
  blockers_close(&bl);
  bench_emit(PEER, "W5", size, "bytes_per_task", ((double)rss1 - (double)rss0) / (double)size,
             "B");
  bench_emit_cpu(PEER, "W5", size, "cpu_ns_per_task", cpu1 - cpu0, size);
}

/* ------------------------------------------------------ W6 progress flood */

typedef struct {
  floor_task_t base; /* run NULL: a message to the host, no work */
  unsigned percent;
  const char *message;
} w6_update_t;

typedef struct {
  floor_t *f;
  uint64_t size;
  /* The handler's own wall time, its thread's CPU and the process's CPU over
   * the same interval; read after its completion. */
  uint64_t elapsed_ns, cpu_ns, process_cpu_ns;
  uint64_t delivered;          /* host */
  unsigned last_percent;       /* host */
  bool finished;               /* host */
} w6_ctx_t;

static void w6_update_done(floor_task_t *t) {
  w6_update_t *u = CONTAINER_OF(t, w6_update_t, base);
  w6_ctx_t *c = t->ctx;
  if (!u->message || u->percent > 100) bench_die("W6: malformed update");
  c->delivered++;
  c->last_percent = u->percent;
  free(u);
}

/* Every update is its own node through the completion queue: delivered,
 * never coalesced. */
static void w6_report(floor_task_t *t) {
  w6_ctx_t *c = t->ctx;
  uint64_t pcpu0 = bench_cpu_ns();
  uint64_t cpu0 = bench_thread_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < c->size; i++) {
    w6_update_t *u = bench_xmalloc(sizeof *u);
    u->base.run = NULL;
    u->base.done = w6_update_done;
    u->base.ctx = c;
    u->base.status = FLOOR_OK;
    u->percent = (unsigned)((i + 1) * 100 / c->size);
    u->message = "working";
    floor_complete(c->f, &u->base);
  }
  uint64_t t1 = bench_now_ns();
  c->elapsed_ns = t1 - t0;
  c->cpu_ns = bench_thread_cpu_ns() - cpu0;
  c->process_cpu_ns = bench_cpu_ns() - pcpu0;
}

static void w6_done(floor_task_t *t) {
  w6_ctx_t *c = t->ctx;
  if (t->status != FLOOR_OK) bench_die("W6: handler status %d", t->status);
  free(t);
  c->finished = true;
}

static void run_w6(floor_t *f, uint64_t size) {
  w6_ctx_t c = {.f = f, .size = size};
  floor_task_t *t = bench_xmalloc(sizeof *t);
  t->run = w6_report;
  t->done = w6_done;
  t->ctx = &c;
  uint64_t cpu0 = bench_process_cpu_ns();
  floor_submit(f, t);
  /* The handler's own completion is queued after its last update. */
  while (!c.finished) floor_wait(f, -1);
  uint64_t cpu = bench_process_cpu_ns() - cpu0;
  if (c.delivered != size)
    bench_die("W6: %" PRIu64 " of %" PRIu64 " updates delivered", c.delivered, size);
  double host_ns = cpu > c.cpu_ns ? (double)(cpu - c.cpu_ns) : 0.0;
  bench_emit(PEER, "W6", size, "ns_per_update", (double)c.elapsed_ns / (double)size, "ns");
  bench_emit_cpu(PEER, "W6", size, "cpu_ns_per_update", c.process_cpu_ns, size);
  bench_emit(PEER, "W6", size, "delivered", (double)c.delivered, "updates");
  bench_emit(PEER, "W6", size, "host_cpu_ms", host_ns / 1e6, "ms");
  bench_emit(PEER, "W6", size, "final", c.last_percent == 100 ? 1.0 : 0.0, "bool");
}

/* ----------------------- W7 pending deferred operations, cancelled at random */

/* One pending operation: a deadline in the heap and a completion callback.
 * Nothing runs it; the host cancels it (out of the heap, then the callback
 * with FLOOR_CANCELLED), or its deadline would end it. */
typedef struct w7_op w7_op_t;
struct w7_op {
  uint64_t deadline;
  size_t heap_idx;
  void (*cb)(w7_op_t *op, int status);
  void *ctx;
};

/* Binary min-heap of pending deadlines; each op knows its slot so its
 * completion removes it in O(log n). */
typedef struct {
  w7_op_t **v;
  size_t n, cap;
} w7_heap_t;

static void heap_set(w7_heap_t *h, size_t i, w7_op_t *op) {
  h->v[i] = op;
  op->heap_idx = i;
}

static void heap_up(w7_heap_t *h, size_t i) {
  w7_op_t *op = h->v[i];
  while (i > 0 && h->v[(i - 1) / 2]->deadline > op->deadline) {
    heap_set(h, i, h->v[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  heap_set(h, i, op);
}

static void heap_down(w7_heap_t *h, size_t i) {
  w7_op_t *op = h->v[i];
  for (;;) {
    size_t l = 2 * i + 1, m = l;
    if (l >= h->n) break;
    if (l + 1 < h->n && h->v[l + 1]->deadline < h->v[l]->deadline) m = l + 1;
    if (h->v[m]->deadline >= op->deadline) break;
    heap_set(h, i, h->v[m]);
    i = m;
  }
  heap_set(h, i, op);
}

static void heap_push(w7_heap_t *h, w7_op_t *op) {
  if (h->n == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    w7_op_t **v = realloc(h->v, cap * sizeof *v);
    if (!v) bench_die("out of memory (heap of %zu)", cap);
    h->v = v;
    h->cap = cap;
  }
  h->v[h->n++] = op;
  heap_up(h, h->n - 1);
}

static void heap_remove(w7_heap_t *h, w7_op_t *op) {
  size_t i = op->heap_idx;
  w7_op_t *last = h->v[--h->n];
  if (i == h->n) return;
  heap_set(h, i, last);
  heap_up(h, i);
  heap_down(h, last->heap_idx);
}

typedef struct {
  w7_heap_t heap;
  int timer_fd;
  uint64_t armed_ns; /* deadline timer_fd is armed for; 0: disarmed */
  uint64_t cancelled, other;
} w7_ctx_t;

/* Arms the timerfd only when a deadline earlier than the armed one comes:
 * a removal leaves it armed for a deadline that may have gone (a spurious
 * expiry would re-arm it), which saves a syscall per operation. */
static void w7_arm(w7_ctx_t *c, uint64_t deadline) {
  if (c->armed_ns != 0 && c->armed_ns <= deadline) return;
  timerfd_arm_at(c->timer_fd, deadline);
  c->armed_ns = deadline;
}

static void w7_done(w7_op_t *op, int status) {
  w7_ctx_t *c = op->ctx;
  if (status == FLOOR_CANCELLED)
    c->cancelled++;
  else
    c->other++;
  free(op);
}

static void w7_cancel(w7_ctx_t *c, w7_op_t *op) {
  heap_remove(&c->heap, op);
  op->cb(op, FLOOR_CANCELLED);
}

static void run_w7(floor_t *f, uint64_t size) {
  (void)f; /* pending operations need no worker */
  w7_ctx_t c = {.timer_fd = timerfd_new()};
  w7_op_t **ops = bench_xmalloc(size * sizeof *ops);
  memset(ops, 0xff, size * sizeof *ops); /* the harness's: resident before rss0 */
  uint32_t *order = bench_cancel_order(size);
  uint64_t rss0 = bench_rss_bytes();
  uint64_t cpu0 = bench_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (uint64_t i = 0; i < size; i++) {
    w7_op_t *op = bench_xmalloc(sizeof *op);
    op->cb = w7_done;
    op->ctx = &c;
    op->deadline = bench_now_ns() + W7_TIMEOUT_NS;
    heap_push(&c.heap, op);
    w7_arm(&c, op->deadline);
    ops[i] = op;
  }
  /* Every operation is pending: the peak. Reading /proc costs microseconds;
   * its time and CPU are taken out of the figures below. */
  uint64_t tr0 = bench_now_ns(), cr0 = bench_cpu_ns();
  uint64_t rss1 = bench_rss_bytes();
  uint64_t cr1 = bench_cpu_ns(), tr1 = bench_now_ns();
  for (uint64_t i = 0; i < size; i++) w7_cancel(&c, ops[order[i]]);
  uint64_t t1 = bench_now_ns();
  uint64_t cpu1 = bench_cpu_ns();
  if (c.cancelled != size || c.other != 0 || c.heap.n != 0)
    bench_die("W7: %" PRIu64 " cancelled, %" PRIu64 " otherwise, %zu left of %" PRIu64,
              c.cancelled, c.other, c.heap.n, size);
  double ns = (double)(t1 - t0 - (tr1 - tr0));
  if (ns >= (double)W7_TIMEOUT_NS)
    bench_die("W7: took %.1f s, past the operations' timeout", ns / 1e9);
  xclose(c.timer_fd);
  free(c.heap.v);
  free(order);
  free(ops);
  bench_emit(PEER, "W7", size, "ns_per_task", ns / (double)size, "ns");
  bench_emit_cpu(PEER, "W7", size, "cpu_ns_per_task", (cpu1 - cpu0) - (cr1 - cr0), size);
  bench_emit(PEER, "W7", size, "bytes_per_task", ((double)rss1 - (double)rss0) / (double)size,
             "B");
}

/* ------------------------------------------------------------------- main */

static const struct {
  const char *name;
  void (*run)(floor_t *f, uint64_t size);
} workloads[] = {
    {"W1", run_w1}, {"W2", run_w2}, {"W3", run_w3}, {"W3q", run_w3q},
    {"W4", run_w4}, {"W5", run_w5}, {"W6", run_w6}, {"W7", run_w7},
};

int main(int argc, char **argv) {
  const char *workload, *variant;
  uint64_t size;
  bench_args(argc, argv, &workload, &size, &variant);
  void (*run)(floor_t *, uint64_t) = NULL;
  for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++)
    if (strcmp(workloads[i].name, workload) == 0) run = workloads[i].run;
  if (!run || variant) {
    fprintf(stderr, "bench: %s%s%s not implemented by " PEER "\n", workload,
            variant ? " " : "", variant ? variant : "");
    return 3;
  }
  floor_t f;
  floor_init(&f);
  run(&f, size);
  floor_destroy(&f);
  return 0;
}
