/* group_example.c: operation groups and the operation manager from a host
 * (docs/operations.md). Fans five hello.greet calls out into a group,
 * takes the first to finish, lists what is still running, waits for the
 * rest and prints each outcome; then the same fan-out in one call
 * (apex_manager_execute_all); then starts two more and shuts down with a
 * report of what became of them.
 *
 *   cc group_example.c $(pkg-config --cflags --libs apex) -o group_example
 *   ./group_example ./hello.so
 *
 * Every return is checked; the exit status is 0 only if everything went
 * as described (CTest test example_group). */
#include <stdio.h>
#include <stdlib.h>

#include <apex/apex.h>

#define CHECK(cond, what)                                  \
  do {                                                     \
    if (!(cond)) {                                         \
      fprintf(stderr, "group_example: %s failed\n", what); \
      return 1;                                            \
    }                                                      \
  } while (0)

int main(int argc, char **argv) {
  const char *plugin_path = argc > 1 ? argv[1] : "./hello.so";
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  apex_manager_t *m = NULL;
  CHECK(apex_manager_new(&cfg, &m) == APEX_OK, "apex_manager_new");
  CHECK(apex_manager_load(m, plugin_path, NULL) == APEX_OK, "apex_manager_load");

  /* Fan out: five greetings, the group keeps the handles. */
  apex_group_t *g = NULL;
  CHECK(apex_group_new(m, &g) == APEX_OK, "apex_group_new");
  const char *names[5] = {"ada", "brian", "claude", "dennis", "edsger"};
  for (int i = 0; i < 5; i++) {
    json_t *p = json_pack("{s:s, s:i}", "name", names[i], "times", 1 + i);
    apex_error_t *err = NULL;
    apex_status_t rc = apex_group_submit(g, "hello", "greet", p, NULL, NULL, &err);
    if (rc != APEX_OK) fprintf(stderr, "submit: %s\n", apex_error_message(err));
    apex_error_unref(err);
    json_decref(p);
    CHECK(rc == APEX_OK, "apex_group_submit");
  }

  /* The first to finish. */
  apex_task_t *first = NULL;
  CHECK(apex_group_wait_any(g, 10000, &first) == APEX_OK, "apex_group_wait_any");
  printf("first: task %llu %s\n", (unsigned long long)apex_task_id(first),
         apex_task_state_name(apex_task_state(first)));
  apex_task_release(first);

  /* What is still live, as a dashboard would see it. */
  json_t *snap = apex_ops_snapshot(m, NULL);
  CHECK(snap != NULL, "apex_ops_snapshot");
  printf("live operations: %lld\n", (long long)json_integer_value(json_object_get(snap, "live")));
  json_decref(snap);

  /* All of them, and how each ended. */
  CHECK(apex_group_wait_all(g, 10000) == APEX_OK, "apex_group_wait_all");
  apex_group_stats_t st = APEX_GROUP_STATS_INIT;
  CHECK(apex_group_stats(g, &st) == APEX_OK, "apex_group_stats");
  printf("group: %llu of %llu succeeded, %.0f%%\n", (unsigned long long)st.succeeded,
         (unsigned long long)st.total, st.percentage);
  CHECK(st.succeeded == 5, "every greeting");
  json_t *res = apex_group_results(g);
  CHECK(res != NULL, "apex_group_results");
  size_t i;
  json_t *item;
  json_array_foreach(res, i, item) {
    printf("  %s\n", json_string_value(json_object_get(json_object_get(item, "result"), "greeting")));
  }
  json_decref(res);
  apex_group_release(g);

  /* The same fan-out in one call. */
  apex_call_t calls[3];
  json_t *params[3];
  for (int k = 0; k < 3; k++) {
    params[k] = json_pack("{s:s, s:i}", "name", names[k], "times", 1);
    calls[k] = (apex_call_t){"hello", "greet", params[k], NULL};
  }
  apex_error_t *err = NULL;
  res = NULL;
  apex_status_t rc = apex_manager_execute_all(m, calls, 3, 10000, &res, &err);
  for (int k = 0; k < 3; k++) json_decref(params[k]);
  if (rc != APEX_OK) fprintf(stderr, "execute_all: %s\n", apex_error_message(err));
  apex_error_unref(err);
  CHECK(rc == APEX_OK && json_array_size(res) == 3, "apex_manager_execute_all");
  json_decref(res);

  /* Two long greetings, then a shutdown that reports on them. */
  for (int k = 0; k < 2; k++) {
    json_t *p = json_pack("{s:s, s:i}", "name", names[k], "times", 100);
    apex_task_t *t = NULL;
    CHECK(apex_manager_submit(m, "hello", "greet", p, NULL, &t, NULL) == APEX_OK, "submit");
    apex_task_release(t); /* it runs on; the report will say how it ended */
    json_decref(p);
  }
  apex_shutdown_report_t *report = NULL;
  rc = apex_manager_shutdown(m, 0, &report); /* no drain: cancel now */
  CHECK(rc == APEX_OK && report, "apex_manager_shutdown");
  json_t *rj = apex_shutdown_report_to_json(report);
  char *text = rj ? json_dumps(rj, JSON_COMPACT) : NULL;
  printf("shutdown: %s\n", text ? text : "?");
  free(text);
  json_decref(rj);
  int ok = report->n_cancelled + report->n_finished == 2 && report->n_abandoned == 0;
  apex_shutdown_report_free(report);
  CHECK(ok, "the shutdown report");
  return 0;
}
