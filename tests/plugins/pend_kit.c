/* pend_kit: deferred actions that learn of their cancel through
 * apex_ctx_on_cancel, for tests/integration/test_deferred_scale.c.
 *
 *   pend     deferred, no params: registers on_cancel and stays pending; the
 *            callback completes the task APEX_E_CANCELLED with the message
 *            "oc REASON" (the ctx's cancel reason as the callback saw it).
 *   quick    as pend, flagged APEX_ACTION_F_START_INLINE: it may start on
 *            the submitting thread; each start stores its thread
 *            (g_quick_thread) and counts itself (g_quick_starts).
 *   gate     as quick, but its start first sets g_gate_in, then waits
 *            (yielding) until the test sets g_gate_open.
 *   twice    deferred: registers, then checks a second registration returns
 *            APEX_E_ALREADY and a NULL callback APEX_E_INVALID (counted in
 *            `bad_register` otherwise), then stays pending as pend does.
 *   late     deferred: waits (cancellably, on the worker) until its token
 *            fires, then registers: the callback must run at once, on this
 *            thread, inside the registration; it completes with "oc REASON
 *            inline=1" (0 if it ran elsewhere or later).
 *   race     deferred, params ready_fd, spin: registers, writes 1 to the
 *            eventfd ready_fd (the host then cancels), spins `spin` rounds and
 *            completes APEX_OK on the worker: a complete racing the cancel.
 *            Whatever wins, the callback must run at most once, never
 *            start after that complete returned and never still run when
 *            it returns (`violations` counts all three).
 *   park     deferred: registers a callback that parks the ctx (no complete).
 *   unpark   blocking: completes the parked ctx APEX_E_CANCELLED with the
 *            message "parked REASON cancelled=N", what the ctx read then.
 *   stats    blocking: succeeds with {fires, violations, bad_register} and,
 *            with {"reset": 1}, zeroes them.
 *
 * Threads: handlers run on workers; callbacks on the cancelling thread. The
 * counters are atomics of the library image (one test process). What can
 * fail: the ready_fd write in race (the task fails APEX_E_IO). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "apex/plugin.h"

#ifndef APEX_HAVE_CTX_ON_CANCEL
#error "pend_kit needs apex_ctx_on_cancel (APEX_HAVE_CTX_ON_CANCEL)"
#endif

#define RACE_SLOTS 4096

/* Read by the test, which dlopens this image too (so it outlives the
 * managers that load it) and looks these up: they count across managers,
 * shutdown included, where no action can be called any more. */
#define PK_EXPORT __attribute__((visibility("default")))
PK_EXPORT atomic_uint_fast64_t g_fires, g_violations, g_bad_register;
/* Callbacks by the reason they saw: user (any host text), timeout,
 * shutdown, parent. */
PK_EXPORT atomic_uint_fast64_t g_by_timeout, g_by_shutdown, g_by_parent, g_by_other;
/* Registrations that returned APEX_OK in pend, twice and park: a test
 * waits for it before cancelling, so the cancel finds the callback
 * registered (a cancel that comes between the attempt's start and the
 * registration runs the callback on the worker, inside the registration). */
PK_EXPORT atomic_uint_fast64_t g_registered;
/* race: per task (id % RACE_SLOTS; the test runs them one at a time):
 * complete returned / the callback ran. */
static atomic_int g_race_done[RACE_SLOTS], g_race_fired[RACE_SLOTS];
static _Thread_local int tls_registering;

/* pend's callback: finishes the task as cancelled, naming the reason. */
static void count_reason(const char *why) {
  atomic_uint_fast64_t *c = !why                             ? &g_by_other
                            : strcmp(why, "timeout") == 0  ? &g_by_timeout
                            : strcmp(why, "shutdown") == 0 ? &g_by_shutdown
                            : strcmp(why, "parent") == 0   ? &g_by_parent
                                                           : &g_by_other;
  atomic_fetch_add(c, 1);
}

static void on_cancel_complete(apex_ctx_t *ctx, void *user) {
  (void)user;
  atomic_fetch_add(&g_fires, 1);
  const char *why = apex_ctx_cancel_reason(ctx);
  count_reason(why);
  apex_ctx_fail(ctx, APEX_E_CANCELLED, "oc %s", why ? why : "(none)");
  apex_ctx_complete(ctx, APEX_E_CANCELLED);
}

static int pend(apex_ctx_t *ctx) {
  int rc = apex_ctx_on_cancel(ctx, on_cancel_complete, NULL);
  if (rc != APEX_OK) {
    apex_ctx_fail(ctx, rc, "on_cancel refused");
    apex_ctx_complete(ctx, rc);
    return APEX_PENDING;
  }
  atomic_fetch_add(&g_registered, 1);
  return APEX_PENDING;
}

/* quick's starts, and the thread of the last one (pthread_self, as an
 * integer). */
PK_EXPORT atomic_uint_fast64_t g_quick_starts;
PK_EXPORT _Atomic uintptr_t g_quick_thread;

static int quick(apex_ctx_t *ctx) {
  atomic_store(&g_quick_thread, (uintptr_t)pthread_self());
  atomic_fetch_add(&g_quick_starts, 1);
  return pend(ctx);
}

/* gate: as quick, but its start waits (yielding) until g_gate_open is set,
 * having set g_gate_in: a test looks at the task while its inline start
 * runs. (A real flagged start must not wait; this one holds the window.) */
PK_EXPORT atomic_int g_gate_in, g_gate_open;

static int gate(apex_ctx_t *ctx) {
  atomic_store(&g_gate_in, 1);
  while (!atomic_load(&g_gate_open)) sched_yield();
  return pend(ctx);
}

static void never(apex_ctx_t *ctx, void *user) {
  (void)ctx;
  (void)user;
  atomic_fetch_add(&g_violations, 1); /* a refused registration ran */
}

static int twice(apex_ctx_t *ctx) {
  if (apex_ctx_on_cancel(ctx, NULL, NULL) != APEX_E_INVALID) atomic_fetch_add(&g_bad_register, 1);
  /* Not cancelled yet (the test cancels once the task runs): registers. */
  int rc = apex_ctx_on_cancel(ctx, on_cancel_complete, NULL);
  if (rc != APEX_OK) {
    atomic_fetch_add(&g_bad_register, 1);
    apex_ctx_complete(ctx, rc);
    return APEX_PENDING;
  }
  atomic_fetch_add(&g_registered, 1);
  /* The first may have run (and completed) already if the cancel came in
   * between: then this is a call after complete, refused as well. */
  if (apex_ctx_on_cancel(ctx, never, NULL) == APEX_OK) atomic_fetch_add(&g_bad_register, 1);
  return APEX_PENDING;
}

static void on_cancel_late(apex_ctx_t *ctx, void *user) {
  (void)user;
  atomic_fetch_add(&g_fires, 1);
  const char *why = apex_ctx_cancel_reason(ctx);
  apex_ctx_fail(ctx, APEX_E_CANCELLED, "oc %s inline=%d", why ? why : "(none)", tls_registering);
  apex_ctx_complete(ctx, APEX_E_CANCELLED);
}

static int late(apex_ctx_t *ctx) {
  while (apex_ctx_sleep_ms(ctx, 10000) != APEX_E_CANCELLED) {
  }
  tls_registering = 1;
  int rc = apex_ctx_on_cancel(ctx, on_cancel_late, NULL);
  tls_registering = 0;
  /* The ctx may be gone: only the status is used. */
  if (rc != APEX_OK) atomic_fetch_add(&g_bad_register, 1);
  return APEX_PENDING;
}

static void on_cancel_race(apex_ctx_t *ctx, void *user) {
  unsigned slot = (unsigned)(uintptr_t)user;
  if (atomic_load(&g_race_done[slot])) atomic_fetch_add(&g_violations, 1); /* after complete */
  if (atomic_fetch_add(&g_race_fired[slot], 1) != 0) atomic_fetch_add(&g_violations, 1);
  atomic_fetch_add(&g_fires, 1);
  /* A moment for a racing complete to come in: it must wait for this
   * callback, not return while it still runs. */
  for (volatile int i = 0; i < 100000; i++) {
  }
  if (atomic_load(&g_race_done[slot])) atomic_fetch_add(&g_violations, 1);
  apex_ctx_complete(ctx, APEX_E_CANCELLED);
}

static int race(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  int fd = (int)json_integer_value(json_object_get(p, "ready_fd"));
  json_int_t spin = json_integer_value(json_object_get(p, "spin"));
  unsigned slot = (unsigned)(apex_ctx_task_id(ctx) % RACE_SLOTS);
  atomic_store(&g_race_done[slot], 0);
  atomic_store(&g_race_fired[slot], 0);
  if (apex_ctx_on_cancel(ctx, on_cancel_race, (void *)(uintptr_t)slot) != APEX_OK)
    atomic_fetch_add(&g_bad_register, 1);
  uint64_t one = 1;
  if (write(fd, &one, sizeof one) != (ssize_t)sizeof one) {
    apex_ctx_complete(ctx, APEX_E_IO);
    atomic_store(&g_race_done[slot], 1);
    return APEX_PENDING;
  }
  for (volatile json_int_t i = 0; i < spin; i++) {
  }
  apex_ctx_complete(ctx, APEX_OK);
  atomic_store(&g_race_done[slot], 1);
  return APEX_PENDING;
}

/* park: the callback parks the ctx without completing it; unpark (another
 * task) completes it, saying what the parked ctx read of its cancel. */
static _Atomic(apex_ctx_t *) g_parked;

static void on_cancel_park(apex_ctx_t *ctx, void *user) {
  (void)user;
  atomic_fetch_add(&g_fires, 1);
  atomic_store(&g_parked, ctx);
}

static int park(apex_ctx_t *ctx) {
  if (apex_ctx_on_cancel(ctx, on_cancel_park, NULL) != APEX_OK) {
    atomic_fetch_add(&g_bad_register, 1);
    apex_ctx_complete(ctx, APEX_E_EXECUTION);
    return APEX_PENDING;
  }
  atomic_fetch_add(&g_registered, 1);
  return APEX_PENDING;
}

/* Completes the parked ctx (see unpark). Exported, so a test can end it
 * after the manager is destroyed, when no task can be submitted. Returns:
 * 0, or -1 if nothing is parked. */
PK_EXPORT int pend_kit_unpark(void);
PK_EXPORT int pend_kit_unpark(void) {
  apex_ctx_t *p = atomic_exchange(&g_parked, NULL);
  if (!p) return -1;
  const char *why = apex_ctx_cancel_reason(p);
  apex_ctx_fail(p, APEX_E_CANCELLED, "parked %s cancelled=%d", why ? why : "(none)",
                apex_ctx_is_cancelled(p));
  apex_ctx_complete(p, APEX_E_CANCELLED);
  return 0;
}

static int unpark(apex_ctx_t *ctx) {
  if (pend_kit_unpark() != 0) return apex_ctx_fail(ctx, APEX_E_INVALID, "nothing parked");
  return APEX_OK;
}

static int stats(apex_ctx_t *ctx) {
  json_t *p = apex_ctx_params(ctx);
  apex_ctx_set_result(ctx, json_pack("{s:I, s:I, s:I}", "fires", (json_int_t)atomic_load(&g_fires),
                                     "violations", (json_int_t)atomic_load(&g_violations),
                                     "bad_register", (json_int_t)atomic_load(&g_bad_register)));
  if (json_integer_value(json_object_get(p, "reset"))) {
    atomic_store(&g_fires, 0);
    atomic_store(&g_violations, 0);
    atomic_store(&g_bad_register, 0);
  }
  return APEX_OK;
}

static const apex_param_spec_t k_race_params[] = {
    {.name = "ready_fd", .type = APEX_PARAM_INT, .required = 1},
    {.name = "spin", .type = APEX_PARAM_INT, .default_json = "0"},
};
static const apex_param_spec_t k_stats_params[] = {
    {.name = "reset", .type = APEX_PARAM_INT, .default_json = "0"},
};

static const apex_action_desc_t k_actions[] = {
    {.name = "pend", .description = "Pending until cancelled (on_cancel)", .handler = pend,
     .kind = APEX_ACTION_DEFERRED},
    {.name = "quick", .description = "As pend; may start on the submitter", .handler = quick,
     .kind = APEX_ACTION_DEFERRED, .flags = APEX_ACTION_F_START_INLINE},
    {.name = "gate", .description = "As quick; its start waits for the test", .handler = gate,
     .kind = APEX_ACTION_DEFERRED, .flags = APEX_ACTION_F_START_INLINE},
    {.name = "twice", .description = "Registers twice", .handler = twice,
     .kind = APEX_ACTION_DEFERRED},
    {.name = "late", .description = "Registers after its cancel", .handler = late,
     .kind = APEX_ACTION_DEFERRED},
    {.name = "race", .description = "Completes while the host cancels", .handler = race,
     .kind = APEX_ACTION_DEFERRED, .params = k_race_params, .n_params = 2},
    {.name = "park", .description = "Its callback parks the ctx", .handler = park,
     .kind = APEX_ACTION_DEFERRED},
    {.name = "unpark", .description = "Completes the parked ctx", .handler = unpark,
     .kind = APEX_ACTION_BLOCKING},
    {.name = "stats", .description = "Callback counters", .handler = stats,
     .kind = APEX_ACTION_BLOCKING, .params = k_stats_params, .n_params = 1},
};

static const apex_plugin_desc_t k_desc = {
    APEX_PLUGIN_DESC_INIT,
    .name = "pend_kit",
    .version = "1.0.0",
    .description = "Deferred actions cancelled through apex_ctx_on_cancel",
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_desc)
