/* `apex mcp` over stdio, driven line by line: the protocol's answers to
 * bad input (each followed by a ping the server must still answer),
 * version negotiation, the schemas tools/list derives from a param spec,
 * argument errors, progress, logging, client cancellation, a client that
 * goes away, and MCP tasks. The official SDK client's view is
 * tests/mcp/sdk_stdio.mjs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "integration/harness.h"
#include "integration/mcp_harness.h"

#define REQ(id, method, params) \
  "{\"jsonrpc\":\"2.0\",\"id\":" #id ",\"method\":\"" method "\",\"params\":" params "}"

static void test_bad_json_is_parse_error_and_server_keeps_serving(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-11-25"));
  mcp_send(c, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":");
  json_t *r = mcp_read(c, MCP_DEADLINE_MS);
  assert_int_equal(mcp_error_code(r), -32700);
  assert_true(json_is_null(json_object_get(r, "id")));
  json_decref(r);
  mcp_assert_serving(c, 2);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_invalid_requests_are_32600_with_their_id(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-11-25"));
  /* A batch, a non-object, a wrong version, a null id, a real id. */
  static const char *const bad[] = {"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]", "42",
                                    "{\"jsonrpc\":\"1.0\",\"id\":5,\"method\":\"ping\"}",
                                    "{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"ping\"}",
                                    "{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"ping\"}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    mcp_send(c, "%s", bad[i]);
    json_t *r = mcp_read(c, MCP_DEADLINE_MS);
    assert_non_null(r);
    assert_int_equal(mcp_error_code(r), -32600);
    json_t *id = json_object_get(r, "id");
    if (i == 2) assert_int_equal(json_integer_value(id), 5);
    else assert_true(json_is_null(id));
    json_decref(r);
  }
  mcp_assert_serving(c, 9);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_unknown_method_is_32601(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-11-25"));
  mcp_send(c, REQ(3, "resources/list", "{}"));
  json_t *r = mcp_response(c, 3);
  assert_int_equal(mcp_error_code(r), -32601);
  json_decref(r);
  mcp_assert_serving(c, 4);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_oversized_message_refused_bounded(void **st) {
  (void)st;
  const char *const extra[] = {"--max-message-bytes", "1000", NULL};
  mcp_child_t *c = mcp_start(extra);
  json_decref(mcp_init(c, "2025-11-25"));
  /* 4 MB in one line: refused without being kept. */
  size_t n = 4u << 20;
  char *big = malloc(n + 1);
  assert_non_null(big);
  memset(big, 'x', n);
  memcpy(big, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"p\":\"", 56);
  big[n] = '\n';
  mcp_write(c, big, n + 1);
  free(big);
  json_t *r = mcp_read(c, MCP_DEADLINE_MS);
  assert_int_equal(mcp_error_code(r), -32600);
  assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "message")),
                      "message too large");
  json_decref(r);
  mcp_assert_serving(c, 2);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_requests_before_initialize_refused_but_ping(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  mcp_send(c, REQ(1, "tools/list", "{}"));
  json_t *r = mcp_response(c, 1);
  assert_int_equal(mcp_error_code(r), -32600);
  json_decref(r);
  mcp_assert_serving(c, 2);
  json_decref(mcp_init(c, "2025-11-25"));
  mcp_send(c, REQ(3, "tools/list", "{}"));
  r = mcp_response(c, 3);
  assert_true(json_array_size(json_object_get(json_object_get(r, "result"), "tools")) > 0);
  json_decref(r);
  /* A second initialize is refused too. */
  mcp_send(c, REQ(4, "initialize", "{\"protocolVersion\":\"2025-11-25\"}"));
  r = mcp_response(c, 4);
  assert_int_equal(mcp_error_code(r), -32600);
  json_decref(r);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_version_negotiated(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_t *r = mcp_init(c, "2025-06-18");
  json_t *res = json_object_get(r, "result");
  assert_string_equal(json_string_value(json_object_get(res, "protocolVersion")), "2025-06-18");
  /* Tasks came with 2025-11-25. */
  assert_null(json_object_get(json_object_get(res, "capabilities"), "tasks"));
  assert_non_null(json_object_get(json_object_get(res, "capabilities"), "tools"));
  json_decref(r);
  assert_int_equal(mcp_finish(c), 0);
  c = mcp_start(NULL);
  r = mcp_init(c, "1999-01-01");
  res = json_object_get(r, "result");
  assert_string_equal(json_string_value(json_object_get(res, "protocolVersion")), "2025-11-25");
  assert_non_null(json_object_get(json_object_get(res, "capabilities"), "tasks"));
  json_decref(r);
  assert_int_equal(mcp_finish(c), 0);
}

static json_t *find_tool(json_t *list, const char *name) {
  size_t i;
  json_t *t;
  json_array_foreach(json_object_get(json_object_get(list, "result"), "tools"), i, t) {
    if (strcmp(json_string_value(json_object_get(t, "name")), name) == 0) return t;
  }
  fail_msg("tool %s not listed", name);
  return NULL;
}

static void test_tools_list_schema_from_param_spec(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-11-25"));
  mcp_send(c, REQ(1, "tools/list", "{}"));
  json_t *r = mcp_response(c, 1);
  json_t *t = find_tool(r, "mcp_kit.bounds");
  json_t *want = json_loads(
      "{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"flag\"],"
      "\"properties\":{\"n\":{\"type\":\"integer\",\"description\":\"a small number\","
      "\"default\":5,\"minimum\":1,\"maximum\":10},"
      "\"s\":{\"type\":\"string\",\"minLength\":2,\"maxLength\":5},"
      "\"a\":{\"type\":\"array\",\"maxItems\":3},"
      "\"x\":{\"type\":\"number\",\"minimum\":0.5},"
      "\"flag\":{\"type\":\"boolean\"}}}",
      0, NULL);
  assert_non_null(want);
  if (!json_equal(json_object_get(t, "inputSchema"), want))
    fail_msg("schema: %s", json_dumps(json_object_get(t, "inputSchema"), JSON_COMPACT));
  json_decref(want);
  assert_true(json_is_true(
      json_object_get(json_object_get(find_tool(r, "mcp_kit.noop"), "annotations"), "idempotentHint")));
  assert_null(json_object_get(json_object_get(find_tool(r, "mcp_kit.say"), "annotations"),
                              "idempotentHint"));
  json_decref(r);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_bad_arguments_are_32602_naming_the_argument(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-11-25"));
  mcp_send(c, REQ(1, "tools/call", "{\"name\":\"mcp_kit.bounds\",\"arguments\":{\"flag\":true,\"n\":11}}"));
  json_t *r = mcp_response(c, 1);
  assert_int_equal(mcp_error_code(r), -32602);
  json_t *e = json_object_get(r, "error");
  assert_string_equal(json_string_value(json_object_get(json_object_get(e, "data"), "argument")), "n");
  assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "'n'"));
  json_decref(r);
  mcp_send(c, REQ(2, "tools/call", "{\"name\":\"mcp_kit.bounds\",\"arguments\":{}}"));
  r = mcp_response(c, 2);
  assert_int_equal(mcp_error_code(r), -32602);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(json_object_get(r, "error"), "data"), "argument")),
                      "flag");
  json_decref(r);
  mcp_send(c, REQ(3, "tools/call", "{\"name\":\"no.such\"}"));
  r = mcp_response(c, 3);
  assert_int_equal(mcp_error_code(r), -32602);
  json_decref(r);
  mcp_assert_serving(c, 4);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_progress_strictly_increasing_total_100(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-11-25"));
  mcp_send(c, REQ(1, "tools/call", "{\"name\":\"mcp_kit.sleep\",\"arguments\":{\"ms\":400,"
                                   "\"tick_ms\":10},\"_meta\":{\"progressToken\":\"tok\"}}"));
  json_t *r = mcp_response(c, 1);
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(json_object_get(r, "result"), "structuredContent"), "slept")),
                   400);
  json_decref(r);
  size_t i, n = 0;
  json_t *note;
  double last = -1;
  json_array_foreach(c->notes, i, note) {
    if (strcmp(json_string_value(json_object_get(note, "method")), "notifications/progress")) continue;
    json_t *p = json_object_get(note, "params");
    assert_string_equal(json_string_value(json_object_get(p, "progressToken")), "tok");
    assert_int_equal(json_integer_value(json_object_get(p, "total")), 100);
    double v = json_number_value(json_object_get(p, "progress"));
    assert_true(v > last);
    last = v;
    n++;
  }
  assert_true(n >= 2);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_progress_that_goes_back_or_repeats_not_sent(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-11-25"));
  mcp_send(c, REQ(1, "tools/call", "{\"name\":\"mcp_kit.wobble\",\"arguments\":{},"
                                   "\"_meta\":{\"progressToken\":7}}"));
  json_decref(mcp_response(c, 1));
  /* Reported 10, 10, 5, 20: only 10 and 20 may go out (Apex may coalesce
   * the first two away, never add one). */
  size_t i;
  json_t *note;
  double last = -1;
  json_array_foreach(c->notes, i, note) {
    double v = json_number_value(json_object_get(json_object_get(note, "params"), "progress"));
    assert_true(v > last);
    assert_true(v == 10 || v == 20);
    last = v;
  }
  assert_true(last == 20);
  assert_int_equal(mcp_finish(c), 0);
}

static void test_ping_answered_while_every_worker_busy(void **st) {
  (void)st;
  const char *const extra[] = {"--workers", "1", NULL};
  mcp_child_t *c = mcp_start(extra);
  json_decref(mcp_init(c, "2025-11-25"));
  /* The one worker sleeps; a second call waits in the queue. */
  mcp_send(c, REQ(1, "tools/call", "{\"name\":\"mcp_kit.sleep\",\"arguments\":{\"ms\":60000,"
                                   "\"tick_ms\":5},\"_meta\":{\"progressToken\":1}}"));
  mcp_send(c, REQ(2, "tools/call", "{\"name\":\"mcp_kit.sleep\",\"arguments\":{\"ms\":60000}}"));
  json_t *n = mcp_read(c, MCP_DEADLINE_MS); /* the first is running */
  assert_string_equal(json_string_value(json_object_get(n, "method")), "notifications/progress");
  json_decref(n);
  int64_t t0 = now_ms();
  mcp_assert_serving(c, 3);
  assert_true(now_ms() - t0 < PROMPT_MS);
  /* Closing stdin cancels both; the command exits without waiting a minute. */
  t0 = now_ms();
  assert_int_equal(mcp_finish(c), 0);
  assert_true(now_ms() - t0 < 10000);
}

static void test_cancel_notification_ends_call_without_answer(void **st) {
  (void)st;
  const char *const extra[] = {"--workers", "1", NULL};
  mcp_child_t *c = mcp_start(extra);
  json_decref(mcp_init(c, "2025-11-25"));
  mcp_send(c, REQ("c1", "tools/call", "{\"name\":\"mcp_kit.sleep\",\"arguments\":{\"ms\":60000,"
                                      "\"tick_ms\":5},\"_meta\":{\"progressToken\":1}}"));
  json_t *n = mcp_read(c, MCP_DEADLINE_MS);
  json_decref(n);
  /* A second request with the same id while it runs: refused. */
  mcp_send(c, REQ("c1", "ping", "{}"));
  mcp_send(c, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{"
              "\"requestId\":\"c1\",\"reason\":\"user changed mind\"}}");
  /* The worker is free again: a call needing it completes. */
  mcp_send(c, REQ(2, "tools/call", "{\"name\":\"mcp_kit.noop\",\"arguments\":{}}"));
  int got_dup = 0;
  for (;;) {
    json_t *v = mcp_read(c, MCP_DEADLINE_MS);
    assert_non_null(v);
    json_t *id = json_object_get(v, "id");
    if (json_is_string(id)) {
      /* The one answer with id c1 is the duplicate's refusal (ping would be
       * answered, but a duplicate id is refused first). */
      assert_int_equal(mcp_error_code(v), -32600);
      assert_int_equal(got_dup, 0);
      got_dup = 1;
    } else if (json_is_integer(id)) {
      assert_int_equal(json_integer_value(id), 2);
      json_decref(v);
      break;
    }
    json_decref(v);
  }
  assert_int_equal(got_dup, 1);
  /* No answer to c1 follows. */
  mcp_assert_serving(c, 3);
  json_t *v;
  while ((v = mcp_read(c, 200))) {
    assert_false(json_is_string(json_object_get(v, "id")));
    json_decref(v);
  }
  assert_int_equal(mcp_finish(c), 0);
}

static void test_client_gone_cancels_with_reason_disconnected(void **st) {
  (void)st;
  char path[] = "/tmp/apex_mcp_reasonXXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-11-25"));
  mcp_send(c, REQ(1, "tools/call", "{\"name\":\"mcp_kit.sleep\",\"arguments\":{\"ms\":60000,"
                                   "\"tick_ms\":5,\"reason_file\":\"%s\"},\"_meta\":{"
                                   "\"progressToken\":1}}"), path);
  json_t *n = mcp_read(c, MCP_DEADLINE_MS);
  json_decref(n);
  assert_int_equal(mcp_finish(c), 0);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  char why[64] = "";
  assert_non_null(fgets(why, sizeof why, f));
  fclose(f);
  unlink(path);
  assert_string_equal(why, "disconnected");
}

static void test_logging_set_level_and_messages(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-11-25"));
  /* Default level warning: an info line is not sent. */
  mcp_send(c, REQ(1, "tools/call", "{\"name\":\"mcp_kit.say\",\"arguments\":{\"text\":\"quiet\"}}"));
  json_decref(mcp_response(c, 1));
  mcp_assert_serving(c, 2);
  assert_int_equal(json_array_size(c->notes), 0);
  mcp_send(c, REQ(3, "logging/setLevel", "{\"level\":\"loud\"}"));
  json_t *r = mcp_response(c, 3);
  assert_int_equal(mcp_error_code(r), -32602);
  json_decref(r);
  mcp_send(c, REQ(4, "logging/setLevel", "{\"level\":\"info\"}"));
  json_decref(mcp_response(c, 4));
  mcp_send(c, REQ(5, "tools/call", "{\"name\":\"mcp_kit.say\",\"arguments\":{\"text\":\"hello\"}}"));
  json_decref(mcp_response(c, 5));
  assert_int_equal(json_array_size(c->notes), 1);
  json_t *p = json_object_get(json_array_get(c->notes, 0), "params");
  assert_string_equal(json_string_value(json_object_get(json_array_get(c->notes, 0), "method")),
                      "notifications/message");
  assert_string_equal(json_string_value(json_object_get(p, "level")), "info");
  assert_string_equal(json_string_value(json_object_get(p, "logger")), "mcp_kit.say");
  assert_string_equal(json_string_value(json_object_get(p, "data")), "hello");
  assert_int_equal(mcp_finish(c), 0);
}

static void test_tasks_augmented_call_get_result_list_cancel(void **st) {
  (void)st;
  mcp_child_t *c = mcp_start(NULL);
  json_decref(mcp_init(c, "2025-11-25"));
  mcp_send(c, REQ(1, "tools/call", "{\"name\":\"mcp_kit.sleep\",\"arguments\":{\"ms\":300},"
                                   "\"task\":{\"ttl\":60000}}"));
  json_t *r = mcp_response(c, 1);
  json_t *task = json_object_get(json_object_get(r, "result"), "task");
  assert_string_equal(json_string_value(json_object_get(task, "status")), "working");
  assert_int_equal(json_integer_value(json_object_get(task, "ttl")), 60000);
  assert_true(json_integer_value(json_object_get(task, "pollInterval")) > 0);
  char id[64];
  snprintf(id, sizeof id, "%s", json_string_value(json_object_get(task, "taskId")));
  json_decref(r);
  mcp_send(c, REQ(2, "tasks/get", "{\"taskId\":\"%s\"}"), id);
  r = mcp_response(c, 2);
  assert_string_equal(json_string_value(json_object_get(json_object_get(r, "result"), "taskId")), id);
  json_decref(r);
  /* tasks/result waits for the end, then is the tool's result. */
  mcp_send(c, REQ(3, "tasks/result", "{\"taskId\":\"%s\"}"), id);
  r = mcp_response(c, 3);
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(json_object_get(r, "result"), "structuredContent"), "slept")),
                   300);
  json_decref(r);
  mcp_send(c, REQ(4, "tasks/get", "{\"taskId\":\"%s\"}"), id);
  r = mcp_response(c, 4);
  assert_string_equal(json_string_value(json_object_get(json_object_get(r, "result"), "status")),
                      "completed");
  json_decref(r);
  /* A second task, cancelled. */
  mcp_send(c, REQ(5, "tools/call", "{\"name\":\"mcp_kit.sleep\",\"arguments\":{\"ms\":60000},"
                                   "\"task\":{}}"));
  r = mcp_response(c, 5);
  char id2[64];
  snprintf(id2, sizeof id2, "%s",
           json_string_value(json_object_get(
               json_object_get(json_object_get(r, "result"), "task"), "taskId")));
  json_decref(r);
  mcp_send(c, REQ(6, "tasks/cancel", "{\"taskId\":\"%s\"}"), id2);
  r = mcp_response(c, 6);
  assert_string_equal(json_string_value(json_object_get(json_object_get(r, "result"), "status")),
                      "cancelled");
  json_decref(r);
  mcp_send(c, REQ(7, "tasks/result", "{\"taskId\":\"%s\"}"), id2);
  r = mcp_response(c, 7);
  assert_true(json_is_true(json_object_get(json_object_get(r, "result"), "isError")));
  json_decref(r);
  mcp_send(c, REQ(8, "tasks/list", "{}"));
  r = mcp_response(c, 8);
  assert_int_equal(json_array_size(json_object_get(json_object_get(r, "result"), "tasks")), 2);
  json_decref(r);
  mcp_send(c, REQ(9, "tasks/get", "{\"taskId\":\"nope\"}"));
  r = mcp_response(c, 9);
  assert_int_equal(mcp_error_code(r), -32602);
  json_decref(r);
  assert_int_equal(mcp_finish(c), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_json_is_parse_error_and_server_keeps_serving),
      cmocka_unit_test(test_invalid_requests_are_32600_with_their_id),
      cmocka_unit_test(test_unknown_method_is_32601),
      cmocka_unit_test(test_oversized_message_refused_bounded),
      cmocka_unit_test(test_requests_before_initialize_refused_but_ping),
      cmocka_unit_test(test_version_negotiated),
      cmocka_unit_test(test_tools_list_schema_from_param_spec),
      cmocka_unit_test(test_bad_arguments_are_32602_naming_the_argument),
      cmocka_unit_test(test_progress_strictly_increasing_total_100),
      cmocka_unit_test(test_progress_that_goes_back_or_repeats_not_sent),
      cmocka_unit_test(test_ping_answered_while_every_worker_busy),
      cmocka_unit_test(test_cancel_notification_ends_call_without_answer),
      cmocka_unit_test(test_client_gone_cancels_with_reason_disconnected),
      cmocka_unit_test(test_logging_set_level_and_messages),
      cmocka_unit_test(test_tasks_augmented_call_get_result_list_cancel),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
