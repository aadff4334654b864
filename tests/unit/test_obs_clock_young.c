/* The observers' clock (src/obs/clock.c) while its scale is young: the
 * TSC serves within a few milliseconds of the process's first read (a run
 * shorter than the old 10 ms calibration, W11's 10,000 children, read the
 * kernel's clock throughout: bench/analysis.md, W11 of the seventh
 * session), and every read from then on lies between two kernel reads
 * around it, give or take a few microseconds, while the anchors' spans
 * grow with the scale's baseline. Its own process: the calibration is
 * process-wide and starts at the first read, which is this test's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "obs/clock.h"

/* Every read within slack of the kernel reads around it (the smallest
 * metrics bucket is 10 us; clock.c's bound is about a microsecond, plus
 * the reference reads' own uncertainty on a loaded VM). */
#define SLACK_NS 5000u

static void check_read(void) {
  uint64_t a = apex__now_ns();
  uint64_t b = apex__obs_clock_ns();
  uint64_t c = apex__now_ns();
  if (b + SLACK_NS < a || b > c + SLACK_NS)
    fail_msg("read %llu outside [%llu, %llu] by more than %u ns (anchor span %llu ticks)",
             (unsigned long long)b, (unsigned long long)a, (unsigned long long)c, SLACK_NS,
             (unsigned long long)apex__obs_clk.span);
}

static void test_young_scale_serves_soon_and_reads_true(void **st) {
  (void)st;
  uint64_t t0 = apex__now_ns();
  if (!apex__obs_clock_tsc_on()) skip(); /* every read is the kernel's: test_metrics_cost */
  /* The first anchor: no scale for 200 us, then one. A preempted pair is
   * not an anchor, so a loaded machine may take a few more reads; 1 s is
   * far beyond that (the old calibration took 10 ms on any machine, and
   * this bound alone would not tell them apart: the span below does). */
  uint64_t first = 0;
  while (apex__now_ns() < t0 + 1000000000ull) {
    check_read();
    if (apex__obs_clk.span) {
      first = apex__now_ns() - t0;
      break;
    }
  }
  assert_true(first != 0);
  /* A young scale's anchor serves 1/16 of its baseline, far less than the
   * 2 ms of a grown one: read as ticks, under 2 ms's worth while the
   * baseline is under 32 ms. */
  uint64_t young_span = apex__obs_clk.span;
  uint64_t grown_ticks = (2000000ull << 32) / apex__obs_clk.mult;
  if (first < 16000000ull && young_span * 2 > grown_ticks)
    fail_msg("anchor span %llu ticks at %llu ns: a young scale's is under half of %llu",
             (unsigned long long)young_span, (unsigned long long)first,
             (unsigned long long)grown_ticks);
  /* Reads stay true while the spans grow, up to the grown 2 ms. */
  while (apex__now_ns() < t0 + 80000000ull) check_read();
  assert_true(apex__obs_clk.span != 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_young_scale_serves_soon_and_reads_true),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
