/* The command's metrics: `apex run --metrics FILE` writes the final
 * snapshot whose counters are the run's (in the format FILE's name or
 * --metrics-format asks for), and `apex batch --metrics-listen ADDR:PORT`
 * serves the live one at /metrics (libmicrohttpd), read here with libcurl.
 * Bad options are refused by name. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "integration/harness.h"
#include "integration/cli_harness.h"
#include "integration/metrics_harness.h"

#define LT "apex_tasks_total{plugin=\"example_async\",action=\"long_task\""

static void test_run_metrics_file_counts_the_run(void **st) {
  (void)st;
  const char *file = in_dir("m.prom");
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "steps=20", "--param", "step_ms=1",
      "--metrics", file, "--json", NULL);
  assert_int_equal(p.code, 0);
  json_t *lines = json_lines(&p);
  size_t progress = count_event(lines, "progress");
  json_decref(lines);
  proc_free(&p);
  char *text = read_all(file);
  assert_true(sample_value(text, "apex_tasks_submitted_total{plugin=\"example_async\",action=\"long_task\"}") == 1);
  assert_true(sample_value(text, "apex_task_attempts_total{plugin=\"example_async\",action=\"long_task\"}") == 1);
  assert_true(sample_value(text, LT ",outcome=\"succeeded\"}") == 1);
  assert_true(sample_value(text, LT ",outcome=\"failed\"}") == 0);
  assert_true(sample_value(text, "apex_progress_reports_total{plugin=\"example_async\",action=\"long_task\"}") == 20);
  double del = sample_value(text, "apex_progress_delivered_total{plugin=\"example_async\",action=\"long_task\"}");
  double coal = sample_value(text, "apex_progress_coalesced_total{plugin=\"example_async\",action=\"long_task\"}");
  /* What was delivered is what the command printed; the rest coalesced. */
  assert_true(del == (double)progress);
  assert_true(del + coal == 20);
  assert_true(sample_value(text, "apex_task_duration_seconds_count{plugin=\"example_async\",action=\"long_task\"}") == 1);
  assert_true(sample_value(text, "apex_workers") == 2);
  assert_non_null(strstr(text, "# TYPE apex_tasks_total counter\n"));
  free(text);
}

static void test_run_metrics_format_follows_name_or_option(void **st) {
  (void)st;
  proc_t p;
  const char *om = in_dir("m.om"), *js = in_dir("m.json"), *forced = in_dir("forced.prom");
  run(&p, "run", "example_async.long_task", "--param", "steps=1", "--metrics", om, "--json", NULL);
  assert_int_equal(p.code, 0);
  proc_free(&p);
  char *text = read_all(om);
  size_t n = strlen(text);
  assert_true(n > 6 && strcmp(text + n - 6, "# EOF\n") == 0);
  assert_non_null(strstr(text, "# TYPE apex_tasks counter\n"));
  free(text);
  run(&p, "run", "example_async.long_task", "--param", "steps=1", "--metrics", js, "--json", NULL);
  assert_int_equal(p.code, 0);
  proc_free(&p);
  run(&p, "run", "example_async.long_task", "--param", "steps=1", "--metrics", forced,
      "--metrics-format", "json", "--json", NULL);
  assert_int_equal(p.code, 0);
  proc_free(&p);
  const char *jfiles[] = {js, forced};
  for (int i = 0; i < 2; i++) {
    json_error_t e;
    json_t *j = json_load_file(jfiles[i], 0, &e);
    if (!j) fail_msg("%s: %s", jfiles[i], e.text);
    assert_true(json_is_array(json_object_get(j, "families")));
    json_decref(j);
  }
  run(&p, "run", "example_async.long_task", "--metrics-format", "yaml", "--json", NULL);
  assert_int_equal(p.code, 2);
  assert_contains(buf_str(&p.err), "--metrics-format: 'yaml' is not prometheus, openmetrics or json");
  proc_free(&p);
}

static void test_run_metrics_unwritable_file_fails_the_run(void **st) {
  (void)st;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "steps=1", "--metrics",
      "/nonexistent-dir/m.prom", "--json", NULL);
  assert_int_equal(p.code, 1);
  assert_contains(buf_str(&p.err), "--metrics /nonexistent-dir/m.prom: ");
  proc_free(&p);
}

static void test_batch_serves_live_metrics_over_http(void **st) {
  (void)st;
  const char *file = in_dir("serve.jsonl");
  write_to(file,
           "{\"action\": \"metrics_kit.ok\"}\n{\"action\": \"metrics_kit.ok\"}\n"
           "{\"action\": \"metrics_kit.ok\"}\n"
           "{\"action\": \"metrics_kit.sleep\", \"params\": {\"ms\": 60000}}\n");
  proc_t p;
  const char *url = start_listening_batch(&p, file);
  const char *ok = "apex_tasks_total{plugin=\"metrics_kit\",action=\"ok\",outcome=\"succeeded\"}";
  char *body = NULL, ctype[128];
  int64_t end = now_ms() + 20000;
  for (;;) { /* the three ok lines end soon; the sleep runs until the kill */
    long status = http_get(url, NULL, &body, ctype, sizeof ctype);
    assert_int_equal(status, 200);
    /* A submit is counted once it is queued, so a worker may start the
     * task first: await both. */
    if (sample_value(body, ok) == 3 &&
        sample_value(body, "apex_tasks_running{plugin=\"metrics_kit\",action=\"sleep\"}") == 1 &&
        sample_value(body, "apex_tasks_submitted_total{plugin=\"metrics_kit\",action=\"sleep\"}") == 1)
      break;
    assert_true(now_ms() < end);
    free(body);
    nap_ms(20);
  }
  assert_string_equal(ctype, "text/plain; version=0.0.4; charset=utf-8");
  free(body);
  /* A scraper that asks for OpenMetrics gets it. */
  assert_int_equal(http_get(url, "application/openmetrics-text; version=1.0.0,text/plain;q=0.5",
                            &body, ctype, sizeof ctype),
                   200);
  assert_string_equal(ctype, "application/openmetrics-text; version=1.0.0; charset=utf-8");
  size_t n = strlen(body);
  assert_true(n > 6 && strcmp(body + n - 6, "# EOF\n") == 0);
  free(body);
  char jurl[160];
  snprintf(jurl, sizeof jurl, "%s?format=json", url);
  assert_int_equal(http_get(jurl, NULL, &body, ctype, sizeof ctype), 200);
  assert_string_equal(ctype, "application/json");
  json_t *j = json_loads(body, 0, NULL);
  assert_non_null(j);
  json_decref(j);
  free(body);
  char other[160];
  snprintf(other, sizeof other, "%.*s/other", (int)(strlen(url) - strlen("/metrics")), url);
  assert_int_equal(http_get(other, NULL, &body, NULL, 0), 404);
  free(body);
  kill(p.pid, SIGINT); /* cancels the sleep; the batch reports and exits */
  proc_wait(&p);
  assert_int_equal(p.code, 130);
  proc_free(&p);
}

static void test_batch_refuses_a_bad_listen_address(void **st) {
  (void)st;
  const char *file = in_dir("one.jsonl");
  write_to(file, "{\"action\": \"metrics_kit.ok\"}\n");
  const char *bad[][2] = {{"nonsense", "is not ADDR:PORT"},
                          {"127.0.0.1:99999", "the port is not a number from 0 to 65535"},
                          {"300.1.1.1:80", "is not an IPv4 address"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    proc_t p;
    run(&p, "batch", file, "--json", "--metrics-listen", bad[i][0], PLUGINS, NULL);
    assert_int_equal(p.code, 2);
    assert_contains(buf_str(&p.err), "--metrics-listen");
    assert_contains(buf_str(&p.err), bad[i][1]);
    proc_free(&p);
  }
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_run_metrics_file_counts_the_run),
      cmocka_unit_test(test_run_metrics_format_follows_name_or_option),
      cmocka_unit_test(test_run_metrics_unwritable_file_fails_the_run),
      cmocka_unit_test(test_batch_serves_live_metrics_over_http),
      cmocka_unit_test(test_batch_refuses_a_bad_listen_address),
  };
  int rc = cmocka_run_group_tests(tests, dir_setup, dir_teardown);
  curl_global_cleanup();
  return rc;
}
