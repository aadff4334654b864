/* Child tasks: apex_ctx_spawn and the waits, end callbacks and outcomes
 * beside it (include/apex/plugin.h), the cascade of a parent's end to its
 * children, and the roll-up of their progress into the parent's.
 *
 * A parent's children are its family (apex__family_t), made on its first
 * spawn and kept in its progress slot (exec/internal.h) until the parent
 * task is freed. A family holds a node (apex_child_t, the handle a plugin
 * gets) per child it ever spawned, each with a reference on its child
 * task, so the outcome stays readable and the roll-up can list it; the
 * nodes go with the family. A child that succeeded with no result is let
 * go at its end: its node keeps its final state and names, which is all
 * its outcome and its line in the roll-up need, and drops the reference,
 * so a wide fan-out keeps about 90 bytes per ended child instead of its
 * task, options and token (fresh memory for every child otherwise:
 * bench/analysis.md, W11). A child task points at its node (its opts,
 * immutable) only while it is live: the family holds a reference on the
 * parent while a child is live or a child's end is being processed
 * (n_live, busy), so the parent, its family and the nodes outlive every
 * live child.
 *
 * Locks: the family's mutex is taken after a task lock (a child's delivery
 * runs under the child's lock, a parent's snapshot and a spawn's commit,
 * when the spawn took the lock, under the parent's) and
 * never with another family's or a task lock taken under it; no plugin
 * code runs while it is held. Cancels, callbacks, completes and deadline
 * firings all happen after it is released.
 *
 * Cascade: a child's token descends from the parent attempt's token, so
 * every cancel of the parent (user, timeout, shutdown, its own parent)
 * reaches the whole tree at once through the tokens. The children share
 * one token, the family's (family_shared: a child of the attempt token),
 * until one needs its own (a cancellable sleep, a cancel fd, a cancel of
 * that child alone: apex__task_token makes it below the shared one), so a
 * spawn makes no token. The shared token is marked with the rest of the
 * tree before any callback runs, so a child that carries it reads as
 * cancelled at once and never starts; its one callback then ends the
 * queued children and tells the running ones' cancel callbacks
 * (cancel_live). The parent's attempt waits for its
 * children: a blocking handler's return waits on the worker
 * (apex__family_settle), a deferred one's complete is held and run by the
 * last child's end (apex__family_defer_complete), and a deadline that
 * passes while children are live cancels them and comes back when the
 * last one ended (apex__family_hold_deadline), so the parent ends
 * timed_out after them. A child capped at that deadline has no timer of
 * its own: the parent's ends it (apex__family_deadline).
 *
 * Roll-up: a child's delivery (at its progress rate) stores its snapshot
 * in its node and marks the family dirty, queueing the parent for its next
 * flush; the parent's snapshot then sums its children by weight and lists
 * them (apex__family_rollup). A child's report costs nothing more than any
 * task's, and the parent's roll-up, at most progress_rate_hz times a
 * second, visits the children from the first open one on (the ended ones
 * before it are in running sums), plus the at most 64 it lists. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/utf8.h"
#include "exec/internal.h"
#include "ops/ops.h"

#define LABEL_MAX 256

struct apex_child {
  apex__family_t *fam;
  /* A reference (mu); NULL until its submit returned, and again once the
   * child succeeded with no result (let_go): the node then answers for it
   * from final and names, and the task's memory goes back to malloc while
   * the family lives on (a fan-out of 200,000 children kept every child's
   * task, options and token: bench/analysis.md, W11). */
  apex_task_t *task;
  uint64_t id;           /* (mu) */
  double weight;
  char *label;           /* NULL: "plugin.action" */
  apex_progress_t *last; /* its last delivered progress (mu) */
  /* One byte of flags (mu, every one of them: they share the byte). */
  uint8_t ended : 1;
  uint8_t on_end_set : 1;
  uint8_t settled : 1;   /* ended with its task set: in the family's sums */
  uint8_t let_go : 1;    /* task dropped: the names below answer for it */
  uint8_t final;         /* its terminal state, once ended (mu) */
  /* The attempt that spawned it (the family outlives a retry, its nodes
   * too): a handle of another attempt is refused (mine). Set before the
   * handle is returned, never changed: read without mu. 16 bits hold
   * every attempt (max_attempts <= 65535). */
  uint16_t att;
  /* Waits (apex_ctx_wait_children, apex_ctx_wait_any_child) naming this
   * child that are under way (mu): its end wakes the family's waiters only
   * then (see waiters_locked). Saturates: a wait that finds it at the top
   * counts in the family's wait_every instead. */
  uint16_t watched;
  /* Two lives that never overlap (mu): until it ends, the end callback
   * (taken when it runs); once it ended, its plugin's and action's names
   * (static while the manager lives), read when task is NULL. */
  union {
    struct {
      apex_child_fn fn;
      void *user;
    } on_end;
    struct {
      const char *plugin, *action;
    } names;
  } u;
};

/* Nodes are carved from chunks the family owns (freed with it, as the
 * nodes always were): a spawn costs no allocation of its own for its
 * node. The first chunk holds NODES_FIRST, each next one twice the last,
 * up to NODES_MAX (a family of one child keeps one small chunk). */
enum { NODES_FIRST = 8, NODES_MAX = 512 };
typedef struct node_chunk {
  struct node_chunk *next;
  size_t used, cap;
  apex_child_t nodes[];
} node_chunk_t;

struct apex__family {
  /* Spins before it sleeps (exec/lock.h): the spawner and the worker
   * ending children take it for a few tens of ns each, and glibc's mutex
   * made most of their meetings a futex sleep and wake (bench/analysis.md,
   * W11 of the sixth session). */
  apex__lock_t mu;
  apex__cond_t cv;
  apex_task_t *parent; /* immutable; alive while holds_parent */
  apex__run_t *run;    /* the parent's run state: its ctx, for callbacks */
  uint8_t depth;       /* the parent's depth */
  /* mu: */
  double own_weight;
  apex_child_t **kids;
  size_t n, cap;
  node_chunk_t *chunks; /* the newest first (mu) */
  size_t n_live;
  /* The roll-up's running sums (mu): the weight of every child, and the
   * counts and weighted percentage of the settled ones (ended, task set:
   * their state can no longer change). kids[0 .. open_lo) are all settled,
   * so a roll-up visits only the children from open_lo on, not the whole
   * family at every flush (a fan-out of 200,000 children spent a tenth of
   * its CPU there: bench/analysis.md, W11). */
  double sw, swp_settled;
  size_t settled_counts[APEX_TASK_SCHEDULED + 1];
  size_t open_lo;
  unsigned busy;        /* child ends being processed */
  /* Threads waiting on cv (mu): for every child (n_live 0: wait_all, with
   * apex__family_settle, which also waits for busy 0), and waits that
   * could not mark their children watched (wait_every: any end wakes
   * them). A child's end broadcasts only when a waiter may be done, not at
   * every end: a parent waiting for 10,000 children was woken 10,000
   * times, each a futex wake on the children's worker and a context
   * switch (bench/analysis.md, W11 of the sixth session). */
  unsigned wait_all, wait_every;
  int holds_parent;     /* a parent reference, while n_live or busy */
  int deadline_pending; /* the parent's deadline passed while children lived */
  /* The parent's deadline passed (apex__family_deadline): a capped child
   * (no timer of its own) whose spawn returns after it is ended as its
   * deadline would have ended it. */
  int deadline_fired;
  int complete_pending; /* apex_ctx_complete waits for the children */
  int complete_rc;
  /* The attempt of a deferred action's last apex_ctx_complete (0: none),
   * held (complete_pending) or not (apex__family_defer_complete); kept
   * once the complete ran, so a spawn or another family call made for
   * that attempt after its complete returned is refused even when it
   * comes after complete_pending was cleared (ctx_spawn's commit,
   * completed_locked). */
  uint32_t complete_att;
  atomic_int dirty;     /* a child delivered since the parent's last flush */
  /* The children's shared token (family_shared): a child of the attempt
   * token shared_up, made by the first spawn under it, with one callback
   * (shared_cb) that cancels the live children. Replaced (mu) only when a
   * spawn comes under another attempt token (a retry with an attempt
   * timeout: the last attempt's children all ended). The family holds a
   * reference, and each child one, taken by its submit. */
  _Atomic(apex_token_t *) shared;
  _Atomic(apex_token_t *) shared_up;
  uint64_t shared_cb; /* (mu) */
  /* References on shared the family holds for its next children beyond
   * its own (mu): taken SH_REFS_BATCH at a time and handed to spawns
   * without an atomic operation each. A reference per spawn was an atomic
   * add on a line the host's frees of the children wrote (an atomic
   * subtraction each), so both missed it at every child (bench/analysis.md,
   * W11 of the seventh session). */
  unsigned sh_refs;
  /* The opts of its plain children (fam_opts_t), or NULL (no memory: each
   * child then has a block of its own, as any other task). The family
   * holds a count on it, and fo_refs more for its next children (mu),
   * taken FO_REFS_BATCH at a time as sh_refs are. */
  struct fam_opts *fo;
  unsigned fo_refs;
};

enum { SH_REFS_BATCH = 256, FO_REFS_BATCH = 256 };

/* A family's opts block: one for its children with no deadline ([0]) and
 * one for those capped at the parent's ([1]), each as a child's own block
 * would be but for the node (the task's child_node holds it instead:
 * exec/internal.h). Counted: the family holds one, and each child task
 * that points at it one, dropped last in its free (apex__fam_opts_unref),
 * so it outlives the family while a host still holds such a child (its
 * opts answer apex_task_parent_id, and task_free reads them). The count
 * sits a line away from the blocks, which the children's worker reads
 * while the host's frees write the count. */
typedef struct fam_opts {
  apex__task_opts_t o[2];
  _Alignas(APEX__CACHE_LINE) atomic_uint refs;
} fam_opts_t;

static fam_opts_t *fam_opts_new(uint64_t parent_id, uint8_t child_depth) {
  fam_opts_t *fo = aligned_alloc(_Alignof(fam_opts_t), sizeof *fo);
  if (!fo) return NULL;
  memset(fo, 0, sizeof *fo);
  for (int k = 0; k < 2; k++) {
    apex__task_opts_t *x = &fo->o[k];
    x->parent_id = parent_id;
    x->child_depth = child_depth;
    x->child_capped = (uint8_t)k;
    x->sheap_idx = APEX__NOT_IN_HEAP;
    x->shared = 1; /* never freed with a task, never written after submit */
    x->fam = 1;
  }
  atomic_init(&fo->refs, 1); /* the family's */
  return fo;
}

static void fam_opts_unref_n(fam_opts_t *fo, unsigned n) {
  if (atomic_fetch_sub_explicit(&fo->refs, n, memory_order_acq_rel) == n) free(fo);
}

void apex__fam_opts_unref(const apex__task_opts_t *x) {
  if (!x) return;
  /* x is o[child_capped] of its block. */
  fam_opts_unref_n((fam_opts_t *)(uintptr_t)(x - x->child_capped), 1);
}

static apex__run_t *run_of(apex_ctx_t *c) { return (apex__run_t *)(void *)c; }

static int is_terminal(int s) { return s >= APEX_TASK_SUCCEEDED && s <= APEX_TASK_TIMED_OUT; }

/* Logs why a spawn or a child call was refused, and returns rc. */
static int refuse(apex__run_t *r, int rc, const char *fmt, ...) APEX_PRINTF(3, 4);
static int refuse(apex__run_t *r, int rc, const char *fmt, ...) {
  apex_manager_t *m = apex__run_m(r);
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  apex__log(&m->log, APEX_LOG_WARN, "task %llu: %s",
            (unsigned long long)atomic_load_explicit(&r->id, memory_order_relaxed), buf);
  return rc;
}

static apex__family_t *family_new(apex_task_t *t, apex__run_t *r, uint8_t depth) {
  apex__family_t *f = calloc(1, sizeof *f); /* the lock and cv: zero is their initial state */
  if (!f) return NULL;
  f->parent = t;
  f->run = r;
  f->depth = depth;
  f->fo = fam_opts_new(t->id, (uint8_t)(depth + 1u)); /* NULL: children get their own */
  atomic_init(&f->dirty, 0);
  atomic_init(&f->shared, NULL);
  atomic_init(&f->shared_up, NULL);
  return f;
}

void apex__family_free(apex__family_t *f) {
  if (!f) return;
  apex_token_t *sh = atomic_load(&f->shared);
  if (sh) { /* its callback must not run on a freed family */
    apex_token_remove_callback(sh, f->shared_cb);
    apex__token_unref_n(sh, 1 + f->sh_refs); /* its own, and the batch's rest */
  }
  if (f->fo) fam_opts_unref_n(f->fo, 1 + f->fo_refs); /* children still held keep it */
  for (size_t i = 0; i < f->n; i++) {
    apex_child_t *n = f->kids[i];
    apex_progress_unref(n->last);
    if (n->task) apex__task_unref(n->task);
    free(n->label);
  }
  for (node_chunk_t *c = f->chunks, *next; c; c = next) {
    next = c->next;
    free(c);
  }
  free(f->kids);
  free(f);
}

/* The family of c's open attempt, made if make; with the task in *tp,
 * held for the call (the caller drops it: apex__task_unref), the attempt's
 * number in *attp, and, if tokp, a reference on the attempt's token in
 * *tokp (NULL: the attempt has no token of its own; the task's,
 * apex__task_token, lives as long as t).
 * The call may outlive the attempt: a thread of the plugin's calling after
 * a complete the children held returned finds the attempt open, and it
 * may end (and the host release the task, family and all, or a retry drop
 * the attempt's token) as soon as the task lock is left here. So each
 * caller checks under the family's mutex that the attempt's complete was
 * not called (completed_locked) before it answers.
 * Returns NULL with *tp NULL (and the misuse counted) after the attempt
 * ended, or with *nomem set when the family could not be made. */
static apex__family_t *family_of(apex_ctx_t *c, int make, const char *what, apex_task_t **tp,
                                 uint32_t *attp, int *nomem, apex_token_t **tokp) {
  apex__run_t *r = run_of(c);
  if (nomem) *nomem = 0;
  if (tokp) *tokp = NULL;
  *tp = NULL;
  *attp = 0;
  apex_task_t *t = apex__run_lock_open(r);
  if (!t) {
    apex__ctx_misuse(apex__run_m(r), atomic_load_explicit(&r->id, memory_order_relaxed), what);
    return NULL;
  }
  apex__family_t *f = r->prog ? r->prog->fam : NULL;
  if (!f && make) {
    if (!r->prog) r->prog = calloc(1, sizeof *r->prog);
    if (r->prog) {
      f = r->prog->fam =
          family_new(t, r, (uint8_t)(t->opts ? t->opts->child_depth : 0));
    }
    if (!f && nomem) *nomem = 1;
  }
  apex__task_ref(t); /* and with it its run state and family (task_free) */
  *attp = t->attempt;
  if (tokp) {
    apex__tmo_t *x = apex__task_tmo(t);
    apex_token_t *at = x ? atomic_load_explicit(&x->tok, memory_order_relaxed) : NULL;
    *tokp = at ? apex_token_ref(at) : NULL;
  }
  pthread_mutex_unlock(apex__task_mu(t));
  *tp = t;
  return f;
}

/* Under f->mu: the complete of attempt att (family_of's) was called, or
 * that of a later one: att is over, or ends once its children did (a held
 * complete keeps it open, so the task lock's check passes). complete_att
 * only grows (attempts are numbered up from 1), so a call held past its
 * attempt's end and the next attempt's start finds it >= att too. The
 * family's calls made then are refused as misuse (plugin.h), but for the
 * reads (child_outcome, child_task_id) of a child's end callback
 * (tls_end_of), which the attempt's children may still run after its
 * complete returned. */
static int completed_locked(const apex__family_t *f, uint32_t att) {
  return f->complete_att != 0 && f->complete_att >= att;
}

/* The family whose child's end callback this thread is running (the
 * innermost, a callback may end another family's child), or NULL. Read
 * only by the calls that callback makes on its ctx. Initial-exec, as the
 * pool's (exec/pool.c). */
static _Thread_local const apex__family_t *tls_end_of __attribute__((tls_model("initial-exec")));

/* Runs child's end callback fn on ctx c (f's parent's), marked as f's. */
static void run_end_fn(const apex__family_t *f, apex_ctx_t *c, apex_child_fn fn,
                       apex_child_t *child, void *user) {
  const apex__family_t *outer = tls_end_of;
  tls_end_of = f;
  fn(c, child, user);
  tls_end_of = outer;
}

/* Cancels every live child of f (reason "parent"). No lock held. */
static void cancel_live(apex__family_t *f) {
  apex__lock(&f->mu);
  size_t k = 0;
  /* At most n_live children are live with a task: the list holds those. */
  apex_task_t **v = f->n_live ? malloc(f->n_live * sizeof *v) : NULL;
  for (size_t i = f->open_lo; v && i < f->n && k < f->n_live; i++) {
    apex_child_t *n = f->kids[i];
    if (!n->ended && n->task) {
      apex__task_ref(n->task);
      v[k++] = n->task;
    }
  }
  /* Without the list, the loop below reads f between cancels, and a
   * cancel may end the last child (the family's parent reference goes):
   * the parent, and with it f, is held here for the loop. */
  apex_task_t *hold = !v && f->n_live && f->holds_parent ? f->parent : NULL;
  if (hold) apex__task_ref(hold);
  apex__unlock(&f->mu);
  if (hold) { /* no memory for the list: one at a time */
    for (size_t i = 0;; i++) {
      apex__lock(&f->mu);
      apex_task_t *ct = NULL;
      if (i < f->n && !f->kids[i]->ended && f->kids[i]->task) apex__task_ref(ct = f->kids[i]->task);
      size_t n = f->n;
      apex__unlock(&f->mu);
      if (ct) {
        (void)apex__task_cancel(ct, APEX__CAUSE_PARENT, "parent");
        apex__task_unref(ct);
      }
      if (i >= n) break;
    }
    apex__task_unref(hold);
    return;
  }
  for (size_t i = 0; i < k; i++) {
    (void)apex__task_cancel(v[i], APEX__CAUSE_PARENT, "parent");
    apex__task_unref(v[i]);
  }
  free(v);
}

/* The shared token fired (its attempt token did: a cancel, a deadline,
 * shutdown): every token below it is marked already, so a child that
 * carries it reads as cancelled and never starts; this ends the queued
 * ones and tells the running ones' cancel callbacks. */
static void shared_fired(apex_token_t *tok, const char *reason, void *user) {
  (void)tok;
  (void)reason;
  cancel_live(user);
}

/* Returns: the token children spawned under attempt token up carry
 * (borrowed: the family holds it), made on the first spawn under up;
 * NULL on no memory, or with *stale set when up is no longer the token of
 * t's open attempt (a call made for an attempt that ended: it must not
 * replace the token of the attempt after it). The caller holds up. A
 * child needs no token of its own (most never ask): a cancel of the
 * parent marks the shared one, and with it every child's
 * token made since (its children), before any callback runs, as the
 * token tree always did; the shared token's callback then ends what is
 * queued. So a spawn costs a reference instead of a token (256 bytes, and
 * the parent token's lock at its making and at its free: bench/analysis.md,
 * W11). No lock held. */
static apex_token_t *family_shared(apex__family_t *f, apex_task_t *t, apex_token_t *up,
                                   int *stale) {
  *stale = 0;
  /* shared is stored before shared_up (release): the one read goes with
   * the up compared. */
  if (atomic_load_explicit(&f->shared_up, memory_order_acquire) == up)
    return atomic_load_explicit(&f->shared, memory_order_relaxed);
  apex_token_t *sh = NULL, *old;
  uint64_t cb = 0, old_cb;
  unsigned old_refs = 0;
  if (apex__token_new_shared(up, &sh) != APEX_OK) return NULL;
  /* The token's inline callback node: no allocation. Born cancelled (up
   * fired since the caller looked), it runs now: nothing is live to end. */
  if (apex_token_on_cancel(sh, shared_fired, f, &cb) != APEX_OK) {
    apex_token_unref(sh);
    return NULL;
  }
  apex__lock(&f->mu);
  if (atomic_load_explicit(&f->shared_up, memory_order_relaxed) == up) {
    old = sh; /* another spawn made it first */
    old_cb = cb;
    sh = atomic_load_explicit(&f->shared, memory_order_relaxed);
  } else if (apex__ctx_token_peek(t) != up) {
    /* up's attempt ended: a later attempt's token may be the family's
     * already (its spawn replaced it under this mutex, after its start
     * stored its token, so that store is seen here; up is held, so no
     * later token has its address). */
    old = sh;
    old_cb = cb;
    sh = NULL;
    *stale = 1;
  } else {
    old = atomic_load_explicit(&f->shared, memory_order_relaxed);
    old_cb = f->shared_cb;
    old_refs = f->sh_refs; /* the old token's batch: its children have theirs */
    f->sh_refs = 0;
    atomic_store_explicit(&f->shared, sh, memory_order_relaxed);
    f->shared_cb = cb;
    atomic_store_explicit(&f->shared_up, up, memory_order_release);
  }
  apex__unlock(&f->mu);
  if (old) {
    apex_token_remove_callback(old, old_cb);
    apex__token_unref_n(old, 1 + old_refs);
  }
  return sh;
}

static int node_state(const apex_child_t *n);
static double node_pct(const apex_child_t *n);

/* Under f->mu: n ended: its state is final, so it joins the settled
 * sums. */
static void settle_locked(apex__family_t *f, apex_child_t *n) {
  if (n->settled || !n->ended) return;
  n->settled = 1;
  int st = node_state(n);
  if (st >= 0 && st <= APEX_TASK_SCHEDULED) f->settled_counts[st]++;
  f->swp_settled += n->weight * node_pct(n);
}

/* Returns: 1 if the node of ended child t needs nothing of t that it
 * cannot keep itself: t succeeded with no result (json null, a static
 * object: apex_ctx_child_outcome gives it without t). A failed or
 * cancelled child's error and a result stay in t, held by the node. The
 * caller holds t and sees its outcome (it ended it, or f->mu ordered the
 * end before). */
static int let_go(apex_task_t *t) {
  return atomic_load(&t->state) == APEX_TASK_SUCCEEDED &&
         (!t->out.result || json_is_null(t->out.result));
}

/* A child's deadline is its parent's (capped at submit, manager.c). */
static int capped(const apex_task_t *t) { return t->opts && t->opts->child_capped; }

/* Under f->mu: n's task (ended, let_go) is dropped; returns it for the
 * caller to unref after the unlock. Its names stay for the roll-up. */
static apex_task_t *let_go_locked(apex_child_t *n) {
  apex_task_t *t = n->task;
  n->u.names.plugin = t->plugin->desc.name;
  n->u.names.action = t->action->name;
  n->let_go = 1;
  n->task = NULL;
  return t;
}

/* ------------------------------------------------------------ spawn */

/* Under f->mu: a zeroed node from f's chunks, with room made for it in
 * f->kids; NULL on no memory (nothing changed). A node whose spawn failed
 * stays unused in its chunk until the family goes. */
static apex_child_t *node_new_locked(apex__family_t *f) {
  if (f->n == f->cap) {
    size_t cap2 = f->cap ? f->cap * 2 : 8;
    apex_child_t **k2 = realloc(f->kids, cap2 * sizeof *k2);
    if (!k2) return NULL;
    f->kids = k2;
    f->cap = cap2;
  }
  node_chunk_t *c = f->chunks;
  if (!c || c->used == c->cap) {
    size_t cap = c ? (c->cap * 2 < NODES_MAX ? c->cap * 2 : NODES_MAX) : NODES_FIRST;
    node_chunk_t *c2 = calloc(1, sizeof *c2 + cap * sizeof c2->nodes[0]);
    if (!c2) return NULL;
    c2->cap = cap;
    c2->next = c;
    f->chunks = c = c2;
  }
  return &c->nodes[c->used++]; /* calloc zeroed it */
}

/* What a spawn checked on its ctx, for the rest of it (spawn_child). */
typedef struct spawn_call {
  apex__run_t *r;
  apex_task_t *t;
  apex__family_t *f;
  int locked;             /* checked under the task lock: t held by the call */
  uint32_t att;           /* locked: the attempt checked */
  apex_token_t *att_tok;  /* locked: a reference on its token, if it has one */
  uint64_t cap, pid;      /* t's deadline and id */
  uint8_t depth;          /* the child's */
} spawn_call_t;

static inline int spawn_child(const spawn_call_t *sc, const char *plugin, const char *action,
                              json_t *params, const apex_spawn_opts_t *o, apex_child_t **out);

static int ctx_spawn(apex_ctx_t *c, const char *plugin, const char *action, json_t *params,
                     const apex_spawn_opts_t *uo, apex_child_t **out) {
  apex__run_t *r = run_of(c);
  apex_manager_t *m = apex__run_m(r);
  if (out) *out = NULL;
  if (!plugin || !action || !out)
    return refuse(r, APEX_E_INVALID, "apex_ctx_spawn: %s is NULL",
                  !plugin ? "plugin" : !action ? "action" : "out");
  apex_spawn_opts_t o = APEX_SPAWN_OPTS_INIT;
  if (uo) {
    size_t min = offsetof(apex_spawn_opts_t, weight) + sizeof(double);
    if (uo->struct_size < min || uo->struct_size > 4096)
      return refuse(r, APEX_E_INVALID,
                    "apex_ctx_spawn: opts.struct_size %u (start with APEX_SPAWN_OPTS_INIT)",
                    (unsigned)uo->struct_size);
    memcpy(&o, uo, uo->struct_size < sizeof o ? uo->struct_size : sizeof o);
    o.struct_size = sizeof o;
  }
  if (o.weight == 0) o.weight = 1.0;
  if (!isfinite(o.weight) || o.weight < 0)
    return refuse(r, APEX_E_INVALID, "apex_ctx_spawn: weight %g: want a finite number > 0",
                  o.weight);
  if (o.label && (strlen(o.label) > LABEL_MAX || !apex__utf8_valid(o.label, strlen(o.label))))
    return refuse(r, APEX_E_INVALID, "apex_ctx_spawn: label: want UTF-8 of at most %d bytes",
                  LABEL_MAX);
  if (o.submit && (o.submit->struct_size == 0 || o.submit->struct_size > 4096))
    return refuse(r, APEX_E_INVALID, "apex_ctx_spawn: submit.struct_size %u",
                  (unsigned)o.submit->struct_size);

  /* A blocking attempt's own handler spawning on the worker that runs it,
   * with the family made: the task lock's checks hold without it (the
   * attempt is open, and cannot end, and its run state, task, token and
   * family stay while the handler runs on this thread), so the lock is
   * not taken (a fan-out took the parent's stripe lock once per child:
   * bench/analysis.md, W11 of the sixth session). Any other caller (a
   * deferred attempt's handler or callbacks, whose attempt another thread
   * may complete meanwhile; a thread of the plugin's; a ctx used where it
   * should not be) takes it, and holds what it uses (below). */
  apex__worker_t *w = apex__pool_self(m);
  apex_task_t *t = w ? atomic_load_explicit(&w->holding, memory_order_relaxed) : NULL;
  apex__family_t *f = NULL;
  int locked = 0;
  /* has_fam first: a run state with a family keeps its progress slot, so
   * its task's run link is never cleared (task.c, release_life_locked) and
   * reads safely here. */
  if (t && t->id == atomic_load_explicit(&r->id, memory_order_relaxed) &&
      atomic_load_explicit(&r->has_fam, memory_order_acquire) &&
      atomic_load_explicit(&r->attempt_open, memory_order_acquire) && t->run == r &&
      t->action->kind == APEX_ACTION_BLOCKING) {
    f = r->prog->fam;
  } else {
    t = apex__run_lock_open(r);
    if (!t) {
      apex__ctx_misuse(m, atomic_load_explicit(&r->id, memory_order_relaxed), "apex_ctx_spawn");
      return APEX_E_INVALID;
    }
    locked = 1;
  }
  if (is_terminal(atomic_load(&t->state))) {
    if (locked) pthread_mutex_unlock(apex__task_mu(t));
    return refuse(r, APEX_E_CANCELLED, "apex_ctx_spawn: the task ended (cancelled or timed out)");
  }
  unsigned depth = (t->opts ? t->opts->child_depth : 0) + 1u;
  if (depth > APEX_CHILD_MAX_DEPTH) {
    if (locked) pthread_mutex_unlock(apex__task_mu(t));
    return refuse(r, APEX_E_INVALID,
                  "apex_ctx_spawn %s.%s: depth %u is over APEX_CHILD_MAX_DEPTH (%d): "
                  "a cycle of spawns?",
                  plugin, action, depth, APEX_CHILD_MAX_DEPTH);
  }
  if (locked) {
    if (!r->prog) r->prog = calloc(1, sizeof *r->prog);
    f = r->prog ? r->prog->fam : NULL;
    if (r->prog && !f && (f = r->prog->fam = family_new(t, r, (uint8_t)(depth - 1))))
      atomic_store(&r->has_fam, 1); /* seq_cst: as visible as the lock would make it */
  }
  spawn_call_t sc = {r, t, f, locked, 0, NULL, t->deadline_ns, t->id, (uint8_t)depth};
  if (!locked) return spawn_child(&sc, plugin, action, params, &o, out);
  /* The call may outlive its attempt: a thread of the plugin's that
   * spawns while another completes it, or after a complete the children
   * held, can find the attempt ended, the task retried under a new attempt
   * token (whose first spawn replaces the family's shared token and drops
   * the old one) or even freed, family and all. So it holds the task (and
   * with it the run state and family) and the attempt's token, and checks
   * under the task lock, before it counts its child, that the attempt it
   * saw here is still the open one. */
  sc.att = t->attempt;
  apex__task_ref(t);
  apex__tmo_t *x = apex__task_tmo(t);
  apex_token_t *at = x ? atomic_load_explicit(&x->tok, memory_order_relaxed) : NULL;
  sc.att_tok = at ? apex_token_ref(at) : NULL;
  pthread_mutex_unlock(apex__task_mu(t));
  int rc = spawn_child(&sc, plugin, action, params, &o, out);
  if (sc.att_tok) apex_token_unref(sc.att_tok);
  apex__task_unref(t);
  return rc;
}

/* The rest of a spawn, past the checks on the ctx (under the task lock, or
 * on the worker running a blocking attempt's handler): its family's shared
 * token, its node, the submit. Inlined in both of ctx_spawn's paths (a
 * call with its arguments' copies was a few dozen instructions a child of
 * W11's fan-out). */
static inline __attribute__((always_inline)) int spawn_child(const spawn_call_t *sc,
                                                             const char *plugin,
                                                             const char *action, json_t *params,
                                                             const apex_spawn_opts_t *o,
                                                             apex_child_t **out) {
  apex__run_t *r = sc->r;
  apex_manager_t *m = apex__run_m(r);
  apex_task_t *t = sc->t;
  apex__family_t *f = sc->f;
  unsigned depth = sc->depth;
  uint64_t cap = sc->cap, pid = sc->pid;
  if (!f) return refuse(r, APEX_E_NOMEM, "apex_ctx_spawn: out of memory");
  /* The attempt's token: held by the call (locked), else stable while the
   * blocking handler runs; the task's own lives as long as t. Never under
   * t's lock (it may make the token). */
  apex_token_t *tok = sc->att_tok ? sc->att_tok : sc->locked ? apex__task_token(t)
                                                              : apex__ctx_token(t);
  if (!tok) return refuse(r, APEX_E_NOMEM, "apex_ctx_spawn: out of memory");
  if (apex_token_is_cancelled(tok))
    return refuse(r, APEX_E_CANCELLED, "apex_ctx_spawn %s.%s: the task is cancelled (%s)", plugin,
                  action, apex_token_reason(tok));
  int stale = 0;
  apex_token_t *sh = family_shared(f, t, tok, &stale);
  if (stale) {
    apex__ctx_misuse(m, pid, "apex_ctx_spawn");
    return APEX_E_INVALID;
  }
  if (!sh) return refuse(r, APEX_E_NOMEM, "apex_ctx_spawn: out of memory");

  char *label = NULL;
  if (o->label && !(label = strdup(o->label)))
    return refuse(r, APEX_E_NOMEM, "apex_ctx_spawn: out of memory");
  /* The commit: from here the child counts in the family. A call that
   * took the task lock checks again under it that its attempt is the open
   * one (the attempt cannot end while the lock is held), and that its
   * complete was not called: a held complete (apex__family_defer_complete)
   * leaves the attempt open until its children ended. sh is the family's
   * then (only a spawn of another attempt replaces it), so sh is alive and
   * the child's reference comes from the family's batch. */
  pthread_mutex_t *tmu = sc->locked ? apex__task_mu(t) : NULL;
  if (tmu) pthread_mutex_lock(tmu);
  int same = !tmu || (atomic_load_explicit(&r->attempt_open, memory_order_relaxed) &&
                      t->run == r && t->attempt == sc->att);
  if (same) apex__lock(&f->mu);
  if (!same || f->complete_pending || (tmu && f->complete_att == sc->att) ||
      atomic_load_explicit(&f->shared, memory_order_relaxed) != sh) {
    if (same) apex__unlock(&f->mu);
    if (tmu) pthread_mutex_unlock(tmu);
    free(label);
    apex__ctx_misuse(m, pid, "apex_ctx_spawn");
    return APEX_E_INVALID;
  }
  apex_child_t *n = node_new_locked(f);
  if (!n) {
    apex__unlock(&f->mu);
    if (tmu) pthread_mutex_unlock(tmu);
    free(label);
    return refuse(r, APEX_E_NOMEM, "apex_ctx_spawn: out of memory");
  }
  n->fam = f;
  /* A spawn on the blocking handler's own worker (unlocked) is in the one
   * attempt that cannot end under it: t->attempt stays. */
  n->att = (uint16_t)(sc->att ? sc->att : sc->t->attempt);
  n->weight = o->weight;
  n->label = label;
  f->kids[f->n++] = n;
  f->sw += n->weight;
  f->n_live++;
  if (!f->holds_parent) {
    apex__task_ref(t);
    f->holds_parent = 1;
  }
  /* The child's reference on the shared token, from the batch. */
  int taken = 0;
  if (!f->sh_refs) {
    apex__token_ref_n(sh, SH_REFS_BATCH);
    f->sh_refs = SH_REFS_BATCH;
  }
  f->sh_refs--;
  /* The child's count on the family's opts block, from its batch too; given
   * back below when the child's opts are not the family's. */
  const apex__task_opts_t *fo = NULL;
  if (f->fo) {
    if (!f->fo_refs) {
      atomic_fetch_add_explicit(&f->fo->refs, FO_REFS_BATCH, memory_order_relaxed);
      f->fo_refs = FO_REFS_BATCH;
    }
    f->fo_refs--;
    fo = f->fo->o;
  }
  apex__unlock(&f->mu);
  if (tmu) pthread_mutex_unlock(tmu);

  /* Without submit options or a timeout of its own, the defaults: no
   * options at all (what a zeroed block would say, without its copy). */
  apex_submit_opts_t so, *sop = NULL;
  if (o->submit || o->timeout_s != 0) {
    apex_submit_opts_init(&so);
    if (o->submit) {
      size_t sz = o->submit->struct_size < sizeof so ? o->submit->struct_size : sizeof so;
      memcpy(&so, o->submit, sz);
      so.struct_size = sizeof so; /* the rest keeps the defaults init gave it */
    }
    so.parent = NULL; /* the family's shared token serves (sp.tok) */
    if (o->timeout_s != 0) so.timeout_s = o->timeout_s;
    sop = &so;
  }
  apex__spawn_info_t sp = {n, pid, (uint8_t)depth, cap, sh, &taken, fo};
  apex_task_t *ct = NULL;
  apex_error_t *err = NULL;
  int rc = apex__submit(m, plugin, action, params, sop, &sp, NULL, &ct, &err);
  apex__lock(&f->mu);
  if (rc != APEX_OK) {
    for (size_t i = f->n; i-- > 0;) {
      if (f->kids[i] == n) {
        memmove(&f->kids[i], &f->kids[i + 1], (f->n - i - 1) * sizeof *f->kids);
        f->n--;
        f->sw -= n->weight; /* never settled (no task): open_lo <= i */
        break;
      }
    }
    f->n_live--;
    int drop = !f->n_live && !f->busy && f->holds_parent;
    if (drop) f->holds_parent = 0;
    /* The reference the submit did not take: back to the batch, or
     * dropped when sh is no longer the family's (its attempt ended since,
     * and the next one's spawn replaced it). */
    int give_back = !taken && atomic_load_explicit(&f->shared, memory_order_relaxed) != sh;
    if (!taken && !give_back) f->sh_refs++;
    if (fo) f->fo_refs++; /* a refused task never counts on the block */
    apex__unlock(&f->mu);
    if (give_back) apex_token_unref(sh);
    if (drop) apex__task_unref(t); /* not the last: the call (or the blocking attempt) holds one */
    free(n->label);
    refuse(r, rc, "apex_ctx_spawn: %s", apex_error_message(err));
    apex_error_unref(err);
    return rc;
  }
  n->task = ct; /* the handle's reference, now the node's */
  n->id = apex_task_id(ct);
  if (fo && !ct->opts->fam) f->fo_refs++; /* a block of its own: not counted */
  /* It may have ended already (settled then): its end could not let the
   * task go before it was set. */
  apex_task_t *drop = n->ended && let_go(ct) ? let_go_locked(n) : NULL;
  /* The shared token fired before the node had its task: its callback
   * could not end it, so this does (it would never start anyway); and
   * once the parent's deadline passed, a child whose deadline is that one
   * ends as that deadline ends it (apex__family_deadline could not see
   * it either). */
  apex_task_t *late = NULL;
  if (!n->ended && apex_token_is_cancelled(sh)) apex__task_ref(late = ct);
  int late_dl = late && f->deadline_fired && capped(ct);
  apex__unlock(&f->mu);
  if (drop) apex__task_unref(drop);
  if (late) {
    if (late_dl)
      apex__task_on_deadline(late);
    else
      (void)apex__task_cancel(late, APEX__CAUSE_PARENT, "parent");
    apex__task_unref(late);
  }
  *out = n;
  return APEX_OK;
}

/* ------------------------------------------------------ engine hooks */

void apex__child_delivered(apex_task_t *t, apex_progress_t *snap) {
  apex_child_t *n = apex__task_child(t);
  apex__family_t *f = n->fam;
  apex__lock(&f->mu);
  apex_progress_t *old = n->last;
  /* A settled child's share may still move (a cancelled one counts what
   * it reported): its old share out of the sum, the new one in. */
  if (n->settled) f->swp_settled -= n->weight * node_pct(n);
  n->last = apex_progress_ref(snap);
  if (n->settled) f->swp_settled += n->weight * node_pct(n);
  apex__unlock(&f->mu);
  apex_progress_unref(old); /* no user code: freeing under the child's lock is fine */
  /* The parent is held (this child is live): queue its next roll-up. */
  if (!atomic_exchange(&f->dirty, 1)) apex__flush_request(apex__task_m(f->parent), f->parent);
}

void apex__child_ended(apex_task_t *t) {
  apex_child_t *n = apex__task_child(t);
  apex__family_t *f = n->fam;
  apex_manager_t *m = apex__task_m(f->parent);
  apex__lock(&f->mu);
  n->ended = 1;
  f->n_live--;
  apex_child_fn fn = n->u.on_end.fn;
  void *user = n->u.on_end.user;
  n->final = (uint8_t)atomic_load(&t->state);
  settle_locked(f, n);
  /* t is held by the thread that ended it (this one), which wrote its
   * outcome: read without t's lock. */
  apex_task_t *gone = n->task && let_go(t) ? let_go_locked(n) : NULL;
  /* The parent's roll-up is queued once per flush: most ends find it
   * queued. An end with nothing more to do (no callback, no roll-up to
   * queue, other children still live) is this one section: the family,
   * which may go once it is left (the parent's last reference), is not
   * touched again. Otherwise busy holds it (and the parent). */
  /* Read first (seq_cst, a plain load here): most ends find the flush
   * queued, and skip the locked exchange. A 1 read here is before the
   * runtime's take in their total order, so its roll-up, under this
   * mutex after the take, sees this end. */
  int flush = !atomic_load(&f->dirty) && !atomic_exchange(&f->dirty, 1);
  int more = fn || flush || !f->n_live;
  if (more) f->busy++;
  /* Only a waiter this end may satisfy (see wait_all). Under the mutex:
   * once it is left, f may go (above). */
  if (n->watched || f->wait_every || (f->wait_all && !f->n_live)) apex__cond_broadcast(&f->cv);
  apex__unlock(&f->mu);
  if (gone) apex__task_unref(gone); /* not the last: this thread holds t */
  /* From here t may go at any time (its node is no longer its). */
  if (!more) return;
  if (flush) apex__flush_request(m, f->parent);
  if (fn) run_end_fn(f, &f->run->ctx, fn, n, user);
  apex__lock(&f->mu);
  f->busy--;
  /* The last child: what waited for the children happens now, the
   * parent's deadline first (its outcome is timed_out), then a complete
   * held for them. */
  while (!f->n_live && !f->busy && f->deadline_pending) {
    f->deadline_pending = 0;
    f->busy++;
    apex__unlock(&f->mu);
    apex__task_on_deadline(f->parent);
    apex__lock(&f->mu);
    f->busy--;
  }
  int quiet = !f->n_live && !f->busy;
  int cp = quiet && f->complete_pending, rc = f->complete_rc;
  if (cp) f->complete_pending = 0;
  apex__run_t *run = f->run;
  apex_task_t *parent = f->parent;
  int drop = quiet && f->holds_parent;
  if (drop) f->holds_parent = 0;
  /* apex__family_settle waits for busy 0 too; the other waits were woken
   * by the end itself. Under the mutex: once quiet, the settled parent's
   * worker may free the family as soon as it is released. */
  if (quiet && f->wait_all) apex__cond_broadcast(&f->cv);
  apex__unlock(&f->mu);
  /* With a complete held, the parent's open attempt keeps it alive. */
  if (drop) apex__task_unref(parent);
  if (cp) {
    int teardown = apex__run_complete(run, rc, 0);
    if (teardown && !apex__pool_defer_teardown(m)) apex__manager_teardown(m, 0);
  }
}

int apex__family_hold_deadline(apex__family_t *f) {
  apex__lock(&f->mu);
  int held = f->n_live > 0;
  if (held) f->deadline_pending = 1;
  apex__unlock(&f->mu);
  return held;
}

void apex__family_deadline(apex__family_t *f) {
  apex__lock(&f->mu);
  f->deadline_fired = 1;
  size_t k = 0;
  apex_task_t **v = f->n_live ? malloc(f->n_live * sizeof *v) : NULL;
  for (size_t i = f->open_lo; v && i < f->n && k < f->n_live; i++) {
    apex_child_t *n = f->kids[i];
    if (!n->ended && n->task && capped(n->task)) {
      apex__task_ref(n->task);
      v[k++] = n->task;
    }
  }
  int nomem = !v && f->n_live;
  apex_task_t *hold = nomem && f->holds_parent ? f->parent : NULL;
  if (hold) apex__task_ref(hold);
  apex__unlock(&f->mu);
  /* Each as its own timer would have (the first of them may end the last
   * child, and with it bring the parent's deadline back: the list holds
   * references, so the family's state is not read meanwhile). */
  for (size_t i = 0; i < k; i++) {
    apex__task_on_deadline(v[i]);
    apex__task_unref(v[i]);
  }
  free(v);
  if (hold) { /* no memory for the list: one at a time, the parent (and f) held */
    for (size_t i = 0;; i++) {
      apex__lock(&f->mu);
      apex_task_t *ct = NULL;
      if (i < f->n && !f->kids[i]->ended && f->kids[i]->task && capped(f->kids[i]->task))
        apex__task_ref(ct = f->kids[i]->task);
      size_t n = f->n;
      apex__unlock(&f->mu);
      if (ct) {
        apex__task_on_deadline(ct);
        apex__task_unref(ct);
      }
      if (i >= n) break;
    }
    apex__task_unref(hold);
  }
}

int apex__family_take_dirty(apex__family_t *f) { return atomic_exchange(&f->dirty, 0); }

void apex__family_settle(apex_task_t *t) {
  /* Most handlers spawn nothing: no lock round trip for them. t->run is
   * this attempt's, set before the handler ran (the task lock orders it). */
  if (!t->run || !atomic_load(&t->run->has_fam)) return;
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  apex__family_t *f = t->run && t->run->prog ? t->run->prog->fam : NULL;
  pthread_mutex_unlock(mu);
  if (!f) return;
  apex__lock(&f->mu);
  int live = f->n_live || f->busy;
  apex__unlock(&f->mu);
  if (!live) return;
  cancel_live(f);
  apex__lock(&f->mu);
  f->wait_all++;
  while (f->n_live || f->busy) apex__cond_wait(&f->cv, &f->mu, UINT64_MAX);
  f->wait_all--;
  apex__unlock(&f->mu);
}

int apex__family_defer_complete(apex__run_t *r, int rc) {
  apex_task_t *t = apex__run_lock_open(r);
  if (!t) return 0; /* misuse: apex__run_complete counts it */
  apex__family_t *f = r->prog ? r->prog->fam : NULL;
  int deferred = t->action->kind == APEX_ACTION_DEFERRED;
  uint32_t att = t->attempt;
  /* Read under the lock: once a held complete leaves f->mu below, its
   * children may all end, the complete run and the host free t before
   * apex__run_mark_held is called. */
  uint64_t id = t->id;
  pthread_mutex_unlock(apex__task_mu(t));
  /* A blocking handler's complete is refused (apex__run_complete logs it):
   * it must not cancel the children either. */
  if (!f || !deferred) return 0;
  apex__lock(&f->mu);
  if (f->complete_pending) { /* a second complete while the first waits */
    apex__unlock(&f->mu);
    apex__ctx_misuse(apex__run_m(r), id, "apex_ctx_complete");
    return 1;
  }
  if (!f->n_live && !f->busy) {
    /* It ends the attempt now: a family call made for it from here is
     * refused (completed_locked), and a spawn racing it too. */
    f->complete_att = att;
    apex__unlock(&f->mu);
    return 0;
  }
  int inside = f->busy && !f->n_live; /* from the last child's end callback */
  f->complete_pending = 1;
  f->complete_rc = rc;
  f->complete_att = att;
  /* Held for what follows (the family's own reference, held while a child
   * is live or ending, makes this one safe to take): once f->mu is left,
   * the children may all end, the complete run and the host release t,
   * and t's family goes with it. */
  apex__task_ref(t);
  apex__unlock(&f->mu);
  /* The plugin's other ctx calls are refused from here on, as after a
   * complete (ctx.c), though the attempt stays open for its children. */
  apex__run_mark_held(r, id, att);
  if (!inside) cancel_live(f);
  apex__task_unref(t);
  return 1;
}

/* ----------------------------------------------------------- roll-up */

/* A copy of a sub_tasks array keeping levels levels of it. */
static json_t *copy_tree(json_t *arr, int levels) {
  if (levels <= 0 || !json_is_array(arr)) return NULL;
  json_t *out = json_array();
  size_t i;
  json_t *e;
  json_array_foreach(arr, i, e) {
    if (!out) break;
    json_t *o = json_object();
    const char *k;
    json_t *v;
    if (o && json_is_object(e)) {
      json_object_foreach(e, k, v) {
        json_t *cv = strcmp(k, "sub_tasks") == 0 ? copy_tree(v, levels - 1) : json_deep_copy(v);
        if (cv) json_object_set_new(o, k, cv);
      }
    }
    if (!o || json_array_append_new(out, o) != 0) {
      json_decref(out);
      return NULL;
    }
  }
  return out;
}

static int node_state(const apex_child_t *n) {
  if (n->ended) return n->final;
  return n->task ? (int)atomic_load(&n->task->state) : APEX_TASK_QUEUED;
}

/* A child's share of work done, for the roll-up: one that finished
 * (succeeded or failed) did its part; one cancelled or timed out did what
 * it reported, so a cancelled tree does not add up to a full bar. */
static double node_pct(const apex_child_t *n) {
  if (n->ended && (n->final == APEX_TASK_SUCCEEDED || n->final == APEX_TASK_FAILED)) return 100.0;
  return n->last ? apex_progress_percentage(n->last) : 0.0;
}

/* What a child's node shows: a failed child stays at the work it reported
 * (it counts as done in the roll-up above, but drawn full it would look
 * like a success). */
static double node_shown_pct(const apex_child_t *n, int st) {
  if (n->ended && st == APEX_TASK_FAILED) return n->last ? apex_progress_percentage(n->last) : 0.0;
  return node_pct(n);
}

static json_t *node_json(const apex_child_t *n, int st) {
  char name[300];
  const char *pl = n->task ? n->task->plugin->desc.name : n->let_go ? n->u.names.plugin : "?";
  const char *ac = n->task ? n->task->action->name : n->let_go ? n->u.names.action : "?";
  snprintf(name, sizeof name, "%s.%s", pl, ac);
  json_t *o = json_pack("{s:s, s:s, s:I, s:f, s:s, s:f, s:s}", "name", n->label ? n->label : name,
                        "action", name, "task", (json_int_t)n->id, "weight", n->weight, "status",
                        apex_task_state_name((apex_task_state_t)st), "percentage", node_shown_pct(n, st),
                        "message", n->last ? apex_progress_message(n->last) : "");
  if (!o) return NULL;
  json_t *subs = n->last ? (json_t *)apex_progress_sub_tasks(n->last) : NULL;
  if (subs && json_array_size(subs) > 0) {
    json_t *c = copy_tree(subs, APEX_CHILD_TREE_MAX_DEPTH - 1);
    if (c) json_object_set_new(o, "sub_tasks", c);
  }
  return o;
}

int apex__family_rollup(apex__family_t *f, double own_pct, double *pct, json_t **subs,
                        json_t **details) {
  apex__lock(&f->mu);
  if (f->n == 0) {
    apex__unlock(&f->mu);
    return APEX_OK;
  }
  /* The settled children are in the sums; the open ones (live, or ended
   * before their spawn returned) are visited. */
  while (f->open_lo < f->n && f->kids[f->open_lo]->settled) f->open_lo++;
  double sw = f->sw, swp = f->swp_settled;
  size_t counts[APEX_TASK_SCHEDULED + 1];
  memcpy(counts, f->settled_counts, sizeof counts);
  for (size_t i = f->open_lo; i < f->n; i++) {
    apex_child_t *n = f->kids[i];
    if (n->settled) continue;
    int st = node_state(n);
    if (st >= 0 && st <= APEX_TASK_SCHEDULED) counts[st]++;
    swp += n->weight * node_pct(n);
  }
  double tot = f->own_weight + sw;
  double p = tot > 0 ? (f->own_weight * own_pct + swp) / tot : own_pct;
  *pct = p < 0 ? 0 : p > 100 ? 100 : p;
  int rc = APEX_OK;
  if (!*subs) *subs = json_array();
  size_t listed = 0;
  /* Running children first, then the others in spawn order. A running
   * one is open: the first pass starts at open_lo; the second stops once
   * the list is full. */
  for (int pass = 0; pass < 2 && *subs; pass++) {
    for (size_t i = pass == 0 ? f->open_lo : 0; i < f->n && listed < APEX_CHILD_TREE_MAX_LISTED;
         i++) {
      apex_child_t *n = f->kids[i];
      int st = node_state(n);
      if ((st == APEX_TASK_RUNNING && !n->ended) != (pass == 0)) continue;
      json_t *o = node_json(n, st);
      if (!o || json_array_append_new(*subs, o) != 0) {
        rc = APEX_E_NOMEM;
        break;
      }
      listed++;
    }
  }
  if (!*details) *details = json_object();
  json_t *cs = json_pack(
      "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "total", (json_int_t)f->n, "listed",
      (json_int_t)listed, "queued",
      (json_int_t)(counts[APEX_TASK_QUEUED] + counts[APEX_TASK_SCHEDULED]), "running",
      (json_int_t)counts[APEX_TASK_RUNNING], "retry_wait", (json_int_t)counts[APEX_TASK_RETRY_WAIT],
      "succeeded", (json_int_t)counts[APEX_TASK_SUCCEEDED], "failed",
      (json_int_t)counts[APEX_TASK_FAILED], "cancelled", (json_int_t)counts[APEX_TASK_CANCELLED],
      "timed_out", (json_int_t)counts[APEX_TASK_TIMED_OUT]);
  apex__unlock(&f->mu);
  if (!*subs || !*details || !cs || json_object_set_new(*details, "children", cs) != 0)
    rc = APEX_E_NOMEM;
  return rc;
}

/* ------------------------------------------------- waits and outcomes */

/* A wait naming at most this many children marks them (watched); one
 * naming more is woken by every end. */
#define WATCH_MAX 64

/* Checks child is one of f's. */
/* child is a handle of attempt att's, in family f. */
static int mine(apex__family_t *f, apex_child_t *child, uint32_t att) {
  return f && child && child->fam == f && child->att == (uint16_t)att;
}

static void wake_family(apex_token_t *tok, const char *reason, void *user) {
  (void)tok;
  (void)reason;
  apex__family_t *f = user;
  apex__lock(&f->mu);
  apex__cond_broadcast(&f->cv);
  apex__unlock(&f->mu);
}

static int child_wait(apex__run_t *r, apex_task_t *t, uint32_t att, apex__family_t *f,
                      apex_token_t *tok, apex_child_t *const *kids, size_t n, int all,
                      int64_t timeout_ms, size_t *which);

/* The task and the attempt's token are held for the wait (family_of): a
 * thread of the plugin's may call after a complete the children held
 * returned (refused, but the task lock's check passes), or be held past
 * its attempt's end, and the task go, while it runs. */
static int ctx_child_wait(apex_ctx_t *c, apex_child_t *const *kids, size_t n, int all,
                          int64_t timeout_ms, size_t *which) {
  apex_task_t *t;
  apex_token_t *at;
  uint32_t att;
  if (which) *which = 0;
  apex__family_t *f = family_of(c, 0, "apex_ctx_wait_children", &t, &att, NULL, &at);
  if (!t) return APEX_E_INVALID;
  int rc = child_wait(run_of(c), t, att, f, at, kids, n, all, timeout_ms, which);
  if (at) apex_token_unref(at);
  apex__task_unref(t); /* after child_wait's refusals: r is in the task's block */
  return rc;
}

static int child_wait(apex__run_t *r, apex_task_t *t, uint32_t att, apex__family_t *f,
                      apex_token_t *tok, apex_child_t *const *kids, size_t n, int all,
                      int64_t timeout_ms, size_t *which) {
  if ((!kids && n) || (!all && n == 0))
    return refuse(r, APEX_E_INVALID, "apex_ctx_wait: %s", !all ? "no children to wait for"
                                                                : "children NULL with n > 0");
  for (size_t i = 0; i < n; i++)
    if (!mine(f, kids[i], att))
      return refuse(r, APEX_E_INVALID, "apex_ctx_wait: children[%zu] is %s", i,
                    kids[i] ? "not a child of this attempt" : "NULL");
  if (!f) return APEX_OK; /* all of none (no complete was held: see family_of) */
  /* After the attempt's complete (the task lock's check passes while the
   * complete is held): refused before the token is looked at. */
  apex__lock(&f->mu);
  int over = completed_locked(f, att);
  apex__unlock(&f->mu);
  if (over) {
    apex__ctx_misuse(apex__run_m(r), t->id,
                     all ? "apex_ctx_wait_children" : "apex_ctx_wait_any_child");
    return APEX_E_INVALID;
  }
  if (!tok && !(tok = apex__task_token(t))) return APEX_E_NOMEM;
  uint64_t cb = 0;
  int watched = apex_token_on_cancel(tok, wake_family, f, &cb) == APEX_OK;
  uint64_t until = apex__ns_after_ms(timeout_ms);
  int rc;
  apex__lock(&f->mu);
  /* Say what this wait waits for, so that only the ends it may be done
   * by wake it (see wait_all): every child, or the ones named (a few,
   * marked; a long list, or one near the mark's top, counts as waiting
   * for every end). */
  int every = kids && n > WATCH_MAX;
  for (size_t i = 0; kids && i < n && !every; i++)
    every = kids[i]->watched > UINT16_MAX - WATCH_MAX;
  if (!kids) f->wait_all++;
  else if (every) f->wait_every++;
  else
    for (size_t i = 0; i < n; i++) kids[i]->watched++;
  for (;;) {
    if (apex_token_is_cancelled(tok)) {
      rc = APEX_E_CANCELLED;
      break;
    }
    int done;
    if (all) {
      done = 1;
      if (!kids) done = f->n_live == 0;
      for (size_t i = 0; kids && i < n && done; i++) done = kids[i]->ended;
    } else {
      done = 0;
      for (size_t i = 0; i < n && !done; i++)
        if (kids[i]->ended) {
          done = 1;
          if (which) *which = i;
        }
    }
    if (done) {
      rc = APEX_OK;
      break;
    }
    /* The complete of this wait's attempt (or a later one) was called
     * since its check (a complete racing it: undefined, plugin.h) and ran:
     * the attempt's children all ended, so live ones are the next
     * attempt's, which a wait of this one must not wait for (with this
     * attempt's token, until its time ran out). A complete still held
     * waits for this attempt's children: so does the wait. */
    if (completed_locked(f, att) && (f->complete_att != att || !f->complete_pending)) {
      rc = APEX_E_INVALID;
      break;
    }
    uint64_t now = apex__now_ns();
    if (now >= until) {
      rc = APEX_E_AGAIN;
      break;
    }
    /* Without a token watch (no memory), wake now and then to look. */
    uint64_t to = watched ? until : (until - now > 50000000u ? now + 50000000u : until);
    apex__cond_wait(&f->cv, &f->mu, to);
  }
  if (!kids) f->wait_all--;
  else if (every) f->wait_every--;
  else
    for (size_t i = 0; i < n; i++) kids[i]->watched--;
  apex__unlock(&f->mu);
  if (watched && cb) apex_token_remove_callback(tok, cb);
  if (rc == APEX_E_INVALID)
    apex__ctx_misuse(apex__run_m(r), t->id,
                     all ? "apex_ctx_wait_children" : "apex_ctx_wait_any_child");
  return rc;
}

static int ctx_child_on_end(apex_ctx_t *c, apex_child_t *child, apex_child_fn fn, void *user) {
  apex__run_t *r = run_of(c);
  apex_task_t *t;
  uint32_t att;
  apex__family_t *f = family_of(c, 0, "apex_ctx_on_child_end", &t, &att, NULL, NULL);
  if (!t) return APEX_E_INVALID;
  if (!fn || !mine(f, child, att)) {
    int rc = refuse(r, APEX_E_INVALID, "apex_ctx_on_child_end: %s",
                    !fn ? "fn is NULL" : "not a child of this attempt");
    apex__task_unref(t); /* after refuse: r is in the task's block */
    return rc;
  }
  apex__lock(&f->mu);
  if (completed_locked(f, att)) { /* even from an end callback: nothing left to register for */
    apex__unlock(&f->mu);
    apex__ctx_misuse(apex__run_m(r), t->id, "apex_ctx_on_child_end");
    apex__task_unref(t);
    return APEX_E_INVALID;
  }
  if (child->on_end_set) {
    apex__unlock(&f->mu);
    apex__task_unref(t);
    return APEX_E_ALREADY;
  }
  child->on_end_set = 1;
  int now = child->ended;
  if (!now) {
    child->u.on_end.fn = fn;
    child->u.on_end.user = user;
  }
  apex__unlock(&f->mu);
  if (now) run_end_fn(f, c, fn, child, user);
  apex__task_unref(t); /* after fn: it reads the family */
  return APEX_OK;
}

static int ctx_child_outcome(apex_ctx_t *c, apex_child_t *child, int *state, json_t **result,
                             json_t **error) {
  apex__run_t *r = run_of(c);
  apex_task_t *t;
  uint32_t att;
  apex__family_t *f = family_of(c, 0, "apex_ctx_child_outcome", &t, &att, NULL, NULL);
  if (!t) return APEX_E_INVALID;
  if (!mine(f, child, att)) {
    int rc = refuse(r, APEX_E_INVALID, "apex_ctx_child_outcome: not a child of this attempt");
    apex__task_unref(t); /* after refuse: r is in the task's block */
    return rc;
  }
  apex__lock(&f->mu);
  if (completed_locked(f, att) && tls_end_of != f) {
    apex__unlock(&f->mu);
    apex__ctx_misuse(apex__run_m(r), t->id, "apex_ctx_child_outcome");
    apex__task_unref(t);
    return APEX_E_INVALID;
  }
  int ended = child->ended, let = child->let_go;
  apex_task_t *ct = child->task;
  if (ct) apex__task_ref(ct); /* a spawn racing on another thread may let it go */
  apex__unlock(&f->mu);
  apex__task_unref(t); /* the family is not read again */
  if (let) { /* succeeded with no result (let_go) */
    if (state) *state = APEX_TASK_SUCCEEDED;
    if (result) *result = json_null();
    return APEX_OK;
  }
  if (!ct) { /* its submit has not returned yet (a spawn on another thread) */
    if (state) *state = APEX_TASK_QUEUED;
    return APEX_E_AGAIN;
  }
  int st = (int)apex_task_state(ct);
  if (state) *state = st;
  int rc;
  if (!ended) {
    rc = APEX_E_AGAIN;
  } else if (st == APEX_TASK_SUCCEEDED) {
    if (result) *result = apex_task_result(ct);
    rc = APEX_OK;
  } else {
    apex_error_t *e = apex_task_error(ct);
    int code = apex_error_code(e);
    if (error) *error = apex_error_to_json(e);
    apex_error_unref(e);
    rc = code == APEX_OK ? APEX_E_EXECUTION : code;
  }
  apex__task_unref(ct);
  return rc;
}

static uint64_t ctx_child_task_id(apex_ctx_t *c, apex_child_t *child) {
  apex_task_t *t;
  uint32_t att;
  apex__family_t *f = family_of(c, 0, "apex_ctx_child_task_id", &t, &att, NULL, NULL);
  uint64_t id = 0;
  if (mine(f, child, att)) {
    apex__lock(&f->mu);
    int over = completed_locked(f, att) && tls_end_of != f;
    if (!over) id = child->id;
    apex__unlock(&f->mu);
    if (over) apex__ctx_misuse(apex__run_m(run_of(c)), t->id, "apex_ctx_child_task_id");
  }
  if (t) apex__task_unref(t);
  return id;
}

static void ctx_child_release(apex_ctx_t *c, apex_child_t *child) {
  /* Nothing to free before the task goes: the node stays in the roll-up. */
  (void)c;
  (void)child;
}

static int ctx_children_own_weight(apex_ctx_t *c, double w) {
  apex__run_t *r = run_of(c);
  if (!isfinite(w) || w < 0)
    return refuse(r, APEX_E_INVALID, "apex_ctx_children_own_weight: %g: want finite >= 0", w);
  apex_task_t *t;
  int nomem = 0;
  uint32_t att;
  apex__family_t *f = family_of(c, 1, "apex_ctx_children_own_weight", &t, &att, &nomem, NULL);
  if (!t) return APEX_E_INVALID;
  int over = 0;
  if (f) {
    apex__lock(&f->mu);
    over = completed_locked(f, att);
    if (!over) f->own_weight = w;
    apex__unlock(&f->mu);
  }
  if (over) apex__ctx_misuse(apex__run_m(r), t->id, "apex_ctx_children_own_weight");
  apex__task_unref(t);
  return over ? APEX_E_INVALID : f ? APEX_OK : APEX_E_NOMEM;
}

void apex__children_api_init(apex_host_api_t *api) {
  api->spawn = ctx_spawn;
  api->child_wait = ctx_child_wait;
  api->child_on_end = ctx_child_on_end;
  api->child_outcome = ctx_child_outcome;
  api->child_task_id = ctx_child_task_id;
  api->child_release = ctx_child_release;
  api->children_own_weight = ctx_children_own_weight;
}
