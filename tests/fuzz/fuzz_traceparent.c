/* Fuzz target: arbitrary bytes as a traceparent header value (W3C trace
 * context), and as a log message rendered in every format. Must never
 * crash or read past the input; a value that parses must format back to
 * its first 55 characters with version 00 (what a receiver forwards), and
 * every JSON line must end in exactly one newline. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "apex/apex.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *s = malloc(size + 1);
  if (!s) return 0;
  memcpy(s, data, size);
  s[size] = '\0';
  apex_trace_context_t tc;
  if (apex_traceparent_parse(s, &tc) == APEX_OK) {
    char out[56];
    if (apex_traceparent_format(&tc, out, sizeof out) != APEX_OK) abort();
    /* the ids and flags as received; the version is the one we speak */
    if (memcmp(out + 2, s + 2, 53) != 0 || memcmp(out, "00", 2) != 0) abort();
  }
  apex_log_record_t r = {.struct_size = sizeof r, .level = 1, .message = s, .task_id = 1,
                         .plugin = "p", .action = "a", .trace_id = s};
  char line[300];
  for (int f = APEX_LOG_FORMAT_HUMAN; f <= APEX_LOG_FORMAT_JSON; f++) {
    size_t n = apex_log_record_render(&r, f, line, sizeof line);
    if (n == 0 || n >= sizeof line || line[n - 1] != '\n' || line[n] != '\0') abort();
    if (f == APEX_LOG_FORMAT_JSON && memchr(line, '\n', n - 1)) abort();
  }
  free(s);
  return 0;
}
