/* Internal: the logger a manager writes through (plan: progress is logged at
 * debug level through a pluggable callback; default stderr, level from
 * APEX_LOG=error|warn|info|debug). */
#ifndef APEX_CORE_LOG_H
#define APEX_CORE_LOG_H

#include <stdarg.h>

#include "apex/apex.h"

typedef struct apex__logger {
  apex_log_fn fn; /* never NULL after init */
  void *user;
  int level;      /* messages above this level are skipped */
} apex__logger_t;

/* Fills lg from the config's fields: fn NULL means stderr, level -1 means
 * from the APEX_LOG environment variable (default warn). */
void apex__logger_init(apex__logger_t *lg, apex_log_fn fn, void *user, int level);

/* Returns: 1 if a message at level would be written (to skip formatting). */
static inline int apex__log_enabled(const apex__logger_t *lg, int level) { return level <= lg->level; }

/* Formats one line (truncated at 1 KiB) and hands it to the sink. The sink
 * runs on the calling thread; no Apex lock may be held across this call.
 * Thread-safety: any thread (the sink must be thread-safe). */
void apex__log(const apex__logger_t *lg, int level, const char *fmt, ...) APEX_PRINTF(3, 4);
void apex__logv(const apex__logger_t *lg, int level, const char *fmt, va_list ap);

/* Returns: "error", "warn", "info", "debug" (static). */
const char *apex__log_level_name(int level);

#endif
