/* Test plugin: a descriptor from the oldest layout ABI 1 allows, ending right
 * after n_actions, placed so that its last byte is the last byte before an
 * inaccessible guard page. A host that reads one byte past struct_size
 * crashes here instead of silently reading garbage.
 *
 * (With today's plugin.h the v1 minimum is also sizeof(apex_plugin_desc_t);
 * once fields are appended this plugin becomes a genuinely older one.)
 *
 * APEX_TEST_DESC_SIZE=<bytes> (a multiple of 8, at least the minimum) makes
 * it report a larger struct_size instead, as a newer plugin with appended
 * fields would; the extra bytes are filled with 0xAB. */
/* MAP_ANONYMOUS and sysconf: plugins build as strict C11 without _GNU_SOURCE. */
#define _DEFAULT_SOURCE
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "apex/plugin.h"

#define V1_SIZE (offsetof(apex_plugin_desc_t, n_actions) + sizeof(size_t))

static int run(apex_ctx_t *ctx) {
  (void)ctx;
  return 0;
}

static const apex_action_desc_t actions[] = {
    {.name = "run", .handler = run, .kind = APEX_ACTION_BLOCKING}};

static void *region;
static size_t region_len;

static void unmap(void) {
  if (region) munmap(region, region_len);
  region = NULL;
}

__attribute__((destructor)) static void on_unload(void) { unmap(); }

APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api);
const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api) {
  (void)api;
  size_t size = V1_SIZE;
  const char *env = getenv("APEX_TEST_DESC_SIZE");
  if (env) size = (size_t)strtoul(env, NULL, 10);
  if (size < V1_SIZE || size % 8 || size > 65536) return NULL;
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t data_pages = (size + page - 1) / page;
  unmap();
  region_len = (data_pages + 1) * page;
  region = mmap(NULL, region_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) {
    region = NULL;
    return NULL;
  }
  char *guard = (char *)region + data_pages * page;
  if (mprotect(guard, page, PROT_NONE) != 0) return NULL;
  char *start = guard - size;
  memset(start, 0xAB, size);
  apex_plugin_desc_t d = {
      .abi_version = APEX_PLUGIN_ABI,
      .struct_size = (uint32_t)size,
      .name = "old_abi_small",
      .version = "0.1.0",
      .actions = actions,
      .n_actions = 1,
  };
  memcpy(start, &d, V1_SIZE);
  return (const apex_plugin_desc_t *)(void *)start;
}
