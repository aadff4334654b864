#!/bin/sh
# JSON Lines logs (APEX_LOG_FORMAT=json) from `apex run` parse line by line
# with jq, and every record about the task carries the trace id of the
# traceparent the run joined (and its task id, plugin and action).
#
# Usage: check_logs_jq.sh APEX_CLI TEST_PLUGIN_DIR
set -eu
apex=$1
plugins=$2
command -v jq >/dev/null || { echo "check_logs_jq: jq is missing (scripts/setup.sh installs it)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trace=4bf92f3577b34da6a3ce929d0e0e4736
APEX_LOG=debug APEX_LOG_FORMAT=json "$apex" run trace_kit.flaky --plugin-path "$plugins" \
  --param hang=false --traceparent "00-$trace-00f067aa0ba902b7-01" --json \
  >"$tmp/out.jsonl" 2>"$tmp/log.jsonl"
n=0
task=0
while IFS= read -r line; do
  n=$((n + 1))
  # each line alone is one JSON object with the fields every record has
  printf '%s\n' "$line" | jq -e 'type == "object" and (.time | type == "string") and
      (.level | type == "string") and (.msg | type == "string")' >/dev/null || {
    echo "check_logs_jq: line $n is not a log record: $line" >&2
    exit 1
  }
  if printf '%s\n' "$line" | jq -e 'has("task_id")' >/dev/null; then
    task=$((task + 1))
    printf '%s\n' "$line" | jq -e --arg t "$trace" '.trace_id == $t and (.span_id | test("^[0-9a-f]{16}$"))
        and .plugin == "trace_kit" and .action == "flaky" and .task_id == 1' >/dev/null || {
      echo "check_logs_jq: line $n lacks the task's fields or trace id: $line" >&2
      exit 1
    }
  fi
done <"$tmp/log.jsonl"
# three attempts' "attempt N starts" lines and the outcome at least
if [ "$task" -lt 4 ]; then
  echo "check_logs_jq: only $task of $n records are about the task:" >&2
  cat "$tmp/log.jsonl" >&2
  exit 1
fi
echo "check_logs_jq: $n JSON lines parsed, $task about the task with its trace id"
