/* `apex run PLUGIN.ACTION`: submits one task and reports it until it ends.
 *
 * Threads: the manager delivers events with APEX_DELIVER_DISPATCH, so every
 * callback runs inside apex_manager_dispatch() on the main thread, which
 * polls the manager's fd and a self-pipe written by the SIGINT handler. All
 * output therefore comes from one thread and needs no lock. The signal
 * handler touches only atomics, write(2) and _exit(2).
 *
 * Output: JSON Lines on stdout with --json or when stdout is not a terminal
 * (one compact object per event, flushed per line; exactly one "result"
 * line), else a live display (display.c) redrawn in place.
 *
 * Ctrl-C: the first cancels the task (reason "user") and waits for it to end
 * (exit 130); the second restores the cursor and _exits 130 at once.
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

static atomic_int g_sigints;
static atomic_int g_sig_wfd = -1;
static atomic_int g_cursor_hidden;

static void on_sigint(int sig) {
  (void)sig;
  int saved = errno;
  if (atomic_fetch_add(&g_sigints, 1) >= 1) {
    if (atomic_load(&g_cursor_hidden)) {
      static const char restore[] = "\r\n\x1b[?25h";
      if (write(STDOUT_FILENO, restore, sizeof restore - 1) < 0) {
        /* nothing more can be done about a broken terminal here */
      }
    }
    _exit(CLI_EXIT_CANCELLED);
  }
  int fd = atomic_load(&g_sig_wfd);
  if (fd >= 0 && write(fd, "!", 1) < 0) {
    /* the pipe is non-blocking and one byte is enough: a full pipe is fine */
  }
  errno = saved;
}

static int install_sigint(int pipe_fds[2]) {
  if (pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
  atomic_store(&g_sig_wfd, pipe_fds[1]);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  return sigaction(SIGINT, &sa, NULL);
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

static json_t *event_head(const char *event, uint64_t task) {
  return json_pack("{s:s, s:I}", "event", event, "task", (json_int_t)task);
}

/* An error as JSON; a terminal failure always has one, but should the
 * library ever omit it the line still carries a code. */
static json_t *error_json(const apex_error_t *e, apex_task_state_t state) {
  if (e) return apex_error_to_json(e);
  int code = state == APEX_TASK_TIMED_OUT ? APEX_E_TIMEOUT
             : state == APEX_TASK_CANCELLED ? APEX_E_CANCELLED
                                            : APEX_E_EXECUTION;
  return json_pack("{s:s, s:s}", "code", apex_status_name(code), "message", apex_strerror(code));
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
  note(r, stdout, "attempt %u failed (%s): %s; retrying in %.2f s", ev->attempt,
       apex_status_name(apex_error_code(ev->error)), apex_error_message(ev->error),
       ev->retry_delay_s);
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

/* The terminal's closing lines: the state, then the result or the error. */
static void print_outcome(const run_t *r) {
  const char *state = apex_task_state_name(r->state);
  if (r->state == APEX_TASK_SUCCEEDED) {
    char *s = r->result ? json_dumps(r->result, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    printf("%s: %s\n", state, s ? s : "null");
    free(s);
  } else {
    int code = r->error ? apex_error_code(r->error)
               : r->state == APEX_TASK_TIMED_OUT ? APEX_E_TIMEOUT
               : r->state == APEX_TASK_CANCELLED ? APEX_E_CANCELLED
                                                 : APEX_E_EXECUTION;
    printf("%s: %s (%s)\n", state, r->error ? apex_error_message(r->error) : apex_strerror(code),
           apex_status_name(code));
  }
  fflush(stdout);
}

/* Waits for the task's terminal event, dispatching events, redrawing and
 * turning the first Ctrl-C into a cancel. Returns: 0, or -1 if poll failed. */
static int event_loop(run_t *r, apex_manager_t *m, apex_task_t *t, int sig_rfd) {
  int mfd = apex_manager_fd(m);
  if (mfd < 0) return -1;
  struct pollfd pfd[2] = {{.fd = mfd, .events = POLLIN}, {.fd = sig_rfd, .events = POLLIN}};
  int cancelled = 0;
  while (!r->done) {
    int timeout = r->disp ? cli_display_due_ms(r->disp) : -1;
    int n = poll(pfd, 2, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (pfd[1].revents & POLLIN) {
      char buf[16];
      while (read(sig_rfd, buf, sizeof buf) > 0) {
      }
      if (!cancelled) {
        cancelled = 1;
        note(r, stderr, "apex: cancelling (press Ctrl-C again to exit at once)");
        apex_task_cancel(t, "user");
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
static int finish(apex_manager_t *m, int code) {
  /* 50 ms: ample for a handler that honours its token to clean up (a copy
   * removing its temp file takes a few), short enough that a deaf one does
   * not hold a timed-out run past its deadline by much. */
  int rc = apex_manager_destroy(m, 50);
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
  if (install_sigint(sig_fds) != 0)
    return cli_fail(o->json, APEX_E_IO, "cannot handle SIGINT: %s", strerror(errno));

  run_t r = {.json = o->json};
  apex_manager_t *m = NULL;
  int code = cli_manager_new(o, on_event, &r, NULL, NULL, &m);
  if (code != CLI_EXIT_OK) return code;

  const apex_plugin_desc_t *d = NULL;
  code = cli_load_plugin(m, o->json, plugin, &d);
  if (code != CLI_EXIT_OK) return finish(m, code);
  const apex_action_desc_t *a = cli_find_action(d, action);
  if (!a) {
    char names[1024];
    cli_action_names(d, names, sizeof names);
    return finish(m, cli_fail(o->json, APEX_E_ACTION_NOT_FOUND,
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
    r.disp = cli_display_new(STDOUT_FILENO);
    if (!r.disp) return finish(m, cli_fail(0, APEX_E_NOMEM, "out of memory"));
    atomic_store(&g_cursor_hidden, 1);
    cli_display_state(r.disp, "queued");
  }

  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(m, plugin, action, o->params, &so, &t, &err);
  if (rc != APEX_OK) {
    cli_display_free(r.disp);
    atomic_store(&g_cursor_hidden, 0);
    /* The library's message already names plugin.action and the param. */
    code = cli_fail_error(o->json, rc, err);
    apex_error_unref(err);
    return finish(m, code);
  }
  if (r.disp) cli_display_draw(r.disp);

  if (event_loop(&r, m, t, sig_fds[0]) != 0) {
    cli_display_free(r.disp);
    atomic_store(&g_cursor_hidden, 0);
    code = cli_fail(0, APEX_E_IO, "waiting for events failed: %s", strerror(errno));
    apex_task_cancel(t, "user");
    apex_task_release(t);
    return finish(m, code);
  }
  code = exit_code_for(r.state);
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
  return finish(m, code);
}
