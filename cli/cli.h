/* The apex command: what its parts share. Single-threaded by design: every
 * function here runs on the main thread (events are dispatched there, see
 * run.c), so nothing below needs a lock. */
#ifndef APEX_CLI_H
#define APEX_CLI_H

#include <stddef.h>
#include <stdint.h>

#include <apex/apex.h>

/* Exit codes (the command's contract, see usage in main.c). A run cancelled
 * by SIGINT, SIGTERM or SIGHUP exits 128 + the signal number. */
enum {
  CLI_EXIT_OK = 0,
  CLI_EXIT_FAILED = 1,
  CLI_EXIT_USAGE = 2,
  CLI_EXIT_TIMEOUT = 124,
  CLI_EXIT_SIGNAL_BASE = 128,
  CLI_EXIT_CANCELLED = 130
};

/* What the command line asked for, after parsing. */
typedef struct cli_opts {
  const char *command;       /* "run", "plugins", "describe" */
  const char *target;        /* PLUGIN or PLUGIN.ACTION, borrowed from argv */
  json_t *params;            /* --params merged, then every --param: owned */
  double timeout_s;          /* --timeout, or -1: the action's default */
  long retries;              /* --retries, or -1: the action's default */
  /* --schedule-to-start, --attempt-timeout, --heartbeat-timeout, or 0: the
   * action's default (docs/scheduling.md) */
  double schedule_to_start_s, start_to_close_s, heartbeat_timeout_s;
  int priority;              /* --priority (APEX_PRIORITY_*), 0: normal */
  const char *key;           /* --key: the concurrency key, or NULL */
  double run_after_s;        /* --run-after, or 0: now */
  int json;                  /* JSON Lines: --json or stdout not a terminal */
  const char **plugin_paths; /* --plugin-path dirs in order (argv strings) */
  size_t n_plugin_paths;
  unsigned workers;          /* worker threads; 0: 2 (apex batch sets it) */
  /* Metrics (cli/metrics.c): --metrics FILE, --metrics-format */
  const char *metrics_file;  /* the final snapshot goes there; NULL: none */
  int metrics_format;        /* CLI_METRICS_*; AUTO: by FILE's extension */
  /* Traces (docs/observability.md): --trace FILE appends OTLP/JSON lines;
   * --traceparent joins the caller's trace. NULL: none. */
  const char *trace_file;
  const char *traceparent;
  /* Durable tasks (tasks.c, docs/durable.md). */
  const char *store;         /* --store PATH, or NULL: see cli_store_path */
  const char *store_owner;   /* the manager's owner id in the store (resume),
                                or NULL: a random one */
  int detach;                /* run --detach: submit, print the id, exit */
  int enqueue;               /* run --enqueue: write the task for the
                                workers serving the store (apex worker),
                                print its id, exit */
  const char *state;         /* tasks --state NAME[,NAME...], or NULL: any */
  long limit;                /* tasks --limit N, or 0: 50 */
  int argc;                  /* main's, for the detached runner's argv */
  char **argv;
} cli_opts_t;

/* Metrics output (cli/metrics.c). */
enum { CLI_METRICS_AUTO = 0, CLI_METRICS_PROMETHEUS, CLI_METRICS_OPENMETRICS, CLI_METRICS_JSON };
/* Returns: the CLI_METRICS_* value named name (prometheus, openmetrics,
 * json), or -1. */
int cli_metrics_format_parse(const char *name);
/* Writes m's metrics snapshot now to path (through a temporary file and a
 * rename) in format (CLI_METRICS_AUTO: .json JSON, .om OpenMetrics, else
 * Prometheus text). Returns: 0, or -1 (reported on stderr). */
int cli_metrics_write(apex_manager_t *m, const char *path, int format);
/* Serves m's metrics at http://ADDR:PORT/metrics (spec "ADDR:PORT",
 * "[V6]:PORT", ":PORT" for loopback; port 0 picks a free one) from
 * libmicrohttpd's own thread, until cli_metrics_stop, which the caller
 * calls before destroying m. Returns: 0 and *out, or -1 with why set. */
typedef struct cli_metrics_server cli_metrics_server_t;
int cli_metrics_listen(apex_manager_t *m, const char *spec, cli_metrics_server_t **out,
                       char *why, size_t n);
/* Returns: the port it listens on, and its URL ("http://127.0.0.1:PORT/metrics"). */
unsigned cli_metrics_port(const cli_metrics_server_t *s);
const char *cli_metrics_url(const cli_metrics_server_t *s);
/* Stops serving (joins its thread) and frees s; NULL: no-op. */
void cli_metrics_stop(cli_metrics_server_t *s);

/* Returns: the exit code for a failure of code, whoever found it (the
 * command line, the library at submit, or the handler at run time):
 * CLI_EXIT_USAGE for invalid input (invalid, invalid_params,
 * plugin_not_found, action_not_found), else CLI_EXIT_FAILED (a plugin that
 * exists but fails to load among them). */
int cli_exit_code(int code);

/* Prints "apex: MESSAGE" on stderr and, when json is set, also the result
 * line {"event":"result","task":null,"state":"failed","error":{"code",
 * "message"}} on stdout, for a failure that happens before a task exists.
 * Returns: cli_exit_code(code). */
int cli_fail(int json, int code, const char *fmt, ...) APEX_PRINTF(3, 4);

/* As cli_fail, for a library error: its message on stderr, and in JSON mode
 * apex_error_to_json(e) (code, message, plugin, action, ...) as the error.
 * e NULL: the sentence for code. Ownership: e borrowed. */
int cli_fail_error(int json, int code, const apex_error_t *e);

/* Writes obj as one compact JSON line on stdout and flushes; once a write
 * has failed (see cli_output_failed) it writes nothing more. Returns: 0 if
 * the line was written, -1 if not (NULL obj, no memory, output failed).
 * Ownership: obj taken (NULL: prints nothing, for a failed allocation
 * upstream). */
int cli_emit(json_t *obj);

/* Returns: 1 once writing or flushing stdout in cli_emit has failed (the
 * reader closed the pipe), else 0. */
int cli_output_failed(void);

/* Decodes the UTF-8 character at s by the library's rules (RFC 3629: no
 * overlong forms, surrogates or code points past U+10FFFF; NUL ends text).
 * Returns: its length (1-4) and *cp, or 0 if s does not start a valid
 * character (then *cp is untouched). */
size_t cli_utf8_decode(const char *s, long *cp);

/* Copies src into dst (cap bytes, NUL included) as valid UTF-8: each byte
 * that does not start a valid character becomes '?', as the library does
 * with text it renders, and a copy that does not fit is cut between
 * characters. cap 0: no-op. */
void cli_utf8_clean(char *dst, size_t cap, const char *src);

/* Returns: cli_utf8_clean of all of src (malloc'd; caller frees), or NULL
 * on no memory. */
char *cli_utf8_dup(const char *src);

/* Returns: e as JSON for a result line, never without "code" and "message":
 * apex_error_to_json(e), or, if that fails or e is NULL, {code, message}
 * built from code (e's own code when e is set) and e's message made valid
 * UTF-8. NULL only on no memory. Ownership: e borrowed; new reference. */
json_t *cli_error_json(const apex_error_t *e, int code);

/* Prints "apex: MSG" on stderr with MSG passed through cli_term_clean. */
void cli_eprint(const char *msg);

/* Creates a manager (o->workers workers, else 2; log level from APEX_LOG; progress at up to
 * 100/s in JSON mode) with the
 * --plugin-path dirs added in order. on_event non-NULL selects dispatch
 * delivery (events run inside apex_manager_dispatch on the caller's thread);
 * log non-NULL replaces the library's stderr sink.
 * Returns: CLI_EXIT_OK and *out, or an exit code (failure reported). */
int cli_manager_new(const cli_opts_t *o, apex_event_fn on_event, void *user, apex_log_fn log,
                    void *log_user, apex_manager_t **out);

/* Returns: the plugin search path as "DIR1, DIR2" (malloc'd; caller frees),
 * or NULL on no memory. */
char *cli_search_path(apex_manager_t *m);

/* Loads plugin `name` for run/describe, reporting failures (unknown plugin
 * names the searched dirs). Returns: CLI_EXIT_OK and *desc, or an exit code. */
int cli_load_plugin(apex_manager_t *m, int json, const char *name, const apex_plugin_desc_t **desc);

/* The reporting half of cli_load_plugin, for a caller that ran
 * apex_manager_load_named itself (rc, err: what it returned; err borrowed,
 * may be NULL). Returns: CLI_EXIT_OK and *desc, or an exit code. */
int cli_report_load(apex_manager_t *m, int json, const char *name, int rc, const apex_error_t *err,
                    const apex_plugin_desc_t **desc);

/* Returns: the action named name in d, or NULL. */
const apex_action_desc_t *cli_find_action(const apex_plugin_desc_t *d, const char *name);

/* Writes d's action names as "a, b, c" into buf (truncated to len). */
void cli_action_names(const apex_plugin_desc_t *d, char *buf, size_t len);

/* Splits "PLUGIN.ACTION" at the first dot into buf (a copy of target).
 * Returns: 0 and *plugin, *action (action NULL when there is no dot); -1
 * if target does not fit in buf. */
int cli_split_target(const char *target, char *buf, size_t len, const char **plugin,
                     const char **action);

/* ---- durable tasks (tasks.c) --------------------------------------------
 * Returns: the store file the command uses (malloc'd; caller frees): --store
 * as given, else $XDG_STATE_HOME/apex/tasks.db (an absolute
 * XDG_STATE_HOME; a relative one is ignored, as the XDG spec says), else
 * $HOME/.local/state/apex/tasks.db; the default's folder is made (0700) if
 * missing. NULL after reporting a failure (no HOME, mkdir failed, memory). */
char *cli_store_path(const cli_opts_t *o);

/* Set in the process `apex run --detach` starts to run the task (the
 * environment variable APEX__RUNNER names it): its stdout goes to the
 * parent until the task is submitted (run.c). */
#define CLI_RUNNER_ENV "APEX__RUNNER"

/* `apex run --detach` in the calling process: starts the runner (this
 * command again, in a session of its own, stdin and stdout on /dev/null
 * once submitted, stderr appended to runner.log beside the store), reads
 * its first line and prints the task id. chosen: the user gave --store (the
 * how-to printed then names it). Returns: the exit code. */
int cli_detach(const cli_opts_t *o, const char *store, int chosen);

/* The commands. Returns: the process exit code. */
int cli_cmd_plugins(const cli_opts_t *o);
int cli_cmd_describe(const cli_opts_t *o);
int cli_cmd_run(const cli_opts_t *o);
int cli_cmd_tasks(const cli_opts_t *o);
int cli_cmd_show(const cli_opts_t *o);
int cli_cmd_cancel(const cli_opts_t *o);
int cli_cmd_watch(const cli_opts_t *o);
int cli_cmd_resume(const cli_opts_t *o);
/* `apex batch`, which parses its own options (batch.c): argv as main got
 * it, cmd_at the index of the word "batch". */
int cli_cmd_batch(int argc, char **argv, int cmd_at);
/* Returns: 1 if arg is an option of `apex batch` that takes a value (so
 * main can find the command word past it), else 0. */
int cli_batch_option_takes_value(const char *arg);
/* `apex mcp` (mcp_cmd.c), which parses its own options as batch does. */
int cli_cmd_mcp(int argc, char **argv, int cmd_at);
/* Returns: 1 if arg is an option of `apex mcp` that takes a value. */
int cli_mcp_option_takes_value(const char *arg);
/* `apex worker` (worker.c), which parses its own options as batch does;
 * and whether arg is one of its options that takes a value. */
int cli_cmd_worker(int argc, char **argv, int cmd_at);
int cli_worker_option_takes_value(const char *arg);

/* Writes all n bytes with write(2), retrying on EINTR and short writes,
 * until done or a write fails (then gives up silently: the callers have
 * nowhere to report it). Async-signal-safe. */
void cli_write_all(int fd, const char *p, size_t n);

/* Monotonic clock in milliseconds. */
int64_t cli_now_ms(void);

/* ---- progress lines (progress_lines.c) ----------------------------------
 * JSON Lines progress events that carry the sub-task tree whole only when a
 * reader needs it, else the sub-tasks that changed (format: README). */
typedef struct cli_progress_lines cli_progress_lines_t;

/* Returns: the line state of one task (nothing written yet), or NULL on no
 * memory. */
cli_progress_lines_t *cli_progress_lines_new(void);
/* NULL: no-op. */
void cli_progress_lines_free(cli_progress_lines_t *pl);
/* Forgets the tree the reader was given: a line made by cli_progress_line
 * was not written, so the next one carries the whole tree. */
void cli_progress_lines_lost(cli_progress_lines_t *pl);
/* Returns: the progress line for p, the next of task's lines (a new
 * object for cli_emit), or NULL on no memory (the next line then carries
 * the whole tree). Ownership: p borrowed. */
json_t *cli_progress_line(cli_progress_lines_t *pl, uint64_t task, const apex_progress_t *p);

/* ---- terminal display (display.c) ---------------------------------------
 * A block of lines redrawn in place: one for the task, one per sub-task. */
typedef struct cli_display cli_display_t;

/* Returns: a display writing to fd (a terminal), or NULL on no memory. */
cli_display_t *cli_display_new(int fd);
/* Restores the cursor and frees. NULL: no-op. */
void cli_display_free(cli_display_t *d);
/* Records the latest progress (copied) and marks the display for a redraw. */
void cli_display_progress(cli_display_t *d, const apex_progress_t *p);
/* Records the latest partial result (apex_ctx_partial_result; NULL clears
 * it), shown as one line under the task's bar, and marks the display for a
 * redraw. Ownership: v borrowed (what is shown is copied). */
void cli_display_partial(cli_display_t *d, const json_t *v);
/* Records the task's state ("queued", "retry_wait", ...), shown when it is
 * not "running". */
void cli_display_state(cli_display_t *d, const char *state);
/* Returns: ms until a pending redraw is due (0: now), -1 if none pending. */
int cli_display_due_ms(cli_display_t *d);
/* Redraws if one is pending and due (at most ~20 times a second). */
void cli_display_tick(cli_display_t *d);
/* Redraws now. */
void cli_display_draw(cli_display_t *d);
/* Erases the block, so a normal line can print where it was; the next draw
 * puts the block below that line. */
void cli_display_erase(cli_display_t *d);

/* Returns: text made safe to print on a terminal, by the display's own rule:
 * control characters (C0, DEL, C1: ESC, newlines, ...) become spaces and
 * malformed UTF-8 bytes '?', so plugin or argv text cannot move the cursor,
 * retitle the window or break a line (malloc'd; caller frees), or NULL on
 * no memory. */
char *cli_term_clean(const char *text);

/* ---- terminal rows (display.c) -----------------------------------------
 * One screen row built by the display's rules, for another live view
 * (batch.c): text is cut to the columns left (counted with wcwidth) and
 * control characters become spaces, so the row is exactly one terminal
 * line. Start with {0} and cols_left set; free p. */
typedef struct cli_row {
  char *p;
  size_t len, cap;
  int oom; /* a write failed for memory: drop the frame */
  int cols_left;
} cli_row_t;

/* Appends as much of text as fits. */
void cli_row_text(cli_row_t *r, const char *text);
/* Appends a bar "[####------]" of width cells filled to pct (0-100). */
void cli_row_bar(cli_row_t *r, double pct, int width);
/* Returns: the columns text takes by the same rules. */
int cli_text_width(const char *text);
/* The terminal's size (TIOCGWINSZ on fd), 80x24 if it cannot be read. */
void cli_term_size(int fd, int *cols, int *rows);

/* ---- library log lines (log_queue.c) ------------------------------------
 * The apex_log_fn of a live display: queues a copy of the line (at most 256
 * waiting; more are dropped and counted) and writes a byte to the fd in
 * *user (an atomic_int *, the loop's self-pipe; NULL or -1: none). Any
 * thread. */
void cli_log_sink(int level, const char *msg, void *user);
/* Takes the oldest queued line. Returns: 1 and *level, *msg (caller frees),
 * else 0 with *dropped set to the lines dropped since the last call. */
int cli_log_pop(int *level, char **msg, size_t *dropped);
/* Returns: "error", "warn", "info", "debug" for an APEX_LOG_* level. */
const char *cli_log_level_name(int level);

#endif
