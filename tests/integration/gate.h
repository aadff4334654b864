/* A gate for the gate test plugin (tests/plugins/gate.c): a FIFO its
 * deaf_read handler blocks on, deaf to cancellation, until the test opens
 * the gate. Lets a test read the host's state while a handler outlives its
 * task, with no time window to race. Include after cmocka.h and
 * harness.h. */
#ifndef APEX_TEST_GATE_H
#define APEX_TEST_GATE_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct gate {
  char dir[64];
  char path[96];
  char params[160]; /* {"path": ...} for gate.deaf_read */
  int fd;           /* O_RDWR: the handler's open never blocks */
} gate_t;

static inline void gate_init(gate_t *g) {
  snprintf(g->dir, sizeof g->dir, "/tmp/apex-gate-XXXXXX");
  assert_non_null(mkdtemp(g->dir));
  snprintf(g->path, sizeof g->path, "%s/fifo", g->dir);
  assert_int_equal(mkfifo(g->path, 0600), 0);
  g->fd = open(g->path, O_RDWR | O_CLOEXEC);
  assert_true(g->fd >= 0);
  snprintf(g->params, sizeof g->params, "{\"path\": \"%s\"}", g->path);
}

/* Releases one blocked (or future) deaf_read handler. */
static inline void gate_open(gate_t *g) { assert_int_equal(write(g->fd, "x", 1), 1); }

static inline void gate_fini(gate_t *g) {
  close(g->fd);
  unlink(g->path);
  rmdir(g->dir);
}

static inline void load_gate(apex_manager_t *m) { load_ok(m, APEX_TEST_PLUGIN_DIR "/gate.so"); }

#endif
