/* apex_ctx_tracestate (include/apex/plugin.h, docs/observability.md
 * "Context in and out"): a plugin reads the W3C tracestate the host passed
 * at submit, as given, beside apex_ctx_traceparent's value; a child task
 * carries its parent's; "" when the task has none; refused with tracing
 * off, with a buffer too small, and on a host older than the call. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "apex/plugin.h"
#include "integration/harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/tracestate_kit.so"
#define TP "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
#define TS "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

static apex_manager_t *manager(int sampler) {
  apex_manager_config_t cfg = base_config(2);
  cfg.trace_sampler = sampler;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  return m;
}

/* Runs tracestate_kit.action with the given context; returns its result
 * (a new reference). */
static json_t *run_with(apex_manager_t *m, const char *action, const char *tp, const char *ts) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.traceparent = tp;
  o.tracestate = ts;
  apex_task_t *t = submit_json(m, "tracestate_kit", action, NULL, &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t); /* a new reference */
  apex_task_release(t);
  return r;
}

static const char *ts_of(json_t *r) { return json_string_value(json_object_get(r, "tracestate")); }
static json_int_t int_of(json_t *r, const char *k) {
  return json_integer_value(json_object_get(r, k));
}

static void test_plugin_reads_the_hosts_tracestate(void **st) {
  (void)st;
  apex_manager_t *m = manager(APEX_TRACE_ALWAYS);
  json_t *r = run_with(m, "echo_ts", TP, TS);
  assert_int_equal(int_of(r, "rc"), APEX_OK);
  assert_string_equal(ts_of(r), TS);
  assert_int_equal(int_of(r, "small_rc"), APEX_E_INVALID); /* 2 bytes: too small */
  const char *tp = json_string_value(json_object_get(r, "traceparent"));
  assert_non_null(tp);
  assert_memory_equal(tp, TP, 36); /* the same trace */
  json_decref(r);

  /* A child task joins its parent's trace with its tracestate. */
  r = run_with(m, "spawner", TP, TS);
  json_t *kid = json_object_get(r, "child");
  assert_int_equal(int_of(kid, "rc"), APEX_OK);
  assert_string_equal(ts_of(kid), TS);
  json_decref(r);

  /* No tracestate given (a traceparent alone, or a new trace): "". */
  r = run_with(m, "echo_ts", TP, NULL);
  assert_int_equal(int_of(r, "rc"), APEX_OK);
  assert_string_equal(ts_of(r), "");
  assert_int_equal(int_of(r, "small_rc"), APEX_OK); /* "" fits in 2 bytes */
  json_decref(r);
  r = run_with(m, "echo_ts", NULL, NULL);
  assert_int_equal(int_of(r, "rc"), APEX_OK);
  assert_string_equal(ts_of(r), "");
  json_decref(r);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

/* Tracing off: no trace context, so no tracestate either. */
static void test_refused_with_tracing_off(void **st) {
  (void)st;
  apex_manager_t *m = manager(APEX_TRACE_OFF);
  json_t *r = run_with(m, "echo_ts", TP, TS);
  assert_int_equal(int_of(r, "rc"), APEX_E_INVALID);
  assert_true(json_is_null(json_object_get(r, "tracestate")));
  json_decref(r);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

/* A host whose api table ends before `tracestate` (an older library): the
 * wrapper refuses without calling past the table. */
static void test_refused_by_an_older_host(void **st) {
  (void)st;
  apex_host_api_t api;
  memset(&api, 0, sizeof api);
  api.struct_size = (uint32_t)offsetof(apex_host_api_t, tracestate);
  apex_ctx_t ctx = {.api = &api};
  char buf[64] = "untouched";
  assert_int_equal(apex_ctx_tracestate(&ctx, buf, sizeof buf), APEX_E_INVALID);
  assert_string_equal(buf, "untouched");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plugin_reads_the_hosts_tracestate),
      cmocka_unit_test(test_refused_with_tracing_off),
      cmocka_unit_test(test_refused_by_an_older_host),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
