/* http_test_server: the loopback HTTP server the http plugin's tests (and
 * bench Whttp) run against, on libmicrohttpd (no HTTP parsing of our own).
 *
 * Usage: http_test_server [--tls CERT.pem KEY.pem]
 *   Listens on 127.0.0.1 at a port the kernel picks, prints that port and a
 *   newline on stdout (then nothing else there), and serves until its stdin
 *   reaches end of file or it gets SIGTERM/SIGINT: a test starts it with a
 *   pipe on stdin and reads the port, and the server also goes away when the
 *   test dies (its end of the pipe closes). With --tls it speaks HTTPS with
 *   that certificate and key (libmicrohttpd's GnuTLS), same routes.
 *
 * Routes (GET; every request but /count's that carries ?key=K is counted
 * under K):
 *   /bytes/N[?chunked=1]  N bytes of the pattern byte(i) = i % 251, with a
 *                         Content-Length, or chunked (no length) with
 *                         chunked=1. Served from a table, at memory speed
 *                         (200 MB and 1 GiB bodies included). With an
 *                         ETag "pN" (N the size), and ranges: "Range:
 *                         bytes=S-" gets 206 and bytes S.. (Content-Range),
 *                         unless an If-Range other than the ETag comes with
 *                         it (then 200 and the whole body); S >= N gets 416.
 *   /slow/N?chunk=C&interval_ms=T
 *                         N pattern bytes, C at a time, T ms apart (with a
 *                         Content-Length); ranges as /bytes.
 *   /reset/N?after=M      a Content-Length of N, M pattern bytes, then the
 *                         connection is reset (SO_LINGER 0: an RST).
 *   /status/CODE[?retry_after=S]
 *                         status CODE (e.g. 503, 429, 408, 404) with a short
 *                         body and, when given, Retry-After: S.
 *   /flaky/N?key=K&fail=F&code=C[&retry_after=S]
 *                         the first F requests counted under K get status C
 *                         (with Retry-After: S when given); later ones get N
 *                         pattern bytes.
 *   /redirect/R?to=PATH   302 to /redirect/R-1?to=PATH, and from
 *                         /redirect/1 to PATH: R redirects in all.
 *   /loop                 302 to itself, for ever.
 *   /text                 a small UTF-8 text body (with non-ASCII letters).
 *   /header/NAME          the value of the request's header NAME as the body
 *                         (404 without it).
 *   /count?key=K          "N SPAN BYTES": the number of requests counted under
 *                         K, the microseconds from the first of them to the
 *                         last (as the server's clock saw them arrive), and
 *                         the body bytes of /bytes and /slow handed to the
 *                         connections of those requests.
 *   anything else         404.
 *
 * Threads: libmicrohttpd's thread per connection (so a slow body sleeps on
 * its own thread); the counters are guarded by one mutex. Test code: on a
 * failure to start it prints why on stderr and exits 1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#define PATTERN_PERIOD 251u
/* A table of whole periods plus one block, so any block starting at any
 * phase is one memcpy. */
#define BLOCK (256u * 1024u)
static unsigned char g_pattern[BLOCK + PATTERN_PERIOD];

/* ---------------------------------------------------------------- counts */

#define MAX_KEYS 256
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
  char key[64];
  unsigned long n;
  int64_t first_us, last_us; /* CLOCK_MONOTONIC of the first and last hit */
  uint64_t bytes;             /* body bytes served under the key */
} g_counts[MAX_KEYS];

static int64_t mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Counts one request under key. Returns: the count after it (1 for the
 * first), 0 if the table is full; *slot (may be NULL) the key's slot, -1
 * then. */
static unsigned long count_hit(const char *key, int *slot) {
  unsigned long n = 0;
  int64_t now = mono_us();
  if (slot) *slot = -1;
  pthread_mutex_lock(&g_mu);
  for (int i = 0; i < MAX_KEYS; i++) {
    if (g_counts[i].key[0] == '\0') snprintf(g_counts[i].key, sizeof g_counts[i].key, "%s", key);
    if (strcmp(g_counts[i].key, key) == 0) {
      n = ++g_counts[i].n;
      if (n == 1) g_counts[i].first_us = now;
      g_counts[i].last_us = now;
      if (slot) *slot = i;
      break;
    }
  }
  pthread_mutex_unlock(&g_mu);
  return n;
}

static void count_bytes(int slot, uint64_t n) {
  if (slot < 0) return;
  pthread_mutex_lock(&g_mu);
  g_counts[slot].bytes += n;
  pthread_mutex_unlock(&g_mu);
}

/* The count under key, and the microseconds from its first hit to its
 * last in *span_us. */
static unsigned long count_of(const char *key, int64_t *span_us, uint64_t *bytes) {
  unsigned long n = 0;
  *span_us = 0;
  *bytes = 0;
  pthread_mutex_lock(&g_mu);
  for (int i = 0; i < MAX_KEYS && g_counts[i].key[0]; i++)
    if (strcmp(g_counts[i].key, key) == 0) {
      n = g_counts[i].n;
      *span_us = g_counts[i].last_us - g_counts[i].first_us;
      *bytes = g_counts[i].bytes;
    }
  pthread_mutex_unlock(&g_mu);
  return n;
}

/* ---------------------------------------------------------------- bodies */

typedef struct body {
  uint64_t start;        /* a range's first byte: the pattern's phase */
  int slot;              /* the request's key slot (bytes counted), -1 */
  uint64_t size;         /* bytes to send */
  uint64_t reset_after;  /* /reset: bytes before the RST; UINT64_MAX: none */
  uint64_t chunk;        /* /slow: bytes per write; 0: as much as asked */
  unsigned interval_ms;  /* /slow: pause before each chunk but the first */
  struct MHD_Connection *conn;
} body_t;

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static ssize_t body_reader(void *cls, uint64_t pos, char *buf, size_t max) {
  body_t *b = cls;
  if (pos >= b->reset_after) {
    /* An RST instead of a FIN: linger 0, then let MHD close the socket. */
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(b->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci) {
      struct linger lg = {.l_onoff = 1, .l_linger = 0};
      (void)setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    return MHD_CONTENT_READER_END_WITH_ERROR;
  }
  if (pos >= b->size) return MHD_CONTENT_READER_END_OF_STREAM;
  uint64_t left = b->size - pos;
  if (b->reset_after != UINT64_MAX && b->reset_after - pos < left) left = b->reset_after - pos;
  size_t n = max < BLOCK ? max : BLOCK;
  if (b->chunk && n > b->chunk) n = (size_t)b->chunk;
  if (n > left) n = (size_t)left;
  if (b->interval_ms && pos > 0) sleep_ms(b->interval_ms);
  memcpy(buf, g_pattern + (b->start + pos) % PATTERN_PERIOD, n);
  count_bytes(b->slot, n);
  return (ssize_t)n;
}

static void body_free(void *cls) { free(cls); }

/* -------------------------------------------------------------- requests */

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *text,
                                 const char *retry_after) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
  if (retry_after) MHD_add_response_header(r, "Retry-After", retry_after);
  enum MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result send_body(struct MHD_Connection *c, uint64_t size, int chunked,
                                 uint64_t reset_after, uint64_t chunk, unsigned interval_ms,
                                 int ranges, int slot) {
  /* Ranges (bytes=S- only: what a resuming client asks), unless If-Range
   * names another version than ours. */
  char etag[32];
  snprintf(etag, sizeof etag, "\"p%llu\"", (unsigned long long)size);
  uint64_t start = 0;
  int partial = 0;
  const char *range = ranges ? MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range") : NULL;
  const char *if_range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "If-Range");
  if (range && strncmp(range, "bytes=", 6) == 0 && (!if_range || strcmp(if_range, etag) == 0)) {
    char *end = NULL;
    unsigned long long s0 = strtoull(range + 6, &end, 10);
    if (end && *end == '-' && end[1] == '\0') {
      if (s0 >= size) return send_text(c, 416, "range not satisfiable\n", NULL);
      start = s0;
      partial = 1;
    }
  }
  body_t *b = calloc(1, sizeof *b);
  if (!b) return MHD_NO;
  b->start = start;
  b->slot = slot;
  size -= start;
  b->size = size;
  b->reset_after = reset_after;
  b->chunk = chunk;
  b->interval_ms = interval_ms;
  b->conn = c;
  struct MHD_Response *r = MHD_create_response_from_callback(
      chunked ? MHD_SIZE_UNKNOWN : size, BLOCK, body_reader, b, body_free);
  if (!r) {
    free(b);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", "application/octet-stream");
  if (ranges) {
    MHD_add_response_header(r, "ETag", etag);
    MHD_add_response_header(r, "Accept-Ranges", "bytes");
  }
  if (partial) {
    char cr[96];
    snprintf(cr, sizeof cr, "bytes %llu-%llu/%llu", (unsigned long long)start,
             (unsigned long long)(start + size - 1), (unsigned long long)(start + size));
    MHD_add_response_header(r, "Content-Range", cr);
  }
  enum MHD_Result ret = MHD_queue_response(c, partial ? 206 : MHD_HTTP_OK, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result redirect(struct MHD_Connection *c, const char *location) {
  struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, "Location", location);
  enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_FOUND, r);
  MHD_destroy_response(r);
  return ret;
}

static uint64_t arg_u64(struct MHD_Connection *c, const char *name, uint64_t dflt) {
  const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
  return v ? strtoull(v, NULL, 10) : dflt;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **req) {
  (void)cls;
  (void)version;
  (void)upload_data;
  (void)upload_size;
  /* The first call per request only announces it (MHD's protocol). */
  if (*req == NULL) {
    static int k_seen;
    *req = &k_seen;
    return MHD_YES;
  }
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
    return send_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "GET only\n", NULL);
  const char *key = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "key");
  int slot = -1;
  unsigned long hits = key && strcmp(url, "/count") != 0 ? count_hit(key, &slot) : 0;
  const char *retry_after = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "retry_after");

  if (strncmp(url, "/bytes/", 7) == 0)
    return send_body(c, strtoull(url + 7, NULL, 10), arg_u64(c, "chunked", 0) != 0, UINT64_MAX,
                     0, 0, 1, slot);
  if (strncmp(url, "/slow/", 6) == 0)
    return send_body(c, strtoull(url + 6, NULL, 10), 0, UINT64_MAX, arg_u64(c, "chunk", 1024),
                     (unsigned)arg_u64(c, "interval_ms", 100), 1, slot);
  if (strncmp(url, "/reset/", 7) == 0)
    return send_body(c, strtoull(url + 7, NULL, 10), 0, arg_u64(c, "after", 0), 0, 0, 0, slot);
  if (strncmp(url, "/status/", 8) == 0) {
    unsigned code = (unsigned)strtoul(url + 8, NULL, 10);
    char text[64];
    snprintf(text, sizeof text, "status %u\n", code);
    return send_text(c, code >= 100 && code < 600 ? code : 500, text, retry_after);
  }
  if (strncmp(url, "/flaky/", 7) == 0) {
    if (hits <= arg_u64(c, "fail", 0)) {
      unsigned code = (unsigned)arg_u64(c, "code", 503);
      return send_text(c, code, "not yet\n", retry_after);
    }
    return send_body(c, strtoull(url + 7, NULL, 10), 0, UINT64_MAX, 0, 0, 0, slot);
  }
  if (strncmp(url, "/redirect/", 10) == 0) {
    unsigned long n = strtoul(url + 10, NULL, 10);
    const char *to = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "to");
    if (!to) to = "/text";
    char loc[512];
    if (n <= 1)
      snprintf(loc, sizeof loc, "%s", to);
    else
      snprintf(loc, sizeof loc, "/redirect/%lu?to=%s", n - 1, to);
    return redirect(c, loc);
  }
  if (strcmp(url, "/loop") == 0) return redirect(c, "/loop");
  if (strcmp(url, "/text") == 0)
    return send_text(c, MHD_HTTP_OK, "h\xc3\xa9llo, w\xc3\xb6rld\n", NULL);
  if (strncmp(url, "/header/", 8) == 0) {
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, url + 8);
    return v ? send_text(c, MHD_HTTP_OK, v, NULL) : send_text(c, MHD_HTTP_NOT_FOUND, "", NULL);
  }
  if (strcmp(url, "/count") == 0) {
    char text[96];
    int64_t span = 0;
    uint64_t bytes = 0;
    unsigned long n = key ? count_of(key, &span, &bytes) : 0ul;
    snprintf(text, sizeof text, "%lu %lld %llu", n, (long long)span, (unsigned long long)bytes);
    return send_text(c, MHD_HTTP_OK, text, NULL);
  }
  return send_text(c, MHD_HTTP_NOT_FOUND, "not found\n", NULL);
}

/* ------------------------------------------------------------------- main */

static volatile sig_atomic_t g_stop;
static int g_wake[2] = {-1, -1};

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
  if (g_wake[1] >= 0) (void)!write(g_wake[1], "x", 1);
}

/* Reads a whole small file. Returns: a NUL-terminated copy (free it), or
 * NULL. */
static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&buf, &len);
  char chunk[4096];
  size_t n;
  while (mem && (n = fread(chunk, 1, sizeof chunk, f)) > 0) fwrite(chunk, 1, n, mem);
  fclose(f);
  if (!mem) return NULL;
  fclose(mem);
  return buf;
}

int main(int argc, char **argv) {
  char *cert = NULL, *key = NULL;
  if (argc == 4 && strcmp(argv[1], "--tls") == 0) {
    cert = slurp(argv[2]);
    key = slurp(argv[3]);
    if (!cert || !key) {
      fprintf(stderr, "http_test_server: cannot read %s or %s\n", argv[2], argv[3]);
      return 1;
    }
  } else if (argc != 1) {
    fprintf(stderr, "usage: http_test_server [--tls CERT.pem KEY.pem]\n");
    return 1;
  }
  for (size_t i = 0; i < sizeof g_pattern; i++) g_pattern[i] = (unsigned char)(i % PATTERN_PERIOD);
  signal(SIGPIPE, SIG_IGN);
  if (pipe(g_wake) != 0) return 1;
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  unsigned flags =
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG;
  struct MHD_Daemon *d =
      cert ? MHD_start_daemon(flags | MHD_USE_TLS, 0, NULL, NULL, on_request, NULL,
                              MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)120,
                              MHD_OPTION_HTTPS_MEM_CERT, cert, MHD_OPTION_HTTPS_MEM_KEY, key,
                              MHD_OPTION_END)
           : MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR,
                              (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_TIMEOUT,
                              (unsigned int)120, MHD_OPTION_END);
  if (!d) {
    fprintf(stderr, "http_test_server: cannot start the daemon\n");
    return 1;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  if (!info || info->port == 0) {
    fprintf(stderr, "http_test_server: no port\n");
    MHD_stop_daemon(d);
    return 1;
  }
  printf("%u\n", (unsigned)info->port);
  fflush(stdout);

  /* Serve until stdin closes or a signal says stop. */
  struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = g_wake[0], .events = POLLIN}};
  while (!g_stop) {
    int n = poll(p, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || p[1].revents) break;
    if (p[0].revents) {
      char buf[256];
      ssize_t r = read(0, buf, sizeof buf);
      if (r <= 0) break;
    }
  }
  MHD_stop_daemon(d);
  free(cert);
  free(key);
  return 0;
}
