/* What the parts of `apex batch` share: batch.c runs the lines,
 * batch_opts.c parses its command line, batch_view.c draws the live view.
 * Main thread only, as every callback runs there (batch.c says how). */
#ifndef APEX_CLI_BATCH_H
#define APEX_CLI_BATCH_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cli.h"

#define MAX_WINDOW 1000000   /* --max-pending's cap */
#define MIN_TIMEOUT_S 0.001  /* as apex run's --timeout */

/* ---- the command line (batch_opts.c) ---------------------------------- */

typedef struct scope_opt {
  const char *arg; /* as given, for messages (argv) */
  apex_scope_t scope;
  char *name;      /* owned; NULL for key:* */
  uint32_t limit;  /* --limit */
  double rate;     /* --rate */
  uint32_t burst;
} scope_opt_t;

typedef struct batch_opts {
  cli_opts_t base; /* json, timeout_s, retries, plugin_paths, workers */
  const char *file;
  uint32_t concurrency; /* 0: no global limit */
  size_t window;        /* 0: the default */
  scope_opt_t *limits, *rates;
  size_t n_limits, n_rates;
  int help;
  const char *metrics_listen; /* --metrics-listen ADDR:PORT, or NULL */
  char why[1024]; /* what the parse refused, naming the option */
  int code;       /* its apex_status_t */
} batch_opts_t;


/* apex batch --help. */
extern const char cli_batch_usage[];

/* Parses argv (all but argv[0] and the command word at cmd_at) into o,
 * whose plugin_paths, limits and rates have room for argc entries each.
 * Returns: 0, or -1 with o->why and o->code set (o->help may still be
 * set: help wins). */
int cli_batch_parse(batch_opts_t *o, int argc, char **argv, int cmd_at);

/* Frees what parsing allocated, and the three arrays. */
void cli_batch_opts_free(batch_opts_t *o);

/* One --limit SCOPE=N into o->limits[o->n_limits++] (room the caller's),
 * as apex batch parses it; `apex worker` shares it. Returns: 0, or -1 with
 * o->why and o->code set. */
int cli_batch_parse_limit(batch_opts_t *o, const char *arg);

/* ---- the run's state (batch.c) ----------------------------------------- */

enum { SL_QUEUED, SL_RUNNING, SL_RETRY };

typedef struct batch batch_t;

/* A line in flight: submitted, its DONE not yet dispatched. */
typedef struct slot {
  batch_t *b;
  uint64_t line;
  char *action;               /* "plugin.action" as written; owned */
  apex_task_t *task;          /* our handle */
  uint64_t task_id;
  int state;                  /* SL_* */
  apex_progress_t *progress;  /* latest (terminal mode); a reference */
  cli_progress_lines_t *pl;   /* JSON mode: the tree the reader holds */
  struct slot *prev, *next;   /* in flight, in line order */
} slot_t;

/* A plugin as lines name it: loaded once, or the reason it cannot be. */
typedef struct plug {
  char *name;
  const apex_plugin_desc_t *desc; /* NULL: failed */
  int code;
  char *message;
} plug_t;

typedef struct failure {
  uint64_t line;
  char *action;  /* may be NULL */
  char *code;    /* snake_case status name */
  char *message;
} failure_t;

typedef struct view {
  int fd;
  atomic_int *cursor_flag; /* set while the cursor is hidden, for a
                              signal handler that exits */
  int lines; /* rows the last frame left on screen */
  int dirty;
  int64_t last_ms;
  int cursor_hidden;
} view_t;

enum { STOP_NONE, STOP_SIGNAL, STOP_OUTPUT };

struct batch {
  const batch_opts_t *o;
  int json;
  apex_manager_t *m;
  size_t window;
  /* input */
  int in_fd;
  const char *in_name;
  char *buf;
  size_t start, len, cap; /* unread bytes: buf[start, start + len) */
  int eof, in_ready, skipping, read_error;
  int in_tty;                /* the input is a terminal */
  uint64_t line_no;          /* physical lines consumed */
  uint64_t total;            /* non-blank lines, if known (regular file) */
  int total_known;
  /* counts */
  uint64_t read, n_queued, n_running, n_retry;
  uint64_t succeeded, failed, timed_out, cancelled, invalid;
  size_t in_flight;
  slot_t *head, *tail;
  plug_t *plugs;
  size_t n_plugs;
  failure_t *fails;
  size_t n_fails;
  int stop, stop_sig;
  int64_t start_ms;
  view_t *view;
  cli_metrics_server_t *metrics; /* --metrics-listen's server, or NULL */
};


/* ---- the live view (batch_view.c) -------------------------------------- */

/* Redraws b's block now: the overall bar, the counts, one row per running
 * task (as many as the terminal has rows for, then "+N more running"). */
void cli_batch_view_draw(batch_t *b);
/* Returns: ms until a pending redraw is due (0: now), -1 if none. */
int cli_batch_view_due_ms(const batch_t *b);
/* Marks the view for a redraw (at most ~20 a second). No view: no-op. */
void cli_batch_view_dirty(batch_t *b);
/* Erases the block, so a plain line can print where it was. */
void cli_batch_view_erase(batch_t *b);
/* Leaves the last frame on screen, shows the cursor and frees the view. */
void cli_batch_view_close(batch_t *b);
/* Writes ms as "12.3 s" or "M:SS" into buf. */
void cli_batch_fmt_elapsed(char *buf, size_t len, int64_t ms);

#endif
