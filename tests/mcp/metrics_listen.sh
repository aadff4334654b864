#!/bin/sh
# apex mcp --metrics-listen: the server's own manager's metrics, live over
# HTTP while it serves. A tool call over stdio must show up in the scrape as
# one succeeded task of that action; a bad address is refused at start.
#   metrics_listen.sh APEX PLUGIN_DIR
set -eu
APEX=$1
PLUGINS=$2
dir=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
fail() {
  echo "metrics_listen: $*" >&2
  echo "--- stderr:" >&2
  cat "$dir/err" >&2 || true
  exit 1
}

# A bad address: exit 2, the option named.
if "$APEX" mcp --plugin-path "$PLUGINS" --metrics-listen nonsense </dev/null 2>"$dir/bad"; then
  fail "a bad --metrics-listen was accepted"
else
  rc=$?
  [ "$rc" -eq 2 ] || fail "bad --metrics-listen: exit $rc, not 2"
  grep -q -- "--metrics-listen" "$dir/bad" || fail "bad --metrics-listen: the error does not name it"
fi

mkfifo "$dir/in"
"$APEX" mcp --plugin-path "$PLUGINS" --plugin mcp_kit --metrics-listen 127.0.0.1:0 \
  <"$dir/in" >"$dir/out" 2>"$dir/err" &
pid=$!
exec 3>"$dir/in" # stdin stays open until we close it
printf '%s\n' \
  '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}' \
  '{"jsonrpc":"2.0","method":"notifications/initialized"}' \
  '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"mcp_kit.noop","arguments":{}}}' >&3

i=0
until grep -q '"id":2' "$dir/out" 2>/dev/null; do
  i=$((i + 1))
  [ "$i" -le 300 ] || fail "no answer to the tool call in 30 s"
  sleep 0.1
done
url=$(grep -o 'http://[^ ]*/metrics' "$dir/err" | head -1)
[ -n "$url" ] || fail "no metrics URL on stderr"
# The task's DONE may trail its answer by a moment: await the count.
i=0
until curl -fsS "$url" >"$dir/scrape" 2>/dev/null &&
  grep -q '^apex_tasks_total{plugin="mcp_kit",action="noop",outcome="succeeded"} 1$' "$dir/scrape"; do
  i=$((i + 1))
  [ "$i" -le 100 ] || { cat "$dir/scrape" >&2 || true; fail "the scrape never counted the call"; }
  sleep 0.1
done
grep -q '^# TYPE apex_tasks_total counter$' "$dir/scrape" || fail "no TYPE line in the scrape"
exec 3>&-
wait "$pid" || fail "apex mcp exited $?"
pid=
echo "metrics_listen: ok"
