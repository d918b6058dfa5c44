"""Realism scores at generation time: each class's reference (uploaded real defects or NEU's shipped features)."""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import asdict
from typing import Any

from PIL import Image

from storage import repository
from webapp.studio.context import StudioContext

logger = logging.getLogger(__name__)

# Realism: at most MAX_REALISM_REFERENCES of a class's uploaded real defects (the oldest) are its reference, which
# bounds the feature pass to a few seconds; how many it takes is the engine's rule (`class_realism_scorer`).
MAX_REALISM_REFERENCES = 300
REALISM_REJECT_REASON = "below realism threshold"


def check_realism_threshold(threshold: float | None) -> float | None:
    """A realism threshold in [0, 1], or None (off); raises ValueError otherwise."""
    if threshold is None:
        return None
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"The realism threshold must lie between 0 and 1, got {threshold}.")
    return threshold


class Realism:
    """Scorers per class, built once per set of reference images and kept until the class's uploads change."""

    def __init__(self, ctx: StudioContext) -> None:
        self.ctx = ctx
        self.database, self.files = ctx.database, ctx.files
        self._lock = threading.Lock()
        self._shipped_references: dict[str, Any] | None = None
        self._scorers: dict[str, tuple[tuple[str, ...], tuple[Any, str] | None]] = {}

    def scorer(self, class_name: str) -> tuple[Any, str] | None:
        """The class's RealismScorer and a description of its reference, or None when it has no reference.

        The reference is the class's uploaded real defects once there are enough of them, else the shipped features
        of NEU's training pool for a NEU class, else a new class's few uploads with their flips and rotations
        (`engine.evaluation.realism.class_realism_scorer`). A scorer is kept until the class's uploads change.
        """
        from engine.evaluation.features import image_to_array
        from engine.evaluation.realism import class_realism_scorer

        with self.database.session() as s:
            rows = repository.list_source_images(s, "defect", class_name, MAX_REALISM_REFERENCES, 0)
            shas = tuple(row.sha256 for row in rows)
        with self._lock:
            cached = self._scorers.get(class_name)
            if cached is not None and cached[0] == shas:
                return cached[1]
            net = self.ctx.feature_net()
            if net is None:
                return None
            size = net.config.input_size
            images = []
            for sha256 in shas:
                with Image.open(io.BytesIO(self.files.read(sha256))) as opened:
                    images.append(Image.fromarray(image_to_array(opened, size)))
            found = class_realism_scorer(class_name, images, net, self._load_shipped_references())
            self._scorers[class_name] = (shas, found)
            return found

    def score(self, class_name: str, images: list[Image.Image]) -> list[dict[str, Any] | None]:
        """Each image's realism for the class with its parts and reference, or None where it has no reference."""
        found = self.scorer(class_name)
        if found is None:
            return [None] * len(images)
        scorer, reference = found
        return [{**asdict(score), "reference": reference} for score in scorer.score_many(images, class_name)]

    def _load_shipped_references(self) -> dict[str, Any]:
        """The shipped NEU reference features by class, loaded once; empty (logged) if missing or stale."""
        if self._shipped_references is None:
            from engine.evaluation.realism import load_reference_features

            try:
                self._shipped_references = load_reference_features()
            except (FileNotFoundError, ValueError) as error:
                logger.warning("NEU classes without uploaded real defects get no realism score: %s", error)
                self._shipped_references = {}
        return self._shipped_references
