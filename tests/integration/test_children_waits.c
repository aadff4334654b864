/* A parent's waits for its children (plugin tests/plugins/spawn_kit.c,
 * action wone) are woken by the ends they may be done by, not by every
 * child's end (ops/children.c, wait_all): a wait naming one child, an any
 * wait, a wait naming more children than a wait marks (64), and a wait for
 * every child, each blocked while n siblings end around it, returns once
 * the child it waits for ends (the host cancels it) and not before. A
 * lost wake-up shows as the wait's 30 s limit (APEX_E_AGAIN). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/spawn_kit.so"

typedef struct rec {
  pthread_mutex_t mu;
  uint64_t parent;
  size_t attempts;   /* the parent's children started */
  uint64_t last_id;  /* the largest child id started: the hang one, spawned last */
  size_t nil_done;   /* the parent's children ended succeeded (the nil ones) */
} rec_t;

static void on_event(const apex_event_t *ev, void *user) {
  rec_t *r = user;
  pthread_mutex_lock(&r->mu);
  if (r->parent && apex_task_parent_id(ev->task) == r->parent) {
    if (ev->type == APEX_EVENT_ATTEMPT) {
      r->attempts++;
      if (ev->task_id > r->last_id) r->last_id = ev->task_id;
    }
    if (ev->type == APEX_EVENT_DONE && ev->state == APEX_TASK_SUCCEEDED) r->nil_done++;
  }
  pthread_mutex_unlock(&r->mu);
}

/* The hang child's id once all n + 1 children started, else 0. */
static uint64_t hang_of(rec_t *r, int n) {
  pthread_mutex_lock(&r->mu);
  uint64_t id = r->attempts == (size_t)n + 1 ? r->last_id : 0;
  pthread_mutex_unlock(&r->mu);
  return id;
}

static size_t nils_of(rec_t *r) {
  pthread_mutex_lock(&r->mu);
  size_t n = r->nil_done;
  pthread_mutex_unlock(&r->mu);
  return n;
}

static void wait_mode(int mode, int n) {
  rec_t r;
  memset(&r, 0, sizeof r);
  pthread_mutex_init(&r.mu, NULL);
  apex_manager_config_t cfg = base_config(2);
  cfg.on_event = on_event;
  cfg.event_user = &r;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  /* The parent's id before its children can send events: submitted
   * under r.mu, which the event callback takes. */
  pthread_mutex_lock(&r.mu);
  char params[64];
  snprintf(params, sizeof params, "{\"n\": %d, \"mode\": %d}", n, mode);
  apex_task_t *t = submit_json(m, "spawn_kit", "wone", params, NULL);
  r.parent = apex_task_id(t);
  pthread_mutex_unlock(&r.mu);
  /* The parent waits (it spawned its last child, the hang one, just
   * before) while its n nil children end around it. */
  AWAIT(hang_of(&r, n) != 0 && nils_of(&r) == (size_t)n, 10000);
  assert_int_equal(apex_task_state(t), APEX_TASK_RUNNING);
  apex_task_t *c = NULL;
  assert_int_equal(apex_ops_find(m, hang_of(&r, n), &c), APEX_OK);
  assert_int_equal(apex_task_cancel(c, NULL), APEX_OK);
  apex_task_release(c);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *res = apex_task_result(t);
  assert_non_null(res);
  assert_int_equal(json_integer_value(json_object_get(res, "rc")), APEX_OK);
  assert_int_equal(json_integer_value(json_object_get(res, "state")), APEX_TASK_CANCELLED);
  if (mode == 1) assert_int_equal(json_integer_value(json_object_get(res, "which")), 0);
  json_decref(res);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  pthread_mutex_destroy(&r.mu);
}

static void test_wait_naming_one_child(void **state) {
  (void)state;
  wait_mode(0, 200);
}

static void test_wait_any_child(void **state) {
  (void)state;
  wait_mode(1, 200);
}

/* 201 named: more than a wait marks, so every end wakes it. */
static void test_wait_naming_many_children(void **state) {
  (void)state;
  wait_mode(2, 200);
}

/* A few named: each marked. */
static void test_wait_naming_a_few_children(void **state) {
  (void)state;
  wait_mode(2, 10);
}

static void test_wait_for_every_child(void **state) {
  (void)state;
  wait_mode(3, 200);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_wait_naming_one_child),
      cmocka_unit_test(test_wait_any_child),
      cmocka_unit_test(test_wait_naming_many_children),
      cmocka_unit_test(test_wait_naming_a_few_children),
      cmocka_unit_test(test_wait_for_every_child),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
