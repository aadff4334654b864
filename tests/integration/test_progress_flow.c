/* Integration tests of progress from plugin to host through the public API:
 * coalescing of a flood down to the delivery rate without losing the final
 * update, contiguous progress sequence numbers, rejection (and counting) of
 * invalid updates, apex_task_progress, and milestones that are never
 * coalesced away.
 *
 * The flood runs once, in a group setup, and its tests inspect the recording
 * (it is the expensive part: a million reports). A recorder copies every
 * event under its own mutex; apex_manager_destroy delivers what is queued
 * before it returns, so after it the recording is complete.
 *
 * Threads: the test thread, and the runtime thread that runs the recorder's
 * callback (LOOP delivery). */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/recorder.h"

/* Sanitizers slow each report 5-20x; a smaller flood still floods. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define FLOOD_COUNT 200000
#else
#define FLOOD_COUNT 1000000
#endif

/* ----------------------------------------------------------------- helpers */


static apex_manager_t *make_manager(rec_t *r, double rate_hz) {
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  cfg.workers = 2;
  cfg.log = quiet_log;
  cfg.on_event = rec_on_event;
  cfg.event_user = r;
  cfg.progress_rate_hz = rate_hz;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  const char *files[] = {APEX_TEST_PLUGIN_DIR "/hostile.so",
                         APEX_PLUGIN_BUILD_DIR "/example_async.so"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    assert_int_equal(apex_manager_load(m, files[i], NULL), APEX_OK);
  return m;
}

/* ------------------------------------------------------------------ flood */

typedef struct flood {
  rec_t rec;
  apex_stats_t stats;
  json_t *result;
} flood_t;

static int flood_setup(void **st) {
  flood_t *f = calloc(1, sizeof *f);
  if (!f) return -1;
  rec_init(&f->rec);
  apex_manager_t *m = make_manager(&f->rec, 20);
  char params[64];
  snprintf(params, sizeof params, "{\"count\": %d}", FLOOD_COUNT);
  apex_task_t *t = submit_json(m, "hostile", "flood", params, NULL);
  if (apex_task_wait(t, 120000) != APEX_OK) return -1;
  f->result = apex_task_result(t);
  apex_task_release(t);
  f->stats = stats_of(m);
  if (apex_manager_destroy(m, 5000) != APEX_OK) return -1;
  *st = f;
  return 0;
}

static int flood_teardown(void **st) {
  flood_t *f = *st;
  json_decref(f->result);
  rec_fini(&f->rec);
  free(f);
  return 0;
}

static void test_flood_every_report_accepted(void **st) {
  flood_t *f = *st;
  assert_int_equal(json_integer_value(json_object_get(f->result, "rejected")), 0);
  assert_int_equal(f->stats.progress_reported, FLOOD_COUNT + 1);
  assert_int_equal(f->stats.progress_rejected, 0);
}

static void test_flood_is_coalesced_far_below_reported(void **st) {
  flood_t *f = *st;
  size_t delivered = rec_count(&f->rec, 0, APEX_EVENT_PROGRESS);
  print_message("flood: %llu reported, %zu delivered\n",
                (unsigned long long)f->stats.progress_reported, delivered);
  assert_true(delivered >= 1);
  assert_true(delivered * 1000 < f->stats.progress_reported);
}

static void test_flood_delivered_count_matches_stats(void **st) {
  flood_t *f = *st;
  /* The stats are read before destroy; nothing is delivered after the task
   * ended, so the count of events equals the counter. */
  assert_int_equal(rec_count(&f->rec, 0, APEX_EVENT_PROGRESS), f->stats.progress_delivered);
}

static void test_flood_progress_seq_is_contiguous(void **st) {
  flood_t *f = *st;
  uint64_t want = 1;
  for (size_t i = 0; i < f->rec.n; i++)
    if (f->rec.ev[i].type == APEX_EVENT_PROGRESS) assert_int_equal(f->rec.ev[i].pseq, want++);
  assert_true(want > 1);
}

static void test_flood_final_update_is_never_dropped(void **st) {
  flood_t *f = *st;
  rec_t *r = &f->rec;
  assert_true(r->n >= 2);
  assert_int_equal(r->ev[r->n - 1].type, APEX_EVENT_DONE);
  rec_ev_t *last = &r->ev[r->n - 2];
  assert_int_equal(last->type, APEX_EVENT_PROGRESS);
  assert_true(last->pct == 100.0);
  assert_string_equal(last->status, "completed");
  assert_string_equal(last->msg, "flood done");
}

/* ----------------------------------------------------------- bad progress */

typedef struct bad {
  rec_t rec;
  apex_stats_t stats;
  json_t *result;
  apex_progress_t *last;
} bad_t;

static int bad_setup(void **st) {
  bad_t *b = calloc(1, sizeof *b);
  if (!b) return -1;
  rec_init(&b->rec);
  apex_manager_t *m = make_manager(&b->rec, 20);
  apex_task_t *t = submit_json(m, "hostile", "bad_progress", NULL, NULL);
  if (apex_task_wait(t, 10000) != APEX_OK) return -1;
  b->result = apex_task_result(t);
  b->stats = stats_of(m);
  if (apex_manager_destroy(m, 5000) != APEX_OK) return -1;
  /* Read after destroy: every event is delivered by then. */
  b->last = apex_task_progress(t);
  apex_task_release(t);
  *st = b;
  return 0;
}

static int bad_teardown(void **st) {
  bad_t *b = *st;
  json_decref(b->result);
  apex_progress_unref(b->last);
  rec_fini(&b->rec);
  free(b);
  return 0;
}

/* hostile.bad_progress sends 13 invalid updates, then one valid one. */
#define N_BAD 13

static void test_every_invalid_update_returns_invalid(void **st) {
  bad_t *b = *st;
  json_t *codes = json_object_get(b->result, "codes");
  assert_int_equal(json_array_size(codes), N_BAD);
  for (size_t i = 0; i < N_BAD; i++) {
    json_int_t c = json_integer_value(json_array_get(codes, i));
    if (c != APEX_E_INVALID) print_error("bad update %zu returned %lld\n", i, (long long)c);
    assert_int_equal(c, APEX_E_INVALID);
  }
  assert_int_equal(json_integer_value(json_object_get(b->result, "valid")), APEX_OK);
}

static void test_invalid_updates_are_counted_as_rejected(void **st) {
  bad_t *b = *st;
  assert_int_equal(b->stats.progress_rejected, N_BAD);
  assert_int_equal(b->stats.progress_reported, 1);
}

static void test_invalid_updates_are_never_delivered(void **st) {
  bad_t *b = *st;
  rec_t *r = &b->rec;
  assert_int_equal(rec_count(r, 0, APEX_EVENT_PROGRESS), 1);
  for (size_t i = 0; i < r->n; i++) {
    if (r->ev[i].type != APEX_EVENT_PROGRESS) continue;
    assert_true(r->ev[i].pct == 50.0);
    assert_string_equal(r->ev[i].msg, "valid");
    assert_string_equal(r->ev[i].status, "running");
  }
}

static void test_task_progress_is_the_last_delivered(void **st) {
  bad_t *b = *st;
  assert_non_null(b->last);
  assert_int_equal(apex_progress_seq(b->last), 1);
  assert_true(apex_progress_percentage(b->last) == 50.0);
  assert_string_equal(apex_progress_message(b->last), "valid");
}

/* ------------------------------------------------------------- milestones */

static void test_milestones_are_never_coalesced_away(void **st) {
  (void)st;
  rec_t r;
  rec_init(&r);
  apex_manager_t *m = make_manager(&r, 20);
  apex_task_t *t = submit_json(m, "example_async", "long_task",
                               "{\"sub_tasks\": 4, \"steps\": 40, \"step_ms\": 1}", NULL);
  assert_int_equal(apex_task_wait(t, 10000), APEX_OK);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  const char *want[] = {"sub-task fetch done", "sub-task parse done", "sub-task transform done",
                        "sub-task validate done"};
  size_t k = 0;
  uint64_t seq = 1;
  for (size_t i = 0; i < r.n; i++) {
    if (r.ev[i].type != APEX_EVENT_PROGRESS) continue;
    assert_int_equal(r.ev[i].pseq, seq++);
    if (strcmp(r.ev[i].status, "milestone_reached") != 0) continue;
    assert_true(k < 4);
    assert_string_equal(r.ev[i].msg, want[k]);
    k++;
  }
  assert_int_equal(k, 4);
  /* The last update (step 40, "completed") is delivered too. */
  apex_progress_t *p = apex_task_progress(t);
  assert_non_null(p);
  assert_true(apex_progress_percentage(p) == 100.0);
  assert_string_equal(apex_progress_status(p), "completed");
  assert_int_equal(apex_progress_seq(p), seq - 1);
  apex_progress_unref(p);
  apex_task_release(t);
  rec_fini(&r);
}

int main(void) {
  const struct CMUnitTest flood_tests[] = {
      cmocka_unit_test(test_flood_every_report_accepted),
      cmocka_unit_test(test_flood_is_coalesced_far_below_reported),
      cmocka_unit_test(test_flood_delivered_count_matches_stats),
      cmocka_unit_test(test_flood_progress_seq_is_contiguous),
      cmocka_unit_test(test_flood_final_update_is_never_dropped),
  };
  const struct CMUnitTest bad_tests[] = {
      cmocka_unit_test(test_every_invalid_update_returns_invalid),
      cmocka_unit_test(test_invalid_updates_are_counted_as_rejected),
      cmocka_unit_test(test_invalid_updates_are_never_delivered),
      cmocka_unit_test(test_task_progress_is_the_last_delivered),
  };
  const struct CMUnitTest other_tests[] = {
      cmocka_unit_test(test_milestones_are_never_coalesced_away),
  };
  int failed = cmocka_run_group_tests_name("flood", flood_tests, flood_setup, flood_teardown);
  failed += cmocka_run_group_tests_name("bad_progress", bad_tests, bad_setup, bad_teardown);
  failed += cmocka_run_group_tests_name("milestones", other_tests, NULL, NULL);
  return failed;
}
