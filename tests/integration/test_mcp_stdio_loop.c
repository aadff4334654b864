/* The stdio loop of `apex mcp` (cli/mcp_stdio.c) as W16 tuned it: epoll
 * over its fds, a stdin that epoll cannot watch (a regular file: read
 * without waiting), and the short watch of a call just started
 * (mcp_server_watch_newest), which must answer every call once, in order,
 * whether its task ended while watched or later. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "integration/harness.h"
#include "integration/mcp_harness.h"

#define INIT_LINE                                                                              \
  "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":" \
  "\"2025-06-18\",\"capabilities\":{},\"clientInfo\":{\"name\":\"t\",\"version\":\"1\"}}}\n"
#define NOOP_FMT                                                                   \
  "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"tools/call\",\"params\":{\"name\":" \
  "\"mcp_kit.noop\",\"arguments\":{}}}\n"

/* stdin a regular file (epoll refuses it: EPERM): it is read, initialize
 * and the ping are answered (at once), each call at most once and not as
 * an error (the file's end comes right after: that is the client going
 * away, and calls still running then are cancelled unanswered), and the
 * command exits 0 at its end. */
static void test_stdin_regular_file_all_answered(void **st) {
  (void)st;
  char in_path[] = "/tmp/apex_mcp_in_XXXXXX", out_path[] = "/tmp/apex_mcp_out_XXXXXX";
  int in = mkstemp(in_path), out = mkstemp(out_path);
  assert_true(in >= 0 && out >= 0);
  FILE *f = fdopen(in, "w");
  assert_non_null(f);
  fputs(INIT_LINE, f);
  fputs("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n", f);
  for (int i = 1; i <= 20; i++) fprintf(f, NOOP_FMT, i);
  fputs("{\"jsonrpc\":\"2.0\",\"id\":21,\"method\":\"ping\"}\n", f);
  assert_int_equal(fclose(f), 0);
  int fd_in = open(in_path, O_RDONLY);
  assert_true(fd_in >= 0);
  const char *argv[] = {APEX_CLI_PATH, "mcp", "--plugin-path", APEX_TEST_PLUGIN_DIR,
                        "--plugin", "mcp_kit", NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fd_in, 0);
  posix_spawn_file_actions_adddup2(&fa, out, 1);
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, APEX_CLI_PATH, &fa, NULL, (char *const *)argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  close(fd_in);
  int64_t end = now_ms() + MCP_DEADLINE_MS;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (now_ms() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      fail_msg("apex mcp did not exit at the end of its stdin file");
    }
    nap_ms(5);
  }
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  FILE *o = fdopen(out, "r");
  assert_non_null(o);
  rewind(o);
  char line[4096];
  int seen[22] = {0}, lines = 0;
  while (fgets(line, sizeof line, o)) {
    json_t *v = json_loads(line, 0, NULL);
    assert_non_null(v);
    json_int_t id = json_integer_value(json_object_get(v, "id"));
    assert_true(id >= 0 && id <= 21);
    assert_int_equal(seen[id], 0);
    seen[id] = 1;
    assert_non_null(json_object_get(v, "result"));
    assert_null(json_object_get(json_object_get(v, "result"), "isError"));
    json_decref(v);
    lines++;
  }
  assert_true(seen[0] && seen[21]); /* initialize, the ping */
  assert_true(lines >= 2 && lines <= 22);
  fclose(o);
  unlink(in_path);
  unlink(out_path);
}

/* Calls in a row (each watched, most ending while watched) and calls
 * pipelined in one write (the watch sees only the newest): each answered
 * exactly once with its own id, and the server still serves. */
static void test_calls_in_a_row_and_pipelined_each_answered_once(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-06-18"));
  for (int i = 1; i <= 300; i++) {
    mcp_send(c, "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"tools/call\",\"params\":{\"name\":"
                "\"mcp_kit.noop\",\"arguments\":{}}}",
             i);
    json_t *r = mcp_response(c, i);
    assert_non_null(json_object_get(r, "result"));
    assert_null(json_object_get(json_object_get(r, "result"), "isError"));
    json_decref(r);
  }
  char batch[64 * 160];
  size_t n = 0;
  for (int i = 1001; i <= 1050; i++)
    n += (size_t)snprintf(batch + n, sizeof batch - n, NOOP_FMT, i);
  mcp_write(c, batch, n);
  int seen[50] = {0};
  for (int k = 0; k < 50; k++) {
    json_t *r = mcp_read(c, MCP_DEADLINE_MS);
    assert_non_null(r);
    json_int_t id = json_integer_value(json_object_get(r, "id"));
    assert_true(id >= 1001 && id <= 1050);
    assert_int_equal(seen[id - 1001], 0);
    seen[id - 1001] = 1;
    assert_non_null(json_object_get(r, "result"));
    json_decref(r);
  }
  mcp_assert_serving(c, 2000);
  assert_int_equal(json_array_size(c->notes), 0);
  assert_int_equal(mcp_finish(c), 0);
}

/* A call that outlives the watch (a sleep of 300 ms) is answered when it
 * ends, by the ordinary wake-up. */
static void test_call_longer_than_the_watch_answered(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-06-18"));
  mcp_send(c, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":"
              "\"mcp_kit.sleep\",\"arguments\":{\"ms\":300}}}");
  json_t *r = mcp_response(c, 7);
  assert_non_null(json_object_get(r, "result"));
  assert_null(json_object_get(json_object_get(r, "result"), "isError"));
  json_decref(r);
  mcp_assert_serving(c, 8);
  assert_int_equal(mcp_finish(c), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stdin_regular_file_all_answered),
      cmocka_unit_test(test_calls_in_a_row_and_pipelined_each_answered_once),
      cmocka_unit_test(test_call_longer_than_the_watch_answered),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
