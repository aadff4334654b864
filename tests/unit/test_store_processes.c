/* Two processes on one SQLite store (docs/store.md, "Two processes on one
 * file"): a manager in a child process holds a durable task; while the
 * child lives, a manager here takes nothing from it; once the child is
 * killed (SIGKILL: no chance to clean up, its lease still has 30 s to run)
 * its owner lock is gone with it and recovery takes the task at once, and
 * applies the rules (its action is neither idempotent nor resumable: it
 * ends interrupted, never run twice). Tests plugin: durable_kit. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "apex/apex.h"

#define KIT APEX_TEST_PLUGIN_DIR "/durable_kit.so"

static char g_path[256], g_uri[300];

static void rm_all(void) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s-wal' '%s-shm' '%s.owners'", g_path, g_path, g_path,
           g_path);
  if (system(cmd) != 0) {
  }
}

static apex_manager_t *manager(const char *owner) {
  apex_manager_config_t c;
  apex_manager_config_init(&c);
  c.workers = 2;
  c.store = g_uri;
  c.store_owner = owner;
  c.shutdown_grace_ms = 50;
  apex_manager_t *m = NULL;
  if (apex_manager_new(&c, &m) != APEX_OK) return NULL;
  if (apex_manager_load(m, KIT, NULL) != APEX_OK) return NULL;
  return m;
}

/* The child: runs a durable `hold` task, says so on fd, then waits to be
 * killed. Never returns. */
static void child(int fd) {
  apex_manager_t *m = manager("child");
  if (!m) _exit(2);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.durable = 1;
  apex_task_t *t = NULL;
  if (apex_manager_submit(m, "durable_kit", "hold", NULL, &o, &t, NULL) != APEX_OK) _exit(3);
  while (apex_task_state(t) != APEX_TASK_RUNNING) usleep(1000);
  uint64_t id = apex_task_id(t);
  if (write(fd, &id, sizeof id) != (ssize_t)sizeof id) _exit(4);
  for (;;) pause();
}

static void test_a_killed_owner_is_recovered_at_once_a_live_one_is_not(void **state) {
  (void)state;
  snprintf(g_path, sizeof g_path, "%s/procs_%d.db", APEX_TEST_BIN_DIR, (int)getpid());
  snprintf(g_uri, sizeof g_uri, "sqlite:%s", g_path);
  rm_all();
  int p[2];
  assert_int_equal(pipe(p), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    child(p[1]);
  }
  close(p[1]);
  uint64_t id = 0;
  ssize_t n = read(p[0], &id, sizeof id);
  close(p[0]);
  if (n != (ssize_t)sizeof id) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("the child did not start its task");
  }
  apex_manager_t *m = manager("parent");
  assert_non_null(m);
  size_t got = 9;
  assert_int_equal(apex_manager_recover(m, &got, NULL), APEX_OK);
  assert_int_equal(got, 0); /* the child lives: its task is its own */
  json_t *o = NULL;
  assert_int_equal(apex_manager_task_info(m, id, &o, NULL), APEX_OK);
  assert_string_equal(json_string_value(json_object_get(o, "state")), "running");
  json_decref(o);

  assert_int_equal(kill(pid, SIGKILL), 0);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(apex_manager_recover(m, &got, NULL), APEX_OK);
  assert_int_equal(got, 1); /* at once: its lock died with it, its lease did not */
  assert_int_equal(apex_manager_task_info(m, id, &o, NULL), APEX_OK);
  assert_string_equal(json_string_value(json_object_get(o, "state")), "failed");
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(o, "error"), "code")), "interrupted");
  json_decref(o);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  rm_all();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_killed_owner_is_recovered_at_once_a_live_one_is_not),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
