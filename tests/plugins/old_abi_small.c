/* Test plugin: a plugin built against the first ABI-1 header (0.1.0), whose
 * descriptor ends at n_actions and has no action_size. tests/abi/
 * CMakeLists.txt compiles it against the frozen copy in tests/abi/v1, so its
 * sizeof(apex_plugin_desc_t) is the old one, smaller than the host's.
 *
 * The descriptor and the actions array are each placed so that their last
 * byte is the last byte before an inaccessible guard page: a host that reads
 * one byte past struct_size, or steps through the actions with any stride
 * but 0.1.0's sizeof(apex_action_desc_t), crashes here instead of silently
 * reading garbage. */
/* MAP_ANONYMOUS and sysconf: plugins build as strict C11 without _GNU_SOURCE. */
#define _DEFAULT_SOURCE
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "apex/plugin.h"

#ifdef APEX_PLUGIN_DESC_INIT
#error "old_abi_small must be built against tests/abi/v1 (see tests/abi/CMakeLists.txt)"
#endif

static int run(apex_ctx_t *ctx) {
  (void)ctx;
  return 0;
}

static const apex_action_desc_t actions[] = {
    {.name = "run", .handler = run, .kind = APEX_ACTION_BLOCKING},
    {.name = "second", .handler = run, .kind = APEX_ACTION_DEFERRED, .default_timeout_s = 7,
     .flags = APEX_ACTION_F_IDEMPOTENT},
};

/* One mapping per object: data pages, then one PROT_NONE page. */
static struct {
  void *base;
  size_t len;
} maps[2];

static void unmap_all(void) {
  for (size_t i = 0; i < 2; i++) {
    if (maps[i].base) munmap(maps[i].base, maps[i].len);
    maps[i].base = NULL;
  }
}

__attribute__((destructor)) static void on_unload(void) { unmap_all(); }

/* Copies size bytes of src to memory that ends right before a guard page. */
static void *guarded_copy(size_t slot, const void *src, size_t size) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t data_pages = (size + page - 1) / page;
  size_t len = (data_pages + 1) * page;
  void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return NULL;
  maps[slot].base = base;
  maps[slot].len = len;
  char *guard = (char *)base + data_pages * page;
  if (mprotect(guard, page, PROT_NONE) != 0) return NULL;
  char *start = guard - size;
  memcpy(start, src, size);
  return start;
}

APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api);
const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api) {
  (void)api;
  unmap_all();
  const apex_action_desc_t *acts = guarded_copy(0, actions, sizeof actions);
  if (!acts) return NULL;
  apex_plugin_desc_t d = {
      .abi_version = APEX_PLUGIN_ABI,
      .struct_size = sizeof(apex_plugin_desc_t), /* 0.1.0's: ends at n_actions */
      .name = "old_abi_small",
      .version = "0.1.0",
      .actions = acts,
      .n_actions = 2,
  };
  return guarded_copy(1, &d, sizeof d);
}
