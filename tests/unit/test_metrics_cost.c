/* The metrics' cheap paths (issue 12's cost on W1): the bucket found from
 * a duration's bit length agrees with a search of the bounds everywhere
 * (src/obs/metrics.h), and the observers' clock (src/obs/clock.c) reads
 * CLOCK_MONOTONIC's time, from the TSC where it may and from the kernel
 * when the TSC is off. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "obs/clock.h"
#include "obs/metrics.h"

/* The first bucket whose bound is >= ns, by a linear search. */
static unsigned bucket_by_search(uint64_t ns) {
  unsigned i = 0;
  while (i < APEX_METRICS_N_BOUNDS && ns > apex__mx_bounds_ns[i]) i++;
  return i;
}

static void check_bucket(uint64_t ns) {
  if (apex__mx_bucket_of(ns) != bucket_by_search(ns))
    fail_msg("bucket of %llu: %u, the bounds say %u", (unsigned long long)ns,
             apex__mx_bucket_of(ns), bucket_by_search(ns));
}

static void test_bucket_by_bit_length_matches_a_search(void **st) {
  (void)st;
  check_bucket(0);
  check_bucket(UINT64_MAX);
  for (unsigned l = 0; l < 64; l++) { /* every bit length's edges */
    uint64_t p = 1ull << l;
    check_bucket(p - 1);
    check_bucket(p);
    check_bucket(p + 1);
  }
  for (unsigned i = 0; i < APEX_METRICS_N_BOUNDS; i++) { /* every bound's neighbours */
    for (int d = -2; d <= 2; d++) check_bucket(apex__mx_bounds_ns[i] + (uint64_t)(int64_t)d);
  }
  uint64_t x = 0x9e3779b97f4a7c15ull; /* and a spread of values of every size */
  for (int i = 0; i < 200000; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    check_bucket(x >> (i % 64));
  }
}

static uint64_t spread(uint64_t a, uint64_t b) { return a > b ? a - b : b - a; }

/* Every read lies between two kernel reads around it, give or take the
 * TSC's error (clock.c: under a microsecond; 10 us is the smallest
 * bucket), and never goes back by more than that. */
static void check_reads(uint64_t slack) {
  uint64_t last = 0;
  for (int i = 0; i < 20000; i++) {
    uint64_t a = apex__now_ns();
    uint64_t b = apex__obs_clock_ns();
    uint64_t c = apex__now_ns();
    if (b + slack < a || b > c + slack)
      fail_msg("read %llu outside [%llu, %llu] by more than %llu ns", (unsigned long long)b,
               (unsigned long long)a, (unsigned long long)c, (unsigned long long)slack);
    if (b + slack < last)
      fail_msg("read %llu went back from %llu", (unsigned long long)b, (unsigned long long)last);
    last = b;
  }
}

static void test_tsc_clock_reads_the_monotonic_time(void **st) {
  (void)st;
  if (!apex__obs_clock_tsc_on()) {
    /* No invariant TSC, or the kernel keeps its clock elsewhere: the
     * kernel's reads, exactly. */
    check_reads(0);
    skip();
  }
  /* Calibrated 10 ms after the first read: read on until this thread has
   * an anchor (span set), 5 s at most. */
  uint64_t until = apex__now_ns() + 5000000000ull;
  while (!apex__obs_clk.span && apex__now_ns() < until) (void)apex__obs_clock_ns();
  assert_true(apex__obs_clk.span != 0);
  assert_true(apex__obs_clk.mult != 0);
  check_reads(10000);
  /* Over a longer stretch too: re-anchored every 2 ms. */
  until = apex__now_ns() + 50000000ull;
  while (apex__now_ns() < until) check_reads(10000);
  assert_true(spread(apex__obs_clock_ns(), apex__now_ns()) < 10000);
}

static void test_tsc_off_reads_the_kernel_clock(void **st) {
  (void)st;
  apex__obs_clock_tsc_off();
  assert_int_equal(apex__obs_clock_tsc_on(), 0);
  assert_int_equal(apex__obs_clk.span, 0);
  check_reads(0); /* exactly the kernel's: no slack */
  assert_int_equal(apex__obs_clk.span, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bucket_by_bit_length_matches_a_search),
      cmocka_unit_test(test_tsc_clock_reads_the_monotonic_time),
      cmocka_unit_test(test_tsc_off_reads_the_kernel_clock),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
