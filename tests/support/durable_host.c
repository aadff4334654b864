/* durable_host: the host the crash and resume tests kill and restart
 * (tests/integration/test_durable_crash.c, test_durable_resume.c). One
 * manager on an SQLite store with a fixed owner id, so a restart takes its
 * own unfinished tasks back at once (apex_manager_recover) instead of
 * waiting for their lease to expire.
 *
 * Usage: durable_host STORE PLUGIN_DIR MODE ARGS...
 *   long N STEPS STEP_MS LOG   N durable example_async.long_task tasks with
 *                              idempotency keys long-0..long-N-1 (so a
 *                              restart's submits return the tasks already
 *                              there), each logging its steps to LOG.
 *   copy SRC DST MIB           one durable files.copy (key "copy"),
 *                              checkpointing every MIB MiB.
 *   download URL PATH MIB      one durable http.download (key "download").
 * Every run: open, load the plugin, recover, submit (idempotent: a key
 * already in the store adds nothing), then read the store until every task
 * in it has ended. Output on stdout, one JSON object per line, flushed:
 *   {"recovered": N}                       after recovery
 *   {"progress": BYTES_DONE}               copy and download: each progress
 *                                          event with a bytes_done detail
 *   {"task": ID, "state": S, "result"?, "error"?}  per task at its end
 *   {"done": true, "rchar": R, "wchar": W} at the end, with this process's
 *                                          I/O counts from /proc/self/io
 *                                          (what the resume test measures)
 * Exit: 0 when every task ended (whatever its state), 1 on a failure of the
 * host itself (named on stderr). Test code: plain stdio, no cmocka. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include <apex/apex.h>

static pthread_mutex_t g_out = PTHREAD_MUTEX_INITIALIZER;

static void out_line(json_t *o) {
  if (!o) return;
  char *s = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (!s) return;
  pthread_mutex_lock(&g_out);
  fputs(s, stdout);
  fputc('\n', stdout);
  fflush(stdout);
  pthread_mutex_unlock(&g_out);
  free(s);
}

/* Progress events (the manager's loop thread): bytes done, for the test's
 * kill at about half way. */
static void on_event(const apex_event_t *ev, void *user) {
  (void)user;
  if (ev->type != APEX_EVENT_PROGRESS || !ev->progress) return;
  const json_t *d = apex_progress_details(ev->progress);
  json_t *b = json_object_get(d, "bytes_done");
  if (json_is_integer(b)) out_line(json_pack("{s:I}", "progress", json_integer_value(b)));
}

static int die(const char *what, const apex_error_t *e, int rc) {
  fprintf(stderr, "durable_host: %s: %s\n", what, e ? apex_error_message(e) : apex_strerror(rc));
  return 1;
}

static void io_counts(long long *rchar, long long *wchar) {
  *rchar = *wchar = -1;
  FILE *f = fopen("/proc/self/io", "r");
  if (!f) return;
  char line[128];
  while (fgets(line, sizeof line, f)) {
    sscanf(line, "rchar: %lld", rchar);
    sscanf(line, "wchar: %lld", wchar);
  }
  fclose(f);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: durable_host STORE PLUGIN_DIR MODE ARGS...\n");
    return 2;
  }
  const char *store = argv[1], *dir = argv[2], *mode = argv[3];
  const char *plugin, *action;
  size_t n = 1;
  int long_mode = strcmp(mode, "long") == 0;
  if (long_mode && argc == 8) {
    plugin = "example_async", action = "long_task";
    n = strtoul(argv[4], NULL, 10);
  } else if (strcmp(mode, "copy") == 0 && argc == 7) {
    plugin = "files", action = "copy";
  } else if (strcmp(mode, "download") == 0 && argc == 7) {
    plugin = "http", action = "download";
  } else {
    fprintf(stderr, "durable_host: bad arguments for mode '%s'\n", mode);
    return 2;
  }

  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = long_mode ? 16 : 2;
  cfg.store = store;
  cfg.store_owner = "durable-host"; /* the same after a restart */
  cfg.on_event = on_event;
  cfg.event_mask = APEX_EVENT_PROGRESS;
  cfg.progress_rate_hz = 50;
  apex_manager_t *m = NULL;
  int rc = apex_manager_new(&cfg, &m);
  if (rc != APEX_OK) return die("apex_manager_new", NULL, rc);
  apex_error_t *err = NULL;
  if ((rc = apex_manager_add_plugin_path(m, dir)) != APEX_OK ||
      (rc = apex_manager_load_named(m, plugin, &err)) != APEX_OK)
    return die("loading the plugin", err, rc);
  size_t recovered = 0;
  if ((rc = apex_manager_recover(m, &recovered, &err)) != APEX_OK)
    return die("apex_manager_recover", err, rc);
  out_line(json_pack("{s:I}", "recovered", (json_int_t)recovered));

  for (size_t i = 0; i < n; i++) {
    char key[64];
    json_t *params;
    if (long_mode) {
      snprintf(key, sizeof key, "long-%zu", i);
      params = json_pack("{s:I, s:I, s:s}", "steps", (json_int_t)strtoll(argv[5], NULL, 10),
                         "step_ms", (json_int_t)strtoll(argv[6], NULL, 10), "step_log", argv[7]);
    } else if (strcmp(mode, "copy") == 0) {
      snprintf(key, sizeof key, "copy");
      params = json_pack("{s:s, s:s, s:I}", "src", argv[4], "dst", argv[5], "checkpoint_mib",
                         (json_int_t)strtoll(argv[6], NULL, 10));
    } else {
      snprintf(key, sizeof key, "download");
      params = json_pack("{s:s, s:s, s:I, s:i}", "url", argv[4], "path", argv[5],
                         "checkpoint_mib", (json_int_t)strtoll(argv[6], NULL, 10),
                         "stall_timeout_s", 0);
    }
    apex_submit_opts_t so;
    apex_submit_opts_init(&so);
    so.durable = 1;
    so.idempotency_key = key;
    apex_task_t *t = NULL;
    apex_error_t *e = NULL;
    rc = apex_manager_submit(m, plugin, action, params, &so, &t, &e);
    json_decref(params);
    /* APEX_E_ALREADY: the key's task is in the store already (recovered,
     * or ended): nothing to add. */
    if (rc != APEX_OK && rc != APEX_E_ALREADY) return die("apex_manager_submit", e, rc);
    apex_error_unref(e);
    apex_task_release(t);
  }
  /* Until every task of the store has ended, read from the store (the
   * outcome recorded is what the tests check). */
  apex_store_t *st = apex_manager_store(m);
  json_t *tasks = NULL;
  for (;;) {
    apex_store_filter_t f = APEX_STORE_FILTER_INIT;
    f.limit = 10000;
    json_t *page = NULL;
    if ((rc = apex_store_list(st, &f, &page, &err)) != APEX_OK) return die("apex_store_list", err, rc);
    size_t i, live = 0;
    json_t *t;
    json_array_foreach(json_object_get(page, "tasks"), i, t) {
      const char *state = json_string_value(json_object_get(t, "state"));
      if (!state || (strcmp(state, "succeeded") && strcmp(state, "failed") &&
                     strcmp(state, "cancelled") && strcmp(state, "timed_out")))
        live++;
    }
    if (live == 0 && json_array_size(json_object_get(page, "tasks")) >= n) {
      tasks = page;
      break;
    }
    json_decref(page);
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
  if (!long_mode) {
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(tasks, "tasks"), i, t) {
      json_t *full = NULL;
      if (apex_store_get(st, (uint64_t)json_integer_value(json_object_get(t, "id")), &full,
                         NULL) != APEX_OK)
        continue;
      json_t *o = json_pack("{s:O, s:O}", "task", json_object_get(full, "id"), "state",
                            json_object_get(full, "state"));
      if (o && json_object_get(full, "result"))
        json_object_set(o, "result", json_object_get(full, "result"));
      if (o && json_object_get(full, "error"))
        json_object_set(o, "error", json_object_get(full, "error"));
      out_line(o);
      json_decref(full);
    }
  }
  json_decref(tasks);
  long long rchar, wchar;
  io_counts(&rchar, &wchar);
  out_line(json_pack("{s:b, s:I, s:I}", "done", 1, "rchar", (json_int_t)rchar, "wchar",
                     (json_int_t)wchar));
  apex_manager_destroy(m, 5000);
  return 0;
}
