/* The durable-task commands: `apex tasks`, `show ID`, `cancel ID`, `watch
 * ID` and `resume`, and where their store lives (cli_store_path).
 *
 * The store is an SQLite file several processes open at once (the library
 * shares it safely, docs/store.md): a detached runner (run.c, cli_detach)
 * runs a task and journals it while these commands read it (tasks, show,
 * watch), ask it to stop (cancel: apex_store_cancel, which the runner's
 * manager sees within about a second) or, for tasks no live process holds
 * any more (their process was killed), take them over (resume: a manager
 * on the store, every plugin loaded, apex_manager_recover, then a live
 * view until they all ended). So tasks, show, cancel and watch never run
 * plugin code and never hold a task.
 *
 * Output: a table (tasks) or text (show) on a terminal, JSON with --json or
 * when stdout is not a terminal (tasks: one JSON object per task per line;
 * show: the store's object; watch and resume: JSON Lines events as `run`
 * writes them: progress, then one result line per task).
 *
 * Exit codes: 0; 1 for a store that cannot be opened or read; 2 for a bad
 * ID or an unknown one; watch exits as `run` would for the task's outcome
 * (0, 1, 124 timed out, 130 cancelled); resume 0 when every task it took
 * over succeeded, else 1 (130 after Ctrl-C, which cancels them as `run`
 * does).
 *
 * Threads: main thread only; resume polls what it took over
 * (apex_manager_task_info, five times a second) rather than taking events,
 * so nothing here runs on a library thread. Which tasks it took over: the
 * unfinished ones the store listed before apex_manager_recover that are
 * live in its manager after it (apex_ops_find, which looks past a task's
 * moment between the queue and its first attempt), or that recovery ended
 * at once. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------- the store */

/* mkdir -p of dir (0700: task params may be private). Returns: 0 or -1. */
static int make_dirs(char *dir) {
  for (char *p = dir + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    int rc = mkdir(dir, 0700);
    *p = '/';
    if (rc != 0 && errno != EEXIST) return -1;
  }
  return mkdir(dir, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

char *cli_store_path(const cli_opts_t *o) {
  if (o->store) {
    if (!*o->store) {
      cli_fail(o->json, APEX_E_INVALID, "--store: empty path");
      return NULL;
    }
    char *s = strdup(o->store);
    if (!s) cli_fail(o->json, APEX_E_NOMEM, "out of memory");
    return s;
  }
  /* APEX_STORE: the store of every command without --store (a shared
   * postgresql://... queue, typically). */
  const char *env = getenv("APEX_STORE");
  if (env && *env) {
    char *s = strdup(env);
    if (!s) cli_fail(o->json, APEX_E_NOMEM, "out of memory");
    return s;
  }
  const char *xdg = getenv("XDG_STATE_HOME");
  const char *home = getenv("HOME");
  char dir[PATH_MAX];
  int n;
  if (xdg && xdg[0] == '/')
    n = snprintf(dir, sizeof dir, "%s/apex", xdg);
  else if (home && home[0] == '/')
    n = snprintf(dir, sizeof dir, "%s/.local/state/apex", home);
  else {
    cli_fail(o->json, APEX_E_INVALID,
             "no store: set --store PATH, or XDG_STATE_HOME or HOME for the default");
    return NULL;
  }
  if (n < 0 || (size_t)n + sizeof "/tasks.db" > sizeof dir) {
    cli_fail(o->json, APEX_E_INVALID, "the state folder's path is too long");
    return NULL;
  }
  if (make_dirs(dir) != 0) {
    cli_fail(o->json, APEX_E_IO, "cannot make the state folder '%s': %s", dir, strerror(errno));
    return NULL;
  }
  strcat(dir, "/tasks.db");
  char *s = strdup(dir);
  if (!s) cli_fail(o->json, APEX_E_NOMEM, "out of memory");
  return s;
}

/* Opens the command's store. Returns: CLI_EXIT_OK and *out, or the exit
 * code (reported). */
static int open_store(const cli_opts_t *o, apex_store_t **out) {
  char *path = cli_store_path(o);
  if (!path) return CLI_EXIT_FAILED;
  apex_error_t *err = NULL;
  int rc = apex_store_open(path, out, &err);
  int code = CLI_EXIT_OK;
  if (rc != APEX_OK) {
    /* Not usage: the store is there (or not) whatever the command line. */
    /* The library's message names the file already ("store 'PATH': ...",
     * include/apex/apex.h): said once, not twice. */
    const char *msg = err ? apex_error_message(err) : NULL;
    if (msg && strncmp(msg, "store '", 7) == 0)
      cli_fail(o->json, rc, "%s", msg);
    else
      cli_fail(o->json, rc, "store '%s': %s", path, msg ? msg : apex_strerror(rc));
    code = CLI_EXIT_FAILED;
  }
  apex_error_unref(err);
  free(path);
  return code;
}

/* Reports that the store has no task id, naming the store: an id from
 * another store (a `--store` left off, or given to the wrong command) is
 * the usual cause, and the path says which one was read. Returns: the exit
 * code. */
static int no_task(const cli_opts_t *o, int rc, uint64_t id) {
  char *path = cli_store_path(o);
  int code = cli_fail(o->json, rc, "no task %llu in the store '%s'%s", (unsigned long long)id,
                      path ? path : "?", o->store ? "" : " (the default: give --store PATH for another)");
  free(path);
  return code;
}

/* Parses the ID argument. Returns: the id, or 0 after reporting. */
static uint64_t parse_id(const cli_opts_t *o) {
  const char *v = o->target;
  if (!v) {
    cli_fail(o->json, APEX_E_INVALID, "%s: missing the task ID (see apex tasks)", o->command);
    return 0;
  }
  int plain = *v && strspn(v, "0123456789") == strlen(v) && strlen(v) < 20;
  unsigned long long id = plain ? strtoull(v, NULL, 10) : 0;
  if (!id) cli_fail(o->json, APEX_E_INVALID, "%s: '%s' is not a task ID", o->command, v);
  return (uint64_t)id;
}

/* Reads task id from s. Returns: CLI_EXIT_OK and *out, or the exit code
 * (reported: an id the store does not know is the command line's fault). */
static int get_task(const cli_opts_t *o, apex_store_t *s, uint64_t id, json_t **out) {
  apex_error_t *err = NULL;
  int rc = apex_store_get(s, id, out, &err);
  int code = CLI_EXIT_OK;
  if (rc != APEX_OK) {
    if (rc == APEX_E_INVALID)
      code = no_task(o, rc, id);
    else
      code = cli_fail(o->json, rc, "cannot read task %llu: %s", (unsigned long long)id,
                      err ? apex_error_message(err) : apex_strerror(rc));
    if (code == CLI_EXIT_OK) code = CLI_EXIT_FAILED;
  }
  apex_error_unref(err);
  return code;
}

/* ------------------------------------------------------------ formatting */

static const char *jstr(const json_t *o, const char *key, const char *dflt) {
  const char *s = json_string_value(json_object_get(o, key));
  return s ? s : dflt;
}

/* "3s", "12m", "5h", "2d": how long ago t (epoch seconds) was. */
static void format_age(double t, char *buf, size_t len) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  double age = (double)now.tv_sec + now.tv_nsec / 1e9 - t;
  if (!isfinite(age) || age < 0) age = 0;
  if (age < 120) snprintf(buf, len, "%.0fs", age);
  else if (age < 7200) snprintf(buf, len, "%.0fm", age / 60);
  else if (age < 172800) snprintf(buf, len, "%.0fh", age / 3600);
  else snprintf(buf, len, "%.0fd", age / 86400);
}

/* The task's percentage as shown: 100 once it succeeded (the summary the
 * store keeps is the last one saved with a checkpoint or heartbeat, which
 * may predate the end), else the stored one; -1 for none. */
static double progress_pct(const json_t *task) {
  const char *state = json_string_value(json_object_get(task, "state"));
  if (state && strcmp(state, "succeeded") == 0) return 100.0;
  json_t *p = json_object_get(json_object_get(task, "progress"), "percentage");
  return json_is_number(p) ? json_number_value(p) : -1;
}

/* The exit code of a terminal state, as `apex run` gives it. */
static int state_exit_code(const char *state, const json_t *error) {
  if (strcmp(state, "succeeded") == 0) return CLI_EXIT_OK;
  if (strcmp(state, "timed_out") == 0) return CLI_EXIT_TIMEOUT;
  if (strcmp(state, "cancelled") == 0) return CLI_EXIT_CANCELLED;
  (void)error;
  return CLI_EXIT_FAILED;
}

static int is_terminal_name(const char *state) {
  return strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 ||
         strcmp(state, "cancelled") == 0 || strcmp(state, "timed_out") == 0;
}

/* ----------------------------------------------------------- apex tasks */

/* --state a,b: APEX_OPS_STATE bits. Returns: 0 and *bits, or -1 (reported). */
static int parse_states(const cli_opts_t *o, unsigned *bits) {
  *bits = 0;
  if (!o->state) return 0;
  char buf[256];
  if (strlen(o->state) >= sizeof buf) {
    cli_fail(o->json, APEX_E_INVALID, "--state: '%s' is too long", o->state);
    return -1;
  }
  strcpy(buf, o->state);
  for (char *save = NULL, *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
    int found = 0;
    for (int s = APEX_TASK_QUEUED; s <= APEX_TASK_SCHEDULED; s++) {
      const char *name = apex_task_state_name((apex_task_state_t)s);
      if (strcmp(name, w) == 0) {
        *bits |= APEX_OPS_STATE(s);
        found = 1;
      }
    }
    if (!found) {
      cli_fail(o->json, APEX_E_INVALID,
               "--state: '%s' is not a task state (queued, scheduled, running, retry_wait, "
               "succeeded, failed, cancelled, timed_out)",
               w);
      return -1;
    }
  }
  return 0;
}

int cli_cmd_tasks(const cli_opts_t *o) {
  if (o->target) return cli_fail(o->json, APEX_E_INVALID, "tasks: unexpected argument '%s'", o->target);
  apex_store_filter_t f = APEX_STORE_FILTER_INIT;
  if (parse_states(o, &f.states) != 0) return CLI_EXIT_USAGE;
  long want = o->limit > 0 ? o->limit : 50;
  apex_store_t *s = NULL;
  int code = open_store(o, &s);
  if (code != CLI_EXIT_OK) return code;
  /* Newest last, as a log reads: page through in id order, keep the last
   * `want`. */
  json_t *rows = json_array();
  if (!rows) {
    apex_store_close(s);
    return cli_fail(o->json, APEX_E_NOMEM, "out of memory");
  }
  f.limit = 1000;
  for (;;) {
    json_t *page = NULL;
    apex_error_t *err = NULL;
    int rc = apex_store_list(s, &f, &page, &err);
    if (rc != APEX_OK) {
      code = cli_fail(o->json, rc, "cannot list the tasks: %s",
                      err ? apex_error_message(err) : apex_strerror(rc));
      apex_error_unref(err);
      break;
    }
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(page, "tasks"), i, t) {
      json_array_append(rows, t);
      if ((long)json_array_size(rows) > want) json_array_remove(rows, 0);
    }
    json_t *next = json_object_get(page, "next");
    int more = json_is_integer(next);
    if (more) f.after_id = (uint64_t)json_integer_value(next);
    json_decref(page);
    if (!more) break;
  }
  apex_store_close(s);
  if (code != CLI_EXIT_OK) {
    json_decref(rows);
    return code;
  }
  size_t i;
  json_t *t;
  if (o->json) {
    json_array_foreach(rows, i, t) {
      char age[16];
      json_t *created = json_object_get(t, "created_at");
      format_age(json_is_number(created) ? json_number_value(created) : 0, age, sizeof age);
      double pct = progress_pct(t);
      json_t *line = json_pack("{s:O, s:s, s:s, s:s, s:o, s:O, s:s}", "id", json_object_get(t, "id"),
                               "plugin", jstr(t, "plugin", "?"), "action", jstr(t, "action", "?"),
                               "state", jstr(t, "state", "?"),
                               "percentage", pct >= 0 ? json_real(pct) : json_null(),
                               "created_at", created ? created : json_null(), "age", age);
      cli_emit(line);
    }
  } else {
    printf("%-8s %-28s %-11s %8s %6s\n", "ID", "ACTION", "STATE", "PROGRESS", "AGE");
    json_array_foreach(rows, i, t) {
      char action[256], age[16], pct_s[16];
      snprintf(action, sizeof action, "%s.%s", jstr(t, "plugin", "?"), jstr(t, "action", "?"));
      json_t *created = json_object_get(t, "created_at");
      format_age(json_is_number(created) ? json_number_value(created) : 0, age, sizeof age);
      double pct = progress_pct(t);
      if (pct >= 0) snprintf(pct_s, sizeof pct_s, "%.1f%%", pct);
      else snprintf(pct_s, sizeof pct_s, "-");
      char *clean = cli_term_clean(action);
      printf("%-8lld %-28s %-11s %8s %6s\n", (long long)json_integer_value(json_object_get(t, "id")),
             clean ? clean : "?", jstr(t, "state", "?"), pct_s, age);
      free(clean);
    }
    if (json_array_size(rows) == 0) printf("(no tasks)\n");
    fflush(stdout);
  }
  json_decref(rows);
  return CLI_EXIT_OK;
}

/* ------------------------------------------------------------ apex show */

/* The most of one value `show` prints on a terminal: params, a checkpoint
 * or a cancel reason may be megabytes (a 1 MiB checkpoint is legal), which
 * would bury the rest of the view; --json has every byte. */
#define SHOW_MAX_BYTES 2048

/* Cuts s (malloc'd, NUL-terminated) to SHOW_MAX_BYTES at a UTF-8 character
 * boundary, appending how much there was. Returns: s, or a new string (s
 * freed), or NULL when memory ran out (s freed). */
static char *cut_long(char *s) {
  size_t len = strlen(s);
  if (len <= SHOW_MAX_BYTES) return s;
  size_t cut = SHOW_MAX_BYTES;
  while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80) cut--;
  char tail[96];
  snprintf(tail, sizeof tail, "... (%zu bytes in all; --json shows them)", len);
  char *out = malloc(cut + strlen(tail) + 1);
  if (out) {
    memcpy(out, s, cut);
    strcpy(out + cut, tail);
  }
  free(s);
  return out;
}

static void print_field(const char *name, const json_t *v) {
  if (!v) return;
  char *s = json_is_string(v) ? strdup(json_string_value(v))
                              : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY |
                                                  JSON_REAL_PRECISION(15));
  if (s) s = cut_long(s);
  char *clean = s ? cli_term_clean(s) : NULL;
  printf("%-17s %s\n", name, clean ? clean : "?");
  free(clean);
  free(s);
}

static void print_time(const char *name, const json_t *v) {
  if (!json_is_number(v)) return;
  time_t t = (time_t)json_number_value(v);
  struct tm tm;
  char buf[64], age[16];
  if (!localtime_r(&t, &tm) || !strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %z", &tm)) return;
  format_age(json_number_value(v), age, sizeof age);
  printf("%-17s %s (%s ago)\n", name, buf, age);
}

/* One entry of the store's history of a task (apex_store_get's "events"):
 * "  11:10:13.192  running     attempt 1  note". Anything else as JSON. */
static void print_event(const json_t *ev) {
  const json_t *at = json_object_get(ev, "at");
  const char *state = json_string_value(json_object_get(ev, "state"));
  const char *note = json_string_value(json_object_get(ev, "note"));
  struct tm tm;
  char buf[32];
  double when = json_number_value(at);
  time_t t = (time_t)when;
  if (!json_is_number(at) || !state || !localtime_r(&t, &tm) ||
      !strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm)) {
    print_field("  -", ev);
    return;
  }
  int ms = (int)((when - (double)t) * 1000.0);
  /* A note quotes a cancel reason, which may be long and any text. */
  char *n = note ? strdup(note) : NULL;
  if (n) n = cut_long(n);
  char *clean = n ? cli_term_clean(n) : NULL;
  printf("  %s.%03d  %-10s  attempt %lld%s%s\n", buf, ms < 0 ? 0 : ms > 999 ? 999 : ms, state,
         (long long)json_integer_value(json_object_get(ev, "attempt")), clean ? "  " : "",
         clean ? clean : "");
  free(clean);
  free(n);
}

int cli_cmd_show(const cli_opts_t *o) {
  uint64_t id = parse_id(o);
  if (!id) return CLI_EXIT_USAGE;
  apex_store_t *s = NULL;
  int code = open_store(o, &s);
  if (code != CLI_EXIT_OK) return code;
  json_t *t = NULL;
  code = get_task(o, s, id, &t);
  apex_store_close(s);
  if (code != CLI_EXIT_OK) return code;
  if (o->json) {
    cli_emit(t);
    return CLI_EXIT_OK;
  }
  /* Every field the store keeps, the usual ones first and in this order,
   * then whatever else it has (so a field added later is shown too). */
  static const char *const order[] = {
      "id", "plugin", "action", "plugin_version", "state", "attempts", "params", "progress",
      "partial_result", "result", "error", "checkpoint", "idempotency_key", "owner",
      "cancel_requested", "cancel_reason", "run_at", "deadline", "lease_until", "created_at",
      "updated_at", "ended_at", "events"};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
    const json_t *v = json_object_get(t, order[i]);
    if (!v) continue;
    if (strcmp(order[i], "created_at") == 0 || strcmp(order[i], "updated_at") == 0 ||
        strcmp(order[i], "run_at") == 0 || strcmp(order[i], "deadline") == 0 ||
        strcmp(order[i], "ended_at") == 0 || strcmp(order[i], "lease_until") == 0)
      print_time(order[i], v);
    else if (strcmp(order[i], "events") == 0 && json_is_array(v)) {
      size_t k;
      json_t *ev;
      printf("events\n");
      json_array_foreach(v, k, ev) print_event(ev);
    } else
      print_field(order[i], v);
  }
  const char *key;
  json_t *v;
  json_object_foreach(t, key, v) {
    int known = 0;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
      if (strcmp(order[i], key) == 0) known = 1;
    if (!known) print_field(key, v);
  }
  fflush(stdout);
  json_decref(t);
  return CLI_EXIT_OK;
}

/* ---------------------------------------------------------- apex cancel */

int cli_cmd_cancel(const cli_opts_t *o) {
  uint64_t id = parse_id(o);
  if (!id) return CLI_EXIT_USAGE;
  apex_store_t *s = NULL;
  int code = open_store(o, &s);
  if (code != CLI_EXIT_OK) return code;
  apex_error_t *err = NULL;
  int rc = apex_store_cancel(s, id, "user", &err);
  apex_store_close(s);
  if (rc == APEX_E_ALREADY) {
    /* Not an error: what the user wanted is (or will be) so. */
    if (o->json)
      cli_emit(json_pack("{s:s, s:I, s:b}", "event", "cancel", "task", (json_int_t)id, "already",
                         1));
    else
      printf("task %llu has ended or is being cancelled already\n", (unsigned long long)id);
    apex_error_unref(err);
    return CLI_EXIT_OK;
  }
  if (rc != APEX_OK) {
    code = rc == APEX_E_INVALID
               ? no_task(o, rc, id)
               : cli_fail(o->json, rc, "cannot cancel task %llu: %s", (unsigned long long)id,
                          err ? apex_error_message(err) : apex_strerror(rc));
    apex_error_unref(err);
    return code ? code : CLI_EXIT_FAILED;
  }
  if (o->json)
    cli_emit(json_pack("{s:s, s:I, s:b}", "event", "cancel", "task", (json_int_t)id, "already", 0));
  else
    printf("cancel requested for task %llu\n", (unsigned long long)id);
  return CLI_EXIT_OK;
}

/* ----------------------------------------------------------- apex watch */

static atomic_int g_stop; /* the signal that stops watch or resume, 0: none */

static void on_stop(int sig) { atomic_store(&g_stop, sig); }

static int catch_stop_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
      sigaction(SIGHUP, &sa, NULL) != 0)
    return -1;
  return 0;
}

/* Sleeps ms unless a stop signal comes first. */
static void nap(int ms) {
  if (!atomic_load(&g_stop)) poll(NULL, 0, ms);
}

/* One terminal line for a task: "[####----]  42.0%  step 4/10  (running)". */
static void draw_line(const json_t *t, int first) {
  double pct = progress_pct(t);
  const char *msg = jstr(json_object_get(t, "progress"), "message", "");
  cli_row_t row = {.cols_left = 0};
  int cols, rows;
  cli_term_size(STDOUT_FILENO, &cols, &rows);
  row.cols_left = cols - 1;
  char head[64];
  snprintf(head, sizeof head, "%lld ", (long long)json_integer_value(json_object_get(t, "id")));
  cli_row_text(&row, head);
  cli_row_bar(&row, pct >= 0 ? pct : 0, 20);
  char mid[64];
  snprintf(mid, sizeof mid, " %5.1f%%  ", pct >= 0 ? pct : 0.0);
  cli_row_text(&row, mid);
  cli_row_text(&row, msg);
  cli_row_text(&row, "  (");
  cli_row_text(&row, jstr(t, "state", "?"));
  cli_row_text(&row, ")");
  if (!row.oom) {
    if (!first) fputs("\r\x1b[K", stdout);
    fwrite(row.p, 1, row.len, stdout);
    fflush(stdout);
  }
  free(row.p);
}

/* A JSON progress line, as `run` writes them, when the summary changed. */
static void emit_progress(const json_t *t, json_t **last) {
  json_t *p = json_object_get(t, "progress");
  if (!p || (*last && json_equal(p, *last))) return;
  json_decref(*last);
  *last = json_deep_copy(p);
  cli_emit(json_pack("{s:s, s:O, s:s, s:O}", "event", "progress", "task", json_object_get(t, "id"),
                     "state", jstr(t, "state", "?"), "progress", p));
}

/* The result line of an ended task: {"event":"result","task","state",
 * "result"|"error"}. */
static void emit_result(const json_t *t) {
  json_t *o = json_pack("{s:s, s:O, s:s}", "event", "result", "task", json_object_get(t, "id"),
                        "state", jstr(t, "state", "?"));
  if (o && json_object_get(t, "result"))
    json_object_set(o, "result", json_object_get(t, "result"));
  if (o && json_object_get(t, "error")) json_object_set(o, "error", json_object_get(t, "error"));
  cli_emit(o);
}

static void print_result(const json_t *t) {
  const char *state = jstr(t, "state", "?");
  const json_t *v = strcmp(state, "succeeded") == 0 ? json_object_get(t, "result")
                                                    : json_object_get(json_object_get(t, "error"),
                                                                      "message");
  char *s = v ? (json_is_string(v) ? strdup(json_string_value(v))
                                   : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY))
              : strdup("null");
  char *clean = s ? cli_term_clean(s) : NULL;
  printf("%s: %s\n", state, clean ? clean : "?");
  fflush(stdout);
  free(clean);
  free(s);
}

/* How often watch reads the store: often enough for a live bar, cheap for
 * SQLite (one indexed read). */
#define WATCH_INTERVAL_MS 200

int cli_cmd_watch(const cli_opts_t *o) {
  uint64_t id = parse_id(o);
  if (!id) return CLI_EXIT_USAGE;
  if (catch_stop_signals() != 0)
    return cli_fail(o->json, APEX_E_IO, "cannot handle signals: %s", strerror(errno));
  apex_store_t *s = NULL;
  int code = open_store(o, &s);
  if (code != CLI_EXIT_OK) return code;
  json_t *last = NULL;
  int first = 1, hinted = 0;
  for (;;) {
    json_t *t = NULL;
    code = get_task(o, s, id, &t);
    if (code != CLI_EXIT_OK) break;
    const char *state = jstr(t, "state", "?");
    int done = is_terminal_name(state);
    if (o->json) {
      emit_progress(t, &last);
      if (done) emit_result(t);
    } else {
      draw_line(t, first);
      first = 0;
      if (done) {
        fputc('\n', stdout);
        print_result(t);
      }
    }
    if (done) code = state_exit_code(state, json_object_get(t, "error"));
    /* A running task whose lease ran out has no live process: nothing will
     * move until someone resumes it. Said once, on stderr. */
    json_t *lease = json_object_get(t, "lease_until");
    if (!done && !hinted && strcmp(state, "running") == 0 && json_is_number(lease)) {
      struct timespec now;
      clock_gettime(CLOCK_REALTIME, &now);
      if (json_number_value(lease) < (double)now.tv_sec) {
        hinted = 1;
        if (!o->json) fputc('\n', stdout);
        fprintf(stderr,
                "apex: task %llu: no live process holds it (its lease ran out); `apex resume` "
                "continues it\n",
                (unsigned long long)id);
        first = 1;
      }
    }
    json_decref(t);
    if (done) break;
    if (atomic_load(&g_stop) || cli_output_failed()) {
      /* Watching stops; the task goes on (apex cancel stops it). */
      if (!o->json) fputc('\n', stdout);
      code = CLI_EXIT_SIGNAL_BASE + atomic_load(&g_stop);
      break;
    }
    nap(WATCH_INTERVAL_MS);
  }
  json_decref(last);
  apex_store_close(s);
  return code;
}

/* ---------------------------------------------------------- apex resume */

/* Loads every plugin on the search path, so each recovered task finds its
 * own (one that fails to load makes its tasks end failed, named, in
 * recovery: not the command's failure). */
static void load_plugins(apex_manager_t *m) {
  apex_error_t *err = NULL;
  if (apex_manager_load_all(m, &err) != APEX_OK && err) {
    char *clean = cli_term_clean(apex_error_message(err));
    fprintf(stderr, "apex: warn: %s\n", clean ? clean : "a plugin did not load");
    free(clean);
  }
  apex_error_unref(err);
}

int cli_cmd_resume(const cli_opts_t *o) {
  if (o->target) return cli_fail(o->json, APEX_E_INVALID, "resume: unexpected argument '%s'", o->target);
  if (catch_stop_signals() != 0)
    return cli_fail(o->json, APEX_E_IO, "cannot handle signals: %s", strerror(errno));
  char *path = cli_store_path(o);
  if (!path) return CLI_EXIT_FAILED;
  cli_opts_t mo = *o;
  mo.store = path;
  mo.workers = 4;
  /* An owner id of our own, to tell the rows recovery gave us. */
  char owner[64];
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  snprintf(owner, sizeof owner, "resume-%d-%lld%09ld", (int)getpid(), (long long)now.tv_sec,
           now.tv_nsec);
  mo.store_owner = owner;
  /* A little before recovery: an end it records is not older (the clock
   * the store uses is this one, CLOCK_REALTIME). */
  double t_recover = (double)now.tv_sec + now.tv_nsec / 1e9 - 1.0;
  apex_manager_t *m = NULL;
  int code = cli_manager_new(&mo, NULL, NULL, NULL, NULL, &m);
  if (code != CLI_EXIT_OK) {
    free(path);
    return code;
  }
  load_plugins(m);
  /* The unfinished tasks before recovery: the ones it may take over. */
  apex_store_t *s = apex_manager_store(m);
  json_t *before = json_array();
  apex_store_filter_t f = APEX_STORE_FILTER_INIT;
  f.states = APEX_OPS_STATE(APEX_TASK_QUEUED) | APEX_OPS_STATE(APEX_TASK_RUNNING) |
             APEX_OPS_STATE(APEX_TASK_RETRY_WAIT) | APEX_OPS_STATE(APEX_TASK_SCHEDULED);
  f.limit = 10000;
  for (;;) {
    json_t *page = NULL;
    if (!s || !before || apex_store_list(s, &f, &page, NULL) != APEX_OK) break;
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(page, "tasks"), i, t)
      json_array_append(before, json_object_get(t, "id"));
    json_t *next = json_object_get(page, "next");
    int more = json_is_integer(next);
    if (more) f.after_id = (uint64_t)json_integer_value(next);
    json_decref(page);
    if (!more) break;
  }
  size_t n = 0;
  apex_error_t *err = NULL;
  int rc = apex_manager_recover(m, &n, &err);
  if (rc != APEX_OK) {
    code = cli_fail(o->json, rc, "cannot resume from '%s': %s", path,
                    err ? apex_error_message(err) : apex_strerror(rc));
    apex_error_unref(err);
    json_decref(before);
    apex_manager_destroy(m, 0);
    free(path);
    return code ? code : CLI_EXIT_FAILED;
  }
  /* What recovery took over (n tasks): each task of the list that is live
   * in this manager (apex_ops_find), or whose row names this manager's
   * owner (a task between the scheduler and its first attempt, whose claim
   * is being written, is in neither of the manager's lists for that long),
   * or that ended since the recovery began (it may end a task at once: a
   * non-resumable one cut off mid-run, a missing plugin; the user should
   * hear of it). A task another live process runs is none of these: it is
   * left alone. Looked for until all n are found, for at most two seconds. */
  json_t *ids = json_array();
  size_t nb = json_array_size(before);
  char *taken = calloc(nb ? nb : 1, 1);
  int64_t find_end = cli_now_ms() + 2000;
  while (ids && taken && json_array_size(ids) < n) {
    for (size_t bi = 0; bi < nb; bi++) {
      if (taken[bi]) continue;
      json_t *bid = json_array_get(before, bi);
      uint64_t id = (uint64_t)json_integer_value(bid);
      apex_task_t *t = NULL;
      json_t *info = NULL;
      int mine = apex_ops_find(m, id, &t) == APEX_OK;
      apex_task_release(t);
      if (!mine && apex_store_get(s, id, &info, NULL) == APEX_OK) {
        const char *ow = jstr(info, "owner", "");
        json_t *ended = json_object_get(info, "ended_at");
        size_t ol = strlen(mo.store_owner);
        /* The row names the owner's id, or its id and life ("ID#NONCE"). */
        mine = (strncmp(ow, mo.store_owner, ol) == 0 && (ow[ol] == '\0' || ow[ol] == '#')) ||
               (is_terminal_name(jstr(info, "state", "?")) && json_is_number(ended) &&
                json_number_value(ended) >= t_recover);
      }
      json_decref(info);
      if (mine) {
        taken[bi] = 1;
        json_array_append(ids, bid);
      }
    }
    if (json_array_size(ids) >= n || cli_now_ms() > find_end) break;
    nap(5);
  }
  free(taken);
  json_decref(before);
  if (!o->json) {
    printf("resuming %zu task%s from %s\n", n, n == 1 ? "" : "s", path);
    fflush(stdout);
  } else {
    cli_emit(json_pack("{s:s, s:n, s:I, s:s}", "event", "resume", "task", "tasks", (json_int_t)n,
                       "store", path));
  }
  size_t n_ids = json_array_size(ids);
  json_t **last = calloc(n_ids ? n_ids : 1, sizeof *last);
  char *ended = calloc(n_ids ? n_ids : 1, 1);
  int all_ok = 1, drawn = 0, cancelled = 0;
  size_t n_ok = 0;
  json_t *failures = json_array();
  for (;;) {
    if (atomic_load(&g_stop) && !cancelled) {
      /* As `run`: the first Ctrl-C cancels what runs and waits for it. */
      cancelled = 1;
      if (!o->json) fprintf(stderr, "apex: cancelling %zu task%s\n", n_ids, n_ids == 1 ? "" : "s");
      (void)apex_ops_cancel(m, NULL, "user", NULL);
    }
    size_t live = 0;
    if (!o->json && drawn) printf("\x1b[%dA", drawn);
    drawn = 0;
    for (size_t i = 0; i < n_ids; i++) {
      uint64_t id = (uint64_t)json_integer_value(json_array_get(ids, i));
      json_t *t = NULL;
      if (apex_manager_task_info(m, id, &t, NULL) != APEX_OK &&
          (!s || apex_store_get(s, id, &t, NULL) != APEX_OK))
        continue;
      const char *state = jstr(t, "state", "?");
      int done = is_terminal_name(state);
      if (!done) live++;
      if (o->json) {
        if (!ended[i]) emit_progress(t, &last[i]);
        if (done && !ended[i]) emit_result(t);
      } else {
        draw_line(t, 0);
        fputc('\n', stdout);
        drawn++;
      }
      if (done && !ended[i]) {
        ended[i] = 1;
        if (strcmp(state, "succeeded") != 0) {
          all_ok = 0;
          /* Kept for the closing lines: what went wrong is worth a line. */
          if (!o->json && failures) json_array_append(failures, t);
        } else {
          n_ok++;
        }
      }
      json_decref(t);
    }
    fflush(stdout);
    if (live == 0) break;
    nap(WATCH_INTERVAL_MS);
  }
  if (!o->json) {
    printf("%zu of %zu resumed task%s succeeded\n", n_ok, n_ids, n_ids == 1 ? "" : "s");
    size_t k;
    json_t *t;
    json_array_foreach(failures, k, t) {
      printf("task %lld: ", (long long)json_integer_value(json_object_get(t, "id")));
      print_result(t);
    }
    fflush(stdout);
  }
  json_decref(failures);
  for (size_t i = 0; i < n_ids; i++) json_decref(last[i]);
  free(last);
  free(ended);
  json_decref(ids);
  apex_manager_destroy(m, 1000);
  free(path);
  if (cancelled) return CLI_EXIT_SIGNAL_BASE + atomic_load(&g_stop);
  return all_ok ? CLI_EXIT_OK : CLI_EXIT_FAILED;
}
