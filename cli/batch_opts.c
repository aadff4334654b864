/* `apex batch`'s command line: FILE and the options (usage below), each
 * bad one refused by name ("apex: --limit: 'x' is not SCOPE=N ..."), as
 * main.c does for the other commands. Strings stay argv's, but a SCOPE's
 * name, which is copied. Main thread only; fails only on bad input or
 * memory. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"

const char cli_batch_usage[] =
    "Usage: apex batch FILE [OPTIONS]\n"
    "\n"
    "Runs every line of FILE (JSON Lines; - reads stdin) as a task:\n"
    "  {\"action\": \"PLUGIN.ACTION\", \"params\": {...}, \"priority\": \"high\", \"key\": \"k\"}\n"
    "params (default {}), priority (high, normal, low, or -100 to 100; default\n"
    "normal) and key (a concurrency key, 1 to 255 bytes) are optional. Blank\n"
    "lines are skipped; a malformed line fails on its own and the rest run.\n"
    "\n"
    "Options:\n"
    "  --concurrency N       at most N tasks running at once (and at least N\n"
    "                        worker threads, up to 256; default 8 workers)\n"
    "  --limit SCOPE=N       at most N tasks of SCOPE running at once; SCOPE is\n"
    "                        PLUGIN, PLUGIN.ACTION, key:KEY, or key:* for each\n"
    "                        key without a limit of its own (repeatable)\n"
    "  --rate SCOPE=R/s[:B]  start at most R tasks of SCOPE a second, B at once\n"
    "                        (default 1); SCOPE as for --limit (repeatable)\n"
    "  --max-pending N       read ahead at most N lines: tasks submitted and not\n"
    "                        finished (default 1000, at least 2 x --concurrency);\n"
    "                        priorities order the lines read so far\n"
    "  --timeout SECONDS     each line's overall deadline, from its submit\n"
    "  --retries N           retry a failed attempt up to N times\n"
    "  --json                print JSON Lines events (the default when stdout\n"
    "                        is not a terminal)\n"
    "  --plugin-path DIR     search DIR for plugins first (repeatable, in order)\n"
    "  --metrics FILE        write the run's metrics to FILE at the end\n"
    "                        (Prometheus text; .om: OpenMetrics; .json: JSON)\n"
    "  --metrics-format F    prometheus, openmetrics or json, whatever FILE's name\n"
    "  --metrics-listen ADDR:PORT\n"
    "                        serve the live metrics at http://ADDR:PORT/metrics\n"
    "                        while the batch runs (ADDR empty: 127.0.0.1; port 0:\n"
    "                        any free one; stderr names the address)\n"
    "  --trace FILE          append every line's task spans to FILE as OTLP/JSON\n"
    "                        lines (each line's task a trace of its own)\n"
    "  -h, --help            show this help and exit\n"
    "\n"
    "Exit status:\n"
    "  0    every line succeeded (an empty FILE too)\n"
    "  1    a line failed, timed out or was cancelled by its plugin, a line was\n"
    "       malformed, the input could not be read, or output was closed\n"
    "  2    usage: a bad option, FILE cannot be opened, a limit refused\n"
    "  130  cancelled by Ctrl-C; 143 by SIGTERM, 129 by SIGHUP\n"
    "The first Ctrl-C cancels every task and still reports every line and the\n"
    "summary; a second exits at once.\n";


static const char *const k_valued[] = {"--concurrency", "--limit",   "--rate",       "--max-pending",
                                       "--timeout",     "--retries", "--plugin-path",
                                       "--metrics",     "--metrics-format", "--metrics-listen",
                                       "--trace"};

int cli_batch_option_takes_value(const char *arg) {
  for (size_t k = 0; k < sizeof k_valued / sizeof k_valued[0]; k++)
    if (strcmp(arg, k_valued[k]) == 0) return 1;
  return 0;
}

static int opt_fail(batch_opts_t *o, int code, const char *fmt, ...) APEX_PRINTF(3, 4);
static int opt_fail(batch_opts_t *o, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(o->why, sizeof o->why, fmt, ap);
  va_end(ap);
  o->code = code;
  return -1;
}

/* A whole number in [min, max], digits only (strtoul would take " 5", "+5"
 * and "-1"). Returns: 0 and *out, or -1 (why set). */
static int parse_count(batch_opts_t *o, const char *flag, const char *v, unsigned long min,
                       unsigned long max, unsigned long *out) {
  int plain = *v != '\0' && strspn(v, "0123456789") == strlen(v);
  char *end = NULL;
  errno = 0;
  unsigned long n = plain ? strtoul(v, &end, 10) : 0;
  if (!plain || *end != '\0' || errno != 0 || n < min || n > max)
    return opt_fail(o, APEX_E_INVALID, "%s: '%s' is not a whole number from %lu to %lu", flag, v,
                    min, max);
  *out = n;
  return 0;
}

/* A plain positive decimal (strtod would take "inf", "0x1p3", " 5").
 * Returns: the number, or -1 if v is not one. */
static double plain_positive(const char *v, size_t len) {
  char tmp[64];
  if (len == 0 || len >= sizeof tmp || strspn(v, "0123456789.eE+-") < len) return -1;
  memcpy(tmp, v, len);
  tmp[len] = '\0';
  char *end = NULL;
  errno = 0;
  double d = strtod(tmp, &end);
  if (end != tmp + len || !isfinite(d) || d <= 0) return -1;
  return d;
}

/* "SCOPE=VALUE" into *s (scope and name) and *value. Returns: 0, or -1. */
static int parse_scope(batch_opts_t *o, const char *flag, const char *arg, scope_opt_t *s,
                       const char **value) {
  const char *eq = strrchr(arg, '=');
  if (!eq || eq == arg || eq[1] == '\0')
    return opt_fail(o, APEX_E_INVALID, "%s: '%s' is not SCOPE=%s (SCOPE: PLUGIN, PLUGIN.ACTION, "
                    "key:KEY or key:*)", flag, arg, strcmp(flag, "--rate") == 0 ? "R/s[:BURST]" : "N");
  s->arg = arg;
  *value = eq + 1;
  size_t n = (size_t)(eq - arg);
  if (n > 4 && strncmp(arg, "key:", 4) == 0) {
    s->scope = APEX_SCOPE_KEY;
    if (n == 5 && arg[4] == '*') return 0; /* the default of every key */
    s->name = strndup(arg + 4, n - 4);
  } else {
    s->name = strndup(arg, n);
    if (s->name) s->scope = strchr(s->name, '.') ? APEX_SCOPE_ACTION : APEX_SCOPE_PLUGIN;
  }
  if (!s->name) return opt_fail(o, APEX_E_NOMEM, "out of memory");
  return 0;
}

static int parse_limit(batch_opts_t *o, const char *arg) {
  scope_opt_t *s = &o->limits[o->n_limits++];
  const char *v = NULL; /* set by parse_scope when it returns 0 */
  unsigned long n;
  if (parse_scope(o, "--limit", arg, s, &v) != 0) return -1;
  if (parse_count(o, "--limit", v, 1, APEX_LIMIT_MAX, &n) != 0) return -1;
  s->limit = (uint32_t)n;
  return 0;
}

static int parse_rate(batch_opts_t *o, const char *arg) {
  scope_opt_t *s = &o->rates[o->n_rates++];
  const char *v = NULL; /* set by parse_scope when it returns 0 */
  if (parse_scope(o, "--rate", arg, s, &v) != 0) return -1;
  const char *per = strstr(v, "/s");
  double r = per ? plain_positive(v, (size_t)(per - v)) : -1;
  if (r <= 0 || r > 1e9 || (per[2] != '\0' && per[2] != ':'))
    return opt_fail(o, APEX_E_INVALID,
                    "--rate: '%s' is not R/s or R/s:BURST (R a number of tasks a second, up to "
                    "1e9, e.g. 2.5/s:5)", v);
  s->rate = r;
  s->burst = 1;
  if (per[2] == ':') {
    unsigned long b;
    if (parse_count(o, "--rate", per + 3, 1, APEX_LIMIT_MAX, &b) != 0) return -1;
    s->burst = (uint32_t)b;
  }
  return 0;
}

static int parse_timeout(batch_opts_t *o, const char *v) {
  double t = plain_positive(v, strlen(v));
  if (t <= 0)
    return opt_fail(o, APEX_E_INVALID, "--timeout: '%s' is not a positive number of seconds", v);
  if (t < MIN_TIMEOUT_S)
    return opt_fail(o, APEX_E_INVALID, "--timeout: '%s' is too short: at least 0.001 seconds", v);
  if (t > 1e9) return opt_fail(o, APEX_E_INVALID, "--timeout: '%s' is too long: at most 1e9", v);
  o->base.timeout_s = t;
  return 0;
}

static int parse_one(batch_opts_t *o, const char *name, const char *value) {
  unsigned long n;
  if (strcmp(name, "--json") == 0) o->base.json = 1;
  else if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) o->help = 1;
  else if (strcmp(name, "--limit") == 0) return parse_limit(o, value);
  else if (strcmp(name, "--rate") == 0) return parse_rate(o, value);
  else if (strcmp(name, "--timeout") == 0) return parse_timeout(o, value);
  else if (strcmp(name, "--concurrency") == 0) {
    if (parse_count(o, name, value, 1, APEX_LIMIT_MAX, &n) != 0) return -1;
    o->concurrency = (uint32_t)n;
  } else if (strcmp(name, "--max-pending") == 0) {
    if (parse_count(o, name, value, 1, MAX_WINDOW, &n) != 0) return -1;
    o->window = n;
  } else if (strcmp(name, "--retries") == 0) {
    if (parse_count(o, name, value, 0, 1000000, &n) != 0) return -1;
    o->base.retries = (long)n;
  } else if (strcmp(name, "--plugin-path") == 0) {
    if (!*value) return opt_fail(o, APEX_E_INVALID, "--plugin-path: empty directory name");
    o->base.plugin_paths[o->base.n_plugin_paths++] = value;
  } else if (strcmp(name, "--metrics") == 0) {
    o->base.metrics_file = value;
  } else if (strcmp(name, "--metrics-format") == 0) {
    if ((o->base.metrics_format = cli_metrics_format_parse(value)) < 0)
      return opt_fail(o, APEX_E_INVALID,
                      "--metrics-format: '%s' is not prometheus, openmetrics or json", value);
  } else if (strcmp(name, "--metrics-listen") == 0) {
    o->metrics_listen = value; /* checked when it is bound */
  } else if (strcmp(name, "--trace") == 0) {
    if (!*value) return opt_fail(o, APEX_E_INVALID, "--trace: empty file name");
    o->base.trace_file = value; /* opened by the manager (cli_manager_new) */
  }
  return 0;
}

int cli_batch_parse(batch_opts_t *o, int argc, char **argv, int cmd_at) {
  int positional_only = 0;
  for (int i = 1; i < argc; i++) {
    if (i == cmd_at) continue;
    const char *a = argv[i];
    if (!positional_only && strcmp(a, "--") == 0) {
      positional_only = 1;
      continue;
    }
    if (positional_only || a[0] != '-' || a[1] == '\0') { /* "-" is stdin */
      if (o->file) return opt_fail(o, APEX_E_INVALID, "batch: unexpected argument '%s'", a);
      o->file = a;
      continue;
    }
    char name[32];
    const char *eq = strchr(a, '=');
    size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
    if (nlen >= sizeof name)
      return opt_fail(o, APEX_E_INVALID, "unknown option '%s' (see apex batch --help)", a);
    memcpy(name, a, nlen);
    name[nlen] = '\0';
    int valued = cli_batch_option_takes_value(name);
    int flag = strcmp(name, "--json") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0;
    if (!valued && !flag)
      return opt_fail(o, APEX_E_INVALID, "unknown option '%s' (see apex batch --help)", a);
    if (flag && eq) return opt_fail(o, APEX_E_INVALID, "%s takes no value", name);
    const char *value = NULL;
    if (valued) {
      if (eq) value = eq + 1;
      else if (i + 1 < argc && i + 1 != cmd_at) value = argv[++i];
      else return opt_fail(o, APEX_E_INVALID, "%s needs a value", name);
    }
    if (parse_one(o, name, value) != 0) return -1;
  }
  return 0;
}


void cli_batch_opts_free(batch_opts_t *o) {
  for (size_t i = 0; i < o->n_limits; i++) free(o->limits[i].name);
  for (size_t i = 0; i < o->n_rates; i++) free(o->rates[i].name);
  free(o->limits);
  free(o->rates);
  free(o->base.plugin_paths);
}


int cli_batch_parse_limit(batch_opts_t *o, const char *arg) { return parse_limit(o, arg); }
