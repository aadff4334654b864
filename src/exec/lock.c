/* The contended paths of apex__lock_t (lock.h): the bounded spin, the
 * sleep on the lock word's futex, and the wake. */
#include "exec/lock.h"

#include <linux/futex.h>
#include <limits.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Pauses a locker spins, reading the word, before it sleeps: about 2 us
 * here (a pause is about 25 ns on the VM bench/analysis.md measures on),
 * some ten times the longest pool_mu or ev_mu section on a core that
 * keeps running, and less than a futex sleep and wake cost together. */
#define SPINS 80u

/* The most pauses between two reads of the word in the spin. */
#define GAP_MAX 16u

void apex__lock_wait(apex__lock_t *l) {
  uint32_t v;
  /* The gap between reads doubles (1, 2, 4, ... GAP_MAX pauses), the
   * spin's length staying SPINS pauses: each read takes the word's line
   * from the holder's core, and pool_mu's line holds what its sections
   * write (n_in, the reference bank), so a spinner that read it every
   * pause made the holder fetch it back for each write and for its
   * unlock, lengthening the section that the spinners wait for: with
   * three threads on two cores that was W1's slow mode (bench/analysis.md,
   * W1 of the ninth session). */
  for (unsigned i = 0, gap = 1; i < SPINS; i += gap, gap = gap < GAP_MAX ? gap * 2 : gap) {
    for (unsigned k = 0; k < gap; k++) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    v = atomic_load_explicit(&l->word, memory_order_relaxed);
    if (!(v & APEX__LOCK_HELD) &&
        atomic_compare_exchange_weak_explicit(&l->word, &v, v | APEX__LOCK_HELD,
                                              memory_order_acquire, memory_order_relaxed))
      return;
  }
  v = atomic_fetch_add_explicit(&l->word, APEX__LOCK_SLEEPER, memory_order_relaxed) +
      APEX__LOCK_SLEEPER;
  for (;;) {
    if (!(v & APEX__LOCK_HELD)) {
      /* Taken: no longer a sleeper, and any wake on its way is spent (it
       * was for this thread, or the sleeper it was for will sleep with the
       * bit clear and be woken by the next unlock). */
      if (atomic_compare_exchange_weak_explicit(
              &l->word, &v, ((v | APEX__LOCK_HELD) - APEX__LOCK_SLEEPER) & ~APEX__LOCK_WAKING,
              memory_order_acquire, memory_order_relaxed))
        return;
      continue;
    }
    if (v & APEX__LOCK_WAKING) {
      /* Never sleep with the bit set: unlocks would not wake this thread.
       * Clearing it lets the holder's unlock wake one sleeper. */
      atomic_compare_exchange_weak_explicit(&l->word, &v, v & ~APEX__LOCK_WAKING,
                                            memory_order_relaxed, memory_order_relaxed);
      continue;
    }
    /* Held, bit clear: the holder's unlock wakes a sleeper. Returns at
     * once if the word is no longer v. */
    syscall(SYS_futex, (uint32_t *)&l->word, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
    v = atomic_load_explicit(&l->word, memory_order_relaxed);
  }
}

void apex__lock_wake(apex__lock_t *l) {
  uint32_t v = atomic_load_explicit(&l->word, memory_order_relaxed);
  do {
    /* No sleeper, a wake already on its way, or held again (its holder's
     * unlock wakes): nothing to do. */
    if (v < APEX__LOCK_SLEEPER || (v & (APEX__LOCK_WAKING | APEX__LOCK_HELD))) return;
  } while (!atomic_compare_exchange_weak_explicit(&l->word, &v, v | APEX__LOCK_WAKING,
                                                  memory_order_relaxed, memory_order_relaxed));
  syscall(SYS_futex, (uint32_t *)&l->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

void apex__cond_wait(apex__cond_t *c, apex__lock_t *l, uint64_t until) {
  uint32_t seq = atomic_load_explicit(&c->seq, memory_order_relaxed);
  apex__unlock(l);
  if (until == UINT64_MAX) {
    syscall(SYS_futex, (uint32_t *)&c->seq, FUTEX_WAIT_PRIVATE, seq, NULL, NULL, 0);
  } else {
    /* Absolute, on CLOCK_MONOTONIC (FUTEX_WAIT_BITSET without
     * FUTEX_CLOCK_REALTIME). */
    struct timespec ts = {(time_t)(until / 1000000000u), (long)(until % 1000000000u)};
    syscall(SYS_futex, (uint32_t *)&c->seq, FUTEX_WAIT_BITSET_PRIVATE, seq, &ts, NULL,
            FUTEX_BITSET_MATCH_ANY);
  }
  apex__lock(l);
}

void apex__cond_broadcast(apex__cond_t *c) {
  atomic_fetch_add_explicit(&c->seq, 1, memory_order_relaxed);
  syscall(SYS_futex, (uint32_t *)&c->seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
