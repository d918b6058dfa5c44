"""Fixtures for the web app tests: a studio service on the tiny model with the tiny adapter registered."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webapp.service import StudioService


def encode(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and beside a background training job they slow 3× by contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def slab_png() -> Callable[[int, int, int], bytes]:
    """PNG bytes of a grey steel-like slab of a given size (different seeds give different images)."""

    def make(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
        rng = np.random.default_rng(seed)
        pixels = rng.normal(128, 12, (height, width)).clip(0, 255).astype(np.uint8)
        return encode(Image.fromarray(pixels, mode="L"))

    return make


@pytest.fixture
def service(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> Iterator[StudioService]:
    """A studio on the tiny model whose classes (scratches, inclusion) use the tiny adapter."""
    studio = StudioService(tmp_path / "data", model=str(tiny_model))
    studio.preview_steps = 2
    studio.register_adapter(tiny_adapter)
    try:
        yield studio
    finally:
        studio.close()


def stored_files(studio: StudioService) -> list[Path]:
    return sorted(p for p in studio.files.root.rglob("*") if p.is_file()) if studio.files.root.exists() else []
