/* apex_metrics_snapshot: the manager's metrics as plain C structs
 * (include/apex/metrics.h), summed from the per-thread cells of
 * src/obs/metrics.c, with the gauges read from the scheduler's scopes and
 * the manager's stats. The families, their names, types, labels and help
 * texts are defined here, in one table-like function (build); every one
 * of them is listed in docs/observability.md.
 *
 * A snapshot owns every byte it points at (names copied: it may outlive
 * the manager and its plugins), allocated piecewise and tracked in one
 * list, freed by apex_metrics_snapshot_free.
 *
 * Locks: reg_mu (alone) to copy the plugin list; apex_manager_scope_stats
 * takes pool_mu per action. No lock is held while cells are summed: the
 * cells are atomics, and a series is never freed before the manager. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "obs/metrics.h"

/* The snapshot and what it allocated. */
typedef struct snap {
  apex_metrics_snapshot_t pub;
  void **allocs;
  size_t n_allocs, cap_allocs;
  int nomem;
  apex_metric_family_t *fams;
  size_t n_fams, cap_fams;
} snap_t;

static void *snap_alloc(snap_t *s, size_t n) {
  if (s->nomem) return NULL;
  if (s->n_allocs == s->cap_allocs) {
    size_t cap = s->cap_allocs ? s->cap_allocs * 2 : 64;
    void **a = realloc(s->allocs, cap * sizeof *a);
    if (!a) {
      s->nomem = 1;
      return NULL;
    }
    s->allocs = a;
    s->cap_allocs = cap;
  }
  void *p = calloc(1, n ? n : 1);
  if (!p) {
    s->nomem = 1;
    return NULL;
  }
  s->allocs[s->n_allocs++] = p;
  return p;
}

static const char *snap_str(snap_t *s, const char *str) {
  size_t n = strlen(str) + 1;
  char *p = snap_alloc(s, n);
  if (p) memcpy(p, str, n);
  return p ? p : "";
}

/* One action's figures, summed. */
typedef struct sum {
  const char *plugin, *action;
  uint64_t submitted, started, succeeded, retried;
  uint64_t prog_reported, prog_delivered, prog_coalesced, prog_rejected;
  uint64_t failed[APEX__MX_N_CODES], rejected[APEX__MX_N_CODES];
  uint64_t timed_out[APEX__MX_N_TMO], cancelled[APEX__MX_N_REASONS];
  uint64_t hist[APEX__MX_N_HIST][APEX__MX_BUCKETS + 1];
  apex_scope_stats_t sc;
} sum_t;

static uint64_t ld(const _Atomic uint64_t *c) {
  return atomic_load_explicit(c, memory_order_relaxed);
}

static void sum_series(const apex__mx_series_t *x, sum_t *o) {
  for (unsigned k = 0; k <= APEX__MX_SLOTS; k++) {
    const apex__mx_hot_t *h = &x->hot[k];
    o->submitted += ld(&h->submitted);
    o->started += ld(&h->started);
    o->succeeded += ld(&h->succeeded);
    o->retried += ld(&h->retried);
    o->prog_reported += ld(&h->prog_reported);
    o->prog_delivered += ld(&h->prog_delivered);
    o->prog_coalesced += ld(&h->prog_coalesced);
    for (int i = 0; i < APEX__MX_N_HIST; i++)
      for (int b = 0; b <= APEX__MX_BUCKETS; b++) o->hist[i][b] += ld(&h->hist[i][b]);
  }
  for (int i = 0; i < APEX__MX_N_CODES; i++) {
    o->failed[i] = ld(&x->cold.failed[i]);
    o->rejected[i] = ld(&x->cold.rejected[i]);
  }
  for (int i = 0; i < APEX__MX_N_TMO; i++) o->timed_out[i] = ld(&x->cold.timed_out[i]);
  for (int i = 0; i < APEX__MX_N_REASONS; i++) o->cancelled[i] = ld(&x->cold.cancelled[i]);
  o->prog_rejected = ld(&x->cold.prog_rejected);
}

/* ------------------------------------------------------------ families */

static apex_metric_family_t *family(snap_t *s, const char *name, apex_metric_type_t type,
                                    const char *unit, const char *help, size_t max_samples) {
  if (s->nomem) return NULL;
  if (s->n_fams == s->cap_fams) return NULL; /* sized by build: a bug, not memory */
  apex_metric_family_t *f = &s->fams[s->n_fams++];
  f->name = name; /* static strings */
  f->help = help;
  f->unit = unit;
  f->type = type;
  if (type == APEX_METRIC_HISTOGRAM) {
    f->bounds = apex__mx_bounds_s;
    f->n_bounds = APEX_METRICS_N_BOUNDS;
  }
  f->samples = snap_alloc(s, (max_samples ? max_samples : 1) * sizeof(apex_metric_sample_t));
  return f->samples ? f : NULL;
}

/* Appends a sample with labels plugin, action and, when extra is set,
 * (extra, extra_value). Returns: it, or NULL on no memory. */
static apex_metric_sample_t *sample(snap_t *s, apex_metric_family_t *f, const sum_t *x,
                                    const char *extra, const char *extra_value) {
  if (!f) return NULL;
  size_t n = (x ? 2 : 0) + (extra ? 1 : 0);
  apex_metric_label_t *l = n ? snap_alloc(s, n * sizeof *l) : NULL;
  if (n && !l) return NULL;
  size_t i = 0;
  if (x) {
    l[i++] = (apex_metric_label_t){"plugin", x->plugin};
    l[i++] = (apex_metric_label_t){"action", x->action};
  }
  if (extra) l[i++] = (apex_metric_label_t){extra, extra_value};
  apex_metric_sample_t *smp = (apex_metric_sample_t *)&f->samples[f->n_samples++];
  smp->labels = l;
  smp->n_labels = n;
  return smp;
}

static void value(snap_t *s, apex_metric_family_t *f, const sum_t *x, const char *extra,
                  const char *extra_value, double v) {
  apex_metric_sample_t *smp = sample(s, f, x, extra, extra_value);
  if (smp) smp->value = v;
}

static void histogram(snap_t *s, apex_metric_family_t *f, const sum_t *x, int which) {
  apex_metric_sample_t *smp = sample(s, f, x, NULL, NULL);
  uint64_t *b = smp ? snap_alloc(s, APEX_METRICS_N_BOUNDS * sizeof *b) : NULL;
  if (!b) return;
  uint64_t acc = 0;
  for (int i = 0; i < APEX_METRICS_N_BOUNDS; i++) b[i] = acc += x->hist[which][i];
  smp->count = acc + x->hist[which][APEX_METRICS_N_BOUNDS];
  smp->sum = (double)x->hist[which][APEX__MX_BUCKETS] / 1e9;
  smp->buckets = b;
}

/* The failure codes' names, for the code label. */
static const char *code_name(unsigned i) {
  int c = apex__mx_code_of(i);
  return c ? apex_status_name(c) : "other";
}

static void build(snap_t *s, apex_manager_t *m, const sum_t *xs, size_t n,
                  const apex_stats_t *st, const char *const *pnames, const char *const *pvers,
                  size_t np) {
  static const char *const outcomes[] = {"succeeded", "failed", "cancelled", "timed_out"};
  size_t nc = n * APEX__MX_N_CODES;
  apex_metric_family_t *f;
  if (m->mx) {
    f = family(s, "apex_tasks_submitted", APEX_METRIC_COUNTER, "",
               "Tasks accepted by apex_manager_submit.", n);
    for (size_t i = 0; i < n; i++) value(s, f, &xs[i], NULL, NULL, (double)xs[i].submitted);
    f = family(s, "apex_tasks_rejected", APEX_METRIC_COUNTER, "",
               "Submits refused, by error code (queue full, shutting down, invalid params).", nc);
    for (size_t i = 0; i < n; i++)
      for (unsigned c = 0; c < APEX__MX_N_CODES; c++)
        if (xs[i].rejected[c])
          value(s, f, &xs[i], "code", code_name(c), (double)xs[i].rejected[c]);
    f = family(s, "apex_task_attempts", APEX_METRIC_COUNTER, "",
               "Attempts started (a task's first run and each retry).", n);
    for (size_t i = 0; i < n; i++) value(s, f, &xs[i], NULL, NULL, (double)xs[i].started);
    f = family(s, "apex_tasks", APEX_METRIC_COUNTER, "", "Tasks ended, by outcome.", n * 4);
    for (size_t i = 0; i < n; i++) {
      uint64_t v[4] = {xs[i].succeeded, 0, 0, 0};
      for (int c = 0; c < APEX__MX_N_CODES; c++) v[1] += xs[i].failed[c];
      for (int c = 0; c < APEX__MX_N_REASONS; c++) v[2] += xs[i].cancelled[c];
      for (int c = 0; c < APEX__MX_N_TMO; c++) v[3] += xs[i].timed_out[c];
      for (int o = 0; o < 4; o++) value(s, f, &xs[i], "outcome", outcomes[o], (double)v[o]);
    }
    f = family(s, "apex_tasks_failed", APEX_METRIC_COUNTER, "",
               "Tasks that ended failed, by error code.", nc);
    for (size_t i = 0; i < n; i++)
      for (unsigned c = 0; c < APEX__MX_N_CODES; c++)
        if (xs[i].failed[c]) value(s, f, &xs[i], "code", code_name(c), (double)xs[i].failed[c]);
    f = family(s, "apex_tasks_timed_out", APEX_METRIC_COUNTER, "",
               "Tasks that ended timed out, by the timeout that fired.", n * APEX__MX_N_TMO);
    for (size_t i = 0; i < n; i++)
      for (unsigned c = 0; c < APEX__MX_N_TMO; c++)
        if (xs[i].timed_out[c])
          value(s, f, &xs[i], "timeout", apex__mx_tmo_names[c], (double)xs[i].timed_out[c]);
    f = family(s, "apex_tasks_cancelled", APEX_METRIC_COUNTER, "",
               "Tasks that ended cancelled, by reason (user, parent, shutdown).",
               n * APEX__MX_N_REASONS);
    for (size_t i = 0; i < n; i++)
      for (unsigned c = 0; c < APEX__MX_N_REASONS; c++)
        if (xs[i].cancelled[c])
          value(s, f, &xs[i], "reason", apex__mx_reason_names[c], (double)xs[i].cancelled[c]);
    f = family(s, "apex_task_retries", APEX_METRIC_COUNTER, "",
               "Attempts that failed and were scheduled to run again.", n);
    for (size_t i = 0; i < n; i++) value(s, f, &xs[i], NULL, NULL, (double)xs[i].retried);
    f = family(s, "apex_progress_reports", APEX_METRIC_COUNTER, "",
               "Progress updates accepted from handlers.", n);
    for (size_t i = 0; i < n; i++) value(s, f, &xs[i], NULL, NULL, (double)xs[i].prog_reported);
    f = family(s, "apex_progress_delivered", APEX_METRIC_COUNTER, "",
               "Progress snapshots delivered toward the host.", n);
    for (size_t i = 0; i < n; i++) value(s, f, &xs[i], NULL, NULL, (double)xs[i].prog_delivered);
    f = family(s, "apex_progress_rejected", APEX_METRIC_COUNTER, "",
               "Progress updates refused as invalid.", n);
    for (size_t i = 0; i < n; i++) value(s, f, &xs[i], NULL, NULL, (double)xs[i].prog_rejected);
    f = family(s, "apex_progress_coalesced", APEX_METRIC_COUNTER, "",
               "Progress updates replaced by a later one before delivery.", n);
    for (size_t i = 0; i < n; i++) value(s, f, &xs[i], NULL, NULL, (double)xs[i].prog_coalesced);
  }
  f = family(s, "apex_late_reports", APEX_METRIC_COUNTER, "",
             "Reports and results that came after their task ended, ignored.", 1);
  value(s, f, NULL, NULL, NULL, (double)st->late_reports);

  f = family(s, "apex_tasks_queued", APEX_METRIC_GAUGE, "",
             "Tasks runnable and waiting for a worker.", n);
  for (size_t i = 0; i < n; i++) value(s, f, &xs[i], NULL, NULL, (double)xs[i].sc.queued);
  f = family(s, "apex_tasks_running", APEX_METRIC_GAUGE, "", "Attempts open.", n);
  for (size_t i = 0; i < n; i++) value(s, f, &xs[i], NULL, NULL, (double)xs[i].sc.running);
  f = family(s, "apex_tasks_scheduled", APEX_METRIC_GAUGE, "",
             "Tasks waiting for their start time.", n);
  for (size_t i = 0; i < n; i++) value(s, f, &xs[i], NULL, NULL, (double)xs[i].sc.scheduled);
  f = family(s, "apex_tasks_waiting", APEX_METRIC_GAUGE, "",
             "Tasks held by a concurrency or rate limit.", n * 2);
  for (size_t i = 0; i < n; i++) {
    value(s, f, &xs[i], "limit", "concurrency", (double)xs[i].sc.waiting_on_limit);
    value(s, f, &xs[i], "limit", "rate", (double)xs[i].sc.waiting_on_rate);
  }
  f = family(s, "apex_workers", APEX_METRIC_GAUGE, "", "Worker threads.", 1);
  value(s, f, NULL, NULL, NULL, (double)st->workers);
  f = family(s, "apex_workers_stuck", APEX_METRIC_GAUGE, "",
             "Workers whose handler outlived its task's timeout.", 1);
  value(s, f, NULL, NULL, NULL, (double)st->stuck_workers);
  f = family(s, "apex_plugin_info", APEX_METRIC_GAUGE, "",
             "Loaded plugins (always 1), with the version each declares.", np);
  for (size_t i = 0; i < np; i++) {
    apex_metric_label_t *l = snap_alloc(s, 2 * sizeof *l);
    if (!f || !l) break;
    l[0] = (apex_metric_label_t){"plugin", pnames[i]};
    l[1] = (apex_metric_label_t){"version", pvers[i]};
    apex_metric_sample_t *smp = (apex_metric_sample_t *)&f->samples[f->n_samples++];
    smp->labels = l;
    smp->n_labels = 2;
    smp->value = 1;
  }
  if (!m->mx) return;
  f = family(s, "apex_task_queue_wait_seconds", APEX_METRIC_HISTOGRAM, "seconds",
             "From the submit (or the start time) to the first attempt's start.", n);
  for (size_t i = 0; i < n; i++) histogram(s, f, &xs[i], APEX__MX_H_QUEUE_WAIT);
  f = family(s, "apex_attempt_duration_seconds", APEX_METRIC_HISTOGRAM, "seconds",
             "One attempt, from its start to its end.", n);
  for (size_t i = 0; i < n; i++) histogram(s, f, &xs[i], APEX__MX_H_ATTEMPT);
  f = family(s, "apex_task_duration_seconds", APEX_METRIC_HISTOGRAM, "seconds",
             "From the submit to the task's end (end to end).", n);
  for (size_t i = 0; i < n; i++) histogram(s, f, &xs[i], APEX__MX_H_E2E);
  f = family(s, "apex_progress_delivery_delay_seconds", APEX_METRIC_HISTOGRAM, "seconds",
             "From a progress report to the host's PROGRESS callback.", n);
  for (size_t i = 0; i < n; i++) histogram(s, f, &xs[i], APEX__MX_H_PROGRESS);
}

#define MAX_FAMILIES 32

apex_status_t apex_metrics_snapshot(apex_manager_t *m, apex_metrics_snapshot_t **out) {
  if (!m || !out) return APEX_E_INVALID;
  *out = NULL;
  snap_t *s = calloc(1, sizeof *s);
  if (!s) return APEX_E_NOMEM;
  s->pub.struct_size = sizeof s->pub;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  s->pub.timestamp = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
  s->fams = snap_alloc(s, MAX_FAMILIES * sizeof *s->fams);
  s->cap_fams = MAX_FAMILIES;

  /* Plugins are never removed before the manager goes: a copy of the
   * list may be read after reg_mu is dropped. */
  pthread_mutex_lock(&m->reg_mu);
  size_t np = m->n_plugins;
  apex__plugin_t **ps = np ? malloc(np * sizeof *ps) : NULL;
  if (ps) memcpy(ps, m->plugins, np * sizeof *ps);
  pthread_mutex_unlock(&m->reg_mu);
  if (np && !ps) s->nomem = 1;

  size_t n = 0, cap = 0;
  for (size_t i = 0; i < np && !s->nomem; i++)
    for (size_t j = 0; j < ps[i]->desc.n_actions; j++)
      if (apex__mx_series_peek(ps[i], &ps[i]->actions[j])) cap++;
  sum_t *xs = cap ? calloc(cap, sizeof *xs) : NULL;
  if (cap && !xs) s->nomem = 1;
  const char **pnames = np ? snap_alloc(s, np * sizeof *pnames) : NULL;
  const char **pvers = np ? snap_alloc(s, np * sizeof *pvers) : NULL;
  for (size_t i = 0; i < np && !s->nomem; i++) {
    pnames[i] = snap_str(s, ps[i]->desc.name);
    pvers[i] = snap_str(s, ps[i]->desc.version ? ps[i]->desc.version : "");
    for (size_t j = 0; j < ps[i]->desc.n_actions && n < cap; j++) {
      const apex__mx_series_t *x = apex__mx_series_peek(ps[i], &ps[i]->actions[j]);
      if (!x) continue;
      sum_t *o = &xs[n++];
      o->plugin = pnames[i];
      o->action = snap_str(s, ps[i]->actions[j].name);
      sum_series(x, o);
      char name[160];
      snprintf(name, sizeof name, "%s.%s", ps[i]->desc.name, ps[i]->actions[j].name);
      o->sc.struct_size = sizeof o->sc;
      if (apex_manager_scope_stats(m, APEX_SCOPE_ACTION, name, &o->sc) != APEX_OK)
        memset(&o->sc, 0, sizeof o->sc);
    }
  }
  apex_stats_t st = APEX_STATS_INIT;
  if (apex_manager_stats_v2(m, &st) != APEX_OK) memset(&st, 0, sizeof st);
  if (!s->nomem) build(s, m, xs, n, &st, pnames, pvers, np);
  free(xs);
  free(ps);
  if (s->nomem) {
    apex_metrics_snapshot_free(&s->pub);
    return APEX_E_NOMEM;
  }
  s->pub.families = s->fams;
  s->pub.n_families = s->n_fams;
  *out = &s->pub;
  return APEX_OK;
}

void apex_metrics_snapshot_free(apex_metrics_snapshot_t *pub) {
  if (!pub) return;
  snap_t *s = (snap_t *)(void *)pub;
  for (size_t i = 0; i < s->n_allocs; i++) free(s->allocs[i]);
  free(s->allocs);
  free(s);
}

const apex_metric_sample_t *apex_metrics_find(const apex_metrics_snapshot_t *s, const char *name,
                                              const char *const *pairs, size_t n_pairs) {
  if (!s || !name || (n_pairs && !pairs)) return NULL;
  for (size_t i = 0; i < s->n_families; i++) {
    const apex_metric_family_t *f = &s->families[i];
    if (!f->name || strcmp(f->name, name) != 0) continue;
    for (size_t j = 0; j < f->n_samples; j++) {
      const apex_metric_sample_t *smp = &f->samples[j];
      size_t hit = 0;
      for (size_t k = 0; k < n_pairs; k++)
        for (size_t l = 0; l < smp->n_labels; l++)
          if (strcmp(smp->labels[l].name, pairs[2 * k]) == 0 &&
              strcmp(smp->labels[l].value, pairs[2 * k + 1]) == 0) {
            hit++;
            break;
          }
      if (hit == n_pairs) return smp;
    }
  }
  return NULL;
}
