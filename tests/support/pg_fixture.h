/* A real PostgreSQL server for the tests of the PostgreSQL store
 * (src/store/postgres.c): initdb into a temporary folder, pg_ctl start on
 * a free loopback port (its unix socket in that folder too), stopped with
 * pg_ctl stop -m immediate and the folder removed at the end. Run as root
 * (CI), the server runs as the `postgres` system user Debian's package
 * makes, the folder given to it. APEX_TEST_PG_URI names an existing server
 * instead (then nothing is started, and restart is refused). The binaries
 * are looked for in APEX_TEST_PG_BINDIR, else the newest
 * /usr/lib/postgresql/VERSION/bin. Test code: not thread-safe; one fixture
 * per process. */
#ifndef APEX_TEST_PG_FIXTURE_H
#define APEX_TEST_PG_FIXTURE_H

#include <stddef.h>

typedef struct pg_fixture {
  char uri[512];    /* postgresql://apex@127.0.0.1:PORT/postgres */
  char dir[256];    /* the temporary folder; "" for an external server */
  char bindir[256];
  int port;
  int external;     /* APEX_TEST_PG_URI */
} pg_fixture_t;

/* Starts a server (or takes APEX_TEST_PG_URI). Returns 0, or -1 with the
 * reason (the server's log too, when it ran) in why. */
int pg_fixture_start(pg_fixture_t *f, char *why, size_t n);
/* pg_ctl restart -m fast: every connection is cut, the data is kept.
 * Returns 0, or -1 with the reason (also for an external server). */
int pg_fixture_restart(pg_fixture_t *f, char *why, size_t n);
/* pg_ctl stop -m fast (the server down, for a test of an unreachable
 * store) and pg_ctl start again. Return 0 or -1 with the reason. */
int pg_fixture_pause(pg_fixture_t *f, char *why, size_t n);
int pg_fixture_resume(pg_fixture_t *f, char *why, size_t n);
/* Runs one SQL command (psql -c, as the superuser) in database db.
 * Returns 0 or -1 with psql's words in why. */
int pg_fixture_sql(pg_fixture_t *f, const char *db, const char *sql, char *why, size_t n);
/* The uri of database db as role user (NULL: the superuser), in out. */
void pg_fixture_uri(const pg_fixture_t *f, const char *user, const char *db, char *out,
                    size_t n);
/* Stops the server (-m immediate) and removes its folder. */
void pg_fixture_stop(pg_fixture_t *f);

#endif
