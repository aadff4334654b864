/* The apex command's contract, end to end: exactly one result line and the
 * documented exit code, whatever happens. A second stop signal while the
 * handler ignores the cancel, a signal while the plugin's init or shutdown
 * hook hangs, a handler that rejects its params at run time, a plugin that
 * fails to load, a result no JSON line can hold. The plugins are hostile
 * (ignore_cancel) and cli_kit, from APEX_TEST_PLUGIN_DIR; the child runs on
 * pipes, or on a pseudo-terminal for what a person sees (cli_harness.h).
 *
 * Single-threaded; each child is reaped (killed and failed past a generous
 * deadline), so none outlives its test. Bounds on "at once" are seconds,
 * far above what the command takes, far below the 60 s the hooks hang. */
#include <setjmp.h>
#include <signal.h>
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

/* "At once": a second signal is answered in milliseconds; the bound is
 * generous for a loaded machine and the sanitizers, and the line each test
 * asserts shows the main thread wrote it (the 2 s backstop writes none). */
#define AT_ONCE_MS 3000

static const char *str_at(const json_t *o, const char *key) {
  const char *v = json_string_value(json_object_get(o, key));
  if (!v) fail_msg("no string '%s'", key);
  return v;
}

/* Returns: the task id of the first attempt line. */
static json_int_t attempt_task(const json_t *lines) {
  size_t i;
  json_t *j;
  json_array_foreach(lines, i, j) {
    if (strcmp(str_at(j, "event"), "attempt") == 0)
      return json_integer_value(json_object_get(j, "task"));
  }
  fail_msg("no attempt line");
  return 0;
}

/* ------------------------------------------------ a second stop signal */

/* Runs a handler that ignores cancellation, sends sig, waits until the
 * command says it is cancelling, sends sig again. */
static void check_second_signal(int sig, int want_code, const char *label) {
  proc_t p;
  proc_start(&p, "run", "hostile.ignore_cancel", "--plugin-path", APEX_TEST_PLUGIN_DIR, "--param",
             "ms=60000", NULL);
  assert_true(proc_read_until(&p, "\"event\":\"attempt\"", DEADLINE_MS));
  assert_int_equal(kill(p.pid, sig), 0);
  /* The first one is handled (the task cancelled) before the second comes:
   * two signals pending at once would merge into one. */
  assert_true(proc_err_until(&p, "cancelling", DEADLINE_MS));
  int64_t sent = now_ms();
  assert_int_equal(kill(p.pid, sig), 0);
  proc_wait(&p);
  if (p.signaled || p.code != want_code)
    fail_msg("exit %d%s, want %d; stderr: %s", p.code, p.signaled ? " (killed by the signal)" : "",
             want_code, buf_str(&p.err));
  if (p.end_ms - sent >= AT_ONCE_MS) fail_msg("exited %lld ms after the second signal",
                                              (long long)(p.end_ms - sent));
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines); /* exactly one, and the last line */
  assert_string_equal(str_at(r, "state"), "cancelled");
  assert_int_equal(json_integer_value(json_object_get(r, "task")), attempt_task(lines));
  json_t *e = json_object_get(r, "error");
  assert_string_equal(str_at(e, "code"), "cancelled");
  assert_string_equal(str_at(e, "plugin"), "hostile");
  assert_string_equal(str_at(e, "action"), "ignore_cancel");
  assert_contains(str_at(e, "message"), "hostile.ignore_cancel: the handler did not stop");
  assert_contains(str_at(e, "message"), label);
  assert_contains(buf_str(&p.err), "the handler did not stop");
  json_decref(lines);
  proc_free(&p);
}

static void test_second_sigint_writes_one_cancelled_result_and_exits_130(void **st) {
  (void)st;
  check_second_signal(SIGINT, 130, "a second Ctrl-C");
}

static void test_second_sigterm_writes_one_cancelled_result_and_exits_143(void **st) {
  (void)st;
  check_second_signal(SIGTERM, 143, "a second SIGTERM");
}

static void test_terminal_second_ctrl_c_prints_the_outcome_and_shows_the_cursor(void **st) {
  (void)st;
  char name[128];
  int master = pty_open(name, sizeof name);
  char *argv[] = {(char *)APEX_CLI_PATH, "run", "cli_kit.deaf_after_progress", "--plugin-path",
                  APEX_TEST_PLUGIN_DIR, "--param", "ms=60000", NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  assert_true(proc_read_until(&p, "\x1b[?25l", DEADLINE_MS)); /* the display is up */
  /* ...and the handler runs (a Ctrl-C while the task is queued would end
   * it at once, and the second would have nothing to stop). */
  assert_true(proc_read_until(&p, "started", DEADLINE_MS));
  assert_int_equal(kill(p.pid, SIGINT), 0);
  assert_true(proc_read_until(&p, "press Ctrl-C again", DEADLINE_MS));
  int64_t sent = now_ms();
  assert_int_equal(kill(p.pid, SIGINT), 0);
  proc_wait(&p);
  if (p.code != 130) fail_msg("exit %d, want 130; output:\n%s", p.code, buf_str(&p.out));
  assert_true(p.end_ms - sent < AT_ONCE_MS);
  const char *out = buf_str(&p.out);
  const char *outcome =
      strstr(out, "cancelled: cli_kit.deaf_after_progress: the handler did not stop");
  if (!outcome) fail_msg("no outcome line in:\n%s", out);
  assert_contains(outcome, "(cancelled)");
  /* The cursor is shown again before the outcome line. */
  const char *shown = strstr(out, "\x1b[?25h");
  assert_non_null(shown);
  assert_true(shown < outcome);
  proc_free(&p);
}

/* ------------------------------------------- signals around the plugin */

static void test_signal_while_plugin_init_hangs_exits_at_once_with_one_result(void **st) {
  (void)st;
  assert_int_equal(setenv("CLI_KIT_INIT_MS", "60000", 1), 0);
  proc_t p;
  proc_start(&p, "run", "cli_kit.noop", "--plugin-path", APEX_TEST_PLUGIN_DIR, NULL);
  assert_int_equal(unsetenv("CLI_KIT_INIT_MS"), 0);
  assert_true(proc_err_until(&p, "cli_kit: init sleeping", DEADLINE_MS));
  int64_t sent = now_ms();
  assert_int_equal(kill(p.pid, SIGINT), 0); /* no task yet: the first one is enough */
  proc_wait(&p);
  if (p.signaled || p.code != 130) fail_msg("exit %d, want 130; stderr: %s", p.code, buf_str(&p.err));
  assert_true(p.end_ms - sent < AT_ONCE_MS);
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines);
  assert_true(json_is_null(json_object_get(r, "task")));
  assert_string_equal(str_at(r, "state"), "cancelled");
  json_t *e = json_object_get(r, "error");
  assert_string_equal(str_at(e, "code"), "cancelled");
  assert_string_equal(str_at(e, "plugin"), "cli_kit");
  assert_contains(str_at(e, "message"), "cli_kit: Ctrl-C while the plugin was loading");
  json_decref(lines);
  proc_free(&p);
}

static void test_signal_while_plugin_shutdown_hangs_exits_at_once_with_its_outcome(void **st) {
  (void)st;
  assert_int_equal(setenv("CLI_KIT_SHUTDOWN_MS", "60000", 1), 0);
  proc_t p;
  proc_start(&p, "run", "cli_kit.noop", "--plugin-path", APEX_TEST_PLUGIN_DIR, NULL);
  assert_int_equal(unsetenv("CLI_KIT_SHUTDOWN_MS"), 0);
  assert_true(proc_err_until(&p, "cli_kit: shutdown sleeping", DEADLINE_MS));
  int64_t sent = now_ms();
  assert_int_equal(kill(p.pid, SIGTERM), 0);
  proc_wait(&p);
  /* The run had succeeded and said so: that stays its exit code. */
  if (p.signaled || p.code != 0) fail_msg("exit %d, want 0; stderr: %s", p.code, buf_str(&p.err));
  assert_true(p.end_ms - sent < AT_ONCE_MS);
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines);
  assert_string_equal(str_at(r, "state"), "succeeded");
  assert_true(json_is_true(json_object_get(json_object_get(r, "result"), "ok")));
  json_decref(lines);
  proc_free(&p);
}

/* --------------------------------------------------------- exit codes */

/* A handler's run-time rejection reads as the library's submit-time one:
 * exit 2, invalid_params, PLUGIN.ACTION first, on stderr and in the line. */
static void check_invalid_params(proc_t *p, const char *reason, int has_task) {
  if (p->code != 2) fail_msg("exit %d, want 2; stderr: %s", p->code, buf_str(&p->err));
  char want[256];
  snprintf(want, sizeof want, "cli_kit.reject_params: param 'path': %s", reason);
  char err_line[300];
  snprintf(err_line, sizeof err_line, "apex: %s\n", want);
  assert_string_equal(buf_str(&p->err), err_line);
  json_t *lines = json_lines(p);
  json_t *r = the_result(lines);
  assert_string_equal(str_at(r, "state"), "failed");
  assert_int_equal(json_is_integer(json_object_get(r, "task")), has_task);
  json_t *e = json_object_get(r, "error");
  assert_string_equal(str_at(e, "code"), "invalid_params");
  assert_string_equal(str_at(e, "message"), want);
  json_decref(lines);
}

static void test_handler_rejecting_params_exits_2_named_like_submit(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "cli_kit.reject_params", "--plugin-path", APEX_TEST_PLUGIN_DIR, NULL);
  check_invalid_params(&p, "'/nonexistent/cli_kit' does not exist", 1);
  json_t *lines = json_lines(&p);
  json_t *e = json_object_get(the_result(lines), "error");
  assert_string_equal(str_at(e, "plugin"), "cli_kit");
  assert_string_equal(str_at(e, "action"), "reject_params");
  json_decref(lines);
  proc_free(&p);

  /* The same param refused by the library at submit: the same shape. */
  run(&p, "run", "cli_kit.reject_params", "--plugin-path", APEX_TEST_PLUGIN_DIR, "--param",
      "path=5", NULL);
  check_invalid_params(&p, "want string, got integer", 0);
  proc_free(&p);
}

static void test_terminal_handler_rejecting_params_exits_2_named(void **st) {
  (void)st;
  char name[128];
  int master = pty_open(name, sizeof name);
  char *argv[] = {(char *)APEX_CLI_PATH, "run", "cli_kit.reject_params", "--plugin-path",
                  APEX_TEST_PLUGIN_DIR, NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  proc_wait(&p);
  if (p.code != 2) fail_msg("exit %d, want 2; output:\n%s", p.code, buf_str(&p.out));
  assert_contains(buf_str(&p.out), "failed: cli_kit.reject_params: param 'path': "
                                   "'/nonexistent/cli_kit' does not exist (invalid_params)");
  proc_free(&p);
}

static void test_plugin_that_fails_to_load_exits_1(void **st) {
  (void)st;
  static const struct {
    const char *target, *code, *why;
  } cases[] = {
      {"init_fails.run", "plugin_load", "init failed: database not reachable"},
      {"bad_abi.x", "abi_mismatch", "plugin ABI"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    proc_t p;
    run(&p, "run", cases[i].target, "--plugin-path", APEX_TEST_PLUGIN_DIR, NULL);
    if (p.code != 1)
      fail_msg("%s: exit %d, want 1; stderr: %s", cases[i].target, p.code, buf_str(&p.err));
    assert_contains(buf_str(&p.err), "apex: cannot load plugin '");
    assert_contains(buf_str(&p.err), cases[i].why);
    json_t *lines = json_lines(&p);
    json_t *r = the_result(lines);
    assert_true(json_is_null(json_object_get(r, "task")));
    assert_string_equal(str_at(r, "state"), "failed");
    assert_string_equal(error_code(r), cases[i].code);
    json_decref(lines);
    proc_free(&p);
  }
}

static void test_describe_plugin_that_fails_to_load_exits_1(void **st) {
  (void)st;
  proc_t p;
  run(&p, "describe", "init_fails", "--plugin-path", APEX_TEST_PLUGIN_DIR, NULL);
  if (p.code != 1) fail_msg("exit %d, want 1; stderr: %s", p.code, buf_str(&p.err));
  assert_contains(buf_str(&p.err), "init failed: database not reachable");
  proc_free(&p);
}

static void test_result_no_json_line_can_hold_still_gives_one_result_line(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "cli_kit.unwritable_result", "--plugin-path", APEX_TEST_PLUGIN_DIR, NULL);
  if (p.code != 1) fail_msg("exit %d, want 1; stderr: %s", p.code, buf_str(&p.err));
  json_t *lines = json_lines(&p); /* fails on a line that is not valid JSON */
  json_t *r = the_result(lines);
  assert_string_equal(str_at(r, "state"), "failed");
  /* Caught by the command (execution) or, once results are validated where
   * they are handed over, by the library (invalid_result): either way one
   * line, failed. */
  const char *code = error_code(r);
  if (strcmp(code, "execution") != 0 && strcmp(code, "invalid_result") != 0)
    fail_msg("error code %s, want execution or invalid_result", code);
  json_decref(lines);
  proc_free(&p);
}

static void test_help_lists_every_exit_code(void **st) {
  (void)st;
  proc_t p;
  run(&p, "--help", NULL);
  assert_int_equal(p.code, 0);
  const char *out = buf_str(&p.out);
  assert_contains(out, "Exit status:");
  assert_contains(out, "fails to load");
  assert_contains(out, "invalid params, whether");
  assert_contains(out, "124  timed out");
  assert_contains(out, "143 cancelled by SIGTERM");
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_second_sigint_writes_one_cancelled_result_and_exits_130),
      cmocka_unit_test(test_second_sigterm_writes_one_cancelled_result_and_exits_143),
      cmocka_unit_test(test_terminal_second_ctrl_c_prints_the_outcome_and_shows_the_cursor),
      cmocka_unit_test(test_signal_while_plugin_init_hangs_exits_at_once_with_one_result),
      cmocka_unit_test(test_signal_while_plugin_shutdown_hangs_exits_at_once_with_its_outcome),
      cmocka_unit_test(test_handler_rejecting_params_exits_2_named_like_submit),
      cmocka_unit_test(test_terminal_handler_rejecting_params_exits_2_named),
      cmocka_unit_test(test_plugin_that_fails_to_load_exits_1),
      cmocka_unit_test(test_describe_plugin_that_fails_to_load_exits_1),
      cmocka_unit_test(test_result_no_json_line_can_hold_still_gives_one_result_line),
      cmocka_unit_test(test_help_lists_every_exit_code),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
