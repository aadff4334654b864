/* Durable tasks in the manager (src/store/durable.c, docs/store.md): what a
 * manager with a store journals, checkpoints, recovery of what a dead
 * process left (rows written here through the store interface, as that
 * process would have left them), cancel requests from another handle,
 * shutdown leaving rows for recovery, the owner lock, lookup by id.
 * Tests plugin: tests/plugins/durable_kit.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "store/store.h"

#define KIT APEX_TEST_PLUGIN_DIR "/durable_kit.so"

static char g_path[256], g_uri[300];

static void rm_all(void) {
  char x[400];
  unlink(g_path);
  snprintf(x, sizeof x, "%s-wal", g_path);
  unlink(x);
  snprintf(x, sizeof x, "%s-shm", g_path);
  unlink(x);
  snprintf(x, sizeof x, "%s.owners", g_path);
  char cmd[500];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", x);
  if (system(cmd) != 0) {
  }
}

static int setup(void **state) {
  static unsigned seq;
  (void)state;
  snprintf(g_path, sizeof g_path, "%s/dur_%d_%u.db", APEX_TEST_BIN_DIR, (int)getpid(), ++seq);
  snprintf(g_uri, sizeof g_uri, "sqlite:%s", g_path);
  rm_all();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  rm_all();
  return 0;
}

static char g_log[4096];
static void log_fn(int level, const char *msg, void *user) {
  (void)user;
  if (level <= APEX_LOG_WARN) snprintf(g_log, sizeof g_log, "%s", msg);
}

static apex_manager_t *manager(const char *uri, const char *owner, unsigned flags) {
  apex_manager_config_t c;
  apex_manager_config_init(&c);
  c.workers = 4;
  c.store = uri;
  c.store_owner = owner;
  c.store_flags = flags;
  c.log = log_fn;
  c.log_level = APEX_LOG_WARN; /* whatever APEX_LOG says: the tests read it */
  c.shutdown_grace_ms = 50;
  apex_manager_t *m = NULL;
  int rc = apex_manager_new(&c, &m);
  if (rc != APEX_OK) fail_msg("apex_manager_new: %d (%s)", rc, g_log);
  apex_error_t *err = NULL;
  if (apex_manager_load(m, KIT, &err) != APEX_OK) fail_msg("load: %s", apex_error_message(err));
  return m;
}

static apex_task_t *submit(apex_manager_t *m, const char *action, const char *params_json,
                           int durable) {
  json_t *p = params_json ? json_loads(params_json, 0, NULL) : NULL;
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.durable = durable;
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(m, "durable_kit", action, p, &o, &t, &err);
  json_decref(p);
  if (rc != APEX_OK) fail_msg("submit %s: %s", action, apex_error_message(err));
  return t;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Waits (up to 20 s) until task id is terminal in the store; returns its
 * JSON. */
static json_t *await_stored(apex_store_t *s, uint64_t id) {
  for (int i = 0; i < 4000; i++) {
    json_t *o = NULL;
    if (apex_store_get(s, id, &o, NULL) == APEX_OK) {
      const char *st = json_string_value(json_object_get(o, "state"));
      if (st && (!strcmp(st, "succeeded") || !strcmp(st, "failed") || !strcmp(st, "cancelled") ||
                 !strcmp(st, "timed_out")))
        return o;
      json_decref(o);
    }
    sleep_ms(5);
  }
  fail_msg("task %llu never ended in the store", (unsigned long long)id);
  return NULL;
}

static const char *state_of(json_t *o) { return json_string_value(json_object_get(o, "state")); }
static const char *code_of(json_t *o) {
  return json_string_value(json_object_get(json_object_get(o, "error"), "code"));
}

static void test_durable_submit_journals_row_and_outcome(void **state) {
  (void)state;
  apex_manager_t *m = manager(g_uri, NULL, 0);
  apex_task_t *t = submit(m, "noop", NULL, 1);
  uint64_t id = apex_task_id(t);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  json_t *o = await_stored(apex_manager_store(m), id);
  assert_string_equal(state_of(o), "succeeded");
  assert_true(json_is_true(json_object_get(json_object_get(o, "result"), "ok")));
  assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 1);
  assert_string_equal(json_string_value(json_object_get(o, "plugin_version")), "1.0.0");
  json_decref(o);
  /* A task that is not durable has no row, but the manager knows it while
   * it lives. */
  apex_task_t *u = submit(m, "wait", "{\"ms\": 60000}", 0);
  json_t *row = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_store_get(apex_manager_store(m), apex_task_id(u), &row, &err),
                   APEX_E_INVALID);
  apex_error_unref(err);
  json_t *info = NULL;
  assert_int_equal(apex_manager_task_info(m, apex_task_id(u), &info, NULL), APEX_OK);
  assert_string_equal(json_string_value(json_object_get(info, "action")), "wait");
  assert_true(!strcmp(state_of(info), "queued") || !strcmp(state_of(info), "running"));
  json_decref(info);
  assert_int_equal(apex_task_cancel(u, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(u, 20000), APEX_OK);
  err = NULL;
  assert_int_equal(apex_manager_task_info(m, apex_task_id(u), &info, &err), APEX_E_INVALID);
  apex_error_unref(err);
  /* Ids are unique across both kinds. */
  assert_true(apex_task_id(u) != id);
  apex_task_release(t);
  apex_task_release(u);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  /* After a restart, by id. */
  m = manager(g_uri, NULL, 0);
  assert_int_equal(apex_manager_task_info(m, id, &info, NULL), APEX_OK);
  assert_string_equal(state_of(info), "succeeded");
  json_decref(info);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_interrupted_is_a_named_execution_error(void **state) {
  (void)state;
  assert_string_equal(apex_status_name(APEX_E_INTERRUPTED), "interrupted");
  assert_string_equal(apex_strerror(APEX_E_INTERRUPTED),
                      "the action was interrupted by a crash and not run again");
  assert_int_equal(apex_status_is_execution(APEX_E_INTERRUPTED), 1);
  assert_int_equal(apex_status_is_plugin_error(APEX_E_INTERRUPTED), 1);
  assert_int_equal(apex_status_is_load_error(APEX_E_INTERRUPTED), 0);
}

static void test_durable_without_a_store_is_refused(void **state) {
  (void)state;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(NULL, &m), APEX_OK);
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_load(m, KIT, &err), APEX_OK);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.durable = 1;
  apex_task_t *t = NULL;
  assert_int_equal(apex_manager_submit(m, "durable_kit", "noop", NULL, &o, &t, &err),
                   APEX_E_INVALID);
  assert_non_null(strstr(apex_error_message(err), "no store"));
  apex_error_unref(err);
  size_t n = 5;
  err = NULL;
  assert_int_equal(apex_manager_recover(m, &n, &err), APEX_E_INVALID);
  assert_int_equal(n, 0);
  apex_error_unref(err);
  assert_null(apex_manager_store(m));
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_idempotency_key_returns_the_same_task(void **state) {
  (void)state;
  apex_manager_t *m = manager(g_uri, NULL, 0);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.idempotency_key = "order-42";
  json_t *p = json_pack("{s:i}", "ms", 60000);
  apex_task_t *a = NULL, *b = NULL;
  assert_int_equal(apex_manager_submit(m, "durable_kit", "wait", p, &o, &a, NULL), APEX_OK);
  assert_int_equal(apex_manager_submit(m, "durable_kit", "wait", p, &o, &b, NULL), APEX_OK);
  assert_int_equal(apex_task_id(a), apex_task_id(b));
  /* Other params under the key: refused, naming it. */
  json_t *q = json_pack("{s:i}", "ms", 5);
  apex_task_t *c = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_submit(m, "durable_kit", "wait", q, &o, &c, &err),
                   APEX_E_INVALID);
  assert_non_null(strstr(apex_error_message(err), "order-42"));
  apex_error_unref(err);
  assert_int_equal(apex_task_cancel(a, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(a, 20000), APEX_OK);
  json_decref(await_stored(apex_manager_store(m), apex_task_id(a)));
  /* Ended: the key still gives it, with its outcome, and no second task
   * is made. */
  assert_int_equal(apex_manager_submit(m, "durable_kit", "wait", p, &o, &c, NULL), APEX_OK);
  assert_int_equal(apex_task_id(c), apex_task_id(a));
  assert_int_equal(apex_task_wait(c, 0), APEX_OK);
  assert_int_equal(apex_task_state(c), APEX_TASK_CANCELLED);
  apex_task_release(c);
  apex_task_release(a);
  apex_task_release(b);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  /* And after a restart. */
  m = manager(g_uri, NULL, 0);
  c = NULL;
  assert_int_equal(apex_manager_submit(m, "durable_kit", "wait", p, &o, &c, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(c, 0), APEX_OK);
  assert_int_equal(apex_task_state(c), APEX_TASK_CANCELLED);
  apex_error_t *ce = apex_task_error(c);
  assert_int_equal(apex_error_code(ce), APEX_E_CANCELLED);
  apex_error_unref(ce);
  apex_task_release(c);
  /* A succeeded one gives its result. */
  apex_submit_opts_t o2;
  apex_submit_opts_init(&o2);
  o2.idempotency_key = "order-43";
  apex_task_t *d = NULL;
  assert_int_equal(apex_manager_submit(m, "durable_kit", "noop", NULL, &o2, &d, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(d, 20000), APEX_OK);
  json_decref(await_stored(apex_manager_store(m), apex_task_id(d)));
  apex_task_t *e2 = NULL;
  assert_int_equal(apex_manager_submit(m, "durable_kit", "noop", NULL, &o2, &e2, NULL), APEX_OK);
  assert_true(e2 != d);
  assert_int_equal(apex_task_id(e2), apex_task_id(d));
  json_t *res = apex_task_result(e2);
  assert_true(json_is_true(json_object_get(res, "ok")));
  json_decref(res);
  apex_task_release(d);
  apex_task_release(e2);
  json_decref(p);
  json_decref(q);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_checkpoint_carries_to_the_next_attempt_without_a_store(void **state) {
  (void)state;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(NULL, &m), APEX_OK);
  assert_int_equal(apex_manager_load(m, KIT, NULL), APEX_OK);
  apex_task_t *t = submit(m, "steps", "{\"n\": 6, \"fail_at\": 4}", 0);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  /* attempt 1 did steps 0..3 and failed at 4; attempt 2 went on from 4 */
  assert_int_equal(json_integer_value(json_object_get(r, "from")), 4);
  assert_int_equal(json_integer_value(json_object_get(r, "ran")), 2);
  assert_int_equal(json_integer_value(json_object_get(r, "attempt")), 2);
  json_decref(r);
  apex_task_release(t);
  /* Bad checkpoints are refused; a good one after them is taken. */
  t = submit(m, "cp_bad", NULL, 0);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  r = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(r, "null")), APEX_E_INVALID);
  assert_int_equal(json_integer_value(json_object_get(r, "huge")), APEX_E_INVALID);
  assert_int_equal(json_integer_value(json_object_get(r, "bad_utf8")), APEX_E_INVALID);
  assert_int_equal(json_integer_value(json_object_get(r, "ok")), APEX_OK);
  json_decref(r);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_durable_checkpoints_and_retries_are_in_the_store(void **state) {
  (void)state;
  apex_manager_t *m = manager(g_uri, NULL, 0);
  apex_task_t *t = submit(m, "steps", "{\"n\": 6, \"fail_at\": 4}", 1);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  json_t *o = await_stored(apex_manager_store(m), apex_task_id(t));
  assert_string_equal(state_of(o), "succeeded");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "checkpoint"), "step")),
                   6);
  assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 2);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "result"), "from")), 4);
  json_decref(o);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

/* Writes a row as a dead process ("ghost", its lease expired) left it. */
static uint64_t ghost_row(apex__store_t *s, const char *action, int state, const char *params,
                          const char *checkpoint, const char *version, double deadline,
                          int cancel) {
  apex__srec_t r = {0};
  assert_int_equal(s->ops->alloc_ids(s, 1, &r.id, NULL), APEX_OK);
  double now = apex__store_now();
  r.plugin = (char *)(strcmp(action, "gone") == 0 ? "no_such_plugin" : "durable_kit");
  r.action = (char *)(strcmp(action, "gone") == 0 ? "x" : action);
  r.plugin_version = (char *)version;
  r.params = (char *)params;
  r.state = APEX_TASK_QUEUED;
  r.created_at = r.updated_at = now - 10;
  r.deadline = deadline;
  r.owner = (char *)"ghost";
  r.lease_until = now - 1;
  uint64_t ex;
  assert_int_equal(s->ops->enqueue(s, &r, &ex, NULL), APEX_OK);
  if (state == APEX_TASK_RUNNING) {
    assert_int_equal(s->ops->claim(s, r.id, "ghost", 1, now - 5, now - 1, 1, NULL), APEX_OK);
    if (checkpoint)
      assert_int_equal(s->ops->heartbeat(s, r.id, "ghost", now - 4, now - 1, checkpoint, NULL, 1,
                                         NULL),
                       APEX_OK);
  } else if (state == APEX_TASK_SUCCEEDED) {
    assert_int_equal(s->ops->finish(s, r.id, NULL, state, now - 3, 0, "{\"before\":1}", NULL,
                                    NULL, 1, NULL),
                     APEX_OK);
  }
  if (cancel) {
    int ended;
    /* held by ghost (expired): the store ends it at once */
    assert_int_equal(s->ops->request_cancel(s, r.id, "changed my mind", now, &ended, NULL),
                     APEX_OK);
  }
  return r.id;
}

static void test_recovery_applies_the_rules_to_what_a_dead_process_left(void **state) {
  (void)state;
  apex__store_t *s = NULL;
  assert_int_equal(apex__store_open(g_uri, &s, NULL), APEX_OK);
  double far = apex__store_now() + 3600;
  uint64_t resumable = ghost_row(s, "steps", APEX_TASK_RUNNING, "{\"n\":5,\"fail_at\":0}",
                                 "{\"step\":2}", "1.0.0", far, 0);
  uint64_t idem = ghost_row(s, "idem", APEX_TASK_RUNNING, "{}", "{\"step\":9}", "1.0.0", 0, 0);
  uint64_t plain = ghost_row(s, "plain", APEX_TASK_RUNNING, "{}", NULL, "1.0.0", 0, 0);
  uint64_t queued = ghost_row(s, "plain", APEX_TASK_QUEUED, "{}", NULL, "1.0.3", 0, 0);
  uint64_t done = ghost_row(s, "plain", APEX_TASK_SUCCEEDED, "{}", NULL, "1.0.0", 0, 0);
  uint64_t gone = ghost_row(s, "gone", APEX_TASK_QUEUED, "{}", NULL, "1.0.0", 0, 0);
  uint64_t major = ghost_row(s, "plain", APEX_TASK_QUEUED, "{}", NULL, "0.9.0", 0, 0);
  uint64_t late = ghost_row(s, "plain", APEX_TASK_QUEUED, "{}", NULL, "1.0.0",
                            apex__store_now() - 1, 0);
  uint64_t cancelled = ghost_row(s, "plain", APEX_TASK_QUEUED, "{}", NULL, "1.0.0", 0, 1);
  s->ops->close(s);

  apex_manager_t *m = manager(g_uri, NULL, 0);
  size_t n = 0;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_recover(m, &n, &err), APEX_OK);
  assert_int_equal(n, 7); /* not the succeeded one; nor the cancelled one, which the
                             cancel request ended at once (its owner's lease was over) */
  apex_store_t *st = apex_manager_store(m);

  json_t *o = await_stored(st, resumable);
  assert_string_equal(state_of(o), "succeeded");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "result"), "from")), 2);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "result"), "ran")), 3);
  assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 2);
  json_decref(o);

  o = await_stored(st, idem); /* from the start: no checkpoint given */
  assert_string_equal(state_of(o), "succeeded");
  assert_true(json_is_null(json_object_get(json_object_get(o, "result"), "checkpoint")));
  json_decref(o);

  o = await_stored(st, plain);
  assert_string_equal(state_of(o), "failed");
  assert_string_equal(code_of(o), "interrupted");
  assert_non_null(strstr(json_string_value(json_object_get(json_object_get(o, "error"),
                                                           "message")),
                         "neither resumable nor idempotent"));
  json_decref(o);

  o = await_stored(st, queued); /* never started: runs (1.0.3 is the same major) */
  assert_string_equal(state_of(o), "succeeded");
  json_decref(o);

  o = await_stored(st, done);
  assert_string_equal(state_of(o), "succeeded");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "result"), "before")), 1);
  assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 0);
  json_decref(o);

  o = await_stored(st, gone);
  assert_string_equal(state_of(o), "failed");
  assert_string_equal(code_of(o), "plugin_not_found");
  json_decref(o);

  o = await_stored(st, major);
  assert_string_equal(state_of(o), "failed");
  assert_string_equal(code_of(o), "plugin_error");
  const char *msg = json_string_value(json_object_get(json_object_get(o, "error"), "message"));
  assert_non_null(strstr(msg, "0.9.0"));
  assert_non_null(strstr(msg, "1.0.0"));
  json_decref(o);

  o = await_stored(st, late);
  assert_string_equal(state_of(o), "timed_out");
  json_decref(o);

  o = await_stored(st, cancelled);
  assert_string_equal(state_of(o), "cancelled");
  json_decref(o);

  /* A second recovery finds nothing more to take. */
  assert_int_equal(apex_manager_recover(m, &n, NULL), APEX_OK);
  assert_int_equal(n, 0);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

/* Retry times and deadlines are wall-clock in the store: a recovered task
 * waits for its retry time, and times out at its own deadline. */
static void test_recovery_keeps_retry_times_and_deadlines(void **state) {
  (void)state;
  apex__store_t *s = NULL;
  assert_int_equal(apex__store_open(g_uri, &s, NULL), APEX_OK);
  double now = apex__store_now();
  uint64_t retry = ghost_row(s, "plain", APEX_TASK_RUNNING, "{}", NULL, "1.0.0", 0, 0);
  double run_at = now + 1.0;
  assert_int_equal(s->ops->finish(s, retry, "ghost", APEX_TASK_RETRY_WAIT, now, run_at, NULL,
                                  "{\"code\":\"transient\"}", NULL, 1, NULL),
                   APEX_OK);
  uint64_t late = ghost_row(s, "hold", APEX_TASK_QUEUED, "{\"ms\":60000}", NULL, "1.0.0",
                            now + 1.0, 0);
  s->ops->close(s);
  apex_manager_t *m = manager(g_uri, NULL, 0);
  size_t n = 0;
  assert_int_equal(apex_manager_recover(m, &n, NULL), APEX_OK);
  assert_int_equal(n, 2);
  apex_task_t *h = NULL;
  assert_int_equal(apex_ops_find(m, retry, &h), APEX_OK);
  assert_int_equal(apex_task_state(h), APEX_TASK_SCHEDULED); /* its retry time has not come */
  assert_int_equal(apex_task_wait(h, 20000), APEX_OK);
  assert_int_equal(apex_task_state(h), APEX_TASK_SUCCEEDED);
  apex_task_release(h);
  json_t *o = await_stored(apex_manager_store(m), retry);
  assert_true(json_real_value(json_object_get(o, "updated_at")) >= run_at);
  json_decref(o);
  o = await_stored(apex_manager_store(m), late);
  assert_string_equal(state_of(o), "timed_out");
  double ended = json_real_value(json_object_get(o, "ended_at"));
  assert_true(ended >= now + 0.9 && ended < now + 15); /* its deadline, not a new one */
  json_decref(o);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_recovery_leaves_a_live_owners_tasks(void **state) {
  (void)state;
  /* A live owner: its lease expired, but its lock is held (its process
   * lives: here, this one). */
  apex__store_t *s = NULL;
  assert_int_equal(apex__store_open(g_uri, &s, NULL), APEX_OK);
  apex__srec_t r = {0};
  assert_int_equal(s->ops->alloc_ids(s, 1, &r.id, NULL), APEX_OK);
  r.plugin = (char *)"durable_kit";
  r.action = (char *)"plain";
  r.plugin_version = (char *)"1.0.0";
  r.created_at = r.updated_at = apex__store_now();
  r.owner = (char *)"alive";
  r.lease_until = apex__store_now() + 3600;
  uint64_t ex;
  assert_int_equal(s->ops->enqueue(s, &r, &ex, NULL), APEX_OK);
  s->ops->close(s);
  char dir[400], lock[500];
  snprintf(dir, sizeof dir, "%s.owners", g_path);
  mkdir(dir, 0700);
  snprintf(lock, sizeof lock, "%s/alive.lock", dir);
  int fd = open(lock, O_RDWR | O_CREAT, 0600);
  assert_true(fd >= 0);
  assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);

  apex_manager_t *m = manager(g_uri, NULL, 0);
  size_t n = 9;
  assert_int_equal(apex_manager_recover(m, &n, NULL), APEX_OK);
  assert_int_equal(n, 0);
  /* Its process dies (the lock goes): now it is taken. */
  close(fd);
  assert_int_equal(apex_manager_recover(m, &n, NULL), APEX_OK);
  assert_int_equal(n, 1);
  json_t *o = await_stored(apex_manager_store(m), r.id);
  assert_string_equal(state_of(o), "succeeded");
  json_decref(o);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_one_owner_id_one_live_manager(void **state) {
  (void)state;
  apex_manager_t *a = manager(g_uri, "svc-1", 0);
  apex_manager_config_t c;
  apex_manager_config_init(&c);
  c.store = g_uri;
  c.store_owner = "svc-1";
  c.log = log_fn;
  c.log_level = APEX_LOG_WARN; /* whatever APEX_LOG says: the tests read it */
  apex_manager_t *b = NULL;
  g_log[0] = '\0';
  assert_int_equal(apex_manager_new(&c, &b), APEX_E_STORE);
  assert_null(b);
  assert_non_null(strstr(g_log, "in use by another live manager"));
  c.store_owner = "bad/owner";
  assert_int_equal(apex_manager_new(&c, &b), APEX_E_INVALID);
  assert_int_equal(apex_manager_destroy(a, 5000), APEX_OK);
  /* Once a is gone, the id is free. */
  b = manager(g_uri, "svc-1", 0);
  assert_int_equal(apex_manager_destroy(b, 5000), APEX_OK);
}

static void test_a_foreign_file_is_refused_as_a_managers_store(void **state) {
  (void)state;
  FILE *f = fopen(g_path, "w");
  assert_non_null(f);
  fputs("definitely not sqlite\n", f);
  fclose(f);
  apex_manager_config_t c;
  apex_manager_config_init(&c);
  c.store = g_uri;
  c.log = log_fn;
  c.log_level = APEX_LOG_WARN; /* whatever APEX_LOG says: the tests read it */
  apex_manager_t *m = NULL;
  g_log[0] = '\0';
  assert_int_equal(apex_manager_new(&c, &m), APEX_E_STORE);
  assert_null(m);
  assert_non_null(strstr(g_log, g_path));
  assert_non_null(strstr(g_log, "not a database"));
}

static void test_shutdown_leaves_rows_and_cancel_comes_from_another_handle(void **state) {
  (void)state;
  apex_manager_t *m = manager(g_uri, "svc-2", 0);
  apex_task_t *t = submit(m, "wait", "{\"ms\": 60000}", 1);
  uint64_t id = apex_task_id(t);
  /* Running before the shutdown. */
  for (int i = 0; i < 4000 && apex_task_state(t) != APEX_TASK_RUNNING; i++) sleep_ms(5);
  assert_int_equal(apex_task_state(t), APEX_TASK_RUNNING);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 0), APEX_OK);
  apex_store_t *other = NULL;
  assert_int_equal(apex_store_open(g_uri, &other, NULL), APEX_OK);
  json_t *o = NULL;
  assert_int_equal(apex_store_get(other, id, &o, NULL), APEX_OK);
  assert_string_equal(state_of(o), "running"); /* not cancelled: left for recovery */
  json_decref(o);
  /* The same owner restarts and takes it back: it runs again (idempotent). */
  m = manager(g_uri, "svc-2", 0);
  size_t n = 0;
  assert_int_equal(apex_manager_recover(m, &n, NULL), APEX_OK);
  assert_int_equal(n, 1);
  apex_task_t *h = NULL;
  assert_int_equal(apex_ops_find(m, id, &h), APEX_OK);
  for (int i = 0; i < 4000 && apex_task_state(h) != APEX_TASK_RUNNING; i++) sleep_ms(5);
  assert_int_equal(apex_task_state(h), APEX_TASK_RUNNING);
  /* Another process's handle asks for a cancel: the owner acts on it. */
  assert_int_equal(apex_store_cancel(other, id, "from elsewhere", NULL), APEX_OK);
  assert_int_equal(apex_task_wait(h, 20000), APEX_OK);
  assert_int_equal(apex_task_state(h), APEX_TASK_CANCELLED);
  o = await_stored(other, id);
  assert_string_equal(state_of(o), "cancelled");
  assert_string_equal(code_of(o), "cancelled");
  assert_string_equal(json_string_value(json_object_get(o, "cancel_reason")), "from elsewhere");
  json_decref(o);
  apex_task_release(h);
  apex_store_close(other);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_durable_all_journals_every_host_task(void **state) {
  (void)state;
  apex_manager_t *m = manager("memory:", NULL, APEX_STORE_F_DURABLE_ALL);
  apex_task_t *t = submit(m, "plain", NULL, 0);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  json_t *o = NULL;
  assert_int_equal(apex_store_get(apex_manager_store(m), apex_task_id(t), &o, NULL), APEX_OK);
  assert_string_equal(state_of(o), "succeeded"); /* plain waits for its outcome */
  json_decref(o);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_durable_submit_journals_row_and_outcome, setup,
                                      teardown),
      cmocka_unit_test(test_interrupted_is_a_named_execution_error),
      cmocka_unit_test_setup_teardown(test_durable_without_a_store_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_idempotency_key_returns_the_same_task, setup, teardown),
      cmocka_unit_test_setup_teardown(test_checkpoint_carries_to_the_next_attempt_without_a_store,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_durable_checkpoints_and_retries_are_in_the_store, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_recovery_applies_the_rules_to_what_a_dead_process_left,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_recovery_keeps_retry_times_and_deadlines, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_recovery_leaves_a_live_owners_tasks, setup, teardown),
      cmocka_unit_test_setup_teardown(test_one_owner_id_one_live_manager, setup, teardown),
      cmocka_unit_test_setup_teardown(test_a_foreign_file_is_refused_as_a_managers_store, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          test_shutdown_leaves_rows_and_cancel_comes_from_another_handle, setup, teardown),
      cmocka_unit_test_setup_teardown(test_durable_all_journals_every_host_task, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
