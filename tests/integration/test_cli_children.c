/* apex run with child tasks (example_async.fan_out): --json writes one
 * "child" line at each child's start and end, naming its parent, the
 * parent's progress carries the children, one result line ends the run;
 * Ctrl-C cancels the parent and every child (reason "parent"), the
 * parent's result line last. */
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

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/cli_harness.h"

/* The child lines of lines: how many started (state running) and ended
 * in state `end`, each naming parent. */
static void count_children(json_t *lines, json_int_t parent, size_t *started, size_t *ended,
                           const char *end) {
  size_t i;
  json_t *j;
  *started = *ended = 0;
  json_array_foreach(lines, i, j) {
    if (strcmp(json_string_value(json_object_get(j, "event")), "child") != 0) continue;
    assert_int_equal(json_integer_value(json_object_get(j, "parent")), parent);
    const char *st = json_string_value(json_object_get(j, "state"));
    if (strcmp(st, "running") == 0)
      (*started)++;
    else if (strcmp(st, end) == 0)
      (*ended)++;
  }
}

static void test_fan_out_json(void **state) {
  (void)state;
  proc_t p;
  run(&p, "run", "example_async.fan_out", "--param", "children=6", "--param", "steps=2",
      "--param", "step_ms=5", "--param", "fail_every=3", "--json", NULL);
  assert_int_equal(p.code, 0);
  json_t *lines = json_lines(&p);
  json_t *res = the_result(lines);
  json_int_t pid = json_integer_value(json_object_get(res, "task"));
  json_t *r = json_object_get(res, "result");
  assert_int_equal(json_integer_value(json_object_get(r, "children")), 6);
  assert_int_equal(json_integer_value(json_object_get(r, "failed")), 2);
  size_t started, ok, failed;
  count_children(lines, pid, &started, &ok, "succeeded");
  count_children(lines, pid, &started, &failed, "failed");
  assert_int_equal(started, 6);
  assert_int_equal(ok, 4);
  assert_int_equal(failed, 2);
  /* Some progress line of the parent lists children with their ids. */
  size_t i, with_kids = 0;
  json_t *j;
  json_array_foreach(lines, i, j) {
    if (strcmp(json_string_value(json_object_get(j, "event")), "progress") != 0) continue;
    json_t *c = json_object_get(json_object_get(j, "details"), "children");
    if (c && json_integer_value(json_object_get(c, "total")) == 6) with_kids++;
  }
  assert_true(with_kids >= 1);
  json_decref(lines);
  proc_free(&p);
}

static void test_fan_out_ctrl_c_cancels_every_child(void **state) {
  (void)state;
  proc_t p;
  proc_start(&p, "run", "example_async.fan_out", "--param", "children=10", "--param",
             "steps=1000", "--param", "step_ms=50", "--json", NULL);
  assert_true(proc_read_until(&p, "\"state\":\"running\"", DEADLINE_MS));
  /* All ten spawned (the parent's roll-up counts them): a Ctrl-C before
   * that leaves the rest never spawned, not cancelled. */
  assert_true(proc_read_until(&p, "\"total\":10", DEADLINE_MS));
  assert_int_equal(kill(p.pid, SIGINT), 0);
  proc_wait(&p);
  assert_int_equal(p.code, 130);
  json_t *lines = json_lines(&p);
  json_t *res = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(res, "state")), "cancelled");
  json_int_t pid = json_integer_value(json_object_get(res, "task"));
  size_t started, cancelled;
  count_children(lines, pid, &started, &cancelled, "cancelled");
  /* Every child ended cancelled: the started ones with a line each, and
   * those cancelled in the queue with an end line only. */
  size_t i, ends = 0;
  json_t *j;
  json_array_foreach(lines, i, j) {
    if (strcmp(json_string_value(json_object_get(j, "event")), "child") != 0) continue;
    const char *st = json_string_value(json_object_get(j, "state"));
    if (strcmp(st, "running") == 0) continue;
    ends++;
    assert_string_equal(st, "cancelled");
    const char *msg =
        json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    assert_non_null(msg);
    if (!strstr(msg, "parent") && !strstr(msg, "cancelled after step"))
      fail_msg("child error: %s", msg);
  }
  assert_int_equal(ends, 10);
  assert_int_equal(cancelled, 10);
  json_decref(lines);
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fan_out_json),
      cmocka_unit_test(test_fan_out_ctrl_c_cancels_every_child),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
