/* Error objects: immutable once built, so readers need no lock; only the
 * reference count is atomic. When memory runs out we hand out one static
 * "out of memory" error whose ref/unref do nothing, so reporting an error
 * can itself never fail. Text is scrubbed to valid UTF-8 on the way in
 * (messages carry plugin text and caller input), so apex_error_to_json
 * fails only for want of memory. */
#include "core/error.h"
#include "core/utf8.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct apex_error {
  atomic_uint refs; /* 0: the static no-memory error, never freed */
  int code;
  uint32_t attempt;
  uint8_t timeout_kind; /* apex__error_timeout_kind; set before publishing */
  uint64_t task;
  char *message;
  char *plugin;
  char *action;
  apex_error_t *cause;
  /* The task's last partial result (apex__error_with_partial), or NULL;
   * Apex's own copy, never modified or referenced once published. */
  json_t *partial;
};

static apex_error_t nomem_error = {0,    APEX_E_NOMEM, 0,    0,   0, "out of memory",
                                   NULL, NULL,         NULL, NULL};

static void error_free(apex_error_t *e) {
  apex_error_unref(e->cause);
  json_decref(e->partial); /* checked when published: safe to free recursively */
  free(e); /* one block with its strings */
}

/* Copies s (len bytes) after *at and returns the copy, or NULL for NULL. */
static char *put(char **at, const char *s, size_t len) {
  if (!s) return NULL;
  char *d = *at;
  memcpy(d, s, len);
  d[len] = '\0';
  *at += len + 1;
  return d;
}

/* One block for an error with a message of mlen bytes and where's names:
 * every field set but the three strings, which the caller writes from *at
 * on (message first, then put() the names). NULL when memory runs out
 * (cause then dropped). */
static apex_error_t *error_alloc(int code, const apex__where_t *where, apex_error_t *cause,
                                 size_t mlen, char **at) {
  const char *plugin = where ? where->plugin : NULL;
  const char *action = where ? where->action : NULL;
  size_t plen = plugin ? strlen(plugin) : 0, alen = action ? strlen(action) : 0;
  apex_error_t *e = malloc(sizeof *e + mlen + 1 + (plugin ? plen + 1 : 0) + (action ? alen + 1 : 0));
  if (!e) {
    apex_error_unref(cause);
    return NULL;
  }
  atomic_init(&e->refs, 1);
  e->code = code;
  e->timeout_kind = 0;
  e->cause = cause;
  e->partial = NULL;
  e->task = where ? where->task : 0;
  e->attempt = where ? where->attempt : 0;
  e->message = (char *)(e + 1);
  *at = e->message + mlen + 1;
  e->plugin = put(at, plugin, plen);
  e->action = put(at, action, alen);
  return e;
}

/* One allocation holds the error and its three strings: an error is made
 * on every failed, cancelled or timed-out attempt, on the path from the
 * event to the host seeing it. */
apex_error_t *apex__error_newv(int code, const apex__where_t *where, apex_error_t *cause,
                               const char *fmt, va_list ap) {
  if (!fmt) fmt = "";
  const char *whole = NULL; /* fmt is "%s": the argument is the message */
  size_t mlen;
  va_list count;
  va_copy(count, ap);
  if (strcmp(fmt, "%s") == 0) {
    whole = va_arg(count, const char *);
    if (!whole) whole = "(null)";
    mlen = strlen(whole);
  } else {
    int n = vsnprintf(NULL, 0, fmt, count);
    mlen = n < 0 ? 0 : (size_t)n;
  }
  va_end(count);
  char *at;
  apex_error_t *e = error_alloc(code, where, cause, mlen, &at);
  if (!e) return &nomem_error;
  if (whole) {
    memcpy(e->message, whole, mlen);
    e->message[mlen] = '\0';
  } else if (vsnprintf(e->message, mlen + 1, fmt, ap) < 0) {
    e->message[0] = '\0';
  }
  apex__utf8_scrub(e->message);
  if (e->plugin) apex__utf8_scrub(e->plugin);
  if (e->action) apex__utf8_scrub(e->action);
  return e;
}

/* One block: the error, then pre + text + post as its message, then the
 * names. scrub: the text or the names may not be valid UTF-8. */
static apex_error_t *assemble(int code, const apex__where_t *where, apex_error_t *cause,
                              const char *pre, const char *text, const char *post, int scrub) {
  size_t a = strlen(pre), b = strlen(text), c = strlen(post), mlen = a + b + c;
  char *at;
  apex_error_t *e = error_alloc(code, where, cause, mlen, &at);
  if (!e) return &nomem_error;
  memcpy(e->message, pre, a);
  memcpy(e->message + a, text, b);
  memcpy(e->message + a + b, post, c);
  e->message[mlen] = '\0';
  if (scrub) {
    apex__utf8_scrub(e->message);
    if (e->plugin) apex__utf8_scrub(e->plugin);
    if (e->action) apex__utf8_scrub(e->action);
  }
  return e;
}

apex_error_t *apex__error_cancelled(const apex__where_t *where, apex_error_t *cause,
                                   const char *reason) {
  /* "cancelled (REASON)", put together by hand: every cancel makes one,
   * on the way from the cancel to the host's DONE, and vsnprintf (twice:
   * measure, then write) was the larger part of the cost. A host's reason
   * text may be anything: scrubbed. */
  return assemble(APEX_E_CANCELLED, where, cause, "cancelled (", reason ? reason : "(null)", ")",
                  1);
}

size_t apex__fmt_fixed3(char buf[APEX__FIXED3_MAX], double v) {
#if LDBL_MANT_DIG >= 64
  /* signbit, not v >= 0: -0.0 passes that test, and printf writes it
   * "-0.000" (NaN fails both range tests: printf's path). */
  if (!signbit(v) && v < 1e15) {
    /* v has 53 significant bits and 1000 seven (1111101 x 2^3): their
     * product fits long double's 64, so x, its integer part k and its
     * fraction (x - k: Sterbenz, k <= x < 2k, or k = 0) are all exact, and
     * the rounding below is printf's on the exact value. */
    long double x = (long double)v * 1000.0L;
    unsigned long long k = (unsigned long long)x;
    long double frac = x - (long double)k;
    if (frac > 0.5L || (frac == 0.5L && (k & 1u))) k++;
    char digits[24];
    size_t nd = 0, len = 0;
    unsigned long long ip = k / 1000u;
    unsigned fp = (unsigned)(k % 1000u);
    do {
      digits[nd++] = (char)('0' + ip % 10u);
      ip /= 10u;
    } while (ip);
    while (nd) buf[len++] = digits[--nd];
    buf[len++] = '.';
    buf[len++] = (char)('0' + fp / 100u);
    buf[len++] = (char)('0' + fp / 10u % 10u);
    buf[len++] = (char)('0' + fp % 10u);
    buf[len] = '\0';
    return len;
  }
#endif
  int n = snprintf(buf, APEX__FIXED3_MAX, "%.3f", v);
  if (n < 0) {
    buf[0] = '\0';
    return 0;
  }
  return (size_t)n < APEX__FIXED3_MAX ? (size_t)n : APEX__FIXED3_MAX - 1;
}

apex_error_t *apex__error_clean(int code, const apex__where_t *where, const char *msg) {
  return apex__error_clean_n(code, where, msg, strlen(msg));
}

apex_error_t *apex__error_clean_n(int code, const apex__where_t *where, const char *msg,
                                  size_t mlen) {
  char *at;
  apex_error_t *e = error_alloc(code, where, NULL, mlen, &at);
  if (!e) return &nomem_error;
  memcpy(e->message, msg, mlen);
  e->message[mlen] = '\0';
  return e;
}

apex_error_t *apex__error_new(int code, const apex__where_t *where, apex_error_t *cause,
                              const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  apex_error_t *e = apex__error_newv(code, where, cause, fmt, ap);
  va_end(ap);
  return e;
}

int apex__error_put(apex_error_t **err, apex_error_t *e) {
  int code = e->code;
  if (err)
    *err = e;
  else
    apex_error_unref(e);
  return code;
}

int apex__fail(apex_error_t **err, int code, const char *fmt, ...) {
  if (!err) return code;
  va_list ap;
  va_start(ap, fmt);
  *err = apex__error_newv(code, NULL, NULL, fmt, ap);
  va_end(ap);
  return code;
}

/* Indexed by apex__error_timeout_kind's kind (exec/internal.h,
 * apex__tmo_kind_t, which keeps this order). */
static const char *const timeout_kinds[] = {NULL, "schedule_to_close", "schedule_to_start",
                                            "start_to_close", "heartbeat"};

apex_error_t *apex__error_timeout_kind(apex_error_t *e, int kind) {
  if (e != &nomem_error && kind > 0 &&
      (size_t)kind < sizeof timeout_kinds / sizeof timeout_kinds[0])
    e->timeout_kind = (uint8_t)kind;
  return e;
}

apex_error_t *apex__error_with_partial(apex_error_t *e, json_t *partial) {
  if (!partial) return e;
  if (e == &nomem_error) {
    json_decref(partial);
    return e;
  }
  /* The only reference is the caller's: no other thread can see e yet, so
   * it may still change (the usual case: the error was made for the
   * outcome being stored). */
  if (atomic_load_explicit(&e->refs, memory_order_acquire) == 1 && !e->partial) {
    e->partial = partial;
    return e;
  }
  /* Shared (a RETRY event, a cause): a copy, with the same strings. */
  size_t mlen = strlen(e->message), plen = e->plugin ? strlen(e->plugin) : 0,
         alen = e->action ? strlen(e->action) : 0;
  apex_error_t *c =
      malloc(sizeof *c + mlen + 1 + (e->plugin ? plen + 1 : 0) + (e->action ? alen + 1 : 0));
  if (!c) {
    json_decref(partial);
    return e;
  }
  atomic_init(&c->refs, 1);
  c->code = e->code;
  c->attempt = e->attempt;
  c->timeout_kind = e->timeout_kind;
  c->task = e->task;
  c->cause = apex_error_ref(e->cause);
  c->partial = partial;
  char *at = (char *)(c + 1);
  c->message = put(&at, e->message, mlen);
  c->plugin = put(&at, e->plugin, plen);
  c->action = put(&at, e->action, alen);
  apex_error_unref(e);
  return c;
}

/* 1 if e (non-NULL) is a view (error.h): its first word, read as the
 * reference count it is for an error. */
static inline int is_view(const apex_error_t *e) {
  return atomic_load_explicit((atomic_uint *)(uintptr_t)e, memory_order_relaxed) ==
         APEX__ERROR_VIEW;
}

/* e, or for a view the task's error it stands for (made now if it is not
 * yet). NULL for NULL. */
static inline const apex_error_t *real(const apex_error_t *e) {
  return e && is_view(e) ? apex__error_view_error(e) : e;
}

const json_t *apex_error_partial_result(const apex_error_t *e) {
  e = real(e);
  return e ? e->partial : NULL;
}

const char *apex_error_timeout_kind(const apex_error_t *e) {
  e = real(e);
  return e && e->code == APEX_E_TIMEOUT ? timeout_kinds[e->timeout_kind] : NULL;
}

int apex_error_code(const apex_error_t *e) {
  e = real(e);
  return e ? e->code : APEX_E_INVALID;
}
const char *apex_error_message(const apex_error_t *e) {
  e = real(e);
  return e && e->message ? e->message : "";
}
const char *apex_error_plugin(const apex_error_t *e) {
  e = real(e);
  return e ? e->plugin : NULL;
}
const char *apex_error_action(const apex_error_t *e) {
  e = real(e);
  return e ? e->action : NULL;
}
uint64_t apex_error_task_id(const apex_error_t *e) {
  e = real(e);
  return e ? e->task : 0;
}
uint32_t apex_error_attempt(const apex_error_t *e) {
  e = real(e);
  return e ? e->attempt : 0;
}
const apex_error_t *apex_error_cause(const apex_error_t *e) {
  e = real(e);
  return e ? e->cause : NULL;
}

apex_error_t *apex_error_ref(apex_error_t *e) {
  if (!e || e == &nomem_error) return e;
  if (is_view(e))
    apex__error_view_ref(e);
  else
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
  return e;
}

void apex_error_unref(apex_error_t *e) {
  if (!e || e == &nomem_error) return;
  if (is_view(e))
    apex__error_view_unref(e);
  else if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
    error_free(e);
}

json_t *apex_error_to_json(const apex_error_t *e) {
  e = real(e);
  if (!e) return NULL;
  json_t *o = json_object();
  if (!o) return NULL;
  int bad = json_object_set_new(o, "code", json_string(apex_status_name(e->code))) ||
            json_object_set_new(o, "message", json_string(apex_error_message(e)));
  if (!bad && e->plugin) bad = json_object_set_new(o, "plugin", json_string(e->plugin));
  if (!bad && e->action) bad = json_object_set_new(o, "action", json_string(e->action));
  if (!bad && e->task) bad = json_object_set_new(o, "task", json_integer((json_int_t)e->task));
  if (!bad && e->attempt) bad = json_object_set_new(o, "attempt", json_integer(e->attempt));
  const char *kind = apex_error_timeout_kind(e);
  if (!bad && kind) bad = json_object_set_new(o, "timeout", json_string(kind));
  if (!bad && e->partial) {
    json_t *p = json_deep_copy(e->partial);
    bad = !p || json_object_set_new(o, "partial_result", p);
  }
  if (!bad && e->cause) {
    json_t *c = apex_error_to_json(e->cause);
    bad = !c || json_object_set_new(o, "cause", c);
  }
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}
