/* The OTLP/JSON span writer's numbers and escapes, byte for byte: it
 * writes times through a cache of their high digits and integers two
 * digits a step (src/obs/trace_export.c), so every edge of those paths
 * (0, one digit, the cache's boundary, a time that misses both entries,
 * UINT64_MAX) is rendered and read back with jansson. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "obs/trace.h"

static const uint64_t k_times[] = {
    0u,
    7u,
    10u,
    99999999u,
    100000000u,                /* the cache's low part rolls over here */
    100000001u,
    1000000000u,
    1764670000123456789u,      /* a Unix time in ns */
    1764670000100000000u,      /* the same high digits, low part zero */
    1764670000099999999u,      /* one below: another entry */
    1764670000123456789u,      /* back to the first (cached) */
    1764670099000000007u,      /* a third high value: evicts one */
    1764670000123456788u,
    18446744073709551615u,     /* UINT64_MAX */
    18446744073700000000u,
};
#define N_TIMES (sizeof k_times / sizeof k_times[0])

static json_t *spans_of(json_t *req) {
  json_t *rs = json_array_get(json_object_get(req, "resourceSpans"), 0);
  json_t *ss = json_array_get(json_object_get(rs, "scopeSpans"), 0);
  return json_object_get(ss, "spans");
}

static const char *attr(json_t *span, const char *key, const char *kind) {
  json_t *a = json_object_get(span, "attributes");
  for (size_t i = 0; i < json_array_size(a); i++) {
    json_t *x = json_array_get(a, i);
    if (strcmp(json_string_value(json_object_get(x, "key")), key) == 0)
      return json_string_value(json_object_get(json_object_get(x, "value"), kind));
  }
  return NULL;
}

/* A list of task spans (each with its first attempt) whose start and end
 * times walk k_times, and whose task ids and attempts are the same edges:
 * every number comes back as the decimal text of what was stored. */
static void test_numbers_round_trip(void **st) {
  (void)st;
  apex__span_t *list = NULL;
  for (size_t i = N_TIMES; i-- > 0;) {
    apex__span_t *s = calloc(2, sizeof *s);
    assert_non_null(s);
    s->next = list;
    list = s;
    s->task_id = k_times[i];
    s->plugin = "files";
    s->action = "copy";
    s->trace_id[0] = s->span_id[0] = 1;
    s->start_ns = k_times[i];
    s->end_ns = k_times[(i + 1) % N_TIMES];
    s->attempt = (uint32_t)i * 1000003u;
    s->status = 1;
    s->state = APEX_TASK_SUCCEEDED;
    s->att0 = s->att0_done = 1;
    s[1] = (apex__span_t){.task_id = k_times[i], .plugin = "files", .action = "copy",
                          .is_attempt = 1, .attempt = UINT32_MAX, .has_parent = 1,
                          .start_ns = k_times[(i + 3) % N_TIMES],
                          .end_ns = k_times[(i + 5) % N_TIMES]};
    s[1].trace_id[0] = s[1].span_id[0] = 2;
  }
  size_t len = 0;
  char *j = apex__otlp_json(list, &len);
  assert_non_null(j);
  assert_int_equal(strlen(j), len);
  json_error_t e;
  json_t *req = json_loads(j, 0, &e);
  if (!req) fail_msg("%s: %s", e.text, j);
  json_t *spans = spans_of(req);
  assert_int_equal(json_array_size(spans), 2 * N_TIMES);
  char want[32];
  for (size_t i = 0; i < N_TIMES; i++) {
    json_t *t = json_array_get(spans, 2 * i), *a = json_array_get(spans, 2 * i + 1);
    snprintf(want, sizeof want, "%" PRIu64, k_times[i]);
    assert_string_equal(json_string_value(json_object_get(t, "startTimeUnixNano")), want);
    assert_string_equal(attr(t, "apex.task.id", "intValue"), want);
    snprintf(want, sizeof want, "%" PRIu64, k_times[(i + 1) % N_TIMES]);
    assert_string_equal(json_string_value(json_object_get(t, "endTimeUnixNano")), want);
    snprintf(want, sizeof want, "%" PRIu64, k_times[(i + 3) % N_TIMES]);
    assert_string_equal(json_string_value(json_object_get(a, "startTimeUnixNano")), want);
    snprintf(want, sizeof want, "%" PRIu64, k_times[(i + 5) % N_TIMES]);
    assert_string_equal(json_string_value(json_object_get(a, "endTimeUnixNano")), want);
    snprintf(want, sizeof want, "%" PRIu32, (uint32_t)i * 1000003u);
    assert_string_equal(attr(t, "apex.attempts", "intValue"), want);
    assert_string_equal(attr(a, "apex.attempt", "intValue"), "4294967295");
    assert_string_equal(json_string_value(json_object_get(a, "name")), "files.copy attempt");
    assert_string_equal(json_string_value(json_object_get(t, "traceId")),
                        "01000000000000000000000000000000");
    assert_string_equal(json_string_value(json_object_get(a, "spanId")), "0200000000000000");
  }
  json_decref(req);
  free(j);
  while (list) {
    apex__span_t *next = list->next;
    apex__span_free(list);
    list = next;
  }
}

/* Every control character, quote, backslash, DEL and invalid UTF-8 byte
 * in a status message and an event's text, and a tracestate: escaped as
 * JSON wants, the bad bytes as U+FFFD, the rest unchanged. */
static void test_escapes_round_trip(void **st) {
  (void)st;
  apex__span_t *s = calloc(2, sizeof *s);
  assert_non_null(s);
  char msg[64], *p = msg;
  for (int c = 1; c < 0x20; c++) *p++ = (char)c;
  *p++ = '"';
  *p++ = '\\';
  *p++ = 0x7f;
  *p++ = (char)0xff;
  memcpy(p, "\xc3\xa9", 3); /* é, valid, and the NUL */
  s->plugin = "p";
  s->action = "a";
  s->status = 2;
  s->code = APEX_E_TIMEOUT;
  s->msg = strdup(msg);
  s->tracestate = strdup("k=v,\"x\"=\x01");
  s->state = APEX_TASK_TIMED_OUT;
  s->ev = calloc(APEX__SPAN_EVENTS, sizeof *s->ev);
  assert_non_null(s->msg);
  assert_non_null(s->ev);
  s->n_ev = 2;
  s->ev[0] = (apex__span_ev_t){.kind = APEX__SEV_RETRY, .attempt = 1, .time_ns = 5,
                               .num = 0.25, .code = APEX_E_TRANSIENT};
  snprintf(s->ev[0].text, sizeof s->ev[0].text, "%s", msg);
  s->ev[1] = (apex__span_ev_t){.kind = APEX__SEV_MILESTONE, .attempt = 1, .time_ns = 6,
                               .num = 66.5};
  snprintf(s->ev[1].text, sizeof s->ev[1].text, "step\n2");
  s->ev_dropped = 3;
  size_t len = 0;
  char *j = apex__otlp_json(s, &len);
  assert_non_null(j);
  json_error_t e;
  json_t *req = json_loads(j, 0, &e);
  if (!req) fail_msg("%s: %s", e.text, j);
  json_t *t = json_array_get(spans_of(req), 0);
  char want[80];
  memcpy(want, msg, (size_t)(p - msg));
  memcpy(want + (p - msg) - 1, "\xef\xbf\xbd\xc3\xa9", 6); /* 0xff -> U+FFFD */
  assert_string_equal(json_string_value(json_object_get(json_object_get(t, "status"), "message")),
                      want);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(t, "status"), "code")), 2);
  assert_string_equal(json_string_value(json_object_get(t, "traceState")), "k=v,\"x\"=\x01");
  assert_int_equal(json_integer_value(json_object_get(t, "droppedEventsCount")), 3);
  assert_string_equal(attr(t, "error.type", "stringValue"), "timeout");
  json_t *ev = json_object_get(t, "events");
  assert_int_equal(json_array_size(ev), 2);
  json_t *r = json_array_get(ev, 0), *m = json_array_get(ev, 1);
  assert_string_equal(json_string_value(json_object_get(r, "name")), "apex.retry");
  assert_string_equal(json_string_value(json_object_get(r, "timeUnixNano")), "5");
  assert_string_equal(attr(r, "exception.message", "stringValue"), want);
  assert_string_equal(attr(r, "error.type", "stringValue"), "transient");
  json_t *ra = json_object_get(r, "attributes");
  assert_true(json_real_value(json_object_get(json_object_get(json_array_get(ra, 1), "value"),
                                              "doubleValue")) == 0.25);
  assert_string_equal(json_string_value(json_object_get(m, "name")), "apex.progress.milestone");
  assert_string_equal(attr(m, "apex.progress.status", "stringValue"), "step\n2");
  json_decref(req);
  free(j);
  apex__span_free(s);
}

/* A pair given back for reuse (apex__span_clear: a dropped group's, or
 * one the exporter wrote) is as calloc made it, every byte of both spans:
 * the tracer makes a span from it writing only the fields a new span sets
 * (src/obs/trace.c, span_root_locked), so a byte left over would be a
 * stale parent, event count or first attempt's id. The clear writes the
 * pair with 16-byte stores on x86-64; every byte is checked, with what the
 * pair owned (messages, events, tracestate) freed (ASan: no leak). */
static void test_a_cleared_pair_is_all_zero(void **st) {
  (void)st;
  for (int owned = 0; owned < 2; owned++) {
    apex__span_t *s = malloc(2 * sizeof *s);
    assert_non_null(s);
    memset(s, 0xa5, 2 * sizeof *s);
    s->msg = owned ? strdup("failed") : NULL;
    s->tracestate = owned ? strdup("k=v") : NULL;
    s->ev = owned ? calloc(APEX__SPAN_EVENTS, sizeof *s->ev) : NULL;
    s->att0 = 1;
    s[1].msg = owned ? strdup("attempt failed") : NULL;
    s[1].ev = owned ? calloc(APEX__SPAN_EVENTS, sizeof *s[1].ev) : NULL;
    s[1].tracestate = NULL; /* an attempt span owns none */
    apex__span_clear(s);
    const unsigned char *b = (const unsigned char *)s;
    for (size_t i = 0; i < 2 * sizeof *s; i++)
      if (b[i]) fail_msg("byte %zu of %zu left %#x", i, 2 * sizeof *s, b[i]);
    free(s);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_numbers_round_trip),
      cmocka_unit_test(test_escapes_round_trip),
      cmocka_unit_test(test_a_cleared_pair_is_all_zero),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
