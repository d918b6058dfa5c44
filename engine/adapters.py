"""The adapter index: an adapter folder's `tokens.json` (its tokens, tuned strengths, base model), torch-free.

An adapter folder holds one `learned_embeds-<class>.safetensors` per class (textual inversion), optionally
`pytorch_lora_weights.safetensors`, and `tokens.json`, written last, which marks the folder complete.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import DEFAULT_MASKED_STRENGTH, EMBEDDED_MODEL, GenerationConfig

# The defect tokens shipped with the embedded prior: an ordinary adapter folder.
EMBEDDED_TOKENS = EMBEDDED_MODEL.parent / "steel-prior-tokens"
TOKENS_FILE = "tokens.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
# Tuned strengths a token can carry: for img2img of a whole window (tune-strength) and a masked repaint.
STRENGTH_KEYS = ("default_strength", "masked_strength")
# `TokenInfo.defect_masks` of a class whose defect colour was learnt from masks estimated from its images.
ESTIMATED_MASKS = "estimated"
# A defect colour against the steel smaller than this (log R/G and B/G together) is described as the steel's.
MIN_DESCRIBED_TINT = 0.03
# The strength proposed for a whole window when a token has no tuned one.
DEFAULT_STRENGTH = GenerationConfig.strength


@dataclass
class TokenInfo:
    """A learned defect token inside an adapter folder."""

    class_name: str
    token: str
    embedding_file: str
    init_word: str = ""
    default_strength: float | None = None
    masked_strength: float | None = None
    # The class's defects' colour against the steel around them, [log R/G, log B/G] (`variation.defect_tint`);
    # a masked repaint paints its defect in it. None: grey, or no defect masks to tell.
    defect_tint: list[float] | None = None
    # How far that colour lies on the defect's structure rather than filling its mask, 0–1
    # (`variation.defect_colour_structure`); None: evenly.
    defect_structure: float | None = None
    # Where that colour was read: None, the masks that came with the images; ESTIMATED_MASKS, masks estimated from
    # the images themselves (`masks.estimate_defect_mask`), as for a class fine-tuned on bare captures.
    defect_masks: str | None = None
    # Auto-place statistics from the class's own defect masks (`placement.learnt_statistics`); None: the shipped ones.
    placement: dict | None = None
    # The median short side (px) of the class's fine-tuning images: the slab pixels its token and LoRA learnt per
    # model resolution (a square view of that side is resized to it). None: not recorded (older adapters).
    view_side: float | None = None

    @property
    def own_defects(self) -> dict | None:
        """The one class entry of `placement` (its boxes, defects per image), or None."""
        return next(iter(self.placement["classes"].values())) if self.placement else None

    def learnt_summary(self) -> str:
        """What the adapter learnt of the class beside its token and LoRA, in words: tuned strengths, its defects'
        colour against their steel and where it lies, auto-place from its own boxes, and its captures' size (the
        scale a masked repaint paints it at, where smaller than the prior's)."""
        parts = []
        tuned = [
            f"{value:g} ({kind})"
            for value, kind in ((self.default_strength, "whole window"), (self.masked_strength, "masked"))
            if value
        ]
        if tuned:
            parts.append("tuned strength " + ", ".join(tuned))
        if self.defect_tint is not None and math.hypot(*self.defect_tint) >= MIN_DESCRIBED_TINT:
            red, blue = self.defect_tint
            place = (
                f", {self.defect_structure:.0%} of it on the defect itself"
                if self.defect_structure
                else ", evenly over the defect"
            )
            shades = [
                word
                for value, word in ((red, "redder"), (-red, "less red"), (blue, "bluer"), (-blue, "less blue"))
                if value >= MIN_DESCRIBED_TINT / 2
            ]
            estimated = self.defect_masks == ESTIMATED_MASKS
            source = " (estimated from its images: none came with a mask)" if estimated else ""
            parts.append(
                f"defects {' and '.join(shades)} than their steel (log R/G {red:+.2f}, log B/G {blue:+.2f}){place}"
                f"{source}"
            )
        elif self.defect_tint is not None:
            parts.append("defects the colour of their steel")
        if (own := self.own_defects) is not None:
            images = sum(own["per_image"].values())
            width, height = (round(statistics.median(side)) for side in zip(*own["boxes"], strict=True))
            parts.append(
                f"auto-place from its own {plural(len(own['boxes']), 'defect')} in {plural(images, 'image')} "
                f"(median {width} × {height} px in {self.placement['reference_size']} px captures"
                f"{', drawn as lines' if own.get('shape') == 'line' else ''})"
            )
        scale = f" Learnt from captures {self.view_side:g} px on their short side." if self.view_side else ""
        if not parts:
            return "Its token and LoRA (no masks to learn colour or placement from)." + scale
        summary = "; ".join(parts) + "."
        return summary[0].upper() + summary[1:] + scale

    def proposed_strength(self, masked: bool = False) -> float:
        """The tuned strength for a whole window (or a masked repaint), else the studio's default."""
        tuned = self.masked_strength if masked else self.default_strength
        return tuned or (DEFAULT_MASKED_STRENGTH if masked else DEFAULT_STRENGTH)


@dataclass
class AdapterInfo:
    """What an adapter folder holds: one token per class and optionally a LoRA."""

    path: Path
    tokens: dict[str, TokenInfo] = field(default_factory=dict)
    has_lora: bool = False
    base_model_hash: str = ""

    @property
    def version(self) -> str:
        return self.path.name


def is_adapter(path: str | os.PathLike) -> bool:
    """Whether a folder is a finished adapter (its index was written)."""
    return (Path(path) / TOKENS_FILE).is_file()


def read_adapter(path: str | os.PathLike) -> AdapterInfo:
    """Read an adapter folder's index; raises ValueError if the folder is not a finished adapter."""
    path = Path(path)
    if not is_adapter(path):
        raise ValueError(f"{path} is not a finished adapter folder (no {TOKENS_FILE}).")
    data = json.loads((path / TOKENS_FILE).read_text())
    tokens = {name: TokenInfo(class_name=name, **info) for name, info in data["tokens"].items()}
    return AdapterInfo(path, tokens, (path / LORA_FILE).is_file(), data.get("base_model_hash", ""))


def write_adapter_index(path: str | os.PathLike, index: dict[str, Any]) -> Path:
    """Write `tokens.json` atomically (a temporary file renamed), so a reader never sees half of it."""
    target = Path(path) / TOKENS_FILE
    temporary = target.with_name(TOKENS_FILE + ".tmp")
    temporary.write_text(json.dumps(index, indent=2))
    os.replace(temporary, target)
    return target


def save_tuned_strength(
    adapter_dir: str | os.PathLike, class_name: str, strength: float | None, key: str = "default_strength"
) -> Path:
    """Store a tuned strength (`default_strength`, or `masked_strength` for masked repaints) in the class's entry
    of the adapter's index (None removes it, so the default applies); returns the index file."""
    if key not in STRENGTH_KEYS:
        raise ValueError(f"A tuned strength is one of {', '.join(STRENGTH_KEYS)}, got {key!r}.")
    if strength is not None and not 0 < strength <= 1:
        raise ValueError(f"Strength must be in (0, 1], got {strength}.")
    if not is_adapter(adapter_dir):
        raise ValueError(f"{adapter_dir} is not a finished adapter folder (no {TOKENS_FILE}).")
    data = json.loads((Path(adapter_dir) / TOKENS_FILE).read_text())
    if class_name not in data.get("tokens", {}):
        raise ValueError(f"The adapter has no token for {class_name!r}; it has {', '.join(data.get('tokens', {}))}.")
    if strength is None:
        data["tokens"][class_name].pop(key, None)
    else:
        data["tokens"][class_name][key] = round(float(strength), 3)
    return write_adapter_index(adapter_dir, data)


def proposed_strength(adapter_dir: str | os.PathLike | None, class_name: str, masked: bool = False) -> float:
    """The strength to propose for a class: its token's tuned one in the adapter, else the studio's default.

    An unreadable or foreign index falls back to the default (it is a proposal, not a requirement)."""
    token = _readable_token(adapter_dir, class_name)
    if token is not None:
        return token.proposed_strength(masked)
    return DEFAULT_MASKED_STRENGTH if masked else DEFAULT_STRENGTH


def learnt_summary(adapter_dir: str | os.PathLike, class_name: str) -> str:
    """What an adapter folder learnt of a class, in words (`TokenInfo.learnt_summary`); "" where it cannot tell."""
    token = _readable_token(adapter_dir, class_name)
    return token.learnt_summary() if token else ""


def _readable_token(adapter_dir: str | os.PathLike | None, class_name: str) -> TokenInfo | None:
    """A class's token in an adapter folder; None without a folder, or where its index is unreadable or foreign."""
    if adapter_dir is None:
        return None
    try:
        return read_adapter(adapter_dir).tokens.get(class_name)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plural(count: int, noun: str) -> str:
    """`count` and `noun`, with an s unless one."""
    return f"{count} {noun}" + ("" if count == 1 else "s")
