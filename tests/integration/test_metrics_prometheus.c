/* The metrics against tools nobody here wrote (Debian's prometheus
 * package, installed by scripts/setup.sh): `promtool check metrics`
 * accepts what `apex run --metrics` writes, label escapes included; and a
 * real Prometheus server on loopback scrapes `apex batch --metrics-listen`
 * (negotiating OpenMetrics, so its own OpenMetrics parser reads ours),
 * and its HTTP query API gives back the run's counts and the escaped label
 * value byte for byte. Exits 77 (CTest: skipped) when prometheus or
 * promtool is not on PATH. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "integration/harness.h"
#include "integration/cli_harness.h"
#include "integration/metrics_harness.h"

/* Runs `promtool check metrics < file`. Returns: its exit status, its
 * output (stdout and stderr) in out (free it). */
static int promtool(const char *file, char **out) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "promtool check metrics < '%s' 2>&1", file);
  FILE *f = popen(cmd, "r");
  assert_non_null(f);
  buf_t b = {0};
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&b, chunk, n);
  int st = pclose(f);
  if (!b.p) buf_add(&b, "", 0);
  *out = b.p;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void run_to(const char *target, const char *file, const char *p1, const char *p2) {
  proc_t p;
  run(&p, "run", target, PLUGINS, "--metrics", file, "--json", p1, p2, NULL);
  if (p.code != 0) fail_msg("apex run %s: exit %d\n%s", target, p.code, buf_str(&p.err));
  proc_free(&p);
}

static void test_promtool_accepts_the_prometheus_text(void **st) {
  (void)st;
  /* example_async as the issue names it; metrics_kit for its version
   * string, which needs every escape (apex_plugin_info's label). */
  const char *files[] = {in_dir("async.prom"), in_dir("kit.prom")};
  run_to("example_async.long_task", files[0], "--param", "steps=10");
  run_to("metrics_kit.ok", files[1], NULL, NULL);
  for (int i = 0; i < 2; i++) {
    char *out = NULL;
    int rc = promtool(files[i], &out);
    if (rc != 0 || *out) fail_msg("promtool on %s: exit %d:\n%s", files[i], rc, out);
    free(out);
  }
  char *text = read_all(files[1]);
  assert_non_null(strstr(text, "version=\"1.0 \\\"q\\\" \\\\ b\\nnl \xEF\xBF\xBD end\""));
  free(text);
}

/* promtool 2.42 reads the 0.0.4 text format only: an OpenMetrics counter,
 * whose TYPE and HELP name the family (apex_tasks) and whose samples carry
 * _total, parses, and its lint reports just that the _total samples have
 * no help of their own. Anything else (a parse error: exit 1) fails. */
static void test_promtool_parses_the_openmetrics_text(void **st) {
  (void)st;
  const char *file = in_dir("kit.om");
  run_to("metrics_kit.ok", file, NULL, NULL);
  char *out = NULL;
  int rc = promtool(file, &out);
  if (rc != 0 && rc != 3) fail_msg("promtool: exit %d:\n%s", rc, out);
  char *text = read_all(file);
  for (char *l = out; *l;) {
    char *nl = strchr(l, '\n');
    size_t n = nl ? (size_t)(nl - l) : strlen(l);
    char line[256];
    snprintf(line, sizeof line, "%.*s", (int)n, l);
    const char *suffix = " no help text";
    size_t ln = strlen(line), sn = strlen(suffix);
    if (ln < sn + 6 || strcmp(line + ln - sn, suffix) != 0 ||
        strncmp(line + ln - sn - 6, "_total", 6) != 0)
      fail_msg("promtool found more than OpenMetrics' counter naming: '%s'", line);
    char type_line[256]; /* the family is a counter in the text */
    snprintf(type_line, sizeof type_line, "# TYPE %.*s counter\n", (int)(ln - sn - 6), line);
    if (!strstr(text, type_line)) fail_msg("'%s' is no counter family's", line);
    l = nl ? nl + 1 : l + n;
  }
  free(text);
  free(out);
}

/* A port free on loopback now (bound and released: Prometheus binds it
 * next; the window is tiny and the test fails loudly if it is lost). */
static unsigned free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(s >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t len = sizeof a;
  assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
  close(s);
  return ntohs(a.sin_port);
}

/* The result of an instant query, or NULL if Prometheus has none yet
 * (not up, not scraped, or no such series). New reference. */
static json_t *query(unsigned port, const char *promql) {
  CURL *c = curl_easy_init();
  assert_non_null(c);
  char *esc = curl_easy_escape(c, promql, 0);
  char url[1024];
  snprintf(url, sizeof url, "http://127.0.0.1:%u/api/v1/query?query=%s", port, esc);
  curl_free(esc);
  curl_easy_cleanup(c);
  char *body = NULL;
  long status = http_get(url, NULL, &body, NULL, 0);
  json_t *j = status == 200 ? json_loads(body, 0, NULL) : NULL;
  free(body);
  json_t *r = json_object_get(json_object_get(j, "data"), "result");
  json_t *out = json_array_size(r) ? json_incref(json_array_get(r, 0)) : NULL;
  json_decref(j);
  return out;
}

/* The value of a query's first series, or -1 while there is none. */
static double query_value(unsigned port, const char *promql) {
  json_t *r = query(port, promql);
  double v = r ? strtod(json_string_value(json_array_get(json_object_get(r, "value"), 1)), NULL)
               : -1;
  json_decref(r);
  return v;
}

static void test_prometheus_scrapes_a_batch_and_answers_queries(void **st) {
  (void)st;
  const char *file = in_dir("scrape.jsonl");
  write_to(file,
           "{\"action\": \"metrics_kit.ok\"}\n{\"action\": \"metrics_kit.ok\"}\n"
           "{\"action\": \"metrics_kit.ok\"}\n"
           "{\"action\": \"metrics_kit.fail\", \"params\": {\"code\": \"io\"}}\n"
           "{\"action\": \"metrics_kit.fail\", \"params\": {\"code\": \"io\"}}\n"
           "{\"action\": \"metrics_kit.sleep\", \"params\": {\"ms\": 60000}}\n");
  proc_t batch;
  const char *url = start_listening_batch(&batch, file);
  const char *target = url + strlen("http://");
  char conf[512];
  snprintf(conf, sizeof conf,
           "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
           "scrape_configs:\n  - job_name: apex\n    metrics_path: /metrics\n"
           "    static_configs:\n      - targets: ['%.*s']\n",
           (int)(strchr(target, '/') - target), target);
  write_to(in_dir("prometheus.yml"), conf);
  char a_conf[320], a_data[320], a_listen[64];
  snprintf(a_conf, sizeof a_conf, "--config.file=%s", in_dir("prometheus.yml"));
  snprintf(a_data, sizeof a_data, "--storage.tsdb.path=%s", in_dir("data"));
  char *argv[] = {"/usr/bin/env", "prometheus", a_conf, a_data, a_listen,
                  "--log.level=warn", NULL};
  proc_t prom;
  unsigned web = 0;
  /* The port was free a moment ago; should another process take it
   * first, Prometheus exits at once and gets another one. */
  for (int tries = 0;; tries++) {
    web = free_port();
    snprintf(a_listen, sizeof a_listen, "--web.listen-address=127.0.0.1:%u", web);
    proc_spawn(&prom, argv, NULL, -1);
    char ready[64], *body = NULL;
    snprintf(ready, sizeof ready, "http://127.0.0.1:%u/-/ready", web);
    int64_t until = now_ms() + 20000;
    int up = 0, exited = 0;
    while (!up && !exited && now_ms() < until) {
      proc_pump(&prom, 0);
      up = http_get(ready, NULL, &body, NULL, 0) == 200;
      free(body);
      exited = waitpid(prom.pid, NULL, WNOHANG) == prom.pid;
      if (!up && !exited) nap_ms(100);
    }
    if (up) break;
    if (!exited) {
      kill(prom.pid, SIGKILL);
      waitpid(prom.pid, NULL, 0);
    }
    if (tries == 2) fail_msg("Prometheus did not start; its log:\n%s", buf_str(&prom.err));
    for (int i = 0; i < 2; i++)
      if (prom.fds[i] >= 0) close(prom.fds[i]);
    proc_free(&prom);
  }

  /* A scrape after the five short lines ended is what we wait for: each
   * scrape is one snapshot, so the queries agree once one of them holds. */
  const char *ok = "apex_tasks_total{job=\"apex\",action=\"ok\",outcome=\"succeeded\"}";
  const char *io = "apex_tasks_failed_total{job=\"apex\",action=\"fail\",code=\"io\"}";
  int64_t end = now_ms() + 40000;
  while (query_value(web, ok) != 3 || query_value(web, io) != 2 ||
         query_value(web, "apex_task_duration_seconds_count{action=\"ok\"}") != 3) {
    proc_pump(&prom, 0);
    if (now_ms() > end)
      fail_msg("Prometheus never scraped the run's counts; its log:\n%s", buf_str(&prom.err));
    nap_ms(200);
  }
  assert_true(query_value(web, "up{job=\"apex\"}") == 1);
  assert_true(query_value(web, "apex_tasks_submitted_total{action=\"ok\"}") == 3);
  assert_true(query_value(web, "apex_tasks_total{action=\"fail\",outcome=\"failed\"}") == 2);
  assert_true(query_value(web, "apex_workers") >= 2);
  /* The label that needed every escape came back as the plugin wrote it
   * (its byte that is not UTF-8 as U+FFFD). */
  json_t *info = query(web, "apex_plugin_info{plugin=\"metrics_kit\"}");
  assert_non_null(info);
  assert_string_equal(json_string_value(json_object_get(json_object_get(info, "metric"), "version")),
                      "1.0 \"q\" \\ b\nnl \xEF\xBF\xBD end");
  json_decref(info);

  kill(prom.pid, SIGTERM);
  proc_wait(&prom);
  proc_free(&prom);
  kill(batch.pid, SIGINT);
  proc_wait(&batch);
  assert_int_equal(batch.code, 130);
  proc_free(&batch);
}

int main(void) {
  if (!on_path("prometheus") || !on_path("promtool")) {
    printf("skipped: prometheus or promtool is not installed (scripts/setup.sh)\n");
    return 77;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_promtool_accepts_the_prometheus_text),
      cmocka_unit_test(test_promtool_parses_the_openmetrics_text),
      cmocka_unit_test(test_prometheus_scrapes_a_batch_and_answers_queries),
  };
  int rc = cmocka_run_group_tests(tests, dir_setup, dir_teardown);
  curl_global_cleanup();
  return rc;
}
