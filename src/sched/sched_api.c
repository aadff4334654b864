/* The scheduler's public calls (include/apex/apex.h, "scheduling"):
 * setting a scope's concurrency limit, token bucket, max_queued bound, a
 * fairness key's weight, and reading a scope's figures. Each checks its
 * input first (an error naming the field), finds the scope (a plugin or
 * action through the registry, reg_mu; a key made on first use), then
 * changes it under pool_mu, where every pick reads it: a raised limit
 * moves waiting tasks to runnable and wakes workers at once, a lowered one
 * only stops new starts.
 *
 * Threads: any host thread (or a handler). Failure: APEX_E_INVALID naming
 * the field, APEX_E_NOMEM; nothing changes on failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/abi.h"
#include "core/error.h"
#include "core/utf8.h"
#include "sched/sched_priv.h"

/* What a scope argument names, resolved. */
typedef struct target {
  int kind;              /* APEX__SC_* */
  apex__plugin_t *p;     /* PLUGIN, ACTION */
  size_t action;         /* ACTION: its index */
  const char *key;       /* KEY: the name (NULL: the keys' default) */
} target_t;

static int key_ok(const char *k) {
  size_t n = strnlen(k, 256);
  return n >= 1 && n <= 255 && apex__utf8_valid(k, n);
}

static const char *const scope_names[] = {"APEX_SCOPE_GLOBAL", "APEX_SCOPE_PLUGIN",
                                          "APEX_SCOPE_ACTION", "APEX_SCOPE_KEY"};

/* Checks scope and name. Returns: APEX_OK with *tg, or APEX_E_INVALID
 * with *err naming the field. */
static int resolve(apex_manager_t *m, const char *call, apex_scope_t scope, const char *name,
                   target_t *tg, apex_error_t **err) {
  memset(tg, 0, sizeof *tg);
  if (!m) return apex__fail(err, APEX_E_INVALID, "%s: manager is NULL", call);
  if ((unsigned)scope > APEX_SCOPE_KEY)
    return apex__fail(err, APEX_E_INVALID,
                      "%s: scope %d: want APEX_SCOPE_GLOBAL, _PLUGIN, _ACTION or _KEY", call,
                      (int)scope);
  tg->kind = (int)scope;
  switch (scope) {
    case APEX_SCOPE_GLOBAL:
      if (name)
        return apex__fail(err, APEX_E_INVALID, "%s: name: want NULL for APEX_SCOPE_GLOBAL", call);
      return APEX_OK;
    case APEX_SCOPE_KEY:
      if (name && !key_ok(name))
        return apex__fail(err, APEX_E_INVALID,
                          "%s: name: a concurrency key is 1 to 255 bytes of UTF-8", call);
      tg->key = name;
      return APEX_OK;
    default: break;
  }
  if (!name)
    return apex__fail(err, APEX_E_INVALID, "%s: name: want a %s for %s", call,
                      scope == APEX_SCOPE_PLUGIN ? "plugin name" : "\"plugin.action\"",
                      scope_names[scope]);
  char plugin[80];
  const char *dot = strchr(name, '.');
  size_t n = scope == APEX_SCOPE_ACTION ? (dot ? (size_t)(dot - name) : 0) : strlen(name);
  if (scope == APEX_SCOPE_ACTION && (!dot || n == 0 || !dot[1]))
    return apex__fail(err, APEX_E_INVALID, "%s: name '%s': want \"plugin.action\"", call, name);
  if (n >= sizeof plugin)
    return apex__fail(err, APEX_E_INVALID, "%s: name: no loaded plugin has so long a name",
                      call);
  memcpy(plugin, name, n);
  plugin[n] = '\0';
  /* desc is the first member of a registered plugin's struct, which stays
   * until the manager goes. */
  const apex_plugin_desc_t *d = apex_manager_plugin_v2(m, plugin);
  if (!d)
    return apex__fail(err, APEX_E_INVALID, "%s: name: no plugin '%s' is loaded", call, plugin);
  tg->p = (apex__plugin_t *)(uintptr_t)d;
  if (scope == APEX_SCOPE_ACTION) {
    const apex_action_desc_t *a = apex__plugin_action(tg->p, dot + 1);
    if (!a)
      return apex__fail(err, APEX_E_INVALID, "%s: name: plugin '%s' has no action '%s'", call,
                        plugin, dot + 1);
    tg->action = (size_t)(a - tg->p->actions);
  }
  if (!apex__sched_pblock(m, tg->p)) return apex__fail(err, APEX_E_NOMEM, "out of memory");
  return APEX_OK;
}

/* Under pool_mu: the scope tg names (made for a key); NULL for the keys'
 * default, or on no memory (*nomem). */
static apex__scope_t *scope_locked(apex_manager_t *m, const target_t *tg, int make, int *nomem) {
  apex__sched_t *S = m->sched;
  *nomem = 0;
  switch (tg->kind) {
    case APEX__SC_GLOBAL: return &S->global;
    case APEX__SC_PLUGIN: return &atomic_load(&tg->p->sched)->plugin;
    case APEX__SC_ACTION: return &atomic_load(&tg->p->sched)->actions[tg->action];
    default: break;
  }
  if (!tg->key) return NULL;
  apex__scope_t *s = apex__sched_key_locked(S, tg->key, make);
  if (!s && make) *nomem = 1;
  return s;
}

apex_status_t apex_manager_set_concurrency(apex_manager_t *m, apex_scope_t scope,
                                           const char *name, uint32_t limit, apex_error_t **err) {
  target_t tg;
  int rc = resolve(m, "apex_manager_set_concurrency", scope, name, &tg, err);
  if (rc != APEX_OK) return rc;
  if (limit > APEX_LIMIT_MAX)
    return apex__fail(err, APEX_E_INVALID,
                      "apex_manager_set_concurrency: limit %u: at most %u (0: no limit)", limit,
                      APEX_LIMIT_MAX);
  int nomem;
  apex__lock(&m->pool_mu);
  apex__scope_t *s = scope_locked(m, &tg, 1, &nomem);
  if (nomem) {
    apex__unlock(&m->pool_mu);
    return apex__fail(err, APEX_E_NOMEM, "out of memory");
  }
  if (limit) apex__sched_holds_locked(m);
  if (s) {
    s->limit = limit;
    s->limit_set |= 1u;
    apex__sched_kick_all_locked(m, s, tg.kind);
  } else {
    m->sched->kd_limit = limit;
    apex__sched_key_default_changed_locked(m);
  }
  apex__unlock(&m->pool_mu);
  apex__pool_poke(m); /* a raised limit starts waiting work now */
  return APEX_OK;
}

apex_status_t apex_manager_set_rate(apex_manager_t *m, apex_scope_t scope, const char *name,
                                    double per_second, uint32_t burst, apex_error_t **err) {
  target_t tg;
  int rc = resolve(m, "apex_manager_set_rate", scope, name, &tg, err);
  if (rc != APEX_OK) return rc;
  if (!isfinite(per_second) || per_second < 0 || per_second > 1e9)
    return apex__fail(err, APEX_E_INVALID,
                      "apex_manager_set_rate: per_second %g: want 0 (none) to 1e9", per_second);
  if (per_second > 0 && (burst == 0 || burst > APEX_LIMIT_MAX))
    return apex__fail(err, APEX_E_INVALID, "apex_manager_set_rate: burst %u: want 1 to %u",
                      burst, APEX_LIMIT_MAX);
  int nomem;
  apex__lock(&m->pool_mu);
  apex__scope_t *s = scope_locked(m, &tg, 1, &nomem);
  if (nomem) {
    apex__unlock(&m->pool_mu);
    return apex__fail(err, APEX_E_NOMEM, "out of memory");
  }
  if (per_second > 0) {
    apex__sched_holds_locked(m);
    m->sched->rates++;
  }
  if (s) {
    if (s->rate <= 0) s->tb_ns = 0; /* a new bucket starts full */
    s->rate = per_second;
    s->burst = per_second > 0 ? burst : 0;
    if (s->tb_ns && s->tokens > s->burst) s->tokens = s->burst;
    s->limit_set |= 2u;
    apex__sched_rate_changed_locked(m, s);
  } else {
    m->sched->kd_rate = per_second;
    m->sched->kd_burst = per_second > 0 ? burst : 0;
    apex__sched_key_default_changed_locked(m);
  }
  apex__unlock(&m->pool_mu);
  return APEX_OK;
}

/* max_queued beyond this is taken for a mistake (a negative number cast). */
#define MAXQ_MAX ((size_t)1 << 40)

apex_status_t apex_manager_set_max_queued(apex_manager_t *m, apex_scope_t scope,
                                          const char *name, size_t max, apex_error_t **err) {
  target_t tg;
  int rc = resolve(m, "apex_manager_set_max_queued", scope, name, &tg, err);
  if (rc != APEX_OK) return rc;
  if (max > MAXQ_MAX)
    return apex__fail(err, APEX_E_INVALID,
                      "apex_manager_set_max_queued: max %zu: at most 2^40 (0: no bound)", max);
  int nomem;
  apex__lock(&m->pool_mu);
  apex__scope_t *s = scope_locked(m, &tg, 1, &nomem);
  if (nomem) {
    apex__unlock(&m->pool_mu);
    return apex__fail(err, APEX_E_NOMEM, "out of memory");
  }
  apex__sched_bounds_locked(m);
  if (s) {
    s->max_queued = max;
    s->limit_set |= 4u;
    if (tg.kind == APEX__SC_GLOBAL) m->sched->gmax_set = 1;
  } else {
    m->sched->kd_maxq = max;
  }
  /* A raised bound lets waiting submits in. */
  apex__cond_broadcast(&m->sched->room_cv);
  apex__unlock(&m->pool_mu);
  return APEX_OK;
}

apex_status_t apex_manager_set_weight(apex_manager_t *m, const char *fairness_key,
                                      uint32_t weight, apex_error_t **err) {
  if (!m) return apex__fail(err, APEX_E_INVALID, "apex_manager_set_weight: manager is NULL");
  if (!fairness_key || !key_ok(fairness_key))
    return apex__fail(err, APEX_E_INVALID,
                      "apex_manager_set_weight: fairness_key: want 1 to 255 bytes of UTF-8");
  if (weight > APEX_WEIGHT_MAX)
    return apex__fail(err, APEX_E_INVALID,
                      "apex_manager_set_weight: weight %u: at most %u (0: the default, 1)", weight,
                      APEX_WEIGHT_MAX);
  uint32_t w = weight ? weight : 1;
  weight_t *fresh = NULL;
  char *copy = NULL;
  if (!(fresh = malloc(sizeof *fresh)) || !(copy = strdup(fairness_key))) {
    free(fresh);
    return apex__fail(err, APEX_E_NOMEM, "out of memory");
  }
  apex__sched_t *S = m->sched;
  apex__lock(&m->pool_mu);
  weight_t *found = NULL;
  for (weight_t *x = S->weights; x; x = x->next)
    if (strcmp(x->key, fairness_key) == 0) found = x;
  if (found) {
    found->w = w;
  } else {
    fresh->key = copy;
    fresh->w = w;
    fresh->next = S->weights;
    S->weights = fresh;
    fresh = NULL;
    copy = NULL;
  }
  apex__sched_weight_locked(S, fairness_key, w);
  apex__unlock(&m->pool_mu);
  free(fresh);
  free(copy);
  return APEX_OK;
}

apex_status_t apex_manager_scope_stats(apex_manager_t *m, apex_scope_t scope, const char *name,
                                       apex_scope_stats_t *out) {
  if (!out || (scope == APEX_SCOPE_KEY && !name)) return APEX_E_INVALID;
  target_t tg;
  if (resolve(m, "apex_manager_scope_stats", scope, name, &tg, NULL) != APEX_OK)
    return APEX_E_INVALID;
  apex_scope_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  int nomem;
  apex__lock(&m->pool_mu);
  const apex__scope_t *s = scope_locked(m, &tg, 0, &nomem);
  if (s) {
    apex__scope_figures_t f;
    apex__sched_figures_locked(m, s, tg.kind, &f);
    st.scheduled = f.n_sched;
    st.queued = f.n_in - f.n_out;
    st.waiting_on_limit = f.n_limit;
    st.waiting_on_rate = f.n_rate;
    st.running = f.running;
  }
  apex__unlock(&m->pool_mu);
  return apex__struct_copy_out(out, &st, sizeof st, sizeof st) ? APEX_OK : APEX_E_INVALID;
}
