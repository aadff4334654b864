/* Shared helpers of the durable-task tests that kill a host and restart it
 * (test_durable_crash.c, test_durable_resume.c): a temporary folder, the
 * durable_host program (tests/support/durable_host.c, APEX_DURABLE_HOST)
 * started with posix_spawn, its stdout in a file the test reads, waits
 * bounded by generous deadlines (a host still running past one is killed
 * and the test fails), and reading a file's lines. Single-threaded.
 * Include after cmocka.h and integration/harness.h. */
#ifndef APEX_TEST_DURABLE_HARNESS_H
#define APEX_TEST_DURABLE_HARNESS_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* A fresh temporary folder (mkdtemp under $TMPDIR or /tmp) in dir. */
static inline void dh_tmpdir(char *dir, size_t len, const char *tag) {
  const char *base = getenv("TMPDIR");
  snprintf(dir, len, "%s/apex-%s-XXXXXX", base && *base ? base : "/tmp", tag);
  assert_non_null(mkdtemp(dir));
}

/* Removes dir and what is in it (the store's owner-lock folder too). */
static inline void dh_rmdir(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char p[4096];
      int k = snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      if (k < 0 || (size_t)k >= sizeof p) continue; /* not one of ours */
      struct stat st;
      if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) dh_rmdir(p);
      else (void)unlink(p);
    }
    closedir(d);
  }
  (void)rmdir(dir);
}

/* Starts durable_host with args (NULL-terminated, after argv[0]), its
 * stdout written to out (truncated), stderr shared with the test.
 * Returns: its pid. */
static inline pid_t dh_start(const char *out, const char *const *args) {
  char *argv[32];
  size_t n = 0;
  argv[n++] = (char *)APEX_DURABLE_HOST;
  for (; args[n - 1] && n < 31; n++) argv[n] = (char *)args[n - 1];
  argv[n] = NULL;
  posix_spawn_file_actions_t fa;
  assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
  assert_int_equal(posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, out,
                                                    O_WRONLY | O_CREAT | O_TRUNC, 0644),
                   0);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, APEX_DURABLE_HOST, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  assert_int_equal(rc, 0);
  return pid;
}

/* Returns: 1 and *code (exit status, or 128 + signal) if pid has ended,
 * else 0. */
static inline int dh_ended(pid_t pid, int *code) {
  int st = 0;
  pid_t r = waitpid(pid, &st, WNOHANG);
  assert_true(r >= 0);
  if (r == 0) return 0;
  *code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return 1;
}

/* Waits up to ms for pid to end. Returns: its code; a host still running
 * then is killed and the test fails. */
static inline int dh_wait(pid_t pid, int64_t ms) {
  int code = -1;
  int64_t end = now_ms() + ms;
  while (!dh_ended(pid, &code)) {
    if (now_ms() > end) {
      kill(pid, SIGKILL);
      (void)waitpid(pid, NULL, 0);
      fail_msg("durable_host (pid %d) still running after %lld ms", (int)pid, (long long)ms);
    }
    nap_ms(2);
  }
  return code;
}

/* SIGKILL, then reap. */
static inline void dh_kill(pid_t pid) {
  kill(pid, SIGKILL);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
}

/* Returns: the whole of path (malloc'd, NUL-terminated; free it), "" for a
 * missing file. */
static inline char *dh_slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&buf, &len);
  assert_non_null(mem);
  if (f) {
    char chunk[65536];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) fwrite(chunk, 1, k, mem);
    fclose(f);
  }
  fclose(mem);
  return buf;
}

/* Returns: the number of lines of path that contain needle. */
static inline size_t dh_count_lines(const char *path, const char *needle) {
  char *s = dh_slurp(path);
  size_t n = 0;
  for (char *line = s, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    if (!nl) break; /* a line still being written */
    *nl = '\0';
    if (strstr(line, needle)) n++;
  }
  free(s);
  return n;
}

#endif
