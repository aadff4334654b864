/* Shared helpers of the `apex batch` tests (test_cli_batch.c,
 * test_cli_batch_limits.c): a temporary directory for the input files,
 * writing them, and reading the JSON Lines a run wrote (events, the
 * summary, the results by line number). Single-threaded. Include after
 * cmocka.h, integration/harness.h and integration/cli_harness.h. */
#ifndef APEX_TEST_BATCH_HARNESS_H
#define APEX_TEST_BATCH_HARNESS_H

#define PLUGINS "--plugin-path", APEX_TEST_PLUGIN_DIR

static char g_dir[256];

static inline int batch_setup(void **st) {
  (void)st;
  snprintf(g_dir, sizeof g_dir, "/tmp/apex_batch_XXXXXX");
  return mkdtemp(g_dir) ? 0 : -1;
}

static inline int batch_teardown(void **st) {
  (void)st;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* Writes text to a file of the test directory. Returns: its path (static
 * buffer, one per name). */
static inline const char *write_file(const char *name, const char *text, size_t len) {
  static char paths[8][320];
  static int next;
  char *path = paths[next++ % 8];
  snprintf(path, 320, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(fwrite(text, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
  return path;
}

static inline const char *write_text(const char *name, const char *text) {
  return write_file(name, text, strlen(text));
}

/* Every stdout line parsed; fails on one that is not a JSON object with an
 * "event". */
static inline json_t *events_of(const proc_t *p) {
  json_t *lines = json_array();
  const char *s = buf_str(&p->out);
  while (*s) {
    const char *nl = strchr(s, '\n');
    assert_non_null(nl);
    json_error_t jerr;
    json_t *j = json_loadb(s, (size_t)(nl - s), 0, &jerr);
    if (!j || !json_is_string(json_object_get(j, "event")))
      fail_msg("not an event line: %.*s", (int)(nl - s), s);
    json_array_append_new(lines, j);
    s = nl + 1;
  }
  return lines;
}

static inline const char *str_of(const json_t *o, const char *key) {
  return json_string_value(json_object_get(o, key));
}

static inline json_int_t int_of(const json_t *o, const char *key) {
  const json_t *v = json_object_get(o, key);
  if (!json_is_integer(v)) fail_msg("no integer '%s'", key);
  return json_integer_value(v);
}

/* The summary: exactly one, and the last line. */
static inline json_t *summary_of(const json_t *events) {
  size_t i, n = 0;
  json_t *j;
  json_array_foreach(events, i, j) n += strcmp(str_of(j, "event"), "summary") == 0;
  assert_int_equal(n, 1);
  json_t *last = json_array_get(events, json_array_size(events) - 1);
  assert_string_equal(str_of(last, "event"), "summary");
  return last;
}

/* Returns: the results indexed by line number (borrowed, in a new array of
 * max_line + 1, null where none); fails on a line with two, or a result
 * without a line number in 1..max_line. */
static inline json_t *results_by_line(const json_t *events, size_t max_line) {
  json_t *by = json_array();
  for (size_t k = 0; k <= max_line; k++) json_array_append_new(by, json_null());
  size_t i;
  json_t *j;
  json_array_foreach(events, i, j) {
    if (strcmp(str_of(j, "event"), "result") != 0) continue;
    json_int_t line = int_of(j, "line");
    if (line < 1 || (size_t)line > max_line) fail_msg("result for line %lld", (long long)line);
    if (!json_is_null(json_array_get(by, (size_t)line)))
      fail_msg("two results for line %lld", (long long)line);
    json_array_set(by, (size_t)line, j);
  }
  return by;
}

static inline void expect_exit(const proc_t *p, int code) {
  if (p->code != code)
    fail_msg("exit %d, want %d; stderr:\n%s\nstdout tail:\n%s", p->code, code, buf_str(&p->err),
             p->out.len > 2000 ? buf_str(&p->out) + p->out.len - 2000 : buf_str(&p->out));
}

#endif
