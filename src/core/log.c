/* The logger: formats one line and hands it to the host's sink. The default
 * sink writes "apex: LEVEL: message\n" to stderr in one write so lines from
 * several threads do not interleave. No state but the logger itself. */
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const char *const level_names[] = {"error", "warn", "info", "debug"};

const char *apex__log_level_name(int level) {
  if (level < APEX_LOG_ERROR || level > APEX_LOG_DEBUG) return "log";
  return level_names[level];
}

static void stderr_sink(int level, const char *msg, void *user) {
  (void)user;
  char line[1200];
  int n = snprintf(line, sizeof line, "apex: %s: %s\n", apex__log_level_name(level), msg);
  if (n < 0) return;
  if ((size_t)n >= sizeof line) {
    n = (int)sizeof line - 1;
    line[n - 1] = '\n';
  }
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w; /* nowhere left to report a failed write to stderr */
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
  lg->fn = fn ? fn : stderr_sink;
  lg->user = fn ? user : NULL;
  lg->level = level < 0 ? level_from_env() : level;
}

void apex__logv(const apex__logger_t *lg, int level, const char *fmt, va_list ap) {
  if (!apex__log_enabled(lg, level)) return;
  char msg[1024];
  if (vsnprintf(msg, sizeof msg, fmt, ap) < 0) return;
  lg->fn(level, msg, lg->user);
}

void apex__log(const apex__logger_t *lg, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  apex__logv(lg, level, fmt, ap);
  va_end(ap);
}
