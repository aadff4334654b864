/* The library's log lines while a live display is up (`apex run` and
 * `apex batch` in a terminal): the library's own stderr logging would tear
 * the block redrawn in place, so the command's log sink only queues a copy
 * of each line and wakes the main thread, which prints the queue above the
 * display (run.c, batch.c).
 *
 * Threads: cli_log_sink runs on any of Apex's threads; it holds g_log_mu for
 * a short critical section only and never blocks otherwise. cli_log_pop runs
 * on the main thread. A plugin logging in a loop costs memory only up to
 * LOG_QUEUE_MAX lines; past that lines are dropped and counted. Static, so
 * the queue outlives the manager (a handler past the exit drain may still
 * log). What can fail: memory for a copy (the line is counted as dropped). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define LOG_QUEUE_MAX 256

static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
  int level;
  char *msg;
} g_log_q[LOG_QUEUE_MAX];
static size_t g_log_head, g_log_n, g_log_dropped; /* under g_log_mu */

void cli_log_sink(int level, const char *msg, void *user) {
  atomic_int *wake_fd = user;
  char *copy = strdup(msg ? msg : "");
  pthread_mutex_lock(&g_log_mu);
  if (copy && g_log_n < LOG_QUEUE_MAX) {
    size_t at = (g_log_head + g_log_n) % LOG_QUEUE_MAX;
    g_log_q[at].level = level;
    g_log_q[at].msg = copy;
    g_log_n++;
    copy = NULL;
  } else {
    g_log_dropped++;
  }
  pthread_mutex_unlock(&g_log_mu);
  free(copy); /* not queued */
  int fd = wake_fd ? atomic_load(wake_fd) : -1;
  /* Non-blocking: a full pipe already holds a wake-up. */
  if (fd >= 0 && write(fd, "!", 1) < 0) {
    /* full or closed: either way nothing to do */
  }
}

int cli_log_pop(int *level, char **msg, size_t *dropped) {
  int got = 0;
  pthread_mutex_lock(&g_log_mu);
  if (g_log_n > 0) {
    *level = g_log_q[g_log_head].level;
    *msg = g_log_q[g_log_head].msg;
    g_log_q[g_log_head].msg = NULL;
    g_log_head = (g_log_head + 1) % LOG_QUEUE_MAX;
    g_log_n--;
    got = 1;
  } else {
    *dropped = g_log_dropped;
    g_log_dropped = 0;
  }
  pthread_mutex_unlock(&g_log_mu);
  return got;
}

const char *cli_log_level_name(int level) {
  static const char *const names[] = {"error", "warn", "info", "debug"};
  return level >= 0 && level <= 3 ? names[level] : "log";
}
