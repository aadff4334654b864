/* The public durable-store calls (include/apex/apex.h, "durable store"):
 * argument checks, the public filter resolved for the backend interface
 * (store.h), and rows turned into the JSON the header describes. The
 * manager's calls (apex_manager_recover, apex_manager_task_info) are in
 * src/store/durable.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "apex/apex.h"
#include "core/error.h"
#include "core/utf8.h"
#include "store/store.h"

#define LIST_MAX 10000
#define LIST_DEFAULT 100

apex_status_t apex_store_open(const char *uri, apex_store_t **out, apex_error_t **err) {
  if (out) *out = NULL;
  if (!uri || !out) return apex__fail(err, APEX_E_INVALID, "apex_store_open: NULL argument");
  return apex__store_open(uri, out, err);
}

void apex_store_close(apex_store_t *s) {
  if (s) s->ops->close(s);
}

/* Sets key to the JSON value of text (NULL: not set; text that does not
 * parse is kept as a string: a row is never hidden for a bad field). */
static void set_json(json_t *o, const char *key, const char *text) {
  if (!text) return;
  json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
  json_object_set_new(o, key, v ? v : json_string(text));
}

static void set_time(json_t *o, const char *key, double t) {
  if (t != 0) json_object_set_new(o, key, json_real(t));
}

json_t *apex__srec_to_json(const apex__srec_t *r, int full) {
  json_t *o = json_object();
  if (!o) return NULL;
  json_object_set_new(o, "id", json_integer((json_int_t)r->id));
  json_object_set_new(o, "plugin", json_string(r->plugin ? r->plugin : ""));
  json_object_set_new(o, "action", json_string(r->action ? r->action : ""));
  json_object_set_new(o, "state", json_string(apex_task_state_name((apex_task_state_t)r->state)));
  json_object_set_new(o, "attempts", json_integer(r->attempts));
  json_object_set_new(o, "created_at", json_real(r->created_at));
  json_object_set_new(o, "updated_at", json_real(r->updated_at));
  set_json(o, "progress", r->progress);
  if (full) {
    if (r->plugin_version) json_object_set_new(o, "plugin_version", json_string(r->plugin_version));
    set_json(o, "params", r->params ? r->params : "{}");
    set_time(o, "run_at", r->run_at);
    set_time(o, "deadline", r->deadline);
    set_time(o, "ended_at", r->ended_at);
    if (r->idem_key) json_object_set_new(o, "idempotency_key", json_string(r->idem_key));
    if (r->owner) {
      json_object_set_new(o, "owner", json_string(r->owner));
      json_object_set_new(o, "lease_until", json_real(r->lease_until));
    }
    if (r->cancel_requested) {
      json_object_set_new(o, "cancel_requested", json_true());
      if (r->cancel_reason) json_object_set_new(o, "cancel_reason", json_string(r->cancel_reason));
    }
    set_json(o, "checkpoint", r->checkpoint);
    set_json(o, "partial_result", r->partial);
    set_json(o, "result", r->result);
    set_json(o, "error", r->error);
    set_json(o, "events", r->events);
  } else if (r->error) {
    json_t *e = json_loads(r->error, 0, NULL);
    if (json_is_object(e)) {
      json_t *s = json_object();
      json_t *c = json_object_get(e, "code"), *m = json_object_get(e, "message");
      if (s && c) json_object_set(s, "code", c);
      if (s && m) json_object_set(s, "message", m);
      json_object_set_new(o, "error", s ? s : json_null());
    }
    json_decref(e);
  }
  return o;
}

apex_status_t apex_store_get(apex_store_t *s, uint64_t id, json_t **out, apex_error_t **err) {
  if (out) *out = NULL;
  if (!s || !out || id == 0)
    return apex__fail(err, APEX_E_INVALID, "apex_store_get: %s",
                      !s ? "NULL store" : !out ? "NULL out" : "id 0");
  apex__srec_t r;
  int rc = s->ops->get(s, id, &r, err);
  if (rc != APEX_OK) return rc;
  *out = apex__srec_to_json(&r, 1);
  apex__srec_clear(&r);
  return *out ? APEX_OK : apex__fail(err, APEX_E_NOMEM, "out of memory");
}

apex_status_t apex_store_list(apex_store_t *s, const apex_store_filter_t *filter, json_t **out,
                              apex_error_t **err) {
  if (out) *out = NULL;
  if (!s || !out) return apex__fail(err, APEX_E_INVALID, "apex_store_list: NULL argument");
  apex__sfilter_t f = {.limit = LIST_DEFAULT};
  if (filter) {
    if (filter->struct_size < offsetof(apex_store_filter_t, limit) + sizeof filter->limit ||
        filter->struct_size > 4096)
      return apex__fail(err, APEX_E_INVALID,
                        "store filter: struct_size %u (use APEX_STORE_FILTER_INIT)",
                        (unsigned)filter->struct_size);
    unsigned all = 0;
    for (int st = APEX_TASK_QUEUED; st <= APEX_TASK_SCHEDULED; st++) all |= APEX_OPS_STATE(st);
    if (filter->states & ~all)
      return apex__fail(err, APEX_E_INVALID, "store filter: states 0x%x: unknown state bits",
                        filter->states);
    if (!(filter->min_age_s >= 0 && filter->min_age_s <= 1e12) ||
        !(filter->max_age_s >= 0 && filter->max_age_s <= 1e12))
      return apex__fail(err, APEX_E_INVALID,
                        "store filter: min_age_s/max_age_s: want finite seconds >= 0");
    if (filter->limit > LIST_MAX)
      return apex__fail(err, APEX_E_INVALID, "store filter: limit %zu: at most %d",
                        filter->limit, LIST_MAX);
    double now = apex__store_now();
    f.states = filter->states;
    f.plugin = filter->plugin;
    f.action = filter->action;
    if (filter->min_age_s > 0) f.created_max = now - filter->min_age_s;
    if (filter->max_age_s > 0) f.created_min = now - filter->max_age_s;
    f.after_id = filter->after_id;
    if (filter->limit) f.limit = filter->limit;
  }
  apex__srec_t *rows = NULL;
  size_t n = 0;
  int rc = s->ops->list(s, &f, &rows, &n, err);
  if (rc != APEX_OK) return rc;
  json_t *page = json_object(), *tasks = json_array();
  int ok = page && tasks;
  for (size_t i = 0; ok && i < n; i++) {
    json_t *o = apex__srec_to_json(&rows[i], 0);
    ok = o && json_array_append_new(tasks, o) == 0;
  }
  if (ok) {
    json_object_set_new(page, "tasks", tasks);
    tasks = NULL;
    json_object_set_new(page, "next", n == f.limit && n > 0
                                          ? json_integer((json_int_t)rows[n - 1].id)
                                          : json_null());
  }
  apex__srec_free_array(rows, n);
  json_decref(tasks);
  if (!ok) {
    json_decref(page);
    return apex__fail(err, APEX_E_NOMEM, "out of memory");
  }
  *out = page;
  return APEX_OK;
}

static int reserved_reason(const char *r) {
  return r && (strcmp(r, "timeout") == 0 || strcmp(r, "shutdown") == 0 || strcmp(r, "parent") == 0);
}

apex_status_t apex_store_cancel(apex_store_t *s, uint64_t id, const char *reason,
                                apex_error_t **err) {
  if (!s || id == 0)
    return apex__fail(err, APEX_E_INVALID, "apex_store_cancel: %s", !s ? "NULL store" : "id 0");
  if (reserved_reason(reason))
    return apex__fail(err, APEX_E_INVALID, "apex_store_cancel: reason '%s' is reserved", reason);
  /* The reason is stored as text and given back in JSON (cancel_reason,
   * the error's message, the event's note): bytes that are not UTF-8
   * would be stored and then silently missing from apex_store_get. */
  if (reason && !apex__utf8_valid(reason, strlen(reason)))
    return apex__fail(err, APEX_E_INVALID, "apex_store_cancel: reason: not valid UTF-8");
  int ended = 0;
  int rc = s->ops->request_cancel(s, id, reason ? reason : "user", apex__store_now(), &ended, err);
  if (rc == APEX_E_ALREADY)
    apex__fail(err, rc, "task %llu has ended or a cancel was requested already",
               (unsigned long long)id);
  return rc;
}

apex_status_t apex_store_purge(apex_store_t *s, double older_than_s, size_t *n,
                               apex_error_t **err) {
  if (n) *n = 0;
  if (!s) return apex__fail(err, APEX_E_INVALID, "apex_store_purge: NULL store");
  if (!(older_than_s >= 0 && older_than_s <= 1e12))
    return apex__fail(err, APEX_E_INVALID, "apex_store_purge: older_than_s %g: want seconds >= 0",
                      older_than_s);
  size_t k = 0;
  int rc = s->ops->purge(s, apex__store_now() - older_than_s, &k, err);
  if (n) *n = k;
  return rc;
}

