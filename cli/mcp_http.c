#include "mcp.h"
int mcp_http_run(mcp_server_t *srv, const char *addr) {
  (void)srv;
  return cli_fail(0, APEX_E_INVALID, "--http %s: not built yet", addr);
}
