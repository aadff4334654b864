/* Apex: structured log records and W3C trace context (docs/observability.md,
 * "Logs" and "Traces"). Included by apex.h; the manager config's log and
 * tracing fields use the types below.
 * Thread-safety: every function declared here is safe from any thread. */
#ifndef APEX_TRACE_H
#define APEX_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "apex/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ logs */

/* One log record, as a host's record sink (apex_manager_config_t.log_record)
 * receives it. Fields that do not apply are 0 / NULL: a manager's own record
 * (a plugin failed to load) has no task. Every string is borrowed for the
 * call only (copy what you keep); message is one line of UTF-8 as written
 * (a plugin's bytes are passed on as they came), without a newline. */
typedef struct apex_log_record {
  uint32_t struct_size;   /* sizeof as the library declares it: read a field
                             appended later only if APEX_HAS_FIELD says so */
  int level;              /* APEX_LOG_ERROR .. APEX_LOG_DEBUG */
  uint64_t time_unix_ns;  /* wall clock when the record was made */
  const char *message;
  uint64_t task_id;       /* 0: none */
  const char *plugin;     /* NULL: none */
  const char *action;     /* NULL: none */
  uint32_t attempt;       /* 0: none (not in an attempt) */
  const char *trace_id;   /* 32 lowercase hex digits; NULL: tracing off */
  const char *span_id;    /* 16 lowercase hex digits (the attempt's span in
                             an attempt, else the task's); NULL: none */
  uint32_t suppressed;    /* > 0: a summary of this many records of the
                             plugin that the rate limit dropped */
  uint32_t origin;        /* who wrote it: APEX_LOG_ORIGIN_APEX (0, the
                             library, even about a task) or
                             APEX_LOG_ORIGIN_PLUGIN (a handler's
                             apex_ctx_log) */
} apex_log_record_t;

/* apex_log_record_t.origin. */
#define APEX_LOG_ORIGIN_APEX 0u
#define APEX_LOG_ORIGIN_PLUGIN 1u

/* A record sink: runs on the thread that logged, with no Apex lock held;
 * must be thread-safe. */
typedef void (*apex_log_record_fn)(const apex_log_record_t *rec, void *user);

/* How the default sink (stderr) renders a record. */
typedef enum apex_log_format {
  APEX_LOG_FORMAT_DEFAULT = 0, /* config: from APEX_LOG_FORMAT, else HUMAN */
  APEX_LOG_FORMAT_HUMAN = 1,   /* "apex: warn: files.copy task 3: message" */
  APEX_LOG_FORMAT_LOGFMT = 2,  /* level=warn time=... msg="..." task_id=3 ... */
  APEX_LOG_FORMAT_JSON = 3     /* one JSON object a line (JSON Lines) */
} apex_log_format_t;

/* Renders rec as one line in format (HUMAN, LOGFMT or JSON; DEFAULT means
 * HUMAN), ending in '\n', NUL-terminated, truncated to fit size (a
 * truncated JSON line is still one valid object: the message is cut).
 * Returns: the length written (without the NUL); 0 if rec or buf is NULL or
 * size < 128. Ownership: all borrowed. */
APEX_EXTERN size_t apex_log_record_render(const apex_log_record_t *rec, int format, char *buf,
                                          size_t size);

/* Returns: the format named by s ("human", "logfmt", "json"; case
 * ignored), or APEX_LOG_FORMAT_DEFAULT for NULL or anything else. */
APEX_EXTERN int apex_log_format_parse(const char *s);

/* ---------------------------------------------------------------- traces */

/* A W3C trace context (https://www.w3.org/TR/trace-context/). */
typedef struct apex_trace_context {
  uint8_t trace_id[16];
  uint8_t span_id[8];   /* the parent span, as the traceparent names it */
  uint8_t flags;        /* bit 0: sampled */
} apex_trace_context_t;

/* A traceparent header is 55 characters: "00-" 32 hex "-" 16 hex "-" 2 hex. */
#define APEX_TRACEPARENT_LEN 55

/* Parses a traceparent header value the way the W3C rules say a receiver
 * must: version 00 exactly 55 characters; a higher version at least 55,
 * its first 55 read as version 00's and the rest ignored if it starts with
 * '-'; version ff, upper-case or non-hex digits, an all-zero trace id or
 * parent id, or any other length are invalid.
 * Returns: APEX_OK and *out; APEX_E_INVALID (out untouched) for NULL or an
 * invalid value. */
APEX_EXTERN apex_status_t apex_traceparent_parse(const char *s, apex_trace_context_t *out);

/* Writes "00-<trace id>-<span id>-<flags>" and a NUL into buf.
 * Returns: APEX_OK; APEX_E_INVALID if an argument is NULL or size < 56. */
APEX_EXTERN apex_status_t apex_traceparent_format(const apex_trace_context_t *tc, char *buf,
                                                  size_t size);

/* Which tasks are recorded (apex_manager_config_t.trace_sampler). Always
 * parent-based: a task submitted with a valid traceparent follows its
 * sampled flag, a child task its parent's decision; the sampler decides
 * only for a task that starts a new trace. */
typedef enum apex_trace_sampler {
  APEX_TRACE_DEFAULT = 0, /* from APEX_TRACE_SAMPLER, else ALWAYS when an
                             exporter is configured; with none, off */
  APEX_TRACE_ALWAYS = 1,
  APEX_TRACE_NEVER = 2,   /* ids still made and propagated, nothing exported */
  APEX_TRACE_RATIO = 3,   /* trace_ratio of new traces, by trace id */
  APEX_TRACE_OFF = 4      /* no trace context at all (one branch per task) */
} apex_trace_sampler_t;

/* What a manager's trace exporter did (apex_manager_trace_stats). */
typedef struct apex_trace_stats {
  uint32_t struct_size;   /* set by the caller: sizeof(apex_trace_stats_t) */
  uint64_t spans_started; /* sampled spans made (tasks and attempts) */
  uint64_t spans_exported;/* handed to the file or accepted by the collector */
  uint64_t spans_dropped; /* the queue was full, or an export failed */
  uint64_t export_errors; /* failed writes or HTTP requests */
} apex_trace_stats_t;

struct apex_manager;
/* Fills *st (up to st->struct_size) with the manager's exporter counts.
 * Returns: APEX_OK; APEX_E_INVALID if m or st is NULL or st->struct_size is
 * 0. Counts are 0 when tracing is off. */
APEX_EXTERN apex_status_t apex_manager_trace_stats(struct apex_manager *m,
                                                   apex_trace_stats_t *st);

#ifdef __cplusplus
}
#endif
#endif /* APEX_TRACE_H */
