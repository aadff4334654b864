/* Internal: a task's sub-task tree as it stands between deliveries
 * (src/core/progress_tree.c). The tree is Apex's own JSON (never a value a
 * plugin still holds), indexed in pre-order so one node's percentage,
 * status or message changes in O(1); a full tree a plugin reports is merged
 * into it, copying only what differs; a snapshot is a deep copy made at
 * delivery time. Not thread-safe: the caller holds the task's lock. */
#ifndef APEX_CORE_PROGRESS_TREE_H
#define APEX_CORE_PROGRESS_TREE_H

#include <stddef.h>

#include "apex/apex.h"

typedef struct apex__ptree apex__ptree_t;

/* Returns: a new, empty tree, or NULL on no memory. */
apex__ptree_t *apex__ptree_new(void);

/* Frees t and its JSON. NULL: no-op. */
void apex__ptree_free(apex__ptree_t *t);

/* Returns: the number of sub-tasks in t, at every depth (0 for NULL). */
size_t apex__ptree_size(const apex__ptree_t *t);

/* Makes t equal to sub_tasks, a tree apex_progress_validate accepted (NULL:
 * the empty tree), by merging: nodes and fields that are equal stay as they
 * are, changed fields are replaced by copies, added nodes are copied in,
 * removed ones dropped. So a plugin reporting its whole tree per item costs
 * a comparison walk, not a deep copy. Returns: APEX_OK; APEX_E_NOMEM, with
 * t then holding a valid tree partly merged (the next merge completes it),
 * or, if its index could not grow, the empty tree.
 * Ownership: sub_tasks borrowed (read only: it may be the plugin's). */
apex_status_t apex__ptree_merge(apex__ptree_t *t, const json_t *sub_tasks);

/* Sets sub-task i (pre-order: the first top-level node is 0, its first
 * child 1, ...) to percentage pct (finite, in [0, 100]), its status to
 * status (a known status; NULL: unchanged) and its message to msg[0..len)
 * (valid UTF-8; NULL: unchanged), each only if it differs. O(1) but for
 * copying the message. Returns: APEX_OK; APEX_E_INVALID if i >=
 * apex__ptree_size(t) (nothing changed); APEX_E_NOMEM (the fields set
 * before the failing one stay set). */
apex_status_t apex__ptree_set(apex__ptree_t *t, size_t i, double pct, const char *status,
                              const char *msg, size_t len);

/* Returns: a deep copy of t's tree (a new array; [] for NULL or an empty
 * tree), or NULL on no memory. */
json_t *apex__ptree_json(const apex__ptree_t *t);

#endif
