/* children_kit: actions that spawn child tasks (apex_ctx_spawn), for
 * tests/integration/test_children.c.
 *
 *   leaf     blocking, params steps, step_ms, fail: reports steps steps of
 *            progress, sleeping step_ms (cancellably) between them; fails
 *            APEX_E_CANCELLED "leaf cancelled (REASON)" when cancelled, fails APEX_E_EXECUTION
 *            "leaf failed" when fail is true, else {"steps": steps}.
 *   parent   blocking, params weights (array of numbers), child (params for
 *            each leaf), fail_index (-1: none): spawns one leaf per weight,
 *            weight and label "c<i>", the leaf at fail_index with fail, then
 *            waits for all; succeeds with {"codes": [each child's outcome
 *            code], "reasons": [each error message or ""]}, or returns
 *            APEX_E_CANCELLED if its wait was cancelled.
 *   dparent  deferred, params n, child (leaf params), fail_index: spawns n
 *            leaves, registers an end callback on each and returns pending;
 *            the callback counts ends and the last one completes with
 *            {"ended": n, "failed": k} (APEX_E_CANCELLED if cancelled). Its on_cancel does
 *            nothing: the children's ends complete it.
 *   bad      blocking: tries the refused spawns and succeeds with the codes
 *            {"nan", "neg", "inf", "null_plugin", "no_plugin", "no_action",
 *             "bad_params", "label", "size", "wait_null", "foreign",
 *             "any_empty"}.
 *   deep     deferred, param depth: spawns itself with depth + 1 and, when
 *            that child ends, completes with its outcome; without end: the spawn past APEX_CHILD_MAX_DEPTH is refused and
 *            that task succeeds with {"depth": d, "code": rc}; the others
 *            pass the innermost result up unchanged.
 *   after    deferred: completes, then spawns (misuse): the code is kept in
 *            a counter read by `stats`.
 *   cspawn   blocking: waits for its own cancel, then spawns; succeeds with
 *            {"code": rc} (want APEX_E_CANCELLED).
 *   stats    blocking: {"after_code": the last `after` spawn's code}.
 *
 * Threads: handlers on workers; dparent's callbacks on whichever thread
 * ended a child. State: atomics of the plugin image (one test process). */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apex/plugin.h"

static atomic_int g_after_code = 1;
static apex_child_t *_Atomic g_foreign;

static int leaf(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int steps = (int)json_integer_value(json_object_get(p, "steps"));
  int ms = (int)json_integer_value(json_object_get(p, "step_ms"));
  for (int i = 1; i <= steps; i++) {
    if (apex_ctx_sleep_ms(ctx, (uint64_t)ms) != APEX_OK)
      return apex_ctx_fail(ctx, APEX_E_CANCELLED, "leaf cancelled (%s)",
                           apex_ctx_cancel_reason(ctx));
    apex_ctx_progress(ctx, 100.0 * i / steps, "step");
  }
  if (json_is_true(json_object_get(p, "fail")))
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "leaf failed");
  apex_ctx_set_result(ctx, json_pack("{s:i}", "steps", steps));
  return APEX_OK;
}

static int spawn_leaf(apex_ctx_t *ctx, json_t *child, int i, double w, int fail,
                      apex_child_t **out) {
  json_t *cp = json_deep_copy(child);
  json_object_set_new(cp, "fail", json_boolean(fail));
  char label[16];
  snprintf(label, sizeof label, "c%d", i);
  apex_spawn_opts_t o = APEX_SPAWN_OPTS_INIT;
  o.weight = w;
  o.label = label;
  int rc = apex_ctx_spawn(ctx, "children_kit", "leaf", cp, &o, out);
  json_decref(cp);
  return rc;
}

static int parent(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  json_t *ws = json_object_get(p, "weights");
  json_t *child = json_object_get(p, "child");
  int fail_at = (int)json_integer_value(json_object_get(p, "fail_index"));
  size_t n = json_array_size(ws);
  apex_child_t *kids[64];
  if (n > 64) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "too many");
  for (size_t i = 0; i < n; i++) {
    int rc = spawn_leaf(ctx, child, (int)i, json_number_value(json_array_get(ws, i)),
                        (int)i == fail_at, &kids[i]);
    if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "spawn %zu: %d", i, rc);
  }
  int rc = apex_ctx_wait_children(ctx, kids, n, -1);
  if (rc != APEX_OK) return rc;
  json_t *codes = json_array(), *reasons = json_array();
  for (size_t i = 0; i < n; i++) {
    json_t *err = NULL;
    int st = -1;
    int code = apex_ctx_child_outcome(ctx, kids[i], &st, NULL, &err);
    json_array_append_new(codes, json_integer(code));
    json_array_append_new(reasons,
                          json_string(err ? json_string_value(json_object_get(err, "message")) : ""));
    json_decref(err);
    apex_ctx_child_release(ctx, kids[i]);
  }
  apex_ctx_set_result(ctx, json_pack("{s:o, s:o}", "codes", codes, "reasons", reasons));
  return APEX_OK;
}

typedef struct dstate {
  atomic_int ended, failed;
  int n;
} dstate_t;

static void d_end(apex_ctx_t *ctx, apex_child_t *child, void *user) {
  dstate_t *d = user;
  json_t *err = NULL;
  int code = apex_ctx_child_outcome(ctx, child, NULL, NULL, &err);
  json_decref(err);
  int n = d->n; /* before the count: the last end frees d */
  if (code != APEX_OK) atomic_fetch_add(&d->failed, 1);
  if (atomic_fetch_add(&d->ended, 1) + 1 == n) {
    apex_ctx_set_result(ctx, json_pack("{s:i, s:i}", "ended", n, "failed",
                                       atomic_load(&d->failed)));
    free(d);
    apex_ctx_complete(ctx, apex_ctx_is_cancelled(ctx) ? APEX_E_CANCELLED : APEX_OK);
  }
}

static void d_cancel(apex_ctx_t *ctx, void *user) {
  (void)ctx;
  (void)user; /* the children's ends complete it */
}

static int dparent(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int n = (int)json_integer_value(json_object_get(p, "n"));
  json_t *child = json_object_get(p, "child");
  int fail_at = (int)json_integer_value(json_object_get(p, "fail_index"));
  dstate_t *d = calloc(1, sizeof *d);
  if (!d) return APEX_E_NOMEM;
  d->n = n;
  apex_ctx_on_cancel(ctx, d_cancel, NULL);
  apex_child_t **kids = calloc((size_t)n, sizeof *kids);
  if (!kids) {
    free(d);
    return APEX_E_NOMEM;
  }
  for (int i = 0; i < n; i++) {
    int rc = spawn_leaf(ctx, child, i, 1.0, i == fail_at, &kids[i]);
    if (rc != APEX_OK) { /* the ones spawned end with the attempt */
      free(kids);
      free(d);
      apex_ctx_complete(ctx, rc);
      return APEX_PENDING;
    }
  }
  /* Registered after every spawn: d->n is final, and a child that ended
   * already runs its callback now, on this thread. */
  for (int i = 0; i < n; i++) apex_ctx_on_child_end(ctx, kids[i], d_end, d);
  free(kids);
  return APEX_PENDING;
}

static int bad(apex_ctx_t *ctx) {
  apex_child_t *c = NULL;
  apex_spawn_opts_t o = APEX_SPAWN_OPTS_INIT;
  json_t *r = json_object();
  o.weight = NAN;
  json_object_set_new(r, "nan", json_integer(apex_ctx_spawn(ctx, "children_kit", "leaf", NULL, &o, &c)));
  o.weight = -1;
  json_object_set_new(r, "neg", json_integer(apex_ctx_spawn(ctx, "children_kit", "leaf", NULL, &o, &c)));
  o.weight = INFINITY;
  json_object_set_new(r, "inf", json_integer(apex_ctx_spawn(ctx, "children_kit", "leaf", NULL, &o, &c)));
  o.weight = 1;
  json_object_set_new(r, "null_plugin", json_integer(apex_ctx_spawn(ctx, NULL, "leaf", NULL, &o, &c)));
  json_object_set_new(r, "no_plugin", json_integer(apex_ctx_spawn(ctx, "nope", "leaf", NULL, &o, &c)));
  json_object_set_new(r, "no_action", json_integer(apex_ctx_spawn(ctx, "children_kit", "nope", NULL, &o, &c)));
  json_t *bp = json_pack("{s:s}", "steps", "many");
  json_object_set_new(r, "bad_params", json_integer(apex_ctx_spawn(ctx, "children_kit", "leaf", bp, &o, &c)));
  json_decref(bp);
  o.label = "\xff\xfe";
  json_object_set_new(r, "label", json_integer(apex_ctx_spawn(ctx, "children_kit", "leaf", NULL, &o, &c)));
  o.label = NULL;
  o.struct_size = 4;
  json_object_set_new(r, "size", json_integer(apex_ctx_spawn(ctx, "children_kit", "leaf", NULL, &o, &c)));
  json_object_set_new(r, "null_out_set", json_boolean(c == NULL));
  apex_child_t *none[1] = {NULL};
  json_object_set_new(r, "wait_null", json_integer(apex_ctx_wait_children(ctx, none, 1, 0)));
  apex_child_t *f = atomic_load(&g_foreign);
  json_object_set_new(r, "foreign",
                      json_integer(f ? apex_ctx_wait_children(ctx, &f, 1, 0) : 1));
  json_object_set_new(r, "any_empty", json_integer(apex_ctx_wait_any_child(ctx, NULL, 0, 0, NULL)));
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

/* Spawns one quick leaf, keeps its handle for `bad` (a child of another
 * task) and waits for it. */
static int keeper(apex_ctx_t *ctx) {
  apex_child_t *c = NULL;
  json_t *p = json_pack("{s:i, s:i}", "steps", 1, "step_ms", 1);
  int rc = apex_ctx_spawn(ctx, "children_kit", "leaf", p, NULL, &c);
  json_decref(p);
  if (rc != APEX_OK) return rc;
  atomic_store(&g_foreign, c);
  return apex_ctx_wait_children(ctx, NULL, 0, -1);
}

static void deep_end(apex_ctx_t *ctx, apex_child_t *child, void *user) {
  (void)user;
  json_t *res = NULL;
  int rc = apex_ctx_child_outcome(ctx, child, NULL, &res, NULL);
  apex_ctx_set_result(ctx, res);
  apex_ctx_complete(ctx, rc);
}

static int deep(apex_ctx_t *ctx) {
  int d = (int)json_integer_value(json_object_get(apex_ctx_params(ctx), "depth"));
  json_t *p = json_pack("{s:i}", "depth", d + 1);
  apex_child_t *c = NULL;
  int rc = apex_ctx_spawn(ctx, "children_kit", "deep", p, NULL, &c);
  json_decref(p);
  if (rc != APEX_OK) {
    apex_ctx_set_result(ctx, json_pack("{s:i, s:i}", "depth", d, "code", rc));
    apex_ctx_complete(ctx, APEX_OK);
    return APEX_PENDING;
  }
  apex_ctx_on_child_end(ctx, c, deep_end, NULL);
  return APEX_PENDING;
}

static int after(apex_ctx_t *ctx) {
  apex_ctx_complete(ctx, APEX_OK);
  apex_child_t *c = NULL;
  atomic_store(&g_after_code, apex_ctx_spawn(ctx, "children_kit", "leaf", NULL, NULL, &c));
  return APEX_PENDING;
}

static int cspawn(apex_ctx_t *ctx) {
  while (apex_ctx_sleep_ms(ctx, 10000) == APEX_OK) {
  }
  apex_child_t *c = NULL;
  int rc = apex_ctx_spawn(ctx, "children_kit", "leaf", NULL, NULL, &c);
  apex_ctx_set_result(ctx, json_pack("{s:i}", "code", rc));
  return APEX_OK;
}

static int stats(apex_ctx_t *ctx) {
  apex_ctx_set_result(ctx, json_pack("{s:i}", "after_code", atomic_load(&g_after_code)));
  return APEX_OK;
}

static const apex_param_spec_t k_leaf[] = {
    {"steps", APEX_PARAM_INT, 0, "10", 0, 0, 0, 0, "progress steps"},
    {"step_ms", APEX_PARAM_INT, 0, "10", 0, 0, 0, 0, "sleep per step"},
    {"fail", APEX_PARAM_BOOL, 0, "false", 0, 0, 0, 0, "fail at the end"},
};
static const apex_param_spec_t k_parent[] = {
    {"weights", APEX_PARAM_ARRAY, 1, NULL, 0, 0, 0, 0, "child weights"},
    {"child", APEX_PARAM_OBJECT, 0, "{}", 0, 0, 0, 0, "leaf params"},
    {"fail_index", APEX_PARAM_INT, 0, "-1", 0, 0, 0, 0, "the leaf that fails"},
};
static const apex_param_spec_t k_dparent[] = {
    {"n", APEX_PARAM_INT, 1, NULL, 1, 0, 1, 0, "children"},
    {"child", APEX_PARAM_OBJECT, 0, "{}", 0, 0, 0, 0, "leaf params"},
    {"fail_index", APEX_PARAM_INT, 0, "-1", 0, 0, 0, 0, "the leaf that fails"},
};
static const apex_param_spec_t k_deep[] = {
    {"depth", APEX_PARAM_INT, 0, "0", 0, 0, 0, 0, "this task's depth"},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "leaf", .handler = leaf, .params = k_leaf, .n_params = 3},
    {.name = "parent", .handler = parent, .params = k_parent, .n_params = 3},
    {.name = "dparent", .handler = dparent, .kind = APEX_ACTION_DEFERRED, .params = k_dparent,
     .n_params = 3},
    {.name = "bad", .handler = bad},
    {.name = "keeper", .handler = keeper},
    {.name = "deep", .handler = deep, .kind = APEX_ACTION_DEFERRED, .params = k_deep, .n_params = 1},
    {.name = "after", .handler = after, .kind = APEX_ACTION_DEFERRED},
    {.name = "cspawn", .handler = cspawn},
    {.name = "stats", .handler = stats},
};

static const apex_plugin_desc_t k_plugin = {APEX_PLUGIN_DESC_INIT,
                                            .name = "children_kit",
                                            .version = "1.0.0",
                                            .description = "child-task test actions",
                                            .actions = k_actions,
                                            .n_actions = sizeof k_actions / sizeof k_actions[0]};

APEX_PLUGIN_DEFINE(k_plugin)
