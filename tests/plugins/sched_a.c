/* sched_a: the scheduler test kit (sched_kit.h) as plugin "sched_a". */
#define _GNU_SOURCE
#define SK_NAME "sched_a"
#include "sched_kit.h"
