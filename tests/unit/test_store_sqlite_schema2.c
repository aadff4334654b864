/* The SQLite store's schema 2 (src/store/sqlite.c, migration 1 -> 2): a
 * file written by schema 1 is migrated on open with its rows kept, and
 * afterwards writing a row costs SQLite no ephemeral b-tree (schema 1's
 * partial index on `state IN (0, 1, 2, 7)` built one per row written,
 * half the writer's CPU in W13: bench/analysis.md). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "store/store.h"

static char g_path[256];

static void rm_db(const char *p) {
  char x[300];
  unlink(p);
  snprintf(x, sizeof x, "%s-wal", p);
  unlink(x);
  snprintf(x, sizeof x, "%s-shm", p);
  unlink(x);
}

static int setup(void **state) {
  (void)state;
  snprintf(g_path, sizeof g_path, "%s/sq2_%d.db", APEX_TEST_BIN_DIR, (int)getpid());
  rm_db(g_path);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  rm_db(g_path);
  return 0;
}

/* Schema 1 as release 1 wrote it, and two rows: 1 queued, 2 succeeded. */
static const char k_schema1[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID;"
    "INSERT INTO meta VALUES('next_id', 3);"
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
    "CREATE UNIQUE INDEX tasks_key ON tasks(idem_key) WHERE idem_key IS NOT NULL;"
    "CREATE INDEX tasks_live ON tasks(id) WHERE state IN (0, 1, 2, 7);"
    "CREATE INDEX tasks_ended ON tasks(ended_at) WHERE ended_at > 0;"
    "INSERT INTO tasks(id, plugin, action, params, state, created_at, updated_at)"
    " VALUES(1, 'p', 'a', '{}', 0, 1.0, 1.0);"
    "INSERT INTO tasks(id, plugin, action, params, state, attempts, created_at, updated_at,"
    " ended_at, result) VALUES(2, 'p', 'a', '{}', 3, 1, 1.0, 2.0, 2.0, '42');"
    "PRAGMA application_id = 1095779672; PRAGMA user_version = 1;";

static int64_t one_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  int64_t v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

/* How many OpenEphemeral opcodes SQLite's program for sql has. */
static int ephemerals(sqlite3 *db, const char *sql) {
  char ex[1024];
  snprintf(ex, sizeof ex, "EXPLAIN %s", sql);
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(db, ex, -1, &st, NULL), SQLITE_OK);
  int n = 0;
  while (sqlite3_step(st) == SQLITE_ROW)
    if (strcmp((const char *)sqlite3_column_text(st, 1), "OpenEphemeral") == 0) n++;
  sqlite3_finalize(st);
  return n;
}

static const char k_insert[] =
    "INSERT INTO tasks(id, plugin, action, state, created_at, updated_at) VALUES(?1, 'p', 'a', 0,"
    " 0, 0)";
static const char k_update_state[] = "UPDATE tasks SET state = ?2 WHERE id = ?1";

static void test_a_schema_1_file_is_migrated_keeping_its_rows(void **state) {
  (void)state;
  sqlite3 *db;
  assert_int_equal(sqlite3_open(g_path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, k_schema1, NULL, NULL, NULL), SQLITE_OK);
  /* The cost schema 2 removes, seen on schema 1 (so the check below can fail). */
  assert_true(ephemerals(db, k_insert) > 0);
  assert_true(ephemerals(db, k_update_state) > 0);
  sqlite3_close(db);

  char uri[300];
  snprintf(uri, sizeof uri, "sqlite:%s", g_path);
  apex__store_t *s = NULL;
  apex_error_t *err = NULL;
  if (apex__store_open(uri, &s, &err) != APEX_OK)
    fail_msg("open: %s", apex_error_message(err));
  apex__srec_t r;
  assert_int_equal(s->ops->get(s, 1, &r, NULL), APEX_OK);
  assert_int_equal(r.state, APEX_TASK_QUEUED);
  apex__srec_clear(&r);
  assert_int_equal(s->ops->get(s, 2, &r, NULL), APEX_OK);
  assert_int_equal(r.state, APEX_TASK_SUCCEEDED);
  assert_string_equal(r.result, "42");
  apex__srec_clear(&r);
  /* The live row is still found through the index (recovery's query). */
  apex__srec_t *out = NULL;
  size_t n = 0;
  assert_int_equal(s->ops->recover(s, "me", 10.0, 40.0, NULL, NULL, &out, &n, NULL), APEX_OK);
  assert_int_equal(n, 1);
  assert_int_equal(out[0].id, 1);
  apex__srec_free_array(out, n);
  s->ops->close(s);

  assert_int_equal(sqlite3_open(g_path, &db), SQLITE_OK);
  assert_int_equal(one_int(db, "PRAGMA user_version"), 4); /* 1 -> 2 -> 3 -> 4 */
  assert_int_equal(ephemerals(db, k_insert), 0);
  assert_int_equal(ephemerals(db, k_update_state), 0);
  sqlite3_close(db);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_a_schema_1_file_is_migrated_keeping_its_rows, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
