/* hostile: a test plugin that misbehaves on purpose, so tests can show the
 * host survives it. Each action is one kind of misbehaviour:
 *
 *   ignore_cancel    blocks `ms` in nanosleep, never looking at its token
 *   bad_progress     reports invalid updates; result {"codes", "valid"}
 *   flood            calls progress `count` times as fast as it can
 *   fail             fails with the code and message it is given
 *   crash_null_result returns APEX_OK without setting a result
 *   late_complete    deferred; completes after `delay_ms` whatever happened
 *                    (timeout, cancel) to the task meanwhile
 *   double_complete  deferred; completes AND returns APEX_OK (protocol misuse)
 *   sleep            a well-behaved cancellable sleep, for contrast
 *   wait_fd          waits forever on a pipe nobody writes; only cancel ends it
 *   crash            raises SIGSEGV: only for process-isolation tests
 *
 * Threads: blocking actions run on host workers. late_complete starts one
 * joinable thread per task, tracked in the plugin state (list under
 * state->mu) so that shutdown joins them before the host dlcloses us; a
 * thread that finished is reaped at the next start.
 *
 * What can fail: nothing here is expected to fail except on purpose; out of
 * memory fails the task with APEX_E_NOMEM.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "apex/plugin.h"

/* ------------------------------------------------------------ plugin state */

typedef struct h_thread {
  pthread_t tid;
  int done; /* set under state->mu after the thread's last ctx call */
  apex_ctx_t *ctx;
  struct h_state *state;
  struct h_thread *next;
} h_thread_t;

typedef struct h_state {
  pthread_mutex_t mu;
  h_thread_t *threads;
} h_state_t;

static int h_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  h_state_t *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(why, why_len, "hostile: out of memory");
    return -1;
  }
  int rc = pthread_mutex_init(&s->mu, NULL);
  if (rc != 0) {
    snprintf(why, why_len, "hostile: pthread_mutex_init: %s", strerror(rc));
    free(s);
    return -1;
  }
  *state = s;
  return 0;
}

static void h_shutdown(void *state) {
  h_state_t *s = state;
  if (!s) return;
  for (h_thread_t *t = s->threads, *next; t; t = next) {
    next = t->next;
    pthread_join(t->tid, NULL);
    free(t);
  }
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* ---------------------------------------------------------------- helpers */

static int64_t param_int(apex_ctx_t *ctx, const char *name, int64_t dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static const char *param_str(apex_ctx_t *ctx, const char *name, const char *dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_string(v) ? json_string_value(v) : dflt;
}

/* Sleeps ms in 10 ms nanosleep slices and never looks at the token. */
static void sleep_deaf(int64_t ms) {
  while (ms > 0) {
    int64_t slice = ms < 10 ? ms : 10;
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)slice * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    ms -= slice;
  }
}

/* ---------------------------------------------------------- the actions */

static int ignore_cancel(apex_ctx_t *ctx) {
  int64_t ms = param_int(ctx, "ms", 5000);
  sleep_deaf(ms);
  json_t *r = json_pack("{s:I}", "slept_ms", (json_int_t)ms);
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

/* Appends one invalid update's code. Builds the JSON pieces from text so each
 * case reads as the value the host is shown. */
static int bad_update(apex_ctx_t *ctx, json_t *codes, double pct, const char *msg,
                      const char *status, const char *details_json, const char *subs_json) {
  json_t *details = details_json ? json_loads(details_json, 0, NULL) : NULL;
  json_t *subs = subs_json ? json_loads(subs_json, 0, NULL) : NULL;
  if ((details_json && !details) || (subs_json && !subs)) {
    json_decref(details);
    json_decref(subs);
    return -1;
  }
  apex_progress_update_t u = {
      .percentage = pct, .message = msg, .status = status, .details = details, .sub_tasks = subs};
  int rc = apex_ctx_progress_update(ctx, &u);
  json_decref(details);
  json_decref(subs);
  return json_array_append_new(codes, json_integer(rc));
}

/* The order of "codes" is the order below; each entry is what the host
 * returned for that invalid update (APEX_E_INVALID expected for all).
 * "valid" is the code of the one valid update sent afterwards. */
static int bad_progress(apex_ctx_t *ctx) {
  json_t *codes = json_array();
  if (!codes) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");

  char long_msg[APEX_PROGRESS_MESSAGE_MAX + 2];
  memset(long_msg, 'x', sizeof long_msg - 1);
  long_msg[sizeof long_msg - 1] = '\0';

  /* Sub-tasks nested well past APEX_PROGRESS_MAX_DEPTH. */
  char deep[(APEX_PROGRESS_MAX_DEPTH + 4) * 48 + 8];
  size_t off = 0;
  for (int i = 0; i < APEX_PROGRESS_MAX_DEPTH + 4; i++)
    off += (size_t)snprintf(deep + off, sizeof deep - off,
                            "[{\"name\":\"d\",\"percentage\":1,\"sub_tasks\":");
  off += (size_t)snprintf(deep + off, sizeof deep - off, "[]");
  for (int i = 0; i < APEX_PROGRESS_MAX_DEPTH + 4 && off < sizeof deep; i++)
    off += (size_t)snprintf(deep + off, sizeof deep - off, "}]");

  int bad = 0;
  bad |= bad_update(ctx, codes, NAN, "nan", NULL, NULL, NULL);                 /* 0 */
  bad |= bad_update(ctx, codes, -1.0, "negative", NULL, NULL, NULL);           /* 1 */
  bad |= bad_update(ctx, codes, 101.0, "above 100", NULL, NULL, NULL);         /* 2 */
  bad |= bad_update(ctx, codes, INFINITY, "infinite", NULL, NULL, NULL);       /* 3 */
  bad |= bad_update(ctx, codes, 10.0, "bad \xc3\x28 utf8", NULL, NULL, NULL);  /* 4 */
  bad |= bad_update(ctx, codes, 10.0, long_msg, NULL, NULL, NULL);             /* 5 */
  bad |= bad_update(ctx, codes, 10.0, "status", "exploded", NULL, NULL);       /* 6 */
  bad |= bad_update(ctx, codes, 10.0, "details", NULL, "[1, 2]", NULL);        /* 7 */
  bad |= bad_update(ctx, codes, 10.0, "subs", NULL, NULL, "{\"name\": \"a\"}"); /* 8 */
  bad |= bad_update(ctx, codes, 10.0, "subs", NULL, NULL, "[42]");             /* 9 */
  bad |= bad_update(ctx, codes, 10.0, "subs", NULL, NULL,                      /* 10 */
                    "[{\"percentage\": 50}]");
  bad |= bad_update(ctx, codes, 10.0, "subs", NULL, NULL,                      /* 11 */
                    "[{\"name\": \"a\", \"percentage\": 150}]");
  bad |= bad_update(ctx, codes, 10.0, "subs", NULL, NULL, deep);               /* 12 */
  if (bad) {
    json_decref(codes);
    return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building bad updates");
  }

  int valid = apex_ctx_progress(ctx, 50.0, "valid");
  json_t *r = json_pack("{s:o, s:i}", "codes", codes, "valid", valid);
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

static int flood(apex_ctx_t *ctx) {
  int64_t count = param_int(ctx, "count", 1000000);
  int64_t rejected = 0;
  for (int64_t i = 0; i < count; i++)
    if (apex_ctx_progress(ctx, 100.0 * (double)i / (double)count, "flood") != APEX_OK) rejected++;
  apex_progress_update_t fin = {.percentage = 100.0, .message = "flood done",
                                .status = "completed"};
  if (apex_ctx_progress_update(ctx, &fin) != APEX_OK) rejected++;
  json_t *r = json_pack("{s:I, s:I}", "count", (json_int_t)count, "rejected", (json_int_t)rejected);
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

static int fail(apex_ctx_t *ctx) {
  const char *code = param_str(ctx, "code", "execution");
  const char *message = param_str(ctx, "message", "hostile failure on purpose");
  if (strcmp(code, "execution") == 0) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s", message);
  if (strcmp(code, "transient") == 0) return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "%s", message);
  return apex_ctx_fail(ctx, APEX_E_EXECUTION, "unknown code '%s' (want execution or transient)",
                       code);
}

static int crash_null_result(apex_ctx_t *ctx) { return APEX_OK; }

static void *late_main(void *arg) {
  h_thread_t *t = arg;
  apex_ctx_t *ctx = t->ctx;
  int64_t delay_ms = param_int(ctx, "delay_ms", 500);
  sleep_deaf(delay_ms);
  /* By now the task may have timed out: both calls must be accepted and
   * ignored by the host, never touch freed memory. */
  (void)apex_ctx_progress(ctx, 100.0, "late");
  json_t *r = json_pack("{s:I}", "delayed_ms", (json_int_t)delay_ms);
  if (r) apex_ctx_set_result(ctx, r);
  apex_ctx_complete(ctx, APEX_OK);
  pthread_mutex_lock(&t->state->mu);
  t->done = 1;
  pthread_mutex_unlock(&t->state->mu);
  return NULL;
}

static int late_complete(apex_ctx_t *ctx) {
  h_state_t *s = apex_ctx_plugin_state(ctx);
  if (!s) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "hostile: plugin state missing");
  h_thread_t *t = calloc(1, sizeof *t);
  if (!t) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  t->ctx = ctx;
  t->state = s;

  pthread_mutex_lock(&s->mu);
  /* Reap finished threads; a thread marked done no longer needs s->mu. */
  for (h_thread_t **pp = &s->threads; *pp;) {
    h_thread_t *d = *pp;
    if (!d->done) {
      pp = &d->next;
      continue;
    }
    *pp = d->next;
    pthread_join(d->tid, NULL);
    free(d);
  }
  int rc = pthread_create(&t->tid, NULL, late_main, t);
  if (rc != 0) {
    pthread_mutex_unlock(&s->mu);
    free(t);
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot start a thread: %s", strerror(rc));
  }
  t->next = s->threads;
  s->threads = t;
  pthread_mutex_unlock(&s->mu);
  return APEX_PENDING;
}

/* Protocol misuse on purpose: a deferred handler that completes its ctx and
 * then, instead of APEX_PENDING, returns APEX_OK as if it were blocking.
 * The host sees two completions for one attempt; it must honour the first
 * and ignore (and count) the second. (Calling apex_ctx_complete twice would
 * touch a ctx that is already invalid, which tests a use-after-free in this
 * plugin rather than the host's robustness, so we do not.) */
static int double_complete(apex_ctx_t *ctx) {
  apex_ctx_complete(ctx, APEX_OK);
  return APEX_OK;
}

static int sleep_action(apex_ctx_t *ctx) {
  int64_t ms = param_int(ctx, "ms", 1000);
  if (apex_ctx_sleep_ms(ctx, (uint64_t)ms) == APEX_E_CANCELLED) {
    const char *why = apex_ctx_cancel_reason(ctx);
    return apex_ctx_fail(ctx, APEX_E_CANCELLED, "sleep cancelled (%s)", why ? why : "unknown");
  }
  json_t *r = json_pack("{s:I}", "slept_ms", (json_int_t)ms);
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

/* Returns the wait's outcome: cancelled/failed through apex_ctx_fail with
 * that code; ready or timed out (neither can happen) as OK with revents. */
static int wait_fd(apex_ctx_t *ctx) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "pipe2: %s", strerror(errno));
  int rc = apex_ctx_wait_fd(ctx, p[0], POLLIN, -1);
  close(p[0]);
  close(p[1]);
  if (rc < 0) return apex_ctx_fail(ctx, rc, "wait_fd returned %d", rc);
  json_t *r = json_pack("{s:i}", "revents", rc);
  if (!r) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, r);
  return APEX_OK;
}

static int crash(apex_ctx_t *ctx) {
  raise(SIGSEGV);
  return apex_ctx_fail(ctx, APEX_E_EXECUTION, "survived SIGSEGV");
}

/* ------------------------------------------------------------ descriptor */

static const apex_param_spec_t k_ms_5000[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .default_json = "5000", .has_min = 1, .min = 0},
};
static const apex_param_spec_t k_ms_1000[] = {
    {.name = "ms", .type = APEX_PARAM_INT, .default_json = "1000", .has_min = 1, .min = 0},
};
static const apex_param_spec_t k_flood_params[] = {
    {.name = "count", .type = APEX_PARAM_INT, .default_json = "1000000", .has_min = 1, .min = 0},
};
static const apex_param_spec_t k_fail_params[] = {
    {.name = "code", .type = APEX_PARAM_STRING, .default_json = "\"execution\"",
     .description = "execution or transient"},
    {.name = "message", .type = APEX_PARAM_STRING,
     .default_json = "\"hostile failure on purpose\""},
};
static const apex_param_spec_t k_delay_params[] = {
    {.name = "delay_ms", .type = APEX_PARAM_INT, .default_json = "500", .has_min = 1, .min = 0},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define BLOCKING(nm, fn, ps, np)                                                  \
  {.name = nm, .description = "hostile: " nm, .handler = fn, .kind = APEX_ACTION_BLOCKING, \
   .params = ps, .n_params = np}
#define DEFERRED(nm, fn, ps, np)                                                  \
  {.name = nm, .description = "hostile: " nm, .handler = fn, .kind = APEX_ACTION_DEFERRED, \
   .params = ps, .n_params = np}

static const apex_action_desc_t k_actions[] = {
    BLOCKING("ignore_cancel", ignore_cancel, k_ms_5000, N(k_ms_5000)),
    BLOCKING("bad_progress", bad_progress, NULL, 0),
    BLOCKING("flood", flood, k_flood_params, N(k_flood_params)),
    BLOCKING("fail", fail, k_fail_params, N(k_fail_params)),
    BLOCKING("crash_null_result", crash_null_result, NULL, 0),
    DEFERRED("late_complete", late_complete, k_delay_params, N(k_delay_params)),
    DEFERRED("double_complete", double_complete, NULL, 0),
    BLOCKING("sleep", sleep_action, k_ms_1000, N(k_ms_1000)),
    BLOCKING("wait_fd", wait_fd, NULL, 0),
    BLOCKING("crash", crash, NULL, 0),
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "hostile",
    .version = "0.0.1",
    .description = "Test plugin that misbehaves on purpose",
    .init = h_init,
    .shutdown = h_shutdown,
    .actions = k_actions,
    .n_actions = N(k_actions),
};

APEX_PLUGIN_DEFINE(k_plugin)
