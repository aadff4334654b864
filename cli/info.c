/* `apex plugins` and `apex describe`: read-only views of plugin descriptors.
 * Both create a manager, load (all / the named plugin) and print from the
 * normalized descriptor the library keeps, so what is shown is what a run
 * would validate against. Main thread only. What can fail: loading (an
 * unknown plugin is exit 2; a plugin that fails to load is a warning for
 * `plugins`, an error for `describe`) and out of memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *type_name(apex_param_type_t t) {
  switch (t) {
  case APEX_PARAM_STRING: return "string";
  case APEX_PARAM_INT: return "int";
  case APEX_PARAM_NUMBER: return "number";
  case APEX_PARAM_BOOL: return "bool";
  case APEX_PARAM_OBJECT: return "object";
  case APEX_PARAM_ARRAY: return "array";
  }
  return "?";
}

static size_t max_action_name(const apex_plugin_desc_t *d) {
  size_t w = 0;
  for (size_t i = 0; i < d->n_actions; i++) {
    const char *name = apex_plugin_desc_action(d, i)->name;
    size_t n = strlen(name ? name : "");
    if (n > w) w = n;
  }
  return w;
}

static void print_actions(const apex_plugin_desc_t *d) {
  int w = (int)max_action_name(d);
  for (size_t i = 0; i < d->n_actions; i++) {
    const apex_action_desc_t *a = apex_plugin_desc_action(d, i);
    printf("    %-*s  %s\n", w, a->name ? a->name : "", a->description ? a->description : "");
  }
}

/* apex_manager_load_all returns the first load failure and logs the others
 * at warn level; this sink labels those "warning" like the first, so each
 * failure shows once, in the same form. Any thread may log. */
static void plugins_log(int level, const char *msg, void *user) {
  static const char *const names[] = {"error", "warning", "info", "debug"};
  (void)user;
  fprintf(stderr, "apex: %s: %s\n", level >= 0 && level <= 3 ? names[level] : "log", msg);
}

int cli_cmd_plugins(const cli_opts_t *o) {
  apex_manager_t *m = NULL;
  int code = cli_manager_new(o, NULL, NULL, plugins_log, NULL, &m);
  if (code != CLI_EXIT_OK) return code;
  apex_error_t *err = NULL;
  int rc = apex_manager_load_all(m, &err);
  /* load_all goes on past a bad plugin; what did load is still listed. */
  if (rc != APEX_OK)
    fprintf(stderr, "apex: warning: %s\n", err ? apex_error_message(err) : apex_strerror(rc));
  apex_error_unref(err);

  size_t n = apex_manager_plugin_count(m);
  for (size_t i = 0; i < n; i++) {
    const apex_plugin_desc_t *d = apex_manager_plugin_at(m, i);
    if (!d) continue;
    printf("%s %s  %s\n", d->name, d->version ? d->version : "", d->description ? d->description : "");
    print_actions(d);
  }
  if (n == 0) {
    char *path = cli_search_path(m);
    fprintf(stderr, "apex: no plugins found (searched: %s)\n",
            path ? (*path ? path : "no directories") : "?");
    free(path);
  }
  fflush(stdout);
  apex_manager_destroy(m, 100);
  return CLI_EXIT_OK;
}

static void print_retry(const apex_retry_policy_t *r) {
  unsigned attempts = r->max_attempts ? r->max_attempts : 1;
  if (attempts == 1) {
    printf("  retry:            none (1 attempt)\n");
    return;
  }
  printf("  retry:            up to %u attempts, first delay %g s, backoff x%g", attempts,
         r->initial_interval_s, r->backoff_coefficient > 0 ? r->backoff_coefficient : 2.0);
  if (r->max_interval_s > 0) printf(", delay cap %g s", r->max_interval_s);
  if (r->jitter > 0) printf(", jitter %g", r->jitter);
  printf("\n");
  if (r->n_non_retryable && r->non_retryable) {
    printf("  never retried:   ");
    for (size_t i = 0; i < r->n_non_retryable; i++)
      printf(" %s", apex_status_name(r->non_retryable[i]));
    printf("\n");
  }
}

static void print_bounds(const apex_param_spec_t *p, char *buf, size_t len) {
  const char *what = p->type == APEX_PARAM_STRING || p->type == APEX_PARAM_ARRAY ? "length " : "";
  buf[0] = '\0';
  if (p->has_min && p->has_max) snprintf(buf, len, "%s%.15g..%.15g", what, p->min, p->max);
  else if (p->has_min) snprintf(buf, len, "%s>= %.15g", what, p->min);
  else if (p->has_max) snprintf(buf, len, "%s<= %.15g", what, p->max);
}

static void print_action(const apex_plugin_desc_t *d, const apex_action_desc_t *a) {
  printf("%s.%s  %s\n", d->name, a->name, a->description ? a->description : "");
  printf("  kind:             %s\n", a->kind == APEX_ACTION_DEFERRED ? "deferred" : "blocking");
  if (a->default_timeout_s > 0) printf("  default timeout:  %g s\n", a->default_timeout_s);
  else printf("  default timeout:  none\n");
  /* The other three (docs/scheduling.md), shown only when set. */
  if (a->schedule_to_start_s > 0) printf("  schedule-to-start: %g s\n", a->schedule_to_start_s);
  if (a->start_to_close_s > 0) printf("  attempt timeout:  %g s\n", a->start_to_close_s);
  if (a->heartbeat_timeout_s > 0) printf("  heartbeat timeout: %g s\n", a->heartbeat_timeout_s);
  print_retry(&a->default_retry);
  if (a->n_params == 0) {
    printf("  params:           none\n");
    return;
  }
  printf("  params:\n");
  int w = 0;
  for (size_t i = 0; i < a->n_params; i++) {
    int n = (int)strlen(a->params[i].name ? a->params[i].name : "");
    if (n > w) w = n;
  }
  for (size_t i = 0; i < a->n_params; i++) {
    const apex_param_spec_t *p = &a->params[i];
    char bounds[96], req[256];
    print_bounds(p, bounds, sizeof bounds);
    if (p->required) snprintf(req, sizeof req, "required");
    else if (p->default_json) snprintf(req, sizeof req, "default %s", p->default_json);
    else snprintf(req, sizeof req, "optional");
    printf("    %-*s  %-6s  %s%s%s\n", w, p->name ? p->name : "", type_name(p->type), req,
           bounds[0] ? ", " : "", bounds);
    if (p->description && *p->description) printf("    %-*s  %s\n", w, "", p->description);
  }
}

int cli_cmd_describe(const cli_opts_t *o) {
  if (!o->target) return cli_fail(0, APEX_E_INVALID, "describe: missing PLUGIN[.ACTION]");
  char buf[512];
  const char *plugin, *action;
  if (cli_split_target(o->target, buf, sizeof buf, &plugin, &action) != 0 || !*plugin ||
      (action && !*action))
    return cli_fail(0, APEX_E_INVALID, "describe: '%s' is not PLUGIN or PLUGIN.ACTION", o->target);

  apex_manager_t *m = NULL;
  int code = cli_manager_new(o, NULL, NULL, NULL, NULL, &m);
  if (code != CLI_EXIT_OK) return code;
  const apex_plugin_desc_t *d = NULL;
  code = cli_load_plugin(m, 0, plugin, &d);
  if (code == CLI_EXIT_OK && !action) {
    printf("%s %s  %s\n", d->name, d->version ? d->version : "", d->description ? d->description : "");
    const char *file = apex_manager_plugin_file(m, d->name);
    if (file) printf("  file: %s\n", file);
    printf("  actions:\n");
    print_actions(d);
  } else if (code == CLI_EXIT_OK) {
    const apex_action_desc_t *a = cli_find_action(d, action);
    if (a) print_action(d, a);
    else {
      char names[1024];
      cli_action_names(d, names, sizeof names);
      code = cli_fail(0, APEX_E_ACTION_NOT_FOUND, "plugin '%s' has no action '%s' (actions: %s)",
                      plugin, action, names);
    }
  }
  fflush(stdout);
  apex_manager_destroy(m, 100);
  return code;
}
