/* `apex batch FILE --trace OUT`: every line's task is traced and its spans
 * appended to OUT as OTLP/JSON lines, as `apex run --trace` does for one
 * task (docs/observability.md, "Traces"): one task span per line that ran,
 * each with its attempt spans (two for a line that retried), in a trace of
 * its own; a file that cannot be opened is refused at start; an empty
 * name is a usage error. */
#include <setjmp.h>
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

/* Every span of an OTLP/JSON lines file (an array, a new reference). */
static json_t *spans_in(const char *path) {
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  json_t *all = json_array();
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0) {
    json_error_t e;
    json_t *req = json_loads(line, 0, &e);
    if (!req) fail_msg("not JSON: %s: %s", e.text, line);
    json_t *rs = json_array_get(json_object_get(req, "resourceSpans"), 0);
    json_t *sp = json_object_get(json_array_get(json_object_get(rs, "scopeSpans"), 0), "spans");
    assert_true(json_is_array(sp));
    json_array_extend(all, sp);
    json_decref(req);
  }
  free(line);
  fclose(f);
  return all;
}

static const char *s_of(json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "";
}

/* Three lines: two succeed, one fails (exit 1). Three task spans, each in
 * its own trace, the failed one with status ERROR, each with its attempt
 * span under it. */
static void test_batch_trace_writes_every_lines_spans(void **st) {
  (void)st;
  const char *in = write_text("t.jsonl", "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":1}}\n"
                                         "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":2,\"fail\":true}}\n"
                                         "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":3}}\n");
  char out[320];
  snprintf(out, sizeof out, "%s/spans.jsonl", g_dir);
  proc_t p;
  run(&p, "batch", in, PLUGINS, "--json", "--trace", out, NULL);
  expect_exit(&p, 1);
  proc_free(&p);
  json_t *spans = spans_in(out);
  size_t tasks = 0, attempts = 0, errors = 0;
  json_t *task_of = json_object(); /* span id -> trace id of the task spans */
  for (size_t i = 0; i < json_array_size(spans); i++) {
    json_t *s = json_array_get(spans, i);
    if (!strstr(s_of(s, "name"), " attempt")) {
      tasks++;
      assert_null(json_object_get(s, "parentSpanId"));
      json_int_t code = json_integer_value(json_object_get(json_object_get(s, "status"), "code"));
      assert_true(code == 1 || code == 2);
      errors += code == 2;
      json_object_set_new(task_of, s_of(s, "spanId"), json_string(s_of(s, "traceId")));
    }
  }
  assert_int_equal(tasks, 3);
  assert_int_equal(errors, 1);
  json_t *traces = json_object();
  for (size_t i = 0; i < json_array_size(spans); i++) {
    json_t *s = json_array_get(spans, i);
    if (strstr(s_of(s, "name"), " attempt")) {
      attempts++;
      json_t *tr = json_object_get(task_of, s_of(s, "parentSpanId"));
      assert_non_null(tr);
      assert_string_equal(json_string_value(tr), s_of(s, "traceId"));
    } else {
      json_object_set_new(traces, s_of(s, "traceId"), json_true());
    }
  }
  assert_int_equal(attempts, 3);
  assert_int_equal(json_object_size(traces), 3); /* a trace per line */
  json_decref(traces);
  json_decref(task_of);
  json_decref(spans);
}

/* A file that cannot be opened: the batch does not start (exit 1, and
 * stderr says so); an empty name is a usage error (2). */
static void test_batch_trace_bad_file_refused(void **st) {
  (void)st;
  const char *in = write_text("one.jsonl", "{\"action\":\"batch_kit.hold\",\"params\":{\"line\":1}}\n");
  char out[320];
  snprintf(out, sizeof out, "%s/no/such/dir/spans.jsonl", g_dir);
  proc_t p;
  run(&p, "batch", in, PLUGINS, "--trace", out, NULL);
  assert_int_equal(p.code, 1);
  assert_contains(buf_str(&p.err), "cannot start the runtime");
  proc_free(&p);
  run(&p, "batch", in, PLUGINS, "--trace", "", NULL);
  expect_exit(&p, 2);
  assert_contains(buf_str(&p.err), "--trace");
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_batch_trace_writes_every_lines_spans),
      cmocka_unit_test(test_batch_trace_bad_file_refused),
  };
  return cmocka_run_group_tests(tests, batch_setup, batch_teardown);
}
