/* `apex batch` under the scheduler's limits, seen from inside the handlers:
 * batch_kit.hold counts with atomics how many of its attempts ran at once
 * (overall and per group, a stand-in for the concurrency key) and when each
 * started, and returns that in every result; the most any result saw is the
 * most that ever ran at once. batch runs at least 8 workers, so under a
 * lower limit only the scheduler keeps the count down.
 *
 * These need the scheduler (issue 10, src/sched/): until it is in, the
 * library refuses every limit and each run exits 2 before reading a line.
 * Single-threaded; helpers in batch_harness.h. */
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

/* Writes n lines of batch_kit.hold (ms each; key "k" and group 1 on every
 * other line when keyed) and runs them with the given options. */
static void run_holds(proc_t *p, int n, int ms, int keyed, const char *o1, const char *v1,
                      const char *o2, const char *v2) {
  size_t cap = (size_t)n * 128 + 1, len = 0;
  char *text = malloc(cap);
  assert_non_null(text);
  for (int i = 1; i <= n; i++) {
    int k = keyed && i % 2;
    len += (size_t)snprintf(text + len, cap - len,
                            "{\"action\":\"batch_kit.hold\",\"params\":{\"ms\":%d,\"line\":%d,"
                            "\"group\":%d}%s}\n",
                            ms, i, k, k ? ",\"key\":\"k\"" : "");
  }
  const char *path = write_text("holds.jsonl", text);
  free(text);
  run(p, "batch", path, PLUGINS, o1, v1, o2, v2, NULL);
}

/* The most batch_kit saw running at once (overall, and in group). */
static void maxima(const proc_t *p, int n, int group, json_int_t *max_all, json_int_t *max_group) {
  expect_exit(p, 0);
  json_t *events = events_of(p);
  json_t *by = results_by_line(events, (size_t)n);
  *max_all = *max_group = 0;
  for (int i = 1; i <= n; i++) {
    json_t *r = json_object_get(json_array_get(by, (size_t)i), "result");
    if (int_of(r, "max_all") > *max_all) *max_all = int_of(r, "max_all");
    if (i % 2 == group && int_of(r, "max_group") > *max_group) *max_group = int_of(r, "max_group");
  }
  json_decref(by);
  json_decref(events);
}

/* batch runs 8 workers at least, so only the limit keeps it below 8. */
static void test_concurrency_limit_holds(void **st) {
  (void)st;
  proc_t p;
  run_holds(&p, 40, 30, 0, "--concurrency", "2", "--max-pending", "40");
  json_int_t all, group;
  maxima(&p, 40, 0, &all, &group);
  if (all > 2) fail_msg("%lld ran at once under --concurrency 2", (long long)all);
  proc_free(&p);
}

static void test_action_limit_holds(void **st) {
  (void)st;
  proc_t p;
  run_holds(&p, 40, 30, 0, "--limit", "batch_kit.hold=3", "--concurrency", "8");
  json_int_t all, group;
  maxima(&p, 40, 0, &all, &group);
  if (all > 3) fail_msg("%lld ran at once under --limit batch_kit.hold=3", (long long)all);
  proc_free(&p);
}

static void test_key_limit_holds(void **st) {
  (void)st;
  proc_t p;
  run_holds(&p, 40, 30, 1, "--limit", "key:k=1", "--concurrency", "8");
  json_int_t all, keyed;
  maxima(&p, 40, 1, &all, &keyed);
  if (keyed > 1) fail_msg("%lld lines of key k ran at once under --limit key:k=1", (long long)keyed);
  proc_free(&p);
}

/* 20 starts at 10/s, burst 2: the last starts no sooner than 1.8 s after
 * the first (checked at 70 %, for the clock's and the scheduler's slack). */
static void test_rate_limit_spaces_starts(void **st) {
  (void)st;
  proc_t p;
  run_holds(&p, 20, 0, 0, "--rate", "batch_kit=10/s:2", "--concurrency", "8");
  expect_exit(&p, 0);
  json_t *events = events_of(&p);
  json_t *by = results_by_line(events, 20);
  json_int_t first = INT64_MAX, last = 0;
  for (int i = 1; i <= 20; i++) {
    json_int_t t = int_of(json_object_get(json_array_get(by, (size_t)i), "result"), "start_ms");
    if (t < first) first = t;
    if (t > last) last = t;
  }
  if (last - first < 1260) fail_msg("20 starts in %lld ms at 10/s burst 2", (long long)(last - first));
  json_decref(by);
  json_decref(events);
  proc_free(&p);
}

/* One at a time: while a line holds the slot the rest queue, and the last
 * line, "high", starts before every line read before it but the one that
 * may have started at once. (The order of normal against low is left to
 * the scheduler, whose aging may let a low one through.) */
static void test_priorities_order_the_queued_lines(void **st) {
  (void)st;
  const char *path = write_text(
      "prio.jsonl", "{\"action\":\"batch_kit.hold\",\"params\":{\"ms\":300,\"line\":1}}\n"
                    "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":2},\"priority\":\"low\"}\n"
                    "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":3}}\n"
                    "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":4},\"priority\":-50}\n"
                    "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":5},\"priority\":\"normal\"}\n"
                    "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":6},\"priority\":\"high\"}\n");
  proc_t p;
  run(&p, "batch", path, PLUGINS, "--concurrency", "1", NULL);
  expect_exit(&p, 0);
  json_t *events = events_of(&p);
  /* The order the tasks started in: attempt events, one slot at a time. */
  int order[6], n = 0;
  size_t i;
  json_t *j;
  json_array_foreach(events, i, j) {
    if (strcmp(str_of(j, "event"), "attempt") == 0 && n < 6) order[n++] = (int)int_of(j, "line");
  }
  assert_int_equal(n, 6);
  /* Line 1 starts first, or, if every line was queued before the first
   * pick, line 6 does and line 1 (the first of the normal ones) next. */
  int high_at = order[0] == 6 ? 0 : 1;
  if (order[high_at] != 6 || order[1 - high_at] != 1)
    fail_msg("start order %d %d %d %d %d %d: want line 6 (high) first or right after line 1",
             order[0], order[1], order[2], order[3], order[4], order[5]);
  json_decref(events);
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_concurrency_limit_holds),
      cmocka_unit_test(test_action_limit_holds),
      cmocka_unit_test(test_key_limit_holds),
      cmocka_unit_test(test_rate_limit_spaces_starts),
      cmocka_unit_test(test_priorities_order_the_queued_lines),
  };
  return cmocka_run_group_tests(tests, batch_setup, batch_teardown);
}
