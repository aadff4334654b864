/* `apex worker`: serves a store's queue (apex_manager_serve, docs/workers.md)
 * until SIGTERM or SIGINT, then stops claiming, drains for --drain seconds
 * and gives back what it could not finish, so other workers take it at
 * once. Any number of workers, on one host or several, may serve one store.
 *
 * Output: on a terminal, one status line redrawn four times a second (held,
 * claimed, ended, rescued, the store's state) with the library's log lines
 * above it; otherwise JSON Lines on stdout: {"event":"worker",...} at the
 * start, {"event":"log","level","message"} for each library log line,
 * {"event":"status",...} every 5 seconds and {"event":"stopped",...} at the
 * end.
 *
 * Threads: the main thread parses, waits for signals and prints the status;
 * the library's threads call log_sink, which writes under g_out_mu, as the
 * status does. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batch.h"
#include "cli.h"

static const char worker_usage[] =
    "Usage: apex worker [OPTIONS]\n"
    "\n"
    "Serves the queue of a store that several processes share: claims due\n"
    "tasks, runs them (a resumable one from its last checkpoint), and takes\n"
    "over the running tasks of workers whose lease expired. Submit work with\n"
    "`apex run P.A --store URI --enqueue`; follow it with apex tasks/show/watch.\n"
    "Runs until SIGTERM or SIGINT: then stops claiming, lets the tasks it holds\n"
    "end for --drain seconds, and gives the rest back to the queue.\n"
    "\n"
    "Options:\n"
    "  --store URI           the store (default as apex tasks: $XDG_STATE_HOME/\n"
    "                        apex/tasks.db)\n"
    "  --plugins A,B,...     load these plugins (default: every plugin found)\n"
    "  --plugin-path DIR     search DIR for plugins first (repeatable)\n"
    "  --concurrency N       tasks held at once (default 8, up to 4096)\n"
    "  --batch N             most tasks one claim takes (default half of\n"
    "                        --concurrency, at most 64; up to 1024)\n"
    "  --limit SCOPE=N       at most N tasks of SCOPE running at once across\n"
    "                        every worker of the store; SCOPE is PLUGIN,\n"
    "                        PLUGIN.ACTION, key:KEY, or key:* (repeatable)\n"
    "  --drain SECONDS       on SIGTERM, how long held tasks may run on before\n"
    "                        they are given back (default 10)\n"
    "  --lease SECONDS       how long a claim lasts unrenewed: a dead worker's\n"
    "                        tasks are taken over after that (default 30)\n"
    "  --poll SECONDS        longest idle wait between looks for work\n"
    "                        (default 0.25)\n"
    "  --owner ID            this worker's owner id (default worker-HOST-PID)\n"
    "  --json                JSON Lines on stdout (the default when stdout is\n"
    "                        not a terminal)\n"
    "  -h, --help            show this help and exit\n"
    "\n"
    "Exit status: 0 after a stop by SIGTERM or SIGINT; 1 if the store or a\n"
    "plugin named by --plugins could not be opened; 2 for a bad option. A\n"
    "second signal during the drain exits at once (128 + the signal).\n";

static const char *const k_valued[] = {"--store", "--plugins", "--plugin-path", "--concurrency",
                                       "--batch", "--limit",   "--drain",       "--lease",
                                       "--poll",  "--owner"};

int cli_worker_option_takes_value(const char *arg) {
  for (size_t k = 0; k < sizeof k_valued / sizeof k_valued[0]; k++)
    if (strcmp(arg, k_valued[k]) == 0) return 1;
  return 0;
}

static pthread_mutex_t g_out_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_json;
static int g_line_shown; /* a status line is on screen (g_out_mu) */
static atomic_int g_sig_wfd = -1;
static atomic_int g_signals;

static void on_signal(int sig) {
  int e = errno;
  if (atomic_fetch_add(&g_signals, 1) >= 1) _exit(CLI_EXIT_SIGNAL_BASE + sig);
  int fd = atomic_load(&g_sig_wfd);
  unsigned char b = (unsigned char)sig;
  if (fd >= 0) (void)!write(fd, &b, 1);
  errno = e;
}

static const char *level_name(int level) {
  switch (level) {
  case APEX_LOG_ERROR: return "error";
  case APEX_LOG_WARN: return "warn";
  case APEX_LOG_INFO: return "info";
  default: return "debug";
  }
}

static void emit_line(json_t *o) {
  char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (!text) return;
  pthread_mutex_lock(&g_out_mu);
  fputs(text, stdout);
  fputc('\n', stdout);
  fflush(stdout);
  pthread_mutex_unlock(&g_out_mu);
  free(text);
}

static void log_sink(int level, const char *msg, void *user) {
  (void)user;
  if (g_json) {
    char *clean = cli_utf8_dup(msg); /* json_pack refuses invalid UTF-8 */
    emit_line(json_pack("{s:s, s:s, s:s}", "event", "log", "level", level_name(level), "message",
                        clean ? clean : "(no memory for the message)"));
    free(clean);
    return;
  }
  char *clean = cli_term_clean(msg);
  pthread_mutex_lock(&g_out_mu);
  if (g_line_shown) fputs("\r\033[K", stdout);
  fflush(stdout);
  fprintf(stderr, "apex: %s%s\n", level == APEX_LOG_ERROR ? "error: " : level == APEX_LOG_WARN ? "warn: " : "",
          clean ? clean : msg);
  g_line_shown = 0;
  pthread_mutex_unlock(&g_out_mu);
  free(clean);
}

typedef struct wopts {
  const char *store, *plugins, *owner;
  const char **plugin_paths;
  size_t n_plugin_paths;
  uint32_t concurrency, batch;
  double drain_s, lease_s, poll_s;
  batch_opts_t lim; /* --limit, parsed by apex batch's parser */
  int json, help;
} wopts_t;

static int bad(const char *fmt, ...) APEX_PRINTF(1, 2);
static int bad(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char msg[1024];
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  cli_eprint(msg);
  return CLI_EXIT_USAGE;
}

static int count_arg(const char *flag, const char *v, unsigned long max, uint32_t *out) {
  int plain = *v && strspn(v, "0123456789") == strlen(v) && strlen(v) < 10;
  unsigned long n = plain ? strtoul(v, NULL, 10) : 0;
  if (n < 1 || n > max) return bad("%s: '%s' is not a whole number from 1 to %lu", flag, v, max);
  *out = (uint32_t)n;
  return 0;
}

static int seconds_arg(const char *flag, const char *v, double min, double max, double *out) {
  char *end = NULL;
  int plain = *v && strspn(v, "0123456789.") == strlen(v);
  errno = 0;
  double d = plain ? strtod(v, &end) : -1;
  if (!plain || *end || errno || !isfinite(d) || d < min || d > max)
    return bad("%s: '%s' is not a number of seconds from %g to %g", flag, v, min, max);
  *out = d;
  return 0;
}

static int parse(wopts_t *o, int argc, char **argv, int cmd_at) {
  for (int i = 1; i < argc; i++) {
    if (i == cmd_at) continue;
    const char *a = argv[i];
    char name[64];
    const char *eq = strchr(a, '=');
    size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
    if (a[0] != '-' || nlen >= sizeof name) return bad("worker: unexpected argument '%s'", a);
    memcpy(name, a, nlen);
    name[nlen] = '\0';
    if (strcmp(name, "--json") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
      if (eq) return bad("%s takes no value", name);
      if (name[2] == 'j') o->json = 1;
      else o->help = 1;
      continue;
    }
    if (!cli_worker_option_takes_value(name))
      return bad("unknown option '%s' (see apex worker --help)", a);
    const char *v = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
    if (!v) return bad("%s needs a value", name);
    int rc = 0;
    if (strcmp(name, "--store") == 0) o->store = v;
    else if (strcmp(name, "--plugins") == 0) o->plugins = v;
    else if (strcmp(name, "--owner") == 0) o->owner = v;
    else if (strcmp(name, "--plugin-path") == 0) {
      if (!*v) return bad("--plugin-path: empty directory name");
      o->plugin_paths[o->n_plugin_paths++] = v;
    } else if (strcmp(name, "--concurrency") == 0) rc = count_arg(name, v, 4096, &o->concurrency);
    else if (strcmp(name, "--batch") == 0) rc = count_arg(name, v, 1024, &o->batch);
    else if (strcmp(name, "--drain") == 0) rc = seconds_arg(name, v, 0, 86400, &o->drain_s);
    else if (strcmp(name, "--lease") == 0) rc = seconds_arg(name, v, 0.5, 86400, &o->lease_s);
    else if (strcmp(name, "--poll") == 0) rc = seconds_arg(name, v, 0.001, 3600, &o->poll_s);
    else if (strcmp(name, "--limit") == 0) {
      if (cli_batch_parse_limit(&o->lim, v) != 0) {
        cli_eprint(o->lim.why);
        return cli_exit_code(o->lim.code);
      }
    }
    if (rc) return rc;
  }
  return 0;
}

/* "worker-HOST-PID", HOST cut to what an owner id allows. */
static void default_owner(char *buf, size_t n) {
  char host[64] = "host";
  if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "host");
  host[sizeof host - 1] = '\0';
  for (char *p = host; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '.' || *p == '_' || *p == '-'))
      *p = '_';
  snprintf(buf, n, "worker-%s-%d", host, (int)getpid());
}

/* Loads --plugins (each must load) or every plugin found (warns). Returns:
 * 0, or an exit code (reported). */
static int load(apex_manager_t *m, const wopts_t *o) {
  if (!o->plugins) {
    apex_error_t *err = NULL;
    if (apex_manager_load_all(m, &err) != APEX_OK && err) log_sink(APEX_LOG_WARN, apex_error_message(err), NULL);
    apex_error_unref(err);
    return 0;
  }
  char *list = strdup(o->plugins), *save = NULL;
  if (!list) return cli_fail(0, APEX_E_NOMEM, "out of memory");
  int code = 0;
  for (char *p = strtok_r(list, ",", &save); p && !code; p = strtok_r(NULL, ",", &save)) {
    apex_error_t *err = NULL;
    int rc = apex_manager_load_named(m, p, &err);
    if (rc != APEX_OK) {
      code = cli_fail(0, rc, "--plugins: cannot load '%s': %s", p,
                      err ? apex_error_message(err) : apex_strerror(rc));
      if (code == CLI_EXIT_USAGE) code = CLI_EXIT_FAILED;
    }
    apex_error_unref(err);
  }
  free(list);
  return code;
}

static void status(apex_manager_t *m, const wopts_t *o, const char *event) {
  apex_serve_stats_t s = APEX_SERVE_STATS_INIT;
  if (apex_manager_serve_stats(m, &s) != APEX_OK) return;
  if (g_json || event) {
    emit_line(json_pack("{s:s, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:b}", "event",
                        event ? event : "status", "held", (int)s.held, "concurrency",
                        (int)o->concurrency, "claimed", (json_int_t)s.claimed, "rescued",
                        (json_int_t)s.rescued, "ended", (json_int_t)s.ended, "discarded",
                        (json_int_t)s.discarded, "released", (json_int_t)s.released,
                        "store_errors", (json_int_t)s.store_errors, "store_ok", s.store_ok));
    return;
  }
  pthread_mutex_lock(&g_out_mu);
  printf("\r\033[Kworker: %u/%u held, %llu claimed, %llu ended, %llu rescued%s", (unsigned)s.held,
         (unsigned)o->concurrency, (unsigned long long)s.claimed, (unsigned long long)s.ended,
         (unsigned long long)s.rescued, s.store_ok ? "" : ", store unreachable (retrying)");
  fflush(stdout);
  g_line_shown = 1;
  pthread_mutex_unlock(&g_out_mu);
}

int cli_cmd_worker(int argc, char **argv, int cmd_at) {
  wopts_t o = {.concurrency = 8, .drain_s = 10};
  o.plugin_paths = calloc((size_t)argc + 1, sizeof *o.plugin_paths);
  o.lim.limits = calloc((size_t)argc + 1, sizeof *o.lim.limits);
  o.lim.rates = calloc(1, sizeof *o.lim.rates);
  apex_serve_limit_t *lims = calloc((size_t)argc + 1, sizeof *lims);
  apex_manager_t *m = NULL;
  char *store = NULL;
  int code = CLI_EXIT_OK;
  int fds[2] = {-1, -1};
  if (!o.plugin_paths || !o.lim.limits || !o.lim.rates || !lims) {
    code = cli_fail(0, APEX_E_NOMEM, "out of memory");
    goto out;
  }
  if ((code = parse(&o, argc, argv, cmd_at)) != 0) goto out;
  if (o.help) {
    fputs(worker_usage, stdout);
    goto out;
  }
  g_json = o.json || !isatty(STDOUT_FILENO);
  cli_opts_t co = {.store = o.store, .json = 0};
  if (!(store = cli_store_path(&co))) {
    code = CLI_EXIT_FAILED;
    goto out;
  }
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    code = cli_fail(0, APEX_E_IO, "cannot handle signals: %s", strerror(errno));
    goto out;
  }
  atomic_store(&g_sig_wfd, fds[1]);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) {
    code = cli_fail(0, APEX_E_IO, "cannot handle signals: %s", strerror(errno));
    goto out;
  }
  signal(SIGPIPE, SIG_IGN);

  char owner[128];
  if (o.owner) snprintf(owner, sizeof owner, "%s", o.owner);
  else default_owner(owner, sizeof owner);
  apex_manager_config_t cfg;
  apex_manager_config_init(&cfg);
  /* A worker thread per task held, and a few for the children a handler
   * spawns. */
  cfg.workers = o.concurrency + 2;
  cfg.log = log_sink;
  cfg.store = store;
  cfg.store_owner = owner;
  cfg.store_lease_s = o.lease_s;
  int rc = apex_manager_new(&cfg, &m);
  if (rc != APEX_OK) {
    code = cli_fail(0, rc, "cannot serve '%s' (see the message above)", store);
    if (code == CLI_EXIT_USAGE) code = CLI_EXIT_FAILED;
    goto out;
  }
  for (size_t i = 0; i < o.n_plugin_paths; i++)
    if ((rc = apex_manager_add_plugin_path(m, o.plugin_paths[i])) != APEX_OK) {
      code = bad("--plugin-path '%s': %s", o.plugin_paths[i], apex_strerror(rc));
      goto out;
    }
  if ((code = load(m, &o)) != 0) goto out;

  apex_serve_config_t sc;
  apex_serve_config_init(&sc);
  sc.concurrency = o.concurrency;
  sc.batch = o.batch;
  sc.poll_s = o.poll_s;
  for (size_t i = 0; i < o.lim.n_limits; i++) {
    lims[i].scope = o.lim.limits[i].scope;
    lims[i].name = o.lim.limits[i].name;
    lims[i].max = o.lim.limits[i].limit;
  }
  sc.limits = lims;
  sc.n_limits = o.lim.n_limits;
  apex_error_t *err = NULL;
  rc = apex_manager_serve(m, &sc, &err);
  if (rc != APEX_OK) {
    code = cli_fail(0, rc, "cannot serve '%s': %s", store,
                    err ? apex_error_message(err) : apex_strerror(rc));
    apex_error_unref(err);
    goto out;
  }
  if (g_json)
    emit_line(json_pack("{s:s, s:s, s:s, s:i, s:i}", "event", "worker", "store", store, "owner",
                        owner, "pid", (int)getpid(), "concurrency", (int)o.concurrency));
  int64_t next_status = cli_now_ms() + 5000;
  int sig = 0;
  while (!sig) {
    struct pollfd p = {.fd = fds[0], .events = POLLIN};
    int n = poll(&p, 1, g_json ? 1000 : 250);
    if (n < 0 && errno != EINTR) break;
    unsigned char b;
    if (n > 0 && read(fds[0], &b, 1) == 1) sig = b;
    if (sig) break;
    if (!g_json) status(m, &o, NULL);
    else if (cli_now_ms() >= next_status) {
      status(m, &o, NULL);
      next_status = cli_now_ms() + 5000;
    }
  }
  if (g_json)
    emit_line(json_pack("{s:s, s:s, s:f}", "event", "stopping", "signal",
                        sig == SIGINT ? "SIGINT" : "SIGTERM", "drain_s", o.drain_s));
  else
    log_sink(APEX_LOG_INFO, "stopping: no more claims; draining what is held", NULL);
  size_t released = 0;
  apex_manager_serve_stop(m, o.drain_s, &released, NULL);
  if (!g_json) { /* the last status line, kept on the screen */
    status(m, &o, NULL);
    pthread_mutex_lock(&g_out_mu);
    fputc('\n', stdout);
    g_line_shown = 0;
    pthread_mutex_unlock(&g_out_mu);
  } else
    status(m, &o, "stopped");
out:
  if (m) apex_manager_destroy(m, 1000);
  atomic_store(&g_sig_wfd, -1);
  if (fds[0] >= 0) close(fds[0]);
  if (fds[1] >= 0) close(fds[1]);
  cli_batch_opts_free(&o.lim);
  free(o.plugin_paths);
  free(lims);
  free(store);
  return code;
}
