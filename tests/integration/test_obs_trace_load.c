/* Tracing under load (docs/observability.md, "Export" and "Cost"): span
 * pairs are recycled and finished spans gather per thread before they
 * join the bounded queue (src/obs/trace.c, trace_export.c), so these tests
 * check what that must not change: every sampled span is exported or
 * counted as dropped, never both, never twice; each task span is written
 * with its attempt span, ids intact; a span waiting in a thread's group
 * is exported by the exporter's tick, not only at shutdown; threads past
 * the per-thread slots lose nothing. The queue is made to overflow for
 * sure by writing to a pipe nobody reads until every task has ended. */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "integration/harness.h"

static apex_trace_stats_t tstats(apex_manager_t *m) {
  apex_trace_stats_t s = {.struct_size = sizeof s};
  assert_int_equal(apex_manager_trace_stats(m, &s), APEX_OK);
  return s;
}

/* Waits (generously) until every sampled span is exported or dropped. */
static apex_trace_stats_t settled(apex_manager_t *m, uint64_t want) {
  apex_trace_stats_t s = tstats(m);
  for (int64_t until = now_ms() + 60000;
       s.spans_exported + s.spans_dropped < want && now_ms() < until; nap_ms(5))
    s = tstats(m);
  assert_int_equal(s.spans_started, want);
  assert_int_equal(s.spans_exported + s.spans_dropped, want);
  return s;
}

static apex_manager_t *traced(const char *file, unsigned workers) {
  apex_manager_config_t cfg = base_config(workers);
  cfg.trace_file = file;
  cfg.trace_sampler = APEX_TRACE_ALWAYS;
  return make_test_manager(&cfg);
}

/* Submits n testkit.noop and waits for each to succeed. */
static void run_noops(apex_manager_t *m, size_t n) {
  apex_task_t **ts = calloc(n, sizeof *ts);
  assert_non_null(ts);
  for (size_t i = 0; i < n; i++) ts[i] = submit_json(m, "testkit", "noop", NULL, NULL);
  for (size_t i = 0; i < n; i++) {
    wait_done(ts[i]);
    assert_int_equal(apex_task_state(ts[i]), APEX_TASK_SUCCEEDED);
    apex_task_release(ts[i]);
  }
  free(ts);
}

/* Checks the spans of OTLP/JSON lines text: each task span (ids 1..n_tasks
 * at most once) directly followed by its one attempt span (same trace,
 * the task span as parent, inside its time), every span id distinct.
 * Returns: the number of spans. */
static size_t check_pairs(const char *text, size_t n_tasks) {
  unsigned char *seen = calloc(n_tasks + 1, 1);
  assert_non_null(seen);
  json_t *ids = json_object();
  size_t spans = 0;
  for (const char *line = text; *line;) {
    const char *nl = strchr(line, '\n');
    assert_non_null(nl);
    json_error_t e;
    json_t *req = json_loadb(line, (size_t)(nl - line), 0, &e);
    if (!req) fail_msg("not JSON: %s", e.text);
    json_t *rs = json_array_get(json_object_get(req, "resourceSpans"), 0);
    json_t *arr = json_object_get(json_array_get(json_object_get(rs, "scopeSpans"), 0), "spans");
    assert_true(json_array_size(arr) % 2 == 0);
    for (size_t i = 0; i < json_array_size(arr); i += 2) {
      json_t *t = json_array_get(arr, i), *a = json_array_get(arr, i + 1);
      const char *tn = json_string_value(json_object_get(t, "name"));
      const char *an = json_string_value(json_object_get(a, "name"));
      assert_string_equal(tn, "testkit.noop");
      assert_string_equal(an, "testkit.noop attempt");
      json_t *attrs = json_object_get(t, "attributes");
      const char *idtext =
          json_string_value(json_object_get(json_object_get(json_array_get(attrs, 0), "value"),
                                            "intValue"));
      assert_non_null(idtext);
      unsigned long long id = strtoull(idtext, NULL, 10);
      assert_true(id >= 1 && id <= n_tasks);
      assert_int_equal(seen[id], 0);
      seen[id] = 1;
      assert_string_equal(json_string_value(json_object_get(t, "traceId")),
                          json_string_value(json_object_get(a, "traceId")));
      assert_string_equal(json_string_value(json_object_get(t, "spanId")),
                          json_string_value(json_object_get(a, "parentSpanId")));
      assert_null(json_object_get(t, "parentSpanId"));
      unsigned long long ts0 = strtoull(json_string_value(json_object_get(t, "startTimeUnixNano")), NULL, 10),
                         ts1 = strtoull(json_string_value(json_object_get(t, "endTimeUnixNano")), NULL, 10),
                         as0 = strtoull(json_string_value(json_object_get(a, "startTimeUnixNano")), NULL, 10),
                         as1 = strtoull(json_string_value(json_object_get(a, "endTimeUnixNano")), NULL, 10);
      assert_true(ts0 <= as0 && as0 <= as1 && as1 <= ts1);
      for (int k = 0; k < 2; k++) {
        const char *sid = json_string_value(json_object_get(k ? a : t, "spanId"));
        assert_null(json_object_get(ids, sid));
        json_object_set_new(ids, sid, json_true());
      }
      spans += 2;
    }
    json_decref(req);
    line = nl + 1;
  }
  json_decref(ids);
  free(seen);
  return spans;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t cap = 1 << 16, n = 0;
  char *b = malloc(cap);
  assert_non_null(b);
  size_t k;
  while ((k = fread(b + n, 1, cap - n - 1, f)) > 0) {
    n += k;
    if (cap - n < 2) {
      b = realloc(b, cap *= 2);
      assert_non_null(b);
    }
  }
  b[n] = '\0';
  fclose(f);
  return b;
}

/* ------------------------------------------------ a queue that overflows */

typedef struct drain {
  int fd;
  char *buf;
  size_t n, cap;
} drain_t;

static void *drain_main(void *p) {
  drain_t *d = p;
  for (;;) {
    if (d->cap - d->n < 65536) {
      d->cap = d->cap ? d->cap * 2 : 1 << 20;
      d->buf = realloc(d->buf, d->cap);
      if (!d->buf) return NULL;
    }
    ssize_t k = read(d->fd, d->buf + d->n, d->cap - d->n - 1);
    if (k <= 0) break;
    d->n += (size_t)k;
  }
  d->buf[d->n] = '\0';
  return NULL;
}

/* The exporter writes to a pipe nobody reads while 15,000 tasks run: it
 * blocks on its first batch, the queue (8,192) fills, and spans are dropped, their
 * pairs recycled for the next tasks. Then the pipe is read: what was
 * exported is there, complete, exactly once, and exported plus dropped is
 * every span started. */
static void test_overflow_drops_count_and_recycle(void **st) {
  (void)st;
  enum { N = 15000 };
  int p[2];
  assert_int_equal(pipe2(p, O_CLOEXEC), 0);
  char path[32];
  snprintf(path, sizeof path, "/dev/fd/%d", p[1]);
  apex_manager_t *m = traced(path, 2);
  run_noops(m, N);
  apex_trace_stats_t s = tstats(m);
  assert_int_equal(s.spans_started, 2 * N);
  /* At most 8,192 spans wait in the queue, as many in the exporter's hands
   * (taken before it blocked), 15 a thread in the groups; the pipe holds a
   * hundred or so: of 30,000, thousands are dropped. */
  if (s.spans_dropped < 2 * N - 2 * 8192 - 2000)
    fail_msg("started %llu, exported %llu, dropped %llu: want %d dropped at least",
             (unsigned long long)s.spans_started, (unsigned long long)s.spans_exported,
             (unsigned long long)s.spans_dropped, 2 * N - 2 * 8192 - 2000);
  drain_t d = {.fd = p[0]};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, drain_main, &d), 0);
  s = settled(m, 2 * N);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  close(p[1]);
  pthread_join(th, NULL);
  close(p[0]);
  assert_non_null(d.buf);
  assert_int_equal(check_pairs(d.buf, N), s.spans_exported);
  free(d.buf);
}

/* Back to back with a reader: every span accounted for, pairs intact. */
static void test_every_span_written_once_with_its_attempt(void **st) {
  (void)st;
  enum { N = 3000 };
  char path[] = "/tmp/apex_trace_load_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  apex_manager_t *m = traced(path, 2);
  run_noops(m, N);
  apex_trace_stats_t s = settled(m, 2 * N);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  char *text = slurp(path);
  assert_int_equal(check_pairs(text, N), s.spans_exported);
  free(text);
  unlink(path);
}

/* One task: its two spans wait in its worker's group (16 make a group),
 * and the exporter's tick (200 ms) takes them: they are written with the
 * manager still up. */
static void test_a_lone_span_is_exported_by_the_tick(void **st) {
  (void)st;
  char path[] = "/tmp/apex_trace_load_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  apex_manager_t *m = traced(path, 1);
  run_noops(m, 1);
  apex_trace_stats_t s = settled(m, 2);
  assert_int_equal(s.spans_exported, 2);
  char *text = slurp(path);
  assert_int_equal(check_pairs(text, 1), 2);
  free(text);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  unlink(path);
}

/* More threads ending spans at once than there are thread slots (32): 20
 * managers of 2 workers each, all up together; the workers past the slots
 * make their spans without a free list of their own and queue them one by
 * one. Every manager's spans are all there. */
#define N_MANAGERS 20
#define PER_MANAGER 300
static void test_threads_past_the_slots_lose_nothing(void **st) {
  (void)st;
  char paths[N_MANAGERS][32];
  apex_manager_t *ms[N_MANAGERS];
  for (int i = 0; i < N_MANAGERS; i++) {
    snprintf(paths[i], sizeof paths[i], "/tmp/apex_trace_load_XXXXXX");
    int fd = mkstemp(paths[i]);
    assert_true(fd >= 0);
    close(fd);
    ms[i] = traced(paths[i], 2);
  }
  apex_task_t *ts[N_MANAGERS][PER_MANAGER];
  for (int k = 0; k < PER_MANAGER; k++)
    for (int i = 0; i < N_MANAGERS; i++)
      ts[i][k] = submit_json(ms[i], "testkit", "noop", NULL, NULL);
  for (int i = 0; i < N_MANAGERS; i++)
    for (int k = 0; k < PER_MANAGER; k++) {
      wait_done(ts[i][k]);
      apex_task_release(ts[i][k]);
    }
  for (int i = 0; i < N_MANAGERS; i++) {
    apex_trace_stats_t s = settled(ms[i], 2 * PER_MANAGER);
    assert_int_equal(s.spans_dropped, 0);
    assert_int_equal(apex_manager_destroy(ms[i], -1), APEX_OK);
    char *text = slurp(paths[i]);
    assert_int_equal(check_pairs(text, PER_MANAGER), 2 * PER_MANAGER);
    free(text);
    unlink(paths[i]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_overflow_drops_count_and_recycle),
      cmocka_unit_test(test_every_span_written_once_with_its_attempt),
      cmocka_unit_test(test_a_lone_span_is_exported_by_the_tick),
      cmocka_unit_test(test_threads_past_the_slots_lose_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
