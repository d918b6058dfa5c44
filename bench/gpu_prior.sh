#!/usr/bin/env bash
# The GPU recipe end to end (one H100/H200, about 10 minutes): pretrain a prior with `--preset gpu`, train its six
# pool tokens as the shipped ones were, then measure it as the model card does: the autoencoder's round trip and
# pure-noise samples (strength 1.0) per class. Copy WORK/prior and WORK/tokens beside the shipped ones to compare
# them on the CPU (bench/evaluate_prior.sh, bench.fewshot_yardstick with --model and --adapter).
#   bash bench/gpu_prior.sh NEU_DIR WORK_DIR [more pretrain options]
# TOKEN_ARGS passes more `finetune` options (e.g. "--max-minutes 1", or "--steps 2" for a dry run on the CPU);
# PER_CLASS samples a class (default 24).
set -euo pipefail
neu=$1
work=$2
shift 2
per_class=${PER_CLASS:-24}
python launch.py pretrain --data "$neu" --out "$work/prior" --preset gpu "$@"
python launch.py evaluate neu-split --data "$neu" --out "$work/neu-split"
# shellcheck disable=SC2086
python launch.py finetune --dataset "$work/neu-split/pool" --out "$work/tokens" --model "$work/prior" \
  --preset cpu-thorough --steps 800 --lora-rank 16 --lora-learning-rate 3e-3 --caption-dropout 0.1 ${TOKEN_ARGS:-}
python -m bench.autoencoder_round_trip --neu "$neu" --seeds 1 --model "$work/prior" | tee "$work/round-trip.txt"
for class_dir in "$work"/neu-split/pool/*/; do
  name=$(basename "$class_dir")
  python launch.py generate --token "$name" --init "$class_dir" --num "$per_class" --out "$work/pure-noise/$name" \
    --strength 1.0 --seed 0 --realism-threshold off --capture-variation 0 --model "$work/prior" \
    --adapter "$work/tokens"
done
python launch.py evaluate fidelity --generated "$work/pure-noise" --real "$work/neu-split/val" \
  --reference "$work/neu-split/pool" --json > "$work/pure-noise.json"
