#!/usr/bin/env bash
# The CPU recipe for a prior that generates, trained over as many sittings as it takes: an autoencoder with the
# perceptual term from the first step (it meets issue 10's round-trip bar on the shipped 8x grid), then a fresh UNet
# and text encoder on appearance captions, in legs of LEG_STEPS steps at batch 32 (80 k images a leg). Each leg is a
# finished prior folder (WORK/legN) that the next one continues with `--init-model`, so every leg can be measured
# (bench/evaluate_prior.sh, bench.fewshot_yardstick with --model) and a stopped leg resumes from its own checkpoints:
# run the same command again, in a later session too (keep WORK outside /tmp). The shipped prior is this recipe's
# leg 3: if WORK is lost, `mkdir -p WORK && cp -r engine/weights/steel-prior WORK/leg3` and leg 4 continues it. On the
# 2-core CPU a leg takes about an hour at about 22 images/s on two threads.
#   bash bench/cpu_prior.sh NEU_DIR WORK_DIR [LEGS]
# THREADS sets torch's threads (default 2); LEG_STEPS the steps of a leg (default 2500); PRETRAIN_ARGS passes more
# `pretrain` options to every leg (a dry run: PRETRAIN_ARGS="--size tiny --autoencoder-steps 2" LEG_STEPS=2).
set -euo pipefail
neu=$1
work=$2
legs=${3:-9}
threads=${THREADS:-2}
leg_steps=${LEG_STEPS:-2500}
# A restart of the learning-rate schedule per leg (warm-up, cosine to 10 %), lower as the prior settles.
rates=(3e-4 2e-4 2e-4 1.5e-4 1.5e-4 1e-4 1e-4 1e-4 1e-4)
# shellcheck disable=SC2206  # PRETRAIN_ARGS is a list of options, split on spaces
extra=(${PRETRAIN_ARGS:-})
# Go on after the newest finished leg (a copy of the shipped prior put in as WORK/leg3 continues it as leg 4).
previous=""
first=1
for ((leg = legs; leg >= 1; leg--)); do
  if [[ -f "$work/leg$leg/model_index.json" ]]; then
    previous="$work/leg$leg"
    first=$((leg + 1))
    break
  fi
done
for ((leg = first; leg <= legs; leg++)); do
  out="$work/leg$leg"
  index=$((leg <= ${#rates[@]} ? leg : ${#rates[@]}))
  rate=${rates[index - 1]}
  # The first leg trains the autoencoder too; every later one continues the previous leg's diffusion stage.
  if [[ -z "$previous" ]]; then
    start=(--autoencoder-perceptual-weight 1 --autoencoder-steps 2000)
  else
    start=(--init-model "$previous" --stages diffusion)
  fi
  echo "leg $leg: $leg_steps steps at learning rate $rate ($(date -u +%H:%M:%S))"
  python launch.py pretrain --data "$neu" --out "$out" "${start[@]}" --captions appearance --vflip \
    --steps "$leg_steps" --batch-size 32 --learning-rate "$rate" --threads "$threads" "${extra[@]}"
  previous=$out
done
