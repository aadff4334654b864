/* The command's metrics output: `--metrics FILE` writes the manager's
 * final metrics snapshot (include/apex/metrics.h) to FILE, and
 * `--metrics-listen ADDR:PORT` serves the live one at /metrics over HTTP
 * with libmicrohttpd (docs/observability.md, "Metrics").
 *
 * Threads: the file is written on the main thread. The HTTP server runs
 * libmicrohttpd's own polling thread, which takes snapshots
 * (apex_metrics_snapshot is safe from any thread) and touches nothing
 * else of the command; the main thread stops it (joining that thread)
 * before the manager is destroyed.
 *
 * Failure: a file that cannot be written, or an address that cannot be
 * bound, is reported by name; the caller decides the exit code. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "cli.h"

int cli_metrics_format_parse(const char *name) {
  if (strcmp(name, "prometheus") == 0) return CLI_METRICS_PROMETHEUS;
  if (strcmp(name, "openmetrics") == 0) return CLI_METRICS_OPENMETRICS;
  if (strcmp(name, "json") == 0) return CLI_METRICS_JSON;
  return -1;
}

/* The library's format for a CLI choice; CLI_METRICS_AUTO by FILE's
 * extension: .json JSON, .om or .openmetrics OpenMetrics, else Prometheus
 * text. */
static apex_metrics_format_t format_of(int choice, const char *file) {
  if (choice == CLI_METRICS_AUTO && file) {
    const char *dot = strrchr(file, '.');
    if (dot && strcmp(dot, ".json") == 0) choice = CLI_METRICS_JSON;
    else if (dot && (strcmp(dot, ".om") == 0 || strcmp(dot, ".openmetrics") == 0))
      choice = CLI_METRICS_OPENMETRICS;
  }
  return choice == CLI_METRICS_JSON          ? APEX_METRICS_JSON
         : choice == CLI_METRICS_OPENMETRICS ? APEX_METRICS_OPENMETRICS
                                             : APEX_METRICS_PROMETHEUS;
}

static int render(apex_manager_t *m, apex_metrics_format_t f, char **text, size_t *len) {
  apex_metrics_snapshot_t *s = NULL;
  int rc = apex_metrics_snapshot(m, &s);
  if (rc == APEX_OK) rc = apex_metrics_render(s, f, text, len);
  apex_metrics_snapshot_free(s);
  return rc;
}

int cli_metrics_write(apex_manager_t *m, const char *path, int format) {
  char *text = NULL;
  size_t len = 0;
  int rc = render(m, format_of(format, path), &text, &len);
  if (rc != APEX_OK) {
    fprintf(stderr, "apex: --metrics %s: %s\n", path, apex_strerror(rc));
    return -1;
  }
  /* Written beside it and renamed: a reader never sees half a file. */
  size_t n = strlen(path) + 16;
  char *tmp = malloc(n);
  FILE *f = NULL;
  if (tmp) {
    snprintf(tmp, n, "%s.tmp%ld", path, (long)getpid());
    f = fopen(tmp, "w");
  }
  int ok = f && fwrite(text, 1, len, f) == len;
  if (f && fclose(f) != 0) ok = 0;
  if (ok && rename(tmp, path) != 0) ok = 0;
  if (!ok) {
    fprintf(stderr, "apex: --metrics %s: %s\n", path, tmp ? strerror(errno) : "out of memory");
    if (f) unlink(tmp);
  }
  free(tmp);
  apex_metrics_text_free(text);
  return ok ? 0 : -1;
}

/* ----------------------------------------------------------- HTTP server */

struct cli_metrics_server {
  struct MHD_Daemon *d;
  apex_manager_t *m;
  unsigned port;
  char url[96];
};

static void free_text(void *p) { apex_metrics_text_free(p); }

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             char *body, size_t len, int owned) {
  struct MHD_Response *r =
      owned ? MHD_create_response_from_buffer_with_free_callback(len, body, free_text)
            : MHD_create_response_from_buffer(len, body, MHD_RESPMEM_PERSISTENT);
  if (!r) {
    if (owned) apex_metrics_text_free(body);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  enum MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

/* GET /metrics: the snapshot now, as OpenMetrics when the scraper accepts
 * it (Prometheus asks for it first), else the 0.0.4 text; ?format=json,
 * openmetrics or prometheus chooses. Anything else: 404 or 405. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls) {
  (void)version;
  (void)upload_data;
  (void)upload_data_size;
  (void)req_cls;
  struct cli_metrics_server *s = cls;
  static char not_found[] = "not found: try /metrics\n";
  static char bad_method[] = "method not allowed\n";
  static char failed[] = "cannot take a snapshot\n";
  if (strcmp(url, "/metrics") != 0)
    return reply(c, MHD_HTTP_NOT_FOUND, "text/plain", not_found, strlen(not_found), 0);
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
    return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", bad_method, strlen(bad_method), 0);
  apex_metrics_format_t f = APEX_METRICS_PROMETHEUS;
  const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
  if (accept && strstr(accept, "application/openmetrics-text")) f = APEX_METRICS_OPENMETRICS;
  const char *q = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "format");
  if (q) f = format_of(cli_metrics_format_parse(q) < 0 ? CLI_METRICS_AUTO
                                                        : cli_metrics_format_parse(q), NULL);
  char *text = NULL;
  size_t len = 0;
  if (render(s->m, f, &text, &len) != APEX_OK)
    return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", failed, strlen(failed), 0);
  return reply(c, MHD_HTTP_OK, apex_metrics_content_type(f), text, len, 1);
}

/* Parses ADDR:PORT ([V6]:PORT; an empty ADDR is loopback) into sa.
 * Returns: 0, or -1 with why set. */
static int parse_addr(const char *spec, struct sockaddr_storage *sa, int *v6, char *why,
                      size_t n) {
  const char *colon = strrchr(spec, ':');
  if (!colon) {
    snprintf(why, n, "'%s' is not ADDR:PORT", spec);
    return -1;
  }
  char host[128];
  size_t hl = (size_t)(colon - spec);
  if (hl >= sizeof host) {
    snprintf(why, n, "address too long");
    return -1;
  }
  memcpy(host, spec, hl);
  host[hl] = '\0';
  char *end = NULL;
  errno = 0;
  long port = strtol(colon + 1, &end, 10);
  if (!colon[1] || *end || errno || port < 0 || port > 65535) {
    snprintf(why, n, "'%s': the port is not a number from 0 to 65535", spec);
    return -1;
  }
  memset(sa, 0, sizeof *sa);
  *v6 = 0;
  if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
    host[hl - 1] = '\0';
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)sa;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1) {
      snprintf(why, n, "'%s' is not an IPv6 address", host + 1);
      return -1;
    }
    *v6 = 1;
    return 0;
  }
  struct sockaddr_in *a = (struct sockaddr_in *)sa;
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)port);
  const char *h = !*host || strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
  if (inet_pton(AF_INET, h, &a->sin_addr) != 1) {
    snprintf(why, n, "'%s' is not an IPv4 address (or [IPv6], or localhost)", host);
    return -1;
  }
  return 0;
}

int cli_metrics_listen(apex_manager_t *m, const char *spec, cli_metrics_server_t **out,
                       char *why, size_t n) {
  *out = NULL;
  struct sockaddr_storage sa;
  int v6 = 0;
  if (parse_addr(spec, &sa, &v6, why, n) != 0) return -1;
  struct cli_metrics_server *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(why, n, "out of memory");
    return -1;
  }
  s->m = m;
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | (v6 ? MHD_USE_IPv6 : 0);
  s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR,
                          (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                          MHD_OPTION_END);
  if (!s->d) {
    snprintf(why, n, "cannot listen on %s: %s", spec, errno ? strerror(errno) : "failed");
    free(s);
    return -1;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
  s->port = info ? info->port : 0;
  char host[INET6_ADDRSTRLEN] = "?";
  if (v6)
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&sa)->sin6_addr, host, sizeof host);
  else
    inet_ntop(AF_INET, &((struct sockaddr_in *)&sa)->sin_addr, host, sizeof host);
  snprintf(s->url, sizeof s->url, "http://%s%s%s:%u/metrics", v6 ? "[" : "", host, v6 ? "]" : "",
           s->port);
  *out = s;
  return 0;
}

unsigned cli_metrics_port(const cli_metrics_server_t *s) { return s ? s->port : 0; }

const char *cli_metrics_url(const cli_metrics_server_t *s) { return s ? s->url : ""; }

void cli_metrics_stop(cli_metrics_server_t *s) {
  if (!s) return;
  MHD_stop_daemon(s->d);
  free(s);
}
