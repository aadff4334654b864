/* Task memory: where apex_task_t structs come from and go back to.
 *
 * Why not malloc. A host that submits one task at a time pays glibc's
 * malloc and free for every task, and in W1 (a million tasks submitted
 * before any is delivered) neither the thread cache nor a free chunk ever
 * serves them: each malloc splits the top chunk through _int_malloc (about
 * 260 instructions and the arena lock's two atomic operations), each free
 * pushes a fastbin chunk with a compare-and-swap. A bump allocator in its
 * place took W1's CPU per task down by about a tenth (bench/analysis.md,
 * issue 9's W1 section of the fifth session).
 *
 * How. A thread allocates tasks from a slab of its own: 8 to 256 slots of
 * SLOT bytes, 64-byte aligned (a task then spans exactly two cache lines,
 * where malloc's 16-byte alignment gives its 128-byte chunk three lines
 * three times in four), handed out in order with no atomic operation. The
 * slab counts, in one atomic word, its slots not yet freed plus one while
 * a thread allocates from it; a task's free subtracts one (any thread:
 * the slab's address is in the slot's last 8 bytes, past the task), a
 * full slab's thread lets go of its one, and whoever brings the count to
 * zero frees the slab. A slot is not reused before its whole slab goes:
 * a task that lives long keeps its slab's 32 KiB (256 tasks' room) alive,
 * which is the price of the free without a lock. A thread that exits lets
 * go of its slab and the slots it did not hand out (a thread-specific key's
 * destructor).
 *
 * ASan builds keep calloc and free per task: ASan must see a use of a task
 * after its free (docs/architecture.md), and a slot freed into a live slab
 * would not be poisoned.
 *
 * Thread-safety: any thread; a thread's current slab is its own, the
 * count is atomic. Failure: NULL on no memory, as calloc. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "exec/internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define TMEM_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TMEM_MALLOC 1
#endif
#endif

#ifndef TMEM_MALLOC

#define SLOT 128u
/* A thread's first slab has SLOTS_MIN slots, each next one twice as many
 * up to SLOTS_MAX: a thread that submits one task and exits (a thread per
 * request) ties up 1 KiB with its task, not 8. */
#define SLOTS_MIN 8u
/* 256, not 64: a slab is a fresh stretch of its thread's arena, which
 * glibc grows by an mprotect call per growth (only the main arena has
 * M_TOP_PAD), so a spawner of 10,000 children made 250 of them, one per
 * slab (bench/analysis.md, W11 of the seventh session). */
#define SLOTS_MAX 256u

_Static_assert(sizeof(apex_task_t) + sizeof(void *) <= SLOT,
               "a task and its slab's address fit a slot");

typedef struct slab {
  /* Slots not yet freed (handed out or not) + 1 while a thread allocates
   * from it. */
  _Alignas(64) _Atomic uint32_t live;
} slab_t;

/* initial-exec: read at every task's allocation (see pool.c, TLS_IE). */
static _Thread_local slab_t *tl_slab __attribute__((tls_model("initial-exec")));
static _Thread_local uint32_t tl_next __attribute__((tls_model("initial-exec")));
static _Thread_local uint32_t tl_slots __attribute__((tls_model("initial-exec"))); /* tl_slab's */

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t key;
static int key_ok;

static void drop(slab_t *s, uint32_t n) {
  if (atomic_fetch_sub_explicit(&s->live, n, memory_order_acq_rel) == n) free(s);
}

/* A thread's exit: its slab's hold and the slots it did not hand out. */
static void thread_gone(void *v) {
  (void)v;
  slab_t *s = tl_slab;
  tl_slab = NULL;
  if (s) drop(s, 1 + tl_slots - tl_next);
}

static void key_make(void) { key_ok = pthread_key_create(&key, thread_gone) == 0; }

/* A host that dlcloses the library must not leave a key whose destructor
 * points into unmapped code for its threads' exits. */
__attribute__((destructor)) static void key_drop(void) {
  if (key_ok) pthread_key_delete(key);
}

apex_task_t *apex__task_mem_new(void) {
  if (!tl_slab || tl_next == tl_slots) {
    uint32_t n = !tl_slots ? SLOTS_MIN : tl_slots < SLOTS_MAX ? 2 * tl_slots : SLOTS_MAX;
    void *mem = NULL;
    size_t bytes = sizeof(slab_t) + (size_t)n * SLOT;
    if (posix_memalign(&mem, 64, bytes) != 0) return NULL;
#ifdef MADV_POPULATE_WRITE
    /* A full-size slab's pages in one system call rather than a page fault
     * each at first touch (eight, where the slab is fresh memory: W11's
     * spawner, which runs ahead of its children, took 700 to 900 faults a
     * run, 200 to 360 with this: bench/analysis.md, W11 of the seventh
     * session). Pages already there cost a walk; a kernel without it
     * (before 5.14) says EINVAL and the faults happen as before. */
    if (n == SLOTS_MAX) {
      long psz = sysconf(_SC_PAGESIZE); /* glibc: from the aux vector, no system call */
      uintptr_t pg = psz > 0 ? (uintptr_t)psz : 4096, lo = ((uintptr_t)mem + pg - 1) & ~(pg - 1),
                hi = ((uintptr_t)mem + bytes) & ~(pg - 1);
      if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
    }
#endif
    slab_t *s = mem;
    atomic_init(&s->live, n + 1);
    pthread_once(&key_once, key_make);
    slab_t *full = tl_slab;
    tl_slab = s;
    tl_next = 0;
    tl_slots = n;
    if (full) drop(full, 1);
    /* The key's value only makes the destructor run; without it (no key,
     * or no memory for the value) the thread would keep its slab's hold
     * at exit, so it keeps none: this slab serves one task. */
    if (!key_ok || pthread_setspecific(key, s) != 0) {
      tl_slab = NULL;
      char *slot = (char *)(s + 1);
      *(slab_t **)(void *)(slot + SLOT - sizeof(slab_t *)) = s;
      drop(s, n); /* the hold and the slots not handed out: 1 left */
      return memset(slot, 0, sizeof(apex_task_t));
    }
  }
  char *slot = (char *)(tl_slab + 1) + (size_t)tl_next++ * SLOT;
  *(slab_t **)(void *)(slot + SLOT - sizeof(slab_t *)) = tl_slab;
  return memset(slot, 0, sizeof(apex_task_t));
}

void apex__task_mem_free(apex_task_t *t) {
  if (!t) return;
  drop(*(slab_t **)(void *)((char *)t + SLOT - sizeof(slab_t *)), 1);
}

void apex__task_mem_free_batched(apex_task_t *t, apex__free_batch_t *b) {
  slab_t *s = *(slab_t **)(void *)((char *)t + SLOT - sizeof(slab_t *));
  if (b->slab != s) {
    apex__task_mem_flush(b);
    b->slab = s;
  }
  b->slots++;
}

/* The slots owed keep their slab alive (its count is above them) until
 * this gives them back. */
void apex__task_mem_flush(apex__free_batch_t *b) {
  if (b->slots) drop(b->slab, b->slots);
  b->slab = NULL;
  b->slots = 0;
}

const void *apex__task_mem_slab_of(const apex_task_t *t) {
  return *(slab_t *const *)(const void *)((const char *)t + SLOT - sizeof(slab_t *));
}

uint32_t apex__task_mem_slab_live(const apex_task_t *t) {
  const slab_t *s = *(slab_t *const *)(const void *)((const char *)t + SLOT - sizeof(slab_t *));
  return atomic_load(&s->live);
}

#else /* TMEM_MALLOC */

apex_task_t *apex__task_mem_new(void) { return calloc(1, sizeof(apex_task_t)); }

void apex__task_mem_free(apex_task_t *t) { free(t); }

void apex__task_mem_free_batched(apex_task_t *t, apex__free_batch_t *b) {
  (void)b;
  free(t);
}

void apex__task_mem_flush(apex__free_batch_t *b) { (void)b; }

uint32_t apex__task_mem_slab_live(const apex_task_t *t) {
  (void)t;
  return 0;
}

const void *apex__task_mem_slab_of(const apex_task_t *t) {
  (void)t;
  return NULL;
}

#endif
