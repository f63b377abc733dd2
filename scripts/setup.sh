#!/usr/bin/env bash
# Installs everything the app, its tests and its local run need, from scratch if necessary:
# a virtual environment with the pinned Python packages, with --checks checkov in a second
# one (for the Bicep checks), and Azurite through npm.
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
fi
if [ ! -x node_modules/.bin/azurite-table ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
