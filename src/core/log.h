/* Internal: the logger a manager writes through. Every record carries its
 * fields (level, time, message and, where they apply, task, plugin,
 * action, attempt, trace and span ids); a host's record sink gets them as a
 * struct, its string sink the human line's text, and the default sink
 * (stderr) a line in the format chosen by config or APEX_LOG_FORMAT
 * (src/obs/log.c renders them). Level from config or APEX_LOG=error|warn|
 * info|debug (default warn). */
#ifndef APEX_CORE_LOG_H
#define APEX_CORE_LOG_H

#include <stdarg.h>
#include <stdint.h>

#include "apex/apex.h"

typedef struct apex__logger {
  apex_log_fn fn;             /* the host's string sink, or NULL */
  void *user;
  apex_log_record_fn rec_fn;  /* the host's record sink, or NULL */
  void *rec_user;
  int level;                  /* messages above this level are skipped */
  int format;                 /* the default sink's APEX_LOG_FORMAT_* */
  int rate_limit;             /* a plugin's records per second; < 0: none */
} apex__logger_t;

/* Where a record applies; every field optional (0 / NULL). */
typedef struct apex__log_where {
  uint64_t task_id;
  const char *plugin, *action;
  uint32_t attempt;
  const char *trace_id, *span_id; /* hex, NUL-terminated */
  uint32_t origin;                /* APEX_LOG_ORIGIN_* */
} apex__log_where_t;

/* Fills lg from the config's fields: fn NULL means stderr, level -1 means
 * from the APEX_LOG environment variable (default warn). The older form
 * keeps the defaults for the record fields. */
void apex__logger_init(apex__logger_t *lg, apex_log_fn fn, void *user, int level);
void apex__logger_init_cfg(apex__logger_t *lg, const apex_manager_config_t *cfg);

/* Returns: 1 if a message at level would be written (to skip formatting). */
static inline int apex__log_enabled(const apex__logger_t *lg, int level) { return level <= lg->level; }

/* Formats one message (truncated at 1 KiB) and hands the record to the
 * sink. The sink runs on the calling thread; no Apex lock may be held
 * across this call. w: the record's fields, or NULL for none.
 * Thread-safety: any thread (the sink must be thread-safe). */
void apex__log(const apex__logger_t *lg, int level, const char *fmt, ...) APEX_PRINTF(3, 4);
void apex__logv(const apex__logger_t *lg, int level, const char *fmt, va_list ap);
void apex__log_at(const apex__logger_t *lg, int level, const apex__log_where_t *w,
                  const char *fmt, ...) APEX_PRINTF(4, 5);
/* Hands one record with msg as it is (no formatting) to the sink;
 * suppressed > 0 marks a rate limit's summary. */
void apex__log_emit(const apex__logger_t *lg, int level, const apex__log_where_t *w,
                    const char *msg, uint32_t suppressed);

/* Returns: "error", "warn", "info", "debug" (static). */
const char *apex__log_level_name(int level);

/* A plugin's log rate (src/obs/log.c): records admitted in the current
 * second and those dropped since the last summary. Lock-free; a race at a
 * second's turn may admit a record or two more, never loses a count. */
typedef struct apex__lograte {
  _Atomic uint64_t sec;      /* the second being counted (coarse clock) */
  _Atomic uint32_t n;        /* admitted in it */
  _Atomic uint32_t dropped;  /* dropped and not yet summarized */
} apex__lograte_t;

/* Decides whether one more record of the plugin whose rate this is may be
 * written. Returns: 1 to write it, 0 to drop it (counted); *summary the
 * count to report first in a summary record (0: none). */
int apex__lograte_admit(apex__lograte_t *r, int limit, uint32_t *summary);

/* Returns: what is dropped and not yet summarized, now zero (a plugin's
 * last words at shutdown). */
uint32_t apex__lograte_take(apex__lograte_t *r);

#endif
