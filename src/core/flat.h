/* Internal: flattened JSON values (src/core/flat.c). A value a plugin
 * publishes over and over (a partial result, per item) is kept as bytes in
 * a buffer Apex reuses, not as a jansson copy: flattening one costs a walk
 * and memcpy, with no allocation once the buffer is big enough, while a
 * json_deep_copy allocates every node (and every object's hash table), and
 * most of those copies would be replaced before anything delivers them.
 * The JSON a host receives is rebuilt from the bytes when it is delivered
 * or read.
 *
 * A flat value is reference counted and immutable while shared: whoever
 * holds the only reference may flatten another value into it (reuse).
 * Thread-safety: refs are atomic; the bytes are written only by a sole
 * owner, and read by any holder. */
#ifndef APEX_CORE_FLAT_H
#define APEX_CORE_FLAT_H

#include <stdatomic.h>
#include <stddef.h>

#include "apex/apex.h"

typedef struct apex__flat {
  atomic_uint refs;
  size_t len, cap; /* bytes used / allocated in data */
  unsigned char data[];
} apex__flat_t;

/* Flattens v, a value that passed apex__value_check (so it is at most
 * APEX_VALUE_MAX_DEPTH deep, acyclic, its text valid), into *fp: reused if
 * *fp is non-NULL (the caller must hold its only reference), grown or
 * allocated as needed. Returns: APEX_OK; APEX_E_NOMEM (*fp is then still
 * the caller's, holding garbage, or NULL); APEX_E_INVALID for a value
 * deeper than the limit (changed since it was checked: a plugin bug).
 * Ownership: v borrowed; *fp the caller's (new reference when allocated). */
int apex__flat_encode(const json_t *v, apex__flat_t **fp);

/* Returns: a new jansson value equal to the one flattened into f (same
 * types, integers and reals bit for bit, object members in order), owned
 * by the caller alone; NULL on no memory or for NULL f. */
json_t *apex__flat_decode(const apex__flat_t *f);

/* Returns: f. NULL-safe. */
apex__flat_t *apex__flat_ref(apex__flat_t *f);
/* NULL-safe. */
void apex__flat_unref(apex__flat_t *f);
/* Returns: 1 if the caller's reference is the only one (it may then reuse
 * f); 0 otherwise or for NULL. */
int apex__flat_unshared(apex__flat_t *f);

#endif
