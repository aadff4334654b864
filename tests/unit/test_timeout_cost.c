/* What the three newer timeouts (src/exec/timeouts.c) cost a task, read
 * from the internals no public call shows: a task without them has no
 * options block and never enters the timeout heap (an overall timeout
 * alone uses only the deadline lists); one with them has a block in its
 * options allocation, one heap entry while something is pending and none,
 * nor a reserved slot, once it ended. Threads: cmocka's is the host. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/timeouts_kit.so"

static uint32_t heap_len(apex_manager_t *m, uint32_t *reserved) {
  apex__lock(&m->pool_mu);
  uint32_t n = m->theap_len;
  *reserved = m->theap_reserved;
  apex__unlock(&m->pool_mu);
  return n;
}

static void test_no_new_timeouts_no_block_no_timer(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  apex_submit_opts_t o = opts_timeout(30); /* the overall one only */
  apex_task_t *t = submit_json(m, "timeouts_kit", "work", "{\"ms\": 300}", &o);
  assert_null(t->opts);
  uint32_t reserved;
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, PROMPT_MS);
  assert_int_equal(heap_len(m, &reserved), 0);
  assert_int_equal(reserved, 0);
  wait_done(t);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

static void test_with_timeouts_one_entry_then_none(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.start_to_close_s = 30;
  o.heartbeat_timeout_s = 20;
  apex_task_t *t = submit_json(m, "timeouts_kit", "work", "{\"ms\": 300, \"hb_ms\": 10}", &o);
  assert_non_null(t->opts);
  assert_non_null(t->opts->tmo);
  assert_true((void *)t->opts->tmo == (void *)(t->opts + 1)); /* one allocation */
  uint32_t reserved;
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, PROMPT_MS);
  /* One entry for both timeouts, however many heartbeats. */
  assert_int_equal(heap_len(m, &reserved), 1);
  assert_int_equal(reserved, 1);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  AWAIT(heap_len(m, &reserved) == 0 && reserved == 0, PROMPT_MS);
  apex_task_release(t);
  apex_manager_destroy(m, 5000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_new_timeouts_no_block_no_timer),
      cmocka_unit_test(test_with_timeouts_one_entry_then_none),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
