/* Trace context for tasks: W3C traceparent parsing and formatting, ids,
 * sampling, and each task's live span from submit to its end.
 *
 * Span structure (docs/observability.md, "Traces"): a task is one span,
 * named "PLUGIN.ACTION", from submit to its terminal state; each attempt a
 * child span "PLUGIN.ACTION attempt"; retries, timeouts, cancellation and
 * progress milestones are events on the task's span; a child task
 * (apex_ctx_spawn) is a child span of its parent's attempt. A task
 * submitted with a traceparent joins that trace as a child of the span it
 * names; its sampled flag decides (parent-based sampling), as its parent's
 * decision does for a child task; only a new trace asks the sampler.
 *
 * Locks: a task's live span is in its stripe's table (tracer->tab), which
 * that stripe's lock (the task lock) guards; every hook but submit runs
 * under it already. A task that starts a new trace gets its span there,
 * at its first attempt or its end (span_root_locked), so submit takes no
 * lock for it; one that joins a context gets it at submit, which takes
 * the parent task's lock to read its ids, drops it, then takes the new
 * task's: never two at once. Finished spans go to the exporter's
 * lock-free queue (trace_export.c).
 *
 * What can fail: memory (that task or attempt is not traced, and counted
 * among the spans dropped), the trace file (apex_manager_new fails with
 * APEX_E_IO). */
#include "obs/trace.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "core/utf8.h"
#include "exec/internal.h"
#include "obs/clock.h"
#include "obs/metrics.h"

/* What a lock stripe keeps for tracing, all under that stripe's lock (the
 * task lock), a cache line or more each: the table of its live spans, and
 * the count of sampled spans it made (stored, not added to, under the
 * lock; read without it by apex_manager_trace_stats). */
typedef struct trace_stripe {
  _Alignas(APEX__CACHE_LINE) apex__span_t **b;
  uint32_t nb, n;
  _Atomic uint64_t started;
} trace_stripe_t;

/* What a thread slot (obs/clock.h) keeps: cleared pairs to make spans
 * from, the thread's alone (no lock), so a pair a worker recycles stays in
 * its cache for its next task. The shared slot (APEX__MX_SLOTS) has none. */
typedef struct trace_slot {
  _Alignas(APEX__CACHE_LINE) apex__span_t *free; /* by next */
  uint32_t n_free;
} trace_slot_t;

/* Cleared pairs a slot keeps at most (beyond them: freed). */
#define SLOT_FREE_MAX 64u

_Static_assert(APEX__EXPORT_LANES == APEX__MX_SLOTS, "a lane per thread slot");

struct apex__tracer {
  trace_stripe_t tab[APEX__LOCK_STRIPES];
  trace_slot_t slot[APEX__MX_SLOTS];
  int sampler;     /* ALWAYS, NEVER or RATIO (resolved) */
  uint64_t ratio_bound; /* RATIO: sampled when the id's low 56 bits are below */
  apex__exporter_t *ex; /* NULL: no exporter (context only) */
  int64_t wall_off;     /* CLOCK_REALTIME - CLOCK_MONOTONIC at init, ns */
  atomic_uint_fast64_t nomem; /* spans not made (no memory) */
};

/* Now, as a span's time: Unix ns, from CLOCK_MONOTONIC and the offset
 * taken at init, as every span time is (its durations are then exact, and
 * a span's times agree with the submit time a task keeps). The observers'
 * clock (obs/clock.h), as the attempts' times are. */
static inline uint64_t now_wall(const apex__tracer_t *tr) {
  return (uint64_t)((int64_t)apex__obs_clock_ns() + tr->wall_off);
}

/* ------------------------------------------------------------ W3C rules */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1; /* upper case is invalid in a traceparent */
}

static int hex_in(const char *s, uint8_t *out, size_t n) {
  int any = 0;
  for (size_t i = 0; i < n; i++) {
    int h = hexval(s[2 * i]), l = hexval(s[2 * i + 1]);
    if (h < 0 || l < 0) return 0;
    out[i] = (uint8_t)(h << 4 | l);
    any |= out[i];
  }
  return any ? 1 : -1; /* -1: all zero */
}

static void hex_out(const uint8_t *in, size_t n, char *out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = d[in[i] >> 4];
    out[2 * i + 1] = d[in[i] & 15];
  }
  out[2 * n] = '\0';
}

apex_status_t apex_traceparent_parse(const char *s, apex_trace_context_t *out) {
  if (!s || !out) return APEX_E_INVALID;
  size_t len = strnlen(s, 512);
  if (len < APEX_TRACEPARENT_LEN) return APEX_E_INVALID;
  int vh = hexval(s[0]), vl = hexval(s[1]);
  if (vh < 0 || vl < 0) return APEX_E_INVALID;
  int ver = vh << 4 | vl;
  if (ver == 0xff) return APEX_E_INVALID;
  /* version 00 is exactly 55; a later version may carry more after '-' */
  if (ver == 0 && len != APEX_TRACEPARENT_LEN) return APEX_E_INVALID;
  if (ver != 0 && len > APEX_TRACEPARENT_LEN && s[APEX_TRACEPARENT_LEN] != '-')
    return APEX_E_INVALID;
  if (s[2] != '-' || s[35] != '-' || s[52] != '-') return APEX_E_INVALID;
  apex_trace_context_t tc;
  uint8_t flags;
  if (hex_in(s + 3, tc.trace_id, 16) != 1 || hex_in(s + 36, tc.span_id, 8) != 1 ||
      hex_in(s + 53, &flags, 1) == 0)
    return APEX_E_INVALID;
  tc.flags = flags;
  *out = tc;
  return APEX_OK;
}

apex_status_t apex_traceparent_format(const apex_trace_context_t *tc, char *buf, size_t size) {
  if (!tc || !buf || size < APEX_TRACEPARENT_LEN + 1) return APEX_E_INVALID;
  buf[0] = '0';
  buf[1] = '0';
  buf[2] = '-';
  hex_out(tc->trace_id, 16, buf + 3);
  buf[35] = '-';
  hex_out(tc->span_id, 8, buf + 36);
  buf[52] = '-';
  hex_out(&tc->flags, 1, buf + 53);
  return APEX_OK;
}

/* ------------------------------------------------------------------ ids */

/* Random ids: xoshiro256** per thread, seeded from getrandom(2) (W3C asks
 * for random trace ids; a per-thread generator costs no lock). */
/* initial-exec: no __tls_get_addr call per id (a few bytes of the static
 * TLS block libc keeps for libraries). */
#define TLS _Thread_local __attribute__((tls_model("initial-exec")))
static TLS uint64_t rng[4];
static TLS int rng_ready;

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static void rnd_seed(void) {
  if (getrandom(rng, sizeof rng, 0) != (ssize_t)sizeof rng) {
    /* no entropy source: the clock and the thread's stack address */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    rng[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32);
    rng[1] = (uint64_t)(uintptr_t)&ts;
    rng[2] = 0x9e3779b97f4a7c15u;
    rng[3] = 0xbf58476d1ce4e5b9u;
  }
  rng_ready = 1;
}

/* n words of the thread's generator into w, none of them 0 (a word of 0
 * is drawn again: an id must not be all zero, and a span id is one word,
 * a trace id two). The state is read and written once for the n: a
 * task's three ids and its first attempt's take one call
 * (span_root_locked), not four. */
static inline void rnd_words(uint64_t *w, unsigned n) {
  if (__builtin_expect(!rng_ready, 0)) rnd_seed();
  uint64_t s0 = rng[0], s1 = rng[1], s2 = rng[2], s3 = rng[3];
  for (unsigned i = 0; i < n;) {
    uint64_t r = rotl(s1 * 5, 7) * 9, t = s1 << 17;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 45);
    if (__builtin_expect(r != 0, 1)) w[i++] = r;
  }
  rng[0] = s0;
  rng[1] = s1;
  rng[2] = s2;
  rng[3] = s3;
}

/* n is 8 or 16; never all zero (an invalid id). */
static void rnd_id(uint8_t *out, size_t n) {
  uint64_t w[2];
  rnd_words(w, (unsigned)(n / 8));
  memcpy(out, w, n);
}

static uint64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------ the tracer */

static int sampler_from_env(void) {
  const char *s = getenv("APEX_TRACE_SAMPLER");
  if (!s || !*s) return APEX_TRACE_DEFAULT;
  if (!strcasecmp(s, "always") || !strcasecmp(s, "always_on")) return APEX_TRACE_ALWAYS;
  if (!strcasecmp(s, "never") || !strcasecmp(s, "always_off")) return APEX_TRACE_NEVER;
  if (!strcasecmp(s, "ratio")) return APEX_TRACE_RATIO;
  if (!strcasecmp(s, "off")) return APEX_TRACE_OFF;
  return APEX_TRACE_DEFAULT;
}

int apex__obs_check_config(const apex_manager_config_t *c, char *why, size_t n) {
  if (c->log_format < APEX_LOG_FORMAT_DEFAULT || c->log_format > APEX_LOG_FORMAT_JSON) {
    snprintf(why, n, "config.log_format %d: want an APEX_LOG_FORMAT_* value", c->log_format);
    return 0;
  }
  if (c->log_rate_limit < -1) {
    snprintf(why, n, "config.log_rate_limit %d: want -1 (none), 0 (the default) or more",
             c->log_rate_limit);
    return 0;
  }
  if (c->trace_sampler < APEX_TRACE_DEFAULT || c->trace_sampler > APEX_TRACE_OFF) {
    snprintf(why, n, "config.trace_sampler %d: want an APEX_TRACE_* value", c->trace_sampler);
    return 0;
  }
  if (!(c->trace_ratio >= 0.0 && c->trace_ratio <= 1.0)) {
    snprintf(why, n, "config.trace_ratio %g: want a number in [0, 1]", c->trace_ratio);
    return 0;
  }
  return 1;
}

int apex__trace_init(apex_manager_t *m) {
  m->tracer = NULL;
  const apex_manager_config_t *c = &m->cfg;
  const char *endpoint = c->otlp_endpoint;
  if (!endpoint) endpoint = getenv("APEX_OTLP_ENDPOINT");
  if (endpoint && !*endpoint) endpoint = NULL;
  const char *file = c->trace_file && *c->trace_file ? c->trace_file : NULL;
  int sampler = c->trace_sampler;
  double ratio = c->trace_ratio;
  if (sampler == APEX_TRACE_DEFAULT) {
    sampler = sampler_from_env();
    if (sampler == APEX_TRACE_RATIO) {
      const char *r = getenv("APEX_TRACE_RATIO");
      ratio = r ? strtod(r, NULL) : 1.0;
    }
  }
  if (sampler == APEX_TRACE_DEFAULT) sampler = file || endpoint ? APEX_TRACE_ALWAYS : APEX_TRACE_OFF;
  if (sampler == APEX_TRACE_OFF || sampler < 0 || sampler > APEX_TRACE_OFF) return APEX_OK;
  void *mem = NULL; /* its stripes are cache lines */
  if (posix_memalign(&mem, APEX__CACHE_LINE, sizeof(apex__tracer_t)) != 0) return APEX_E_NOMEM;
  apex__tracer_t *tr = memset(mem, 0, sizeof *tr);
  tr->sampler = sampler;
  if (!(ratio >= 0)) ratio = 0; /* NaN too */
  if (ratio > 1) ratio = 1;
  tr->ratio_bound = (uint64_t)ldexp(ratio, 56);
  /* A ratio of 1 samples every id (each below 2^56) and 0 none: decided
   * without reading the id, as always and never are. */
  if (sampler == APEX_TRACE_RATIO && ratio >= 1) tr->sampler = APEX_TRACE_ALWAYS;
  if (sampler == APEX_TRACE_RATIO && ratio <= 0) tr->sampler = APEX_TRACE_NEVER;
  struct timespec mono;
  clock_gettime(CLOCK_MONOTONIC, &mono);
  tr->wall_off = (int64_t)wall_ns() - (int64_t)((uint64_t)mono.tv_sec * 1000000000u + (uint64_t)mono.tv_nsec);
  if (file || endpoint) {
    char why[300];
    int rc = apex__export_start(file, endpoint, &m->log, &tr->ex, why, sizeof why);
    if (rc != APEX_OK) {
      apex__log(&m->log, APEX_LOG_ERROR, "apex_manager_new: traces: %s", why);
      free(tr);
      return rc;
    }
  }
  m->tracer = tr;
  return APEX_OK;
}

void apex__trace_stop(apex_manager_t *m) {
  apex__tracer_t *tr = m->tracer;
  if (!tr) return;
  m->tracer = NULL;
  for (int i = 0; i < APEX__LOCK_STRIPES; i++) {
    /* Every task is terminal: what is left is a submit that failed
     * between its hooks, or nothing. */
    for (uint32_t b = 0; b < tr->tab[i].nb; b++)
      for (apex__span_t *s = tr->tab[i].b[b], *next; s; s = next) {
        next = s->next;
        if (s->att && s->att != s + 1) apex__span_free(s->att);
        apex__span_free(s);
      }
    free(tr->tab[i].b);
  }
  for (int i = 0; i < APEX__MX_SLOTS; i++)
    for (apex__span_t *s = tr->slot[i].free, *next; s; s = next) {
      next = s->next;
      free(s); /* cleared: owns nothing */
    }
  if (tr->ex) apex__export_stop(tr->ex);
  free(tr);
}

apex_status_t apex_manager_trace_stats(struct apex_manager *m, apex_trace_stats_t *st) {
  if (!m || !st || st->struct_size == 0) return APEX_E_INVALID;
  apex_trace_stats_t all = {.struct_size = sizeof all};
  apex__tracer_t *tr = m->tracer;
  if (tr) {
    for (int i = 0; i < APEX__LOCK_STRIPES; i++)
      all.spans_started += atomic_load_explicit(&tr->tab[i].started, memory_order_relaxed);
    all.spans_dropped = atomic_load(&tr->nomem);
    if (tr->ex) apex__export_stats(tr->ex, &all);
  }
  size_t n = st->struct_size < sizeof all ? st->struct_size : sizeof all;
  uint32_t keep = st->struct_size;
  memcpy(st, &all, n);
  st->struct_size = keep;
  return APEX_OK;
}

/* ------------------------------------------------------------ the table */

#define TAB(tr, id) (&(tr)->tab[(id) % APEX__LOCK_STRIPES])

static uint32_t bucket(uint64_t id, uint32_t nb) {
  return (uint32_t)((id / APEX__LOCK_STRIPES * 0x9e3779b97f4a7c15u) >> 32) & (nb - 1);
}

/* Under the stripe's lock. Returns: 0, or -1 (no memory: not traced). */
static int tab_put(apex__tracer_t *tr, apex__span_t *s) {
  __typeof__(&tr->tab[0]) t = TAB(tr, s->task_id);
  if (t->n >= t->nb) { /* grow by doubling, rehashing the chains */
    uint32_t nb = t->nb ? t->nb * 2 : 64;
    apex__span_t **b = calloc(nb, sizeof *b);
    if (!b && !t->nb) return -1;
    if (b) {
      for (uint32_t i = 0; i < t->nb; i++)
        for (apex__span_t *x = t->b[i], *next; x; x = next) {
          next = x->next;
          uint32_t k = bucket(x->task_id, nb);
          x->next = b[k];
          b[k] = x;
        }
      free(t->b);
      t->b = b;
      t->nb = nb;
    } /* else: longer chains, still correct */
  }
  uint32_t k = bucket(s->task_id, t->nb);
  s->next = t->b[k];
  t->b[k] = s;
  t->n++;
  return 0;
}

static apex__span_t *tab_get(apex__tracer_t *tr, uint64_t id, int take) {
  __typeof__(&tr->tab[0]) t = TAB(tr, id);
  if (!t->nb) return NULL;
  for (apex__span_t **pp = &t->b[bucket(id, t->nb)]; *pp; pp = &(*pp)->next) {
    apex__span_t *s = *pp;
    if (s->task_id != id) continue;
    if (take) {
      *pp = s->next;
      s->next = NULL;
      t->n--;
    }
    return s;
  }
  return NULL;
}

/* ------------------------------------------------------------- the hooks */

static int sampled_new(apex__tracer_t *tr, const uint8_t trace_id[16]) {
  if (tr->sampler == APEX_TRACE_ALWAYS) return 1;
  if (tr->sampler == APEX_TRACE_NEVER) return 0;
  uint64_t low = 0; /* the id's last 7 bytes, as OpenTelemetry's ratio sampler reads them */
  for (int i = 9; i < 16; i++) low = low << 8 | trace_id[i];
  return low < tr->ratio_bound;
}

/* One sampled span more, counted in stripe st (under its lock). */
static inline void count_started(trace_stripe_t *st) {
  atomic_store_explicit(&st->started, atomic_load_explicit(&st->started, memory_order_relaxed) + 1,
                        memory_order_relaxed);
}

/* A span done with, on a thread of slot k: a pair kept cleared for the
 * thread's next task, an attempt span (a retry's) freed. */
static void span_recycle(apex__tracer_t *tr, unsigned k, apex__span_t *s) {
  if (s->is_attempt || k >= APEX__MX_SLOTS || tr->slot[k].n_free >= SLOT_FREE_MAX) {
    apex__span_free(s);
    return;
  }
  trace_slot_t *sl = &tr->slot[k];
  apex__span_clear(s);
  s->next = sl->free;
  sl->free = s;
  sl->n_free++;
}

/* A finished span: to the exporter if sampled, else recycled. Under the
 * task's lock; lock-free. */
static void span_done(apex__tracer_t *tr, apex__span_t *s) {
  unsigned k = apex__obs_slot();
  apex__span_t *back = s;
  if ((s->flags & 1) && tr->ex) back = apex__export_push(tr->ex, k, s);
  while (back) { /* not sampled, or refused by a full queue */
    apex__span_t *next = back->next;
    span_recycle(tr, k, back);
    back = next;
  }
}

/* A cleared pair: from the calling thread's own, else a bundle the
 * exporter gave back, else calloc. NULL on no memory. */
static apex__span_t *pair_get(apex__tracer_t *tr) {
  unsigned k = apex__obs_slot();
  if (k >= APEX__MX_SLOTS) return calloc(2, sizeof(apex__span_t));
  trace_slot_t *sl = &tr->slot[k];
  if (!sl->free && tr->ex) {
    apex__span_t *b = apex__export_pairs(tr->ex);
    uint32_t n = 0;
    for (apex__span_t *x = b; x; x = x->next) n++;
    sl->free = b;
    sl->n_free = n;
  }
  apex__span_t *s = sl->free;
  if (!s) return calloc(2, sizeof *s);
  sl->free = s->next;
  sl->n_free--;
  s->next = NULL;
  return s;
}

/* A task span with room for its first attempt's (apex__span_t.att0), its
 * names set; NULL on no memory (the task is then not traced). */
static apex__span_t *span_alloc(apex__tracer_t *tr, apex_task_t *t) {
  apex__span_t *s = pair_get(tr);
  if (!s) {
    atomic_fetch_add_explicit(&tr->nomem, 2, memory_order_relaxed);
    return NULL;
  }
  s->task_id = t->id;
  const apex__plugin_t *p = t->plugin;
  s->plugin = p->name_copy;
  s->action = p->action_names[t->action - p->actions];
  return s;
}

/* A new trace's root span for t, made when it is first needed (its first
 * attempt, its end, a log record) rather than at submit, where it would
 * cost a lock of its own: under t's lock, as the submit time is still in
 * t->out (exec/internal.h). Returns: the span (in the table) or NULL. */
static apex__span_t *span_root_locked(apex__tracer_t *tr, apex_task_t *t) {
  apex__span_t *s = span_alloc(tr, t);
  if (!s) return NULL;
  s->start_ns = (uint64_t)((int64_t)t->out.submitted_ns + tr->wall_off);
  /* Its trace id, its span id, and its first attempt's ids, which wait
   * in the pair's room for it (apex__trace_attempt_start): one draw, and
   * the attempt's copies written from the same registers (a 16-byte copy
   * of the two 8-byte stores just made waits for them to retire). */
  uint64_t w[4];
  rnd_words(w, 4);
  memcpy(s->trace_id, w, 16);
  memcpy(s->span_id, w + 2, 8);
  memcpy(s[1].trace_id, w, 16);
  memcpy(s[1].parent_id, w + 2, 8);
  memcpy(s[1].span_id, w + 3, 8);
  s->flags = (uint8_t)sampled_new(tr, s->trace_id);
  if (tab_put(tr, s) != 0) {
    apex__span_free(s);
    return NULL;
  }
  if (s->flags & 1) count_started(TAB(tr, t->id));
  return s;
}

/* t's live span, made now if t is a plain task not yet traced. Under t's
 * lock; t not terminal. */
static apex__span_t *span_of_locked(apex__tracer_t *tr, apex_task_t *t) {
  apex__span_t *s = tab_get(tr, t->id, 0);
  return s ? s : span_root_locked(tr, t);
}

void apex__trace_submit(apex_task_t *t, const apex_submit_opts_t *o) {
  apex_manager_t *m = apex__task_m(t);
  apex__tracer_t *tr = m->tracer;
  uint64_t pid = t->opts ? t->opts->parent_id : 0;
  /* A task with no context to join starts a new trace: its span is made
   * when first needed (span_root_locked). */
  if (!apex__trace_joins(o, pid)) return;
  /* Its span is in the table by id, under its stripe's lock (by id): the
   * id now, in a pool_mu section of its own, unless it has one (a
   * scheduled task's, a durable one's). A plain task takes its id in the
   * section that queues it, as an untraced one does. */
  if (!t->id) t->id = apex__pool_new_id(m);
  apex__span_t *s = span_alloc(tr, t);
  if (!s) return; /* not traced */
  s->start_ns = now_wall(tr);
  int have = 0;
  if (pid) { /* a child task: a child of its parent's open attempt */
    pthread_mutex_t *pmu = &m->stripes[pid % APEX__LOCK_STRIPES].mu;
    pthread_mutex_lock(pmu);
    apex__span_t *ps = tab_get(tr, pid, 0);
    if (ps) {
      const apex__span_t *from = ps->att ? ps->att : ps;
      memcpy(s->trace_id, ps->trace_id, 16);
      memcpy(s->parent_id, from->span_id, 8);
      s->flags = ps->flags;
      s->has_parent = 1;
      s->parent_task_id = pid;
      if (ps->tracestate) s->tracestate = strdup(ps->tracestate);
      have = 1;
    }
    pthread_mutex_unlock(pmu);
  }
  if (!have && o && o->traceparent) {
    apex_trace_context_t tc;
    if (apex_traceparent_parse(o->traceparent, &tc) == APEX_OK) {
      memcpy(s->trace_id, tc.trace_id, 16);
      memcpy(s->parent_id, tc.span_id, 8);
      s->flags = tc.flags & 1;
      s->has_parent = 1;
      if (o->tracestate && *o->tracestate) s->tracestate = strndup(o->tracestate, 512);
      have = 1;
    } else {
      char shown[80];
      snprintf(shown, sizeof shown, "%.64s", o->traceparent);
      apex__utf8_scrub(shown);
      apex__log_where_t w = {.task_id = t->id, .plugin = s->plugin, .action = s->action};
      apex__log_at(&m->log, APEX_LOG_DEBUG, &w,
                   "traceparent \"%s\" is malformed (W3C trace context): ignored, a new trace "
                   "started", shown);
    }
  }
  if (!have) {
    rnd_id(s->trace_id, 16);
    s->flags = (uint8_t)sampled_new(tr, s->trace_id);
  }
  rnd_id(s->span_id, 8);
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  int rc = tab_put(tr, s);
  if (rc == 0 && (s->flags & 1)) count_started(TAB(tr, t->id));
  pthread_mutex_unlock(mu);
  if (rc != 0) apex__span_free(s);
}

void apex__trace_forget(apex_task_t *t) {
  if (!t->id) return; /* refused before its id: no span made */
  apex__tracer_t *tr = apex__task_m(t)->tracer;
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  apex__span_t *s = tab_get(tr, t->id, 1);
  pthread_mutex_unlock(mu);
  apex__span_free(s);
}

static apex__span_ev_t *add_event(apex__span_t *s, int kind, uint64_t now) {
  unsigned room = kind == APEX__SEV_MILESTONE ? APEX__SPAN_MILESTONES
                  : kind == APEX__SEV_RETRY  ? APEX__SPAN_EVENTS - 1
                                             : APEX__SPAN_EVENTS;
  if (s->n_ev >= room || (!s->ev && !(s->ev = malloc(APEX__SPAN_EVENTS * sizeof *s->ev)))) {
    s->ev_dropped++;
    return NULL;
  }
  apex__span_ev_t *e = &s->ev[s->n_ev++];
  memset(e, 0, sizeof *e);
  e->kind = (uint8_t)kind;
  e->time_ns = now;
  return e;
}

/* Cut to fit (a cut inside a UTF-8 character becomes U+FFFD on export). */
static void set_text(char *dst, size_t n, const char *src) {
  size_t k = src ? strnlen(src, n - 1) : 0;
  if (k) memcpy(dst, src, k);
  dst[k] = '\0';
}

/* An attempt span ended: the first one waits in its task's allocation for
 * the task's end, the others go now. */
static void att_done(apex__tracer_t *tr, apex__span_t *ts, apex__span_t *a) {
  if (a == ts + 1)
    ts->att0_done = 1;
  else
    span_done(tr, a);
}

void apex__trace_attempt_start(apex_task_t *t) {
  apex__tracer_t *tr = apex__task_m(t)->tracer;
  apex__span_t *ts = span_of_locked(tr, t);
  if (!ts) return;
  uint64_t now = (uint64_t)((int64_t)apex__obs_now(t, APEX__OBS_START) + tr->wall_off);
  if (ts->att) { /* never expected: an attempt starts after the last ended */
    ts->att->end_ns = now;
    att_done(tr, ts, ts->att);
  }
  apex__span_t *a = ts->att0 ? calloc(1, sizeof *a) : ts + 1;
  ts->att0 = 1;
  ts->att = a;
  if (!a) {
    atomic_fetch_add_explicit(&tr->nomem, 1, memory_order_relaxed);
    return;
  }
  a->is_attempt = 1;
  a->task_id = t->id;
  a->attempt = t->attempt;
  ts->attempt = t->attempt;
  a->plugin = ts->plugin;
  a->action = ts->action;
  a->has_parent = 1;
  a->flags = ts->flags;
  uint64_t sid;
  memcpy(&sid, a->span_id, 8);
  if (!sid) { /* not made with its task's (span_root_locked) */
    memcpy(a->trace_id, ts->trace_id, 16);
    memcpy(a->parent_id, ts->span_id, 8);
    rnd_id(a->span_id, 8);
  }
  a->start_ns = now;
  if (a->flags & 1) count_started(TAB(tr, t->id));
}

static const char *tmo_name(int kind) {
  switch (kind) {
    case APEX__TMO_SCHEDULE_TO_CLOSE: return "schedule_to_close";
    case APEX__TMO_SCHEDULE_TO_START: return "schedule_to_start";
    case APEX__TMO_START_TO_CLOSE: return "start_to_close";
    case APEX__TMO_HEARTBEAT: return "heartbeat";
    default: return "unknown";
  }
}

static void set_error(apex__span_t *s, int code, const char *msg) {
  s->status = 2;
  s->code = code;
  free(s->msg);
  s->msg = msg ? strndup(msg, 512) : NULL;
}

/* The end time of the attempt this thread ended last: its task's end, when
 * it follows in the same locked section (the attempt's was its last),
 * reuses it rather than read the clock again. */
static TLS struct {
  uint64_t id, ns;
} last_end;

void apex__trace_attempt_end(apex_task_t *t, int rc, const apex_error_t *own, int att_kind) {
  apex__tracer_t *tr = apex__task_m(t)->tracer;
  apex__span_t *ts = tab_get(tr, t->id, 0);
  if (!ts || !ts->att) return; /* ended with its task already (a timeout) */
  apex__span_t *a = ts->att;
  ts->att = NULL;
  a->end_ns = (uint64_t)((int64_t)apex__obs_now(t, APEX__OBS_END) + tr->wall_off);
  last_end.id = t->id;
  last_end.ns = a->end_ns;
  if (att_kind) {
    char msg[96];
    snprintf(msg, sizeof msg, "the attempt timed out (%s)", tmo_name(att_kind));
    set_error(a, APEX_E_TIMEOUT, msg);
    apex__span_ev_t *e = add_event(a, APEX__SEV_TIMEOUT, a->end_ns);
    if (e) set_text(e->text, sizeof e->text, tmo_name(att_kind));
  } else if (rc == APEX_OK) {
    a->status = 1;
  } else {
    set_error(a, own ? apex_error_code(own) : rc, own ? apex_error_message(own) : apex_strerror(rc));
  }
  att_done(tr, ts, a);
}

void apex__trace_retry(apex_task_t *t, const apex_error_t *err, double delay_s) {
  apex__tracer_t *tr = apex__task_m(t)->tracer;
  last_end.id = 0; /* the task goes on: its end is another moment */
  apex__span_t *ts = tab_get(tr, t->id, 0);
  if (!ts) return;
  apex__span_ev_t *e = add_event(ts, APEX__SEV_RETRY, now_wall(tr));
  if (!e) return;
  e->attempt = t->attempt;
  e->num = delay_s;
  e->code = err ? apex_error_code(err) : APEX_E_TRANSIENT;
  set_text(e->text, sizeof e->text, err ? apex_error_message(err) : "");
}

void apex__trace_milestone(apex_task_t *t, const char *status, double pct) {
  apex__tracer_t *tr = apex__task_m(t)->tracer;
  apex__span_t *ts = tab_get(tr, t->id, 0);
  if (!ts) return;
  apex__span_ev_t *e = add_event(ts, APEX__SEV_MILESTONE, now_wall(tr));
  if (!e) return;
  e->attempt = t->attempt;
  e->num = pct;
  set_text(e->text, sizeof e->text, status);
}

/* The ids of the task whose end this thread made last: its outcome and last
 * progress are logged right after the unlock, when its span is gone from
 * the table (apex__trace_log_ids). */
static TLS struct {
  uint64_t id;
  uint8_t trace_id[16], span_id[8];
} last_done;

/* The code and message of an outcome's error, lazy ones included
 * (exec/internal.h: APEX__LAZY_*), without making the error. */
static void error_text(const apex_error_t *e, int *code, char *msg, size_t n) {
  if (!e) {
    *code = APEX_E_EXECUTION;
    snprintf(msg, n, "%s", apex_strerror(*code));
  } else if (apex__error_is_lazy(e)) {
    uintptr_t v = (uintptr_t)e;
    unsigned kind = (unsigned)(v >> 1) & 0x7fu, arg = (unsigned)(v >> 8);
    if (kind == APEX__LAZY_CANCEL) {
      *code = APEX_E_CANCELLED;
      snprintf(msg, n, "cancelled (%s)", apex__cause_name((apex__cause_t)arg));
    } else {
      *code = -(int)arg;
      snprintf(msg, n, "%s", apex_strerror(*code));
    }
  } else {
    *code = apex_error_code(e);
    snprintf(msg, n, "%s", apex_error_message(e));
  }
}

void apex__trace_finish(apex_task_t *t, int state, const apex_error_t *error) {
  apex__tracer_t *tr = apex__task_m(t)->tracer;
  apex__span_t *ts = tab_get(tr, t->id, 1);
  if (!ts) { /* never started: its span is made now, and taken out again */
    if (!span_root_locked(tr, t)) return;
    ts = tab_get(tr, t->id, 1);
  }
  last_done.id = t->id;
  memcpy(last_done.trace_id, ts->trace_id, 16);
  memcpy(last_done.span_id, ts->span_id, 8);
  /* Right after its attempt's end on this thread: that moment (the
   * attempt_end hook and this one run in one locked section). */
  uint64_t now = last_end.id == t->id && !ts->att ? last_end.ns : now_wall(tr);
  last_end.id = 0;
  ts->end_ns = now;
  ts->state = state;
  ts->attempt = t->attempt;
  if (state == APEX_TASK_SUCCEEDED) {
    ts->status = 1;
  } else {
    int code;
    char msg[512];
    error_text(error, &code, msg, sizeof msg);
    set_error(ts, code, msg);
    if (state == APEX_TASK_TIMED_OUT) {
      apex__span_ev_t *e = add_event(ts, APEX__SEV_TIMEOUT, now);
      const char *k = error && !apex__error_is_lazy(error) ? apex_error_timeout_kind(error) : NULL;
      if (e) {
        e->attempt = t->attempt;
        set_text(e->text, sizeof e->text, k ? k : "schedule_to_close");
      }
    } else if (state == APEX_TASK_CANCELLED) {
      apex__span_ev_t *e = add_event(ts, APEX__SEV_CANCEL, now);
      if (e) {
        e->attempt = t->attempt;
        set_text(e->text, sizeof e->text, msg);
      }
    }
  }
  if (ts->att) { /* the task ended around its open attempt (a timeout, shutdown) */
    apex__span_t *a = ts->att;
    ts->att = NULL;
    a->end_ns = now;
    set_error(a, ts->status == 2 ? ts->code : APEX_E_EXECUTION, ts->msg);
    if (state == APEX_TASK_TIMED_OUT) {
      apex__span_ev_t *e = add_event(a, APEX__SEV_TIMEOUT, now);
      if (e) set_text(e->text, sizeof e->text, ts->n_ev ? ts->ev[ts->n_ev - 1].text : "");
    }
    att_done(tr, ts, a);
  }
  span_done(tr, ts);
}

int apex__trace_ids(apex_task_t *t, char trace_hex[33], char span_hex[17]) {
  apex__tracer_t *tr = apex__task_m(t)->tracer;
  int st = atomic_load(&t->state);
  int live = st < APEX_TASK_SUCCEEDED || st == APEX_TASK_SCHEDULED;
  apex__span_t *ts = !tr ? NULL : live ? span_of_locked(tr, t) : tab_get(tr, t->id, 0);
  if (!ts) return 0;
  hex_out(ts->trace_id, 16, trace_hex);
  hex_out(ts->att ? ts->att->span_id : ts->span_id, 8, span_hex);
  return 1;
}

int apex__trace_log_ids(apex_task_t *t, char trace_hex[33], char span_hex[17]) {
  if (last_done.id == t->id) {
    hex_out(last_done.trace_id, 16, trace_hex);
    hex_out(last_done.span_id, 8, span_hex);
    return 1;
  }
  pthread_mutex_t *mu = apex__task_mu(t);
  pthread_mutex_lock(mu);
  int ok = apex__trace_ids(t, trace_hex, span_hex);
  pthread_mutex_unlock(mu);
  return ok;
}

int apex__trace_traceparent(apex_task_t *t, char *buf, size_t size) {
  apex__tracer_t *tr = apex__task_m(t)->tracer;
  apex__span_t *ts = tr ? tab_get(tr, t->id, 0) : NULL;
  if (!ts || size < APEX_TRACEPARENT_LEN + 1) return APEX_E_INVALID;
  apex_trace_context_t tc;
  memcpy(tc.trace_id, ts->trace_id, 16);
  memcpy(tc.span_id, ts->att ? ts->att->span_id : ts->span_id, 8);
  tc.flags = ts->flags & 1;
  return apex_traceparent_format(&tc, buf, size);
}

int apex__trace_tracestate(apex_task_t *t, char *buf, size_t size) {
  apex__tracer_t *tr = apex__task_m(t)->tracer;
  apex__span_t *ts = tr ? tab_get(tr, t->id, 0) : NULL;
  if (!ts || !buf) return APEX_E_INVALID;
  const char *v = ts->tracestate ? ts->tracestate : "";
  size_t n = strlen(v);
  if (n >= size) return APEX_E_INVALID;
  memcpy(buf, v, n + 1);
  return APEX_OK;
}
