/* A real PostgreSQL server for tests (pg_fixture.h). The server commands
 * run in a child process; as root the child drops to the `postgres` user
 * (setgroups, setgid, setuid) before it execs, so no runuser or sudo is
 * needed. Their output goes to OUT.log in the folder, quoted in the reason
 * when one fails. */
#include "pg_fixture.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

static void say(char *why, size_t n, const char *fmt, ...) {
  if (!why || !n) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, n, fmt, ap);
  va_end(ap);
}

/* The newest /usr/lib/postgresql/VERSION/bin with an initdb. */
static int find_bindir(char *out, size_t n) {
  const char *env = getenv("APEX_TEST_PG_BINDIR");
  if (env && *env) {
    snprintf(out, n, "%s", env);
    return 0;
  }
  DIR *d = opendir("/usr/lib/postgresql");
  if (!d) return -1;
  long best = -1;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    char *end;
    long v = strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end) continue;
    char p[512];
    snprintf(p, sizeof p, "/usr/lib/postgresql/%s/bin/initdb", e->d_name);
    if (access(p, X_OK) == 0 && v > best) best = v;
  }
  closedir(d);
  if (best < 0) return -1;
  snprintf(out, n, "/usr/lib/postgresql/%ld/bin", best);
  return 0;
}

/* A loopback port nobody listens on now. */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

/* The last lines of a file, for a reason. */
static void tail_of(const char *path, char *out, size_t n) {
  out[0] = '\0';
  FILE *fp = fopen(path, "r");
  if (!fp) return;
  char buf[4096];
  size_t got = 0;
  if (fseek(fp, 0, SEEK_END) == 0) {
    long size = ftell(fp);
    long from = size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0;
    if (fseek(fp, from, SEEK_SET) == 0) got = fread(buf, 1, sizeof buf - 1, fp);
  }
  fclose(fp);
  buf[got] = '\0';
  size_t keep = got > n - 1 ? n - 1 : got;
  memcpy(out, buf + got - keep, keep);
  out[keep] = '\0';
}

/* Runs argv (argv[0] a path) as the server's user, output to log.
 * Returns its exit status (0 ok), -1 if it could not run. */
static int run_as_server(const pg_fixture_t *f, char *const argv[], const char *log) {
  struct passwd *pw = NULL;
  if (geteuid() == 0 && !(pw = getpwnam("postgres"))) return -2;
  uid_t uid = pw ? pw->pw_uid : 0;
  gid_t gid = pw ? pw->pw_gid : 0;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0) dup2(nul, 0);
    if (pw && (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0)) _exit(126);
    if (chdir(f->dir) != 0) _exit(126);
    /* The server's own locale and time zone, whatever the test's. */
    setenv("LC_ALL", "C", 1);
    unsetenv("PGDATA");
    unsetenv("PGPORT");
    unsetenv("PGHOST");
    execv(argv[0], argv);
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* Runs a server command; on failure says which, and its output. */
static int server_cmd(pg_fixture_t *f, char *const argv[], const char *what, char *why,
                      size_t n) {
  char log[512], out[1500];
  snprintf(log, sizeof log, "%s/cmd.log", f->dir);
  unlink(log);
  int rc = run_as_server(f, argv, log);
  if (rc == 0) return 0;
  tail_of(log, out, sizeof out);
  char slog[512], sout[1500];
  snprintf(slog, sizeof slog, "%s/server.log", f->dir);
  tail_of(slog, sout, sizeof sout);
  if (rc == -2)
    say(why, n, "PostgreSQL fixture: running as root, but there is no `postgres` user to run "
                "the server as (install Debian's postgresql package: scripts/setup.sh)");
  else
    say(why, n, "PostgreSQL fixture: %s failed (status %d): %s%s%s", what, rc, out,
        sout[0] ? " | server log: " : "", sout);
  return -1;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(p) != 0 && errno != ENOENT ? -1 : 0;
}

/* Gives path to the server's user (as root). */
static void give(const char *path) {
  struct passwd *pw;
  if (geteuid() == 0 && (pw = getpwnam("postgres")) != NULL)
    if (chown(path, pw->pw_uid, pw->pw_gid) != 0) {
      /* the commands that need it then fail and say so */
    }
}

static int pg_start_server(pg_fixture_t *f, char *why, size_t n) {
  char pgctl[512], data[512], slog[512], opts[512];
  snprintf(pgctl, sizeof pgctl, "%s/pg_ctl", f->bindir);
  snprintf(data, sizeof data, "%s/data", f->dir);
  snprintf(slog, sizeof slog, "%s/server.log", f->dir);
  /* Durability settings off: a test server's data is thrown away (and a
   * fast restart still checkpoints what was committed). */
  snprintf(opts, sizeof opts,
           "-p %d -c listen_addresses=127.0.0.1 -k %s -c fsync=off -c full_page_writes=off "
           "-c max_connections=60 -c shared_buffers=16MB",
           f->port, f->dir);
  char *argv[] = {pgctl, "-D", data, "-l", slog, "-w", "-t", "60", "-o", opts, "start", NULL};
  return server_cmd(f, argv, "pg_ctl start", why, n);
}

int pg_fixture_start(pg_fixture_t *f, char *why, size_t n) {
  memset(f, 0, sizeof *f);
  const char *ext = getenv("APEX_TEST_PG_URI");
  if (ext && *ext) {
    snprintf(f->uri, sizeof f->uri, "%s", ext);
    f->external = 1;
    return 0;
  }
  if (find_bindir(f->bindir, sizeof f->bindir) != 0) {
    say(why, n, "PostgreSQL fixture: no initdb in /usr/lib/postgresql/*/bin (install Debian's "
                "postgresql package: scripts/setup.sh; or set APEX_TEST_PG_URI to an existing "
                "server, or APEX_TEST_PG_BINDIR)");
    return -1;
  }
  snprintf(f->dir, sizeof f->dir, "/tmp/apex_pg_XXXXXX");
  if (!mkdtemp(f->dir)) {
    say(why, n, "PostgreSQL fixture: mkdtemp: %s", strerror(errno));
    f->dir[0] = '\0';
    return -1;
  }
  give(f->dir);
  char initdb[512], data[512];
  snprintf(initdb, sizeof initdb, "%s/initdb", f->bindir);
  snprintf(data, sizeof data, "%s/data", f->dir);
  char *iargv[] = {initdb, "-D", data, "-U", "apex", "--auth=trust", "-E", "UTF8",
                   "--no-locale", "--no-sync", NULL};
  if (server_cmd(f, iargv, "initdb", why, n) != 0) {
    pg_fixture_stop(f);
    return -1;
  }
  /* A port taken between our probe and the server's bind: try others. */
  for (int attempt = 0; attempt < 5; attempt++) {
    f->port = free_port();
    if (f->port <= 0) {
      say(why, n, "PostgreSQL fixture: no free loopback port");
      break;
    }
    if (pg_start_server(f, why, n) == 0) {
      pg_fixture_uri(f, NULL, NULL, f->uri, sizeof f->uri);
      return 0;
    }
  }
  pg_fixture_stop(f);
  return -1;
}

static int pg_ctl_simple(pg_fixture_t *f, const char *cmd, const char *mode, char *why,
                         size_t n) {
  if (f->external) {
    say(why, n, "PostgreSQL fixture: cannot %s a server it did not start (APEX_TEST_PG_URI)",
        cmd);
    return -1;
  }
  char pgctl[512], data[512], slog[512], what[64];
  snprintf(pgctl, sizeof pgctl, "%s/pg_ctl", f->bindir);
  snprintf(data, sizeof data, "%s/data", f->dir);
  snprintf(slog, sizeof slog, "%s/server.log", f->dir);
  snprintf(what, sizeof what, "pg_ctl %s", cmd);
  char *argv[] = {pgctl, "-D", data, "-l", slog, "-w", "-t", "60", "-m", (char *)mode,
                  (char *)cmd, NULL};
  if (!mode) {
    argv[8] = (char *)cmd;
    argv[9] = NULL;
  }
  return server_cmd(f, argv, what, why, n);
}

int pg_fixture_restart(pg_fixture_t *f, char *why, size_t n) {
  return pg_ctl_simple(f, "restart", "fast", why, n);
}

int pg_fixture_pause(pg_fixture_t *f, char *why, size_t n) {
  return pg_ctl_simple(f, "stop", "fast", why, n);
}

int pg_fixture_resume(pg_fixture_t *f, char *why, size_t n) {
  if (f->external) return pg_ctl_simple(f, "start", NULL, why, n);
  return pg_start_server(f, why, n);
}

/* Percent-encodes what a uri's host or user part may not hold. */
static void enc(const char *in, char *out, size_t n) {
  size_t k = 0;
  for (; *in && k + 4 < n; in++) {
    unsigned char c = (unsigned char)*in;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
        c == '.' || c == '-' || c == '_')
      out[k++] = (char)c;
    else
      k += (size_t)snprintf(out + k, n - k, "%%%02X", c);
  }
  out[k] = '\0';
}

void pg_fixture_uri(const pg_fixture_t *f, const char *user, const char *db, char *out,
                    size_t n) {
  if (!f->external) {
    snprintf(out, n, "postgresql://%s@127.0.0.1:%d/%s", user ? user : "apex", f->port,
             db ? db : "postgres");
    return;
  }
  /* An external server: its uri's host, port, user and password, with
   * another user or database. */
  PQconninfoOption *o = PQconninfoParse(f->uri, NULL);
  const char *host = NULL, *port = NULL, *u = NULL, *pw = NULL, *d = NULL;
  for (PQconninfoOption *p = o; p && p->keyword; p++) {
    if (!p->val) continue;
    if (strcmp(p->keyword, "host") == 0) host = p->val;
    else if (strcmp(p->keyword, "port") == 0) port = p->val;
    else if (strcmp(p->keyword, "user") == 0) u = p->val;
    else if (strcmp(p->keyword, "password") == 0) pw = p->val;
    else if (strcmp(p->keyword, "dbname") == 0) d = p->val;
  }
  char eu[200] = "", ep[200] = "", eh[300] = "", ed[200] = "";
  enc(user ? user : u ? u : "", eu, sizeof eu);
  enc(user ? "" : pw ? pw : "", ep, sizeof ep);
  enc(host ? host : "", eh, sizeof eh);
  enc(db ? db : d ? d : "postgres", ed, sizeof ed);
  snprintf(out, n, "postgresql://%s%s%s%s%s%s%s/%s", eu, ep[0] ? ":" : "", ep, eu[0] ? "@" : "",
           eh, port ? ":" : "", port ? port : "", ed);
  PQconninfoFree(o);
}

int pg_fixture_sql(pg_fixture_t *f, const char *db, const char *sql, char *why, size_t n) {
  char uri[600];
  pg_fixture_uri(f, f->external ? NULL : "apex", db, uri, sizeof uri);
  PGconn *c = PQconnectdb(uri);
  if (!c || PQstatus(c) != CONNECTION_OK) {
    say(why, n, "PostgreSQL fixture: connect %s: %s", uri, c ? PQerrorMessage(c) : "no memory");
    PQfinish(c);
    return -1;
  }
  PGresult *r = PQexec(c, sql);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
  if (!ok) say(why, n, "PostgreSQL fixture: %s: %s", sql, PQresultErrorMessage(r));
  PQclear(r);
  PQfinish(c);
  return ok ? 0 : -1;
}

void pg_fixture_stop(pg_fixture_t *f) {
  if (f->external || !f->dir[0]) return;
  char data[512], pm[600];
  snprintf(data, sizeof data, "%s/data", f->dir);
  snprintf(pm, sizeof pm, "%s/postmaster.pid", data);
  if (access(pm, F_OK) == 0) {
    char pgctl[512], log[512];
    snprintf(pgctl, sizeof pgctl, "%s/pg_ctl", f->bindir);
    snprintf(log, sizeof log, "%s/cmd.log", f->dir);
    char *argv[] = {pgctl, "-D", data, "-w", "-t", "60", "-m", "immediate", "stop", NULL};
    (void)run_as_server(f, argv, log);
  }
  (void)nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  f->dir[0] = '\0';
}
