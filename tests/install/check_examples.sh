#!/bin/sh
# What a newcomer does with an installed Apex and nothing else: installs the
# build into a fresh prefix (as `make install PREFIX=DIR` does), copies the
# installed examples (PREFIX/share/doc/apex/examples) to a directory of
# their own, builds them with their Makefile and pkg-config, and runs the
# built host against the built plugin and the installed `apex` against the
# built deferred plugin. Then compiles the host and the plugin the installed
# README shows, exactly as written, and runs them. Also checks that the
# installed docs are all there, that their links resolve inside the
# installed tree, and that the guide points at no source file.
# Usage: check_examples.sh BUILD_DIR CC
set -eu
build=$1
cc=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# Nothing from the build tree or the caller's setup may help.
unset APEX_PLUGIN_PATH LD_LIBRARY_PATH PKG_CONFIG_PATH || true
export APEX_LOG=warn

prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
doc="$prefix/share/doc/apex"
for f in README.md plugin-developer-guide.md architecture.md examples/Makefile \
         examples/hello_plugin.c examples/host_example.c examples/deferred_plugin.c \
         examples/children_plugin.c; do
  [ -f "$doc/$f" ] || fail "not installed: share/doc/apex/$f"
done

# Every relative link of the installed docs names an installed file.
for md in "$doc"/*.md; do
  for target in $(grep -o '](\([^)#:]*\))' "$md" | sed 's/^](//; s/)$//'); do
    [ -e "$doc/$target" ] || fail "$(basename "$md"): link to $target, not installed"
  done
done
# The guide sends a plugin author to installed files, not to Apex's sources.
if grep -n 'src/' "$doc/plugin-developer-guide.md"; then
  fail "plugin-developer-guide.md names source files (above)"
fi

pcdir=$(dirname "$(find "$prefix" -name apex.pc | head -1)")
[ -f "$pcdir/apex.pc" ] || fail "no apex.pc under the prefix"
export PKG_CONFIG_PATH="$pcdir"

# The installed examples, built where a newcomer would: a copy of their own.
cp -R "$doc/examples" "$work/examples"
make -C "$work/examples" CC="$cc" CFLAGS="-std=c11 -Wall -Wextra -Werror -O2" \
  >"$work/make.log" 2>&1 || { cat "$work/make.log"; fail "make in the installed examples"; }
cd "$work/examples"
ldd ./host_example | grep -q "libapex.so.* => $prefix/" ||
  { ldd ./host_example; fail "host_example does not use the installed libapex"; }
out=$(./host_example ./hello.so) || { echo "$out"; fail "host_example ./hello.so"; }
echo "$out" | grep -qx 'result: {"greeting":"hello, apex","times":3}' ||
  { echo "$out"; fail "host_example: no result line"; }

out=$(make -s run 2>&1) || { echo "$out"; fail "make run"; }
echo "$out" | grep -qx '{"event":"result","task":1,"state":"succeeded","result":{"steps":3}}' ||
  { echo "$out"; fail "make run: deferred.countdown did not succeed with 3 steps"; }
echo "$out" | grep -qx '{"event":"result","task":1,"state":"succeeded","result":{"sum":55,"parts":3,"failed":0}}' ||
  { echo "$out"; fail "make run: children.sum did not sum 1..10 in 3 child tasks"; }

# The README's host and plugin, compiled as they stand.
mkdir "$work/readme"
awk -v dir="$work/readme" '
  /^<!-- file: [^ ]+ -->$/ { name = $3; next }
  name != "" && /^```c$/    { file = dir "/" name; next }
  file != "" && /^```$/     { close(file); file = ""; name = ""; next }
  file != ""                { print > file }
' "$doc/README.md"
[ -f "$work/readme/host.c" ] || fail "README: no host.c snippet"
[ -f "$work/readme/hello_plugin.c" ] || fail "README: no hello_plugin.c snippet"
cd "$work/readme"
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Wextra -Werror -shared -fPIC -o hello.so hello_plugin.c \
  $(pkg-config --cflags apex) $(pkg-config --libs jansson) || fail "README plugin does not compile"
# shellcheck disable=SC2046
"$cc" -std=c11 -Wall -Wextra -Werror -o host host.c $(pkg-config --cflags --libs apex) \
  -Wl,-rpath,"$(pkg-config --variable=libdir apex)" || fail "README host does not compile"
out=$(./host ./hello.so) || { echo "$out"; fail "README host on README plugin"; }
echo "$out" | grep -qx 'succeeded: {"greeting":"hello, apex","times":3}' ||
  { echo "$out"; fail "README host: no succeeded line"; }

echo "installed examples and README snippets build and run from the installed tree"
echo "4 passed, 0 failed"
