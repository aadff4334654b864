/* Private to src/sched/: the scheduler's structures (sched.h says what
 * each is for), shared by sched.c (the queues) and sched_api.c (the
 * public calls that set limits and read a scope's figures). Everything is
 * guarded by m->pool_mu. */
#ifndef APEX_SCHED_PRIV_H
#define APEX_SCHED_PRIV_H

#include "exec/internal.h"
#include "sched/sched.h"

#define LEVELS (APEX_PRIORITY_MAX - APEX_PRIORITY_MIN + 1)
#define BUCKETS 256u
#define KEY_BUCKETS 4096u /* concurrency keys: many (one per remote host) */

/* Its tasks are n_in - n_out (fq_n, sched.c: what counts runnable while
 * it is solo). The end a push writes (tail, n_in) is in a cache line of
 * its own: with a backlog the submitting thread appends while a worker
 * takes the head, and one line for both moved between their cores in each
 * one's pool_mu section (bench/analysis.md, W1 of the ninth session). A
 * push reads only that line unless the queue is empty. Aligned: made by
 * zalloc_aligned, or in a plugin block (aligned). */
struct apex__fq {
  _Alignas(APEX__CACHE_LINE) apex_task_t *head;
  uint64_t n_out;            /* taken, ever */
  apex__fq_t *rnext, *rprev; /* the ring of its priority, while non-empty */
  int32_t prio;
  uint32_t weight, served;
  char *key;                 /* the fairness key (owned) */
  apex__fq_t *hnext;
  uint8_t embedded;          /* a plugin block's default: freed with it */
  _Alignas(APEX__CACHE_LINE) apex_task_t *tail;
  uint64_t n_in;             /* appended or prepended, ever */
};

struct apex__sclass {
  /* First: a task whose only options are scheduling ones points here
   * (opts.shared = 1, opts.sc = this class). */
  apex__task_opts_t opts;
  apex__fq_t *fq;
  apex__scope_t *key; /* NULL: none */
  apex__sclass_t *hnext;
  uint8_t embedded; /* a plugin block's default: freed with it */
};

struct apex__pblock {
  apex__scope_t plugin;
  const void *owner;      /* its apex__plugin_t (for the number of actions) */
  apex__scope_t *actions; /* one per action, in the plugin's order */
  apex__sclass_t dflt;
  apex__fq_t dfq;
  apex__pblock_t *next;
};

typedef struct weight {
  char *key;
  uint32_t w;
  struct weight *next;
} weight_t;

struct apex__sched {
  /* What every submit and pick reads, in the first cache line (the struct
   * is aligned), written by neither while one queue serves (sched.c,
   * S->solo): 16 + 8 + 16 + 8 + the normal priority's cursor. */
  int16_t top;        /* the highest non-empty level, -1: none */
  uint16_t n_levels;  /* non-empty levels */
  uint16_t streak;    /* picks from the top level while lower ones wait */
  int16_t age_at;     /* the level the last aging pick served */
  /* Settings that can hold a task back (a limit or a rate anywhere, the
   * keys' defaults, an action's descriptor defaults): while 0 a pick checks
   * nothing; max_queued bounds likewise for a submit. While both are 0 a
   * task counts only in its action's scope and its key's (sched.c,
   * eager()); the first setting makes every scope count. */
  uint32_t holds, bounds;
  /* Tasks runnable now (what wakes a worker) but the solo queue's, and
   * that queue (sched.c: n_runnable(), solo_end). */
  size_t n_runnable;
  apex__fq_t *solo;
  /* Submits waiting for room (read at every pick and task end, written
   * only by a waiting submit). */
  atomic_uint room_waiters;
  /* Rates set (a scope's or the keys' default), ever: while 0 a pick
   * skips the token buckets (in the padding before levels: the line's
   * layout stays). */
  uint32_t rates;
  /* Each level's ring at its cursor, rotated (LVL in sched.c) so normal
   * priority's is slot 0, in this line. */
  apex__fq_t *levels[LEVELS];
  apex__scope_t global; /* its runnable count: every runnable task */
  uint64_t nonempty[(LEVELS + 63) / 64]; /* the levels with a queue in their ring */
  /* APEX_SCOPE_KEY with name NULL: the defaults of keys without their own */
  uint32_t kd_limit, kd_burst;
  double kd_rate;
  size_t kd_maxq;
  int gmax_set; /* set_max_queued(GLOBAL) replaced config.max_queued */
  apex__fq_t *fq_hash[BUCKETS];
  apex__sclass_t *sc_hash[BUCKETS];
  apex__scope_t *key_hash[KEY_BUCKETS];
  apex__scope_t *all; /* plugin, action and key scopes */
  apex__pblock_t *blocks;
  weight_t *weights;
  apex_task_t **sheap; /* scheduled, by start time */
  uint32_t sheap_len, sheap_cap;
  apex__scope_t **rheap; /* scopes with rate waiters, by due time */
  uint32_t rheap_len, rheap_cap;
  apex__cond_t room_cv; /* with m->pool_mu */
};


/* Under pool_mu (sched.c): the scope of concurrency key name, made if
 * make (NULL on no memory); a fairness key's new weight applied. */
apex__scope_t *apex__sched_key_locked(apex__sched_t *S, const char *name, int make);
void apex__sched_kick_all_locked(apex_manager_t *m, apex__scope_t *s, int kind);
void apex__sched_rate_changed_locked(apex_manager_t *m, apex__scope_t *s);
void apex__sched_key_default_changed_locked(apex_manager_t *m);
void apex__sched_weight_locked(apex__sched_t *S, const char *key, uint32_t w);
/* Under pool_mu: the first call of either switches every scope to counting
 * every task (see eager() in sched.c). */
void apex__sched_holds_locked(apex_manager_t *m);
void apex__sched_bounds_locked(apex_manager_t *m);

/* A scope's counts as read (apex_manager_scope_stats). */
typedef struct apex__scope_figures {
  uint64_t n_in, n_out, n_limit, n_rate, n_sched, running;
} apex__scope_figures_t;

/* Under pool_mu: scope s's counts (kind APEX__SC_*), the sums over its
 * actions where the scope itself does not count yet (sched.c, eager()). */
void apex__sched_figures_locked(apex_manager_t *m, const apex__scope_t *s, int kind,
                                apex__scope_figures_t *f);

#endif
