/* Progress updates (plan task 3.1.1): the validator every update passes
 * before delivery, and the immutable snapshot (apex_progress_t) the host
 * receives. It owns no shared state: validation is a pure function of its
 * input, and a snapshot is never written after apex__progress_new returns,
 * so any number of threads may read one; only its reference count is
 * touched concurrently, and that is atomic. What can fail: validation
 * (APEX_E_INVALID with a reason naming the exact place, e.g.
 * "sub_tasks[0].sub_tasks[2].percentage: 101 is outside [0, 100]") and
 * allocation (apex__progress_new / apex_progress_to_json return NULL).
 *
 * The rules, shared by the JSON form and the C form (apex_progress_update_t):
 * - percentage: a number (integer or real), finite, in [0, 100]; required.
 * - message: absent, JSON null, C NULL, or valid UTF-8 (no NUL bytes, no
 *   overlongs, surrogates or code points above U+10FFFF) of at most
 *   APEX_PROGRESS_MESSAGE_MAX bytes.
 * - status: absent / C NULL, or one of the known statuses listed in apex.h.
 * - details: absent / C NULL, or an object within the limits on values of
 *   include/apex/plugin.h (depth, cycles, UTF-8, size; core/value.c), the
 *   details of the update and of all its sub-tasks counted together.
 * - sub_tasks: absent / C NULL, or an array of objects {"name": non-empty
 *   UTF-8 string of at most 128 bytes, "percentage", "status"?, "message"?,
 *   "weight"?: finite number > 0, "details"?, "sub_tasks"?}. The elements of
 *   the update's own sub_tasks are at depth 1; depth APEX_PROGRESS_MAX_DEPTH
 *   is the deepest allowed, and the tree holds at most 1000 sub-tasks.
 * - Any other key, at the top or in a sub-task, is rejected by name: the
 *   shape is closed so that a typo ("percent") is an error, not a silent
 *   no-op. Free-form data belongs in "details".
 * A node update (apex_ctx_progress_node) follows the same rules for its
 * percentage, status and message; its reasons name it "node[5].status",
 * or plainly "status" for APEX_PROGRESS_ROOT (the task itself).
 * Reasons echo at most 32 bytes of a caller's string (an unknown status or
 * key), with anything but printable ASCII replaced by '?', so a hostile
 * plugin cannot write control characters into the host's logs through us.
 *
 * Snapshot getters on NULL return 0, 0.0, "" (message), "" (status), and
 * NULL for details and sub_tasks; apex_progress_to_json(NULL) is NULL. */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/progress_internal.h"
#include "core/utf8.h"
#include "core/value.h"

#define NAME_MAX_BYTES 128
#define MAX_NODES 1000
/* Room for the deepest path: 9 levels of "sub_tasks[1000]." plus a field. */
#define PATH_CAP 320

struct apex_progress {
  atomic_size_t refs;
  uint64_t seq;
  double percentage;
  const char *message; /* both point into text[] */
  const char *status;
  json_t *details;   /* an object, owned */
  json_t *sub_tasks; /* an array, owned */
  char text[];       /* message NUL status NUL: one allocation per snapshot */
};

/* "pending": a sub-task not started yet (a tree is often declared whole,
 * before any of it runs). Accepted wherever a status is, like the rest. */
static const char *const known_statuses[] = {
    "running",    "completed", "error",  "milestone_reached", "pending", "queued",
    "retry_wait", "succeeded", "failed", "cancelled",         "timed_out", "scheduled",
};

/* ------------------------------------------------------------- validation */

typedef struct vctx {
  char *why;
  size_t why_len;
  apex__value_budget_t budget; /* left for the update's details, all together */
  size_t nodes;    /* sub-tasks seen so far in the whole tree */
  /* Where the walk is: the index at each level of "sub_tasks[i]." nesting,
   * spelled out only when a reason needs it (a valid tree of 1000 nodes
   * would otherwise pay 1000 snprintf calls); or, for a node update, its
   * place ("node[5]") in node. */
  int depth;
  size_t at[APEX_PROGRESS_MAX_DEPTH + 1];
  const char *node;
} vctx_t;

static void vctx_init(vctx_t *v, char *why, size_t why_len) {
  v->why = why_len ? why : NULL;
  v->why_len = why ? why_len : 0;
  v->budget = (apex__value_budget_t)APEX__VALUE_BUDGET_INIT;
  v->nodes = 0;
  v->depth = 0;
  v->node = NULL;
  if (v->why) v->why[0] = '\0';
}

/* Writes the walk's place into out (PATH_CAP bytes): "" at the top,
 * "sub_tasks[0].sub_tasks[2]" in a tree. Returns: its length. */
static size_t path_of(const vctx_t *v, char *out) {
  size_t len = 0;
  out[0] = '\0';
  if (v->node) return (size_t)snprintf(out, PATH_CAP, "%s", v->node);
  for (int i = 0; i < v->depth && len < PATH_CAP; i++) {
    int n = snprintf(out + len, PATH_CAP - len, "%ssub_tasks[%zu]", i ? "." : "", v->at[i]);
    len = n < 0 || (size_t)n >= PATH_CAP - len ? PATH_CAP - 1 : len + (size_t)n;
  }
  return len;
}

/* Writes "<path>.<field>: <reason>" to why. field NULL: the place is the
 * path itself (an array element); with an empty path too, "update". */
static apex_status_t vfail(vctx_t *v, const char *field, const char *fmt, ...) APEX_PRINTF(3, 4);
static apex_status_t vfail(vctx_t *v, const char *field, const char *fmt, ...) {
  if (!v->why) return APEX_E_INVALID;
  char path[PATH_CAP];
  size_t path_len = path_of(v, path);
  if (!field && !path_len) field = "update";
  char place[PATH_CAP + 32];
  snprintf(place, sizeof place, "%s%s%s", path, path_len && field ? "." : "", field ? field : "");
  va_list ap;
  va_start(ap, fmt);
  apex__reasonv(v->why, v->why_len, place, fmt, ap);
  va_end(ap);
  return APEX_E_INVALID;
}

static int status_known_n(const char *s, size_t len) {
  for (size_t i = 0; i < sizeof known_statuses / sizeof known_statuses[0]; i++)
    if (strlen(known_statuses[i]) == len && memcmp(known_statuses[i], s, len) == 0) return 1;
  return 0;
}

int apex_progress_status_is_known(const char *status) {
  return status ? status_known_n(status, strlen(status)) : 0;
}

static apex_status_t check_pct(vctx_t *v, const char *field, double d) {
  if (!isfinite(d)) return vfail(v, field, "not finite");
  if (!(d >= 0.0 && d <= 100.0)) {
    char num[40];
    apex__fmt_num(num, sizeof num, d);
    return vfail(v, field, "%s is outside [0, 100]", num);
  }
  return APEX_OK;
}

static apex_status_t check_pct_json(vctx_t *v, const char *field, const json_t *j) {
  if (!j) return vfail(v, field, "required");
  if (!json_is_number(j)) return vfail(v, field, "want number, got %s", apex__json_kind(j));
  return check_pct(v, field, json_number_value(j));
}

static apex_status_t check_text(vctx_t *v, const char *field, const char *s, size_t len,
                                size_t max) {
  if (len > max) return vfail(v, field, "%zu bytes, longer than %zu", len, max);
  size_t bad = apex__utf8_bad_at(s, len);
  if (bad < len) return vfail(v, field, "not valid UTF-8 at byte %zu", bad);
  return APEX_OK;
}

static apex_status_t check_message_json(vctx_t *v, const json_t *j) {
  if (!j || json_is_null(j)) return APEX_OK;
  if (!json_is_string(j)) return vfail(v, "message", "want string, got %s", apex__json_kind(j));
  return check_text(v, "message", json_string_value(j), json_string_length(j),
                    APEX_PROGRESS_MESSAGE_MAX);
}

static apex_status_t check_status(vctx_t *v, const char *s, size_t len) {
  if (status_known_n(s, len)) return APEX_OK;
  char q[36];
  apex__echo(q, sizeof q, s, len);
  return vfail(v, "status", "unknown status '%s'", q);
}

static apex_status_t check_status_json(vctx_t *v, const json_t *j) {
  if (!j) return APEX_OK;
  if (!json_is_string(j)) return vfail(v, "status", "want string, got %s", apex__json_kind(j));
  return check_status(v, json_string_value(j), json_string_length(j));
}

/* Details are free-form, so they follow the rules for any value a plugin
 * hands over (core/value.c): checked here, before anything copies them. */
static apex_status_t check_details(vctx_t *v, const json_t *j) {
  if (!j) return APEX_OK;
  if (!json_is_object(j)) return vfail(v, "details", "want object, got %s", apex__json_kind(j));
  apex__value_budget_t before = v->budget;
  if (apex__value_check(j, NULL, &v->budget, NULL, 0) == APEX_OK) return APEX_OK;
  if (!v->why) return APEX_E_INVALID;
  /* Only now the name of the place, so a valid update pays no snprintf. */
  char path[PATH_CAP], where[PATH_CAP + 8];
  size_t path_len = path_of(v, path);
  snprintf(where, sizeof where, "%s%sdetails", path, path_len ? "." : "");
  v->budget = before;
  return apex__value_check(j, where, &v->budget, v->why, v->why_len);
}

static apex_status_t check_weight(vctx_t *v, const json_t *j) {
  if (!j) return APEX_OK;
  if (!json_is_number(j)) return vfail(v, "weight", "want number, got %s", apex__json_kind(j));
  double d = json_number_value(j);
  if (!isfinite(d)) return vfail(v, "weight", "not finite");
  if (!(d > 0.0)) {
    char num[40];
    apex__fmt_num(num, sizeof num, d);
    return vfail(v, "weight", "%s is not > 0", num);
  }
  return APEX_OK;
}

/* Rejects the first key of obj not in allowed (NULL-terminated). Keys are
 * compared with their length, so "name\0x" is not taken for "name". */
static apex_status_t check_keys(vctx_t *v, const json_t *obj, const char *const *allowed) {
  json_t *o = (json_t *)obj; /* the iterator API is not const; we only read */
  for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it)) {
    const char *key = json_object_iter_key(it);
    size_t klen = json_object_iter_key_len(it);
    int ok = 0;
    for (size_t i = 0; allowed[i] && !ok; i++)
      ok = strlen(allowed[i]) == klen && memcmp(allowed[i], key, klen) == 0;
    if (!ok) {
      char q[36];
      apex__echo(q, sizeof q, key, klen);
      return vfail(v, NULL, "unknown key '%s'", q);
    }
  }
  return APEX_OK;
}

static apex_status_t check_sub_tasks(vctx_t *v, const json_t *j, int depth);

/* A sub-task's members, in the order they are checked. */
enum { F_NAME, F_PCT, F_STATUS, F_MESSAGE, F_WEIGHT, F_DETAILS, F_SUB_TASKS, N_FIELDS };
static const char *const node_keys[] = {"name",    "percentage", "status",    "message",
                                        "weight",  "details",    "sub_tasks", NULL};

/* Returns: the F_* of a member's key, or N_FIELDS for an unknown key. */
static int field_of(const char *key, size_t len) {
  static const unsigned char lens[N_FIELDS] = {4, 10, 6, 7, 6, 7, 9};
  for (int f = 0; f < N_FIELDS; f++)
    if (lens[f] == len && node_keys[f][0] == key[0] && memcmp(node_keys[f], key, len) == 0)
      return f;
  return N_FIELDS;
}

static apex_status_t check_node(vctx_t *v, const json_t *n, int depth) {
  if (depth > APEX_PROGRESS_MAX_DEPTH)
    return vfail(v, NULL, "nested deeper than %d levels", APEX_PROGRESS_MAX_DEPTH);
  if (++v->nodes > MAX_NODES) return vfail(v, NULL, "more than %d sub-tasks in the tree", MAX_NODES);
  if (!json_is_object(n)) return vfail(v, NULL, "want object, got %s", apex__json_kind(n));

  /* One pass over the members (a tree of 1000 sub-tasks is checked per
   * report: seven lookups a node cost more than the rest of the check);
   * the checks then run in the order above, and an unknown key, the first
   * one met, is reported last, as check_keys does for the update. */
  const json_t *f[N_FIELDS] = {0};
  const char *unknown = NULL;
  size_t unknown_len = 0;
  json_t *o = (json_t *)n; /* the iterator API is not const; we only read */
  for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it)) {
    const char *key = json_object_iter_key(it);
    size_t klen = json_object_iter_key_len(it);
    int k = klen ? field_of(key, klen) : N_FIELDS;
    if (k < N_FIELDS) {
      f[k] = json_object_iter_value(it);
    } else if (!unknown) {
      unknown = key;
      unknown_len = klen;
    }
  }
  const json_t *name = f[F_NAME];
  if (!name) return vfail(v, "name", "required");
  if (!json_is_string(name)) return vfail(v, "name", "want string, got %s", apex__json_kind(name));
  if (json_string_length(name) == 0) return vfail(v, "name", "empty");
  apex_status_t rc;
  if ((rc = check_text(v, "name", json_string_value(name), json_string_length(name),
                       NAME_MAX_BYTES)) ||
      (rc = check_pct_json(v, "percentage", f[F_PCT])) ||
      (rc = check_status_json(v, f[F_STATUS])) ||
      (rc = check_message_json(v, f[F_MESSAGE])) ||
      (rc = check_weight(v, f[F_WEIGHT])) ||
      (rc = check_details(v, f[F_DETAILS])) ||
      (rc = check_sub_tasks(v, f[F_SUB_TASKS], depth)))
    return rc;
  if (unknown) {
    char q[36];
    apex__echo(q, sizeof q, unknown, unknown_len);
    return vfail(v, NULL, "unknown key '%s'", q);
  }
  return APEX_OK;
}

/* depth: that of the node holding j (0 for the update itself). */
static apex_status_t check_sub_tasks(vctx_t *v, const json_t *j, int depth) {
  if (!j) return APEX_OK;
  if (!json_is_array(j)) return vfail(v, "sub_tasks", "want array, got %s", apex__json_kind(j));
  for (size_t i = 0; i < json_array_size(j); i++) {
    /* depth < APEX_PROGRESS_MAX_DEPTH here: check_node refuses anything
     * deeper before it looks at its children. */
    v->at[v->depth++] = i;
    apex_status_t rc = check_node(v, json_array_get(j, i), depth + 1);
    v->depth--;
    if (rc) return rc;
  }
  return APEX_OK;
}

static const char *const update_keys[] = {"percentage", "message",   "status",
                                          "details",    "sub_tasks", NULL};

apex_status_t apex_progress_validate(const json_t *update, char *why, size_t why_len) {
  vctx_t v;
  vctx_init(&v, why, why_len);
  if (!update) return vfail(&v, "update", "NULL");
  if (!json_is_object(update)) return vfail(&v, "update", "want object, got %s", apex__json_kind(update));
  apex_status_t rc;
  if ((rc = check_pct_json(&v, "percentage", json_object_get(update, "percentage"))) ||
      (rc = check_message_json(&v, json_object_get(update, "message"))) ||
      (rc = check_status_json(&v, json_object_get(update, "status"))) ||
      (rc = check_details(&v, json_object_get(update, "details"))) ||
      (rc = check_sub_tasks(&v, json_object_get(update, "sub_tasks"), 0)))
    return rc;
  return check_keys(&v, update, update_keys);
}

apex_status_t apex__progress_node_validate(size_t index, double pct, const char *status,
                                          const char *msg, char *why, size_t why_len) {
  vctx_t v;
  vctx_init(&v, why, why_len);
  char place[40];
  if (index != APEX_PROGRESS_ROOT) {
    snprintf(place, sizeof place, "node[%zu]", index);
    v.node = place;
  }
  apex_status_t rc;
  if ((rc = check_pct(&v, "percentage", pct))) return rc;
  if (status && (rc = check_status(&v, status, strlen(status)))) return rc;
  if (msg && (rc = check_text(&v, "message", msg, strlen(msg), APEX_PROGRESS_MESSAGE_MAX)))
    return rc;
  return APEX_OK;
}

apex_status_t apex_progress_update_validate(const apex_progress_update_t *u, char *why,
                                            size_t why_len) {
  vctx_t v;
  vctx_init(&v, why, why_len);
  if (!u) return vfail(&v, "update", "NULL");
  apex_status_t rc;
  if ((rc = check_pct(&v, "percentage", u->percentage))) return rc;
  if (u->message && (rc = check_text(&v, "message", u->message, strlen(u->message),
                                     APEX_PROGRESS_MESSAGE_MAX)))
    return rc;
  if (u->status && (rc = check_status(&v, u->status, strlen(u->status)))) return rc;
  if ((rc = check_details(&v, u->details))) return rc;
  return check_sub_tasks(&v, u->sub_tasks, 0);
}

/* --------------------------------------------------------------- snapshot */

apex_progress_t *apex__progress_new(uint64_t seq, double percentage, const char *message,
                                    const char *status, json_t *details, json_t *sub_tasks) {
  if (!message) message = "";
  if (!status) status = "running";
  size_t mlen = strlen(message), slen = strlen(status);
  apex_progress_t *p = NULL;
  if (!details && !(details = json_object())) goto fail;
  if (!sub_tasks && !(sub_tasks = json_array())) goto fail;
  if (mlen > SIZE_MAX / 4 || slen > SIZE_MAX / 4) goto fail;
  p = malloc(sizeof *p + mlen + 1 + slen + 1);
  if (!p) goto fail;
  atomic_init(&p->refs, 1);
  p->seq = seq;
  p->percentage = percentage;
  memcpy(p->text, message, mlen + 1);
  memcpy(p->text + mlen + 1, status, slen + 1);
  p->message = p->text;
  p->status = p->text + mlen + 1;
  p->details = details;
  p->sub_tasks = sub_tasks;
  return p;
fail:
  json_decref(details);
  json_decref(sub_tasks);
  return NULL;
}

uint64_t apex_progress_seq(const apex_progress_t *p) { return p ? p->seq : 0; }
double apex_progress_percentage(const apex_progress_t *p) { return p ? p->percentage : 0.0; }
const char *apex_progress_message(const apex_progress_t *p) { return p ? p->message : ""; }
const char *apex_progress_status(const apex_progress_t *p) { return p ? p->status : ""; }
const json_t *apex_progress_details(const apex_progress_t *p) { return p ? p->details : NULL; }
const json_t *apex_progress_sub_tasks(const apex_progress_t *p) {
  return p ? p->sub_tasks : NULL;
}

json_t *apex_progress_to_json(const apex_progress_t *p) {
  if (!p) return NULL;
  json_t *o = json_object();
  if (!o) return NULL;
  /* Copies, not references, of details and sub_tasks: the caller may modify
   * what we return, while other threads read the same snapshot, and jansson
   * objects are not safe to mutate and read at once. Sharing would also tie
   * correctness to jansson's refcounts being atomic, which depends on how it
   * was built (JSON_HAVE_ATOMIC_BUILTINS). */
  if (json_object_set_new(o, "seq", json_integer((json_int_t)p->seq)) ||
      json_object_set_new(o, "percentage", json_real(p->percentage)) ||
      json_object_set_new(o, "status", json_string(p->status)) ||
      json_object_set_new(o, "message", json_string(p->message)) ||
      json_object_set_new(o, "details", json_deep_copy(p->details)) ||
      json_object_set_new(o, "sub_tasks", json_deep_copy(p->sub_tasks))) {
    json_decref(o);
    return NULL;
  }
  return o;
}

apex_progress_t *apex_progress_ref(apex_progress_t *p) {
  if (p) atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
  return p;
}

void apex_progress_unref(apex_progress_t *p) {
  if (!p) return;
  /* acq_rel: the last owner must see every other owner's reads finish
   * before it frees. */
  if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1) return;
  json_decref(p->details);
  json_decref(p->sub_tasks);
  free(p);
}
