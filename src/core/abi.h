/* Internal: reading and writing the public structs that grow (docs/abi.md).
 *
 * A struct a caller allocates carries struct_size, the size of the struct as
 * the caller's header declared it. The caller may be older than this library
 * (a smaller size: the fields it lacks take their defaults) or newer (a
 * larger size: the fields this library lacks must be zero, so a newer host
 * that sets one gets an error instead of a silently ignored setting). These
 * helpers do that in one place for every such struct; each knows its own
 * defaults and field checks. No state; safe from any thread. */
#ifndef APEX_CORE_ABI_H
#define APEX_CORE_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "apex/apex.h"

/* Where `field` ends in `type`: the smallest struct_size that holds it. */
#define APEX__END_OF(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

/* sizeof(type) as ABI 1 first shipped it (0.1.0), whose last field was
 * `last`: its end rounded up to the struct's alignment, as the compiler pads
 * it. Valid while no appended field raises the alignment (pointers and
 * doubles already set it); tests/abi/ checks each value against a copy of the
 * 0.1.0 headers. */
#define APEX__V1_SIZEOF(type, last)                                                  \
  ((APEX__END_OF(type, last) + _Alignof(type) - 1) / _Alignof(type) * _Alignof(type))

/* The first public layouts. A struct_size below APEX__*_V1_MIN cannot come
 * from any header: it is refused. */
#define APEX__CONFIG_V1_MIN APEX__END_OF(apex_manager_config_t, log_level)
#define APEX__CONFIG_V1_SIZE APEX__V1_SIZEOF(apex_manager_config_t, log_level)
#define APEX__SUBMIT_OPTS_V1_MIN APEX__END_OF(apex_submit_opts_t, event_user)
#define APEX__SUBMIT_OPTS_V1_SIZE APEX__V1_SIZEOF(apex_submit_opts_t, event_user)
#define APEX__STATS_V1_MIN APEX__END_OF(apex_stats_t, late_reports)
#define APEX__PLUGIN_DESC_V1_MIN APEX__END_OF(apex_plugin_desc_t, n_actions)
#define APEX__ACTION_V1_SIZE APEX__V1_SIZEOF(apex_action_desc_t, flags)
/* The second action layout (scheduling defaults and timeouts appended),
 * which a descriptor with apex_plugin_desc_t.flags and a zero action_size
 * has. */
#define APEX__ACTION_V2_SIZE APEX__V1_SIZEOF(apex_action_desc_t, heartbeat_timeout_s)
#define APEX__PLUGIN_DESC_V2_MIN APEX__END_OF(apex_plugin_desc_t, flags)

/* No public struct comes near this; a larger struct_size is garbage (an
 * uninitialized struct), not a newer layout. */
#define APEX__STRUCT_MAX 4096u

/* Copies a caller's struct into dst, which holds this library's defaults:
 * the first min(size, dst_size) bytes of src, so fields past the caller's
 * size keep their defaults. `what` names the struct in messages ("submit
 * opts") and `init` the call that fills it.
 * Returns: 1; 0 with a reason in why (at most why_len bytes) if size is below
 * min_size or above APEX__STRUCT_MAX, or if src has a nonzero byte past
 * dst_size (a field this library does not know). */
int apex__struct_copy_in(void *dst, size_t dst_size, const void *src, uint32_t size,
                         size_t min_size, const char *what, const char *init, char *why,
                         size_t why_len);

/* Copies this library's filled struct src (src_size bytes, its first field a
 * uint32_t struct_size) into the caller's dst, whose struct_size says how
 * much room it has: min(that, src_size) bytes, never more, then sets dst's
 * struct_size to the bytes written so a newer caller sees which fields an
 * older library left alone.
 * Returns: 1; 0 if dst's struct_size is below min_size or above
 * APEX__STRUCT_MAX (nothing written). */
int apex__struct_copy_out(void *dst, const void *src, size_t src_size, size_t min_size);

#endif
