/* W16's light driver (bench/README.md, W16): a raw newline-JSON MCP client
 * over stdio, so the server's own round trip shows. The SDK client of
 * bench_mcp.mjs costs more per call than either server; this one writes a
 * prebuilt request line, reads the answer line, and parses nothing beyond
 * finding the newline and checking the answer is not an error.
 *
 * Usage: mcp_raw_client PEER SIZE TOOL -- SERVER-COMMAND ARGS...
 * Starts the server with pipes on its stdin and stdout, initializes, warms
 * up with 200 calls, then makes SIZE tools/call of TOOL (no arguments) one
 * after another. Prints the protocol's figure lines (raw_stdio_p50,
 * raw_stdio_p99, raw_stdio_calls_per_s, raw_server_cpu_ns_per_call: the
 * server's user+system time over the run, from /proc, 10 ms ticks;
 * raw_server_main_cpu_ns_per_call: the part of it its main thread spent).
 * Exit 1 if the server fails or answers an error.
 *
 * mcp_raw_client --serve: the other end, a server that does no work at
 * all: it reads newline-JSON requests on stdin and answers each at once
 * with a canned result carrying the request's id (initialize with the
 * client's protocol version, tools/list with one tool `noop`, tools/call
 * with an empty text result, anything else with {}); notifications get
 * nothing. A client's round trip against it is the client's own cost plus
 * two pipe hops: the floor no server can go under (bench/analysis.md, W16,
 * session of 2026-12-02, helper hQ).
 *
 * mcp_raw_client --serve-http: the same over Streamable HTTP, for the HTTP
 * rows (bench_mcp.mjs, peer null): libmicrohttpd on one internal thread
 * (the library apex mcp --http uses, so the HTTP parsing costs the same),
 * 127.0.0.1 on a free port, announced on stderr as apex mcp does
 * ("listening on http://127.0.0.1:PORT"). A POST is answered, once its body
 * is read, with the same canned result as one JSON body (Content-Length, no
 * SSE), a notification with 202; initialize hands out the session id
 * "null"; GET (the client's standalone SSE stream) is 405, DELETE 200. It
 * checks no session and keeps no state: the SDK client's HTTP floor. Runs
 * until killed. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

static int to_srv = -1, from_srv = -1;
static char rbuf[1 << 16];
static size_t rlen;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int write_all(const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(to_srv, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads one line (the answer); copies at most cap-1 bytes of it to out. */
static int read_line(char *out, size_t cap) {
  for (;;) {
    char *nl = memchr(rbuf, '\n', rlen);
    if (nl) {
      size_t l = (size_t)(nl - rbuf);
      size_t c = l < cap - 1 ? l : cap - 1;
      memcpy(out, rbuf, c);
      out[c] = 0;
      memmove(rbuf, nl + 1, rlen - l - 1);
      rlen -= l + 1;
      return 0;
    }
    if (rlen == sizeof rbuf) return -1;
    ssize_t r = read(from_srv, rbuf + rlen, sizeof rbuf - rlen);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    rlen += (size_t)r;
  }
}

/* The user+system time of pid (tid 0) or of its thread tid, ns. */
static int64_t cpu_ns(pid_t pid, pid_t tid) {
  char path[64], buf[1024];
  if (tid) snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
  else snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  unsigned long long ut = 0, st = 0;
  /* fields after ") ": state(3) ... utime(14) stime(15) */
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return 0;
  return (int64_t)(ut + st) * (1000000000 / sysconf(_SC_CLK_TCK));
}

static int cmp64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* One request/answer; fails on an error answer. */
static int call(const char *req, size_t len, char *ans, size_t cap) {
  if (write_all(req, len) != 0 || read_line(ans, cap) != 0) return -1;
  if (strstr(ans, "\"error\"") || strstr(ans, "\"isError\":true")) {
    fprintf(stderr, "mcp_raw_client: error answer: %s\n", ans);
    return -1;
  }
  return 0;
}

/* Copies the JSON value after "key": in line (a number or a string, as
 * written) to out. Returns: its length, 0 if absent. */
static size_t json_token(const char *line, const char *key, char *out, size_t cap) {
  const char *p = strstr(line, key);
  if (!p) return 0;
  p += strlen(key);
  while (*p == ' ' || *p == ':') p++;
  const char *e = p;
  if (*e == '"') {
    for (e++; *e && *e != '"'; e++)
      if (*e == '\\' && e[1]) e++;
    if (*e) e++;
  } else {
    while (*e && *e != ',' && *e != '}' && *e != ' ') e++;
  }
  size_t n = (size_t)(e - p);
  if (n == 0 || n >= cap) return 0;
  memcpy(out, p, n);
  out[n] = 0;
  return n;
}

/* The canned answer to one request line (--serve, --serve-http), newline
 * ended, in ans. Returns: its length, 0 for a notification (no answer),
 * -1 if it does not fit. */
static int canned_answer(const char *line, char *ans, size_t cap) {
  char id[128], ver[64];
  if (!json_token(line, "\"id\"", id, sizeof id)) return 0; /* a notification */
  const char *result = "{}";
  char init[256];
  if (strstr(line, "\"method\":\"initialize\"")) {
    if (!json_token(line, "\"protocolVersion\"", ver, sizeof ver)) strcpy(ver, "\"2025-06-18\"");
    snprintf(init, sizeof init,
             "{\"protocolVersion\":%s,\"capabilities\":{\"tools\":{}},"
             "\"serverInfo\":{\"name\":\"null\",\"version\":\"1\"}}",
             ver);
    result = init;
  } else if (strstr(line, "\"method\":\"tools/list\"")) {
    result = "{\"tools\":[{\"name\":\"noop\",\"inputSchema\":{\"type\":\"object\"}}]}";
  } else if (strstr(line, "\"method\":\"tools/call\"")) {
    result = "{\"content\":[{\"type\":\"text\",\"text\":\"{}\"}],\"structuredContent\":{}}";
  }
  int n = snprintf(ans, cap, "{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":%s}\n", id, result);
  return n <= 0 || (size_t)n >= cap ? -1 : n;
}

/* --serve (the header): answers until stdin ends. */
static int serve(void) {
  to_srv = STDOUT_FILENO; /* write_all's fd: our answers */
  from_srv = STDIN_FILENO;
  static char line[1 << 16];
  char ans[1024];
  for (;;) {
    if (read_line(line, sizeof line) != 0) return 0; /* the client went away */
    int n = canned_answer(line, ans, sizeof ans);
    if (n < 0 || (n > 0 && write_all(ans, (size_t)n) != 0)) return 1;
  }
}

/* --serve-http: a request's body as it arrives (libmicrohttpd's per-request
 * pointer). */
typedef struct {
  size_t len;
  char buf[8192];
} http_body_t;

static enum MHD_Result http_reply(struct MHD_Connection *c, unsigned status, const char *body,
                                  size_t len, const char *sid) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  if (len) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  if (sid) MHD_add_response_header(r, "Mcp-Session-Id", sid);
  enum MHD_Result rc = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return rc;
}

static enum MHD_Result http_request(void *cls, struct MHD_Connection *c, const char *url,
                                    const char *method, const char *version,
                                    const char *upload, size_t *upload_size, void **req) {
  (void)cls, (void)url, (void)version;
  if (strcmp(method, "POST") != 0) {
    if (strcmp(method, "DELETE") == 0) return http_reply(c, MHD_HTTP_OK, "", 0, NULL);
    return http_reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "", 0, NULL);
  }
  http_body_t *b = *req;
  if (!b) { /* the headers: the body comes in the next calls */
    b = calloc(1, sizeof *b);
    if (!b) return MHD_NO;
    *req = b;
    return MHD_YES;
  }
  if (*upload_size) {
    size_t n = *upload_size < sizeof b->buf - 1 - b->len ? *upload_size : sizeof b->buf - 1 - b->len;
    memcpy(b->buf + b->len, upload, n);
    b->len += n;
    *upload_size = 0;
    return MHD_YES;
  }
  b->buf[b->len] = 0;
  char ans[1024];
  int n = canned_answer(b->buf, ans, sizeof ans);
  if (n < 0) return MHD_NO;
  if (n == 0) return http_reply(c, MHD_HTTP_ACCEPTED, "", 0, NULL);
  int init = strstr(b->buf, "\"method\":\"initialize\"") != NULL;
  return http_reply(c, MHD_HTTP_OK, ans, (size_t)n - 1, init ? "null" : NULL);
}

static void http_done(void *cls, struct MHD_Connection *c, void **req,
                      enum MHD_RequestTerminationCode code) {
  (void)cls, (void)c, (void)code;
  free(*req);
  *req = NULL;
}

/* --serve-http (the header): serves until killed. */
static int serve_http(void) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_TURBO, 0, NULL, NULL, http_request,
      NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED, http_done,
      NULL, MHD_OPTION_CONNECTION_LIMIT, 1000u, MHD_OPTION_END);
  if (!d) {
    fprintf(stderr, "mcp_raw_client: cannot start the HTTP server\n");
    return 1;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  if (!info) return 1;
  fprintf(stderr, "listening on http://127.0.0.1:%u/mcp\n", (unsigned)info->port);
  for (;;) pause();
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--serve") == 0) return serve();
  if (argc == 2 && strcmp(argv[1], "--serve-http") == 0) return serve_http();
  if (argc < 6 || strcmp(argv[4], "--") != 0) {
    fprintf(stderr, "usage: mcp_raw_client PEER SIZE TOOL -- SERVER ARGS...\n");
    return 2;
  }
  const char *peer = argv[1];
  long size = strtol(argv[2], NULL, 10);
  const char *tool = argv[3];
  if (size <= 0) return 2;
  signal(SIGPIPE, SIG_IGN);
  int in[2], out[2];
  if (pipe(in) != 0 || pipe(out) != 0) return 1;
  pid_t pid = fork();
  if (pid < 0) return 1;
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[0]);
    close(in[1]);
    close(out[0]);
    close(out[1]);
    execvp(argv[5], argv + 5);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  to_srv = in[1];
  from_srv = out[0];
  char ans[4096];
  static const char init[] =
      "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":"
      "\"2025-06-18\",\"capabilities\":{},\"clientInfo\":{\"name\":\"raw\",\"version\":\"1\"}}}\n"
      "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n";
  int rc = 1;
  int64_t *lat = malloc((size_t)size * sizeof *lat);
  if (!lat || write_all(init, sizeof init - 1) != 0 || read_line(ans, sizeof ans) != 0) goto out;
  char req[512];
  long id = 1;
  for (int i = 0; i < 200; i++, id++) {
    int n = snprintf(req, sizeof req,
                     "{\"jsonrpc\":\"2.0\",\"id\":%ld,\"method\":\"tools/call\",\"params\":"
                     "{\"name\":\"%s\",\"arguments\":{}}}\n",
                     id, tool);
    if (call(req, (size_t)n, ans, sizeof ans) != 0) goto out;
  }
  int64_t c0 = cpu_ns(pid, 0), m0 = cpu_ns(pid, pid), t0 = now_ns();
  for (long i = 0; i < size; i++, id++) {
    int n = snprintf(req, sizeof req,
                     "{\"jsonrpc\":\"2.0\",\"id\":%ld,\"method\":\"tools/call\",\"params\":"
                     "{\"name\":\"%s\",\"arguments\":{}}}\n",
                     id, tool);
    int64_t s = now_ns();
    if (call(req, (size_t)n, ans, sizeof ans) != 0) goto out;
    lat[i] = now_ns() - s;
  }
  int64_t wall = now_ns() - t0, cpu = cpu_ns(pid, 0) - c0, mcpu = cpu_ns(pid, pid) - m0;
  qsort(lat, (size_t)size, sizeof *lat, cmp64);
  const char *fmt = "peer=%s workload=W16 size=%ld figure=%s value=%" PRId64 " unit=%s\n";
  printf(fmt, peer, size, "raw_stdio_p50", lat[size / 2], "ns");
  printf(fmt, peer, size, "raw_stdio_p99", lat[(size * 99) / 100], "ns");
  printf(fmt, peer, size, "raw_stdio_calls_per_s", (int64_t)(size * 1e9 / (double)wall), "calls/s");
  printf(fmt, peer, size, "raw_server_cpu_ns_per_call", cpu / size, "ns");
  /* Its main thread's share (the rest: worker threads, Node's helpers). */
  printf(fmt, peer, size, "raw_server_main_cpu_ns_per_call", mcpu / size, "ns");
  rc = 0;
out:
  free(lat);
  close(to_srv); /* the server's stdin ends: it exits */
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  close(from_srv);
  return rc;
}
