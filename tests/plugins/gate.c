/* gate: a test plugin whose handler is deaf to cancellation and returns
 * only when the test lets it, so a test can read the host's state while a
 * handler outlives its task for as long as it needs, with no time window.
 *
 *   deaf_read   opens the FIFO at `path` and blocks reading one byte,
 *               never looking at its token; result {"byte": the byte}
 *   milestones  reports one plain update ("warm-up"), blocks on the gate as
 *               deaf_read does, then reports `count` milestones in a burst
 *               ("milestone N", N = 1..count) and returns
 *
 * The test makes the FIFO (mkfifo) and opens it O_RDWR itself, so the
 * handler's open never blocks; writing one byte releases the handler.
 *
 * Threads: runs on a host worker. What can fail: the FIFO cannot be opened
 * or read (the task fails with APEX_E_IO, naming the path). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "apex/plugin.h"

/* Blocks until the test writes a byte to the FIFO named by the "path"
 * param. Returns: the byte, or an apex_ctx_fail code. */
static int pass_gate(apex_ctx_t *ctx) {
  const char *path = json_string_value(json_object_get(apex_ctx_params(ctx), "path"));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return apex_ctx_fail(ctx, APEX_E_IO, "%s: %s", path, strerror(errno));
  unsigned char b = 0;
  ssize_t n;
  do n = read(fd, &b, 1);
  while (n < 0 && errno == EINTR);
  int e = errno;
  close(fd);
  if (n != 1) return apex_ctx_fail(ctx, APEX_E_IO, "%s: %s", path, n ? strerror(e) : "EOF");
  return b;
}

static int deaf_read(apex_ctx_t *ctx) {
  int b = pass_gate(ctx);
  if (b < 0) return b;
  apex_ctx_set_result(ctx, json_pack("{s:i}", "byte", b));
  return APEX_OK;
}

static int milestones(apex_ctx_t *ctx) {
  json_int_t count = json_integer_value(json_object_get(apex_ctx_params(ctx), "count"));
  apex_ctx_progress(ctx, 0, "warm-up");
  int b = pass_gate(ctx);
  if (b < 0) return b;
  for (json_int_t i = 1; i <= count; i++) {
    char msg[64];
    snprintf(msg, sizeof msg, "milestone %lld", (long long)i);
    apex_progress_update_t u = {.percentage = 100.0 * (double)i / (double)count,
                                .message = msg, .status = "milestone_reached"};
    int rc = apex_ctx_progress_update(ctx, &u);
    if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "milestone %lld refused", (long long)i);
  }
  return APEX_OK;
}

static const apex_param_spec_t k_path[] = {
    {.name = "path", .type = APEX_PARAM_STRING, .required = 1, .description = "a FIFO"},
};

static const apex_param_spec_t k_milestones[] = {
    {.name = "path", .type = APEX_PARAM_STRING, .required = 1, .description = "a FIFO"},
    {.name = "count", .type = APEX_PARAM_INT, .default_json = "200", .has_min = 1, .min = 1},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "deaf_read", .description = "blocks on a FIFO, deaf to cancellation",
     .handler = deaf_read, .kind = APEX_ACTION_BLOCKING, .params = k_path, .n_params = 1},
    {.name = "milestones", .description = "a burst of milestones once the gate opens",
     .handler = milestones, .kind = APEX_ACTION_BLOCKING, .params = k_milestones, .n_params = 2},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "gate",
    .version = "1.0.0",
    .description = "a handler the test releases",
    .actions = k_actions,
    .n_actions = 2,
};

APEX_PLUGIN_DEFINE(k_plugin)
