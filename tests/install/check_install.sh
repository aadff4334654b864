#!/bin/sh
# Installs the build tree into a fresh prefix (with DESTDIR, as packagers
# do), then checks what a user of the installed Apex sees: the installed CLI
# lists the installed plugins with no flags, and a host program built with
# `pkg-config --cflags --libs apex` runs an action.
# Usage: check_install.sh BUILD_DIR CC
set -eu
build=$1
cc=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=/opt/apex-check

DESTDIR="$work/root" cmake --install "$build" --prefix "$prefix" >/dev/null
root="$work/root$prefix"

out=$("$root/bin/apex" plugins)
echo "$out" | grep -q '^example_async ' || { echo "installed apex plugins: example_async missing:"; echo "$out"; exit 1; }
echo "$out" | grep -q '^files ' || { echo "installed apex plugins: files missing:"; echo "$out"; exit 1; }

cat > "$work/host.c" <<'C'
#include <apex/apex.h>
#include <stdio.h>
int main(void) {
  apex_manager_t *m;
  apex_error_t *err = NULL;
  if (apex_manager_new(NULL, &m) != APEX_OK) return 1;
  if (apex_manager_load_named(m, "example_async", &err) != APEX_OK) {
    fprintf(stderr, "load: %s\n", apex_error_message(err));
    return 1;
  }
  json_t *params = json_pack("{s:i, s:i}", "steps", 3, "step_ms", 1), *result = NULL;
  int rc = apex_manager_execute(m, "example_async", "long_task", params, NULL, &result, &err);
  json_decref(params);
  if (rc != APEX_OK) {
    fprintf(stderr, "execute: %s\n", apex_error_message(err));
    return 1;
  }
  printf("steps=%lld\n", json_integer_value(json_object_get(result, "steps")));
  json_decref(result);
  return apex_manager_destroy(m, 1000) == APEX_OK ? 0 : 1;
}
C
export PKG_CONFIG_PATH="$root/lib/pkgconfig"
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Werror -o "$work/host" "$work/host.c" $(pkg-config --cflags --libs apex)
got=$(LD_LIBRARY_PATH="$root/lib" "$work/host")
[ "$got" = "steps=3" ] || { echo "host built with pkg-config printed '$got', want steps=3"; exit 1; }
echo "installed CLI and a pkg-config host work"
echo "2 passed, 0 failed"
