/* Apex: types shared by the host API (apex.h) and the plugin API (plugin.h).
 * Thread-safety: every function declared here is safe from any thread. */
#ifndef APEX_COMMON_H
#define APEX_COMMON_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define APEX_EXTERN __attribute__((visibility("default")))
#define APEX_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define APEX_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#define APEX_EXTERN
#define APEX_PRINTF(fmt, args)
#define APEX_DEPRECATED(msg)
#endif

/* 1 if the struct at p, whose struct_size says how much of it its maker
 * knew, includes `field` of type; else 0. For structs that grow by appending
 * (docs/abi.md): the host-api table a plugin receives, the stats a library
 * fills. */
#define APEX_HAS_FIELD(type, p, field) \
  (offsetof(type, field) + sizeof(((type *)0)->field) <= (size_t)(p)->struct_size)

/* Status codes: 0 is success, every failure is negative. Codes are grouped
 * as in the design's error hierarchy; ask a category with the apex_status_is_*
 * tests below rather than comparing ranges. */
typedef enum apex_status {
  APEX_OK = 0,

  /* runtime errors */
  APEX_E_INVALID = -1,       /* bad argument to an API call */
  APEX_E_NOMEM = -2,         /* out of memory */
  APEX_E_IO = -3,            /* a system call failed */
  APEX_E_ALREADY = -4,       /* already done (cancelled, terminal, removed) */
  APEX_E_AGAIN = -5,         /* a wait ran out of time; try again */
  APEX_E_BUSY = -6,          /* handlers still running past a shutdown deadline */
  APEX_E_QUEUE_FULL = -7,    /* the manager's queue limit is reached */
  APEX_E_SHUTTING_DOWN = -8, /* the manager is being destroyed */
  APEX_E_STORE = -9,         /* the durable store failed */

  /* plugin errors (PluginError) */
  APEX_E_PLUGIN = -20,           /* generic plugin error */
  APEX_E_PLUGIN_NOT_FOUND = -21, /* no plugin of that name */
  APEX_E_ACTION_NOT_FOUND = -22, /* the plugin has no such action */
  APEX_E_PLUGIN_LOAD = -23,      /* the plugin could not be loaded */
  APEX_E_ABI_MISMATCH = -24,     /* a load error: descriptor of another ABI */
  APEX_E_INVALID_PARAMS = -25,   /* params do not match the action's spec */

  /* execution errors (PluginActionExecutionError) */
  APEX_E_EXECUTION = -40, /* the action failed (permanent) */
  APEX_E_TIMEOUT = -41,   /* a deadline passed */
  APEX_E_CANCELLED = -42, /* the task was cancelled */
  APEX_E_TRANSIENT = -43, /* the action failed and may succeed if retried */
  APEX_E_CRASHED = -44,   /* the plugin crashed (process isolation) */
  APEX_E_INVALID_RESULT = -45, /* the result broke the limits on values
                                  (plugin.h, APEX_VALUE_MAX_DEPTH) */
  /* Appended (durable tasks, docs/store.md): */
  APEX_E_INTERRUPTED = -46 /* a durable task's attempt was cut off by a
                              crash and its action is neither resumable nor
                              idempotent, so it is not run again */
} apex_status_t;

/* Returns: a sentence naming the code ("the action timed out"); never NULL.
 * Ownership: static string. */
APEX_EXTERN const char *apex_strerror(int code);

/* Returns: the code's snake_case name ("timeout", "invalid_params"), as used
 * in JSON; "unknown" for a code Apex does not define. Ownership: static. */
APEX_EXTERN const char *apex_status_name(int code);

/* Category tests of the error hierarchy.
 * apex_status_is_execution: EXECUTION, TIMEOUT, CANCELLED, TRANSIENT, CRASHED,
 *   INVALID_RESULT, INTERRUPTED.
 * apex_status_is_plugin_error: every plugin error and every execution error.
 * apex_status_is_load_error: PLUGIN_LOAD and ABI_MISMATCH.
 * Returns: 1 or 0. */
APEX_EXTERN int apex_status_is_execution(int code);
APEX_EXTERN int apex_status_is_plugin_error(int code);
APEX_EXTERN int apex_status_is_load_error(int code);

#ifdef __cplusplus
}
#endif
#endif /* APEX_COMMON_H */
