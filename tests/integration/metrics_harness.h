/* Shared helpers of the metrics tests that run the apex command
 * (test_metrics_cli.c, test_metrics_prometheus.c): HTTP GETs with libcurl,
 * a temporary directory, starting `apex batch --metrics-listen` and
 * reading the URL it prints, reading one sample's value out of Prometheus
 * text. Single-threaded. Include after cmocka.h, integration/harness.h and
 * integration/cli_harness.h. */
#ifndef APEX_TEST_METRICS_HARNESS_H
#define APEX_TEST_METRICS_HARNESS_H

#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#define PLUGINS "--plugin-path", APEX_TEST_PLUGIN_DIR

static char g_dir[256];

static inline int dir_setup(void **st) {
  (void)st;
  snprintf(g_dir, sizeof g_dir, "/tmp/apex_metrics_XXXXXX");
  return mkdtemp(g_dir) ? 0 : -1;
}

static inline int dir_teardown(void **st) {
  (void)st;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* Returns: g_dir/name (static buffer, one of eight). */
static inline const char *in_dir(const char *name) {
  static char paths[8][320];
  static int next;
  char *p = paths[next++ % 8];
  snprintf(p, 320, "%s/%s", g_dir, name);
  return p;
}

static inline void write_to(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
  assert_int_equal(fclose(f), 0);
}

/* Returns: the file's text (malloc'd), failing if it cannot be read. */
static inline char *read_all(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) fail_msg("cannot open %s", path);
  buf_t b = {0};
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&b, chunk, n);
  fclose(f);
  if (!b.p) buf_add(&b, "", 0);
  return b.p;
}

static size_t on_body(char *p, size_t size, size_t n, void *user) {
  buf_add(user, p, size * n);
  return size * n;
}

/* GETs url (with an Accept header if accept is set). Returns: the HTTP
 * status (0 if no response), the body in *body (free it), the
 * Content-Type in ctype (if set). */
static inline long http_get(const char *url, const char *accept, char **body, char *ctype,
                            size_t ctype_len) {
  CURL *c = curl_easy_init();
  assert_non_null(c);
  buf_t b = {0};
  struct curl_slist *h = NULL;
  char hdr[200];
  if (accept) {
    snprintf(hdr, sizeof hdr, "Accept: %s", accept);
    h = curl_slist_append(NULL, hdr);
  }
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  long status = 0;
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  if (ctype && ctype_len) {
    char *ct = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(ctype, ctype_len, "%s", ct ? ct : "");
  }
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  if (!b.p) buf_add(&b, "", 0);
  *body = b.p;
  return status;
}

/* Starts `apex batch FILE --json --metrics-listen 127.0.0.1:0 PLUGINS`
 * and waits for the URL it prints on stderr. Returns: the URL (static). */
static inline const char *start_listening_batch(proc_t *p, const char *file) {
  proc_start(p, "batch", file, "--json", "--metrics-listen", "127.0.0.1:0", PLUGINS, NULL);
  if (!proc_err_until(p, "/metrics\n", 20000))
    fail_msg("no metrics URL on stderr:\n%s", buf_str(&p->err));
  static char url[128];
  const char *at = strstr(buf_str(&p->err), "apex: metrics at ");
  assert_non_null(at);
  at += strlen("apex: metrics at ");
  size_t n = strcspn(at, "\n");
  assert_true(n < sizeof url);
  memcpy(url, at, n);
  url[n] = '\0';
  assert_true(strncmp(url, "http://127.0.0.1:", 17) == 0);
  return url;
}

/* Returns: the value of the first sample line of text that starts with
 * prefix (a metric name with the start of its labels, e.g.
 * "apex_tasks_total{plugin=\"p\",action=\"a\",outcome=\"succeeded\"}"), or
 * -1 if none does. */
static inline double sample_value(const char *text, const char *prefix) {
  size_t n = strlen(prefix);
  for (const char *l = text; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l))
    if (strncmp(l, prefix, n) == 0 && l[n] == ' ') return strtod(l + n + 1, NULL);
  return -1;
}

/* Returns: 1 if an executable named name is on PATH. */
static inline int on_path(const char *name) {
  const char *path = getenv("PATH");
  if (!path) path = "/usr/bin:/bin";
  char buf[512];
  while (*path) {
    size_t n = strcspn(path, ":");
    snprintf(buf, sizeof buf, "%.*s/%s", (int)n, path, name);
    if (access(buf, X_OK) == 0) return 1;
    path += n + (path[n] == ':');
  }
  return 0;
}

#endif
