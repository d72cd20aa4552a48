#!/usr/bin/env bash
# The exact commands that produce the checkpoints in models/. Each run trains into runs/RUN (ignored by
# git: checkpoint, training state, learning curve) and resumes where it stopped:
#   bash models/train.sh protonet        # first call starts it, later calls continue it
# EXTRA passes further flags: EXTRA="--device cuda" trains on a GPU (the metadata records the hardware
# of each piece); EXTRA="--max-minutes 30" trains for 30 minutes, saves and stops (resumable).
# models/train_round_robin.sh shares one CPU between several runs this way.
# To ship a run (its best checkpoint, model.*, into models/ALGORITHM, the folder the app loads), then
# evaluate it and rewrite models/RESULTS.md:
#   .venv/bin/python -m engine.results --publish runs/protonet && .venv/bin/python -m engine.results
# A candidate is not published: `python -m engine.results` finds it in runs/ and puts it in the
# RESULTS.md section its configuration belongs to (keeping its summary in models/eval/RUN/).
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: models/train.sh ALGORITHM}  # or a candidate run's name (below)
# Candidates, not shipped: ALGORITHM-characters is ALGORITHM's configuration on the papers' split (random
# characters of all 50 alphabets: 1028 train, 172 validation, 423 test), to measure what our
# unseen-alphabet split costs (models/RESULTS.md's section "On the papers' split").
# ALGORITHM-background trains on all 30 background alphabets, the 5 validation alphabets too, as a final
# model is trained once validation has chosen its schedule (Snell et al. trained on train + validation); it
# keeps the last step, since validation can no longer select one. Test: the same unseen evaluation
# alphabets as the shipped run (models/RESULTS.md's section "On all 30 background alphabets").
# Every new run trains on the canonical image pipeline (the app's own preprocessing) with handwriting
# augmentation, engine.train's defaults; the shipped checkpoints predate both (their model.json says so:
# no "pipeline" field means the plain resize), so EXTRA="--pipeline raw --augment 0" reproduces them.
# ALGORITHM-canonical is ALGORITHM's configuration under those defaults, validated on 20-way 1-shot tasks
# (5-way 1-shot validation is above 98% for the best learners, too close to the ceiling to select by), a
# candidate to replace its shipped checkpoint (models/RESULTS.md's section "One image pipeline and
# augmentation").
config=$run
split=()
for scheme in characters background; do
  if [ "${run%-$scheme}" != "$run" ]; then config=${run%-$scheme}; split=(--split-scheme "$scheme"); fi
done
canonical=()
# ALGORITHM-canonical-background: that configuration on all 30 background alphabets, the run to ship once
# ALGORITHM-canonical has shown on the validation alphabets that it beats the shipped checkpoint.
if [ "${config%-canonical}" != "$config" ]; then config=${config%-canonical}; canonical=(--val-ways 20 --val-tasks 100); fi
# ALGORITHM-within...: half of the training episodes draw every class from one alphabet (the look-alike classes of
# the within-alphabet benchmark), e.g. metasgd-within-canonical-background against the shipped metasgd.
within=()
if [ "${config%-within}" != "$config" ]; then config=${config%-within}; within=(--within-alphabet 0.5); fi
# ALGORITHM-wide...: the backbone at 128 filters a layer instead of 64 (about 4x the convolutions' work), the
# wider-backbone lever, e.g. pretrain-wide-canonical-background against the shipped pretrain.
wide=()
if [ "${config%-wide}" != "$config" ]; then config=${config%-wide}; wide=(--channels 128); fi
# ALGORITHM-cosine...: the meta learning rate along half a cosine after 500 steps of warm-up, instead of the
# straight line from the start (the same end points), e.g. pretrain-cosine-canonical-background.
schedule=()
if [ "${config%-cosine}" != "$config" ]; then config=${config%-cosine}; schedule=(--meta-lr-schedule cosine --meta-lr-warmup 500); fi
algorithm=$config
python=${PYTHON:-.venv/bin/python}
# Validation: 200 fixed 5-way 1-shot tasks from the validation split (model selection only).
val=(--val-tasks 200)
protonet=(--ways 60 --shots 1 --queries 5 --meta-batch 1 --meta-steps 20000 --meta-lr-final 0.0001 --val-every 500)
# The paper's Omniglot schedule: 5 tasks a meta-step drawn with 10 shots, meta step size 1 -> 0, each of the
# 5 inner steps on a minibatch of 10 images (2 per class).
# The MAML family's 5-way 1-shot episodes, 16 tasks a meta-step; each adds its schedule and inner steps.
episodes=(--ways 5 --shots 1 --queries 5 --meta-batch 16 --inner-lr 0.4 --meta-lr-final 0.0001 --val-every 250 "${val[@]}")
reptile=(--ways 5 --shots 10 --queries 1 --meta-batch 5 --inner-steps 5 --inner-lr 0.4 --inner-shots 2)
case "$config" in
  # The paper's max-pooling Conv-4 (models/RESULTS.md's protonet note): adapting is one forward pass.
  protonet) args=("${protonet[@]}" --downsample maxpool "${val[@]}")
            # A background run gets half the shipped schedule: the validation curve is flat from 2500 episodes.
            [ "${run%-background}" != "$run" ] && args+=(--meta-steps 10000) ;;
  maml)     args=("${episodes[@]}" --meta-steps 20000 --inner-steps 2) ;;
  fomaml)   args=("${episodes[@]}" --meta-steps 10000 --inner-steps 3) ;;
  metasgd|mc1|mc2) args=("${episodes[@]}" --meta-steps 10000 --inner-steps 1) ;;
  # Candidates, not shipped: the same with 2 inner steps. From the zero head, the first step moves only the
  # head (the backbone's gradient passes through zero weights), so with 1 step every backbone learning rate or
  # curvature matrix gets no meta-gradient and stays at its start (models/RESULTS.md's notes).
  metasgd-2steps|mc2-2steps)
            algorithm=${config%-2steps}; args=("${episodes[@]}" --meta-steps 10000 --inner-steps 2) ;;
  # Candidate, not shipped: mc2's configuration on episodes of 5 to 20 ways (one number a meta-step), as the
  # app asks for up to 20 and the papers' 20-way figures come from 20-way training. It replaces models/mc2
  # only if it evaluates better.
  mc2-ways5to20)
            algorithm=mc2; args=("${episodes[@]}" --meta-steps 10000 --inner-steps 1 --ways 20 --min-train-ways 5) ;;
  reptile)  args=("${reptile[@]}" --meta-steps 10000 --val-every 250 "${val[@]}") ;;
  # Candidate, not shipped: the paper's 100k meta-steps (models/RESULTS.md's reptile note). It replaces
  # models/reptile only if it evaluates better.
  reptile-100k) algorithm=reptile; args=("${reptile[@]}" --meta-steps 100000 --val-every 1000 "${val[@]}") ;;
  # Candidates, not shipped: the paper's inner optimizer, Adam without momentum (50 steps at test time),
  # on our 10k schedule, at the paper's 1e-3 and at 1e-2 (our head starts at zero, and Adam moves it
  # by about the learning rate a step). One replaces models/reptile only if it evaluates better.
  reptile-adam|reptile-adam-0.01)
            algorithm=reptile; adam_lr=0.001; [ "$run" = reptile-adam-0.01 ] && adam_lr=0.01
            args=("${reptile[@]}" --inner-lr "$adam_lr" --inner-optimizer adam-no-momentum --test-inner-steps 50
                  --meta-steps 10000 --val-every 500 "${val[@]}") ;;
  # The paper's lambda 2, CG 5 and damping 1; 10 inner steps at 0.2 (the paper: 16 at 0.1) to fit a CPU,
  # solved with backtracking (the learner's default inner optimizer, armijo). Meta-lr 4x MAML's: the
  # conv weights start 4x larger (see engine/learners/imaml.py), so Adam's steps are 4x smaller relative to them.
  imaml)    args=(--ways 5 --shots 1 --queries 5 --meta-batch 8 --meta-steps 6000 --inner-steps 10 --inner-lr 0.2 --meta-lr 0.004
                  --lam 2.0 --cg-steps 5 --cg-damping 1.0 --meta-lr-final 0.0001 --val-every 250 "${val[@]}") ;;
  # Episodes of 2-20 ways (1 shot) with random label slots, so one checkpoint serves any N and K.
  blackbox) args=(--ways 20 --shots 1 --queries 5 --meta-batch 2 --meta-steps 20000 --meta-lr-final 0.0001
                  --val-every 1000 "${val[@]}") ;;
  # Ordinary classification over every training class (rotations included), batches of 128 images.
  pretrain) args=(--batch-size 128 --meta-steps 18000 --meta-lr-final 0.0001 --val-every 1000 "${val[@]}") ;;
  *) echo "no configuration for $run yet" >&2; exit 2 ;;
esac
out=${RUNS:-runs}/$run
resume=()
[ -f "$out/resume.safetensors" ] && resume=(--resume)  # the one file a run in progress commits
exec "$python" -m engine.train --algorithm "$algorithm" --out "$out" "${args[@]}" "${split[@]}" "${canonical[@]}" "${within[@]}" "${wide[@]}" "${schedule[@]}" "${resume[@]}" \
  --no-progress ${EXTRA:-}
