/* Helpers of the scheduler's tests (test_sched_*.c): a manager with the
 * three sched_kit plugins loaded, and submits of their actions with the
 * probe (tests/plugins/sched_probe.h) the handlers count in. Include after
 * harness.h. */
#ifndef APEX_TEST_SCHED_HARNESS_H
#define APEX_TEST_SCHED_HARNESS_H

#include <stdint.h>
#include <stdlib.h>

#include "plugins/sched_probe.h"

/* Probe slots the tests use. */
enum { SL_GLOBAL = 0, SL_A = 1, SL_B = 2, SL_C = 3, SL_BX = 4, SL_KEY = 5 };

static inline apex_manager_t *sched_manager(apex_manager_config_t *cfg) {
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/sched_a.so");
  load_ok(m, APEX_TEST_PLUGIN_DIR "/sched_b.so");
  load_ok(m, APEX_TEST_PLUGIN_DIR "/sched_c.so");
  return m;
}

static inline sk_probe_t *probe_new(void) {
  sk_probe_t *p = calloc(1, sizeof *p);
  assert_non_null(p);
  return p;
}

/* Submits plugin.action counting in slots s0..s3 (-1: none), working us
 * microseconds; tag >= 0 records its start in the probe with that tag.
 * opts may be NULL. Returns the task, or NULL with *rc set when rc is
 * given (else asserts success). */
static inline apex_task_t *sk_submit_rc(apex_manager_t *m, sk_probe_t *p, const char *plugin,
                                        const char *action, int s0, int s1, int s2, int s3,
                                        long us, int tag, const apex_submit_opts_t *opts,
                                        int *rc_out, apex_error_t **err) {
  json_t *params = json_pack("{s:I, s:[iiii], s:I, s:i, s:i}", "probe",
                             (json_int_t)(uintptr_t)p, "slots", s0, s1, s2, s3, "us",
                             (json_int_t)us, "seq", tag >= 0, "tag", tag);
  assert_non_null(params);
  apex_task_t *t = NULL;
  int rc = apex_manager_submit(m, plugin, action, params, opts, &t, err);
  json_decref(params);
  if (rc_out) {
    *rc_out = rc;
    return t;
  }
  if (rc != APEX_OK) print_error("submit %s.%s: %s\n", plugin, action, apex_strerror(rc));
  assert_int_equal(rc, APEX_OK);
  return t;
}

static inline apex_task_t *sk_submit(apex_manager_t *m, sk_probe_t *p, const char *plugin,
                                     const char *action, int s0, int s1, int s2, int s3, long us,
                                     int tag, const apex_submit_opts_t *opts) {
  return sk_submit_rc(m, p, plugin, action, s0, s1, s2, s3, us, tag, opts, NULL, NULL);
}

/* A scope's figures, asserting the call succeeds. */
static inline apex_scope_stats_t scope_of(apex_manager_t *m, apex_scope_t scope,
                                          const char *name) {
  apex_scope_stats_t s = APEX_SCOPE_STATS_INIT;
  assert_int_equal(apex_manager_scope_stats(m, scope, name, &s), APEX_OK);
  return s;
}

/* Asserts a scheduling call succeeded. */
#define SCHED_OK(call)                                                          \
  do {                                                                          \
    apex_error_t *e_ = NULL;                                                    \
    apex_error_t **err = &e_;                                                   \
    int rc_ = (call);                                                           \
    if (rc_ != APEX_OK) print_error("%s: %s\n", #call, apex_error_message(e_)); \
    apex_error_unref(e_);                                                       \
    assert_int_equal(rc_, APEX_OK);                                             \
  } while (0)

#endif
