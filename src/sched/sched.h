/* Internal: the scheduler (src/sched/sched.c): what the run queue became.
 * It decides which waiting task a worker takes next and holds back the
 * tasks a concurrency limit, a rate limit or a start time does not let run
 * yet; docs/scheduling.md says what a host sees, docs/architecture.md
 * ("The scheduler") how it is built.
 *
 * Everything here is guarded by m->pool_mu (the lock a submit and a
 * worker's pop already took for the FIFO it replaces), so a submit is still
 * one critical section and the lock order is unchanged: pool_mu stays a
 * leaf. Nothing here runs user code or takes another lock, except the
 * room condition variable a submit that waits for room sleeps on (with
 * pool_mu, as its mutex).
 *
 * Objects:
 *  - a scope (apex__scope_t): the global one, one per loaded plugin, one
 *    per action, one per concurrency key in use. It holds the limits a host
 *    set (concurrency, token bucket, max_queued), the tasks parked on its
 *    concurrency limit or its rate, and its counts;
 *  - a fairness queue (apex__fq_t): the runnable tasks of one fairness key
 *    at one priority, FIFO; the non-empty ones of a priority form a ring
 *    served round-robin (weight picks each);
 *  - a scheduling class (apex__sclass_t): one (fairness queue, concurrency
 *    key) pair, shared by every task that has it, so a task names its
 *    queue and key with the one pointer it has room for (t->opts): a task
 *    that sets only scheduling options points at its class's own options
 *    block, which is never freed with the task.
 * Where a task waits is in its timer_flags (APEX__SCHED_PLACE_*, and for a
 * park the scope it waits on), its links are run_next and done_next (the
 * back link), so every waiting task is removed in O(1) (a scheduled one in
 * O(log n), from a heap) without allocating: apex__sched_remove_locked. */
#ifndef APEX_SCHED_SCHED_H
#define APEX_SCHED_SCHED_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "apex/apex.h"

typedef struct apex__sched apex__sched_t;
typedef struct apex__scope apex__scope_t;
typedef struct apex__fq apex__fq_t;
typedef struct apex__sclass apex__sclass_t;

/* Where a task waits (bits 3-5 of t->timer_flags; bits 0-2 are the
 * timers'), and, parked, on which of its scopes (bits 6-7). */
#define APEX__SCHED_PLACE_MASK 0x38u
#define APEX__SCHED_PLACE_NONE 0x00u     /* not in the scheduler */
#define APEX__SCHED_PLACE_RUNNABLE 0x08u /* in its fairness queue */
#define APEX__SCHED_PLACE_LIMIT 0x10u    /* parked on a concurrency limit */
#define APEX__SCHED_PLACE_RATE 0x18u     /* parked on a rate limit */
#define APEX__SCHED_PLACE_START 0x20u    /* waiting for its start time (heap) */
#define APEX__SCHED_SCOPE_MASK 0xc0u
#define APEX__SCHED_SCOPE_SHIFT 6
#define APEX__SCHED_BITS (APEX__SCHED_PLACE_MASK | APEX__SCHED_SCOPE_MASK)

/* Which scope of a task: its index in the chain a pick checks. */
enum { APEX__SC_GLOBAL = 0, APEX__SC_PLUGIN = 1, APEX__SC_ACTION = 2, APEX__SC_KEY = 3 };

/* Out of every APEX__SCHED_AGE_EVERY picks made while tasks of more than
 * one priority are runnable, one goes to a lower priority (the next one
 * down, in turn): lower priorities are delayed, never starved. */
#define APEX__SCHED_AGE_EVERY 8u

struct apex__scope {
  /* What a pick writes (and a submit does not), in the first cache line. */
  uint32_t limit;    /* host's concurrency limit (an action's: its
                        descriptor's max_concurrency until set); 0: none */
  uint32_t running;  /* attempts of it open, plus popped and about to open */
  /* counts (stats, max_queued; the global and plugin scopes' only once a
   * setting made the counts eager, sched.c); runnable is n_in - n_out: a submit adds to
   * n_in, in a line of its own, so the submitting thread and the workers
   * do not write one line (APEX__SCOPE_RUNNABLE) */
  uint64_t n_out, n_limit, n_rate, n_sched;
  uint8_t kind;      /* APEX__SC_* */
  uint8_t limit_set; /* which settings the host made (sched.c: LIM_SET...) */
  uint8_t in_rheap;
  /* parked on the limit / on the rate (run_next, done_next as back link) */
  apex_task_t *lw_head, *lw_tail;
  apex_task_t *rw_head, *rw_tail;
  /* token bucket; rate 0: none (a key: the key default's then) */
  double rate, tokens;
  uint32_t burst;
  uint64_t tb_ns;   /* tokens counted up to here */
  uint64_t due_ns;  /* the rate heap's key: when the next parked may go */
  uint32_t rheap_idx;
  size_t max_queued; /* 0: none */
  /* a key scope: its name, hash chain, classes referring to it */
  char *name;
  apex__scope_t *hnext;
  apex__scope_t *all_next; /* every plugin, action and key scope */
  apex__sclass_t *last_class; /* a key: the class bound with it last (a cache) */
  _Alignas(64) uint64_t n_in; /* made runnable, ever (the submit's line) */
};

/* A scope's runnable tasks now (pool_mu). */
#define APEX__SCOPE_RUNNABLE(s) ((s)->n_in - (s)->n_out)

/* Per loaded plugin (apex__plugin_t.sched): its scope, one per action,
 * and its default class (priority normal, fairness key = the plugin's
 * name, no concurrency key), which a task without options uses. */
typedef struct apex__pblock apex__pblock_t;

/* The scheduler's half of the manager (m->sched). */
int apex__sched_init(apex_manager_t *m);
void apex__sched_fini(apex_manager_t *m);

/* The plugin's block, made on first use (any thread, no lock held: takes
 * pool_mu). Returns: NULL on no memory. */
apex__pblock_t *apex__sched_pblock(apex_manager_t *m, const void *plugin);

/* What a submit resolved for the task (manager.c): prepared before
 * pool_mu is taken; apex__sched_bind_locked makes it the task's. */
typedef struct apex__sched_req {
  int32_t priority;
  const char *fairness_key; /* NULL: the plugin's name */
  const char *key;          /* the concurrency key, NULL: none (borrowed) */
  uint64_t key_hash;        /* apex__sched_key_hash(key), taken before pool_mu */
  uint64_t start_ns;        /* 0: now */
  int64_t wait_ms;          /* queue_wait_ms */
} apex__sched_req_t;

/* The hash of a concurrency key, computed by the submit before it takes
 * pool_mu. Any thread. */
uint64_t apex__sched_key_hash(const char *key);

/* Under pool_mu, at submit: finds (or makes) t's class for req and points
 * t at it: t->opts is then either t's private options (which gets sc) or
 * the class's shared block. Returns: APEX_OK or APEX_E_NOMEM. */
int apex__sched_bind_locked(apex_manager_t *m, apex_task_t *t, const apex__sched_req_t *req,
                            int has_private_opts);
/* Under pool_mu: would one more task of t's scopes be within every
 * max_queued bound? Returns 1, or 0 with the bound's scope named in why. */
int apex__sched_room_locked(apex_manager_t *m, apex_task_t *t, char *why, size_t n);
/* Under pool_mu: a submit's wait for room. Releases pool_mu and sleeps
 * until a task leaves a waiting place or ends, a bound is raised,
 * shutdown (apex__sched_room_wake_locked), `until` passes (CLOCK_MONOTONIC
 * ns; UINT64_MAX: no limit), or spuriously; then takes pool_mu again. The
 * caller rechecks. */
void apex__sched_room_wait_locked(apex_manager_t *m, uint64_t until);
/* Under pool_mu: wakes every submit waiting for room. */
void apex__sched_room_wake_locked(apex_manager_t *m);
/* Any thread, no lock: wakes submits waiting for room (a live task ended:
 * config.max_queued counts live tasks). */
void apex__sched_room_freed(apex_manager_t *m);

/* Under pool_mu: t (state queued, holding no place) becomes runnable,
 * taking a task reference for the scheduler. */
void apex__sched_push_locked(apex_manager_t *m, apex_task_t *t);
/* Under pool_mu: as apex__sched_push_locked, for a task just submitted,
 * with the reference its submit made for the scheduler (one atomic
 * operation a submit fewer). */
void apex__sched_push_new_locked(apex_manager_t *m, apex_task_t *t);
/* Under pool_mu: t (state scheduled, just submitted) waits for
 * t->opts->start_ns, with the reference its submit made for the
 * scheduler. Returns: APEX_OK or APEX_E_NOMEM (the heap's room; the
 * reference stays the caller's). */
int apex__sched_push_start_locked(apex_manager_t *m, apex_task_t *t);
/* Under the lock of t (state scheduled, just made queued) and pool_mu: its
 * start time came; it leaves the scheduled count and becomes runnable,
 * with the reference the start heap held (apex__sched_fire_locked gave
 * the caller). */
void apex__sched_started_locked(apex_manager_t *m, apex_task_t *t);

/* Under pool_mu: the next task a worker runs, its slots in every scope
 * taken (and its rate tokens), or NULL. Tasks a limit or a rate holds back
 * are parked on the way (O(1) each), so no task waits behind a blocked
 * one. The scheduler's reference moves to the caller. */
apex_task_t *apex__sched_pick_locked(apex_manager_t *m);

/* THE way out of the scheduler for a task that ends while it waits
 * (cancel, the overall deadline, shutdown, and the schedule-to-start
 * timeout): under pool_mu (apex__pool_task_end calls it, under the task's
 * lock, before the terminal state is published), takes t out of whatever
 * place it waits in (runnable, parked on a limit or a rate: O(1); its
 * start heap: O(log n)), leaves its counts, and frees nothing and
 * allocates nothing. Returns the references the caller drops once it
 * unlocked (the scheduler's: 0 or 1). A task in no place: 0. */
unsigned apex__sched_remove_locked(apex_manager_t *m, apex_task_t *t);

/* Under pool_mu: t's attempt closed (or a popped t never opened one): its
 * slots go back and the tasks they hold back move to runnable. Returns how
 * many moved. */
int apex__sched_release_locked(apex_manager_t *m, apex_task_t *t);

/* Under pool_mu: tasks runnable now (a worker would find one), 0 while
 * the global limit is reached. */
size_t apex__sched_runnable_locked(apex_manager_t *m);
/* Under pool_mu: tasks queued (runnable or parked: state queued). */
size_t apex__sched_queued_locked(apex_manager_t *m);

/* Under pool_mu: the earliest time a rate token or a start time is due,
 * 0 for none. */
uint64_t apex__sched_next_due_locked(apex_manager_t *m);
/* Under pool_mu, at now: moves the tasks whose rate token is due to
 * runnable, and takes up to max tasks whose start time came out of the
 * start heap into out[] (each with the heap's reference, for
 * apex__task_on_start). Returns how many it put in out. */
size_t apex__sched_fire_locked(apex_manager_t *m, uint64_t now, apex_task_t **out, size_t max);

/* Destroy, under pool_mu: up to max tasks still waiting anywhere in the
 * scheduler (each with a new reference), for the caller to cancel. */
size_t apex__sched_collect_locked(apex_manager_t *m, apex_task_t **out, size_t max);

/* The class t belongs to (immutable after submit). */
apex__sclass_t *apex__sched_class(const apex_task_t *t);
/* Under pool_mu: walks every fairness queue checking links and flags.
 * Returns the runnable count, or -1 if anything disagrees (tests). */
long apex__sched_check_locked(apex_manager_t *m);

#endif
