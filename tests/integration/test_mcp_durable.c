/* `apex mcp --store`: MCP tasks that outlive the server. Raw JSON-RPC over
 * stdio (mcp_harness.h) against the built apex, with example_async's
 * resumable long_task: a task-augmented call whose server is killed
 * (SIGKILL) mid-run is taken over by the next server on the same store
 * and its result read by the same taskId; a finished task's result (a
 * success and a failure) is the same after a restart as before it;
 * tasks/cancel reaches a task across a restart and one another process
 * runs; tasks/list pages through the store; a finished task past its ttl
 * is gone; a bad taskId is -32602 as without a store. The step log
 * (long_task's step_log) says how far a task got, so nothing sleeps for
 * correctness. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "integration/harness.h"
#include "integration/mcp_harness.h"

#define REQ(id, method, params) \
  "{\"jsonrpc\":\"2.0\",\"id\":" #id ",\"method\":\"" method "\",\"params\":" params "}"

typedef struct fixture {
  char dir[256], store[300], log[300];
} fixture_t;

static int setup(void **st) {
  fixture_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  const char *base = getenv("TMPDIR");
  snprintf(f->dir, sizeof f->dir, "%s/apex-mcpd-XXXXXX", base && *base ? base : "/tmp");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->store, sizeof f->store, "%s/tasks.db", f->dir);
  snprintf(f->log, sizeof f->log, "%s/steps.log", f->dir);
  *st = f;
  return 0;
}

static void rm_tree(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char p[1024];
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      struct stat sb;
      if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rm_tree(p);
      else (void)unlink(p);
    }
    closedir(d);
  }
  (void)rmdir(dir);
}

static int teardown(void **st) {
  fixture_t *f = *st;
  rm_tree(f->dir);
  free(f);
  return 0;
}

/* Starts `apex mcp --plugin-path PLUGINS --plugin example_async --store
 * STORE` (store NULL: none) and initializes it at 2025-11-25. */
static mcp_child_t *start(const char *store) {
  mcp_child_t *c = calloc(1, sizeof *c);
  assert_non_null(c);
  int pin[2], pout[2];
  assert_int_equal(pipe2(pin, O_CLOEXEC), 0);
  assert_int_equal(pipe2(pout, O_CLOEXEC), 0);
  const char *argv[] = {APEX_CLI_PATH, "mcp", "--plugin-path", APEX_PLUGIN_BUILD_DIR, "--plugin",
                        "example_async", store ? "--store" : NULL, store, NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pin[0], 0);
  posix_spawn_file_actions_adddup2(&fa, pout[1], 1);
  assert_int_equal(posix_spawn(&c->pid, APEX_CLI_PATH, &fa, NULL, (char *const *)argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  close(pin[0]);
  close(pout[1]);
  c->in = pin[1];
  c->out = pout[0];
  c->notes = json_array();
  signal(SIGPIPE, SIG_IGN);
  json_decref(mcp_init(c, "2025-11-25"));
  return c;
}

/* SIGKILL: the server dies with its task mid-run, as in a crash. */
static void kill_hard(mcp_child_t *c) {
  assert_int_equal(kill(c->pid, SIGKILL), 0);
  int stv;
  assert_int_equal(waitpid(c->pid, &stv, 0), c->pid);
  assert_true(WIFSIGNALED(stv));
  close(c->in);
  close(c->out);
  free(c->buf);
  json_decref(c->notes);
  free(c);
}

/* Lines of path that start "ID done" (steps long_task finished). */
static size_t steps_done(const char *path) {
  FILE *fp = fopen(path, "r");
  if (!fp) return 0;
  char line[256];
  size_t n = 0;
  while (fgets(line, sizeof line, fp))
    if (strstr(line, " done ")) n++;
  fclose(fp);
  return n;
}

static void await_steps(const char *path, size_t n) {
  int64_t end = now_ms() + MCP_DEADLINE_MS;
  while (steps_done(path) < n) {
    if (now_ms() > end) fail_msg("long_task did not get to step %zu", n);
    nap_ms(10);
  }
}

/* Sends a task-augmented call of long_task with args (a JSON object's
 * members) and returns its taskId (copied into tid). */
static void call_task(mcp_child_t *c, json_int_t id, const char *args, const char *task,
                      char *tid, size_t len) {
  mcp_send(c,
           "{\"jsonrpc\":\"2.0\",\"id\":%lld,\"method\":\"tools/call\",\"params\":{\"name\":"
           "\"example_async.long_task\",\"arguments\":{%s},\"task\":%s}}",
           (long long)id, args, task);
  json_t *r = mcp_response(c, id);
  json_t *t = json_object_get(json_object_get(r, "result"), "task");
  assert_non_null(t);
  assert_string_equal(json_string_value(json_object_get(t, "status")), "working");
  const char *s = json_string_value(json_object_get(t, "taskId"));
  assert_non_null(s);
  /* apex-ID-SECRET: 32 hex digits nobody can guess. */
  const char *dash = strrchr(s, '-');
  assert_true(strncmp(s, "apex-", 5) == 0 && dash && strlen(dash + 1) == 32);
  snprintf(tid, len, "%s", s);
  json_decref(r);
}

/* Returns: the result (or error) object of tasks/METHOD on tid (new
 * reference: the whole response). */
static json_t *task_req(mcp_child_t *c, json_int_t id, const char *method, const char *tid) {
  mcp_send(c, "{\"jsonrpc\":\"2.0\",\"id\":%lld,\"method\":\"tasks/%s\",\"params\":{\"taskId\":\"%s\"}}",
           (long long)id, method, tid);
  return mcp_response(c, id);
}

static const char *status_of(const json_t *r) {
  const char *s = json_string_value(json_object_get(json_object_get(r, "result"), "status"));
  return s ? s : "(no status: an error?)";
}

static void test_killed_mid_run_resumes_and_result_by_same_task_id(void **st) {
  fixture_t *f = *st;
  mcp_child_t *c = start(f->store);
  char tid[128], args[512];
  snprintf(args, sizeof args, "\"steps\":30,\"step_ms\":40,\"step_log\":\"%s\"", f->log);
  call_task(c, 1, args, "{\"ttl\":600000}", tid, sizeof tid);
  await_steps(f->log, 3);
  kill_hard(c);
  size_t before = steps_done(f->log);
  /* A new server on the same store takes the task over at start. */
  c = start(f->store);
  json_t *r = task_req(c, 2, "get", tid);
  assert_string_equal(json_string_value(json_object_get(json_object_get(r, "result"), "taskId")), tid);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "result"), "ttl")), 600000);
  json_decref(r);
  r = task_req(c, 3, "result", tid);
  json_t *res = json_object_get(r, "result");
  assert_non_null(res);
  assert_false(json_is_true(json_object_get(res, "isError")));
  json_t *sc = json_object_get(res, "structuredContent");
  assert_int_equal(json_integer_value(json_object_get(sc, "steps")), 30);
  /* Resumed from its last checkpoint, not run again from step 0: the
   * step logged last, or the one after it when the kill came between its
   * checkpoint and its log line. */
  json_int_t at = json_integer_value(json_object_get(sc, "resumed_at"));
  assert_true(before >= 3 && (size_t)at >= before && (size_t)at <= before + 1);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(json_object_get(res, "_meta"),
                                          "io.modelcontextprotocol/related-task"),
                          "taskId")),
                      tid);
  json_decref(r);
  r = task_req(c, 4, "get", tid);
  assert_string_equal(status_of(r), "completed");
  json_decref(r);
  /* The resumed attempt did only the steps after its checkpoint. */
  assert_int_equal(steps_done(f->log), before + (size_t)(30 - at));
  assert_int_equal(mcp_finish(c), 0);
}

static void test_client_gone_leaves_task_for_next_server(void **st) {
  fixture_t *f = *st;
  mcp_child_t *c = start(f->store);
  char tid[128], args[512];
  snprintf(args, sizeof args, "\"steps\":20,\"step_ms\":20,\"step_log\":\"%s\"", f->log);
  call_task(c, 1, args, "{}", tid, sizeof tid);
  await_steps(f->log, 1);
  /* stdin closed: the server exits without cancelling the durable task
   * (no "disconnected"), which the next server finishes. */
  assert_int_equal(mcp_finish(c), 0);
  c = start(f->store);
  json_t *r = task_req(c, 2, "result", tid);
  json_t *res = json_object_get(r, "result");
  assert_false(json_is_true(json_object_get(res, "isError")));
  assert_int_equal(json_integer_value(json_object_get(json_object_get(res, "structuredContent"),
                                                      "steps")),
                   20);
  json_decref(r);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_finished_results_same_after_restart(void **st) {
  fixture_t *f = *st;
  mcp_child_t *c = start(f->store);
  char ok[128], bad[128];
  /* Steps long enough that the tasks/result requests (sent at once) wait
   * for the end: answered from the task's own end (its DONE event), the
   * answer a restart must repeat from the store. */
  call_task(c, 1, "\"steps\":2,\"step_ms\":300", "{}", ok, sizeof ok);
  /* Fails its first attempt on purpose, and has no retry: failed. */
  call_task(c, 2, "\"steps\":2,\"step_ms\":300,\"fail_attempts\":1", "{}", bad, sizeof bad);
  json_t *r_ok = task_req(c, 3, "result", ok);
  json_t *r_bad = task_req(c, 4, "result", bad);
  json_t *res = json_object_get(r_bad, "result");
  assert_true(json_is_true(json_object_get(res, "isError")));
  json_t *e = json_object_get(json_object_get(res, "structuredContent"), "error");
  assert_string_equal(json_string_value(json_object_get(e, "code")), "transient");
  assert_string_equal(json_string_value(json_object_get(e, "plugin")), "example_async");
  assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(res, "content"), 0), "text")),
                      "transient: attempt 1 of the first 1 fails on purpose");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(json_object_get(r_ok, "result"),
                                                                      "structuredContent"),
                                                      "steps")),
                   2);
  json_t *g = task_req(c, 5, "get", bad);
  assert_string_equal(status_of(g), "failed");
  assert_non_null(json_object_get(json_object_get(g, "result"), "statusMessage"));
  json_decref(g);
  assert_int_equal(mcp_finish(c), 0);

  c = start(f->store);
  json_t *r2_ok = task_req(c, 3, "result", ok);
  json_t *r2_bad = task_req(c, 4, "result", bad);
  /* Exactly what the live path answered. */
  assert_true(json_equal(r_ok, r2_ok));
  assert_true(json_equal(r_bad, r2_bad));
  g = task_req(c, 5, "get", ok);
  assert_string_equal(status_of(g), "completed");
  json_decref(g);
  g = task_req(c, 6, "get", bad);
  assert_string_equal(status_of(g), "failed");
  json_decref(g);
  mcp_send(c, REQ(7, "tasks/list", "{}"));
  json_t *l = mcp_response(c, 7);
  json_t *tasks = json_object_get(json_object_get(l, "result"), "tasks");
  assert_int_equal(json_array_size(tasks), 2);
  assert_string_equal(json_string_value(json_object_get(json_array_get(tasks, 0), "taskId")), ok);
  assert_string_equal(json_string_value(json_object_get(json_array_get(tasks, 1), "taskId")), bad);
  assert_null(json_object_get(json_object_get(l, "result"), "nextCursor"));
  json_decref(l);
  json_decref(r_ok);
  json_decref(r_bad);
  json_decref(r2_ok);
  json_decref(r2_bad);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_cancel_across_restart(void **st) {
  fixture_t *f = *st;
  mcp_child_t *c = start(f->store);
  char tid[128], args[512];
  snprintf(args, sizeof args, "\"steps\":100000,\"step_ms\":20,\"step_log\":\"%s\"", f->log);
  call_task(c, 1, args, "{}", tid, sizeof tid);
  await_steps(f->log, 1);
  kill_hard(c);
  c = start(f->store);
  json_t *r = task_req(c, 2, "get", tid);
  assert_string_equal(status_of(r), "working");
  json_decref(r);
  r = task_req(c, 3, "cancel", tid);
  assert_string_equal(status_of(r), "cancelled");
  json_decref(r);
  /* The recovered task stops, and its result says so. */
  r = task_req(c, 4, "result", tid);
  json_t *res = json_object_get(r, "result");
  assert_true(json_is_true(json_object_get(res, "isError")));
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(json_object_get(res, "structuredContent"), "error"),
                          "code")),
                      "cancelled");
  json_decref(r);
  r = task_req(c, 5, "cancel", tid);
  assert_int_equal(mcp_error_code(r), -32602);
  json_decref(r);
  assert_int_equal(mcp_finish(c), 0);
  /* Still cancelled after another restart. */
  c = start(f->store);
  r = task_req(c, 6, "get", tid);
  assert_string_equal(status_of(r), "cancelled");
  json_decref(r);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_cancel_and_result_of_a_task_another_server_runs(void **st) {
  fixture_t *f = *st;
  mcp_child_t *a = start(f->store);
  char tid[128], args[512];
  snprintf(args, sizeof args, "\"steps\":100000,\"step_ms\":20,\"step_log\":\"%s\"", f->log);
  call_task(a, 1, args, "{}", tid, sizeof tid);
  await_steps(f->log, 1);
  /* B shares the store while A lives: A's task stays A's. */
  mcp_child_t *b = start(f->store);
  json_t *r = task_req(b, 2, "get", tid);
  assert_string_equal(status_of(r), "working");
  json_decref(r);
  r = task_req(b, 3, "cancel", tid);
  assert_string_equal(status_of(r), "cancelled");
  json_decref(r);
  /* B's tasks/result waits (on the store) for A to stop the task. */
  r = task_req(b, 4, "result", tid);
  assert_true(json_is_true(json_object_get(json_object_get(r, "result"), "isError")));
  json_decref(r);
  /* A, whose session made the task, sees the same. */
  r = task_req(a, 5, "get", tid);
  assert_string_equal(status_of(r), "cancelled");
  json_decref(r);
  assert_int_equal(mcp_finish(b), 0);
  assert_int_equal(mcp_finish(a), 0);
}

static void test_list_pages_through_the_store(void **st) {
  fixture_t *f = *st;
  mcp_child_t *c = start(f->store);
  enum { N = 60 };
  char tids[N][128];
  for (int i = 0; i < N; i++) call_task(c, 100 + i, "\"steps\":0", "{}", tids[i], sizeof tids[i]);
  assert_int_equal(mcp_finish(c), 0);
  c = start(f->store);
  json_t *seen = json_object();
  char cursor[128] = "";
  int pages = 0;
  for (;;) {
    if (*cursor)
      mcp_send(c, "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"tasks/list\",\"params\":{\"cursor\":\"%s\"}}",
               pages + 1, cursor);
    else
      mcp_send(c, "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"tasks/list\",\"params\":{}}", pages + 1);
    json_t *r = mcp_response(c, pages + 1);
    pages++;
    json_t *res = json_object_get(r, "result");
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(res, "tasks"), i, t) {
      const char *id = json_string_value(json_object_get(t, "taskId"));
      assert_null(json_object_get(seen, id)); /* no task twice */
      json_object_set_new(seen, id, json_true());
    }
    const char *next = json_string_value(json_object_get(res, "nextCursor"));
    if (!next) {
      json_decref(r);
      break;
    }
    snprintf(cursor, sizeof cursor, "%s", next);
    json_decref(r);
    assert_true(pages < 10);
  }
  assert_true(pages >= 2);
  assert_int_equal(json_object_size(seen), N);
  for (int i = 0; i < N; i++) assert_non_null(json_object_get(seen, tids[i]));
  json_decref(seen);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_finished_task_past_ttl_is_gone(void **st) {
  fixture_t *f = *st;
  mcp_child_t *c = start(f->store);
  char tid[128], keep[128];
  call_task(c, 1, "\"steps\":100000,\"step_ms\":20", "{\"ttl\":1}", tid, sizeof tid);
  call_task(c, 2, "\"steps\":1,\"step_ms\":5", "{}", keep, sizeof keep);
  /* Unfinished, it is there whatever its ttl. */
  json_t *r = task_req(c, 3, "get", tid);
  assert_string_equal(status_of(r), "working");
  json_decref(r);
  r = task_req(c, 4, "cancel", tid);
  assert_string_equal(status_of(r), "cancelled");
  json_decref(r);
  /* Once its handler stopped, past its 1 ms: gone for get, result,
   * cancel and list. */
  json_int_t id = 100;
  int64_t end = now_ms() + MCP_DEADLINE_MS;
  for (;; id++) {
    r = task_req(c, id, "get", tid);
    json_int_t code = mcp_error_code(r);
    json_decref(r);
    if (code == -32602) break;
    assert_true(now_ms() < end);
    nap_ms(20);
  }
  static const char *const m[] = {"result", "cancel"};
  for (int i = 0; i < 2; i++) {
    r = task_req(c, 5 + i, m[i], tid);
    assert_int_equal(mcp_error_code(r), -32602);
    json_decref(r);
  }
  json_decref(task_req(c, 7, "result", keep));
  mcp_send(c, REQ(8, "tasks/list", "{}"));
  r = mcp_response(c, 8);
  json_t *tasks = json_object_get(json_object_get(r, "result"), "tasks");
  assert_int_equal(json_array_size(tasks), 1);
  assert_string_equal(json_string_value(json_object_get(json_array_get(tasks, 0), "taskId")), keep);
  json_decref(r);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_bad_task_ids_are_32602(void **st) {
  fixture_t *f = *st;
  mcp_child_t *c = start(f->store);
  char tid[128], wrong[128];
  call_task(c, 1, "\"steps\":1,\"step_ms\":1", "{}", tid, sizeof tid);
  json_decref(task_req(c, 2, "result", tid));
  /* The right id with one secret digit changed. */
  snprintf(wrong, sizeof wrong, "%s", tid);
  char *last = wrong + strlen(wrong) - 1;
  *last = *last == '0' ? '1' : '0';
  char no_secret[64];
  snprintf(no_secret, sizeof no_secret, "%.*s", (int)(strrchr(tid, '-') - tid), tid);
  const char *const bad[] = {"nope", no_secret, wrong, "apex-999999-0123456789abcdef0123456789abcdef",
                             "apex-0-0123456789abcdef0123456789abcdef", ""};
  json_int_t id = 10;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    static const char *const m[] = {"get", "result", "cancel"};
    for (int k = 0; k < 3; k++) {
      json_t *r = task_req(c, id, m[k], bad[i]);
      assert_int_equal(mcp_error_code(r), -32602);
      json_decref(r);
      id++;
    }
  }
  mcp_send(c, REQ(90, "tasks/get", "{\"taskId\":7}"));
  json_t *r = mcp_response(c, 90);
  assert_int_equal(mcp_error_code(r), -32602);
  json_decref(r);
  mcp_send(c, REQ(91, "tasks/list", "{\"cursor\":\"not-a-cursor\"}"));
  r = mcp_response(c, 91);
  assert_int_equal(mcp_error_code(r), -32602);
  json_decref(r);
  mcp_assert_serving(c, 92);
  assert_int_equal(mcp_finish(c), 0);
  /* Without the store the same id is unknown: its tasks lived in memory. */
  c = start(NULL);
  r = task_req(c, 93, "get", tid);
  assert_int_equal(mcp_error_code(r), -32602);
  json_decref(r);
  assert_int_equal(mcp_finish(c), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_killed_mid_run_resumes_and_result_by_same_task_id, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_client_gone_leaves_task_for_next_server, setup, teardown),
      cmocka_unit_test_setup_teardown(test_finished_results_same_after_restart, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_across_restart, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_and_result_of_a_task_another_server_runs, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_list_pages_through_the_store, setup, teardown),
      cmocka_unit_test_setup_teardown(test_finished_task_past_ttl_is_gone, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_task_ids_are_32602, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
