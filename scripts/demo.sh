#!/usr/bin/env bash
# Installs cljax into .venv and runs the demo: finetune vs ER vs offline on 5,000 real MNIST
# digits, class-incremental (5 tasks of 2 classes). Results in ${WORKDIR:-workdir/demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKDIR="${WORKDIR:-workdir/demo}"
if [ -d "$WORKDIR/checkpoints" ]; then
  echo "$WORKDIR already holds a run: resuming it (delete the folder to start over)"
  exec .venv/bin/python experiments/run.py --workdir="$WORKDIR" --resume "$@"
fi
exec .venv/bin/python experiments/run.py --workdir="$WORKDIR" "$@"
