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

/* ------------------------------------------------------------- mcp_dump
 * Every answer and notification is printed here, once per call, on the
 * transport's one thread. jansson's json_dumps took ~1.7-2 us for a no-op
 * call's ~110-byte answer (W16, bench/analysis.md: a tenth of the stdio
 * server's CPU per call): it prints through a callback per token, formats
 * each container's address with snprintf for its cycle check and keeps
 * them in a hashtable. This writer prints the same bytes as
 * json_dumps(msg, JSON_COMPACT | JSON_ENCODE_ANY) (tests/fuzz/
 * fuzz_mcp_message.c compares the two on every input) with one growing
 * buffer. What it does not print
 * itself it hands to jansson, so the output cannot differ: reals (jansson's
 * own %.17g rules) and strings with a byte past ASCII (jansson checks their
 * UTF-8 and refuses invalid text). Objects are walked with
 * json_object_keylen_foreach, the order json_dumps prints them in. */

typedef struct dumpbuf {
  char *p;
  size_t len, cap;
} dumpbuf_t;

/* Nesting past this is refused (NULL), as a cycle would otherwise recurse
 * without end; jansson's parser stops at 2048. */
#define DUMP_MAX_DEPTH 4096

static int db_reserve(dumpbuf_t *b, size_t more) {
  if (b->cap - b->len > more) return 0; /* room for more and a NUL */
  size_t cap = b->cap * 2;
  while (cap - b->len <= more) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) return -1;
  b->p = p;
  b->cap = cap;
  return 0;
}

static int db_put(dumpbuf_t *b, const char *s, size_t n) {
  if (db_reserve(b, n) != 0) return -1;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  return 0;
}

/* A value jansson prints (a real, a non-ASCII string) appended as it
 * prints it. */
static int db_jansson(dumpbuf_t *b, const json_t *v) {
  char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
  if (!s) return -1;
  int rc = db_put(b, s, strlen(s));
  free(s);
  return rc;
}

/* v: the string value, or NULL for an object key (always ASCII here). */
static int db_string(dumpbuf_t *b, const json_t *v, const char *s, size_t n) {
  if (v)
    for (size_t i = 0; i < n; i++)
      if ((unsigned char)s[i] >= 0x80) return db_jansson(b, v);
  /* Worst case every byte as \u00XX, plus the quotes. */
  if (db_reserve(b, n * 6 + 2) != 0) return -1;
  static const char hex[] = "0123456789ABCDEF";
  char *o = b->p + b->len;
  *o++ = '"';
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') {
      *o++ = (char)c;
      continue;
    }
    *o++ = '\\';
    switch (c) {
      case '"': *o++ = '"'; break;
      case '\\': *o++ = '\\'; break;
      case '\b': *o++ = 'b'; break;
      case '\f': *o++ = 'f'; break;
      case '\n': *o++ = 'n'; break;
      case '\r': *o++ = 'r'; break;
      case '\t': *o++ = 't'; break;
      default:
        *o++ = 'u';
        *o++ = '0';
        *o++ = '0';
        *o++ = hex[c >> 4];
        *o++ = hex[c & 15];
    }
  }
  *o++ = '"';
  b->len = (size_t)(o - b->p);
  return 0;
}

static int db_integer(dumpbuf_t *b, json_int_t v) {
  char tmp[24];
  char *e = tmp + sizeof tmp, *d = e;
  /* In unsigned arithmetic, so the most negative value negates. */
  unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
  do {
    *--d = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) *--d = '-';
  return db_put(b, d, (size_t)(e - d));
}

static int db_value(dumpbuf_t *b, const json_t *v, int depth) {
  if (!v || depth > DUMP_MAX_DEPTH) return -1;
  switch (json_typeof(v)) {
    case JSON_OBJECT: {
      if (db_put(b, "{", 1) != 0) return -1;
      const char *key;
      size_t kn;
      json_t *val;
      int first = 1;
      /* const: the walk changes nothing (jansson's macro takes non-const). */
      json_object_keylen_foreach((json_t *)v, key, kn, val) {
        if (!first && db_put(b, ",", 1) != 0) return -1;
        first = 0;
        int ascii = 1, rc;
        for (size_t i = 0; i < kn && ascii; i++) ascii = (unsigned char)key[i] < 0x80;
        if (ascii) {
          rc = db_string(b, NULL, key, kn);
        } else {
          /* Printed by jansson as a string: its object keys go through
           * the same escaping and UTF-8 check. */
          json_t *k = json_stringn_nocheck(key, kn);
          rc = k ? db_jansson(b, k) : -1;
          json_decref(k);
        }
        if (rc != 0 || db_put(b, ":", 1) != 0 || db_value(b, val, depth + 1) != 0) return -1;
      }
      return db_put(b, "}", 1);
    }
    case JSON_ARRAY: {
      if (db_put(b, "[", 1) != 0) return -1;
      size_t n = json_array_size(v);
      for (size_t i = 0; i < n; i++) {
        if (i && db_put(b, ",", 1) != 0) return -1;
        if (db_value(b, json_array_get(v, i), depth + 1) != 0) return -1;
      }
      return db_put(b, "]", 1);
    }
    case JSON_STRING: return db_string(b, v, json_string_value(v), json_string_length(v));
    case JSON_INTEGER: return db_integer(b, json_integer_value(v));
    case JSON_REAL: return db_jansson(b, v);
    case JSON_TRUE: return db_put(b, "true", 4);
    case JSON_FALSE: return db_put(b, "false", 5);
    case JSON_NULL: return db_put(b, "null", 4);
  }
  return -1;
}

char *mcp_dump(const json_t *msg, size_t *len) {
  dumpbuf_t b = {malloc(256), 0, 256};
  if (!b.p) return NULL;
  if (db_value(&b, msg, 0) != 0) {
    free(b.p);
    return NULL;
  }
  b.p[b.len] = 0; /* db_reserve kept room for it */
  if (len) *len = b.len;
  return b.p;
}
