/* UTF-8: the one decoder the library has. Progress messages and names,
 * every string and key of a value a plugin hands over (core/value.c), and
 * error text that must render as JSON (core/error.c) all go through it, so
 * there is one answer to "is this text?" and one replacement for what is
 * not ('?', one per bad byte). The CLI, a host that sees only the public
 * headers, keeps its own copy of the same rules (cli/util.c).
 *
 * Pure functions on the caller's bytes: no state, any thread. Nothing can
 * fail. */
#include "core/utf8.h"

/* Returns: the length (1-4) of the valid sequence at s[0..left), or 0 if
 * none starts there (left >= 1). The allowed ranges of the second byte after
 * E0, ED, F0 and F4 are what exclude overlongs, surrogates and code points
 * above U+10FFFF (RFC 3629, section 4); C0, C1 and F5-FF never lead. */
static size_t seq_len(const unsigned char *s, size_t left) {
  unsigned c = s[0];
  if (c >= 0x01 && c <= 0x7F) return 1;
  size_t more;
  unsigned lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    more = 1;
  } else if (c == 0xE0) {
    more = 2, lo = 0xA0;
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    more = 2;
  } else if (c == 0xED) {
    more = 2, hi = 0x9F;
  } else if (c == 0xF0) {
    more = 3, lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    more = 3;
  } else if (c == 0xF4) {
    more = 3, hi = 0x8F;
  } else {
    return 0; /* NUL, a stray continuation byte, C0/C1 overlong leads, F5-FF */
  }
  if (left - 1 < more) return 0;
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t k = 2; k <= more; k++)
    if ((s[k] & 0xC0) != 0x80) return 0;
  return more + 1;
}

size_t apex__utf8_bad_at(const char *s, size_t len) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0;
  while (i < len) {
    /* ASCII first, without the call: progress messages are mostly ASCII
     * and are checked on every report. */
    if (u[i] >= 0x01 && u[i] <= 0x7F) {
      i++;
      continue;
    }
    size_t n = seq_len(u + i, len - i);
    if (n == 0) return i;
    i += n;
  }
  return len;
}

int apex__utf8_valid(const char *s, size_t len) {
  if (!s) return len == 0;
  return apex__utf8_bad_at(s, len) == len;
}

void apex__utf8_scrub(char *s) {
  unsigned char *u = (unsigned char *)s;
  size_t left = 0;
  while (u[left]) left++;
  while (*u) {
    size_t n = seq_len(u, left);
    if (n) {
      u += n;
      left -= n;
    } else {
      *u++ = '?';
      left--;
    }
  }
}
