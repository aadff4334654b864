/* Shared helpers of the tests that run the apex command (test_cli.c,
 * test_cli_contract.c): spawning the built binary (APEX_CLI_PATH) with
 * posix_spawn, stdout and stderr on pipes read with poll (or on a
 * pseudo-terminal), waiting for text on either stream, reaping the child
 * (killed and failed past a generous deadline, so none outlives its test),
 * and reading its JSON Lines. Single-threaded. Include after cmocka.h and
 * integration/harness.h. */
#ifndef APEX_TEST_CLI_HARNESS_H
#define APEX_TEST_CLI_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <jansson.h>

extern char **environ;

#define DEADLINE_MS 30000


/* ------------------------------------------------------------ child runs */

typedef struct buf {
  char *p;
  size_t len, cap;
} buf_t;

typedef struct proc {
  pid_t pid;
  int fds[2];  /* stdout, stderr read ends (or the pty master, -1) */
  buf_t out, err;
  int64_t start_ms, end_ms;
  int code;    /* exit status, or 128 + signal */
  int signaled; /* killed by a signal (code is then 128 + it) */
} proc_t;

static inline void buf_add(buf_t *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    b->p = realloc(b->p, cap);
    assert_non_null(b->p);
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static inline const char *buf_str(const buf_t *b) { return b->p ? b->p : ""; }

static inline void proc_free(proc_t *p) {
  free(p->out.p);
  free(p->err.p);
}

/* Builds argv: APEX_CLI_PATH, then args up to NULL. */
static inline char **make_argv(const char *first, va_list ap) {
  size_t n = 2, cap = 64;
  char **argv = calloc(cap, sizeof *argv);
  assert_non_null(argv);
  argv[0] = (char *)APEX_CLI_PATH;
  argv[1] = (char *)first;
  if (first) {
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
      assert_true(n + 1 < cap);
      argv[n++] = (char *)a;
    }
  }
  return argv;
}

/* Starts the CLI with stdout/stderr on pipes (pty_master < 0) or on the
 * pty whose slave is pty_name. */
static inline void proc_spawn(proc_t *p, char **argv, const char *pty_name, int pty_master) {
  memset(p, 0, sizeof *p);
  posix_spawn_file_actions_t fa;
  assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
  int out[2] = {-1, -1}, err[2] = {-1, -1};
  if (pty_name) {
    assert_int_equal(posix_spawn_file_actions_addopen(&fa, 0, pty_name, O_RDWR, 0), 0);
    assert_int_equal(posix_spawn_file_actions_adddup2(&fa, 0, 1), 0);
    assert_int_equal(posix_spawn_file_actions_adddup2(&fa, 0, 2), 0);
    p->fds[0] = pty_master;
    p->fds[1] = -1;
  } else {
    assert_int_equal(pipe2(out, O_CLOEXEC), 0);
    assert_int_equal(pipe2(err, O_CLOEXEC), 0);
    assert_int_equal(posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0), 0);
    assert_int_equal(posix_spawn_file_actions_adddup2(&fa, out[1], 1), 0);
    assert_int_equal(posix_spawn_file_actions_adddup2(&fa, err[1], 2), 0);
    p->fds[0] = out[0];
    p->fds[1] = err[0];
  }
  p->start_ms = now_ms();
  int rc = posix_spawn(&p->pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (!pty_name) {
    close(out[1]);
    close(err[1]);
  }
  assert_int_equal(rc, 0);
}

static inline void proc_start(proc_t *p, const char *first, ...) {
  va_list ap;
  va_start(ap, first);
  char **argv = make_argv(first, ap);
  va_end(ap);
  proc_spawn(p, argv, NULL, -1);
  free(argv);
}

/* Reads what is ready within timeout_ms. Returns: 1 while a stream is open. */
static inline int proc_pump(proc_t *p, int timeout_ms) {
  struct pollfd pfd[2];
  int n = 0, idx[2];
  for (int i = 0; i < 2; i++) {
    if (p->fds[i] < 0) continue;
    pfd[n] = (struct pollfd){.fd = p->fds[i], .events = POLLIN};
    idx[n++] = i;
  }
  if (n == 0) return 0;
  int r = poll(pfd, (nfds_t)n, timeout_ms);
  if (r < 0 && errno == EINTR) return 1;
  assert_true(r >= 0);
  for (int k = 0; k < n; k++) {
    if (!pfd[k].revents) continue;
    char chunk[4096];
    ssize_t got = read(pfd[k].fd, chunk, sizeof chunk);
    if (got > 0) {
      buf_add(idx[k] == 0 ? &p->out : &p->err, chunk, (size_t)got);
    } else if (got == 0 || errno != EINTR) {
      /* EOF, or EIO from a pty master once the child is gone */
      close(p->fds[idx[k]]);
      p->fds[idx[k]] = -1;
    }
  }
  return p->fds[0] >= 0 || p->fds[1] >= 0;
}

/* Pumps until b (p->out or p->err) holds needle. Returns: 1 if seen, 0 at
 * EOF/deadline. */
static inline int proc_buf_until(proc_t *p, const buf_t *b, const char *needle, int timeout_ms) {
  int64_t end = now_ms() + timeout_ms;
  while (!strstr(buf_str(b), needle)) {
    int64_t left = end - now_ms();
    if (left <= 0 || !proc_pump(p, (int)left)) return strstr(buf_str(b), needle) != NULL;
  }
  return 1;
}

/* Pumps until stdout holds needle. Returns: 1 if seen, 0 at EOF/deadline. */
static inline int proc_read_until(proc_t *p, const char *needle, int timeout_ms) {
  return proc_buf_until(p, &p->out, needle, timeout_ms);
}

/* Pumps until stderr holds needle. Returns: 1 if seen, 0 at EOF/deadline. */
static inline int proc_err_until(proc_t *p, const char *needle, int timeout_ms) {
  return proc_buf_until(p, &p->err, needle, timeout_ms);
}

/* Reads to EOF and reaps the child; kills it and fails past the deadline. */
static inline void proc_wait(proc_t *p) {
  int64_t end = p->start_ms + DEADLINE_MS;
  while (now_ms() < end && proc_pump(p, 100)) {
  }
  int status = 0;
  pid_t r;
  while ((r = waitpid(p->pid, &status, WNOHANG)) == 0 && now_ms() < end) usleep(1000);
  if (r == 0) {
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
    fail_msg("apex did not exit within %d ms; stdout:\n%s\nstderr:\n%s", DEADLINE_MS,
             buf_str(&p->out), buf_str(&p->err));
  }
  assert_int_equal(r, p->pid);
  p->end_ms = now_ms();
  for (int i = 0; i < 2; i++)
    if (p->fds[i] >= 0) close(p->fds[i]);
  p->code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  p->signaled = WIFSIGNALED(status);
}

static inline void run(proc_t *p, const char *first, ...) {
  va_list ap;
  va_start(ap, first);
  char **argv = make_argv(first, ap);
  va_end(ap);
  proc_spawn(p, argv, NULL, -1);
  free(argv);
  proc_wait(p);
}

/* ---------------------------------------------------------- JSON Lines */

/* Returns: every stdout line parsed, as an array; fails on a line that is
 * not a JSON object with "event" and "task". */
static inline json_t *json_lines(const proc_t *p) {
  json_t *lines = json_array();
  assert_non_null(lines);
  const char *s = buf_str(&p->out);
  while (*s) {
    const char *nl = strchr(s, '\n');
    assert_non_null(nl); /* every line ends in a newline */
    json_error_t jerr;
    json_t *j = json_loadb(s, (size_t)(nl - s), 0, &jerr);
    if (!j) fail_msg("not a JSON line: %.*s (%s)", (int)(nl - s), s, jerr.text);
    if (!json_is_object(j) || !json_is_string(json_object_get(j, "event")) ||
        !json_object_get(j, "task"))
      fail_msg("line without event/task: %.*s", (int)(nl - s), s);
    json_array_append_new(lines, j);
    s = nl + 1;
  }
  return lines;
}

static inline size_t count_event(const json_t *lines, const char *event) {
  size_t i, n = 0;
  json_t *j;
  json_array_foreach(lines, i, j) n += strcmp(json_string_value(json_object_get(j, "event")), event) == 0;
  return n;
}

/* Returns: the one result line (borrowed); fails unless there is exactly one
 * and it is the last line. */
static inline json_t *the_result(const json_t *lines) {
  assert_int_equal(count_event(lines, "result"), 1);
  json_t *last = json_array_get(lines, json_array_size(lines) - 1);
  assert_string_equal(json_string_value(json_object_get(last, "event")), "result");
  return last;
}

static inline const char *error_code(const json_t *result) {
  const char *c = json_string_value(json_object_get(json_object_get(result, "error"), "code"));
  assert_non_null(c);
  return c;
}

static inline void assert_contains(const char *hay, const char *needle) {
  if (!strstr(hay, needle)) fail_msg("expected '%s' in:\n%s", needle, hay);
}

/* A run that fails before a task exists: exit 2, stderr naming the problem,
 * and (stdout being a pipe, so JSON mode) one result line with task null. */
static inline void assert_pre_task_error(const proc_t *p, const char *stderr_needle, const char *code) {
  if (p->code != 2) fail_msg("exit %d, want 2; stderr: %s", p->code, buf_str(&p->err));
  assert_contains(buf_str(&p->err), "apex: ");
  assert_contains(buf_str(&p->err), stderr_needle);
  json_t *lines = json_lines(p);
  json_t *r = the_result(lines);
  assert_true(json_is_null(json_object_get(r, "task")));
  assert_string_equal(json_string_value(json_object_get(r, "state")), "failed");
  assert_string_equal(error_code(r), code);
  json_decref(lines);
}

/* ---------------------------------------------------------- terminals */

/* Opens a 100x30 pseudo-terminal. Returns: the master fd; its slave's path
 * in name, for proc_spawn. */
static inline int pty_open(char *name, size_t len) {
  int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  assert_true(master >= 0);
  assert_int_equal(grantpt(master), 0);
  assert_int_equal(unlockpt(master), 0);
  assert_int_equal(ptsname_r(master, name, len), 0);
  struct winsize ws = {.ws_row = 30, .ws_col = 100};
  assert_int_equal(ioctl(master, TIOCSWINSZ, &ws), 0);
  return master;
}

#endif
