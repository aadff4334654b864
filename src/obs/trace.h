/* Internal: W3C trace context and spans for tasks (src/obs/trace.c) and
 * their export as OTLP/JSON (src/obs/trace_export.c).
 *
 * A manager with tracing on (m->tracer non-NULL) keeps one live span per
 * task it traces, in a table per lock stripe guarded by that stripe's lock
 * (the task lock), so the lifecycle hooks below, which run under the task
 * lock, take no lock of their own but the exporter's queue push (a leaf,
 * lock-free). With tracing off every hook is one branch at its call site:
 * `if (m->tracer) apex__trace_...`. */
#ifndef APEX_OBS_TRACE_H
#define APEX_OBS_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "apex/apex.h"
#include "core/log.h"

typedef struct apex__tracer apex__tracer_t;
struct apex_task;
struct apex_manager;

/* Starts m's tracer from m->cfg (sampler, file, endpoint, environment):
 * m->tracer stays NULL when tracing is off. Returns: APEX_OK; APEX_E_IO
 * (the trace file cannot be opened, logged), APEX_E_NOMEM. */
int apex__trace_init(struct apex_manager *m);

/* Checks the config's log and trace fields (docs/observability.md).
 * Returns: 1, or 0 with the field and what it wants in why. */
int apex__obs_check_config(const apex_manager_config_t *c, char *why, size_t n);

/* Exports what is queued (a collector gets a short last try), stops the
 * exporter and frees the tracer; m->tracer NULL after. Every task must be
 * terminal. NULL tracer: no-op. */
void apex__trace_stop(struct apex_manager *m);

/* Submit, before the task is visible to any other thread: makes the span
 * of a task that joins a context (a child of opts->traceparent, or of its
 * parent task's attempt), giving t its id first if it has none
 * (apex__pool_new_id, pool_mu), then taking t's lock (and its parent's,
 * before, never both); a malformed traceparent is logged and a new trace
 * started. A task with no context gets its span later, under its lock
 * (trace.c), and its id where an untraced task does. */
void apex__trace_submit(struct apex_task *t, const apex_submit_opts_t *opts);
/* Returns: 1 when a submit with opts and parent task parent_id (0: none)
 * joins a trace context, so apex__trace_submit has a span to make; 0 for
 * a plain task (its span is made at its first attempt). Inline: the plain
 * submit, W1's, makes no call. */
static inline int apex__trace_joins(const apex_submit_opts_t *opts, uint64_t parent_id) {
  return parent_id != 0 || (opts && opts->traceparent);
}
/* The submit failed after apex__trace_submit: the span goes unexported
 * (t->id 0: none was made). */
void apex__trace_forget(struct apex_task *t);

/* Under t's lock: an attempt started (t->attempt is its number). */
void apex__trace_attempt_start(struct apex_task *t);
/* Under t's lock: the open attempt ended with rc; own the handler's error
 * or NULL; att_kind an attempt timeout that fired (apex__tmo_kind_t) or 0. */
void apex__trace_attempt_end(struct apex_task *t, int rc, const apex_error_t *own, int att_kind);
/* Under t's lock: a retry follows in delay_s seconds after err. */
void apex__trace_retry(struct apex_task *t, const apex_error_t *err, double delay_s);
/* Under t's lock: t becomes terminal (state) with error (NULL on success;
 * it may be a lazy one, exec/internal.h); called before the outcome is
 * stored, so t->out still holds the submit time. */
void apex__trace_finish(struct apex_task *t, int state, const apex_error_t *error);
/* Under t's lock: a progress milestone (a status change) was reported. */
void apex__trace_milestone(struct apex_task *t, const char *status, double pct);

/* Under t's lock: the hex ids a log record about t carries (the open
 * attempt's span, else the task's; a live task not yet traced gets its
 * span now). Returns: 1 and both filled, or 0. */
int apex__trace_ids(struct apex_task *t, char trace_hex[33], char span_hex[17]);
/* Not under t's lock: as apex__trace_ids, for a log record about t made
 * after an unlock (its outcome, its progress). A task that ended on this
 * thread just now is found without a lock (its span is no longer live);
 * otherwise takes t's lock. */
int apex__trace_log_ids(struct apex_task *t, char trace_hex[33], char span_hex[17]);
/* Under t's lock: t's traceparent (the open attempt's span as parent).
 * Returns: APEX_OK, APEX_E_INVALID (no trace context, or size < 56). */
int apex__trace_traceparent(struct apex_task *t, char *buf, size_t size);
/* Under t's lock: t's tracestate ("" when none) into buf. Returns: APEX_OK,
 * APEX_E_INVALID (no trace context, buf NULL, or too small). */
int apex__trace_tracestate(struct apex_task *t, char *buf, size_t size);

/* ------------------------------------------------ spans and the exporter */

#define APEX__SPAN_EVENTS 16
#define APEX__SPAN_MILESTONES 8 /* at most; the rest of the room is for retries and the end */

typedef enum apex__span_ev_kind {
  APEX__SEV_RETRY = 1,
  APEX__SEV_TIMEOUT,
  APEX__SEV_CANCEL,
  APEX__SEV_MILESTONE
} apex__span_ev_kind_t;

typedef struct apex__span_ev {
  uint8_t kind;
  uint32_t attempt;
  uint64_t time_ns;
  double num;        /* retry delay, progress percentage */
  int code;          /* the error's code (retry) */
  char text[64];     /* timeout kind, cancel reason, status (cut) */
} apex__span_ev_t;

/* One span: a task's (live in its stripe's table until the task ends)
 * or an attempt's (its task's att until the attempt ends); then queued
 * for export, immutable. */
typedef struct apex__span {
  struct apex__span *next;      /* table chain, then export queue */
  struct apex__span *att;       /* a task span: its open attempt's span */
  uint64_t task_id;
  uint64_t parent_task_id;      /* a child task's parent, else 0 */
  uint8_t trace_id[16], span_id[8], parent_id[8];
  uint8_t has_parent, flags, is_attempt, n_ev;
  /* A task span is allocated with room for its first attempt's span right
   * after it (this[1]): one allocation and one export for the common task
   * of one attempt. att0: that room is in use; att0_done: that attempt
   * ended (it is exported with the task's span). */
  uint8_t att0, att0_done;
  uint32_t attempt;             /* an attempt span's number; a task's count */
  uint32_t ev_dropped;
  uint64_t start_ns, end_ns;    /* Unix ns */
  const char *plugin, *action;  /* the plugin's copies (outlive dlclose) */
  int status;                   /* 0 unset, 1 ok, 2 error (OTLP's codes) */
  int code;                     /* failure: an apex_status_t */
  int state;                    /* a task span: its terminal state */
  char *msg;                    /* status message (owned) or NULL */
  char *tracestate;             /* the incoming tracestate (owned) or NULL */
  apex__span_ev_t *ev;          /* APEX__SPAN_EVENTS of room, made by the
                                   first event (most spans have none) */
} apex__span_t;
/* A task span and its first attempt's are one allocation of two spans (a
 * "pair"), which is recycled rather than freed: the exporter gives written
 * pairs back in bundles (apex__export_pairs), cleared; a bundle is a list
 * by next whose head keeps, while it waits in the pool, the next bundle in
 * att and its length in attempt (both zero again once taken). */

typedef struct apex__exporter apex__exporter_t;

/* The exporter's lanes: a finished span joins the queue through the lane
 * of the thread that ended it (its slot, src/obs/clock.h: one pusher a
 * lane), in groups, so the queue's shared counter and head are written
 * once a group rather than once a span, and a lane's line stays with its
 * thread. A thread without a slot of its own (past APEX__EXPORT_LANES
 * threads) pushes straight to the queue (lane APEX__EXPORT_LANES). */
#define APEX__EXPORT_LANES 32
#define APEX__EXPORT_GROUP 16

/* Opens the file (append) and/or prepares the collector URL; starts the
 * exporter thread. Returns: APEX_OK, APEX_E_IO (why written), APEX_E_NOMEM. */
int apex__export_start(const char *file, const char *endpoint, const apex__logger_t *log,
                       apex__exporter_t **out, char *why, size_t n);
/* Queues s (taken) on lane: the calling thread's slot (<
 * APEX__EXPORT_LANES), or APEX__EXPORT_LANES. Lock-free. Returns: NULL, or
 * spans the full queue refused (a list by next, s among them or not),
 * counted as dropped, for the caller to recycle (apex__span_clear) or
 * free. */
apex__span_t *apex__export_push(apex__exporter_t *ex, unsigned lane, apex__span_t *s);
/* Returns: a bundle of cleared pairs the exporter wrote and gave back (a
 * list by next; head's att and attempt zeroed), or NULL. Any thread; takes
 * a lock of the exporter's own that no exporter step holds (a leaf). */
apex__span_t *apex__export_pairs(apex__exporter_t *ex);
/* Exports what is queued and stops; frees ex. */
void apex__export_stop(apex__exporter_t *ex);
/* Adds the exporter's counts to st. */
void apex__export_stats(apex__exporter_t *ex, apex_trace_stats_t *st);
/* Frees a span (a pair's head: both) and what it owns. NULL: no-op. */
void apex__span_free(apex__span_t *s);
/* A pair (s a task span) back to its state after calloc: what it owns
 * freed, both spans zeroed. */
void apex__span_clear(apex__span_t *s);

/* Renders spans (a list by next) as one ExportTraceServiceRequest in
 * OTLP/JSON, no newline. Returns: a malloc'd string (NUL-terminated),
 * *len its length; NULL on no memory. For tests, too. */
char *apex__otlp_json(const apex__span_t *spans, size_t *len);

#endif
