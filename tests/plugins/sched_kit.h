/* sched_kit: the body of the scheduler's test plugins (sched_a.c,
 * sched_b.c, sched_c.c each define SK_NAME and include this), for
 * tests/integration/test_sched_*.c. The three are one kit under three
 * names, so limits per plugin and per action can be told apart.
 *
 *   x   blocking: enter, work `us` microseconds, leave, succeed; with us
 *       -1, wait while the probe's `hold` is set (a gate the test opens).
 *   d   deferred: enter, hand the ctx to the plugin's completer thread,
 *       which works `us` microseconds, leaves and completes it (a deferred
 *       attempt holds its slot until complete()).
 *   f   blocking: enter, leave, fail APEX_E_TRANSIENT while the attempt is
 *       below `fails` + 1 (a retry re-enters the scheduler).
 *   h   as x, with the descriptor's scheduling defaults: max_concurrency 2,
 *       key_concurrency 1, and a concurrency_key hook that gives the param
 *       `host` (none when it is "").
 *
 * Params: probe (the address of the test's sk_probe_t, as an int; the
 * test and the plugin share the process), slots (up to 4 counter indexes
 * this task counts in: the test's global, plugin, action and key counters;
 * -1 unused), us, seq (1: record the start's order and time in the
 * probe). "Enter" raises each named counter and keeps its maximum; "leave"
 * lowers them before the attempt ends, so a count above a limit the
 * scheduler enforces is a scheduler bug.
 *
 * Threads: handlers on workers, completions on the plugin's own thread
 * (joined in its shutdown hook). What can fail: nothing but the params'
 * absence (the spec requires them). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "apex/plugin.h"
#include "sched_probe.h"

static void sk_nap_us(long us) {
  if (us <= 0) return;
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  nanosleep(&ts, NULL);
}

typedef struct sk_args {
  sk_probe_t *probe;
  int slots[4];
  long us;
} sk_args_t;

static void sk_read(apex_ctx_t *ctx, sk_args_t *a) {
  const json_t *p = apex_ctx_params(ctx);
  a->probe = (sk_probe_t *)(uintptr_t)json_integer_value(json_object_get(p, "probe"));
  const json_t *s = json_object_get(p, "slots");
  for (int i = 0; i < 4; i++) {
    const json_t *v = json_array_get(s, (size_t)i);
    a->slots[i] = v ? (int)json_integer_value(v) : -1;
  }
  a->us = (long)json_integer_value(json_object_get(p, "us"));
  if (json_integer_value(json_object_get(p, "seq"))) {
    int64_t n = atomic_fetch_add(&a->probe->n_starts, 1);
    if (n < SK_MAX_STARTS) {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      a->probe->start_ns[n] = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
      a->probe->start_tag[n] = (int)json_integer_value(json_object_get(p, "tag"));
    }
  }
}

static void sk_enter(const sk_args_t *a) {
  for (int i = 0; i < 4; i++) {
    int k = a->slots[i];
    if (k < 0 || k >= SK_SLOTS) continue;
    int now = atomic_fetch_add(&a->probe->cur[k], 1) + 1;
    int seen = atomic_load(&a->probe->max[k]);
    while (now > seen && !atomic_compare_exchange_weak(&a->probe->max[k], &seen, now)) {
    }
  }
  atomic_fetch_add(&a->probe->started, 1);
}

static void sk_leave(const sk_args_t *a) {
  for (int i = 0; i < 4; i++) {
    int k = a->slots[i];
    if (k >= 0 && k < SK_SLOTS) atomic_fetch_sub(&a->probe->cur[k], 1);
  }
  atomic_fetch_add(&a->probe->finished, 1);
}

static int sk_x(apex_ctx_t *ctx) {
  sk_args_t a;
  sk_read(ctx, &a);
  sk_enter(&a);
  if (a.us < 0)
    while (atomic_load(&a.probe->hold)) sk_nap_us(100);
  sk_nap_us(a.us);
  sk_leave(&a);
  return APEX_OK;
}

static int sk_f(apex_ctx_t *ctx) {
  sk_args_t a;
  sk_read(ctx, &a);
  sk_enter(&a);
  sk_leave(&a);
  long fails = (long)json_integer_value(json_object_get(apex_ctx_params(ctx), "fails"));
  return (long)apex_ctx_attempt(ctx) <= fails ? APEX_E_TRANSIENT : APEX_OK;
}

/* The completer: a FIFO of pending ctxs, each completed `us` after it
 * was handed over (in order: the kit's deferred tasks share one `us`). */
typedef struct sk_item {
  apex_ctx_t *ctx;
  sk_args_t a;
  struct sk_item *next;
} sk_item_t;

/* One completer per manager that loaded the plugin (its state): the
 * image is shared when two managers load the same file. */
typedef struct sk_state {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  sk_item_t *head, *tail;
  int stop;
  pthread_t thread;
} sk_state_t;

static void *sk_completer(void *arg) {
  sk_state_t *s = arg;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->head && !s->stop) pthread_cond_wait(&s->cv, &s->mu);
    if (!s->head) break;
    sk_item_t *it = s->head;
    s->head = it->next;
    if (!s->head) s->tail = NULL;
    pthread_mutex_unlock(&s->mu);
    sk_nap_us(it->a.us);
    sk_leave(&it->a);
    apex_ctx_complete(it->ctx, APEX_OK);
    free(it);
    pthread_mutex_lock(&s->mu);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static int sk_d(apex_ctx_t *ctx) {
  sk_state_t *s = apex_ctx_plugin_state(ctx);
  sk_item_t *it = calloc(1, sizeof *it);
  if (!it) return APEX_E_NOMEM;
  it->ctx = ctx;
  sk_read(ctx, &it->a);
  sk_enter(&it->a);
  pthread_mutex_lock(&s->mu);
  if (s->tail) s->tail->next = it; else s->head = it;
  s->tail = it;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return APEX_PENDING;
}

static int sk_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  (void)api;
  (void)why;
  (void)why_len;
  sk_state_t *s = calloc(1, sizeof *s);
  if (!s) return APEX_E_NOMEM;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  if (pthread_create(&s->thread, NULL, sk_completer, s) != 0) {
    free(s);
    return APEX_E_IO;
  }
  *state = s;
  return APEX_OK;
}

/* Completes what is left (a shutdown cancelled those tasks: their late
 * completes are ignored) and joins the completer. */
static void sk_shutdown(void *state) {
  sk_state_t *s = state;
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s);
}

/* h's concurrency_key hook: the `host` param. */
static int sk_key(const json_t *params, char *buf, size_t len) {
  const char *h = json_string_value(json_object_get(params, "host"));
  if (!h || !*h || strlen(h) >= len) return 1;
  memcpy(buf, h, strlen(h) + 1);
  return 0;
}

static const apex_param_spec_t sk_params[] = {
    {.name = "probe", .type = APEX_PARAM_INT, .required = 1},
    {.name = "slots", .type = APEX_PARAM_ARRAY, .default_json = "[]"},
    {.name = "us", .type = APEX_PARAM_INT, .default_json = "0"},
    {.name = "seq", .type = APEX_PARAM_INT, .default_json = "0"},
    {.name = "tag", .type = APEX_PARAM_INT, .default_json = "0"},
    {.name = "fails", .type = APEX_PARAM_INT, .default_json = "0"},
    {.name = "host", .type = APEX_PARAM_STRING, .default_json = "\"\""},
};
#define SK_NP (sizeof sk_params / sizeof sk_params[0])

static const apex_action_desc_t sk_actions[] = {
    {.name = "x", .description = "Blocking: counts itself running", .handler = sk_x,
     .kind = APEX_ACTION_BLOCKING, .params = sk_params, .n_params = SK_NP},
    {.name = "d", .description = "Deferred: counts itself until completed", .handler = sk_d,
     .kind = APEX_ACTION_DEFERRED, .params = sk_params, .n_params = SK_NP},
    {.name = "f", .description = "Fails transiently `fails` times", .handler = sk_f,
     .kind = APEX_ACTION_BLOCKING, .params = sk_params, .n_params = SK_NP,
     .default_retry = {.max_attempts = 5, .initial_interval_s = 0.001,
                       .backoff_coefficient = 1.0}},
    {.name = "h", .description = "As x, with scheduling defaults", .handler = sk_x,
     .kind = APEX_ACTION_BLOCKING, .params = sk_params, .n_params = SK_NP,
     .concurrency_key = sk_key, .max_concurrency = 2, .key_concurrency = 1},
};

static const apex_plugin_desc_t sk_desc = {
    APEX_PLUGIN_DESC_INIT,
    .name = SK_NAME,
    .version = "1.0.0",
    .description = "Scheduler test kit",
    .actions = sk_actions,
    .n_actions = sizeof sk_actions / sizeof sk_actions[0],
    .init = sk_init,
    .shutdown = sk_shutdown,
};

APEX_PLUGIN_DEFINE(sk_desc)
