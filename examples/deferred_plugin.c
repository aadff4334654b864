/* deferred: the deferred-action example of the plugin developer guide,
 * beside the blocking one (hello_plugin.c). One action:
 *
 *   countdown  params {"steps": int = 5 in [1, 100000],
 *                      "step_ms": int = 20 in [1, 3600000]};
 *              counts `steps` steps, step_ms apart, reporting progress after
 *              each; result {"steps": N}.
 *
 * Why deferred: a countdown mostly waits, and a waiting blocking handler
 * would hold one of the host's few workers. Here the handler only hands its
 * ctx to the plugin's own thread and returns APEX_PENDING at once; that one
 * thread serves every countdown in flight, however many, and ends each with
 * apex_ctx_complete.
 *
 * The plugin thread (loop_main), started by init and joined by shutdown,
 * polls a wake-up pipe and the cancel fd of every countdown it serves
 * (apex_ctx_cancel_fd: readable once the task's token fires), with the time
 * to the next due step as the timeout. A due step reports progress; the
 * last one sets the result and completes with APEX_OK. A readable cancel fd
 * (a user cancel, a timeout, the host shutting down) completes that
 * countdown at once with APEX_E_CANCELLED and the reason, so cancellation is
 * prompt however long step_ms is.
 *
 * Lifetime: a ctx stays valid until apex_ctx_complete returns, and is never
 * touched after. The host calls shutdown only once every countdown has been
 * completed (destroying the manager cancels them with reason "shutdown" and
 * this thread completes them at once), so the thread has nothing left to
 * serve when shutdown stops and joins it, before the host unloads this
 * file: no plugin code runs after that.
 *
 * Threads and locks: handlers run on host workers and only queue a
 * countdown under s->mu; everything else belongs to the plugin thread. No
 * apex_ctx_* call is made under s->mu.
 *
 * What can fail: init (no memory, no pipe, no thread: the load fails with
 * the reason); a countdown past MAX_IN_FLIGHT fails at once with
 * APEX_E_TRANSIENT (a retry may find room); out of memory fails a task with
 * APEX_E_NOMEM. Nothing here aborts or prints: the host owns the process.
 *
 * Build (outside this tree): cc -shared -fPIC -pthread -o deferred.so \
 *   deferred_plugin.c $(pkg-config --cflags apex) -ljansson */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <apex/plugin.h>

/* Countdowns one plugin thread serves at once: the size of its poll set. */
#define MAX_IN_FLIGHT 1024

/* One countdown in flight. */
typedef struct countdown {
  apex_ctx_t *ctx;    /* valid until apex_ctx_complete */
  int cancel_fd;      /* apex_ctx_cancel_fd, or -1 if it could not be made */
  int64_t steps, step_ms, done;
  int64_t next_ns;    /* CLOCK_MONOTONIC time of the next step */
  struct countdown *next;
} countdown_t;

typedef struct plugin_state {
  pthread_mutex_t mu;
  countdown_t *incoming; /* under mu: queued by handlers, taken by the thread */
  size_t in_flight;      /* under mu: queued or served, not yet completed */
  int stop;              /* under mu: set by shutdown */
  int wake[2];           /* a pipe: a byte wakes the thread's poll */
  pthread_t thread;
  struct pollfd pfd[MAX_IN_FLIGHT + 1]; /* the thread's own */
} plugin_state_t;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void wake(plugin_state_t *s) {
  /* Non-blocking: a full pipe already holds a wake-up. */
  if (write(s->wake[1], "!", 1) < 0) {
  }
}

/* Ends a countdown: the ctx is invalid once apex_ctx_complete returns. */
static void finish(plugin_state_t *s, countdown_t *c, int status) {
  apex_ctx_complete(c->ctx, status);
  free(c);
  pthread_mutex_lock(&s->mu);
  s->in_flight--;
  pthread_mutex_unlock(&s->mu);
}

/* Advances c to now. Returns: 1 if c was completed (and freed), else 0. */
static int serve(plugin_state_t *s, countdown_t *c, int64_t now) {
  /* The fd wakes us; the flag decides (one atomic load, also right when
   * the fd could not be made). */
  if (apex_ctx_is_cancelled(c->ctx)) {
    const char *why = apex_ctx_cancel_reason(c->ctx);
    apex_ctx_fail(c->ctx, APEX_E_CANCELLED, "countdown cancelled (%s) after %lld of %lld steps",
                  why ? why : "?", (long long)c->done, (long long)c->steps);
    finish(s, c, APEX_E_CANCELLED);
    return 1;
  }
  while (c->done < c->steps && now >= c->next_ns) {
    c->done++;
    c->next_ns += c->step_ms * 1000000;
    char msg[64];
    snprintf(msg, sizeof msg, "step %lld of %lld", (long long)c->done, (long long)c->steps);
    /* A rejected update (never the case here) is not this task's failure. */
    (void)apex_ctx_progress(c->ctx, 100.0 * (double)c->done / (double)c->steps, msg);
  }
  if (c->done < c->steps) return 0;
  json_t *result = json_pack("{s:I}", "steps", (json_int_t)c->steps);
  if (!result) {
    apex_ctx_fail(c->ctx, APEX_E_NOMEM, "out of memory building the result");
    finish(s, c, APEX_E_NOMEM);
    return 1;
  }
  apex_ctx_set_result(c->ctx, result); /* the ctx owns it now */
  finish(s, c, APEX_OK);
  return 1;
}

static void *loop_main(void *arg) {
  plugin_state_t *s = arg;
  countdown_t *serving = NULL;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    countdown_t *got = s->incoming;
    s->incoming = NULL;
    int stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    while (got) {
      countdown_t *c = got;
      got = c->next;
      int fd = apex_ctx_cancel_fd(c->ctx);
      c->cancel_fd = fd >= 0 ? fd : -1;
      c->next_ns = now_ns() + c->step_ms * 1000000;
      c->next = serving;
      serving = c;
    }
    /* shutdown comes only after every countdown was completed; should one
     * be left all the same, its ctx is not ours to touch any more. */
    if (stop) {
      while (serving) {
        countdown_t *c = serving;
        serving = c->next;
        free(c);
      }
      return NULL;
    }

    /* Serve what is due or cancelled; collect the poll set and timeout. */
    int64_t now = now_ns(), next = -1;
    nfds_t n = 1;
    s->pfd[0] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
    for (countdown_t **pp = &serving; *pp;) {
      countdown_t *c = *pp;
      countdown_t *after = c->next;
      if (serve(s, c, now)) {
        *pp = after;
        continue;
      }
      s->pfd[n++] = (struct pollfd){.fd = c->cancel_fd, .events = POLLIN};
      if (next < 0 || c->next_ns < next) next = c->next_ns;
      pp = &c->next;
    }
    int timeout_ms = next < 0 ? -1 : (int)((next - now + 999999) / 1000000);
    if (poll(s->pfd, n, timeout_ms) < 0 && errno != EINTR) {
      /* Cannot wait: serve again after a short pause rather than spin. */
      struct timespec pause = {0, 1000000};
      nanosleep(&pause, NULL);
    }
    char buf[64];
    while (read(s->wake[0], buf, sizeof buf) > 0) {
    }
  }
}

static int countdown(apex_ctx_t *ctx) {
  plugin_state_t *s = apex_ctx_plugin_state(ctx);
  /* Validated by the host against the spec below: present, typed, bounded. */
  json_t *params = apex_ctx_params(ctx);
  countdown_t *c = calloc(1, sizeof *c);
  if (!c) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  c->ctx = ctx;
  c->steps = json_integer_value(json_object_get(params, "steps"));
  c->step_ms = json_integer_value(json_object_get(params, "step_ms"));

  pthread_mutex_lock(&s->mu);
  int full = s->in_flight >= MAX_IN_FLIGHT;
  if (!full) {
    c->next = s->incoming;
    s->incoming = c;
    s->in_flight++;
  }
  pthread_mutex_unlock(&s->mu);
  if (full) {
    free(c);
    return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "%d countdowns already in flight",
                         MAX_IN_FLIGHT);
  }
  wake(s);
  /* The plugin thread may complete the ctx any moment now (even before we
   * return): not one more apex_ctx_* call here. */
  return APEX_PENDING;
}

static int init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  (void)api;
  plugin_state_t *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(why, why_len, "out of memory");
    return -1;
  }
  int rc = pthread_mutex_init(&s->mu, NULL);
  if (rc != 0) {
    snprintf(why, why_len, "pthread_mutex_init: %s", strerror(rc));
    free(s);
    return -1;
  }
  if (pipe(s->wake) != 0) {
    snprintf(why, why_len, "pipe: %s", strerror(errno));
    goto fail_mutex;
  }
  for (int i = 0; i < 2; i++) {
    int fl = fcntl(s->wake[i], F_GETFL);
    if (fl < 0 || fcntl(s->wake[i], F_SETFL, fl | O_NONBLOCK) != 0 ||
        fcntl(s->wake[i], F_SETFD, FD_CLOEXEC) != 0) {
      snprintf(why, why_len, "fcntl: %s", strerror(errno));
      goto fail_pipe;
    }
  }
  rc = pthread_create(&s->thread, NULL, loop_main, s);
  if (rc != 0) {
    snprintf(why, why_len, "cannot start the plugin thread: %s", strerror(rc));
    goto fail_pipe;
  }
  *state = s;
  return 0;
fail_pipe:
  close(s->wake[0]);
  close(s->wake[1]);
fail_mutex:
  pthread_mutex_destroy(&s->mu);
  free(s);
  return -1;
}

static void shutdown_hook(void *state) {
  plugin_state_t *s = state;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_mutex_unlock(&s->mu);
  wake(s);
  pthread_join(s->thread, NULL); /* no plugin code may run once we return */
  for (countdown_t *c = s->incoming, *next; c; c = next) {
    next = c->next;
    free(c);
  }
  close(s->wake[0]);
  close(s->wake[1]);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

static const apex_param_spec_t k_countdown_params[] = {
    {.name = "steps", .type = APEX_PARAM_INT, .default_json = "5", .has_min = 1, .min = 1,
     .has_max = 1, .max = 100000, .description = "how many steps"},
    {.name = "step_ms", .type = APEX_PARAM_INT, .default_json = "20", .has_min = 1, .min = 1,
     .has_max = 1, .max = 3600000, .description = "milliseconds between steps"},
};

static const apex_action_desc_t k_actions[] = {
    {
        .name = "countdown",
        .description = "Counts down `steps` steps on the plugin's own thread",
        .handler = countdown,
        .kind = APEX_ACTION_DEFERRED,
        .params = k_countdown_params,
        .n_params = sizeof k_countdown_params / sizeof k_countdown_params[0],
        .default_timeout_s = 600,
        .default_retry = {.max_attempts = 1},
    },
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "deferred",
    .version = "1.0.0",
    .description = "The deferred-action example of the developer guide",
    .init = init,              /* starts the plugin thread */
    .shutdown = shutdown_hook, /* stops and joins it */
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
