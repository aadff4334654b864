/* The shared-queue benchmark (bench/README.md, issue 14): W15, peers
 * `worker` (an SQLite store) and `worker_pg` (variant pg: a PostgreSQL
 * server, APEX_BENCH_PG_URI or one started like the tests' fixture).
 *   W15 N  1. the naive peer, in the same run: 3 threads, each with its own
 *            store connection (as 3 worker processes would have), loop on
 *            a one-row claim_next and a waited finish until N/10 queued
 *            no-op rows are done: naive_tasks_per_s;
 *          2. N queued no-op durable tasks (bench_worker.noop), then 3
 *            `apex worker` processes (concurrency 64, claims of up to 64)
 *            started on the store: from their start to the last task
 *            ended: tasks_per_s, and the workers' CPU per task;
 *          3. with those 3 workers idle, 200 tasks (bench_worker.stamp)
 *            enqueued one at a time: from the enqueue call to the
 *            handler's start (its result's wall-clock time): p50, p99.
 * SQLite wakes an idle worker of another process only by its poll (0.05 s
 * here); PostgreSQL by NOTIFY. Files go to APEX_BENCH_STORE_DIR. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "apex/apex.h"
#include "bench_util.h"
#include "store/store.h"
#include "support/pg_fixture.h"

extern char **environ;

#define WORKERS 3
#define NAIVE_THREADS 3
#define SUBMITTERS 32
#define LAT_SAMPLES 200

static char g_path[512];
static const char *g_peer = "worker";

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static apex_manager_t *submitter_manager(const char *uri) {
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = 1;
  cfg.store = uri;
  apex_manager_t *m = NULL;
  int rc = apex_manager_new(&cfg, &m);
  if (rc != APEX_OK) bench_die("apex_manager_new(%s): %s", uri, apex_strerror(rc));
  apex_error_t *err = NULL;
  if (apex_manager_load(m, APEX_BENCH_WORKER_PLUGIN, &err) != APEX_OK)
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
  for (uint64_t i = 0; i < a->n; i++) {
    uint64_t id = 0;
    apex_error_t *err = NULL;
    if (apex_manager_enqueue(a->m, "bench_worker", a->action, NULL, NULL, &id, &err) != APEX_OK)
      bench_die("enqueue: %s", apex_error_message(err));
  }
  return NULL;
}

/* Enqueues n tasks of action from SUBMITTERS threads. */
static void fill(apex_manager_t *m, uint64_t n, const char *action) {
  pthread_t th[SUBMITTERS];
  sub_arg_t args[SUBMITTERS];
  for (int i = 0; i < SUBMITTERS; i++) {
    args[i].m = m;
    args[i].n = n / SUBMITTERS + (i < (int)(n % SUBMITTERS) ? 1 : 0);
    args[i].action = action;
    if (pthread_create(&th[i], NULL, submitter, &args[i]) != 0) bench_die("pthread_create");
  }
  for (int i = 0; i < SUBMITTERS; i++) pthread_join(th[i], NULL);
}

/* Whether any task of s past *cursor is not terminal yet; *cursor moves up
 * to just below the first one (the rows below it ended, for good), so a
 * poll does not scan the ended rows again (it would load the server the
 * run measures). */
static int any_open(apex_store_t *s, uint64_t *cursor) {
  apex_store_filter_t f = APEX_STORE_FILTER_INIT;
  f.after_id = *cursor;
  f.states = APEX_OPS_STATE(APEX_TASK_QUEUED) | APEX_OPS_STATE(APEX_TASK_RUNNING) |
             APEX_OPS_STATE(APEX_TASK_SCHEDULED) | APEX_OPS_STATE(APEX_TASK_RETRY_WAIT);
  f.limit = 1;
  json_t *page = NULL;
  apex_error_t *err = NULL;
  if (apex_store_list(s, &f, &page, &err) != APEX_OK) bench_die("list: %s", apex_error_message(err));
  json_t *first = json_array_get(json_object_get(page, "tasks"), 0);
  int open = first != NULL;
  if (first) *cursor = (uint64_t)json_integer_value(json_object_get(first, "id")) - 1;
  json_decref(page);
  return open;
}

/* ---- 1. the naive loop ---- */

typedef struct {
  const char *uri;
  atomic_ulong *done;
  int k;
} naive_arg_t;

static void *naive(void *p) {
  naive_arg_t *a = p;
  apex__store_t *s = NULL;
  apex_error_t *err = NULL;
  if (apex__store_open(a->uri, &s, &err) != APEX_OK) bench_die("open: %s", apex_error_message(err));
  char owner[32];
  snprintf(owner, sizeof owner, "naive-%d", a->k);
  for (;;) {
    double now = apex__store_now();
    apex__srec_t *rows = NULL;
    size_t n = 0;
    if (s->ops->claim_next(s, owner, now, now + 30, 1, NULL, 0, &rows, &n, &err) != APEX_OK)
      bench_die("claim_next: %s", apex_error_message(err));
    if (n == 0) break;
    if (s->ops->finish(s, rows[0].id, owner, APEX_TASK_SUCCEEDED, apex__store_now(), 0, "null",
                       NULL, NULL, 1, &err) != APEX_OK)
      bench_die("finish: %s", apex_error_message(err));
    apex__srec_free_array(rows, n);
    atomic_fetch_add(a->done, 1);
  }
  s->ops->close(s);
  return NULL;
}

static double naive_rate(apex_manager_t *m, const char *uri, uint64_t n) {
  fill(m, n, "noop");
  atomic_ulong done = 0;
  pthread_t th[NAIVE_THREADS];
  naive_arg_t args[NAIVE_THREADS];
  uint64_t t0 = bench_now_ns();
  for (int i = 0; i < NAIVE_THREADS; i++) {
    args[i] = (naive_arg_t){.uri = uri, .done = &done, .k = i};
    if (pthread_create(&th[i], NULL, naive, &args[i]) != 0) bench_die("pthread_create");
  }
  for (int i = 0; i < NAIVE_THREADS; i++) pthread_join(th[i], NULL);
  uint64_t t1 = bench_now_ns();
  if (atomic_load(&done) != n) bench_die("naive: %lu of %llu done", atomic_load(&done),
                                         (unsigned long long)n);
  return (double)n * 1e9 / (double)(t1 - t0);
}

/* ---- 2, 3: apex worker processes ---- */

static pid_t start_worker(const char *uri, int k, const char *out) {
  char owner[32];
  snprintf(owner, sizeof owner, "bench-w%d-%d", k, (int)getpid());
  /* BENCH_W15_CONCURRENCY, BENCH_W15_BATCH: other sizes, for exploring. */
  const char *conc = getenv("BENCH_W15_CONCURRENCY"), *batch = getenv("BENCH_W15_BATCH");
  char *argv[] = {(char *)APEX_CLI_PATH, "worker", "--store", (char *)uri, "--plugin-path",
                  (char *)APEX_BENCH_PLUGIN_DIR, "--plugins", "bench_worker", "--concurrency",
                  (char *)(conc ? conc : "64"), "--batch", (char *)(batch ? batch : "64"),
                  "--poll", "0.05", "--owner", owner, "--json", NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, APEX_CLI_PATH, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) bench_die("spawn apex worker: %s", strerror(rc));
  return pid;
}

static void wait_ready(const char *out) {
  uint64_t end = bench_now_ns() + 30000000000ull;
  for (;;) {
    FILE *f = fopen(out, "r");
    char line[1024];
    int ready = 0;
    while (f && fgets(line, sizeof line, f))
      if (strstr(line, "\"event\":\"worker\"")) ready = 1;
    if (f) fclose(f);
    if (ready) return;
    if (bench_now_ns() > end) bench_die("apex worker did not start (see %s)", out);
    usleep(2000);
  }
}

static uint64_t children_cpu_ns(void) {
  struct rusage ru;
  getrusage(RUSAGE_CHILDREN, &ru);
  return (uint64_t)ru.ru_utime.tv_sec * 1000000000ull + (uint64_t)ru.ru_utime.tv_usec * 1000 +
         (uint64_t)ru.ru_stime.tv_sec * 1000000000ull + (uint64_t)ru.ru_stime.tv_usec * 1000;
}

/* The database server's CPU so far (PostgreSQL: the postmaster's own and
 * its reaped children's from its stat line, plus each live child's), from
 * the postmaster.pid of its data folder; 0 when there is none to read (an
 * external server with no APEX_BENCH_PG_DATA, or SQLite). */
static char g_pg_data[600];

static uint64_t proc_cpu_ticks(long pid, int with_children) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t k = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[k] = 0;
  const char *p = strrchr(buf, ')');
  unsigned long long v[13] = {0};
  /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt
   * majflt cmajflt utime stime cutime cstime */
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu",
                   &v[0], &v[1], &v[2], &v[3]) != 4)
    return 0;
  return v[0] + v[1] + (with_children ? v[2] + v[3] : 0);
}

static uint64_t server_cpu_ns(void) {
  if (!g_pg_data[0]) return 0;
  char path[700];
  snprintf(path, sizeof path, "%s/postmaster.pid", g_pg_data);
  FILE *f = fopen(path, "r");
  long pm = 0;
  if (!f) return 0;
  if (fscanf(f, "%ld", &pm) != 1) pm = 0;
  fclose(f);
  if (pm <= 0) return 0;
  uint64_t ticks = proc_cpu_ticks(pm, 1);
  snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", pm, pm);
  if ((f = fopen(path, "r")) != NULL) {
    long c;
    while (fscanf(f, "%ld", &c) == 1) ticks += proc_cpu_ticks(c, 0);
    fclose(f);
  }
  return ticks * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

static void run(uint64_t n, const char *uri) {
  apex_manager_t *m = submitter_manager(uri);
  apex_store_t *s = apex_manager_store(m);
  uint64_t nn = n / 10 ? n / 10 : 1;
  double naive_tps = naive_rate(m, uri, nn);

  fill(m, n, "noop");
  char out[WORKERS][600];
  pid_t pid[WORKERS];
  uint64_t cpu0 = children_cpu_ns(); /* initdb and pg_ctl are children too */
  uint64_t scpu0 = server_cpu_ns();
  uint64_t t0 = bench_now_ns();
  for (int k = 0; k < WORKERS; k++) {
    snprintf(out[k], sizeof out[k], "%s.w%d.out", g_path, k);
    pid[k] = start_worker(uri, k, out[k]);
  }
  uint64_t cursor = 0;
  while (any_open(s, &cursor)) usleep(5000);
  uint64_t t1 = bench_now_ns();
  uint64_t scpu1 = server_cpu_ns();

  /* Claim latency: the workers are up and idle now. */
  uint64_t *lat = bench_xcalloc(LAT_SAMPLES, sizeof *lat);
  for (int k = 0; k < WORKERS; k++) wait_ready(out[k]);
  for (int i = 0; i < LAT_SAMPLES; i++) {
    double ts = wall_now();
    uint64_t id = 0;
    apex_error_t *err = NULL;
    if (apex_manager_enqueue(m, "bench_worker", "stamp", NULL, NULL, &id, &err) != APEX_OK)
      bench_die("enqueue: %s", apex_error_message(err));
    json_t *j = NULL;
    uint64_t end = bench_now_ns() + 30000000000ull;
    for (;;) {
      if (apex_store_get(s, id, &j, &err) != APEX_OK) bench_die("get: %s", apex_error_message(err));
      const char *st = json_string_value(json_object_get(j, "state"));
      if (st && strcmp(st, "succeeded") == 0) break;
      json_decref(j);
      j = NULL;
      if (bench_now_ns() > end) bench_die("W15: a stamp task did not run in 30 s");
      usleep(200);
    }
    double t = json_number_value(json_object_get(json_object_get(j, "result"), "t"));
    json_decref(j);
    lat[i] = t > ts ? (uint64_t)((t - ts) * 1e9) : 0;
  }

  for (int k = 0; k < WORKERS; k++) {
    kill(pid[k], SIGTERM);
    int st = 0;
    while (waitpid(pid[k], &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bench_die("apex worker %d exited badly", k);
    unlink(out[k]);
  }
  /* The workers' CPU over their whole life (the latency phase's few tasks
   * included); the database server's is not in it. */
  uint64_t cpu = children_cpu_ns() - cpu0;
  apex_manager_destroy(m, 1000);
  bench_emit(g_peer, "W15", n, "tasks_per_s", (double)n * 1e9 / (double)(t1 - t0), "tasks/s");
  bench_emit_cpu(g_peer, "W15", n, "cpu_ns_per_task", cpu, n);
  /* The server's CPU from the workers' start to the last task's end. */
  if (scpu0 && scpu1 > scpu0)
    bench_emit_cpu(g_peer, "W15", n, "server_cpu_ns_per_task", scpu1 - scpu0, n);
  bench_emit(g_peer, "W15", n, "naive_tasks_per_s", naive_tps, "tasks/s");
  /* Labelled with the run's size, as its other figures (the report groups
   * by it); the quantiles are over the LAT_SAMPLES samples. */
  bench_emit(g_peer, "W15", n, "p50", (double)bench_quantile(lat, LAT_SAMPLES, 0.50), "ns");
  bench_emit(g_peer, "W15", n, "p99", (double)bench_quantile(lat, LAT_SAMPLES, 0.99), "ns");
  free(lat);
}

static void rm_store(void) {
  char x[600];
  unlink(g_path);
  snprintf(x, sizeof x, "%s-wal", g_path);
  unlink(x);
  snprintf(x, sizeof x, "%s-shm", g_path);
  unlink(x);
  snprintf(x, sizeof x, "%s.owners", g_path);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "%s", x);
  /* the owner-lock folder: empty once every worker stopped */
  rmdir(cmd);
}

int main(int argc, char **argv) {
  const char *wl, *variant;
  uint64_t n;
  bench_args(argc, argv, &wl, &n, &variant);
  if (strcmp(wl, "W15") != 0 || (variant && strcmp(variant, "pg") != 0)) {
    fprintf(stderr, "bench: %s %s not implemented by worker\n", wl, variant ? variant : "");
    return 3;
  }
  snprintf(g_path, sizeof g_path, "%s/worker_%s_%d.db", APEX_BENCH_STORE_DIR, wl, (int)getpid());
  if (!variant) {
    rm_store();
    char uri[600];
    snprintf(uri, sizeof uri, "sqlite:%s", g_path);
    run(n, uri);
    rm_store();
    return 0;
  }
  g_peer = "worker_pg";
  pg_fixture_t f;
  char why[4096];
  const char *ext = getenv("APEX_BENCH_PG_URI");
  if (ext && *ext) {
    const char *data = getenv("APEX_BENCH_PG_DATA"); /* its data folder, for its CPU */
    if (data) snprintf(g_pg_data, sizeof g_pg_data, "%s", data);
    run(n, ext);
    return 0;
  }
  if (pg_fixture_start(&f, why, sizeof why) != 0) bench_die("PostgreSQL: %s", why);
  snprintf(g_pg_data, sizeof g_pg_data, "%s/data", f.dir);
  run(n, f.uri);
  pg_fixture_stop(&f);
  return 0;
}
