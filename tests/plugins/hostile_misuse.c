/* hostile_misuse: a test plugin that breaks the ctx's rules on purpose
 * (include/apex/plugin.h, apex_ctx_complete: the ctx is invalid once it
 * returns), so tests can show the host catches each misuse without a
 * crash (docs/plugin-developer-guide.md, "Misuse Apex catches"):
 *
 *   complete_twice       deferred; completes with APEX_OK, then again
 *   complete_race        deferred; two threads complete at once (released
 *                        together from a barrier); the handler joins them
 *                        before it returns APEX_PENDING. Each task counts
 *                        whether the two calls overlapped (see `stats`)
 *   after_complete       deferred; completes, then calls every other ctx
 *                        service once and records what each returned (see
 *                        `stats`)
 *   complete_in_blocking blocking; calls complete (APEX_E_EXECUTION), then
 *                        returns APEX_OK: a blocking handler finishes by
 *                        returning, so the task succeeds
 *   stats                blocking; result {"overlaps": tasks of
 *                        complete_race whose two completes overlapped,
 *                        "after": {service: what it returned after complete}}
 *
 * Threads: complete_race's two threads live inside its handler (created
 * and joined there), so nothing outlives a handler and no shutdown hook is
 * needed. The counters are globals guarded by g_mu (or atomic). What can
 * fail: pthread_create and memory (the handler then fails the task before
 * completing it). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pthread_barrier_t */
#endif

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "apex/plugin.h"

static atomic_long g_overlaps;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static json_t *g_after; /* under g_mu: what each service returned after complete */

/* ------------------------------------------------------- complete twice */

static int complete_twice(apex_ctx_t *ctx) {
  apex_ctx_complete(ctx, APEX_OK);
  apex_ctx_complete(ctx, APEX_OK); /* misuse: the ctx is invalid now */
  return APEX_PENDING;
}

/* -------------------------------------------------------- complete race */

typedef struct race {
  apex_ctx_t *ctx;
  pthread_barrier_t go;
  atomic_int inside;  /* threads inside apex_ctx_complete */
  atomic_int overlap; /* one entered while the other was inside */
} race_t;

static void *racer(void *arg) {
  race_t *r = arg;
  pthread_barrier_wait(&r->go);
  if (atomic_fetch_add(&r->inside, 1) == 1) atomic_store(&r->overlap, 1);
  apex_ctx_complete(r->ctx, APEX_OK);
  if (atomic_fetch_sub(&r->inside, 1) == 2) atomic_store(&r->overlap, 1);
  return NULL;
}

static int complete_race(apex_ctx_t *ctx) {
  race_t *r = calloc(1, sizeof *r);
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "hostile_misuse: out of memory");
  r->ctx = ctx;
  if (pthread_barrier_init(&r->go, NULL, 2) != 0) {
    free(r);
    return apex_ctx_fail(ctx, APEX_E_NOMEM, "hostile_misuse: barrier");
  }
  pthread_t th[2];
  int e = pthread_create(&th[0], NULL, racer, r);
  if (e) {
    pthread_barrier_destroy(&r->go);
    free(r);
    return apex_ctx_fail(ctx, APEX_E_IO, "hostile_misuse: pthread_create: %d", e);
  }
  if ((e = pthread_create(&th[1], NULL, racer, r)) != 0) {
    /* The first racer waits at the barrier: be its partner, so it
     * completes alone. */
    pthread_barrier_wait(&r->go);
    pthread_join(th[0], NULL);
  } else {
    pthread_join(th[0], NULL);
    pthread_join(th[1], NULL);
  }
  if (atomic_load(&r->overlap)) atomic_fetch_add(&g_overlaps, 1);
  pthread_barrier_destroy(&r->go);
  free(r);
  return APEX_PENDING; /* completed by the racers */
}

/* ------------------------------------------------------- after complete */

static void record(json_t *o, const char *name, json_t *v) { json_object_set_new(o, name, v); }

static int after_complete(apex_ctx_t *ctx) {
  apex_ctx_set_result(ctx, json_pack("{s:b}", "completed", 1));
  apex_ctx_complete(ctx, APEX_OK);
  /* Every call below is on a ctx that is no longer valid. */
  json_t *o = json_object();
  record(o, "progress", json_integer(apex_ctx_progress(ctx, 50, "late")));
  apex_progress_update_t u = {.percentage = 60, .message = "late update"};
  record(o, "progress_update", json_integer(apex_ctx_progress_update(ctx, &u)));
  record(o, "progress_invalid", json_integer(apex_ctx_progress(ctx, 500, NULL)));
  apex_ctx_set_result(ctx, json_pack("{s:s}", "late", "result")); /* taken: must not leak */
  record(o, "fail", json_integer(apex_ctx_fail(ctx, APEX_E_EXECUTION, "late %s", "failure")));
  apex_ctx_log(ctx, APEX_LOG_ERROR, "late log line %d", 1);
  record(o, "params_null", json_boolean(apex_ctx_params(ctx) == NULL));
  record(o, "task_id", json_integer((json_int_t)apex_ctx_task_id(ctx)));
  record(o, "attempt", json_integer(apex_ctx_attempt(ctx)));
  record(o, "plugin_state_null", json_boolean(apex_ctx_plugin_state(ctx) == NULL));
  record(o, "is_cancelled", json_integer(apex_ctx_is_cancelled(ctx)));
  const char *why = apex_ctx_cancel_reason(ctx);
  record(o, "cancel_reason", why ? json_string(why) : json_null());
  record(o, "cancel_fd", json_integer(apex_ctx_cancel_fd(ctx)));
  record(o, "sleep_ms", json_integer(apex_ctx_sleep_ms(ctx, 60000)));
  int fds[2];
  if (pipe(fds) == 0) {
    record(o, "wait_fd", json_integer(apex_ctx_wait_fd(ctx, fds[0], POLLIN, 60000)));
    close(fds[0]);
    close(fds[1]);
  }
  apex_ctx_complete(ctx, APEX_E_EXECUTION);
  pthread_mutex_lock(&g_mu);
  json_decref(g_after);
  g_after = o;
  pthread_mutex_unlock(&g_mu);
  return APEX_PENDING;
}

/* ------------------------------------------------- complete in blocking */

static int complete_in_blocking(apex_ctx_t *ctx) {
  apex_ctx_complete(ctx, APEX_E_EXECUTION); /* logged and ignored */
  apex_ctx_set_result(ctx, json_pack("{s:s}", "by", "return"));
  return APEX_OK;
}

/* ----------------------------------------------------------------- stats */

static int stats(apex_ctx_t *ctx) {
  pthread_mutex_lock(&g_mu);
  json_t *after = g_after ? json_deep_copy(g_after) : json_null();
  pthread_mutex_unlock(&g_mu);
  apex_ctx_set_result(ctx, json_pack("{s:I,s:o}", "overlaps", (json_int_t)atomic_load(&g_overlaps),
                                     "after", after));
  return APEX_OK;
}

static void hm_shutdown(void *state) {
  (void)state;
  pthread_mutex_lock(&g_mu);
  json_decref(g_after);
  g_after = NULL;
  pthread_mutex_unlock(&g_mu);
}

#define ACTION(n, h, k) {.name = n, .description = n, .handler = h, .kind = k}
static const apex_action_desc_t k_actions[] = {
    ACTION("complete_twice", complete_twice, APEX_ACTION_DEFERRED),
    ACTION("complete_race", complete_race, APEX_ACTION_DEFERRED),
    ACTION("after_complete", after_complete, APEX_ACTION_DEFERRED),
    ACTION("complete_in_blocking", complete_in_blocking, APEX_ACTION_BLOCKING),
    ACTION("stats", stats, APEX_ACTION_BLOCKING),
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "hostile_misuse",
    .version = "1.0.0",
    .description = "uses its ctx after completing it, on purpose",
    .shutdown = hm_shutdown,
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
