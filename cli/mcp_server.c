/* The protocol core of `apex mcp`: sessions, the tool table, tool calls as
 * Apex tasks, progress and log notifications, client cancellation and MCP
 * tasks (2025-11-25). Transport-neutral: it reads mcp_msg_t values and
 * writes JSON-RPC messages through a session's mcp_transport_ops_t.
 *
 * What maps to what:
 *   tool "plugin.action"        one loaded action (apex_manager_plugin*)
 *   inputSchema                 the action's params (types, required,
 *                               defaults, bounds), or the plugin's
 *                               action_schema hook's
 *   annotations.idempotentHint  APEX_ACTION_F_IDEMPOTENT
 *   tools/call                  apex_manager_submit; bad arguments (Apex's
 *                               APEX_E_INVALID_PARAMS) are -32602 naming
 *                               the argument; the DONE event is the answer:
 *                               the result as text and structuredContent,
 *                               a failure as isError with the Apex error
 *   notifications/progress      PROGRESS events (coalesced by Apex), sent
 *                               only when the percentage grew, total 100
 *   notifications/message       the log lines of the task ("plugin.action
 *                               task N: ..."), filtered by logging/setLevel
 *   notifications/cancelled     apex_task_cancel with the client's reason;
 *                               the request is then never answered
 *   tasks/get, result, ...      the same task, answered by polling
 *   --store                     a task-augmented call is a durable task;
 *                               every tasks/ request answers from the
 *                               store, across restarts ("durable MCP
 *                               tasks" below)
 *
 * Threads: the main thread only (mcp.h). Task events arrive inside
 * apex_manager_dispatch (mcp_server_pump), log lines through the CLI's log
 * queue (log_queue.c), which any thread fills and this thread drains.
 *
 * Lifetimes: a call lives from its tools/call until its task's DONE event;
 * a session lives until its transport closed it and its last call ended;
 * an MCP task record (task-augmented call) lives until its ttl passed
 * after creation, or its session closed. With --store the record only
 * names the task for its notifications: the store has the rest. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/random.h>
#include <unistd.h>

#include "mcp.h"

/* Poll interval suggested to task clients, and the ttl bounds (ms). */
#define TASK_POLL_MS 250
#define TASK_TTL_DEFAULT_MS (60 * 60 * 1000)
#define TASK_TTL_MAX_MS (24 * 60 * 60 * 1000)

/* --store: how often a tasks/result on a task another process runs looks
 * at the store; how many tasks one tasks/list page holds, and how many
 * stored rows one tasks/list request reads at most (the store may hold
 * many tasks that are not MCP's). */
#define STORE_POLL_MS 500
#define STORE_LIST_PAGE 50
#define STORE_LIST_SCAN 1000
/* A durable MCP task's idempotency key: "mcp:1:SECRET:TTL_MS". It marks
 * the row as an MCP task, keeps the secret half of its taskId and its
 * ttl, all of which must survive a restart. */
#define STORE_KEY_PREFIX "mcp:1:"
#define SECRET_HEX 32
/* --store: how long, and for how many tasks, an end this server saw is
 * kept for lookups while the store's row may still say otherwise (the
 * end of a resumable task is written behind its DONE event). */
#define ENDED_KEEP_MS 60000
#define ENDED_MAX 4096

typedef struct mcp_tool {
  char *name;
  const char *plugin, *action; /* the manager's, valid until destroy */
  json_t *def;                 /* the tools/list entry */
} mcp_tool_t;

typedef struct mcp_call mcp_call_t;

/* An MCP task (2025-11-25): a task-augmented tools/call. */
typedef struct mcp_mtask {
  struct mcp_mtask *next;
  char id[80];          /* "apex-ID", or with --store "apex-ID-SECRET" */
  mcp_call_t *call;     /* while running */
  const char *status;   /* working, completed, failed, cancelled */
  char *status_message; /* or NULL */
  json_t *result;       /* the CallToolResult once ended */
  int64_t created_ms, updated_ms, ttl_ms;
  char created_iso[32], updated_iso[32];
  /* tasks/result requests waiting for the end: [{id, stream}] as calls */
  struct waiter {
    json_t *id;
    void *stream;
    struct waiter *next;
  } *waiters;
} mcp_mtask_t;

struct mcp_call {
  mcp_call_t *next, *prev; /* the server's live calls */
  mcp_session_t *s;
  json_t *id;              /* the request's id (a reference); NULL once answered */
  char *key;               /* id as text, for duplicates and cancels */
  void *stream;
  const mcp_tool_t *tool;
  apex_task_t *task;
  uint64_t task_id;
  json_t *progress_token;  /* or NULL */
  double last_progress;    /* last sent; -1 none */
  int client_cancelled;    /* notifications/cancelled: never answer */
  mcp_mtask_t *mtask;      /* task-augmented: answered already */
  int durable;             /* --store and task-augmented: the store's task,
                              which outlives this call's session */
};

/* A tasks/result, with --store, waiting for a stored task's end: answered
 * by the task's DONE event when this manager runs it, else by looking at
 * the store every STORE_POLL_MS (another process runs it). */
typedef struct swaiter {
  struct swaiter *next;
  mcp_session_t *s;
  json_t *id;              /* the request's (a reference) */
  void *stream;
  uint64_t task_id;
  char task[80];           /* the MCP taskId */
  int64_t poll_at_ms;      /* wall ms of the next look; 0: DONE answers */
} swaiter_t;

/* A durable task's end as its DONE event told it (--store), until the
 * store's row says so too: apex_manager_task_info reads the row once the
 * task ended, and the row of a resumable or idempotent task is written
 * after the DONE event (docs/store.md: the write is not waited for). */
typedef struct ended {
  struct ended *next;      /* newer */
  uint64_t task_id;
  int64_t at_ms;
  apex_task_state_t state;
  json_t *result;          /* succeeded: a reference */
  apex_error_t *error;     /* otherwise: a reference */
} ended_t;

struct mcp_session {
  mcp_session_t *next, *prev;
  mcp_server_t *srv;
  const mcp_transport_ops_t *ops;
  void *tuser;
  int initialized;         /* initialize answered */
  int closed;              /* transport gone: send nothing */
  char proto[16];
  int log_level;           /* MCP level index (mcp_levels) at or above which
                              notifications/message go out */
  size_t n_calls;          /* live calls of this session */
  mcp_mtask_t *mtasks;
};

struct mcp_server {
  apex_manager_t *m;
  mcp_tool_t *tools;
  size_t n_tools;
  json_t *tool_index;      /* name -> index */
  json_t *tools_list;      /* the tools/list result's array */
  mcp_session_t *sessions;
  mcp_call_t *calls;
  size_t n_calls;
  int started;             /* a call started since the last watch (mcp_server_watch_newest) */
  size_t max_message;
  atomic_int log_fd;       /* the log queue's pipe, write end */
  int log_rd;
  int stderr_level;        /* lines at or below it also go to stderr */
  int durable;             /* --store */
  swaiter_t *swaiters;     /* --store: tasks/result requests waiting */
  ended_t *ended, *ended_tail; /* --store: recent ends, oldest first */
  size_t n_ended;
};

/* APEX_LOG's level for stderr, as the library reads it (default warn;
 * off: -1). */
static int stderr_level(void) {
  const char *s = getenv("APEX_LOG");
  if (!s || !*s) return APEX_LOG_WARN;
  if (strcasecmp(s, "error") == 0) return APEX_LOG_ERROR;
  if (strcasecmp(s, "info") == 0) return APEX_LOG_INFO;
  if (strcasecmp(s, "debug") == 0) return APEX_LOG_DEBUG;
  if (strcasecmp(s, "off") == 0 || strcasecmp(s, "none") == 0) return -1;
  return APEX_LOG_WARN;
}

/* ------------------------------------------------------------- helpers */

static const char *const mcp_levels[] = {"debug", "info",     "notice", "warning",
                                         "error", "critical", "alert",  "emergency"};
#define N_LEVELS (sizeof mcp_levels / sizeof mcp_levels[0])

static int level_index(const char *name) {
  for (size_t i = 0; i < N_LEVELS; i++)
    if (strcmp(mcp_levels[i], name) == 0) return (int)i;
  return -1;
}

static int apex_to_mcp_level(int apex_level) {
  switch (apex_level) {
    case APEX_LOG_ERROR: return 4;
    case APEX_LOG_WARN: return 3;
    case APEX_LOG_INFO: return 1;
    default: return 0;
  }
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void iso_time(int64_t ms, char *buf, size_t len) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char base[24];
  strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf, len, "%s.%03dZ", base, (int)(ms % 1000));
}

/* The request id as text: the key of duplicates and cancels. A string id
 * and an integer id that print alike are different ids, hence the tag. */
static char *id_key(const json_t *id) {
  char buf[64];
  if (json_is_integer(id)) {
    snprintf(buf, sizeof buf, "i:%" JSON_INTEGER_FORMAT, json_integer_value(id));
    return strdup(buf);
  }
  const char *s = json_string_value(id);
  size_t n = strlen(s ? s : "");
  char *k = malloc(n + 3);
  if (k) {
    memcpy(k, "s:", 2);
    memcpy(k + 2, s ? s : "", n + 1);
  }
  return k;
}

static void send_msg(mcp_session_t *s, void *stream, json_t *msg) {
  if (msg && !s->closed) s->ops->send(s->tuser, stream, msg);
  json_decref(msg);
}

/* Sends the answer to a request and tells the transport it ended. */
static void answer(mcp_session_t *s, void *stream, json_t *msg) {
  send_msg(s, stream, msg);
  if (!s->closed) s->ops->request_done(s->tuser, stream);
}

static void answer_error(mcp_session_t *s, void *stream, const json_t *id, int code,
                         const char *message) {
  answer(s, stream, mcp_error(id, code, message, NULL));
}

/* ------------------------------------------------------------- tools */

static const char *schema_type(apex_param_type_t t) {
  switch (t) {
    case APEX_PARAM_STRING: return "string";
    case APEX_PARAM_INT: return "integer";
    case APEX_PARAM_NUMBER: return "number";
    case APEX_PARAM_BOOL: return "boolean";
    case APEX_PARAM_OBJECT: return "object";
    case APEX_PARAM_ARRAY: return "array";
  }
  return NULL;
}

static json_t *bound(apex_param_type_t t, double v) {
  /* An INT's bounds, a length or a count are whole numbers in JSON Schema. */
  if (t != APEX_PARAM_NUMBER && v == floor(v) && fabs(v) < 9e15) return json_integer((json_int_t)v);
  return json_real(v);
}

/* The inputSchema an action's param spec says (JSON Schema 2020-12). A
 * STRING's bounds are bytes of UTF-8 in Apex and characters in JSON
 * Schema: the same for ASCII, and Apex's check is the one that counts. */
static json_t *params_schema(const apex_action_desc_t *a) {
  json_t *props = json_object(), *req = json_array();
  json_t *schema = json_pack("{s:s}", "type", "object");
  if (!props || !req || !schema) goto oom;
  for (size_t i = 0; i < a->n_params; i++) {
    const apex_param_spec_t *p = &a->params[i];
    const char *type = schema_type(p->type);
    if (!p->name || !type) continue;
    json_t *ps = json_pack("{s:s}", "type", type);
    if (!ps) goto oom;
    if (p->description) json_object_set_new(ps, "description", json_string(p->description));
    if (p->required) json_array_append_new(req, json_string(p->name));
    else if (p->default_json) {
      json_t *d = json_loads(p->default_json, JSON_DECODE_ANY, NULL);
      if (d) json_object_set_new(ps, "default", d);
    }
    const char *lo = NULL, *hi = NULL;
    switch (p->type) {
      case APEX_PARAM_INT:
      case APEX_PARAM_NUMBER: lo = "minimum"; hi = "maximum"; break;
      case APEX_PARAM_STRING: lo = "minLength"; hi = "maxLength"; break;
      case APEX_PARAM_ARRAY: lo = "minItems"; hi = "maxItems"; break;
      default: break;
    }
    if (lo && p->has_min) json_object_set_new(ps, lo, bound(p->type, p->min));
    if (hi && p->has_max) json_object_set_new(ps, hi, bound(p->type, p->max));
    json_object_set_new(props, p->name, ps);
  }
  json_object_set_new(schema, "properties", props);
  if (json_array_size(req)) json_object_set_new(schema, "required", req);
  else json_decref(req);
  /* Apex refuses unknown params: say so. */
  json_object_set_new(schema, "additionalProperties", json_false());
  return schema;
oom:
  json_decref(props);
  json_decref(req);
  json_decref(schema);
  return NULL;
}

static json_t *declared_schema(const char *text, const char *tool, const char *which) {
  json_error_t je;
  json_t *v = json_loads(text, 0, &je);
  if (!json_is_object(v)) {
    fprintf(stderr, "apex mcp: %s: %s is not a JSON object (%s); ignored\n", tool, which,
            v ? "not an object" : je.text);
    json_decref(v);
    return NULL;
  }
  return v;
}

static int add_tool(mcp_server_t *srv, const apex_plugin_desc_t *d, const apex_action_desc_t *a,
                    int bare) {
  char name[256];
  snprintf(name, sizeof name, "%s%s%s", bare ? "" : d->name, bare ? "" : ".", a->name);
  if (json_object_get(srv->tool_index, name)) {
    fprintf(stderr, "apex mcp: two actions would be tool '%s': serving the first\n", name);
    return 0;
  }
  json_t *in = NULL, *out = NULL;
  const char *(*hook)(const char *, const char *) =
      APEX_HAS_FIELD(apex_plugin_desc_t, d, action_schema) ? d->action_schema : NULL;
  const char *text = hook ? hook(a->name, "input") : NULL;
  if (text) in = declared_schema(text, name, "input schema");
  if (!in) in = params_schema(a);
  text = hook ? hook(a->name, "output") : NULL;
  if (text) out = declared_schema(text, name, "output schema");
  json_t *def = json_pack("{s:s, s:s, s:o, s:{s:s}}", "name", name, "description",
                          a->description ? a->description : "", "inputSchema", in, "execution",
                          "taskSupport", "optional");
  if (!def) {
    json_decref(out);
    return -1;
  }
  if (out) json_object_set_new(def, "outputSchema", out);
  json_t *ann = json_object();
  if (ann) {
    json_object_set_new(ann, "title", json_string(name));
    if (a->flags & APEX_ACTION_F_IDEMPOTENT) json_object_set_new(ann, "idempotentHint", json_true());
    json_object_set_new(def, "annotations", ann);
  }
  mcp_tool_t *t = realloc(srv->tools, (srv->n_tools + 1) * sizeof *t);
  if (!t) {
    json_decref(def);
    return -1;
  }
  srv->tools = t;
  t = &srv->tools[srv->n_tools];
  t->name = strdup(name);
  t->plugin = d->name;
  t->action = a->name;
  t->def = def;
  if (!t->name) {
    json_decref(def);
    return -1;
  }
  json_object_set_new(srv->tool_index, name, json_integer((json_int_t)srv->n_tools));
  json_array_append(srv->tools_list, def);
  srv->n_tools++;
  return 0;
}

static const mcp_tool_t *find_tool(mcp_server_t *srv, const char *name) {
  json_t *i = json_object_get(srv->tool_index, name);
  return i ? &srv->tools[json_integer_value(i)] : NULL;
}

/* ------------------------------------------------------------- server */

static void on_task_event(const apex_event_t *ev, void *user);
static void log_sink(const apex_log_record_t *r, void *user);
static void swaiters_done(mcp_server_t *srv, const apex_event_t *ev);
static void ended_note(mcp_server_t *srv, const apex_event_t *ev);
/* Every task submitted here has its own callback: what comes here are the
 * tasks apex_manager_recover took over from the store (--store), whose
 * ends answer the tasks/result requests waiting for them. */
static void on_stray_event(const apex_event_t *ev, void *user) {
  mcp_server_t *srv = user;
  if (ev->type != APEX_EVENT_DONE || !srv->durable) return;
  ended_note(srv, ev);
  if (srv->swaiters) swaiters_done(srv, ev);
}

int mcp_server_new(const mcp_config_t *cfg, mcp_server_t **out) {
  mcp_server_t *srv = calloc(1, sizeof *srv);
  if (!srv) return cli_fail(0, APEX_E_NOMEM, "out of memory");
  srv->max_message = cfg->max_message ? cfg->max_message : MCP_MAX_MESSAGE_DEFAULT;
  srv->tool_index = json_object();
  srv->tools_list = json_array();
  int p[2];
  if (!srv->tool_index || !srv->tools_list || pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
    json_decref(srv->tool_index);
    json_decref(srv->tools_list);
    free(srv);
    return cli_fail(0, APEX_E_IO, "cannot start: %s", strerror(errno));
  }
  srv->log_rd = p[0];
  atomic_init(&srv->log_fd, p[1]);
  apex_manager_config_t mc;
  apex_manager_config_init(&mc);
  mc.workers = cfg->cli->workers ? cfg->cli->workers : 0;
  mc.delivery = APEX_DELIVER_DISPATCH;
  mc.on_event = on_stray_event;
  mc.event_user = srv;
  mc.event_mask = APEX_EVENT_PROGRESS | APEX_EVENT_DONE;
  mc.log_record = log_sink;
  mc.log_record_user = srv;
  /* info and up always reach the sink: a task's apex_ctx_log lines are
   * what notifications/message carry, whatever APEX_LOG says of stderr.
   * APEX_LOG=debug asks for more. */
  srv->stderr_level = stderr_level();
  mc.log_level = srv->stderr_level > APEX_LOG_INFO ? srv->stderr_level : APEX_LOG_INFO;
  mc.shutdown_grace_ms = 200;
  if (cfg->store) {
    /* Opened once first for what the manager cannot say: which file and
     * why it is refused (not a database, a newer schema, ...). */
    apex_store_t *st = NULL;
    apex_error_t *err = NULL;
    int rc = apex_store_open(cfg->store, &st, &err);
    apex_store_close(st);
    if (rc != APEX_OK) {
      int code = cli_fail(0, rc, "--store '%s': %s", cfg->store,
                          err ? apex_error_message(err) : apex_strerror(rc));
      apex_error_unref(err);
      mcp_server_free(srv);
      return code;
    }
    mc.store = cfg->store;
    srv->durable = 1;
  }
  int rc = apex_manager_new(&mc, &srv->m);
  if (rc != APEX_OK) {
    mcp_server_free(srv);
    return cli_fail(0, rc, "cannot start the runtime: %s", apex_strerror(rc));
  }
  for (size_t i = 0; i < cfg->cli->n_plugin_paths; i++) {
    rc = apex_manager_add_plugin_path(srv->m, cfg->cli->plugin_paths[i]);
    if (rc != APEX_OK) {
      mcp_server_free(srv);
      return cli_fail(0, rc, "--plugin-path '%s': %s", cfg->cli->plugin_paths[i], apex_strerror(rc));
    }
  }
  if (cfg->n_plugins) {
    for (size_t i = 0; i < cfg->n_plugins; i++) {
      const apex_plugin_desc_t *d;
      int code = cli_load_plugin(srv->m, 0, cfg->plugins[i], &d);
      if (code != CLI_EXIT_OK) {
        mcp_server_free(srv);
        return code;
      }
    }
  } else {
    apex_error_t *err = NULL;
    /* Loading goes on past a plugin that fails: serve the others. */
    if (apex_manager_load_all(srv->m, &err) != APEX_OK)
      fprintf(stderr, "apex mcp: %s (serving the plugins that loaded)\n", apex_error_message(err));
    apex_error_unref(err);
  }
  size_t np = apex_manager_plugin_count(srv->m);
  for (size_t i = 0; i < np; i++) {
    const apex_plugin_desc_t *d = apex_manager_plugin_at(srv->m, i);
    for (size_t j = 0; d && j < d->n_actions; j++)
      if (add_tool(srv, d, apex_plugin_desc_action(d, j), cfg->bare_names) != 0) {
        mcp_server_free(srv);
        return cli_fail(0, APEX_E_NOMEM, "out of memory");
      }
  }
  if (srv->durable) {
    /* The tasks an earlier `apex mcp` (or any process) left unfinished
     * on the store go on here: their MCP tasks complete. */
    size_t n = 0;
    apex_error_t *err = NULL;
    rc = apex_manager_recover(srv->m, &n, &err);
    if (rc != APEX_OK) {
      int code = cli_fail(0, rc, "--store '%s': cannot take over its unfinished tasks: %s",
                          cfg->store, err ? apex_error_message(err) : apex_strerror(rc));
      apex_error_unref(err);
      mcp_server_free(srv);
      return code;
    }
    if (n) fprintf(stderr, "apex mcp: took over %zu unfinished task(s) from the store\n", n);
  }
  *out = srv;
  return CLI_EXIT_OK;
}

static void session_free(mcp_session_t *s);

/* The manager's record sink, on any thread. What a handler logs
 * (apex_ctx_log: origin plugin) becomes "plugin.action task N: text" on the
 * queue, for route_log to send to the session of the call running task N.
 * The library's own records below warn ("succeeded", one per call, and
 * progress lines) say what the protocol says already: they never go on the
 * wire, so they skip the queue and the main thread's wake-up (one fewer
 * pipe write, poll and allocation per call). */
static void log_sink(const apex_log_record_t *r, void *user) {
  mcp_server_t *srv = user;
  int from_plugin = APEX_HAS_FIELD(apex_log_record_t, r, origin) &&
                    r->origin == APEX_LOG_ORIGIN_PLUGIN && r->task_id && r->plugin && r->action;
  const char *msg = r->message ? r->message : "";
  if (!from_plugin && r->level > APEX_LOG_WARN) {
    if (r->level <= srv->stderr_level) {
      if (r->task_id && r->plugin && r->action)
        fprintf(stderr, "apex: %s: %s.%s task %llu %s\n", cli_log_level_name(r->level), r->plugin,
                r->action, (unsigned long long)r->task_id, msg);
      else
        fprintf(stderr, "apex: %s: %s\n", cli_log_level_name(r->level), msg);
    }
    return;
  }
  char line[1200];
  if (r->task_id && r->plugin && r->action)
    snprintf(line, sizeof line, "%s.%s task %llu: %s", r->plugin, r->action,
             (unsigned long long)r->task_id, msg);
  else
    snprintf(line, sizeof line, "%s", msg);
  cli_log_sink(r->level, line, &srv->log_fd);
}

void mcp_server_free(mcp_server_t *srv) {
  if (!srv) return;
  for (mcp_session_t *s = srv->sessions; s; s = s->next) s->closed = 1;
  /* Delivers every DONE here, on this thread: the calls free themselves. */
  if (srv->m) apex_manager_destroy(srv->m, 0);
  while (srv->sessions) {
    mcp_session_t *s = srv->sessions;
    srv->sessions = s->next;
    session_free(s);
  }
  while (srv->ended) {
    ended_t *e = srv->ended;
    srv->ended = e->next;
    json_decref(e->result);
    apex_error_unref(e->error);
    free(e);
  }
  for (size_t i = 0; i < srv->n_tools; i++) {
    free(srv->tools[i].name);
    json_decref(srv->tools[i].def);
  }
  free(srv->tools);
  json_decref(srv->tool_index);
  json_decref(srv->tools_list);
  close(srv->log_rd);
  close(atomic_load(&srv->log_fd));
  free(srv);
}

void mcp_server_fds(mcp_server_t *srv, int *dispatch_fd, int *log_fd) {
  *dispatch_fd = apex_manager_fd(srv->m);
  *log_fd = srv->log_rd;
}

size_t mcp_server_max_message(const mcp_server_t *srv) { return srv->max_message; }
size_t mcp_server_live_calls(const mcp_server_t *srv) {
  size_t n = srv->n_calls;
  if (srv->durable)
    for (const mcp_call_t *c = srv->calls; c; c = c->next) n -= (size_t)(c->durable != 0);
  return n;
}
apex_manager_t *mcp_server_manager(mcp_server_t *srv) { return srv->m; }

/* ------------------------------------------------------------- sessions */

mcp_session_t *mcp_session_new(mcp_server_t *srv, const mcp_transport_ops_t *ops, void *tuser) {
  mcp_session_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->srv = srv;
  s->ops = ops;
  s->tuser = tuser;
  s->log_level = level_index("warning");
  s->next = srv->sessions;
  if (srv->sessions) srv->sessions->prev = s;
  srv->sessions = s;
  return s;
}

static void mtask_free(mcp_mtask_t *t) {
  while (t->waiters) {
    struct waiter *w = t->waiters;
    t->waiters = w->next;
    json_decref(w->id);
    free(w);
  }
  json_decref(t->result);
  free(t->status_message);
  free(t);
}

static void swaiter_free(swaiter_t *w) {
  json_decref(w->id);
  free(w);
}

static void session_free(mcp_session_t *s) {
  /* Its tasks/result requests go unanswered: nobody reads them now. */
  for (swaiter_t **pp = &s->srv->swaiters; *pp;) {
    swaiter_t *w = *pp;
    if (w->s != s) {
      pp = &w->next;
      continue;
    }
    *pp = w->next;
    swaiter_free(w);
  }
  while (s->mtasks) {
    mcp_mtask_t *t = s->mtasks;
    s->mtasks = t->next;
    if (t->call) t->call->mtask = NULL;
    mtask_free(t);
  }
  free(s);
}

static void session_unlink_free(mcp_session_t *s) {
  mcp_server_t *srv = s->srv;
  if (s->prev) s->prev->next = s->next;
  else srv->sessions = s->next;
  if (s->next) s->next->prev = s->prev;
  session_free(s);
}

void mcp_session_close(mcp_session_t *s) {
  if (!s) return;
  s->closed = 1;
  /* A durable task (--store) is not the client's to lose: it runs on,
   * and any session, of this process or a later one, reads its end. */
  for (mcp_call_t *c = s->srv->calls; c; c = c->next)
    if (c->s == s && !c->durable) apex_task_cancel(c->task, "disconnected");
  if (s->n_calls == 0) session_unlink_free(s);
}

const char *mcp_session_protocol(const mcp_session_t *s) { return s->proto; }
int mcp_session_initialized(const mcp_session_t *s) { return s->initialized; }

void mcp_session_reject(mcp_session_t *s, json_t *err_resp, void *stream) {
  if (err_resp) answer(s, stream, err_resp);
  else if (!s->closed) s->ops->request_done(s->tuser, stream);
}

/* ------------------------------------------------------------- calls */

static mcp_call_t *find_call_key(mcp_session_t *s, const char *key) {
  for (mcp_call_t *c = s->srv->calls; c; c = c->next)
    if (c->s == s && c->key && !c->mtask && strcmp(c->key, key) == 0) return c;
  return NULL;
}

static mcp_call_t *find_call_task(mcp_server_t *srv, uint64_t task_id) {
  for (mcp_call_t *c = srv->calls; c; c = c->next)
    if (c->task_id == task_id) return c;
  return NULL;
}

static void call_free(mcp_call_t *c) {
  mcp_server_t *srv = c->s->srv;
  if (c->prev) c->prev->next = c->next;
  else srv->calls = c->next;
  if (c->next) c->next->prev = c->prev;
  srv->n_calls--;
  mcp_session_t *s = c->s;
  s->n_calls--;
  if (c->mtask) c->mtask->call = NULL;
  apex_task_release(c->task);
  json_decref(c->id);
  json_decref(c->progress_token);
  free(c->key);
  free(c);
  if (s->closed && s->n_calls == 0) session_unlink_free(s);
}

/* The _meta of a message about MCP task id. */
static json_t *related_meta_id(const char *id) {
  return json_pack("{s:{s:s}}", "io.modelcontextprotocol/related-task", "taskId", id);
}

static json_t *related_meta(const mcp_mtask_t *t) { return related_meta_id(t->id); }

/* The CallToolResult of a task that succeeded with result r (NULL: none). */
static json_t *tool_result_ok(const json_t *r) {
  /* A result {"content": [typed blocks]} brings its own MCP content
   * (images, audio, resources: what a tool may return beyond text). */
  const json_t *content = json_is_object(r) ? json_object_get(r, "content") : NULL;
  int own = json_is_array(content) && json_array_size(content) > 0;
  size_t i;
  const json_t *b;
  json_array_foreach(content, i, b) if (!json_is_string(json_object_get(b, "type"))) own = 0;
  if (own) {
    json_t *res = json_pack("{s:o}", "content", json_deep_copy(content));
    return res;
  }
  char *text = NULL;
  if (json_is_string(r)) text = strdup(json_string_value(r));
  else if (r) text = json_dumps(r, JSON_COMPACT | JSON_ENCODE_ANY);
  else text = strdup("null");
  /* {"content":[{"type":"text","text":TEXT or null}]}, built member by
   * member: json_pack parses its format on every call, and this is every
   * successful call's answer (W16). jansson's *_new setters take their
   * value even when they fail, and refuse a NULL container. */
  json_t *block = json_object();
  if (!block || json_object_set_new_nocheck(block, "type", json_string_nocheck("text")) != 0 ||
      json_object_set_new_nocheck(block, "text", text ? json_string(text) : json_null()) != 0) {
    free(text);
    json_decref(block);
    return NULL;
  }
  free(text);
  json_t *blocks = json_array();
  if (json_array_append_new(blocks, block) != 0) {
    json_decref(blocks);
    return NULL;
  }
  json_t *res = json_object();
  if (json_object_set_new_nocheck(res, "content", blocks) != 0) {
    json_decref(res);
    return NULL;
  }
  if (json_is_object(r)) json_object_set_new(res, "structuredContent", json_deep_copy(r));
  else if (r) {
    json_t *wrap = json_object();
    if (wrap) json_object_set_new(wrap, "result", json_deep_copy(r));
    json_object_set_new(res, "structuredContent", wrap);
  }
  return res;
}

/* The CallToolResult of a task that did not succeed: code (a status name)
 * and message as text, ej (taken; apex_error_to_json's shape) as
 * structuredContent.error. */
static json_t *tool_result_err(const char *code, const char *message, json_t *ej) {
  char text[1200];
  snprintf(text, sizeof text, "%s: %s", code, message);
  return json_pack("{s:[{s:s, s:s}], s:b, s:{s:o?}}", "content", "type", "text", "text", text,
                   "isError", 1, "structuredContent", "error", ej);
}

/* The CallToolResult of an ended task. */
static json_t *tool_result(const apex_event_t *ev) {
  if (ev->state == APEX_TASK_SUCCEEDED) return tool_result_ok(ev->result);
  int code = ev->error ? apex_error_code(ev->error) : APEX_E_EXECUTION;
  return tool_result_err(apex_status_name(code),
                         ev->error ? apex_error_message(ev->error) : apex_strerror(code),
                         cli_error_json(ev->error, code));
}

static void mtask_touch(mcp_mtask_t *t, const char *status) {
  t->status = status;
  t->updated_ms = wall_ms();
  iso_time(t->updated_ms, t->updated_iso, sizeof t->updated_iso);
}

static json_t *mtask_json(const mcp_mtask_t *t) {
  json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:I, s:i}", "taskId", t->id, "status", t->status,
                        "createdAt", t->created_iso, "lastUpdatedAt", t->updated_iso, "ttl",
                        (json_int_t)t->ttl_ms, "pollInterval", TASK_POLL_MS);
  if (j && t->status_message) json_object_set_new(j, "statusMessage", json_string(t->status_message));
  return j;
}

static void mtask_answer_waiters(mcp_session_t *s, mcp_mtask_t *t) {
  while (t->waiters) {
    struct waiter *w = t->waiters;
    t->waiters = w->next;
    json_t *r = json_deep_copy(t->result);
    if (r) {
      json_t *meta = json_object_get(r, "_meta");
      if (!meta) json_object_set_new(r, "_meta", related_meta(t));
    }
    answer(s, w->stream, mcp_result(w->id, r));
    json_decref(w->id);
    free(w);
  }
}

static void send_progress(mcp_call_t *c, const apex_progress_t *p) {
  double pct = apex_progress_percentage(p);
  /* The protocol wants each notification's progress above the last. */
  if (!c->progress_token || !(pct > c->last_progress)) return;
  c->last_progress = pct;
  const char *msg = apex_progress_message(p);
  json_t *params = json_pack("{s:O, s:f, s:i}", "progressToken", c->progress_token, "progress",
                             pct, "total", 100);
  if (!params) return;
  if (msg && *msg) json_object_set_new(params, "message", json_string(msg));
  if (c->mtask) json_object_set_new(params, "_meta", related_meta(c->mtask));
  send_msg(c->s, c->stream, mcp_notification("notifications/progress", params));
}

/* A task's events come to its call (the submit's per-task callback). */
static void on_task_event(const apex_event_t *ev, void *user) {
  mcp_call_t *c = user;
  if (ev->type == APEX_EVENT_PROGRESS) {
    if (!c->client_cancelled) send_progress(c, ev->progress);
    return;
  }
  if (ev->type != APEX_EVENT_DONE) return;
  mcp_session_t *s = c->s;
  /* tasks/result requests on the stored task (--store), of any session. */
  if (c->durable) ended_note(s->srv, ev);
  if (s->srv->swaiters) swaiters_done(s->srv, ev);
  if (c->mtask && c->durable) {
    /* The store has the outcome now: the record only named the task for
     * its notifications, and goes (a long-lived session keeps no copy of
     * every result). */
    for (mcp_mtask_t **pp = &s->mtasks; *pp; pp = &(*pp)->next)
      if (*pp == c->mtask) {
        *pp = c->mtask->next;
        break;
      }
    mtask_free(c->mtask);
    c->mtask = NULL;
  } else if (c->mtask) {
    mcp_mtask_t *t = c->mtask;
    t->result = tool_result(ev);
    /* Once tasks/cancel said cancelled, it stays so (the protocol's
     * terminal states do not change). */
    const char *st = strcmp(t->status, "cancelled") == 0  ? "cancelled"
                     : ev->state == APEX_TASK_SUCCEEDED ? "completed"
                     : ev->state == APEX_TASK_CANCELLED ? "cancelled"
                                                        : "failed";
    if (ev->error) t->status_message = strdup(apex_error_message(ev->error));
    mtask_touch(t, st);
    /* A task's stream ended with the answer that created it; its
     * tasks/result waiters get the outcome now. */
    mtask_answer_waiters(s, t);
  } else if (c->client_cancelled) {
    /* Cancelled by the client: the protocol says no answer. */
    if (!s->closed) s->ops->request_done(s->tuser, c->stream);
  } else {
    answer(s, c->stream, mcp_result(c->id, tool_result(ev)));
  }
  call_free(c);
}

/* The argument an APEX_E_INVALID_PARAMS message names ("param 'x': ..."). */
static json_t *bad_argument(const char *msg) {
  const char *p = strstr(msg, "param '");
  if (!p) return NULL;
  p += 7;
  const char *e = strchr(p, '\'');
  if (!e) return NULL;
  return json_pack("{s:s%}", "argument", p, (size_t)(e - p));
}

static mcp_mtask_t *mtask_find(mcp_session_t *s, const char *id) {
  int64_t now = wall_ms();
  for (mcp_mtask_t **pp = &s->mtasks; *pp;) {
    mcp_mtask_t *t = *pp;
    /* Expired (ttl from creation) and ended: forgotten. */
    if (!t->call && now - t->created_ms > t->ttl_ms) {
      *pp = t->next;
      mtask_free(t);
      continue;
    }
    if (id && strcmp(t->id, id) == 0) return t;
    pp = &t->next;
  }
  return NULL;
}

/* ------------------------------------------------------------- durable MCP tasks
 *
 * With --store a task-augmented tools/call submits a durable task
 * (docs/durable.md) and every tasks/ request answers from the store
 * (apex_manager_task_info: the store's row, overlaid with what this
 * manager knows of a task it runs), so an MCP task outlives its session
 * and the process: after a restart (apex_manager_recover at start takes
 * the unfinished ones over) tasks/get, tasks/result, tasks/cancel and
 * tasks/list find it by the same taskId.
 *
 * The taskId is "apex-ID-SECRET": ID the store's task id, SECRET 128
 * random bits. A durable task is no longer bound to the session that made
 * it (a restarted server has new sessions), so the id itself must not be
 * guessable, as the protocol asks of receivers without an authorization
 * context. The row's idempotency key "mcp:1:SECRET:TTL_MS" keeps the
 * secret and the ttl, and marks the row as an MCP task: the tasks/ requests see no
 * other row of the store (an `apex run --detach` task, say).
 *
 * What maps to what: the task's state to status (succeeded: completed;
 * failed, timed_out: failed; cancelled, or a cancel requested through the
 * store: cancelled, which is terminal for the protocol at once; any other:
 * working), created_at/updated_at to createdAt/lastUpdatedAt, the stored
 * error's message to statusMessage, the stored result or error to the
 * CallToolResult tool_result builds from a live task's end. A finished
 * task whose ttl passed (counted from creation) is hidden: the store
 * keeps its row (apex tasks lists it; apex_store_purge removes it). */

/* SECRET_HEX lowercase hex digits of fresh randomness into out. Returns: 0,
 * or -1 when the kernel gives none. */
static int store_secret(char *out) {
  unsigned char b[SECRET_HEX / 2];
  if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) return -1;
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < sizeof b; i++) {
    out[2 * i] = hex[b[i] >> 4];
    out[2 * i + 1] = hex[b[i] & 15];
  }
  out[SECRET_HEX] = '\0';
  return 0;
}

static int is_hex_secret(const char *s, size_t n) {
  return n == SECRET_HEX && strspn(s, "0123456789abcdef") >= SECRET_HEX;
}

/* Reads "apex-ID-SECRET". Returns: 0 with *id and *secret (borrowed from
 * s), or -1 for anything else. */
static int store_task_id_parse(const char *s, uint64_t *id, const char **secret) {
  if (strncmp(s, "apex-", 5) != 0 || s[5] < '1' || s[5] > '9') return -1;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s + 5, &end, 10);
  if (errno || *end != '-' || !is_hex_secret(end + 1, strlen(end + 1))) return -1;
  *id = (uint64_t)v;
  *secret = end + 1;
  return 0;
}

static const char *info_state(const json_t *info) {
  const char *st = json_string_value(json_object_get(info, "state"));
  return st ? st : "";
}

/* The Apex task has ended (succeeded, failed, cancelled, timed_out). */
static int info_ended(const json_t *info) {
  const char *st = info_state(info);
  return strcmp(st, "succeeded") == 0 || strcmp(st, "failed") == 0 ||
         strcmp(st, "cancelled") == 0 || strcmp(st, "timed_out") == 0;
}

static const char *info_status(const json_t *info) {
  const char *st = info_state(info);
  /* The protocol's cancelled is terminal from the tasks/cancel answer on,
   * whatever the handler does after. */
  if (json_is_true(json_object_get(info, "cancel_requested")) || strcmp(st, "cancelled") == 0)
    return "cancelled";
  if (strcmp(st, "succeeded") == 0) return "completed";
  if (strcmp(st, "failed") == 0 || strcmp(st, "timed_out") == 0) return "failed";
  return "working";
}

static void ended_drop_oldest(mcp_server_t *srv) {
  ended_t *e = srv->ended;
  srv->ended = e->next;
  if (!srv->ended) srv->ended_tail = NULL;
  srv->n_ended--;
  json_decref(e->result);
  apex_error_unref(e->error);
  free(e);
}

/* Keeps the end of a durable task this server ran, for ended_overlay. */
static void ended_note(mcp_server_t *srv, const apex_event_t *ev) {
  int64_t now = wall_ms();
  while (srv->ended && (srv->n_ended >= ENDED_MAX || now - srv->ended->at_ms > ENDED_KEEP_MS))
    ended_drop_oldest(srv);
  ended_t *e = calloc(1, sizeof *e);
  if (!e || !ev->task) {
    free(e); /* a lookup may then see the row late: working a moment longer */
    return;
  }
  e->task_id = ev->task_id;
  e->at_ms = now;
  e->state = ev->state;
  if (ev->state == APEX_TASK_SUCCEEDED) e->result = apex_task_result(ev->task);
  else e->error = apex_task_error(ev->task);
  if (srv->ended_tail) srv->ended_tail->next = e;
  else srv->ended = e;
  srv->ended_tail = e;
  srv->n_ended++;
}

/* Makes info (apex_manager_task_info's, of task id) say the end this
 * server saw when the store's row does not say it yet. */
static void ended_overlay(mcp_server_t *srv, uint64_t id, json_t *info) {
  ended_t *e = srv->ended;
  while (e && e->task_id != id) e = e->next;
  if (!e || info_ended(info)) return;
  json_object_set_new(info, "state", json_string(apex_task_state_name(e->state)));
  if (e->state == APEX_TASK_SUCCEEDED)
    json_object_set_new(info, "result", e->result ? json_incref(e->result) : json_null());
  else if (e->error)
    json_object_set_new(info, "error", apex_error_to_json(e->error));
}

/* Looks stored task id up as an MCP task: want_secret (NULL: any, for
 * tasks/list) must be its secret, and a finished one must be within its
 * ttl unless any_age (a request that found it within its ttl and now
 * reads its end: a tasks/cancel's answer, a waiting tasks/result).
 * Returns: 0 with *info (a new reference), *ttl_ms and the taskId in
 * tid (80 bytes); MCP_INVALID_PARAMS for no such MCP task (unknown id, a
 * row that is not an MCP task's, a wrong secret, a ttl passed);
 * MCP_INTERNAL_ERROR when the store cannot be read. */
static int store_mcp_task(mcp_server_t *srv, uint64_t id, const char *want_secret, int any_age,
                          json_t **info, int64_t *ttl_ms, char *tid) {
  *info = NULL;
  json_t *j = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_task_info(srv->m, id, &j, &err);
  apex_error_unref(err);
  if (rc != APEX_OK) return rc == APEX_E_INVALID ? MCP_INVALID_PARAMS : MCP_INTERNAL_ERROR;
  if (srv->ended) ended_overlay(srv, id, j);
  const char *key = json_string_value(json_object_get(j, "idempotency_key"));
  const size_t pl = sizeof STORE_KEY_PREFIX - 1;
  const char *sec = key && strncmp(key, STORE_KEY_PREFIX, pl) == 0 ? key + pl : NULL;
  char *end = NULL;
  long long ttl = -1;
  if (sec && is_hex_secret(sec, strcspn(sec, ":")) && sec[SECRET_HEX] == ':') {
    errno = 0;
    ttl = strtoll(sec + SECRET_HEX + 1, &end, 10);
    if (errno || *end || ttl <= 0) ttl = -1;
  }
  /* The secret compared in constant time: how much of it matched is not
   * for a guesser to time. */
  unsigned diff = ttl < 0;
  for (size_t i = 0; want_secret && ttl >= 0 && i < SECRET_HEX; i++)
    diff |= (unsigned)(sec[i] ^ want_secret[i]);
  double created = json_number_value(json_object_get(j, "created_at"));
  if (!diff && !any_age && info_ended(j) && wall_ms() > (int64_t)(created * 1000) + ttl) diff = 1;
  if (diff) {
    json_decref(j);
    return MCP_INVALID_PARAMS;
  }
  *ttl_ms = ttl;
  snprintf(tid, 80, "apex-%" PRIu64 "-%.*s", id, SECRET_HEX, sec);
  *info = j;
  return 0;
}

/* The Task object of a stored MCP task. */
static json_t *store_task_json(const char *tid, const json_t *info, int64_t ttl_ms) {
  char created[32], updated[32];
  iso_time((int64_t)(json_number_value(json_object_get(info, "created_at")) * 1000), created,
           sizeof created);
  iso_time((int64_t)(json_number_value(json_object_get(info, "updated_at")) * 1000), updated,
           sizeof updated);
  json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:I, s:i}", "taskId", tid, "status",
                        info_status(info), "createdAt", created, "lastUpdatedAt", updated, "ttl",
                        (json_int_t)ttl_ms, "pollInterval", TASK_POLL_MS);
  const char *msg = json_string_value(json_object_get(json_object_get(info, "error"), "message"));
  if (j && msg && info_ended(info)) json_object_set_new(j, "statusMessage", json_string(msg));
  return j;
}

/* The CallToolResult of an ended stored task: what tool_result gives for
 * the same end of a live one. */
static json_t *store_result(const json_t *info) {
  if (strcmp(info_state(info), "succeeded") == 0)
    return tool_result_ok(json_object_get(info, "result"));
  const json_t *e = json_object_get(info, "error");
  const char *code = json_string_value(json_object_get(e, "code"));
  const char *msg = json_string_value(json_object_get(e, "message"));
  return tool_result_err(code ? code : apex_status_name(APEX_E_EXECUTION),
                         msg ? msg : apex_strerror(APEX_E_EXECUTION),
                         json_is_object(e) ? json_deep_copy(e) : NULL);
}

/* Answers a tasks/result with r (taken), which names its task. */
static void answer_task_result(mcp_session_t *s, void *stream, const json_t *req, const char *tid,
                               json_t *r) {
  if (r && !json_object_get(r, "_meta")) json_object_set_new(r, "_meta", related_meta_id(tid));
  answer(s, stream, mcp_result(req, r));
}

/* Answers and frees every waiter on the task that ended with ev. */
static void swaiters_done(mcp_server_t *srv, const apex_event_t *ev) {
  for (swaiter_t **pp = &srv->swaiters; *pp;) {
    swaiter_t *w = *pp;
    if (w->task_id != ev->task_id) {
      pp = &w->next;
      continue;
    }
    *pp = w->next;
    answer_task_result(w->s, w->stream, w->id, w->task, tool_result(ev));
    swaiter_free(w);
  }
}

int mcp_server_timeout_ms(const mcp_server_t *srv) {
  if (!srv->swaiters) return -1;
  int64_t now = wall_ms(), next = -1;
  for (const swaiter_t *w = srv->swaiters; w; w = w->next)
    if (w->poll_at_ms && (next < 0 || w->poll_at_ms < next)) next = w->poll_at_ms;
  if (next < 0) return -1;
  return next <= now ? 0 : (int)(next - now);
}

void mcp_server_tick(mcp_server_t *srv) {
  if (!srv->swaiters) return;
  int64_t now = wall_ms();
  for (swaiter_t **pp = &srv->swaiters; *pp;) {
    swaiter_t *w = *pp;
    if (!w->poll_at_ms || w->poll_at_ms > now) {
      pp = &w->next;
      continue;
    }
    json_t *info = NULL;
    int64_t ttl;
    char tid[80];
    int code = store_mcp_task(srv, w->task_id, NULL, 1, &info, &ttl, tid);
    if (code == MCP_INTERNAL_ERROR || (code == 0 && !info_ended(info))) {
      /* Still running elsewhere, or the store is busy: look again. */
      json_decref(info);
      w->poll_at_ms = now + STORE_POLL_MS;
      pp = &w->next;
      continue;
    }
    *pp = w->next;
    if (code == 0) answer_task_result(w->s, w->stream, w->id, w->task, store_result(info));
    else answer_error(w->s, w->stream, w->id, MCP_INVALID_PARAMS, "the task is gone from the store");
    json_decref(info);
    swaiter_free(w);
  }
}

/* tasks/list with --store: the store's MCP tasks in id order, a page at a
 * time; the cursor is the last id a page read. */
static void store_tasks_list(mcp_session_t *s, mcp_msg_t *msg, void *stream) {
  mcp_server_t *srv = s->srv;
  apex_store_filter_t f = APEX_STORE_FILTER_INIT;
  json_t *cursor = json_object_get(msg->params, "cursor");
  if (cursor) {
    const char *c = json_string_value(cursor);
    char *end = NULL;
    errno = 0;
    unsigned long long after = c && c[0] == 's' && c[1] >= '0' && c[1] <= '9' ? strtoull(c + 1, &end, 10) : 0;
    if (!end || *end || errno)
      return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, "invalid cursor");
    f.after_id = (uint64_t)after;
  }
  f.limit = 200;
  json_t *tasks = json_array();
  if (!tasks) return answer_error(s, stream, msg->id, MCP_INTERNAL_ERROR, "out of memory");
  size_t scanned = 0;
  uint64_t last = f.after_id;
  int more = 0;
  for (;;) {
    json_t *page = NULL;
    apex_error_t *err = NULL;
    int rc = apex_store_list(apex_manager_store(srv->m), &f, &page, &err);
    apex_error_unref(err);
    if (rc != APEX_OK) {
      json_decref(tasks);
      return answer_error(s, stream, msg->id, MCP_INTERNAL_ERROR, "the store cannot be read");
    }
    json_t *rows = json_object_get(page, "tasks");
    for (size_t i = 0; i < json_array_size(rows) && !more; i++) {
      if (json_array_size(tasks) >= STORE_LIST_PAGE || scanned >= STORE_LIST_SCAN) {
        more = 1;
        break;
      }
      uint64_t id = (uint64_t)json_integer_value(json_object_get(json_array_get(rows, i), "id"));
      scanned++;
      last = id;
      json_t *info = NULL;
      int64_t ttl;
      char tid[80];
      if (store_mcp_task(srv, id, NULL, 0, &info, &ttl, tid) == 0)
        json_array_append_new(tasks, store_task_json(tid, info, ttl));
      json_decref(info);
    }
    json_t *next = json_object_get(page, "next");
    int last_page = !json_is_integer(next);
    f.after_id = last_page ? 0 : (uint64_t)json_integer_value(next);
    json_decref(page);
    if (more || last_page) break;
  }
  json_t *res = json_pack("{s:o}", "tasks", tasks);
  if (res && more) {
    char c[32];
    snprintf(c, sizeof c, "s%" PRIu64, last);
    json_object_set_new(res, "nextCursor", json_string(c));
  }
  answer(s, stream, mcp_result(msg->id, res));
}

/* tasks/get, tasks/result, tasks/cancel and tasks/list with --store. */
static void store_tasks(mcp_session_t *s, mcp_msg_t *msg, void *stream, const char *what) {
  mcp_server_t *srv = s->srv;
  if (strcmp(what, "list") == 0) return store_tasks_list(s, msg, stream);
  const char *tid = json_string_value(json_object_get(msg->params, "taskId"));
  if (!tid) return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, "\"taskId\" must be a string");
  uint64_t id;
  const char *secret;
  json_t *info = NULL;
  int64_t ttl;
  char tid2[80];
  int code = store_task_id_parse(tid, &id, &secret) != 0
                 ? MCP_INVALID_PARAMS
                 : store_mcp_task(srv, id, secret, 0, &info, &ttl, tid2);
  if (code)
    return answer_error(s, stream, msg->id, code,
                        code == MCP_INVALID_PARAMS ? "unknown task (or its ttl passed)"
                                                   : "the store cannot be read");
  if (strcmp(what, "get") == 0) {
    answer(s, stream, mcp_result(msg->id, store_task_json(tid2, info, ttl)));
  } else if (strcmp(what, "cancel") == 0) {
    const char *st = info_status(info);
    if (strcmp(st, "working") != 0) {
      json_decref(info);
      return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS,
                          "the task has ended already (a terminal task cannot be cancelled)");
    }
    /* Through the store: recorded for good (a restart still says
     * cancelled), and it reaches the task wherever it runs: at once one no
     * live process holds, within about a second one another process runs.
     * One this manager runs is told now as well. */
    apex_error_t *err = NULL;
    int rc = apex_store_cancel(apex_manager_store(srv->m), id, "cancelled by the client", &err);
    apex_error_unref(err);
    apex_task_t *h = NULL;
    if (rc == APEX_OK && apex_ops_find(srv->m, id, &h) == APEX_OK) {
      apex_task_cancel(h, "cancelled by the client");
      apex_task_release(h);
    }
    json_decref(info);
    info = NULL;
    code = rc == APEX_OK || rc == APEX_E_ALREADY
               ? store_mcp_task(srv, id, secret, 1, &info, &ttl, tid2)
               : MCP_INTERNAL_ERROR;
    if (code == 0 && strcmp(info_status(info), "cancelled") != 0) code = MCP_INVALID_PARAMS;
    if (code) {
      /* It ended on its own first (APEX_E_ALREADY): no longer cancellable. */
      json_decref(info);
      return answer_error(s, stream, msg->id, code,
                          code == MCP_INVALID_PARAMS
                              ? "the task has ended already (a terminal task cannot be cancelled)"
                              : "the store cannot record the cancel");
    }
    answer(s, stream, mcp_result(msg->id, store_task_json(tid2, info, ttl)));
  } else if (info_ended(info)) { /* result, now */
    answer_task_result(s, stream, msg->id, tid2, store_result(info));
  } else { /* result, when the task ends */
    swaiter_t *w = calloc(1, sizeof *w);
    if (!w) {
      json_decref(info);
      return answer_error(s, stream, msg->id, MCP_INTERNAL_ERROR, "out of memory");
    }
    w->s = s;
    w->id = json_incref(msg->id);
    w->stream = stream;
    w->task_id = id;
    snprintf(w->task, sizeof w->task, "%s", tid2);
    /* A task this manager runs tells its end by its DONE event (the task
     * ends after this request: both happen on this thread); one another
     * process runs is looked at in the store. */
    apex_task_t *h = NULL;
    if (apex_ops_find(srv->m, id, &h) == APEX_OK) apex_task_release(h);
    else w->poll_at_ms = wall_ms() + STORE_POLL_MS;
    w->next = srv->swaiters;
    srv->swaiters = w;
  }
  json_decref(info);
}

static void tools_call(mcp_session_t *s, mcp_msg_t *msg, void *stream) {
  mcp_server_t *srv = s->srv;
  json_t *params = msg->params;
  const char *name = json_string_value(json_object_get(params, "name"));
  json_t *args = json_object_get(params, "arguments");
  if (!name) return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, "\"name\" must be a string");
  if (args && !json_is_object(args))
    return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, "\"arguments\" must be an object");
  const mcp_tool_t *tool = find_tool(srv, name);
  if (!tool) {
    char why[300];
    snprintf(why, sizeof why, "unknown tool '%.200s'", name);
    return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, why);
  }
  json_t *task_req = json_object_get(params, "task");
  if (task_req && !json_is_object(task_req))
    return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, "\"task\" must be an object");
  json_t *meta = json_object_get(params, "_meta");
  json_t *ptok = json_object_get(meta, "progressToken");
  if (ptok && !json_is_string(ptok) && !json_is_integer(ptok))
    return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS,
                        "\"progressToken\" must be a string or an integer");
  mcp_call_t *c = calloc(1, sizeof *c);
  char *key = id_key(msg->id);
  if (!c || !key) {
    free(c);
    free(key);
    return answer_error(s, stream, msg->id, MCP_INTERNAL_ERROR, "out of memory");
  }
  apex_submit_opts_t o;
  apex_submit_opts_init(&o);
  /* Events are delivered by our own dispatch (mcp_server_pump), never
   * before this function returned, so c is filled in by then. */
  o.on_event = on_task_event;
  o.event_user = c;
  int64_t ttl_ms = TASK_TTL_DEFAULT_MS;
  char secret[SECRET_HEX + 1] = "", idem[sizeof STORE_KEY_PREFIX + SECRET_HEX + 24];
  if (task_req) {
    json_t *ttl = json_object_get(task_req, "ttl");
    if (json_is_integer(ttl) && json_integer_value(ttl) > 0) ttl_ms = (int64_t)json_integer_value(ttl);
    if (ttl_ms > TASK_TTL_MAX_MS) ttl_ms = TASK_TTL_MAX_MS;
    if (srv->durable) {
      /* A durable task (--store): its key keeps what the MCP task needs
       * after a restart (the taskId's secret half, the ttl). */
      if (store_secret(secret) != 0) {
        free(c);
        free(key);
        return answer_error(s, stream, msg->id, MCP_INTERNAL_ERROR, "no randomness for a task id");
      }
      snprintf(idem, sizeof idem, STORE_KEY_PREFIX "%s:%" PRId64, secret, ttl_ms);
      o.durable = 1;
      o.idempotency_key = idem;
    }
  }
  apex_task_t *t = NULL;
  apex_error_t *err = NULL;
  int rc = apex_manager_submit(srv->m, tool->plugin, tool->action, args, &o, &t, &err);
  if (rc != APEX_OK) {
    free(c);
    free(key);
    if (rc == APEX_E_INVALID_PARAMS) {
      answer(s, stream,
             mcp_error(msg->id, MCP_INVALID_PARAMS, apex_error_message(err),
                       bad_argument(apex_error_message(err))));
    } else {
      /* The server could not take the call (queue full, shutting down):
       * the tool's failure, as the error the task would have had. */
      apex_event_t ev = {.type = APEX_EVENT_DONE, .state = APEX_TASK_FAILED, .error = err};
      answer(s, stream, mcp_result(msg->id, tool_result(&ev)));
    }
    apex_error_unref(err);
    return;
  }
  c->s = s;
  c->key = key;
  c->stream = stream;
  c->tool = tool;
  c->task = t;
  c->task_id = apex_task_id(t);
  c->last_progress = -1;
  c->progress_token = json_incref(ptok);
  c->next = srv->calls;
  if (srv->calls) srv->calls->prev = c;
  srv->calls = c;
  srv->n_calls++;
  s->n_calls++;
  srv->started = 1;
  if (task_req) {
    mcp_mtask_t *mt = calloc(1, sizeof *mt);
    if (!mt) {
      apex_task_cancel(t, NULL);
      c->client_cancelled = 1; /* answered here: its end says nothing */
      c->stream = NULL;
      return answer_error(s, stream, msg->id, MCP_INTERNAL_ERROR, "out of memory");
    }
    if (srv->durable) snprintf(mt->id, sizeof mt->id, "apex-%" PRIu64 "-%s", c->task_id, secret);
    else snprintf(mt->id, sizeof mt->id, "apex-%" PRIu64, c->task_id);
    c->durable = srv->durable;
    mt->call = c;
    mt->ttl_ms = ttl_ms;
    mt->created_ms = wall_ms();
    iso_time(mt->created_ms, mt->created_iso, sizeof mt->created_iso);
    mtask_touch(mt, "working");
    mt->next = s->mtasks;
    s->mtasks = mt;
    c->mtask = mt;
    json_t *res = json_pack("{s:o}", "task", mtask_json(mt));
    answer(s, stream, mcp_result(msg->id, res));
    /* Progress of a task goes to the session's own channel: the stream
     * that created it is closed. */
    c->stream = NULL;
    return;
  }
  c->id = json_incref(msg->id);
}

/* ------------------------------------------------------------- requests */

static void do_initialize(mcp_session_t *s, mcp_msg_t *msg, void *stream) {
  if (s->initialized)
    return answer_error(s, stream, msg->id, MCP_INVALID_REQUEST, "the session is initialized already");
  const char *want = json_string_value(json_object_get(msg->params, "protocolVersion"));
  if (!want) return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, "\"protocolVersion\" must be a string");
  const char *ver = strcmp(want, MCP_PROTO_PREVIOUS) == 0 ? MCP_PROTO_PREVIOUS : MCP_PROTO_LATEST;
  snprintf(s->proto, sizeof s->proto, "%s", ver);
  json_t *caps = json_pack("{s:{s:b}, s:{}}", "tools", "listChanged", 0, "logging");
  if (caps && strcmp(ver, MCP_PROTO_LATEST) == 0)
    json_object_set_new(caps, "tasks",
                        json_pack("{s:{}, s:{}, s:{s:{s:{}}}}", "list", "cancel", "requests",
                                  "tools", "call"));
  json_t *res = json_pack("{s:s, s:o, s:{s:s, s:s, s:s}, s:s}", "protocolVersion", ver,
                          "capabilities", caps, "serverInfo", "name", "apex", "title", "Apex",
                          "version", apex_version(), "instructions",
                          "Each tool runs one Apex plugin action as a task: progress, "
                          "cancellation, timeouts and retries are Apex's.");
  s->initialized = 1;
  answer(s, stream, mcp_result(msg->id, res));
}

static void do_tasks(mcp_session_t *s, mcp_msg_t *msg, void *stream, const char *what) {
  if (s->srv->durable) return store_tasks(s, msg, stream, what);
  if (strcmp(what, "list") == 0) {
    mtask_find(s, NULL); /* drops the expired */
    json_t *arr = json_array();
    for (mcp_mtask_t *t = s->mtasks; t && arr; t = t->next) json_array_append_new(arr, mtask_json(t));
    return answer(s, stream, mcp_result(msg->id, json_pack("{s:o}", "tasks", arr)));
  }
  const char *id = json_string_value(json_object_get(msg->params, "taskId"));
  if (!id) return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, "\"taskId\" must be a string");
  mcp_mtask_t *t = mtask_find(s, id);
  if (!t) return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, "unknown task (or its ttl passed)");
  if (strcmp(what, "get") == 0) return answer(s, stream, mcp_result(msg->id, mtask_json(t)));
  if (strcmp(what, "cancel") == 0) {
    if (!t->call)
      return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS,
                          "the task has ended already (a terminal task cannot be cancelled)");
    apex_task_cancel(t->call->task, NULL);
    /* The task is cancelled from the client's view now, whatever its
     * handler takes to return; tasks/result then says so. */
    mtask_touch(t, "cancelled");
    return answer(s, stream, mcp_result(msg->id, mtask_json(t)));
  }
  /* result: now if ended, else when it ends. */
  struct waiter *w = calloc(1, sizeof *w);
  if (!w) return answer_error(s, stream, msg->id, MCP_INTERNAL_ERROR, "out of memory");
  w->id = json_incref(msg->id);
  w->stream = stream;
  w->next = t->waiters;
  t->waiters = w;
  if (t->result) mtask_answer_waiters(s, t);
}

static void handle_request(mcp_session_t *s, mcp_msg_t *msg, void *stream) {
  const char *m = msg->method;
  char *key = id_key(msg->id);
  int dup = key && find_call_key(s, key);
  free(key);
  if (dup)
    return answer_error(s, stream, msg->id, MCP_INVALID_REQUEST,
                        "duplicate id: a request with this id is still in flight");
  if (strcmp(m, "ping") == 0) return answer(s, stream, mcp_result(msg->id, NULL));
  if (strcmp(m, "initialize") == 0) return do_initialize(s, msg, stream);
  if (!s->initialized)
    return answer_error(s, stream, msg->id, MCP_INVALID_REQUEST,
                        "the session is not initialized: send initialize first");
  if (strcmp(m, "tools/list") == 0)
    return answer(s, stream, mcp_result(msg->id, json_pack("{s:O}", "tools", s->srv->tools_list)));
  if (strcmp(m, "tools/call") == 0) {
    if (!msg->params) return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, "params missing");
    return tools_call(s, msg, stream);
  }
  if (strcmp(m, "logging/setLevel") == 0) {
    const char *lv = json_string_value(json_object_get(msg->params, "level"));
    int i = lv ? level_index(lv) : -1;
    if (i < 0) return answer_error(s, stream, msg->id, MCP_INVALID_PARAMS, "unknown \"level\"");
    s->log_level = i;
    return answer(s, stream, mcp_result(msg->id, NULL));
  }
  if (strncmp(m, "tasks/", 6) == 0 && strcmp(s->proto, MCP_PROTO_LATEST) == 0 &&
      (strcmp(m + 6, "get") == 0 || strcmp(m + 6, "result") == 0 || strcmp(m + 6, "list") == 0 ||
       strcmp(m + 6, "cancel") == 0))
    return do_tasks(s, msg, stream, m + 6);
  char why[200];
  snprintf(why, sizeof why, "method not found: %.120s", m);
  answer_error(s, stream, msg->id, MCP_METHOD_NOT_FOUND, why);
}

static void handle_notification(mcp_session_t *s, mcp_msg_t *msg) {
  if (strcmp(msg->method, "notifications/cancelled") == 0) {
    json_t *rid = json_object_get(msg->params, "requestId");
    if (!json_is_string(rid) && !json_is_integer(rid)) return;
    char *key = id_key(rid);
    mcp_call_t *c = key ? find_call_key(s, key) : NULL;
    free(key);
    if (!c || c->client_cancelled) return;
    const char *reason = json_string_value(json_object_get(msg->params, "reason"));
    c->client_cancelled = 1;
    /* Apex keeps "timeout", "shutdown" and "parent" for itself. */
    if (!reason || apex_task_cancel(c->task, reason) == APEX_E_INVALID)
      apex_task_cancel(c->task, "cancelled by the client");
  }
  /* notifications/initialized and the rest need nothing. */
}

void mcp_session_handle(mcp_session_t *s, mcp_msg_t *msg, void *stream) {
  if (msg->kind == MCP_MSG_REQUEST) handle_request(s, msg, stream);
  else if (msg->kind == MCP_MSG_NOTIFICATION) handle_notification(s, msg);
  mcp_msg_free(msg);
}

/* ------------------------------------------------------------- logs */

/* Routes one library log line: "plugin.action task N: text" goes to the
 * session of the call running task N (on its stream), anything else to
 * every initialized session. */
static void route_log(mcp_server_t *srv, int level, const char *line) {
  int ml = apex_to_mcp_level(level);
  const char *t = strstr(line, " task ");
  char logger[200] = "apex";
  const char *text = line;
  mcp_call_t *c = NULL;
  if (t) {
    char *end = NULL;
    unsigned long long id = strtoull(t + 6, &end, 10);
    if (end && end[0] == ':' && end[1] == ' ') {
      c = find_call_task(srv, id);
      snprintf(logger, sizeof logger, "%.*s", (int)(t - line), line);
      text = end + 2;
    }
  }
  /* The library's own lines ("task 7 files.copy succeeded") say what the
   * protocol says already, unless they warn. */
  if (text == line && level > APEX_LOG_WARN) return;
  for (mcp_session_t *s = srv->sessions; s; s = s->next) {
    if (c && c->s != s) continue;
    if (!s->initialized || s->closed || ml < s->log_level) continue;
    json_t *params = json_pack("{s:s, s:s, s:s}", "level", mcp_levels[ml], "logger", logger,
                               "data", text);
    if (params && c && c->mtask) json_object_set_new(params, "_meta", related_meta(c->mtask));
    send_msg(s, c ? c->stream : NULL, mcp_notification("notifications/message", params));
  }
}

static void drain_logs(mcp_server_t *srv) {
  int level;
  char *line;
  size_t dropped;
  while (cli_log_pop(&level, &line, &dropped)) {
    if (level <= srv->stderr_level) fprintf(stderr, "apex: %s: %s\n", cli_log_level_name(level), line);
    route_log(srv, level, line);
    free(line);
  }
}

void mcp_server_pump(mcp_server_t *srv) { mcp_server_pump_ready(srv, 1); }

int mcp_server_watch_newest(mcp_server_t *srv, uint64_t budget_ns) {
  if (!srv->started) return 0;
  srv->started = 0;
  /* The list's head is the newest call: the one whose client waits. */
  if (!srv->calls) return 1; /* ended already (delivered): nothing to watch */
  apex_task_t *t = srv->calls->task;
  struct timespec ts;
  uint64_t until = 0;
  for (unsigned i = 1;; i++) {
    if (apex_task_state_is_terminal(apex_task_state(t))) return 1;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 32 == 0) {
      clock_gettime(CLOCK_MONOTONIC, &ts);
      uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
      if (!until) until = now + budget_ns;
      else if (now >= until) return 0;
      /* On a busy machine the worker may be waiting for this CPU. */
      sched_yield();
    }
  }
}

void mcp_server_pump_ready(mcp_server_t *srv, int log_ready) {
  char drain[256];
  while (log_ready && read(srv->log_rd, drain, sizeof drain) > 0) {
  }
  /* Lines first: a task's lines were queued before its DONE event, and
   * routing them needs its call, which DONE frees. */
  drain_logs(srv);
  apex_manager_dispatch(srv->m);
  drain_logs(srv);
}
