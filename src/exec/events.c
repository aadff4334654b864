/* Events: the FIFO through which attempts, progress, retries and outcomes
 * reach the host, whichever way it chose (docs/architecture.md, "Event
 * delivery"): callbacks on the runtime thread (LOOP), or a pollable fd plus
 * apex_manager_dispatch() on the host's own thread (DISPATCH). That fd is
 * the host timer's timerfd, signalled by setting its ticks, where the
 * kernel allows (ticks_fd), else an epoll of an eventfd and that timerfd;
 * this file owns it, the runtime arms the timer (runtime.c).
 *
 * Producers push under ev_mu (a leaf, taken under a task lock so a task's
 * events keep the order of its state changes) and signal only when the queue
 * goes from empty to non-empty, so a burst costs one wakeup. The consumer
 * moves the whole queue out under the lock and runs callbacks with no lock
 * held.
 *
 * DONE events need no node: the terminal task itself is queued (linked by
 * done_next) and the event is built from it at delivery, when its outcome
 * can no longer change. The queue is APEX__DONE_LANES chains, the tasks
 * dealt round them in the order they ended: the order is the one chain's
 * it was, and a delivery, walking the chains side by side, learns each
 * task's address that many deliveries before it reaches it, so the cache
 * misses of a long queue in no order in memory (a million pending tasks
 * cancelled at random, W7 of bench/README.md) overlap instead of following
 * each other through the links. A delivery takes both queues in one step and runs
 * the other events first: a task's PROGRESS, pushed before its DONE, is
 * then never delivered after it. Once a DONE callback returned, done_next
 * becomes APEX__DONE_DELIVERED: in LOOP mode apex_task_wait waits for that,
 * so a host may free the callback's state as soon as its wait returns, and
 * the delivery wakes the waiters (only while someone waits).
 *
 * Failure: an event node that cannot be allocated is not delivered (the
 * task's state and its blocking wait are unaffected); DONE needs no
 * allocation, so the outcome is always delivered. */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>
#include <unistd.h>

#ifndef TFD_IOC_SET_TICKS /* linux/timerfd.h's, which conflicts with sys/timerfd.h */
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)
#endif

#include "exec/internal.h"
#include "obs/metrics.h"
#include "ops/ops.h"

int apex__events_no_ticks;

/* Ticks mode: one timerfd is both the host's deadline timer and the
 * events' signal (TFD_IOC_SET_TICKS makes it readable at once; a read
 * drains both), so the host polls it directly. Polling an epoll set of an
 * eventfd and the timerfd cost a signal's round trip (write, poll, read)
 * about 130-200 ns more on this VM (bench/analysis.md, W3q). The ioctl
 * exists where the kernel has CONFIG_CHECKPOINT_RESTORE: tried once here,
 * else the epoll. Returns: the timerfd, or -1. */
static int ticks_fd(void) {
  if (apex__events_no_ticks) return -1;
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) return -1;
  uint64_t one = 1, v;
  if (ioctl(fd, TFD_IOC_SET_TICKS, &one) == 0 && read(fd, &v, sizeof v) == (ssize_t)sizeof v)
    return fd;
  close(fd);
  return -1;
}

int apex__events_init(apex_manager_t *m) {
  m->ev_fd = m->host_fd = -1;
  m->ev_ticks = 0;
  atomic_init(&m->ev_ticks_denied, 0);
  if (m->cfg.delivery != APEX_DELIVER_DISPATCH) return APEX_OK;
  if ((m->host_fd = ticks_fd()) >= 0) {
    m->ev_ticks = 1;
    return APEX_OK;
  }
  m->ev_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (m->ev_fd < 0) return APEX_E_IO;
  /* The host's fd: readable while events wait or a deadline is due (the
   * runtime adds its host timer, apex__events_watch_timer). */
  m->host_fd = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event e = {.events = EPOLLIN, .data.fd = m->ev_fd};
  if (m->host_fd < 0 || epoll_ctl(m->host_fd, EPOLL_CTL_ADD, m->ev_fd, &e) != 0) return APEX_E_IO;
  return APEX_OK;
}

int apex__events_watch_timer(apex_manager_t *m, int timer_fd) {
  struct epoll_event e = {.events = EPOLLIN, .data.fd = timer_fd};
  return epoll_ctl(m->host_fd, EPOLL_CTL_ADD, timer_fd, &e) == 0 ? APEX_OK : APEX_E_IO;
}

int apex__events_timer_fd(const apex_manager_t *m) { return m->ev_ticks ? m->host_fd : -1; }

/* Makes the host's fd readable: the eventfd's counter, or the timerfd's
 * ticks. Ticks mode with the ioctl refused after the probe allowed it (a
 * host that installs a seccomp filter once it is set up): the timer set to
 * expire at once instead, which makes the fd readable as well and which
 * the drain reads; the deadline it was armed for then goes off by the
 * runtime thread's timer, APEX__HOST_TIMER_GRACE_NS later (a dispatch's
 * own re-arm is not overwritten: apex__events_timer_set). Logged once. */
static void raise_signal(apex_manager_t *m) {
  uint64_t one = 1;
  if (m->ev_ticks) {
    if (!atomic_load_explicit(&m->ev_ticks_denied, memory_order_relaxed)) {
      int r;
      do r = ioctl(m->host_fd, TFD_IOC_SET_TICKS, &one);
      while (r < 0 && errno == EINTR);
      if (r == 0) return;
      int e = errno;
      if (!atomic_exchange(&m->ev_ticks_denied, 1))
        apex__log(&m->log, APEX_LOG_ERROR,
                  "TFD_IOC_SET_TICKS refused (errno %d): the host's fd is signalled by "
                  "expiring its timer; deadlines may reach the host up to 1 ms late",
                  e);
    }
    struct itimerspec past = {{0, 0}, {0, 1}}; /* an absolute time long gone: expires now */
    (void)timerfd_settime(m->host_fd, TFD_TIMER_ABSTIME, &past, NULL);
    return;
  }
  ssize_t w;
  do w = write(m->ev_fd, &one, sizeof one);
  while (w < 0 && errno == EINTR);
  /* EAGAIN means the counter is already non-zero: readable anyway. */
}

/* The manager whose apex_manager_dispatch is firing timers on this thread:
 * the events that makes are delivered by the same call, so they need no
 * signal. Initial-exec, as pool.c's thread-locals: read at every push and
 * set twice a dispatch, and the default model of a shared library makes
 * each a call to __tls_get_addr (W3q: 22 instructions a cancel). */
static _Thread_local const apex_manager_t *tls_dispatching
    __attribute__((tls_model("initial-exec")));

void apex__events_timer_set(apex_manager_t *m) {
  /* The push that owes the signal stored the flag before its ioctl, and
   * the ioctl and timerfd_settime take the timerfd's one lock in the
   * kernel: if its ticks came before this settime zeroed them, the flag
   * is seen here; if after, they stand. A drain racing this makes the fd
   * readable over nothing, which the next dispatch drains. Not on the
   * thread whose dispatch is firing timers: its delivery, next, takes
   * every event queued (and the fallback of raise_signal would undo the
   * re-arm just made). */
  if (m->ev_ticks && tls_dispatching != m && atomic_load(&m->ev_fd_armed) == 1) raise_signal(m);
}

/* Wakes apex_task_wait callers; no lock held. */
static void wake_waiters(apex_manager_t *m) {
  pthread_mutex_lock(&m->wait_mu);
  pthread_cond_broadcast(&m->wait_cv);
  pthread_mutex_unlock(&m->wait_mu);
}

void apex__ev_free(apex__ev_t *node) {
  if (!node) return;
  apex_progress_unref((apex_progress_t *)node->ev.progress);
  apex_error_unref((apex_error_t *)node->ev.error);
  /* A HEARTBEAT's details and a PARTIAL's value are the event's own copy
   * (task.c, partial.c); other events borrow the result from the terminal
   * task. */
  if (node->ev.type == APEX_EVENT_HEARTBEAT || node->ev.type == APEX_EVENT_PARTIAL)
    json_decref((json_t *)node->ev.result);
  apex_task_t *t = node->ev.task;
  struct apex_group *g = node->ev.type == APEX_EVENT_GROUP ? node->ev.group : NULL;
  free(node);
  if (g) apex__group_event_done(g);
  if (t) apex__task_unref(t);
}

void apex__events_fini(apex_manager_t *m) {
  apex__ev_t *n = m->ev_head;
  m->ev_head = m->ev_tail = NULL;
  while (n) {
    apex__ev_t *next = n->next;
    apex__ev_free(n);
    n = next;
  }
  /* Destroy delivered every DONE before it let the manager go; a DONE left
   * here (a manager that failed to start has none) is marked delivered all
   * the same, so no apex_task_wait waits for it for ever. */
  int left = m->done_n != 0;
  for (unsigned l = 0; l < APEX__DONE_LANES; l++) {
    apex_task_t *t = m->done_head[l];
    m->done_head[l] = m->done_tail[l] = NULL;
    while (t) {
      apex_task_t *next = atomic_load_explicit(&t->done_next, memory_order_relaxed);
      atomic_store(&t->done_next, APEX__DONE_DELIVERED);
      apex__task_unref(t);
      t = next;
    }
  }
  m->done_n = 0;
  if (left && atomic_load(&m->waiters)) wake_waiters(m);
  if (m->ev_fd >= 0) close(m->ev_fd);
  if (m->host_fd >= 0) close(m->host_fd);
  m->ev_fd = m->host_fd = -1;
}

apex_event_fn apex__task_event_fn(const apex_task_t *t, void **user) {
  if (t->opts && t->opts->on_event) {
    *user = t->opts->event_user;
    return t->opts->on_event;
  }
  *user = apex__task_m(t)->cfg.event_user;
  return apex__task_m(t)->cfg.on_event;
}

int apex__events_wanted(apex_manager_t *m, apex_task_t *t, apex_event_type_t type) {
  void *user;
  if (!apex__task_event_fn(t, &user)) return 0;
  /* A zero mask means the four ABI-1 types: the ones appended since
   * (HEARTBEAT, SCHEDULED, PARTIAL) come only to a host that names them. */
  unsigned mask = m->cfg.event_mask ? m->cfg.event_mask
                                    : (unsigned)(APEX_EVENT_ATTEMPT | APEX_EVENT_PROGRESS |
                                                 APEX_EVENT_RETRY | APEX_EVENT_DONE);
  return (mask & (unsigned)type) != 0;
}

int apex__events_wait_done(apex_manager_t *m, apex_task_t *t) {
  return m->cfg.delivery == APEX_DELIVER_LOOP && apex__events_wanted(m, t, APEX_EVENT_DONE);
}

/* Under the task lock. */
apex__ev_t *apex__ev_new(apex_task_t *t, apex_event_type_t type) {
  apex__ev_t *n = calloc(1, sizeof *n);
  if (!n) {
    return NULL;
  }
  n->ev.type = type;
  n->ev.task = t;
  n->ev.task_id = t->id;
  n->ev.seq = ++t->event_seq;
  n->ev.attempt = t->attempt;
  n->ev.state = (apex_task_state_t)atomic_load(&t->state);
  apex__task_ref(t);
  return n;
}

int apex__events_dispatch(apex_manager_t *m) {
  tls_dispatching = m;
  apex__timers_fire(m);
  tls_dispatching = NULL;
  return apex__events_deliver(m);
}

/* Under ev_mu, after queueing: returns 1 if the caller must signal the
 * consumer (signal_fd, after unlocking): once per burst into an empty queue.
 * The write happens outside ev_mu because the host it wakes takes ev_mu at
 * once; written inside, the host woke into a held mutex (a futex wait and
 * wake more on every completion's way to the host). A dispatch that runs
 * between the unlock and the write drains nothing, and the write then
 * leaves the fd readable over an empty queue: the next dispatch finds the
 * queue empty and drains it (apex__events_deliver). */
/* ev_fd_armed (ev_mu): 0, a push into an empty queue signals; 1, it did
 * (a signal owed or made, not yet drained); ARMED_DELIVERING, a delivery is
 * under way in DISPATCH mode and looks at the queue again before it
 * returns (apex__events_deliver), so a push needs no signal. */
#define ARMED_DELIVERING 2

static int signal_locked(apex_manager_t *m, int was_empty) {
  if (tls_dispatching == m) return 0;
  if (!was_empty || m->host_fd < 0 || atomic_load_explicit(&m->ev_fd_armed, memory_order_relaxed))
    return 0;
  atomic_store(&m->ev_fd_armed, 1); /* seq_cst: before the signal (apex__events_timer_set) */
  return 1;
}

static void signal_fd(apex_manager_t *m) { raise_signal(m); }

static int queues_empty(const apex_manager_t *m) { return !m->ev_head && !m->done_n; }

/* How many times one apex_manager_dispatch takes what was queued while it
 * delivered (apex__events_deliver), so that a steady stream of events does
 * not keep it from returning. */
#define DELIVER_ROUNDS 16

void apex__events_push(apex_manager_t *m, apex__ev_t *n) {
  apex_task_t *t = n->ev.task;
  n->fn = apex__task_event_fn(t, &n->user);
  n->next = NULL;
  apex__lock(&m->ev_mu);
  int was_empty = queues_empty(m);
  if (m->ev_tail)
    m->ev_tail->next = n;
  else
    m->ev_head = n;
  m->ev_tail = n;
  int sig = signal_locked(m, was_empty);
  apex__unlock(&m->ev_mu);
  if (sig) signal_fd(m);
  if (was_empty && m->cfg.delivery == APEX_DELIVER_LOOP) apex__runtime_wake(m);
}

void apex__events_push_done(apex_manager_t *m, apex_task_t *t) {
  apex__task_ref(t);
  apex__events_push_done_owned(m, t);
}

void apex__events_push_done_owned(apex_manager_t *m, apex_task_t *t) {
  t->event_seq++; /* the DONE event's seq; no event follows it */
  atomic_store_explicit(&t->done_next, NULL, memory_order_relaxed);
  apex__lock(&m->ev_mu);
  int was_empty = queues_empty(m);
  unsigned l = m->done_in++ & (APEX__DONE_LANES - 1);
  if (m->done_tail[l])
    atomic_store_explicit(&m->done_tail[l]->done_next, t, memory_order_relaxed);
  else
    m->done_head[l] = t;
  m->done_tail[l] = t;
  m->done_n++;
  int sig = signal_locked(m, was_empty);
  apex__unlock(&m->ev_mu);
  if (sig) signal_fd(m);
  if (was_empty && m->cfg.delivery == APEX_DELIVER_LOOP) apex__runtime_wake(m);
}

/* Runs t's DONE callback. t is terminal: its outcome, attempt count and
 * seq no longer change, so they are read without its lock. */
static void deliver_done(apex_task_t *t) {
  int state = atomic_load_explicit(&t->state, memory_order_acquire);
  apex_event_t ev = {0};
  ev.type = APEX_EVENT_DONE;
  ev.task = t;
  ev.task_id = t->id;
  ev.seq = t->event_seq;
  ev.attempt = t->attempt;
  ev.state = (apex_task_state_t)state;
  if (state == APEX_TASK_SUCCEEDED)
    ev.result = t->out.result;
  else
    ev.error = apex__task_done_error(t); /* a view if the task's end left it lazy */
  void *user;
  apex_event_fn fn = apex__task_event_fn(t, &user);
  if (fn) fn(&ev, user);
}

/* Asks for what t's delivery and free read (NULL: none): its lines, from
 * the word before it (a deferred task's block header: its slab's index
 * and owners, which its free reads; for another task, the slot before
 * its own in its slab, or malloc's chunk header under ASan: wasted) to
 * its last (where a slot keeps its slab's address). A deferred task is
 * 120 bytes at 8-byte alignment: three lines most of the time; another,
 * two (tmem.c). Asking for more (a slab header, when slabs had one; 8
 * lanes) measured slower (bench/analysis.md): each is a page walk. */
static inline void done_prefetch(const apex_task_t *t) {
  if (!t) return;
  __builtin_prefetch((const char *)t - APEX__BLK_TASK_OFF, 1);
  __builtin_prefetch((const char *)t - APEX__BLK_TASK_OFF + APEX__CACHE_LINE, 1);
  __builtin_prefetch((const char *)t + sizeof *t - 1, 1);
}

static int deliver_batch(apex_manager_t *m);

/* DISPATCH mode: the pushes made while a delivery runs do not signal the
 * fd (ARMED_DELIVERING); the delivery takes them when it is done with its
 * batch, and when it stops with events still queued (DELIVER_ROUNDS) it
 * signals for them itself, so the fd is readable while events wait for a
 * dispatch. Each signal cost the pushing worker a write and the host a
 * poll and a read: a host waiting for 10,000 children's DONEs made 900 to
 * 2,700 of each, most while it was delivering (bench/analysis.md, W11 of
 * the seventh session). */
int apex__events_deliver(apex_manager_t *m) {
  int count = 0;
  for (unsigned round = 1;; round++) {
    count += deliver_batch(m);
    if (m->host_fd < 0) return count;
    apex__lock(&m->ev_mu);
    int more = !queues_empty(m), again = more && round < DELIVER_ROUNDS;
    int armed = atomic_load_explicit(&m->ev_fd_armed, memory_order_relaxed);
    /* Stopping: events still queued need the fd readable (unless a signal
     * is owed already); none, and the next push signals. */
    int sig = !again && more && armed != 1;
    if (sig) atomic_store(&m->ev_fd_armed, 1); /* seq_cst, as signal_locked's */
    else if (!again && armed == ARMED_DELIVERING)
      atomic_store_explicit(&m->ev_fd_armed, 0, memory_order_relaxed);
    apex__unlock(&m->ev_mu);
    if (sig) signal_fd(m);
    if (!again) return count;
  }
}

static int deliver_batch(apex_manager_t *m) {
  apex__lock(&m->ev_mu);
  apex__ev_t *n = m->ev_head;
  m->ev_head = m->ev_tail = NULL;
  /* The DONE lanes, and where the oldest queued task is: push k went to
   * lane k % APEX__DONE_LANES, so delivery j of this batch is in lane
   * (first + j) % APEX__DONE_LANES, each lane's tasks in their order. */
  apex_task_t *lane[APEX__DONE_LANES];
  uint32_t n_done = m->done_n, first = m->done_in - m->done_n;
  for (unsigned l = 0; l < APEX__DONE_LANES; l++) {
    lane[l] = m->done_head[l];
    m->done_head[l] = m->done_tail[l] = NULL;
  }
  m->done_n = 0;
  int done = n_done != 0;
  /* Drained when a signal was owed, and when the queue is empty (a late
   * write of signal_fd's may have left the fd readable over nothing). Read
   * under ev_mu: a push after this section writes after it, so this read
   * can never swallow the signal of an event it did not take. */
  int drained = 0;
  if (m->host_fd >= 0 &&
      (atomic_load_explicit(&m->ev_fd_armed, memory_order_relaxed) == 1 || (!n && !done))) {
    uint64_t v;
    ssize_t r;
    do r = read(m->ev_ticks ? m->host_fd : m->ev_fd, &v, sizeof v);
    while (r < 0 && errno == EINTR);
    /* EAGAIN: nothing written (yet); a late write is drained next time. */
    drained = m->ev_ticks;
  }
  atomic_store_explicit(&m->ev_fd_armed, m->host_fd >= 0 ? ARMED_DELIVERING : 0,
                        memory_order_relaxed);
  apex__unlock(&m->ev_mu);
  /* Ticks mode: that read also took the timer's expiry if it went off
   * since apex__timers_fire looked: a deadline due and not fired keeps
   * the fd readable, so the host comes back for it. */
  if (drained) {
    uint64_t at = atomic_load_explicit(&m->due_at, memory_order_acquire);
    if (at && apex__now_ns() >= at) raise_signal(m);
  }
  int count = 0;
  /* GROUP events (ops/group.c) wait for the DONEs of this batch: each is
   * about a member whose DONE was queued before it. */
  apex__ev_t *grp = NULL, **grp_tail = &grp;
  while (n) {
    apex__ev_t *next = n->next;
    if (n->ev.type == APEX_EVENT_GROUP) {
      n->next = NULL;
      *grp_tail = n;
      grp_tail = &n->next;
      n = next;
      continue;
    }
    apex__mx_progress_delivered(m, n);
    if (n->fn) n->fn(&n->ev, n->user);
    apex__ev_free(n);
    count++;
    n = next;
  }
  int wake = done && m->cfg.delivery == APEX_DELIVER_LOOP;
  /* The queue is in the order tasks ended, which is no order in memory:
   * each task's lines are asked for as soon as its address is known, when
   * the one before it in its lane is taken, APEX__DONE_LANES deliveries
   * ahead, so their misses overlap those deliveries (W7: a million DONEs
   * in random order). The lanes' heads are asked for first. */
  for (unsigned l = 0; l < APEX__DONE_LANES; l++) done_prefetch(lane[l]);
  /* The tasks this frees give their manager references and slab slots
   * back at the batch's end, not one atomic subtraction each (the host's
   * delivery made three a task: bench/analysis.md, W1 of the eighth
   * session). m is alive: its destroy waits for this delivery. A single
   * DONE (a host waiting for each task) has nothing to share: no batch. */
  apex__free_batch_t fb;
  if (n_done > 1) apex__free_batch_begin(&fb, m);
  for (uint32_t j = 0; j < n_done; j++) {
    unsigned l = (first + j) & (APEX__DONE_LANES - 1);
    apex_task_t *t = lane[l];
    lane[l] = atomic_load_explicit(&t->done_next, memory_order_relaxed);
    done_prefetch(lane[l]);
    deliver_done(t);
    /* Its callback returned: its waiters may go (see apex_task_wait). */
    atomic_store_explicit(&t->done_next, APEX__DONE_DELIVERED, memory_order_release);
    if (wake && atomic_load_explicit(&m->waiters, memory_order_relaxed)) wake_waiters(m);
    apex__task_unref(t);
    count++;
  }
  if (n_done > 1) apex__free_batch_end(&fb);
  if (wake) {
    /* The check above is a shortcut for a waiter already asleep; this one
     * is the guarantee. A waiter counts itself (m->waiters, seq_cst) and
     * then reads done_next; we stored done_next and read m->waiters after a
     * full fence: one of the two sees the other, so no wakeup is lost. One
     * fence per delivery, not per task. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&m->waiters)) wake_waiters(m);
  }
  while (grp) {
    apex__ev_t *next = grp->next;
    if (grp->fn) grp->fn(&grp->ev, grp->user);
    apex__ev_free(grp);
    count++;
    grp = next;
  }
  return count;
}
