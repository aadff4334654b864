/* The spawn_race plugin's state (tests/plugins/spawn_race.c), opened with
 * dlopen and read with dlsym by the stale-call tests
 * (test_children_stale_spawn.c, test_children_stale_calls.c). */
#ifndef APEX_TEST_SPAWN_RACE_KIT_H
#define APEX_TEST_SPAWN_RACE_KIT_H

#include <dlfcn.h>
#include <stdatomic.h>

#include "apex/plugin.h"

#define SPAWN_RACE_KIT APEX_TEST_PLUGIN_DIR "/spawn_race.so"

typedef struct sr_kit {
  void *dl;
  atomic_int *gate, *attempt, *completed, *spawn_rc, *go, *outcome_rc, *outcome_state;
  atomic_ullong *child_id;
  _Atomic(apex_ctx_t *) *ctx;
  _Atomic(apex_child_t *) *child;
} sr_kit_t;

/* The test program's kit, and its spawn_race_go (the held-unlock and
 * held-strdup hooks of the two tests read it before the group starts). */
static sr_kit_t g_kit;
static atomic_int *g_go;

/* The test group's setup: opens the plugin and finds every symbol.
 * Returns: 0, or -1 (the group fails). */
static inline int sr_setup(void **st) {
  (void)st;
  sr_kit_t *k = &g_kit;
  k->dl = dlopen(SPAWN_RACE_KIT, RTLD_NOW);
  if (!k->dl) return -1;
  k->gate = dlsym(k->dl, "spawn_race_gate");
  k->attempt = dlsym(k->dl, "spawn_race_attempt");
  k->completed = dlsym(k->dl, "spawn_race_completed");
  k->spawn_rc = dlsym(k->dl, "spawn_race_spawn_rc");
  k->go = dlsym(k->dl, "spawn_race_go");
  k->ctx = dlsym(k->dl, "spawn_race_ctx");
  k->child = dlsym(k->dl, "spawn_race_child");
  k->outcome_rc = dlsym(k->dl, "spawn_race_outcome_rc");
  k->outcome_state = dlsym(k->dl, "spawn_race_outcome_state");
  k->child_id = dlsym(k->dl, "spawn_race_child_id");
  g_go = k->go;
  return k->gate && k->attempt && k->completed && k->spawn_rc && k->go && k->ctx && k->child &&
                 k->outcome_rc && k->outcome_state && k->child_id
             ? 0
             : -1;
}

/* The test group's teardown. */
static inline int sr_teardown(void **st) {
  (void)st;
  return dlclose(g_kit.dl);
}

#endif
