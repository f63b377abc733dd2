#!/usr/bin/env bash
# Installs what the tests need and runs them against real Azurite and the emulators.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --checks
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
