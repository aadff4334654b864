/* apex__lock_t and apex__cond_t (src/exec/lock.h): the lock the pool's and
 * the DONE queue's sections take. Mutual exclusion under a hammer of more
 * threads than cores (so holders lose their CPU and lockers go through
 * the spin and the sleep), every sleeper woken by the unlocks that follow
 * (no lost wake-up: a thread left asleep fails the bounded await), the
 * word back at zero (no sleeper count or wake bit left behind), and the
 * condition variable's broadcast and timed wait. Threads: cmocka's thread
 * and the ones each test starts and joins. */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "exec/lock.h"
#include "integration/harness.h"

enum { HAMMER_THREADS = 8, HAMMER_ROUNDS = 100000, SLEEPERS = 4 };

static apex__lock_t g_lock;
static apex__cond_t g_cond;
/* Plain: guarded by g_lock. Two fields, so a torn section shows. */
static uint64_t g_count, g_shadow;
static atomic_int g_done;
static int g_flag;            /* under g_lock */
static atomic_int g_waiting;

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *hammer(void *arg) {
  (void)arg;
  for (int i = 0; i < HAMMER_ROUNDS; i++) {
    apex__lock(&g_lock);
    uint64_t c = g_count;
    g_shadow = c + 1;
    g_count = c + 1;
    if ((i & 1023) == 0) sched_yield(); /* sometimes lose the CPU holding it */
    apex__unlock(&g_lock);
  }
  atomic_fetch_add(&g_done, 1);
  return NULL;
}

static void reset(void) {
  g_lock = (apex__lock_t){0};
  g_cond = (apex__cond_t){0};
  g_count = g_shadow = 0;
  g_flag = 0;
  atomic_store(&g_done, 0);
  atomic_store(&g_waiting, 0);
}

static void test_lock_excludes_under_a_hammer(void **st) {
  (void)st;
  reset();
  pthread_t th[HAMMER_THREADS];
  for (int i = 0; i < HAMMER_THREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, hammer, NULL), 0);
  /* Bounded: a lost wake-up leaves a thread asleep and fails here. */
  AWAIT(atomic_load(&g_done) == HAMMER_THREADS, 120000);
  for (int i = 0; i < HAMMER_THREADS; i++) pthread_join(th[i], NULL);
  assert_int_equal(g_count, (uint64_t)HAMMER_THREADS * HAMMER_ROUNDS);
  assert_int_equal(g_shadow, g_count);
  assert_int_equal(atomic_load(&g_lock.word), 0);
}

static void *one_lock(void *arg) {
  (void)arg;
  apex__lock(&g_lock);
  g_count++;
  apex__unlock(&g_lock);
  atomic_fetch_add(&g_done, 1);
  return NULL;
}

static void test_lock_wakes_every_sleeper(void **st) {
  (void)st;
  reset();
  apex__lock(&g_lock);
  pthread_t th[SLEEPERS];
  for (int i = 0; i < SLEEPERS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, one_lock, NULL), 0);
  /* Each spins a moment, then registers to sleep. */
  AWAIT(atomic_load(&g_lock.word) ==
            (APEX__LOCK_HELD | SLEEPERS * APEX__LOCK_SLEEPER),
        PROMPT_MS);
  assert_int_equal(atomic_load(&g_done), 0);
  apex__unlock(&g_lock); /* wakes one; each unlock after wakes the next */
  AWAIT(atomic_load(&g_done) == SLEEPERS, PROMPT_MS);
  for (int i = 0; i < SLEEPERS; i++) pthread_join(th[i], NULL);
  assert_int_equal(g_count, SLEEPERS);
  assert_int_equal(atomic_load(&g_lock.word), 0);
}

static void *cond_waiter(void *arg) {
  (void)arg;
  apex__lock(&g_lock);
  atomic_fetch_add(&g_waiting, 1);
  while (!g_flag) apex__cond_wait(&g_cond, &g_lock, UINT64_MAX);
  g_count++;
  apex__unlock(&g_lock);
  atomic_fetch_add(&g_done, 1);
  return NULL;
}

static void test_cond_broadcast_wakes_waiters(void **st) {
  (void)st;
  reset();
  pthread_t th[SLEEPERS];
  for (int i = 0; i < SLEEPERS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, cond_waiter, NULL), 0);
  /* Each counted itself under the lock and then waits, releasing it: once
   * this thread holds it, all are in apex__cond_wait (or past its read of
   * the count). */
  AWAIT(atomic_load(&g_waiting) == SLEEPERS, PROMPT_MS);
  apex__lock(&g_lock);
  g_flag = 1;
  apex__cond_broadcast(&g_cond);
  apex__unlock(&g_lock);
  AWAIT(atomic_load(&g_done) == SLEEPERS, PROMPT_MS);
  for (int i = 0; i < SLEEPERS; i++) pthread_join(th[i], NULL);
  assert_int_equal(g_count, SLEEPERS);
  assert_int_equal(atomic_load(&g_lock.word), 0);
}

static void test_cond_timed_wait_returns_at_its_time(void **st) {
  (void)st;
  reset();
  uint64_t t0 = mono_ns();
  uint64_t until = t0 + 50000000u; /* 50 ms */
  apex__lock(&g_lock);
  while (mono_ns() < until) apex__cond_wait(&g_cond, &g_lock, until);
  apex__unlock(&g_lock);
  uint64_t took = mono_ns() - t0;
  assert_true(took >= 50000000u);
  assert_true(took < 10000000000u); /* returned, not slept on */
  assert_int_equal(atomic_load(&g_lock.word), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lock_excludes_under_a_hammer),
      cmocka_unit_test(test_lock_wakes_every_sleeper),
      cmocka_unit_test(test_cond_broadcast_wakes_waiters),
      cmocka_unit_test(test_cond_timed_wait_returns_at_its_time),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
