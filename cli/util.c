/* Helpers the apex commands share: reporting a failure (stderr, plus a JSON
 * result line in JSON mode), writing JSON Lines, creating the manager and
 * loading the plugin a command names, and making text from argv or plugins
 * safe to print: valid UTF-8 for JSON (jansson refuses anything else, which
 * would drop the line), free of control characters for a terminal.
 * Main thread only. What can fail: out of memory (reported as such), writes
 * to stdout (remembered, see cli_output_failed) and the library's own
 * errors, which are passed on with their message. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

void cli_write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* nothing more can be done about it here */
    p += w;
    n -= (size_t)w;
  }
}

int64_t cli_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Set once a write to stdout failed (a closed pipe: SIGPIPE is ignored in
 * `run`, so it shows up here as EPIPE); nothing more is written after it. */
static int g_output_failed;

int cli_output_failed(void) { return g_output_failed; }

/* The library's decoder (src/core/utf8.c) is internal and the CLI is a
 * host of the public headers only, so the CLI keeps this one copy, with the
 * same rules and the same '?' for a bad byte. */
size_t cli_utf8_decode(const char *src, long *cp) {
  const unsigned char *s = (const unsigned char *)src;
  if (s[0] >= 0x01 && s[0] < 0x80) {
    *cp = s[0];
    return 1;
  }
  size_t n;
  long v, min;
  if (s[0] >= 0xC2 && s[0] <= 0xDF) n = 2, v = s[0] & 0x1F, min = 0x80;
  else if ((s[0] & 0xF0) == 0xE0) n = 3, v = s[0] & 0x0F, min = 0x800;
  else if (s[0] >= 0xF0 && s[0] <= 0xF4) n = 4, v = s[0] & 0x07, min = 0x10000;
  else return 0; /* NUL, a stray continuation byte, C0/C1, F5-FF */
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0; /* also stops at the terminating NUL */
    v = (v << 6) | (s[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

void cli_utf8_clean(char *dst, size_t cap, const char *src) {
  size_t used = 0;
  long cp;
  if (cap == 0) return;
  while (*src) {
    size_t n = cli_utf8_decode(src, &cp);
    size_t plen = n ? n : 1;
    if (used + plen + 1 > cap) break; /* cut between characters, never inside one */
    if (n)
      memcpy(dst + used, src, n);
    else
      dst[used] = '?';
    used += plen;
    src += plen;
  }
  dst[used] = '\0';
}

char *cli_utf8_dup(const char *src) {
  size_t len = strlen(src);
  char *dst = malloc(len + 1); /* a bad byte becomes one '?': never longer */
  if (dst) cli_utf8_clean(dst, len + 1, src);
  return dst;
}

json_t *cli_error_json(const apex_error_t *e, int code) {
  json_t *j = e ? apex_error_to_json(e) : NULL;
  if (j) return j;
  /* Whatever the library could not turn into JSON (a message that is not
   * UTF-8, no memory), the line still gets a code and a readable message. */
  if (e) code = apex_error_code(e);
  const char *msg = e ? apex_error_message(e) : NULL;
  char *clean = cli_utf8_dup(msg ? msg : apex_strerror(code));
  j = json_pack("{s:s, s:s}", "code", apex_status_name(code), "message", clean ? clean : "?");
  free(clean);
  return j;
}

int cli_emit(json_t *obj) {
  if (!obj) return -1;
  if (g_output_failed) {
    json_decref(obj);
    return -1;
  }
  /* 15 significant digits: 0.05 prints as 0.05, not 0.050000000000000003. */
  char *s = json_dumps(obj, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
  json_decref(obj);
  if (!s) { /* values from plugins are checked by the library, so: memory */
    fprintf(stderr, "apex: out of memory writing a JSON line\n");
    return -1;
  }
  /* One line per event, flushed at once: a reader (a pipe into jq, a test)
   * sees each event as it happens, not at exit. */
  fputs(s, stdout);
  fputc('\n', stdout);
  if (fflush(stdout) != 0 || ferror(stdout)) g_output_failed = 1;
  free(s);
  return g_output_failed ? -1 : 0;
}

int cli_exit_code(int code) {
  switch (code) {
  case APEX_E_INVALID:
  case APEX_E_INVALID_PARAMS:
  case APEX_E_PLUGIN_NOT_FOUND:
  case APEX_E_ACTION_NOT_FOUND:
    return CLI_EXIT_USAGE;
  default:
    return CLI_EXIT_FAILED;
  }
}

static void emit_failed(json_t *error, int code) {
  /* A result line always has an error, even if building it failed. */
  if (!error) error = cli_error_json(NULL, code);
  cli_emit(json_pack("{s:s, s:n, s:s, s:o}", "event", "result", "task", "state", "failed", "error",
                     error));
}

int cli_fail(int json, int code, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  /* msg may echo argv: bytes that are not UTF-8, escapes, a cut character. */
  cli_eprint(msg);
  if (json) {
    char clean[sizeof msg];
    cli_utf8_clean(clean, sizeof clean, msg);
    emit_failed(json_pack("{s:s, s:s}", "code", apex_status_name(code), "message", clean), code);
  }
  return cli_exit_code(code);
}

int cli_fail_error(int json, int code, const apex_error_t *e) {
  if (!e) return cli_fail(json, code, "%s", apex_strerror(code));
  cli_eprint(apex_error_message(e));
  if (json) emit_failed(cli_error_json(e, code), code);
  return cli_exit_code(code);
}

void cli_eprint(const char *msg) {
  char *clean = cli_term_clean(msg ? msg : "");
  fprintf(stderr, "apex: %s\n", clean ? clean : "(message lost: out of memory)");
  free(clean);
}

int cli_manager_new(const cli_opts_t *o, apex_event_fn on_event, void *user, apex_log_fn log,
                    void *log_user, apex_manager_t **out) {
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = o->workers ? o->workers : 2;
  cfg.log = log;
  cfg.log_user = log_user;
  /* The command exits once its task ended: a handler that ignores its
   * cancel gets 50 ms (run.c's drain), not the library's 1 s, before the
   * process leaves without it. */
  cfg.shutdown_grace_ms = 50;
  cfg.trace_file = o->trace_file; /* apex run --trace */
  /* --traceparent alone: the task joins that trace (its logs carry the ids,
   * a plugin passes them on) even with nothing exported. */
  if (o->traceparent && !getenv("APEX_TRACE_SAMPLER")) cfg.trace_sampler = APEX_TRACE_ALWAYS;
  if (on_event) {
    cfg.delivery = APEX_DELIVER_DISPATCH;
    cfg.on_event = on_event;
    cfg.event_user = user;
    /* The ABI-1 types, and partial results (run.c shows them; a command
     * that does not ignores them). */
    cfg.event_mask = APEX_EVENT_ATTEMPT | APEX_EVENT_PROGRESS | APEX_EVENT_RETRY |
                     APEX_EVENT_DONE | APEX_EVENT_PARTIAL;
    /* The library coalesces progress (20/s by default, which is also all a
     * terminal display can show). A JSON consumer wants each step as it
     * happens; 100/s keeps that for steps down to ~10 ms while still
     * bounding what a flooding plugin can make us print. */
    if (o->json) cfg.progress_rate_hz = 100;
  }
  /* Journal in the store (run --store/--detach, resume): every task the
   * command submits is durable (run.c sets opts.durable as well). */
  cfg.store = o->store;
  cfg.store_owner = o->store_owner;
  apex_manager_t *m = NULL;
  int rc = apex_manager_new(&cfg, &m);
  if (rc != APEX_OK && o->store) {
    /* apex_manager_new only logs why the store was refused (a detached
     * runner's log goes to runner.log): opening it again here gives the
     * reason to report (a refused file is never written). */
    apex_store_t *s = NULL;
    apex_error_t *err = NULL;
    if (apex_store_open(o->store, &s, &err) != APEX_OK && err) {
      int code = cli_fail(o->json, rc, "cannot start the runtime: %s", apex_error_message(err));
      apex_error_unref(err);
      return code;
    }
    apex_error_unref(err);
    apex_store_close(s);
  }
  if (rc != APEX_OK) return cli_fail(o->json, rc, "cannot start the runtime: %s", apex_strerror(rc));
  for (size_t i = 0; i < o->n_plugin_paths; i++) {
    rc = apex_manager_add_plugin_path(m, o->plugin_paths[i]);
    if (rc != APEX_OK) {
      apex_manager_destroy(m, 0);
      return cli_fail(o->json, rc, "--plugin-path '%s': %s", o->plugin_paths[i], apex_strerror(rc));
    }
  }
  *out = m;
  return CLI_EXIT_OK;
}

char *cli_search_path(apex_manager_t *m) {
  json_t *dirs = apex_manager_plugin_path(m);
  if (!dirs) return NULL;
  size_t len = 1, i;
  json_t *d;
  json_array_foreach(dirs, i, d) len += strlen(json_string_value(d) ? json_string_value(d) : "") + 2;
  char *s = malloc(len);
  if (s) {
    s[0] = '\0';
    json_array_foreach(dirs, i, d) {
      if (i) strcat(s, ", ");
      strcat(s, json_string_value(d) ? json_string_value(d) : "");
    }
  }
  json_decref(dirs);
  return s;
}

int cli_load_plugin(apex_manager_t *m, int json, const char *name, const apex_plugin_desc_t **desc) {
  apex_error_t *err = NULL;
  int rc = apex_manager_load_named(m, name, &err);
  int code = cli_report_load(m, json, name, rc, err, desc);
  apex_error_unref(err);
  return code;
}

int cli_report_load(apex_manager_t *m, int json, const char *name, int rc, const apex_error_t *err,
                    const apex_plugin_desc_t **desc) {
  if (rc == APEX_E_PLUGIN_NOT_FOUND) {
    char *path = cli_search_path(m);
    int code = cli_fail(json, rc, "unknown plugin '%s' (searched: %s)", name,
                        path ? (*path ? path : "no directories") : "?");
    free(path);
    return code;
  }
  if (rc != APEX_OK)
    return cli_fail(json, rc, "cannot load plugin '%s': %s", name,
                    err ? apex_error_message(err) : apex_strerror(rc));
  *desc = apex_manager_plugin(m, name);
  if (!*desc) return cli_fail(json, APEX_E_PLUGIN_LOAD, "plugin '%s' did not load", name);
  return CLI_EXIT_OK;
}

const apex_action_desc_t *cli_find_action(const apex_plugin_desc_t *d, const char *name) {
  for (size_t i = 0; i < d->n_actions; i++) {
    const apex_action_desc_t *a = apex_plugin_desc_action(d, i);
    if (a->name && strcmp(a->name, name) == 0) return a;
  }
  return NULL;
}

void cli_action_names(const apex_plugin_desc_t *d, char *buf, size_t len) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < d->n_actions && used < len; i++) {
    int n = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", apex_plugin_desc_action(d, i)->name);
    if (n < 0) break;
    used += (size_t)n;
  }
}

int cli_split_target(const char *target, char *buf, size_t len, const char **plugin,
                     const char **action) {
  size_t n = strlen(target);
  if (n >= len) return -1;
  memcpy(buf, target, n + 1);
  char *dot = strchr(buf, '.');
  *action = NULL;
  if (dot) {
    *dot = '\0';
    *action = dot + 1;
  }
  *plugin = buf;
  return 0;
}
