#!/bin/sh
# Installs what building and testing Apex needs on Debian, and nothing that is
# already there: `apt-get update` runs only when a package is missing.
set -eu

PKGS="gcc make cmake pkg-config libuv1-dev libjansson-dev libcmocka-dev libssl-dev libglib2.0-dev python3
      libcurl4-openssl-dev libmicrohttpd-dev curl libsqlite3-dev"

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
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
