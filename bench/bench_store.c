/* Durable-store benchmarks (bench/README.md, issue 13): peer `store`, the
 * Apex manager with an SQLite store, plugin bench_store (plugin_store.c).
 *   W13 N       N durable no-op tasks submitted from 64 threads (a server's
 *               request threads: each submit waits for its row's commit,
 *               so what one commit carries is what is waiting then), run
 *               by 2 workers, end to end (first submit to last DONE), with group
 *               commit and then, in the same run, with one transaction per
 *               write (group_commit=0); each on a fresh file; the outcomes
 *               checked in the store afterwards
 *   W14 N       100 durable resumable tasks checkpointing in a loop, N
 *               checkpoints in all (100 workers); each checkpoint's latency
 *   Wrecover N  a store left holding N unfinished (queued) durable tasks by
 *               a manager that went away; a new manager recovers them:
 *               apex_manager_recover's time, and to the last DONE
 * Files go to APEX_BENCH_STORE_DIR and are removed after. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "apex/apex.h"
#include "bench_util.h"

#define PEER "store"
#define SUBMITTERS 64

static char g_path[512];

static void rm_store(void) {
  char x[600];
  unlink(g_path);
  snprintf(x, sizeof x, "%s-wal", g_path);
  unlink(x);
  snprintf(x, sizeof x, "%s-shm", g_path);
  unlink(x);
  snprintf(x, sizeof x, "%s.owners", g_path);
  rmdir(x);
}

typedef struct {
  atomic_ulong done, failed;
  uint64_t want;
  int efd;
} counter_t;

static void on_event(const apex_event_t *ev, void *user) {
  counter_t *c = user;
  if (ev->type != APEX_EVENT_DONE) return;
  if (ev->state != APEX_TASK_SUCCEEDED) atomic_fetch_add(&c->failed, 1);
  if (atomic_fetch_add(&c->done, 1) + 1 == c->want) bench_efd_signal(c->efd);
}

static apex_manager_t *manager(const char *uri, unsigned workers, counter_t *c) {
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = workers;
  cfg.store = uri;
  cfg.on_event = on_event;
  cfg.event_user = c;
  cfg.event_mask = APEX_EVENT_DONE;
  cfg.shutdown_grace_ms = 50;
  apex_manager_t *m = NULL;
  int rc = apex_manager_new(&cfg, &m);
  if (rc != APEX_OK) bench_die("apex_manager_new(%s): %s", uri, apex_strerror(rc));
  apex_error_t *err = NULL;
  if (apex_manager_load(m, APEX_BENCH_STORE_PLUGIN, &err) != APEX_OK)
    bench_die("load: %s", apex_error_message(err));
  return m;
}

typedef struct {
  apex_manager_t *m;
  uint64_t n;
  const char *action;
} sub_arg_t;

static void *submitter(void *p) {
  sub_arg_t *a = p;
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.durable = 1;
  for (uint64_t i = 0; i < a->n; i++) {
    apex_task_t *t = NULL;
    apex_error_t *err = NULL;
    if (apex_manager_submit(a->m, "bench_store", a->action, NULL, &o, &t, &err) != APEX_OK)
      bench_die("submit: %s", apex_error_message(err));
    apex_task_release(t);
  }
  return NULL;
}

/* Counts the stored tasks in state st (by pages). */
static uint64_t count_state(const char *uri, apex_task_state_t st) {
  apex_store_t *s = NULL;
  apex_error_t *err = NULL;
  if (apex_store_open(uri, &s, &err) != APEX_OK) bench_die("open: %s", apex_error_message(err));
  apex_store_filter_t f = APEX_STORE_FILTER_INIT;
  f.states = APEX_OPS_STATE(st);
  f.limit = 10000;
  uint64_t n = 0;
  for (;;) {
    json_t *page = NULL;
    if (apex_store_list(s, &f, &page, &err) != APEX_OK)
      bench_die("list: %s", apex_error_message(err));
    n += json_array_size(json_object_get(page, "tasks"));
    json_t *next = json_object_get(page, "next");
    int last = json_is_null(next);
    if (!last) f.after_id = (uint64_t)json_integer_value(next);
    json_decref(page);
    if (last) break;
  }
  apex_store_close(s);
  return n;
}

/* W13, one configuration: wall ns and CPU ns. */
static void w13_once(uint64_t n, int group, uint64_t *wall, uint64_t *cpu) {
  rm_store();
  char uri[600];
  snprintf(uri, sizeof uri, "sqlite:%s?group_commit=%d", g_path, group);
  counter_t c = {.want = n, .efd = bench_efd_new(0)};
  apex_manager_t *m = manager(uri, 2, &c);
  pthread_t th[SUBMITTERS];
  sub_arg_t args[SUBMITTERS];
  uint64_t c0 = bench_cpu_ns(), t0 = bench_now_ns();
  for (int i = 0; i < SUBMITTERS; i++) {
    args[i].m = m;
    args[i].n = n / SUBMITTERS + (i < (int)(n % SUBMITTERS) ? 1 : 0);
    args[i].action = "noop";
    if (pthread_create(&th[i], NULL, submitter, &args[i]) != 0) bench_die("pthread_create");
  }
  for (int i = 0; i < SUBMITTERS; i++) pthread_join(th[i], NULL);
  bench_efd_wait(c.efd);
  uint64_t t1 = bench_now_ns(), c1 = bench_cpu_ns();
  if (atomic_load(&c.failed)) bench_die("W13: %lu tasks failed", atomic_load(&c.failed));
  if (apex_manager_destroy(m, 10000) != APEX_OK) bench_die("destroy");
  close(c.efd);
  uint64_t ok = count_state(uri, APEX_TASK_SUCCEEDED);
  if (ok != n) bench_die("W13: %llu of %llu outcomes in the store", (unsigned long long)ok,
                         (unsigned long long)n);
  rm_store();
  *wall = t1 - t0;
  *cpu = c1 - c0;
}

static void w13(uint64_t n) {
  uint64_t gw, gc, sw, sc;
  w13_once(n, 1, &gw, &gc);
  /* BENCH_W13_GROUP_ONLY=1 skips the slow comparison run (for profiling the group path). */
  const char *only = getenv("BENCH_W13_GROUP_ONLY");
  if (only && strcmp(only, "1") == 0) {
    bench_emit(PEER, "W13", n, "tasks_per_s", (double)n * 1e9 / (double)gw, "tasks/s");
    bench_emit_cpu(PEER, "W13", n, "cpu_ns_per_task", gc, n);
    return;
  }
  w13_once(n, 0, &sw, &sc);
  bench_emit(PEER, "W13", n, "tasks_per_s", (double)n * 1e9 / (double)gw, "tasks/s");
  bench_emit_cpu(PEER, "W13", n, "cpu_ns_per_task", gc, n);
  bench_emit(PEER, "W13", n, "single_tasks_per_s", (double)n * 1e9 / (double)sw, "tasks/s");
  bench_emit_cpu(PEER, "W13", n, "single_cpu_ns_per_task", sc, n);
}

#define W14_TASKS 100

static void w14(uint64_t n) {
  if (n < W14_TASKS) n = W14_TASKS;
  uint64_t per = n / W14_TASKS;
  n = per * W14_TASKS;
  rm_store();
  char uri[600];
  snprintf(uri, sizeof uri, "sqlite:%s", g_path);
  counter_t c = {.want = W14_TASKS, .efd = bench_efd_new(0)};
  apex_manager_t *m = manager(uri, W14_TASKS, &c);
  uint64_t *lat = bench_xcalloc((size_t)n, sizeof *lat);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.durable = 1;
  uint64_t c0 = bench_cpu_ns(), t0 = bench_now_ns();
  for (int i = 0; i < W14_TASKS; i++) {
    json_t *p = json_pack("{s:I, s:I, s:I}", "n", (json_int_t)per, "sink",
                          (json_int_t)(uintptr_t)lat, "base", (json_int_t)(per * (uint64_t)i));
    apex_task_t *t = NULL;
    apex_error_t *err = NULL;
    if (apex_manager_submit(m, "bench_store", "cp_loop", p, &o, &t, &err) != APEX_OK)
      bench_die("submit: %s", apex_error_message(err));
    json_decref(p);
    apex_task_release(t);
  }
  bench_efd_wait(c.efd);
  uint64_t t1 = bench_now_ns(), c1 = bench_cpu_ns();
  if (atomic_load(&c.failed)) bench_die("W14: %lu tasks failed", atomic_load(&c.failed));
  if (apex_manager_destroy(m, 10000) != APEX_OK) bench_die("destroy");
  close(c.efd);
  rm_store();
  bench_emit(PEER, "W14", n, "checkpoints_per_s", (double)n * 1e9 / (double)(t1 - t0),
             "checkpoints/s");
  bench_emit_cpu(PEER, "W14", n, "cpu_ns_per_checkpoint", c1 - c0, n);
  bench_emit_latencies(PEER, "W14", n, lat, 0);
  free(lat);
}

static void wrecover(uint64_t n) {
  rm_store();
  char uri[600];
  snprintf(uri, sizeof uri, "sqlite:%s", g_path);
  /* A manager fills the store, its workers held, then goes away. */
  counter_t c0 = {.want = UINT64_MAX, .efd = bench_efd_new(0)};
  apex_manager_t *a = manager(uri, 2, &c0);
  apex_task_t *blk[2];
  for (int i = 0; i < 2; i++) {
    apex_error_t *err = NULL;
    if (apex_manager_submit(a, "bench_store", "block", NULL, NULL, &blk[i], &err) != APEX_OK)
      bench_die("submit: %s", apex_error_message(err));
  }
  for (int i = 0; i < 2; i++)
    while (apex_task_state(blk[i]) != APEX_TASK_RUNNING) usleep(1000);
  pthread_t th[SUBMITTERS];
  sub_arg_t args[SUBMITTERS];
  for (int i = 0; i < SUBMITTERS; i++) {
    args[i].m = a;
    args[i].n = n / SUBMITTERS + (i < (int)(n % SUBMITTERS) ? 1 : 0);
    args[i].action = "noop";
    if (pthread_create(&th[i], NULL, submitter, &args[i]) != 0) bench_die("pthread_create");
  }
  for (int i = 0; i < SUBMITTERS; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 2; i++) apex_task_release(blk[i]);
  apex_manager_destroy(a, 0); /* the queued rows stay, for recovery */
  close(c0.efd);
  uint64_t queued = count_state(uri, APEX_TASK_QUEUED);
  if (queued != n) bench_die("Wrecover: %llu of %llu rows queued", (unsigned long long)queued,
                             (unsigned long long)n);
  /* The new manager. */
  counter_t c = {.want = n, .efd = bench_efd_new(0)};
  apex_manager_t *m = manager(uri, 2, &c);
  size_t got = 0;
  apex_error_t *err = NULL;
  uint64_t cpu0 = bench_cpu_ns(), t0 = bench_now_ns();
  if (apex_manager_recover(m, &got, &err) != APEX_OK)
    bench_die("recover: %s", apex_error_message(err));
  uint64_t t1 = bench_now_ns(), cpu1 = bench_cpu_ns();
  if (got != n) bench_die("Wrecover: recovered %zu of %llu", got, (unsigned long long)n);
  bench_efd_wait(c.efd);
  uint64_t t2 = bench_now_ns();
  if (atomic_load(&c.failed)) bench_die("Wrecover: %lu tasks failed", atomic_load(&c.failed));
  if (apex_manager_destroy(m, 10000) != APEX_OK) bench_die("destroy");
  close(c.efd);
  rm_store();
  bench_emit(PEER, "Wrecover", n, "recover_ms", (double)(t1 - t0) / 1e6, "ms");
  bench_emit_cpu(PEER, "Wrecover", n, "cpu_ns_per_task", cpu1 - cpu0, n);
  bench_emit(PEER, "Wrecover", n, "to_last_done_ms", (double)(t2 - t0) / 1e6, "ms");
}

int main(int argc, char **argv) {
  const char *wl, *variant;
  uint64_t n;
  bench_args(argc, argv, &wl, &n, &variant);
  if (variant) {
    fprintf(stderr, "bench: %s %s not implemented by " PEER "\n", wl, variant);
    return 3;
  }
  snprintf(g_path, sizeof g_path, "%s/store_%s_%d.db", APEX_BENCH_STORE_DIR, wl, (int)getpid());
  if (strcmp(wl, "W13") == 0) {
    w13(n);
  } else if (strcmp(wl, "W14") == 0) {
    w14(n);
  } else if (strcmp(wl, "Wrecover") == 0) {
    wrecover(n);
  } else {
    fprintf(stderr, "bench: %s not implemented by " PEER "\n", wl);
    return 3;
  }
  return 0;
}
