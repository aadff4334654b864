/* Flattened JSON values: a value as a run of bytes in one buffer, so a
 * plugin that publishes a value per item (apex_ctx_partial_result) pays a
 * walk and a memcpy into a buffer that is reused, instead of a jansson deep
 * copy per call that the next call would throw away (flat.h says why).
 *
 * The format, one tag byte per value, then:
 *   'n' 't' 'f'        nothing (null, true, false)
 *   'i'                8 bytes: the json_int_t
 *   'r'                8 bytes: the double
 *   's'                4 bytes length, the bytes, a NUL
 *   'a'                4 bytes count, the elements
 *   'o'                4 bytes count, then per member: 4 bytes key
 *                      length, the key, a NUL, the value
 * in host byte order (it never leaves the process). The NULs let the
 * decoder hand keys and strings to jansson in place. 32-bit lengths are
 * enough: a checked value holds at most APEX_VALUE_MAX_BYTES of text.
 *
 * Recursion: both walks recurse once per level, over values apex__value_check
 * let through (at most APEX_VALUE_MAX_DEPTH deep), and both stop past that
 * depth anyway, so neither can run deep whatever they are given.
 * Any thread; a flat value's bytes are written only by its sole owner. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/flat.h"

/* Levels either walk goes down at most: the check's limit, and one for
 * the scalars at the bottom. */
#define MAX_LEVELS (APEX_VALUE_MAX_DEPTH + 1)

apex__flat_t *apex__flat_ref(apex__flat_t *f) {
  if (f) atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
  return f;
}

void apex__flat_unref(apex__flat_t *f) {
  if (f && atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1) free(f);
}

int apex__flat_unshared(apex__flat_t *f) {
  return f && atomic_load_explicit(&f->refs, memory_order_acquire) == 1;
}

/* ------------------------------------------------------------- encode */

typedef struct writer {
  apex__flat_t *f;
  int nomem;
} writer_t;

/* Makes room for n more bytes. Returns: a pointer to them, or NULL (no
 * memory; w->nomem set). */
static unsigned char *room(writer_t *w, size_t n) {
  apex__flat_t *f = w->f;
  if (f->cap - f->len < n) {
    size_t cap = f->cap ? f->cap : 64;
    while (cap - f->len < n) {
      if (cap > SIZE_MAX / 2) {
        w->nomem = 1;
        return NULL;
      }
      cap *= 2;
    }
    apex__flat_t *g = realloc(f, sizeof *g + cap);
    if (!g) {
      w->nomem = 1;
      return NULL;
    }
    g->cap = cap;
    w->f = f = g;
  }
  unsigned char *at = f->data + f->len;
  f->len += n;
  return at;
}

static int put_tag(writer_t *w, unsigned char tag) {
  unsigned char *at = room(w, 1);
  if (!at) return -1;
  *at = tag;
  return 0;
}

static int put_bytes(writer_t *w, unsigned char tag, const void *p, size_t n) {
  unsigned char *at = room(w, 1 + n);
  if (!at) return -1;
  at[0] = tag;
  memcpy(at + 1, p, n);
  return 0;
}

/* A length, then n bytes of s and a NUL; tag 0: no tag (an object key). */
static int put_text(writer_t *w, unsigned char tag, const char *s, size_t n) {
  size_t lead = tag ? 1 : 0;
  unsigned char *at = room(w, lead + 4 + n + 1);
  if (!at) return -1;
  if (tag) at[0] = tag;
  uint32_t len = (uint32_t)n;
  memcpy(at + lead, &len, 4);
  memcpy(at + lead + 4, s, n);
  at[lead + 4 + n] = '\0';
  return 0;
}

/* Returns: 0; -1 (no memory: w->nomem; too deep: not). */
static int encode(writer_t *w, const json_t *v, int depth) {
  if (depth > MAX_LEVELS) return -1;
  switch (json_typeof(v)) {
    case JSON_NULL: return put_tag(w, 'n');
    case JSON_TRUE: return put_tag(w, 't');
    case JSON_FALSE: return put_tag(w, 'f');
    case JSON_INTEGER: {
      json_int_t i = json_integer_value(v);
      return put_bytes(w, 'i', &i, sizeof i);
    }
    case JSON_REAL: {
      double d = json_real_value(v);
      return put_bytes(w, 'r', &d, sizeof d);
    }
    case JSON_STRING: return put_text(w, 's', json_string_value(v), json_string_length(v));
    case JSON_ARRAY: {
      uint32_t n = (uint32_t)json_array_size(v);
      if (put_bytes(w, 'a', &n, 4)) return -1;
      for (uint32_t i = 0; i < n; i++)
        if (encode(w, json_array_get(v, i), depth + 1)) return -1;
      return 0;
    }
    case JSON_OBJECT: {
      uint32_t n = (uint32_t)json_object_size(v);
      if (put_bytes(w, 'o', &n, 4)) return -1;
      json_t *o = (json_t *)v; /* iterated, never changed */
      for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it)) {
        if (put_text(w, 0, json_object_iter_key(it), json_object_iter_key_len(it)) ||
            encode(w, json_object_iter_value(it), depth + 1))
          return -1;
      }
      return 0;
    }
  }
  return -1;
}

int apex__flat_encode(const json_t *v, apex__flat_t **fp) {
  apex__flat_t *f = *fp;
  if (!f) {
    if (!(f = malloc(sizeof *f + 64))) return APEX_E_NOMEM;
    atomic_init(&f->refs, 1);
    f->cap = 64;
    *fp = f;
  }
  f->len = 0;
  writer_t w = {f, 0};
  int bad = encode(&w, v, 1);
  *fp = w.f; /* moved by a realloc; still the caller's either way */
  if (!bad) return APEX_OK;
  return w.nomem ? APEX_E_NOMEM : APEX_E_INVALID;
}

/* ------------------------------------------------------------- decode */

typedef struct reader {
  const unsigned char *at, *end;
} reader_t;

static int take(reader_t *r, void *out, size_t n) {
  if ((size_t)(r->end - r->at) < n) return -1;
  memcpy(out, r->at, n);
  r->at += n;
  return 0;
}

/* A length and its text (NUL-terminated in place). Returns: the text, or
 * NULL if the bytes end early. */
static const char *take_text(reader_t *r, uint32_t *len) {
  if (take(r, len, 4) || (size_t)(r->end - r->at) < (size_t)*len + 1) return NULL;
  const char *s = (const char *)r->at;
  r->at += (size_t)*len + 1;
  return s;
}

/* Returns: a new value, or NULL (no memory, or bytes this file did not
 * write). */
static json_t *decode(reader_t *r, int depth) {
  unsigned char tag;
  if (depth > MAX_LEVELS || take(r, &tag, 1)) return NULL;
  switch (tag) {
    case 'n': return json_null();
    case 't': return json_true();
    case 'f': return json_false();
    case 'i': {
      json_int_t i;
      return take(r, &i, sizeof i) ? NULL : json_integer(i);
    }
    case 'r': {
      double d;
      return take(r, &d, sizeof d) ? NULL : json_real(d);
    }
    case 's': {
      uint32_t n;
      const char *s = take_text(r, &n);
      /* Checked when it was flattened: valid UTF-8, no NUL. */
      return s ? json_stringn_nocheck(s, n) : NULL;
    }
    case 'a': {
      uint32_t n;
      json_t *a = take(r, &n, 4) ? NULL : json_array();
      for (uint32_t i = 0; a && i < n; i++) {
        json_t *e = decode(r, depth + 1);
        if (!e || json_array_append_new(a, e)) {
          json_decref(a); /* at most MAX_LEVELS deep: safe to free recursively */
          a = NULL;
        }
      }
      return a;
    }
    case 'o': {
      uint32_t n;
      json_t *o = take(r, &n, 4) ? NULL : json_object();
      for (uint32_t i = 0; o && i < n; i++) {
        uint32_t klen;
        const char *k = take_text(r, &klen);
        json_t *e = k ? decode(r, depth + 1) : NULL;
        if (!e || json_object_setn_new_nocheck(o, k, klen, e)) {
          json_decref(o);
          o = NULL;
        }
      }
      return o;
    }
  }
  return NULL;
}

json_t *apex__flat_decode(const apex__flat_t *f) {
  if (!f) return NULL;
  reader_t r = {f->data, f->data + f->len};
  return decode(&r, 1);
}
