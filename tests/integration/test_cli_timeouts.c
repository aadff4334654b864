/* `apex run --schedule-to-start S --attempt-timeout S --heartbeat-timeout S`
 * (cli/main.c, cli/run.c): each flag reaches the task, a timeout exits 124
 * with a result that names the timeout that fired (JSON: error.timeout; a
 * terminal: "(timeout, KIND)"), bad values are refused by name before any
 * task runs, and --help lists the flags. Plugin:
 * tests/plugins/timeouts_kit.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/cli_harness.h"

static const char *json_str(const json_t *o, const char *key) {
  const char *v = json_string_value(json_object_get(o, key));
  if (!v) fail_msg("no string '%s'", key);
  return v;
}

/* Runs timeouts_kit.work with params and one flag; asserts exit 124 and a
 * result timed_out by kind. */
static void expect_timeout(const char *params, const char *flag, const char *value,
                           const char *kind, const char *words) {
  proc_t p;
  run(&p, "run", "timeouts_kit.work", "--plugin-path", APEX_TEST_PLUGIN_DIR, "--params", params,
      flag, value, NULL);
  if (p.code != 124) fail_msg("%s: exit %d, want 124; stderr: %s", flag, p.code, buf_str(&p.err));
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines);
  assert_string_equal(json_str(r, "state"), "timed_out");
  json_t *e = json_object_get(r, "error");
  assert_string_equal(json_str(e, "code"), "timeout");
  assert_string_equal(json_str(e, "timeout"), kind);
  assert_contains(json_str(e, "message"), words);
  json_decref(lines);
  proc_free(&p);
}

static void test_attempt_timeout_names_start_to_close(void **st) {
  (void)st;
  expect_timeout("{\"stall_attempts\": 1}", "--attempt-timeout", "0.2", "start_to_close",
                 "attempt 1 ran longer than 0.200 s");
}

static void test_heartbeat_timeout_names_heartbeat(void **st) {
  (void)st;
  expect_timeout("{\"stall_attempts\": 1}", "--heartbeat-timeout", "0.2", "heartbeat",
                 "no heartbeat for 0.200 s");
}

/* Heartbeating every 30 ms, a 0.3 s heartbeat timeout does not fire. */
static void test_heartbeat_timeout_kept_alive(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "timeouts_kit.work", "--plugin-path", APEX_TEST_PLUGIN_DIR, "--params",
      "{\"ms\": 900, \"hb_ms\": 30}", "--heartbeat-timeout", "0.3", NULL);
  if (p.code != 0) fail_msg("exit %d, want 0; stderr: %s", p.code, buf_str(&p.err));
  proc_free(&p);
}

/* A retry after an attempt timeout, from the command line. */
static void test_attempt_timeout_with_retries_succeeds(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "timeouts_kit.work", "--plugin-path", APEX_TEST_PLUGIN_DIR, "--params",
      "{\"stall_attempts\": 1}", "--attempt-timeout", "0.2", "--retries", "1", NULL);
  if (p.code != 0) fail_msg("exit %d, want 0; stderr: %s", p.code, buf_str(&p.err));
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines);
  assert_string_equal(json_str(r, "state"), "succeeded");
  json_decref(lines);
  proc_free(&p);
}

/* The task starts at once, well within its schedule-to-start timeout: the
 * flag is taken and the run succeeds. (One task on an idle pool cannot be
 * kept waiting from the command line; test_timeouts.c fires it.) */
static void test_schedule_to_start_accepted(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "timeouts_kit.work", "--plugin-path", APEX_TEST_PLUGIN_DIR,
      "--schedule-to-start", "5", "--param", "ms=10", NULL);
  if (p.code != 0) fail_msg("exit %d, want 0; stderr: %s", p.code, buf_str(&p.err));
  proc_free(&p);
}

static void test_bad_values_refused_by_name(void **st) {
  (void)st;
  static const struct {
    const char *flag, *value, *why;
  } cases[] = {
      {"--schedule-to-start", "abc", "--schedule-to-start: 'abc' is not a positive number"},
      {"--attempt-timeout", "0", "--attempt-timeout: '0' is not a positive number"},
      {"--heartbeat-timeout", "inf", "--heartbeat-timeout: 'inf' is not a positive number"},
      {"--attempt-timeout", "0.0001", "--attempt-timeout: '0.0001' is too short"},
      {"--heartbeat-timeout", "2e9", "--heartbeat-timeout: '2e9' is too long"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    proc_t p;
    run(&p, "run", "timeouts_kit.work", "--plugin-path", APEX_TEST_PLUGIN_DIR, cases[i].flag,
        cases[i].value, NULL);
    assert_pre_task_error(&p, cases[i].why, "invalid");
    proc_free(&p);
  }
}

/* In a terminal the outcome line names the timeout. */
static void test_terminal_outcome_names_the_timeout(void **st) {
  (void)st;
  char name[128];
  int master = pty_open(name, sizeof name);
  char *argv[] = {(char *)APEX_CLI_PATH,
                  "run",
                  "timeouts_kit.work",
                  "--plugin-path",
                  APEX_TEST_PLUGIN_DIR,
                  "--param",
                  "stall_attempts=1",
                  "--attempt-timeout",
                  "0.2",
                  NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  proc_wait(&p);
  if (p.code != 124) fail_msg("exit %d, want 124; output:\n%s", p.code, buf_str(&p.out));
  assert_contains(buf_str(&p.out), "(timeout, start_to_close)");
  proc_free(&p);
}

static void test_help_lists_the_flags(void **st) {
  (void)st;
  proc_t p;
  run(&p, "--help", NULL);
  assert_int_equal(p.code, 0);
  assert_contains(buf_str(&p.out), "--schedule-to-start SECONDS");
  assert_contains(buf_str(&p.out), "--attempt-timeout SECONDS");
  assert_contains(buf_str(&p.out), "--heartbeat-timeout SECONDS");
  proc_free(&p);
}

/* describe shows an action's default attempt timeout. */
static void test_describe_shows_default_attempt_timeout(void **st) {
  (void)st;
  proc_t p;
  run(&p, "describe", "timeouts_kit.slow_default", "--plugin-path", APEX_TEST_PLUGIN_DIR, NULL);
  assert_int_equal(p.code, 0);
  assert_contains(buf_str(&p.out), "attempt timeout:  0.2 s");
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_attempt_timeout_names_start_to_close),
      cmocka_unit_test(test_heartbeat_timeout_names_heartbeat),
      cmocka_unit_test(test_heartbeat_timeout_kept_alive),
      cmocka_unit_test(test_attempt_timeout_with_retries_succeeds),
      cmocka_unit_test(test_schedule_to_start_accepted),
      cmocka_unit_test(test_bad_values_refused_by_name),
      cmocka_unit_test(test_terminal_outcome_names_the_timeout),
      cmocka_unit_test(test_help_lists_the_flags),
      cmocka_unit_test(test_describe_shows_default_attempt_timeout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
