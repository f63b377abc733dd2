#!/usr/bin/env bash
# Runs every benchmark (installs what it needs: the app's and the Graph SDK's packages in
# throwaway virtual environments under bench/.work), prints a table and rewrites bench/RESULTS.md.
# Takes a few minutes. `./scripts/bench.sh --smoke` runs tiny sizes without the SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m bench.run "$@"
