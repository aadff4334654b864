/* The manager references and task memory a task takes and gives back.
 *
 * A task's id and its manager reference are taken in the pool_mu section
 * that queues it (src/exec/pool.c, apex__pool_submit): the id as the next
 * one, the reference from the manager's bank (ref_bank, refilled
 * APEX__REF_BATCH at a time), which the manager's teardown gives back.
 * Checked here: ids are 1, 2, ... in the order of the submits, unique and
 * without gaps across threads submitting at once, also when scheduled and
 * plain submits mix (a scheduled task takes its id in a section of its
 * own); a refused submit takes neither an id nor a reference; the
 * references are exact across several refills of the bank and after
 * every task is freed; a host that holds handles across destroy still
 * frees the manager with its last release (ASan's leak check sees a bank
 * never given back). A free batch (apex__free_batch_begin, the
 * delivery's) owes the references and slab slots of the tasks freed in it
 * until its end, exactly. The live count stays exact when the ended
 * count (32 bits, in n_active's high half) wraps.
 *
 * Reads refs and ref_bank through apex__manager_task_refs (under pool_mu).
 * Plugins: testkit (noop), hostile (sleep). Threads: cmocka's is the host;
 * the second test adds four submitting threads. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"

enum { N_REFILL = 3 * APEX__REF_BATCH + 5 };

static void test_ids_in_order_and_refs_exact_across_refills(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  assert_int_equal(apex__manager_task_refs(m), 0);
  apex_task_t **t = calloc(N_REFILL, sizeof *t);
  assert_non_null(t);
  for (unsigned i = 0; i < N_REFILL; i++) {
    t[i] = submit_json(m, "testkit", "noop", NULL, NULL);
    assert_int_equal(apex_task_id(t[i]), i + 1);
    /* Every task still has its handle here, so none is freed. */
    assert_int_equal(apex__manager_task_refs(m), i + 1);
    /* Never more taken ahead than one batch. */
    unsigned raw = atomic_load(&m->refs);
    assert_true(raw - 1 - (i + 1) < APEX__REF_BATCH);
  }
  for (unsigned i = 0; i < N_REFILL; i++) wait_done(t[i]);
  for (unsigned i = 0; i < N_REFILL; i++) apex_task_release(t[i]);
  AWAIT(apex__manager_task_refs(m) == 0, 10000);
  free(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

typedef struct {
  apex_manager_t *m;
  unsigned n, scheduled_every;
  uint64_t *ids;
} sub_arg_t;

static void *submitter(void *v) {
  sub_arg_t *a = v;
  for (unsigned i = 0; i < a->n; i++) {
    apex_submit_opts_t o;
    apex_submit_opts_init(&o);
    if (a->scheduled_every && i % a->scheduled_every == 0) o.run_after_s = 0.001;
    apex_task_t *t = NULL;
    if (apex_manager_submit(a->m, "testkit", "noop", NULL, &o, &t, NULL) != APEX_OK) return v;
    a->ids[i] = apex_task_id(t);
    apex_task_release(t);
  }
  return NULL;
}

static int cmp_u64(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

static void test_ids_unique_without_gaps_across_threads(void **st) {
  (void)st;
  enum { THREADS = 4, EACH = 500 };
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  uint64_t *ids = calloc(THREADS * EACH, sizeof *ids);
  assert_non_null(ids);
  pthread_t th[THREADS];
  sub_arg_t arg[THREADS];
  for (unsigned k = 0; k < THREADS; k++) {
    /* Two threads mix in scheduled tasks, which take their id apart. */
    arg[k] = (sub_arg_t){m, EACH, k % 2 ? 7 : 0, ids + k * EACH};
    assert_int_equal(pthread_create(&th[k], NULL, submitter, &arg[k]), 0);
  }
  for (unsigned k = 0; k < THREADS; k++) {
    void *r = NULL;
    assert_int_equal(pthread_join(th[k], &r), 0);
    assert_null(r);
  }
  /* Each thread's ids rise in its own submit order. */
  for (unsigned k = 0; k < THREADS; k++)
    for (unsigned i = 1; i < EACH; i++) assert_true(arg[k].ids[i] > arg[k].ids[i - 1]);
  qsort(ids, THREADS * EACH, sizeof *ids, cmp_u64);
  for (unsigned i = 0; i < THREADS * EACH; i++) assert_int_equal(ids[i], i + 1);
  AWAIT(apex__manager_task_refs(m) == 0, 20000);
  free(ids);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

static void test_refused_submit_takes_no_id_and_no_reference(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  cfg.max_queued = 1;
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *busy = submit_json(m, "hostile", "sleep", "{\"ms\": 300}", NULL);
  assert_int_equal(apex_task_id(busy), 1);
  unsigned before = apex__manager_task_refs(m);
  assert_int_equal(before, 1);
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  assert_int_equal(apex_manager_submit(m, "testkit", "noop", NULL, NULL, &t, &err),
                   APEX_E_QUEUE_FULL);
  assert_null(t);
  apex_error_unref(err);
  assert_int_equal(apex__manager_task_refs(m), before);
  wait_done(busy);
  apex_task_release(busy);
  AWAIT(apex__manager_task_refs(m) == 0, 10000);
  t = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_int_equal(apex_task_id(t), 2); /* the refused one took none */
  wait_done(t);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* Handles held across destroy: each task keeps the manager's memory, and
 * the last release frees it (with the bank given back at teardown; ASan's
 * leak check fails this test if it is not). */
static void test_handles_outlive_destroy(void **st) {
  (void)st;
  enum { N = APEX__REF_BATCH + 3 };
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *t[N];
  for (unsigned i = 0; i < N; i++) t[i] = submit_json(m, "testkit", "noop", NULL, NULL);
  for (unsigned i = 0; i < N; i++) wait_done(t[i]);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  for (unsigned i = 0; i < N; i++) {
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_SUCCEEDED);
    assert_int_equal(apex_task_id(t[i]), i + 1);
  }
  for (unsigned i = 0; i < N; i++) apex_task_release(t[i]);
}

/* Submits n noops with their handles kept, and waits until each task is
 * held by its handle alone (ran, its DONE delivered). */
static void submit_held(apex_manager_t *m, apex_task_t **t, unsigned n) {
  for (unsigned i = 0; i < n; i++) t[i] = submit_json(m, "testkit", "noop", NULL, NULL);
  for (unsigned i = 0; i < n; i++) {
    wait_done(t[i]);
    AWAIT(atomic_load(&t[i]->refs) == 1, 10000);
  }
}

/* A free batch (the delivery's, events.c): the frees of m's tasks inside
 * it owe their manager references and slab slots until its end, which
 * gives back exactly those; the innermost batch is the one that counts, so
 * a batch for another manager lets m's frees through at once. */
static void test_free_batch_owes_until_its_end(void **st) {
  (void)st;
  enum { N = 40 };
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg), *m2 = make_test_manager(&cfg);
  apex_task_t *t[N];
  submit_held(m, t, N);
  assert_int_equal(apex__manager_task_refs(m), N);
  apex_task_t *keep = t[N - 1];
  const void *slab = apex__task_mem_slab_of(keep);
  uint32_t live0 = apex__task_mem_slab_live(keep), in_slab = 0;
  for (unsigned i = 0; i < N - 2; i++) in_slab += slab && apex__task_mem_slab_of(t[i]) == slab;

  apex__free_batch_t fb, inner;
  apex__free_batch_begin(&fb, m);
  for (unsigned i = 0; i < N - 2; i++) apex_task_release(t[i]);
  /* Owed: nothing given back yet. */
  assert_int_equal(apex__manager_task_refs(m), N);
  if (slab) assert_int_equal(apex__task_mem_slab_live(keep), live0);
  /* Another manager's batch inside: m's free goes through at once. */
  apex__free_batch_begin(&inner, m2);
  apex_task_release(t[N - 2]);
  if (slab && apex__task_mem_slab_of(t[N - 2]) == slab) live0--;
  assert_int_equal(apex__manager_task_refs(m), N - 1);
  apex__free_batch_end(&inner);
  apex__free_batch_end(&fb);
  assert_int_equal(apex__manager_task_refs(m), 1);
  if (slab) assert_int_equal(apex__task_mem_slab_live(keep), live0 - in_slab);
  apex_task_release(keep);
  assert_int_equal(apex__manager_task_refs(m), 0);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  assert_int_equal(apex_manager_destroy(m2, 10000), APEX_OK);
}

/* The manager's last references given back at a batch's end free it
 * there (ASan sees a leak, or a use after free, if not exactly then). */
static void test_free_batch_end_frees_a_destroyed_manager(void **st) {
  (void)st;
  enum { N = 20 };
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  apex_task_t *t[N];
  submit_held(m, t, N);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  apex__free_batch_t fb;
  apex__free_batch_begin(&fb, m);
  for (unsigned i = 0; i < N; i++) apex_task_release(t[i]);
  assert_int_equal(fb.m_refs, N);
  apex__free_batch_end(&fb);
}

/* Ended tasks are counted modulo 2^32 in n_active's high half (one
 * addition at a task's end for both counts): the live count (n_in less
 * that) stays exact past the wrap, for max_queued, the stats and destroy's
 * wait. Both counters are set just below 2^32 (no task live), then tasks
 * run across it. */
static void test_live_count_exact_across_the_ended_count_wrap(void **st) {
  (void)st;
  enum { N = 40 };
  apex_manager_config_t cfg = base_config(2);
  cfg.max_queued = 3;
  apex_manager_t *m = make_test_manager(&cfg);
  const uint64_t near = 0xFFFFFFF0u;
  apex__lock(&m->pool_mu);
  assert_int_equal(apex__pool_n_live(m), 0);
  atomic_store(&m->n_in, (size_t)near);
  atomic_store(&m->n_active, near << 32);
  apex__unlock(&m->pool_mu);
  assert_int_equal(apex__pool_n_live(m), 0);
  for (unsigned i = 0; i < N; i++) {
    apex_task_t *t = submit_json(m, "testkit", "noop", NULL, NULL);
    wait_done(t);
    apex_task_release(t);
    assert_int_equal(apex__pool_n_live(m), 0);
  }
  assert_int_equal((uint32_t)(atomic_load(&m->n_active) >> 32), (uint32_t)(near + N));
  assert_int_equal(apex__n_active_of(atomic_load(&m->n_active)), 0);
  /* max_queued still counts live tasks: three sleepers fill it, a
   * fourth is refused, and room comes back when they end. */
  apex_task_t *busy[3];
  for (int i = 0; i < 3; i++) busy[i] = submit_json(m, "hostile", "sleep", "{\"ms\": 200}", NULL);
  assert_int_equal(apex__pool_n_live(m), 3);
  apex_task_t *t = NULL;
  assert_int_equal(apex_manager_submit(m, "testkit", "noop", NULL, NULL, &t, NULL),
                   APEX_E_QUEUE_FULL);
  for (int i = 0; i < 3; i++) {
    wait_done(busy[i]);
    apex_task_release(busy[i]);
  }
  assert_int_equal(apex__pool_n_live(m), 0);
  t = submit_json(m, "testkit", "noop", NULL, NULL);
  wait_done(t);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ids_in_order_and_refs_exact_across_refills),
      cmocka_unit_test(test_ids_unique_without_gaps_across_threads),
      cmocka_unit_test(test_refused_submit_takes_no_id_and_no_reference),
      cmocka_unit_test(test_handles_outlive_destroy),
      cmocka_unit_test(test_free_batch_owes_until_its_end),
      cmocka_unit_test(test_free_batch_end_frees_a_destroyed_manager),
      cmocka_unit_test(test_live_count_exact_across_the_ended_count_wrap),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
