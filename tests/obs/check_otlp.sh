#!/bin/sh
# The spans of a three-attempt task (two transient failures, then a
# start-to-close timeout; `apex run --trace --traceparent`) decode with the
# OpenTelemetry protobuf definitions (tests/obs/decode_otlp.js), with the
# incoming traceparent's trace id and the right parents.
#
# Usage: check_otlp.sh APEX_CLI TEST_PLUGIN_DIR CACHE_DIR
# The decoder (npm: @opentelemetry/otlp-transformer 0.57.2, the last release
# that ships the protobufjs code generated from opentelemetry-proto) is
# installed once into CACHE_DIR (under the build dir). Exit 77 (skipped)
# only when it is not there and the npm registry cannot be reached.
set -eu
apex=$1
plugins=$2
cache=$3
here=$(cd "$(dirname "$0")" && pwd)
gen="$cache/node_modules/@opentelemetry/otlp-transformer/build/src/generated/root.js"

command -v node >/dev/null || { echo "check_otlp: node is missing (scripts/setup.sh installs nodejs)" >&2; exit 1; }
if [ ! -f "$gen" ]; then
  command -v npm >/dev/null || { echo "check_otlp: npm is missing (scripts/setup.sh installs npm)" >&2; exit 1; }
  mkdir -p "$cache"
  # its own package.json, so npm installs here and not into a project above
  [ -f "$cache/package.json" ] || echo '{"private": true}' >"$cache/package.json"
  if ! (cd "$cache" && npm install --no-audit --no-fund --no-save --loglevel=error \
        @opentelemetry/otlp-transformer@0.57.2 >"$cache/npm.log" 2>&1); then
    if ! timeout 30 npm ping >/dev/null 2>&1; then
      echo "check_otlp: SKIP: the npm registry is unreachable and the decoder is not cached" >&2
      exit 77
    fi
    cat "$cache/npm.log" >&2
    exit 1
  fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trace=4bf92f3577b34da6a3ce929d0e0e4736
parent=00f067aa0ba902b7
rc=0
"$apex" run trace_kit.flaky --plugin-path "$plugins" --attempt-timeout 0.3 \
  --trace "$tmp/spans.jsonl" --traceparent "00-$trace-$parent-01" --json >"$tmp/out.jsonl" || rc=$?
if [ "$rc" -ne 124 ] || ! grep -q '"state":"timed_out"' "$tmp/out.jsonl"; then
  echo "check_otlp: apex run exited $rc; want 124 (timed out):" >&2
  cat "$tmp/out.jsonl" >&2
  exit 1
fi
node "$here/decode_otlp.js" "$cache" "$tmp/spans.jsonl" "$trace" "$parent"
