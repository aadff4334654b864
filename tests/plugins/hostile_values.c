/* hostile_values: a test plugin that hands Apex JSON values it must refuse
 * (include/apex/plugin.h, "Limits on the JSON values"), so tests can show
 * the refusal is clean and the host survives. Each action is one value:
 *
 *   deep_details     progress whose details nest `depth` arrays deep
 *   deep_sub_tasks   progress whose sub_tasks nest `depth` sub-tasks deep
 *   deep_result      a result of `depth` arrays nested in one another
 *   utf8_string      a result {"text": "ab\xff"}: a string that is not UTF-8
 *   utf8_key         a result {"k\xff": 1}: a key that is not UTF-8
 *   cyclic_result    a result {"n": 1, "child": {"parent": <itself>}}
 *   huge_result      a result array of `n` elements (1 + n values)
 *   deferred_cyclic  deferred: sets a cyclic result and completes with OK
 *   bad_then_good    sets a bad result, then a valid one: {"ok": true}
 *   bad_then_fail    sets a bad result, then fails APEX_E_TRANSIENT itself
 *   short_progress   apex_ctx_progress with each fault of the fast path
 *                    (hostile_values.h lists them, for the test too)
 *
 * The progress actions succeed with {"rc": <what the progress call
 * returned>}; short_progress with {"rcs": [...]}, one per fault, in the
 * order of hv_short_faults. Values passed to a progress call are
 * borrowed, so this plugin frees them itself, with chain_free: json_decref
 * would recurse a million levels deep here too.
 *
 * Threads: every action runs on a host worker; no state. What can fail:
 * memory, which fails the task with APEX_E_NOMEM. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "apex/plugin.h"
#include "hostile_values.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static int64_t param_int(apex_ctx_t *ctx, const char *name, int64_t dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

/* Frees a value whose containers form a chain (each holds at most one
 * array or object), one level at a time: hold the child, drop the parent. */
static void chain_free(json_t *v) {
  while (v) {
    json_t *next = NULL;
    if (json_is_array(v)) {
      for (size_t i = 0; i < json_array_size(v) && !next; i++) {
        json_t *m = json_array_get(v, i);
        if (json_is_array(m) || json_is_object(m)) next = m;
      }
    } else if (json_is_object(v)) {
      const char *k;
      json_t *m;
      json_object_foreach(v, k, m) {
        if (json_is_array(m) || json_is_object(m)) {
          next = m;
          break;
        }
      }
    }
    json_incref(next);
    json_decref(v);
    v = next;
  }
}

/* Returns: outer holding v as its only element, or NULL (v freed). The
 * *_new calls and json_pack's "o" take v even when they fail. */
static json_t *wrap(json_t *outer, json_t *v) {
  if (!outer) {
    chain_free(v);
    return NULL;
  }
  if (json_array_append_new(outer, v) != 0) {
    chain_free(outer);
    return NULL;
  }
  return outer;
}

/* depth arrays, each the only element of the one outside it. */
static json_t *nested_arrays(int64_t depth) {
  json_t *v = json_array();
  for (int64_t i = 1; v && i < depth; i++) v = wrap(json_array(), v);
  return v;
}

static int nomem(apex_ctx_t *ctx) { return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory"); }

static int succeed_with_rc(apex_ctx_t *ctx, int rc) {
  apex_ctx_set_result(ctx, json_pack("{s:i}", "rc", rc));
  return APEX_OK;
}

static int deep_details(apex_ctx_t *ctx) {
  json_t *inner = nested_arrays(param_int(ctx, "depth", 1000000) - 1);
  json_t *details = inner ? json_pack("{s:o}", "d", inner) : NULL;
  if (!details) return nomem(ctx);
  apex_progress_update_t u = {.percentage = 50, .details = details};
  int rc = apex_ctx_progress_update(ctx, &u);
  chain_free(details);
  return succeed_with_rc(ctx, rc);
}

/* Returns: {"name": name, "percentage": pct, "sub_tasks": subs} or NULL
 * (subs freed). name and pct are shared by every level: two allocations
 * fewer each, which a million levels feel. */
static json_t *sub_task(json_t *name, json_t *pct, json_t *subs) {
  json_t *node = json_object();
  if (!node || json_object_set_nocheck(node, "name", name) != 0 ||
      json_object_set_nocheck(node, "percentage", pct) != 0 ||
      json_object_set_new_nocheck(node, "sub_tasks", subs) != 0) {
    if (!node) chain_free(subs);
    chain_free(node);
    return NULL;
  }
  return node;
}

/* [{"name": "s", "percentage": 0, "sub_tasks": [ ...depth levels... ]}] */
static int deep_sub_tasks(apex_ctx_t *ctx) {
  int64_t depth = param_int(ctx, "depth", 1000000);
  json_t *name = json_string("s"), *pct = json_integer(0);
  json_t *subs = name && pct ? json_array() : NULL;
  for (int64_t i = 0; subs && i < depth; i++) {
    json_t *node = sub_task(name, pct, subs);
    subs = node ? wrap(json_array(), node) : NULL;
  }
  json_decref(name);
  json_decref(pct);
  if (!subs) return nomem(ctx);
  apex_progress_update_t u = {.percentage = 50, .sub_tasks = subs};
  int rc = apex_ctx_progress_update(ctx, &u);
  chain_free(subs);
  return succeed_with_rc(ctx, rc);
}

/* The result actions hand their value over (set_result takes it): freeing
 * it is Apex's job from there on. */
static int deep_result(apex_ctx_t *ctx) {
  json_t *v = nested_arrays(param_int(ctx, "depth", 1000000));
  if (!v) return nomem(ctx);
  apex_ctx_set_result(ctx, v);
  return APEX_OK;
}

static int utf8_string(apex_ctx_t *ctx) {
  json_t *v = json_pack("{s:o}", "text", json_stringn_nocheck("ab\xff", 3));
  if (!v) return nomem(ctx);
  apex_ctx_set_result(ctx, v);
  return APEX_OK;
}

static int utf8_key(apex_ctx_t *ctx) {
  json_t *v = json_object();
  if (!v || json_object_set_new_nocheck(v, "k\xff", json_integer(1)) != 0) {
    json_decref(v);
    return nomem(ctx);
  }
  apex_ctx_set_result(ctx, v);
  return APEX_OK;
}

/* {"n": 1, "child": {"parent": <the outer object>}}. jansson refuses an
 * object set into itself, but not into its own child. */
static json_t *cyclic(void) {
  json_t *v = json_pack("{s:i, s:{}}", "n", 1, "child");
  json_t *child = v ? json_object_get(v, "child") : NULL;
  if (!child || json_object_set(child, "parent", v) != 0) { /* set: a new reference */
    json_decref(v);
    return NULL;
  }
  return v;
}

static int cyclic_result(apex_ctx_t *ctx) {
  json_t *v = cyclic();
  if (!v) return nomem(ctx);
  apex_ctx_set_result(ctx, v);
  return APEX_OK;
}

/* One integer shared by every element: a million values at the cost of a
 * million pointers. */
static int huge_result(apex_ctx_t *ctx) {
  int64_t n = param_int(ctx, "n", APEX_VALUE_MAX_NODES);
  json_t *one = json_integer(1), *v = json_array();
  for (int64_t i = 0; one && v && i < n; i++) {
    if (json_array_append(v, one) != 0) {
      json_decref(v);
      v = NULL;
    }
  }
  json_decref(one);
  if (!v) return nomem(ctx);
  apex_ctx_set_result(ctx, v);
  return APEX_OK;
}

static int deferred_cyclic(apex_ctx_t *ctx) {
  json_t *v = cyclic();
  if (v) apex_ctx_set_result(ctx, v);
  apex_ctx_complete(ctx, v ? APEX_OK : APEX_E_NOMEM);
  return APEX_PENDING;
}

static int bad_then_good(apex_ctx_t *ctx) {
  json_t *bad = cyclic(), *good = json_pack("{s:b}", "ok", 1);
  if (!bad || !good) {
    json_decref(good);
    if (bad) apex_ctx_set_result(ctx, bad); /* Apex frees it */
    return nomem(ctx);
  }
  apex_ctx_set_result(ctx, bad);
  apex_ctx_set_result(ctx, good);
  return APEX_OK;
}

static int bad_then_fail(apex_ctx_t *ctx) {
  json_t *bad = cyclic();
  if (bad) apex_ctx_set_result(ctx, bad);
  return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "the handler's own failure");
}

/* The faults of apex_ctx_progress, in hostile_values.h's order. */
static int short_progress(apex_ctx_t *ctx) {
  char buf[APEX_PROGRESS_MESSAGE_MAX + 2];
  json_t *rcs = json_array();
  if (!rcs) return nomem(ctx);
  for (size_t i = 0; i < HV_N_SHORT_FAULTS; i++) {
    const hv_fault_t *f = &hv_short_faults[i];
    int rc = apex_ctx_progress(ctx, f->pct, hv_fault_msg(f, buf));
    if (json_array_append_new(rcs, json_integer(rc)) != 0) {
      json_decref(rcs);
      return nomem(ctx);
    }
  }
  apex_ctx_set_result(ctx, json_pack("{s:o}", "rcs", rcs));
  return APEX_OK;
}

static const apex_param_spec_t k_depth[] = {
    {.name = "depth", .type = APEX_PARAM_INT, .default_json = "1000000", .has_min = 1, .min = 1},
};
static const apex_param_spec_t k_n[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "1000000", .has_min = 1, .min = 0},
};

#define ACTION(nm, fn, kd, ps, np)                                                      \
  {.name = nm, .description = "hostile_values: " nm, .handler = fn, .kind = kd, .params = ps, \
   .n_params = np}

static const apex_action_desc_t k_actions[] = {
    ACTION("deep_details", deep_details, APEX_ACTION_BLOCKING, k_depth, N(k_depth)),
    ACTION("deep_sub_tasks", deep_sub_tasks, APEX_ACTION_BLOCKING, k_depth, N(k_depth)),
    ACTION("deep_result", deep_result, APEX_ACTION_BLOCKING, k_depth, N(k_depth)),
    ACTION("utf8_string", utf8_string, APEX_ACTION_BLOCKING, NULL, 0),
    ACTION("utf8_key", utf8_key, APEX_ACTION_BLOCKING, NULL, 0),
    ACTION("cyclic_result", cyclic_result, APEX_ACTION_BLOCKING, NULL, 0),
    ACTION("huge_result", huge_result, APEX_ACTION_BLOCKING, k_n, N(k_n)),
    ACTION("deferred_cyclic", deferred_cyclic, APEX_ACTION_DEFERRED, NULL, 0),
    ACTION("bad_then_good", bad_then_good, APEX_ACTION_BLOCKING, NULL, 0),
    ACTION("bad_then_fail", bad_then_fail, APEX_ACTION_BLOCKING, NULL, 0),
    ACTION("short_progress", short_progress, APEX_ACTION_BLOCKING, NULL, 0),
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "hostile_values",
    .version = "0.0.1",
    .description = "Test plugin that hands over values Apex must refuse",
    .actions = k_actions,
    .n_actions = N(k_actions),
};

APEX_PLUGIN_DEFINE(k_plugin)
