/* The apex command's entry point: parses the command line into cli_opts_t
 * and hands it to a command (plugins, describe, run). Options may come
 * before or after the positional arguments, in "--opt VALUE" or
 * "--opt=VALUE" form; "--" ends the options. Every bad input is reported by
 * name ("apex: --timeout: 'abc' is not ...") with exit code 2, and for `run`
 * in JSON mode also as a result line, so a script reading stdout sees it.
 * Single-threaded (the library's threads start only inside a command). */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char usage_text[] =
    "Usage: apex COMMAND [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  plugins                   list the plugins found, their versions and actions\n"
    "  describe PLUGIN[.ACTION]  show a plugin's actions, or an action's kind,\n"
    "                            timeout, retry policy and params\n"
    "  run PLUGIN.ACTION         run an action and show its progress\n"
    "  batch FILE                run every line of a JSON Lines file as a task,\n"
    "                            under limits (apex batch --help)\n"
    "  mcp                       serve every action as a Model Context Protocol\n"
    "                            tool, over stdio or HTTP (apex mcp --help)\n"
    "  worker                    serve a store's queue with other workers, until\n"
    "                            SIGTERM (apex worker --help)\n"
    "  tasks                     list the tasks of the store: id, action, state,\n"
    "                            progress, age (--state S[,S...], --limit N)\n"
    "  show ID                   all the store has on one task\n"
    "  cancel ID                 cancel a stored task (a running one stops within\n"
    "                            about a second, wherever it runs)\n"
    "  watch ID                  follow a stored task's progress to its end\n"
    "  resume                    take over the unfinished tasks no live apex\n"
    "                            runs (their process was killed) and run them\n"
    "                            to their end, from their last checkpoint\n"
    "\n"
    "Options of run:\n"
    "  --param KEY=VALUE   set a param; VALUE is taken as JSON if it parses\n"
    "                      (5, true, 1.5, {\"a\":1}), else as a string; a number\n"
    "                      or a VALUE starting with [, { or \" must be valid JSON\n"
    "  --params JSON       a JSON object of params, applied before every --param\n"
    "  --timeout SECONDS   overall deadline across attempts (at least 0.001,\n"
    "                      e.g. 2.5)\n"
    "  --retries N         retry a failed attempt up to N times (N+1 attempts)\n"
    "  --schedule-to-start SECONDS\n"
    "                      time out if the task has not started by then\n"
    "  --attempt-timeout SECONDS\n"
    "                      time out one attempt that runs longer (a retry may\n"
    "                      follow: --retries)\n"
    "  --heartbeat-timeout SECONDS\n"
    "                      time out an attempt that heartbeats no more often\n"
    "                      (for actions that call apex_ctx_heartbeat)\n"
    "                      The result names the timeout that fired.\n"
    "  --priority P        high, normal, low or a number from -100 to 100\n"
    "                      (higher runs first)\n"
    "  --key K             the task's concurrency key (limits per key)\n"
    "  --run-after SECONDS start no sooner than this (state scheduled until\n"
    "                      then)\n"
    "  --json              print JSON Lines events (the default when stdout is\n"
    "                      not a terminal)\n"
    "  --metrics FILE      write the run's metrics to FILE at the end\n"
    "                      (Prometheus text; .om: OpenMetrics; .json: JSON)\n"
    "  --metrics-format F  prometheus, openmetrics or json, whatever FILE's name\n"
    "  --trace FILE        append the task's spans to FILE as OTLP/JSON lines\n"
    "  --traceparent TP    join the W3C trace TP (\"00-<trace id>-<span id>-01\");\n"
    "                      a malformed TP is ignored and a new trace started\n"
    "  --store PATH        journal the task in the store at PATH (an SQLite\n"
    "                      file, made if missing): it survives a crash of\n"
    "                      apex and `apex resume` continues it\n"
    "  --detach            submit the task to the store, print its id and\n"
    "                      return; a runner process of its own runs it, past\n"
    "                      the shell's end (apex watch|show|cancel ID)\n"
    "  --enqueue           write the task to the store's queue, print its id\n"
    "                      and return: an `apex worker` serving the store runs\n"
    "                      it (--detach does this on a postgresql:// store)\n"
    "\n"
    "Options of tasks, show, cancel, watch, resume:\n"
    "  --store PATH        the store (default: $XDG_STATE_HOME/apex/tasks.db,\n"
    "                      else ~/.local/state/apex/tasks.db; also the store\n"
    "                      of run --detach without --store)\n"
    "  --json              JSON output (the default when stdout is not a\n"
    "                      terminal)\n"
    "\n"
    "Options of every command:\n"
    "  --plugin-path DIR   search DIR for plugins first (repeatable, in order)\n"
    "  -h, --help          show this help and exit\n"
    "  --version           show the version and exit\n"
    "\n"
    "Plugins are searched in the --plugin-path dirs, then APEX_PLUGIN_PATH\n"
    "(colon-separated), then the plugin directory installed with Apex.\n"
    "APEX_LOG=error|warn|info|debug|off sets the log level (default warn),\n"
    "APEX_LOG_FORMAT=human|logfmt|json the format of log lines on stderr, and\n"
    "APEX_OTLP_ENDPOINT=http://HOST:4318 sends spans to an OpenTelemetry collector.\n"
    "\n"
    "Exit status:\n"
    "  0    succeeded\n"
    "  1    failed; also a plugin that exists but fails to load, and a run\n"
    "       whose output is closed (apex run ... | head -1: the task is\n"
    "       cancelled)\n"
    "  2    usage or invalid input: a bad option, an unknown plugin or action,\n"
    "       invalid params, whether apex, the library or the handler found them\n"
    "  124  timed out\n"
    "  130  cancelled by Ctrl-C; 143 cancelled by SIGTERM, 129 by SIGHUP\n"
    "The first Ctrl-C (or SIGTERM, SIGHUP) cancels the task and waits for it\n"
    "to end; a second exits at once. Either way `run --json` ends with exactly\n"
    "one result line.\n";

typedef struct parse_state {
  cli_opts_t *o;
  int is_run;
  const char *cmd; /* the command word, found before parsing (NULL: none) */
  json_t *params_obj; /* --params, merged in order */
  json_t *param_kv;   /* --param values in order: [[key, value], ...] */
  int help, version;
  int code;           /* apex_status_t of the first error */
  char why[1024];
} parse_state_t;

static int parse_fail(parse_state_t *ps, int code, const char *fmt, ...) APEX_PRINTF(3, 4);
static int parse_fail(parse_state_t *ps, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ps->why, sizeof ps->why, fmt, ap);
  va_end(ap);
  ps->code = code;
  return -1;
}

/* Shortest --timeout: below a millisecond the deadline rounds to nothing
 * (1e-300 s would be 0 ns) and the run could only time out at once. */
#define MIN_TIMEOUT_S 0.001

/* One of the timeouts: name is the option, *out where it goes. */
static int parse_seconds(parse_state_t *ps, const char *name, const char *v, double *out) {
  /* Plain decimal only: strtod would also take " 5", "0x1p3" and "inf". */
  int plain = *v != '\0' && strspn(v, "0123456789.eE+-") == strlen(v);
  char *end = NULL;
  errno = 0;
  double t = plain ? strtod(v, &end) : 0;
  /* ERANGE on underflow still yields a tiny positive t: the minimum says it. */
  if (!plain || end == v || *end != '\0' || (errno != 0 && !(t > 0 && t < MIN_TIMEOUT_S)) ||
      !isfinite(t) || t <= 0)
    return parse_fail(ps, APEX_E_INVALID, "%s: '%s' is not a positive number of seconds", name,
                      v);
  if (t < MIN_TIMEOUT_S)
    return parse_fail(ps, APEX_E_INVALID, "%s: '%s' is too short: at least 0.001 seconds", name,
                      v);
  /* The library's limit (31 years), said here in the option's name. */
  if (t > 1e9)
    return parse_fail(ps, APEX_E_INVALID, "%s: '%s' is too long: at most 1e9 seconds", name, v);
  *out = t;
  return 0;
}

static int parse_timeout(parse_state_t *ps, const char *v) {
  return parse_seconds(ps, "--timeout", v, &ps->o->timeout_s);
}

static int parse_retries(parse_state_t *ps, const char *v) {
  /* Digits only: strtol would also take " 5" and "+5". */
  int plain = *v != '\0' && strspn(v, "0123456789") == strlen(v);
  char *end = NULL;
  errno = 0;
  long n = plain ? strtol(v, &end, 10) : -1;
  /* The cap keeps N+1 inside the policy's uint32 with room to spare. */
  if (!plain || end == v || *end != '\0' || errno != 0 || n < 0 || n > 1000000)
    return parse_fail(ps, APEX_E_INVALID,
                      "--retries: '%s' is not a whole number of retries from 0 to 1000000", v);
  ps->o->retries = n;
  return 0;
}

static int parse_priority(parse_state_t *ps, const char *v) {
  if (strcmp(v, "high") == 0) ps->o->priority = APEX_PRIORITY_HIGH;
  else if (strcmp(v, "normal") == 0) ps->o->priority = APEX_PRIORITY_NORMAL;
  else if (strcmp(v, "low") == 0) ps->o->priority = APEX_PRIORITY_LOW;
  else {
    int plain = *v != '\0' && strspn(v + (*v == '-'), "0123456789") == strlen(v + (*v == '-'));
    long n = plain && strlen(v) < 8 ? strtol(v, NULL, 10) : APEX_PRIORITY_MAX + 1;
    if (n < APEX_PRIORITY_MIN || n > APEX_PRIORITY_MAX)
      return parse_fail(ps, APEX_E_INVALID,
                        "--priority: '%s' is not high, normal, low or a number from %d to %d", v,
                        APEX_PRIORITY_MIN, APEX_PRIORITY_MAX);
    ps->o->priority = (int)n;
  }
  return 0;
}

static int parse_run_after(parse_state_t *ps, const char *v) {
  int plain = *v != '\0' && strspn(v, "0123456789.") == strlen(v);
  char *end = NULL;
  errno = 0;
  double t = plain ? strtod(v, &end) : -1;
  if (!plain || end == v || *end != '\0' || errno != 0 || !isfinite(t) || t < 0 || t > 1e9)
    return parse_fail(ps, APEX_E_INVALID,
                      "--run-after: '%s' is not a number of seconds from 0 to 1e9", v);
  ps->o->run_after_s = t;
  return 0;
}

static int parse_params_json(parse_state_t *ps, const char *v) {
  json_error_t jerr;
  json_t *j = json_loads(v, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
  if (!j)
    return parse_fail(ps, APEX_E_INVALID_PARAMS, "--params: invalid JSON at line %d column %d: %s",
                      jerr.line, jerr.column, jerr.text);
  if (!json_is_object(j)) {
    static const char *const kinds[] = {"object", "array", "string", "integer",
                                        "real",   "true",  "false",  "null"};
    int t = json_typeof(j);
    json_decref(j);
    return parse_fail(ps, APEX_E_INVALID_PARAMS, "--params: want a JSON object, got %s",
                      t >= 0 && t < 8 ? kinds[t] : "something else");
  }
  int rc = json_object_update(ps->params_obj, j);
  json_decref(j);
  if (rc != 0) return parse_fail(ps, APEX_E_NOMEM, "out of memory");
  return 0;
}

/* Returns: 1 if s is, in full, a JSON number token (-?digits[.digits][e±digits]):
 * such a value that jansson refuses (beyond int64) was meant as a number. */
static int is_number_token(const char *s) {
  if (*s == '-') s++;
  if (!isdigit((unsigned char)*s)) return 0;
  while (isdigit((unsigned char)*s)) s++;
  if (*s == '.') {
    if (!isdigit((unsigned char)*++s)) return 0;
    while (isdigit((unsigned char)*s)) s++;
  }
  if (*s == 'e' || *s == 'E') {
    s++;
    if (*s == '+' || *s == '-') s++;
    if (!isdigit((unsigned char)*s)) return 0;
    while (isdigit((unsigned char)*s)) s++;
  }
  return *s == '\0';
}

static int parse_param_kv(parse_state_t *ps, const char *v) {
  const char *eq = strchr(v, '=');
  if (!eq || eq == v)
    return parse_fail(ps, APEX_E_INVALID_PARAMS, "--param: '%s' is not KEY=VALUE", v);
  /* VALUE is JSON when the whole of it parses as JSON (5, true, "x", [1]);
   * a bare word or a path (-v, 2024/x) is meant as a string. But a value
   * that is a number token or opens an array, object or string and does not
   * parse (a number too big for int64, "[1,") was meant as JSON: taking it
   * as a string would only fail later, as a type error naming the wrong
   * cause. (true/false/null always parse.) */
  json_error_t jerr;
  json_t *val = json_loads(eq + 1, JSON_DECODE_ANY, &jerr);
  if (!val && (is_number_token(eq + 1) || (eq[1] != '\0' && strchr("[{\"", eq[1]))))
    return parse_fail(ps, APEX_E_INVALID_PARAMS,
                      "--param %.*s: '%s' is not valid JSON (%s); write a string as \"...\"",
                      (int)(eq - v), v, eq + 1, jerr.text);
  if (!val) val = json_string(eq + 1);
  json_t *key = json_stringn(v, (size_t)(eq - v));
  if (!val || !key) {
    json_decref(val);
    json_decref(key);
    /* json_string refuses invalid UTF-8 as well as failing for memory. */
    return parse_fail(ps, APEX_E_INVALID_PARAMS, "--param: '%s' is not valid UTF-8 text", v);
  }
  if (json_array_append_new(ps->param_kv, json_pack("[oo]", key, val)) != 0)
    return parse_fail(ps, APEX_E_NOMEM, "out of memory");
  return 0;
}

/* Options taking a value; the rest are flags. */
static const char *const valued[] = {
    "--param",    "--params", "--timeout",   "--retries",           "--plugin-path",
    "--priority", "--key",    "--run-after", "--schedule-to-start", "--attempt-timeout",
    "--heartbeat-timeout", "--metrics", "--metrics-format", "--trace", "--traceparent",
    "--store", "--state", "--limit"};

/* The durable-task commands (tasks.c). */
static int is_store_command(const char *cmd) {
  return cmd && (strcmp(cmd, "tasks") == 0 || strcmp(cmd, "show") == 0 ||
                 strcmp(cmd, "cancel") == 0 || strcmp(cmd, "watch") == 0 ||
                 strcmp(cmd, "resume") == 0);
}

/* Returns: 1 if option name applies to command cmd (NULL: no command yet,
 * which only the options of every command do). */
static int option_applies(const char *name, const char *cmd) {
  if (strcmp(name, "--plugin-path") == 0 || strcmp(name, "--help") == 0 ||
      strcmp(name, "--version") == 0 || strcmp(name, "-h") == 0)
    return 1;
  int run = cmd && strcmp(cmd, "run") == 0;
  if (strcmp(name, "--json") == 0 || strcmp(name, "--store") == 0)
    return run || is_store_command(cmd);
  if (strcmp(name, "--state") == 0 || strcmp(name, "--limit") == 0)
    return cmd && strcmp(cmd, "tasks") == 0;
  return run;
}

static int parse_limit(parse_state_t *ps, const char *v) {
  int plain = *v != '\0' && strspn(v, "0123456789") == strlen(v) && strlen(v) < 9;
  long n = plain ? strtol(v, NULL, 10) : 0;
  if (n < 1)
    return parse_fail(ps, APEX_E_INVALID, "--limit: '%s' is not a whole number from 1 to 99999999",
                      v);
  ps->o->limit = n;
  return 0;
}

static int parse_option(parse_state_t *ps, const char *arg, int argc, char **argv, int *i) {
  char name[64];
  const char *value = NULL;
  const char *eq = strchr(arg, '=');
  size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
  /* Longer than any option: unknown, and not cut (possibly mid-character). */
  if (nlen >= sizeof name)
    return parse_fail(ps, APEX_E_INVALID, "unknown option '%s' (see apex --help)", arg);
  memcpy(name, arg, nlen);
  name[nlen] = '\0';

  int takes_value = 0;
  for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++)
    if (strcmp(name, valued[k]) == 0) takes_value = 1;
  int is_flag = strcmp(name, "--json") == 0 || strcmp(name, "--help") == 0 ||
                strcmp(name, "-h") == 0 || strcmp(name, "--version") == 0 ||
                strcmp(name, "--detach") == 0 || strcmp(name, "--enqueue") == 0;
  if (!takes_value && !is_flag)
    return parse_fail(ps, APEX_E_INVALID, "unknown option '%s' (see apex --help)", arg);
  if (is_flag && eq) return parse_fail(ps, APEX_E_INVALID, "%s takes no value", name);
  if (takes_value) {
    if (eq) {
      value = eq + 1;
    } else if (*i + 1 < argc) {
      value = argv[++*i];
    } else {
      return parse_fail(ps, APEX_E_INVALID, "%s needs a value", name);
    }
  }
  if (!option_applies(name, ps->cmd)) {
    if (strcmp(name, "--state") == 0 || strcmp(name, "--limit") == 0)
      return parse_fail(ps, APEX_E_INVALID, "%s applies only to 'apex tasks'", name);
    if (strcmp(name, "--json") == 0 || strcmp(name, "--store") == 0)
      return parse_fail(ps, APEX_E_INVALID,
                        "%s applies only to 'apex run', tasks, show, cancel, watch and resume",
                        name);
    return parse_fail(ps, APEX_E_INVALID, "%s applies only to 'apex run'", name);
  }

  if (strcmp(name, "--json") == 0) ps->o->json = 1;
  else if (strcmp(name, "--detach") == 0) ps->o->detach = 1;
  else if (strcmp(name, "--enqueue") == 0) ps->o->enqueue = 1;
  else if (strcmp(name, "--store") == 0) ps->o->store = value;
  else if (strcmp(name, "--state") == 0) ps->o->state = value;
  else if (strcmp(name, "--limit") == 0) return parse_limit(ps, value);
  else if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) ps->help = 1;
  else if (strcmp(name, "--version") == 0) ps->version = 1;
  else if (strcmp(name, "--timeout") == 0) return parse_timeout(ps, value);
  else if (strcmp(name, "--retries") == 0) return parse_retries(ps, value);
  else if (strcmp(name, "--schedule-to-start") == 0)
    return parse_seconds(ps, name, value, &ps->o->schedule_to_start_s);
  else if (strcmp(name, "--attempt-timeout") == 0)
    return parse_seconds(ps, name, value, &ps->o->start_to_close_s);
  else if (strcmp(name, "--heartbeat-timeout") == 0)
    return parse_seconds(ps, name, value, &ps->o->heartbeat_timeout_s);
  else if (strcmp(name, "--priority") == 0) return parse_priority(ps, value);
  else if (strcmp(name, "--run-after") == 0) return parse_run_after(ps, value);
  else if (strcmp(name, "--key") == 0) ps->o->key = value; /* checked by the library */
  else if (strcmp(name, "--metrics") == 0) ps->o->metrics_file = value;
  else if (strcmp(name, "--metrics-format") == 0) {
    if ((ps->o->metrics_format = cli_metrics_format_parse(value)) < 0)
      return parse_fail(ps, APEX_E_INVALID,
                        "--metrics-format: '%s' is not prometheus, openmetrics or json", value);
  } else if (strcmp(name, "--traceparent") == 0) ps->o->traceparent = value; /* W3C rules: the library */
  else if (strcmp(name, "--trace") == 0) {
    if (!*value) return parse_fail(ps, APEX_E_INVALID, "--trace: empty file name");
    ps->o->trace_file = value;
  } else if (strcmp(name, "--params") == 0) return parse_params_json(ps, value);
  else if (strcmp(name, "--param") == 0) return parse_param_kv(ps, value);
  else if (strcmp(name, "--plugin-path") == 0) {
    if (!*value) return parse_fail(ps, APEX_E_INVALID, "--plugin-path: empty directory name");
    ps->o->plugin_paths[ps->o->n_plugin_paths++] = value;
  }
  return 0;
}

static int parse_args(parse_state_t *ps, int argc, char **argv) {
  int only_positional = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!only_positional && strcmp(a, "--") == 0) {
      only_positional = 1;
    } else if (!only_positional && a[0] == '-' && a[1] != '\0') {
      if (parse_option(ps, a, argc, argv, &i) != 0) return -1;
    } else if (!ps->o->command) {
      ps->o->command = a;
    } else if (!ps->o->target) {
      ps->o->target = a;
    } else {
      return parse_fail(ps, APEX_E_INVALID, "unexpected argument '%s'", a);
    }
  }
  return 0;
}

/* --params first, then each --param in order: the later one wins. */
static int merge_params(parse_state_t *ps) {
  size_t i;
  json_t *kv;
  json_array_foreach(ps->param_kv, i, kv) {
    if (json_object_set(ps->params_obj, json_string_value(json_array_get(kv, 0)),
                        json_array_get(kv, 1)) != 0)
      return parse_fail(ps, APEX_E_NOMEM, "out of memory");
  }
  ps->o->params = json_incref(ps->params_obj);
  return 0;
}

/* Whether `run` output is JSON must be known before parsing finishes, so an
 * error in an early option is still reported as a JSON result line. */
static int wants_json(int argc, char **argv) {
  if (!isatty(STDOUT_FILENO)) return 1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) break;
    if (strcmp(argv[i], "--json") == 0) return 1;
  }
  return 0;
}

/* Returns: the index of the command word (the first positional argument),
 * or 0 if there is none. Values of options are skipped, batch's too. */
static int command_index(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) return i + 1 < argc ? i + 1 : 0;
    if (a[0] == '-' && a[1] != '\0') {
      int takes = cli_batch_option_takes_value(a) || cli_mcp_option_takes_value(a) ||
                  cli_worker_option_takes_value(a);
      for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++)
        if (strcmp(a, valued[k]) == 0) takes = 1;
      if (takes) i++; /* skip its value */
      continue;
    }
    return i;
  }
  return 0;
}

static int first_positional_is_run(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) return i + 1 < argc && strcmp(argv[i + 1], "run") == 0;
    if (a[0] == '-' && a[1] != '\0') {
      for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++)
        if (strcmp(a, valued[k]) == 0) i++; /* skip its value */
      continue;
    }
    return strcmp(a, "run") == 0;
  }
  return 0;
}

int main(int argc, char **argv) {
  /* batch has options of its own: it parses the whole command line. */
  int cmd = command_index(argc, argv);
  if (cmd > 0 && strcmp(argv[cmd], "batch") == 0) return cli_cmd_batch(argc, argv, cmd);
  if (cmd > 0 && strcmp(argv[cmd], "mcp") == 0) return cli_cmd_mcp(argc, argv, cmd);
  if (cmd > 0 && strcmp(argv[cmd], "worker") == 0) return cli_cmd_worker(argc, argv, cmd);
  cli_opts_t o = {.timeout_s = -1, .retries = -1};
  parse_state_t ps = {.o = &o};
  int code = CLI_EXIT_OK;
  o.plugin_paths = calloc((size_t)argc, sizeof *o.plugin_paths);
  ps.params_obj = json_object();
  ps.param_kv = json_array();
  if (!o.plugin_paths || !ps.params_obj || !ps.param_kv) {
    fprintf(stderr, "apex: out of memory\n");
    code = CLI_EXIT_FAILED;
    goto out;
  }
  ps.is_run = first_positional_is_run(argc, argv);
  ps.cmd = cmd > 0 ? argv[cmd] : NULL;
  int json = (ps.is_run || is_store_command(ps.cmd)) && wants_json(argc, argv);
  o.argc = argc;
  o.argv = argv;
  if (ps.is_run || is_store_command(ps.cmd)) {
    /* A reader that goes away (apex run ... | head -1) must not kill us
     * mid-task: the task is cancelled and cleans up instead (run.c), which
     * needs the write to fail with EPIPE rather than raise SIGPIPE. Set
     * before any thread exists, so the library's threads share it. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGPIPE, &sa, NULL) != 0) {
      fprintf(stderr, "apex: cannot ignore SIGPIPE: %s\n", strerror(errno));
      code = CLI_EXIT_FAILED;
      goto out;
    }
  }

  if (parse_args(&ps, argc, argv) != 0 || merge_params(&ps) != 0) {
    if (ps.help || ps.version) goto info; /* "apex --help --bogus" still helps */
    code = cli_fail(json, ps.code, "%s", ps.why);
    goto out;
  }
info:
  if (ps.help) {
    fputs(usage_text, stdout);
    goto out;
  }
  if (ps.version) {
    printf("apex %s\n", apex_version());
    goto out;
  }
  if (!o.command) {
    fputs(usage_text, stderr);
    code = CLI_EXIT_USAGE;
    goto out;
  }
  o.json = json;
  if (strcmp(o.command, "run") == 0) {
    code = cli_cmd_run(&o);
  } else if (strcmp(o.command, "plugins") == 0) {
    code = o.target ? cli_fail(0, APEX_E_INVALID, "plugins: unexpected argument '%s'", o.target)
                    : cli_cmd_plugins(&o);
  } else if (strcmp(o.command, "describe") == 0) {
    code = cli_cmd_describe(&o);
  } else if (strcmp(o.command, "tasks") == 0) {
    code = cli_cmd_tasks(&o);
  } else if (strcmp(o.command, "show") == 0) {
    code = cli_cmd_show(&o);
  } else if (strcmp(o.command, "cancel") == 0) {
    code = cli_cmd_cancel(&o);
  } else if (strcmp(o.command, "watch") == 0) {
    code = cli_cmd_watch(&o);
  } else if (strcmp(o.command, "resume") == 0) {
    code = cli_cmd_resume(&o);
  } else if (strcmp(o.command, "help") == 0) {
    fputs(usage_text, stdout);
  } else {
    code = cli_fail(0, APEX_E_INVALID,
                    "unknown command '%s' (commands: plugins, describe, run, batch, mcp, worker, tasks, "
                    "show, cancel, watch, resume)",
                    o.command);
  }
out:
  json_decref(o.params);
  json_decref(ps.params_obj);
  json_decref(ps.param_kv);
  free(o.plugin_paths);
  return code;
}
