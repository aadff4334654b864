#!/bin/sh
# Starts `apex mcp --http` on a free loopback port (the test plugins, 64
# workers, sessions ended after 5 s idle) and runs a Node script against it
# with the pinned Node: sdk_http.mjs (the SDK client, the default) or
# http_answers.mjs (how a POST is answered, JSON or SSE and when; it leaves
# calls waiting and a stream open). Either way the server must then end
# cleanly on SIGTERM.
# Usage: http.sh APEX PLUGIN_DIR CACHE [SCRIPT]. Exit: the script's; 77 without npm.
set -u
apex=$1
plugins=$2
cache=$3
script=${4:-sdk_http.mjs}
here=$(cd "$(dirname "$0")" && pwd)
sh "$here/npm_setup.sh" "$cache"
rc=$?
[ $rc -eq 0 ] || exit $rc
log=$(mktemp)
"$apex" mcp --http 127.0.0.1:0 --plugin-path "$plugins" --plugin mcp_kit --workers 64 \
  --session-timeout 5 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
port=
i=0
while [ $i -lt 100 ] && [ -z "$port" ]; do
  port=$(sed -n 's|^apex mcp: listening on http://127.0.0.1:\([0-9]*\)/mcp$|\1|p' "$log")
  [ -n "$port" ] || sleep 0.1
  i=$((i + 1))
done
[ -n "$port" ] || { echo "http.sh: apex mcp did not start:" >&2; cat "$log" >&2; exit 1; }
cp "$here/$script" "$cache/" || exit 1
"$cache/node_modules/.bin/node" "$cache/$script" "http://127.0.0.1:$port/mcp" "${TMPDIR:-/tmp}"
rc=$?
if ! kill -0 $pid 2>/dev/null; then
  echo "http.sh: apex mcp died:" >&2
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
  echo "http.sh: apex mcp exited $st on SIGTERM:" >&2
  cat "$log" >&2
  exit 1
fi
exit $rc
