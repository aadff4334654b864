/* Log record rendering (human, logfmt, JSON Lines), the format names, a
 * plugin's log rate limit, the OTLP/JSON a span list renders to, and the
 * ctx wrapper's refusal on a host older than apex_ctx_traceparent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "core/log.h"
#include "obs/trace.h"

static apex_log_record_t record(const char *msg) {
  apex_log_record_t r = {
      .struct_size = sizeof r,
      .level = APEX_LOG_WARN,
      .time_unix_ns = 1796202999510276123u, /* 2026-12-02T09:16:39.510276Z */
      .message = msg,
      .task_id = 3,
      .plugin = "files",
      .action = "copy",
      .attempt = 2,
      .trace_id = "0af7651916cd43dd8448eb211c80319c",
      .span_id = "b7ad6b7169203331",
  };
  return r;
}

static void test_human_line_is_the_line_apex_always_wrote(void **st) {
  (void)st;
  char buf[256];
  apex_log_record_t r = record("disk full");
  size_t n = apex_log_record_render(&r, APEX_LOG_FORMAT_HUMAN, buf, sizeof buf);
  assert_string_equal(buf, "apex: warn: files.copy task 3: disk full\n");
  assert_int_equal(n, strlen(buf));
  r.task_id = 0;
  r.action = NULL;
  apex_log_record_render(&r, APEX_LOG_FORMAT_DEFAULT, buf, sizeof buf);
  assert_string_equal(buf, "apex: warn: files: disk full\n");
}

static void test_logfmt_quotes_and_escapes(void **st) {
  (void)st;
  char buf[512];
  apex_log_record_t r = record("say \"hi\"\\ now\nnext");
  apex_log_record_render(&r, APEX_LOG_FORMAT_LOGFMT, buf, sizeof buf);
  assert_string_equal(buf,
                      "time=2026-12-02T09:16:39.510276Z level=warn msg=\"say \\\"hi\\\"\\\\ now\\nnext\" "
                      "task_id=3 plugin=files action=copy attempt=2 "
                      "trace_id=0af7651916cd43dd8448eb211c80319c span_id=b7ad6b7169203331\n");
}

/* Quotes, backslashes, control characters and invalid UTF-8 in a message
 * still make one valid JSON object a line (jansson refuses invalid UTF-8,
 * so it parsing is the check), each bad byte as U+FFFD. */
static void test_json_line_of_hostile_text_parses(void **st) {
  (void)st;
  char buf[512];
  apex_log_record_t r = record("a\"b\\c\nd\te\x01 \xff\xc3(");
  size_t n = apex_log_record_render(&r, APEX_LOG_FORMAT_JSON, buf, sizeof buf);
  assert_int_equal(buf[n - 1], '\n');
  assert_null(memchr(buf, '\n', n - 1));
  json_error_t e;
  json_t *o = json_loads(buf, 0, &e);
  if (!o) fail_msg("%s: %s", e.text, buf);
  assert_string_equal(json_string_value(json_object_get(o, "msg")),
                      "a\"b\\c\nd\te\x01 \xef\xbf\xbd\xef\xbf\xbd(");
  assert_string_equal(json_string_value(json_object_get(o, "time")), "2026-12-02T09:16:39.510276Z");
  assert_string_equal(json_string_value(json_object_get(o, "level")), "warn");
  assert_int_equal(json_integer_value(json_object_get(o, "task_id")), 3);
  assert_int_equal(json_integer_value(json_object_get(o, "attempt")), 2);
  assert_string_equal(json_string_value(json_object_get(o, "plugin")), "files");
  assert_string_equal(json_string_value(json_object_get(o, "trace_id")),
                      "0af7651916cd43dd8448eb211c80319c");
  assert_null(json_object_get(o, "suppressed"));
  json_decref(o);
}

/* A message longer than the buffer is cut, never mid-escape or
 * mid-character: the line still parses. */
static void test_json_line_cut_to_fit_still_parses(void **st) {
  (void)st;
  char msg[3000];
  for (size_t i = 0; i + 3 < sizeof msg; i += 3) memcpy(msg + i, "\xc3\xa9\"", 3);
  msg[sizeof msg - 1] = '\0';
  char buf[400];
  apex_log_record_t r = record(msg);
  size_t n = apex_log_record_render(&r, APEX_LOG_FORMAT_JSON, buf, sizeof buf);
  assert_true(n < sizeof buf);
  json_t *o = json_loads(buf, 0, NULL);
  assert_non_null(o);
  assert_string_equal(json_string_value(json_object_get(o, "span_id")), "b7ad6b7169203331");
  json_decref(o);
  assert_int_equal(apex_log_record_render(&r, APEX_LOG_FORMAT_JSON, buf, 100), 0);
}

static void test_format_names(void **st) {
  (void)st;
  assert_int_equal(apex_log_format_parse("JSON"), APEX_LOG_FORMAT_JSON);
  assert_int_equal(apex_log_format_parse("logfmt"), APEX_LOG_FORMAT_LOGFMT);
  assert_int_equal(apex_log_format_parse("human"), APEX_LOG_FORMAT_HUMAN);
  assert_int_equal(apex_log_format_parse("xml"), APEX_LOG_FORMAT_DEFAULT);
  assert_int_equal(apex_log_format_parse(NULL), APEX_LOG_FORMAT_DEFAULT);
}

/* Within one second: the first `limit` records pass, the rest are counted
 * (none lost), and no limit admits everything. */
static void test_rate_limit_admits_then_counts(void **st) {
  (void)st;
  apex__lograte_t r = {0};
  uint32_t sum = 99;
  int admitted = 0;
  for (int i = 0; i < 50; i++) admitted += apex__lograte_admit(&r, 5, &sum);
  /* a second's turn during the loop would admit up to 5 more */
  assert_true(admitted == 5 || admitted == 10);
  assert_int_equal(apex__lograte_take(&r) + (uint32_t)admitted + (admitted == 10 ? sum : 0), 50);
  assert_int_equal(apex__lograte_take(&r), 0);
  apex__lograte_t u = {0};
  for (int i = 0; i < 1000; i++) assert_int_equal(apex__lograte_admit(&u, -1, &sum), 1);
  assert_int_equal(apex__lograte_take(&u), 0);
}

/* OTLP/JSON of a task span with its embedded first attempt and an error
 * message of hostile text: one valid object, ids in hex, both spans. */
static void test_otlp_json_of_spans(void **st) {
  (void)st;
  apex__span_t *s = calloc(2, sizeof *s);
  assert_non_null(s);
  s->task_id = 7;
  s->plugin = "files";
  s->action = "copy";
  for (int i = 0; i < 16; i++) s->trace_id[i] = (uint8_t)(0xa0 + i);
  for (int i = 0; i < 8; i++) s->span_id[i] = (uint8_t)(i + 1);
  s->start_ns = 1;
  s->end_ns = 2;
  s->status = 2;
  s->code = APEX_E_EXECUTION;
  s->msg = strdup("bad \"thing\"\n\xff");
  s->state = APEX_TASK_FAILED;
  s->att0 = s->att0_done = 1;
  s[1] = (apex__span_t){.task_id = 7, .plugin = "files", .action = "copy", .is_attempt = 1,
                        .attempt = 1, .has_parent = 1, .status = 1};
  memcpy(s[1].trace_id, s->trace_id, 16);
  memcpy(s[1].parent_id, s->span_id, 8);
  s[1].span_id[0] = 9;
  size_t len;
  char *j = apex__otlp_json(s, &len);
  assert_non_null(j);
  assert_int_equal(strlen(j), len);
  json_error_t e;
  json_t *o = json_loads(j, 0, &e);
  if (!o) fail_msg("%s: %s", e.text, j);
  json_t *spans = json_object_get(
      json_array_get(json_object_get(json_array_get(json_object_get(o, "resourceSpans"), 0),
                                     "scopeSpans"),
                     0),
      "spans");
  assert_int_equal(json_array_size(spans), 2);
  json_t *t = json_array_get(spans, 0), *a = json_array_get(spans, 1);
  assert_string_equal(json_string_value(json_object_get(t, "traceId")),
                      "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf");
  assert_string_equal(json_string_value(json_object_get(t, "spanId")), "0102030405060708");
  assert_null(json_object_get(t, "parentSpanId"));
  assert_string_equal(json_string_value(json_object_get(a, "parentSpanId")), "0102030405060708");
  assert_string_equal(json_string_value(json_object_get(a, "name")), "files.copy attempt");
  assert_string_equal(json_string_value(json_object_get(json_object_get(t, "status"), "message")),
                      "bad \"thing\"\n\xef\xbf\xbd");
  json_decref(o);
  free(j);
  apex__span_free(s);
}

/* A host whose api table ends before `traceparent` (an older library): the
 * wrapper refuses without calling past the table. */
static void test_ctx_traceparent_refused_by_an_older_host(void **st) {
  (void)st;
  apex_host_api_t api;
  memset(&api, 0, sizeof api);
  api.struct_size = (uint32_t)offsetof(apex_host_api_t, traceparent);
  apex_ctx_t ctx = {.api = &api};
  char buf[64] = "untouched";
  assert_int_equal(apex_ctx_traceparent(&ctx, buf, sizeof buf), APEX_E_INVALID);
  assert_string_equal(buf, "untouched");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_human_line_is_the_line_apex_always_wrote),
      cmocka_unit_test(test_logfmt_quotes_and_escapes),
      cmocka_unit_test(test_json_line_of_hostile_text_parses),
      cmocka_unit_test(test_json_line_cut_to_fit_still_parses),
      cmocka_unit_test(test_format_names),
      cmocka_unit_test(test_rate_limit_admits_then_counts),
      cmocka_unit_test(test_otlp_json_of_spans),
      cmocka_unit_test(test_ctx_traceparent_refused_by_an_older_host),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
