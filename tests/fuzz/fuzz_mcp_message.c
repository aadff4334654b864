/* Fuzz target for `apex mcp`'s message parser (cli/mcp_proto.c): any bytes
 * are parsed and classified. The contract checked: every input either
 * yields a message whose kind and fields agree (a request has a string or
 * integer id and a method, a notification a method and no id, a response
 * an id and no method; params absent or an object), or fails with an
 * answer that is a JSON-RPC error response (-32700 or -32600 or -32602,
 * id null or the input's) or with no answer at all (a bad response or
 * notification, which JSON-RPC never answers). Anything else traps. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../../cli/mcp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int is_id(const json_t *id) { return json_is_string(id) || json_is_integer(id); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mcp_msg_t m;
  json_t *err = NULL;
  if (mcp_parse((const char *)data, size, &m, &err) == 0) {
    if (err) __builtin_trap();
    switch (m.kind) {
      case MCP_MSG_REQUEST:
        if (!is_id(m.id) || !m.method) __builtin_trap();
        break;
      case MCP_MSG_NOTIFICATION:
        if (m.id || !m.method) __builtin_trap();
        break;
      case MCP_MSG_RESPONSE:
        if (!is_id(m.id) || m.method) __builtin_trap();
        break;
      default: __builtin_trap();
    }
    if (m.params && !json_is_object(m.params)) __builtin_trap();
    mcp_msg_free(&m);
    return 0;
  }
  if (m.root) __builtin_trap();
  if (err) {
    json_t *e = json_object_get(err, "error");
    json_int_t code = json_integer_value(json_object_get(e, "code"));
    json_t *id = json_object_get(err, "id");
    if (code != MCP_PARSE_ERROR && code != MCP_INVALID_REQUEST && code != MCP_INVALID_PARAMS)
      __builtin_trap();
    if (!json_is_string(json_object_get(e, "message"))) __builtin_trap();
    if (!id || !(json_is_null(id) || is_id(id))) __builtin_trap();
    if (strcmp(json_string_value(json_object_get(err, "jsonrpc")), "2.0") != 0) __builtin_trap();
    /* The answer must print as one line (the stdio framing). */
    size_t n;
    char *line = mcp_dump(err, &n);
    if (!line || memchr(line, '\n', n)) __builtin_trap();
    free(line);
    json_decref(err);
  }
  return 0;
}
