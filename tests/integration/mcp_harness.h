/* Shared helpers of the `apex mcp` tests: spawn the built apex (APEX_CLI_PATH)
 * as `apex mcp ...` with pipes on stdin and stdout (stderr inherited),
 * write JSON-RPC lines, read them back with a generous deadline, and close
 * or reap the child (killed past the deadline, so none outlives its test).
 * Single-threaded. Include after cmocka.h and integration/harness.h. */
#ifndef APEX_TEST_MCP_HARNESS_H
#define APEX_TEST_MCP_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

extern char **environ;

#define MCP_DEADLINE_MS 30000

typedef struct mcp_child {
  pid_t pid;
  int in, out;           /* our ends: its stdin, its stdout */
  char *buf;
  size_t len, cap;
  json_t *notes;         /* notifications read while awaiting a response */
} mcp_child_t;

/* Starts `apex mcp --plugin-path TESTPLUGINS --plugin mcp_kit EXTRA...`
 * (extra: NULL-terminated). */
static inline mcp_child_t *mcp_start(const char *const *extra) {
  mcp_child_t *c = calloc(1, sizeof *c);
  assert_non_null(c);
  int pin[2], pout[2];
  assert_int_equal(pipe2(pin, O_CLOEXEC), 0);
  assert_int_equal(pipe2(pout, O_CLOEXEC), 0);
  const char *argv[32] = {APEX_CLI_PATH, "mcp", "--plugin-path", APEX_TEST_PLUGIN_DIR,
                          "--plugin", "mcp_kit"};
  int n = 6;
  for (size_t i = 0; extra && extra[i]; i++) argv[n++] = extra[i];
  argv[n] = NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pin[0], 0);
  posix_spawn_file_actions_adddup2(&fa, pout[1], 1);
  assert_int_equal(posix_spawn(&c->pid, APEX_CLI_PATH, &fa, NULL, (char *const *)argv, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  close(pin[0]);
  close(pout[1]);
  c->in = pin[1];
  c->out = pout[0];
  c->notes = json_array();
  signal(SIGPIPE, SIG_IGN);
  return c;
}

static inline void mcp_write(mcp_child_t *c, const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(c->in, s, n);
    if (w < 0 && errno == EINTR) continue;
    assert_true(w > 0);
    s += w;
    n -= (size_t)w;
  }
}

/* Sends one line (a newline is added). */
static inline void mcp_send(mcp_child_t *c, const char *fmt, ...) {
  char line[8192];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  assert_true(n > 0 && n < (int)sizeof line - 1);
  line[n++] = '\n';
  mcp_write(c, line, (size_t)n);
}

/* Returns: the next line as JSON (new reference), or NULL at the end of
 * its stdout or after timeout_ms. */
static inline json_t *mcp_read(mcp_child_t *c, int64_t timeout_ms) {
  int64_t end = now_ms() + timeout_ms;
  for (;;) {
    char *nl = c->buf ? memchr(c->buf, '\n', c->len) : NULL;
    if (nl) {
      size_t l = (size_t)(nl - c->buf);
      json_error_t je;
      json_t *v = json_loadb(c->buf, l, 0, &je);
      if (!v) fail_msg("not JSON from apex mcp: %.*s (%s)", (int)l, c->buf, je.text);
      memmove(c->buf, nl + 1, c->len - l - 1);
      c->len -= l + 1;
      return v;
    }
    int64_t left = end - now_ms();
    if (left <= 0) return NULL;
    struct pollfd p = {.fd = c->out, .events = POLLIN};
    if (poll(&p, 1, (int)left) <= 0) continue;
    if (c->cap - c->len < 65536) {
      c->cap = c->cap ? c->cap * 2 : 131072;
      c->buf = realloc(c->buf, c->cap);
      assert_non_null(c->buf);
    }
    ssize_t r = read(c->out, c->buf + c->len, c->cap - c->len);
    if (r <= 0) return NULL;
    c->len += (size_t)r;
  }
}

/* Returns: the response whose id is the integer id (new reference), the
 * notifications read on the way appended to c->notes; fails the test past
 * the deadline. */
static inline json_t *mcp_response(mcp_child_t *c, json_int_t id) {
  for (;;) {
    json_t *v = mcp_read(c, MCP_DEADLINE_MS);
    if (!v) fail_msg("no response %lld from apex mcp", (long long)id);
    json_t *vid = json_object_get(v, "id");
    if (!json_object_get(v, "method") && json_is_integer(vid) && json_integer_value(vid) == id)
      return v;
    if (json_object_get(v, "method")) json_array_append(c->notes, v);
    else fail_msg("unexpected message: %s", json_dumps(v, JSON_COMPACT));
    json_decref(v);
  }
}

/* The error code of response r (0 if it is a result). */
static inline json_int_t mcp_error_code(const json_t *r) {
  return json_integer_value(json_object_get(json_object_get(r, "error"), "code"));
}

/* Sends initialize (protocol version ver) and notifications/initialized. */
static inline json_t *mcp_init(mcp_child_t *c, const char *ver) {
  mcp_send(c, "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{"
              "\"protocolVersion\":\"%s\",\"capabilities\":{},\"clientInfo\":{\"name\":\"t\","
              "\"version\":\"1\"}}}", ver);
  json_t *r = mcp_response(c, 0);
  assert_non_null(json_object_get(r, "result"));
  mcp_send(c, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}");
  return r;
}

/* A ping answered: the server still serves. */
static inline void mcp_assert_serving(mcp_child_t *c, json_int_t id) {
  mcp_send(c, "{\"jsonrpc\":\"2.0\",\"id\":%lld,\"method\":\"ping\"}", (long long)id);
  json_t *r = mcp_response(c, id);
  assert_true(json_is_object(json_object_get(r, "result")));
  json_decref(r);
}

/* Closes its stdin and reaps it. Returns: its exit code (128 + signal if
 * it had to be killed past the deadline, which also fails the test). */
static inline int mcp_finish(mcp_child_t *c) {
  if (c->in >= 0) close(c->in);
  c->in = -1;
  int64_t end = now_ms() + MCP_DEADLINE_MS;
  int st = 0;
  while (waitpid(c->pid, &st, WNOHANG) == 0) {
    if (now_ms() > end) {
      kill(c->pid, SIGKILL);
      waitpid(c->pid, &st, 0);
      fail_msg("apex mcp did not exit after its stdin closed");
    }
    nap_ms(5);
  }
  close(c->out);
  free(c->buf);
  json_decref(c->notes);
  free(c);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

#endif
