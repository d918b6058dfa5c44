"""Which candidates to keep: rankers of the studio's samples measured on the few-shot yardstick.

Pools the samples of one or more yardstick work folders that ran on the same draws (same seeds, same adapters:
for example the default run and an `--init-mix` run beside it), per draw and class; keeps `--keep` of them by
each ranker; and trains the yardstick's recognizers on K real + kept and K real + classic + kept, against K real +
classic once per draw. Rankers use only what a user has: the K shots of every class and each sample's metadata.

- random: a uniform draw (the control: the pooled runs' samples as the product would keep them);
- all: every pooled candidate;
- class-consistent: candidates whose nearest shot (steel features, every class's shots) is of their own class,
  then the others nearest their own class;
- coverage: greedy k-center in steel features, starting from the class's shots (the most spread-out set);
- novel: the farthest from the nearest shot of their class;
- realism: the highest realism score (the gate's, recorded in each sample).

Processes may share `--out` (`--seeds 0 1` beside `--seeds 2 3`): the summary covers every draw there.

    python -m bench.candidate_ranking --runs /tmp/fewshot /tmp/fewshot-overlay --val /tmp/neu-split/val \
        --out /tmp/ranking --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.fewshot_yardstick import (
    DRAW_RESULT,
    diversity,
    draws_with_options,
    embed,
    mean_and_std,
    nearest_shot_distance,
    summarize,
    write_json,
)
from engine.data import list_images, load_rgb
from engine.evaluation.features import SteelFeatureNet, load_feature_net
from engine.evaluation.recognition import recognition
from engine.generation.generate import read_png_parameters
from engine.quiet import quiet_libraries


def embed_files(net: SteelFeatureNet, paths: list[Path]) -> torch.Tensor:
    """Unit-length steel features of the images at `paths`."""
    return embed(net, [load_rgb(p) for p in paths])


def coverage_order(candidates: torch.Tensor, shots: torch.Tensor, keep: int) -> list[int]:
    """Greedy k-center: each pick is the candidate farthest from the shots and the candidates picked so far."""
    distance = nearest_shot_distance(candidates, shots)
    picked: list[int] = []
    for _ in range(min(keep, len(candidates))):
        index = int(distance.argmax())
        picked.append(index)
        distance = torch.minimum(distance, 1 - candidates @ candidates[index])
        distance[picked] = -1.0
    return picked


def class_consistent_order(
    candidates: torch.Tensor, class_index: int, shots: torch.Tensor, shot_classes: torch.Tensor, rng: random.Random
) -> list[int]:
    """Candidates whose nearest shot is of their own class (shuffled), then the rest, nearest their class first."""
    nearest_class = shot_classes[(candidates @ shots.T).argmax(dim=1)]
    consistent = [i for i in range(len(candidates)) if nearest_class[i] == class_index]
    rng.shuffle(consistent)
    own = nearest_shot_distance(candidates, shots[shot_classes == class_index])
    rest = [i for i in torch.argsort(own).tolist() if nearest_class[i] != class_index]
    return consistent + rest


Ranker = Callable[[dict], list[int]]
RANKERS: dict[str, Ranker] = {
    "random": lambda c: c["rng"].sample(range(len(c["paths"])), len(c["paths"])),
    "all": lambda c: list(range(len(c["paths"]))),
    "class-consistent": lambda c: class_consistent_order(
        c["features"], c["class_index"], c["shots"], c["shot_classes"], c["rng"]
    ),
    "coverage": lambda c: coverage_order(c["features"], c["own_shots"], c["keep"]),
    "novel": lambda c: torch.argsort(nearest_shot_distance(c["features"], c["own_shots"]), descending=True).tolist(),
    "realism": lambda c: sorted(range(len(c["paths"])), key=lambda i: -c["realism"][i]),
}
"""Each ranker orders a class's pooled candidates, best first, from the context `rank_draw` builds."""


def realism_score(path: Path) -> float:
    """The realism score the gate recorded in a sample; -inf for one made with the gate off (ranked last)."""
    realism = read_png_parameters(path.read_bytes()).realism
    return realism.score if realism is not None else float("-inf")


def rank_draw(runs: list[Path], seed: int, keep: int, rankers: list[str], net: SteelFeatureNet) -> dict:
    """Per ranker and class, the kept candidates' paths (`all` keeps every one)."""
    shots_dir = runs[0] / f"seed{seed}" / "shots"
    classes = sorted(p.name for p in shots_dir.iterdir() if p.is_dir())
    shot_features = {c: embed_files(net, list_images(shots_dir / c)) for c in classes}
    shots = torch.cat([shot_features[c] for c in classes])
    shot_classes = torch.tensor([i for i, c in enumerate(classes) for _ in range(len(shot_features[c]))])
    kept: dict[str, dict[str, list[Path]]] = {name: {} for name in rankers}
    for class_index, class_name in enumerate(classes):
        paths = [p for run in runs for p in list_images(run / f"seed{seed}" / "synthetic" / class_name)]
        context = {
            "paths": paths,
            "features": embed_files(net, paths),
            "class_index": class_index,
            "shots": shots,
            "shot_classes": shot_classes,
            "own_shots": shot_features[class_name],
            "realism": [realism_score(p) for p in paths],
            "keep": keep,
        }
        for name in rankers:
            context["rng"] = random.Random(f"{seed}:{class_name}:{name}")
            order = RANKERS[name](context)
            kept[name][class_name] = [paths[i] for i in (order if name == "all" else order[:keep])]
    return kept


def link_tree(kept: dict[str, list[Path]], root: Path) -> Path:
    """A `<class>/<image>` folder of links to the kept candidates (names keep their run apart)."""
    for class_name, paths in kept.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(paths):
            link = root / class_name / f"{index:04d}-{path.parents[3].name}-{path.name}"
            if not link.exists():
                link.symlink_to(path.resolve())
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="Yardstick work folders (same draws).")
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--keep", type=int, default=100, help="Samples kept per class by each ranker.")
    parser.add_argument("--rankers", nargs="+", choices=list(RANKERS), default=list(RANKERS))
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--recognizer-seeds", type=int, default=3)
    args = parser.parse_args()
    quiet_libraries()
    started, net = time.time(), load_feature_net()
    options = {
        "runs": [str(r.resolve()) for r in args.runs],
        "keep": args.keep,
        "k": args.k,
        "recognizer_seeds": args.recognizer_seeds,
    }
    for seed in args.seeds:
        shots = args.runs[0] / f"seed{seed}" / "shots"
        baseline_file = args.out / "baseline" / f"seed{seed}" / DRAW_RESULT
        if not baseline_file.exists() or json.loads(baseline_file.read_text())["options"] != options:
            report = recognition(
                shots, args.val, k=args.k, seeds=args.recognizer_seeds, classic_augment_per_class=args.keep
            )
            write_json(baseline_file, {"options": options, "result": {arm.name: arm.mean for arm in report.arms}})
        baseline = json.loads(baseline_file.read_text())["result"]
        pending = [name for name in args.rankers if str(seed) not in draws_with_options(args.out / name, options)]
        kept = rank_draw(args.runs, seed, args.keep, pending, net) if pending else {}
        for name in pending:
            result_file = args.out / name / f"seed{seed}" / DRAW_RESULT
            shutil.rmtree(result_file.parent / "kept", ignore_errors=True)
            tree = link_tree(kept[name], result_file.parent / "kept")
            report = recognition(
                shots,
                args.val,
                tree,
                k=args.k,
                seeds=args.recognizer_seeds,
                classic_augment_per_class=args.keep,
                arms=["real+synthetic", "real+classic+synth"],
            )
            record = baseline | {arm.name: arm.mean for arm in report.arms}
            record["diversity"] = diversity(shots, tree, args.keep, seed)
            write_json(result_file, {"options": options, "result": record})
            print(f"seed {seed} {name}: " + ", ".join(f"{a.name} {a.mean:.3f}" for a in report.arms), flush=True)
    summary = {}
    control = draws_with_options(args.out / "random", options)
    for name in args.rankers:
        draws = draws_with_options(args.out / name, options)
        summary[name], lines = summarize(draws)
        for arm in ("real+synthetic", "real+classic+synth") if name != "random" else ():
            gains = [draw[arm] - control[seed][arm] for seed, draw in draws.items() if seed in control]
            if gains:
                summary[name][f"{arm} - random"] = mean_and_std(gains)
                lines.append(
                    f"  {arm} - random: {100 * sum(gains) / len(gains):+.1f} points"
                    f" (per draw {', '.join(f'{100 * g:+.1f}' for g in gains)})"
                )
        print(f"\n{name} ({len(draws)} draws, seeds {' '.join(draws)}; {args.keep} kept per class; mean ± std):")
        print("\n".join(lines))
    write_json(args.out / "ranking.json", {"options": options, "summary": summary})
    print(f"results -> {args.out / 'ranking.json'} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
