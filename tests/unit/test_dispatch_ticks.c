/* The DISPATCH fd in both its forms (src/exec/events.c): the host timer's
 * timerfd made readable by TFD_IOC_SET_TICKS for events ("ticks mode",
 * where the kernel has the ioctl), and the epoll of an eventfd and that
 * timerfd (forced with apex__events_no_ticks). In ticks mode a
 * timerfd_settime of the host's timer zeroes the ticks, so a signal an
 * event owes must be raised again (apex__events_timer_set): a deadline
 * earlier than any armed, submitted while a DONE waits undispatched, is
 * the case that would leave the host asleep over a queued event. Also:
 * a timeout reaches the host through the fd in either form.
 *
 * Reads the manager's mode fields (internals). Plugins: testkit (noop),
 * hostile (sleep). Threads: cmocka's is the host. */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"
#include "integration/dispatch_harness.h"


/* The mode the manager took: ticks wherever the probe finds the ioctl,
 * the epoll when told. */
static void check_mode(apex_manager_t *m, int want_ticks) {
  if (want_ticks) {
    assert_int_equal(m->ev_ticks, 1);
    assert_int_equal(m->ev_fd, -1);
    assert_int_equal(m->host_fd, m->host_timer_fd);
  } else {
    assert_int_equal(m->ev_ticks, 0);
    assert_true(m->ev_fd >= 0);
    assert_true(m->host_fd != m->host_timer_fd);
  }
}

static void rearm_keeps_event_signal(int ticks) {
  seen_t s = {0};
  apex_manager_t *m = dispatch_manager(&s, 1);
  check_mode(m, ticks);
  int fd = apex_manager_fd(m);
  apex_submit_opts_t late = opts_timeout(3600), early = opts_timeout(1800);
  apex_task_t *a = submit_json(m, "testkit", "noop", NULL, &late); /* arms the host timer */
  /* Its DONE queued, not dispatched: the fd says so. */
  AWAIT(apex_task_state(a) == APEX_TASK_SUCCEEDED && readable(fd, 0), PROMPT_MS);
  /* An earlier deadline re-arms the host's timer (a timerfd_settime). */
  apex_task_t *b = submit_json(m, "hostile", "sleep", "{\"ms\": 50}", &early);
  if (!readable(fd, 0)) print_error("ticks %d: fd not readable over a queued DONE\n", ticks);
  assert_true(readable(fd, 0));
  pump_until(m, &s, 2);
  assert_int_equal(apex_task_state(b), APEX_TASK_SUCCEEDED);
  apex_task_release(a);
  apex_task_release(b);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void timeout_through_fd(int ticks) {
  seen_t s = {0};
  apex_manager_t *m = dispatch_manager(&s, 1);
  check_mode(m, ticks);
  apex_submit_opts_t o = opts_timeout(0.05);
  for (int i = 0; i < 5; i++) {
    apex_task_t *t = submit_json(m, "hostile", "sleep", "{\"ms\": 5000}", &o);
    pump_until(m, &s, i + 1);
    assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
    apex_task_release(t);
  }
  assert_int_equal(s.timed_out, 5);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

/* Whether this kernel has the ioctl (else the default is the epoll). */
static int kernel_ticks(void) {
  seen_t s = {0};
  apex_manager_t *m = dispatch_manager(&s, 1);
  int t = m->ev_ticks;
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  return t;
}

static void test_rearm_keeps_event_signal_ticks(void **st) {
  (void)st;
  if (!kernel_ticks()) skip();
  rearm_keeps_event_signal(1);
}

static void test_rearm_keeps_event_signal_epoll(void **st) {
  (void)st;
  apex__events_no_ticks = 1;
  rearm_keeps_event_signal(0);
  apex__events_no_ticks = 0;
}

static void test_timeout_through_fd_ticks(void **st) {
  (void)st;
  if (!kernel_ticks()) skip();
  timeout_through_fd(1);
}

static void test_timeout_through_fd_epoll(void **st) {
  (void)st;
  apex__events_no_ticks = 1;
  timeout_through_fd(0);
  apex__events_no_ticks = 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rearm_keeps_event_signal_ticks),
      cmocka_unit_test(test_rearm_keeps_event_signal_epoll),
      cmocka_unit_test(test_timeout_through_fd_ticks),
      cmocka_unit_test(test_timeout_through_fd_epoll),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
