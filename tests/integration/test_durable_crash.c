/* The crash test of durable tasks (issue 13's "done when"): a host on an
 * SQLite store (tests/support/durable_host.c) runs 200
 * example_async.long_task tasks that checkpoint every step, and is killed
 * with SIGKILL at random moments 20 times in a row, restarted each time;
 * then it runs to the end. Checked afterwards:
 * - every task has exactly one recorded outcome: the store holds exactly
 *   the 200 tasks (the idempotency keys kept a restart's submits from
 *   adding any), each `succeeded` with its full result;
 * - no step the plugin recorded as completed ran twice: long_task logs a
 *   step "done" only after its checkpoint returned (durable), so each
 *   (task, step) is logged done at most once;
 * - resumed tasks continued from their checkpoints: each attempt logs the
 *   step it starts from, which is the last step known saved (logged done,
 *   or started from before), or one past it (a kill between the checkpoint's
 *   commit and the log line), never earlier; and resumes past step 0 did
 *   happen.
 * The moments: most rounds wait for a random number (1 to 80) of steps to
 * be logged done since the last kill, which spreads the kills over the
 * run; every fourth round kills after a random 0-40 ms instead, during
 * startup, recovery or the submits.
 * Sizes: 200 tasks of 10 steps of 10 ms on 16 workers, about 15 s plain;
 * the same under the sanitizers (the work is mostly sleeping and commits). */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "integration/harness.h"
#include "integration/durable_harness.h"

#define N_TASKS 200
#define STEPS 10
#define STEP_MS "10"
#define KILLS 20

/* What the step log says about one task. */
typedef struct task_log {
  uint64_t id;
  int max_done;         /* highest step logged done so far (0: none) */
  int last_start;       /* the step the last attempt started from */
  int done[STEPS + 1];  /* times step i was logged done */
  int starts, resumes;  /* attempts logged; of them, starting past 0 */
  int ends;
} task_log_t;

static task_log_t *find(task_log_t *t, size_t *n, uint64_t id) {
  for (size_t i = 0; i < *n; i++)
    if (t[i].id == id) return &t[i];
  /* A task the store does not hold would show here. */
  if (*n >= N_TASKS) fail_msg("the step log names a task %llu past the %d stored", (unsigned long long)id, N_TASKS);
  memset(&t[*n], 0, sizeof t[*n]);
  t[*n].id = id;
  return &t[(*n)++];
}

static void test_two_hundred_tasks_survive_twenty_sigkills(void **state) {
  (void)state;
  char dir[256], store[512], log[512], out[512], dirplug[512];
  dh_tmpdir(dir, sizeof dir, "crash");
  snprintf(store, sizeof store, "%s/tasks.db", dir);
  snprintf(log, sizeof log, "%s/steps.log", dir);
  snprintf(out, sizeof out, "%s/host.out", dir);
  snprintf(dirplug, sizeof dirplug, "%s", APEX_PLUGIN_BUILD_DIR);
  char n_tasks[16], steps[16];
  snprintf(n_tasks, sizeof n_tasks, "%d", N_TASKS);
  snprintf(steps, sizeof steps, "%d", STEPS);
  const char *args[] = {store, dirplug, "long", n_tasks, steps, STEP_MS, log, NULL};
  srand((unsigned)time(NULL) ^ (unsigned)getpid());

  int kills = 0;
  for (int round = 0; round < KILLS; round++) {
    size_t before = dh_count_lines(log, " done ");
    pid_t pid = dh_start(out, args);
    int code = -1, ended = 0;
    if (round % 4 == 3) {
      nap_ms(rand() % 41);
      ended = dh_ended(pid, &code);
    } else {
      size_t want = before + 1 + (size_t)(rand() % 80);
      int64_t end = now_ms() + 60000;
      while (dh_count_lines(log, " done ") < want && !(ended = dh_ended(pid, &code))) {
        assert_true(now_ms() < end);
        nap_ms(3);
      }
      if (!ended) ended = dh_ended(pid, &code);
    }
    if (ended) {
      /* It finished every task before this kill: no more kills to make. */
      if (code != 0) fail_msg("round %d: the host exited %d; its output:\n%s", round, code, dh_slurp(out));
      break;
    }
    dh_kill(pid);
    kills++;
  }
  /* The last run: everything left, to the end. */
  pid_t pid = dh_start(out, args);
  int last = dh_wait(pid, 180000);
  if (last != 0) fail_msg("the last run exited %d; its output:\n%s", last, dh_slurp(out));
  if (kills < KILLS / 2) fail_msg("only %d kills landed mid-run", kills); /* the run was too short */

  /* Exactly one recorded outcome per task, all of them succeeded. */
  apex_store_t *s = NULL;
  assert_int_equal(apex_store_open(store, &s, NULL), APEX_OK);
  apex_store_filter_t f = APEX_STORE_FILTER_INIT;
  f.limit = 1000;
  json_t *page = NULL;
  assert_int_equal(apex_store_list(s, &f, &page, NULL), APEX_OK);
  json_t *tasks = json_object_get(page, "tasks");
  if (json_array_size(tasks) != N_TASKS)
    fail_msg("the store holds %zu tasks, want %d", json_array_size(tasks), N_TASKS);
  assert_true(json_is_null(json_object_get(page, "next")));
  size_t i;
  json_t *t;
  json_array_foreach(tasks, i, t) {
    const char *st = json_string_value(json_object_get(t, "state"));
    if (!st || strcmp(st, "succeeded") != 0) {
      char *dump = json_dumps(t, JSON_COMPACT);
      fail_msg("a task did not succeed: %s", dump ? dump : "?");
    }
    json_t *full = NULL;
    assert_int_equal(apex_store_get(s, (uint64_t)json_integer_value(json_object_get(t, "id")),
                                    &full, NULL),
                     APEX_OK);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(full, "result"), "steps")),
                     STEPS);
    json_decref(full);
  }
  json_decref(page);
  apex_store_close(s);

  /* The step log, line by line, in the order it was written. */
  task_log_t *tl = calloc(N_TASKS, sizeof *tl);
  assert_non_null(tl);
  size_t n = 0;
  char *text = dh_slurp(log);
  int resumed_tasks = 0;
  for (char *line = text, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    assert_non_null(nl); /* every line whole: one write(2) each */
    *nl = '\0';
    unsigned long long id;
    char what[16];
    int step;
    unsigned attempt;
    assert_int_equal(sscanf(line, "%llu %15s %d %u", &id, what, &step, &attempt), 4);
    task_log_t *x = find(tl, &n, (uint64_t)id);
    if (strcmp(what, "start") == 0) {
      /* From its checkpoint: the last step known saved (logged done, or
       * started from by an earlier attempt), or one past it: the attempt
       * before may have saved one more step and been killed before its log
       * line (the commit done, the handler not yet woken). */
      int known = x->max_done > x->last_start ? x->max_done : x->last_start;
      if (step != known && step != known + 1)
        fail_msg("task %llu started at step %d; step %d was known saved (logged done %d, last "
                 "start %d)",
                 id, step, known, x->max_done, x->last_start);
      x->last_start = step;
      x->starts++;
      if (step > 0) x->resumes++;
    } else if (strcmp(what, "done") == 0) {
      assert_true(step >= 1 && step <= STEPS);
      if (++x->done[step] > 1) fail_msg("task %llu: step %d ran again after it was done", id, step);
      if (step > x->max_done) x->max_done = step;
    } else {
      assert_string_equal(what, "end");
      x->ends++;
    }
  }
  free(text);
  assert_int_equal(n, N_TASKS);
  for (i = 0; i < n; i++) {
    if (tl[i].starts < 1 || tl[i].ends < 1)
      fail_msg("task %llu: %d starts, %d ends logged", (unsigned long long)tl[i].id, tl[i].starts,
               tl[i].ends);
    if (tl[i].resumes) resumed_tasks++;
  }
  assert_true(resumed_tasks > 0); /* the kills cut tasks off mid-run */
  print_message("%d kills, %d of %d tasks resumed from a checkpoint\n", kills, resumed_tasks,
                N_TASKS);
  free(tl);
  dh_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_two_hundred_tasks_survive_twenty_sigkills),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
