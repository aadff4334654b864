/* The crash test of the shared queue (issue 14's "done when"): three `apex
 * worker` processes serve one store (an SQLite file, or
 * APEX_TEST_STORE_URI) holding N_TASKS example_async.long_task tasks that
 * checkpoint every step; a random worker is killed with SIGKILL KILLS
 * times and restarted each time (under a new owner id: a new worker). The
 * lease is short (LEASE_S), so a killed worker's tasks are taken over by
 * the others once it expired. Checked at the end:
 * - every task has exactly one recorded outcome, `succeeded` with its full
 *   result;
 * - no step recorded as completed ran twice: long_task logs a step "done"
 *   only after its checkpoint returned (durable), so each (task, step) is
 *   logged done at most once; and each attempt starts from the last step
 *   known saved (or one past it: a kill between the checkpoint's commit
 *   and its log line), never earlier;
 * - a killed worker's tasks resumed elsewhere: the survivors' logs name
 *   tasks "taken over from" owners that were killed, and some of those
 *   resumed past step 0.
 * Sizes: 300 tasks of 20 steps of 50 ms (a second each) on 3 x 8 slots, 20
 * kills spread over the run by counting steps; about 25 s plain, the work
 * being mostly sleeps and commits. */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "integration/harness.h"
#include "integration/durable_harness.h"
#include "integration/worker_harness.h"

#define N_TASKS 300
#define STEPS 20
#define STEP_MS 50
#define KILLS 20
#define LEASE_S "1.5"
#define N_WORKERS 3
#define MAX_GENS (KILLS + N_WORKERS + 1)

typedef struct task_log {
  uint64_t id;
  int max_done, last_start;
  int done[STEPS + 1];
  int starts, resumes, ends;
} task_log_t;

static task_log_t *find(task_log_t *t, size_t n, uint64_t id) {
  for (size_t i = 0; i < n; i++)
    if (t[i].id == id) return &t[i];
  fail_msg("the step log names task %llu, which the test did not enqueue", (unsigned long long)id);
  return NULL;
}

static void test_three_workers_survive_twenty_sigkills(void **state) {
  (void)state;
  char dir[256], store[512], log[512];
  dh_tmpdir(dir, sizeof dir, "wcrash");
  wh_store(store, sizeof store, dir);
  /* The store made before the workers start: several processes creating
   * one new SQLite file at once can see it half made. */
  apex_manager_t *m = wh_submitter(store);
  snprintf(log, sizeof log, "%s/steps.log", dir);
  srand((unsigned)time(NULL) ^ (unsigned)getpid());

  /* Each worker generation: its output file and owner id. */
  char out[MAX_GENS][512], owner[MAX_GENS][64];
  int killed[MAX_GENS] = {0};
  pid_t slot_pid[N_WORKERS];
  int slot_gen[N_WORKERS];
  int gens = 0;
  for (int w = 0; w < N_WORKERS; w++) {
    int g = gens++;
    snprintf(out[g], sizeof out[g], "%s/g%d.out", dir, g);
    snprintf(owner[g], sizeof owner[g], "crash-g%d", g);
    const char *args[] = {"--concurrency", "8", "--lease", LEASE_S, "--owner", owner[g], NULL};
    slot_pid[w] = wh_start(out[g], store, args);
    slot_gen[w] = g;
  }
  for (int w = 0; w < N_WORKERS; w++) wh_wait_ready(out[slot_gen[w]]);

  apex_store_t *s = apex_manager_store(m);
  uint64_t *ids = calloc(N_TASKS, sizeof *ids);
  task_log_t *tl = calloc(N_TASKS, sizeof *tl);
  assert_non_null(ids);
  assert_non_null(tl);
  for (int i = 0; i < N_TASKS; i++) {
    ids[i] = wh_enqueue(m, STEPS, STEP_MS, log);
    tl[i].id = ids[i];
  }

  int kills = 0;
  size_t total_steps = (size_t)N_TASKS * STEPS;
  for (; kills < KILLS; kills++) {
    /* A random number of steps (20 to 150) done since the last kill:
     * spreads the kills over the run. */
    size_t want = dh_count_lines(log, " done ") + 20 + (size_t)(rand() % 131);
    if (want >= total_steps * 9 / 10) break; /* the run is nearly over */
    int64_t end = now_ms() + 90000;
    while (dh_count_lines(log, " done ") < want) {
      if (now_ms() > end) fail_msg("kill %d: no progress in 90 s", kills);
      nap_ms(5);
    }
    int w = rand() % N_WORKERS;
    dh_kill(slot_pid[w]);
    killed[slot_gen[w]] = 1;
    int g = gens++;
    snprintf(out[g], sizeof out[g], "%s/g%d.out", dir, g);
    snprintf(owner[g], sizeof owner[g], "crash-g%d", g);
    const char *args[] = {"--concurrency", "8", "--lease", LEASE_S, "--owner", owner[g], NULL};
    slot_pid[w] = wh_start(out[g], store, args);
    slot_gen[w] = g;
  }
  if (kills < KILLS / 2) fail_msg("only %d kills landed mid-run", kills);
  if (!wh_await_all(s, ids, N_TASKS, 180000)) fail_msg("the tasks did not all end in 180 s");
  for (int w = 0; w < N_WORKERS; w++) {
    int code = wh_stop(slot_pid[w], 30000);
    if (code != 0) fail_msg("worker g%d exited %d:\n%s", slot_gen[w], code, dh_slurp(out[slot_gen[w]]));
  }

  /* Exactly one recorded outcome per task: succeeded, with the result. */
  for (int i = 0; i < N_TASKS; i++) {
    json_t *full = NULL;
    assert_int_equal(apex_store_get(s, ids[i], &full, NULL), APEX_OK);
    const char *st = json_string_value(json_object_get(full, "state"));
    if (!st || strcmp(st, "succeeded") != 0) {
      char *dump = json_dumps(full, JSON_COMPACT);
      fail_msg("a task did not succeed: %s", dump ? dump : "?");
    }
    assert_int_equal(json_integer_value(json_object_get(json_object_get(full, "result"), "steps")),
                     STEPS);
    json_decref(full);
  }

  /* The step log, in the order it was written. */
  char *text = dh_slurp(log);
  int resumed_tasks = 0;
  for (char *line = text, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    assert_non_null(nl);
    *nl = '\0';
    unsigned long long id;
    char what[16];
    int step;
    unsigned attempt;
    assert_int_equal(sscanf(line, "%llu %15s %d %u", &id, what, &step, &attempt), 4);
    task_log_t *x = find(tl, N_TASKS, (uint64_t)id);
    if (strcmp(what, "start") == 0) {
      int known = x->max_done > x->last_start ? x->max_done : x->last_start;
      if (step != known && step != known + 1)
        fail_msg("task %llu started at step %d; step %d was known saved", id, step, known);
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
  for (int i = 0; i < N_TASKS; i++) {
    if (tl[i].starts < 1 || tl[i].ends < 1)
      fail_msg("task %llu: %d starts, %d ends logged", (unsigned long long)tl[i].id, tl[i].starts,
               tl[i].ends);
    if (tl[i].resumes) resumed_tasks++;
  }

  /* Killed workers' tasks were taken over by other workers, once their
   * leases expired (the claim is conditional on that). */
  int takeovers = 0;
  for (int g = 0; g < gens; g++) {
    char *o = dh_slurp(out[g]);
    for (char *line = o, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
      *nl = '\0';
      const char *p = strstr(line, "taken over from crash-g");
      int from = -1;
      if (p && sscanf(p, "taken over from crash-g%d#", &from) == 1 && from >= 0 && from < gens &&
          from != g) {
        if (!killed[from])
          fail_msg("g%d took a task over from g%d, which was not killed: %s", g, from, line);
        takeovers++;
      }
    }
    free(o);
  }
  print_message("%d kills, %d take-overs after a lease expired, %d of %d tasks resumed from a "
                "checkpoint\n",
                kills, takeovers, resumed_tasks, N_TASKS);
  assert_true(takeovers > 0);
  assert_true(resumed_tasks > 0);
  free(ids);
  free(tl);
  apex_manager_destroy(m, 0);
  dh_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_three_workers_survive_twenty_sigkills),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
