/* Traces and structured logs as a host sees them (include/apex/trace.h,
 * docs/observability.md): the spans a task, its attempts and its children
 * make, the W3C traceparent coming in (malformed ones ignored) and going
 * out through the ctx, sampling, the OTLP/HTTP exporter against a
 * collector that works, refuses or hangs, and the fields and rate limit of
 * log records. The spans are read back from the OTLP/JSON lines file with
 * jansson here; tests/obs/check_otlp.sh decodes the same kind of file with
 * the OpenTelemetry protobuf definitions. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <microhttpd.h>

#include "integration/harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/trace_kit.so"
#define TP_TRACE "0af7651916cd43dd8448eb211c80319c"
#define TP_SPAN "b7ad6b7169203331"
#define TP "00-" TP_TRACE "-" TP_SPAN "-01"

/* ------------------------------------------------------------ records */

typedef struct rec {
  int level;
  char msg[300];
  uint64_t task;
  uint32_t attempt, suppressed;
  char plugin[70], trace[33], span[17];
} rec_t;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static rec_t g_recs[4096];
static size_t g_n;

static void on_record(const apex_log_record_t *r, void *user) {
  (void)user;
  pthread_mutex_lock(&g_mu);
  if (g_n < sizeof g_recs / sizeof g_recs[0]) {
    rec_t *x = &g_recs[g_n++];
    memset(x, 0, sizeof *x);
    x->level = r->level;
    snprintf(x->msg, sizeof x->msg, "%s", r->message);
    x->task = r->task_id;
    x->attempt = r->attempt;
    x->suppressed = r->suppressed;
    snprintf(x->plugin, sizeof x->plugin, "%s", r->plugin ? r->plugin : "");
    snprintf(x->trace, sizeof x->trace, "%s", r->trace_id ? r->trace_id : "");
    snprintf(x->span, sizeof x->span, "%s", r->span_id ? r->span_id : "");
  }
  pthread_mutex_unlock(&g_mu);
}

static void records_reset(void) {
  pthread_mutex_lock(&g_mu);
  g_n = 0;
  pthread_mutex_unlock(&g_mu);
}

/* ------------------------------------------------------------ helpers */

typedef struct fixture {
  char path[64];
  apex_manager_t *m;
} fixture_t;

static apex_manager_t *manager(fixture_t *f, int sampler, const char *endpoint, int log_level) {
  apex_manager_config_t cfg = base_config(2);
  cfg.log_record = on_record;
  cfg.log_level = log_level;
  if (!endpoint) {
    snprintf(f->path, sizeof f->path, "/tmp/apex_spans_XXXXXX");
    int fd = mkstemp(f->path);
    assert_true(fd >= 0);
    close(fd);
    cfg.trace_file = f->path;
  } else {
    f->path[0] = '\0';
    cfg.otlp_endpoint = endpoint;
  }
  cfg.trace_sampler = sampler;
  assert_int_equal(apex_manager_new(&cfg, &f->m), APEX_OK);
  load_ok(f->m, KIT);
  return f->m;
}

/* Every span in the file (an array, a new reference), asserting each line
 * is one JSON object of OTLP's shape. */
static json_t *spans_of(const char *path) {
  FILE *fp = fopen(path, "r");
  assert_non_null(fp);
  json_t *all = json_array();
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, fp) > 0) {
    json_error_t e;
    json_t *req = json_loads(line, 0, &e);
    if (!req) fail_msg("not JSON: %s: %s", e.text, line);
    json_t *rs = json_object_get(req, "resourceSpans");
    assert_int_equal(json_array_size(rs), 1);
    json_t *ss = json_object_get(json_array_get(rs, 0), "scopeSpans");
    json_t *spans = json_object_get(json_array_get(ss, 0), "spans");
    assert_true(json_is_array(spans));
    json_array_extend(all, spans);
    json_decref(req);
  }
  free(line);
  fclose(fp);
  return all;
}

static const char *str(json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "";
}

/* The value of attribute key of o (a span or an event), as text. */
static const char *attr(json_t *o, const char *key) {
  static char buf[64];
  size_t i;
  json_t *a;
  json_array_foreach(json_object_get(o, "attributes"), i, a) {
    if (strcmp(str(a, "key"), key) != 0) continue;
    json_t *v = json_object_get(a, "value");
    if (json_object_get(v, "stringValue")) return str(v, "stringValue");
    if (json_object_get(v, "intValue")) return str(v, "intValue");
    snprintf(buf, sizeof buf, "%g", json_number_value(json_object_get(v, "doubleValue")));
    return buf;
  }
  return NULL;
}

static json_t *span_named(json_t *spans, const char *name, const char *attempt) {
  size_t i;
  json_t *s;
  json_array_foreach(spans, i, s) {
    if (strcmp(str(s, "name"), name) != 0) continue;
    if (attempt && (!attr(s, "apex.attempt") || strcmp(attr(s, "apex.attempt"), attempt) != 0))
      continue;
    return s;
  }
  return NULL;
}

static json_t *run_ok(apex_manager_t *m, const char *action, const char *params,
                      const char *traceparent) {
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.traceparent = traceparent;
  apex_task_t *t = submit_json(m, "trace_kit", action, params, &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  apex_task_release(t);
  return r;
}

/* --------------------------------------------------------------- spans */

/* Two transient failures and a start-to-close timeout: one task span
 * (child of the incoming traceparent, in its trace), three attempt spans
 * (children of the task's), retry and timeout events, error statuses. */
static void test_three_attempts_retries_and_timeout_make_four_spans(void **st) {
  (void)st;
  fixture_t f;
  apex_manager_t *m = manager(&f, APEX_TRACE_DEFAULT, NULL, -1);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.traceparent = TP;
  o.tracestate = "vendor=1";
  o.start_to_close_s = 0.2;
  apex_task_t *t = submit_json(m, "trace_kit", "flaky", NULL, &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_TIMED_OUT);
  assert_int_equal(apex_task_attempts(t), 3);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);

  json_t *spans = spans_of(f.path);
  assert_int_equal(json_array_size(spans), 4);
  json_t *task = span_named(spans, "trace_kit.flaky", NULL);
  assert_non_null(task);
  assert_string_equal(str(task, "traceId"), TP_TRACE);
  assert_string_equal(str(task, "parentSpanId"), TP_SPAN);
  assert_string_equal(str(task, "traceState"), "vendor=1");
  assert_int_equal(strlen(str(task, "spanId")), 16);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(task, "status"), "code")), 2);
  assert_string_equal(attr(task, "apex.task.state"), "timed_out");
  assert_string_equal(attr(task, "error.type"), "timeout");
  json_t *ev = json_object_get(task, "events");
  assert_int_equal(json_array_size(ev), 3);
  assert_string_equal(str(json_array_get(ev, 0), "name"), "apex.retry");
  assert_string_equal(attr(json_array_get(ev, 0), "apex.attempt"), "1");
  assert_string_equal(attr(json_array_get(ev, 0), "error.type"), "transient");
  assert_string_equal(str(json_array_get(ev, 1), "name"), "apex.retry");
  assert_string_equal(attr(json_array_get(ev, 1), "apex.attempt"), "2");
  assert_string_equal(str(json_array_get(ev, 2), "name"), "apex.timeout");
  assert_string_equal(attr(json_array_get(ev, 2), "apex.timeout.kind"), "start_to_close");
  const char *attempts[] = {"1", "2", "3"};
  for (int i = 0; i < 3; i++) {
    json_t *a = span_named(spans, "trace_kit.flaky attempt", attempts[i]);
    assert_non_null(a);
    assert_string_equal(str(a, "traceId"), TP_TRACE);
    assert_string_equal(str(a, "parentSpanId"), str(task, "spanId"));
    assert_string_not_equal(str(a, "spanId"), str(task, "spanId"));
    json_t *stat = json_object_get(a, "status");
    assert_int_equal(json_integer_value(json_object_get(stat, "code")), 2);
    assert_string_equal(attr(a, "error.type"), i < 2 ? "transient" : "timeout");
  }
  json_decref(spans);
  unlink(f.path);
}

/* Each malformed value (W3C: wrong length, version ff, all-zero ids,
 * non-hex, upper case, a version-00 value with more after it) is ignored:
 * a new trace, no parent, and a debug record saying so. */
static void test_malformed_traceparent_is_ignored_with_a_new_trace(void **st) {
  (void)st;
  const char *bad[] = {
      "00-" TP_TRACE "-" TP_SPAN "-0",                       /* short */
      "00-" TP_TRACE "-" TP_SPAN "-011",                     /* long */
      "ff-" TP_TRACE "-" TP_SPAN "-01",                      /* version ff */
      "00-00000000000000000000000000000000-" TP_SPAN "-01",  /* zero trace id */
      "00-" TP_TRACE "-0000000000000000-01",                 /* zero parent id */
      "00-0af7651916cd43dd8448eb211c80319g-" TP_SPAN "-01",  /* non-hex */
      "00-0AF7651916CD43DD8448EB211C80319C-" TP_SPAN "-01",  /* upper case */
      "00-" TP_TRACE "-" TP_SPAN "-01-extra",                /* 00 with more */
      "",
  };
  size_t n = sizeof bad / sizeof bad[0];
  fixture_t f;
  records_reset();
  apex_manager_t *m = manager(&f, APEX_TRACE_DEFAULT, NULL, APEX_LOG_DEBUG);
  for (size_t i = 0; i < n; i++) json_decref(run_ok(m, "echo_tp", NULL, bad[i]));
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  json_t *spans = spans_of(f.path);
  assert_int_equal(json_array_size(spans), 2 * n);
  size_t i;
  json_t *s;
  json_array_foreach(spans, i, s) {
    assert_string_not_equal(str(s, "traceId"), TP_TRACE);
    if (strcmp(str(s, "name"), "trace_kit.echo_tp") == 0)
      assert_null(json_object_get(s, "parentSpanId"));
  }
  json_decref(spans);
  size_t debug = 0;
  pthread_mutex_lock(&g_mu);
  for (size_t k = 0; k < g_n; k++)
    if (g_recs[k].level == APEX_LOG_DEBUG && strstr(g_recs[k].msg, "is malformed") &&
        g_recs[k].task != 0)
      debug++;
  pthread_mutex_unlock(&g_mu);
  assert_int_equal(debug, n);
  unlink(f.path);
}

/* A later version's longer value is read as version 00's first 55
 * characters (W3C: forward compatible). */
static void test_traceparent_parse_accepts_a_later_version(void **st) {
  (void)st;
  apex_trace_context_t tc;
  assert_int_equal(apex_traceparent_parse("01-" TP_TRACE "-" TP_SPAN "-01-what-comes-next", &tc),
                   APEX_OK);
  assert_int_equal(tc.flags, 1);
  assert_int_equal(tc.trace_id[0], 0x0a);
  assert_int_equal(tc.span_id[7], 0x31);
  char out[56];
  assert_int_equal(apex_traceparent_format(&tc, out, sizeof out), APEX_OK);
  assert_string_equal(out, TP);
  assert_int_equal(apex_traceparent_format(&tc, out, 55), APEX_E_INVALID);
  assert_int_equal(apex_traceparent_parse("01-" TP_TRACE "-" TP_SPAN "-01x", &tc), APEX_E_INVALID);
}

/* The plugin's traceparent names its attempt's span, in the task's trace,
 * and keeps the sampled flag; a child task is a child span of that
 * attempt. */
static void test_ctx_traceparent_and_child_task_spans(void **st) {
  (void)st;
  fixture_t f;
  apex_manager_t *m = manager(&f, APEX_TRACE_DEFAULT, NULL, -1);
  json_t *r = run_ok(m, "spawner", NULL, TP);
  const char *own = str(r, "traceparent");
  const char *kid = str(json_object_get(r, "child"), "traceparent");
  assert_int_equal(strlen(own), 55);
  assert_int_equal(strlen(kid), 55);
  assert_memory_equal(own, "00-" TP_TRACE "-", 36);
  assert_memory_equal(kid, "00-" TP_TRACE "-", 36);
  assert_string_equal(own + 52, "-01");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "child"), "small_rc")),
                   APEX_E_INVALID);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);

  json_t *spans = spans_of(f.path);
  assert_int_equal(json_array_size(spans), 4);
  json_t *pa = span_named(spans, "trace_kit.spawner attempt", "1");
  json_t *ct = span_named(spans, "trace_kit.echo_tp", NULL);
  json_t *ca = span_named(spans, "trace_kit.echo_tp attempt", "1");
  assert_non_null(pa);
  assert_non_null(ct);
  assert_non_null(ca);
  char want[17];
  snprintf(want, sizeof want, "%.16s", own + 36);
  assert_string_equal(str(pa, "spanId"), want); /* the ctx named its attempt */
  assert_string_equal(str(ct, "parentSpanId"), want);
  assert_string_equal(str(ct, "traceId"), TP_TRACE);
  assert_non_null(attr(ct, "apex.parent_task.id"));
  snprintf(want, sizeof want, "%.16s", kid + 36);
  assert_string_equal(str(ca, "spanId"), want);
  json_decref(spans);
  json_decref(r);
  unlink(f.path);
}

/* NEVER records nothing but still propagates (flag 00); parent-based: a
 * sampled incoming traceparent is recorded whatever the sampler. RATIO 0
 * records no new trace. OFF: no context at all. */
static void test_sampling_is_parent_based(void **st) {
  (void)st;
  fixture_t f;
  apex_manager_t *m = manager(&f, APEX_TRACE_NEVER, NULL, -1);
  json_t *r = run_ok(m, "echo_tp", NULL, NULL);
  assert_string_equal(str(r, "traceparent") + 52, "-00");
  json_decref(r);
  r = run_ok(m, "echo_tp", NULL, TP);
  assert_string_equal(str(r, "traceparent") + 52, "-01");
  json_decref(r);
  r = run_ok(m, "echo_tp", NULL, "00-" TP_TRACE "-" TP_SPAN "-00");
  json_decref(r);
  apex_trace_stats_t ts = {.struct_size = sizeof ts};
  assert_int_equal(apex_manager_trace_stats(m, &ts), APEX_OK);
  assert_int_equal(ts.spans_started, 2);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  json_t *spans = spans_of(f.path);
  assert_int_equal(json_array_size(spans), 2); /* the sampled parent's task and attempt */
  assert_string_equal(str(json_array_get(spans, 0), "traceId"), TP_TRACE);
  json_decref(spans);
  unlink(f.path);

  apex_manager_config_t cfg = base_config(2);
  cfg.trace_file = f.path;
  cfg.trace_sampler = APEX_TRACE_RATIO;
  cfg.trace_ratio = 0.0;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  for (int i = 0; i < 20; i++) json_decref(run_ok(m, "echo_tp", NULL, NULL));
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  spans = spans_of(f.path);
  assert_int_equal(json_array_size(spans), 0);
  json_decref(spans);
  unlink(f.path);

  cfg = base_config(2); /* no exporter, no sampler: off */
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  r = run_ok(m, "echo_tp", NULL, TP);
  assert_true(json_is_null(json_object_get(r, "traceparent")));
  assert_int_equal(json_integer_value(json_object_get(r, "rc")), APEX_E_INVALID);
  json_decref(r);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
}

/* Bad log and trace fields are refused by apex_manager_new, naming the
 * field; a trace file that cannot be opened fails it with APEX_E_IO. */
static void test_bad_config_fields_refused(void **st) {
  (void)st;
  apex_manager_t *m = (apex_manager_t *)1;
  assert_int_equal(setenv("APEX_LOG", "error", 1), 0); /* a refused config's level */
  for (int i = 0; i < 6; i++) {
    records_reset();
    apex_manager_config_t cfg = base_config(1);
    cfg.log = NULL;
    cfg.log_record = on_record;
    const char *field = NULL;
    switch (i) {
      case 0: cfg.log_format = 4; field = "config.log_format"; break;
      case 1: cfg.log_rate_limit = -2; field = "config.log_rate_limit"; break;
      case 2: cfg.trace_sampler = 5; field = "config.trace_sampler"; break;
      case 3: cfg.trace_sampler = APEX_TRACE_RATIO; cfg.trace_ratio = 1.5; field = "config.trace_ratio"; break;
      case 4: cfg.trace_ratio = 0.0 / 0.0; field = "config.trace_ratio"; break;
      default: cfg.trace_file = "/nonexistent-dir/spans.jsonl"; field = "/nonexistent-dir"; break;
    }
    assert_int_equal(apex_manager_new(&cfg, &m), i < 5 ? APEX_E_INVALID : APEX_E_IO);
    assert_null(m);
    int named = 0; /* the refusal is logged, naming the field */
    pthread_mutex_lock(&g_mu);
    for (size_t k = 0; k < g_n; k++)
      named |= g_recs[k].level == APEX_LOG_ERROR && strstr(g_recs[k].msg, field) != NULL;
    pthread_mutex_unlock(&g_mu);
    if (!named) fail_msg("no error record naming %s", field);
  }
  assert_int_equal(setenv("APEX_LOG", "off", 1), 0);
}

/* ---------------------------------------------------------- collector */

typedef struct collector {
  struct MHD_Daemon *d;
  pthread_mutex_t mu;
  int posts, bad;
  char path[64], ctype[64];
  size_t spans;
} collector_t;

typedef struct upload {
  char *p;
  size_t n;
} upload_t;

static enum MHD_Result on_post(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *size, void **con_cls) {
  (void)version;
  collector_t *col = cls;
  upload_t *u = *con_cls;
  if (!u) {
    *con_cls = calloc(1, sizeof *u);
    return *con_cls ? MHD_YES : MHD_NO;
  }
  if (*size) {
    char *p = realloc(u->p, u->n + *size + 1);
    if (!p) return MHD_NO;
    memcpy(p + u->n, data, *size);
    u->n += *size;
    p[u->n] = '\0';
    u->p = p;
    *size = 0;
    return MHD_YES;
  }
  json_t *req = u->p ? json_loads(u->p, 0, NULL) : NULL;
  json_t *spans = json_object_get(
      json_array_get(json_object_get(json_array_get(json_object_get(req, "resourceSpans"), 0),
                                     "scopeSpans"),
                     0),
      "spans");
  const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
  pthread_mutex_lock(&col->mu);
  col->posts++;
  if (!json_is_array(spans) || strcmp(method, "POST") != 0) col->bad++;
  col->spans += json_array_size(spans);
  snprintf(col->path, sizeof col->path, "%s", url);
  snprintf(col->ctype, sizeof col->ctype, "%s", ct ? ct : "");
  pthread_mutex_unlock(&col->mu);
  json_decref(req);
  struct MHD_Response *resp = MHD_create_response_from_buffer(2, (void *)"{}", MHD_RESPMEM_PERSISTENT);
  enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, resp);
  MHD_destroy_response(resp);
  return ok;
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls,
                    enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)c;
  (void)toe;
  upload_t *u = *con_cls;
  if (u) free(u->p);
  free(u);
  *con_cls = NULL;
}

static void test_collector_gets_batched_otlp_http_json(void **st) {
  (void)st;
  collector_t col = {0};
  pthread_mutex_init(&col.mu, NULL);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  col.d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, on_post, &col,
                           MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL,
                           MHD_OPTION_END);
  assert_non_null(col.d);
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(col.d, MHD_DAEMON_INFO_BIND_PORT);
  char ep[64];
  snprintf(ep, sizeof ep, "http://127.0.0.1:%u/", (unsigned)di->port);
  fixture_t f;
  apex_manager_t *m = manager(&f, APEX_TRACE_DEFAULT, ep, -1);
  for (int i = 0; i < 30; i++) json_decref(run_ok(m, "echo_tp", NULL, NULL));
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK); /* the last batch goes out */
  MHD_stop_daemon(col.d);
  assert_true(col.posts >= 1);
  assert_int_equal(col.bad, 0);
  assert_int_equal(col.spans, 60);
  assert_string_equal(col.path, "/v1/traces");
  assert_string_equal(col.ctype, "application/json");
  pthread_mutex_destroy(&col.mu);
}

/* A collector that refuses connections, and one that accepts and never
 * answers: tasks run as fast as ever (all 200 end long before the
 * exporter's request timeout), the failures are counted, and destroy
 * returns within its bounded last try. */
static void test_refusing_or_hanging_collector_never_slows_tasks(void **st) {
  (void)st;
  for (int hang = 0; hang <= 1; hang++) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(s, (struct sockaddr *)&sa, &len), 0);
    if (hang) {
      assert_int_equal(listen(s, 64), 0); /* connects complete; nobody answers */
    } else {
      close(s); /* nobody listens: refused */
      s = -1;
    }
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    fixture_t f;
    apex_manager_t *m = manager(&f, APEX_TRACE_DEFAULT, ep, -1);
    int64_t t0 = now_ms();
    apex_task_t *ts[200];
    for (int i = 0; i < 200; i++) ts[i] = submit_json(m, "trace_kit", "echo_tp", NULL, NULL);
    for (int i = 0; i < 200; i++) {
      wait_done(ts[i]);
      assert_int_equal(apex_task_state(ts[i]), APEX_TASK_SUCCEEDED);
      apex_task_release(ts[i]);
    }
    int64_t took = now_ms() - t0;
    if (took > 2500) fail_msg("200 tasks took %lld ms with a %s collector", (long long)took,
                              hang ? "hanging" : "refusing");
    /* The exporter's first batch goes out within its 200 ms tick; await
     * its failure being counted (the hanging one: after its 3 s timeout). */
    apex_trace_stats_t tst = {.struct_size = sizeof tst};
    int64_t end = now_ms() + 10000;
    do {
      assert_int_equal(apex_manager_trace_stats(m, &tst), APEX_OK);
      if (tst.export_errors) break;
      nap_ms(20);
    } while (now_ms() < end);
    assert_true(tst.export_errors >= 1);
    assert_true(tst.spans_dropped >= 1);
    assert_int_equal(tst.spans_exported, 0);
    int64_t d0 = now_ms();
    assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
    if (now_ms() - d0 > 6000) fail_msg("destroy took %lld ms", (long long)(now_ms() - d0));
    if (s >= 0) close(s);
  }
}

/* A GET answered with the request's traceparent header ("none" without). */
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
  const char *tp = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "traceparent");
  char *body = strdup(tp ? tp : "none");
  if (!body) return MHD_NO;
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
  enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, resp);
  MHD_destroy_response(resp);
  return ok;
}

/* The http plugin sends the task's traceparent (its attempt's span) as a
 * header, unless the caller's headers name one. */
static void test_http_plugin_sends_traceparent(void **st) {
  (void)st;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, on_get,
                                          NULL, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_END);
  assert_non_null(d);
  unsigned port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port;
  fixture_t f;
  apex_manager_t *m = manager(&f, APEX_TRACE_DEFAULT, NULL, -1);
  load_ok(m, APEX_PLUGIN_BUILD_DIR "/http.so");
  char params[200];
  snprintf(params, sizeof params, "{\"url\": \"http://127.0.0.1:%u/tp\"}", port);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.traceparent = TP;
  apex_task_t *t = submit_json(m, "http", "get", params, &o);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  json_t *r = apex_task_result(t);
  char sent[64];
  snprintf(sent, sizeof sent, "%s", str(r, "body"));
  json_decref(r);
  apex_task_release(t);
  snprintf(params, sizeof params,
           "{\"url\": \"http://127.0.0.1:%u/tp\", \"headers\": {\"TraceParent\": \"mine\"}}", port);
  t = submit_json(m, "http", "get", params, &o);
  wait_done(t);
  r = apex_task_result(t);
  assert_string_equal(str(r, "body"), "mine");
  json_decref(r);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  MHD_stop_daemon(d);
  assert_int_equal(strlen(sent), 55);
  assert_memory_equal(sent, "00-" TP_TRACE "-", 36);
  json_t *spans = spans_of(f.path);
  json_t *a = NULL;
  size_t i;
  json_t *s;
  json_array_foreach(spans, i, s) if (strcmp(str(s, "name"), "http.get attempt") == 0 && !a) a = s;
  assert_non_null(a);
  assert_memory_equal(sent + 36, str(a, "spanId"), 16);
  json_decref(spans);
  unlink(f.path);
}

/* ----------------------------------------------------------------- logs */

/* A plugin's record carries task, plugin, attempt and the trace ids as
 * fields; the message is the plugin's text alone. */
static void test_plugin_log_records_carry_fields(void **st) {
  (void)st;
  fixture_t f;
  records_reset();
  apex_manager_t *m = manager(&f, APEX_TRACE_DEFAULT, NULL, APEX_LOG_WARN);
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.traceparent = TP;
  apex_task_t *t = submit_json(m, "trace_kit", "echo_tp", NULL, &o);
  wait_done(t);
  uint64_t id = apex_task_id(t);
  json_t *r = apex_task_result(t);
  apex_task_release(t);
  int found = 0;
  pthread_mutex_lock(&g_mu);
  for (size_t k = 0; k < g_n; k++) {
    rec_t *x = &g_recs[k];
    if (x->task != id) continue;
    found++;
    assert_string_equal(x->msg, "echo \"quoted\" line\nsecond half");
    assert_string_equal(x->plugin, "trace_kit");
    assert_int_equal(x->attempt, 1);
    assert_string_equal(x->trace, TP_TRACE);
    assert_memory_equal(x->span, str(r, "traceparent") + 36, 16); /* the attempt's span */
  }
  pthread_mutex_unlock(&g_mu);
  assert_int_equal(found, 1);
  json_decref(r);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  unlink(f.path);
}

/* 1000 records in a tight loop against a limit of 50 a second: a window's
 * worth or a few get through, and the summaries that come with the next
 * admitted records count the rest exactly: nothing is lost silently. */
static void test_log_rate_limit_counts_and_summarizes(void **st) {
  (void)st;
  records_reset();
  apex_manager_config_t cfg = base_config(2);
  cfg.log_record = on_record;
  cfg.log_rate_limit = 50;
  cfg.log_level = APEX_LOG_WARN;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&cfg, &m), APEX_OK);
  load_ok(m, KIT);
  apex_task_t *t = submit_json(m, "trace_kit", "chatty", "{\"n\": 1000, \"then_ms\": 1100}", NULL);
  wait_done(t);
  assert_int_equal(apex_task_state(t), APEX_TASK_SUCCEEDED);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, -1), APEX_OK);
  size_t lines = 0, summarized = 0, summaries = 0;
  pthread_mutex_lock(&g_mu);
  for (size_t k = 0; k < g_n; k++) {
    if (strcmp(g_recs[k].plugin, "trace_kit") != 0) continue;
    if (g_recs[k].suppressed) {
      summaries++;
      summarized += g_recs[k].suppressed;
      assert_non_null(strstr(g_recs[k].msg, "dropped"));
    } else {
      lines++;
    }
  }
  pthread_mutex_unlock(&g_mu);
  /* 50 a window, and the burst may straddle a second's turn or two on a
   * loaded machine: far fewer than the 1000 written either way */
  assert_true(lines <= 200);
  assert_true(summaries >= 1);
  assert_int_equal(lines + summarized, 1001);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_three_attempts_retries_and_timeout_make_four_spans),
      cmocka_unit_test(test_malformed_traceparent_is_ignored_with_a_new_trace),
      cmocka_unit_test(test_traceparent_parse_accepts_a_later_version),
      cmocka_unit_test(test_ctx_traceparent_and_child_task_spans),
      cmocka_unit_test(test_sampling_is_parent_based),
      cmocka_unit_test(test_bad_config_fields_refused),
      cmocka_unit_test(test_collector_gets_batched_otlp_http_json),
      cmocka_unit_test(test_refusing_or_hanging_collector_never_slows_tasks),
      cmocka_unit_test(test_http_plugin_sends_traceparent),
      cmocka_unit_test(test_plugin_log_records_carry_fields),
      cmocka_unit_test(test_log_rate_limit_counts_and_summarizes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
