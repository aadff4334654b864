/* The store conformance suite: every backend of src/store/store.h must
 * pass it unchanged. It reaches a store only through apex__store_open and
 * the ops table, so a new backend (PostgreSQL) runs it by adding its uri:
 * the backends run are "memory:", a fresh SQLite file, and, when the
 * environment names one, APEX_TEST_STORE_URI (a database the suite may
 * fill: every test works in ids it allocated and owners it made up, so
 * rows left by other runs do not matter).
 *
 * Times are given by the tests (store.h: "now" is the caller's), so
 * leases expire by moving the clock, never by sleeping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#include "store/store.h"

typedef struct fixture {
  const char *uri; /* NULL: a fresh sqlite file per test */
  char path[256];
  apex__store_t *s;
  char owner_a[48], owner_b[48]; /* unique per test, for a shared database */
} fixture_t;

static const char *g_uri; /* the backend this run of the group tests */
static unsigned g_seq;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  char uri[300];
  if (g_uri) {
    snprintf(uri, sizeof uri, "%s", g_uri);
  } else {
    snprintf(f->path, sizeof f->path, "%s/conf_%d_%u.db", APEX_TEST_BIN_DIR, (int)getpid(),
             ++g_seq);
    unlink(f->path);
    snprintf(uri, sizeof uri, "sqlite:%s", f->path);
  }
  snprintf(f->owner_a, sizeof f->owner_a, "a-%d-%u", (int)getpid(), ++g_seq);
  snprintf(f->owner_b, sizeof f->owner_b, "b-%d-%u", (int)getpid(), ++g_seq);
  apex_error_t *err = NULL;
  int rc = apex__store_open(uri, &f->s, &err);
  if (rc != APEX_OK) fail_msg("open %s: %s", uri, apex_error_message(err));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  f->s->ops->close(f->s);
  if (f->path[0]) {
    char p[300];
    unlink(f->path);
    snprintf(p, sizeof p, "%s-wal", f->path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", f->path);
    unlink(p);
  }
  free(f);
  return 0;
}

#define OPS(f) ((f)->s->ops)
#define T0 1.0e9 /* a fixed "now" */

static uint64_t new_id(fixture_t *f) {
  uint64_t id = 0;
  assert_int_equal(OPS(f)->alloc_ids(f->s, 1, &id, NULL), APEX_OK);
  assert_true(id > 0);
  return id;
}

/* Enqueues a queued row of plugin.action with params, held by owner (NULL:
 * none) until lease; returns its id. */
static uint64_t put(fixture_t *f, const char *plugin, const char *action, const char *params,
                    const char *owner, double created, double lease) {
  apex__srec_t r = {0};
  r.id = new_id(f);
  r.plugin = (char *)plugin;
  r.action = (char *)action;
  r.plugin_version = (char *)"1.2.3";
  r.params = (char *)params;
  r.opts = (char *)"{\"timeout_s\":5}";
  r.state = APEX_TASK_QUEUED;
  r.created_at = r.updated_at = created;
  r.owner = (char *)owner;
  r.lease_until = lease;
  uint64_t existing = 99;
  assert_int_equal(OPS(f)->enqueue(f->s, &r, &existing, NULL), APEX_OK);
  assert_int_equal(existing, 0);
  return r.id;
}

static apex__srec_t get(fixture_t *f, uint64_t id) {
  apex__srec_t r;
  assert_int_equal(OPS(f)->get(f->s, id, &r, NULL), APEX_OK);
  return r;
}

static void test_ids_are_unique_increasing_and_never_reused(void **state) {
  fixture_t *f = *state;
  uint64_t a, b;
  assert_int_equal(OPS(f)->alloc_ids(f->s, 10, &a, NULL), APEX_OK);
  assert_int_equal(OPS(f)->alloc_ids(f->s, 1, &b, NULL), APEX_OK);
  assert_true(b >= a + 10);
  /* A purged row's id is not handed out again. */
  uint64_t id = put(f, "p", "x", "{}", NULL, T0, 0);
  assert_int_equal(OPS(f)->finish(f->s, id, NULL, APEX_TASK_SUCCEEDED, T0, 0, "1", NULL, NULL, 1,
                                  NULL),
                   APEX_OK);
  size_t n = 0;
  assert_int_equal(OPS(f)->purge(f->s, T0 + 1, &n, NULL), APEX_OK);
  assert_true(n >= 1);
  uint64_t c;
  assert_int_equal(OPS(f)->alloc_ids(f->s, 1, &c, NULL), APEX_OK);
  assert_true(c > id);
}

static void test_enqueue_then_get_returns_every_field(void **state) {
  fixture_t *f = *state;
  apex__srec_t r = {0};
  r.id = new_id(f);
  r.plugin = (char *)"files";
  r.action = (char *)"copy";
  r.plugin_version = (char *)"2.0.1";
  r.params = (char *)"{\"src\":\"a\",\"dst\":\"b\"}";
  r.opts = (char *)"{\"priority\":3}";
  r.idem_key = (char *)"conf-key-fields";
  r.state = APEX_TASK_SCHEDULED;
  r.action_flags = 3;
  r.created_at = T0;
  r.updated_at = T0 + 1;
  r.run_at = T0 + 60;
  r.deadline = T0 + 3600;
  r.owner = f->owner_a;
  r.lease_until = T0 + 30;
  char key[96];
  snprintf(key, sizeof key, "k-fields-%s", f->owner_a);
  r.idem_key = key;
  uint64_t existing = 1;
  assert_int_equal(OPS(f)->enqueue(f->s, &r, &existing, NULL), APEX_OK);
  assert_int_equal(existing, 0);
  apex__srec_t g = get(f, r.id);
  assert_int_equal(g.id, r.id);
  assert_string_equal(g.plugin, "files");
  assert_string_equal(g.action, "copy");
  assert_string_equal(g.plugin_version, "2.0.1");
  assert_string_equal(g.params, r.params);
  assert_string_equal(g.opts, r.opts);
  assert_string_equal(g.idem_key, key);
  assert_int_equal(g.state, APEX_TASK_SCHEDULED);
  assert_int_equal(g.attempts, 0);
  assert_int_equal(g.action_flags, 3);
  assert_true(g.created_at == T0);
  assert_true(g.run_at == T0 + 60);
  assert_true(g.deadline == T0 + 3600);
  assert_true(g.ended_at == 0);
  assert_string_equal(g.owner, f->owner_a);
  assert_true(g.lease_until == T0 + 30);
  assert_int_equal(g.cancel_requested, 0);
  assert_null(g.checkpoint);
  assert_null(g.result);
  assert_null(g.error);
  apex__srec_clear(&g);
  apex_error_t *err = NULL;
  assert_int_equal(OPS(f)->get(f->s, r.id + 1000000, &g, &err), APEX_E_INVALID);
  assert_non_null(strstr(apex_error_message(err), "no task"));
  apex_error_unref(err);
  /* The same id twice is refused. */
  r.idem_key = NULL;
  assert_int_equal(OPS(f)->enqueue(f->s, &r, &existing, NULL), APEX_E_INVALID);
}

static void test_idempotency_key_returns_the_existing_task_whatever_its_state(void **state) {
  fixture_t *f = *state;
  char key[96];
  snprintf(key, sizeof key, "k-idem-%s", f->owner_a);
  apex__srec_t r = {0};
  r.id = new_id(f);
  r.plugin = (char *)"p";
  r.action = (char *)"x";
  r.params = (char *)"{\"n\":1}";
  r.idem_key = key;
  r.created_at = r.updated_at = T0;
  uint64_t existing = 0;
  assert_int_equal(OPS(f)->enqueue(f->s, &r, &existing, NULL), APEX_OK);
  assert_int_equal(existing, 0);
  uint64_t first = r.id;
  uint64_t found = 0;
  assert_int_equal(OPS(f)->find_key(f->s, key, &found, NULL), APEX_OK);
  assert_int_equal(found, first);
  /* Again, same call: the first task, nothing inserted. */
  r.id = new_id(f);
  assert_int_equal(OPS(f)->enqueue(f->s, &r, &existing, NULL), APEX_OK);
  assert_int_equal(existing, first);
  apex__srec_t g;
  apex_error_t *err = NULL;
  assert_int_equal(OPS(f)->get(f->s, r.id, &g, &err), APEX_E_INVALID);
  apex_error_unref(err);
  /* Once it ended too. */
  assert_int_equal(OPS(f)->finish(f->s, first, NULL, APEX_TASK_FAILED, T0, 0, NULL,
                                  "{\"code\":\"execution\"}", NULL, 1, NULL),
                   APEX_OK);
  assert_int_equal(OPS(f)->enqueue(f->s, &r, &existing, NULL), APEX_OK);
  assert_int_equal(existing, first);
  /* The same key with other params: refused, naming the key. */
  r.params = (char *)"{\"n\":2}";
  err = NULL;
  assert_int_equal(OPS(f)->enqueue(f->s, &r, &existing, &err), APEX_E_INVALID);
  assert_int_equal(existing, first);
  assert_non_null(strstr(apex_error_message(err), key));
  apex_error_unref(err);
  /* And with another action. */
  r.params = (char *)"{\"n\":1}";
  r.action = (char *)"y";
  err = NULL;
  assert_int_equal(OPS(f)->enqueue(f->s, &r, &existing, &err), APEX_E_INVALID);
  apex_error_unref(err);
}

static void test_discard_takes_back_only_a_never_started_row(void **state) {
  fixture_t *f = *state;
  char key[96];
  snprintf(key, sizeof key, "k-discard-%s", f->owner_a);
  apex__srec_t r = {0};
  r.id = new_id(f);
  r.plugin = (char *)"p";
  r.action = (char *)"x";
  r.idem_key = key;
  r.created_at = r.updated_at = T0;
  uint64_t ex;
  assert_int_equal(OPS(f)->enqueue(f->s, &r, &ex, NULL), APEX_OK);
  assert_int_equal(OPS(f)->discard(f->s, r.id, NULL), APEX_OK);
  apex__srec_t g;
  apex_error_t *err = NULL;
  assert_int_equal(OPS(f)->get(f->s, r.id, &g, &err), APEX_E_INVALID);
  apex_error_unref(err);
  /* Its key is free again. */
  uint64_t found = 1;
  assert_int_equal(OPS(f)->find_key(f->s, key, &found, NULL), APEX_OK);
  assert_int_equal(found, 0);
  /* A started row is kept. */
  uint64_t id = put(f, "p", "x", "{}", f->owner_a, T0, T0 + 10);
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_a, 1, T0, T0 + 10, 1, NULL), APEX_OK);
  assert_int_equal(OPS(f)->discard(f->s, id, NULL), APEX_E_ALREADY);
  g = get(f, id);
  apex__srec_clear(&g);
}

static void test_claim_takes_a_lease_one_owner_at_a_time(void **state) {
  fixture_t *f = *state;
  uint64_t id = put(f, "p", "x", "{}", f->owner_a, T0, T0 + 10);
  /* Another owner cannot while a's lease lives. */
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_b, 1, T0 + 1, T0 + 11, 1, NULL), APEX_E_ALREADY);
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_a, 1, T0 + 1, T0 + 11, 1, NULL), APEX_OK);
  apex__srec_t g = get(f, id);
  assert_int_equal(g.state, APEX_TASK_RUNNING);
  assert_int_equal(g.attempts, 1);
  assert_string_equal(g.owner, f->owner_a);
  assert_true(g.lease_until == T0 + 11);
  apex__srec_clear(&g);
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_b, 2, T0 + 5, T0 + 15, 1, NULL), APEX_E_ALREADY);
  /* Once it expired, b can. */
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_b, 2, T0 + 12, T0 + 30, 1, NULL), APEX_OK);
  g = get(f, id);
  assert_string_equal(g.owner, f->owner_b);
  assert_int_equal(g.attempts, 2);
  apex__srec_clear(&g);
  /* a's writes are refused now. */
  assert_int_equal(OPS(f)->heartbeat(f->s, id, f->owner_a, T0 + 13, T0 + 40, "{}", NULL, 1, NULL),
                   APEX_E_ALREADY);
  assert_int_equal(OPS(f)->finish(f->s, id, f->owner_a, APEX_TASK_SUCCEEDED, T0 + 13, 0, "1",
                                  NULL, NULL, 1, NULL),
                   APEX_E_ALREADY);
  apex_error_t *err = NULL;
  assert_int_equal(OPS(f)->claim(f->s, id + 1000000, f->owner_a, 1, T0, T0 + 1, 1, &err),
                   APEX_E_INVALID);
  apex_error_unref(err);
}

static void test_heartbeat_extends_the_lease_and_saves_the_checkpoint_in_one_write(void **state) {
  fixture_t *f = *state;
  uint64_t id = put(f, "p", "x", "{}", f->owner_a, T0, T0 + 10);
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_a, 1, T0, T0 + 10, 1, NULL), APEX_OK);
  assert_int_equal(OPS(f)->heartbeat(f->s, id, f->owner_a, T0 + 5, T0 + 20, "{\"step\":3}",
                                     "{\"percentage\":30}", 1, NULL),
                   APEX_OK);
  apex__srec_t g = get(f, id);
  assert_string_equal(g.checkpoint, "{\"step\":3}");
  assert_string_equal(g.progress, "{\"percentage\":30}");
  assert_true(g.lease_until == T0 + 20);
  apex__srec_clear(&g);
  /* NULL keeps what was saved. */
  assert_int_equal(OPS(f)->heartbeat(f->s, id, f->owner_a, T0 + 6, T0 + 21, NULL, NULL, 1, NULL),
                   APEX_OK);
  g = get(f, id);
  assert_string_equal(g.checkpoint, "{\"step\":3}");
  assert_true(g.lease_until == T0 + 21);
  apex__srec_clear(&g);
  /* A queued write (wait 0) is there after sync. */
  assert_int_equal(OPS(f)->heartbeat(f->s, id, f->owner_a, T0 + 7, T0 + 22, "{\"step\":4}", NULL,
                                     0, NULL),
                   APEX_OK);
  assert_int_equal(OPS(f)->sync(f->s, NULL), APEX_OK);
  g = get(f, id);
  assert_string_equal(g.checkpoint, "{\"step\":4}");
  apex__srec_clear(&g);
  /* A cancel request is answered by the next heartbeat, which still counts. */
  int ended = 1;
  assert_int_equal(OPS(f)->request_cancel(f->s, id, "user", T0 + 8, &ended, NULL), APEX_OK);
  assert_int_equal(ended, 0);
  assert_int_equal(OPS(f)->heartbeat(f->s, id, f->owner_a, T0 + 9, T0 + 30, "{\"step\":5}", NULL,
                                     1, NULL),
                   APEX_E_CANCELLED);
  g = get(f, id);
  assert_string_equal(g.checkpoint, "{\"step\":5}");
  apex__srec_clear(&g);
}

static void test_terminal_rows_never_change(void **state) {
  fixture_t *f = *state;
  uint64_t id = put(f, "p", "x", "{}", f->owner_a, T0, T0 + 10);
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_a, 1, T0, T0 + 10, 1, NULL), APEX_OK);
  assert_int_equal(OPS(f)->finish(f->s, id, f->owner_a, APEX_TASK_SUCCEEDED, T0 + 2, 0,
                                  "{\"ok\":true}", NULL, "{\"done\":9}", 1, NULL),
                   APEX_OK);
  apex__srec_t g = get(f, id);
  assert_int_equal(g.state, APEX_TASK_SUCCEEDED);
  assert_string_equal(g.result, "{\"ok\":true}");
  assert_string_equal(g.partial, "{\"done\":9}");
  assert_true(g.ended_at == T0 + 2);
  assert_null(g.owner);
  apex__srec_clear(&g);
  assert_int_equal(OPS(f)->finish(f->s, id, NULL, APEX_TASK_FAILED, T0 + 3, 0, NULL, "{}", NULL,
                                  1, NULL),
                   APEX_E_ALREADY);
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_a, 2, T0 + 3, T0 + 9, 1, NULL), APEX_E_ALREADY);
  assert_int_equal(OPS(f)->heartbeat(f->s, id, f->owner_a, T0 + 3, T0 + 9, "{}", NULL, 1, NULL),
                   APEX_E_ALREADY);
  int ended;
  assert_int_equal(OPS(f)->request_cancel(f->s, id, NULL, T0 + 3, &ended, NULL), APEX_E_ALREADY);
  g = get(f, id);
  assert_int_equal(g.state, APEX_TASK_SUCCEEDED);
  assert_string_equal(g.result, "{\"ok\":true}");
  assert_int_equal(g.cancel_requested, 0);
  apex__srec_clear(&g);
}

/* A queued claim and the row's end right after it (a short task): the
 * outcome and the attempt number both land, whatever the backend batches. */
static void test_queued_claim_then_finish_keeps_both(void **state) {
  fixture_t *f = *state;
  uint64_t ids[20];
  for (int i = 0; i < 20; i++) {
    ids[i] = put(f, "p", "x", "{}", f->owner_a, T0, T0 + 100);
    assert_int_equal(OPS(f)->claim(f->s, ids[i], f->owner_a, 3, T0, T0 + 100, 0, NULL), APEX_OK);
    assert_int_equal(OPS(f)->finish(f->s, ids[i], f->owner_a, APEX_TASK_SUCCEEDED, T0 + 1, 0,
                                    "7", NULL, NULL, 0, NULL),
                     APEX_OK);
  }
  assert_int_equal(OPS(f)->sync(f->s, NULL), APEX_OK);
  for (int i = 0; i < 20; i++) {
    apex__srec_t g = get(f, ids[i]);
    assert_int_equal(g.state, APEX_TASK_SUCCEEDED);
    assert_int_equal(g.attempts, 3);
    assert_string_equal(g.result, "7");
    apex__srec_clear(&g);
  }
}

static void test_fail_with_retry_time_keeps_the_row_held(void **state) {
  fixture_t *f = *state;
  uint64_t id = put(f, "p", "x", "{}", f->owner_a, T0, T0 + 10);
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_a, 1, T0, T0 + 10, 1, NULL), APEX_OK);
  assert_int_equal(OPS(f)->finish(f->s, id, f->owner_a, APEX_TASK_RETRY_WAIT, T0 + 1, T0 + 61,
                                  NULL, "{\"code\":\"transient\"}", NULL, 1, NULL),
                   APEX_OK);
  apex__srec_t g = get(f, id);
  assert_int_equal(g.state, APEX_TASK_RETRY_WAIT);
  assert_true(g.run_at == T0 + 61);
  assert_true(g.ended_at == 0);
  assert_string_equal(g.owner, f->owner_a);
  assert_string_equal(g.error, "{\"code\":\"transient\"}");
  apex__srec_clear(&g);
  /* Its next attempt. */
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_a, 2, T0 + 61, T0 + 70, 1, NULL), APEX_OK);
  g = get(f, id);
  assert_int_equal(g.attempts, 2);
  apex__srec_clear(&g);
}

static void test_request_cancel_ends_an_unheld_task_and_flags_a_held_one(void **state) {
  fixture_t *f = *state;
  /* Held by no one: ends at once. */
  uint64_t a = put(f, "p", "x", "{}", NULL, T0, 0);
  int ended = 0;
  assert_int_equal(OPS(f)->request_cancel(f->s, a, "operator", T0 + 1, &ended, NULL), APEX_OK);
  assert_int_equal(ended, 1);
  apex__srec_t g = get(f, a);
  assert_int_equal(g.state, APEX_TASK_CANCELLED);
  assert_non_null(strstr(g.error, "operator"));
  assert_non_null(strstr(g.error, "\"cancelled\""));
  apex__srec_clear(&g);
  /* Held by a dead owner (lease expired): ends at once too. */
  uint64_t b = put(f, "p", "x", "{}", f->owner_b, T0, T0 + 5);
  assert_int_equal(OPS(f)->request_cancel(f->s, b, NULL, T0 + 6, &ended, NULL), APEX_OK);
  assert_int_equal(ended, 1);
  /* Held by a live owner: flagged, for the owner to act on. */
  uint64_t c = put(f, "p", "x", "{}", f->owner_a, T0, T0 + 100);
  assert_int_equal(OPS(f)->request_cancel(f->s, c, "user", T0 + 1, &ended, NULL), APEX_OK);
  assert_int_equal(ended, 0);
  g = get(f, c);
  assert_int_equal(g.state, APEX_TASK_QUEUED);
  assert_int_equal(g.cancel_requested, 1);
  assert_string_equal(g.cancel_reason, "user");
  apex__srec_clear(&g);
  uint64_t *ids = NULL;
  size_t n = 0;
  assert_int_equal(OPS(f)->cancel_requests(f->s, f->owner_a, &ids, &n, NULL), APEX_OK);
  assert_int_equal(n, 1);
  assert_int_equal(ids[0], c);
  free(ids);
  assert_int_equal(OPS(f)->cancel_requests(f->s, f->owner_b, &ids, &n, NULL), APEX_OK);
  assert_int_equal(n, 0);
  free(ids);
  /* Asked twice: already. A claim now: cancelled, nothing changed. */
  assert_int_equal(OPS(f)->request_cancel(f->s, c, "user", T0 + 2, &ended, NULL), APEX_E_ALREADY);
  assert_int_equal(OPS(f)->claim(f->s, c, f->owner_a, 1, T0 + 2, T0 + 9, 1, NULL), APEX_E_CANCELLED);
  apex_error_t *err = NULL;
  assert_int_equal(OPS(f)->request_cancel(f->s, c + 1000000, NULL, T0, &ended, &err),
                   APEX_E_INVALID);
  apex_error_unref(err);
}

static void test_list_filters_and_pages_through_every_row_once(void **state) {
  fixture_t *f = *state;
  char plugin[96];
  snprintf(plugin, sizeof plugin, "lp_%s", f->owner_a);
  for (char *c = plugin; *c; c++)
    if (*c == '-') *c = '_';
  uint64_t ids[25];
  for (int i = 0; i < 25; i++)
    ids[i] = put(f, plugin, i % 2 ? "odd" : "even", "{}", NULL, T0 + i, 0);
  for (int i = 0; i < 25; i += 5)
    assert_int_equal(OPS(f)->finish(f->s, ids[i], NULL, APEX_TASK_FAILED, T0 + 30, 0, NULL, "{}",
                                    NULL, 1, NULL),
                     APEX_OK);
  /* Pages of 7 over the plugin's rows: each once, in id order. */
  apex__sfilter_t flt = {.plugin = plugin, .limit = 7};
  int seen = 0;
  uint64_t last = 0;
  for (;;) {
    apex__srec_t *rows = NULL;
    size_t n = 0;
    flt.after_id = last;
    assert_int_equal(OPS(f)->list(f->s, &flt, &rows, &n, NULL), APEX_OK);
    for (size_t i = 0; i < n; i++) {
      assert_true(rows[i].id > last);
      assert_int_equal(rows[i].id, ids[seen]);
      last = rows[i].id;
      seen++;
    }
    apex__srec_free_array(rows, n);
    if (n < 7) break;
  }
  assert_int_equal(seen, 25);
  /* By action and state. */
  apex__sfilter_t by = {.plugin = plugin, .action = "odd", .states = 1u << APEX_TASK_FAILED,
                        .limit = 100};
  apex__srec_t *rows = NULL;
  size_t n = 0;
  assert_int_equal(OPS(f)->list(f->s, &by, &rows, &n, NULL), APEX_OK);
  assert_int_equal(n, 2); /* 5 and 15 */
  assert_int_equal(rows[0].id, ids[5]);
  assert_int_equal(rows[1].id, ids[15]);
  apex__srec_free_array(rows, n);
  /* By live states only (a worker's rescue scan: PostgreSQL reads the
   * live rows alone for it): the 20 still queued, in id order. */
  apex__sfilter_t live = {.plugin = plugin, .states = 1u << APEX_TASK_QUEUED |
                                                     1u << APEX_TASK_RUNNING,
                          .limit = 100};
  assert_int_equal(OPS(f)->list(f->s, &live, &rows, &n, NULL), APEX_OK);
  assert_int_equal(n, 20);
  assert_int_equal(rows[0].id, ids[1]);
  assert_int_equal(rows[19].id, ids[24]);
  apex__srec_free_array(rows, n);
  /* By age: created in [T0 + 10, T0 + 12]. */
  apex__sfilter_t age = {.plugin = plugin, .created_min = T0 + 10, .created_max = T0 + 12,
                         .limit = 100};
  assert_int_equal(OPS(f)->list(f->s, &age, &rows, &n, NULL), APEX_OK);
  assert_int_equal(n, 3);
  assert_int_equal(rows[0].id, ids[10]);
  apex__srec_free_array(rows, n);
}

static int dead_is_b(const char *owner, void *user) {
  return strcmp(owner, (const char *)user) == 0;
}

static void test_recover_takes_expired_and_dead_owners_rows_only(void **state) {
  fixture_t *f = *state;
  char c_owner[80];
  snprintf(c_owner, sizeof c_owner, "%s-live", f->owner_b);
  uint64_t own = put(f, "p", "x", "{}", f->owner_a, T0, T0 + 100);
  uint64_t expired = put(f, "p", "x", "{}", "someone-gone", T0, T0 + 5);
  uint64_t dead = put(f, "p", "x", "{}", f->owner_b, T0, T0 + 100);
  uint64_t live = put(f, "p", "x", "{}", c_owner, T0, T0 + 100);
  uint64_t done = put(f, "p", "x", "{}", f->owner_a, T0, T0 + 100);
  uint64_t unheld = put(f, "p", "x", "{}", NULL, T0, 0);
  assert_int_equal(OPS(f)->claim(f->s, own, f->owner_a, 1, T0, T0 + 100, 1, NULL), APEX_OK);
  assert_int_equal(OPS(f)->heartbeat(f->s, own, f->owner_a, T0, T0 + 100, "{\"at\":7}", NULL, 1,
                                     NULL),
                   APEX_OK);
  assert_int_equal(OPS(f)->claim(f->s, dead, f->owner_b, 1, T0, T0 + 100, 1, NULL), APEX_OK);
  assert_int_equal(OPS(f)->heartbeat(f->s, dead, f->owner_b, T0, T0 + 100, "{\"at\":7}", NULL,
                                     1, NULL),
                   APEX_OK);
  assert_int_equal(OPS(f)->finish(f->s, done, f->owner_a, APEX_TASK_SUCCEEDED, T0, 0, "1", NULL,
                                  NULL, 1, NULL),
                   APEX_OK);
  apex__srec_t *rows = NULL;
  size_t n = 0;
  assert_int_equal(OPS(f)->recover(f->s, f->owner_a, T0 + 10, T0 + 40, dead_is_b, f->owner_b,
                                   &rows, &n, NULL),
                   APEX_OK);
  int got_unheld = 0, got_expired = 0, got_dead = 0;
  for (size_t i = 0; i < n; i++) {
    /* the caller's own rows it holds, a live owner's, ended ones: not */
    assert_true(rows[i].id != live && rows[i].id != done && rows[i].id != own);
    if (rows[i].id == unheld) got_unheld = 1;
    if (rows[i].id == expired) {
      got_expired = 1;
      assert_string_equal(rows[i].owner, "someone-gone"); /* as it was */
    }
    if (rows[i].id == dead) {
      got_dead = 1;
      assert_int_equal(rows[i].state, APEX_TASK_RUNNING);
      assert_string_equal(rows[i].checkpoint, "{\"at\":7}");
    }
  }
  assert_true(got_unheld && got_expired && got_dead);
  apex__srec_free_array(rows, n);
  /* Now held by a. */
  apex__srec_t g = get(f, expired);
  assert_string_equal(g.owner, f->owner_a);
  assert_true(g.lease_until == T0 + 40);
  apex__srec_clear(&g);
  g = get(f, live);
  assert_string_equal(g.owner, c_owner);
  apex__srec_clear(&g);
}

static void test_claim_next_takes_due_unheld_rows_oldest_first(void **state) {
  fixture_t *f = *state;
  char plugin[96];
  snprintf(plugin, sizeof plugin, "cn_%s", f->owner_a);
  /* On a shared database, other rows may be due too: only ours are
   * checked, taken until none of ours is left. */
  uint64_t a = put(f, plugin, "x", "{}", NULL, T0, 0);
  uint64_t b = put(f, plugin, "x", "{}", NULL, T0, 0);
  uint64_t held = put(f, plugin, "x", "{}", f->owner_b, T0, T0 + 100);
  apex__srec_t later = {0};
  later.id = new_id(f);
  later.plugin = plugin;
  later.action = (char *)"x";
  later.state = APEX_TASK_SCHEDULED;
  later.created_at = later.updated_at = T0;
  later.run_at = T0 + 50;
  uint64_t ex;
  assert_int_equal(OPS(f)->enqueue(f->s, &later, &ex, NULL), APEX_OK);
  uint64_t cancelled = put(f, plugin, "x", "{}", f->owner_b, T0, T0 + 100);
  int ended;
  assert_int_equal(OPS(f)->request_cancel(f->s, cancelled, NULL, T0, &ended, NULL), APEX_OK);
  apex__srec_t *rows = NULL;
  size_t n = 0;
  assert_int_equal(OPS(f)->claim_next(f->s, f->owner_a, T0 + 1, T0 + 30, 1, NULL, 0, &rows, &n, NULL),
                   APEX_OK);
  assert_int_equal(n, 1);
  apex__srec_free_array(rows, n);
  int got_a = 0, got_b = 0;
  for (int round = 0; round < 1000 && !(got_a && got_b); round++) {
    assert_int_equal(OPS(f)->claim_next(f->s, f->owner_a, T0 + 1, T0 + 30, 100, NULL, 0, &rows, &n, NULL),
                     APEX_OK);
    for (size_t i = 0; i < n; i++) {
      assert_true(rows[i].id != held && rows[i].id != later.id && rows[i].id != cancelled);
      assert_int_equal(rows[i].state, APEX_TASK_RUNNING);
    }
    apex__srec_free_array(rows, n);
    apex__srec_t g = get(f, a);
    got_a = g.state == APEX_TASK_RUNNING;
    apex__srec_clear(&g);
    g = get(f, b);
    got_b = g.state == APEX_TASK_RUNNING;
    assert_int_equal(g.attempts, 1);
    apex__srec_clear(&g);
    if (n == 0) break;
  }
  assert_true(got_a && got_b);
  /* The scheduled one once due. */
  assert_int_equal(OPS(f)->claim_next(f->s, f->owner_a, T0 + 51, T0 + 80, 100000, NULL, 0, &rows, &n,
                                      NULL),
                   APEX_OK);
  apex__srec_free_array(rows, n);
  apex__srec_t g = get(f, later.id);
  assert_int_equal(g.state, APEX_TASK_RUNNING);
  assert_string_equal(g.owner, f->owner_a);
  apex__srec_clear(&g);
  g = get(f, held);
  assert_int_equal(g.state, APEX_TASK_QUEUED);
  apex__srec_clear(&g);
}

static void test_renew_extends_only_the_owners_live_rows(void **state) {
  fixture_t *f = *state;
  uint64_t a = put(f, "p", "x", "{}", f->owner_a, T0, T0 + 10);
  uint64_t b = put(f, "p", "x", "{}", f->owner_b, T0, T0 + 10);
  assert_int_equal(OPS(f)->renew(f->s, f->owner_a, T0 + 50, NULL), APEX_OK);
  apex__srec_t g = get(f, a);
  assert_true(g.lease_until == T0 + 50);
  apex__srec_clear(&g);
  g = get(f, b);
  assert_true(g.lease_until == T0 + 10);
  apex__srec_clear(&g);
}

static void test_purge_deletes_only_terminal_rows_ended_before(void **state) {
  fixture_t *f = *state;
  uint64_t old = put(f, "p", "x", "{}", NULL, T0, 0);
  uint64_t recent = put(f, "p", "x", "{}", NULL, T0, 0);
  uint64_t live = put(f, "p", "x", "{}", NULL, T0 - 1e6, 0);
  assert_int_equal(OPS(f)->finish(f->s, old, NULL, APEX_TASK_SUCCEEDED, T0 - 100, 0, "1", NULL,
                                  NULL, 1, NULL),
                   APEX_OK);
  assert_int_equal(OPS(f)->finish(f->s, recent, NULL, APEX_TASK_CANCELLED, T0, 0, NULL, "{}",
                                  NULL, 1, NULL),
                   APEX_OK);
  size_t n = 0;
  assert_int_equal(OPS(f)->purge(f->s, T0 - 50, &n, NULL), APEX_OK);
  assert_true(n >= 1);
  apex__srec_t g;
  apex_error_t *err = NULL;
  assert_int_equal(OPS(f)->get(f->s, old, &g, &err), APEX_E_INVALID);
  apex_error_unref(err);
  g = get(f, recent);
  apex__srec_clear(&g);
  g = get(f, live);
  apex__srec_clear(&g);
}

/* Many threads writing at once: every write lands, none is lost or
 * doubled (and TSan watches the backend's locking). */
typedef struct {
  fixture_t *f;
  int k;
  uint64_t ids[40];
} worker_arg_t;

static void *writer(void *p) {
  worker_arg_t *w = p;
  fixture_t *f = w->f;
  char owner[96];
  snprintf(owner, sizeof owner, "%s-w%d", f->owner_a, w->k);
  for (int i = 0; i < 40; i++) {
    apex__srec_t r = {0};
    if (OPS(f)->alloc_ids(f->s, 1, &r.id, NULL) != APEX_OK) return (void *)1;
    r.plugin = (char *)"p";
    r.action = (char *)"x";
    r.created_at = r.updated_at = T0;
    r.owner = owner;
    r.lease_until = T0 + 100;
    uint64_t ex;
    if (OPS(f)->enqueue(f->s, &r, &ex, NULL) != APEX_OK) return (void *)2;
    /* a queued claim (wait 0) is ordered before the writes after it */
    if (OPS(f)->claim(f->s, r.id, owner, 1, T0, T0 + 100, i % 3 != 0, NULL) != APEX_OK)
      return (void *)3;
    char cp[32];
    snprintf(cp, sizeof cp, "{\"i\":%d}", i);
    if (OPS(f)->heartbeat(f->s, r.id, owner, T0, T0 + 100, cp, NULL, 1, NULL) != APEX_OK)
      return (void *)4;
    char res[32];
    snprintf(res, sizeof res, "%d", w->k * 1000 + i);
    if (OPS(f)->finish(f->s, r.id, owner, APEX_TASK_SUCCEEDED, T0, 0, res, NULL, NULL, i % 2,
                       NULL) != APEX_OK)
      return (void *)5;
    w->ids[i] = r.id;
  }
  return NULL;
}

static void test_concurrent_writers_lose_nothing(void **state) {
  fixture_t *f = *state;
  enum { N = 8 };
  pthread_t th[N];
  worker_arg_t args[N];
  for (int k = 0; k < N; k++) {
    args[k].f = f;
    args[k].k = k;
    assert_int_equal(pthread_create(&th[k], NULL, writer, &args[k]), 0);
  }
  for (int k = 0; k < N; k++) {
    void *ret;
    pthread_join(th[k], &ret);
    assert_null(ret);
  }
  assert_int_equal(OPS(f)->sync(f->s, NULL), APEX_OK);
  for (int k = 0; k < N; k++)
    for (int i = 0; i < 40; i++) {
      apex__srec_t g = get(f, args[k].ids[i]);
      assert_int_equal(g.state, APEX_TASK_SUCCEEDED);
      char res[32];
      snprintf(res, sizeof res, "%d", k * 1000 + i);
      assert_string_equal(g.result, res);
      char cp[32];
      snprintf(cp, sizeof cp, "{\"i\":%d}", i);
      assert_string_equal(g.checkpoint, cp);
      apex__srec_clear(&g);
    }
}


/* ------------------------------------------------ shared-queue workers */

/* A name no other test or earlier run on a shared database used. */
static void uniq(fixture_t *f, const char *what, char *out, size_t n) {
  snprintf(out, n, "%s_%s_%ld", what, f->owner_a, (long)time(NULL));
  for (char *c = out; *c; c++)
    if (*c == '-') *c = '_';
}

/* Enqueues a due queued row of plugin.action with opts (NULL: none). */
static uint64_t put_opts(fixture_t *f, const char *plugin, const char *action, const char *opts) {
  apex__srec_t r = {0};
  r.id = new_id(f);
  r.plugin = (char *)plugin;
  r.action = (char *)action;
  r.params = (char *)"{}";
  r.opts = (char *)opts;
  r.state = APEX_TASK_QUEUED;
  r.created_at = r.updated_at = T0;
  uint64_t existing = 99;
  assert_int_equal(OPS(f)->enqueue(f->s, &r, &existing, NULL), APEX_OK);
  assert_int_equal(existing, 0);
  return r.id;
}

/* claim_next with a max past anything a shared database holds; returns
 * how many of the rows taken are of plugin, their ids in ids (if not
 * NULL, up to 64). */
static size_t claim_of(fixture_t *f, const char *owner, double now, const char *plugin,
                       const apex__slimit_t *lim, size_t nlim, uint64_t *ids) {
  apex__srec_t *rows = NULL;
  size_t n = 0, k = 0;
  assert_int_equal(OPS(f)->claim_next(f->s, owner, now, now + 30, 100000, lim, nlim, &rows, &n,
                                      NULL),
                   APEX_OK);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(rows[i].state, APEX_TASK_RUNNING);
    assert_string_equal(rows[i].owner, owner);
    if (strcmp(rows[i].plugin, plugin) == 0) {
      if (ids && k < 64) ids[k] = rows[i].id;
      k++;
    }
  }
  apex__srec_free_array(rows, n);
  return k;
}

static void test_release_gives_a_held_row_back_with_its_checkpoint(void **state) {
  fixture_t *f = *state;
  char plugin[160];
  uniq(f, "rel", plugin, sizeof plugin);
  uint64_t id = put_opts(f, plugin, "x", NULL);
  uint64_t got[64];
  assert_int_equal(claim_of(f, f->owner_a, T0 + 1, plugin, NULL, 0, got), 1);
  assert_int_equal(got[0], id);
  assert_int_equal(OPS(f)->heartbeat(f->s, id, f->owner_a, T0 + 2, T0 + 40, "{\"step\":7}",
                                     "{\"percentage\":70}", 1, NULL),
                   APEX_OK);
  /* Only its holder can give it back. */
  assert_int_equal(OPS(f)->release(f->s, id, f->owner_b, T0 + 3, NULL), APEX_E_ALREADY);
  assert_int_equal(OPS(f)->release(f->s, id, f->owner_a, T0 + 3, NULL), APEX_OK);
  apex__srec_t g = get(f, id);
  assert_int_equal(g.state, APEX_TASK_QUEUED);
  assert_null(g.owner);
  assert_true(g.lease_until == 0);
  assert_true(g.run_at == T0 + 3);
  assert_int_equal(g.attempts, 1);
  assert_string_equal(g.checkpoint, "{\"step\":7}");
  assert_string_equal(g.progress, "{\"percentage\":70}");
  apex__srec_clear(&g);
  /* No longer a's: a second release and a's finish are refused. */
  assert_int_equal(OPS(f)->release(f->s, id, f->owner_a, T0 + 3, NULL), APEX_E_ALREADY);
  /* Another owner takes it at once (well before a's lease would have
   * ended), as its second attempt, checkpoint there to resume from. */
  assert_int_equal(claim_of(f, f->owner_b, T0 + 3, plugin, NULL, 0, got), 1);
  g = get(f, id);
  assert_int_equal(g.state, APEX_TASK_RUNNING);
  assert_string_equal(g.owner, f->owner_b);
  assert_int_equal(g.attempts, 2);
  assert_string_equal(g.checkpoint, "{\"step\":7}");
  apex__srec_clear(&g);
  assert_int_equal(OPS(f)->finish(f->s, id, f->owner_a, APEX_TASK_SUCCEEDED, T0 + 4, 0, "1", NULL,
                                  NULL, 1, NULL),
                   APEX_E_ALREADY);
  /* A terminal row, a row of nobody: refused; no row: invalid. */
  assert_int_equal(OPS(f)->finish(f->s, id, f->owner_b, APEX_TASK_SUCCEEDED, T0 + 4, 0, "1", NULL,
                                  NULL, 1, NULL),
                   APEX_OK);
  assert_int_equal(OPS(f)->release(f->s, id, f->owner_b, T0 + 5, NULL), APEX_E_ALREADY);
  g = get(f, id);
  assert_int_equal(g.state, APEX_TASK_SUCCEEDED);
  apex__srec_clear(&g);
  uint64_t unheld = put_opts(f, plugin, "x", NULL);
  assert_int_equal(OPS(f)->release(f->s, unheld, f->owner_a, T0 + 5, NULL), APEX_E_ALREADY);
  apex_error_t *err = NULL;
  assert_int_equal(OPS(f)->release(f->s, id + 1000000, f->owner_a, T0, &err), APEX_E_INVALID);
  apex_error_unref(err);
}

/* A row waiting for its retry time, given back by its holder (a worker
 * draining while it waits), keeps that time: the backoff is not cut short. */
static void test_release_of_a_retry_waiting_row_keeps_its_retry_time(void **state) {
  fixture_t *f = *state;
  char plugin[160];
  uniq(f, "relw", plugin, sizeof plugin);
  uint64_t id = put_opts(f, plugin, "x", NULL);
  uint64_t got[64];
  assert_int_equal(claim_of(f, f->owner_a, T0 + 1, plugin, NULL, 0, got), 1);
  assert_int_equal(OPS(f)->finish(f->s, id, f->owner_a, APEX_TASK_RETRY_WAIT, T0 + 2, T0 + 100,
                                  NULL, "{\"code\":\"transient\"}", NULL, 1, NULL),
                   APEX_OK);
  assert_int_equal(OPS(f)->release(f->s, id, f->owner_a, T0 + 3, NULL), APEX_OK);
  apex__srec_t g = get(f, id);
  assert_int_equal(g.state, APEX_TASK_RETRY_WAIT);
  assert_null(g.owner);
  assert_true(g.run_at == T0 + 100);
  apex__srec_clear(&g);
  /* Not before its time, by anyone; then as its second attempt. */
  assert_int_equal(claim_of(f, f->owner_b, T0 + 50, plugin, NULL, 0, got), 0);
  assert_int_equal(claim_of(f, f->owner_b, T0 + 100, plugin, NULL, 0, got), 1);
  g = get(f, id);
  assert_int_equal(g.state, APEX_TASK_RUNNING);
  assert_int_equal(g.attempts, 2);
  apex__srec_clear(&g);
}

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct {
  fixture_t *f;
  _Atomic int started;
  double took;
  int rc;
} waiter_t;

static void *waiter(void *p) {
  waiter_t *w = p;
  atomic_store(&w->started, 1);
  double t = mono();
  w->rc = OPS(w->f)->wait_work(w->f->s, 60, NULL);
  w->took = mono() - t;
  return NULL;
}

/* Runs what(f, arg) while a thread waits in wait_work(60): the wait must
 * end within 20 s (a lost signal would hold it the full minute). */
static void wakes_a_waiter(fixture_t *f, void (*what)(fixture_t *, uint64_t), uint64_t arg) {
  /* Whatever earlier writes signalled is consumed first. */
  assert_int_equal(OPS(f)->wait_work(f->s, 0, NULL), APEX_OK);
  waiter_t w = {.f = f};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, waiter, &w), 0);
  while (!atomic_load(&w.started)) sched_yield();
  what(f, arg);
  pthread_join(th, NULL);
  assert_int_equal(w.rc, APEX_OK);
  assert_true(w.took < 20);
}

static void do_enqueue(fixture_t *f, uint64_t arg) {
  (void)arg;
  put_opts(f, "wk", "x", NULL);
}
static void do_release(fixture_t *f, uint64_t id) {
  assert_int_equal(OPS(f)->release(f->s, id, f->owner_a, T0 + 2, NULL), APEX_OK);
}
static void do_cancel(fixture_t *f, uint64_t id) {
  int ended;
  assert_int_equal(OPS(f)->request_cancel(f->s, id, NULL, T0 + 3, &ended, NULL), APEX_OK);
}
static void do_wake(fixture_t *f, uint64_t arg) {
  (void)arg;
  OPS(f)->wake(f->s);
}

static void test_wait_work_wakes_on_enqueue_release_cancel_and_wake(void **state) {
  fixture_t *f = *state;
  /* Nothing happening: the timeout ends it, APEX_OK. */
  assert_int_equal(OPS(f)->wait_work(f->s, 0.05, NULL), APEX_OK);
  wakes_a_waiter(f, do_enqueue, 0);
  uint64_t id = put(f, "wk", "x", "{}", f->owner_a, T0, T0 + 100);
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_a, 1, T0 + 1, T0 + 100, 1, NULL), APEX_OK);
  wakes_a_waiter(f, do_release, id);
  assert_int_equal(OPS(f)->claim(f->s, id, f->owner_a, 2, T0 + 2, T0 + 100, 1, NULL), APEX_OK);
  wakes_a_waiter(f, do_cancel, id);
  wakes_a_waiter(f, do_wake, 0);
  /* A wake that came while nobody waited is kept for the next wait. */
  assert_int_equal(OPS(f)->wait_work(f->s, 0, NULL), APEX_OK);
  OPS(f)->wake(f->s);
  double t = mono();
  assert_int_equal(OPS(f)->wait_work(f->s, 60, NULL), APEX_OK);
  assert_true(mono() - t < 20);
}

static void test_claim_next_keeps_a_plugin_limit_across_owners(void **state) {
  fixture_t *f = *state;
  char plugin[160];
  uniq(f, "lim", plugin, sizeof plugin);
  uint64_t ids[5];
  for (int i = 0; i < 5; i++) ids[i] = put_opts(f, plugin, "x", NULL);
  apex__slimit_t lim = {APEX_SCOPE_PLUGIN, plugin, 2};
  uint64_t got[64];
  /* Oldest first, two at most, whoever claims. */
  assert_int_equal(claim_of(f, f->owner_a, T0 + 1, plugin, &lim, 1, got), 2);
  assert_int_equal(got[0], ids[0]);
  assert_int_equal(got[1], ids[1]);
  assert_int_equal(claim_of(f, f->owner_b, T0 + 1, plugin, &lim, 1, NULL), 0);
  assert_int_equal(claim_of(f, f->owner_a, T0 + 1, plugin, &lim, 1, NULL), 0);
  /* One ends: one more starts. */
  assert_int_equal(OPS(f)->finish(f->s, ids[0], f->owner_a, APEX_TASK_SUCCEEDED, T0 + 2, 0, "1",
                                  NULL, NULL, 1, NULL),
                   APEX_OK);
  assert_int_equal(claim_of(f, f->owner_b, T0 + 2, plugin, &lim, 1, got), 1);
  assert_int_equal(got[0], ids[2]);
  /* Without the limit, the caller's own choice: the rest. */
  assert_int_equal(claim_of(f, f->owner_b, T0 + 2, plugin, NULL, 0, NULL), 2);
  /* Rows whose lease expired do not count: at T0 + 100 all have. */
  uint64_t more[3];
  for (int i = 0; i < 3; i++) more[i] = put_opts(f, plugin, "x", NULL);
  assert_int_equal(claim_of(f, f->owner_a, T0 + 100, plugin, &lim, 1, got), 2);
  assert_int_equal(got[0], more[0]);
  assert_int_equal(got[1], more[1]);
}

static void test_claim_next_skips_a_full_scope_without_blocking_the_rest(void **state) {
  fixture_t *f = *state;
  char plugin[160], action[200];
  uniq(f, "hol", plugin, sizeof plugin);
  snprintf(action, sizeof action, "%s.slow", plugin);
  uint64_t s1 = put_opts(f, plugin, "slow", NULL);
  uint64_t s2 = put_opts(f, plugin, "slow", NULL);
  uint64_t s3 = put_opts(f, plugin, "slow", NULL);
  uint64_t q1 = put_opts(f, plugin, "quick", NULL);
  uint64_t q2 = put_opts(f, plugin, "quick", NULL);
  apex__slimit_t lim = {APEX_SCOPE_ACTION, action, 1};
  uint64_t got[64];
  assert_int_equal(claim_of(f, f->owner_a, T0 + 1, plugin, &lim, 1, got), 3);
  assert_int_equal(got[0], s1);
  assert_int_equal(got[1], q1);
  assert_int_equal(got[2], q2);
  apex__srec_t g = get(f, s2);
  assert_int_equal(g.state, APEX_TASK_QUEUED);
  apex__srec_clear(&g);
  g = get(f, s3);
  assert_int_equal(g.state, APEX_TASK_QUEUED);
  apex__srec_clear(&g);
}

static void test_claim_next_limits_keys_one_by_one_and_by_default(void **state) {
  fixture_t *f = *state;
  char plugin[160], k1[200], k2[200], o1[260], o2[260];
  uniq(f, "key", plugin, sizeof plugin);
  snprintf(k1, sizeof k1, "%s_one", plugin);
  snprintf(k2, sizeof k2, "%s_two", plugin);
  snprintf(o1, sizeof o1, "{\"concurrency_key\":\"%s\",\"priority\":1}", k1);
  snprintf(o2, sizeof o2, "{\"concurrency_key\":\"%s\"}", k2);
  for (int i = 0; i < 3; i++) {
    put_opts(f, plugin, "x", o1);
    put_opts(f, plugin, "x", o2);
    put_opts(f, plugin, "x", i < 2 ? "{\"priority\":2}" : NULL);
  }
  /* k1: its own limit 1; every other key: 2 each; no key: no limit. */
  apex__slimit_t lim[2] = {{APEX_SCOPE_KEY, NULL, 2}, {APEX_SCOPE_KEY, k1, 1}};
  apex__srec_t *rows = NULL;
  size_t n = 0;
  assert_int_equal(OPS(f)->claim_next(f->s, f->owner_a, T0 + 1, T0 + 31, 100000, lim, 2, &rows,
                                      &n, NULL),
                   APEX_OK);
  int with_k1 = 0, with_k2 = 0, without = 0;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(rows[i].plugin, plugin) != 0) continue;
    if (rows[i].opts && strstr(rows[i].opts, k1)) with_k1++;
    else if (rows[i].opts && strstr(rows[i].opts, k2)) with_k2++;
    else without++;
  }
  apex__srec_free_array(rows, n);
  assert_int_equal(with_k1, 1);
  assert_int_equal(with_k2, 2);
  assert_int_equal(without, 3);
  assert_int_equal(claim_of(f, f->owner_b, T0 + 1, plugin, lim, 2, NULL), 0);
}

static void test_claim_next_keeps_a_global_limit(void **state) {
  fixture_t *f = *state;
  char plugin[160];
  uniq(f, "glob", plugin, sizeof plugin);
  /* A time past every lease an earlier test or run on a shared database
   * gave (theirs are near T0, or at an earlier wall clock here). */
  double tg = T0 + 1e7 + (double)time(NULL);
  for (int i = 0; i < 4; i++) put_opts(f, plugin, "x", NULL);
  apex__slimit_t lim = {APEX_SCOPE_GLOBAL, NULL, 2};
  apex__srec_t *rows = NULL;
  size_t n = 0;
  assert_int_equal(OPS(f)->claim_next(f->s, f->owner_a, tg, tg + 30, 100000, &lim, 1, &rows, &n,
                                      NULL),
                   APEX_OK);
  assert_int_equal(n, 2);
  apex__srec_free_array(rows, n);
  assert_int_equal(OPS(f)->claim_next(f->s, f->owner_b, tg + 1, tg + 31, 100000, &lim, 1, &rows,
                                      &n, NULL),
                   APEX_OK);
  assert_int_equal(n, 0);
  free(rows);
}

/* Owners claiming at once (threads here; processes or hosts with
 * PostgreSQL) never exceed a limit between them. */
typedef struct {
  fixture_t *f;
  const char *plugin;
  int k;
  size_t taken;
} claimer_t;

static void *claimer(void *p) {
  claimer_t *c = p;
  char owner[96];
  snprintf(owner, sizeof owner, "%s-c%d", c->f->owner_a, c->k);
  apex__slimit_t lim = {APEX_SCOPE_PLUGIN, c->plugin, 3};
  /* Until nothing is left to take (rows of others on a shared database
   * are taken on the way). */
  for (int i = 0; i < 1000000; i++) {
    apex__srec_t *rows = NULL;
    size_t n = 0;
    if (OPS(c->f)->claim_next(c->f->s, owner, T0 + 1, T0 + 31, 2, &lim, 1, &rows, &n, NULL) !=
        APEX_OK)
      return (void *)1;
    for (size_t j = 0; j < n; j++)
      if (strcmp(rows[j].plugin, c->plugin) == 0) c->taken++;
    apex__srec_free_array(rows, n);
    if (n == 0) break;
  }
  return NULL;
}

static void test_concurrent_claimers_never_exceed_a_limit(void **state) {
  fixture_t *f = *state;
  char plugin[160];
  uniq(f, "race", plugin, sizeof plugin);
  for (int i = 0; i < 12; i++) put_opts(f, plugin, "x", NULL);
  enum { N = 4 };
  pthread_t th[N];
  claimer_t c[N];
  for (int k = 0; k < N; k++) {
    c[k] = (claimer_t){.f = f, .plugin = plugin, .k = k};
    assert_int_equal(pthread_create(&th[k], NULL, claimer, &c[k]), 0);
  }
  size_t total = 0;
  for (int k = 0; k < N; k++) {
    void *ret;
    pthread_join(th[k], &ret);
    assert_null(ret);
    total += c[k].taken;
  }
  assert_int_equal(total, 3);
}

#define TESTS(X)                                                           \
  X(test_ids_are_unique_increasing_and_never_reused)                       \
  X(test_enqueue_then_get_returns_every_field)                             \
  X(test_idempotency_key_returns_the_existing_task_whatever_its_state)     \
  X(test_discard_takes_back_only_a_never_started_row)                      \
  X(test_claim_takes_a_lease_one_owner_at_a_time)                          \
  X(test_heartbeat_extends_the_lease_and_saves_the_checkpoint_in_one_write) \
  X(test_terminal_rows_never_change)                                       \
  X(test_queued_claim_then_finish_keeps_both)                              \
  X(test_fail_with_retry_time_keeps_the_row_held)                          \
  X(test_request_cancel_ends_an_unheld_task_and_flags_a_held_one)          \
  X(test_list_filters_and_pages_through_every_row_once)                    \
  X(test_recover_takes_expired_and_dead_owners_rows_only)                  \
  X(test_claim_next_takes_due_unheld_rows_oldest_first)                    \
  X(test_renew_extends_only_the_owners_live_rows)                          \
  X(test_purge_deletes_only_terminal_rows_ended_before)                    \
  X(test_concurrent_writers_lose_nothing)                                  \
  X(test_release_gives_a_held_row_back_with_its_checkpoint)                \
  X(test_release_of_a_retry_waiting_row_keeps_its_retry_time)              \
  X(test_wait_work_wakes_on_enqueue_release_cancel_and_wake)               \
  X(test_claim_next_keeps_a_plugin_limit_across_owners)                    \
  X(test_claim_next_skips_a_full_scope_without_blocking_the_rest)          \
  X(test_claim_next_limits_keys_one_by_one_and_by_default)                 \
  X(test_claim_next_keeps_a_global_limit)                                  \
  X(test_concurrent_claimers_never_exceed_a_limit)

#define ENTRY(t) cmocka_unit_test_setup_teardown(t, setup, teardown),

int main(void) {
  const struct CMUnitTest tests[] = {TESTS(ENTRY)};
  int failed = 0;
  g_uri = "memory:";
  failed += cmocka_run_group_tests_name("store conformance: memory", tests, NULL, NULL);
  g_uri = NULL;
  failed += cmocka_run_group_tests_name("store conformance: sqlite", tests, NULL, NULL);
  const char *extra = getenv("APEX_TEST_STORE_URI");
  if (extra && *extra) {
    g_uri = extra;
    failed += cmocka_run_group_tests_name("store conformance: APEX_TEST_STORE_URI", tests, NULL,
                                          NULL);
  }
  return failed;
}
