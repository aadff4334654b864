/* Internal: the limits of timeouts and retry policies, checked in one place
 * for an action's defaults (when its plugin loads) and a caller's override
 * (at submit), so a default the loader accepts never fails a submit. */
#ifndef APEX_CORE_POLICY_H
#define APEX_CORE_POLICY_H

#include <stddef.h>

#include "apex/plugin.h"

/* 1e9 s (~31 years): now + timeout stays well inside 64-bit nanoseconds. */
#define APEX__MAX_TIMEOUT_S 1e9
#define APEX__MAX_INTERVAL_S 1e9
#define APEX__MAX_BACKOFF 1000.0
#define APEX__MAX_NON_RETRYABLE 16
/* A task counts its attempts in 16 bits (it keeps its queued form small). */
#define APEX__MAX_ATTEMPTS 65535u

/* Returns: 1 if r is within the limits, else 0 with the reason in why,
 * naming the field (e.g. "jitter 2: want [0, 1]"). */
int apex__retry_policy_check(const apex_retry_policy_t *r, char *why, size_t why_len);

/* Returns: 1 if s is a usable timeout in seconds (finite, <= the maximum;
 * any negative means none), else 0 with the reason in why. */
int apex__timeout_check(double s, char *why, size_t why_len);

#endif
