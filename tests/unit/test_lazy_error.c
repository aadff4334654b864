/* Lazy errors (src/exec/internal.h, APEX__LAZY_*): a cancel without the
 * caller's own words, and a handler's plain APEX_E_CANCELLED, end the task
 * with no error object; it is made on the first read, once, whoever reads
 * first, and says exactly what the one made at the end used to say. So a
 * queued task's cancel allocates nothing (issue 9, item 5).
 *
 * Plugins: cancel_probe's `hold` keeps the only worker busy so testkit's
 * `noop` stays queued; lazy_kit's `pend` completes APEX_E_CANCELLED from its
 * cancel callback. Threads: cmocka's is the host; the concurrent-read test
 * starts readers of its own. */
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"

/* The raw outcome slot, read as the library does. */
static apex_error_t *raw_error(apex_task_t *t) {
  return __atomic_load_n(&t->out.error, __ATOMIC_ACQUIRE);
}

typedef struct held {
  apex_manager_t *m;
  apex_task_t *hold;
  int fds[2];
} held_t;

/* A manager whose only worker is held by cancel_probe.hold. */
static void hold_open(held_t *h, const apex_manager_config_t *cfg) {
  h->m = make_test_manager(cfg);
  load_ok(h->m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  load_ok(h->m, APEX_TEST_PLUGIN_DIR "/lazy_kit.so");
  assert_int_equal(pipe(h->fds), 0);
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", h->fds[0]);
  h->hold = submit_json(h->m, "cancel_probe", "hold", params, NULL);
  AWAIT(apex_task_state(h->hold) == APEX_TASK_RUNNING, PROMPT_MS);
}

static void hold_release(held_t *h) {
  assert_int_equal(write(h->fds[1], "x", 1), 1);
  wait_done(h->hold);
  apex_task_release(h->hold);
  close(h->fds[0]);
  close(h->fds[1]);
}

static void assert_cancel_error(const apex_error_t *e, apex_task_t *t, const char *plugin,
                                const char *action, const char *msg, uint32_t attempt) {
  assert_non_null(e);
  assert_int_equal(apex_error_code(e), APEX_E_CANCELLED);
  assert_string_equal(apex_error_message(e), msg);
  assert_string_equal(apex_error_plugin(e), plugin);
  assert_string_equal(apex_error_action(e), action);
  assert_int_equal(apex_error_task_id(e), apex_task_id(t));
  assert_int_equal(apex_error_attempt(e), attempt);
  assert_null(apex_error_cause(e));
}

static void test_a_queued_cancel_makes_no_error_until_one_is_read(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  held_t h;
  hold_open(&h, &cfg);
  apex_task_t *t = submit_json(h.m, "testkit", "noop", NULL, NULL);
  apex_task_t *told = submit_json(h.m, "testkit", "noop", NULL, NULL);
  assert_int_equal(apex_task_state(t), APEX_TASK_QUEUED);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  /* Nothing made: no error, no token. */
  assert_true(apex__error_is_lazy(raw_error(t)));
  assert_null(apex__task_token_peek(t));
  apex_error_t *e = apex_task_error(t);
  assert_cancel_error(e, t, "testkit", "noop", "cancelled (user)", 0);
  assert_ptr_equal(raw_error(t), e); /* made once, kept */
  apex_error_t *again = apex_task_error(t);
  assert_ptr_equal(again, e);
  apex_error_unref(again);
  apex_error_unref(e);
  /* A host's own words are the task's error as they were: made at once. */
  assert_int_equal(apex_task_cancel(told, "no longer needed"), APEX_OK);
  assert_false(apex__error_is_lazy(raw_error(told)));
  assert_true(error_mentions(told, "cancelled (no longer needed)"));
  hold_release(&h);
  apex_task_release(t);
  apex_task_release(told);
  assert_int_equal(apex_manager_destroy(h.m, 1000), APEX_OK);
}

typedef struct seen {
  apex_error_t *done_error; /* the DONE event's, referenced */
  int dones;
} seen_t;

static void on_event(const apex_event_t *ev, void *user) {
  seen_t *s = user;
  if (ev->type != APEX_EVENT_DONE) return;
  s->dones++;
  s->done_error = apex_error_ref((apex_error_t *)ev->error);
}

static void test_the_done_event_and_the_task_share_the_one_made_at_delivery(void **st) {
  (void)st;
  seen_t s = {0};
  apex_manager_config_t cfg = base_config(1);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  cfg.on_event = on_event;
  cfg.event_user = &s;
  cfg.event_mask = APEX_EVENT_DONE;
  held_t h;
  hold_open(&h, &cfg);
  apex_task_t *t = submit_json(h.m, "testkit", "noop", NULL, NULL);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  assert_true(apex__error_is_lazy(raw_error(t)));
  int64_t end = now_ms() + PROMPT_MS;
  while (s.dones < 1 && now_ms() < end) {
    assert_true(apex_manager_dispatch(h.m) >= 0);
    if (s.dones < 1) nap_ms(1);
  }
  assert_int_equal(s.dones, 1);
  assert_cancel_error(s.done_error, t, "testkit", "noop", "cancelled (user)", 0);
  apex_error_t *e = apex_task_error(t);
  assert_ptr_equal(e, s.done_error);
  apex_error_unref(e);
  apex_error_unref(s.done_error);
  assert_int_equal(write(h.fds[1], "x", 1), 1);
  AWAIT(apex_task_state(h.hold) == APEX_TASK_SUCCEEDED, PROMPT_MS);
  apex_task_release(h.hold);
  close(h.fds[0]);
  close(h.fds[1]);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(h.m, 1000), APEX_OK);
}

/* Dispatches m until s has seen `want` DONEs. */
static void dispatch_dones(apex_manager_t *m, const int *dones, int want) {
  int64_t end = now_ms() + PROMPT_MS;
  while (*dones < want && now_ms() < end) {
    assert_true(apex_manager_dispatch(m) >= 0);
    if (*dones < want) nap_ms(1);
  }
  assert_int_equal(*dones, want);
}

typedef struct glance {
  const apex_error_t *error; /* the DONE event's, not read, not referenced */
  int dones;
} glance_t;

static void on_event_glance(const apex_event_t *ev, void *user) {
  glance_t *g = user;
  if (ev->type != APEX_EVENT_DONE) return;
  g->dones++;
  g->error = ev->error;
}

/* The DONE of a task whose error is lazy carries a view of it (exec/task.c,
 * apex__task_done_error): a host that does not read it makes nothing. The
 * first read, after the delivery, makes it, and apex_task_error hands out
 * the DONE's object. */
static void test_a_done_not_read_makes_no_error(void **st) {
  (void)st;
  glance_t g = {0};
  apex_manager_config_t cfg = base_config(1);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  cfg.on_event = on_event_glance;
  cfg.event_user = &g;
  cfg.event_mask = APEX_EVENT_DONE;
  held_t h;
  hold_open(&h, &cfg);
  apex_task_t *t = submit_json(h.m, "testkit", "noop", NULL, NULL);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  dispatch_dones(h.m, &g.dones, 1);
  assert_non_null(g.error);
  assert_true(apex__error_is_lazy(raw_error(t))); /* the delivery made nothing */
  apex_error_t *e = apex_task_error(t);
  assert_ptr_equal(e, g.error);
  assert_cancel_error(e, t, "testkit", "noop", "cancelled (user)", 0);
  assert_false(apex__error_is_lazy(raw_error(t))); /* the read made it, once */
  assert_null(apex_error_timeout_kind(e));
  assert_null(apex_error_partial_result(e));
  apex_error_unref(e);
  assert_int_equal(write(h.fds[1], "x", 1), 1);
  AWAIT(apex_task_state(h.hold) == APEX_TASK_SUCCEEDED, PROMPT_MS);
  apex_task_release(h.hold);
  close(h.fds[0]);
  close(h.fds[1]);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(h.m, 1000), APEX_OK);
}

/* A view referenced in the DONE callback outlives every handle of its task
 * and its manager, and says what the error made at the end said
 * (apex_error_to_json whole); its unref lets the task go (ASan and the
 * leak check watch both). */
static void test_a_view_kept_past_its_task_and_manager_reads_the_same(void **st) {
  (void)st;
  seen_t s = {0};
  apex_manager_config_t cfg = base_config(2);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  cfg.on_event = on_event;
  cfg.event_user = &s;
  cfg.event_mask = APEX_EVENT_DONE;
  apex_manager_t *m = make_test_manager(&cfg);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/lazy_kit.so");
  apex_task_t *t = submit_json(m, "lazy_kit", "pend", NULL, NULL);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, PROMPT_MS);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK); /* its callback completes it */
  dispatch_dones(m, &s.dones, 1);
  uint64_t id = apex_task_id(t);
  assert_true(apex__error_is_lazy(raw_error(t)));
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
  apex_error_t *e = s.done_error;
  assert_int_equal(apex_error_code(e), APEX_E_CANCELLED);
  assert_string_equal(apex_error_message(e), apex_strerror(APEX_E_CANCELLED));
  assert_int_equal(apex_error_task_id(e), id);
  json_t *got = apex_error_to_json(e);
  json_t *want = json_pack("{s:s, s:s, s:s, s:s, s:I, s:i}", "code", "cancelled", "message",
                           apex_strerror(APEX_E_CANCELLED), "plugin", "lazy_kit", "action",
                           "pend", "task", (json_int_t)id, "attempt", 1);
  assert_non_null(got);
  assert_non_null(want);
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  apex_error_t *again = apex_error_ref(e); /* a view's refs are its task's */
  apex_error_unref(e);
  assert_string_equal(apex_error_plugin(again), "lazy_kit");
  apex_error_unref(again);
}

static void test_one_read_after_destroy_still_names_the_unloaded_plugin(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  held_t h;
  hold_open(&h, &cfg);
  apex_task_t *t = submit_json(h.m, "testkit", "noop", NULL, NULL);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK);
  hold_release(&h);
  /* Destroy unloads the plugins; the task's error is still unmade. */
  assert_int_equal(apex_manager_destroy(h.m, 1000), APEX_OK);
  assert_true(apex__error_is_lazy(raw_error(t)));
  apex_error_t *e = apex_task_error(t);
  assert_cancel_error(e, t, "testkit", "noop", "cancelled (user)", 0);
  apex_error_unref(e);
  apex_task_release(t);
}

static void test_a_task_destroy_cancels_in_the_queue_reads_shutdown(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  apex_manager_t *m = make_test_manager(&cfg);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  /* A cancellable sleep holds the only worker; destroy cancels the queued
   * task ("shutdown"), then the sleeper, which returns at once. */
  apex_task_t *sleeper = submit_json(m, "cancel_probe", "sleep_rc", "{\"ms\": 60000}", NULL);
  AWAIT(apex_task_state(sleeper) == APEX_TASK_RUNNING, PROMPT_MS);
  apex_task_t *t = submit_json(m, "testkit", "noop", NULL, NULL);
  assert_int_equal(apex_manager_destroy(m, 0), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  assert_true(apex__error_is_lazy(raw_error(t)));
  apex_error_t *e = apex_task_error(t);
  assert_cancel_error(e, t, "testkit", "noop", "cancelled (shutdown)", 0);
  apex_error_unref(e);
  apex_task_release(t);
  apex_task_release(sleeper);
}

enum { READERS = 8 };

typedef struct race {
  apex_task_t *t;
  pthread_barrier_t go;
  apex_error_t *got[READERS];
} race_t;

typedef struct reader {
  race_t *r;
  int i;
} reader_t;

static void *read_error(void *arg) {
  reader_t *rd = arg;
  pthread_barrier_wait(&rd->r->go);
  rd->r->got[rd->i] = apex_task_error(rd->r->t);
  return NULL;
}

static void test_first_reads_racing_get_one_error(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(1);
  held_t h;
  hold_open(&h, &cfg);
  for (int round = 0; round < 20; round++) {
    race_t r = {.t = submit_json(h.m, "testkit", "noop", NULL, NULL)};
    assert_int_equal(apex_task_cancel(r.t, NULL), APEX_OK);
    assert_true(apex__error_is_lazy(raw_error(r.t)));
    assert_int_equal(pthread_barrier_init(&r.go, NULL, READERS), 0);
    pthread_t th[READERS];
    reader_t rd[READERS];
    for (int i = 0; i < READERS; i++) {
      rd[i] = (reader_t){&r, i};
      assert_int_equal(pthread_create(&th[i], NULL, read_error, &rd[i]), 0);
    }
    for (int i = 0; i < READERS; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
    pthread_barrier_destroy(&r.go);
    for (int i = 0; i < READERS; i++) assert_ptr_equal(r.got[i], r.got[0]);
    assert_ptr_equal(raw_error(r.t), r.got[0]);
    assert_cancel_error(r.got[0], r.t, "testkit", "noop", "cancelled (user)", 0);
    for (int i = 0; i < READERS; i++) apex_error_unref(r.got[i]);
    apex_task_release(r.t);
  }
  hold_release(&h);
  assert_int_equal(apex_manager_destroy(h.m, 1000), APEX_OK);
}

enum { VIEWS = 48 };

typedef struct kept {
  apex_error_t *e[VIEWS]; /* the DONE events' errors, referenced */
  uint64_t id[VIEWS];     /* their tasks' ids */
  int dones;
} kept_t;

static void on_event_keep(const apex_event_t *ev, void *user) {
  kept_t *k = user;
  if (ev->type != APEX_EVENT_DONE || k->dones >= VIEWS) return;
  k->id[k->dones] = ev->task_id;
  k->e[k->dones++] = apex_error_ref((apex_error_t *)ev->error);
}

typedef struct vrace {
  kept_t *k;
  pthread_barrier_t go;
  int bad[READERS];
} vrace_t;

typedef struct vreader {
  vrace_t *r;
  int i;
} vreader_t;

/* Reads every view (each one's first read races the other readers'),
 * refs and unrefs it, then drops this reader's own reference: the last
 * one, on whichever reader gets there last, frees the task. */
static void *read_views(void *arg) {
  vreader_t *rd = arg;
  vrace_t *r = rd->r;
  pthread_barrier_wait(&r->go);
  for (int v = 0; v < VIEWS; v++) {
    int at = (v + rd->i * 7) % VIEWS; /* the readers meet on different views */
    apex_error_t *e = r->k->e[at];
    const char *msg = apex_error_message(e);
    json_t *j = apex_error_to_json(e);
    apex_error_t *x = apex_error_ref(e);
    if (apex_error_code(x) != APEX_E_CANCELLED || strcmp(msg, apex_strerror(APEX_E_CANCELLED)) ||
        apex_error_task_id(e) != r->k->id[at] || !apex_error_plugin(e) ||
        strcmp(apex_error_plugin(e), "lazy_kit") || apex_error_cause(e) || !j ||
        strcmp(json_string_value(json_object_get(j, "message")), msg))
      r->bad[rd->i]++;
    apex_error_unref(x);
    json_decref(j);
  }
  for (int v = 0; v < VIEWS; v++) apex_error_unref(r->k->e[(v + rd->i * 7) % VIEWS]);
  return NULL;
}

/* Views of deferred tasks (blocks: exec/task.c), kept past their handles
 * and their manager, read for the first time by READERS threads at once
 * (one error made per task, installed by compare-and-swap), referenced
 * and unreferenced on each, and let go last on whichever thread: TSan
 * watches the first reads and the frees, ASan the task blocks kept by the
 * views' references. */
static void test_views_read_and_dropped_on_many_threads_after_destroy(void **st) {
  (void)st;
  kept_t k = {0};
  apex_manager_config_t cfg = base_config(2);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  cfg.on_event = on_event_keep;
  cfg.event_user = &k;
  cfg.event_mask = APEX_EVENT_DONE;
  apex_manager_t *m = make_test_manager(&cfg);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/lazy_kit.so");
  apex_task_t *t[VIEWS];
  vrace_t r = {.k = &k};
  for (int v = 0; v < VIEWS; v++) t[v] = submit_json(m, "lazy_kit", "pend", NULL, NULL);
  for (int v = 0; v < VIEWS; v++) AWAIT(apex_task_state(t[v]) == APEX_TASK_RUNNING, PROMPT_MS);
  for (int v = 0; v < VIEWS; v++) assert_int_equal(apex_task_cancel(t[v], NULL), APEX_OK);
  int64_t end = now_ms() + PROMPT_MS;
  while (k.dones < VIEWS && now_ms() < end) {
    assert_true(apex_manager_dispatch(m) >= 0);
    if (k.dones < VIEWS) nap_ms(1);
  }
  assert_int_equal(k.dones, VIEWS);
  /* Every DONE carried a view: nothing read the errors yet. */
  for (int v = 0; v < VIEWS; v++) assert_true(apex__error_is_lazy(raw_error(t[v])));
  for (int v = 0; v < VIEWS; v++) apex_task_release(t[v]);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
  for (int v = 0; v < VIEWS; v++)
    for (int i = 1; i < READERS; i++) (void)apex_error_ref(k.e[v]); /* one a reader */
  assert_int_equal(pthread_barrier_init(&r.go, NULL, READERS), 0);
  pthread_t th[READERS];
  vreader_t rd[READERS];
  for (int i = 0; i < READERS; i++) {
    rd[i] = (vreader_t){&r, i};
    assert_int_equal(pthread_create(&th[i], NULL, read_views, &rd[i]), 0);
  }
  for (int i = 0; i < READERS; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
  pthread_barrier_destroy(&r.go);
  for (int i = 0; i < READERS; i++) assert_int_equal(r.bad[i], 0);
}

static void test_a_plain_cancelled_completion_is_the_status_sentence_made_when_read(void **st) {
  (void)st;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = make_test_manager(&cfg);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/lazy_kit.so");
  apex_task_t *t = submit_json(m, "lazy_kit", "pend", NULL, NULL);
  AWAIT(apex_task_state(t) == APEX_TASK_RUNNING, PROMPT_MS);
  assert_int_equal(apex_task_cancel(t, NULL), APEX_OK); /* its callback completes it */
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_CANCELLED);
  assert_true(apex__error_is_lazy(raw_error(t)));
  apex_error_t *e = apex_task_error(t);
  assert_cancel_error(e, t, "lazy_kit", "pend", apex_strerror(APEX_E_CANCELLED), 1);
  apex_error_unref(e);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
}

enum { RACERS = 64, RACE_ROUNDS = 4 };

typedef struct tally {
  atomic_int dones;
  atomic_int bad;
} tally_t;

/* LOOP delivery (the runtime thread): every other DONE's error is read
 * through its view, racing the cancels of the tasks after it. */
static void on_event_tally(const apex_event_t *ev, void *user) {
  tally_t *y = user;
  if (ev->type != APEX_EVENT_DONE) return;
  if (ev->task_id & 1) {
    int code = apex_error_code(ev->error);
    if (code != APEX_E_CANCELLED && code != APEX_E_TIMEOUT) atomic_fetch_add(&y->bad, 1);
  }
  atomic_fetch_add(&y->dones, 1);
}

static void *cancel_each(void *arg) {
  apex_task_t **t = arg;
  for (int i = 0; i < RACERS; i++) {
    if (i % 8 == 0) nap_ms(1);
    (void)apex_task_cancel(t[i], NULL);
  }
  return NULL;
}

/* A deferred task whose cancel callback completes it (lazy_kit's pend),
 * its attempts cut by a short start-to-close timeout and retried on the
 * same run state, cancelled by two threads at once while those timeouts
 * fire (each firing runs the callback too): the callback's own end of
 * the attempt spares oc_run its lock (exec/task.c, tls_oc_ended), which
 * must hold whichever end, retry or cancel comes first. Every task ends
 * once, cancelled or timed out, with an error that says so. */
static void test_cancel_callbacks_racing_timeouts_and_cancels(void **st) {
  (void)st;
  tally_t y = {0};
  apex_manager_config_t cfg = base_config(2);
  cfg.on_event = on_event_tally;
  cfg.event_user = &y;
  cfg.event_mask = APEX_EVENT_DONE;
  apex_manager_t *m = make_test_manager(&cfg);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/lazy_kit.so");
  apex_retry_policy_t pol = {.max_attempts = 4, .initial_interval_s = 0.001};
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.retry = &pol;
  o.start_to_close_s = 0.002;
  o.timeout_s = 5;
  for (int round = 0; round < RACE_ROUNDS; round++) {
    apex_task_t *t[RACERS], *rev[RACERS];
    for (int i = 0; i < RACERS; i++) t[i] = submit_json(m, "lazy_kit", "pend", NULL, &o);
    for (int i = 0; i < RACERS; i++) rev[i] = t[RACERS - 1 - i];
    nap_ms(round); /* the cancels meet different attempts each round */
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, cancel_each, t), 0);
    cancel_each(rev);
    assert_int_equal(pthread_join(th, NULL), 0);
    for (int i = 0; i < RACERS; i++) {
      wait_done(t[i]);
      int s = apex_task_state(t[i]);
      assert_true(s == APEX_TASK_CANCELLED || s == APEX_TASK_TIMED_OUT);
      apex_error_t *e = apex_task_error(t[i]);
      assert_int_equal(apex_error_code(e),
                       s == APEX_TASK_CANCELLED ? APEX_E_CANCELLED : APEX_E_TIMEOUT);
      apex_error_unref(e);
      apex_task_release(t[i]);
    }
  }
  AWAIT(atomic_load(&y.dones) == RACERS * RACE_ROUNDS, PROMPT_MS);
  assert_int_equal(atomic_load(&y.bad), 0);
  assert_int_equal(apex_manager_destroy(m, 1000), APEX_OK);
  assert_int_equal(atomic_load(&y.dones), RACERS * RACE_ROUNDS); /* once each */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_queued_cancel_makes_no_error_until_one_is_read),
      cmocka_unit_test(test_the_done_event_and_the_task_share_the_one_made_at_delivery),
      cmocka_unit_test(test_a_done_not_read_makes_no_error),
      cmocka_unit_test(test_a_view_kept_past_its_task_and_manager_reads_the_same),
      cmocka_unit_test(test_one_read_after_destroy_still_names_the_unloaded_plugin),
      cmocka_unit_test(test_a_task_destroy_cancels_in_the_queue_reads_shutdown),
      cmocka_unit_test(test_first_reads_racing_get_one_error),
      cmocka_unit_test(test_a_plain_cancelled_completion_is_the_status_sentence_made_when_read),
      cmocka_unit_test(test_views_read_and_dropped_on_many_threads_after_destroy),
      cmocka_unit_test(test_cancel_callbacks_racing_timeouts_and_cancels),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
