#!/usr/bin/env bash
# Test-time levers on the shipped checkpoints (docs/training.md, "Test-time levers"): each lever alone,
# on the first TASKS tasks of the seed-0 stream, one thread. Usage: models/eval/levers/run.sh [TASKS]
set -euo pipefail
TASKS=${1:-100}
OUT=models/eval/levers
export OMP_NUM_THREADS=1
run() {  # run NAME SETTING EXTRA-FLAGS...
  local model=$1 setting=$2; shift 2
  python -m engine.evaluate --checkpoint "models/$model/model" --pipeline raw --undo-rising-steps off \
    --tasks "$TASKS" --seed 0 "$@" --json "$OUT/$model-$setting.json" 2>/dev/null | tail -1
}
for shape in 20w1s-within 5w1s; do
  if [ "$shape" = 20w1s-within ]; then flags=(--ways 20 --shots 1 --within-alphabet); else flags=(--ways 5 --shots 1); fi
  for model in maml mc1 fomaml pretrain; do
    run "$model" "$shape-base" "${flags[@]}"
    run "$model" "$shape-protohead" "${flags[@]}" --head-init prototypes
    run "$model" "$shape-support2" "${flags[@]}" --support-augment 2
    run "$model" "$shape-query2" "${flags[@]}" --query-augment 2
  done
  run protonet "$shape-base" "${flags[@]}"
  run protonet "$shape-support2" "${flags[@]}" --support-augment 2
  run protonet "$shape-query2" "${flags[@]}" --query-augment 2
done
