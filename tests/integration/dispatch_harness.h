/* For tests of the DISPATCH delivery mode's fd (test_dispatch_ticks,
 * test_dispatch_ticks_denied): DONE events counted, a manager whose host
 * the test is, and a pump that dispatches until a count is reached.
 * Include after integration/harness.h. */
#ifndef APEX_TEST_DISPATCH_HARNESS_H
#define APEX_TEST_DISPATCH_HARNESS_H

#include <poll.h>

typedef struct {
  int done, timed_out;
} seen_t;

static void on_event(const apex_event_t *ev, void *user) {
  seen_t *s = user;
  if (ev->type != APEX_EVENT_DONE) return;
  s->done++;
  s->timed_out += ev->state == APEX_TASK_TIMED_OUT;
}

/* A DISPATCH manager of `workers` workers whose DONE events count into s. */
static apex_manager_t *dispatch_manager(seen_t *s, unsigned workers) {
  apex_manager_config_t cfg = base_config(workers);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  cfg.on_event = on_event;
  cfg.event_user = s;
  cfg.event_mask = APEX_EVENT_DONE;
  return make_test_manager(&cfg);
}

/* 1 if fd is readable within ms. */
static int readable(int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* Polls m's fd and dispatches until s counts done DONEs (at most 10 s). */
static void pump_until(apex_manager_t *m, const seen_t *s, int done) {
  int64_t until = now_ms() + 10000;
  while (s->done < done && now_ms() < until) {
    (void)readable(apex_manager_fd(m), 100);
    assert_true(apex_manager_dispatch(m) >= 0);
  }
  assert_int_equal(s->done, done);
}

#endif
