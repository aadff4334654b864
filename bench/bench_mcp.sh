#!/bin/sh
# W16 (bench/README.md): runs bench_mcp.mjs for one peer with the pinned
# Node and MCP SDK (tests/mcp/npm_setup.sh, cached in BUILD/tests/mcp-npm).
# Usage: bench_mcp.sh BUILD W16 SIZE PEER (apex, mcp_sdk, or null: a server
# that answers with no work, the clients' own floor). Exit 3 ("not implemented", the
# protocol's skip) when npm is unreachable.
set -u
build=$1
size=$3
peer=$4
here=$(cd "$(dirname "$0")" && pwd)
cache=$build/tests/mcp-npm
sh "$here/../tests/mcp/npm_setup.sh" "$cache"
rc=$?
if [ $rc -eq 77 ]; then
  echo "bench: W16 not implemented by $peer here: npm is unreachable" >&2
  exit 3
fi
[ $rc -eq 0 ] || exit 1
cp "$here/bench_mcp.mjs" "$here/mcp_sdk_server.mjs" "$cache/" || exit 1
node=$cache/node_modules/.bin/node
"$node" "$cache/bench_mcp.mjs" "$peer" "$size" "$build" || exit 1
# The same stdio round trip with a raw newline-JSON client (mcp_raw_client.c),
# whose own cost is a few microseconds: the server's latency shows.
raw=$build/bench/mcp_raw_client
[ -x "$raw" ] || exit 0
if [ "$peer" = apex ]; then
  exec "$raw" apex "$size" mcp_kit.noop -- "$build/bin/apex" mcp \
    --plugin-path "$build/tests/plugins" --plugin mcp_kit --workers 2
elif [ "$peer" = null ]; then
  # The server that does no work (mcp_raw_client --serve): the clients' floor.
  exec "$raw" null "$size" noop -- "$raw" --serve
else
  exec "$raw" mcp_sdk "$size" noop -- "$node" "$cache/mcp_sdk_server.mjs" stdio
fi
