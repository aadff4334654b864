/* Apex plugin-author API.
 *
 * A plugin is a shared object that exports one symbol, apex_plugin_entry,
 * returning a const descriptor. The host reads the descriptor's first two
 * fields (abi_version, struct_size) before anything else and never reads past
 * struct_size, so fields are append-only. Host services reach the plugin
 * through the function table in every ctx (ctx->api), so a plugin links
 * nothing from the host: only this header (and jansson, for JSON values).
 *
 * Threads: a blocking handler runs on a worker thread of the host; a deferred
 * handler's start runs on a worker thread too and must return APEX_PENDING
 * quickly, then finish later from any thread with apex_ctx_complete(). Every
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

/* Bumped when a field changes meaning; appending fields only grows
 * struct_size. */
#define APEX_PLUGIN_ABI 1

/* Returned by a deferred handler that will complete later. */
#define APEX_PENDING 1

typedef struct apex_ctx apex_ctx_t;

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

/* Retry policy (Temporal-style). A zero-filled policy means one attempt. */
typedef struct apex_retry_policy {
  uint32_t max_attempts;       /* total attempts, 1..65535; 0 means 1 */
  double initial_interval_s;   /* delay before the 2nd attempt */
  double backoff_coefficient;  /* >= 1; 0 means 2 */
  double max_interval_s;       /* cap on one delay; 0 means no cap */
  double jitter;               /* 0..1: each delay is scaled by 1 +- jitter */
  const apex_status_t *non_retryable; /* codes never retried, or NULL */
  size_t n_non_retryable;
} apex_retry_policy_t;

/* Action flags. */
#define APEX_ACTION_F_IDEMPOTENT 0x1u /* safe to run again after a crash */

/* Returns APEX_OK on success (result set by apex_ctx_set_result, or null),
 * an error code (APEX_E_TRANSIENT to ask for a retry, APEX_E_EXECUTION or any
 * other for a permanent failure; details by apex_ctx_fail), or APEX_PENDING
 * for a deferred action that completes later. */
typedef int (*apex_handler_fn)(apex_ctx_t *ctx);

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
} apex_action_desc_t;

typedef struct apex_host_api apex_host_api_t;

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
  /* Called once when the manager is destroyed, after every handler returned. */
  void (*shutdown)(void *state);
  const apex_action_desc_t *actions;
  size_t n_actions;
} apex_plugin_desc_t;

/* The one symbol a plugin exports. */
#define APEX_PLUGIN_ENTRY_SYMBOL "apex_plugin_entry"
#if defined(__GNUC__)
#define APEX_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define APEX_PLUGIN_EXPORT
#endif
typedef const apex_plugin_desc_t *(*apex_plugin_entry_fn)(const apex_host_api_t *api);

/* Defines the entry symbol for a plugin whose descriptor is a static const
 * object: APEX_PLUGIN_DEFINE(k_plugin). A plugin that needs the api table
 * at entry writes apex_plugin_entry itself instead. */
#define APEX_PLUGIN_DEFINE(desc)                                                          \
  APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api); \
  APEX_PLUGIN_EXPORT const apex_plugin_desc_t *apex_plugin_entry(const apex_host_api_t *api) { \
    (void)api;                                                                            \
    return &(desc);                                                                       \
  }

/* A progress report. percentage is in [0, 100]; message NULL or valid UTF-8
 * of at most APEX_PROGRESS_MESSAGE_MAX bytes; status NULL ("running") or one
 * of "running", "completed", "error", "milestone_reached" (the lifecycle
 * names of apex_progress_status_is_known are accepted too); details NULL or a
 * JSON object; sub_tasks NULL or a JSON array of objects of the shape
 * {"name": string, "percentage": number, "status"?, "message"?, "weight"?,
 *  "details"?, "sub_tasks"?}. JSON values are borrowed and copied. */
typedef struct apex_progress_update {
  double percentage;
  const char *message;
  const char *status;
  json_t *details;
  json_t *sub_tasks;
} apex_progress_update_t;

#define APEX_PROGRESS_MESSAGE_MAX 1024
#define APEX_PROGRESS_MAX_DEPTH 8

/* Host services. Reached through ctx->api; see the apex_ctx_* wrappers below
 * for each one's contract. Append-only: check struct_size before using a
 * member added after the ABI version you were built for. */
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
 * Returns: APEX_OK after the full sleep, APEX_E_CANCELLED early. */
static inline int apex_ctx_sleep_ms(apex_ctx_t *c, uint64_t ms) { return c->api->sleep_ms(c, ms); }

/* Waits until fd is ready for events (POLLIN/POLLOUT), timeout_ms passes
 * (-1: no limit) or the token fires.
 * Returns: the revents (> 0) when ready, 0 on timeout, APEX_E_CANCELLED,
 * APEX_E_IO if poll failed, APEX_E_INVALID for a negative fd. */
static inline int apex_ctx_wait_fd(apex_ctx_t *c, int fd, short events, int64_t timeout_ms) {
  return c->api->wait_fd(c, fd, events, timeout_ms);
}

/* Reports progress. Cheap enough to call per item (coalesced by the host:
 * the latest update wins at the host's delivery rate).
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
 * coalesce like the rest, so a plugin cannot flood the host with them). Returns: as apex_ctx_progress, plus APEX_E_INVALID for a bad
 * status, details or sub_tasks. Ownership: u and its JSON values borrowed. */
static inline int apex_ctx_progress_update(apex_ctx_t *c, const apex_progress_update_t *u) {
  return c->api->progress_update(c, u);
}

/* Sets the result of this attempt (replacing an earlier one).
 * Ownership: result taken (the ctx owns it now; NULL clears). */
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
 * any thread. The ctx is invalid once this returns: do not touch it again.
 * A completion after the task timed out or was cancelled is accepted and
 * ignored. Calling it from a blocking handler is an error that is logged and
 * ignored (a blocking handler finishes by returning). */
static inline void apex_ctx_complete(apex_ctx_t *c, int status) { c->api->complete(c, status); }

/* Log levels, most severe first. */
#define APEX_LOG_ERROR 0
#define APEX_LOG_WARN 1
#define APEX_LOG_INFO 2
#define APEX_LOG_DEBUG 3

/* Logs through the host's log callback, tagged with plugin, action, task. */
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
