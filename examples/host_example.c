/* host_example: the smallest complete Apex host, the worked example of the
 * README. It runs hello.greet (hello_plugin.c, beside this file) the way a
 * program with its own event loop would: the manager queues
 * events (APEX_DELIVER_DISPATCH), its fd becomes readable while some wait,
 * and this program's loop polls that fd and calls apex_manager_dispatch(),
 * so every callback runs here, on the main thread, and needs no lock.
 *
 * Usage: host_example [PATH/TO/hello.so]   (default: the build tree's, or
 *        ./hello.so when built by the installed examples' Makefile)
 * Exit: 0 when the task succeeded with the expected result, 1 otherwise.
 *
 * What can fail: creating the manager, loading the plugin, submitting, poll,
 * and the task itself; each is printed with its message and exits 1. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apex/apex.h>

#ifndef HELLO_PLUGIN_PATH
#define HELLO_PLUGIN_PATH "hello.so"
#endif

/* What the callbacks learn; touched only on the main thread. */
typedef struct seen {
  int done;
  unsigned progress_events;
  double last_pct;
  apex_task_state_t state;
  json_t *result;      /* new reference, once succeeded */
  apex_error_t *error; /* new reference, once failed */
} seen_t;

static void on_event(const apex_event_t *ev, void *user) {
  seen_t *s = user;
  switch (ev->type) {
  case APEX_EVENT_ATTEMPT:
    printf("task %llu: attempt %u started\n", (unsigned long long)ev->task_id, ev->attempt);
    break;
  case APEX_EVENT_PROGRESS:
    s->progress_events++;
    s->last_pct = apex_progress_percentage(ev->progress);
    printf("task %llu: progress #%llu %5.1f%% [%s] %s\n", (unsigned long long)ev->task_id,
           (unsigned long long)apex_progress_seq(ev->progress), s->last_pct,
           apex_progress_status(ev->progress), apex_progress_message(ev->progress));
    break;
  case APEX_EVENT_RETRY:
    printf("task %llu: attempt %u failed (%s), retry in %.2f s\n",
           (unsigned long long)ev->task_id, ev->attempt, apex_error_message(ev->error),
           ev->retry_delay_s);
    break;
  case APEX_EVENT_DONE:
    s->done = 1;
    s->state = ev->state;
    /* Event pointers are borrowed for the callback only: keep references. */
    if (ev->result) s->result = json_incref((json_t *)ev->result);
    if (ev->error) s->error = apex_error_ref((apex_error_t *)ev->error);
    printf("task %llu: %s\n", (unsigned long long)ev->task_id, apex_task_state_name(ev->state));
    break;
  default: /* types a host did not ask for in event_mask never come */
    break;
  }
}

/* The host's own loop: wait for the manager's fd, then dispatch. A real
 * program would add its own fds to the same poll set. */
static int run_loop(apex_manager_t *m, seen_t *s) {
  struct pollfd pfd = {.fd = apex_manager_fd(m), .events = POLLIN};
  if (pfd.fd < 0) {
    fprintf(stderr, "host_example: apex_manager_fd: %s\n", apex_strerror(pfd.fd));
    return -1;
  }
  while (!s->done) {
    /* The task's 5 s deadline guarantees a DONE event; the poll timeout only
     * guards against a bug turning into a hang. */
    int n = poll(&pfd, 1, 10000);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      fprintf(stderr, "host_example: poll: %s\n", strerror(errno));
      return -1;
    }
    if (n == 0) {
      fprintf(stderr, "host_example: no event for 10 s\n");
      return -1;
    }
    if (apex_manager_dispatch(m) < 0) {
      fprintf(stderr, "host_example: apex_manager_dispatch failed\n");
      return -1;
    }
  }
  return 0;
}

/* Returns 1 if the outcome is the one hello.greet promises for "apex". */
static int check(const seen_t *s) {
  if (s->state != APEX_TASK_SUCCEEDED) {
    fprintf(stderr, "host_example: task %s: %s\n", apex_task_state_name(s->state),
            apex_error_message(s->error));
    return 0;
  }
  const char *greeting = json_string_value(json_object_get(s->result, "greeting"));
  json_int_t times = json_integer_value(json_object_get(s->result, "times"));
  if (!greeting || strcmp(greeting, "hello, apex") != 0 || times != 3) {
    fprintf(stderr, "host_example: unexpected result\n");
    return 0;
  }
  /* The final update is never coalesced away, however fast the plugin ran. */
  if (s->progress_events == 0 || s->last_pct != 100.0) {
    fprintf(stderr, "host_example: %u progress events, last at %.1f%%\n", s->progress_events,
            s->last_pct);
    return 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  const char *plugin_path = argc > 1 ? argv[1] : HELLO_PLUGIN_PATH;
  seen_t seen = {0};
  int ok = 0;

  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.delivery = APEX_DELIVER_DISPATCH;
  cfg.on_event = on_event;
  cfg.event_user = &seen;
  apex_manager_t *m = NULL;
  int rc = apex_manager_new(&cfg, &m);
  if (rc != APEX_OK) {
    fprintf(stderr, "host_example: apex_manager_new: %s\n", apex_strerror(rc));
    return 1;
  }

  apex_error_t *err = NULL;
  apex_task_t *task = NULL;
  json_t *params = NULL;
  if (apex_manager_load(m, plugin_path, &err) != APEX_OK) {
    fprintf(stderr, "host_example: %s\n", apex_error_message(err));
    goto out;
  }

  params = json_pack("{s:s}", "name", "apex");
  if (!params) {
    fprintf(stderr, "host_example: out of memory\n");
    goto out;
  }
  apex_submit_opts_t opts;
  apex_submit_opts_init(&opts);
  opts.timeout_s = 5.0; /* overall deadline, across retries */
  if (apex_manager_submit(m, "hello", "greet", params, &opts, &task, &err) != APEX_OK) {
    fprintf(stderr, "host_example: %s\n", apex_error_message(err));
    goto out;
  }

  if (run_loop(m, &seen) == 0 && check(&seen)) {
    char *text = json_dumps(seen.result, JSON_COMPACT);
    printf("result: %s\n", text ? text : "?");
    free(text);
    ok = 1;
  }

out:
  apex_task_release(task);
  json_decref(params);
  json_decref(seen.result);
  apex_error_unref(seen.error);
  apex_error_unref(err);
  /* Refuses new work, waits up to 1 s for running tasks, then cancels. */
  rc = apex_manager_destroy(m, 1000);
  if (rc != APEX_OK) {
    fprintf(stderr, "host_example: apex_manager_destroy: %s\n", apex_strerror(rc));
    ok = 0;
  }
  return ok ? 0 : 1;
}
