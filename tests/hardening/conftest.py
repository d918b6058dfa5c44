"""Fixtures for the hardening tests: a studio on the tiny model and slab images (helpers: hardening_support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hardening_support import encode
from PIL import Image

from webapp.service import StudioService


@pytest.fixture
def slab_png() -> Callable[..., bytes]:
    """PNG bytes of a grey steel-like slab of a given size (different seeds give different images)."""

    def make(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
        rng = np.random.default_rng(seed)
        pixels = rng.normal(128, 12, (height, width)).clip(0, 255).astype(np.uint8)
        return encode(Image.fromarray(pixels, mode="L"))

    return make


@pytest.fixture
def service(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> Iterator[StudioService]:
    """A studio on the tiny model whose classes (scratches, inclusion) use the tiny adapter as version 1."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    studio = StudioService(tmp_path / "data", model=str(tiny_model))
    studio.preview_steps = 2
    studio.register_adapter(tiny_adapter)
    try:
        yield studio
    finally:
        studio.close()
        torch.set_num_threads(threads)
