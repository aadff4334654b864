/* sched_b: the scheduler test kit (sched_kit.h) as plugin "sched_b". */
#define _GNU_SOURCE
#define SK_NAME "sched_b"
#include "sched_kit.h"
