/* Internal: scrubbing text to valid UTF-8 (src/core/utf8.c). */
#ifndef APEX_CORE_UTF8_H
#define APEX_CORE_UTF8_H

/* Replaces each byte that does not start a valid UTF-8 sequence (and each
 * byte of a broken one) by '?', in place. s: NUL-terminated, not NULL. */
void apex__utf8_scrub(char *s);

#endif
