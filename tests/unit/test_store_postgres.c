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
#include <libpq-fe.h>
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

/* ------------------------------------------------------ batched finishes */

typedef struct {
  apex__store_t *s;
  uint64_t id;
  int rc;
  char msg[256];
} fin_t;

static void *finish_waited(void *p) {
  fin_t *f = p;
  apex_error_t *err = NULL;
  f->rc = f->s->ops->finish(f->s, f->id, "w1", APEX_TASK_SUCCEEDED, T0 + 5, 0, "2", NULL, NULL, 1,
                            &err);
  snprintf(f->msg, sizeof f->msg, "%s", err ? apex_error_message(err) : "");
  apex_error_unref(err);
  return NULL;
}

/* The state of row id, read on c. */
static int row_state(PGconn *c, uint64_t id) {
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT state FROM apex_tasks WHERE id = %llu", (unsigned long long)id);
  PGresult *r = PQexec(c, sql);
  int st = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 ? atoi(PQgetvalue(r, 0, 0))
                                                                      : -1;
  PQclear(r);
  return st;
}

/* Finishes queued together go out as one statement (a run of them in a
 * pipeline): each still gets its own answer. The writer is held on a row
 * lock another connection took while the others queue behind it, so they
 * go out in one batch once the lock is let go. */
static void test_finishes_sent_together_each_get_their_own_answer(void **state) {
  (void)state;
  apex__store_t *s = open_ok(g_pg.uri);
  char plugin[96];
  snprintf(plugin, sizeof plugin, "many_%s", g_tag);
  enum { N = 8 };
  uint64_t blocker = put_ok(s, plugin), mine[N], other = put_ok(s, plugin);
  assert_int_equal(s->ops->claim(s, blocker, "w1", 1, T0 + 1, T0 + 1e6, 1, NULL), APEX_OK);
  for (int i = 0; i < N; i++) {
    mine[i] = put_ok(s, plugin);
    assert_int_equal(s->ops->claim(s, mine[i], "w1", 1, T0 + 1, T0 + 1e6, 1, NULL), APEX_OK);
  }
  assert_int_equal(s->ops->claim(s, other, "w2", 1, T0 + 1, T0 + 1e6, 1, NULL), APEX_OK);

  PGconn *c = PQconnectdb(g_pg.uri);
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  char sql[256];
  snprintf(sql, sizeof sql, "BEGIN; SELECT 1 FROM apex_tasks WHERE id = %llu FOR UPDATE",
           (unsigned long long)blocker);
  PGresult *r = PQexec(c, sql);
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  PQclear(r);
  fin_t fb = {.s = s, .id = blocker}, fo = {.s = s, .id = other}, fx = {.s = s, .id = 999999999};
  pthread_t tb, to, tx;
  assert_int_equal(pthread_create(&tb, NULL, finish_waited, &fb), 0);
  /* The writer waits for the lock: another statement of the database's
   * waits on a lock. */
  PGconn *w = PQconnectdb(g_pg.uri);
  assert_int_equal(PQstatus(w), CONNECTION_OK);
  double end = mono() + 30;
  for (;;) {
    PGresult *q = PQexec(w, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND datname = current_database()");
    int waiting = PQresultStatus(q) == PGRES_TUPLES_OK && atoi(PQgetvalue(q, 0, 0)) > 0;
    PQclear(q);
    if (waiting) break;
    if (mono() > end) fail_msg("the writer never waited for the row lock");
    usleep(2000);
  }
  /* Results an array literal must quote right (ST_FINISH_MANY sends them
   * as one): quotes, backslashes, braces and commas, the word NULL, JSON
   * null, a line break, UTF-8. */
  static const char *const results[N] = {
      "\"a,b\"", "{\"k\":\"\\\\\\\"\"}", "\"NULL\"", "null",
      "[1,{\"x\":[]}]", "\"line\\nbreak\"", "\"caf\u00e9 \u2603\"", "\"}{\\\\\""};
  for (int i = 0; i < N; i++) {
    apex_error_t *err = NULL;
    if (s->ops->finish(s, mine[i], "w1", APEX_TASK_SUCCEEDED, T0 + 5, 0, results[i], NULL, NULL,
                       0, &err) != APEX_OK)
      fail_msg("finish %d: %s", i, apex_error_message(err));
  }
  assert_int_equal(pthread_create(&to, NULL, finish_waited, &fo), 0);
  assert_int_equal(pthread_create(&tx, NULL, finish_waited, &fx), 0);
  /* Time for the two threads to queue their requests behind the held
   * batch (the answers asserted below hold whether or not they made it
   * into the same batch; this only makes the shared statement likely). */
  usleep(100000);
  r = PQexec(c, "COMMIT");
  PQclear(r);
  PQfinish(c);
  pthread_join(tb, NULL);
  pthread_join(to, NULL);
  pthread_join(tx, NULL);
  assert_int_equal(fb.rc, APEX_OK);
  assert_int_equal(fo.rc, APEX_E_ALREADY); /* held by w2, its lease live */
  assert_int_equal(fx.rc, APEX_E_INVALID);
  if (!strstr(fx.msg, "no task 999999999")) fail_msg("missing row: \"%s\"", fx.msg);
  assert_int_equal(s->ops->sync(s, NULL), APEX_OK);
  for (int i = 0; i < N; i++) {
    assert_int_equal(row_state(w, mine[i]), APEX_TASK_SUCCEEDED);
    apex__srec_t g;
    assert_int_equal(s->ops->get(s, mine[i], &g, NULL), APEX_OK);
    assert_non_null(g.result);
    assert_string_equal(g.result, results[i]); /* byte for byte */
    assert_null(g.error);
    apex__srec_clear(&g);
  }
  assert_int_equal(row_state(w, blocker), APEX_TASK_SUCCEEDED);
  assert_int_equal(row_state(w, other), APEX_TASK_RUNNING);
  /* Written by one transaction (one xmin): the batch went through as sent,
   * not rolled back and run again request by request (what a malformed
   * array literal would cause). */
  snprintf(sql, sizeof sql,
           "SELECT count(DISTINCT xmin::text) FROM apex_tasks WHERE plugin = '%s' AND id <> %llu"
           " AND id <> %llu",
           plugin, (unsigned long long)blocker, (unsigned long long)other);
  r = PQexec(w, sql);
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_int_equal(atoi(PQgetvalue(r, 0, 0)), 1);
  PQclear(r);
  /* Each row's history has its end once. */
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM apex_task_events WHERE state = 3"
           " AND task_id IN (SELECT id FROM apex_tasks WHERE plugin = '%s')",
           plugin);
  r = PQexec(w, sql);
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_int_equal(atoi(PQgetvalue(r, 0, 0)), N + 1);
  PQclear(r);
  PQfinish(w);
  s->ops->close(s);
}

static void sql_ok(const char *db, const char *sql) {
  char why[1024];
  if (pg_fixture_sql(&g_pg, db, sql, why, sizeof why) != 0) fail_msg("%s", why);
}

/* Makes database PREFIX_<tag> (db) with Apex's tables in it (opened
 * once and closed); its uri in uri. */
static void fresh_db(const char *prefix, char *db, size_t dn, char *uri, size_t un) {
  char sql[256];
  snprintf(db, dn, "%s_%s", prefix, g_tag);
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", db);
  sql_ok(NULL, sql);
  pg_fixture_uri(&g_pg, NULL, db, uri, un);
  apex__store_t *s = open_ok(uri);
  s->ops->close(s);
}

/* A database of schema 1 (a row trigger writing the history) is migrated
 * at open: schema 2, statement triggers, one history row per change. */
static void test_a_schema_1_database_is_migrated(void **state) {
  (void)state;
  char db[96], uri[600];
  fresh_db("apex_v1", db, sizeof db, uri, sizeof uri);
  /* Back to schema 1's shape: its row trigger function and triggers. */
  sql_ok(db, "DROP TRIGGER apex_task_events_insert ON apex_tasks;"
             "DROP TRIGGER apex_task_events_update ON apex_tasks;"
             "CREATE FUNCTION apex_task_event() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN"
             " INSERT INTO apex_task_events(task_id, at, state, attempt)"
             " VALUES (NEW.id, NEW.updated_at, NEW.state, NEW.attempts); RETURN NULL; END $f$;"
             "CREATE TRIGGER apex_task_events_insert AFTER INSERT ON apex_tasks"
             " FOR EACH ROW EXECUTE FUNCTION apex_task_event();"
             "CREATE TRIGGER apex_task_events_update AFTER UPDATE ON apex_tasks FOR EACH ROW"
             " WHEN (OLD.state <> NEW.state) EXECUTE FUNCTION apex_task_event();"
             "DELETE FROM apex_schema_version WHERE version > 1");
  apex__store_t *s = open_ok(uri);
  sql_ok(db, "DO $$ BEGIN"
             " IF (SELECT max(version) FROM apex_schema_version) <> 2 THEN"
             "  RAISE EXCEPTION 'not migrated to 2'; END IF;"
             " IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'apex_tasks'::regclass"
             "  AND NOT tgisinternal AND (tgtype & 1) = 1) THEN"
             "  RAISE EXCEPTION 'a row trigger is left'; END IF;"
             " IF (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'apex_tasks'::regclass"
             "  AND NOT tgisinternal) <> 2 THEN RAISE EXCEPTION 'want 2 triggers'; END IF;"
             " IF to_regproc('apex_task_event') IS NOT NULL THEN"
             "  RAISE EXCEPTION 'schema 1''s function is left'; END IF; END $$");
  uint64_t id = put_ok(s, "migrated");
  assert_int_equal(s->ops->claim(s, id, "w1", 1, T0 + 1, T0 + 30, 1, NULL), APEX_OK);
  assert_int_equal(s->ops->finish(s, id, "w1", APEX_TASK_SUCCEEDED, T0 + 2, 0, "1", NULL, NULL, 1,
                                  NULL),
                   APEX_OK);
  apex__srec_t g;
  assert_int_equal(s->ops->get(s, id, &g, NULL), APEX_OK);
  json_t *ev = json_loads(g.events, 0, NULL);
  assert_non_null(ev);
  assert_int_equal(json_array_size(ev), 3); /* queued, running, succeeded: once each */
  assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 2), "state")),
                      "succeeded");
  json_decref(ev);
  apex__srec_clear(&g);
  s->ops->close(s);
}

/* ------------------------------------------------------------ refusals */


static void test_open_refuses_what_it_cannot_serve(void **state) {
  (void)state;
  char db[96], sql[512], uri[600];
  /* A newer schema: refused, naming both versions, and left as it is. */
  fresh_db("apex_newer", db, sizeof db, uri, sizeof uri);
  sql_ok(db, "UPDATE apex_schema_version SET version = 99");
  open_refused(uri, APEX_E_STORE, "schema version 99 is newer than this library's (2)");
  /* A role that may not write the tables. */
  char role[96];
  snprintf(role, sizeof role, "apex_reader_%s", g_tag);
  snprintf(sql, sizeof sql, "CREATE ROLE %s LOGIN", role);
  sql_ok(NULL, sql);
  sql_ok(db, "UPDATE apex_schema_version SET version = 2");
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
      cmocka_unit_test(test_finishes_sent_together_each_get_their_own_answer),
      cmocka_unit_test(test_a_schema_1_database_is_migrated),
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
