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

#endif
