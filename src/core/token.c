/* Cancellation tokens (plan task 3.1.2): a one-way "cancelled" flag with a
 * reason, callbacks, a pollable eventfd, blocking waits and parent/child
 * links. Any thread may call any function. The flag is an atomic so that
 * apex_token_is_cancelled, polled in handlers' hot loops, is one acquire
 * load; the reason is written before the flag's release store and never
 * changes after, so apex_token_reason needs no lock either. Everything else
 * (callback list, running callback, children, fd) is guarded by the token's
 * mutex. apex_token_wait sleeps on the `cancelled` word itself (a Linux
 * futex): a cancelled handler is the usual waiter, and a condition
 * variable added a mutex hand-over and glibc's group switching, two or
 * three system calls, to its way out. An apex_token_remove_callback caller
 * waiting for a running callback sleeps on the `cb_done` word the same
 * way: no token carries a condition variable (48 bytes, and its set-up, on
 * every token: a child task has one each, bench/analysis.md W11).
 *
 * No user code runs under a lock: the cancelling thread pops callbacks one
 * at a time and calls each unlocked, noting which one runs on which thread
 * so a concurrent remove can wait for it (and a remove from inside it
 * does not). Children are collected under the parent's lock (each with a
 * "try-ref" since one may be in its final unref) and cancelled after, from
 * a worklist; freeing walks up the parent chain in a loop: neither recurses
 * per level, so a deep tree cannot exhaust the stack.
 *
 * Lock order: no function ever holds two token locks at once. A child's
 * final unref takes only its parent's lock (to unlink itself); new_child
 * takes only the parent's (the child is not yet shared); cancel takes only
 * its own token's lock and cancels children after releasing it.
 *
 * What can fail: allocation and mutex set-up in apex_token_new*
 * (APEX_E_NOMEM), eventfd in apex_token_fd (APEX_E_IO), on_cancel's node
 * allocation (APEX_E_NOMEM; the callback then never runs). Cancel never
 * fails: a reason that cannot be copied to the heap is kept truncated in an
 * inline buffer. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "apex/apex.h"
#include "core/token_internal.h"

/* Apex's own reasons ("parent", "timeout", "shutdown", ...) and most of a
 * host's fit inline; a longer one is copied to the heap at the cancel. */
enum { REASON_INLINE = 40 };

typedef struct token_cb {
  struct token_cb *next;
  uint64_t id;
  apex_token_fn fn;
  void *user;
} token_cb_t;

struct apex_token {
  atomic_int cancelled; /* set once (seq_cst); read with acquire; a futex word */
  atomic_uint waiters;  /* threads in apex_token_wait (seq_cst with cancelled) */
  /* Bumped under mu as each callback the canceller ran returns; a futex
   * word that apex_token_remove_callback waits on while cb_waiters says
   * someone does. */
  atomic_uint cb_done;
  atomic_uint cb_waiters;
  pthread_mutex_t mu;

  /* Written once under mu before `cancelled` is set; immutable after. */
  const char *reason;
  char *reason_heap; /* owned copy when it did not fit reason_inline */
  char reason_inline[REASON_INLINE];

  /* Under mu. */
  token_cb_t *cbs_head, *cbs_tail; /* pending callbacks, registration order */
  /* A node for one callback at a time, so the usual single watch (a child
   * task's on its own token, a wait's) costs no allocation; in use while
   * cb_inline_used (mu). */
  token_cb_t cb_inline;
  uint8_t cb_inline_used;
  /* A family's shared token (apex__token_new_shared): set before the token
   * is shared, immutable after. */
  uint8_t shared;
  int fd; /* eventfd, -1 until apex_token_fd asks */
  uint64_t next_id;
  uint64_t running_id; /* callback being run by the canceller; 0: none */
  pthread_t running_thread;

  /* Parent link: a strong reference held while linked (released when this
   * token is freed). Set at creation, then immutable. */
  apex_token_t *parent;
  /* Under the PARENT's mu: this token's place in parent->children (a weak
   * list: the parent never keeps a child alive). */
  apex_token_t *sib_prev, *sib_next;
  /* Under mu: the weak list of linked children. */
  apex_token_t *children;
  /* Written under the parent's mu by the parent's single cancel, read only
   * by that cancelling thread: the list of children it took refs on. */
  apex_token_t *collect_next; /* written only by the thread that marked the parent */
  apex_token_t *wake_next;    /* written only by the thread that marked this token */
  /* Last, a cache line away from `cancelled`: a family's shared token is
   * read by the spawner and the worker running its children (is it
   * cancelled?) while the host's frees of the children drop their
   * references, one per child (bench/analysis.md, W11 of the seventh
   * session). */
  atomic_uint refs;
};

/* Every task with a token, and every child task, has one: it stays in
 * malloc's 256-byte class (bench/analysis.md, W11). */
_Static_assert(sizeof(struct apex_token) <= 248, "a token must stay in malloc's 256-byte class");

/* A default mutex, initialised, locked and unlocked by the same thread:
 * these cannot fail. No assert: only a token the caller already freed
 * could make them fail, and Apex's code never aborts its host. */
static void lock(apex_token_t *tok) { (void)pthread_mutex_lock(&tok->mu); }

static void unlock(apex_token_t *tok) { (void)pthread_mutex_unlock(&tok->mu); }

/* Wakes the threads sleeping in apex_token_wait, if any (after `cancelled`
 * was set). */
static void wake_waiters(apex_token_t *tok) {
  if (atomic_load(&tok->waiters))
    (void)syscall(SYS_futex, (int *)&tok->cancelled, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

/* Caller holds tok->mu: cb is off the list; frees it, or makes the inline
 * node free again. */
static void cb_release(apex_token_t *tok, token_cb_t *cb) {
  if (cb == &tok->cb_inline)
    tok->cb_inline_used = 0;
  else
    free(cb);
}

/* Caller holds tok->mu: a callback returned; wakes the removers waiting
 * for it. The count is read under the lock the removers count themselves
 * under, so none is missed. */
static void callback_done(apex_token_t *tok) {
  atomic_fetch_add(&tok->cb_done, 1u);
  if (atomic_load_explicit(&tok->cb_waiters, memory_order_relaxed))
    (void)syscall(SYS_futex, (unsigned *)&tok->cb_done, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL,
                  0);
}

/* Increments the count unless it already reached zero (the token is then in
 * its final unref and must not be revived). Returns: true if a ref was
 * taken. */
static bool try_ref(apex_token_t *tok) {
  unsigned n = atomic_load_explicit(&tok->refs, memory_order_relaxed);
  while (n != 0) {
    if (atomic_compare_exchange_weak_explicit(&tok->refs, &n, n + 1, memory_order_relaxed,
                                              memory_order_relaxed))
      return true;
  }
  return false;
}

static apex_status_t token_alloc(apex_token_t **out) {
  apex_token_t *tok = calloc(1, sizeof *tok);
  if (!tok) return APEX_E_NOMEM;
  if (pthread_mutex_init(&tok->mu, NULL) != 0) {
    free(tok);
    return APEX_E_NOMEM;
  }
  atomic_init(&tok->refs, 1);
  atomic_init(&tok->cancelled, 0);
  atomic_init(&tok->waiters, 0);
  atomic_init(&tok->cb_done, 0);
  atomic_init(&tok->cb_waiters, 0);
  tok->fd = -1;
  *out = tok;
  return APEX_OK;
}

apex_status_t apex_token_new(apex_token_t **out) {
  if (!out) return APEX_E_INVALID;
  *out = NULL;
  return token_alloc(out);
}

/* Sets the reason and flag; caller holds tok->mu and has checked the flag.
 * heap: a copy of reason the token takes, or NULL to copy inline. */
static void mark_cancelled(apex_token_t *tok, const char *reason, char *heap) {
  if (heap) {
    tok->reason_heap = heap;
    tok->reason = heap;
  } else {
    /* Truncation happens only when the heap copy failed. */
    size_t n = strlen(reason);
    if (n >= sizeof tok->reason_inline) n = sizeof tok->reason_inline - 1;
    memcpy(tok->reason_inline, reason, n);
    tok->reason_inline[n] = '\0';
    tok->reason = tok->reason_inline;
  }
  /* seq_cst: a waiter counts itself, then reads the flag; wake_one reads the
   * count after this store. One of the two sees the other. */
  atomic_store(&tok->cancelled, 1);
}

apex_status_t apex_token_new_child(apex_token_t *parent, apex_token_t **out) {
  if (!out) return APEX_E_INVALID;
  *out = NULL;
  if (!parent) return APEX_E_INVALID;
  apex_token_t *child;
  apex_status_t rc = token_alloc(&child);
  if (rc != APEX_OK) return rc;

  lock(parent);
  if (atomic_load_explicit(&parent->cancelled, memory_order_relaxed)) {
    /* Born cancelled, and unlinked: nothing will ever cancel it again. The
     * child is not shared yet, so its fields need no lock of its own. */
    mark_cancelled(child, "parent", NULL);
  } else {
    /* Linked under the same lock in which cancel collects children, so a
     * child is either collected or sees the flag; never neither. */
    atomic_fetch_add_explicit(&parent->refs, 1, memory_order_relaxed);
    child->parent = parent;
    child->sib_next = parent->children;
    if (parent->children) parent->children->sib_prev = child;
    parent->children = child;
  }
  unlock(parent);
  *out = child;
  return APEX_OK;
}

apex_status_t apex__token_new_shared(apex_token_t *parent, apex_token_t **out) {
  apex_status_t rc = apex_token_new_child(parent, out);
  if (rc == APEX_OK) (*out)->shared = 1; /* not shared with anyone yet */
  return rc;
}

int apex__token_shared_open(const apex_token_t *tok) {
  return tok->shared && !apex_token_is_cancelled(tok);
}

apex_token_t *apex_token_ref(apex_token_t *tok) {
  if (tok) atomic_fetch_add_explicit(&tok->refs, 1, memory_order_relaxed);
  return tok;
}

/* Returns: the parent whose reference the freed token held (or NULL); the
 * caller drops it, iteratively, so a long chain does not recurse. */
static apex_token_t *token_free(apex_token_t *tok) {
  apex_token_t *parent = tok->parent;
  if (parent) {
    /* The parent may be collecting children right now; it skips us (our
     * count is 0) and cannot reach us once we are unlinked. */
    lock(parent);
    if (tok->sib_prev)
      tok->sib_prev->sib_next = tok->sib_next;
    else
      parent->children = tok->sib_next;
    if (tok->sib_next) tok->sib_next->sib_prev = tok->sib_prev;
    unlock(parent);
  }
  /* Linked children hold refs on us, so none is left (tok->children is
   * NULL). */
  token_cb_t *cb = tok->cbs_head;
  while (cb) {
    token_cb_t *next = cb->next;
    if (cb != &tok->cb_inline) free(cb);
    cb = next;
  }
  /* Linux releases the fd even when close reports an error; there is
   * nothing to retry and no one left to tell. */
  if (tok->fd >= 0) (void)close(tok->fd);
  free(tok->reason_heap);
  pthread_mutex_destroy(&tok->mu);
  free(tok);
  return parent;
}

apex_token_t *apex__token_ref_n(apex_token_t *tok, unsigned n) {
  if (tok && n) atomic_fetch_add_explicit(&tok->refs, n, memory_order_relaxed);
  return tok;
}

void apex__token_unref_n(apex_token_t *tok, unsigned n) {
  if (!tok || !n) return;
  /* All but the last in one step: they are not the last (the caller holds
   * n), so only the last drop can free. */
  if (n > 1) atomic_fetch_sub_explicit(&tok->refs, n - 1, memory_order_acq_rel);
  apex_token_unref(tok);
}

void apex_token_unref(apex_token_t *tok) {
  /* acq_rel: every other holder's writes happen before the free. */
  while (tok && atomic_fetch_sub_explicit(&tok->refs, 1, memory_order_acq_rel) == 1)
    tok = token_free(tok);
}

/* Wakes pollers of the fd; caller holds mu. The eventfd counter starts at 0
 * and gets exactly one write of 1, so EAGAIN (overflow) cannot happen. */
static int fd_signal(int fd) {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = write(fd, &one, sizeof one);
  } while (n < 0 && errno == EINTR);
  return n == (ssize_t)sizeof one ? 0 : -1;
}

/* Phase 1 of a cancel, for one token: sets the flag and reason and pushes
 * its live children, each with a reference taken, onto *work (through
 * collect_next) for the caller to mark in turn: a worklist rather than
 * recursion, so a deep tree cannot exhaust the stack. On APEX_OK it also
 * takes a reference for phase 2 (wake_one). */
static apex_status_t mark_one(apex_token_t *tok, const char *reason, apex_token_t **work) {
  /* Copy before locking; a short reason needs no allocation at all. */
  char *heap = NULL;
  if (strlen(reason) >= REASON_INLINE) heap = strdup(reason);

  lock(tok);
  if (atomic_load_explicit(&tok->cancelled, memory_order_relaxed)) {
    unlock(tok);
    free(heap);
    return APEX_E_ALREADY;
  }
  mark_cancelled(tok, reason, heap);
  /* A callback may drop the caller's last reference; keep tok alive. */
  atomic_fetch_add_explicit(&tok->refs, 1, memory_order_relaxed);
  for (apex_token_t *c = tok->children; c; c = c->sib_next) {
    if (!try_ref(c)) continue; /* in its final unref: nothing to cancel */
    c->collect_next = *work;
    *work = c;
  }
  unlock(tok);
  return APEX_OK;
}

/* Phase 2 for one marked token: wakes its fd and waiters and runs its
 * callbacks, then drops mark_one's reference. */
static void wake_one(apex_token_t *tok) {
  lock(tok);
  /* A failure cannot happen (see fd_signal) and cancel has no way to
   * report one; waiters and callbacks are woken regardless. */
  if (tok->fd >= 0) (void)fd_signal(tok->fd);
  if (!tok->cbs_head) {
    /* The common case. Waiters are woken after the unlock, so they do not
     * wake into a held mutex (a futex round trip more on the path from a
     * cancel to the handler's return); mark_one set the flag under the
     * lock, and its reference keeps tok alive until the unref. */
    unlock(tok);
    wake_waiters(tok);
    apex_token_unref(tok);
    return;
  }
  wake_waiters(tok);

  /* Callbacks registered from now on run at once in on_cancel, so this
   * thread alone drains the list; one at a time so that remove_callback can
   * still take out one that has not started. */
  token_cb_t *cb;
  while ((cb = tok->cbs_head) != NULL) {
    tok->cbs_head = cb->next;
    if (!tok->cbs_head) tok->cbs_tail = NULL;
    tok->running_id = cb->id;
    tok->running_thread = pthread_self();
    unlock(tok);
    cb->fn(tok, tok->reason, cb->user);
    lock(tok);
    cb_release(tok, cb);
    tok->running_id = 0;
    callback_done(tok);
  }
  unlock(tok);
  apex_token_unref(tok);
}

/* Two phases: every token of the subtree is marked cancelled before any
 * waiter wakes or callback runs. Otherwise work woken by the first token
 * (a handler returning, a worker freed) could see a sibling's token not yet
 * cancelled and start what its parent had just cancelled. */
apex_status_t apex_token_cancel(apex_token_t *tok, const char *reason) {
  if (!tok) return APEX_E_INVALID;
  apex_token_t *work = NULL, *marked = NULL, **tail = &marked;
  apex_status_t rc = mark_one(tok, reason ? reason : "user", &work);
  if (rc != APEX_OK) return rc;
  tok->wake_next = NULL;
  *tail = tok;
  tail = &tok->wake_next;
  while (work) {
    apex_token_t *c = work;
    work = c->collect_next;
    if (mark_one(c, "parent", &work) == APEX_OK) { /* ALREADY: cancelled on its own */
      c->wake_next = NULL;
      *tail = c; /* root first, then the order they were reached */
      tail = &c->wake_next;
    }
    apex_token_unref(c); /* the collecting reference; mark_one took its own */
  }
  while (marked) {
    apex_token_t *next = marked->wake_next;
    wake_one(marked);
    marked = next;
  }
  return rc;
}

int apex_token_is_cancelled(const apex_token_t *tok) {
  if (!tok) return 0;
  return atomic_load_explicit(&tok->cancelled, memory_order_acquire) ? 1 : 0;
}

const char *apex_token_reason(const apex_token_t *tok) {
  if (!apex_token_is_cancelled(tok)) return NULL;
  return tok->reason;
}

apex_status_t apex_token_on_cancel(apex_token_t *tok, apex_token_fn fn, void *user,
                                   uint64_t *id) {
  if (id) *id = 0;
  if (!tok || !fn) return APEX_E_INVALID;
  token_cb_t *cb = NULL;
  lock(tok);
  if (atomic_load_explicit(&tok->cancelled, memory_order_relaxed)) {
    unlock(tok);
    fn(tok, tok->reason, user);
    return APEX_OK;
  }
  if (!tok->cb_inline_used) {
    tok->cb_inline_used = 1;
    cb = &tok->cb_inline;
  } else {
    /* Allocated with the lock released (cancel takes it): the token may
     * fire meanwhile, so the flag is read again. */
    unlock(tok);
    cb = malloc(sizeof *cb);
    if (!cb) return APEX_E_NOMEM;
    lock(tok);
    if (atomic_load_explicit(&tok->cancelled, memory_order_relaxed)) {
      unlock(tok);
      free(cb);
      fn(tok, tok->reason, user);
      return APEX_OK;
    }
  }
  cb->next = NULL;
  cb->id = ++tok->next_id; /* starts at 1; 2^64 registrations never happen */
  cb->fn = fn;
  cb->user = user;
  if (tok->cbs_tail)
    tok->cbs_tail->next = cb;
  else
    tok->cbs_head = cb;
  tok->cbs_tail = cb;
  if (id) *id = cb->id;
  unlock(tok);
  return APEX_OK;
}

apex_status_t apex_token_remove_callback(apex_token_t *tok, uint64_t id) {
  if (!tok) return APEX_E_INVALID;
  if (id == 0) return APEX_E_ALREADY;
  lock(tok);
  token_cb_t *prev = NULL;
  for (token_cb_t *cb = tok->cbs_head; cb; prev = cb, cb = cb->next) {
    if (cb->id != id) continue;
    if (prev)
      prev->next = cb->next;
    else
      tok->cbs_head = cb->next;
    if (tok->cbs_tail == cb) tok->cbs_tail = prev;
    cb_release(tok, cb);
    unlock(tok);
    return APEX_OK;
  }
  /* Not pending: it ran, is running, or never existed. From inside the
   * callback itself, waiting would wait for ourselves. */
  while (tok->running_id == id && !pthread_equal(tok->running_thread, pthread_self())) {
    unsigned seen = atomic_load(&tok->cb_done);
    atomic_fetch_add(&tok->cb_waiters, 1u);
    unlock(tok);
    /* Returns at once if the count moved since it was read (EAGAIN), on a
     * wake, or spuriously: the loop looks again under the lock. */
    (void)syscall(SYS_futex, (unsigned *)&tok->cb_done, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
    lock(tok);
    atomic_fetch_sub(&tok->cb_waiters, 1u);
  }
  unlock(tok);
  return APEX_E_ALREADY;
}

int apex_token_fd(apex_token_t *tok) {
  if (!tok) return APEX_E_INVALID;
  lock(tok);
  if (tok->fd < 0) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) {
      unlock(tok);
      return APEX_E_IO;
    }
    /* Made under the same lock cancel signals under: no lost wake-up. */
    if (atomic_load_explicit(&tok->cancelled, memory_order_relaxed) && fd_signal(fd) != 0) {
      unlock(tok);
      (void)close(fd); /* failing anyway; nothing more to report */
      return APEX_E_IO;
    }
    tok->fd = fd;
  }
  int fd = tok->fd;
  unlock(tok);
  return fd;
}

apex_status_t apex_token_wait(apex_token_t *tok, int64_t timeout_ms) {
  if (!tok) return APEX_E_INVALID;
  if (atomic_load(&tok->cancelled)) return APEX_E_CANCELLED;
  if (timeout_ms == 0) return APEX_OK;
  struct timespec deadline;
  if (timeout_ms > 0) {
    if (clock_gettime(CLOCK_MONOTONIC, &deadline) != 0) return APEX_E_IO;
    /* Clamp so the sum cannot overflow time_t (~292 million years). */
    if (timeout_ms > INT64_MAX / 2 / 1000) timeout_ms = INT64_MAX / 2 / 1000;
    deadline.tv_sec += (time_t)(timeout_ms / 1000);
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
      deadline.tv_sec += 1;
      deadline.tv_nsec -= 1000000000L;
    }
  }
  apex_status_t result = APEX_OK;
  atomic_fetch_add(&tok->waiters, 1);
  for (;;) {
    if (atomic_load(&tok->cancelled)) {
      result = APEX_E_CANCELLED;
      break;
    }
    /* Sleeps while the word is 0; an absolute CLOCK_MONOTONIC deadline. */
    long r = syscall(SYS_futex, (int *)&tok->cancelled, FUTEX_WAIT_BITSET_PRIVATE, 0,
                     timeout_ms > 0 ? &deadline : NULL, NULL, FUTEX_BITSET_MATCH_ANY);
    if (r == 0 || errno == EAGAIN || errno == EINTR) continue;
    if (errno == ETIMEDOUT) {
      result = atomic_load(&tok->cancelled) ? APEX_E_CANCELLED : APEX_OK;
      break;
    }
    result = APEX_E_IO;
    break;
  }
  atomic_fetch_sub(&tok->waiters, 1);
  return result;
}
