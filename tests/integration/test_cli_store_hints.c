/* What the apex command tells a user about which store it read (cli/detach.c,
 * cli/tasks.c; docs/durable.md, "From the command line"):
 * - `apex run --detach --store PATH` on a terminal prints a how-to that
 *   names PATH (`apex watch ID --store PATH`, quoted for the shell when it
 *   needs to be): `apex watch ID` alone reads the default store, which
 *   does not have the task, and said only "no task ID in the store";
 * - `show`, `cancel` and `watch` of an id the store lacks name the store
 *   they read, and say when it was the default one;
 * - a store the library refuses (here a file that is not a database) is
 *   reported with the library's reason, naming the file once: `tasks`
 *   named it twice, and `run --detach` (whose runner logs to runner.log)
 *   said only "the task store failed";
 * - `run --detach` with a store in a missing folder names the file it could
 *   not open (the runner's log beside the store), where it said "cannot
 *   start the runner: No such file or directory".
 * Each test has a temporary folder that is also XDG_STATE_HOME (so the
 * default store is there too, never in the user's home). Single-threaded. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/cli_harness.h"

static char g_dir[256];

static int setup(void **state) {
  (void)state;
  const char *base = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/apex-hints-XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(g_dir)) return -1;
  setenv("XDG_STATE_HOME", g_dir, 1);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_detach_hint_names_the_store_it_used(void **state) {
  (void)state;
  char store[512], quoted[600];
  snprintf(store, sizeof store, "%s/my tasks.db", g_dir); /* a space: needs quotes */
  snprintf(quoted, sizeof quoted, "--store '%s'`", store);
  char name[128];
  int master = pty_open(name, sizeof name);
  char *argv[] = {(char *)APEX_CLI_PATH, "run", "example_async.long_task", "--param", "steps=1",
                  "--param", "step_ms=10", "--detach", "--store", store, NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  proc_wait(&p);
  const char *out = buf_str(&p.out);
  if (p.code != 0) fail_msg("exit %d; output:\n%s", p.code, out);
  const char *hint = strstr(out, "follow it with `apex watch ");
  if (!hint) fail_msg("no how-to in:\n%s", out);
  long id = strtol(hint + strlen("follow it with `apex watch "), NULL, 10);
  assert_true(id > 0);
  if (!strstr(hint, quoted)) fail_msg("the how-to does not name the store as %s:\n%s", quoted, out);
  proc_free(&p);
  /* What it says works: the task is there, and ends. */
  char ids[32];
  snprintf(ids, sizeof ids, "%ld", id);
  run(&p, "watch", ids, "--store", store, "--json", NULL);
  if (p.code != 0) fail_msg("watch: exit %d\n%s\n%s", p.code, buf_str(&p.out), buf_str(&p.err));
  proc_free(&p);
}

static void test_detach_hint_without_store_is_plain(void **state) {
  (void)state;
  char name[128];
  int master = pty_open(name, sizeof name);
  char *argv[] = {(char *)APEX_CLI_PATH, "run", "example_async.long_task", "--param", "steps=1",
                  "--param", "step_ms=10", "--detach", NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  proc_wait(&p);
  const char *out = buf_str(&p.out);
  if (p.code != 0) fail_msg("exit %d; output:\n%s", p.code, out);
  const char *hint = strstr(out, "follow it with `apex watch ");
  if (!hint) fail_msg("no how-to in:\n%s", out);
  long id = strtol(hint + strlen("follow it with `apex watch "), NULL, 10);
  assert_null(strstr(hint, "--store"));
  proc_free(&p);
  char ids[32];
  snprintf(ids, sizeof ids, "%ld", id);
  run(&p, "watch", ids, "--json", NULL);
  if (p.code != 0) fail_msg("watch: exit %d\n%s\n%s", p.code, buf_str(&p.out), buf_str(&p.err));
  proc_free(&p);
}

static void test_unknown_id_names_the_store(void **state) {
  (void)state;
  char store[512], want[700], dflt[700];
  snprintf(store, sizeof store, "%s/other.db", g_dir);
  snprintf(want, sizeof want, "no task 999 in the store '%s'", store);
  snprintf(dflt, sizeof dflt, "no task 999 in the store '%s/apex/tasks.db' (the default", g_dir);
  const char *cmds[] = {"show", "cancel", "watch"};
  for (size_t i = 0; i < 3; i++) {
    proc_t p;
    run(&p, cmds[i], "999", "--store", store, NULL);
    assert_int_equal(p.code, 2);
    if (!strstr(buf_str(&p.err), want)) fail_msg("%s: %s", cmds[i], buf_str(&p.err));
    proc_free(&p);
    run(&p, cmds[i], "999", NULL);
    assert_int_equal(p.code, 2);
    if (!strstr(buf_str(&p.err), dflt)) fail_msg("%s (default store): %s", cmds[i], buf_str(&p.err));
    proc_free(&p);
  }
}

/* Returns: how many times needle occurs in hay. */
static int count(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
  return n;
}

static void test_refused_store_is_reported_with_its_reason(void **state) {
  (void)state;
  char store[512], named[600];
  snprintf(store, sizeof store, "%s/notes.txt", g_dir);
  FILE *f = fopen(store, "w");
  assert_non_null(f);
  fputs("these are notes, not a database; apex must not touch them\n", f);
  assert_int_equal(fclose(f), 0);
  snprintf(named, sizeof named, "store '%s'", store);
  proc_t p;
  run(&p, "tasks", "--store", store, NULL);
  assert_int_equal(p.code, 1);
  if (count(buf_str(&p.err), named) != 1 || !strstr(buf_str(&p.err), "not a database"))
    fail_msg("tasks: %s", buf_str(&p.err));
  proc_free(&p);
  const char *modes[] = {"--detach", "--json"}; /* through a runner, and in the foreground */
  for (size_t i = 0; i < 2; i++) {
    run(&p, "run", "example_async.long_task", "--param", "steps=1", "--store", store, modes[i],
        NULL);
    assert_int_equal(p.code, 1);
    const char *err = buf_str(&p.err);
    if (!strstr(err, "cannot start the runtime: store '") || !strstr(err, "not a database"))
      fail_msg("run %s: %s", modes[i], err);
    proc_free(&p);
  }
  /* And the file is as it was. */
  f = fopen(store, "r");
  assert_non_null(f);
  char line[128] = "";
  assert_non_null(fgets(line, sizeof line, f));
  fclose(f);
  assert_string_equal(line, "these are notes, not a database; apex must not touch them\n");
}

static void test_detach_into_a_missing_folder_names_the_file(void **state) {
  (void)state;
  char store[512], want[700];
  snprintf(store, sizeof store, "%s/missing/tasks.db", g_dir);
  snprintf(want, sizeof want, "cannot open the runner's log '%s/missing/runner.log'", g_dir);
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "steps=1", "--store", store, "--detach",
      NULL);
  assert_int_equal(p.code, 1);
  const char *err = buf_str(&p.err);
  if (!strstr(err, want) || !strstr(err, "No such file or directory")) fail_msg("%s", err);
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_detach_hint_names_the_store_it_used, setup, teardown),
      cmocka_unit_test_setup_teardown(test_detach_hint_without_store_is_plain, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_id_names_the_store, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_store_is_reported_with_its_reason, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_detach_into_a_missing_folder_names_the_file, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
