/* Operation metrics (include/apex/metrics.h): every counter and histogram
 * counts what a run did, exactly; the gauges read now; metrics off leaves
 * only the gauges; the renderers write the formats' escapes byte for
 * byte. Driven through the public API with tests/plugins/metrics_kit.c. */
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "integration/harness.h"

#define KIT "metrics_kit"

static apex_manager_t *kit_manager(apex_manager_config_t *cfg) {
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/metrics_kit.so");
  return m;
}

static apex_manager_t *kit_default(void) {
  apex_manager_config_t cfg = base_config(2);
  return kit_manager(&cfg);
}

/* The value of family fam's sample for KIT.action with (k, v) if k is set;
 * -1 if there is no such sample. */
static double val(const apex_metrics_snapshot_t *s, const char *fam, const char *action,
                  const char *k, const char *v) {
  const char *pairs[6] = {"plugin", KIT, "action", action, k, v};
  const apex_metric_sample_t *smp = apex_metrics_find(s, fam, pairs, k ? 3 : 2);
  return smp ? smp->value : -1;
}

static const apex_metric_sample_t *hist(const apex_metrics_snapshot_t *s, const char *fam,
                                        const char *action) {
  const char *pairs[4] = {"plugin", KIT, "action", action};
  const apex_metric_sample_t *smp = apex_metrics_find(s, fam, pairs, 2);
  assert_non_null(smp);
  return smp;
}

static apex_metrics_snapshot_t *snap(apex_manager_t *m) {
  apex_metrics_snapshot_t *s = NULL;
  assert_int_equal(apex_metrics_snapshot(m, &s), APEX_OK);
  assert_non_null(s);
  return s;
}

static double running_now(apex_manager_t *m, const char *action) {
  apex_metrics_snapshot_t *s = snap(m);
  double v = val(s, "apex_tasks_running", action, NULL, NULL);
  apex_metrics_snapshot_free(s);
  return v;
}

static void run_n(apex_manager_t *m, const char *action, const char *params, int n,
                  const apex_submit_opts_t *o) {
  for (int i = 0; i < n; i++) {
    apex_task_t *t = submit_json(m, KIT, action, params, o);
    wait_done(t);
    apex_task_release(t);
  }
}

static void test_successes_count_every_task_and_histogram(void **st) {
  (void)st;
  apex_manager_t *m = kit_default();
  run_n(m, "ok", NULL, 20, NULL);
  apex_metrics_snapshot_t *s = snap(m);
  assert_true(val(s, "apex_tasks_submitted", "ok", NULL, NULL) == 20);
  assert_true(val(s, "apex_task_attempts", "ok", NULL, NULL) == 20);
  assert_true(val(s, "apex_tasks", "ok", "outcome", "succeeded") == 20);
  assert_true(val(s, "apex_tasks", "ok", "outcome", "failed") == 0);
  assert_true(val(s, "apex_task_retries", "ok", NULL, NULL) == 0);
  /* Every task waited, ran one attempt and ended: one observation each. */
  const char *h[] = {"apex_task_queue_wait_seconds", "apex_attempt_duration_seconds",
                     "apex_task_duration_seconds"};
  for (size_t i = 0; i < 3; i++) {
    const apex_metric_sample_t *x = hist(s, h[i], "ok");
    assert_int_equal(x->count, 20);
    assert_true(x->sum >= 0 && x->sum < 20 * 10.0);
    /* cumulative, ending at count */
    for (int b = 1; b < APEX_METRICS_N_BOUNDS; b++) assert_true(x->buckets[b] >= x->buckets[b - 1]);
    assert_true(x->buckets[APEX_METRICS_N_BOUNDS - 1] <= x->count);
  }
  /* An action never used has no series. */
  assert_true(val(s, "apex_tasks_submitted", "fail", NULL, NULL) == -1);
  /* Gauges: nothing left; two workers. */
  assert_true(val(s, "apex_tasks_queued", "ok", NULL, NULL) == 0);
  /* running: a scheduler slot goes back in its worker's next pool_mu
   * section (docs/architecture.md), so it may lag a DONE a little. */
  AWAIT(running_now(m, "ok") == 0, 10000);
  const apex_metric_sample_t *w = apex_metrics_find(s, "apex_workers", NULL, 0);
  assert_non_null(w);
  assert_true(w->value == 2);
  apex_metrics_snapshot_free(s);
  apex_manager_destroy(m, -1);
}

static void test_failures_count_by_code(void **st) {
  (void)st;
  apex_manager_t *m = kit_default();
  run_n(m, "fail", "{\"code\": \"io\"}", 2, NULL);
  run_n(m, "fail", "{\"code\": \"execution\"}", 1, NULL);
  apex_metrics_snapshot_t *s = snap(m);
  assert_true(val(s, "apex_tasks_failed", "fail", "code", "io") == 2);
  assert_true(val(s, "apex_tasks_failed", "fail", "code", "execution") == 1);
  assert_true(val(s, "apex_tasks_failed", "fail", "code", "transient") == -1);
  assert_true(val(s, "apex_tasks", "fail", "outcome", "failed") == 3);
  assert_true(val(s, "apex_tasks", "fail", "outcome", "succeeded") == 0);
  apex_metrics_snapshot_free(s);
  apex_manager_destroy(m, -1);
}

static void test_retries_count_each_attempt(void **st) {
  (void)st;
  apex_manager_t *m = kit_default();
  run_n(m, "flaky", "{\"succeed_on\": 3}", 1, NULL);
  apex_metrics_snapshot_t *s = snap(m);
  assert_true(val(s, "apex_task_attempts", "flaky", NULL, NULL) == 3);
  assert_true(val(s, "apex_task_retries", "flaky", NULL, NULL) == 2);
  assert_true(val(s, "apex_tasks", "flaky", "outcome", "succeeded") == 1);
  assert_int_equal(hist(s, "apex_attempt_duration_seconds", "flaky")->count, 3);
  /* Queue wait is the first attempt's; end to end is the task's. */
  assert_int_equal(hist(s, "apex_task_queue_wait_seconds", "flaky")->count, 1);
  assert_int_equal(hist(s, "apex_task_duration_seconds", "flaky")->count, 1);
  apex_metrics_snapshot_free(s);
  apex_manager_destroy(m, -1);
}

static void test_timeouts_count_by_kind(void **st) {
  (void)st;
  apex_manager_t *m = kit_default();
  apex_submit_opts_t o = opts_timeout(0.05);
  run_n(m, "sleep", NULL, 2, &o);
  apex_submit_opts_t a;
  apex_submit_opts_init(&a);
  a.start_to_close_s = 0.05;
  run_n(m, "sleep", NULL, 1, &a);
  apex_metrics_snapshot_t *s = snap(m);
  assert_true(val(s, "apex_tasks_timed_out", "sleep", "timeout", "schedule_to_close") == 2);
  assert_true(val(s, "apex_tasks_timed_out", "sleep", "timeout", "start_to_close") == 1);
  assert_true(val(s, "apex_tasks", "sleep", "outcome", "timed_out") == 3);
  apex_metrics_snapshot_free(s);
  apex_manager_destroy(m, -1);
}

static void test_cancels_count_by_reason(void **st) {
  (void)st;
  apex_manager_t *m = kit_default();
  apex_task_t *t = submit_json(m, KIT, "sleep", NULL, NULL);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, 10000);
  assert_int_equal(apex_task_cancel(t, "enough"), APEX_OK);
  wait_done(t);
  apex_task_release(t);
  apex_token_t *parent = NULL;
  assert_int_equal(apex_token_new(&parent), APEX_OK);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.parent = parent;
  t = submit_json(m, KIT, "sleep", NULL, &o);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, 10000);
  assert_int_equal(apex_token_cancel(parent, "host gave up"), APEX_OK);
  wait_done(t);
  apex_task_release(t);
  apex_token_unref(parent);
  apex_metrics_snapshot_t *s = snap(m);
  assert_true(val(s, "apex_tasks_cancelled", "sleep", "reason", "user") == 1);
  assert_true(val(s, "apex_tasks_cancelled", "sleep", "reason", "parent") == 1);
  assert_true(val(s, "apex_tasks", "sleep", "outcome", "cancelled") == 2);
  apex_metrics_snapshot_free(s);
  apex_manager_destroy(m, -1);
}

static void test_refused_submits_count_as_rejected(void **st) {
  (void)st;
  apex_manager_t *m = kit_default();
  json_t *bad = json_pack("{s:s}", "ms", "soon");
  apex_task_t *t = NULL;
  assert_int_equal(apex_manager_submit(m, KIT, "sleep", bad, NULL, &t, NULL),
                   APEX_E_INVALID_PARAMS);
  json_decref(bad);
  apex_metrics_snapshot_t *s = snap(m);
  assert_true(val(s, "apex_tasks_rejected", "sleep", "code", "invalid_params") == 1);
  assert_true(val(s, "apex_tasks_submitted", "sleep", NULL, NULL) == 0);
  apex_metrics_snapshot_free(s);
  apex_manager_destroy(m, -1);
}

static atomic_int g_progress_events;
static void count_progress(const apex_event_t *ev, void *user) {
  (void)user;
  if (ev->type == APEX_EVENT_PROGRESS) atomic_fetch_add(&g_progress_events, 1);
}

static void test_progress_reported_delivered_coalesced(void **st) {
  (void)st;
  atomic_store(&g_progress_events, 0);
  apex_manager_config_t cfg = base_config(2);
  cfg.on_event = count_progress;
  apex_manager_t *m = kit_manager(&cfg);
  run_n(m, "progress", "{\"n\": 5000}", 1, NULL);
  apex_metrics_snapshot_t *s = snap(m);
  double rep = val(s, "apex_progress_reports", "progress", NULL, NULL);
  double del = val(s, "apex_progress_delivered", "progress", NULL, NULL);
  double coal = val(s, "apex_progress_coalesced", "progress", NULL, NULL);
  assert_true(rep == 5000);
  /* Every delivered snapshot reached the callback, and what was not
   * delivered was coalesced away. */
  assert_true(del == atomic_load(&g_progress_events));
  assert_true(del >= 1 && del < 5000);
  assert_true(del + coal == 5000);
  assert_int_equal(hist(s, "apex_progress_delivery_delay_seconds", "progress")->count,
                   (uint64_t)del);
  assert_true(val(s, "apex_progress_rejected", "progress", NULL, NULL) == 0);
  apex_metrics_snapshot_free(s);
  apex_manager_destroy(m, -1);
}

static void test_metrics_off_keeps_only_gauges(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  cfg.metrics = APEX_METRICS_OFF;
  apex_manager_t *m = kit_manager(&cfg);
  run_n(m, "ok", NULL, 3, NULL);
  apex_metrics_snapshot_t *s = snap(m);
  assert_null(apex_metrics_find(s, "apex_tasks_submitted", NULL, 0));
  assert_null(apex_metrics_find(s, "apex_task_duration_seconds", NULL, 0));
  const apex_metric_sample_t *w = apex_metrics_find(s, "apex_workers", NULL, 0);
  assert_non_null(w);
  assert_true(w->value == 2);
  apex_metrics_snapshot_free(s);
  apex_manager_destroy(m, -1);
  cfg.metrics = 7;
  apex_manager_t *bad = NULL;
  assert_int_equal(apex_manager_new(&cfg, &bad), APEX_E_INVALID);
  assert_null(bad);
}

/* More submitting threads alive at once than there are cell slots: the
 * ones past them share a cell, and nothing is lost either way. */
#define N_THREADS 40
#define PER_THREAD 100
typedef struct {
  apex_manager_t *m;
  pthread_barrier_t *bar;
} th_arg_t;

static void *submitter(void *p) {
  th_arg_t *a = p;
  apex_task_t *ts[PER_THREAD];
  for (int i = 0; i < PER_THREAD; i++)
    if (apex_manager_submit(a->m, KIT, "ok", NULL, NULL, &ts[i], NULL) != APEX_OK) ts[i] = NULL;
  for (int i = 0; i < PER_THREAD; i++) {
    if (ts[i]) apex_task_wait(ts[i], 30000);
    apex_task_release(ts[i]);
  }
  pthread_barrier_wait(a->bar); /* every thread alive until all submitted */
  return NULL;
}

static void test_many_threads_lose_no_count(void **st) {
  (void)st;
  apex_manager_t *m = kit_default();
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, N_THREADS);
  th_arg_t a = {m, &bar};
  pthread_t th[N_THREADS];
  for (int i = 0; i < N_THREADS; i++) assert_int_equal(pthread_create(&th[i], NULL, submitter, &a), 0);
  for (int i = 0; i < N_THREADS; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&bar);
  apex_metrics_snapshot_t *s = snap(m);
  assert_true(val(s, "apex_tasks_submitted", "ok", NULL, NULL) == N_THREADS * PER_THREAD);
  assert_true(val(s, "apex_tasks", "ok", "outcome", "succeeded") == N_THREADS * PER_THREAD);
  assert_int_equal(hist(s, "apex_task_duration_seconds", "ok")->count, N_THREADS * PER_THREAD);
  apex_metrics_snapshot_free(s);
  apex_manager_destroy(m, -1);
}

/* A thread's metrics slot goes back from a pthread key's destructor
 * (obs/metrics.c), and a host's key made after the library's runs its
 * destructor later on the same thread (glibc runs them in key order).
 * Here such a destructor submits LATE tasks while a new thread, which took
 * the slot just given back, submits LATE too, both at once: every submit
 * is counted (the late ones in the shared cell, with atomic adds; in the
 * new owner's cell, with plain stores from two threads, counts were
 * lost). */
#define LATE 20000

static struct {
  apex_manager_t *m;
  pthread_key_t key;
  sem_t freed, taken;
  pthread_barrier_t go;
  atomic_int refused;
} g_late;

static void submit_many(int n) {
  apex_task_t **ts = calloc((size_t)n, sizeof *ts);
  for (int i = 0; ts && i < n; i++)
    if (apex_manager_submit(g_late.m, KIT, "ok", NULL, NULL, &ts[i], NULL) != APEX_OK) {
      atomic_fetch_add(&g_late.refused, 1);
      ts[i] = NULL;
    }
  for (int i = 0; ts && i < n; i++) {
    if (ts[i]) apex_task_wait(ts[i], 30000);
    apex_task_release(ts[i]);
  }
  if (!ts) atomic_fetch_add(&g_late.refused, n);
  free(ts);
}

static void late_submits(void *v) { /* the host key's destructor */
  (void)v;
  sem_post(&g_late.freed); /* the library's destructor ran before this one */
  sem_wait(&g_late.taken);
  pthread_barrier_wait(&g_late.go);
  submit_many(LATE);
}

static void *slot_taker(void *p) {
  (void)p;
  sem_wait(&g_late.freed);
  submit_many(1); /* takes the lowest free slot: the one just given back */
  sem_post(&g_late.taken);
  pthread_barrier_wait(&g_late.go);
  submit_many(LATE);
  return NULL;
}

static void *exiting(void *p) {
  (void)p;
  submit_many(1); /* takes a slot */
  return pthread_setspecific(g_late.key, &g_late) == 0 ? NULL : &g_late;
}

static void test_submits_from_a_later_key_destructor_lose_no_count(void **st) {
  (void)st;
  g_late.m = kit_default();
  submit_many(1); /* the library's key exists before the host's */
  assert_int_equal(pthread_key_create(&g_late.key, late_submits), 0);
  sem_init(&g_late.freed, 0, 0);
  sem_init(&g_late.taken, 0, 0);
  pthread_barrier_init(&g_late.go, NULL, 2);
  pthread_t a, b;
  assert_int_equal(pthread_create(&b, NULL, slot_taker, NULL), 0);
  assert_int_equal(pthread_create(&a, NULL, exiting, NULL), 0);
  void *set_failed = NULL;
  pthread_join(a, &set_failed);
  assert_null(set_failed);
  pthread_join(b, NULL);
  assert_int_equal(atomic_load(&g_late.refused), 0);
  apex_metrics_snapshot_t *s = snap(g_late.m);
  assert_true(val(s, "apex_tasks_submitted", "ok", NULL, NULL) == 3 + 2 * LATE);
  assert_true(val(s, "apex_tasks", "ok", "outcome", "succeeded") == 3 + 2 * LATE);
  apex_metrics_snapshot_free(s);
  pthread_key_delete(g_late.key);
  sem_destroy(&g_late.freed);
  sem_destroy(&g_late.taken);
  pthread_barrier_destroy(&g_late.go);
  apex_manager_destroy(g_late.m, -1);
}

/* ------------------------------------------------------------ renderers */

static const apex_metric_label_t k_nasty[] = {{"plugin", "p"},
                                              {"why", "a\"b\\c\nd\xff" "e"}};
static const apex_metric_sample_t k_counter_samples[] = {{.labels = k_nasty, .n_labels = 2, .value = 3}};
static const double k_bounds[] = {0.5, 1};
static const uint64_t k_buckets[] = {1, 2};
static const apex_metric_sample_t k_hist_samples[] = {
    {.count = 3, .sum = 2.25, .buckets = k_buckets}};
static const apex_metric_family_t k_fams[] = {
    {.name = "t_errors", .help = "Errors \\ seen\nhere", .unit = "", .type = APEX_METRIC_COUNTER,
     .samples = k_counter_samples, .n_samples = 1},
    {.name = "t_wait_seconds", .help = "Wait \"time\"", .unit = "seconds",
     .type = APEX_METRIC_HISTOGRAM, .bounds = k_bounds, .n_bounds = 2, .samples = k_hist_samples,
     .n_samples = 1},
};
static const apex_metrics_snapshot_t k_snap = {
    .struct_size = sizeof(apex_metrics_snapshot_t), .timestamp = 1, .families = k_fams, .n_families = 2};

static void test_prometheus_text_escapes_labels_and_help(void **st) {
  (void)st;
  char *out = NULL;
  size_t len = 0;
  assert_int_equal(apex_metrics_render(&k_snap, APEX_METRICS_PROMETHEUS, &out, &len), APEX_OK);
  const char *want =
      "# HELP t_errors_total Errors \\\\ seen\\nhere\n"
      "# TYPE t_errors_total counter\n"
      "t_errors_total{plugin=\"p\",why=\"a\\\"b\\\\c\\nd\xEF\xBF\xBD" "e\"} 3\n"
      "# HELP t_wait_seconds Wait \"time\"\n"
      "# TYPE t_wait_seconds histogram\n"
      "t_wait_seconds_bucket{le=\"0.5\"} 1\n"
      "t_wait_seconds_bucket{le=\"1\"} 2\n"
      "t_wait_seconds_bucket{le=\"+Inf\"} 3\n"
      "t_wait_seconds_sum 2.25\n"
      "t_wait_seconds_count 3\n";
  assert_string_equal(out, want);
  assert_int_equal(len, strlen(want));
  apex_metrics_text_free(out);
}

static void test_openmetrics_text_names_families_and_ends_with_eof(void **st) {
  (void)st;
  char *out = NULL;
  assert_int_equal(apex_metrics_render(&k_snap, APEX_METRICS_OPENMETRICS, &out, NULL), APEX_OK);
  const char *want =
      "# HELP t_errors Errors \\\\ seen\\nhere\n"
      "# TYPE t_errors counter\n"
      "t_errors_total{plugin=\"p\",why=\"a\\\"b\\\\c\\nd\xEF\xBF\xBD" "e\"} 3\n"
      "# HELP t_wait_seconds Wait \\\"time\\\"\n"
      "# TYPE t_wait_seconds histogram\n"
      "# UNIT t_wait_seconds seconds\n"
      "t_wait_seconds_bucket{le=\"0.5\"} 1\n"
      "t_wait_seconds_bucket{le=\"1.0\"} 2\n"
      "t_wait_seconds_bucket{le=\"+Inf\"} 3\n"
      "t_wait_seconds_sum 2.25\n"
      "t_wait_seconds_count 3\n"
      "# EOF\n";
  assert_string_equal(out, want);
  apex_metrics_text_free(out);
}

static void test_json_carries_labels_as_valid_utf8(void **st) {
  (void)st;
  char *out = NULL;
  assert_int_equal(apex_metrics_render(&k_snap, APEX_METRICS_JSON, &out, NULL), APEX_OK);
  json_error_t e;
  json_t *j = json_loads(out, 0, &e);
  apex_metrics_text_free(out);
  assert_non_null(j);
  json_t *f0 = json_array_get(json_object_get(j, "families"), 0);
  assert_string_equal(json_string_value(json_object_get(f0, "type")), "counter");
  json_t *s0 = json_array_get(json_object_get(f0, "samples"), 0);
  assert_string_equal(json_string_value(json_object_get(json_object_get(s0, "labels"), "why")),
                      "a\"b\\c\nd\xEF\xBF\xBD" "e");
  assert_true(json_number_value(json_object_get(s0, "value")) == 3);
  json_t *f1 = json_array_get(json_object_get(j, "families"), 1);
  json_t *b = json_object_get(json_array_get(json_object_get(f1, "samples"), 0), "buckets");
  assert_int_equal(json_array_size(b), 3);
  assert_string_equal(json_string_value(json_object_get(json_array_get(b, 2), "le")), "+Inf");
  assert_int_equal(json_integer_value(json_object_get(json_array_get(b, 2), "count")), 3);
  json_decref(j);
}

static void test_render_refuses_names_the_formats_forbid(void **st) {
  (void)st;
  apex_metric_family_t f = k_fams[0];
  apex_metrics_snapshot_t s = k_snap;
  s.families = &f;
  s.n_families = 1;
  char *out = (char *)1;
  f.name = "bad-name";
  assert_int_equal(apex_metrics_render(&s, APEX_METRICS_PROMETHEUS, &out, NULL), APEX_E_INVALID);
  assert_null(out);
  f.name = "ok_name";
  apex_metric_label_t le[] = {{"le", "1"}};
  apex_metric_sample_t smp = {.labels = le, .n_labels = 1, .value = 1};
  f.samples = &smp;
  assert_int_equal(apex_metrics_render(&s, APEX_METRICS_OPENMETRICS, &out, NULL), APEX_E_INVALID);
  le[0].name = "__reserved";
  assert_int_equal(apex_metrics_render(&s, APEX_METRICS_JSON, &out, NULL), APEX_E_INVALID);
  le[0].name = "fine";
  assert_int_equal(apex_metrics_render(&s, (apex_metrics_format_t)9, &out, NULL), APEX_E_INVALID);
  assert_int_equal(apex_metrics_render(&s, APEX_METRICS_JSON, &out, NULL), APEX_OK);
  apex_metrics_text_free(out);
  assert_string_equal(apex_metrics_content_type(APEX_METRICS_PROMETHEUS),
                      "text/plain; version=0.0.4; charset=utf-8");
  assert_null(apex_metrics_content_type((apex_metrics_format_t)9));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_successes_count_every_task_and_histogram),
      cmocka_unit_test(test_failures_count_by_code),
      cmocka_unit_test(test_retries_count_each_attempt),
      cmocka_unit_test(test_timeouts_count_by_kind),
      cmocka_unit_test(test_cancels_count_by_reason),
      cmocka_unit_test(test_refused_submits_count_as_rejected),
      cmocka_unit_test(test_progress_reported_delivered_coalesced),
      cmocka_unit_test(test_metrics_off_keeps_only_gauges),
      cmocka_unit_test(test_many_threads_lose_no_count),
      cmocka_unit_test(test_submits_from_a_later_key_destructor_lose_no_count),
      cmocka_unit_test(test_prometheus_text_escapes_labels_and_help),
      cmocka_unit_test(test_openmetrics_text_names_families_and_ends_with_eof),
      cmocka_unit_test(test_json_carries_labels_as_valid_utf8),
      cmocka_unit_test(test_render_refuses_names_the_formats_forbid),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
