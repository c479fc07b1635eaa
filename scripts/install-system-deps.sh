#!/usr/bin/env bash
# System packages the tests use, from Debian's archive (no browser downloads):
#   chromium   — the browser test (tests/e2e/test_browser.py) drives it through Playwright
#   prometheus — ships promtool, which checks the /metrics exposition and the alert rules
# Idempotent: installs only what is missing, runs `apt-get update` only when something must
# be installed. Needs root (or password-less sudo) for that; otherwise it says what to run.
set -euo pipefail

PACKAGES=(chromium prometheus)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: not a Debian/Ubuntu system; install these yourself: ${missing[*]}" >&2
  echo "  (chromium: the browser test; promtool from prometheus: the /metrics test)" >&2
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "install-system-deps: missing system packages: ${missing[*]}" >&2
    echo "  run as root:  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    echo "  (chromium: the browser test; promtool from prometheus: the /metrics test; without them those tests cannot run)" >&2
    exit 0
  fi
fi

echo "install-system-deps: installing ${missing[*]} (apt-get)…"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-system-deps: done"
