/* The trace exporter: finished spans queue here and one thread of its own
 * writes them as OTLP/JSON, to a file (one ExportTraceServiceRequest a
 * line, "OTLP/JSON lines", as the OpenTelemetry collector's file exporter
 * writes them) and/or to a collector over OTLP/HTTP (POST
 * ENDPOINT/v1/traces, Content-Type application/json, with libcurl).
 *
 * The format (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-
 * encoding): the protobuf JSON mapping of opentelemetry.proto.collector.
 * trace.v1.ExportTraceServiceRequest, with trace and span ids as lowercase
 * hex (not base64), enums as integers, 64-bit integers as decimal strings.
 * One resource (service.name "apex" unless OTEL_SERVICE_NAME says
 * otherwise; telemetry.sdk.*), one scope ("apex").
 *
 * Never blocks a worker: a push is a compare-and-swap on the pushing
 * thread's own lane; every APEX__EXPORT_GROUP spans the lane's group joins
 * the queue (a lock-free stack) with one add to its count and one push;
 * past APEX__EXPORT_QUEUE_MAX spans waiting, the group is dropped and
 * counted, and its spans go back to the pusher to be reused. The thread
 * wakes every 200 ms, or when a batch's worth is waiting, takes the whole
 * stack and every lane's group in progress, and exports them in batches of
 * at most APEX__EXPORT_BATCH; the pairs it wrote go back to a pool, in
 * bundles, for the tracer to make new spans from. A collector that
 * refuses, hangs or is down costs the exporter thread its timeouts
 * (connect 1 s, request 3 s; 1 s at shutdown) and the batch, counted as
 * dropped; tasks never wait for it.
 *
 * Locks: mu (with cv) only for the thread to sleep on and for stop; no
 * task path takes it (a push signals cv without it). pool_mu for taking a
 * bundle from the pool: a leaf, which the exporter thread never takes (it
 * gives bundles back with a lock-free push), so a preempted exporter at
 * nice 10 never holds up a worker. */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include "apex/version.h"
#include "core/strbuf.h"
#include "core/utf8.h"
#include "obs/trace.h"

#define APEX__EXPORT_QUEUE_MAX 8192u
#define APEX__EXPORT_BATCH 512u

typedef apex__strbuf_t buf_t;

/* A lane (apex__export_push): top is the group gathering (a stack by
 * next, newest first) that the exporter may take whole at any time; last
 * and n are the pusher's own (the thread whose slot it is): the span it
 * pushed last, and how many it pushed since the group began. When top is
 * no longer last, the exporter took the group, and a new one begins. */
typedef struct lane {
  _Alignas(64) _Atomic(apex__span_t *) top;
  apex__span_t *last;
  unsigned n;
} lane_t;

/* Pairs kept for reuse at most (about 1 MB), and the size of a bundle. */
#define POOL_MAX 2048u
#define POOL_BUNDLE 32u

struct apex__exporter {
  _Alignas(64) _Atomic(apex__span_t *) head; /* queued groups, newest first */
  atomic_uint n;                /* spans waiting in head */
  lane_t lane[APEX__EXPORT_LANES];
  _Alignas(64) _Atomic(apex__span_t *) returned; /* bundles given back (by att) */
  atomic_uint pooled;           /* pairs in returned and ready */
  pthread_mutex_t pool_mu;      /* ready; held by takers only, never by the
                                   exporter thread (a preempted low-priority
                                   holder would stall a worker) */
  apex__span_t *ready;          /* bundles (by att), pool_mu */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stop;                     /* mu */
  atomic_int kick;              /* a batch is ready (set without mu) */
  pthread_t th;
  FILE *file;
  char *url;
  CURL *curl;
  struct curl_slist *hdrs;
  const apex__logger_t *log;
  char service[128];
  atomic_uint_fast64_t exported, dropped, errors;
  int warned;                   /* the exporter thread's: one warning per kind */
  buf_t out;                    /* the exporter thread's: a batch's JSON, kept
                                   (a fresh one per batch was an mmap and its
                                   page faults every time) */
};

void apex__span_free(apex__span_t *s) {
  if (!s) return;
  if (s->att0) { /* its first attempt's span, in the same allocation */
    free(s[1].msg);
    free(s[1].ev);
  }
  free(s->msg);
  free(s->tracestate);
  free(s->ev);
  free(s);
}

/* Zeroes a pair. x86-64: 16-byte stores written out (SSE2 is part of
 * the architecture); memset of this constant size compiled to `rep stosq`,
 * whose start-up was most of a dropped span's recycling on W1's workers
 * (bench/analysis.md, the tenth session's tracing section). */
static void pair_zero(apex__span_t *s) {
#if defined(__x86_64__)
  enum { N = 2 * sizeof *s };
  char *p = (char *)s;
  const __m128i z = _mm_setzero_si128();
#define Z4(o)                                     \
  do {                                            \
    _mm_storeu_si128((__m128i *)(p + (o)), z);      \
    _mm_storeu_si128((__m128i *)(p + (o) + 16), z); \
    _mm_storeu_si128((__m128i *)(p + (o) + 32), z); \
    _mm_storeu_si128((__m128i *)(p + (o) + 48), z); \
  } while (0)
  _Static_assert(N >= 256 && N < 384, "pair_zero's stores cover a pair");
  Z4(0);
  Z4(64);
  Z4(128);
  Z4(192);
  if (N > 256) { /* the rest, in at most eight stores (the last may overlap) */
    size_t o = 256;
    for (; o + 16 <= (size_t)N; o += 16) _mm_storeu_si128((__m128i *)(p + o), z);
    if (o < (size_t)N) _mm_storeu_si128((__m128i *)(p + N - 16), z);
  }
#undef Z4
#else
  memset(s, 0, 2 * sizeof *s);
#endif
}

void apex__span_clear(apex__span_t *s) {
  if (s->att0) {
    free(s[1].msg);
    free(s[1].ev);
  }
  if (s->msg) free(s->msg);
  if (s->tracestate) free(s->tracestate);
  if (s->ev) free(s->ev);
  pair_zero(s);
}

/* ------------------------------------------------------------- OTLP JSON */

static inline void b_put(buf_t *b, const char *s, size_t len) { apex__strbuf_put(b, s, len); }
static void b_puts(buf_t *b, const char *s) { b_put(b, s, strlen(s)); }

static const char *state_name(int s) { return apex_task_state_name((apex_task_state_t)s); }

/* ------------------------------------------- a span, written in place
 *
 * A span is most of the exporter's work (docs/observability.md, "Cost"):
 * it reserves a bound on the span's text once, then writes through a
 * cursor with fixed-size copies (literals, two-character tables for the
 * digits and the hex), rather than an append with a capacity check per
 * piece. The bound: the fixed text, the names as often as they appear,
 * and six bytes per byte of escaped text (\u00XX is the longest escape). */

static const char k_hex2[513] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
static const char k_dec2[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Makes room for need more bytes and a NUL. Returns: 0, or -1 (oom set). */
static int b_reserve(buf_t *b, size_t need) {
  if (b->oom) return -1;
  if (b->n + need + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->n + need + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    b->oom = 1;
    return -1;
  }
  b->p = p;
  b->cap = cap;
  return 0;
}

#define W_LIT(p, lit) (memcpy((p), (lit), sizeof(lit) - 1), (p) += sizeof(lit) - 1)

static char *w_mem(char *p, const char *s, size_t n) {
  memcpy(p, s, n);
  return p + n;
}

/* "hex" of n bytes. */
static char *w_hex(char *p, const uint8_t *id, size_t n) {
  *p++ = '"';
  for (size_t i = 0; i < n; i++, p += 2) memcpy(p, k_hex2 + 2 * id[i], 2);
  *p++ = '"';
  return p;
}

/* The number of decimal digits of v. */
static unsigned digits32(uint32_t v) {
  unsigned n = 1;
  while (v >= 100) {
    v /= 100;
    n += 2;
  }
  return n + (v >= 10);
}

/* v in decimal, in exactly n digits (leading zeros), written backwards two
 * at a time in 32-bit arithmetic. */
static char *w_u32n(char *p, uint32_t v, unsigned n) {
  char *q = p + n;
  while (q - p >= 2) {
    q -= 2;
    memcpy(q, k_dec2 + 2 * (v % 100), 2);
    v /= 100;
  }
  if (q > p) *--q = (char)('0' + v % 10);
  return p + n;
}

/* v in decimal; width 0 (as many digits as it takes) or at least width. */
static char *w_u32(char *p, uint32_t v, unsigned width) {
  unsigned n = digits32(v);
  return w_u32n(p, v, n > width ? n : width);
}

/* v in decimal. */
static char *w_u64(char *p, uint64_t v) {
  if (v < 1000000000u) return w_u32(p, (uint32_t)v, 0);
  uint64_t hi = v / 1000000000u;
  p = w_u64(p, hi);
  return w_u32(p, (uint32_t)(v - hi * 1000000000u), 9);
}

/* A time in Unix ns (19 digits): the spans of a batch were made within
 * moments of each other, so their times share the digits above the tenth
 * of a second, kept with the value they came from. Two entries: a task
 * span starts at its submit, which may be a queue's wait before the
 * batch's other times. The exporter thread's own (one per request). */
#define TIME_LOW 100000000u /* the digits below: 8 */
typedef struct time_cache {
  struct {
    uint64_t high; /* v / TIME_LOW of the text; UINT64_MAX: none */
    uint8_t n;
    char text[23];
  } e[2];
  unsigned next; /* the entry to replace */
} time_cache_t;

static char *w_time(char *p, time_cache_t *c, uint64_t ns) {
  uint64_t high = ns / TIME_LOW;
  if (!high) return w_u32(p, (uint32_t)ns, 0);
  unsigned i = c->e[0].high == high ? 0 : c->e[1].high == high ? 1 : 2;
  if (i == 2) {
    i = c->next;
    c->next ^= 1;
    char *e = w_u64(c->e[i].text, high);
    c->e[i].n = (uint8_t)(e - c->e[i].text);
    c->e[i].high = high;
  }
  p = w_mem(p, c->e[i].text, c->e[i].n);
  return w_u32(p, (uint32_t)(ns - high * TIME_LOW), 8);
}

/* A JSON string of s (len bytes): escapes, and U+FFFD for each byte of
 * invalid UTF-8 (an error message is a plugin's text). At most 6 * len + 2
 * bytes. */
static char *w_str(char *p, const char *s, size_t len) {
  *p++ = '"';
  size_t i = 0;
  while (i < len) {
    size_t good = apex__utf8_bad_at(s + i, len - i);
    for (size_t j = i; j < i + good; j++) {
      unsigned char c = (unsigned char)s[j];
      if (c == '"' || c == '\\' || c < 0x20 || c == 0x7f) {
        *p++ = '\\';
        if (c == '"' || c == '\\') {
          *p++ = (char)c;
        } else if (c == '\n') {
          *p++ = 'n';
        } else {
          W_LIT(p, "u00");
          memcpy(p, k_hex2 + 2 * c, 2);
          p += 2;
        }
      } else {
        *p++ = (char)c;
      }
    }
    i += good;
    if (i < len) {
      W_LIT(p, "\\ufffd");
      i++;
    }
  }
  *p++ = '"';
  return p;
}

/* A double as %.17g (round-trips); at most 32 bytes. */
static char *w_dbl(char *p, double v) {
  char tmp[40];
  int k = snprintf(tmp, sizeof tmp, "%.17g", v);
  if (k <= 0 || k >= 32) return W_LIT(p, "0"), p;
  return w_mem(p, tmp, (size_t)k);
}

/* Attribute writers: *first says whether a comma is due; keys are string
 * literals. W_NAME takes text known to need no escaping (plugin and action
 * names, checked at load as [a-z0-9_]; Apex's own state and status names),
 * with its length; W_STR escapes (a plugin's messages). */
#define W_KEY(p, first, key)                               \
  do {                                                     \
    if (first) W_LIT(p, "{\"key\":\"" key "\",\"value\":{"); \
    else W_LIT(p, ",{\"key\":\"" key "\",\"value\":{");       \
    first = 0;                                             \
  } while (0)
#define W_NAME(p, first, key, v, n)   \
  do {                                \
    W_KEY(p, first, key);             \
    W_LIT(p, "\"stringValue\":\"");   \
    p = w_mem(p, (v), (n));           \
    W_LIT(p, "\"}}");                 \
  } while (0)
#define W_STR(p, first, key, v)       \
  do {                                \
    W_KEY(p, first, key);             \
    W_LIT(p, "\"stringValue\":");     \
    p = w_str(p, (v), strlen(v));     \
    W_LIT(p, "}}");                   \
  } while (0)
#define W_INT(p, first, key, v)       \
  do {                                \
    W_KEY(p, first, key);             \
    W_LIT(p, "\"intValue\":\"");      \
    p = w_u64(p, (uint64_t)(v));      \
    W_LIT(p, "\"}}");                 \
  } while (0)
#define W_DBL(p, first, key, v)       \
  do {                                \
    W_KEY(p, first, key);             \
    W_LIT(p, "\"doubleValue\":");     \
    p = w_dbl(p, (v));                \
    W_LIT(p, "}}");                   \
  } while (0)

/* The fixed text of a span and of an event: generous (a span's literals,
 * numbers at 20 digits and ids come to about 700 bytes, an event's to
 * about 400; names and escaped text are counted apart). */
#define SPAN_FIXED 1024u
#define EVENT_FIXED 512u

static void span_json(buf_t *b, time_cache_t *tc, const apex__span_t *s) {
  size_t lp = strlen(s->plugin), la = strlen(s->action);
  size_t lm = s->status == 2 && s->msg ? strlen(s->msg) : 0;
  size_t lt = s->tracestate ? strlen(s->tracestate) : 0;
  const char *err = s->status == 2 ? apex_status_name(s->code) : NULL;
  const char *st = s->is_attempt ? NULL : state_name(s->state);
  size_t le = err ? strlen(err) : 0, ls = st ? strlen(st) : 0;
  size_t need = SPAN_FIXED + 2 * (lp + la) + lp + la + le + ls + 6 * (lm + lt);
  for (unsigned i = 0; i < s->n_ev; i++) {
    const apex__span_ev_t *e = &s->ev[i];
    need += EVENT_FIXED + 6 * strnlen(e->text, sizeof e->text);
    if (e->kind == APEX__SEV_RETRY) need += strlen(apex_status_name(e->code));
  }
  if (b_reserve(b, need) != 0) return;
  char *p = b->p + b->n;
  W_LIT(p, "{\"traceId\":");
  p = w_hex(p, s->trace_id, 16);
  W_LIT(p, ",\"spanId\":");
  p = w_hex(p, s->span_id, 8);
  if (s->has_parent) {
    W_LIT(p, ",\"parentSpanId\":");
    p = w_hex(p, s->parent_id, 8);
  }
  if (s->tracestate) {
    W_LIT(p, ",\"traceState\":");
    p = w_str(p, s->tracestate, lt);
  }
  W_LIT(p, ",\"name\":\"");
  p = w_mem(p, s->plugin, lp);
  *p++ = '.';
  p = w_mem(p, s->action, la);
  if (s->is_attempt) W_LIT(p, " attempt");
  W_LIT(p, "\",\"kind\":1,\"startTimeUnixNano\":\"");
  p = w_time(p, tc, s->start_ns);
  W_LIT(p, "\",\"endTimeUnixNano\":\"");
  p = w_time(p, tc, s->end_ns);
  W_LIT(p, "\",\"attributes\":[");
  int first = 1;
  W_INT(p, first, "apex.task.id", s->task_id);
  W_NAME(p, first, "apex.plugin", s->plugin, lp);
  W_NAME(p, first, "apex.action", s->action, la);
  if (s->is_attempt) {
    W_INT(p, first, "apex.attempt", s->attempt);
  } else {
    W_INT(p, first, "apex.attempts", s->attempt);
    W_NAME(p, first, "apex.task.state", st, ls);
    if (s->parent_task_id) W_INT(p, first, "apex.parent_task.id", s->parent_task_id);
  }
  /* error.type: OpenTelemetry's attribute for the class of a failure */
  if (err) W_NAME(p, first, "error.type", err, le);
  *p++ = ']';
  if (s->n_ev) {
    W_LIT(p, ",\"events\":[");
    for (unsigned i = 0; i < s->n_ev; i++) {
      const apex__span_ev_t *e = &s->ev[i];
      static const char *const names[] = {"", "apex.retry", "apex.timeout", "apex.cancel",
                                          "apex.progress.milestone"};
      const char *nm = names[e->kind <= APEX__SEV_MILESTONE ? e->kind : 0];
      if (i) *p++ = ',';
      W_LIT(p, "{\"timeUnixNano\":\"");
      p = w_time(p, tc, e->time_ns);
      W_LIT(p, "\",\"name\":\"");
      p = w_mem(p, nm, strlen(nm));
      W_LIT(p, "\",\"attributes\":[");
      int f = 1;
      if (e->attempt) W_INT(p, f, "apex.attempt", e->attempt);
      switch (e->kind) {
        case APEX__SEV_RETRY: {
          const char *en = apex_status_name(e->code);
          W_DBL(p, f, "apex.retry.delay_s", e->num);
          W_NAME(p, f, "error.type", en, strlen(en));
          W_STR(p, f, "exception.message", e->text);
          break;
        }
        case APEX__SEV_TIMEOUT: W_STR(p, f, "apex.timeout.kind", e->text); break;
        case APEX__SEV_CANCEL: W_STR(p, f, "apex.cancel.reason", e->text); break;
        case APEX__SEV_MILESTONE:
          W_STR(p, f, "apex.progress.status", e->text);
          W_DBL(p, f, "apex.progress.percentage", e->num);
          break;
        default: break;
      }
      W_LIT(p, "]}");
    }
    *p++ = ']';
  }
  if (s->ev_dropped) {
    W_LIT(p, ",\"droppedEventsCount\":");
    p = w_u64(p, s->ev_dropped);
  }
  if (s->status) {
    W_LIT(p, ",\"status\":{\"code\":");
    p = w_u64(p, (uint64_t)s->status);
    if (s->status == 2 && s->msg) {
      W_LIT(p, ",\"message\":");
      p = w_str(p, s->msg, lm);
    }
    *p++ = '}';
  }
  *p++ = '}';
  b->n = (size_t)(p - b->p);
  b->p[b->n] = '\0';
}

/* The request's own text (resource, scope): appends with a check each, as
 * it is written once a batch. */
#define B_LIT(b, lit) b_put((b), (lit), sizeof(lit) - 1)

static void b_str(buf_t *b, const char *s) {
  size_t len = strlen(s);
  if (b_reserve(b, 6 * len + 2) != 0) return;
  char *p = w_str(b->p + b->n, s, len);
  b->n = (size_t)(p - b->p);
  b->p[b->n] = '\0';
}

#define a_str(b, first, key, v)                                  \
  do {                                                           \
    if (*(first)) B_LIT(b, "{\"key\":\"" key "\",\"value\":{"); \
    else B_LIT(b, ",{\"key\":\"" key "\",\"value\":{");          \
    *(first) = 0;                                                \
    B_LIT(b, "\"stringValue\":");                                \
    b_str(b, v);                                                 \
    B_LIT(b, "}}");                                              \
  } while (0)

static void request_json(buf_t *b, const char *service, const apex__span_t *spans, size_t max,
                         const apex__span_t **rest) {
  b_puts(b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
  int first = 1;
  a_str(b, &first, "service.name", service);
  a_str(b, &first, "telemetry.sdk.name", "apex");
  a_str(b, &first, "telemetry.sdk.language", "cpp"); /* the closest value the convention lists for C */
  a_str(b, &first, "telemetry.sdk.version", APEX_VERSION_STRING);
  b_puts(b, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"apex\",\"version\":");
  b_str(b, APEX_VERSION_STRING);
  b_puts(b, "},\"spans\":[");
  size_t k = 0;
  time_cache_t tc = {.e = {{.high = UINT64_MAX}, {.high = UINT64_MAX}}};
  const apex__span_t *s = spans;
  for (; s && k < max; s = s->next, k++) {
    if (k) b_puts(b, ",");
    span_json(b, &tc, s);
    if (s->att0_done) {
      b_puts(b, ",");
      span_json(b, &tc, s + 1);
    }
  }
  b_puts(b, "]}]}]}");
  b_put(b, "", 1); /* a NUL after the text, not counted */
  if (!b->oom) b->n--;
  if (rest) *rest = s;
}

char *apex__otlp_json(const apex__span_t *spans, size_t *len) {
  buf_t b = {0};
  request_json(&b, "apex", spans, SIZE_MAX, NULL);
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  if (len) *len = b.n;
  return b.p;
}

/* ------------------------------------------------------------ the thread */

static size_t discard(char *p, size_t size, size_t n, void *user) {
  (void)p;
  (void)user;
  return size * n;
}

static void warn_once(apex__exporter_t *ex, int kind, const char *fmt, const char *what) {
  if (ex->warned & kind) return;
  ex->warned |= kind;
  apex__log(ex->log, APEX_LOG_WARN, fmt, what);
}

/* Sends one request; returns 1 if the collector took it. */
static int post(apex__exporter_t *ex, const buf_t *b, int last) {
  curl_easy_setopt(ex->curl, CURLOPT_POSTFIELDS, b->p);
  curl_easy_setopt(ex->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)b->n);
  curl_easy_setopt(ex->curl, CURLOPT_TIMEOUT_MS, last ? 1000L : 3000L);
  CURLcode rc = curl_easy_perform(ex->curl);
  long status = 0;
  if (rc == CURLE_OK) curl_easy_getinfo(ex->curl, CURLINFO_RESPONSE_CODE, &status);
  if (rc == CURLE_OK && status >= 200 && status < 300) return 1;
  char what[200];
  if (rc != CURLE_OK)
    snprintf(what, sizeof what, "%s: %s", ex->url, curl_easy_strerror(rc));
  else
    snprintf(what, sizeof what, "%s: HTTP status %ld", ex->url, status);
  warn_once(ex, 1, "traces: the collector refused a batch (%s); its spans are dropped, counted",
            what);
  return 0;
}

/* The spans of list up to rest, written: attempt spans freed, pairs
 * cleared and given back in bundles (returned), past POOL_MAX freed.
 * Returns: rest. The exporter thread's. */
static apex__span_t *give_back(apex__exporter_t *ex, apex__span_t *list, const apex__span_t *rest) {
  apex__span_t *bundles = NULL, *last_bundle = NULL, *cur = NULL;
  unsigned room = POOL_MAX - atomic_load_explicit(&ex->pooled, memory_order_relaxed);
  if (room > POOL_MAX) room = 0; /* pooled went past POOL_MAX (a race of counts) */
  unsigned kept = 0;
  while (list != rest) {
    apex__span_t *s = list;
    list = s->next;
    if (s->is_attempt || kept >= room) {
      apex__span_free(s);
      continue;
    }
    apex__span_clear(s);
    kept++;
    if (!cur || cur->attempt == POOL_BUNDLE) { /* a new bundle, s its head */
      s->att = bundles;
      if (!bundles) last_bundle = s;
      bundles = cur = s;
      s->attempt = 1;
    } else { /* s goes in after cur's head */
      s->next = cur->next;
      cur->next = s;
      cur->attempt++;
    }
  }
  if (bundles) {
    atomic_fetch_add_explicit(&ex->pooled, kept, memory_order_relaxed);
    apex__span_t *old = atomic_load_explicit(&ex->returned, memory_order_relaxed);
    do {
      last_bundle->att = old;
    } while (!atomic_compare_exchange_weak_explicit(&ex->returned, &old, bundles,
                                                    memory_order_release, memory_order_relaxed));
  }
  return list;
}

static void export_list(apex__exporter_t *ex, apex__span_t *list, int last) {
  buf_t b = ex->out;
  int collector_down = 0; /* at shutdown, one failure is enough */
  while (list) {
    const apex__span_t *rest;
    size_t k = 0, spans = 0; /* nodes, and the spans they hold */
    for (const apex__span_t *s = list; s && k < APEX__EXPORT_BATCH; s = s->next, k++)
      spans += 1u + s->att0_done;
    b.n = 0;
    b.oom = 0;
    request_json(&b, ex->service, list, APEX__EXPORT_BATCH, &rest);
    int ok = !b.oom;
    if (ok && ex->file) {
      b_puts(&b, "\n");
      if (b.oom || fwrite(b.p, 1, b.n, ex->file) != b.n || fflush(ex->file) != 0) {
        ok = 0;
        atomic_fetch_add(&ex->errors, 1);
        warn_once(ex, 2, "traces: cannot write the trace file (%s); spans dropped, counted",
                  strerror(errno));
      }
      if (!b.oom) b.p[--b.n] = '\0';
    }
    if (ok && ex->curl) {
      if (collector_down || !post(ex, &b, last)) {
        ok = ex->file != NULL; /* written to the file all the same */
        if (!collector_down) atomic_fetch_add(&ex->errors, 1);
        if (!ex->file) atomic_fetch_add(&ex->dropped, spans);
        collector_down = last;
      }
    } else if (!ok) {
      atomic_fetch_add(&ex->dropped, spans);
    }
    if (ok) atomic_fetch_add(&ex->exported, spans);
    list = give_back(ex, list, rest);
  }
  if (b.oom) { /* a smaller batch may fit next time */
    free(b.p);
    b = (buf_t){0};
  }
  ex->out = b;
}

apex__span_t *apex__export_pairs(apex__exporter_t *ex) {
  if (!atomic_load_explicit(&ex->pooled, memory_order_relaxed)) return NULL;
  pthread_mutex_lock(&ex->pool_mu);
  if (!ex->ready) /* taking the whole stack: no ABA, whatever was pushed meanwhile */
    ex->ready = atomic_exchange_explicit(&ex->returned, NULL, memory_order_acquire);
  apex__span_t *b = ex->ready;
  if (b) ex->ready = b->att;
  pthread_mutex_unlock(&ex->pool_mu);
  if (!b) return NULL;
  atomic_fetch_sub_explicit(&ex->pooled, b->attempt, memory_order_relaxed);
  b->att = NULL;
  b->attempt = 0;
  return b;
}

/* Reverses a list (by next) onto onto. Returns: the new head; *k counts
 * its spans (a pair's two). */
static apex__span_t *reverse_onto(apex__span_t *s, apex__span_t *onto, unsigned *k) {
  while (s) {
    apex__span_t *next = s->next;
    s->next = onto;
    onto = s;
    *k += 1u + s->att0_done;
    s = next;
  }
  return onto;
}

/* Takes every waiting span: the queue's and the lanes' groups, each
 * oldest first. */
static apex__span_t *take_all(apex__exporter_t *ex) {
  apex__span_t *out = NULL;
  unsigned k = 0, lanes = 0;
  for (unsigned i = APEX__EXPORT_LANES; i-- > 0;) {
    if (!atomic_load_explicit(&ex->lane[i].top, memory_order_relaxed)) continue;
    apex__span_t *g = atomic_exchange_explicit(&ex->lane[i].top, NULL, memory_order_acquire);
    /* reversed onto the front: each group oldest first */
    apex__span_t *rev = reverse_onto(g, NULL, &lanes);
    if (rev) {
      apex__span_t *tail = rev;
      while (tail->next) tail = tail->next;
      tail->next = out;
      out = rev;
    }
  }
  apex__span_t *q = atomic_exchange_explicit(&ex->head, NULL, memory_order_acquire);
  apex__span_t *rev = reverse_onto(q, NULL, &k);
  if (k) atomic_fetch_sub_explicit(&ex->n, k, memory_order_relaxed);
  if (!rev) return out;
  apex__span_t *tail = rev;
  while (tail->next) tail = tail->next;
  tail->next = out;
  return rev;
}

static void *export_main(void *arg) {
  apex__exporter_t *ex = arg;
  /* Telemetry yields to the work it describes: when the workers keep every
   * core busy, this thread (nice 10: about a tenth of a busy core's share)
   * falls behind, its queue fills and spans are dropped (counted), rather
   * than tasks slowed. Lowering one's own priority needs no privilege; if
   * it fails, the thread runs as is. */
  if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10) != 0) {
    /* nothing to do: the exporter still works, at the default priority */
  }
  pthread_mutex_lock(&ex->mu);
  for (;;) {
    if (!ex->stop && !atomic_load_explicit(&ex->kick, memory_order_relaxed)) {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      ts.tv_nsec += 200000000L;
      if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
      }
      pthread_cond_timedwait(&ex->cv, &ex->mu, &ts);
    }
    int stop = ex->stop;
    atomic_store_explicit(&ex->kick, 0, memory_order_relaxed);
    pthread_mutex_unlock(&ex->mu);
    apex__span_t *list = take_all(ex);
    if (list) export_list(ex, list, stop);
    pthread_mutex_lock(&ex->mu);
    if (stop) break;
  }
  pthread_mutex_unlock(&ex->mu);
  return NULL;
}

/* A lane's group (a list by next, newest first) joins the queue, unless
 * the queue is full. Returns: NULL, or the group, dropped and counted. */
static apex__span_t *queue_group(apex__exporter_t *ex, apex__span_t *g) {
  unsigned k = 1u + g->att0_done; /* spans, a pair's two counted */
  apex__span_t *tail = g;
  for (; tail->next; tail = tail->next) k += 1u + tail->next->att0_done;
  /* Full: read before the add, so a full queue costs its pushers no
   * write of the shared line. */
  unsigned n = atomic_load_explicit(&ex->n, memory_order_relaxed);
  if (n + k <= APEX__EXPORT_QUEUE_MAX) {
    n = atomic_fetch_add_explicit(&ex->n, k, memory_order_relaxed);
    if (n + k > APEX__EXPORT_QUEUE_MAX) atomic_fetch_sub_explicit(&ex->n, k, memory_order_relaxed);
  }
  if (n + k > APEX__EXPORT_QUEUE_MAX) {
    atomic_fetch_add_explicit(&ex->dropped, k, memory_order_relaxed);
    return g;
  }
  apex__span_t *old = atomic_load_explicit(&ex->head, memory_order_relaxed);
  do {
    tail->next = old;
  } while (!atomic_compare_exchange_weak_explicit(&ex->head, &old, g, memory_order_release,
                                                  memory_order_relaxed));
  if (n < APEX__EXPORT_BATCH && n + k >= APEX__EXPORT_BATCH) {
    /* A batch is ready: no need to wait for the tick. Signalled without
     * mu: the exporter runs at a low priority and may be preempted holding
     * it, and a worker must never wait for it. A signal that falls between
     * its check of kick and its wait is lost; the 200 ms tick covers it. */
    atomic_store_explicit(&ex->kick, 1, memory_order_relaxed);
    pthread_cond_signal(&ex->cv);
  }
  return NULL;
}

apex__span_t *apex__export_push(apex__exporter_t *ex, unsigned lane, apex__span_t *s) {
  if (lane >= APEX__EXPORT_LANES) { /* a thread without a slot: a group of one */
    s->next = NULL;
    return queue_group(ex, s);
  }
  lane_t *l = &ex->lane[lane];
  apex__span_t *last = l->last;
  s->next = last;
  /* Only this lane's thread adds to top, so top is last, or NULL when the
   * exporter took the group: pointers compared, never followed. (A slot's
   * next thread, after its last one exited, finds the same.) */
  if (!atomic_compare_exchange_strong_explicit(&l->top, &last, s, memory_order_release,
                                               memory_order_relaxed)) {
    s->next = NULL;
    l->n = 0;
    atomic_store_explicit(&l->top, s, memory_order_release);
  }
  l->last = s;
  if (++l->n < APEX__EXPORT_GROUP) return NULL;
  l->last = NULL;
  l->n = 0;
  apex__span_t *g = atomic_exchange_explicit(&l->top, NULL, memory_order_acquire);
  return g ? queue_group(ex, g) : NULL;
}

/* ENDPOINT/v1/traces, unless the endpoint names the path already (as
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT does). */
static char *traces_url(const char *endpoint) {
  size_t n = strlen(endpoint);
  while (n && endpoint[n - 1] == '/') n--;
  const char *tail = "/v1/traces";
  if (n >= strlen(tail) && !strncmp(endpoint + n - strlen(tail), tail, strlen(tail)))
    tail = "";
  char *u = malloc(n + strlen(tail) + 1);
  if (!u) return NULL;
  memcpy(u, endpoint, n);
  strcpy(u + n, tail);
  return u;
}

static void free_bundles(apex__span_t *b) {
  while (b) {
    apex__span_t *next_bundle = b->att;
    for (apex__span_t *s = b, *next; s; s = next) {
      next = s->next;
      free(s); /* cleared: owns nothing */
    }
    b = next_bundle;
  }
}

static void ex_free(apex__exporter_t *ex) {
  free_bundles(ex->ready);
  free_bundles(atomic_load(&ex->returned));
  pthread_mutex_destroy(&ex->pool_mu);
  free(ex->out.p);
  if (ex->file) fclose(ex->file);
  if (ex->curl) curl_easy_cleanup(ex->curl);
  curl_slist_free_all(ex->hdrs);
  free(ex->url);
  pthread_mutex_destroy(&ex->mu);
  pthread_cond_destroy(&ex->cv);
  free(ex);
}

int apex__export_start(const char *file, const char *endpoint, const apex__logger_t *log,
                       apex__exporter_t **out, char *why, size_t n) {
  void *mem = NULL; /* its lanes are a cache line each */
  if (posix_memalign(&mem, 64, sizeof(apex__exporter_t)) != 0) return APEX_E_NOMEM;
  apex__exporter_t *ex = memset(mem, 0, sizeof *ex);
  ex->log = log;
  const char *svc = getenv("OTEL_SERVICE_NAME");
  snprintf(ex->service, sizeof ex->service, "%s", svc && *svc ? svc : "apex");
  apex__utf8_scrub(ex->service);
  pthread_mutex_init(&ex->mu, NULL);
  pthread_mutex_init(&ex->pool_mu, NULL);
  pthread_condattr_t ca;
  if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
      pthread_cond_init(&ex->cv, &ca) != 0) {
    snprintf(why, n, "cannot make a condition variable");
    pthread_mutex_destroy(&ex->mu);
    pthread_mutex_destroy(&ex->pool_mu);
    free(ex);
    return APEX_E_IO;
  }
  pthread_condattr_destroy(&ca);
  int rc = APEX_OK;
  if (file && !(ex->file = fopen(file, "ae"))) {
    snprintf(why, n, "cannot open %s: %s", file, strerror(errno));
    rc = APEX_E_IO;
  }
  if (rc == APEX_OK && endpoint) {
    ex->url = traces_url(endpoint);
    ex->curl = ex->url ? curl_easy_init() : NULL;
    ex->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    if (!ex->url || !ex->curl || !ex->hdrs) {
      snprintf(why, n, "cannot prepare the OTLP/HTTP exporter (out of memory)");
      rc = APEX_E_NOMEM;
    } else {
      curl_easy_setopt(ex->curl, CURLOPT_URL, ex->url);
      curl_easy_setopt(ex->curl, CURLOPT_HTTPHEADER, ex->hdrs);
      curl_easy_setopt(ex->curl, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
      curl_easy_setopt(ex->curl, CURLOPT_NOSIGNAL, 1L); /* a thread of ours: no SIGALRM */
      curl_easy_setopt(ex->curl, CURLOPT_WRITEFUNCTION, discard);
      curl_easy_setopt(ex->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    }
  }
  if (rc == APEX_OK && pthread_create(&ex->th, NULL, export_main, ex) != 0) {
    snprintf(why, n, "cannot start the exporter thread");
    rc = APEX_E_IO;
  }
  if (rc != APEX_OK) {
    ex_free(ex);
    return rc;
  }
  *out = ex;
  return APEX_OK;
}

void apex__export_stop(apex__exporter_t *ex) {
  if (!ex) return;
  pthread_mutex_lock(&ex->mu);
  ex->stop = 1;
  pthread_cond_signal(&ex->cv);
  pthread_mutex_unlock(&ex->mu);
  pthread_join(ex->th, NULL);
  apex__span_t *left = take_all(ex); /* pushed after the last take: none expected */
  if (left) export_list(ex, left, 1);
  ex_free(ex);
}

void apex__export_stats(apex__exporter_t *ex, apex_trace_stats_t *st) {
  st->spans_exported += atomic_load(&ex->exported);
  st->spans_dropped += atomic_load(&ex->dropped);
  st->export_errors += atomic_load(&ex->errors);
}
