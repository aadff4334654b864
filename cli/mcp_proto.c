/* The JSON-RPC 2.0 message layer of `apex mcp`: parses one message's text,
 * classifies it (request, notification, response) and builds the answers.
 * Pure functions, no state: any thread; the fuzz target
 * (tests/fuzz/fuzz_mcp_message.c) runs mcp_parse on arbitrary bytes.
 *
 * The rules it enforces (JSON-RPC 2.0 as MCP uses it):
 * - text that is not one JSON value: -32700, id null;
 * - an array (a batch; MCP 2025-06-18 removed them), a non-object, a
 *   "jsonrpc" other than "2.0", a "method" that is not a string, an id that
 *   is neither a string nor an integer (MCP: "MUST NOT be null"), "params"
 *   that is not an object or array: -32600, with the id when it could be
 *   read;
 * - a message with neither method nor result/error is invalid; a response
 *   (result or error with an id) is the client answering; nothing is sent
 *   back for a bad response or notification (JSON-RPC never answers
 *   those). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp.h"

void mcp_msg_free(mcp_msg_t *m) {
  if (!m) return;
  json_decref(m->root);
  memset(m, 0, sizeof *m);
}

static int valid_id(const json_t *id) { return json_is_string(id) || json_is_integer(id); }

/* The id to quote in an error about root: its own when usable, else null. */
static const json_t *quotable_id(const json_t *root) {
  const json_t *id = json_is_object(root) ? json_object_get(root, "id") : NULL;
  return valid_id(id) ? id : NULL;
}

static int refuse(json_t *root, json_t **err_resp, int code, const char *why, int answer) {
  if (err_resp) *err_resp = answer ? mcp_error(quotable_id(root), code, why, NULL) : NULL;
  json_decref(root);
  return -1;
}

int mcp_classify(json_t *root, mcp_msg_t *out, json_t **err_resp) {
  memset(out, 0, sizeof *out);
  if (err_resp) *err_resp = NULL;
  if (json_is_array(root))
    return refuse(root, err_resp, MCP_INVALID_REQUEST, "batches are not supported (MCP 2025-06-18)",
                  1);
  if (!json_is_object(root))
    return refuse(root, err_resp, MCP_INVALID_REQUEST, "a message is a JSON object", 1);
  json_t *ver = json_object_get(root, "jsonrpc");
  json_t *id = json_object_get(root, "id");
  json_t *method = json_object_get(root, "method");
  json_t *params = json_object_get(root, "params");
  int has_id = id != NULL;
  if (!method && (json_object_get(root, "result") || json_object_get(root, "error"))) {
    /* A client's response to a request of ours: never answered. */
    if (!json_is_string(ver) || strcmp(json_string_value(ver), "2.0") != 0 || !valid_id(id))
      return refuse(root, err_resp, MCP_INVALID_REQUEST, "bad response", 0);
    out->kind = MCP_MSG_RESPONSE;
    out->root = root;
    out->id = id;
    return 0;
  }
  /* A request answers with an error; a notification (no id) never does. */
  if (!json_is_string(ver) || strcmp(json_string_value(ver), "2.0") != 0)
    return refuse(root, err_resp, MCP_INVALID_REQUEST, "\"jsonrpc\" must be \"2.0\"", has_id);
  if (!json_is_string(method))
    return refuse(root, err_resp, MCP_INVALID_REQUEST, "\"method\" must be a string", has_id);
  if (has_id && !valid_id(id))
    return refuse(root, err_resp, MCP_INVALID_REQUEST, "\"id\" must be a string or an integer", 1);
  if (params && !json_is_object(params) && !json_is_array(params))
    return refuse(root, err_resp, MCP_INVALID_REQUEST, "\"params\" must be an object", has_id);
  out->kind = has_id ? MCP_MSG_REQUEST : MCP_MSG_NOTIFICATION;
  out->root = root;
  out->id = has_id ? id : NULL;
  out->method = json_string_value(method);
  out->params = json_is_object(params) ? params : NULL;
  if (params && !json_is_object(params)) {
    /* JSON-RPC allows by-position params; no MCP method takes them. */
    json_t *e = has_id ? mcp_error(id, MCP_INVALID_PARAMS, "\"params\" must be an object", NULL)
                       : NULL;
    mcp_msg_free(out);
    if (err_resp) *err_resp = e;
    else json_decref(e);
    return -1;
  }
  return 0;
}

int mcp_parse(const char *buf, size_t len, mcp_msg_t *out, json_t **err_resp) {
  memset(out, 0, sizeof *out);
  if (err_resp) *err_resp = NULL;
  json_error_t je;
  /* Duplicate keys are refused: which "id" or "method" would count is
   * otherwise up to the parser, and two readers could disagree. */
  json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY, &je);
  if (!root) {
    if (err_resp) {
      char why[200];
      snprintf(why, sizeof why, "parse error: %s", je.text);
      *err_resp = mcp_error(NULL, MCP_PARSE_ERROR, why, NULL);
    }
    return -1;
  }
  return mcp_classify(root, out, err_resp);
}

json_t *mcp_error(const json_t *id, int code, const char *message, json_t *data) {
  json_t *e = json_pack("{s:i, s:s}", "code", code, "message", message ? message : "");
  if (!e) {
    json_decref(data);
    return NULL;
  }
  if (data) json_object_set_new(e, "data", data);
  json_t *m = json_pack("{s:s, s:O?, s:o}", "jsonrpc", "2.0", "id", id, "error", e);
  if (m && !id) json_object_set_new(m, "id", json_null());
  return m;
}

json_t *mcp_result(const json_t *id, json_t *result) {
  if (!result) result = json_object();
  if (!result) return NULL;
  /* Built member by member, not by json_pack: every answer comes through
   * here, and json_pack parses its format string each time (W16). The
   * members in json_pack's order: the printed answer is the same. */
  json_t *m = json_object();
  if (!m || json_object_set_new_nocheck(m, "jsonrpc", json_string_nocheck("2.0")) != 0 ||
      json_object_set_new_nocheck(m, "id", id ? json_incref((json_t *)id) : json_null()) != 0) {
    json_decref(m);
    json_decref(result);
    return NULL;
  }
  if (json_object_set_new_nocheck(m, "result", result) != 0) { /* result taken either way */
    json_decref(m);
    return NULL;
  }
  return m;
}

json_t *mcp_notification(const char *method, json_t *params) {
  json_t *m = json_pack("{s:s, s:s}", "jsonrpc", "2.0", "method", method);
  if (!m) {
    json_decref(params);
    return NULL;
  }
  if (params) json_object_set_new(m, "params", params);
  return m;
}

char *mcp_dump(const json_t *msg, size_t *len) {
  char *s = json_dumps(msg, JSON_COMPACT);
  if (s && len) *len = strlen(s);
  return s;
}
