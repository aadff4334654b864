/* Integration tests: JSON values a plugin hands over that Apex must refuse
 * (the limits in include/apex/plugin.h), from tests/plugins/hostile_values.c,
 * first through a manager as a host sees them, then through the apex CLI.
 * Each asserts the exact outcome: a refused result fails the attempt with
 * APEX_E_INVALID_RESULT and a message naming the fault, a refused progress
 * update returns APEX_E_INVALID to the plugin with a logged reason, the
 * host goes on (and ASan finds nothing left over), and the CLI writes
 * exactly one valid result line and exits by the error's class.
 *
 * Also here: apex_ctx_progress's rejections carry the very reasons the
 * validators give for the same fault. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "apex/plugin.h"
#include "integration/harness.h"
#include "plugins/hostile_values.h"

extern char **environ;

#define PLUGIN APEX_TEST_PLUGIN_DIR "/hostile_values.so"
/* Building a million levels takes a while under TSan: generous. */
#define END_MS 240000

/* ------------------------------------------------------ the host's side */

/* Every log line the manager writes, one per line, for reading reasons. */
typedef struct logbook {
  pthread_mutex_t mu;
  char *text;
  size_t len;
} logbook_t;

static void log_into(int level, const char *msg, void *user) {
  (void)level;
  logbook_t *lb = user;
  pthread_mutex_lock(&lb->mu);
  size_t n = strlen(msg);
  char *p = realloc(lb->text, lb->len + n + 2);
  if (p) {
    memcpy(p + lb->len, msg, n);
    p[lb->len + n] = '\n';
    p[lb->len + n + 1] = '\0';
    lb->text = p;
    lb->len += n + 1;
  }
  pthread_mutex_unlock(&lb->mu);
}

typedef struct fixture {
  logbook_t log;
  apex_manager_t *m;
} fixture_t;

/* Returns: a copy of the log so far (free it), so a failing assertion never
 * leaves the logbook's lock held for the teardown to wait on. */
static char *log_text(fixture_t *f) {
  pthread_mutex_lock(&f->log.mu);
  char *s = strdup(f->log.text ? f->log.text : "");
  pthread_mutex_unlock(&f->log.mu);
  assert_non_null(s);
  return s;
}

static int setup(void **st) {
  fixture_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(pthread_mutex_init(&f->log.mu, NULL), 0);
  apex_manager_config_t cfg = base_config(2);
  cfg.log = log_into;
  cfg.log_user = &f->log;
  cfg.log_level = APEX_LOG_DEBUG; /* progress rejections are logged at DEBUG */
  assert_int_equal(apex_manager_new(&cfg, &f->m), APEX_OK);
  load_ok(f->m, PLUGIN);
  *st = f;
  return 0;
}

static int teardown(void **st) {
  fixture_t *f = *st;
  /* The host survived: it still runs a task, then shuts down cleanly. */
  apex_task_t *t = submit_json(f->m, "hostile_values", "bad_then_good", NULL, NULL);
  assert_int_equal(apex_task_wait(t, END_MS), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(f->m, -1), APEX_OK);
  pthread_mutex_destroy(&f->log.mu);
  free(f->log.text);
  free(f);
  return 0;
}

static apex_task_t *run_to_end(fixture_t *f, const char *action, const char *params) {
  apex_task_t *t = submit_json(f->m, "hostile_values", action, params, NULL);
  assert_int_equal(apex_task_wait(t, END_MS), APEX_OK);
  return t;
}

/* The task failed on its one attempt with `code` and exactly `message`. */
static void assert_failed_with(apex_task_t *t, int code, const char *message) {
  assert_int_equal(apex_task_state(t), APEX_TASK_FAILED);
  assert_int_equal(apex_task_attempts(t), 1);
  assert_null(apex_task_result(t));
  apex_error_t *e = apex_task_error(t);
  assert_non_null(e);
  assert_int_equal(apex_error_code(e), code);
  assert_string_equal(apex_error_message(e), message);
  assert_string_equal(apex_error_plugin(e), "hostile_values");
  assert_int_equal(apex_error_attempt(e), 1);
  apex_error_unref(e);
}

static void expect_refused(fixture_t *f, const char *action, const char *params,
                           const char *message) {
  apex_task_t *t = run_to_end(f, action, params);
  assert_failed_with(t, APEX_E_INVALID_RESULT, message);
  apex_task_release(t);
}

/* "<where>" followed by n copies of "[0]" and the depth reason. */
static void too_deep(char *out, size_t cap, const char *where, int n) {
  size_t used = (size_t)snprintf(out, cap, "%s", where);
  for (int i = 0; i < n; i++) used += (size_t)snprintf(out + used, cap - used, "[0]");
  snprintf(out + used, cap - used, ": nested deeper than 64 levels (APEX_VALUE_MAX_DEPTH)");
}

static const char *k_cycle = "result.child.parent: contains itself (a cycle)";

static void test_result_nested_a_million_deep_fails_the_attempt(void **st) {
  char want[320];
  too_deep(want, sizeof want, "result", APEX_VALUE_MAX_DEPTH);
  expect_refused(*st, "deep_result", "{\"depth\": 1000000}", want);
}

static void test_result_string_not_utf8_fails_the_attempt(void **st) {
  expect_refused(*st, "utf8_string", NULL, "result.text: not valid UTF-8 at byte 2");
}

static void test_result_key_not_utf8_fails_the_attempt(void **st) {
  expect_refused(*st, "utf8_key", NULL, "result: key 'k?' not valid UTF-8 at byte 1");
}

static void test_cyclic_result_fails_the_attempt_and_is_freed(void **st) {
  expect_refused(*st, "cyclic_result", NULL, k_cycle);
}

static void test_cyclic_result_of_a_deferred_action_fails_the_attempt(void **st) {
  expect_refused(*st, "deferred_cyclic", NULL, k_cycle);
}

static void test_result_over_max_values_fails_the_attempt(void **st) {
  expect_refused(*st, "huge_result", "{\"n\": 1000000}",
                 "result: more than 1000000 values (APEX_VALUE_MAX_NODES)");
}

static void test_result_of_exactly_max_values_is_delivered(void **st) {
  apex_task_t *t = run_to_end(*st, "huge_result", "{\"n\": 999999}");
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_int_equal(json_array_size(r), 999999);
  json_decref(r);
  apex_task_release(t);
}

static void test_later_valid_result_replaces_a_refused_one(void **st) {
  apex_task_t *t = run_to_end(*st, "bad_then_good", NULL);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t), *want = json_pack("{s:b}", "ok", 1);
  assert_true(json_equal(r, want));
  json_decref(r);
  json_decref(want);
  apex_task_release(t);
}

static void test_handler_failure_wins_over_a_refused_result(void **st) {
  apex_task_t *t = run_to_end(*st, "bad_then_fail", NULL);
  assert_failed_with(t, APEX_E_TRANSIENT, "the handler's own failure");
  apex_task_release(t);
}

/* A progress action's outcome: succeeded with {"rc": APEX_E_INVALID}, the
 * update counted as rejected and none accepted, and `reason` logged. */
static void expect_progress_refused(fixture_t *f, const char *action, const char *reason) {
  apex_task_t *t = run_to_end(f, action, "{\"depth\": 1000000}");
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(r, "rc")), APEX_E_INVALID);
  json_decref(r);
  assert_null(apex_task_progress(t));
  apex_task_release(t);
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(f->m, &s), APEX_OK);
  assert_int_equal(s.progress_rejected, 1);
  assert_int_equal(s.progress_reported, 0);
  char line[512];
  snprintf(line, sizeof line, "progress rejected: %s\n", reason);
  char *log = log_text(f);
  if (!strstr(log, line)) fail_msg("no '%s' in the log:\n%s", line, log);
  free(log);
}

static void test_details_nested_a_million_deep_are_refused(void **st) {
  char want[320];
  too_deep(want, sizeof want, "details.d", APEX_VALUE_MAX_DEPTH - 1);
  expect_progress_refused(*st, "deep_details", want);
}

static void test_sub_tasks_nested_a_million_deep_are_refused(void **st) {
  char want[320] = "sub_tasks[0]";
  for (int i = 0; i < APEX_PROGRESS_MAX_DEPTH; i++) strcat(want, ".sub_tasks[0]");
  strcat(want, ": nested deeper than 8 levels");
  expect_progress_refused(*st, "deep_sub_tasks", want);
}

/* ------------------------------------------- one wording for progress */

static void test_short_progress_rejections_read_as_the_validators(void **st) {
  fixture_t *f = *st;
  char buf[APEX_PROGRESS_MESSAGE_MAX + 2];
  apex_task_t *t = run_to_end(f, "short_progress", NULL);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  json_t *rcs = json_object_get(r, "rcs");
  assert_int_equal(json_array_size(rcs), HV_N_SHORT_FAULTS);
  char *log = log_text(f);
  const char *at = log;
  for (size_t i = 0; i < HV_N_SHORT_FAULTS; i++) {
    const hv_fault_t *fault = &hv_short_faults[i];
    const char *msg = hv_fault_msg(fault, buf);
    assert_int_equal(json_integer_value(json_array_get(rcs, i)), APEX_E_INVALID);
    /* The C form's validator says it so... */
    char why[256];
    apex_progress_update_t u = {.percentage = fault->pct, .message = msg};
    assert_int_equal(apex_progress_update_validate(&u, why, sizeof why), APEX_E_INVALID);
    assert_string_equal(why, fault->reason);
    /* ...the JSON form too, where JSON can hold the value... */
    if (isfinite(fault->pct)) {
      json_t *j = json_pack("{s:f, s:o?}", "percentage", fault->pct, "message",
                            msg ? json_stringn_nocheck(msg, strlen(msg)) : NULL);
      assert_int_equal(apex_progress_validate(j, why, sizeof why), APEX_E_INVALID);
      assert_string_equal(why, fault->reason);
      json_decref(j);
    }
    /* ...and so does apex_ctx_progress, in the order the plugin called. */
    char line[300];
    snprintf(line, sizeof line, "progress rejected: %s\n", fault->reason);
    const char *hit = strstr(at, line);
    if (!hit) fail_msg("no '%s' after the earlier ones in the log:\n%s", line, log);
    at = hit + strlen(line);
  }
  free(log);
  json_decref(r);
  apex_task_release(t);
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(f->m, &s), APEX_OK);
  assert_int_equal(s.progress_rejected, HV_N_SHORT_FAULTS);
}

/* ------------------------------------------------------------- the CLI */

typedef struct cli_run {
  int code; /* exit status */
  char *out, *err;
} cli_run_t;

static char *slurp(FILE *fp) {
  assert_int_equal(fseek(fp, 0, SEEK_END), 0);
  long n = ftell(fp);
  assert_true(n >= 0);
  rewind(fp);
  char *s = malloc((size_t)n + 1);
  assert_non_null(s);
  assert_int_equal(fread(s, 1, (size_t)n, fp), (size_t)n);
  s[n] = '\0';
  fclose(fp);
  return s;
}

/* Runs `apex run hostile_values.ACTION [--param PARAM]` with APEX_LOG=log,
 * stdout and stderr into files (not a terminal: JSON Lines), to its end. */
static void cli(cli_run_t *r, const char *log, const char *action, const char *param) {
  char target[128], log_env[64];
  snprintf(target, sizeof target, "hostile_values.%s", action);
  snprintf(log_env, sizeof log_env, "APEX_LOG=%s", log);
  char *argv[] = {APEX_CLI_PATH, "run", "--plugin-path", APEX_TEST_PLUGIN_DIR, target,
                  param ? "--param" : NULL, (char *)param, NULL};
  size_t n_env = 0;
  while (environ[n_env]) n_env++;
  char **env = calloc(n_env + 2, sizeof *env);
  assert_non_null(env);
  size_t k = 0;
  for (size_t i = 0; i < n_env; i++)
    if (strncmp(environ[i], "APEX_LOG=", 9) != 0) env[k++] = environ[i];
  env[k++] = log_env;
  FILE *out = tmpfile(), *err = tmpfile();
  assert_non_null(out);
  assert_non_null(err);
  posix_spawn_file_actions_t fa;
  assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
  assert_int_equal(posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0), 0);
  assert_int_equal(posix_spawn_file_actions_adddup2(&fa, fileno(out), 1), 0);
  assert_int_equal(posix_spawn_file_actions_adddup2(&fa, fileno(err), 2), 0);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, env);
  posix_spawn_file_actions_destroy(&fa);
  free(env);
  assert_int_equal(rc, 0);
  int status;
  while (waitpid(pid, &status, 0) < 0) assert_int_equal(errno, EINTR);
  r->out = slurp(out);
  r->err = slurp(err);
  if (!WIFEXITED(status))
    fail_msg("the CLI died (signal %d); stderr:\n%s", WTERMSIG(status), r->err);
  r->code = WEXITSTATUS(status);
}

static void cli_free(cli_run_t *r) {
  free(r->out);
  free(r->err);
}

/* Returns: the one "result" line (a new reference), after checking every
 * stdout line is a JSON object and there is exactly one result line. */
static json_t *one_result_line(const cli_run_t *r) {
  json_t *result = NULL;
  size_t n_results = 0;
  for (const char *s = r->out; *s;) {
    const char *nl = strchr(s, '\n');
    assert_non_null(nl);
    json_error_t jerr;
    json_t *j = json_loadb(s, (size_t)(nl - s), 0, &jerr);
    if (!json_is_object(j)) fail_msg("not a JSON object line: %.*s", (int)(nl - s), s);
    if (strcmp(json_string_value(json_object_get(j, "event")), "result") == 0) {
      n_results++;
      json_decref(result);
      result = json_incref(j);
    }
    json_decref(j);
    s = nl + 1;
  }
  if (n_results != 1) fail_msg("%zu result lines in:\n%s\nstderr:\n%s", n_results, r->out, r->err);
  return result;
}

static void expect_cli_refused(const char *action, const char *param, const char *message) {
  cli_run_t r;
  cli(&r, "off", action, param);
  json_t *res = one_result_line(&r);
  assert_string_equal(json_string_value(json_object_get(res, "state")), "failed");
  json_t *e = json_object_get(res, "error");
  assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_result");
  assert_string_equal(json_string_value(json_object_get(e, "message")), message);
  assert_int_equal(r.code, 1); /* an execution error */
  json_decref(res);
  cli_free(&r);
}

static void test_cli_result_nested_a_million_deep(void **st) {
  (void)st;
  char want[320];
  too_deep(want, sizeof want, "result", APEX_VALUE_MAX_DEPTH);
  expect_cli_refused("deep_result", "depth=1000000", want);
}

static void test_cli_result_string_not_utf8(void **st) {
  (void)st;
  expect_cli_refused("utf8_string", NULL, "result.text: not valid UTF-8 at byte 2");
}

static void test_cli_result_key_not_utf8(void **st) {
  (void)st;
  expect_cli_refused("utf8_key", NULL, "result: key 'k?' not valid UTF-8 at byte 1");
}

static void test_cli_cyclic_result(void **st) {
  (void)st;
  expect_cli_refused("cyclic_result", NULL, k_cycle);
}

static void test_cli_huge_result(void **st) {
  (void)st;
  expect_cli_refused("huge_result", "n=1000000",
                     "result: more than 1000000 values (APEX_VALUE_MAX_NODES)");
}

static void expect_cli_progress_refused(const char *action, const char *reason) {
  cli_run_t r;
  cli(&r, "debug", action, "depth=1000000");
  json_t *res = one_result_line(&r);
  assert_string_equal(json_string_value(json_object_get(res, "state")), "succeeded");
  json_int_t rc = json_integer_value(json_object_get(json_object_get(res, "result"), "rc"));
  assert_int_equal(rc, APEX_E_INVALID);
  assert_int_equal(r.code, 0);
  if (!strstr(r.err, reason)) fail_msg("no '%s' in stderr:\n%s", reason, r.err);
  json_decref(res);
  cli_free(&r);
}

static void test_cli_details_nested_a_million_deep(void **st) {
  (void)st;
  char want[320];
  too_deep(want, sizeof want, "details.d", APEX_VALUE_MAX_DEPTH - 1);
  expect_cli_progress_refused("deep_details", want);
}

static void test_cli_sub_tasks_nested_a_million_deep(void **st) {
  (void)st;
  expect_cli_progress_refused("deep_sub_tasks", ".sub_tasks[0]: nested deeper than 8 levels");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_result_nested_a_million_deep_fails_the_attempt, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_result_string_not_utf8_fails_the_attempt, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_result_key_not_utf8_fails_the_attempt, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cyclic_result_fails_the_attempt_and_is_freed, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_cyclic_result_of_a_deferred_action_fails_the_attempt,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_result_over_max_values_fails_the_attempt, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_result_of_exactly_max_values_is_delivered, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_later_valid_result_replaces_a_refused_one, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_handler_failure_wins_over_a_refused_result, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_details_nested_a_million_deep_are_refused, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_sub_tasks_nested_a_million_deep_are_refused, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_short_progress_rejections_read_as_the_validators, setup,
                                      teardown),
      cmocka_unit_test(test_cli_result_nested_a_million_deep),
      cmocka_unit_test(test_cli_result_string_not_utf8),
      cmocka_unit_test(test_cli_result_key_not_utf8),
      cmocka_unit_test(test_cli_cyclic_result),
      cmocka_unit_test(test_cli_huge_result),
      cmocka_unit_test(test_cli_details_nested_a_million_deep),
      cmocka_unit_test(test_cli_sub_tasks_nested_a_million_deep),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
