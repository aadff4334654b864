/* The public structs that grow, seen by a host built against today's
 * headers (docs/abi.md): apex_submit_opts_t and apex_manager_config_t at
 * every struct_size a header can produce (0.1.0's, today's, a newer one's
 * with and without fields set), apex_stats_t at an older and a newer size,
 * the 0.1.0 init and stats symbols, and the normalized descriptors of
 * plugins built with another action stride. Hosts and plugins compiled
 * against the 0.1.0 headers themselves are in tests/abi/. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

/* The sizes 0.1.0's header gave these structs, from their last field then;
 * tests/abi/test_abi_layout.c checks them against the frozen header. */
#define OPTS_V1 (offsetof(apex_submit_opts_t, event_user) + sizeof(void *))
#define CONFIG_V1_END (offsetof(apex_manager_config_t, log_level) + sizeof(int))
#define STATS_FIRST (offsetof(apex_stats_t, late_reports) + sizeof(uint64_t))

static int setup(void **st) {
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = NULL;
  if (apex_manager_new(&cfg, &m) != APEX_OK) return -1;
  if (apex_manager_load(m, APEX_TEST_PLUGIN_DIR "/testkit.so", NULL) != APEX_OK) return -1;
  *st = m;
  return 0;
}

static int teardown(void **st) { return apex_manager_destroy(*st, 10000) == APEX_OK ? 0 : -1; }

/* A host's opts followed by what a newer header appended. */
typedef struct newer_opts {
  apex_submit_opts_t o;
  uint64_t appended[2];
} newer_opts_t;

/* Submits count_attempts (which fails until attempt 3) with opts; a retry
 * override of one attempt that the library read shows as a failure after
 * one attempt, one it did not read as success on attempt 3. */
static int run_with(apex_manager_t *m, const apex_submit_opts_t *o, apex_error_t **err,
                    uint32_t *attempts) {
  apex_task_t *t = NULL;
  int rc = apex_manager_submit(m, "testkit", "count_attempts", NULL, o, &t, err);
  if (rc != APEX_OK) return rc;
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  *attempts = apex_task_attempts(t);
  apex_task_state_t s = apex_task_state(t);
  apex_task_release(t);
  return s == APEX_TASK_SUCCEEDED ? APEX_OK : APEX_E_EXECUTION;
}

static const apex_retry_policy_t once = {.max_attempts = 1};

static void test_opts_at_0_1_0_size_read_whole(void **st) {
  apex_manager_t *m = *st;
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.struct_size = OPTS_V1;
  o.retry = &once;
  uint32_t n = 0;
  assert_int_equal(run_with(m, &o, NULL, &n), APEX_E_EXECUTION);
  assert_int_equal(n, 1);
}

static void test_opts_struct_size_zero_reads_0_1_0_layout(void **st) {
  apex_manager_t *m = *st;
  apex_submit_opts_t o = {.retry = &once};
  uint32_t n = 0;
  assert_int_equal(run_with(m, &o, NULL, &n), APEX_E_EXECUTION);
  assert_int_equal(n, 1);
}

static void test_opts_below_first_layout_refused(void **st) {
  apex_manager_t *m = *st;
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.struct_size = OPTS_V1 - 8; /* would end before event_user */
  apex_error_t *err = NULL;
  uint32_t n = 0;
  assert_int_equal(run_with(m, &o, &err, &n), APEX_E_INVALID);
  char want[256];
  snprintf(want, sizeof want,
           "submit opts: struct_size %zu is below %zu, the first (ABI 1) layout: fill it with "
           "apex_submit_opts_init",
           OPTS_V1 - 8, OPTS_V1);
  assert_string_equal(apex_error_message(err), want);
  apex_error_unref(err);
}

static void test_opts_garbage_size_refused(void **st) {
  apex_manager_t *m = *st;
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.struct_size = 5000;
  apex_error_t *err = NULL;
  uint32_t n = 0;
  assert_int_equal(run_with(m, &o, &err, &n), APEX_E_INVALID);
  assert_string_equal(apex_error_message(err),
                      "submit opts: struct_size 5000 is above 4096: fill it with "
                      "apex_submit_opts_init");
  apex_error_unref(err);
}

static void test_opts_from_newer_header_with_its_fields_zero_accepted(void **st) {
  apex_manager_t *m = *st;
  newer_opts_t b;
  memset(&b, 0x5A, sizeof b);
  /* The init a newer header's macro makes: its size, zeros throughout. */
  assert_int_equal(apex_submit_opts_init_v2(&b.o, sizeof b), APEX_OK);
  assert_int_equal(b.o.struct_size, sizeof b);
  assert_int_equal(b.appended[0], 0);
  assert_int_equal(b.appended[1], 0);
  b.o.retry = &once;
  uint32_t n = 0;
  assert_int_equal(run_with(m, &b.o, NULL, &n), APEX_E_EXECUTION);
  assert_int_equal(n, 1);
}

static void test_opts_from_newer_header_with_a_field_set_refused(void **st) {
  apex_manager_t *m = *st;
  newer_opts_t b;
  assert_int_equal(apex_submit_opts_init_v2(&b.o, sizeof b), APEX_OK);
  b.appended[1] = 1; /* a field this library does not have */
  apex_error_t *err = NULL;
  uint32_t n = 0;
  assert_int_equal(run_with(m, &b.o, &err, &n), APEX_E_INVALID);
  size_t at = offsetof(newer_opts_t, appended[1]);
  char want[256];
  snprintf(want, sizeof want,
           "submit opts: struct_size %zu sets byte %zu, past the %zu bytes this libapex %s "
           "knows: a field of a newer header needs a newer library",
           sizeof b, at, sizeof(apex_submit_opts_t), APEX_VERSION_STRING);
  assert_string_equal(apex_error_message(err), want);
  apex_error_unref(err);
}

static void test_opts_init_v2_refuses_sizes_no_header_makes(void **st) {
  (void)st;
  apex_submit_opts_t o;
  memset(&o, 0x5A, sizeof o);
  assert_int_equal(apex_submit_opts_init_v2(&o, OPTS_V1 - 1), APEX_E_INVALID);
  assert_int_equal(apex_submit_opts_init_v2(NULL, sizeof o), APEX_E_INVALID);
  assert_int_equal(o.struct_size, 0x5A5A5A5Au); /* untouched */
}

static void test_0_1_0_init_symbols_write_only_0_1_0_layout(void **st) {
  (void)st;
  struct {
    apex_submit_opts_t o;
    unsigned char after[64];
  } so;
  memset(&so, 0x5A, sizeof so);
  (apex_submit_opts_init)(&so.o); /* the symbol, not the macro */
  assert_int_equal(so.o.struct_size, OPTS_V1);
  assert_null(so.o.retry);
  for (size_t i = OPTS_V1; i < sizeof so; i++) assert_int_equal(((unsigned char *)&so)[i], 0x5A);
  struct {
    apex_manager_config_t c;
    unsigned char after[64];
  } sc;
  memset(&sc, 0x5A, sizeof sc);
  (apex_manager_config_init)(&sc.c);
  size_t v1 = sc.c.struct_size;
  assert_true(v1 >= CONFIG_V1_END && v1 < CONFIG_V1_END + sizeof(void *));
  assert_int_equal(sc.c.max_stuck_workers, 4);
  assert_int_equal(sc.c.log_level, -1);
  for (size_t i = v1; i < sizeof sc; i++) assert_int_equal(((unsigned char *)&sc)[i], 0x5A);
}

/* ------------------------------------------------------------- config */

static char last_log[512];

static void keep_log(int level, const char *msg, void *user) {
  (void)level;
  (void)user;
  snprintf(last_log, sizeof last_log, "%s", msg);
}

/* apex_manager_new on a config it refuses: the reason goes to the config's
 * log at APEX_LOG's level (CTest sets it off), so let errors through. */
static int new_refused(const apex_manager_config_t *cfg) {
  last_log[0] = '\0';
  const char *was = getenv("APEX_LOG");
  char saved[32];
  snprintf(saved, sizeof saved, "%s", was ? was : "");
  setenv("APEX_LOG", "error", 1);
  apex_manager_t *m = (apex_manager_t *)0x1;
  int rc = apex_manager_new(cfg, &m);
  if (was)
    setenv("APEX_LOG", saved, 1);
  else
    unsetenv("APEX_LOG");
  assert_null(m);
  return rc;
}

typedef struct newer_config {
  apex_manager_config_t c;
  uint64_t appended;
} newer_config_t;

static void test_config_at_0_1_0_size_accepted(void **st) {
  (void)st;
  apex_manager_config_t cfg;
  (apex_manager_config_init)(&cfg);
  cfg.workers = 3;
  cfg.log = quiet_log;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s), APEX_OK);
  assert_int_equal(s.workers, 3);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
}

static void test_config_from_newer_header_zero_tail_accepted_set_field_refused(void **st) {
  (void)st;
  newer_config_t b;
  assert_int_equal(apex_manager_config_init_v2(&b.c, sizeof b), APEX_OK);
  assert_int_equal(b.c.struct_size, sizeof b);
  assert_int_equal(b.c.max_stuck_workers, 4);
  assert_int_equal(b.appended, 0);
  b.c.workers = 2;
  b.c.log = keep_log;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&b.c, &m), APEX_OK);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
  b.appended = 7;
  assert_int_equal(new_refused(&b.c), APEX_E_INVALID);
  char want[512];
  snprintf(want, sizeof want,
           "apex_manager_new: config: struct_size %zu sets byte %zu, past the %zu bytes this "
           "libapex %s knows: a field of a newer header needs a newer library",
           sizeof b, offsetof(newer_config_t, appended), sizeof(apex_manager_config_t),
           APEX_VERSION_STRING);
  assert_string_equal(last_log, want);
}

static void test_config_below_first_layout_refused(void **st) {
  (void)st;
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.log = keep_log;
  cfg.struct_size = CONFIG_V1_END - 4;
  assert_int_equal(new_refused(&cfg), APEX_E_INVALID);
  char want[256];
  snprintf(want, sizeof want,
           "apex_manager_new: config: struct_size %zu is below %zu, the first (ABI 1) layout: "
           "fill it with apex_manager_config_init",
           CONFIG_V1_END - 4, CONFIG_V1_END);
  assert_string_equal(last_log, want);
  assert_int_equal(apex_manager_config_init_v2(&cfg, CONFIG_V1_END - 1), APEX_E_INVALID);
}

/* -------------------------------------------------------------- stats */

typedef struct newer_stats {
  apex_stats_t s;
  uint64_t appended;
} newer_stats_t;

static void test_stats_at_every_size_and_the_0_1_0_call(void **st) {
  (void)st;
  apex_manager_t *m = NULL;
  assert_int_equal(setup((void **)&m), 0);
  uint32_t n = 0;
  assert_int_equal(run_with(m, NULL, NULL, &n), APEX_OK); /* 3 attempts */
  assert_int_equal(n, 3);

  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s), APEX_OK);
  assert_int_equal(s.struct_size, sizeof s);
  assert_int_equal(s.submitted, 1);
  assert_int_equal(s.succeeded, 1);
  assert_int_equal(s.attempts, 3);
  assert_int_equal(s.retries, 2);
  assert_int_equal(s.workers, 2);
  assert_true(APEX_HAS_FIELD(apex_stats_t, &s, late_reports));

  /* A newer caller: the library fills what it has, says how much, and
   * leaves the newer field as the caller set it. */
  newer_stats_t b;
  memset(&b, 0, sizeof b);
  b.s.struct_size = sizeof b;
  b.appended = 0x77;
  assert_int_equal(apex_manager_stats_v2(m, &b.s), APEX_OK);
  assert_int_equal(b.s.struct_size, sizeof(apex_stats_t));
  assert_int_equal(b.s.attempts, 3);
  assert_int_equal(b.appended, 0x77);

  /* Too small to be any layout: nothing written. */
  apex_stats_t z;
  memset(&z, 0x5A, sizeof z);
  z.struct_size = STATS_FIRST - 8;
  assert_int_equal(apex_manager_stats_v2(m, &z), APEX_E_INVALID);
  assert_int_equal(z.struct_size, STATS_FIRST - 8);
  assert_int_equal(z.submitted, 0x5A5A5A5A5A5A5A5Aull);
  assert_int_equal(apex_manager_stats_v2(m, NULL), APEX_E_INVALID);
  assert_int_equal(apex_manager_stats_v2(NULL, &s), APEX_E_INVALID);

  /* The 0.1.0 call, deprecated but kept: the same counters. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  apex_manager_stats_t old;
  memset(&old, 0x5A, sizeof old);
  assert_int_equal(apex_manager_stats(m, &old), APEX_OK);
#pragma GCC diagnostic pop
  assert_int_equal(old.submitted, 1);
  assert_int_equal(old.succeeded, 1);
  assert_int_equal(old.attempts, 3);
  assert_int_equal(old.retries, 2);
  assert_int_equal(old.workers, 2);
  assert_int_equal(old.late_reports, 0);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* ---------------------------------------------------------- descriptors */

static void test_normalized_descriptors_step_by_action_size(void **st) {
  apex_manager_t *m = *st;
  setenv("APEX_TEST_ABI_STRIDE", "newer_actions", 1);
  apex_error_t *err = NULL;
  int rc = apex_manager_load(m, APEX_TEST_PLUGIN_DIR "/abi_stride.so", &err);
  unsetenv("APEX_TEST_ABI_STRIDE");
  if (rc != APEX_OK) fail_msg("load: %s", apex_error_message(err));
  load_ok(m, APEX_TEST_PLUGIN_DIR "/old_abi_small.so");
  const char *names[] = {"abi_stride", "old_abi_small"};
  for (size_t k = 0; k < 2; k++) {
    const apex_plugin_desc_t *d = apex_manager_plugin(m, names[k]);
    assert_non_null(d);
    assert_int_equal(d->struct_size, sizeof(apex_plugin_desc_t));
    assert_true(APEX_HAS_FIELD(apex_plugin_desc_t, d, action_size));
    assert_int_equal(d->action_size, sizeof(apex_action_desc_t));
    assert_int_equal(d->n_actions, 2);
    assert_string_equal(apex_plugin_desc_action(d, 0)->name, "run");
    assert_string_equal(apex_plugin_desc_action(d, 1)->name, "second");
    assert_int_equal(apex_plugin_desc_action(d, 1)->kind, APEX_ACTION_DEFERRED);
    assert_null(apex_plugin_desc_action(d, 2));
  }
  assert_null(apex_plugin_desc_action(NULL, 0));
  /* A descriptor in 0.1.0's layout (a 0.1.0 library's, or one written
   * without APEX_PLUGIN_DESC_INIT: action_size 0) steps at 0.1.0's stride. */
  static const apex_action_desc_t two[] = {{.name = "a"}, {.name = "b"}};
  apex_plugin_desc_t old = {.struct_size = sizeof old, .actions = two, .n_actions = 2};
  assert_string_equal(apex_plugin_desc_action(&old, 1)->name, "b");
  old.struct_size = (uint32_t)offsetof(apex_plugin_desc_t, action_size);
  old.action_size = 4; /* past struct_size: not read */
  assert_string_equal(apex_plugin_desc_action(&old, 1)->name, "b");
  /* A plugin read at a foreign stride runs like any other. */
  json_t *r = NULL;
  assert_int_equal(apex_manager_execute(m, "abi_stride", "run", NULL, NULL, &r, NULL), APEX_OK);
  json_decref(r);
  assert_int_equal(apex_manager_execute(m, "old_abi_small", "run", NULL, NULL, &r, NULL), APEX_OK);
  json_decref(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_opts_at_0_1_0_size_read_whole),
      cmocka_unit_test(test_opts_struct_size_zero_reads_0_1_0_layout),
      cmocka_unit_test(test_opts_below_first_layout_refused),
      cmocka_unit_test(test_opts_garbage_size_refused),
      cmocka_unit_test(test_opts_from_newer_header_with_its_fields_zero_accepted),
      cmocka_unit_test(test_opts_from_newer_header_with_a_field_set_refused),
      cmocka_unit_test(test_opts_init_v2_refuses_sizes_no_header_makes),
      cmocka_unit_test(test_0_1_0_init_symbols_write_only_0_1_0_layout),
      cmocka_unit_test(test_config_at_0_1_0_size_accepted),
      cmocka_unit_test(test_config_from_newer_header_zero_tail_accepted_set_field_refused),
      cmocka_unit_test(test_config_below_first_layout_refused),
      cmocka_unit_test(test_stats_at_every_size_and_the_0_1_0_call),
      cmocka_unit_test(test_normalized_descriptors_step_by_action_size),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
