/* spawn_race: a deferred parent whose ctx a thread of the test keeps
 * spawning on after the attempt's complete returned, for
 * tests/integration/test_children_stale_spawn.c. The test reaches this
 * module's state with dlsym (the same object the manager loaded).
 *
 *   gate   blocking: returns APEX_OK with no result once spawn_race_gate
 *          is at least its param n (polls every ms, at most 60 s; it
 *          ignores its cancel), so it is let go at its end.
 *   nil    blocking: returns APEX_OK with no result.
 *   par    deferred, param ok (0/1), start-to-close 60 s (so each attempt
 *          has a token of its own, and its children a shared token below
 *          it), 2 attempts 1 ms apart. Each attempt spawns a gate child
 *          (n: the attempt number) and registers an end callback on it, then
 *          publishes its ctx (spawn_race_ctx), the child
 *          (spawn_race_child) and attempt (spawn_race_attempt). The callback completes the attempt from
 *          inside the last child's end, where the complete is held until
 *          the callback returns (children.c): attempt 1 with
 *          APEX_E_TRANSIENT (ok 0: a retry follows) or APEX_OK (ok 1),
 *          attempt 2 with APEX_OK. After its complete returned, the
 *          callback reads its child's outcome and task id, which an end
 *          callback may still do (plugin.h), into spawn_race_outcome_rc,
 *          spawn_race_outcome_state and spawn_race_child_id. Attempt 1's
 *          callback then sets
 *          spawn_race_completed and waits (at most 60 s) for
 *          spawn_race_go, which the test sets once its own spawn on the
 *          ctx is under way: the complete had returned, and the attempt
 *          ends when the callback returns.
 *
 *   hold   blocking: sets spawn_race_hold_running, then returns APEX_OK once
 *          spawn_race_hold_go is set (polls every ms, at most 60 s; it
 *          ignores its cancel).
 *   oc     deferred, params wait_cb (0/1), complete (0/1, default 1):
 *          registers a cancel callback, spawns a hold child with an end
 *          callback (which sets spawn_race_hold_ended), and once the child
 *          runs (wait_cb 1: and the cancel callback started) completes
 *          with APEX_OK: held for the child, which ignores the cancel the
 *          complete sends it (complete 0: no complete, for the test to
 *          make); then publishes its ctx and sets spawn_race_oc_held. Its cancel
 *          callback adds 1 to spawn_race_oc_ran; with wait_cb 1 it then
 *          waits for spawn_race_oc_held, lets the child go, waits for the
 *          child's end callback and 100 ms more (the held complete, let go
 *          by that end, then waits for this callback to return), and
 *          completes again with APEX_E_EXECUTION: a second complete,
 *          misuse.
 *
 * Threads: handlers on workers; the callbacks on the worker that ended the
 * gate child; oc's cancel callback on the thread that cancels. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "apex/plugin.h"

#define EXPORT __attribute__((visibility("default")))

EXPORT atomic_int spawn_race_gate;
EXPORT atomic_int spawn_race_attempt;
EXPORT _Atomic(apex_ctx_t *) spawn_race_ctx;
EXPORT atomic_int spawn_race_completed;
EXPORT atomic_int spawn_race_go;
EXPORT atomic_int spawn_race_spawn_rc = 1; /* the last attempt's spawn; 1: none yet */
EXPORT _Atomic(apex_child_t *) spawn_race_child; /* the last attempt's gate child */
/* The last end callback's reads after its complete; 1, -2, 0: none yet. */
EXPORT atomic_int spawn_race_outcome_rc = 1;
EXPORT atomic_int spawn_race_outcome_state = -2;
EXPORT atomic_ullong spawn_race_child_id;
EXPORT atomic_int spawn_race_hold_running;
EXPORT atomic_int spawn_race_hold_go;
EXPORT atomic_int spawn_race_hold_ended;
EXPORT atomic_int spawn_race_oc_held;
EXPORT atomic_int spawn_race_oc_ran;

static void ms_sleep(void) {
  struct timespec ms = {0, 1000000};
  nanosleep(&ms, NULL);
}

static int gate(apex_ctx_t *ctx) {
  int n = (int)json_integer_value(json_object_get(apex_ctx_params(ctx), "n"));
  for (int i = 0; i < 60000 && atomic_load(&spawn_race_gate) < n; i++) ms_sleep();
  return APEX_OK;
}

/* Waits (at most 60 s) until *v is set. */
static void wait_set(atomic_int *v) {
  for (int i = 0; i < 60000 && !atomic_load(v); i++) ms_sleep();
}

static int hold(apex_ctx_t *ctx) {
  (void)ctx;
  atomic_store(&spawn_race_hold_running, 1);
  wait_set(&spawn_race_hold_go);
  return APEX_OK;
}

static void hold_end(apex_ctx_t *ctx, apex_child_t *child, void *user) {
  (void)ctx;
  (void)child;
  (void)user;
  atomic_store(&spawn_race_hold_ended, 1);
}

static void oc_cancel(apex_ctx_t *ctx, void *user) {
  atomic_fetch_add(&spawn_race_oc_ran, 1);
  if (!user) return;
  wait_set(&spawn_race_oc_held);
  atomic_store(&spawn_race_hold_go, 1);
  wait_set(&spawn_race_hold_ended);
  struct timespec ms100 = {0, 100000000};
  nanosleep(&ms100, NULL);
  apex_ctx_complete(ctx, APEX_E_EXECUTION);
}

static int oc(apex_ctx_t *ctx) {
  int wait_cb = json_is_true(json_object_get(apex_ctx_params(ctx), "wait_cb"));
  apex_child_t *c = NULL;
  int rc = apex_ctx_on_cancel(ctx, oc_cancel, wait_cb ? (void *)ctx : NULL);
  if (rc == APEX_OK) rc = apex_ctx_spawn(ctx, "spawn_race", "hold", NULL, NULL, &c);
  if (rc == APEX_OK) rc = apex_ctx_on_child_end(ctx, c, hold_end, NULL);
  if (rc != APEX_OK) return rc;
  wait_set(&spawn_race_hold_running);
  if (wait_cb) wait_set(&spawn_race_oc_ran);
  json_t *cj = json_object_get(apex_ctx_params(ctx), "complete");
  if (!json_is_false(cj)) apex_ctx_complete(ctx, APEX_OK);
  atomic_store(&spawn_race_ctx, ctx);
  atomic_store(&spawn_race_oc_held, 1);
  return APEX_PENDING;
}

static int nil(apex_ctx_t *ctx) {
  (void)ctx;
  return APEX_OK;
}

static void on_end(apex_ctx_t *ctx, apex_child_t *child, void *user) {
  int attempt = (int)(intptr_t)user;
  int ok = json_is_true(json_object_get(apex_ctx_params(ctx), "ok"));
  if (attempt == 1 && !ok) {
    apex_ctx_fail(ctx, APEX_E_TRANSIENT, "attempt 1 asks for a retry");
    apex_ctx_complete(ctx, APEX_E_TRANSIENT);
  } else {
    apex_ctx_complete(ctx, APEX_OK);
  }
  int st = -2;
  atomic_store(&spawn_race_outcome_rc, apex_ctx_child_outcome(ctx, child, &st, NULL, NULL));
  atomic_store(&spawn_race_outcome_state, st);
  atomic_store(&spawn_race_child_id, (unsigned long long)apex_ctx_child_task_id(ctx, child));
  if (attempt != 1) return;
  atomic_store(&spawn_race_completed, 1);
  for (int i = 0; i < 60000 && !atomic_load(&spawn_race_go); i++) ms_sleep();
}

static int par(apex_ctx_t *ctx) {
  int attempt = (int)apex_ctx_attempt(ctx);
  json_t *p = json_pack("{s:i}", "n", attempt);
  apex_child_t *c = NULL;
  int rc = apex_ctx_spawn(ctx, "spawn_race", "gate", p, NULL, &c);
  json_decref(p);
  if (rc == APEX_OK) rc = apex_ctx_on_child_end(ctx, c, on_end, (void *)(intptr_t)attempt);
  atomic_store(&spawn_race_ctx, ctx);
  atomic_store(&spawn_race_child, c);
  atomic_store(&spawn_race_spawn_rc, rc);
  atomic_store(&spawn_race_attempt, attempt);
  return rc == APEX_OK ? APEX_PENDING : rc;
}

static const apex_param_spec_t k_gate_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .required = 1}};
static const apex_param_spec_t k_oc_params[] = {
    {.name = "wait_cb", .type = APEX_PARAM_BOOL, .default_json = "false"},
    {.name = "complete", .type = APEX_PARAM_BOOL, .default_json = "true"}};
static const apex_param_spec_t k_par_params[] = {
    {.name = "ok", .type = APEX_PARAM_BOOL, .default_json = "false"}};

static const apex_action_desc_t k_actions[] = {
    {.name = "gate", .handler = gate, .kind = APEX_ACTION_BLOCKING, .params = k_gate_params,
     .n_params = 1},
    {.name = "nil", .handler = nil, .kind = APEX_ACTION_BLOCKING},
    {.name = "hold", .handler = hold, .kind = APEX_ACTION_BLOCKING},
    {.name = "oc", .handler = oc, .kind = APEX_ACTION_DEFERRED, .params = k_oc_params,
     .n_params = 2},
    {.name = "par",
     .handler = par,
     .kind = APEX_ACTION_DEFERRED,
     .params = k_par_params,
     .n_params = 1,
     .default_retry = {.max_attempts = 2, .initial_interval_s = 0.001, .backoff_coefficient = 1},
     .start_to_close_s = 60},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "spawn_race",
    .version = "1.0.0",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
