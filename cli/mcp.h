/* `apex mcp`: every loaded plugin action as a Model Context Protocol tool.
 * What the parts share: the JSON-RPC message layer (mcp_proto.c), the
 * protocol core (mcp_server.c: sessions, tools, calls, progress, logs,
 * tasks) and the two transports (mcp_stdio.c, mcp_http.c).
 *
 * Threads: the core runs on the command's main thread only. It owns the
 * manager (DISPATCH delivery: task events run inside its own
 * apex_manager_dispatch), the sessions and the calls. The HTTP transport
 * runs libmicrohttpd inside the same loop, on the same thread
 * (mcp_http.c). */
#ifndef APEX_CLI_MCP_H
#define APEX_CLI_MCP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "cli.h"

/* JSON-RPC 2.0 error codes (and MCP's use of them). */
#define MCP_PARSE_ERROR (-32700)
#define MCP_INVALID_REQUEST (-32600)
#define MCP_METHOD_NOT_FOUND (-32601)
#define MCP_INVALID_PARAMS (-32602)
#define MCP_INTERNAL_ERROR (-32603)

/* The protocol revisions served, newest first; initialize answers with the
 * client's when it is one of these, else with the newest. */
#define MCP_PROTO_LATEST "2025-11-25"
#define MCP_PROTO_PREVIOUS "2025-06-18"

/* Default bound on one message (a stdio line, an HTTP body). */
#define MCP_MAX_MESSAGE_DEFAULT (4u << 20)

/* ---- the message layer (mcp_proto.c) ------------------------------------ */

typedef enum mcp_kind {
  MCP_MSG_REQUEST = 1,      /* method and id */
  MCP_MSG_NOTIFICATION = 2, /* method, no id */
  MCP_MSG_RESPONSE = 3      /* result or error, an id: a client's answer */
} mcp_kind_t;

/* One classified message. Every pointer is borrowed from root. */
typedef struct mcp_msg {
  mcp_kind_t kind;
  json_t *root;       /* the whole message (owned by the mcp_msg_t) */
  json_t *id;         /* string or integer; NULL for a notification */
  const char *method; /* NULL for a response */
  json_t *params;     /* object, or NULL when absent */
} mcp_msg_t;

/* Parses and classifies one message (len bytes of UTF-8 JSON text, not
 * NUL-terminated). A batch (array) is refused: MCP 2025-06-18 removed
 * batching.
 * Returns: 0 and *out (release with mcp_msg_free); or -1 and *err_resp, the
 * JSON-RPC error response to send (-32700 for text that is not JSON, -32600
 * for JSON that is no valid message, with the message's id when one could
 * be read, else null), a new reference, or NULL when the input was a
 * response or notification that needs none, or memory ran out.
 * Thread-safety: any thread (pure). */
int mcp_parse(const char *buf, size_t len, mcp_msg_t *out, json_t **err_resp);
/* As mcp_parse, for a value parsed already. Ownership: root taken. */
int mcp_classify(json_t *root, mcp_msg_t *out, json_t **err_resp);
void mcp_msg_free(mcp_msg_t *m);

/* Builders; each returns a new reference (NULL on no memory). id borrowed
 * (NULL: null), data/result/params taken (NULL: absent, result {}). */
json_t *mcp_error(const json_t *id, int code, const char *message, json_t *data);
json_t *mcp_result(const json_t *id, json_t *result);
json_t *mcp_notification(const char *method, json_t *params);
/* Returns: the message as one line of compact JSON without the newline
 * (malloc'd; caller frees), or NULL on no memory. Ownership: msg borrowed. */
char *mcp_dump(const json_t *msg, size_t *len);

/* ---- the core (mcp_server.c) -------------------------------------------- */

typedef struct mcp_server mcp_server_t;
typedef struct mcp_session mcp_session_t;

/* How the core reaches a transport. `stream` is the transport's handle of
 * where a request came in (NULL for stdio, whose one stream is stdout):
 * the request's response and the notifications about it go there.
 * Called on the main thread. */
typedef struct mcp_transport_ops {
  /* Writes msg on stream (NULL: the session's own channel: stdout, or an
   * HTTP session's standalone GET stream when one is open). Ownership: msg
   * borrowed. */
  void (*send)(void *tuser, void *stream, const json_t *msg);
  /* The request that came in on stream has ended: answered, or cancelled
   * by the client (no answer). After the last one a stream may close. */
  void (*request_done)(void *tuser, void *stream);
} mcp_transport_ops_t;

typedef struct mcp_config {
  const cli_opts_t *cli;       /* --plugin-path, --workers */
  const char **plugins;        /* plugins to serve; n_plugins 0: every one found */
  size_t n_plugins;
  int bare_names;              /* tools named ACTION, not PLUGIN.ACTION */
  size_t max_message;          /* bytes; 0: MCP_MAX_MESSAGE_DEFAULT */
  const char *store;           /* --store: task-augmented calls are durable
                                  tasks of this store (docs/durable.md),
                                  answered from it across restarts; NULL:
                                  MCP tasks live in memory, in their session */
} mcp_config_t;

/* Starts the manager and loads the plugins. Returns: CLI_EXIT_OK and *out,
 * or an exit code (reported on stderr). */
int mcp_server_new(const mcp_config_t *cfg, mcp_server_t **out);
/* Cancels what is left (reason "shutdown" via destroy), delivers the last
 * events and frees. NULL: no-op. */
void mcp_server_free(mcp_server_t *srv);
/* The fds the main loop polls for the core (POLLIN on each): the manager's
 * dispatch fd and the log queue's pipe. */
void mcp_server_fds(mcp_server_t *srv, int *dispatch_fd, int *log_fd);
/* Runs what the fds announced: task events, then queued log lines. */
void mcp_server_pump(mcp_server_t *srv);
/* mcp_server_pump for a loop that knows which fd fired: log_ready 0 skips
 * draining the log pipe (a read that would find it empty); queued lines
 * are routed all the same. */
void mcp_server_pump_ready(mcp_server_t *srv, int log_ready);
/* After a batch of messages was handled: if it started a call, watches
 * the newest call's task for at most about budget_ns and returns 1 once it
 * ended (its DONE is then queued or about to be: pump, then poll as
 * usual), 0 if it did not end in time or no call was started since the
 * last watch. A short task (a no-op action) ends within microseconds of
 * its submit: watching saves the loop a sleep and a wake-up per call
 * (W16, bench/analysis.md). Thread: the main thread. */
int mcp_server_watch_newest(mcp_server_t *srv, uint64_t budget_ns);
/* Returns: the server's bound on one message, in bytes. */
size_t mcp_server_max_message(const mcp_server_t *srv);
/* With --store: how long the main loop may sleep before mcp_server_tick
 * has a stored task to look at again (a tasks/result on a task another
 * process runs is answered by polling the store), in ms; -1: no limit
 * (always -1 without --store). Thread: the main thread. */
int mcp_server_timeout_ms(const mcp_server_t *srv);
/* Answers the tasks/result requests whose stored task (run by another
 * process) ended since the last look. Cheap when there are none: the
 * loops call it after every wait. Thread: the main thread. */
void mcp_server_tick(mcp_server_t *srv);
/* Returns: the number of calls still running on any session that a client
 * waits on (with --store, a task-augmented call's durable task outlives
 * its client and is not counted). */
size_t mcp_server_live_calls(const mcp_server_t *srv);
/* Returns: the server's manager (borrowed; --metrics-listen serves its
 * metrics). */
apex_manager_t *mcp_server_manager(mcp_server_t *srv);

/* Returns: a new session that writes through ops/tuser, or NULL on no
 * memory. */
mcp_session_t *mcp_session_new(mcp_server_t *srv, const mcp_transport_ops_t *ops, void *tuser);
/* The transport is gone (stdio EOF, HTTP DELETE or expiry): every running
 * call of s is cancelled with reason "disconnected", nothing more is sent,
 * and s is freed once its last call ended (at once if none). */
void mcp_session_close(mcp_session_t *s);
/* Returns: the protocol revision negotiated ("" before initialize). */
const char *mcp_session_protocol(const mcp_session_t *s);
/* Returns: 1 once initialize was answered. */
int mcp_session_initialized(const mcp_session_t *s);
/* Handles one message that arrived on stream. Ownership: msg taken. */
void mcp_session_handle(mcp_session_t *s, mcp_msg_t *msg, void *stream);
/* Answers a message that failed to parse (err_resp from mcp_parse) on
 * stream, as a request's answer. Ownership: err_resp taken. */
void mcp_session_reject(mcp_session_t *s, json_t *err_resp, void *stream);

/* ---- transports --------------------------------------------------------- */

/* Serves one client on stdin/stdout until stdin ends. Returns: exit code. */
int mcp_stdio_run(mcp_server_t *srv);
/* Serves Streamable HTTP on addr ("HOST:PORT"; PORT 0: any free one, said
 * on stderr as "apex mcp: listening on http://HOST:PORT/mcp") until SIGINT
 * or SIGTERM; a session idle_s seconds without a request or a reader is
 * ended. Returns: exit code. */
int mcp_http_run(mcp_server_t *srv, const char *addr, double idle_s);


#endif
