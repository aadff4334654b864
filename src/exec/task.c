/* Tasks: the state machine, its single terminal transition, and the public
 * task-handle calls.
 *
 * A queued task is one small allocation (internal.h: no token, params, run
 * state or event node until something needs them); its run state (the ctx
 * handlers see, attempt results, progress) is taken from the manager's kept
 * ones (see "run states" below) when its first attempt starts (a deferred
 * action's task has its own, in the block they share: "deferred tasks'
 * blocks"), and its DONE
 * event is the task itself on the DONE queue. It is
 * reference counted: the host's handle,
 * the "life" reference (held until the task is terminal AND no handler owns
 * its ctx, so a late handler never touches freed memory), and one reference
 * for each queue it sits in (the scheduler, timer heap, flush list, events).
 *
 * Every change of state, and every event pushed for a task, happens under
 * the task's stripe lock, so a task's events are queued in the order its
 * state changed: progress before DONE, DONE exactly once. Token callbacks,
 * logging and waking waiters happen after the lock is dropped.
 *
 * Threads: any. Failure: an allocation failing while finishing a task
 * still finishes it (the error object falls back to a static one, and the
 * DONE event needs no allocation); a run state that cannot be allocated
 * fails the task with APEX_E_NOMEM; an ATTEMPT, PROGRESS or RETRY event whose
 * node cannot be allocated is not delivered, which leaves the task's state,
 * its counters and apex_task_wait unaffected. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/error.h"
#include "core/progress_internal.h"
#include "exec/internal.h"
#include "obs/metrics.h"
#include "ops/ops.h"

pthread_mutex_t *apex__task_mu(apex_task_t *t) {
  return &apex__task_m(t)->stripes[t->id % APEX__LOCK_STRIPES].mu;
}

static int is_terminal(int s) { return s >= APEX_TASK_SUCCEEDED && s <= APEX_TASK_TIMED_OUT; }

static void slot_free(apex__progress_slot_t *s) {
  if (!s) return;
  json_decref(s->details);
  json_decref(s->hb_details);
  json_decref(s->hb_prev);
  json_decref(s->cp_last);
  json_decref(s->cp_prev);
  apex__partial_free(s);
  apex__ptree_free(s->tree);
  apex__family_free(s->fam);
  apex_progress_unref(s->last_progress);
  for (unsigned i = 0; i < s->n_backlog; i++) apex_progress_unref(s->backlog[i]);
  free(s);
}

apex_token_t *apex__task_token(apex_task_t *t) {
  apex_token_t *tok = apex__task_token_peek(t);
  /* A child carries its family's shared token until it needs its own, a
   * child of that one (ops/children.c). */
  if (tok && !apex__token_shared_open(tok)) return tok;
  apex_token_t *shared = tok, *seen = tok;
  if ((shared ? apex_token_new_child(shared, &tok) : apex_token_new(&tok)) != APEX_OK) return NULL;
  /* Under the lock, where a cancel without a token marks the attempt
   * (oc_fired): a token made after that must say so too. */
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  int made = atomic_compare_exchange_strong(&t->token, &seen, tok);
  int fired = made && t->run && atomic_load_explicit(&t->run->attempt_open, memory_order_relaxed) &&
              atomic_load_explicit(&t->run->oc_fired, memory_order_relaxed);
  pthread_mutex_unlock(mu);
  if (!made) {
    apex_token_unref(tok); /* another thread made it first */
    return seen;
  }
  apex_token_unref(shared); /* t's reference; tok, linked below it, holds one */
  if (fired) apex_token_cancel(tok, apex__cause_name(APEX__CAUSE_USER));
  return tok;
}

apex_token_t *apex__ctx_token_peek(apex_task_t *t) {
  apex__tmo_t *x = apex__task_tmo(t);
  apex_token_t *tok = x ? atomic_load_explicit(&x->tok, memory_order_acquire) : NULL;
  return tok ? tok : apex__task_token_peek(t);
}

apex_token_t *apex__ctx_token(apex_task_t *t) {
  apex__tmo_t *x = apex__task_tmo(t);
  apex_token_t *tok = x ? atomic_load_explicit(&x->tok, memory_order_acquire) : NULL;
  return tok ? tok : apex__task_token(t);
}

_Static_assert(sizeof(apex_task_t) <= 120, "a queued task must stay in malloc's 128-byte class");
_Static_assert(sizeof(apex__run_t) <= 104, "a run state must stay in malloc's 112-byte class");

/* ------------------------------------------------ deferred tasks' blocks
 *
 * A task of a deferred action is allocated with its run state in one
 * block: such a task most often starts at once and then waits, pending,
 * for as long as its plugin keeps it, so its run state lives as long as
 * the task does. One block saves the worker that starts the task a run
 * state's allocation, and puts the run state at a fixed distance from the
 * task: a cancel asks for both at once (apex__task_prefetch_all), where it used
 * to find the run state only once the task's line had come, two misses in
 * a row for each of a million pending tasks cancelled in random order (W7
 * of bench/README.md; bench/analysis.md has the figures).
 *
 * Blocks come from slabs of the manager (BSLAB_SIZE mapped; a block keeps
 * its slab's index in the manager's table of slab records, bslab_t), under
 * runs_mu (a leaf), placed so that the neighbours an end unlinks are near
 * (blk_place): a block
 * freed goes back to its slab's free list, not to malloc, whose coalescing
 * of 232-byte chunks freed in random order cost more than the miss saved
 * (bench/analysis.md). A slab whose blocks are all free is unmapped at
 * once, but for one kept empty per manager (so a manager that
 * hovers around a slab's worth does not allocate and free one per task).
 *
 * The run state keeps the late-call rule (internal.h, apex__run_t;
 * apex_ctx_complete in apex/plugin.h): given back, it serves no other task
 * and its memory stays a run state until APEX__RUNS_KEEP others of blocks
 * went back after it (m->bruns, runs_mu), so a plugin's late call on the
 * ctx finds that the attempt ended. A block has two owners: the task
 * (until task_free) and, once the task started, its run state (until that
 * list lets it go); the last of them frees it. So after a burst the
 * manager keeps the one empty slab and the slabs of at most
 * APEX__RUNS_KEEP blocks still in their window (16 MiB at most), however
 * large the burst was. With AddressSanitizer, a free block is poisoned,
 * and so is a part whose owner let go while the other holds the block: a
 * use of a freed task is still reported. */
typedef struct task_blk {
  uint32_t slab; /* its slab's index in m->bslab_tab, for good */
  union {
    atomic_uint owners; /* in use: the task part, and the run part once it served */
    uint32_t free_next; /* free: the next free block's index in its slab + 1; 0: none */
  } h;
  apex_task_t task;
  apex__run_t run;
} task_blk_t;
_Static_assert(sizeof(task_blk_t) <= 232, "a deferred task's block must stay within a task's and "
                                          "a run state's 240 bytes (W7's bound is 250)");

/* APEX__BSLAB_SIZE (internal.h): small, so that the blocks a burst
 * leaves waiting for their window (at most APEX__RUNS_KEEP, each in a slab
 * of its own at worst) hold little: 64 KiB is 282 blocks, and those slabs
 * at most 16 MiB. Mapped, not malloc'd: malloc's aligned allocations left
 * a quarter of such a slab in fragments (W7's bytes per task 293, not
 * 233). */
#define BSLAB_SIZE APEX__BSLAB_SIZE
_Static_assert(offsetof(task_blk_t, task) == APEX__BLK_TASK_OFF &&
                   sizeof(task_blk_t) == APEX__BLK_SIZE,
               "apex__task_prefetch_all (internal.h) asks for the block's lines");
#define BSLAB_BLKS ((uint32_t)(BSLAB_SIZE / sizeof(task_blk_t)))

/* A slab's record, in m->bslab_tab (runs_mu), not in the slab: a block's
 * free then reads a table of 32 bytes a slab (120 KiB for a million
 * pending tasks, a few pages the TLB keeps), where a header in each slab
 * was a TLB miss of its own for every block freed in random order (W7's
 * delivery; bench/analysis.md). Indexes, not pointers: the table moves
 * when it grows. */
typedef struct apex__bslab {
  char *base;          /* the mapping; NULL: record unused (on m->bslab_unused) */
  uint32_t prev, next; /* m's list of slabs with a free block, or of unused records: index + 1 */
  uint32_t free;       /* blocks freed, LIFO: the first's index + 1; 0: none */
  uint32_t used;       /* blocks in use */
  uint32_t bump;       /* blocks ever handed out (those after, never touched) */
  uint32_t listed;     /* on m's list */
} bslab_t;

#if defined(__SANITIZE_ADDRESS__)
#define APEX__ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define APEX__ASAN 1
#endif
#endif
#ifdef APEX__ASAN
#include <sanitizer/asan_interface.h>
#define blk_poison(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define blk_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define blk_poison(p, n) ((void)(p), (void)(n))
#define blk_unpoison(p, n) ((void)(p), (void)(n))
#endif

static task_blk_t *blk_of_task(apex_task_t *t) {
  return (task_blk_t *)(void *)((char *)t - offsetof(task_blk_t, task));
}

static task_blk_t *blk_of_run(apex__run_t *r) {
  return (task_blk_t *)(void *)((char *)r - offsetof(task_blk_t, run));
}

static task_blk_t *slab_blk(const bslab_t *s, uint32_t i) {
  return (task_blk_t *)(void *)(s->base + (size_t)i * sizeof(task_blk_t));
}

/* 1 if t lives in a block with its run state (its action is deferred; the
 * action's copy is the manager's, valid as long as t). Any lock or none. */
static int task_in_blk(const apex_task_t *t) { return t->action->kind == APEX_ACTION_DEFERRED; }

/* Under runs_mu: slab i (index + 1) joins / leaves m's list of slabs with
 * a free block. */
static void slab_list(apex_manager_t *m, uint32_t i) {
  bslab_t *s = &m->bslab_tab[i - 1];
  s->prev = 0;
  s->next = m->bslabs;
  if (m->bslabs) m->bslab_tab[m->bslabs - 1].prev = i;
  m->bslabs = i;
  s->listed = 1;
}

static void slab_unlist(apex_manager_t *m, uint32_t i) {
  bslab_t *s = &m->bslab_tab[i - 1];
  if (s->prev)
    m->bslab_tab[s->prev - 1].next = s->next;
  else
    m->bslabs = s->next;
  if (s->next) m->bslab_tab[s->next - 1].prev = s->prev;
  s->prev = s->next = 0;
  s->listed = 0;
}

/* Gives back the record of slab i (index + 1; no block of it in use).
 * Under runs_mu. Returns: the slab's memory, for slab_unmap once
 * runs_mu is let go. */
static char *slab_forget(apex_manager_t *m, uint32_t i) {
  bslab_t *s = &m->bslab_tab[i - 1];
  char *p = s->base;
  memset(s, 0, sizeof *s);
  s->next = m->bslab_unused;
  m->bslab_unused = i;
  m->n_bslabs--;
  return p;
}

/* Unmaps a slab's memory. Any lock or none (none on a hot path). */
static void slab_unmap(char *p) {
  blk_unpoison(p, BSLAB_SIZE); /* a later mapping here starts clean */
  /* It fails only for lack of memory to split a mapping merged with its
   * neighbours: the slab then stays mapped, unused, until exit (its pages
   * are not touched again). Nothing to report to anyone. */
  (void)munmap(p, BSLAB_SIZE);
}

/* A new slab, listed, its record's index + 1; 0 on no memory. Under
 * runs_mu. */
static uint32_t slab_new(apex_manager_t *m) {
  if (!m->bslab_unused) { /* the table doubles: once per doubling of the slabs */
    uint32_t cap = m->bslab_cap ? 2 * m->bslab_cap : 16;
    bslab_t *tab = realloc(m->bslab_tab, (size_t)cap * sizeof *tab);
    if (!tab) return 0;
    memset(tab + m->bslab_cap, 0, (size_t)(cap - m->bslab_cap) * sizeof *tab);
    for (uint32_t k = cap; k > m->bslab_cap; k--) { /* the lowest first */
      tab[k - 1].next = m->bslab_unused;
      m->bslab_unused = k;
    }
    m->bslab_tab = tab;
    m->bslab_cap = cap;
  }
  /* Its pages now, in this call, not a page fault each at first touch:
   * the grid (blk_place) touches all 16 of them within a slab's first 64
   * blocks anyway, and on this kind of VM a fault's entry and exit cost
   * more than the kernel's zeroing of the page (W7's submit: about 50 ns
   * a task, bench/analysis.md, W7 of the tenth session). A kernel that
   * cannot populate (no memory at this moment) still maps the slab: its
   * pages then fault in at first touch, as without the flag. */
  char *p = mmap(NULL, BSLAB_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) return 0;
  uint32_t i = m->bslab_unused;
  bslab_t *s = &m->bslab_tab[i - 1];
  m->bslab_unused = s->next;
  memset(s, 0, sizeof *s);
  s->base = p;
  blk_poison(p, (size_t)BSLAB_BLKS * sizeof(task_blk_t));
  m->n_bslabs++;
  slab_list(m, i);
  return i;
}

/* Where a slab's k-th new block goes: the first 256 as a 64 x 4 grid
 * filled column by column, so blocks handed out 64 apart sit side by
 * side, and blocks handed out one after the other 4 apart. Tasks started
 * in a row take their run states in a row of stripes (id % 64) and link
 * them in their stripe's live list next to the one 64 before; ending one,
 * in random order, writes to its live neighbours and its deadline
 * neighbours (the one submitted before and after): in the block's page
 * most of the time, not 64 blocks (15 KiB, four pages) away (W7). */
static uint32_t blk_place(uint32_t k) {
  return k < 256 ? (k & 63) * 4 + (k >> 6) : k;
}

/* A zeroed block from m's slabs, or NULL on no memory. No lock held. */
static task_blk_t *blk_alloc(apex_manager_t *m) {
  task_blk_t *b;
  pthread_mutex_lock(&m->runs_mu);
  uint32_t i = m->bslabs;
  if (!i && !(i = slab_new(m))) { /* a new slab: once per BSLAB_BLKS blocks at most */
    pthread_mutex_unlock(&m->runs_mu);
    return NULL;
  }
  bslab_t *s = &m->bslab_tab[i - 1];
  if (s->free) {
    b = slab_blk(s, s->free - 1);
    blk_unpoison(b, sizeof *b);
    s->free = b->h.free_next;
  } else {
    b = slab_blk(s, blk_place(s->bump++));
    blk_unpoison(b, sizeof *b);
  }
  s->used++;
  if (i == m->bslab_empty) m->bslab_empty = 0;
  if (!s->free && s->bump == BSLAB_BLKS) slab_unlist(m, i);
  pthread_mutex_unlock(&m->runs_mu);
  memset(b, 0, sizeof *b);
  b->slab = i - 1;
  return b;
}

/* Gives b, of m, back to its slab (its last owner let go), and the slab
 * back once all of its blocks are free, unless it is the one m keeps. No
 * lock held. */
static char *blk_free_locked(apex_manager_t *m, task_blk_t *b);

static void blk_free(apex_manager_t *m, task_blk_t *b) {
  pthread_mutex_lock(&m->runs_mu);
  char *drop = blk_free_locked(m, b);
  pthread_mutex_unlock(&m->runs_mu);
  if (drop) slab_unmap(drop);
}

/* blk_free under runs_mu. Returns: a slab to unmap once the lock is
 * released, or NULL. */
static char *blk_free_locked(apex_manager_t *m, task_blk_t *b) {
  uint32_t i = b->slab + 1;
  char *drop = NULL;
  bslab_t *s = &m->bslab_tab[i - 1];
  b->h.free_next = s->free;
  s->free = (uint32_t)(b - slab_blk(s, 0)) + 1;
  blk_poison(b, sizeof *b);
  s->used--;
  if (!s->listed) slab_list(m, i);
  if (s->used == 0) {
    if (!m->bslab_empty) {
      m->bslab_empty = i;
    } else if (m->bslab_empty != i) {
      slab_unlist(m, i);
      drop = slab_forget(m, i);
    }
  }
  return drop;
}

/* Drops one owner of b, of m; the last frees it. No lock held. */
static void blk_release(apex_manager_t *m, task_blk_t *b) {
  if (atomic_fetch_sub_explicit(&b->h.owners, 1, memory_order_acq_rel) == 1) blk_free(m, b);
}

/* Frees the blocks fb owes, under one runs_mu section. No lock held. */
static void blks_flush(apex__free_batch_t *fb) {
  unsigned n = fb->n_blks, nu = 0;
  if (!n) return;
  char *unmap[APEX__FREE_BATCH_BLKS];
  pthread_mutex_lock(&fb->m->runs_mu);
  for (unsigned i = 0; i < n; i++) {
    char *d = blk_free_locked(fb->m, fb->blks[i]);
    if (d) unmap[nu++] = d;
  }
  pthread_mutex_unlock(&fb->m->runs_mu);
  fb->n_blks = 0;
  for (unsigned i = 0; i < nu; i++) slab_unmap(unmap[i]);
}

/* blk_release within fb, a free batch of m: a block whose last owner this
 * was is owed to fb, freed at its end or when it holds
 * APEX__FREE_BATCH_BLKS (a delivery's DONEs free one block each: one
 * runs_mu section a task, bench/analysis.md, W7 of the ninth session). */
static void blk_release_batched(task_blk_t *b, apex__free_batch_t *fb) {
  if (atomic_fetch_sub_explicit(&b->h.owners, 1, memory_order_acq_rel) != 1) return;
  if (fb->n_blks == APEX__FREE_BATCH_BLKS) blks_flush(fb);
  fb->blks[fb->n_blks++] = b;
}

apex_task_t *apex__task_alloc(apex_manager_t *m, const apex_action_desc_t *a) {
  if (a->kind != APEX_ACTION_DEFERRED) return apex__task_mem_new(); /* zeroed (tmem.c) */
  task_blk_t *b = blk_alloc(m);
  if (!b) return NULL;
  atomic_init(&b->h.owners, 1); /* the task's; its run state's when it starts */
  return &b->task;
}

void apex__task_discard(apex_task_t *t) {
  if (task_in_blk(t)) {
    apex_manager_t *m = apex__task_m(t);
    blk_poison(t, sizeof *t);
    blk_release(m, blk_of_task(t)); /* never started: the task was its only owner */
  } else {
    apex__task_mem_free(t);
  }
}

/* Gives back r, the run state of a block (its task's run part), to m's
 * list of those; past APEX__RUNS_KEEP the oldest lets its block go. No
 * lock held. */
static void bruns_give(apex_manager_t *m, apex__run_t *r) {
  apex__run_t *drop = NULL;
  char *unmap = NULL;
  r->free_next = NULL;
  pthread_mutex_lock(&m->runs_mu);
  if (m->bruns_tail)
    m->bruns_tail->free_next = r;
  else
    m->bruns_head = r;
  m->bruns_tail = r;
  if (++m->n_bruns > APEX__RUNS_KEEP) {
    drop = m->bruns_head;
    m->bruns_head = drop->free_next;
    m->n_bruns--;
    /* The next give drops the next one, cold by then: its link and its
     * block's owners word, asked for now (as runs_give does). */
    if (m->bruns_head) {
      __builtin_prefetch(&m->bruns_head->free_next, 1);
      __builtin_prefetch(blk_of_run(m->bruns_head), 1);
    }
    /* Its block's owner goes in this section: when it was the last (its
     * task freed), the block's free needs runs_mu too, and took a section
     * of its own a task (bench/analysis.md, W7 of the ninth session). */
    blk_poison(drop, sizeof *drop);
    task_blk_t *b = blk_of_run(drop);
    if (atomic_fetch_sub_explicit(&b->h.owners, 1, memory_order_acq_rel) == 1)
      unmap = blk_free_locked(m, b);
  }
  pthread_mutex_unlock(&m->runs_mu);
  if (unmap) slab_unmap(unmap);
}

/* ---------------------------------------------------------- run states
 *
 * Kept per manager, oldest first (internal.h, apex__run_t): a ctx's memory
 * stays a run state after its attempt ended, so a plugin's late call on it
 * is caught, not a use-after-free. FIFO with APEX__RUNS_KEEP held back, so
 * a run state is reused only after that many others ended after it; a
 * pool of them also saves a task its run state's malloc and free.
 *
 * A worker keeps its own FIFO of the run states it gave back (in its
 * apex__worker_t),
 * with the same rule (reused only past APEX__RUNS_KEEP newer ones), and
 * moves its oldest to the manager's list RUNS_BATCH at a time: a task that
 * starts and ends on workers takes no shared lock for its run state, and
 * the workers do not bounce runs_mu's cache line between them. A run
 * state moved to the manager's list had more than APEX__RUNS_KEEP newer
 * ones behind it already, so the rule holds there too. A worker gives its
 * FIFO to the manager before it exits (apex__runs_flush_local). */

#define RUNS_BATCH 32u

/* Appends the chain head..tail (n run states) to m's list, freeing the
 * oldest past APEX__RUNS_MAX. No lock held. */
static void runs_give(apex_manager_t *m, apex__run_t *head, apex__run_t *tail, unsigned n) {
  apex__run_t *drop = NULL, **dtail = &drop;
  tail->free_next = NULL;
  pthread_mutex_lock(&m->runs_mu);
  if (m->runs_tail)
    m->runs_tail->free_next = head;
  else
    m->runs_head = head;
  m->runs_tail = tail;
  m->n_runs += n;
  while (m->n_runs > APEX__RUNS_MAX) {
    apex__run_t *d = m->runs_head;
    m->runs_head = d->free_next;
    m->n_runs--;
    d->free_next = NULL;
    *dtail = d;
    dtail = &d->free_next;
  }
  /* The next give (or reuse) reads the head: it went back APEX__RUNS_MAX
   * gives ago and is cold by then. Ask for it now, so the miss overlaps
   * whatever the caller does before that (W7: a give per cancel). */
  if (drop && m->runs_head) { /* its link, and its start (free reads the chunk header) */
    __builtin_prefetch(&m->runs_head->free_next, 1);
    __builtin_prefetch(m->runs_head, 1);
  }
  pthread_mutex_unlock(&m->runs_mu);
  while (drop) {
    apex__run_t *next = drop->free_next;
    free(drop);
    drop = next;
  }
}

void apex__runs_flush_local(apex_manager_t *m, apex__worker_t *w) {
  unsigned n = atomic_load_explicit(&w->n_runs, memory_order_relaxed);
  if (n) runs_give(m, w->runs_head, w->runs_tail, n);
  w->runs_head = w->runs_tail = NULL;
  atomic_store_explicit(&w->n_runs, 0, memory_order_relaxed);
}

/* A run state for t's first attempt, reused or new. Under t's lock
 * (runs_mu is a leaf). Returns: NULL on no memory. */
static apex__run_t *run_get(apex_manager_t *m, apex_task_t *t) {
  apex__run_t *r = NULL;
  if (task_in_blk(t)) { /* its own, zeroed at submit, used once */
    task_blk_t *b = blk_of_task(t);
    atomic_fetch_add_explicit(&b->h.owners, 1, memory_order_relaxed);
    r = &b->run;
    r->ctx.api = &m->api; /* for good: apex__run_m */
    r->task = t;
    r->heap_idx = APEX__NOT_IN_HEAP;
    atomic_store_explicit(&r->id, t->id, memory_order_relaxed);
    return r;
  }
  apex__worker_t *w = apex__pool_self(m);
  unsigned kept = w ? atomic_load_explicit(&w->n_runs, memory_order_relaxed) : 0;
  if (kept > APEX__RUNS_KEEP) {
    r = w->runs_head;
    w->runs_head = r->free_next;
    atomic_store_explicit(&w->n_runs, kept - 1, memory_order_relaxed);
  } else {
    pthread_mutex_lock(&m->runs_mu);
    if (m->n_runs > APEX__RUNS_KEEP) {
      r = m->runs_head;
      m->runs_head = r->free_next;
      if (!m->runs_head) m->runs_tail = NULL;
      m->n_runs--;
    }
    pthread_mutex_unlock(&m->runs_mu);
  }
  if (r) {
    memset(&r->stuck, 0, sizeof *r - offsetof(apex__run_t, stuck));
  } else {
    if (!(r = calloc(1, sizeof *r))) return NULL;
    r->ctx.api = &m->api; /* for good: apex__run_m */
  }
  r->task = t;
  r->heap_idx = APEX__NOT_IN_HEAP;
  /* Before attempt_open's release store: a late call that sees the new
   * attempt open sees this id too, and so knows the run state moved on. */
  atomic_store_explicit(&r->id, t->id, memory_order_relaxed);
  return r;
}

/* Gives back r, which owns nothing any more, is off the live list and
 * serves no open attempt. No lock held. */
static void run_put(apex_manager_t *m, apex__run_t *r) {
  if (task_in_blk(r->task)) { /* its block's: r->task is alive here */
    bruns_give(m, r);
    return;
  }
  r->free_next = NULL;
  apex__worker_t *w = apex__pool_self(m);
  if (!w) {
    runs_give(m, r, r, 1);
    return;
  }
  unsigned kept = atomic_load_explicit(&w->n_runs, memory_order_relaxed);
  if (kept)
    w->runs_tail->free_next = r;
  else
    w->runs_head = r;
  w->runs_tail = r;
  if (++kept > APEX__RUNS_KEEP + RUNS_BATCH) { /* the oldest batch to m's list */
    apex__run_t *head = w->runs_head, *tail = head;
    for (unsigned i = 1; i < RUNS_BATCH; i++) tail = tail->free_next;
    w->runs_head = tail->free_next;
    kept -= RUNS_BATCH;
    atomic_store_explicit(&w->n_runs, kept, memory_order_relaxed);
    runs_give(m, head, tail, RUNS_BATCH);
    return;
  }
  atomic_store_explicit(&w->n_runs, kept, memory_order_relaxed);
}

void apex__runs_free(apex_manager_t *m) {
  for (apex__run_t *r = m->runs_head, *next; r; r = next) {
    next = r->free_next;
    free(r);
  }
  m->runs_head = m->runs_tail = NULL;
  m->n_runs = 0;
  /* Every task is gone: each block's run part is its last owner, and the
   * slabs all come free (the one kept empty is freed here). */
  for (apex__run_t *r = m->bruns_head, *next; r; r = next) {
    next = r->free_next;
    blk_release(m, blk_of_run(r));
  }
  m->bruns_head = m->bruns_tail = NULL;
  m->n_bruns = 0;
  for (uint32_t i = 1; i <= m->bslab_cap; i++)
    if (m->bslab_tab[i - 1].base) slab_unmap(slab_forget(m, i));
  free(m->bslab_tab);
  m->bslab_tab = NULL;
  m->bslab_cap = m->bslab_unused = m->bslabs = m->bslab_empty = 0;
}

/* The free batch open on this thread (apex__free_batch_begin), or NULL.
 * initial-exec: read at every task's free. */
static _Thread_local apex__free_batch_t *tls_free_batch __attribute__((tls_model("initial-exec")));

static void task_free(apex_task_t *t) {
  apex_manager_t *m = apex__task_m(t);
  apex_token_t *tok = apex__task_token_peek(t);
  if (t->opts && t->opts->parent_cb_id) apex_token_remove_callback(tok, t->opts->parent_cb_id);
  json_decref(atomic_load(&t->params));
  apex_token_unref(tok);
  apex__run_t *r = t->run;
  if (r) { /* kept for its progress: given back with the task */
    json_decref(r->attempt_result);
    apex_error_unref(r->attempt_error);
    apex_error_unref(r->result_refused);
    slot_free(r->prog);
    run_put(m, r);
  }
  int st = atomic_load(&t->state);
  if (st == APEX_TASK_SUCCEEDED)
    json_decref(t->out.result);
  /* A live task's word is its submit time; a lazy error never made owns
   * nothing. */
  else if (apex_task_state_is_terminal(st) && !apex__error_is_lazy(t->out.error))
    apex_error_unref(t->out.error);
  const apex__task_opts_t *fam_opts = t->opts && t->opts->fam ? t->opts : NULL;
  if (t->opts && !t->opts->shared) {
    apex__durable_task_free(t->opts->durable);
    apex__task_opts_free(t->opts); /* a class's block stays */
  }
  apex__free_batch_t *fb = tls_free_batch;
  int batched = fb && fb->m == m;
  if (task_in_blk(t)) {
    task_blk_t *b = blk_of_task(t);
    blk_poison(t, sizeof *t); /* its run state may hold the block a while */
    if (batched)
      blk_release_batched(b, fb);
    else
      blk_release(m, b);
  } else if (batched) {
    apex__task_mem_free_batched(t, fb);
  } else {
    apex__task_mem_free(t);
  }
  /* Last: the family's block may go with this count (ops/children.c). */
  if (fam_opts) apex__fam_opts_unref(fam_opts);
  if (batched)
    fb->m_refs++;
  else
    apex__manager_unref(m);
}

void apex__free_batch_begin(apex__free_batch_t *b, apex_manager_t *m) {
  b->m = m;
  b->m_refs = 0;
  b->slab = NULL;
  b->slots = 0;
  b->outer = tls_free_batch;
  b->n_blks = 0; /* blks[] is written before it is read */
  tls_free_batch = b;
}

void apex__free_batch_end(apex__free_batch_t *b) {
  tls_free_batch = b->outer;
  apex__task_mem_flush(b);
  blks_flush(b);
  if (b->m_refs) apex__manager_unref_n(b->m, b->m_refs);
}

apex_task_t *apex__task_new_ended(apex_manager_t *m, const apex__plugin_t *p,
                                  const apex_action_desc_t *a, uint64_t id, int state,
                                  uint32_t attempts, json_t *result, apex_error_t *error) {
  apex_task_t *t = apex__task_alloc(m, a);
  if (!t) {
    json_decref(result);
    apex_error_unref(error);
    return NULL;
  }
  t->id = id;
  t->plugin = p;
  t->action = a;
  atomic_init(&t->params, NULL);
  atomic_init(&t->refs, 1);
  atomic_init(&t->state, (uint8_t)state);
  t->attempt = (uint16_t)(attempts > 65535 ? 65535 : attempts);
  if (state == APEX_TASK_SUCCEEDED) {
    t->out.result = result ? result : json_null();
    apex_error_unref(error);
  } else {
    t->out.error = error;
    json_decref(result);
  }
  atomic_init(&t->done_next, APEX__DONE_DELIVERED);
  atomic_fetch_add(&m->refs, 1); /* task_free gives it back */
  return t;
}

void apex__task_ref(apex_task_t *t) { atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed); }

void apex__task_unref(apex_task_t *t) {
  if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1) task_free(t);
}

static apex__where_t where_of(const apex_task_t *t) {
  apex__where_t w = {t->plugin->desc.name, t->action->name, t->id, t->attempt};
  return w;
}

/* "cancelled (NAME)" for a cause: what apex__error_cancelled makes of its
 * name. Static; its length in *len. */
#define TEXT(lit) (*len = sizeof lit - 1, lit)
static const char *cancelled_text(apex__cause_t cause, size_t *len) {
  switch (cause) {
    case APEX__CAUSE_USER: return TEXT("cancelled (user)");
    case APEX__CAUSE_PARENT: return TEXT("cancelled (parent)");
    case APEX__CAUSE_SHUTDOWN: return TEXT("cancelled (shutdown)");
    case APEX__CAUSE_TIMEOUT: return TEXT("cancelled (timeout)");
  }
  return TEXT("cancelled (user)");
}
#undef TEXT

apex_error_t *apex__task_error(apex_task_t *t) {
  apex_error_t *e = __atomic_load_n(&t->out.error, __ATOMIC_ACQUIRE);
  if (!apex__error_is_lazy(e)) return e;
  uintptr_t v = (uintptr_t)e;
  unsigned kind = (unsigned)(v >> 1) & 0x7fu, arg = (unsigned)(v >> 8);
  /* t is terminal: its id and attempt no longer change. The names are the
   * plugin's copies: its manager may have unloaded it since. */
  const apex__plugin_t *p = t->plugin;
  apex__where_t w = {p->name_copy, p->action_names[t->action - p->actions], t->id, t->attempt};
  /* Apex's own words and names checked at load: copied, not scrubbed. A
   * cancel's words are of known length (W3q makes one per DONE). */
  size_t len;
  const char *text = kind == APEX__LAZY_CANCEL ? cancelled_text((apex__cause_t)arg, &len)
                                               : apex_strerror(-(int)arg);
  if (kind != APEX__LAZY_CANCEL) len = strlen(text);
  apex_error_t *made = apex__error_clean_n(
      kind == APEX__LAZY_CANCEL ? APEX_E_CANCELLED : -(int)arg, &w, text, len);
  if (__atomic_compare_exchange_n(&t->out.error, &e, made, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    return made;
  apex_error_unref(made); /* another reader made it first: e is that one */
  return e;
}

/* A view (core/error.h) is t->err_view's word: the task it is in. */
static apex_task_t *task_of_view(const apex_error_t *v) {
  return (apex_task_t *)(void *)((char *)(uintptr_t)v - offsetof(apex_task_t, err_view));
}

const apex_error_t *apex__error_view_error(const apex_error_t *v) {
  return apex__task_error(task_of_view(v));
}

void apex__error_view_ref(const apex_error_t *v) { apex__task_ref(task_of_view(v)); }

void apex__error_view_unref(const apex_error_t *v) { apex__task_unref(task_of_view(v)); }

/* 1 if t's DONE handed out a view of its error. Any thread: err_view is
 * written once, by the delivery, and the caller knows t terminal. */
static int has_view(apex_task_t *t) {
  return atomic_load_explicit(&t->err_view, memory_order_relaxed) == APEX__ERROR_VIEW;
}

const apex_error_t *apex__task_done_error(apex_task_t *t) {
  apex_error_t *e = __atomic_load_n(&t->out.error, __ATOMIC_ACQUIRE);
  if (!apex__error_is_lazy(e)) return e;
  /* The error made at the delivery was most of the delivery's cost of a
   * cancelled task (an allocation, the names copied, its free with the
   * task's: ~430 instructions), for hosts that most often only count
   * their DONEs (bench/analysis.md, W7 of the ninth session). */
  atomic_store_explicit(&t->err_view, APEX__ERROR_VIEW, memory_order_relaxed);
  return (const apex_error_t *)(const void *)&t->err_view;
}

/* ----------------------------------------------------------- progress */

/* Pushes one PROGRESS event for snap (a new reference, taken). Under the
 * task lock. */
static void deliver_progress_locked(apex_task_t *t, apex_progress_t *snap) {
  apex_manager_t *m = apex__task_m(t);
  apex_progress_unref(t->run->prog->last_progress);
  t->run->prog->last_progress = snap;
  atomic_fetch_add_explicit(&m->st_prog_delivered, 1, memory_order_relaxed);
  apex__mx_progress_delivering(m, t->run->prog);
  if (apex__task_child(t)) apex__child_delivered(t, snap); /* its parent rolls it up */
  if (!apex__events_wanted(m, t, APEX_EVENT_PROGRESS)) return;
  apex__ev_t *ev = apex__ev_new(t, APEX_EVENT_PROGRESS);
  if (!ev) return;
  apex__mx_progress_event(m, ev, t->run->prog);
  ev->ev.progress = apex_progress_ref(snap);
  apex__events_push(m, ev);
}

/* A snapshot of the task's progress as it stands: the tree and the details
 * are copied here, once per delivery, not per report. Under the lock.
 * Returns: NULL on no memory. */
static apex_progress_t *snapshot_locked(apex__progress_slot_t *s) {
  json_t *details = NULL, *subs = NULL;
  if (s->details && !(details = json_deep_copy(s->details))) return NULL;
  if (apex__ptree_size(s->tree) > 0 && !(subs = apex__ptree_json(s->tree))) {
    json_decref(details);
    return NULL;
  }
  double pct = s->pct;
  /* A parent's children are rolled up here, at delivery, not per report:
   * a failure leaves them out of this one snapshot. */
  if (s->fam) (void)apex__family_rollup(s->fam, s->pct, &pct, &subs, &details);
  apex_progress_t *snap = apex__progress_new(s->seq + 1, pct, s->msg,
                                             s->status[0] ? s->status : NULL, details, subs);
  if (snap) s->seq++;
  return snap;
}

/* Snapshots the latest coalesced state. Under the lock. */
static apex_progress_t *latest_snapshot_locked(apex_task_t *t) {
  apex__progress_slot_t *s = t->run->prog;
  s->dirty = 0; /* even on failure: the next report makes it due again */
  return snapshot_locked(s);
}

/* Pushes a HEARTBEAT event with a copy of the latest details (the event
 * owns it: apex__ev_free). Under the lock. */
static void deliver_heartbeat_locked(apex_task_t *t, apex__progress_slot_t *s) {
  apex_manager_t *m = apex__task_m(t);
  s->hb_dirty = 0;
  if (!apex__events_wanted(m, t, APEX_EVENT_HEARTBEAT)) return;
  json_t *d = NULL;
  if (s->hb_details && !(d = json_deep_copy(s->hb_details))) return; /* not delivered */
  apex__ev_t *ev = apex__ev_new(t, APEX_EVENT_HEARTBEAT);
  if (!ev) {
    json_decref(d);
    return;
  }
  ev->ev.result = d;
  apex__events_push(m, ev);
}

/* Delivers a heartbeat due, the backlog, the latest update, then a partial
 * result due.
 * Under the lock. Returns the last snapshot delivered (new reference, for
 * logging) or NULL. */
static apex_progress_t *flush_locked(apex_task_t *t) {
  apex__progress_slot_t *s = t->run ? t->run->prog : NULL;
  if (!s) return NULL;
  if (s->hb_dirty) deliver_heartbeat_locked(t, s);
  apex_progress_t *last = NULL;
  for (unsigned i = 0; i < s->n_backlog; i++) {
    deliver_progress_locked(t, s->backlog[i]);
    last = s->backlog[i];
  }
  s->n_backlog = 0;
  int kids = s->fam && apex__family_take_dirty(s->fam); /* always taken: it queued this flush */
  if (s->dirty || kids) {
    apex_progress_t *snap = latest_snapshot_locked(t);
    if (snap) {
      deliver_progress_locked(t, snap);
      last = snap;
    }
  }
  apex__partial_flush_locked(t, s); /* after the progress it goes with (partial.c) */
  apex__mx_progress_flushed(apex__task_m(t), t, s);
  return last ? apex_progress_ref(last) : NULL;
}

/* Fills w with what a log record about t carries (task, plugin, action,
 * attempt, and its trace ids in tid/sid when tracing is on). Not under t's
 * lock. */
static void log_where(apex_task_t *t, apex__log_where_t *w, char tid[33], char sid[17]) {
  *w = (apex__log_where_t){t->id, t->plugin->desc.name, t->action->name, t->attempt, NULL, NULL,
                            APEX_LOG_ORIGIN_APEX};
  if (apex__task_m(t)->tracer && apex__trace_log_ids(t, tid, sid)) {
    w->trace_id = tid;
    w->span_id = sid;
  }
}

static void log_progress(apex_task_t *t, apex_progress_t *p) {
  if (!p) return;
  apex_manager_t *m = apex__task_m(t);
  if (apex__log_enabled(&m->log, APEX_LOG_DEBUG)) {
    apex__log_where_t w;
    char tid[33], sid[17];
    log_where(t, &w, tid, sid);
    apex__log_at(&m->log, APEX_LOG_DEBUG, &w, "progress #%llu %.1f%% [%s] %s",
                 (unsigned long long)apex_progress_seq(p), apex_progress_percentage(p),
                 apex_progress_status(p), apex_progress_message(p));
  }
  apex_progress_unref(p);
}

void apex__task_flush_progress(apex_task_t *t) {
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  apex_progress_t *last = is_terminal(atomic_load(&t->state)) ? NULL : flush_locked(t);
  pthread_mutex_unlock(mu);
  log_progress(t, last);
}

/* Copies a status name (validated: short) into a slot field. A plain copy,
 * not snprintf: this runs for every report a plugin makes. */
static void set_status(char dst[32], const char *src) {
  size_t n = strnlen(src, 31);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

/* One report, as the slot applies it: a full report (every field given;
 * its JSON borrowed from the plugin) or a node update (node: a sub-task's
 * index, or APEX_PROGRESS_ROOT for the task's own figures; msg and status
 * NULL keep what is there). */
typedef struct report {
  int full;
  size_t node;
  double pct;
  const char *msg; /* msg_len bytes */
  size_t msg_len;
  const char *status;
  const json_t *details, *sub_tasks;
} report_t;

/* Changes the progress state as rep says. Under the lock. Returns: APEX_OK
 * or APEX_E_NOMEM (the state then holds what could be applied: every field
 * valid, the tree a valid tree). */
static int apply_locked(apex__progress_slot_t *s, const report_t *rep) {
  if (rep->node != APEX_PROGRESS_ROOT)
    return apex__ptree_set(s->tree, rep->node, rep->pct, rep->status, rep->msg, rep->msg_len);
  s->pct = rep->pct;
  if (rep->msg) {
    memcpy(s->msg, rep->msg, rep->msg_len);
    s->msg[rep->msg_len] = '\0';
  }
  if (rep->status) set_status(s->status, rep->status);
  if (!rep->full) return APEX_OK;
  int rc = APEX_OK;
  /* Details are copied only when they changed: a plugin that sends the
   * same details with every report pays a comparison. */
  if (!rep->details) {
    json_decref(s->details);
    s->details = NULL;
  } else if (!s->details || !json_equal(s->details, (json_t *)rep->details)) {
    json_t *copy = json_deep_copy(rep->details);
    if (copy) {
      json_decref(s->details);
      s->details = copy;
    } else {
      rc = APEX_E_NOMEM;
    }
  }
  if (rep->sub_tasks && !s->tree && !(s->tree = apex__ptree_new())) return APEX_E_NOMEM;
  if (s->tree) {
    int trc = apex__ptree_merge(s->tree, rep->sub_tasks);
    if (trc != APEX_OK) rc = trc;
  }
  return rc;
}

/* Accepts a validated report for t. Sets *request when t needs a flush it
 * has not asked for yet. Under the lock. Returns: APEX_OK; APEX_E_INVALID
 * (nothing changed) for a node update whose index names no sub-task;
 * APEX_E_NOMEM. */
static int report_locked(apex_task_t *t, const report_t *rep, int *request) {
  apex__run_t *r = t->run;
  apex__progress_slot_t *s = r->prog;
  if (!s && !(s = r->prog = calloc(1, sizeof *s))) return APEX_E_NOMEM;
  if (rep->node != APEX_PROGRESS_ROOT && rep->node >= apex__ptree_size(s->tree))
    return APEX_E_INVALID;
  apex__mx_progress_report(apex__task_m(t), s);
  /* Only the task's own status is watched: a status given for it that is a
   * milestone or differs from the last one. A sub-task's status changes
   * coalesce with the rest of the tree. */
  const char *prev = s->status[0] ? s->status : "running";
  int keep = rep->node == APEX_PROGRESS_ROOT && rep->status &&
             (strcmp(rep->status, "milestone_reached") == 0 || strcmp(rep->status, prev) != 0);
  if (keep && apex__task_m(t)->tracer) apex__trace_milestone(t, rep->status, rep->pct);
  if (keep && s->n_backlog + 2 <= APEX__PROGRESS_BACKLOG_MAX) {
    /* Never dropped: the pending state goes first, so order holds. */
    if (s->dirty) {
      apex_progress_t *p = latest_snapshot_locked(t);
      if (p) s->backlog[s->n_backlog++] = p;
    }
    int rc = apply_locked(s, rep);
    apex_progress_t *p = snapshot_locked(s);
    if (p) {
      s->backlog[s->n_backlog++] = p;
      *request = 1;
      return rc;
    }
    rc = APEX_E_NOMEM; /* delivered as a coalesced update instead */
    if (!s->dirty && s->n_backlog == 0) *request = 1;
    s->dirty = 1;
    return rc;
  }
  /* Coalesced: the latest wins. A full backlog degrades to this too. */
  if (!s->dirty && s->n_backlog == 0) *request = 1;
  s->dirty = 1;
  return apply_locked(s, rep);
}

/* Takes t's lock for a report on r and hands it to report_locked; the
 * common part of both report calls. */
static int report(apex__run_t *r, const report_t *rep, size_t *n_nodes) {
  apex_manager_t *m = apex__run_m(r);
  int request = 0, rc;
  apex_task_t *t = apex__run_lock_live(r);
  if (!t) { /* after complete: misuse */
    apex__ctx_misuse(m, atomic_load_explicit(&r->id, memory_order_relaxed),
                     rep->full ? "progress" : "apex_ctx_progress_node");
    return APEX_OK;
  }
  pthread_mutex_t *mu = apex__task_mu(t);
  if (is_terminal(atomic_load_explicit(&t->state, memory_order_relaxed))) {
    /* After a timeout or cancel: the ctx is still the handler's. */
    pthread_mutex_unlock(mu);
    atomic_fetch_add_explicit(&m->st_late, 1, memory_order_relaxed);
    return APEX_OK;
  }
  rc = report_locked(t, rep, &request);
  if (rc == APEX_E_INVALID && n_nodes) *n_nodes = apex__ptree_size(t->run->prog->tree);
  /* The flush request runs unlocked; a completion racing this report on
   * another thread (misuse, but caught) could free t meanwhile. */
  if (request) apex__task_ref(t);
  pthread_mutex_unlock(mu);
  if (rc == APEX_OK) atomic_fetch_add_explicit(&m->st_prog_reported, 1, memory_order_relaxed);
  if (request) {
    apex__flush_request(m, t);
    apex__task_unref(t);
  }
  return rc;
}

int apex__task_report(apex__run_t *r, double pct, const char *msg, size_t len, const char *status,
                      const json_t *details, const json_t *sub_tasks) {
  report_t rep = {.full = 1,
                  .node = APEX_PROGRESS_ROOT,
                  .pct = pct,
                  .msg = msg ? msg : "",
                  .msg_len = msg ? len : 0,
                  .status = status ? status : "running",
                  .details = details,
                  .sub_tasks = sub_tasks};
  return report(r, &rep, NULL);
}

int apex__task_report_node(apex__run_t *r, size_t index, double pct, const char *status,
                           const char *msg, size_t len, size_t *n_nodes) {
  report_t rep = {.node = index, .pct = pct, .msg = msg, .msg_len = len, .status = status};
  return report(r, &rep, n_nodes);
}

/* --------------------------------------------------------- heartbeats
 *
 * A heartbeat says the attempt is alive (it resets the heartbeat timeout)
 * and may carry details, kept as the attempt's latest (Apex's copy, only
 * made when they differ from the last), delivered as a HEARTBEAT event
 * coalesced with progress (at most progress_rate_hz a second; the latest
 * wins) and handed to the next attempt (apex_ctx_heartbeat_details). They
 * live in the progress slot, which persists across attempts. Progress
 * reports are not heartbeats (as in Temporal): a plugin that reports
 * progress but is stuck in one call should still time out. */

int apex__run_heartbeat(apex__run_t *r, const json_t *details) {
  apex_manager_t *m = apex__run_m(r);
  apex_task_t *t = apex__run_lock_live(r);
  if (!t) {
    apex__ctx_misuse(m, atomic_load_explicit(&r->id, memory_order_relaxed), "apex_ctx_heartbeat");
    return APEX_E_INVALID;
  }
  pthread_mutex_t *mu = apex__task_mu(t);
  if (is_terminal(atomic_load_explicit(&t->state, memory_order_relaxed))) {
    pthread_mutex_unlock(mu); /* after a timeout or cancel: ignored */
    atomic_fetch_add_explicit(&m->st_late, 1, memory_order_relaxed);
    return APEX_OK;
  }
  apex__tmo_t *tmo = apex__task_tmo(t);
  /* The clock is read only by a task with a heartbeat timeout. */
  if (tmo && tmo->hb_ns && tmo->hb_last) tmo->hb_last = apex__now_ns();
  int want = apex__events_wanted(m, t, APEX_EVENT_HEARTBEAT);
  int rc = APEX_OK, request = 0;
  if (details || want) {
    apex__progress_slot_t *s = r->prog;
    if (!s && !(s = r->prog = calloc(1, sizeof *s))) {
      pthread_mutex_unlock(mu);
      return APEX_E_NOMEM;
    }
    /* NULL details keep the last ones: a bare heartbeat only says alive. */
    if (details && (!s->hb_details || !json_equal(s->hb_details, (json_t *)details))) {
      json_t *copy = json_deep_copy(details);
      if (copy) {
        json_decref(s->hb_details);
        s->hb_details = copy;
      } else {
        rc = APEX_E_NOMEM;
      }
    }
    if (want) {
      request = !s->hb_dirty && !s->dirty && s->n_backlog == 0;
      s->hb_dirty = 1;
    }
  }
  if (request) apex__task_ref(t); /* see report() */
  pthread_mutex_unlock(mu);
  if (request) {
    apex__flush_request(m, t);
    apex__task_unref(t);
  }
  return rc;
}

json_t *apex__run_heartbeat_details(apex__run_t *r) {
  apex_task_t *t = apex__run_lock_live(r);
  if (!t) {
    apex__ctx_misuse(apex__run_m(r), atomic_load_explicit(&r->id, memory_order_relaxed),
                     "apex_ctx_heartbeat_details");
    return NULL;
  }
  json_t *d = r->prog ? r->prog->hb_prev : NULL;
  pthread_mutex_unlock(apex__task_mu(t));
  return d;
}

/* --------------------------------------------------- cancel callbacks
 *
 * apex_ctx_on_cancel keeps one callback per attempt in the run state
 * (oc_fn, oc_user: no token, fd or allocation), taken under the task lock
 * by whichever comes first: the cancel that fires it (fire_on_cancel,
 * after the task's token fired or the task ended cancelled or timed out),
 * a registration that finds the cancellation fired already, or the
 * attempt's end (or a complete its family holds: apex__run_mark_held),
 * which drops it unrun. Taken to run, it is replaced by the
 * sentinel oc_taken, so it runs once, and marked busy (oc_busy) while it
 * runs, unlocked, on the taking thread: an attempt's end from another
 * thread (complete racing the cancel) waits for it (oc_wait), so it never
 * runs after complete returned; one from inside it (the thread-local
 * tls_oc_run names the run state whose callback this thread is in) does
 * not wait, and clears the mark itself. */

static void oc_taken(apex_ctx_t *c, void *user) {
  (void)c;
  (void)user;
}

static _Thread_local apex__run_t *tls_oc_run __attribute__((tls_model("initial-exec")));
/* Set to r by the end of r's attempt made from inside r's callback on this
 * thread (tls_oc_run == r): that end cleared the mark, so oc_run has
 * nothing left to do under the lock (a deferred task's cancel most often
 * completes it from its callback: one task lock section fewer a cancel). */
static _Thread_local apex__run_t *tls_oc_ended __attribute__((tls_model("initial-exec")));

/* Clears r's busy mark and wakes a complete waiting for it. Under the
 * task lock (wait_mu comes after it). Every write of the mark is made
 * under that lock, so a load and a store do: no locked exchange at every
 * attempt's end, where the mark is almost always clear (bench/analysis.md,
 * W1 of the eighth session). */
static void oc_clear_locked(apex_manager_t *m, apex__run_t *r) {
  uint8_t busy = atomic_load_explicit(&r->oc_busy, memory_order_relaxed);
  if (!busy) return;
  atomic_store_explicit(&r->oc_busy, 0, memory_order_relaxed);
  if (busy & APEX__OC_WAITED) {
    pthread_mutex_lock(&m->wait_mu);
    pthread_cond_broadcast(&m->wait_cv);
    pthread_mutex_unlock(&m->wait_mu);
  }
}

/* Runs fn, taken from r (t's run state) under the lock for attempt
 * `attempt`, which also marked r busy and took a task reference for this.
 * No lock held. */
static void oc_run(apex_task_t *t, apex__run_t *r, uint32_t attempt, apex_ctx_cancel_fn fn,
                   void *user) {
  apex__run_t *outer = tls_oc_run, *outer_ended = tls_oc_ended;
  tls_oc_run = r;
  tls_oc_ended = NULL;
  fn(&r->ctx, user);
  int ended = tls_oc_ended == r; /* fn ended the attempt: the mark is clear */
  tls_oc_run = outer;
  tls_oc_ended = outer_ended;
  if (!ended) {
    pthread_mutex_t *mu = apex__task_mu(t);
    pthread_mutex_lock(mu);
    /* The mark is still this call's unless the attempt ended (on another
     * thread: an attempt's end clears the mark itself) and let r go, or a
     * retry opened another attempt on r meanwhile, whose callback may be
     * running now. */
    if (t->run == r && t->attempt == attempt &&
        atomic_load_explicit(&r->attempt_open, memory_order_relaxed))
      oc_clear_locked(apex__task_m(t), r);
    pthread_mutex_unlock(mu);
  }
  apex__task_unref(t);
}

/* Under t's lock, r's attempt open: takes its callback to run. */
static apex_ctx_cancel_fn oc_take_locked(apex_task_t *t, apex__run_t *r, void **user) {
  apex_ctx_cancel_fn fn = r->oc_fn;
  *user = r->oc_user;
  r->oc_fn = oc_taken;
  r->oc_user = NULL;
  atomic_store_explicit(&r->oc_fired, 1, memory_order_release);
  atomic_store_explicit(&r->oc_busy, APEX__OC_BUSY, memory_order_relaxed);
  apex__task_ref(t);
  return fn;
}

/* t's cancellation fired: runs the open attempt's callback if it has one
 * not yet taken. No lock held on entry. */
static void fire_on_cancel(apex_task_t *t) {
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  apex__run_t *r = t->run;
  if (!r || !atomic_load_explicit(&r->attempt_open, memory_order_relaxed) || !r->oc_fn ||
      r->oc_fn == oc_taken) {
    pthread_mutex_unlock(mu);
    return;
  }
  void *user;
  uint32_t attempt = t->attempt;
  apex_ctx_cancel_fn fn = oc_take_locked(t, r, &user);
  pthread_mutex_unlock(mu);
  oc_run(t, r, attempt, fn, user);
}

/* Under the lock of r's task, its attempt open: 1 if an end of the attempt
 * must first wait for r's callback, running on another thread; then it is
 * marked waited for, and the caller drops the lock and calls oc_wait. */
static int oc_must_wait_locked(apex__run_t *r) {
  if (!atomic_load_explicit(&r->oc_busy, memory_order_relaxed) || tls_oc_run == r) return 0;
  atomic_store_explicit(&r->oc_busy, APEX__OC_BUSY | APEX__OC_WAITED, memory_order_relaxed);
  return 1;
}

/* Waits, no lock held, until r's callback returned (oc_clear_locked). r is
 * a run state: type-stable, so its flag stays readable. */
static void oc_wait(apex_manager_t *m, apex__run_t *r) {
  pthread_mutex_lock(&m->wait_mu);
  while (atomic_load_explicit(&r->oc_busy, memory_order_relaxed))
    pthread_cond_wait(&m->wait_cv, &m->wait_mu);
  pthread_mutex_unlock(&m->wait_mu);
}

int apex__run_on_cancel(apex__run_t *r, apex_ctx_cancel_fn fn, void *user) {
  apex_task_t *t = apex__run_lock_live(r);
  if (!t) {
    apex__ctx_misuse(apex__run_m(r), atomic_load_explicit(&r->id, memory_order_relaxed),
                     "apex_ctx_on_cancel");
    return APEX_E_INVALID;
  }
  pthread_mutex_t *mu = apex__task_mu(t);
  if (r->oc_fn) {
    pthread_mutex_unlock(mu);
    return APEX_E_ALREADY;
  }
  /* Fired already: its token (the attempt's, when it has one: an attempt
   * timeout cancels only that) is cancelled (before the canceller takes
   * this lock to fire, so seen here if that already happened). A task that
   * ended (timeout) with its token not cancelled yet is fired by the ending
   * thread once it is (after_notify), so the callback sees its reason. */
  if (!apex_token_is_cancelled(apex__ctx_token_peek(t))) {
    r->oc_fn = fn;
    r->oc_user = user;
    pthread_mutex_unlock(mu);
    return APEX_OK;
  }
  r->oc_fn = fn;
  r->oc_user = user;
  void *u;
  uint32_t attempt = t->attempt;
  apex_ctx_cancel_fn f = oc_take_locked(t, r, &u);
  pthread_mutex_unlock(mu);
  oc_run(t, r, attempt, f, u);
  return APEX_OK;
}

/* ------------------------------------------------------------- finish */

/* Everything a finisher does after dropping the lock. */
typedef struct after {
  int finished;       /* this call made the task terminal */
  int release_life;   /* drop the life reference */
  apex__run_t *run;   /* run state to free (detached from the task) */
  int closing;        /* the attempt ends with the task (attempt_end) */
  const char *cancel; /* cancel the token with this reason */
  apex_progress_t *logp;
  apex_token_t *drop_tok; /* an ended attempt's own token (timeouts.c) */
  int uncount_stuck;  /* a stuck attempt ended without closing through the pool */
  /* A durable task's attempt failed and will be retried after dur_delay
   * seconds, with dur_err (a reference): journaled after the unlock. */
  int dur_retry;
  double dur_delay;
  apex_error_t *dur_err;
  /* The caller holds a task reference of its own until after after_unlock
   * (a worker: the run queue's): the life reference, when it goes at the
   * task's end, may then go to the DONE queue instead of being dropped
   * while the queue takes a new one. */
  int held;
} after_t;

static void count_outcome(apex_manager_t *m, int state) {
  apex__pool_count_outcome(m, state); /* a worker's in its own line (pool.c) */
}

/* t is terminal and no handler owns its ctx: the life reference goes, and
 * the run state with it unless progress was reported (apex_task_progress
 * reads it, and the flush list may still link it). Under the lock. */
static void release_life_locked(apex_task_t *t, after_t *a) {
  a->release_life = 1;
  apex__run_t *r = t->run;
  if (r && !r->prog) {
    /* Moved out by attempt_end; nothing else is owned without prog. */
    json_decref(r->attempt_result);
    apex_error_unref(r->attempt_error);
    apex_error_unref(r->result_refused);
    t->run = NULL;
    a->run = r;
  }
}

/* Makes t terminal: final progress, outcome, DONE event. Under the lock.
 * result and error taken. */
static void finish_locked(apex_task_t *t, int state, json_t *result, apex_error_t *error,
                          after_t *a) {
  apex_manager_t *m = apex__task_m(t);
  if (m->tracer) apex__trace_finish(t, state, error);
  a->logp = flush_locked(t);
  apex__mx_finished(m, t, state, state == APEX_TASK_SUCCEEDED ? NULL : error);
  if (state == APEX_TASK_SUCCEEDED)
    t->out.result = result;
  else { /* with the last partial result, if any (partial.c) */
    apex__progress_slot_t *s = t->run ? t->run->prog : NULL;
    if (apex__error_is_lazy(error) && s && s->partial) {
      /* A lazy error has nowhere to carry it: made now (the one object
       * every reader gets, as apex__task_error would make it later). */
      t->out.error = error;
      error = apex__task_error(t);
    }
    t->out.error = apex__partial_attach_locked(t, error);
  }
  /* Every count first, the state after: a host that sees the state, or
   * gets the DONE event, finds queued, running and the outcomes settled,
   * and a resubmit finds the room under max_queued this task left. */
  apex__pool_task_end(m, t, a->closing);
  count_outcome(m, state);
  /* seq_cst, not release: a waiter publishes itself (m->waiters) and then
   * reads the state; we publish the state and then read m->waiters. Only a
   * total order keeps both from missing the other (a lost wakeup). */
  atomic_store(&t->state, state);
  a->finished = 1;
  if (!t->run || !atomic_load_explicit(&t->run->attempt_open, memory_order_relaxed))
    release_life_locked(t, a);
  /* Last: the host wakes on it, and then finds this thread no longer in
   * the locks its next submit takes. */
  if (apex__events_wanted(m, t, APEX_EVENT_DONE)) {
    if (a->release_life && a->held) { /* two atomic operations fewer a task */
      a->release_life = 0;
      apex__events_push_done_owned(m, t);
    } else {
      apex__events_push_done(m, t);
    }
  }
  /* Its group (ops/group.c), after the DONE so a GROUP event follows it;
   * t is still held (the caller's reference, or the life one). */
  if (t->opts && t->opts->group) apex__group_member_end(t, state);
}

/* The part of after_unlock that reads the plugin's names. */
static void after_notify(apex_task_t *t, after_t *a) {
  apex_manager_t *m = apex__task_m(t);
  /* A durable task's end or retry is journaled before anyone is woken. */
  if (t->opts && t->opts->durable) {
    if (a->finished) apex__durable_ended(t);
    if (a->dur_retry) {
      apex__durable_retry(t, a->dur_delay, a->dur_err);
      apex_error_unref(a->dur_err);
    }
  }
  log_progress(t, a->logp);
  if (a->cancel) {
    apex_token_t *tok = apex__task_token(t);
    if (tok)
      apex_token_cancel(tok, a->cancel);
    else
      apex__log(&m->log, APEX_LOG_ERROR, "task %llu: no memory to signal its handler (%s)",
                (unsigned long long)t->id, a->cancel);
    fire_on_cancel(t);
  }
  if (a->finished) {
    if (apex__log_enabled(&m->log, APEX_LOG_INFO)) {
      int st = atomic_load(&t->state);
      const apex_error_t *e = st == APEX_TASK_SUCCEEDED ? NULL : apex__task_error(t);
      apex__log_where_t w;
      char tid[33], sid[17];
      log_where(t, &w, tid, sid);
      apex__log_at(&m->log, APEX_LOG_INFO, &w, "%s%s%s", apex_task_state_name(st),
                   e ? ": " : "", e ? apex_error_message(e) : "");
    }
    /* A waiter on a task whose DONE callback it waits for is woken by
     * that callback's delivery instead (apex__events_deliver). */
    if (atomic_load(&m->waiters) && !apex__events_wait_done(m, t)) {
      pthread_mutex_lock(&m->wait_mu);
      pthread_cond_broadcast(&m->wait_cv);
      pthread_mutex_unlock(&m->wait_mu);
    }
    /* A child's parent hears of its end after its DONE was queued. */
    if (apex__task_child(t)) apex__child_ended(t);
  }
}

static void after_release(apex_task_t *t, after_t *a) {
  apex_token_unref(a->drop_tok);
  if (a->uncount_stuck) apex__pool_uncount_stuck(apex__task_m(t));
  if (a->run) run_put(apex__task_m(t), a->run); /* emptied by release_life_locked */
  if (a->release_life) apex__task_unref(t);
}

static void after_unlock(apex_task_t *t, after_t *a) {
  after_notify(t, a);
  after_release(t, a);
}

int apex__task_finish(apex_task_t *t, apex_task_state_t state, apex_error_t *error) {
  pthread_mutex_t *mu = apex__task_mu(t);
  after_t a = {0};
  pthread_mutex_lock(mu);
  if (is_terminal(atomic_load(&t->state))) {
    pthread_mutex_unlock(mu);
    apex_error_unref(error);
    return 0;
  }
  finish_locked(t, state, NULL, error, &a);
  pthread_mutex_unlock(mu);
  after_unlock(t, &a);
  return 1;
}

const char *apex__cause_name(apex__cause_t cause) {
  switch (cause) {
    case APEX__CAUSE_USER: return "user";
    case APEX__CAUSE_PARENT: return "parent";
    case APEX__CAUSE_SHUTDOWN: return "shutdown";
    case APEX__CAUSE_TIMEOUT: return "timeout";
  }
  return "user";
}

/* The error a cancel ends t with: "cancelled (REASON)". Without the
 * caller's own words (text NULL) it says only the cause's name, which the
 * task can tell again at any time: then nothing is made now, and the
 * error is made when someone reads it (apex__task_error): a queued task's
 * cancel allocates nothing. Under t's lock. */
static apex_error_t *cancel_error(apex_task_t *t, apex__cause_t cause, const char *text) {
  if (!text) return apex__error_lazy(APEX__LAZY_CANCEL, (unsigned)cause);
  apex__where_t w = where_of(t);
  return apex__error_cancelled(&w, NULL, text);
}

/* A cancel of a task that has no token. With no handler (queued or
 * waiting to retry) nobody would ever read a token made now, so none is,
 * and the task ends here (leaving the scheduler at once:
 * apex__pool_task_end). A running one whose attempt registered a cancel
 * callback, cancelled with the default reason (plain, the cause's name),
 * needs none either: the callback runs, and the attempt remembers it fired
 * (oc_fired: apex_ctx_is_cancelled and the attempt's end read it; a token
 * made later is born cancelled, apex__task_token). So a pending deferred
 * task's cancel makes no token. Returns: APEX_OK if this call cancelled t,
 * APEX_E_ALREADY if it had ended or its callback fired (unless at_once:
 * shutdown still ends it), 1 if it needs the token (running otherwise, or
 * it has one). */
static int cancel_tokenless(apex_task_t *t, apex__cause_t cause, const char *reason, int plain,
                            int at_once) {
  pthread_mutex_t *mu = apex__task_mu(t);
  after_t a = {0};
  pthread_mutex_lock(mu);
  int st = atomic_load(&t->state);
  /* Re-read under the lock: a token made meanwhile (apex_task_token) may
   * have a host or a parent watching it; that task takes the usual path. */
  if (is_terminal(st)) {
    pthread_mutex_unlock(mu);
    return APEX_E_ALREADY;
  }
  if (apex__task_token_peek(t)) {
    pthread_mutex_unlock(mu);
    return 1;
  }
  if (st == APEX_TASK_RUNNING) {
    apex__run_t *r = t->run;
    /* All of its lines at once (104 bytes at malloc's 16-byte alignment:
     * two or three): the checks below read the first, the live links are
     * in the last (W7: each a miss of its own otherwise). */
    if (r) {
      __builtin_prefetch(r, 1);
      __builtin_prefetch((const char *)r + APEX__CACHE_LINE, 1);
      __builtin_prefetch((const char *)r + sizeof *r - 1, 1);
    }
    apex__task_prefetch_end(t); /* t's lines are here: its deadline neighbours */
    int open = r && atomic_load_explicit(&r->attempt_open, memory_order_relaxed);
    /* Shutdown ends a running task at once: that takes the token path
     * (which ends it), whether or not its callback fired already. */
    if (open && r->oc_fn == oc_taken && !at_once) {
      pthread_mutex_unlock(mu);
      return APEX_E_ALREADY;
    }
    if (!open || !plain || !r->oc_fn || r->oc_fn == oc_taken) {
      pthread_mutex_unlock(mu);
      return 1;
    }
    void *user;
    uint32_t attempt = t->attempt;
    apex_ctx_cancel_fn fn = oc_take_locked(t, r, &user);
    apex__run_prefetch_end(r); /* the callback most often completes the task */
    pthread_mutex_unlock(mu);
    oc_run(t, r, attempt, fn, user);
    return APEX_OK;
  }
  finish_locked(t, APEX_TASK_CANCELLED, NULL, cancel_error(t, cause, reason), &a);
  pthread_mutex_unlock(mu);
  after_unlock(t, &a);
  return APEX_OK;
}

int apex__task_cancel(apex_task_t *t, apex__cause_t cause, const char *reason) {
  int plain = !reason && cause == APEX__CAUSE_USER;
  const char *text = reason; /* the caller's own words, or NULL */
  if (!reason) reason = apex__cause_name(cause);
  /* Only shutdown ends a running task at once (its handler's outcome then
   * comes late and is ignored); the reason text never decides it. */
  int at_once = cause == APEX__CAUSE_SHUTDOWN;
  if (!apex__task_token_peek(t)) {
    int u = cancel_tokenless(t, cause, text, plain, at_once);
    if (u != 1) return u;
  }
  apex_token_t *tok = apex__task_token(t);
  int rc = tok ? apex_token_cancel(tok, reason) : APEX_E_NOMEM;
  /* Running: its handler, just woken by the token, ends it, and the end of
   * its attempt sees the token (as does any later start). Taking the task
   * lock here would only make the woken handler wait for it. */
  if (tok && !at_once && atomic_load(&t->state) == APEX_TASK_RUNNING) {
    fire_on_cancel(t);
    return rc;
  }
  pthread_mutex_t *mu = apex__task_mu(t);
  after_t a = {0};
  pthread_mutex_lock(mu);
  int st = atomic_load(&t->state);
  /* A running attempt's cancel callback runs below (shutdown ends its task
   * here; a task with no token for memory's sake is still told). Its open
   * attempt holds the life reference now; this one keeps t alive after
   * after_unlock, which may drop every other (a parent token's callback,
   * on_token_cancel, holds none). Nothing else is read once it ran. */
  int fire = st == APEX_TASK_RUNNING && t->run &&
             atomic_load_explicit(&t->run->attempt_open, memory_order_relaxed);
  if (fire) apex__task_ref(t);
  /* A queued or backing-off task has no handler to notice the token: end
   * it now. A running one ends when its handler returns; at shutdown it
   * ends now, and the handler's late outcome is ignored. */
  if (!is_terminal(st) && (st != APEX_TASK_RUNNING || at_once)) {
    finish_locked(t, APEX_TASK_CANCELLED, NULL, cancel_error(t, cause, text), &a);
    if (rc == APEX_E_NOMEM) rc = APEX_OK; /* ended: no handler needed the token */
  }
  pthread_mutex_unlock(mu);
  after_unlock(t, &a);
  if (fire) {
    fire_on_cancel(t);
    apex__task_unref(t);
  }
  return rc;
}

/* ------------------------------------------------------------ attempts */

/* A task with a start-to-close or heartbeat timeout gives each attempt a
 * token of its own, a child of the task's (so a cancel of the task reaches
 * it), which that attempt's timeout cancels: the task's token stays
 * uncancelled for the retry. Made before the lock (it allocates and the
 * task's token may need making). NULL: none needed, or no memory (its
 * attempt timeout then ends the task, as the overall timeout does). */
static apex_token_t *attempt_token_new(apex_task_t *t) {
  apex__tmo_t *tmo = apex__task_tmo(t);
  if (!tmo || !(tmo->s2c_ns || tmo->hb_ns)) return NULL;
  apex_token_t *parent = apex__task_token(t), *tok = NULL;
  if (!parent || apex_token_new_child(parent, &tok) != APEX_OK) return NULL;
  return tok;
}

/* An attempt starts (under the lock): its timeouts' clocks start, the
 * schedule-to-start one stops, and the heartbeat details an earlier
 * attempt recorded become what apex_ctx_heartbeat_details returns. */
static void attempt_timers_start_locked(apex_manager_t *m, apex_task_t *t, apex__run_t *r,
                                        apex_token_t *att) {
  apex__progress_slot_t *s = r->prog;
  if (s && s->hb_details) {
    json_decref(s->hb_prev);
    s->hb_prev = s->hb_details;
    s->hb_details = NULL;
  }
  if (s && s->cp_last) apex__checkpoint_rotate_locked(s);
  apex__tmo_t *tmo = apex__task_tmo(t);
  if (!tmo) return;
  tmo->s2s_at = 0;
  tmo->att_kind = 0;
  atomic_store_explicit(&tmo->tok, att, memory_order_release);
  if (!tmo->s2c_ns && !tmo->hb_ns) return;
  uint64_t now = apex__now_ns();
  tmo->att_at = tmo->s2c_ns ? now + tmo->s2c_ns : 0;
  tmo->hb_last = tmo->hb_ns ? now : 0;
  uint64_t at = tmo->att_at;
  if (tmo->hb_ns && (!at || now + tmo->hb_ns < at)) at = now + tmo->hb_ns;
  apex__lock(&m->pool_mu);
  apex__tmo_arm_locked(m, tmo, at);
  apex__unlock(&m->pool_mu);
}

int apex__task_run(apex_task_t *t) {
  apex_manager_t *m = apex__task_m(t);
  pthread_mutex_t *mu = apex__task_mu(t);
  apex_token_t *att = attempt_token_new(t);
  pthread_mutex_lock(mu);
  if (atomic_load(&t->state) != APEX_TASK_QUEUED) { /* cancelled or timed out in the queue */
    pthread_mutex_unlock(mu);
    apex_token_unref(att);
    return 0;
  }
  apex_token_t *tok = apex__task_token_peek(t);
  if (apex_token_is_cancelled(tok)) {
    /* Cancelled (a parent's cancel marks the whole tree first) but not yet
     * ended by its callback: never start it. */
    after_t a = {0};
    apex__where_t w = where_of(t);
    finish_locked(t, APEX_TASK_CANCELLED, NULL,
                  apex__error_cancelled(&w, NULL, apex_token_reason(tok)),
                  &a);
    a.drop_tok = att;
    pthread_mutex_unlock(mu);
    after_unlock(t, &a);
    return 0;
  }
  apex__run_t *r = t->run;
  if (!r) { /* the first attempt: the task grows what running needs */
    r = run_get(m, t);
    if (!r) {
      after_t a = {.drop_tok = att};
      apex__where_t w = where_of(t);
      finish_locked(t, APEX_TASK_FAILED,  NULL,
                    apex__error_new(APEX_E_NOMEM, &w, NULL, "out of memory starting the task"),
                    &a);
      pthread_mutex_unlock(mu);
      after_unlock(t, &a);
      return 0;
    }
    t->run = r;
  }
  t->attempt++;
  r->oc_fn = NULL; /* each attempt registers its own (oc_user was retry_at_ns) */
  r->oc_user = NULL;
  r->retry_after_s = -1.0f; /* a hint is the attempt's own (apex_ctx_retry_after) */
  atomic_store_explicit(&r->oc_fired, 0, memory_order_relaxed);
  attempt_timers_start_locked(m, t, r, att);
  if (m->tracer) apex__trace_attempt_start(t);
  atomic_store_explicit(&r->attempt_open, APEX__ATT_OPEN, memory_order_release);
  int sweeping = apex__pool_attempt_open(m, t, t->attempt == 1);
  /* Running only once the attempt is counted and `sweeping` read: a task
   * a host saw running is one destroy waits for (its drain), never one it
   * sweeps below as taken just before destroy began. */
  atomic_store(&t->state, APEX_TASK_RUNNING);
  apex__pool_count_attempt(m);
  apex__mx_started(m, t);
  if (apex__events_wanted(m, t, APEX_EVENT_ATTEMPT)) {
    apex__ev_t *ev = apex__ev_new(t, APEX_EVENT_ATTEMPT);
    if (ev) apex__events_push(m, ev);
  }
  pthread_mutex_unlock(mu);
  /* A durable task's attempt is claimed in the store before it runs. */
  if (t->opts && t->opts->durable && !sweeping) {
    int drc = apex__durable_attempt_start(t, r);
    if (drc != APEX_OK) return apex__task_attempt_end(t, drc);
  }
  if (sweeping) {
    /* Taken from the queue just before destroy began (which starts no
     * attempt): never run it, end it as destroy ends what was queued. */
    apex_token_t *own = apex__task_token(t);
    if (own) apex_token_cancel(own, apex__cause_name(APEX__CAUSE_SHUTDOWN));
    return apex__task_attempt_end(t, APEX_E_CANCELLED);
  }

  int rc = t->action->handler(&r->ctx);
  if (t->action->kind == APEX_ACTION_DEFERRED && rc == APEX_PENDING) return 0;
  apex__family_settle(t); /* its children end before its attempt does */
  if (rc == APEX_PENDING) {
    apex__log(&m->log, APEX_LOG_WARN, "%s.%s: a blocking handler returned APEX_PENDING",
              t->plugin->desc.name, t->action->name);
    rc = APEX_E_EXECUTION;
  }
  return apex__task_attempt_end(t, rc);
}

static int valid_failure(int rc) { return rc < 0 && strcmp(apex_status_name(rc), "unknown") != 0; }

/* The error an attempt failed with: the handler's own (apex_ctx_fail) when
 * its code matches what it returned, else one naming the returned code. */
static apex_error_t *attempt_error(apex_task_t *t, int rc, apex_error_t *own) {
  apex__where_t w = where_of(t);
  if (!valid_failure(rc))
    return apex__error_new(APEX_E_EXECUTION, &w, own, "handler returned an unknown status %d", rc);
  if (own && apex_error_code(own) == rc) return own;
  return apex__error_new(rc, &w, own, "%s", own ? apex_error_message(own) : apex_strerror(rc));
}

/* Appends s (len bytes) at *at, within end. */
static void put_text(char **at, const char *end, const char *s, size_t len) {
  if (len > (size_t)(end - *at)) len = (size_t)(end - *at);
  memcpy(*at, s, len);
  *at += len;
}
#define PUT_LIT(at, end, lit) put_text(at, end, lit, sizeof lit - 1)

/* Appends v in decimal, as "%u" writes it. */
static void put_uint(char **at, const char *end, unsigned v) {
  char d[12];
  size_t n = sizeof d;
  do {
    d[--n] = (char)('0' + v % 10u);
    v /= 10u;
  } while (v);
  put_text(at, end, d + n, sizeof d - n);
}

/* The error of a timeout of kind (apex__tmo_kind_t) for t, its message
 * naming it as apex_error_timeout_kind does. Put together by hand, as
 * printf's "%.3f s" and "%u" would write it: a timeout's error is made
 * on the path from the deadline to the host's DONE, and vsnprintf's
 * floating-point code, cold after the wait, was 2-16 us of that path
 * (bench/analysis.md, W4). */
static apex_error_t *timeout_error(apex_task_t *t, int kind) {
  apex__where_t w = where_of(t);
  apex__tmo_t *tmo = apex__task_tmo(t);
  char msg[APEX__FIXED3_MAX + 96], secs[APEX__FIXED3_MAX];
  char *at = msg;
  const char *end = msg + sizeof msg - 1;
  switch (kind) {
    case APEX__TMO_SCHEDULE_TO_START:
      PUT_LIT(&at, end, "timed out: never ran, not started within ");
      put_text(&at, end, secs, apex__fmt_fixed3(secs, (double)tmo->s2s_ns / 1e9));
      PUT_LIT(&at, end, " s (schedule_to_start timeout)");
      break;
    case APEX__TMO_START_TO_CLOSE:
      PUT_LIT(&at, end, "timed out: attempt ");
      put_uint(&at, end, (unsigned)t->attempt);
      PUT_LIT(&at, end, " ran longer than ");
      put_text(&at, end, secs, apex__fmt_fixed3(secs, (double)tmo->s2c_ns / 1e9));
      PUT_LIT(&at, end, " s (start_to_close timeout)");
      break;
    case APEX__TMO_HEARTBEAT:
      PUT_LIT(&at, end, "timed out: attempt ");
      put_uint(&at, end, (unsigned)t->attempt);
      PUT_LIT(&at, end, " sent no heartbeat for ");
      put_text(&at, end, secs, apex__fmt_fixed3(secs, (double)tmo->hb_ns / 1e9));
      PUT_LIT(&at, end, " s (heartbeat timeout)");
      break;
    default:
      PUT_LIT(&at, end, "timed out after ");
      put_text(&at, end, secs, apex__fmt_fixed3(secs, (double)t->timeout_s));
      PUT_LIT(&at, end, " s");
      if (atomic_load(&t->state) == APEX_TASK_QUEUED) PUT_LIT(&at, end, " (still queued)");
      PUT_LIT(&at, end, " (schedule_to_close timeout)");
      kind = APEX__TMO_SCHEDULE_TO_CLOSE;
  }
  return apex__error_timeout_kind(apex__error_clean_n(APEX_E_TIMEOUT, &w, msg, (size_t)(at - msg)),
                                  kind);
}

void apex__ctx_misuse(apex_manager_t *m, uint64_t id, const char *what) {
  atomic_fetch_add_explicit(&m->st_late, 1, memory_order_relaxed);
  uint64_t n = atomic_fetch_add_explicit(&m->st_misuse, 1, memory_order_relaxed) + 1;
  int level = (n & (n - 1)) == 0 ? APEX_LOG_WARN : APEX_LOG_DEBUG;
  if (apex__log_enabled(&m->log, level))
    apex__log(&m->log, level,
              "task %llu: %s after its attempt completed; ignored (a plugin bug; %llu such calls)",
              (unsigned long long)id, what, (unsigned long long)n);
}

apex_task_t *apex__run_lock_open(apex__run_t *r) {
  uint64_t id = atomic_load_explicit(&r->id, memory_order_relaxed);
  pthread_mutex_t *mu = &apex__run_m(r)->stripes[id % APEX__LOCK_STRIPES].mu;
  pthread_mutex_lock(mu);
  /* Open, and still the same task's: a run state reused meanwhile shows
   * its new id once its new attempt is seen open (run_get). */
  if (atomic_load_explicit(&r->attempt_open, memory_order_acquire) &&
      atomic_load_explicit(&r->id, memory_order_relaxed) == id)
    return r->task;
  pthread_mutex_unlock(mu);
  return NULL;
}

apex_task_t *apex__run_lock_live(apex__run_t *r) {
  apex_task_t *t = apex__run_lock_open(r);
  if (t && atomic_load_explicit(&r->attempt_open, memory_order_relaxed) == APEX__ATT_HELD) {
    pthread_mutex_unlock(apex__task_mu(t));
    return NULL;
  }
  return t;
}

void apex__run_mark_held(apex__run_t *r, uint64_t id, uint32_t att) {
  apex_task_t *t = apex__run_lock_open(r);
  if (!t) return; /* ended meanwhile (a timeout, a cancel, its children) */
  if (t->id == id && t->attempt == att) {
    atomic_store_explicit(&r->attempt_open, APEX__ATT_HELD, memory_order_relaxed);
    /* The complete returned: its cancel callback goes unrun, as with an
     * end (plugin.h: fn never starts once complete returned). One taken
     * to run already is waited for by the held complete's end. */
    if (r->oc_fn != oc_taken) {
      r->oc_fn = NULL;
      r->oc_user = NULL;
    }
  }
  pthread_mutex_unlock(apex__task_mu(t));
}

static int attempt_end_locked(apex_task_t *t, apex__run_t *r, int rc, int held);

int apex__task_attempt_end(apex_task_t *t, int rc) {
  pthread_mutex_t *mu = apex__task_mu(t);
  for (;;) { /* the worker holds a reference: t stays */
    pthread_mutex_lock(mu);
    apex__run_t *r = t->run;
    if (!r || !atomic_load_explicit(&r->attempt_open, memory_order_relaxed)) {
      /* A deferred handler that completed, then returned a status. */
      pthread_mutex_unlock(mu);
      apex__ctx_misuse(apex__task_m(t), t->id, "a handler's return");
      return 0;
    }
    if (!oc_must_wait_locked(r)) return attempt_end_locked(t, r, rc, 1);
    pthread_mutex_unlock(mu);
    oc_wait(apex__task_m(t), r);
  }
}

int apex__run_complete(apex__run_t *r, int rc, int ask_family) {
  apex_task_t *t;
  for (;;) {
    /* A plugin's complete after one its family holds (APEX__ATT_HELD) is a
     * second complete: refused here, not asked of the family, which holds
     * nothing any more once the last child ended, so it would end the
     * attempt with its own code ahead of the held one. */
    t = ask_family ? apex__run_lock_live(r) : apex__run_lock_open(r);
    if (!t) {
      apex__ctx_misuse(apex__run_m(r), atomic_load_explicit(&r->id, memory_order_relaxed),
                       "apex_ctx_complete");
      return 0;
    }
    /* A deferred attempt with a family (it spawned) may have to wait for
     * its children: the family decides, under its own lock, and this one
     * is let go first (children.c). Without one, which is read here under
     * the same lock as the end below, the attempt ends in this section
     * (one stripe-lock section per complete, not two). */
    if (ask_family && r->prog && r->prog->fam && t->action->kind == APEX_ACTION_DEFERRED) {
      pthread_mutex_unlock(apex__task_mu(t));
      if (apex__family_defer_complete(r, rc)) return 0; /* once its children ended */
      ask_family = 0;
      continue;
    }
    /* A cancel callback running on another thread returns first (its
     * promise: never after complete returned). */
    if (!oc_must_wait_locked(r)) break;
    pthread_mutex_unlock(apex__task_mu(t));
    oc_wait(apex__run_m(r), r);
  }
  if (t->action->kind != APEX_ACTION_DEFERRED) {
    /* The handler owns the ctx until it returns: its names stay valid. */
    pthread_mutex_unlock(apex__task_mu(t));
    apex__log(&apex__run_m(r)->log, APEX_LOG_WARN,
              "%s.%s: complete() called by a blocking handler; it finishes by returning",
              t->plugin->desc.name, t->action->name);
    return 0;
  }
  return attempt_end_locked(t, r, rc, 0);
}

/* Ends r's open attempt (r is t's run state) with rc. Called with t's lock
 * held; returns with it released. held: the caller keeps a reference of
 * its own past the return (a worker, the run queue's; see after_t).
 * Returns: as apex__task_run. */
static int attempt_end_locked(apex_task_t *t, apex__run_t *r, int rc, int held) {
  apex_manager_t *m = apex__task_m(t);
  pthread_mutex_t *mu = apex__task_mu(t);
  after_t a = {.closing = 1, .held = held};
  apex__mx_attempt_end(m, t);
  apex__run_prefetch_end(r);
  atomic_store_explicit(&r->attempt_open, 0, memory_order_relaxed);
  /* Its cancel callback goes with it: dropped unrun, or (this end comes
   * from inside it) no longer running for anyone to wait on. */
  int oc_fired = atomic_load_explicit(&r->oc_fired, memory_order_relaxed);
  r->oc_fn = NULL;
  r->oc_user = NULL;
  atomic_store_explicit(&r->oc_fired, 0, memory_order_relaxed);
  oc_clear_locked(m, r);
  if (tls_oc_run == r) tls_oc_ended = r; /* from inside its callback: oc_run */
  int was_stuck = r->stuck;
  r->stuck = 0;
  /* The attempt's timeouts stop with it; its own token goes (no handler
   * of it reads it any more), and an attempt timeout that fired makes its
   * outcome below. */
  int att_kind = 0;
  apex__tmo_t *tmo = apex__task_tmo(t);
  if (tmo) {
    a.drop_tok = atomic_exchange_explicit(&tmo->tok, NULL, memory_order_relaxed);
    att_kind = tmo->att_kind;
    tmo->att_kind = 0;
    tmo->att_at = tmo->hb_last = 0;
  }
  json_t *res = r->attempt_result;
  apex_error_t *own = r->attempt_error;
  r->attempt_result = NULL;
  r->attempt_error = NULL;
  if (r->result_refused) { /* the value given to apex_ctx_set_result broke the rules */
    if (rc == APEX_OK) {
      apex_error_unref(own);
      own = r->result_refused;
      rc = APEX_E_INVALID_RESULT;
    } else { /* the handler's own failure says more */
      apex_error_unref(r->result_refused);
    }
    r->result_refused = NULL;
  }
  if (m->tracer) apex__trace_attempt_end(t, rc, own, att_kind);
  int st = atomic_load(&t->state);

  if (is_terminal(st)) {
    /* Timed out or cancelled at shutdown meanwhile: too late. Its attempt
     * closes after the unlock, and the last handler of an orphaned manager
     * tears it down. */
    release_life_locked(t, &a);
    atomic_fetch_add_explicit(&m->st_late, 1, memory_order_relaxed);
    pthread_mutex_unlock(mu);
    json_decref(res);
    apex_error_unref(own);
    int teardown = apex__pool_attempt_close(m, t, was_stuck);
    after_release(t, &a);
    return teardown;
  }
  apex_token_t *tok = apex__task_token_peek(t);
  /* Its start-to-close or heartbeat timeout fired (and a retry was due
   * then): whatever the handler says now is too late, unless the task
   * itself was cancelled meanwhile. */
  int timed_out = att_kind && !apex_token_is_cancelled(tok);
  if (timed_out) atomic_fetch_add_explicit(&m->st_late, 1, memory_order_relaxed);
  if (rc == APEX_OK && !timed_out) {
    apex_error_unref(own);
    finish_locked(t, APEX_TASK_SUCCEEDED, res ? res : json_null(), NULL, &a);
    pthread_mutex_unlock(mu);
  } else if (rc == APEX_E_CANCELLED && !own && !timed_out) {
    /* A handler's plain APEX_E_CANCELLED (a deferred task completed so
     * from its cancel callback, most often): the error says the status's
     * sentence, which the task can tell again; it is made when read
     * (apex__task_error), not here. The same error attempt_error made. */
    json_decref(res);
    finish_locked(t, APEX_TASK_CANCELLED, NULL,
                  apex__error_lazy(APEX__LAZY_STATUS, (unsigned)-APEX_E_CANCELLED), &a);
    pthread_mutex_unlock(mu);
  } else {
    json_decref(res);
    apex_error_t *err;
    if (timed_out) {
      apex_error_unref(own);
      err = timeout_error(t, att_kind);
    } else {
      err = attempt_error(t, rc, own);
    }
    int code = apex_error_code(err);
    double delay = 0;
    uint64_t now = 0; /* read only for a retry: a cancel or failure needs no clock */
    /* A stuck attempt (its timeout fired) that ends here, not through
     * apex__pool_attempt_close, is uncounted after the unlock. */
    a.uncount_stuck = was_stuck;
    if (!timed_out && (apex_token_is_cancelled(tok) || oc_fired || code == APEX_E_CANCELLED)) {
      /* oc_fired without a token: cancel_tokenless, a plain user cancel */
      const char *why = apex_token_reason(tok);
      apex__where_t w = where_of(t);
      apex_error_t *ce = code == APEX_E_CANCELLED
                             ? err
                             : apex__error_cancelled(&w, err, why ? why : "user");
      finish_locked(t, APEX_TASK_CANCELLED, NULL, ce, &a);
      pthread_mutex_unlock(mu);
    } else if ((timed_out ? apex__retry_next_timeout(t, &delay)
                          : apex__retry_next(t, code, &delay)) &&
               (now = apex__now_ns()) &&
               (!t->deadline_ns || now + (uint64_t)(delay * 1e9) < t->deadline_ns)) {
      apex_progress_t *lp = flush_locked(t); /* this attempt's progress precedes RETRY */
      atomic_store(&t->state, APEX_TASK_RETRY_WAIT);
      /* A cancel that read "running" (apex__task_cancel takes no lock then)
       * left the ending to this attempt: seq_cst on both sides, so either it
       * reads retry_wait and ends the task itself, or this sees its token.
       * Likewise destroy, which sets shutting_down and then ends every task
       * it finds waiting to retry: no attempt starts once it began. */
      apex_token_t *late = atomic_load(&t->token);
      int down = atomic_load(&m->shutting_down);
      if (apex_token_is_cancelled(late) || down) {
        const char *why = apex_token_is_cancelled(late) ? apex_token_reason(late)
                                                        : apex__cause_name(APEX__CAUSE_SHUTDOWN);
        apex__where_t w = where_of(t);
        finish_locked(t, APEX_TASK_CANCELLED, NULL,
                      apex__error_cancelled(&w, err, why), &a);
        if (!a.logp) a.logp = lp; else apex_progress_unref(lp);
        pthread_mutex_unlock(mu);
      } else {
        r->retry_at_ns = now + (uint64_t)(delay * 1e9);
        if (apex__retry_arm(m, t) != APEX_OK) {
          /* No retry slot: an invariant of ours broke (submit reserves one
           * for every task that may retry). End the task with this
           * attempt's error rather than write past the retry heap. */
          finish_locked(t, APEX_TASK_FAILED, NULL, err, &a);
          if (!a.logp) a.logp = lp; else apex_progress_unref(lp);
          pthread_mutex_unlock(mu);
          apex__log(&m->log, APEX_LOG_ERROR, "task %llu: no retry slot reserved; not retried",
                    (unsigned long long)t->id);
        } else {
          a.logp = lp;
          if (t->opts && t->opts->durable) {
            a.dur_retry = 1;
            a.dur_delay = delay;
            a.dur_err = apex_error_ref(err);
          }
          atomic_fetch_add_explicit(&m->st_retries, 1, memory_order_relaxed);
          apex__mx_retried(m, t);
          if (m->tracer) apex__trace_retry(t, err, delay);
          if (apex__events_wanted(m, t, APEX_EVENT_RETRY)) {
            apex__ev_t *ev = apex__ev_new(t, APEX_EVENT_RETRY);
            if (ev) {
              ev->ev.error = apex_error_ref(err);
              ev->ev.retry_delay_s = delay;
              apex__events_push(m, ev);
            }
          }
          /* Not running while it waits. Never an orphaned manager's last
           * handler: the manager is orphaned only once every task ended. */
          (void)apex__pool_attempt_close(m, t, was_stuck);
          a.uncount_stuck = 0;
          pthread_mutex_unlock(mu);
          apex_error_unref(err);
        }
      }
    } else {
      finish_locked(t, timed_out ? APEX_TASK_TIMED_OUT : APEX_TASK_FAILED, NULL, err, &a);
      pthread_mutex_unlock(mu);
    }
  }
  /* The attempt closed under the lock (before the DONE event was queued).
   * after_notify reads the plugin's names: destroy unloads the plugin only
   * after joining the workers, and a plugin joins its own threads in its
   * shutdown hook before that. */
  after_unlock(t, &a);
  return 0;
}

/* Runtime thread: t's deadline passed (its list gave it up). */
void apex__task_on_deadline(apex_task_t *t) {
  apex_manager_t *m = apex__task_m(t);
  pthread_mutex_t *mu = apex__task_mu(t);
  after_t a = {0};
  int stuck = 0;
  pthread_mutex_lock(mu);
  int st = atomic_load(&t->state);
  if (is_terminal(st)) {
    pthread_mutex_unlock(mu);
    return;
  }
  /* A parent with live children: they are cancelled first, and the last
   * one's end brings the timeout back here (src/ops/children.c). */
  apex__progress_slot_t *ps = t->run ? t->run->prog : NULL;
  if (ps && ps->fam && apex__family_hold_deadline(ps->fam)) {
    a.cancel = apex__cause_name(APEX__CAUSE_TIMEOUT);
    apex__family_t *fam = ps->fam; /* lives with t, which the caller holds */
    pthread_mutex_unlock(mu);
    after_unlock(t, &a);
    apex__family_deadline(fam); /* the children whose deadline is this one */
    return;
  }
  /* A child whose deadline is its parent's: the parent's timeout, which
   * reaches a child as a cancel (reason "parent"). */
  int by_parent = t->opts && t->opts->child_capped;
  /* Not twice: an attempt timeout may have marked it stuck already. */
  stuck = st == APEX_TASK_RUNNING &&
          atomic_load_explicit(&t->run->attempt_open, memory_order_relaxed) &&
          t->action->kind == APEX_ACTION_BLOCKING && !t->run->stuck;
  if (stuck) { /* counted with the flag, so attempt_end's uncount matches */
    t->run->stuck = 1;
    apex__pool_count_stuck(m);
  }
  if (by_parent) {
    apex__where_t w = where_of(t);
    finish_locked(t, APEX_TASK_CANCELLED, NULL,
                  apex__error_new(APEX_E_CANCELLED, &w, NULL, "cancelled (parent)"), &a);
    a.cancel = apex__cause_name(APEX__CAUSE_PARENT);
  } else {
    finish_locked(t, APEX_TASK_TIMED_OUT, NULL, timeout_error(t, APEX__TMO_SCHEDULE_TO_CLOSE),
                  &a);
    a.cancel = apex__cause_name(APEX__CAUSE_TIMEOUT);
  }
  pthread_mutex_unlock(mu);
  if (stuck) apex__pool_worker_stuck(m);
  after_unlock(t, &a);
}

/* A task that never started leaves every place it waits in: today the run
 * queue, which finish_locked's apex__pool_task_end leaves at once (the
 * path a cancel of a queued task takes), so no worker ever pops it. The
 * one place to point at another queue's removal. Under the lock. */
static void end_unstarted_locked(apex_task_t *t, apex_error_t *err, after_t *a) {
  finish_locked(t, APEX_TASK_TIMED_OUT, NULL, err, a);
}

void apex__task_on_timeout(apex_task_t *t, uint64_t now) {
  apex_manager_t *m = apex__task_m(t);
  pthread_mutex_t *mu = apex__task_mu(t);
  apex__tmo_t *tmo = apex__task_tmo(t);
  after_t a = {0};
  uint64_t rearm = 0;
  pthread_mutex_lock(mu);
  int st = atomic_load(&t->state);
  if (is_terminal(st)) {
    pthread_mutex_unlock(mu);
    return;
  }
  if (t->attempt == 0 && tmo->s2s_at) { /* waiting to start its first attempt */
    if (now < tmo->s2s_at) {
      rearm = tmo->s2s_at;
    } else {
      end_unstarted_locked(t, timeout_error(t, APEX__TMO_SCHEDULE_TO_START), &a);
      /* Its token (if one was made: a parent's, the host's) hears of it;
       * none is made for this. */
      if (apex__task_token_peek(t)) a.cancel = apex__cause_name(APEX__CAUSE_TIMEOUT);
      pthread_mutex_unlock(mu);
      after_unlock(t, &a);
      return;
    }
  }
  apex__run_t *r = t->run;
  int open = st == APEX_TASK_RUNNING && r &&
             atomic_load_explicit(&r->attempt_open, memory_order_relaxed);
  int kind = 0;
  if (open && !tmo->att_kind) {
    if (tmo->att_at && now >= tmo->att_at)
      kind = APEX__TMO_START_TO_CLOSE;
    else if (tmo->hb_last && now >= tmo->hb_last + tmo->hb_ns)
      kind = APEX__TMO_HEARTBEAT;
    else if (tmo->att_at || tmo->hb_last) { /* early: a heartbeat moved it */
      rearm = tmo->att_at;
      if (tmo->hb_last && (!rearm || tmo->hb_last + tmo->hb_ns < rearm))
        rearm = tmo->hb_last + tmo->hb_ns;
    }
  }
  if (!kind) {
    if (rearm) {
      apex__lock(&m->pool_mu);
      apex__tmo_arm_locked(m, tmo, rearm);
      apex__unlock(&m->pool_mu);
    }
    pthread_mutex_unlock(mu);
    return;
  }
  /* The attempt timed out: a blocking handler that ignores its token holds
   * its worker, which is replaced as for the overall timeout. */
  int stuck = t->action->kind == APEX_ACTION_BLOCKING && !r->stuck;
  if (stuck) {
    r->stuck = 1;
    apex__pool_count_stuck(m);
  }
  apex_token_t *att = atomic_load_explicit(&tmo->tok, memory_order_relaxed);
  double delay = 0;
  if (!att || !apex__retry_next_timeout(t, &delay) ||
      (t->deadline_ns && now + (uint64_t)(delay * 1e9) >= t->deadline_ns)) {
    /* No retry to wait for: the task ends now, as the overall timeout
     * ends it, and the handler's late outcome is ignored. */
    finish_locked(t, APEX_TASK_TIMED_OUT, NULL, timeout_error(t, kind), &a);
    a.cancel = apex__cause_name(APEX__CAUSE_TIMEOUT);
    pthread_mutex_unlock(mu);
    if (stuck) apex__pool_worker_stuck(m);
    after_unlock(t, &a);
    return;
  }
  /* A retry is due: this attempt is cancelled ("timeout": its token, its
   * cancel callback) and its end, when its handler lets go of the ctx,
   * makes the timeout its outcome and schedules the retry
   * (attempt_end_locked). The next attempt gets a token of its own. */
  tmo->att_kind = (uint8_t)kind;
  apex_token_ref(att);
  apex__task_ref(t); /* for fire_on_cancel: the end may drop the others */
  pthread_mutex_unlock(mu);
  apex_token_cancel(att, apex__cause_name(APEX__CAUSE_TIMEOUT));
  apex_token_unref(att);
  fire_on_cancel(t);
  apex__task_unref(t);
  if (stuck) apex__pool_worker_stuck(m);
}

/* Runtime thread: t's retry time came (the retry heap gave it up). */
void apex__task_on_retry(apex_task_t *t, uint64_t now) {
  apex_manager_t *m = apex__task_m(t);
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  if (atomic_load(&t->state) == APEX_TASK_RETRY_WAIT && now >= t->run->retry_at_ns) {
    atomic_store(&t->state, APEX_TASK_QUEUED);
    apex__pool_push(m, t); /* under the lock: see apex__pool_push */
  }
  pthread_mutex_unlock(mu);
}

/* ---------------------------------------------------------- public API */

const char *apex_task_state_name(apex_task_state_t s) {
  static const char *const names[] = {"queued",    "running", "retry_wait", "succeeded",
                                      "failed",    "cancelled", "timed_out", "scheduled"};
  return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown";
}

int apex_task_state_is_terminal(apex_task_state_t s) {
  return s >= APEX_TASK_SUCCEEDED && s <= APEX_TASK_TIMED_OUT;
}

/* What apex_task_wait waits for: t terminal and, when its DONE callback
 * runs on the runtime thread (LOOP), that callback returned, so the host may
 * free what the callback uses as soon as the wait returns. In DISPATCH mode
 * the host's own dispatch delivers DONE, and waiting for it could deadlock a
 * host with one thread: the terminal state suffices. seq_cst loads: see
 * finish_locked and apex__events_deliver (a lost wakeup otherwise). */
static int wait_over(apex_manager_t *m, apex_task_t *t) {
  if (!is_terminal(atomic_load(&t->state))) return 0;
  return !apex__events_wait_done(m, t) || atomic_load(&t->done_next) == APEX__DONE_DELIVERED;
}

apex_status_t apex_task_wait(apex_task_t *t, int64_t timeout_ms) {
  if (!t) return APEX_E_INVALID;
  apex_manager_t *m = apex__task_m(t);
  if (wait_over(m, t)) return APEX_OK;
  if (timeout_ms == 0) return APEX_E_AGAIN;
  /* The runtime thread fires deadlines and retries and delivers LOOP
   * events: blocking it on a task could wait for ever. */
  if (apex__on_runtime_thread(m)) return APEX_E_INVALID;
  uint64_t until = apex__ns_after_ms(timeout_ms);
  struct timespec ts = {(time_t)(until / 1000000000u), (long)(until % 1000000000u)};
  apex_status_t rc = APEX_OK;
  pthread_mutex_lock(&m->wait_mu);
  atomic_fetch_add(&m->waiters, 1);
  while (!wait_over(m, t)) {
    int e = until == UINT64_MAX ? pthread_cond_wait(&m->wait_cv, &m->wait_mu)
                                : pthread_cond_timedwait(&m->wait_cv, &m->wait_mu, &ts);
    if (e == ETIMEDOUT && !wait_over(m, t)) {
      rc = APEX_E_AGAIN;
      break;
    }
  }
  atomic_fetch_sub(&m->waiters, 1);
  pthread_mutex_unlock(&m->wait_mu);
  return rc;
}

/* The reasons Apex gives its own cancels: a handler that sees one can trust
 * it, so a host may not pass them. */
static int reason_reserved(const char *r) {
  return r && (strcmp(r, "timeout") == 0 || strcmp(r, "shutdown") == 0 || strcmp(r, "parent") == 0);
}

apex_status_t apex_task_cancel(apex_task_t *t, const char *reason) {
  if (!t || reason_reserved(reason)) return APEX_E_INVALID;
  apex__task_prefetch_all(t); /* the task, its run state: one miss, not two in a row */
  if (is_terminal(atomic_load(&t->state))) return APEX_E_ALREADY;
  return apex__task_cancel(t, APEX__CAUSE_USER, reason);
}

apex_task_state_t apex_task_state(apex_task_t *t) {
  return t ? (apex_task_state_t)atomic_load_explicit(&t->state, memory_order_acquire)
           : APEX_TASK_FAILED;
}

uint64_t apex_task_id(apex_task_t *t) { return t ? t->id : 0; }

uint64_t apex_task_parent_id(apex_task_t *t) { return t && t->opts ? t->opts->parent_id : 0; }

uint32_t apex_task_attempts(apex_task_t *t) {
  if (!t) return 0;
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  uint32_t n = t->attempt;
  pthread_mutex_unlock(mu);
  return n;
}

json_t *apex_task_result(apex_task_t *t) {
  if (!t) return NULL;
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  json_t *r = atomic_load(&t->state) == APEX_TASK_SUCCEEDED && t->out.result
                  ? json_deep_copy(t->out.result)
                  : NULL;
  pthread_mutex_unlock(mu);
  return r;
}

apex_error_t *apex_task_error(apex_task_t *t) {
  if (!t) return NULL;
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  int st = atomic_load(&t->state);
  apex_error_t *e = NULL;
  /* Once the DONE handed out a view of the error, the view: every reader
   * from then on gets the one object the DONE's did (the view holds t). */
  if (is_terminal(st) && st != APEX_TASK_SUCCEEDED) {
    if (has_view(t)) {
      apex__task_ref(t);
      e = (apex_error_t *)(void *)&t->err_view;
    } else {
      e = apex_error_ref(apex__task_error(t));
    }
  }
  pthread_mutex_unlock(mu);
  return e;
}

apex_progress_t *apex_task_progress(apex_task_t *t) {
  if (!t) return NULL;
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  apex_progress_t *p =
      t->run && t->run->prog && t->run->prog->last_progress
          ? apex_progress_ref(t->run->prog->last_progress)
          : NULL;
  pthread_mutex_unlock(mu);
  return p;
}

apex_token_t *apex_task_token(apex_task_t *t) { return t ? apex__task_token(t) : NULL; }

void apex_task_release(apex_task_t *t) {
  if (t) apex__task_unref(t);
}
