/* A child whose deadline is its parent's (capped) has no timer of its own:
 * the parent's deadline ends it (ops/children.c, apex__family_deadline),
 * as its own timer did, at once even while its handler runs on and
 * ignores the cancel: "cancelled (parent)", then the parent timed_out
 * after it, and a grandchild capped through its parent the same way
 * (plugin tests/plugins/spawn_kit.c, actions dl and deaf). Everything ends
 * while the deaf handler is still blocked; the test then lets it return. */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cmocka.h>

#include "apex/apex.h"
#include "harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/spawn_kit.so"

typedef struct done_ev {
  uint64_t id, parent;
  apex_task_state_t state;
  char msg[160];
} done_ev_t;

typedef struct rec {
  pthread_mutex_t mu;
  done_ev_t ev[64];
  size_t n;
} rec_t;

static void on_event(const apex_event_t *ev, void *user) {
  rec_t *r = user;
  if (ev->type != APEX_EVENT_DONE) return;
  pthread_mutex_lock(&r->mu);
  if (r->n < sizeof r->ev / sizeof r->ev[0]) {
    done_ev_t *e = &r->ev[r->n++];
    e->id = ev->task_id;
    e->parent = apex_task_parent_id(ev->task);
    e->state = ev->state;
    snprintf(e->msg, sizeof e->msg, "%s", ev->error ? apex_error_message(ev->error) : "");
  }
  pthread_mutex_unlock(&r->mu);
}

/* The index of id's DONE in r, or -1. */
static int done_at(rec_t *r, uint64_t id) {
  int at = -1;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n && at < 0; i++)
    if (r->ev[i].id == id) at = (int)i;
  pthread_mutex_unlock(&r->mu);
  return at;
}

static int readable(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, 0) == 1;
}

static void capped_tree(int depth) {
  rec_t *r = calloc(1, sizeof *r);
  assert_non_null(r);
  pthread_mutex_init(&r->mu, NULL);
  apex_manager_config_t cfg = base_config(4);
  cfg.on_event = on_event;
  cfg.event_user = r;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  int fd = eventfd(0, EFD_CLOEXEC);
  assert_true(fd >= 0);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.timeout_s = 1.0;
  char params[64];
  snprintf(params, sizeof params, "{\"depth\": %d, \"fd\": %d}", depth, fd);
  apex_task_t *t = submit_json(m, "spawn_kit", "dl", params, &o);
  uint64_t pid = apex_task_id(t);
  /* The deaf child blocks for up to 60 s: the tree ends by the parent's
   * deadline long before that. */
  AWAIT(done_at(r, pid) >= 0, 30000);
  assert_false(readable(fd)); /* nobody let the deaf handler go */
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  /* Every descendant ended before the parent: one nil (succeeded) and
   * one dl or deaf (cancelled by the deadline) per level. */
  pthread_mutex_lock(&r->mu);
  size_t n = r->n;
  done_ev_t ev[64];
  memcpy(ev, r->ev, n * sizeof ev[0]);
  pthread_mutex_unlock(&r->mu);
  assert_int_equal(n, 2 * (size_t)depth + 1);
  assert_int_equal(ev[n - 1].id, pid);
  size_t cancelled = 0, succeeded = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    if (ev[i].state == APEX_TASK_SUCCEEDED) {
      succeeded++;
      continue;
    }
    assert_int_equal(ev[i].state, APEX_TASK_CANCELLED);
    assert_non_null(strstr(ev[i].msg, "parent"));
    cancelled++;
    /* A cancelled dl child ended after its own cancelled child. */
    for (size_t j = i + 1; j + 1 < n; j++) assert_true(ev[j].parent != ev[i].id);
  }
  assert_int_equal(cancelled, depth);
  assert_int_equal(succeeded, depth);
  uint64_t one = 1;
  assert_int_equal(write(fd, &one, sizeof one), (ssize_t)sizeof one);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  close(fd);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

static void test_deaf_child_ends_at_the_parents_deadline(void **state) {
  (void)state;
  capped_tree(1);
}

static void test_deaf_grandchild_ends_at_the_parents_deadline(void **state) {
  (void)state;
  capped_tree(2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_deaf_child_ends_at_the_parents_deadline),
      cmocka_unit_test(test_deaf_grandchild_ends_at_the_parents_deadline),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
