/* Apex host API: load plugins, run their actions asynchronously, receive
 * progress and outcomes, cancel, time out, retry.
 *
 * Conventions (see docs/architecture.md):
 * - Every function returning apex_status_t returns APEX_OK (0) or a negative
 *   code; where it takes `apex_error_t **err`, a failure also stores a new
 *   error object there (NULL: not wanted) that names what was wrong.
 * - Ownership: "borrowed" pointers stay the caller's; a "new reference" is
 *   released by the matching _unref/_release; "taken" moves ownership to Apex.
 *   Unref/release/destroy of NULL is a no-op.
 * - Thread-safety: not thread-safe unless the comment says otherwise. The
 *   manager, tasks, tokens, errors and progress snapshots are all marked safe
 *   from any thread, so in practice only the config struct is not.
 */
#ifndef APEX_APEX_H
#define APEX_APEX_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "apex/common.h"
#include "apex/plugin.h"
#include "apex/trace.h"
#include "apex/version.h"
#include "apex/metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Returns: the library's version string, "MAJOR.MINOR.PATCH" (static). May
 * differ from APEX_VERSION_STRING if the program runs against a newer .so.
 * Thread-safety: any thread. */
APEX_EXTERN const char *apex_version(void);
/* Returns: the library's APEX_VERSION_NUMBER. Thread-safety: any thread. */
APEX_EXTERN unsigned apex_version_number(void);

/* ---------------------------------------------------------------- errors */

/* An immutable, reference-counted error: code, message and where it came
 * from. Thread-safety: every function below, any thread. A task's outcome
 * error (the DONE event's, apex_task_error) may be made on its first read
 * and, until its last unref, keep its task's memory (a task handle's
 * worth), as a task handle does; what it says never depends on when it is
 * read. */
typedef struct apex_error apex_error_t;

/* Returns: the code (negative apex_status_t); APEX_E_INVALID for NULL. */
APEX_EXTERN int apex_error_code(const apex_error_t *e);
/* Returns: the message; "" for NULL. Borrowed: valid while e is. */
APEX_EXTERN const char *apex_error_message(const apex_error_t *e);
/* Returns: plugin / action names, or NULL when not about one. Borrowed. */
APEX_EXTERN const char *apex_error_plugin(const apex_error_t *e);
APEX_EXTERN const char *apex_error_action(const apex_error_t *e);
/* Returns: the task id, 0 when not about a task. */
APEX_EXTERN uint64_t apex_error_task_id(const apex_error_t *e);
/* Returns: the attempt number (1-based), 0 when not about an attempt. */
APEX_EXTERN uint32_t apex_error_attempt(const apex_error_t *e);
/* Returns: the error that caused this one, or NULL. Borrowed. */
APEX_EXTERN const apex_error_t *apex_error_cause(const apex_error_t *e);
/* Which timeout an APEX_E_TIMEOUT error of a task or attempt is
 * (docs/scheduling.md): "schedule_to_close" (the overall timeout_s),
 * "schedule_to_start" (its first attempt never started in time),
 * "start_to_close" (one attempt ran too long), "heartbeat" (one attempt
 * went too long without apex_ctx_heartbeat).
 * Returns: one of those static strings; NULL for NULL, another code, or a
 * timeout error Apex did not raise (a handler's own APEX_E_TIMEOUT).
 * Ownership: static. Thread-safety: any thread. */
APEX_EXTERN const char *apex_error_timeout_kind(const apex_error_t *e);
/* The partial result a failed, cancelled or timed-out task had published
 * last (apex_ctx_partial_result) when it ended: what it achieved before it
 * stopped.
 * Returns: the value, or NULL (for NULL, an error not of a task's outcome,
 * or a task that published none). Ownership: borrowed, valid while e is;
 * read it, never modify it or take a reference (json_incref) on it: the
 * error is shared between threads, jansson's reference counts are not;
 * json_deep_copy what you keep. Thread-safety: any thread. */
APEX_EXTERN const json_t *apex_error_partial_result(const apex_error_t *e);
/* Returns: {"code": "timeout", "message": ..., "plugin"?, "action"?,
 * "task"?, "attempt"?, "timeout"? (apex_error_timeout_kind),
 * "partial_result"? (a copy of apex_error_partial_result), "cause"?} as
 * a new reference, NULL for NULL or no memory. */
APEX_EXTERN json_t *apex_error_to_json(const apex_error_t *e);
/* Returns: e (a new reference), for convenience. */
APEX_EXTERN apex_error_t *apex_error_ref(apex_error_t *e);
APEX_EXTERN void apex_error_unref(apex_error_t *e);

/* ------------------------------------------------------ cancellation token */

/* A thread-safe, reference-counted cancellation token (plan task 3.1.2).
 * Cancellation is one-way and happens at most once; the first reason wins.
 * A child token is cancelled (reason "parent") when its parent is.
 * Thread-safety: every function below, any thread. */
typedef struct apex_token apex_token_t;

/* Runs once when the token is cancelled, on the cancelling thread (or at
 * once on the registering thread if it was already cancelled). It must not
 * block for long; it may call any token function, including cancel. */
typedef void (*apex_token_fn)(apex_token_t *tok, const char *reason, void *user);

/* Returns: APEX_OK and a new token in *out; APEX_E_INVALID if out is NULL,
 * APEX_E_NOMEM. Ownership: caller unrefs *out. */
APEX_EXTERN apex_status_t apex_token_new(apex_token_t **out);
/* As apex_token_new, linked to parent: cancelled with reason "parent" when
 * parent is (at once if it already is). The parent does not keep the child
 * alive. Returns: also APEX_E_INVALID if parent is NULL. */
APEX_EXTERN apex_status_t apex_token_new_child(apex_token_t *parent, apex_token_t **out);
APEX_EXTERN apex_token_t *apex_token_ref(apex_token_t *tok);
APEX_EXTERN void apex_token_unref(apex_token_t *tok);
/* Cancels with reason (NULL means "user"), runs the callbacks, wakes the fd
 * and waiters, cancels the children.
 * Returns: APEX_OK; APEX_E_ALREADY if it was already cancelled (the first
 * reason stays); APEX_E_INVALID if tok is NULL. Ownership: reason copied. */
APEX_EXTERN apex_status_t apex_token_cancel(apex_token_t *tok, const char *reason);
/* Returns: 1 if cancelled, else 0 (also for NULL). */
APEX_EXTERN int apex_token_is_cancelled(const apex_token_t *tok);
/* Returns: the reason, or NULL while not cancelled. Borrowed: valid while
 * tok is. */
APEX_EXTERN const char *apex_token_reason(const apex_token_t *tok);
/* Registers fn to run exactly once on cancellation. If the token is already
 * cancelled fn runs now, before this returns, and *id is set to 0.
 * Returns: APEX_OK; APEX_E_INVALID (NULL tok or fn), APEX_E_NOMEM (fn then
 * never runs). Ownership: user borrowed until fn ran or was removed. */
APEX_EXTERN apex_status_t apex_token_on_cancel(apex_token_t *tok, apex_token_fn fn, void *user,
                                               uint64_t *id);
/* Removes a callback. When this returns, the callback is not running and
 * never will (if another thread is running it, this waits for it to finish,
 * unless called from inside that very callback).
 * Returns: APEX_OK if removed before it ran; APEX_E_ALREADY if it ran (or
 * id is 0 or unknown); APEX_E_INVALID for NULL tok. */
APEX_EXTERN apex_status_t apex_token_remove_callback(apex_token_t *tok, uint64_t id);
/* Returns: an fd that is readable (POLLIN) once the token is cancelled, made
 * on first use; negative apex_status_t (APEX_E_IO) if it cannot be made.
 * Ownership: the token's; do not read or close it. */
APEX_EXTERN int apex_token_fd(apex_token_t *tok);
/* Blocks until the token is cancelled or timeout_ms passes (-1: forever).
 * Returns: APEX_E_CANCELLED when cancelled, APEX_OK when the time ran out;
 * APEX_E_INVALID for NULL tok; APEX_E_IO if the clock or the kernel wait
 * failed (not expected on Linux), and then the wait ended early. */
APEX_EXTERN apex_status_t apex_token_wait(apex_token_t *tok, int64_t timeout_ms);

/* ---------------------------------------------------------------- progress */

/* An immutable, validated, reference-counted ProgressUpdate (plan task
 * 3.1.1) as delivered to the host. Thread-safety: any thread. */
typedef struct apex_progress apex_progress_t;

/* Checks a ProgressUpdate in JSON form: {"percentage": number in [0,100],
 * "message"?: string, "status"?: known status, "details"?: object,
 * "sub_tasks"?: [same shape with a "name"]}; details, all of the update's
 * together, within the limits on values of plugin.h (APEX_VALUE_MAX_DEPTH
 * and the rest). Iterative where the value is free-form, so any input is
 * safe to check, however deep or cyclic.
 * Returns: APEX_OK, or APEX_E_INVALID with the reason written to why (at
 * most why_len bytes, NUL-terminated; why may be NULL). Ownership: borrowed. */
APEX_EXTERN apex_status_t apex_progress_validate(const json_t *update, char *why, size_t why_len);
/* Checks the C form the plugin API takes (apex_progress_update_t).
 * Returns: as apex_progress_validate. Ownership: u borrowed. Thread-safety
 * (this and the two beside it): any thread; pure functions. */
APEX_EXTERN apex_status_t apex_progress_update_validate(const apex_progress_update_t *u, char *why,
                                                        size_t why_len);
/* Returns: 1 if status is one of the known statuses: running, completed,
 * error, milestone_reached, pending (a sub-task not started yet), queued,
 * retry_wait, succeeded, failed, cancelled, timed_out. */
APEX_EXTERN int apex_progress_status_is_known(const char *status);

/* Returns: the per-task sequence number of this delivered update (1, 2,
 * ...) / its percentage; 0 / 0.0 for NULL. Any thread. */
APEX_EXTERN uint64_t apex_progress_seq(const apex_progress_t *p);
APEX_EXTERN double apex_progress_percentage(const apex_progress_t *p);
/* Returns: borrowed strings/JSON valid while p is; message "" when none,
 * status never NULL, details an object (maybe empty), sub_tasks an array
 * (maybe empty). On a NULL p: 0, 0.0, "", "", NULL, NULL. */
APEX_EXTERN const char *apex_progress_message(const apex_progress_t *p);
APEX_EXTERN const char *apex_progress_status(const apex_progress_t *p);
APEX_EXTERN const json_t *apex_progress_details(const apex_progress_t *p);
APEX_EXTERN const json_t *apex_progress_sub_tasks(const apex_progress_t *p);
/* Returns: the update as JSON {"seq", "percentage", "status", "message",
 * "details", "sub_tasks"}, a new reference; NULL on no memory. */
APEX_EXTERN json_t *apex_progress_to_json(const apex_progress_t *p);
APEX_EXTERN apex_progress_t *apex_progress_ref(apex_progress_t *p);
APEX_EXTERN void apex_progress_unref(apex_progress_t *p);

/* ------------------------------------------------------------- manager */

typedef struct apex_manager apex_manager_t;
typedef struct apex_task apex_task_t;

typedef enum apex_task_state {
  APEX_TASK_QUEUED = 0,
  APEX_TASK_RUNNING,
  APEX_TASK_RETRY_WAIT,
  APEX_TASK_SUCCEEDED,
  APEX_TASK_FAILED,
  APEX_TASK_CANCELLED,
  APEX_TASK_TIMED_OUT,
  /* Appended (values above are ABI 1's and never change): */
  APEX_TASK_SCHEDULED /* accepted with a start time (run_at, run_after_s)
                         that has not come yet; then queued */
} apex_task_state_t;

/* Returns: "queued", "running", "retry_wait", "succeeded", "failed",
 * "cancelled", "timed_out", "scheduled"; "unknown" otherwise. Static. Any
 * thread. */
APEX_EXTERN const char *apex_task_state_name(apex_task_state_t s);
/* Returns: 1 for succeeded, failed, cancelled and timed_out. */
APEX_EXTERN int apex_task_state_is_terminal(apex_task_state_t s);

typedef enum apex_event_type {
  APEX_EVENT_ATTEMPT = 1,  /* an attempt starts (state running) */
  APEX_EVENT_PROGRESS = 2, /* a validated, coalesced progress update */
  APEX_EVENT_RETRY = 4,    /* an attempt failed and another is scheduled */
  APEX_EVENT_DONE = 8,     /* the task reached its terminal state */
  /* Appended: */
  APEX_EVENT_HEARTBEAT = 16, /* the running attempt called apex_ctx_heartbeat;
                                result holds its details (or NULL) */
  APEX_EVENT_SCHEDULED = 32, /* a task with a start time in the future was
                                accepted (state scheduled) */
  APEX_EVENT_PARTIAL = 64,   /* the task's latest partial result
                                (apex_ctx_partial_result) in result, or
                                NULL if the plugin cleared it; coalesced
                                like PROGRESS, the last one before DONE */
  APEX_EVENT_GROUP = 128     /* a member of an operation group (apex_group_t)
                                reached its terminal state: task is that
                                member, state its outcome, group the group,
                                seq the group's change number (1, 2, ...);
                                delivered after the member's DONE */
} apex_event_type_t;

typedef struct apex_group apex_group_t;

/* What a host's event callback receives. Every pointer in it is borrowed for
 * the duration of the callback only: ref the Apex objects you keep, and
 * json_deep_copy the result (jansson's reference counts are not safe to
 * share across threads). */
typedef struct apex_event {
  apex_event_type_t type;
  apex_task_t *task;
  uint64_t task_id;
  uint64_t seq;                     /* per task, 1, 2, ... over all events */
  uint32_t attempt;                 /* attempt number the event is about */
  apex_task_state_t state;          /* the task's state after the event */
  const apex_progress_t *progress;  /* PROGRESS */
  const apex_error_t *error;        /* RETRY (this attempt), DONE (failure) */
  const json_t *result;             /* DONE, succeeded; HEARTBEAT: details;
                                       PARTIAL: the partial result */
  double retry_delay_s;             /* RETRY: delay before the next attempt */
  /* Appended (a struct Apex fills: a host built against an older header
   * never reads past what it knows). */
  apex_group_t *group;              /* GROUP: the group (borrowed) */
} apex_event_t;

typedef void (*apex_event_fn)(const apex_event_t *ev, void *user);

/* Log sink: level is an APEX_LOG_* value; msg is one line without newline. */
typedef void (*apex_log_fn)(int level, const char *msg, void *user);

typedef enum apex_delivery {
  APEX_DELIVER_LOOP = 0,    /* on_event runs on Apex's runtime thread */
  APEX_DELIVER_DISPATCH = 1 /* events wait for apex_manager_dispatch() */
} apex_delivery_t;

typedef struct apex_manager_config {
  uint32_t struct_size;      /* sizeof as the caller's header declares it;
                                set by apex_manager_config_init */
  unsigned workers;          /* worker threads; 0: 2 or the CPU count */
  unsigned max_stuck_workers; /* replacements for timed-out stuck handlers,
                                 started when queued work finds no idle
                                 worker */
  double progress_rate_hz;   /* per-task progress deliveries per second */
  size_t max_queued;         /* 0: unlimited; else submit fails QUEUE_FULL
                                while this many tasks are live (queued,
                                running or waiting to retry) */
  apex_event_fn on_event;    /* NULL: no events (wait on tasks instead) */
  void *event_user;
  unsigned event_mask;       /* apex_event_type_t bits wanted; 0: ATTEMPT,
                                PROGRESS, RETRY and DONE (the types
                                appended since come only when asked for,
                                so an older host never sees one) */
  apex_delivery_t delivery;
  apex_log_fn log;           /* NULL: stderr */
  void *log_user;
  int log_level;             /* APEX_LOG_*; -1: from APEX_LOG, else WARN */
  /* ABI 1 (0.1.0) ended here. Append only, starting past 0.1.0's sizeof
   * (docs/abi.md); a field's zero need not be its default: a caller whose
   * struct_size ends before it gets the default. */
  int64_t shutdown_grace_ms; /* the least time apex_manager_destroy gives
                                handlers to return after it cancelled their
                                tasks, in [0, 86400000]; default
                                APEX_SHUTDOWN_GRACE_MS. A host about to exit
                                may want it short (the apex command: 50) */
  /* Operation metrics (include/apex/metrics.h): APEX_METRICS_DEFAULT (0,
   * on), APEX_METRICS_ON or APEX_METRICS_OFF. Off, the task lifecycle pays
   * one branch per event and a snapshot holds only the gauges. */
  int metrics;
  /* Structured logs and traces (include/apex/trace.h,
   * docs/observability.md). */
  apex_log_record_fn log_record; /* receives every record as fields; set,
                                    it replaces log (the string sink) */
  void *log_record_user;
  int log_format;            /* apex_log_format_t for the default sink;
                                0: from APEX_LOG_FORMAT, else human */
  int log_rate_limit;        /* records a plugin may log per second before
                                the rest are dropped and counted (a summary
                                record says how many); 0: 200; -1: none;
                                below -1 refused */
  const char *trace_file;    /* append OTLP/JSON lines here (copied); NULL:
                                none */
  const char *otlp_endpoint; /* OTLP/HTTP JSON collector base URL
                                ("http://host:4318"; copied); NULL: from
                                APEX_OTLP_ENDPOINT, else none */
  int trace_sampler;         /* apex_trace_sampler_t; 0: see there */
  double trace_ratio;        /* RATIO: the share of new traces recorded,
                                in [0, 1] (outside it, or NaN: refused) */
  /* Durable tasks (docs/store.md). */
  const char *store;         /* where tasks are journaled: NULL (the
                                default): nowhere, tasks live in memory
                                only; "sqlite:PATH" or a plain PATH: an
                                SQLite file (made if missing);
                                "postgresql://..." (or "postgres://"): a
                                PostgreSQL database several hosts share;
                                "memory:" an in-process store (tests).
                                Copied */
  unsigned store_flags;      /* APEX_STORE_F_* bits */
  const char *store_owner;   /* this manager's owner id in the store (1 to
                                128 bytes of [A-Za-z0-9._:-]); NULL: a new
                                random one. A host that restarts with the
                                same id takes its own unfinished tasks
                                back at apex_manager_recover */
  double store_lease_s;      /* how long a claim on a task lasts without
                                renewal (renewed while the manager lives);
                                0: APEX_STORE_LEASE_S */
} apex_manager_config_t;

/* apex_manager_config_t.store_flags */
#define APEX_STORE_F_DURABLE_ALL 0x1u /* journal every task, as if each
                                         submit set opts.durable */
/* The default of apex_manager_config_t.store_lease_s, seconds. */
#define APEX_STORE_LEASE_S 30.0

/* Fills cfg with defaults: workers 0, max_stuck_workers 4, progress_rate_hz
 * 20, log_level -1, shutdown_grace_ms APEX_SHUTDOWN_GRACE_MS, everything
 * else 0/NULL, and struct_size = sizeof as this
 * header declares it. A macro, as zlib's deflateInit is: it passes that size
 * to apex_manager_config_init_v2, so a library newer than the header never
 * writes past the caller's struct, and one older than the header zeroes the
 * fields it does not know (set one and apex_manager_new refuses the config,
 * rather than ignore it). Thread-safety: cfg is the caller's. */
#define apex_manager_config_init(cfg) \
  apex_manager_config_init_v2((cfg), sizeof(apex_manager_config_t))
/* Returns: APEX_OK; APEX_E_INVALID (cfg untouched) if cfg is NULL or size is
 * below ABI 1's first layout or above 4096. Ownership: cfg is the caller's,
 * size bytes of it written. Thread-safety: cfg is the caller's (any thread
 * filling its own). */
APEX_EXTERN apex_status_t apex_manager_config_init_v2(apex_manager_config_t *cfg, size_t size);
/* The ABI-1 symbol, kept for programs built against 0.1.0: fills exactly
 * 0.1.0's layout. Source that names it gets the macro above. */
APEX_EXTERN void(apex_manager_config_init)(apex_manager_config_t *cfg);

/* Creates a manager: starts the runtime thread and the worker pool.
 * Returns: APEX_OK; APEX_E_INVALID (NULL out, bad cfg field, named in the
 * log), APEX_E_NOMEM, APEX_E_IO (a thread or fd could not be made). Note:
 * libuv 1.44 aborts the process if an allocation fails while its loop
 * registers its first fds; Apex's own code never aborts.
 * Ownership: cfg borrowed (copied); *out destroyed by apex_manager_destroy.
 * Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_new(const apex_manager_config_t *cfg, apex_manager_t **out);

/* The default of config.shutdown_grace_ms: the least time
 * apex_manager_destroy gives handlers to return after it cancelled their
 * tasks, whatever its drain_ms. A handler that watches its token returns
 * well within it, so only one that ignores cancellation is still running
 * after it. */
#define APEX_SHUTDOWN_GRACE_MS 1000

/* Shuts down, in this order:
 * 1. refuses new submits and starts no attempt: the tasks waiting for one
 *    (queued, or waiting to retry) end at once, cancelled ("shutdown");
 * 2. lets running attempts finish for up to drain_ms (negative: no limit);
 *    one that fails transiently meanwhile is not retried (cancelled);
 * 3. cancels what is left ("shutdown"): each task ends `cancelled` at once
 *    and its handler's token fires;
 * 4. waits for those handlers to return, up to drain_ms or
 *    config.shutdown_grace_ms, whichever is longer (negative drain_ms: no
 *    limit);
 * 5. delivers every event still waiting, the DONE of every task among
 *    them: in LOOP mode on Apex's runtime thread, and destroy returns only
 *    after the last callback returned; in DISPATCH mode on the calling
 *    thread;
 * 6. runs plugin shutdown hooks and frees everything.
 * So every task's DONE event has been delivered, exactly once, before
 * destroy returns, and no event callback runs after it returned (with
 * APEX_E_BUSY too: every task is terminal by then, so a late report of a
 * handler still running makes no event). Outstanding task handles stay
 * valid until released.
 * Returns: APEX_OK; APEX_E_BUSY only if handlers that ignore cancellation
 * were still running at the end of step 4: the manager is then freed by the
 * last of them when it returns (plugins stay loaded until then, and for
 * good if that last one is a deferred plugin's own thread, which may still
 * be inside the plugin). Until then the log sink (cfg.log) may still be
 * called from those handlers' threads; keep it valid, or keep the default.
 * Thread-safety: call once, from a thread that is not Apex's (not from a
 * callback or handler). */
APEX_EXTERN apex_status_t apex_manager_destroy(apex_manager_t *m, int64_t drain_ms);

/* Adds a directory to the plugin search path, searched in the order added
 * (before APEX_PLUGIN_PATH and the installed plugin directory).
 * Returns: APEX_OK, APEX_E_INVALID, APEX_E_NOMEM. Ownership: dir copied.
 * Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_add_plugin_path(apex_manager_t *m, const char *dir);

/* Loads a plugin from a .so file, or every *.so of a directory (a directory
 * load stops at nothing: it loads what it can and reports the first
 * failure).
 * Returns: APEX_OK; APEX_E_PLUGIN_LOAD (not a shared object, no entry symbol,
 * invalid descriptor, duplicate name, init failed), APEX_E_ABI_MISMATCH,
 * APEX_E_INVALID; each with *err naming the file and the reason. A failed
 * load leaves the manager as it was. Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_load(apex_manager_t *m, const char *path, apex_error_t **err);

/* Loads plugin `name` unless loaded: the first NAME.so found on the search
 * path (added dirs, then APEX_PLUGIN_PATH entries, then the installed dir).
 * Returns: APEX_OK; APEX_E_PLUGIN_NOT_FOUND; or as apex_manager_load.
 * Ownership: name borrowed; *err a new error. Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_load_named(apex_manager_t *m, const char *name,
                                                  apex_error_t **err);

/* Loads every plugin on the search path (first one of each name wins).
 * Returns: APEX_OK, or the first failure (loading goes on past it).
 * Ownership: *err a new error. Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_load_all(apex_manager_t *m, apex_error_t **err);

/* Returns: the search path as a JSON array of directories, a new reference;
 * NULL on no memory. Thread-safety: any thread. */
APEX_EXTERN json_t *apex_manager_plugin_path(apex_manager_t *m);

/* Returns: the number of loaded plugins / the i-th in load order, or NULL.
 * The descriptor is Apex's normalized copy in the library's layout, whatever
 * the plugin was built with: struct_size is the library's
 * sizeof(apex_plugin_desc_t), action_size the stride of its actions array,
 * and fields the plugin's older struct lacked read as zero. Valid until the
 * manager is destroyed. Step through its actions with
 * apex_plugin_desc_action (which honours action_size), not actions[i].
 * Thread-safety: any thread. */
APEX_EXTERN size_t apex_manager_plugin_count(apex_manager_t *m);
#define apex_manager_plugin_at(m, i) apex_manager_plugin_at_v2((m), (i))
APEX_EXTERN const apex_plugin_desc_t *apex_manager_plugin_at_v2(apex_manager_t *m, size_t i);
/* Returns: the loaded plugin named name, or NULL. */
#define apex_manager_plugin(m, name) apex_manager_plugin_v2((m), (name))
APEX_EXTERN const apex_plugin_desc_t *apex_manager_plugin_v2(apex_manager_t *m,
                                                             const char *name);
/* The ABI-1 symbols, kept for programs built against 0.1.0: the same
 * descriptor with its actions at 0.1.0's stride (action_size says so), as
 * those programs index actions[i]. Source that names them gets the macros
 * above. */
APEX_EXTERN const apex_plugin_desc_t *(apex_manager_plugin_at)(apex_manager_t *m, size_t i);
APEX_EXTERN const apex_plugin_desc_t *(apex_manager_plugin)(apex_manager_t *m, const char *name);
/* Returns: the file a loaded plugin came from, or NULL. Borrowed. */
APEX_EXTERN const char *apex_manager_plugin_file(apex_manager_t *m, const char *name);

/* Returns: the i-th action of a descriptor from apex_manager_plugin*, found
 * by its action_size stride, or NULL if d is NULL or i >= d->n_actions. A
 * descriptor without the field (from a 0.1.0 library) or with it 0 has
 * 0.1.0's layout (docs/abi.md). A field of
 * apex_action_desc_t is there if its end is within the stride (a library
 * older than this header has a shorter struct). Ownership: borrowed, valid
 * while d is. Thread-safety: any thread. */
static inline const apex_action_desc_t *apex_plugin_desc_action(const apex_plugin_desc_t *d,
                                                                size_t i) {
  if (!d || i >= d->n_actions) return NULL;
  size_t stride = APEX_HAS_FIELD(apex_plugin_desc_t, d, action_size) && d->action_size
                      ? d->action_size
                      : sizeof(apex_action_desc_t);
  return (const apex_action_desc_t *)(const void *)((const char *)d->actions + i * stride);
}

/* Per-call options of a submit. Every field's zero means the action's
 * default, so a zero-filled struct (or apex_submit_opts_init) asks for
 * nothing special.
 * struct_size: sizeof as the caller's header declares it. The library reads
 * no further: fields a smaller (older) struct lacks take their defaults, and
 * bytes past what the library knows must be zero (a newer header's field
 * set against an older library is refused as APEX_E_INVALID, not ignored).
 * 0 reads as ABI 1's first layout (up to event_user), so a struct filled by
 * a designated initializer without struct_size keeps working; set it
 * (apex_submit_opts_init does) to use any field appended later. */
typedef struct apex_submit_opts {
  uint32_t struct_size;             /* set by apex_submit_opts_init */
  double timeout_s;                 /* overall deadline across retries
                                       (schedule-to-close), seconds, at most
                                       1e9, kept to 7 significant digits;
                                       0: the action's default; negative
                                       (APEX_TIMEOUT_NONE): none */
  const apex_retry_policy_t *retry; /* NULL: the action's; copied */
  apex_token_t *parent;             /* the task's token becomes its child */
  apex_event_fn on_event;           /* per-task override of the manager's */
  void *event_user;
  /* ABI 1 (0.1.0) ended here. Append only, starting past 0.1.0's sizeof,
   * each new field meaning "the default" when zero (docs/abi.md). */
  /* Scheduling (docs/scheduling.md). */
  int32_t priority;            /* in [APEX_PRIORITY_MIN, APEX_PRIORITY_MAX],
                                  higher runs first; 0: normal */
  const char *concurrency_key; /* the task counts against this key's
                                  concurrency and rate limits (copied; 1 to
                                  255 bytes of UTF-8); NULL: the action's
                                  concurrency_key hook's, or none */
  const char *fairness_key;    /* tasks of one priority share the workers
                                  round-robin by this key (copied, as
                                  concurrency_key); NULL: the plugin's name */
  double run_after_s;          /* start no sooner than this many seconds
                                  after submit (state scheduled until then);
                                  0: now */
  double run_at;               /* start no sooner than this wall-clock time,
                                  seconds since the Unix epoch; 0: now; a
                                  past time runs now; one past the task's
                                  overall deadline is refused */
  int64_t queue_wait_ms;       /* when a max_queued bound is reached: 0 fail
                                  at once (APEX_E_QUEUE_FULL); > 0 wait up
                                  to that long for room; -1 wait as long as
                                  it takes. Never on Apex's own threads */
  /* The other three timeouts (Temporal's; timeout_s above is
   * schedule-to-close), each in seconds, 0: the action's default,
   * negative (APEX_TIMEOUT_NONE): none. */
  double schedule_to_start_s;  /* from submit (or the start time) to the
                                  first attempt's start */
  double start_to_close_s;     /* one attempt; the retry policy decides
                                  whether another runs */
  double heartbeat_timeout_s;  /* longest gap between an attempt's start or
                                  heartbeats (apex_ctx_heartbeat) */
  /* Trace context (include/apex/trace.h): the task's span joins this
   * trace as a child of the span the header names. A malformed value is
   * ignored as the W3C rules say (a new trace, a debug log); both copied. */
  const char *traceparent;     /* NULL: a new trace (or the parent task's) */
  const char *tracestate;      /* passed on unchanged; NULL: none */
  /* Durable tasks (docs/store.md). */
  int durable;                 /* nonzero: journal the task in the
                                  manager's store (refused with
                                  APEX_E_INVALID on a manager without
                                  one); submit returns once the task's row
                                  is durable */
  const char *idempotency_key; /* a durable task's key (copied; 1 to 255
                                  bytes): a later submit with the same key,
                                  in this process or after a restart,
                                  returns a handle on the task already
                                  submitted under it instead of a new one:
                                  live in this manager, or ended (a handle
                                  on its outcome, result or error); one
                                  still unfinished but held by another
                                  manager (or not yet recovered) is
                                  APEX_E_ALREADY naming its id. The same
                                  key with another plugin, action or params
                                  is refused (APEX_E_INVALID naming the
                                  key). NULL: none. Implies durable */
} apex_submit_opts_t;

#define APEX_TIMEOUT_NONE (-1.0)

/* Named priorities (the CLI's high, normal, low) and the accepted range. */
#define APEX_PRIORITY_HIGH 10
#define APEX_PRIORITY_NORMAL 0
#define APEX_PRIORITY_LOW (-10)
#define APEX_PRIORITY_MIN (-100)
#define APEX_PRIORITY_MAX 100

/* Fills opts with "use the action's defaults" (zeros) and struct_size =
 * sizeof as this header declares it; a macro for the reason given at
 * apex_manager_config_init. */
#define apex_submit_opts_init(opts) apex_submit_opts_init_v2((opts), sizeof(apex_submit_opts_t))
/* Returns: APEX_OK; APEX_E_INVALID (opts untouched) if opts is NULL or size
 * is below ABI 1's first layout or above 4096. Ownership: size bytes of opts
 * written. Thread-safety: opts is the caller's (any thread filling its
 * own). */
APEX_EXTERN apex_status_t apex_submit_opts_init_v2(apex_submit_opts_t *opts, size_t size);
/* The ABI-1 symbol, kept for programs built against 0.1.0: fills exactly
 * 0.1.0's layout. */
APEX_EXTERN void(apex_submit_opts_init)(apex_submit_opts_t *opts);

/* Starts plugin.action with params (an object, or NULL for {}), after
 * validating them against the action's spec. Runs no plugin code on the
 * caller's thread, but the start of a deferred action its plugin flagged
 * APEX_ACTION_F_START_INLINE (apex/plugin.h), which may run here, before
 * this returns, when nothing else waits for a worker.
 * Returns: APEX_OK and a new task in *out (release it with
 * apex_task_release; the task runs on whether or not it is released);
 * APEX_E_PLUGIN_NOT_FOUND, APEX_E_ACTION_NOT_FOUND, APEX_E_INVALID_PARAMS,
 * APEX_E_INVALID, APEX_E_QUEUE_FULL, APEX_E_SHUTTING_DOWN, APEX_E_NOMEM, with
 * *err naming the problem. Ownership: params borrowed (not modified);
 * opts borrowed. Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_submit(apex_manager_t *m, const char *plugin,
                                              const char *action, json_t *params,
                                              const apex_submit_opts_t *opts, apex_task_t **out,
                                              apex_error_t **err);

/* Submits, waits for the end (as apex_task_wait), releases the task.
 * Returns: APEX_OK with *result (new reference, may be NULL) on success; the
 * task's error code with *err on failure, timeout or cancellation; a submit
 * error; APEX_E_INVALID with *err, and nothing submitted, when called on
 * Apex's runtime thread (a LOOP-mode event callback), which must not block.
 * Thread-safety: any thread but Apex's own. */
APEX_EXTERN apex_status_t apex_manager_execute(apex_manager_t *m, const char *plugin,
                                               const char *action, json_t *params,
                                               const apex_submit_opts_t *opts, json_t **result,
                                               apex_error_t **err);

/* With APEX_DELIVER_DISPATCH: an fd that is readable while events wait or a
 * task's deadline (or retry time) is due; events queued while an
 * apex_manager_dispatch runs are its own to deliver, and leave the fd as it
 * is unless that call returns without them. It may also be readable for
 * nothing now and then: the next apex_manager_dispatch clears that. Poll it
 * for readability only, then call apex_manager_dispatch: never read, write
 * or close it (what kind of fd it is, a timerfd or an epoll, is the
 * library's; a read of the timerfd would take the signal of events).
 * Returns: the fd (owned by the manager), or APEX_E_INVALID. Any thread. */
APEX_EXTERN int apex_manager_fd(apex_manager_t *m);
/* Fires the deadlines and retries now due, then runs the callbacks of
 * every waiting event on the calling thread, without blocking: a task that
 * times out reaches a host that dispatches when the fd says so with one
 * thread wake-up. Deadlines a host leaves for more than 1 ms are fired by
 * Apex's runtime thread instead, so a busy host delays only its own view
 * (the events wait for its dispatch). The events queued while the callbacks
 * run (by them, or by workers meanwhile) are delivered by the same call, in
 * up to 16 rounds; any left then make the fd readable. Events nobody
 * dispatched are delivered by apex_manager_destroy.
 * Returns: the number of events delivered, or APEX_E_INVALID.
 * Thread-safety: one thread at a time. */
APEX_EXTERN int apex_manager_dispatch(apex_manager_t *m);

/* The manager's counters. An out-struct that grows: the caller sets
 * struct_size (APEX_STATS_INIT) to the size its header declares, the library
 * fills at most that many bytes and sets struct_size to what it filled, so a
 * caller newer than the library sees which fields it has
 * (APEX_HAS_FIELD(apex_stats_t, &s, field)); fields past that keep what the
 * caller put there. */
typedef struct apex_stats {
  uint32_t struct_size;                 /* in: room; out: bytes filled */
  uint64_t submitted, succeeded, failed, cancelled, timed_out;
  uint64_t attempts, retries;
  /* now, and exact whenever a DONE event is delivered (a task leaves both
   * before its DONE is queued):
   * queued: tasks in state queued: waiting for a worker, or held back by
   *   a concurrency or rate limit (apex_manager_scope_stats tells them
   *   apart; scheduled tasks are not counted); one that ends there
   *   (cancelled, timed out) no longer counts;
   * running: attempts open, i.e. handlers running or deferred attempts not
   *   yet completed, including handlers still running for a task that
   *   already ended (timed out, or cancelled at shutdown: stuck_workers
   *   counts the blocking ones among them). */
  uint64_t queued, running;
  uint64_t workers, stuck_workers;      /* now */
  uint64_t progress_reported;           /* accepted from plugins */
  uint64_t progress_delivered;          /* delivered to the host */
  uint64_t progress_rejected;           /* invalid, dropped */
  uint64_t late_reports;                /* after the task ended: ignored */
  /* The first layout ends here. Append only (docs/abi.md). */
} apex_stats_t;

/* apex_stats_t s = APEX_STATS_INIT; (C; in C++ set s.struct_size = sizeof s) */
#define APEX_STATS_INIT {.struct_size = sizeof(apex_stats_t)}

/* Copies the counters into out, as described at apex_stats_t.
 * Returns: APEX_OK; APEX_E_INVALID (nothing written) for a NULL argument or
 * an out->struct_size below the first layout's size or above 4096.
 * Ownership: out is the caller's. Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_stats_v2(apex_manager_t *m, apex_stats_t *out);

/* ABI 1's counters, a layout frozen because it has no struct_size. */
typedef struct apex_manager_stats {
  uint64_t submitted, succeeded, failed, cancelled, timed_out;
  uint64_t attempts, retries;
  uint64_t queued, running;             /* now */
  uint64_t workers, stuck_workers;      /* now */
  uint64_t progress_reported;           /* accepted from plugins */
  uint64_t progress_delivered;          /* delivered to the host */
  uint64_t progress_rejected;           /* invalid, dropped */
  uint64_t late_reports;                /* after the task ended, or plugin ctx
                                           calls after complete: ignored */
} apex_manager_stats_t;

/* Copies the counters into ABI 1's frozen layout; kept for programs built
 * against 0.1.0. It never gains a counter: use apex_manager_stats_v2.
 * Returns: APEX_OK, APEX_E_INVALID. Ownership: out is the caller's, filled.
 * Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_stats(apex_manager_t *m, apex_manager_stats_t *out)
    APEX_DEPRECATED("use apex_manager_stats_v2 with an apex_stats_t (APEX_STATS_INIT)");

/* ----------------------------------------------------------- scheduling
 * Limits a host sets on what runs (docs/scheduling.md). A scope names what a
 * limit applies to; a limit set for a scope replaces the one set before (and
 * an action descriptor's default). All take effect for the next pick of a
 * queued task: lowering a limit never cancels running work, raising one
 * starts waiting work at once. */
typedef enum apex_scope {
  APEX_SCOPE_GLOBAL = 0, /* name NULL: every task of the manager */
  APEX_SCOPE_PLUGIN = 1, /* name "plugin" (loaded) */
  APEX_SCOPE_ACTION = 2, /* name "plugin.action" (loaded) */
  APEX_SCOPE_KEY = 3     /* name: a concurrency key; NULL: the default of
                            every key that has no setting of its own */
} apex_scope_t;

/* At most limit attempts of the scope running at once (a deferred attempt
 * holds its slot until it completes); 0 removes the limit.
 * Returns: APEX_OK; APEX_E_INVALID with *err naming the field (a scope out
 * of range, a name missing, malformed, or of no loaded plugin or action, a
 * limit above APEX_LIMIT_MAX); APEX_E_NOMEM. Ownership: name copied.
 * Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_set_concurrency(apex_manager_t *m, apex_scope_t scope,
                                                       const char *name, uint32_t limit,
                                                       apex_error_t **err);
/* A token bucket: attempts of the scope start at most per_second on average
 * and burst at once; per_second 0 removes it. A task over the rate waits in
 * the queue, without a worker, until its token is due.
 * Returns: as apex_manager_set_concurrency; also APEX_E_INVALID for a rate
 * not finite, negative or above 1e9, or a burst of 0 with a rate. */
APEX_EXTERN apex_status_t apex_manager_set_rate(apex_manager_t *m, apex_scope_t scope,
                                                const char *name, double per_second,
                                                uint32_t burst, apex_error_t **err);
/* At most max tasks of the scope queued, scheduled or waiting on a limit at
 * once; a submit past it fails with APEX_E_QUEUE_FULL or waits
 * (apex_submit_opts_t.queue_wait_ms). 0 removes it. APEX_SCOPE_GLOBAL
 * replaces apex_manager_config_t.max_queued's bound. Returns: as
 * apex_manager_set_concurrency. */
APEX_EXTERN apex_status_t apex_manager_set_max_queued(apex_manager_t *m, apex_scope_t scope,
                                                      const char *name, size_t max,
                                                      apex_error_t **err);
/* The share of a fairness key (apex_submit_opts_t.fairness_key, by default
 * the plugin's name) among the keys with tasks waiting at one priority:
 * weight 1 (the default) to APEX_WEIGHT_MAX; 0 restores the default.
 * Returns: as apex_manager_set_concurrency. */
APEX_EXTERN apex_status_t apex_manager_set_weight(apex_manager_t *m, const char *fairness_key,
                                                  uint32_t weight, apex_error_t **err);
#define APEX_LIMIT_MAX 1000000u
#define APEX_WEIGHT_MAX 1000u

/* A scope's figures now (grows like apex_stats_t: set struct_size with
 * APEX_SCOPE_STATS_INIT). */
typedef struct apex_scope_stats {
  uint32_t struct_size;
  uint64_t scheduled;        /* waiting for their start time */
  uint64_t queued;           /* runnable, waiting for a worker */
  uint64_t waiting_on_limit; /* held by a concurrency limit */
  uint64_t waiting_on_rate;  /* held by a rate limit until a token is due */
  uint64_t running;          /* attempts open */
  /* The first layout ends here. Append only (docs/abi.md). */
} apex_scope_stats_t;
#define APEX_SCOPE_STATS_INIT {.struct_size = sizeof(apex_scope_stats_t)}
/* Returns: APEX_OK with *out filled (as apex_manager_stats_v2 does);
 * APEX_E_INVALID for a bad scope or name (APEX_SCOPE_KEY: any key, one
 * never used reads all zero). Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_scope_stats(apex_manager_t *m, apex_scope_t scope,
                                                   const char *name, apex_scope_stats_t *out);

/* --------------------------------------------------------------- tasks */
/* A task handle. Every function below is safe from any thread, in any
 * order, before or after the task ends, until apex_task_release. */

/* Blocks until the task is done or timeout_ms passes (negative: forever;
 * 0: just checks). Done means terminal and, in LOOP mode for a task whose
 * event callback wants DONE, that DONE callback has returned: the host may
 * free what the callback uses as soon as this returns APEX_OK. In DISPATCH
 * mode DONE is delivered by the host's own apex_manager_dispatch, so done
 * means terminal (waiting for the dispatch would deadlock a host with one
 * thread): the DONE callback may still be to come.
 * Returns: APEX_OK when done; APEX_E_AGAIN on time-out; APEX_E_INVALID
 * for NULL, or when called on Apex's runtime thread (a LOOP-mode event
 * callback), which must not block: it fires the deadlines and delivers the
 * events. */
APEX_EXTERN apex_status_t apex_task_wait(apex_task_t *t, int64_t timeout_ms);
/* Asks the task to stop (reason NULL: "user"). A queued or retry-waiting
 * task ends `cancelled` at once. A running one ends when its handler
 * returns: `cancelled` if it returns an error (handlers see the token and
 * return APEX_E_CANCELLED early), `succeeded` if it finished anyway.
 * The reason is only text (the handler's apex_ctx_cancel_reason, the
 * error's message): it never changes what happens. "timeout", "shutdown"
 * and "parent" are Apex's to give (a deadline, apex_manager_destroy, a
 * parent token), so a handler that sees one can trust it: a host passing
 * one is refused.
 * Returns: APEX_OK; APEX_E_ALREADY if terminal or already cancelled;
 * APEX_E_INVALID for NULL t or a reserved reason (nothing is cancelled);
 * APEX_E_NOMEM if t is running and no memory was left for its token (its
 * handler was not signalled; nothing changed, the call may be retried).
 * Ownership: reason copied. */
APEX_EXTERN apex_status_t apex_task_cancel(apex_task_t *t, const char *reason);
APEX_EXTERN apex_task_state_t apex_task_state(apex_task_t *t);
APEX_EXTERN uint64_t apex_task_id(apex_task_t *t);
/* Returns: attempts started so far. */
APEX_EXTERN uint32_t apex_task_attempts(apex_task_t *t);
/* Returns: the result once succeeded, as a new reference to a copy the
 * caller owns alone (jansson's reference counts are not safe to share
 * across threads); else NULL. */
APEX_EXTERN json_t *apex_task_result(apex_task_t *t);
/* Returns: the error once failed/cancelled/timed out, a new reference; else
 * NULL. */
APEX_EXTERN apex_error_t *apex_task_error(apex_task_t *t);
/* Returns: the last delivered progress, a new reference; NULL if none. */
APEX_EXTERN apex_progress_t *apex_task_progress(apex_task_t *t);
/* Returns: the last partial result the task published
 * (apex_ctx_partial_result), as a new reference to a copy the caller owns
 * alone; NULL if it published none (or cleared it) or memory ran out. The
 * last published, not the last delivered: it may be newer than the last
 * APEX_EVENT_PARTIAL (coalescing), never older. Readable at any time,
 * after the end too, whatever the outcome (a failed, cancelled or
 * timed-out task's error carries the same value:
 * apex_error_partial_result). */
APEX_EXTERN json_t *apex_task_partial_result(apex_task_t *t);
/* Returns: the task's token (borrowed, valid until release), made on first
 * use; NULL only if t is NULL or memory ran out. Cancelling it directly
 * acts as a cancel by a parent token (a queued task ends at once, a running
 * one when its handler returns) whatever the reason, which is not checked
 * as apex_task_cancel checks it: prefer apex_task_cancel. */
APEX_EXTERN apex_token_t *apex_task_token(apex_task_t *t);
/* Returns: the id of the task whose handler spawned t (apex_ctx_spawn in
 * include/apex/plugin.h); 0 for a task the host submitted, and for NULL.
 * Immutable: any thread, before or after t ends (an event callback reads
 * it from ev->task). */
APEX_EXTERN uint64_t apex_task_parent_id(apex_task_t *t);
/* Drops the handle. The task itself runs to its end. */
APEX_EXTERN void apex_task_release(apex_task_t *t);

/* ---------------------------------------------------- operation groups
 * A group collects tasks a host submits together, to wait for the first or
 * for all of them, cancel them as one, and read their combined progress
 * (docs/guide.md, "Operation groups"). Tasks join a group when they are
 * submitted into it (apex_group_submit) and never leave it.
 * Ownership: the group holds a reference on every member until
 * apex_group_release; releasing the group does not cancel its tasks (they
 * run to their end; cancel first with apex_group_cancel if that is wanted).
 * A group keeps its manager's memory (not its threads) until released, as a
 * task handle does: release groups after apex_manager_destroy is fine.
 * Thread-safety: every apex_group_* call, any thread, any order, until
 * apex_group_release; a call on a released group is refused with
 * APEX_E_INVALID (the handle is checked against the live groups, never
 * read, so a stale handle does no harm unless its address was reused by a
 * newer group). */

/* Returns: APEX_OK and a new, empty group of m in *out; APEX_E_INVALID
 * (NULL m or out), APEX_E_SHUTTING_DOWN, APEX_E_NOMEM. Ownership: the
 * caller releases *out with apex_group_release. */
APEX_EXTERN apex_status_t apex_group_new(apex_manager_t *m, apex_group_t **out);
/* Submits plugin.action as apex_manager_submit does, as a member of g.
 * Returns: as apex_manager_submit; also APEX_E_INVALID for a released g,
 * APEX_E_CANCELLED once g was cancelled (nothing submitted). out may be
 * NULL: the group keeps the task (apex_group_task, apex_group_wait_any).
 * Ownership: *out, when asked for, is the caller's handle (release it). */
APEX_EXTERN apex_status_t apex_group_submit(apex_group_t *g, const char *plugin,
                                            const char *action, json_t *params,
                                            const apex_submit_opts_t *opts, apex_task_t **out,
                                            apex_error_t **err);
/* Returns: g's id (1, 2, ... per process; the `group` of apex_op_info_t),
 * or 0 for NULL or a released group. */
APEX_EXTERN uint64_t apex_group_id(apex_group_t *g);
/* Returns: the members submitted so far (a failed submit is no member); 0
 * for NULL or a released group. */
APEX_EXTERN size_t apex_group_size(apex_group_t *g);
/* Returns: member i in submit order as a new handle (release it), or NULL
 * (i out of range, NULL or released g). */
APEX_EXTERN apex_task_t *apex_group_task(apex_group_t *g, size_t i);
/* Waits for the next member to end: members are returned in the order they
 * reached their terminal state, each once, so the first call returns the
 * first to end, and calling it size times returns every member. Blocks up
 * to timeout_ms (negative: forever; 0: just checks); "ended" has
 * apex_task_wait's meaning (in LOOP mode, its DONE callback returned).
 * Returns: APEX_OK with a new handle in *out (release it);
 * APEX_E_AGAIN on time-out; APEX_E_ALREADY when every member was returned
 * already (an empty group too); APEX_E_INVALID for NULL out, a NULL or
 * released g, or on Apex's runtime thread (a LOOP callback), which must not
 * block. */
APEX_EXTERN apex_status_t apex_group_wait_any(apex_group_t *g, int64_t timeout_ms,
                                              apex_task_t **out);
/* Waits until every member submitted so far has ended (as
 * apex_task_wait), up to timeout_ms (negative: forever; 0: just checks).
 * Returns: APEX_OK (an empty group at once); APEX_E_AGAIN on time-out;
 * APEX_E_INVALID as apex_group_wait_any. */
APEX_EXTERN apex_status_t apex_group_wait_all(apex_group_t *g, int64_t timeout_ms);
/* Cancels every member not yet ended (apex_task_cancel with reason, NULL:
 * "user") and refuses later submits into g. *n_cancelled (may be NULL):
 * how many cancels took (APEX_OK from apex_task_cancel).
 * Returns: APEX_OK; APEX_E_INVALID for a NULL or released g or a reserved
 * reason ("timeout", "shutdown", "parent": nothing is cancelled). */
APEX_EXTERN apex_status_t apex_group_cancel(apex_group_t *g, const char *reason,
                                            size_t *n_cancelled);

/* A group's figures now; grows like apex_stats_t (APEX_GROUP_STATS_INIT). */
typedef struct apex_group_stats {
  uint32_t struct_size;
  uint64_t total; /* members */
  /* by state (apex_task_state_t) */
  uint64_t scheduled, queued, running, retry_wait;
  uint64_t succeeded, failed, cancelled, timed_out;
  /* The combined progress, 0 to 100: the mean over the members of each
   * one's share, where an ended member (whatever its outcome) counts 100
   * and a live one its last reported percentage (0 before any). Every
   * member weighs the same; 0 for an empty group. */
  double percentage;
  /* The first layout ends here. Append only (docs/abi.md). */
} apex_group_stats_t;
#define APEX_GROUP_STATS_INIT {.struct_size = sizeof(apex_group_stats_t)}
/* Returns: APEX_OK with *out filled as apex_manager_stats_v2 fills its
 * struct; APEX_E_INVALID for NULL arguments, a released g, or a bad
 * out->struct_size. */
APEX_EXTERN apex_status_t apex_group_stats(apex_group_t *g, apex_group_stats_t *out);
/* Returns: the members' outcomes as a JSON array in submit order, each
 * {"task": id, "plugin", "action", "state", "result"? (succeeded),
 * "error"? (apex_error_to_json)}, a new reference; NULL for a NULL or
 * released g, or no memory. Pair it with apex_group_wait_all. */
APEX_EXTERN json_t *apex_group_results(apex_group_t *g);
/* Drops the host's handle and the group's references on its members;
 * members keep running (see above). Returns: APEX_OK (also for NULL);
 * APEX_E_INVALID if g was released already or is no group. */
APEX_EXTERN apex_status_t apex_group_release(apex_group_t *g);

/* Submits n calls into a new group, waits for all (as apex_group_wait_all,
 * timeout_ms), and returns apex_group_results' array in *results (NULL on
 * time-out). The common "fan out and collect" in one call.
 * Returns: APEX_OK when every call was submitted and ended (each item says
 * how); the first submit error (the calls submitted before it are cancelled
 * and waited for; *err names it); APEX_E_AGAIN on time-out (the calls are
 * cancelled); APEX_E_INVALID as apex_group_wait_any. Ownership: calls and
 * their params borrowed; *results a new reference. */
typedef struct apex_call {
  const char *plugin, *action;
  json_t *params;                 /* NULL: {} */
  const apex_submit_opts_t *opts; /* NULL: defaults */
} apex_call_t;
APEX_EXTERN apex_status_t apex_manager_execute_all(apex_manager_t *m, const apex_call_t *calls,
                                                   size_t n, int64_t timeout_ms,
                                                   json_t **results, apex_error_t **err);

/* --------------------------------------------------- operation manager
 * Every live task (submitted, not yet terminal) of a manager is an
 * operation: list them, find one by id, cancel by id or by filter, or take
 * a JSON snapshot for a dashboard. Listing takes each lock stripe and the
 * run queue's lock once, briefly, and costs the task hot path nothing
 * (docs/architecture.md, "The operation manager"). Thread-safety: any
 * thread. */

/* Bit of apex_ops_filter_t.states for state s. */
#define APEX_OPS_STATE(s) (1u << (unsigned)(s))

/* Which operations a call is about; every field's zero means "any". Grows
 * like apex_submit_opts_t (struct_size; APEX_OPS_FILTER_INIT). */
typedef struct apex_ops_filter {
  uint32_t struct_size;
  unsigned states;    /* APEX_OPS_STATE bits of live states; 0: any; a bit
                         of a terminal or unknown state: APEX_E_INVALID */
  const char *plugin; /* plugin name; NULL: any */
  const char *action; /* action name (of any plugin unless plugin is set) */
  apex_group_t *group; /* members of this group; NULL: any */
  /* The first layout ends here. Append only (docs/abi.md). */
} apex_ops_filter_t;
#define APEX_OPS_FILTER_INIT {.struct_size = sizeof(apex_ops_filter_t)}

/* One operation as apex_ops_list saw it. Filled by Apex: a host reads a
 * field appended later only if APEX_HAS_FIELD(apex_op_info_t, info, f). */
typedef struct apex_op_info {
  uint32_t struct_size;
  uint64_t id;
  const char *plugin, *action; /* valid until apex_manager_destroy */
  apex_task_state_t state;
  uint32_t attempt;            /* attempts started */
  double percentage;           /* last reported; -1 before any report */
  const char *message;         /* last reported; "" none (the list's) */
  double age_s;                /* seconds since submit, to a clock tick
                                  (1 to 4 ms) for a task without a
                                  deadline; -1 if the clock failed */
  uint64_t group;              /* apex_group_id of its group, 0: none */
} apex_op_info_t;

typedef struct apex_op_list apex_op_list_t;
/* Lists m's live operations that match filter (NULL: all), in id order.
 * Returns: APEX_OK and a new list in *out (apex_op_list_free);
 * APEX_E_INVALID (NULL m or out, a bad filter: struct_size, state bits, a
 * released group, a group of another manager), APEX_E_NOMEM. */
APEX_EXTERN apex_status_t apex_ops_list(apex_manager_t *m, const apex_ops_filter_t *filter,
                                        apex_op_list_t **out);
/* Returns: the number of entries / entry i (borrowed, valid until the list
 * is freed), or 0 / NULL. */
APEX_EXTERN size_t apex_op_list_count(const apex_op_list_t *l);
APEX_EXTERN const apex_op_info_t *apex_op_list_at(const apex_op_list_t *l, size_t i);
APEX_EXTERN void apex_op_list_free(apex_op_list_t *l);
/* Finds live operation id, in one look: the tasks waiting in the
 * scheduler and those a worker (or a submitting thread's inline start)
 * took from it but has not started yet, read at one instant, then the
 * started ones; a task found in none of them has ended.
 * Returns: APEX_OK and a new handle in *out (apex_task_release);
 * APEX_E_ALREADY if id was a task of m that has ended (or was never
 * accepted); APEX_E_INVALID for NULL arguments, id 0 or an id m never
 * gave. */
APEX_EXTERN apex_status_t apex_ops_find(apex_manager_t *m, uint64_t id, apex_task_t **out);
/* Cancels live operation id (as apex_task_cancel, reason NULL: "user").
 * Returns: as apex_ops_find, or as apex_task_cancel. */
APEX_EXTERN apex_status_t apex_ops_cancel_id(apex_manager_t *m, uint64_t id, const char *reason);
/* Cancels every live operation that matches filter (NULL: all).
 * *n_cancelled (may be NULL): how many cancels took.
 * Returns: APEX_OK; APEX_E_INVALID as apex_ops_list, or a reserved reason;
 * APEX_E_NOMEM. */
APEX_EXTERN apex_status_t apex_ops_cancel(apex_manager_t *m, const apex_ops_filter_t *filter,
                                          const char *reason, size_t *n_cancelled);
/* Returns: {"operations": [{"id", "plugin", "action", "state", "attempt",
 * "percentage" (null before any report), "message", "age_s", "group"
 * (null: none)}...], "counts": {state name: n, ...},
 * "live": n} for the operations that match filter (NULL: all), a new
 * reference; NULL for bad arguments or no memory. */
APEX_EXTERN json_t *apex_ops_snapshot(apex_manager_t *m, const apex_ops_filter_t *filter);

/* ------------------------------------------------------- durable store
 * A store journals durable tasks (apex_submit_opts_t.durable) so that they
 * survive the process: a task submitted durably ends with exactly one
 * recorded outcome, and one cut off by a crash is resumed by the next
 * manager that opens the store and calls apex_manager_recover
 * (docs/store.md: backends, guarantees, the SQLite settings). These calls
 * read and steer a store from any process, with or without a manager: the
 * `apex tasks` commands use them. Thread-safety: every apex_store_* call,
 * any thread, until apex_store_close. */
typedef struct apex_store apex_store_t;

/* Opens the store at uri (as apex_manager_config_t.store: "sqlite:PATH",
 * a plain PATH, "postgresql://..." or "memory:"); a missing SQLite file is
 * made, as are the tables of a PostgreSQL database without them. Opening is
 * shared: other processes may have the file open, with or without a
 * manager (docs/store.md says how they share it).
 * Returns: APEX_OK and a new store in *out (apex_store_close);
 * APEX_E_INVALID (NULL argument, an unknown scheme); APEX_E_STORE with *err
 * naming the file and the reason: not a database, not Apex's, a schema
 * newer than this library, corrupt, read-only where a write is needed,
 * locked past the busy timeout. A file that is refused is never written.
 * Ownership: uri copied. */
APEX_EXTERN apex_status_t apex_store_open(const char *uri, apex_store_t **out, apex_error_t **err);
/* Closes s after its last write is durable. NULL: no-op. Ownership: s
 * freed. Thread-safety: once, when no other call on s runs. */
APEX_EXTERN void apex_store_close(apex_store_t *s);

/* One stored task as JSON (a new reference in *out): {"id", "plugin",
 * "action", "plugin_version", "state" (apex_task_state_name),
 * "attempts", "params", "created_at", "updated_at" (wall-clock, seconds
 * since the epoch), "run_at"? (the retry or start time), "deadline"?,
 * "idempotency_key"?, "owner"? (while claimed), "cancel_requested"?,
 * "progress"? ({"percentage", "message"}, the last summary saved),
 * "checkpoint"?, "partial_result"?, "result"? (succeeded), "error"?
 * (apex_error_to_json's shape: failed, cancelled, timed out)}.
 * Returns: APEX_OK; APEX_E_INVALID (NULL argument, id 0, or no task id in
 * the store: *err says which); APEX_E_STORE; APEX_E_NOMEM. */
APEX_EXTERN apex_status_t apex_store_get(apex_store_t *s, uint64_t id, json_t **out,
                                         apex_error_t **err);

/* Which stored tasks apex_store_list returns, one page at a time; every
 * field's zero means "any". Grows like apex_ops_filter_t
 * (APEX_STORE_FILTER_INIT). */
typedef struct apex_store_filter {
  uint32_t struct_size;
  unsigned states;       /* APEX_OPS_STATE bits (any state, terminal ones
                            too); 0: any */
  const char *plugin;    /* NULL: any */
  const char *action;    /* NULL: any */
  double min_age_s;      /* submitted at least this long ago; 0: any */
  double max_age_s;      /* submitted at most this long ago; 0: any */
  uint64_t after_id;     /* the page starts past this id (the "next" of
                            the page before); 0: the first page */
  size_t limit;          /* tasks per page, at most 10000; 0: 100 */
  /* The first layout ends here. Append only (docs/abi.md). */
} apex_store_filter_t;
#define APEX_STORE_FILTER_INIT {.struct_size = sizeof(apex_store_filter_t)}

/* One page of the stored tasks that match filter (NULL: all), in id
 * order: {"tasks": [{"id", "plugin", "action", "state", "attempts",
 * "created_at", "updated_at", "progress"?, "error"? ({"code",
 * "message"})}...], "next": the after_id of the next page, or null on the
 * last}.
 * Returns: APEX_OK with a new reference in *out; APEX_E_INVALID (NULL s or
 * out, bad filter fields, *err naming the field); APEX_E_STORE;
 * APEX_E_NOMEM. */
APEX_EXTERN apex_status_t apex_store_list(apex_store_t *s, const apex_store_filter_t *filter,
                                          json_t **out, apex_error_t **err);

/* Asks stored task id to stop (reason NULL: "user"), from any process. A
 * task no manager holds (queued or waiting to retry with no owner, or left
 * by a process whose lease has run out) ends `cancelled` in the store at
 * once; a running one is cancelled by the manager that runs it (as
 * apex_task_cancel), which sees the request within about a second. One
 * left by a dead process whose lease has not run out yet keeps the request
 * and ends `cancelled` when a manager recovers it (apex_manager_recover,
 * `apex resume`, a worker's rescue): the store cannot tell a dead owner
 * from a slow one before its lease ends.
 * Returns: APEX_OK; APEX_E_ALREADY if the task is terminal or a cancel was
 * requested already; APEX_E_INVALID (no such task, a reserved reason, a
 * reason that is not UTF-8);
 * APEX_E_STORE. Ownership: reason copied. */
APEX_EXTERN apex_status_t apex_store_cancel(apex_store_t *s, uint64_t id, const char *reason,
                                            apex_error_t **err);

/* Deletes the terminal tasks that ended more than older_than_s seconds ago
 * (0: all terminal ones); unfinished tasks are never purged. *n (may be
 * NULL): how many rows went.
 * Returns: APEX_OK; APEX_E_INVALID (NULL s, negative or non-finite
 * older_than_s); APEX_E_STORE. */
APEX_EXTERN apex_status_t apex_store_purge(apex_store_t *s, double older_than_s, size_t *n,
                                           apex_error_t **err);

/* Returns: m's store (borrowed, valid until apex_manager_destroy), or NULL
 * for a manager without one. Thread-safety: any thread. */
APEX_EXTERN apex_store_t *apex_manager_store(apex_manager_t *m);

/* Takes over the unfinished durable tasks no live manager holds: the ones
 * this owner id left (a restart), and the ones whose owner is gone (its
 * process died, or its lease expired). Call it once the plugins are loaded.
 * Each task then goes on as the store says:
 * - queued, scheduled or waiting to retry: queued again, for its start or
 *   retry time (wall-clock, as saved);
 * - cut off while running: an action flagged APEX_ACTION_F_RESUMABLE runs
 *   again from its last checkpoint (apex_ctx_checkpoint_get); one flagged
 *   APEX_ACTION_F_IDEMPOTENT runs again from the start; any other ends
 *   `failed` with APEX_E_INTERRUPTED, never run twice;
 * - with a cancel requested: ends `cancelled`;
 * - whose plugin or action is not loaded, or whose plugin's major version
 *   differs from the one that submitted it: ends `failed`
 *   (APEX_E_PLUGIN_NOT_FOUND, APEX_E_ACTION_NOT_FOUND, APEX_E_PLUGIN) with
 *   a message naming both versions;
 * - past its overall deadline: ends `timed_out`.
 * Terminal tasks keep their outcome and never run again. Recovered tasks
 * keep their ids and are ordinary tasks of m from then on (events,
 * apex_ops_find, apex_task_wait through apex_ops_find).
 * Returns: APEX_OK, with *n_recovered (may be NULL) the number of tasks
 * taken over; APEX_E_INVALID (NULL m, a manager without a store);
 * APEX_E_SHUTTING_DOWN; APEX_E_STORE with *err. Thread-safety: any thread
 * but Apex's own; concurrent calls take over each task once. */
APEX_EXTERN apex_status_t apex_manager_recover(apex_manager_t *m, size_t *n_recovered,
                                               apex_error_t **err);

/* Looks task id up, live or ended, in this process or (for a durable task)
 * in m's store, across restarts: apex_store_get's JSON, where a live task
 * of m reports what m knows now (its state, attempts, last progress,
 * partial result), which may be newer than the store's.
 * Returns: APEX_OK with a new reference in *out; APEX_E_INVALID (NULL
 * argument, id 0, an id neither m's live tasks nor its store know: a
 * non-durable task is known while it is live only); APEX_E_STORE;
 * APEX_E_NOMEM. Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_task_info(apex_manager_t *m, uint64_t id, json_t **out,
                                                 apex_error_t **err);

/* ------------------------------------------- serving a shared queue
 * Several processes, on one host or many, serve one store's queue
 * (docs/workers.md): each opens a manager on the store, loads the plugins
 * and calls apex_manager_serve. A thread of the manager then claims due
 * tasks in batches (the limits below hold across every serving process),
 * runs each as a durable task of its row (recovery's rules: a resumable
 * action resumes from its last checkpoint), renews their leases, acts on
 * cancel requests within about a second, records each outcome only while
 * it still holds the task's lease, and takes over the running tasks of
 * owners whose lease expired. Submitters need no runner: apex_manager_enqueue
 * writes a task for the serving processes to take. */

/* A concurrency limit on the store: at most max tasks of the scope running
 * at once, counted over every process serving it. */
typedef struct apex_serve_limit {
  apex_scope_t scope; /* GLOBAL (name NULL), PLUGIN, ACTION or KEY (name
                         NULL: each key on its own, as "key:*") */
  const char *name;   /* as apex_manager_set_concurrency's */
  uint32_t max;       /* 1 to APEX_LIMIT_MAX */
} apex_serve_limit_t;

/* How apex_manager_serve serves; every field's zero is its default.
 * Grows by appended fields: struct_size (set by apex_serve_config_init) is
 * sizeof as the caller's header declares it, and the library reads that
 * much (docs/abi.md). */
typedef struct apex_serve_config {
  uint32_t struct_size;
  uint32_t concurrency; /* tasks this process holds at once (claimed, not
                           yet ended): 0: 8. The manager needs as many
                           workers (apex_manager_config_t.workers). */
  uint32_t batch;       /* most tasks one claim takes (at most 1024 and
                           concurrency); 0: half of concurrency, at
                           least 1, at most 64 */
  double poll_s;        /* the longest idle wait before looking for work
                           again (a store that notifies wakes it sooner);
                           0: 0.25 s */
  const apex_serve_limit_t *limits; /* NULL: none (copied) */
  size_t n_limits;
} apex_serve_config_t;

/* Fills c with the defaults (zeros) and struct_size; NULL: no-op.
 * Thread-safety: any thread (writes only *c). */
APEX_EXTERN void apex_serve_config_init(apex_serve_config_t *c);

/* Starts serving m's store (a manager opened with config.store, its
 * plugins loaded): from now until apex_manager_serve_stop or
 * apex_manager_destroy, m claims and runs the store's due tasks. A task
 * whose plugin or action m has not loaded ends `failed` as in
 * apex_manager_recover: every process serving a store loads the plugins of
 * every task submitted to it.
 * Returns: APEX_OK; APEX_E_INVALID (NULL m, no store, a bad config field,
 * already serving; *err names it); APEX_E_NOMEM; APEX_E_IO (no thread).
 * Ownership: c and its limits copied. Thread-safety: any thread but Apex's
 * own; one serve per manager at a time. */
APEX_EXTERN apex_status_t apex_manager_serve(apex_manager_t *m, const apex_serve_config_t *c,
                                             apex_error_t **err);

/* Stops serving: no more claims; the tasks m holds get up to drain_s
 * seconds to end; those still running then are cancelled and their rows
 * given back to the queue at once (a resumable or idempotent action, or one
 * that had not started: another process takes it from its last checkpoint
 * right away), or, for an action neither resumable nor idempotent that had
 * started, ended `failed` (APEX_E_INTERRUPTED) as recovery would.
 * *n_released (may be NULL): the rows given back.
 * Returns: APEX_OK; APEX_E_INVALID (NULL m, not serving). Thread-safety:
 * any thread but Apex's own; blocks up to drain_s plus a few seconds for
 * cancelled handlers to return. */
APEX_EXTERN apex_status_t apex_manager_serve_stop(apex_manager_t *m, double drain_s,
                                                  size_t *n_released, apex_error_t **err);

/* What the serve loop has done so far (apex_manager_serve_stats). Grows
 * like apex_stats_t: set struct_size (APEX_SERVE_STATS_INIT); the library
 * fills at most that many bytes. */
typedef struct apex_serve_stats {
  uint32_t struct_size;
  uint64_t claimed;      /* tasks taken from the queue */
  uint64_t rescued;      /* running tasks taken over from an expired lease */
  uint64_t ended;        /* of those, ended here (outcome recorded or not) */
  uint64_t discarded;    /* outcomes refused: the lease was lost meanwhile */
  uint64_t released;     /* rows given back by serve_stop */
  uint64_t store_errors; /* store calls that failed (each retried) */
  uint32_t held;         /* tasks held now */
  int store_ok;          /* 0 while the store is unreachable */
} apex_serve_stats_t;
#define APEX_SERVE_STATS_INIT {.struct_size = sizeof(apex_serve_stats_t)}

/* Copies the serve loop's counters into *out (zeros when m never served).
 * Returns: APEX_OK; APEX_E_INVALID (NULL argument, struct_size 0).
 * Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_manager_serve_stats(apex_manager_t *m, apex_serve_stats_t *out);

/* Writes a durable task for the processes serving m's store to run
 * (queued, or scheduled for opts.run_at / run_after_s, held by none) and
 * returns its id, without running it here: what `apex run --enqueue` does.
 * plugin.action must be loaded in m, params are validated as
 * apex_manager_submit does, and opts are kept as for a durable submit
 * (parent is refused); an idempotency key already used returns that
 * task's id.
 * Returns: APEX_OK and *id; apex_manager_submit's errors. Thread-safety:
 * any thread but Apex's own. Ownership: params borrowed. */
APEX_EXTERN apex_status_t apex_manager_enqueue(apex_manager_t *m, const char *plugin,
                                               const char *action, const json_t *params,
                                               const apex_submit_opts_t *opts, uint64_t *id,
                                               apex_error_t **err);

/* ------------------------------------------------- graceful shutdown */

/* One operation in a shutdown report; names are the report's copies. */
typedef struct apex_shutdown_op {
  uint64_t id;
  const char *plugin, *action;
  apex_task_state_t state; /* its state when the report was made */
} apex_shutdown_op_t;

/* What apex_manager_shutdown did with the operations live when it began. */
typedef struct apex_shutdown_report {
  uint32_t struct_size;  /* sizeof as Apex filled it */
  apex_status_t status;  /* what apex_manager_destroy returned */
  /* ended on their own during the drain: succeeded, failed, timed out */
  size_t n_finished;
  const apex_shutdown_op_t *finished;
  /* ended cancelled (shutdown, or a cancel during the drain), their
   * handlers returned */
  size_t n_cancelled;
  const apex_shutdown_op_t *cancelled;
  /* cancelled, but their handlers ignored it and were still running when
   * destroy gave up (status APEX_E_BUSY) */
  size_t n_abandoned;
  const apex_shutdown_op_t *abandoned;
  /* The first layout ends here. */
} apex_shutdown_report_t;

/* apex_manager_destroy(m, drain_ms), with a report of what became of every
 * operation live when it began. Submits are refused from the start, as
 * destroy's are. destroy's contract holds unchanged (every DONE delivered
 * before this returns; APEX_E_BUSY with deaf handlers).
 * Returns: what destroy returns; with report non-NULL, *report is a new
 * report (apex_shutdown_report_free) or NULL if no memory was left for it
 * (the shutdown happens all the same). Thread-safety: as destroy. */
APEX_EXTERN apex_status_t apex_manager_shutdown(apex_manager_t *m, int64_t drain_ms,
                                                apex_shutdown_report_t **report);
/* Returns: {"status": name, "finished": [{"id", "plugin", "action",
 * "state"}...], "cancelled": [...], "abandoned": [...]}, a new reference;
 * NULL for NULL or no memory. */
APEX_EXTERN json_t *apex_shutdown_report_to_json(const apex_shutdown_report_t *r);
APEX_EXTERN void apex_shutdown_report_free(apex_shutdown_report_t *r);

#ifdef __cplusplus
}
#endif
#endif /* APEX_APEX_H */
