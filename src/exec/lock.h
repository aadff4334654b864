/* A mutex for short sections that several threads take often (pool_mu,
 * the scheduler's and the pool's; ev_mu, the DONE queue's): it spins a bounded while before it sleeps, and its
 * unlock makes a system call only while a thread sleeps on it.
 *
 * Why not glibc's: a normal pthread mutex never spins, so two workers that
 * push a DONE event at the same moment make a futex sleep and wake of a
 * section of tens of ns; and once a sleeper took it, the lock stays marked
 * contended, so every next unlock makes a futex wake whether anyone sleeps
 * or not. On a 2-core VM each such pair costs microseconds and slows the
 * threads enough to meet again: the slow mode of W1 (bench/analysis.md,
 * "W1's two modes"). Here the sleepers are counted in the lock word, so an
 * unlock wakes only while one is registered, and a locker spins first
 * (about two microseconds of pauses, reading the word at doubling gaps,
 * not writing it)
 * before it registers and sleeps. The spin is bounded, so a holder that
 * lost its CPU (three busy threads on two cores) costs a spinner that
 * much, then a sleep, as glibc's would.
 *
 * apex__cond_t is the condition variable that goes with it (a sequence
 * word on a futex). Not recursive; no owner check.
 * Thread-safety: any thread; the words are the only state. */
#ifndef APEX_EXEC_LOCK_H
#define APEX_EXEC_LOCK_H

#include <stdatomic.h>
#include <stdint.h>

/* Bit 0: held. Bit 1: a wake is on its way to a sleeper (so unlocks
 * meanwhile make no system call). Bits 2..: threads registered to sleep,
 * 4 each. */
typedef struct apex__lock {
  _Atomic uint32_t word;
} apex__lock_t;

#define APEX__LOCK_HELD 1u
#define APEX__LOCK_WAKING 2u
#define APEX__LOCK_SLEEPER 4u

/* The contended paths (lock.c). */
void apex__lock_wait(apex__lock_t *l);
void apex__lock_wake(apex__lock_t *l);

/* Takes l, spinning then sleeping while another thread holds it. */
static inline void apex__lock(apex__lock_t *l) {
  uint32_t free_word = 0;
  if (!atomic_compare_exchange_strong_explicit(&l->word, &free_word, APEX__LOCK_HELD,
                                               memory_order_acquire, memory_order_relaxed))
    apex__lock_wait(l);
}

/* Releases l (held by the caller); wakes one sleeper if any is registered
 * and no wake is already on its way. */
static inline void apex__unlock(apex__lock_t *l) {
  uint32_t v =
      atomic_fetch_sub_explicit(&l->word, APEX__LOCK_HELD, memory_order_release) - APEX__LOCK_HELD;
  if (v >= APEX__LOCK_SLEEPER && !(v & APEX__LOCK_WAKING)) apex__lock_wake(l);
}

/* A condition variable for apex__lock_t: a count of broadcasts. */
typedef struct apex__cond {
  _Atomic uint32_t seq;
} apex__cond_t;

/* Under l: releases l and sleeps until a broadcast made after this call
 * began, until `until` (CLOCK_MONOTONIC ns; UINT64_MAX: no limit), or
 * spuriously; then takes l again. Callers recheck their condition. */
void apex__cond_wait(apex__cond_t *c, apex__lock_t *l, uint64_t until);

/* Wakes every thread in apex__cond_wait on c. With or without the lock:
 * a waiter read the count under the lock, so a broadcast after the
 * change it waits for is never missed. */
void apex__cond_broadcast(apex__cond_t *c);

#endif
