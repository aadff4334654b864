/* A host as it was written against Apex 0.1.0: compiled with the frozen
 * headers in tests/abi/v1 and linked against today's libapex, it must keep
 * working unchanged (docs/abi.md). It runs the plugin v1_plugin.c, built
 * the same way, so both directions of the old ABI meet the new library:
 * the 0.1.0 init calls, apex_submit_opts_t and apex_manager_stats_t layouts,
 * the event struct the library fills, and the descriptor a manager hands
 * back (indexed with 0.1.0's action stride, as such a host does). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "apex/apex.h"

#ifdef APEX_STATS_INIT
#error "v1_host must be built against tests/abi/v1, the 0.1.0 headers"
#endif

#define PLUGIN APEX_ABI_PLUGIN_DIR "/abi_v1.so"

static void quiet(int level, const char *msg, void *user) {
  (void)level;
  (void)msg;
  (void)user;
}

/* DONE events seen, with the last one's fields, as a 0.1.0 host reads them. */
static pthread_mutex_t ev_mu = PTHREAD_MUTEX_INITIALIZER;
static int ev_done;
static uint64_t ev_task_id;
static apex_task_state_t ev_state;
static json_int_t ev_sum = -1;

static void on_event(const apex_event_t *ev, void *user) {
  (void)user;
  if (ev->type != APEX_EVENT_DONE) return;
  pthread_mutex_lock(&ev_mu);
  ev_done++;
  ev_task_id = ev->task_id;
  ev_state = ev->state;
  ev_sum = json_integer_value(json_object_get(ev->result, "sum"));
  pthread_mutex_unlock(&ev_mu);
}

static int setup(void **st) {
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg); /* 0.1.0's symbol: fills 0.1.0's layout */
  if (cfg.struct_size != sizeof cfg || cfg.max_stuck_workers != 4 || cfg.log_level != -1)
    return -1;
  cfg.workers = 2;
  cfg.log = quiet;
  cfg.on_event = on_event;
  apex_manager_t *m = NULL;
  if (apex_manager_new(&cfg, &m) != APEX_OK) return -1;
  apex_error_t *err = NULL;
  if (apex_manager_load(m, PLUGIN, &err) != APEX_OK) {
    print_error("load: %s\n", apex_error_message(err));
    apex_error_unref(err);
    apex_manager_destroy(m, -1);
    return -1;
  }
  *st = m;
  return 0;
}

static int teardown(void **st) {
  return apex_manager_destroy(*st, 10000) == APEX_OK ? 0 : -1;
}

static json_t *params(const char *text) {
  json_t *p = json_loads(text, 0, NULL);
  assert_non_null(p);
  return p;
}

static void test_init_calls_write_only_the_0_1_0_layout(void **st) {
  (void)st;
  /* Whatever the library's structs grew to, 0.1.0's init symbols must not
   * write past 0.1.0's struct: the bytes after it are the host's. */
  struct {
    apex_submit_opts_t o;
    unsigned char after[64];
  } so;
  memset(&so, 0x5A, sizeof so);
  apex_submit_opts_init(&so.o);
  assert_int_equal(so.o.struct_size, sizeof so.o);
  assert_true(so.o.timeout_s == 0 && !so.o.retry && !so.o.parent && !so.o.on_event);
  for (size_t i = 0; i < sizeof so.after; i++) assert_int_equal(so.after[i], 0x5A);
  struct {
    apex_manager_config_t c;
    unsigned char after[64];
  } sc;
  memset(&sc, 0x5A, sizeof sc);
  apex_manager_config_init(&sc.c);
  assert_int_equal(sc.c.struct_size, sizeof sc.c);
  assert_true(sc.c.progress_rate_hz == 20);
  for (size_t i = 0; i < sizeof sc.after; i++) assert_int_equal(sc.after[i], 0x5A);
}

static void test_descriptor_read_with_0_1_0_stride(void **st) {
  apex_manager_t *m = *st;
  const apex_plugin_desc_t *d = apex_manager_plugin(m, "abi_v1");
  assert_non_null(d);
  assert_int_equal(d->abi_version, APEX_PLUGIN_ABI);
  assert_true(d->struct_size >= sizeof *d);
  assert_string_equal(d->version, "0.1.0");
  assert_int_equal(d->n_actions, 3);
  /* A 0.1.0 host indexes actions[] with its own sizeof. */
  assert_string_equal(d->actions[0].name, "add");
  assert_int_equal(d->actions[0].n_params, 2);
  assert_string_equal(d->actions[0].params[1].default_json, "5");
  assert_true(d->actions[0].default_timeout_s == 30);
  assert_int_equal(d->actions[0].flags, APEX_ACTION_F_IDEMPOTENT);
  assert_string_equal(d->actions[1].name, "flaky");
  assert_int_equal(d->actions[1].default_retry.max_attempts, 4);
  assert_int_equal(d->actions[1].default_retry.n_non_retryable, 1);
  assert_string_equal(d->actions[2].name, "later");
  assert_int_equal(d->actions[2].kind, APEX_ACTION_DEFERRED);
}

static void test_submit_with_0_1_0_opts_runs_to_its_result(void **st) {
  apex_manager_t *m = *st;
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = 60;
  json_t *p = params("{\"a\": 7}");
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_submit(m, "abi_v1", "add", p, &o, &t, &err), APEX_OK);
  json_decref(p);
  assert_null(err);
  assert_int_equal(apex_task_wait(t, 20000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(r, "sum")), 12); /* b's default 5 */
  assert_int_equal(json_integer_value(json_object_get(r, "attempt")), 1);
  json_decref(r);
  apex_progress_t *pr = apex_task_progress(t);
  if (pr) { /* delivered only if the flush ran before the end: either is right */
    assert_true(apex_progress_percentage(pr) == 50);
    apex_progress_unref(pr);
  }
  uint64_t id = apex_task_id(t);
  apex_task_release(t);
  /* The DONE event, in 0.1.0's apex_event_t. */
  int64_t end = (int64_t)time(NULL) + 20;
  for (;;) {
    pthread_mutex_lock(&ev_mu);
    int seen = ev_done > 0 && ev_task_id == id;
    pthread_mutex_unlock(&ev_mu);
    if (seen || (int64_t)time(NULL) > end) break;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  pthread_mutex_lock(&ev_mu);
  assert_int_equal(ev_task_id, id);
  assert_int_equal(ev_state, APEX_TASK_SUCCEEDED);
  assert_int_equal(ev_sum, 12);
  pthread_mutex_unlock(&ev_mu);
}

static void test_zero_filled_opts_with_retry_override(void **st) {
  apex_manager_t *m = *st;
  /* The 0.1.0 way without the init call: zeros, struct_size 0. */
  apex_retry_policy_t once = {.max_attempts = 1};
  apex_submit_opts_t o = {.retry = &once};
  json_t *r = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_execute(m, "abi_v1", "flaky", NULL, &o, &r, &err),
                   APEX_E_TRANSIENT);
  assert_int_equal(apex_error_attempt(err), 1);
  assert_string_equal(apex_error_message(err), "attempt 1 fails");
  apex_error_unref(err);
  assert_null(r);
}

static void test_plugin_default_retry_runs_three_attempts(void **st) {
  apex_manager_t *m = *st;
  json_t *r = NULL;
  assert_int_equal(apex_manager_execute(m, "abi_v1", "flaky", NULL, NULL, &r, NULL), APEX_OK);
  assert_int_equal(json_integer_value(json_object_get(r, "attempt")), 3);
  json_decref(r);
}

static void test_deferred_action_completes_from_its_thread(void **st) {
  apex_manager_t *m = *st;
  json_t *r = NULL;
  assert_int_equal(apex_manager_execute(m, "abi_v1", "later", NULL, NULL, &r, NULL), APEX_OK);
  assert_true(json_is_true(json_object_get(r, "done")));
  json_decref(r);
}

static void test_bad_params_refused_with_0_1_0_code(void **st) {
  apex_manager_t *m = *st;
  json_t *p = params("{\"a\": 1001}");
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_submit(m, "abi_v1", "add", p, NULL, &t, &err),
                   APEX_E_INVALID_PARAMS);
  json_decref(p);
  assert_null(t);
  assert_non_null(strstr(apex_error_message(err), "param 'a'"));
  apex_error_unref(err);
}

static void test_stats_in_0_1_0_layout(void **st) {
  /* A manager of its own, so every count is exact. */
  (void)st;
  apex_manager_t *m = NULL;
  assert_int_equal(setup((void **)&m), 0);
  struct {
    apex_manager_stats_t s;
    unsigned char after[64];
  } b;
  memset(&b, 0x5A, sizeof b);
  assert_int_equal(apex_manager_execute(m, "abi_v1", "flaky", NULL, NULL, NULL, NULL), APEX_OK);
  json_t *p = params("{\"a\": 1}");
  assert_int_equal(apex_manager_execute(m, "abi_v1", "add", p, NULL, NULL, NULL), APEX_OK);
  json_decref(p);
  assert_int_equal(apex_manager_stats(m, &b.s), APEX_OK);
  assert_int_equal(b.s.submitted, 2);
  assert_int_equal(b.s.succeeded, 2);
  assert_int_equal(b.s.failed, 0);
  assert_int_equal(b.s.attempts, 4);
  assert_int_equal(b.s.retries, 2);
  assert_int_equal(b.s.queued, 0);
  assert_int_equal(b.s.workers, 2);
  assert_int_equal(b.s.late_reports, 0);
  for (size_t i = 0; i < sizeof b.after; i++) assert_int_equal(b.after[i], 0x5A);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_init_calls_write_only_the_0_1_0_layout),
      cmocka_unit_test(test_descriptor_read_with_0_1_0_stride),
      cmocka_unit_test(test_submit_with_0_1_0_opts_runs_to_its_result),
      cmocka_unit_test(test_zero_filled_opts_with_retry_override),
      cmocka_unit_test(test_plugin_default_retry_runs_three_attempts),
      cmocka_unit_test(test_deferred_action_completes_from_its_thread),
      cmocka_unit_test(test_bad_params_refused_with_0_1_0_code),
      cmocka_unit_test(test_stats_in_0_1_0_layout),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
