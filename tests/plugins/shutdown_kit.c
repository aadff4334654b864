/* shutdown_kit: a test plugin for the shutdown, event-delivery and wait
 * contract of the engine (tests/integration/test_shutdown.c):
 *
 *   noop            returns APEX_OK at once
 *   coop_sleep      sleeps `ms` on its token: cancelled early, it takes
 *                   `exit_ms` (default 0) to clean up, then returns
 *                   APEX_E_CANCELLED
 *   slow_transient  sleeps `ms` on its token, then fails APEX_E_TRANSIENT
 *                   (retried when the policy allows it)
 *   deaf_block      blocking; sleeps `ms` never looking at its token, then
 *                   reports progress and sets a result (both late by then)
 *   deaf_deferred   deferred; a thread of its own sleeps `ms` deaf to the
 *                   token, reports progress and completes
 *
 * The shutdown hook writes one byte to the fd named by the environment
 * variable SHUTDOWN_KIT_FD (read by init), so a test sees that a teardown ran
 * the hook on the thread that performed it; nothing else is observable about
 * a manager freed after apex_manager_destroy returned APEX_E_BUSY.
 *
 * State is static, not allocated in init: after a teardown performed by a
 * plugin's own thread the plugin stays loaded and its shutdown hook never
 * runs, and a leak checker must not count that as a leak.
 *
 * Threads: deaf_deferred's threads are detached (a plugin that stays loaded
 * never joins them, and a thread never joined is a leak to TSan); the
 * shutdown hook waits, under k_mu, until none is left inside the host API.
 * What can fail: pthread_create (the task fails APEX_E_EXECUTION), memory
 * (APEX_E_NOMEM). */
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

static pthread_mutex_t k_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t k_cv = PTHREAD_COND_INITIALIZER;
static int k_threads; /* deaf_deferred threads not yet past complete() (k_mu) */
static int k_fd = -1; /* where shutdown reports; set by init */
static int k_state;   /* what init hands the host as state */

static int sk_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  (void)api;
  (void)why;
  (void)why_len;
  const char *s = getenv("SHUTDOWN_KIT_FD");
  pthread_mutex_lock(&k_mu);
  k_fd = s && *s ? atoi(s) : -1;
  pthread_mutex_unlock(&k_mu);
  *state = &k_state;
  return 0;
}

static void sk_shutdown(void *state) {
  (void)state;
  pthread_mutex_lock(&k_mu);
  while (k_threads > 0) pthread_cond_wait(&k_cv, &k_mu);
  int fd = k_fd;
  pthread_mutex_unlock(&k_mu);
  if (fd >= 0) {
    ssize_t w;
    do w = write(fd, "S", 1);
    while (w < 0 && errno == EINTR);
  }
}

static int64_t param_int(apex_ctx_t *ctx, const char *name, int64_t dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

/* Sleeps ms in 10 ms slices and never looks at the token. */
static void sleep_deaf(int64_t ms) {
  while (ms > 0) {
    int64_t slice = ms < 10 ? ms : 10;
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)slice * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    ms -= slice;
  }
}

/* What a deaf handler does once it wakes: everything after its task ended
 * is late, and must reach the host as nothing at all. */
static void report_late(apex_ctx_t *ctx, int64_t ms) {
  (void)apex_ctx_progress(ctx, 100.0, "late");
  json_t *r = json_pack("{s:I}", "slept_ms", (json_int_t)ms);
  if (r) apex_ctx_set_result(ctx, r);
}

static int noop(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

static int coop_sleep(apex_ctx_t *ctx) {
  if (apex_ctx_sleep_ms(ctx, (uint64_t)param_int(ctx, "ms", 1000)) == APEX_E_CANCELLED) {
    sleep_deaf(param_int(ctx, "exit_ms", 0));
    return apex_ctx_fail(ctx, APEX_E_CANCELLED, "sleep cancelled");
  }
  return APEX_OK;
}

static int slow_transient(apex_ctx_t *ctx) {
  if (apex_ctx_sleep_ms(ctx, (uint64_t)param_int(ctx, "ms", 1000)) == APEX_E_CANCELLED)
    return apex_ctx_fail(ctx, APEX_E_CANCELLED, "sleep cancelled");
  return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "transient failure after the sleep");
}

static int deaf_block(apex_ctx_t *ctx) {
  int64_t ms = param_int(ctx, "ms", 3000);
  sleep_deaf(ms);
  report_late(ctx, ms);
  return APEX_OK;
}

static void *deaf_main(void *arg) {
  apex_ctx_t *ctx = arg;
  int64_t ms = param_int(ctx, "ms", 3000);
  sleep_deaf(ms);
  report_late(ctx, ms);
  apex_ctx_complete(ctx, APEX_OK); /* may tear an orphaned manager down */
  pthread_mutex_lock(&k_mu);
  k_threads--;
  pthread_cond_broadcast(&k_cv);
  pthread_mutex_unlock(&k_mu);
  return NULL;
}

static int deaf_deferred(apex_ctx_t *ctx) {
  pthread_attr_t at;
  if (pthread_attr_init(&at) != 0) return apex_ctx_fail(ctx, APEX_E_NOMEM, "pthread_attr_init");
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  pthread_mutex_lock(&k_mu);
  k_threads++;
  pthread_mutex_unlock(&k_mu);
  pthread_t tid;
  int rc = pthread_create(&tid, &at, deaf_main, ctx);
  pthread_attr_destroy(&at);
  if (rc != 0) {
    pthread_mutex_lock(&k_mu);
    k_threads--;
    pthread_cond_broadcast(&k_cv);
    pthread_mutex_unlock(&k_mu);
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "pthread_create: %s", strerror(rc));
  }
  return APEX_PENDING;
}

static const apex_param_spec_t k_ms[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .default_json = "1000", .has_min = 1, .min = 0},
};
static const apex_param_spec_t k_coop[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .default_json = "1000", .has_min = 1, .min = 0},
    {.name = "exit_ms", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1, .min = 0},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const apex_action_desc_t k_actions[] = {
    {.name = "noop", .description = "returns at once", .handler = noop,
     .kind = APEX_ACTION_BLOCKING},
    {.name = "coop_sleep", .description = "sleeps ms on its token", .handler = coop_sleep,
     .kind = APEX_ACTION_BLOCKING, .params = k_coop, .n_params = N(k_coop)},
    {.name = "slow_transient", .description = "sleeps ms on its token, then fails transient",
     .handler = slow_transient, .kind = APEX_ACTION_BLOCKING, .params = k_ms,
     .n_params = N(k_ms)},
    {.name = "deaf_block", .description = "sleeps ms deaf to its token", .handler = deaf_block,
     .kind = APEX_ACTION_BLOCKING, .params = k_ms, .n_params = N(k_ms)},
    {.name = "deaf_deferred", .description = "its thread sleeps ms deaf, then completes",
     .handler = deaf_deferred, .kind = APEX_ACTION_DEFERRED, .params = k_ms,
     .n_params = N(k_ms)},
};

static const apex_plugin_desc_t k_plugin = {
    .abi_version = APEX_PLUGIN_ABI,
    .struct_size = sizeof(apex_plugin_desc_t),
    .name = "shutdown_kit",
    .version = "0.0.1",
    .description = "Actions for the shutdown, delivery and wait tests",
    .init = sk_init,
    .shutdown = sk_shutdown,
    .actions = k_actions,
    .n_actions = N(k_actions),
};

APEX_PLUGIN_DEFINE(k_plugin)
