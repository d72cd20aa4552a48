#!/usr/bin/env bash
# The exact commands that produce the checkpoints in models/. Each run resumes where it stopped:
#   bash models/train.sh protonet        # first call starts it, later calls continue it
# Append "--device cuda" (via EXTRA) to train on a GPU; the metadata records the hardware of each piece.
set -euo pipefail
cd "$(dirname "$0")/.."
algorithm=${1:?usage: models/train.sh ALGORITHM}
python=${PYTHON:-.venv/bin/python}
case "$algorithm" in
  protonet) args=(--ways 60 --shots 1 --queries 5 --meta-batch 1 --meta-steps 20000 --meta-lr-final 0.0001
                  --val-every 500 --val-tasks 200) ;;
  maml)     args=(--ways 5 --shots 1 --queries 5 --meta-batch 16 --meta-steps 20000 --inner-steps 2 --inner-lr 0.4
                  --meta-lr-final 0.0001 --val-every 250 --val-tasks 200) ;;
  *) echo "no configuration for $algorithm yet" >&2; exit 2 ;;
esac
resume=()
[ -f "models/$algorithm/resume.json" ] && resume=(--resume)
exec "$python" -m engine.train --algorithm "$algorithm" --out "models/$algorithm" "${args[@]}" "${resume[@]}" --no-progress ${EXTRA:-}
