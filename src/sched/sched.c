/* The scheduler: which waiting task a worker runs next, and what holds a
 * task back (a concurrency limit, a token bucket, a start time). It
 * replaced the FIFO run queue of exec/pool.c and is guarded by the same
 * pool_mu, so a submit is still one critical section and a worker's pop
 * one more (sched.h says what each object is; docs/architecture.md, "The
 * scheduler", what each step costs).
 *
 * A pick: the highest priority with runnable tasks (one pick in
 * APEX__SCHED_AGE_EVERY goes to a lower one, in turn, while several have
 * tasks), within it the fairness queue at the ring's cursor (it keeps the
 * cursor for `weight` picks), its oldest task. That task's scopes are
 * checked (plugin, action, concurrency key; the global limit is checked
 * before anything is taken, since it holds every task alike): a scope at
 * its limit gets the task parked on its wait list, a token bucket with no
 * token on its rate list, and the pick goes on with the next task, so no
 * task waits behind a blocked one and a worker never idles while a task
 * could run. Each park is O(1) and happens once per slot the task waits
 * for.
 *
 * A parked task moves back to runnable (at the head of its fairness
 * queue) when its scope has room again: an attempt of the scope closed
 * (apex__sched_release_locked), its limit was raised, or a task that
 * passed the scope's check did not take the slot after all (it parked on
 * a later scope, or ended while runnable): "kick" moves the head waiter
 * then, so a slot left free never strands a waiter. A rate list's head
 * moves when its token is due; the runtime thread wakes at that time
 * (the bucket is in the rate heap, whose top is one of the timers
 * runtime.c arms).
 *
 * Threads: any, under pool_mu. Failure: making a key's scope, a fairness
 * queue or a class at submit may fail (APEX_E_NOMEM, nothing kept);
 * nothing after that allocates but the start heap's growth at submit. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "exec/internal.h"
#include "sched/sched.h"

#include "sched/sched_priv.h"

/* ------------------------------------------------------------ helpers */

/* Zeroed, cache-line aligned memory (a scope has a line of its own for
 * what a submit writes); NULL on no memory. Freed with free(). */
static void *zalloc_aligned(size_t n) {
  void *mem = NULL;
  if (posix_memalign(&mem, APEX__CACHE_LINE, n) != 0) return NULL;
  return memset(mem, 0, n);
}

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static apex__sched_t *S_(apex_manager_t *m) { return m->sched; }

static apex__pblock_t *pblock_of(const apex_task_t *t) {
  return atomic_load_explicit(&((apex__plugin_t *)t->plugin)->sched, memory_order_acquire);
}

apex__sclass_t *apex__sched_class(const apex_task_t *t) {
  return t->opts && t->opts->sc ? t->opts->sc : &pblock_of(t)->dflt;
}

/* Whether every scope counts every task (sched_priv.h, "eager"): once a
 * limit, a rate or a max_queued bound is set anywhere, for good. Before
 * that a task counts only in its action's scope (and its key's): the
 * global and plugin figures are the sums over actions, made when read
 * (apex__sched_figures_locked) or when the first setting arrives
 * (go_eager_locked), so a submit and a pick write one scope line, not
 * three. */
static inline int eager(const apex__sched_t *S) { return (S->holds | S->bounds) != 0; }

/* t's scopes, in the order a pick checks them; sc[3] NULL without a key.
 * Before any setting (eager() 0) only the scopes a task counts in:
 * sc[0] and sc[1] NULL. */
static void scopes_of(apex__sched_t *S, const apex_task_t *t, apex__scope_t *sc[4]) {
  apex__pblock_t *b = pblock_of(t);
  int all = eager(S);
  sc[APEX__SC_GLOBAL] = all ? &S->global : NULL;
  sc[APEX__SC_PLUGIN] = all ? &b->plugin : NULL;
  sc[APEX__SC_ACTION] = &b->actions[t->action - t->plugin->actions];
  sc[APEX__SC_KEY] = t->opts && t->opts->sc ? t->opts->sc->key : NULL;
}

#define LIM_SET 1u
#define RATE_SET 2u
#define MAXQ_SET 4u

/* The concurrency limit of scope sc (kind) for task t; 0: none. */
static uint32_t limit_for(const apex__sched_t *S, const apex__scope_t *sc, int kind,
                          const apex_task_t *t) {
  if (kind != APEX__SC_KEY) return sc->limit;
  if (sc->limit_set & LIM_SET) return sc->limit;
  return S->kd_limit ? S->kd_limit : t->action->key_concurrency;
}

static double rate_of(const apex__sched_t *S, const apex__scope_t *sc, uint32_t *burst) {
  if (sc->kind == APEX__SC_KEY && !(sc->limit_set & RATE_SET)) {
    *burst = S->kd_burst;
    return S->kd_rate;
  }
  *burst = sc->burst;
  return sc->rate;
}

static size_t maxq_of(const apex__sched_t *S, const apex__scope_t *sc) {
  if (sc->kind == APEX__SC_KEY && !(sc->limit_set & MAXQ_SET)) return S->kd_maxq;
  return sc->max_queued;
}

/* Counts t's move into (+1) or out of (-1) a place in every scope sc
 * names (scopes_of: NULL ones are not counted now). */
static inline void count(apex__scope_t *sc[4], unsigned place, int d) {
  if (place == APEX__SCHED_PLACE_RUNNABLE) { /* the in or the out line: sched.h */
    size_t o = d > 0 ? offsetof(apex__scope_t, n_in) : offsetof(apex__scope_t, n_out);
    for (int i = 0; i < 4; i++)
      if (sc[i]) *(uint64_t *)(void *)((char *)sc[i] + o) += 1;
    return;
  }
  size_t off = place == APEX__SCHED_PLACE_LIMIT  ? offsetof(apex__scope_t, n_limit)
               : place == APEX__SCHED_PLACE_RATE ? offsetof(apex__scope_t, n_rate)
                                                 : offsetof(apex__scope_t, n_sched);
  uint64_t dd = (uint64_t)(int64_t)d;
  for (int i = 0; i < 4; i++)
    if (sc[i]) *(uint64_t *)(void *)((char *)sc[i] + off) += dd;
}

static void set_place(apex_task_t *t, unsigned place, unsigned scope) {
  t->timer_flags = (uint8_t)((t->timer_flags & ~APEX__SCHED_BITS) | place |
                             (scope << APEX__SCHED_SCOPE_SHIFT));
}

/* Doubly linked task lists: run_next forward, done_next back (free while
 * a task waits: it is on no DONE queue yet). */
static void l_append(apex_task_t **h, apex_task_t **tl, apex_task_t *t) {
  t->run_next = NULL;
  atomic_store_explicit(&t->done_next, *tl, memory_order_relaxed);
  if (*tl) (*tl)->run_next = t; else *h = t;
  *tl = t;
}

static void l_prepend(apex_task_t **h, apex_task_t **tl, apex_task_t *t) {
  t->run_next = *h;
  atomic_store_explicit(&t->done_next, NULL, memory_order_relaxed);
  if (*h) atomic_store_explicit(&(*h)->done_next, t, memory_order_relaxed); else *tl = t;
  *h = t;
}

static void l_unlink(apex_task_t **h, apex_task_t **tl, apex_task_t *t) {
  apex_task_t *prev = atomic_load_explicit(&t->done_next, memory_order_relaxed);
  apex_task_t *next = t->run_next;
  if (prev) prev->run_next = next; else *h = next;
  if (next) atomic_store_explicit(&next->done_next, prev, memory_order_relaxed); else *tl = prev;
  t->run_next = NULL;
  atomic_store_explicit(&t->done_next, NULL, memory_order_relaxed);
}

/* ------------------------------------------------------------ levels */

/* Level l's ring cursor. Stored rotated so normal priority's is slot 0,
 * in the cache line of the fields every pick reads (sched_priv.h). */
#define LVL(S, l) ((S)->levels[((l) + LEVELS - (APEX_PRIORITY_NORMAL - APEX_PRIORITY_MIN)) % LEVELS])

static int lvl_of(const apex__fq_t *q) { return q->prio - APEX_PRIORITY_MIN; }

static int level_below(const apex__sched_t *S, int below);
_Static_assert(offsetof(apex__sched_t, levels) + sizeof(void *) <= 64,
               "normal priority's ring cursor in the scheduler's first line");

/* Level l became non-empty (on) or empty; keeps top and the count. */
static void bit_set(apex__sched_t *S, int l, int on) {
  uint64_t b = 1ull << (l % 64);
  if (on) {
    S->nonempty[l / 64] |= b;
    S->n_levels++;
    if (l > S->top) S->top = (int16_t)l;
  } else {
    S->nonempty[l / 64] &= ~b;
    S->n_levels--;
    if (l == S->top) S->top = (int16_t)(S->n_levels ? level_below(S, l) : -1);
  }
}

/* The highest non-empty level below `below` (LEVELS: any), or -1. */
static int level_below(const apex__sched_t *S, int below) {
  for (int w = (below - 1) / 64; below > 0 && w >= 0; w--) {
    uint64_t bits = S->nonempty[w];
    if (w == (below - 1) / 64 && (below % 64)) bits &= (1ull << (below % 64)) - 1;
    if (bits) return w * 64 + 63 - __builtin_clzll(bits);
  }
  return -1;
}

/* q became non-empty: into its level's ring, last in the round. */
static void ring_join(apex__sched_t *S, apex__fq_t *q) {
  int l = lvl_of(q);
  apex__fq_t *c = LVL(S, l);
  q->served = 0;
  if (!c) {
    q->rnext = q->rprev = q;
    LVL(S, l) = q;
    bit_set(S, l, 1);
    return;
  }
  q->rprev = c->rprev;
  q->rnext = c;
  c->rprev->rnext = q;
  c->rprev = q;
}

/* q became empty: out of the ring. */
static void ring_leave(apex__sched_t *S, apex__fq_t *q) {
  int l = lvl_of(q);
  if (q->rnext == q) {
    LVL(S, l) = NULL;
    bit_set(S, l, 0);
  } else {
    q->rprev->rnext = q->rnext;
    q->rnext->rprev = q->rprev;
    if (LVL(S, l) == q) LVL(S, l) = q->rnext;
  }
  q->rnext = q->rprev = NULL;
  q->served = 0;
}

/* t's fairness queue: its plugin's default one, found without reading the
 * class, for a task without options. */
static inline apex__fq_t *fq_of(const apex_task_t *t) {
  if (!t->opts || !t->opts->sc) return &pblock_of(t)->dfq;
  return t->opts->sc->fq;
}

/* A fairness queue's tasks now. */
static inline size_t fq_n(const apex__fq_t *q) { return (size_t)(q->n_in - q->n_out); }

/* The solo queue (S->solo): a fairness queue that joined the rings as the
 * only queue of the only level, or emptied while it was that, stays in its
 * ring, and while no other queue joins it counts its own tasks (fq_n: the
 * pushes in its tail's line, the takes in its head's), so a
 * host that submits one task at a time to a pool that keeps up (the queue
 * empties and refills every task) and the worker that picks it write those
 * lines and none of the scheduler's first line: no ring leave and join, no
 * level bits, no shared count. Another queue joining ends it (solo_end):
 * its tasks go into the shared count, and it leaves its ring if empty, so
 * the rings hold non-empty queues but for the solo one. */
static void solo_end(apex__sched_t *S) {
  apex__fq_t *q = S->solo;
  S->solo = NULL;
  S->n_runnable += fq_n(q);
  if (!q->head) ring_leave(S, q);
}

/* Tasks runnable now: the shared count, or the solo queue's. */
static inline size_t n_runnable(const apex__sched_t *S) {
  return S->solo ? fq_n(S->solo) : S->n_runnable;
}

/* The short paths. While nothing is set that can hold a task back or
 * bound a queue (eager() 0), a task of its plugin's default class (no
 * options for the scheduler: t->opts->sc NULL) counts in its action's
 * scope alone, and when its queue is the solo one (one queue, one level)
 * the general code's steps for it reduce to a list append or a take of
 * the head, its action scope's counts and its place: what push, pick and
 * release do here, without the four-scope walks and the ring's and the
 * levels' branches (W1: the three took about 360 instructions a task, a
 * fifth of them under pool_mu on the submitter's side). Each gives the
 * same lists, counts and places as the general code (test_sched_fast
 * checks them against apex__sched_check_locked). Returns: t's action
 * scope when the short path applies to t, else NULL. */
static inline apex__scope_t *plain_action(const apex__sched_t *S, const apex_task_t *t,
                                          apex__pblock_t **bp) {
  if (eager(S) || (t->opts && t->opts->sc)) return NULL;
  apex__pblock_t *b = pblock_of(t);
  *bp = b;
  return &b->actions[t->action - t->plugin->actions];
}

/* The second short path: once eager() holds (a limit or a bound set
 * somewhere), a task of its plugin's default class (no key) while no rate
 * was ever set counts in the global, plugin and action scopes, and in the
 * solo queue the general code's steps for it reduce to those three counts,
 * the list move and, at a pick, the three scopes' limits checked before
 * the head is taken (a limit reached falls through to the general code,
 * which parks it). W1 with limits (apex_limits): the general push, pick
 * and release took about 330 instructions a task. test_sched_fast checks
 * the lists, counts and places against apex__sched_check_locked as for the
 * first. Returns: t's action scope when it applies, else NULL. */
static inline apex__scope_t *eager_action(const apex__sched_t *S, const apex_task_t *t,
                                          apex__pblock_t **bp) {
  if (!eager(S) || S->rates || (t->opts && t->opts->sc)) return NULL;
  apex__pblock_t *b = pblock_of(t);
  *bp = b;
  return &b->actions[t->action - t->plugin->actions];
}

/* Makes t runnable in its fairness queue (at the head: a task released
 * from a wait list has waited longest). Counts it. */
static void runnable(apex__sched_t *S, apex_task_t *t, apex__scope_t *sc[4], int at_head) {
  apex__fq_t *q = fq_of(t);
  int was_empty = q->head == NULL;
  if (at_head) l_prepend(&q->head, &q->tail, t); else l_append(&q->head, &q->tail, t);
  q->n_in++;
  if (q == S->solo) {
    if (was_empty) q->served = 0; /* a new turn, as if it joined */
  } else {
    if (S->solo) solo_end(S);
    if (was_empty) ring_join(S, q);
    /* Joined as the only queue of the only level with nothing else
     * runnable: solo from now, as when such a queue empties (fq_take).
     * Otherwise a host that outran the workers from its first submit (the
     * queue never empties) kept every task of the run off the short paths
     * (bench/analysis.md, the seventh session's W1 section). */
    if (was_empty && q->rnext == q && S->n_levels == 1 && !S->n_runnable)
      S->solo = q;
    else
      S->n_runnable++;
  }
  set_place(t, APEX__SCHED_PLACE_RUNNABLE, 0);
  count(sc, APEX__SCHED_PLACE_RUNNABLE, 1);
}

static void fq_take(apex__sched_t *S, apex__fq_t *q, apex_task_t *t) {
  l_unlink(&q->head, &q->tail, t);
  q->n_out++;
  if (q == S->solo) return; /* stays in its ring, empty or not */
  S->n_runnable--;
  if (q->head) return;
  /* The only queue left, and empty: the shared count is 0; solo from now. */
  if (q->rnext == q && S->n_levels == 1) S->solo = q; else ring_leave(S, q);
}

/* The fairness queue the next pick serves, its turn counted; NULL: none
 * runnable. */
static apex__fq_t *choose(apex__sched_t *S) {
  int top = S->top;
  if (top < 0 || (S->solo && !S->solo->head)) return NULL; /* solo, empty */
  int l = top;
  if (S->n_levels > 1) {
    if (++S->streak >= APEX__SCHED_AGE_EVERY) {
      S->streak = 0;
      int next = S->age_at > 0 && S->age_at <= top ? level_below(S, S->age_at) : -1;
      l = next >= 0 ? next : level_below(S, top);
      S->age_at = (int16_t)l;
    }
  } else if (S->streak) { /* written only on a change: the line stays clean */
    S->streak = 0;
  }
  apex__fq_t *q = LVL(S, l);
  if (++q->served >= q->weight) {
    q->served = 0;
    if (q->rnext != q) LVL(S, l) = q->rnext;
  }
  return q;
}

/* ------------------------------------------------------------- heaps */

static uint64_t skey(const apex_task_t *t) { return t->opts->start_ns; }
static void s_place(apex__sched_t *S, uint32_t i, apex_task_t *t) {
  S->sheap[i] = t;
  ((apex__task_opts_t *)t->opts)->sheap_idx = i;
}
static void s_up(apex__sched_t *S, uint32_t i) {
  apex_task_t *t = S->sheap[i];
  while (i > 0 && skey(S->sheap[(i - 1) / 2]) > skey(t)) {
    s_place(S, i, S->sheap[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  s_place(S, i, t);
}
static void s_down(apex__sched_t *S, uint32_t i) {
  apex_task_t *t = S->sheap[i];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= S->sheap_len) break;
    if (c + 1 < S->sheap_len && skey(S->sheap[c + 1]) < skey(S->sheap[c])) c++;
    if (skey(t) <= skey(S->sheap[c])) break;
    s_place(S, i, S->sheap[c]);
    i = c;
  }
  s_place(S, i, t);
}
static void s_remove(apex__sched_t *S, apex_task_t *t) {
  uint32_t i = t->opts->sheap_idx;
  apex_task_t *last = S->sheap[--S->sheap_len];
  if (i == S->sheap_len) return;
  s_place(S, i, last);
  if (i > 0 && skey(S->sheap[(i - 1) / 2]) > skey(last)) s_up(S, i); else s_down(S, i);
}

static void r_place(apex__sched_t *S, uint32_t i, apex__scope_t *sc) {
  S->rheap[i] = sc;
  sc->rheap_idx = i;
}
static void r_up(apex__sched_t *S, uint32_t i) {
  apex__scope_t *sc = S->rheap[i];
  while (i > 0 && S->rheap[(i - 1) / 2]->due_ns > sc->due_ns) {
    r_place(S, i, S->rheap[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  r_place(S, i, sc);
}
static void r_down(apex__sched_t *S, uint32_t i) {
  apex__scope_t *sc = S->rheap[i];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= S->rheap_len) break;
    if (c + 1 < S->rheap_len && S->rheap[c + 1]->due_ns < S->rheap[c]->due_ns) c++;
    if (sc->due_ns <= S->rheap[c]->due_ns) break;
    r_place(S, i, S->rheap[c]);
    i = c;
  }
  r_place(S, i, sc);
}
static void r_pop(apex__sched_t *S) {
  apex__scope_t *top = S->rheap[0];
  top->in_rheap = 0;
  apex__scope_t *last = S->rheap[--S->rheap_len];
  if (S->rheap_len) {
    r_place(S, 0, last);
    r_down(S, 0);
  }
}

/* ---------------------------------------------------------- token bucket */

/* Counts the tokens sc earned up to now. */
static void refill(apex__scope_t *sc, double rate, uint32_t burst, uint64_t now) {
  if (!sc->tb_ns) {
    sc->tokens = burst;
  } else if (now > sc->tb_ns) {
    sc->tokens += (double)(now - sc->tb_ns) * rate / 1e9;
    if (sc->tokens > burst) sc->tokens = burst;
  }
  sc->tb_ns = now;
}

/* When `need` tokens will be there. */
static uint64_t due_for(const apex__scope_t *sc, double rate, double need, uint64_t now) {
  double missing = need - sc->tokens;
  if (missing <= 0) return now;
  return now + (uint64_t)ceil(missing * 1e9 / rate);
}

/* ------------------------------------------------------------- moves */

/* Parks t (just taken out of its fairness queue) on sc[i]'s limit or rate
 * list. */
static void park(apex_manager_t *m, apex__sched_t *S, apex_task_t *t, apex__scope_t *sc[4],
                 unsigned place, int i, uint64_t now) {
  apex__scope_t *s = sc[i];
  count(sc, APEX__SCHED_PLACE_RUNNABLE, -1);
  count(sc, place, 1);
  set_place(t, place, (unsigned)i);
  if (place == APEX__SCHED_PLACE_LIMIT) {
    l_append(&s->lw_head, &s->lw_tail, t);
    return;
  }
  l_append(&s->rw_head, &s->rw_tail, t);
  if (!s->in_rheap) {
    uint32_t burst;
    double rate = rate_of(S, s, &burst);
    s->due_ns = due_for(s, rate, 1.0, now);
    /* The heap has a slot for every scope (grown as scopes are made). */
    s->in_rheap = 1;
    S->rheap[S->rheap_len] = s;
    r_up(S, S->rheap_len++);
    apex__timer_earlier_locked(m, s->due_ns);
  }
}

/* If scope s (kind) has room for the head of its limit list, that task
 * becomes runnable. Returns 1 if one moved. */
static int kick(apex__sched_t *S, apex__scope_t *s, int kind) {
  apex_task_t *t = s->lw_head;
  if (!t) return 0;
  uint32_t lim = limit_for(S, s, kind, t);
  if (lim && s->running >= lim) return 0;
  apex__scope_t *sc[4];
  scopes_of(S, t, sc);
  l_unlink(&s->lw_head, &s->lw_tail, t);
  count(sc, APEX__SCHED_PLACE_LIMIT, -1);
  runnable(S, t, sc, 1);
  return 1;
}

static void room_freed_locked(apex__sched_t *S) {
  if (atomic_load_explicit(&S->room_waiters, memory_order_relaxed))
    apex__cond_broadcast(&S->room_cv);
}

/* ----------------------------------------------------------------- API */

void apex__sched_push_locked(apex_manager_t *m, apex_task_t *t) {
  apex__task_ref(t);
  apex__sched_push_new_locked(m, t);
}

void apex__sched_push_new_locked(apex_manager_t *m, apex_task_t *t) {
  apex__sched_t *S = S_(m);
  apex__pblock_t *b;
  apex__scope_t *a = plain_action(S, t, &b);
  if (a && &b->dfq == S->solo) { /* runnable() for this case */
    apex__fq_t *q = S->solo;
    /* Empty: a new turn, as if it joined (the tail, not the head: the
     * head is the taking worker's line). */
    if (!q->tail) q->served = 0;
    l_append(&q->head, &q->tail, t);
    q->n_in++;
    set_place(t, APEX__SCHED_PLACE_RUNNABLE, 0);
    a->n_in++;
    return;
  }
  if (!a && (a = eager_action(S, t, &b)) && &b->dfq == S->solo) { /* the same, eager */
    apex__fq_t *q = S->solo;
    if (!q->tail) q->served = 0;
    l_append(&q->head, &q->tail, t);
    q->n_in++;
    set_place(t, APEX__SCHED_PLACE_RUNNABLE, 0);
    S->global.n_in++;
    b->plugin.n_in++;
    a->n_in++;
    return;
  }
  apex__scope_t *sc[4];
  scopes_of(S, t, sc);
  runnable(S, t, sc, 0);
}

int apex__sched_push_start_locked(apex_manager_t *m, apex_task_t *t) {
  apex__sched_t *S = S_(m);
  if (S->sheap_len == S->sheap_cap) {
    uint32_t cap = S->sheap_cap ? S->sheap_cap * 2 : 64;
    apex_task_t **h = realloc(S->sheap, cap * sizeof *h);
    if (!h) return APEX_E_NOMEM;
    S->sheap = h;
    S->sheap_cap = cap;
  }
  apex__scope_t *sc[4];
  scopes_of(S, t, sc);
  S->sheap[S->sheap_len] = t; /* with the submit's reference for the scheduler */
  s_up(S, S->sheap_len++);
  set_place(t, APEX__SCHED_PLACE_START, 0);
  count(sc, APEX__SCHED_PLACE_START, 1);
  apex__timer_earlier_locked(m, t->opts->start_ns);
  return APEX_OK;
}

void apex__sched_started_locked(apex_manager_t *m, apex_task_t *t) {
  apex__sched_t *S = S_(m);
  apex__scope_t *sc[4];
  scopes_of(S, t, sc);
  count(sc, APEX__SCHED_PLACE_START, -1);
  runnable(S, t, sc, 0); /* the heap's reference, handed over */
}

/* fq_take() of t, the head of the solo queue, as choose() with one level
 * would serve it: the short paths of apex__sched_pick_locked. */
static inline void solo_take(apex__sched_t *S, apex__fq_t *sq, apex_task_t *t) {
  if (S->streak) S->streak = 0;
  if (++sq->served >= sq->weight) sq->served = 0;
  apex_task_t *next = t->run_next;
  sq->head = next;
  if (next) atomic_store_explicit(&next->done_next, NULL, memory_order_relaxed);
  else sq->tail = NULL;
  t->run_next = NULL;
  atomic_store_explicit(&t->done_next, NULL, memory_order_relaxed);
  sq->n_out++;
}

apex_task_t *apex__sched_pick_locked(apex_manager_t *m) {
  apex__sched_t *S = S_(m);
  apex__fq_t *sq = S->solo;
  if (sq) {
    /* The solo queue is the only one of the only level: choose() would
     * serve it, and nothing holds a task back while eager() is 0. */
    apex_task_t *t = sq->head;
    if (!t) return NULL;
    apex__pblock_t *b;
    apex__scope_t *a = plain_action(S, t, &b);
    if (a) {
      solo_take(S, sq, t);
      a->n_out++;
      a->running++;
      set_place(t, APEX__SCHED_PLACE_NONE, 0);
      room_freed_locked(S);
      return t;
    }
    a = eager_action(S, t, &b);
    /* Once destroy began nothing is held back (below). */
    if (a && (atomic_load_explicit(&m->shutting_down, memory_order_relaxed) ||
              ((!S->global.limit || S->global.running < S->global.limit) &&
               (!b->plugin.limit || b->plugin.running < b->plugin.limit) &&
               (!a->limit || a->running < a->limit)))) {
      solo_take(S, sq, t);
      S->global.n_out++;
      b->plugin.n_out++;
      a->n_out++;
      S->global.running++;
      b->plugin.running++;
      a->running++;
      set_place(t, APEX__SCHED_PLACE_NONE, 0);
      room_freed_locked(S);
      return t;
    }
  }
  /* Once destroy began, nothing is held back: every attempt a worker
   * opens now ends at once as cancelled (apex__pool_attempt_open). */
  int down = atomic_load_explicit(&m->shutting_down, memory_order_relaxed);
  uint64_t now = 0;
  for (;;) {
    if (!down && S->holds && S->global.limit && S->global.running >= S->global.limit)
      return NULL;
    apex__fq_t *q = choose(S);
    if (!q) return NULL;
    apex_task_t *t = q->head;
    apex__scope_t *sc[4];
    scopes_of(S, t, sc);
    fq_take(S, q, t);
    if (!down && S->holds) {
      int blocked = 0;
      for (int i = APEX__SC_PLUGIN; i <= APEX__SC_KEY && !blocked; i++) {
        uint32_t lim = sc[i] ? limit_for(S, sc[i], i, t) : 0;
        if (lim && sc[i]->running >= lim) {
          park(m, S, t, sc, APEX__SCHED_PLACE_LIMIT, i, 0);
          /* The scopes it passed keep the room it did not take. */
          for (int j = APEX__SC_PLUGIN; j < i; j++) kick(S, sc[j], j);
          blocked = 1;
        }
      }
      if (blocked) continue;
      int rated = 0;
      /* No rate was ever set: no bucket to check (limits alone, as W1's
       * apex_limits, skip the four scopes' rate lookups). */
      for (int i = 0; i < 4 && !blocked && S->rates; i++) {
        uint32_t burst;
        double rate = sc[i] ? rate_of(S, sc[i], &burst) : 0;
        if (rate <= 0) continue;
        if (!now) now = apex__now_ns();
        refill(sc[i], rate, burst, now);
        rated |= 1 << i;
        if (sc[i]->tokens < 1.0) {
          park(m, S, t, sc, APEX__SCHED_PLACE_RATE, i, now);
          for (int j = APEX__SC_PLUGIN; j <= APEX__SC_KEY; j++)
            if (sc[j]) kick(S, sc[j], j);
          blocked = 1;
        }
      }
      if (blocked) continue;
      for (int i = 0; rated && i < 4; i++)
        if (rated & (1 << i)) sc[i]->tokens -= 1.0;
    }
    count(sc, APEX__SCHED_PLACE_RUNNABLE, -1);
    for (int i = 0; i < 4; i++)
      if (sc[i]) sc[i]->running++;
    set_place(t, APEX__SCHED_PLACE_NONE, 0);
    room_freed_locked(S);
    return t;
  }
}

unsigned apex__sched_remove_locked(apex_manager_t *m, apex_task_t *t) {
  apex__sched_t *S = S_(m);
  unsigned place = t->timer_flags & APEX__SCHED_PLACE_MASK;
  int which = (t->timer_flags & APEX__SCHED_SCOPE_MASK) >> APEX__SCHED_SCOPE_SHIFT;
  apex__scope_t *sc[4];
  scopes_of(S, t, sc);
  switch (place) {
    case APEX__SCHED_PLACE_RUNNABLE:
      fq_take(S, fq_of(t), t);
      /* It may have been the one a free slot was kept for (nothing is
       * parked before a setting). */
      if (eager(S))
        for (int j = APEX__SC_PLUGIN; j <= APEX__SC_KEY; j++)
          if (sc[j]) kick(S, sc[j], j);
      break;
    case APEX__SCHED_PLACE_LIMIT:
      l_unlink(&sc[which]->lw_head, &sc[which]->lw_tail, t);
      break;
    case APEX__SCHED_PLACE_RATE:
      /* Its bucket stays in the rate heap: firing with nobody waiting
       * drops it then (O(1) now, no heap repair). */
      l_unlink(&sc[which]->rw_head, &sc[which]->rw_tail, t);
      break;
    case APEX__SCHED_PLACE_START:
      s_remove(S, t);
      break;
    default:
      /* Taken from the start heap by the runtime thread, which holds the
       * reference and has not made it queued yet: it still counts as
       * scheduled. (The caller holds t's lock: the state is stable.) */
      if (atomic_load_explicit(&t->state, memory_order_relaxed) == APEX_TASK_SCHEDULED)
        count(sc, APEX__SCHED_PLACE_START, -1);
      return 0;
  }
  count(sc, place, -1);
  set_place(t, APEX__SCHED_PLACE_NONE, 0);
  room_freed_locked(S);
  return 1;
}

int apex__sched_release_locked(apex_manager_t *m, apex_task_t *t) {
  apex__sched_t *S = S_(m);
  apex__pblock_t *b;
  apex__scope_t *a = plain_action(S, t, &b);
  if (a) { /* counted in its action alone; nothing is parked */
    a->running--;
    return 0;
  }
  if ((a = eager_action(S, t, &b))) { /* no key: the plugin's and action's parked */
    S->global.running--;
    b->plugin.running--;
    a->running--;
    return kick(S, &b->plugin, APEX__SC_PLUGIN) + kick(S, a, APEX__SC_ACTION);
  }
  apex__scope_t *sc[4];
  scopes_of(S, t, sc);
  int moved = 0;
  for (int i = 0; i < 4; i++)
    if (sc[i]) sc[i]->running--;
  if (!eager(S)) return 0; /* nothing is parked before a setting */
  for (int i = APEX__SC_PLUGIN; i <= APEX__SC_KEY; i++)
    if (sc[i]) moved += kick(S, sc[i], i);
  return moved;
}

size_t apex__sched_runnable_locked(apex_manager_t *m) {
  apex__sched_t *S = S_(m);
  /* The hot line only, unless a limit is set somewhere. */
  if (S->holds && S->global.limit && S->global.running >= S->global.limit &&
      !atomic_load_explicit(&m->shutting_down, memory_order_relaxed))
    return 0;
  return n_runnable(S);
}

size_t apex__sched_queued_locked(apex_manager_t *m) {
  apex__sched_t *S = S_(m);
  /* n_runnable: the global scope's runnable count, kept in either mode */
  return n_runnable(S) + (size_t)(S->global.n_limit + S->global.n_rate);
}

/* Adds scope a's counts to *f. */
static void add_figures(apex__scope_figures_t *f, const apex__scope_t *a) {
  f->n_in += a->n_in;
  f->n_out += a->n_out;
  f->n_limit += a->n_limit;
  f->n_rate += a->n_rate;
  f->n_sched += a->n_sched;
  f->running += a->running;
}

void apex__sched_figures_locked(apex_manager_t *m, const apex__scope_t *s, int kind,
                                apex__scope_figures_t *f) {
  apex__sched_t *S = S_(m);
  memset(f, 0, sizeof *f);
  if (eager(S) || kind == APEX__SC_ACTION || kind == APEX__SC_KEY) {
    add_figures(f, s);
    return;
  }
  /* Before any setting a task counts in its action only: a plugin's
   * figures are its actions', the global ones every action's. */
  for (const apex__pblock_t *b = S->blocks; b; b = b->next) {
    if (kind == APEX__SC_PLUGIN && &b->plugin != s) continue;
    size_t n = ((const apex__plugin_t *)b->owner)->desc.n_actions;
    for (size_t i = 0; i < n; i++) add_figures(f, &b->actions[i]);
  }
}

/* The first setting that can hold a task back or bound a queue: from now
 * on every scope counts every task, so the global and plugin scopes get
 * the sums of what their actions counted so far (under pool_mu, where
 * every count is made: no task is counted twice or missed). */
static void go_eager_locked(apex__sched_t *S) {
  if (eager(S)) return;
  for (apex__pblock_t *b = S->blocks; b; b = b->next) {
    size_t n = ((const apex__plugin_t *)b->owner)->desc.n_actions;
    for (size_t i = 0; i < n; i++) {
      const apex__scope_t *a = &b->actions[i];
      apex__scope_t *up[2] = {&S->global, &b->plugin};
      for (int j = 0; j < 2; j++) {
        up[j]->n_in += a->n_in;
        up[j]->n_out += a->n_out;
        up[j]->n_sched += a->n_sched;
        up[j]->running += a->running;
      }
    }
  }
}

uint64_t apex__sched_next_due_locked(apex_manager_t *m) {
  apex__sched_t *S = S_(m);
  uint64_t at = S->sheap_len ? skey(S->sheap[0]) : 0;
  if (S->rheap_len && (!at || S->rheap[0]->due_ns < at)) at = S->rheap[0]->due_ns;
  return at;
}

size_t apex__sched_fire_locked(apex_manager_t *m, uint64_t now, apex_task_t **out, size_t max) {
  apex__sched_t *S = S_(m);
  while (S->rheap_len && S->rheap[0]->due_ns <= now) {
    apex__scope_t *s = S->rheap[0];
    apex_task_t *t = s->rw_head;
    if (!t) { /* its waiters ended meanwhile */
      r_pop(S);
      continue;
    }
    uint32_t burst;
    double rate = rate_of(S, s, &burst);
    if (rate <= 0) { /* the rate was removed: every waiter goes */
      r_pop(S);
      while ((t = s->rw_head)) {
        apex__scope_t *sc[4];
        scopes_of(S, t, sc);
        l_unlink(&s->rw_head, &s->rw_tail, t);
        count(sc, APEX__SCHED_PLACE_RATE, -1);
        runnable(S, t, sc, 1);
      }
      continue;
    }
    refill(s, rate, burst, now);
    apex__scope_t *sc[4];
    scopes_of(S, t, sc);
    l_unlink(&s->rw_head, &s->rw_tail, t);
    count(sc, APEX__SCHED_PLACE_RATE, -1);
    runnable(S, t, sc, 1);
    if (!s->rw_head) {
      r_pop(S);
    } else {
      /* The next one goes once a token more than the one just released
       * is there. */
      s->due_ns = due_for(s, rate, 2.0, now);
      r_down(S, 0);
    }
  }
  size_t n = 0;
  while (n < max && S->sheap_len && skey(S->sheap[0]) <= now) {
    apex_task_t *t = S->sheap[0];
    s_remove(S, t);
    set_place(t, APEX__SCHED_PLACE_NONE, 0);
    out[n++] = t; /* still counted scheduled until it is made queued */
  }
  return n;
}

size_t apex__sched_collect_locked(apex_manager_t *m, apex_task_t **out, size_t max) {
  apex__sched_t *S = S_(m);
  size_t n = 0;
#define TAKE(t)                   \
  do {                            \
    apex__task_ref(t);            \
    out[n++] = (t);               \
  } while (0)
  for (int l = 0; l < LEVELS && n < max; l++) {
    apex__fq_t *q0 = LVL(S, l), *q = q0;
    if (!q) continue;
    do {
      for (apex_task_t *t = q->head; t && n < max; t = t->run_next) TAKE(t);
      q = q->rnext;
    } while (q != q0 && n < max);
  }
  for (apex__scope_t *s = S->all; s && n < max; s = s->all_next) {
    for (apex_task_t *t = s->lw_head; t && n < max; t = t->run_next) TAKE(t);
    for (apex_task_t *t = s->rw_head; t && n < max; t = t->run_next) TAKE(t);
  }
  for (apex_task_t *t = S->global.rw_head; t && n < max; t = t->run_next) TAKE(t);
  for (uint32_t i = 0; i < S->sheap_len && n < max; i++) TAKE(S->sheap[i]);
#undef TAKE
  return n;
}

int apex__sched_room_locked(apex_manager_t *m, apex_task_t *t, char *why, size_t n) {
  apex__sched_t *S = S_(m);
  /* config.max_queued bounds the live tasks until the global bound is set
   * (a count of its own: no scope needed). */
  if (!S->gmax_set && m->cfg.max_queued && apex__pool_n_live(m) >= m->cfg.max_queued) {
    snprintf(why, n, "the queue is full (%zu live tasks, config.max_queued)", m->cfg.max_queued);
    return 0;
  }
  if (!S->bounds) return 1;
  apex__scope_t *sc[4];
  scopes_of(S, t, sc); /* every scope counts: a bound is set */
  static const char *const kinds[] = {"global", "plugin", "action", "key"};
  for (int i = 0; i < 4; i++) {
    if (!sc[i] || (i == APEX__SC_GLOBAL && !S->gmax_set)) continue;
    size_t max = maxq_of(S, sc[i]);
    uint64_t have;
    have = sc[i]->n_sched + APEX__SCOPE_RUNNABLE(sc[i]) + sc[i]->n_limit + sc[i]->n_rate;
    if (max && have >= max) {
      if (i == APEX__SC_GLOBAL)
        snprintf(why, n, "the queue is full (%zu waiting tasks, the global max_queued)", max);
      else if (i == APEX__SC_ACTION)
        snprintf(why, n, "the queue is full (%zu waiting tasks of %s.%s, its max_queued)", max,
                 t->plugin->desc.name, t->action->name);
      else
        snprintf(why, n, "the queue is full (%zu waiting tasks of %s '%s', its max_queued)", max,
                 kinds[i], i == APEX__SC_KEY ? sc[i]->name : t->plugin->desc.name);
      return 0;
    }
  }
  return 1;
}

void apex__sched_room_wait_locked(apex_manager_t *m, uint64_t until) {
  apex__sched_t *S = S_(m);
  atomic_fetch_add_explicit(&S->room_waiters, 1, memory_order_relaxed);
  apex__cond_wait(&S->room_cv, &m->pool_mu, until);
  atomic_fetch_sub_explicit(&S->room_waiters, 1, memory_order_relaxed);
}

void apex__sched_room_wake_locked(apex_manager_t *m) { apex__cond_broadcast(&S_(m)->room_cv); }

void apex__sched_room_freed(apex_manager_t *m) {
  apex__sched_t *S = S_(m);
  if (!S || !atomic_load_explicit(&S->room_waiters, memory_order_relaxed)) return;
  apex__lock(&m->pool_mu);
  apex__cond_broadcast(&S->room_cv);
  apex__unlock(&m->pool_mu);
}

/* ------------------------------------------------------ classes, scopes */

static uint32_t weight_for(const apex__sched_t *S, const char *key) {
  for (const weight_t *w = S->weights; w; w = w->next)
    if (strcmp(w->key, key) == 0) return w->w;
  return 1;
}

static apex__fq_t *fq_find(apex__sched_t *S, const char *key, int32_t prio, int make) {
  size_t b = (size_t)((hash_str(key) ^ (uint64_t)(uint32_t)prio * 0x9e3779b97f4a7c15ull) %
                      BUCKETS);
  for (apex__fq_t *q = S->fq_hash[b]; q; q = q->hnext)
    if (q->prio == prio && strcmp(q->key, key) == 0) return q;
  if (!make) return NULL;
  apex__fq_t *q = zalloc_aligned(sizeof *q);
  if (!q || !(q->key = strdup(key))) {
    free(q);
    return NULL;
  }
  q->prio = prio;
  q->weight = weight_for(S, key);
  q->hnext = S->fq_hash[b];
  S->fq_hash[b] = q;
  return q;
}

static int rheap_room(apex__sched_t *S, uint32_t scopes) {
  if (scopes <= S->rheap_cap) return 1;
  uint32_t cap = S->rheap_cap ? S->rheap_cap : 16;
  while (cap < scopes) cap *= 2;
  apex__scope_t **h = realloc(S->rheap, cap * sizeof *h);
  if (!h) return 0;
  S->rheap = h;
  S->rheap_cap = cap;
  return 1;
}

static uint32_t n_scopes(const apex__sched_t *S) {
  uint32_t n = 1;
  for (const apex__scope_t *s = S->all; s; s = s->all_next) n++;
  return n;
}

static void scope_init(apex__scope_t *s, int kind) {
  memset(s, 0, sizeof *s);
  s->kind = (uint8_t)kind;
  s->rheap_idx = APEX__NOT_IN_HEAP;
}

uint64_t apex__sched_key_hash(const char *key) { return hash_str(key); }

/* Under pool_mu: the scope of concurrency key `name` (h its hash), made if
 * asked. */
static apex__scope_t *key_find_h(apex__sched_t *S, const char *name, uint64_t h, int make) {
  size_t b = (size_t)(h % KEY_BUCKETS);
  for (apex__scope_t *s = S->key_hash[b]; s; s = s->hnext)
    if (strcmp(s->name, name) == 0) return s;
  if (!make) return NULL;
  apex__scope_t *s = zalloc_aligned(sizeof *s);
  if (!s) return NULL;
  scope_init(s, APEX__SC_KEY);
  /* Every scope has a slot in the rate heap: parking never allocates. */
  if (!(s->name = strdup(name)) || !rheap_room(S, S->rheap_len + n_scopes(S) + 1)) {
    free(s->name);
    free(s);
    return NULL;
  }
  s->hnext = S->key_hash[b];
  S->key_hash[b] = s;
  s->all_next = S->all;
  S->all = s;
  return s;
}

static apex__scope_t *key_find(apex__sched_t *S, const char *name, int make) {
  return key_find_h(S, name, hash_str(name), make);
}

static apex__sclass_t *class_find(apex__sched_t *S, apex__fq_t *q, apex__scope_t *key) {
  size_t b = (size_t)((((uintptr_t)q >> 4) * 31u + ((uintptr_t)key >> 4)) % BUCKETS);
  for (apex__sclass_t *c = S->sc_hash[b]; c; c = c->hnext)
    if (c->fq == q && c->key == key) return c;
  apex__sclass_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->fq = q;
  c->key = key;
  c->opts.sc = c;
  c->opts.shared = 1;
  c->hnext = S->sc_hash[b];
  S->sc_hash[b] = c;
  return c;
}

static void class_register(apex__sched_t *S, apex__sclass_t *c) {
  size_t b = (size_t)((((uintptr_t)c->fq >> 4) * 31u + ((uintptr_t)c->key >> 4)) % BUCKETS);
  c->hnext = S->sc_hash[b];
  S->sc_hash[b] = c;
}

int apex__sched_bind_locked(apex_manager_t *m, apex_task_t *t, const apex__sched_req_t *req,
                            int has_private_opts) {
  apex__sched_t *S = S_(m);
  apex__pblock_t *b = pblock_of(t);
  apex__sclass_t *c = &b->dflt;
  if (req && (req->priority || req->fairness_key || req->key)) {
    /* The plugin's default queue needs no lookup; a key remembers the
     * class it was bound with last (one plugin's tasks per key, often). */
    apex__fq_t *q = !req->fairness_key && !req->priority
                        ? &b->dfq
                        : fq_find(S, req->fairness_key ? req->fairness_key : t->plugin->desc.name,
                                  req->priority, 1);
    apex__scope_t *k = req->key ? key_find_h(S, req->key, req->key_hash, 1) : NULL;
    if (!q || (req->key && !k)) return APEX_E_NOMEM;
    if (k && k->last_class && k->last_class->fq == q) {
      c = k->last_class;
    } else {
      if (!(c = class_find(S, q, k))) return APEX_E_NOMEM;
      if (k) k->last_class = c;
    }
  }
  if (has_private_opts)
    ((apex__task_opts_t *)t->opts)->sc = c;
  else if (c != &b->dflt)
    t->opts = &c->opts;
  return APEX_OK;
}

/* Under pool_mu: one more setting that can hold tasks back (sched_api.c
 * and action descriptors' defaults). Never decreases: a setting removed
 * later costs the checks, not correctness. */
void apex__sched_holds_locked(apex_manager_t *m) {
  go_eager_locked(S_(m));
  S_(m)->holds++;
}
void apex__sched_bounds_locked(apex_manager_t *m) {
  go_eager_locked(S_(m));
  S_(m)->bounds++;
}

apex__pblock_t *apex__sched_pblock(apex_manager_t *m, const void *plugin) {
  apex__plugin_t *p = (apex__plugin_t *)plugin;
  apex__pblock_t *b = atomic_load_explicit(&p->sched, memory_order_acquire);
  if (b) return b;
  size_t n = p->desc.n_actions;
  b = zalloc_aligned(sizeof *b);
  if (!b) return NULL;
  b->actions = zalloc_aligned((n ? n : 1) * sizeof *b->actions);
  b->dfq.key = strdup(p->desc.name);
  if (!b->actions || !b->dfq.key) {
    free(b->actions);
    free(b->dfq.key);
    free(b);
    return NULL;
  }
  scope_init(&b->plugin, APEX__SC_PLUGIN);
  for (size_t i = 0; i < n; i++) {
    scope_init(&b->actions[i], APEX__SC_ACTION);
    b->actions[i].limit = p->actions[i].max_concurrency;
  }
  unsigned holds = 0;
  for (size_t i = 0; i < n; i++)
    holds += p->actions[i].max_concurrency || p->actions[i].key_concurrency;
  b->dfq.prio = APEX_PRIORITY_NORMAL;
  b->dflt.fq = &b->dfq;
  b->dflt.opts.sc = &b->dflt;
  b->dflt.opts.shared = 1;
  b->dflt.embedded = b->dfq.embedded = 1;
  apex__sched_t *S = S_(m);
  apex__lock(&m->pool_mu);
  apex__pblock_t *seen = atomic_load_explicit(&p->sched, memory_order_relaxed);
  if (!seen && !rheap_room(S, S->rheap_len + n_scopes(S) + (uint32_t)n + 1)) seen = NULL;
  else if (!seen) {
    b->dfq.weight = weight_for(S, b->dfq.key);
    size_t h = (size_t)((hash_str(b->dfq.key) ^ 0) % BUCKETS);
    b->dfq.hnext = S->fq_hash[h];
    S->fq_hash[h] = &b->dfq;
    class_register(S, &b->dflt);
    b->plugin.all_next = S->all;
    S->all = &b->plugin;
    for (size_t i = 0; i < n; i++) {
      b->actions[i].all_next = S->all;
      S->all = &b->actions[i];
    }
    if (holds) go_eager_locked(S); /* before b joins: it counted nothing */
    b->owner = p;
    b->next = S->blocks;
    S->blocks = b;
    S->holds += holds;
    atomic_store_explicit(&p->sched, b, memory_order_release);
    apex__unlock(&m->pool_mu);
    return b;
  }
  apex__unlock(&m->pool_mu);
  free(b->actions);
  free(b->dfq.key);
  free(b);
  return seen; /* NULL: no room for its rate slots */
}

long apex__sched_check_locked(apex_manager_t *m) {
  apex__sched_t *S = S_(m);
  long n = 0;
  for (int l = 0; l < LEVELS; l++) {
    apex__fq_t *q0 = LVL(S, l), *q = q0;
    if (!q0) continue;
    if (S->solo && (q0 != S->solo || q0->rnext != q0 || S->n_levels != 1 || S->n_runnable))
      return -1; /* solo: the only queue of the only level */
    do {
      apex_task_t *prev = NULL;
      size_t count_q = 0;
      for (apex_task_t *t = q->head; t; prev = t, t = t->run_next, count_q++) {
        if (atomic_load_explicit(&t->done_next, memory_order_relaxed) != prev) return -1;
        if ((t->timer_flags & APEX__SCHED_PLACE_MASK) != APEX__SCHED_PLACE_RUNNABLE) return -1;
        n++;
      }
      if (q->tail != prev || (!q->head && q != S->solo) || fq_n(q) != count_q) return -1;
      q = q->rnext;
    } while (q != q0);
  }
  if (eager(S) && (uint64_t)n != APEX__SCOPE_RUNNABLE(&S->global)) return -1;
  return (size_t)n == n_runnable(S) ? n : -1;
}

/* --------------------------------------------------------- life, stats */

int apex__sched_init(apex_manager_t *m) {
  /* Cache-line aligned: its first line is what every pick reads. */
  void *mem = NULL;
  if (posix_memalign(&mem, APEX__CACHE_LINE, sizeof(apex__sched_t)) != 0) return APEX_E_NOMEM;
  apex__sched_t *S = memset(mem, 0, sizeof(apex__sched_t));
  scope_init(&S->global, APEX__SC_GLOBAL);
  S->top = -1;
  if (!rheap_room(S, 16)) {
    free(S);
    return APEX_E_NOMEM;
  }
  m->sched = S;
  return APEX_OK;
}

void apex__sched_fini(apex_manager_t *m) {
  apex__sched_t *S = S_(m);
  if (!S) return;
  for (size_t b = 0; b < BUCKETS; b++) {
    for (apex__sclass_t *c = S->sc_hash[b], *n; c; c = n) {
      n = c->hnext;
      if (!c->embedded) free(c);
    }
    for (apex__fq_t *q = S->fq_hash[b], *n; q; q = n) {
      n = q->hnext;
      if (!q->embedded) {
        free(q->key);
        free(q);
      }
    }
  }
  for (size_t b = 0; b < KEY_BUCKETS; b++) {
    for (apex__scope_t *s = S->key_hash[b], *n; s; s = n) {
      n = s->hnext;
      free(s->name);
      free(s);
    }
  }
  for (apex__pblock_t *b = S->blocks, *n; b; b = n) {
    n = b->next;
    free(b->actions);
    free(b->dfq.key);
    free(b);
  }
  for (weight_t *w = S->weights, *n; w; w = n) {
    n = w->next;
    free(w->key);
    free(w);
  }
  free(S->sheap);
  free(S->rheap);
  free(S);
  m->sched = NULL;
}

/* ------------------------------------------------- for sched_api.c */

apex__scope_t *apex__sched_key_locked(apex__sched_t *S, const char *name, int make) {
  return key_find(S, name, make);
}

void apex__sched_kick_all_locked(apex_manager_t *m, apex__scope_t *s, int kind) {
  apex__sched_t *S = S_(m);
  if (kind == APEX__SC_GLOBAL) return; /* nothing parks on it */
  /* Room for many at once: each moved task counts as runnable, not
   * running, so bound the moves by the room the limit leaves. */
  uint32_t moved = 0;
  while (s->lw_head) {
    uint32_t lim = limit_for(S, s, kind, s->lw_head);
    if (lim && s->running + moved >= lim) break;
    if (!kick(S, s, kind)) break;
    moved++;
  }
}

void apex__sched_key_default_changed_locked(apex_manager_t *m) {
  apex__sched_t *S = S_(m);
  for (apex__scope_t *s = S->all; s; s = s->all_next)
    if (s->kind == APEX__SC_KEY) {
      apex__sched_kick_all_locked(m, s, APEX__SC_KEY);
      apex__sched_rate_changed_locked(m, s);
    }
}

void apex__sched_rate_changed_locked(apex_manager_t *m, apex__scope_t *s) {
  apex__sched_t *S = S_(m);
  if (!s->rw_head) return;
  /* Fire now: the firing recomputes the due time with the new rate. */
  uint64_t now = apex__now_ns();
  s->due_ns = now;
  if (s->in_rheap) {
    r_up(S, s->rheap_idx);
  } else {
    s->in_rheap = 1;
    S->rheap[S->rheap_len] = s;
    r_up(S, S->rheap_len++);
  }
  apex__timer_earlier_locked(m, now);
}

void apex__sched_weight_locked(apex__sched_t *S, const char *key, uint32_t w) {
  for (size_t b = 0; b < BUCKETS; b++)
    for (apex__fq_t *q = S->fq_hash[b]; q; q = q->hnext)
      if (strcmp(q->key, key) == 0) {
        q->weight = w;
        if (q->served >= w) q->served = 0;
      }
}

/* ------------------------------------------------------- start times */

void apex__task_on_start(apex_task_t *t) {
  apex_manager_t *m = apex__task_m(t);
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  int pushed = 0;
  /* Ended meanwhile (cancelled, timed out): its end left the scheduled
   * count (apex__sched_remove_locked found it in no place). */
  if (atomic_load(&t->state) == APEX_TASK_SCHEDULED) {
    atomic_store(&t->state, APEX_TASK_QUEUED);
    apex__lock(&m->pool_mu);
    apex__sched_started_locked(m, t); /* the heap's reference goes with it */
    apex__unlock(&m->pool_mu);
    pushed = 1;
  }
  pthread_mutex_unlock(mu);
  if (!pushed) apex__task_unref(t);
}
