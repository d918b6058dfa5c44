"""Defect classes and their adapters: registering trained adapters, versions and rollback, tuned strengths."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from engine.adapters import (
    DEFAULT_STRENGTH,
    EMBEDDED_TOKENS,
    is_adapter,
    learnt_summary,
    proposed_strength,
    read_adapter,
)
from storage import repository
from webapp.studio.context import StudioContext
from webapp.studio.results import AdapterVersionInfo, ClassInfo

logger = logging.getLogger(__name__)

# Class names become tokens "<name>" and folder names, so they stay short and plain; single inner spaces are
# allowed ("rolled in scale"), as plants name their classes that way.
CLASS_NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]| (?! )){0,62}[A-Za-z0-9_-]?")


def check_class_name(name: str | None) -> str:
    """A defect class name, stripped; raises ValueError unless it is 1-64 letters, digits, '_', '-' or single spaces."""
    name = (name or "").strip()
    if not CLASS_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"Class name {name!r} must be 1-64 letters, digits, '_', '-' or single spaces (starting with no symbol)."
        )
    return name


class Classes:
    """The defect classes, each with its token, proposed strengths and versions of trained adapters."""

    def __init__(self, ctx: StudioContext) -> None:
        self.ctx = ctx
        self.database = ctx.database

    def register_shipped_adapter(self) -> None:
        """On first start with the embedded model, register its shipped defect tokens as version 1 of each class."""
        if not self.ctx.uses_embedded_model():
            return
        if not is_adapter(EMBEDDED_TOKENS):
            return
        info = read_adapter(EMBEDDED_TOKENS)
        path = str(EMBEDDED_TOKENS.resolve())
        with self.database.session() as s:
            known = {v.path for name in info.tokens for v in repository.list_adapter_versions(s, name)}
        if path not in known:
            self.register_adapter(EMBEDDED_TOKENS)

    def register_adapter(self, path: Path, run_id: int | None = None) -> list[ClassInfo]:
        """Make a finished adapter folder the active adapter of each class it holds (creating the classes).

        A folder registered before becomes active again (a rollback); a new folder becomes the next version.
        A token's tuned `default_strength` (tokens.json, written by tune-strength) becomes its class's default.
        """
        path = Path(path).resolve()
        info = self.ctx.read_matching_adapter(path)
        with self.database.transaction() as s:
            for name, token in info.tokens.items():
                repository.ensure_defect_class(s, check_class_name(name), token.token, token.init_word)
                if token.default_strength:
                    repository.set_default_strength(s, name, token.default_strength)
                earlier = [v for v in repository.list_adapter_versions(s, name) if v.path == str(path)]
                if earlier:
                    if not earlier[-1].is_active:
                        repository.activate_adapter_version(s, earlier[-1].id)
                else:
                    repository.register_adapter_version(s, name, str(path), run_id=run_id)
        return [c for c in self.list_classes() if c.name in info.tokens]

    def sync_default_strengths(self) -> None:
        """Copy each active adapter's tuned strengths from its tokens.json to the classes (done at start).

        `tune-strength` writes into the adapter folder, not the database; this carries its choice to the UI.
        An unreadable tokens.json is logged and skipped so one broken folder does not stop the studio. The file
        is read as JSON here, so that a start does not import torch.
        """
        with self.database.transaction() as s:
            for defect_class in repository.list_defect_classes(s):
                adapter = repository.active_adapter(s, defect_class.name)
                if adapter is None:
                    continue
                try:
                    token = read_adapter(adapter.path).tokens.get(defect_class.name)
                    tuned = token.default_strength if token else None
                except (OSError, ValueError, KeyError, TypeError) as error:
                    logger.warning(
                        "Cannot read the tuned strength of %s in %s: %s", defect_class.name, adapter.path, error
                    )
                    continue
                if tuned is None or tuned == defect_class.default_strength:
                    continue
                if not isinstance(tuned, int | float) or not 0.0 < tuned <= 1.0:
                    logger.warning("Ignoring the tuned strength %s of %s in %s", tuned, defect_class.name, adapter.path)
                    continue
                repository.set_default_strength(s, defect_class.name, tuned)

    def list_classes(self) -> list[ClassInfo]:
        """Every defect class with its token, proposed strength and active adapter."""
        with self.database.session() as s:
            classes = []
            for defect_class in repository.list_defect_classes(s):
                adapter = repository.active_adapter(s, defect_class.name)
                adapter_path = adapter.path if adapter else None
                classes.append(
                    ClassInfo(
                        name=defect_class.name,
                        token=defect_class.token,
                        default_strength=defect_class.default_strength or DEFAULT_STRENGTH,
                        tuned_strength=defect_class.default_strength,
                        adapter_version=adapter.version if adapter else None,
                        adapter_path=adapter_path,
                        masked_strength=proposed_strength(adapter_path, defect_class.name, masked=True),
                    )
                )
            return classes

    def adapter_versions(self, class_name: str) -> list[AdapterVersionInfo]:
        """Every adapter version of a class, oldest first."""
        with self.database.session() as s:
            return [
                AdapterVersionInfo(
                    v.id,
                    v.class_name,
                    v.version,
                    v.run_id,
                    v.path,
                    v.is_active,
                    v.created_at.isoformat(),
                    learnt_summary(v.path, class_name),
                )
                for v in repository.list_adapter_versions(s, class_name)
            ]

    def activate_adapter_version(self, class_name: str, version: int) -> AdapterVersionInfo:
        """Make a version of a class's adapter the one generation uses (roll back or forward)."""
        with self.database.transaction() as s:
            chosen = next((v for v in repository.list_adapter_versions(s, class_name) if v.version == version), None)
            if chosen is None:
                raise ValueError(f"Class {class_name!r} has no adapter version {version}.")
            if not is_adapter(chosen.path):
                raise ValueError(f"Adapter version {version} of {class_name!r} is missing on disk ({chosen.path}).")
            repository.activate_adapter_version(s, chosen.id)
        return next(v for v in self.adapter_versions(class_name) if v.version == version)

    def trainable_classes(self) -> list[str]:
        """Class names with a learned token or uploaded real defect images: what a fine-tune can learn."""
        with self.database.session() as s:
            known = {c.name for c in repository.list_defect_classes(s)}
            uploaded = set(repository.source_counts_by_class(s, "defect"))
        return sorted(known | uploaded)
