/* The graceful shutdown report (apex_manager_shutdown): what finished
 * during the drain, what was cancelled, and what was abandoned inside a
 * handler deaf to cancellation (APEX_E_BUSY), each by id and
 * plugin.action; the JSON form; and destroy's contract kept (every DONE
 * delivered before it returns).
 *
 * Plugins: gate (tests/plugins/gate.c: deaf_read blocks on a FIFO until
 * the test writes a byte, deaf to cancellation: no time window to race),
 * shutdown_kit (coop_sleep returns when its token fires), ops_kit.
 *
 * Threads: cmocka's thread is the host; a helper thread opens one gate as
 * soon as the shutdown has begun (apex_group_new refuses from then on), so
 * that task ends during the drain. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "harness.h"
#include "gate.h"

static _Atomic int dones;
static void count_done(const apex_event_t *ev, void *user) {
  (void)user;
  if (ev->type == APEX_EVENT_DONE) atomic_fetch_add(&dones, 1);
}

typedef struct opener {
  apex_manager_t *m;
  gate_t *gate;
  apex_task_t *queued; /* ends only by destroy's first step */
} opener_t;

/* Opens the gate once m refuses new work and destroy's first step ended
 * the queued task: the drain has begun. Not at the refusal alone: the
 * worker the gate frees would pop the queued task if destroy had not swept
 * it yet, and run it to success. */
static void *open_when_shutting_down(void *arg) {
  opener_t *o = arg;
  for (int64_t end = now_ms() + 20000; now_ms() < end; nap_ms(1)) {
    apex_group_t *g = NULL;
    apex_status_t rc = apex_group_new(o->m, &g);
    if (rc == APEX_OK) {
      apex_group_release(g);
      continue;
    }
    if (rc == APEX_E_SHUTTING_DOWN) break;
  }
  for (int64_t end = now_ms() + 20000;
       !apex_task_state_is_terminal(apex_task_state(o->queued)) && now_ms() < end;)
    nap_ms(1);
  gate_open(o->gate);
  return NULL;
}

static void *warm_up(void *arg) { return arg; }

static const apex_shutdown_op_t *find_op(const apex_shutdown_op_t *v, size_t n, uint64_t id) {
  for (size_t i = 0; i < n; i++)
    if (v[i].id == id) return &v[i];
  return NULL;
}

static void test_report_with_deaf_handler(void **state) {
  (void)state;
  /* A sanitizer's runtime may start a thread of its own with the first
   * one this program makes: make that happen before counting. */
  pthread_t warm;
  assert_int_equal(pthread_create(&warm, NULL, warm_up, NULL), 0);
  pthread_join(warm, NULL);
  int threads_before = count_threads();
  apex_manager_config_t cfg = base_config(3);
  cfg.on_event = count_done;
  cfg.shutdown_grace_ms = 100;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_gate(m);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/shutdown_kit.so");
  load_ok(m, APEX_TEST_PLUGIN_DIR "/ops_kit.so");
  gate_t deaf, drained;
  gate_init(&deaf);
  gate_init(&drained);
  atomic_store(&dones, 0);

  apex_task_t *a = submit_json(m, "gate", "deaf_read", deaf.params, NULL);    /* abandoned */
  apex_task_t *b = submit_json(m, "gate", "deaf_read", drained.params, NULL); /* finished */
  apex_task_t *c = submit_json(m, "shutdown_kit", "coop_sleep", "{\"ms\": 600000}", NULL);
  AWAIT(stats_of(m).running == 3, PROMPT_MS);
  apex_task_t *d = submit_json(m, "ops_kit", "quick", NULL, NULL); /* queued: cancelled */
  uint64_t ida = apex_task_id(a), idb = apex_task_id(b), idc = apex_task_id(c),
           idd = apex_task_id(d);

  opener_t op = {m, &drained, d};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, open_when_shutting_down, &op), 0);
  apex_shutdown_report_t *r = NULL;
  assert_int_equal(apex_manager_shutdown(m, 2000, &r), APEX_E_BUSY);
  pthread_join(th, NULL);
  assert_int_equal(atomic_load(&dones), 4); /* destroy's contract: every DONE delivered */
  assert_non_null(r);
  assert_int_equal(r->status, APEX_E_BUSY);
  assert_int_equal(r->n_finished, 1);
  assert_int_equal(r->n_cancelled, 2);
  assert_int_equal(r->n_abandoned, 1);
  assert_int_equal(r->finished[0].id, idb);
  assert_string_equal(r->finished[0].plugin, "gate");
  assert_string_equal(r->finished[0].action, "deaf_read");
  assert_int_equal(r->finished[0].state, APEX_TASK_SUCCEEDED);
  const apex_shutdown_op_t *oc = find_op(r->cancelled, r->n_cancelled, idc);
  const apex_shutdown_op_t *od = find_op(r->cancelled, r->n_cancelled, idd);
  assert_non_null(oc);
  assert_non_null(od);
  assert_string_equal(oc->plugin, "shutdown_kit");
  assert_string_equal(oc->action, "coop_sleep");
  assert_int_equal(oc->state, APEX_TASK_CANCELLED);
  assert_string_equal(od->action, "quick");
  assert_int_equal(r->abandoned[0].id, ida);
  assert_string_equal(r->abandoned[0].plugin, "gate");
  assert_int_equal(r->abandoned[0].state, APEX_TASK_CANCELLED);

  json_t *j = apex_shutdown_report_to_json(r);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "status")), "busy");
  assert_int_equal(json_array_size(json_object_get(j, "finished")), 1);
  assert_int_equal(json_array_size(json_object_get(j, "cancelled")), 2);
  json_t *ab = json_array_get(json_object_get(j, "abandoned"), 0);
  assert_int_equal(json_integer_value(json_object_get(ab, "id")), ida);
  assert_string_equal(json_string_value(json_object_get(ab, "action")), "deaf_read");
  json_decref(j);
  apex_shutdown_report_free(r);

  /* Let the deaf handler go: its thread tears the manager down. */
  gate_open(&deaf);
  AWAIT(count_threads() == threads_before, 20000);
  apex_task_release(a);
  apex_task_release(b);
  apex_task_release(c);
  apex_task_release(d);
  gate_fini(&deaf);
  gate_fini(&drained);
}

/* Everything cooperative: OK, nothing abandoned; no live task, an empty
 * report; NULL report: a plain destroy. */
static void test_report_clean(void **state) {
  (void)state;
  apex_manager_config_t cfg = base_config(2);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/ops_kit.so");
  apex_task_t *p = submit_json(m, "ops_kit", "park", NULL, NULL);
  AWAIT(stats_of(m).running == 1, PROMPT_MS);
  apex_shutdown_report_t *r = NULL;
  assert_int_equal(apex_manager_shutdown(m, 0, &r), APEX_OK);
  assert_int_equal(apex_task_state(p), APEX_TASK_CANCELLED);
  apex_task_release(p);
  assert_int_equal(r->status, APEX_OK);
  assert_int_equal(r->n_finished + r->n_abandoned, 0);
  assert_int_equal(r->n_cancelled, 1);
  json_t *j = apex_shutdown_report_to_json(r);
  assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
  json_decref(j);
  apex_shutdown_report_free(r);

  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  assert_int_equal(apex_manager_shutdown(m, 0, &r), APEX_OK);
  assert_int_equal(r->n_finished + r->n_cancelled + r->n_abandoned, 0);
  apex_shutdown_report_free(r);

  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  assert_int_equal(apex_manager_shutdown(m, 0, NULL), APEX_OK);
  assert_int_equal(apex_manager_shutdown(NULL, 0, &r), APEX_OK);
  assert_null(r);
  assert_null(apex_shutdown_report_to_json(NULL));
  apex_shutdown_report_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_report_with_deaf_handler),
      cmocka_unit_test(test_report_clean),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
