/* Renderers of a metrics snapshot (include/apex/metrics.h) to three
 * formats, as their specifications define them:
 *
 * Prometheus text 0.0.4 (prometheus/docs, "Exposition formats"): per
 * family "# HELP name text" (backslash and newline escaped), "# TYPE name
 * counter|gauge|histogram", then one line per sample: name{l="v",...}
 * value. Counters are named name_total; a histogram writes name_bucket
 * with le="bound" for each bound and le="+Inf", then name_sum and
 * name_count. Label values escape backslash, double quote and newline.
 *
 * OpenMetrics text 1.0.0 (the OpenMetrics specification): the same
 * lines, with the counter's family named without _total in TYPE and HELP
 * (its sample keeps _total), a "# UNIT name unit" line for a family with a
 * unit, HELP escaping double quotes too, histogram bounds written as
 * floats ("1.0"), and the text ending with "# EOF".
 *
 * JSON: {"timestamp": s, "families": [{"name", "type", "help", "unit",
 * "samples": [{"labels": {...}, "value": v} or, for a histogram,
 * {"labels", "count", "sum", "buckets": [{"le": bound or "+Inf",
 * "count": cumulative}]}]}]}, written with jansson.
 *
 * Text is UTF-8 in all three: a byte of a label value or help text that
 * does not begin a valid sequence (src/core/utf8.c's rule) is written as
 * U+FFFD. Names are checked, not escaped: a family or label name outside
 * the formats' alphabet fails the render (APEX_E_INVALID).
 *
 * Pure functions of their input: any thread, no lock. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "apex/apex.h"
#include "core/strbuf.h"
#include "core/utf8.h"

typedef apex__strbuf_t buf_t;

static void put(buf_t *b, const char *s, size_t n) { apex__strbuf_put(b, s, n); }

static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }

/* Writes s escaped: backslash and newline always, double quote when
 * quote is set; invalid UTF-8 as U+FFFD. */
static void put_escaped(buf_t *b, const char *s, int quote) {
  size_t len = strlen(s), i = 0;
  while (i < len) {
    size_t ok = i + apex__utf8_bad_at(s + i, len - i);
    size_t run = i;
    for (size_t j = i; j < ok; j++) {
      const char *e = s[j] == '\\' ? "\\\\" : s[j] == '\n' ? "\\n"
                      : (quote && s[j] == '"') ? "\\\"" : NULL;
      if (!e) continue;
      put(b, s + run, j - run);
      puts_(b, e);
      run = j + 1;
    }
    put(b, s + run, ok - run);
    if (ok < len) {
      puts_(b, "\xEF\xBF\xBD"); /* U+FFFD for the byte that broke */
      ok++;
    }
    i = ok;
  }
}

static int name_ok(const char *s, int metric) {
  if (!s || !*s) return 0;
  for (const char *p = s; *p; p++) {
    char c = *p;
    int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (metric && c == ':');
    if (!alpha && !(p != s && c >= '0' && c <= '9')) return 0;
  }
  return metric || strncmp(s, "__", 2) != 0;
}

static void put_number(buf_t *b, double v) {
  char tmp[40];
  if (isnan(v))
    puts_(b, "NaN");
  else if (isinf(v))
    puts_(b, v > 0 ? "+Inf" : "-Inf");
  else if (v == floor(v) && fabs(v) < 9007199254740992.0) {
    snprintf(tmp, sizeof tmp, "%.0f", v);
    puts_(b, tmp);
  } else {
    snprintf(tmp, sizeof tmp, "%.17g", v);
    puts_(b, tmp);
  }
}

static void put_u64(buf_t *b, uint64_t v) {
  char tmp[24];
  snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
  puts_(b, tmp);
}

/* A bound as a label value: shortest round-trip form, and in OpenMetrics
 * a float always ("1.0", not "1"). */
static void bound_text(double v, int om, char *out, size_t n) {
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(out, n, "%.*g", prec, v);
    if (strtod(out, NULL) == v) break;
  }
  if (om && !strpbrk(out, ".eE")) strncat(out, ".0", n - strlen(out) - 1);
}

static void put_labels(buf_t *b, const apex_metric_sample_t *s, const char *le) {
  if (!s->n_labels && !le) return;
  puts_(b, "{");
  for (size_t i = 0; i < s->n_labels; i++) {
    if (i) puts_(b, ",");
    puts_(b, s->labels[i].name);
    puts_(b, "=\"");
    put_escaped(b, s->labels[i].value ? s->labels[i].value : "", 1);
    puts_(b, "\"");
  }
  if (le) {
    if (s->n_labels) puts_(b, ",");
    puts_(b, "le=\"");
    puts_(b, le);
    puts_(b, "\"");
  }
  puts_(b, "}");
}

static void put_line(buf_t *b, const char *name, const char *suffix,
                     const apex_metric_sample_t *s, const char *le) {
  puts_(b, name);
  puts_(b, suffix);
  put_labels(b, s, le);
  puts_(b, " ");
}

static const char *type_name(apex_metric_type_t t) {
  return t == APEX_METRIC_COUNTER ? "counter" : t == APEX_METRIC_GAUGE ? "gauge"
         : t == APEX_METRIC_HISTOGRAM ? "histogram" : NULL;
}

static int check(const apex_metrics_snapshot_t *s) {
  for (size_t i = 0; i < s->n_families; i++) {
    const apex_metric_family_t *f = &s->families[i];
    if (!name_ok(f->name, 1) || !type_name(f->type)) return 0;
    if (f->n_samples && !f->samples) return 0;
    if (f->type == APEX_METRIC_HISTOGRAM && f->n_bounds && !f->bounds) return 0;
    if (f->unit && *f->unit) {
      size_t nl = strlen(f->name), ul = strlen(f->unit);
      if (!name_ok(f->unit, 0) || nl <= ul + 1 || strcmp(f->name + nl - ul, f->unit) != 0 ||
          f->name[nl - ul - 1] != '_')
        return 0;
    }
    for (size_t j = 0; j < f->n_samples; j++) {
      const apex_metric_sample_t *smp = &f->samples[j];
      if (smp->n_labels && !smp->labels) return 0;
      if (f->type == APEX_METRIC_HISTOGRAM && f->n_bounds && !smp->buckets) return 0;
      for (size_t k = 0; k < smp->n_labels; k++)
        if (!name_ok(smp->labels[k].name, 0) || strcmp(smp->labels[k].name, "le") == 0)
          return 0;
    }
  }
  return 1;
}

static void render_text(const apex_metrics_snapshot_t *s, int om, buf_t *b) {
  for (size_t i = 0; i < s->n_families; i++) {
    const apex_metric_family_t *f = &s->families[i];
    /* 0.0.4 names the counter family by its samples' name. */
    const char *suffix = f->type == APEX_METRIC_COUNTER && !om ? "_total" : "";
    if (f->help && *f->help) {
      puts_(b, "# HELP ");
      puts_(b, f->name);
      puts_(b, suffix);
      puts_(b, " ");
      put_escaped(b, f->help, om);
      puts_(b, "\n");
    }
    puts_(b, "# TYPE ");
    puts_(b, f->name);
    puts_(b, suffix);
    puts_(b, " ");
    puts_(b, type_name(f->type));
    puts_(b, "\n");
    if (om && f->unit && *f->unit) {
      puts_(b, "# UNIT ");
      puts_(b, f->name);
      puts_(b, " ");
      puts_(b, f->unit);
      puts_(b, "\n");
    }
    for (size_t j = 0; j < f->n_samples; j++) {
      const apex_metric_sample_t *smp = &f->samples[j];
      if (f->type != APEX_METRIC_HISTOGRAM) {
        put_line(b, f->name, f->type == APEX_METRIC_COUNTER ? "_total" : "", smp, NULL);
        put_number(b, smp->value);
        puts_(b, "\n");
        continue;
      }
      char le[40];
      for (size_t k = 0; k < f->n_bounds; k++) {
        bound_text(f->bounds[k], om, le, sizeof le);
        put_line(b, f->name, "_bucket", smp, le);
        put_u64(b, smp->buckets[k]);
        puts_(b, "\n");
      }
      put_line(b, f->name, "_bucket", smp, "+Inf");
      put_u64(b, smp->count);
      puts_(b, "\n");
      put_line(b, f->name, "_sum", smp, NULL);
      put_number(b, smp->sum);
      puts_(b, "\n");
      put_line(b, f->name, "_count", smp, NULL);
      put_u64(b, smp->count);
      puts_(b, "\n");
    }
  }
  if (om) puts_(b, "# EOF\n");
}

/* A string jansson accepts: invalid UTF-8 replaced (put_escaped's rule,
 * without escapes, which JSON does itself). */
static json_t *jstr(const char *s) {
  if (apex__utf8_valid(s, strlen(s))) return json_string(s);
  buf_t b = {0};
  size_t len = strlen(s), i = 0;
  while (i < len) {
    size_t ok = i + apex__utf8_bad_at(s + i, len - i);
    put(&b, s + i, ok - i);
    if (ok < len) {
      puts_(&b, "\xEF\xBF\xBD");
      ok++;
    }
    i = ok;
  }
  json_t *j = b.oom ? NULL : json_string(b.p ? b.p : "");
  free(b.p);
  return j;
}

/* Sets k to v (taken); 0 if v is NULL or the set fails. */
static int jset(json_t *o, const char *k, json_t *v) { return v && json_object_set_new(o, k, v) == 0; }

static json_t *render_json(const apex_metrics_snapshot_t *s) {
  json_t *root = json_object(), *fams = json_array();
  int ok = root && fams && jset(root, "timestamp", json_real(s->timestamp));
  for (size_t i = 0; ok && i < s->n_families; i++) {
    const apex_metric_family_t *f = &s->families[i];
    json_t *jf = json_object(), *samples = json_array();
    ok = jf && samples && json_array_append_new(fams, jf) == 0 &&
         jset(jf, "name", json_string(f->name)) && jset(jf, "type", json_string(type_name(f->type))) &&
         jset(jf, "help", jstr(f->help ? f->help : "")) &&
         jset(jf, "unit", json_string(f->unit ? f->unit : "")) && jset(jf, "samples", samples);
    if (!ok) {
      json_decref(samples);
      break;
    }
    for (size_t j = 0; ok && j < f->n_samples; j++) {
      const apex_metric_sample_t *smp = &f->samples[j];
      json_t *js = json_object(), *labels = json_object();
      ok = js && labels && json_array_append_new(samples, js) == 0 && jset(js, "labels", labels);
      if (!ok) {
        json_decref(labels);
        break;
      }
      for (size_t k = 0; ok && k < smp->n_labels; k++)
        ok = jset(labels, smp->labels[k].name,
                  jstr(smp->labels[k].value ? smp->labels[k].value : ""));
      if (f->type != APEX_METRIC_HISTOGRAM) {
        ok = ok && jset(js, "value", isfinite(smp->value) ? json_real(smp->value)
                                                           : json_string(isnan(smp->value) ? "NaN"
                                                                         : smp->value > 0 ? "+Inf" : "-Inf"));
        continue;
      }
      json_t *bk = json_array();
      ok = ok && jset(js, "count", json_integer((json_int_t)smp->count)) &&
           jset(js, "sum", json_real(smp->sum)) && jset(js, "buckets", bk);
      for (size_t k = 0; ok && k <= f->n_bounds; k++) {
        json_t *e = json_object();
        ok = e && json_array_append_new(bk, e) == 0 &&
             jset(e, "le", k < f->n_bounds ? json_real(f->bounds[k]) : json_string("+Inf")) &&
             jset(e, "count", json_integer((json_int_t)(k < f->n_bounds ? smp->buckets[k]
                                                                          : smp->count)));
      }
    }
  }
  if (fams && root && ok) ok = jset(root, "families", fams);
  else json_decref(fams);
  if (!ok) {
    json_decref(root);
    return NULL;
  }
  return root;
}

apex_status_t apex_metrics_render(const apex_metrics_snapshot_t *s, apex_metrics_format_t f,
                                  char **out, size_t *len) {
  if (out) *out = NULL;
  if (len) *len = 0;
  if (!s || !out || (s->n_families && !s->families)) return APEX_E_INVALID;
  if (f != APEX_METRICS_PROMETHEUS && f != APEX_METRICS_OPENMETRICS && f != APEX_METRICS_JSON)
    return APEX_E_INVALID;
  if (!check(s)) return APEX_E_INVALID;
  if (f == APEX_METRICS_JSON) {
    json_t *j = render_json(s);
    size_t n = j ? json_dumpb(j, NULL, 0, JSON_COMPACT) : 0;
    char *text = n ? malloc(n + 2) : NULL;
    if (text && json_dumpb(j, text, n, JSON_COMPACT) != n) {
      free(text);
      text = NULL;
    }
    json_decref(j);
    if (!text) return APEX_E_NOMEM;
    text[n] = '\n';
    text[n + 1] = '\0';
    *out = text;
    if (len) *len = n + 1;
    return APEX_OK;
  }
  buf_t b = {0};
  render_text(s, f == APEX_METRICS_OPENMETRICS, &b);
  if (!b.p && !b.oom) put(&b, "", 0);
  if (b.oom) {
    free(b.p);
    return APEX_E_NOMEM;
  }
  *out = b.p;
  if (len) *len = b.n;
  return APEX_OK;
}

void apex_metrics_text_free(char *text) { free(text); }

const char *apex_metrics_content_type(apex_metrics_format_t f) {
  switch (f) {
    case APEX_METRICS_PROMETHEUS: return "text/plain; version=0.0.4; charset=utf-8";
    case APEX_METRICS_OPENMETRICS: return "application/openmetrics-text; version=1.0.0; charset=utf-8";
    case APEX_METRICS_JSON: return "application/json";
  }
  return NULL;
}
