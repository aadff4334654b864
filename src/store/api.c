/* The public durable-store calls (include/apex/apex.h, "durable store"):
 * argument checks and the translation between the public filter and JSON
 * and the backend interface of store.h. This first version refuses every
 * call: the backends land in the commits after the API. */
#include <stdlib.h>

#include "apex/apex.h"
#include "core/error.h"
#include "store/store.h"

apex_status_t apex_store_open(const char *uri, apex_store_t **out, apex_error_t **err) {
  if (out) *out = NULL;
  if (!uri || !out) return apex__fail(err, APEX_E_INVALID, "apex_store_open: NULL argument");
  return apex__fail(err, APEX_E_STORE, "apex_store_open: not supported yet");
}

void apex_store_close(apex_store_t *s) { (void)s; }

apex_status_t apex_store_get(apex_store_t *s, uint64_t id, json_t **out, apex_error_t **err) {
  if (out) *out = NULL;
  (void)s;
  (void)id;
  return apex__fail(err, APEX_E_STORE, "apex_store_get: not supported yet");
}

apex_status_t apex_store_list(apex_store_t *s, const apex_store_filter_t *filter, json_t **out,
                              apex_error_t **err) {
  if (out) *out = NULL;
  (void)s;
  (void)filter;
  return apex__fail(err, APEX_E_STORE, "apex_store_list: not supported yet");
}

apex_status_t apex_store_cancel(apex_store_t *s, uint64_t id, const char *reason,
                                apex_error_t **err) {
  (void)s;
  (void)id;
  (void)reason;
  return apex__fail(err, APEX_E_STORE, "apex_store_cancel: not supported yet");
}

apex_status_t apex_store_purge(apex_store_t *s, double older_than_s, size_t *n,
                               apex_error_t **err) {
  if (n) *n = 0;
  (void)s;
  (void)older_than_s;
  return apex__fail(err, APEX_E_STORE, "apex_store_purge: not supported yet");
}

apex_store_t *apex_manager_store(apex_manager_t *m) {
  (void)m;
  return NULL;
}

apex_status_t apex_manager_recover(apex_manager_t *m, size_t *n_recovered, apex_error_t **err) {
  if (n_recovered) *n_recovered = 0;
  (void)m;
  return apex__fail(err, APEX_E_INVALID, "apex_manager_recover: the manager has no store");
}

apex_status_t apex_manager_task_info(apex_manager_t *m, uint64_t id, json_t **out,
                                     apex_error_t **err) {
  if (out) *out = NULL;
  (void)m;
  (void)id;
  return apex__fail(err, APEX_E_STORE, "apex_manager_task_info: not supported yet");
}
