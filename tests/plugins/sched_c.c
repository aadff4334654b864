/* sched_c: the scheduler test kit (sched_kit.h) as plugin "sched_c". */
#define _GNU_SOURCE
#define SK_NAME "sched_c"
#include "sched_kit.h"
