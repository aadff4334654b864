/* Task memory (src/exec/tmem.c): a thread's tasks come from a slab of its
 * own (8 slots, then 16, 32, up to 64), freed when the last of its tasks is
 * freed and no thread allocates from it any more. Checked here with the
 * slabs' counts: slots handed out in order and zeroed, a full slab's hold
 * let go when the next one starts, the slots a thread never handed out let
 * go when it exits, and frees from another thread counting down to the
 * last task. ASan
 * builds calloc each task (the count reads 0 there): only the zeroing and
 * the frees are checked then, and ASan sees any use after a free.
 * Threads: cmocka's, and one that allocates and exits. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "exec/internal.h"

enum { S1 = 8, S2 = 16, N = S1 + S2 + 5 };

static apex_task_t *made[N];

static void *allocate(void *arg) {
  (void)arg;
  for (int i = 0; i < N; i++) {
    made[i] = apex__task_mem_new();
    if (!made[i]) return NULL;
    /* Written all over, as a task is: the next slot must stay intact. */
    memset(made[i], 0xa5, sizeof(apex_task_t));
  }
  return made;
}

static void test_slabs_count_their_tasks_and_their_thread(void **st) {
  (void)st;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, allocate, NULL), 0);
  void *ret = NULL;
  assert_int_equal(pthread_join(th, &ret), 0); /* its exit let go of its slab */
  assert_non_null(ret);
  for (int i = 0; i < N; i++) {
    const unsigned char *b = (const unsigned char *)made[i];
    for (size_t k = 0; k < sizeof(apex_task_t); k++) assert_int_equal(b[k], 0xa5);
  }
  int slabs = apex__task_mem_slab_live(made[0]) != 0;
  if (slabs) {
    /* Slots in order, two cache lines each, 64-byte aligned. */
    for (int i = 1; i < S1; i++) assert_int_equal((char *)made[i] - (char *)made[i - 1], 128);
    for (int i = S1 + 1; i < S1 + S2; i++)
      assert_int_equal((char *)made[i] - (char *)made[i - 1], 128);
    assert_int_equal((uintptr_t)made[0] % 64, 0);
    /* The first two slabs: full, their thread moved on: their tasks. The
     * third (32 slots): 5 handed out, the thread gone: those 5. */
    assert_int_equal(apex__task_mem_slab_live(made[0]), S1);
    assert_int_equal(apex__task_mem_slab_live(made[S1]), S2);
    assert_int_equal(apex__task_mem_slab_live(made[S1 + S2]), N - S1 - S2);
  }
  /* Freed slab by slab, each down to its last task. */
  int ends[3] = {S1, S1 + S2, N};
  for (int j = 0, i = 0; j < 3; j++) {
    for (; i < ends[j] - 1; i++) apex__task_mem_free(made[i]);
    if (slabs) assert_int_equal(apex__task_mem_slab_live(made[i]), 1);
    apex__task_mem_free(made[i++]);
  }
}

/* On this thread: a fresh task is all zero, though its slot held another
 * task's bytes before (a slab lets go of its memory only as a whole), and
 * this thread's current slab counts its hold. */
static void test_a_new_task_is_zeroed(void **st) {
  (void)st;
  apex_task_t *t[3];
  for (int i = 0; i < 3; i++) {
    t[i] = apex__task_mem_new();
    assert_non_null(t[i]);
    const unsigned char *b = (const unsigned char *)t[i];
    for (size_t k = 0; k < sizeof(apex_task_t); k++) assert_int_equal(b[k], 0);
    memset(t[i], 0xff, sizeof(apex_task_t));
  }
  uint32_t live = apex__task_mem_slab_live(t[2]);
  if (live) assert_true(live >= 3 + 1); /* this thread still allocates from it */
  for (int i = 0; i < 3; i++) apex__task_mem_free(t[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_slabs_count_their_tasks_and_their_thread),
      cmocka_unit_test(test_a_new_task_is_zeroed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
