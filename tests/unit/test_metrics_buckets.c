/* The metrics' fixed tables (src/obs/metrics.h): a duration lands in the
 * first bucket whose bound it does not exceed (a bound is inclusive, as
 * Prometheus' le is), past the last bound in +Inf; every failure code has
 * its own slot and maps back to itself. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "obs/metrics.h"

static void test_bounds_are_inclusive_and_the_last_bucket_is_inf(void **st) {
  (void)st;
  assert_int_equal(apex__mx_bucket_of(0), 0);
  for (unsigned i = 0; i < APEX_METRICS_N_BOUNDS; i++) {
    uint64_t b = apex__mx_bounds_ns[i];
    assert_int_equal(apex__mx_bucket_of(b), i);     /* le: at the bound, in it */
    assert_int_equal(apex__mx_bucket_of(b + 1), i + 1);
    assert_int_equal(apex__mx_bucket_of(b - 1), i); /* the bounds are far apart */
    /* the seconds table says the same */
    assert_true((uint64_t)(apex__mx_bounds_s[i] * 1e9 + 0.5) == b);
  }
  assert_int_equal(apex__mx_bucket_of(UINT64_MAX), APEX_METRICS_N_BOUNDS);
}

static void test_every_status_code_has_its_own_slot(void **st) {
  (void)st;
  int seen[APEX__MX_N_CODES] = {0};
  const int codes[] = {-1, -2, -3, -4, -5, -6, -7, -8, -9, -20, -21, -22,
                       -23, -24, -25, -40, -41, -42, -43, -44, -45};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    unsigned k = apex__mx_code_index(codes[i]);
    assert_true(k < APEX__MX_N_CODES - 1);
    assert_int_equal(seen[k], 0);
    seen[k] = 1;
    assert_int_equal(apex__mx_code_of(k), codes[i]);
  }
  assert_int_equal(apex__mx_code_index(-10), APEX__MX_N_CODES - 1);
  assert_int_equal(apex__mx_code_index(-46), APEX__MX_N_CODES - 1);
  assert_int_equal(apex__mx_code_index(7), APEX__MX_N_CODES - 1);
  assert_int_equal(apex__mx_code_of(APEX__MX_N_CODES - 1), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bounds_are_inclusive_and_the_last_bucket_is_inf),
      cmocka_unit_test(test_every_status_code_has_its_own_slot),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
