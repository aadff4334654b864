/* The growable text buffer's slow path (strbuf.h). */
#include "core/strbuf.h"

#include <stdlib.h>

void apex__strbuf_grow_put(apex__strbuf_t *b, const char *s, size_t len) {
  if (b->oom) return;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->n + len + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    b->oom = 1;
    return;
  }
  b->p = p;
  b->cap = cap;
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = '\0';
}
