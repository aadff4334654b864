/* Internal: the library's one UTF-8 decoder (src/core/utf8.c): checking
 * text a plugin or caller hands over, and scrubbing text Apex must render.
 * Pure functions, any thread. */
#ifndef APEX_CORE_UTF8_H
#define APEX_CORE_UTF8_H

#include <stddef.h>

/* The rule everywhere in Apex: UTF-8 as RFC 3629 defines it (no overlong
 * forms, surrogates or code points above U+10FFFF), and no NUL byte, since
 * C readers of the text (json_string_value, a log line) would cut it there.
 * Returns: len if s[0..len) follows the rule, else the offset of the first
 * byte of the first invalid or truncated sequence. s may be NULL only with
 * len 0. */
size_t apex__utf8_bad_at(const char *s, size_t len);

/* Returns: 1 if s[0..len) follows the rule above, else 0 (s NULL: 1 only
 * for len 0). */
int apex__utf8_valid(const char *s, size_t len);

/* Replaces each byte that does not start a valid sequence (and each byte of
 * a broken one) by '?', in place, so the text can go into JSON (jansson
 * refuses invalid UTF-8). s: NUL-terminated, not NULL. */
void apex__utf8_scrub(char *s);

#endif
