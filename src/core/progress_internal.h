/* Internal: building delivered progress snapshots (src/core/progress.c). */
#ifndef APEX_CORE_PROGRESS_INTERNAL_H
#define APEX_CORE_PROGRESS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "apex/apex.h"

/* Returns: a new snapshot (refcount 1) or NULL on no memory. Inputs must be
 * valid already (the caller validated them). message/status NULL mean ""
 * and "running". Ownership: strings copied; details and sub_tasks taken
 * (NULL: empty object / empty array). Any thread. */
apex_progress_t *apex__progress_new(uint64_t seq, double percentage, const char *message,
                                    const char *status, json_t *details, json_t *sub_tasks);

/* Checks a node update (apex_ctx_progress_node) by the rules of a full
 * update: pct finite in [0, 100], status NULL or known, msg NULL or valid
 * UTF-8 of at most APEX_PROGRESS_MESSAGE_MAX bytes. Reasons name the place
 * "node[<index>].<field>", or "<field>" for APEX_PROGRESS_ROOT. Whether
 * index names a node is the task's to say (its tree). Returns: as
 * apex_progress_validate. Ownership: borrowed. Any thread. */
apex_status_t apex__progress_node_validate(size_t index, double pct, const char *status,
                                          const char *msg, char *why, size_t why_len);

#endif
