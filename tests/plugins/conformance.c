/* conformance: the fixture tools the official MCP conformance suite's
 * server scenarios call (npm @modelcontextprotocol/conformance; `make
 * test-mcp` serves this plugin with `apex mcp --http --bare-names`, so the
 * tools have the suite's names). What each returns is what the suite's
 * scenario descriptions ask for; content other than text comes as a result
 * {"content": [MCP content blocks]}, which `apex mcp` passes through.
 * Sampling and elicitation fixtures are absent: Apex offers neither (the
 * baseline, tests/mcp/expected-failures.yml, says so).
 *
 * Threads: handlers run on host workers; no plugin state. */
#include <stdint.h>
#include <string.h>

#include "apex/plugin.h"

/* A 1x1 red PNG and a tiny WAV header, base64. */
static const char k_png[] =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
static const char k_wav[] = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=";

static int set_content(apex_ctx_t *ctx, json_t *content) {
  if (!content) return apex_ctx_fail(ctx, APEX_E_NOMEM, "out of memory");
  apex_ctx_set_result(ctx, json_pack("{s:o}", "content", content));
  return APEX_OK;
}

static int simple_text(apex_ctx_t *ctx) {
  return set_content(ctx, json_pack("[{s:s, s:s}]", "type", "text", "text",
                                    "This is a simple text response for testing."));
}

static int image_content(apex_ctx_t *ctx) {
  return set_content(ctx, json_pack("[{s:s, s:s, s:s}]", "type", "image", "data", k_png,
                                    "mimeType", "image/png"));
}

static int audio_content(apex_ctx_t *ctx) {
  return set_content(ctx, json_pack("[{s:s, s:s, s:s}]", "type", "audio", "data", k_wav,
                                    "mimeType", "audio/wav"));
}

static int embedded_resource(apex_ctx_t *ctx) {
  return set_content(ctx, json_pack("[{s:s, s:{s:s, s:s, s:s}}]", "type", "resource", "resource",
                                    "uri", "test://embedded-resource", "mimeType", "text/plain",
                                    "text", "This is an embedded resource content."));
}

static int multiple_content(apex_ctx_t *ctx) {
  return set_content(
      ctx, json_pack("[{s:s, s:s}, {s:s, s:s, s:s}, {s:s, s:{s:s, s:s, s:s}}]", "type", "text",
                     "text", "Multiple content types test:", "type", "image", "data", k_png,
                     "mimeType", "image/png", "type", "resource", "resource", "uri",
                     "test://mixed-content-resource", "mimeType", "application/json", "text",
                     "{\"test\":\"data\",\"value\":123}"));
}

static int with_logging(apex_ctx_t *ctx) {
  static const char *const lines[] = {"Tool execution started", "Tool processing data",
                                      "Tool execution completed"};
  for (int i = 0; i < 3; i++) {
    apex_ctx_log(ctx, APEX_LOG_INFO, "%s", lines[i]);
    if (i < 2 && apex_ctx_sleep_ms(ctx, 50) == APEX_E_CANCELLED)
      return apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled");
  }
  return set_content(ctx, json_pack("[{s:s, s:s}]", "type", "text", "text",
                                    "Tool with logging executed successfully"));
}

static int error_handling(apex_ctx_t *ctx) {
  return apex_ctx_fail(ctx, APEX_E_EXECUTION, "This tool intentionally returns an error for testing");
}

static int with_progress(apex_ctx_t *ctx) {
  /* Steps further apart than Apex's coalescing window (50 ms at the
   * default 20 Hz), so each is delivered. */
  for (int pct = 0; pct <= 100; pct += 50) {
    apex_ctx_progress(ctx, pct, pct == 100 ? "done" : "working");
    if (pct < 100 && apex_ctx_sleep_ms(ctx, 120) == APEX_E_CANCELLED)
      return apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled");
  }
  return set_content(ctx, json_pack("[{s:s, s:s}]", "type", "text", "text",
                                    "Tool with progress executed successfully"));
}

static int reconnection(apex_ctx_t *ctx) {
  if (apex_ctx_sleep_ms(ctx, 200) == APEX_E_CANCELLED)
    return apex_ctx_fail(ctx, APEX_E_CANCELLED, "cancelled");
  return set_content(ctx, json_pack("[{s:s, s:s}]", "type", "text", "text",
                                    "Reconnection test completed successfully"));
}

static int json_schema_tool(apex_ctx_t *ctx) {
  apex_ctx_set_result(ctx, json_pack("{s:O}", "received", apex_ctx_params(ctx)));
  return APEX_OK;
}

static const char k_schema_2020[] =
    "{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",\"type\":\"object\","
    "\"$defs\":{\"address\":{\"type\":\"object\",\"properties\":{\"street\":{\"type\":\"string\"},"
    "\"city\":{\"type\":\"string\"}}}},\"properties\":{\"name\":{\"type\":\"string\"},"
    "\"address\":{\"$ref\":\"#/$defs/address\"}},\"additionalProperties\":false}";

static const char *action_schema(const char *action, const char *kind) {
  if (strcmp(action, "json_schema_2020_12_tool") == 0 && strcmp(kind, "input") == 0)
    return k_schema_2020;
  return NULL;
}

static const apex_param_spec_t k_schema_params[] = {
    {.name = "name", .type = APEX_PARAM_STRING},
    {.name = "address", .type = APEX_PARAM_OBJECT},
};

#define TOOL(n, d, h) {.name = n, .description = d, .handler = h}
static const apex_action_desc_t k_actions[] = {
    TOOL("test_simple_text", "Returns simple text content", simple_text),
    TOOL("test_image_content", "Returns image content", image_content),
    TOOL("test_audio_content", "Returns audio content", audio_content),
    TOOL("test_embedded_resource", "Returns an embedded resource", embedded_resource),
    TOOL("test_multiple_content_types", "Returns text, image and resource content",
         multiple_content),
    TOOL("test_tool_with_logging", "Sends three info log messages", with_logging),
    TOOL("test_error_handling", "Always fails", error_handling),
    TOOL("test_tool_with_progress", "Reports progress 0, 50, 100", with_progress),
    TOOL("test_reconnection", "Runs for a moment (SSE polling)", reconnection),
    {.name = "json_schema_2020_12_tool", .description = "Tool with JSON Schema 2020-12 features",
     .handler = json_schema_tool, .params = k_schema_params, .n_params = 2},
};

static const apex_plugin_desc_t k_plugin = {
    APEX_PLUGIN_DESC_INIT, .name = "conformance", .version = "1.0.0",
    .description = "the MCP conformance suite's fixture tools", .actions = k_actions,
    .n_actions = sizeof k_actions / sizeof k_actions[0], .action_schema = action_schema};
APEX_PLUGIN_DEFINE(k_plugin)
