#!/usr/bin/env bash
# Creates .venv and installs cljax with its test dependencies from pyproject.toml.
# Optional: Debian's Fashion-MNIST package (real data for the fashion_mnist source), when apt works.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = "0" ]; then
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "note: dataset-fashion-mnist not installed (fashion_mnist tests will be skipped)"
fi
