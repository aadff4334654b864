/* The Streamable HTTP transport of `apex mcp` (MCP 2025-06-18/2025-11-25,
 * "Transports"), on libmicrohttpd: no HTTP is parsed here.
 *
 * One endpoint, /mcp:
 *   POST   one JSON-RPC message. A request is answered with
 *          application/json when its answer is ready at once (initialize,
 *          tools/list, ping, errors), else with an SSE stream carrying its
 *          progress and log notifications and, last, its answer; the stream
 *          then ends. A notification or a client's response: 202.
 *          initialize without a session creates one (Mcp-Session-Id).
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
 * Threads and locks: libmicrohttpd runs a thread per connection; they
 * never touch the core (mcp_server.c, main thread only). A connection
 * thread parses the body (mcp_parse), queues a job on the inbox, wakes the
 * main thread (an eventfd) and waits for the verdict: a status, a
 * JSON body, or a stream to read. The main thread runs the job through the
 * core, whose sends append events to streams. `mu` (one, a leaf) guards
 * the inbox, the verdicts and every stream's events and counts; a job's
 * thread waits on the job's own condition variable, a stream's readers on
 * the stream's (one shared one woke every connection thread for each
 * event: a hundred in flight made that the server's main cost). Sessions and the streams list of each are
 * the main thread's alone.
 *
 * What can fail: the bind (reported, exit 1); memory (the message or event
 * is dropped, 500 where an answer is due). A stream's events are kept
 * until a reader has read them through to its end, so a dropped
 * connection can resume; a session's streams go with it. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
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

typedef struct sse_event {
  uint64_t seq;
  char *text; /* the whole event, "id: ...\n...\n\n" */
  size_t len;
} sse_event_t;

typedef struct hsession hsession_t;

typedef struct stream {
  int refs;              /* under mu: the session's list, readers, jobs */
  uint64_t num;          /* within its session */
  sse_event_t *evs;
  size_t n, cap;
  uint64_t next_seq;
  int pending;           /* requests on it not yet ended */
  int closed;            /* no more events */
  int delivered;         /* a reader read it to its end */
  unsigned reader_gen;   /* a new reader supersedes the old */
  int has_reader;
  int standalone;
  pthread_cond_t cond;   /* its readers wait here for events */
  /* main thread only: */
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

typedef struct job {
  struct job *next;
  pthread_cond_t cond;   /* its connection thread waits here */
  int method;
  char *session_id, *last_event_id, *proto;
  mcp_msg_t msg;         /* POST: the parsed message */
  /* the verdict */
  int done;
  unsigned status;
  char sid_out[33];
  char *body;            /* JSON body, or NULL */
  stream_t *stream;      /* SSE: a reference for the reader */
  uint64_t after_seq;    /* resume after this seq (0 with resume 0: all) */
  int resume;
} job_t;

typedef struct conn {
  char *body;
  size_t len, cap;
  int too_big;
} conn_t;

typedef struct reader {
  stream_t *s;
  unsigned gen;
  size_t idx, off;       /* next event, bytes of it sent */
  int keepalive_pending;
} reader_t;

static struct {
  pthread_mutex_t mu;
  job_t *inbox, **inbox_tail;
  int efd;
  int stopping;
  int loopback;
  size_t max;
  int64_t idle_ms;       /* a session this long without a request or a
                            reader is ended: its client is gone */
  /* main thread only: */
  hsession_t *sessions;
  mcp_server_t *srv;
} H = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* ------------------------------------------------------------- streams */

static void stream_unref_locked(stream_t *s) {
  if (--s->refs > 0) return;
  for (size_t i = 0; i < s->n; i++) free(s->evs[i].text);
  free(s->evs);
  pthread_cond_destroy(&s->cond);
  free(s);
}

static void stream_unref(stream_t *s) {
  pthread_mutex_lock(&H.mu);
  stream_unref_locked(s);
  pthread_mutex_unlock(&H.mu);
}

/* Appends an event (text taken). Under mu. */
static void stream_push_locked(stream_t *s, char *text, size_t len) {
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
  pthread_cond_broadcast(&s->cond);
}

static stream_t *stream_new(hsession_t *hs, int prime) {
  stream_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  if (pthread_cond_init(&s->cond, NULL) != 0) {
    free(s);
    return NULL;
  }
  s->refs = 1; /* the session's list */
  s->num = ++hs->next_stream;
  s->next = hs->streams;
  hs->streams = s;
  if (prime) {
    /* A priming event: an id to resume from before anything else came. */
    char *t = NULL;
    int n = asprintf(&t, "id: %llu-0\nretry: %d\ndata: \n\n", (unsigned long long)s->num,
                     SSE_RETRY_MS);
    pthread_mutex_lock(&H.mu);
    if (n > 0) stream_push_locked(s, t, (size_t)n);
    pthread_mutex_unlock(&H.mu);
  } else {
    s->next_seq = 1;
  }
  if (s->next_seq == 0) s->next_seq = 1;
  return s;
}

static void stream_close_locked(stream_t *s) {
  s->closed = 1;
  pthread_cond_broadcast(&s->cond);
}

/* Drops the streams of hs a reader read to their end (main thread). */
static void prune_streams(hsession_t *hs) {
  pthread_mutex_lock(&H.mu);
  for (stream_t **pp = &hs->streams; *pp;) {
    stream_t *s = *pp;
    if (s->closed && s->delivered && !s->has_reader) {
      *pp = s->next;
      stream_unref_locked(s);
    } else {
      pp = &s->next;
    }
  }
  pthread_mutex_unlock(&H.mu);
}

/* ------------------------------------------------------------- core ops */

static void http_send(void *tuser, void *stream, const json_t *msg) {
  hsession_t *hs = tuser;
  stream_t *s = stream ? stream : hs->standalone;
  if (!s) return; /* no standalone stream open: a notification is lost */
  size_t n;
  char *data = mcp_dump(msg, &n);
  if (!data) return;
  pthread_mutex_lock(&H.mu);
  char *t = NULL;
  int len = asprintf(&t, "id: %llu-%llu\nevent: message\ndata: %s\n\n",
                     (unsigned long long)s->num, (unsigned long long)s->next_seq, data);
  if (len > 0) stream_push_locked(s, t, (size_t)len);
  pthread_mutex_unlock(&H.mu);
  free(data);
}

static void http_request_done(void *tuser, void *stream) {
  (void)tuser;
  stream_t *s = stream;
  if (!s) return;
  pthread_mutex_lock(&H.mu);
  if (s->pending > 0 && --s->pending == 0) stream_close_locked(s);
  pthread_mutex_unlock(&H.mu);
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
  pthread_mutex_lock(&H.mu);
  while (hs->streams) {
    stream_t *s = hs->streams;
    hs->streams = s->next;
    stream_close_locked(s);
    stream_unref_locked(s);
  }
  pthread_mutex_unlock(&H.mu);
  free(hs);
}

/* ------------------------------------------------------------- jobs (main) */

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
  pthread_mutex_lock(&H.mu);
  s->pending = 1;
  pthread_mutex_unlock(&H.mu);
  mcp_session_handle(hs->core, m, s);
  j->status = MHD_HTTP_OK;
  pthread_mutex_lock(&H.mu);
  /* Answered at once, with nothing before the answer: plain JSON. */
  size_t first = s->n && s->evs[0].seq == 0 ? 1 : 0;
  if (s->closed && s->n == first + 1) {
    const char *d = strstr(s->evs[first].text, "\ndata: ");
    if (d) {
      d += 7;
      size_t l = strlen(d);
      j->body = strndup(d, l >= 2 ? l - 2 : l); /* less "\n\n" */
    }
    s->delivered = 1;
  }
  if (!j->body) {
    s->refs++;
    j->stream = s;
  }
  pthread_mutex_unlock(&H.mu);
  if (j->body) prune_streams(hs);
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
    pthread_mutex_lock(&H.mu);
    s->refs++;
    pthread_mutex_unlock(&H.mu);
    j->stream = s;
    j->resume = 1;
    j->after_seq = seq;
    j->status = MHD_HTTP_OK;
    return;
  }
  pthread_mutex_lock(&H.mu);
  int busy = hs->standalone && hs->standalone->has_reader;
  pthread_mutex_unlock(&H.mu);
  if (busy)
    return verdict(j, MHD_HTTP_CONFLICT, MCP_INVALID_REQUEST,
                   "Conflict: the session's GET stream is open already");
  if (!hs->standalone) {
    hs->standalone = stream_new(hs, 0);
    if (!hs->standalone)
      return verdict(j, MHD_HTTP_INTERNAL_SERVER_ERROR, MCP_INTERNAL_ERROR, "out of memory");
    hs->standalone->standalone = 1;
  }
  pthread_mutex_lock(&H.mu);
  hs->standalone->refs++;
  pthread_mutex_unlock(&H.mu);
  j->stream = hs->standalone;
  /* Only what comes from now on: an earlier reader had the rest. */
  j->resume = 1;
  j->after_seq = hs->standalone->next_seq - 1;
  j->status = MHD_HTTP_OK;
}

/* Ends the sessions whose client went away without a DELETE: nothing
 * asked and nobody reading for idle_ms. Their calls are cancelled
 * ("disconnected"), as a DELETE's are. */
static void expire_sessions(void) {
  int64_t now = cli_now_ms();
  for (hsession_t *hs = H.sessions, *next; hs; hs = next) {
    next = hs->next;
    if (now - hs->last_ms < H.idle_ms) continue;
    int reading = 0;
    pthread_mutex_lock(&H.mu);
    for (stream_t *st = hs->streams; st && !reading; st = st->next) reading = st->has_reader;
    pthread_mutex_unlock(&H.mu);
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

static void run_inbox(void) {
  uint64_t v;
  ssize_t r = read(H.efd, &v, sizeof v);
  (void)r;
  pthread_mutex_lock(&H.mu);
  job_t *list = H.inbox;
  H.inbox = NULL;
  H.inbox_tail = &H.inbox;
  pthread_mutex_unlock(&H.mu);
  while (list) {
    job_t *j = list;
    list = j->next;
    run_job(j);
    mcp_msg_free(&j->msg); /* what the core did not take */
    pthread_mutex_lock(&H.mu);
    j->done = 1;
    pthread_cond_signal(&j->cond);
    pthread_mutex_unlock(&H.mu);
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

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
  (void)pos;
  reader_t *r = cls;
  stream_t *s = r->s;
  pthread_mutex_lock(&H.mu);
  for (;;) {
    if (r->gen != s->reader_gen || H.stopping) break;
    if (r->idx < s->n) {
      sse_event_t *e = &s->evs[r->idx];
      size_t n = e->len - r->off < max ? e->len - r->off : max;
      memcpy(buf, e->text + r->off, n);
      r->off += n;
      if (r->off == e->len) {
        r->idx++;
        r->off = 0;
      }
      pthread_mutex_unlock(&H.mu);
      return (ssize_t)n;
    }
    if (s->closed) {
      s->delivered = 1;
      break;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += SSE_KEEPALIVE_S;
    if (pthread_cond_timedwait(&s->cond, &H.mu, &ts) == ETIMEDOUT && r->idx >= s->n && !s->closed) {
      pthread_mutex_unlock(&H.mu);
      static const char ka[] = ": keepalive\n\n";
      size_t n = sizeof ka - 1 < max ? sizeof ka - 1 : max;
      memcpy(buf, ka, n);
      return (ssize_t)n;
    }
  }
  pthread_mutex_unlock(&H.mu);
  return MHD_CONTENT_READER_END_OF_STREAM;
}

static void sse_free(void *cls) {
  reader_t *r = cls;
  pthread_mutex_lock(&H.mu);
  if (r->gen == r->s->reader_gen) r->s->has_reader = 0;
  stream_unref_locked(r->s);
  pthread_mutex_unlock(&H.mu);
  free(r);
}

static enum MHD_Result reply_sse(struct MHD_Connection *c, job_t *j) {
  reader_t *r = calloc(1, sizeof *r);
  if (!r) {
    stream_unref(j->stream);
    return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL);
  }
  r->s = j->stream;
  pthread_mutex_lock(&H.mu);
  r->gen = ++r->s->reader_gen; /* an older reader of it ends */
  r->s->has_reader = 1;
  if (j->resume)
    while (r->idx < r->s->n && r->s->evs[r->idx].seq <= j->after_seq) r->idx++;
  pthread_cond_broadcast(&r->s->cond);
  pthread_mutex_unlock(&H.mu);
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

static char *header_dup(struct MHD_Connection *c, const char *name) {
  const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
  return v ? strdup(v) : NULL;
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
  job_t *j = calloc(1, sizeof *j);
  if (!j) return MHD_NO;
  if (pthread_cond_init(&j->cond, NULL) != 0) {
    free(j);
    return MHD_NO;
  }
  if (strcmp(method, "POST") == 0) {
    j->method = M_POST;
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    unsigned bad = 0;
    const char *why = NULL;
    if (cn->too_big) bad = MHD_HTTP_CONTENT_TOO_LARGE, why = "message too large";
    else if (!ct || !strstr(ct, "application/json"))
      bad = MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, why = "Unsupported Media Type: want application/json";
    else if (!accepts(c, "application/json") || !accepts(c, "text/event-stream"))
      bad = MHD_HTTP_NOT_ACCEPTABLE,
      why = "Not Acceptable: the client must accept application/json and text/event-stream";
    if (bad) {
      pthread_cond_destroy(&j->cond);
      free(j);
      return reply(c, bad, error_body(MCP_INVALID_REQUEST, why), NULL);
    }
    json_t *err = NULL;
    if (mcp_parse(cn->body ? cn->body : "", cn->len, &j->msg, &err) != 0) {
      pthread_cond_destroy(&j->cond);
      free(j);
      char *b = err ? mcp_dump(err, NULL) : NULL;
      json_decref(err);
      return b ? reply(c, MHD_HTTP_BAD_REQUEST, b, NULL) : reply(c, MHD_HTTP_ACCEPTED, NULL, NULL);
    }
  } else if (strcmp(method, "GET") == 0) {
    j->method = M_GET;
    if (!accepts(c, "text/event-stream")) {
      pthread_cond_destroy(&j->cond);
      free(j);
      return reply(c, MHD_HTTP_NOT_ACCEPTABLE,
                   error_body(MCP_INVALID_REQUEST, "Not Acceptable: want text/event-stream"), NULL);
    }
    j->last_event_id = header_dup(c, "Last-Event-ID");
  } else {
    j->method = M_DELETE;
  }
  j->session_id = header_dup(c, "Mcp-Session-Id");
  j->proto = header_dup(c, "MCP-Protocol-Version");
  pthread_mutex_lock(&H.mu);
  if (H.stopping) {
    j->done = 1;
    j->status = MHD_HTTP_SERVICE_UNAVAILABLE;
  } else {
    *H.inbox_tail = j;
    H.inbox_tail = &j->next;
    uint64_t one = 1;
    ssize_t w = write(H.efd, &one, sizeof one);
    (void)w;
  }
  while (!j->done) pthread_cond_wait(&j->cond, &H.mu);
  pthread_mutex_unlock(&H.mu);
  enum MHD_Result rc;
  if (j->stream) rc = reply_sse(c, j);
  else rc = reply(c, j->status, j->body, j->sid_out);
  if (j->method == M_POST && j->status == MHD_HTTP_SERVICE_UNAVAILABLE) mcp_msg_free(&j->msg);
  free(j->session_id);
  free(j->last_event_id);
  free(j->proto);
  pthread_cond_destroy(&j->cond);
  free(j);
  return rc;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)c;
  (void)toe;
  conn_t *cn = *con_cls;
  if (!cn) return;
  free(cn->body);
  free(cn);
  *con_cls = NULL;
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
  H.inbox_tail = &H.inbox;
  H.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (H.efd < 0) return cli_fail(0, APEX_E_IO, "eventfd: %s", strerror(errno));
  /* Blocked by cli_cmd_mcp before any thread started. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                   (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
  struct MHD_Daemon *d = MHD_start_daemon(
      flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
      /* An idle keep-alive connection holds a thread: closed after a
       * minute. A stream being read is never idle that long (keepalive
       * comments every SSE_KEEPALIVE_S). */
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_END);
  if (!d) {
    close(H.efd);
    if (sfd >= 0) close(sfd);
    return cli_fail(0, APEX_E_IO, "--http '%s': cannot listen there (%s)", addr, strerror(errno));
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  char shown[300];
  snprintf(shown, sizeof shown, "%.*s", (int)(strrchr(addr, ':') - addr), addr);
  fprintf(stderr, "apex mcp: listening on http://%s:%u/mcp\n", shown, info ? info->port : 0);
  fflush(stderr);
  int dfd, lfd, code = CLI_EXIT_OK;
  mcp_server_fds(srv, &dfd, &lfd);
  for (;;) {
    struct pollfd pf[4] = {{.fd = H.efd, .events = POLLIN},
                           {.fd = dfd, .events = POLLIN},
                           {.fd = lfd, .events = POLLIN},
                           {.fd = sfd, .events = POLLIN}};
    int t = mcp_server_timeout_ms(srv); /* --store: a tasks/result may be waiting on the store */
    int n = poll(pf, 4, t >= 0 && t < 1000 ? t : 1000);
    if (n < 0 && errno != EINTR) break;
    if (pf[3].revents & POLLIN) {
      struct signalfd_siginfo si;
      code = CLI_EXIT_OK;
      if (read(sfd, &si, sizeof si) != (ssize_t)sizeof si) code = CLI_EXIT_FAILED;
      break;
    }
    if (pf[1].revents || pf[2].revents) mcp_server_pump_ready(srv, pf[2].revents != 0);
    if (pf[0].revents) run_inbox();
    mcp_server_tick(srv);
    expire_sessions();
  }
  /* Refuse new jobs, end every session (its streams end their readers),
   * then stop the daemon, which joins its connection threads. */
  pthread_mutex_lock(&H.mu);
  H.stopping = 1;
  pthread_mutex_unlock(&H.mu);
  run_inbox(); /* jobs that came before the stop get their verdict */
  while (H.sessions) session_end(H.sessions);
  MHD_stop_daemon(d);
  close(H.efd);
  if (sfd >= 0) close(sfd);
  return code;
}
