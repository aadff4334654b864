/* The runtime thread: one libuv loop that owns time. It fires task deadlines
 * and retry backoffs (one timerfd armed for the earliest, so a million
 * deadlines cost one kernel timer), flushes
 * coalesced progress at most progress_rate_hz times a second, and in LOOP
 * delivery mode runs the host's event callbacks (when destroy stops it, it
 * delivers what is left first, and destroy joins it).
 *
 * Other threads reach it through uv_async_send (thread-safe, coalescing): a
 * plugin only when a task's progress goes from clean to dirty. A submitter
 * whose deadline becomes the earliest arms the timerfd itself (timerfds are
 * kernel objects any thread may set), so no thread wakes before the time.
 *
 * Deadlines use a timerfd armed at the absolute CLOCK_MONOTONIC nanosecond,
 * not a uv_timer: libuv timers count whole milliseconds from a cached loop
 * time, which makes a 5 ms timeout fire up to a millisecond late; a timerfd
 * fires within the kernel's wake-up latency. The schedule-to-start,
 * start-to-close and heartbeat timers (timeouts.c) share the timerfd: their
 * heap's earliest entry counts with the rest. In DISPATCH mode the host's
 * fd also watches a second timerfd, and apex_manager_dispatch fires what is
 * due on the host's thread (see arm).
 *
 * Locks: pool_mu guards the timers, armed_at and the timerfds' armed times;
 * flush_mu the flush list. Both are leaves (see internal.h). Failure: uv_* calls on an initialised loop do not
 * fail in ways we can act on beyond logging. */
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

/* ------------------------------------------------------------- deadlines
 *
 * Deadlines live in one FIFO list per distinct timeout (tasks of one action,
 * or one host's habit, share a timeout, so a list is sorted by submit time
 * at no cost). Insert appends (walking back past the rare later deadline a
 * concurrent submitter linked first), removal unlinks: O(1) with the links
 * in the task, no array to grow, and none of the cache misses a binary heap
 * of a million tasks pays on every removal. The lists are found by timeout
 * in a small hash and kept in a min-heap by their head's deadline, so the
 * earliest deadline is the top list's head. Retry backoffs (arbitrary,
 * jittered delays) go to a binary heap of their own, with its index in the
 * task's run state. */

/* A task's list links: under pool_mu, relaxed (plain moves); atomic only
 * for the lock-free prefetch of apex__task_prefetch_end. */
static inline apex_task_t *dl_prev(const apex_task_t *t) {
  return atomic_load_explicit(&t->tprev, memory_order_relaxed);
}
static inline apex_task_t *dl_next(const apex_task_t *t) {
  return atomic_load_explicit(&t->tnext, memory_order_relaxed);
}
static inline void dl_set_prev(apex_task_t *t, apex_task_t *p) {
  atomic_store_explicit(&t->tprev, p, memory_order_relaxed);
}
static inline void dl_set_next(apex_task_t *t, apex_task_t *n) {
  atomic_store_explicit(&t->tnext, n, memory_order_relaxed);
}

static inline uint64_t dl_key(const apex_task_t *t) { return apex__timeout_ns(t->timeout_s); }

static inline uint64_t list_at(const apex__dlist_t *l) { return l->head->deadline_ns; }

static void lheap_place(apex_manager_t *m, uint32_t i, apex__dlist_t *l) {
  m->lheap[i] = l;
  l->heap_idx = i;
}

static void lheap_up(apex_manager_t *m, uint32_t i) {
  apex__dlist_t *l = m->lheap[i];
  uint64_t k = list_at(l);
  while (i > 0) {
    uint32_t p = (i - 1) / 2;
    if (list_at(m->lheap[p]) <= k) break;
    lheap_place(m, i, m->lheap[p]);
    i = p;
  }
  lheap_place(m, i, l);
}

static void lheap_down(apex_manager_t *m, uint32_t i) {
  apex__dlist_t *l = m->lheap[i];
  uint64_t k = list_at(l);
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= m->lheap_len) break;
    if (c + 1 < m->lheap_len && list_at(m->lheap[c + 1]) < list_at(m->lheap[c])) c++;
    if (k <= list_at(m->lheap[c])) break;
    lheap_place(m, i, m->lheap[c]);
    i = c;
  }
  lheap_place(m, i, l);
}

/* Under pool_mu: l's head changed (or l became empty). */
static void lheap_fix(apex_manager_t *m, apex__dlist_t *l) {
  uint32_t i = l->heap_idx;
  if (!l->head) { /* out of the heap */
    apex__dlist_t *last = m->lheap[--m->lheap_len];
    l->heap_idx = APEX__NOT_IN_HEAP;
    if (i == m->lheap_len) return;
    lheap_place(m, i, last);
    lheap_down(m, i);
    lheap_up(m, last->heap_idx);
    return;
  }
  if (i == APEX__NOT_IN_HEAP) { /* slot reserved with the list: no allocation */
    m->lheap[m->lheap_len] = l;
    i = m->lheap_len++;
  }
  lheap_place(m, i, l);
  lheap_down(m, i);
  lheap_up(m, l->heap_idx);
}

static size_t dl_bucket(uint64_t key) {
  return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 58); /* 64 buckets */
}

static apex__dlist_t *dl_find(apex_manager_t *m, uint64_t key) {
  apex__dlist_t *l = m->dl_last;
  if (l && l->key == key) return l;
  for (l = m->dl_hash[dl_bucket(key)]; l; l = l->hnext)
    if (l->key == key) return m->dl_last = l;
  return NULL;
}

/* Under pool_mu: frees l once no task is pinned to it. A linked task is
 * pinned, so a list with a head is in use: the submitters' count (another
 * line, apex__dlist_t) is read only once the list is empty. */
static void dl_unpin(apex_manager_t *m, apex__dlist_t *l) {
  l->unpins++;
  if (l->head || l->pins != l->unpins) return;
  /* Keep a few idle lists: one task at a time with a given timeout (a
   * host waiting for each task) would otherwise make and free a list for
   * every task; a host using ever new timeouts frees them. */
  if (m->dl_idle < APEX__DL_IDLE_MAX) {
    m->dl_idle++;
    l->idle = 1;
    return;
  }
  for (apex__dlist_t **pp = &m->dl_hash[dl_bucket(l->key)]; *pp; pp = &(*pp)->hnext)
    if (*pp == l) {
      *pp = l->hnext;
      break;
    }
  if (m->dl_last == l) m->dl_last = NULL;
  m->lheap_n--;
  free(l);
}

int apex__timer_reserve_locked(apex_manager_t *m, apex_task_t *t, int deadline, int retry) {
  int rc = APEX_OK;
  apex__dlist_t *pinned = NULL;
  if (deadline) {
    uint64_t key = dl_key(t);
    apex__dlist_t *l = dl_find(m, key);
    if (!l && m->lheap_n == m->lheap_cap) {
      uint32_t cap = m->lheap_cap ? m->lheap_cap * 2 : 16;
      apex__dlist_t **h = realloc(m->lheap, cap * sizeof *h);
      if (h) {
        m->lheap = h;
        m->lheap_cap = cap;
      }
    }
    void *mem = NULL;
    if (!l && m->lheap_n < m->lheap_cap &&
        posix_memalign(&mem, APEX__CACHE_LINE, sizeof *l) == 0) {
      l = memset(mem, 0, sizeof *l);
      l->key = key;
      l->heap_idx = APEX__NOT_IN_HEAP;
      size_t b = dl_bucket(key);
      l->hnext = m->dl_hash[b];
      m->dl_hash[b] = l;
      m->lheap_n++; /* a heap slot for it, taken when it is non-empty */
      m->dl_last = l;
    }
    if (l) {
      if (l->idle) { /* an idle list in use again */
        l->idle = 0;
        m->dl_idle--;
      }
      l->pins++;
      t->timer_flags |= APEX__TIMER_DL_PINNED;
      pinned = l;
    } else {
      rc = APEX_E_NOMEM;
    }
  }
  if (rc == APEX_OK && retry) {
    if (m->heap_reserved == m->heap_cap) {
      uint64_t cap = m->heap_cap ? (uint64_t)m->heap_cap * 2 : 64;
      apex_task_t **h = cap < APEX__NOT_IN_HEAP ? realloc(m->heap, cap * sizeof *h) : NULL;
      if (h) {
        m->heap = h;
        m->heap_cap = (uint32_t)cap;
      }
    }
    if (m->heap_reserved < m->heap_cap) {
      m->heap_reserved++;
      t->timer_flags |= APEX__TIMER_RETRY_SLOT;
    } else {
      rc = APEX_E_NOMEM;
    }
  }
  if (rc != APEX_OK && pinned) { /* all or nothing */
    dl_unpin(m, pinned);
    t->timer_flags = 0;
  }
  return rc;
}

/* Under pool_mu. */
static void dl_unlink(apex_manager_t *m, apex__dlist_t *l, apex_task_t *t) {
  int was_head = l->head == t;
  apex_task_t *p = dl_prev(t), *n = dl_next(t);
  if (p) dl_set_next(p, n); else l->head = n;
  if (n) dl_set_prev(n, p); else l->tail = p;
  dl_set_prev(t, NULL);
  dl_set_next(t, NULL);
  t->timer_flags &= (uint8_t)~APEX__TIMER_DL_LINKED;
  if (was_head) lheap_fix(m, l);
}

static void arm_locked(apex_manager_t *m, uint64_t at);

/* Under pool_mu: at (a deadline or retry time just linked) is due before
 * anything armed: arm the timers for it now, from this thread. No thread
 * is woken for it: the runtime thread wakes when its timer goes off. */
static void earlier_locked(apex_manager_t *m, uint64_t at) {
  if (m->armed_at && at >= m->armed_at) return;
  m->armed_at = at;
  arm_locked(m, at);
}

void apex__timer_earlier_locked(apex_manager_t *m, uint64_t at) { earlier_locked(m, at); }

void apex__deadline_link_locked(apex_manager_t *m, apex_task_t *t) {
  apex__dlist_t *l = dl_find(m, dl_key(t));
  /* Pinned at submit, so the list exists. Deadlines within a list are in
   * submit order but for a concurrent submitter that got here first. */
  apex_task_t *after = l->tail;
  while (after && after->deadline_ns > t->deadline_ns) after = dl_prev(after);
  apex_task_t *next = after ? dl_next(after) : l->head;
  dl_set_prev(t, after);
  dl_set_next(t, next);
  if (next) dl_set_prev(next, t); else l->tail = t;
  if (after) dl_set_next(after, t); else l->head = t;
  t->timer_flags |= APEX__TIMER_DL_LINKED;
  /* No reference for the list: a linked task is alive. Its life reference
   * goes only after finish_locked unlinked it, or, for a task that ended
   * on its worker (pool.c, the owed release), after the scheduler's
   * reference that worker still holds outlives the unlink in its next pop
   * section. fire_due takes one under pool_mu when it takes the task out.
   * Two atomic operations per task fewer, on a line the submitter and the
   * worker share. */
  if (!after) lheap_fix(m, l); /* the new head (l->head is the ending side's line) */
  earlier_locked(m, t->deadline_ns);
}

/* ---------------------------------------------------- the retry heap */

static inline uint64_t rkey(const apex_task_t *t) { return t->run->retry_at_ns; }

static void heap_place(apex_manager_t *m, uint32_t i, apex_task_t *t) {
  m->heap[i] = t;
  t->run->heap_idx = i;
}

static void heap_up(apex_manager_t *m, uint32_t i) {
  apex_task_t *t = m->heap[i];
  uint64_t k = rkey(t);
  while (i > 0) {
    uint32_t p = (i - 1) / 2;
    if (rkey(m->heap[p]) <= k) break;
    heap_place(m, i, m->heap[p]);
    i = p;
  }
  heap_place(m, i, t);
}

static void heap_down(apex_manager_t *m, uint32_t i) {
  apex_task_t *t = m->heap[i];
  uint64_t k = rkey(t);
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= m->heap_len) break;
    if (c + 1 < m->heap_len && rkey(m->heap[c + 1]) < rkey(m->heap[c])) c++;
    if (k <= rkey(m->heap[c])) break;
    heap_place(m, i, m->heap[c]);
    i = c;
  }
  heap_place(m, i, t);
}

/* Under pool_mu. */
static void heap_remove(apex_manager_t *m, apex_task_t *t) {
  uint32_t i = t->run->heap_idx;
  t->run->heap_idx = APEX__NOT_IN_HEAP;
  apex_task_t *last = m->heap[--m->heap_len];
  if (i == m->heap_len) return;
  heap_place(m, i, last);
  if (i > 0 && rkey(m->heap[(i - 1) / 2]) > rkey(last))
    heap_up(m, i);
  else
    heap_down(m, i);
}

int apex__retry_arm(apex_manager_t *m, apex_task_t *t) {
  apex__lock(&m->pool_mu);
  /* The slot was reserved at submit, so this never allocates. Checked, not
   * asserted: an assert vanishes in release builds, and this write would
   * then go past the heap. */
  if (!(t->timer_flags & APEX__TIMER_RETRY_SLOT) || m->heap_len >= m->heap_cap) {
    apex__unlock(&m->pool_mu);
    return APEX_E_NOMEM;
  }
  m->heap[m->heap_len] = t;
  t->run->heap_idx = m->heap_len++;
  heap_up(m, t->run->heap_idx);
  apex__task_ref(t); /* the heap's reference */
  earlier_locked(m, t->run->retry_at_ns);
  apex__unlock(&m->pool_mu);
  return APEX_OK;
}

unsigned apex__timer_release_locked(apex_manager_t *m, apex_task_t *t) {
  unsigned refs = 0;
  /* timer_flags is read under pool_mu: the runtime unlinks concurrently. */
  if (t->timer_flags & APEX__TIMER_DL_PINNED) {
    apex__dlist_t *l = dl_find(m, dl_key(t));
    if (t->timer_flags & APEX__TIMER_DL_LINKED) {
      dl_unlink(m, l, t);
    }
    dl_unpin(m, l);
  }
  if (t->timer_flags & APEX__TIMER_RETRY_SLOT) {
    if (t->run && t->run->heap_idx != APEX__NOT_IN_HEAP) {
      heap_remove(m, t);
      refs++;
    }
    m->heap_reserved--;
  }
  apex__tmo_t *tmo = apex__task_tmo(t);
  if (tmo) apex__tmo_release_locked(m, tmo); /* holds no reference */
  t->timer_flags &= (uint8_t)APEX__SCHED_BITS; /* the timer flags, not the scheduler's */
  return refs;
}

/* Under pool_mu: the earliest time anything is due, 0 for nothing. */
static uint64_t next_due_locked(apex_manager_t *m) {
  uint64_t at = m->lheap_len ? list_at(m->lheap[0]) : 0;
  if (m->heap_len && (!at || rkey(m->heap[0]) < at)) at = rkey(m->heap[0]);
  uint64_t tat = apex__tmo_next_locked(m); /* timeouts.c */
  if (tat && (!at || tat < at)) at = tat;
  uint64_t sat = apex__sched_next_due_locked(m); /* rate tokens, start times */
  if (sat && (!at || sat < at)) at = sat;
  return at;
}

/* Runtime thread: fires what is due, re-arms for the rest. */
static void arm(apex_manager_t *m);
/* Fires everything due, then re-arms. Runs on the runtime thread and, in
 * DISPATCH mode, on the host's thread inside apex_manager_dispatch; the
 * pop is under pool_mu, so each due task is fired once, by one of them. */
static void fire_due(apex_manager_t *m, int on_host) {
  uint64_t expirations;
  /* Nonblocking: EAGAIN when it was re-armed since it became readable.
   * Either way the lists say what is due. */
  ssize_t got = read(on_host ? m->host_timer_fd : m->timer_fd, &expirations, sizeof expirations);
  if (on_host && m->ev_ticks) {
    /* The events' ticks mode (events.c): the host's timer went off if its
     * time passed (a one-shot timer is disarmed then), not if this read
     * returned an expiry: the count holds the events' signals too, and
     * their drain may have taken the expiry. Taken as gone off a moment
     * before the kernel fires it, it may still go off with nothing armed:
     * the host then wakes once and the drain of an empty queue reads it.
     * (With the epoll no such drain reads the timer, so there the rule
     * below stays.) */
    uint64_t now = apex__now_ns();
    apex__lock(&m->pool_mu);
    if (m->host_timer_at && now >= m->host_timer_at) m->host_timer_at = 0;
    apex__unlock(&m->pool_mu);
  } else if (got == (ssize_t)sizeof expirations) { /* went off: a one-shot timer is disarmed */
    apex__lock(&m->pool_mu);
    *(on_host ? &m->host_timer_at : &m->timer_fd_at) = 0;
    apex__unlock(&m->pool_mu);
  }
  enum { BATCH = 256 };
  apex_task_t *due[BATCH], *started[BATCH];
  int retry[BATCH]; /* 0 deadline, 1 retry, 2 the timeouts timer */
  int poke = 0;
  for (;;) {
    size_t n = 0;
    uint64_t now = apex__now_ns();
    apex__lock(&m->pool_mu);
    while (n < BATCH && m->lheap_len && list_at(m->lheap[0]) <= now) {
      apex__dlist_t *l = m->lheap[0];
      apex_task_t *t = l->head;
      dl_unlink(m, l, t);
      apex__task_ref(t); /* alive while linked (see apex__deadline_link_locked) */
      retry[n] = 0;
      due[n++] = t;
    }
    while (n < BATCH && m->heap_len && rkey(m->heap[0]) <= now) {
      apex_task_t *t = m->heap[0];
      heap_remove(m, t);
      retry[n] = 1;
      due[n++] = t; /* the heap's reference moves to us */
    }
    apex_task_t *tt;
    while (n < BATCH && (tt = apex__tmo_pop_due_locked(m, now))) {
      retry[n] = 2;
      due[n++] = tt; /* with a reference for us */
    }
    /* The scheduler: rate tokens due make their waiters runnable here;
     * tasks whose start time came are handed over (with the start heap's
     * reference, which on_start drops or passes on). */
    size_t before = apex__sched_runnable_locked(m);
    size_t ns = apex__sched_fire_locked(m, now, started, BATCH - n > 0 ? BATCH - n : 0);
    poke |= ns > 0 || apex__sched_runnable_locked(m) > before;
    apex__unlock(&m->pool_mu);
    for (size_t i = 0; i < n; i++) {
      if (retry[i] == 1)
        apex__task_on_retry(due[i], now);
      else if (retry[i] == 2)
        apex__task_on_timeout(due[i], now);
      else
        apex__task_on_deadline(due[i]);
      apex__task_unref(due[i]);
    }
    for (size_t i = 0; i < ns; i++) apex__task_on_start(started[i]);
    if (n + ns < BATCH) break;
  }
  if (poke) apex__pool_poke(m);
  arm(m);
}

static void on_deadline(uv_poll_t *h, int status, int events) { fire_due(h->data, 0); }

void apex__timers_fire(apex_manager_t *m) {
  if (m->host_timer_fd < 0) return;
  uint64_t at = atomic_load_explicit(&m->due_at, memory_order_acquire);
  if (at && apex__now_ns() >= at) fire_due(m, 1);
}

/* Under pool_mu: arms fd for at (0 disarms) unless it already is. */
static void set_timer_locked(apex_manager_t *m, int fd, uint64_t *armed, uint64_t at) {
  /* Armed already for the time or earlier: leave it. If it goes off with
   * nothing due, fire_due finds nothing and arms it then; this saves a
   * system call each time the earliest task ends before its deadline, and
   * one on the host's path after every timeout. */
  if (*armed && (!at || at >= *armed)) return;
  /* Nothing armed (a one-shot timer that went off is disarmed: fire_due
   * zeroes its time when it reads the expiry) and nothing to arm: no call.
   * The host's dispatch of a timeout with nothing after it made one, on
   * its way to the DONE (W4). */
  if (!*armed && !at) return;
  /* An absolute time already past fires at once; zero disarms. */
  struct itimerspec its = {{0, 0}, {(time_t)(at / 1000000000u), (long)(at % 1000000000u)}};
  if (timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) != 0) {
    apex__log(&m->log, APEX_LOG_ERROR, "timerfd_settime failed: deadlines may fire late");
    return;
  }
  *armed = at;
  if (fd == m->host_timer_fd) apex__events_timer_set(m); /* ticks zeroed: an owed signal again */
}

/* Arms the timers for the earliest due time. Any thread: under pool_mu, so
 * the two threads that fire timers never disagree on what is armed. In
 * DISPATCH mode the host's timer goes off at the time, the runtime's a
 * grace later: a host that dispatches promptly fires it itself, one thread
 * wake-up from the deadline to its DONE event instead of two (the runtime
 * thread's, then the host's); the runtime fires what a busy host left. */
static void arm(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  uint64_t at = next_due_locked(m);
  m->armed_at = at;
  arm_locked(m, at);
  apex__unlock(&m->pool_mu);
}

static void arm_locked(apex_manager_t *m, uint64_t at) {
  if (m->host_timer_fd >= 0) {
    set_timer_locked(m, m->host_timer_fd, &m->host_timer_at, at);
    atomic_store_explicit(&m->due_at, m->host_timer_at, memory_order_release);
    at = at ? at + APEX__HOST_TIMER_GRACE_NS : 0;
  }
  set_timer_locked(m, m->timer_fd, &m->timer_fd_at, at);
}

/* ------------------------------------------------------------- progress */

void apex__flush_request(apex_manager_t *m, apex_task_t *t) {
  int wake = 0;
  pthread_mutex_lock(&m->flush_mu);
  apex__progress_slot_t *r = t->run->prog; /* made by the report that asked */
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
  for (apex_task_t *i = t; i; i = i->run->prog->flush_next) {
    i->run->prog->flush_queued = 0;
    i->run->prog->flush_work_next = i->run->prog->flush_next;
  }
  m->last_flush_ns = apex__now_ns();
  pthread_mutex_unlock(&m->flush_mu);
  while (t) {
    apex_task_t *next = t->run->prog->flush_work_next;
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
  if (atomic_load_explicit(&m->rt_started, memory_order_relaxed)) uv_async_send(&m->wake);
}

static void *runtime_main(void *arg) {
  apex_manager_t *m = arg;
  uv_run(&m->loop, UV_RUN_DEFAULT);
  return NULL;
}

/* The host's timer, unless it is the events' fd (ticks mode: theirs to
 * close, after the last delivery). */
static void close_host_timer(apex_manager_t *m) {
  if (m->host_timer_fd >= 0 && m->host_timer_fd != apex__events_timer_fd(m))
    close(m->host_timer_fd);
}

int apex__runtime_start(apex_manager_t *m) {
  m->host_timer_fd = -1;
  if (m->cfg.delivery == APEX_DELIVER_DISPATCH && (m->host_timer_fd = apex__events_timer_fd(m)) < 0) {
    m->host_timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (m->host_timer_fd < 0) return APEX_E_IO;
    if (apex__events_watch_timer(m, m->host_timer_fd) != APEX_OK) {
      close(m->host_timer_fd);
      return APEX_E_IO;
    }
  }
  m->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (m->timer_fd < 0) {
    close_host_timer(m);
    return APEX_E_IO;
  }
  m->timer_fd_at = 0;
  if (uv_loop_init(&m->loop)) {
    close(m->timer_fd);
    close_host_timer(m);
    return APEX_E_IO;
  }
  if (uv_async_init(&m->loop, &m->wake, on_wake)) {
    uv_loop_close(&m->loop);
    close(m->timer_fd);
    close_host_timer(m);
    return APEX_E_IO;
  }
  int polling = uv_poll_init(&m->loop, &m->timer_poll, m->timer_fd) == 0;
  uv_timer_init(&m->loop, &m->flush_timer);
  m->wake.data = m->timer_poll.data = m->flush_timer.data = m;
  if (polling && uv_poll_start(&m->timer_poll, UV_READABLE, on_deadline) == 0) {
    atomic_store(&m->rt_started, 1);
    if (pthread_create(&m->rt_thread, NULL, runtime_main, m) == 0) return APEX_OK;
    atomic_store(&m->rt_started, 0);
  }
  uv_close((uv_handle_t *)&m->wake, NULL);
  if (polling) uv_close((uv_handle_t *)&m->timer_poll, NULL);
  uv_close((uv_handle_t *)&m->flush_timer, NULL);
  uv_run(&m->loop, UV_RUN_DEFAULT);
  uv_loop_close(&m->loop);
  close(m->timer_fd);
  close_host_timer(m);
  return APEX_E_IO;
}

void apex__runtime_stop(apex_manager_t *m) {
  if (!atomic_load(&m->rt_started)) return;
  atomic_store(&m->rt_stop, 1);
  uv_async_send(&m->wake);
  pthread_join(m->rt_thread, NULL);
  atomic_store(&m->rt_started, 0);
  uv_loop_close(&m->loop);
  close(m->timer_fd);
  close_host_timer(m);
}
