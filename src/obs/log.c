/* Log records: what each sink receives and how the default sink renders
 * them (the human line, logfmt, JSON Lines), and the per-plugin rate limit.
 *
 * The formats. HUMAN is the line Apex always wrote: "apex: LEVEL: " and the
 * message, the task's plugin, action and id before it ("files.copy task 3:
 * ..."), so a reader of today's lines sees no change. LOGFMT is key=value
 * pairs (a value with a space, '=', '"' or a control character is quoted,
 * '"' and '\' escaped, control characters as \n, \t or \u00XX). JSON is one
 * object a line (JSON Lines, https://jsonlines.org): "time" (RFC 3339, UTC,
 * microseconds), "level", "msg", then task_id, plugin, action, attempt,
 * trace_id, span_id and suppressed when they apply. Text that is not valid
 * UTF-8 (a plugin's message) gets U+FFFD for each bad byte in JSON and
 * logfmt, so a parser never chokes on a line. Each line is written with one
 * write(2), so lines from several threads do not interleave.
 *
 * The rate limit: a plugin may log rate_limit records a second (a fixed
 * one-second window on the coarse clock); past that its records are
 * dropped and counted, and the next record admitted is preceded by a
 * summary record ("N log records dropped ..."), so nothing is lost
 * silently. Lock-free: atomics on the plugin's own counters. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/utf8.h"

int apex_log_format_parse(const char *s) {
  if (!s) return APEX_LOG_FORMAT_DEFAULT;
  if (strcasecmp(s, "human") == 0 || strcasecmp(s, "text") == 0) return APEX_LOG_FORMAT_HUMAN;
  if (strcasecmp(s, "logfmt") == 0) return APEX_LOG_FORMAT_LOGFMT;
  if (strcasecmp(s, "json") == 0 || strcasecmp(s, "jsonl") == 0) return APEX_LOG_FORMAT_JSON;
  return APEX_LOG_FORMAT_DEFAULT;
}

/* A bounded writer: appends while room is left, remembers that it ran out. */
typedef struct out {
  char *p;
  size_t n, cap; /* cap excludes the room kept for the line's end */
  int full;
} out_t;

static void put(out_t *o, const char *s, size_t len) {
  if (o->n >= o->cap) {
    o->full = 1;
    return;
  }
  if (len > o->cap - o->n) {
    len = o->cap - o->n;
    o->full = 1;
  }
  memcpy(o->p + o->n, s, len);
  o->n += len;
}
static void puts_(out_t *o, const char *s) { put(o, s, strlen(s)); }
static void putf(out_t *o, const char *fmt, ...) APEX_PRINTF(2, 3);
static void putf(out_t *o, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (k > 0) put(o, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* s escaped for a JSON string or a quoted logfmt value (the same rules:
 * '"', '\', control characters, bad UTF-8 as U+FFFD). Stops before a
 * sequence that would not fit whole, so a cut never splits an escape. */
static void put_escaped(out_t *o, const char *s) {
  size_t len = strlen(s), i = 0;
  if (o->n >= o->cap) o->full = 1;
  while (i < len && !o->full) {
    size_t good = apex__utf8_bad_at(s + i, len - i);
    size_t j = 0;
    while (j < good) {
      unsigned char c = (unsigned char)s[i + j];
      char esc[8];
      const char *e = NULL;
      if (c == '"') e = "\\\"";
      else if (c == '\\') e = "\\\\";
      else if (c == '\n') e = "\\n";
      else if (c == '\r') e = "\\r";
      else if (c == '\t') e = "\\t";
      else if (c < 0x20 || c == 0x7f) {
        snprintf(esc, sizeof esc, "\\u%04x", c);
        e = esc;
      }
      if (e) {
        if (strlen(e) > o->cap - o->n) { o->full = 1; return; }
        puts_(o, e);
        j++;
        continue;
      }
      /* a run of plain bytes; never cut inside a UTF-8 sequence */
      size_t k = j;
      while (k < good) {
        unsigned char d = (unsigned char)s[i + k];
        if (d == '"' || d == '\\' || d < 0x20 || d == 0x7f) break;
        k++;
      }
      size_t room = o->cap - o->n;
      if (k - j > room) {
        size_t cut = j + room;
        while (cut > j && ((unsigned char)s[i + cut] & 0xC0) == 0x80) cut--;
        put(o, s + i + j, cut - j);
        o->full = 1;
        return;
      }
      put(o, s + i + j, k - j);
      j = k;
    }
    i += good;
    if (i < len) { /* one bad byte */
      if (3 > o->cap - o->n) { o->full = 1; return; }
      put(o, "\xEF\xBF\xBD", 3);
      i++;
    }
  }
}

/* A logfmt value needs quotes when empty or holding a space, '=', '"' or a
 * byte below 0x21. */
static int needs_quotes(const char *s) {
  if (!*s) return 1;
  for (; *s; s++)
    if ((unsigned char)*s <= ' ' || *s == '=' || *s == '"' || *s == 0x7f) return 1;
  return 0;
}

static void put_time(out_t *o, uint64_t ns) {
  time_t sec = (time_t)(ns / 1000000000u);
  struct tm tm;
  if (!gmtime_r(&sec, &tm)) return;
  char b[40];
  size_t k = strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%S", &tm);
  put(o, b, k);
  putf(o, ".%06uZ", (unsigned)(ns % 1000000000u / 1000u));
}

static size_t render_human(const apex_log_record_t *r, out_t *o, int prefix) {
  if (prefix) {
    puts_(o, "apex: ");
    puts_(o, apex__log_level_name(r->level));
    puts_(o, ": ");
  }
  if (r->plugin && r->action) {
    putf(o, "%.64s.%.64s ", r->plugin, r->action);
  } else if (r->plugin) {
    putf(o, "%.64s: ", r->plugin);
  }
  if (r->task_id) putf(o, "task %llu: ", (unsigned long long)r->task_id);
  puts_(o, r->message ? r->message : "");
  return o->n;
}

/* The message, escaped, cut so that `reserve` bytes stay for the fields
 * after it: the message is what gets cut, never a field. */
static void put_message(out_t *o, const char *msg, size_t reserve) {
  size_t keep = o->cap;
  o->cap = o->cap > o->n + reserve ? o->cap - reserve : o->n;
  put_escaped(o, msg ? msg : "");
  o->cap = keep;
  o->full = 0;
}

static size_t render_logfmt(const apex_log_record_t *r, out_t *o) {
  puts_(o, "time=");
  put_time(o, r->time_unix_ns);
  puts_(o, " level=");
  puts_(o, apex__log_level_name(r->level));
  puts_(o, " msg=\"");
  put_message(o, r->message, 200);
  puts_(o, "\"");
  if (r->task_id) putf(o, " task_id=%llu", (unsigned long long)r->task_id);
  const char *names[4] = {"plugin", "action", "trace_id", "span_id"};
  const char *vals[4] = {r->plugin, r->action, r->trace_id, r->span_id};
  for (int i = 0; i < 4; i++) {
    if (i == 2 && r->attempt) putf(o, " attempt=%u", r->attempt);
    if (!vals[i]) continue;
    putf(o, " %s=", names[i]);
    if (needs_quotes(vals[i])) {
      puts_(o, "\"");
      put_escaped(o, vals[i]);
      puts_(o, "\"");
    } else {
      put_escaped(o, vals[i]);
    }
  }
  if (r->suppressed) putf(o, " suppressed=%u", r->suppressed);
  if (r->origin == APEX_LOG_ORIGIN_PLUGIN) puts_(o, " origin=plugin");
  return o->n;
}

static size_t render_json(const apex_log_record_t *r, out_t *o) {
  puts_(o, "{\"time\":\"");
  put_time(o, r->time_unix_ns);
  puts_(o, "\",\"level\":\"");
  puts_(o, apex__log_level_name(r->level));
  puts_(o, "\",\"msg\":\"");
  put_message(o, r->message, 260); /* the fields and '}' */
  puts_(o, "\"");
  if (r->task_id) putf(o, ",\"task_id\":%llu", (unsigned long long)r->task_id);
  const char *names[4] = {"plugin", "action", "trace_id", "span_id"};
  const char *vals[4] = {r->plugin, r->action, r->trace_id, r->span_id};
  for (int i = 0; i < 4; i++) {
    if (i == 2 && r->attempt) putf(o, ",\"attempt\":%u", r->attempt);
    if (!vals[i]) continue;
    putf(o, ",\"%s\":\"", names[i]);
    put_escaped(o, vals[i]);
    puts_(o, "\"");
  }
  if (r->suppressed) putf(o, ",\"suppressed\":%u", r->suppressed);
  if (r->origin == APEX_LOG_ORIGIN_PLUGIN) puts_(o, ",\"origin\":\"plugin\"");
  puts_(o, "}");
  return o->n;
}

size_t apex_log_record_render(const apex_log_record_t *rec, int format, char *buf, size_t size) {
  if (!rec || !buf || size < 128) return 0;
  out_t o = {buf, 0, size - 2, 0}; /* room for "\n\0" */
  switch (format) {
    case APEX_LOG_FORMAT_LOGFMT: render_logfmt(rec, &o); break;
    case APEX_LOG_FORMAT_JSON: render_json(rec, &o); break;
    default: render_human(rec, &o, 1); break;
  }
  if (format == APEX_LOG_FORMAT_JSON && o.full) {
    /* the fields always fit (see the room kept above); this only guards a
     * line whose plugin name broke that estimate: end the object anyway */
    o.n = o.n > o.cap - 1 ? o.cap - 1 : o.n;
    buf[o.n++] = '}';
  }
  buf[o.n++] = '\n';
  buf[o.n] = '\0';
  return o.n;
}

static uint64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void apex__log_emit(const apex__logger_t *lg, int level, const apex__log_where_t *w,
                    const char *msg, uint32_t suppressed) {
  static const apex__log_where_t none = {0};
  if (!w) w = &none;
  apex_log_record_t rec = {
      .struct_size = sizeof rec,
      .level = level,
      .time_unix_ns = wall_ns(),
      .message = msg,
      .task_id = w->task_id,
      .plugin = w->plugin,
      .action = w->action,
      .attempt = w->attempt,
      .trace_id = w->trace_id,
      .span_id = w->span_id,
      .suppressed = suppressed,
      .origin = w->origin,
  };
  if (lg->rec_fn) {
    lg->rec_fn(&rec, lg->rec_user);
    return;
  }
  char line[1400];
  if (lg->fn) { /* the string sink gets the human line's text, as always */
    out_t o = {line, 0, sizeof line - 1, 0};
    render_human(&rec, &o, 0);
    line[o.n] = '\0';
    lg->fn(level, line, lg->user);
    return;
  }
  size_t n = apex_log_record_render(&rec, lg->format, line, sizeof line);
  ssize_t wr = write(STDERR_FILENO, line, n);
  (void)wr; /* nowhere left to report a failed write to stderr */
}

static uint64_t coarse_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec;
}

int apex__lograte_admit(apex__lograte_t *r, int limit, uint32_t *summary) {
  *summary = 0;
  if (limit < 0) return 1;
  uint64_t now = coarse_sec();
  uint64_t cur = atomic_load_explicit(&r->sec, memory_order_relaxed);
  if (cur != now &&
      atomic_compare_exchange_strong_explicit(&r->sec, &cur, now, memory_order_relaxed,
                                              memory_order_relaxed))
    atomic_store_explicit(&r->n, 0, memory_order_relaxed); /* a new window */
  if (atomic_fetch_add_explicit(&r->n, 1, memory_order_relaxed) >= (uint32_t)limit) {
    atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
    return 0;
  }
  *summary = atomic_exchange_explicit(&r->dropped, 0, memory_order_relaxed);
  return 1;
}

uint32_t apex__lograte_take(apex__lograte_t *r) {
  return atomic_exchange_explicit(&r->dropped, 0, memory_order_relaxed);
}
