/* The PostgreSQL store (src/store/postgres.c) on a real server
 * (tests/support/pg_fixture.c starts one, or APEX_TEST_PG_URI names one),
 * beyond the conformance suite (test_store_conformance_postgres): what
 * only a shared server has. A restart of the server mid-use loses no write
 * that returned APEX_OK and the store reconnects by itself; a server down
 * fails calls with APEX_E_STORE at once instead of hanging; NOTIFY wakes
 * another process's wait_work; concurrency limits hold across owners
 * claiming at once through separate connections; the history; and the
 * refusals at open (a newer schema, a read-only database, a role that may
 * not write, a bad uri, no server). If no server can be had the program
 * fails, saying why. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>

#include "store/store.h"
#include "support/pg_fixture.h"

static pg_fixture_t g_pg;
static char g_tag[64]; /* unique per run: names on a shared server */

#define T0 1.0e9

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static apex__store_t *open_ok(const char *uri) {
  apex__store_t *s = NULL;
  apex_error_t *err = NULL;
  if (apex__store_open(uri, &s, &err) != APEX_OK)
    fail_msg("open %s: %s", uri, apex_error_message(err));
  return s;
}

/* Opening uri is refused with code, the message holding `want`. */
static void open_refused(const char *uri, int code, const char *want) {
  apex__store_t *s = NULL;
  apex_error_t *err = NULL;
  int rc = apex__store_open(uri, &s, &err);
  if (rc == APEX_OK) {
    s->ops->close(s);
    fail_msg("open %s: accepted, want %s", uri, want);
  }
  assert_int_equal(rc, code);
  if (!strstr(apex_error_message(err), want))
    fail_msg("open %s: \"%s\" lacks \"%s\"", uri, apex_error_message(err), want);
  apex_error_unref(err);
}

static uint64_t put(apex__store_t *s, const char *plugin, apex_error_t **err, int *rc) {
  apex__srec_t r = {0};
  *rc = s->ops->alloc_ids(s, 1, &r.id, err);
  if (*rc != APEX_OK) return 0;
  r.plugin = (char *)plugin;
  r.action = (char *)"x";
  r.params = (char *)"{}";
  r.state = APEX_TASK_QUEUED;
  r.created_at = r.updated_at = T0;
  uint64_t ex;
  *rc = s->ops->enqueue(s, &r, &ex, err);
  return r.id;
}

static uint64_t put_ok(apex__store_t *s, const char *plugin) {
  apex_error_t *err = NULL;
  int rc;
  uint64_t id = put(s, plugin, &err, &rc);
  if (rc != APEX_OK) fail_msg("enqueue: %s", apex_error_message(err));
  return id;
}

/* ------------------------------------------------------------ restarts */

typedef struct {
  apex__store_t *s;
  int k;
  _Atomic int *stop;
  _Atomic int ok_after; /* successes since the main thread reset it */
  uint64_t ids[4096];   /* enqueues that returned APEX_OK */
  int finished[4096];   /* and whose finish returned APEX_OK */
  size_t n;
  int store_errors;
  char last_error[512];
  int other;            /* an answer neither OK nor APEX_E_STORE */
} churn_t;

static void *churn(void *p) {
  churn_t *c = p;
  char plugin[96];
  snprintf(plugin, sizeof plugin, "restart_%s_%d", g_tag, c->k);
  while (!atomic_load(c->stop) && c->n < 4096) {
    apex_error_t *err = NULL;
    int rc;
    uint64_t id = put(c->s, plugin, &err, &rc);
    if (rc == APEX_OK) {
      c->ids[c->n] = id;
      rc = c->s->ops->finish(c->s, id, NULL, APEX_TASK_SUCCEEDED, T0 + 1, 0, "1", NULL, NULL, 1,
                             &err);
      c->finished[c->n++] = rc == APEX_OK;
    }
    if (rc == APEX_OK) {
      atomic_fetch_add(&c->ok_after, 1);
    } else if (rc == APEX_E_STORE) {
      c->store_errors++;
      snprintf(c->last_error, sizeof c->last_error, "%s", apex_error_message(err));
      usleep(20000); /* a caller backs off */
    } else {
      c->other = rc;
    }
    apex_error_unref(err);
  }
  return NULL;
}

static void test_a_server_restart_mid_use_loses_nothing_and_the_store_reconnects(void **state) {
  (void)state;
  if (g_pg.external) {
    print_message("skipped: APEX_TEST_PG_URI names a server this test cannot restart\n");
    skip();
  }
  apex__store_t *s = open_ok(g_pg.uri);
  enum { N = 3 };
  _Atomic int stop = 0;
  churn_t *c = calloc(N, sizeof *c);
  assert_non_null(c);
  pthread_t th[N];
  for (int k = 0; k < N; k++) {
    c[k].s = s;
    c[k].k = k;
    c[k].stop = &stop;
    assert_int_equal(pthread_create(&th[k], NULL, churn, &c[k]), 0);
  }
  /* Some work before, the restart, then work after it on every thread. */
  double until = mono() + 60;
  for (int k = 0; k < N; k++)
    while (atomic_load(&c[k].ok_after) < 20 && mono() < until) usleep(10000);
  char why[4096];
  if (pg_fixture_restart(&g_pg, why, sizeof why) != 0) fail_msg("%s", why);
  for (int k = 0; k < N; k++) atomic_store(&c[k].ok_after, 0);
  for (int k = 0; k < N; k++)
    while (atomic_load(&c[k].ok_after) < 20 && mono() < until) usleep(10000);
  atomic_store(&stop, 1);
  int errors = 0;
  for (int k = 0; k < N; k++) {
    pthread_join(th[k], NULL);
    assert_int_equal(c[k].other, 0);
    if (atomic_load(&c[k].ok_after) < 20) fail_msg("thread %d: no success after the restart", k);
    errors += c[k].store_errors;
  }
  /* The calls in flight when the server went failed with APEX_E_STORE,
   * naming the store and the cause. */
  assert_true(errors > 0);
  for (int k = 0; k < N; k++)
    if (c[k].store_errors) {
      assert_non_null(strstr(c[k].last_error, "store 'postgresql://"));
      print_message("thread %d: %d failures, e.g. %s\n", k, c[k].store_errors, c[k].last_error);
    }
  /* Every write that returned APEX_OK is there. */
  size_t checked = 0;
  for (int k = 0; k < N; k++)
    for (size_t i = 0; i < c[k].n; i++) {
      apex__srec_t g;
      apex_error_t *err = NULL;
      if (s->ops->get(s, c[k].ids[i], &g, &err) != APEX_OK)
        fail_msg("task %llu (enqueue returned OK) is gone: %s",
                 (unsigned long long)c[k].ids[i], apex_error_message(err));
      if (c[k].finished[i]) assert_int_equal(g.state, APEX_TASK_SUCCEEDED);
      apex__srec_clear(&g);
      checked++;
    }
  assert_true(checked >= 6 * N);
  free(c);

  /* On an idle store too: the first call after a restart fails (its
   * connection is gone), a later one reconnects. */
  if (pg_fixture_restart(&g_pg, why, sizeof why) != 0) fail_msg("%s", why);
  apex_error_t *err = NULL;
  uint64_t first = 0;
  int rc = s->ops->alloc_ids(s, 1, &first, &err);
  assert_int_equal(rc, APEX_E_STORE);
  assert_non_null(strstr(apex_error_message(err), "store 'postgresql://"));
  apex_error_unref(err);
  until = mono() + 60;
  do {
    err = NULL;
    rc = s->ops->alloc_ids(s, 1, &first, &err);
    apex_error_unref(err);
    if (rc != APEX_OK) usleep(20000);
  } while (rc != APEX_OK && mono() < until);
  assert_int_equal(rc, APEX_OK);
  s->ops->close(s);
}

static void test_a_server_down_fails_calls_at_once_and_they_work_once_it_is_back(void **state) {
  (void)state;
  if (g_pg.external) {
    print_message("skipped: APEX_TEST_PG_URI names a server this test cannot stop\n");
    skip();
  }
  apex__store_t *s = open_ok(g_pg.uri);
  char plugin[96];
  snprintf(plugin, sizeof plugin, "down_%s", g_tag);
  uint64_t id = put_ok(s, plugin);
  char why[4096];
  if (pg_fixture_pause(&g_pg, why, sizeof why) != 0) fail_msg("%s", why);
  /* Every call fails, each within seconds (no hang), naming the cause. */
  for (int i = 0; i < 5; i++) {
    apex__srec_t g;
    apex_error_t *err = NULL;
    double t = mono();
    assert_int_equal(s->ops->get(s, id, &g, &err), APEX_E_STORE);
    assert_true(mono() - t < 15);
    assert_non_null(strstr(apex_error_message(err), "store 'postgresql://"));
    if (i == 4) print_message("down: %s\n", apex_error_message(err));
    apex_error_unref(err);
  }
  if (pg_fixture_resume(&g_pg, why, sizeof why) != 0) fail_msg("%s", why);
  double until = mono() + 60;
  int rc;
  apex__srec_t g;
  do {
    apex_error_t *err = NULL;
    rc = s->ops->get(s, id, &g, &err);
    apex_error_unref(err);
    if (rc != APEX_OK) usleep(20000);
  } while (rc != APEX_OK && mono() < until);
  assert_int_equal(rc, APEX_OK);
  assert_int_equal(g.state, APEX_TASK_QUEUED);
  apex__srec_clear(&g);
  s->ops->close(s);
}

/* ------------------------------------------------------------ wake-ups */

typedef struct {
  apex__store_t *s;
  _Atomic int started;
  double took;
  int rc;
} waiter_t;

static void *waiter(void *p) {
  waiter_t *w = p;
  atomic_store(&w->started, 1);
  double t = mono();
  w->rc = w->s->ops->wait_work(w->s, 60, NULL);
  w->took = mono() - t;
  return NULL;
}

/* b's wait_work, blocked, is woken by a's enqueue: only NOTIFY connects
 * the two (separate connections, as two processes would have). */
static void notify_wakes(apex__store_t *a, apex__store_t *b, const char *plugin) {
  /* The listener is up (its first wait returns once it LISTENs), and what
   * it had is consumed. */
  double until = mono() + 60;
  int rc;
  do {
    rc = b->ops->wait_work(b, 5, NULL);
  } while (rc != APEX_OK && mono() < until);
  assert_int_equal(rc, APEX_OK);
  assert_int_equal(b->ops->wait_work(b, 0, NULL), APEX_OK);
  waiter_t w = {.s = b};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, waiter, &w), 0);
  while (!atomic_load(&w.started)) usleep(1000);
  usleep(50000); /* most likely blocked by now; if not, it returns at once anyway */
  put_ok(a, plugin);
  pthread_join(th, NULL);
  assert_int_equal(w.rc, APEX_OK);
  if (w.took >= 20) fail_msg("wait_work woke after %.1f s: the NOTIFY did not reach it", w.took);
}

static void test_notify_wakes_another_connections_wait_work(void **state) {
  (void)state;
  apex__store_t *a = open_ok(g_pg.uri), *b = open_ok(g_pg.uri);
  char plugin[96];
  snprintf(plugin, sizeof plugin, "notify_%s", g_tag);
  notify_wakes(a, b, plugin);
  /* A release and a cancel notify too. */
  uint64_t id = put_ok(a, plugin);
  assert_int_equal(a->ops->claim(a, id, "rel-owner", 1, T0, T0 + 100, 1, NULL), APEX_OK);
  assert_int_equal(b->ops->wait_work(b, 0, NULL), APEX_OK);
  waiter_t w = {.s = b};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, waiter, &w), 0);
  while (!atomic_load(&w.started)) usleep(1000);
  usleep(50000);
  assert_int_equal(a->ops->release(a, id, "rel-owner", T0 + 1, NULL), APEX_OK);
  pthread_join(th, NULL);
  assert_true(w.took < 20);
  a->ops->close(a);
  b->ops->close(b);
}

static void test_the_listener_comes_back_after_a_restart(void **state) {
  (void)state;
  if (g_pg.external) {
    print_message("skipped: APEX_TEST_PG_URI names a server this test cannot restart\n");
    skip();
  }
  apex__store_t *a = open_ok(g_pg.uri), *b = open_ok(g_pg.uri);
  assert_int_equal(b->ops->wait_work(b, 30, NULL), APEX_OK); /* listener up */
  char why[4096];
  if (pg_fixture_restart(&g_pg, why, sizeof why) != 0) fail_msg("%s", why);
  /* a's first call after the restart may fail (its connection is gone). */
  char plugin[96];
  snprintf(plugin, sizeof plugin, "relisten_%s", g_tag);
  apex_error_t *err = NULL;
  int rc;
  put(a, plugin, &err, &rc);
  apex_error_unref(err);
  /* b's listener notices, reconnects, LISTENs again: then a NOTIFY reaches
   * it. */
  notify_wakes(a, b, plugin);
  a->ops->close(a);
  b->ops->close(b);
}

/* ------------------------------------------------------------ limits */

typedef struct {
  apex__store_t *s;
  const char *plugin;
  int k;
  int limited;
  size_t taken;
  int rc;
} claimer_t;

static void *claimer(void *p) {
  claimer_t *c = p;
  char owner[96];
  snprintf(owner, sizeof owner, "lim-%s-%d", g_tag, c->k);
  apex__slimit_t lim = {APEX_SCOPE_PLUGIN, c->plugin, 3};
  for (int i = 0; i < 1000000; i++) {
    apex__srec_t *rows = NULL;
    size_t n = 0;
    c->rc = c->s->ops->claim_next(c->s, owner, T0 + 1, T0 + 31, 2, c->limited ? &lim : NULL,
                                  c->limited ? 1 : 0, &rows, &n, NULL);
    if (c->rc != APEX_OK) return NULL;
    for (size_t j = 0; j < n; j++)
      if (strcmp(rows[j].plugin, c->plugin) == 0) c->taken++;
    apex__srec_free_array(rows, n);
    if (n == 0) break;
  }
  return NULL;
}

static void test_a_limit_holds_across_owners_on_separate_connections(void **state) {
  (void)state;
  enum { N = 4 };
  char plugin[96];
  snprintf(plugin, sizeof plugin, "limx_%s", g_tag);
  apex__store_t *s[N];
  for (int k = 0; k < N; k++) s[k] = open_ok(g_pg.uri);
  for (int i = 0; i < 16; i++) put_ok(s[0], plugin);
  pthread_t th[N];
  claimer_t c[N];
  for (int k = 0; k < N; k++) {
    c[k] = (claimer_t){.s = s[k], .plugin = plugin, .k = k, .limited = 1};
    assert_int_equal(pthread_create(&th[k], NULL, claimer, &c[k]), 0);
  }
  size_t total = 0;
  for (int k = 0; k < N; k++) {
    pthread_join(th[k], NULL);
    assert_int_equal(c[k].rc, APEX_OK);
    total += c[k].taken;
  }
  assert_int_equal(total, 3);
  /* And without limits, SKIP LOCKED hands each row to one owner only:
   * the 13 left, once each, however the claims interleave. */
  for (int k = 0; k < N; k++) {
    c[k] = (claimer_t){.s = s[k], .plugin = plugin, .k = k, .limited = 0};
    assert_int_equal(pthread_create(&th[k], NULL, claimer, &c[k]), 0);
  }
  total = 0;
  for (int k = 0; k < N; k++) {
    pthread_join(th[k], NULL);
    assert_int_equal(c[k].rc, APEX_OK);
    total += c[k].taken;
  }
  assert_int_equal(total, 13);
  for (int k = 0; k < N; k++) s[k]->ops->close(s[k]);
}

/* ------------------------------------------------------------ history */

static void test_get_returns_the_rows_history(void **state) {
  (void)state;
  apex__store_t *s = open_ok(g_pg.uri);
  char plugin[96];
  snprintf(plugin, sizeof plugin, "hist_%s", g_tag);
  uint64_t id = put_ok(s, plugin);
  assert_int_equal(s->ops->claim(s, id, "w1", 1, T0 + 1, T0 + 30, 1, NULL), APEX_OK);
  assert_int_equal(s->ops->finish(s, id, "w1", APEX_TASK_RETRY_WAIT, T0 + 2, T0 + 60, NULL,
                                  "{\"code\":\"transient\"}", NULL, 1, NULL),
                   APEX_OK);
  assert_int_equal(s->ops->claim(s, id, "w1", 2, T0 + 60, T0 + 90, 1, NULL), APEX_OK);
  assert_int_equal(s->ops->release(s, id, "w1", T0 + 61, NULL), APEX_OK);
  assert_int_equal(s->ops->claim(s, id, "w2", 3, T0 + 62, T0 + 90, 1, NULL), APEX_OK);
  assert_int_equal(s->ops->finish(s, id, "w2", APEX_TASK_FAILED, T0 + 63, 0, NULL,
                                  "{\"code\":\"execution\",\"message\":\"m\"}", NULL, 1, NULL),
                   APEX_OK);
  apex__srec_t g;
  assert_int_equal(s->ops->get(s, id, &g, NULL), APEX_OK);
  assert_non_null(g.events);
  json_t *ev = json_loads(g.events, 0, NULL);
  assert_non_null(ev);
  const char *want[][2] = {{"queued", NULL},
                           {"running", NULL},
                           {"retry_wait", "retry at 2001-09-09T01:47:40.000Z"},
                           {"running", NULL},
                           {"queued", "released by w1"},
                           {"running", NULL},
                           {"failed", "execution"}};
  assert_int_equal(json_array_size(ev), 7);
  for (size_t i = 0; i < 7; i++) {
    json_t *e = json_array_get(ev, i);
    assert_string_equal(json_string_value(json_object_get(e, "state")), want[i][0]);
    const char *note = json_string_value(json_object_get(e, "note"));
    if (want[i][1]) assert_string_equal(note, want[i][1]);
    else assert_null(note);
  }
  assert_true(json_real_value(json_object_get(json_array_get(ev, 6), "at")) == T0 + 63 ||
              json_integer_value(json_object_get(json_array_get(ev, 6), "at")) == (json_int_t)(T0 + 63));
  assert_int_equal(json_integer_value(json_object_get(json_array_get(ev, 6), "attempt")), 3);
  json_decref(ev);
  apex__srec_clear(&g);
  /* Purged with its row. */
  size_t n;
  assert_int_equal(s->ops->purge(s, T0 + 100, &n, NULL), APEX_OK);
  assert_true(n >= 1);
  char why[512];
  char sql[256];
  snprintf(sql, sizeof sql,
           "DO $$ BEGIN IF EXISTS (SELECT 1 FROM apex_task_events WHERE task_id = %llu) THEN"
           " RAISE EXCEPTION 'events left'; END IF; END $$",
           (unsigned long long)id);
  if (pg_fixture_sql(&g_pg, NULL, sql, why, sizeof why) != 0) fail_msg("%s", why);
  s->ops->close(s);
}

/* ------------------------------------------------------------ refusals */

static void sql_ok(const char *db, const char *sql) {
  char why[1024];
  if (pg_fixture_sql(&g_pg, db, sql, why, sizeof why) != 0) fail_msg("%s", why);
}

static void test_open_refuses_what_it_cannot_serve(void **state) {
  (void)state;
  char db[96], sql[512], uri[600];
  /* A newer schema: refused, naming both versions, and left as it is. */
  snprintf(db, sizeof db, "apex_newer_%s", g_tag);
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", db);
  sql_ok(NULL, sql);
  pg_fixture_uri(&g_pg, NULL, db, uri, sizeof uri);
  apex__store_t *s = open_ok(uri);
  s->ops->close(s);
  sql_ok(db, "UPDATE apex_schema_version SET version = 99");
  open_refused(uri, APEX_E_STORE, "schema version 99 is newer than this library's (1)");
  /* A role that may not write the tables. */
  char role[96];
  snprintf(role, sizeof role, "apex_reader_%s", g_tag);
  snprintf(sql, sizeof sql, "CREATE ROLE %s LOGIN", role);
  sql_ok(NULL, sql);
  sql_ok(db, "UPDATE apex_schema_version SET version = 1");
  snprintf(sql, sizeof sql, "GRANT SELECT ON apex_schema_version, apex_tasks TO %s", role);
  sql_ok(db, sql);
  char ruri[600];
  pg_fixture_uri(&g_pg, role, db, ruri, sizeof ruri);
  open_refused(ruri, APEX_E_STORE, "no permission to write the tables");
  /* ... nor create them in a fresh database. */
  char db2[96];
  snprintf(db2, sizeof db2, "apex_fresh_%s", g_tag);
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", db2);
  sql_ok(NULL, sql);
  pg_fixture_uri(&g_pg, role, db2, ruri, sizeof ruri);
  open_refused(ruri, APEX_E_STORE, "(no permission)");
  /* A read-only database. */
  snprintf(sql, sizeof sql, "ALTER DATABASE %s SET default_transaction_read_only = on", db2);
  sql_ok(NULL, sql);
  pg_fixture_uri(&g_pg, NULL, db2, uri, sizeof uri);
  open_refused(uri, APEX_E_STORE, "read-only");
  /* A malformed uri; no server there (the password never shown). */
  open_refused("postgresql://127.0.0.1/x?no_such_option=1", APEX_E_INVALID, "no_such_option");
  apex__store_t *t = NULL;
  apex_error_t *err = NULL;
  double t0 = mono();
  assert_int_equal(apex__store_open("postgres://apex:sekrit@127.0.0.1:1/x", &t, &err),
                   APEX_E_STORE);
  assert_true(mono() - t0 < 15);
  assert_non_null(strstr(apex_error_message(err), "cannot connect"));
  assert_non_null(strstr(apex_error_message(err), "postgres://apex:***@127.0.0.1:1/x"));
  assert_null(strstr(apex_error_message(err), "sekrit"));
  apex_error_unref(err);
  if (g_pg.external) { /* leave a shared server as it was */
    snprintf(sql, sizeof sql, "DROP DATABASE %s", db);
    sql_ok(NULL, sql);
    snprintf(sql, sizeof sql, "DROP DATABASE %s", db2);
    sql_ok(NULL, sql);
    snprintf(sql, sizeof sql, "DROP ROLE %s", role);
    sql_ok(NULL, sql);
  }
}

int main(void) {
  char why[4096];
  if (pg_fixture_start(&g_pg, why, sizeof why) != 0) {
    fprintf(stderr, "test_store_postgres: FAILED: %s\n", why);
    return 1;
  }
  snprintf(g_tag, sizeof g_tag, "%d_%ld", (int)getpid(), (long)time(NULL));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_get_returns_the_rows_history),
      cmocka_unit_test(test_notify_wakes_another_connections_wait_work),
      cmocka_unit_test(test_a_limit_holds_across_owners_on_separate_connections),
      cmocka_unit_test(test_open_refuses_what_it_cannot_serve),
      cmocka_unit_test(test_a_server_restart_mid_use_loses_nothing_and_the_store_reconnects),
      cmocka_unit_test(test_a_server_down_fails_calls_at_once_and_they_work_once_it_is_back),
      cmocka_unit_test(test_the_listener_comes_back_after_a_restart),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  pg_fixture_stop(&g_pg);
  return failed;
}
