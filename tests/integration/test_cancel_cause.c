/* Why a task is cancelled is Apex's to decide, never read back from a reason
 * string (include/apex/apex.h, apex_task_cancel): a host may not pass the
 * reserved reasons "timeout", "shutdown" and "parent", and a reason that
 * reaches a task's token from outside (a parent token, or the host through
 * apex_task_token) never ends a running task under its handler.
 *
 * Plugin: cancel_probe (tests/plugins/cancel_probe.c). Its `gate` handler
 * waits for its token, reports "saw REASON" as progress, then blocks until
 * the test writes to a pipe: while it blocks, the task must still be
 * running.
 *
 * Threads: cmocka's thread is the host; a worker runs the gate. Conditions
 * are awaited (AWAIT, apex_task_wait) with generous bounds, never slept
 * for. */
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
#include "integration/harness.h"

typedef struct gate {
  apex_task_t *t;
  int fds[2]; /* the handler polls fds[0]; the test writes fds[1] */
} gate_t;

static apex_manager_t *make_probe(unsigned workers) {
  apex_manager_config_t cfg = base_config(workers);
  cfg.progress_rate_hz = 1000;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  return m;
}

/* Submits a gate (with opts, may be NULL) and, if `running`, awaits its
 * handler's start. */
static void gate_start(apex_manager_t *m, gate_t *g, const apex_submit_opts_t *opts,
                       int running) {
  assert_int_equal(pipe(g->fds), 0);
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", g->fds[0]);
  g->t = submit_json(m, "cancel_probe", "gate", params, opts);
  if (running) AWAIT(apex_task_state(g->t) == APEX_TASK_RUNNING, PROMPT_MS);
}

/* 1 when the gate's handler reported "saw <reason>". */
static int gate_saw(gate_t *g, const char *reason) {
  apex_progress_t *p = apex_task_progress(g->t);
  char want[128];
  snprintf(want, sizeof want, "saw %s", reason);
  int ok = p && strcmp(apex_progress_message(p), want) == 0;
  apex_progress_unref(p);
  return ok;
}

/* Lets the handler return and checks the task then ended as `state`. */
static void gate_release(gate_t *g, apex_task_state_t state) {
  assert_int_equal(write(g->fds[1], "x", 1), 1);
  assert_int_equal(apex_task_wait(g->t, 10000), APEX_OK);
  assert_int_equal(apex_task_state(g->t), state);
  close(g->fds[0]);
  close(g->fds[1]);
}

static void test_cancel_refuses_reserved_reasons_on_running_task(void **st) {
  (void)st;
  apex_manager_t *m = make_probe(1);
  gate_t g;
  gate_start(m, &g, NULL, 1);
  const char *reserved[] = {"timeout", "shutdown", "parent"};
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(apex_task_cancel(g.t, reserved[i]), APEX_E_INVALID);
    assert_int_equal(apex_task_state(g.t), APEX_TASK_RUNNING);
    assert_false(apex_token_is_cancelled(apex_task_token(g.t)));
  }
  /* Any other text is the host's own, and only text. */
  assert_int_equal(apex_task_cancel(g.t, "stop now"), APEX_OK);
  AWAIT(gate_saw(&g, "stop now"), PROMPT_MS);
  assert_int_equal(apex_task_state(g.t), APEX_TASK_RUNNING); /* its handler ends it */
  gate_release(&g, APEX_TASK_CANCELLED);
  apex_error_t *e = apex_task_error(g.t);
  assert_string_equal(apex_error_message(e), "stopped (stop now)");
  apex_error_unref(e);
  apex_task_release(g.t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_cancel_refuses_reserved_reasons_on_queued_task(void **st) {
  (void)st;
  apex_manager_t *m = make_probe(1);
  gate_t busy, queued;
  gate_start(m, &busy, NULL, 1);  /* holds the only worker */
  gate_start(m, &queued, NULL, 0);
  assert_int_equal(apex_task_state(queued.t), APEX_TASK_QUEUED);
  assert_int_equal(apex_task_cancel(queued.t, "shutdown"), APEX_E_INVALID);
  assert_int_equal(apex_task_cancel(queued.t, "timeout"), APEX_E_INVALID);
  assert_int_equal(apex_task_state(queued.t), APEX_TASK_QUEUED);
  assert_int_equal(apex_task_cancel(queued.t, NULL), APEX_OK);
  assert_int_equal(apex_task_state(queued.t), APEX_TASK_CANCELLED); /* at once */
  apex_error_t *e = apex_task_error(queued.t);
  assert_string_equal(apex_error_message(e), "cancelled (user)");
  apex_error_unref(e);
  close(queued.fds[0]);
  close(queued.fds[1]);
  apex_task_release(queued.t);
  assert_int_equal(apex_task_cancel(busy.t, NULL), APEX_OK);
  gate_release(&busy, APEX_TASK_CANCELLED);
  apex_task_release(busy.t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

/* The task's own token cancelled by the host with "shutdown": a cancel from
 * outside, not Apex's shutdown, so the running task waits for its handler
 * (it used to end at once, its handler still running). */
static void test_task_token_cancelled_with_shutdown_text_waits_for_handler(void **st) {
  (void)st;
  apex_manager_t *m = make_probe(1);
  apex_token_t *parent = NULL;
  assert_int_equal(apex_token_new(&parent), APEX_OK);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.parent = parent; /* so the task watches its token (manager.c on_token_cancel) */
  gate_t g;
  gate_start(m, &g, &o, 1);
  assert_int_equal(apex_token_cancel(apex_task_token(g.t), "shutdown"), APEX_OK);
  AWAIT(gate_saw(&g, "shutdown"), PROMPT_MS);
  assert_int_equal(apex_task_state(g.t), APEX_TASK_RUNNING);
  apex_stats_t s = APEX_STATS_INIT;
  assert_int_equal(apex_manager_stats_v2(m, &s), APEX_OK);
  assert_int_equal(s.cancelled, 0);
  gate_release(&g, APEX_TASK_CANCELLED);
  apex_task_release(g.t);
  apex_token_unref(parent);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

/* A parent token cancelled with the text "shutdown": the child's cause is
 * its parent; its handler sees "parent" and the task ends when it
 * returns. */
static void test_parent_cancelled_with_shutdown_text_is_parent_to_child(void **st) {
  (void)st;
  apex_manager_t *m = make_probe(1);
  apex_token_t *parent = NULL;
  assert_int_equal(apex_token_new(&parent), APEX_OK);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.parent = parent;
  gate_t g;
  gate_start(m, &g, &o, 1);
  assert_int_equal(apex_token_cancel(parent, "shutdown"), APEX_OK);
  AWAIT(gate_saw(&g, "parent"), PROMPT_MS);
  assert_int_equal(apex_task_state(g.t), APEX_TASK_RUNNING);
  gate_release(&g, APEX_TASK_CANCELLED);
  apex_error_t *e = apex_task_error(g.t);
  assert_string_equal(apex_error_message(e), "stopped (parent)");
  apex_error_unref(e);
  apex_task_release(g.t);
  apex_token_unref(parent);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cancel_refuses_reserved_reasons_on_running_task),
      cmocka_unit_test(test_cancel_refuses_reserved_reasons_on_queued_task),
      cmocka_unit_test(test_task_token_cancelled_with_shutdown_text_waits_for_handler),
      cmocka_unit_test(test_parent_cancelled_with_shutdown_text_is_parent_to_child),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
