/* What tests/plugins/hostile_values.c and its test share: the faults its
 * short_progress action reports through apex_ctx_progress, in order, with
 * the reason the validators give for each. */
#ifndef APEX_TEST_HOSTILE_VALUES_H
#define APEX_TEST_HOSTILE_VALUES_H

#include <math.h>
#include <string.h>

#include "apex/plugin.h"

typedef struct hv_fault {
  double pct;
  int long_msg;       /* message: one byte longer than APEX_PROGRESS_MESSAGE_MAX */
  const char *msg;    /* else this message (NULL: none) */
  const char *reason; /* what apex_progress_update_validate says */
} hv_fault_t;

static const hv_fault_t hv_short_faults[] = {
    {101, 0, NULL, "percentage: 101 is outside [0, 100]"},
    {-0.5, 0, NULL, "percentage: -0.5 is outside [0, 100]"},
    {NAN, 0, NULL, "percentage: not finite"},
    {INFINITY, 0, NULL, "percentage: not finite"},
    {50, 1, NULL, "message: 1025 bytes, longer than 1024"},
    {50, 0, "ab\xc3(", "message: not valid UTF-8 at byte 2"},
};

#define HV_N_SHORT_FAULTS (sizeof hv_short_faults / sizeof hv_short_faults[0])

/* Returns: fault f's message; buf holds the long one. */
static inline const char *hv_fault_msg(const hv_fault_t *f,
                                       char buf[APEX_PROGRESS_MESSAGE_MAX + 2]) {
  if (!f->long_msg) return f->msg;
  memset(buf, 'm', APEX_PROGRESS_MESSAGE_MAX + 1);
  buf[APEX_PROGRESS_MESSAGE_MAX + 1] = '\0';
  return buf;
}

#endif
