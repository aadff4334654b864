/* For test plugins that hand the host memory ending right before an
 * inaccessible page, so a host that reads one byte past what the plugin
 * declared crashes instead of silently reading garbage (old_abi_small.c,
 * abi_stride.c). Header-only: each test plugin is one .c file built into its
 * own module. Up to GUARD_SLOTS objects at a time; guard_release_all unmaps
 * them (call it before handing out a new set, and at unload). */
#ifndef APEX_TEST_GUARD_PAGE_H
#define APEX_TEST_GUARD_PAGE_H

/* MAP_ANONYMOUS and sysconf: plugins build as strict C11 without _GNU_SOURCE. */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE
#endif
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUARD_SLOTS 2

static struct {
  void *base;
  size_t len;
} guard_maps[GUARD_SLOTS];

static void guard_release_all(void) {
  for (size_t i = 0; i < GUARD_SLOTS; i++) {
    if (guard_maps[i].base) munmap(guard_maps[i].base, guard_maps[i].len);
    guard_maps[i].base = NULL;
  }
}

__attribute__((destructor)) static void guard_on_unload(void) { guard_release_all(); }

/* Returns: size bytes, each `fill`, whose last byte is the last before a
 * PROT_NONE page, kept in `slot`; NULL if the mapping fails. */
static char *guard_alloc(size_t slot, size_t size, int fill) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t data_pages = (size + page - 1) / page;
  size_t len = (data_pages + 1) * page;
  void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return NULL;
  guard_maps[slot].base = base;
  guard_maps[slot].len = len;
  char *guard = (char *)base + data_pages * page;
  if (mprotect(guard, page, PROT_NONE) != 0) return NULL;
  memset(guard - size, fill, size);
  return guard - size;
}

#endif
