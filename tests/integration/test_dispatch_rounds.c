/* apex_manager_dispatch takes what was queued while it delivered
 * (src/exec/events.c, apex__events_deliver): the pushes made during a
 * delivery do not signal the fd, the same call delivers them, and a call
 * that stops with events still queued leaves the fd readable, so the fd
 * stays readable whenever events wait outside a dispatch. A host waiting
 * for 10,000 children's DONEs made a poll, a read and a worker's write for
 * every few children before (bench/analysis.md, W11 of the seventh
 * session).
 *
 * A chain: each DONE callback (on the test thread, inside a dispatch)
 * submits the next noop task, waits until it ended and takes its lock
 * (apex_task_result: its DONE is pushed under that lock at its end), so the
 * next DONE is queued when the callback returns.
 *
 * Threads: the test thread (the host, which dispatches) and the workers. */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"

enum { CHAIN = 64 };

typedef struct chain {
  apex_manager_t *m;
  int dones;            /* DONE events delivered */
  int submitted;        /* tasks of the chain submitted */
  uint64_t seen[CHAIN]; /* ids of the delivered DONEs */
  int wrong;            /* a DONE not succeeded, or a submit refused */
} chain_t;

static void submit_next(chain_t *c) {
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  if (apex_manager_submit(c->m, "testkit", "noop", NULL, NULL, &t, &err) != APEX_OK) {
    apex_error_unref(err);
    c->wrong++;
    return;
  }
  c->submitted++;
  /* DISPATCH mode: the wait ends at the terminal state; the DONE is pushed
   * in the same section of the task's lock, which apex_task_result takes. */
  if (apex_task_wait(t, 10000) != APEX_OK) c->wrong++;
  json_decref(apex_task_result(t));
  apex_task_release(t);
}

static void on_event(const apex_event_t *ev, void *user) {
  chain_t *c = user;
  if (ev->type != APEX_EVENT_DONE) return;
  if (ev->state != APEX_TASK_SUCCEEDED) c->wrong++;
  for (int i = 0; i < c->dones; i++)
    if (c->seen[i] == ev->task_id) c->wrong++; /* a second DONE */
  if (c->dones < CHAIN) c->seen[c->dones] = ev->task_id;
  c->dones++;
  if (c->submitted < CHAIN) submit_next(c);
}

static int fd_readable(int fd, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

static void test_a_dispatch_delivers_what_its_callbacks_queued(void **st) {
  (void)st;
  chain_t c;
  memset(&c, 0, sizeof c);
  apex_manager_config_t cfg = base_config(2);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  cfg.event_mask = APEX_EVENT_DONE;
  cfg.on_event = on_event;
  cfg.event_user = &c;
  apex_manager_t *m = c.m = make_test_manager(&cfg);
  int fd = apex_manager_fd(m);
  assert_true(fd >= 0);
  submit_next(&c);
  int calls = 0;
  while (c.dones < CHAIN) {
    /* Events wait (the chain's next DONE): the fd says so, whether the
     * last call stopped at its bound or never ran. */
    if (!fd_readable(fd, 10000))
      fail_msg("fd not readable with %d of %d DONEs delivered after %d calls", c.dones, CHAIN,
               calls);
    int n = apex_manager_dispatch(m);
    assert_true(n > 0);
    calls++;
  }
  assert_int_equal(c.dones, CHAIN);
  assert_int_equal(c.submitted, CHAIN);
  assert_int_equal(c.wrong, 0);
  /* Each call took the DONEs its callbacks queued, up to its bound: a few
   * calls for the chain, not one per task. */
  if (calls > CHAIN / 4)
    fail_msg("%d calls delivered a chain of %d DONEs: each should take what was queued "
             "while it delivered", calls, CHAIN);
  /* All delivered: nothing waits, the fd is quiet. */
  assert_int_equal(apex_manager_dispatch(m), 0);
  assert_false(fd_readable(fd, 0));
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_dispatch_delivers_what_its_callbacks_queued),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
