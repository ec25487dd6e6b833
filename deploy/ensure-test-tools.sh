#!/usr/bin/env bash
# Installs the non-Python tools the test suite uses: `promtool` and `prometheus` (Debian package
# `prometheus`). `make test` runs this first, so CI on a fresh Debian machine (as root) gets them.
#
# - Already installed: does nothing (fast, no network).
# - Missing, root and apt-get available: installs the package without its recommends, and without
#   letting the package start a Prometheus service (a temporary policy-rc.d denies service starts).
# - Missing otherwise (no root, not Debian): prints how to install and exits 0; the Prometheus tests
#   then skip with a message, everything else still runs.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1 || [[ "$(id -u)" != 0 ]]; then
  echo "ensure-test-tools: promtool/prometheus not found and cannot be installed here (needs root and apt-get)." >&2
  echo "ensure-test-tools: install Prometheus 2.x (e.g. 'apt-get install prometheus') to run the Prometheus tests; they are skipped." >&2
  exit 0
fi

echo "ensure-test-tools: installing Debian package 'prometheus' (promtool + prometheus) ..."
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
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
promtool --version | head -n 1
