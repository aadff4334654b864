/* What every store backend shares (store.h): records, the wall clock,
 * errors, and opening a backend by its uri. */
#include "store/store.h"

#include <limits.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

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
  if (strncmp(uri, "postgresql://", 13) == 0 || strncmp(uri, "postgres://", 11) == 0)
    return apex__store_postgres_open(uri, out, err);
  /* A scheme we do not know ("mysql://...") is refused rather than read
   * as a file name; a plain path has no "word:" prefix before a slash. */
  const char *colon = strchr(uri, ':');
  const char *slash = strchr(uri, '/');
  if (colon && (!slash || colon < slash) && colon != uri) {
    int letters = 1;
    for (const char *p = uri; p < colon; p++)
      if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '+')) letters = 0;
    if (letters)
      return apex__store_fail(err, APEX_E_INVALID,
                              "store '%s': unknown scheme (want sqlite:PATH, PATH, postgresql://... "
                              "or memory:)",
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

char *apex__sopts_ckey(const char *opts, int *bad) {
  if (!opts) return NULL;
  json_t *j = json_loads(opts, 0, NULL);
  if (!j) return NULL;
  /* durable.c writes "concurrency_key"; "key" is the short name a hand-made
   * row (a test, a worker's own submit) may use. */
  const char *k = json_string_value(json_object_get(j, "concurrency_key"));
  if (!k) k = json_string_value(json_object_get(j, "key"));
  char *d = k ? strdup(k) : NULL;
  if (k && !d) *bad = 1;
  json_decref(j);
  return d;
}

/* ------------------------------------------------- claim-time limits */

typedef struct slim_kc {
  char *key;
  uint64_t c;
} slim_kc_t;

struct apex__slimacct {
  const apex__slimit_t *lim;
  size_t n;
  uint64_t *cnt;   /* [i]: running rows in limit i's scope (not KEY NULL) */
  int key_default; /* index of the KEY NULL limit, -1: none */
  slim_kc_t *kc;   /* KEY NULL: running rows per key */
  size_t nkc, capkc;
};

apex__slimacct_t *apex__slimacct_new(const apex__slimit_t *limits, size_t n) {
  apex__slimacct_t *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->lim = limits;
  a->n = n;
  a->key_default = -1;
  if (n && !(a->cnt = calloc(n, sizeof *a->cnt))) {
    free(a);
    return NULL;
  }
  for (size_t i = 0; i < n; i++)
    if (limits[i].kind == APEX_SCOPE_KEY && !limits[i].name) a->key_default = (int)i;
  return a;
}

void apex__slimacct_free(apex__slimacct_t *a) {
  if (!a) return;
  for (size_t i = 0; i < a->nkc; i++) free(a->kc[i].key);
  free(a->kc);
  free(a->cnt);
  free(a);
}

/* Whether limit l (not KEY NULL) covers a row of plugin.action, key ckey. */
static int slim_applies(const apex__slimit_t *l, const char *plugin, const char *action,
                        const char *ckey) {
  switch (l->kind) {
    case APEX_SCOPE_GLOBAL:
      return 1;
    case APEX_SCOPE_PLUGIN:
      return l->name && strcmp(l->name, plugin) == 0;
    case APEX_SCOPE_ACTION: {
      size_t pl = strlen(plugin);
      return l->name && strncmp(l->name, plugin, pl) == 0 && l->name[pl] == '.' &&
             strcmp(l->name + pl + 1, action) == 0;
    }
    case APEX_SCOPE_KEY:
      return l->name && ckey && strcmp(l->name, ckey) == 0;
    default:
      return 0;
  }
}

/* The KEY NULL entry of ckey (made when make), or NULL: no default limit,
 * no key, a key with a limit of its own, or no memory (*bad). */
static slim_kc_t *slim_default(apex__slimacct_t *a, const char *ckey, int make, int *bad) {
  if (a->key_default < 0 || !ckey) return NULL;
  for (size_t i = 0; i < a->n; i++)
    if (a->lim[i].kind == APEX_SCOPE_KEY && a->lim[i].name && strcmp(a->lim[i].name, ckey) == 0)
      return NULL;
  for (size_t i = 0; i < a->nkc; i++)
    if (strcmp(a->kc[i].key, ckey) == 0) return &a->kc[i];
  if (!make) return NULL;
  if (a->nkc == a->capkc) {
    size_t c = a->capkc ? a->capkc * 2 : 8;
    slim_kc_t *nk = realloc(a->kc, c * sizeof *nk);
    if (!nk) {
      *bad = 1;
      return NULL;
    }
    a->kc = nk;
    a->capkc = c;
  }
  if (!(a->kc[a->nkc].key = strdup(ckey))) {
    *bad = 1;
    return NULL;
  }
  a->kc[a->nkc].c = 0;
  return &a->kc[a->nkc++];
}

int apex__slimacct_add(apex__slimacct_t *a, const char *plugin, const char *action,
                       const char *ckey, uint64_t count) {
  for (size_t i = 0; i < a->n; i++)
    if ((int)i != a->key_default && slim_applies(&a->lim[i], plugin, action, ckey))
      a->cnt[i] += count;
  int bad = 0;
  slim_kc_t *k = slim_default(a, ckey, 1, &bad);
  if (bad) return APEX_E_NOMEM;
  if (k) k->c += count;
  return APEX_OK;
}

int apex__slimacct_admit(apex__slimacct_t *a, const char *plugin, const char *action,
                         const char *ckey) {
  for (size_t i = 0; i < a->n; i++)
    if ((int)i != a->key_default && slim_applies(&a->lim[i], plugin, action, ckey) &&
        a->cnt[i] >= a->lim[i].max)
      return 0;
  int bad = 0;
  slim_kc_t *k = slim_default(a, ckey, 1, &bad);
  if (bad) return -1;
  if (k && k->c >= a->lim[a->key_default].max) return 0;
  for (size_t i = 0; i < a->n; i++)
    if ((int)i != a->key_default && slim_applies(&a->lim[i], plugin, action, ckey)) a->cnt[i]++;
  if (k) k->c++;
  return 1;
}

int apex__slimacct_global_full(const apex__slimacct_t *a) {
  for (size_t i = 0; i < a->n; i++)
    if (a->lim[i].kind == APEX_SCOPE_GLOBAL && a->cnt[i] >= a->lim[i].max) return 1;
  return 0;
}

int apex__slimacct_full_json(const apex__slimacct_t *a, char **plugins, char **actions,
                             char **keys) {
  *plugins = *actions = *keys = NULL;
  json_t *p = json_array(), *ac = json_array(), *k = json_array();
  int bad = !p || !ac || !k;
  for (size_t i = 0; !bad && i < a->n; i++) {
    const apex__slimit_t *l = &a->lim[i];
    if ((int)i == a->key_default || !l->name || a->cnt[i] < l->max) continue;
    json_t *to = l->kind == APEX_SCOPE_PLUGIN ? p : l->kind == APEX_SCOPE_ACTION ? ac
                 : l->kind == APEX_SCOPE_KEY  ? k : NULL;
    if (to && json_array_append_new(to, json_string(l->name)) != 0) bad = 1;
  }
  for (size_t i = 0; !bad && a->key_default >= 0 && i < a->nkc; i++)
    if (a->kc[i].c >= a->lim[a->key_default].max &&
        json_array_append_new(k, json_string(a->kc[i].key)) != 0)
      bad = 1;
  if (!bad) {
    *plugins = json_dumps(p, JSON_COMPACT);
    *actions = json_dumps(ac, JSON_COMPACT);
    *keys = json_dumps(k, JSON_COMPACT);
    bad = !*plugins || !*actions || !*keys;
  }
  json_decref(p);
  json_decref(ac);
  json_decref(k);
  if (bad) {
    free(*plugins);
    free(*actions);
    free(*keys);
    *plugins = *actions = *keys = NULL;
    return APEX_E_NOMEM;
  }
  return APEX_OK;
}

/* ------------------------------------------------- batch completion */

static long futex(_Atomic uint32_t *w, int op, uint32_t v) {
  return syscall(SYS_futex, (uint32_t *)w, op, v, NULL, NULL, 0);
}

void apex__sbatch_wait(apex__sbatch_t *b, uint32_t k) {
  /* A futex wait returns at once if the word moved meanwhile; EINTR or a
   * wake for nobody just loops. */
  _Atomic uint32_t *w = &b->done[k & 1];
  for (;;) {
    uint32_t v = atomic_load_explicit(w, memory_order_acquire);
    if ((int32_t)(v - k) >= 0) return;
    (void)futex(w, FUTEX_WAIT_PRIVATE, v);
  }
}

void apex__sbatch_done(apex__sbatch_t *b, uint32_t k, int waiters) {
  atomic_store_explicit(&b->done[k & 1], k, memory_order_release);
  if (waiters) (void)futex(&b->done[k & 1], FUTEX_WAKE_PRIVATE, INT_MAX);
}

/* ------------------------------------------------- same-process wake */

int apex__swake_init(apex__swake_t *w) {
  memset(w, 0, sizeof *w);
  pthread_condattr_t ca;
  if (pthread_condattr_init(&ca) != 0) return APEX_E_NOMEM;
  int ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
           pthread_cond_init(&w->cv, &ca) == 0;
  pthread_condattr_destroy(&ca);
  if (!ok) return APEX_E_NOMEM;
  if (pthread_mutex_init(&w->mu, NULL) != 0) {
    pthread_cond_destroy(&w->cv);
    return APEX_E_NOMEM;
  }
  return APEX_OK;
}

void apex__swake_destroy(apex__swake_t *w) {
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
}

void apex__swake_signal(apex__swake_t *w) {
  pthread_mutex_lock(&w->mu);
  w->sig++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

void apex__swake_wait(apex__swake_t *w, double timeout_s) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  if (timeout_s < 0) timeout_s = 0;
  if (timeout_s > 1e6) timeout_s = 1e6;
  long long ns = (long long)(timeout_s * 1e9) + until.tv_nsec;
  until.tv_sec += (time_t)(ns / 1000000000LL);
  until.tv_nsec = (long)(ns % 1000000000LL);
  pthread_mutex_lock(&w->mu);
  while (w->sig == w->seen)
    if (pthread_cond_timedwait(&w->cv, &w->mu, &until) != 0) break; /* ETIMEDOUT */
  w->seen = w->sig;
  pthread_mutex_unlock(&w->mu);
}
