#!/usr/bin/env bash
# Installs cljax into .venv and runs the whole test suite (2 workers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=15 tests "$@"
