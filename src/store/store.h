/* Internal: the task store interface (docs/store.md).
 *
 * A store keeps one row per durable task: what to run (plugin, action,
 * params, the options that matter after a restart), where it is (state,
 * attempts, the owner holding it and until when, the last checkpoint and
 * progress summary) and how it ended (result or error). Backends implement
 * apex__store_ops_t: memory.c (in-process, nothing written), sqlite.c
 * (one file, WAL, a writer thread with group commit) and postgres.c (a
 * database several hosts share: a writer thread pipelining batches, a
 * LISTEN connection for wait_work); tests/unit/test_store_conformance.c
 * runs the same suite on every backend through this interface only.
 *
 * Semantics every backend keeps (the conformance suite checks each):
 * - ids are handed out by alloc_ids, unique per store for its life, never
 *   reused (not even after purge);
 * - every write is atomic: a crash leaves a row as it was before the call
 *   or after it, never between; a write op returns APEX_OK only once what
 *   it wrote is durable (for SQLite: committed at the configured
 *   synchronous level), unless it was queued with wait 0;
 * - a row is held by at most one owner at a time: writes naming an owner
 *   (claim, heartbeat, complete, fail) are refused with APEX_E_ALREADY
 *   when the row is terminal or held by another owner whose lease has not
 *   expired;
 * - terminal rows (succeeded, failed, cancelled, timed_out) never change
 *   again, except purge deleting them;
 * - times are wall-clock seconds since the epoch (double), given by the
 *   caller (now), so a test can move time and a restart keeps them.
 *
 * Thread-safety: every operation, any thread, concurrently. */
#ifndef APEX_STORE_STORE_H
#define APEX_STORE_STORE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "apex/apex.h"

/* One task row. Every string is owned by the record (apex__srec_clear
 * frees them); JSON fields hold compact JSON text, NULL for none. */
typedef struct apex__srec {
  uint64_t id;
  char *plugin, *action;
  char *plugin_version;   /* the plugin's version string at submit */
  char *params;           /* JSON object text */
  char *opts;             /* JSON object text: the submit options a
                             recovery needs (store.c, apex__sopts_*) */
  char *idem_key;         /* NULL: none */
  int state;              /* apex_task_state_t */
  uint32_t attempts;      /* attempts started */
  uint32_t action_flags;  /* APEX_ACTION_F_* at submit */
  double created_at, updated_at;
  double run_at;          /* not before (start or retry time); 0: now */
  double deadline;        /* overall deadline; 0: none */
  double ended_at;        /* 0 while not terminal */
  char *owner;            /* NULL: not held */
  double lease_until;     /* the owner's hold ends then */
  int cancel_requested;
  char *cancel_reason;
  char *progress;         /* {"percentage", "message"} */
  char *checkpoint;
  char *partial;
  char *result;
  char *error;            /* apex_error_to_json's shape */
  char *events;           /* get only: JSON array text of the changes the
                             store recorded for the row, oldest first
                             ([{"at", "state", "attempt", "note"?}]); NULL:
                             the backend keeps none (memory) */
} apex__srec_t;

/* Frees what r owns and zeroes it. NULL: no-op. */
void apex__srec_clear(apex__srec_t *r);
/* Deep-copies src into *dst (dst uninitialized). Returns: APEX_OK,
 * APEX_E_NOMEM (dst then cleared). */
int apex__srec_copy(apex__srec_t *dst, const apex__srec_t *src);
/* Frees an array of n records and the array. */
void apex__srec_free_array(apex__srec_t *a, size_t n);

/* The JSON of row r (apex_store_get's shape; full 0: apex_store_list's
 * summary), a new reference; NULL on no memory. */
json_t *apex__srec_to_json(const apex__srec_t *r, int full);

/* What list selects (apex_store_filter_t, resolved). */
typedef struct apex__sfilter {
  unsigned states;    /* APEX_OPS_STATE bits; 0: any */
  const char *plugin; /* NULL: any */
  const char *action; /* NULL: any */
  double created_min; /* created_at >= this; 0: any */
  double created_max; /* created_at <= this; 0: any */
  uint64_t after_id;  /* id > this */
  size_t limit;       /* at most this many (>= 1) */
} apex__sfilter_t;

typedef struct apex_store apex__store_t;

/* A concurrency limit claim_next keeps across every owner of the store:
 * at most max rows running at once (state running, lease not expired) in
 * the scope. kind: APEX_SCOPE_PLUGIN (name "plugin"), APEX_SCOPE_ACTION
 * (name "plugin.action"), APEX_SCOPE_KEY (name a concurrency key; NULL:
 * every key separately, "key:*=N", for the keys without a limit of their
 * own in the same call; rows without a key are not limited by KEY limits),
 * APEX_SCOPE_GLOBAL (name NULL). A row must have room in every limit that
 * applies to it. */
typedef struct apex__slimit {
  int kind;
  const char *name;
  uint32_t max;
} apex__slimit_t;

/* Says whether an owner other than the caller is gone (its process ended):
 * then its rows may be taken over before their leases expire. Returns 1
 * dead, 0 alive or unknown. */
typedef int (*apex__owner_dead_fn)(const char *owner, void *user);

typedef struct apex__store_ops {
  const char *name; /* "memory", "sqlite", "postgresql" */
  /* Reserves n fresh ids: [*first, *first + n). */
  int (*alloc_ids)(apex__store_t *s, uint64_t n, uint64_t *first, apex_error_t **err);
  /* Inserts r (r->id from alloc_ids; state queued or scheduled; owner and
   * lease as given). With r->idem_key set and a row under that key
   * already: inserts nothing, *existing_id = that row's id, and returns
   * APEX_OK if plugin, action and params are the same, else
   * APEX_E_INVALID (err names the key). *existing_id is 0 when r was
   * inserted. */
  int (*enqueue)(apex__store_t *s, const apex__srec_t *r, uint64_t *existing_id,
                 apex_error_t **err);
  /* Deletes row id if it was never started (queued or scheduled, attempts
   * 0): a submit that enqueued it and then could not accept the task (the
   * queue full, shutting down) takes it back, so its idempotency key is
   * free again. Returns: APEX_OK; APEX_E_ALREADY (started or ended: kept);
   * APEX_E_INVALID (no row). */
  int (*discard)(apex__store_t *s, uint64_t id, apex_error_t **err);
  /* Owner starts attempt `attempt` of row id: state running, attempts =
   * attempt, held until lease_until. Returns: APEX_OK; APEX_E_CANCELLED if a
   * cancel was requested (nothing changed: the caller ends it);
   * APEX_E_ALREADY (terminal, or held by a live other owner); APEX_E_INVALID
   * (no such row). With wait 0: queued, APEX_OK at once (the answer is
   * lost: for a caller that learns of cancels otherwise). */
  int (*claim)(apex__store_t *s, uint64_t id, const char *owner, uint32_t attempt,
               double now, double lease_until, int wait, apex_error_t **err);
  /* Takes up to max rows that are queued, scheduled or waiting to retry,
   * due (run_at <= now), not held by a live owner and without a cancel
   * request, oldest first (memory, SQLite: by id; PostgreSQL: by the time
   * it became due, then id): each becomes running, held by owner until
   * lease_until, attempts + 1. *out: a new array of copies (n in *n). The
   * worker loop of a host that shares a store with others (PostgreSQL);
   * the manager itself uses recover.
   * limits (nlimits of them; NULL, 0: none): concurrency limits kept across
   * every owner of the store (apex__slimit_t). A row whose scope is full is
   * skipped, not waited for (no head-of-line blocking); the rows taken in
   * this call count as they are taken. The task's concurrency key is its
   * own column, set at enqueue from opts' "concurrency_key"
   * (apex__sopts_ckey). */
  int (*claim_next)(apex__store_t *s, const char *owner, double now, double lease_until,
                    size_t max, const apex__slimit_t *limits, size_t nlimits,
                    apex__srec_t **out, size_t *n, apex_error_t **err);
  /* Gives back a held, unfinished row (a draining worker): owner NULL,
   * lease 0; a running row becomes queued with run_at now, so the next
   * claimer resumes it at once (and wait_work wakes); a waiting one
   * (retry_wait, scheduled) keeps its state and its later run_at, so a
   * retry's backoff is not cut short; attempts, checkpoint, progress kept. Returns:
   * APEX_OK; APEX_E_ALREADY (terminal, or not held by owner); APEX_E_INVALID
   * (no such row). */
  int (*release)(apex__store_t *s, uint64_t id, const char *owner, double now,
                 apex_error_t **err);
  /* Blocks up to timeout_s until work may have become claimable (a row
   * enqueued or released, a cancel requested, by any process of the store:
   * PostgreSQL LISTEN/NOTIFY on its listener connection; SQLite and memory:
   * a signal within this process, else the timeout) or wake() is called.
   * A signal or wake() that came while no wait_work was blocked makes the
   * next one return at once (nothing is lost between a claim_next that
   * found nothing and the wait after it). Returns APEX_OK either way (the
   * caller then tries claim_next); APEX_E_STORE when the store is
   * unreachable (the caller backs off). */
  int (*wait_work)(apex__store_t *s, double timeout_s, apex_error_t **err);
  /* Makes a wait_work blocked in another thread return at once (or the
   * next one, when none is blocked). Async-signal-unsafe; any thread. */
  void (*wake)(apex__store_t *s);
  /* Heartbeat of the owner's attempt: extends the lease and, in the same
   * write, saves checkpoint and/or progress (NULL: keep). Returns: APEX_OK;
   * APEX_E_CANCELLED when a cancel was requested (the write was made: the
   * owner should cancel); APEX_E_ALREADY (terminal or lost the hold). */
  int (*heartbeat)(apex__store_t *s, uint64_t id, const char *owner, double now,
                   double lease_until, const char *checkpoint, const char *progress,
                   int wait, apex_error_t **err);
  /* Ends the row: state (a terminal state, or retry_wait / queued with
   * run_at for a retry: the row stays held by owner), result (succeeded),
   * error, partial (NULL: keep). owner NULL: any holder (the manager's own
   * end of a task it holds). Returns: APEX_OK; APEX_E_ALREADY (terminal or
   * held by a live other owner). */
  int (*finish)(apex__store_t *s, uint64_t id, const char *owner, int state, double now,
                double run_at, const char *result, const char *error, const char *partial,
                int wait, apex_error_t **err);
  /* Records a cancel request. A row not held by a live owner (or held by
   * none) and not running ends cancelled at once, error made from reason;
   * *ended says so. Returns: APEX_OK; APEX_E_ALREADY (terminal, or asked
   * before); APEX_E_INVALID (no such row). */
  int (*request_cancel)(apex__store_t *s, uint64_t id, const char *reason, double now,
                        int *ended, apex_error_t **err);
  /* Copies row id into *out. Returns: APEX_OK; APEX_E_INVALID (no row). */
  int (*get)(apex__store_t *s, uint64_t id, apex__srec_t *out, apex_error_t **err);
  /* Finds the row with idempotency key `key`: *id (0: none). */
  int (*find_key)(apex__store_t *s, const char *key, uint64_t *id, apex_error_t **err);
  /* The rows f selects, by id, as a new array of copies. */
  int (*list)(apex__store_t *s, const apex__sfilter_t *f, apex__srec_t **out, size_t *n,
              apex_error_t **err);
  /* Takes over every non-terminal row no live owner holds: held by none,
   * its lease expired by now, or its owner (not the caller) is gone as
   * is_dead (NULL: none) says; each is then held by owner until
   * lease_until (state unchanged: the caller decides). The caller's own
   * rows are not taken (it holds them). *out: a new array of copies as
   * they were before the take-over (owner field: the previous owner). */
  int (*recover)(apex__store_t *s, const char *owner, double now, double lease_until,
                 apex__owner_dead_fn is_dead, void *user, apex__srec_t **out, size_t *n,
                 apex_error_t **err);
  /* Extends the lease of every non-terminal row owner holds. */
  int (*renew)(apex__store_t *s, const char *owner, double lease_until, apex_error_t **err);
  /* The ids of owner's non-terminal rows with a cancel request: a new
   * array (*n), NULL when none. */
  int (*cancel_requests)(apex__store_t *s, const char *owner, uint64_t **ids, size_t *n,
                         apex_error_t **err);
  /* Deletes terminal rows with ended_at <= before. *n: how many. */
  int (*purge)(apex__store_t *s, double before, size_t *n, apex_error_t **err);
  /* Waits until every queued write (wait 0) is durable. */
  int (*sync)(apex__store_t *s, apex_error_t **err);
  /* Closes and frees s (after sync). */
  void (*close)(apex__store_t *s);
} apex__store_ops_t;

/* What every backend's store begins with. */
struct apex_store {
  const apex__store_ops_t *ops;
  char *uri; /* as opened */
};

/* Opens a backend by uri (apex_store_open's grammar). Options after '?' in
 * a sqlite uri: synchronous=full|normal, group_commit=0|1, busy_timeout=MS;
 * a postgresql:// or postgres:// uri is libpq's (docs/store.md).
 * Returns: APEX_OK; APEX_E_INVALID; APEX_E_STORE; APEX_E_NOMEM. */
int apex__store_open(const char *uri, apex__store_t **out, apex_error_t **err);
int apex__store_memory_open(const char *uri, apex__store_t **out, apex_error_t **err);
int apex__store_sqlite_open(const char *uri, const char *path, apex__store_t **out,
                            apex_error_t **err);
int apex__store_postgres_open(const char *uri, apex__store_t **out, apex_error_t **err);

/* The error JSON (apex_error_to_json's shape) of a task cancelled in the
 * store for reason (NULL: "user"); a new string, NULL on no memory. */
char *apex__store_cancel_error(const char *reason);

/* SQLite only (tests, benchmarks): transactions committed so far; 0 for
 * another backend. */
uint64_t apex__store_sqlite_commits(apex__store_t *s);
/* SQLite only: the file's path (borrowed, valid while s is); NULL for
 * another backend. */
const char *apex__store_sqlite_path(apex__store_t *s);

/* The concurrency key in a row's opts text (opts' "concurrency_key"), a
 * new string; NULL when none (or opts NULL or not JSON). *bad set on no
 * memory. */
char *apex__sopts_ckey(const char *opts, int *bad);

/* Claim-time limit accounting that every backend shares: the running
 * counts per scope of a claim_next call's limits. Fed with the running
 * rows (add), then asked row by row (admit: 1 and counted when every
 * limit that applies has room, else 0). Single-threaded (one call). */
typedef struct apex__slimacct apex__slimacct_t;
/* Returns NULL on no memory. */
apex__slimacct_t *apex__slimacct_new(const apex__slimit_t *limits, size_t n);
void apex__slimacct_free(apex__slimacct_t *a);
/* Counts `count` running rows of plugin.action with key ckey (NULL:
 * none). Returns APEX_OK, APEX_E_NOMEM. */
int apex__slimacct_add(apex__slimacct_t *a, const char *plugin, const char *action,
                       const char *ckey, uint64_t count);
/* 1: admitted (and counted), 0: a scope is full; -1: no memory. */
int apex__slimacct_admit(apex__slimacct_t *a, const char *plugin, const char *action,
                         const char *ckey);
/* 1 when a GLOBAL limit is full (nothing can be admitted). */
int apex__slimacct_global_full(const apex__slimacct_t *a);
/* The full scopes as JSON array text (each a new string, "[]" for none)
 * for a backend that excludes them in SQL: plugins (PLUGIN limits),
 * "plugin.action" names (ACTION), keys (KEY). Returns APEX_OK,
 * APEX_E_NOMEM. */
int apex__slimacct_full_json(const apex__slimacct_t *a, char **plugins, char **actions,
                             char **keys);

/* A same-process work signal (wait_work and wake of the memory and SQLite
 * backends): signal() counts a change, wait() returns once a change came
 * since the last wait returned, or after timeout_s. Any thread. */
typedef struct apex__swake {
  pthread_mutex_t mu;
  pthread_cond_t cv; /* CLOCK_MONOTONIC */
  uint64_t sig, seen;
} apex__swake_t;
/* Returns APEX_OK, APEX_E_NOMEM. */
int apex__swake_init(apex__swake_t *w);
void apex__swake_destroy(apex__swake_t *w);
void apex__swake_signal(apex__swake_t *w);
void apex__swake_wait(apex__swake_t *w, double timeout_s);

/* Batch completion for the callers of a writer thread (sqlite.c,
 * postgres.c): the writer counts the lists of requests it takes; a
 * request queued while k - 1 were taken runs in batch k, and its caller
 * sleeps until the writer says batch k ran. All of a batch's callers wake
 * with one futex call, and only they (a condition variable shared by every
 * caller woke each at every batch). Two words: batch k + 2 cannot be taken
 * before k + 1, after k ran. Zeroed memory is a valid, initial value. */
typedef struct apex__sbatch {
  _Atomic uint32_t done[2];
} apex__sbatch_t;
/* Blocks until batch k ran (apex__sbatch_done). Any thread. */
void apex__sbatch_wait(apex__sbatch_t *b, uint32_t k);
/* Says batch k ran and, if waiters, wakes its callers. The writer thread,
 * after its last touch of the batch's requests (a caller's is gone once it
 * sees k). */
void apex__sbatch_done(apex__sbatch_t *b, uint32_t k, int waiters);

/* Wall-clock now, seconds since the epoch. */
double apex__store_now(void);

/* A new store error (APEX_E_STORE unless code says otherwise) into *err
 * (when err is non-NULL); returns code. */
int apex__store_fail(apex_error_t **err, int code, const char *fmt, ...) APEX_PRINTF(3, 4);

#endif
