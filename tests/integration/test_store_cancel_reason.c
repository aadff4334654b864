/* apex_store_cancel's reason (include/apex/apex.h; src/store/api.c): the
 * reason is stored as text and given back as JSON (apex_store_get's
 * "cancel_reason", the event's note), so bytes that are not UTF-8 are
 * refused with APEX_E_INVALID and nothing is requested; they used to be
 * stored and then silently missing from apex_store_get. A UTF-8 reason is
 * kept and read back as given. Tests plugin: tests/plugins/durable_kit.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "apex/apex.h"

#define KIT APEX_TEST_PLUGIN_DIR "/durable_kit.so"

static char g_dir[256], g_uri[320];

static int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "%s/cancelreason-XXXXXX", APEX_TEST_BIN_DIR);
  assert_non_null(mkdtemp(g_dir));
  snprintf(g_uri, sizeof g_uri, "sqlite:%s/t.db", g_dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* Journals n tasks of durable_kit.noop to start in an hour's time; ids[i]
 * their ids. */
static void journal(uint64_t *ids, size_t n) {
  apex_manager_config_t c;
  apex_manager_config_init(&c);
  c.workers = 2;
  c.store = g_uri;
  c.shutdown_grace_ms = 50;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&c, &m), APEX_OK);
  apex_error_t *err = NULL;
  if (apex_manager_load(m, KIT, &err) != APEX_OK) fail_msg("load: %s", apex_error_message(err));
  for (size_t i = 0; i < n; i++) {
    apex_submit_opts_t o;
    apex_submit_opts_init(&o);
    o.durable = 1;
    o.timeout_s = 7200;
    o.run_after_s = 3600;
    apex_task_t *t = NULL;
    assert_int_equal(apex_manager_submit(m, "durable_kit", "noop", NULL, &o, &t, NULL), APEX_OK);
    ids[i] = apex_task_id(t);
    apex_task_release(t);
  }
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_a_reason_that_is_not_utf8_is_refused(void **state) {
  (void)state;
  uint64_t ids[2];
  journal(ids, 2);
  apex_store_t *s = NULL;
  assert_int_equal(apex_store_open(g_uri, &s, NULL), APEX_OK);
  const char *bad[] = {"\xff\xfe", "half \xc3", "\xed\xa0\x80 a surrogate"};
  for (size_t i = 0; i < 3; i++) {
    apex_error_t *err = NULL;
    assert_int_equal(apex_store_cancel(s, ids[0], bad[i], &err), APEX_E_INVALID);
    assert_non_null(strstr(apex_error_message(err), "UTF-8"));
    apex_error_unref(err);
  }
  /* Nothing was requested: the task is as it was, and a good reason still
   * goes through. */
  json_t *row = NULL;
  assert_int_equal(apex_store_get(s, ids[0], &row, NULL), APEX_OK);
  assert_null(json_object_get(row, "cancel_requested"));
  json_decref(row);
  const char *good = "operator: caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
  assert_int_equal(apex_store_cancel(s, ids[0], good, NULL), APEX_OK);
  assert_int_equal(apex_store_cancel(s, ids[1], NULL, NULL), APEX_OK);
  assert_int_equal(apex_store_get(s, ids[0], &row, NULL), APEX_OK);
  assert_true(json_is_true(json_object_get(row, "cancel_requested")));
  assert_string_equal(json_string_value(json_object_get(row, "cancel_reason")), good);
  json_decref(row);
  assert_int_equal(apex_store_get(s, ids[1], &row, NULL), APEX_OK);
  assert_string_equal(json_string_value(json_object_get(row, "cancel_reason")), "user");
  json_decref(row);
  apex_store_close(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_a_reason_that_is_not_utf8_is_refused, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
