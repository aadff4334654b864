/* Workers ride through a PostgreSQL restart (issue 14's "done when"): a
 * server of the test's own (tests/support/pg_fixture.c), three `apex
 * worker` processes serving it, 120 checkpointing example_async.long_task
 * tasks; the server is restarted (pg_ctl restart -m fast: every connection
 * cut) twice in the middle of the run. The workers lose their connections,
 * stop claiming, back off and reconnect; the tasks they hold run on (their
 * checkpoints fail while the server is away: such an attempt fails and is
 * retried, or its outcome waits to be written). Checked at the end: every
 * task has exactly one outcome, succeeded; no step logged done ran again;
 * the workers exit 0 on SIGTERM and said the store failed and came back.
 * Needs the fixture's server (APEX_TEST_PG_URI cannot be restarted: then it
 * fails, saying so). */
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
#include "support/pg_fixture.h"

#define N_TASKS 120
#define STEPS 10
#define STEP_MS 50

static void test_workers_survive_server_restarts(void **state) {
  (void)state;
  pg_fixture_t f;
  char why[4096];
  if (pg_fixture_start(&f, why, sizeof why) != 0) fail_msg("PostgreSQL: %s", why);
  char dir[256], log[512], out[3][512];
  dh_tmpdir(dir, sizeof dir, "wpgrestart");
  snprintf(log, sizeof log, "%s/steps.log", dir);
  apex_manager_t *m = wh_submitter(f.uri); /* the schema made before the workers start */
  /* Retries for the attempts whose checkpoint fails while the server is
   * away: the retry resumes from the last checkpoint that was saved. */
  const char *args[] = {"--concurrency", "16", "--lease", "20", NULL};
  pid_t pid[3];
  for (int w = 0; w < 3; w++) {
    snprintf(out[w], sizeof out[w], "%s/w%d.out", dir, w);
    pid[w] = wh_start(out[w], f.uri, args);
  }
  for (int w = 0; w < 3; w++) wh_wait_ready(out[w]);
  uint64_t ids[N_TASKS];
  apex_retry_policy_t rp = {.max_attempts = 20, .initial_interval_s = 0.2,
                            .backoff_coefficient = 1.5, .max_interval_s = 2};
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &rp;
  for (int i = 0; i < N_TASKS; i++) {
    json_t *p = json_pack("{s:i, s:i, s:s}", "steps", STEPS, "step_ms", STEP_MS, "step_log", log);
    apex_error_t *err = NULL;
    int rc = apex_manager_enqueue(m, "example_async", "long_task", p, &o, &ids[i], &err);
    if (rc != APEX_OK) fail_msg("enqueue: %s", err ? apex_error_message(err) : apex_strerror(rc));
    json_decref(p);
  }
  apex_manager_destroy(m, 0); /* its connection would only be cut too */
  size_t total = (size_t)N_TASKS * STEPS;
  for (int r = 0; r < 2; r++) {
    size_t want = total * (size_t)(r + 1) / 4;
    int64_t end = now_ms() + 90000;
    while (dh_count_lines(log, " done ") < want) {
      if (now_ms() > end) fail_msg("restart %d: no progress", r);
      nap_ms(10);
    }
    if (pg_fixture_restart(&f, why, sizeof why) != 0) fail_msg("restart: %s", why);
  }
  apex_store_t *s = NULL;
  apex_error_t *err = NULL;
  if (apex_store_open(f.uri, &s, &err) != APEX_OK) fail_msg("open: %s", apex_error_message(err));
  if (!wh_await_all(s, ids, N_TASKS, 120000)) fail_msg("the tasks did not all end in 120 s");
  for (int i = 0; i < N_TASKS; i++) {
    const char *st = wh_state(s, ids[i]);
    if (strcmp(st, "succeeded") != 0) {
      json_t *j = NULL;
      (void)apex_store_get(s, ids[i], &j, NULL);
      char *d = j ? json_dumps(j, JSON_COMPACT) : NULL;
      fail_msg("task %llu ended %s: %s", (unsigned long long)ids[i], st, d ? d : "?");
    }
  }
  /* Each (task, step) logged done at most once. */
  static int done[N_TASKS + 1][STEPS + 1];
  char *text = dh_slurp(log);
  for (char *line = text, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
    unsigned long long id;
    int step;
    unsigned att;
    if (sscanf(line, "%llu done %d %u", &id, &step, &att) != 3) continue;
    int k = -1;
    for (int i = 0; i < N_TASKS; i++)
      if (ids[i] == id) k = i;
    assert_true(k >= 0 && step >= 1 && step <= STEPS);
    if (++done[k][step] > 1) fail_msg("task %llu: step %d ran again after it was done", id, step);
  }
  free(text);
  /* The restarts were felt: a worker's loop found the store failing (and
   * then answering again), or a checkpoint waited for it. */
  size_t loop_down = 0, loop_up = 0, cp_waits = 0;
  for (int w = 0; w < 3; w++) {
    int code = wh_stop(pid[w], 30000);
    if (code != 0) fail_msg("worker %d exited %d:\n%s", w, code, dh_slurp(out[w]));
    loop_down += dh_count_lines(out[w], "worker: the store failed");
    loop_up += dh_count_lines(out[w], "the store answers again");
    cp_waits += dh_count_lines(out[w], "checkpoint waits for the store");
  }
  print_message("the serve loops saw the store fail %zu times and answer %zu; %zu checkpoints "
                "waited for it\n",
                loop_down, loop_up, cp_waits);
  assert_true(loop_down + cp_waits >= 1);
  assert_true(loop_up >= loop_down); /* each outage's end was seen */
  apex_store_close(s);
  pg_fixture_stop(&f);
  dh_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_workers_survive_server_restarts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
