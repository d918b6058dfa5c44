"""Strength tuning: the img2img strength per class whose samples lie closest to the real images (KID), written
into the adapter folder as its proposed strength.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from engine.config import DEFAULT_STEPS
from engine.data import load_rgb
from engine.evaluation.features import (
    SteelFeatureNet,
    images_to_tensor,
    load_feature_net,
    load_tensor,
)
from engine.evaluation.fidelity import class_images, formatted, recognition_rate, set_distance
from engine.progress import ProgressFn

# StableSDG's range: below 0.3 img2img returns the init image nearly unchanged.
DEFAULT_STRENGTHS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class StrengthRow:
    """One strength of the sweep."""

    strength: float
    n: int
    kid_mean: float | None
    kid_std: float | None
    fid: float | None
    recognition_rate: float | None


@dataclass
class StrengthReport:
    """The sweep's table and the chosen strength.

    `lowest_kid_strength` has the lowest KID; `best_strength` is the largest strength whose KID is within
    one subset-std of that lowest one: as realistic as the best within noise, but changing the init more
    (low strengths score well partly by returning the init image).
    """

    class_name: str
    best_strength: float
    lowest_kid_strength: float
    rows: list[StrengthRow] = field(default_factory=list)
    n_val: int = 0
    saved_to: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"Strength sweep for {self.class_name} (KID vs {self.n_val} real validation images)",
            f"{'strength':>8}{'n':>5}{'KID':>24}{'FID':>10}{'recog':>7}",
        ]
        for row in self.rows:
            kid = f"{formatted(row.kid_mean, '.5f')} ± {formatted(row.kid_std, '.5f')}"
            mark = "  <- chosen" if row.strength == self.best_strength else ""
            mark += "  (lowest KID)" if row.strength == self.lowest_kid_strength else ""
            lines.append(
                f"{row.strength:>8.2f}{row.n:>5}{kid:>24}{formatted(row.fid, '.2f'):>10}"
                f"{formatted(row.recognition_rate, '.2f'):>7}{mark}"
            )
        if self.saved_to:
            lines.append(f"default_strength {self.best_strength} written to {self.saved_to}")
        return "\n".join(lines)


def tune_strength(
    generate_fn: Callable[[float], list[Image.Image]],
    class_name: str,
    val_dir: Path | str,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    feature_net: SteelFeatureNet | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> StrengthReport:
    """Generate at each strength and score by KID against the class's real validation images."""
    # 1. Check inputs
    if not strengths:
        raise ValueError("Give at least one strength.")
    if bad := [s for s in strengths if not 0 < s <= 1]:
        raise ValueError(f"Strengths must be in (0, 1], got {bad}.")
    net = (feature_net or load_feature_net()).eval()
    size = net.config.input_size
    real = load_tensor(class_images(val_dir, class_name), size)
    if len(real) < 2:
        raise ValueError(f"Need at least 2 validation images of {class_name!r}.")

    # 2. Generate and score each strength
    rows = []
    for i, strength in enumerate(strengths):
        images = generate_fn(float(strength))
        if len(images) < 2:
            raise ValueError(f"generate_fn returned {len(images)} images at strength {strength}; need at least 2.")
        generated = images_to_tensor(images, size)
        distance = set_distance(generated, real, net, seed)
        rate, _ = recognition_rate(net, generated, class_name)
        rows.append(StrengthRow(float(strength), len(images), distance.kid_mean, distance.kid_std, distance.fid, rate))
        if progress:
            progress(i + 1, len(strengths), f"strength {strength:.2f}: KID {formatted(distance.kid_mean, '.5f')}")

    # 3. Lowest KID, then the strongest setting tied with it
    lowest = min(rows, key=lambda r: r.kid_mean)
    tied = [r for r in rows if r.kid_mean - r.kid_std <= lowest.kid_mean + lowest.kid_std]
    best = max(tied, key=lambda r: r.strength)
    return StrengthReport(class_name, best.strength, lowest.strength, rows, len(real))


def default_init_folder(val_dir: Path | str, class_name: str) -> Path:
    """Init images when none are given: `<class>/` in a `pool` or `train` folder beside the validation one."""
    val_dir = Path(val_dir)
    for sibling in ("pool", "train"):
        candidate = val_dir.parent / sibling / class_name
        if candidate.is_dir() and candidate.resolve() != (val_dir / class_name).resolve():
            return candidate
    raise ValueError(f"No init images: pass --init (no pool/{class_name} or train/{class_name} beside {val_dir}).")


def tune_adapter_strength(
    adapter: Path | str,
    class_name: str,
    val_dir: Path | str,
    init: Path | str | None = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    num: int = 16,
    model: str | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    save: bool = True,
    feature_net: SteelFeatureNet | None = None,
    progress: ProgressFn | None = None,
) -> StrengthReport:
    """Tune one token of an adapter: generate `num` images per strength from the init images, save the best."""
    import tempfile

    from engine.adapters import read_adapter, save_tuned_strength
    from engine.batch import generate_to_folder
    from engine.generation.pipeline import load_pipeline

    # 1. Check inputs and load the pipeline once
    tokens = read_adapter(adapter).tokens
    if class_name not in tokens:
        raise ValueError(f"The adapter has no token for {class_name!r}; it has {', '.join(tokens)}.")
    init = Path(init) if init else default_init_folder(val_dir, class_name)
    class_images(val_dir, class_name)
    pipe = load_pipeline(model, adapter)

    # 2. Sweep, each strength's images in a temporary folder (the model's render: no gate, no capture variation)
    with tempfile.TemporaryDirectory(prefix="tune-strength-") as tmp:

        def generate_fn(strength: float) -> list[Image.Image]:
            out = Path(tmp) / f"{strength:.2f}"
            paths = generate_to_folder(
                None,
                None,
                class_name,
                init,
                num,
                out,
                strength=strength,
                steps=steps,
                seed=seed,
                pipe=pipe,
                realism_threshold=None,
                capture_variation=0.0,
            )
            return [load_rgb(p) for p in paths]

        report = tune_strength(generate_fn, class_name, val_dir, strengths, feature_net, seed, progress)

    # 3. Store the choice with the token
    if save:
        report.saved_to = str(save_tuned_strength(adapter, class_name, report.best_strength))
    return report
