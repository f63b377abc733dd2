#!/usr/bin/env bash
# Installs what the tests need and runs them against real Azurite and the emulators.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --checks
status=0
# Two workers, a test file each at a time (--dist loadfile keeps a file's fixtures in one process):
# the tests mostly wait on Azurite and the emulators, so two halve the run on two cores.
# PYTEST_WORKERS=0 runs everything in this process.
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
