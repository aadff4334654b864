/* Shared helpers of the C benchmark peers (bench/README.md has the protocol).
 * Header-only: each peer is one program; nothing here is part of libapex.
 * Every helper either succeeds or ends the program with a message (a
 * benchmark that cannot measure must not print a figure). */
#ifndef APEX_BENCH_UTIL_H
#define APEX_BENCH_UTIL_H

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__)
#define BENCH_UNUSED __attribute__((unused))
#else
#define BENCH_UNUSED
#endif

static BENCH_UNUSED void bench_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("bench: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static BENCH_UNUSED void *bench_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) bench_die("out of memory (%zu x %zu bytes)", n, size);
  return p;
}

static BENCH_UNUSED void *bench_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) bench_die("out of memory (%zu bytes)", n);
  return p;
}

/* An eventfd (flags: EFD_SEMAPHORE, EFD_NONBLOCK, ...; CLOEXEC always). */
static BENCH_UNUSED int bench_efd_new(int flags) {
  int fd = eventfd(0, EFD_CLOEXEC | flags);
  if (fd < 0) bench_die("eventfd: %s", strerror(errno));
  return fd;
}

static BENCH_UNUSED void bench_efd_signal(int fd) {
  uint64_t one = 1;
  ssize_t n;
  do n = write(fd, &one, sizeof one);
  while (n < 0 && errno == EINTR);
  if (n != (ssize_t)sizeof one) bench_die("eventfd write: %s", strerror(errno));
}

/* Blocking read of an eventfd. Returns the count read (1 for a semaphore). */
static BENCH_UNUSED uint64_t bench_efd_wait(int fd) {
  uint64_t v;
  ssize_t n;
  do n = read(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  if (n != (ssize_t)sizeof v) bench_die("eventfd read: %s", n < 0 ? strerror(errno) : "short");
  return v;
}

/* Untimed wait until fd is readable, as a handler that waits "forever" for
 * its cancellation does. */
static BENCH_UNUSED void bench_wait_readable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  for (;;) {
    int r = poll(&p, 1, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) bench_die("poll: %s", strerror(errno));
    if (p.revents & POLLIN) return;
    if (p.revents & (POLLERR | POLLNVAL)) bench_die("poll: fd %d broken", fd);
  }
}

static BENCH_UNUSED uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CPU time of the calling thread / of the whole process, in ns. */
static BENCH_UNUSED uint64_t bench_thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static BENCH_UNUSED uint64_t bench_process_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* User + system CPU time of the whole process (every thread), in ns, from
 * getrusage(RUSAGE_SELF): the figure cpu_ns_per_task. Microsecond
 * resolution; a workload reads it right before its wall clock starts and
 * right after it stops, so both cover the same interval and the call's own
 * cost stays out of the wall figure. */
static BENCH_UNUSED uint64_t bench_cpu_ns(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) bench_die("getrusage: %s", strerror(errno));
  uint64_t us = (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec +
                (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
  return us * 1000u;
}

/* W7's shared terms, so every peer does the same work: each task's timeout,
 * and the order the host cancels them in (a Fisher-Yates shuffle driven by
 * splitmix64 from a fixed seed: random, and the same in every peer). */
#define BENCH_W7_TIMEOUT_MS 10000u
#define BENCH_W7_SEED 0x9e3779b97f4a7c15ull

static BENCH_UNUSED uint64_t bench_rand(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* A new array of 0..n-1 in W7's cancel order (the caller frees it). */
static BENCH_UNUSED uint32_t *bench_cancel_order(uint64_t n) {
  if (n > UINT32_MAX) bench_die("W7: %llu tasks is more than the order can hold",
                                (unsigned long long)n);
  uint32_t *v = bench_xmalloc((size_t)n * sizeof *v);
  for (uint64_t i = 0; i < n; i++) v[i] = (uint32_t)i;
  uint64_t s = BENCH_W7_SEED;
  for (uint64_t i = n; i > 1; i--) { /* v[i-1] swaps with one of v[0..i-1] */
    uint64_t j = bench_rand(&s) % i;
    uint32_t tmp = v[i - 1];
    v[i - 1] = v[j];
    v[j] = tmp;
  }
  return v;
}

/* Resident set size now, in bytes (from /proc/self/statm). */
static BENCH_UNUSED uint64_t bench_rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) bench_die("open /proc/self/statm: %s", strerror(errno));
  unsigned long size = 0, resident = 0;
  int n = fscanf(f, "%lu %lu", &size, &resident);
  fclose(f);
  if (n != 2) bench_die("parse /proc/self/statm");
  return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static int bench__cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* Sorts v in place; returns the q-quantile (0 <= q <= 1, nearest rank). */
static BENCH_UNUSED uint64_t bench_quantile(uint64_t *v, size_t n, double q) {
  if (n == 0) bench_die("quantile of no samples");
  qsort(v, n, sizeof *v, bench__cmp_u64);
  size_t i = (size_t)(q * (double)n);
  if (i >= n) i = n - 1;
  return v[i];
}

/* One measurement line: the protocol of bench/README.md. */
static BENCH_UNUSED void bench_emit(const char *peer, const char *workload, uint64_t size,
                                    const char *figure, double value, const char *unit) {
  printf("peer=%s workload=%s size=%llu figure=%s value=%.6g unit=%s\n", peer, workload,
         (unsigned long long)size, figure, value, unit);
  fflush(stdout);
}

/* The latency figures of a workload: p50, p99 and (p999 != 0) p999, in ns.
 * Sorts lat. */
static BENCH_UNUSED void bench_emit_latencies(const char *peer, const char *workload,
                                              uint64_t size, uint64_t *lat, int p999) {
  bench_emit(peer, workload, size, "p50", (double)bench_quantile(lat, size, 0.50), "ns");
  bench_emit(peer, workload, size, "p99", (double)bench_quantile(lat, size, 0.99), "ns");
  if (p999)
    bench_emit(peer, workload, size, "p999", (double)bench_quantile(lat, size, 0.999), "ns");
}

/* W3's placement split (BENCH_PLACEMENT=1 in the environment; off by
 * default, and then nothing below runs). A W3 sample has two modes on a
 * 2-core VM: the cancelled handler ran on the CPU the host cancelled from
 * (every wake-up a switch on one CPU: a few us), or on the other one (each
 * wake-up an inter-processor interrupt to a halted virtual CPU: tens of
 * us). Which mode a process draws is the kernel's placement, for every
 * peer alike, so a p50 compares draws as much as runtimes
 * (bench/analysis.md, "W3 by placement"); the split compares each mode
 * with the same mode. */
static BENCH_UNUSED int bench_placement_on(void) {
  const char *e = getenv("BENCH_PLACEMENT");
  return e && strcmp(e, "1") == 0;
}

/* The CPU this thread runs on, -1 if unknown (glibc's sched_getcpu is
 * _GNU_SOURCE; the system call is as good here). */
static BENCH_UNUSED int bench_cpu_now(void) {
  unsigned cpu = 0;
  return syscall(SYS_getcpu, &cpu, NULL, NULL) == 0 ? (int)cpu : -1;
}

/* Emits p50_same_cpu, p50_cross_cpu (ns; 0 when no sample had that
 * mode) and cross_cpu_share (%). same[i]: sample i's handler ended on the
 * CPU its host cancelled from. Leaves lat as it was. */
static BENCH_UNUSED void bench_emit_placement(const char *peer, const char *workload,
                                              uint64_t size, const uint64_t *lat,
                                              const unsigned char *same) {
  uint64_t *v[2] = {bench_xcalloc(size, sizeof(uint64_t)), bench_xcalloc(size, sizeof(uint64_t))};
  size_t n[2] = {0, 0};
  for (uint64_t i = 0; i < size; i++) v[same[i] ? 0 : 1][n[same[i] ? 0 : 1]++] = lat[i];
  bench_emit(peer, workload, size, "p50_same_cpu", n[0] ? (double)bench_quantile(v[0], n[0], 0.5) : 0,
             "ns");
  bench_emit(peer, workload, size, "p50_cross_cpu",
             n[1] ? (double)bench_quantile(v[1], n[1], 0.5) : 0, "ns");
  bench_emit(peer, workload, size, "cross_cpu_share", 100.0 * (double)n[1] / (double)size, "%");
  free(v[0]);
  free(v[1]);
}

/* The CPU figure of a workload: total CPU ns over `count` operations. */
static BENCH_UNUSED void bench_emit_cpu(const char *peer, const char *workload, uint64_t size,
                                        const char *figure, uint64_t cpu_ns, uint64_t count) {
  bench_emit(peer, workload, size, figure, (double)cpu_ns / (double)count, "ns");
}

/* Parses "<workload> <size> [variant]"; size must be a positive integer. */
static BENCH_UNUSED void bench_args(int argc, char **argv, const char **workload, uint64_t *size,
                                    const char **variant) {
  if (argc < 3 || argc > 4)
    bench_die("usage: %s WORKLOAD SIZE [VARIANT]  (W1 W2 W3 W3q W4 W5 W6 W6t W7)", argv[0]);
  char *end = NULL;
  errno = 0;
  unsigned long long n = strtoull(argv[2], &end, 10);
  if (errno || !end || *end || n == 0 || argv[2][0] == '-')
    bench_die("size must be a positive integer, got '%s'", argv[2]);
  *workload = argv[1];
  *size = n;
  *variant = argc == 4 ? argv[3] : NULL;
}

#endif
