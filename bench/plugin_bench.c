/* bench: the plugin the Apex benchmark peer loads (bench/README.md,
 * bench/bench_apex.c). It does as little as each workload allows, so what is
 * measured is Apex's own cost:
 *
 *   noop           blocking: returns APEX_OK.
 *   noop_deferred  deferred: completes inside its own start (apex_ctx_complete
 *                  before returning APEX_PENDING, which task.c supports), so
 *                  it measures the deferred path without a thread of ours.
 *   wait           blocking: signals the host through the eventfd `ready_fd`
 *                  (if >= 0) that it is about to wait, then waits cancellably
 *                  without limit; ends APEX_E_CANCELLED (cancel or timeout).
 *   flood          blocking: reports `n` progress updates as fast as it can,
 *                  the last at 100 %; result {"ns", "thread_cpu_ns"}: its own
 *                  wall and thread CPU time over the loop.
 *   hold           deferred: parks its ctx in a plugin-wide list; the start
 *                  that brings the list to `batch` ctxs completes them all,
 *                  so `batch` deferred tasks are in flight at once (W7).
 *
 * Threads: every start runs on a host worker; hold's list is shared by the
 * workers and guarded by state->mu, and its ctxs are completed after the
 * lock is dropped (no host call under our lock). The list is plugin state
 * (init/shutdown), so a reloaded plugin starts empty.
 *
 * What can fail: a write to ready_fd (the task fails APEX_E_EXECUTION), a
 * rejected progress update (flood fails with its code), no memory for the
 * result or the hold list (APEX_E_NOMEM). Nothing here aborts or prints. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "apex/plugin.h"

typedef struct bp_state {
  pthread_mutex_t mu;
  apex_ctx_t **held; /* hold's parked ctxs, n_held of cap_held */
  size_t n_held, cap_held;
} bp_state_t;

static int bp_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  (void)api;
  bp_state_t *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(why, why_len, "bench: out of memory for plugin state");
    return -1;
  }
  int rc = pthread_mutex_init(&s->mu, NULL);
  if (rc != 0) {
    snprintf(why, why_len, "bench: pthread_mutex_init: %s", strerror(rc));
    free(s);
    return -1;
  }
  *state = s;
  return 0;
}

/* Runs after every handler returned. A ctx still parked here belongs to a
 * task shutdown already ended; it is not ours to complete any more. */
static void bp_shutdown(void *state) {
  bp_state_t *s = state;
  if (!s) return;
  free(s->held);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

static int64_t param_int(apex_ctx_t *ctx, const char *name, int64_t dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static uint64_t clock_ns(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------- handlers */

static int bp_noop(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

static int bp_noop_deferred(apex_ctx_t *ctx) {
  apex_ctx_complete(ctx, APEX_OK); /* ctx is invalid from here on */
  return APEX_PENDING;
}

static int bp_wait(apex_ctx_t *ctx) {
  int fd = (int)param_int(ctx, "ready_fd", -1);
  if (fd >= 0) {
    uint64_t one = 1;
    ssize_t w;
    do w = write(fd, &one, sizeof one);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)sizeof one)
      return apex_ctx_fail(ctx, APEX_E_EXECUTION, "write ready_fd %d: %s", fd,
                           w < 0 ? strerror(errno) : "short write");
  }
  /* "Forever": only the token (cancel, timeout, shutdown) ends it. */
  if (apex_ctx_sleep_ms(ctx, UINT64_MAX) == APEX_E_CANCELLED) return APEX_E_CANCELLED;
  return apex_ctx_fail(ctx, APEX_E_EXECUTION, "an endless wait ended without a cancel");
}

static int bp_flood(apex_ctx_t *ctx) {
  int64_t n = param_int(ctx, "n", 1);
  uint64_t t0 = clock_ns(CLOCK_MONOTONIC), c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
  for (int64_t i = 0; i < n; i++) {
    int rc = apex_ctx_progress(ctx, 100.0 * (double)(i + 1) / (double)n, "working");
    if (rc != APEX_OK)
      return apex_ctx_fail(ctx, rc, "progress %lld of %lld: code %d", (long long)(i + 1),
                           (long long)n, rc);
  }
  uint64_t c1 = clock_ns(CLOCK_THREAD_CPUTIME_ID), t1 = clock_ns(CLOCK_MONOTONIC);
  json_t *res = json_pack("{s:I, s:I}", "ns", (json_int_t)(t1 - t0), "thread_cpu_ns",
                          (json_int_t)(c1 - c0));
  if (!res) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result");
  apex_ctx_set_result(ctx, res);
  return APEX_OK;
}

static int bp_hold(apex_ctx_t *ctx) {
  bp_state_t *s = apex_ctx_plugin_state(ctx);
  size_t batch = (size_t)param_int(ctx, "batch", 1);
  apex_ctx_t **full = NULL;
  size_t n_full = 0;
  pthread_mutex_lock(&s->mu);
  if (s->n_held == s->cap_held) {
    size_t cap = s->cap_held ? s->cap_held * 2 : 64;
    apex_ctx_t **grown = realloc(s->held, cap * sizeof *grown);
    if (!grown) {
      pthread_mutex_unlock(&s->mu);
      apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory parking the task");
      apex_ctx_complete(ctx, APEX_E_NOMEM);
      return APEX_PENDING;
    }
    s->held = grown;
    s->cap_held = cap;
  }
  s->held[s->n_held++] = ctx;
  if (s->n_held >= batch) { /* take the batch out; complete it unlocked */
    full = s->held;
    n_full = s->n_held;
    s->held = NULL;
    s->n_held = s->cap_held = 0;
  }
  pthread_mutex_unlock(&s->mu);
  for (size_t i = 0; i < n_full; i++) apex_ctx_complete(full[i], APEX_OK);
  free(full);
  return APEX_PENDING;
}

/* ----------------------------------------------------------- descriptor */

static const apex_param_spec_t k_wait_params[] = {
    {.name = "ready_fd", .type = APEX_PARAM_INT, .default_json = "-1", .has_min = 1, .min = -1,
     .has_max = 1, .max = 2147483647.0,
     .description = "eventfd to write 1 to once waiting; -1: none"},
};
static const apex_param_spec_t k_flood_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = 1,
     .description = "progress updates to report"},
};
static const apex_param_spec_t k_hold_params[] = {
    {.name = "batch", .type = APEX_PARAM_INT, .required = 1, .has_min = 1, .min = 1,
     .description = "tasks parked before all of them complete"},
};

#define BP_N(a) (sizeof(a) / sizeof((a)[0]))

static const apex_action_desc_t k_actions[] = {
    {.name = "noop", .description = "Returns at once", .handler = bp_noop,
     .kind = APEX_ACTION_BLOCKING},
    {.name = "noop_deferred", .description = "Completes inside its start",
     .handler = bp_noop_deferred, .kind = APEX_ACTION_DEFERRED},
    {.name = "wait", .description = "Signals ready_fd, then waits until cancelled",
     .handler = bp_wait, .kind = APEX_ACTION_BLOCKING, .params = k_wait_params,
     .n_params = BP_N(k_wait_params)},
    {.name = "flood", .description = "Reports n progress updates as fast as it can",
     .handler = bp_flood, .kind = APEX_ACTION_BLOCKING, .params = k_flood_params,
     .n_params = BP_N(k_flood_params)},
    {.name = "hold", .description = "Parks until batch tasks are parked, then completes them",
     .handler = bp_hold, .kind = APEX_ACTION_DEFERRED, .params = k_hold_params,
     .n_params = BP_N(k_hold_params)},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "bench",
    .version = "1.0.0",
    .description = "No-op, waiting, flooding and parking actions for the benchmarks",
    .init = bp_init,
    .shutdown = bp_shutdown,
    .actions = k_actions,
    .n_actions = BP_N(k_actions),
};

APEX_PLUGIN_DEFINE(k_plugin)
