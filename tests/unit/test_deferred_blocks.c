/* Deferred tasks' blocks (src/exec/task.c, "deferred tasks' blocks"): a
 * deferred action's task and its run state in one block from the
 * manager's slabs. What must hold: after a burst the manager keeps a
 * bounded number of slabs (the window's blocks and one kept empty), not
 * the burst's; a given-back run state stays readable for its window (a
 * late ctx call is caught); and, under AddressSanitizer, a freed deferred
 * task's memory is poisoned, so a use of it is reported.
 *
 * Plugin: pend_kit (tests/plugins/pend_kit.c), whose pend parks with
 * apex_ctx_on_cancel and completes from the callback; hostile_misuse for
 * a deferred action that calls its ctx after completing it.
 *
 * Threads: cmocka's thread is the host; conditions are awaited with
 * generous bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#define PEND_KIT APEX_TEST_PLUGIN_DIR "/pend_kit.so"
#define LONG_MS 120000

/* More blocks than many slabs hold (a slab holds a few hundred). */
#if defined(__SANITIZE_THREAD__)
#define BURST 6000
#else
#define BURST 20000
#endif

static apex_manager_t *make(void) {
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, PEND_KIT);
  return m;
}

static apex_task_t *pend(apex_manager_t *m) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = 600.0;
  return submit_json(m, "pend_kit", "pend", NULL, &o);
}

static uint64_t running(apex_manager_t *m) {
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s), APEX_OK);
  return s.running;
}

/* The manager's slab and window counts, read under runs_mu. */
static void blocks(apex_manager_t *m, uint32_t *slabs, uint32_t *window) {
  pthread_mutex_lock(&m->runs_mu);
  *slabs = m->n_bslabs;
  *window = m->n_bruns;
  pthread_mutex_unlock(&m->runs_mu);
}

/* BURST pending tasks cancelled in a shuffled order and released, then
 * APEX__RUNS_KEEP more one at a time: the burst's blocks have all left
 * their window, and the manager is back to the slabs the window's blocks
 * need plus the one it keeps empty, however many the burst took. */
static void test_burst_gives_its_slabs_back(void **st) {
  (void)st;
  apex_manager_t *m = make();
  apex_task_t **t = calloc(BURST, sizeof *t);
  assert_non_null(t);
  for (int i = 0; i < BURST; i++) t[i] = pend(m);
  AWAIT(running(m) == BURST, LONG_MS);
  uint32_t slabs, window;
  blocks(m, &slabs, &window);
  assert_true(slabs >= BURST / 300); /* a slab holds fewer than 300 */
  uint32_t burst_slabs = slabs;
  uint64_t x = 88172645463325252ull;
  for (int i = BURST - 1; i > 0; i--) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    int j = (int)(x % (uint64_t)(i + 1));
    apex_task_t *tmp = t[i];
    t[i] = t[j];
    t[j] = tmp;
  }
  for (int i = 0; i < BURST; i++) {
    assert_int_equal(apex_task_cancel(t[i], NULL), APEX_OK);
    assert_int_equal(apex_task_wait(t[i], LONG_MS), APEX_OK);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_CANCELLED);
    apex_task_release(t[i]);
  }
  AWAIT(apex__manager_task_refs(m) == 0, LONG_MS); /* every task freed */
  blocks(m, &slabs, &window);
  assert_int_equal(window, APEX__RUNS_KEEP); /* the last ones, in their window */
  /* The window's blocks are spread over the burst's slabs (random order):
   * more of them push the burst's out, one at a time. */
  for (unsigned i = 0; i < APEX__RUNS_KEEP; i++) {
    apex_task_t *p = pend(m);
    AWAIT(running(m) == 1, LONG_MS);
    assert_int_equal(apex_task_cancel(p, NULL), APEX_OK);
    assert_int_equal(apex_task_wait(p, LONG_MS), APEX_OK);
    apex_task_release(p);
  }
  AWAIT(apex__manager_task_refs(m) == 0, LONG_MS);
  blocks(m, &slabs, &window);
  assert_int_equal(window, APEX__RUNS_KEEP);
  /* APEX__RUNS_KEEP blocks taken one after another from the kept slab's
   * free list: a slab or two, and the one kept empty. */
  assert_true(slabs <= 3);
  assert_true(slabs < burst_slabs);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  free(t);
}

static void count_done(const apex_event_t *ev, void *user) {
  if (ev->type == APEX_EVENT_DONE) ++*(int *)user;
}

/* As W7 runs: BURST pending tasks cancelled in a shuffled order with their
 * handles released, then their DONEs delivered together, so each block's
 * last owner (its task) goes in the delivery's free batch, which gives
 * blocks back to their slabs many at a time (task.c, blk_release_batched).
 * Every one of them must reach its slab: once APEX__RUNS_KEEP more tasks
 * pushed the burst's last run states out of their window, the manager is
 * back to a few slabs (a block the batch kept would pin its slab). */
static void test_blocks_freed_by_a_delivery_reach_their_slabs(void **st) {
  (void)st;
  int dones = 0;
  apex_manager_config_t cfg = base_config(2);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  cfg.on_event = count_done;
  cfg.event_user = &dones;
  cfg.event_mask = APEX_EVENT_DONE;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, PEND_KIT);
  apex_task_t **t = calloc(BURST, sizeof *t);
  assert_non_null(t);
  for (int i = 0; i < BURST; i++) t[i] = pend(m);
  AWAIT(running(m) == BURST, LONG_MS);
  uint32_t slabs, window;
  blocks(m, &slabs, &window);
  uint32_t burst_slabs = slabs;
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int i = BURST - 1; i > 0; i--) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    int j = (int)(x % (uint64_t)(i + 1));
    apex_task_t *tmp = t[i];
    t[i] = t[j];
    t[j] = tmp;
  }
  for (int i = 0; i < BURST; i++) {
    assert_int_equal(apex_task_cancel(t[i], NULL), APEX_OK);
    apex_task_release(t[i]);
  }
  int64_t end = now_ms() + LONG_MS;
  int most = 0; /* the largest delivery: the frees were batched */
  while (dones < BURST && now_ms() < end) {
    int d = apex_manager_dispatch(m);
    assert_true(d >= 0);
    if (d > most) most = d;
    if (d == 0) nap_ms(1);
  }
  assert_int_equal(dones, BURST);
  assert_true(most > (int)APEX__FREE_BATCH_BLKS);
  assert_int_equal(apex__manager_task_refs(m), 0); /* every task freed */
  for (unsigned i = 0; i < APEX__RUNS_KEEP; i++) {
    apex_task_t *p = pend(m);
    AWAIT(running(m) == 1, LONG_MS);
    assert_int_equal(apex_task_cancel(p, NULL), APEX_OK);
    apex_task_release(p);
    end = now_ms() + LONG_MS;
    while (dones < BURST + (int)i + 1 && now_ms() < end) {
      assert_true(apex_manager_dispatch(m) >= 0);
      if (dones < BURST + (int)i + 1) nap_ms(1);
    }
  }
  AWAIT(apex__manager_task_refs(m) == 0, LONG_MS);
  blocks(m, &slabs, &window);
  assert_int_equal(window, APEX__RUNS_KEEP);
  assert_true(slabs <= 3);
  assert_true(slabs < burst_slabs);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  free(t);
}

static uint64_t late_since(apex_manager_t *m, const apex_stats_t *s0) {
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s), APEX_OK);
  return s.late_reports - s0->late_reports;
}

/* A deferred task whose handler calls its ctx after completing it, while
 * other deferred tasks end around it: each late call is caught (counted
 * in late_reports), none touches freed memory (ASan would say so). */
static void test_late_calls_on_a_block_ctx_are_caught(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/hostile.so");
  load_ok(m, PEND_KIT);
  apex_stats_t s0 = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s0), APEX_OK);
  enum { N = 50 };
  for (int i = 0; i < N; i++) {
    apex_task_t *h = submit_json(m, "hostile", "double_complete", NULL, NULL);
    apex_task_t *p = pend(m);
    assert_int_equal(apex_task_wait(h, LONG_MS), APEX_OK);
    assert_int_equal(apex_task_state(h), APEX_TASK_SUCCEEDED);
    AWAIT(running(m) == 1, LONG_MS);
    assert_int_equal(apex_task_cancel(p, NULL), APEX_OK);
    assert_int_equal(apex_task_wait(p, LONG_MS), APEX_OK);
    apex_task_release(h);
    apex_task_release(p);
  }
  /* Each handler's return after its complete, counted once it returned
   * (after the task's end the host waited for). */
  AWAIT(late_since(m, &s0) >= N, LONG_MS);
  assert_int_equal(late_since(m, &s0), N);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* Under AddressSanitizer: a deferred task's memory is poisoned once its
 * last reference went, while its run state's window still holds the
 * block (a read of it would be reported as a use after free is for
 * malloc's memory), and the whole block once both let it go; the plain
 * and TSan builds skip. Asked of ASan's shadow, not by reading: the
 * report would end the test program. */
static void test_a_freed_deferred_task_is_poisoned(void **st) {
  (void)st;
#if defined(__SANITIZE_ADDRESS__)
  apex_manager_t *m = make();
  apex_task_t *t = pend(m);
  AWAIT(running(m) == 1, LONG_MS);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(t, LONG_MS), APEX_OK);
  AWAIT(atomic_load(&t->refs) == 1, LONG_MS); /* the DONE was delivered: the handle is left */
  assert_null(__asan_region_is_poisoned(t, sizeof *t));
  void *blk = (char *)t - APEX__BLK_TASK_OFF;
  assert_false(__asan_address_is_poisoned(blk)); /* the block's owners word, in use */
  apex_task_release(t); /* freed; its run state is in its window */
  assert_true(__asan_address_is_poisoned(&t->id));
  assert_true(__asan_address_is_poisoned(&t->state));
  /* Push its run state out of the window: the block goes to its slab. */
  for (unsigned i = 0; i < APEX__RUNS_KEEP; i++) {
    apex_task_t *p = pend(m);
    AWAIT(running(m) == 1, LONG_MS);
    assert_int_equal(apex_task_cancel(p, NULL), APEX_OK);
    assert_int_equal(apex_task_wait(p, LONG_MS), APEX_OK);
    apex_task_release(p);
  }
  AWAIT(apex__manager_task_refs(m) == 0, LONG_MS);
  /* Free in its slab (poisoned whole), or taken again by one of those
   * tasks, each freed since (its task part poisoned): t's bytes are
   * poisoned either way. */
  assert_true(__asan_address_is_poisoned(&t->id));
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
#else
  skip();
#endif
}

/* A submit of a deferred action refused after its task's block was taken
 * (an option out of range) gives the block back to its slab: more
 * refusals than a slab has blocks leave the manager one slab, the one it
 * keeps empty, and a task submitted after them runs. */
static void test_a_refused_submit_gives_its_block_back(void **st) {
  (void)st;
  apex_manager_t *m = make();
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.priority = APEX_PRIORITY_MAX + 1;
  for (int i = 0; i < 1000; i++) { /* a slab holds fewer than 300 */
    apex_task_t *t = NULL;
    apex_error_t *err = NULL;
    assert_int_equal(apex_manager_submit(m, "pend_kit", "pend", NULL, &o, &t, &err),
                     APEX_E_INVALID);
    assert_null(t);
    apex_error_unref(err);
  }
  uint32_t slabs, window;
  blocks(m, &slabs, &window);
  assert_int_equal(slabs, 1);
  assert_int_equal(window, 0);
  apex_task_t *p = pend(m);
  AWAIT(running(m) == 1, LONG_MS);
  assert_int_equal(apex_task_cancel(p, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(p, LONG_MS), APEX_OK);
  assert_int_equal(apex_task_state(p), APEX_TASK_CANCELLED);
  apex_task_release(p);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* A new slab comes with its pages (MAP_POPULATE, task.c: slab_new): once
 * a fresh manager handed out its first block, every page of that block's
 * slab is resident, where first touches would have brought in only the
 * block's own (the first of the grid, blk_place, at the slab's start).
 * Checked with mincore, which reports residency without touching. */
static void test_a_new_slab_comes_with_its_pages(void **st) {
  (void)st;
  apex_manager_t *m = make();
  apex_task_t *p = pend(m);
  AWAIT(running(m) == 1, LONG_MS);
  uint32_t slabs, window;
  blocks(m, &slabs, &window);
  assert_int_equal(slabs, 1);
  /* The slab's first block, at its start (a mapping: page-aligned). */
  char *base = (char *)p - APEX__BLK_TASK_OFF;
  long psz = sysconf(_SC_PAGESIZE);
  assert_true(psz > 0);
  assert_int_equal((uintptr_t)base % (uintptr_t)psz, 0);
  size_t pages = (APEX__BSLAB_SIZE + (size_t)psz - 1) / (size_t)psz;
  unsigned char vec[APEX__BSLAB_SIZE / 512]; /* pages of 512 bytes or more */
  assert_true(pages <= sizeof vec);
  assert_int_equal(mincore(base, APEX__BSLAB_SIZE, vec), 0);
  size_t resident = 0;
  for (size_t i = 0; i < pages; i++) resident += vec[i] & 1u;
  assert_int_equal(resident, pages);
  assert_int_equal(apex_task_cancel(p, NULL), APEX_OK);
  assert_int_equal(apex_task_wait(p, LONG_MS), APEX_OK);
  apex_task_release(p);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_burst_gives_its_slabs_back),
      cmocka_unit_test(test_blocks_freed_by_a_delivery_reach_their_slabs),
      cmocka_unit_test(test_late_calls_on_a_block_ctx_are_caught),
      cmocka_unit_test(test_a_freed_deferred_task_is_poisoned),
      cmocka_unit_test(test_a_refused_submit_gives_its_block_back),
      cmocka_unit_test(test_a_new_slab_comes_with_its_pages),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
