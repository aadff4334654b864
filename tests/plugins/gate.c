/* gate: a test plugin whose handler is deaf to cancellation and returns
 * only when the test lets it, so a test can read the host's state while a
 * handler outlives its task for as long as it needs, with no time window.
 *
 *   deaf_read   opens the FIFO at `path` and blocks reading one byte,
 *               never looking at its token; result {"byte": the byte}
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
#include <string.h>
#include <unistd.h>

#include "apex/plugin.h"

static int deaf_read(apex_ctx_t *ctx) {
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
  apex_ctx_set_result(ctx, json_pack("{s:i}", "byte", (int)b));
  return APEX_OK;
}

static const apex_param_spec_t k_path[] = {
    {.name = "path", .type = APEX_PARAM_STRING, .required = 1, .description = "a FIFO"},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "deaf_read", .description = "blocks on a FIFO, deaf to cancellation",
     .handler = deaf_read, .kind = APEX_ACTION_BLOCKING, .params = k_path, .n_params = 1},
};

static const apex_plugin_desc_t k_plugin = {
    .abi_version = APEX_PLUGIN_ABI,
    .struct_size = sizeof(apex_plugin_desc_t),
    .name = "gate",
    .version = "1.0.0",
    .description = "a handler the test releases",
    .actions = k_actions,
    .n_actions = 1,
};

APEX_PLUGIN_DEFINE(k_plugin)
