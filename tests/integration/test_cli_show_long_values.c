/* `apex show` on a terminal (cli/tasks.c): a stored value may be megabytes
 * (params, a 1 MiB checkpoint, a cancel reason) and any text. Each value,
 * and each event's note, is cut to a couple of KiB with how many bytes
 * there were (--json has them all), and a note passes through the same
 * terminal cleaning as the fields: an event note quoting a cancel reason
 * was printed raw, escape sequences included, and a 1 MB reason was
 * printed whole, twice. Tests plugin: tests/plugins/durable_kit.c. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "apex/apex.h"
#include "integration/harness.h"
#include "integration/cli_harness.h"

#define KIT APEX_TEST_PLUGIN_DIR "/durable_kit.so"

static char g_dir[256], g_store[320];

static int setup(void **state) {
  (void)state;
  const char *base = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/apex-showlong-XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(g_dir)) return -1;
  setenv("XDG_STATE_HOME", g_dir, 1);
  snprintf(g_store, sizeof g_store, "%s/t.db", g_dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_show_cuts_long_values_and_cleans_notes(void **state) {
  (void)state;
  /* A task to start in an hour, left in the store by its manager. */
  apex_manager_config_t c;
  apex_manager_config_init(&c);
  c.workers = 2;
  c.store = g_store;
  c.shutdown_grace_ms = 50;
  apex_manager_t *m = NULL;
  assert_int_equal(apex_manager_new(&c, &m), APEX_OK);
  apex_error_t *err = NULL;
  if (apex_manager_load(m, KIT, &err) != APEX_OK) fail_msg("load: %s", apex_error_message(err));
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  o.durable = 1;
  o.timeout_s = 7200;
  o.run_after_s = 3600;
  apex_task_t *t = NULL;
  assert_int_equal(apex_manager_submit(m, "durable_kit", "noop", NULL, &o, &t, NULL), APEX_OK);
  uint64_t id = apex_task_id(t);
  apex_task_release(t);
  assert_int_equal(apex_manager_destroy(m, 5000), APEX_OK);
  /* A 1 MB cancel reason that starts with an escape sequence (a window
   * title change) and ends in a marker. */
  size_t n = 1024 * 1024;
  char *reason = malloc(n + 1);
  assert_non_null(reason);
  memset(reason, 'r', n);
  memcpy(reason, "\x1b]0;owned\x07", 10);
  memcpy(reason + n - 6, "MARKER", 6);
  reason[n] = '\0';
  apex_store_t *s = NULL;
  assert_int_equal(apex_store_open(g_store, &s, NULL), APEX_OK);
  assert_int_equal(apex_store_cancel(s, id, reason, NULL), APEX_OK);
  apex_store_close(s);
  free(reason);

  char name[128], ids[32];
  snprintf(ids, sizeof ids, "%llu", (unsigned long long)id);
  int master = pty_open(name, sizeof name);
  char *argv[] = {(char *)APEX_CLI_PATH, "show", ids, "--store", g_store, NULL};
  proc_t p;
  proc_spawn(&p, argv, name, master);
  proc_wait(&p);
  const char *out = buf_str(&p.out);
  if (p.code != 0) fail_msg("exit %d:\n%.2000s", p.code, out);
  if (p.out.len > 16384) fail_msg("show printed %zu bytes", p.out.len);
  assert_null(strstr(out, "\x1b]0;"));                  /* no escape reached the terminal */
  assert_null(strstr(out, "MARKER"));                   /* cut */
  assert_non_null(strstr(out, "(1048576 bytes in all")); /* cancel_reason, said how long */
  assert_non_null(strstr(out, "cancel requested ("));    /* the event note, cut too */
  assert_non_null(strstr(out, "events"));                /* and the rest of the view is there */
  proc_free(&p);

  /* --json still has every byte. */
  run(&p, "show", ids, "--store", g_store, "--json", NULL);
  assert_int_equal(p.code, 0);
  json_t *row = json_loads(buf_str(&p.out), 0, NULL);
  assert_non_null(row);
  assert_int_equal(strlen(json_string_value(json_object_get(row, "cancel_reason"))), n);
  json_decref(row);
  proc_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_show_cuts_long_values_and_cleans_notes, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
