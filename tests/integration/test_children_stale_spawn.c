/* apex_ctx_spawn on a ctx whose attempt ends while the spawn is under way
 * (ops/children.c, ctx_spawn): a thread of the plugin's that spawns after
 * the attempt's complete returned, while the complete is held for the
 * last child's end callback (the attempt stays open until it returns).
 * The call passes the ctx's checks, then the attempt ends under it and
 *  - the task retries: the next attempt has a token of its own (a
 *    start-to-close timeout), and its first spawn replaces the family's
 *    shared token, dropping the old one, which the stale call still uses;
 *  - or the task succeeds and the host releases it: the task and its
 *    family are freed under the call.
 * Either way the call must return APEX_E_INVALID (a call after complete
 * returned: plugin.h) and touch nothing freed (ASan: a use after free).
 *
 * The spawn is held at one point, between its look at the family's shared
 * token and the section that counts its child, by the one call there that
 * this program can stand in for: the copy of its label. This program
 * defines strdup (as tests/unit/test_alloc_failure.c does, the
 * executable's definition wins over every shared object's), and a strdup
 * of the label below waits there until the test lets it go. The plugin is
 * tests/plugins/spawn_race.c, whose state the test reads with dlsym. */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "apex/plugin.h"
#include "harness.h"
#include "spawn_race_kit.h"


/* ------------------------------------------------ the held strdup */

#if defined(__SANITIZE_ADDRESS__)
#define NO_SANITIZE __attribute__((no_sanitize_address))
#elif defined(__SANITIZE_THREAD__)
#define NO_SANITIZE __attribute__((no_sanitize_thread))
#else
#define NO_SANITIZE
#endif

static const char k_stall[] = "stale spawn";
static atomic_int g_in_window, g_release;

/* The build hides symbols by default; this must be seen by libapex. */
__attribute__((visibility("default"))) NO_SANITIZE char *strdup(const char *s) {
  if (s == k_stall) { /* the spawn's copy of its label: hold the spawn here */
    atomic_store(&g_in_window, 1);
    atomic_store(g_go, 1); /* the end callback returns: the held complete runs */
    for (int i = 0; i < 60000 && !atomic_load(&g_release); i++) nap_ms(1);
  }
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* ------------------------------------------------------- the test */

static void reset(void) {
  atomic_store(g_kit.gate, 0);
  atomic_store(g_kit.attempt, 0);
  atomic_store(g_kit.completed, 0);
  atomic_store(g_kit.spawn_rc, 1);
  atomic_store(g_kit.ctx, NULL);
  atomic_store(g_go, 0);
  atomic_store(&g_in_window, 0);
  atomic_store(&g_release, 0);
}

/* Waits (10 s at most) until *v >= want. */
static void wait_for(atomic_int *v, int want, const char *what) {
  for (int i = 0; i < 10000 && atomic_load(v) < want; i++) nap_ms(1);
  if (atomic_load(v) < want) fail_msg("waited 10 s for %s", what);
}

/* The plugin's thread: spawns on the ctx once the attempt's complete
 * returned. */
static atomic_int g_spawn_rc, g_spawn_done;

static void *stale_spawner(void *arg) {
  apex_ctx_t *ctx = arg;
  for (int i = 0; i < 10000 && !atomic_load(g_kit.completed); i++) nap_ms(1);
  apex_spawn_opts_t o = APEX_SPAWN_OPTS_INIT;
  o.label = k_stall;
  apex_child_t *c = NULL;
  atomic_store(&g_spawn_rc, apex_ctx_spawn(ctx, "spawn_race", "nil", NULL, &o, &c));
  atomic_store(&g_spawn_done, 1);
  return NULL;
}

/* Starts the parent (ok: its first attempt succeeds, else it retries),
 * opens its first child's gate and starts the stale spawner, which is
 * held in the spawn (or refused before it) once the attempt's complete
 * returned. Returns: the parent. */
static apex_task_t *start(apex_manager_t *m, int ok, pthread_t *th) {
  reset();
  atomic_store(&g_spawn_done, 0);
  apex_task_t *t = submit_json(m, "spawn_race", "par", ok ? "{\"ok\": true}" : NULL, NULL);
  wait_for(g_kit.attempt, 1, "the first attempt");
  assert_int_equal(atomic_load(g_kit.spawn_rc), APEX_OK);
  apex_ctx_t *ctx = atomic_load(g_kit.ctx);
  assert_int_equal(pthread_create(th, NULL, stale_spawner, ctx), 0);
  atomic_store(g_kit.gate, 1); /* the first child ends: its callback completes the attempt */
  for (int i = 0; i < 10000 && !atomic_load(&g_in_window) && !atomic_load(&g_spawn_done); i++)
    nap_ms(1);
  if (!atomic_load(&g_in_window)) atomic_store(g_go, 1); /* refused before the hold */
  return t;
}

static apex_manager_t *make(void) {
  apex_manager_config_t cfg = base_config(3);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, SPAWN_RACE_KIT);
  return m;
}

/* The retry's first spawn replaced the family's shared token while the
 * stale spawn was held: the old token (and the first attempt's token above
 * it) went with the first child's task, which succeeded with no result and
 * was let go. */
static void test_a_spawn_held_across_the_next_attempts_first_spawn_is_refused(void **st) {
  (void)st;
  apex_manager_t *m = make();
  pthread_t th;
  apex_task_t *t = start(m, 0, &th);
  wait_for(g_kit.attempt, 2, "the second attempt");
  assert_int_equal(atomic_load(g_kit.spawn_rc), APEX_OK); /* the family's token is its now */
  nap_ms(200); /* the first child's DONE delivered: its task and its token reference gone */
  atomic_store(&g_release, 1);
  pthread_join(th, NULL);
  assert_int_equal(atomic_load(&g_in_window), 1); /* it was held in the spawn */
  assert_int_equal(atomic_load(&g_spawn_rc), APEX_E_INVALID);
  atomic_store(g_kit.gate, 2); /* the second attempt's child ends: it succeeds */
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_attempts(t), 2);
  assert_true(stats_of(m).late_reports >= 1); /* the refusal is counted misuse */
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* The attempt succeeded and the host released the task while the stale
 * spawn was held: the task, and its family with it, went. */
static void test_a_spawn_held_while_its_task_ends_and_goes_is_refused(void **st) {
  (void)st;
  apex_manager_t *m = make();
  pthread_t th;
  apex_task_t *t = start(m, 1, &th);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_task_attempts(t), 1);
  apex_task_release(t);
  nap_ms(200); /* its DONE delivered: nothing of Apex's holds it */
  atomic_store(&g_release, 1);
  pthread_join(th, NULL);
  assert_int_equal(atomic_load(&g_in_window), 1); /* it was held in the spawn */
  assert_int_equal(atomic_load(&g_spawn_rc), APEX_E_INVALID);
  assert_true(stats_of(m).late_reports >= 1);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_spawn_held_across_the_next_attempts_first_spawn_is_refused),
      cmocka_unit_test(test_a_spawn_held_while_its_task_ends_and_goes_is_refused),
  };
  return cmocka_run_group_tests(tests, sr_setup, sr_teardown);
}
