/* The observers' clock (src/obs/clock.h): CLOCK_MONOTONIC's time for the
 * metrics' histograms and the spans, read from the CPU's time-stamp
 * counter where that is as good as the kernel's read and cheaper.
 *
 * Why. On W1 the metrics read the clock twice a task (an attempt's start
 * and end), and those two reads were most of what the metrics cost: a
 * vDSO clock_gettime on this kind of VM costs 30 to 60 ns (its rdtscp or
 * lfence waits for every load before it), a plain rdtsc about half of that
 * and it overlaps with the work around it. bench/analysis.md has the
 * figures.
 *
 * When. Only on x86-64, only when CPUID says the TSC is invariant (leaf
 * 0x80000007, EDX bit 8: Linux's constant_tsc and nonstop_tsc) and the
 * kernel keeps CLOCK_MONOTONIC on it (its current clocksource is "tsc":
 * the kernel checked that the CPUs' counters agree, and would have moved
 * to another source if not). Anywhere else every read is clock_gettime.
 *
 * How. The scale is calibrated against CLOCK_MONOTONIC, process-wide: the
 * first anchoring read is the reference pair (TSC, ns); from 200 us after
 * it, every re-anchor sets the scale to the ns over the ticks since the
 * reference (so the baseline only grows: 10 ms gives the scale to a few
 * ppm, a minute to a few parts per billion). Until then every read is the
 * kernel's. While the baseline is short an anchor serves less: 1/16 of the
 * baseline (so from 12.5 us at 200 us up to the 2 ms below at 32 ms), which
 * keeps a young scale's error over an anchor's span under 1/8 of a
 * reference read's uncertainty. (The first scale waited 10 ms, and a run
 * shorter than that, W11's 10,000 children, read the kernel's clock
 * throughout: bench/analysis.md, W11 of the seventh session.) Each thread
 * keeps an anchor of its own: a kernel read taken
 * between two rdtsc (a pair whose rdtscs are far apart, the thread
 * preempted between them, is not used) and the scale at that time. A read
 * scales the ticks since the anchor; past about 2 ms, or when the counter
 * reads behind the anchor (a thread moved to a CPU whose counter is a few
 * ticks behind), it reads the kernel's clock and re-anchors. So a value is
 * the kernel's plus the drift of the counter against CLOCK_MONOTONIC over
 * at most 2 ms: with the kernel's slew limit of 500 ppm (NTP), under a
 * microsecond, the smallest bucket being 10 us. A re-anchor that finds
 * the old anchor off by more than 50 us (a VM migrated or resumed, a
 * counter that stepped) drops the calibration and starts it again.
 *
 * Cost: per read, one rdtsc, a subtraction, a compare, a multiply and a
 * shift on the thread's own block (initial-exec TLS); per thread every
 * 2 ms, one clock_gettime and an uncontended mutex.
 *
 * Thread-safety: the anchors are per thread; the calibration is under
 * cal_mu; the switch is atomic. Failure: none to report; a probe that
 * cannot read the clocksource leaves every read to clock_gettime. */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "obs/clock.h"

_Thread_local apex__obs_clk_t apex__obs_clk __attribute__((tls_model("initial-exec")));

#define CAL_MIN_NS 200000ull     /* the baseline the first scale needs */
#define SPAN_NS 2000000ull       /* how long an anchor serves, at most */
#define SPAN_PER_BASE 16ull      /* and at most 1/16 of the scale's baseline */
#define CHECK_NS 50000ull        /* an anchor off by more: recalibrate */
#define PAIR_MAX_TICKS 8000ull   /* rdtscs further apart around the kernel read: not an anchor */

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static _Atomic int tsc_ok; /* 1: the TSC may be read */
#if defined(__x86_64__)
/* The time from which a scale can be computed (the reference's + CAL_MIN_NS),
 * read without the lock so that a thread does not take it on every read
 * while the calibration waits; 0: no reference yet. */
static _Atomic uint64_t cal_after;
static pthread_mutex_t cal_mu = PTHREAD_MUTEX_INITIALIZER;
static int ref_set;             /* under cal_mu */
static uint64_t ref_tsc, ref_ns; /* under cal_mu */
static uint64_t cal_mult;        /* under cal_mu; 0: none yet */
static uint64_t cal_base;        /* under cal_mu: the ns cal_mult was measured over */
#endif

static void probe(void) {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (!__get_cpuid(0x80000007, &a, &b, &c, &d) || !(d & (1u << 8))) return;
  int fd = open("/sys/devices/system/clocksource/clocksource0/current_clocksource",
                O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char buf[16];
  ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  if (n >= 3 && memcmp(buf, "tsc", 3) == 0 && (n == 3 || buf[3] == '\n'))
    atomic_store(&tsc_ok, 1);
#endif
}

int apex__obs_clock_tsc_on(void) {
  pthread_once(&probe_once, probe);
  return atomic_load(&tsc_ok);
}

void apex__obs_clock_tsc_off(void) {
  pthread_once(&probe_once, probe);
  atomic_store(&tsc_ok, 0);
  apex__obs_clk.span = 0;
}

uint64_t apex__obs_clock_slow(void) {
  apex__obs_clk_t *c = &apex__obs_clk;
  pthread_once(&probe_once, probe);
  if (!atomic_load_explicit(&tsc_ok, memory_order_relaxed)) {
    c->span = 0;
    return apex__now_ns();
  }
#if defined(__x86_64__)
  uint64_t a = __rdtsc();
  uint64_t ns = apex__now_ns();
  uint64_t b = __rdtsc();
  if (b - a > PAIR_MAX_TICKS) return ns; /* preempted in between: the next read anchors */
  uint64_t after = atomic_load_explicit(&cal_after, memory_order_relaxed);
  if (!c->span && after && ns < after) return ns; /* calibrating: nothing to anchor yet */
  uint64_t tsc = a + (b - a) / 2;
  /* The anchor this one replaces, where it still applies, says whether
   * the counter kept time with the kernel's clock. */
  int off = 0;
  uint64_t d = tsc - c->tsc0;
  if (c->span && d < 2 * c->span) {
    uint64_t want = c->ns0 + ((d * c->mult) >> 32);
    off = (want > ns ? want - ns : ns - want) > CHECK_NS;
  }
  pthread_mutex_lock(&cal_mu);
  if (!ref_set || off) {
    ref_set = 1;
    ref_tsc = tsc;
    ref_ns = ns;
    cal_mult = 0;
    atomic_store_explicit(&cal_after, ns + CAL_MIN_NS, memory_order_relaxed);
  } else if (ns - ref_ns >= CAL_MIN_NS && tsc > ref_tsc) {
    double m = (double)(ns - ref_ns) / (double)(tsc - ref_tsc) * 4294967296.0;
    cal_base = ns - ref_ns;
    /* A counter below 1 GHz would overflow the fast path's product: the
     * kernel's clock then, for good (not a lock per read, calibrating
     * for ever). */
    if (m >= 1.0 && m < 4294967295.0) {
      cal_mult = (uint64_t)m;
    } else {
      cal_mult = 0;
      atomic_store(&tsc_ok, 0);
    }
  }
  uint64_t mult = cal_mult;
  /* A young scale (its baseline under 32 ms) is off by up to the two
   * reference reads' uncertainty over its baseline: an anchor serves
   * 1/16 of that baseline, so its error stays 1/8 of one read's. */
  uint64_t span_ns = cal_base / SPAN_PER_BASE < SPAN_NS ? cal_base / SPAN_PER_BASE : SPAN_NS;
  pthread_mutex_unlock(&cal_mu);
  c->tsc0 = tsc;
  c->ns0 = ns;
  c->mult = mult;
  c->span = 0;
  if (mult) {
    uint64_t span = (span_ns << 32) / mult;
    c->span = span < (1ull << 31) ? span : (1ull << 31); /* 2 * span * mult < 2^64 */
  }
  return ns;
#else
  return apex__now_ns();
#endif
}
