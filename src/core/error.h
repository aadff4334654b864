/* Internal: constructing apex_error_t objects and reporting them through the
 * optional `apex_error_t **err` out-parameters of the public API. */
#ifndef APEX_CORE_ERROR_H
#define APEX_CORE_ERROR_H

#include <stdarg.h>
#include <stdint.h>

#include "apex/apex.h"

/* Where an error is about; any field may be NULL/0. */
typedef struct apex__where {
  const char *plugin;
  const char *action;
  uint64_t task;
  uint32_t attempt;
} apex__where_t;

/* Returns: a new error (refcount 1). Never NULL: when memory runs out it
 * returns a shared static "out of memory" error (ref/unref are no-ops on it).
 * Ownership: strings copied; cause taken (may be NULL). Any thread. */
apex_error_t *apex__error_new(int code, const apex__where_t *where, apex_error_t *cause,
                              const char *fmt, ...) APEX_PRINTF(4, 5);
apex_error_t *apex__error_newv(int code, const apex__where_t *where, apex_error_t *cause,
                               const char *fmt, va_list ap);

/* Marks e, a new APEX_E_TIMEOUT error not yet shared, with the timeout
 * that fired (apex_error_timeout_kind; kind as exec/internal.h's
 * apex__tmo_kind_t: 1 schedule_to_close, 2 schedule_to_start, 3
 * start_to_close, 4 heartbeat). Returns: e. A no-op on the static
 * out-of-memory error. */
apex_error_t *apex__error_timeout_kind(apex_error_t *e, int kind);

/* Returns: an APEX_E_CANCELLED error saying "cancelled (REASON)", the
 * same as apex__error_new(APEX_E_CANCELLED, where, cause, "cancelled (%s)",
 * reason) without formatting (NULL reason: "(null)"); the static
 * out-of-memory error when memory runs out. Ownership: cause taken. */
apex_error_t *apex__error_cancelled(const apex__where_t *where, apex_error_t *cause,
                                   const char *reason);

/* Room apex__fmt_fixed3 needs: "%.3f" of any double (309 digits at most
 * before the point) and its NUL. */
#define APEX__FIXED3_MAX 320

/* Writes v as printf's "%.3f" writes it (round to nearest, ties to even,
 * on v's exact binary value) into buf, NUL-terminated, without printf for
 * the usual case (0 <= v < 1e15 where long double holds v * 1000
 * exactly): a timeout's message is made on the path from its deadline to
 * the host's DONE, and printf's floating-point code, cold by then, was
 * microseconds of it (bench/analysis.md, W4). Returns: the length. */
size_t apex__fmt_fixed3(char buf[APEX__FIXED3_MAX], double v);

/* Returns: an error with code and msg as its message, like
 * apex__error_new(code, where, NULL, "%s", msg), for text known to be
 * valid UTF-8 already (Apex's own sentences, names checked at load): it
 * is copied, not scrubbed. The static out-of-memory error when memory runs
 * out. Ownership: strings copied. */
apex_error_t *apex__error_clean(int code, const apex__where_t *where, const char *msg);

/* apex__error_clean for a message of mlen bytes (no NUL needed within
 * them): one pass, no length to measure. */
apex_error_t *apex__error_clean_n(int code, const apex__where_t *where, const char *msg,
                                  size_t mlen);

/* Attaches a task's last partial result to e, its outcome error
 * (apex_error_partial_result): in place while the caller holds e's only
 * reference, else on a copy of e (e's reference then goes). On no memory,
 * or for the static no-memory error, e stays as it was and partial is
 * dropped. Returns: the error to keep (e or its copy). Ownership: e and
 * partial taken (partial checked against the value limits: freed
 * recursively); never NULL for a non-NULL e. */
apex_error_t *apex__error_with_partial(apex_error_t *e, json_t *partial);

/* A view: a stand-in for a task's outcome error not made yet, which a
 * DONE event hands the host instead of making the error (exec/task.c,
 * apex__task_done_error). It is a 32-bit word holding APEX__ERROR_VIEW at
 * an 8-aligned address inside the task, where an error has its reference
 * count (0 for the static no-memory error, never UINT32_MAX for a real
 * one). Every public apex_error_* function takes a view where it takes an
 * error: the readers read the task's error (apex__error_view_error: made
 * on the first read, then the task's one object; its strings valid while
 * the view is), ref and unref take and drop a reference on the task. The
 * three functions are exec/task.c's. */
#define APEX__ERROR_VIEW UINT32_MAX
const apex_error_t *apex__error_view_error(const apex_error_t *v);
void apex__error_view_ref(const apex_error_t *v);
void apex__error_view_unref(const apex_error_t *v);

/* Stores e in *err if err is non-NULL, else unrefs it. Returns: e's code.
 * Ownership: e taken. */
int apex__error_put(apex_error_t **err, apex_error_t *e);

/* Shorthand: builds and puts an error without a where. Returns: code. */
int apex__fail(apex_error_t **err, int code, const char *fmt, ...) APEX_PRINTF(3, 4);

#endif
