#!/usr/bin/env bash
# Quality of the embedded prior on the NEU validation split (the model card's figures).
# Samples are generated from training-pool images (image-oriented, the product's default strength, shipped tokens) and
# compared with the held-out validation images; the pool itself is the real-vs-real reference.
#   bash bench/evaluate_prior.sh [NEU_DIR] [WORK_DIR] [PER_CLASS]
# STRENGTH=0.6 and ADAPTER=<run folder> (default: the shipped tokens) change what is measured; GENERATE_ARGS
# passes more `generate` options (e.g. "--detail-restore 1" or "--no-vary"). The realism gate and the capture
# variation are off here: the model's raw output is what is measured.
set -euo pipefail
neu=${1:-../shared/data/neu}
work=${2:-/tmp/studio-eval}
per_class=${3:-40}
strength=${STRENGTH:-$(python -c "from engine.config import GenerationConfig; print(GenerationConfig.strength)")}
python launch.py evaluate neu-split --data "$neu" --out "$work/neu-split"
for class_dir in "$work"/neu-split/pool/*/; do
  name=$(basename "$class_dir")
  python launch.py generate --token "$name" --init "$class_dir" --num "$per_class" \
    --out "$work/generated-$strength/$name" --strength "$strength" --seed 0 \
    --realism-threshold off --capture-variation 0 ${ADAPTER:+--adapter "$ADAPTER"} ${GENERATE_ARGS:-}
done
python launch.py evaluate fidelity --generated "$work/generated-$strength" --real "$work/neu-split/val" \
  --reference "$work/neu-split/pool"
python launch.py evaluate two-sample --generated "$work/generated-$strength" --real "$work/neu-split/val"
