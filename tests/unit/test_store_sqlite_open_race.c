/* Several processes opening one new SQLite store at the same moment
 * (workers started together on a fresh file): each opens it, none is
 * refused. Two ways it failed (src/store/sqlite.c): the schema check read
 * the file's application_id, version and table count one statement at a
 * time, so a process that created the tables between those reads was seen
 * as "not an Apex task store (application_id 0x0)"; and turning WAL on
 * answered "database is locked" at once while another process did it,
 * without waiting for the busy timeout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "store/store.h"

enum { ROUNDS = 30, PROCS = 4 };

static void rm_db(const char *p) {
  char x[300];
  unlink(p);
  snprintf(x, sizeof x, "%s-wal", p);
  unlink(x);
  snprintf(x, sizeof x, "%s-shm", p);
  unlink(x);
}

/* A child: waits on the start pipe, opens, says why it failed on stderr,
 * exits 0 when the open succeeded. */
static void child(const char *path, int start_fd) {
  char c;
  if (read(start_fd, &c, 1) != 0) _exit(3); /* EOF: go */
  apex__store_t *s = NULL;
  apex_error_t *err = NULL;
  int rc = apex__store_open(path, &s, &err);
  if (rc != APEX_OK) {
    fprintf(stderr, "open: %s\n", err ? apex_error_message(err) : "(no error)");
    _exit(1);
  }
  uint64_t first = 0;
  rc = s->ops->alloc_ids(s, 1, &first, &err);
  s->ops->close(s);
  _exit(rc == APEX_OK && first > 0 ? 0 : 2);
}

static void test_processes_opening_one_new_file_together_all_succeed(void **state) {
  (void)state;
  char path[256];
  int failed = 0;
  for (int r = 0; r < ROUNDS; r++) {
    snprintf(path, sizeof path, "%s/sq_race_%d_%d.db", APEX_TEST_BIN_DIR, (int)getpid(), r);
    rm_db(path);
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pids[PROCS];
    for (int i = 0; i < PROCS; i++) {
      pids[i] = fork();
      assert_true(pids[i] >= 0);
      if (pids[i] == 0) {
        close(p[1]);
        child(path, p[0]);
      }
    }
    close(p[0]);
    close(p[1]); /* every child's read returns now */
    for (int i = 0; i < PROCS; i++) {
      int st = 0;
      assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed++;
    }
    rm_db(path);
  }
  assert_int_equal(failed, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_processes_opening_one_new_file_together_all_succeed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
