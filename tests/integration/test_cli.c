/* End-to-end tests of the apex command: each test runs the built binary
 * (APEX_CLI_PATH) with posix_spawn, stdout and stderr on pipes read with poll
 * (or on a pseudo-terminal, for the live display), and checks the exit code,
 * the JSON Lines on stdout and the messages on stderr. Plugins come from the
 * build tree: example_async and files beside the library, hostile and testkit
 * from APEX_TEST_PLUGIN_DIR via --plugin-path. The helpers that spawn, read
 * and reap the child are in cli_harness.h; the contract of exit codes,
 * signals and the one result line is tested in test_cli_contract.c.
 *
 * Single-threaded; each child is waited for (and killed if it overruns a
 * generous deadline, failing the test), so none outlives its test. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/cli_harness.h"

/* --------------------------------------------------------------- success */

static void test_run_json_streams_progress_to_100_and_one_result(void **st) {
  (void)st;
  proc_t p;
  /* Steps 100 ms apart, ten times the JSON mode's coalescing interval
   * (100/s), so each step is its own delivery even when a loaded machine
   * runs the CLI's dispatch late. */
  run(&p, "run", "example_async.long_task", "--param", "steps=5", "--param", "step_ms=100",
      "--json", NULL);
  assert_int_equal(p.code, 0);
  json_t *lines = json_lines(&p);
  assert_true(count_event(lines, "progress") >= 5);
  double last = -1;
  size_t i;
  json_t *j;
  json_array_foreach(lines, i, j) {
    if (strcmp(json_string_value(json_object_get(j, "event")), "progress") != 0) continue;
    assert_true(json_is_integer(json_object_get(j, "task")));
    assert_true(json_is_integer(json_object_get(j, "seq")));
    assert_true(json_is_string(json_object_get(j, "status")));
    assert_true(json_is_string(json_object_get(j, "message")));
    assert_true(json_is_object(json_object_get(j, "details")));
    assert_true(json_is_array(json_object_get(j, "sub_tasks")));
    double pct = json_number_value(json_object_get(j, "percentage"));
    assert_true(pct >= last);
    last = pct;
  }
  assert_true(last == 100.0);
  json_t *r = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(r, "state")), "succeeded");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "result"), "steps")), 5);
  json_decref(lines);
  proc_free(&p);
}

static void test_run_output_is_json_lines_when_stdout_is_not_a_terminal(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "steps=2", "--param", "step_ms=5", NULL);
  assert_int_equal(p.code, 0);
  json_t *lines = json_lines(&p); /* fails on any line that is not JSON */
  assert_true(count_event(lines, "progress") >= 1);
  assert_string_equal(json_string_value(json_object_get(the_result(lines), "state")), "succeeded");
  json_decref(lines);
  proc_free(&p);
}

static void test_run_param_values_parse_as_json_else_string(void **st) {
  (void)st;
  proc_t p;
  run(&p, "--plugin-path", APEX_TEST_PLUGIN_DIR, "run", "testkit.params_all", "--param", "str=hello",
      "--param", "int=-5", "--param", "num=2.5", "--param", "flag=true", "--param",
      "obj={\"a\":1}", "--param", "arr=[3]", NULL);
  if (p.code != 0) fail_msg("exit %d: %s", p.code, buf_str(&p.err));
  json_t *lines = json_lines(&p);
  json_t *res = json_object_get(the_result(lines), "result");
  json_t *want = json_pack("{s:s, s:i, s:f, s:b, s:{s:i}, s:[i]}", "str", "hello", "int", -5, "num",
                           2.5, "flag", 1, "obj", "a", 1, "arr", 3);
  assert_true(json_equal(res, want));
  json_decref(want);
  json_decref(lines);
  proc_free(&p);
}

static void test_run_param_overrides_params_whatever_the_order(void **st) {
  (void)st;
  proc_t p;
  /* --param comes first on the line but still wins over --params. */
  run(&p, "run", "--param", "int=9", "--plugin-path", APEX_TEST_PLUGIN_DIR, "testkit.params_all",
      "--params", "{\"int\": \"not an int\", \"str\": \"x\"}", NULL);
  if (p.code != 0) fail_msg("exit %d: %s", p.code, buf_str(&p.err));
  json_t *lines = json_lines(&p);
  json_t *res = json_object_get(the_result(lines), "result");
  assert_int_equal(json_integer_value(json_object_get(res, "int")), 9);
  assert_string_equal(json_string_value(json_object_get(res, "str")), "x");
  json_decref(lines);
  proc_free(&p);
}

/* ------------------------------------------------- timeout, cancel, retry */

static void check_timeout(const char *ignore_cancel) {
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "steps=50", "--param", "step_ms=100",
      "--param", ignore_cancel, "--timeout", "0.3", NULL);
  if (p.code != 124) fail_msg("exit %d, want 124; stderr: %s", p.code, buf_str(&p.err));
  assert_true(p.end_ms - p.start_ms < 3000);
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(r, "state")), "timed_out");
  assert_string_equal(error_code(r), "timeout");
  json_decref(lines);
  proc_free(&p);
}

static void test_run_timeout_exits_124_timed_out(void **st) {
  (void)st;
  check_timeout("ignore_cancel=false");
}

static void test_run_timeout_exits_124_even_if_handler_ignores_cancel(void **st) {
  (void)st;
  check_timeout("ignore_cancel=true");
}

static void test_run_sigint_cancels_and_exits_130(void **st) {
  (void)st;
  proc_t p;
  proc_start(&p, "run", "example_async.long_task", "--param", "steps=50", "--param", "step_ms=100",
             NULL);
  assert_true(proc_read_until(&p, "\"event\":\"progress\"", DEADLINE_MS));
  int64_t sent = now_ms();
  assert_int_equal(kill(p.pid, SIGINT), 0);
  proc_wait(&p);
  if (p.code != 130) fail_msg("exit %d, want 130; stderr: %s", p.code, buf_str(&p.err));
  assert_true(p.end_ms - sent < 3000);
  assert_contains(buf_str(&p.err), "cancelling");
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(r, "state")), "cancelled");
  assert_string_equal(error_code(r), "cancelled");
  json_decref(lines);
  proc_free(&p);
}

static void test_run_retries_until_third_attempt_succeeds(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "steps=1", "--param", "step_ms=1",
      "--param", "fail_attempts=2", "--retries", "3", NULL);
  if (p.code != 0) fail_msg("exit %d: %s", p.code, buf_str(&p.err));
  json_t *lines = json_lines(&p);
  assert_int_equal(count_event(lines, "attempt"), 3);
  assert_int_equal(count_event(lines, "retry"), 2);
  json_t *r = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(r, "state")), "succeeded");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "result"), "attempt")), 3);
  json_decref(lines);
  proc_free(&p);
}

static void test_run_retries_exhausted_exits_1_transient(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "steps=1", "--param", "step_ms=1",
      "--param", "fail_attempts=2", "--retries", "1", NULL);
  assert_int_equal(p.code, 1);
  json_t *lines = json_lines(&p);
  assert_int_equal(count_event(lines, "attempt"), 2);
  json_t *r = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(r, "state")), "failed");
  assert_string_equal(error_code(r), "transient");
  json_decref(lines);
  proc_free(&p);
}

static void test_run_hostile_fail_exits_1_execution(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "hostile.fail", "--plugin-path", APEX_TEST_PLUGIN_DIR, "--json", NULL);
  assert_int_equal(p.code, 1);
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(r, "state")), "failed");
  assert_string_equal(error_code(r), "execution");
  json_decref(lines);
  proc_free(&p);
}

/* ------------------------------------------------------------ bad input */

static void test_run_unknown_plugin_exits_2_naming_it_and_the_search_path(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "nope.x", "--plugin-path", APEX_TEST_PLUGIN_DIR, NULL);
  assert_pre_task_error(&p, "unknown plugin 'nope'", "plugin_not_found");
  assert_contains(buf_str(&p.err), APEX_TEST_PLUGIN_DIR);
  proc_free(&p);
}

static void test_run_unknown_action_exits_2_naming_it(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.nope", NULL);
  assert_pre_task_error(&p, "'nope'", "action_not_found");
  assert_contains(buf_str(&p.err), "long_task"); /* lists what exists */
  proc_free(&p);
}

static void test_run_without_target_exits_2(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "--json", NULL);
  assert_pre_task_error(&p, "missing PLUGIN.ACTION", "invalid");
  proc_free(&p);
}

static void test_run_target_without_action_exits_2(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async", NULL);
  assert_pre_task_error(&p, "'example_async' is not PLUGIN.ACTION", "invalid");
  proc_free(&p);
}

static void test_run_unknown_param_exits_2_naming_it(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "stepz=5", NULL);
  assert_pre_task_error(&p, "stepz", "invalid_params");
  proc_free(&p);
}

static void test_run_param_of_wrong_type_exits_2_naming_it(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "steps=many", NULL);
  assert_pre_task_error(&p, "steps", "invalid_params");
  proc_free(&p);
}

static void test_run_param_out_of_range_exits_2_naming_it(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "sub_tasks=65", NULL);
  assert_pre_task_error(&p, "sub_tasks", "invalid_params");
  proc_free(&p);
}

static void test_run_param_without_equals_exits_2(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "steps", NULL);
  assert_pre_task_error(&p, "--param: 'steps' is not KEY=VALUE", "invalid_params");
  proc_free(&p);
}

static void test_run_params_bad_json_exits_2_with_position(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--params", "{\"steps\": }", NULL);
  assert_pre_task_error(&p, "--params: invalid JSON at line 1 column", "invalid_params");
  proc_free(&p);
}

static void test_run_params_not_an_object_exits_2(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--params", "[1, 2]", NULL);
  assert_pre_task_error(&p, "--params: want a JSON object, got array", "invalid_params");
  proc_free(&p);
}

static void test_run_bad_timeout_exits_2_naming_it(void **st) {
  (void)st;
  const char *bad[] = {"abc", "0", "-1", "1s", "nan", "", "0x10", " 1", "1 ", "inf", "1e999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    proc_t p;
    run(&p, "run", "example_async.long_task", "--timeout", bad[i], NULL);
    char want[64];
    snprintf(want, sizeof want, "--timeout: '%s' is not a positive number of seconds", bad[i]);
    assert_pre_task_error(&p, want, "invalid");
    proc_free(&p);
  }
}

static void test_run_bad_retries_exits_2_naming_it(void **st) {
  (void)st;
  const char *bad[] = {"x", "-1", "1.5", "", "0x10", " 1", "1 ", "+1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    proc_t p;
    run(&p, "run", "example_async.long_task", "--retries", bad[i], NULL);
    char want[64];
    snprintf(want, sizeof want, "--retries: '%s' is not", bad[i]);
    assert_pre_task_error(&p, want, "invalid");
    proc_free(&p);
  }
}

static void test_run_unknown_option_exits_2_naming_it(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--frobnicate", NULL);
  assert_pre_task_error(&p, "unknown option '--frobnicate'", "invalid");
  proc_free(&p);
}

static void test_option_missing_its_value_exits_2(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--timeout", NULL);
  assert_pre_task_error(&p, "--timeout needs a value", "invalid");
  proc_free(&p);
}

static void test_unknown_command_exits_2(void **st) {
  (void)st;
  proc_t p;
  run(&p, "frob", NULL);
  assert_int_equal(p.code, 2);
  assert_contains(buf_str(&p.err), "unknown command 'frob'");
  proc_free(&p);
}

static void test_no_command_prints_usage_and_exits_2(void **st) {
  (void)st;
  proc_t p;
  run(&p, NULL);
  assert_int_equal(p.code, 2);
  assert_contains(buf_str(&p.err), "Usage: apex");
  proc_free(&p);
}

/* ------------------------------------------------------ help and info */

static void test_version_prints_library_version_exits_0(void **st) {
  (void)st;
  proc_t p;
  run(&p, "--version", NULL);
  assert_int_equal(p.code, 0);
  char want[64];
  snprintf(want, sizeof want, "apex %s\n", apex_version());
  assert_string_equal(buf_str(&p.out), want);
  proc_free(&p);
}

static void test_help_prints_usage_exits_0(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "--help", NULL);
  assert_int_equal(p.code, 0);
  assert_contains(buf_str(&p.out), "Usage: apex");
  assert_contains(buf_str(&p.out), "--retries N");
  proc_free(&p);
}

static void test_plugins_lists_shipped_plugins_and_actions(void **st) {
  (void)st;
  proc_t p;
  run(&p, "plugins", NULL);
  assert_int_equal(p.code, 0);
  assert_contains(buf_str(&p.out), "example_async ");
  assert_contains(buf_str(&p.out), "\n    long_task ");
  assert_contains(buf_str(&p.out), "files ");
  assert_contains(buf_str(&p.out), "\n    checksum ");
  proc_free(&p);
}

static void test_plugins_warns_about_a_bad_plugin_and_lists_the_rest(void **st) {
  (void)st;
  proc_t p;
  /* The test plugin dir holds plugins that fail to load on purpose. */
  run(&p, "plugins", "--plugin-path", APEX_TEST_PLUGIN_DIR, NULL);
  assert_int_equal(p.code, 0);
  assert_contains(buf_str(&p.err), "apex: warning: ");
  assert_contains(buf_str(&p.out), "testkit ");
  assert_contains(buf_str(&p.out), "example_async ");
  proc_free(&p);
}

static void test_describe_action_shows_kind_timeout_retry_and_params(void **st) {
  (void)st;
  proc_t p;
  run(&p, "describe", "example_async.long_task", NULL);
  assert_int_equal(p.code, 0);
  const char *out = buf_str(&p.out);
  assert_contains(out, "kind:             blocking");
  assert_contains(out, "default timeout:");
  assert_contains(out, "retry:");
  assert_contains(out, "steps          int     default 10, 0..1000000");
  assert_contains(out, "number of steps");
  assert_contains(out, "ignore_cancel  bool    default false");
  assert_contains(out, "sub_tasks");
  proc_free(&p);
}

static void test_describe_plugin_lists_its_actions(void **st) {
  (void)st;
  proc_t p;
  run(&p, "describe", "example_async", NULL);
  assert_int_equal(p.code, 0);
  assert_contains(buf_str(&p.out), "    long_task ");
  assert_contains(buf_str(&p.out), "    deferred_task ");
  proc_free(&p);
}

static void test_describe_unknown_action_exits_2(void **st) {
  (void)st;
  proc_t p;
  run(&p, "describe", "example_async.nope", NULL);
  assert_int_equal(p.code, 2);
  assert_contains(buf_str(&p.err), "has no action 'nope'");
  proc_free(&p);
}

/* ---------------------------------------------------- terminal display */

static void test_terminal_display_redraws_bar_and_sub_tasks_in_place(void **st) {
  (void)st;
  char name[128];
  int master = pty_open(name, sizeof name);

  /* Each sub-task runs for about 300 ms, six redraws (20/s) long: its
   * line is drawn while it runs even when a loaded machine delays some
   * (a finished one collapses into the "N completed" count). */
  char *argv[] = {(char *)APEX_CLI_PATH, "run", "example_async.long_task", "--param", "steps=10",
                  "--param", "step_ms=100", "--param", "sub_tasks=3", NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  proc_wait(&p);
  if (p.code != 0) fail_msg("exit %d; output:\n%s", p.code, buf_str(&p.out));
  const char *out = buf_str(&p.out);
  assert_contains(out, "\x1b[?25l");          /* cursor hidden while drawing */
  assert_contains(out, "[########");          /* the task's bar */
  assert_contains(out, " 100%");
  assert_contains(out, "  ├─ fetch");        /* sub-task tree */
  assert_contains(out, "  └─ transform");
  assert_contains(out, "  partial: {\"steps_done\":"); /* its partial result */
  assert_contains(out, "\x1b[5A");            /* moved up over 1 + 1 + 3 lines */
  assert_contains(out, "\x1b[2K");            /* and cleared each */
  assert_contains(out, "succeeded: {");
  assert_contains(out, "\x1b[?25h");          /* cursor restored */
  assert_null(strstr(out, "\"event\""));      /* not JSON Lines */
  proc_free(&p);
}

static void test_terminal_outcome_carries_no_escape_from_a_path(void **st) {
  (void)st;
  char name[128];
  int master = pty_open(name, sizeof name);
  /* Sets the window title and clears the screen, if printed raw. */
  char *argv[] = {(char *)APEX_CLI_PATH, "run", "files.checksum", "--param",
                  "path=/nonexistent/\x1b]0;PWNED\a\x1b[2J", NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  proc_wait(&p);
  if (p.code != 1) fail_msg("exit %d, want 1; output:\n%s", p.code, buf_str(&p.out));
  const char *out = buf_str(&p.out);
  assert_contains(out, "failed: ");
  assert_contains(out, "PWNED"); /* the message is shown, its escapes are not */
  assert_null(strstr(out, "\x1b]"));
  assert_null(strstr(out, "\x1b[2J"));
  assert_null(strchr(out, '\a'));
  proc_free(&p);
}

static void test_terminal_library_log_lines_print_above_the_display(void **st) {
  (void)st;
  char name[128];
  int master = pty_open(name, sizeof name);
  char *argv[] = {(char *)APEX_CLI_PATH, "run", "example_async.long_task", "--param", "steps=3",
                  "--param", "step_ms=30", NULL};
  /* debug: the library logs each progress report, while the display is up */
  assert_int_equal(setenv("APEX_LOG", "debug", 1), 0);
  proc_t p;
  proc_spawn(&p, argv, name, master);
  assert_int_equal(setenv("APEX_LOG", "off", 1), 0);
  proc_wait(&p);
  if (p.code != 0) fail_msg("exit %d; output:\n%s", p.code, buf_str(&p.out));
  const char *out = buf_str(&p.out);
  /* The line comes right after the block was erased (cursor up over its
   * one line, or two once a partial result is shown under the bar; clear
   * to the end), not written over or below the frame. */
  const char *line = "\x1b[Japex: debug: example_async.long_task task 1: progress";
  const char *at = strstr(out, line);
  if (!at || at - out < 4 || memcmp(at - 4, "\x1b[", 2) != 0 || at[-1] != 'A' ||
      (at[-2] != '1' && at[-2] != '2'))
    fail_msg("no log line right after the block's erase; output:\n%s", out);
  assert_contains(out, "succeeded: {");
  proc_free(&p);
}

/* ------------------------------------------- output closed and signals */

/* Empties and removes dir. Returns: how many entries other than keep it
 * held; the first one's name in first. */
static int remove_dir_counting_extras(const char *dir, const char *keep, char *first, size_t len) {
  int extras = 0;
  first[0] = '\0';
  DIR *d = opendir(dir);
  assert_non_null(d);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (strcmp(e->d_name, keep) != 0 && extras++ == 0) snprintf(first, len, "%s", e->d_name);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    assert_int_equal(unlink(path), 0);
  }
  closedir(d);
  assert_int_equal(rmdir(dir), 0);
  return extras;
}

static void test_run_output_closed_cancels_the_task_and_exits_1(void **st) {
  (void)st;
  char dir[] = "/tmp/apex-clitest-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char src[PATH_MAX], dst[PATH_MAX], srcp[PATH_MAX + 8], dstp[PATH_MAX + 8];
  snprintf(src, sizeof src, "%s/big", dir);
  snprintf(dst, sizeof dst, "%s/out", dir);
  snprintf(srcp, sizeof srcp, "src=%s", src);
  snprintf(dstp, sizeof dstp, "dst=%s", dst);
  /* Sparse: no disk used, yet copying it takes long enough to be cut short. */
  int fd = open(src, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, (off_t)512 << 20), 0);
  close(fd);

  proc_t p;
  proc_start(&p, "run", "files.copy", "--param", srcp, "--param", dstp, NULL);
  assert_true(proc_read_until(&p, "\n", DEADLINE_MS));
  /* As `| head -1` does: the reader goes away after the first line. */
  close(p.fds[0]);
  p.fds[0] = -1;
  proc_wait(&p);
  int code = p.code, signaled = p.signaled;
  char err[4096];
  snprintf(err, sizeof err, "%s", buf_str(&p.err));
  proc_free(&p);

  /* Cleaned up first: a failing run must not leave 512 MiB files behind. */
  char extra[256];
  int extras = remove_dir_counting_extras(dir, "big", extra, sizeof extra);
  if (signaled || code != 1)
    fail_msg("exit %d%s, want 1; stderr: %s", code, signaled ? " (killed by a signal)" : "", err);
  if (extras) fail_msg("%d file(s) left behind, e.g. %s (neither dst nor a temp file may stay)",
                       extras, extra);
  assert_contains(err, "output closed");
}

static void check_stop_signal(int sig, int want_code) {
  proc_t p;
  proc_start(&p, "run", "example_async.long_task", "--param", "steps=50", "--param", "step_ms=100",
             NULL);
  assert_true(proc_read_until(&p, "\"event\":\"progress\"", DEADLINE_MS));
  int64_t sent = now_ms();
  assert_int_equal(kill(p.pid, sig), 0);
  proc_wait(&p);
  if (p.signaled || p.code != want_code)
    fail_msg("exit %d%s, want %d; stderr: %s", p.code, p.signaled ? " (killed by the signal)" : "",
             want_code, buf_str(&p.err));
  assert_true(p.end_ms - sent < 3000);
  assert_contains(buf_str(&p.err), "cancelling");
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(r, "state")), "cancelled");
  assert_string_equal(error_code(r), "cancelled");
  json_decref(lines);
  proc_free(&p);
}

static void test_run_sigterm_cancels_and_exits_143(void **st) {
  (void)st;
  check_stop_signal(SIGTERM, 143);
}

static void test_run_sighup_cancels_and_exits_129(void **st) {
  (void)st;
  check_stop_signal(SIGHUP, 129);
}

/* ------------------------------------------------ text that is not UTF-8 */

static void test_run_param_key_not_utf8_still_gives_a_result_line(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "--plugin-path", APEX_TEST_PLUGIN_DIR, "testkit.echo", "--param", "\xff=1", NULL);
  /* json_lines fails on a line that is not valid JSON (or not UTF-8). */
  assert_pre_task_error(&p, "is not valid UTF-8 text", "invalid_params");
  assert_contains(buf_str(&p.out), "'?=1'"); /* '?' for the bad byte, as the library does */
  proc_free(&p);
}

static void test_run_plugin_name_not_utf8_still_gives_a_result_line(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "\xff.x", NULL);
  assert_pre_task_error(&p, "unknown plugin", "plugin_not_found");
  proc_free(&p);
}

static void test_run_long_option_cut_mid_character_still_gives_a_result_line(void **st) {
  (void)st;
  /* 2-byte characters, more than the 1024-byte message buffer holds: after
   * "unknown option '--" (18 bytes) a byte-wise cut at 1023 falls inside
   * one. */
  char opt[3000];
  size_t n = 0;
  opt[n++] = '-';
  opt[n++] = '-';
  while (n + 2 < sizeof opt) {
    opt[n++] = (char)0xc3;
    opt[n++] = (char)0xa9;
  }
  opt[n] = '\0';
  proc_t p;
  run(&p, "run", "example_async.long_task", opt, NULL);
  assert_pre_task_error(&p, "unknown option '--\xc3\xa9", "invalid");
  proc_free(&p);
}

/* ------------------------------------------------ values that look like JSON */

static void test_run_param_int_too_big_exits_2_naming_it(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "--plugin-path", APEX_TEST_PLUGIN_DIR, "testkit.params_all", "--param",
      "int=99999999999999999999", NULL);
  assert_pre_task_error(&p, "--param int: '99999999999999999999' is not valid JSON (",
                        "invalid_params");
  proc_free(&p);
}

static void test_run_param_broken_json_array_exits_2_naming_it(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "--plugin-path", APEX_TEST_PLUGIN_DIR, "testkit.params_all", "--param", "arr=[1,",
      NULL);
  assert_pre_task_error(&p, "--param arr: '[1,' is not valid JSON (", "invalid_params");
  proc_free(&p);
}

static void test_run_timeout_below_a_millisecond_exits_2(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--timeout", "1e-300", NULL);
  assert_pre_task_error(&p, "--timeout: '1e-300' is too short: at least 0.001 seconds", "invalid");
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_run_json_streams_progress_to_100_and_one_result),
      cmocka_unit_test(test_run_output_is_json_lines_when_stdout_is_not_a_terminal),
      cmocka_unit_test(test_run_param_values_parse_as_json_else_string),
      cmocka_unit_test(test_run_param_overrides_params_whatever_the_order),
      cmocka_unit_test(test_run_timeout_exits_124_timed_out),
      cmocka_unit_test(test_run_timeout_exits_124_even_if_handler_ignores_cancel),
      cmocka_unit_test(test_run_sigint_cancels_and_exits_130),
      cmocka_unit_test(test_run_retries_until_third_attempt_succeeds),
      cmocka_unit_test(test_run_retries_exhausted_exits_1_transient),
      cmocka_unit_test(test_run_hostile_fail_exits_1_execution),
      cmocka_unit_test(test_run_unknown_plugin_exits_2_naming_it_and_the_search_path),
      cmocka_unit_test(test_run_unknown_action_exits_2_naming_it),
      cmocka_unit_test(test_run_without_target_exits_2),
      cmocka_unit_test(test_run_target_without_action_exits_2),
      cmocka_unit_test(test_run_unknown_param_exits_2_naming_it),
      cmocka_unit_test(test_run_param_of_wrong_type_exits_2_naming_it),
      cmocka_unit_test(test_run_param_out_of_range_exits_2_naming_it),
      cmocka_unit_test(test_run_param_without_equals_exits_2),
      cmocka_unit_test(test_run_params_bad_json_exits_2_with_position),
      cmocka_unit_test(test_run_params_not_an_object_exits_2),
      cmocka_unit_test(test_run_bad_timeout_exits_2_naming_it),
      cmocka_unit_test(test_run_bad_retries_exits_2_naming_it),
      cmocka_unit_test(test_run_unknown_option_exits_2_naming_it),
      cmocka_unit_test(test_option_missing_its_value_exits_2),
      cmocka_unit_test(test_unknown_command_exits_2),
      cmocka_unit_test(test_no_command_prints_usage_and_exits_2),
      cmocka_unit_test(test_version_prints_library_version_exits_0),
      cmocka_unit_test(test_help_prints_usage_exits_0),
      cmocka_unit_test(test_plugins_lists_shipped_plugins_and_actions),
      cmocka_unit_test(test_plugins_warns_about_a_bad_plugin_and_lists_the_rest),
      cmocka_unit_test(test_describe_action_shows_kind_timeout_retry_and_params),
      cmocka_unit_test(test_describe_plugin_lists_its_actions),
      cmocka_unit_test(test_describe_unknown_action_exits_2),
      cmocka_unit_test(test_terminal_display_redraws_bar_and_sub_tasks_in_place),
      cmocka_unit_test(test_terminal_outcome_carries_no_escape_from_a_path),
      cmocka_unit_test(test_terminal_library_log_lines_print_above_the_display),
      cmocka_unit_test(test_run_output_closed_cancels_the_task_and_exits_1),
      cmocka_unit_test(test_run_sigterm_cancels_and_exits_143),
      cmocka_unit_test(test_run_sighup_cancels_and_exits_129),
      cmocka_unit_test(test_run_param_key_not_utf8_still_gives_a_result_line),
      cmocka_unit_test(test_run_plugin_name_not_utf8_still_gives_a_result_line),
      cmocka_unit_test(test_run_long_option_cut_mid_character_still_gives_a_result_line),
      cmocka_unit_test(test_run_param_int_too_big_exits_2_naming_it),
      cmocka_unit_test(test_run_param_broken_json_array_exits_2_naming_it),
      cmocka_unit_test(test_run_timeout_below_a_millisecond_exits_2),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
