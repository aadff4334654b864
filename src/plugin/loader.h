/* Internal: loading one plugin file and checking its descriptor
 * (src/plugin/loader.c), and validating params against an action's spec
 * (src/plugin/params.c). Neither keeps global state; both are safe from any
 * thread on distinct arguments. */
#ifndef APEX_PLUGIN_LOADER_H
#define APEX_PLUGIN_LOADER_H

#include <stdatomic.h>
#include <stddef.h>

#include "apex/apex.h"
#include "core/log.h"

/* A loaded plugin. desc is a normalized copy in this build's layout: every
 * field of its apex_plugin_desc_t present (zero where the plugin's older
 * struct ended), struct_size and action_size this build's sizes;
 * desc.actions points at `actions`, a normalized copy of the plugin's array
 * (each element likewise). Strings still point into the plugin's image
 * (valid until dlclose). */
typedef struct apex__plugin {
  apex_plugin_desc_t desc;
  apex_action_desc_t *actions;
  uint32_t desc_size;   /* the plugin's struct_size, as it built it */
  uint32_t action_stride; /* the stride its actions array was read with */
  /* The same at 0.1.0's layout: actions_v1 holds n_actions elements of
   * APEX__ACTION_V1_SIZE bytes (what ABI-1 hosts index). */
  apex_plugin_desc_t desc_v1;
  char *actions_v1;
  void *dl;     /* dlopen handle */
  char *file;   /* the path it was loaded from (owned) */
  void *state;  /* what init stored */
  int inited;   /* loaded (init, if any, succeeded): shutdown is owed */
  apex_manager_t *m; /* the manager that loaded it (set by the manager) */
  /* Copies of its name and its actions' names (action_names[i] is
   * actions[i].name's), which outlive dlclose: a task's error may be made
   * on its first read (exec/internal.h, APEX__LAZY_*), after its manager
   * unloaded the plugin. One block, owned. */
  const char *name_copy;
  const char **action_names;
  /* Its scheduler block (src/sched/: scopes, default class), made on first
   * use; owned by the manager's scheduler. */
  _Atomic(struct apex__pblock *) sched;
  /* Its metrics series (src/obs/metrics.h), made on first use; freed by
   * the manager's apex__mx_fini. */
  _Atomic(struct apex__mx_plugin *) mx;
  apex__lograte_t lograte; /* its log records' rate (src/obs/log.c) */
} apex__plugin_t;

/* Opens file, finds apex_plugin_entry, calls it with api, validates the
 * descriptor (ABI version, struct size, names [a-z0-9_]+ of at most 64 bytes,
 * unique action names, handler set, kind known, param specs well-formed
 * with defaults that parse and satisfy their own type and bounds, retry
 * policy sane), then runs init.
 * Returns: APEX_OK and *out; APEX_E_PLUGIN_LOAD or APEX_E_ABI_MISMATCH with
 * *err naming the file and the reason (the field, for a bad descriptor);
 * APEX_E_NOMEM. On failure nothing stays open or allocated.
 * Ownership: api borrowed and must outlive the plugin; *out closed by
 * apex__plugin_unload and freed by apex__plugin_free. */
int apex__plugin_load(const char *file, const apex_host_api_t *api, apex__plugin_t **out,
                      apex_error_t **err);

/* Runs the shutdown hook (if the load succeeded, whether or not the plugin
 * has an init hook) and dlcloses; the struct stays
 * (its tasks still reach their manager through it) until apex__plugin_free.
 * NULL: no-op. */
void apex__plugin_unload(apex__plugin_t *p);
/* Frees what apex__plugin_load allocated (dlclosing it if it is still open,
 * without its shutdown hook). NULL: no-op. */
void apex__plugin_free(apex__plugin_t *p);

/* Returns: the action named name, or NULL. */
const apex_action_desc_t *apex__plugin_action(const apex__plugin_t *p, const char *name);

/* Returns: 1 if s is a valid plugin/action/param name: [a-z0-9_]+, at most
 * 64 bytes. */
int apex__name_valid(const char *s);

/* Returns: the name of a param type as messages and `apex describe` show it
 * ("string", "int", "number", "bool", "object", "array"), or NULL for a
 * value that is no apex_param_type_t. Static. */
const char *apex__param_type_name(apex_param_type_t t);

/* Returns: 1 if v has the JSON type a param of type t accepts (NUMBER: an
 * integer or a real), else 0; the bounds are apex__params_validate's. */
int apex__param_type_matches(apex_param_type_t t, const json_t *v);

/* Validates params (an object, or NULL for {}) against the action's spec.
 * Returns: APEX_OK and *out, a new object holding every given param and the
 * default of every absent one that has a default; APEX_E_INVALID_PARAMS
 * with a reason naming the param in why (e.g. "param 'steps': want int, got
 * string", "param 'path' is required", "unknown param 'stepz'", "param
 * 'steps': 5000000 is above the maximum 1000000", "params: want object,
 * got array"); APEX_E_NOMEM. Ownership: params borrowed; *out new ref. */
int apex__params_validate(const apex_action_desc_t *a, json_t *params, json_t **out, char *why,
                          size_t why_len);

#endif
