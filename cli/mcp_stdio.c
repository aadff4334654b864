/* The stdio transport of `apex mcp`: one client, JSON-RPC messages one per
 * line on stdin, answers and notifications one per line on stdout (MCP's
 * stdio transport: newline-delimited, no embedded newlines; our compact
 * JSON never has one). stderr is for humans.
 *
 * One thread, one poll loop over stdin, the manager's dispatch fd, the log
 * queue's pipe and a signalfd (SIGINT, SIGTERM). After it wrote a line, the
 * loop polls the same set without sleeping for a bounded time before it
 * sleeps, while the client's recent lines came back that fast (a client
 * calling in a row): its next request is then read with no wake-up of this
 * thread, which on a VM costs both sides tens of microseconds (W16,
 * bench/analysis.md). A line longer than the
 * message bound is dropped as it streams in (never buffered whole) and
 * answered with -32600 once its newline arrives. stdin's end is the client
 * going away: its calls are cancelled with reason "disconnected", the loop
 * waits (a bounded time) for them to end, and the command exits 0.
 * Writes to stdout block: a client that stops reading stops the server,
 * which is what a pipe's back-pressure means. */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "mcp.h"

/* After stdin's end: how long cancelled calls get to end before exit. */
#define DRAIN_MS 2000

/* How long the loop watches a call it just started before it sleeps
 * (mcp_server_watch_newest): about what a sleep and a wake-up cost. */
#define WATCH_NS 20000u

/* How long the loop polls, without sleeping, for the client's next line
 * after it wrote one (watch_fds). A client calling in a row on another CPU
 * sends within about one wake-up of its own (~20 us on this VM), plus
 * margin for a loaded machine. */
#define IDLE_WATCH_NS 50000u

/* The saturating count (0..3) of whether the client's recent next lines
 * came within IDLE_WATCH_NS of the last line out; the loop watches at 2 or
 * more. A client that takes longer (the SDK client's own work per call,
 * a person) costs then no CPU for watches that would only expire. */
#define PACE_WATCH 2
#define PACE_MAX 3

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Polls the epoll set without sleeping until something is ready or
 * budget_ns passed. Returns: epoll_wait's count (0: nothing came in time;
 * the caller then sleeps in epoll_wait as usual, so a line that comes
 * later is read all the same). It yields the CPU every few polls: the
 * client may share this CPU, and it needs it to send. */
static int watch_fds(int ep, struct epoll_event *evs, int max, uint64_t budget_ns) {
  uint64_t until = mono_ns() + budget_ns;
  for (unsigned i = 1;; i++) {
    int n = epoll_wait(ep, evs, max, 0);
    if (n != 0) return n;
    for (int k = 0; k < 8; k++) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    if (i % 4 == 0) {
      if (mono_ns() >= until) return 0;
      (void)sched_yield(); /* cannot fail on Linux; a failed one is only a missed hint */
    }
  }
}

static int ep_add(int ep, int fd, uint32_t slot) {
  struct epoll_event e = {.events = EPOLLIN, .data.u32 = slot};
  return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

typedef struct stdio_state {
  int out_failed;
  int sent; /* a line went out since the loop last looked */
} stdio_state_t;

static void stdio_send(void *tuser, void *stream, const json_t *msg) {
  (void)stream;
  stdio_state_t *st = tuser;
  if (st->out_failed) return;
  st->sent = 1;
  size_t n;
  char *line = mcp_dump(msg, &n);
  if (!line) return;
  line[n] = '\n'; /* replaces the NUL: written by length */
  const char *p = line;
  size_t left = n + 1;
  while (left > 0) {
    ssize_t w = write(STDOUT_FILENO, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      st->out_failed = 1; /* the client closed its end */
      break;
    }
    p += w;
    left -= (size_t)w;
  }
  free(line);
}

static void stdio_done(void *tuser, void *stream) {
  (void)tuser;
  (void)stream;
}

static const mcp_transport_ops_t stdio_ops = {stdio_send, stdio_done};

static void handle_line(mcp_session_t *s, const char *line, size_t len) {
  size_t i = 0;
  while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
  if (i == len) return; /* blank lines carry nothing */
  mcp_msg_t msg;
  json_t *err = NULL;
  if (mcp_parse(line, len, &msg, &err) != 0) mcp_session_reject(s, err, NULL);
  else mcp_session_handle(s, &msg, NULL);
}

int mcp_stdio_run(mcp_server_t *srv) {
  stdio_state_t st = {0};
  mcp_session_t *s = mcp_session_new(srv, &stdio_ops, &st);
  if (!s) return cli_fail(0, APEX_E_NOMEM, "out of memory");
  /* Blocked by cli_cmd_mcp before any thread started. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  int dfd, lfd;
  mcp_server_fds(srv, &dfd, &lfd);
  size_t max = mcp_server_max_message(srv);
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  if (!buf) {
    mcp_session_close(s);
    return cli_fail(0, APEX_E_NOMEM, "out of memory");
  }
  int eof = 0, discarding = 0, code = CLI_EXIT_OK;
  int64_t eof_ms = 0;
  /* epoll, not poll: the four fds are registered once, not on every wait
   * (two waits per call; W16). Level-triggered: what is left unread shows
   * at the next wait. */
  int ep = epoll_create1(EPOLL_CLOEXEC);
  /* A regular file or /dev/null on stdin cannot be watched (EPERM): it is
   * always readable, so the loop reads it without waiting. */
  int stdin_always = 0;
  if (ep >= 0 && ep_add(ep, STDIN_FILENO, 0) != 0) {
    if (errno != EPERM) {
      close(ep);
      ep = -1;
    }
    stdin_always = 1;
  }
  if (ep < 0 || ep_add(ep, dfd, 1) != 0 ||
      ep_add(ep, lfd, 2) != 0 || (sfd >= 0 && ep_add(ep, sfd, 3) != 0)) {
    if (ep >= 0) close(ep);
    free(buf);
    mcp_session_close(s);
    if (sfd >= 0) close(sfd);
    return cli_fail(0, APEX_E_IO, "cannot start: %s", strerror(errno));
  }
  int watched = 0; /* the last batch's call ended while watched: pump now */
  int pace = PACE_WATCH; /* see PACE_WATCH */
  uint64_t sent_ns = 0;  /* when the last line went out, until stdin fired */
  for (;;) {
    if (eof && (mcp_server_live_calls(srv) == 0 || cli_now_ms() - eof_ms > DRAIN_MS)) break;
    int ready[4] = {0, 0, 0, 0};
    if (watched) {
      /* Its DONE is queued (or about to be: the eventfd then wakes the
       * next wait): deliver it before sleeping. */
      watched = 0;
      ready[1] = 1;
    } else {
      struct epoll_event evs[4];
      int n = 0, live = !eof && !stdin_always;
      if (st.sent) {
        st.sent = 0;
        if (live) sent_ns = mono_ns();
        /* The client's next line is likely microseconds away: poll for it
         * instead of sleeping (the header). */
        if (live && pace >= PACE_WATCH) n = watch_fds(ep, evs, 4, IDLE_WATCH_NS);
      }
      /* --store: a tasks/result may be waiting on the store. */
      if (n == 0) n = epoll_wait(ep, evs, 4, eof ? 50 : stdin_always ? 0 : mcp_server_timeout_ms(srv));
      if (n < 0 && errno != EINTR) break;
      for (int i = 0; i < n; i++) ready[evs[i].data.u32] = 1;
      if (stdin_always && !eof) ready[0] = 1;
      if (ready[0] && sent_ns) {
        /* How fast the client came back this time decides the next watch. */
        if (mono_ns() - sent_ns <= IDLE_WATCH_NS) pace += pace < PACE_MAX;
        else pace -= pace > 0;
        sent_ns = 0;
      }
    }
    if (ready[3]) {
      code = CLI_EXIT_SIGNAL_BASE + SIGTERM;
      struct signalfd_siginfo si;
      if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
        code = CLI_EXIT_SIGNAL_BASE + (int)si.ssi_signo;
      break;
    }
    if (ready[1] || ready[2]) mcp_server_pump_ready(srv, ready[2]);
    mcp_server_tick(srv);
    if (!eof && ready[0]) {
      if (cap - len < 4096) {
        char *nb = realloc(buf, cap * 2);
        if (!nb) break;
        buf = nb;
        cap *= 2;
      }
      ssize_t r = read(STDIN_FILENO, buf + len, cap - len);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        eof = 1;
        eof_ms = cli_now_ms();
        if (!stdin_always) (void)epoll_ctl(ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
        /* The client went away: its calls are cancelled, none answered. */
        mcp_session_close(s);
        s = NULL;
        continue;
      }
      len += (size_t)r;
      size_t start = 0;
      for (;;) {
        char *nl = memchr(buf + start, '\n', len - start);
        if (!nl) break;
        size_t l = (size_t)(nl - (buf + start));
        if (discarding) {
          discarding = 0;
          mcp_session_reject(s, mcp_error(NULL, MCP_INVALID_REQUEST, "message too large", NULL),
                             NULL);
        } else if (l > max) {
          mcp_session_reject(s, mcp_error(NULL, MCP_INVALID_REQUEST, "message too large", NULL),
                             NULL);
        } else {
          handle_line(s, buf + start, l);
        }
        start += l + 1;
      }
      memmove(buf, buf + start, len - start);
      len -= start;
      /* A line past the bound is not kept: drop what came, remember to
       * answer when its end arrives. */
      if (len > max) {
        discarding = 1;
        len = 0;
      }
      /* A call it started may end within microseconds (a no-op): watch
       * for that instead of sleeping and being woken for it. */
      watched = mcp_server_watch_newest(srv, WATCH_NS);
      /* Keep the buffer near its working size after a big message. */
      if (cap > 65536 && len < 16384) {
        char *nb = realloc(buf, 65536);
        if (nb) {
          buf = nb;
          cap = 65536;
        }
      }
    }
  }
  close(ep);
  free(buf);
  if (s) mcp_session_close(s);
  if (sfd >= 0) close(sfd);
  return code;
}
