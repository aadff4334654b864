/* http: HTTP(S) on libcurl, with progress by bytes, prompt cancellation and
 * retries the host's policy runs (docs/http-plugin.md has the params and
 * results).
 *
 *   get       GET a URL: status, response headers and the body, as text when
 *             it is valid UTF-8 without NUL bytes, else base64 (the result's
 *             "encoding" says which), refused (or cut, truncate=true) past
 *             max_bytes.
 *   download  GET a URL into a file: written to a temporary name in the
 *             file's folder, checked (byte count against Content-Length, and
 *             the sha256 when one is given), fsync'd and renamed into place
 *             only then; on any failure, cancel or timeout the temporary file
 *             is removed, so the path is either absent (or its old self) or
 *             complete. Resumable: it checkpoints the bytes written (see
 *             "resuming a download" below) and the attempt after a crash
 *             asks for the rest with a Range request.
 *
 * How a transfer runs: one easy handle in a multi handle of its own, driven
 * by curl_multi_perform and curl_multi_poll on the handler's worker thread,
 * with the task's cancel fd (apex_ctx_cancel_fd) as an extra fd of the
 * poll: a cancel (the host's, the task's timeout, shutdown) wakes the wait
 * at once and the transfer is dropped within one poll round, not a timer
 * tick later. Should the ctx have no cancel fd (out of memory), curl's
 * progress callback checks the cancel flag instead (curl calls it at least
 * once a second, and per chunk while data flows).
 *
 * Failures and retries: what a retry may fix is APEX_E_TRANSIENT (a failed
 * connect or name lookup, a reset or short body, a stall, HTTP 5xx, 408,
 * 429); the rest is permanent: bad params (APEX_E_INVALID_PARAMS: a URL not
 * http(s), a download folder that does not exist), other HTTP 4xx, TLS
 * verification, too many redirects, a sha256 mismatch, a local write error
 * (APEX_E_EXECUTION). A transient HTTP status with a Retry-After header
 * hands its delay to apex_ctx_retry_after, which replaces the policy's
 * backoff for the next attempt (a hint above max_retry_after_s fails the
 * task instead of holding it for hours). Each action's default policy
 * retries 3 times, 1 s, 2 s, 4 s apart (+-20%).
 *
 * Concurrency key: a task submitted without one counts against the URL's
 * host (http_concurrency_key), so "at most 2 per host" is one setting of
 * the host's.
 *
 * Threads: curl_global_init runs in the plugin's init hook and
 * curl_global_cleanup in its shutdown (the host calls them once per load,
 * on its loading and destroying threads; both are thread-safe in Debian
 * 12's libcurl, whose features include "threadsafe", so managers may load
 * the plugin concurrently); each call then owns its easy and multi
 * handles, its buffers and its file on one worker thread.
 * http_concurrency_key runs on the submitting thread and uses only a
 * CURLU handle of its own. Nothing here aborts or prints.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "apex/plugin.h"

/* What curl hands the write callback at once: big enough that per-chunk
 * work (a progress report, a write syscall) is noise at loopback speed. */
#define XFER_BUFFER (512L * 1024L)
/* http.get's body cap: its default, and the most a result may carry (its
 * base64 form, 4/3 of it, stays well under APEX_VALUE_MAX_BYTES). */
#define GET_MAX_DEFAULT (4 * 1024 * 1024)
#define GET_MAX_LIMIT (32 * 1024 * 1024)
#define USER_AGENT "apex-http/1.0"

/* ---------------------------------------------------------------- params */

static json_t *param(apex_ctx_t *ctx, const char *name) {
  return json_object_get(apex_ctx_params(ctx), name);
}

static const char *param_str(apex_ctx_t *ctx, const char *name) {
  return json_string_value(param(ctx, name));
}

static int param_bool(apex_ctx_t *ctx, const char *name, int dflt) {
  json_t *v = param(ctx, name);
  return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static json_int_t param_int(apex_ctx_t *ctx, const char *name, json_int_t dflt) {
  json_t *v = param(ctx, name);
  return json_is_integer(v) ? json_integer_value(v) : dflt;
}

static double param_num(apex_ctx_t *ctx, const char *name, double dflt) {
  json_t *v = param(ctx, name);
  return json_is_number(v) ? json_number_value(v) : dflt;
}

static const char *errstr(int e, char *buf, size_t len) { return strerror_r(e, buf, len); }

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Parses url as an absolute http(s) URL. Returns: the CURLU handle (the
 * caller frees it) or NULL with *why set to a static reason. */
static CURLU *parse_url(const char *url, const char **why) {
  CURLU *u = curl_url();
  if (!u) {
    *why = "out of memory";
    return NULL;
  }
  CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
  if (uc != CURLUE_OK) {
    *why = curl_url_strerror(uc);
    curl_url_cleanup(u);
    return NULL;
  }
  char *scheme = NULL;
  if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK || !scheme ||
      (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)) {
    *why = "only http and https URLs are supported";
    curl_free(scheme);
    curl_url_cleanup(u);
    return NULL;
  }
  curl_free(scheme);
  return u;
}

/* The action's default concurrency key: the URL's host, lower-cased (so
 * HOST and host share one limit). Runs on the submitting thread, before
 * any handler: params are validated, so "url" is a string, but perhaps not
 * a URL (the handler reports that). Returns: 0 with buf set, or 1: none. */
static int http_concurrency_key(const json_t *params, char *buf, size_t len) {
  const char *url = json_string_value(json_object_get(params, "url"));
  if (!url || len == 0) return 1;
  const char *why = NULL;
  CURLU *u = parse_url(url, &why);
  if (!u) return 1;
  char *host = NULL;
  int rc = 1;
  if (curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK && host && host[0] &&
      strlen(host) < len) {
    size_t i = 0;
    for (; host[i]; i++) buf[i] = (char)tolower((unsigned char)host[i]);
    buf[i] = '\0';
    rc = 0;
  }
  curl_free(host);
  curl_url_cleanup(u);
  return rc;
}

/* Appends one header line. Returns: APEX_OK or the failure (ctx failed:
 * NOMEM; *out freed). */
static int add_line(apex_ctx_t *ctx, const char *line, struct curl_slist **out) {
  struct curl_slist *next = curl_slist_append(*out, line);
  if (!next) {
    curl_slist_free_all(*out);
    *out = NULL;
    return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building request headers");
  }
  *out = next;
  return APEX_OK;
}

/* The task's W3C trace context as a `traceparent` header (the server's
 * spans then join the task's trace), with the `tracestate` that goes with
 * it when the task has one, unless the params set a traceparent: a caller
 * who names it wins, and a tracestate of ours would not go with theirs. A
 * host without tracing, or older than the call, sends none. Returns:
 * APEX_OK or the failure (ctx failed: NOMEM). */
static int add_traceparent(apex_ctx_t *ctx, json_t *h, struct curl_slist **out) {
  const char *name;
  json_t *v;
  int own_state = 0;
  json_object_foreach(h, name, v) {
    if (strcasecmp(name, "traceparent") == 0) return APEX_OK;
    if (strcasecmp(name, "tracestate") == 0) own_state = 1;
  }
  char tp[64], line[96];
  if (apex_ctx_traceparent(ctx, tp, sizeof tp) != APEX_OK) return APEX_OK;
  snprintf(line, sizeof line, "traceparent: %s", tp);
  int rc = add_line(ctx, line, out);
#ifdef APEX_HAVE_CTX_TRACESTATE
  char ts[APEX_TRACESTATE_MAX + 1], sline[APEX_TRACESTATE_MAX + 16];
  if (rc == APEX_OK && !own_state && apex_ctx_tracestate(ctx, ts, sizeof ts) == APEX_OK && *ts &&
      !strpbrk(ts, "\r\n")) {
    snprintf(sline, sizeof sline, "tracestate: %s", ts);
    rc = add_line(ctx, sline, out);
  }
#else
  (void)own_state;
#endif
  return rc;
}

/* Request headers from the "headers" param (an object of strings) into
 * *out, and the trace context (add_traceparent). Returns: APEX_OK, or the
 * failure (ctx failed: INVALID_PARAMS naming the header, NOMEM). */
static int build_headers(apex_ctx_t *ctx, struct curl_slist **out) {
  json_t *h = param(ctx, "headers");
  *out = NULL;
  if (!h) return add_traceparent(ctx, NULL, out);
  const char *name;
  json_t *v;
  json_object_foreach(h, name, v) {
    if (!json_is_string(v)) {
      curl_slist_free_all(*out);
      *out = NULL;
      return apex_ctx_fail(ctx, APEX_E_INVALID_PARAMS, "param 'headers': '%s': want string", name);
    }
    const char *val = json_string_value(v);
    /* A token (RFC 9110) for the name, no line breaks in the value: a
     * header must not smuggle in another one. */
    int bad = name[0] == '\0';
    for (const char *p = name; *p && !bad; p++)
      bad = !(isalnum((unsigned char)*p) || strchr("!#$%&'*+-.^_`|~", *p));
    for (const char *p = val; *p && !bad; p++) bad = *p == '\r' || *p == '\n';
    if (bad) {
      curl_slist_free_all(*out);
      *out = NULL;
      return apex_ctx_fail(ctx, APEX_E_INVALID_PARAMS,
                           "param 'headers': '%s': not a valid header name or value", name);
    }
    char *line = NULL;
    /* "Name;" is curl's spelling of a header sent with an empty value. */
    int n = val[0] ? asprintf(&line, "%s: %s", name, val) : asprintf(&line, "%s;", name);
    struct curl_slist *next = n < 0 ? NULL : curl_slist_append(*out, line);
    free(n < 0 ? NULL : line);
    if (!next) {
      curl_slist_free_all(*out);
      *out = NULL;
      return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory building request headers");
    }
    *out = next;
  }
  return add_traceparent(ctx, h, out);
}

/* -------------------------------------------------------------- transfer */

typedef enum sink_kind { SINK_MEMORY, SINK_FILE } sink_kind_t;

/* One transfer: what the curl callbacks share with the handler. */
typedef struct xfer {
  apex_ctx_t *ctx;
  CURL *easy;
  const char *url;
  sink_kind_t kind;
  int status_checked; /* the status was looked at before the first byte */
  long bad_status;    /* a non-2xx final status stopped the body */
  /* SINK_MEMORY */
  unsigned char *buf;
  size_t len, cap, max;
  int truncate, over_cap, capped;
  /* SINK_FILE */
  int fd;
  int write_errno;
  EVP_MD_CTX *md; /* NULL: no digest wanted */
  /* resuming (download): what the file held before this response */
  uint64_t resume_from; /* the Range start asked for; 0: none asked */
  uint64_t base;        /* bytes kept from before: resume_from on a 206 */
  uint64_t cp_every;    /* checkpoint every this many bytes; 0: never */
  uint64_t last_cp;     /* done at the last checkpoint */
  int cp_sync;          /* fdatasync before each checkpoint (param fsync) */
  const char *tmp;      /* the temporary file (download's) */
  struct stat tmp_st;
  char validator[512];  /* the response's strong ETag, or Last-Modified */
  int restarted;        /* a Range was asked and the whole body came */
  /* progress */
  uint64_t done;
  uint64_t t0_ns;
  uint64_t last_ns; /* when the last body byte (or the start) was seen */
} xfer_t;

/* Progress by bytes: percentage when the length is known (else 0 until
 * the end), and bytes done, total (when known) and the mean rate since the
 * attempt's transfer began in details. Reported per chunk: Apex coalesces
 * (include/apex/plugin.h, apex_ctx_progress). */
static void report(xfer_t *x, int final) {
  curl_off_t cl = -1;
  (void)curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
  if (cl >= 0) cl += (curl_off_t)x->base; /* a 206's length is the rest's */
  double secs = (double)(now_ns() - x->t0_ns) / 1e9;
  double rate = secs > 0 ? (double)x->done / secs : 0.0;
  double pct = 0.0;
  if (final)
    pct = 100.0;
  else if (cl > 0)
    pct = 100.0 * (double)x->done / (double)cl;
  if (pct > 100.0) pct = 100.0;
  char msg[128];
  const double mib = 1024.0 * 1024.0;
  if (cl >= 0)
    snprintf(msg, sizeof msg, "%.1f MiB of %.1f MiB at %.1f MiB/s", (double)x->done / mib,
             (double)cl / mib, rate / mib);
  else
    snprintf(msg, sizeof msg, "%.1f MiB at %.1f MiB/s", (double)x->done / mib, rate / mib);
  json_t *details = cl >= 0 ? json_pack("{s:I, s:I, s:f}", "bytes_done", (json_int_t)x->done,
                                        "bytes_total", (json_int_t)cl, "rate_bps", rate)
                            : json_pack("{s:I, s:f}", "bytes_done", (json_int_t)x->done,
                                        "rate_bps", rate);
  apex_progress_update_t u = {
      .percentage = pct, .message = msg, .status = final ? "completed" : NULL, .details = details};
  (void)apex_ctx_progress_update(x->ctx, &u); /* a dropped report changes nothing */
  json_decref(details);
}

/* Before the first body byte: a final status that is not 2xx stops the
 * transfer (an error page is never written into a download, nor read past
 * this point into memory). Returns: 1 to go on, 0 to stop. */
static int status_ok(xfer_t *x) {
  if (x->status_checked) return 1;
  x->status_checked = 1;
  long code = 0;
  (void)curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
  if (code < 200 || code >= 300) {
    x->bad_status = code;
    return 0;
  }
  if (x->kind == SINK_FILE) {
    /* What resumes from here: the validator the next attempt sends in
     * If-Range (a weak ETag cannot vouch for bytes, RFC 9110 13.1.5). */
    struct curl_header *h = NULL;
    if (curl_easy_header(x->easy, "ETag", 0, CURLH_HEADER, -1, &h) == CURLHE_OK && h->value &&
        strncmp(h->value, "W/", 2) != 0 && strlen(h->value) < sizeof x->validator)
      strcpy(x->validator, h->value);
    else if (curl_easy_header(x->easy, "Last-Modified", 0, CURLH_HEADER, -1, &h) == CURLHE_OK &&
             h->value && strlen(h->value) < sizeof x->validator)
      strcpy(x->validator, h->value);
    if (x->resume_from > 0) {
      const char *cr = NULL;
      if (curl_easy_header(x->easy, "Content-Range", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
        cr = h->value;
      char want[64];
      snprintf(want, sizeof want, "bytes %llu-", (unsigned long long)x->resume_from);
      if (code == 206 && cr && strncmp(cr, want, strlen(want)) == 0) {
        x->base = x->done = x->resume_from; /* the rest comes: append */
      } else {
        /* The whole body (the resource changed, so If-Range failed, or
         * the server does no ranges): start the file over. */
        x->restarted = 1;
        x->base = x->done = 0;
        if (ftruncate(x->fd, 0) != 0 || lseek(x->fd, 0, SEEK_SET) != 0) {
          x->write_errno = errno;
          return 0;
        }
        if (x->md && EVP_DigestInit_ex(x->md, EVP_sha256(), NULL) != 1) {
          x->write_errno = EIO;
          return 0;
        }
      }
    }
  }
  return 1;
}

/* Saves where the download is (see "resuming a download"), after the bytes
 * it names are on disk. Returns: 0, or -1 with x->write_errno set for a
 * sync that failed (a checkpoint the store refused is logged: the transfer
 * goes on, only its resume point is older). */
static int download_checkpoint(xfer_t *x) {
  x->last_cp = x->done;
  /* Written bytes survive a killed process in the page cache; the sync is
   * for a power loss, which fsync=false gives up on (and the periodic
   * syncs halved a 1 GiB download's rate: bench Whttp). */
  if (x->cp_sync && fdatasync(x->fd) != 0) {
    x->write_errno = errno;
    return -1;
  }
  json_t *cp = json_pack("{s:i, s:s, s:s, s:I, s:I, s:I, s:s}", "v", 1, "url", x->url, "tmp",
                         x->tmp, "tmp_dev", (json_int_t)x->tmp_st.st_dev, "tmp_ino",
                         (json_int_t)x->tmp_st.st_ino, "offset", (json_int_t)x->done, "validator",
                         x->validator);
  int rc = cp ? apex_ctx_checkpoint(x->ctx, cp) : APEX_E_NOMEM;
  json_decref(cp);
  if (rc != APEX_OK && rc != APEX_E_INVALID)
    apex_ctx_log(x->ctx, APEX_LOG_WARN, "download of %s: checkpoint at %llu bytes not saved (%d)",
                 x->url, (unsigned long long)x->done, rc);
  return 0;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *user) {
  xfer_t *x = user;
  size_t n = size * nmemb;
  if (!status_ok(x)) return 0;
  if (x->kind == SINK_MEMORY) {
    curl_off_t cl = -1;
    if (x->len == 0 && !x->truncate &&
        curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) == CURLE_OK &&
        cl > (curl_off_t)x->max) {
      x->over_cap = 1; /* its Content-Length says so: not a byte more is read */
      return 0;
    }
    size_t room = x->max - x->len;
    size_t take = n <= room ? n : room;
    if (n > room) {
      if (!x->truncate) {
        x->over_cap = 1;
        return 0;
      }
      x->capped = 1;
    }
    if (x->len + take > x->cap) {
      size_t cap = x->cap ? x->cap : 64 * 1024;
      while (cap < x->len + take) cap *= 2;
      if (cap > x->max) cap = x->max;
      unsigned char *nb = realloc(x->buf, cap ? cap : 1);
      if (!nb) {
        x->write_errno = ENOMEM;
        return 0;
      }
      x->buf = nb;
      x->cap = cap;
    }
    memcpy(x->buf + x->len, data, take);
    x->len += take;
    x->done += take;
    x->last_ns = now_ns();
    report(x, 0);
    return x->capped ? 0 : n; /* stop once the cap is reached */
  }
  for (size_t off = 0; off < n;) {
    ssize_t w = write(x->fd, data + off, n - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      x->write_errno = errno;
      return 0;
    }
    off += (size_t)w;
  }
  if (x->md && EVP_DigestUpdate(x->md, data, n) != 1) {
    x->write_errno = EIO;
    return 0;
  }
  x->done += n;
  x->last_ns = now_ns();
  if (x->cp_every && x->done - x->last_cp >= x->cp_every) {
    /* Not at the very end: a resume from there would ask for an empty
     * range, which servers answer 416. */
    curl_off_t cl = -1;
    (void)curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    if ((cl < 0 || x->done < x->base + (uint64_t)cl) && download_checkpoint(x) != 0) return 0;
  }
  report(x, 0);
  return n;
}

/* Called by curl at least once a second, and as data flows: the cancel
 * check of last resort, when the ctx had no cancel fd to poll. */
static int on_progress(void *user, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
  xfer_t *x = user;
  return apex_ctx_is_cancelled(x->ctx) ? 1 : 0;
}

/* Transient curl failures: what a new connection may not meet again. */
static int curl_transient(CURLcode c) {
  switch (c) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
    case CURLE_QUIC_CONNECT_ERROR:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_AGAIN:
      return 1;
    default:
      return 0;
  }
}

/* Sets the options both actions share. Returns: APEX_OK or the failure
 * (ctx failed). */
static int setup_easy(apex_ctx_t *ctx, xfer_t *x, struct curl_slist *headers, char *errbuf) {
  CURL *e = x->easy;
  long max_redirects = (long)param_int(ctx, "max_redirects", 10);
  double connect_s = param_num(ctx, "connect_timeout_s", 30);
  int verify = param_bool(ctx, "verify_tls", 1);
  CURLcode c = CURLE_OK;
#define SET(opt, val)                                  \
  do {                                                 \
    if (c == CURLE_OK) c = curl_easy_setopt(e, opt, val); \
  } while (0)
  SET(CURLOPT_URL, x->url);
  SET(CURLOPT_ERRORBUFFER, errbuf);
  SET(CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for name lookups */
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_FOLLOWLOCATION, max_redirects > 0 ? 1L : 0L);
  SET(CURLOPT_MAXREDIRS, max_redirects);
  SET(CURLOPT_SSL_VERIFYPEER, verify ? 1L : 0L);
  SET(CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
  SET(CURLOPT_CONNECTTIMEOUT_MS, (long)(connect_s * 1000.0));
  SET(CURLOPT_USERAGENT, USER_AGENT);
  SET(CURLOPT_HTTPHEADER, headers);
  SET(CURLOPT_BUFFERSIZE, XFER_BUFFER);
  SET(CURLOPT_WRITEFUNCTION, on_write);
  SET(CURLOPT_WRITEDATA, x);
  SET(CURLOPT_XFERINFOFUNCTION, on_progress);
  SET(CURLOPT_XFERINFODATA, x);
  SET(CURLOPT_NOPROGRESS, 0L);
#undef SET
  if (c != CURLE_OK)
    return apex_ctx_fail(ctx, c == CURLE_OUT_OF_MEMORY ? APEX_E_NOMEM : APEX_E_EXECUTION,
                         "GET %s: cannot set up the transfer: %s", x->url, curl_easy_strerror(c));
  return APEX_OK;
}

/* Runs x's transfer to its end or a cancel. Returns: APEX_OK with *res
 * set to curl's result, or APEX_E_CANCELLED / the failure (ctx failed). */
static int perform(apex_ctx_t *ctx, xfer_t *x, const char *what, CURLcode *res) {
  CURLM *multi = curl_multi_init();
  if (!multi) return apex_ctx_fail(ctx, APEX_E_NOMEM, "%s: out of memory", what);
  int rc = APEX_OK;
  if (curl_multi_add_handle(multi, x->easy) != CURLM_OK) {
    curl_multi_cleanup(multi);
    return apex_ctx_fail(ctx, APEX_E_NOMEM, "%s: cannot start the transfer", what);
  }
  int cfd = apex_ctx_cancel_fd(ctx); /* negative: on_progress checks instead */
  /* A stall is "no body byte for this long", which curl's low-speed limit
   * (an average over a window) does not say: a byte every few seconds keeps
   * it happy. So it is timed here, from the start or the last byte. */
  uint64_t stall_ns = (uint64_t)param_int(ctx, "stall_timeout_s", 60) * 1000000000u;
  x->t0_ns = x->last_ns = now_ns();
  *res = CURLE_OK;
  for (;;) {
    if (apex_ctx_is_cancelled(ctx)) {
      rc = APEX_E_CANCELLED;
      break;
    }
    uint64_t now = now_ns();
    if (stall_ns && now - x->last_ns >= stall_ns) {
      rc = apex_ctx_fail(ctx, APEX_E_TRANSIENT, "%s: no data for %llu s after %llu bytes", what,
                         (unsigned long long)(stall_ns / 1000000000u),
                         (unsigned long long)x->done);
      break;
    }
    int running = 0;
    CURLMcode mc = curl_multi_perform(multi, &running);
    if (mc != CURLM_OK) {
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: %s", what, curl_multi_strerror(mc));
      break;
    }
    if (!running) {
      int left = 0;
      CURLMsg *msg;
      while ((msg = curl_multi_info_read(multi, &left)))
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == x->easy) *res = msg->data.result;
      break;
    }
    /* The wait ends on the transfer's sockets, curl's own timers (which
     * cap the time given here), the stall deadline or the cancel fd: a
     * cancel is seen at once. */
    int wait_ms = 1000;
    if (stall_ns) {
      uint64_t t = now_ns(), until = x->last_ns + stall_ns;
      uint64_t left_ms = until > t ? (until - t + 999999u) / 1000000u : 0;
      if (left_ms < (uint64_t)wait_ms) wait_ms = (int)left_ms;
    }
    struct curl_waitfd extra = {.fd = cfd, .events = CURL_WAIT_POLLIN};
    mc = curl_multi_poll(multi, cfd >= 0 ? &extra : NULL, cfd >= 0 ? 1 : 0, wait_ms, NULL);
    if (mc != CURLM_OK) {
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: %s", what, curl_multi_strerror(mc));
      break;
    }
  }
  (void)curl_multi_remove_handle(multi, x->easy);
  curl_multi_cleanup(multi);
  /* on_progress aborted the transfer: that was a cancel too. */
  if (rc == APEX_OK && *res == CURLE_ABORTED_BY_CALLBACK && apex_ctx_is_cancelled(ctx))
    rc = APEX_E_CANCELLED;
  return rc;
}

/* Fails ctx for a transfer that ended without a usable response: a curl
 * error, or a final status other than 2xx. what names the call ("GET URL",
 * "download of URL"). Returns: the code the handler returns. */
static int fail_transfer(apex_ctx_t *ctx, xfer_t *x, CURLcode res, const char *errbuf,
                         const char *what) {
  long code = x->bad_status;
  if (!code && res == CURLE_OK) (void)curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
  if (code && (code < 200 || code >= 300)) {
    int transient = code >= 500 || code == 408 || code == 429;
    if (!transient)
      return apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: HTTP %ld", what, code);
    curl_off_t after = 0;
    (void)curl_easy_getinfo(x->easy, CURLINFO_RETRY_AFTER, &after);
    if (after > 0) {
      double cap = param_num(ctx, "max_retry_after_s", 300);
      if ((double)after > cap)
        return apex_ctx_fail(ctx, APEX_E_EXECUTION,
                             "%s: HTTP %ld, and the server asks to retry after %lld s, more "
                             "than max_retry_after_s (%g)",
                             what, code, (long long)after, cap);
      (void)apex_ctx_retry_after(ctx, (double)after); /* an older host: the policy's delay */
      return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "%s: HTTP %ld (Retry-After: %lld s)", what,
                           code, (long long)after);
    }
    return apex_ctx_fail(ctx, APEX_E_TRANSIENT, "%s: HTTP %ld", what, code);
  }
  const char *detail = errbuf[0] ? errbuf : curl_easy_strerror(res);
  if (res == CURLE_TOO_MANY_REDIRECTS)
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: more than %lld redirects (%s)", what,
                         (long long)param_int(ctx, "max_redirects", 10), detail);
  return apex_ctx_fail(ctx, curl_transient(res) ? APEX_E_TRANSIENT : APEX_E_EXECUTION, "%s: %s",
                       what, detail);
}

/* Opens the easy handle for ctx's "url" after checking it. Returns:
 * APEX_OK, or the failure (ctx failed: INVALID_PARAMS for a URL that is not
 * http(s)). */
static int open_xfer(apex_ctx_t *ctx, xfer_t *x, struct curl_slist **headers, char *errbuf) {
  x->ctx = ctx;
  x->fd = -1;
  x->url = param_str(ctx, "url");
  if (!x->url) return apex_ctx_fail(ctx, APEX_E_INVALID_PARAMS, "param 'url' is required");
  const char *why = NULL;
  CURLU *u = parse_url(x->url, &why);
  if (!u) return apex_ctx_fail(ctx, APEX_E_INVALID_PARAMS, "param 'url': '%s': %s", x->url, why);
  curl_url_cleanup(u);
  int rc = build_headers(ctx, headers);
  if (rc != APEX_OK) return rc;
  x->easy = curl_easy_init();
  if (!x->easy) return apex_ctx_fail(ctx, APEX_E_NOMEM, "GET %s: out of memory", x->url);
  errbuf[0] = '\0';
  return setup_easy(ctx, x, *headers, errbuf);
}

/* ------------------------------------------------------------------- get */

/* The final response's headers as an object of lower-case names; a field
 * sent more than once is joined with ", " (RFC 9110, 5.3). Returns: a new
 * reference, or NULL without memory. */
static json_t *response_headers(CURL *easy) {
  json_t *out = json_object();
  struct curl_header *prev = NULL, *h;
  while (out && (h = curl_easy_nextheader(easy, CURLH_HEADER, -1, prev))) {
    prev = h;
    char name[256];
    size_t i = 0;
    for (; h->name[i] && i + 1 < sizeof name; i++) name[i] = (char)tolower((unsigned char)h->name[i]);
    name[i] = '\0';
    const char *value = h->value ? h->value : "";
    json_t *old = json_object_get(out, name);
    json_t *v = NULL;
    if (old) {
      char *joined = NULL;
      if (asprintf(&joined, "%s, %s", json_string_value(old), value) >= 0) {
        v = json_string(joined);
        free(joined);
      }
    } else {
      v = json_string(value);
    }
    /* A value that is not UTF-8 (headers are bytes) is left out rather
     * than fail the call. */
    if (v && json_object_set_new(out, name, v) != 0) {
      json_decref(out);
      out = NULL;
    }
  }
  return out;
}

/* The body as the result's "body": text when it is UTF-8 without NUL
 * bytes (jansson checks the UTF-8: no overlong forms or surrogates), else
 * base64. Returns: a new reference, or NULL without memory. */
static json_t *body_value(const unsigned char *buf, size_t len, const char **encoding) {
  if (!memchr(buf, 0, len)) {
    json_t *s = json_stringn((const char *)buf, len);
    if (s) {
      *encoding = "utf-8";
      return s;
    }
  }
  *encoding = "base64";
  size_t out_len = 4 * ((len + 2) / 3);
  unsigned char *b64 = malloc(out_len + 1);
  if (!b64) return NULL;
  int n = len ? EVP_EncodeBlock(b64, buf, (int)len) : 0;
  json_t *s = n >= 0 ? json_stringn((const char *)b64, (size_t)n) : NULL;
  free(b64);
  return s;
}

static int http_get(apex_ctx_t *ctx) {
  xfer_t x = {.kind = SINK_MEMORY};
  struct curl_slist *headers = NULL;
  char errbuf[CURL_ERROR_SIZE];
  char what[64 + 2048];
  int rc = open_xfer(ctx, &x, &headers, errbuf);
  if (rc != APEX_OK) goto out;
  snprintf(what, sizeof what, "GET %s", x.url);
  x.max = (size_t)param_int(ctx, "max_bytes", GET_MAX_DEFAULT);
  x.truncate = param_bool(ctx, "truncate", 0);
  report(&x, 0);

  CURLcode res;
  rc = perform(ctx, &x, what, &res);
  if (rc == APEX_E_CANCELLED) {
    rc = apex_ctx_fail(ctx, APEX_E_CANCELLED, "%s: cancelled (%s) after %llu bytes", what,
                       apex_ctx_cancel_reason(ctx), (unsigned long long)x.done);
    goto out;
  }
  if (rc != APEX_OK) goto out;
  if (x.over_cap) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION,
                       "%s: the body is larger than max_bytes (%zu); raise it or pass "
                       "truncate=true",
                       what, x.max);
    goto out;
  }
  if (x.write_errno == ENOMEM) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "%s: out of memory for the body", what);
    goto out;
  }
  if (!(x.capped && res == CURLE_WRITE_ERROR) && (res != CURLE_OK || x.bad_status)) {
    rc = fail_transfer(ctx, &x, res, errbuf, what);
    goto out;
  }
  if (!x.status_checked && !status_ok(&x)) { /* an empty body: the status is still to check */
    rc = fail_transfer(ctx, &x, res, errbuf, what);
    goto out;
  }

  long status = 0, redirects = 0;
  char *final_url = NULL;
  (void)curl_easy_getinfo(x.easy, CURLINFO_RESPONSE_CODE, &status);
  (void)curl_easy_getinfo(x.easy, CURLINFO_REDIRECT_COUNT, &redirects);
  (void)curl_easy_getinfo(x.easy, CURLINFO_EFFECTIVE_URL, &final_url);
  const char *encoding = NULL;
  json_t *body = body_value(x.buf ? x.buf : (const unsigned char *)"", x.len, &encoding);
  json_t *hdrs = response_headers(x.easy);
  json_t *result = body && hdrs
                       ? json_pack("{s:s, s:i, s:O, s:O, s:s, s:I, s:b, s:i}", "url",
                                   final_url ? final_url : x.url, "status", (int)status,
                                   "headers", hdrs, "body", body, "encoding", encoding, "bytes",
                                   (json_int_t)x.len, "truncated", x.capped, "redirects",
                                   (int)redirects)
                       : NULL;
  json_decref(body);
  json_decref(hdrs);
  if (!result) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "%s: out of memory building the result", what);
    goto out;
  }
  apex_ctx_set_result(ctx, result);
  report(&x, 1);
  rc = APEX_OK;

out:
  curl_easy_cleanup(x.easy); /* NULL is a no-op */
  curl_slist_free_all(headers);
  free(x.buf);
  return rc;
}

/* -------------------------------------------------------------- download */

/* Splits path into its folder (the caller frees it). Returns: NULL without
 * memory. */
static char *folder_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return strdup(".");
  if (slash == path) return strdup("/");
  return strndup(path, (size_t)(slash - path));
}

/* Moves tmp to path; without overwrite it fails (EEXIST) if path appeared
 * since the check before the transfer. Returns: 0 or -1 with errno. */
static int place(const char *tmp, const char *path, int overwrite) {
  if (overwrite) return rename(tmp, path);
  if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) return -1;
  if (link(tmp, path) != 0) return -1; /* file systems without RENAME_NOREPLACE */
  (void)unlink(tmp);
  return 0;
}

static int hex_digest(EVP_MD_CTX *md, char *hex) {
  unsigned char dig[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(md, dig, &n) != 1) return -1;
  static const char k_hex[] = "0123456789abcdef";
  for (unsigned int i = 0; i < n; i++) {
    hex[2 * i] = k_hex[dig[i] >> 4];
    hex[2 * i + 1] = k_hex[dig[i] & 0xf];
  }
  hex[2 * n] = '\0';
  return 0;
}

/* ---- resuming a download
 * The checkpoint (apex_ctx_checkpoint), saved every checkpoint_mib MiB of
 * body once the file's bytes up to there are fdatasync'd (written only,
 * with fsync=false: enough for a killed process, not for a power loss),
 * and once at 0:
 *   {"v": 1, "url": URL, "tmp": PATH, "tmp_dev": D, "tmp_ino": I,
 *    "offset": N, "validator": ETAG-OR-LAST-MODIFIED}
 * The attempt after a crash finds it (apex_ctx_checkpoint_get), checks that
 * the URL is the same and the temporary file is still the one it names (its
 * device and inode) and holds at least N bytes, cuts it back to N and asks
 * for the rest: "Range: bytes=N-" with "If-Range: VALIDATOR", so a resource
 * that changed since comes whole (200) and the file starts over, while an
 * unchanged one comes as 206 from N and is appended. With sha256 set, the
 * kept bytes are hashed from the file first, so the check covers the whole
 * body. Anything that does not match starts over with a new file (one of
 * ours is removed). A failed or cancelled attempt still removes its file:
 * only a crash leaves one behind, for the resume. */

/* Returns: 1 resumed (x->fd open at the checkpoint's offset, *tmp set,
 * the Range and If-Range set on the handle), 0 nothing to resume, or a
 * negative failure (ctx failed). */
static int download_resume(apex_ctx_t *ctx, xfer_t *x, char **tmp, struct curl_slist **headers,
                           const char *what) {
  json_t *cp = apex_ctx_checkpoint_get(ctx); /* borrowed, for this attempt */
  if (!cp) return 0;
  char eb[128];
  const char *path = json_string_value(json_object_get(cp, "tmp"));
  const char *url = json_string_value(json_object_get(cp, "url"));
  const char *validator = json_string_value(json_object_get(cp, "validator"));
  json_t *offv = json_object_get(cp, "offset");
  json_int_t off = json_is_integer(offv) ? json_integer_value(offv) : -1;
  if (json_integer_value(json_object_get(cp, "v")) != 1 || !path || !url || off < 0 ||
      strcmp(url, x->url) != 0)
    return 0;
  const char *why = NULL;
  struct stat st;
  int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0 || fstat(fd, &st) != 0) {
    why = "the partial file is gone";
  } else if ((json_int_t)st.st_dev != json_integer_value(json_object_get(cp, "tmp_dev")) ||
             (json_int_t)st.st_ino != json_integer_value(json_object_get(cp, "tmp_ino"))) {
    why = "the partial file's name now belongs to another file";
  } else if ((uint64_t)st.st_size < (uint64_t)off) {
    why = "the partial file is shorter than the checkpoint";
    (void)unlink(path);
  }
  if (why) {
    if (fd >= 0) close(fd);
    apex_ctx_log(ctx, APEX_LOG_INFO, "%s: cannot resume from '%s' (%s); starting over", what,
                 path, why);
    return 0;
  }
  if (ftruncate(fd, off) != 0 || lseek(fd, off, SEEK_SET) != off) {
    int e = errno;
    close(fd);
    return apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: cannot resume '%s' at %lld: %s", what, path,
                         (long long)off, errstr(e, eb, sizeof eb));
  }
  /* The kept bytes go into the digest first (read back from our file). */
  if (x->md && off > 0) {
    unsigned char *buf = malloc(1u << 20);
    if (!buf) {
      close(fd);
      return apex_ctx_fail(ctx, APEX_E_NOMEM, "%s: out of memory", what);
    }
    uint64_t at = 0;
    while (at < (uint64_t)off) {
      size_t want = (uint64_t)off - at < (1u << 20) ? (size_t)((uint64_t)off - at) : (1u << 20);
      ssize_t n = pread(fd, buf, want, (off_t)at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || EVP_DigestUpdate(x->md, buf, (size_t)n) != 1) {
        free(buf);
        close(fd);
        return apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: cannot read back '%s'", what, path);
      }
      at += (uint64_t)n;
    }
    free(buf);
  }
  *tmp = strdup(path);
  if (!*tmp) {
    close(fd);
    return apex_ctx_fail(ctx, APEX_E_NOMEM, "%s: out of memory", what);
  }
  x->fd = fd;
  x->tmp = *tmp;
  x->tmp_st = st;
  x->resume_from = x->last_cp = (uint64_t)off;
  x->done = (uint64_t)off;
  if (validator && validator[0] && strlen(validator) < sizeof x->validator)
    strcpy(x->validator, validator);
  if (off > 0) {
    char range[48];
    snprintf(range, sizeof range, "%lld-", (long long)off);
    struct curl_slist *h = *headers;
    char ifr[sizeof x->validator + 16];
    if (x->validator[0]) {
      snprintf(ifr, sizeof ifr, "If-Range: %s", x->validator);
      h = curl_slist_append(*headers, ifr);
      if (h) *headers = h;
    }
    if (!h || curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, *headers) != CURLE_OK ||
        curl_easy_setopt(x->easy, CURLOPT_RANGE, range) != CURLE_OK)
      return apex_ctx_fail(ctx, APEX_E_NOMEM, "%s: cannot set up the range request", what);
    apex_ctx_log(ctx, APEX_LOG_INFO, "%s: resuming at byte %lld", what, (long long)off);
  }
  return 1;
}

static int http_download(apex_ctx_t *ctx) {
  xfer_t x = {.kind = SINK_FILE};
  struct curl_slist *headers = NULL;
  char errbuf[CURL_ERROR_SIZE], eb[128];
  char what[64 + 2048];
  char *folder = NULL, *tmp = NULL;
  const char *path = param_str(ctx, "path");
  const char *want = param_str(ctx, "sha256");
  int overwrite = param_bool(ctx, "overwrite", 0);
  int rc = open_xfer(ctx, &x, &headers, errbuf);
  if (rc != APEX_OK) goto out;
  snprintf(what, sizeof what, "download of %s", x.url);

  /* Everything about the destination is checked, and the temporary file
   * made, before a byte is requested: bad input fails with nothing sent
   * and nothing written. */
  if (!path) {
    rc = apex_ctx_fail(ctx, APEX_E_INVALID_PARAMS, "param 'path' is required");
    goto out;
  }
  if (want) {
    int ok = strlen(want) == 64;
    for (const char *p = want; *p && ok; p++) ok = isxdigit((unsigned char)*p);
    if (!ok) {
      rc = apex_ctx_fail(ctx, APEX_E_INVALID_PARAMS,
                         "param 'sha256': want 64 hexadecimal digits, got '%s'", want);
      goto out;
    }
  }
  folder = folder_of(path);
  if (!folder) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
    goto out;
  }
  struct stat st;
  if (stat(folder, &st) != 0) {
    rc = apex_ctx_fail(ctx, APEX_E_INVALID_PARAMS, "param 'path': folder '%s': %s", folder,
                       errstr(errno, eb, sizeof eb));
    goto out;
  }
  if (!S_ISDIR(st.st_mode)) {
    rc = apex_ctx_fail(ctx, APEX_E_INVALID_PARAMS, "param 'path': '%s' is not a folder", folder);
    goto out;
  }
  if (lstat(path, &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      rc = apex_ctx_fail(ctx, APEX_E_INVALID_PARAMS, "param 'path': '%s' is a folder", path);
      goto out;
    }
    if (!overwrite) {
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION,
                         "'%s' already exists; pass overwrite=true to replace it", path);
      goto out;
    }
  }
  x.cp_every = (uint64_t)param_int(ctx, "checkpoint_mib", 16) * 1024u * 1024u;
  x.cp_sync = param_bool(ctx, "fsync", 1);
  if (want) {
    x.md = EVP_MD_CTX_new();
    if (!x.md || EVP_DigestInit_ex(x.md, EVP_sha256(), NULL) != 1) {
      rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "cannot start a sha256 digest");
      goto out;
    }
  }
  rc = download_resume(ctx, &x, &tmp, &headers, what);
  if (rc < 0) goto out;
  if (rc == 1) goto transfer;
  rc = APEX_OK;
  /* A short name of its own in the same folder (the rename must not cross
   * file systems; a path near NAME_MAX still works). */
  if (asprintf(&tmp, "%s/.apex-dl-XXXXXX", folder) < 0) {
    tmp = NULL;
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
    goto out;
  }
  x.fd = mkostemp(tmp, O_CLOEXEC);
  if (x.fd < 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot create a temporary file in '%s': %s",
                       folder, errstr(errno, eb, sizeof eb));
    free(tmp);
    tmp = NULL; /* nothing to remove */
    goto out;
  }
  /* mkostemp's 0600 is not what a download gets */
  if (fchmod(x.fd, 0644) != 0 || fstat(x.fd, &x.tmp_st) != 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot set the mode of '%s': %s", tmp,
                       errstr(errno, eb, sizeof eb));
    goto out;
  }
  x.tmp = tmp;
  /* A checkpoint at 0 names the file at once, so a crash before the first
   * real one leaves no orphan: the resumed attempt picks it up. */
  if (x.cp_every && download_checkpoint(&x) != 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot sync '%s': %s", tmp,
                       errstr(x.write_errno, eb, sizeof eb));
    goto out;
  }
transfer:
  report(&x, 0);

  CURLcode res;
  rc = perform(ctx, &x, what, &res);
  if (rc == APEX_E_CANCELLED) {
    rc = apex_ctx_fail(ctx, APEX_E_CANCELLED, "%s: cancelled (%s) after %llu bytes", what,
                       apex_ctx_cancel_reason(ctx), (unsigned long long)x.done);
    goto out;
  }
  if (rc != APEX_OK) goto out;
  if (x.write_errno) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: cannot write '%s': %s", what, tmp,
                       errstr(x.write_errno, eb, sizeof eb));
    goto out;
  }
  if (res != CURLE_OK || x.bad_status || (!x.status_checked && !status_ok(&x))) {
    rc = fail_transfer(ctx, &x, res, errbuf, what);
    goto out;
  }
  /* curl checks a body against its Content-Length (CURLE_PARTIAL_FILE);
   * checked again here, as the promise is ours. */
  curl_off_t cl = -1;
  (void)curl_easy_getinfo(x.easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
  if (cl >= 0 && (uint64_t)cl != x.done - x.base) {
    rc = apex_ctx_fail(ctx, APEX_E_TRANSIENT, "%s: got %llu bytes of a %lld-byte body", what,
                       (unsigned long long)x.done, (long long)cl);
    goto out;
  }
  char hex[2 * EVP_MAX_MD_SIZE + 1] = "";
  if (x.md) {
    if (hex_digest(x.md, hex) != 0) {
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: sha256 final failed", what);
      goto out;
    }
    if (strcasecmp(hex, want) != 0) {
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: sha256 mismatch: got %s, want %s", what, hex,
                         want);
      goto out;
    }
  }
  if (param_bool(ctx, "fsync", 1) && fsync(x.fd) != 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: cannot fsync '%s': %s", what, tmp,
                       errstr(errno, eb, sizeof eb));
    goto out;
  }
  int cr = close(x.fd);
  x.fd = -1;
  if (cr != 0) {
    rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "%s: cannot close '%s': %s", what, tmp,
                       errstr(errno, eb, sizeof eb));
    goto out;
  }
  if (apex_ctx_is_cancelled(ctx)) { /* e.g. a deadline that passed during fsync */
    rc = apex_ctx_fail(ctx, APEX_E_CANCELLED, "%s: cancelled (%s) before it was put in place",
                       what, apex_ctx_cancel_reason(ctx));
    goto out;
  }
  if (place(tmp, path, overwrite) != 0) {
    if (errno == EEXIST)
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION,
                         "'%s' already exists; pass overwrite=true to replace it", path);
    else
      rc = apex_ctx_fail(ctx, APEX_E_EXECUTION, "cannot rename '%s' to '%s': %s", tmp, path,
                         errstr(errno, eb, sizeof eb));
    goto out;
  }
  free(tmp);
  tmp = NULL; /* it is path now */
  if (param_bool(ctx, "fsync", 1)) {
    int dfd = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0)
      apex_ctx_log(ctx, APEX_LOG_WARN, "downloaded '%s' but could not fsync its folder", path);
    if (dfd >= 0) close(dfd);
  }

  long status = 0, redirects = 0;
  char *final_url = NULL;
  (void)curl_easy_getinfo(x.easy, CURLINFO_RESPONSE_CODE, &status);
  (void)curl_easy_getinfo(x.easy, CURLINFO_REDIRECT_COUNT, &redirects);
  (void)curl_easy_getinfo(x.easy, CURLINFO_EFFECTIVE_URL, &final_url);
  double secs = (double)(now_ns() - x.t0_ns) / 1e9;
  json_t *result = json_pack("{s:s, s:s, s:i, s:I, s:i, s:f}", "url", final_url ? final_url : x.url,
                             "path", path, "status", (int)status, "bytes", (json_int_t)x.done,
                             "redirects", (int)redirects, "seconds", secs);
  /* Only for a resumed download: the others keep the result they had. */
  if (result && x.base > 0 &&
      json_object_set_new(result, "resumed_from", json_integer((json_int_t)x.base)) != 0) {
    json_decref(result);
    result = NULL;
  }
  if (result && x.md && json_object_set_new(result, "sha256", json_string(hex)) != 0) {
    json_decref(result);
    result = NULL;
  }
  if (!result) {
    rc = apex_ctx_fail(ctx, APEX_E_NOMEM, "%s: out of memory building the result", what);
    goto out;
  }
  apex_ctx_set_result(ctx, result);
  report(&x, 1);
  rc = APEX_OK;

out:
  if (x.fd >= 0) close(x.fd);
  if (tmp) {
    (void)unlink(tmp); /* no partial file is left behind */
    free(tmp);
  }
  free(folder);
  EVP_MD_CTX_free(x.md); /* NULL is a no-op */
  curl_easy_cleanup(x.easy);
  curl_slist_free_all(headers);
  return rc;
}

/* ------------------------------------------------------------ descriptor */

/* A non-NULL state marks a successful curl_global_init, which shutdown
 * undoes (curl counts its inits, so several managers may load us). */
static int http_init(const apex_host_api_t *api, void **state, char *why, size_t why_len) {
  CURLcode c = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (c != CURLE_OK) {
    snprintf(why, why_len, "curl_global_init: %s", curl_easy_strerror(c));
    return -1;
  }
  static int k_inited;
  *state = &k_inited;
  return 0;
}

static void http_shutdown(void *state) {
  if (state) curl_global_cleanup();
}

#define COMMON_PARAMS                                                                            \
  {.name = "url", .type = APEX_PARAM_STRING, .required = 1, .has_min = 1, .min = 1,              \
   .has_max = 1, .max = 8192, .description = "http:// or https:// URL"},                          \
      {.name = "headers", .type = APEX_PARAM_OBJECT,                                             \
       .description = "request headers, name: value (strings)"},                                 \
      {.name = "max_redirects", .type = APEX_PARAM_INT, .default_json = "10", .has_min = 1,       \
       .min = 0, .has_max = 1, .max = 50, .description = "redirects followed; 0: none"},          \
      {.name = "verify_tls", .type = APEX_PARAM_BOOL, .default_json = "true",                    \
       .description = "verify the server's certificate and name (false: insecure)"},             \
      {.name = "connect_timeout_s", .type = APEX_PARAM_NUMBER, .default_json = "30",              \
       .has_min = 1, .min = 0.001, .has_max = 1, .max = 600,                                     \
       .description = "longest connect (transient when it passes)"},                             \
      {.name = "stall_timeout_s", .type = APEX_PARAM_INT, .default_json = "60", .has_min = 1,     \
       .min = 0, .has_max = 1, .max = 3600,                                                      \
       .description = "fail (transient) when no byte arrives for this long; 0: never"},          \
      {.name = "max_retry_after_s", .type = APEX_PARAM_NUMBER, .default_json = "300",            \
       .has_min = 1, .min = 0, .has_max = 1, .max = 86400,                                       \
       .description = "longest Retry-After honoured; a longer one fails the task"}

static const apex_param_spec_t k_get_params[] = {
    COMMON_PARAMS,
    {.name = "max_bytes", .type = APEX_PARAM_INT, .default_json = "4194304", .has_min = 1,
     .min = 0, .has_max = 1, .max = GET_MAX_LIMIT,
     .description = "largest body kept (at most 32 MiB)"},
    {.name = "truncate", .type = APEX_PARAM_BOOL, .default_json = "false",
     .description = "keep the first max_bytes of a larger body instead of failing"},
};

static const apex_param_spec_t k_download_params[] = {
    COMMON_PARAMS,
    {.name = "path", .type = APEX_PARAM_STRING, .required = 1, .has_min = 1, .min = 1,
     .description = "where the file goes (its folder must exist)"},
    {.name = "sha256", .type = APEX_PARAM_STRING,
     .description = "expected sha256 of the body, hex; a mismatch fails the task"},
    {.name = "overwrite", .type = APEX_PARAM_BOOL, .default_json = "false",
     .description = "replace path if it exists"},
    {.name = "fsync", .type = APEX_PARAM_BOOL, .default_json = "true",
     .description = "fsync the file (and its folder) before reporting success, and the "
                    "bytes each resume point names before saving it"},
    {.name = "checkpoint_mib", .type = APEX_PARAM_INT, .default_json = "16", .has_min = 1,
     .min = 0, .has_max = 1, .max = 1048576,
     .description = "save a resume point every this many MiB received; 0: never (no resume)"},
};

/* 3 retries, 1 s, 2 s, 4 s apart (+-20%, so clients that failed together
 * do not return together); a Retry-After replaces the delay. */
#define HTTP_RETRY                                                                     \
  {.max_attempts = 4, .initial_interval_s = 1.0, .backoff_coefficient = 2.0,           \
   .max_interval_s = 30.0, .jitter = 0.2}

static const apex_action_desc_t k_actions[] = {
    {
        .name = "get",
        .description = "GET a URL: status, headers, body (text or base64), size-capped",
        .handler = http_get,
        .kind = APEX_ACTION_BLOCKING,
        .params = k_get_params,
        .n_params = sizeof k_get_params / sizeof k_get_params[0],
        .default_timeout_s = 300,
        .default_retry = HTTP_RETRY,
        .flags = APEX_ACTION_F_IDEMPOTENT,
        .concurrency_key = http_concurrency_key,
    },
    {
        .name = "download",
        .description = "GET a URL into a file, put in place only complete and verified; "
                       "resumes after a crash with a Range request",
        .handler = http_download,
        .kind = APEX_ACTION_BLOCKING,
        .params = k_download_params,
        .n_params = sizeof k_download_params / sizeof k_download_params[0],
        .default_retry = HTTP_RETRY,
        .flags = APEX_ACTION_F_IDEMPOTENT | APEX_ACTION_F_RESUMABLE,
        .concurrency_key = http_concurrency_key,
    },
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT,
    .name = "http",
    .version = "1.0.0",
    .description = "HTTP(S) GET and downloads on libcurl, with progress, cancel and retries",
    .init = http_init,
    .shutdown = http_shutdown,
    .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0],
};

APEX_PLUGIN_DEFINE(k_plugin)
