/* `apex mcp`: its options, then the server on the chosen transport.
 *
 *   apex mcp [--http ADDR:PORT] [--plugin NAME]... [--plugin-path DIR]...
 *            [--workers N] [--bare-names] [--max-message-bytes N]
 *            [--session-timeout S] [--metrics-listen ADDR:PORT] [--store PATH]
 *
 * Single-threaded here; the server's threads start in mcp_server_new. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp.h"

static const char mcp_usage[] =
    "Usage: apex mcp [OPTIONS]\n"
    "\n"
    "Serves every loaded plugin action as a Model Context Protocol tool named\n"
    "PLUGIN.ACTION: over stdio (one JSON-RPC message per line; what MCP clients\n"
    "launch) or, with --http, the Streamable HTTP transport.\n"
    "\n"
    "Options:\n"
    "  --http ADDR:PORT        serve HTTP on ADDR:PORT at /mcp (e.g. 127.0.0.1:8080;\n"
    "                          PORT 0 picks a free one, printed on stderr); loopback\n"
    "                          unless ADDR says otherwise\n"
    "  --plugin NAME           serve this plugin (repeatable); default: every plugin\n"
    "                          found on the search path\n"
    "  --plugin-path DIR       search DIR for plugins first (repeatable)\n"
    "  --workers N             worker threads (default: the CPU count)\n"
    "  --bare-names            name tools ACTION instead of PLUGIN.ACTION\n"
    "  --max-message-bytes N   refuse a message (line or body) above N bytes\n"
    "                          (default 4194304)\n"
    "  --metrics-listen ADDR:PORT\n"
    "                          serve the live metrics at http://ADDR:PORT/metrics\n"
    "                          (Prometheus; OpenMetrics when asked; :PORT binds\n"
    "                          127.0.0.1, port 0 a free one; the URL goes to stderr)\n"
    "  --session-timeout S     HTTP: end a session after S seconds with no request\n"
    "                          and no stream read (its calls are cancelled,\n"
    "                          reason \"disconnected\"; default 600)\n"
    "  --store PATH            MCP tasks (task-augmented calls) are durable tasks\n"
    "                          of the store at PATH (an SQLite file, made if\n"
    "                          missing): they survive the client and a restart,\n"
    "                          and unfinished ones are taken over at start\n"
    "  -h, --help              show this help\n";

static const char *opt_value(int argc, char **argv, int *i, const char *name) {
  const char *a = argv[*i];
  size_t n = strlen(name);
  if (strncmp(a, name, n) == 0 && a[n] == '=') return a + n + 1;
  if (strcmp(a, name) == 0 && *i + 1 < argc) return argv[++*i];
  return NULL;
}

static int is_opt(const char *a, const char *name) {
  size_t n = strlen(name);
  return strcmp(a, name) == 0 || (strncmp(a, name, n) == 0 && a[n] == '=');
}

int cli_mcp_option_takes_value(const char *arg) {
  static const char *const valued[] = {"--http", "--plugin", "--workers", "--max-message-bytes",
                                       "--session-timeout", "--metrics-listen", "--store"};
  for (size_t i = 0; i < sizeof valued / sizeof valued[0]; i++)
    if (strcmp(arg, valued[i]) == 0) return 1;
  return 0;
}

int cli_cmd_mcp(int argc, char **argv, int cmd_at) {
  cli_opts_t o = {.command = "mcp", .timeout_s = -1, .retries = -1};
  mcp_config_t cfg = {.cli = &o};
  const char *http = NULL, *metrics_listen = NULL;
  cli_metrics_server_t *metrics = NULL;
  double idle_s = 600;
  const char **paths = calloc((size_t)argc, sizeof *paths);
  const char **plugins = calloc((size_t)argc, sizeof *plugins);
  int code = CLI_EXIT_OK;
  if (!paths || !plugins) {
    code = cli_fail(0, APEX_E_NOMEM, "out of memory");
    goto out;
  }
  o.plugin_paths = paths;
  cfg.plugins = plugins;
  for (int i = 1; i < argc; i++) {
    if (i == cmd_at) continue;
    const char *a = argv[i], *v;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(mcp_usage, stdout);
      goto out;
    } else if (strcmp(a, "--bare-names") == 0) {
      cfg.bare_names = 1;
    } else if (is_opt(a, "--http")) {
      if (!(v = opt_value(argc, argv, &i, "--http"))) goto missing;
      http = v;
    } else if (is_opt(a, "--store")) {
      if (!(v = opt_value(argc, argv, &i, "--store"))) goto missing;
      if (!*v) {
        code = cli_fail(0, APEX_E_INVALID, "--store: empty path");
        goto out;
      }
      cfg.store = v;
    } else if (is_opt(a, "--metrics-listen")) {
      if (!(v = opt_value(argc, argv, &i, "--metrics-listen"))) goto missing;
      metrics_listen = v; /* checked when it is bound */
    } else if (is_opt(a, "--session-timeout")) {
      if (!(v = opt_value(argc, argv, &i, "--session-timeout"))) goto missing;
      char *end = NULL;
      double t = strtod(v, &end);
      if (!*v || *end || !(t >= 0.1 && t <= 1e7)) {
        code = cli_fail(0, APEX_E_INVALID, "--session-timeout: '%s' is not a number of seconds "
                        "from 0.1 to 1e7", v);
        goto out;
      }
      idle_s = t;
    } else if (is_opt(a, "--plugin")) {
      if (!(v = opt_value(argc, argv, &i, "--plugin"))) goto missing;
      plugins[cfg.n_plugins++] = v;
    } else if (is_opt(a, "--plugin-path")) {
      if (!(v = opt_value(argc, argv, &i, "--plugin-path"))) goto missing;
      paths[o.n_plugin_paths++] = v;
    } else if (is_opt(a, "--workers") || is_opt(a, "--max-message-bytes")) {
      const char *name = is_opt(a, "--workers") ? "--workers" : "--max-message-bytes";
      if (!(v = opt_value(argc, argv, &i, name))) goto missing;
      char *end = NULL;
      errno = 0;
      unsigned long long n = strtoull(v, &end, 10);
      unsigned long long hi = name[2] == 'w' ? 1024 : (1ull << 30);
      if (!*v || *end || errno || n == 0 || n > hi || *v == '-') {
        code = cli_fail(0, APEX_E_INVALID, "%s: '%s' is not a whole number from 1 to %llu", name,
                        v, hi);
        goto out;
      }
      if (name[2] == 'w') o.workers = (unsigned)n;
      else cfg.max_message = (size_t)n;
    } else {
      code = cli_fail(0, APEX_E_INVALID, "mcp: unknown option or argument '%s' (apex mcp --help)", a);
      goto out;
    }
    continue;
  missing:
    code = cli_fail(0, APEX_E_INVALID, "%s needs a value", a);
    goto out;
  }
  /* SIGINT and SIGTERM end the server through a signalfd (the transports'
   * loops), SIGPIPE is a write error: blocked before any thread starts, so
   * every thread (the library's, libmicrohttpd's) inherits the mask and
   * none takes the default action. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  mcp_server_t *srv = NULL;
  code = mcp_server_new(&cfg, &srv);
  if (code != CLI_EXIT_OK) goto out;
  if (metrics_listen) {
    char why[200];
    if (cli_metrics_listen(mcp_server_manager(srv), metrics_listen, &metrics, why, sizeof why) != 0) {
      code = cli_fail(0, APEX_E_INVALID, "--metrics-listen %s", why);
      mcp_server_free(srv);
      goto out;
    }
    fprintf(stderr, "apex: metrics at %s\n", cli_metrics_url(metrics));
  }
  code = http ? mcp_http_run(srv, http, idle_s) : mcp_stdio_run(srv);
  cli_metrics_stop(metrics); /* before the manager goes */
  mcp_server_free(srv);
out:
  free(paths);
  free(plugins);
  return code;
}
