/* Apex plugin-author API.
 *
 * A plugin is a shared object that exports one symbol, apex_plugin_entry,
 * returning a const descriptor. The host reads the descriptor's first two
 * fields (abi_version, struct_size) before anything else and never reads past
 * struct_size, so fields are append-only; it steps through the actions array
 * by the descriptor's action_size, so actions grow the same way. Host
 * services reach the plugin through the function table in every ctx
 * (ctx->api), so a plugin links nothing from the host: only this header (and
 * jansson, for JSON values). What may change within one APEX_PLUGIN_ABI and
 * what bumps it: docs/abi.md.
 *
 * Threads: a blocking handler runs on a worker thread of the host; a deferred
 * handler's start runs on a worker thread too (or, flagged
 * APEX_ACTION_F_START_INLINE, on the submitting thread) and must return
 * APEX_PENDING quickly, then finish later from any thread with
 * apex_ctx_complete(). Every
 * apex_ctx_* call is safe from any thread while the ctx is valid (see
 * apex_ctx_complete for when it stops being valid).
 */
#ifndef APEX_PLUGIN_H
#define APEX_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "apex/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a field changes meaning, moves or goes; appending fields only
 * grows struct_size (or action_size). */
#define APEX_PLUGIN_ABI 1

/* Returned by a deferred handler that will complete later. */
#define APEX_PENDING 1

typedef struct apex_ctx apex_ctx_t;
/* A handle on one child task of a running task (apex_ctx_spawn). */
typedef struct apex_child apex_child_t;
struct apex_spawn_opts;
struct apex_submit_opts;

/* One parameter of an action. The host validates the caller's params against
 * these before the handler runs: unknown names, wrong types, missing required
 * params and values out of [min, max] are rejected with APEX_E_INVALID_PARAMS
 * naming the param; absent optional params get their default. */
typedef enum apex_param_type {
  APEX_PARAM_STRING = 1,
  APEX_PARAM_INT,    /* JSON integer, int64 */
  APEX_PARAM_NUMBER, /* JSON integer or real */
  APEX_PARAM_BOOL,
  APEX_PARAM_OBJECT,
  APEX_PARAM_ARRAY
} apex_param_type_t;

/* Frozen for ABI 1 (an array read at this header's stride, without a size
 * field): new per-param knobs need a new array in the action. */
typedef struct apex_param_spec {
  const char *name; /* [a-z0-9_]+, unique within the action */
  apex_param_type_t type;
  int required;              /* nonzero: must be given; default_json unused */
  const char *default_json;  /* JSON text of the default, or NULL: none */
  int has_min, has_max;      /* bounds for INT and NUMBER; for STRING they */
  double min, max;           /* bound the length in bytes of UTF-8, for
                                ARRAY the number of elements */
  const char *description;
} apex_param_spec_t;

typedef enum apex_action_kind {
  APEX_ACTION_BLOCKING = 0, /* handler runs to the end on a worker thread */
  APEX_ACTION_DEFERRED = 1  /* handler returns APEX_PENDING, completes later */
} apex_action_kind_t;

/* Retry policy (Temporal-style). A zero-filled policy means one attempt.
 * Frozen for ABI 1: it is embedded in apex_action_desc_t and passed by
 * pointer in apex_submit_opts_t without a size, so new retry knobs are new
 * fields of those two structs. */
typedef struct apex_retry_policy {
  uint32_t max_attempts;       /* total attempts, 1..65535; 0 means 1 */
  double initial_interval_s;   /* delay before the 2nd attempt */
  double backoff_coefficient;  /* >= 1; 0 means 2 */
  double max_interval_s;       /* cap on one delay, before jitter; 0: none */
  double jitter;               /* 0..1: each (capped) delay is then scaled by
                                  a factor in [1 - jitter, 1 + jitter], drawn
                                  per task and attempt */
  const apex_status_t *non_retryable; /* codes never retried, or NULL */
  size_t n_non_retryable;
} apex_retry_policy_t;

/* Action flags. */
#define APEX_ACTION_F_IDEMPOTENT 0x1u /* safe to run again after a crash */
/* Appended (durable tasks, docs/store.md): the action saves where it is
 * with apex_ctx_checkpoint and, given that state back by
 * apex_ctx_checkpoint_get, continues from there; a durable task of it cut
 * off by a crash is resumed, not failed. */
#define APEX_ACTION_F_RESUMABLE 0x2u
/* Appended (W7, docs/architecture.md "Inline starts"): for a deferred
 * action whose handler only starts the work (registers a callback, hands
 * the ctx to its own thread) and returns APEX_PENDING at once, without
 * blocking or waiting on anything, and may run on any thread. Its first
 * attempt may then start on the thread that submits the task, inside
 * apex_manager_submit (or apex_ctx_spawn), when nothing else is waiting to
 * run; else, and for a retry, a worker starts it as usual. Ignored for a
 * blocking action. A handler that blocks anyway blocks its submitter. */
#define APEX_ACTION_F_START_INLINE 0x4u

/* Returns APEX_OK on success (result set by apex_ctx_set_result, or null),
 * an error code (APEX_E_TRANSIENT to ask for a retry, APEX_E_EXECUTION or any
 * other for a permanent failure; details by apex_ctx_fail), or APEX_PENDING
 * for a deferred action that completes later. */
typedef int (*apex_handler_fn)(apex_ctx_t *ctx);

/* One action. Grows by appending: the host reads the plugin's array with the
 * stride the plugin declares in apex_plugin_desc_t.action_size, copies what
 * it knows and gives the fields an older plugin lacks their zero (so a new
 * field's zero must mean the old behaviour). */
typedef struct apex_action_desc {
  const char *name; /* [a-z0-9_]+ */
  const char *description;
  apex_handler_fn handler;
  apex_action_kind_t kind;
  const apex_param_spec_t *params;
  size_t n_params;
  double default_timeout_s; /* 0: no timeout */
  apex_retry_policy_t default_retry;
  uint32_t flags;
  /* ABI 1 (0.1.0) ended here. Append only, starting past 0.1.0's sizeof. */
  /* Scheduling defaults (docs/scheduling.md); a host's own setting for the
   * same scope wins. (The hook comes first: a uint32_t here would sit in
   * 0.1.0's tail padding.)
   * The concurrency key of a task submitted without one, from its validated
   * params: writes a NUL-terminated key of at most len - 1 bytes into buf and
   * returns 0, or returns nonzero for "no key". Runs on the submitting thread
   * and must be quick and thread-safe (no ctx, no Apex calls). NULL: none. */
  int (*concurrency_key)(const json_t *params, char *buf, size_t len);
  uint32_t max_concurrency; /* attempts of this action running at once; 0:
                               no limit */
  uint32_t key_concurrency; /* attempts running at once per concurrency key
                               of this action's tasks; 0: no limit */
  /* Timeouts, seconds, 0: none (apex_submit_opts_t says what each is). */
  double schedule_to_start_s;
  double start_to_close_s;
  double heartbeat_timeout_s;
} apex_action_desc_t;

typedef struct apex_host_api apex_host_api_t;

/* What apex_plugin_entry returns. Start it with APEX_PLUGIN_DESC_INIT, which
 * sets the three sizes this header's layout needs:
 *   static const apex_plugin_desc_t k_plugin = {APEX_PLUGIN_DESC_INIT,
 *       .name = "fetch", .version = "1.2.0", .actions = k_actions, ...};
 * The host reads at most struct_size bytes; a field a plugin's older header
 * lacks reads as zero. */
typedef struct apex_plugin_desc {
  uint32_t abi_version; /* APEX_PLUGIN_ABI */
  uint32_t struct_size; /* sizeof(apex_plugin_desc_t) as the plugin built it */
  const char *name;     /* [a-z0-9_]+, unique within a manager */
  const char *version;
  const char *description;
  /* Called once after loading, on the loading thread; *state is then handed
   * to every handler by apex_ctx_plugin_state. Nonzero return fails the load;
   * write a reason into why (NUL-terminated, at most why_len bytes). */
  int (*init)(const apex_host_api_t *api, void **state, char *why, size_t why_len);
  /* Called once when the manager is destroyed, after every handler returned,
   * just before the plugin is unloaded: whether or not the plugin has an init
   * hook (state is then NULL), so threads a plugin starts lazily can be
   * joined here. */
  void (*shutdown)(void *state);
  const apex_action_desc_t *actions;
  size_t n_actions;
  /* ABI 1 (0.1.0) ended here; fields below were appended since. */
  /* sizeof(apex_action_desc_t) as the plugin built it: the stride of
   * actions[] (APEX_PLUGIN_DESC_INIT sets it). 0, or a struct_size that
   * ends before it, means the actions have 0.1.0's layout (the only one so
   * far: docs/abi.md says what 0 means once actions grow). */
  uint32_t action_size;
  /* APEX_PLUGIN_F_* bits; none are defined yet, so it must be 0. Appended
   * with apex_action_desc_t's first growth: a descriptor that has it (by
   * struct_size) and a zero action_size has that second action layout, one
   * without it 0.1.0's (docs/abi.md). */
  uint64_t flags;
  /* Appended for `apex mcp` (issue 15): an action's interface as JSON
   * Schema (2020-12) text, for hosts that show actions to others (MCP's
   * tools/list). kind "input": a JSON object replacing the schema a host
   * derives from the action's params (for what a param spec cannot say:
   * $defs, $ref, patterns; Apex still validates params against the spec
   * alone); kind "output": the schema of the result object a success sets.
   * Returns NULL for none. Runs on the host's thread: quick, thread-safe,
   * no Apex calls; the text must stay valid while the plugin is loaded.
   * NULL: no action declares one. (A hook, not fields of
   * apex_action_desc_t: growing that struct would change what a zero
   * action_size means, docs/abi.md.) */
  const char *(*action_schema)(const char *action, const char *kind);
} apex_plugin_desc_t;

/* The leading fields of a descriptor built against this header. */
#define APEX_PLUGIN_DESC_INIT                                                        \
  .abi_version = APEX_PLUGIN_ABI, .struct_size = sizeof(apex_plugin_desc_t),         \
  .action_size = sizeof(apex_action_desc_t)

/* The one symbol a plugin exports. */
#define APEX_PLUGIN_ENTRY_SYMBOL "apex_plugin_entry"
#if defined(__GNUC__)
#define APEX_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define APEX_PLUGIN_EXPORT
#endif
typedef const apex_plugin_desc_t *(*apex_plugin_entry_fn)(const apex_host_api_t *api);

/* Defines the entry symbol for a plugin whose descriptor is a static const
 * object (started with APEX_PLUGIN_DESC_INIT): APEX_PLUGIN_DEFINE(k_plugin).
 * A plugin that needs the api table at entry writes apex_plugin_entry itself
 * instead. */
#define APEX_PLUGIN_DEFINE(desc)                                                          \
  APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api); \
  APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api) { \
    (void)api;                                                                            \
    return &(desc);                                                                       \
  }

/* A progress report. percentage is in [0, 100]; message NULL or valid UTF-8
 * of at most APEX_PROGRESS_MESSAGE_MAX bytes; status NULL ("running") or one
 * of "running", "completed", "error", "milestone_reached", "pending" (a
 * sub-task not started yet; the lifecycle names of
 * apex_progress_status_is_known are accepted too); details NULL or a
 * JSON object; sub_tasks NULL or a JSON array of objects of the shape
 * {"name": string, "percentage": number, "status"?, "message"?, "weight"?,
 *  "details"?, "sub_tasks"?}. JSON values are borrowed and copied.
 * Frozen for ABI 1 (passed by pointer without a size): a richer report would
 * come with a new host-api member. */
typedef struct apex_progress_update {
  double percentage;
  const char *message;
  const char *status;
  json_t *details;
  json_t *sub_tasks;
} apex_progress_update_t;

#define APEX_PROGRESS_MESSAGE_MAX 1024
#define APEX_PROGRESS_MAX_DEPTH 8

/* Limits on the JSON values a plugin hands to Apex: a result
 * (apex_ctx_set_result) and a progress update's details (its own and its
 * sub-tasks' together count as one value). Apex checks each value where it
 * enters, on the plugin's thread, before it copies or keeps it, because
 * jansson copies, prints and frees values recursively: a value nested a
 * million deep would overflow the stack of whichever thread touched it
 * next. A value is refused, with a reason naming the place (e.g.
 * "result.items[3]: not valid UTF-8 at byte 7"), when
 * - arrays and objects are nested more than APEX_VALUE_MAX_DEPTH deep;
 * - it contains itself (a cycle, as json_object_set(o, "k", o) makes);
 * - a string or object key is not valid UTF-8 (RFC 3629: no overlong
 *   forms, surrogates or code points above U+10FFFF) or holds a NUL byte
 *   (C readers of json_string_value would cut the text there);
 * - it holds more than APEX_VALUE_MAX_NODES values (every array, object,
 *   member and scalar counts one) or more than APEX_VALUE_MAX_BYTES bytes of
 *   strings and keys together. */
#define APEX_VALUE_MAX_DEPTH 64
#define APEX_VALUE_MAX_NODES 1000000
#define APEX_VALUE_MAX_BYTES (64u * 1024u * 1024u)

/* A task's cancel callback (apex_ctx_on_cancel): ctx is the attempt's,
 * user what the registration passed. */
typedef void (*apex_ctx_cancel_fn)(apex_ctx_t *ctx, void *user);

/* Host services. Reached through ctx->api; see the apex_ctx_* wrappers below
 * for each one's contract. Append-only: before calling a member appended
 * after the first ABI-1 release, check the host has it:
 * APEX_HAS_FIELD(apex_host_api_t, ctx->api, member). */
struct apex_host_api {
  uint32_t abi_version;
  uint32_t struct_size;
  json_t *(*params)(apex_ctx_t *ctx);
  uint64_t (*task_id)(apex_ctx_t *ctx);
  uint32_t (*attempt)(apex_ctx_t *ctx);
  void *(*plugin_state)(apex_ctx_t *ctx);
  int (*is_cancelled)(apex_ctx_t *ctx);
  const char *(*cancel_reason)(apex_ctx_t *ctx);
  int (*cancel_fd)(apex_ctx_t *ctx);
  int (*sleep_ms)(apex_ctx_t *ctx, uint64_t ms);
  int (*wait_fd)(apex_ctx_t *ctx, int fd, short events, int64_t timeout_ms);
  int (*progress)(apex_ctx_t *ctx, double percentage, const char *message);
  int (*progress_update)(apex_ctx_t *ctx, const apex_progress_update_t *u);
  void (*set_result)(apex_ctx_t *ctx, json_t *result);
  int (*failv)(apex_ctx_t *ctx, int code, const char *fmt, va_list ap);
  void (*complete)(apex_ctx_t *ctx, int status);
  void (*logv)(apex_ctx_t *ctx, int level, const char *fmt, va_list ap);
  /* ABI 1 (0.1.0) ended here; members below were appended since. */
  int (*progress_node)(apex_ctx_t *ctx, size_t index, double percentage, const char *status,
                       const char *message);
  int (*on_cancel)(apex_ctx_t *ctx, apex_ctx_cancel_fn fn, void *user);
  int (*heartbeat)(apex_ctx_t *ctx, json_t *details);
  json_t *(*heartbeat_details)(apex_ctx_t *ctx);
  int (*retry_after)(apex_ctx_t *ctx, double seconds);
  /* Partial results (apex_ctx_partial_result). */
  int (*partial_result)(apex_ctx_t *ctx, json_t *partial);
  /* Child tasks (apex_ctx_spawn and the calls beside it). */
  int (*spawn)(apex_ctx_t *ctx, const char *plugin, const char *action, json_t *params,
               const struct apex_spawn_opts *opts, struct apex_child **out);
  int (*child_wait)(apex_ctx_t *ctx, struct apex_child *const *children, size_t n, int all,
                    int64_t timeout_ms, size_t *which);
  int (*child_on_end)(apex_ctx_t *ctx, struct apex_child *child,
                      void (*fn)(apex_ctx_t *ctx, struct apex_child *child, void *user),
                      void *user);
  int (*child_outcome)(apex_ctx_t *ctx, struct apex_child *child, int *state, json_t **result,
                       json_t **error);
  uint64_t (*child_task_id)(apex_ctx_t *ctx, struct apex_child *child);
  void (*child_release)(apex_ctx_t *ctx, struct apex_child *child);
  int (*children_own_weight)(apex_ctx_t *ctx, double weight);
  /* Checkpoints (apex_ctx_checkpoint; durable tasks, docs/store.md). */
  int (*checkpoint)(apex_ctx_t *ctx, json_t *state);
  json_t *(*checkpoint_get)(apex_ctx_t *ctx);
  /* Trace context (apex_ctx_traceparent). */
  int (*traceparent)(apex_ctx_t *ctx, char *buf, size_t size);
  /* Trace state (apex_ctx_tracestate; issue 12, helper hK): appended. */
  int (*tracestate)(apex_ctx_t *ctx, char *buf, size_t size);
};

/* The public head of every ctx; the rest is the host's. */
struct apex_ctx {
  const apex_host_api_t *api;
};

/* Params after validation and defaults: an object with every declared param
 * that was given or has a default.
 * Returns: borrowed reference, valid while the ctx is. */
static inline json_t *apex_ctx_params(apex_ctx_t *c) { return c->api->params(c); }

/* Returns: the task's id (stable across attempts). */
static inline uint64_t apex_ctx_task_id(apex_ctx_t *c) { return c->api->task_id(c); }

/* Returns: the attempt number, 1 for the first run, 2 for the first retry. */
static inline uint32_t apex_ctx_attempt(apex_ctx_t *c) { return c->api->attempt(c); }

/* Returns: what the plugin's init stored in *state (borrowed). */
static inline void *apex_ctx_plugin_state(apex_ctx_t *c) { return c->api->plugin_state(c); }

/* Returns: nonzero once the task's token fired (user cancel, timeout,
 * shutdown or parent). Cheap: one atomic load; poll it in loops. */
static inline int apex_ctx_is_cancelled(apex_ctx_t *c) { return c->api->is_cancelled(c); }

/* Returns: "user", "timeout", "shutdown", "parent" or the canceller's own
 * reason; NULL while not cancelled. Borrowed, valid while the ctx is. */
static inline const char *apex_ctx_cancel_reason(apex_ctx_t *c) { return c->api->cancel_reason(c); }

/* Returns: an fd that becomes readable (POLLIN) when the token fires, for a
 * handler's own poll loop; negative apex_status_t on failure. Owned by the
 * host: do not read, write or close it. */
static inline int apex_ctx_cancel_fd(apex_ctx_t *c) { return c->api->cancel_fd(c); }

/* Sleeps ms milliseconds unless the token fires first.
 * Returns: APEX_OK after the full sleep, APEX_E_CANCELLED early; APEX_E_IO
 * if the wait failed (not expected on Linux) and ended early. */
static inline int apex_ctx_sleep_ms(apex_ctx_t *c, uint64_t ms) { return c->api->sleep_ms(c, ms); }

/* Waits until fd is ready for events (POLLIN/POLLOUT), timeout_ms passes
 * (-1: no limit) or the token fires.
 * Returns: the revents (> 0) when ready, 0 on timeout, APEX_E_CANCELLED,
 * APEX_E_IO if poll failed, APEX_E_INVALID for a negative fd. */
static inline int apex_ctx_wait_fd(apex_ctx_t *c, int fd, short events, int64_t timeout_ms) {
  return c->api->wait_fd(c, fd, events, timeout_ms);
}

/* Reports progress. Cheap enough to call per item (coalesced by the host:
 * the latest update wins at the host's delivery rate). A full report with
 * status "running" and no details or sub-tasks: it clears a tree declared
 * before; with one, report the task's own figures with
 * apex_ctx_progress_node(c, APEX_PROGRESS_ROOT, ...), which keeps it.
 * Returns: APEX_OK, APEX_E_INVALID if percentage is not finite in [0, 100]
 * or message is not valid UTF-8 of at most APEX_PROGRESS_MESSAGE_MAX bytes
 * (the update is then dropped and counted), APEX_E_NOMEM.
 * Ownership: message copied. */
static inline int apex_ctx_progress(apex_ctx_t *c, double percentage, const char *message) {
  return c->api->progress(c, percentage, message);
}

/* Reports a full ProgressUpdate (see apex_progress_update_t). Updates whose
 * status is "milestone_reached" or differs from the previous status are never
 * coalesced away (up to 64 waiting between two deliveries; past that they
 * coalesce like the rest, so a plugin cannot flood the host with them).
 * A full report replaces the task's whole progress: its percentage,
 * message, status, details and sub-task tree (sub_tasks NULL: no tree, as
 * apex_ctx_progress leaves none either). Its sub_tasks declare the tree
 * that apex_ctx_progress_node then updates node by node.
 * Cost: the update is checked in full on the calling thread (O(size of the
 * tree and details)); then, under the task's lock, the sub_tasks are
 * compared with the tree as it stands and only what differs is copied (a
 * changed field, an added node), and the details are copied only if they
 * differ from the last ones. The copy the host receives is made when it is
 * delivered, at the progress rate, not per report: reporting the whole tree
 * per item costs a comparison, not a copy, but apex_ctx_progress_node costs
 * far less (O(1)).
 * Returns: as apex_ctx_progress, plus APEX_E_INVALID for a bad status,
 * sub_tasks, or details (details break the limits on values above, all the
 * update's details counted together; checked before anything is copied).
 * A rejection's reason is the validators' (apex_progress_update_validate),
 * word for word, whichever call made the report.
 * Ownership: u and its JSON values borrowed, only read during the call
 * (what is kept is copied). */
static inline int apex_ctx_progress_update(apex_ctx_t *c, const apex_progress_update_t *u) {
  return c->api->progress_update(c, u);
}

/* plugin.h has apex_ctx_progress_node and APEX_PROGRESS_ROOT (a plugin
 * that must also build against older headers tests this). */
#define APEX_HAVE_PROGRESS_NODE 1

/* The index apex_ctx_progress_node takes for the task itself. */
#define APEX_PROGRESS_ROOT ((size_t)-1)

/* Updates one node of the task's sub-task tree: its percentage, and its
 * status and message unless NULL; or, with index APEX_PROGRESS_ROOT, the
 * task's own percentage, status and message. Everything else of the
 * task's progress stays as the last report left it (the details, the rest
 * of the tree). O(1) at the call: nothing is copied but the strings, no
 * tree is checked or built; the host assembles the whole tree when it
 * delivers an update (at most progress_rate_hz times a second). So a
 * plugin with a tree of 1000 sub-tasks can report per item, one node at a
 * time, at about the cost of apex_ctx_progress.
 *
 * The tree: declared (or replaced) by the last apex_ctx_progress_update
 * that carried sub_tasks, typically once at the start with every sub-task
 * "pending"; cleared by a full report without sub_tasks (apex_ctx_progress
 * included: keep the task's own figures on APEX_PROGRESS_ROOT while nodes
 * are in use); kept across attempts (a retry may go on updating it or
 * declare a new one).
 * index: a sub-task's position in pre-order: sub_tasks[0] is 0, then its
 * own sub-tasks depth first, then sub_tasks[1]; in a flat tree, index i
 * is sub_tasks[i]. Names need not be unique, so a node is named by index.
 * percentage: finite, in [0, 100] (required: the node's new value).
 * status: NULL keeps the node's, else a known status ("pending",
 * "running", "completed", "error", ...: apex_progress_status_is_known).
 * message: NULL keeps the node's, else valid UTF-8 of at most
 * APEX_PROGRESS_MESSAGE_MAX bytes ("" empties it).
 *
 * Coalescing: node updates are plain updates; the host receives the tree
 * as it stands at each delivery, so a node's intermediate states (its
 * status changes included) may be skipped, never its last. A change of
 * the task's own status through APEX_PROGRESS_ROOT, or a
 * "milestone_reached" there, is never coalesced away, as with
 * apex_ctx_progress_update.
 *
 * Returns: APEX_OK (also when ignored: after the task ended, as for
 * apex_ctx_progress); APEX_E_INVALID for a bad percentage, status or
 * message, or an index past the tree's last sub-task (every index but
 * APEX_PROGRESS_ROOT while no tree is declared): the update is dropped and
 * counted (progress_rejected), its reason logged at debug level, e.g.
 * "node[800]: no such sub-task (the tree has 768)",
 * "node[3].status: unknown status 'done'"; APEX_E_INVALID too, with
 * nothing reported or counted, on a host that predates this call (then
 * APEX_HAS_FIELD(apex_host_api_t, ctx->api, progress_node) is 0);
 * APEX_E_NOMEM.
 * Ownership: status and message copied. Thread-safety: any thread, as
 * every apex_ctx_* call; updates from several threads apply in the order
 * they reach the task's lock. */
static inline int apex_ctx_progress_node(apex_ctx_t *c, size_t index, double percentage,
                                         const char *status, const char *message) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, progress_node)) return APEX_E_INVALID;
  return c->api->progress_node(c, index, percentage, status, message);
}

/* plugin.h has apex_ctx_on_cancel and apex_ctx_cancel_fn (a plugin that
 * must also build against older headers tests this). */
#define APEX_HAVE_CTX_ON_CANCEL 1

/* Registers fn to run once when this attempt's cancellation fires: the
 * host's apex_task_cancel, the task's timeout, the manager's shutdown, or
 * its parent token's cancel. It runs on the thread that cancels (the
 * host's, Apex's runtime thread for a timeout, the destroying thread at
 * shutdown, the parent's canceller), with no Apex lock held, so fn may call
 * any apex_ctx_* on ctx, apex_ctx_complete(ctx, APEX_E_CANCELLED) included
 * (what a deferred action usually does); apex_ctx_cancel_reason(ctx) says
 * why. Keep it short: it runs on someone else's thread (hand long work to
 * your own). If the cancellation fired already, fn runs at once, on the
 * calling thread, before this returns: do not touch ctx after a
 * registration that may have completed it.
 *
 * Against apex_ctx_complete: fn never starts once complete returned (the
 * registration ends with the attempt and is dropped unrun), and a complete
 * racing the cancel on another thread waits for a running fn to return
 * before it acts: so fn runs at most once, never after complete returned,
 * and a complete from inside fn itself does not wait. Each attempt has its
 * own: a retry's attempt registers again.
 *
 * When to use which: on_cancel for a deferred action that parks many
 * pending operations (no fd and no allocation per task: a million pending
 * tasks cost no more than their own memory); apex_ctx_cancel_fd for a
 * handler that already polls fds in a loop of its own; apex_ctx_is_cancelled
 * for a blocking handler's loop. A host that cancels the task's token
 * itself (apex_task_token, then apex_token_cancel) wakes the fd and the
 * flag but not fn: cancel through apex_task_cancel.
 *
 * Returns: APEX_OK (fn registered, or already run); APEX_E_ALREADY if this
 * attempt registered one before (one per attempt; fn does not run);
 * APEX_E_INVALID if fn is NULL, if the attempt completed (misuse, counted),
 * or on a host that predates this call (then
 * APEX_HAS_FIELD(apex_host_api_t, ctx->api, on_cancel) is 0: fall back to
 * apex_ctx_cancel_fd). Thread-safety: any thread. Ownership: user is the
 * plugin's, passed back untouched. */
static inline int apex_ctx_on_cancel(apex_ctx_t *c, apex_ctx_cancel_fn fn, void *user) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, on_cancel)) return APEX_E_INVALID;
  return c->api->on_cancel(c, fn, user);
}

/* plugin.h has apex_ctx_heartbeat and apex_ctx_heartbeat_details (a
 * plugin that must also build against older headers tests this). */
#define APEX_HAVE_CTX_HEARTBEAT 1

/* Says this attempt is alive, with optional details (Temporal's activity
 * heartbeat; docs/scheduling.md). A task with a heartbeat timeout
 * (apex_submit_opts_t.heartbeat_timeout_s, or this action's
 * heartbeat_timeout_s) whose attempt goes that long after its start or its
 * last heartbeat without one times out as a start-to-close timeout does:
 * the attempt is cancelled with the reason "timeout" (the token fires, the
 * on_cancel callback runs), its outcome is APEX_E_TIMEOUT, and the retry
 * policy decides whether another attempt runs. Progress reports are not
 * heartbeats: a handler that reports progress must heartbeat too.
 * details: NULL keeps the details recorded before (a bare heartbeat only
 * says alive); otherwise any JSON value within the limits on values above
 * (as progress details), kept as this attempt's latest. They reach the
 * host as an APEX_EVENT_HEARTBEAT event (ev->result; only for a host whose
 * event_mask names that type), coalesced like progress (at most
 * progress_rate_hz a second, the latest wins), and the next attempt of
 * the task reads the last ones with apex_ctx_heartbeat_details: record
 * where to resume.
 * Cost: a lock and, with a heartbeat timeout, a clock read; the details
 * are checked on the calling thread and copied only when they differ from
 * the last. Cheap enough to call per item.
 * Returns: APEX_OK (also when ignored, after the task ended); APEX_E_INVALID
 * if details break the limits (nothing recorded: the heartbeat does not
 * count; the reason is logged), after complete (misuse, counted), or on a
 * host that predates this call (then APEX_HAS_FIELD(apex_host_api_t,
 * ctx->api, heartbeat) is 0: nothing to keep alive there either);
 * APEX_E_NOMEM (the heartbeat counted, the details were not kept).
 * Ownership: details borrowed, only read during the call (jansson's
 * reference counts are not shared with the host). Thread-safety: any
 * thread, as every apex_ctx_* call. */
static inline int apex_ctx_heartbeat(apex_ctx_t *c, json_t *details) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, heartbeat)) return APEX_E_INVALID;
  return c->api->heartbeat(c, details);
}

/* Returns: the details the last heartbeat of an earlier attempt of this
 * task carried (the latest any earlier attempt recorded), or NULL: on the
 * first attempt, when no earlier one heartbeated with details, or on a
 * host that predates this call. Borrowed: valid, and unchanged, while this
 * attempt is open; read it, copy what you keep, do not modify or keep a
 * reference past the attempt. Thread-safety: any thread. */
static inline json_t *apex_ctx_heartbeat_details(apex_ctx_t *c) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, heartbeat_details)) return NULL;
  return c->api->heartbeat_details(c);
}

/* plugin.h has apex_ctx_retry_after (a plugin that must also build against
 * older headers tests this). */
#define APEX_HAVE_CTX_RETRY_AFTER 1

/* Asks that, if this attempt fails and is retried, the next attempt start
 * `seconds` after this one ends: a server's Retry-After, a rate limiter's
 * reset time. Call it before the attempt ends (before a blocking handler
 * returns, or before apex_ctx_complete); a later call in the same attempt
 * replaces an earlier one, and the hint dies with the attempt (a retry's
 * attempt starts without one).
 *
 * The hint replaces the retry policy's delay for that one retry (no
 * backoff, no max_interval_s cap, no jitter): the server said when it will
 * be ready. It never decides whether there is a retry: an attempt that
 * succeeds, fails permanently, with a code the policy lists as
 * non_retryable, or that was the policy's last (max_attempts) ends the
 * task as it would without the hint, and a cancel or timeout during the
 * wait ends it as any retry wait does. Bounds: a retry that would start
 * past the task's overall deadline (apex_submit_opts_t.timeout_s) is not
 * scheduled: the task fails at once with this attempt's error (as when
 * the policy's own backoff would cross the deadline), rather than wait
 * only to time out; mention the hint in apex_ctx_fail's message so the
 * host can see why. A hint above a year counts as a year (every retry
 * delay is capped there). 0 means "retry at once". The host's RETRY event
 * carries the delay used (apex_event_t.retry_delay_s).
 *
 * Returns: APEX_OK (kept, whether or not a retry follows); APEX_E_INVALID
 * if seconds is negative or not finite (nothing kept), if the attempt
 * completed (misuse, counted), or on a host that predates this call (then
 * APEX_HAS_FIELD(apex_host_api_t, ctx->api, retry_after) is 0 and the
 * policy's delay applies). Thread-safety: any thread, as every apex_ctx_*
 * call. */
static inline int apex_ctx_retry_after(apex_ctx_t *c, double seconds) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, retry_after)) return APEX_E_INVALID;
  return c->api->retry_after(c, seconds);
}

/* plugin.h has apex_ctx_partial_result (a plugin that must also build
 * against older headers tests this). */
#define APEX_HAVE_CTX_PARTIAL_RESULT 1

/* Publishes what the task has achieved so far, as a JSON value of the
 * plugin's choosing ({"steps_done": 6, "of": 10}, the bytes hashed, the
 * rows written): the result the host keeps if the task never finishes.
 * Each call replaces the last; the task keeps the latest across its
 * attempts (a retry's first publish replaces what the failed attempt
 * left).
 * What the host gets:
 * - an APEX_EVENT_PARTIAL event (ev->result; only for a host whose
 *   event_mask names that type), coalesced like progress: at most
 *   progress_rate_hz a second per task, the latest wins, so
 *   intermediate values may be skipped but never the last: a partial
 *   published before the task ends is delivered before its DONE event;
 * - apex_task_partial_result, at any time, after the end included;
 * - when the task fails, is cancelled or times out, the last partial on
 *   its error (apex_error_partial_result, "partial_result" in
 *   apex_error_to_json). A task that succeeds keeps it readable, but its
 *   result is what apex_ctx_set_result set.
 * Partial results against progress details: progress says how far (for a
 * human, a bar); a partial result says what is done (for a program: what
 * to keep, what to skip on a rerun). Publish one when work that ends
 * early still has a value.
 * Cost: the value is checked (the limits on values above) and flattened
 * into a buffer the task reuses, on the calling thread: no allocation per
 * call once warm, no jansson copy; the JSON the host receives is built at
 * delivery, at the progress rate, so publishing per item costs about a
 * walk of the value. Keep it small (counts, a cursor), not the data.
 * partial: any JSON value within the limits on values above; NULL clears
 * the kept one (the host gets a PARTIAL event with a NULL result).
 * Returns: APEX_OK (also when ignored: after the task ended, a timeout or
 * a cancel at shutdown, as for apex_ctx_progress; counted in
 * late_reports); APEX_E_INVALID if the value breaks the limits (nothing
 * kept, the last partial stays; the reason, e.g. "partial.rows[3]: not
 * valid UTF-8 at byte 7", is logged at warn level), after complete
 * (misuse, counted and logged), or on a host that predates this call
 * (then APEX_HAS_FIELD(apex_host_api_t, ctx->api, partial_result) is 0);
 * APEX_E_NOMEM (nothing kept).
 * Ownership: partial borrowed, only read during the call (not modified,
 * no reference taken: jansson's reference counts are not shared with the
 * host). Thread-safety: any thread, as every apex_ctx_* call; of calls
 * from several threads, the one that reaches the task's lock last wins. */
static inline int apex_ctx_partial_result(apex_ctx_t *c, json_t *partial) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, partial_result)) return APEX_E_INVALID;
  return c->api->partial_result(c, partial);
}

/* ------------------------------------------------------------ child tasks
 * A handler may start other actions, of any loaded plugin, as children of
 * its task (docs/plugin-developer-guide.md, "Child tasks"). A child is an
 * ordinary task of the manager: it is queued, scheduled, retried, timed
 * out and reported to the host (its events, with apex_task_parent_id) like
 * any other. What makes it a child:
 * - Cascade: its token is a child of the parent attempt's, so cancelling,
 *   timing out or shutting down the parent cancels every descendant at once
 *   (queued ones end at once, running ones see the reason "parent"). Its
 *   overall deadline never exceeds the parent's: a child whose own would be
 *   later gets the parent's, and ends `cancelled` (reason "parent") if it
 *   is still running when that passes.
 * - Structure: the parent's attempt does not end before its children did.
 *   A blocking handler that returns, or a deferred one that completes, with
 *   children still live cancels them (reason "parent") and its task ends
 *   once they ended (or were abandoned by their own timeout); a parent
 *   whose overall deadline passes first cancels them and ends `timed_out`
 *   after them. So the host receives every child's DONE before the
 *   parent's.
 * - Roll-up: the parent's delivered progress combines its own reported
 *   percentage and its children's, by weight (apex_ctx_children_own_weight
 *   has the formula), and its sub_tasks list the live tree of children.
 * - Outcome: a child's failure does not fail the parent: the handler reads
 *   it (apex_ctx_child_outcome) and decides.
 * Handles (apex_child_t) belong to the attempt that spawned them: valid
 * until that attempt ends (the handler returns or completes), usable only
 * with that attempt's ctx; the host frees them with the task, so
 * apex_ctx_child_release is optional (it says the handle is no longer
 * used). */

/* plugin.h has apex_ctx_spawn and the calls below (a plugin that must also
 * build against older headers tests this). */
#define APEX_HAVE_CTX_SPAWN 1

/* Spawns nested deeper than this (a task is depth 0, its children 1) are
 * refused: what catches plugins that spawn each other without end. */
#define APEX_CHILD_MAX_DEPTH 16
/* The sub_tasks tree a parent delivers lists at most this many children
 * per task (running ones first, then the others in spawn order; the
 * details' "children" object counts them all) and nests at most this many
 * levels of children below the parent. */
#define APEX_CHILD_TREE_MAX_LISTED 64
#define APEX_CHILD_TREE_MAX_DEPTH 4

/* Options of apex_ctx_spawn. Start with APEX_SPAWN_OPTS_INIT; the host
 * reads at most struct_size bytes, so fields may be appended. */
typedef struct apex_spawn_opts {
  uint32_t struct_size; /* sizeof(apex_spawn_opts_t) as the plugin built it */
  double weight;        /* the child's share in the parent's roll-up: finite,
                           > 0; 0 means 1 (the default) */
  const char *label;    /* its name in the parent's sub_tasks (copied; at
                           most 256 bytes of UTF-8); NULL: "plugin.action" */
  double timeout_s;     /* overall timeout; 0: submit->timeout_s, else the
                           action's default; never past the parent's */
  /* The ordinary submit options (include/apex/apex.h: priority,
   * concurrency and fairness keys, start time, retry policy, the other
   * timeouts, an event callback of its own), or NULL for the defaults.
   * Its parent token is ignored: the parent attempt's token is the
   * child's parent. Borrowed for the call. */
  const struct apex_submit_opts *submit;
} apex_spawn_opts_t;

#define APEX_SPAWN_OPTS_INIT {.struct_size = sizeof(apex_spawn_opts_t), .weight = 1.0}

/* Starts plugin.action with params as a child of this task (see above),
 * through the manager's ordinary submit path (params validated, queue
 * limits and the scheduler applied). opts NULL: weight 1, label
 * "plugin.action", the action's defaults.
 * Returns: APEX_OK and a handle in *out; APEX_E_CANCELLED if this attempt
 * was cancelled (or its task ended) already: nothing is spawned;
 * APEX_E_INVALID for NULL plugin, action or out, a weight that is not
 * finite and positive, a label that is not UTF-8 or too long, a struct_size
 * too small, a spawn nested deeper than APEX_CHILD_MAX_DEPTH, a call after
 * this attempt completed (misuse, counted: also a call under way on
 * another thread when the attempt ends, or made after a complete that
 * waits for the children, their end callbacks' included; it spawns
 * nothing, for this attempt or the next), or a host that predates this
 * call (APEX_HAS_FIELD(apex_host_api_t, ctx->api, spawn) is 0); every
 * error apex_manager_submit returns (APEX_E_PLUGIN_NOT_FOUND,
 * APEX_E_ACTION_NOT_FOUND, APEX_E_INVALID_PARAMS, APEX_E_QUEUE_FULL,
 * APEX_E_SHUTTING_DOWN, APEX_E_NOMEM). Every refusal is logged with its
 * reason at warn level. Ownership: params borrowed (not modified), opts
 * and its strings borrowed (label copied); *out as described above.
 * Thread-safety: any thread, while the attempt is open. */
static inline int apex_ctx_spawn(apex_ctx_t *c, const char *plugin, const char *action,
                                 json_t *params, const apex_spawn_opts_t *opts,
                                 apex_child_t **out) {
  if (out) *out = NULL;
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, spawn)) return APEX_E_INVALID;
  return c->api->spawn(c, plugin, action, params, opts, out);
}

/* Blocks until every child in children[0..n) has ended (children NULL with
 * n 0: every child this attempt spawned so far), or timeout_ms passes
 * (negative: no limit), or this attempt is cancelled. A blocking handler's
 * wait holds its worker: with as few workers as waiting parents, children
 * wait in the queue behind them, so wide fan-outs from many parents at
 * once belong in deferred actions (apex_ctx_on_child_end).
 * A wait under way when this attempt's apex_ctx_complete is called (a
 * call racing it) waits for the children as that complete does, but never
 * for the next attempt's: it returns APEX_E_INVALID once the complete ran
 * with a child still to wait for (a retry's: every child of this attempt
 * ended before it).
 * Returns: APEX_OK; APEX_E_AGAIN when the time ran out; APEX_E_CANCELLED
 * when this attempt's cancellation fired (the children are cancelled with
 * it: the handler should return); APEX_E_INVALID for a NULL entry, a child
 * of another attempt, NULL children with n > 0, a call after this
 * attempt's apex_ctx_complete (misuse, counted: also one made while that
 * complete waits for the children, their end callbacks' included, or
 * under way when it ran, as above), a host that predates this call.
 * Thread-safety: any thread. */
static inline int apex_ctx_wait_children(apex_ctx_t *c, apex_child_t *const *children, size_t n,
                                         int64_t timeout_ms) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, child_wait)) return APEX_E_INVALID;
  return c->api->child_wait(c, children, n, 1, timeout_ms, NULL);
}

/* As apex_ctx_wait_children, until one of children[0..n) (n > 0) has
 * ended; *which (if not NULL) is set to the index of the first ended one
 * in the array's order (which may have ended before the call).
 * Returns: as apex_ctx_wait_children. */
static inline int apex_ctx_wait_any_child(apex_ctx_t *c, apex_child_t *const *children, size_t n,
                                          int64_t timeout_ms, size_t *which) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, child_wait)) return APEX_E_INVALID;
  return c->api->child_wait(c, children, n, 0, timeout_ms, which);
}

/* A child's end, for apex_ctx_on_child_end: ctx is the parent attempt's. */
typedef void (*apex_child_fn)(apex_ctx_t *ctx, apex_child_t *child, void *user);

/* Registers fn to run once when child ends (its outcome readable then), on
 * the thread that ended it (a worker, Apex's runtime thread, a canceller),
 * with no Apex lock held: what a deferred action uses to fan out without
 * holding a worker. fn may call any apex_ctx_* on ctx, apex_ctx_complete
 * included (the attempt stays open until every child ended, see above:
 * the complete then takes effect once the last child's callback
 * returned). Once that complete was called (by fn itself, by another
 * child's fn, or by the plugin while children were live: their fn run
 * after it returned), fn may still read its attempt's children with
 * apex_ctx_child_outcome and apex_ctx_child_task_id (the outcomes are
 * what a callback is for); every other apex_ctx_* call (the family's:
 * spawn, the waits, apex_ctx_on_child_end, apex_ctx_children_own_weight;
 * and set_result, fail, progress, log and the rest) is refused or ignored
 * then, as a call after complete. Keep it short. If child ended already, fn runs
 * at once on the calling thread before this returns.
 * Returns: APEX_OK; APEX_E_ALREADY if one was registered for child before;
 * APEX_E_INVALID for NULL fn or child, a child of another attempt, a call
 * after this attempt's apex_ctx_complete (misuse, counted: also one made
 * while that complete waits for the children, their end callbacks'
 * included), a host that predates this call. Ownership: user is the
 * plugin's. Thread-safety: any thread. */
static inline int apex_ctx_on_child_end(apex_ctx_t *c, apex_child_t *child, apex_child_fn fn,
                                        void *user) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, child_on_end)) return APEX_E_INVALID;
  return c->api->child_on_end(c, child, fn, user);
}

/* Reads a child's outcome. state (if not NULL) gets its apex_task_state_t
 * value (include/apex/apex.h: 3 succeeded, 4 failed, 5 cancelled, 6
 * timed_out; below 3 while live); result (if not NULL) its result once
 * succeeded, error (if not NULL) its error as JSON (apex_error_to_json:
 * {"code": "cancelled", "message": ...}) once it failed, was cancelled or
 * timed out; each NULL otherwise.
 * Returns: APEX_OK (succeeded); the child's error code (APEX_E_EXECUTION,
 * APEX_E_CANCELLED, APEX_E_TIMEOUT, ...); APEX_E_AGAIN while it is live;
 * APEX_E_INVALID for a NULL child, one of another attempt, a call after
 * this attempt's apex_ctx_complete (misuse, counted: also one made while
 * that complete waits for the children; but not from a child's end
 * callback, apex_ctx_on_child_end, which reads outcomes after it), a host
 * that predates this call. Ownership: *result and *error are new
 * references the caller owns alone (copies). Thread-safety: any thread. */
static inline int apex_ctx_child_outcome(apex_ctx_t *c, apex_child_t *child, int *state,
                                         json_t **result, json_t **error) {
  if (state) *state = -1;
  if (result) *result = NULL;
  if (error) *error = NULL;
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, child_outcome)) return APEX_E_INVALID;
  return c->api->child_outcome(c, child, state, result, error);
}

/* Returns: the child's task id (what the host's events carry), 0 for a
 * NULL or foreign child, a call after this attempt's apex_ctx_complete
 * (misuse, counted, as apex_ctx_child_outcome's: a child's end callback
 * still reads it), or an older host. Thread-safety: any thread. */
static inline uint64_t apex_ctx_child_task_id(apex_ctx_t *c, apex_child_t *child) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, child_task_id)) return 0;
  return c->api->child_task_id(c, child);
}

/* Says the handle is no longer used (optional: handles are freed with the
 * task). The child runs on; it stays in the roll-up. Thread-safety: any
 * thread; never twice for one handle, never with a wait on it running. */
static inline void apex_ctx_child_release(apex_ctx_t *c, apex_child_t *child) {
  if (APEX_HAS_FIELD(apex_host_api_t, c->api, child_release)) c->api->child_release(c, child);
}

/* Sets how much the task's own reported work weighs against its
 * children's in its delivered percentage:
 *   delivered = (own_weight * own + sum(w_i * p_i)) / (own_weight + sum(w_i))
 * where own is the percentage the handler reports (apex_ctx_progress), w_i
 * a child's weight and p_i its delivered percentage (100 once it
 * succeeded or failed: its work is over; a cancelled or timed-out child
 * keeps what it reported, so a cancelled tree does not read as done; its
 * node in sub_tasks shows a failed child's reported work too). own_weight defaults to 0: a
 * task with children reports their progress; one with none (or with a
 * zero sum) reports its own. So children of weights 1, 3 and 6 at 100 %,
 * 50 % and 0 % give 25 %; with own_weight 10 and its own 40 %, 32.5 %.
 * Returns: APEX_OK; APEX_E_INVALID for a weight not finite or negative, a
 * call after this attempt's apex_ctx_complete (misuse, counted: also one
 * made while that complete waits for the children, their end callbacks'
 * included), a host that predates this call. Thread-safety: any. */
static inline int apex_ctx_children_own_weight(apex_ctx_t *c, double weight) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, children_own_weight)) return APEX_E_INVALID;
  return c->api->children_own_weight(c, weight);
}

/* plugin.h has apex_ctx_checkpoint and apex_ctx_checkpoint_get (a plugin
 * that must also build against older headers tests this). */
#define APEX_HAVE_CTX_CHECKPOINT 1

/* The largest checkpoint, in bytes of its compact JSON text. */
#define APEX_CHECKPOINT_MAX_BYTES (1024u * 1024u)

/* Saves the handler's resumable state (docs/store.md): where it is, what
 * it needs to continue (a byte offset, a cursor, the steps done). Each call
 * replaces the last. It counts as a heartbeat (apex_ctx_heartbeat with no
 * details). For a durable task (apex_submit_opts_t.durable) of a manager
 * with a store, the state is written to the store and the call returns
 * once that write is durable (it shares its transaction, and its fsync,
 * with the other writes waiting then: group commit), so a step the
 * handler does after the call returned is one the store knows was reached;
 * for any other task it is kept in memory, for the task's next attempt.
 * state: a JSON value (object, array, number, ...) within the limits on
 * values above whose compact text is at most APEX_CHECKPOINT_MAX_BYTES.
 * Returns: APEX_OK (also when ignored, after the task ended); APEX_E_INVALID
 * if state is NULL, breaks the limits or the cap (nothing saved, the last
 * checkpoint stays; the reason is logged), after complete (misuse), or on
 * a host that predates this call (APEX_HAS_FIELD(apex_host_api_t, ctx->api,
 * checkpoint) is 0); APEX_E_STORE if the store failed to write it (the
 * message is logged; the last durable checkpoint stays); APEX_E_NOMEM.
 * Ownership: state borrowed, only read during the call. Thread-safety: any
 * thread, as every apex_ctx_* call; it blocks for the write (about a
 * commit: well under a millisecond on a local disk). */
static inline int apex_ctx_checkpoint(apex_ctx_t *c, json_t *state) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, checkpoint)) return APEX_E_INVALID;
  return c->api->checkpoint(c, state);
}

/* Returns: the last checkpoint the task saved before this attempt (by an
 * earlier attempt, or, for a durable task resumed after a crash or
 * restart, by the process that ran it), or NULL: none saved, or a host
 * that predates this call. Within an attempt it does not change (the
 * attempt's own checkpoints are for the next one). Borrowed: valid, and
 * unchanged, while this attempt is open; read it, copy what you keep.
 * Thread-safety: any thread. */
static inline json_t *apex_ctx_checkpoint_get(apex_ctx_t *c) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, checkpoint_get)) return NULL;
  return c->api->checkpoint_get(c);
}

/* Sets the result of this attempt (replacing an earlier one). The value is
 * checked here, on the calling thread, against the limits on values above
 * (APEX_VALUE_MAX_DEPTH and the rest). One that breaks them is refused and
 * freed (without recursion, so a deep or cyclic value is safe to pass), and
 * the attempt then fails with APEX_E_INVALID_RESULT and a message naming
 * the fault (e.g. "result.child.parent: contains itself (a cycle)") if the
 * handler reports success; if it fails anyway, its own failure stands. A
 * later call replaces a refusal as it replaces a result.
 * Ownership: result taken (the ctx owns it now; NULL clears): keep no
 * reference you would change, and never free it yourself. */
static inline void apex_ctx_set_result(apex_ctx_t *c, json_t *result) { c->api->set_result(c, result); }

/* Records why this attempt failed; code is APEX_E_TRANSIENT (retry allowed)
 * or another error (permanent, usually APEX_E_EXECUTION).
 * Returns: code, so a handler can `return apex_ctx_fail(ctx, ...)`. */
static inline int apex_ctx_fail(apex_ctx_t *c, int code, const char *fmt, ...)
    APEX_PRINTF(3, 4);
static inline int apex_ctx_fail(apex_ctx_t *c, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = c->api->failv(c, code, fmt, ap);
  va_end(ap);
  return rc;
}

/* Finishes a deferred action with status (APEX_OK or an error code), from
 * any thread. The ctx is invalid once this returns: do not touch it again,
 * from any thread (but for the end callbacks of children still live, which
 * the attempt waits for: they get ctx after it, for what
 * apex_ctx_on_child_end allows them). A completion after the task timed out or was cancelled
 * is accepted and ignored. Calling it from a blocking handler is an error
 * that is logged and ignored (a blocking handler finishes by returning).
 * Misuse Apex catches without a crash, ignores, counts in late_reports and
 * logs: a second complete, in sequence or racing this one; progress,
 * progress_update, set_result (the result is freed), fail or log after it
 * or racing it, also while it waits for live children (an end callback
 * may still read outcomes: apex_ctx_on_child_end); any other apex_ctx_*
 * call made after it returned (params
 * and plugin_state give NULL, task_id and attempt 0, is_cancelled 1 with
 * the reason "completed", sleep_ms and wait_fd APEX_E_CANCELLED at once,
 * cancel_fd APEX_E_INVALID). Undefined: those other calls racing it; any
 * call once 256 more tasks of the manager have ended, once the task's next
 * attempt (a retry) has started, or after the manager was destroyed. */
static inline void apex_ctx_complete(apex_ctx_t *c, int status) { c->api->complete(c, status); }

/* Log levels, most severe first. */
#define APEX_LOG_ERROR 0
#define APEX_LOG_WARN 1
#define APEX_LOG_INFO 2
#define APEX_LOG_DEBUG 3

/* Writes the W3C traceparent of the open attempt's span into buf ("00-"
 * trace id "-" span id "-" flags, 55 characters and a NUL), for a plugin to
 * send on an outgoing request (the http plugin sends it as the
 * `traceparent` header) so the callee's spans join the task's trace.
 * Returns: APEX_OK; APEX_E_INVALID when the task has no trace context
 * (tracing is off: the manager's trace_sampler, docs/observability.md), buf
 * is NULL or size < 56, the call comes after complete(), or the host
 * predates this call. Thread-safety: any thread,
 * while the attempt is open. */
#define APEX_HAVE_CTX_TRACEPARENT 1
static inline int apex_ctx_traceparent(apex_ctx_t *c, char *buf, size_t size) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, traceparent)) return APEX_E_INVALID;
  return c->api->traceparent(c, buf, size);
}

/* The longest tracestate Apex keeps and passes on (W3C trace context's
 * 512 characters); a buffer of APEX_TRACESTATE_MAX + 1 always fits it. */
#define APEX_TRACESTATE_MAX 512
/* Writes the W3C tracestate that goes with apex_ctx_traceparent's value
 * into buf, NUL-terminated: the one the host passed at submit
 * (apex_submit_opts_t.tracestate), or for a child task its parent's, as
 * given ("" when there is none), for a plugin to send beside the
 * traceparent (the `tracestate` header). Apex does not add a member of its
 * own. Returns: APEX_OK; APEX_E_INVALID when the task has no trace context
 * (tracing is off), buf is NULL or too small for the value (size >
 * APEX_TRACESTATE_MAX always fits), the call comes after complete(), or the
 * host predates this call. Thread-safety: any thread, while the attempt is
 * open. */
#define APEX_HAVE_CTX_TRACESTATE 1
static inline int apex_ctx_tracestate(apex_ctx_t *c, char *buf, size_t size) {
  if (!APEX_HAS_FIELD(apex_host_api_t, c->api, tracestate)) return APEX_E_INVALID;
  return c->api->tracestate(c, buf, size);
}

/* Logs through the host's log callback, tagged with plugin, action, task
 * (as fields of the record: include/apex/trace.h, apex_log_record_t). A
 * plugin that logs faster than the manager's log_rate_limit has the rest
 * dropped and counted; a summary record says how many. */
static inline void apex_ctx_log(apex_ctx_t *c, int level, const char *fmt, ...) APEX_PRINTF(3, 4);
static inline void apex_ctx_log(apex_ctx_t *c, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  c->api->logv(c, level, fmt, ap);
  va_end(ap);
}

#ifdef __cplusplus
}
#endif
#endif /* APEX_PLUGIN_H */
