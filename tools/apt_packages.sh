#!/usr/bin/env bash
# Makes sure Debian packages are installed:  tools/apt_packages.sh PKG...
# As root with apt-get: installs the missing ones.  Otherwise: names them and
# fails, so the caller can say what to do.
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian packages: ${missing[*]}..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "Missing Debian packages: ${missing[*]}" >&2
  echo "Install them: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
