#!/usr/bin/env bash
# Share one machine between several trainings (models/train.sh's runs, in runs/RUN): each gets MINUTES of
# training in turn, saves its state and stops; the next round resumes it. Finished runs are skipped.
#   OMP_NUM_THREADS=1 bash models/train_round_robin.sh 25 fomaml metasgd mc2
set -uo pipefail
cd "$(dirname "$0")/.."
minutes=${1:?usage: models/train_round_robin.sh MINUTES RUN...}
shift
runs=${RUNS:-runs}
while true; do
  trained=0
  for algorithm in "$@"; do
    if [ -f "$runs/$algorithm/resume.json" ] && python3 - "$runs/$algorithm/resume.json" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))
sys.exit(0 if state["step"] >= state["train"]["meta_steps"] else 1)
PY
    then continue; fi
    trained=1
    echo "== $(date -u +%H:%M) $algorithm for $minutes min"
    EXTRA="--max-minutes $minutes ${EXTRA:-}" bash models/train.sh "$algorithm" || echo "!! $algorithm failed"
  done
  [ "$trained" = 1 ] || break
done
