/* An event recorder shared by the integration tests: the event callback
 * copies what assertions need (JSON deep-copied: jansson's reference counts
 * are not safe to share across threads) under a mutex, and counts DONE
 * events so a test can await them. Include after harness.h. */
#ifndef APEX_TEST_RECORDER_H
#define APEX_TEST_RECORDER_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "apex/apex.h"

typedef struct rec_ev {
  apex_event_type_t type;
  uint64_t task_id, seq;
  uint32_t attempt;
  apex_task_state_t state;
  double pct;          /* PROGRESS; -1 otherwise */
  uint64_t pseq;       /* PROGRESS: the update's own seq */
  char status[32];     /* PROGRESS */
  char msg[64];        /* PROGRESS */
  json_t *sub_tasks;   /* PROGRESS: a copy */
  int err_code;        /* RETRY, DONE */
  json_t *result;      /* DONE: a copy, or NULL */
  double retry_delay;  /* RETRY */
  pthread_t thread;    /* that delivered it */
} rec_ev_t;

typedef struct rec {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  rec_ev_t *ev;
  size_t n, cap;
  size_t dones;
} rec_t;

static inline void rec_init(rec_t *r) {
  memset(r, 0, sizeof *r);
  assert_int_equal(pthread_mutex_init(&r->mu, NULL), 0);
  assert_int_equal(pthread_cond_init(&r->cv, NULL), 0);
}

static inline void rec_fini(rec_t *r) {
  for (size_t i = 0; i < r->n; i++) {
    json_decref(r->ev[i].result);
    json_decref(r->ev[i].sub_tasks);
  }
  free(r->ev);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
}

/* The event callback; user is the rec_t. Runs on whichever thread delivers. */
static inline void rec_on_event(const apex_event_t *ev, void *user) {
  rec_t *r = user;
  rec_ev_t e = {.type = ev->type, .task_id = ev->task_id, .seq = ev->seq,
                .attempt = ev->attempt, .state = ev->state, .thread = pthread_self(),
                .retry_delay = ev->retry_delay_s, .pct = -1};
  if (ev->progress) {
    e.pct = apex_progress_percentage(ev->progress);
    e.pseq = apex_progress_seq(ev->progress);
    snprintf(e.status, sizeof e.status, "%s", apex_progress_status(ev->progress));
    snprintf(e.msg, sizeof e.msg, "%s", apex_progress_message(ev->progress));
    e.sub_tasks = json_deep_copy(apex_progress_sub_tasks(ev->progress));
  }
  e.err_code = ev->error ? apex_error_code(ev->error) : 0;
  e.result = ev->result ? json_deep_copy(ev->result) : NULL;
  pthread_mutex_lock(&r->mu);
  if (r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 64;
    rec_ev_t *p = realloc(r->ev, cap * sizeof *p);
    if (!p) abort(); /* test code: out of memory is fatal */
    r->ev = p;
    r->cap = cap;
  }
  r->ev[r->n++] = e;
  if (ev->type == APEX_EVENT_DONE) r->dones++;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

/* Waits until the recorder saw at least n DONE events; asserts it did. */
static inline void rec_await_dones(rec_t *r, size_t n) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 10;
  pthread_mutex_lock(&r->mu);
  while (r->dones < n)
    if (pthread_cond_timedwait(&r->cv, &r->mu, &until) != 0) break;
  size_t got = r->dones;
  pthread_mutex_unlock(&r->mu);
  assert_true(got >= n);
}

/* Counts recorded events of task id (0: any) and type (0: any). */
static inline size_t rec_count(rec_t *r, uint64_t id, unsigned type) {
  size_t c = 0;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n; i++)
    if ((!id || r->ev[i].task_id == id) && (!type || r->ev[i].type == type)) c++;
  pthread_mutex_unlock(&r->mu);
  return c;
}

#endif
