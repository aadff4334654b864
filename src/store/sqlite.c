/* The SQLite store backend (docs/store.md): one file, WAL mode, one writer
 * thread that commits the writes of many tasks in one transaction (group
 * commit), and a reader connection for lookups.
 *
 * Why a writer thread: SQLite lets one connection write at a time; with a
 * connection per caller, callers would queue on the file lock (and on
 * SQLITE_BUSY). Here every write is a request on a queue; the writer takes
 * all the requests waiting, runs them in one BEGIN IMMEDIATE ... COMMIT,
 * and wakes the callers that wait, all of a batch with one futex call (a
 * write made with wait 0 is not waited for; a later sync waits for it).
 * So concurrent callers share one commit
 * (and, at synchronous=full, one fsync), and no task ever sees
 * SQLITE_BUSY: only the writer meets the lock, and it waits busy_timeout
 * for another process's write to end. If a batch hits an error of the
 * file (disk full, read-only, I/O), it is rolled back and its requests are
 * run again one per transaction, so one request that cannot be written
 * fails alone and the others are kept.
 *
 * Durability: synchronous=NORMAL by default: a committed transaction
 * survives the process being killed (it is in the WAL, written before the
 * commit returns), not a power loss or kernel crash (the last commits may
 * be lost; the file stays consistent). synchronous=full (uri option)
 * syncs the WAL at every commit: then a write that returned survives power
 * loss too, at the price of an fsync per group commit.
 *
 * The file: application_id 'APEX' and user_version the schema version. A
 * file that is not a database, is another program's (tables but not our
 * application_id), has a newer schema, or fails quick_check is refused with
 * an error naming the file and the reason, and never written. An older
 * schema is migrated in one transaction (migrations[]).
 *
 * Threads: the writer thread owns s->w (the write connection) and its
 * prepared statements; s->r (reads) is used under s->rmu by any thread;
 * the queue and the counters are under s->mu. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "core/error.h"
#include "store/store.h"

#define SQ_APP_ID 0x41504558 /* "APEX" */
#define SQ_SCHEMA 4
#define SQ_BUSY_MS 5000 /* the default busy_timeout */

/* Migrations: migrations[k] takes a file from schema k to k + 1. */
static const char *const migrations[SQ_SCHEMA] = {
    /* 0 -> 1: the first schema. */
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID;"
    "INSERT INTO meta VALUES('next_id', 1);"
    "CREATE TABLE tasks("
    " id INTEGER PRIMARY KEY, plugin TEXT NOT NULL, action TEXT NOT NULL,"
    " plugin_version TEXT, params TEXT, opts TEXT, idem_key TEXT,"
    " state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " action_flags INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,"
    " updated_at REAL NOT NULL, run_at REAL NOT NULL DEFAULT 0,"
    " deadline REAL NOT NULL DEFAULT 0, ended_at REAL NOT NULL DEFAULT 0,"
    " owner TEXT, lease_until REAL NOT NULL DEFAULT 0,"
    " cancel_requested INTEGER NOT NULL DEFAULT 0, cancel_reason TEXT,"
    " progress TEXT, checkpoint TEXT, partial TEXT, result TEXT, error TEXT);"
    /* Partial indexes: a row without a key, or ended, costs them nothing
     * (each index a row is in is one more page in a commit). */
    "CREATE UNIQUE INDEX tasks_key ON tasks(idem_key) WHERE idem_key IS NOT NULL;"
    "CREATE INDEX tasks_live ON tasks(id) WHERE state IN (0, 1, 2, 7);"
    "CREATE INDEX tasks_ended ON tasks(ended_at) WHERE ended_at > 0;",
    /* 1 -> 2: tasks_live's condition without an IN list. SQLite codes a
     * constant IN list of more than two values as an ephemeral b-tree
     * built afresh each time the statement runs, and it evaluates a
     * partial index's condition on every INSERT and on every UPDATE of
     * state: with IN (0, 1, 2, 7) that was two b-trees (each a pager, a
     * few allocations) per row written, the larger part of the writer's
     * CPU in W13 (bench/analysis.md). Queries that use the index repeat
     * its condition word for word (LIVE). */
    "DROP INDEX tasks_live;"
    "CREATE INDEX tasks_live ON tasks(id) WHERE (state < 3 OR state = 7);",
    /* 2 -> 3: each row's history (apex_store_get's "events", apex show),
     * written by triggers in the transaction of the change itself, so no
     * write path can forget one and none is left without its row: a row's
     * insert, and every change of its state, attempts or cancel request
     * (not its lease renewals or checkpoints). A queued claim and end that
     * the writer folded into one update are one change (docs/store.md).
     * No IN lists (see 1 -> 2). */
    "CREATE TABLE task_events(task_id INTEGER NOT NULL, at REAL NOT NULL,"
    " state INTEGER NOT NULL, attempt INTEGER NOT NULL, note TEXT);"
    "CREATE INDEX task_events_task ON task_events(task_id);"
    "CREATE TRIGGER task_events_insert AFTER INSERT ON tasks BEGIN"
    " INSERT INTO task_events VALUES(new.id, new.created_at, new.state, new.attempts, NULL);"
    " END;"
    "CREATE TRIGGER task_events_update AFTER UPDATE ON tasks"
    " WHEN old.state <> new.state OR old.attempts <> new.attempts"
    " OR old.cancel_requested <> new.cancel_requested BEGIN"
    " INSERT INTO task_events VALUES(new.id, new.updated_at, new.state, new.attempts,"
    "  CASE WHEN new.cancel_requested <> old.cancel_requested"
    "   THEN 'cancel requested (' || coalesce(new.cancel_reason, 'user') || ')'"
    "  WHEN new.state = 2 AND new.run_at > 0"
    "   THEN 'retry at ' || strftime('%Y-%m-%dT%H:%M:%fZ', new.run_at, 'unixepoch')"
    "  WHEN new.state BETWEEN 4 AND 6 AND json_valid(new.error)"
    "   THEN json_extract(new.error, '$.code') END);"
    " END;"
    "CREATE TRIGGER task_events_delete AFTER DELETE ON tasks BEGIN"
    " DELETE FROM task_events WHERE task_id = old.id;"
    " END;",
    /* 3 -> 4: shared-queue workers (issue 14). Each row's concurrency key
     * in a column of its own (set at enqueue from opts), so claim_next can
     * count and skip by key without parsing opts; and a row given back by
     * a draining worker (release: running -> queued, owner gone) says so
     * in its history. */
    "ALTER TABLE tasks ADD COLUMN ckey TEXT;"
    "UPDATE tasks SET ckey = coalesce(json_extract(opts, '$.concurrency_key'),"
    " json_extract(opts, '$.key')) WHERE json_valid(opts);"
    "DROP TRIGGER task_events_update;"
    "CREATE TRIGGER task_events_update AFTER UPDATE ON tasks"
    " WHEN old.state <> new.state OR old.attempts <> new.attempts"
    " OR old.cancel_requested <> new.cancel_requested BEGIN"
    " INSERT INTO task_events VALUES(new.id, new.updated_at, new.state, new.attempts,"
    "  CASE WHEN new.cancel_requested <> old.cancel_requested"
    "   THEN 'cancel requested (' || coalesce(new.cancel_reason, 'user') || ')'"
    "  WHEN new.state = 2 AND new.run_at > 0"
    "   THEN 'retry at ' || strftime('%Y-%m-%dT%H:%M:%fZ', new.run_at, 'unixepoch')"
    "  WHEN new.state BETWEEN 4 AND 6 AND json_valid(new.error)"
    "   THEN json_extract(new.error, '$.code')"
    "  WHEN new.state = 0 AND old.state = 1 AND new.owner IS NULL"
    "   THEN 'released by ' || coalesce(old.owner, 'its owner') END);"
    " END;",
};

#define COLS                                                                              \
  "id, plugin, action, plugin_version, params, opts, idem_key, state, attempts,"         \
  " action_flags, created_at, updated_at, run_at, deadline, ended_at, owner, lease_until," \
  " cancel_requested, cancel_reason, progress, checkpoint, partial, result, error"
/* Live and waiting states (queued 0, running 1, retry_wait 2, scheduled 7;
 * 3 to 6 are terminal) as comparisons, never IN lists (see migration 1 -> 2).
 * LIVE is tasks_live's condition, word for word, so a query can use it. */
#define LIVE "(state < 3 OR state = 7)"
#define WAITING LIVE " AND state <> 1"
#define ENDING(p) p " BETWEEN 3 AND 6"

/* The writer's prepared statements. */
enum {
  ST_NEXT_ID,
  ST_SET_NEXT_ID,
  ST_INSERT,
  ST_FIND_KEY,
  ST_GET,
  ST_CLAIM,
  ST_HEARTBEAT,
  ST_FINISH,
  ST_RENEW,
  ST_N
};

static const char *const st_sql[ST_N] = {
    [ST_NEXT_ID] = "SELECT value FROM meta WHERE key = 'next_id'",
    [ST_SET_NEXT_ID] = "UPDATE meta SET value = ?1 WHERE key = 'next_id'",
    [ST_INSERT] = "INSERT INTO tasks(" COLS ", ckey) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,"
                  " ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24,"
                  " ?25)",
    [ST_FIND_KEY] = "SELECT id FROM tasks WHERE idem_key = ?1 AND idem_key IS NOT NULL",
    [ST_GET] = "SELECT " COLS " FROM tasks WHERE id = ?1",
    [ST_CLAIM] = "UPDATE tasks SET state = 1, attempts = ?2, owner = ?3, lease_until = ?4,"
                 " updated_at = ?5 WHERE id = ?1 AND " LIVE " AND cancel_requested = 0"
                 " AND (owner IS NULL OR owner = ?3 OR lease_until <= ?5)",
    [ST_HEARTBEAT] = "UPDATE tasks SET lease_until = ?3, updated_at = ?4,"
                     " checkpoint = coalesce(?5, checkpoint), progress = coalesce(?6, progress)"
                     " WHERE id = ?1 AND owner = ?2 AND " LIVE " RETURNING cancel_requested",
    [ST_FINISH] = "UPDATE tasks SET state = ?2, updated_at = ?3, run_at = ?4, result = ?5,"
                  " error = ?6, partial = coalesce(?7, partial),"
                  " ended_at = CASE WHEN " ENDING("?2") " THEN ?3 ELSE 0 END,"
                  " owner = CASE WHEN " ENDING("?2") " THEN NULL ELSE owner END,"
                  " lease_until = CASE WHEN " ENDING("?2") " THEN 0 ELSE lease_until END,"
                  " attempts = CASE WHEN ?9 > 0 THEN ?9 ELSE attempts END"
                  " WHERE id = ?1 AND " LIVE " AND (?8 IS NULL OR owner IS NULL OR owner = ?8"
                  " OR lease_until <= ?3)",
    [ST_RENEW] = "UPDATE tasks SET lease_until = ?2 WHERE owner = ?1 AND " LIVE,
};

typedef struct sq_store sq_store_t;
typedef struct sq_req sq_req_t;

/* One write waiting for the writer. Inputs are borrowed while the caller
 * waits (wait 1) or owned by the request (wait 0: copied, freed after). */
struct sq_req {
  sq_req_t *next;
  int (*run)(sq_store_t *s, sq_req_t *q);
  void (*reset)(sq_req_t *q); /* drops outputs before a rerun; NULL: none */
  int owned;                  /* async: free the strings and the request */
  int skip;                   /* a queued claim its row's finish in the same
                                 batch makes moot (coalesce) */
  /* inputs */
  const apex__srec_t *rec;
  uint64_t id, n;
  const char *owner, *s1, *s2, *s3, *s4;
  double now, t1, t2;
  int state;
  uint32_t attempt;
  apex__owner_dead_fn is_dead;
  void *user;
  size_t max;
  const apex__slimit_t *limits; /* claim_next */
  size_t nlimits;
  /* outputs */
  uint64_t out_id;
  int out_flag;
  apex__srec_t *out_recs;
  size_t out_n;
  int rc;
  apex_error_t *err;
  uint32_t batch; /* the batch it runs in (s->taken + 1 when queued, mu) */
};

struct sq_store {
  apex__store_t base;
  apex__swake_t wk; /* wait_work, wake: this process's enqueues, releases, cancels */
  int wk_ok;
  char *path;
  int sync_full;
  int group_commit;
  int busy_ms; /* busy_timeout: how long a write waits for another process's */
  sqlite3 *w; /* writer thread's */
  sqlite3_stmt *st[ST_N];
  sqlite3 *r; /* reads, under rmu */
  pthread_mutex_t rmu;
  pthread_mutex_t mu;
  pthread_cond_t cv;      /* the writer waits for work */
  sq_req_t *head, *tail;
  int stop;
  uint64_t queued, finished; /* requests ever queued / run (mu) */
  apex_error_t *async_err;   /* the first failure of a wait-0 write (mu) */
  pthread_t thread;
  int thread_started;
  uint64_t commits;      /* transactions committed (writer thread) */
  uint64_t commits_seen; /* its copy for other threads (mu) */
  /* Batches (store.h, apex__sbatch_t): s->taken counts the lists the
   * writer took (mu); a request queued now runs in batch taken + 1. */
  uint32_t taken;
  apex__sbatch_t done;
};

static sq_store_t *S(apex__store_t *s) { return (sq_store_t *)s; }

/* An APEX_E_STORE error naming the file, what was done and SQLite's
 * reason. Returns APEX_E_STORE. */
static int sq_fail(sq_store_t *s, sqlite3 *db, apex_error_t **err, const char *what) {
  int ec = db ? sqlite3_extended_errcode(db) : SQLITE_ERROR;
  int pc = ec & 0xff;
  const char *hint = pc == SQLITE_FULL       ? " (the disk is full)"
                     : pc == SQLITE_READONLY ? " (the file or its directory is read-only)"
                     : pc == SQLITE_BUSY     ? " (locked by another process past the busy timeout)"
                     : pc == SQLITE_CORRUPT  ? " (the file is corrupt)"
                     : pc == SQLITE_NOTADB   ? " (not a database)"
                                             : "";
  /* The system's word too, for an I/O failure: "File too large", "No space
   * left on device" say more than "disk I/O error". */
  int se = db && (pc == SQLITE_IOERR || pc == SQLITE_FULL || pc == SQLITE_CANTOPEN)
               ? sqlite3_system_errno(db)
               : 0;
  return apex__store_fail(err, APEX_E_STORE, "store '%s': %s: %s%s%s%s%s", s->path, what,
                          db ? sqlite3_errmsg(db) : "error", hint, se ? " (" : "",
                          se ? strerror(se) : "", se ? ")" : "");
}

static void bind_text(sqlite3_stmt *st, int i, const char *v) {
  if (v) sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
  else sqlite3_bind_null(st, i);
}

static char *col_text(sqlite3_stmt *st, int i, int *bad) {
  const unsigned char *v = sqlite3_column_text(st, i);
  if (!v) return NULL;
  char *d = strdup((const char *)v);
  if (!d) *bad = 1;
  return d;
}

/* Reads a row selected with COLS into *r. Returns APEX_OK, APEX_E_NOMEM. */
static int read_row(sqlite3_stmt *st, apex__srec_t *r) {
  int bad = 0;
  memset(r, 0, sizeof *r);
  r->id = (uint64_t)sqlite3_column_int64(st, 0);
  r->plugin = col_text(st, 1, &bad);
  r->action = col_text(st, 2, &bad);
  r->plugin_version = col_text(st, 3, &bad);
  r->params = col_text(st, 4, &bad);
  r->opts = col_text(st, 5, &bad);
  r->idem_key = col_text(st, 6, &bad);
  r->state = sqlite3_column_int(st, 7);
  r->attempts = (uint32_t)sqlite3_column_int64(st, 8);
  r->action_flags = (uint32_t)sqlite3_column_int64(st, 9);
  r->created_at = sqlite3_column_double(st, 10);
  r->updated_at = sqlite3_column_double(st, 11);
  r->run_at = sqlite3_column_double(st, 12);
  r->deadline = sqlite3_column_double(st, 13);
  r->ended_at = sqlite3_column_double(st, 14);
  r->owner = col_text(st, 15, &bad);
  r->lease_until = sqlite3_column_double(st, 16);
  r->cancel_requested = sqlite3_column_int(st, 17);
  r->cancel_reason = col_text(st, 18, &bad);
  r->progress = col_text(st, 19, &bad);
  r->checkpoint = col_text(st, 20, &bad);
  r->partial = col_text(st, 21, &bad);
  r->result = col_text(st, 22, &bad);
  r->error = col_text(st, 23, &bad);
  if (bad) {
    apex__srec_clear(r);
    return APEX_E_NOMEM;
  }
  return APEX_OK;
}

/* Appends the row st stands on to a growing array. */
static int push_row(sqlite3_stmt *st, apex__srec_t **a, size_t *n, size_t *cap) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    apex__srec_t *na = realloc(*a, c * sizeof *na);
    if (!na) return APEX_E_NOMEM;
    *a = na;
    *cap = c;
  }
  if (read_row(st, &(*a)[*n]) != APEX_OK) return APEX_E_NOMEM;
  (*n)++;
  return APEX_OK;
}

/* Runs a statement of the writer to its end (no rows wanted). Returns
 * APEX_OK or APEX_E_STORE (a file error: the batch fails). */
static int step_done(sq_store_t *s, sqlite3_stmt *st, apex_error_t **err, const char *what) {
  int rc = sqlite3_step(st);
  int ok = rc == SQLITE_DONE || rc == SQLITE_ROW;
  if (ok && rc == SQLITE_ROW)
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
  ok = rc == SQLITE_DONE;
  int out = ok ? APEX_OK : sq_fail(s, s->w, err, what);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return out;
}

/* Loads the live state of row id for a check; *found 0 when none. */
typedef struct {
  int found, state, cancel_requested;
  char owner[160];
  double lease_until;
} row_head_t;

static int load_head(sq_store_t *s, uint64_t id, row_head_t *h, apex_error_t **err) {
  sqlite3_stmt *st = s->st[ST_GET];
  memset(h, 0, sizeof *h);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    h->found = 1;
    h->state = sqlite3_column_int(st, 7);
    const unsigned char *o = sqlite3_column_text(st, 15);
    if (o) snprintf(h->owner, sizeof h->owner, "%s", (const char *)o);
    h->lease_until = sqlite3_column_double(st, 16);
    h->cancel_requested = sqlite3_column_int(st, 17);
    rc = SQLITE_DONE;
  }
  int out = rc == SQLITE_DONE ? APEX_OK : sq_fail(s, s->w, err, "read a task");
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return out;
}

static int terminal(int state) { return apex_task_state_is_terminal((apex_task_state_t)state); }

static int held_by_other(const row_head_t *h, const char *owner, double now) {
  if (!h->owner[0]) return 0;
  if (owner && strcmp(h->owner, owner) == 0) return 0;
  return h->lease_until > now;
}

/* A file error of the batch (APEX_E_STORE) as against a request's own
 * answer (ALREADY, INVALID, CANCELLED...). */
static int is_file_error(int rc) { return rc == APEX_E_STORE || rc == APEX_E_NOMEM; }

/* ------------------------------------------------------------ requests */

/* Runs a one-off statement on the writer: prepared each time (recovery,
 * claim_next and purge are rare). */
static int prep(sq_store_t *s, const char *sql, sqlite3_stmt **st, apex_error_t **err) {
  if (sqlite3_prepare_v2(s->w, sql, -1, st, NULL) != SQLITE_OK) {
    *st = NULL;
    return sq_fail(s, s->w, err, "prepare");
  }
  return APEX_OK;
}


static int run_alloc_ids(sq_store_t *s, sq_req_t *q) {
  sqlite3_stmt *st = s->st[ST_NEXT_ID];
  int rc = sqlite3_step(st);
  uint64_t next = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW) return sq_fail(s, s->w, &q->err, "allocate ids");
  sqlite3_stmt *up = s->st[ST_SET_NEXT_ID];
  sqlite3_bind_int64(up, 1, (sqlite3_int64)(next + q->n));
  int r = step_done(s, up, &q->err, "allocate ids");
  if (r == APEX_OK) q->out_id = next;
  return r;
}

static int find_key(sq_store_t *s, const char *key, uint64_t *id, apex_error_t **err) {
  sqlite3_stmt *st = s->st[ST_FIND_KEY];
  *id = 0;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *id = (uint64_t)sqlite3_column_int64(st, 0);
    rc = SQLITE_DONE;
  }
  int out = rc == SQLITE_DONE ? APEX_OK : sq_fail(s, s->w, err, "find an idempotency key");
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return out;
}

static int run_enqueue(sq_store_t *s, sq_req_t *q) {
  const apex__srec_t *r = q->rec;
  q->out_id = 0;
  if (r->idem_key) {
    uint64_t id;
    int rc = find_key(s, r->idem_key, &id, &q->err);
    if (rc != APEX_OK) return rc;
    if (id) {
      q->out_id = id;
      sqlite3_stmt *st = s->st[ST_GET];
      sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
      int same = 0;
      char plugin[256] = "", action[256] = "";
      if (sqlite3_step(st) == SQLITE_ROW) {
        const char *p = (const char *)sqlite3_column_text(st, 1);
        const char *a = (const char *)sqlite3_column_text(st, 2);
        const char *pa = (const char *)sqlite3_column_text(st, 4);
        snprintf(plugin, sizeof plugin, "%s", p ? p : "");
        snprintf(action, sizeof action, "%s", a ? a : "");
        same = p && a && strcmp(p, r->plugin) == 0 && strcmp(a, r->action) == 0 &&
               strcmp(pa ? pa : "{}", r->params ? r->params : "{}") == 0;
      }
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      if (same) return APEX_OK;
      return apex__store_fail(&q->err, APEX_E_INVALID,
                              "idempotency key '%s' was used for another call (task %llu: %s.%s "
                              "with other params)",
                              r->idem_key, (unsigned long long)id, plugin, action);
    }
  }
  sqlite3_stmt *st = s->st[ST_INSERT];
  sqlite3_bind_int64(st, 1, (sqlite3_int64)r->id);
  bind_text(st, 2, r->plugin);
  bind_text(st, 3, r->action);
  bind_text(st, 4, r->plugin_version);
  bind_text(st, 5, r->params);
  bind_text(st, 6, r->opts);
  bind_text(st, 7, r->idem_key);
  sqlite3_bind_int(st, 8, r->state);
  sqlite3_bind_int64(st, 9, r->attempts);
  sqlite3_bind_int64(st, 10, r->action_flags);
  sqlite3_bind_double(st, 11, r->created_at);
  sqlite3_bind_double(st, 12, r->updated_at);
  sqlite3_bind_double(st, 13, r->run_at);
  sqlite3_bind_double(st, 14, r->deadline);
  sqlite3_bind_double(st, 15, r->ended_at);
  bind_text(st, 16, r->owner);
  sqlite3_bind_double(st, 17, r->lease_until);
  sqlite3_bind_int(st, 18, r->cancel_requested);
  bind_text(st, 19, r->cancel_reason);
  bind_text(st, 20, r->progress);
  bind_text(st, 21, r->checkpoint);
  bind_text(st, 22, r->partial);
  bind_text(st, 23, r->result);
  bind_text(st, 24, r->error);
  int bad = 0;
  char *ckey = apex__sopts_ckey(r->opts, &bad);
  if (bad) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
  }
  bind_text(st, 25, ckey);
  int rc = sqlite3_step(st);
  int ec = sqlite3_extended_errcode(s->w);
  int out = APEX_OK;
  if (rc != SQLITE_DONE) {
    if (ec == SQLITE_CONSTRAINT_PRIMARYKEY)
      out = apex__store_fail(&q->err, APEX_E_INVALID, "store: enqueue: id %llu is taken",
                             (unsigned long long)r->id);
    else
      out = sq_fail(s, s->w, &q->err, "enqueue");
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  free(ckey);
  return out;
}

static int run_discard(sq_store_t *s, sq_req_t *q) {
  row_head_t h;
  int rc = load_head(s, q->id, &h, &q->err);
  if (rc != APEX_OK) return rc;
  if (!h.found)
    return apex__store_fail(&q->err, APEX_E_INVALID, "store: no task %llu",
                            (unsigned long long)q->id);
  sqlite3_stmt *st;
  rc = prep(s, "DELETE FROM tasks WHERE id = ?1 AND attempts = 0 AND state IN (0, 7)", &st,
            &q->err);
  if (rc != APEX_OK) return rc;
  sqlite3_bind_int64(st, 1, (sqlite3_int64)q->id);
  if (sqlite3_step(st) != SQLITE_DONE) rc = sq_fail(s, s->w, &q->err, "discard");
  else if (sqlite3_changes(s->w) == 0) rc = APEX_E_ALREADY;
  sqlite3_finalize(st);
  return rc;
}

/* Why a conditional UPDATE of row id changed nothing: no row (INVALID),
 * terminal or held by a live other (ALREADY), a cancel request
 * (CANCELLED, when cancel_counts). */
static int why_unchanged(sq_store_t *s, sq_req_t *q, int cancel_counts) {
  row_head_t h;
  int rc = load_head(s, q->id, &h, &q->err);
  if (rc != APEX_OK) return rc;
  if (!h.found)
    return apex__store_fail(&q->err, APEX_E_INVALID, "store: no task %llu",
                            (unsigned long long)q->id);
  if (terminal(h.state) || held_by_other(&h, q->owner, q->now)) return APEX_E_ALREADY;
  if (cancel_counts && h.cancel_requested) return APEX_E_CANCELLED;
  return APEX_E_ALREADY;
}

static int run_claim(sq_store_t *s, sq_req_t *q) {
  if (q->skip) return APEX_OK; /* its finish, later in this batch, writes it all */
  sqlite3_stmt *st = s->st[ST_CLAIM];
  sqlite3_bind_int64(st, 1, (sqlite3_int64)q->id);
  sqlite3_bind_int64(st, 2, q->attempt);
  bind_text(st, 3, q->owner);
  sqlite3_bind_double(st, 4, q->t1);
  sqlite3_bind_double(st, 5, q->now);
  int rc = step_done(s, st, &q->err, "claim");
  if (rc != APEX_OK) return rc;
  return sqlite3_changes(s->w) ? APEX_OK : why_unchanged(s, q, 1);
}

static void reset_recs(sq_req_t *q) {
  apex__srec_free_array(q->out_recs, q->out_n);
  q->out_recs = NULL;
  q->out_n = 0;
}

/* claim_next with limits: the running rows counted per scope, then the
 * due rows scanned in id order, the scopes already full excluded in SQL
 * (so a full scope's backlog is not read row by row), each admitted or
 * skipped by the count (apex__slimacct_t), in chunks until max are taken
 * or none is left. Exact: it all runs in the writer's transaction, which
 * holds the file's write lock. */
static int claim_limited(sq_store_t *s, sq_req_t *q) {
  apex__slimacct_t *acct = apex__slimacct_new(q->limits, q->nlimits);
  if (!acct) return apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
  sqlite3_stmt *cnt = NULL, *cand = NULL, *take = NULL;
  uint64_t *ids = NULL;
  size_t nids = 0, cap = 0;
  int rc = prep(s,
                "SELECT plugin, action, ckey, count(*) FROM tasks WHERE " LIVE " AND state = 1"
                " AND lease_until > ?1 GROUP BY plugin, action, ckey",
                &cnt, &q->err);
  if (rc == APEX_OK) {
    sqlite3_bind_double(cnt, 1, q->now);
    int r;
    while (rc == APEX_OK && (r = sqlite3_step(cnt)) == SQLITE_ROW)
      if (apex__slimacct_add(acct, (const char *)sqlite3_column_text(cnt, 0),
                             (const char *)sqlite3_column_text(cnt, 1),
                             (const char *)sqlite3_column_text(cnt, 2),
                             (uint64_t)sqlite3_column_int64(cnt, 3)) != APEX_OK)
        rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
    if (rc == APEX_OK && r != SQLITE_DONE) rc = sq_fail(s, s->w, &q->err, "claim_next");
  }
  if (rc == APEX_OK)
    rc = prep(s,
              "SELECT id, plugin, action, ckey FROM tasks WHERE " WAITING
              " AND cancel_requested = 0 AND run_at <= ?2 AND (owner IS NULL OR owner = ?1 OR"
              " lease_until <= ?2) AND id > ?3"
              " AND plugin NOT IN (SELECT value FROM json_each(?4))"
              " AND (plugin || '.' || action) NOT IN (SELECT value FROM json_each(?5))"
              " AND (ckey IS NULL OR ckey NOT IN (SELECT value FROM json_each(?6)))"
              " ORDER BY id LIMIT ?7",
              &cand, &q->err);
  size_t chunk = q->max + 64;
  uint64_t last = 0;
  while (rc == APEX_OK && nids < q->max && !apex__slimacct_global_full(acct)) {
    char *fp, *fa, *fk;
    if (apex__slimacct_full_json(acct, &fp, &fa, &fk) != APEX_OK) {
      rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      break;
    }
    sqlite3_bind_text(cand, 1, q->owner, -1, SQLITE_STATIC);
    sqlite3_bind_double(cand, 2, q->now);
    sqlite3_bind_int64(cand, 3, (sqlite3_int64)last);
    sqlite3_bind_text(cand, 4, fp, -1, SQLITE_STATIC);
    sqlite3_bind_text(cand, 5, fa, -1, SQLITE_STATIC);
    sqlite3_bind_text(cand, 6, fk, -1, SQLITE_STATIC);
    sqlite3_bind_int64(cand, 7, (sqlite3_int64)chunk);
    size_t seen = 0;
    int r = SQLITE_DONE;
    while (rc == APEX_OK && nids < q->max && (r = sqlite3_step(cand)) == SQLITE_ROW) {
      seen++;
      last = (uint64_t)sqlite3_column_int64(cand, 0);
      int ad = apex__slimacct_admit(acct, (const char *)sqlite3_column_text(cand, 1),
                                    (const char *)sqlite3_column_text(cand, 2),
                                    (const char *)sqlite3_column_text(cand, 3));
      if (ad < 0) rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      if (ad <= 0) continue;
      if (nids == cap) {
        size_t c = cap ? cap * 2 : 16;
        uint64_t *ni = realloc(ids, c * sizeof *ni);
        if (!ni) {
          rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
          break;
        }
        ids = ni;
        cap = c;
      }
      ids[nids++] = last;
    }
    int ended = rc == APEX_OK && nids < q->max && r == SQLITE_DONE;
    if (rc == APEX_OK && nids < q->max && r != SQLITE_DONE)
      rc = sq_fail(s, s->w, &q->err, "claim_next");
    sqlite3_reset(cand);
    sqlite3_clear_bindings(cand);
    free(fp);
    free(fa);
    free(fk);
    if (ended && seen < chunk) break; /* no due row left */
  }
  if (rc == APEX_OK && nids)
    rc = prep(s,
              "UPDATE tasks SET state = 1, attempts = attempts + 1, owner = ?1,"
              " lease_until = ?3, updated_at = ?2 WHERE id = ?4 RETURNING " COLS,
              &take, &q->err);
  size_t rcap = 0;
  for (size_t i = 0; rc == APEX_OK && i < nids; i++) {
    sqlite3_bind_text(take, 1, q->owner, -1, SQLITE_STATIC);
    sqlite3_bind_double(take, 2, q->now);
    sqlite3_bind_double(take, 3, q->t1);
    sqlite3_bind_int64(take, 4, (sqlite3_int64)ids[i]);
    int r = sqlite3_step(take);
    if (r == SQLITE_ROW && push_row(take, &q->out_recs, &q->out_n, &rcap) != APEX_OK)
      rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
    else if (r == SQLITE_ROW)
      r = sqlite3_step(take);
    if (rc == APEX_OK && r != SQLITE_DONE) rc = sq_fail(s, s->w, &q->err, "claim_next");
    sqlite3_reset(take);
  }
  sqlite3_finalize(cnt);
  sqlite3_finalize(cand);
  sqlite3_finalize(take);
  free(ids);
  apex__slimacct_free(acct);
  if (rc != APEX_OK) reset_recs(q);
  return rc;
}

static int run_claim_next(sq_store_t *s, sq_req_t *q) {
  if (q->nlimits) return claim_limited(s, q);
  sqlite3_stmt *st;
  size_t cap = 0;
  int rc = prep(s,
                "UPDATE tasks SET state = 1, attempts = attempts + 1, owner = ?1,"
                " lease_until = ?3, updated_at = ?2 WHERE id IN (SELECT id FROM tasks WHERE " WAITING
                " AND cancel_requested = 0 AND run_at <= ?2 AND (owner IS NULL OR owner = ?1 OR"
                " lease_until <= ?2) ORDER BY id LIMIT ?4) RETURNING " COLS,
                &st, &q->err);
  if (rc != APEX_OK) return rc;
  sqlite3_bind_text(st, 1, q->owner, -1, SQLITE_STATIC);
  sqlite3_bind_double(st, 2, q->now);
  sqlite3_bind_double(st, 3, q->t1);
  sqlite3_bind_int64(st, 4, (sqlite3_int64)q->max);
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW)
    if (push_row(st, &q->out_recs, &q->out_n, &cap) != APEX_OK) {
      rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      break;
    }
  if (rc == APEX_OK && r != SQLITE_DONE) rc = sq_fail(s, s->w, &q->err, "claim_next");
  sqlite3_finalize(st);
  if (rc != APEX_OK) reset_recs(q);
  return rc;
}

static int run_release(sq_store_t *s, sq_req_t *q) {
  sqlite3_stmt *st;
  int rc = prep(s,
                "UPDATE tasks SET state = CASE WHEN state = 1 THEN 0 ELSE state END,"
                " run_at = MAX(run_at, ?3), owner = NULL, lease_until = 0,"
                " updated_at = ?3 WHERE id = ?1 AND " LIVE " AND owner = ?2",
                &st, &q->err);
  if (rc != APEX_OK) return rc;
  sqlite3_bind_int64(st, 1, (sqlite3_int64)q->id);
  bind_text(st, 2, q->owner);
  sqlite3_bind_double(st, 3, q->now);
  if (sqlite3_step(st) != SQLITE_DONE) rc = sq_fail(s, s->w, &q->err, "release");
  int changed = rc == APEX_OK && sqlite3_changes(s->w) > 0;
  sqlite3_finalize(st);
  if (rc != APEX_OK || changed) return rc;
  row_head_t h;
  rc = load_head(s, q->id, &h, &q->err);
  if (rc != APEX_OK) return rc;
  if (!h.found)
    return apex__store_fail(&q->err, APEX_E_INVALID, "store: no task %llu",
                            (unsigned long long)q->id);
  return APEX_E_ALREADY;
}

static int run_heartbeat(sq_store_t *s, sq_req_t *q) {
  sqlite3_stmt *st = s->st[ST_HEARTBEAT];
  sqlite3_bind_int64(st, 1, (sqlite3_int64)q->id);
  bind_text(st, 2, q->owner);
  sqlite3_bind_double(st, 3, q->t1);
  sqlite3_bind_double(st, 4, q->now);
  bind_text(st, 5, q->s1);
  bind_text(st, 6, q->s2);
  int rc = sqlite3_step(st);
  int out;
  if (rc == SQLITE_ROW) {
    out = sqlite3_column_int(st, 0) ? APEX_E_CANCELLED : APEX_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    if (rc != SQLITE_DONE) out = sq_fail(s, s->w, &q->err, "heartbeat");
  } else if (rc == SQLITE_DONE) {
    out = APEX_E_ALREADY; /* terminal, or not this owner's */
  } else {
    out = sq_fail(s, s->w, &q->err, "heartbeat");
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return out;
}

static int run_finish(sq_store_t *s, sq_req_t *q) {
  sqlite3_stmt *st = s->st[ST_FINISH];
  sqlite3_bind_int64(st, 1, (sqlite3_int64)q->id);
  sqlite3_bind_int(st, 2, q->state);
  sqlite3_bind_double(st, 3, q->now);
  sqlite3_bind_double(st, 4, q->t1);
  bind_text(st, 5, q->s1);
  bind_text(st, 6, q->s2);
  bind_text(st, 7, q->s3);
  bind_text(st, 8, q->owner);
  sqlite3_bind_int64(st, 9, q->attempt); /* 0: keep (coalesce sets it) */
  int rc = step_done(s, st, &q->err, "finish");
  if (rc != APEX_OK) return rc;
  return sqlite3_changes(s->w) ? APEX_OK : why_unchanged(s, q, 0);
}

static int run_request_cancel(sq_store_t *s, sq_req_t *q) {
  row_head_t h;
  q->out_flag = 0;
  int rc = load_head(s, q->id, &h, &q->err);
  if (rc != APEX_OK) return rc;
  if (!h.found)
    return apex__store_fail(&q->err, APEX_E_INVALID, "store: no task %llu",
                            (unsigned long long)q->id);
  if (terminal(h.state) || h.cancel_requested) return APEX_E_ALREADY;
  int end = !held_by_other(&h, NULL, q->now);
  char *e = end ? apex__store_cancel_error(q->s1) : NULL;
  if (end && !e) return apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
  sqlite3_stmt *st;
  rc = prep(s,
            end ? "UPDATE tasks SET cancel_requested = 1, cancel_reason = ?2, updated_at = ?3,"
                  " state = 5, ended_at = ?3, owner = NULL, lease_until = 0, error = ?4"
                  " WHERE id = ?1"
                : "UPDATE tasks SET cancel_requested = 1, cancel_reason = ?2, updated_at = ?3"
                  " WHERE id = ?1",
            &st, &q->err);
  if (rc == APEX_OK) {
    sqlite3_bind_int64(st, 1, (sqlite3_int64)q->id);
    bind_text(st, 2, q->s1);
    sqlite3_bind_double(st, 3, q->now);
    if (end) bind_text(st, 4, e);
    if (sqlite3_step(st) != SQLITE_DONE) rc = sq_fail(s, s->w, &q->err, "request cancel");
    sqlite3_finalize(st);
  }
  free(e);
  if (rc == APEX_OK) q->out_flag = end;
  return rc;
}

static int run_recover(sq_store_t *s, sq_req_t *q) {
  sqlite3_stmt *st;
  size_t cap = 0;
  int rc = prep(s, "SELECT " COLS " FROM tasks WHERE " LIVE " ORDER BY id", &st, &q->err);
  if (rc != APEX_OK) return rc;
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    const char *o = (const char *)sqlite3_column_text(st, 15);
    double lease = sqlite3_column_double(st, 16);
    int take = !o || lease <= q->now ||
               (q->is_dead && q->is_dead(o, q->user));
    if (!take) continue;
    if (push_row(st, &q->out_recs, &q->out_n, &cap) != APEX_OK) {
      rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      break;
    }
  }
  if (rc == APEX_OK && r != SQLITE_DONE) rc = sq_fail(s, s->w, &q->err, "recover");
  sqlite3_finalize(st);
  if (rc == APEX_OK && q->out_n) {
    rc = prep(s, "UPDATE tasks SET owner = ?2, lease_until = ?3, updated_at = ?4 WHERE id = ?1",
              &st, &q->err);
    for (size_t i = 0; rc == APEX_OK && i < q->out_n; i++) {
      sqlite3_bind_int64(st, 1, (sqlite3_int64)q->out_recs[i].id);
      sqlite3_bind_text(st, 2, q->owner, -1, SQLITE_STATIC);
      sqlite3_bind_double(st, 3, q->t1);
      sqlite3_bind_double(st, 4, q->now);
      if (sqlite3_step(st) != SQLITE_DONE) rc = sq_fail(s, s->w, &q->err, "recover");
      sqlite3_reset(st);
    }
    if (st) sqlite3_finalize(st);
  }
  if (rc != APEX_OK) reset_recs(q);
  return rc;
}

static int run_renew(sq_store_t *s, sq_req_t *q) {
  sqlite3_stmt *st = s->st[ST_RENEW];
  sqlite3_bind_text(st, 1, q->owner, -1, SQLITE_STATIC);
  sqlite3_bind_double(st, 2, q->t1);
  return step_done(s, st, &q->err, "renew leases");
}

static int run_purge(sq_store_t *s, sq_req_t *q) {
  sqlite3_stmt *st;
  int rc = prep(s, "DELETE FROM tasks WHERE ended_at > 0 AND ended_at <= ?1", &st, &q->err);
  if (rc != APEX_OK) return rc;
  sqlite3_bind_double(st, 1, q->t1);
  if (sqlite3_step(st) != SQLITE_DONE) rc = sq_fail(s, s->w, &q->err, "purge");
  else q->out_n = (size_t)sqlite3_changes(s->w);
  sqlite3_finalize(st);
  return rc;
}

static int run_nothing(sq_store_t *s, sq_req_t *q) {
  (void)s;
  (void)q;
  return APEX_OK;
}

/* ------------------------------------------------------------ the writer */

static int exec_w(sq_store_t *s, const char *sql) {
  return sqlite3_exec(s->w, sql, NULL, NULL, NULL) == SQLITE_OK ? APEX_OK : APEX_E_STORE;
}

static void req_free_owned(sq_req_t *q) {
  free((char *)q->owner);
  free((char *)q->s1);
  free((char *)q->s2);
  free((char *)q->s3);
  free((char *)q->s4);
  free(q);
}

/* Hands the results of run batch k back: frees what nobody waits for
 * (keeping the first async failure for sync()), then wakes all its waiters
 * with one futex call (one wake-up per waiter, and only its waiters; a
 * post per waiter cost the writer a system call each). */
static void batch_done(sq_store_t *s, sq_req_t *list, uint32_t k) {
  pthread_mutex_lock(&s->mu);
  s->commits_seen = s->commits;
  for (sq_req_t *q = list; q; q = q->next) {
    s->finished++;
    if (q->owned && q->rc != APEX_OK && q->rc != APEX_E_ALREADY && q->rc != APEX_E_CANCELLED &&
        !s->async_err) {
      s->async_err = q->err;
      q->err = NULL;
    }
  }
  pthread_mutex_unlock(&s->mu);
  int waiters = 0;
  for (sq_req_t *q = list, *next; q; q = next) {
    next = q->next;
    if (q->owned) {
      apex_error_unref(q->err);
      req_free_owned(q);
    } else {
      waiters = 1;
    }
  }
  /* No request of the list is touched past this store: a waiter's is gone
   * once it sees k. */
  apex__sbatch_done(&s->done, k, waiters);
}

/* Runs one request in a transaction of its own. */
static void run_alone(sq_store_t *s, sq_req_t *q) {
  if (q->reset) q->reset(q);
  apex_error_unref(q->err);
  q->err = NULL;
  if (exec_w(s, "BEGIN IMMEDIATE") != APEX_OK) {
    q->rc = sq_fail(s, s->w, &q->err, "begin a transaction");
    return;
  }
  q->rc = q->run(s, q);
  if (is_file_error(q->rc)) {
    (void)exec_w(s, "ROLLBACK");
    return;
  }
  if (exec_w(s, "COMMIT") != APEX_OK) {
    apex_error_unref(q->err);
    q->err = NULL;
    q->rc = sq_fail(s, s->w, &q->err, "commit");
    if (q->reset) q->reset(q);
    (void)exec_w(s, "ROLLBACK");
    return;
  }
  s->commits++;
}

/* A task that ends within one batch of its start (most short tasks) needs
 * one write, not two: a queued claim (nobody waits for its answer) whose
 * row is finished by the same owner later in the batch is skipped, and the
 * finish writes the claim's attempt number. Looked for within the last
 * COALESCE_WINDOW requests: a task's claim and end are queued close
 * together. */
#define COALESCE_WINDOW 64

static void coalesce(sq_req_t *list) {
  sq_req_t *win[COALESCE_WINDOW];
  size_t n = 0;
  for (sq_req_t *q = list; q; q = q->next) {
    if (q->run == run_finish && q->owner) {
      size_t k = n < COALESCE_WINDOW ? n : COALESCE_WINDOW;
      for (size_t i = 0; i < k; i++) {
        sq_req_t *c = win[(n - 1 - i) % COALESCE_WINDOW];
        if (c->run == run_claim && c->owned && !c->skip && c->id == q->id &&
            strcmp(c->owner, q->owner) == 0) {
          c->skip = 1;
          q->attempt = c->attempt;
          break;
        }
      }
    }
    win[n % COALESCE_WINDOW] = q;
    n++;
  }
}

static void run_batch(sq_store_t *s, sq_req_t *list) {
  if (!s->group_commit) {
    for (sq_req_t *q = list; q; q = q->next) run_alone(s, q);
    return;
  }
  coalesce(list);
  if (exec_w(s, "BEGIN IMMEDIATE") == APEX_OK) {
    int failed = 0;
    for (sq_req_t *q = list; q && !failed; q = q->next) {
      q->rc = q->run(s, q);
      if (is_file_error(q->rc)) failed = 1;
    }
    if (!failed && exec_w(s, "COMMIT") == APEX_OK) {
      s->commits++;
      return;
    }
    (void)exec_w(s, "ROLLBACK");
  }
  /* The batch could not be written as one: each request on its own, so
   * only the ones that cannot be written fail. */
  for (sq_req_t *q = list; q; q = q->next) run_alone(s, q);
}

static void *writer_main(void *arg) {
  sq_store_t *s = arg;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    while (!s->head && !s->stop) pthread_cond_wait(&s->cv, &s->mu);
    sq_req_t *list = s->head;
    s->head = s->tail = NULL;
    if (list) s->taken++;
    uint32_t k = s->taken;
    int stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    if (!list) {
      if (stop) break;
      continue;
    }
    run_batch(s, list);
    batch_done(s, list, k);
  }
  return NULL;
}

/* Queues q; with wait, blocks until it ran and returns its rc (its error
 * moved to *err), else returns APEX_OK at once (q owned by the writer). */
static int submit(sq_store_t *s, sq_req_t *q, int wait, apex_error_t **err) {
  q->owned = !wait;
  pthread_mutex_lock(&s->mu);
  if (s->stop) {
    pthread_mutex_unlock(&s->mu);
    /* Tested on wait, not q->owned: a waiter's q is the caller's (often on
     * its stack), which the compiler can then see is never freed here. */
    if (!wait) req_free_owned(q);
    return apex__store_fail(err, APEX_E_STORE, "store '%s': closed", s->path);
  }
  q->next = NULL;
  if (s->tail) s->tail->next = q;
  else s->head = q;
  s->tail = q;
  s->queued++;
  uint32_t k = q->batch = s->taken + 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (!wait) return APEX_OK;
  apex__sbatch_wait(&s->done, k);
  if (q->err) {
    if (err) *err = q->err;
    else apex_error_unref(q->err);
  }
  return q->rc;
}

/* A request for a write with wait 0: the strings copied into it. */
static sq_req_t *owned_req(const char *owner, const char *s1, const char *s2, const char *s3) {
  sq_req_t *q = calloc(1, sizeof *q);
  if (!q) return NULL;
  int bad = 0;
  if (owner && !(q->owner = strdup(owner))) bad = 1;
  if (s1 && !(q->s1 = strdup(s1))) bad = 1;
  if (s2 && !(q->s2 = strdup(s2))) bad = 1;
  if (s3 && !(q->s3 = strdup(s3))) bad = 1;
  if (bad) {
    req_free_owned(q);
    return NULL;
  }
  return q;
}

/* ------------------------------------------------------------ the ops */

static int sq_alloc_ids(apex__store_t *st, uint64_t n, uint64_t *first, apex_error_t **err) {
  sq_req_t q = {.run = run_alloc_ids, .n = n};
  int rc = submit(S(st), &q, 1, err);
  *first = q.out_id;
  return rc;
}

static int sq_enqueue(apex__store_t *st, const apex__srec_t *r, uint64_t *existing_id,
                      apex_error_t **err) {
  sq_req_t q = {.run = run_enqueue, .rec = r};
  *existing_id = 0;
  if (r->id == 0 || !r->plugin || !r->action)
    return apex__store_fail(err, APEX_E_INVALID, "store: enqueue: a row needs id, plugin, action");
  int rc = submit(S(st), &q, 1, err);
  *existing_id = q.out_id;
  if (rc == APEX_OK && !q.out_id) apex__swake_signal(&S(st)->wk);
  return rc;
}

static int sq_discard(apex__store_t *st, uint64_t id, apex_error_t **err) {
  sq_req_t q = {.run = run_discard, .id = id};
  return submit(S(st), &q, 1, err);
}

static int sq_claim(apex__store_t *st, uint64_t id, const char *owner, uint32_t attempt,
                    double now, double lease_until, int wait, apex_error_t **err) {
  if (wait) {
    sq_req_t q = {.run = run_claim, .id = id, .owner = owner, .attempt = attempt, .now = now,
                  .t1 = lease_until};
    return submit(S(st), &q, 1, err);
  }
  sq_req_t *q = owned_req(owner, NULL, NULL, NULL);
  if (!q) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  q->run = run_claim;
  q->id = id;
  q->attempt = attempt;
  q->now = now;
  q->t1 = lease_until;
  return submit(S(st), q, 0, err);
}

static int sq_claim_next(apex__store_t *st, const char *owner, double now, double lease_until,
                         size_t max, const apex__slimit_t *limits, size_t nlimits,
                         apex__srec_t **out, size_t *n, apex_error_t **err) {
  sq_req_t q = {.run = run_claim_next, .reset = reset_recs, .owner = owner, .now = now,
                .t1 = lease_until, .max = max, .limits = limits, .nlimits = limits ? nlimits : 0};
  *out = NULL;
  *n = 0;
  if (max == 0) return APEX_OK;
  int rc = submit(S(st), &q, 1, err);
  if (rc == APEX_OK) {
    *out = q.out_recs;
    *n = q.out_n;
  }
  return rc;
}

static int sq_release(apex__store_t *st, uint64_t id, const char *owner, double now,
                      apex_error_t **err) {
  if (!owner) return APEX_E_ALREADY;
  sq_req_t q = {.run = run_release, .id = id, .owner = owner, .now = now};
  int rc = submit(S(st), &q, 1, err);
  if (rc == APEX_OK) apex__swake_signal(&S(st)->wk);
  return rc;
}

/* Only this process's changes wake a wait: another process's enqueue is
 * seen at the caller's next poll (the timeout). */
static int sq_wait_work(apex__store_t *st, double timeout_s, apex_error_t **err) {
  (void)err;
  apex__swake_wait(&S(st)->wk, timeout_s);
  return APEX_OK;
}

static void sq_wake(apex__store_t *st) { apex__swake_signal(&S(st)->wk); }

static int sq_heartbeat(apex__store_t *st, uint64_t id, const char *owner, double now,
                        double lease_until, const char *checkpoint, const char *progress,
                        int wait, apex_error_t **err) {
  if (wait) {
    sq_req_t q = {.run = run_heartbeat, .id = id, .owner = owner, .now = now, .t1 = lease_until,
                  .s1 = checkpoint, .s2 = progress};
    return submit(S(st), &q, 1, err);
  }
  sq_req_t *q = owned_req(owner, checkpoint, progress, NULL);
  if (!q) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  q->run = run_heartbeat;
  q->id = id;
  q->now = now;
  q->t1 = lease_until;
  return submit(S(st), q, 0, err);
}

static int sq_finish(apex__store_t *st, uint64_t id, const char *owner, int state, double now,
                     double run_at, const char *result, const char *error, const char *partial,
                     int wait, apex_error_t **err) {
  if (wait) {
    sq_req_t q = {.run = run_finish, .id = id, .owner = owner, .state = state, .now = now,
                  .t1 = run_at, .s1 = result, .s2 = error, .s3 = partial};
    return submit(S(st), &q, 1, err);
  }
  sq_req_t *q = owned_req(owner, result, error, partial);
  if (!q) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  q->run = run_finish;
  q->id = id;
  q->state = state;
  q->now = now;
  q->t1 = run_at;
  return submit(S(st), q, 0, err);
}

static int sq_request_cancel(apex__store_t *st, uint64_t id, const char *reason, double now,
                             int *ended, apex_error_t **err) {
  sq_req_t q = {.run = run_request_cancel, .id = id, .s1 = reason ? reason : "user", .now = now};
  int rc = submit(S(st), &q, 1, err);
  *ended = q.out_flag;
  if (rc == APEX_OK) apex__swake_signal(&S(st)->wk);
  return rc;
}

/* Reads on the reader connection (rmu). */
/* The row's history (migration 2 -> 3's triggers) as JSON array text in
 * out->events, states by name. Under rmu. */
static int read_events(sq_store_t *s, uint64_t id, apex__srec_t *out, apex_error_t **err) {
  static const char sql[] =
      "SELECT json_group_array(CASE WHEN note IS NULL"
      " THEN json_object('at', at, 'state', name, 'attempt', attempt)"
      " ELSE json_object('at', at, 'state', name, 'attempt', attempt, 'note', note) END)"
      " FROM (SELECT at, attempt, note, CASE state WHEN 0 THEN 'queued' WHEN 1 THEN 'running'"
      " WHEN 2 THEN 'retry_wait' WHEN 3 THEN 'succeeded' WHEN 4 THEN 'failed'"
      " WHEN 5 THEN 'cancelled' WHEN 6 THEN 'timed_out' WHEN 7 THEN 'scheduled'"
      " ELSE 'unknown' END AS name FROM task_events WHERE task_id = ?1 ORDER BY rowid)";
  sqlite3_stmt *q;
  if (sqlite3_prepare_v2(s->r, sql, -1, &q, NULL) != SQLITE_OK)
    return sq_fail(s, s->r, err, "read a task's events");
  sqlite3_bind_int64(q, 1, (sqlite3_int64)id);
  int rc = APEX_OK;
  if (sqlite3_step(q) == SQLITE_ROW) {
    const unsigned char *text = sqlite3_column_text(q, 0);
    if (text && !(out->events = strdup((const char *)text)))
      rc = apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  } else {
    rc = sq_fail(s, s->r, err, "read a task's events");
  }
  sqlite3_finalize(q);
  return rc;
}

static int sq_get(apex__store_t *st, uint64_t id, apex__srec_t *out, apex_error_t **err) {
  sq_store_t *s = S(st);
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&s->rmu);
  sqlite3_stmt *q;
  int rc = APEX_OK;
  if (sqlite3_prepare_v2(s->r, "SELECT " COLS " FROM tasks WHERE id = ?1", -1, &q, NULL) !=
      SQLITE_OK) {
    rc = sq_fail(s, s->r, err, "read a task");
  } else {
    sqlite3_bind_int64(q, 1, (sqlite3_int64)id);
    int r = sqlite3_step(q);
    if (r == SQLITE_ROW)
      rc = read_row(q, out) == APEX_OK ? APEX_OK
                                       : apex__store_fail(err, APEX_E_NOMEM, "out of memory");
    else if (r == SQLITE_DONE)
      rc = apex__store_fail(err, APEX_E_INVALID, "store: no task %llu", (unsigned long long)id);
    else
      rc = sq_fail(s, s->r, err, "read a task");
    sqlite3_finalize(q);
  }
  if (rc == APEX_OK) rc = read_events(s, id, out, err);
  pthread_mutex_unlock(&s->rmu);
  if (rc != APEX_OK) apex__srec_clear(out);
  return rc;
}

static int sq_find_key(apex__store_t *st, const char *key, uint64_t *id, apex_error_t **err) {
  sq_store_t *s = S(st);
  *id = 0;
  pthread_mutex_lock(&s->rmu);
  sqlite3_stmt *q;
  int rc = APEX_OK;
  if (sqlite3_prepare_v2(s->r, "SELECT id FROM tasks WHERE idem_key = ?1 AND idem_key IS NOT NULL", -1, &q,
                         NULL) !=
      SQLITE_OK) {
    rc = sq_fail(s, s->r, err, "find an idempotency key");
  } else {
    sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
    int r = sqlite3_step(q);
    if (r == SQLITE_ROW) *id = (uint64_t)sqlite3_column_int64(q, 0);
    else if (r != SQLITE_DONE) rc = sq_fail(s, s->r, err, "find an idempotency key");
    sqlite3_finalize(q);
  }
  pthread_mutex_unlock(&s->rmu);
  return rc;
}

static int sq_list(apex__store_t *st, const apex__sfilter_t *f, apex__srec_t **out, size_t *n,
                   apex_error_t **err) {
  sq_store_t *s = S(st);
  *out = NULL;
  *n = 0;
  char states[64] = "";
  if (f->states) {
    size_t off = 0;
    for (int i = 0; i < 32; i++)
      if (f->states & (1u << i))
        off += (size_t)snprintf(states + off, sizeof states - off, "%s%d", off ? ", " : "", i);
  }
  char sql[1024];
  snprintf(sql, sizeof sql,
           "SELECT " COLS " FROM tasks WHERE id > ?1%s%s%s AND (?2 IS NULL OR plugin = ?2)"
           " AND (?3 IS NULL OR action = ?3) AND (?4 = 0 OR created_at >= ?4)"
           " AND (?5 = 0 OR created_at <= ?5) ORDER BY id LIMIT ?6",
           f->states ? " AND state IN (" : "", states, f->states ? ")" : "");
  pthread_mutex_lock(&s->rmu);
  sqlite3_stmt *q;
  int rc = APEX_OK;
  size_t cap = 0;
  if (sqlite3_prepare_v2(s->r, sql, -1, &q, NULL) != SQLITE_OK) {
    rc = sq_fail(s, s->r, err, "list tasks");
  } else {
    sqlite3_bind_int64(q, 1, (sqlite3_int64)f->after_id);
    bind_text(q, 2, f->plugin);
    bind_text(q, 3, f->action);
    sqlite3_bind_double(q, 4, f->created_min);
    sqlite3_bind_double(q, 5, f->created_max);
    sqlite3_bind_int64(q, 6, (sqlite3_int64)f->limit);
    int r;
    while ((r = sqlite3_step(q)) == SQLITE_ROW)
      if (push_row(q, out, n, &cap) != APEX_OK) {
        rc = apex__store_fail(err, APEX_E_NOMEM, "out of memory");
        break;
      }
    if (rc == APEX_OK && r != SQLITE_DONE) rc = sq_fail(s, s->r, err, "list tasks");
    sqlite3_finalize(q);
  }
  pthread_mutex_unlock(&s->rmu);
  if (rc != APEX_OK) {
    apex__srec_free_array(*out, *n);
    *out = NULL;
    *n = 0;
  }
  return rc;
}

static int sq_recover(apex__store_t *st, const char *owner, double now, double lease_until,
                      apex__owner_dead_fn is_dead, void *user, apex__srec_t **out, size_t *n,
                      apex_error_t **err) {
  sq_req_t q = {.run = run_recover, .reset = reset_recs, .owner = owner, .now = now,
                .t1 = lease_until, .is_dead = is_dead, .user = user};
  *out = NULL;
  *n = 0;
  int rc = submit(S(st), &q, 1, err);
  if (rc == APEX_OK) {
    *out = q.out_recs;
    *n = q.out_n;
  }
  return rc;
}

static int sq_renew(apex__store_t *st, const char *owner, double lease_until, apex_error_t **err) {
  sq_req_t q = {.run = run_renew, .owner = owner, .t1 = lease_until};
  return submit(S(st), &q, 1, err);
}

static int sq_cancel_requests(apex__store_t *st, const char *owner, uint64_t **ids, size_t *n,
                              apex_error_t **err) {
  sq_store_t *s = S(st);
  *ids = NULL;
  *n = 0;
  pthread_mutex_lock(&s->rmu);
  sqlite3_stmt *q;
  int rc = APEX_OK;
  size_t cap = 0;
  if (sqlite3_prepare_v2(s->r,
                         "SELECT id FROM tasks WHERE " LIVE " AND cancel_requested = 1"
                         " AND owner = ?1 ORDER BY id",
                         -1, &q, NULL) != SQLITE_OK) {
    rc = sq_fail(s, s->r, err, "read cancel requests");
  } else {
    sqlite3_bind_text(q, 1, owner, -1, SQLITE_STATIC);
    int r;
    while ((r = sqlite3_step(q)) == SQLITE_ROW) {
      if (*n == cap) {
        size_t c = cap ? cap * 2 : 8;
        uint64_t *na = realloc(*ids, c * sizeof *na);
        if (!na) {
          rc = apex__store_fail(err, APEX_E_NOMEM, "out of memory");
          break;
        }
        *ids = na;
        cap = c;
      }
      (*ids)[(*n)++] = (uint64_t)sqlite3_column_int64(q, 0);
    }
    if (rc == APEX_OK && r != SQLITE_DONE) rc = sq_fail(s, s->r, err, "read cancel requests");
    sqlite3_finalize(q);
  }
  pthread_mutex_unlock(&s->rmu);
  if (rc != APEX_OK) {
    free(*ids);
    *ids = NULL;
    *n = 0;
  }
  return rc;
}

static int sq_purge(apex__store_t *st, double before, size_t *n, apex_error_t **err) {
  sq_req_t q = {.run = run_purge, .t1 = before};
  int rc = submit(S(st), &q, 1, err);
  *n = rc == APEX_OK ? q.out_n : 0;
  return rc;
}

static int sq_sync(apex__store_t *st, apex_error_t **err) {
  sq_store_t *s = S(st);
  sq_req_t q = {.run = run_nothing};
  int rc = submit(s, &q, 1, err);
  if (rc != APEX_OK) return rc;
  pthread_mutex_lock(&s->mu);
  apex_error_t *e = s->async_err;
  s->async_err = NULL;
  pthread_mutex_unlock(&s->mu);
  if (e) return apex__error_put(err, e);
  return APEX_OK;
}

static void sq_free(sq_store_t *s) {
  for (int i = 0; i < ST_N; i++) sqlite3_finalize(s->st[i]);
  sqlite3_close(s->w);
  sqlite3_close(s->r);
  apex_error_unref(s->async_err);
  pthread_mutex_destroy(&s->rmu);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  if (s->wk_ok) apex__swake_destroy(&s->wk);
  free(s->path);
  free(s->base.uri);
  free(s);
}

static void sq_close(apex__store_t *st) {
  sq_store_t *s = S(st);
  if (s->thread_started) {
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
  }
  sq_free(s);
}

static const apex__store_ops_t sq_ops = {
    .name = "sqlite",
    .alloc_ids = sq_alloc_ids,
    .enqueue = sq_enqueue,
    .discard = sq_discard,
    .claim = sq_claim,
    .claim_next = sq_claim_next,
    .release = sq_release,
    .wait_work = sq_wait_work,
    .wake = sq_wake,
    .heartbeat = sq_heartbeat,
    .finish = sq_finish,
    .request_cancel = sq_request_cancel,
    .get = sq_get,
    .find_key = sq_find_key,
    .list = sq_list,
    .recover = sq_recover,
    .renew = sq_renew,
    .cancel_requests = sq_cancel_requests,
    .purge = sq_purge,
    .sync = sq_sync,
    .close = sq_close,
};

uint64_t apex__store_sqlite_commits(apex__store_t *st) {
  if (!st || st->ops != &sq_ops) return 0;
  sq_store_t *s = S(st);
  pthread_mutex_lock(&s->mu);
  uint64_t c = s->commits_seen;
  pthread_mutex_unlock(&s->mu);
  return c;
}

const char *apex__store_sqlite_path(apex__store_t *st) {
  return st && st->ops == &sq_ops ? S(st)->path : NULL;
}

/* ------------------------------------------------------------ opening */

/* Reads one integer pragma. */
static int pragma_int(sqlite3 *db, const char *sql, int64_t *v) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return SQLITE_ERROR;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *v = sqlite3_column_int64(st, 0);
    rc = SQLITE_OK;
  }
  sqlite3_finalize(st);
  return rc;
}

/* Parses "PATH?opt=v&opt=v" into s->path and the options. */
static int parse_options(sq_store_t *s, const char *spec, apex_error_t **err) {
  const char *qm = strchr(spec, '?');
  size_t plen = qm ? (size_t)(qm - spec) : strlen(spec);
  if (plen == 0) return apex__store_fail(err, APEX_E_INVALID, "store: empty file name");
  if (!(s->path = strndup(spec, plen))) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  s->sync_full = 0;
  s->group_commit = 1;
  s->busy_ms = SQ_BUSY_MS;
  if (!qm) return APEX_OK;
  const char *p = qm + 1;
  while (*p) {
    const char *amp = strchr(p, '&');
    size_t len = amp ? (size_t)(amp - p) : strlen(p);
    if (len == 18 && strncmp(p, "synchronous=normal", len) == 0) s->sync_full = 0;
    else if (strncmp(p, "synchronous=full", len) == 0 && len == 16) s->sync_full = 1;
    else if (strncmp(p, "group_commit=1", len) == 0 && len == 14) s->group_commit = 1;
    else if (strncmp(p, "group_commit=0", len) == 0 && len == 14) s->group_commit = 0;
    else if (len > 13 && len < 24 && strncmp(p, "busy_timeout=", 13) == 0) {
      char num[16];
      memcpy(num, p + 13, len - 13);
      num[len - 13] = '\0';
      char *end;
      long v = strtol(num, &end, 10);
      if (*end || v < 0 || v > 3600000)
        return apex__store_fail(err, APEX_E_INVALID,
                                "store '%s': busy_timeout=%s: want milliseconds in [0, 3600000]",
                                s->path, num);
      s->busy_ms = (int)v;
    } else
      return apex__store_fail(err, APEX_E_INVALID,
                              "store '%s': unknown option '%.*s' (want synchronous=normal|full, "
                              "group_commit=0|1, busy_timeout=MS)",
                              s->path, (int)len, p);
    p += len;
    if (*p == '&') p++;
  }
  return APEX_OK;
}

/* Checks the file is ours (or empty) and brings its schema up to date.
 * Writes nothing to a file it refuses. */
static int check_schema(sq_store_t *s, apex_error_t **err) {
  int64_t app = 0, ver = 0, ntab = 0;
  /* The three reads in one read transaction: one snapshot. Read one by
   * one, a process creating the same new file meanwhile could commit
   * between them, and its tables would be seen with the application_id
   * of the empty file before ("not an Apex task store"). */
  if (exec_w(s, "BEGIN") != APEX_OK) return sq_fail(s, s->w, err, "read the schema");
  if (pragma_int(s->w, "PRAGMA application_id", &app) != SQLITE_OK ||
      pragma_int(s->w, "PRAGMA user_version", &ver) != SQLITE_OK ||
      pragma_int(s->w, "SELECT count(*) FROM sqlite_master", &ntab) != SQLITE_OK) {
    int rc = sq_fail(s, s->w, err, "read the schema");
    (void)exec_w(s, "ROLLBACK");
    return rc;
  }
  if (exec_w(s, "COMMIT") != APEX_OK) return sq_fail(s, s->w, err, "read the schema");
  if (ntab > 0 && app != SQ_APP_ID)
    return apex__store_fail(err, APEX_E_STORE,
                            "store '%s': not an Apex task store (a database of another program: "
                            "application_id 0x%llx); refused, left as it is",
                            s->path, (unsigned long long)app);
  if (ver > SQ_SCHEMA)
    return apex__store_fail(err, APEX_E_STORE,
                            "store '%s': schema version %lld is newer than this library's (%d); "
                            "open it with a newer Apex; refused, left as it is",
                            s->path, (long long)ver, SQ_SCHEMA);
  if (ntab > 0) {
    sqlite3_stmt *st;
    int good = 0;
    if (sqlite3_prepare_v2(s->w, "PRAGMA quick_check(1)", -1, &st, NULL) == SQLITE_OK) {
      if (sqlite3_step(st) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        good = v && strcmp(v, "ok") == 0;
      }
      sqlite3_finalize(st);
    }
    if (!good)
      return apex__store_fail(err, APEX_E_STORE,
                              "store '%s': the file is corrupt (quick_check failed); refused, "
                              "left as it is",
                              s->path);
  }
  if (ver == SQ_SCHEMA) return APEX_OK;
  /* Migrate, all steps in one transaction: a crash leaves the old schema. */
  if (exec_w(s, "BEGIN IMMEDIATE") != APEX_OK) return sq_fail(s, s->w, err, "migrate");
  int64_t again = 0;
  if (pragma_int(s->w, "PRAGMA user_version", &again) != SQLITE_OK) again = -1;
  if (again != ver) { /* another process migrated meanwhile */
    (void)exec_w(s, "ROLLBACK");
    return again == SQ_SCHEMA ? APEX_OK : sq_fail(s, s->w, err, "migrate");
  }
  for (int64_t v = ver; v < SQ_SCHEMA; v++)
    if (exec_w(s, migrations[v]) != APEX_OK) {
      int rc = sq_fail(s, s->w, err, "migrate");
      (void)exec_w(s, "ROLLBACK");
      return rc;
    }
  char sql[96];
  snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = %d", SQ_APP_ID,
           SQ_SCHEMA);
  if (exec_w(s, sql) != APEX_OK || exec_w(s, "COMMIT") != APEX_OK) {
    int rc = sq_fail(s, s->w, err, "migrate");
    (void)exec_w(s, "ROLLBACK");
    return rc;
  }
  return APEX_OK;
}

/* Turns WAL on (and the synchronous level). SQLite answers SQLITE_BUSY at
 * once, without its busy handler, while another process converts the same
 * new file, so the busy timeout is kept here: tried again every 2 ms until
 * it has passed (workers started together on a fresh store). */
static int set_wal(sq_store_t *s) {
  char sql[128];
  snprintf(sql, sizeof sql, "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s",
           s->sync_full ? "FULL" : "NORMAL");
  double until = apex__store_now() + s->busy_ms / 1000.0;
  for (;;) {
    int rc = sqlite3_exec(s->w, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK) return APEX_OK;
    if ((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED) return APEX_E_STORE;
    if (apex__store_now() >= until) return APEX_E_STORE;
    sqlite3_sleep(2);
  }
}

static int open_conn(sq_store_t *s, sqlite3 **db, apex_error_t **err) {
  int rc = sqlite3_open_v2(s->path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                            SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
                           NULL);
  if (rc != SQLITE_OK) {
    int r = sq_fail(s, *db, err, "open");
    sqlite3_close(*db);
    *db = NULL;
    return r;
  }
  sqlite3_busy_timeout(*db, s->busy_ms);
  return APEX_OK;
}

int apex__store_sqlite_open(const char *uri, const char *spec, apex__store_t **out,
                            apex_error_t **err) {
  *out = NULL;
  if (sqlite3_threadsafe() == 0)
    return apex__store_fail(err, APEX_E_STORE, "store: libsqlite3 was built without threads");
  sq_store_t *s = calloc(1, sizeof *s);
  if (!s) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  s->base.ops = &sq_ops;
  pthread_mutex_init(&s->rmu, NULL);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  int rc = parse_options(s, spec, err);
  if (rc == APEX_OK) {
    if (apex__swake_init(&s->wk) == APEX_OK) s->wk_ok = 1;
    else rc = apex__store_fail(err, APEX_E_NOMEM, "store: cannot make a condition variable");
  }
  if (rc == APEX_OK && !(s->base.uri = strdup(uri)))
    rc = apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  if (rc == APEX_OK) rc = open_conn(s, &s->w, err);
  if (rc == APEX_OK && sqlite3_db_readonly(s->w, "main") == 1)
    rc = apex__store_fail(err, APEX_E_STORE,
                          "store '%s': the file is read-only (a store is written at every "
                          "submit); refused",
                          s->path);
  /* The schema is checked before anything is written: a foreign or newer
   * file is left exactly as it was (journal_mode=WAL would write it). */
  if (rc == APEX_OK) rc = check_schema(s, err);
  if (rc == APEX_OK && set_wal(s) != APEX_OK) rc = sq_fail(s, s->w, err, "set WAL mode");
  for (int i = 0; rc == APEX_OK && i < ST_N; i++)
    if (sqlite3_prepare_v3(s->w, st_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
        SQLITE_OK)
      rc = sq_fail(s, s->w, err, "prepare");
  if (rc == APEX_OK) rc = open_conn(s, &s->r, err);
  if (rc == APEX_OK) {
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0)
      rc = apex__store_fail(err, APEX_E_IO, "store '%s': cannot start its writer thread: %s",
                            s->path, strerror(errno));
    else
      s->thread_started = 1;
  }
  if (rc != APEX_OK) {
    sq_free(s);
    return rc;
  }
  *out = &s->base;
  return APEX_OK;
}
