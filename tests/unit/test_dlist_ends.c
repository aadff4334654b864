/* A deadline list's two ends (src/exec/runtime.c, apex__dlist_t): the
 * submitter's tail and pin count, and the ender's head, heap index and
 * unpin count, each in a cache line of its own, so that a backlog's submit
 * and end do not move one line between cores. Checked here: the layout,
 * and the accounting the split count has to keep exact (a list in use is
 * never freed or counted idle; one no task is pinned to is idle or freed;
 * an idle one is reused; the two counts wrap modulo 2^32). Read from the
 * internals under pool_mu. Threads: cmocka's is the host. */
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

#define KIT APEX_TEST_PLUGIN_DIR "/timeouts_kit.so"

static unsigned line_of(size_t off) { return (unsigned)(off / APEX__CACHE_LINE); }

static void test_the_ends_are_in_lines_of_their_own(void **st) {
  (void)st;
  unsigned shared = line_of(offsetof(apex__dlist_t, key));
  unsigned ender = line_of(offsetof(apex__dlist_t, head));
  unsigned submitter = line_of(offsetof(apex__dlist_t, tail));
  assert_int_not_equal(shared, ender);
  assert_int_not_equal(shared, submitter);
  assert_int_not_equal(ender, submitter);
  assert_int_equal(line_of(offsetof(apex__dlist_t, heap_idx)), ender);
  assert_int_equal(line_of(offsetof(apex__dlist_t, unpins)), ender);
  assert_int_equal(line_of(offsetof(apex__dlist_t, pins)), submitter);
  assert_int_equal(line_of(offsetof(apex__dlist_t, hnext)), shared);
  assert_int_equal(line_of(offsetof(apex__dlist_t, idle)), shared);
  assert_int_equal(_Alignof(apex__dlist_t), APEX__CACHE_LINE);
}

/* What the lists say, under pool_mu. */
typedef struct lists {
  unsigned n;         /* lists in the hash */
  unsigned n_idle;    /* of them marked idle */
  unsigned n_pinned;  /* of them with pins != unpins */
  unsigned dl_idle;   /* m->dl_idle */
  unsigned lheap_n;   /* m->lheap_n */
  int consistent;     /* idle <=> no pin and no head, for every list */
} lists_t;

static lists_t read_lists(apex_manager_t *m) {
  lists_t s = {.consistent = 1};
  apex__lock(&m->pool_mu);
  for (size_t b = 0; b < sizeof m->dl_hash / sizeof m->dl_hash[0]; b++)
    for (apex__dlist_t *l = m->dl_hash[b]; l; l = l->hnext) {
      int pinned = l->pins != l->unpins;
      s.n++;
      s.n_idle += l->idle;
      s.n_pinned += (unsigned)pinned;
      if (l->idle != (!pinned && !l->head)) s.consistent = 0;
      if (l->head && !pinned) s.consistent = 0;
    }
  s.dl_idle = m->dl_idle;
  s.lheap_n = m->lheap_n;
  apex__unlock(&m->pool_mu);
  return s;
}

static apex__dlist_t *list_of(apex_manager_t *m, double timeout_s) {
  uint64_t key = apex__timeout_ns((float)timeout_s);
  apex__dlist_t *found = NULL;
  apex__lock(&m->pool_mu);
  for (size_t b = 0; b < sizeof m->dl_hash / sizeof m->dl_hash[0]; b++)
    for (apex__dlist_t *l = m->dl_hash[b]; l; l = l->hnext)
      if (l->key == key) found = l;
  apex__unlock(&m->pool_mu);
  return found;
}

static apex_task_t *work(apex_manager_t *m, int ms, double timeout_s) {
  apex_submit_opts_t o = opts_timeout(timeout_s);
  char params[64];
  snprintf(params, sizeof params, "{\"ms\": %d}", ms);
  return submit_json(m, "timeouts_kit", "work", params, &o);
}

static void end_all(apex_task_t **t, size_t n) {
  for (size_t i = 0; i < n; i++) {
    wait_done(t[i]);
    apex_task_release(t[i]);
  }
}

static void test_lists_in_use_kept_idle_ones_reused_the_rest_freed(void **st) {
  (void)st;
  enum { N = APEX__DL_IDLE_MAX + 4, PER = 3 };
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  /* The one worker runs the first task 300 ms: the rest are pinned and
   * linked meanwhile, PER to a list, and none is idle. */
  apex_task_t *t[N * PER];
  t[0] = work(m, 300, 100);
  AWAIT(apex_task_state(t[0]) == APEX_TASK_RUNNING, PROMPT_MS);
  for (size_t i = 1; i < N * PER; i++) t[i] = work(m, 0, 100 + (double)(i % N));
  lists_t s = read_lists(m);
  assert_true(s.consistent);
  assert_int_equal(s.n, N);
  assert_int_equal(s.n_pinned, N);
  assert_int_equal(s.n_idle, 0);
  assert_int_equal(s.dl_idle, 0);
  assert_int_equal(s.lheap_n, N);
  end_all(t, N * PER);
  /* Every task ended: APEX__DL_IDLE_MAX lists kept idle, the rest freed. */
  AWAIT(read_lists(m).n == APEX__DL_IDLE_MAX, PROMPT_MS);
  s = read_lists(m);
  assert_true(s.consistent);
  assert_int_equal(s.n_pinned, 0);
  assert_int_equal(s.n_idle, APEX__DL_IDLE_MAX);
  assert_int_equal(s.dl_idle, APEX__DL_IDLE_MAX);
  assert_int_equal(s.lheap_n, APEX__DL_IDLE_MAX);
  /* An idle list in use again: no longer idle while its task lives. */
  apex__dlist_t *kept = NULL;
  double kept_s = 0;
  for (int i = 0; i < N && !kept; i++)
    if ((kept = list_of(m, 100 + i))) kept_s = 100 + i;
  assert_non_null(kept);
  apex_task_t *again = work(m, 200, kept_s);
  AWAIT(apex_task_state(again) == APEX_TASK_RUNNING, PROMPT_MS);
  s = read_lists(m);
  assert_true(s.consistent);
  assert_int_equal(s.n, APEX__DL_IDLE_MAX); /* reused, not made */
  assert_int_equal(s.n_pinned, 1);
  assert_int_equal(s.dl_idle, APEX__DL_IDLE_MAX - 1);
  assert_ptr_equal(list_of(m, kept_s), kept);
  end_all(&again, 1);
  AWAIT(read_lists(m).dl_idle == APEX__DL_IDLE_MAX, PROMPT_MS);
  assert_true(read_lists(m).consistent);
  apex_manager_destroy(m, 5000);
}

/* A list emptied by its deadline while its task still runs (the runtime
 * thread unlinks the head; the task's end gives its pin back), and a list
 * whose counts wrap past 2^32 with tasks in it. */
static void test_emptied_by_its_deadline_and_counts_that_wrap(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  apex_task_t *late = work(m, 400, 0.1);
  assert_int_equal(apex_task_wait(late, 10000), APEX_OK);
  assert_int_equal(apex_task_state(late), APEX_TASK_TIMED_OUT);
  lists_t s = read_lists(m);
  assert_true(s.consistent);
  apex_task_release(late);
  AWAIT(read_lists(m).dl_idle == 1, PROMPT_MS);
  s = read_lists(m);
  assert_true(s.consistent);
  assert_int_equal(s.n, 1);
  assert_int_equal(s.n_pinned, 0);

  /* Both counts just below 2^32: tasks pinned across the wrap. */
  apex__dlist_t *l = list_of(m, 0.1);
  assert_non_null(l);
  apex__lock(&m->pool_mu);
  l->pins = l->unpins = UINT32_MAX - 2;
  apex__unlock(&m->pool_mu);
  enum { K = 8 };
  apex_task_t *t[K];
  t[0] = work(m, 300, 5);
  AWAIT(apex_task_state(t[0]) == APEX_TASK_RUNNING, PROMPT_MS);
  for (int i = 1; i < K; i++) t[i] = work(m, 0, 0.1); /* queued: the first runs */
  s = read_lists(m);
  assert_true(s.consistent);
  assert_int_equal(s.n_pinned, 2); /* 0.1 s's and 5 s's */
  apex__lock(&m->pool_mu);
  uint32_t pinned = l->pins - l->unpins;
  int wrapped = l->pins < l->unpins;
  apex__unlock(&m->pool_mu);
  assert_int_equal(pinned, K - 1);
  assert_true(wrapped);
  /* They time out queued, in order, from the runtime thread. */
  for (int i = 1; i < K; i++) {
    assert_int_equal(apex_task_wait(t[i], 10000), APEX_OK);
    assert_int_equal(apex_task_state(t[i]), APEX_TASK_TIMED_OUT);
  }
  end_all(t, K);
  AWAIT(read_lists(m).dl_idle == 2, PROMPT_MS);
  s = read_lists(m);
  assert_true(s.consistent);
  assert_int_equal(s.n_pinned, 0);
  apex__lock(&m->pool_mu);
  assert_int_equal(l->pins, l->unpins);
  assert_int_equal(l->pins, (uint32_t)(UINT32_MAX - 2 + K - 1));
  apex__unlock(&m->pool_mu);
  apex_manager_destroy(m, 5000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_the_ends_are_in_lines_of_their_own),
      cmocka_unit_test(test_lists_in_use_kept_idle_ones_reused_the_rest_freed),
      cmocka_unit_test(test_emptied_by_its_deadline_and_counts_that_wrap),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
