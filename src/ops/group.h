/* Internal: the operation group's struct (ops/group.c), shared with the
 * operation manager (ops/ops.c), which filters and labels operations by
 * group. */
#ifndef APEX_OPS_GROUP_H
#define APEX_OPS_GROUP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "apex/apex.h"

/* One member slot, reserved before its submit (g->mu). */
typedef struct apex__gmember {
  apex_task_t *task;     /* the group's reference; NULL until the submit
                            returned or the task ended, whichever first */
  uint8_t ended;         /* terminal: its index is in order[] */
  uint8_t voided;        /* its submit failed: no member */
} apex__gmember_t;

struct apex_group {
  apex_manager_t *m; /* holds a manager reference (memory) */
  uint64_t id;
  atomic_uint refs;  /* see group.c, "References" */
  struct apex_group *live_next; /* the live-groups set (its own mutex) */
  pthread_mutex_t mu; /* a leaf, under a task lock at most */
  pthread_cond_t cv;  /* CLOCK_MONOTONIC */
  /* Under mu: */
  apex__gmember_t *members; /* submit order; n used of cap */
  size_t *order;            /* member indexes in the order they ended */
  size_t n, cap, n_ended, n_void;
  size_t taken;             /* order[] entries apex_group_wait_any returned */
  uint64_t changes;         /* GROUP events' seq */
  unsigned waiters;
  int released, cancelled;
};

/* Returns g with a call reference if g is a live (unreleased) group, else
 * NULL; the caller drops it with apex__group_unref. Any thread, no lock
 * held. */
apex_group_t *apex__group_get(apex_group_t *g);
void apex__group_unref(apex_group_t *g);

/* t's last reported percentage (task lock; -1: none). ops/ops.c. */
double apex__task_last_pct(apex_task_t *t);

#endif
