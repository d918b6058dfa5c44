"""Every parameter that made a candidate: one typed record for engine, studio, export and UI.

A candidate's parameters travel as JSON (the PNG's `studio` text chunk, the sample row's `params_json`, the export
manifest). `CandidateParameters.as_dict` writes that JSON and `CandidateParameters.from_dict` reads it back, including
files written before a field existed; keys this version does not know are kept and written back unchanged.

Torch-free (numpy and OpenCV through `engine.boxes`), so the studio reads parameters without loading a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import Image

from engine.boxes import Box, union


@dataclass(frozen=True)
class Window:
    """The rectangle of the source a window img2img repainted: `size` wide and `height` high (None: a square)."""

    x: int
    y: int
    size: int
    height: int | None = None

    def as_dict(self) -> dict[str, int]:
        extent = {} if self.height is None else {"height": self.height}
        return {"x": self.x, "y": self.y, "size": self.size, **extent}

    @property
    def box(self) -> Box:
        return Box(self.x, self.y, self.x + self.size, self.y + (self.size if self.height is None else self.height))


@dataclass(frozen=True)
class SlabWindow:
    """One rectangle of the slab a masked repaint denoised in one pass (its part that lies on the slab)."""

    x: int
    y: int
    width: int
    height: int

    def as_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


@dataclass
class MaskedRepaint:
    """How a masked repaint was made: its windows, its mask and the boxes of the mask's components."""

    windows: list[SlabWindow]
    mask_source: str
    mask_sha256: str
    mask_grow_px: int
    window_scale: float | None = None
    boxes: list[Box] = field(default_factory=list)
    # Background preservation (PSNR/SSIM outside the grown mask), from `engine.generation.quality`.
    quality: dict[str, float] = field(default_factory=dict)
    # The defect colour painted in ([log R/G, log B/G] against the slab, `variation.defect_tint`); None: the slab's.
    defect_tint: list[float] | None = None
    # How far that colour was laid on what the model drew rather than over the whole mask (0–1,
    # `variation.defect_colour_structure`); None: evenly.
    defect_structure: float | None = None
    # The class's real defects pasted in before the repaint (`engine.generation.exemplars.paste_exemplars`): source
    # file, box, flips and where each went; empty when the model drew the defect from the slab alone.
    pasted: list[dict] = field(default_factory=list)

    def extent(self) -> Box | None:
        """The smallest box holding every window, or None without windows."""
        return union(Box(w.x, w.y, w.x + w.width, w.y + w.height) for w in self.windows)


# A class's own real images are its realism reference from this many on (`engine.evaluation.realism`); the typical
# distance of fewer is noise: with the five images of a NEU class as the reference, a batch flagged 23 inclusion
# candidates for 30 kept and stopped at patches (30 flagged for 23 kept), where ten images of each flagged none.
MIN_OWN_REFERENCES = 10
# A new mill's class (neither ten images nor NEU's shipped features) is its own reference from this many on, each
# image with its eight flips and rotations (`RealismScorer(flips_and_rotations=True)`). On the yardstick with renamed
# classes, three images each gated batches without stopping one (`docs/results.md`, "A new mill's classes").
MIN_FEW_SHOT_REFERENCES = 3


@dataclass
class Realism:
    """A candidate's realism score (`engine.evaluation.realism`) on its repainted region."""

    score: float
    # None for a class the feature network was not trained on (the score is then the typicality alone).
    class_probability: float | None = None
    knn_distance: float | None = None
    distance_percentile: float | None = None
    predicted_class: str | None = None
    # What the candidate was compared with ("NEU training pool (shipped features)", "12 of the class's own real
    # images").
    reference: str | None = None
    # The untouched slab's score on the same region: the baseline the candidate's score is read against.
    untouched_source_score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class CandidateParameters:
    """The generation settings, model, adapter and source of one candidate, and what was learnt about it since."""

    class_name: str
    token: str
    prompt: str
    strength: float
    steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    negative_prompt: str = ""
    detail_restore: float = 0.0
    sampler: str = ""
    model_ref: str = ""
    model_hash: str = ""
    adapter_path: str | None = None
    adapter_version: int | str | None = None
    source_sha256: str = ""
    resolution: int | None = None
    software: str = "steel-defect-studio"
    # Where it was repainted: a window (window img2img) or a mask (masked repaint); neither for old files.
    window: Window | None = None
    masked: MaskedRepaint | None = None
    # Lineage of a varied init (`VariedInit.describe`: kind, sources and how it was made) and the source's file name.
    init: dict[str, Any] | None = None
    # Capture variation applied to the finished image (`variation.capture_variation`, `class_stats.pool_exposure`,
    # `variation.tint_variation`: amount and what they drew).
    capture: dict[str, Any] | None = None
    source_file: str | None = None
    # Set by the studio when it stores the candidate (the batch folder: for a command-line batch).
    adapter_folder: str | None = None
    source_image_id: int | None = None
    batch_folder: str | None = None
    # The realism gate: the score, the threshold it was held against and whether that flagged it.
    realism: Realism | None = None
    realism_threshold: float | None = None
    pre_rejected: bool | None = None
    # Keys of the JSON this version does not know, written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def boxes(self) -> list[Box]:
        """The boxes of the placed defect: a masked repaint's mask components; none for a window img2img."""
        return list(self.masked.boxes) if self.masked else []

    @property
    def init_kind(self) -> str:
        """How the init image was made (a kind of `variation.INIT_KINDS`); "source" when it was the image itself."""
        return (self.init or {}).get("kind", "source")

    @property
    def init_is_source(self) -> bool:
        """Whether the init was the source image itself, pixel for pixel (not varied, not turned a quarter)."""
        return self.init_kind == "source" and "turn" not in (self.init or {})

    def repainted_box(self, width: int | None = None, height: int | None = None) -> Box:
        """The box of a `width` × `height` candidate (default: its own size) the model repainted: the window; for a
        masked repaint the union of its boxes grown a little (as `evaluate masked` crops real defects), else its
        windows' extent; else the whole image."""
        width, height = width or self.width, height or self.height
        if self.window is not None:
            return self.window.box
        if self.masked is not None:
            if (around := union(self.masked.boxes)) is not None:
                return around.grown(width, height)
            if (extent := self.masked.extent()) is not None:
                return extent
        return Box(0, 0, width, height)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (PNG metadata, database row, export manifest)."""
        data: dict[str, Any] = {
            "software": self.software,
            "class_name": self.class_name,
            "token": self.token,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "strength": self.strength,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "detail_restore": self.detail_restore,
            "seed": self.seed,
            "sampler": self.sampler,
            "model_ref": self.model_ref,
            "model_hash": self.model_hash,
            "adapter_path": self.adapter_path,
            "adapter_version": self.adapter_version,
            "source_sha256": self.source_sha256,
            "resolution": self.resolution,
            "width": self.width,
            "height": self.height,
            "window": self.window.as_dict() if self.window else None,
        }
        if self.masked is not None:
            data |= {
                "windows": [w.as_dict() for w in self.masked.windows],
                "window_scale": self.masked.window_scale,
                "mask_source": self.masked.mask_source,
                "mask_sha256": self.masked.mask_sha256,
                "mask_grow_px": self.masked.mask_grow_px,
                "boxes": [box.as_dict() for box in self.masked.boxes],
                "quality": dict(self.masked.quality),
            }
            if self.masked.defect_tint is not None:
                data["defect_tint"] = self.masked.defect_tint
            if self.masked.defect_structure is not None:
                data["defect_structure"] = self.masked.defect_structure
            if self.masked.pasted:
                data["pasted"] = self.masked.pasted
        optional = {
            "init": self.init,
            "capture": self.capture,
            "source_file": self.source_file,
            "adapter_folder": self.adapter_folder,
            "source_image_id": self.source_image_id,
            "batch_folder": self.batch_folder,
            "realism": self.realism.as_dict() if self.realism else None,
            "realism_threshold": self.realism_threshold,
            "pre_rejected": self.pre_rejected,
        }
        return data | {k: v for k, v in optional.items() if v is not None} | self.extra

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CandidateParameters:
        """Read the JSON form back (tolerates fields added since a file was written; keeps unknown keys)."""
        data = dict(data)
        masked = None
        if "windows" in data or "mask_sha256" in data:
            masked = MaskedRepaint(
                windows=[SlabWindow(**w) for w in data.pop("windows", None) or []],
                mask_source=data.pop("mask_source", "drawn"),
                mask_sha256=data.pop("mask_sha256", ""),
                mask_grow_px=data.pop("mask_grow_px", 0),
                window_scale=data.pop("window_scale", None),
                boxes=[Box.of(b) for b in data.pop("boxes", None) or []],
                quality=data.pop("quality", None) or {},
                defect_tint=data.pop("defect_tint", None),
                defect_structure=data.pop("defect_structure", None),
                pasted=data.pop("pasted", None) or [],
            )
        window = data.pop("window", None)
        realism = data.pop("realism", None)
        known = {f.name for f in fields(cls)} - {"window", "masked", "realism", "extra"}
        values = {k: data.pop(k) for k in list(data) if k in known}
        return cls(
            **values,
            window=Window(**window) if window else None,
            masked=masked,
            realism=Realism(**realism) if realism else None,
            extra=data,
        )


def repainted_region(image: Image.Image, params: CandidateParameters) -> Image.Image:
    """The part of a candidate the model repainted (`CandidateParameters.repainted_box`): what the realism score
    judges, in batch generation and in the studio alike, and what the review desk shows up close."""
    box = params.repainted_box(image.width, image.height)
    return image if box == Box(0, 0, image.width, image.height) else image.crop(box.corners)
