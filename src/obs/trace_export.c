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
 * Never blocks a worker: a push is a lock-free stack push and a count; past
 * APEX__EXPORT_QUEUE_MAX spans waiting, a span is dropped and counted. The
 * thread wakes every 200 ms, or when a batch's worth is waiting, takes the
 * whole stack and exports it in batches of at most APEX__EXPORT_BATCH. A
 * collector that refuses, hangs or is down costs the exporter thread its
 * timeouts (connect 1 s, request 3 s; 1 s at shutdown) and the batch,
 * counted as dropped; tasks never wait for it.
 *
 * Locks: mu (with cv) only for the thread to sleep on and for stop; no
 * task path takes it (a push signals cv without it). */
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

#include "apex/version.h"
#include "core/strbuf.h"
#include "core/utf8.h"
#include "obs/trace.h"

#define APEX__EXPORT_QUEUE_MAX 8192u
#define APEX__EXPORT_BATCH 512u

typedef apex__strbuf_t buf_t;

struct apex__exporter {
  _Atomic(apex__span_t *) head; /* pushed, newest first */
  atomic_uint n;                /* spans waiting */
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

/* ------------------------------------------------------------- OTLP JSON */


static inline void b_put(buf_t *b, const char *s, size_t len) { apex__strbuf_put(b, s, len); }
static void b_puts(buf_t *b, const char *s) { b_put(b, s, strlen(s)); }
static void b_printf(buf_t *b, const char *fmt, ...) APEX_PRINTF(2, 3);
static void b_printf(buf_t *b, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (k > 0) b_put(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* A JSON string: escapes, and U+FFFD for each byte of invalid UTF-8 (an
 * error message is a plugin's text). */
static void b_str(buf_t *b, const char *s) {
  b_puts(b, "\"");
  size_t len = strlen(s), i = 0;
  while (i < len) {
    size_t good = apex__utf8_bad_at(s + i, len - i);
    size_t run = i;
    for (size_t j = i; j < i + good; j++) {
      unsigned char c = (unsigned char)s[j];
      if (c == '"' || c == '\\' || c < 0x20 || c == 0x7f) {
        b_put(b, s + run, j - run);
        if (c == '"') b_puts(b, "\\\"");
        else if (c == '\\') b_puts(b, "\\\\");
        else if (c == '\n') b_puts(b, "\\n");
        else b_printf(b, "\\u%04x", c);
        run = j + 1;
      }
    }
    b_put(b, s + run, i + good - run);
    i += good;
    if (i < len) {
      b_puts(b, "\\ufffd");
      i++;
    }
  }
  b_puts(b, "\"");
}

static void b_hex(buf_t *b, const uint8_t *id, size_t n) {
  static const char d[] = "0123456789abcdef";
  char out[40];
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = d[id[i] >> 4];
    out[2 * i + 1] = d[id[i] & 15];
  }
  b_puts(b, "\"");
  b_put(b, out, 2 * n);
  b_puts(b, "\"");
}

/* A string literal, its length known at compile time. */
#define B_LIT(b, lit) b_put((b), (lit), sizeof(lit) - 1)

/* v in decimal, without snprintf: this runs a few times per span. */
static void b_u64(buf_t *b, uint64_t v) {
  char tmp[24], *p = tmp + sizeof tmp;
  do {
    *--p = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  b_put(b, p, (size_t)(tmp + sizeof tmp - p));
}

/* Attribute writers: *first says whether a comma is due; keys are string
 * literals. a_name takes text known to need no escaping (plugin and action
 * names, checked at load as [a-z0-9_]; Apex's own state and status names);
 * a_str escapes (a plugin's messages). */
#define A_KEY(b, first, key)                                     \
  do {                                                           \
    if (*(first)) B_LIT(b, "{\"key\":\"" key "\",\"value\":{"); \
    else B_LIT(b, ",{\"key\":\"" key "\",\"value\":{");          \
    *(first) = 0;                                                \
  } while (0)
#define a_name(b, first, key, v)   \
  do {                             \
    A_KEY(b, first, key);          \
    B_LIT(b, "\"stringValue\":\""); \
    b_puts(b, v);                  \
    B_LIT(b, "\"}}");              \
  } while (0)
#define a_str(b, first, key, v)    \
  do {                             \
    A_KEY(b, first, key);          \
    B_LIT(b, "\"stringValue\":");  \
    b_str(b, v);                   \
    B_LIT(b, "}}");                \
  } while (0)
#define a_int(b, first, key, v)    \
  do {                             \
    A_KEY(b, first, key);          \
    B_LIT(b, "\"intValue\":\"");   \
    b_u64(b, (uint64_t)(v));       \
    B_LIT(b, "\"}}");              \
  } while (0)
#define a_dbl(b, first, key, v)                 \
  do {                                          \
    A_KEY(b, first, key);                       \
    b_printf(b, "\"doubleValue\":%.17g}}", (v)); \
  } while (0)

static const char *state_name(int s) { return apex_task_state_name((apex_task_state_t)s); }

static void span_json(buf_t *b, const apex__span_t *s) {
  B_LIT(b, "{\"traceId\":");
  b_hex(b, s->trace_id, 16);
  B_LIT(b, ",\"spanId\":");
  b_hex(b, s->span_id, 8);
  if (s->has_parent) {
    B_LIT(b, ",\"parentSpanId\":");
    b_hex(b, s->parent_id, 8);
  }
  if (s->tracestate) {
    B_LIT(b, ",\"traceState\":");
    b_str(b, s->tracestate);
  }
  B_LIT(b, ",\"name\":\"");
  b_puts(b, s->plugin);
  B_LIT(b, ".");
  b_puts(b, s->action);
  if (s->is_attempt) B_LIT(b, " attempt");
  B_LIT(b, "\",\"kind\":1,\"startTimeUnixNano\":\"");
  b_u64(b, s->start_ns);
  B_LIT(b, "\",\"endTimeUnixNano\":\"");
  b_u64(b, s->end_ns);
  B_LIT(b, "\",\"attributes\":[");
  int first = 1;
  a_int(b, &first, "apex.task.id", s->task_id);
  a_name(b, &first, "apex.plugin", s->plugin);
  a_name(b, &first, "apex.action", s->action);
  if (s->is_attempt) {
    a_int(b, &first, "apex.attempt", s->attempt);
  } else {
    a_int(b, &first, "apex.attempts", s->attempt);
    a_name(b, &first, "apex.task.state", state_name(s->state));
    if (s->parent_task_id) a_int(b, &first, "apex.parent_task.id", s->parent_task_id);
  }
  /* error.type: OpenTelemetry's attribute for the class of a failure */
  if (s->status == 2) a_name(b, &first, "error.type", apex_status_name(s->code));
  B_LIT(b, "]");
  if (s->n_ev) {
    B_LIT(b, ",\"events\":[");
    for (unsigned i = 0; i < s->n_ev; i++) {
      const apex__span_ev_t *e = &s->ev[i];
      static const char *const names[] = {"", "apex.retry", "apex.timeout", "apex.cancel",
                                          "apex.progress.milestone"};
      if (i) B_LIT(b, ",");
      B_LIT(b, "{\"timeUnixNano\":\"");
      b_u64(b, e->time_ns);
      B_LIT(b, "\",\"name\":\"");
      b_puts(b, names[e->kind <= APEX__SEV_MILESTONE ? e->kind : 0]);
      B_LIT(b, "\",\"attributes\":[");
      int f = 1;
      if (e->attempt) a_int(b, &f, "apex.attempt", e->attempt);
      switch (e->kind) {
        case APEX__SEV_RETRY:
          a_dbl(b, &f, "apex.retry.delay_s", e->num);
          a_name(b, &f, "error.type", apex_status_name(e->code));
          a_str(b, &f, "exception.message", e->text);
          break;
        case APEX__SEV_TIMEOUT: a_str(b, &f, "apex.timeout.kind", e->text); break;
        case APEX__SEV_CANCEL: a_str(b, &f, "apex.cancel.reason", e->text); break;
        case APEX__SEV_MILESTONE:
          a_str(b, &f, "apex.progress.status", e->text);
          a_dbl(b, &f, "apex.progress.percentage", e->num);
          break;
        default: break;
      }
      B_LIT(b, "]}");
    }
    B_LIT(b, "]");
  }
  if (s->ev_dropped) {
    B_LIT(b, ",\"droppedEventsCount\":");
    b_u64(b, s->ev_dropped);
  }
  if (s->status) {
    B_LIT(b, ",\"status\":{\"code\":");
    b_u64(b, (uint64_t)s->status);
    if (s->status == 2 && s->msg) {
      B_LIT(b, ",\"message\":");
      b_str(b, s->msg);
    }
    B_LIT(b, "}");
  }
  B_LIT(b, "}");
}

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
  const apex__span_t *s = spans;
  for (; s && k < max; s = s->next, k++) {
    if (k) b_puts(b, ",");
    span_json(b, s);
    if (s->att0_done) {
      b_puts(b, ",");
      span_json(b, s + 1);
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
    while (list != rest) {
      apex__span_t *next = list->next;
      apex__span_free(list);
      list = next;
    }
  }
  if (b.oom) { /* a smaller batch may fit next time */
    free(b.p);
    b = (buf_t){0};
  }
  ex->out = b;
}

/* Takes every waiting span, oldest first. */
static apex__span_t *take_all(apex__exporter_t *ex) {
  apex__span_t *s = atomic_exchange_explicit(&ex->head, NULL, memory_order_acquire);
  apex__span_t *rev = NULL;
  unsigned k = 0;
  while (s) {
    apex__span_t *next = s->next;
    s->next = rev;
    rev = s;
    s = next;
    k++;
  }
  if (k) atomic_fetch_sub_explicit(&ex->n, k, memory_order_relaxed);
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

void apex__export_push(apex__exporter_t *ex, apex__span_t *s) {
  unsigned n = atomic_fetch_add_explicit(&ex->n, 1, memory_order_relaxed);
  if (n >= APEX__EXPORT_QUEUE_MAX) {
    atomic_fetch_sub_explicit(&ex->n, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ex->dropped, 1u + s->att0_done, memory_order_relaxed);
    apex__span_free(s);
    return;
  }
  apex__span_t *old = atomic_load_explicit(&ex->head, memory_order_relaxed);
  do {
    s->next = old;
  } while (!atomic_compare_exchange_weak_explicit(&ex->head, &old, s, memory_order_release,
                                                  memory_order_relaxed));
  if (n + 1 == APEX__EXPORT_BATCH) {
    /* A batch is ready: no need to wait for the tick. Signalled without
     * mu: the exporter runs at a low priority and may be preempted holding
     * it, and a worker must never wait for it. A signal that falls between
     * its check of kick and its wait is lost; the 200 ms tick covers it. */
    atomic_store_explicit(&ex->kick, 1, memory_order_relaxed);
    pthread_cond_signal(&ex->cv);
  }
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

static void ex_free(apex__exporter_t *ex) {
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
  apex__exporter_t *ex = calloc(1, sizeof *ex);
  if (!ex) return APEX_E_NOMEM;
  ex->log = log;
  const char *svc = getenv("OTEL_SERVICE_NAME");
  snprintf(ex->service, sizeof ex->service, "%s", svc && *svc ? svc : "apex");
  apex__utf8_scrub(ex->service);
  pthread_mutex_init(&ex->mu, NULL);
  pthread_condattr_t ca;
  if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
      pthread_cond_init(&ex->cv, &ca) != 0) {
    snprintf(why, n, "cannot make a condition variable");
    pthread_mutex_destroy(&ex->mu);
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
