#!/usr/bin/env bash
# Installs Debian's Chromium for the report test (pytest -m browser); run as root on Debian/Ubuntu.
# The test is skipped where `chromium` is not on PATH.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  chromium --version
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium fonts-dejavu-core
chromium --version
