/* Every field and constant of the first ABI-1 headers (0.1.0), as X-macro
 * lists. layout_v1.c expands them against the frozen headers in tests/abi/v1
 * and test_abi_layout.c against today's, and the test compares the two: a
 * field moved, resized or removed, or a constant renumbered, breaks every
 * program built against 0.1.0 (docs/abi.md). Appended fields are not listed:
 * they did not exist then. */
#ifndef APEX_TEST_ABI_FIELDS_H
#define APEX_TEST_ABI_FIELDS_H

/* F(type, field) for each struct field; S(type) for each struct whose size is
 * frozen too (no struct_size: embedded, in arrays, or passed by pointer). */
#define ABI_V1_FIELDS(F)                                                                      \
  F(apex_param_spec_t, name) F(apex_param_spec_t, type) F(apex_param_spec_t, required)        \
  F(apex_param_spec_t, default_json) F(apex_param_spec_t, has_min)                            \
  F(apex_param_spec_t, has_max) F(apex_param_spec_t, min) F(apex_param_spec_t, max)           \
  F(apex_param_spec_t, description)                                                           \
  F(apex_retry_policy_t, max_attempts) F(apex_retry_policy_t, initial_interval_s)             \
  F(apex_retry_policy_t, backoff_coefficient) F(apex_retry_policy_t, max_interval_s)          \
  F(apex_retry_policy_t, jitter) F(apex_retry_policy_t, non_retryable)                        \
  F(apex_retry_policy_t, n_non_retryable)                                                     \
  F(apex_action_desc_t, name) F(apex_action_desc_t, description)                              \
  F(apex_action_desc_t, handler) F(apex_action_desc_t, kind) F(apex_action_desc_t, params)    \
  F(apex_action_desc_t, n_params) F(apex_action_desc_t, default_timeout_s)                    \
  F(apex_action_desc_t, default_retry) F(apex_action_desc_t, flags)                           \
  F(apex_plugin_desc_t, abi_version) F(apex_plugin_desc_t, struct_size)                       \
  F(apex_plugin_desc_t, name) F(apex_plugin_desc_t, version) F(apex_plugin_desc_t, description) \
  F(apex_plugin_desc_t, init) F(apex_plugin_desc_t, shutdown) F(apex_plugin_desc_t, actions)  \
  F(apex_plugin_desc_t, n_actions)                                                            \
  F(apex_progress_update_t, percentage) F(apex_progress_update_t, message)                    \
  F(apex_progress_update_t, status) F(apex_progress_update_t, details)                        \
  F(apex_progress_update_t, sub_tasks)                                                        \
  F(apex_host_api_t, abi_version) F(apex_host_api_t, struct_size) F(apex_host_api_t, params)  \
  F(apex_host_api_t, task_id) F(apex_host_api_t, attempt) F(apex_host_api_t, plugin_state)    \
  F(apex_host_api_t, is_cancelled) F(apex_host_api_t, cancel_reason)                          \
  F(apex_host_api_t, cancel_fd) F(apex_host_api_t, sleep_ms) F(apex_host_api_t, wait_fd)      \
  F(apex_host_api_t, progress) F(apex_host_api_t, progress_update)                            \
  F(apex_host_api_t, set_result) F(apex_host_api_t, failv) F(apex_host_api_t, complete)       \
  F(apex_host_api_t, logv)                                                                    \
  F(apex_event_t, type) F(apex_event_t, task) F(apex_event_t, task_id) F(apex_event_t, seq)   \
  F(apex_event_t, attempt) F(apex_event_t, state) F(apex_event_t, progress)                   \
  F(apex_event_t, error) F(apex_event_t, result) F(apex_event_t, retry_delay_s)               \
  F(apex_manager_config_t, struct_size) F(apex_manager_config_t, workers)                     \
  F(apex_manager_config_t, max_stuck_workers) F(apex_manager_config_t, progress_rate_hz)      \
  F(apex_manager_config_t, max_queued) F(apex_manager_config_t, on_event)                     \
  F(apex_manager_config_t, event_user) F(apex_manager_config_t, event_mask)                   \
  F(apex_manager_config_t, delivery) F(apex_manager_config_t, log)                            \
  F(apex_manager_config_t, log_user) F(apex_manager_config_t, log_level)                      \
  F(apex_submit_opts_t, struct_size) F(apex_submit_opts_t, timeout_s)                         \
  F(apex_submit_opts_t, retry) F(apex_submit_opts_t, parent) F(apex_submit_opts_t, on_event)  \
  F(apex_submit_opts_t, event_user)                                                           \
  F(apex_manager_stats_t, submitted) F(apex_manager_stats_t, succeeded)                       \
  F(apex_manager_stats_t, failed) F(apex_manager_stats_t, cancelled)                          \
  F(apex_manager_stats_t, timed_out) F(apex_manager_stats_t, attempts)                        \
  F(apex_manager_stats_t, retries) F(apex_manager_stats_t, queued)                            \
  F(apex_manager_stats_t, running) F(apex_manager_stats_t, workers)                           \
  F(apex_manager_stats_t, stuck_workers) F(apex_manager_stats_t, progress_reported)           \
  F(apex_manager_stats_t, progress_delivered) F(apex_manager_stats_t, progress_rejected)      \
  F(apex_manager_stats_t, late_reports)

#define ABI_V1_FROZEN_STRUCTS(S) \
  S(apex_param_spec_t) S(apex_retry_policy_t) S(apex_progress_update_t) S(apex_manager_stats_t)

/* Every constant a 0.1.0 program may have compiled in. */
#define ABI_V1_CONSTANTS(C)                                                                   \
  C(APEX_OK) C(APEX_E_INVALID) C(APEX_E_NOMEM) C(APEX_E_IO) C(APEX_E_ALREADY) C(APEX_E_AGAIN) \
  C(APEX_E_BUSY) C(APEX_E_QUEUE_FULL) C(APEX_E_SHUTTING_DOWN) C(APEX_E_STORE)                 \
  C(APEX_E_PLUGIN) C(APEX_E_PLUGIN_NOT_FOUND) C(APEX_E_ACTION_NOT_FOUND)                      \
  C(APEX_E_PLUGIN_LOAD) C(APEX_E_ABI_MISMATCH) C(APEX_E_INVALID_PARAMS) C(APEX_E_EXECUTION)   \
  C(APEX_E_TIMEOUT) C(APEX_E_CANCELLED) C(APEX_E_TRANSIENT) C(APEX_E_CRASHED)                 \
  C(APEX_PLUGIN_ABI) C(APEX_PENDING) C(APEX_PARAM_STRING) C(APEX_PARAM_INT)                   \
  C(APEX_PARAM_NUMBER) C(APEX_PARAM_BOOL) C(APEX_PARAM_OBJECT) C(APEX_PARAM_ARRAY)            \
  C(APEX_ACTION_BLOCKING) C(APEX_ACTION_DEFERRED) C(APEX_ACTION_F_IDEMPOTENT)                 \
  C(APEX_PROGRESS_MESSAGE_MAX) C(APEX_PROGRESS_MAX_DEPTH) C(APEX_LOG_ERROR) C(APEX_LOG_WARN)  \
  C(APEX_LOG_INFO) C(APEX_LOG_DEBUG) C(APEX_TASK_QUEUED) C(APEX_TASK_RUNNING)                 \
  C(APEX_TASK_RETRY_WAIT) C(APEX_TASK_SUCCEEDED) C(APEX_TASK_FAILED) C(APEX_TASK_CANCELLED)   \
  C(APEX_TASK_TIMED_OUT) C(APEX_EVENT_ATTEMPT) C(APEX_EVENT_PROGRESS) C(APEX_EVENT_RETRY)     \
  C(APEX_EVENT_DONE) C(APEX_DELIVER_LOOP) C(APEX_DELIVER_DISPATCH)

/* One row of the frozen layout: "type.field", its offset and size. */
typedef struct abi_row {
  const char *name;
  long long offset, size;
} abi_row_t;

#define ABI_ROW_F(type, field) {#type "." #field, (long long)offsetof(type, field), \
                                (long long)sizeof(((type *)0)->field)},
#define ABI_ROW_S(type) {"sizeof " #type, 0, (long long)sizeof(type)},
#define ABI_ROW_C(name) {#name, (long long)(name), 0},

/* Defined by layout_v1.c (the 0.1.0 headers), terminated by a NULL name. */
extern const abi_row_t abi_v1_rows[];
/* The sizeof of each struct a caller allocates, as 0.1.0 declared it. */
extern const long long abi_v1_sizeof_config, abi_v1_sizeof_submit_opts, abi_v1_sizeof_plugin_desc,
    abi_v1_sizeof_action_desc;

#endif
