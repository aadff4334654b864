/* The SQLite store beyond the conformance suite (src/store/sqlite.c): what
 * it keeps across a reopen, the files it refuses (and leaves untouched),
 * two handles on one file, group commit, its options; and the public
 * apex_store_* calls (src/store/api.c) on top of it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>
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
  static unsigned seq;
  snprintf(g_path, sizeof g_path, "%s/sq_%d_%u.db", APEX_TEST_BIN_DIR, (int)getpid(), ++seq);
  rm_db(g_path);
  (void)state;
  return 0;
}

/* Sets or clears the immutable attribute (what keeps root from writing a
 * file). Returns 0 on success. */
static int set_immutable(const char *p, int on) {
  int fd = open(p, O_RDONLY);
  if (fd < 0) return -1;
  int flags = 0;
  int rc = ioctl(fd, FS_IOC_GETFLAGS, &flags);
  if (rc == 0) {
    flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
    rc = ioctl(fd, FS_IOC_SETFLAGS, &flags);
  }
  close(fd);
  return rc;
}

static int teardown(void **state) {
  (void)state;
  set_immutable(g_path, 0);
  chmod(g_path, 0600);
  rm_db(g_path);
  return 0;
}

static apex__store_t *open_ok(const char *opts) {
  char uri[400];
  snprintf(uri, sizeof uri, "sqlite:%s%s", g_path, opts ? opts : "");
  apex__store_t *s = NULL;
  apex_error_t *err = NULL;
  int rc = apex__store_open(uri, &s, &err);
  if (rc != APEX_OK) fail_msg("open: %s", apex_error_message(err));
  return s;
}

/* Opening must fail with APEX_E_STORE and a message containing want. */
static void open_refused(const char *uri, const char *want) {
  apex__store_t *s = NULL;
  apex_error_t *err = NULL;
  int rc = apex__store_open(uri, &s, &err);
  if (rc == APEX_OK) {
    s->ops->close(s);
    fail_msg("%s: opened, want refused (%s)", uri, want);
  }
  assert_int_equal(rc, APEX_E_STORE);
  if (!strstr(apex_error_message(err), want))
    fail_msg("message '%s' lacks '%s'", apex_error_message(err), want);
  apex_error_unref(err);
}

static uint64_t put(apex__store_t *s, const char *owner) {
  apex__srec_t r = {0};
  assert_int_equal(s->ops->alloc_ids(s, 1, &r.id, NULL), APEX_OK);
  r.plugin = (char *)"p";
  r.action = (char *)"x";
  r.params = (char *)"{\"a\":1}";
  r.created_at = r.updated_at = apex__store_now();
  r.owner = (char *)owner;
  r.lease_until = owner ? r.created_at + 100 : 0;
  uint64_t ex;
  assert_int_equal(s->ops->enqueue(s, &r, &ex, NULL), APEX_OK);
  return r.id;
}

static char *file_bytes(const char *p, size_t *n) {
  FILE *f = fopen(p, "rb");
  assert_non_null(f);
  char *b = malloc(1 << 20);
  assert_non_null(b);
  *n = fread(b, 1, 1 << 20, f);
  fclose(f);
  return b;
}

static void test_rows_survive_a_reopen(void **state) {
  (void)state;
  apex__store_t *s = open_ok(NULL);
  uint64_t id = put(s, "own");
  assert_int_equal(s->ops->claim(s, id, "own", 1, 1, 1e12, 1, NULL), APEX_OK);
  assert_int_equal(s->ops->heartbeat(s, id, "own", 2, 1e12, "{\"off\":4096}", NULL, 0, NULL),
                   APEX_OK);
  s->ops->close(s); /* waits for the queued write */
  s = open_ok(NULL);
  apex__srec_t r;
  assert_int_equal(s->ops->get(s, id, &r, NULL), APEX_OK);
  assert_int_equal(r.state, APEX_TASK_RUNNING);
  assert_string_equal(r.checkpoint, "{\"off\":4096}");
  apex__srec_clear(&r);
  /* Ids go on past the ones handed out before. */
  uint64_t next;
  assert_int_equal(s->ops->alloc_ids(s, 1, &next, NULL), APEX_OK);
  assert_true(next > id);
  s->ops->close(s);
}

static void test_a_file_that_is_not_a_database_is_refused_and_left_alone(void **state) {
  (void)state;
  FILE *f = fopen(g_path, "wb");
  assert_non_null(f);
  for (int i = 0; i < 200; i++) fputs("this is a text file, not SQLite. ", f);
  fclose(f);
  size_t n0, n1;
  char *before = file_bytes(g_path, &n0);
  char uri[300];
  snprintf(uri, sizeof uri, "sqlite:%s", g_path);
  open_refused(uri, "not a database");
  char *after = file_bytes(g_path, &n1);
  assert_int_equal(n0, n1);
  assert_memory_equal(before, after, n0);
  free(before);
  free(after);
}

static void test_another_programs_database_is_refused_and_left_alone(void **state) {
  (void)state;
  sqlite3 *db;
  assert_int_equal(sqlite3_open(g_path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, "CREATE TABLE songs(title TEXT); INSERT INTO songs VALUES('x')",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(db);
  size_t n0, n1;
  char *before = file_bytes(g_path, &n0);
  char uri[300];
  snprintf(uri, sizeof uri, "%s", g_path); /* a plain path is sqlite too */
  open_refused(uri, "not an Apex task store");
  char *after = file_bytes(g_path, &n1);
  assert_int_equal(n0, n1);
  assert_memory_equal(before, after, n0);
  free(before);
  free(after);
}

static void test_a_newer_schema_is_refused_naming_both_versions(void **state) {
  (void)state;
  apex__store_t *s = open_ok(NULL);
  s->ops->close(s);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(g_path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  char uri[300];
  snprintf(uri, sizeof uri, "sqlite:%s", g_path);
  open_refused(uri, "schema version 99 is newer than this library's (4)");
}

static void test_a_corrupt_file_is_refused(void **state) {
  (void)state;
  apex__store_t *s = open_ok(NULL);
  for (int i = 0; i < 300; i++) put(s, NULL);
  s->ops->close(s);
  /* Checkpoint the WAL into the file, then scribble over a page past the
   * header (the schema stays readable, a table's page does not). */
  sqlite3 *db;
  assert_int_equal(sqlite3_open(g_path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(db);
  FILE *f = fopen(g_path, "r+b");
  assert_non_null(f);
  fseek(f, 4096 * 3, SEEK_SET);
  for (int i = 0; i < 4096; i++) fputc(0x5a, f);
  fclose(f);
  char uri[300];
  snprintf(uri, sizeof uri, "sqlite:%s", g_path);
  open_refused(uri, "corrupt");
}

static void test_a_read_only_file_is_refused(void **state) {
  (void)state;
  apex__store_t *s = open_ok(NULL);
  s->ops->close(s);
  assert_int_equal(chmod(g_path, 0400), 0);
  /* Root writes a file whatever its mode; an immutable one it does not. */
  if (geteuid() == 0 && set_immutable(g_path, 1) != 0) skip();
  char uri[300];
  snprintf(uri, sizeof uri, "sqlite:%s", g_path);
  open_refused(uri, "read-only");
}

static void test_unknown_options_and_schemes_are_refused(void **state) {
  (void)state;
  char uri[300];
  snprintf(uri, sizeof uri, "sqlite:%s?synchronous=sometimes", g_path);
  apex__store_t *s = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex__store_open(uri, &s, &err), APEX_E_INVALID);
  assert_non_null(strstr(apex_error_message(err), "synchronous=sometimes"));
  apex_error_unref(err);
  err = NULL;
  assert_int_equal(apex__store_open("mysql://db/apex", &s, &err), APEX_E_INVALID);
  assert_non_null(strstr(apex_error_message(err), "unknown scheme"));
  apex_error_unref(err);
  s = open_ok("?synchronous=full&group_commit=0");
  put(s, NULL);
  s->ops->close(s);
}

/* Two handles on one file (two processes do the same through the file's
 * locks): each sees the other's writes, ids never collide. */
static void test_two_handles_share_one_file(void **state) {
  (void)state;
  apex__store_t *a = open_ok(NULL), *b = open_ok(NULL);
  uint64_t ia = put(a, "A"), ib = put(b, "B");
  assert_true(ia != ib);
  apex__srec_t r;
  assert_int_equal(b->ops->get(b, ia, &r, NULL), APEX_OK);
  assert_string_equal(r.owner, "A");
  apex__srec_clear(&r);
  int ended = 0;
  assert_int_equal(b->ops->request_cancel(b, ia, "from b", apex__store_now(), &ended, NULL),
                   APEX_OK);
  assert_int_equal(ended, 0); /* A holds it */
  uint64_t *ids = NULL;
  size_t n = 0;
  assert_int_equal(a->ops->cancel_requests(a, "A", &ids, &n, NULL), APEX_OK);
  assert_int_equal(n, 1);
  assert_int_equal(ids[0], ia);
  free(ids);
  a->ops->close(a);
  b->ops->close(b);
}

/* Group commit: writes from many threads at once share transactions. */
typedef struct {
  apex__store_t *s;
  uint64_t id;
} hb_arg_t;

static void *beat(void *p) {
  hb_arg_t *a = p;
  for (int i = 0; i < 50; i++) {
    char cp[32];
    snprintf(cp, sizeof cp, "{\"i\":%d}", i);
    if (a->s->ops->heartbeat(a->s, a->id, "G", 1, 1e12, cp, NULL, 1, NULL) != APEX_OK)
      return (void *)1;
  }
  return NULL;
}

static void run_beats(apex__store_t *s, uint64_t *commits) {
  enum { N = 16 };
  hb_arg_t args[N];
  pthread_t th[N];
  for (int k = 0; k < N; k++) {
    args[k].s = s;
    args[k].id = put(s, "G");
  }
  uint64_t c0 = apex__store_sqlite_commits(s);
  for (int k = 0; k < N; k++) assert_int_equal(pthread_create(&th[k], NULL, beat, &args[k]), 0);
  for (int k = 0; k < N; k++) {
    void *ret;
    pthread_join(th[k], &ret);
    assert_null(ret);
  }
  *commits = apex__store_sqlite_commits(s) - c0;
  for (int k = 0; k < N; k++) {
    apex__srec_t r;
    assert_int_equal(s->ops->get(s, args[k].id, &r, NULL), APEX_OK);
    assert_string_equal(r.checkpoint, "{\"i\":49}");
    apex__srec_clear(&r);
  }
}

static void test_group_commit_shares_transactions_between_callers(void **state) {
  (void)state;
  apex__store_t *s = open_ok(NULL);
  uint64_t grouped;
  run_beats(s, &grouped);
  s->ops->close(s);
  rm_db(g_path);
  s = open_ok("?group_commit=0");
  uint64_t single;
  run_beats(s, &single);
  s->ops->close(s);
  /* 800 writes: one transaction each without group commit; with it, the
   * writers waiting at once share one (how many depends on scheduling,
   * but 16 callers on a busy writer share a good deal). */
  assert_int_equal(single, 800);
  assert_true(grouped < 800);
  assert_true(grouped >= 50); /* each caller waits for its own write */
}

static void test_public_calls_give_json_pages_cancel_and_purge(void **state) {
  (void)state;
  char uri[300];
  snprintf(uri, sizeof uri, "sqlite:%s", g_path);
  apex_store_t *s = NULL;
  assert_int_equal(apex_store_open(uri, &s, NULL), APEX_OK);
  uint64_t ids[5];
  for (int i = 0; i < 5; i++) ids[i] = put(s, NULL);
  json_t *o = NULL;
  assert_int_equal(apex_store_get(s, ids[0], &o, NULL), APEX_OK);
  assert_string_equal(json_string_value(json_object_get(o, "state")), "queued");
  assert_string_equal(json_string_value(json_object_get(o, "plugin")), "p");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "params"), "a")), 1);
  json_decref(o);
  apex_error_t *err = NULL;
  assert_int_equal(apex_store_get(s, ids[4] + 100, &o, &err), APEX_E_INVALID);
  assert_null(o);
  apex_error_unref(err);
  /* Pages of 2. */
  apex_store_filter_t f = APEX_STORE_FILTER_INIT;
  f.limit = 2;
  int seen = 0;
  for (;;) {
    json_t *page = NULL;
    assert_int_equal(apex_store_list(s, &f, &page, NULL), APEX_OK);
    json_t *tasks = json_object_get(page, "tasks");
    seen += (int)json_array_size(tasks);
    json_t *next = json_object_get(page, "next");
    int last = json_is_null(next);
    if (!last) f.after_id = (uint64_t)json_integer_value(next);
    json_decref(page);
    if (last) break;
  }
  assert_int_equal(seen, 5);
  /* Cancel: unheld, so at once; then again: already. */
  assert_int_equal(apex_store_cancel(s, ids[1], "no longer wanted", NULL), APEX_OK);
  assert_int_equal(apex_store_cancel(s, ids[1], NULL, NULL), APEX_E_ALREADY);
  assert_int_equal(apex_store_cancel(s, ids[2], "timeout", NULL), APEX_E_INVALID);
  assert_int_equal(apex_store_get(s, ids[1], &o, NULL), APEX_OK);
  assert_string_equal(json_string_value(json_object_get(o, "state")), "cancelled");
  assert_non_null(strstr(json_string_value(json_object_get(json_object_get(o, "error"), "message")),
                         "no longer wanted"));
  json_decref(o);
  /* By state. */
  apex_store_filter_t c = APEX_STORE_FILTER_INIT;
  c.states = APEX_OPS_STATE(APEX_TASK_CANCELLED);
  json_t *page = NULL;
  assert_int_equal(apex_store_list(s, &c, &page, NULL), APEX_OK);
  assert_int_equal(json_array_size(json_object_get(page, "tasks")), 1);
  json_decref(page);
  c.states = 1u << 20;
  assert_int_equal(apex_store_list(s, &c, &page, NULL), APEX_E_INVALID);
  /* Purge: the cancelled one only. */
  size_t n = 0;
  assert_int_equal(apex_store_purge(s, 0, &n, NULL), APEX_OK);
  assert_int_equal(n, 1);
  assert_int_equal(apex_store_purge(s, -1, &n, NULL), APEX_E_INVALID);
  apex_store_close(s);
  apex_store_close(NULL);
}

/* The store keeps each row's history (apex_store_get's "events", what
 * apex show prints): the insert and every change of state, attempt or
 * cancel request, in order, with a note where one says more; lease
 * renewals and checkpoints are not events; a purged row's go with it. */
static void test_a_rows_changes_are_its_events(void **state) {
  (void)state;
  apex__store_t *s = open_ok(NULL);
  uint64_t id = put(s, NULL);
  double t0 = apex__store_now();
  assert_int_equal(s->ops->claim(s, id, "own", 1, t0, t0 + 100, 1, NULL), APEX_OK);
  assert_int_equal(s->ops->heartbeat(s, id, "own", t0 + 1, t0 + 200, "{\"off\":1}", NULL, 1, NULL),
                   APEX_OK);
  assert_int_equal(s->ops->finish(s, id, "own", APEX_TASK_RETRY_WAIT, t0 + 2, t0 + 3, NULL,
                                  "{\"code\":\"transient\",\"message\":\"x\"}", NULL, 1, NULL),
                   APEX_OK);
  assert_int_equal(s->ops->claim(s, id, "own", 2, t0 + 3, t0 + 100, 1, NULL), APEX_OK);
  int ended = 0;
  assert_int_equal(s->ops->request_cancel(s, id, "enough", t0 + 4, &ended, NULL), APEX_OK);
  assert_int_equal(s->ops->finish(s, id, "own", APEX_TASK_CANCELLED, t0 + 5, 0, NULL,
                                  "{\"code\":\"cancelled\",\"message\":\"cancelled (enough)\"}",
                                  NULL, 1, NULL),
                   APEX_OK);
  apex__srec_t r;
  assert_int_equal(s->ops->get(s, id, &r, NULL), APEX_OK);
  assert_non_null(r.events);
  json_t *ev = json_loads(r.events, 0, NULL);
  assert_true(json_is_array(ev));
  static const char *const states[] = {"queued", "running", "retry_wait", "running", "running",
                                       "cancelled"};
  static const int attempts[] = {0, 1, 1, 2, 2, 2};
  assert_int_equal(json_array_size(ev), 6);
  for (size_t i = 0; i < 6; i++) {
    json_t *e = json_array_get(ev, i);
    assert_string_equal(json_string_value(json_object_get(e, "state")), states[i]);
    assert_int_equal(json_integer_value(json_object_get(e, "attempt")), attempts[i]);
    assert_true(json_is_number(json_object_get(e, "at")));
  }
  assert_non_null(strstr(json_string_value(json_object_get(json_array_get(ev, 2), "note")),
                         "retry at "));
  assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 4), "note")),
                      "cancel requested (enough)");
  assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 5), "note")),
                      "cancelled");
  assert_null(json_object_get(json_array_get(ev, 1), "note"));
  json_decref(ev);
  /* The public JSON carries them. */
  json_t *o = apex__srec_to_json(&r, 1);
  assert_int_equal(json_array_size(json_object_get(o, "events")), 6);
  json_decref(o);
  apex__srec_clear(&r);
  /* Purged with their row. */
  size_t n = 0;
  assert_int_equal(s->ops->purge(s, t0 + 1e6, &n, NULL), APEX_OK);
  assert_int_equal(n, 1);
  s->ops->close(s);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(g_path, &db), SQLITE_OK);
  sqlite3_stmt *q;
  assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM task_events", -1, &q, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_step(q), SQLITE_ROW);
  assert_int_equal(sqlite3_column_int(q, 0), 0);
  sqlite3_finalize(q);
  sqlite3_close(db);
}

/* Another process holds the write lock past busy_timeout: the write fails
 * with a clear error and leaves nothing; once the lock goes, writes work. */
static void test_a_locked_database_fails_the_write_cleanly(void **state) {
  (void)state;
  apex__store_t *s = open_ok("?busy_timeout=100");
  uint64_t before = put(s, NULL);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(g_path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
  apex__srec_t r = {0};
  assert_int_equal(s->ops->alloc_ids(s, 1, &r.id, NULL), APEX_E_STORE);
  r.id = before + 1000;
  r.plugin = (char *)"p";
  r.action = (char *)"x";
  r.created_at = r.updated_at = 1;
  uint64_t ex;
  apex_error_t *err = NULL;
  assert_int_equal(s->ops->enqueue(s, &r, &ex, &err), APEX_E_STORE);
  assert_non_null(strstr(apex_error_message(err), "locked by another process"));
  assert_non_null(strstr(apex_error_message(err), g_path));
  apex_error_unref(err);
  assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  apex__srec_t g;
  err = NULL;
  assert_int_equal(s->ops->get(s, r.id, &g, &err), APEX_E_INVALID); /* nothing half-written */
  apex_error_unref(err);
  assert_int_equal(s->ops->get(s, before, &g, NULL), APEX_OK);
  apex__srec_clear(&g);
  put(s, NULL); /* and writes work again */
  s->ops->close(s);
}

static off_t size_of(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 ? st.st_size : 0;
}

/* The disk fills up (a file size limit stands in for it): the write that
 * does not fit fails with a clear error; every row written before stays
 * whole, and the store works again once there is room. */
static void test_a_full_disk_fails_the_write_and_keeps_the_rest(void **state) {
  (void)state;
  apex__store_t *s = open_ok(NULL);
  uint64_t first = put(s, NULL);
  assert_int_equal(s->ops->sync(s, NULL), APEX_OK);
  char wal[300];
  snprintf(wal, sizeof wal, "%s-wal", g_path);
  off_t big = size_of(g_path) > size_of(wal) ? size_of(g_path) : size_of(wal);
  struct rlimit old, lim;
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
  void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
  lim = old;
  lim.rlim_cur = (rlim_t)big + 256 * 1024;
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
  char *params = malloc(16 * 1024 + 16);
  assert_non_null(params);
  memset(params, 'a', 16 * 1024);
  memcpy(params, "{\"k\":\"", 6);
  strcpy(params + 16 * 1024 - 2, "\"}");
  uint64_t ids[200];
  int n = 0, rc = APEX_OK;
  apex_error_t *err = NULL;
  while (n < 200) {
    apex__srec_t r = {0};
    if ((rc = s->ops->alloc_ids(s, 1, &r.id, &err)) != APEX_OK) break;
    r.plugin = (char *)"p";
    r.action = (char *)"x";
    r.params = params;
    r.created_at = r.updated_at = 1;
    uint64_t ex;
    if ((rc = s->ops->enqueue(s, &r, &ex, &err)) != APEX_OK) break;
    ids[n++] = r.id;
  }
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
  signal(SIGXFSZ, prev);
  assert_int_equal(rc, APEX_E_STORE);
  assert_true(n > 0 && n < 200);
  /* ENOSPC reads "the disk is full"; the limit's EFBIG, a write error */
  const char *msg = apex_error_message(err);
  if (!strstr(msg, "disk is full") && !strstr(msg, "disk I/O error")) fail_msg("%s", msg);
  assert_non_null(strstr(msg, g_path));
  apex_error_unref(err);
  apex__srec_t g;
  assert_int_equal(s->ops->get(s, first, &g, NULL), APEX_OK);
  apex__srec_clear(&g);
  for (int i = 0; i < n; i++) {
    assert_int_equal(s->ops->get(s, ids[i], &g, NULL), APEX_OK);
    assert_int_equal(strlen(g.params), 16 * 1024);
    apex__srec_clear(&g);
  }
  put(s, NULL);
  s->ops->close(s);
  free(params);
  /* And what was written survives a reopen. */
  s = open_ok(NULL);
  assert_int_equal(s->ops->get(s, ids[n - 1], &g, NULL), APEX_OK);
  apex__srec_clear(&g);
  s->ops->close(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_rows_survive_a_reopen, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_file_that_is_not_a_database_is_refused_and_left_alone,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_another_programs_database_is_refused_and_left_alone,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_newer_schema_is_refused_naming_both_versions, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_a_corrupt_file_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_read_only_file_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_options_and_schemes_are_refused, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_two_handles_share_one_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_group_commit_shares_transactions_between_callers,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_public_calls_give_json_pages_cancel_and_purge, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_a_rows_changes_are_its_events, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_locked_database_fails_the_write_cleanly, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_a_full_disk_fails_the_write_and_keeps_the_rest, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
