/* Internal: child tasks (src/ops/children.c) and the narrow hooks the
 * execution engine (src/exec/) calls into them. */
#ifndef APEX_OPS_CHILDREN_H
#define APEX_OPS_CHILDREN_H

#include <stdint.h>

#include "apex/apex.h"

struct apex__run;
struct apex__task_opts;
typedef struct apex__family apex__family_t;

/* What makes a submit a spawn (manager.c, apex__submit). */
typedef struct apex__spawn_info {
  struct apex_child *node; /* the child's node in its parent's family */
  uint64_t parent_id;
  uint8_t depth;           /* the child's: parent's + 1 */
  uint64_t cap_ns;         /* the parent's deadline (CLOCK_MONOTONIC ns), 0: none */
  /* The family's shared token, which the child carries as its own until
   * it needs one (apex__task_token); submit takes a reference, unless
   * tok_taken is set: the family paid the child's from its batch, and
   * submit writes 1 there once the task holds it (a submit refused before
   * that leaves it 0: the family takes the reference back). */
  apex_token_t *tok;
  int *tok_taken;
  /* The family's opts blocks for its plain children ([0]: no deadline,
   * [1]: capped at the parent's), or NULL; a child whose options are all
   * its family's (no submit options, timeouts, key hook or store: see
   * resolve_opts) points at one instead of an opts slot of its own, and
   * keeps the count on it the family paid (the caller gives it back when
   * the child's opts are not these: opts->fam). */
  const struct apex__task_opts *fo;
} apex__spawn_info_t;

/* apex__submit (ops/ops.h) takes an apex__spawn_info_t for a child. */

/* ctx.c: fills the child-task members of the host table. */
void apex__children_api_init(apex_host_api_t *api);

/* task.c hooks. */
/* The last read of x, a family's opts block (opts->fam) or NULL, by the
 * task that pointed at it (task_free): drops its count; the block goes
 * with the last. Any thread, no lock. */
void apex__fam_opts_unref(const struct apex__task_opts *x);
/* The parent task is freed: frees its family (every child ended by then:
 * the family holds a parent reference while one is live). No lock. */
void apex__family_free(apex__family_t *f);
/* Child t delivered snap (under t's lock): its node keeps it, and the
 * parent's next delivery rolls it up (the parent is queued for one). */
void apex__child_delivered(apex_task_t *t, apex_progress_t *snap);
/* Child t ended (after its DONE was queued; no lock): wakes its parent's
 * waits, runs its end callback, and once the last live child ended, what
 * waited for that (a deferred deadline, a deferred complete). */
void apex__child_ended(apex_task_t *t);
/* Under the parent's lock, its deadline passed: returns 1 if children are
 * live (the timeout then waits for them: the caller cancels the attempt's
 * token and returns; the last child's end fires the deadline again). */
int apex__family_hold_deadline(apex__family_t *f);
/* After apex__family_hold_deadline held the parent's deadline (no lock):
 * ends the live children whose deadline is the parent's (capped: they
 * have no timer of their own) as their own deadline would have, at once
 * even while running (apex__task_on_deadline: "cancelled (parent)"), and
 * marks the family so a child whose spawn returns later is ended too. */
void apex__family_deadline(apex__family_t *f);
/* 1 (and clears it) if a child delivered since the last call: the parent's
 * flush then makes a new snapshot. Any lock. */
int apex__family_take_dirty(apex__family_t *f);
/* Under the parent's lock, making a snapshot: rolls its children into
 * *pct, appends them to *subs (made if NULL) and counts them in *details
 * (made if NULL) (see apex_ctx_children_own_weight). Returns: APEX_OK or
 * APEX_E_NOMEM (the snapshot then goes without them). */
int apex__family_rollup(apex__family_t *f, double own_pct, double *pct, json_t **subs,
                        json_t **details);
/* A blocking handler of t returned (worker, no lock): cancels t's live
 * children (reason "parent") and waits for them to end. */
void apex__family_settle(apex_task_t *t);
/* apex_ctx_complete on r (no lock): returns 1 if children are live; they
 * are cancelled, and the completion with rc happens once the last ended. */
int apex__family_defer_complete(struct apex__run *r, int rc);

#endif
