/* Retry decisions (apex_retry_policy_t in include/apex/plugin.h): which
 * policy a task follows, which failures are retried and how long to back
 * off. Functions of the task's policy (the action's, or the call's copy in
 * t->opts, immutable after submit) and of the failed attempt's own retry
 * hint (apex_ctx_retry_after, kept in its run state); apex__retry_next's
 * caller holds the task lock. Jitter draws from a per-task, per-attempt
 * hash, so it needs no shared random state and repeats under test.
 *
 * A retry hint (a server's Retry-After) replaces the backoff rather than
 * flooring it: the server said when it will be ready, and a client that
 * waits for its own longer backoff, or adds jitter to the hint, is not
 * what a user of Retry-After expects. It changes only the delay: whether
 * there is a retry at all (the code, non_retryable, max_attempts) is the
 * policy's alone. The deadline check is the caller's (task.c): a retry
 * that would start past the task's overall deadline is not scheduled, and
 * the task fails at once with the attempt's error, hint or no hint. */
#include <math.h>

#include "exec/internal.h"

static double unit_random(uint64_t seed) {
  /* splitmix64 finaliser: a good spread from consecutive seeds. */
  uint64_t z = seed + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) / 9007199254740992.0; /* [0, 1) */
}

const apex_retry_policy_t *apex__retry_policy(const apex_task_t *t) {
  return t->opts && t->opts->retry ? &t->opts->retry->policy : &t->action->default_retry;
}

/* timed_out: the attempt was ended by its start-to-close or heartbeat
 * timeout (Temporal retries those), not a handler's own APEX_E_TIMEOUT. */
static int next(const apex_task_t *t, int code, int timed_out, double *delay_s) {
  const apex_retry_policy_t *p = apex__retry_policy(t);
  uint32_t attempt = t->attempt;
  uint32_t max = p->max_attempts ? p->max_attempts : 1;
  if (attempt >= max) return 0;
  /* Only failures the plugin called transient, and attempt timeouts, are
   * retried; cancellation, the task's own timeouts and permanent errors
   * never are. */
  if (code != APEX_E_TRANSIENT && code != APEX_E_CRASHED && !timed_out) return 0;
  for (size_t i = 0; i < p->n_non_retryable; i++)
    if ((int)p->non_retryable[i] == code) return 0;
  double d;
  if (t->run && t->run->retry_after_s >= 0.0f) {
    d = (double)t->run->retry_after_s; /* as given: no cap, no jitter */
  } else {
    double coeff = p->backoff_coefficient >= 1.0 ? p->backoff_coefficient : 2.0;
    d = p->initial_interval_s * pow(coeff, (double)(attempt - 1));
    if (p->max_interval_s > 0 && d > p->max_interval_s) d = p->max_interval_s;
    if (p->jitter > 0) {
      double r = unit_random(t->id * 1315423911u + attempt);
      d *= 1.0 + p->jitter * (2.0 * r - 1.0);
    }
  }
  if (!(d >= 0) || d > 86400.0 * 365) d = d > 0 ? 86400.0 * 365 : 0;
  *delay_s = d;
  return 1;
}

int apex__retry_next(const apex_task_t *t, int code, double *delay_s) {
  return next(t, code, 0, delay_s);
}

int apex__retry_next_timeout(const apex_task_t *t, double *delay_s) {
  return next(t, APEX_E_TIMEOUT, 1, delay_s);
}
