/* Placeholder for the scheduler's public calls (issue 10): every call
 * refuses, naming what is missing, until src/sched/ implements it. */
#include <stdio.h>

#include "apex/apex.h"
#include "core/error.h"

static apex_status_t not_yet(apex_error_t **err, const char *what) {
  return apex__error_put(
      err, apex__error_new(APEX_E_INVALID, NULL, NULL, "%s: the scheduler is not built yet", what));
}

apex_status_t apex_manager_set_concurrency(apex_manager_t *m, apex_scope_t scope,
                                           const char *name, uint32_t limit, apex_error_t **err) {
  (void)m, (void)scope, (void)name, (void)limit;
  return not_yet(err, "apex_manager_set_concurrency");
}
apex_status_t apex_manager_set_rate(apex_manager_t *m, apex_scope_t scope, const char *name,
                                    double per_second, uint32_t burst, apex_error_t **err) {
  (void)m, (void)scope, (void)name, (void)per_second, (void)burst;
  return not_yet(err, "apex_manager_set_rate");
}
apex_status_t apex_manager_set_max_queued(apex_manager_t *m, apex_scope_t scope,
                                          const char *name, size_t max, apex_error_t **err) {
  (void)m, (void)scope, (void)name, (void)max;
  return not_yet(err, "apex_manager_set_max_queued");
}
apex_status_t apex_manager_set_weight(apex_manager_t *m, const char *fairness_key,
                                      uint32_t weight, apex_error_t **err) {
  (void)m, (void)fairness_key, (void)weight;
  return not_yet(err, "apex_manager_set_weight");
}
apex_status_t apex_manager_scope_stats(apex_manager_t *m, apex_scope_t scope, const char *name,
                                       apex_scope_stats_t *out) {
  (void)m, (void)scope, (void)name, (void)out;
  return APEX_E_INVALID;
}
