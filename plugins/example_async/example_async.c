/* example_async: the plugin that ships as the worked example of the plugin
 * API (plan task 3.4.1). Three actions:
 *
 *   long_task      blocking: `steps` steps of `step_ms` each, progress after
 *                  every step (details, optional named sub-tasks, milestones)
 *                  and the steps done as its partial result,
 *                  cancellable between and during steps; can fail its first
 *                  attempts on purpose (to show retries) or ignore its token
 *                  on purpose (to show timeouts of a misbehaving handler).
 *                  Resumable: it checkpoints {"step": N} after every step
 *                  (apex_ctx_checkpoint), and an attempt that finds a
 *                  checkpoint (a retry, or the resume after a crash of a
 *                  host on a durable store) starts at the step after it. With
 *                  `step_log` it appends one line per event to that file, for
 *                  crash tests to read (format at step_log_write).
 *   deferred_task  deferred: returns APEX_PENDING at once and completes
 *                  from a thread of its own after `delay_ms`.
 *   fan_out        deferred: spawns `children` long_task child tasks
 *                  (apex_ctx_spawn) with weights and completes from the last
 *                  one's end callback; the host sees their rolled-up
 *                  progress and tree (docs/plugin-developer-guide.md).
 *
 * Threads: long_task runs on a host worker. deferred_task's handler runs on a
 * worker and starts one thread per task; those threads are joinable, not
 * detached, and tracked in the plugin state (a list under state->mu) so that
 * shutdown can join every one before the host dlcloses us: a detached thread
 * still executing its last instructions after apex_ctx_complete() would run
 * unmapped code. Finished threads are reaped at the next start.
 *
 * What can fail: out of memory building JSON (the task fails with
 * APEX_E_NOMEM), pthread_create (APEX_E_EXECUTION). Cancellation ends a task
 * with APEX_E_CANCELLED. Nothing here aborts or prints.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "apex/plugin.h"

/* ------------------------------------------------------------ plugin state */

typedef struct ea_thread {
  pthread_t tid;
  int done; /* set under state->mu after the thread's last ctx call */
  apex_ctx_t *ctx;
  struct ea_state *state;
  struct ea_thread *next;
} ea_thread_t;

typedef struct ea_state {
  pthread_mutex_t mu;
  ea_thread_t *threads; /* started and not yet joined */
} ea_state_t;

static int ea_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  ea_state_t *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(why, why_len, "example_async: out of memory for plugin state");
    return -1;
  }
  int rc = pthread_mutex_init(&s->mu, NULL);
  if (rc != 0) {
    snprintf(why, why_len, "example_async: pthread_mutex_init: %s", strerror(rc));
    free(s);
    return -1;
  }
  *state = s;
  return 0;
}

/* The host calls this after every task completed, so each thread is at most
 * returning from its function: the joins are short. */
static void ea_shutdown(void *state) {
  ea_state_t *s = state;
  if (!s) return;
  ea_thread_t *t = s->threads;
  while (t) {
    ea_thread_t *next = t->next;
    pthread_join(t->tid, NULL);
    free(t);
    t = next;
  }
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* Joins the threads that already finished. Called with s->mu held; a thread
 * marked done has released s->mu for the last time, so the join cannot wait
 * on us. */
static void ea_reap_locked(ea_state_t *s) {
  ea_thread_t **pp = &s->threads;
  while (*pp) {
    ea_thread_t *t = *pp;
    if (t->done) {
      *pp = t->next;
      pthread_join(t->tid, NULL);
      free(t);
    } else {
      pp = &t->next;
    }
  }
}

/* ---------------------------------------------------------------- helpers */

static int64_t param_int(apex_ctx_t *ctx, const char *name, int64_t dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static int param_bool(apex_ctx_t *ctx, const char *name, int dflt) {
  json_t *v = json_object_get(apex_ctx_params(ctx), name);
  return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* Sleeps without looking at any token: what a badly written handler does. */
static void sleep_uncancellable(uint64_t ms) {
  struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Names read better than numbers in a progress view; past the list, "part N". */
static const char *const k_sub_names[] = {"fetch", "parse", "transform", "validate",
                                          "index", "store", "verify",    "publish"};
#define N_SUB_NAMES (sizeof k_sub_names / sizeof k_sub_names[0])

static void sub_name(int j, char *buf, size_t len) {
  if ((size_t)j < N_SUB_NAMES)
    snprintf(buf, len, "%s", k_sub_names[j]);
  else
    snprintf(buf, len, "part %d", j + 1);
}

/* Sub-task j covers steps [first, end) of `steps`; the split is even to
 * within one step. */
static int64_t sub_first(int j, int n, int64_t steps) { return steps * j / n; }

/* Returns: a new array of n sub-task objects for `done` of `steps` steps
 * finished, or NULL on no memory. */
static json_t *sub_tasks_json(int n, int64_t done, int64_t steps) {
  json_t *arr = json_array();
  if (!arr) return NULL;
  for (int j = 0; j < n; j++) {
    int64_t first = sub_first(j, n, steps), end = sub_first(j + 1, n, steps);
    int64_t mine = done <= first ? 0 : (done >= end ? end - first : done - first);
    double pct = end > first ? 100.0 * (double)mine / (double)(end - first) : 100.0;
    char name[32];
    sub_name(j, name, sizeof name);
    /* A sub-task whose steps have not begun is "pending", not "running". */
    const char *st = mine == end - first ? "completed" : mine == 0 && done < first ? "pending"
                                                                                  : "running";
    json_t *o = json_pack("{s:s, s:f, s:s, s:i}", "name", name, "percentage", pct, "status", st,
                          "weight", 1);
    if (!o || json_array_append_new(arr, o) != 0) {
      json_decref(arr);
      return NULL;
    }
  }
  return arr;
}

/* Sends one update; details and sub_tasks are built here so every call site
 * reports the same shape. Returns: APEX_OK or APEX_E_NOMEM. A rejected
 * update (the host's validation) is not this task's failure. */
static int report(apex_ctx_t *ctx, int64_t done, int64_t steps, int n_sub, const char *status,
                  const char *message) {
  json_t *details = json_pack("{s:I, s:I, s:I}", "step", (json_int_t)done, "steps",
                              (json_int_t)steps, "attempt", (json_int_t)apex_ctx_attempt(ctx));
  json_t *subs = n_sub > 0 ? sub_tasks_json(n_sub, done, steps) : NULL;
  if (!details || (n_sub > 0 && !subs)) {
    json_decref(details);
    json_decref(subs);
    return APEX_E_NOMEM;
  }
  apex_progress_update_t u = {
      .percentage = steps > 0 ? 100.0 * (double)done / (double)steps : 100.0,
      .message = message,
      .status = status,
      .details = details,
      .sub_tasks = subs,
  };
  (void)apex_ctx_progress_update(ctx, &u);
  json_decref(details);
  json_decref(subs);
  return APEX_OK;
}

/* ------------------------------------------------------------- long_task */

/* Publishes {"steps_done": done, "of": steps} as the task's partial result
 * (a host without apex_ctx_partial_result just does not get it). Returns:
 * APEX_OK, or APEX_E_NOMEM building the value. */
static int publish_partial(apex_ctx_t *ctx, int64_t done, int64_t steps) {
#ifdef APEX_HAVE_CTX_PARTIAL_RESULT
  json_t *p = json_pack("{s:I, s:I}", "steps_done", (json_int_t)done, "of", (json_int_t)steps);
  if (!p) return APEX_E_NOMEM;
  (void)apex_ctx_partial_result(ctx, p); /* borrowed: ours to free */
  json_decref(p);
#else
  (void)ctx;
  (void)done;
  (void)steps;
#endif
  return APEX_OK;
}

/* The step log (param step_log): one line per event, each written with a
 * single write(2) to a file opened O_APPEND, so lines from many tasks (and
 * from a process killed mid-run) never interleave or tear:
 *   "<task id> start <first step> <attempt>\n"  an attempt begins; first
 *                                               step is the checkpoint's
 *                                               step (0: from scratch)
 *   "<task id> done <step> <attempt>\n"         step (1-based) completed and
 *                                               its checkpoint was saved
 *   "<task id> end <steps> <attempt>\n"         the handler returns success
 * A step is logged done only after apex_ctx_checkpoint returned (the
 * checkpoint is durable then on a durable store), so a step logged done is
 * never run again by a later attempt: the promise a crash test checks.
 * Best effort otherwise: a log that cannot be written is not the task's
 * failure (the test reading it sees the gap). */
static void step_log_write(int fd, uint64_t task, const char *what, int64_t step,
                           uint32_t attempt) {
  if (fd < 0) return;
  char line[128];
  int n = snprintf(line, sizeof line, "%" PRIu64 " %s %lld %u\n", task, what, (long long)step,
                   (unsigned)attempt);
  if (n > 0 && (size_t)n < sizeof line) {
    ssize_t w;
    do {
      w = write(fd, line, (size_t)n);
    } while (w < 0 && errno == EINTR);
  }
}

/* Returns: the step an earlier attempt checkpointed (0 if none, or if its
 * checkpoint is not one of ours or is past steps: then the task starts
 * over rather than trust it). */
static int64_t checkpointed_step(apex_ctx_t *ctx, int64_t steps) {
#ifdef APEX_HAVE_CTX_CHECKPOINT
  json_t *cp = apex_ctx_checkpoint_get(ctx);
  json_t *v = json_object_get(cp, "step");
  int64_t step = json_is_integer(v) ? (int64_t)json_integer_value(v) : 0; /* cp: borrowed */
  return step >= 0 && step <= steps ? step : 0;
#else
  (void)ctx;
  (void)steps;
  return 0;
#endif
}

/* Saves {"step": done} as the task's checkpoint. Returns: APEX_OK when it
 * was saved; APEX_E_INVALID when the host keeps no checkpoints (one that
 * predates them: the task runs on, from scratch on its next attempt); or
 * the store's failure (APEX_E_STORE, APEX_E_NOMEM), which fails the task:
 * on a durable store a step whose checkpoint could not be written may run
 * again after a crash, and the step log would have said it was done. */
static int save_step(apex_ctx_t *ctx, int64_t done) {
#ifdef APEX_HAVE_CTX_CHECKPOINT
  json_t *cp = json_pack("{s:I}", "step", (json_int_t)done);
  if (!cp) return APEX_E_NOMEM;
  int rc = apex_ctx_checkpoint(ctx, cp);
  json_decref(cp);
  return rc;
#else
  (void)ctx;
  (void)done;
  return APEX_E_INVALID;
#endif
}

static int long_task(apex_ctx_t *ctx) {
  int64_t steps = param_int(ctx, "steps", 10);
  int64_t step_ms = param_int(ctx, "step_ms", 100);
  int64_t fail_attempts = param_int(ctx, "fail_attempts", 0);
  int ignore_cancel = param_bool(ctx, "ignore_cancel", 0);
  int64_t n_sub = param_int(ctx, "sub_tasks", 0);
  json_t *log_path = json_object_get(apex_ctx_params(ctx), "step_log");
  uint32_t attempt = apex_ctx_attempt(ctx);
  uint64_t id = apex_ctx_task_id(ctx);
  char msg[128];
  int rc = APEX_OK;

  /* More sub-tasks than steps would leave some with nothing to do. */
  if (n_sub > steps) n_sub = steps;

  int log_fd = -1;
  if (json_is_string(log_path)) {
    log_fd = open(json_string_value(log_path), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
      return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot open step_log '%s': %s",
                           json_string_value(log_path), strerror(errno));
  }

  if (steps == 0) {
    if (attempt <= (uint64_t)fail_attempts) {
      rc = apex_ctx_fail(ctx, APEX_E_TRANSIENT, "attempt %u of the first %lld fails on purpose",
                         (unsigned)attempt, (long long)fail_attempts);
      goto out;
    }
    if (report(ctx, 0, 0, 0, "completed", "nothing to do") != APEX_OK) {
      rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building progress");
      goto out;
    }
  }

  int64_t first = checkpointed_step(ctx, steps);
  step_log_write(log_fd, id, "start", first, attempt);
  if (first > 0) {
    /* Where the checkpoint left it, before any new step: a resumed task's
     * bar starts there, not at zero. */
    snprintf(msg, sizeof msg, "resumed at step %lld/%lld", (long long)first, (long long)steps);
    if (report(ctx, first, steps, (int)n_sub, first == steps ? "completed" : "running", msg) !=
        APEX_OK) {
      rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building progress");
      goto out;
    }
  }

  /* Resumed with every step done already: an attempt meant to fail still
   * does ("attempts 1..N fail"), without a step to do first. */
  if (first == steps && steps > 0 && attempt <= (uint64_t)fail_attempts) {
    rc = apex_ctx_fail(ctx, APEX_E_TRANSIENT, "attempt %u of the first %lld fails on purpose",
                       (unsigned)attempt, (long long)fail_attempts);
    goto out;
  }

  for (int64_t i = first; i < steps; i++) {
    if (ignore_cancel) {
      sleep_uncancellable((uint64_t)step_ms);
    } else if (apex_ctx_sleep_ms(ctx, (uint64_t)step_ms) == APEX_E_CANCELLED ||
               apex_ctx_is_cancelled(ctx)) {
      rc = apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled after step %lld", (long long)i);
      goto out;
    }
    int64_t done = i + 1;

    /* The steps done so far, before the progress that says so: a host that
     * saw this step's progress finds at least this partial when the task
     * stops (it is the result a cancel or timeout leaves). Published per
     * step; the host coalesces. */
    if (publish_partial(ctx, done, steps) != APEX_OK) {
      rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the partial result");
      goto out;
    }

    /* A sub-task whose last step this was gets its own milestone, which the
     * host never coalesces away. */
    for (int j = 0; j < (int)n_sub; j++) {
      if (sub_first(j + 1, (int)n_sub, steps) != done) continue;
      char name[32];
      sub_name(j, name, sizeof name);
      snprintf(msg, sizeof msg, "sub-task %s done", name);
      if (report(ctx, done, steps, (int)n_sub, "milestone_reached", msg) != APEX_OK) {
        rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building progress");
        goto out;
      }
    }
    snprintf(msg, sizeof msg, "step %lld/%lld", (long long)done, (long long)steps);
    if (report(ctx, done, steps, (int)n_sub, done == steps ? "completed" : "running", msg) !=
        APEX_OK) {
      rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building progress");
      goto out;
    }

    /* Then the checkpoint (a durable store saves the progress just
     * reported with it, so the two agree); once it returned the step is
     * done for good, and only then does the step log say so. */
    int cr = save_step(ctx, done);
    if (cr != APEX_OK && cr != APEX_E_INVALID) {
      rc = apex_ctx_fail(ctx, cr, "cannot checkpoint step %lld: %s", (long long)done,
                         cr == APEX_E_NOMEM ? "out of memory" : "the store failed to write it");
      goto out;
    }
    if (cr == APEX_OK) step_log_write(log_fd, id, "done", done, attempt);

    /* After this attempt's first step (not the task's: a retry resumes past
     * step 1 and must still be able to fail on purpose). */
    if (i == first && attempt <= (uint64_t)fail_attempts) {
      rc = apex_ctx_fail(ctx, APEX_E_TRANSIENT, "attempt %u of the first %lld fails on purpose",
                         (unsigned)attempt, (long long)fail_attempts);
      goto out;
    }
  }

  /* "resumed_at" only for a resumed task: a run from scratch keeps the
   * result it always had. */
  json_t *result = json_pack("{s:I, s:I}", "steps", (json_int_t)steps, "attempt",
                             (json_int_t)attempt);
  if (result && first > 0 &&
      json_object_set_new(result, "resumed_at", json_integer((json_int_t)first)) != 0) {
    json_decref(result);
    result = NULL;
  }
  if (!result) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result");
    goto out;
  }
  apex_ctx_set_result(ctx, result);
  step_log_write(log_fd, id, "end", steps, attempt);
out:
  if (log_fd >= 0) close(log_fd);
  return rc;
}

/* --------------------------------------------------------- deferred_task */

static void *deferred_main(void *arg) {
  ea_thread_t *t = arg;
  apex_ctx_t *ctx = t->ctx;
  int64_t delay_ms = param_int(ctx, "delay_ms", 100);

  if (apex_ctx_sleep_ms(ctx, (uint64_t)delay_ms) == APEX_E_CANCELLED) {
    const char *why = apex_ctx_cancel_reason(ctx);
    apex_ctx_complete(ctx, apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled (%s) while waiting",
                                         why ? why : "unknown"));
  } else {
    json_t *result = json_pack("{s:I}", "delayed_ms", (json_int_t)delay_ms);
    if (!result) {
      apex_ctx_complete(ctx, apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result"));
    } else {
      apex_ctx_set_result(ctx, result);
      apex_ctx_complete(ctx, APEX_OK);
    }
  }
  /* ctx is gone now; only our own node is touched from here on. */
  pthread_mutex_lock(&t->state->mu);
  t->done = 1;
  pthread_mutex_unlock(&t->state->mu);
  return NULL;
}

static int deferred_task(apex_ctx_t *ctx) {
  ea_state_t *s = apex_ctx_plugin_state(ctx);
  if (!s) return apex_ctx_fail(ctx, APEX_E_EXECUTION, "example_async: plugin state missing");
  ea_thread_t *t = calloc(1, sizeof *t);
  if (!t) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory starting the deferred thread");
  t->ctx = ctx;
  t->state = s;

  pthread_mutex_lock(&s->mu);
  ea_reap_locked(s);
  int rc = pthread_create(&t->tid, NULL, deferred_main, t);
  if (rc != 0) {
    pthread_mutex_unlock(&s->mu);
    free(t);
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot start the deferred thread: %s",
                         strerror(rc));
  }
  t->next = s->threads;
  s->threads = t;
  pthread_mutex_unlock(&s->mu);
  /* The thread may already have completed the ctx: do not touch it again. */
  return APEX_PENDING;
}

/* ---------------------------------------------------------------- fan_out */

/* One fan_out task's count of its children, freed by the last child's end
 * callback (which completes the task). */
typedef struct ea_fan {
  int n;
  atomic_int ended, failed;
} ea_fan_t;

static void fan_child_end(apex_ctx_t *ctx, apex_child_t *child, void *user) {
  ea_fan_t *f = user;
  int n = f->n; /* read before the count: the last end frees f */
  int rc = apex_ctx_child_outcome(ctx, child, NULL, NULL, NULL);
  if (rc != APEX_OK) atomic_fetch_add(&f->failed, 1);
  if (atomic_fetch_add(&f->ended, 1) + 1 != n) return;
  int failed = atomic_load(&f->failed);
  free(f);
  if (apex_ctx_is_cancelled(ctx)) {
    apex_ctx_complete(ctx, apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled (%s)",
                                         apex_ctx_cancel_reason(ctx)));
    return;
  }
  json_t *result = json_pack("{s:i, s:i, s:i}", "children", n, "succeeded", n - failed, "failed",
                             failed);
  if (!result) {
    apex_ctx_complete(ctx, apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building the result"));
    return;
  }
  apex_ctx_set_result(ctx, result);
  apex_ctx_complete(ctx, APEX_OK);
}

static void fan_cancelled(apex_ctx_t *ctx, void *user) {
  (void)ctx;
  (void)user; /* the children are cancelled with us; their ends complete us */
}

/* Deferred: spawns `children` long_task children (weights 1, 2, 3 in turn;
 * every fail_every-th fails after its first step) and completes from the
 * last one's end callback, holding no worker meanwhile. A child's failure
 * is counted, not passed on: the task succeeds with the counts. */
static int fan_out(apex_ctx_t *ctx) {
  int64_t n = param_int(ctx, "children", 8);
  int64_t steps = param_int(ctx, "steps", 20);
  int64_t step_ms = param_int(ctx, "step_ms", 200);
  int64_t fail_every = param_int(ctx, "fail_every", 0);
  ea_fan_t *f = calloc(1, sizeof *f);
  apex_child_t **kids = calloc((size_t)n, sizeof *kids);
  if (!f || !kids) {
    free(f);
    free(kids);
    return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  }
  f->n = (int)n;
  (void)apex_ctx_on_cancel(ctx, fan_cancelled, NULL);
  for (int64_t i = 0; i < n; i++) {
    char label[32];
    snprintf(label, sizeof label, "child %lld", (long long)i + 1);
    apex_spawn_opts_t o = APEX_SPAWN_OPTS_INIT;
    o.weight = (double)(i % 3 + 1);
    o.label = label;
    int fails = fail_every > 0 && (i + 1) % fail_every == 0;
    json_t *p = json_pack("{s:I, s:I, s:I}", "steps", (json_int_t)steps, "step_ms",
                          (json_int_t)step_ms, "fail_attempts", (json_int_t)(fails ? 1 : 0));
    int rc = p ? apex_ctx_spawn(ctx, "example_async", "long_task", p, &o, &kids[i])
               : APEX_E_NOMEM;
    json_decref(p);
    if (rc != APEX_OK) {
      /* The ones spawned are cancelled; the task ends after them. */
      free(f);
      free(kids);
      apex_ctx_complete(ctx, apex_ctx_fail(ctx, rc, "spawning child %lld: %s", (long long)i + 1,
                                           rc == APEX_E_CANCELLED ? "cancelled" : "refused"));
      return APEX_PENDING;
    }
  }
  /* After every spawn, so f->n is final; a child that ended already runs
   * its callback here, and the last one completes the task. */
  for (int64_t i = 0; i < n; i++) (void)apex_ctx_on_child_end(ctx, kids[i], fan_child_end, f);
  free(kids);
  return APEX_PENDING;
}

/* ------------------------------------------------------------ descriptor */

static const apex_param_spec_t k_long_task_params[] = {
    {.name = "steps", .type = APEX_PARAM_INT, .default_json = "10", .has_min = 1, .min = 0,
     .has_max = 1, .max = 1000000, .description = "number of steps"},
    {.name = "step_ms", .type = APEX_PARAM_INT, .default_json = "100", .has_min = 1, .min = 0,
     .has_max = 1, .max = 3600000, .description = "milliseconds each step sleeps"},
    {.name = "fail_attempts", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1,
     .min = 0, .description = "attempts 1..N fail with a transient error after one step"},
    {.name = "ignore_cancel", .type = APEX_PARAM_BOOL, .default_json = "false",
     .description = "misbehave: never look at the cancellation token"},
    {.name = "sub_tasks", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1, .min = 0,
     .has_max = 1, .max = 64, .description = "split the steps into this many named sub-tasks"},
    {.name = "step_log", .type = APEX_PARAM_STRING, .has_min = 1, .min = 1,
     .description = "append a line per attempt start and completed step to this file "
                    "(for crash tests)"},
};

static const apex_param_spec_t k_deferred_params[] = {
    {.name = "delay_ms", .type = APEX_PARAM_INT, .default_json = "100", .has_min = 1, .min = 0,
     .description = "milliseconds before the task completes"},
};

static const apex_param_spec_t k_fan_out_params[] = {
    {.name = "children", .type = APEX_PARAM_INT, .default_json = "8", .has_min = 1, .min = 1,
     .has_max = 1, .max = 10000, .description = "long_task children to spawn"},
    {.name = "steps", .type = APEX_PARAM_INT, .default_json = "20", .has_min = 1, .min = 0,
     .has_max = 1, .max = 1000000, .description = "each child's steps"},
    {.name = "step_ms", .type = APEX_PARAM_INT, .default_json = "200", .has_min = 1, .min = 0,
     .has_max = 1, .max = 3600000, .description = "each child's milliseconds per step"},
    {.name = "fail_every", .type = APEX_PARAM_INT, .default_json = "0", .has_min = 1, .min = 0,
     .description = "every Nth child fails after its first step (0: none)"},
};

static const apex_action_desc_t k_actions[] = {
    {
        .name = "long_task",
        .description = "Sleeps through `steps` steps of `step_ms`, reporting progress after each; "
                       "cancellable, optionally failing its first attempts or ignoring cancel",
        .handler = long_task,
        .kind = APEX_ACTION_BLOCKING,
        .params = k_long_task_params,
        .n_params = sizeof k_long_task_params / sizeof k_long_task_params[0],
        .default_timeout_s = 0,
        .default_retry = {.max_attempts = 1, .initial_interval_s = 0.05,
                          .backoff_coefficient = 2.0},
#ifdef APEX_ACTION_F_RESUMABLE
        .flags = APEX_ACTION_F_RESUMABLE,
#endif
    },
    {
        .name = "deferred_task",
        .description = "Returns at once and completes from its own thread after `delay_ms`",
        .handler = deferred_task,
        .kind = APEX_ACTION_DEFERRED,
        .params = k_deferred_params,
        .n_params = sizeof k_deferred_params / sizeof k_deferred_params[0],
        .default_timeout_s = 0,
        .default_retry = {.max_attempts = 1, .initial_interval_s = 0.05,
                          .backoff_coefficient = 2.0},
    },
    {
        .name = "fan_out",
        .description = "Spawns `children` long_task child tasks (weights 1, 2, 3 in turn; every "
                       "`fail_every`-th fails) and ends when they all did, holding no worker",
        .handler = fan_out,
        .kind = APEX_ACTION_DEFERRED,
        .params = k_fan_out_params,
        .n_params = sizeof k_fan_out_params / sizeof k_fan_out_params[0],
    },
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "example_async",
    .version = "1.0.0",
    .description = "Example long-running actions: progress, cancellation, retries, deferral",
    .init = ea_init,
    .shutdown = ea_shutdown,
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
