#!/bin/sh
# Runs the official MCP conformance suite (npm @modelcontextprotocol/
# conformance, pinned in npm_setup.sh) against `apex mcp --http` on a free
# loopback port, serving the conformance test plugin's fixture tools under
# the suite's names. Every server scenario of the suite ("--suite all")
# runs; expected-failures.yml lists the out-of-scope ones.
#
# Usage: conformance.sh APEX PLUGIN_DIR CACHE
# Exit: the suite's (0: only expected failures); 77 when npm is
# unreachable (ctest: skipped).
set -u
apex=$1
plugins=$2
cache=$3
here=$(cd "$(dirname "$0")" && pwd)
sh "$here/npm_setup.sh" "$cache"
rc=$?
[ $rc -eq 0 ] || exit $rc
log=$(mktemp)
"$apex" mcp --http 127.0.0.1:0 --plugin-path "$plugins" --plugin conformance --bare-names \
  2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
port=
i=0
while [ $i -lt 100 ] && [ -z "$port" ]; do
  port=$(sed -n 's|^apex mcp: listening on http://127.0.0.1:\([0-9]*\)/mcp$|\1|p' "$log")
  [ -n "$port" ] || sleep 0.1
  i=$((i + 1))
done
if [ -z "$port" ]; then
  echo "conformance.sh: apex mcp did not start:" >&2
  cat "$log" >&2
  exit 1
fi
PATH="$cache/node_modules/.bin:$PATH" "$cache/node_modules/.bin/node" \
  "$cache/node_modules/@modelcontextprotocol/conformance/dist/index.js" server \
  --url "http://127.0.0.1:$port/mcp" --suite all \
  --expected-failures "$here/expected-failures.yml"
rc=$?
if ! kill -0 $pid 2>/dev/null; then
  echo "conformance.sh: apex mcp died:" >&2
  cat "$log" >&2
  exit 1
fi
# SIGTERM ends it cleanly: exit 0, or the sanitizers' report (leaks, races)
# made it fail.
kill -TERM $pid
wait $pid
st=$?
trap 'rm -f "$log"' EXIT
if [ $st -ne 0 ]; then
  echo "conformance.sh: apex mcp exited $st on SIGTERM:" >&2
  cat "$log" >&2
  exit 1
fi
exit $rc
