/* cli_kit: a test plugin for the contract of the apex command
 * (tests/integration/test_cli_contract.c): what a run exits with and the one
 * result line it writes when the plugin does something the command must
 * report faithfully.
 *
 *   noop               succeeds at once with {"ok": true}
 *   reject_params      fails at run time with APEX_E_INVALID_PARAMS, as a
 *                      handler does for a param it checks itself ("path"
 *                      must exist: it never does here)
 *   unwritable_result  succeeds with a result string that is not UTF-8 (made
 *                      with json_string_nocheck), which no JSON line can hold
 *   deaf_after_progress reports "started" at once, then sleeps `ms` deaf to
 *                      its token: a test sees on the screen that it runs
 *
 * Two hooks that hang on request, so a test can signal the command while
 * the plugin loads or unloads: init sleeps CLI_KIT_INIT_MS milliseconds and
 * shutdown CLI_KIT_SHUTDOWN_MS, each when that variable is set, after
 * writing "cli_kit: init sleeping" / "cli_kit: shutdown sleeping" on stderr
 * (a test plugin may print; a real one reports through its ctx).
 *
 * Threads: handlers run on host workers and share nothing; init and
 * shutdown run on the loading / destroying thread. Nothing here fails
 * except on purpose or out of memory (APEX_E_NOMEM). */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "apex/plugin.h"

/* Sleeps the milliseconds named by env (if set), deaf to everything. */
static void sleep_from_env(const char *env, const char *what) {
  const char *v = getenv(env);
  if (!v) return;
  long ms = strtol(v, NULL, 10);
  char line[64];
  int n = snprintf(line, sizeof line, "cli_kit: %s sleeping\n", what);
  if (n > 0 && write(STDERR_FILENO, line, (size_t)n) < 0) {
    /* the test waits for the line; nothing to do if stderr is gone */
  }
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static int ck_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  (void)api;
  (void)state;
  (void)why;
  (void)why_len;
  sleep_from_env("CLI_KIT_INIT_MS", "init");
  return 0;
}

static void ck_shutdown(void *state) {
  (void)state;
  sleep_from_env("CLI_KIT_SHUTDOWN_MS", "shutdown");
}

static int noop(apex_ctx_t *ctx) {
  json_t *r = json_pack("{s:b}", "ok", 1);
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

static int reject_params(apex_ctx_t *ctx) {
  const char *path = json_string_value(json_object_get(apex_ctx_params(ctx), "path"));
  return apex_ctx_fail(ctx, APEX_E_INVALID_PARAMS, "param 'path': '%s' does not exist",
                       path ? path : "?");
}

static int unwritable_result(apex_ctx_t *ctx) {
  json_t *r = json_string_nocheck("not \xff UTF-8");
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

static int deaf_after_progress(apex_ctx_t *ctx) {
  json_int_t ms = json_integer_value(json_object_get(apex_ctx_params(ctx), "ms"));
  apex_ctx_progress(ctx, 0, "started");
  struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return APEX_OK;
}

static const apex_param_spec_t k_ms[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .default_json = "60000", .has_min = 1, .min = 0},
};

static const apex_param_spec_t k_path[] = {
    {.name = "path", .type = APEX_PARAM_STRING, .default_json = "\"/nonexistent/cli_kit\""},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "noop", .handler = noop, .kind = APEX_ACTION_BLOCKING},
    {.name = "reject_params", .handler = reject_params, .kind = APEX_ACTION_BLOCKING,
     .params = k_path, .n_params = 1},
    {.name = "unwritable_result", .handler = unwritable_result, .kind = APEX_ACTION_BLOCKING},
    {.name = "deaf_after_progress", .handler = deaf_after_progress, .kind = APEX_ACTION_BLOCKING,
     .params = k_ms, .n_params = 1},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "cli_kit",
    .version = "0.0.1",
    .description = "Test plugin for the apex command's contract",
    .init = ck_init,
    .shutdown = ck_shutdown,
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
