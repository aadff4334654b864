/* Several `apex worker` processes serving one store (docs/workers.md):
 * - three workers share the queue: every task runs to exactly one outcome,
 *   each step once, each task claimed once (the claims the workers report
 *   add up to the tasks), and the work is spread;
 * - SIGTERM drains: a worker holding long tasks stops claiming, gives them
 *   back at the drain deadline (their leases end at once: the lease here is
 *   60 s, so only the release can make them move), exits 0, and another
 *   worker finishes them from their checkpoints;
 * - a cancel from another process (apex_store_cancel here, what `apex
 *   cancel` calls) reaches a task a worker runs within about a second;
 * - `apex run --enqueue` writes a task that a worker then runs;
 * - --limit holds across workers (the store counts the running tasks).
 * The store is an SQLite file, or APEX_TEST_STORE_URI. */
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

#define N_SHARED 60

static void test_three_workers_share_the_queue(void **state) {
  (void)state;
  char dir[256], store[512], log[512], out[3][512];
  dh_tmpdir(dir, sizeof dir, "workers");
  wh_store(store, sizeof store, dir);
  /* The store made before the workers start: several processes creating
   * one new SQLite file at once can see it half made. */
  apex_manager_t *m = wh_submitter(store);
  snprintf(log, sizeof log, "%s/steps.log", dir);
  const char *args[] = {"--concurrency", "4", "--lease", "5", NULL};
  pid_t pid[3];
  for (int w = 0; w < 3; w++) {
    snprintf(out[w], sizeof out[w], "%s/w%d.out", dir, w);
    pid[w] = wh_start(out[w], store, args);
  }
  for (int w = 0; w < 3; w++) wh_wait_ready(out[w]);
  uint64_t ids[N_SHARED];
  for (int i = 0; i < N_SHARED; i++) ids[i] = wh_enqueue(m, 3, 20, log);
  apex_store_t *s = apex_manager_store(m);
  if (!wh_await_all(s, ids, N_SHARED, 90000)) fail_msg("the tasks did not all end in 90 s");
  for (int i = 0; i < N_SHARED; i++) {
    assert_string_equal(wh_state(s, ids[i]), "succeeded");
    assert_int_equal(wh_count_task_lines(log, ids[i], "start"), 1);
    assert_int_equal(wh_count_task_lines(log, ids[i], "done"), 3);
    assert_int_equal(wh_count_task_lines(log, ids[i], "end"), 1);
  }
  long long claimed = 0;
  int busy = 0;
  for (int w = 0; w < 3; w++) {
    assert_int_equal(wh_stop(pid[w], 30000), 0);
    json_t *st = wh_last_line(out[w], "\"event\":\"stopped\"");
    if (!st) fail_msg("worker %d wrote no stopped line:\n%s", w, dh_slurp(out[w]));
    long long c = json_integer_value(json_object_get(st, "claimed"));
    claimed += c;
    busy += c > 0;
    assert_int_equal(json_integer_value(json_object_get(st, "rescued")), 0);
    assert_int_equal(json_integer_value(json_object_get(st, "discarded")), 0);
    assert_int_equal(json_integer_value(json_object_get(st, "held")), 0);
    json_decref(st);
  }
  assert_int_equal(claimed, N_SHARED); /* each task claimed once */
  assert_true(busy >= 2);              /* the queue was shared */
  apex_manager_destroy(m, 0);
  dh_rmdir(dir);
}

static void test_sigterm_drain_gives_tasks_back(void **state) {
  (void)state;
  char dir[256], store[512], log[512], outa[512], outb[512];
  dh_tmpdir(dir, sizeof dir, "drain");
  wh_store(store, sizeof store, dir);
  /* The store made before the workers start: several processes creating
   * one new SQLite file at once can see it half made. */
  apex_manager_t *m = wh_submitter(store);
  snprintf(log, sizeof log, "%s/steps.log", dir);
  snprintf(outa, sizeof outa, "%s/a.out", dir);
  snprintf(outb, sizeof outb, "%s/b.out", dir);
  /* A lease far longer than the test: only a release moves the tasks. */
  const char *args[] = {"--concurrency", "4", "--lease", "60", "--drain", "0.3", NULL};
  pid_t a = wh_start(outa, store, args);
  wh_wait_ready(outa);
  apex_store_t *s = apex_manager_store(m);
  uint64_t ids[4];
  for (int i = 0; i < 4; i++) ids[i] = wh_enqueue(m, 40, 100, log);
  /* All four running on A, each past a checkpoint. */
  int64_t end = now_ms() + 30000;
  for (int i = 0; i < 4; i++)
    while (wh_count_task_lines(log, ids[i], "done") < 1) {
      if (now_ms() > end) fail_msg("task %llu made no step on A", (unsigned long long)ids[i]);
      nap_ms(10);
    }
  assert_int_equal(wh_stop(a, 20000), 0);
  json_t *st = wh_last_line(outa, "\"event\":\"stopped\"");
  assert_non_null(st);
  assert_int_equal(json_integer_value(json_object_get(st, "released")), 4);
  assert_int_equal(json_integer_value(json_object_get(st, "held")), 0);
  json_decref(st);
  /* Given back: queued, held by none, checkpoint kept; not ended. */
  for (int i = 0; i < 4; i++) {
    json_t *j = NULL;
    assert_int_equal(apex_store_get(s, ids[i], &j, NULL), APEX_OK);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "queued");
    assert_null(json_object_get(j, "owner"));
    assert_non_null(json_object_get(j, "checkpoint"));
    json_decref(j);
  }
  int64_t t0 = now_ms();
  pid_t b = wh_start(outb, store, args);
  if (!wh_await_all(s, ids, 4, 45000)) fail_msg("B did not finish the tasks A gave back");
  /* Well before A's 60 s leases would have expired. */
  assert_true(now_ms() - t0 < 40000);
  for (int i = 0; i < 4; i++) {
    assert_string_equal(wh_state(s, ids[i]), "succeeded");
    assert_int_equal(wh_count_task_lines(log, ids[i], "start"), 2);
    assert_int_equal(wh_count_task_lines(log, ids[i], "done"), 40); /* each step once */
  }
  /* B resumed from the checkpoints: each task's second start is past
   * step 0 (its first was at 0). */
  char *text = dh_slurp(log);
  int resumed = 0;
  for (char *line = text, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
    unsigned long long id;
    int step;
    unsigned att;
    if (sscanf(line, "%llu start %d %u", &id, &step, &att) == 3 && step > 0) resumed++;
  }
  free(text);
  assert_int_equal(resumed, 4);
  assert_int_equal(wh_stop(b, 20000), 0);
  apex_manager_destroy(m, 0);
  dh_rmdir(dir);
}

static void test_cancel_from_another_process_is_prompt(void **state) {
  (void)state;
  char dir[256], store[512], log[512], out[512];
  dh_tmpdir(dir, sizeof dir, "wcancel");
  wh_store(store, sizeof store, dir);
  /* The store made before the workers start: several processes creating
   * one new SQLite file at once can see it half made. */
  apex_manager_t *m = wh_submitter(store);
  snprintf(log, sizeof log, "%s/steps.log", dir);
  snprintf(out, sizeof out, "%s/w.out", dir);
  const char *args[] = {"--concurrency", "2", NULL};
  pid_t w = wh_start(out, store, args);
  wh_wait_ready(out);
  /* Two steps of 30 s: no checkpoint (which would also tell it of the
   * cancel) before the cancel; only the worker's poll of the store can. */
  uint64_t id = wh_enqueue(m, 2, 30000, log);
  int64_t end = now_ms() + 30000;
  while (wh_count_task_lines(log, id, "start") < 1) {
    if (now_ms() > end) fail_msg("the task did not start");
    nap_ms(10);
  }
  /* Another process's store handle: as `apex cancel` does it. */
  apex_store_t *s = NULL;
  assert_int_equal(apex_store_open(store, &s, NULL), APEX_OK);
  int64_t t0 = now_ms();
  assert_int_equal(apex_store_cancel(s, id, NULL, NULL), APEX_OK);
  while (strcmp(wh_state(s, id), "cancelled") != 0) {
    if (now_ms() - t0 > 10000) fail_msg("not cancelled after 10 s: %s", wh_state(s, id));
    nap_ms(5);
  }
  int64_t took = now_ms() - t0;
  print_message("cancel reached the worker's task in %lld ms\n", (long long)took);
  /* The keeper looks every 0.5 s: a second, with room for a loaded machine. */
  assert_true(took < 2000);
  apex_store_close(s);
  assert_int_equal(wh_stop(w, 20000), 0);
  apex_manager_destroy(m, 0);
  dh_rmdir(dir);
}

static void test_run_enqueue_then_worker_runs_it(void **state) {
  (void)state;
  char dir[256], store[512], out[512], cmd[2048];
  dh_tmpdir(dir, sizeof dir, "enq");
  wh_store(store, sizeof store, dir);
  snprintf(out, sizeof out, "%s/w.out", dir);
  snprintf(cmd, sizeof cmd,
           "'%s' run example_async.long_task --store '%s' --plugin-path '%s' --enqueue "
           "--param steps=2 --param step_ms=10 --json",
           APEX_CLI_PATH, store, APEX_PLUGIN_BUILD_DIR);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  char line[1024] = "";
  assert_non_null(fgets(line, sizeof line, p));
  assert_int_equal(pclose(p), 0);
  json_t *ev = json_loads(line, 0, NULL);
  assert_non_null(ev);
  assert_string_equal(json_string_value(json_object_get(ev, "event")), "submitted");
  uint64_t id = (uint64_t)json_integer_value(json_object_get(ev, "task"));
  json_decref(ev);
  apex_store_t *s = NULL;
  assert_int_equal(apex_store_open(store, &s, NULL), APEX_OK);
  /* Written, held by none, not run: no runner was started. */
  assert_string_equal(wh_state(s, id), "queued");
  pid_t w = wh_start(out, store, NULL);
  if (!wh_await_all(s, &id, 1, 30000)) fail_msg("the worker did not run the enqueued task");
  assert_string_equal(wh_state(s, id), "succeeded");
  assert_int_equal(wh_stop(w, 20000), 0);
  apex_store_close(s);
  dh_rmdir(dir);
}

/* --limit holds across workers: two workers of 4 slots each, a limit of 2
 * on the action; the store never shows more than 2 of its tasks running,
 * and does show 2 (the limit is not a queue of one). */
static void test_limit_holds_across_workers(void **state) {
  (void)state;
  char dir[256], store[512], log[512], out[2][512];
  dh_tmpdir(dir, sizeof dir, "wlimit");
  wh_store(store, sizeof store, dir);
  /* The store made before the workers start: several processes creating
   * one new SQLite file at once can see it half made. */
  apex_manager_t *m = wh_submitter(store);
  snprintf(log, sizeof log, "%s/steps.log", dir);
  const char *args[] = {"--concurrency", "4", "--limit", "example_async.long_task=2", NULL};
  pid_t pid[2];
  for (int w = 0; w < 2; w++) {
    snprintf(out[w], sizeof out[w], "%s/w%d.out", dir, w);
    pid[w] = wh_start(out[w], store, args);
  }
  for (int w = 0; w < 2; w++) wh_wait_ready(out[w]);
  apex_store_t *s = apex_manager_store(m);
  uint64_t ids[8];
  for (int i = 0; i < 8; i++) ids[i] = wh_enqueue(m, 4, 100, log);
  int max_running = 0;
  int64_t end = now_ms() + 60000;
  for (;;) {
    /* The running ones counted from one list, a single query and so one
     * snapshot of the store: eight reads one after another could see a
     * task still running and, a read later, the one that replaced it. */
    int running = wh_count_running(s, "example_async", "long_task");
    int open = 0;
    for (int i = 0; i < 8; i++) open += !wh_terminal(wh_state(s, ids[i]));
    if (running > max_running) max_running = running;
    if (!open) break;
    if (now_ms() > end) fail_msg("the limited tasks did not all end in 60 s");
    nap_ms(10);
  }
  for (int i = 0; i < 8; i++) assert_string_equal(wh_state(s, ids[i]), "succeeded");
  print_message("at most %d of the limited tasks ran at once\n", max_running);
  assert_true(max_running <= 2);
  assert_int_equal(max_running, 2);
  for (int w = 0; w < 2; w++) assert_int_equal(wh_stop(pid[w], 20000), 0);
  apex_manager_destroy(m, 0);
  dh_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_three_workers_share_the_queue),
      cmocka_unit_test(test_sigterm_drain_gives_tasks_back),
      cmocka_unit_test(test_cancel_from_another_process_is_prompt),
      cmocka_unit_test(test_run_enqueue_then_worker_runs_it),
      cmocka_unit_test(test_limit_holds_across_workers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
