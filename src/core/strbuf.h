/* A growable text buffer for what the library renders (metrics text, OTLP
 * JSON): appends that remember an allocation failure instead of reporting
 * each one, so a renderer checks once at the end.
 * Thread-safety: a buffer is its owner's; no shared state. */
#ifndef APEX_CORE_STRBUF_H
#define APEX_CORE_STRBUF_H

#include <stddef.h>
#include <string.h>

typedef struct apex__strbuf {
  char *p;       /* NUL-terminated text of n bytes, or NULL while empty */
  size_t n, cap;
  int oom;       /* an append failed for want of memory: the text is short */
} apex__strbuf_t;

/* Appends len bytes of s (the slow path: grows p, doubling from 4 KiB).
 * On no memory sets oom and appends nothing, now or later. */
void apex__strbuf_grow_put(apex__strbuf_t *b, const char *s, size_t len);

/* Appends len bytes of s and keeps p NUL-terminated; the common case
 * (room is there) inline. */
static inline void apex__strbuf_put(apex__strbuf_t *b, const char *s, size_t len) {
  if (!b->oom && b->n + len + 1 <= b->cap) {
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = '\0';
    return;
  }
  apex__strbuf_grow_put(b, s, len);
}

#endif
