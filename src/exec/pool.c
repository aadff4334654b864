/* The worker pool: the threads that run handlers, the counts a task is in
 * while it lives (queued, live, open attempts), and the list of started,
 * not yet terminal tasks that shutdown cancels (with what still waits in
 * the scheduler, src/sched/, which decides what a worker takes next).
 *
 * pool_mu guards the scheduler, the thread counts and the timers
 * (runtime.c), so a submit is one critical section. The live list is one per lock
 * stripe, guarded by that stripe lock, which a task's first attempt opens
 * (joining the list) and its end (leaving it) hold anyway; the open
 * attempts are an atomic count. So a submit contends with a worker only for
 * the pop, and a worker's bookkeeping around a handler takes no shared
 * lock at all.
 * A task's end (apex__pool_task_end) leaves every count before its state
 * is published: stats read once the DONE event is delivered agree with it,
 * and a resubmit right after a wait finds the room the task left. Its
 * timers and its scheduler slots (what it counts against limits) are no
 * such count: a task that ends on the worker running it leaves its
 * deadline list and gives its slots back in that worker's next pool_mu
 * section (the one that pops its next task), so a task costs the worker
 * one pool_mu section, not two.
 * Idle workers: one at a time watches the queue briefly (spin_for_push),
 * the others sleep on a futex word each (see futex_wait below). A push
 * that finds the watcher hands it the task the scheduler picks
 * (handoff_locked), so that worker runs it without taking pool_mu; a
 * worker that ends a task and finds nothing to pop becomes idle in that
 * same section. pool_mu is an apex__lock_t (lock.h), which spins before
 * it sleeps.
 * Handlers run with no lock held. A worker whose handler outlives its task's
 * deadline is "stuck": the pool starts a replacement (up to
 * max_stuck_workers) once queued work has no idle worker to take it, so one
 * hung plugin cannot starve the others, and a surplus worker exits when its
 * stuck handler finally returns.
 *
 * Threads: submitters push from any thread; workers pop; the runtime thread
 * pushes retries. Failure: a replacement thread that cannot be started is
 * logged and the pool runs with fewer threads. */
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "exec/internal.h"

static void *worker_main(void *arg);
static void fold_stats_locked(apex_manager_t *m, apex__worker_t *w);

/* Idle workers sleep on a word of their own (a futex), not on a condition
 * variable: a submit picks one idle worker under pool_mu and wakes exactly
 * it after unlocking, so the woken worker never wakes into a held pool_mu,
 * and no glibc condition variable group switch makes the waker wait (which
 * a pthread_cond_signal after the unlock can). The word: 0 asleep (a wake
 * is a system call), 1 woken, 2 watching the word before it sleeps (a
 * wake is a store). */
#define WAKE_ASLEEP 0u
#define WAKE_WOKEN 1u
#define WAKE_WATCHING 2u

/* How long a worker that ends a task while another watches the queue
 * watches its own word before it sleeps (IDLE_WATCH_NS), and the queue's
 * watcher the queue (SPIN_NS, below). */
#define IDLE_WATCH_NS 5000u

/* Waits until *w is WAKE_WOKEN. Entered WAKE_WATCHING (idle_locked), it
 * first watches the word for IDLE_WATCH_NS, yielding as spin_for_push
 * does: in W1 a worker that ends a task while the other one watches is
 * needed again within a submit or two (the next push finds the watcher
 * busy with the task just handed to it, and must wake an idle worker), and
 * a futex sleep and wake each time was what was left of W1's slow mode
 * (bench/analysis.md). */
static void futex_wait(_Atomic uint32_t *w) {
  uint64_t until = 0;
  for (unsigned i = 1;
       atomic_load_explicit(w, memory_order_acquire) == WAKE_WATCHING; i++) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 0) {
      uint64_t now = apex__now_ns();
      if (!until) {
        until = now + IDLE_WATCH_NS;
      } else if (now >= until) {
        uint32_t e = WAKE_WATCHING;
        /* Failed: woken meanwhile (the word is WAKE_WOKEN). */
        atomic_compare_exchange_strong_explicit(w, &e, WAKE_ASLEEP, memory_order_acquire,
                                                memory_order_acquire);
        break;
      }
      (void)sched_yield();
    }
  }
  while (atomic_load_explicit(w, memory_order_acquire) != WAKE_WOKEN)
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, WAKE_ASLEEP, NULL, NULL, 0);
}

/* Wakes w's worker: a store while it watches the word, a system call once
 * it may sleep. */
static void futex_wake(_Atomic uint32_t *w) {
  if (atomic_exchange_explicit(w, WAKE_WOKEN, memory_order_acq_rel) == WAKE_ASLEEP)
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Under pool_mu: takes the most recently idle worker (its cache is the
 * warmest) off the idle stack, for the caller to wake (wake_worker) once
 * it unlocked; NULL when none is idle. */
static apex__worker_t *take_idle_locked(apex_manager_t *m) {
  apex__worker_t *w = m->idle_head;
  if (w) {
    m->idle_head = w->idle_next;
    m->n_idle--;
  }
  return w;
}

static void wake_worker(apex__worker_t *w) {
  if (w) futex_wake(&w->wake);
}

/* The worker's thread-locals are initial-exec: they are read several
 * times a task (here and through apex__pool_self, twice a task from
 * task.c's run states), and the default model of a shared library makes
 * each function's first access a call to __tls_get_addr (W1: 66
 * instructions a task under callgrind). A few dozen bytes of the static
 * TLS block, which glibc keeps room for even when the library is
 * dlopen'ed (as src/obs/metrics.c's block). */
#define TLS_IE __attribute__((tls_model("initial-exec")))

/* The manager a worker thread serves, and whether the handler it runs asked
 * for an orphaned manager's teardown (a deferred handler that called
 * complete() before returning): the worker does it once it is back in its
 * own loop, never while its own frame still uses the manager. */
static _Thread_local apex_manager_t *tls_worker_of TLS_IE;
static _Thread_local int tls_teardown TLS_IE;
/* The task this worker runs, and whether its end left the release of its
 * timers to the worker's next pool_mu section (apex__pool_task_end). */
static _Thread_local apex_task_t *tls_running TLS_IE;
static _Thread_local int tls_release_owed TLS_IE;
/* The scheduler slots of tls_running are to be given back in the worker's
 * next pool_mu section: it was popped and never opened an attempt, or its
 * attempt closed on this thread. */
static _Thread_local int tls_slots_owed TLS_IE;

static _Thread_local apex__worker_t *tls_self TLS_IE;
/* The task this thread is starting inline (apex__pool_start_inline), and
 * whether the scheduler slots its pick took are still to be given back
 * (its attempt never opened). A thread starts at most one at a time: a
 * submit made from inside that start queues as any other. */
static _Thread_local apex_task_t *tls_inline TLS_IE;
static _Thread_local int tls_inline_slots TLS_IE;

/* This thread's place on m->inline_held (under that manager's pool_mu),
 * from the section that picks a task for its inline start to the one
 * that ends the start. */
typedef struct apex__inline_hold {
  apex_task_t *t;
  struct apex__inline_hold *prev, *next;
} apex__inline_hold_t;
static _Thread_local apex__inline_hold_t tls_hold TLS_IE;

static void hold_link_locked(apex_manager_t *m, apex_task_t *t) {
  apex__inline_hold_t *h = &tls_hold;
  h->t = t;
  h->prev = NULL;
  h->next = m->inline_held;
  if (h->next) h->next->prev = h;
  m->inline_held = h;
}

static void hold_unlink_locked(apex_manager_t *m) {
  apex__inline_hold_t *h = &tls_hold;
  if (h->prev) h->prev->next = h->next;
  else m->inline_held = h->next;
  if (h->next) h->next->prev = h->prev;
  h->t = NULL;
  h->prev = h->next = NULL;
}

apex__worker_t *apex__pool_self(const apex_manager_t *m) {
  return tls_worker_of == m ? tls_self : NULL;
}

int apex__pool_defer_teardown(apex_manager_t *m) {
  if (tls_worker_of != m) return 0;
  tls_teardown = 1;
  return 1;
}

/* Joins workers that left (surplus after a stuck handler returned), so a
 * long-lived host that sees many timeouts keeps no dead thread's stack.
 * Under pool_mu: safe, since a leaving worker needs no lock after it set
 * `exited`. */
static void reap_locked(apex_manager_t *m) {
  for (apex__worker_t **pp = &m->workers; *pp;) {
    apex__worker_t *w = *pp;
    if (w->exited) {
      *pp = w->next;
      pthread_join(w->thread, NULL);
      free(w);
    } else {
      pp = &w->next;
    }
  }
}

/* Under pool_mu. Returns 0 or an errno. */
static int spawn_locked(apex_manager_t *m) {
  reap_locked(m);
  void *mem = NULL;
  if (posix_memalign(&mem, APEX__CACHE_LINE, sizeof(apex__worker_t)) != 0) return ENOMEM;
  apex__worker_t *w = memset(mem, 0, sizeof(apex__worker_t));
  w->m = m;
  int e = pthread_create(&w->thread, NULL, worker_main, w);
  if (e) {
    free(w);
    return e;
  }
  w->next = m->workers;
  m->workers = w;
  m->n_threads++;
  return 0;
}

/* Under pool_mu: a handler that outlived its deadline holds its worker, so
 * the pool may run one thread more per stuck handler (up to
 * max_stuck_workers). The replacement starts only when queued work has no
 * idle worker to take it: most handlers return as soon as their token
 * fires, and starting a thread at every timeout would cost the timeout's
 * path a thread creation for nothing. `coming` counts the idle workers
 * this section took off the stack to wake: each takes a runnable task, so
 * they count as idle (not counted, the submit right after a timeout that
 * woke the one idle worker started a thread as well: W4 made a thread per
 * timeout, bench/analysis.md). Returns 0 or an errno. */
static int replace_stuck_locked(apex_manager_t *m, size_t coming) {
  if (m->pool_stop || !m->n_stuck || m->n_stuck > m->cfg.max_stuck_workers) return 0;
  if (m->n_threads >= m->cfg.workers + m->n_stuck ||
      apex__sched_runnable_locked(m) <= m->n_idle + coming)
    return 0;
  return spawn_locked(m);
}

static void log_no_replacement(apex_manager_t *m, int e) {
  if (e) apex__log(&m->log, APEX_LOG_WARN, "no replacement for a stuck worker: %s", strerror(e));
}

int apex__pool_start(apex_manager_t *m, unsigned n) {
  apex__lock(&m->pool_mu);
  int e = 0;
  for (unsigned i = 0; i < n && !e; i++) e = spawn_locked(m);
  apex__unlock(&m->pool_mu);
  return e ? APEX_E_IO : APEX_OK;
}

/* Under pool_mu: the next task to run, its slots taken (sched.c), or
 * NULL. */
static apex_task_t *pop_locked(apex_manager_t *m) { return apex__sched_pick_locked(m); }

/* Under pool_mu, as the section's last change to what a task's runner
 * reads: the hand-off. The worker watching the queue (m->spinner) gets
 * the task the scheduler picks now, popped here for it as it would pop it
 * (the same pick: priorities, fairness, limits; nothing when every
 * runnable task is held), through its own word, so it runs it without
 * taking pool_mu. The pusher and the watcher then meet on pool_mu not at
 * all for that task: a submit that finds a watcher is one section in all,
 * where the watcher used to take pool_mu after the push and contend with
 * the next submit and the other worker's end (W1's slow mode:
 * bench/analysis.md), and the watcher reads only its own word, not a line
 * the pushers write. The watcher is taken off the watch here, so no later
 * push counts on it. Every section that makes a task runnable ends in
 * wake_for_runnable_locked or apex__pool_poke, which call this. */
static void handoff_locked(apex_manager_t *m) {
  apex__worker_t *w = m->spinner;
  if (!w) return;
  apex_task_t *t = pop_locked(m);
  if (!t) return;
  m->spinner = NULL;
  atomic_store_explicit(&w->holding, t, memory_order_relaxed);
  atomic_store_explicit(&w->handoff, t, memory_order_release);
}

/* Under pool_mu, once tasks may have become runnable: hands one to the
 * watcher (handoff_locked); returns the idle worker to wake (wake_worker,
 * after unlocking) for what is runnable beyond that, or NULL.
 * Returns: via *e, 0 or the errno of a stuck worker's replacement that
 * could not start. */
static apex__worker_t *wake_for_runnable_locked(apex_manager_t *m, int *e) {
  handoff_locked(m);
  /* A watcher still on the watch found every runnable task held: the
   * next change that frees one hands it over. Wake an idle one only for
   * tasks beyond what the watcher takes. */
  /* The idle stack first: with none idle (a backlog) the runnable count,
   * the solo queue's head line as well as its tail's, is not read. */
  apex__worker_t *w = m->idle_head && apex__sched_runnable_locked(m) > (m->spinner != NULL)
                          ? take_idle_locked(m)
                          : NULL;
  *e = replace_stuck_locked(m, w != NULL);
  return w;
}

void apex__pool_push(apex_manager_t *m, apex_task_t *t) {
  apex__lock(&m->pool_mu);
  if (m->pool_stop) { /* only a task shutdown already ended gets here */
    apex__unlock(&m->pool_mu);
    return;
  }
  apex__sched_push_locked(m, t); /* a retry re-enters: limits and rates again */
  int e;
  apex__worker_t *wake = wake_for_runnable_locked(m, &e);
  apex__unlock(&m->pool_mu);
  wake_worker(wake);
  log_no_replacement(m, e);
}

void apex__pool_poke(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  handoff_locked(m);
  size_t n = apex__sched_runnable_locked(m);
  apex__worker_t *ws = NULL;
  size_t coming = 0;
  for (size_t i = m->spinner != NULL; i < n && m->idle_head; i++, coming++) {
    apex__worker_t *w = take_idle_locked(m);
    w->idle_next = ws;
    ws = w;
  }
  int e = replace_stuck_locked(m, coming);
  apex__unlock(&m->pool_mu);
  while (ws) {
    apex__worker_t *next = ws->idle_next;
    wake_worker(ws);
    ws = next;
  }
  log_no_replacement(m, e);
}

/* Under pool_mu: is there room under every max_queued bound t counts in,
 * or, when the caller may wait, until wait_ms passes? pool_mu is released
 * while it waits. Returns APEX_OK, APEX_E_QUEUE_FULL, APEX_E_SHUTTING_DOWN. */
static int await_room_locked(apex_manager_t *m, apex_task_t *t, int64_t wait_ms, char *why,
                             size_t n) {
  uint64_t until = wait_ms ? apex__ns_after_ms(wait_ms) : 0;
  for (;;) {
    /* Checked here, under the lock destroy sets the flag in, so a task is
     * either refused or in the scheduler destroy's sweep finds; never
     * neither. The live count (config.max_queued) only rises under
     * pool_mu, and falls before an ended task's state is published: a
     * submit can be refused a moment early (while a task is ending), never
     * after the host saw it end, and never let one too many in. */
    if (atomic_load(&m->shutting_down)) return APEX_E_SHUTTING_DOWN;
    if (apex__sched_room_locked(m, t, why, n)) return APEX_OK;
    if (!wait_ms || apex__now_ns() >= until) return APEX_E_QUEUE_FULL;
    /* Woken when a task leaves a waiting place or ends (no polling), and
     * by destroy. */
    apex__sched_room_wait_locked(m, until);
  }
}

int apex__pool_may_inline(const apex_task_t *t) {
  return t->action->kind == APEX_ACTION_DEFERRED &&
         (t->action->flags & APEX_ACTION_F_START_INLINE) && !tls_worker_of && !tls_inline &&
         !(t->opts && (t->opts->durable || t->opts->start_ns));
}

/* Under pool_mu. */
static uint64_t next_id_locked(apex_manager_t *m) {
  uint64_t id = atomic_load_explicit(&m->next_id, memory_order_relaxed);
  atomic_store_explicit(&m->next_id, id + 1, memory_order_relaxed);
  return id;
}

uint64_t apex__pool_new_id(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  uint64_t id = next_id_locked(m);
  apex__unlock(&m->pool_mu);
  return id;
}

void apex__pool_refs_return_locked(apex_manager_t *m) {
  if (m->ref_bank) atomic_fetch_sub_explicit(&m->refs, m->ref_bank, memory_order_relaxed);
  m->ref_bank = 0;
}

unsigned apex__manager_task_refs(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  unsigned n = atomic_load(&m->refs) - m->ref_bank - 1;
  apex__unlock(&m->pool_mu);
  return n;
}

int apex__pool_submit(apex_manager_t *m, apex_task_t *t, int deadline, int retry,
                      const apex__sched_req_t *req, char *why, size_t why_len, int *picked) {
  if (picked) *picked = 0;
  apex__lock(&m->pool_mu);
  /* No request: the plugin's default class, nothing to bind. */
  int rc = req ? apex__sched_bind_locked(m, t, req, t->opts && !t->opts->shared) : APEX_OK;
  if (rc == APEX_OK) rc = await_room_locked(m, t, req ? req->wait_ms : 0, why, why_len);
  if (rc == APEX_OK && (deadline || retry)) rc = apex__timer_reserve_locked(m, t, deadline, retry);
  int scheduled = rc == APEX_OK && t->opts && t->opts->start_ns;
  if (scheduled && (rc = apex__sched_push_start_locked(m, t)) != APEX_OK)
    apex__timer_release_locked(m, t); /* no reference taken yet: none to drop */
  if (rc != APEX_OK) {
    apex__unlock(&m->pool_mu);
    return rc;
  }
  /* Counted in the section, no atomic add (internal.h, n_in); and so is
   * the submit in the stats. */
  atomic_store_explicit(&m->n_in, atomic_load_explicit(&m->n_in, memory_order_relaxed) + 1,
                        memory_order_release);
  atomic_store_explicit(&m->st_submitted,
                        atomic_load_explicit(&m->st_submitted, memory_order_relaxed) + 1,
                        memory_order_relaxed);
  /* The id and the manager reference, in the same section: no atomic add
   * on the submitters' line (bench/analysis.md, W1 of the eighth
   * session). A task given its id earlier keeps it (a traced or a
   * scheduled one takes it before the section that queues it,
   * apex__pool_new_id: its lock and its span need it; a
   * durable one from the store's blocks), so ids follow the queue order
   * only among the tasks that take it here. */
  if (!t->id) t->id = next_id_locked(m);
  if (!m->ref_bank) {
    atomic_fetch_add_explicit(&m->refs, APEX__REF_BATCH, memory_order_relaxed);
    m->ref_bank = APEX__REF_BATCH;
  }
  m->ref_bank--;
  apex__worker_t *wake = NULL;
  int e = 0;
  if (deadline) apex__deadline_link_locked(m, t);
  apex_task_t *back = NULL;
  if (!scheduled) {
    /* Nothing runnable before it: the pick that follows is the one a
     * worker would make, and it takes nobody's turn (priorities, fairness
     * and limits as for any pick; a task a limit holds stays parked). */
    int alone = picked && !apex__sched_runnable_locked(m);
    apex__sched_push_new_locked(m, t); /* with the submit's reference */
    apex_task_t *p = alone ? apex__sched_pick_locked(m) : NULL;
    if (p == t) {
      *picked = 1; /* the scheduler's reference is the caller's now */
      hold_link_locked(m, t); /* found by the ops walk until its start ends */
    } else {
      if (p) { /* not this one after all: back, for a worker */
        apex__sched_release_locked(m, p);
        apex__sched_push_locked(m, p);
        back = p;
      }
      wake = wake_for_runnable_locked(m, &e);
    }
  }
  apex__unlock(&m->pool_mu);
  if (back) apex__task_unref(back); /* the pick's; the push took its own */
  wake_worker(wake);
  log_no_replacement(m, e);
  return APEX_OK;
}

void apex__pool_start_inline(apex_manager_t *m, apex_task_t *t) {
  tls_inline = t;
  tls_inline_slots = 1; /* the pick's, the attempt's once it opens */
  int teardown = apex__task_run(t);
  tls_inline = NULL;
  /* Off the held list: on a live list from its attempt's open on, or
   * ended. */
  int e = 0;
  apex__worker_t *wake = NULL;
  apex__lock(&m->pool_mu);
  hold_unlink_locked(m);
  if (tls_inline_slots) { /* it never opened (ended meanwhile, or no memory) */
    tls_inline_slots = 0;
    apex__sched_release_locked(m, t);
    wake = wake_for_runnable_locked(m, &e);
  }
  apex__unlock(&m->pool_mu);
  wake_worker(wake);
  log_no_replacement(m, e);
  /* As a complete() from a plugin's own thread: the last attempt of an
   * orphaned manager tears it down (no submit races a destroy, but the
   * rule is the same everywhere). */
  if (teardown && !apex__pool_defer_teardown(m)) apex__manager_teardown(m, 0);
  apex__task_unref(t); /* the scheduler's, which the pick handed over */
}

void apex__pool_await_room(apex_manager_t *m, apex_task_t *t, uint64_t until) {
  char why[8];
  apex__lock(&m->pool_mu);
  /* Checked and waited for under one hold of pool_mu: a room made after
   * the caller's failed try wakes this wait, or this check sees it. */
  if (!atomic_load(&m->shutting_down) && !apex__sched_room_locked(m, t, why, sizeof why) &&
      apex__now_ns() < until)
    apex__sched_room_wait_locked(m, until);
  apex__unlock(&m->pool_mu);
}

/* Counts t in out[0..max) with a reference, unless it ended. */
static size_t collect_held_one(apex_task_t *t, apex_task_t **out, size_t max, size_t k) {
  /* Ended (its run returned, the word not cleared yet): not live, and no
   * longer on its way anywhere. */
  if (!t || apex_task_state_is_terminal(apex_task_state(t))) return k;
  /* Alive: its worker (or inline starter) drops its reference after the
   * pool_mu section that clears its word (or unlinks it). */
  if (k < max) {
    apex__task_ref(t);
    out[k] = t;
  }
  return k + 1;
}

size_t apex__pool_collect_held_locked(apex_manager_t *m, apex_task_t **out, size_t max) {
  size_t k = 0;
  for (apex__worker_t *w = m->workers; w; w = w->next)
    k = collect_held_one(atomic_load_explicit(&w->holding, memory_order_relaxed), out, max, k);
  for (apex__inline_hold_t *h = m->inline_held; h; h = h->next)
    k = collect_held_one(h->t, out, max, k);
  return k;
}

size_t apex__pool_collect_waiting(apex_manager_t *m, apex_task_t **out, size_t max) {
  apex__lock(&m->pool_mu);
  size_t n = apex__sched_collect_locked(m, out, max);
  /* Submits waiting for room see shutting_down and give up. */
  apex__sched_room_wake_locked(m);
  apex__unlock(&m->pool_mu);
  return n;
}

/* Under the stripe lock of r's task (t). */
static void unlink_live_locked(apex_manager_t *m, apex_task_t *t, apex__run_t *r) {
  apex__run_t **head = &m->stripes[t->id % APEX__LOCK_STRIPES].live_head;
  if (r->live_prev)
    r->live_prev->live_next = r->live_next;
  else if (*head == r)
    *head = r->live_next;
  if (r->live_next) r->live_next->live_prev = r->live_prev;
  r->live_prev = r->live_next = NULL;
}

/* Wakes destroy, which may be waiting for a count to reach zero (see
 * wait_zero in manager.c); no lock held but, possibly, a task lock. */
static void wake_destroyer(apex_manager_t *m) {
  pthread_mutex_lock(&m->wait_mu);
  pthread_cond_broadcast(&m->wait_cv);
  pthread_mutex_unlock(&m->wait_mu);
}

void apex__pool_task_end(apex_manager_t *m, apex_task_t *t, int closing) {
  /* A task that ends on the worker running it (its handler returned)
   * leaves its deadline list, and gives back its scheduler slots, in the
   * pool_mu section where the worker pops its next task: one section a
   * task, not two. Its timers hold no count a host reads, and one firing
   * meanwhile finds the task terminal. Not a task that holds a retry slot
   * (reserved room in the retry heap, which is released under the task
   * lock as the run state may go). Such a task was popped: it is in no
   * queue. */
  int on_worker = tls_running == t && tls_worker_of == m;
  apex__worker_t *wake = NULL;
  int e = 0;
  if (on_worker && apex__retry_policy(t)->max_attempts <= 1) {
    tls_release_owed = 1;
    if (closing) tls_slots_owed = 1;
  } else {
    unsigned refs = 0;
    apex__lock(&m->pool_mu);
    /* Ended while it waited (cancelled, timed out): it leaves the
     * scheduler now, and no worker pops it. */
    refs += apex__sched_remove_locked(m, t);
    if (closing) {
      apex__sched_release_locked(m, t);
      if (on_worker) tls_slots_owed = 0; /* given back here */
      else wake = wake_for_runnable_locked(m, &e);
    }
    refs += apex__timer_release_locked(m, t);
    apex__unlock(&m->pool_mu);
    if (refs) atomic_fetch_sub_explicit(&t->refs, refs, memory_order_acq_rel);
    wake_worker(wake);
    log_no_replacement(m, e);
  }
  if (t->run) unlink_live_locked(m, t, t->run);
  /* The open attempts less one (closing) and the ended tasks plus one, in
   * one addition (internal.h, n_active). */
  uint64_t was =
      atomic_fetch_add(&m->n_active, closing ? APEX__N_OUT_ONE - 1 : APEX__N_OUT_ONE);
  int idle = closing && apex__n_active_of(was) == 1;
  uint32_t out = (uint32_t)(was >> 32) + 1;
  apex__sched_room_freed(m); /* config.max_queued counts live tasks */
  /* n_in only once shutting down: it is in pool_mu's line, which every
   * submit writes, and an end that read it per task moved that line to
   * its worker and back. Both seq_cst: an end that sees no shutdown was
   * counted before destroy set the flag, so destroy's own read of the
   * counts sees it. Once shutting down, n_in no longer moves (no submit
   * gets past await_room_locked), so the last end then sees the two
   * equal. */
  if (atomic_load(&m->shutting_down) && (idle || out == (uint32_t)atomic_load(&m->n_in)))
    wake_destroyer(m);
}

int apex__pool_attempt_open(apex_manager_t *m, apex_task_t *t, int first) {
  /* Counted, then sweeping read, both seq_cst; destroy sets sweeping and
   * later reads the count: either this sees sweeping, or destroy sees
   * this attempt counted and waits for it. */
  atomic_fetch_add(&m->n_active, 1);
  int sweeping = atomic_load(&m->sweeping);
  /* The slots the pop took are the attempt's now, given back when it
   * closes. */
  if (tls_running == t && tls_worker_of == m) tls_slots_owed = 0;
  if (tls_inline == t) tls_inline_slots = 0;
  if (first) { /* under t's lock, which guards its stripe's list */
    apex__run_t **head = &m->stripes[t->id % APEX__LOCK_STRIPES].live_head;
    apex__run_t *r = t->run;
    r->live_prev = NULL;
    r->live_next = *head;
    if (*head) (*head)->live_prev = r;
    *head = r;
  }
  return sweeping;
}

int apex__pool_attempt_close(apex_manager_t *m, apex_task_t *t, int was_stuck) {
  if (tls_running == t && tls_worker_of == m && !was_stuck) {
    tls_slots_owed = 1; /* in the worker's next pool_mu section */
  } else {
    apex__lock(&m->pool_mu);
    if (was_stuck) m->n_stuck--; /* counted under the task lock with the stuck flag */
    apex__sched_release_locked(m, t);
    int e;
    apex__worker_t *wake = wake_for_runnable_locked(m, &e);
    apex__unlock(&m->pool_mu);
    wake_worker(wake);
    log_no_replacement(m, e);
  }
  unsigned left = (uint32_t)(atomic_fetch_sub(&m->n_active, 1) - 1);
  int last = (left & ~APEX__ORPHANED) == 0;
  /* Destroy sets the flag in the same word (no attempt opens by then):
   * exactly one close leaves the word at the flag alone, and destroy tears
   * down itself only if it set the flag on a zero count. */
  int orphan_done = left == APEX__ORPHANED;
  /* Not for an orphaned manager: its destroyer returned, nobody waits. */
  if (last && !orphan_done && atomic_load(&m->shutting_down)) wake_destroyer(m);
  return orphan_done;
}

void apex__pool_count_stuck(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  m->n_stuck++;
  apex__unlock(&m->pool_mu);
}

void apex__pool_uncount_stuck(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  m->n_stuck--;
  apex__unlock(&m->pool_mu);
}

void apex__pool_worker_stuck(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  /* The handler may have returned already (n_stuck back down): then no
   * replacement is owed; and none is started while no queued work needs
   * one (the next push starts it then). */
  int e = replace_stuck_locked(m, 0);
  unsigned stuck = m->n_stuck;
  apex__unlock(&m->pool_mu);
  log_no_replacement(m, e);
  if (!e && stuck > m->cfg.max_stuck_workers)
    apex__log(&m->log, APEX_LOG_WARN, "%u workers stuck in handlers that ignore cancellation",
              stuck);
}

/* How long an idle worker watches the queue before it sleeps. */
#define SPIN_NS 20000u

/* Returns once a push handed self a task, or SPIN_NS passed.
 * Between its clock reads (every 64 pauses, a few microseconds) it yields
 * its CPU: a watch that sees no push for that long is most often waiting
 * for a submitter that is itself waiting for a CPU (the pool's threads
 * outnumber the cores: on 2 cores, W1's host, the worker running a task
 * and the watcher), and the yield gives the submitter that CPU. With
 * nothing else runnable the yield returns at once, so the watch still
 * takes a push within about a system call. Measured on W1 (1M no-op
 * tasks): CPU per task 509 -> 390 ns, tasks/s not lower, W2's p99 not
 * higher (bench/analysis.md). */
static void spin_for_push(apex__worker_t *self) {
  uint64_t until = 0;
  for (unsigned i = 1;; i++) {
    if (atomic_load_explicit(&self->handoff, memory_order_relaxed)) return;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 0) {
      uint64_t now = apex__now_ns();
      if (!until) until = now + SPIN_NS;
      else if (now >= until) return;
      (void)sched_yield(); /* cannot fail on Linux; a failed one is only a missed hint */
    }
  }
}

/* How an idle worker waits (idle_locked). */
enum { IDLE_SPIN = 1, IDLE_SLEEP };

/* Under pool_mu, with nothing to pop: the worker becomes the watcher
 * (m->spinner: the first time, when no other watches) or goes on the idle
 * stack; the caller waits (idle_wait) once it released pool_mu. So the
 * section that ends a task and finds the queue empty is also the one that
 * makes its worker idle: one pool_mu section a task, not two. Returns
 * IDLE_SPIN or IDLE_SLEEP. */
static int idle_locked(apex_manager_t *m, apex__worker_t *self, int spun) {
  if (!spun && !m->spinner) {
    /* Watch the queue for a moment without the lock before sleeping: a
     * task pushed meanwhile is handed over (handoff_locked) with no futex
     * wake and wait, and no wake of an idle CPU (tens of us on a VM). One
     * worker at a time: the CPU a watcher burns is what an idle one
     * saves. */
    m->spinner = self;
    return IDLE_SPIN;
  }
  /* Idle: whoever takes it off the stack (a push, or stop) wakes it. A
   * worker that just ran a task watches its word a moment first (another
   * watches the queue: see futex_wait); one whose watch of the queue ran
   * out sleeps at once. */
  atomic_store_explicit(&self->wake, spun ? WAKE_ASLEEP : WAKE_WATCHING, memory_order_relaxed);
  self->idle_next = m->idle_head;
  m->idle_head = self;
  m->n_idle++;
  return IDLE_SLEEP;
}

/* pool_mu not held: waits as idle_locked decided. Returns a task handed
 * to self (pool_mu not held: run it), or NULL with pool_mu held. *spun:
 * set when a watch ended with nothing for it (its next idle is a sleep). */
static apex_task_t *idle_wait(apex_manager_t *m, apex__worker_t *self, int how, int *spun) {
  *spun = 0;
  if (how == IDLE_SLEEP) {
    futex_wait(&self->wake);
    apex__lock(&m->pool_mu);
    return NULL;
  }
  spin_for_push(self);
  apex_task_t *t = atomic_load_explicit(&self->handoff, memory_order_acquire);
  if (!t) {
    apex__lock(&m->pool_mu);
    if (m->spinner == self) { /* nothing handed: off the watch */
      m->spinner = NULL;
      *spun = 1;
      return NULL;
    }
    /* Handed a task since the load above, under the pool_mu now held. */
    apex__unlock(&m->pool_mu);
    t = atomic_load_explicit(&self->handoff, memory_order_acquire);
  }
  atomic_store_explicit(&self->handoff, NULL, memory_order_relaxed);
  return t;
}

static void *worker_main(void *arg) {
  apex__worker_t *self = arg;
  apex_manager_t *m = self->m;
  tls_worker_of = m;
  tls_self = self;
  /* The thread's malloc arena, made now rather than in its first task's
   * run: glibc makes one at a thread's first malloc (a heap's address
   * space reserved, its first pages made writable: about 25 us), and each
   * worker's first task (a fan-out's parent, its first child) paid it
   * (bench/analysis.md, W11 of the seventh session). Through a volatile
   * pointer, or the pair could be folded away. */
  void *volatile arena_probe = malloc(1);
  free(arena_probe);
  /* Set: popped (or handed over) with pool_mu not held. NULL: pool_mu
   * held. */
  apex_task_t *t = NULL;
  int spun = 0; /* spun since it last ran a task or slept */
  apex__lock(&m->pool_mu);
  for (;;) {
    if (!t) {
      /* A surplus thread (its stuck handler returned) leaves. */
      if (m->n_threads > m->cfg.workers + m->n_stuck) break;
      t = pop_locked(m);
      atomic_store_explicit(&self->holding, t, memory_order_relaxed);
      if (!t) {
        if (m->pool_stop) break;
        int how = idle_locked(m, self, spun);
        apex__unlock(&m->pool_mu);
        t = idle_wait(m, self, how, &spun);
        continue;
      }
      apex__unlock(&m->pool_mu);
    }

    spun = 0;
    tls_running = t;
    tls_slots_owed = 1; /* popped with its slots: the attempt's once it opens */
    int teardown = apex__task_run(t) | tls_teardown;
    tls_running = NULL;
    tls_teardown = 0;
    int owed = tls_release_owed;
    tls_release_owed = 0;
    int slots = tls_slots_owed;
    tls_slots_owed = 0;
    apex__lock(&m->pool_mu);
    unsigned refs = owed ? apex__timer_release_locked(m, t) : 0;
    int moved = slots ? apex__sched_release_locked(m, t) : 0;
    apex_task_t *next = NULL;
    int how = 0;
    if (!teardown && m->n_threads <= m->cfg.workers + m->n_stuck) {
      next = pop_locked(m);
      /* Nothing to run: idle from this section on (not a surplus thread,
       * which leaves at the loop's top, nor a stopping pool's). */
      if (!next && !m->pool_stop) how = idle_locked(m, self, 0);
    }
    /* t ran: it is on its live list or ended; what it holds now is next. */
    atomic_store_explicit(&self->holding, next, memory_order_relaxed);
    /* Slots given back may have let more tasks run than this worker
     * takes. */
    apex__worker_t *more = NULL;
    int e = 0;
    if (moved) more = wake_for_runnable_locked(m, &e);
    apex__unlock(&m->pool_mu);
    wake_worker(more);
    log_no_replacement(m, e);
    if (refs) atomic_fetch_sub_explicit(&t->refs, refs, memory_order_acq_rel);
    apex__task_unref(t);
    if (teardown) {
      /* Last handler of an orphaned manager: nothing else runs now. */
      apex__runs_flush_local(m, self);
      pthread_detach(pthread_self());
      apex__manager_teardown(m, 1);
      return NULL;
    }
    if (next) t = next;
    else if (how) t = idle_wait(m, self, how, &spun);
    else {
      t = NULL;
      apex__lock(&m->pool_mu);
    }
  }
  m->n_threads--;
  fold_stats_locked(m, self);
  self->exited = 1;
  /* A surplus worker may have been woken for a queued task it leaves:
   * hand that task's wakeup on. */
  apex__worker_t *heir = apex__sched_runnable_locked(m) ? take_idle_locked(m) : NULL;
  apex__unlock(&m->pool_mu);
  wake_worker(heir);
  /* Its kept run states to m's list (runs_mu, a leaf: after the unlock).
   * m lives until this thread is joined, which waits for this return. */
  apex__runs_flush_local(m, self);
  return NULL;
}

void apex__pool_stop(apex_manager_t *m) {
  apex__lock(&m->pool_mu);
  m->pool_stop = 1;
  while (m->idle_head) wake_worker(take_idle_locked(m)); /* each finds pool_stop */
  /* The list stays until every worker is joined: a stats read meanwhile
   * adds the counts of a worker that has not left yet (worker_main adds
   * them into m's as it leaves). No worker is started or reaped once
   * pool_stop is set. */
  apex__worker_t *ws = m->workers;
  apex__unlock(&m->pool_mu);
  pthread_t me = pthread_self();
  for (apex__worker_t *w = ws; w; w = w->next)
    if (!pthread_equal(w->thread, me)) pthread_join(w->thread, NULL);
  apex__lock(&m->pool_mu);
  m->workers = NULL;
  apex__unlock(&m->pool_mu);
  while (ws) {
    apex__worker_t *next = ws->next;
    free(ws);
    ws = next;
  }
}

/* ------------------------------------------------------------ counters
 *
 * A worker counts the attempts it starts and the tasks that end on its
 * thread in its own struct (its cache line), not in the manager's
 * counters: those were two atomic adds a task on one line that both of
 * W1's workers wrote in turn, each a transfer of that line between cores
 * (bench/analysis.md, sixth session, helper hW). Only the worker's thread
 * writes them, so a relaxed load and store count; a stats read adds them
 * up under pool_mu, and a worker that leaves adds them into m's in the
 * pool_mu section where it leaves. A count made before a task's state is
 * published is seen by whoever saw that state (the publication's release,
 * then pool_mu). */

static inline void own_add(_Atomic uint64_t *c) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                        memory_order_relaxed);
}

/* m's counter of the attempts (state < 0) or of the outcome state. */
static atomic_uint_fast64_t *m_stat(apex_manager_t *m, int state) {
  switch (state) {
    case APEX_TASK_SUCCEEDED: return &m->st_succeeded;
    case APEX_TASK_FAILED: return &m->st_failed;
    case APEX_TASK_CANCELLED: return &m->st_cancelled;
    case APEX_TASK_TIMED_OUT: return &m->st_timed_out;
    default: return &m->st_attempts;
  }
}

/* The worker's counter for state (as m_stat). */
static _Atomic uint64_t *w_stat(apex__worker_t *w, int state) {
  return state >= APEX_TASK_SUCCEEDED && state <= APEX_TASK_TIMED_OUT
             ? &w->st_outcomes[state - APEX_TASK_SUCCEEDED]
             : &w->st_attempts;
}

void apex__pool_count_attempt(apex_manager_t *m) {
  if (tls_worker_of == m) own_add(&tls_self->st_attempts);
  else atomic_fetch_add_explicit(&m->st_attempts, 1, memory_order_relaxed);
}

void apex__pool_count_outcome(apex_manager_t *m, int state) {
  if (tls_worker_of == m) own_add(w_stat(tls_self, state));
  else atomic_fetch_add_explicit(m_stat(m, state), 1, memory_order_relaxed);
}

uint64_t apex__pool_stat_locked(apex_manager_t *m, int state) {
  uint64_t n = atomic_load_explicit(m_stat(m, state), memory_order_relaxed);
  for (apex__worker_t *w = m->workers; w; w = w->next)
    n += atomic_load_explicit(w_stat(w, state), memory_order_relaxed);
  return n;
}

/* Under pool_mu, on w's own thread as it leaves: its counts into m's. */
static void fold_stats_locked(apex_manager_t *m, apex__worker_t *w) {
  static const int states[] = {-1, APEX_TASK_SUCCEEDED, APEX_TASK_FAILED, APEX_TASK_CANCELLED,
                               APEX_TASK_TIMED_OUT};
  for (size_t i = 0; i < sizeof states / sizeof *states; i++) {
    _Atomic uint64_t *c = w_stat(w, states[i]);
    atomic_fetch_add_explicit(m_stat(m, states[i]), atomic_load_explicit(c, memory_order_relaxed),
                              memory_order_relaxed);
    atomic_store_explicit(c, 0, memory_order_relaxed);
  }
}
