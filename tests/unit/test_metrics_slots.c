/* The metrics' thread slots (src/obs/metrics.c): each of the first 32
 * threads alive at once writes cells of its own; the threads past them
 * share one more cell, whose adds must then be atomic. Here 32 threads
 * hold every slot while two more count into the shared cell at once, and
 * nothing is lost; a slot goes back when its thread exits. Driven through
 * the submit hook on a task of a plugin made up for the test. */
#include <pthread.h>
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
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_threads_past_the_slots_share_a_cell_and_lose_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
