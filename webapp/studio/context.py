"""What every use case of the studio shares: the data folder with its database and file store, the base model
and a small cache of loaded pipelines.

engine modules that import torch are imported inside the methods that run a model, so the storage-only
commands (import, export, verify-export) start without loading torch.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.adapters import AdapterInfo, read_adapter
from storage import repository
from storage.db import open_database
from storage.files import FileStore
from storage.tables import GeneratedSample, SourceImage
from webapp.studio.results import SourceInfo

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from engine.generation.pipeline import LoadedPipeline
    from storage.db import Session

# Two pipelines cover the usual review loop (two classes side by side) within ~1 GB on a CPU box.
PIPELINE_CACHE_SIZE = 2
PAGE_SIZE = 500


class StudioContext:
    """One data folder (database, file store, runs, exports, previews) and the base model it generates with."""

    def __init__(self, data_dir: Path, model: str | None = None, database_url: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.database = open_database(self.data_dir, database_url)
        self.files = FileStore(self.data_dir / "files")
        self.runs_dir = self.data_dir / "runs"
        self.exports_dir = self.data_dir / "exports"
        self.previews_dir = self.data_dir / "previews"
        # Held while a model runs: previews, each init of a batch and fine-tune previews take turns on the cached
        # pipelines.
        self.model_lock = threading.RLock()
        self._pipelines: OrderedDict[tuple[str, str | None], Any] = OrderedDict()
        self._model_ref: str | None = None
        self._feature_net: Any = None
        self._feature_net_lock = threading.Lock()

    @property
    def model_ref(self) -> str:
        """The resolved base model (a local folder or hub id); raises FileNotFoundError if it is missing."""
        if self._model_ref is None:
            from engine.generation.pipeline import resolve_model

            self._model_ref = resolve_model(self.model)
        return self._model_ref

    def feature_net(self) -> Any:
        """The shipped steel feature network, loaded once (realism scores, learnt box suggestions); None (logged)
        if it is missing."""
        with self._feature_net_lock:
            if self._feature_net is None:
                from engine.evaluation.features import load_feature_net

                try:
                    self._feature_net = load_feature_net()
                except FileNotFoundError as error:
                    logger.warning("Realism scores and learnt box suggestions are off: %s", error)
                    self._feature_net = False
            return self._feature_net or None

    def uses_embedded_model(self) -> bool:
        """Whether the studio runs the shipped steel prior."""
        return self.model in (None, "", "default", "embedded")

    def read_matching_adapter(self, path: Path) -> AdapterInfo:
        """The adapter folder's info; raises ValueError if it was trained on another base model."""
        from engine.generation.pipeline import model_hash

        info = read_adapter(path)
        base_hash = model_hash(self.model_ref)
        if info.base_model_hash and info.base_model_hash != base_hash:
            raise ValueError(
                f"Adapter {Path(path).name} was trained on another base model (hash {info.base_model_hash}); "
                f"this studio runs {base_hash}. Start the studio with that model or fine-tune again."
            )
        return info

    def pipeline(self, adapter_path: str | None) -> LoadedPipeline:
        """A cached pipeline for (base model, adapter folder); the least recently used one is dropped."""
        from engine.generation.pipeline import load_pipeline

        key = (self.model_ref, adapter_path)
        with self.model_lock:
            if key in self._pipelines:
                self._pipelines.move_to_end(key)
                return self._pipelines[key]
            if adapter_path is not None:
                self.read_matching_adapter(Path(adapter_path))
            pipe = load_pipeline(self.model_ref, adapter_path)
            self._pipelines[key] = pipe
            while len(self._pipelines) > PIPELINE_CACHE_SIZE:
                self._pipelines.popitem(last=False)
            return pipe

    def source_info(self, row: SourceImage) -> SourceInfo:
        """A source image row as the UI lists it."""
        return SourceInfo(
            row.id,
            row.role,
            row.class_name,
            row.original_name,
            row.width,
            row.height,
            self.files.path(row.sha256),
            row.uploaded_by,
            len(row.boxes_json or []),
        )

    def close(self) -> None:
        """Drop the cached pipelines and release the database."""
        with self.model_lock:
            self._pipelines.clear()
        self.database.dispose()


def require_source(s: Session, source_id: int) -> SourceImage:
    """The source image row; raises ValueError naming the id when there is none."""
    source = repository.get_source_image(s, source_id)
    if source is None:
        raise ValueError(f"There is no uploaded image with id {source_id}.")
    return source


def require_sample(s: Session, sample_id: int) -> GeneratedSample:
    """The sample row; raises ValueError naming the id when there is none."""
    sample = repository.get_sample(s, sample_id)
    if sample is None:
        raise ValueError(f"There is no sample with id {sample_id}.")
    return sample


def all_pages(fetch: Callable[[int], list]) -> Iterator:
    """Every row of a paged repository query."""
    offset = 0
    while True:
        page = fetch(offset)
        yield from page
        if len(page) < PAGE_SIZE:
            return
        offset += PAGE_SIZE
