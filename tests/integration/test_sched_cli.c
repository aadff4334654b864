/* `apex run`'s scheduling flags (cli/main.c): --priority, --key and
 * --run-after reach the submit (a run after 0.3 s takes that long), and
 * bad values exit 2 naming the flag.
 *
 * Plugins: testkit. Threads: cmocka's is the host. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/cli_harness.h"

static void test_flags_reach_the_submit(void **st) {
  (void)st;
  proc_t p;
  run(&p, "--plugin-path", APEX_TEST_PLUGIN_DIR, "run", "testkit.noop", "--priority", "high",
      "--key", "host-1", "--run-after", "0.3", "--json", NULL);
  assert_int_equal(p.code, 0);
  assert_true(p.end_ms - p.start_ms >= 300);
  json_t *lines = json_lines(&p);
  assert_string_equal(json_string_value(json_object_get(the_result(lines), "state")), "succeeded");
  json_decref(lines);
  proc_free(&p);
  run(&p, "--plugin-path", APEX_TEST_PLUGIN_DIR, "run", "testkit.noop", "--priority", "-100",
      "--json", NULL);
  assert_int_equal(p.code, 0);
  proc_free(&p);
}

static void test_bad_values_exit_2(void **st) {
  (void)st;
  static const char *const bad[][3] = {{"--priority", "urgent", "--priority"},
                                       {"--priority", "101", "--priority"},
                                       {"--run-after", "-1", "--run-after"},
                                       {"--run-after", "soon", "--run-after"},
                                       {"--key", "", "concurrency_key"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    proc_t p;
    run(&p, "--plugin-path", APEX_TEST_PLUGIN_DIR, "run", "testkit.noop", bad[i][0], bad[i][1],
        "--json", NULL);
    assert_int_equal(p.code, 2);
    assert_contains(buf_str(&p.err), bad[i][2]);
    proc_free(&p);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_flags_reach_the_submit),
      cmocka_unit_test(test_bad_values_exit_2),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
