"""The studio's yardstick: K real images per class plus its samples vs more real images.

For each seed: draw K real images per class from the pool, fine-tune tokens + LoRA on just those
(CPU preset), generate N samples per class from those same K images (at the tuned strength and at
1.0, the paper's pure-noise ablation), then run the recognition protocol on the validation split:
real only, + classic augmentation, + ours, ours + classic. A K=20 real-only run is the target.

    python -m bench.fewshot_yardstick --pool /tmp/neu-split/pool --val /tmp/neu-split/val --work /tmp/fewshot
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from engine.batch import finetune_folder, generate_to_folder
from engine.data import list_images
from engine.models import load_pipeline
from engine.quiet import quiet_libraries
from engine.recognition import recognition


def draw_shots(pool: Path, k: int, seed: int, out: Path) -> Path:
    rng = random.Random(seed)
    for class_dir in sorted(p for p in pool.iterdir() if p.is_dir()):
        target = out / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for path in rng.sample(list_images(class_dir), k):
            link = target / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-pure-noise", action="store_true")
    args = parser.parse_args()
    quiet_libraries()
    results = {}
    started = time.time()
    target = recognition(args.pool, args.val, k=20, seeds=len(args.seeds))
    results["k20_real"] = {"mean": target.arms[0].mean, "std": target.arms[0].std}
    print(f"K=20 real only: {target.arms[0].mean:.3f} ± {target.arms[0].std:.3f}", flush=True)
    for seed in args.seeds:
        shots = draw_shots(args.pool, args.k, seed, args.work / f"seed{seed}" / "shots")
        adapter = args.work / f"seed{seed}" / "adapter"
        if not (adapter / "tokens.json").exists():
            finetune_folder(
                shots,
                adapter,
                model=args.model,
                preset="cpu-quick",
                steps=args.finetune_steps,
                seed=seed,
                resume=adapter.exists(),
            )
        pipe = load_pipeline(args.model, adapter)
        strengths = [args.strength] + ([] if args.skip_pure_noise else [1.0])
        for strength in strengths:
            synthetic = args.work / f"seed{seed}" / f"synthetic-{strength}"
            for class_dir in sorted(p for p in shots.iterdir() if p.is_dir()):
                if len(list_images(synthetic / class_dir.name)) if (synthetic / class_dir.name).exists() else 0:
                    continue
                generate_to_folder(
                    None,
                    None,
                    class_dir.name,
                    class_dir,
                    args.per_class,
                    synthetic / class_dir.name,
                    strength=strength,
                    steps=args.steps,
                    seed=seed * 1000,
                    pipe=pipe,
                )
            report = recognition(
                shots, args.val, synthetic, k=args.k, seeds=1, classic_augment_per_class=args.per_class
            )
            results[f"seed{seed}_strength{strength}"] = report.to_dict() if hasattr(report, "to_dict") else str(report)
            print(f"seed {seed}, strength {strength}:", flush=True)
            print(report.table() if hasattr(report, "table") else report, flush=True)
    results["wall_s"] = round(time.time() - started, 1)
    (args.work / "yardstick.json").write_text(json.dumps(results, indent=2))
    print(f"results -> {args.work / 'yardstick.json'} ({results['wall_s']} s)")


if __name__ == "__main__":
    main()
