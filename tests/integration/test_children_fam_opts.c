/* A plain child's options are its family's: one block per family
 * (ops/children.c, fam_opts_t) instead of a slot per child, counted by
 * the child tasks that point at it. A host may hold a child task longer
 * than its parent and the family live (apex_ops_find gives a handle), and
 * then still reads its options (apex_task_parent_id) and frees it
 * (task_free reads them last). Here the parent and its family go (the
 * manager is destroyed) while the host holds every child: a block freed
 * with the family would be read after its free (ASan: a use after free),
 * a count one over leaks it (ASan's leak check). Both blocks are covered:
 * children with no deadline and children capped at their parent's. The
 * plugin is tests/plugins/spawn_kit.c (hfan: n hang children, each ends
 * once cancelled). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/spawn_kit.so"

enum { N = 8 };

/* Holds every child of a parent (ids after pid: this test's only
 * submitter) while the parent, then the manager, go. */
static void hold_children_past_the_family(double parent_timeout_s) {
  apex_manager_config_t cfg = base_config(3);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  apex_submit_opts_t o = opts_timeout(parent_timeout_s);
  apex_task_t *t = submit_json(m, "spawn_kit", "hfan", "{\"n\": 8}",
                               parent_timeout_s > 0 ? &o : NULL);
  uint64_t pid = apex_task_id(t);
  apex_task_t *kids[N] = {0};
  int64_t until = now_ms() + 10000;
  for (int found = 0; found < N;) {
    assert_true(now_ms() < until);
    found = 0;
    for (int i = 0; i < N; i++) {
      if (!kids[i]) (void)apex_ops_find(m, pid + 1 + (uint64_t)i, &kids[i]);
      if (kids[i]) found++;
    }
    if (found < N) nap_ms(1);
  }
  for (int i = 0; i < N; i++) assert_int_equal(apex_task_parent_id(kids[i]), pid);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  wait_done(t);
  for (int i = 0; i < N; i++) wait_done(kids[i]);
  apex_task_release(t);
  /* Every task but the held children goes, the parent and its family
   * with it: the children's options must outlive them. */
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  for (int i = 0; i < N; i++) {
    assert_int_equal(apex_task_parent_id(kids[i]), pid);
    assert_int_equal(apex_task_state(kids[i]), APEX_TASK_CANCELLED);
    apex_task_release(kids[i]); /* the last: the family's block goes with the last one */
  }
}

static void test_children_without_a_deadline_outlive_their_family(void **st) {
  (void)st;
  hold_children_past_the_family(0);
}

static void test_capped_children_outlive_their_family(void **st) {
  (void)st;
  hold_children_past_the_family(60);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_children_without_a_deadline_outlive_their_family),
      cmocka_unit_test(test_capped_children_outlive_their_family),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
