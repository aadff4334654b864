/* Integration tests of sub-task trees updated node by node
 * (apex_ctx_progress_node, include/apex/plugin.h), through the public API
 * and through `apex run`, with the folders test plugin
 * (tests/plugins/folders.c):
 *   - a node update is checked (index, percentage, status, message) and a
 *     bad one refused with its reason, counted, and never applied;
 *   - node updates coalesce, and what is delivered is the tree as it stands
 *     at delivery (assembled then), nested trees addressed in pre-order;
 *   - the tree is kept across a retry, cleared by a full report without
 *     one, and a node update after complete or after a timeout is ignored
 *     and counted as the other ctx calls are;
 *   - the 768-folder scan (issue 9: 768 sub-tasks, a report per item, 5000
 *     items) ends with the exact tree in process, and `apex run --json`
 *     writes lines from which a reader rebuilds that tree exactly: whole
 *     trees and sub_task_changes alike (README, "JSON Lines"); its wall
 *     time is printed (the target is 0.5 s; the bound asserted is loose,
 *     for sanitizer builds on a loaded machine);
 *   - the terminal display collapses finished sub-tasks into a count.
 *
 * Threads: the test thread, the runtime thread running the recorder's
 * callback (LOOP delivery) and the log sink; the CLI runs as a child. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/cli_harness.h"
#include "integration/gate.h"
#include "integration/recorder.h"

#define FOLDERS APEX_TEST_PLUGIN_DIR "/folders.so"

/* ------------------------------------------------------------ log lines */

static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_log[16384]; /* debug lines, concatenated (under g_log_mu) */

static void log_keep(int level, const char *msg, void *user) {
  (void)level;
  (void)user;
  pthread_mutex_lock(&g_log_mu);
  size_t len = strlen(g_log);
  snprintf(g_log + len, sizeof g_log - len, "%s\n", msg);
  pthread_mutex_unlock(&g_log_mu);
}

static int log_has(const char *needle) {
  pthread_mutex_lock(&g_log_mu);
  int has = strstr(g_log, needle) != NULL;
  pthread_mutex_unlock(&g_log_mu);
  return has;
}

/* -------------------------------------------------------------- helpers */

typedef struct fx {
  rec_t rec;
  apex_manager_t *m;
} fx_t;

static fx_t *fx_new(double rate_hz) {
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  rec_init(&f->rec);
  apex_manager_config_t cfg = base_config(2);
  cfg.log = log_keep;
  cfg.log_level = APEX_LOG_DEBUG;
  cfg.on_event = rec_on_event;
  cfg.event_user = &f->rec;
  cfg.progress_rate_hz = rate_hz;
  assert_int_equal(apex_manager_new(&cfg, &f->m), APEX_OK);
  load_ok(f->m, FOLDERS);
  pthread_mutex_lock(&g_log_mu);
  g_log[0] = '\0';
  pthread_mutex_unlock(&g_log_mu);
  return f;
}

static void fx_free(fx_t *f) {
  assert_int_equal(apex_manager_destroy(f->m, 10000), APEX_OK);
  rec_fini(&f->rec);
  free(f);
}

/* Runs folders.action to its end; returns the task (release it). */
static apex_task_t *run_to_end(fx_t *f, const char *action, const char *params,
                               const apex_submit_opts_t *opts, apex_task_state_t want) {
  apex_task_t *t = submit_json(f->m, "folders", action, params, opts);
  assert_int_equal(apex_task_wait(t, 30000), APEX_OK);
  assert_int_equal(apex_task_state(t), want);
  return t;
}

static json_t *parse(const char *text) {
  json_error_t e;
  json_t *j = json_loads(text, 0, &e);
  if (!j) fail_msg("bad test JSON at %d: %s", e.position, e.text);
  return j;
}

/* Fails unless got equals want exactly (integers and reals told apart). */
static void assert_json(const json_t *got, const char *want) {
  json_t *w = parse(want);
  if (!json_equal((json_t *)got, w)) {
    char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
    char *ws = json_dumps(w, JSON_COMPACT | JSON_SORT_KEYS);
    fail_msg("JSON differs\n got: %s\nwant: %s", g ? g : "(null)", ws ? ws : "(null)");
  }
  json_decref(w);
}

/* The recorded PROGRESS events of task id, in order (pointers into rec;
 * valid until it grows, i.e. after the task ended). */
static size_t progress_events(rec_t *r, uint64_t id, rec_ev_t **out, size_t cap) {
  size_t n = 0;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n && n < cap; i++)
    if (r->ev[i].task_id == id && r->ev[i].type == APEX_EVENT_PROGRESS) out[n++] = &r->ev[i];
  pthread_mutex_unlock(&r->mu);
  return n;
}

/* 1 once a PROGRESS event of task id carried a tree equal to want. */
static int saw_tree(rec_t *r, uint64_t id, const json_t *want) {
  int seen = 0;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n && !seen; i++)
    seen = r->ev[i].task_id == id && r->ev[i].type == APEX_EVENT_PROGRESS &&
           json_equal(r->ev[i].sub_tasks, (json_t *)want);
  pthread_mutex_unlock(&r->mu);
  return seen;
}

/* The tree the 768-folder scan ends with (folders.c, scan). */
static json_t *scan_final_tree(int folders, int items) {
  json_t *tree = json_array();
  for (int f = 0; f < folders; f++) {
    long long total = (long long)(f + 1) * items / folders - (long long)f * items / folders;
    char name[32], msg[64];
    snprintf(name, sizeof name, "folder-%03d", f);
    if (f % 7 == 3)
      snprintf(msg, sizeof msg, "1 unreadable");
    else
      snprintf(msg, sizeof msg, "%lld files", total);
    json_array_append_new(tree, json_pack("{s:s, s:f, s:s, s:s}", "name", name, "percentage",
                                          100.0, "status", f % 7 == 3 ? "error" : "completed",
                                          "message", msg));
  }
  return tree;
}

/* ---------------------------------------------------------- the checks */

static void test_bad_node_updates_are_refused_with_a_reason_and_never_applied(void **st) {
  (void)st;
  fx_t *f = fx_new(20);
  apex_task_t *t = run_to_end(f, "probe", NULL, NULL, APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(r, "has_node")), 1);
  assert_int_equal(json_integer_value(json_object_get(r, "ok")), 0);
  assert_int_equal(json_integer_value(json_object_get(r, "root_no_tree")), APEX_OK);
  const char *refused[] = {"no_tree",  "bad_index", "huge_index", "bad_status",
                           "bad_pct",  "nan_pct",   "bad_utf8",   "long_msg"};
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
    if (json_integer_value(json_object_get(r, refused[i])) != APEX_E_INVALID)
      fail_msg("%s returned %lld, want APEX_E_INVALID", refused[i],
               (long long)json_integer_value(json_object_get(r, refused[i])));
  json_decref(r);
  apex_stats_t s = stats_of(f->m);
  assert_int_equal(s.progress_rejected, 8);
  /* root_no_tree, the declaration, 5 valid node updates */
  assert_int_equal(s.progress_reported, 7);
  /* Each reason names the place, as the validators do. */
  assert_true(log_has("progress rejected: node[0]: no such sub-task (the tree has 0)"));
  assert_true(log_has("progress rejected: node[5]: no such sub-task (the tree has 5)"));
  assert_true(log_has("progress rejected: node[0].status: unknown status 'done'"));
  assert_true(log_has("progress rejected: node[0].percentage: 100.5 is outside [0, 100]"));
  assert_true(log_has("progress rejected: node[0].percentage: not finite"));
  assert_true(log_has("progress rejected: node[0].message: not valid UTF-8 at byte 3"));
  assert_true(log_has("progress rejected: node[0].message: 1025 bytes, longer than 1024"));
  /* The tree as the valid updates left it, pre-order over nested levels:
   * a moved without a status or message, b's children b1 and b2 set, c's
   * message emptied; b untouched (its integer 0 stays an integer). */
  apex_progress_t *p = apex_task_progress(t);
  assert_json(apex_progress_sub_tasks(p),
              "[{\"name\": \"a\", \"percentage\": 20.0, \"status\": \"pending\"},"
              " {\"name\": \"b\", \"percentage\": 0, \"status\": \"pending\", \"sub_tasks\": ["
              "   {\"name\": \"b1\", \"percentage\": 50.0, \"status\": \"running\","
              "    \"message\": \"half\"},"
              "   {\"name\": \"b2\", \"percentage\": 100.0, \"status\": \"completed\"}]},"
              " {\"name\": \"c\", \"percentage\": 0.0, \"status\": \"pending\","
              "  \"message\": \"\"}]");
  /* The root update kept the declaration's details and status. */
  assert_json(apex_progress_details(p), "{\"k\": 1}");
  assert_true(apex_progress_percentage(p) == 40.0);
  assert_string_equal(apex_progress_message(p), "probing");
  assert_string_equal(apex_progress_status(p), "running");
  apex_progress_unref(p);
  apex_task_release(t);
  fx_free(f);
}

static void test_node_updates_coalesce_into_the_tree_as_it_stands(void **st) {
  (void)st;
  /* 1 Hz: everything after the first delivery waits for the task's end. */
  fx_t *f = fx_new(1);
  enum { N = 10000 };
  apex_task_t *t = run_to_end(f, "coalesce", "{\"n\": 10000}", NULL, APEX_TASK_SUCCEEDED);
  uint64_t id = apex_task_id(t);
  rec_await_dones(&f->rec, 1);
  apex_stats_t s = stats_of(f->m);
  assert_int_equal(s.progress_reported, N + 1);
  rec_ev_t *ev[64];
  size_t n = progress_events(&f->rec, id, ev, 64);
  assert_int_equal(s.progress_delivered, n);
  assert_true(n >= 1 && n <= 10);
  /* Delivered trees are states the plugin passed through: no node ever
   * goes back, whatever coalescing dropped. */
  for (size_t k = 0; k + 1 < n; k++)
    for (size_t j = 0; j < 10; j++) {
      double a = json_number_value(json_object_get(json_array_get(ev[k]->sub_tasks, j), "percentage"));
      double b = json_number_value(json_object_get(json_array_get(ev[k + 1]->sub_tasks, j), "percentage"));
      assert_true(a <= b);
    }
  json_t *want = json_array();
  for (int j = 0; j < 10; j++) {
    char name[8], msg[32];
    snprintf(name, sizeof name, "n%d", j);
    snprintf(msg, sizeof msg, "step %d", N - 10 + j);
    json_array_append_new(want, json_pack("{s:s, s:f, s:s, s:s}", "name", name, "percentage",
                                          100.0, "status", "completed", "message", msg));
  }
  assert_true(json_equal(ev[n - 1]->sub_tasks, want));
  for (size_t k = 0; k < n; k++) assert_int_equal(ev[k]->pseq, k + 1);
  json_decref(want);
  apex_task_release(t);
  fx_free(f);
}

static void test_the_tree_is_assembled_when_it_is_delivered(void **st) {
  (void)st;
  fx_t *f = fx_new(50);
  gate_t g;
  gate_init(&g);
  apex_task_t *t = submit_json(f->m, "folders", "gated", g.params, NULL);
  /* While the handler is blocked, a delivery shows the declared tree with
   * g1a (pre-order 2, g1's first child) updated. */
  json_t *mid = parse("[{\"name\": \"g0\", \"percentage\": 0.0, \"status\": \"pending\"},"
                      " {\"name\": \"g1\", \"percentage\": 0.0, \"status\": \"pending\","
                      "  \"sub_tasks\": ["
                      "   {\"name\": \"g1a\", \"percentage\": 50.0, \"status\": \"running\"},"
                      "   {\"name\": \"g1b\", \"percentage\": 0.0, \"status\": \"pending\"}]},"
                      " {\"name\": \"g2\", \"percentage\": 0.0, \"status\": \"pending\"}]");
  AWAIT(saw_tree(&f->rec, apex_task_id(t), mid), 10000);
  assert_int_equal(apex_task_state(t), APEX_TASK_RUNNING);
  gate_open(&g);
  assert_int_equal(apex_task_wait(t, 30000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_progress_t *p = apex_task_progress(t);
  json_t *last = json_deep_copy(mid);
  json_t *g1b = json_array_get(json_object_get(json_array_get(last, 1), "sub_tasks"), 1);
  json_object_set_new(g1b, "percentage", json_real(100.0));
  json_object_set_new(g1b, "status", json_string("completed"));
  assert_true(json_equal((json_t *)apex_progress_sub_tasks(p), last));
  json_decref(last);
  json_decref(mid);
  apex_progress_unref(p);
  apex_task_release(t);
  gate_fini(&g);
  fx_free(f);
}

static void test_the_tree_is_kept_across_a_retry(void **st) {
  (void)st;
  fx_t *f = fx_new(20);
  apex_task_t *t = run_to_end(f, "retry_tree", NULL, NULL, APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_attempts(t), 2);
  /* The first attempt's progress is delivered before its RETRY. */
  json_t *first = parse("[{\"name\": \"x0\", \"percentage\": 100.0, \"status\": \"completed\","
                        "  \"message\": \"done\"},"
                        " {\"name\": \"x1\", \"percentage\": 0.0, \"status\": \"pending\"}]");
  rec_await_dones(&f->rec, 1);
  pthread_mutex_lock(&f->rec.mu);
  size_t retry_at = f->rec.n, first_at = f->rec.n;
  for (size_t i = 0; i < f->rec.n; i++) {
    if (f->rec.ev[i].type == APEX_EVENT_RETRY && retry_at == f->rec.n) retry_at = i;
    if (f->rec.ev[i].type == APEX_EVENT_PROGRESS && first_at == f->rec.n &&
        json_equal(f->rec.ev[i].sub_tasks, first))
      first_at = i;
  }
  pthread_mutex_unlock(&f->rec.mu);
  assert_true(first_at < retry_at);
  assert_true(retry_at < f->rec.n);
  json_decref(first);
  /* The second attempt updated the tree the first declared. */
  apex_progress_t *p = apex_task_progress(t);
  assert_json(apex_progress_sub_tasks(p),
              "[{\"name\": \"x0\", \"percentage\": 100.0, \"status\": \"completed\","
              "  \"message\": \"done\"},"
              " {\"name\": \"x1\", \"percentage\": 100.0, \"status\": \"completed\","
              "  \"message\": \"done too\"}]");
  apex_progress_unref(p);
  apex_task_release(t);
  fx_free(f);
}

static void test_a_full_report_without_a_tree_clears_it(void **st) {
  (void)st;
  fx_t *f = fx_new(20);
  apex_task_t *t = run_to_end(f, "clear", NULL, NULL, APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  assert_json(r, "{\"before\": 0, \"after\": -1, \"root\": 0}");
  json_decref(r);
  apex_progress_t *p = apex_task_progress(t);
  assert_int_equal(json_array_size(apex_progress_sub_tasks(p)), 0);
  assert_true(apex_progress_percentage(p) == 40.0);
  assert_string_equal(apex_progress_message(p), "flat");
  apex_progress_unref(p);
  apex_task_release(t);
  fx_free(f);
}

static json_t *stats_result(fx_t *f) {
  apex_task_t *t = run_to_end(f, "stats", NULL, NULL, APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  apex_task_release(t);
  return r;
}

static void test_node_updates_after_complete_are_ignored_and_counted(void **st) {
  (void)st;
  fx_t *f = fx_new(20);
  apex_task_t *t = run_to_end(f, "after_complete", NULL, NULL, APEX_TASK_SUCCEEDED);
  /* The three calls come after complete() returned; the handler has
   * returned too once late_reports shows all three. */
  AWAIT(stats_of(f->m).late_reports == 3, 10000);
  json_t *r = stats_result(f);
  /* Ignored (APEX_OK) as late progress is; an invalid one still hears why. */
  assert_json(json_object_get(r, "after"), "[0, 0, -1]");
  json_decref(r);
  apex_stats_t s = stats_of(f->m);
  assert_int_equal(s.progress_reported, 2); /* the declaration and node 0 at 50 */
  assert_int_equal(s.progress_rejected, 0);
  apex_progress_t *p = apex_task_progress(t);
  assert_json(apex_progress_sub_tasks(p),
              "[{\"name\": \"a0\", \"percentage\": 50.0, \"status\": \"running\"}]");
  assert_true(apex_progress_percentage(p) == 0.0);
  apex_progress_unref(p);
  apex_task_release(t);
  fx_free(f);
}

static void test_a_node_update_after_a_timeout_is_ignored_and_counted(void **st) {
  (void)st;
  fx_t *f = fx_new(20);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = 0.1;
  apex_task_t *t = run_to_end(f, "late", NULL, &o, APEX_TASK_TIMED_OUT);
  /* The handler reports once its sleep ends (the token fired), then returns. */
  AWAIT(stats_of(f->m).late_reports >= 2, 10000); /* the update and the return */
  json_t *r = stats_result(f);
  assert_int_equal(json_integer_value(json_object_get(r, "late")), APEX_OK);
  json_decref(r);
  apex_progress_t *p = apex_task_progress(t);
  assert_json(apex_progress_sub_tasks(p),
              "[{\"name\": \"a0\", \"percentage\": 0.0, \"status\": \"pending\"}]");
  apex_progress_unref(p);
  apex_task_release(t);
  fx_free(f);
}

static void test_the_768_folder_scan_ends_with_its_exact_tree(void **st) {
  (void)st;
  fx_t *f = fx_new(100);
  int64_t t0 = now_ms();
  apex_task_t *t = run_to_end(f, "scan", NULL, NULL, APEX_TASK_SUCCEEDED);
  print_message("768-folder scan, 5000 items, in process: %lld ms\n",
                (long long)(now_ms() - t0));
  apex_progress_t *p = apex_task_progress(t);
  json_t *want = scan_final_tree(768, 5000);
  assert_true(json_equal((json_t *)apex_progress_sub_tasks(p), want));
  assert_true(apex_progress_percentage(p) == 100.0);
  assert_string_equal(apex_progress_status(p), "completed");
  assert_string_equal(apex_progress_message(p), "item 5000 of 5000");
  json_decref(want);
  apex_progress_unref(p);
  json_t *r = apex_task_result(t);
  assert_json(r, "{\"items\": 5000, \"folders\": 768}");
  json_decref(r);
  /* 1 declaration + 2 updates per item */
  assert_int_equal(stats_of(f->m).progress_reported, 1 + 2 * 5000);
  apex_task_release(t);
  fx_free(f);
}

/* ------------------------------------------------------------ apex run */

/* Applies the progress lines of an `apex run --json` output in order, as
 * the README tells a reader to, and returns the tree they leave (new), the
 * number of lines of each kind in *whole and *changes. Fails on a line that
 * carries neither or both, a change before any whole tree, or a path that
 * names no sub-task. */
static json_t *rebuild_tree(const json_t *lines, size_t *whole, size_t *changes) {
  json_t *tree = NULL;
  size_t i, seq = 0;
  json_t *line;
  *whole = *changes = 0;
  json_array_foreach(lines, i, line) {
    if (strcmp(json_string_value(json_object_get(line, "event")), "progress") != 0) continue;
    assert_int_equal(json_integer_value(json_object_get(line, "seq")), ++seq);
    json_t *all = json_object_get(line, "sub_tasks");
    json_t *chg = json_object_get(line, "sub_task_changes");
    assert_true(!all != !chg);
    if (all) {
      assert_true(json_is_array(all));
      json_decref(tree);
      tree = json_deep_copy(all);
      ++*whole;
      continue;
    }
    assert_non_null(tree);
    assert_true(json_is_array(chg));
    ++*changes;
    size_t k;
    json_t *c;
    json_array_foreach(chg, k, c) {
      json_t *path = json_object_get(c, "path"), *node = json_object_get(c, "node");
      assert_true(json_is_array(path) && json_array_size(path) > 0);
      assert_true(json_is_object(node));
      assert_null(json_object_get(node, "sub_tasks"));
      json_t *arr = tree;
      size_t depth = json_array_size(path);
      for (size_t d = 0; d + 1 < depth; d++) {
        json_t *parent = json_array_get(arr, (size_t)json_integer_value(json_array_get(path, d)));
        assert_non_null(parent);
        arr = json_object_get(parent, "sub_tasks");
        assert_non_null(arr);
      }
      size_t at = (size_t)json_integer_value(json_array_get(path, depth - 1));
      json_t *old = json_array_get(arr, at);
      assert_non_null(old);
      json_t *fresh = json_deep_copy(node);
      json_t *kids = json_object_get(old, "sub_tasks");
      if (kids) json_object_set(fresh, "sub_tasks", kids);
      assert_int_equal(json_array_set_new(arr, at, fresh), 0);
    }
  }
  return tree;
}

/* Runs `apex run folders.ACTION --json` with args (NULL-terminated) and
 * checks the one result line says succeeded. Returns: the lines (new). */
static json_t *cli_run_json(proc_t *p, const char *action, ...) {
  char target[64];
  snprintf(target, sizeof target, "folders.%s", action);
  const char *argv[16] = {APEX_CLI_PATH, "run", target, "--json", "--plugin-path",
                          APEX_TEST_PLUGIN_DIR};
  size_t n = 6;
  va_list ap;
  va_start(ap, action);
  for (const char *a; n < 15 && (a = va_arg(ap, const char *)) != NULL;) argv[n++] = a;
  va_end(ap);
  argv[n] = NULL;
  proc_spawn(p, (char **)argv, NULL, -1);
  proc_wait(p);
  if (p->code != 0) fail_msg("exit %d; stderr:\n%s", p->code, buf_str(&p->err));
  json_t *lines = json_lines(p);
  json_t *res = the_result(lines);
  assert_string_equal(json_string_value(json_object_get(res, "state")), "succeeded");
  return lines;
}

static void test_cli_768_folder_scan_lines_rebuild_the_final_tree(void **st) {
  (void)st;
  proc_t p;
  json_t *lines = cli_run_json(&p, "scan", NULL);
  /* Issue 9's target is 0.5 s; the bound here leaves room for sanitizers. */
  print_message("apex run folders.scan --json: %lld ms, %zu bytes, %zu lines\n",
                (long long)(p.end_ms - p.start_ms), p.out.len, json_array_size(lines));
  assert_true(p.end_ms - p.start_ms < 5000);
  size_t whole, changes;
  json_t *tree = rebuild_tree(lines, &whole, &changes);
  json_t *want = scan_final_tree(768, 5000);
  assert_true(json_equal(tree, want));
  assert_true(whole >= 1);
  json_t *res = the_result(lines);
  assert_json(json_object_get(res, "result"), "{\"items\": 5000, \"folders\": 768}");
  json_decref(want);
  json_decref(tree);
  json_decref(lines);
  proc_free(&p);
}

static void test_cli_lines_carry_changes_once_the_reader_has_the_tree(void **st) {
  (void)st;
  /* The scan reporting its whole tree per item: many deliveries of a tree
   * whose shape never changes, most of them a few folders apart. 800 items
   * give every folder one at least; each whole report of 768 nodes costs
   * about 11 ms under TSan, so 1,500 of them took 16-29 s of the CLI
   * harness's 30 s on a loaded machine. */
  proc_t p;
  json_t *lines = cli_run_json(&p, "scan", "--param", "full=true", "--param", "items=800", NULL);
  size_t whole, changes;
  json_t *tree = rebuild_tree(lines, &whole, &changes);
  json_t *want = scan_final_tree(768, 800);
  assert_true(json_equal(tree, want));
  print_message("full reports per item: %zu whole-tree lines, %zu change lines, %zu bytes\n",
                whole, changes, p.out.len);
  assert_true(changes >= 1);
  /* A whole tree is about 60 KB; a line of changes, a few folders, must
   * cost well under a tenth of that (however many lines a slow build
   * makes). */
  char *dump = json_dumps(want, JSON_COMPACT);
  size_t tree_bytes = strlen(dump);
  free(dump);
  assert_true(p.out.len < (whole + 1) * tree_bytes + changes * (tree_bytes / 10));
  json_decref(want);
  json_decref(tree);
  json_decref(lines);
  proc_free(&p);
}

static void test_cli_changes_address_nested_sub_tasks_by_path(void **st) {
  (void)st;
  gate_t g;
  gate_init(&g);
  char path[160];
  snprintf(path, sizeof path, "path=%s", g.path);
  char target[] = "folders.gated";
  const char *argv[] = {APEX_CLI_PATH, "run", target, "--json", "--plugin-path",
                        APEX_TEST_PLUGIN_DIR, "--param", path, NULL};
  proc_t p;
  proc_spawn(&p, (char **)argv, NULL, -1);
  /* g1a's update reaches the output before the gate opens. */
  assert_true(proc_read_until(&p, "\"running\"}", 20000));
  gate_open(&g);
  proc_wait(&p);
  assert_int_equal(p.code, 0);
  json_t *lines = json_lines(&p);
  size_t whole, changes;
  json_t *tree = rebuild_tree(lines, &whole, &changes);
  assert_json(tree, "[{\"name\": \"g0\", \"percentage\": 0.0, \"status\": \"pending\"},"
                    " {\"name\": \"g1\", \"percentage\": 0.0, \"status\": \"pending\","
                    "  \"sub_tasks\": ["
                    "   {\"name\": \"g1a\", \"percentage\": 50.0, \"status\": \"running\"},"
                    "   {\"name\": \"g1b\", \"percentage\": 100.0, \"status\": \"completed\"}]},"
                    " {\"name\": \"g2\", \"percentage\": 0.0, \"status\": \"pending\"}]");
  /* The last progress line names g1b by its path alone. */
  json_t *last = NULL;
  size_t i;
  json_t *line;
  json_array_foreach(lines, i, line)
    if (strcmp(json_string_value(json_object_get(line, "event")), "progress") == 0) last = line;
  assert_non_null(last);
  assert_json(json_object_get(last, "sub_task_changes"),
              "[{\"path\": [1, 1], \"node\": {\"name\": \"g1b\", \"percentage\": 100.0,"
              " \"status\": \"completed\"}}]");
  json_decref(tree);
  json_decref(lines);
  proc_free(&p);
  gate_fini(&g);
}

static void test_terminal_display_collapses_finished_sub_tasks(void **st) {
  (void)st;
  char name[128];
  int master = pty_open(name, sizeof name);
  char *argv[] = {(char *)APEX_CLI_PATH, "run", "--plugin-path", (char *)APEX_TEST_PLUGIN_DIR,
                  "folders.scan", NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  proc_wait(&p);
  if (p.code != 0) fail_msg("exit %d; output:\n%s", p.code, buf_str(&p.out));
  /* The last frame: what lies between the last two "clear to the end of
   * the screen" sequences, each of which ends a frame. */
  char *out = strdup(buf_str(&p.out));
  assert_non_null(out);
  char *prev = NULL, *last = NULL;
  for (char *at = strstr(out, "\x1b[J"); at; at = strstr(at + 1, "\x1b[J")) {
    prev = last;
    last = at;
  }
  assert_non_null(prev);
  *last = '\0';
  char *start = prev + 3;
  /* 768 folders on a 30-row terminal: the 658 completed as one line, the
   * 110 that failed listed until the screen ends, the rest counted. */
  assert_contains(start, "  ├─ 658 completed");
  assert_contains(start, "  ├─ folder-003 ");
  assert_contains(start, " more: ");
  assert_contains(start, " failed");
  assert_null(strstr(start, "folder-000")); /* completed: no line of its own */
  free(out);
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_node_updates_are_refused_with_a_reason_and_never_applied),
      cmocka_unit_test(test_node_updates_coalesce_into_the_tree_as_it_stands),
      cmocka_unit_test(test_the_tree_is_assembled_when_it_is_delivered),
      cmocka_unit_test(test_the_tree_is_kept_across_a_retry),
      cmocka_unit_test(test_a_full_report_without_a_tree_clears_it),
      cmocka_unit_test(test_node_updates_after_complete_are_ignored_and_counted),
      cmocka_unit_test(test_a_node_update_after_a_timeout_is_ignored_and_counted),
      cmocka_unit_test(test_the_768_folder_scan_ends_with_its_exact_tree),
      cmocka_unit_test(test_cli_768_folder_scan_lines_rebuild_the_final_tree),
      cmocka_unit_test(test_cli_lines_carry_changes_once_the_reader_has_the_tree),
      cmocka_unit_test(test_cli_changes_address_nested_sub_tasks_by_path),
      cmocka_unit_test(test_terminal_display_collapses_finished_sub_tasks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
