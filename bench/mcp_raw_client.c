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
 * session of 2026-12-02, helper hQ). */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

/* --serve (the header): answers until stdin ends. */
static int serve(void) {
  to_srv = STDOUT_FILENO; /* write_all's fd: our answers */
  from_srv = STDIN_FILENO;
  static char line[1 << 16];
  char id[128], ver[64], ans[1024];
  for (;;) {
    if (read_line(line, sizeof line) != 0) return 0; /* the client went away */
    if (!json_token(line, "\"id\"", id, sizeof id)) continue; /* a notification */
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
    int n = snprintf(ans, sizeof ans, "{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":%s}\n", id, result);
    if (n <= 0 || (size_t)n >= sizeof ans || write_all(ans, (size_t)n) != 0) return 1;
  }
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--serve") == 0) return serve();
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
