/* Making text from outside (plugin messages, names a caller passed) safe to
 * put in JSON: invalid UTF-8 bytes become '?', so an error object can always
 * be rendered (jansson refuses invalid UTF-8). Pure function, any thread. */
#include <string.h>

#include "core/progress_internal.h"
#include "core/utf8.h"

void apex__utf8_scrub(char *s) {
  size_t left = strlen(s);
  while (*s) {
    unsigned char c = (unsigned char)*s;
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n && n <= left && apex__utf8_valid(s, n)) {
      s += n;
      left -= n;
    } else {
      *s++ = '?';
      left--;
    }
  }
}
