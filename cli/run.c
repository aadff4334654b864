/* `apex run PLUGIN.ACTION`: submits one task and reports it until it ends.
 *
 * Threads: the manager delivers events with APEX_DELIVER_DISPATCH, so every
 * callback runs inside apex_manager_dispatch() on the main thread, which
 * polls the manager's fd and a self-pipe written by the signal handler and
 * by the log sink. All output therefore comes from one thread and needs no
 * lock. The signal handler touches only what is async-signal-safe (below).
 * The log sink (terminal mode, log_queue.c) runs on any of Apex's threads:
 * it only queues a copy of the line and writes a byte to the self-pipe; the
 * main thread prints the queue above the display, which the library's own
 * stderr logging would otherwise tear.
 *
 * Output: JSON Lines on stdout with --json or when stdout is not a terminal
 * (one compact object per event, flushed per line; exactly one "result"
 * line; a progress line carries the sub-task tree whole or only what
 * changed, progress_lines.c), else a live display (display.c) redrawn in
 * place.
 *
 * Stop signals (SIGINT, SIGTERM, SIGHUP) and exactly one result line. What a
 * signal does depends on where the run is (g_phase):
 *   loading   the plugin's init hook runs on the main thread, which writes
 *             nothing meanwhile: there is no task to cancel, so the handler
 *             writes a result line built beforehand (cancelled, task null)
 *             with write(2) and _exits 128 + the signal.
 *   run       (creating the manager, submitting, waiting for the task): the
 *             first signal cancels the task (reason "user" for Ctrl-C, else
 *             "SIGTERM" / "SIGHUP") and the loop waits for it to end (exit
 *             128 + the signal: 130, 143, 129); before the task exists it
 *             stops the run from being submitted. A second one sets g_force
 *             and wakes the loop, which writes the result line (cancelled,
 *             "the handler did not stop") and _exits 128 + the signal
 *             without waiting for the handler. Should the main thread not
 *             get there (stdout blocked by a reader that stopped reading),
 *             alarm(2) ends the process FORCE_BACKSTOP_S later, with no
 *             line: none could be written.
 *   done      the outcome is out and the manager is being destroyed (a
 *             plugin's shutdown hook may hang): any stop signal _exits at
 *             once with the exit code already decided.
 * The handler itself touches only atomics, the prebuilt lines, write(2),
 * alarm(2) and _exit(2), all async-signal-safe; every line is formatted on
 * the main thread.
 *
 * Output closed: SIGPIPE is ignored (main.c), so a reader going away shows
 * up as a failed write in cli_emit; the loop then cancels the task (reason
 * "output closed") so it cleans up, waits for it and exits 1.
 *
 * Exit: after the task ends the handle is released and the manager destroyed
 * with a 50 ms drain, so a handler that ignores cancellation cannot hold the
 * exit; if one is still running (APEX_E_BUSY) the process _exits without
 * freeing what that handler may still touch.
 *
 * What can fail: bad input before submit (exit 2, named), plugin loading
 * (exit 1: the plugin is broken, not the command line), submit, poll; each
 * is reported once, on stderr and in JSON mode also as a result line with
 * "task": null. A failed task exits as its error's code says
 * (cli_exit_code), whoever found the problem: a handler rejecting its params
 * at run time (APEX_E_INVALID_PARAMS) exits 2 and is reported as a
 * submit-time rejection is, PLUGIN.ACTION first. A result that cannot be
 * written as JSON fails the run (exit 1) rather than leave no result line.
 *
 * Durable runs (docs/durable.md): with --store the manager journals in that
 * store and the task is submitted durable, so a crash of this process
 * leaves it for `apex resume`; a stop signal still cancels it, as above.
 * With --detach this function runs twice: in the command the user typed,
 * which starts a runner (cli_detach, detach.c) and returns once the runner
 * reports the task submitted; and in that runner (CLI_RUNNER_ENV set),
 * which runs the task as a durable `run --json` whose stdout is the pipe to
 * the first process until the "submitted" line is written (or the failure's
 * result line, which the first process reports), and /dev/null after. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

typedef struct run {
  int json;
  const char *plugin, *action; /* the target, borrowed */
  uint64_t task_id;         /* once submitted */
  cli_display_t *disp;      /* terminal mode only */
  cli_progress_lines_t *lines; /* JSON mode: the tree the reader holds */
  uint32_t max_attempts;    /* of the policy in effect, for notices */
  int done;
  apex_task_state_t state;  /* terminal state once done */
  json_t *result;           /* owned, once done and succeeded */
  apex_error_t *error;      /* owned, once done and not succeeded */
  int unwritable;           /* succeeded, but the result cannot be written:
                               state is then APEX_TASK_FAILED */
  char *message;            /* once done and not succeeded: the error's message
                               as printed (see outcome_message); owned */
  int code;                 /* the exit code, once done */
  const char *metrics_file; /* --metrics, or NULL */
  int metrics_format;
} run_t;

/* Where the run is, for the signal handler (see the top of the file). */
enum { PH_RUN, PH_LOADING, PH_DONE, PH_EXITING };

/* A main thread that does not answer a second signal within this many
 * seconds is stuck in a write to stdout; the process then ends without it. */
#define FORCE_BACKSTOP_S 2

static atomic_int g_phase;       /* PH_*, set by the main thread */
static atomic_int g_signo;       /* the first stop signal received, 0: none */
static atomic_int g_force;       /* a second one (exit at once), 0: none */
static atomic_int g_final_code;  /* the exit code, set before PH_DONE */
static atomic_int g_sig_wfd = -1;
static atomic_int g_cursor_hidden;
static atomic_int g_stderr_tty;  /* stderr is a terminal, which echoes ^C */

/* The result lines the handler writes during PH_LOADING, one per stop
 * signal, built on the main thread before the phase starts. */
static const int k_stop_signals[] = {SIGINT, SIGTERM, SIGHUP};
#define N_STOP_SIGNALS (sizeof k_stop_signals / sizeof k_stop_signals[0])
static char g_loading_line[N_STOP_SIGNALS][1024];
static size_t g_loading_len[N_STOP_SIGNALS];

/* The self-pipe is non-blocking and one byte is enough to wake the loop: a
 * full pipe already will. */
static void wake_loop(void) {
  int fd = atomic_load(&g_sig_wfd);
  if (fd >= 0 && write(fd, "!", 1) < 0) {
    /* full (a wake-up is pending) or closed: either way nothing to do */
  }
}

/* Async-signal-safe: write(2) until done or failed. */
static void write_fd(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* nothing more can be done about it here */
    p += w;
    n -= (size_t)w;
  }
}

/* Ends the process now, from a signal handler: shows the cursor again if
 * the display hid it, else ends the line the terminal's "^C" began, so the
 * shell's prompt starts on a line of its own. */
static void exit_now(int code) {
  if (atomic_load(&g_cursor_hidden)) write_fd(STDOUT_FILENO, "\r\n\x1b[?25h", 8);
  else if (atomic_load(&g_stderr_tty)) write_fd(STDERR_FILENO, "\n", 1);
  _exit(code);
}

static void on_signal(int sig) {
  int saved = errno;
  int phase = atomic_load(&g_phase);
  if (phase == PH_DONE) exit_now(atomic_load(&g_final_code));
  if (phase == PH_LOADING && atomic_compare_exchange_strong(&g_phase, &phase, PH_EXITING)) {
    for (size_t i = 0; i < N_STOP_SIGNALS; i++)
      if (k_stop_signals[i] == sig) write_fd(STDOUT_FILENO, g_loading_line[i], g_loading_len[i]);
    _exit(CLI_EXIT_SIGNAL_BASE + sig);
  }
  int none = 0;
  if (!atomic_compare_exchange_strong(&g_signo, &none, sig)) {
    /* A second stop signal: the user will not wait for the cleanup. */
    none = 0;
    if (atomic_compare_exchange_strong(&g_force, &none, sig)) alarm(FORCE_BACKSTOP_S);
  }
  wake_loop();
  errno = saved;
}

/* The backstop of a second signal the main thread did not answer. */
static void on_alarm(int sig) {
  (void)sig;
  exit_now(CLI_EXIT_SIGNAL_BASE + atomic_load(&g_force));
}

static int install_signals(int pipe_fds[2]) {
  if (pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
  atomic_store(&g_sig_wfd, pipe_fds[1]);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (size_t i = 0; i < N_STOP_SIGNALS; i++)
    if (sigaction(k_stop_signals[i], &sa, NULL) != 0) return -1;
  sa.sa_handler = on_alarm;
  if (sigaction(SIGALRM, &sa, NULL) != 0) return -1;
  return 0;
}

/* A line above the live display (attempt and retry notices). */
static void note(run_t *r, FILE *f, const char *fmt, ...) APEX_PRINTF(3, 4);
static void note(run_t *r, FILE *f, const char *fmt, ...) {
  cli_display_erase(r->disp);
  fflush(stdout);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fflush(f);
  cli_display_draw(r->disp);
}

/* Prints the queued library log lines above the display (terminal mode). */
static void drain_logs(run_t *r) {
  int level;
  char *msg;
  size_t dropped = 0;
  while (cli_log_pop(&level, &msg, &dropped)) {
    char *clean = cli_term_clean(msg);
    note(r, stderr, "apex: %s: %s", cli_log_level_name(level), clean ? clean : "?");
    free(clean);
    free(msg);
  }
  if (dropped)
    note(r, stderr, "apex: warn: %zu more log lines dropped (too many at once)", dropped);
}

static json_t *event_head(const char *event, uint64_t task) {
  return json_pack("{s:s, s:I}", "event", event, "task", (json_int_t)task);
}

static int state_code(apex_task_state_t state) {
  return state == APEX_TASK_TIMED_OUT ? APEX_E_TIMEOUT
         : state == APEX_TASK_CANCELLED ? APEX_E_CANCELLED
                                        : APEX_E_EXECUTION;
}

/* An error as JSON; a terminal failure always has one, but should the
 * library ever omit it, or fail to encode it, the line still carries a code
 * and a message. */
static json_t *error_json(const apex_error_t *e, apex_task_state_t state) {
  return cli_error_json(e, state_code(state));
}

static void on_attempt(run_t *r, const apex_event_t *ev) {
  if (r->json) {
    json_t *o = event_head("attempt", ev->task_id);
    if (o) json_object_set_new(o, "attempt", json_integer(ev->attempt));
    cli_emit(o);
    return;
  }
  cli_display_state(r->disp, "running");
  if (r->max_attempts > 1) note(r, stdout, "attempt %u of %u", ev->attempt, r->max_attempts);
}

static void on_progress(run_t *r, const apex_event_t *ev) {
  if (!ev->progress) return;
  if (!r->json) {
    cli_display_progress(r->disp, ev->progress);
    return;
  }
  if (!r->lines && !(r->lines = cli_progress_lines_new())) return; /* memory: no line */
  json_t *line = cli_progress_line(r->lines, ev->task_id, ev->progress);
  /* Not written: the reader never got the tree this line's changes led to. */
  if (line && cli_emit(line) != 0) cli_progress_lines_lost(r->lines);
}

/* A PARTIAL event: the task's latest partial result (coalesced by the
 * library like progress; the last one comes before the result line). */
static void on_partial(run_t *r, const apex_event_t *ev) {
  if (!r->json) {
    cli_display_partial(r->disp, ev->result);
    return;
  }
  json_t *o = event_head("partial", ev->task_id);
  if (o) {
    json_object_set_new(o, "attempt", json_integer(ev->attempt));
    /* Borrowed for the callback: a copy goes into the line. */
    json_object_set_new(o, "partial_result", ev->result ? json_deep_copy(ev->result) : json_null());
  }
  cli_emit(o);
}

static void on_retry(run_t *r, const apex_event_t *ev) {
  if (r->json) {
    json_t *o = event_head("retry", ev->task_id);
    if (o) {
      json_object_set_new(o, "attempt", json_integer(ev->attempt));
      json_object_set_new(o, "delay_s", json_real(ev->retry_delay_s));
      json_object_set_new(o, "error", error_json(ev->error, APEX_TASK_FAILED));
    }
    cli_emit(o);
    return;
  }
  cli_display_state(r->disp, "retry_wait");
  /* The plugin's message: no escape sequence of its own reaches the terminal. */
  char *msg = cli_term_clean(ev->error ? apex_error_message(ev->error) : "");
  note(r, stdout, "attempt %u failed (%s): %s; retrying in %.2f s", ev->attempt,
       apex_status_name(apex_error_code(ev->error)), msg ? msg : "?", ev->retry_delay_s);
  free(msg);
}

/* What a result line says when the handler's result cannot be written as
 * JSON: jansson refuses strings and keys that are not UTF-8, and cycles. */
#define UNWRITABLE_MESSAGE "the result cannot be written as JSON (text that is not UTF-8, or a cycle)"

/* Returns: msg as the outcome prints it (malloc'd; caller frees), or NULL
 * on no memory. A failure that exits 2 reads the same whoever found it: an
 * invalid param the handler rejects at run time names PLUGIN.ACTION first,
 * as the library's submit-time message does. */
static char *outcome_message(const run_t *r, int code, const char *msg) {
  size_t plen = strlen(r->plugin), alen = strlen(r->action);
  int named = strncmp(msg, r->plugin, plen) == 0 && msg[plen] == '.' &&
              strncmp(msg + plen + 1, r->action, alen) == 0 && msg[plen + 1 + alen] == ':';
  if (cli_exit_code(code) != CLI_EXIT_USAGE || named) return strdup(msg);
  size_t n = plen + alen + strlen(msg) + 4;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s.%s: %s", r->plugin, r->action, msg);
  return s;
}

/* Returns: the exit code of the outcome on_done recorded. */
static int outcome_code(const run_t *r) {
  switch (r->state) {
  case APEX_TASK_SUCCEEDED: return CLI_EXIT_OK;
  case APEX_TASK_TIMED_OUT: return CLI_EXIT_TIMEOUT;
  case APEX_TASK_CANCELLED: return CLI_EXIT_CANCELLED;
  default: return cli_exit_code(r->error ? apex_error_code(r->error) : APEX_E_EXECUTION);
  }
}

/* The result line's error: the library's, with its message as
 * outcome_message prints it. */
static json_t *outcome_error_json(const run_t *r) {
  if (r->unwritable)
    return json_pack("{s:s, s:s, s:s, s:s, s:I}", "code", apex_status_name(APEX_E_EXECUTION),
                     "message", r->message ? r->message : UNWRITABLE_MESSAGE, "plugin", r->plugin,
                     "action", r->action, "task", (json_int_t)r->task_id);
  json_t *e = error_json(r->error, r->state);
  /* cli_error_json made the message valid UTF-8; so is what is added. */
  const char *msg = json_string_value(json_object_get(e, "message"));
  int code = r->error ? apex_error_code(r->error) : state_code(r->state);
  char *named = msg ? outcome_message(r, code, msg) : NULL;
  if (named && strcmp(named, msg) != 0) json_object_set_new(e, "message", json_string(named));
  free(named);
  return e;
}

static void on_done(run_t *r, const apex_event_t *ev) {
  r->done = 1;
  r->state = ev->state;
  /* Both are borrowed for the callback only. The result is copied, not
   * ref'd: the library drops its own reference on its runtime thread, and
   * jansson's refcount is not safe to share across threads (json_decref
   * reads it non-atomically, which TSan reports). */
  if (ev->result) r->result = json_deep_copy(ev->result);
  if (ev->error) r->error = apex_error_ref((apex_error_t *)ev->error);
  /* A result that cannot be copied (a cycle, no memory) or written (not
   * UTF-8) would leave no result line; it fails the run instead. */
  if (ev->state == APEX_TASK_SUCCEEDED && ev->result &&
      (!r->result || json_dumpb(r->result, NULL, 0, JSON_ENCODE_ANY) == 0)) {
    r->unwritable = 1;
    r->state = APEX_TASK_FAILED;
  }
  if (r->unwritable) {
    size_t n = strlen(r->plugin) + strlen(r->action) + sizeof UNWRITABLE_MESSAGE + 3;
    if ((r->message = malloc(n)) != NULL)
      snprintf(r->message, n, "%s.%s: %s", r->plugin, r->action, UNWRITABLE_MESSAGE);
  } else if (ev->state != APEX_TASK_SUCCEEDED) {
    int code = r->error ? apex_error_code(r->error) : state_code(ev->state);
    r->message = outcome_message(r, code, r->error ? apex_error_message(r->error)
                                                   : apex_strerror(code));
  }
  r->code = outcome_code(r);
  if (!r->json) {
    cli_display_state(r->disp, apex_task_state_name(r->state));
    return;
  }
  /* As a failure found before the task: on stderr too, named. */
  if (r->code == CLI_EXIT_USAGE) cli_eprint(r->message ? r->message : "?");
  json_t *o = event_head("result", ev->task_id);
  if (o) {
    json_object_set_new(o, "state", json_string(apex_task_state_name(r->state)));
    if (r->state == APEX_TASK_SUCCEEDED)
      json_object_set_new(o, "result", r->result ? json_incref(r->result) : json_null());
    else
      json_object_set_new(o, "error", outcome_error_json(r));
  }
  cli_emit(o);
}

/* An event of a child task (apex_ctx_spawn) of the run's task, or of a
 * child's child: the terminal draws children from the parent's sub_tasks
 * tree; --json writes a "child" line when one starts and when it ends,
 * with its id and its parent's: {"event": "child", "task", "parent",
 * "state", "result" | "error"}. */
static void on_child(run_t *r, const apex_event_t *ev, uint64_t parent) {
  if (!r->json) return;
  if (ev->type != APEX_EVENT_DONE && !(ev->type == APEX_EVENT_ATTEMPT && ev->attempt == 1))
    return;
  json_t *o = event_head("child", ev->task_id);
  if (!o) return;
  json_object_set_new(o, "parent", json_integer((json_int_t)parent));
  json_object_set_new(o, "state", json_string(apex_task_state_name(ev->state)));
  if (ev->type == APEX_EVENT_DONE) {
    if (ev->state == APEX_TASK_SUCCEEDED)
      json_object_set_new(o, "result", ev->result ? json_deep_copy(ev->result) : json_null());
    else
      json_object_set_new(o, "error", error_json(ev->error, ev->state));
  }
  cli_emit(o);
}

static void on_event(const apex_event_t *ev, void *user) {
  run_t *r = user;
  if (r->done) return; /* nothing after the one terminal event */
  uint64_t parent = apex_task_parent_id(ev->task);
  if (parent) {
    on_child(r, ev, parent);
    return;
  }
  switch (ev->type) {
  case APEX_EVENT_ATTEMPT: on_attempt(r, ev); break;
  case APEX_EVENT_PROGRESS: on_progress(r, ev); break;
  case APEX_EVENT_RETRY: on_retry(r, ev); break;
  case APEX_EVENT_DONE: on_done(r, ev); break;
  case APEX_EVENT_PARTIAL: on_partial(r, ev); break;
  case APEX_EVENT_HEARTBEAT:
  case APEX_EVENT_SCHEDULED:
  case APEX_EVENT_GROUP: break; /* not shown yet (apex run submits no group) */
  }
}

/* The terminal's closing lines: the state, then the result or the error,
 * both passed through cli_term_clean (they carry plugin and argv text). */
static void print_outcome(const run_t *r) {
  char *text = NULL;
  if (r->state == APEX_TASK_SUCCEEDED) {
    /* json_dumps escapes C0 controls but passes C1 and DEL through. */
    char *s = r->result ? json_dumps(r->result, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    text = cli_term_clean(s ? s : "null");
    free(s);
    printf("%s: %s\n", apex_task_state_name(r->state),
           text ? text : "(result lost: out of memory)");
  } else {
    int code = r->unwritable ? APEX_E_EXECUTION
               : r->error    ? apex_error_code(r->error)
                             : state_code(r->state);
    text = cli_term_clean(r->message ? r->message : apex_strerror(code));
    /* A timeout says which one fired (--json: error.timeout). */
    const char *kind = apex_error_timeout_kind(r->error);
    printf("%s: %s (%s%s%s)\n", apex_task_state_name(r->state), text ? text : "?",
           apex_status_name(code), kind ? ", " : "", kind ? kind : "");
    /* What the task achieved before it stopped (--json: error.partial_result). */
    const json_t *partial = apex_error_partial_result(r->error);
    char *ps = partial ? json_dumps(partial, JSON_COMPACT | JSON_ENCODE_ANY |
                                                 JSON_REAL_PRECISION(15))
                       : NULL;
    char *pclean = ps ? cli_term_clean(ps) : NULL;
    if (pclean) printf("partial result: %s\n", pclean);
    free(pclean);
    free(ps);
  }
  free(text);
  fflush(stdout);
}

/* "Ctrl-C", "SIGTERM" or "SIGHUP": how messages name a stop signal. */
static const char *signal_label(int sig) {
  return sig == SIGINT ? "Ctrl-C" : sig == SIGTERM ? "SIGTERM" : "SIGHUP";
}

/* Cancels t, once, on the first stop signal or once stdout is gone; the
 * loop then waits for the task to end, so its handler can clean up. */
static void check_stop(run_t *r, apex_task_t *t, int *cancelled) {
  if (*cancelled) return;
  int sig = atomic_load(&g_signo);
  if (cli_output_failed()) {
    *cancelled = 1;
    note(r, stderr, "apex: output closed; cancelling the task");
    apex_task_cancel(t, "output closed");
  } else if (sig) {
    *cancelled = 1;
    if (sig == SIGINT) {
      note(r, stderr, "apex: cancelling (press Ctrl-C again to exit at once)");
      apex_task_cancel(t, "user");
    } else {
      const char *name = signal_label(sig);
      note(r, stderr, "apex: %s: cancelling (send it again to exit at once)", name);
      apex_task_cancel(t, name);
    }
  }
}

/* A second stop signal: writes the one result line the run still owes
 * (cancelled, the handler did not stop) and ends the process without
 * waiting for the handler, which may still be running plugin code. */
static void force_exit(run_t *r) {
  int sig = atomic_load(&g_force);
  if (r->disp) {
    cli_display_free(r->disp); /* shows the cursor again */
    r->disp = NULL;
    atomic_store(&g_cursor_hidden, 0);
  }
  if (!r->done) {
    char msg[512];
    snprintf(msg, sizeof msg,
             "%s.%s: the handler did not stop after the cancel; a second %s ended apex "
             "without waiting for it",
             r->plugin, r->action, signal_label(sig));
    if (r->json) {
      cli_eprint(msg);
      json_t *o = event_head("result", r->task_id);
      if (o) {
        json_object_set_new(o, "state", json_string(apex_task_state_name(APEX_TASK_CANCELLED)));
        json_object_set_new(o, "error",
                            json_pack("{s:s, s:s, s:s, s:s, s:I}", "code",
                                      apex_status_name(APEX_E_CANCELLED), "message", msg,
                                      "plugin", r->plugin, "action", r->action, "task",
                                      (json_int_t)r->task_id));
      }
      cli_emit(o);
    } else {
      /* \r: over the "^C" the terminal echoed at the start of the line. */
      printf("\r%s: %s (%s)\n", apex_task_state_name(APEX_TASK_CANCELLED), msg,
             apex_status_name(APEX_E_CANCELLED));
    }
  }
  fflush(stdout);
  fflush(stderr);
  _exit(CLI_EXIT_SIGNAL_BASE + sig);
}

/* Waits for the task's terminal event, dispatching events, redrawing,
 * printing queued log lines and turning the first stop signal, or a closed
 * stdout, into a cancel and a second one into force_exit. Returns: 0, or
 * -1 if poll or dispatch failed. */
static int event_loop(run_t *r, apex_manager_t *m, apex_task_t *t, int sig_rfd) {
  int mfd = apex_manager_fd(m);
  if (mfd < 0) return -1;
  struct pollfd pfd[2] = {{.fd = mfd, .events = POLLIN}, {.fd = sig_rfd, .events = POLLIN}};
  int cancelled = 0;
  while (!r->done) {
    /* Checked before each poll: a signal or log line arriving after this
     * check leaves a byte in the pipe, so the poll returns at once. A failed
     * write to stdout happens only inside dispatch, on this thread. */
    check_stop(r, t, &cancelled);
    if (atomic_load(&g_force)) force_exit(r);
    if (!r->json) drain_logs(r);
    int timeout = r->disp ? cli_display_due_ms(r->disp) : -1;
    int n = poll(pfd, 2, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (pfd[1].revents & POLLIN) {
      char buf[64];
      while (read(sig_rfd, buf, sizeof buf) > 0) {
      }
    }
    if (pfd[0].revents & POLLIN && apex_manager_dispatch(m) < 0) return -1;
    if (r->disp) cli_display_tick(r->disp);
  }
  return 0;
}

/* Ends the process after the task: frees what is ours, then destroys the
 * manager. From here on the outcome is out: a stop signal exits at once
 * with code (a plugin's shutdown hook may hang). A handler still running
 * past the drain (it ignored the cancel) may still use the manager's memory
 * and the plugin's code, so exit without running exit handlers. */
static int finish(run_t *r, apex_manager_t *m, int code) {
  /* The final snapshot, before destroy: every count of the run is in. */
  if (r->metrics_file && cli_metrics_write(m, r->metrics_file, r->metrics_format) != 0 &&
      code == CLI_EXIT_OK)
    code = CLI_EXIT_FAILED;
  fflush(stdout);
  atomic_store(&g_final_code, code);
  atomic_store(&g_phase, PH_DONE);
  if (atomic_load(&g_force)) { /* came before PH_DONE: it asked to exit now */
    fflush(stderr);
    _exit(code);
  }
  /* 50 ms (and config.shutdown_grace_ms 50, cli_manager_new): ample for a
   * handler that honours its token to clean up (a copy removing its temp
   * file takes a few), short enough that a deaf one does not hold a
   * timed-out run past its deadline by much. */
  int rc = apex_manager_destroy(m, 50);
  cli_progress_lines_free(r->lines); /* no event comes after destroy */
  r->lines = NULL;
  if (!r->json) drain_logs(r); /* the display is gone: plain lines */
  if (rc == APEX_E_BUSY) {
    fflush(stdout);
    fflush(stderr);
    _exit(code);
  }
  return code;
}

/* Builds the result lines the signal handler writes while `plugin` loads
 * (g_loading_line), one per stop signal. Returns: 0, or -1 on no memory. */
static int prepare_loading_lines(const run_t *r) {
  for (size_t i = 0; i < N_STOP_SIGNALS; i++) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "%s: %s while the plugin was loading (its init hook had not returned); no task "
             "was started",
             r->plugin, signal_label(k_stop_signals[i]));
    char *line = NULL;
    if (r->json) {
      json_t *o = json_pack("{s:s, s:n, s:s, s:{s:s, s:s, s:s}}", "event", "result", "task",
                            "state", apex_task_state_name(APEX_TASK_CANCELLED), "error", "code",
                            apex_status_name(APEX_E_CANCELLED), "message", msg, "plugin",
                            r->plugin);
      line = o ? json_dumps(o, JSON_COMPACT) : NULL;
      json_decref(o);
    } else {
      size_t n = strlen(msg) + 64;
      line = malloc(n);
      if (line)
        snprintf(line, n, "\r%s: %s (%s)", apex_task_state_name(APEX_TASK_CANCELLED), msg,
                 apex_status_name(APEX_E_CANCELLED));
    }
    if (!line) return -1;
    int n = snprintf(g_loading_line[i], sizeof g_loading_line[i], "%s\n", line);
    free(line);
    if (n < 0 || (size_t)n >= sizeof g_loading_line[i]) return -1;
    g_loading_len[i] = (size_t)n;
  }
  return 0;
}

/* A stop signal before the task was submitted: nothing to cancel, nothing
 * started. Reports it (stderr, and the result line in JSON mode: cancelled,
 * task null). Returns: the exit code, 128 + the signal. */
static int stopped_before_task(const run_t *r) {
  int sig = atomic_load(&g_signo);
  char msg[512];
  snprintf(msg, sizeof msg, "%s.%s: %s before the task was submitted; nothing was started",
           r->plugin, r->action, signal_label(sig));
  cli_eprint(msg);
  if (r->json) {
    /* msg may echo argv (the target): valid UTF-8 or no line at all. */
    json_t *e = json_pack("{s:s, s:s}", "code", apex_status_name(APEX_E_CANCELLED), "message", msg);
    if (!e) e = json_pack("{s:s, s:s}", "code", apex_status_name(APEX_E_CANCELLED), "message",
                          apex_strerror(APEX_E_CANCELLED));
    cli_emit(json_pack("{s:s, s:n, s:s, s:o}", "event", "result", "task", "state",
                       apex_task_state_name(APEX_TASK_CANCELLED), "error", e));
  }
  return CLI_EXIT_SIGNAL_BASE + sig;
}

/* Loads the plugin with the signal handler in charge of stop signals (see
 * PH_LOADING): the plugin's init hook may take long, or forever. */
static int load_plugin(run_t *r, apex_manager_t *m, const apex_plugin_desc_t **d) {
  /* Only a valid name reaches plugin code; the prebuilt lines embed it as
   * is, which is safe in JSON and on a terminal for [a-z0-9_] alone. */
  size_t len = strlen(r->plugin);
  int guard = len > 0 && len <= 64 &&
              strspn(r->plugin, "abcdefghijklmnopqrstuvwxyz0123456789_") == len &&
              prepare_loading_lines(r) == 0;
  /* A signal before this point has been recorded; it stops the run later. */
  if (guard && !atomic_load(&g_signo)) atomic_store(&g_phase, PH_LOADING);
  apex_error_t *err = NULL;
  int rc = apex_manager_load_named(m, r->plugin, &err);
  int phase = PH_LOADING;
  if (guard && !atomic_compare_exchange_strong(&g_phase, &phase, PH_RUN) &&
      phase == PH_EXITING) {
    /* The handler is writing its line and will _exit: write nothing more. */
    for (;;) pause();
  }
  int code = cli_report_load(m, r->json, r->plugin, rc, err, d);
  apex_error_unref(err);
  return code;
}

/* In a detached runner, once the task is submitted: tells the process that
 * started us its id (the pipe on stdout) and puts stdout on /dev/null, so
 * that process may exit and the shell with it. */
static void runner_submitted(const run_t *r, const char *store) {
  cli_emit(json_pack("{s:s, s:I, s:s, s:s, s:s, s:i}", "event", "submitted", "task",
                     (json_int_t)r->task_id, "plugin", r->plugin, "action", r->action, "store",
                     store, "pid", (int)getpid()));
  int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (fd >= 0) {
    fflush(stdout);
    (void)dup2(fd, STDOUT_FILENO);
    close(fd);
  }
}

int cli_cmd_run(const cli_opts_t *o_in) {
  cli_opts_t oo = *o_in;
  const cli_opts_t *o = &oo;
  /* The store's path for the whole run (every exit path of this function
   * may still use it): kept in a static buffer, not on the heap. */
  static char store_path[4096];
  int runner = oo.detach && getenv(CLI_RUNNER_ENV) != NULL;
  if (oo.store || oo.detach || oo.enqueue) {
    char *p = cli_store_path(o);
    if (!p) return CLI_EXIT_FAILED;
    if (strlen(p) >= sizeof store_path) {
      free(p);
      return cli_fail(o->json, APEX_E_INVALID, "--store: the path is too long");
    }
    strcpy(store_path, p);
    free(p);
    oo.store = store_path;
  }
  /* A store other processes serve from anywhere (a URI, not a file):
   * --detach enqueues for its workers instead of starting a runner. */
  if (oo.detach && !runner && strstr(store_path, "://")) oo.enqueue = 1;
  if (oo.detach && !runner && !oo.enqueue)
    return o->target ? cli_detach(o, store_path, o_in->store != NULL)
                     : cli_fail(o->json, APEX_E_INVALID, "run: missing PLUGIN.ACTION");
  if (runner) oo.json = 1; /* stdout is the pipe, then /dev/null */
  if (!o->target) return cli_fail(o->json, APEX_E_INVALID, "run: missing PLUGIN.ACTION");
  char buf[512];
  const char *plugin, *action;
  if (cli_split_target(o->target, buf, sizeof buf, &plugin, &action) != 0 || !*plugin || !action ||
      !*action)
    return cli_fail(o->json, APEX_E_INVALID, "run: '%s' is not PLUGIN.ACTION", o->target);

  int sig_fds[2] = {-1, -1};
  atomic_store(&g_stderr_tty, isatty(STDERR_FILENO));
  if (install_signals(sig_fds) != 0)
    return cli_fail(o->json, APEX_E_IO, "cannot handle signals: %s", strerror(errno));

  run_t r = {.json = o->json, .plugin = plugin, .action = action,
             .metrics_file = o->metrics_file, .metrics_format = o->metrics_format};
  apex_manager_t *m = NULL;
  /* Terminal mode queues library log lines for the loop to print above the
   * display; JSON mode leaves them on stderr as they come (log_level stays
   * -1: APEX_LOG decides either way). */
  int code = cli_manager_new(o, on_event, &r, o->json ? NULL : cli_log_sink, &g_sig_wfd, &m);
  if (code != CLI_EXIT_OK) return code;

  const apex_plugin_desc_t *d = NULL;
  if (atomic_load(&g_signo)) return finish(&r, m, stopped_before_task(&r));
  code = load_plugin(&r, m, &d);
  if (code != CLI_EXIT_OK) return finish(&r, m, code);
  const apex_action_desc_t *a = cli_find_action(d, action);
  if (!a) {
    char names[1024];
    cli_action_names(d, names, sizeof names);
    return finish(&r, m, cli_fail(o->json, APEX_E_ACTION_NOT_FOUND,
                              "plugin '%s' has no action '%s' (actions: %s)", plugin, action,
                              names));
  }
  if (atomic_load(&g_signo)) return finish(&r, m, stopped_before_task(&r));

  apex_submit_opts_t so;
  apex_submit_opts_init(&so);
  if (o->timeout_s > 0) so.timeout_s = o->timeout_s;
  so.schedule_to_start_s = o->schedule_to_start_s; /* 0: the action's default */
  so.start_to_close_s = o->start_to_close_s;
  so.heartbeat_timeout_s = o->heartbeat_timeout_s;
  so.priority = o->priority;
  so.concurrency_key = o->key;
  so.run_after_s = o->run_after_s;
  so.traceparent = o->traceparent;
  so.durable = o->store != NULL; /* journaled: it outlives this process */
  apex_retry_policy_t policy = a->default_retry;
  if (o->retries >= 0) {
    policy.max_attempts = (uint32_t)o->retries + 1;
    /* Retrying at once would hammer whatever failed; a short pause is a
     * saner default for an action that never planned on retries. */
    if (policy.initial_interval_s <= 0) policy.initial_interval_s = 0.1;
    so.retry = &policy;
  }
  r.max_attempts = policy.max_attempts ? policy.max_attempts : 1;

  if (o->enqueue) {
    /* For the workers serving the store (apex worker): written, not run. */
    uint64_t id = 0;
    apex_error_t *err = NULL;
    int rc = apex_manager_enqueue(m, plugin, action, o->params, &so, &id, &err);
    if (rc != APEX_OK) {
      code = cli_fail_error(o->json, rc, err);
      apex_error_unref(err);
      return finish(&r, m, code);
    }
    if (o->json) {
      cli_emit(json_pack("{s:s, s:I, s:s, s:s, s:s}", "event", "submitted", "task",
                         (json_int_t)id, "plugin", plugin, "action", action, "store", o->store));
    } else {
      printf("%llu\n", (unsigned long long)id);
      if (isatty(STDERR_FILENO))
        fprintf(stderr, "apex: task %llu is queued for the workers serving %s; follow it with "
                        "`apex watch %llu`\n",
                (unsigned long long)id, o->store, (unsigned long long)id);
    }
    return finish(&r, m, CLI_EXIT_OK);
  }

  if (!r.json) {
    drain_logs(&r); /* what loading logged, before the display is up */
    r.disp = cli_display_new(STDOUT_FILENO);
    if (!r.disp) return finish(&r, m, cli_fail(0, APEX_E_NOMEM, "out of memory"));
    atomic_store(&g_cursor_hidden, 1);
    cli_display_state(r.disp, "queued");
  }

  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(m, plugin, action, o->params, &so, &t, &err);
  if (rc != APEX_OK) {
    cli_display_free(r.disp);
    r.disp = NULL;
    atomic_store(&g_cursor_hidden, 0);
    /* The library's message already names plugin.action and the param. */
    code = cli_fail_error(o->json, rc, err);
    apex_error_unref(err);
    return finish(&r, m, code);
  }
  r.task_id = apex_task_id(t);
  if (runner) runner_submitted(&r, o->store);
  if (r.disp) cli_display_draw(r.disp);

  if (event_loop(&r, m, t, sig_fds[0]) != 0) {
    cli_display_free(r.disp);
    r.disp = NULL;
    atomic_store(&g_cursor_hidden, 0);
    code = cli_fail(o->json, APEX_E_IO, "waiting for events failed: %s", strerror(errno));
    apex_task_cancel(t, "user");
    apex_task_release(t);
    return finish(&r, m, code);
  }
  if (!r.json) drain_logs(&r); /* above the final frame, before the outcome */
  code = r.code;
  int sig = atomic_load(&g_signo);
  if (r.state == APEX_TASK_CANCELLED && sig) code = CLI_EXIT_SIGNAL_BASE + sig;
  /* Whatever the task did, its output (the result line at least) was lost. */
  if (cli_output_failed()) code = CLI_EXIT_FAILED;
  if (r.disp) {
    cli_display_draw(r.disp);
    cli_display_free(r.disp); /* shows the cursor again */
    r.disp = NULL;
    atomic_store(&g_cursor_hidden, 0);
    print_outcome(&r);
  }
  apex_task_release(t);
  json_decref(r.result);
  apex_error_unref(r.error);
  free(r.message);
  return finish(&r, m, code);
}
