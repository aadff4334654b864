/* The Streamable HTTP transport of `apex mcp` (MCP 2025-06-18/2025-11-25,
 * "Transports"), on libmicrohttpd: no HTTP is parsed here.
 *
 * One endpoint, /mcp:
 *   POST   one JSON-RPC message. A request is answered with
 *          application/json when its answer is the only thing it gets
 *          (initialize, tools/list, ping, errors, and a call that ends
 *          within DEFER_MS with nothing sent before its answer), else with
 *          an SSE stream carrying its progress and log notifications and,
 *          last, its answer; the stream then ends. A notification or a
 *          client's response: 202. initialize without a session creates
 *          one (Mcp-Session-Id).
 *   GET    with Last-Event-ID: resumes the stream that event belongs to,
 *          replaying what came after it; without: the session's standalone
 *          stream (notifications not tied to a request; one at a time, a
 *          second is 409).
 *   DELETE ends the session: its calls are cancelled ("disconnected"). So
 *          does a session's idleness (--session-timeout, default 600 s: no
 *          request and no stream being read): its client went away.
 * Origin and Host are checked against loopback names when the server is
 * bound to loopback (DNS rebinding protection); an Origin must always be a
 * loopback one or the Host's own. Event ids are "STREAM-SEQ"; a POST
 * stream of a 2025-11-25 session opens with a priming event (id, retry,
 * empty data) so a client that loses it can resume (SEP-1699).
 *
 * Threads: one. libmicrohttpd runs in its "external" epoll mode inside the
 * command's main loop, with the core (mcp_server.c), so a request is
 * parsed, run through the core and answered on the thread that owns the
 * core, and nothing here is shared with another thread. (It ran a thread
 * per connection that handed each request to the main thread and waited
 * for the verdict: at 100 calls in flight most of the server's CPU went to
 * those threads' wake-ups and to the lock between them; W16,
 * bench/analysis.md.) A connection waits by being suspended
 * (MHD_suspend_connection): a POST whose answer is not ready until its
 * stream gets its first event, closes, or DEFER_MS passed (then it is
 * answered as JSON when its answer is all it got, else as SSE); an SSE
 * reader until its stream has more, closes, or owes a keepalive comment.
 * Whatever makes a stream change (a send from the core, the request's
 * end, the session's end, a new reader) resumes what waits on it.
 *
 * What can fail: the bind (reported, exit 1); memory (the message or event
 * is dropped, 500 where an answer is due). A stream's events are kept
 * until a reader has read them through to its end, so a dropped
 * connection can resume; a session's streams go with it. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "mcp.h"

#define SSE_RETRY_MS 1000
/* An idle SSE stream sends a comment this often: a dead peer is found by
 * the write failing (libmicrohttpd then ends the response). */
#define SSE_KEEPALIVE_S 15
/* How long a POST request waits for its stream's first event before its
 * headers go out as an SSE stream: a call that ends sooner with nothing
 * before its answer is answered as one JSON body (one write, no chunked
 * framing, nothing for the client to parse as events). Short, so a long
 * call's client has its headers and priming event at once, as it would. */
#define DEFER_MS 50

typedef struct sse_event {
  uint64_t seq;
  char *text; /* the whole event, "id: ...\n...\n\n" */
  size_t len;
} sse_event_t;

typedef struct hsession hsession_t;
typedef struct conn conn_t;
typedef struct reader reader_t;

typedef struct stream {
  int refs;              /* the session's list, its reader, its waiter */
  uint64_t num;          /* within its session */
  sse_event_t *evs;
  size_t n, cap;
  uint64_t next_seq;
  int pending;           /* requests on it not yet ended */
  int closed;            /* no more events */
  int delivered;         /* a reader read it to its end */
  unsigned reader_gen;   /* a new reader supersedes the old */
  reader_t *reader;      /* the current reader, or NULL */
  conn_t *waiter;        /* the POST that waits to answer with it, or NULL */
  int standalone;
  struct stream *next;
} stream_t;

struct hsession {
  hsession_t *next;
  char id[33];
  mcp_session_t *core;
  stream_t *streams;     /* request streams and the standalone one */
  stream_t *standalone;
  uint64_t next_stream;
  int64_t last_ms;       /* the last request's arrival */
};

enum { M_POST = 1, M_GET, M_DELETE };

/* One request, run through the core and given its verdict at once. */
typedef struct job {
  int method;
  const char *session_id, *last_event_id, *proto; /* the request's headers */
  mcp_msg_t msg;         /* POST: the parsed message */
  /* the verdict */
  unsigned status;
  char sid_out[33];
  char *body;            /* JSON body, or NULL */
  stream_t *stream;      /* SSE: a reference for the reader */
  uint64_t after_seq;    /* resume after this seq (0 with resume 0: all) */
  int resume;
  int defer;             /* stream is a new request's: wait for its first event */
} job_t;

/* One request on a connection (libmicrohttpd's con_cls). */
struct conn {
  char *body;
  size_t len, cap;
  int too_big;
  /* A POST waiting for its answer (DEFER_MS): */
  struct MHD_Connection *c;
  stream_t *wait;        /* a reference, or NULL */
  char sid[33];
  int64_t wait_until_ms;
  int suspended;
  conn_t *prev, *next;   /* in H.waiting */
};

struct reader {
  stream_t *s;
  unsigned gen;
  size_t idx, off;       /* next event, bytes of it sent */
  int keepalive_pending;
  int64_t last_ms;       /* when it last sent something */
  struct MHD_Connection *c;
  int suspended;
  reader_t *prev, *next; /* in H.readers */
};

static struct {
  struct MHD_Daemon *d;
  int stopping;
  int loopback;
  size_t max;
  int64_t idle_ms;       /* a session this long without a request or a
                            reader is ended: its client is gone */
  hsession_t *sessions;
  mcp_server_t *srv;
  conn_t *waiting;       /* POSTs waiting for their stream's first event */
  reader_t *readers;     /* SSE responses being sent */
  int resumed;           /* a connection was resumed: run the daemon */
} H;

/* ------------------------------------------------------------- waiting */

static void conn_resume(struct MHD_Connection *c, int *suspended) {
  if (!*suspended) return;
  *suspended = 0;
  MHD_resume_connection(c);
  H.resumed = 1;
}

static void waiting_unlink(conn_t *cn) {
  if (cn->prev) cn->prev->next = cn->next;
  else if (H.waiting == cn) H.waiting = cn->next;
  if (cn->next) cn->next->prev = cn->prev;
  cn->prev = cn->next = NULL;
}

static void readers_unlink(reader_t *r) {
  if (r->prev) r->prev->next = r->next;
  else if (H.readers == r) H.readers = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
}

/* s changed (an event, its end, a new reader): what waits on it runs. */
static void stream_wake(stream_t *s) {
  if (s->waiter) conn_resume(s->waiter->c, &s->waiter->suspended);
  if (s->reader) conn_resume(s->reader->c, &s->reader->suspended);
}

/* ------------------------------------------------------------- streams */

static void stream_unref(stream_t *s) {
  if (--s->refs > 0) return;
  for (size_t i = 0; i < s->n; i++) free(s->evs[i].text);
  free(s->evs);
  free(s);
}

/* Appends an event (text taken). */
static void stream_push(stream_t *s, char *text, size_t len) {
  if (s->closed) {
    free(text);
    return;
  }
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 4;
    sse_event_t *e = realloc(s->evs, cap * sizeof *e);
    if (!e) {
      free(text);
      return;
    }
    s->evs = e;
    s->cap = cap;
  }
  s->evs[s->n++] = (sse_event_t){s->next_seq++, text, len};
  stream_wake(s);
}

static stream_t *stream_new(hsession_t *hs, int prime) {
  stream_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->refs = 1; /* the session's list */
  s->num = ++hs->next_stream;
  s->next = hs->streams;
  hs->streams = s;
  if (prime) {
    /* A priming event: an id to resume from before anything else came. */
    char *t = NULL;
    int n = asprintf(&t, "id: %llu-0\nretry: %d\ndata: \n\n", (unsigned long long)s->num,
                     SSE_RETRY_MS);
    if (n > 0) stream_push(s, t, (size_t)n);
  } else {
    s->next_seq = 1;
  }
  if (s->next_seq == 0) s->next_seq = 1;
  return s;
}

static void stream_close(stream_t *s) {
  s->closed = 1;
  stream_wake(s);
}

/* The JSON body to answer s's request with, when s ended with its answer
 * as its only event (after the priming one): malloc'd, s then counts as
 * delivered. NULL when s needs the SSE stream (or memory ran out). */
static char *stream_take_json(stream_t *s) {
  size_t first = s->n && s->evs[0].seq == 0 ? 1 : 0;
  if (!s->closed || s->n != first + 1) return NULL;
  const char *d = strstr(s->evs[first].text, "\ndata: ");
  if (!d) return NULL;
  d += 7;
  size_t l = strlen(d);
  char *body = strndup(d, l >= 2 ? l - 2 : l); /* less "\n\n" */
  if (body) s->delivered = 1;
  return body;
}

/* Drops the streams of hs a reader read to their end. */
static void prune_streams(hsession_t *hs) {
  for (stream_t **pp = &hs->streams; *pp;) {
    stream_t *s = *pp;
    if (s->closed && s->delivered && !s->reader && !s->waiter) {
      *pp = s->next;
      stream_unref(s);
    } else {
      pp = &s->next;
    }
  }
}

/* ------------------------------------------------------------- core ops */

static void http_send(void *tuser, void *stream, const json_t *msg) {
  hsession_t *hs = tuser;
  stream_t *s = stream ? stream : hs->standalone;
  if (!s || s->closed) return; /* no standalone stream open: a notification is lost */
  size_t n;
  char *data = mcp_dump(msg, &n);
  if (!data) return;
  char head[64];
  int h = snprintf(head, sizeof head, "id: %llu-%llu\nevent: message\ndata: ",
                   (unsigned long long)s->num, (unsigned long long)s->next_seq);
  char *t = h > 0 ? malloc((size_t)h + n + 3) : NULL;
  if (t) {
    memcpy(t, head, (size_t)h);
    memcpy(t + h, data, n);
    memcpy(t + h + n, "\n\n", 3);
    stream_push(s, t, (size_t)h + n + 2);
  }
  free(data);
}

static void http_request_done(void *tuser, void *stream) {
  (void)tuser;
  stream_t *s = stream;
  if (!s) return;
  if (s->pending > 0 && --s->pending == 0) stream_close(s);
}

static const mcp_transport_ops_t http_ops = {http_send, http_request_done};

/* ------------------------------------------------------------- sessions */

static hsession_t *session_find(const char *id) {
  for (hsession_t *hs = H.sessions; hs; hs = hs->next)
    if (id && strcmp(hs->id, id) == 0) return hs;
  return NULL;
}

static hsession_t *session_new(void) {
  hsession_t *hs = calloc(1, sizeof *hs);
  if (!hs) return NULL;
  unsigned char rnd[16];
  if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
    free(hs);
    return NULL;
  }
  for (int i = 0; i < 16; i++) snprintf(hs->id + 2 * i, 3, "%02x", rnd[i]);
  hs->core = mcp_session_new(H.srv, &http_ops, hs);
  if (!hs->core) {
    free(hs);
    return NULL;
  }
  hs->last_ms = cli_now_ms();
  hs->next = H.sessions;
  H.sessions = hs;
  return hs;
}

static void session_end(hsession_t *hs) {
  for (hsession_t **pp = &H.sessions; *pp; pp = &(*pp)->next)
    if (*pp == hs) {
      *pp = hs->next;
      break;
    }
  /* The core sends nothing more to hs after this. */
  mcp_session_close(hs->core);
  while (hs->streams) {
    stream_t *s = hs->streams;
    hs->streams = s->next;
    stream_close(s);
    stream_unref(s);
  }
  free(hs);
}

/* ------------------------------------------------------------- jobs */

static int proto_ok(const char *v) {
  return !v || strcmp(v, MCP_PROTO_LATEST) == 0 || strcmp(v, MCP_PROTO_PREVIOUS) == 0 ||
         strcmp(v, "2025-03-26") == 0;
}

static char *error_body(int code, const char *msg) {
  json_t *e = mcp_error(NULL, code, msg, NULL);
  char *b = e ? mcp_dump(e, NULL) : NULL;
  json_decref(e);
  return b;
}

static void verdict(job_t *j, unsigned status, int code, const char *msg) {
  j->status = status;
  if (msg) j->body = error_body(code, msg);
}

static void run_post(job_t *j) {
  mcp_msg_t *m = &j->msg;
  hsession_t *hs = NULL;
  int is_init = m->kind == MCP_MSG_REQUEST && strcmp(m->method, "initialize") == 0;
  if (!j->session_id) {
    if (!is_init)
      return verdict(j, MHD_HTTP_BAD_REQUEST, MCP_INVALID_REQUEST,
                     "Bad Request: no Mcp-Session-Id header (send initialize first)");
    if (!(hs = session_new()))
      return verdict(j, MHD_HTTP_INTERNAL_SERVER_ERROR, MCP_INTERNAL_ERROR, "out of memory");
  } else if (!(hs = session_find(j->session_id))) {
    return verdict(j, MHD_HTTP_NOT_FOUND, MCP_INVALID_REQUEST, "Session not found");
  } else if (!proto_ok(j->proto)) {
    return verdict(j, MHD_HTTP_BAD_REQUEST, MCP_INVALID_REQUEST,
                   "Bad Request: unsupported MCP-Protocol-Version");
  }
  prune_streams(hs);
  snprintf(j->sid_out, sizeof j->sid_out, "%s", hs->id);
  if (m->kind != MCP_MSG_REQUEST) {
    mcp_session_handle(hs->core, m, NULL);
    j->status = MHD_HTTP_ACCEPTED;
    return;
  }
  int prime = strcmp(mcp_session_protocol(hs->core), MCP_PROTO_LATEST) == 0;
  stream_t *s = stream_new(hs, prime);
  if (!s) return verdict(j, MHD_HTTP_INTERNAL_SERVER_ERROR, MCP_INTERNAL_ERROR, "out of memory");
  s->pending = 1;
  mcp_session_handle(hs->core, m, s);
  j->status = MHD_HTTP_OK;
  /* Answered at once, with nothing before the answer: plain JSON. */
  if ((j->body = stream_take_json(s))) {
    prune_streams(hs);
    return;
  }
  s->refs++;
  j->stream = s;
  j->defer = 1;
}

static void run_get(job_t *j) {
  hsession_t *hs;
  if (!j->session_id)
    return verdict(j, MHD_HTTP_BAD_REQUEST, MCP_INVALID_REQUEST, "Bad Request: no Mcp-Session-Id header");
  if (!(hs = session_find(j->session_id)))
    return verdict(j, MHD_HTTP_NOT_FOUND, MCP_INVALID_REQUEST, "Session not found");
  prune_streams(hs);
  snprintf(j->sid_out, sizeof j->sid_out, "%s", hs->id);
  if (j->last_event_id) {
    unsigned long long num = 0, seq = 0;
    stream_t *s = NULL;
    if (sscanf(j->last_event_id, "%llu-%llu", &num, &seq) == 2)
      for (s = hs->streams; s && s->num != num; s = s->next) {
      }
    if (!s)
      return verdict(j, MHD_HTTP_NOT_FOUND, MCP_INVALID_REQUEST, "unknown Last-Event-ID");
    s->refs++;
    j->stream = s;
    j->resume = 1;
    j->after_seq = seq;
    j->status = MHD_HTTP_OK;
    return;
  }
  if (hs->standalone && hs->standalone->reader)
    return verdict(j, MHD_HTTP_CONFLICT, MCP_INVALID_REQUEST,
                   "Conflict: the session's GET stream is open already");
  if (!hs->standalone) {
    hs->standalone = stream_new(hs, 0);
    if (!hs->standalone)
      return verdict(j, MHD_HTTP_INTERNAL_SERVER_ERROR, MCP_INTERNAL_ERROR, "out of memory");
    hs->standalone->standalone = 1;
  }
  hs->standalone->refs++;
  j->stream = hs->standalone;
  /* Only what comes from now on: an earlier reader had the rest. */
  j->resume = 1;
  j->after_seq = hs->standalone->next_seq - 1;
  j->status = MHD_HTTP_OK;
}

/* Ends the sessions whose client went away without a DELETE: nothing
 * asked and nobody reading for idle_ms. Their calls are cancelled
 * ("disconnected"), as a DELETE's are. */
static void expire_sessions(int64_t now) {
  for (hsession_t *hs = H.sessions, *next; hs; hs = next) {
    next = hs->next;
    if (now - hs->last_ms < H.idle_ms) continue;
    int reading = 0;
    for (stream_t *st = hs->streams; st && !reading; st = st->next)
      reading = st->reader != NULL || st->waiter != NULL;
    if (reading) hs->last_ms = now;
    else session_end(hs);
  }
}

static void run_job(job_t *j) {
  hsession_t *seen = j->session_id ? session_find(j->session_id) : NULL;
  if (seen) seen->last_ms = cli_now_ms();
  if (j->method == M_POST) run_post(j);
  else if (j->method == M_GET) run_get(j);
  else {
    hsession_t *hs = j->session_id ? session_find(j->session_id) : NULL;
    if (!j->session_id) verdict(j, MHD_HTTP_BAD_REQUEST, MCP_INVALID_REQUEST, "no Mcp-Session-Id header");
    else if (!hs) verdict(j, MHD_HTTP_NOT_FOUND, MCP_INVALID_REQUEST, "Session not found");
    else {
      session_end(hs);
      j->status = MHD_HTTP_OK;
    }
  }
}

/* ------------------------------------------------------------- connections */

/* Host or Origin's host part is a loopback name. */
static int loopback_host(const char *h, size_t n) {
  /* strip ":port" (after a "]" for IPv6) */
  const char *end = h + n;
  if (n && h[0] == '[') {
    const char *rb = memchr(h, ']', n);
    if (!rb) return 0;
    end = rb + 1;
  } else {
    const char *colon = memchr(h, ':', n);
    if (colon) end = colon;
  }
  size_t l = (size_t)(end - h);
  static const char *const ok[] = {"localhost", "127.0.0.1", "[::1]"};
  for (size_t i = 0; i < 3; i++)
    if (l == strlen(ok[i]) && strncasecmp(h, ok[i], l) == 0) return 1;
  return 0;
}

static int origin_ok(struct MHD_Connection *c) {
  const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
  const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
  if (H.loopback && host && !loopback_host(host, strlen(host))) return 0;
  if (origin) {
    const char *p = strstr(origin, "://");
    if (!p) return 0;
    p += 3;
    if (loopback_host(p, strlen(p))) return 1;
    /* A non-loopback server: its own origin only. */
    return !H.loopback && host && strcasecmp(p, host) == 0;
  }
  return 1;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, char *body,
                             const char *sid) {
  struct MHD_Response *r =
      body ? MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE)
           : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
  if (!r) {
    free(body);
    return MHD_NO;
  }
  if (body) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  if (sid && *sid) MHD_add_response_header(r, "Mcp-Session-Id", sid);
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, "Allow", "GET, POST, DELETE");
  enum MHD_Result rc = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return rc;
}

/* The content of an SSE response, asked for by libmicrohttpd whenever it
 * can send: what the stream has, else its end, else a keepalive comment
 * that is due; with none of these the connection is suspended (0 bytes)
 * until stream_wake or the keepalive time resumes it. */
static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
  (void)pos;
  reader_t *r = cls;
  stream_t *s = r->s;
  if (r->gen != s->reader_gen || H.stopping) return MHD_CONTENT_READER_END_OF_STREAM;
  size_t out = 0;
  while (r->idx < s->n && out < max) {
    sse_event_t *e = &s->evs[r->idx];
    size_t n = e->len - r->off < max - out ? e->len - r->off : max - out;
    memcpy(buf + out, e->text + r->off, n);
    out += n;
    r->off += n;
    if (r->off == e->len) {
      r->idx++;
      r->off = 0;
    }
  }
  if (out) {
    r->last_ms = cli_now_ms();
    return (ssize_t)out;
  }
  if (s->closed) {
    s->delivered = 1;
    return MHD_CONTENT_READER_END_OF_STREAM;
  }
  if (r->keepalive_pending) {
    r->keepalive_pending = 0;
    static const char ka[] = ": keepalive\n\n";
    size_t n = sizeof ka - 1 < max ? sizeof ka - 1 : max;
    memcpy(buf, ka, n);
    r->last_ms = cli_now_ms();
    return (ssize_t)n;
  }
  MHD_suspend_connection(r->c);
  r->suspended = 1;
  return 0;
}

static void sse_free(void *cls) {
  reader_t *r = cls;
  readers_unlink(r);
  if (r->s->reader == r) r->s->reader = NULL;
  stream_unref(r->s);
  free(r);
}

/* Answers with j->stream as SSE (the reference taken). */
static enum MHD_Result reply_sse(struct MHD_Connection *c, job_t *j) {
  reader_t *r = calloc(1, sizeof *r);
  if (!r) {
    stream_unref(j->stream);
    return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL);
  }
  stream_t *s = j->stream;
  r->s = s;
  r->c = c;
  r->last_ms = cli_now_ms();
  r->gen = ++s->reader_gen;
  reader_t *old = s->reader;
  s->reader = r;
  if (old) conn_resume(old->c, &old->suspended); /* it sees the new gen and ends */
  r->next = H.readers;
  if (H.readers) H.readers->prev = r;
  H.readers = r;
  if (j->resume)
    while (r->idx < s->n && s->evs[r->idx].seq <= j->after_seq) r->idx++;
  struct MHD_Response *resp =
      MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_read, r, sse_free);
  if (!resp) {
    sse_free(r);
    return MHD_NO;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  if (*j->sid_out) MHD_add_response_header(resp, "Mcp-Session-Id", j->sid_out);
  enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, resp);
  MHD_destroy_response(resp);
  return rc;
}

/* A POST that waited (resumed): its answer as JSON if that is all its
 * stream got, else the stream as SSE. */
static enum MHD_Result answer_waiter(struct MHD_Connection *c, conn_t *cn) {
  stream_t *s = cn->wait;
  cn->wait = NULL;
  waiting_unlink(cn);
  if (s->waiter == cn) s->waiter = NULL;
  char *body = stream_take_json(s);
  if (body) {
    stream_unref(s); /* pruned from its session at the next request */
    return reply(c, MHD_HTTP_OK, body, cn->sid);
  }
  job_t j = {.stream = s, .status = MHD_HTTP_OK};
  memcpy(j.sid_out, cn->sid, sizeof j.sid_out);
  return reply_sse(c, &j);
}

static int accepts(struct MHD_Connection *c, const char *type) {
  const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
  return a && (strstr(a, type) || strstr(a, "*/*"));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls) {
  (void)cls;
  (void)version;
  conn_t *cn = *con_cls;
  if (!cn) {
    if (strcmp(url, "/mcp") != 0) return reply(c, MHD_HTTP_NOT_FOUND, NULL, NULL);
    if (strcmp(method, "POST") && strcmp(method, "GET") && strcmp(method, "DELETE"))
      return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, NULL, NULL);
    if (!origin_ok(c))
      return reply(c, MHD_HTTP_FORBIDDEN,
                   error_body(MCP_INVALID_REQUEST, "Forbidden: Origin or Host is not allowed"), NULL);
    if (!(cn = calloc(1, sizeof *cn))) return MHD_NO;
    *con_cls = cn;
    return MHD_YES;
  }
  if (cn->wait) return answer_waiter(c, cn);
  if (*upload_size) {
    if (!cn->too_big) {
      if (cn->len + *upload_size > H.max) {
        cn->too_big = 1;
        free(cn->body);
        cn->body = NULL;
        cn->len = cn->cap = 0;
      } else {
        if (cn->len + *upload_size > cn->cap) {
          size_t cap = cn->cap ? cn->cap : 4096;
          while (cap < cn->len + *upload_size) cap *= 2;
          char *b = realloc(cn->body, cap);
          if (!b) return MHD_NO;
          cn->body = b;
          cn->cap = cap;
        }
        memcpy(cn->body + cn->len, upload_data, *upload_size);
        cn->len += *upload_size;
      }
    }
    *upload_size = 0;
    return MHD_YES;
  }
  job_t j = {0};
  if (strcmp(method, "POST") == 0) {
    j.method = M_POST;
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    unsigned bad = 0;
    const char *why = NULL;
    if (cn->too_big) bad = MHD_HTTP_CONTENT_TOO_LARGE, why = "message too large";
    else if (!ct || !strstr(ct, "application/json"))
      bad = MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, why = "Unsupported Media Type: want application/json";
    else if (!accepts(c, "application/json") || !accepts(c, "text/event-stream"))
      bad = MHD_HTTP_NOT_ACCEPTABLE,
      why = "Not Acceptable: the client must accept application/json and text/event-stream";
    if (bad) return reply(c, bad, error_body(MCP_INVALID_REQUEST, why), NULL);
    json_t *err = NULL;
    if (mcp_parse(cn->body ? cn->body : "", cn->len, &j.msg, &err) != 0) {
      char *b = err ? mcp_dump(err, NULL) : NULL;
      json_decref(err);
      return b ? reply(c, MHD_HTTP_BAD_REQUEST, b, NULL) : reply(c, MHD_HTTP_ACCEPTED, NULL, NULL);
    }
  } else if (strcmp(method, "GET") == 0) {
    j.method = M_GET;
    if (!accepts(c, "text/event-stream"))
      return reply(c, MHD_HTTP_NOT_ACCEPTABLE,
                   error_body(MCP_INVALID_REQUEST, "Not Acceptable: want text/event-stream"), NULL);
    j.last_event_id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Last-Event-ID");
  } else {
    j.method = M_DELETE;
  }
  j.session_id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Mcp-Session-Id");
  j.proto = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "MCP-Protocol-Version");
  if (H.stopping) {
    mcp_msg_free(&j.msg);
    return reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, NULL);
  }
  run_job(&j);
  mcp_msg_free(&j.msg); /* what the core did not take */
  if (j.stream && j.defer && !j.stream->waiter) {
    /* Not answered yet: wait for the stream's first event (the header). */
    cn->c = c;
    cn->wait = j.stream;
    j.stream->waiter = cn;
    memcpy(cn->sid, j.sid_out, sizeof cn->sid);
    cn->wait_until_ms = cli_now_ms() + DEFER_MS;
    cn->next = H.waiting;
    if (H.waiting) H.waiting->prev = cn;
    H.waiting = cn;
    MHD_suspend_connection(c);
    cn->suspended = 1;
    return MHD_YES;
  }
  if (j.stream) return reply_sse(c, &j);
  return reply(c, j.status, j.body, j.sid_out);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)c;
  (void)toe;
  conn_t *cn = *con_cls;
  if (!cn) return;
  if (cn->wait) {
    waiting_unlink(cn);
    if (cn->wait->waiter == cn) cn->wait->waiter = NULL;
    stream_unref(cn->wait);
  }
  free(cn->body);
  free(cn);
  *con_cls = NULL;
}

/* Resumes the waiting POSTs past their DEFER_MS and the readers owing a
 * keepalive comment. Returns: ms until the next such time (-1: none). */
static int64_t run_timers(int64_t now) {
  int64_t next = -1;
  for (conn_t *cn = H.waiting; cn; cn = cn->next) {
    if (!cn->suspended) continue;
    if (cn->wait_until_ms <= now) conn_resume(cn->c, &cn->suspended);
    else if (next < 0 || cn->wait_until_ms - now < next) next = cn->wait_until_ms - now;
  }
  for (reader_t *r = H.readers; r; r = r->next) {
    if (!r->suspended) continue;
    int64_t due = r->last_ms + SSE_KEEPALIVE_S * 1000;
    if (due <= now) {
      r->keepalive_pending = 1;
      conn_resume(r->c, &r->suspended);
    } else if (next < 0 || due - now < next) {
      next = due - now;
    }
  }
  return next;
}

/* ------------------------------------------------------------- the loop */

static int parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *len) {
  char host[256];
  const char *colon = strrchr(addr, ':');
  if (!colon || colon == addr || strlen(colon + 1) == 0) return -1;
  size_t hl = (size_t)(colon - addr);
  if (hl >= sizeof host) return -1;
  memcpy(host, addr, hl);
  host[hl] = '\0';
  if (host[0] == '[' && host[hl - 1] == ']') {
    memmove(host, host + 1, hl - 2);
    host[hl - 2] = '\0';
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICSERV}, *res = NULL;
  if (getaddrinfo(host, colon + 1, &hints, &res) != 0 || !res) return -1;
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

static int is_loopback(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
  if (ss->ss_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a);
  }
  return 0;
}

/* The smaller of two timeouts in ms, -1 meaning none. */
static int64_t min_timeout(int64_t a, int64_t b) {
  if (a < 0) return b;
  if (b < 0) return a;
  return a < b ? a : b;
}

int mcp_http_run(mcp_server_t *srv, const char *addr, double idle_s) {
  struct sockaddr_storage ss;
  socklen_t sl;
  char full[300];
  /* A port alone means loopback. */
  if (!strchr(addr, ':')) {
    snprintf(full, sizeof full, "127.0.0.1:%s", addr);
    addr = full;
  }
  if (parse_addr(addr, &ss, &sl) != 0)
    return cli_fail(0, APEX_E_INVALID, "--http '%s': want HOST:PORT (e.g. 127.0.0.1:8080)", addr);
  H.srv = srv;
  H.max = mcp_server_max_message(srv);
  H.idle_ms = (int64_t)(idle_s * 1000);
  H.loopback = is_loopback(&ss);
  /* Blocked by cli_cmd_mcp before any thread started. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  /* No thread of its own: this loop runs it (the header). TURBO: reads and
   * writes are tried before asking epoll (a syscall saved when they
   * succeed, which a client waiting on its answer makes likely). */
  unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO |
                   (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
  struct MHD_Daemon *d = MHD_start_daemon(
      flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
      /* An idle keep-alive connection is closed after a minute. A stream
       * being read is never idle that long (keepalive comments every
       * SSE_KEEPALIVE_S), and a suspended connection does not time out. */
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_END);
  const union MHD_DaemonInfo *einfo = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
  if (!d || !einfo) {
    int e = errno;
    if (d) MHD_stop_daemon(d);
    if (sfd >= 0) close(sfd);
    return cli_fail(0, APEX_E_IO, "--http '%s': cannot listen there (%s)", addr, strerror(e));
  }
  H.d = d;
  int mfd = einfo->epoll_fd;
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  char shown[300];
  snprintf(shown, sizeof shown, "%.*s", (int)(strrchr(addr, ':') - addr), addr);
  fprintf(stderr, "apex mcp: listening on http://%s:%u/mcp\n", shown, info ? info->port : 0);
  fflush(stderr);
  int dfd, lfd, code = CLI_EXIT_OK;
  mcp_server_fds(srv, &dfd, &lfd);
  for (;;) {
    /* Timers first: a POST that started waiting in the last run has its
     * DEFER_MS counted from now on. */
    int64_t now = cli_now_ms();
    expire_sessions(now);
    int64_t t = min_timeout(run_timers(now), 1000);
    /* --store: a tasks/result may be waiting on the store. */
    t = min_timeout(t, mcp_server_timeout_ms(srv));
    MHD_UNSIGNED_LONG_LONG mt;
    if (MHD_get_timeout(d, &mt) == MHD_YES) t = min_timeout(t, mt < 1000 ? (int64_t)mt : 1000);
    if (H.resumed) t = 0;
    struct pollfd pf[4] = {{.fd = mfd, .events = POLLIN},
                           {.fd = dfd, .events = POLLIN},
                           {.fd = lfd, .events = POLLIN},
                           {.fd = sfd, .events = POLLIN}};
    int n = poll(pf, 4, (int)t);
    if (n < 0 && errno != EINTR) break;
    if (pf[3].revents & POLLIN) {
      struct signalfd_siginfo si;
      code = CLI_EXIT_OK;
      if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si) code = CLI_EXIT_FAILED;
      break;
    }
    /* Task events first: the answers they resume go out in this run. */
    if (pf[1].revents || pf[2].revents) mcp_server_pump_ready(srv, pf[2].revents != 0);
    mcp_server_tick(srv);
    H.resumed = 0;
    MHD_run(d);
  }
  /* Refuse new requests, end every session (its streams end their
   * readers and waiters), resume whatever is still suspended and let the
   * daemon finish them; then stop it. */
  H.stopping = 1;
  while (H.sessions) session_end(H.sessions);
  for (conn_t *cn = H.waiting; cn; cn = cn->next) conn_resume(cn->c, &cn->suspended);
  for (reader_t *r = H.readers; r; r = r->next) conn_resume(r->c, &r->suspended);
  MHD_run(d);
  MHD_stop_daemon(d);
  H.d = NULL;
  if (sfd >= 0) close(sfd);
  return code;
}
