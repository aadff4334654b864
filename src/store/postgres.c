/* The PostgreSQL store backend (docs/store.md, "PostgreSQL"): the rows of
 * store.h in tables of a database several hosts share, so that workers on
 * many machines serve one queue (`apex worker`).
 *
 * Connections: two per open store, never more. The main connection is
 * owned by one writer thread; every operation, from any thread, is a
 * request on a queue, and the writer takes all the requests waiting and
 * runs them together. Why a writer thread rather than callers taking
 * turns on the connection under a mutex: one round trip and one commit
 * (one WAL flush on the server) serve a whole batch. The writes of a batch
 * that are one statement each (enqueue, claim, heartbeat, finish, release,
 * cancel, renew, alloc_ids) are sent in libpq's pipeline mode, one
 * statement after another without waiting, and committed as the
 * pipeline's one implicit transaction at its sync; every statement is
 * written so that its own result says everything (a data-modifying CTE
 * plus the row as it was, for "why was nothing changed"), so no answer
 * needs a second round trip. If a batch fails as a whole (a deadlock with
 * another host, the disk full), it is rolled back and its requests are run
 * again one transaction each, so only the one that cannot be written
 * fails. Multi-step operations (claim_next, recover) and reads run alone,
 * in order with the others. The second connection is the listener's:
 * a thread that LISTENs on the channel apex_work and turns notifications
 * into wake-ups for wait_work (enqueue, release and cancel NOTIFY in the
 * transaction of the change, so a wake-up never comes before the row is
 * visible). It is started by the first wait_work: a process that only
 * submits or lists never opens it.
 *
 * Claims: claim_next locks the rows it takes with FOR UPDATE SKIP LOCKED,
 * so owners claiming at once never wait for each other nor take one row
 * twice, in the order of the partial index tasks_due (due time, id) over
 * waiting rows only: a claim reads the rows it takes and few more, however
 * long the backlog or many the rows scheduled for later. With limits, the
 * claim runs under a transaction-level advisory lock, counts the running
 * rows per scope, and excludes full scopes in SQL: exact among owners that
 * pass limits (docs/store.md says where it stops).
 *
 * Faults: a lost connection (a server restart, a network cut) fails the
 * requests in flight with APEX_E_STORE naming the cause (a write whose
 * commit was not confirmed may or may not have landed: the lease rules
 * make either safe); the next request reconnects, with a backoff (50 ms
 * doubling to 2 s) during which requests fail at once instead of piling
 * up, and prepares the statements again. The listener reconnects on its
 * own and LISTENs again (a wait_work meanwhile returns APEX_E_STORE).
 * Nothing blocks forever: connect_timeout, TCP keepalives and
 * tcp_user_timeout bound a dead peer, statement_timeout a stuck statement
 * (each unless the uri sets it).
 *
 * Schema: apex_schema_version holds the version (PG_SCHEMA); a fresh
 * database is given the tables under an advisory lock (two hosts opening
 * at once make them once); an older one is migrated in one transaction; a
 * newer one, a read-only database (a standby, default_transaction_read_only)
 * or a role without the right to write the tables is refused at open with
 * APEX_E_STORE naming the reason.
 *
 * Threads: the writer thread owns s->conn and the prepared statements;
 * the listener thread owns s->lconn; the queue, the connection state seen
 * by others and the counters are under s->mu. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "core/error.h"
#include "core/strbuf.h"
#include "store/store.h"

#define PG_SCHEMA 2
#define PG_CHANNEL "apex_work"
#define PG_LOCK_SCHEMA "4702111234474983745" /* advisory lock keys: "APEXSCHE" */
#define PG_LOCK_LIMITS "4702111234474937683" /* "APEXLIMS" */
#define PG_PIPELINE_MAX 256                  /* requests per pipeline */
#define PG_BACKOFF_MIN 0.05
#define PG_BACKOFF_MAX 2.0

/* Live and waiting states (queued 0, running 1, retry_wait 2, scheduled 7;
 * 3 to 6 are terminal). WAITING is tasks_due's condition word for word. */
#define LIVE "state IN (0, 1, 2, 7)"
#define WAITING "state IN (0, 2, 7)"

/* Migrations: migrations[k] takes a database from schema k to k + 1. */
static const char *const migrations[PG_SCHEMA] = {
    /* 0 -> 1: the first schema. JSON fields are text (kept byte for
     * byte, as given). `due` is when a row may start: its run_at, or its
     * creation for one to run at once (run_at 0); claims take rows in
     * (due, id) order, so a row released or retried waits behind the rows
     * that were due before it, not behind every row submitted since. */
    "CREATE TABLE apex_schema_version(version integer NOT NULL);"
    "INSERT INTO apex_schema_version VALUES (1);"
    "CREATE TABLE apex_meta(key text PRIMARY KEY, value bigint NOT NULL);"
    "INSERT INTO apex_meta VALUES ('next_id', 1);"
    "CREATE TABLE apex_tasks("
    " id bigint PRIMARY KEY, plugin text NOT NULL, action text NOT NULL,"
    " plugin_version text, params text, opts text, idem_key text,"
    " state smallint NOT NULL, attempts integer NOT NULL DEFAULT 0,"
    " action_flags bigint NOT NULL DEFAULT 0, created_at float8 NOT NULL,"
    " updated_at float8 NOT NULL, run_at float8 NOT NULL DEFAULT 0,"
    " deadline float8 NOT NULL DEFAULT 0, ended_at float8 NOT NULL DEFAULT 0,"
    " owner text, lease_until float8 NOT NULL DEFAULT 0,"
    " cancel_requested smallint NOT NULL DEFAULT 0, cancel_reason text,"
    " progress text, checkpoint text, partial text, result text, error text,"
    " ckey text,"
    " due float8 GENERATED ALWAYS AS (CASE WHEN run_at > 0 THEN run_at ELSE created_at END)"
    " STORED);"
    "CREATE UNIQUE INDEX apex_tasks_key ON apex_tasks(idem_key) WHERE idem_key IS NOT NULL;"
    "CREATE INDEX apex_tasks_due ON apex_tasks(due, id) WHERE " WAITING ";"
    "CREATE INDEX apex_tasks_owner ON apex_tasks(owner) WHERE " LIVE ";"
    "CREATE INDEX apex_tasks_running ON apex_tasks(lease_until) WHERE state = 1;"
    "CREATE INDEX apex_tasks_ended ON apex_tasks(ended_at) WHERE ended_at > 0;"
    /* Each row's history (apex_store_get's "events"), written by a trigger
     * in the transaction of the change, as SQLite's schema 4 does. */
    /* One index (task_id, seq): an event costs one index entry, and a
     * row's history is read and deleted by its prefix. */
    "CREATE TABLE apex_task_events(task_id bigint NOT NULL, seq bigserial,"
    " at float8 NOT NULL, state smallint NOT NULL, attempt integer NOT NULL, note text,"
    " PRIMARY KEY (task_id, seq));"
    "CREATE FUNCTION apex_task_event() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN"
    " IF TG_OP = 'INSERT' THEN"
    "  INSERT INTO apex_task_events(task_id, at, state, attempt)"
    "  VALUES (NEW.id, NEW.created_at, NEW.state, NEW.attempts);"
    " ELSE"
    "  INSERT INTO apex_task_events(task_id, at, state, attempt, note)"
    "  VALUES (NEW.id, NEW.updated_at, NEW.state, NEW.attempts,"
    "   CASE WHEN NEW.cancel_requested <> OLD.cancel_requested"
    "    THEN 'cancel requested (' || coalesce(NEW.cancel_reason, 'user') || ')'"
    "   WHEN NEW.state = 2 AND NEW.run_at > 0"
    "    THEN 'retry at ' || to_char(to_timestamp(NEW.run_at) AT TIME ZONE 'UTC',"
    "     'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
    "   WHEN NEW.state BETWEEN 4 AND 6"
    "    THEN substring(NEW.error from '\"code\"\\s*:\\s*\"([^\"]*)\"')"
    "   WHEN NEW.state = 0 AND OLD.state = 1 AND NEW.owner IS NULL"
    "    THEN 'released by ' || coalesce(OLD.owner, 'its owner') END);"
    " END IF;"
    " RETURN NULL; END $f$;"
    "CREATE TRIGGER apex_task_events_insert AFTER INSERT ON apex_tasks"
    " FOR EACH ROW EXECUTE FUNCTION apex_task_event();"
    "CREATE TRIGGER apex_task_events_update AFTER UPDATE ON apex_tasks FOR EACH ROW"
    " WHEN (OLD.state <> NEW.state OR OLD.attempts <> NEW.attempts"
    " OR OLD.cancel_requested <> NEW.cancel_requested)"
    " EXECUTE FUNCTION apex_task_event();",
    /* 1 -> 2: the history trigger runs once per statement over its
     * transition tables, not once per row: a claim or a run of finishes
     * (ST_FINISH_MANY) changes tens of rows in one statement, and a row
     * trigger's call and INSERT per row cost more than its insert. The
     * notes are the same. */
    "DROP TRIGGER IF EXISTS apex_task_events_insert ON apex_tasks;"
    "DROP TRIGGER IF EXISTS apex_task_events_update ON apex_tasks;"
    "DROP FUNCTION IF EXISTS apex_task_event();"
    "CREATE OR REPLACE FUNCTION apex_task_events_inserted() RETURNS trigger LANGUAGE plpgsql"
    " AS $f$ BEGIN"
    " INSERT INTO apex_task_events(task_id, at, state, attempt)"
    "  SELECT id, created_at, state, attempts FROM apex_new ORDER BY id;"
    " RETURN NULL; END $f$;"
    "CREATE OR REPLACE FUNCTION apex_task_events_updated() RETURNS trigger LANGUAGE plpgsql"
    " AS $f$ BEGIN"
    " INSERT INTO apex_task_events(task_id, at, state, attempt, note)"
    "  SELECT n.id, n.updated_at, n.state, n.attempts,"
    "   CASE WHEN n.cancel_requested <> o.cancel_requested"
    "    THEN 'cancel requested (' || coalesce(n.cancel_reason, 'user') || ')'"
    "   WHEN n.state = 2 AND n.run_at > 0"
    "    THEN 'retry at ' || to_char(to_timestamp(n.run_at) AT TIME ZONE 'UTC',"
    "     'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
    "   WHEN n.state BETWEEN 4 AND 6"
    "    THEN substring(n.error from '\"code\"\\s*:\\s*\"([^\"]*)\"')"
    "   WHEN n.state = 0 AND o.state = 1 AND n.owner IS NULL"
    "    THEN 'released by ' || coalesce(o.owner, 'its owner') END"
    "  FROM apex_new n JOIN apex_old o ON o.id = n.id"
    "  WHERE n.state <> o.state OR n.attempts <> o.attempts"
    "   OR n.cancel_requested <> o.cancel_requested ORDER BY n.id;"
    " RETURN NULL; END $f$;"
    "CREATE TRIGGER apex_task_events_insert AFTER INSERT ON apex_tasks"
    " REFERENCING NEW TABLE AS apex_new"
    " FOR EACH STATEMENT EXECUTE FUNCTION apex_task_events_inserted();"
    "CREATE TRIGGER apex_task_events_update AFTER UPDATE ON apex_tasks"
    " REFERENCING OLD TABLE AS apex_old NEW TABLE AS apex_new"
    " FOR EACH STATEMENT EXECUTE FUNCTION apex_task_events_updated();",
};

#define COLS                                                                              \
  "id, plugin, action, plugin_version, params, opts, idem_key, state, attempts,"         \
  " action_flags, created_at, updated_at, run_at, deadline, ended_at, owner, lease_until," \
  " cancel_requested, cancel_reason, progress, checkpoint, partial, result, error"
#define TCOLS                                                                               \
  "t.id, t.plugin, t.action, t.plugin_version, t.params, t.opts, t.idem_key, t.state,"     \
  " t.attempts, t.action_flags, t.created_at, t.updated_at, t.run_at, t.deadline,"         \
  " t.ended_at, t.owner, t.lease_until, t.cancel_requested, t.cancel_reason, t.progress,"  \
  " t.checkpoint, t.partial, t.result, t.error"
#define NCOLS 24
/* The row as it was, for the reason an UPDATE changed nothing (the outer
 * SELECT of a data-modifying CTE sees the snapshot before it). */
#define HEAD(id) \
  " FROM (SELECT 1) one LEFT JOIN apex_tasks h ON h.id = " id

/* The prepared statements. */
enum {
  ST_ALLOC,
  ST_ENQUEUE,
  ST_DISCARD,
  ST_CLAIM,
  ST_HEARTBEAT,
  ST_RELEASE,
  ST_CANCEL,
  ST_RENEW,
  ST_NOTIFY,
  ST_GET,
  ST_FIND_KEY,
  ST_LIST,
  ST_LIST_LIVE,
  ST_HEAD,
  ST_CLAIM_NEXT,
  ST_RUNNING,
  ST_CANDIDATES,
  ST_TAKE,
  ST_LIVE,
  ST_RETAKE,
  ST_CANCEL_REQS,
  ST_PURGE,
  ST_FINISH_MANY,
  ST_N
};

static const char *const st_sql[ST_N] = {
    [ST_ALLOC] = "UPDATE apex_meta SET value = value + $1::bigint WHERE key = 'next_id'"
                 " RETURNING value - $1::bigint",
    [ST_ENQUEUE] =
        "WITH k AS (SELECT id, plugin, action, params FROM apex_tasks"
        "  WHERE $7::text IS NOT NULL AND idem_key = $7::text),"
        " ins AS (INSERT INTO apex_tasks(" COLS ", ckey) SELECT $1::bigint, $2::text,"
        "  $3::text, $4::text, $5::text, $6::text, $7::text, $8::smallint, $9::integer,"
        "  $10::bigint, $11::float8, $12::float8, $13::float8, $14::float8, $15::float8,"
        "  $16::text, $17::float8, $18::smallint, $19::text, $20::text, $21::text, $22::text,"
        "  $23::text, $24::text, $25::text WHERE NOT EXISTS (SELECT 1 FROM k)"
        "  ON CONFLICT DO NOTHING RETURNING id)"
        " SELECT (SELECT id FROM ins), k.id, k.plugin, k.action, k.params"
        " FROM (SELECT 1) one LEFT JOIN k ON true",
    [ST_DISCARD] = "WITH d AS (DELETE FROM apex_tasks WHERE id = $1::bigint AND attempts = 0"
                   "  AND state IN (0, 7) RETURNING id),"
                   " e AS (DELETE FROM apex_task_events WHERE task_id IN (SELECT id FROM d))"
                   " SELECT (SELECT count(*) FROM d), h.state" HEAD("$1::bigint"),
    /* Claim and finish, the hot path, are plain conditional updates; the
     * rare refusal is explained by a second statement (ST_HEAD) after the
     * batch. */
    [ST_CLAIM] = "UPDATE apex_tasks SET state = 1, attempts = $2::integer,"
                 " owner = $3::text, lease_until = $4::float8, updated_at = $5::float8"
                 " WHERE id = $1::bigint AND " LIVE " AND cancel_requested = 0"
                 " AND (owner IS NULL OR owner = $3::text OR lease_until <= $5::float8)"
                 " RETURNING 1",
    [ST_HEARTBEAT] = "UPDATE apex_tasks SET lease_until = $3::float8, updated_at = $4::float8,"
                     " checkpoint = coalesce($5::text, checkpoint),"
                     " progress = coalesce($6::text, progress)"
                     " WHERE id = $1::bigint AND owner = $2::text AND " LIVE
                     " RETURNING cancel_requested",
    [ST_RELEASE] = "WITH u AS (UPDATE apex_tasks SET state = CASE WHEN state = 1 THEN 0 ELSE state END,"
                   "  run_at = GREATEST(run_at, $3::float8),"
                   "  owner = NULL, lease_until = 0, updated_at = $3::float8"
                   "  WHERE id = $1::bigint AND " LIVE " AND owner = $2::text RETURNING 1)"
                   " SELECT (SELECT count(*) FROM u), h.state" HEAD("$1::bigint"),
    /* SET expressions see the row before the update: `owner IS NULL OR
     * lease_until <= now` is "held by no live owner" in each. */
    [ST_CANCEL] =
        "WITH u AS (UPDATE apex_tasks SET cancel_requested = 1, cancel_reason = $2::text,"
        "  updated_at = $3::float8,"
        "  state = CASE WHEN owner IS NULL OR lease_until <= $3::float8 THEN 5 ELSE state END,"
        "  ended_at = CASE WHEN owner IS NULL OR lease_until <= $3::float8 THEN $3::float8"
        "   ELSE ended_at END,"
        "  error = CASE WHEN owner IS NULL OR lease_until <= $3::float8 THEN $4::text"
        "   ELSE error END,"
        "  owner = CASE WHEN owner IS NULL OR lease_until <= $3::float8 THEN NULL"
        "   ELSE owner END,"
        "  lease_until = CASE WHEN owner IS NULL OR lease_until <= $3::float8 THEN 0"
        "   ELSE lease_until END"
        "  WHERE id = $1::bigint AND " LIVE " AND cancel_requested = 0 RETURNING state)"
        " SELECT (SELECT count(*) FROM u), (SELECT state FROM u), h.state" HEAD("$1::bigint"),
    [ST_RENEW] = "UPDATE apex_tasks SET lease_until = $2::float8 WHERE owner = $1::text AND " LIVE,
    [ST_NOTIFY] = "SELECT pg_notify('" PG_CHANNEL "', '')",
    [ST_GET] =
        "SELECT " TCOLS ", (SELECT coalesce(json_agg(json_strip_nulls(json_build_object("
        " 'at', e.at, 'state', CASE e.state WHEN 0 THEN 'queued' WHEN 1 THEN 'running'"
        " WHEN 2 THEN 'retry_wait' WHEN 3 THEN 'succeeded' WHEN 4 THEN 'failed'"
        " WHEN 5 THEN 'cancelled' WHEN 6 THEN 'timed_out' WHEN 7 THEN 'scheduled'"
        " ELSE 'unknown' END, 'attempt', e.attempt, 'note', e.note)) ORDER BY e.seq), '[]')"
        " FROM apex_task_events e WHERE e.task_id = t.id)"
        " FROM apex_tasks t WHERE t.id = $1::bigint",
    [ST_FIND_KEY] = "SELECT id FROM apex_tasks WHERE idem_key = $1::text",
    [ST_LIST] = "SELECT " COLS " FROM apex_tasks WHERE id > $1::bigint"
                " AND ($2::integer = 0 OR ((1 << state::integer) & $2::integer) <> 0)"
                " AND ($3::text IS NULL OR plugin = $3::text)"
                " AND ($4::text IS NULL OR action = $4::text)"
                " AND ($5::float8 = 0 OR created_at >= $5::float8)"
                " AND ($6::float8 = 0 OR created_at <= $6::float8) ORDER BY id LIMIT $7::bigint",
    /* The same, for states that are all live (a rescue's scan of the
     * running rows): the condition lets the planner read the live rows
     * only (a partial index), not every row ever kept. */
    [ST_LIST_LIVE] = "SELECT " COLS " FROM apex_tasks WHERE " LIVE " AND id > $1::bigint"
                     " AND ((1 << state::integer) & $2::integer) <> 0"
                     " AND ($3::text IS NULL OR plugin = $3::text)"
                     " AND ($4::text IS NULL OR action = $4::text)"
                     " AND ($5::float8 = 0 OR created_at >= $5::float8)"
                     " AND ($6::float8 = 0 OR created_at <= $6::float8) ORDER BY id"
                     " LIMIT $7::bigint",
    [ST_HEAD] = "SELECT state, owner, lease_until, cancel_requested FROM apex_tasks"
                " WHERE id = $1::bigint",
    [ST_CLAIM_NEXT] =
        "WITH c AS (SELECT id FROM apex_tasks WHERE " WAITING " AND due <= $2::float8"
        "  AND cancel_requested = 0"
        "  AND (owner IS NULL OR owner = $1::text OR lease_until <= $2::float8)"
        "  ORDER BY due, id LIMIT $4::bigint FOR UPDATE SKIP LOCKED)"
        " UPDATE apex_tasks t SET state = 1, attempts = t.attempts + 1, owner = $1::text,"
        " lease_until = $3::float8, updated_at = $2::float8 FROM c WHERE t.id = c.id"
        " RETURNING " TCOLS,
    [ST_RUNNING] = "SELECT plugin, action, ckey, count(*) FROM apex_tasks"
                   " WHERE state = 1 AND lease_until > $1::float8 GROUP BY plugin, action, ckey",
    [ST_CANDIDATES] =
        "SELECT id, plugin, action, ckey, due FROM apex_tasks WHERE " WAITING
        " AND due <= $2::float8 AND cancel_requested = 0"
        " AND (owner IS NULL OR owner = $1::text OR lease_until <= $2::float8)"
        " AND (due, id) > ($3::float8, $4::bigint)"
        " AND plugin NOT IN (SELECT json_array_elements_text($5::json))"
        " AND (plugin || '.' || action) NOT IN (SELECT json_array_elements_text($6::json))"
        " AND (ckey IS NULL OR ckey NOT IN (SELECT json_array_elements_text($7::json)))"
        " ORDER BY due, id LIMIT $8::bigint FOR UPDATE SKIP LOCKED",
    [ST_TAKE] = "UPDATE apex_tasks t SET state = 1, attempts = t.attempts + 1, owner = $1::text,"
                " lease_until = $3::float8, updated_at = $2::float8"
                " WHERE t.id = ANY($4::bigint[]) RETURNING " TCOLS,
    [ST_LIVE] = "SELECT " COLS " FROM apex_tasks WHERE " LIVE
                " AND ($1::integer = 1 OR owner IS NULL OR lease_until <= $2::float8)"
                " ORDER BY id FOR UPDATE SKIP LOCKED",
    [ST_RETAKE] = "UPDATE apex_tasks SET owner = $1::text, lease_until = $2::float8,"
                  " updated_at = $3::float8 WHERE id = ANY($4::bigint[])",
    [ST_CANCEL_REQS] = "SELECT id FROM apex_tasks WHERE " LIVE " AND cancel_requested = 1"
                       " AND owner = $1::text ORDER BY id",
    [ST_PURGE] = "WITH d AS (DELETE FROM apex_tasks WHERE ended_at > 0"
                 "  AND ended_at <= $1::float8 RETURNING id),"
                 " e AS (DELETE FROM apex_task_events WHERE task_id IN (SELECT id FROM d))"
                 " SELECT count(*) FROM d",
    /* Tasks' ends, a run of them at once (their columns as arrays, ids
     * distinct; one row or many): one statement's set-up on the server for
     * all the ends waiting in a pipeline instead of one per row. A row
     * ends unless it left the live states or another owner holds it
     * (owner NULL: any). RETURNING names the rows it changed; the others
     * are explained after the batch (ST_HEAD). */
    [ST_FINISH_MANY] =
        "UPDATE apex_tasks t SET state = u.state, updated_at = u.now, run_at = u.run_at,"
        " result = u.result, error = u.error, partial = coalesce(u.partial, t.partial),"
        " ended_at = CASE WHEN u.state BETWEEN 3 AND 6 THEN u.now ELSE 0 END,"
        " owner = CASE WHEN u.state BETWEEN 3 AND 6 THEN NULL ELSE t.owner END,"
        " lease_until = CASE WHEN u.state BETWEEN 3 AND 6 THEN 0 ELSE t.lease_until END,"
        " attempts = CASE WHEN u.attempt > 0 THEN u.attempt ELSE t.attempts END"
        " FROM unnest($1::bigint[], $2::smallint[], $3::float8[], $4::float8[], $5::text[],"
        "  $6::text[], $7::text[], $8::text[], $9::integer[])"
        "  AS u(id, state, now, run_at, result, error, partial, owner, attempt)"
        " WHERE t.id = u.id AND t.state IN (0, 1, 2, 7) AND (u.owner IS NULL OR t.owner IS NULL"
        " OR t.owner = u.owner OR t.lease_until <= u.now) RETURNING t.id",
};

typedef struct pg_store pg_store_t;
typedef struct pg_req pg_req_t;

/* What a request is: how it is sent in a pipeline and read back (one
 * statement, one result), or run alone (solo). */
enum {
  K_ALLOC,
  K_ENQUEUE,
  K_DISCARD,
  K_CLAIM,
  K_HEARTBEAT,
  K_FINISH,
  K_RELEASE,
  K_CANCEL,
  K_RENEW,
  K_SYNC,
  K_GET,      /* solo from here on */
  K_FIND_KEY,
  K_LIST,
  K_CLAIM_NEXT,
  K_RECOVER,
  K_CANCEL_REQS,
  K_PURGE,
};
#define K_SOLO(k) ((k) >= K_GET)

/* One operation waiting for the writer. Inputs are borrowed while the
 * caller waits (wait 1) or owned by the request (wait 0: copied, freed
 * after). */
struct pg_req {
  pg_req_t *next;
  int kind;
  int owned;
  int skip; /* a queued claim its row's finish in the same batch makes moot */
  /* inputs */
  const apex__srec_t *rec;
  const apex__sfilter_t *filter;
  uint64_t id, n;
  char *owner, *s1, *s2, *s3; /* owned only when owned */
  double now, t1;
  int state;
  uint32_t attempt;
  apex__owner_dead_fn is_dead;
  void *user;
  size_t max;
  const apex__slimit_t *limits;
  size_t nlimits;
  /* outputs */
  uint64_t out_id;
  int out_flag;
  int retry_alone; /* enqueue: a key raced with another transaction */
  int explain;     /* claim, finish: refused; why is read after the batch */
  apex__srec_t *out_recs;
  size_t out_n;
  uint64_t *out_ids;
  int rc;
  apex_error_t *err;
  uint32_t batch; /* the batch it runs in (s->taken + 1 when queued, mu) */
};

struct pg_store {
  apex__store_t base;
  char *name;     /* the uri without its password, for messages */
  char **keys;    /* connection parameters (PQconnectdbParams) */
  char **vals;
  /* writer thread's */
  PGconn *conn;
  double retry_at;  /* no reconnect attempt before (monotonic) */
  double backoff;
  char conn_err[512]; /* why the connection is down ("" when up) */
  /* queue (mu) */
  pthread_mutex_t mu;
  pthread_cond_t cv;      /* the writer waits for work */
  /* Batches (store.h, apex__sbatch_t): s->taken counts the lists the
   * writer took (mu); a request queued now runs in batch taken + 1. */
  uint32_t taken;
  apex__sbatch_t done;
  pg_req_t *head, *tail;
  int stop;
  apex_error_t *async_err; /* the first failure of a wait-0 write */
  pthread_t thread;
  int thread_started;
  /* listener (lmu; lconn the listener thread's) */
  apex__swake_t wk;
  int wk_ok;
  pthread_mutex_t lmu;
  int lstarted, lstop, ldown;
  char lerr[512];
  int lfd; /* eventfd: stops the listener's poll */
  pthread_t lthread;
  PGconn *lconn;
};

static pg_store_t *P(apex__store_t *s) { return (pg_store_t *)s; }

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int terminal(int state) { return apex_task_state_is_terminal((apex_task_state_t)state); }

/* libpq's message on one line: its line breaks and tabs one space each,
 * no trailing newline. */
static void one_line(const char *msg, char *out, size_t n) {
  const char *m = msg && *msg ? msg : "unknown error";
  size_t k = 0;
  int space = 0;
  for (; *m && k + 1 < n; m++) {
    int ws = *m == '\n' || *m == '\t' || *m == '\r' || *m == ' ';
    if (ws) {
      space = 1;
      continue;
    }
    if (space && k > 0 && k + 2 < n) out[k++] = ' ';
    space = 0;
    out[k++] = *m;
  }
  out[k] = '\0';
}

/* libpq prints a server's notices (and the FATAL of a connection the
 * server ends) on stderr by default; library code prints nothing. */
static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* What a server error means to a user, by SQLSTATE. */
static const char *hint_of(const char *sqlstate) {
  if (!sqlstate) return "";
  if (strcmp(sqlstate, "25006") == 0) return " (the database is read-only)";
  if (strcmp(sqlstate, "42501") == 0) return " (no permission)";
  if (strcmp(sqlstate, "53100") == 0) return " (the server's disk is full)";
  if (strcmp(sqlstate, "53200") == 0) return " (the server is out of memory)";
  if (strcmp(sqlstate, "53300") == 0) return " (the server has too many connections)";
  if (strcmp(sqlstate, "57014") == 0) return " (statement_timeout: the statement took too long)";
  if (strcmp(sqlstate, "40P01") == 0) return " (a deadlock with another transaction)";
  if (strncmp(sqlstate, "57P0", 4) == 0) return " (the server is shutting down or restarting)";
  if (strncmp(sqlstate, "08", 2) == 0) return " (the connection failed)";
  return "";
}

/* An APEX_E_STORE error naming the store, what was done and the server's
 * (or libpq's) reason. Returns APEX_E_STORE. */
static int pg_fail(pg_store_t *s, PGconn *c, const PGresult *res, apex_error_t **err,
                   const char *what) {
  char msg[512];
  const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  const char *m = res ? PQresultErrorMessage(res) : NULL;
  if (!m || !*m) m = c ? PQerrorMessage(c) : NULL;
  one_line(m, msg, sizeof msg);
  int lost = c && PQstatus(c) == CONNECTION_BAD;
  return apex__store_fail(err, APEX_E_STORE, "store '%s': %s: %s%s%s", s->name, what, msg,
                          hint_of(state),
                          lost ? " (connection lost; the next call reconnects)" : "");
}

/* ------------------------------------------------------------ values */

typedef struct {
  const char *v[26];
  char buf[26][32];
} params_t;

static const char *p_u64(params_t *p, int i, uint64_t v) {
  snprintf(p->buf[i], sizeof p->buf[i], "%llu", (unsigned long long)v);
  return p->v[i] = p->buf[i];
}
static const char *p_int(params_t *p, int i, long long v) {
  snprintf(p->buf[i], sizeof p->buf[i], "%lld", v);
  return p->v[i] = p->buf[i];
}
static const char *p_dbl(params_t *p, int i, double v) {
  snprintf(p->buf[i], sizeof p->buf[i], "%.17g", v);
  return p->v[i] = p->buf[i];
}
static const char *p_str(params_t *p, int i, const char *v) { return p->v[i] = v; }

static uint64_t g_u64(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? 0 : strtoull(PQgetvalue(r, row, col), NULL, 10);
}
static long long g_int(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}
static double g_dbl(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? 0 : strtod(PQgetvalue(r, row, col), NULL);
}
static char *g_str(const PGresult *r, int row, int col, int *bad) {
  if (PQgetisnull(r, row, col)) return NULL;
  char *d = strdup(PQgetvalue(r, row, col));
  if (!d) *bad = 1;
  return d;
}

/* Reads row `row` of a result selected with COLS (from column c0). */
static int read_row(const PGresult *r, int row, int c0, apex__srec_t *o) {
  int bad = 0;
  memset(o, 0, sizeof *o);
  o->id = g_u64(r, row, c0 + 0);
  o->plugin = g_str(r, row, c0 + 1, &bad);
  o->action = g_str(r, row, c0 + 2, &bad);
  o->plugin_version = g_str(r, row, c0 + 3, &bad);
  o->params = g_str(r, row, c0 + 4, &bad);
  o->opts = g_str(r, row, c0 + 5, &bad);
  o->idem_key = g_str(r, row, c0 + 6, &bad);
  o->state = (int)g_int(r, row, c0 + 7);
  o->attempts = (uint32_t)g_int(r, row, c0 + 8);
  o->action_flags = (uint32_t)g_int(r, row, c0 + 9);
  o->created_at = g_dbl(r, row, c0 + 10);
  o->updated_at = g_dbl(r, row, c0 + 11);
  o->run_at = g_dbl(r, row, c0 + 12);
  o->deadline = g_dbl(r, row, c0 + 13);
  o->ended_at = g_dbl(r, row, c0 + 14);
  o->owner = g_str(r, row, c0 + 15, &bad);
  o->lease_until = g_dbl(r, row, c0 + 16);
  o->cancel_requested = (int)g_int(r, row, c0 + 17);
  o->cancel_reason = g_str(r, row, c0 + 18, &bad);
  o->progress = g_str(r, row, c0 + 19, &bad);
  o->checkpoint = g_str(r, row, c0 + 20, &bad);
  o->partial = g_str(r, row, c0 + 21, &bad);
  o->result = g_str(r, row, c0 + 22, &bad);
  o->error = g_str(r, row, c0 + 23, &bad);
  if (bad) {
    apex__srec_clear(o);
    return APEX_E_NOMEM;
  }
  return APEX_OK;
}

/* Every row of r (COLS) as a new array in *out. */
static int read_rows(const PGresult *r, apex__srec_t **out, size_t *n) {
  int nt = PQntuples(r);
  *out = NULL;
  *n = 0;
  if (nt == 0) return APEX_OK;
  apex__srec_t *a = calloc((size_t)nt, sizeof *a);
  if (!a) return APEX_E_NOMEM;
  for (int i = 0; i < nt; i++)
    if (read_row(r, i, 0, &a[i]) != APEX_OK) {
      apex__srec_free_array(a, (size_t)i);
      return APEX_E_NOMEM;
    }
  *out = a;
  *n = (size_t)nt;
  return APEX_OK;
}

static void reset_out(pg_req_t *q) {
  apex__srec_free_array(q->out_recs, q->out_n);
  q->out_recs = NULL;
  q->out_n = 0;
  free(q->out_ids);
  q->out_ids = NULL;
  q->out_id = 0;
  q->out_flag = 0;
  q->retry_alone = 0;
  q->explain = 0;
  apex_error_unref(q->err);
  q->err = NULL;
}

/* ------------------------------------------------------------ connection */

static int prepare_all(pg_store_t *s, PGconn *c, apex_error_t **err) {
  /* No bitmap scans on this connection: after a bulk submit the table's
   * statistics are stale (autovacuum analyzes it a minute later at best),
   * and the planner then reads claim_next's candidates with a bitmap scan
   * of the whole backlog and sorts it (measured: 9.6 ms for 64 rows out of
   * 30,000 queued) instead of walking apex_tasks_due in (due, id) order
   * and stopping at the limit (0.1 ms). Every statement here selects by an
   * index whose order it wants, so none is better off with one. */
  PGresult *set = PQexec(c, "SET enable_bitmapscan = off");
  int set_ok = PQresultStatus(set) == PGRES_COMMAND_OK;
  int set_rc = set_ok ? APEX_OK : pg_fail(s, c, set, err, "set its planner options");
  PQclear(set);
  if (!set_ok) return set_rc;
  for (int i = 0; i < ST_N; i++) {
    char name[16];
    snprintf(name, sizeof name, "apex%d", i);
    PGresult *r = PQprepare(c, name, st_sql[i], 0, NULL);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    int rc = ok ? APEX_OK : pg_fail(s, c, r, err, "prepare its statements");
    PQclear(r);
    if (!ok) return rc;
  }
  return APEX_OK;
}

static PGconn *connect_db(pg_store_t *s, apex_error_t **err) {
  PGconn *c = PQconnectdbParams((const char *const *)s->keys, (const char *const *)s->vals, 0);
  if (!c) {
    apex__store_fail(err, APEX_E_NOMEM, "store '%s': out of memory connecting", s->name);
    return NULL;
  }
  if (PQstatus(c) != CONNECTION_OK) {
    char msg[512];
    one_line(PQerrorMessage(c), msg, sizeof msg);
    apex__store_fail(err, APEX_E_STORE, "store '%s': cannot connect: %s", s->name, msg);
    PQfinish(c);
    return NULL;
  }
  PQsetNoticeProcessor(c, quiet, NULL);
  return c;
}

/* The writer's connection, made again if it was lost (not before the
 * backoff since the last failed attempt). Returns APEX_OK or APEX_E_STORE
 * (the reason in s->conn_err). Writer thread. */
static int ensure_conn(pg_store_t *s) {
  if (s->conn && PQstatus(s->conn) == CONNECTION_OK) return APEX_OK;
  if (s->conn) {
    PQfinish(s->conn);
    s->conn = NULL;
    if (!s->conn_err[0])
      snprintf(s->conn_err, sizeof s->conn_err, "store '%s': connection lost", s->name);
  }
  if (mono_now() < s->retry_at) return APEX_E_STORE;
  apex_error_t *e = NULL;
  PGconn *c = connect_db(s, &e);
  if (c && prepare_all(s, c, &e) != APEX_OK) {
    PQfinish(c);
    c = NULL;
  }
  if (!c) {
    snprintf(s->conn_err, sizeof s->conn_err, "%s", apex_error_message(e));
    apex_error_unref(e);
    s->backoff = s->backoff <= 0 ? PG_BACKOFF_MIN : s->backoff * 2;
    if (s->backoff > PG_BACKOFF_MAX) s->backoff = PG_BACKOFF_MAX;
    s->retry_at = mono_now() + s->backoff;
    return APEX_E_STORE;
  }
  s->conn = c;
  s->conn_err[0] = '\0';
  s->backoff = 0;
  s->retry_at = 0;
  return APEX_OK;
}

/* A request failed because the connection is down. */
static void fail_down(pg_store_t *s, pg_req_t *q) {
  reset_out(q);
  if (s->conn_err[0])
    q->rc = apex__store_fail(&q->err, APEX_E_STORE, "%s (unreachable; reconnecting with backoff)",
                             s->conn_err);
  else
    q->rc = apex__store_fail(&q->err, APEX_E_STORE,
                             "store '%s': connection lost (reconnecting with backoff)", s->name);
}

/* ------------------------------------------------------------ statements */

/* Fills the parameters of pipelined request q's statement. Returns the
 * statement, -1 for none (sync, a skipped claim). */
static int bind_req(pg_req_t *q, params_t *p, char **tmp) {
  const apex__srec_t *r;
  switch (q->kind) {
    case K_ALLOC:
      p_u64(p, 0, q->n);
      return ST_ALLOC;
    case K_ENQUEUE:
      r = q->rec;
      p_u64(p, 0, r->id);
      p_str(p, 1, r->plugin);
      p_str(p, 2, r->action);
      p_str(p, 3, r->plugin_version);
      p_str(p, 4, r->params);
      p_str(p, 5, r->opts);
      p_str(p, 6, r->idem_key);
      p_int(p, 7, r->state);
      p_int(p, 8, r->attempts);
      p_int(p, 9, r->action_flags);
      p_dbl(p, 10, r->created_at);
      p_dbl(p, 11, r->updated_at);
      p_dbl(p, 12, r->run_at);
      p_dbl(p, 13, r->deadline);
      p_dbl(p, 14, r->ended_at);
      p_str(p, 15, r->owner);
      p_dbl(p, 16, r->lease_until);
      p_int(p, 17, r->cancel_requested);
      p_str(p, 18, r->cancel_reason);
      p_str(p, 19, r->progress);
      p_str(p, 20, r->checkpoint);
      p_str(p, 21, r->partial);
      p_str(p, 22, r->result);
      p_str(p, 23, r->error);
      p_str(p, 24, *tmp); /* the key, made by the caller */
      return ST_ENQUEUE;
    case K_DISCARD:
      p_u64(p, 0, q->id);
      return ST_DISCARD;
    case K_CLAIM:
      if (q->skip) return -1;
      p_u64(p, 0, q->id);
      p_int(p, 1, q->attempt);
      p_str(p, 2, q->owner);
      p_dbl(p, 3, q->t1);
      p_dbl(p, 4, q->now);
      return ST_CLAIM;
    case K_HEARTBEAT:
      p_u64(p, 0, q->id);
      p_str(p, 1, q->owner);
      p_dbl(p, 2, q->t1);
      p_dbl(p, 3, q->now);
      p_str(p, 4, q->s1);
      p_str(p, 5, q->s2);
      return ST_HEARTBEAT;
    case K_RELEASE:
      p_u64(p, 0, q->id);
      p_str(p, 1, q->owner);
      p_dbl(p, 2, q->now);
      return ST_RELEASE;
    case K_CANCEL:
      p_u64(p, 0, q->id);
      p_str(p, 1, q->s1);
      p_dbl(p, 2, q->now);
      p_str(p, 3, q->s2); /* the error, made by the caller */
      return ST_CANCEL;
    case K_RENEW:
      p_str(p, 0, q->owner);
      p_dbl(p, 1, q->t1);
      return ST_RENEW;
    default:
      return -1;
  }
}

static int nparams(int st) {
  switch (st) {
    case ST_ALLOC: return 1;
    case ST_ENQUEUE: return 25;
    case ST_DISCARD: return 1;
    case ST_CLAIM: return 5;
    case ST_HEARTBEAT: return 6;
    case ST_RELEASE: return 3;
    case ST_CANCEL: return 4;
    case ST_RENEW: return 2;
    case ST_FINISH_MANY: return 9;
    default: return 0;
  }
}

static int send_prepared(PGconn *c, int st, const params_t *p) {
  char name[16];
  snprintf(name, sizeof name, "apex%d", st);
  return PQsendQueryPrepared(c, name, nparams(st), p->v, NULL, NULL, 0);
}

/* The answer of a conditional write that changed nothing, from the row
 * as it was (columns from c0: state, then for a claim owner, lease,
 * cancel_requested). */
static int why_unchanged(pg_store_t *s, pg_req_t *q, const PGresult *r, int c0, int claim) {
  (void)s;
  if (PQgetisnull(r, 0, c0))
    return apex__store_fail(&q->err, APEX_E_INVALID, "store: no task %llu",
                            (unsigned long long)q->id);
  int state = (int)g_int(r, 0, c0);
  if (terminal(state)) return APEX_E_ALREADY;
  if (claim) {
    const char *o = PQgetisnull(r, 0, c0 + 1) ? NULL : PQgetvalue(r, 0, c0 + 1);
    double lease = g_dbl(r, 0, c0 + 2);
    int held_by_other = o && strcmp(o, q->owner) != 0 && lease > q->now;
    if (held_by_other) return APEX_E_ALREADY;
    if (g_int(r, 0, c0 + 3)) return APEX_E_CANCELLED;
  }
  return APEX_E_ALREADY;
}

/* Reads pipelined request q's result r (tuples or command ok). */
static int recv_req(pg_store_t *s, pg_req_t *q, const PGresult *r) {
  switch (q->kind) {
    case K_ALLOC:
      if (PQntuples(r) != 1)
        return apex__store_fail(&q->err, APEX_E_STORE, "store '%s': the id counter is missing",
                                s->name);
      q->out_id = g_u64(r, 0, 0);
      return APEX_OK;
    case K_ENQUEUE: {
      const apex__srec_t *rec = q->rec;
      if (!PQgetisnull(r, 0, 0)) return APEX_OK; /* inserted */
      if (PQgetisnull(r, 0, 1)) {
        /* Not inserted and no key row seen: the id is taken, or another
         * transaction inserted the key meanwhile (then it is visible once
         * this statement is over): decided alone, after this batch. */
        if (rec->idem_key) {
          q->retry_alone = 1;
          return APEX_OK;
        }
        return apex__store_fail(&q->err, APEX_E_INVALID, "store: enqueue: id %llu is taken",
                                (unsigned long long)rec->id);
      }
      q->out_id = g_u64(r, 0, 1);
      const char *p = PQgetvalue(r, 0, 2), *a = PQgetvalue(r, 0, 3);
      const char *pa = PQgetisnull(r, 0, 4) ? "{}" : PQgetvalue(r, 0, 4);
      if (strcmp(p, rec->plugin) == 0 && strcmp(a, rec->action) == 0 &&
          strcmp(pa, rec->params ? rec->params : "{}") == 0)
        return APEX_OK;
      return apex__store_fail(&q->err, APEX_E_INVALID,
                              "idempotency key '%s' was used for another call (task %llu: %s.%s "
                              "with other params)",
                              rec->idem_key, (unsigned long long)q->out_id, p, a);
    }
    case K_DISCARD:
      if (g_int(r, 0, 0) > 0) return APEX_OK;
      if (PQgetisnull(r, 0, 1))
        return apex__store_fail(&q->err, APEX_E_INVALID, "store: no task %llu",
                                (unsigned long long)q->id);
      return APEX_E_ALREADY;
    case K_CLAIM:
      if (PQntuples(r) == 0) q->explain = 1;
      return APEX_OK;
    case K_HEARTBEAT:
      if (PQntuples(r) == 0) return APEX_E_ALREADY;
      return g_int(r, 0, 0) ? APEX_E_CANCELLED : APEX_OK;
    case K_RELEASE:
      return g_int(r, 0, 0) > 0 ? APEX_OK : why_unchanged(s, q, r, 1, 0);
    case K_CANCEL:
      if (g_int(r, 0, 0) > 0) {
        q->out_flag = g_int(r, 0, 1) == APEX_TASK_CANCELLED;
        return APEX_OK;
      }
      if (PQgetisnull(r, 0, 2))
        return apex__store_fail(&q->err, APEX_E_INVALID, "store: no task %llu",
                                (unsigned long long)q->id);
      return APEX_E_ALREADY;
    default:
      return APEX_OK;
  }
}

static int wants_notify(const pg_req_t *q) {
  return q->kind == K_ENQUEUE || q->kind == K_RELEASE || q->kind == K_CANCEL;
}

/* A task that ends within one batch of its start needs one write, not
 * two: a queued claim whose row the same owner finishes later in the
 * batch is skipped, and the finish writes the claim's attempt number (as
 * sqlite.c does). */
#define COALESCE_WINDOW 64

static void coalesce(pg_req_t **v, size_t n) {
  for (size_t j = 0; j < n; j++) {
    pg_req_t *q = v[j];
    if (q->kind != K_FINISH || !q->owner) continue;
    size_t from = j > COALESCE_WINDOW ? j - COALESCE_WINDOW : 0;
    for (size_t i = j; i-- > from;) {
      pg_req_t *c = v[i];
      if (c->kind == K_CLAIM && c->owned && !c->skip && c->id == q->id &&
          strcmp(c->owner, q->owner) == 0) {
        c->skip = 1;
        q->attempt = c->attempt;
        break;
      }
    }
  }
}

/* Reads one pipelined statement's results up to its end: the status of
 * the first (PGRES_FATAL_ERROR, PGRES_PIPELINE_ABORTED, tuples...), the
 * result itself in *out (the caller clears it). */
static ExecStatusType read_one(PGconn *c, PGresult **out) {
  PGresult *r = PQgetResult(c);
  *out = r;
  if (!r) return PGRES_FATAL_ERROR;
  ExecStatusType st = PQresultStatus(r);
  PGresult *more;
  while ((more = PQgetResult(c)) != NULL) PQclear(more); /* up to the NULL that ends it */
  return st;
}

/* How many requests from v[i] go out as one ST_FINISH_MANY: the run of
 * finishes there (ids distinct: an UPDATE changes a row once), up to
 * FINISH_RUN_MAX; 0 when v[i] is no finish. */
#define FINISH_RUN_MAX 128

static size_t finish_run(pg_req_t **v, size_t i, size_t n) {
  size_t j = i;
  while (j < n && j - i < FINISH_RUN_MAX && v[j]->kind == K_FINISH) {
    for (size_t k = i; k < j; k++)
      if (v[k]->id == v[j]->id) return j - i;
    j++;
  }
  return j - i;
}

/* Appends one element of a PostgreSQL array literal: NULL, or the text
 * quoted with its quotes and backslashes escaped. */
static void arr_put_text(apex__strbuf_t *b, const char *t) {
  if (b->n > 1) apex__strbuf_put(b, ",", 1);
  if (!t) {
    apex__strbuf_put(b, "NULL", 4);
    return;
  }
  apex__strbuf_put(b, "\"", 1);
  for (const char *p = t;;) {
    size_t k = strcspn(p, "\"\\");
    apex__strbuf_put(b, p, k);
    p += k;
    if (!*p) break;
    apex__strbuf_put(b, "\\", 1);
    apex__strbuf_put(b, p, 1);
    p++;
  }
  apex__strbuf_put(b, "\"", 1);
}

/* Appends one element already formatted (a number). */
static void arr_put_raw(apex__strbuf_t *b, const char *t, int k) {
  if (b->n > 1) apex__strbuf_put(b, ",", 1);
  apex__strbuf_put(b, t, k > 0 ? (size_t)k : 0);
}

/* Sends v[0..g) (finishes, finish_run) as one ST_FINISH_MANY. Returns 1
 * when sent, 0 when libpq refused it, -1 when out of memory. */
static int send_finish_many(PGconn *c, pg_req_t **v, size_t g) {
  apex__strbuf_t a[9];
  memset(a, 0, sizeof a);
  for (int k = 0; k < 9; k++) apex__strbuf_put(&a[k], "{", 1);
  for (size_t i = 0; i < g; i++) {
    const pg_req_t *q = v[i];
    char t[40];
    arr_put_raw(&a[0], t, snprintf(t, sizeof t, "%llu", (unsigned long long)q->id));
    arr_put_raw(&a[1], t, snprintf(t, sizeof t, "%d", q->state));
    arr_put_raw(&a[2], t, snprintf(t, sizeof t, "%.17g", q->now));
    arr_put_raw(&a[3], t, snprintf(t, sizeof t, "%.17g", q->t1));
    arr_put_text(&a[4], q->s1);
    arr_put_text(&a[5], q->s2);
    arr_put_text(&a[6], q->s3);
    arr_put_text(&a[7], q->owner);
    arr_put_raw(&a[8], t, snprintf(t, sizeof t, "%u", (unsigned)q->attempt));
  }
  int oom = 0;
  params_t p;
  memset(p.v, 0, sizeof p.v);
  for (int k = 0; k < 9; k++) {
    apex__strbuf_put(&a[k], "}", 1);
    oom |= a[k].oom;
    p.v[k] = a[k].p;
  }
  int rc = oom ? -1 : send_prepared(c, ST_FINISH_MANY, &p) ? 1 : 0;
  for (int k = 0; k < 9; k++) free(a[k].p);
  return rc;
}

/* Reads ST_FINISH_MANY's answer for v[0..g): the rows it changed; each
 * other request is explained after the batch (explain_refusal). */
static void recv_finish_many(pg_req_t **v, size_t g, const PGresult *r) {
  int nt = PQntuples(r);
  for (size_t i = 0; i < g; i++) {
    v[i]->rc = APEX_OK;
    v[i]->explain = 1;
  }
  for (int row = 0; row < nt; row++) {
    uint64_t id = g_u64(r, row, 0);
    for (size_t i = 0; i < g; i++)
      if (v[i]->id == id) {
        v[i]->explain = 0;
        break;
      }
  }
}

/* Runs requests v[0..n) as one pipeline: one implicit transaction
 * committed at the sync. Returns APEX_OK when it committed (each request's
 * own answer in its rc), else APEX_E_STORE with the reason in *err (the
 * transaction rolled back; outputs reset by the caller). Writer thread. */
static int run_pipeline(pg_store_t *s, pg_req_t **v, size_t n, char **keys, apex_error_t **err) {
  PGconn *c = s->conn;
  if (!PQenterPipelineMode(c)) return pg_fail(s, c, NULL, err, "enter pipeline mode");
  int notify = 0;
  int *sent = calloc(n ? n : 1, sizeof *sent);
  if (!sent) {
    PQexitPipelineMode(c);
    return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  }
  int ok = 1;
  /* sent[i]: how many requests from v[i] the statement sent there
   * answers (0: none sent there). */
  for (size_t i = 0; ok && i < n; i++) {
    size_t g = finish_run(v, i, n);
    if (g > 0) {
      int r = send_finish_many(c, &v[i], g);
      if (r < 0) {
        free(sent);
        PQexitPipelineMode(c);
        return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
      }
      if (r == 0) ok = 0;
      sent[i] = (int)g;
      i += g - 1;
      continue;
    }
    params_t p;
    memset(p.v, 0, sizeof p.v);
    int st = bind_req(v[i], &p, &keys[i]);
    if (st < 0) continue;
    if (!send_prepared(c, st, &p)) ok = 0;
    sent[i] = 1;
    if (wants_notify(v[i])) notify = 1;
  }
  if (ok && notify) {
    params_t none;
    if (!send_prepared(c, ST_NOTIFY, &none)) ok = 0;
  }
  if (ok && !PQpipelineSync(c)) ok = 0;
  if (!ok) {
    int rc = pg_fail(s, c, NULL, err, "send a batch");
    free(sent);
    /* The connection is in an unknown state: drop it, the next batch
     * reconnects. */
    PQfinish(s->conn);
    s->conn = NULL;
    snprintf(s->conn_err, sizeof s->conn_err, "%s", err && *err ? apex_error_message(*err) : "");
    return rc;
  }
  int failed = 0;
  apex_error_t *why = NULL;
  for (size_t i = 0; i < n + (size_t)notify; i += i < n && sent[i] ? (size_t)sent[i] : 1) {
    if (i < n && !sent[i]) continue;
    PGresult *r;
    ExecStatusType st = read_one(c, &r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
      if (i < n && !failed && v[i]->kind == K_FINISH) recv_finish_many(&v[i], (size_t)sent[i], r);
      else if (i < n && !failed) v[i]->rc = recv_req(s, v[i], r);
    } else if (!failed) {
      failed = 1;
      pg_fail(s, c, r, &why, "write a batch");
    }
    PQclear(r);
    if (!r && PQstatus(c) == CONNECTION_BAD) break;
  }
  free(sent);
  /* The sync's own result, then the end of the pipeline. */
  if (PQstatus(c) == CONNECTION_OK) {
    PGresult *r = PQgetResult(c);
    if (!r || PQresultStatus(r) != PGRES_PIPELINE_SYNC) {
      if (!failed) {
        failed = 1;
        pg_fail(s, c, r, &why, "commit a batch");
      }
    }
    PQclear(r);
  }
  if (PQstatus(c) != CONNECTION_OK || !PQexitPipelineMode(c)) {
    if (!failed) pg_fail(s, c, NULL, &why, "commit a batch");
    failed = 1;
    snprintf(s->conn_err, sizeof s->conn_err, "%s", why ? apex_error_message(why) : "");
    PQfinish(s->conn);
    s->conn = NULL;
  }
  if (failed) {
    if (err) *err = why;
    else apex_error_unref(why);
    return APEX_E_STORE;
  }
  return APEX_OK;
}

/* ------------------------------------------------------------ solo runs */

/* Runs prepared statement st with n text parameters; *out the result
 * (tuples or command ok), else APEX_E_STORE. */
static int exec_st(pg_store_t *s, int st, int n, const char *const *v, PGresult **out,
                   apex_error_t **err, const char *what) {
  char name[16];
  snprintf(name, sizeof name, "apex%d", st);
  PGresult *r = PQexecPrepared(s->conn, name, n, v, NULL, NULL, 0);
  ExecStatusType t = PQresultStatus(r);
  if (t != PGRES_TUPLES_OK && t != PGRES_COMMAND_OK) {
    int rc = pg_fail(s, s->conn, r, err, what);
    PQclear(r);
    *out = NULL;
    return rc;
  }
  *out = r;
  return APEX_OK;
}

static int exec_sql(pg_store_t *s, const char *sql, apex_error_t **err, const char *what) {
  PGresult *r = PQexec(s->conn, sql);
  ExecStatusType t = PQresultStatus(r);
  int rc = t == PGRES_COMMAND_OK || t == PGRES_TUPLES_OK ? APEX_OK
                                                         : pg_fail(s, s->conn, r, err, what);
  PQclear(r);
  return rc;
}

static int by_due_then_id(const void *a, const void *b) {
  const apex__srec_t *x = a, *y = b;
  double dx = x->run_at > 0 ? x->run_at : x->created_at;
  double dy = y->run_at > 0 ? y->run_at : y->created_at;
  if (dx != dy) return dx < dy ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* Appends id to a growing array. */
static int push_id(uint64_t **a, size_t *n, size_t *cap, uint64_t id) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    uint64_t *na = realloc(*a, c * sizeof *na);
    if (!na) return APEX_E_NOMEM;
    *a = na;
    *cap = c;
  }
  (*a)[(*n)++] = id;
  return APEX_OK;
}

/* ids as a PostgreSQL array literal, a new string. */
static char *id_array(const uint64_t *ids, size_t n) {
  char *t = malloc(n * 21 + 3);
  if (!t) return NULL;
  size_t off = 0;
  t[off++] = '{';
  for (size_t i = 0; i < n; i++)
    off += (size_t)sprintf(t + off, "%s%llu", i ? "," : "", (unsigned long long)ids[i]);
  t[off++] = '}';
  t[off] = '\0';
  return t;
}

/* claim_next with limits, in a transaction: the advisory lock makes the
 * limited claims of every owner take turns, so the counts each reads are
 * exact; the rows it may take are read in (due, id) order with the full
 * scopes excluded, admitted one by one, then taken in one UPDATE. */
static int claim_limited(pg_store_t *s, pg_req_t *q) {
  apex__slimacct_t *acct = apex__slimacct_new(q->limits, q->nlimits);
  if (!acct) return apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
  uint64_t *ids = NULL;
  size_t nids = 0, cap = 0;
  params_t p;
  PGresult *r = NULL;
  int rc = exec_sql(s, "BEGIN", &q->err, "claim_next");
  int begun = rc == APEX_OK;
  if (rc == APEX_OK)
    rc = exec_sql(s, "SELECT pg_advisory_xact_lock(" PG_LOCK_LIMITS ")", &q->err, "claim_next");
  if (rc == APEX_OK) {
    p_dbl(&p, 0, q->now);
    rc = exec_st(s, ST_RUNNING, 1, p.v, &r, &q->err, "claim_next");
  }
  for (int i = 0; rc == APEX_OK && i < PQntuples(r); i++)
    if (apex__slimacct_add(acct, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                           PQgetisnull(r, i, 2) ? NULL : PQgetvalue(r, i, 2),
                           g_u64(r, i, 3)) != APEX_OK)
      rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
  PQclear(r);
  r = NULL;
  size_t chunk = q->max + 64;
  double last_due = -1e300;
  uint64_t last_id = 0;
  while (rc == APEX_OK && nids < q->max && !apex__slimacct_global_full(acct)) {
    char *fp, *fa, *fk;
    if (apex__slimacct_full_json(acct, &fp, &fa, &fk) != APEX_OK) {
      rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      break;
    }
    p_str(&p, 0, q->owner);
    p_dbl(&p, 1, q->now);
    p_dbl(&p, 2, last_due);
    p_u64(&p, 3, last_id);
    p_str(&p, 4, fp);
    p_str(&p, 5, fa);
    p_str(&p, 6, fk);
    p_u64(&p, 7, chunk);
    rc = exec_st(s, ST_CANDIDATES, 8, p.v, &r, &q->err, "claim_next");
    free(fp);
    free(fa);
    free(fk);
    if (rc != APEX_OK) break;
    int nt = PQntuples(r);
    for (int i = 0; rc == APEX_OK && i < nt && nids < q->max; i++) {
      last_id = g_u64(r, i, 0);
      last_due = g_dbl(r, i, 4);
      int ad = apex__slimacct_admit(acct, PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                                    PQgetisnull(r, i, 3) ? NULL : PQgetvalue(r, i, 3));
      if (ad < 0 || (ad > 0 && push_id(&ids, &nids, &cap, last_id) != APEX_OK))
        rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
    }
    PQclear(r);
    r = NULL;
    if ((size_t)nt < chunk) break; /* no due row left */
  }
  if (rc == APEX_OK && nids) {
    char *arr = id_array(ids, nids);
    if (!arr) {
      rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
    } else {
      p_str(&p, 0, q->owner);
      p_dbl(&p, 1, q->now);
      p_dbl(&p, 2, q->t1);
      p_str(&p, 3, arr);
      rc = exec_st(s, ST_TAKE, 4, p.v, &r, &q->err, "claim_next");
      free(arr);
      if (rc == APEX_OK && read_rows(r, &q->out_recs, &q->out_n) != APEX_OK)
        rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      PQclear(r);
    }
  }
  if (rc == APEX_OK) rc = exec_sql(s, "COMMIT", &q->err, "claim_next");
  else if (begun && PQstatus(s->conn) == CONNECTION_OK) (void)exec_sql(s, "ROLLBACK", NULL, "");
  free(ids);
  apex__slimacct_free(acct);
  if (rc != APEX_OK) {
    apex__srec_free_array(q->out_recs, q->out_n);
    q->out_recs = NULL;
    q->out_n = 0;
  }
  return rc;
}

static int run_recover(pg_store_t *s, pg_req_t *q) {
  params_t p;
  PGresult *r = NULL;
  uint64_t *ids = NULL;
  size_t nids = 0, cap = 0;
  apex__srec_t *all = NULL;
  size_t nall = 0;
  int rc = exec_sql(s, "BEGIN", &q->err, "recover");
  int begun = rc == APEX_OK;
  if (rc == APEX_OK) {
    p_int(&p, 0, q->is_dead ? 1 : 0);
    p_dbl(&p, 1, q->now);
    rc = exec_st(s, ST_LIVE, 2, p.v, &r, &q->err, "recover");
  }
  if (rc == APEX_OK && read_rows(r, &all, &nall) != APEX_OK)
    rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
  PQclear(r);
  r = NULL;
  /* Kept: the rows taken, as they were. */
  size_t k = 0;
  for (size_t i = 0; rc == APEX_OK && i < nall; i++) {
    apex__srec_t *x = &all[i];
    int take = !x->owner || x->lease_until <= q->now || (q->is_dead && q->is_dead(x->owner, q->user));
    if (!take) {
      apex__srec_clear(x);
      continue;
    }
    if (push_id(&ids, &nids, &cap, x->id) != APEX_OK) {
      rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      break;
    }
    if (k != i) {
      all[k] = *x;
      memset(x, 0, sizeof *x);
    }
    k++;
  }
  if (rc == APEX_OK && nids) {
    char *arr = id_array(ids, nids);
    if (!arr) {
      rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
    } else {
      p_str(&p, 0, q->owner);
      p_dbl(&p, 1, q->t1);
      p_dbl(&p, 2, q->now);
      p_str(&p, 3, arr);
      rc = exec_st(s, ST_RETAKE, 4, p.v, &r, &q->err, "recover");
      PQclear(r);
      free(arr);
    }
  }
  if (rc == APEX_OK) rc = exec_sql(s, "COMMIT", &q->err, "recover");
  else if (begun && PQstatus(s->conn) == CONNECTION_OK) (void)exec_sql(s, "ROLLBACK", NULL, "");
  free(ids);
  if (rc != APEX_OK) {
    apex__srec_free_array(all, nall);
    return rc;
  }
  if (k == 0) {
    free(all);
    all = NULL;
  }
  q->out_recs = all;
  q->out_n = k;
  return APEX_OK;
}

/* Why a claim or finish changed nothing (its batch committed without
 * it): the row as it is now. */
static int explain_refusal(pg_store_t *s, pg_req_t *q) {
  params_t p;
  PGresult *r;
  p_u64(&p, 0, q->id);
  int rc = exec_st(s, ST_HEAD, 1, p.v, &r, &q->err, q->kind == K_CLAIM ? "claim" : "finish");
  if (rc != APEX_OK) return rc;
  if (PQntuples(r) == 0) rc = apex__store_fail(&q->err, APEX_E_INVALID, "store: no task %llu",
                                               (unsigned long long)q->id);
  else rc = why_unchanged(s, q, r, 0, q->kind == K_CLAIM);
  PQclear(r);
  return rc;
}

/* An enqueue whose key raced with another transaction's: that row is
 * visible now. */
static int enqueue_again(pg_store_t *s, pg_req_t *q) {
  const apex__srec_t *rec = q->rec;
  params_t p;
  PGresult *r;
  p_str(&p, 0, rec->idem_key);
  int rc = exec_st(s, ST_FIND_KEY, 1, p.v, &r, &q->err, "enqueue");
  if (rc != APEX_OK) return rc;
  uint64_t id = PQntuples(r) ? g_u64(r, 0, 0) : 0;
  PQclear(r);
  if (!id)
    return apex__store_fail(&q->err, APEX_E_INVALID, "store: enqueue: id %llu is taken",
                            (unsigned long long)rec->id);
  p_u64(&p, 0, id);
  rc = exec_st(s, ST_GET, 1, p.v, &r, &q->err, "enqueue");
  if (rc != APEX_OK) return rc;
  q->out_id = id;
  if (PQntuples(r) == 1) {
    const char *pl = PQgetvalue(r, 0, 1), *ac = PQgetvalue(r, 0, 2);
    const char *pa = PQgetisnull(r, 0, 4) ? "{}" : PQgetvalue(r, 0, 4);
    if (!(strcmp(pl, rec->plugin) == 0 && strcmp(ac, rec->action) == 0 &&
          strcmp(pa, rec->params ? rec->params : "{}") == 0))
      rc = apex__store_fail(&q->err, APEX_E_INVALID,
                            "idempotency key '%s' was used for another call (task %llu: %s.%s "
                            "with other params)",
                            rec->idem_key, (unsigned long long)id, pl, ac);
  }
  PQclear(r);
  return rc;
}

/* Runs a solo request (reads, multi-step writes). */
static int run_solo(pg_store_t *s, pg_req_t *q) {
  params_t p;
  PGresult *r = NULL;
  int rc;
  switch (q->kind) {
    case K_GET:
      p_u64(&p, 0, q->id);
      rc = exec_st(s, ST_GET, 1, p.v, &r, &q->err, "read a task");
      if (rc != APEX_OK) return rc;
      if (PQntuples(r) == 0) {
        PQclear(r);
        return apex__store_fail(&q->err, APEX_E_INVALID, "store: no task %llu",
                                (unsigned long long)q->id);
      }
      q->out_recs = calloc(1, sizeof *q->out_recs);
      if (!q->out_recs || read_row(r, 0, 0, q->out_recs) != APEX_OK) {
        free(q->out_recs);
        q->out_recs = NULL;
        PQclear(r);
        return apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      }
      q->out_n = 1;
      if (!PQgetisnull(r, 0, NCOLS) && !(q->out_recs->events = strdup(PQgetvalue(r, 0, NCOLS))))
        rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      PQclear(r);
      return rc;
    case K_FIND_KEY:
      p_str(&p, 0, q->s1);
      rc = exec_st(s, ST_FIND_KEY, 1, p.v, &r, &q->err, "find an idempotency key");
      if (rc == APEX_OK) q->out_id = PQntuples(r) ? g_u64(r, 0, 0) : 0;
      PQclear(r);
      return rc;
    case K_LIST: {
      const apex__sfilter_t *f = q->filter;
      p_u64(&p, 0, f->after_id);
      p_int(&p, 1, (long long)f->states);
      p_str(&p, 2, f->plugin);
      p_str(&p, 3, f->action);
      p_dbl(&p, 4, f->created_min);
      p_dbl(&p, 5, f->created_max);
      p_u64(&p, 6, f->limit);
      unsigned live = 1u << APEX_TASK_QUEUED | 1u << APEX_TASK_RUNNING |
                      1u << APEX_TASK_RETRY_WAIT | 1u << APEX_TASK_SCHEDULED;
      int only_live = f->states && (f->states & ~live) == 0;
      rc = exec_st(s, only_live ? ST_LIST_LIVE : ST_LIST, 7, p.v, &r, &q->err, "list tasks");
      if (rc == APEX_OK && read_rows(r, &q->out_recs, &q->out_n) != APEX_OK)
        rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      PQclear(r);
      return rc;
    }
    case K_CLAIM_NEXT:
      if (q->nlimits) return claim_limited(s, q);
      p_str(&p, 0, q->owner);
      p_dbl(&p, 1, q->now);
      p_dbl(&p, 2, q->t1);
      p_u64(&p, 3, q->max);
      rc = exec_st(s, ST_CLAIM_NEXT, 4, p.v, &r, &q->err, "claim_next");
      if (rc == APEX_OK && read_rows(r, &q->out_recs, &q->out_n) != APEX_OK)
        rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
      PQclear(r);
      if (rc == APEX_OK && q->out_n > 1)
        qsort(q->out_recs, q->out_n, sizeof *q->out_recs, by_due_then_id);
      return rc;
    case K_RECOVER:
      return run_recover(s, q);
    case K_CANCEL_REQS:
      p_str(&p, 0, q->owner);
      rc = exec_st(s, ST_CANCEL_REQS, 1, p.v, &r, &q->err, "read cancel requests");
      if (rc == APEX_OK && PQntuples(r) > 0) {
        q->out_ids = malloc((size_t)PQntuples(r) * sizeof *q->out_ids);
        if (!q->out_ids) rc = apex__store_fail(&q->err, APEX_E_NOMEM, "out of memory");
        for (int i = 0; rc == APEX_OK && i < PQntuples(r); i++) q->out_ids[i] = g_u64(r, i, 0);
        if (rc == APEX_OK) q->out_n = (size_t)PQntuples(r);
      }
      PQclear(r);
      return rc;
    case K_PURGE:
      p_dbl(&p, 0, q->t1);
      rc = exec_st(s, ST_PURGE, 1, p.v, &r, &q->err, "purge");
      if (rc == APEX_OK) q->out_n = (size_t)g_u64(r, 0, 0);
      PQclear(r);
      return rc;
    default:
      return APEX_OK;
  }
}

/* ------------------------------------------------------------ the writer */

static void req_free_owned(pg_req_t *q) {
  free(q->owner);
  free(q->s1);
  free(q->s2);
  free(q->s3);
  free(q);
}

/* Fails every request of v[0..n) with (a copy of) e's message. */
static void fail_all(pg_store_t *s, pg_req_t **v, size_t n, const apex_error_t *e) {
  for (size_t i = 0; i < n; i++) {
    reset_out(v[i]);
    v[i]->rc = apex__store_fail(&v[i]->err, APEX_E_STORE, "%s",
                                e ? apex_error_message(e) : "store: write failed");
  }
  (void)s;
}

/* Runs v[0..n) as one pipeline. If it fails as a whole on a live
 * connection (the transaction was rolled back: a deadlock, the disk
 * full), each runs again alone, so only the one that cannot be written
 * fails. If the connection was lost, all fail: whether the commit landed
 * is unknown, and running them again could apply them twice. */
static void run_group(pg_store_t *s, pg_req_t **v, size_t n) {
  if (n == 0) return;
  /* The keys of enqueues, made here once (a rerun reuses them). */
  char *keys[PG_PIPELINE_MAX] = {0};
  for (size_t i = 0; i < n; i++)
    if (v[i]->kind == K_ENQUEUE) {
      int bad = 0;
      keys[i] = apex__sopts_ckey(v[i]->rec->opts, &bad);
      (void)bad; /* no memory for the key: the row is stored without it */
    }
  coalesce(v, n);
  apex_error_t *e = NULL;
  if (ensure_conn(s) != APEX_OK) {
    for (size_t i = 0; i < n; i++) fail_down(s, v[i]);
  } else if (run_pipeline(s, v, n, keys, &e) != APEX_OK) {
    if (!s->conn || n == 1) {
      fail_all(s, v, n, e);
    } else {
      for (size_t i = 0; i < n; i++) {
        reset_out(v[i]);
        v[i]->skip = 0;
      }
      for (size_t i = 0; i < n; i++) {
        if (ensure_conn(s) != APEX_OK) {
          fail_down(s, v[i]);
          continue;
        }
        apex_error_t *e1 = NULL;
        if (run_pipeline(s, &v[i], 1, &keys[i], &e1) != APEX_OK) fail_all(s, &v[i], 1, e1);
        apex_error_unref(e1);
      }
    }
  }
  apex_error_unref(e);
  for (size_t i = 0; i < n; i++) {
    free(keys[i]);
    if (v[i]->retry_alone && v[i]->rc == APEX_OK) {
      v[i]->retry_alone = 0;
      if (ensure_conn(s) == APEX_OK) v[i]->rc = enqueue_again(s, v[i]);
      else fail_down(s, v[i]);
    }
    if (v[i]->explain && v[i]->rc == APEX_OK) {
      v[i]->explain = 0;
      if (ensure_conn(s) == APEX_OK) v[i]->rc = explain_refusal(s, v[i]);
      else fail_down(s, v[i]);
    }
  }
}

static void run_one_solo(pg_store_t *s, pg_req_t *q) {
  if (ensure_conn(s) != APEX_OK) {
    fail_down(s, q);
    return;
  }
  q->rc = run_solo(s, q);
  if (q->rc != APEX_OK && s->conn && PQstatus(s->conn) != CONNECTION_OK)
    snprintf(s->conn_err, sizeof s->conn_err, "%s", q->err ? apex_error_message(q->err) : "");
}

/* Runs a list in order: the pipelined requests between solo ones
 * together, each solo one alone. */
static void run_batch(pg_store_t *s, pg_req_t *list) {
  pg_req_t *v[PG_PIPELINE_MAX];
  size_t n = 0;
  for (pg_req_t *q = list; q; q = q->next) {
    q->rc = APEX_OK;
    if (K_SOLO(q->kind)) {
      run_group(s, v, n);
      n = 0;
      run_one_solo(s, q);
      continue;
    }
    if (q->kind == K_SYNC) continue;
    v[n++] = q;
    if (n == PG_PIPELINE_MAX) {
      run_group(s, v, n);
      n = 0;
    }
  }
  run_group(s, v, n);
}

/* Hands batch k's results back: frees what nobody waits for (keeping the
 * first async failure for sync()), then wakes its waiters. */
static void batch_done(pg_store_t *s, pg_req_t *list, uint32_t k) {
  int waiters = 0;
  pthread_mutex_lock(&s->mu);
  for (pg_req_t *q = list, *next; q; q = next) {
    next = q->next;
    if (q->owned) {
      if (q->rc != APEX_OK && q->rc != APEX_E_ALREADY && q->rc != APEX_E_CANCELLED &&
          !s->async_err) {
        s->async_err = q->err;
        q->err = NULL;
      }
      apex_error_unref(q->err);
      req_free_owned(q);
    } else {
      waiters = 1;
    }
  }
  pthread_mutex_unlock(&s->mu);
  /* No request of the list is touched past this: a waiter's is gone once
   * it sees k. */
  apex__sbatch_done(&s->done, k, waiters);
}

static void *writer_main(void *arg) {
  pg_store_t *s = arg;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    while (!s->head && !s->stop) pthread_cond_wait(&s->cv, &s->mu);
    pg_req_t *list = s->head;
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
static int submit(pg_store_t *s, pg_req_t *q, int wait, apex_error_t **err) {
  q->owned = !wait;
  q->next = NULL;
  pthread_mutex_lock(&s->mu);
  if (s->stop) {
    pthread_mutex_unlock(&s->mu);
    /* Tested on wait, not q->owned: a waiter's q is the caller's (often on
     * its stack), which the compiler can then see is never freed here. */
    if (!wait) req_free_owned(q);
    return apex__store_fail(err, APEX_E_STORE, "store '%s': closed", s->name);
  }
  if (s->tail) s->tail->next = q;
  else s->head = q;
  s->tail = q;
  uint32_t k = q->batch = s->taken + 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (!wait) return APEX_OK;
  apex__sbatch_wait(&s->done, k);
  if (q->err) {
    if (err) *err = q->err;
    else apex_error_unref(q->err);
    q->err = NULL;
  }
  return q->rc;
}

/* A request for a write with wait 0: the strings copied into it. */
static pg_req_t *owned_req(const char *owner, const char *s1, const char *s2, const char *s3) {
  pg_req_t *q = calloc(1, sizeof *q);
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

/* ------------------------------------------------------------ the listener */

/* Connects the listener and LISTENs. Listener thread. */
static int listener_connect(pg_store_t *s, char *why, size_t n) {
  apex_error_t *e = NULL;
  PGconn *c = connect_db(s, &e);
  if (!c) {
    snprintf(why, n, "%s", apex_error_message(e));
    apex_error_unref(e);
    return -1;
  }
  PGresult *r = PQexec(c, "LISTEN " PG_CHANNEL);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  if (!ok) {
    char msg[400];
    one_line(PQresultErrorMessage(r), msg, sizeof msg);
    snprintf(why, n, "store '%s': LISTEN: %s", s->name, msg);
  }
  PQclear(r);
  if (!ok || PQsetnonblocking(c, 1) != 0) {
    if (ok) snprintf(why, n, "store '%s': the listener cannot be made non-blocking", s->name);
    PQfinish(c);
    return -1;
  }
  s->lconn = c;
  return 0;
}

static void listener_state(pg_store_t *s, int down, const char *why) {
  pthread_mutex_lock(&s->lmu);
  s->ldown = down;
  if (down) snprintf(s->lerr, sizeof s->lerr, "%s", why);
  pthread_mutex_unlock(&s->lmu);
  apex__swake_signal(&s->wk); /* up: what came meanwhile is unknown; down: say so */
}

/* Waits up to ms on the listener's socket (or -1: none) and the stop
 * eventfd. Returns 1 when stopped. */
static int listener_poll(pg_store_t *s, int sock, int ms) {
  struct pollfd fds[2] = {{.fd = s->lfd, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
  int rc = poll(fds, sock >= 0 ? 2 : 1, ms);
  if (rc > 0 && (fds[0].revents & POLLIN)) return 1;
  return 0;
}

static void *listener_main(void *arg) {
  pg_store_t *s = arg;
  double backoff = 0;
  char why[512];
  for (;;) {
    pthread_mutex_lock(&s->lmu);
    int stop = s->lstop;
    pthread_mutex_unlock(&s->lmu);
    if (stop) break;
    if (!s->lconn) {
      if (listener_connect(s, why, sizeof why) != 0) {
        listener_state(s, 1, why);
        backoff = backoff <= 0 ? PG_BACKOFF_MIN : backoff * 2;
        if (backoff > PG_BACKOFF_MAX) backoff = PG_BACKOFF_MAX;
        if (listener_poll(s, -1, (int)(backoff * 1000))) break;
        continue;
      }
      backoff = 0;
      listener_state(s, 0, "");
    }
    /* A slow poll too: a notification lost with a connection is made up
     * for by the callers' own timeouts; this one only notices a dead
     * socket (keepalives) in time. */
    if (listener_poll(s, PQsocket(s->lconn), 10000)) break;
    int got = 0;
    if (!PQconsumeInput(s->lconn)) {
      char msg[400];
      one_line(PQerrorMessage(s->lconn), msg, sizeof msg);
      snprintf(why, sizeof why, "store '%s': the listener's connection was lost: %s", s->name,
               msg);
      PQfinish(s->lconn);
      s->lconn = NULL;
      listener_state(s, 1, why);
      continue;
    }
    PGnotify *nf;
    while ((nf = PQnotifies(s->lconn)) != NULL) {
      got = 1;
      PQfreemem(nf);
    }
    if (got) apex__swake_signal(&s->wk);
  }
  if (s->lconn) PQfinish(s->lconn);
  s->lconn = NULL;
  return NULL;
}

/* ------------------------------------------------------------ the ops */

static int pg_alloc_ids(apex__store_t *st, uint64_t n, uint64_t *first, apex_error_t **err) {
  pg_req_t q = {.kind = K_ALLOC, .n = n};
  int rc = submit(P(st), &q, 1, err);
  *first = q.out_id;
  return rc;
}

static int pg_enqueue(apex__store_t *st, const apex__srec_t *r, uint64_t *existing_id,
                      apex_error_t **err) {
  pg_req_t q = {.kind = K_ENQUEUE, .rec = r};
  *existing_id = 0;
  if (r->id == 0 || !r->plugin || !r->action)
    return apex__store_fail(err, APEX_E_INVALID, "store: enqueue: a row needs id, plugin, action");
  int rc = submit(P(st), &q, 1, err);
  *existing_id = q.out_id;
  if (rc == APEX_OK && !q.out_id) apex__swake_signal(&P(st)->wk);
  return rc;
}

static int pg_discard(apex__store_t *st, uint64_t id, apex_error_t **err) {
  pg_req_t q = {.kind = K_DISCARD, .id = id};
  return submit(P(st), &q, 1, err);
}

static int pg_claim(apex__store_t *st, uint64_t id, const char *owner, uint32_t attempt,
                    double now, double lease_until, int wait, apex_error_t **err) {
  if (wait) {
    pg_req_t q = {.kind = K_CLAIM, .id = id, .owner = (char *)owner, .attempt = attempt,
                  .now = now, .t1 = lease_until};
    return submit(P(st), &q, 1, err);
  }
  pg_req_t *q = owned_req(owner, NULL, NULL, NULL);
  if (!q) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  q->kind = K_CLAIM;
  q->id = id;
  q->attempt = attempt;
  q->now = now;
  q->t1 = lease_until;
  return submit(P(st), q, 0, err);
}

static int pg_claim_next(apex__store_t *st, const char *owner, double now, double lease_until,
                         size_t max, const apex__slimit_t *limits, size_t nlimits,
                         apex__srec_t **out, size_t *n, apex_error_t **err) {
  pg_req_t q = {.kind = K_CLAIM_NEXT, .owner = (char *)owner, .now = now, .t1 = lease_until,
                .max = max, .limits = limits, .nlimits = limits ? nlimits : 0};
  *out = NULL;
  *n = 0;
  if (max == 0) return APEX_OK;
  int rc = submit(P(st), &q, 1, err);
  if (rc == APEX_OK) {
    *out = q.out_recs;
    *n = q.out_n;
  }
  return rc;
}

static int pg_release(apex__store_t *st, uint64_t id, const char *owner, double now,
                      apex_error_t **err) {
  if (!owner) return APEX_E_ALREADY;
  pg_req_t q = {.kind = K_RELEASE, .id = id, .owner = (char *)owner, .now = now};
  int rc = submit(P(st), &q, 1, err);
  if (rc == APEX_OK) apex__swake_signal(&P(st)->wk);
  return rc;
}

static int pg_heartbeat(apex__store_t *st, uint64_t id, const char *owner, double now,
                        double lease_until, const char *checkpoint, const char *progress,
                        int wait, apex_error_t **err) {
  if (wait) {
    pg_req_t q = {.kind = K_HEARTBEAT, .id = id, .owner = (char *)owner, .now = now,
                  .t1 = lease_until, .s1 = (char *)checkpoint, .s2 = (char *)progress};
    return submit(P(st), &q, 1, err);
  }
  pg_req_t *q = owned_req(owner, checkpoint, progress, NULL);
  if (!q) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  q->kind = K_HEARTBEAT;
  q->id = id;
  q->now = now;
  q->t1 = lease_until;
  return submit(P(st), q, 0, err);
}

static int pg_finish(apex__store_t *st, uint64_t id, const char *owner, int state, double now,
                     double run_at, const char *result, const char *error, const char *partial,
                     int wait, apex_error_t **err) {
  if (wait) {
    pg_req_t q = {.kind = K_FINISH, .id = id, .owner = (char *)owner, .state = state,
                  .now = now, .t1 = run_at, .s1 = (char *)result, .s2 = (char *)error,
                  .s3 = (char *)partial};
    return submit(P(st), &q, 1, err);
  }
  pg_req_t *q = owned_req(owner, result, error, partial);
  if (!q) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  q->kind = K_FINISH;
  q->id = id;
  q->state = state;
  q->now = now;
  q->t1 = run_at;
  return submit(P(st), q, 0, err);
}

static int pg_request_cancel(apex__store_t *st, uint64_t id, const char *reason, double now,
                             int *ended, apex_error_t **err) {
  *ended = 0;
  char *e = apex__store_cancel_error(reason);
  if (!e) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  pg_req_t q = {.kind = K_CANCEL, .id = id, .s1 = (char *)(reason ? reason : "user"), .s2 = e,
                .now = now};
  int rc = submit(P(st), &q, 1, err);
  free(e);
  *ended = q.out_flag;
  if (rc == APEX_OK) apex__swake_signal(&P(st)->wk);
  return rc;
}

static int pg_get(apex__store_t *st, uint64_t id, apex__srec_t *out, apex_error_t **err) {
  pg_req_t q = {.kind = K_GET, .id = id};
  memset(out, 0, sizeof *out);
  int rc = submit(P(st), &q, 1, err);
  if (rc == APEX_OK && q.out_recs) {
    *out = q.out_recs[0];
    free(q.out_recs);
  } else {
    apex__srec_free_array(q.out_recs, q.out_n);
  }
  return rc;
}

static int pg_find_key(apex__store_t *st, const char *key, uint64_t *id, apex_error_t **err) {
  pg_req_t q = {.kind = K_FIND_KEY, .s1 = (char *)key};
  int rc = submit(P(st), &q, 1, err);
  *id = rc == APEX_OK ? q.out_id : 0;
  return rc;
}

static int pg_list(apex__store_t *st, const apex__sfilter_t *f, apex__srec_t **out, size_t *n,
                   apex_error_t **err) {
  pg_req_t q = {.kind = K_LIST, .filter = f};
  *out = NULL;
  *n = 0;
  int rc = submit(P(st), &q, 1, err);
  if (rc == APEX_OK) {
    *out = q.out_recs;
    *n = q.out_n;
  } else {
    apex__srec_free_array(q.out_recs, q.out_n);
  }
  return rc;
}

static int pg_recover(apex__store_t *st, const char *owner, double now, double lease_until,
                      apex__owner_dead_fn is_dead, void *user, apex__srec_t **out, size_t *n,
                      apex_error_t **err) {
  pg_req_t q = {.kind = K_RECOVER, .owner = (char *)owner, .now = now, .t1 = lease_until,
                .is_dead = is_dead, .user = user};
  *out = NULL;
  *n = 0;
  int rc = submit(P(st), &q, 1, err);
  if (rc == APEX_OK) {
    *out = q.out_recs;
    *n = q.out_n;
  }
  return rc;
}

static int pg_renew(apex__store_t *st, const char *owner, double lease_until,
                    apex_error_t **err) {
  pg_req_t q = {.kind = K_RENEW, .owner = (char *)owner, .t1 = lease_until};
  return submit(P(st), &q, 1, err);
}

static int pg_cancel_requests(apex__store_t *st, const char *owner, uint64_t **ids, size_t *n,
                              apex_error_t **err) {
  pg_req_t q = {.kind = K_CANCEL_REQS, .owner = (char *)owner};
  *ids = NULL;
  *n = 0;
  int rc = submit(P(st), &q, 1, err);
  if (rc == APEX_OK) {
    *ids = q.out_ids;
    *n = q.out_n;
  } else {
    free(q.out_ids);
  }
  return rc;
}

static int pg_purge(apex__store_t *st, double before, size_t *n, apex_error_t **err) {
  pg_req_t q = {.kind = K_PURGE, .t1 = before};
  int rc = submit(P(st), &q, 1, err);
  *n = rc == APEX_OK ? q.out_n : 0;
  return rc;
}

static int pg_sync(apex__store_t *st, apex_error_t **err) {
  pg_store_t *s = P(st);
  pg_req_t q = {.kind = K_SYNC};
  int rc = submit(s, &q, 1, err);
  if (rc != APEX_OK) return rc;
  pthread_mutex_lock(&s->mu);
  apex_error_t *e = s->async_err;
  s->async_err = NULL;
  pthread_mutex_unlock(&s->mu);
  if (e) return apex__error_put(err, e);
  return APEX_OK;
}

static int pg_wait_work(apex__store_t *st, double timeout_s, apex_error_t **err) {
  pg_store_t *s = P(st);
  pthread_mutex_lock(&s->lmu);
  if (!s->lstarted) {
    if (pthread_create(&s->lthread, NULL, listener_main, s) != 0) {
      pthread_mutex_unlock(&s->lmu);
      return apex__store_fail(err, APEX_E_STORE, "store '%s': cannot start its listener: %s",
                              s->name, strerror(errno));
    }
    s->lstarted = 1;
  }
  pthread_mutex_unlock(&s->lmu);
  apex__swake_wait(&s->wk, timeout_s);
  pthread_mutex_lock(&s->lmu);
  int down = s->ldown;
  char why[512];
  snprintf(why, sizeof why, "%s", s->lerr);
  pthread_mutex_unlock(&s->lmu);
  if (down) return apex__store_fail(err, APEX_E_STORE, "%s", why);
  return APEX_OK;
}

static void pg_wake(apex__store_t *st) { apex__swake_signal(&P(st)->wk); }

static void pg_free(pg_store_t *s) {
  if (s->conn) PQfinish(s->conn);
  apex_error_unref(s->async_err);
  for (size_t i = 0; s->keys && s->keys[i]; i++) {
    free(s->keys[i]);
    free(s->vals[i]);
  }
  free(s->keys);
  free(s->vals);
  if (s->lfd >= 0) close(s->lfd);
  if (s->wk_ok) apex__swake_destroy(&s->wk);
  pthread_mutex_destroy(&s->lmu);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s->name);
  free(s->base.uri);
  free(s);
}

static void pg_close(apex__store_t *st) {
  pg_store_t *s = P(st);
  if (s->thread_started) {
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
  }
  pthread_mutex_lock(&s->lmu);
  int started = s->lstarted;
  s->lstop = 1;
  pthread_mutex_unlock(&s->lmu);
  if (started) {
    uint64_t one = 1;
    ssize_t w = write(s->lfd, &one, sizeof one);
    (void)w; /* an eventfd write of 1 cannot fail short of overflow */
    pthread_join(s->lthread, NULL);
  }
  pg_free(s);
}

static const apex__store_ops_t pg_ops = {
    .name = "postgresql",
    .alloc_ids = pg_alloc_ids,
    .enqueue = pg_enqueue,
    .discard = pg_discard,
    .claim = pg_claim,
    .claim_next = pg_claim_next,
    .release = pg_release,
    .wait_work = pg_wait_work,
    .wake = pg_wake,
    .heartbeat = pg_heartbeat,
    .finish = pg_finish,
    .request_cancel = pg_request_cancel,
    .get = pg_get,
    .find_key = pg_find_key,
    .list = pg_list,
    .recover = pg_recover,
    .renew = pg_renew,
    .cancel_requests = pg_cancel_requests,
    .purge = pg_purge,
    .sync = pg_sync,
    .close = pg_close,
};

/* ------------------------------------------------------------ opening */

/* The uri with its password (if any) replaced by "***". */
static char *redact(const char *uri) {
  char *d = strdup(uri);
  if (!d) return NULL;
  char *scheme = strstr(d, "://");
  if (!scheme) return d;
  char *auth = scheme + 3;
  char *end = auth + strcspn(auth, "/?");
  char *at = NULL;
  for (char *p = auth; p < end; p++)
    if (*p == '@') at = p;
  if (!at) return d;
  char *colon = memchr(auth, ':', (size_t)(at - auth));
  if (!colon) return d;
  size_t tail = strlen(at);
  memmove(colon + 4, at, tail + 1);
  memcpy(colon + 1, "***", 3);
  return d;
}

/* Connection parameters: the uri's, plus the defaults that keep a call
 * from hanging on a dead server (each only when the uri sets none). */
static int build_params(pg_store_t *s, const char *uri, apex_error_t **err) {
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(uri, &perr);
  if (!opts) {
    char msg[400];
    one_line(perr ? perr : "out of memory", msg, sizeof msg);
    PQfreemem(perr);
    return apex__store_fail(err, APEX_E_INVALID, "store '%s': %s", s->name, msg);
  }
  static const char *const defaults[][2] = {
      {"connect_timeout", "10"},
      {"keepalives", "1"},
      {"keepalives_idle", "10"},
      {"keepalives_interval", "5"},
      {"keepalives_count", "3"},
      {"tcp_user_timeout", "30000"},
      {"application_name", "apex"},
      {"options", "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000"},
  };
  size_t nd = sizeof defaults / sizeof defaults[0];
  size_t n = 0;
  for (PQconninfoOption *o = opts; o->keyword; o++) n++;
  s->keys = calloc(n + nd + 1, sizeof *s->keys);
  s->vals = calloc(n + nd + 1, sizeof *s->vals);
  int bad = !s->keys || !s->vals;
  size_t k = 0;
  for (PQconninfoOption *o = opts; !bad && o->keyword; o++) {
    if (!o->val) continue;
    if (!(s->keys[k] = strdup(o->keyword)) || !(s->vals[k] = strdup(o->val))) bad = 1;
    k++;
  }
  for (size_t i = 0; !bad && i < nd; i++) {
    int set = 0;
    for (size_t j = 0; j < k; j++)
      if (strcmp(s->keys[j], defaults[i][0]) == 0) set = 1;
    if (set) continue;
    if (!(s->keys[k] = strdup(defaults[i][0])) || !(s->vals[k] = strdup(defaults[i][1]))) bad = 1;
    k++;
  }
  PQconninfoFree(opts);
  if (bad) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  return APEX_OK;
}

/* One value of a query on the open connection (NULL: SQL NULL), copied
 * into out. Returns APEX_OK, APEX_E_STORE. */
static int query_value(pg_store_t *s, const char *sql, char *out, size_t n, int *is_null,
                       apex_error_t **err, const char *what) {
  PGresult *r = PQexec(s->conn, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1) {
    int rc = pg_fail(s, s->conn, r, err, what);
    PQclear(r);
    return rc;
  }
  *is_null = PQgetisnull(r, 0, 0);
  snprintf(out, n, "%s", *is_null ? "" : PQgetvalue(r, 0, 0));
  PQclear(r);
  return APEX_OK;
}

/* Checks the database can be written and its schema is ours and known,
 * creating or migrating it (under an advisory lock, in one transaction).
 * Writes nothing to a database it refuses. */
static int check_schema(pg_store_t *s, apex_error_t **err) {
  char v[64];
  int isnull = 0;
  int rc = query_value(s, "SELECT current_setting('transaction_read_only')", v, sizeof v,
                       &isnull, err, "check the database");
  if (rc != APEX_OK) return rc;
  if (strcmp(v, "on") == 0)
    return apex__store_fail(err, APEX_E_STORE,
                            "store '%s': the database is read-only (a standby, or "
                            "default_transaction_read_only): a store is written at every submit; "
                            "refused",
                            s->name);
  rc = exec_sql(s, "BEGIN", err, "check the schema");
  if (rc != APEX_OK) return rc;
  rc = exec_sql(s, "SELECT pg_advisory_xact_lock(" PG_LOCK_SCHEMA ")", err, "check the schema");
  if (rc == APEX_OK)
    rc = query_value(s, "SELECT to_regclass('apex_schema_version')::text", v, sizeof v, &isnull,
                     err, "check the schema");
  long ver = 0;
  if (rc == APEX_OK && !isnull) {
    rc = query_value(s, "SELECT max(version) FROM apex_schema_version", v, sizeof v, &isnull, err,
                     "read the schema version");
    if (rc == APEX_OK) ver = isnull ? 0 : strtol(v, NULL, 10);
    if (rc == APEX_OK && ver > PG_SCHEMA)
      rc = apex__store_fail(err, APEX_E_STORE,
                            "store '%s': schema version %ld is newer than this library's (%d); "
                            "open it with a newer Apex; refused, left as it is",
                            s->name, ver, PG_SCHEMA);
  }
  for (long k = ver; rc == APEX_OK && k < PG_SCHEMA; k++) {
    rc = exec_sql(s, migrations[k], err, k == 0 ? "create the tables" : "migrate the schema");
    if (rc == APEX_OK && k > 0) {
      char sql[96];
      snprintf(sql, sizeof sql, "INSERT INTO apex_schema_version VALUES (%ld)", k + 1);
      rc = exec_sql(s, sql, err, "migrate the schema");
    }
  }
  /* A role that may read but not write the tables (made by another role)
   * is refused here, not at its first submit. */
  if (rc == APEX_OK) {
    rc = query_value(s,
                     "SELECT has_table_privilege('apex_tasks', 'SELECT, INSERT, UPDATE, DELETE')"
                     " AND has_table_privilege('apex_meta', 'SELECT, UPDATE')"
                     " AND has_table_privilege('apex_task_events', 'SELECT, INSERT, DELETE')"
                     " AND has_sequence_privilege('apex_task_events_seq_seq', 'USAGE')",
                     v, sizeof v, &isnull, err, "check permissions");
    if (rc == APEX_OK && strcmp(v, "t") != 0)
      rc = apex__store_fail(err, APEX_E_STORE,
                            "store '%s': no permission to write the tables apex_tasks, apex_meta "
                            "and apex_task_events (GRANT SELECT, INSERT, UPDATE, DELETE, and "
                            "USAGE on apex_task_events_seq_seq); refused",
                            s->name);
  }
  if (rc == APEX_OK) rc = exec_sql(s, "COMMIT", err, "create the tables");
  else if (PQstatus(s->conn) == CONNECTION_OK) (void)exec_sql(s, "ROLLBACK", NULL, "");
  return rc;
}

int apex__store_postgres_open(const char *uri, apex__store_t **out, apex_error_t **err) {
  *out = NULL;
  if (!PQisthreadsafe())
    return apex__store_fail(err, APEX_E_STORE, "store: libpq was built without threads");
  pg_store_t *s = calloc(1, sizeof *s);
  if (!s) return apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  s->base.ops = &pg_ops;
  s->lfd = -1;
  pthread_mutex_init(&s->mu, NULL);
  pthread_mutex_init(&s->lmu, NULL);
  pthread_cond_init(&s->cv, NULL);
  int rc = APEX_OK;
  if (!(s->base.uri = strdup(uri)) || !(s->name = redact(uri)))
    rc = apex__store_fail(err, APEX_E_NOMEM, "out of memory");
  if (rc == APEX_OK) {
    if (apex__swake_init(&s->wk) == APEX_OK) s->wk_ok = 1;
    else rc = apex__store_fail(err, APEX_E_NOMEM, "store: cannot make a condition variable");
  }
  if (rc == APEX_OK && (s->lfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
    rc = apex__store_fail(err, APEX_E_IO, "store: eventfd: %s", strerror(errno));
  if (rc == APEX_OK) rc = build_params(s, uri, err);
  if (rc == APEX_OK && !(s->conn = connect_db(s, err))) rc = APEX_E_STORE;
  if (rc == APEX_OK) rc = check_schema(s, err);
  if (rc == APEX_OK) rc = prepare_all(s, s->conn, err);
  if (rc == APEX_OK) {
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0)
      rc = apex__store_fail(err, APEX_E_IO, "store '%s': cannot start its writer thread: %s",
                            s->name, strerror(errno));
    else
      s->thread_started = 1;
  }
  if (rc != APEX_OK) {
    pg_free(s);
    return rc;
  }
  *out = &s->base;
  return APEX_OK;
}
