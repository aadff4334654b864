/* The memory a scheduler test shares with the sched_kit plugins (one
 * process: the test passes its address as the "probe" param). */
#ifndef APEX_TEST_SCHED_PROBE_H
#define APEX_TEST_SCHED_PROBE_H

#include <stdatomic.h>
#include <stdint.h>

#define SK_SLOTS 16
#define SK_MAX_STARTS 4096

typedef struct sk_probe {
  atomic_int cur[SK_SLOTS], max[SK_SLOTS];
  atomic_int started, finished;
  atomic_int hold; /* x with us -1 waits while this is non-zero */
  atomic_llong n_starts;
  int64_t start_ns[SK_MAX_STARTS]; /* CLOCK_MONOTONIC, in start order */
  int start_tag[SK_MAX_STARTS];
} sk_probe_t;

#endif
