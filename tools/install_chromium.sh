#!/usr/bin/env bash
# make test: the browser test drives Chromium headless. Installs Debian's package when this user may (root, or
# sudo without a password); otherwise one line naming the command, and a non-zero exit before any test runs.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  command -v "$name" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "make: the browser test needs Chromium: install it first (sudo apt-get install chromium), then run make test again" >&2
  exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "make: the browser test needs Chromium: install it with this system's package manager, then run make test again" >&2
  exit 2
fi
echo "make: installing Chromium for the browser test (apt-get install chromium)"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium >/dev/null
