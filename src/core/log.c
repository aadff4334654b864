/* The logger's front: level and sink selection from the config and the
 * environment, message formatting, and handing each record to the sink the
 * host chose. Rendering and rate limiting live in src/obs/log.c. No state
 * but the logger itself (immutable after init, read by any thread). */
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const level_names[] = {"error", "warn", "info", "debug"};

const char *apex__log_level_name(int level) {
  if (level < APEX_LOG_ERROR || level > APEX_LOG_DEBUG) return "log";
  return level_names[level];
}

static int level_from_env(void) {
  const char *s = getenv("APEX_LOG");
  if (!s || !*s) return APEX_LOG_WARN;
  for (int i = APEX_LOG_ERROR; i <= APEX_LOG_DEBUG; i++)
    if (strcasecmp(s, level_names[i]) == 0) return i;
  if (strcasecmp(s, "warning") == 0) return APEX_LOG_WARN;
  if (strcasecmp(s, "off") == 0 || strcasecmp(s, "none") == 0) return -1;
  return APEX_LOG_WARN;
}

void apex__logger_init(apex__logger_t *lg, apex_log_fn fn, void *user, int level) {
  memset(lg, 0, sizeof *lg);
  lg->fn = fn;
  lg->user = fn ? user : NULL;
  lg->level = level < 0 ? level_from_env() : level;
  int f = apex_log_format_parse(getenv("APEX_LOG_FORMAT"));
  lg->format = f ? f : APEX_LOG_FORMAT_HUMAN;
  lg->rate_limit = 200;
}

void apex__logger_init_cfg(apex__logger_t *lg, const apex_manager_config_t *cfg) {
  apex__logger_init(lg, cfg->log, cfg->log_user, cfg->log_level);
  lg->rec_fn = cfg->log_record;
  lg->rec_user = cfg->log_record ? cfg->log_record_user : NULL;
  if (cfg->log_format >= APEX_LOG_FORMAT_HUMAN && cfg->log_format <= APEX_LOG_FORMAT_JSON)
    lg->format = cfg->log_format;
  lg->rate_limit = cfg->log_rate_limit == 0 ? 200 : cfg->log_rate_limit < 0 ? -1 : cfg->log_rate_limit;
}

static void logv_at(const apex__logger_t *lg, int level, const apex__log_where_t *w,
                    const char *fmt, va_list ap) {
  if (!apex__log_enabled(lg, level)) return;
  char msg[1024];
  if (vsnprintf(msg, sizeof msg, fmt, ap) < 0) return;
  apex__log_emit(lg, level, w, msg, 0);
}

void apex__logv(const apex__logger_t *lg, int level, const char *fmt, va_list ap) {
  logv_at(lg, level, NULL, fmt, ap);
}

void apex__log(const apex__logger_t *lg, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  logv_at(lg, level, NULL, fmt, ap);
  va_end(ap);
}

void apex__log_at(const apex__logger_t *lg, int level, const apex__log_where_t *w,
                  const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  logv_at(lg, level, w, fmt, ap);
  va_end(ap);
}
