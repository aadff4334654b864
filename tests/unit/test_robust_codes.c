/* Return codes the headers list, on the failure paths that are hard to
 * reach, and a check that replaced an assert:
 *
 *   - apex__retry_arm refuses a task that holds no retry slot instead of
 *     writing past the retry heap (the assert that guarded it vanished in
 *     release builds);
 *   - apex_token_wait reports a failed kernel wait as APEX_E_IO, and
 *     apex_ctx_sleep_ms passes it through (it used to turn it into APEX_OK,
 *     claiming a full sleep);
 *   - apex_task_cancel returns APEX_E_NOMEM only when a running task could
 *     not be signalled; a queued task it ends without a token is APEX_OK.
 *
 * How: this program defines calloc and syscall itself (the executable's
 * definitions win over every shared object's), forwarding to the real ones
 * (the sanitizer's interceptor in sanitizer builds, as
 * tests/unit/test_alloc_failure.c does). calloc fails once when armed for
 * the test thread only (thread-local), so exactly the call under test sees
 * it; syscall fails one futex wait (FUTEX_WAIT_BITSET, only token.c makes
 * that call through syscall()) when armed, from whichever thread waits.
 *
 * Plugin: cancel_probe (tests/plugins/cancel_probe.c). Threads: cmocka's
 * thread is the host. No sleeps: conditions are awaited. */
#include <dlfcn.h>
#include <errno.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "exec/internal.h"
#include "integration/harness.h"

/* ---------------------------------------------------- the interposition */

#if defined(__SANITIZE_ADDRESS__)
#define NO_SANITIZE __attribute__((no_sanitize_address))
#elif defined(__SANITIZE_THREAD__)
#define NO_SANITIZE __attribute__((no_sanitize_thread))
#else
#define NO_SANITIZE
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
extern void *__interceptor_calloc(size_t k, size_t n);
#define REAL_CALLOC __interceptor_calloc
#else
extern void *__libc_calloc(size_t k, size_t n);
#define REAL_CALLOC __libc_calloc
#endif
#define INTERPOSE __attribute__((visibility("default"))) NO_SANITIZE

static _Thread_local int tl_fail_calloc; /* the next calloc of this thread fails */
static atomic_int g_fail_futex_wait;      /* futex waits left to fail */
static atomic_int g_futex_failed;

INTERPOSE void *calloc(size_t k, size_t n) {
  if (tl_fail_calloc) {
    tl_fail_calloc = 0;
    errno = ENOMEM;
    return NULL;
  }
  return REAL_CALLOC(k, n);
}

typedef long (*syscall_fn)(long, ...);
static syscall_fn real_syscall;

/* Every caller here passes six arguments or fewer; reading six is how the
 * x86-64 and AArch64 calling conventions let a forwarder pass them on. */
INTERPOSE long syscall(long n, ...) {
  va_list ap;
  va_start(ap, n);
  long a[6];
  for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
  va_end(ap);
  if (n == SYS_futex && ((int)a[1] & FUTEX_CMD_MASK) == FUTEX_WAIT_BITSET) {
    int left = atomic_load(&g_fail_futex_wait);
    while (left > 0 && !atomic_compare_exchange_weak(&g_fail_futex_wait, &left, left - 1)) {
    }
    if (left > 0) {
      atomic_fetch_add(&g_futex_failed, 1);
      errno = EINVAL;
      return -1;
    }
  }
  return real_syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* ------------------------------------------------------------- helpers */

static apex_manager_t *make_probe(unsigned workers) {
  apex_manager_config_t cfg = base_config(workers);
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_TEST_PLUGIN_DIR "/cancel_probe.so");
  return m;
}

typedef struct held {
  apex_task_t *t;
  int fds[2];
} held_t;

static void hold_start(apex_manager_t *m, held_t *h) {
  assert_int_equal(pipe(h->fds), 0);
  char params[64];
  snprintf(params, sizeof params, "{\"release_fd\": %d}", h->fds[0]);
  h->t = submit_json(m, "cancel_probe", "hold", params, NULL);
}

static void hold_end(held_t *h) {
  close(h->fds[0]);
  close(h->fds[1]);
  apex_task_release(h->t);
}

/* --------------------------------------------------------------- tests */

static void test_retry_arm_without_a_reserved_slot_is_refused(void **st) {
  (void)st;
  apex_manager_t *m = make_probe(1);
  apex_task_t t;
  memset(&t, 0, sizeof t); /* no APEX__TIMER_RETRY_SLOT, no run state */
  assert_int_equal(apex__retry_arm(m, &t), APEX_E_NOMEM);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_token_wait_reports_a_failed_wait_as_io(void **st) {
  (void)st;
  apex_token_t *tok = NULL;
  assert_int_equal(apex_token_new(&tok), APEX_OK);
  atomic_store(&g_futex_failed, 0);
  atomic_store(&g_fail_futex_wait, 1);
  assert_int_equal(apex_token_wait(tok, 60000), APEX_E_IO);
  assert_int_equal(atomic_load(&g_futex_failed), 1);
  assert_int_equal(apex_token_wait(NULL, 0), APEX_E_INVALID);
  apex_token_unref(tok);
}

static void test_ctx_sleep_passes_a_failed_wait_through(void **st) {
  (void)st;
  apex_manager_t *m = make_probe(1);
  atomic_store(&g_futex_failed, 0);
  atomic_store(&g_fail_futex_wait, 1);
  apex_task_t *t = submit_json(m, "cancel_probe", "sleep_rc", "{\"ms\": 60000}", NULL);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK); /* not the 60 s */
  assert_int_equal(atomic_load(&g_futex_failed), 1);
  json_t *r = apex_task_result(t);
  assert_int_equal(json_integer_value(json_object_get(r, "rc")), APEX_E_IO);
  json_decref(r);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

static void test_cancel_without_memory_for_a_token(void **st) {
  (void)st;
  apex_manager_t *m = make_probe(1);
  held_t running, queued;
  hold_start(m, &running);
  AWAIT(apex_task_state(running.t) == APEX_TASK_RUNNING, PROMPT_MS);
  hold_start(m, &queued); /* the only worker is taken */

  /* Running, no token yet: its handler cannot be signalled; nothing
   * changes. */
  tl_fail_calloc = 1;
  assert_int_equal(apex_task_cancel(running.t, NULL), APEX_E_NOMEM);
  assert_int_equal(tl_fail_calloc, 0); /* the token's allocation was the one */
  assert_int_equal(apex_task_state(running.t), APEX_TASK_RUNNING);
  assert_false(apex_token_is_cancelled(apex_task_token(running.t)));

  /* Queued: ended without a token, which nothing needed, so none is even
   * tried (the armed failure is left unused). */
  assert_int_equal(apex_task_state(queued.t), APEX_TASK_QUEUED);
  tl_fail_calloc = 1;
  assert_int_equal(apex_task_cancel(queued.t, NULL), APEX_OK);
  assert_int_equal(tl_fail_calloc, 1);
  tl_fail_calloc = 0;
  assert_int_equal(apex_task_state(queued.t), APEX_TASK_CANCELLED);

  assert_int_equal(write(running.fds[1], "x", 1), 1);
  assert_int_equal(apex_task_wait(running.t, 10000), APEX_OK);
  assert_int_equal(apex_task_state(running.t), APEX_TASK_SUCCEEDED);
  hold_end(&running);
  hold_end(&queued);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
}

int main(void) {
  real_syscall = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
  if (!real_syscall) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_retry_arm_without_a_reserved_slot_is_refused),
      cmocka_unit_test(test_token_wait_reports_a_failed_wait_as_io),
      cmocka_unit_test(test_ctx_sleep_passes_a_failed_wait_through),
      cmocka_unit_test(test_cancel_without_memory_for_a_token),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
