/* `apex batch FILE`: runs every line of a JSON Lines file as a task, under
 * the scheduler's limits, and reports each line's outcome once. This file
 * runs the lines; batch_opts.c parses the command line and batch_view.c
 * draws the live view (batch.h holds what they share).
 *
 * Input. One invocation per line, {"action": "PLUGIN.ACTION", "params"?:
 * {...}, "priority"?: "high"|"normal"|"low"|-100..100, "key"?: "..."};
 * blank lines are skipped, and lines are numbered as an editor numbers them
 * (blank ones counted). Each line is checked as it is read: one that is not
 * such an object (bad JSON, a missing or unknown member, a bad priority or
 * key), names a plugin that cannot be loaded, or that submit refuses
 * (unknown action, invalid params) gets its outcome at once ("failed",
 * task null) and the rest still run. FILE "-" is stdin.
 *
 * Memory: lines are read only as room frees. At most `window` lines are in
 * flight (submitted and their DONE not yet dispatched), so a file of a
 * million lines holds at most that many tasks; the rest wait in the file.
 * The window is the command's own count rather than a max_queued bound with
 * a blocking submit (apex_submit_opts_t.queue_wait_ms): this thread also
 * draws the display and answers signals, and must not block in submit. A
 * regular file is counted once up front for the overall bar; stdin is not.
 *
 * Threads: as in run.c, events are delivered with APEX_DELIVER_DISPATCH, so
 * every callback runs on the main thread inside apex_manager_dispatch(); the
 * main thread polls the manager's fd, the input and a self-pipe written by
 * the signal handler and the log sink (log_queue.c). Everything here but
 * the signal handler therefore runs on one thread and takes no lock. Each
 * task's callback gets its line's slot as event_user.
 *
 * Output: JSON Lines with --json or when stdout is not a terminal: every
 * event carries "line"; exactly one "result" per non-blank input line read
 * (malformed ones included), then one "summary" (format: README.md). In a
 * terminal, one block redrawn in place (display.c's rules): an overall bar,
 * the counts, one row per running task, capped to the terminal's height;
 * then a summary listing the lines that failed.
 *
 * Stop signals (SIGINT, SIGTERM, SIGHUP). The first cancels every task in
 * flight (reason "user" for Ctrl-C, else "SIGTERM" / "SIGHUP"), submits
 * nothing more, and reads the rest of the input so that every line still
 * gets its outcome (not started: cancelled; malformed: failed), unless the
 * input is a terminal, whose rest nobody has typed yet; the command
 * exits 128 + the signal once the cancelled tasks ended. A second one makes
 * the main thread write a cancelled outcome for each line still in flight
 * (its handler did not stop) and the summary, and _exit at once; lines not
 * read by then get none ("read_all": false). If the main thread cannot get
 * there (stuck in a plugin's init hook, or in a write to a stalled stdout),
 * alarm(2) ends the process FORCE_BACKSTOP_S later without it. Once the
 * summary is out (the manager being destroyed), a signal exits at once with
 * the exit code already decided. The handler touches only atomics, write(2),
 * alarm(2) and _exit(2).
 *
 * Output closed: SIGPIPE is ignored, so a failed write shows up in cli_emit;
 * every task is then cancelled ("output closed"), nothing more is read, and
 * the command exits 1 once they ended.
 *
 * What can fail: bad options (exit 2, named), FILE that cannot be opened
 * (exit 2), a limit the library refuses (exit 2, with its message), a
 * plugin named by --limit or --rate that cannot be loaded (as apex run),
 * reading the input (reported; exit 1), memory (a line's outcome says so). */
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batch.h"

#define MAX_LINE_BYTES (1 << 20) /* a longer line is malformed */
#define READ_CHUNK 65536
#define DEFAULT_WINDOW 1000
#define DEFAULT_WORKERS 8   /* a batch is mostly waiting on I/O */
#define MAX_WORKERS 256
#define LINES_PER_TURN 256  /* lines handled between two polls */
#define FAIL_LIST_MAX 100   /* failed lines the terminal summary lists */
#define FORCE_BACKSTOP_S 2

/* Where the run is, for the signal handler (see the top of the file). */
enum { PH_RUN, PH_DONE };
static atomic_int g_phase;
static atomic_int g_signo, g_force, g_final_code;
static atomic_int g_sig_wfd = -1;
static atomic_int g_cursor_hidden;

static void exit_now(int code) {
  if (atomic_load(&g_cursor_hidden)) cli_write_all(STDOUT_FILENO, "\r\n\x1b[?25h", 8);
  _exit(code);
}

static void on_signal(int sig) {
  int saved = errno;
  if (atomic_load(&g_phase) == PH_DONE) exit_now(atomic_load(&g_final_code));
  int none = 0;
  if (!atomic_compare_exchange_strong(&g_signo, &none, sig)) {
    none = 0;
    if (atomic_compare_exchange_strong(&g_force, &none, sig)) alarm(FORCE_BACKSTOP_S);
  }
  int fd = atomic_load(&g_sig_wfd);
  if (fd >= 0 && write(fd, "!", 1) < 0) {
    /* full (a wake-up is pending) or closed */
  }
  errno = saved;
}

static void on_alarm(int sig) {
  (void)sig;
  exit_now(CLI_EXIT_SIGNAL_BASE + atomic_load(&g_force));
}

static const int k_stop_signals[] = {SIGINT, SIGTERM, SIGHUP};

static int install_signals(int fds[2]) {
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
  atomic_store(&g_sig_wfd, fds[1]);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (size_t i = 0; i < sizeof k_stop_signals / sizeof k_stop_signals[0]; i++)
    if (sigaction(k_stop_signals[i], &sa, NULL) != 0) return -1;
  sa.sa_handler = on_alarm;
  return sigaction(SIGALRM, &sa, NULL);
}

static const char *signal_label(int sig) {
  return sig == SIGINT ? "Ctrl-C" : sig == SIGTERM ? "SIGTERM" : "SIGHUP";
}

/* A line above the live view (terminal) or on stderr. */
static void note(batch_t *b, const char *fmt, ...) APEX_PRINTF(2, 3);
static void note(batch_t *b, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  cli_batch_view_erase(b);
  cli_eprint(msg);
  fflush(stderr);
}

static void drain_logs(batch_t *b) {
  int level;
  char *msg;
  size_t dropped = 0;
  while (cli_log_pop(&level, &msg, &dropped)) {
    note(b, "%s: %s", cli_log_level_name(level), msg);
    free(msg);
  }
  if (dropped) note(b, "warn: %zu more log lines dropped (too many at once)", dropped);
}

/* -------------------------------------------------------------- outcomes */

/* {"line": N} then obj's members: the line number leads every event. */
static json_t *with_line(uint64_t line, json_t *obj) {
  if (!obj) return NULL;
  json_t *o = json_pack("{s:I}", "line", (json_int_t)line);
  if (!o || json_object_update(o, obj) != 0) {
    json_decref(o);
    o = NULL;
  }
  json_decref(obj);
  return o;
}

static void remember_failure(batch_t *b, uint64_t line, const char *action, const json_t *error) {
  if (b->n_fails >= FAIL_LIST_MAX || b->json) return;
  failure_t *f = &b->fails[b->n_fails];
  const char *code = json_string_value(json_object_get(error, "code"));
  const char *msg = json_string_value(json_object_get(error, "message"));
  f->line = line;
  f->action = action ? strdup(action) : NULL;
  f->code = strdup(code ? code : "?");
  f->message = strdup(msg ? msg : "");
  b->n_fails++;
}

/* Records and reports one line's outcome: the one "result" per line.
 * task_id 0: no task (the line failed before one existed). Ownership:
 * result borrowed, error taken. */
static void outcome(batch_t *b, uint64_t line, const char *action, uint64_t task_id,
                    apex_task_state_t state, const json_t *result, json_t *error) {
  switch (state) {
  case APEX_TASK_SUCCEEDED: b->succeeded++; break;
  case APEX_TASK_TIMED_OUT: b->timed_out++; break;
  case APEX_TASK_CANCELLED: b->cancelled++; break;
  default:
    b->failed++;
    if (!task_id) b->invalid++;
    break;
  }
  if (state == APEX_TASK_FAILED || state == APEX_TASK_TIMED_OUT)
    remember_failure(b, line, action, error);
  cli_batch_view_dirty(b);
  if (b->json) {
    json_t *o = json_pack("{s:I, s:s, s:o, s:o, s:s}", "line", (json_int_t)line, "event", "result",
                          "task", task_id ? json_integer((json_int_t)task_id) : json_null(),
                          "action", action ? json_string(action) : json_null(), "state",
                          apex_task_state_name(state));
    if (o && state == APEX_TASK_SUCCEEDED)
      json_object_set_new(o, "result", result ? json_deep_copy(result) : json_null());
    else if (o)
      json_object_set(o, "error", error);
    cli_emit(o);
  }
  json_decref(error);
}

/* An error object {"code", "message"} for a line that failed on its own. */
static json_t *line_error(int code, const char *fmt, ...) APEX_PRINTF(2, 3);
static json_t *line_error(int code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char clean[sizeof msg];
  cli_utf8_clean(clean, sizeof clean, msg); /* it may quote the line */
  return json_pack("{s:s, s:s}", "code", apex_status_name(code), "message", clean);
}

/* ------------------------------------------------------------- the tasks */

static int state_code(apex_task_state_t state) {
  return state == APEX_TASK_TIMED_OUT ? APEX_E_TIMEOUT
         : state == APEX_TASK_CANCELLED ? APEX_E_CANCELLED
                                        : APEX_E_EXECUTION;
}

static void slot_unlink(batch_t *b, slot_t *s) {
  if (s->prev) s->prev->next = s->next;
  else b->head = s->next;
  if (s->next) s->next->prev = s->prev;
  else b->tail = s->prev;
  b->in_flight--;
  switch (s->state) {
  case SL_QUEUED: b->n_queued--; break;
  case SL_RUNNING: b->n_running--; break;
  default: b->n_retry--; break;
  }
}

static void slot_free(slot_t *s) {
  apex_task_release(s->task);
  apex_progress_unref(s->progress);
  cli_progress_lines_free(s->pl);
  free(s->action);
  free(s);
}

static void slot_state(batch_t *b, slot_t *s, int st) {
  if (s->state == st) return;
  if (s->state == SL_QUEUED) b->n_queued--;
  else if (s->state == SL_RUNNING) b->n_running--;
  else b->n_retry--;
  if (st == SL_QUEUED) b->n_queued++;
  else if (st == SL_RUNNING) b->n_running++;
  else b->n_retry++;
  s->state = st;
  cli_batch_view_dirty(b);
}

#define UNWRITABLE_MESSAGE "the result cannot be written as JSON (text that is not UTF-8, or a cycle)"

static void on_done(batch_t *b, slot_t *s, const apex_event_t *ev) {
  apex_task_state_t state = ev->state;
  json_t *result = ev->result ? json_deep_copy(ev->result) : NULL;
  json_t *error = NULL;
  /* A result no line can hold fails the line, as apex run does. */
  if (state == APEX_TASK_SUCCEEDED && ev->result &&
      (!result || json_dumpb(result, NULL, 0, JSON_ENCODE_ANY) == 0)) {
    state = APEX_TASK_FAILED;
    error = json_pack("{s:s, s:s, s:s, s:I}", "code", apex_status_name(APEX_E_EXECUTION),
                      "message", UNWRITABLE_MESSAGE, "action", s->action, "task",
                      (json_int_t)s->task_id);
  } else if (state != APEX_TASK_SUCCEEDED) {
    error = cli_error_json(ev->error, state_code(state));
  }
  slot_unlink(b, s);
  outcome(b, s->line, s->action, s->task_id, state, result, error);
  json_decref(result);
  slot_free(s);
}

static void on_event(const apex_event_t *ev, void *user) {
  slot_t *s = user;
  batch_t *b = s->b;
  json_t *o = NULL;
  switch (ev->type) {
  case APEX_EVENT_ATTEMPT:
    slot_state(b, s, SL_RUNNING);
    if (b->json)
      o = json_pack("{s:s, s:I, s:i}", "event", "attempt", "task", (json_int_t)ev->task_id,
                    "attempt", (int)ev->attempt);
    break;
  case APEX_EVENT_PROGRESS:
    if (!ev->progress) break;
    if (!b->json) {
      apex_progress_unref(s->progress);
      s->progress = apex_progress_ref((apex_progress_t *)ev->progress);
      cli_batch_view_dirty(b);
    } else if (s->pl || (s->pl = cli_progress_lines_new()) != NULL) {
      o = cli_progress_line(s->pl, ev->task_id, ev->progress);
      if (!o) break;
      json_t *line = with_line(s->line, o);
      if (!line || cli_emit(line) != 0) cli_progress_lines_lost(s->pl);
      o = NULL;
    }
    break;
  case APEX_EVENT_RETRY:
    slot_state(b, s, SL_RETRY);
    if (b->json)
      o = json_pack("{s:s, s:I, s:i, s:f, s:o}", "event", "retry", "task", (json_int_t)ev->task_id,
                    "attempt", (int)ev->attempt, "delay_s", ev->retry_delay_s, "error",
                    cli_error_json(ev->error, APEX_E_EXECUTION));
    break;
  case APEX_EVENT_DONE: on_done(b, s, ev); return;
  case APEX_EVENT_PARTIAL: /* JSON mode: as apex run writes it; the live view has no room */
    if (b->json)
      o = json_pack("{s:s, s:I, s:i, s:o}", "event", "partial", "task", (json_int_t)ev->task_id,
                    "attempt", (int)ev->attempt, "partial_result", /* borrowed: a copy */
                    ev->result ? json_deep_copy(ev->result) : json_null());
    break;
  case APEX_EVENT_HEARTBEAT:
  case APEX_EVENT_SCHEDULED:
  case APEX_EVENT_GROUP: break; /* not asked for (cli_manager_new's event_mask) */
  }
  if (o) cli_emit(with_line(s->line, o));
}

/* The manager's callback: never called, as every task has its own. */
static void on_stray_event(const apex_event_t *ev, void *user) {
  (void)ev;
  (void)user;
}

/* The plugin a line names, loaded on first use. Returns: its entry, or
 * NULL on no memory. */
static plug_t *plugin_for(batch_t *b, const char *name) {
  for (size_t i = 0; i < b->n_plugs; i++)
    if (strcmp(b->plugs[i].name, name) == 0) return &b->plugs[i];
  plug_t *grown = realloc(b->plugs, (b->n_plugs + 1) * sizeof *grown);
  if (!grown) return NULL;
  b->plugs = grown;
  plug_t *p = &b->plugs[b->n_plugs];
  memset(p, 0, sizeof *p);
  if (!(p->name = strdup(name))) return NULL;
  b->n_plugs++;
  apex_error_t *err = NULL;
  int rc = apex_manager_load_named(b->m, name, &err);
  char msg[2048];
  if (rc == APEX_OK && !(p->desc = apex_manager_plugin(b->m, name))) rc = APEX_E_PLUGIN_LOAD;
  if (rc == APEX_E_PLUGIN_NOT_FOUND) {
    char *path = cli_search_path(b->m);
    snprintf(msg, sizeof msg, "unknown plugin '%s' (searched: %s)", name,
             path ? (*path ? path : "no directories") : "?");
    free(path);
  } else if (rc != APEX_OK) {
    snprintf(msg, sizeof msg, "cannot load plugin '%s': %s", name,
             err ? apex_error_message(err) : apex_strerror(rc));
  }
  apex_error_unref(err);
  p->code = rc;
  if (rc != APEX_OK) p->message = cli_utf8_dup(msg);
  return p;
}

static int is_blank(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!strchr(" \t\r\n\f\v", s[i])) return 0;
  return 1;
}

/* Parses a priority member. Returns: 0 and *out, or -1. */
static int line_priority(const json_t *v, int32_t *out) {
  const char *s = json_string_value(v);
  if (s) {
    if (strcmp(s, "high") == 0) *out = APEX_PRIORITY_HIGH;
    else if (strcmp(s, "normal") == 0) *out = APEX_PRIORITY_NORMAL;
    else if (strcmp(s, "low") == 0) *out = APEX_PRIORITY_LOW;
    else return -1;
    return 0;
  }
  if (!json_is_integer(v)) return -1;
  json_int_t n = json_integer_value(v);
  if (n < APEX_PRIORITY_MIN || n > APEX_PRIORITY_MAX) return -1;
  *out = (int32_t)n;
  return 0;
}

/* Checks one line. Returns: the line's object (new reference) with
 * *action, *params, *priority, *key borrowed from it, or NULL with *error
 * set (a new reference: the line's outcome) and, if the line has a string
 * "action" that fits, a copy of it in bad_action (else ""), so the outcome
 * of a line malformed elsewhere still names its action. */
static json_t *line_parse(const char *text, size_t len, const char **action, json_t **params,
                          int32_t *priority, const char **key, json_t **error, char *bad_action,
                          size_t bad_len) {
  bad_action[0] = '\0';
  json_error_t jerr;
  json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!j) {
    *error = line_error(APEX_E_INVALID, "invalid JSON at column %d: %s", jerr.column, jerr.text);
    return NULL;
  }
  *action = NULL;
  *params = NULL;
  *priority = APEX_PRIORITY_NORMAL;
  *key = NULL;
  const char *name;
  json_t *v;
  if (!json_is_object(j)) {
    *error = line_error(APEX_E_INVALID, "want a JSON object {\"action\": ..., \"params\": ...}");
    goto bad;
  }
  json_object_foreach(j, name, v) {
    if (strcmp(name, "action") == 0) {
      if (!(*action = json_string_value(v)) || !strchr(*action, '.') || **action == '.' ||
          (*action)[strlen(*action) - 1] == '.') {
        *error = line_error(APEX_E_INVALID, "action: want \"PLUGIN.ACTION\"");
        goto bad;
      }
    } else if (strcmp(name, "params") == 0) {
      if (!json_is_object(v)) {
        *error = line_error(APEX_E_INVALID_PARAMS, "params: want a JSON object");
        goto bad;
      }
      *params = v;
    } else if (strcmp(name, "priority") == 0) {
      if (line_priority(v, priority) != 0) {
        *error = line_error(APEX_E_INVALID,
                            "priority: want \"high\", \"normal\", \"low\" or an integer from "
                            "%d to %d", APEX_PRIORITY_MIN, APEX_PRIORITY_MAX);
        goto bad;
      }
    } else if (strcmp(name, "key") == 0) {
      size_t n = json_string_length(v);
      if (!json_is_string(v) || n == 0 || n > 255 || memchr(json_string_value(v), 0, n)) {
        *error = line_error(APEX_E_INVALID, "key: want a string of 1 to 255 bytes");
        goto bad;
      }
      *key = json_string_value(v);
    } else {
      *error = line_error(APEX_E_INVALID,
                          "unknown member '%s' (a line has action, params, priority, key)", name);
      goto bad;
    }
  }
  if (!*action) {
    *error = line_error(APEX_E_INVALID, "missing \"action\": \"PLUGIN.ACTION\"");
    goto bad;
  }
  return j;
bad:;
  const char *a = json_string_value(json_object_get(j, "action"));
  if (a && strlen(a) < bad_len) cli_utf8_clean(bad_action, bad_len, a);
  json_decref(j);
  return NULL;
}

/* Handles one non-blank line: its outcome now, or a task. */
static void run_line(batch_t *b, uint64_t line, const char *text, size_t len) {
  b->read++;
  const char *action, *key;
  json_t *params, *error = NULL;
  int32_t priority;
  char bad_action[256];
  json_t *j = line_parse(text, len, &action, &params, &priority, &key, &error, bad_action,
                         sizeof bad_action);
  if (!j) {
    outcome(b, line, bad_action[0] ? bad_action : NULL, 0, APEX_TASK_FAILED, NULL, error);
    return;
  }
  if (b->stop) {
    char msg[128];
    snprintf(msg, sizeof msg, "not started: the batch was cancelled by %s",
             signal_label(b->stop_sig));
    outcome(b, line, action, 0, APEX_TASK_CANCELLED, NULL,
            line_error(APEX_E_CANCELLED, "%s", msg));
    json_decref(j);
    return;
  }
  char pname[256];
  const char *dot = strchr(action, '.');
  size_t plen = (size_t)(dot - action);
  if (plen >= sizeof pname) {
    outcome(b, line, action, 0, APEX_TASK_FAILED, NULL,
            line_error(APEX_E_PLUGIN_NOT_FOUND, "unknown plugin: its name is too long"));
    json_decref(j);
    return;
  }
  memcpy(pname, action, plen);
  pname[plen] = '\0';
  plug_t *p = plugin_for(b, pname);
  if (!p || !p->desc) {
    int code = p ? p->code : APEX_E_NOMEM;
    outcome(b, line, action, 0, APEX_TASK_FAILED, NULL,
            line_error(code, "%s", p && p->message ? p->message : apex_strerror(code)));
    json_decref(j);
    return;
  }
  slot_t *s = calloc(1, sizeof *s);
  if (!s || !(s->action = strdup(action))) {
    free(s);
    outcome(b, line, action, 0, APEX_TASK_FAILED, NULL, line_error(APEX_E_NOMEM, "out of memory"));
    json_decref(j);
    return;
  }
  s->b = b;
  s->line = line;
  apex_submit_opts_t so;
  apex_submit_opts_init(&so);
  so.on_event = on_event;
  so.event_user = s;
  so.priority = priority;
  so.concurrency_key = key;
  if (b->o->base.timeout_s > 0) so.timeout_s = b->o->base.timeout_s;
  apex_retry_policy_t policy;
  const apex_action_desc_t *a = cli_find_action(p->desc, dot + 1);
  if (a && b->o->base.retries >= 0) {
    policy = a->default_retry;
    policy.max_attempts = (uint32_t)b->o->base.retries + 1;
    if (policy.initial_interval_s <= 0) policy.initial_interval_s = 0.1; /* as apex run */
    so.retry = &policy;
  }
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(b->m, pname, dot + 1, params, &so, &s->task, &err);
  json_decref(j);
  if (rc != APEX_OK) {
    json_t *e = cli_error_json(err, rc);
    apex_error_unref(err);
    outcome(b, line, s->action, 0, APEX_TASK_FAILED, NULL, e);
    free(s->action);
    free(s);
    return;
  }
  s->task_id = apex_task_id(s->task);
  s->state = SL_QUEUED;
  b->n_queued++;
  s->prev = b->tail;
  if (b->tail) b->tail->next = s;
  else b->head = s;
  b->tail = s;
  b->in_flight++;
  cli_batch_view_dirty(b);
}

/* ------------------------------------------------------------- the input */

/* Counts the non-blank lines of a regular file, for the overall bar. */
static int count_lines(int fd, uint64_t *out) {
  char *chunk = malloc(READ_CHUNK);
  if (!chunk) return -1;
  uint64_t n = 0;
  int content = 0;
  off_t off = 0;
  for (;;) {
    ssize_t got = pread(fd, chunk, READ_CHUNK, off);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      free(chunk);
      return -1;
    }
    if (got == 0) break;
    for (ssize_t i = 0; i < got; i++) {
      char c = chunk[i];
      if (c == '\n') {
        n += content;
        content = 0;
      } else if (!strchr(" \t\r\f\v", c)) {
        content = 1;
      }
    }
    off += got;
  }
  free(chunk);
  *out = n + (uint64_t)content;
  return 0;
}

/* Reads once (the fd was reported readable). */
static void input_fill(batch_t *b) {
  if (b->start > 0) {
    memmove(b->buf, b->buf + b->start, b->len);
    b->start = 0;
  }
  if (b->cap - b->len < READ_CHUNK) {
    size_t cap = b->cap ? b->cap * 2 : READ_CHUNK * 2;
    while (cap - b->len < READ_CHUNK) cap *= 2;
    char *p = realloc(b->buf, cap);
    if (!p) {
      note(b, "out of memory reading %s", b->in_name);
      b->eof = b->read_error = 1;
      return;
    }
    b->buf = p;
    b->cap = cap;
  }
  ssize_t got = read(b->in_fd, b->buf + b->len, b->cap - b->len);
  if (got > 0) {
    b->len += (size_t)got;
  } else if (got == 0) {
    b->eof = 1;
  } else if (errno != EINTR && errno != EAGAIN) {
    note(b, "reading %s: %s", b->in_name, strerror(errno));
    b->eof = b->read_error = 1;
  }
}

/* Takes the next complete line from the buffer. Returns: 1 (and *text,
 * *len, *line) for a line, 0 if more input is needed. A line longer than
 * MAX_LINE_BYTES comes back with *len 0 and *too_long set. */
static int input_line(batch_t *b, const char **text, size_t *len, int *too_long) {
  char *p = b->buf + b->start;
  char *nl = b->len ? memchr(p, '\n', b->len) : NULL;
  size_t n;
  if (nl) {
    n = (size_t)(nl - p);
    b->start += n + 1;
    b->len -= n + 1;
  } else if (b->eof && (b->len > 0 || b->skipping)) {
    n = b->len; /* the last line, without a newline */
    b->start += n;
    b->len = 0;
  } else {
    if (b->len > MAX_LINE_BYTES) { /* drop what is held: the line is lost */
      b->skipping = 1;
      b->start = b->len = 0;
    }
    return 0;
  }
  b->line_no++;
  *too_long = b->skipping || n > MAX_LINE_BYTES;
  b->skipping = 0;
  *text = p;
  *len = *too_long ? 0 : n;
  return 1;
}

/* 1 once every line of the input has been taken. */
static int input_exhausted(const batch_t *b) { return b->eof && b->len == 0 && !b->skipping; }

/* 1 once no more lines will be taken: all are, the output is gone, or a
 * stop signal came while the input is a terminal (a person typing lines
 * would otherwise have to end them with Ctrl-D after their Ctrl-C). */
static int input_done(const batch_t *b) {
  return input_exhausted(b) || b->stop == STOP_OUTPUT || (b->stop == STOP_SIGNAL && b->in_tty);
}

/* Whether the loop wants more lines now. */
static int want_input(const batch_t *b) {
  if (input_done(b)) return 0;
  return b->stop == STOP_SIGNAL || b->in_flight < b->window;
}

/* Handles up to LINES_PER_TURN buffered lines while there is room. */
static void pump_lines(batch_t *b) {
  for (int k = 0; k < LINES_PER_TURN && want_input(b); k++) {
    const char *text;
    size_t len;
    int too_long;
    if (!input_line(b, &text, &len, &too_long)) return; /* more to read */
    if (too_long) {
      b->read++;
      outcome(b, b->line_no, NULL, 0, APEX_TASK_FAILED, NULL,
              line_error(APEX_E_INVALID, "the line is longer than %d bytes", MAX_LINE_BYTES));
    } else if (!is_blank(text, len)) {
      run_line(b, b->line_no, text, len);
    }
  }
}

/* 1 if a line can be taken without reading. */
static int line_buffered(const batch_t *b) {
  return (b->len && memchr(b->buf + b->start, '\n', b->len)) || b->eof;
}

/* ------------------------------------------------------------ the run */

static void cancel_all(batch_t *b, const char *reason) {
  for (slot_t *s = b->head; s; s = s->next) apex_task_cancel(s->task, reason);
}

static void check_stop(batch_t *b) {
  if (b->stop) return;
  int sig = atomic_load(&g_signo);
  if (cli_output_failed()) {
    b->stop = STOP_OUTPUT;
    note(b, "output closed; cancelling %zu tasks", b->in_flight);
    cancel_all(b, "output closed");
  } else if (sig) {
    b->stop = STOP_SIGNAL;
    b->stop_sig = sig;
    note(b, "%s: cancelling %zu tasks (%s again to exit at once)", signal_label(sig),
         b->in_flight, sig == SIGINT ? "press Ctrl-C" : "send it");
    cancel_all(b, sig == SIGINT ? "user" : signal_label(sig));
  }
  cli_batch_view_dirty(b);
}

static int exit_code_of(const batch_t *b) {
  if (b->stop == STOP_SIGNAL && b->cancelled) return CLI_EXIT_SIGNAL_BASE + b->stop_sig;
  if (cli_output_failed() || b->read_error) return CLI_EXIT_FAILED;
  return b->failed + b->timed_out + b->cancelled ? CLI_EXIT_FAILED : CLI_EXIT_OK;
}

static int by_line(const void *a, const void *b) {
  uint64_t x = ((const failure_t *)a)->line, y = ((const failure_t *)b)->line;
  return x < y ? -1 : x > y;
}

static void summary(batch_t *b, int code) {
  int64_t ms = cli_now_ms() - b->start_ms;
  uint64_t lines = b->succeeded + b->failed + b->timed_out + b->cancelled;
  int read_all = b->eof && !b->read_error;
  if (b->json) {
    cli_emit(json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:f, s:i}", "event", "summary",
                       "lines", (json_int_t)lines, "succeeded", (json_int_t)b->succeeded,
                       "failed", (json_int_t)b->failed, "timed_out", (json_int_t)b->timed_out,
                       "cancelled", (json_int_t)b->cancelled, "invalid", (json_int_t)b->invalid,
                       "read_all", read_all, "elapsed_s", (double)ms / 1000.0, "exit_code", code));
    return;
  }
  char el[32];
  cli_batch_fmt_elapsed(el, sizeof el, ms);
  if (lines > 0 && b->succeeded == lines) {
    printf("%llu line%s in %s: all succeeded\n", (unsigned long long)lines, lines == 1 ? "" : "s",
           el);
  } else {
    printf("%llu line%s in %s: %llu succeeded, %llu failed (%llu invalid), %llu timed out, %llu "
           "cancelled\n",
           (unsigned long long)lines, lines == 1 ? "" : "s", el, (unsigned long long)b->succeeded,
           (unsigned long long)b->failed, (unsigned long long)b->invalid,
           (unsigned long long)b->timed_out, (unsigned long long)b->cancelled);
  }
  if (!read_all) printf("the input was not read to its end (after line %llu)\n",
                        (unsigned long long)b->line_no);
  /* Kept in the order they ended; listed in the file's. */
  qsort(b->fails, b->n_fails, sizeof *b->fails, by_line);
  if (b->n_fails) printf("failed lines:\n");
  for (size_t i = 0; i < b->n_fails; i++) {
    const failure_t *f = &b->fails[i];
    char *act = f->action ? cli_term_clean(f->action) : NULL;
    char *msg = cli_term_clean(f->message ? f->message : "");
    printf("  line %llu  %s%s%s: %s\n", (unsigned long long)f->line, act ? act : "",
           act ? "  " : "", f->code ? f->code : "?", msg ? msg : "?");
    free(act);
    free(msg);
  }
  uint64_t listed_of = b->failed + b->timed_out;
  if (listed_of > b->n_fails)
    printf("  ... and %llu more (apex batch --json lists every line)\n",
           (unsigned long long)(listed_of - b->n_fails));
  fflush(stdout);
}

/* A second stop signal: every line still in flight ends here, cancelled,
 * its handler not waited for; then the summary and out. */
static void force_exit(batch_t *b) {
  int sig = atomic_load(&g_force);
  cli_batch_view_erase(b);
  cli_batch_view_close(b);
  char msg[256];
  snprintf(msg, sizeof msg,
           "the handler did not stop after the cancel; a second %s ended apex without waiting "
           "for it", signal_label(sig));
  while (b->head) {
    slot_t *s = b->head;
    slot_unlink(b, s);
    json_t *e = line_error(APEX_E_CANCELLED, "%s: %s", s->action, msg);
    outcome(b, s->line, s->action, s->task_id, APEX_TASK_CANCELLED, NULL, e);
    /* The handle is not released: the task may still run plugin code. */
  }
  if (!b->json) printf("\r");
  summary(b, CLI_EXIT_SIGNAL_BASE + sig);
  fflush(stdout);
  fflush(stderr);
  _exit(CLI_EXIT_SIGNAL_BASE + sig);
}

/* Runs until every line read has its outcome. Returns: 0, or -1 if poll or
 * dispatch failed. */
static int loop(batch_t *b, int sig_rfd) {
  int mfd = apex_manager_fd(b->m);
  if (mfd < 0) return -1;
  for (;;) {
    if (atomic_load(&g_force)) force_exit(b);
    check_stop(b);
    if (!b->json) drain_logs(b);
    if (b->in_ready) {
      input_fill(b);
      b->in_ready = 0;
    }
    pump_lines(b);
    if (input_done(b) && b->in_flight == 0) return 0;
    struct pollfd pfd[3] = {{.fd = mfd, .events = POLLIN},
                            {.fd = sig_rfd, .events = POLLIN},
                            {.fd = -1, .events = POLLIN}};
    int timeout = cli_batch_view_due_ms(b);
    if (want_input(b)) {
      if (line_buffered(b)) timeout = 0;
      else pfd[2].fd = b->in_fd;
    }
    int n = poll(pfd, 3, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (pfd[1].revents & POLLIN) {
      char buf[64];
      while (read(sig_rfd, buf, sizeof buf) > 0) {
      }
    }
    if (pfd[2].revents) b->in_ready = 1; /* POLLIN, or POLLHUP at a pipe's end */
    if ((pfd[0].revents & POLLIN) && apex_manager_dispatch(b->m) < 0) return -1;
    if (b->view && cli_batch_view_due_ms(b) == 0) cli_batch_view_draw(b);
  }
}

/* Applies --concurrency, --limit and --rate. Returns: APEX_OK, or the
 * status of the first one refused with why (naming the flag) filled. */
static int apply_limits(batch_t *b, char *why, size_t len) {
  const batch_opts_t *o = b->o;
  apex_error_t *err = NULL;
  int rc = APEX_OK;
  if (o->concurrency &&
      (rc = apex_manager_set_concurrency(b->m, APEX_SCOPE_GLOBAL, NULL, o->concurrency, &err)) !=
          APEX_OK) {
    snprintf(why, len, "--concurrency %u: %s", o->concurrency,
             err ? apex_error_message(err) : apex_strerror(rc));
    apex_error_unref(err);
    return rc;
  }
  for (int pass = 0; pass < 2; pass++) {
    const scope_opt_t *list = pass ? o->rates : o->limits;
    size_t n = pass ? o->n_rates : o->n_limits;
    const char *flag = pass ? "--rate" : "--limit";
    for (size_t i = 0; i < n; i++) {
      const scope_opt_t *s = &list[i];
      if (s->scope == APEX_SCOPE_PLUGIN || s->scope == APEX_SCOPE_ACTION) {
        /* A limit names a loaded plugin: load it now, as a line would. */
        char pname[256];
        size_t plen = strcspn(s->name, ".");
        if (plen >= sizeof pname) plen = sizeof pname - 1;
        memcpy(pname, s->name, plen);
        pname[plen] = '\0';
        plug_t *p = plugin_for(b, pname);
        if (!p) {
          snprintf(why, len, "out of memory");
          return APEX_E_NOMEM;
        }
        if (!p->desc) {
          snprintf(why, len, "%s %s: %s", flag, s->arg, p->message ? p->message : "?");
          return p->code;
        }
      }
      rc = pass ? apex_manager_set_rate(b->m, s->scope, s->name, s->rate, s->burst, &err)
                : apex_manager_set_concurrency(b->m, s->scope, s->name, s->limit, &err);
      if (rc != APEX_OK) {
        snprintf(why, len, "%s %s: %s", flag, s->arg,
                 err ? apex_error_message(err) : apex_strerror(rc));
        apex_error_unref(err);
        return rc;
      }
    }
  }
  return APEX_OK;
}

/* The summary of a run that failed before any line was read (JSON mode),
 * so a reader still gets its last line: counts 0 and the error. */
static void early_summary(int exit_code, int code, const char *msg) {
  char clean[2048];
  cli_utf8_clean(clean, sizeof clean, msg);
  cli_emit(json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:b, s:f, s:i, s:{s:s, s:s}}", "event",
                       "summary", "lines", 0, "succeeded", 0, "failed", 0, "timed_out", 0,
                       "cancelled", 0, "invalid", 0, "read_all", 0, "elapsed_s", 0.0,
                       "exit_code", exit_code, "error", "code", apex_status_name(code), "message",
                       clean));
}

/* A failure before any line was read: stderr, and in JSON mode the
 * summary. Returns: the exit code. */
static int fail_early(int json, int code, const char *msg) {
  cli_eprint(msg);
  int exit_code = cli_exit_code(code);
  if (json) early_summary(exit_code, code, msg);
  return exit_code;
}

static void batch_free(batch_t *b) {
  while (b->head) {
    slot_t *s = b->head;
    slot_unlink(b, s);
    slot_free(s);
  }
  for (size_t i = 0; i < b->n_plugs; i++) {
    free(b->plugs[i].name);
    free(b->plugs[i].message);
  }
  free(b->plugs);
  for (size_t i = 0; i < b->n_fails; i++) {
    free(b->fails[i].action);
    free(b->fails[i].code);
    free(b->fails[i].message);
  }
  free(b->fails);
  free(b->buf);
}

/* Ends the run: the summary is out; destroys the manager (a 50 ms drain, as
 * apex run) with a stop signal now exiting at once with code. */
static int finish(batch_t *b, int code) {
  cli_metrics_stop(b->metrics); /* no snapshot once the manager goes */
  b->metrics = NULL;
  if (b->m && b->o->base.metrics_file &&
      cli_metrics_write(b->m, b->o->base.metrics_file, b->o->base.metrics_format) != 0 &&
      code == CLI_EXIT_OK)
    code = CLI_EXIT_FAILED;
  fflush(stdout);
  atomic_store(&g_final_code, code);
  atomic_store(&g_phase, PH_DONE);
  if (atomic_load(&g_force)) {
    fflush(stderr);
    _exit(code);
  }
  int rc = b->m ? apex_manager_destroy(b->m, 50) : APEX_OK;
  b->m = NULL;
  if (rc == APEX_E_BUSY) {
    /* A handler that ignored its cancel may still use what it was given. */
    fflush(stdout);
    fflush(stderr);
    _exit(code);
  }
  return code;
}

static int wants_json(int argc, char **argv) {
  if (!isatty(STDOUT_FILENO)) return 1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) break;
    if (strcmp(argv[i], "--json") == 0) return 1;
  }
  return 0;
}

int cli_cmd_batch(int argc, char **argv, int cmd_at) {
  /* A reader that goes away (apex batch f | head) must not kill us: the
   * tasks are cancelled instead. Before any thread exists. */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGPIPE, &sa, NULL) != 0) {
    fprintf(stderr, "apex: cannot ignore SIGPIPE: %s\n", strerror(errno));
    return CLI_EXIT_FAILED;
  }
  batch_opts_t o = {.base = {.command = "batch", .timeout_s = -1, .retries = -1}};
  int json = wants_json(argc, argv);
  o.base.plugin_paths = calloc((size_t)argc, sizeof *o.base.plugin_paths);
  o.limits = calloc((size_t)argc, sizeof *o.limits);
  o.rates = calloc((size_t)argc, sizeof *o.rates);
  if (!o.base.plugin_paths || !o.limits || !o.rates) {
    cli_batch_opts_free(&o);
    return fail_early(json, APEX_E_NOMEM, "out of memory");
  }
  int code;
  if (cli_batch_parse(&o, argc, argv, cmd_at) != 0 && !o.help) {
    code = fail_early(json, o.code, o.why);
    cli_batch_opts_free(&o);
    return code;
  }
  if (o.help) {
    fputs(cli_batch_usage, stdout);
    cli_batch_opts_free(&o);
    return CLI_EXIT_OK;
  }
  if (!o.file) {
    code = fail_early(json, APEX_E_INVALID, "batch: missing FILE (JSON Lines; - reads stdin)");
    cli_batch_opts_free(&o);
    return code;
  }
  o.base.json = json;

  batch_t b = {.o = &o, .json = json, .in_fd = STDIN_FILENO, .in_name = "stdin"};
  b.start_ms = cli_now_ms();
  if (strcmp(o.file, "-") != 0) {
    b.in_name = o.file;
    b.in_fd = open(o.file, O_RDONLY | O_CLOEXEC);
    if (b.in_fd < 0) {
      char msg[1024];
      snprintf(msg, sizeof msg, "batch: cannot open '%s': %s", o.file, strerror(errno));
      cli_batch_opts_free(&o);
      return fail_early(json, APEX_E_INVALID, msg);
    }
  }
  b.in_tty = isatty(b.in_fd);
  struct stat st;
  if (fstat(b.in_fd, &st) == 0 && S_ISREG(st.st_mode) && count_lines(b.in_fd, &b.total) == 0)
    b.total_known = 1;

  unsigned long window = o.window ? o.window : DEFAULT_WINDOW;
  if (!o.window && window < 2ul * o.concurrency) window = 2ul * o.concurrency;
  if (window > MAX_WINDOW) window = MAX_WINDOW;
  b.window = window;
  unsigned workers = DEFAULT_WORKERS;
  if (o.concurrency > workers) workers = o.concurrency > MAX_WORKERS ? MAX_WORKERS : o.concurrency;
  o.base.workers = workers;
  b.fails = calloc(FAIL_LIST_MAX, sizeof *b.fails);

  int sig_fds[2] = {-1, -1};
  if (!b.fails || install_signals(sig_fds) != 0) {
    code = fail_early(json, APEX_E_IO, "cannot handle signals");
    goto out;
  }
  /* Each task has its own callback (its line's slot as event_user); the
   * manager's is given only to select dispatch delivery. JSON mode is not
   * passed on: cli_manager_new's failure would be a "result" line, and
   * progress stays at the library's 20 a second per task (a batch's many
   * tasks, not one, share the output). */
  o.base.json = 0;
  code = cli_manager_new(&o.base, on_stray_event, NULL, json ? NULL : cli_log_sink, &g_sig_wfd,
                         &b.m);
  o.base.json = json;
  if (code != CLI_EXIT_OK) {
    if (json) early_summary(code, APEX_E_IO, "cannot start the runtime (see stderr)");
    goto out;
  }
  char why[1024];
  int rc = apply_limits(&b, why, sizeof why);
  if (rc != APEX_OK) {
    code = finish(&b, fail_early(json, rc, why));
    goto out;
  }
  if (o.metrics_listen) {
    char mwhy[300];
    if (cli_metrics_listen(b.m, o.metrics_listen, &b.metrics, mwhy, sizeof mwhy) != 0) {
      snprintf(why, sizeof why, "--metrics-listen %s", mwhy);
      code = finish(&b, fail_early(json, APEX_E_INVALID, why));
      goto out;
    }
    /* Where it listens (port 0 picks one): a scraper's setup reads it. */
    fprintf(stderr, "apex: metrics at %s\n", cli_metrics_url(b.metrics));
  }
  if (!json) {
    if (!setlocale(LC_CTYPE, "") || MB_CUR_MAX == 1) setlocale(LC_CTYPE, "C.UTF-8");
    drain_logs(&b);
    b.view = calloc(1, sizeof *b.view);
    if (b.view) {
      b.view->fd = STDOUT_FILENO;
      b.view->cursor_flag = &g_cursor_hidden;
    }
    cli_batch_view_draw(&b);
  }
  if (loop(&b, sig_fds[0]) != 0) {
    note(&b, "waiting for events failed: %s", strerror(errno));
    cancel_all(&b, "user");
    b.read_error = 1;
  }
  if (!json) drain_logs(&b);
  code = exit_code_of(&b);
  if (b.view) {
    cli_batch_view_draw(&b);
    cli_batch_view_close(&b);
  }
  summary(&b, code);
  code = finish(&b, code);
out:
  batch_free(&b);
  if (b.in_fd > STDIN_FILENO) close(b.in_fd);
  atomic_store(&g_sig_wfd, -1);
  for (int i = 0; i < 2; i++)
    if (sig_fds[i] >= 0) close(sig_fds[i]);
  cli_batch_opts_free(&o);
  return code;
}
