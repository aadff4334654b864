/* A plugin's shutdown hook runs at destroy whether or not the plugin has an
 * init hook (include/apex/plugin.h, apex_plugin_desc_t.shutdown), so a
 * plugin that starts its threads lazily can join them before the host
 * dlcloses it.
 *
 * Plugin: lazy_threads (tests/plugins/lazy_threads.c): no init, a deferred
 * action whose first call starts the plugin's thread; its shutdown joins the
 * thread and appends "joined N" to the file named by LAZY_THREADS_MARK,
 * which these tests read after apex_manager_destroy returned.
 *
 * Threads: cmocka's thread is the host; the plugin thread completes the
 * tasks. No sleeps: every wait is apex_task_wait with a generous bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"

static char g_mark[64];

/* Empties the mark file, so each test reads only its own shutdown's line. */
static void mark_reset(void) {
  FILE *f = fopen(g_mark, "w");
  assert_non_null(f);
  fclose(f);
}

/* Returns: the mark file's contents (static buffer), "" when empty. */
static const char *mark_read(void) {
  static char buf[256];
  FILE *f = fopen(g_mark, "r");
  assert_non_null(f);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

static apex_manager_t *make_lazy(void) {
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/lazy_threads.so");
  return m;
}

/* The lazily started thread completed every task and is joined by
 * shutdown before destroy returns (and before dlclose). */
static void test_shutdown_joins_lazy_thread_of_plugin_without_init(void **st) {
  (void)st;
  mark_reset();
  apex_manager_t *m = make_lazy();
  enum { N = 20 };
  apex_task_t *t[N];
  for (int i = 0; i < N; i++) t[i] = submit_json(m, "lazy_threads", "defer", NULL, NULL);
  for (int i = 0; i < N; i++) {
    assert_int_equal(apex_task_wait(t[i], 10000), APEX_OK);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    json_t *r = apex_task_result(t[i]);
    assert_string_equal(json_string_value(json_object_get(r, "by")), "plugin_thread");
    json_decref(r);
    apex_task_release(t[i]);
  }
  assert_string_equal(mark_read(), ""); /* not before destroy */
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  assert_string_equal(mark_read(), "joined 20\n");
}

/* A plugin without init whose thread never started still gets its
 * shutdown, exactly once. */
static void test_shutdown_runs_once_for_plugin_without_init_never_used(void **st) {
  (void)st;
  mark_reset();
  apex_manager_t *m = make_lazy();
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  assert_string_equal(mark_read(), "joined 0\n");
}

/* Loading the same file again is refused as a duplicate; that copy ran no
 * handler and has no init, so it gets no shutdown: a shutdown there would
 * stop the registered copy's thread (a second dlopen of one file shares
 * its globals) and leave its tasks hanging. */
static void test_duplicate_copy_without_init_gets_no_shutdown(void **st) {
  (void)st;
  mark_reset();
  apex_manager_t *m = make_lazy();
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_load(m, APEX_TEST_PLUGIN_DIR "/lazy_threads.so", &err),
                   APEX_E_PLUGIN_LOAD);
  assert_non_null(strstr(apex_error_message(err), "duplicate plugin"));
  apex_error_unref(err);
  assert_string_equal(mark_read(), "");
  enum { N = 5 };
  for (int i = 0; i < N; i++) {
    apex_task_t *t = submit_json(m, "lazy_threads", "defer", NULL, NULL);
    assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
    assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
    apex_task_release(t);
  }
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  assert_string_equal(mark_read(), "joined 5\n");
}

int main(void) {
  /* Set before any manager (and so any thread) exists: setenv is not
   * safe against concurrent getenv. */
  snprintf(g_mark, sizeof g_mark, "/tmp/apex_lazy_mark_%ld", (long)getpid());
  if (setenv("LAZY_THREADS_MARK", g_mark, 1) != 0) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shutdown_joins_lazy_thread_of_plugin_without_init),
      cmocka_unit_test(test_shutdown_runs_once_for_plugin_without_init_never_used),
      cmocka_unit_test(test_duplicate_copy_without_init_gets_no_shutdown),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  unlink(g_mark);
  return rc;
}
