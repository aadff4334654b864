/* folders: a test plugin for progress trees (apex_ctx_progress_node), the
 * 768-folder case of issue 9 among them.
 *
 *   scan          blocking: a scan of `items` items spread over `folders`
 *                 folders in order (folder f holds items [f*items/folders,
 *                 (f+1)*items/folders)). Declares the tree first, every
 *                 folder "pending" at 0 %, then reports per item: the
 *                 folder's node (percentage, "running", "k of n") and the
 *                 task's own percentage and message (APEX_PROGRESS_ROOT).
 *                 A folder's last item sets its final state: "completed"
 *                 with message "n files", except every folder f with
 *                 f % 7 == 3, which ends "error" with "1 unreadable" (a
 *                 tree whose end state is not uniform, so a reader that
 *                 drops a change is caught). At the end the task's own
 *                 status becomes "completed". full=true reports the same
 *                 states as whole updates (apex_ctx_progress_update with
 *                 the plugin's own tree per item: the way before node
 *                 updates, kept for measurement). Result {"items",
 *                 "folders"}.
 *   probe         blocking: calls apex_ctx_progress_node right and wrong on
 *                 a 5-node tree (below) and returns what each call
 *                 returned: {"has_node", "no_tree", "root_no_tree",
 *                 "bad_index", "huge_index", "bad_status", "bad_pct",
 *                 "nan_pct", "bad_utf8", "long_msg", "ok"}; "ok" is 0
 *                 when every valid call returned APEX_OK. The tree after it:
 *                 a (node 0), b (1) with children b1 (2) and b2 (3), c (4).
 *   gated         blocking: declares g0, g1 with children g1a and g1b,
 *                 g2 (pre-order 0..4), all "pending" at 0 %; sets g1a (2)
 *                 to 50 % "running", blocks until the test writes a byte
 *                 to the FIFO at `path` (deaf to cancellation), then sets
 *                 g1b (3) to 100 % "completed" and returns.
 *   clear         blocking: declares [a], sets it, then reports with
 *                 apex_ctx_progress (a full report: no tree), then tries
 *                 node 0 again and the root; result {"before", "after",
 *                 "root"}: what the three node updates returned.
 *   coalesce      blocking: declares 10 nodes "n0".."n9", then makes `n`
 *                 node updates (n a multiple of 10): update i sets node
 *                 i % 10 to 100 * (i / 10 + 1) / (n / 10) percent with
 *                 message "step i"; the last round also sets "completed".
 *   retry_tree    blocking, up to 2 attempts: attempt 1 declares [x, y]
 *                 "pending", completes x and fails APEX_E_TRANSIENT;
 *                 attempt 2 completes y on the tree attempt 1 declared.
 *   after_complete  deferred: declares [a], sets it to 50 %, completes,
 *                 then calls apex_ctx_progress_node three times on the
 *                 dead ctx (node 0, the root, an invalid percentage) and
 *                 keeps what they returned for `stats`.
 *   late          blocking: declares [a], sleeps until its token fires (a
 *                 timeout), then sets node 0 and keeps what that returned.
 *   stats         blocking: result {"after": [3 codes of after_complete],
 *                 "late": the code late's update returned}.
 *
 * Threads: every handler runs on a host worker; the codes kept for `stats`
 * are atomics. What can fail: memory (the task fails APEX_E_NOMEM), a
 * progress call refused (scan, coalesce, gated and retry_tree fail with its
 * code), the FIFO (gated fails APEX_E_IO). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "apex/plugin.h"

#ifndef APEX_HAVE_PROGRESS_NODE
#error "folders needs apex_ctx_progress_node (APEX_HAVE_PROGRESS_NODE)"
#endif

static atomic_int g_after[3];
static atomic_int g_late = 1; /* 1: late has not reported */

static int64_t param_int(apex_ctx_t *ctx, const char *name, int64_t dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

/* Declares a flat tree of nodes named by fmt (with %d), all `status` at 0 %. */
static int declare(apex_ctx_t *ctx, int n, const char *fmt, const char *status) {
  json_t *tree = json_array();
  if (!tree) return APEX_E_NOMEM;
  for (int i = 0; i < n; i++) {
    char name[32];
    snprintf(name, sizeof name, fmt, i);
    if (json_array_append_new(tree, json_pack("{s:s, s:f, s:s}", "name", name, "percentage", 0.0,
                                              "status", status)) != 0) {
      json_decref(tree);
      return APEX_E_NOMEM;
    }
  }
  apex_progress_update_t u = {.percentage = 0.0, .message = "starting", .sub_tasks = tree};
  int rc = apex_ctx_progress_update(ctx, &u);
  json_decref(tree);
  return rc;
}

/* ------------------------------------------------------------------ scan */

static int64_t folder_first(int64_t f, int64_t folders, int64_t items) {
  return f * items / folders;
}

/* A folder's state after `done` of its `total` items, as both modes report
 * it: percentage, status and message (into msg). */
static double folder_state(int64_t f, int64_t done, int64_t total, const char **status, char *msg,
                           size_t cap) {
  if (done < total) {
    *status = "running";
    snprintf(msg, cap, "%lld of %lld", (long long)done, (long long)total);
  } else if (f % 7 == 3) {
    *status = "error";
    snprintf(msg, cap, "1 unreadable");
  } else {
    *status = "completed";
    snprintf(msg, cap, "%lld files", (long long)total);
  }
  return total > 0 ? 100.0 * (double)done / (double)total : 100.0;
}

/* full mode: the plugin's own tree, changed in place, reported whole. */
static int scan_full_report(apex_ctx_t *ctx, json_t *tree, int64_t f, double pct,
                            const char *status, const char *msg, double overall,
                            const char *overall_msg, const char *overall_status) {
  json_t *node = json_array_get(tree, (size_t)f);
  if (json_object_set_new(node, "percentage", json_real(pct)) ||
      json_object_set_new(node, "status", json_string(status)) ||
      json_object_set_new(node, "message", json_string(msg)))
    return APEX_E_NOMEM;
  apex_progress_update_t u = {.percentage = overall, .message = overall_msg,
                              .status = overall_status, .sub_tasks = tree};
  return apex_ctx_progress_update(ctx, &u);
}

static int scan(apex_ctx_t *ctx) {
  int64_t folders = param_int(ctx, "folders", 768), items = param_int(ctx, "items", 5000);
  int full = json_is_true(json_object_get(apex_ctx_params(ctx), "full"));
  json_t *tree = json_array();
  if (!tree) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  for (int64_t f = 0; f < folders; f++) {
    char name[32];
    snprintf(name, sizeof name, "folder-%03lld", (long long)f);
    if (json_array_append_new(tree, json_pack("{s:s, s:f, s:s}", "name", name, "percentage", 0.0,
                                              "status", "pending")) != 0) {
      json_decref(tree);
      return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
    }
  }
  apex_progress_update_t decl = {.percentage = 0.0, .message = "scanning", .sub_tasks = tree};
  int rc = apex_ctx_progress_update(ctx, &decl);
  int64_t item = 0;
  for (int64_t f = 0; rc == APEX_OK && f < folders; f++) {
    int64_t total = folder_first(f + 1, folders, items) - folder_first(f, folders, items);
    for (int64_t done = 1; rc == APEX_OK && done <= total; done++) {
      item++;
      const char *status;
      char msg[64], overall_msg[64];
      double pct = folder_state(f, done, total, &status, msg, sizeof msg);
      double overall = 100.0 * (double)item / (double)items;
      snprintf(overall_msg, sizeof overall_msg, "item %lld of %lld", (long long)item,
               (long long)items);
      if (full) {
        rc = scan_full_report(ctx, tree, f, pct, status, msg, overall, overall_msg,
                              item == items ? "completed" : "running");
      } else {
        rc = apex_ctx_progress_node(ctx, (size_t)f, pct, status, msg);
        if (rc == APEX_OK)
          rc = apex_ctx_progress_node(ctx, APEX_PROGRESS_ROOT, overall,
                                      item == items ? "completed" : NULL, overall_msg);
      }
    }
  }
  json_decref(tree);
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "progress after item %lld: code %d",
                                          (long long)item, rc);
  apex_ctx_set_result(ctx, json_pack("{s:I, s:I}", "items", (json_int_t)items, "folders",
                                     (json_int_t)folders));
  return APEX_OK;
}

/* ----------------------------------------------------------------- probe */

static int probe(apex_ctx_t *ctx) {
  json_t *r = json_object();
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
#define KEEP(key, call) json_object_set_new(r, key, json_integer(call))
  KEEP("has_node", APEX_HAS_FIELD(apex_host_api_t, ctx->api, progress_node));
  KEEP("no_tree", apex_ctx_progress_node(ctx, 0, 10.0, NULL, NULL));
  KEEP("root_no_tree", apex_ctx_progress_node(ctx, APEX_PROGRESS_ROOT, 5.0, NULL, "starting"));
  json_t *tree = json_pack("[{s:s, s:i, s:s}, {s:s, s:i, s:s, s:[{s:s, s:i}, {s:s, s:i}]},"
                           " {s:s, s:i, s:s}]",
                           "name", "a", "percentage", 0, "status", "pending",
                           "name", "b", "percentage", 0, "status", "pending", "sub_tasks",
                           "name", "b1", "percentage", 0, "name", "b2", "percentage", 0,
                           "name", "c", "percentage", 0, "message", "waiting");
  json_t *details = json_pack("{s:i}", "k", 1);
  apex_progress_update_t u = {.percentage = 1.0, .message = "declared", .details = details,
                              .sub_tasks = tree};
  int ok = apex_ctx_progress_update(ctx, &u) == APEX_OK;
  json_decref(tree);
  json_decref(details);
  KEEP("bad_index", apex_ctx_progress_node(ctx, 5, 10.0, NULL, NULL));
  KEEP("huge_index", apex_ctx_progress_node(ctx, SIZE_MAX - 1, 10.0, NULL, NULL));
  KEEP("bad_status", apex_ctx_progress_node(ctx, 0, 10.0, "done", NULL));
  KEEP("bad_pct", apex_ctx_progress_node(ctx, 0, 100.5, NULL, NULL));
  KEEP("nan_pct", apex_ctx_progress_node(ctx, 0, NAN, NULL, NULL));
  KEEP("bad_utf8", apex_ctx_progress_node(ctx, 0, 10.0, NULL, "caf\xc3"));
  char longmsg[APEX_PROGRESS_MESSAGE_MAX + 2];
  memset(longmsg, 'x', sizeof longmsg - 1);
  longmsg[sizeof longmsg - 1] = '\0';
  KEEP("long_msg", apex_ctx_progress_node(ctx, 0, 10.0, NULL, longmsg));
  /* The valid ones: b1 half done, b2 done, a moved without a status or
   * message (they stay), c's message emptied, the task's own figures. */
  ok &= apex_ctx_progress_node(ctx, 2, 50.0, "running", "half") == APEX_OK;
  ok &= apex_ctx_progress_node(ctx, 3, 100.0, "completed", NULL) == APEX_OK;
  ok &= apex_ctx_progress_node(ctx, 0, 20.0, NULL, NULL) == APEX_OK;
  ok &= apex_ctx_progress_node(ctx, 4, 0.0, "pending", "") == APEX_OK;
  ok &= apex_ctx_progress_node(ctx, APEX_PROGRESS_ROOT, 40.0, NULL, "probing") == APEX_OK;
  KEEP("ok", ok ? 0 : 1);
#undef KEEP
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

/* ----------------------------------------------------------------- gated */

static int gated(apex_ctx_t *ctx) {
  json_t *tree = json_pack("[{s:s, s:f, s:s}, {s:s, s:f, s:s, s:[{s:s, s:f, s:s},"
                           " {s:s, s:f, s:s}]}, {s:s, s:f, s:s}]",
                           "name", "g0", "percentage", 0.0, "status", "pending",
                           "name", "g1", "percentage", 0.0, "status", "pending", "sub_tasks",
                           "name", "g1a", "percentage", 0.0, "status", "pending",
                           "name", "g1b", "percentage", 0.0, "status", "pending",
                           "name", "g2", "percentage", 0.0, "status", "pending");
  if (!tree) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_progress_update_t u = {.percentage = 0.0, .message = "gated", .sub_tasks = tree};
  int rc = apex_ctx_progress_update(ctx, &u);
  json_decref(tree);
  if (rc == APEX_OK) rc = apex_ctx_progress_node(ctx, 2, 50.0, "running", NULL);
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "gated: progress refused: %d", rc);
  const char *path = json_string_value(json_object_get(apex_ctx_params(ctx), "path"));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return apex_ctx_fail(ctx, APEX_E_IO, "%s: %s", path, strerror(errno));
  char b;
  ssize_t n;
  do n = read(fd, &b, 1);
  while (n < 0 && errno == EINTR);
  close(fd);
  if (n != 1) return apex_ctx_fail(ctx, APEX_E_IO, "%s: no byte", path);
  rc = apex_ctx_progress_node(ctx, 3, 100.0, "completed", NULL);
  return rc == APEX_OK ? APEX_OK : apex_ctx_fail(ctx, rc, "gated: progress refused: %d", rc);
}

/* ----------------------------------------------------------------- clear */

static int clear(apex_ctx_t *ctx) {
  int rc = declare(ctx, 1, "a%d", "pending");
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "clear: progress refused: %d", rc);
  int before = apex_ctx_progress_node(ctx, 0, 10.0, "running", NULL);
  rc = apex_ctx_progress(ctx, 20.0, "flat");
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "clear: progress refused: %d", rc);
  int after = apex_ctx_progress_node(ctx, 0, 30.0, NULL, NULL);
  int root = apex_ctx_progress_node(ctx, APEX_PROGRESS_ROOT, 40.0, NULL, NULL);
  apex_ctx_set_result(ctx, json_pack("{s:i, s:i, s:i}", "before", before, "after", after, "root",
                                     root));
  return APEX_OK;
}

/* -------------------------------------------------------------- coalesce */

static int coalesce(apex_ctx_t *ctx) {
  int64_t n = param_int(ctx, "n", 10000), rounds = n / 10;
  int rc = declare(ctx, 10, "n%d", "pending");
  for (int64_t i = 0; rc == APEX_OK && i < n; i++) {
    char msg[32];
    snprintf(msg, sizeof msg, "step %lld", (long long)i);
    double pct = 100.0 * (double)(i / 10 + 1) / (double)rounds;
    rc = apex_ctx_progress_node(ctx, (size_t)(i % 10), pct,
                                i / 10 + 1 == rounds ? "completed" : "running", msg);
  }
  return rc == APEX_OK ? APEX_OK : apex_ctx_fail(ctx, rc, "coalesce: progress refused: %d", rc);
}

/* ------------------------------------------------------------ retry_tree */

static int retry_tree(apex_ctx_t *ctx) {
  int rc;
  if (apex_ctx_attempt(ctx) == 1) {
    rc = declare(ctx, 2, "x%d", "pending");
    if (rc == APEX_OK) rc = apex_ctx_progress_node(ctx, 0, 100.0, "completed", "done");
    if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "retry_tree: progress refused: %d", rc);
    return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "the first attempt fails on purpose");
  }
  rc = apex_ctx_progress_node(ctx, 1, 100.0, "completed", "done too");
  return rc == APEX_OK ? APEX_OK : apex_ctx_fail(ctx, rc, "retry_tree: node 1 refused: %d", rc);
}

/* ------------------------------------------------------- late and misuse */

static int after_complete(apex_ctx_t *ctx) {
  int rc = declare(ctx, 1, "a%d", "pending");
  if (rc == APEX_OK) rc = apex_ctx_progress_node(ctx, 0, 50.0, "running", NULL);
  apex_ctx_complete(ctx, rc);
  /* Misuse from here on: the ctx is invalid. */
  atomic_store(&g_after[0], apex_ctx_progress_node(ctx, 0, 60.0, NULL, NULL));
  atomic_store(&g_after[1], apex_ctx_progress_node(ctx, APEX_PROGRESS_ROOT, 70.0, NULL, NULL));
  atomic_store(&g_after[2], apex_ctx_progress_node(ctx, 0, -1.0, NULL, NULL));
  return APEX_PENDING;
}

static int late(apex_ctx_t *ctx) {
  int rc = declare(ctx, 1, "a%d", "pending");
  if (rc != APEX_OK) return apex_ctx_fail(ctx, rc, "late: progress refused: %d", rc);
  (void)apex_ctx_sleep_ms(ctx, 60000); /* until the timeout fires the token */
  atomic_store(&g_late, apex_ctx_progress_node(ctx, 0, 80.0, "running", "too late"));
  return APEX_E_CANCELLED;
}

static int stats(apex_ctx_t *ctx) {
  apex_ctx_set_result(ctx, json_pack("{s:[i,i,i], s:i}", "after", atomic_load(&g_after[0]),
                                     atomic_load(&g_after[1]), atomic_load(&g_after[2]), "late",
                                     atomic_load(&g_late)));
  return APEX_OK;
}

/* ------------------------------------------------------------ descriptor */

static const apex_param_spec_t k_scan[] = {
    {.name = "folders", .type = APEX_PARAM_INT, .default_json = "768", .has_min = 1, .min = 1,
     .has_max = 1, .max = 1000, .description = "sub-tasks in the tree"},
    {.name = "items", .type = APEX_PARAM_INT, .default_json = "5000", .has_min = 1, .min = 1,
     .has_max = 1, .max = 10000000, .description = "items scanned, one report each"},
    {.name = "full", .type = APEX_PARAM_BOOL, .default_json = "false",
     .description = "report the whole tree per item instead of one node"},
};

static const apex_param_spec_t k_path[] = {
    {.name = "path", .type = APEX_PARAM_STRING, .required = 1, .description = "a FIFO"},
};

static const apex_param_spec_t k_n[] = {
    {.name = "n", .type = APEX_PARAM_INT, .default_json = "10000", .has_min = 1, .min = 10,
     .has_max = 1, .max = 100000000, .description = "node updates, a multiple of 10"},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "scan", .description = "a scan reporting per item on a tree of folders",
     .handler = scan, .params = k_scan, .n_params = 3},
    {.name = "probe", .description = "node updates right and wrong", .handler = probe},
    {.name = "gated", .description = "a node update, a gate, another",
     .handler = gated, .params = k_path, .n_params = 1},
    {.name = "clear", .description = "a full report clears the tree", .handler = clear},
    {.name = "coalesce", .description = "many node updates in a row",
     .handler = coalesce, .params = k_n, .n_params = 1},
    {.name = "retry_tree", .description = "a tree kept across a retry", .handler = retry_tree,
     .default_retry = {.max_attempts = 2, .initial_interval_s = 0.001}},
    {.name = "after_complete", .description = "node updates on a completed ctx",
     .handler = after_complete, .kind = APEX_ACTION_DEFERRED},
    {.name = "late", .description = "a node update after a timeout", .handler = late},
    {.name = "stats", .description = "what after_complete and late saw", .handler = stats},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "folders",
    .version = "1.0.0",
    .description = "progress trees: node updates, the 768-folder scan",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
