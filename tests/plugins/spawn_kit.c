/* spawn_kit: wide fan-outs of small children (apex_ctx_spawn), for
 * tests/integration/test_children_fanout.c: what a child's node answers
 * once the child's task was let go (a child that succeeded with no result),
 * beside children that keep theirs (a result, a failure).
 *
 *   nil    blocking: returns APEX_OK with no result.
 *   val    blocking, param v: succeeds with {"v": v}.
 *   bad    blocking: fails APEX_E_EXECUTION "bad child".
 *   fan    blocking, params n, val_at, bad_at (-1: none), poll (0/1):
 *          spawns n children, nil ones but for a val child (v = its
 *          index) at val_at and a bad one at bad_at, then waits for all
 *          (poll 1: by reading every child's outcome in a loop until none
 *          answers APEX_E_AGAIN, racing their ends), reads every outcome
 *          and succeeds with {"codes": [...], "states": [...], "nulls": the
 *          children whose result is JSON null, "val": the val child's v
 *          (-1: none), "ids": the distinct nonzero task ids}.
 *
 * Threads: handlers on workers. No state of its own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apex/plugin.h"

static int nil(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

static int val(apex_ctx_t *ctx) {
  json_int_t v = json_integer_value(json_object_get(apex_ctx_params(ctx), "v"));
  apex_ctx_set_result(ctx, json_pack("{s:I}", "v", v));
  return APEX_OK;
}

static int bad(apex_ctx_t *ctx) { return apex_ctx_fail(ctx, APEX_E_EXECUTION, "bad child"); }

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int fan(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int n = (int)json_integer_value(json_object_get(p, "n"));
  int val_at = (int)json_integer_value(json_object_get(p, "val_at"));
  int bad_at = (int)json_integer_value(json_object_get(p, "bad_at"));
  int poll = (int)json_integer_value(json_object_get(p, "poll"));
  apex_child_t **kids = calloc((size_t)n, sizeof *kids);
  uint64_t *ids = calloc((size_t)n, sizeof *ids);
  if (!kids || !ids) {
    free(kids);
    free(ids);
    return APEX_E_NOMEM;
  }
  int rc = APEX_OK;
  for (int i = 0; i < n && rc == APEX_OK; i++) {
    json_t *cp = i == val_at ? json_pack("{s:i}", "v", i) : NULL;
    rc = apex_ctx_spawn(ctx, "spawn_kit", i == val_at ? "val" : i == bad_at ? "bad" : "nil", cp,
                        NULL, &kids[i]);
    json_decref(cp);
  }
  if (rc == APEX_OK && !poll) rc = apex_ctx_wait_children(ctx, NULL, 0, -1);
  for (int busy = poll; rc == APEX_OK && busy;) {
    busy = 0;
    for (int i = 0; i < n; i++) {
      int st = -1;
      json_t *res = NULL, *err = NULL;
      if (apex_ctx_child_outcome(ctx, kids[i], &st, &res, &err) == APEX_E_AGAIN) busy = 1;
      json_decref(res);
      json_decref(err);
    }
    if (apex_ctx_is_cancelled(ctx)) rc = APEX_E_CANCELLED;
  }
  if (rc != APEX_OK) {
    free(kids);
    free(ids);
    return rc;
  }
  json_t *codes = json_array(), *states = json_array();
  int nulls = 0;
  json_int_t v = -1;
  for (int i = 0; i < n; i++) {
    int st = -1;
    json_t *res = NULL, *err = NULL;
    int code = apex_ctx_child_outcome(ctx, kids[i], &st, &res, &err);
    json_array_append_new(codes, json_integer(code));
    json_array_append_new(states, json_integer(st));
    if (res && json_is_null(res)) nulls++;
    if (i == val_at) v = json_integer_value(json_object_get(res, "v"));
    json_decref(res);
    json_decref(err);
    ids[i] = apex_ctx_child_task_id(ctx, kids[i]);
  }
  qsort(ids, (size_t)n, sizeof *ids, cmp_u64);
  int distinct = 0;
  for (int i = 0; i < n; i++)
    if (ids[i] && (i == 0 || ids[i] != ids[i - 1])) distinct++;
  free(kids);
  free(ids);
  apex_ctx_set_result(ctx, json_pack("{s:o, s:o, s:i, s:I, s:i}", "codes", codes, "states", states,
                                     "nulls", nulls, "val", v, "ids", distinct));
  return APEX_OK;
}

static const apex_param_spec_t k_val[] = {
    {"v", APEX_PARAM_INT, 1, NULL, 0, 0, 0, 0, "the result's v"},
};
static const apex_param_spec_t k_fan[] = {
    {"n", APEX_PARAM_INT, 1, NULL, 1, 1, 1, 100000, "children"},
    {"val_at", APEX_PARAM_INT, 0, "-1", 0, 0, 0, 0, "the child with a result"},
    {"bad_at", APEX_PARAM_INT, 0, "-1", 0, 0, 0, 0, "the child that fails"},
    {"poll", APEX_PARAM_INT, 0, "0", 0, 0, 0, 0, "1: wait by polling outcomes"},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "nil", .handler = nil},
    {.name = "val", .handler = val, .params = k_val, .n_params = 1},
    {.name = "bad", .handler = bad},
    {.name = "fan", .handler = fan, .params = k_fan, .n_params = 4},
};

static const apex_plugin_desc_t k_plugin = {APEX_PLUGIN_DESC_INIT,
                                            .name = "spawn_kit",
                                            .version = "1.0.0",
                                            .description = "fan-out test actions",
                                            .actions = k_actions,
                                            .n_actions = sizeof k_actions / sizeof k_actions[0]};

APEX_PLUGIN_DEFINE(k_plugin)
