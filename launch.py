"""Steel Defect Studio: start the web app (default) or run a headless command.

python launch.py                      # the app on http://127.0.0.1:7860
python launch.py generate --token crazing --init slab.png --num 8 --out out/
python launch.py finetune --dataset data/ --out runs/my-adapter
python launch.py pretrain --data ../shared/data/neu --out engine/weights/steel-prior
python launch.py evaluate fidelity --generated out/ --real /tmp/neu-split/val --reference /tmp/neu-split/pool
python launch.py evaluate recognition --train /tmp/neu-split/pool --test /tmp/neu-split/val --synthetic out/ --k 5
python launch.py evaluate neu-split --data ../shared/data/neu --out /tmp/neu-split   # also reference-features,
                                                                                      # train-features, placement-stats,
                                                                                      # class-stats
python launch.py tune-strength --adapter runs/my-adapter --token crazing --val /tmp/neu-split/val
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DEFAULT_DATA_DIR = Path("studio-data")
SPLIT_HELP = (
    "The NEU folder (manifest.csv, annotations/), or a split folder with pool/ and val/, each <class>/<images> with"
    " <name>_mask.png or <name>.xml beside an image (a mill's own)."
)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("STUDIO_DATA_DIR", DEFAULT_DATA_DIR)),
        help="Folder for the database, images and runs (default ./studio-data).",
    )
    parser.add_argument("--model", default=None, help="Diffusers model folder or hub id (default: embedded prior).")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("STUDIO_DATABASE_URL"),
        help="SQLAlchemy URL (default: SQLite in the data dir).",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description="Steel Defect Studio")
    sub = parser.add_subparsers(dest="command")

    app = sub.add_parser("app", help="Start the web app (the default command).")
    add_app_arguments(app)

    add_generate_parser(sub)
    add_training_parsers(sub)
    add_studio_parsers(sub)
    add_evaluate_parsers(sub)
    return parser


def add_generate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`generate`: image-oriented generation into a folder or into the studio."""
    from engine.config import DEFAULT_MASKED_STRENGTH, DEFAULT_STEPS, GenerationConfig

    gen = sub.add_parser("generate", help="Generate defect images from init images (image-oriented).")
    add_common(gen)
    gen.add_argument("--token", required=True, help="Defect class (its learned token), e.g. crazing.")
    gen.add_argument("--init", required=True, type=Path, help="An image or a folder of images to start from.")
    gen.add_argument("--num", type=int, default=4, help="Number of PNGs to write in total.")
    gen.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Folder for the PNGs; without it they are stored in the studio (--data-dir) as pending samples.",
    )
    gen.add_argument(
        "--init-role",
        choices=["defect", "clean"],
        default=None,
        help="Without --out: store the init images as real defects of the class (default) or clean slabs (default"
        " with --mask/--auto-place).",
    )
    gen.add_argument("--adapter", type=Path, default=None, help="Adapter run folder (default: shipped tokens).")
    gen.add_argument(
        "--strength",
        type=float,
        default=None,
        help="0-1; default: the token's tuned strength (masked: its tuned masked strength), else"
        f" {GenerationConfig.strength} (masked: {DEFAULT_MASKED_STRENGTH}).",
    )
    gen.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    gen.add_argument("--guidance", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch", type=int, default=8, help="Candidates per model call.")
    gen.add_argument("--window-size", type=int, default=None)
    gen.add_argument(
        "--no-vary",
        dest="vary",
        action="store_false",
        help="Start every candidate from an init image as it is (default: varied inits — the images, geometric"
        " variants and mosaics of them, see --init-mix — every --per-init candidates; not with --mask).",
    )
    gen.add_argument(
        "--init-mix",
        default=None,
        help="Shares of the varied inits' kinds, e.g. source=0.1,geometric=0.3,mosaic=0.3,overlay=0.3"
        " (default: the measured mix in engine/generation/variation.py).",
    )
    gen.add_argument(
        "--quarter-turns",
        type=_turn_share,
        default="auto",
        help="Share of the varied inits turned a quarter (90° or 270°), for a defect that runs in any direction"
        " while the init images all show one, e.g. 0.5 for scratches across and along the strip; 0 keeps every"
        " init's direction. Default 'auto': the share that brings the inits' directions to those of the class in"
        " the training pool (NEU's scratches run horizontally in a quarter of its images); for a class the pool"
        " does not know, half when its init images run both ways, else the share of a directed steel class that"
        " runs the other way on average in the pool (6 %%); none with 10 or more init images.",
    )
    gen.add_argument("--per-init", type=int, default=None, help="Candidates per varied init (default 2).")
    gen.add_argument(
        "--realism-threshold",
        type=_threshold,
        default="default",
        help="Flag candidates whose realism score (0-1) is below this into <out>/flagged/ and replace them;"
        " 'off' keeps every candidate. Default 0.3.",
    )
    gen.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="The class's real defect images (a folder) the realism gate compares candidates with. Default: the"
        " init images; with --mask or --auto-place, whose inits are clean slabs, the shipped NEU features for a NEU"
        " class, else no gate.",
    )
    gen.add_argument(
        "--strength-floor",
        type=_strength_floor,
        default="default",
        help="Once the realism gate has flagged --num candidates at one strength, make the rest 0.1 lower, down to"
        " this (default 0.2; not with --mask or --auto-place); 'off' ends the batch there instead.",
    )
    gen.add_argument(
        "--detail-restore",
        type=float,
        default=None,
        help="Share (0-1) of the source's fine grain added back to each output (default 1).",
    )
    gen.add_argument(
        "--capture-variation",
        type=float,
        default=None,
        help="Exposure variation of each sample after the realism gate, 0 (off) to 1 and beyond (default 1); any"
        " amount above 0 also brings each sample's pixel grain to that of the init images, and gives half of the"
        " samples the exposure of one of the class's training pool images (for a class the pool does not know, one"
        " drawn about the init images' with a pool class's spread).",
    )
    placement = gen.add_mutually_exclusive_group()
    placement.add_argument(
        "--mask", type=Path, default=None, help="Repaint only where this mask (init image size, white) is."
    )
    placement.add_argument(
        "--auto-place", action="store_true", help="Repaint only masks placed like the class's real defects."
    )
    gen.add_argument(
        "--exemplars",
        type=Path,
        default=None,
        help="With --auto-place: a folder of the class's real defect images with masks (NAME_mask.png) or Pascal VOC"
        " boxes (NAME.xml) beside them; each candidate starts from its slab with those defects pasted (Poisson"
        " blending, random flips) at the auto-placed places, and its mask is the pasted defects' boxes.",
    )


def add_training_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`finetune` (tokens + LoRA on a folder) and `pretrain` (the steel prior)."""
    from engine.config import CAPTION_KINDS, DEFAULT_PRETRAIN_STAGES, PRETRAIN_STAGES

    ft = sub.add_parser("finetune", help="Learn one token per class plus LoRA from <class>/<images>.")
    add_common(ft)
    ft.add_argument("--dataset", required=True, type=Path)
    ft.add_argument("--out", required=True, type=Path)
    ft.add_argument("--classes", nargs="*", default=None)
    ft.add_argument("--preset", default="cpu-quick")
    ft.add_argument("--steps", type=int, default=None)
    ft.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="End within this many minutes of training: the planned steps shrink to what the measured rate fits.",
    )
    ft.add_argument("--batch-size", type=int, default=None)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--checkpointing-steps", type=int, default=None, help="Save a checkpoint every N steps.")
    ft.add_argument("--resume", action="store_true", help="Continue from the run folder's last checkpoint.")
    ft.add_argument(
        "--mixed-precision",
        choices=["no", "fp16", "bf16"],
        default=os.environ.get("ACCELERATE_MIXED_PRECISION"),
        help="bf16 on recent GPUs (default: `accelerate launch --mixed_precision`'s choice, else the preset's).",
    )
    ft.add_argument(
        "--background-loss-weight",
        type=float,
        default=None,
        help="Masked loss: weight (0-1) of the loss outside each image's defect mask (<name>_mask.png or <name>.xml"
        " beside it); 1 = plain loss. Default: the preset's.",
    )
    ft.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (its alpha alike). Default: the preset's.")
    ft.add_argument("--lora-learning-rate", type=float, default=None, help="Default: the preset's.")
    ft.add_argument(
        "--caption-dropout",
        type=float,
        default=None,
        help="Share of captions trained as the empty prompt (the unconditional model guidance contrasts with).",
    )

    pre = sub.add_parser("pretrain", help="Pretrain the steel prior from a folder of images (resumable).")
    pre.add_argument("--data", required=True, type=Path)
    pre.add_argument("--out", required=True, type=Path)
    pre.add_argument("--work-dir", type=Path, default=None, help="Checkpoints (default <out>.work).")
    pre.add_argument(
        "--preset",
        choices=["cpu", "gpu"],
        default="cpu",
        help="cpu: the shipped recipe (2 cores); gpu: one H100/H200 in about 10 minutes (time budgets, bf16, large"
        " batches, a perceptual autoencoder from scratch, appearance captions).",
    )
    pre.add_argument("--size", choices=["embedded", "large", "tiny"], default=None, help="Default: the preset's.")
    pre.add_argument("--autoencoder-steps", type=int, default=None)
    pre.add_argument(
        "--autoencoder-perceptual-weight",
        type=float,
        default=None,
        help="Train the autoencoder (encoder and decoder) with this weight on the steel feature network's"
        " perceptual distance too, as SD's autoencoder was trained. Default 0: L1 + spectral, the shipped recipe.",
    )
    pre.add_argument(
        "--autoencoder-downsampling",
        type=int,
        default=None,
        help="Pixels per latent cell along a side (a power of two; default: the size's, 8 for embedded and large)."
        " 4 with --autoencoder-perceptual-weight 1 keeps steel's fine grain; the UNet then works on a 4x larger grid"
        " (train it on --crop-size 64; previews cost about 3.5x on a CPU).",
    )
    pre.add_argument("--steps", type=int, default=None)
    pre.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="Wall-clock budget of the diffusion stage's loop: its planned --steps shrink to what the measured rate"
        " fits (the learning-rate schedule follows). Default: the preset's (gpu 4.5, cpu none).",
    )
    pre.add_argument(
        "--autoencoder-max-minutes",
        type=float,
        default=None,
        help="The same budget for the autoencoder stage. Default: the preset's (gpu 2, cpu none).",
    )
    pre.add_argument(
        "--decoder-max-minutes",
        type=float,
        default=None,
        help="The same budget for the decoder stage. Default: the preset's (gpu 2, cpu none).",
    )
    pre.add_argument("--batch-size", type=int, default=None)
    pre.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="Train the UNet on random crops of this many pixels of each image's latent (a multiple of the"
        " autoencoder's downsampling): a step costs about (crop / resolution)^2 of a whole image's. Default: whole.",
    )
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores).")
    pre.add_argument(
        "--init-model",
        type=Path,
        default=None,
        help="Continue from this prior folder (e.g. engine/weights/steel-prior): keep its autoencoder, train on.",
    )
    pre.add_argument(
        "--fresh-denoiser",
        action="store_true",
        help="With --init-model: keep only its autoencoder and train a new UNet and text encoder of --size on its"
        " latents (e.g. the gpu preset's larger UNet on the shipped autoencoder).",
    )
    pre.add_argument("--learning-rate", type=float, default=None)
    pre.add_argument("--decoder-steps", type=int, default=None, help="Steps of the decoder stage (perceptual + GAN).")
    pre.add_argument(
        "--decoder-denoised-share",
        type=float,
        default=None,
        help="Share of the decoder stage's batches decoded from the UNet's denoised latents (needs --init-model).",
    )
    pre.add_argument(
        "--stages",
        nargs="+",
        choices=PRETRAIN_STAGES,
        default=list(DEFAULT_PRETRAIN_STAGES),
        help="Stages to run (the autoencoder stage is skipped with --init-model). The decoder stage (perceptual +"
        " patch-GAN on a frozen encoder) is measured and not shipped, so it runs only when named.",
    )
    pre.add_argument("--vflip", action="store_true", help="Train on vertical mirrors too (4x the images with hflip).")
    pre.add_argument(
        "--captions",
        choices=CAPTION_KINDS,
        default=None,
        help="generic: captions that say only 'steel surface'; appearance: followed by each image's measured"
        " appearance (brightness, grain, blotches, lines, spots, streaks), never its class. Default: generic.",
    )
    pre.add_argument(
        "--v-prediction",
        action="store_true",
        help="Train the UNet to predict v on a zero-terminal-SNR schedule (default: the model's own, epsilon).",
    )
    pre.add_argument(
        "--noise-shift",
        type=float,
        default=None,
        help="Train on SD's schedule with every step's SNR divided by this (the latent channels' redundancy;"
        " `python -m bench.latent_redundancy` measures it). Default: the model's own schedule.",
    )


def add_studio_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands over a studio's data folder: `import`, `export`, `review`, `verify-export`, `add-user`."""
    imp = sub.add_parser("import", help="Import images into the studio's dataset.")
    add_common(imp)
    imp.add_argument("--images", required=True, type=Path)
    imp.add_argument("--role", choices=["clean", "defect"], default="defect")
    imp.add_argument("--class", dest="class_name", default=None)
    imp.add_argument("--annotations", type=Path, default=None, help="Pascal VOC XML folder.")

    exp = sub.add_parser("export", help="Export the accepted dataset as a zip.")
    add_common(exp)
    exp.add_argument("--out", required=True, type=Path)
    exp.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="Share of source images, with every sample made from them, in the validation split (default 0.1).",
    )
    exp.add_argument("--test-fraction", type=float, default=None, help="Share of source images in a test split.")
    exp.add_argument("--split-seed", type=int, default=0, help="Seed of the train/val split.")
    exp.add_argument("--classes", nargs="*", default=None, help="Export only these classes (default: all).")
    exp.add_argument(
        "--formats",
        nargs="*",
        choices=["masks", "coco", "yolo", "voc"],
        default=["masks", "coco", "yolo", "voc"],
        help="Formats beside the ImageFolder images and manifest (default: all).",
    )

    rev = sub.add_parser("review", help="The review queue from the command line: list, accept, reject, undo.")
    review = rev.add_subparsers(dest="review_command", required=True)
    listing = review.add_parser("list", help="List samples (oldest first).")
    listing.add_argument("--status", choices=["pending", "accepted", "rejected", "all"], default="pending")
    listing.add_argument("--class", dest="class_name", default=None)
    listing.add_argument("--source", type=int, default=None, help="Only samples made from this source image id.")
    listing.add_argument("--batch", default=None, help="Only samples of this batch (see `review batches`).")
    listing.add_argument("--limit", type=int, default=200)
    listing.add_argument("--json", action="store_true")
    batches = review.add_parser("batches", help="List the newest batches with their pending counts.")
    batches.add_argument("--limit", type=int, default=50)
    batches.add_argument("--json", action="store_true")
    accept = review.add_parser("accept", help="Accept samples.")
    accept.add_argument("ids", nargs="+", type=int)
    reject = review.add_parser("reject", help="Reject samples.")
    reject.add_argument("ids", nargs="+", type=int)
    reject.add_argument("--reason", default=None)
    undo = review.add_parser("undo", help="Put decided samples back to pending.")
    undo.add_argument("ids", nargs="+", type=int)
    for review_parser in (listing, batches, accept, reject, undo):
        add_common(review_parser)

    ver = sub.add_parser("verify-export", help="Check an export zip against its manifest.")
    ver.add_argument("zip", type=Path)

    user = sub.add_parser("add-user", help="Add or replace a user in a users file for --auth (salted scrypt hash).")
    user.add_argument("users_file", type=Path)
    user.add_argument("user")
    user.add_argument(
        "--password-stdin", action="store_true", help="Read the password from standard input instead of a prompt."
    )


def add_evaluate_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`evaluate fidelity|recognition|two-sample` and `tune-strength`; folders are `<class>/<images>` trees."""
    from engine.config import DEFAULT_STEPS

    ev = sub.add_parser("evaluate", help="Measure generated images against real ones.")
    ev_sub = ev.add_subparsers(dest="evaluation", required=True)

    fid = ev_sub.add_parser("fidelity", help="KID/FID per class and class recognition of generated images.")
    fid.add_argument("--generated", required=True, type=Path)
    fid.add_argument("--real", required=True, type=Path)
    fid.add_argument("--reference", type=Path, default=None, help="A second real split: real-vs-real beside it.")
    fid.add_argument("--inception-weights", type=Path, default=None, help="Inception weights file (torch-fidelity).")

    rec = ev_sub.add_parser("recognition", help="Few-shot classifier accuracy with and without synthetic images.")
    rec.add_argument("--train", required=True, type=Path, help="Real images the K shots are drawn from.")
    rec.add_argument("--test", required=True, type=Path)
    rec.add_argument("--synthetic", type=Path, default=None)
    rec.add_argument("--classic", type=int, default=0, help="Classic augmentations per class (0: no such arm).")
    rec.add_argument("--k", type=int, default=5, help="Real images per class.")
    rec.add_argument("--seeds", type=int, default=3)
    rec.add_argument("--steps", type=int, default=300, help="Optimizer steps per model, the same for every arm.")

    two = ev_sub.add_parser("two-sample", help="Cross-validated accuracy of telling generated from real.")
    two.add_argument("--generated", required=True, type=Path)
    two.add_argument("--real", required=True, type=Path)
    two.add_argument("--seeds", type=int, default=3)

    split = ev_sub.add_parser("neu-split", help="Write NEU's pool/val split as ImageFolder trees of symlinks.")
    split.add_argument("--data", required=True, type=Path, help="The NEU folder (with manifest.csv).")
    split.add_argument("--out", required=True, type=Path, help="A folder outside the repository.")

    reference = ev_sub.add_parser(
        "reference-features", help="Write the per-class features of NEU's training pool for the realism score."
    )
    reference.add_argument("--data", required=True, type=Path, help="The NEU folder (with manifest.csv).")
    reference.add_argument("--out", type=Path, default=None, help="Default: beside the shipped feature network.")
    reference.add_argument("--features", type=Path, default=None, help="Feature network folder (default: shipped).")
    reference.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")

    features = ev_sub.add_parser("train-features", help="Train the steel feature network on the NEU training pool.")
    features.add_argument("--data", required=True, type=Path, help="The NEU folder (with manifest.csv).")
    features.add_argument("--out", required=True, type=Path)
    features.add_argument("--epochs", type=int, default=25)
    features.add_argument("--seed", type=int, default=0)
    features.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")

    placement = ev_sub.add_parser("placement-stats", help="Compute the auto-place statistics from NEU-DET's boxes.")
    placement.add_argument("--neu", required=True, type=Path, help="The NEU folder (manifest.csv, annotations/).")
    placement.add_argument("--out", type=Path, default=None, help="Default: the shipped placement-stats.json.")

    class_stats = ev_sub.add_parser(
        "class-stats", help="Which ways each class's training-pool images run and how they are exposed."
    )
    class_stats.add_argument("--neu", required=True, type=Path, help="The NEU folder (with manifest.csv).")
    class_stats.add_argument("--out", type=Path, default=None, help="Default: the shipped class-stats.json.")

    masked = ev_sub.add_parser(
        "masked",
        help="Masked samples auto-placed on clean regions of validation images, judged on the masked crops.",
    )
    masked.add_argument("--neu", "--split", dest="neu", required=True, type=Path, help=SPLIT_HELP)
    masked.add_argument("--model", default=None, help="Diffusers model folder or hub id (default: embedded prior).")
    masked.add_argument("--adapter", type=Path, default=None, help="Adapter folder (default: the shipped tokens).")
    masked.add_argument("--classes", nargs="*", default=None)
    masked.add_argument("--per-class", type=int, default=40)
    masked.add_argument(
        "--strength", type=float, default=None, help="Default: each token's masked strength (tuned, else 0.9)."
    )
    masked.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    masked.add_argument("--seed", type=int, default=0)
    masked.add_argument("--guidance", type=float, default=None)
    masked.add_argument("--detail-restore", type=float, default=None, help="0-1 (default 1).")
    masked.add_argument(
        "--window-size",
        type=int,
        default=None,
        help="Slab px per masked window (default 200, or the short side of the class's fine-tune images if smaller).",
    )
    masked.add_argument("--save-dir", type=Path, default=None, help="Write samples, masks and crops here to look at.")

    tune_masked = sub.add_parser(
        "tune-masked-strength",
        help="Choose each token's masked-repaint strength by the masked report's crop KID; store it in the adapter.",
    )
    tune_masked.add_argument("--adapter", required=True, type=Path, help="Adapter run folder (tokens.json is updated).")
    tune_masked.add_argument("--neu", "--split", dest="neu", required=True, type=Path, help=SPLIT_HELP)
    tune_masked.add_argument(
        "--model", default=None, help="Diffusers model folder or hub id (default: embedded prior)."
    )
    tune_masked.add_argument("--classes", nargs="*", default=None)
    tune_masked.add_argument("--strengths", type=float, nargs="+", default=[0.8, 0.9, 1.0])
    tune_masked.add_argument("--per-class", type=int, default=24)
    tune_masked.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    tune_masked.add_argument("--seed", type=int, default=0)
    tune_masked.add_argument("--no-save", action="store_true", help="Only print the table.")

    tune = sub.add_parser("tune-strength", help="Choose a token's img2img strength by KID; store it in the adapter.")
    tune.add_argument("--adapter", required=True, type=Path, help="Adapter run folder (its tokens.json is updated).")
    tune.add_argument("--token", required=True, help="Defect class, e.g. crazing.")
    tune.add_argument("--val", required=True, type=Path, help="Real validation images (<class>/ folders).")
    tune.add_argument("--init", type=Path, default=None, help="Init images (default: pool/<class> beside --val).")
    tune.add_argument("--strengths", type=float, nargs="+", default=None)
    tune.add_argument("--num", type=int, default=16, help="Images generated per strength.")
    tune.add_argument("--model", default=None, help="Diffusers model folder or hub id (default: embedded prior).")
    tune.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--no-save", action="store_true", help="Only print the table.")

    for parser in (fid, rec, two, masked, tune, tune_masked):
        parser.add_argument("--feature-net", type=Path, default=None, help="Feature network folder (default: shipped).")
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", default=None, help="user:password[,user:password] or a users file.")
    parser.add_argument(
        "--allow-unauthenticated-remote",
        action="store_true",
        help="Allow binding to a non-loopback address without --auth.",
    )


def _setting_or_off(text: str, name: str, zero_allowed: bool) -> float | str | None:
    """A setting in [0, 1] (or (0, 1]), 'off' (None) or 'default'."""
    if text in ("off", "none"):
        return None
    if text == "default":
        return text
    value = float(text)
    if not (0.0 <= value if zero_allowed else 0.0 < value) or value > 1.0:
        interval = "[0, 1]" if zero_allowed else "(0, 1]"
        raise argparse.ArgumentTypeError(f"a {name} is in {interval} or 'off', got {text}")
    return value


def _threshold(text: str) -> float | str | None:
    """A realism threshold in [0, 1], 'off' (None) or 'default'."""
    return _setting_or_off(text, "realism threshold", zero_allowed=True)


def _turn_share(text: str) -> float | str:
    """`--quarter-turns`: "auto" or a share of inits in [0, 1]."""
    if text == "auto":
        return text
    from engine.generation.variation import check_turn_share

    try:
        return check_turn_share(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a share in [0, 1]: {error}") from None


def _strength_floor(text: str) -> float | str | None:
    """The realism gate's strength floor in (0, 1], 'off' (None) or 'default'."""
    return _setting_or_off(text, "strength floor", zero_allowed=False)


def cmd_generate(args: argparse.Namespace) -> None:
    from engine.batch import FLAGGED_FOLDER, RealismGateError, generate_to_folder, init_images
    from engine.data import list_images
    from engine.generation.variation import parse_init_mix
    from engine.training.loop import shared_value
    from webapp.studio.generation import new_batch_folder

    # The batch says which share of its inits it turns a quarter, and why.
    logging.getLogger("engine.batch").setLevel(logging.INFO)
    store = args.out is None
    out = args.out or Path(shared_value(lambda: str(new_batch_folder(args.data_dir, args.token))))
    ended = None
    try:
        written = generate_to_folder(
            model=args.model,
            adapter=args.adapter,
            class_name=args.token,
            init=args.init,
            num=args.num,
            out=out,
            strength=args.strength,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
            batch=args.batch,
            window_size=args.window_size,
            mask=args.mask,
            auto_place=args.auto_place,
            vary=args.vary,
            detail_restore=args.detail_restore,
            **({"capture_variation": args.capture_variation} if args.capture_variation is not None else {}),
            **({"per_init": args.per_init} if args.per_init is not None else {}),
            init_mix=parse_init_mix(args.init_mix) if args.init_mix is not None else None,
            turn_share=None if args.quarter_turns == "auto" else args.quarter_turns,
            **({"realism_threshold": args.realism_threshold} if args.realism_threshold != "default" else {}),
            realism_reference=args.reference,
            exemplars=args.exemplars,
            **({"strength_floor": args.strength_floor} if args.strength_floor != "default" else {}),
        )
    except RealismGateError as error:
        # Into the studio, what the gate let through and what it flagged are stored all the same, as the app does.
        if not store:
            raise
        ended, written = error, list_images(out)
    if not _is_main_process():
        return
    masks = " (each with its <name>_mask.png)" if args.mask or args.auto_place else ""
    flagged = list_images(out / FLAGGED_FOLDER) if (out / FLAGGED_FOLDER).is_dir() else []
    flagged_text = f"; {len(flagged)} below the realism threshold in {out / FLAGGED_FOLDER}" if flagged else ""
    print(f"Wrote {len(written)} images{masks} to {out}{flagged_text}")
    if store:
        from webapp.cli import cli_user
        from webapp.studio import StudioService

        role = args.init_role or ("clean" if args.mask or args.auto_place else "defect")
        service = StudioService(args.data_dir, args.model, args.database_url)
        try:
            stored = service.store_generated(out, args.token, init_images(args.init), role, cli_user())
        finally:
            service.close()
        print(stored.summary + "; review them with `launch.py review list`.")
    if ended is not None:
        raise ended


def cmd_finetune(args: argparse.Namespace) -> None:
    from engine.batch import finetune_folder

    with stop_on_signal() as stop_requested:
        result = finetune_folder(
            dataset=args.dataset,
            out=args.out,
            model=args.model,
            classes=args.classes,
            preset=args.preset,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            resume=args.resume,
            checkpointing_steps=args.checkpointing_steps,
            background_loss_weight=args.background_loss_weight,
            mixed_precision=args.mixed_precision,
            lora_rank=args.lora_rank,
            lora_learning_rate=args.lora_learning_rate,
            caption_dropout=args.caption_dropout,
            max_minutes=args.max_minutes,
            progress=_print_progress,
            should_stop=stop_requested,
        )
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from is not None else ""
    took = f"{result.wall_time_s:.0f} s"
    if _is_main_process():
        print(f"\n{result.status}: {result.steps} steps{resumed} in {took}, adapter in {result.output_dir}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    import torch

    from engine.config import pretrain_configs
    from engine.training.pretrain import pretrain
    from engine.training.prior import PriorSize

    if args.threads:
        torch.set_num_threads(args.threads)
    size_name, autoencoder, decoder, diffusion = pretrain_configs(
        args.preset,
        seed=args.seed,
        size=args.size,
        autoencoder_steps=args.autoencoder_steps,
        autoencoder_perceptual_weight=args.autoencoder_perceptual_weight,
        autoencoder_downsampling=args.autoencoder_downsampling,
        autoencoder_max_minutes=args.autoencoder_max_minutes,
        max_minutes=args.max_minutes,
        decoder_steps=args.decoder_steps,
        decoder_max_minutes=args.decoder_max_minutes,
        decoder_denoised_share=args.decoder_denoised_share,
        steps=args.steps,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        learning_rate=args.learning_rate,
        vflip=args.vflip or None,
        captions=args.captions,
        prediction_type="v_prediction" if args.v_prediction else None,
        zero_terminal_snr=True if args.v_prediction else None,
        noise_shift=args.noise_shift,
    )
    size = getattr(PriorSize, size_name)()
    with stop_on_signal() as stop_requested:
        result = pretrain(
            args.data,
            args.out,
            args.work_dir,
            size,
            autoencoder,
            diffusion,
            progress=_print_progress,
            init_model=args.init_model,
            decoder=decoder,
            stages=tuple(args.stages),
            should_stop=stop_requested,
            fresh_denoiser=args.fresh_denoiser,
        )
    resumed = result.diffusion.resumed_from if result.diffusion is not None else None
    resumed_text = f", diffusion resumed from step {resumed}" if resumed is not None else ""
    if not _is_main_process():
        return
    if result.diffusion is not None and result.diffusion.status == "stopped":
        print(f"\nStopped at diffusion step {result.diffusion.steps}; run the same command to resume from there.")
        return
    print(f"\nPrior saved to {result.model_dir} (autoencoder L1 {result.autoencoder_l1['all']:.4f}{resumed_text})")
    if result.round_trip_recognition:
        shares = ", ".join(f"{name} {share:.2f}" for name, share in result.round_trip_recognition.items())
        print(f"Autoencoder round trip of the validation images recognised as their class: {shares}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from engine.evaluation.features import load_feature_net
    from engine.evaluation.fidelity import fidelity, two_sample_test
    from engine.evaluation.recognition import recognition

    if args.evaluation in DATA_COMMANDS:
        DATA_COMMANDS[args.evaluation](args)
        return
    progress = None if args.json else _print_progress_stderr
    if args.evaluation == "fidelity":
        report = fidelity(
            args.generated, args.real, args.reference, load_feature_net(args.feature_net), args.inception_weights
        )
    elif args.evaluation == "masked":
        from engine.evaluation.masked_report import masked_sample_report
        from engine.generation.pipeline import load_pipeline

        report = masked_sample_report(
            load_pipeline(args.model, args.adapter),
            args.neu,
            classes=args.classes,
            per_class=args.per_class,
            strength=args.strength,
            steps=args.steps,
            seed=args.seed,
            guidance_scale=args.guidance,
            detail_restore=args.detail_restore,
            window_size=args.window_size,
            feature_net=load_feature_net(args.feature_net),
            save_dir=args.save_dir,
            progress=progress,
        )
    elif args.evaluation == "two-sample":
        report = two_sample_test(args.generated, args.real, args.seeds, load_feature_net(args.feature_net))
    else:
        report = recognition(
            args.train, args.test, args.synthetic, args.k, args.seeds, args.classic, args.steps, progress=progress
        )
    _print_report(report, args.json)


def cmd_neu_split(args: argparse.Namespace) -> None:
    from engine.data import export_neu_split

    counts = export_neu_split(args.data, args.out)
    print(f"Wrote links under {args.out}: pool {counts['pool']} images, val {counts['val']} images")


def cmd_reference_features(args: argparse.Namespace) -> None:
    import torch

    from engine.evaluation.realism import SHIPPED_REFERENCE_FEATURES, build_neu_reference_features

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or SHIPPED_REFERENCE_FEATURES
    counts = build_neu_reference_features(args.data, out, args.features, _print_progress_stderr)
    print(f"Wrote {out} ({out.stat().st_size / 1024:.0f} KB): " + ", ".join(f"{c} {n}" for c, n in counts.items()))


def cmd_train_features(args: argparse.Namespace) -> None:
    import torch

    from engine.evaluation.features import train_feature_network

    if args.threads:
        torch.set_num_threads(args.threads)
    result = train_feature_network(args.data, args.out, args.epochs, args.seed, _print_progress_stderr)
    per_class = ", ".join(f"{c} {a:.3f}" for c, a in result.val_per_class.items())
    print(
        f"Saved to {result.output_dir}: train accuracy {result.train_accuracy:.4f}, validation "
        f"{result.val_accuracy:.4f} ({per_class}) in {result.seconds:.0f} s on {torch.get_num_threads()} threads"
    )


def cmd_placement_stats(args: argparse.Namespace) -> None:
    from engine.generation.placement import STATS_FILE, write_box_statistics

    out, summary = write_box_statistics(args.neu, args.out or STATS_FILE)
    print(f"Wrote {out}: (boxes, images) per class {summary}")


def cmd_class_stats(args: argparse.Namespace) -> None:
    from engine.generation.class_stats import STATS_FILE, write_class_statistics

    out, classes = write_class_statistics(args.neu, args.out or STATS_FILE)
    counts = ", ".join(f"{name} {c['horizontal']}/{c['vertical']}/{c['images']}" for name, c in classes.items())
    print(f"Wrote {out}: horizontal/vertical/images per class {counts}")


DATA_COMMANDS = {
    "neu-split": cmd_neu_split,
    "reference-features": cmd_reference_features,
    "train-features": cmd_train_features,
    "placement-stats": cmd_placement_stats,
    "class-stats": cmd_class_stats,
}


def cmd_tune_strength(args: argparse.Namespace) -> None:
    from engine.evaluation.features import load_feature_net
    from engine.evaluation.tuning import DEFAULT_STRENGTHS, tune_adapter_strength

    report = tune_adapter_strength(
        adapter=args.adapter,
        class_name=args.token,
        val_dir=args.val,
        init=args.init,
        strengths=args.strengths or DEFAULT_STRENGTHS,
        num=args.num,
        model=args.model,
        steps=args.steps,
        seed=args.seed,
        save=not args.no_save,
        feature_net=load_feature_net(args.feature_net),
        progress=None if args.json else _print_progress_stderr,
    )
    _print_report(report, args.json)


def cmd_tune_masked_strength(args: argparse.Namespace) -> None:
    from engine.evaluation.features import load_feature_net
    from engine.evaluation.masked_report import tune_masked_strength

    report = tune_masked_strength(
        adapter=args.adapter,
        data_root=args.neu,
        strengths=args.strengths,
        model=args.model,
        classes=args.classes,
        per_class=args.per_class,
        steps=args.steps,
        seed=args.seed,
        save=not args.no_save,
        feature_net=load_feature_net(args.feature_net),
        progress=None if args.json else _print_progress_stderr,
    )
    _print_report(report, args.json)


def _print_report(report, as_json: bool) -> None:
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.table())


def _print_progress_stderr(step: int, total: int, message: str) -> None:
    print(f"\r{message:<60}", end="\n" if step == total else "", file=sys.stderr, flush=True)


def _print_progress(step: int, total: int, message: str) -> None:
    """Every 10th step: on one line in a terminal, one line each when redirected to a file."""
    if step == total or step % 10 == 0:
        if sys.stdout.isatty():
            print(f"\r{message}", end="", flush=True)
        else:
            print(message, flush=True)


@contextmanager
def stop_on_signal() -> Iterator[Callable[[], bool]]:
    """Turn Ctrl-C and SIGTERM into a stop request for a training job: it saves a checkpoint at the end of the
    current step and returns "stopped" (resume it with `--resume` / the same `pretrain` command)."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return

    def request_stop(signum: int, _frame) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to abort).", file=sys.stderr)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _is_main_process() -> bool:
    """False in the extra processes of `torchrun`/`accelerate launch` (RANK > 0), which print nothing."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["app", *argv]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from engine.quiet import quiet_libraries

    quiet_libraries()
    commands = {
        "generate": cmd_generate,
        "finetune": cmd_finetune,
        "pretrain": cmd_pretrain,
        "evaluate": cmd_evaluate,
        "tune-strength": cmd_tune_strength,
        "tune-masked-strength": cmd_tune_masked_strength,
    }
    try:
        if args.command in commands:
            commands[args.command](args)
        else:
            from webapp.cli import run_service_command

            return run_service_command(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, InterruptedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
