"""Crop-level fidelity of masked samples: defects auto-placed on clean steel, judged on the repainted crop.

A small placed defect barely moves a whole-image score, so each sample is judged where it was painted:

1. Clean slabs are the box-free regions (at least MIN_CLEAN_SIDE a side) of the validation images of *every*
   class, interleaved by class, so no class's grain dominates. The images are NEU's split or a mill's own split
   folder (`data.read_split`: `pool/` and `val/`, masks or boxes beside the images).
2. Each class in turn paints `per_class` of them with an auto-placed mask (the studio's own `generate`).
3. The masked crop is the mask's bounding box grown by CROP_MARGIN; the same crop of the untouched slab is the
   no-defect control. Real crops are cut alike around the union of each image's boxes of its class:
   validation images are the real side, training-pool images the real-vs-real reference and the realism
   scorer's reference.
4. Per class: KID/FID (steel feature net), class recognition, mean realism and background PSNR.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.batch import default_strength
from engine.boxes import CROP_MARGIN, bounding_box, union
from engine.config import DEFAULT_STEPS, GenerationConfig
from engine.data import LabelledImage, clean_regions, load_rgb, read_split
from engine.evaluation.features import SteelFeatureNet, images_to_tensor, load_feature_net
from engine.evaluation.fidelity import SetDistance, formatted, recognition_rate, rounded, set_distance
from engine.evaluation.realism import RealismScorer
from engine.generation.generate import generate
from engine.generation.pipeline import LoadedPipeline
from engine.masks import mask_image
from engine.progress import ProgressFn

MIN_CLEAN_SIDE = 64


def defect_crop(item: LabelledImage) -> Image.Image | None:
    """A real image cut to the union of its boxes of its own class (all its boxes if none carry its label)."""
    boxes = [b for b in item.boxes if b.label == item.class_name] or item.boxes
    if not boxes:
        return None
    image = load_rgb(item.path)
    return image.crop(union(boxes).grown(image.width, image.height).corners)


def defect_crops(items: list[LabelledImage], classes: list[str]) -> dict[str, list[Image.Image]]:
    """The defect crop of every image of each class that has boxes."""
    crops: dict[str, list[Image.Image]] = {c: [] for c in classes}
    for item in items:
        if item.class_name in crops and (crop := defect_crop(item)) is not None:
            crops[item.class_name].append(crop)
    return crops


def clean_slabs(items: list[LabelledImage], min_side: int = MIN_CLEAN_SIDE) -> list[Image.Image]:
    """Every box-free region of the images as a slab, interleaved by source class (first of each class, …)."""
    by_class: dict[str, list[Image.Image]] = {}
    for item in sorted(items, key=lambda it: (it.class_name, it.index)):
        image = load_rgb(item.path)
        for region in clean_regions(image.width, image.height, item.boxes, min_side):
            by_class.setdefault(item.class_name, []).append(image.crop(region))
    queues = list(by_class.values())
    slabs = []
    for position in range(max((len(q) for q in queues), default=0)):
        slabs += [q[position] for q in queues if position < len(q)]
    return slabs


@dataclass
class MaskedClassRow:
    """One class: its masked crops against real defect crops, beside the no-defect control and real-vs-real."""

    class_name: str
    strength: float
    generated: SetDistance
    clean: SetDistance
    reference: SetDistance
    recognition_generated: float | None
    recognition_clean: float | None
    recognition_real: float | None
    realism_generated: float
    realism_clean: float
    realism_real: float
    background_psnr: float


@dataclass
class MaskedReport:
    """The crop-level report of masked samples on clean regions."""

    rows: list[MaskedClassRow]
    n_slabs: int
    # None: each class at its token's masked strength (the row's `strength`).
    strength: float | None
    steps: int
    seed: int
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"Masked samples on {self.n_slabs} clean regions (all classes), "
            f"strength {self.strength if self.strength is not None else 'per token'}, "
            f"{self.steps} steps, guidance {self.settings.get('guidance_scale')}, seed {self.seed}; "
            "scored on the masked crop against real defect crops",
            f"{'class':<17}{'str':>5}{'n':>4}{'n_real':>7}{'KID gen':>10}{'KID clean':>10}{'KID ref':>10}{'FID gen':>9}"
            f"{'FID clean':>10}{'FID ref':>9}{'rec gen':>8}{'rec cln':>8}{'rec real':>9}"
            f"{'real gen':>9}{'real cln':>9}{'real val':>9}{'bg PSNR':>8}",
        ]
        for row in self.rows:
            g, c, r = row.generated, row.clean, row.reference
            lines.append(
                f"{row.class_name:<17}{row.strength:>5}{g.n_a:>4}{g.n_b:>7}"
                f"{formatted(g.kid_mean, '.4f'):>10}{formatted(c.kid_mean, '.4f'):>10}"
                f"{formatted(r.kid_mean, '.4f'):>10}{formatted(g.fid, '.2f'):>9}{formatted(c.fid, '.2f'):>10}"
                f"{formatted(r.fid, '.2f'):>9}"
                f"{formatted(row.recognition_generated, '.2f'):>8}{formatted(row.recognition_clean, '.2f'):>8}"
                f"{formatted(row.recognition_real, '.2f'):>9}{row.realism_generated:>9.3f}{row.realism_clean:>9.3f}"
                f"{row.realism_real:>9.3f}{row.background_psnr:>8.1f}"
            )
        lines.append(
            "gen = masked crops of the samples; clean = the same crops before painting (no defect); ref = training-pool"
            " defect crops; all against validation defect crops. KID/FID lower is closer; rec = share recognised as"
            " the class; real = mean realism score (0-1)."
        )
        return "\n".join(lines)


@dataclass
class _ReportData:
    """What every run of the report on one split shares: clean slabs, real defect crops, the scorer."""

    classes: list[str]
    slabs: list[Image.Image]
    real_val: dict[str, list[Image.Image]]
    real_pool: dict[str, list[Image.Image]]
    net: SteelFeatureNet
    scorer: RealismScorer
    # Each class paints the same slabs whichever classes run together (its place among all validation classes).
    slab_offset: dict[str, int]


def _load_report_data(
    pipe: LoadedPipeline,
    data_root: Path | str,
    classes: list[str] | None,
    per_class: int,
    feature_net: SteelFeatureNet | None,
) -> _ReportData:
    """Read the split once (`read_split`): clean slabs from validation images, defect crops of validation and pool."""
    pool, val = read_split(data_root)
    classes = classes or [c for c in sorted({it.class_name for it in val}) if c in pipe.tokens]
    if not classes:
        raise ValueError(f"The pipeline has no token for any class of {data_root}.")
    slabs = clean_slabs(val)
    if not slabs:
        raise ValueError(f"No clean region of at least {MIN_CLEAN_SIDE} px in the validation images.")
    real_val, real_pool = defect_crops(val, classes), defect_crops(pool, classes)
    for name, crops in (("validation", real_val), ("training-pool", real_pool)):
        if too_few := [c for c in classes if len(crops[c]) < 2]:
            raise ValueError(f"Fewer than 2 boxed {name} images of: {', '.join(too_few)}.")
    net = (feature_net or load_feature_net()).eval()
    offsets = {name: i * per_class for i, name in enumerate(sorted({it.class_name for it in val}))}
    return _ReportData(classes, slabs, real_val, real_pool, net, RealismScorer(net, real_pool), offsets)


def masked_sample_report(
    pipe: LoadedPipeline,
    data_root: Path | str,
    classes: list[str] | None = None,
    per_class: int = 40,
    strength: float | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    guidance_scale: float | None = None,
    detail_restore: float | None = None,
    window_size: int | None = None,
    feature_net: SteelFeatureNet | None = None,
    save_dir: Path | str | None = None,
    progress: ProgressFn | None = None,
) -> MaskedReport:
    """Auto-place and paint `per_class` defects of each class on clean validation regions; score the crops.

    `strength` None paints each class at its token's masked strength (tuned, else the default), as the studio does.

    `save_dir` (outside the repository) receives each sample, its mask and its crop, for a look by eye.
    """
    data = _load_report_data(pipe, data_root, classes, per_class, feature_net)
    options = {"guidance_scale": guidance_scale, "detail_restore": detail_restore, "window_size": window_size}
    report = _paint_and_score(pipe, data, per_class, strength, steps, seed, options, save_dir, progress)
    report.settings["data_root"] = str(data_root)
    return report


def _paint_and_score(
    pipe: LoadedPipeline,
    data: _ReportData,
    per_class: int,
    strength: float | None,
    steps: int,
    seed: int,
    options: dict,
    save_dir: Path | str | None = None,
    progress: ProgressFn | None = None,
) -> MaskedReport:
    """Per class: paint auto-placed defects on the slabs, cut the masked crops and score them."""
    extra = {key: value for key, value in options.items() if value is not None}
    size = data.net.config.input_size
    rows = []
    total = len(data.classes) * per_class
    for class_index, class_name in enumerate(data.classes):
        class_strength = strength if strength is not None else default_strength(pipe, class_name, masked=True)
        painted, untouched, psnrs = [], [], []
        for i in range(per_class):
            slab = data.slabs[(data.slab_offset[class_name] + i) % len(data.slabs)]
            config = GenerationConfig(
                class_name,
                num_candidates=1,
                strength=class_strength,
                steps=steps,
                seed=seed + i,
                auto_place=True,
                **extra,
            )
            candidate = generate(pipe, slab, config).candidates[0]
            box = bounding_box(candidate.mask).grown(slab.width, slab.height).corners
            painted.append(candidate.image.crop(box))
            untouched.append(slab.convert("RGB").crop(box))
            psnrs.append(candidate.params.masked.quality["background_psnr"])
            if save_dir is not None:
                target = Path(save_dir) / class_name
                target.mkdir(parents=True, exist_ok=True)
                candidate.image.save(target / f"{i:04d}.png")
                mask_image(candidate.mask).save(target / f"{i:04d}_mask.png")
                painted[-1].save(target / f"{i:04d}_crop.png")
            if progress:
                progress(class_index * per_class + i + 1, total, f"{class_name} {i + 1}/{per_class}")
        rows.append(
            _class_row(
                class_name,
                class_strength,
                painted,
                untouched,
                data.real_val[class_name],
                data.real_pool[class_name],
                psnrs,
                data.net,
                data.scorer,
                size,
                seed,
            )
        )
    config = GenerationConfig(data.classes[0], **extra)
    settings = {
        "min_clean_side": MIN_CLEAN_SIDE,
        "crop_margin": CROP_MARGIN,
        **{key: getattr(config, key) for key in options},
        "guidance_scale": config.guidance(masked=True),
    }
    return MaskedReport(rows, len(data.slabs), strength, steps, seed, settings)


def _class_row(class_name, strength, painted, untouched, real, pool, psnrs, net, scorer, size, seed) -> MaskedClassRow:
    gen_x, clean_x, real_x = (images_to_tensor(images, size) for images in (painted, untouched, real))
    # The reference is cut to the generated count, so its KID/FID share the set-size bias of the other rows.
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[: len(painted)]
    ref_x = images_to_tensor([pool[i] for i in order], size)

    def mean_realism(images: list[Image.Image]) -> float:
        return round(float(np.mean([s.score for s in scorer.score_many(images, class_name)])), 4)

    return MaskedClassRow(
        class_name=class_name,
        strength=strength,
        generated=set_distance(gen_x, real_x, net, seed),
        clean=set_distance(clean_x, real_x, net, seed),
        reference=set_distance(ref_x, real_x, net, seed),
        recognition_generated=recognition_rate(net, gen_x, class_name)[0],
        recognition_clean=recognition_rate(net, clean_x, class_name)[0],
        recognition_real=recognition_rate(net, real_x, class_name)[0],
        realism_generated=mean_realism(painted),
        realism_clean=mean_realism(untouched),
        realism_real=mean_realism(real),
        background_psnr=rounded(float(np.mean(psnrs)), 2),
    )


@dataclass
class MaskedStrengthReport:
    """Per class, the masked-crop KID of each strength tried and the one chosen (stored as `masked_strength`)."""

    kid_by_class: dict[str, dict[str, float | None]]
    # None: no strength painted crops closer to real defects than the untouched crops (the default then applies).
    best: dict[str, float | None]
    per_class: int
    clean_kid: dict[str, float | None] = field(default_factory=dict)
    saved_to: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        strengths = sorted({s for row in self.kid_by_class.values() for s in row}, key=float)
        lines = [
            f"Masked-crop KID against validation defect crops, {self.per_class} auto-placed samples per class",
            f"{'class':<17}" + "".join(f"{s:>10}" for s in strengths) + f"{'clean':>10}{'chosen':>8}",
        ]
        for class_name, row in self.kid_by_class.items():
            cells = "".join(f"{formatted(row.get(s), '.4f'):>10}" for s in strengths)
            chosen = self.best[class_name] if self.best[class_name] is not None else "default"
            lines.append(f"{class_name:<17}{cells}{formatted(self.clean_kid.get(class_name), '.4f'):>10}{chosen:>8}")
        lines.append(
            "clean = the untouched crops; a class whose painted crops are never closer to real defects keeps the"
            " default masked strength."
        )
        if self.saved_to:
            lines.append(f"masked_strength written to {self.saved_to}")
        return "\n".join(lines)


def tune_masked_strength(
    adapter: Path | str,
    data_root: Path | str,
    strengths: list[float],
    model: str | None = None,
    classes: list[str] | None = None,
    per_class: int = 24,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    save: bool = True,
    feature_net: SteelFeatureNet | None = None,
    progress: ProgressFn | None = None,
) -> MaskedStrengthReport:
    """Run the masked report at each strength; per class store the strength with the lowest masked-crop KID.

    Only strengths whose crops are closer to real defects than the untouched crops count: otherwise the least
    painting would win. A class where none is stores no masked strength (the default applies). Chosen on the
    validation split's crops, so later masked reports on that split are optimistic for it.
    """
    from engine.adapters import save_tuned_strength
    from engine.generation.pipeline import load_pipeline

    if not strengths or any(not 0 < s <= 1 for s in strengths):
        raise ValueError(f"Strengths must lie in (0, 1], got {strengths}.")
    pipe = load_pipeline(model, adapter)
    data = _load_report_data(pipe, data_root, classes, per_class, feature_net)
    kid_by_class: dict[str, dict[str, float | None]] = {}
    clean_kid: dict[str, float | None] = {}
    for strength in sorted(strengths):
        report = _paint_and_score(pipe, data, per_class, strength, steps, seed, {}, progress=progress)
        for row in report.rows:
            kid_by_class.setdefault(row.class_name, {})[str(strength)] = row.generated.kid_mean
            clean_kid[row.class_name] = row.clean.kid_mean
    best: dict[str, float | None] = {}
    for class_name, row in kid_by_class.items():
        clean = clean_kid[class_name]
        better = [s for s, kid in row.items() if kid is not None and (clean is None or kid < clean)]
        best[class_name] = float(min(better, key=lambda s: row[s])) if better else None
    result = MaskedStrengthReport(kid_by_class, best, per_class, clean_kid)
    if save:
        for class_name, strength in best.items():
            result.saved_to = str(save_tuned_strength(adapter, class_name, strength, key="masked_strength"))
    return result
