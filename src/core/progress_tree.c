/* A task's sub-task tree between deliveries: what apex_ctx_progress_node
 * changes one node of, what a full report's sub_tasks are merged into, and
 * what each delivered snapshot copies (exec/task.c keeps one per task that
 * reported a tree, in its progress slot).
 *
 * Why a tree of its own, and a merge: a plugin reporting per item used to
 * hand over its whole tree each time, and each report was validated and
 * deep-copied, even the many that coalescing then dropped before delivery
 * (about 0.7 ms per report for 1000 sub-tasks). Now the tree lives here,
 * in Apex's own JSON, with an index of its nodes in pre-order (node i's
 * object and its percentage, status and message values), so
 *   - one node's update (apex__ptree_set) is a bounds check and a write:
 *     the percentage is set in place (json_real_set), status and message
 *     only when they differ;
 *   - a full tree (apex__ptree_merge) is compared node by node and field by
 *     field; only fields that differ are copied, nodes added are copied in,
 *     nodes removed dropped. Nothing is allocated for an unchanged node;
 *   - the tree is copied once per delivery (apex__ptree_json), at the
 *     progress rate, not per report.
 * The plugin's own JSON is only read, during the call that hands it over:
 * jansson's reference counts are not safe to share across threads, so no
 * value of the plugin's is ever kept; every value here was made by Apex.
 *
 * Input is trusted: merge takes trees apex_progress_validate accepted (at
 * most APEX_PROGRESS_MAX_DEPTH levels, which bounds the recursion here, and
 * 1000 sub-tasks), set takes a known status and valid UTF-8.
 *
 * Threads: none of its own; the caller serializes every call on one tree
 * (the task's stripe lock). What can fail: allocation, reported as
 * APEX_E_NOMEM with the tree still valid (see progress_tree.h). */
#include <stdlib.h>
#include <string.h>

#include "core/progress_tree.h"

/* One sub-task: its object in the tree and the three values a node update
 * writes (NULL when the object has no such member). */
typedef struct pnode {
  json_t *obj, *pct, *status, *msg;
} pnode_t;

struct apex__ptree {
  json_t *root;   /* the top-level sub_tasks array, Apex's own */
  pnode_t *nodes; /* pre-order */
  size_t n, cap;
};

apex__ptree_t *apex__ptree_new(void) {
  apex__ptree_t *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  if (!(t->root = json_array())) {
    free(t);
    return NULL;
  }
  return t;
}

void apex__ptree_free(apex__ptree_t *t) {
  if (!t) return;
  json_decref(t->root);
  free(t->nodes);
  free(t);
}

size_t apex__ptree_size(const apex__ptree_t *t) { return t ? t->n : 0; }

json_t *apex__ptree_json(const apex__ptree_t *t) {
  return t ? json_deep_copy(t->root) : json_array();
}

/* ------------------------------------------------------------------ index */

static void index_node(pnode_t *p, json_t *obj) {
  p->obj = obj;
  p->pct = json_object_get(obj, "percentage");
  p->status = json_object_get(obj, "status");
  p->msg = json_object_get(obj, "message");
}

static size_t count_nodes(const json_t *arr) {
  size_t n = json_array_size(arr);
  for (size_t i = 0, len = n; i < len; i++)
    n += count_nodes(json_object_get(json_array_get(arr, i), "sub_tasks"));
  return n;
}

static void fill(apex__ptree_t *t, json_t *arr) {
  for (size_t i = 0; i < json_array_size(arr); i++) {
    json_t *obj = json_array_get(arr, i);
    index_node(&t->nodes[t->n++], obj);
    fill(t, json_object_get(obj, "sub_tasks"));
  }
}

/* Rebuilds the index after the tree's shape changed. On no memory the tree
 * is emptied, so the index never names a node that is not there. */
static apex_status_t reindex(apex__ptree_t *t) {
  size_t n = count_nodes(t->root);
  if (n > t->cap) {
    pnode_t *p = realloc(t->nodes, n * sizeof *p);
    if (!p) {
      json_array_clear(t->root);
      t->n = 0;
      return APEX_E_NOMEM;
    }
    t->nodes = p;
    t->cap = n;
  }
  t->n = 0;
  fill(t, t->root);
  return APEX_OK;
}

/* ------------------------------------------------------------------ merge */

typedef struct mwalk {
  apex__ptree_t *t;
  size_t idx;     /* pre-order position of the next node, while shaped as before */
  int structural; /* a node was added or removed: idx is void, reindex at the end */
  int nomem;
} mwalk_t;

static void merge_array(mwalk_t *w, json_t *dst, const json_t *src);

/* Returns: a copy of v (new), NULL on no memory. A scalar is copied
 * directly: json_deep_copy would allocate its table of parents for it. */
static json_t *copy_of(const json_t *v) {
  return json_is_object(v) || json_is_array(v) ? json_deep_copy(v) : json_copy((json_t *)v);
}

/* Copies src's value for key into d. Returns: 1 if set, 0 on no memory. */
static int set_copy(mwalk_t *w, json_t *d, const char *key, const json_t *v) {
  json_t *copy = copy_of(v);
  if (copy && json_object_set_new(d, key, copy) == 0) return 1; /* set_new took copy */
  w->nomem = 1;
  return 0;
}

static void merge_node(mwalk_t *w, json_t *d, const json_t *s) {
  size_t my = w->idx++;
  int changed = 0;
  size_t s_fields = 0;
  const json_t *ssub = NULL;
  json_t *sj = (json_t *)s; /* the iterator API is not const; s is only read */
  for (void *it = json_object_iter(sj); it; it = json_object_iter_next(sj, it)) {
    const char *key = json_object_iter_key(it);
    size_t klen = json_object_iter_key_len(it);
    const json_t *sv = json_object_iter_value(it);
    if (klen == 9 && memcmp(key, "sub_tasks", 9) == 0) {
      ssub = sv;
      continue;
    }
    s_fields++;
    json_t *dv = json_object_getn(d, key, klen);
    if (dv && json_equal(dv, (json_t *)sv)) continue;
    changed |= set_copy(w, d, key, sv);
  }
  json_t *dsub = json_object_get(d, "sub_tasks");
  if (json_object_size(d) - (dsub ? 1u : 0u) != s_fields) {
    /* d has a field s dropped (e.g. its message): drop it too. */
    const char *key;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(d, tmp, key, v) {
      if (strcmp(key, "sub_tasks") != 0 && !json_object_get(s, key)) {
        json_object_del(d, key);
        changed = 1;
      }
    }
  }
  /* Children come after their parent in pre-order, so a change of shape
   * below leaves this node's position as it was. */
  if (changed && !w->structural) index_node(&w->t->nodes[my], d);
  if (ssub && dsub) {
    merge_array(w, dsub, ssub);
  } else if (ssub) {
    w->structural = 1;
    set_copy(w, d, "sub_tasks", ssub);
  } else if (dsub) {
    w->structural = 1;
    json_object_del(d, "sub_tasks");
  }
}

static void merge_array(mwalk_t *w, json_t *dst, const json_t *src) {
  size_t n = json_array_size(src), m = json_array_size(dst);
  for (size_t i = 0; i < n && i < m; i++)
    merge_node(w, json_array_get(dst, i), json_array_get(src, i));
  if (m > n) w->structural = 1;
  while (m > n) json_array_remove(dst, --m);
  for (size_t i = m; i < n; i++) {
    w->structural = 1;
    json_t *copy = json_deep_copy(json_array_get(src, i));
    if (!copy || json_array_append_new(dst, copy) != 0) { /* append_new took copy */
      w->nomem = 1;
      return;
    }
  }
}

apex_status_t apex__ptree_merge(apex__ptree_t *t, const json_t *sub_tasks) {
  if (!sub_tasks || json_array_size(sub_tasks) == 0) {
    if (json_array_size(t->root) > 0) json_array_clear(t->root);
    t->n = 0;
    return APEX_OK;
  }
  mwalk_t w = {.t = t};
  merge_array(&w, t->root, sub_tasks);
  apex_status_t rc = w.structural ? reindex(t) : APEX_OK;
  return w.nomem ? APEX_E_NOMEM : rc;
}

/* -------------------------------------------------------------------- set */

/* Sets node p's string member key (cached in *slot) to s[0..len) unless it
 * holds that already. Returns: APEX_OK or APEX_E_NOMEM. */
static apex_status_t set_text(pnode_t *p, const char *key, json_t **slot, const char *s,
                              size_t len) {
  json_t *cur = *slot;
  if (json_is_string(cur)) {
    if (json_string_length(cur) == len && memcmp(json_string_value(cur), s, len) == 0)
      return APEX_OK;
    return json_string_setn_nocheck(cur, s, len) == 0 ? APEX_OK : APEX_E_NOMEM;
  }
  json_t *v = json_stringn_nocheck(s, len);
  if (!v || json_object_set_new(p->obj, key, v) != 0) return APEX_E_NOMEM; /* set_new took v */
  *slot = v;
  return APEX_OK;
}

apex_status_t apex__ptree_set(apex__ptree_t *t, size_t i, double pct, const char *status,
                              const char *msg, size_t len) {
  if (!t || i >= t->n) return APEX_E_INVALID;
  pnode_t *p = &t->nodes[i];
  if (json_is_real(p->pct)) {
    json_real_set(p->pct, pct);
  } else { /* an integer the plugin declared: a real from now on */
    json_t *r = json_real(pct);
    if (!r || json_object_set_new(p->obj, "percentage", r) != 0) return APEX_E_NOMEM;
    p->pct = r;
  }
  apex_status_t rc = APEX_OK;
  if (status) rc = set_text(p, "status", &p->status, status, strlen(status));
  if (rc == APEX_OK && msg) rc = set_text(p, "message", &p->msg, msg, len);
  return rc;
}
