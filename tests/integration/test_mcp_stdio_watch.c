/* The stdio loop's watch for the client's next line (cli/mcp_stdio.c,
 * watch_fds): after it wrote an answer the loop polls its fds without
 * sleeping for a bounded time, and only while the client's recent lines
 * came back that fast. What must hold whatever the timing: the watch ends
 * (an idle server sleeps: its main thread burns no CPU), a line that comes
 * after it is still read and answered, a client that slows down and speeds
 * up again is answered every time, and stdin's end during the watch ends
 * the server with exit 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "integration/harness.h"
#include "integration/mcp_harness.h"

#define NOOP_FMT                                                                   \
  "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"tools/call\",\"params\":{\"name\":" \
  "\"mcp_kit.noop\",\"arguments\":{}}}"

/* The time pid's main thread has run, ns (/proc/PID/schedstat's first
 * field: the thread whose tid is the pid). */
static uint64_t main_thread_run_ns(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/schedstat", (int)pid);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  unsigned long long run = 0;
  assert_int_equal(fscanf(f, "%llu", &run), 1);
  fclose(f);
  return run;
}

static void call_noop(mcp_child_t *c, int id) {
  mcp_send(c, NOOP_FMT, id);
  json_t *r = mcp_response(c, id);
  assert_non_null(json_object_get(r, "result"));
  assert_null(json_object_get(json_object_get(r, "result"), "isError"));
  json_decref(r);
}

/* Calls in a row arm the watch; then the client goes quiet for 600 ms: the
 * loop must stop watching and sleep (its main thread runs well under
 * 60 ms of those 600: a watch that never ends would run most of them),
 * and the call that comes after is answered. */
static void test_watch_ends_and_a_later_line_is_answered(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-06-18"));
  for (int i = 1; i <= 50; i++) call_noop(c, i);
  uint64_t before = main_thread_run_ns(c->pid);
  nap_ms(600);
  uint64_t ran = main_thread_run_ns(c->pid) - before;
  assert_true(ran < 60u * 1000 * 1000);
  call_noop(c, 51);
  mcp_assert_serving(c, 52);
  assert_int_equal(mcp_finish(c), 0);
}

/* A client whose lines come slower than the watch (the loop stops
 * watching for it), then fast again (it watches again): every call
 * answered once, with its own id. */
static void test_slow_then_fast_client_each_answered(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-06-18"));
  int id = 1;
  for (int i = 0; i < 5; i++, id++) {
    call_noop(c, id);
    nap_ms(20);
  }
  for (int i = 0; i < 200; i++, id++) call_noop(c, id);
  for (int i = 0; i < 3; i++, id++) {
    nap_ms(20);
    call_noop(c, id);
  }
  mcp_assert_serving(c, id);
  assert_int_equal(json_array_size(c->notes), 0);
  assert_int_equal(mcp_finish(c), 0);
}

/* stdin ends right after an answer, while the loop watches for the next
 * line: the server sees the end and exits 0 (mcp_finish fails the test if
 * it has to kill it). Several times, so some ends land inside the watch. */
static void test_eof_during_the_watch_exits_cleanly(void **st) {
  (void)st;
  for (int k = 0; k < 5; k++) {
    mcp_child_t *c = mcp_start(NULL);
    json_decref(mcp_init(c, "2025-06-18"));
    for (int i = 1; i <= 20; i++) call_noop(c, i);
    int64_t t0 = now_ms();
    assert_int_equal(mcp_finish(c), 0);
    /* Nothing was running: no drain to wait for. */
    assert_true(now_ms() - t0 < 10000);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_watch_ends_and_a_later_line_is_answered),
      cmocka_unit_test(test_slow_then_fast_client_each_answered),
      cmocka_unit_test(test_eof_during_the_watch_exits_cleanly),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
