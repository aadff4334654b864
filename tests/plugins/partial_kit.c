/* partial_kit: a test plugin for apex_ctx_partial_result
 * (include/apex/plugin.h), used by tests/integration/test_partial_results.c.
 *
 *   flood     publishes {"i": i, "of": n} for i = 1..n as fast as it can,
 *             then succeeds with {"published": n, "refused": R} (R: calls
 *             that did not return APEX_OK), or with fail=true fails
 *             (APEX_E_EXECUTION) after the last one. via: "partial" (the
 *             default), "heartbeat" (the same values as heartbeat details,
 *             which are deep-copied when they change: a cost to compare
 *             with) or "none" (only the values are built).
 *   bad       publishes {"ok": 1}, then three values that break the limits
 *             (nested deeper than APEX_VALUE_MAX_DEPTH, a cycle, a string
 *             that is not UTF-8), and fails with their codes in the
 *             message: "deep=D cycle=C utf8=U" (so the error carries the
 *             partial left).
 *   wait      publishes {"stage": "started"}, then sleeps until its token
 *             fires (10 s at most), then publishes {"stage": "late"} and
 *             records that call's code (see last_rc) and fails
 *             APEX_E_CANCELLED.
 *   clear     publishes {"x": 1}, then NULL, then fails APEX_E_EXECUTION.
 *   types     publishes one value of every JSON type (nested, extremes,
 *             Unicode, empty containers) given as `value` (a param), and
 *             succeeds with the publish's code as {"rc": rc}.
 *   threads   four threads each publish `n` values {"t": k, "i": i} at
 *             once, then, joined, the handler publishes {"final": true} and
 *             succeeds.
 *   after     deferred: publishes {"before": true}, completes (APEX_OK),
 *             then publishes {"after": true} on the completed ctx and
 *             records that call's code (see last_rc).
 *   last_rc   succeeds with {"rc": the code recorded by wait or after}.
 *
 * Threads: handlers on host workers; threads' four publishers are joined
 * before the handler returns. g_last_rc is an atomic. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "apex/plugin.h"

static atomic_int g_last_rc = 1; /* 1: nothing recorded */

static json_int_t param_int(apex_ctx_t *ctx, const char *name, json_int_t dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_integer(v) ? json_integer_value(v) : dflt;
}

static int flood(apex_ctx_t *ctx) {
  json_int_t n = param_int(ctx, "n", 1000);
  json_int_t refused = 0;
  const char *how = json_string_value(json_object_get(apex_ctx_params(ctx), "via"));
  int mode = !how || strcmp(how, "partial") == 0 ? 1 : strcmp(how, "heartbeat") == 0 ? 2 : 0;
  for (json_int_t i = 1; i <= n; i++) {
    json_t *p = json_pack("{s:I, s:I}", "i", i, "of", n);
    if (!p) return apex_ctx_fail(ctx, APEX_E_NOMEM, "no memory");
    if (mode == 1 && apex_ctx_partial_result(ctx, p) != APEX_OK) refused++;
    if (mode == 2 && apex_ctx_heartbeat(ctx, p) != APEX_OK) refused++;
    json_decref(p);
  }
  if (json_is_true(json_object_get(apex_ctx_params(ctx), "fail")))
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "failed after %lld partials (refused %lld)",
                         (long long)n, (long long)refused);
  apex_ctx_set_result(ctx, json_pack("{s:I, s:I}", "published", n, "refused", refused));
  return APEX_OK;
}

static int bad(apex_ctx_t *ctx) {
  json_t *ok = json_pack("{s:i}", "ok", 1);
  int rc_ok = apex_ctx_partial_result(ctx, ok);
  json_decref(ok);
  /* One level past the limit: APEX_VALUE_MAX_DEPTH + 1 arrays. */
  json_t *deep = json_array(), *inner = deep;
  for (int i = 0; i < APEX_VALUE_MAX_DEPTH; i++) {
    json_t *next = json_array();
    json_array_append_new(inner, next);
    inner = next;
  }
  int rc_deep = apex_ctx_partial_result(ctx, deep);
  json_decref(deep);
  /* {"child": {"parent": <itself>}}: jansson refuses an object set into
   * itself, not into its own child. */
  json_t *cyc = json_object(), *child = json_object();
  json_object_set_new(cyc, "child", child);
  json_object_set(child, "parent", cyc);
  int rc_cycle = apex_ctx_partial_result(ctx, cyc);
  json_object_del(child, "parent"); /* break the cycle before freeing */
  json_decref(cyc);
  json_t *utf = json_object();
  json_object_set_new(utf, "name", json_stringn_nocheck("ab\xff", 3));
  int rc_utf = apex_ctx_partial_result(ctx, utf);
  json_decref(utf);
  return apex_ctx_fail(ctx, APEX_E_EXECUTION, "ok=%d deep=%d cycle=%d utf8=%d", rc_ok, rc_deep,
                       rc_cycle, rc_utf);
}

static int wait_cancel(apex_ctx_t *ctx) {
  json_t *p = json_pack("{s:s}", "stage", "started");
  apex_ctx_partial_result(ctx, p);
  json_decref(p);
  apex_ctx_sleep_ms(ctx, 10000);
  p = json_pack("{s:s}", "stage", "late");
  atomic_store(&g_last_rc, apex_ctx_partial_result(ctx, p));
  json_decref(p);
  return apex_ctx_fail(ctx, APEX_E_CANCELLED, "stopped");
}

static int clear(apex_ctx_t *ctx) {
  json_t *p = json_pack("{s:i}", "x", 1);
  apex_ctx_partial_result(ctx, p);
  json_decref(p);
  int rc = apex_ctx_partial_result(ctx, NULL);
  return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cleared=%d", rc);
}

static int types(apex_ctx_t *ctx) {
  json_t *v = json_object_get(apex_ctx_params(ctx), "value");
  int rc = apex_ctx_partial_result(ctx, v);
  apex_ctx_set_result(ctx, json_pack("{s:i}", "rc", rc));
  return APEX_OK;
}

typedef struct pub {
  apex_ctx_t *ctx;
  int k;
  json_int_t n;
} pub_t;

static void *publisher(void *arg) {
  pub_t *p = arg;
  for (json_int_t i = 1; i <= p->n; i++) {
    json_t *v = json_pack("{s:i, s:I}", "t", p->k, "i", i);
    if (v) apex_ctx_partial_result(p->ctx, v);
    json_decref(v);
  }
  return NULL;
}

static int threads(apex_ctx_t *ctx) {
  pub_t pubs[4];
  pthread_t tids[4];
  int started = 0;
  for (int k = 0; k < 4; k++) {
    pubs[k] = (pub_t){ctx, k, param_int(ctx, "n", 1000)};
    if (pthread_create(&tids[k], NULL, publisher, &pubs[k]) != 0) break;
    started++;
  }
  for (int k = 0; k < started; k++) pthread_join(tids[k], NULL);
  if (started < 4) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "pthread_create failed");
  json_t *f = json_pack("{s:b}", "final", 1);
  apex_ctx_partial_result(ctx, f);
  json_decref(f);
  return APEX_OK;
}

static int after(apex_ctx_t *ctx) {
  json_t *b = json_pack("{s:b}", "before", 1);
  apex_ctx_partial_result(ctx, b);
  json_decref(b);
  apex_ctx_complete(ctx, APEX_OK);
  /* Misuse on purpose: the ctx is completed. */
  json_t *a = json_pack("{s:b}", "after", 1);
  atomic_store(&g_last_rc, apex_ctx_partial_result(ctx, a));
  json_decref(a);
  return APEX_PENDING;
}

static int last_rc(apex_ctx_t *ctx) {
  apex_ctx_set_result(ctx, json_pack("{s:i}", "rc", atomic_load(&g_last_rc)));
  return APEX_OK;
}

static const apex_param_spec_t k_flood_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "1000"},
    {.name = "fail", .type = APEX_PARAM_BOOL, .default_json = "false"},
    {.name = "via", .type = APEX_PARAM_STRING, .default_json = "\"partial\""},
};
static const apex_param_spec_t k_types_params[] = {
    {.name = "value", .type = APEX_PARAM_OBJECT, .required = 1},
};
static const apex_param_spec_t k_threads_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "1000"},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))
static const apex_action_desc_t k_actions[] = {
    {.name = "flood", .handler = flood, .params = k_flood_params, .n_params = N(k_flood_params)},
    {.name = "bad", .handler = bad},
    {.name = "wait", .handler = wait_cancel},
    {.name = "clear", .handler = clear},
    {.name = "types", .handler = types, .params = k_types_params, .n_params = N(k_types_params)},
    {.name = "threads", .handler = threads, .params = k_threads_params,
     .n_params = N(k_threads_params)},
    {.name = "after", .handler = after, .kind = APEX_ACTION_DEFERRED},
    {.name = "last_rc", .handler = last_rc},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "partial_kit",
    .version = "1.0.0",
    .description = "apex_ctx_partial_result under test",
    .actions = k_actions,
    .n_actions = N(k_actions),
};

APEX_PLUGIN_DEFINE(k_plugin)
