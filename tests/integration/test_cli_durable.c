/* End-to-end tests of the apex command's durable tasks: `run --detach`,
 * `tasks`, `show`, `watch`, `cancel` and `resume`, as a user runs them
 * (docs/durable.md). Each test has a store of its own in a temporary
 * folder, which is also XDG_STATE_HOME (so the default store is there
 * too, never in the user's home). A detached runner outlives the command
 * that started it: each test waits for its task to end (watch), or kills
 * it, so none outlives its test. Single-threaded. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/cli_harness.h"

typedef struct fx {
  char dir[256];
  char store[512];
} fx_t;

static int setup(void **state) {
  fx_t *f = calloc(1, sizeof *f);
  if (!f) return -1;
  const char *base = getenv("TMPDIR");
  snprintf(f->dir, sizeof f->dir, "%s/apex-clid-XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(f->dir)) return -1;
  snprintf(f->store, sizeof f->store, "%s/tasks.db", f->dir);
  setenv("XDG_STATE_HOME", f->dir, 1);
  *state = f;
  return 0;
}

static void rm_tree(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    char p[1024];
    int k = snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (k < 0 || (size_t)k >= sizeof p) continue; /* not one of ours */
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_tree(p);
    else unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

/* A detached runner's stderr goes to runner.log beside its store: what a
 * sanitizer would say about it lands there, not in the test's output. */
static void assert_runner_log_clean(const char *dir) {
  char path[600];
  snprintf(path, sizeof path, "%s/runner.log", dir);
  FILE *fp = fopen(path, "r");
  if (!fp) return;
  char line[1024];
  while (fgets(line, sizeof line, fp))
    if (strstr(line, "Sanitizer")) {
      fclose(fp);
      fail_msg("a runner reported: %s (see %s)", line, path);
    }
  fclose(fp);
}

static int teardown(void **state) {
  fx_t *f = *state;
  char sub[600];
  snprintf(sub, sizeof sub, "%s/apex", f->dir);
  assert_runner_log_clean(f->dir);
  assert_runner_log_clean(sub);
  rm_tree(f->dir);
  free(f);
  return 0;
}

/* The one JSON object on p's stdout. */
static json_t *one_object(const proc_t *p) {
  json_error_t jerr;
  json_t *j = json_loads(buf_str(&p->out), 0, &jerr);
  if (!j) fail_msg("not one JSON object: %s (%s); stderr: %s", buf_str(&p->out), jerr.text,
                   buf_str(&p->err));
  return j;
}

/* `apex run ... --detach --store STORE` with the given param; returns the
 * task id and the runner's pid from the "submitted" line. */
static json_int_t detach(fx_t *f, const char *steps, const char *step_ms, pid_t *runner) {
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", steps, "--param", step_ms, "--detach",
      "--store", f->store, NULL);
  if (p.code != 0) fail_msg("exit %d; stderr: %s", p.code, buf_str(&p.err));
  json_t *j = one_object(&p);
  assert_string_equal(json_string_value(json_object_get(j, "event")), "submitted");
  json_int_t id = json_integer_value(json_object_get(j, "task"));
  assert_true(id > 0);
  assert_string_equal(json_string_value(json_object_get(j, "store")), f->store);
  if (runner) *runner = (pid_t)json_integer_value(json_object_get(j, "pid"));
  json_decref(j);
  proc_free(&p);
  return id;
}

/* `apex show ID --json`: the store's object. */
static json_t *show(fx_t *f, json_int_t id) {
  char ids[32];
  snprintf(ids, sizeof ids, "%lld", (long long)id);
  proc_t p;
  run(&p, "show", ids, "--store", f->store, "--json", NULL);
  if (p.code != 0) fail_msg("show: exit %d; stderr: %s", p.code, buf_str(&p.err));
  json_t *j = one_object(&p);
  proc_free(&p);
  return j;
}

static const char *state_of(const json_t *task) {
  return json_string_value(json_object_get(task, "state"));
}

/* Reads the task until pred holds, within ms. */
static json_t *show_until(fx_t *f, json_int_t id, int (*pred)(const json_t *), int64_t ms) {
  int64_t end = now_ms() + ms;
  for (;;) {
    json_t *t = show(f, id);
    if (pred(t)) return t;
    json_decref(t);
    if (now_ms() > end) fail_msg("task %lld: the awaited state never came", (long long)id);
    nap_ms(20);
  }
}

static int past_two_steps(const json_t *t) {
  json_t *cp = json_object_get(t, "checkpoint");
  return strcmp(state_of(t), "running") == 0 &&
         json_integer_value(json_object_get(cp, "step")) >= 2;
}

static int is_running(const json_t *t) { return strcmp(state_of(t), "running") == 0; }

/* ------------------------------------------------------------------ tests */

static void test_detach_returns_an_id_and_the_task_runs_to_its_end(void **state) {
  fx_t *f = *state;
  pid_t runner = 0;
  json_int_t id = detach(f, "steps=5", "step_ms=600", &runner);
  /* It returned with the task submitted and its 3 s of work still ahead. */
  json_t *early = show(f, id);
  const char *st = state_of(early);
  if (strcmp(st, "queued") != 0 && strcmp(st, "running") != 0)
    fail_msg("the task is %s when --detach returned", st);
  json_decref(early);
  assert_true(runner > 0);
  /* The runner is in a session of its own: the shell's end is not its. */
  assert_int_equal(getsid(runner), runner);

  char ids[32];
  snprintf(ids, sizeof ids, "%lld", (long long)id);
  proc_t w;
  run(&w, "watch", ids, "--store", f->store, NULL);
  assert_int_equal(w.code, 0);
  json_t *lines = json_lines(&w);
  json_t *r = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(r, "state")), "succeeded");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "result"), "steps")), 5);
  json_decref(lines);
  proc_free(&w);

  /* apex tasks: one line per task, with id, action, state, progress, age. */
  proc_t l;
  run(&l, "tasks", "--store", f->store, "--json", NULL);
  assert_int_equal(l.code, 0);
  json_t *row = one_object(&l);
  assert_int_equal(json_integer_value(json_object_get(row, "id")), id);
  assert_string_equal(json_string_value(json_object_get(row, "plugin")), "example_async");
  assert_string_equal(json_string_value(json_object_get(row, "action")), "long_task");
  assert_string_equal(json_string_value(json_object_get(row, "state")), "succeeded");
  assert_true(json_real_value(json_object_get(row, "percentage")) == 100.0);
  assert_non_null(json_string_value(json_object_get(row, "age")));
  json_decref(row);
  proc_free(&l);

  /* apex show: all of it, params and result included. */
  json_t *t = show(f, id);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(t, "params"), "steps")), 5);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(t, "result"), "steps")), 5);
  json_decref(t);

  /* The runner exits once its task ended. */
  AWAIT(kill(runner, 0) != 0 && errno == ESRCH, 10000);
}

static void test_tasks_and_show_read_as_text_on_a_terminal_too(void **state) {
  fx_t *f = *state;
  json_int_t id = detach(f, "steps=1", "step_ms=1", NULL);
  char ids[32];
  snprintf(ids, sizeof ids, "%lld", (long long)id);
  proc_t w;
  run(&w, "watch", ids, "--store", f->store, NULL);
  assert_int_equal(w.code, 0);
  proc_free(&w);
  /* A pty, so the table and the text form are what is printed. */
  char name[64];
  int master = pty_open(name, sizeof name);
  char *argv[] = {(char *)APEX_CLI_PATH, "tasks", "--store", f->store, NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  proc_wait(&p);
  assert_int_equal(p.code, 0);
  assert_contains(buf_str(&p.out), "ID");
  assert_contains(buf_str(&p.out), "example_async.long_task");
  assert_contains(buf_str(&p.out), "succeeded");
  assert_contains(buf_str(&p.out), "100.0%");
  proc_free(&p);
}

static void test_cancel_stops_a_detached_task_wherever_it_runs(void **state) {
  fx_t *f = *state;
  pid_t runner = 0;
  json_int_t id = detach(f, "steps=1000", "step_ms=20", &runner);
  json_decref(show_until(f, id, is_running, 20000));
  char ids[32];
  snprintf(ids, sizeof ids, "%lld", (long long)id);
  proc_t c;
  int64_t t0 = now_ms();
  run(&c, "cancel", ids, "--store", f->store, NULL);
  assert_int_equal(c.code, 0);
  proc_free(&c);
  proc_t w;
  run(&w, "watch", ids, "--store", f->store, NULL);
  assert_int_equal(w.code, 130); /* as `apex run` exits for a cancelled task */
  json_t *lines = json_lines(&w);
  assert_string_equal(json_string_value(json_object_get(the_result(lines), "state")),
                      "cancelled");
  json_decref(lines);
  proc_free(&w);
  /* Within about a second of the request (the runner polls the store),
   * give or take a loaded machine; not after its 20 s of work. */
  assert_true(now_ms() - t0 < 5000 + PROMPT_MS);
  AWAIT(kill(runner, 0) != 0 && errno == ESRCH, 10000);
  /* Cancelling it again: it has ended; not an error. */
  run(&c, "cancel", ids, "--store", f->store, NULL);
  assert_int_equal(c.code, 0);
  assert_contains(buf_str(&c.out), "\"already\":true");
  proc_free(&c);
}

static void test_resume_finishes_a_task_whose_runner_was_killed(void **state) {
  fx_t *f = *state;
  pid_t runner = 0;
  json_int_t id = detach(f, "steps=30", "step_ms=30", &runner);
  json_decref(show_until(f, id, past_two_steps, 20000));
  assert_int_equal(kill(runner, SIGKILL), 0);
  AWAIT(kill(runner, 0) != 0 && errno == ESRCH, 10000);

  proc_t r;
  run(&r, "resume", "--store", f->store, NULL);
  if (r.code != 0 || !strstr(buf_str(&r.out), "\"result\""))
    fail_msg("resume: exit %d; stdout: %s; stderr: %s", r.code, buf_str(&r.out), buf_str(&r.err));
  json_t *lines = json_lines(&r);
  json_t *res = the_result(lines);
  assert_int_equal(json_integer_value(json_object_get(res, "task")), id);
  assert_string_equal(json_string_value(json_object_get(res, "state")), "succeeded");
  /* From its checkpoint, not from step 0. */
  json_int_t at = json_integer_value(json_object_get(json_object_get(res, "result"), "resumed_at"));
  assert_true(at >= 2 && at < 30);
  json_decref(lines);
  proc_free(&r);

  /* Nothing left: a second resume has nothing to do. */
  run(&r, "resume", "--store", f->store, NULL);
  assert_int_equal(r.code, 0);
  assert_contains(buf_str(&r.out), "\"tasks\":0");
  proc_free(&r);
}

static void test_ctrl_c_on_a_durable_run_cancels_it_and_the_store_says_so(void **state) {
  fx_t *f = *state;
  proc_t p;
  proc_start(&p, "run", "example_async.long_task", "--param", "steps=1000", "--param",
             "step_ms=20", "--store", f->store, NULL);
  assert_true(proc_read_until(&p, "\"event\":\"progress\"", 20000));
  assert_int_equal(kill(p.pid, SIGINT), 0);
  proc_wait(&p);
  assert_int_equal(p.code, 130);
  json_t *lines = json_lines(&p);
  json_t *r = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(r, "state")), "cancelled");
  json_int_t id = json_integer_value(json_object_get(r, "task"));
  json_decref(lines);
  proc_free(&p);
  /* Recorded as it ended, once: not left `running` for a resume to redo
   * (the process exits as soon as the task ended). */
  json_t *t = show(f, id);
  assert_string_equal(state_of(t), "cancelled");
  json_decref(t);
}

static void test_default_store_is_under_xdg_state_home(void **state) {
  fx_t *f = *state;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "steps=1", "--param", "step_ms=1",
      "--detach", NULL);
  assert_int_equal(p.code, 0);
  json_t *j = one_object(&p);
  char want[600];
  snprintf(want, sizeof want, "%s/apex/tasks.db", f->dir);
  assert_string_equal(json_string_value(json_object_get(j, "store")), want);
  json_int_t id = json_integer_value(json_object_get(j, "task"));
  json_decref(j);
  proc_free(&p);
  char ids[32];
  snprintf(ids, sizeof ids, "%lld", (long long)id);
  run(&p, "watch", ids, NULL); /* the same default */
  assert_int_equal(p.code, 0);
  proc_free(&p);
  struct stat st;
  char dir[600];
  snprintf(dir, sizeof dir, "%s/apex", f->dir);
  assert_int_equal(stat(dir, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0700);
}

static void test_a_bad_detached_run_is_reported_by_the_command_typed(void **state) {
  fx_t *f = *state;
  proc_t p;
  run(&p, "run", "example_async.long_task", "--param", "stepz=5", "--detach", "--store",
      f->store, NULL);
  assert_pre_task_error(&p, "stepz", "invalid_params");
  proc_free(&p);
  run(&p, "run", "no_such_plugin.x", "--detach", "--store", f->store, NULL);
  assert_pre_task_error(&p, "no_such_plugin", "plugin_not_found");
  proc_free(&p);
}

static void test_ids_that_are_not_tasks_exit_2_naming_them(void **state) {
  fx_t *f = *state;
  static const char *const cmds[] = {"show", "cancel", "watch"};
  for (size_t i = 0; i < 3; i++) {
    proc_t p;
    run(&p, cmds[i], "abc", "--store", f->store, NULL);
    assert_int_equal(p.code, 2);
    assert_contains(buf_str(&p.err), "'abc' is not a task ID");
    proc_free(&p);
    run(&p, cmds[i], "4242", "--store", f->store, NULL);
    assert_int_equal(p.code, 2);
    assert_contains(buf_str(&p.err), "no task 4242");
    proc_free(&p);
  }
  proc_t p;
  run(&p, "tasks", "--state", "sleeping", "--store", f->store, NULL);
  assert_int_equal(p.code, 2);
  assert_contains(buf_str(&p.err), "'sleeping' is not a task state");
  proc_free(&p);
  run(&p, "plugins", "--store", f->store, NULL);
  assert_int_equal(p.code, 2);
  assert_contains(buf_str(&p.err), "--store applies only to");
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
      T(test_detach_returns_an_id_and_the_task_runs_to_its_end),
      T(test_tasks_and_show_read_as_text_on_a_terminal_too),
      T(test_cancel_stops_a_detached_task_wherever_it_runs),
      T(test_resume_finishes_a_task_whose_runner_was_killed),
      T(test_ctrl_c_on_a_durable_run_cancels_it_and_the_store_says_so),
      T(test_default_store_is_under_xdg_state_home),
      T(test_a_bad_detached_run_is_reported_by_the_command_typed),
      T(test_ids_that_are_not_tasks_exit_2_naming_them),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
