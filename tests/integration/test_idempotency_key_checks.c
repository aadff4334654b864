/* What apex_manager_submit does with a bad idempotency key (include/apex/apex.h,
 * apex_submit_opts_t.idempotency_key; docs/store.md): a key that is empty,
 * longer than 255 bytes or not UTF-8 is refused with APEX_E_INVALID naming
 * the field, before anything is journaled; a good key is kept and given back
 * by apex_store_get. An invalid UTF-8 key used to be accepted and stored, and
 * then silently missing from apex_store_get's JSON (and `apex show`), so the
 * task could not be matched to the key it was submitted under.
 * Tests plugin: tests/plugins/durable_kit.c. */
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
  snprintf(g_dir, sizeof g_dir, "%s/idemkey-XXXXXX", APEX_TEST_BIN_DIR);
  assert_non_null(mkdtemp(g_dir));
  snprintf(g_uri, sizeof g_uri, "sqlite:%s/t.db", g_dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) return -1;
  return 0;
}

static apex_manager_t *manager(void) {
  apex_manager_config_t c;
  apex_manager_config_init(&c);
  c.workers = 2;
  c.store = g_uri;
  c.shutdown_grace_ms = 50;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&c, &m), APEX_OK);
  apex_error_t *err = NULL;
  if (apex_manager_load(m, KIT, &err) != APEX_OK) fail_msg("load: %s", apex_error_message(err));
  return m;
}

/* Submits durable_kit.noop under key; returns the status, *id the task's. */
static int submit_key(apex_manager_t *m, const char *key, uint64_t *id, char *msg, size_t len) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.idempotency_key = key;
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(m, "durable_kit", "noop", NULL, &o, &t, &err);
  snprintf(msg, len, "%s", err ? apex_error_message(err) : "");
  *id = t ? apex_task_id(t) : 0;
  if (t) assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  apex_task_release(t);
  apex_error_unref(err);
  return rc;
}

static void test_bad_keys_are_refused_naming_the_field(void **state) {
  (void)state;
  apex_manager_t *m = manager();
  char big[10 * 1024 + 1];
  memset(big, 'k', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  char k256[257];
  memset(k256, 'k', 256);
  k256[256] = '\0';
  const char *bad[] = {"", big, k256, "\xff\xfe not utf-8", "caf\xc3", "\xc0\xaf overlong"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char msg[512];
    uint64_t id = 1;
    assert_int_equal(submit_key(m, bad[i], &id, msg, sizeof msg), APEX_E_INVALID);
    assert_int_equal(id, 0);
    if (!strstr(msg, "idempotency_key") || !strstr(msg, "UTF-8"))
      fail_msg("key %zu: message '%s' does not name the field and what it wants", i, msg);
  }
  /* Nothing was journaled for them. */
  json_t *page = NULL;
  assert_int_equal(apex_store_list(apex_manager_store(m), NULL, &page, NULL), APEX_OK);
  assert_int_equal(json_array_size(json_object_get(page, "tasks")), 0);
  json_decref(page);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_good_keys_are_kept_and_read_back(void **state) {
  (void)state;
  apex_manager_t *m = manager();
  char k255[256];
  memset(k255, 'k', 255);
  k255[255] = '\0';
  const char *good[] = {"a", k255, "caf\xc3\xa9-\xe2\x82\xac-\xf0\x9f\x98\x80"};
  uint64_t ids[3];
  for (size_t i = 0; i < 3; i++) {
    char msg[512];
    assert_int_equal(submit_key(m, good[i], &ids[i], msg, sizeof msg), APEX_OK);
    assert_true(ids[i] != 0);
  }
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  apex_store_t *s = NULL;
  assert_int_equal(apex_store_open(g_uri, &s, NULL), APEX_OK);
  for (size_t i = 0; i < 3; i++) {
    json_t *row = NULL;
    assert_int_equal(apex_store_get(s, ids[i], &row, NULL), APEX_OK);
    assert_string_equal(json_string_value(json_object_get(row, "idempotency_key")), good[i]);
    json_decref(row);
  }
  apex_store_close(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_bad_keys_are_refused_naming_the_field, setup, teardown),
      cmocka_unit_test_setup_teardown(test_good_keys_are_kept_and_read_back, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
