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
 *   hang   blocking, param token (0/1): runs until cancelled, then fails
 *          APEX_E_CANCELLED "hang cancelled (REASON)". token 0: it polls
 *          apex_ctx_is_cancelled between plain 1 ms sleeps, so it never
 *          asks for a token of its own (it carries its family's shared
 *          one); token 1: it sleeps with apex_ctx_sleep_ms (its own).
 *   hfan   blocking, params n, token, nil_after (0/1): spawns n hang
 *          children and waits for them (APEX_E_CANCELLED when its own
 *          cancel fired); with nil_after 1, an attempt after the first
 *          spawns n nil children instead and succeeds with {"attempt": k,
 *          "codes": [each child's outcome code]}.
 *   wone   blocking, params n, mode: spawns n nil children and one hang
 *          one (token 0, the last), then waits until the hang one ended
 *          (the host cancels it), for at most 30 s: mode 0 naming it alone
 *          (apex_ctx_wait_children), 1 with apex_ctx_wait_any_child, 2
 *          naming all n + 1 children, 3 for every child (NULL). Succeeds
 *          with {"rc": the wait's, "which": the any wait's index, "state":
 *          the hang child's state after it}. The waits are woken only by
 *          the ends they may be done by (ops/children.c, wait_all).
 *   qfan   blocking, params n, action: spawns n children of action
 *          (default hang, token 0) whatever each spawn returns (a bounded
 *          queue refuses some after their task was made, an unknown action
 *          all before) and succeeds with {"codes": [each spawn's rc]}; its
 *          return cancels the ones spawned.
 *   deaf   blocking, param fd: ignores its cancel; returns once fd is
 *          readable (at most 60 s).
 *   dl     blocking, params depth, fd: spawns a nil child and, at depth 1,
 *          a deaf one (fd), else a dl one of depth - 1, then waits for
 *          them; returns what the wait returned. Under a parent deadline
 *          the deaf child is ended by that deadline (its own, capped)
 *          while its handler still runs.
 *   pend   deferred: pending until cancelled; its apex_ctx_on_cancel
 *          callback completes it APEX_E_CANCELLED (no token of its own).
 *   dfan   deferred, param n: spawns n pend children with an end callback
 *          each; the last end completes it (APEX_E_CANCELLED once
 *          cancelled, else APEX_OK).
 *
 * Threads: handlers on workers; callbacks on whichever thread cancels or
 * ends a child. dfan's count is heap state of its own task. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
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

static int hang(apex_ctx_t *ctx) {
  int own = (int)json_integer_value(json_object_get(apex_ctx_params(ctx), "token"));
  struct timespec ms = {0, 1000000};
  while (!apex_ctx_is_cancelled(ctx)) {
    if (own)
      (void)apex_ctx_sleep_ms(ctx, 1000);
    else
      nanosleep(&ms, NULL);
  }
  return apex_ctx_fail(ctx, APEX_E_CANCELLED, "hang cancelled (%s)", apex_ctx_cancel_reason(ctx));
}

static int hfan(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int n = (int)json_integer_value(json_object_get(p, "n"));
  int nil_after = (int)json_integer_value(json_object_get(p, "nil_after"));
  int nils = nil_after && apex_ctx_attempt(ctx) > 1;
  json_t *cp = json_pack("{s:O}", "token", json_object_get(p, "token"));
  apex_child_t *kids[64];
  if (n > 64) n = 64;
  int rc = APEX_OK;
  for (int i = 0; i < n && rc == APEX_OK; i++)
    rc = apex_ctx_spawn(ctx, "spawn_kit", nils ? "nil" : "hang", nils ? NULL : cp, NULL, &kids[i]);
  json_decref(cp);
  if (rc == APEX_OK) rc = apex_ctx_wait_children(ctx, NULL, 0, -1);
  if (rc != APEX_OK) return rc;
  json_t *codes = json_array();
  for (int i = 0; i < n; i++)
    json_array_append_new(codes, json_integer(apex_ctx_child_outcome(ctx, kids[i], NULL, NULL, NULL)));
  apex_ctx_set_result(ctx, json_pack("{s:i, s:o}", "attempt", (int)apex_ctx_attempt(ctx), "codes",
                                     codes));
  return APEX_OK;
}

static int qfan(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int n = (int)json_integer_value(json_object_get(p, "n"));
  const char *action = json_string_value(json_object_get(p, "action"));
  json_t *codes = json_array();
  if (!codes) return APEX_E_NOMEM;
  for (int i = 0; i < n; i++) {
    apex_child_t *c = NULL;
    int rc = apex_ctx_spawn(ctx, "spawn_kit", action ? action : "hang", NULL, NULL, &c);
    json_array_append_new(codes, json_integer(rc));
  }
  apex_ctx_set_result(ctx, json_pack("{s:o}", "codes", codes));
  return APEX_OK;
}

static int wone(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int n = (int)json_integer_value(json_object_get(p, "n"));
  int mode = (int)json_integer_value(json_object_get(p, "mode"));
  apex_child_t **kids = calloc((size_t)n + 1, sizeof *kids);
  if (!kids) return APEX_E_NOMEM;
  int rc = APEX_OK;
  for (int i = 0; i < n && rc == APEX_OK; i++)
    rc = apex_ctx_spawn(ctx, "spawn_kit", "nil", NULL, NULL, &kids[i]);
  if (rc == APEX_OK) rc = apex_ctx_spawn(ctx, "spawn_kit", "hang", NULL, NULL, &kids[n]);
  if (rc != APEX_OK) {
    free(kids);
    return rc;
  }
  size_t which = 99;
  enum { WAIT_MS = 30000 };
  if (mode == 0)
    rc = apex_ctx_wait_children(ctx, &kids[n], 1, WAIT_MS);
  else if (mode == 1)
    rc = apex_ctx_wait_any_child(ctx, &kids[n], 1, WAIT_MS, &which);
  else if (mode == 2)
    rc = apex_ctx_wait_children(ctx, kids, (size_t)n + 1, WAIT_MS);
  else
    rc = apex_ctx_wait_children(ctx, NULL, 0, WAIT_MS);
  int st = -1;
  (void)apex_ctx_child_outcome(ctx, kids[n], &st, NULL, NULL);
  free(kids);
  apex_ctx_set_result(ctx, json_pack("{s:i, s:i, s:i}", "rc", rc, "which", (int)which, "state", st));
  return APEX_OK;
}

static int deaf(apex_ctx_t *ctx) {
  struct pollfd pfd = {(int)json_integer_value(json_object_get(apex_ctx_params(ctx), "fd")),
                       POLLIN, 0};
  (void)poll(&pfd, 1, 60000);
  return APEX_OK;
}

static int dl(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int depth = (int)json_integer_value(json_object_get(p, "depth"));
  json_t *cp = json_pack("{s:i, s:O}", "depth", depth - 1, "fd", json_object_get(p, "fd"));
  json_t *dp = json_pack("{s:O}", "fd", json_object_get(p, "fd"));
  apex_child_t *k = NULL;
  int rc = apex_ctx_spawn(ctx, "spawn_kit", "nil", NULL, NULL, &k);
  if (rc == APEX_OK)
    rc = depth > 1 ? apex_ctx_spawn(ctx, "spawn_kit", "dl", cp, NULL, &k)
                   : apex_ctx_spawn(ctx, "spawn_kit", "deaf", dp, NULL, &k);
  json_decref(cp);
  json_decref(dp);
  if (rc == APEX_OK) rc = apex_ctx_wait_children(ctx, NULL, 0, -1);
  return rc;
}

static void pend_cancel(apex_ctx_t *ctx, void *user) {
  (void)user;
  apex_ctx_complete(ctx, APEX_E_CANCELLED);
}

static int pend(apex_ctx_t *ctx) {
  apex_ctx_on_cancel(ctx, pend_cancel, NULL);
  return APEX_PENDING;
}

typedef struct dfan_state {
  atomic_int left;
} dfan_state_t;

static void dfan_end(apex_ctx_t *ctx, apex_child_t *child, void *user) {
  (void)child;
  dfan_state_t *d = user;
  if (atomic_fetch_sub(&d->left, 1) != 1) return;
  free(d);
  apex_ctx_complete(ctx, apex_ctx_is_cancelled(ctx) ? APEX_E_CANCELLED : APEX_OK);
}

static void dfan_cancel(apex_ctx_t *ctx, void *user) {
  (void)ctx;
  (void)user; /* the children's ends complete it */
}

static int dfan(apex_ctx_t *ctx) {
  int n = (int)json_integer_value(json_object_get(apex_ctx_params(ctx), "n"));
  dfan_state_t *d = calloc(1, sizeof *d);
  if (!d) return APEX_E_NOMEM;
  atomic_init(&d->left, n);
  apex_ctx_on_cancel(ctx, dfan_cancel, NULL);
  for (int i = 0; i < n; i++) {
    apex_child_t *c = NULL;
    int rc = apex_ctx_spawn(ctx, "spawn_kit", "pend", NULL, NULL, &c);
    if (rc == APEX_OK) rc = apex_ctx_on_child_end(ctx, c, dfan_end, d);
    if (rc != APEX_OK) return rc; /* not reached in the tests: d leaks then */
  }
  return APEX_PENDING;
}

static const apex_param_spec_t k_dfan[] = {
    {"n", APEX_PARAM_INT, 1, NULL, 1, 1, 1, 100000, "children"},
};
static const apex_param_spec_t k_hang[] = {
    {"token", APEX_PARAM_INT, 0, "0", 0, 0, 0, 0, "1: sleep on its own token"},
};
static const apex_param_spec_t k_hfan[] = {
    {"n", APEX_PARAM_INT, 1, NULL, 1, 1, 1, 64, "children"},
    {"token", APEX_PARAM_INT, 0, "0", 0, 0, 0, 0, "the children's token param"},
    {"nil_after", APEX_PARAM_INT, 0, "0", 0, 0, 0, 0, "1: later attempts spawn nil children"},
};
static const apex_param_spec_t k_qfan[] = {
    {"n", APEX_PARAM_INT, 1, NULL, 1, 1, 1, 1000, "children"},
    {"action", APEX_PARAM_STRING, 0, "\"hang\"", 0, 0, 0, 0, "the children's action"},
};
static const apex_param_spec_t k_wone[] = {
    {"n", APEX_PARAM_INT, 1, NULL, 1, 1, 0, 1000, "nil children"},
    {"mode", APEX_PARAM_INT, 1, NULL, 1, 1, 0, 3, "0 one, 1 any, 2 all named, 3 every"},
};
static const apex_param_spec_t k_deaf[] = {
    {"fd", APEX_PARAM_INT, 1, NULL, 1, 0, 0, 0, "returns once this fd is readable"},
};
static const apex_param_spec_t k_dl[] = {
    {"depth", APEX_PARAM_INT, 1, NULL, 1, 1, 1, 8, "levels of dl below"},
    {"fd", APEX_PARAM_INT, 1, NULL, 1, 0, 0, 0, "the deaf child's fd"},
};
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
    {.name = "hang", .handler = hang, .params = k_hang, .n_params = 1},
    {.name = "hfan", .handler = hfan, .params = k_hfan, .n_params = 3},
    {.name = "wone", .handler = wone, .params = k_wone, .n_params = 2},
    {.name = "qfan", .handler = qfan, .params = k_qfan, .n_params = 2},
    {.name = "deaf", .handler = deaf, .params = k_deaf, .n_params = 1},
    {.name = "dl", .handler = dl, .params = k_dl, .n_params = 2},
    {.name = "pend", .handler = pend, .kind = APEX_ACTION_DEFERRED},
    {.name = "dfan", .handler = dfan, .kind = APEX_ACTION_DEFERRED, .params = k_dfan, .n_params = 1},
};

static const apex_plugin_desc_t k_plugin = {APEX_PLUGIN_DESC_INIT,
                                            .name = "spawn_kit",
                                            .version = "1.0.0",
                                            .description = "fan-out test actions",
                                            .actions = k_actions,
                                            .n_actions = sizeof k_actions / sizeof k_actions[0]};

APEX_PLUGIN_DEFINE(k_plugin)
