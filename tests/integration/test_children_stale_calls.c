/* The family's ctx calls (apex_ctx_wait_children and _wait_any_child,
 * apex_ctx_on_child_end, apex_ctx_child_outcome, apex_ctx_child_task_id,
 * apex_ctx_children_own_weight) after the attempt's complete returned,
 * while the complete is held for the last child's end callback (the
 * attempt stays open until it returns, so the ctx's check under the task
 * lock passes): each is refused as misuse (plugin.h; ops/children.c,
 * completed_locked), while the end callback itself still reads its
 * child's outcome and id.
 *
 * And such a call under way while its attempt ends (family_of): the
 * attempt succeeds, the host releases the task, and the task goes with its
 * family (and the attempt's token); or the attempt fails and the retry
 * spawns a child of its own. The call must touch nothing freed (ASan: a
 * use after free), and is refused, a wait at once (not a wait on the next
 * attempt's children until its time runs out).
 *
 * The call is held at the one point between the check and its first read
 * of the family: the task lock's release. This program defines
 * pthread_mutex_unlock (as test_children_stale_spawn.c defines strdup: the
 * executable's definition wins over every shared object's), passes it on,
 * and on the thread armed below holds the caller there once, until the
 * test lets it go. Under TSan, whose runtime intercepts the mutex calls,
 * the definition is left out and the calls run unheld (no window). The
 * plugin is tests/plugins/spawn_race.c, read with dlsym. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
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


/* ------------------------------------------ the held mutex release */

static atomic_int g_in_window, g_release;
static _Thread_local int g_armed; /* hold this thread at its g_armed-th unlock from now */

#if defined(__SANITIZE_THREAD__)
#define HOLDS 0
#else
#define HOLDS 1
#if defined(__SANITIZE_ADDRESS__)
#define NO_SANITIZE __attribute__((no_sanitize_address))
#else
#define NO_SANITIZE
#endif

typedef int (*unlock_fn)(pthread_mutex_t *);
static _Atomic(unlock_fn) g_real_unlock;

/* The build hides symbols by default; this must be seen by libapex. */
__attribute__((visibility("default"))) NO_SANITIZE int pthread_mutex_unlock(pthread_mutex_t *mu) {
  unlock_fn real = atomic_load(&g_real_unlock);
  if (!real) {
    real = (unlock_fn)dlsym(RTLD_NEXT, "pthread_mutex_unlock");
    atomic_store(&g_real_unlock, real);
  }
  int rc = real(mu);
  if (g_armed && --g_armed == 0) { /* the call checked its ctx and left the task lock: hold it here */
    atomic_store(&g_in_window, 1);
    atomic_store(g_go, 1); /* the end callback returns: the held complete runs */
    for (int i = 0; i < 60000 && !atomic_load(&g_release); i++) nap_ms(1);
  }
  return rc;
}
#endif

/* ------------------------------------------------------- the test */

enum { CALL_WAIT, CALL_ON_END, CALL_OUTCOME };

static struct {
  int which;
  int64_t wait_ms;
  apex_ctx_t *ctx;
  apex_child_t *child;
  atomic_int rc, done;
} g_call;

static void reset(void) {
  atomic_store(g_kit.gate, 0);
  atomic_store(g_kit.attempt, 0);
  atomic_store(g_kit.completed, 0);
  atomic_store(g_kit.spawn_rc, 1);
  atomic_store(g_kit.ctx, NULL);
  atomic_store(g_kit.child, NULL);
  atomic_store(g_kit.outcome_rc, 1);
  atomic_store(g_kit.outcome_state, -2);
  atomic_store(g_kit.child_id, 0);
  atomic_store(g_go, 0);
  atomic_store(&g_in_window, 0);
  atomic_store(&g_release, 0);
  atomic_store(&g_call.done, 0);
  atomic_store(&g_call.rc, 1);
}

/* Waits (10 s at most) until *v >= want. */
static void wait_for(atomic_int *v, int want, const char *what) {
  for (int i = 0; i < 10000 && atomic_load(v) < want; i++) nap_ms(1);
  if (atomic_load(v) < want) fail_msg("waited 10 s for %s", what);
}

static void on_end(apex_ctx_t *ctx, apex_child_t *child, void *user) {
  (void)ctx;
  (void)child;
  (void)user;
}

/* A manager of 3 workers with spawn_race loaded, running a `par` task
 * with params (JSON; NULL: a retry follows its first attempt) whose first
 * attempt spawned its child. */
static apex_task_t *start_par(apex_manager_t **m, const char *params) {
  apex_manager_config_t cfg = base_config(3);
  *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, m), APEX_OK);
  load_ok(*m, SPAWN_RACE_KIT);
  reset();
  apex_task_t *t = submit_json(*m, "spawn_race", "par", params, NULL);
  wait_for(g_kit.attempt, 1, "the first attempt");
  assert_int_equal(atomic_load(g_kit.spawn_rc), APEX_OK);
  return t;
}

/* Waits for t, which must succeed (in `attempts` attempts, if not 0),
 * releases it and destroys m. */
static void end_succeeded(apex_manager_t *m, apex_task_t *t, uint32_t attempts) {
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  if (attempts) assert_int_equal(apex_task_attempts(t), attempts);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* The plugin's thread: calls on the ctx once the attempt's complete
 * returned. */
static void *stale_caller(void *arg) {
  (void)arg;
  for (int i = 0; i < 10000 && !atomic_load(g_kit.completed); i++) nap_ms(1);
  int rc = 1, st = -1;
  json_t *res = NULL, *err = NULL;
  g_armed = HOLDS;
  switch (g_call.which) {
  case CALL_WAIT:
    rc = apex_ctx_wait_children(g_call.ctx, NULL, 0, g_call.wait_ms);
    break;
  case CALL_ON_END:
    rc = apex_ctx_on_child_end(g_call.ctx, g_call.child, on_end, NULL);
    break;
  default:
    rc = apex_ctx_child_outcome(g_call.ctx, g_call.child, &st, &res, &err);
    break;
  }
  g_armed = 0;
  json_decref(res);
  json_decref(err);
  atomic_store(&g_call.rc, rc);
  atomic_store(&g_call.done, 1);
  return NULL;
}

/* The parent's first attempt succeeds once its child ends; the stale call
 * is held (or ran, or was refused, before the hold) once the complete
 * returned; the test waits for the task's end, releases it, and lets the
 * call go once nothing of Apex's holds the task. Returns: the call's rc. */
static int run_stale(int which) {
  apex_manager_t *m;
  apex_task_t *t = start_par(&m, "{\"ok\": true}");
  g_call.which = which;
  g_call.wait_ms = 1000;
  g_call.ctx = atomic_load(g_kit.ctx);
  g_call.child = atomic_load(g_kit.child);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, stale_caller, NULL), 0);
  atomic_store(g_kit.gate, 1); /* the child ends: its callback completes the attempt */
  for (int i = 0; i < 10000 && !atomic_load(&g_in_window) && !atomic_load(&g_call.done); i++)
    nap_ms(1);
  if (!atomic_load(&g_in_window)) atomic_store(g_go, 1); /* not held */
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  nap_ms(200); /* its DONE delivered: nothing of Apex's holds it */
  atomic_store(&g_release, 1);
  pthread_join(th, NULL);
  if (HOLDS) assert_int_equal(atomic_load(&g_in_window), 1); /* it was held in the call */
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
  return atomic_load(&g_call.rc);
}

/* The wait reads the family and the attempt's token after the task went
 * (before the refusal: every child ended, so it answered APEX_OK). */
static void test_a_wait_held_while_its_task_ends_and_goes_is_refused(void **st) {
  (void)st;
  assert_int_equal(run_stale(CALL_WAIT), APEX_E_INVALID);
}

/* (Before the refusal: APEX_E_ALREADY, the attempt had set the child's
 * end callback.) */
static void test_an_on_child_end_held_while_its_task_ends_and_goes_is_refused(void **st) {
  (void)st;
  assert_int_equal(run_stale(CALL_ON_END), APEX_E_INVALID);
}

/* (Before the refusal: APEX_OK, the child's node answers for it.) */
static void test_a_child_outcome_held_while_its_task_ends_and_goes_is_refused(void **st) {
  (void)st;
  assert_int_equal(run_stale(CALL_OUTCOME), APEX_E_INVALID);
}

/* Every family call made after the attempt's complete returned, while the
 * complete is held (the end callback waits for spawn_race_go), is refused
 * and counted as misuse, one count each; the end callback read its
 * child's outcome and id after the same complete. */
static void test_each_family_call_after_a_held_complete_is_refused(void **st) {
  (void)st;
  apex_manager_t *m;
  apex_task_t *t = start_par(&m, "{\"ok\": true}");
  apex_ctx_t *ctx = atomic_load(g_kit.ctx);
  apex_child_t *child = atomic_load(g_kit.child);
  apex_child_t *const kids[1] = {child};
  atomic_store(g_kit.gate, 1); /* the child ends: its callback completes the attempt */
  wait_for(g_kit.completed, 1, "the held complete");

  /* The end callback, after its complete returned: the outcome is read. */
  assert_int_equal(atomic_load(g_kit.outcome_rc), APEX_OK);
  assert_int_equal(atomic_load(g_kit.outcome_state), APEX_TASK_SUCCEEDED);
  assert_true(atomic_load(g_kit.child_id) != 0);

  uint64_t late0 = stats_of(m).late_reports;
  int64_t t0 = now_ms();
  assert_int_equal(apex_ctx_wait_children(ctx, NULL, 0, 5000), APEX_E_INVALID);
  assert_int_equal(apex_ctx_wait_children(ctx, kids, 1, 5000), APEX_E_INVALID);
  size_t which = 7;
  assert_int_equal(apex_ctx_wait_any_child(ctx, kids, 1, 5000, &which), APEX_E_INVALID);
  assert_true(now_ms() - t0 < 4000); /* refused, not waited */
  assert_int_equal(apex_ctx_on_child_end(ctx, child, on_end, NULL), APEX_E_INVALID);
  int state = -2;
  json_t *res = NULL, *err = NULL;
  assert_int_equal(apex_ctx_child_outcome(ctx, child, &state, &res, &err), APEX_E_INVALID);
  assert_int_equal(state, -1);
  assert_null(res);
  assert_null(err);
  assert_int_equal(apex_ctx_child_task_id(ctx, child), 0);
  assert_int_equal(apex_ctx_children_own_weight(ctx, 2.0), APEX_E_INVALID);
  apex_child_t *c2 = NULL;
  assert_int_equal(apex_ctx_spawn(ctx, "spawn_race", "nil", NULL, NULL, &c2), APEX_E_INVALID);
  assert_null(c2);
  assert_int_equal(stats_of(m).late_reports - late0, 8);

  atomic_store(g_go, 1); /* the callback returns: the held complete runs */
  end_succeeded(m, t, 0);
}

/* The ctx's other calls made after the attempt's complete returned,
 * while the complete is held for the end callback (apex_ctx_complete in
 * plugin.h: misuse, caught and ignored): each is refused or ignored and
 * counted once, and none changes what the held complete delivers (no
 * result, success). Before the hold was marked on the run state the
 * attempt still read as open: the result was replaced, the failure
 * recorded, params and ids answered, nothing counted. */
static void test_each_other_ctx_call_after_a_held_complete_is_ignored(void **st) {
  (void)st;
  apex_manager_t *m;
  apex_task_t *t = start_par(&m, "{\"ok\": true}");
  apex_ctx_t *ctx = atomic_load(g_kit.ctx);
  atomic_store(g_kit.gate, 1); /* the child ends: its callback completes the attempt */
  wait_for(g_kit.completed, 1, "the held complete");

  uint64_t late0 = stats_of(m).late_reports;
  apex_ctx_set_result(ctx, json_pack("{s:i}", "late", 1)); /* taken and freed */
  apex_ctx_fail(ctx, APEX_E_EXECUTION, "a failure after complete");
  assert_int_equal(apex_ctx_progress(ctx, 50, "late"), APEX_OK); /* ignored, counted */
  json_t *hb = json_pack("{s:i}", "i", 1);
  assert_int_equal(apex_ctx_heartbeat(ctx, hb), APEX_E_INVALID);
  assert_int_equal(apex_ctx_partial_result(ctx, hb), APEX_E_INVALID);
  json_decref(hb);
  assert_null(apex_ctx_params(ctx));
  assert_int_equal(apex_ctx_task_id(ctx), 0);
  assert_int_equal(apex_ctx_attempt(ctx), 0);
  assert_int_equal(apex_ctx_is_cancelled(ctx), 1);
  assert_int_equal(apex_ctx_sleep_ms(ctx, 5000), APEX_E_CANCELLED);
  assert_int_equal(apex_ctx_cancel_fd(ctx), APEX_E_INVALID);
  apex_ctx_log(ctx, APEX_LOG_ERROR, "a log line after complete");
  assert_int_equal(stats_of(m).late_reports - late0, 12); /* one each */

  atomic_store(g_go, 1); /* the callback returns: the held complete runs */
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t); /* none set: null (a succeeded task's result is never NULL) */
  if (!json_is_null(r)) fail_msg("result %s, not null", r ? json_dumps(r, JSON_COMPACT) : "NULL");
  json_decref(r);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* A handle of the first attempt's child, used on the retry's ctx: each
 * family call refuses it ("a child of another attempt", plugin.h), while
 * the retry's own child is answered. Before nodes carried their attempt,
 * the shared family accepted it: its outcome and id were read, a wait on
 * it returned at once. */
static void test_a_child_of_an_earlier_attempt_is_refused(void **st) {
  (void)st;
  apex_manager_t *m;
  apex_task_t *t = start_par(&m, NULL); /* ok false: a retry */
  apex_child_t *old = atomic_load(g_kit.child);
  atomic_store(g_go, 1);       /* the first attempt's callback does not wait */
  atomic_store(g_kit.gate, 1); /* its child ends: the attempt fails, the retry starts */
  wait_for(g_kit.attempt, 2, "the second attempt");
  assert_int_equal(atomic_load(g_kit.spawn_rc), APEX_OK); /* its own child, gated */
  apex_ctx_t *ctx = atomic_load(g_kit.ctx);
  apex_child_t *mine = atomic_load(g_kit.child);
  assert_true(mine != old);

  int state = -2;
  json_t *res = NULL, *err = NULL;
  assert_int_equal(apex_ctx_child_outcome(ctx, old, &state, &res, &err), APEX_E_INVALID);
  assert_null(res);
  assert_null(err);
  assert_int_equal(apex_ctx_child_task_id(ctx, old), 0);
  apex_child_t *const olds[1] = {old};
  assert_int_equal(apex_ctx_wait_children(ctx, olds, 1, 1000), APEX_E_INVALID);
  size_t which = 7;
  assert_int_equal(apex_ctx_wait_any_child(ctx, olds, 1, 1000, &which), APEX_E_INVALID);
  assert_int_equal(apex_ctx_on_child_end(ctx, old, on_end, NULL), APEX_E_INVALID);
  assert_true(apex_ctx_child_task_id(ctx, mine) != 0); /* the retry's own child */
  /* Accepted: not ended yet (its gate holds it). */
  assert_int_equal(apex_ctx_child_outcome(ctx, mine, &state, NULL, NULL), APEX_E_AGAIN);

  atomic_store(g_kit.gate, 2); /* the retry's child ends: it succeeds */
  end_succeeded(m, t, 2);
}

/* A wait begun in the first attempt, before its complete, and held (at
 * the task lock's release) until the retry runs with a child of its own:
 * let go, it is refused at once, where it waited on the retry's child
 * with the first attempt's token until its 5 s ran out (APEX_E_AGAIN).
 * Unheld (TSan), it runs before the complete and finds its child ended
 * (APEX_OK), or is refused. */
static void test_a_wait_held_across_a_retry_is_refused_at_once(void **st) {
  (void)st;
  apex_manager_t *m;
  apex_task_t *t = start_par(&m, NULL); /* ok false: a retry */
  g_call.which = CALL_WAIT;
  g_call.wait_ms = 5000;
  g_call.ctx = atomic_load(g_kit.ctx);
  g_call.child = atomic_load(g_kit.child);
  atomic_store(g_kit.completed, 1); /* stale_caller calls at once, before the complete */
  atomic_store(g_go, 1);            /* the first attempt's callback does not wait */
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, stale_caller, NULL), 0);
  if (HOLDS) wait_for(&g_in_window, 1, "the wait's hold");
  atomic_store(g_kit.gate, 1); /* the first child ends: the attempt fails, the retry starts */
  wait_for(g_kit.attempt, 2, "the second attempt");
  assert_int_equal(atomic_load(g_kit.spawn_rc), APEX_OK); /* its child is live, gated */
  int64_t t0 = now_ms();
  atomic_store(&g_release, 1);
  wait_for(&g_call.done, 1, "the wait's return");
  int64_t took = now_ms() - t0;
  pthread_join(th, NULL);
  int rc = atomic_load(&g_call.rc);
  if (HOLDS)
    assert_int_equal(rc, APEX_E_INVALID);
  else
    assert_true(rc == APEX_OK || rc == APEX_E_INVALID);
  assert_true(took < 2000);
  atomic_store(g_kit.gate, 2); /* the retry's child ends: it succeeds */
  end_succeeded(m, t, 2);
}

/* The oc action's state (tests/plugins/spawn_race.c), by dlsym. */
static atomic_int *oc_sym(const char *name) {
  atomic_int *v = dlsym(g_kit.dl, name);
  assert_non_null(v);
  return v;
}

/* A manager of 3 workers running spawn_race's `oc` with params; its
 * flags cleared first. */
static apex_task_t *start_oc(apex_manager_t **m, const char *params) {
  apex_manager_config_t cfg = base_config(3);
  *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, m), APEX_OK);
  load_ok(*m, SPAWN_RACE_KIT);
  reset();
  static const char *const flags[] = {"spawn_race_hold_running", "spawn_race_hold_go",
                                      "spawn_race_hold_ended", "spawn_race_oc_held",
                                      "spawn_race_oc_ran"};
  for (size_t i = 0; i < sizeof flags / sizeof *flags; i++) atomic_store(oc_sym(flags[i]), 0);
  return submit_json(*m, "spawn_race", "oc", params, NULL);
}

/* A cancel after the attempt's complete returned, held for a live child:
 * the attempt's cancel callback does not start (plugin.h, apex_ctx_on_cancel:
 * "fn never starts once complete returned"), and the held complete still
 * delivers success. Before the held mark dropped the registration, the
 * cancel ran it on the cancelling thread. */
static void test_a_cancel_after_a_held_complete_runs_no_cancel_callback(void **st) {
  (void)st;
  apex_manager_t *m;
  apex_task_t *t = start_oc(&m, NULL);
  wait_for(oc_sym("spawn_race_oc_held"), 1, "the held complete");
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(atomic_load(oc_sym("spawn_race_oc_ran")), 0);
  atomic_store(oc_sym("spawn_race_hold_go"), 1); /* the child ends: the held complete runs */
  end_succeeded(m, t, 0);
}

/* A second complete (APEX_E_EXECUTION) made after the first (APEX_OK) was
 * held and its child ended, while the held complete's end waits for the
 * cancel callback the second one is made from: ignored and counted
 * (plugin.h, apex_ctx_complete: "a second complete, in sequence or racing
 * this one"), the task succeeds. Before a plugin's complete checked the
 * held mark, the family no longer held anything then (its last child had
 * ended), so the second complete ended the attempt with its own code (the
 * task cancelled), and the held one found it ended. */
static void test_a_second_complete_as_the_held_one_ends_is_ignored(void **st) {
  (void)st;
  apex_manager_t *m;
  apex_task_t *t = start_oc(&m, "{\"wait_cb\": true}");
  wait_for(oc_sym("spawn_race_hold_running"), 1, "the child's start");
  uint64_t late0 = stats_of(m).late_reports;
  /* The callback runs here, the second complete in it. */
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(atomic_load(oc_sym("spawn_race_oc_ran")), 1);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(stats_of(m).late_reports - late0, 1); /* the second complete */
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

/* The test's thread as the plugin's: completes the `oc` task's ctx, held
 * at its third unlock (the run state's mark, apex__run_mark_held), after
 * which the complete still cancels the live children (cancel_live). */
static void *held_completer(void *arg) {
  apex_ctx_t *ctx = arg;
  g_armed = HOLDS ? 3 : 0; /* apex__run_complete's, the family's look, the mark's */
  apex_ctx_complete(ctx, APEX_OK);
  g_armed = 0;
  atomic_store(&g_call.done, 1);
  return NULL;
}

/* A complete held for a live child, held itself once it marked the run
 * state, while its child ends, the held complete runs and the host
 * releases the task (its family goes with it): let go, the complete must
 * touch no freed family (ASan: a use after free in cancel_live, which read
 * the family with no reference on its task). */
static void test_a_held_complete_outlived_by_its_task_touches_nothing_freed(void **st) {
  (void)st;
  apex_manager_t *m;
  apex_task_t *t = start_oc(&m, "{\"complete\": false}");
  wait_for(oc_sym("spawn_race_oc_held"), 1, "the published ctx");
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, held_completer, atomic_load(g_kit.ctx)), 0);
  if (HOLDS) wait_for(&g_in_window, 1, "the complete's hold");
  else wait_for(&g_call.done, 1, "the complete");
  atomic_store(oc_sym("spawn_race_hold_go"), 1); /* the child ends: the held complete runs */
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  nap_ms(200); /* its DONE delivered: nothing of Apex's holds it */
  atomic_store(&g_release, 1);
  pthread_join(th, NULL);
  assert_int_equal(apex_manager_destroy(m, 10000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_wait_held_while_its_task_ends_and_goes_is_refused),
      cmocka_unit_test(test_an_on_child_end_held_while_its_task_ends_and_goes_is_refused),
      cmocka_unit_test(test_a_child_outcome_held_while_its_task_ends_and_goes_is_refused),
      cmocka_unit_test(test_each_family_call_after_a_held_complete_is_refused),
      cmocka_unit_test(test_each_other_ctx_call_after_a_held_complete_is_ignored),
      cmocka_unit_test(test_a_child_of_an_earlier_attempt_is_refused),
      cmocka_unit_test(test_a_wait_held_across_a_retry_is_refused_at_once),
      cmocka_unit_test(test_a_cancel_after_a_held_complete_runs_no_cancel_callback),
      cmocka_unit_test(test_a_second_complete_as_the_held_one_ends_is_ignored),
      cmocka_unit_test(test_a_held_complete_outlived_by_its_task_touches_nothing_freed),
  };
  return cmocka_run_group_tests(tests, sr_setup, sr_teardown);
}
