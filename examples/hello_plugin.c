/* hello: the smallest complete Apex plugin, the worked example of
 * docs/plugin-developer-guide.md. One blocking action:
 *
 *   greet  params {"name": string = "world", "times": int = 3 in [1, 100]};
 *          greets `times` times, 10 ms apart, reporting progress after each
 *          greeting; result {"greeting": "hello, NAME", "times": N}.
 *
 * Threads: greet runs on a host worker thread and touches only its own ctx;
 * the plugin has no state, so it needs no init/shutdown hooks and no lock.
 *
 * What can fail: cancellation (user, timeout, shutdown) ends the task with
 * APEX_E_CANCELLED between greetings; out of memory building the result
 * fails it with APEX_E_NOMEM. Nothing here aborts or prints: the host owns
 * the process.
 *
 * Build (outside this tree): cc -shared -fPIC -o hello.so hello_plugin.c \
 *   $(pkg-config --cflags apex) -ljansson */
#include <stdio.h>

#include <apex/plugin.h>

static int greet(apex_ctx_t *ctx) {
  /* Validated by the host against k_greet_params before we run: both params
   * are present (given or defaulted), typed and within bounds. */
  json_t *params = apex_ctx_params(ctx);
  const char *name = json_string_value(json_object_get(params, "name"));
  json_int_t times = json_integer_value(json_object_get(params, "times"));

  char msg[128];
  for (json_int_t i = 1; i <= times; i++) {
    /* A cancellable wait: returns early when the task's token fires. */
    if (apex_ctx_sleep_ms(ctx, 10) == APEX_E_CANCELLED) {
      const char *why = apex_ctx_cancel_reason(ctx);
      return apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled (%s) after %lld greeting(s)",
                           why ? why : "?", (long long)(i - 1));
    }
    snprintf(msg, sizeof msg, "greeting %lld of %lld", (long long)i, (long long)times);
    /* A rejected update (never the case here) is not this task's failure. */
    (void)apex_ctx_progress(ctx, 100.0 * (double)i / (double)times, msg);
  }

  json_t *result = json_pack("{s:s+, s:I}", "greeting", "hello, ", name, "times", times);
  if (!result) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result");
  apex_ctx_set_result(ctx, result); /* the ctx owns it now */
  apex_ctx_log(ctx, APEX_LOG_DEBUG, "greeted %s %lld time(s)", name, (long long)times);
  return APEX_OK;
}

static const apex_param_spec_t k_greet_params[] = {
    {.name = "name", .type = APEX_PARAM_STRING, .default_json = "\"world\"",
     .description = "who to greet"},
    {.name = "times", .type = APEX_PARAM_INT, .default_json = "3", .has_min = 1, .min = 1,
     .has_max = 1, .max = 100, .description = "how many greetings, 10 ms apart"},
};

static const apex_action_desc_t k_actions[] = {
    {
        .name = "greet",
        .description = "Greets NAME `times` times, reporting progress after each",
        .handler = greet,
        .kind = APEX_ACTION_BLOCKING,
        .params = k_greet_params,
        .n_params = sizeof k_greet_params / sizeof k_greet_params[0],
        .default_timeout_s = 30, /* a caller's timeout_s overrides it */
        .default_retry = {.max_attempts = 1},
    },
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT, /* abi_version (read first), struct_size, action_size */
    .name = "hello",
    .version = "1.0.0",
    .description = "The example plugin of the developer guide",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
