/* Internal: durable tasks in the manager (docs/store.md). What a manager
 * opened with a store does with it: journal the durable tasks (their row
 * at submit, each attempt's claim, checkpoints, the outcome), hold their
 * rows (an owner id, leases renewed by a keeper thread, an owner lock
 * file for an SQLite store), act on cancel requests other processes make,
 * and recover what a dead process left (apex_manager_recover).
 *
 * A manager without a store never calls into this file but for one
 * branch on m->dur at submit; a task that is not durable never calls into
 * it but for one branch on t->opts (NULL for most tasks) at its attempt's
 * start and end.
 *
 * Threads: the hooks run on the thread of the event they journal (the
 * submitting thread, the worker, the thread that ends the task); writes
 * that must be durable before what follows (a submit's row, the claim and
 * outcome of an action that is neither idempotent nor resumable, a
 * checkpoint) wait for the store's commit there, except on Apex's runtime
 * thread, which never waits. No task lock is held across a store call. */
#ifndef APEX_STORE_DURABLE_H
#define APEX_STORE_DURABLE_H

#include <stdatomic.h>
#include <stdint.h>

#include "apex/apex.h"

struct apex__run;
struct apex__progress_slot;
typedef struct apex__durable apex__durable_t;

/* What a durable task carries (in its opts block: apex__task_opts_t). */
typedef struct apex__dtask {
  uint32_t action_flags; /* APEX_ACTION_F_* */
  /* Attempts a recovered task had before this process took it over: its
   * attempts here count on from there in the store (the task's own count,
   * and the retry policy's, start again at 1 in this process). */
  uint32_t attempt_base;
  /* The checkpoint a recovered task resumes from, until its first attempt
   * in this process takes it (task lock). */
  json_t *cp_recovered;
  /* A row a serving manager claimed (worker.c): served for the serve
   * loop's count; claimed while its first attempt, whose start claim_next
   * recorded, has not opened (task lock); released once a draining
   * worker gave its row back (its end is then not recorded). */
  uint8_t served, claimed;
  atomic_int released;
} apex__dtask_t;

/* apex__durable_submit's answer in apex_manager_enqueue: the row is
 * written and the submit stops there. */
#define APEX__ENQUEUED 2

/* apex_manager_new with cfg.store: opens the store, takes the owner id
 * (and its lock), starts the keeper. Returns: APEX_OK; APEX_E_STORE or
 * APEX_E_INVALID (logged, naming the reason); APEX_E_NOMEM. */
int apex__durable_open(apex_manager_t *m);
/* Teardown, after the workers and the runtime stopped: stops the keeper,
 * waits for the queued writes, closes the store, releases the owner lock.
 * A no-op without a store. */
void apex__durable_close(apex_manager_t *m);

/* 1 if a submit with opts o (NULL: defaults) of a host (not a child's)
 * is durable on m. */
int apex__durable_wanted(apex_manager_t *m, const apex_submit_opts_t *o, int child);
/* The submit of t on a manager with a store (t's opts block made, its id
 * not yet given; child: a task a handler spawned, never durable): gives t
 * its id and, for a durable submit, its durable block, and writes its row
 * and waits until it is durable. With an idempotency key already used for
 * the same call: returns 1 and *dup a handle on that task (t is then not
 * submitted: the caller frees it). Returns: APEX_OK, 1, or an error with
 * *err. */
int apex__durable_submit(apex_manager_t *m, apex_task_t *t, const apex_submit_opts_t *o,
                         json_t *vp, int child, apex_task_t **dup, apex_error_t **err);
/* The submit of t failed after apex__durable_submit wrote its row: takes
 * the row back. */
void apex__durable_unsubmit(apex_manager_t *m, apex_task_t *t);

/* An attempt of durable t opens (worker thread, no lock held, before the
 * handler runs): claims the row for it. Returns: APEX_OK to run the
 * handler, else the code to end the attempt with (its error set on the
 * run state). */
int apex__durable_attempt_start(apex_task_t *t, struct apex__run *r);
/* Durable t became terminal (no lock held): its outcome is written. */
void apex__durable_ended(apex_task_t *t);
/* Durable t's attempt failed and a retry is due in delay_s (no lock held). */
void apex__durable_retry(apex_task_t *t, double delay_s, const apex_error_t *err);
/* Frees what a durable task carries (its opts block goes with the task). */
void apex__durable_task_free(apex__dtask_t *d);

/* apex_ctx_checkpoint / apex_ctx_checkpoint_get for r's open attempt
 * (durable or not). v validated, borrowed. */
int apex__run_checkpoint(struct apex__run *r, const json_t *v);
json_t *apex__run_checkpoint_get(struct apex__run *r);
/* An attempt opens (task lock): the latest checkpoint becomes what
 * apex_ctx_checkpoint_get returns. */
void apex__checkpoint_rotate_locked(struct apex__progress_slot *s);

/* ---- What worker.c (apex_manager_serve) uses of a manager's store ---- */

struct apex__serve;
struct apex__srec;
struct apex_store *apex__durable_store(apex__durable_t *d);
const char *apex__durable_owner(apex__durable_t *d);
double apex__durable_lease_s(apex__durable_t *d);
/* Where d keeps the serve loop's state (NULL: not serving). */
struct apex__serve **apex__durable_serve_slot(apex__durable_t *d);
/* Runs row r, claimed for this manager (running, attempts counting this
 * attempt, held by its owner), as a task of m, by recovery's rules
 * (apex_manager_recover; cut_off: r was running when its last owner went).
 * Returns 1 taken (*out a handle on the task, or NULL when the rules ended
 * the row), 0 left (the manager is shutting down or full: the caller gives
 * the row back). */
int apex__durable_adopt(apex__durable_t *d, const struct apex__srec *r, int cut_off,
                        apex_task_t **out);
/* Ends row r (held by d's owner, or by one whose lease expired) with state
 * and an error (code, msg). */
void apex__durable_end_row(apex__durable_t *d, const struct apex__srec *r, int state, int code,
                           const char *msg);
/* A draining worker gives t's row back: from now on t's end is not
 * recorded. Returns 1 if an attempt of t started here, 0 if not, -1 (not
 * durable); *flags its action's APEX_ACTION_F_*. */
int apex__durable_release_mark(apex_task_t *t, uint32_t *flags);

/* worker.c's hooks: a served task ended (its outcome written or refused);
 * its outcome was refused (the row is another owner's now: logged); a row
 * was enqueued in this process (a claim may find it); m is being destroyed
 * (the serve loop stops at once, giving back what it holds). */
void apex__serve_ended(apex_manager_t *m, uint64_t id);
/* A served task's outcome could not be written (the store is away): the
 * serve loop retries it (the strings copied). */
void apex__serve_pending(apex_manager_t *m, uint64_t id, int state, const char *result,
                         const char *error, const char *partial);
void apex__serve_discarded(apex_manager_t *m, uint64_t id, const char *state);
void apex__serve_poke(apex_manager_t *m);
void apex__serve_destroy(apex_manager_t *m);
/* Frees the serve loop's state (apex__durable_close, after the workers). */
void apex__serve_free(apex_manager_t *m);

#endif
