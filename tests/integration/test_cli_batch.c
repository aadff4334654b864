/* `apex batch FILE`, end to end: every line's outcome exactly once with the
 * right line number (a 1,000-line file, malformed lines among them), the
 * summary and the exit codes, stdin, bad options,
 * Ctrl-C (first and second), and the live view on a pseudo-terminal. The
 * scheduler's limits, seen from the handlers, are test_cli_batch_limits.c's.
 *
 * The input files are written to a fresh temporary directory; the child
 * runs on pipes (JSON mode) or a pty (cli_harness.h), and is reaped (killed
 * and failed past a generous deadline). Single-threaded. */
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
#include "integration/batch_harness.h"

/* ---------------------------------------------------- outcomes, lines */

/* What line i (1-based) of the 1,000-line file holds. */
enum { L_OK, L_FAIL, L_BAD_JSON, L_BLANK, L_NO_PLUGIN, L_BAD_PARAMS, L_BAD_PRIORITY, L_UNKNOWN };
static int kind_of(int i) {
  if (i % 100 == 0) return L_BLANK;
  if (i % 97 == 0) return L_BAD_JSON;
  if (i % 83 == 0) return L_FAIL;
  if (i == 500) return L_NO_PLUGIN;
  if (i == 501) return L_BAD_PARAMS;
  if (i == 502) return L_BAD_PRIORITY;
  if (i == 503) return L_UNKNOWN;
  return L_OK;
}

static char *thousand_lines(void) {
  size_t cap = 1 << 20, len = 0;
  char *text = malloc(cap);
  assert_non_null(text);
  for (int i = 1; i <= 1000; i++) {
    const char *fmt;
    switch (kind_of(i)) {
    case L_BLANK: fmt = "  \n"; break;
    case L_BAD_JSON: fmt = "{\"action\": \"batch_kit.hold\", \"params\": {\"line\": %d\n"; break;
    case L_FAIL: fmt = "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":%d,\"fail\":true}}\n"; break;
    case L_NO_PLUGIN: fmt = "{\"action\":\"no_such_plugin.x\",\"params\":{\"line\":%d}}\n"; break;
    case L_BAD_PARAMS: fmt = "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":%d,\"ms\":\"x\"}}\n"; break;
    case L_BAD_PRIORITY:
      fmt = "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":%d},\"priority\":\"urgent\"}\n";
      break;
    case L_UNKNOWN: fmt = "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":%d},\"prio\":1}\n"; break;
    default:
      fmt = i % 3 ? "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":%d}}\n"
                  : "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":%d,\"progress\":true,"
                    "\"ms\":2},\"priority\":\"high\",\"key\":\"k%d\"}\n";
      break;
    }
    len += (size_t)snprintf(text + len, cap - len, fmt, i, i % 7);
  }
  return text;
}

/* Checks a run of thousand_lines(): one result per non-blank line, each
 * with its own line number, and the summary's counts. */
static void check_thousand(const proc_t *p) {
  expect_exit(p, 1);
  json_t *events = events_of(p);
  json_t *by = results_by_line(events, 1000);
  size_t ok = 0, failed = 0, invalid = 0, lines = 0;
  for (int i = 1; i <= 1000; i++) {
    json_t *r = json_array_get(by, (size_t)i);
    int kind = kind_of(i);
    if (kind == L_BLANK) {
      if (!json_is_null(r)) fail_msg("a result for blank line %d", i);
      continue;
    }
    lines++;
    if (json_is_null(r)) fail_msg("no result for line %d", i);
    const char *state = str_of(r, "state");
    const char *code = str_of(json_object_get(r, "error"), "code");
    switch (kind) {
    case L_OK:
      assert_string_equal(state, "succeeded");
      /* The task that ran is this line's: it echoes the line's own param. */
      assert_int_equal(int_of(json_object_get(r, "result"), "line"), i);
      assert_string_equal(str_of(r, "action"), "batch_kit.hold");
      assert_true(json_is_integer(json_object_get(r, "task")));
      ok++;
      break;
    case L_FAIL:
      assert_string_equal(state, "failed");
      assert_string_equal(code, "execution");
      assert_true(json_is_integer(json_object_get(r, "task")));
      failed++;
      break;
    default: {
      static const char *const want[] = {[L_BAD_JSON] = "invalid", [L_NO_PLUGIN] = "plugin_not_found",
                                         [L_BAD_PARAMS] = "invalid_params",
                                         [L_BAD_PRIORITY] = "invalid", [L_UNKNOWN] = "invalid"};
      assert_string_equal(state, "failed");
      if (!code || strcmp(code, want[kind]) != 0)
        fail_msg("line %d: code %s, want %s", i, code ? code : "(none)", want[kind]);
      assert_true(json_is_null(json_object_get(r, "task")));
      /* Named whenever the line has an action string, however malformed. */
      if (kind == L_BAD_JSON) assert_true(json_is_null(json_object_get(r, "action")));
      else if (kind == L_NO_PLUGIN) assert_string_equal(str_of(r, "action"), "no_such_plugin.x");
      else assert_string_equal(str_of(r, "action"), "batch_kit.hold");
      failed++;
      invalid++;
    }
    }
  }
  /* Every other event names a line that has a result, and a task it ran. */
  size_t i;
  json_t *j;
  json_array_foreach(events, i, j) {
    const char *ev = str_of(j, "event");
    if (strcmp(ev, "attempt") != 0 && strcmp(ev, "progress") != 0) continue;
    json_t *r = json_array_get(by, (size_t)int_of(j, "line"));
    assert_false(json_is_null(r));
    assert_int_equal(int_of(j, "task"), int_of(r, "task"));
  }
  json_t *s = summary_of(events);
  assert_int_equal(int_of(s, "lines"), lines);
  assert_int_equal(int_of(s, "succeeded"), ok);
  assert_int_equal(int_of(s, "failed"), failed);
  assert_int_equal(int_of(s, "invalid"), invalid);
  assert_int_equal(int_of(s, "timed_out"), 0);
  assert_int_equal(int_of(s, "cancelled"), 0);
  assert_true(json_is_true(json_object_get(s, "read_all")));
  assert_int_equal(int_of(s, "exit_code"), 1);
  json_decref(by);
  json_decref(events);
}

static void test_thousand_lines_each_outcome_once_with_its_line(void **st) {
  (void)st;
  char *text = thousand_lines();
  const char *path = write_text("thousand.jsonl", text);
  free(text);
  proc_t p;
  /* A window of 64: the file is read as room frees, not all at once. */
  run(&p, "batch", path, PLUGINS, "--max-pending", "64", NULL);
  check_thousand(&p);
  proc_free(&p);
}

/* As above, from stdin ("-"): the child's stdin is the file. */
static void test_stdin_input_each_outcome_once(void **st) {
  (void)st;
  char *text = thousand_lines();
  const char *path = write_text("stdin.jsonl", text);
  free(text);
  char *argv[] = {(char *)APEX_CLI_PATH, "batch", "-", PLUGINS, NULL};
  proc_t p;
  memset(&p, 0, sizeof p);
  posix_spawn_file_actions_t fa;
  int out[2], err[2];
  assert_int_equal(pipe2(out, O_CLOEXEC), 0);
  assert_int_equal(pipe2(err, O_CLOEXEC), 0);
  assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
  assert_int_equal(posix_spawn_file_actions_addopen(&fa, 0, path, O_RDONLY, 0), 0);
  assert_int_equal(posix_spawn_file_actions_adddup2(&fa, out[1], 1), 0);
  assert_int_equal(posix_spawn_file_actions_adddup2(&fa, err[1], 2), 0);
  p.fds[0] = out[0];
  p.fds[1] = err[0];
  p.start_ms = now_ms();
  assert_int_equal(posix_spawn(&p.pid, argv[0], &fa, NULL, argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]);
  close(err[1]);
  proc_wait(&p);
  check_thousand(&p);
  proc_free(&p);
}

static void test_all_succeeded_exits_0_and_empty_file_too(void **st) {
  (void)st;
  const char *path = write_text("ok.jsonl", "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":1}}\n"
                                            "\n"
                                            "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":3}}");
  proc_t p;
  run(&p, "batch", path, PLUGINS, "--json", NULL);
  expect_exit(&p, 0);
  json_t *events = events_of(&p);
  json_t *by = results_by_line(events, 3);
  assert_int_equal(int_of(json_object_get(json_array_get(by, 1), "result"), "line"), 1);
  /* The last line has no newline: still a line, numbered after the blank. */
  assert_int_equal(int_of(json_object_get(json_array_get(by, 3), "result"), "line"), 3);
  json_t *s = summary_of(events);
  assert_int_equal(int_of(s, "lines"), 2);
  assert_int_equal(int_of(s, "succeeded"), 2);
  assert_int_equal(int_of(s, "exit_code"), 0);
  json_decref(by);
  json_decref(events);
  proc_free(&p);

  run(&p, "batch", write_text("empty.jsonl", ""), PLUGINS, NULL);
  expect_exit(&p, 0);
  events = events_of(&p);
  assert_int_equal(json_array_size(events), 1);
  assert_int_equal(int_of(summary_of(events), "lines"), 0);
  json_decref(events);
  proc_free(&p);
}

static void test_failed_and_timed_out_lines_exit_1(void **st) {
  (void)st;
  const char *path = write_text("to.jsonl", "{\"action\":\"batch_kit.hold\",\"params\":{\"ms\":60000}}\n"
                                            "{\"action\":\"batch_kit.hold\"}\n");
  proc_t p;
  run(&p, "batch", path, PLUGINS, "--timeout", "0.2", NULL);
  expect_exit(&p, 1);
  json_t *events = events_of(&p);
  json_t *by = results_by_line(events, 2);
  assert_string_equal(str_of(json_array_get(by, 1), "state"), "timed_out");
  assert_string_equal(str_of(json_array_get(by, 2), "state"), "succeeded");
  json_t *s = summary_of(events);
  assert_int_equal(int_of(s, "timed_out"), 1);
  assert_int_equal(int_of(s, "succeeded"), 1);
  json_decref(by);
  json_decref(events);
  proc_free(&p);
}

static void test_line_longer_than_the_cap_fails_alone(void **st) {
  (void)st;
  size_t big = (1u << 20) + 4096;
  char *text = malloc(big + 256);
  assert_non_null(text);
  size_t len = (size_t)sprintf(text, "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":1}}\n");
  text[len++] = '"';
  memset(text + len, 'x', big);
  len += big;
  len += (size_t)sprintf(text + len, "\"\n{\"action\":\"batch_kit.hold\",\"params\":{\"line\":3}}\n");
  const char *path = write_file("long.jsonl", text, len);
  free(text);
  proc_t p;
  run(&p, "batch", path, PLUGINS, NULL);
  expect_exit(&p, 1);
  json_t *events = events_of(&p);
  json_t *by = results_by_line(events, 3);
  assert_string_equal(str_of(json_array_get(by, 1), "state"), "succeeded");
  json_t *e = json_object_get(json_array_get(by, 2), "error");
  assert_string_equal(str_of(e, "code"), "invalid");
  assert_contains(str_of(e, "message"), "longer than");
  assert_int_equal(int_of(json_object_get(json_array_get(by, 3), "result"), "line"), 3);
  json_decref(by);
  json_decref(events);
  proc_free(&p);
}

/* ---------------------------------------------------------- bad options */

static void test_bad_options_exit_2_naming_the_option(void **st) {
  (void)st;
  const char *path = write_text("one.jsonl", "{\"action\":\"batch_kit.hold\"}\n");
  static const struct {
    const char *a, *b, *needle;
  } cases[] = {
      {"--concurrency", "0", "--concurrency: '0'"},
      {"--concurrency", "2x", "--concurrency: '2x'"},
      {"--limit", "batch_kit", "--limit: 'batch_kit' is not SCOPE=N"},
      {"--limit", "batch_kit=-1", "--limit: '-1'"},
      {"--limit", "no_such_plugin=2", "--limit no_such_plugin=2: unknown plugin 'no_such_plugin'"},
      {"--rate", "batch_kit=5", "--rate: '5' is not R/s"},
      {"--rate", "batch_kit=5/s:0", "--rate: '0'"},
      {"--rate", "batch_kit=inf/s", "--rate: 'inf/s'"},
      {"--max-pending", "0", "--max-pending: '0'"},
      {"--timeout", "-1", "--timeout: '-1'"},
      {"--retries", "x", "--retries: 'x'"},
      {"--bogus", NULL, "unknown option '--bogus'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    proc_t p;
    if (cases[i].b) run(&p, "batch", path, PLUGINS, cases[i].a, cases[i].b, NULL);
    else run(&p, "batch", path, PLUGINS, cases[i].a, NULL);
    if (p.code != 2) fail_msg("%s %s: exit %d, want 2", cases[i].a, cases[i].b, p.code);
    assert_contains(buf_str(&p.err), cases[i].needle);
    json_t *events = events_of(&p);
    json_t *s = summary_of(events); /* the only line */
    assert_int_equal(json_array_size(events), 1);
    assert_int_equal(int_of(s, "exit_code"), 2);
    assert_contains(str_of(json_object_get(s, "error"), "message"), cases[i].needle);
    json_decref(events);
    proc_free(&p);
  }
  proc_t p;
  run(&p, "batch", PLUGINS, NULL);
  expect_exit(&p, 2);
  assert_contains(buf_str(&p.err), "batch: missing FILE");
  proc_free(&p);
  char missing[320];
  snprintf(missing, sizeof missing, "%s/missing.jsonl", g_dir);
  run(&p, "batch", missing, PLUGINS, NULL);
  expect_exit(&p, 2);
  assert_contains(buf_str(&p.err), "cannot open");
  proc_free(&p);
}

static void test_help_describes_batch(void **st) {
  (void)st;
  proc_t p;
  run(&p, "batch", "--help", NULL);
  expect_exit(&p, 0);
  assert_contains(buf_str(&p.out), "Usage: apex batch FILE");
  assert_contains(buf_str(&p.out), "--rate SCOPE=R/s[:B]");
  assert_contains(buf_str(&p.out), "Exit status:");
  proc_free(&p);
  run(&p, "--help", NULL);
  assert_contains(buf_str(&p.out), "batch FILE");
  proc_free(&p);
}

/* ------------------------------------------------------------ Ctrl-C */

static void test_ctrl_c_cancels_all_and_reports_every_line(void **st) {
  (void)st;
  size_t cap = 30 * 96, len = 0;
  char text[30 * 96];
  for (int i = 1; i <= 30; i++)
    len += (size_t)snprintf(text + len, cap - len,
                            "{\"action\":\"batch_kit.hold\",\"params\":{\"ms\":60000,\"line\":%d}}\n", i);
  const char *path = write_text("ctrlc.jsonl", text);
  proc_t p;
  /* 8 workers and room for 10: 8 run, 2 wait queued, 20 wait in the file. */
  proc_start(&p, "batch", path, PLUGINS, "--max-pending", "10", NULL);
  assert_true(proc_read_until(&p, "\"event\":\"attempt\"", DEADLINE_MS));
  assert_int_equal(kill(p.pid, SIGINT), 0);
  proc_wait(&p);
  expect_exit(&p, 130);
  assert_contains(buf_str(&p.err), "Ctrl-C: cancelling");
  json_t *events = events_of(&p);
  json_t *by = results_by_line(events, 30);
  for (int i = 1; i <= 30; i++) {
    json_t *r = json_array_get(by, (size_t)i);
    if (json_is_null(r)) fail_msg("no result for line %d", i);
    assert_string_equal(str_of(r, "state"), "cancelled");
  }
  json_t *s = summary_of(events);
  assert_int_equal(int_of(s, "cancelled"), 30);
  assert_int_equal(int_of(s, "exit_code"), 130);
  assert_true(json_is_true(json_object_get(s, "read_all")));
  json_decref(by);
  json_decref(events);
  proc_free(&p);
}

static void test_second_ctrl_c_exits_at_once_with_every_outcome(void **st) {
  (void)st;
  const char *path =
      write_text("deaf.jsonl", "{\"action\":\"cli_kit.deaf_after_progress\",\"params\":{\"ms\":60000}}\n"
                               "{\"action\":\"cli_kit.deaf_after_progress\",\"params\":{\"ms\":60000}}\n");
  proc_t p;
  proc_start(&p, "batch", path, PLUGINS, NULL);
  /* Both handlers running (deaf from their start): the two workers may
   * start line 2 before line 1, and a line not started yet ends at the
   * first Ctrl-C ("cancelled (user)"). */
  assert_true(proc_read_until(&p, "\"line\":1,\"event\":\"progress\"", DEADLINE_MS));
  assert_true(proc_read_until(&p, "\"line\":2,\"event\":\"progress\"", DEADLINE_MS));
  assert_int_equal(kill(p.pid, SIGINT), 0);
  assert_true(proc_err_until(&p, "cancelling", DEADLINE_MS));
  int64_t sent = now_ms();
  assert_int_equal(kill(p.pid, SIGINT), 0);
  proc_wait(&p);
  expect_exit(&p, 130);
  if (p.end_ms - sent > 3000) fail_msg("exited %lld ms after the second Ctrl-C", (long long)(p.end_ms - sent));
  json_t *events = events_of(&p);
  json_t *by = results_by_line(events, 2);
  for (int i = 1; i <= 2; i++) {
    json_t *r = json_array_get(by, (size_t)i);
    assert_false(json_is_null(r));
    assert_string_equal(str_of(r, "state"), "cancelled");
    assert_contains(str_of(json_object_get(r, "error"), "message"), "did not stop");
  }
  assert_int_equal(int_of(summary_of(events), "exit_code"), 130);
  json_decref(by);
  json_decref(events);
  proc_free(&p);
}

/* A reader that goes away (apex batch f | head -1): every task is
 * cancelled and the command exits 1, long before the tasks would end. */
static void test_output_closed_cancels_everything_and_exits_1(void **st) {
  (void)st;
  char text[10 * 128];
  size_t len = 0;
  for (int i = 1; i <= 10; i++)
    len += (size_t)snprintf(text + len, sizeof text - len,
                            "{\"action\":\"batch_kit.hold\",\"params\":{\"ms\":%d,\"progress\":true}}\n",
                            i == 1 ? 400 : 60000);
  const char *path = write_text("closed.jsonl", text);
  proc_t p;
  proc_start(&p, "batch", path, PLUGINS, NULL);
  assert_true(proc_read_until(&p, "\n", DEADLINE_MS));
  close(p.fds[0]); /* line 1's progress, 200 ms on, is written to no one */
  p.fds[0] = -1;
  proc_wait(&p);
  expect_exit(&p, 1);
  if (p.end_ms - p.start_ms > 20000) fail_msg("took %lld ms", (long long)(p.end_ms - p.start_ms));
  assert_contains(buf_str(&p.err), "output closed; cancelling");
  proc_free(&p);
}

/* ---------------------------------------------------------- terminal */

static void test_terminal_live_view_and_summary(void **st) {
  (void)st;
  char text[20 * 128];
  size_t len = 0;
  for (int i = 1; i <= 12; i++)
    len += (size_t)snprintf(text + len, sizeof text - len,
                            "{\"action\":\"batch_kit.hold\",\"params\":{\"ms\":1500,\"progress\":"
                            "true,\"line\":%d%s}}\n", i, i == 5 ? ",\"fail\":true" : "");
  const char *path = write_text("pty.jsonl", text);
  char name[128];
  int master = pty_open(name, sizeof name);
  /* 7 rows: the bar, the counts, three running tasks and "+N more". */
  struct winsize ws = {.ws_row = 7, .ws_col = 100};
  assert_int_equal(ioctl(master, TIOCSWINSZ, &ws), 0);
  char *argv[] = {(char *)APEX_CLI_PATH, "batch", (char *)path, PLUGINS, NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  assert_true(proc_read_until(&p, "\x1b[?25l", DEADLINE_MS)); /* the view is up */
  assert_true(proc_read_until(&p, "halfway", DEADLINE_MS));  /* a running task's row */
  assert_true(proc_read_until(&p, "more running", DEADLINE_MS));
  proc_wait(&p);
  expect_exit(&p, 1);
  const char *out = buf_str(&p.out);
  assert_contains(out, "/12 lines");
  assert_contains(out, "running 8, queued 4");
  assert_contains(out, "  line 1  batch_kit.hold");
  const char *sum = strstr(out, "12 lines in ");
  if (!sum) fail_msg("no summary in:\n%s", out);
  assert_contains(sum, "11 succeeded, 1 failed");
  assert_contains(sum, "failed lines:");
  assert_contains(sum, "line 5  batch_kit.hold  execution: hold: failing on purpose");
  /* The cursor is shown again before the summary. */
  const char *shown = strstr(out, "\x1b[?25h");
  assert_non_null(shown);
  assert_true(shown < sum);
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_thousand_lines_each_outcome_once_with_its_line),
      cmocka_unit_test(test_stdin_input_each_outcome_once),
      cmocka_unit_test(test_all_succeeded_exits_0_and_empty_file_too),
      cmocka_unit_test(test_failed_and_timed_out_lines_exit_1),
      cmocka_unit_test(test_line_longer_than_the_cap_fails_alone),
      cmocka_unit_test(test_bad_options_exit_2_naming_the_option),
      cmocka_unit_test(test_help_describes_batch),
      cmocka_unit_test(test_ctrl_c_cancels_all_and_reports_every_line),
      cmocka_unit_test(test_second_ctrl_c_exits_at_once_with_every_outcome),
      cmocka_unit_test(test_output_closed_cancels_everything_and_exits_1),
      cmocka_unit_test(test_terminal_live_view_and_summary),
  };
  return cmocka_run_group_tests(tests, batch_setup, batch_teardown);
}
