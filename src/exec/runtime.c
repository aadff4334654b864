/* The runtime thread: one libuv loop that owns time. It fires task deadlines
 * and retry backoffs from a binary min-heap of tasks (one timerfd armed for
 * the earliest entry, so a million deadlines cost one kernel timer), flushes
 * coalesced progress at most progress_rate_hz times a second, and in LOOP
 * delivery mode runs the host's event callbacks.
 *
 * Other threads reach it through uv_async_send (thread-safe, coalescing):
 * a submitter wakes it only when its deadline becomes the earliest, and a
 * plugin only when a task's progress goes from clean to dirty.
 *
 * Deadlines use a timerfd armed at the absolute CLOCK_MONOTONIC nanosecond,
 * not a uv_timer: libuv timers count whole milliseconds from a cached loop
 * time, which makes a 5 ms timeout fire up to a millisecond late; a timerfd
 * fires within the kernel's wake-up latency.
 *
 * Locks: tmu guards the heap and armed_at; flush_mu the flush list. Both are
 * leaves (see internal.h). Failure: uv_* calls on an initialised loop do not
 * fail in ways we can act on beyond logging. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "exec/internal.h"

uint64_t apex__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t apex__ns_after_ms(int64_t ms) {
  if (ms < 0) return UINT64_MAX;
  uint64_t now = apex__now_ns();
  if ((uint64_t)ms > (UINT64_MAX - now) / 1000000u) return UINT64_MAX;
  return now + (uint64_t)ms * 1000000u;
}

/* ------------------------------------------------------------- the heap */

/* When t's timer fires: its deadline, or its retry time while it waits to
 * retry. Under tmu (timer_retry changes only there). */
static inline uint64_t key(const apex_task_t *t) {
  return t->timer_retry ? t->run->retry_at_ns : t->deadline_ns;
}

static void heap_place(apex_manager_t *m, uint32_t i, apex_task_t *t) {
  m->heap[i] = t;
  t->heap_idx = i;
}

static void heap_up(apex_manager_t *m, uint32_t i) {
  apex_task_t *t = m->heap[i];
  uint64_t k = key(t);
  while (i > 0) {
    uint32_t p = (i - 1) / 2;
    if (key(m->heap[p]) <= k) break;
    heap_place(m, i, m->heap[p]);
    i = p;
  }
  heap_place(m, i, t);
}

static void heap_down(apex_manager_t *m, uint32_t i) {
  apex_task_t *t = m->heap[i];
  uint64_t k = key(t);
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= m->heap_len) break;
    if (c + 1 < m->heap_len && key(m->heap[c + 1]) < key(m->heap[c])) c++;
    if (k <= key(m->heap[c])) break;
    heap_place(m, i, m->heap[c]);
    i = c;
  }
  heap_place(m, i, t);
}

/* Under tmu. */
static void heap_remove(apex_manager_t *m, apex_task_t *t) {
  uint32_t i = t->heap_idx;
  t->heap_idx = APEX__NOT_IN_HEAP;
  apex_task_t *last = m->heap[--m->heap_len];
  if (i == m->heap_len) return;
  heap_place(m, i, last);
  if (i > 0 && key(m->heap[(i - 1) / 2]) > key(last))
    heap_up(m, i);
  else
    heap_down(m, i);
}

int apex__timer_reserve(apex_manager_t *m, apex_task_t *t) {
  pthread_mutex_lock(&m->tmu);
  if (m->heap_reserved == m->heap_cap) {
    /* Grows by half: a heap of queued deadlines is part of what a queued
     * task costs, so the slack stays at a third at most. */
    uint64_t cap = m->heap_cap ? (uint64_t)m->heap_cap + m->heap_cap / 2 : 256;
    if (cap >= APEX__NOT_IN_HEAP) cap = APEX__NOT_IN_HEAP - 1;
    apex_task_t **h = cap > m->heap_cap ? realloc(m->heap, cap * sizeof *h) : NULL;
    if (!h) {
      pthread_mutex_unlock(&m->tmu);
      return APEX_E_NOMEM;
    }
    m->heap = h;
    m->heap_cap = (uint32_t)cap;
  }
  m->heap_reserved++;
  t->timer_reserved = 1;
  pthread_mutex_unlock(&m->tmu);
  return APEX_OK;
}

void apex__timer_set(apex_manager_t *m, apex_task_t *t, int retry) {
  int wake = 0;
  pthread_mutex_lock(&m->tmu);
  t->timer_retry = (uint8_t)retry;
  uint64_t at = key(t);
  if (t->heap_idx == APEX__NOT_IN_HEAP) {
    /* The slot was reserved at submit, so this never allocates. */
    assert(t->timer_reserved && m->heap_len < m->heap_cap);
    m->heap[m->heap_len] = t;
    t->heap_idx = m->heap_len++;
    heap_up(m, t->heap_idx);
    apex__task_ref(t); /* the heap's reference */
  } else {
    heap_up(m, t->heap_idx);
    heap_down(m, t->heap_idx);
  }
  if (!m->armed_at || at < m->armed_at) {
    m->armed_at = at; /* the runtime re-arms for it on wake */
    wake = 1;
  }
  pthread_mutex_unlock(&m->tmu);
  if (wake) apex__runtime_wake(m);
}

void apex__timer_release(apex_manager_t *m, apex_task_t *t) {
  if (!t->timer_reserved) return;
  pthread_mutex_lock(&m->tmu);
  int in = t->heap_idx != APEX__NOT_IN_HEAP;
  if (in) heap_remove(m, t);
  t->timer_reserved = 0;
  m->heap_reserved--;
  pthread_mutex_unlock(&m->tmu);
  /* Callers hold another reference (the life one), so this never frees. */
  if (in) atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel);
}

/* Runtime thread: fires what is due, re-arms for the rest. */
static void arm(apex_manager_t *m);

static void on_deadline(uv_poll_t *h, int status, int events) {
  apex_manager_t *m = h->data;
  uint64_t expirations;
  /* Nonblocking: EAGAIN when re-armed since it became readable; nothing
   * else can fail on a valid timerfd. Either way the heap says what is due. */
  ssize_t got = read(m->timer_fd, &expirations, sizeof expirations);
  (void)got;
  m->timer_fd_at = 0;
  enum { BATCH = 256 };
  apex_task_t *due[BATCH];
  for (;;) {
    size_t n = 0;
    uint64_t now = apex__now_ns();
    pthread_mutex_lock(&m->tmu);
    while (n < BATCH && m->heap_len && key(m->heap[0]) <= now) {
      apex_task_t *t = m->heap[0];
      heap_remove(m, t);
      due[n++] = t; /* the heap's reference moves to us */
    }
    m->armed_at = 0;
    pthread_mutex_unlock(&m->tmu);
    for (size_t i = 0; i < n; i++) {
      apex__task_on_timer(due[i], now);
      apex__task_unref(due[i]);
    }
    if (n < BATCH) break;
  }
  arm(m);
}

static void arm(apex_manager_t *m) {
  pthread_mutex_lock(&m->tmu);
  uint64_t at = m->heap_len ? key(m->heap[0]) : 0;
  m->armed_at = at;
  pthread_mutex_unlock(&m->tmu);
  if (at == m->timer_fd_at) return;
  /* An absolute time already past fires at once; zero disarms. */
  struct itimerspec its = {{0, 0}, {(time_t)(at / 1000000000u), (long)(at % 1000000000u)}};
  if (timerfd_settime(m->timer_fd, TFD_TIMER_ABSTIME, &its, NULL) != 0) {
    apex__log(&m->log, APEX_LOG_ERROR, "timerfd_settime failed: deadlines may fire late");
    return;
  }
  m->timer_fd_at = at;
}

/* ------------------------------------------------------------- progress */

void apex__flush_request(apex_manager_t *m, apex_task_t *t) {
  int wake = 0;
  pthread_mutex_lock(&m->flush_mu);
  apex__run_t *r = t->run;
  if (!r->flush_queued) {
    r->flush_queued = 1;
    apex__task_ref(t);
    r->flush_next = m->flush_head;
    wake = m->flush_head == NULL;
    m->flush_head = t;
  }
  pthread_mutex_unlock(&m->flush_mu);
  if (wake) apex__runtime_wake(m);
}

static void flush_all(apex_manager_t *m) {
  pthread_mutex_lock(&m->flush_mu);
  apex_task_t *t = m->flush_head;
  m->flush_head = NULL;
  /* Once flush_queued is 0 a plugin may queue the task again, rewriting
   * flush_next: walk a link only this thread writes. */
  for (apex_task_t *i = t; i; i = i->run->flush_next) {
    i->run->flush_queued = 0;
    i->run->flush_work_next = i->run->flush_next;
  }
  m->last_flush_ns = apex__now_ns();
  pthread_mutex_unlock(&m->flush_mu);
  while (t) {
    apex_task_t *next = t->run->flush_work_next;
    apex__task_flush_progress(t);
    apex__task_unref(t);
    t = next;
  }
}

static void on_flush_timer(uv_timer_t *h) { flush_all(h->data); }

/* Flushes now if the last flush is an interval ago, else arms the timer. */
static void maybe_flush(apex_manager_t *m) {
  pthread_mutex_lock(&m->flush_mu);
  int pending = m->flush_head != NULL;
  uint64_t next = m->last_flush_ns + m->flush_interval_ns;
  pthread_mutex_unlock(&m->flush_mu);
  if (!pending) return;
  uint64_t now = apex__now_ns();
  if (now >= next) {
    flush_all(m);
  } else if (!uv_is_active((uv_handle_t *)&m->flush_timer)) {
    uv_timer_start(&m->flush_timer, on_flush_timer, (next - now + 999999u) / 1000000u, 0);
  }
}

/* -------------------------------------------------------------- the loop */

static void on_close(uv_handle_t *h) { (void)h; }

static void on_wake(uv_async_t *h) {
  apex_manager_t *m = h->data;
  if (atomic_load(&m->rt_stop)) {
    flush_all(m);
    if (m->cfg.delivery == APEX_DELIVER_LOOP) apex__events_deliver(m);
    uv_close((uv_handle_t *)&m->wake, on_close);
    uv_close((uv_handle_t *)&m->timer_poll, on_close);
    uv_close((uv_handle_t *)&m->flush_timer, on_close);
    return;
  }
  arm(m);
  maybe_flush(m);
  if (m->cfg.delivery == APEX_DELIVER_LOOP) apex__events_deliver(m);
}

void apex__runtime_wake(apex_manager_t *m) {
  if (m->rt_started) uv_async_send(&m->wake);
}

static void *runtime_main(void *arg) {
  apex_manager_t *m = arg;
  uv_run(&m->loop, UV_RUN_DEFAULT);
  return NULL;
}

int apex__runtime_start(apex_manager_t *m) {
  m->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (m->timer_fd < 0) return APEX_E_IO;
  m->timer_fd_at = 0;
  if (uv_loop_init(&m->loop)) {
    close(m->timer_fd);
    return APEX_E_IO;
  }
  if (uv_async_init(&m->loop, &m->wake, on_wake)) {
    uv_loop_close(&m->loop);
    close(m->timer_fd);
    return APEX_E_IO;
  }
  int polling = uv_poll_init(&m->loop, &m->timer_poll, m->timer_fd) == 0;
  uv_timer_init(&m->loop, &m->flush_timer);
  m->wake.data = m->timer_poll.data = m->flush_timer.data = m;
  if (polling && uv_poll_start(&m->timer_poll, UV_READABLE, on_deadline) == 0) {
    m->rt_started = 1;
    if (pthread_create(&m->rt_thread, NULL, runtime_main, m) == 0) return APEX_OK;
    m->rt_started = 0;
  }
  uv_close((uv_handle_t *)&m->wake, NULL);
  if (polling) uv_close((uv_handle_t *)&m->timer_poll, NULL);
  uv_close((uv_handle_t *)&m->flush_timer, NULL);
  uv_run(&m->loop, UV_RUN_DEFAULT);
  uv_loop_close(&m->loop);
  close(m->timer_fd);
  return APEX_E_IO;
}

void apex__runtime_stop(apex_manager_t *m) {
  if (!m->rt_started) return;
  atomic_store(&m->rt_stop, 1);
  uv_async_send(&m->wake);
  pthread_join(m->rt_thread, NULL);
  m->rt_started = 0;
  uv_loop_close(&m->loop);
  close(m->timer_fd);
}
