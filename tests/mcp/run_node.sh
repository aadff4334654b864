#!/bin/sh
# Runs one of the MCP tests' Node scripts against the built apex: installs
# the pinned packages first (npm_setup.sh, cached in CACHE), copies SCRIPT
# beside them (Node resolves imports from the script's own directory) and
# runs it with the pinned Node. Exit 77 (ctest: skipped) only when npm or
# its registry is unreachable.
#
# Usage: run_node.sh CACHE SCRIPT ARGS...
set -u
cache=$1
script=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
sh "$here/npm_setup.sh" "$cache"
rc=$?
[ $rc -eq 0 ] || exit $rc
cp "$script" "$cache/" || exit 1
exec "$cache/node_modules/.bin/node" "$cache/$(basename "$script")" "$@"
