/* Resumable shipped actions after a crash (issue 13's "done when"): a host
 * on an SQLite store (tests/support/durable_host.c) is killed with SIGKILL
 * about half way through one durable task, restarted, and the task
 * resumes from its last checkpoint.
 * - files.copy of a 1 GiB file (sparse, with data at a few places, so it
 *   is made in an instant): the resumed process copies only the rest,
 *   measured by its own I/O counts (/proc/self/io: it writes the rest and
 *   no more, and reads the rest plus one read-back of the copy for the
 *   verification, not the first half again), and the copy matches the
 *   source by sha256 (computed here, and the plugin's own).
 * - http.download of 8 MiB served slowly by the test server: the restart
 *   asks for the rest with a Range request, and the server serves only the
 *   rest (its byte count under the test's key); the file matches by
 *   sha256. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <openssl/evp.h>

#include "integration/harness.h"
#include "integration/durable_harness.h"

#define MIB (1024ull * 1024ull)
#define COPY_SIZE (1024ull * MIB) /* 1 GiB, in every build */
#define COPY_CP_MIB "64"

/* The sha256 of path's content as hex (into hex[65]). */
static void sha256_file(const char *path, char *hex) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  assert_true(fd >= 0);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  assert_non_null(md);
  assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
  unsigned char *buf = malloc(4 * MIB);
  assert_non_null(buf);
  ssize_t n;
  while ((n = read(fd, buf, 4 * MIB)) > 0) EVP_DigestUpdate(md, buf, (size_t)n);
  assert_true(n == 0);
  unsigned char dig[32];
  unsigned len = 0;
  EVP_DigestFinal_ex(md, dig, &len);
  for (unsigned i = 0; i < len; i++) sprintf(hex + 2 * i, "%02x", dig[i]);
  EVP_MD_CTX_free(md);
  free(buf);
  close(fd);
}

/* The last {"progress": N} line of the host's output, 0 if none yet. */
static uint64_t last_progress(const char *out) {
  char *s = dh_slurp(out);
  uint64_t v = 0;
  for (char *p = s; (p = strstr(p, "{\"progress\":")); p++) v = strtoull(p + 12, NULL, 10);
  free(s);
  return v;
}

/* The JSON object on the line of the host's output that has key. */
static json_t *out_line_with(const char *out, const char *key) {
  char *s = dh_slurp(out);
  json_t *found = NULL;
  for (char *line = s, *nl; *line && (nl = strchr(line, '\n')); line = nl + 1) {
    *nl = '\0';
    json_t *j = json_loads(line, 0, NULL);
    if (j && json_object_get(j, key)) {
      json_decref(found);
      found = j;
    } else {
      json_decref(j);
    }
  }
  free(s);
  return found;
}

/* Starts the host and kills it once it reported at least `at` bytes done.
 * Returns: the bytes it had reported then. */
static uint64_t run_until(const char *out, const char *const *args, uint64_t at) {
  pid_t pid = dh_start(out, args);
  int64_t end = now_ms() + 120000;
  uint64_t p = 0;
  int code;
  while ((p = last_progress(out)) < at) {
    if (dh_ended(pid, &code))
      fail_msg("the host ended (%d) before %llu bytes; its output:\n%s", code,
               (unsigned long long)at, dh_slurp(out));
    assert_true(now_ms() < end);
    nap_ms(2);
  }
  dh_kill(pid);
  return p;
}

static void write_at(int fd, off_t at, const char *text) {
  assert_int_equal(pwrite(fd, text, strlen(text), at), (ssize_t)strlen(text));
}

static void test_copy_of_a_gib_killed_half_way_copies_only_the_rest(void **state) {
  (void)state;
  char dir[256], store[512], src[512], dst[512], out[512];
  dh_tmpdir(dir, sizeof dir, "resume");
  snprintf(store, sizeof store, "%s/tasks.db", dir);
  snprintf(src, sizeof src, "%s/src.bin", dir);
  snprintf(dst, sizeof dst, "%s/dst.bin", dir);
  snprintf(out, sizeof out, "%s/host.out", dir);
  int fd = open(src, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, (off_t)COPY_SIZE), 0);
  write_at(fd, 0, "the start");
  write_at(fd, (off_t)(300 * MIB + 17), "a third of the way");
  write_at(fd, (off_t)(COPY_SIZE / 2 + 5), "the middle");
  write_at(fd, (off_t)(COPY_SIZE - 7), "the end");
  close(fd);
  const char *args[] = {store, APEX_PLUGIN_BUILD_DIR, "copy", src, dst, COPY_CP_MIB, NULL};

  uint64_t at_kill = run_until(out, args, COPY_SIZE / 2);
  assert_int_equal(access(dst, F_OK), -1); /* no partial destination, ever */

  pid_t pid = dh_start(out, args);
  assert_int_equal(dh_wait(pid, 180000), 0);
  json_t *task = out_line_with(out, "task");
  json_t *io = out_line_with(out, "done");
  assert_non_null(task);
  assert_non_null(io);
  assert_string_equal(json_string_value(json_object_get(task, "state")), "succeeded");
  json_t *r = json_object_get(task, "result");
  uint64_t from = (uint64_t)json_integer_value(json_object_get(r, "resumed_from"));
  assert_int_equal(json_integer_value(json_object_get(r, "bytes")), (json_int_t)COPY_SIZE);
  /* From a checkpoint near where it was killed: checkpoints fall every
   * 64 MiB, and the last progress report lags the copy a little. */
  assert_true(from % (64 * MIB) == 0);
  assert_true(from + 64 * MIB >= at_kill - 64 * MIB);
  assert_true(from >= COPY_SIZE / 4 && from < COPY_SIZE);
  uint64_t rest = COPY_SIZE - from;
  /* Only the rest: written once, and read once from the source plus once
   * back from the copy (the verification); the first part not again. */
  uint64_t wchar = (uint64_t)json_integer_value(json_object_get(io, "wchar"));
  uint64_t rchar = (uint64_t)json_integer_value(json_object_get(io, "rchar"));
  print_message("killed at %llu MiB, resumed from %llu MiB: wrote %llu MiB, read %llu MiB\n",
                (unsigned long long)(at_kill / MIB), (unsigned long long)(from / MIB),
                (unsigned long long)(wchar / MIB), (unsigned long long)(rchar / MIB));
  assert_true(wchar >= rest && wchar < rest + 16 * MIB);
  assert_true(rchar >= rest + COPY_SIZE && rchar < rest + COPY_SIZE + 32 * MIB);

  char want[65], got[65];
  sha256_file(src, want);
  sha256_file(dst, got);
  assert_string_equal(got, want);
  assert_string_equal(json_string_value(json_object_get(r, "sha256")), want);
  json_decref(task);
  json_decref(io);
  dh_rmdir(dir);
}

/* The copy's temporary file in dir (".apex-tmp-..."), into path; 0 if none. */
static int find_tmp(const char *dir, char *path, size_t len) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  struct dirent *e;
  int found = 0;
  while ((e = readdir(d)))
    if (strncmp(e->d_name, ".apex-tmp-", 10) == 0) {
      snprintf(path, len, "%s/%s", dir, e->d_name);
      found = 1;
    }
  closedir(d);
  return found;
}

static void test_copy_resumed_onto_a_changed_partial_file_fails_verification(void **state) {
  (void)state;
  char dir[256], store[512], src[512], dst[512], out[512], tmp[1024];
  dh_tmpdir(dir, sizeof dir, "tamper");
  snprintf(store, sizeof store, "%s/tasks.db", dir);
  snprintf(src, sizeof src, "%s/src.bin", dir);
  snprintf(dst, sizeof dst, "%s/dst.bin", dir);
  snprintf(out, sizeof out, "%s/host.out", dir);
  const uint64_t size = 512 * MIB;
  int fd = open(src, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, (off_t)size), 0);
  write_at(fd, 12345, "some data");
  close(fd);
  const char *args[] = {store, APEX_PLUGIN_BUILD_DIR, "copy", src, dst, "16", NULL};
  (void)run_until(out, args, size / 2);
  /* A byte of the part already copied changes behind the checkpoint's
   * back (same file, same size): only the final hash can tell. */
  assert_true(find_tmp(dir, tmp, sizeof tmp));
  fd = open(tmp, O_WRONLY | O_CLOEXEC);
  assert_true(fd >= 0);
  write_at(fd, 12345, "S");
  close(fd);

  pid_t pid = dh_start(out, args);
  assert_int_equal(dh_wait(pid, 120000), 0);
  json_t *task = out_line_with(out, "task");
  assert_non_null(task);
  assert_string_equal(json_string_value(json_object_get(task, "state")), "failed");
  const char *msg = json_string_value(json_object_get(json_object_get(task, "error"), "message"));
  assert_non_null(msg);
  if (!strstr(msg, "failed verification")) fail_msg("error: %s", msg);
  /* Nothing put in place, and the bad partial file is gone. */
  assert_int_equal(access(dst, F_OK), -1);
  assert_false(find_tmp(dir, tmp, sizeof tmp));
  json_decref(task);
  dh_rmdir(dir);
}

/* ------------------------------------------------------------ download */

static pid_t g_srv = -1;
static int g_srv_in = -1;
static unsigned g_port;

static int start_server(void **state) {
  (void)state;
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0) _exit(126);
    execl(APEX_HTTP_SERVER, "http_test_server", (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  g_srv = pid;
  g_srv_in = in[1];
  char line[32] = "";
  size_t n = 0;
  while (n + 1 < sizeof line && !strchr(line, '\n')) {
    struct pollfd p = {.fd = out[0], .events = POLLIN};
    if (poll(&p, 1, 10000) <= 0) break;
    ssize_t r = read(out[0], line + n, sizeof line - 1 - n);
    if (r <= 0) break;
    n += (size_t)r;
    line[n] = '\0';
  }
  close(out[0]);
  g_port = (unsigned)strtoul(line, NULL, 10);
  return g_port ? 0 : -1;
}

static int stop_server(void **state) {
  (void)state;
  if (g_srv_in >= 0) close(g_srv_in);
  if (g_srv > 0) {
    int st;
    waitpid(g_srv, &st, 0);
  }
  return 0;
}

static size_t collect(char *data, size_t size, size_t nmemb, void *user) {
  char *buf = user;
  size_t have = strlen(buf), n = size * nmemb;
  if (have + n >= 96) return 0;
  memcpy(buf + have, data, n);
  buf[have + n] = '\0';
  return n;
}

/* The body bytes the server handed out under key so far. */
static uint64_t served(const char *key) {
  char u[128], body[96] = "";
  snprintf(u, sizeof u, "http://127.0.0.1:%u/count?key=%s", g_port, key);
  CURL *e = curl_easy_init();
  assert_non_null(e);
  curl_easy_setopt(e, CURLOPT_URL, u);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, body);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  assert_int_equal(curl_easy_perform(e), CURLE_OK);
  curl_easy_cleanup(e);
  unsigned long n = 0;
  long long span = 0;
  unsigned long long bytes = 0;
  assert_int_equal(sscanf(body, "%lu %lld %llu", &n, &span, &bytes), 3);
  return bytes;
}

#define DL_SIZE (8 * MIB)
#define DL_CHUNK (64 * 1024)

static void test_download_killed_half_way_resumes_with_a_range_request(void **state) {
  (void)state;
  char dir[256], store[512], path[512], out[512], url[256];
  dh_tmpdir(dir, sizeof dir, "dl");
  snprintf(store, sizeof store, "%s/tasks.db", dir);
  snprintf(path, sizeof path, "%s/file.bin", dir);
  snprintf(out, sizeof out, "%s/host.out", dir);
  snprintf(url, sizeof url, "http://127.0.0.1:%u/slow/%llu?chunk=%u&interval_ms=5&key=dl", g_port,
           (unsigned long long)DL_SIZE, (unsigned)DL_CHUNK);
  const char *args[] = {store, APEX_PLUGIN_BUILD_DIR, "download", url, path, "1", NULL};

  uint64_t at_kill = run_until(out, args, DL_SIZE / 2);
  /* Let the server notice the closed connection before counting. */
  nap_ms(100);
  uint64_t before = served("dl");
  assert_true(before >= at_kill);

  pid_t pid = dh_start(out, args);
  assert_int_equal(dh_wait(pid, 120000), 0);
  json_t *task = out_line_with(out, "task");
  assert_non_null(task);
  assert_string_equal(json_string_value(json_object_get(task, "state")), "succeeded");
  json_t *r = json_object_get(task, "result");
  uint64_t from = (uint64_t)json_integer_value(json_object_get(r, "resumed_from"));
  assert_int_equal(json_integer_value(json_object_get(r, "bytes")), (json_int_t)DL_SIZE);
  assert_true(from > 0 && from <= at_kill + MIB && from + 2 * MIB >= at_kill);
  uint64_t after = served("dl");
  print_message("killed at %llu KiB, resumed from %llu KiB; the server sent %llu KiB after\n",
                (unsigned long long)(at_kill / 1024), (unsigned long long)(from / 1024),
                (unsigned long long)((after - before) / 1024));
  /* Only the rest was asked for and sent (a chunk or two of slack: what
   * the server had handed out for the killed connection as it went). */
  assert_true(after - before >= DL_SIZE - from - 2 * DL_CHUNK);
  assert_true(after - before <= DL_SIZE - from);

  /* The pattern byte(i) = i % 251, as the server makes it. */
  unsigned char *want = malloc(DL_SIZE);
  assert_non_null(want);
  for (uint64_t i = 0; i < DL_SIZE; i++) want[i] = (unsigned char)(i % 251);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  assert_true(fd >= 0);
  unsigned char *got = malloc(DL_SIZE + 1);
  assert_non_null(got);
  size_t n = 0;
  for (ssize_t k; (k = read(fd, got + n, DL_SIZE + 1 - n)) > 0;) n += (size_t)k;
  close(fd);
  assert_int_equal(n, DL_SIZE);
  assert_memory_equal(got, want, DL_SIZE);
  free(got);
  free(want);
  json_decref(task);
  dh_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_copy_of_a_gib_killed_half_way_copies_only_the_rest),
      cmocka_unit_test(test_copy_resumed_onto_a_changed_partial_file_fails_verification),
      cmocka_unit_test(test_download_killed_half_way_resumes_with_a_range_request),
  };
  return cmocka_run_group_tests(tests, start_server, stop_server);
}
