#!/usr/bin/env bash
# Installs the non-Python tools the test suite uses: `promtool` and `prometheus` (Debian package
# `prometheus`), and a browser for the worker's pages, `chromium` with `chromedriver` (Debian packages
# `chromium` and `chromium-driver`, driven by Selenium: tests/test_ui_browser.py). `make test` runs this
# first, so CI on a fresh Debian machine (as root) gets them.
#
# - Already installed: does nothing (fast, no network).
# - Missing, root and apt-get available: installs the packages without their recommends, and without
#   letting a package start a service (a temporary policy-rc.d denies service starts).
# - Missing otherwise (no root, not Debian): prints how to install and exits 0; the tests that need a
#   tool then skip with a message, everything else still runs.
set -euo pipefail

# command -> the Debian package that provides it
declare -A PACKAGE_OF=([promtool]=prometheus [prometheus]=prometheus [chromium]=chromium [chromedriver]=chromium-driver)

missing=()
for cmd in promtool prometheus chromium chromedriver; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    pkg="${PACKAGE_OF[$cmd]}"
    [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
  fi
done
if [[ ${#missing[@]} == 0 ]]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1 || [[ "$(id -u)" != 0 ]]; then
  echo "ensure-test-tools: missing Debian package(s) ${missing[*]} and cannot install them here (needs root and apt-get)." >&2
  echo "ensure-test-tools: install them (e.g. 'apt-get install ${missing[*]}') to run the Prometheus and browser tests; they are skipped." >&2
  exit 0
fi

echo "ensure-test-tools: installing Debian package(s) ${missing[*]} ..."
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  created_policy=1
fi
cleanup() { if [[ "$created_policy" == 1 ]]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for cmd in promtool chromium chromedriver; do
  command -v "$cmd" >/dev/null 2>&1 && "$cmd" --version 2>/dev/null | head -n 1 || true
done
