/* What every store backend shares (store.h): records, the wall clock,
 * errors, and opening a backend by its uri. */
#include "store/store.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"

static char *dup_or_null(const char *s, int *bad) {
  if (!s) return NULL;
  char *d = strdup(s);
  if (!d) *bad = 1;
  return d;
}

void apex__srec_clear(apex__srec_t *r) {
  if (!r) return;
  free(r->plugin);
  free(r->action);
  free(r->plugin_version);
  free(r->params);
  free(r->opts);
  free(r->idem_key);
  free(r->owner);
  free(r->cancel_reason);
  free(r->progress);
  free(r->checkpoint);
  free(r->partial);
  free(r->result);
  free(r->error);
  free(r->events);
  memset(r, 0, sizeof *r);
}

int apex__srec_copy(apex__srec_t *dst, const apex__srec_t *src) {
  int bad = 0;
  *dst = *src;
  dst->plugin = dup_or_null(src->plugin, &bad);
  dst->action = dup_or_null(src->action, &bad);
  dst->plugin_version = dup_or_null(src->plugin_version, &bad);
  dst->params = dup_or_null(src->params, &bad);
  dst->opts = dup_or_null(src->opts, &bad);
  dst->idem_key = dup_or_null(src->idem_key, &bad);
  dst->owner = dup_or_null(src->owner, &bad);
  dst->cancel_reason = dup_or_null(src->cancel_reason, &bad);
  dst->progress = dup_or_null(src->progress, &bad);
  dst->checkpoint = dup_or_null(src->checkpoint, &bad);
  dst->partial = dup_or_null(src->partial, &bad);
  dst->result = dup_or_null(src->result, &bad);
  dst->error = dup_or_null(src->error, &bad);
  dst->events = dup_or_null(src->events, &bad);
  if (bad) {
    apex__srec_clear(dst);
    return APEX_E_NOMEM;
  }
  return APEX_OK;
}

void apex__srec_free_array(apex__srec_t *a, size_t n) {
  if (!a) return;
  for (size_t i = 0; i < n; i++) apex__srec_clear(&a[i]);
  free(a);
}

double apex__store_now(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return 0.0;
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int apex__store_fail(apex_error_t **err, int code, const char *fmt, ...) {
  if (!err) return code;
  va_list ap;
  va_start(ap, fmt);
  apex_error_t *e = apex__error_newv(code, NULL, NULL, fmt, ap);
  va_end(ap);
  return apex__error_put(err, e);
}

int apex__store_open(const char *uri, apex__store_t **out, apex_error_t **err) {
  *out = NULL;
  if (!uri || !*uri) return apex__store_fail(err, APEX_E_INVALID, "store: empty uri");
  if (strcmp(uri, "memory:") == 0 || strncmp(uri, "memory:", 7) == 0)
    return apex__store_memory_open(uri, out, err);
  if (strncmp(uri, "sqlite:", 7) == 0) return apex__store_sqlite_open(uri, uri + 7, out, err);
  /* A scheme we do not know ("postgres://...") is refused rather than read
   * as a file name; a plain path has no "word:" prefix before a slash. */
  const char *colon = strchr(uri, ':');
  const char *slash = strchr(uri, '/');
  if (colon && (!slash || colon < slash) && colon != uri) {
    int letters = 1;
    for (const char *p = uri; p < colon; p++)
      if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '+')) letters = 0;
    if (letters)
      return apex__store_fail(err, APEX_E_INVALID,
                              "store '%s': unknown scheme (want sqlite:PATH, PATH or memory:)",
                              uri);
  }
  return apex__store_sqlite_open(uri, uri, out, err);
}

char *apex__store_cancel_error(const char *reason) {
  json_t *e = json_pack("{s:s, s:s++}", "code", apex_status_name(APEX_E_CANCELLED), "message",
                        "cancelled (", reason ? reason : "user", ")");
  if (!e) return NULL;
  char *text = json_dumps(e, JSON_COMPACT);
  json_decref(e);
  return text;
}
