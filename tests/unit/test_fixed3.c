/* apex__fmt_fixed3 (src/core/error.c) writes what printf's "%.3f" writes,
 * for every kind of value a timeout's message shows: exact thousandths
 * and their neighbours one ulp either side, exact halves of a thousandth
 * (ties, which printf rounds to even), values of every magnitude up to
 * the printf fallback and past it. The timeouts' messages
 * (tests/integration/test_timeouts.c) read its output in place.
 * Threads: cmocka's only. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/error.h"

static unsigned checked;

static void same_as_printf(double v) {
  char want[APEX__FIXED3_MAX], got[APEX__FIXED3_MAX];
  int n = snprintf(want, sizeof want, "%.3f", v);
  size_t len = apex__fmt_fixed3(got, v);
  if (strcmp(want, got) != 0 || (size_t)n != len)
    print_error("%.17g: printf \"%s\" (%d), fixed3 \"%s\" (%zu)\n", v, want, n, got, len);
  assert_string_equal(got, want);
  assert_int_equal(len, (size_t)n);
  checked++;
}

static void test_thousandths_and_neighbours(void **st) {
  (void)st;
  for (int k = 0; k <= 200000; k++) {
    double v = k / 1000.0;
    same_as_printf(v);
    same_as_printf(nextafter(v, 0));
    same_as_printf(nextafter(v, INFINITY));
  }
}

static void test_ties_round_to_even(void **st) {
  (void)st;
  /* m/16 with m odd: x.xxx5 exactly in binary, printf's ties. */
  for (int m = 1; m < 4000; m += 2) same_as_printf(m / 16.0);
  for (int m = 1; m < 4000; m += 2) same_as_printf(m / 2048.0);
  same_as_printf(0.0625);  /* "0.062" */
  same_as_printf(0.1875);  /* "0.188" */
}

static void test_every_magnitude(void **st) {
  (void)st;
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < 200000; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    double mant = (double)(x >> 11) / 9007199254740992.0; /* [0, 1) */
    int e = (int)(x % 70) - 20;                            /* 1e-20 .. 1e49 */
    same_as_printf(mant * pow(10, e));
  }
  same_as_printf(0.0);
  same_as_printf(1e15 - 0.125);
  same_as_printf(1e15);
  same_as_printf(1e300);
  same_as_printf(-0.005); /* printf's own path */
  assert_true(checked > 800000);
}

/* The values outside the fast path's range and the signed zero, which is
 * inside it by `>= 0` but which printf writes with its sign ("-0.000"). */
static void test_signed_zero_and_specials(void **st) {
  (void)st;
  same_as_printf(-0.0);
  same_as_printf(0.0);
  same_as_printf(-4.9e-324); /* rounds to zero, negative */
  same_as_printf(4.9e-324);
  same_as_printf(NAN);
  same_as_printf(-NAN);
  same_as_printf(INFINITY);
  same_as_printf(-INFINITY);
  same_as_printf(1.7976931348623157e308);  /* the longest: 309 digits */
  same_as_printf(-1.7976931348623157e308); /* and its sign */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_thousandths_and_neighbours),
      cmocka_unit_test(test_ties_round_to_even),
      cmocka_unit_test(test_every_magnitude),
      cmocka_unit_test(test_signed_zero_and_specials),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
