"""Generation: candidates on a clean slab in the studio, batches from a class's real images (in the studio or from
the command line), stored as pending samples with their lineage."""

from __future__ import annotations

import io
import logging
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from engine.config import DEFAULT_REALISM_THRESHOLD, GenerationConfig
from engine.generation.parameters import CandidateParameters, repainted_region
from engine.generation.parameters import Realism as RealismRecord
from engine.progress import ProgressFn, StopFn
from storage import repository
from storage.files import sha256_hex
from storage.tables import utc_now
from webapp.studio.classes import check_class_name
from webapp.studio.context import StudioContext, require_source
from webapp.studio.realism import Realism, check_realism_threshold
from webapp.studio.results import CandidateInfo, GenerationOutcome, SourceInfo, StoredBatch
from webapp.studio.sources import Sources

if TYPE_CHECKING:
    from engine.generation.generate import Candidate

logger = logging.getLogger(__name__)


class Generation:
    """Generate candidates and store them, with realism scores, as pending samples."""

    def __init__(self, ctx: StudioContext, sources: Sources, realism: Realism) -> None:
        self.ctx = ctx
        self.database, self.files = ctx.database, ctx.files
        self.sources, self.realism = sources, realism

    def generate_candidates(
        self,
        source_id: int,
        config: GenerationConfig,
        user: str,
        progress: ProgressFn | None = None,
        mask: Image.Image | None = None,
        realism_threshold: float | None = None,
        paste_real_defects: bool = False,
    ) -> GenerationOutcome:
        """Generate candidates on a clean slab with a class's active adapter and store them as pending samples.

        With a `mask` (the slab's size, white = repaint) or `config.auto_place`, only the masked region is
        repainted; each sample then stores its mask (file store) and the boxes of the mask's components. With
        `paste_real_defects` and auto-place, each candidate starts from the slab with the class's boxed real defects
        pasted at the auto-placed places (`Sources.class_exemplars`; none boxed: the model paints them alone).
        Each candidate's repainted region gets a realism score (see `Realism.scorer`), stored in its row and,
        with the class probability and predicted class, in its params. Candidates scoring below
        `realism_threshold` are flagged "pre_rejected" but stay pending: the user decides.
        """
        from engine.generation.generate import generate

        # 1. Check inputs
        threshold = check_realism_threshold(realism_threshold)
        slab = self._slab_and_adapter(source_id, config.class_name)
        exemplars = self.sources.class_exemplars(config.class_name) if paste_real_defects and config.auto_place else []

        # 2. Generate
        with self.ctx.model_lock:
            pipe = self.ctx.pipeline(slab.adapter_path)
            result = generate(pipe, slab.image, config, progress, mask=mask, exemplars=exemplars or None)

        # 3. Score each candidate against the class's real images, and note what made it
        baseline = self._score_candidates(result.candidates, slab, config.class_name, threshold)

        # 4. Store the images, then the rows in one transaction (identical candidates are skipped)
        files = [self._put_files(candidate) for candidate in result.candidates]
        batch = f"{utc_now():%Y-%m-%d %H:%M:%S} {config.class_name} on slab {source_id} ({secrets.token_hex(2)})"
        candidates, duplicate_seeds = [], []
        with self.database.transaction() as s:
            for candidate, (sha256, mask_sha256) in zip(result.candidates, files, strict=True):
                if repository.find_sample_by_sha256(s, sha256) is not None:
                    duplicate_seeds.append(candidate.seed)
                    continue
                sample = repository.add_sample(
                    s,
                    **sample_columns(candidate.params),
                    sha256=sha256,
                    class_name=config.class_name,
                    source_image_id=source_id,
                    adapter_path=slab.adapter_path,
                    adapter_version=slab.adapter_version,
                    mask_sha256=mask_sha256,
                    params_json=candidate.params.as_dict(),
                    batch=batch,
                    created_by=user,
                )
                candidates.append(candidate_info(sample.id, candidate.seed, self.files.path(sha256), candidate.params))
        if duplicate_seeds:
            logger.warning("Skipped %d candidate(s) identical to stored samples.", len(duplicate_seeds))
        return GenerationOutcome(
            source_id, config.class_name, candidates, result.wall_time_s, duplicate_seeds, baseline, len(exemplars)
        )

    def _slab_and_adapter(self, source_id: int, class_name: str) -> _Slab:
        """The clean slab's image and the class's active adapter; ValueError if either is missing."""
        with self.database.session() as s:
            source = require_source(s, source_id)
            if source.role != "clean":
                raise ValueError(f"Image {source_id} is a real defect; generate on a clean slab.")
            if repository.get_defect_class(s, class_name) is None:
                known = ", ".join(c.name for c in repository.list_defect_classes(s)) or "none yet"
                raise ValueError(f"Unknown defect class {class_name!r}; known classes: {known}.")
            adapter = repository.active_adapter(s, class_name)
            if adapter is None:
                raise ValueError(f"Class {class_name!r} has no trained adapter yet; fine-tune it first.")
            source_sha256, adapter_path, adapter_version = source.sha256, adapter.path, adapter.version
        with Image.open(io.BytesIO(self.files.read(source_sha256))) as opened:
            image = opened.copy()
        return _Slab(source_id, source_sha256, image, adapter_path, adapter_version)

    def _score_candidates(
        self, candidates: list, slab: _Slab, class_name: str, threshold: float | None
    ) -> float | None:
        """Put each candidate's realism, lineage and flag into its params; returns the untouched slab's score on the
        same region (the baseline a candidate's score is read against)."""
        realism = self.realism.score(class_name, [repainted_region(c.image, c.params) for c in candidates])
        untouched = repainted_region(slab.image.convert("RGB"), candidates[0].params)
        baseline = (self.realism.score(class_name, [untouched])[0] or {}).get("score")
        for candidate, score in zip(candidates, realism, strict=True):
            # One hash per source everywhere (PNG metadata, manifest, lineage): the stored file's.
            params = candidate.params
            params.adapter_version, params.adapter_folder = slab.adapter_version, Path(slab.adapter_path).name
            params.source_image_id, params.source_sha256 = slab.source_id, slab.sha256
            if score is not None:
                params.realism = RealismRecord(**score, untouched_source_score=baseline)
            if threshold is not None:
                params.realism_threshold = threshold
                params.pre_rejected = score is not None and score["score"] < threshold
        return baseline

    def _put_files(self, candidate: Candidate) -> tuple[str, str | None]:
        """Store a candidate's PNG (its parameters inside) and its mask; returns their hashes."""
        mask_png = candidate.mask_png()
        mask_sha256 = self.files.put(mask_png, ".png") if mask_png is not None else None
        return self.files.put(candidate.png_bytes(), ".png"), mask_sha256

    def generate_batch(
        self,
        class_name: str,
        num: int,
        seed: int,
        user: str,
        progress: ProgressFn | None = None,
        realism_threshold: float | None = DEFAULT_REALISM_THRESHOLD,
        should_stop: StopFn | None = None,
    ) -> StoredBatch:
        """`num` samples from the class's uploaded real defect images, made as `launch.py generate --init` makes them
        (varied inits, the token's strength, the realism gate at `realism_threshold` (None: off), capture variation:
        `engine.batch.generate_to_folder`) with the class's active adapter, stored as one pending batch (flagged
        candidates too, pre-rejected). A batch the gate ends, or `should_stop` stops (asked after every init), is
        stored as far as it got, with the reason."""
        from engine.batch import RealismGateError, generate_to_folder

        threshold = check_realism_threshold(realism_threshold)
        class_name = check_class_name(class_name)
        with self.database.session() as s:
            adapter = repository.active_adapter(s, class_name)
            adapter_path, adapter_version = (adapter.path, adapter.version) if adapter is not None else (None, None)
        if adapter_path is None:
            raise ValueError(f"Class {class_name!r} has no trained adapter yet; fine-tune it first.")
        reals = self.sources.list_sources(role="defect", class_name=class_name)
        if not reals:
            raise ValueError(f"Class {class_name!r} has no uploaded real defect images to start from.")
        folder = new_batch_folder(self.ctx.data_dir, class_name)
        with tempfile.TemporaryDirectory(dir=self.ctx.data_dir) as inits_dir:
            # The stored files under names that say which upload each is (a sample's lineage names its init).
            source_of = {f"{info.id}-{Path(info.name).stem}{info.path.suffix}": info for info in reals}
            for name, info in source_of.items():
                shutil.copyfile(info.path, Path(inits_dir) / name)
            ended = None
            try:
                kept = generate_to_folder(
                    None,
                    None,
                    class_name,
                    Path(inits_dir),
                    num,
                    folder,
                    seed=seed,
                    pipe=self.ctx.pipeline(adapter_path),
                    realism_threshold=threshold,
                    progress=progress,
                    should_stop=should_stop,
                    model_turn=self.ctx.model_lock,
                )
                if len(kept) < num:
                    ended = f"Stopped with {len(kept)} of {num} kept."
            except RealismGateError as error:
                logger.warning("%s Storing the samples it made.", error)
                ended = f"The realism gate ended the batch: {error}"
        label = f"{folder.name} from {len(reals)} real images"
        stored = self._store_batch(folder, class_name, source_of, label, user, adapter_version)
        return replace(stored, ended_early=ended)

    def store_generated(
        self, folder: Path, class_name: str, inits: Sequence[Path], init_role: str, user: str
    ) -> StoredBatch:
        """Store the PNGs a batch generation wrote in `folder` (flagged ones included) as pending samples.

        The init images become source images (`init_role`: real defects of the class, or clean slabs) unless
        already stored; each sample's source is the first init image its PNG's metadata names. A PNG identical
        (same sha256) to a stored sample is skipped and named in `duplicates`. All rows land in one transaction.
        """
        class_name = check_class_name(class_name)
        sources = self.sources.ensure_sources(inits, init_role, class_name if init_role == "defect" else None, user)
        source_of = {path.name: source for path, source in zip(inits, sources, strict=True)}
        return self._store_batch(folder, class_name, source_of, f"command line {Path(folder).name}", user)

    def _store_batch(
        self,
        folder: Path,
        class_name: str,
        source_of: dict[str, SourceInfo],
        label: str,
        user: str,
        adapter_version: int | None = None,
    ) -> StoredBatch:
        """Store the PNGs in `folder` as the pending samples of the batch `label`, each linked to the source its
        metadata's first init names (`source_of`, by file name) and to the studio's `adapter_version` that made
        them (None: the version its metadata names, if it is the studio's)."""
        from engine.data import MASK_SUFFIX
        from engine.generation.generate import read_png_parameters

        folder = Path(folder)
        # The kept samples first, then the flagged ones (in a subfolder): the review queue meets them in that order.
        outputs = sorted(
            (p for p in folder.rglob("*.png") if not p.name.endswith(MASK_SUFFIX)),
            key=lambda p: (p.parent != folder, str(p)),
        )
        if not outputs:
            raise ValueError(f"No generated images in {folder}.")
        sources = list(dict.fromkeys(source_of.values()))
        with self.database.session() as s:
            source_sha256_of = {info.id: repository.get_source_image(s, info.id).sha256 for info in sources}
        batch_folder = str(folder.resolve())
        sample_ids, duplicates, pre_rejected = [], [], []
        with self.database.transaction() as s:
            if repository.get_defect_class(s, class_name) is None:
                repository.ensure_defect_class(s, class_name, f"<{class_name}>", class_name)
            for path in outputs:
                data = path.read_bytes()
                sha256 = sha256_hex(data)
                if repository.find_sample_by_sha256(s, sha256) is not None:
                    duplicates.append(path.name)
                    continue
                params = read_png_parameters(data)
                source = source_of.get(params.init["sources"][0]) if params.init else sources[0]
                params.source_image_id, params.source_sha256 = source.id, source_sha256_of[source.id]
                params.batch_folder = batch_folder
                if adapter_version is not None:
                    # One version everywhere (row, params, manifest): the studio's, as for candidates on a slab.
                    params.adapter_version, params.adapter_folder = adapter_version, Path(params.adapter_path).name
                mask_path = path.with_name(path.stem + MASK_SUFFIX)
                mask_sha256 = self.files.put(mask_path.read_bytes(), ".png") if mask_path.exists() else None
                sample = repository.add_sample(
                    s,
                    **sample_columns(params),
                    sha256=self.files.put(data, ".png"),
                    class_name=class_name,
                    source_image_id=source.id,
                    adapter_path=params.adapter_path,
                    adapter_version=params.adapter_version if isinstance(params.adapter_version, int) else None,
                    mask_sha256=mask_sha256,
                    params_json=params.as_dict(),
                    batch=label,
                    created_by=user,
                )
                sample_ids.append(sample.id)
                if params.pre_rejected:
                    pre_rejected.append(sample.id)
        return StoredBatch(sample_ids, duplicates, sources, pre_rejected)


def new_batch_folder(data_dir: Path, class_name: str) -> Path:
    """A new folder for a stored batch's PNGs under the data directory."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    return Path(data_dir) / "batches" / f"{class_name.replace(' ', '_')}-{stamp}"


@dataclass(frozen=True)
class _Slab:
    """A clean slab to generate on, with the class's active adapter."""

    source_id: int
    sha256: str
    image: Image.Image
    adapter_path: str
    adapter_version: int


def sample_columns(params: CandidateParameters) -> dict[str, Any]:
    """The sample row's columns that a candidate's parameters give, for studio and command-line batches alike.

    A masked repaint's boxes are its mask's components. A whole-window img2img has none: its defect may lie anywhere
    in the window, and a box must mean "the defect is here".
    """
    return {
        "model_hash": params.model_hash,
        "model_ref": params.model_ref,
        "token": params.token,
        "strength": params.strength,
        "steps": params.steps,
        "guidance": params.guidance_scale,
        "seed": params.seed,
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "width": params.width,
        "height": params.height,
        "window_json": params.window.as_dict() if params.window else None,
        "boxes_json": [box.as_dict() for box in params.boxes],
        "realism_score": params.realism.score if params.realism else None,
    }


def candidate_info(sample_id: int, seed: int, path: Path, params: CandidateParameters) -> CandidateInfo:
    """A stored candidate as the UI shows it: its realism and whether the threshold flagged it."""
    realism = params.realism
    return CandidateInfo(
        sample_id,
        seed,
        path,
        realism_score=realism.score if realism else None,
        class_probability=realism.class_probability if realism else None,
        predicted_class=realism.predicted_class if realism else None,
        suggested="reject" if params.pre_rejected else None,
    )
