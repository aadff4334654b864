/* The http plugin passes the task's W3C `tracestate` on beside its
 * `traceparent` (plugins/http/http.c, docs/http-plugin.md): sent as given
 * at submit; not sent when there is none, when the caller's headers name a
 * traceparent of their own (ours would not go with theirs), or when they
 * name a tracestate; never a value with a line break (no header
 * injection). A loopback libmicrohttpd server echoes what it received. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <microhttpd.h>

#include "integration/harness.h"

#define TP "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
#define TS "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

/* A GET answered with "<tracestate>|<traceparent>" as received ("none"
 * for a header that was not sent). */
static enum MHD_Result on_get(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *size, void **con_cls) {
  (void)cls;
  (void)url;
  (void)method;
  (void)version;
  (void)data;
  (void)size;
  (void)con_cls;
  const char *ts = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "tracestate");
  const char *tp = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "traceparent");
  char buf[1200];
  snprintf(buf, sizeof buf, "%s|%s", ts ? ts : "none", tp ? tp : "none");
  char *body = strdup(buf);
  if (!body) return MHD_NO;
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
  enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, resp);
  MHD_destroy_response(resp);
  return ok;
}

/* GETs the server with headers_json (NULL: none) and the given context;
 * returns the body (malloc'd). */
static char *get(apex_manager_t *m, unsigned port, const char *headers_json, const char *tp,
                 const char *ts) {
  char params[400];
  if (headers_json)
    snprintf(params, sizeof params, "{\"url\": \"http://127.0.0.1:%u/\", \"headers\": %s}", port,
             headers_json);
  else
    snprintf(params, sizeof params, "{\"url\": \"http://127.0.0.1:%u/\"}", port);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.traceparent = tp;
  o.tracestate = ts;
  apex_task_t *t = submit_json(m, "http", "get", params, &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  const char *body = json_string_value(json_object_get(r, "body"));
  assert_non_null(body);
  char *out = strdup(body);
  json_decref(r);
  apex_task_release(t);
  return out;
}

static void test_http_sends_tracestate_with_traceparent(void **st) {
  (void)st;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, on_get,
                                          NULL, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_END);
  assert_non_null(d);
  unsigned port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port;
  apex_manager_config_t cfg = base_config(2);
  cfg.trace_sampler = APEX_TRACE_ALWAYS;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, APEX_PLUGIN_BUILD_DIR "/http.so");

  char *b = get(m, port, NULL, TP, TS);
  assert_memory_equal(b, TS "|00-0af7651916cd43dd8448eb211c80319c-", strlen(TS) + 37);
  free(b);
  b = get(m, port, NULL, TP, NULL); /* none given: none sent */
  assert_memory_equal(b, "none|00-", 8);
  free(b);
  b = get(m, port, "{\"traceparent\": \"mine\"}", TP, TS); /* the caller's context wins */
  assert_string_equal(b, "none|mine");
  free(b);
  b = get(m, port, "{\"TraceState\": \"k=v\"}", TP, TS); /* the caller's tracestate wins */
  assert_memory_equal(b, "k=v|00-", 7);
  free(b);
  b = get(m, port, NULL, TP, "a=1\r\nx-injected: yes"); /* a line break: not sent */
  assert_memory_equal(b, "none|00-", 8);
  free(b);

  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  MHD_stop_daemon(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_http_sends_tracestate_with_traceparent),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
