/* lazy_threads: a well-behaved deferred plugin with NO init hook that starts
 * its one worker thread lazily, on the first call of its action (the
 * guide's deferred pattern without an init). Its shutdown hook stops and
 * joins that thread, then records that it ran: it appends "joined N\n" (N:
 * the tasks the thread completed) to the file named by the environment
 * variable LAZY_THREADS_MARK, if set. A host that skipped shutdown for a
 * plugin without init would dlclose this code under the running thread,
 * and the mark would be missing.
 *
 *   defer   deferred; hands the ctx to the plugin thread, which completes it
 *           with APEX_OK and the result {"by": "plugin_thread"}
 *
 * Threads: the handler runs on a host worker and only queues the ctx (under
 * g.mu); the plugin thread completes ctxs, never holding g.mu while it
 * calls into the host. State is global (there is no init to make any),
 * guarded by g.mu; shutdown runs after every handler returned.
 *
 * What can fail: pthread_create (the task then fails with APEX_E_IO) and
 * memory (APEX_E_NOMEM). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "apex/plugin.h"

typedef struct item {
  apex_ctx_t *ctx;
  struct item *next;
} item_t;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  item_t *head, *tail;
  int started, stop;
  unsigned long completed;
  pthread_t thread;
} g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0, 0, 0};

static void *plugin_thread(void *arg) {
  (void)arg;
  pthread_mutex_lock(&g.mu);
  for (;;) {
    while (!g.head && !g.stop) pthread_cond_wait(&g.cv, &g.mu);
    item_t *it = g.head;
    if (!it) break; /* stop, with nothing left */
    g.head = it->next;
    if (!g.head) g.tail = NULL;
    pthread_mutex_unlock(&g.mu);
    apex_ctx_set_result(it->ctx, json_pack("{s:s}", "by", "plugin_thread"));
    apex_ctx_complete(it->ctx, APEX_OK);
    free(it);
    pthread_mutex_lock(&g.mu);
    g.completed++;
  }
  pthread_mutex_unlock(&g.mu);
  return NULL;
}

static int defer(apex_ctx_t *ctx) {
  item_t *it = malloc(sizeof *it);
  if (!it) return apex_ctx_fail(ctx, APEX_E_NOMEM, "lazy_threads: out of memory");
  it->ctx = ctx;
  it->next = NULL;
  pthread_mutex_lock(&g.mu);
  if (!g.started) {
    int e = pthread_create(&g.thread, NULL, plugin_thread, NULL);
    if (e) {
      pthread_mutex_unlock(&g.mu);
      free(it);
      return apex_ctx_fail(ctx, APEX_E_IO, "lazy_threads: pthread_create: %d", e);
    }
    g.started = 1;
  }
  if (g.tail)
    g.tail->next = it;
  else
    g.head = it;
  g.tail = it;
  pthread_cond_signal(&g.cv);
  pthread_mutex_unlock(&g.mu);
  return APEX_PENDING; /* the ctx is the plugin thread's now */
}

static void lt_shutdown(void *state) {
  (void)state; /* no init: always NULL */
  pthread_mutex_lock(&g.mu);
  int started = g.started;
  g.stop = 1;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
  if (started) pthread_join(g.thread, NULL);
  const char *mark = getenv("LAZY_THREADS_MARK");
  if (!mark) return;
  FILE *f = fopen(mark, "a");
  if (!f) return;
  fprintf(f, "joined %lu\n", g.completed);
  fclose(f);
}

static const apex_action_desc_t k_actions[] = {
    {.name = "defer",
     .description = "completes from a thread the plugin starts on its first call",
     .handler = defer,
     .kind = APEX_ACTION_DEFERRED},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "lazy_threads",
    .version = "1.0.0",
    .description = "no init; a lazily started thread joined in shutdown",
    .init = NULL,
    .shutdown = lt_shutdown,
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
