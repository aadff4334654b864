/* The DISPATCH fd in ticks mode (src/exec/events.c) when TFD_IOC_SET_TICKS
 * stops working after the manager chose the mode: a host that sandboxes
 * itself once it is set up (a seccomp filter allowing only the ioctls it
 * knows, applied to every thread) makes the ioctl fail from then on. The
 * host's fd must still become readable for a queued event, and for one
 * queued while a deadline is armed on the same timerfd; deadlines still
 * reach the host.
 *
 * Installs a seccomp filter for the whole process (it cannot be removed):
 * a program of its own. Skipped where the kernel has no ticks ioctl or no
 * seccomp filter. Reads the manager's mode field (internals). Plugins:
 * testkit (noop), hostile (sleep). Threads: cmocka's is the host. */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"
#include "integration/dispatch_harness.h"

#ifndef TFD_IOC_SET_TICKS
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)
#endif


/* Every thread of the process: ioctl(fd, TFD_IOC_SET_TICKS, ...) fails
 * with EPERM, every other system call is allowed. Returns: 1 if in force. */
static int deny_ticks(void) {
  uint32_t args1 = offsetof(struct seccomp_data, args[1]);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  args1 += 4; /* the low word of the 64-bit argument */
#endif
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, args1),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)TFD_IOC_SET_TICKS, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof f[0]), f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 0;
  if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
    return 0;
  /* In force: the probe the manager made at its start now fails. */
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  uint64_t one = 1;
  int denied = fd >= 0 && ioctl(fd, TFD_IOC_SET_TICKS, &one) != 0 && errno == EPERM;
  if (fd >= 0) close(fd);
  return denied;
}

static void test_events_and_deadlines_without_the_ioctl(void **st) {
  (void)st;
  seen_t s = {0};
  apex_manager_t *m = dispatch_manager(&s, 2);
  if (!m->ev_ticks) {
    assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
    skip(); /* the kernel has no ticks ioctl: the epoll serves */
  }
  if (!deny_ticks()) {
    assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
    skip(); /* no seccomp filter here */
  }
  int fd = apex_manager_fd(m);

  /* A DONE into the empty queue: its signal is the failing ioctl. */
  apex_task_t *a = submit_json(m, "testkit", "noop", NULL, NULL);
  AWAIT(apex_task_state(a) == APEX_TASK_SUCCEEDED, PROMPT_MS);
  if (!readable(fd, PROMPT_MS)) print_error("fd not readable over a queued DONE\n");
  assert_true(readable(fd, 0));
  pump_until(m, &s, 1);

  /* A DONE while the host's timer is armed for a far deadline. */
  apex_submit_opts_t far = opts_timeout(3600);
  apex_task_t *b = submit_json(m, "hostile", "sleep", "{\"ms\": 300}", &far);
  apex_task_t *c = submit_json(m, "testkit", "noop", NULL, NULL);
  AWAIT(apex_task_state(c) == APEX_TASK_SUCCEEDED, PROMPT_MS);
  if (!readable(fd, PROMPT_MS)) print_error("fd not readable over a DONE, deadline armed\n");
  assert_true(readable(fd, 0));
  pump_until(m, &s, 3); /* c's, then b's after its 300 ms */

  /* Timeouts still reach the host through the fd. */
  apex_submit_opts_t soon = opts_timeout(0.05);
  for (int i = 0; i < 3; i++) {
    apex_task_t *t = submit_json(m, "hostile", "sleep", "{\"ms\": 5000}", &soon);
    pump_until(m, &s, 4 + i);
    assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
    apex_task_release(t);
  }
  assert_int_equal(s.timed_out, 3);
  apex_task_release(a);
  apex_task_release(b);
  apex_task_release(c);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_events_and_deadlines_without_the_ioctl),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
