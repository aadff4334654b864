/* Shared helpers of the shared-queue tests (test_workers.c,
 * test_workers_crash.c): `apex worker` processes (APEX_CLI_PATH) started
 * with posix_spawn, their JSON Lines stdout in a file the test reads
 * (APEX_LOG=info, so each rescue is logged there), the store they share
 * (an SQLite file in a temporary folder, or APEX_TEST_STORE_URI when set:
 * a PostgreSQL server the fixture started), a manager of the test's own
 * that enqueues example_async.long_task tasks, and reading what the store
 * says. Single-threaded. Include after cmocka.h, integration/harness.h and
 * integration/durable_harness.h. */
#ifndef APEX_TEST_WORKER_HARNESS_H
#define APEX_TEST_WORKER_HARNESS_H

#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* The store the test's workers share: APEX_TEST_STORE_URI (a server the
 * fixture runs; the test then owns every row in it: the tasks it counts
 * are its own enqueues), else "DIR/tasks.db". */
static inline void wh_store(char *out, size_t len, const char *dir) {
  const char *uri = getenv("APEX_TEST_STORE_URI");
  if (uri && *uri) snprintf(out, len, "%s", uri);
  else snprintf(out, len, "%s/tasks.db", dir);
}

/* Starts `apex worker --store STORE --plugin-path PLUGIN_BUILD_DIR
 * --plugins example_async --json ARGS...` with stdout in out (truncated),
 * stderr in out + ".err", APEX_LOG=info. Returns: its pid. */
static inline pid_t wh_start(const char *out, const char *store, const char *const *args) {
  char *argv[48];
  size_t n = 0;
  argv[n++] = (char *)APEX_CLI_PATH;
  argv[n++] = (char *)"worker";
  argv[n++] = (char *)"--store";
  argv[n++] = (char *)store;
  argv[n++] = (char *)"--plugin-path";
  argv[n++] = (char *)APEX_PLUGIN_BUILD_DIR;
  argv[n++] = (char *)"--plugins";
  argv[n++] = (char *)"example_async";
  argv[n++] = (char *)"--json";
  for (size_t i = 0; args && args[i] && n < 46; i++) argv[n++] = (char *)args[i];
  argv[n] = NULL;
  char err[600];
  int w = snprintf(err, sizeof err, "%s.err", out);
  assert_true(w > 0 && (size_t)w < sizeof err);
  size_t ne = 0;
  while (environ[ne]) ne++;
  char **env = calloc(ne + 2, sizeof *env);
  assert_non_null(env);
  size_t k = 0;
  for (size_t i = 0; i < ne; i++)
    if (strncmp(environ[i], "APEX_LOG=", 9) != 0) env[k++] = environ[i];
  env[k++] = (char *)"APEX_LOG=info";
  env[k] = NULL;
  posix_spawn_file_actions_t fa;
  assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
  assert_int_equal(posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, out,
                                                    O_WRONLY | O_CREAT | O_TRUNC, 0644),
                   0);
  assert_int_equal(posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, err,
                                                    O_WRONLY | O_CREAT | O_APPEND, 0644),
                   0);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, APEX_CLI_PATH, &fa, NULL, argv, env);
  posix_spawn_file_actions_destroy(&fa);
  free(env);
  assert_int_equal(rc, 0);
  return pid;
}

/* Waits (up to 30 s) until worker output out says it serves. */
static inline void wh_wait_ready(const char *out) {
  int64_t end = now_ms() + 30000;
  while (dh_count_lines(out, "\"event\":\"worker\"") < 1) {
    if (now_ms() > end) fail_msg("no worker started in %s:\n%s", out, dh_slurp(out));
    nap_ms(5);
  }
}

/* SIGTERM, then waits (up to ms) for its exit. Returns: its code. */
static inline int wh_stop(pid_t pid, int64_t ms) {
  kill(pid, SIGTERM);
  return dh_wait(pid, ms);
}

/* The last line of out that contains needle, parsed (a new reference), or
 * NULL. */
static inline json_t *wh_last_line(const char *out, const char *needle) {
  char *s = dh_slurp(out);
  json_t *j = NULL;
  for (char *line = s, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    if (!nl) break;
    *nl = '\0';
    if (strstr(line, needle)) {
      json_decref(j);
      j = json_loads(line, 0, NULL);
    }
  }
  free(s);
  return j;
}

/* A manager on store that loads example_async (to enqueue), quiet. */
static inline apex_manager_t *wh_submitter(const char *store) {
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = 1;
  cfg.store = store;
  cfg.log = quiet_log;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  char path[512];
  snprintf(path, sizeof path, "%s/example_async.so", APEX_PLUGIN_BUILD_DIR);
  load_ok(m, path);
  return m;
}

/* Enqueues a long_task of steps x step_ms that logs to log. Returns: its id. */
static inline uint64_t wh_enqueue(apex_manager_t *m, int steps, int step_ms, const char *log) {
  json_t *p = json_pack("{s:i, s:i, s:s}", "steps", steps, "step_ms", step_ms, "step_log", log);
  assert_non_null(p);
  uint64_t id = 0;
  apex_error_t *err = NULL;
  int rc = apex_manager_enqueue(m, "example_async", "long_task", p, NULL, &id, &err);
  if (rc != APEX_OK) fail_msg("enqueue: %s", err ? apex_error_message(err) : apex_strerror(rc));
  json_decref(p);
  assert_true(id > 0);
  return id;
}

/* The state of task id in s (a static copy: "succeeded", ...). */
static inline const char *wh_state(apex_store_t *s, uint64_t id) {
  static char st[32];
  json_t *j = NULL;
  st[0] = '\0';
  if (apex_store_get(s, id, &j, NULL) == APEX_OK)
    snprintf(st, sizeof st, "%s", json_string_value(json_object_get(j, "state")));
  json_decref(j);
  return st;
}

/* The store's tasks of plugin.action in state running, from one
 * apex_store_list (one query: one snapshot). */
static inline int wh_count_running(apex_store_t *s, const char *plugin, const char *action) {
  apex_store_filter_t f = APEX_STORE_FILTER_INIT;
  f.states = APEX_OPS_STATE(APEX_TASK_RUNNING);
  f.plugin = plugin;
  f.action = action;
  f.limit = 10000;
  json_t *page = NULL;
  assert_int_equal(apex_store_list(s, &f, &page, NULL), APEX_OK);
  int n = (int)json_array_size(json_object_get(page, "tasks"));
  assert_true(json_is_null(json_object_get(page, "next")));
  json_decref(page);
  return n;
}

static inline int wh_terminal(const char *st) {
  return strcmp(st, "succeeded") == 0 || strcmp(st, "failed") == 0 ||
         strcmp(st, "cancelled") == 0 || strcmp(st, "timed_out") == 0;
}

/* Waits up to ms until every one of the n tasks ids ended. Returns: 1, or
 * 0 on the deadline. */
static inline int wh_await_all(apex_store_t *s, const uint64_t *ids, size_t n, int64_t ms) {
  int64_t end = now_ms() + ms;
  size_t from = 0;
  while (from < n) {
    if (wh_terminal(wh_state(s, ids[from]))) {
      from++;
      continue;
    }
    if (now_ms() > end) return 0;
    nap_ms(20);
  }
  return 1;
}

/* Counts the lines of path that start with "ID what ". */
static inline int wh_count_task_lines(const char *path, uint64_t id, const char *what) {
  char needle[64];
  snprintf(needle, sizeof needle, "%llu %s ", (unsigned long long)id, what);
  char *s = dh_slurp(path);
  int n = 0;
  for (char *line = s, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    if (!nl) break;
    if (strncmp(line, needle, strlen(needle)) == 0) n++;
  }
  free(s);
  return n;
}

#endif
