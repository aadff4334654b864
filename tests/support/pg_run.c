/* pg_run COMMAND [ARGS...]: runs COMMAND with APEX_TEST_STORE_URI naming a
 * PostgreSQL server started for it (tests/support/pg_fixture.h), stopped
 * afterwards; or with the server APEX_TEST_PG_URI names. Exits with the
 * command's status; 1, with the reason, when the server cannot be started
 * (a test that needs it fails: it never passes without it). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pg_fixture.h"

static pid_t g_child = -1;

static void forward(int sig) {
  if (g_child > 0) kill(g_child, sig);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: pg_run COMMAND [ARGS...]\n");
    return 2;
  }
  pg_fixture_t f;
  char why[4096];
  if (pg_fixture_start(&f, why, sizeof why) != 0) {
    fprintf(stderr, "pg_run: FAILED: %s\n", why);
    return 1;
  }
  fprintf(stderr, "pg_run: %s%s\n", f.uri, f.external ? " (APEX_TEST_PG_URI)" : "");
  signal(SIGTERM, forward);
  signal(SIGINT, forward);
  g_child = fork();
  if (g_child == 0) {
    setenv("APEX_TEST_STORE_URI", f.uri, 1);
    execv(argv[1], argv + 1);
    fprintf(stderr, "pg_run: %s: %s\n", argv[1], strerror(errno));
    _exit(127);
  }
  int st = 0, code = 1;
  if (g_child < 0) {
    fprintf(stderr, "pg_run: fork: %s\n", strerror(errno));
  } else {
    while (waitpid(g_child, &st, 0) < 0 && errno == EINTR) {
    }
    code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  pg_fixture_stop(&f);
  return code;
}
