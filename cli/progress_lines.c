/* The JSON Lines form of `apex run`'s progress events: a line carries the
 * whole sub-task tree only when a reader needs it, else the sub-tasks that
 * changed since the task's previous progress line.
 *
 * The format (README, "JSON Lines"): every progress line has "event",
 * "task", "seq", "percentage", "status", "message", "details", then either
 *   "sub_tasks": the whole tree, on the task's first progress line, when
 *     the tree is empty, when its shape changed (a sub-task added, removed
 *     or moved between levels), or when more than half its sub-tasks
 *     changed (then the tree is the shorter line); or
 *   "sub_task_changes": [{"path": [i, j, ...], "node": {...}}, ...], the
 *     sub-tasks that differ from the previous line's tree, in pre-order:
 *     path indexes "sub_tasks" at the top, then each level's own
 *     "sub_tasks"; node holds every member of that sub-task but its
 *     "sub_tasks" (its children, unchanged but for their own entries), and
 *     replaces the members the reader holds. An empty list: the tree did
 *     not change.
 * Why: a plugin with 1000 sub-tasks reporting per item gets its tree
 * delivered up to 100 times a second, and most of it is the same from one
 * line to the next; written whole, that is about 70 KB a line (issue 9:
 * 35 MB for one 7 s scan). The line stays self-contained for everything but
 * the tree, and a reader rebuilds the tree exactly by applying the changes
 * in order (tests/integration/test_progress_tree.c does).
 *
 * State: the tree as last written (our own copy: the snapshot's is the
 * library's, immutable, and jansson's reference counts are not shared
 * between threads). Threads: the main thread (run.c dispatches there).
 * What can fail: memory, here or while the line is written (cli_emit; the
 * caller then calls cli_progress_lines_lost): the line is not written, as
 * for any line, and the next one carries the whole tree, since the copy is
 * dropped. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

struct cli_progress_lines {
  json_t *tree; /* what the last line gave the reader, or NULL: nothing yet */
};

cli_progress_lines_t *cli_progress_lines_new(void) { return calloc(1, sizeof(cli_progress_lines_t)); }

void cli_progress_lines_free(cli_progress_lines_t *pl) {
  if (!pl) return;
  json_decref(pl->tree);
  free(pl);
}

void cli_progress_lines_lost(cli_progress_lines_t *pl) {
  json_decref(pl->tree);
  pl->tree = NULL;
}

/* 1 if a and b (sub_tasks arrays) have the same shape: the same number of
 * sub-tasks at every level, each with or without children alike. */
static int same_shape(const json_t *a, const json_t *b) {
  size_t n = json_array_size(a);
  if (n != json_array_size(b)) return 0;
  for (size_t i = 0; i < n; i++) {
    const json_t *ca = json_object_get(json_array_get(a, i), "sub_tasks");
    const json_t *cb = json_object_get(json_array_get(b, i), "sub_tasks");
    if (!ca != !cb || (ca && !same_shape(ca, cb))) return 0;
  }
  return 1;
}

/* 1 if nodes a and b have the same members, "sub_tasks" aside. */
static int same_fields(const json_t *a, const json_t *b) {
  size_t na = json_object_size(a) - (json_object_get(a, "sub_tasks") ? 1 : 0);
  size_t nb = json_object_size(b) - (json_object_get(b, "sub_tasks") ? 1 : 0);
  if (na != nb) return 0;
  const char *key;
  json_t *v;
  json_object_foreach((json_t *)a, key, v) {
    if (strcmp(key, "sub_tasks") == 0) continue;
    json_t *w = json_object_get(b, key);
    if (!w || !json_equal(v, w)) return 0;
  }
  return 1;
}

/* Returns: a copy of node's members but "sub_tasks" (new), NULL on no memory. */
static json_t *fields_of(const json_t *node) {
  json_t *o = json_object();
  const char *key;
  json_t *v;
  json_object_foreach((json_t *)node, key, v) {
    if (!o) break;
    if (strcmp(key, "sub_tasks") != 0 && json_object_set_new(o, key, json_deep_copy(v)) != 0) {
      json_decref(o);
      o = NULL;
    }
  }
  return o;
}

typedef struct walk {
  json_t *changes;
  size_t nodes;
  size_t path[APEX_PROGRESS_MAX_DEPTH];
  int depth;
  int nomem;
} walk_t;

/* Appends {"path": [...], "node": c's members} to w->changes. Returns: 0,
 * -1 on no memory. */
static int add_change(walk_t *w, const json_t *c) {
  json_t *entry = json_object(), *path = json_array(), *node = fields_of(c);
  int rc = entry && path && node ? 0 : -1;
  for (int d = 0; rc == 0 && d <= w->depth; d++)
    rc = json_array_append_new(path, json_integer((json_int_t)w->path[d]));
  if (rc == 0) rc = json_object_set(entry, "path", path);
  if (rc == 0) rc = json_object_set(entry, "node", node);
  if (rc == 0) rc = json_array_append(w->changes, entry);
  json_decref(entry);
  json_decref(path);
  json_decref(node);
  return rc;
}

/* Compares cur with held (same shape), appends an entry per changed
 * sub-task and makes held equal to cur as it goes. */
static void diff(walk_t *w, json_t *held, const json_t *cur) {
  for (size_t i = 0; i < json_array_size(cur); i++) {
    json_t *h = json_array_get(held, i);
    const json_t *c = json_array_get(cur, i);
    w->nodes++;
    if (w->depth >= APEX_PROGRESS_MAX_DEPTH) return; /* the library refuses deeper trees */
    w->path[w->depth] = i;
    if (!same_fields(h, c)) {
      if (add_change(w, c) != 0) w->nomem = 1;
      /* held takes cur's members; its children stay, for the walk below */
      json_t *copy = fields_of(c);
      json_t *kids = json_object_get(h, "sub_tasks");
      if (!copy || (kids && json_object_set(copy, "sub_tasks", kids) != 0) ||
          json_array_set(held, i, copy) != 0)
        w->nomem = 1;
      json_decref(copy);
      h = json_array_get(held, i);
    }
    const json_t *ck = json_object_get(c, "sub_tasks");
    if (ck) {
      w->depth++;
      diff(w, json_object_get(h, "sub_tasks"), ck);
      w->depth--;
    }
  }
}

/* Sets obj[key] to the whole tree cur and keeps a copy of it. Returns: 0,
 * -1 on no memory. */
static int put_whole(cli_progress_lines_t *pl, json_t *obj, const json_t *cur) {
  json_decref(pl->tree);
  pl->tree = json_deep_copy(cur);
  if (!pl->tree) return -1;
  return json_object_set_new(obj, "sub_tasks", json_deep_copy(cur));
}

json_t *cli_progress_line(cli_progress_lines_t *pl, uint64_t task, const apex_progress_t *p) {
  json_t *o = json_pack("{s:s, s:I, s:I, s:f, s:s, s:s, s:o}", "event", "progress", "task",
                        (json_int_t)task, "seq", (json_int_t)apex_progress_seq(p), "percentage",
                        apex_progress_percentage(p), "status", apex_progress_status(p),
                        "message", apex_progress_message(p), "details",
                        json_deep_copy(apex_progress_details(p)));
  if (!o) return NULL;
  const json_t *cur = apex_progress_sub_tasks(p);
  int rc;
  if (!pl->tree || json_array_size(cur) == 0 || !same_shape(pl->tree, cur)) {
    rc = put_whole(pl, o, cur);
  } else {
    walk_t w = {.changes = json_array()};
    if (!w.changes) {
      rc = -1;
    } else {
      diff(&w, pl->tree, cur);
      if (w.nomem) {
        json_decref(w.changes);
        rc = -1;
      } else if (json_array_size(w.changes) * 2 > w.nodes) {
        json_decref(w.changes); /* most of it changed: the tree is shorter */
        rc = put_whole(pl, o, cur);
      } else {
        rc = json_object_set_new(o, "sub_task_changes", w.changes);
      }
    }
  }
  if (rc != 0) {
    /* The reader's tree is unknown now: the next line carries it whole. */
    cli_progress_lines_lost(pl);
    json_decref(o);
    return NULL;
  }
  return o;
}
