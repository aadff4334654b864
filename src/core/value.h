/* Internal: JSON values (src/core/value.c): checking a value a plugin
 * hands over against the limits of include/apex/plugin.h, freeing one Apex
 * refused, and the words and number format every reason uses. Pure
 * functions on the caller's values, any thread (jansson values are not
 * thread-safe: the caller holds the value alone while it is checked or
 * freed). */
#ifndef APEX_CORE_VALUE_H
#define APEX_CORE_VALUE_H

#include <stdarg.h>
#include <stddef.h>

#include "apex/apex.h"

/* What the values of one hand-over (a result; a progress update's details,
 * its own and its sub-tasks' together) may still hold. */
typedef struct apex__value_budget {
  size_t nodes; /* JSON values of any kind, containers and members included */
  size_t bytes; /* bytes of strings and object keys */
} apex__value_budget_t;

#define APEX__VALUE_BUDGET_INIT {APEX_VALUE_MAX_NODES, APEX_VALUE_MAX_BYTES}

/* Checks v against the rules for values a plugin hands over: at most
 * APEX_VALUE_MAX_DEPTH arrays and objects nested in one another, no cycle
 * (a container inside itself), every string and key valid UTF-8 without
 * NUL (core/utf8.h), and no more values or string bytes than b has left,
 * which this takes from b. Iterative, with a stack of APEX_VALUE_MAX_DEPTH
 * frames: no allocation, no recursion, and it stops at the first fault, so
 * a value nested a million deep costs as much as one nested 65 deep.
 * where: the name of v in reasons ("result", "sub_tasks[0].details").
 * Returns: APEX_OK; APEX_E_INVALID with "<where><path>: <reason>" in why,
 * e.g. "result.items[3]: not valid UTF-8 at byte 7" (why NULL or why_len 0:
 * no reason). Ownership: all borrowed. */
apex_status_t apex__value_check(const json_t *v, const char *where, apex__value_budget_t *b,
                                char *why, size_t why_len);

/* Drops the reference to v that Apex owns, freeing what only that reference
 * kept alive, with no recursion, so a value nested a million deep or one
 * that contains itself is freed as safely as a flat one (json_decref
 * recurses once per level and leaks a cycle). Parts the plugin still holds
 * a reference to, from outside v, stay as they are. For values that failed
 * apex__value_check; one that passed is safe to json_decref. On no memory
 * (it needs about 32 bytes per array and object in v) v is leaked, never
 * freed recursively. NULL: no-op. Ownership: v taken. */
void apex__value_free(json_t *v);

/* Returns: the word reasons use for v's kind: "object", "array", "string",
 * "integer", "real", "boolean", "null". Static. */
const char *apex__json_kind(const json_t *v);

/* Writes the shortest of %.15g, %.16g, %.17g that reads back as d: 1000000
 * prints as "1000000", 0.1 as "0.1", 100.0000001 as itself, never as the
 * "100" it may have been rejected for not being. cap >= 32 holds any d. */
void apex__fmt_num(char *buf, size_t cap, double d);

/* Writes "<place>: <reason>" into why (why_len bytes, cut to fit), the
 * reason from fmt and ap: the one shape of every validation reason. */
void apex__reasonv(char *why, size_t why_len, const char *place, const char *fmt, va_list ap);

/* Copies s[0..len) into out (cap >= 4 bytes) for echoing in a reason: at
 * most cap - 4 bytes of it, then "..." if it was longer, with every byte
 * that is not printable ASCII replaced by '?', so text from a plugin cannot
 * put control characters into the host's logs through a reason. */
void apex__echo(char *out, size_t cap, const char *s, size_t len);

#endif
