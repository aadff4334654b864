/* Validating a caller's params against an action's param spec, and filling
 * in defaults. This is the one place that decides what an action accepts, so
 * a handler can trust apex_ctx_params() blindly: every declared param it sees
 * has the declared type and lies within bounds.
 *
 * No state and no locks: any thread may call it on distinct arguments (the
 * spec is read-only, the input is only read). The output is a fresh deep copy,
 * so a caller that goes on mutating its params object after submitting cannot
 * race with a handler reading the validated copy on a worker thread.
 *
 * What can fail: the input (a reason naming the param goes into why, code
 * APEX_E_INVALID_PARAMS), or memory (APEX_E_NOMEM). A default that does not
 * parse is reported as APEX_E_INVALID_PARAMS too; the loader rejects such
 * descriptors, so that only happens for specs that never went through it. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/value.h"
#include "plugin/loader.h"

static void say(char *why, size_t why_len, const char *fmt, ...) APEX_PRINTF(3, 4);
static void say(char *why, size_t why_len, const char *fmt, ...) {
  if (!why || why_len == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, why_len, fmt, ap);
  va_end(ap);
}

const char *apex__param_type_name(apex_param_type_t t) {
  switch (t) {
    case APEX_PARAM_STRING: return "string";
    case APEX_PARAM_INT: return "int";
    case APEX_PARAM_NUMBER: return "number";
    case APEX_PARAM_BOOL: return "bool";
    case APEX_PARAM_OBJECT: return "object";
    case APEX_PARAM_ARRAY: return "array";
  }
  return NULL;
}

/* NUMBER needs no finiteness test: jansson never holds a NaN or an
 * infinity (json_real refuses them, and the parser rejects overflow). */
int apex__param_type_matches(apex_param_type_t t, const json_t *v) {
  switch (t) {
    case APEX_PARAM_STRING: return json_is_string(v);
    case APEX_PARAM_INT: return json_is_integer(v);
    case APEX_PARAM_NUMBER: return json_is_number(v);
    case APEX_PARAM_BOOL: return json_is_boolean(v);
    case APEX_PARAM_OBJECT: return json_is_object(v);
    case APEX_PARAM_ARRAY: return json_is_array(v);
  }
  return 0;
}

/* Exact int64-vs-double comparisons: a plain (double)v loses precision above
 * 2^53, which would let 2^53+1 pass a maximum of 2^53. So the bound is
 * rounded inward to an integer (floor/ceil are exact) and compared as an
 * int64. Callers guarantee -2^63 <= d < 2^63, so the cast is defined: below
 * 2^63 every double at or past 2^53 is an integer already, so ceil(d) < 2^63
 * too. */
static json_int_t floor_i64(double d) { return (json_int_t)floor(d); }

static json_int_t ceil_i64(double d) { return (json_int_t)ceil(d); }

static int int_above(json_int_t v, double max) {
  if (max >= 9223372036854775808.0) return 0;
  if (max < -9223372036854775808.0) return 1;
  return v > floor_i64(max);
}

static int int_below(json_int_t v, double min) {
  if (min >= 9223372036854775808.0) return 1;
  if (min < -9223372036854775808.0) return 0;
  return v < ceil_i64(min);
}

static int check_bounds_num(const apex_param_spec_t *s, const json_t *v, char *why,
                            size_t why_len) {
  char val[40], lim[40];
  int above = 0, below = 0;
  if (json_is_integer(v)) {
    json_int_t i = json_integer_value(v);
    above = s->has_max && int_above(i, s->max);
    below = s->has_min && int_below(i, s->min);
    snprintf(val, sizeof val, "%" JSON_INTEGER_FORMAT, i);
  } else {
    double d = json_real_value(v);
    above = s->has_max && d > s->max;
    below = s->has_min && d < s->min;
    apex__fmt_num(val, sizeof val, d);
  }
  if (above) {
    apex__fmt_num(lim, sizeof lim, s->max);
    say(why, why_len, "param '%s': %s is above the maximum %s", s->name, val, lim);
    return APEX_E_INVALID_PARAMS;
  }
  if (below) {
    apex__fmt_num(lim, sizeof lim, s->min);
    say(why, why_len, "param '%s': %s is below the minimum %s", s->name, val, lim);
    return APEX_E_INVALID_PARAMS;
  }
  return APEX_OK;
}

static int check_bounds_len(const apex_param_spec_t *s, size_t n, char *why, size_t why_len) {
  char lim[40];
  if (s->has_max && (double)n > s->max) {
    apex__fmt_num(lim, sizeof lim, s->max);
    say(why, why_len, "param '%s': length %zu is above the maximum %s", s->name, n, lim);
    return APEX_E_INVALID_PARAMS;
  }
  if (s->has_min && (double)n < s->min) {
    apex__fmt_num(lim, sizeof lim, s->min);
    say(why, why_len, "param '%s': length %zu is below the minimum %s", s->name, n, lim);
    return APEX_E_INVALID_PARAMS;
  }
  return APEX_OK;
}

/* One given value against its spec: type first, then bounds. */
static int check_value(const apex_param_spec_t *s, const json_t *v, char *why, size_t why_len) {
  const char *want = apex__param_type_name(s->type);
  if (!want) {
    say(why, why_len, "param '%s': spec has unknown type %d", s->name, (int)s->type);
    return APEX_E_INVALID_PARAMS;
  }
  if (!apex__param_type_matches(s->type, v)) {
    say(why, why_len, "param '%s': want %s, got %s", s->name, want, apex__json_kind(v));
    return APEX_E_INVALID_PARAMS;
  }
  switch (s->type) {
    case APEX_PARAM_INT:
    case APEX_PARAM_NUMBER: return check_bounds_num(s, v, why, why_len);
    case APEX_PARAM_STRING: return check_bounds_len(s, json_string_length(v), why, why_len);
    case APEX_PARAM_ARRAY: return check_bounds_len(s, json_array_size(v), why, why_len);
    default: return APEX_OK;
  }
}

static const apex_param_spec_t *find_spec(const apex_action_desc_t *a, const char *name) {
  for (size_t i = 0; i < a->n_params; i++)
    if (a->params[i].name && strcmp(a->params[i].name, name) == 0) return &a->params[i];
  return NULL;
}

/* The value a param takes: a deep copy of the given one, or its parsed
 * default, or NULL with APEX_OK when it has neither. */
static int resolve(const apex_param_spec_t *s, const json_t *given, json_t **out, char *why,
                   size_t why_len) {
  *out = NULL;
  if (given) {
    *out = json_deep_copy(given);
    return *out ? APEX_OK : APEX_E_NOMEM;
  }
  if (s->required) {
    say(why, why_len, "param '%s' is required", s->name);
    return APEX_E_INVALID_PARAMS;
  }
  if (!s->default_json) return APEX_OK;
  json_error_t jerr;
  *out = json_loads(s->default_json, JSON_DECODE_ANY, &jerr);
  if (*out) return APEX_OK;
  if (json_error_code(&jerr) == json_error_out_of_memory) return APEX_E_NOMEM;
  say(why, why_len, "param '%s': default does not parse: %s", s->name, jerr.text);
  return APEX_E_INVALID_PARAMS;
}

int apex__params_validate(const apex_action_desc_t *a, json_t *params, json_t **out, char *why,
                          size_t why_len) {
  if (why && why_len) why[0] = '\0';
  if (!out || !a || (a->n_params && !a->params)) {
    say(why, why_len, "params: bad arguments");
    return APEX_E_INVALID;
  }
  *out = NULL;
  if (params && !json_is_object(params)) {
    say(why, why_len, "params: want object, got %s", apex__json_kind(params));
    return APEX_E_INVALID_PARAMS;
  }
  /* Unknown names first: a typo ("stepz") would otherwise be reported as
   * the declared param it misspells being required, hiding the real cause. */
  if (params) {
    const char *key;
    json_t *v;
    json_object_foreach(params, key, v) {
      if (!find_spec(a, key)) {
        say(why, why_len, "unknown param '%.64s'", key);
        return APEX_E_INVALID_PARAMS;
      }
    }
  }
  json_t *res = json_object();
  if (!res) return APEX_E_NOMEM;
  for (size_t i = 0; i < a->n_params; i++) {
    const apex_param_spec_t *s = &a->params[i];
    json_t *given = params ? json_object_get(params, s->name) : NULL;
    int rc = given ? check_value(s, given, why, why_len) : APEX_OK;
    json_t *v = NULL;
    if (rc == APEX_OK) rc = resolve(s, given, &v, why, why_len);
    if (rc == APEX_OK && v && json_object_set_new(res, s->name, v) != 0) rc = APEX_E_NOMEM;
    if (rc != APEX_OK) {
      if (rc == APEX_E_NOMEM) say(why, why_len, "out of memory");
      json_decref(res);
      return rc;
    }
  }
  *out = res;
  return APEX_OK;
}
