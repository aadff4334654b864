/* The metrics' thread slots (src/obs/metrics.c): each of the first 32
 * threads alive at once writes cells of its own; the threads past them
 * share one more cell, whose adds must then be atomic. Here 32 threads
 * hold every slot while two more count into the shared cell at once, and
 * nothing is lost; a slot goes back when its thread exits. Driven through
 * the submit hook on a task of a plugin made up for the test.
 *
 * A thread's slot goes back from a pthread key's destructor, and other
 * keys' destructors may run after it on the same thread (a host's or a
 * plugin's, made after the metrics' key: glibc runs them in key order)
 * and count there (a submit, a complete). The second test has such a
 * late destructor count while a new thread, which took the slot just
 * given back, counts too: the late counts must go to the shared cell
 * (atomic adds), never into the cell its new owner writes with plain
 * stores, where both lose counts. */
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "obs/metrics.h"

#define HOLDERS APEX__MX_SLOTS
#define SHARERS 2
#define ADDS 1000000

static apex_action_desc_t g_action = {.name = "a"};
static apex__plugin_t g_plugin;
static apex_task_t g_task;
static pthread_barrier_t g_held, g_done, g_go;

static uint64_t submitted(void) {
  apex__mx_series_t *s = apex__mx_series_peek(&g_plugin, &g_action);
  uint64_t n = 0;
  for (unsigned k = 0; s && k <= APEX__MX_SLOTS; k++) n += atomic_load(&s->hot[k].submitted);
  return n;
}

static uint64_t shared_cell(void) {
  return atomic_load(&apex__mx_series_peek(&g_plugin, &g_action)->hot[APEX__MX_SLOTS].submitted);
}

static void *holder(void *arg) {
  (void)arg;
  apex__mx_submitted_(&g_task); /* takes a slot */
  pthread_barrier_wait(&g_held);
  pthread_barrier_wait(&g_done); /* keeps it while the sharers count */
  return NULL;
}

static void *sharer(void *arg) {
  if (arg) pthread_barrier_wait(&g_go); /* both count at once */
  for (int i = 0; i < ADDS; i++) apex__mx_submitted_(&g_task);
  return NULL;
}

static void test_threads_past_the_slots_share_a_cell_and_lose_nothing(void **st) {
  (void)st;
  g_plugin.actions = &g_action;
  g_plugin.desc.n_actions = 1;
  g_task.plugin = &g_plugin;
  g_task.action = &g_action;
  pthread_barrier_init(&g_held, NULL, HOLDERS + 1);
  pthread_barrier_init(&g_done, NULL, HOLDERS + 1);
  pthread_t h[HOLDERS], s[SHARERS];
  for (int i = 0; i < HOLDERS; i++) assert_int_equal(pthread_create(&h[i], NULL, holder, NULL), 0);
  pthread_barrier_wait(&g_held); /* every slot is taken */
  assert_int_equal(submitted(), HOLDERS);
  pthread_barrier_init(&g_go, NULL, SHARERS);
  for (int i = 0; i < SHARERS; i++) assert_int_equal(pthread_create(&s[i], NULL, sharer, &g_go), 0);
  for (int i = 0; i < SHARERS; i++) pthread_join(s[i], NULL);
  assert_int_equal(shared_cell(), (uint64_t)SHARERS * ADDS);
  pthread_barrier_wait(&g_done);
  for (int i = 0; i < HOLDERS; i++) pthread_join(h[i], NULL);
  /* Their slots went back with them: a new thread writes a cell of its
   * own again, not the shared one. */
  uint64_t before = shared_cell();
  pthread_t again;
  assert_int_equal(pthread_create(&again, NULL, sharer, NULL), 0);
  pthread_join(again, NULL);
  assert_int_equal(shared_cell(), before);
  assert_int_equal(submitted(), HOLDERS + (uint64_t)(SHARERS + 1) * ADDS);
  pthread_barrier_destroy(&g_held);
  pthread_barrier_destroy(&g_done);
  pthread_barrier_destroy(&g_go);
  apex__mx_plugin_t *b = atomic_load(&g_plugin.mx);
  free(atomic_load(&b->series[0]));
  free(b);
  atomic_store(&g_plugin.mx, NULL);
}

/* The late-destructor test: the exiting thread's key (made after the
 * metrics' key, so its destructor runs after the slot went back), the
 * thread that takes the freed slot, and the two counting at once. */
static pthread_key_t g_late_key;
static pthread_barrier_t g_late_go;
static sem_t g_late_freed, g_late_taken;
static uint64_t g_shared_before_late;

static void *taker(void *arg) {
  (void)arg;
  sem_wait(&g_late_freed);
  apex__mx_submitted_(&g_task); /* takes the lowest free slot: the one just given back */
  sem_post(&g_late_taken);
  pthread_barrier_wait(&g_late_go);
  for (int i = 1; i < ADDS; i++) apex__mx_submitted_(&g_task);
  return NULL;
}

static void late_destructor(void *v) {
  (void)v;
  /* The metrics' destructor ran: the slot is free, and taken again. */
  sem_post(&g_late_freed);
  sem_wait(&g_late_taken);
  g_shared_before_late = shared_cell();
  pthread_barrier_wait(&g_late_go);
  for (int i = 0; i < ADDS; i++) apex__mx_submitted_(&g_task);
}

static void *late_counter(void *arg) {
  (void)arg;
  apex__mx_submitted_(&g_task); /* takes a slot (and makes the metrics' key) */
  return pthread_setspecific(g_late_key, (void *)1) == 0 ? NULL : (void *)1;
}

static void test_counts_after_the_slot_went_back_use_the_shared_cell(void **st) {
  (void)st;
  g_plugin.actions = &g_action;
  g_plugin.desc.n_actions = 1;
  g_task.plugin = &g_plugin;
  g_task.action = &g_action;
  apex__mx_submitted_(&g_task); /* this thread's slot, and the metrics' key, first */
  assert_int_equal(pthread_key_create(&g_late_key, late_destructor), 0);
  sem_init(&g_late_freed, 0, 0);
  sem_init(&g_late_taken, 0, 0);
  pthread_barrier_init(&g_late_go, NULL, 2);
  uint64_t before = submitted();
  pthread_t a, b;
  assert_int_equal(pthread_create(&b, NULL, taker, NULL), 0);
  assert_int_equal(pthread_create(&a, NULL, late_counter, NULL), 0);
  void *set_failed = NULL;
  pthread_join(a, &set_failed);
  assert_null(set_failed);
  pthread_join(b, NULL);
  /* The late thread's counts went to the shared cell, all of them. */
  assert_int_equal(shared_cell() - g_shared_before_late, (uint64_t)ADDS);
  assert_int_equal(submitted() - before, 1 + (uint64_t)ADDS + (uint64_t)ADDS);
  pthread_key_delete(g_late_key);
  sem_destroy(&g_late_freed);
  sem_destroy(&g_late_taken);
  pthread_barrier_destroy(&g_late_go);
  apex__mx_plugin_t *pb = atomic_load(&g_plugin.mx);
  free(atomic_load(&pb->series[0]));
  free(pb);
  atomic_store(&g_plugin.mx, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_threads_past_the_slots_share_a_cell_and_lose_nothing),
      cmocka_unit_test(test_counts_after_the_slot_went_back_use_the_shared_cell),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
