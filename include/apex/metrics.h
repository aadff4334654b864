/* Apex metrics: the manager's operation metrics (counters, gauges and
 * histograms per plugin and action) as a snapshot a host reads as plain C
 * structs, and renderers of a snapshot to the Prometheus text format 0.0.4,
 * OpenMetrics text 1.0 and JSON. docs/observability.md lists every metric
 * with its type, labels, buckets and meaning.
 *
 * Metrics are on unless the manager's config turns them off
 * (apex_manager_config_t.metrics = APEX_METRICS_OFF); a snapshot of a
 * manager with metrics off holds only the gauges.
 *
 * Thread-safety: apex_metrics_snapshot may be called from any thread, at
 * any time between apex_manager_new and apex_manager_destroy; a snapshot
 * is immutable once made, so any thread may read or render it. Nothing here
 * calls back into the host. Included by apex.h. */
#ifndef APEX_METRICS_H
#define APEX_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "apex/common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct apex_manager;

/* apex_manager_config_t.metrics */
#define APEX_METRICS_DEFAULT 0 /* on */
#define APEX_METRICS_ON 1
#define APEX_METRICS_OFF 2

typedef enum apex_metric_type {
  APEX_METRIC_COUNTER = 1,  /* only goes up; rendered with the _total suffix */
  APEX_METRIC_GAUGE = 2,    /* a value now */
  APEX_METRIC_HISTOGRAM = 3 /* observations counted in fixed buckets */
} apex_metric_type_t;

typedef struct apex_metric_label {
  const char *name;  /* [a-zA-Z_][a-zA-Z0-9_]* */
  const char *value; /* any bytes but NUL; renderers escape what their
                        format requires and replace invalid UTF-8 */
} apex_metric_label_t;

/* One time series of a family. */
typedef struct apex_metric_sample {
  const apex_metric_label_t *labels;
  size_t n_labels;
  double value;  /* COUNTER, GAUGE */
  /* HISTOGRAM: observations, their sum (in the family's unit), and for
   * each of the family's n_bounds bounds the observations at or below it
   * (cumulative, as both text formats write them); the +Inf bucket is
   * count. */
  uint64_t count;
  double sum;
  const uint64_t *buckets;
} apex_metric_sample_t;

/* A metric family: one name, type and help text, its samples. */
typedef struct apex_metric_family {
  /* The name without a type suffix: a counter "apex_tasks" is rendered
   * apex_tasks_total, a histogram's samples _bucket, _sum, _count. A unit,
   * when there is one, ends the name ("apex_task_duration_seconds"). */
  const char *name;
  const char *help; /* one line of UTF-8 */
  const char *unit; /* "seconds", or "" for none */
  apex_metric_type_t type;
  const double *bounds; /* HISTOGRAM: upper bounds, ascending, +Inf excluded */
  size_t n_bounds;
  const apex_metric_sample_t *samples;
  size_t n_samples;
} apex_metric_family_t;

typedef struct apex_metrics_snapshot {
  /* Bytes of this struct the library filled (fields are appended:
   * APEX_HAS_FIELD(apex_metrics_snapshot_t, s, field)). */
  uint32_t struct_size;
  double timestamp; /* when it was taken, seconds since the Unix epoch */
  const apex_metric_family_t *families;
  size_t n_families;
} apex_metrics_snapshot_t;

/* The histograms' fixed bucket bounds (seconds), the same for every
 * histogram Apex makes: 10 us to 5 min, then +Inf. */
#define APEX_METRICS_N_BOUNDS 15

/* Takes a snapshot of m's metrics now: counters and histograms summed over
 * every thread's cells, gauges read from the scheduler.
 * Returns: APEX_OK and *out; APEX_E_INVALID for a NULL argument;
 * APEX_E_NOMEM. Ownership: *out is the caller's, freed with
 * apex_metrics_snapshot_free. Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_metrics_snapshot(struct apex_manager *m,
                                                apex_metrics_snapshot_t **out);
/* Frees a snapshot apex_metrics_snapshot made (never one a host built);
 * NULL: no-op. Thread-safety: once no thread reads it. */
APEX_EXTERN void apex_metrics_snapshot_free(apex_metrics_snapshot_t *s);

/* Finds the sample of family name (the base name: "apex_tasks", not
 * "apex_tasks_total") whose labels include every (name, value) pair of
 * pairs (n_pairs pairs: pairs[2i] the name, pairs[2i+1] the value).
 * Returns: the first such sample, or NULL (also for a NULL argument).
 * Ownership: borrowed from s, valid until s is freed. Thread-safety: any
 * thread (s is immutable). */
APEX_EXTERN const apex_metric_sample_t *apex_metrics_find(const apex_metrics_snapshot_t *s,
                                                          const char *name,
                                                          const char *const *pairs,
                                                          size_t n_pairs);

typedef enum apex_metrics_format {
  APEX_METRICS_PROMETHEUS = 0,  /* text format 0.0.4 */
  APEX_METRICS_OPENMETRICS = 1, /* OpenMetrics text 1.0.0 */
  APEX_METRICS_JSON = 2         /* docs/observability.md gives its shape */
} apex_metrics_format_t;

/* Renders s (one apex_metrics_snapshot made, or one a host built itself)
 * in format f.
 * Returns: APEX_OK with *out a NUL-terminated text of *len bytes;
 * APEX_E_INVALID for a NULL argument, an unknown format, or a family or
 * label name the formats do not allow (nothing written); APEX_E_NOMEM.
 * Ownership: s borrowed; *out the caller's, freed with apex_metrics_text_free.
 * Thread-safety: any thread. */
APEX_EXTERN apex_status_t apex_metrics_render(const apex_metrics_snapshot_t *s,
                                              apex_metrics_format_t f, char **out, size_t *len);
/* Frees a text apex_metrics_render made; NULL: no-op. */
APEX_EXTERN void apex_metrics_text_free(char *text);

/* Returns: the HTTP Content-Type of format f ("text/plain; version=0.0.4;
 * charset=utf-8", "application/openmetrics-text; version=1.0.0;
 * charset=utf-8", "application/json"), or NULL for an unknown one.
 * Ownership: static. Thread-safety: any thread. */
APEX_EXTERN const char *apex_metrics_content_type(apex_metrics_format_t f);

#ifdef __cplusplus
}
#endif
#endif /* APEX_METRICS_H */
