/* Loading one plugin file: dlopen, find apex_plugin_entry, read and check the
 * descriptor it returns, run init. The descriptor is foreign memory built by
 * someone else's compiler from some version of plugin.h, so it is read
 * defensively: the first two fields (abi_version, struct_size) before
 * anything else, then at most struct_size bytes into a zeroed copy of this
 * build's struct, so fields an older plugin lacks read as zero and fields a
 * newer one appended are never touched. The actions array is read the same
 * way, one element per action_size bytes (the plugin's sizeof, or 0.1.0's
 * for a descriptor that predates the field), into a zeroed copy at this
 * build's size; every check runs on the copies. Every check names the file
 * and the field, since the reader of the message is a plugin author with a
 * bad build. The rules: docs/abi.md.
 *
 * No global state, no locks: loads of distinct files may run on any threads
 * at once (dlopen/dlerror are thread-safe in glibc; dlerror is per thread).
 * init runs on the loading thread, shutdown on the unloading one.
 *
 * What can fail: the file (missing, not ELF, no entry symbol), the descriptor
 * (ABI, size, any field), init, and memory. On every failure everything is
 * undone: the handle closed, copies freed, shutdown not called (init either
 * never ran or failed). */
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/abi.h"
#include "core/error.h"
#include "core/policy.h"
#include "plugin/loader.h"

/* The v1 ABI needs every field up to n_actions; anything shorter cannot be
 * a plugin at all. Larger than this is surely garbage, not a newer layout.
 * The same bounds hold for one action. */
#define DESC_MIN_SIZE APEX__PLUGIN_DESC_V1_MIN
#define DESC_MAX_SIZE (64u * 1024u)
#define MAX_ACTIONS 1024u
#define MAX_PARAMS 64u
#define NAME_MAX_LEN 64u

/* Builds a load error "FILE: <reason>" with where->plugin once the plugin's
 * name is known to be sane. */
static int load_fail(apex_error_t **err, int code, const char *file, const char *plugin,
                     const char *action, const char *fmt, ...) APEX_PRINTF(6, 7);
static int load_fail(apex_error_t **err, int code, const char *file, const char *plugin,
                     const char *action, const char *fmt, ...) {
  if (!err) return code;
  char reason[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  apex__where_t where = {.plugin = plugin, .action = action};
  return apex__error_put(err, apex__error_new(code, &where, NULL, "%s: %s", file, reason));
}

int apex__name_valid(const char *s) {
  if (!s) return 0;
  size_t n = strnlen(s, NAME_MAX_LEN + 1);
  if (n == 0 || n > NAME_MAX_LEN) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return 0;
  }
  return 1;
}

/* Context threaded through the checks so each message can name the file,
 * the plugin and the action without long argument lists. */
typedef struct check {
  const char *file;
  const char *plugin; /* NULL until the name is validated */
  const char *action; /* NULL until the action's name is validated */
  apex_error_t **err;
} check_t;

static int bad(const check_t *c, const char *fmt, ...) APEX_PRINTF(2, 3);
static int bad(const check_t *c, const char *fmt, ...) {
  if (!c->err) return APEX_E_PLUGIN_LOAD;
  char reason[640];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  if (c->action)
    return load_fail(c->err, APEX_E_PLUGIN_LOAD, c->file, c->plugin, c->action, "action '%s': %s",
                     c->action, reason);
  return load_fail(c->err, APEX_E_PLUGIN_LOAD, c->file, c->plugin, NULL, "%s", reason);
}

static int finite_nonneg(double d) { return isfinite(d) && d >= 0; }

/* The default must be something the action would itself accept: parse it,
 * check its type here (for the clearer "is not an int"), then let the params
 * validator judge bounds exactly as it will at submit time. */
static int check_default(const check_t *c, const apex_param_spec_t *s) {
  json_error_t jerr;
  json_t *v = json_loads(s->default_json, JSON_DECODE_ANY, &jerr);
  if (!v) {
    if (json_error_code(&jerr) == json_error_out_of_memory) return APEX_E_NOMEM;
    return bad(c, "param '%s': default '%.200s' is not valid JSON: %s", s->name, s->default_json,
               jerr.text);
  }
  const char *tn = apex__param_type_name(s->type);
  if (!apex__param_type_matches(s->type, v)) {
    json_decref(v);
    int vowel = tn[0] == 'a' || tn[0] == 'i' || tn[0] == 'o';
    return bad(c, "param '%s': default '%.200s' is not %s %s", s->name, s->default_json,
               vowel ? "an" : "a", tn);
  }
  apex_param_spec_t one = *s;
  one.required = 0;
  one.default_json = NULL;
  apex_action_desc_t probe = {.name = "probe", .params = &one, .n_params = 1};
  json_t *in = json_object();
  if (!in || json_object_set_new(in, s->name, v) != 0) { /* set_new takes v, even failing */
    if (!in) json_decref(v);
    json_decref(in);
    return APEX_E_NOMEM;
  }
  json_t *out = NULL;
  char why[256];
  int rc = apex__params_validate(&probe, in, &out, why, sizeof why);
  json_decref(in);
  json_decref(out);
  if (rc == APEX_E_NOMEM) return rc;
  if (rc != APEX_OK) {
    /* why reads "param 'n': 500 is above ..."; the prefix is ours to skip. */
    size_t skip = strlen("param '") + strlen(s->name) + strlen("': ");
    const char *rest = strlen(why) > skip ? why + skip : why;
    return bad(c, "param '%s': default '%.200s' is out of bounds: %s", s->name, s->default_json,
               rest);
  }
  return APEX_OK;
}

static int check_param(const check_t *c, const apex_action_desc_t *a, size_t i) {
  const apex_param_spec_t *s = &a->params[i];
  if (!apex__name_valid(s->name))
    return bad(c, "param #%zu: name '%.80s' is not [a-z0-9_]+ of 1..64 bytes", i,
               s->name ? s->name : "(null)");
  for (size_t j = 0; j < i; j++)
    if (strcmp(a->params[j].name, s->name) == 0) return bad(c, "duplicate param '%s'", s->name);
  const char *tn = apex__param_type_name(s->type);
  if (!tn) return bad(c, "param '%s': type %d is unknown", s->name, (int)s->type);
  if (s->has_min || s->has_max) {
    if (s->type == APEX_PARAM_BOOL || s->type == APEX_PARAM_OBJECT)
      return bad(c, "param '%s': has_min/has_max set but type %s takes no bounds", s->name, tn);
    if (s->has_min && !isfinite(s->min))
      return bad(c, "param '%s': min is not finite", s->name);
    if (s->has_max && !isfinite(s->max))
      return bad(c, "param '%s': max is not finite", s->name);
    if (s->has_min && s->has_max && s->min > s->max)
      return bad(c, "param '%s': min %g is above max %g", s->name, s->min, s->max);
  }
  if (s->required && s->default_json)
    return bad(c, "param '%s': required but has a default_json", s->name);
  if (s->default_json) return check_default(c, s);
  return APEX_OK;
}

static int check_retry(const check_t *c, const apex_retry_policy_t *r) {
  char why[160];
  if (!apex__retry_policy_check(r, why, sizeof why)) return bad(c, "default_retry.%s", why);
  return APEX_OK;
}

/* acts is the normalized copy: every element this build's size. */
static int check_action(check_t *c, const apex_action_desc_t *acts, size_t i) {
  const apex_action_desc_t *a = &acts[i];
  c->action = NULL;
  if (!apex__name_valid(a->name))
    return bad(c, "action #%zu: name '%.80s' is not [a-z0-9_]+ of 1..64 bytes", i,
               a->name ? a->name : "(null)");
  for (size_t j = 0; j < i; j++)
    if (strcmp(acts[j].name, a->name) == 0) return bad(c, "duplicate action '%s'", a->name);
  c->action = a->name;
  if (!a->handler) return bad(c, "handler is NULL");
  if (a->kind != APEX_ACTION_BLOCKING && a->kind != APEX_ACTION_DEFERRED)
    return bad(c, "kind %d is neither BLOCKING nor DEFERRED", (int)a->kind);
  if (a->n_params > MAX_PARAMS)
    return bad(c, "n_params %zu is above the maximum %u", a->n_params, MAX_PARAMS);
  if (a->n_params > 0 && !a->params)
    return bad(c, "params is NULL but n_params is %zu", a->n_params);
  for (size_t k = 0; k < a->n_params; k++) {
    int rc = check_param(c, a, k);
    if (rc != APEX_OK) return rc;
  }
  if (!finite_nonneg(a->default_timeout_s) || a->default_timeout_s > APEX__MAX_TIMEOUT_S)
    return bad(c, "default_timeout_s %g is not in [0, %g]", a->default_timeout_s,
               APEX__MAX_TIMEOUT_S);
  /* The other three timeouts' defaults (docs/scheduling.md); zero in a
   * copy of an older layout. */
  const struct {
    const char *name;
    double v;
  } tmo[] = {{"schedule_to_start_s", a->schedule_to_start_s},
             {"start_to_close_s", a->start_to_close_s},
             {"heartbeat_timeout_s", a->heartbeat_timeout_s}};
  for (size_t k = 0; k < sizeof tmo / sizeof tmo[0]; k++)
    if (!finite_nonneg(tmo[k].v) || tmo[k].v > APEX__MAX_TIMEOUT_S)
      return bad(c, "%s %g is not in [0, %g]", tmo[k].name, tmo[k].v, APEX__MAX_TIMEOUT_S);
  /* The scheduler's defaults (0: none), bounded as a host's own limits. */
  if (a->max_concurrency > APEX_LIMIT_MAX)
    return bad(c, "max_concurrency %u is above %u", a->max_concurrency, APEX_LIMIT_MAX);
  if (a->key_concurrency > APEX_LIMIT_MAX)
    return bad(c, "key_concurrency %u is above %u", a->key_concurrency, APEX_LIMIT_MAX);
  return check_retry(c, &a->default_retry);
}

/* The stride of the plugin's actions array: its action_size if its
 * descriptor has the field and sets it, else 0.1.0's
 * sizeof(apex_action_desc_t). A zero action_size is what a plugin written
 * for 0.1.0 (".struct_size = sizeof(apex_plugin_desc_t)", no
 * APEX_PLUGIN_DESC_INIT) has once rebuilt against a newer header: its
 * actions have the layout of the header it was built with: 0.1.0's, or
 * the second one if its descriptor has the flags field appended with it
 * (docs/abi.md), so struct_size tells which layout a zero means.
 * Returns: APEX_OK, or a load error naming action_size. */
static int action_stride(const check_t *c, const apex_plugin_desc_t *d, size_t *stride) {
  if (d->struct_size < APEX__END_OF(apex_plugin_desc_t, action_size) || d->action_size == 0) {
    *stride = d->struct_size >= APEX__PLUGIN_DESC_V2_MIN ? APEX__ACTION_V2_SIZE
                                                         : APEX__ACTION_V1_SIZE;
    return APEX_OK;
  }
  size_t a = d->action_size;
  if (a < APEX__ACTION_V1_SIZE || a > DESC_MAX_SIZE)
    return bad(c, "action_size %zu is outside %zu..%u: set it to sizeof(apex_action_desc_t) "
               "(APEX_PLUGIN_DESC_INIT does)", a, (size_t)APEX__ACTION_V1_SIZE, DESC_MAX_SIZE);
  /* A compiler's sizeof keeps every element aligned; anything else is not
   * an array of this struct. */
  if (a % _Alignof(apex_action_desc_t))
    return bad(c, "action_size %zu is not a multiple of %zu", a,
               (size_t)_Alignof(apex_action_desc_t));
  *stride = a;
  return APEX_OK;
}

/* Reads the plugin's descriptor into p->desc/p->actions and checks it. */
static int read_desc(apex__plugin_t *p, const apex_plugin_desc_t *raw, apex_error_t **err) {
  const char *file = p->file;
  uint32_t head[2];
  memcpy(head, raw, sizeof head); /* abi_version, struct_size: nothing else yet */
  if (head[0] != APEX_PLUGIN_ABI)
    return load_fail(err, APEX_E_ABI_MISMATCH, file, NULL, NULL, "plugin ABI %u, host ABI %u",
                     head[0], (unsigned)APEX_PLUGIN_ABI);
  if (head[1] < DESC_MIN_SIZE || head[1] > DESC_MAX_SIZE)
    return load_fail(err, APEX_E_PLUGIN_LOAD, file, NULL, NULL,
                     "struct_size %u is outside %zu..%u (ABI %u)", head[1], DESC_MIN_SIZE,
                     DESC_MAX_SIZE, (unsigned)APEX_PLUGIN_ABI);
  size_t n = head[1] < sizeof p->desc ? head[1] : sizeof p->desc;
  memset(&p->desc, 0, sizeof p->desc);
  memcpy(&p->desc, raw, n);

  const apex_plugin_desc_t *d = &p->desc;
  check_t c = {.file = file, .err = err};
  if (!apex__name_valid(d->name))
    return bad(&c, "name '%.80s' is not [a-z0-9_]+ of 1..64 bytes", d->name ? d->name : "(null)");
  c.plugin = d->name;
  if (!d->version) return bad(&c, "version is NULL");
  if (d->n_actions < 1 || d->n_actions > MAX_ACTIONS)
    return bad(&c, "n_actions %zu is outside 1..%u", d->n_actions, MAX_ACTIONS);
  if (!d->actions) return bad(&c, "actions is NULL");
  if (d->flags)
    return bad(&c, "flags 0x%llx: no plugin flags are defined", (unsigned long long)d->flags);
  size_t stride = 0;
  int rc = action_stride(&c, d, &stride);
  if (rc != APEX_OK) return rc;
  /* Each element: what both builds know, the rest zero (calloc). */
  p->actions = calloc(d->n_actions, sizeof *p->actions);
  if (!p->actions) return apex__fail(err, APEX_E_NOMEM, "%s: out of memory", file);
  size_t n_copy = stride < sizeof *p->actions ? stride : sizeof *p->actions;
  for (size_t i = 0; i < d->n_actions; i++)
    memcpy(&p->actions[i], (const char *)d->actions + i * stride, n_copy);
  for (size_t i = 0; i < d->n_actions; i++) {
    rc = check_action(&c, p->actions, i);
    if (rc == APEX_E_NOMEM) return apex__fail(err, rc, "%s: out of memory", file);
    if (rc != APEX_OK) return rc;
  }
  /* Normalized to this build's layout, which is how hosts read it back
   * (apex_manager_plugin, apex_plugin_desc_action). */
  p->desc_size = p->desc.struct_size;
  p->action_stride = (uint32_t)stride;
  p->desc.struct_size = sizeof p->desc;
  p->desc.action_size = sizeof *p->actions;
  p->desc.actions = p->actions;
  /* And in 0.1.0's, for hosts built against it, which index actions[i] at
   * 0.1.0's stride (apex_manager_plugin's ABI-1 symbol). */
  p->actions_v1 = malloc(d->n_actions * APEX__ACTION_V1_SIZE);
  if (!p->actions_v1) return apex__fail(err, APEX_E_NOMEM, "%s: out of memory", file);
  for (size_t i = 0; i < d->n_actions; i++)
    memcpy(p->actions_v1 + i * APEX__ACTION_V1_SIZE, &p->actions[i], APEX__ACTION_V1_SIZE);
  p->desc_v1 = p->desc;
  p->desc_v1.action_size = (uint32_t)APEX__ACTION_V1_SIZE;
  p->desc_v1.actions = (const apex_action_desc_t *)(const void *)p->actions_v1;
  return APEX_OK;
}

/* Marks the shutdown hook owed once the plugin is usable: init succeeded, or
 * there is none. A plugin without init may still start threads (lazily, on
 * a first call) that its shutdown must join before dlclose. */
static int run_init(apex__plugin_t *p, const apex_host_api_t *api, apex_error_t **err) {
  if (!p->desc.init) {
    p->inited = 1;
    return APEX_OK;
  }
  char why[256] = "";
  int rc = p->desc.init(api, &p->state, why, sizeof why);
  why[sizeof why - 1] = '\0'; /* the plugin may have overrun the terminator */
  if (rc == 0) {
    p->inited = 1;
    return APEX_OK;
  }
  if (why[0])
    return load_fail(err, APEX_E_PLUGIN_LOAD, p->file, p->desc.name, NULL, "init failed: %s",
                     why);
  return load_fail(err, APEX_E_PLUGIN_LOAD, p->file, p->desc.name, NULL, "init returned %d", rc);
}

/* Copies the plugin's and its actions' names (checked by read_desc: short
 * and plain) into one block that outlives dlclose. Returns: APEX_OK or
 * APEX_E_NOMEM. */
static int copy_names(apex__plugin_t *p, apex_error_t **err) {
  size_t n = p->desc.n_actions, size = (n + 1) * sizeof(char *) + strlen(p->desc.name) + 1;
  for (size_t i = 0; i < n; i++) size += strlen(p->actions[i].name) + 1;
  const char **block = malloc(size);
  if (!block) return apex__fail(err, APEX_E_NOMEM, "%s: out of memory", p->file);
  char *at = (char *)(block + n + 1);
  for (size_t i = 0; i <= n; i++) {
    const char *s = i < n ? p->actions[i].name : p->desc.name;
    size_t len = strlen(s) + 1;
    memcpy(at, s, len);
    block[i] = at;
    at += len;
  }
  p->action_names = block;
  p->name_copy = block[n];
  return APEX_OK;
}

static void plugin_free(apex__plugin_t *p) {
  free((void *)p->action_names); /* and name_copy: one block */
  if (p->dl) dlclose(p->dl);
  free(p->actions);
  free(p->actions_v1);
  free(p->file);
  free(p);
}

void apex__plugin_free(apex__plugin_t *p) {
  if (p) plugin_free(p);
}

int apex__plugin_load(const char *file, const apex_host_api_t *api, apex__plugin_t **out,
                      apex_error_t **err) {
  if (out) *out = NULL;
  if (!file || !api || !out) return apex__fail(err, APEX_E_INVALID, "plugin load: NULL argument");
  apex__plugin_t *p = calloc(1, sizeof *p);
  if (!p || !(p->file = strdup(file))) {
    free(p);
    return apex__fail(err, APEX_E_NOMEM, "%s: out of memory", file);
  }
  /* A bare "foo.so" would make dlopen search the system library path; we
   * load files, never libraries by name, so anchor it to the cwd. */
  char *path = NULL;
  if (!strchr(file, '/') && asprintf(&path, "./%s", file) < 0) {
    plugin_free(p);
    return apex__fail(err, APEX_E_NOMEM, "%s: out of memory", file);
  }
  dlerror(); /* clear a stale message from an earlier call on this thread */
  p->dl = dlopen(path ? path : file, RTLD_NOW | RTLD_LOCAL);
  free(path);
  int rc;
  if (!p->dl) {
    const char *e = dlerror();
    rc = load_fail(err, APEX_E_PLUGIN_LOAD, file, NULL, NULL, "not a loadable shared object: %s",
                   e ? e : "unknown error");
    goto fail;
  }
  apex_plugin_entry_fn entry;
  /* dlsym returns void *; going through memcpy avoids the object-to-function
   * pointer cast ISO C leaves undefined. */
  void *sym = dlsym(p->dl, APEX_PLUGIN_ENTRY_SYMBOL);
  if (!sym) {
    rc = load_fail(err, APEX_E_PLUGIN_LOAD, file, NULL, NULL, "no %s symbol",
                   APEX_PLUGIN_ENTRY_SYMBOL);
    goto fail;
  }
  memcpy(&entry, &sym, sizeof entry);
  const apex_plugin_desc_t *raw = entry(api);
  if (!raw) {
    rc = load_fail(err, APEX_E_PLUGIN_LOAD, file, NULL, NULL, "%s returned NULL",
                   APEX_PLUGIN_ENTRY_SYMBOL);
    goto fail;
  }
  rc = read_desc(p, raw, err);
  if (rc == APEX_OK) rc = copy_names(p, err);
  if (rc == APEX_OK) rc = run_init(p, api, err);
  if (rc != APEX_OK) goto fail;
  *out = p;
  return APEX_OK;
fail:
  plugin_free(p);
  return rc;
}

void apex__plugin_unload(apex__plugin_t *p) {
  if (!p) return;
  if (p->inited && p->desc.shutdown) p->desc.shutdown(p->state);
  p->inited = 0;
  if (p->dl) dlclose(p->dl);
  p->dl = NULL;
}

const apex_action_desc_t *apex__plugin_action(const apex__plugin_t *p, const char *name) {
  if (!p || !name) return NULL;
  /* Every submit looks its action up: the first byte rules out most names
   * without a call to strcmp (W7's pend is its plugin's tenth). */
  for (size_t i = 0; i < p->desc.n_actions; i++)
    if (p->actions[i].name[0] == name[0] && strcmp(p->actions[i].name, name) == 0)
      return &p->actions[i];
  return NULL;
}
