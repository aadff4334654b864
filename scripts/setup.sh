#!/bin/sh
# Installs what building and testing Apex needs on Debian, and nothing that is
# already there: `apt-get update` runs only when a package is missing.
set -eu

PKGS="gcc make cmake pkg-config libuv1-dev libjansson-dev libcmocka-dev libssl-dev libglib2.0-dev python3
      libcurl4-openssl-dev libmicrohttpd-dev curl jq prometheus libsqlite3-dev libpq-dev
      postgresql"
# Node.js and npm (the MCP tests' tests/mcp/npm_setup.sh, tests/obs/check_otlp.sh)
# from Debian, unless both commands are there already: a Node.js from
# elsewhere bundles its own npm, which Debian's npm package conflicts with.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PKGS="$PKGS nodejs npm"
fi

missing=""
for p in $PKGS; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0

echo "setup: installing$missing" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "setup: need root (or sudo) to install:$missing" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Installing postgresql starts its default cluster through invoke-rc.d. In a
# container with no service manager (and no policy-rc.d of its own, which
# Docker's Debian images have) that start can fail and fail the install:
# the tests start their own server (tests/support/pg_fixture.c), so service
# starts are denied for the install (exit 101: "forbidden by policy",
# which invoke-rc.d reports as success), and the file removed after.
policy=""
case "$missing" in
  *postgresql*)
    if [ ! -e /usr/sbin/policy-rc.d ] && [ ! -d /run/systemd/system ]; then
      policy=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
      $SUDO chmod 755 "$policy"
      trap '$SUDO rm -f "$policy"' EXIT
    fi
    ;;
esac
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
