/* Shared helpers of the integration tests: clocks, awaiting a condition
 * with a generous bound, a silent log sink, loading the test plugins and
 * submitting with params written as JSON text. Include after cmocka.h. */
#ifndef APEX_TEST_HARNESS_H
#define APEX_TEST_HARNESS_H

#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "apex/apex.h"

/* Latency bound for "promptly": generous, so a loaded CI box or TSan passes. */
#define PROMPT_MS 2000

static inline int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Threads of this process (-1 if /proc cannot be read). A manager freed
 * by a thread of its own (after apex_manager_destroy returned APEX_E_BUSY)
 * is gone once the count is back to what it was before the manager: await
 * that, as nothing public can say it. */
static inline int count_threads(void) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* Polls cond every millisecond until it holds or ms pass, then asserts it. */
#define AWAIT(cond, ms)                                                   \
  do {                                                                    \
    int64_t await_end_ = now_ms() + (ms);                                 \
    while (!(cond) && now_ms() < await_end_) nap_ms(1);                   \
    assert_true(cond);                                                    \
  } while (0)

static inline void quiet_log(int level, const char *msg, void *user) {
  (void)level;
  (void)msg;
  (void)user;
}

/* Loads the plugin at path into m, asserting success (the error's message
 * is printed if not). */
static inline void load_ok(apex_manager_t *m, const char *path) {
  apex_error_t *err = NULL;
  int rc = apex_manager_load(m, path, &err);
  if (rc != APEX_OK) print_error("load %s: %s\n", path, apex_error_message(err));
  apex_error_unref(err);
  assert_int_equal(rc, APEX_OK);
}

/* Loads testkit, hostile and example_async into m, asserting success. */
static inline void load_test_plugins(apex_manager_t *m) {
  const char *files[] = {APEX_TEST_PLUGIN_DIR "/testkit.so", APEX_TEST_PLUGIN_DIR "/hostile.so",
                         APEX_PLUGIN_BUILD_DIR "/example_async.so"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    assert_int_equal(apex_manager_load(m, files[i], NULL), APEX_OK);
}

/* Returns: m's counters, asserting the call succeeds. */
static inline apex_stats_t stats_of(apex_manager_t *m) {
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s), APEX_OK);
  return s;
}

/* Waits (10 s at most) for t's end, asserting it came. */
static inline void wait_done(apex_task_t *t) { assert_int_equal(apex_task_wait(t, 10000), APEX_OK); }

/* Returns: 1 if t's error message contains needle, else 0 (printing the
 * message it has). */
static inline int error_mentions(apex_task_t *t, const char *needle) {
  apex_error_t *e = apex_task_error(t);
  int found = e && strstr(apex_error_message(e), needle) != NULL;
  if (!found) print_error("error message: '%s' (want '%s')\n", apex_error_message(e), needle);
  apex_error_unref(e);
  return found;
}

/* Returns: submit options with an overall timeout of s seconds. */
static inline apex_submit_opts_t opts_timeout(double s) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = s;
  return o;
}

/* A config with `workers` workers and a silent log. */
static inline apex_manager_config_t base_config(unsigned workers) {
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = workers;
  cfg.log = quiet_log;
  return cfg;
}

/* A manager made from cfg with the test plugins loaded, asserting success. */
static inline apex_manager_t *make_test_manager(const apex_manager_config_t *cfg) {
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(cfg, &m), APEX_OK);
  assert_non_null(m);
  load_test_plugins(m);
  return m;
}

/* Submits plugin.action with params given as JSON text (NULL: none),
 * asserting success (the error's message is printed if not).
 * Returns: the task (release it). */
static inline apex_task_t *submit_json(apex_manager_t *m, const char *plugin, const char *action,
                                       const char *params_json, const apex_submit_opts_t *opts) {
  json_t *params = NULL;
  if (params_json) {
    params = json_loads(params_json, 0, NULL);
    assert_non_null(params);
  }
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(m, plugin, action, params, opts, &t, &err);
  if (rc != APEX_OK) print_error("submit %s.%s: %s\n", plugin, action, apex_error_message(err));
  json_decref(params);
  apex_error_unref(err);
  assert_int_equal(rc, APEX_OK);
  assert_non_null(t);
  return t;
}

#endif
