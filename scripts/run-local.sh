#!/usr/bin/env bash
# Runs the app locally on embedded defaults: Azurite, the Graph and managed-identity emulators,
# and the HTTP API on http://127.0.0.1:7071/api, and shows a first sync. Ctrl+C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m emulators.local "$@"
