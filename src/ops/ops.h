/* Internal: the hooks through which operation groups and the operation
 * manager (ops/group.c, ops/ops.c) meet the execution engine (exec/). Kept
 * to three: a submit that names a group (manager.c), a task's terminal
 * transition telling its group (task.c), and a GROUP event's node letting
 * its group go (events.c). */
#ifndef APEX_OPS_OPS_H
#define APEX_OPS_OPS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "apex/apex.h"

/* A submit's place in a group: the group and the member index reserved for
 * the task (ops/group.c). */
typedef struct apex__member {
  struct apex_group *group;
  size_t idx;
} apex__member_t;

struct apex__spawn_info; /* ops/children.h */

/* apex_manager_submit, for a child when sp is not NULL (ops/children.c),
 * the task joining g's member slot when g is not NULL (manager.c).
 * Returns and ownership: as apex_manager_submit. */
apex_status_t apex__submit(apex_manager_t *m, const char *plugin, const char *action,
                           json_t *params, const apex_submit_opts_t *opts,
                           const struct apex__spawn_info *sp, const apex__member_t *g,
                           apex_task_t **out, apex_error_t **err);

/* t, a member of a group (t->opts->group), has just become terminal: the
 * group records it in its end order, wakes its waiters and, when the
 * task's callback wants APEX_EVENT_GROUP, queues that event after t's DONE.
 * Under t's task lock (the group's lock is a leaf under it; ev_mu is taken
 * after the group's is dropped). Hands on or drops the membership's group
 * reference. */
void apex__group_member_end(apex_task_t *t, int state);

/* A GROUP event's node is freed: drops the group reference it held. No
 * lock held. */
void apex__group_event_done(struct apex_group *g);

/* The id of t's group, 0: none. Any lock or none (a live member holds its
 * group; the id never changes). */
uint64_t apex__group_of(apex_task_t *t);

/* Now on CLOCK_MONOTONIC_COARSE in ns: a submit's time for the age the
 * operation manager shows, at a clock tick's resolution (1 to 4 ms) and a
 * few ns, where CLOCK_MONOTONIC costs a submit several times that. 0 if
 * the clock cannot be read. */
static inline uint64_t apex__coarse_now_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
