#!/usr/bin/env bash
# Installs everything the app, its tests and its local run need, from scratch if necessary:
# a virtual environment with the pinned Python packages, with --checks checkov in a second
# one (for the Bicep checks) and Debian's Chromium (for the console's browser tests), and
# Azurite through npm.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "First run: installing the pinned Python packages into .venv and Azurite through npm (a few minutes)..." >&2
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
if [ "${1:-}" = "--checks" ]; then
  [ -x .venv-checkov/bin/python ] || "$PYTHON" -m venv .venv-checkov
  .venv-checkov/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
  if [ ! -x /usr/bin/chromium ]; then
    # Debian's Chromium: the browser tests drive it (Playwright with executable_path), nothing downloads one.
    echo "Installing Debian's chromium for the console's browser tests..." >&2
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  fi
fi
if [ ! -x node_modules/.bin/azurite-table ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
