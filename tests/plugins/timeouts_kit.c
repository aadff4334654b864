/* timeouts_kit: actions for the four timeouts and heartbeats, for
 * tests/integration/test_timeouts.c and the CLI tests.
 *
 *   work     blocking, params ms, hb_ms, hb_count, stall_attempts: attempts
 *            up to stall_attempts wait (cancellably) for ever; later ones
 *            sleep ms. While waiting or sleeping it heartbeats every hb_ms
 *            (0: never), hb_count times at most (0: no limit), with details
 *            {"attempt": N, "i": I}. Cancelled, it
 *            returns APEX_E_CANCELLED ("cancelled REASON"). Done, it
 *            succeeds with {"attempt": N, "prev": the heartbeat details of
 *            an earlier attempt or null}.
 *   pend     deferred, param stall_attempts: attempts up to it register an
 *            on_cancel callback that completes APEX_E_CANCELLED and stay
 *            pending; later ones complete {"attempt": N} at once.
 *   hang     deferred: parks its ctx (no callback, no complete).
 *   unhang   blocking: completes the parked ctx with APEX_OK.
 *   hb_bad   blocking: heartbeats with details nested 100 deep, then with
 *            a string that is not UTF-8, and succeeds with {"rc1", "rc2"}.
 *
 * Counters (exported; the test dlopens this image): g_cancel_timeout, the
 * handler or callback saw the reason "timeout"; g_cancel_other, any other.
 * Threads: handlers on workers, callbacks on the cancelling thread. */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "apex/plugin.h"

#ifndef APEX_HAVE_CTX_HEARTBEAT
#error "timeouts_kit needs apex_ctx_heartbeat (APEX_HAVE_CTX_HEARTBEAT)"
#endif

#define TK_EXPORT __attribute__((visibility("default")))
TK_EXPORT atomic_uint_fast64_t g_cancel_timeout, g_cancel_other;
static _Atomic(apex_ctx_t *) g_parked;

static void count_reason(const char *why) {
  atomic_fetch_add(why && strcmp(why, "timeout") == 0 ? &g_cancel_timeout : &g_cancel_other, 1);
}

static json_t *prev_details(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_heartbeat_details(ctx);
  return p ? json_deep_copy(p) : json_null();
}

static int work(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int64_t ms = json_integer_value(json_object_get(p, "ms"));
  int64_t hb = json_integer_value(json_object_get(p, "hb_ms"));
  int64_t stall = json_integer_value(json_object_get(p, "stall_attempts"));
  int64_t count = json_integer_value(json_object_get(p, "hb_count"));
  uint32_t n = apex_ctx_attempt(ctx);
  int forever = n <= (uint64_t)stall;
  int64_t left = ms;
  for (int64_t i = 0; forever || left > 0; i++) {
    int64_t step = hb > 0 ? hb : forever ? 60000 : left;
    if (!forever && step > left) step = left;
    if (apex_ctx_sleep_ms(ctx, (uint64_t)step) == APEX_E_CANCELLED) {
      const char *why = apex_ctx_cancel_reason(ctx);
      count_reason(why);
      return apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled %s", why ? why : "?");
    }
    left -= step;
    if (hb > 0 && (count == 0 || i < count)) {
      json_t *d = json_pack("{s:i, s:I}", "attempt", (int)n, "i", (json_int_t)i);
      apex_ctx_heartbeat(ctx, d);
      json_decref(d);
    }
  }
  apex_ctx_set_result(ctx, json_pack("{s:i, s:o}", "attempt", (int)n, "prev", prev_details(ctx)));
  return APEX_OK;
}

static void on_cancel_complete(apex_ctx_t *ctx, void *user) {
  (void)user;
  const char *why = apex_ctx_cancel_reason(ctx);
  count_reason(why);
  apex_ctx_fail(ctx, APEX_E_CANCELLED, "oc %s", why ? why : "?");
  apex_ctx_complete(ctx, APEX_E_CANCELLED);
}

static int pend(apex_ctx_t *ctx) {
  int64_t stall = json_integer_value(json_object_get(apex_ctx_params(ctx), "stall_attempts"));
  uint32_t n = apex_ctx_attempt(ctx);
  if (n <= (uint64_t)stall) {
    if (apex_ctx_on_cancel(ctx, on_cancel_complete, NULL) != APEX_OK)
      apex_ctx_complete(ctx, APEX_E_EXECUTION);
    return APEX_PENDING;
  }
  apex_ctx_set_result(ctx, json_pack("{s:i}", "attempt", (int)n));
  apex_ctx_complete(ctx, APEX_OK);
  return APEX_PENDING;
}

static int hang(apex_ctx_t *ctx) {
  atomic_store(&g_parked, ctx);
  return APEX_PENDING;
}

static int unhang(apex_ctx_t *ctx) {
  apex_ctx_t *p = atomic_exchange(&g_parked, NULL);
  if (!p) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "nothing parked");
  apex_ctx_set_result(p, json_pack("{s:b}", "late", 1));
  apex_ctx_complete(p, APEX_OK);
  return APEX_OK;
}

static int hb_bad(apex_ctx_t *ctx) {
  json_t *deep = json_array(), *at = deep;
  for (int i = 0; i < 100; i++) {
    json_t *inner = json_array();
    json_array_append_new(at, inner);
    at = inner;
  }
  int rc1 = apex_ctx_heartbeat(ctx, deep);
  json_decref(deep);
  /* jansson refuses to build invalid UTF-8 through json_string; the _nocheck
   * form is what a careless plugin uses. */
  json_t *bad = json_pack("{s:o}", "s", json_string_nocheck("\xff\xfe"));
  int rc2 = apex_ctx_heartbeat(ctx, bad);
  json_decref(bad);
  apex_ctx_set_result(ctx, json_pack("{s:i, s:i}", "rc1", rc1, "rc2", rc2));
  return APEX_OK;
}

static const apex_param_spec_t k_work_params[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .default_json = "0"},
    {.name = "hb_ms", .type = APEX_PARAM_INT, .default_json = "0"},
    {.name = "stall_attempts", .type = APEX_PARAM_INT, .default_json = "0"},
    {.name = "hb_count", .type = APEX_PARAM_INT, .default_json = "0"},
};
static const apex_param_spec_t k_pend_params[] = {
    {.name = "stall_attempts", .type = APEX_PARAM_INT, .default_json = "1000000"},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "work", .description = "Sleeps, heartbeating; may stall", .handler = work,
     .kind = APEX_ACTION_BLOCKING, .params = k_work_params, .n_params = 4},
    {.name = "pend", .description = "Deferred; may stall until cancelled", .handler = pend,
     .kind = APEX_ACTION_DEFERRED, .params = k_pend_params, .n_params = 1},
    {.name = "hang", .description = "Deferred; ignores everything", .handler = hang,
     .kind = APEX_ACTION_DEFERRED},
    {.name = "unhang", .description = "Completes the hung ctx late", .handler = unhang,
     .kind = APEX_ACTION_BLOCKING},
    {.name = "hb_bad", .description = "Heartbeats with bad details", .handler = hb_bad,
     .kind = APEX_ACTION_BLOCKING},
    /* Its defaults come from the descriptor: a 0.2 s attempt timeout. */
    {.name = "slow_default", .description = "work with a default attempt timeout",
     .handler = work, .kind = APEX_ACTION_BLOCKING, .params = k_work_params, .n_params = 4,
     .start_to_close_s = 0.2},
};

static const apex_plugin_desc_t k_desc = {
    APEX_PLUGIN_DESC_INIT,
    .name = "timeouts_kit",
    .version = "1.0.0",
    .description = "Actions for the four timeouts and heartbeats",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_desc)
