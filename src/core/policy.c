/* Limits of timeouts and retry policies (see policy.h). Pure functions. */
#include "core/policy.h"

#include <math.h>
#include <stdio.h>

static int finite_in(double v, double lo, double hi) { return isfinite(v) && v >= lo && v <= hi; }

int apex__retry_policy_check(const apex_retry_policy_t *r, char *why, size_t n) {
  if (r->max_attempts > APEX__MAX_ATTEMPTS)
    snprintf(why, n, "max_attempts %u: at most %u", r->max_attempts, APEX__MAX_ATTEMPTS);
  else if (!(r->backoff_coefficient == 0 || (finite_in(r->backoff_coefficient, 1, APEX__MAX_BACKOFF))))
    snprintf(why, n, "backoff_coefficient %g: want 0 (default 2) or [1, %g]",
             r->backoff_coefficient, APEX__MAX_BACKOFF);
  else if (!finite_in(r->initial_interval_s, 0, APEX__MAX_INTERVAL_S))
    snprintf(why, n, "initial_interval_s %g: want [0, %g]", r->initial_interval_s,
             APEX__MAX_INTERVAL_S);
  else if (!finite_in(r->max_interval_s, 0, APEX__MAX_INTERVAL_S))
    snprintf(why, n, "max_interval_s %g: want [0, %g]", r->max_interval_s, APEX__MAX_INTERVAL_S);
  else if (!finite_in(r->jitter, 0, 1))
    snprintf(why, n, "jitter %g: want [0, 1]", r->jitter);
  else if (r->n_non_retryable > APEX__MAX_NON_RETRYABLE)
    snprintf(why, n, "n_non_retryable %zu: at most %d", r->n_non_retryable,
             APEX__MAX_NON_RETRYABLE);
  else if (r->n_non_retryable > 0 && !r->non_retryable)
    snprintf(why, n, "non_retryable is NULL but n_non_retryable is %zu", r->n_non_retryable);
  else
    return 1;
  return 0;
}

int apex__timeout_check(double s, char *why, size_t n) {
  if (isnan(s) || s > APEX__MAX_TIMEOUT_S) {
    snprintf(why, n, "timeout %g s: want a finite number of seconds, at most %g", s,
             APEX__MAX_TIMEOUT_S);
    return 0;
  }
  return 1;
}
