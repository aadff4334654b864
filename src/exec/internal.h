/* Internal: the manager, tasks and the pieces of the execution engine that
 * share them (manager.c, task.c, ctx.c, pool.c, runtime.c, timeouts.c,
 * events.c, partial.c).
 *
 * Threads: the host's threads (submit, wait, cancel, dispatch), worker
 * threads (run handlers), the runtime thread (libuv loop: deadlines, retry
 * backoff, progress flushing, event delivery in LOOP mode) and any thread a
 * deferred plugin completes from.
 *
 * Locks, in the only order any code takes two of them:
 *   m->reg_mu (registry)      never held with another
 *   task stripe lock          (apex__task_mu; it also guards its stripe's
 *                             live list) before
 *     m->pool_mu | m->ev_mu | m->flush_mu | m->runs_mu
 *                             (leaves: never two; pool_mu also guards
 *                             the scheduler, src/sched/, and is the
 *                             mutex of its room condition variable)
 *   m->wait_mu                after a task lock (waking waiters; a count
 *                             destroy waits for reaching zero); else a
 *                             leaf (waking waiters after a DONE callback)
 *   a family's mutex          (src/ops/children.c) after a task lock; a
 *                             leaf
 *   group->mu                 (ops/group.c) after a task lock (a member's
 *                             end), before m->ev_mu (its GROUP event);
 *                             else a leaf
 * No user code (handler, event callback, log sink, token callback) runs
 * while any of them is held. */
#ifndef APEX_EXEC_INTERNAL_H
#define APEX_EXEC_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include <uv.h>

#include "apex/apex.h"
#include "core/log.h"
#include "core/policy.h"
#include "core/progress_tree.h"
#include "core/token_internal.h"
#include "exec/lock.h"
#include "obs/trace.h"
#include "plugin/loader.h"
#include "sched/sched.h"

#define APEX__LOCK_STRIPES 64
#define APEX__ORPHANED 0x80000000u /* in m->n_active (see there) */
#define APEX__N_OUT_ONE ((uint64_t)1 << 32) /* n_out's 1 in m->n_active */
/* The open attempts in a value of m->n_active, without APEX__ORPHANED. */
#define apex__n_active_of(w) ((uint32_t)(w) & ~APEX__ORPHANED)
#define APEX__CACHE_LINE 64
/* Manager references a submit's section takes at a time (ref_bank). */
#define APEX__REF_BATCH 64u
#define APEX__PROGRESS_BACKLOG_MAX 64
#define APEX__DONE_LANES 4 /* a power of two (events.c) */

typedef struct apex__ev apex__ev_t;

/* A task's progress as the plugin last left it, and what of it is not yet
 * delivered; allocated on the task's first report (a queued task carries
 * none). Every report changes this state (a full one all of it, a node
 * update one node or the task's own figures) and a delivery snapshots it,
 * so what is reported costs what changed and what is delivered is copied
 * once per delivery (task.c, "progress"). Guarded by the task's lock. */
typedef struct apex__progress_slot {
  uint64_t seq;         /* progress seq of the last snapshot made */
  int dirty;            /* the state changed since it was last snapshotted */
  double pct;
  char msg[APEX_PROGRESS_MESSAGE_MAX + 1];
  char status[32];      /* "" until a report set one ("running") */
  json_t *details;      /* the last full report's (a copy), or NULL */
  /* Heartbeats (apex_ctx_heartbeat): the open attempt's latest details (a
   * copy) and the last ones an earlier attempt recorded (what
   * apex_ctx_heartbeat_details returns: not touched while an attempt is
   * open); hb_dirty: a HEARTBEAT event is due at the next flush. */
  json_t *hb_details, *hb_prev;
  int hb_dirty;
  /* Partial results (apex_ctx_partial_result, partial.c): the latest
   * published, flattened (NULL: none), a spare buffer the next publish
   * flattens into, and whether a PARTIAL event is due at the next flush. */
  struct apex__flat *partial, *partial_spare;
  int partial_dirty;
  apex__ptree_t *tree;  /* the sub-task tree; NULL until one is reported */
  /* Checkpoints (apex_ctx_checkpoint, src/store/durable.c): the latest
   * saved (a copy) and the one apex_ctx_checkpoint_get returns to the open
   * attempt (the latest when it opened; the same object or an older one,
   * never modified). */
  json_t *cp_last, *cp_prev;
  /* The task's children (src/ops/children.c); NULL until it spawns one. */
  struct apex__family *fam;
  /* What only a task that reports progress needs, kept here, not in the
   * run state, so a task that never reports (a pending deferred one) does
   * not pay for it. */
  apex_progress_t *last_progress; /* the last delivered (apex_task_progress) */
  int flush_queued;             /* (m->flush_mu) */
  apex_task_t *flush_next;      /* flush list (m->flush_mu) */
  apex_task_t *flush_work_next; /* the runtime thread's copy of it, while flushing */
  /* never-dropped updates (milestones, status changes), oldest first */
  apex_progress_t *backlog[APEX__PROGRESS_BACKLOG_MAX];
  unsigned n_backlog;
  /* Metrics (src/obs/metrics.h): reports and deliveries since the last
   * flush, and when the first of those reports came. */
  uint32_t mx_reports, mx_delivered;
  uint64_t mx_first_ns;
} apex__progress_slot_t;

/* An ATTEMPT, PROGRESS or RETRY event waiting for delivery. (DONE events
 * need no node: the terminal task itself is queued, see events.c.) */
struct apex__ev {
  apex__ev_t *next;
  apex_event_fn fn;
  void *user;
  apex_event_t ev; /* holds a ref on task, progress, error */
  uint64_t mx_at;  /* PROGRESS: when its first report came (src/obs/metrics.h) */
};

/* What fired when a task or one of its attempts timed out
 * (apex_error_timeout_kind names them). */
typedef enum apex__tmo_kind {
  APEX__TMO_NONE = 0,
  APEX__TMO_SCHEDULE_TO_CLOSE, /* the overall deadline (timeout_s) */
  APEX__TMO_SCHEDULE_TO_START, /* never started its first attempt in time */
  APEX__TMO_START_TO_CLOSE,    /* one attempt ran too long */
  APEX__TMO_HEARTBEAT          /* one attempt went too long without a heartbeat */
} apex__tmo_kind_t;

/* The schedule-to-start, start-to-close and heartbeat timeouts of a task
 * that has one of them (timeouts.c): allocated with its opts at submit, so
 * a task without them pays nothing. One timer per task, in m's timeout
 * heap, armed for the earliest of what is pending; a heartbeat only moves
 * hb_last, and the timer, when it goes off early, re-arms for what is due
 * then (task.c, apex__task_on_timeout). */
typedef struct apex__tmo {
  /* Immutable after submit. */
  apex_task_t *task;
  uint64_t s2s_ns, s2c_ns, hb_ns; /* 0: none */
  /* Task lock. */
  uint64_t s2s_at;  /* the first attempt must start by then; 0 once started */
  uint64_t att_at;  /* the open attempt's start-to-close deadline; 0: none */
  uint64_t hb_last; /* the open attempt's start or last heartbeat; 0: closed */
  /* The open attempt's token (a child of the task's): what its handler
   * waits on, so an attempt timeout cancels this attempt, not the task (a
   * retry gets a new one). Written under the task lock, read without it by
   * the ctx calls of the open attempt. NULL: the task's token serves. */
  _Atomic(apex_token_t *) tok;
  uint8_t att_kind; /* an attempt timeout fired; its end makes the outcome */
  uint8_t in_heap_reserved; /* holds one of m->theap_reserved (pool_mu) */
  /* pool_mu */
  uint32_t heap_idx; /* in m->theap; APEX__NOT_IN_HEAP: not armed */
  uint64_t due;      /* what it is armed for */
} apex__tmo_t;

/* A call's own retry policy (apex_submit_opts_t.retry), copied at submit
 * into the opts block it belongs to. */
typedef struct apex__own_retry {
  apex_retry_policy_t policy; /* policy.non_retryable points at codes */
  apex_status_t codes[APEX__MAX_NON_RETRYABLE];
} apex__own_retry_t;

/* Per-call options that differ from the action's and the manager's
 * defaults; allocated at submit only when a call sets one (most do not).
 * The few calls that set a retry policy carry it after the options (and
 * the timeouts' state) in the same block, so the block of every other
 * call, a child task's among them, is 112 bytes smaller: a fan-out of
 * children allocates that much less fresh memory per child
 * (bench/analysis.md, W11). */
typedef struct apex__task_opts {
  apex__own_retry_t *retry;  /* in the same block; NULL: the action's policy */
  apex_event_fn on_event;    /* overrides the manager's when set */
  void *event_user;
  uint64_t parent_cb_id;     /* callback on the token watching the parent, or 0 */
  /* A child task (src/ops/children.c): its node in the parent's family
   * (used until it ends: the family outlives every live child), the
   * parent's id, its depth (1 for a child of a host's task); capped: its
   * deadline is its parent's. */
  struct apex_child *child;
  uint64_t parent_id;
  uint8_t child_depth;
  uint8_t child_capped;
  apex__tmo_t *tmo;          /* in the same block; NULL: none of those timeouts */
  /* Scheduling (src/sched/): the task's class (fairness queue, priority,
   * concurrency key; NULL: its plugin's default), its start time (0: none)
   * and its place in the start heap (m->pool_mu). */
  apex__sclass_t *sc;
  uint64_t start_ns;
  uint32_t sheap_idx;
  /* This block is a class's own (sched.h): shared by the tasks whose only
   * options are scheduling ones, never freed with a task. */
  uint8_t shared;
  /* This block is a task slot (tmem.c), not malloc's: a plain block (no
   * timeouts' state, no retry policy of its own), a child task's among
   * them; apex__task_opts_free gives it back. */
  uint8_t in_slot;
  /* This block is a family's, shared by its plain children (ops/children.c,
   * apex__fam_opts_unref): shared is set too (never freed with a task, never
   * written after submit); each task that points here holds a count on it,
   * dropped last in its free, so a child task a host still holds after its
   * parent and family went reads valid opts. The task's node is
   * child_node, not child (NULL here). */
  uint8_t fam;
  /* The operation group it was submitted into (ops/group.c), or NULL, and
   * its index there (never in a shared block: a member has its own). The
   * task's membership holds a group reference until its terminal
   * transition hands it on (apex__group_member_end). */
  struct apex_group *group;
  size_t group_idx;
  /* Durable tasks (src/store/durable.h): set for a task journaled in the
   * manager's store, never in a shared block; NULL: not durable. */
  struct apex__dtask *durable;
} apex__task_opts_t;

/* t's node in its parent's family (src/ops/children.c) while t is a live
 * child, or NULL: not a child. Immutable after submit: no lock. */
static inline struct apex_child *apex__task_child(const struct apex_task *t);

/* t's timeouts block, or NULL (immutable after submit: no lock). */
#define apex__task_tmo(t) ((t)->opts ? (t)->opts->tmo : NULL)

/* What a task needs once its first attempt starts: taken then (by the
 * worker), so a queued task carries none of it, and given back as soon as
 * the task is terminal and no handler owns the ctx, unless the task
 * reported progress (last_progress stays readable, and the flush list may
 * still link it; it goes back with the task then).
 *
 * Run states are type-stable: one given back goes to its manager's list
 * of ended run states (m->runs_mu), oldest first, and is reused for a new
 * task only once more than APEX__RUNS_KEEP others wait there; past
 * APEX__RUNS_MAX the oldest is freed, and the manager frees the rest. So a
 * ctx's memory outlives its attempt, and a plugin's late call on it (a
 * second apex_ctx_complete, progress after it) finds attempt_open 0 and is
 * ignored (ctx.c) without touching the task, which may be gone. The head
 * fields (ctx.api, id, attempt_open) are what such a call reads: the api
 * table is its manager's and never changes, id finds the stripe lock,
 * attempt_open is checked under it. Kept to 104 bytes (malloc's 112-byte
 * class): with a task's 128 a pending deferred task costs 240 bytes, 232
 * in the one block a deferred action's task and run state share (task.c,
 * "deferred tasks' blocks"; W7 of bench/README.md); what only progress
 * needs is in the progress slot.
 * Other fields except the intrusive links are guarded by the task's
 * stripe lock. */
/* apex__run_t.attempt_open's values (0: no attempt open). */
enum { APEX__ATT_OPEN = 1, APEX__ATT_HELD = 2 };

typedef struct apex__run {
  apex_ctx_t ctx;          /* what handlers receive; ctx -> run -> task. Its
                              api is &m->api of the run state's manager for
                              its whole life: apex__run_m */
  _Atomic uint64_t id;     /* the task it serves (or served last) */
  /* A handler owns the ctx (running or pending): APEX__ATT_OPEN, or
   * APEX__ATT_HELD once its apex_ctx_complete was called and waits for
   * live children (children.c): still open for the attempt's end, but the
   * plugin's calls are refused as after complete (apex__run_lock_live).
   * Written under the task lock: APEX__ATT_OPEN with release order after
   * task and id, so a reader that sees it sees them too; read under the
   * lock, or with acquire by a call that takes no lock. */
  _Atomic int attempt_open;
  /* From here on, cleared for each task that takes the run state. */
  uint8_t stuck;           /* its worker was replaced after a timeout */
  /* The open attempt's on_cancel callback is running on some thread
   * (APEX__OC_BUSY; APEX__OC_WAITED: and a complete waits for it, on
   * m->wait_cv). Set and cleared under the task lock; the waiter reads it
   * under wait_mu (task.c, "cancel callbacks"). */
  _Atomic uint8_t oc_busy;
  /* The open attempt's cancel callback was taken to run: its cancellation
   * fired, with or without a token (a plain apex_task_cancel of a task
   * with none makes none: task.c, cancel_tokenless). Written under the
   * task lock; read without it by apex_ctx_is_cancelled. */
  _Atomic uint8_t oc_fired;
  /* A child family was made for it (ops/children.c, with prog->fam, under
   * the task lock): apex__family_settle, after every blocking handler,
   * takes the task lock to look for one only then. Read without a lock. */
  _Atomic uint8_t has_fam;
  uint32_t heap_idx;       /* retry heap slot (m->pool_mu); APEX__NOT_IN_HEAP: none */
  /* The open attempt's apex_ctx_retry_after hint, seconds (ctx.c), read by
   * apex__retry_next when the attempt fails; negative: none. Reset when an
   * attempt opens; task lock. A float, to fit the padding after heap_idx:
   * 24 bits of mantissa are 1 us at 16 s, 1 ms at 4 hours. */
  float retry_after_s;
  apex_task_t *task;
  json_t *attempt_result;
  apex_error_t *attempt_error;
  apex_error_t *result_refused; /* apex_ctx_set_result refused the value (ctx.c) */
  apex__progress_slot_t *prog;
  /* The open attempt's apex_ctx_on_cancel registration (task lock): NULL
   * none; once taken to run, a sentinel (task.c) so it runs once. */
  apex_ctx_cancel_fn oc_fn;
  /* One word for two lives that never overlap: oc_user while an attempt is
   * open, retry_at_ns while the task waits to retry (attempt closed). */
  union {
    void *oc_user;
    uint64_t retry_at_ns;
  };
  /* The live list (its task's stripe's, under that stripe lock) links run
   * states, not tasks; a run state leaves it when its task ends
   * (apex__pool_task_end, under the task lock), before the task lets the
   * run state go. Off it, an ended run state waits in m's list
   * (m->runs_mu) or a worker's (task.c) by free_next. */
  struct apex__run *live_prev;
  union {
    struct apex__run *live_next;
    struct apex__run *free_next;
  };
} apex__run_t;

/* Asks for the lines r's end will write (its live-list neighbours' links,
 * which apex__pool_task_end unlinks) while the caller still has other work
 * to do: with a million started tasks ended in random order those are
 * cache misses, and started together they overlap (W7 of bench/README.md).
 * Under the lock of r's task, which guards the live list: the links read
 * here are the ones the unlink will use. A hint only: nothing is read
 * through them. */
static inline void apex__run_prefetch_end(const struct apex__run *r) {
  if (r->live_prev) __builtin_prefetch(&r->live_prev->live_next, 1);
  if (r->live_next) __builtin_prefetch(&r->live_next->live_prev, 1);
}

#define APEX__OC_BUSY 1u
#define APEX__OC_WAITED 2u

/* Ended run states a manager keeps: none is reused before this many others
 * ended after it (the window in which a late ctx call is caught), and at
 * most APEX__RUNS_MAX are kept in the manager's list (112 bytes each); each
 * worker keeps up to APEX__RUNS_KEEP + 32 more of its own (task.c). */
#define APEX__RUNS_KEEP 256u
#define APEX__RUNS_MAX 4096u

/* A task. Queued, it is this much and nothing more (W5 of bench/README.md:
 * at most what a libuv uv_work_t costs): no token, params, run state or
 * event node until something needs them. Keep it at 120 bytes or less
 * (malloc's 128-byte class); a static assert in task.c holds the line. */
struct apex_task {
  uint64_t id;
  const apex__plugin_t *plugin;
  const apex_action_desc_t *action;
  /* Validated params with defaults; NULL for an action without params
   * called with none, until the handler asks (then {}): one object per task
   * that needs one, never one shared between tasks (jansson's reference
   * counts are not safe to share across threads). */
  _Atomic(json_t *) params;
  /* Made on first use (a cancel, a timeout, a cancellable wait, a parent):
   * most tasks never need one, and then cost no allocation for it. */
  _Atomic(apex_token_t *) token;
  /* NULL: all defaults; immutable after submit (but for the start heap's
   * index, under pool_mu); may be a scheduling class's shared block
   * (opts->shared) */
  const apex__task_opts_t *opts;
  apex__run_t *run;              /* NULL until the first attempt (task lock) */
  uint64_t deadline_ns;          /* 0: none */
  /* The scheduler's lists (m->pool_mu), while queued or parked; unused
   * once the task has ended (it leaves them under its lock, before its
   * state turns terminal). From its DONE's delivery on, the word may hold
   * err_view instead: APEX__ERROR_VIEW when the DONE handed out the task's
   * lazy error as a view (apex__task_done_error, core/error.h). */
  union {
    apex_task_t *run_next;
    atomic_uint err_view;
  };
  /* While in the scheduler (runnable or parked), its list's back link
   * (m->pool_mu: a task that ends there leaves at once,
   * apex__sched_remove_locked). Then the DONE queue's
   * link (m->ev_mu); once the DONE callback has returned,
   * APEX__DONE_DELIVERED, which apex_task_wait reads without a lock. A
   * sentinel in this link, not a flag of its own: the struct has no byte to
   * spare, and the link is never used again after delivery (DONE is queued
   * once). Atomic for that lock-free read; under ev_mu it is accessed
   * relaxed. */
  _Atomic(apex_task_t *) done_next;
  /* Its deadline list (m->pool_mu). Atomic (relaxed, plain moves) only so
   * that a task's end may read them early, without pool_mu, to prefetch
   * the neighbours its unlink will write (apex__task_prefetch_end).
   * A task that never joins a deadline list (no deadline of its own: none,
   * or a child's capped at its parent's) and whose opts are its family's
   * (opts->fam, ops/children.c) keeps its node in the family there
   * instead (child_node, written before the task is visible, immutable;
   * read through apex__task_child only): a child's opts block was a slot
   * of its own whose fields were all its family's but for the node
   * (bench/analysis.md, W11 of the eighth session). A prefetch through
   * it is a hint near the node, which the child's end writes anyway. */
  union {
    struct {
      _Atomic(apex_task_t *) tprev, tnext;
    };
    struct apex_child *child_node;
  };
  /* The outcome once terminal (task lock): result when succeeded, else
   * error. Until then, the word holds the submit time (ns, CLOCK_MONOTONIC
   * to a clock tick: ops/ops.c reports it as the operation's age), written
   * once before the task is visible and replaced by the outcome. */
  union {
    json_t *result;
    apex_error_t *error;
    uint64_t submitted_ns;
  } out;
  atomic_uint refs;
  uint32_t event_seq;  /* events made so far (task lock) */
  float timeout_s;     /* its deadline list's key (apex__timeout_ns) */
  uint16_t attempt;    /* attempts started (task lock; <= APEX__MAX_ATTEMPTS) */
  _Atomic uint8_t state; /* apex_task_state_t; changed under the task lock */
  uint8_t timer_flags; /* APEX__TIMER_* and APEX__SCHED_* (m->pool_mu) */
};

static inline struct apex_child *apex__task_child(const struct apex_task *t) {
  const apex__task_opts_t *x = t->opts;
  if (!x) return NULL;
  return x->fam ? t->child_node : x->child;
}

/* A lazy error: what a task's end stores in out.error instead of an error
 * that would say only what the task can tell again (a cancel's
 * "cancelled (CAUSE)" without the caller's own words, a handler's plain
 * APEX_E_CANCELLED with its status's sentence). The error is made on the
 * first read (apex__task_error: apex_task_error, the outcome's log line,
 * a read through the DONE's view), on the reading thread and hot in its
 * cache, and installed with a compare-and-swap so every reader gets the
 * one object; a task whose error nobody reads never makes it. So a queued
 * task's cancel allocates nothing, and a million cancelled pending tasks
 * carry no error each, nor make one at their DONE's delivery: the DONE
 * event carries a view of it (apex__task_done_error), which makes it only
 * when the host reads it. Tagged by the low bit (an
 * error is at least 2-aligned): kind in bits 1-7, its argument above. */
#define APEX__LAZY_STATUS 0u /* apex_strerror(-arg), code -arg */
#define APEX__LAZY_CANCEL 1u /* "cancelled (NAME)", NAME apex__cause_name(arg) */
static inline apex_error_t *apex__error_lazy(unsigned kind, unsigned arg) {
  return (apex_error_t *)(uintptr_t)(((uintptr_t)arg << 8) | ((uintptr_t)kind << 1) | 1u);
}
static inline int apex__error_is_lazy(const apex_error_t *e) { return ((uintptr_t)e & 1u) != 0; }

/* t->done_next once t's DONE callback has returned (see apex_task_wait). */
#define APEX__DONE_DELIVERED ((apex_task_t *)(uintptr_t)1)

/* Asks for the lines t's end will write in its deadline list (its
 * neighbours' links, which the unlink under pool_mu writes), as
 * apex__run_prefetch_end does for the live list. Any lock or none:
 * the links may change meanwhile, and a stale one only wastes the hint. */
static inline void apex__task_prefetch_end(const struct apex_task *t) {
  apex_task_t *p = atomic_load_explicit(&t->tprev, memory_order_relaxed);
  apex_task_t *n = atomic_load_explicit(&t->tnext, memory_order_relaxed);
  if (p) __builtin_prefetch(&p->tnext, 1);
  if (n) __builtin_prefetch(&n->tprev, 1);
}

/* A deferred action's task lives in a block with its run state, from a
 * slab of its manager (task.c, "deferred tasks' blocks"): the task at
 * APEX__BLK_TASK_OFF of an APEX__BLK_SIZE-byte block, the slab
 * APEX__BSLAB_SIZE bytes. */
#define APEX__BLK_TASK_OFF 8u
#define APEX__BLK_SIZE 232u
#define APEX__BSLAB_SIZE ((size_t)64 << 10)

/* Asks for every line of t and, if it is a deferred action's, of its run
 * state: what a cancel reads. With a million pending tasks cancelled in
 * random order each is a cache and TLB miss; asked for together they
 * overlap, where the reads themselves, with locked instructions between
 * them, would follow one another (W7 of bench/README.md). For a task of
 * another action the lines after it are a neighbour's: the hint is
 * wasted. Any lock or none; nothing is read. */
static inline void apex__task_prefetch_all(const struct apex_task *t) {
  const char *b = (const char *)t - APEX__BLK_TASK_OFF;
  for (unsigned at = 0; at < APEX__BLK_SIZE; at += APEX__CACHE_LINE) __builtin_prefetch(b + at, 1);
  __builtin_prefetch(b + APEX__BLK_SIZE - 1, 1);
}

#define APEX__NOT_IN_HEAP UINT32_MAX
#define APEX__DL_IDLE_MAX 16  /* idle deadline lists kept for reuse */
/* DISPATCH: how long the runtime thread leaves a due deadline to the host's
 * dispatch before it fires it itself. */
#define APEX__HOST_TIMER_GRACE_NS 1000000u
#define APEX__TIMER_DL_PINNED 0x1u  /* holds a pin on its deadline list */
#define APEX__TIMER_DL_LINKED 0x2u  /* is in that list (no reference: runtime.c) */
#define APEX__TIMER_RETRY_SLOT 0x4u /* holds one of m->heap_reserved */
/* Bits 3-7 of timer_flags say where in the scheduler a task waits
 * (APEX__SCHED_PLACE_*, sched.h): with the timer flags because the same
 * pool_mu section reads both when a task ends. */

/* The manager a task belongs to (through its plugin, which the manager
 * keeps until its own memory goes: a task is kept small). */
#define apex__task_m(t) ((t)->plugin->m)

/* A task's timeout in ns, from the float it keeps; submit computes the
 * deadline with it, so a task's list key and its deadline agree. */
static inline uint64_t apex__timeout_ns(float s) { return (uint64_t)((double)s * 1e9); }

/* The tasks with one timeout, in deadline order (see runtime.c); every
 * field under pool_mu. In three cache lines: what is read by both ends and
 * written only when the list is made or goes idle; the end that ends tasks
 * (the oldest first: a worker, the runtime thread) and the end that appends
 * them (a submit). With a backlog the two ends are different threads each
 * task, and one line for both was a miss in each one's pool_mu section
 * (bench/analysis.md, W1 of the ninth session). The count of pinned tasks
 * is pins - unpins (modulo 2^32), each written at its own end; it is read
 * whole only when the list is empty. */
typedef struct apex__dlist {
  _Alignas(APEX__CACHE_LINE) uint64_t key; /* the timeout in ns */
  struct apex__dlist *hnext; /* hash chain */
  uint8_t idle;              /* no task is pinned to it: one of m->dl_idle */
  _Alignas(APEX__CACHE_LINE) apex_task_t *head;
  uint32_t heap_idx;         /* in m->lheap while non-empty */
  uint32_t unpins;           /* pins given back */
  _Alignas(APEX__CACHE_LINE) apex_task_t *tail;
  uint32_t pins;             /* pins taken by tasks that may link here */
} apex__dlist_t;

/* Cache-line aligned (pool.c allocates it so): a worker writes its own
 * fields per task, and two workers' structs must not share a line. */
typedef struct apex__worker {
  _Alignas(APEX__CACHE_LINE) pthread_t thread;
  apex_manager_t *m;
  struct apex__worker *next;
  struct apex__worker *idle_next; /* m->idle_head's stack (m->pool_mu) */
  _Atomic uint32_t wake; /* futex: 0 while it sleeps idle, 1 to wake it (pool.c) */
  /* (m->pool_mu) The CPU it was on when it last went idle (sched_getcpu,
   * -1 unknown), and, while it is m->spinner, whether it has watched long
   * enough for the push it gets to be a sequential host's (pool.c,
   * near_idle_locked; the flag is set by its own thread without the lock). */
  int cpu;
  _Atomic int long_watch;
  /* A task a push picked for this worker while it was m->spinner (stored
   * under pool_mu, taken by this worker without it; pool.c, "hand-off"). */
  _Atomic(apex_task_t *) handoff;
  /* The task it took (popped, or handed over) until the section after its
   * run (m->pool_mu when set; read under it): a task between the queue and
   * the live list it joins at its first attempt is here, so a lookup by id
   * (src/ops/ops.c) that reads the scheduler and these in one pool_mu
   * section, then the live lists, cannot miss it. */
  _Atomic(apex_task_t *) holding;
  /* Run states its tasks gave back, oldest first (task.c, "run states"):
   * only this worker's thread touches the list; n_runs is atomic for
   * readers that count them (tests, under pool_mu). */
  struct apex__run *runs_head, *runs_tail;
  atomic_uint n_runs;
  int exited; /* (m->pool_mu) returned from its loop, ready to join */
  /* The manager's attempt and outcome counters (m->st_attempts, ...) for
   * what this worker's thread counts: written by that thread only (a
   * relaxed load and store, no atomic add), read under m->pool_mu and
   * added into m's at its exit (pool.c, apex__pool_count_attempt). */
  _Atomic uint64_t st_attempts;
  _Atomic uint64_t st_outcomes[4]; /* succeeded, failed, cancelled, timed out */
} apex__worker_t;

/* One lock stripe to a cache line: consecutive task ids, run by different
 * workers, take neighbouring stripes. */
typedef struct apex__stripe {
  _Alignas(APEX__CACHE_LINE) pthread_mutex_t mu;
  /* Run states of the started, not yet terminal tasks whose lock this is
   * (the live list destroy sweeps; pool.c), guarded by mu: a task joins
   * and leaves it under its own lock, which it holds then anyway. */
  struct apex__run *live_head;
} apex__stripe_t;

/* Fields the submitting thread writes and fields the workers write are on
 * separate cache lines, so a stream of submits does not bounce a line
 * between the host's core and the workers' (the manager is allocated
 * cache-line aligned). */
struct apex_manager {
  apex_manager_config_t cfg;
  apex__logger_t log;
  apex_host_api_t api;
  struct apex__mx *mx; /* operation metrics (src/obs/metrics.h); NULL: off */
  _Atomic int shutting_down;
  uint64_t flush_interval_ns;
  struct apex__tracer *tracer; /* NULL: tracing off (src/obs/trace.c) */
  apex__stripe_t stripes[APEX__LOCK_STRIPES];

  /* written by submitters (and by task_free for refs) */
  /* The destroyer's + one per task not yet freed + ref_bank. */
  _Alignas(APEX__CACHE_LINE) atomic_uint refs;
  /* The next task id, read by anyone. Written under pool_mu (the section
   * that queues the task, or one of its own: apex__pool_new_id), except on
   * a manager with a store, whose ids come from the store's blocks: there
   * it is only kept past every id given, by a CAS loop without pool_mu
   * (store/durable.c, saw_id), and pool.c never writes it (its tasks have
   * their id before they are queued). */
  atomic_uint_fast64_t next_id;
  atomic_uint_fast64_t st_submitted;
  /* The plugin the last submit named (registered, so it stays until the
   * manager goes): a submit naming it again needs no reg_mu. */
  _Atomic(apex__plugin_t *) last_plugin;

  /* registry */
  pthread_mutex_t reg_mu;
  apex__plugin_t **plugins;
  size_t n_plugins, cap_plugins;
  char **paths;
  size_t n_paths;

  /* worker pool: the scheduler and the workers (pool_mu). The submit path and the
   * workers' pops meet here and nowhere else: what a worker does around a
   * handler is under the task's lock and atomics, so it never delays a
   * submit. */
  /* The run queue (src/sched/), set at creation: not in pool_mu's line,
   * which every submit and pop writes, so a worker that ends a task can
   * read it (apex__sched_room_freed) without taking that line. */
  apex__sched_t *sched;
  _Alignas(APEX__CACHE_LINE) apex__lock_t pool_mu; /* spins, then sleeps (lock.h) */
  apex__worker_t *workers;
  /* Tasks picked for an inline start (apex__pool_start_inline) whose
   * starting thread has not yet given them back: between the pick and the
   * attempt's open a task is in neither the scheduler nor a live list, and
   * the ops walk (apex__pool_collect_held_locked) finds it here, as it
   * finds a worker's popped task in its holding word. A thread's node is
   * its own (pool.c, tls_hold): one inline start at a time per thread. */
  struct apex__inline_hold *inline_held;
  apex__worker_t *idle_head; /* idle workers, the latest first */
  unsigned n_threads;  /* worker threads alive */
  unsigned n_idle;     /* on the idle stack */
  /* The idle worker watching the queue before it sleeps (at most one), to
   * which a push hands the task it picks (pool.c); NULL: none. */
  apex__worker_t *spinner;
  unsigned n_stuck;
  /* Tasks submitted, ever: written under pool_mu only (a relaxed load
   * and store, no atomic add: the submit's section), read by anyone.
   * The live tasks (submitted, not terminal) are this less n_out
   * (apex__pool_n_live): so neither a submit nor a task's end writes the
   * other's line for the count. */
  atomic_size_t n_in;
  /* Manager references taken ahead for the tasks still to be submitted
   * (pool_mu): a submit's section takes its task's reference from here,
   * and adds APEX__REF_BATCH to refs when it is empty, so the submit makes
   * no atomic add on refs; teardown gives back what is left (no submit
   * takes one after shutting_down). */
  unsigned ref_bank;
  int pool_stop;

  /* Two counts in one word. The low 32 bits (apex__n_active_of): open
   * attempts (running or pending ctxs; an attempt that ends with its task
   * leaves it before the DONE event is queued), plus APEX__ORPHANED once
   * destroy gave up waiting for them: the close that leaves exactly
   * APEX__ORPHANED frees the manager. One word, so exactly one of destroy
   * and the last close sees the other. Seq_cst where it pairs with
   * sweeping (pool.c). Started tasks are on their stripes' live lists.
   * The high 32 bits: tasks that ended, ever, modulo 2^32 (n_out), raised
   * before the task's terminal state is published (apex__pool_task_end);
   * see n_in. A task's end that closes its attempt adds APEX__N_OUT_ONE - 1:
   * one atomic operation for both counts (the open attempts are at least
   * 1 then, so nothing borrows from n_out). */
  _Alignas(APEX__CACHE_LINE) _Atomic uint64_t n_active;
  atomic_int sweeping; /* destroy began: start no attempt */

  /* timers (pool_mu too: a submit queues the task and links its deadline
   * in one critical section): deadline lists and the retry heap */
  apex__dlist_t *dl_hash[64];
  apex__dlist_t *dl_last;   /* the list found last: usually the next one */
  uint32_t dl_idle;         /* lists no task is pinned to, kept for reuse */
  apex__dlist_t **lheap;    /* non-empty lists by head deadline */
  uint32_t lheap_len, lheap_n, lheap_cap; /* in the heap, lists, slots */
  apex_task_t **heap;       /* tasks waiting to retry, by retry time */
  uint32_t heap_len, heap_cap;
  uint32_t heap_reserved; /* slots promised to live tasks; <= heap_cap */
  uint64_t armed_at;   /* what the runtime's timer is armed for; 0 none */
  /* the timeouts heap (timeouts.c): one entry per task with a
   * schedule-to-start, start-to-close or heartbeat timeout armed */
  apex__tmo_t **theap;
  uint32_t theap_len, theap_cap, theap_reserved;

  /* events (ev_mu) */
  _Alignas(APEX__CACHE_LINE) apex__lock_t ev_mu; /* spins, then sleeps (lock.h) */
  apex__ev_t *ev_head, *ev_tail;
  int ev_fd;           /* DISPATCH: eventfd readable while events wait (-1 with ev_ticks) */
  int host_fd;         /* DISPATCH: epoll of ev_fd and host_timer_fd, or (ev_ticks) that
                        * timerfd itself */
  /* DONE events: the tasks themselves, dealt round the lanes in the order
   * they ended (push k goes to lane k % APEX__DONE_LANES), so a delivery
   * walks APEX__DONE_LANES chains side by side and can ask for a task's
   * lines that many deliveries before it reaches it (events.c). done_in
   * counts pushes (wrapping), done_n the tasks queued. */
  apex_task_t *done_head[APEX__DONE_LANES], *done_tail[APEX__DONE_LANES];
  uint32_t done_in, done_n;
  /* A signal is owed (written, or about to be) and not yet drained. Under
   * ev_mu; atomic for the ticks mode's re-raise after a timerfd_settime
   * under pool_mu (events.c, apex__events_timer_set). */
  atomic_int ev_fd_armed;
  /* DISPATCH: the host's fd is the host timer's timerfd, and an event
   * makes it readable with TFD_IOC_SET_TICKS (no epoll, no eventfd): set
   * once at init (events.c). */
  int ev_ticks;
  /* Ticks mode: the ioctl failed at run time (once set, the signal is the
   * timer expiring at once: events.c, raise_signal). */
  atomic_int ev_ticks_denied;

  /* progress flushing (flush_mu) */
  pthread_mutex_t flush_mu;
  apex_task_t *flush_head;
  uint64_t last_flush_ns;

  /* waiting on tasks */
  pthread_mutex_t wait_mu;
  pthread_cond_t wait_cv;
  atomic_uint waiters;

  /* runtime thread */
  pthread_t rt_thread;
  uv_loop_t loop;
  uv_async_t wake;
  int timer_fd;           /* timerfd for the heap's earliest entry */
  uv_poll_t timer_poll;   /* watches timer_fd on the loop */
  uint64_t timer_fd_at;   /* what timer_fd is armed for; 0: disarmed (pool_mu) */
  int host_timer_fd;      /* DISPATCH: the timerfd in the host's fd; else -1 */
  uint64_t host_timer_at; /* what host_timer_fd is armed for (pool_mu) */
  _Atomic uint64_t due_at; /* host_timer_at, for a lock-free "anything due?" */
  uv_timer_t flush_timer;
  _Atomic int rt_stop;
  /* Read by any thread (apex__on_runtime_thread, a wake-up); written at
   * start and by apex__runtime_stop, which destroy calls while host threads
   * may still wait on tasks. */
  _Atomic int rt_started;

  /* counters the workers and the runtime write */
  _Alignas(APEX__CACHE_LINE) atomic_uint_fast64_t st_succeeded, st_failed, st_cancelled,
      st_timed_out;
  atomic_uint_fast64_t st_attempts, st_retries;
  atomic_uint_fast64_t st_prog_reported, st_prog_delivered, st_prog_rejected, st_late;
  atomic_uint_fast64_t st_misuse; /* ctx calls after complete (also in st_late) */

  /* ended run states, oldest first (runs_mu, a leaf): see apex__run_t */
  _Alignas(APEX__CACHE_LINE) pthread_mutex_t runs_mu;
  apex__run_t *runs_head, *runs_tail;
  uint32_t n_runs;
  /* Deferred tasks' blocks (task.c, "deferred tasks' blocks"), runs_mu
   * too: the slabs' records, the unused ones, the slabs with a free
   * block, the one kept though empty, how many slabs; the ended run
   * states of blocks, oldest first (never reused; each lets its block go
   * past APEX__RUNS_KEEP). */
  struct apex__bslab *bslab_tab; /* the slabs' records (task.c), bslab_cap of them */
  uint32_t bslab_cap, bslab_unused; /* unused records' list: index + 1, 0 none */
  uint32_t bslabs, bslab_empty;     /* index + 1, 0 none */
  uint32_t n_bslabs;
  apex__run_t *bruns_head, *bruns_tail;
  uint32_t n_bruns;

  /* Durable tasks (src/store/durable.c): the store, owner and keeper of a
   * manager opened with config.store; NULL without one. Set before any
   * task exists, cleared at teardown. */
  struct apex__durable *dur;
};

/* The manager a run state belongs to: its ctx's api table is the
 * manager's own (apex__host_api_init into m->api), for the run state's
 * whole life, so this needs no field of its own and no task. */
static inline apex_manager_t *apex__run_m(const apex__run_t *r) {
  return (apex_manager_t *)(void *)((char *)(uintptr_t)r->ctx.api - offsetof(apex_manager_t, api));
}

/* 1 on m's runtime thread (LOOP-mode callbacks run there): what would
 * block it waits for the deadlines and retries only it fires. */
static inline int apex__on_runtime_thread(apex_manager_t *m) {
  return atomic_load_explicit(&m->rt_started, memory_order_relaxed) &&
         pthread_equal(pthread_self(), m->rt_thread);
}

/* tmem.c: a task's memory (a slot of the allocating thread's slab; calloc
 * and free in ASan builds). Returns: a zeroed task, or NULL on no memory.
 * Ownership: freed with apex__task_mem_free, from any thread. */
apex_task_t *apex__task_mem_new(void);
void apex__task_mem_free(apex_task_t *t);

/* A run of task frees on one thread (a delivery's batch of DONE events,
 * events.c): while it is open, each free of one of m's tasks owes its
 * manager reference, and its slab slot (tmem.c; consecutive slots of one
 * slab add up), to the batch instead of making an atomic subtraction of
 * its own; apex__free_batch_end gives them back, one subtraction for the
 * manager and one per run of slots of a slab; a deferred task's block goes
 * back to its slab with up to APEX__FREE_BATCH_BLKS others, under one
 * runs_mu section, not one each. A batch nests (a callback
 * that dispatches); it must not be open when m's last reference could go
 * otherwise (the caller holds one, or m's destroy waits for the caller).
 * Thread-safety: the calling thread's own (a thread-local names it). */
#define APEX__FREE_BATCH_BLKS 32u
typedef struct apex__free_batch {
  apex_manager_t *m;
  unsigned m_refs;  /* manager references owed */
  void *slab;       /* the slab of the slots owed (tmem.c), or NULL */
  uint32_t slots;   /* slots of that slab owed */
  struct apex__free_batch *outer;
  /* Deferred tasks' blocks whose last owner went (task.c), given back to
   * their slabs under one runs_mu section per APEX__FREE_BATCH_BLKS. */
  unsigned n_blks;
  void *blks[APEX__FREE_BATCH_BLKS];
} apex__free_batch_t;
void apex__free_batch_begin(apex__free_batch_t *b, apex_manager_t *m);
void apex__free_batch_end(apex__free_batch_t *b);
/* tmem.c: frees t's slot into b (owed until apex__task_mem_flush, or the
 * free of a slot of another slab), or at once where tasks are calloc'ed. */
void apex__task_mem_free_batched(apex_task_t *t, apex__free_batch_t *b);
void apex__task_mem_flush(apex__free_batch_t *b);

/* Frees a task's own opts block (not a class's shared one), where it came
 * from (in_slot). No lock. */
static inline void apex__task_opts_free(const apex__task_opts_t *x) {
  if (x->in_slot)
    apex__task_mem_free((apex_task_t *)(uintptr_t)x);
  else
    free((void *)(uintptr_t)x);
}

/* For tests: the count of t's slab (its slots not yet freed, + 1 while a
 * thread allocates from it); 0 where tasks are calloc'ed (ASan). */
uint32_t apex__task_mem_slab_live(const apex_task_t *t);
/* For tests: t's slab (tasks of one slab share it); NULL where tasks are
 * calloc'ed (ASan). */
const void *apex__task_mem_slab_of(const apex_task_t *t);

/* clock */
uint64_t apex__now_ns(void);
/* Returns: now + ms in ns of CLOCK_MONOTONIC, saturating at UINT64_MAX
 * ("never"), which is also what a negative ms gives. */
uint64_t apex__ns_after_ms(int64_t ms);

/* task.c */
/* A handle on a task of m that ended before this process knew it (a
 * durable task's row, src/store/durable.c): terminal in state, its DONE
 * counted as delivered, in no queue or list. Ownership: result and error
 * taken (result for succeeded, else error); the one reference is the
 * caller's handle. Returns: NULL on no memory (both then dropped). */
apex_task_t *apex__task_new_ended(apex_manager_t *m, const apex__plugin_t *p,
                                  const apex_action_desc_t *a, uint64_t id, int state,
                                  uint32_t attempts, json_t *result, apex_error_t *error);
/* A zeroed task of m for a submit of a: a deferred action's in one block
 * with its run state, from m's slabs (task.c, "deferred tasks' blocks");
 * freed by its last reference's drop. No lock held (takes runs_mu).
 * Returns: NULL on no memory. */
apex_task_t *apex__task_alloc(apex_manager_t *m, const apex_action_desc_t *a);
/* Frees t, from apex__task_alloc, never published (a refused submit:
 * t->action set, no reference taken, nothing of its own left but t).
 * No lock held. */
void apex__task_discard(apex_task_t *t);
/* The stripe lock guarding t's state (one of APEX__LOCK_STRIPES, by id). */
pthread_mutex_t *apex__task_mu(apex_task_t *t);
/* Reference counting; any lock or none. The unref that drops the last
 * reference frees t: never under t's own lock. */
void apex__task_ref(apex_task_t *t);
void apex__task_unref(apex_task_t *t);
/* Runs one attempt of t on the calling worker thread; no lock held on
 * entry (takes t's lock around the handler, never during it). Returns: 1
 * if the caller must finish tearing down an orphaned manager
 * (apex__manager_teardown). */
int apex__task_run(apex_task_t *t);
/* Ends t's open attempt with rc, from its worker, which holds the run
 * queue's reference on t until after this returns: the handler's return
 * (a deferred handler's that completed already is counted as misuse), or
 * a start destroy's sweep refused. Returns: as apex__task_run. */
int apex__task_attempt_end(apex_task_t *t, int rc);
/* Ends r's open attempt with rc, for apex_ctx_complete: r's task is
 * touched only once the attempt is found open under its lock. ask_family:
 * a deferred attempt that spawned children hands its complete to its
 * family (apex__family_defer_complete) while they are live (0: the family
 * itself runs the held complete). Returns: as apex__task_run; 0 for a
 * late call (counted and logged), a blocking handler's complete (logged)
 * or a complete the family holds. */
int apex__run_complete(apex__run_t *r, int rc, int ask_family);
/* Locks the stripe of the task r serves and returns that task if r's
 * attempt is open (the caller unlocks apex__task_mu of it); else returns
 * NULL with nothing locked, having touched no task. Any thread. */
apex_task_t *apex__run_lock_open(apex__run_t *r);
/* As apex__run_lock_open, for a plugin's ctx call: also NULL once the
 * attempt's complete was called and is held for its children
 * (APEX__ATT_HELD), which plugin.h makes such a call misuse. */
apex_task_t *apex__run_lock_live(apex__run_t *r);
/* Marks attempt att of task id as holding its complete (APEX__ATT_HELD),
 * if r still serves that attempt and it is open, and drops its cancel
 * callback unless it was taken to run; children.c, when the family takes
 * the complete. Any thread, no lock held. */
void apex__run_mark_held(apex__run_t *r, uint64_t id, uint32_t att);
/* A plugin called `what` on a ctx whose attempt had ended (apex__run_t):
 * counts it (late_reports and st_misuse) and logs it, at warn level the
 * 1st, 2nd, 4th, 8th... time so a plugin looping on a dead ctx cannot
 * flood the log. id: the task it names (r->id). Any thread, no lock. */
void apex__ctx_misuse(apex_manager_t *m, uint64_t id, const char *what);
/* apex_ctx_on_cancel for r's open attempt (task.c, "cancel callbacks").
 * Returns: APEX_OK (registered, or run at once: the cancellation fired
 * already); APEX_E_ALREADY (one registered before); APEX_E_INVALID after
 * complete (misuse, counted). */
int apex__run_on_cancel(apex__run_t *r, apex_ctx_cancel_fn fn, void *user);
/* Frees m's list of ended run states (the manager is going). */
void apex__runs_free(apex_manager_t *m);
/* On worker w of m: gives the run states it keeps (task.c) to m's list;
 * before the worker exits. */
void apex__runs_flush_local(apex_manager_t *m, apex__worker_t *w);
/* Accepts a validated full progress report from the plugin (ctx.c) for
 * r's open attempt: it replaces the task's progress state, details and
 * sub_tasks merged in (only what differs is copied). Returns APEX_OK (also
 * for a late report, ignored and counted: after a timeout or cancel; after
 * complete, as misuse) or APEX_E_NOMEM. msg_len is strlen(msg) (0 for
 * NULL), which the caller measured already. Ownership: all borrowed (the
 * JSON is the plugin's: read under the task's lock, never kept). */
int apex__task_report(apex__run_t *r, double pct, const char *msg, size_t msg_len,
                      const char *status, const json_t *details, const json_t *sub_tasks);
/* Accepts a validated node update (apex_ctx_progress_node) for r's open
 * attempt: sub-task `index` of the task's tree, or its own figures for
 * APEX_PROGRESS_ROOT; status and msg NULL keep what is there. Returns: as
 * apex__task_report, plus APEX_E_INVALID (nothing changed, nothing
 * counted) if index names no sub-task, with the tree's size in *n_nodes.
 * Ownership: strings copied. */
int apex__task_report_node(apex__run_t *r, size_t index, double pct, const char *status,
                           const char *msg, size_t msg_len, size_t *n_nodes);
/* Makes t terminal with state/error unless it already is. Returns 1 if this
 * call did it. Takes no lock on entry; error taken. */
int apex__task_finish(apex_task_t *t, apex_task_state_t state, apex_error_t *error);
/* t's deadline passed / its retry time came (runtime thread, or the host's
 * in DISPATCH mode). No lock held on entry; each takes t's lock. */
void apex__task_on_deadline(apex_task_t *t);
void apex__task_on_retry(apex_task_t *t, uint64_t now);
/* t's start time came (the start heap gave it up, with its reference,
 * which this drops): a scheduled task becomes queued. No lock held on
 * entry; takes t's lock, then pool_mu (sched.c). */
void apex__task_on_start(apex_task_t *t);
/* Delivers t's pending progress (runtime thread or a finishing thread). No
 * lock held on entry; takes t's lock. */
void apex__task_flush_progress(apex_task_t *t);
/* Returns: t's token, made on first use; NULL only on no memory. A token
 * made after its open attempt was cancelled without one is born cancelled
 * ("user"). Takes t's lock when it makes one: never call it under it. */
apex_token_t *apex__task_token(apex_task_t *t);
/* Returns: t's token if it has one yet, else NULL (never allocates). */
static inline apex_token_t *apex__task_token_peek(apex_task_t *t) {
  return atomic_load_explicit(&t->token, memory_order_acquire);
}
/* Returns: t's outcome error (t terminal, not succeeded), made now if its
 * end left it lazy (APEX__LAZY_*; the static out-of-memory error if that
 * fails). Borrowed: t's own, valid while t is. Any thread, any lock (it
 * takes none; it may allocate). */
apex_error_t *apex__task_error(apex_task_t *t);
/* Returns: the error t's DONE event carries (t terminal, not succeeded):
 * t's outcome error if it is made; else, made lazy, a view of it (the
 * word t->err_view set to APEX__ERROR_VIEW, core/error.h) that the public
 * apex_error_* functions read through apex__task_error, so the delivery
 * makes and frees nothing for a host that does not read it. Borrowed: valid
 * while t is (a ref of a view holds t). The DONE's delivery only: t is
 * off the scheduler's lists for good, so err_view's word is free. */
const apex_error_t *apex__task_done_error(apex_task_t *t);
/* Why Apex cancels a task. Every decision is made on this, never on the
 * reason text, which a host (apex_task_cancel) or a parent token supplies
 * and which is only the text handlers and errors show. */
typedef enum apex__cause {
  APEX__CAUSE_USER,     /* apex_task_cancel */
  APEX__CAUSE_PARENT,   /* its token fired from outside Apex: a parent token, or
                           the host through apex_task_token */
  APEX__CAUSE_SHUTDOWN, /* destroy's sweep: ends it at once, running or not */
  APEX__CAUSE_TIMEOUT   /* its deadline (apex__task_on_deadline ends it) */
} apex__cause_t;
/* Returns: "user", "parent", "shutdown" or "timeout". Static. */
const char *apex__cause_name(apex__cause_t cause);
/* Cancels t for cause, with reason as the token's text (NULL: the cause's
 * name). A queued or retry-waiting task ends at once; a running one only
 * for APEX__CAUSE_SHUTDOWN (else its handler, signalled by the token, ends
 * it). Returns: APEX_OK; APEX_E_ALREADY if its token had fired already;
 * APEX_E_NOMEM if no token could be made for a running task (nothing was
 * signalled; a task this call ended is APEX_OK). Takes no lock on entry. */
int apex__task_cancel(apex_task_t *t, apex__cause_t cause, const char *reason);

/* ctx.c: the host services table handed to plugins. */
void apex__host_api_init(apex_host_api_t *api);

/* pool.c */
int apex__pool_start(apex_manager_t *m, unsigned n);
/* Queues t again for a retry (taking a reference); a no-op once the pool
 * is stopping. Under t's task lock, so an end that comes first finds it
 * either counted queued or not yet queued. */
void apex__pool_push(apex_manager_t *m, apex_task_t *t);
/* Returns: the live tasks (submitted, not terminal): exact under pool_mu,
 * else a count that was true at some moment during the call or, with a
 * submit racing it, one more. Any thread. */
static inline size_t apex__pool_n_live(apex_manager_t *m) {
  /* n_out first: it never passes n_in, which only grows. Modulo 2^32:
   * fewer than 2^32 tasks are ever live at once (512 GiB of them). */
  uint32_t out = (uint32_t)(atomic_load(&m->n_active) >> 32);
  return (uint32_t)((uint32_t)atomic_load(&m->n_in) - out);
}
/* Counts a new task live, binds it to its scheduling class (req: what the
 * submit asked for, NULL: defaults), queues it (or, with a start time in
 * t->opts, puts it in the start heap; taking a reference either way) and
 * links its deadline (deadline != 0), reserving a retry slot if it may
 * retry, all in one pool_mu section: a task is queued with its timers or
 * not at all. On success the task also holds its manager reference (from
 * ref_bank) and has an id (the next one, if t->id was 0); on failure it
 * holds neither a reference nor an id it did not have. A bound reached
 * with req->wait_ms != 0 waits for room (the caller checked it is no Apex
 * thread). picked (non-NULL only when apex__pool_may_inline(t)): set to 1
 * when nothing else was runnable and the scheduler's pick in the same
 * section is t, whose scheduler reference then goes to the caller for
 * apex__pool_start_inline; 0 else.
 * Returns: APEX_OK, APEX_E_SHUTTING_DOWN, APEX_E_QUEUE_FULL (checked under
 * pool_mu, race-free against destroy; why says which bound), APEX_E_NOMEM. */
int apex__pool_submit(apex_manager_t *m, apex_task_t *t, int deadline, int retry,
                      const apex__sched_req_t *req, char *why, size_t why_len, int *picked);
/* 1 if t, being submitted on this thread, may start here rather than on a
 * worker: its action is deferred and flagged APEX_ACTION_F_START_INLINE,
 * the task is neither durable nor scheduled for later, and this thread is
 * no worker and not inside such a start already. Any lock or none. */
int apex__pool_may_inline(const apex_task_t *t);
/* Starts t's first attempt on this thread, as a worker would have: t was
 * picked for it by apex__pool_submit (*picked), whose reference this
 * takes. No lock held; the submit is done with t but for returning it. */
void apex__pool_start_inline(apex_manager_t *m, apex_task_t *t);
/* The next task id, for a submit that needs its task's id before
 * apex__pool_submit (a scheduled task's lock, the span of a traced task
 * that joins a trace context). Takes pool_mu. */
uint64_t apex__pool_new_id(apex_manager_t *m);
/* Gives back the manager references ref_bank holds: teardown, when no
 * submit takes one any more. Under pool_mu; the caller still holds its own
 * reference, so the count does not reach zero here. */
void apex__pool_refs_return_locked(apex_manager_t *m);
/* The references on m held by tasks not yet freed, or by the host's
 * handles on them (refs less the destroyer's and ref_bank's). Takes
 * pool_mu. For tests. */
unsigned apex__manager_task_refs(apex_manager_t *m);
/* t ends: it leaves every count it is in, before its terminal state is
 * published, so a host that sees the state (or the DONE event) finds the
 * counters settled and room for a resubmit under max_queued: the queued
 * count (if still queued), its timers, the live count, the live list (if
 * started) and, with closing (its attempt ends with it), the open
 * attempts. Wakes destroy when a count it waits for reaches zero. Under
 * the task lock (takes pool_mu, wait_mu, one at a time). */
void apex__pool_task_end(apex_manager_t *m, apex_task_t *t, int closing);
/* A task that ends while it waits in the scheduler (runnable, parked on a
 * concurrency limit or a rate, scheduled) leaves it here, through
 * apex__sched_remove_locked (sched/sched.h): the one way out, O(1), no
 * allocation, for cancel, the overall deadline, shutdown and the
 * schedule-to-start timeout alike. A path that ends a waiting task calls
 * apex__task_finish or apex__task_cancel and gets it through this; only
 * code already under pool_mu calls apex__sched_remove_locked itself. */
/* Destroy: up to max tasks still waiting in the scheduler (runnable,
 * parked on a limit or a rate, or scheduled), each with a new reference,
 * for the caller to cancel ("shutdown"); 0 once none waits. Takes pool_mu. */
size_t apex__pool_collect_waiting(apex_manager_t *m, apex_task_t **out, size_t max);
/* Under pool_mu: a reference on each task a worker holds between the
 * queue and its run's end (apex__worker_t.holding) that has not ended,
 * at most max in out.
 * Returns how many are held (more than max: the caller retries bigger). */
size_t apex__pool_collect_held_locked(apex_manager_t *m, apex_task_t **out, size_t max);
/* A submit whose try found no room (t bound to its class by that try)
 * waits until room may have come, a wake-up, destroy, or until (monotonic
 * ns; UINT64_MAX: no limit). No lock held; takes pool_mu. */
void apex__pool_await_room(apex_manager_t *m, apex_task_t *t, uint64_t until);
/* Wakes idle workers for what is runnable now (a limit raised, a rate's
 * token or a start time due). No lock held; takes pool_mu. */
void apex__pool_poke(apex_manager_t *m);
/* A running task timed out: its worker may be stuck; start a replacement.
 * No lock held on entry; takes pool_mu. */
void apex__pool_worker_stuck(apex_manager_t *m);
/* Counts one more stuck handler; under the task lock that set t->stuck. */
void apex__pool_count_stuck(apex_manager_t *m);
/* Uncounts one: a stuck attempt (an attempt timeout marked it) ended
 * without apex__pool_attempt_close. No lock held; takes pool_mu. */
void apex__pool_uncount_stuck(apex_manager_t *m);
/* From complete() on a worker of m: have the worker tear m down once its
 * handler returned. Returns 1 if deferred, 0 if not a worker of m. No lock
 * (thread-local state). */
int apex__pool_defer_teardown(apex_manager_t *m);
/* The calling thread's worker struct if it is one of m's workers, else
 * NULL. */
apex__worker_t *apex__pool_self(const apex_manager_t *m);
/* Stops and joins every worker (after the queue is empty). No lock held on
 * entry; takes pool_mu, and joins with none held. */
void apex__pool_stop(apex_manager_t *m);
/* An attempt opened/closed (counts handlers that own a ctx); on the first
 * attempt (first != 0) t's run state joins the live list destroy sweeps
 * (apex__pool_task_end takes it off). Open is called under the task lock.
 * Close is for an attempt that does not end its task: one that ends in a
 * retry (under the task lock) or one that ends after its task did (a late
 * one, without it); an attempt that ends its task closes in
 * apex__pool_task_end. Returns (open): 1 if destroy has begun, and then the
 * caller must not run the handler: it ends the attempt as cancelled
 * ("shutdown"). Returns (close): 1 if this was the last handler of an
 * orphaned manager: the caller must then tear m down
 * (apex__manager_teardown) once it no longer touches m. */
int apex__pool_attempt_open(apex_manager_t *m, apex_task_t *t, int first);
int apex__pool_attempt_close(apex_manager_t *m, apex_task_t *t, int was_stuck);
/* Counts an attempt started (m->st_attempts) / a task ended in state (a
 * terminal apex_task_state_t: m->st_succeeded, ...): on a worker of m in
 * that worker's own counters, with no atomic add on a line both workers
 * write; elsewhere in m's. Any thread, any lock. */
void apex__pool_count_attempt(apex_manager_t *m);
void apex__pool_count_outcome(apex_manager_t *m, int state);
/* Under pool_mu: the attempts (which < 0) or the outcomes in state
 * (apex_task_state_t) counted so far, m's counters and its workers'. */
uint64_t apex__pool_stat_locked(apex_manager_t *m, int state);

/* manager.c */
/* Stops threads, unloads plugins when can_unload (0 when the caller is a
 * plugin's own thread, finishing the last task of an orphaned manager: it
 * may still be inside the plugin), frees queues, and drops the destroyer's
 * reference. Takes no lock on entry; called once per manager, by destroy,
 * a failed apex_manager_new, or the last handler of an orphaned manager. */
void apex__manager_teardown(apex_manager_t *m, int can_unload);
void apex__manager_unref(apex_manager_t *m);
/* Drops n references on m at once (n > 0). */
void apex__manager_unref_n(apex_manager_t *m, unsigned n);

/* runtime.c */
/* Starts / stops (joins) the runtime thread; from apex_manager_new and
 * destroy/teardown, no lock held. Returns (start): APEX_OK or APEX_E_IO. */
int apex__runtime_start(apex_manager_t *m);
void apex__runtime_stop(apex_manager_t *m);
/* Wakes the runtime thread (uv_async_send): any thread, any lock held. */
void apex__runtime_wake(apex_manager_t *m);
/* Under pool_mu, at submit: pins t's deadline list (deadline) and reserves
 * a retry heap slot (retry), so arming either later never allocates; all
 * or nothing. Returns: APEX_OK, APEX_E_NOMEM. */
int apex__timer_reserve_locked(apex_manager_t *m, apex_task_t *t, int deadline, int retry);
/* Under pool_mu: the timers go off at `at` or earlier (the scheduler's
 * rate tokens and start times use it). */
void apex__timer_earlier_locked(apex_manager_t *m, uint64_t at);
/* Under pool_mu: links t into its pinned deadline list (the list holds no
 * reference: runtime.c), arming the timers if it is now the earliest. */
void apex__deadline_link_locked(apex_manager_t *m, apex_task_t *t);
/* Arms t's retry for run->retry_at_ns (taking a reference) in the slot
 * its submit reserved. Under the task lock. Returns: APEX_OK; APEX_E_NOMEM
 * if t holds no reserved slot (a broken invariant: nothing is written). */
int apex__retry_arm(apex_manager_t *m, apex_task_t *t);
/* Under pool_mu: disarms both and frees what t reserved; once, when t
 * ends. Returns the references the caller drops (after unlocking; the
 * caller holds another, so they never free t). */
unsigned apex__timer_release_locked(apex_manager_t *m, apex_task_t *t);
/* Puts t on the flush list (once) and wakes the runtime thread if the list
 * was empty. Not under t's lock (takes flush_mu, then no other). */
void apex__flush_request(apex_manager_t *m, apex_task_t *t);
/* DISPATCH mode, on the host's thread: fires the deadlines and retries now
 * due, if any. */
void apex__timers_fire(apex_manager_t *m);

/* timeouts.c: the schedule-to-start, start-to-close and heartbeat timer of
 * each task that has one (apex__tmo_t), in a heap of its own under
 * pool_mu; the runtime thread fires it with the deadlines (runtime.c). */
/* Resolves the three timeouts of a submit into ns[] (schedule-to-start,
 * start-to-close, heartbeat; 0: none): the call's value, or the action's
 * default for 0; a negative call value means none. Returns: APEX_OK;
 * APEX_E_INVALID with why naming the field (NaN, infinite, above 1e9). */
int apex__tmo_resolve(const apex_action_desc_t *a, const apex_submit_opts_t *o, uint64_t ns[3],
                      char *why, size_t why_len);
/* Fills t's timeouts block from ns[] at submit time now; the
 * schedule-to-start clock starts at o's start time (run_after_s, run_at)
 * when it is later. */
void apex__tmo_init(apex__tmo_t *tmo, apex_task_t *t, const uint64_t ns[3], uint64_t now,
                    const apex_submit_opts_t *o);
/* Submit: reserves t's heap slot (before it is queued) / arms its
 * schedule-to-start timer (after; a no-op if it started or ended
 * meanwhile) / gives the slot back (a submit that failed). No lock held;
 * armed takes t's lock, the others pool_mu. */
int apex__tmo_reserve(apex_manager_t *m, apex__tmo_t *tmo);
void apex__tmo_submitted(apex_manager_t *m, apex_task_t *t);
void apex__tmo_unreserve(apex_manager_t *m, apex__tmo_t *tmo);
/* Under pool_mu: arms tmo for at, unless armed for that or earlier. */
void apex__tmo_arm_locked(apex_manager_t *m, apex__tmo_t *tmo, uint64_t at);
/* Under pool_mu: disarms tmo and gives its slot back (t ends). */
void apex__tmo_release_locked(apex_manager_t *m, apex__tmo_t *tmo);
/* Under pool_mu: the earliest armed time, 0 for none. */
uint64_t apex__tmo_next_locked(apex_manager_t *m);
/* Under pool_mu: takes the earliest entry due by now out of the heap and
 * returns its task with a reference for the caller; NULL if none is due. */
apex_task_t *apex__tmo_pop_due_locked(apex_manager_t *m, uint64_t now);
/* Frees m's heap (teardown). */
void apex__tmo_fini(apex_manager_t *m);
/* runtime.c: under pool_mu, at (just armed) is due before anything armed:
 * arms the timers for it. */
void apex__timer_earlier_locked(apex_manager_t *m, uint64_t at);

/* task.c: t's timeouts timer went off (runtime thread, or the host's in
 * DISPATCH mode): ends it (schedule-to-start), times its attempt out
 * (start-to-close, heartbeat) or re-arms for what is due later. No lock
 * held on entry. */
void apex__task_on_timeout(apex_task_t *t, uint64_t now);
/* The token the open attempt's handler waits on: its attempt token when
 * it has one (apex__tmo_t.tok), else the task's (peek: NULL if none yet;
 * get: made on first use, NULL on no memory; never under t's lock). */
apex_token_t *apex__ctx_token_peek(apex_task_t *t);
apex_token_t *apex__ctx_token(apex_task_t *t);
/* apex_ctx_heartbeat for r's open attempt: details (validated, borrowed;
 * NULL: none) kept as its latest, a HEARTBEAT event made due. Returns:
 * APEX_OK (also when late, ignored); APEX_E_INVALID after complete
 * (misuse); APEX_E_NOMEM. */
int apex__run_heartbeat(apex__run_t *r, const json_t *details);
/* apex_ctx_heartbeat_details: the last details an earlier attempt
 * recorded, borrowed (immutable while this attempt is open), or NULL. */
json_t *apex__run_heartbeat_details(apex__run_t *r);

/* partial.c: partial results (apex_ctx_partial_result).
 * apex__run_partial: keeps v (checked against the value limits, borrowed;
 * NULL clears) as the task's latest partial and makes a PARTIAL event due.
 * Returns: APEX_OK (also when late, ignored); APEX_E_INVALID after complete
 * (misuse); APEX_E_NOMEM (nothing kept). No lock held. */
int apex__run_partial(apex__run_t *r, const json_t *v);
/* Pushes the PARTIAL event due (s->partial_dirty), if t's host wants it.
 * Under t's lock; s is t's progress slot. */
void apex__partial_flush_locked(apex_task_t *t, apex__progress_slot_t *s);
/* Returns: e, t's outcome error, carrying t's last partial result if it
 * has one (apex__error_with_partial). Under t's lock, from finish_locked.
 * Ownership: e taken, the result returned. */
apex_error_t *apex__partial_attach_locked(apex_task_t *t, apex_error_t *e);
/* Frees the partial-result buffers of a slot being freed. */
void apex__partial_free(apex__progress_slot_t *s);

/* events.c */
/* Makes / frees the DISPATCH fds and the queues; from apex_manager_new and
 * teardown, no lock held. Returns (init): APEX_OK or APEX_E_IO. */
int apex__events_init(apex_manager_t *m);
/* DISPATCH: makes the host's fd readable when timer_fd is too. */
int apex__events_watch_timer(apex_manager_t *m, int timer_fd);
/* DISPATCH in ticks mode: the timerfd the runtime arms as the host's timer
 * (owned by events.c, closed by apex__events_fini); -1 otherwise (the
 * runtime makes its own and watches it). */
int apex__events_timer_fd(const apex_manager_t *m);
/* Under pool_mu, after a timerfd_settime of the host's timer: in ticks
 * mode the call zeroed the ticks, so a signal owed is raised again. */
void apex__events_timer_set(apex_manager_t *m);
/* Tests: 1 makes managers made from now on use the epoll of an eventfd
 * and the timerfd even where the ticks mode works. */
extern int apex__events_no_ticks;
void apex__events_fini(apex_manager_t *m);
/* 1 if an event of type should be made for t. Reads only what is
 * immutable after submit: any lock or none. */
int apex__events_wanted(apex_manager_t *m, apex_task_t *t, apex_event_type_t type);
/* 1 if apex_task_wait on t waits for t's DONE callback to return, not only
 * for its terminal state: LOOP mode, and t's callback wants DONE. */
int apex__events_wait_done(apex_manager_t *m, apex_task_t *t);
/* Queues an event node (it holds a task reference, see apex__ev_new).
 * Under t's lock, so a task's events keep the order of its state changes;
 * takes ev_mu (a leaf). */
void apex__events_push(apex_manager_t *m, apex__ev_t *node);
/* Queues t's DONE event (taking a task reference). Under the task lock,
 * once, when t became terminal. */
void apex__events_push_done(apex_manager_t *m, apex_task_t *t);
/* The same, with a reference the caller hands over instead of a new one. */
void apex__events_push_done_owned(apex_manager_t *m, apex_task_t *t);
/* The event callback and its user pointer for t (immutable: no lock). */
apex_event_fn apex__task_event_fn(const apex_task_t *t, void **user);
/* Makes an ATTEMPT, PROGRESS or RETRY node for t with the next seq (taking
 * a task reference); NULL on no memory. Under t's lock. */
apex__ev_t *apex__ev_new(apex_task_t *t, apex_event_type_t type);
/* apex_manager_dispatch: fires the timers now due (DISPATCH mode), then
 * delivers every waiting event on the calling thread. Returns the count. */
int apex__events_dispatch(apex_manager_t *m);
/* Delivers every waiting event on the calling thread; marks each DONE's
 * task delivered (APEX__DONE_DELIVERED) once its callback returned, and in
 * LOOP mode wakes apex_task_wait callers then. Returns the count. */
int apex__events_deliver(apex_manager_t *m);
/* Frees a node and drops what it holds (the last task reference may go):
 * no lock held. */
void apex__ev_free(apex__ev_t *node);

/* retry.c */
/* Returns: the retry policy t follows: the call's copy (t->opts) or the
 * action's default. Borrowed, immutable after submit; no lock needed. */
const apex_retry_policy_t *apex__retry_policy(const apex_task_t *t);
/* Returns: 1 and *delay_s if t's current attempt, failing with code, may
 * be retried under its policy, else 0. The delay is the policy's backoff,
 * or the attempt's apex_ctx_retry_after hint when it gave one (which
 * replaces it). Under the task lock (reads t->attempt and t->run). */
int apex__retry_next(const apex_task_t *t, int code, double *delay_s);
/* The same for an attempt that timed out (start-to-close, heartbeat):
 * retried like a transient failure unless the policy lists APEX_E_TIMEOUT
 * as non-retryable. */
int apex__retry_next_timeout(const apex_task_t *t, double *delay_s);

/* src/ops/children.c: child tasks and their hooks here. */
#include "ops/children.h"
/* src/store/durable.h: durable tasks' hooks here. */
#include "store/durable.h"

#endif
