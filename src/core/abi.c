/* Copying the public structs that grow across the library boundary, in both
 * directions (rules in docs/abi.md). Kept here, once, so every struct with a
 * struct_size follows the same rule: an older caller's missing fields take
 * the library's defaults, a newer caller's unknown fields must be zero, and
 * the library never reads or writes past the size the caller declared.
 *
 * Pure functions on caller memory: no locks, any thread. What can fail: a
 * struct_size that no header produced, or a newer caller that set a field
 * this library does not have; both are reported, never guessed around. */
#include <stdio.h>
#include <string.h>

#include "apex/version.h"
#include "core/abi.h"

int apex__struct_copy_in(void *dst, size_t dst_size, const void *src, uint32_t size,
                         size_t min_size, const char *what, const char *init, char *why,
                         size_t why_len) {
  if (size < min_size) {
    snprintf(why, why_len, "%s: struct_size %u is below %zu, the first (ABI 1) layout: fill it with %s",
             what, size, min_size, init);
    return 0;
  }
  if (size > APEX__STRUCT_MAX) {
    snprintf(why, why_len, "%s: struct_size %u is above %u: fill it with %s", what, size,
             APEX__STRUCT_MAX, init);
    return 0;
  }
  /* A newer header's fields that are still zero mean "the default", which is
   * what this library does anyway; one that is set would be ignored, so say
   * so instead. */
  const unsigned char *tail = (const unsigned char *)src;
  for (size_t i = dst_size; i < size; i++) {
    if (tail[i]) {
      snprintf(why, why_len,
               "%s: struct_size %u sets byte %zu, past the %zu bytes this libapex %s knows: "
               "a field of a newer header needs a newer library",
               what, size, i, dst_size, APEX_VERSION_STRING);
      return 0;
    }
  }
  memcpy(dst, src, size < dst_size ? size : dst_size);
  return 1;
}

int apex__struct_copy_out(void *dst, const void *src, size_t src_size, size_t min_size) {
  uint32_t room;
  memcpy(&room, dst, sizeof room); /* struct_size: the first field of every such struct */
  if (room < min_size || room > APEX__STRUCT_MAX) return 0;
  uint32_t n = room < src_size ? room : (uint32_t)src_size;
  memcpy(dst, src, n);
  memcpy(dst, &n, sizeof n);
  return 1;
}
