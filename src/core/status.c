/* Status codes: names, sentences and the category tests of the error
 * hierarchy (include/apex/common.h). Pure functions, any thread. */
#include "apex/apex.h"

typedef struct {
  const char *name;
  const char *text;
} status_row_t;

/* Indexed by -code (the codes are small negatives in three runs), so a
 * lookup is one load, not a walk (a DONE's lazy cancel error reads it once
 * per task: W7, W3q); a gap's name is NULL. */
#define CODE_SPAN 64
static const status_row_t rows[CODE_SPAN] = {
    [-APEX_OK] = {"ok", "success"},
    [-APEX_E_INVALID] = {"invalid", "invalid argument"},
    [-APEX_E_NOMEM] = {"no_memory", "out of memory"},
    [-APEX_E_IO] = {"io", "a system call failed"},
    [-APEX_E_ALREADY] = {"already", "already done"},
    [-APEX_E_AGAIN] = {"again", "timed out waiting; try again"},
    [-APEX_E_BUSY] = {"busy", "handlers still running"},
    [-APEX_E_QUEUE_FULL] = {"queue_full", "the task queue is full"},
    [-APEX_E_SHUTTING_DOWN] = {"shutting_down",
        "the manager is shutting down"},
    [-APEX_E_STORE] = {"store", "the task store failed"},
    [-APEX_E_PLUGIN] = {"plugin_error", "plugin error"},
    [-APEX_E_PLUGIN_NOT_FOUND] = {"plugin_not_found", "no such plugin"},
    [-APEX_E_ACTION_NOT_FOUND] = {"action_not_found", "no such action"},
    [-APEX_E_PLUGIN_LOAD] = {"plugin_load", "the plugin could not be loaded"},
    [-APEX_E_ABI_MISMATCH] = {"abi_mismatch",
        "the plugin was built for another ABI"},
    [-APEX_E_INVALID_PARAMS] = {"invalid_params", "invalid params"},
    [-APEX_E_EXECUTION] = {"execution", "the action failed"},
    [-APEX_E_TIMEOUT] = {"timeout", "the action timed out"},
    [-APEX_E_CANCELLED] = {"cancelled", "the action was cancelled"},
    [-APEX_E_TRANSIENT] = {"transient", "the action failed transiently"},
    [-APEX_E_CRASHED] = {"crashed", "the plugin crashed"},
    [-APEX_E_INVALID_RESULT] = {"invalid_result",
        "the action's result is not a valid value"},
    [-APEX_E_INTERRUPTED] = {"interrupted",
        "the action was interrupted by a crash and not run again"},
};

static const status_row_t *find(int code) {
  if (code > 0 || code <= -CODE_SPAN) return NULL;
  const status_row_t *r = &rows[-code];
  return r->name ? r : NULL;
}

const char *apex_strerror(int code) {
  const status_row_t *r = find(code);
  return r ? r->text : "unknown error";
}

const char *apex_status_name(int code) {
  const status_row_t *r = find(code);
  return r ? r->name : "unknown";
}

int apex_status_is_execution(int code) {
  return code == APEX_E_EXECUTION || code == APEX_E_TIMEOUT || code == APEX_E_CANCELLED ||
         code == APEX_E_TRANSIENT || code == APEX_E_CRASHED || code == APEX_E_INVALID_RESULT ||
         code == APEX_E_INTERRUPTED;
}

int apex_status_is_load_error(int code) {
  return code == APEX_E_PLUGIN_LOAD || code == APEX_E_ABI_MISMATCH;
}

int apex_status_is_plugin_error(int code) {
  return code == APEX_E_PLUGIN || code == APEX_E_PLUGIN_NOT_FOUND ||
         code == APEX_E_ACTION_NOT_FOUND || code == APEX_E_INVALID_PARAMS ||
         apex_status_is_load_error(code) || apex_status_is_execution(code);
}

const char *apex_version(void) { return APEX_VERSION_STRING; }
unsigned apex_version_number(void) { return APEX_VERSION_NUMBER; }
