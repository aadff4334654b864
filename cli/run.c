/* `apex run PLUGIN.ACTION`: submits one task and reports it until it ends.
 *
 * Threads: the manager delivers events with APEX_DELIVER_DISPATCH, so every
 * callback runs inside apex_manager_dispatch() on the main thread, which
 * polls the manager's fd and a self-pipe written by the signal handler and
 * by the log sink. All output therefore comes from one thread and needs no
 * lock. The signal handler touches only atomics, write(2) and _exit(2). The
 * log sink (terminal mode) runs on any of Apex's threads: it only queues a
 * copy of the line under g_log_mu and writes a byte to the self-pipe; the
 * main thread prints the queue above the display, which the library's own
 * stderr logging would otherwise tear.
 *
 * Output: JSON Lines on stdout with --json or when stdout is not a terminal
 * (one compact object per event, flushed per line; exactly one "result"
 * line), else a live display (display.c) redrawn in place.
 *
 * Ctrl-C: the first cancels the task (reason "user") and waits for it to end
 * (exit 130); the second restores the cursor and _exits 130 at once. SIGTERM
 * and SIGHUP do the same, exiting 143 and 129 (128 + the signal).
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
 * What can fail: bad input before submit (exit 2, named), plugin loading,
 * submit, poll; each is reported once, on stderr and in JSON mode also as a
 * result line with "task": null. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
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
  cli_display_t *disp;      /* terminal mode only */
  uint32_t max_attempts;    /* of the policy in effect, for notices */
  int done;
  apex_task_state_t state;  /* terminal state once done */
  json_t *result;           /* owned, once done and succeeded */
  apex_error_t *error;      /* owned, once done and not succeeded */
} run_t;

static atomic_int g_signo;   /* the first stop signal received, 0: none */
static atomic_int g_sig_wfd = -1;
static atomic_int g_cursor_hidden;

/* The self-pipe is non-blocking and one byte is enough to wake the loop: a
 * full pipe already will. */
static void wake_loop(void) {
  int fd = atomic_load(&g_sig_wfd);
  if (fd >= 0 && write(fd, "!", 1) < 0) {
    /* full (a wake-up is pending) or closed: either way nothing to do */
  }
}

static void on_signal(int sig) {
  int saved = errno;
  int none = 0;
  if (!atomic_compare_exchange_strong(&g_signo, &none, sig)) {
    /* A second stop signal: the user will not wait for the cleanup. */
    if (atomic_load(&g_cursor_hidden)) {
      static const char restore[] = "\r\n\x1b[?25h";
      if (write(STDOUT_FILENO, restore, sizeof restore - 1) < 0) {
        /* nothing more can be done about a broken terminal here */
      }
    }
    _exit(CLI_EXIT_SIGNAL_BASE + sig);
  }
  wake_loop();
  errno = saved;
}

static int install_signals(int pipe_fds[2]) {
  if (pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
  atomic_store(&g_sig_wfd, pipe_fds[1]);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
      sigaction(SIGHUP, &sa, NULL) != 0)
    return -1;
  return 0;
}

/* ---- library log lines in terminal mode --------------------------------
 * A bounded queue: a plugin logging in a loop costs memory only up to
 * LOG_QUEUE_MAX lines; past that lines are dropped and counted. Static, so
 * it outlives the manager (a handler past the exit drain may still log). */
#define LOG_QUEUE_MAX 256

static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
  int level;
  char *msg;
} g_log_q[LOG_QUEUE_MAX];
static size_t g_log_head, g_log_n, g_log_dropped; /* under g_log_mu */

/* The apex_log_fn of terminal mode. Any of Apex's threads; never blocks
 * beyond the short critical section. */
static void log_sink(int level, const char *msg, void *user) {
  (void)user;
  char *copy = strdup(msg ? msg : "");
  pthread_mutex_lock(&g_log_mu);
  if (copy && g_log_n < LOG_QUEUE_MAX) {
    size_t at = (g_log_head + g_log_n) % LOG_QUEUE_MAX;
    g_log_q[at].level = level;
    g_log_q[at].msg = copy;
    g_log_n++;
    copy = NULL;
  } else {
    g_log_dropped++;
  }
  pthread_mutex_unlock(&g_log_mu);
  free(copy); /* not queued */
  wake_loop();
}

/* Takes the oldest queued line. Returns: 1 and *level, *msg (caller frees),
 * else 0 with *dropped set to the lines dropped since the last call. */
static int log_pop(int *level, char **msg, size_t *dropped) {
  int got = 0;
  pthread_mutex_lock(&g_log_mu);
  if (g_log_n > 0) {
    *level = g_log_q[g_log_head].level;
    *msg = g_log_q[g_log_head].msg;
    g_log_q[g_log_head].msg = NULL;
    g_log_head = (g_log_head + 1) % LOG_QUEUE_MAX;
    g_log_n--;
    got = 1;
  } else {
    *dropped = g_log_dropped;
    g_log_dropped = 0;
  }
  pthread_mutex_unlock(&g_log_mu);
  return got;
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

static const char *log_level_name(int level) {
  static const char *const names[] = {"error", "warn", "info", "debug"};
  return level >= 0 && level <= 3 ? names[level] : "log";
}

/* Prints the queued library log lines above the display (terminal mode). */
static void drain_logs(run_t *r) {
  int level;
  char *msg;
  size_t dropped = 0;
  while (log_pop(&level, &msg, &dropped)) {
    char *clean = cli_term_clean(msg);
    note(r, stderr, "apex: %s: %s", log_level_name(level), clean ? clean : "?");
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
  json_t *o = event_head("progress", ev->task_id);
  json_t *p = apex_progress_to_json(ev->progress);
  if (o && p) json_object_update(o, p);
  json_decref(p);
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

static void on_done(run_t *r, const apex_event_t *ev) {
  r->done = 1;
  r->state = ev->state;
  /* Both are borrowed for the callback only. The result is copied, not
   * ref'd: the library drops its own reference on its runtime thread, and
   * jansson's refcount is not safe to share across threads (json_decref
   * reads it non-atomically, which TSan reports). */
  if (ev->result) r->result = json_deep_copy(ev->result);
  if (ev->error) r->error = apex_error_ref((apex_error_t *)ev->error);
  if (!r->json) {
    cli_display_state(r->disp, apex_task_state_name(ev->state));
    return;
  }
  json_t *o = event_head("result", ev->task_id);
  if (o) {
    json_object_set_new(o, "state", json_string(apex_task_state_name(ev->state)));
    if (ev->state == APEX_TASK_SUCCEEDED)
      json_object_set_new(o, "result", r->result ? json_incref(r->result) : json_null());
    else
      json_object_set_new(o, "error", error_json(ev->error, ev->state));
  }
  cli_emit(o);
}

static void on_event(const apex_event_t *ev, void *user) {
  run_t *r = user;
  if (r->done) return; /* nothing after the one terminal event */
  switch (ev->type) {
  case APEX_EVENT_ATTEMPT: on_attempt(r, ev); break;
  case APEX_EVENT_PROGRESS: on_progress(r, ev); break;
  case APEX_EVENT_RETRY: on_retry(r, ev); break;
  case APEX_EVENT_DONE: on_done(r, ev); break;
  }
}

static int exit_code_for(apex_task_state_t s) {
  switch (s) {
  case APEX_TASK_SUCCEEDED: return CLI_EXIT_OK;
  case APEX_TASK_TIMED_OUT: return CLI_EXIT_TIMEOUT;
  case APEX_TASK_CANCELLED: return CLI_EXIT_CANCELLED;
  default: return CLI_EXIT_FAILED;
  }
}

/* The terminal's closing lines: the state, then the result or the error,
 * both passed through cli_term_clean (they carry plugin and argv text). */
static void print_outcome(const run_t *r) {
  const char *state = apex_task_state_name(r->state);
  char *text = NULL;
  int code = 0;
  if (r->state == APEX_TASK_SUCCEEDED) {
    /* json_dumps escapes C0 controls but passes C1 and DEL through. */
    char *s = r->result ? json_dumps(r->result, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    text = cli_term_clean(s ? s : "null");
    free(s);
  } else {
    code = r->error ? apex_error_code(r->error) : state_code(r->state);
    text = cli_term_clean(r->error ? apex_error_message(r->error) : apex_strerror(code));
  }
  if (r->state == APEX_TASK_SUCCEEDED)
    printf("%s: %s\n", state, text ? text : "(result lost: out of memory)");
  else
    printf("%s: %s (%s)\n", state, text ? text : "?", apex_status_name(code));
  free(text);
  fflush(stdout);
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
      const char *name = sig == SIGTERM ? "SIGTERM" : "SIGHUP";
      note(r, stderr, "apex: %s: cancelling (send it again to exit at once)", name);
      apex_task_cancel(t, name);
    }
  }
}

/* Waits for the task's terminal event, dispatching events, redrawing,
 * printing queued log lines and turning the first stop signal, or a closed
 * stdout, into a cancel. Returns: 0, or -1 if poll or dispatch failed. */
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
 * manager. A handler still running past the drain (it ignored the cancel)
 * may still use the manager's memory and the plugin's code, so exit without
 * running exit handlers. */
static int finish(run_t *r, apex_manager_t *m, int code) {
  /* 50 ms: ample for a handler that honours its token to clean up (a copy
   * removing its temp file takes a few), short enough that a deaf one does
   * not hold a timed-out run past its deadline by much. */
  int rc = apex_manager_destroy(m, 50);
  if (!r->json) drain_logs(r); /* the display is gone: plain lines */
  if (rc == APEX_E_BUSY) {
    fflush(stdout);
    fflush(stderr);
    _exit(code);
  }
  return code;
}

int cli_cmd_run(const cli_opts_t *o) {
  if (!o->target) return cli_fail(o->json, APEX_E_INVALID, "run: missing PLUGIN.ACTION");
  char buf[512];
  const char *plugin, *action;
  if (cli_split_target(o->target, buf, sizeof buf, &plugin, &action) != 0 || !*plugin || !action ||
      !*action)
    return cli_fail(o->json, APEX_E_INVALID, "run: '%s' is not PLUGIN.ACTION", o->target);

  int sig_fds[2] = {-1, -1};
  if (install_signals(sig_fds) != 0)
    return cli_fail(o->json, APEX_E_IO, "cannot handle signals: %s", strerror(errno));

  run_t r = {.json = o->json};
  apex_manager_t *m = NULL;
  /* Terminal mode queues library log lines for the loop to print above the
   * display; JSON mode leaves them on stderr as they come (log_level stays
   * -1: APEX_LOG decides either way). */
  int code = cli_manager_new(o, on_event, &r, o->json ? NULL : log_sink, NULL, &m);
  if (code != CLI_EXIT_OK) return code;

  const apex_plugin_desc_t *d = NULL;
  code = cli_load_plugin(m, o->json, plugin, &d);
  if (code != CLI_EXIT_OK) return finish(&r, m, code);
  const apex_action_desc_t *a = cli_find_action(d, action);
  if (!a) {
    char names[1024];
    cli_action_names(d, names, sizeof names);
    return finish(&r, m, cli_fail(o->json, APEX_E_ACTION_NOT_FOUND,
                              "plugin '%s' has no action '%s' (actions: %s)", plugin, action,
                              names));
  }

  apex_submit_opts_t so;
  apex_submit_opts_init(&so);
  if (o->timeout_s > 0) so.timeout_s = o->timeout_s;
  apex_retry_policy_t policy = a->default_retry;
  if (o->retries >= 0) {
    policy.max_attempts = (uint32_t)o->retries + 1;
    /* Retrying at once would hammer whatever failed; a short pause is a
     * saner default for an action that never planned on retries. */
    if (policy.initial_interval_s <= 0) policy.initial_interval_s = 0.1;
    so.retry = &policy;
  }
  r.max_attempts = policy.max_attempts ? policy.max_attempts : 1;

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
  code = exit_code_for(r.state);
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
  return finish(&r, m, code);
}
