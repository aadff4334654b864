/* The child-task example of docs/plugin-developer-guide.md ("Child
 * tasks"): children.sum adds up the numbers 1..n by splitting the range
 * into `parts` child tasks of children.part, one per slice, and sums their
 * results as they end.
 *
 *   sum   deferred: spawns the parts (weights: each part's share of the
 *         numbers), registers an end callback on each and returns
 *         APEX_PENDING, holding no worker; the last part's callback
 *         completes the task with {"sum": ..., "parts": ..., "failed": ...}.
 *         A part that fails is counted, not passed on: the parent decides.
 *   part  blocking: adds up [from, to], one number per `step_ms`, reporting
 *         progress; cancellable (the parent's cancel or timeout reaches it,
 *         with the reason "parent").
 *
 * Threads: sum's start and part run on host workers; the end callbacks run
 * on whichever thread ended a part. The shared state of one sum task is
 * one allocation, its count atomic; the last callback frees it. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <apex/plugin.h>

typedef struct sum_state {
  int parts;
  atomic_int ended, failed;
  atomic_llong total;
} sum_state_t;

static void part_ended(apex_ctx_t *ctx, apex_child_t *child, void *user) {
  sum_state_t *s = user;
  int parts = s->parts; /* before the count below: the last callback frees s */
  json_t *result = NULL;
  if (apex_ctx_child_outcome(ctx, child, NULL, &result, NULL) == APEX_OK)
    atomic_fetch_add(&s->total, (long long)json_integer_value(json_object_get(result, "sum")));
  else
    atomic_fetch_add(&s->failed, 1);
  json_decref(result);
  if (atomic_fetch_add(&s->ended, 1) + 1 != parts) return;
  long long total = atomic_load(&s->total);
  int failed = atomic_load(&s->failed);
  free(s);
  if (apex_ctx_is_cancelled(ctx)) {
    apex_ctx_complete(ctx, apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled (%s)",
                                         apex_ctx_cancel_reason(ctx)));
    return;
  }
  apex_ctx_set_result(ctx, json_pack("{s:I, s:i, s:i}", "sum", (json_int_t)total, "parts", parts,
                                     "failed", failed));
  apex_ctx_complete(ctx, APEX_OK);
}

static int sum(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  json_int_t n = json_integer_value(json_object_get(p, "n"));
  int parts = (int)json_integer_value(json_object_get(p, "parts"));
  json_int_t step_ms = json_integer_value(json_object_get(p, "step_ms"));
  if (parts > n) parts = (int)n;
  sum_state_t *s = calloc(1, sizeof *s);
  apex_child_t **kids = calloc((size_t)parts, sizeof *kids);
  if (!s || !kids) {
    free(s);
    free(kids);
    return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  }
  s->parts = parts;
  for (int i = 0; i < parts; i++) {
    json_int_t from = 1 + n * i / parts, to = n * (i + 1) / parts;
    char label[64];
    snprintf(label, sizeof label, "%lld..%lld", (long long)from, (long long)to);
    apex_spawn_opts_t o = APEX_SPAWN_OPTS_INIT;
    o.weight = (double)(to - from + 1); /* the roll-up counts numbers, not parts */
    o.label = label;
    json_t *cp = json_pack("{s:I, s:I, s:I}", "from", from, "to", to, "step_ms", step_ms);
    int rc = cp ? apex_ctx_spawn(ctx, "children", "part", cp, &o, &kids[i]) : APEX_E_NOMEM;
    json_decref(cp);
    if (rc != APEX_OK) {
      /* The parts already spawned are cancelled; the task ends after them. */
      free(s);
      free(kids);
      apex_ctx_complete(ctx, apex_ctx_fail(ctx, rc, "spawning part %d failed", i + 1));
      return APEX_PENDING;
    }
  }
  /* After every spawn, so s->parts is final. A part that ended already has
   * its callback run here, and the last one completes the task. */
  for (int i = 0; i < parts; i++) (void)apex_ctx_on_child_end(ctx, kids[i], part_ended, s);
  free(kids);
  return APEX_PENDING;
}

static int part(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  json_int_t from = json_integer_value(json_object_get(p, "from"));
  json_int_t to = json_integer_value(json_object_get(p, "to"));
  json_int_t step_ms = json_integer_value(json_object_get(p, "step_ms"));
  long long total = 0;
  for (json_int_t i = from; i <= to; i++) {
    if (apex_ctx_sleep_ms(ctx, (uint64_t)step_ms) != APEX_OK)
      return apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled (%s) at %lld",
                           apex_ctx_cancel_reason(ctx), (long long)i);
    total += (long long)i;
    apex_ctx_progress(ctx, 100.0 * (double)(i - from + 1) / (double)(to - from + 1), NULL);
  }
  apex_ctx_set_result(ctx, json_pack("{s:I}", "sum", (json_int_t)total));
  return APEX_OK;
}

static const apex_param_spec_t k_sum_params[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "100", .has_min = 1, .min = 1,
     .has_max = 1, .max = 1000000, .description = "add up 1..n"},
    {.name = "parts", .type = APEX_PARAM_INT, .default_json = "4", .has_min = 1, .min = 1,
     .has_max = 1, .max = 1000, .description = "child tasks to split the range into"},
    {.name = "step_ms", .type = APEX_PARAM_INT, .default_json = "10", .has_min = 1, .min = 0,
     .has_max = 1, .max = 60000, .description = "milliseconds per number (to watch it)"},
};
static const apex_param_spec_t k_part_params[] = {
    {.name = "from", .type = APEX_PARAM_INT, .required = 1, .description = "first number"},
    {.name = "to", .type = APEX_PARAM_INT, .required = 1, .description = "last number"},
    {.name = "step_ms", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1, .min = 0,
     .description = "milliseconds per number"},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "sum", .description = "Adds up 1..n in `parts` child tasks", .handler = sum,
     .kind = APEX_ACTION_DEFERRED, .params = k_sum_params, .n_params = 3},
    {.name = "part", .description = "Adds up [from, to]", .handler = part,
     .kind = APEX_ACTION_BLOCKING, .params = k_part_params, .n_params = 3},
};

static const apex_plugin_desc_t k_plugin = {APEX_PLUGIN_DESC_INIT,
                                            .name = "children",
                                            .version = "1.0.0",
                                            .description = "Child tasks: a sum split in parts",
                                            .actions = k_actions,
                                            .n_actions = 2};

APEX_PLUGIN_DEFINE(k_plugin)
