/* `apex run --detach`: the half that runs in the command the user typed.
 *
 * What runs a detached task: a runner, which is this same program started
 * again (/proc/self/exe, the same arguments plus --store) with CLI_RUNNER_ENV
 * in its environment, in a session of its own (setsid: no controlling
 * terminal, so closing the shell sends it no SIGHUP, and a Ctrl-C typed in
 * the shell reaches the shell's foreground group, not it), stdin on
 * /dev/null and stderr appended to runner.log beside the store. It owns a
 * manager on the store, submits the task durable, runs it to its end and
 * exits: one runner per detached task, so nothing lingers once the work is
 * done, and runners of several tasks share the store as any processes do
 * (docs/store.md). Its stdout is a pipe to us until it has submitted the
 * task (run.c, runner_submitted): its first line is either
 * {"event":"submitted","task":ID,...} or the result line of a failure
 * before any task existed (bad params, unknown plugin), which we report as
 * `run` reports it, with the same exit code. Then we print the id and exit
 * 0; the runner goes on alone.
 *
 * A runner killed before its task ended (SIGKILL, a crash, a reboot)
 * leaves it in the store as running with a lease that expires: `apex
 * resume` takes it over from its last checkpoint.
 *
 * Threads: main thread only, before any manager exists in this process (the
 * runner is spawned, not forked, so it starts clean). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

extern char **environ;

/* How long we wait for the runner's first line: it loads a plugin (whose
 * init may be slow) and commits one row. */
#define RUNNER_REPLY_MS 60000

/* Returns: env plus CLI_RUNNER_ENV=1 (malloc'd array of borrowed strings;
 * caller frees the array), or NULL on no memory. */
static char **runner_env(void) {
  size_t n = 0;
  while (environ[n]) n++;
  char **env = calloc(n + 2, sizeof *env);
  if (!env) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], CLI_RUNNER_ENV "=", sizeof CLI_RUNNER_ENV) != 0) env[k++] = environ[i];
  env[k++] = (char *)CLI_RUNNER_ENV "=1";
  env[k] = NULL;
  return env;
}

/* Reads the runner's first line from fd into buf. Returns: its length, or
 * -1 (EOF before a newline, a read error, or no line in RUNNER_REPLY_MS). */
static ssize_t read_reply(int fd, char *buf, size_t cap) {
  size_t len = 0;
  int64_t end = cli_now_ms() + RUNNER_REPLY_MS;
  while (len + 1 < cap) {
    int64_t left = end - cli_now_ms();
    if (left <= 0) return -1;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int n = poll(&pfd, 1, (int)left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    ssize_t r = read(fd, buf + len, cap - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    len += (size_t)r;
    buf[len] = '\0';
    char *nl = memchr(buf, '\n', len);
    if (nl) {
      *nl = '\0';
      return nl - buf;
    }
  }
  return -1;
}

/* Returns: s as one shell word, to paste back into a command (single
 * quotes when it has anything but the usual path characters), malloc'd; or
 * NULL when memory ran out. */
static char *shell_quote(const char *s) {
  size_t n = strlen(s);
  if (n && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:=@%+,-") == n)
    return strdup(s);
  char *q = malloc(4 * n + 3);
  if (!q) return NULL;
  char *w = q;
  *w++ = '\'';
  for (const char *r = s; *r; r++) {
    if (*r == '\'') {
      memcpy(w, "'\\''", 4);
      w += 4;
    } else {
      *w++ = *r;
    }
  }
  *w++ = '\'';
  *w = '\0';
  return q;
}

int cli_detach(const cli_opts_t *o, const char *store, int chosen) {
  /* runner.log beside the store: where a runner's own complaints go. */
  char log[PATH_MAX];
  const char *slash = strrchr(store, '/');
  int n = slash ? snprintf(log, sizeof log, "%.*s/runner.log", (int)(slash - store), store)
                : snprintf(log, sizeof log, "runner.log");
  if (n < 0 || (size_t)n >= sizeof log)
    return cli_fail(o->json, APEX_E_INVALID, "--store: the path is too long");

  /* The runner's argv: ours, with --store made explicit (it would resolve
   * the same default, but the environment is not ours to trust twice). */
  char **argv = calloc((size_t)o->argc + 3, sizeof *argv);
  char **env = runner_env();
  if (!argv || !env) {
    free(argv);
    free(env);
    return cli_fail(o->json, APEX_E_NOMEM, "out of memory");
  }
  argv[0] = o->argv[0];
  argv[1] = (char *)"--store";
  argv[2] = (char *)store;
  for (int i = 1; i < o->argc; i++) argv[i + 2] = o->argv[i];

  /* The runner's stderr is opened by posix_spawn in the child, whose
   * failure comes back as a bare errno ("cannot start the runner: No such
   * file or directory" for a store in a missing folder): opened here first,
   * so the message names the file. */
  int logfd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (logfd < 0) {
    int e = errno;
    free(argv);
    free(env);
    return cli_fail(o->json, APEX_E_IO, "cannot open the runner's log '%s' (beside the store): %s",
                    log, strerror(e));
  }
  close(logfd);

  int fds[2] = {-1, -1};
  int code = CLI_EXIT_OK;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  int fa_ok = 0, attr_ok = 0;
  if (pipe2(fds, O_CLOEXEC) != 0) {
    code = cli_fail(o->json, APEX_E_IO, "cannot start the runner: pipe: %s", strerror(errno));
    goto out;
  }
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  /* We ignore SIGPIPE (main.c); the runner sets its own up. */
  sigaddset(&defaults, SIGPIPE);
  int rc = posix_spawn_file_actions_init(&fa);
  fa_ok = rc == 0;
  if (rc == 0) rc = posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (rc == 0) rc = posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  if (rc == 0)
    rc = posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, log,
                                          O_WRONLY | O_APPEND | O_CREAT, 0600);
  if (rc == 0) rc = posix_spawnattr_init(&attr);
  attr_ok = fa_ok && rc == 0;
  if (rc == 0)
    rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                             POSIX_SPAWN_SETSIGDEF);
  if (rc == 0) rc = posix_spawnattr_setsigmask(&attr, &none);
  if (rc == 0) rc = posix_spawnattr_setsigdefault(&attr, &defaults);
  pid_t pid = -1;
  if (rc == 0) rc = posix_spawn(&pid, "/proc/self/exe", &fa, &attr, argv, env);
  close(fds[1]);
  fds[1] = -1;
  if (rc != 0) {
    code = cli_fail(o->json, APEX_E_IO, "cannot start the runner: %s", strerror(rc));
    goto out;
  }

  char line[16384];
  if (read_reply(fds[0], line, sizeof line) < 0) {
    code = cli_fail(o->json, APEX_E_IO,
                    "the runner (pid %d) ended or hung before submitting the task; see %s",
                    (int)pid, log);
    goto out;
  }
  json_error_t jerr;
  json_t *ev = json_loads(line, 0, &jerr);
  const char *kind = json_string_value(json_object_get(ev, "event"));
  if (kind && strcmp(kind, "submitted") == 0) {
    json_int_t id = json_integer_value(json_object_get(ev, "task"));
    if (o->json) {
      cli_emit(json_incref(ev));
    } else {
      printf("%lld\n", (long long)id);
      fflush(stdout);
      /* The how-to on stderr, so a terminal's stdout has the id alone (a
       * script's stdout is not a terminal: it gets the JSON line above). */
      /* The hint names the store when the user chose one: `apex watch ID`
       * alone reads the default store, which does not have this task. */
      if (isatty(STDERR_FILENO)) {
        char *q = chosen ? shell_quote(store) : NULL;
        fprintf(stderr, "apex: task %lld runs detached (runner pid %d); follow it with "
                        "`apex watch %lld%s%s`\n",
                (long long)id, (int)pid, (long long)id, q ? " --store " : "", q ? q : "");
        free(q);
      }
    }
  } else if (kind && strcmp(kind, "result") == 0) {
    /* A failure before the task existed: reported as `run` does it. */
    json_t *e = json_object_get(ev, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *cname = json_string_value(json_object_get(e, "code"));
    int c = APEX_E_EXECUTION;
    for (int k = 0; cname && k >= -64; k--)
      if (strcmp(apex_status_name(k), cname) == 0) {
        c = k;
        break;
      }
    cli_eprint(msg ? msg : apex_strerror(c));
    if (o->json) cli_emit(json_incref(ev));
    code = cli_exit_code(c);
  } else {
    code = cli_fail(o->json, APEX_E_IO, "the runner (pid %d) answered something unexpected; see %s",
                    (int)pid, log);
  }
  json_decref(ev);
out:
  if (fds[0] >= 0) close(fds[0]);
  if (fds[1] >= 0) close(fds[1]);
  if (attr_ok) posix_spawnattr_destroy(&attr);
  if (fa_ok) posix_spawn_file_actions_destroy(&fa);
  free(argv);
  free(env);
  return code;
}
