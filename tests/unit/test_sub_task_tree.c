/* Unit tests of src/core/progress_tree.c (a task's sub-task tree: merged
 * from full reports, set node by node, copied per delivery) and of the
 * progress rules that came with it in src/core/progress.c: the "pending"
 * status and a node update's reasons.
 *
 * The merge's promise, "only what differs is copied", is checked by
 * counting jansson's allocations (json_set_alloc_funcs): an unchanged tree
 * merges without one, a node update that changes nothing but a percentage
 * allocates nothing. A random test merges random trees into one another
 * and sets random nodes, against a plain JSON model addressed in
 * pre-order; an allocation-failure loop checks the tree stays valid and
 * its index in step whatever allocation fails. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "core/progress_internal.h"
#include "core/progress_tree.h"

/* ------------------------------------------------------ counted allocs */

static long g_allocs;      /* jansson allocations since the last reset */
static long g_fail_at = -1; /* the allocation (1-based) to fail; -1 none */

static void *counting_malloc(size_t n) {
  if (++g_allocs == g_fail_at) return NULL;
  return malloc(n);
}

static int setup(void **st) {
  (void)st;
  json_set_alloc_funcs(counting_malloc, free);
  return 0;
}

/* ------------------------------------------------------------- helpers */

static json_t *parse(const char *text) {
  json_error_t e;
  json_t *j = json_loads(text, 0, &e);
  if (!j) fail_msg("bad test JSON at %d: %s", e.position, e.text);
  return j;
}

static void assert_tree(const apex__ptree_t *t, const json_t *want) {
  json_t *got = apex__ptree_json(t);
  assert_non_null(got);
  if (!json_equal(got, (json_t *)want)) {
    char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
    char *w = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
    fail_msg("tree differs\n got: %s\nwant: %s", g, w);
  }
  json_decref(got);
}

static apex__ptree_t *tree_of(const char *text) {
  apex__ptree_t *t = apex__ptree_new();
  assert_non_null(t);
  json_t *j = parse(text);
  assert_int_equal(apex__ptree_merge(t, j), APEX_OK);
  assert_tree(t, j);
  json_decref(j);
  return t;
}

/* The node at pre-order position *i in arr, or NULL (decrements *i). */
static json_t *nth_node(json_t *arr, size_t *i) {
  for (size_t k = 0; k < json_array_size(arr); k++) {
    json_t *n = json_array_get(arr, k);
    if ((*i)-- == 0) return n;
    json_t *found = nth_node(json_object_get(n, "sub_tasks"), i);
    if (found) return found;
  }
  return NULL;
}

#define NESTED                                                                              \
  "[{\"name\": \"a\", \"percentage\": 0, \"status\": \"pending\"},"                          \
  " {\"name\": \"b\", \"percentage\": 10, \"weight\": 2, \"sub_tasks\": ["                   \
  "   {\"name\": \"b1\", \"percentage\": 0, \"details\": {\"x\": [1, 2]}},"                  \
  "   {\"name\": \"b2\", \"percentage\": 0, \"sub_tasks\": [{\"name\": \"b2a\", \"percentage\": 0}]}]}," \
  " {\"name\": \"c\", \"percentage\": 0, \"message\": \"waiting\"}]"

/* --------------------------------------------------------------- tests */

static void test_a_new_tree_is_empty_and_has_no_node(void **st) {
  (void)st;
  apex__ptree_t *t = apex__ptree_new();
  assert_int_equal(apex__ptree_size(t), 0);
  json_t *empty = json_array();
  assert_tree(t, empty);
  assert_int_equal(apex__ptree_set(t, 0, 1.0, NULL, NULL, 0), APEX_E_INVALID);
  assert_int_equal(apex__ptree_set(NULL, 0, 1.0, NULL, NULL, 0), APEX_E_INVALID);
  assert_int_equal(apex__ptree_size(NULL), 0);
  json_t *none = apex__ptree_json(NULL);
  assert_true(json_equal(none, empty));
  json_decref(none);
  json_decref(empty);
  apex__ptree_free(t);
  apex__ptree_free(NULL);
}

static void test_nodes_are_indexed_in_pre_order(void **st) {
  (void)st;
  apex__ptree_t *t = tree_of(NESTED);
  assert_int_equal(apex__ptree_size(t), 6); /* a, b, b1, b2, b2a, c */
  const char *names[] = {"a", "b", "b1", "b2", "b2a", "c"};
  json_t *want = parse(NESTED);
  for (size_t i = 0; i < 6; i++) {
    assert_int_equal(apex__ptree_set(t, i, (double)(i + 1), NULL, NULL, 0), APEX_OK);
    size_t k = i;
    json_t *n = nth_node(want, &k);
    assert_string_equal(json_string_value(json_object_get(n, "name")), names[i]);
    json_object_set_new(n, "percentage", json_real((double)(i + 1)));
  }
  assert_tree(t, want);
  assert_int_equal(apex__ptree_set(t, 6, 1.0, NULL, NULL, 0), APEX_E_INVALID);
  assert_int_equal(apex__ptree_set(t, SIZE_MAX, 1.0, NULL, NULL, 0), APEX_E_INVALID);
  assert_tree(t, want); /* the refused ones changed nothing */
  json_decref(want);
  apex__ptree_free(t);
}

static void test_set_changes_status_and_message_only_when_given(void **st) {
  (void)st;
  apex__ptree_t *t = tree_of(NESTED);
  json_t *want = parse(NESTED);
  assert_int_equal(apex__ptree_set(t, 0, 50.0, "running", "half", 4), APEX_OK);
  json_t *a = json_array_get(want, 0);
  json_object_set_new(a, "percentage", json_real(50.0));
  json_object_set_new(a, "status", json_string("running"));
  json_object_set_new(a, "message", json_string("half"));
  assert_tree(t, want);
  /* NULL keeps both */
  assert_int_equal(apex__ptree_set(t, 0, 60.0, NULL, NULL, 0), APEX_OK);
  json_object_set_new(a, "percentage", json_real(60.0));
  assert_tree(t, want);
  /* "" empties the message; c's message was declared, b2a had none */
  assert_int_equal(apex__ptree_set(t, 5, 0.0, "completed", "", 0), APEX_OK);
  json_t *c = json_array_get(want, 2);
  json_object_set_new(c, "percentage", json_real(0.0));
  json_object_set_new(c, "status", json_string("completed"));
  json_object_set_new(c, "message", json_string(""));
  assert_tree(t, want);
  /* the length given, not strlen: a message is copied as measured */
  assert_int_equal(apex__ptree_set(t, 4, 1.0, "pending", "abcdef", 3), APEX_OK);
  size_t k = 4;
  json_t *b2a = nth_node(want, &k);
  json_object_set_new(b2a, "percentage", json_real(1.0));
  json_object_set_new(b2a, "status", json_string("pending"));
  json_object_set_new(b2a, "message", json_string("abc"));
  assert_tree(t, want);
  json_decref(want);
  apex__ptree_free(t);
}

static void test_an_unchanged_tree_merges_without_allocating(void **st) {
  (void)st;
  apex__ptree_t *t = tree_of(NESTED);
  json_t *same = parse(NESTED);
  g_allocs = 0;
  assert_int_equal(apex__ptree_merge(t, same), APEX_OK);
  assert_int_equal(g_allocs, 0);
  /* A node update that only moves a real percentage allocates nothing;
   * the first one on an integer makes it a real, once. */
  assert_int_equal(apex__ptree_set(t, 0, 5.0, "pending", NULL, 0), APEX_OK);
  g_allocs = 0;
  assert_int_equal(apex__ptree_set(t, 0, 6.0, "pending", NULL, 0), APEX_OK);
  assert_int_equal(g_allocs, 0);
  json_decref(same);
  apex__ptree_free(t);
}

static void test_a_merge_copies_only_the_fields_that_changed(void **st) {
  (void)st;
  apex__ptree_t *t = tree_of(NESTED);
  json_t *next = parse(NESTED);
  size_t k = 2;
  json_t *b1 = nth_node(next, &k);
  json_object_set_new(b1, "percentage", json_real(75.0));
  g_allocs = 0;
  assert_int_equal(apex__ptree_merge(t, next), APEX_OK);
  assert_int_equal(g_allocs, 1); /* the one real */
  assert_tree(t, next);
  /* The index follows the replaced value: setting b1 again works. */
  assert_int_equal(apex__ptree_set(t, 2, 80.0, NULL, NULL, 0), APEX_OK);
  json_object_set_new(b1, "percentage", json_real(80.0));
  assert_tree(t, next);
  json_decref(next);
  apex__ptree_free(t);
}

static void test_a_merge_drops_fields_and_nodes_the_report_dropped(void **st) {
  (void)st;
  apex__ptree_t *t = tree_of(NESTED);
  /* c loses its message, b2 its children, b its weight; a goes away */
  json_t *next = parse("[{\"name\": \"b\", \"percentage\": 10, \"sub_tasks\": ["
                       "   {\"name\": \"b1\", \"percentage\": 0, \"details\": {\"x\": [1, 2]}},"
                       "   {\"name\": \"b2\", \"percentage\": 0}]},"
                       " {\"name\": \"c\", \"percentage\": 0}]");
  assert_int_equal(apex__ptree_merge(t, next), APEX_OK);
  assert_tree(t, next);
  assert_int_equal(apex__ptree_size(t), 4);
  /* Pre-order is the new tree's: 3 is c now. */
  assert_int_equal(apex__ptree_set(t, 3, 30.0, "running", NULL, 0), APEX_OK);
  json_t *c = json_array_get(next, 1);
  json_object_set_new(c, "percentage", json_real(30.0));
  json_object_set_new(c, "status", json_string("running"));
  assert_tree(t, next);
  assert_int_equal(apex__ptree_set(t, 4, 1.0, NULL, NULL, 0), APEX_E_INVALID);
  json_decref(next);
  apex__ptree_free(t);
}

static void test_a_merge_adds_nodes_and_reindexes(void **st) {
  (void)st;
  apex__ptree_t *t = tree_of("[{\"name\": \"a\", \"percentage\": 0},"
                             " {\"name\": \"b\", \"percentage\": 0}]");
  json_t *next = parse("[{\"name\": \"a\", \"percentage\": 0, \"sub_tasks\": ["
                       "   {\"name\": \"a1\", \"percentage\": 0}]},"
                       " {\"name\": \"b\", \"percentage\": 0},"
                       " {\"name\": \"new\", \"percentage\": 5, \"status\": \"pending\"}]");
  assert_int_equal(apex__ptree_merge(t, next), APEX_OK);
  assert_tree(t, next);
  assert_int_equal(apex__ptree_size(t), 4);
  assert_int_equal(apex__ptree_set(t, 1, 10.0, NULL, "a1 it is", 8), APEX_OK);
  assert_int_equal(apex__ptree_set(t, 3, 20.0, "running", NULL, 0), APEX_OK);
  json_t *a1 = json_array_get(json_object_get(json_array_get(next, 0), "sub_tasks"), 0);
  json_object_set_new(a1, "percentage", json_real(10.0));
  json_object_set_new(a1, "message", json_string("a1 it is"));
  json_t *nw = json_array_get(next, 2);
  json_object_set_new(nw, "percentage", json_real(20.0));
  json_object_set_new(nw, "status", json_string("running"));
  assert_tree(t, next);
  json_decref(next);
  apex__ptree_free(t);
}

static void test_merging_no_tree_empties_it(void **st) {
  (void)st;
  apex__ptree_t *t = tree_of(NESTED);
  assert_int_equal(apex__ptree_merge(t, NULL), APEX_OK);
  assert_int_equal(apex__ptree_size(t), 0);
  json_t *empty = json_array();
  assert_tree(t, empty);
  assert_int_equal(apex__ptree_merge(t, empty), APEX_OK);
  assert_int_equal(apex__ptree_set(t, 0, 1.0, NULL, NULL, 0), APEX_E_INVALID);
  json_decref(empty);
  apex__ptree_free(t);
}

static void test_a_copy_is_independent_of_the_tree(void **st) {
  (void)st;
  apex__ptree_t *t = tree_of(NESTED);
  json_t *copy = apex__ptree_json(t);
  json_t *before = json_deep_copy(copy);
  assert_int_equal(apex__ptree_set(t, 0, 99.0, "running", "moved", 5), APEX_OK);
  json_t *next = parse("[{\"name\": \"z\", \"percentage\": 1}]");
  assert_int_equal(apex__ptree_merge(t, next), APEX_OK);
  assert_true(json_equal(copy, before)); /* a delivered snapshot never changes */
  json_decref(next);
  json_decref(before);
  json_decref(copy);
  apex__ptree_free(t);
}

/* ------------------------------------------------- random trees vs a model */

static unsigned g_seed = 12345;
static unsigned rnd(unsigned n) {
  g_seed = g_seed * 1103515245u + 12345u;
  return (g_seed >> 16) % n;
}

static json_t *random_level(int depth, size_t *budget) {
  json_t *arr = json_array();
  unsigned n = rnd(4) + (depth == 1);
  for (unsigned i = 0; i < n && *budget > 0; i++, --*budget) {
    char name[8];
    snprintf(name, sizeof name, "n%u", rnd(5));
    json_t *o = json_pack("{s:s, s:i}", "name", name, "percentage", (int)rnd(3) * 50);
    if (rnd(2)) json_object_set_new(o, "status", json_string(rnd(2) ? "pending" : "running"));
    if (rnd(3) == 0) json_object_set_new(o, "message", json_string(rnd(2) ? "m" : ""));
    if (rnd(4) == 0) json_object_set_new(o, "details", json_pack("{s:i}", "v", (int)rnd(3)));
    if (depth < 4 && rnd(3) == 0) json_object_set_new(o, "sub_tasks", random_level(depth + 1, budget));
    json_array_append_new(arr, o);
  }
  return arr;
}

static size_t count(const json_t *arr) {
  size_t n = json_array_size(arr);
  for (size_t i = 0; i < json_array_size(arr); i++)
    n += count(json_object_get(json_array_get(arr, i), "sub_tasks"));
  return n;
}

static void test_random_merges_and_sets_match_a_model(void **st) {
  (void)st;
  apex__ptree_t *t = apex__ptree_new();
  json_t *model = json_array();
  static const char *const statuses[] = {NULL, "pending", "running", "completed"};
  for (int round = 0; round < 400; round++) {
    if (rnd(3) == 0) { /* a full report */
      size_t budget = 30;
      json_t *next = random_level(1, &budget);
      json_t *u = json_pack("{s:i, s:O}", "percentage", 1, "sub_tasks", next);
      assert_int_equal(apex_progress_validate(u, NULL, 0), APEX_OK);
      json_decref(u);
      assert_int_equal(apex__ptree_merge(t, next), APEX_OK);
      json_decref(model);
      model = next;
    }
    size_t n = count(model);
    assert_int_equal(apex__ptree_size(t), n);
    for (int k = 0; k < 5 && n > 0; k++) { /* node updates */
      size_t i = rnd((unsigned)n), at = i;
      double pct = (double)rnd(101);
      const char *status = statuses[rnd(4)];
      const char *msg = rnd(2) ? NULL : (rnd(2) ? "x" : "yz");
      assert_int_equal(apex__ptree_set(t, i, pct, status, msg, msg ? strlen(msg) : 0), APEX_OK);
      json_t *node = nth_node(model, &at);
      assert_non_null(node);
      json_object_set_new(node, "percentage", json_real(pct));
      if (status) json_object_set_new(node, "status", json_string(status));
      if (msg) json_object_set_new(node, "message", json_string(msg));
    }
    assert_tree(t, model);
  }
  json_decref(model);
  apex__ptree_free(t);
}

/* ------------------------------------------------------ no memory */

/* For N = 1, 2, ...: the Nth allocation of a merge fails. The tree must
 * stay a valid tree whose index names exactly its nodes (every one can be
 * set), and the next merge must complete it. */
static void test_a_failed_merge_leaves_a_valid_tree_the_next_one_completes(void **st) {
  (void)st;
  json_t *next = parse("[{\"name\": \"a\", \"percentage\": 1, \"message\": \"changed\"},"
                       " {\"name\": \"b\", \"percentage\": 10, \"sub_tasks\": ["
                       "   {\"name\": \"b1\", \"percentage\": 0, \"details\": {\"y\": 2}},"
                       "   {\"name\": \"b3\", \"percentage\": 0}]},"
                       " {\"name\": \"d\", \"percentage\": 0, \"sub_tasks\": ["
                       "   {\"name\": \"d1\", \"percentage\": 0}]}]");
  int failed = 0;
  for (long n = 1; n < 500; n++) {
    apex__ptree_t *t = tree_of(NESTED);
    g_allocs = 0;
    g_fail_at = n;
    int rc = apex__ptree_merge(t, next);
    g_fail_at = -1;
    if (rc == APEX_OK) {
      assert_tree(t, next);
      apex__ptree_free(t);
      break;
    }
    failed = 1;
    assert_int_equal(rc, APEX_E_NOMEM);
    json_t *now = apex__ptree_json(t);
    json_t *u = json_pack("{s:i, s:O}", "percentage", 1, "sub_tasks", now);
    assert_int_equal(apex_progress_validate(u, NULL, 0), APEX_OK);
    assert_int_equal(apex__ptree_size(t), count(now));
    for (size_t i = 0; i < apex__ptree_size(t); i++)
      assert_int_equal(apex__ptree_set(t, i, 3.0, "running", "m", 1), APEX_OK);
    json_decref(u);
    json_decref(now);
    assert_int_equal(apex__ptree_merge(t, next), APEX_OK);
    assert_tree(t, next);
    apex__ptree_free(t);
  }
  assert_true(failed); /* some allocation did fail */
  json_decref(next);
}

/* ------------------------------------------------- statuses and reasons */

static void test_pending_is_a_known_status_everywhere(void **st) {
  (void)st;
  assert_int_equal(apex_progress_status_is_known("pending"), 1);
  assert_int_equal(apex_progress_status_is_known("Pending"), 0);
  json_t *u = parse("{\"percentage\": 0, \"status\": \"pending\", \"sub_tasks\": ["
                    "{\"name\": \"a\", \"percentage\": 0, \"status\": \"pending\"}]}");
  assert_int_equal(apex_progress_validate(u, NULL, 0), APEX_OK);
  json_decref(u);
  apex_progress_update_t cu = {.percentage = 0, .status = "pending"};
  assert_int_equal(apex_progress_update_validate(&cu, NULL, 0), APEX_OK);
  assert_int_equal(apex__progress_node_validate(0, 0.0, "pending", NULL, NULL, 0), APEX_OK);
}

static void expect_node_reason(size_t index, double pct, const char *status, const char *msg,
                               const char *reason) {
  char why[256] = "untouched";
  assert_int_equal(apex__progress_node_validate(index, pct, status, msg, why, sizeof why),
                   APEX_E_INVALID);
  assert_string_equal(why, reason);
}

static void test_node_update_reasons_name_the_node(void **st) {
  (void)st;
  expect_node_reason(7, 101.0, NULL, NULL, "node[7].percentage: 101 is outside [0, 100]");
  expect_node_reason(7, -0.5, NULL, NULL, "node[7].percentage: -0.5 is outside [0, 100]");
  expect_node_reason(0, NAN, NULL, NULL, "node[0].percentage: not finite");
  expect_node_reason(3, 1.0, "done", NULL, "node[3].status: unknown status 'done'");
  expect_node_reason(3, 1.0, NULL, "a\xff", "node[3].message: not valid UTF-8 at byte 1");
  expect_node_reason(APEX_PROGRESS_ROOT, 1.0, "done", NULL, "status: unknown status 'done'");
  expect_node_reason(APEX_PROGRESS_ROOT, INFINITY, NULL, NULL, "percentage: not finite");
  char why[64] = "untouched";
  assert_int_equal(apex__progress_node_validate(1, 100.0, "completed", "ok", why, sizeof why),
                   APEX_OK);
  assert_string_equal(why, "");
}

/* The validator spells a place only on failure now; its reasons for deep
 * places must read as they did. */
static void test_validator_reasons_still_name_deep_places(void **st) {
  (void)st;
  json_t *u = parse("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1},"
                    " {\"name\": \"b\", \"percentage\": 1, \"sub_tasks\": ["
                    "   {\"name\": \"c\", \"percentage\": 1},"
                    "   {\"name\": \"d\", \"percentage\": 1, \"details\": {}}]}]}");
  json_t *d = json_object_get(json_array_get(json_object_get(json_array_get(
                                  json_object_get(u, "sub_tasks"), 1), "sub_tasks"), 1), "details");
  json_object_set_new(d, "k", json_stringn("\0", 1));
  char why[256];
  assert_int_equal(apex_progress_validate(u, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, "sub_tasks[1].sub_tasks[1].details.k: not valid UTF-8 at byte 0");
  json_decref(u);
  u = parse("{\"percentage\": 1, \"sub_tasks\": [{\"name\": \"a\", \"percentage\": 1,"
            " \"percent\": 2, \"status\": \"nope\"}]}");
  assert_int_equal(apex_progress_validate(u, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, "sub_tasks[0].status: unknown status 'nope'");
  json_object_del(json_array_get(json_object_get(u, "sub_tasks"), 0), "status");
  assert_int_equal(apex_progress_validate(u, why, sizeof why), APEX_E_INVALID);
  assert_string_equal(why, "sub_tasks[0]: unknown key 'percent'");
  json_decref(u);
}

/* A plugin built with this header, loaded by a host whose api table ends
 * before progress_node: the wrapper says APEX_E_INVALID instead of calling
 * what lies past the table. */
static void test_the_wrapper_refuses_on_a_host_without_it(void **st) {
  (void)st;
  apex_host_api_t older;
  memset(&older, 0xab, sizeof older); /* past struct_size: not the host's */
  older.struct_size = (uint32_t)offsetof(apex_host_api_t, progress_node);
  apex_ctx_t ctx = {&older};
  assert_int_equal(apex_ctx_progress_node(&ctx, 0, 1.0, NULL, NULL), APEX_E_INVALID);
  assert_false(APEX_HAS_FIELD(apex_host_api_t, &older, progress_node));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_new_tree_is_empty_and_has_no_node),
      cmocka_unit_test(test_nodes_are_indexed_in_pre_order),
      cmocka_unit_test(test_set_changes_status_and_message_only_when_given),
      cmocka_unit_test(test_an_unchanged_tree_merges_without_allocating),
      cmocka_unit_test(test_a_merge_copies_only_the_fields_that_changed),
      cmocka_unit_test(test_a_merge_drops_fields_and_nodes_the_report_dropped),
      cmocka_unit_test(test_a_merge_adds_nodes_and_reindexes),
      cmocka_unit_test(test_merging_no_tree_empties_it),
      cmocka_unit_test(test_a_copy_is_independent_of_the_tree),
      cmocka_unit_test(test_random_merges_and_sets_match_a_model),
      cmocka_unit_test(test_a_failed_merge_leaves_a_valid_tree_the_next_one_completes),
      cmocka_unit_test(test_pending_is_a_known_status_everywhere),
      cmocka_unit_test(test_node_update_reasons_name_the_node),
      cmocka_unit_test(test_validator_reasons_still_name_deep_places),
      cmocka_unit_test(test_the_wrapper_refuses_on_a_host_without_it),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
