/* JSON values: what a value a plugin hands over (a result, progress
 * details) must be before Apex keeps it, and how Apex frees one it refused.
 * Also the words and the number format that reasons about JSON use, so
 * every message in the library says "integer", never "int" in one place
 * and "integer" in another.
 *
 * Why the limits: a plugin builds its values as it likes, and jansson walks
 * them recursively (json_deep_copy, json_dumps, json_decref: one C stack
 * frame per level). A value nested a million deep, built in a loop, would
 * overflow the stack of whichever thread copies, prints or frees it: a
 * worker, the host's thread, the CLI. A cycle (an object set inside itself)
 * would make those walks endless and is never freed. Text that is not UTF-8
 * cannot be printed as JSON at all. So each value is checked once, where it
 * enters, by a walk that cannot itself recurse or allocate, and a refused
 * value is freed without recursion.
 *
 * Pure functions: no state, no locks, any thread; the caller holds the
 * value alone while it is checked or freed. What can fail: the check (a
 * reason naming the place), and memory while freeing (the value is then
 * leaked, never freed recursively). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/utf8.h"
#include "core/value.h"

/* ------------------------------------------------------------ words */

const char *apex__json_kind(const json_t *v) {
  switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "real";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
  }
  return "unknown";
}

void apex__fmt_num(char *buf, size_t cap, double d) {
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(buf, cap, "%.*g", prec, d);
    if (strtod(buf, NULL) == d) return;
  }
}

void apex__reasonv(char *why, size_t why_len, const char *place, const char *fmt, va_list ap) {
  int n = snprintf(why, why_len, "%s: ", place);
  if (n >= 0 && (size_t)n < why_len) vsnprintf(why + n, why_len - (size_t)n, fmt, ap);
}

void apex__echo(char *out, size_t cap, const char *s, size_t len) {
  size_t max = cap - 4, n = 0;
  for (; n < len && n < max; n++) {
    unsigned char c = (unsigned char)s[n];
    out[n] = (c >= 0x20 && c < 0x7F) ? (char)c : '?';
  }
  if (n < len) {
    memcpy(out + n, "...", 3);
    n += 3;
  }
  out[n] = '\0';
}

/* ------------------------------------------------------------ check */

/* A reason's path stops here ("..." marks the cut): 64 levels of "[0]"
 * after "result" still fit. */
#define PATH_CAP 208

typedef struct frame {
  json_t *c;     /* an object or array on the path from the root */
  void *iter;    /* object: the member being looked at */
  size_t index;  /* array: the element being looked at */
  int begun;
} frame_t;

typedef struct walk {
  frame_t st[APEX_VALUE_MAX_DEPTH];
  int sp;
  const char *where;
  char *why;
  size_t why_len;
} walk_t;

/* Appends s, or "..." once and then nothing more when s does not fit. */
static void put(char *out, size_t *used, const char *s) {
  size_t n = strlen(s);
  if (*used + n >= PATH_CAP - 4) { /* room for "..." and the NUL */
    if (*used < PATH_CAP - 4) memcpy(out + *used, "...", 4);
    *used = PATH_CAP - 1; /* cut: what follows would read as if nothing were missing */
    return;
  }
  memcpy(out + *used, s, n + 1);
  *used += n;
}

/* where, then the member each of the first `levels` frames is looking at. */
static void path_of(const walk_t *w, int levels, char out[PATH_CAP]) {
  size_t used = 0;
  out[0] = '\0';
  put(out, &used, w->where);
  for (int i = 0; i < levels; i++) {
    const frame_t *f = &w->st[i];
    char piece[48];
    if (json_is_object(f->c)) {
      char key[36];
      apex__echo(key, sizeof key, json_object_iter_key(f->iter), json_object_iter_key_len(f->iter));
      snprintf(piece, sizeof piece, ".%s", key);
    } else {
      snprintf(piece, sizeof piece, "[%zu]", f->index);
    }
    put(out, &used, piece);
  }
}

/* Writes "<path of the first `levels` frames>: <reason>" to why. */
static apex_status_t fail(const walk_t *w, int levels, const char *fmt, ...) APEX_PRINTF(3, 4);
static apex_status_t fail(const walk_t *w, int levels, const char *fmt, ...) {
  if (!w->why) return APEX_E_INVALID;
  char path[PATH_CAP];
  path_of(w, levels, path);
  va_list ap;
  va_start(ap, fmt);
  apex__reasonv(w->why, w->why_len, path, fmt, ap);
  va_end(ap);
  return APEX_E_INVALID;
}

static apex_status_t over_nodes(const walk_t *w) {
  return fail(w, 0, "more than %zu values (APEX_VALUE_MAX_NODES)", (size_t)APEX_VALUE_MAX_NODES);
}

static apex_status_t over_bytes(const walk_t *w) {
  return fail(w, 0, "more than %zu bytes of strings and keys (APEX_VALUE_MAX_BYTES)",
              (size_t)APEX_VALUE_MAX_BYTES);
}

/* v sits at the member the frames point at; a container is pushed, so the
 * loop in apex__value_check walks it next. */
static apex_status_t visit(walk_t *w, apex__value_budget_t *b, json_t *v) {
  if (b->nodes == 0) return over_nodes(w);
  b->nodes--;
  switch (json_typeof(v)) {
    case JSON_STRING: {
      size_t len = json_string_length(v);
      if (len > b->bytes) return over_bytes(w);
      b->bytes -= len;
      size_t bad = apex__utf8_bad_at(json_string_value(v), len);
      if (bad < len) return fail(w, w->sp, "not valid UTF-8 at byte %zu", bad);
      return APEX_OK;
    }
    case JSON_OBJECT:
    case JSON_ARRAY:
      /* A cycle is a container on its own path: with the path capped at 64
       * this is at most 64 compares, and it names the cycle where the depth
       * cap alone would only say "too deep". */
      for (int i = 0; i < w->sp; i++)
        if (w->st[i].c == v) return fail(w, w->sp, "contains itself (a cycle)");
      if (w->sp == APEX_VALUE_MAX_DEPTH)
        return fail(w, w->sp, "nested deeper than %d levels (APEX_VALUE_MAX_DEPTH)",
                    APEX_VALUE_MAX_DEPTH);
      w->st[w->sp++] = (frame_t){.c = v};
      return APEX_OK;
    default:
      return APEX_OK;
  }
}

apex_status_t apex__value_check(const json_t *v, const char *where, apex__value_budget_t *b,
                                char *why, size_t why_len) {
  walk_t w;
  w.sp = 0;
  w.where = where ? where : "value";
  w.why = why && why_len ? why : NULL;
  w.why_len = w.why ? why_len : 0;
  if (w.why) w.why[0] = '\0';
  if (!v) return fail(&w, 0, "NULL");
  /* jansson's iterators are not const; the walk only reads. */
  apex_status_t rc = visit(&w, b, (json_t *)v);
  while (rc == APEX_OK && w.sp > 0) {
    frame_t *f = &w.st[w.sp - 1];
    json_t *child;
    if (json_is_object(f->c)) {
      f->iter = f->begun ? json_object_iter_next(f->c, f->iter) : json_object_iter(f->c);
      f->begun = 1;
      if (!f->iter) {
        w.sp--;
        continue;
      }
      const char *key = json_object_iter_key(f->iter);
      size_t klen = json_object_iter_key_len(f->iter);
      if (klen > b->bytes) return over_bytes(&w);
      b->bytes -= klen;
      size_t bad = apex__utf8_bad_at(key, klen);
      if (bad < klen) {
        char q[36];
        apex__echo(q, sizeof q, key, klen);
        return fail(&w, w.sp - 1, "key '%s' not valid UTF-8 at byte %zu", q, bad);
      }
      child = json_object_iter_value(f->iter);
    } else {
      if (f->begun) f->index++;
      f->begun = 1;
      if (f->index >= json_array_size(f->c)) {
        w.sp--;
        continue;
      }
      child = json_array_get(f->c, f->index);
    }
    rc = visit(&w, b, child);
  }
  return rc;
}

/* ------------------------------------------------------------- free */

/* Freeing a value without recursion, cycles included, is a small garbage
 * collection (the one CPython runs on its containers):
 *  1. collect every array and object reachable from the root, with its
 *     reference count;
 *  2. subtract the references the collected containers hold to one another,
 *     and the one Apex owns on the root: what is left on a container are
 *     references from outside (the plugin kept one);
 *  3. those containers, and all they reach, stay alive;
 *  4. every other container is garbage: hold one extra reference to each,
 *     empty them all (json_*_clear drops their members: scalars are freed,
 *     containers only lose a count, since we hold them), then drop the
 *     extra references, which frees each now empty container on its own.
 * Scalars never need the table: they hold nothing, so dropping them cannot
 * recurse. */

typedef struct gc_entry {
  json_t *c;  /* NULL: free slot */
  size_t refs; /* step 2: references from outside the collected set */
  int alive;
} gc_entry_t;

typedef struct gc {
  gc_entry_t *tab;
  size_t cap, used; /* cap: a power of two, kept at least twice used */
  json_t **todo;
  size_t n_todo, cap_todo;
} gc_t;

static size_t slot_of(const gc_t *g, const json_t *c) {
  uint64_t h = (uint64_t)(uintptr_t)c * 0x9e3779b97f4a7c15ull;
  size_t i = (size_t)(h ^ (h >> 29)) & (g->cap - 1);
  while (g->tab[i].c && g->tab[i].c != c) i = (i + 1) & (g->cap - 1);
  return i;
}

static int gc_grow(gc_t *g) {
  size_t cap = g->cap ? g->cap * 2 : 64;
  if (cap > SIZE_MAX / sizeof(gc_entry_t)) return -1;
  gc_entry_t *old = g->tab;
  size_t old_cap = g->cap;
  g->tab = calloc(cap, sizeof *g->tab);
  if (!g->tab) {
    g->tab = old;
    return -1;
  }
  g->cap = cap;
  for (size_t i = 0; i < old_cap; i++)
    if (old[i].c) g->tab[slot_of(g, old[i].c)] = old[i];
  free(old);
  return 0;
}

static int todo_push(gc_t *g, json_t *c) {
  if (g->n_todo == g->cap_todo) {
    size_t cap = g->cap_todo ? g->cap_todo * 2 : 64;
    json_t **p = cap <= SIZE_MAX / sizeof *p ? realloc(g->todo, cap * sizeof *p) : NULL;
    if (!p) return -1;
    g->todo = p;
    g->cap_todo = cap;
  }
  g->todo[g->n_todo++] = c;
  return 0;
}

/* Step 1 for one container: adds c if new and queues it for a walk. */
static int collect(gc_t *g, json_t *c) {
  if ((g->used + 1) * 2 > g->cap && gc_grow(g) != 0) return -1;
  size_t i = slot_of(g, c);
  if (g->tab[i].c) return 0;
  if (todo_push(g, c) != 0) return -1;
  g->tab[i] = (gc_entry_t){.c = c, .refs = c->refcount};
  g->used++;
  return 0;
}

static int is_container(const json_t *v) { return json_is_object(v) || json_is_array(v); }

/* The i-th member of container c, or NULL past the end; *it carries an
 * object's place between calls (start it at NULL with i 0). */
static json_t *member(json_t *c, size_t i, void **it) {
  if (json_is_array(c)) return json_array_get(c, i);
  *it = i == 0 ? json_object_iter(c) : json_object_iter_next(c, *it);
  return *it ? json_object_iter_value(*it) : NULL;
}

void apex__value_free(json_t *v) {
  if (!v) return;
  if (!is_container(v)) {
    json_decref(v);
    return;
  }
  gc_t g = {0};
  if (collect(&g, v) != 0) goto leak;
  while (g.n_todo) { /* 1 */
    json_t *c = g.todo[--g.n_todo];
    void *it = NULL;
    json_t *m;
    for (size_t i = 0; (m = member(c, i, &it)); i++)
      if (is_container(m) && collect(&g, m) != 0) goto leak;
  }
  g.tab[slot_of(&g, v)].refs--; /* 2: ours */
  for (size_t k = 0; k < g.cap; k++) {
    if (!g.tab[k].c) continue;
    void *it = NULL;
    json_t *m;
    for (size_t i = 0; (m = member(g.tab[k].c, i, &it)); i++)
      if (is_container(m)) g.tab[slot_of(&g, m)].refs--;
  }
  for (size_t k = 0; k < g.cap; k++) { /* 3 */
    if (!g.tab[k].c || g.tab[k].refs == 0) continue;
    g.tab[k].alive = 1;
    if (todo_push(&g, g.tab[k].c) != 0) goto leak;
    while (g.n_todo) {
      json_t *c = g.todo[--g.n_todo];
      void *it = NULL;
      json_t *m;
      for (size_t i = 0; (m = member(c, i, &it)); i++) {
        if (!is_container(m)) continue;
        gc_entry_t *e = &g.tab[slot_of(&g, m)];
        if (e->alive) continue;
        e->alive = 1;
        if (todo_push(&g, m) != 0) goto leak;
      }
    }
  }
  /* 4. Nothing below allocates, so nothing below can fail. */
  for (size_t k = 0; k < g.cap; k++)
    if (g.tab[k].c && !g.tab[k].alive) json_incref(g.tab[k].c);
  for (size_t k = 0; k < g.cap; k++) {
    json_t *c = g.tab[k].c;
    if (!c || g.tab[k].alive) continue;
    if (json_is_array(c))
      json_array_clear(c);
    else
      json_object_clear(c);
  }
  for (size_t k = 0; k < g.cap; k++)
    if (g.tab[k].c && !g.tab[k].alive) json_decref(g.tab[k].c);
  /* Ours on the root: the last one if it was garbage (now an empty
   * container), else one of several. */
  json_decref(v);
  free(g.tab);
  free(g.todo);
  return;
leak:
  free(g.tab);
  free(g.todo);
}
