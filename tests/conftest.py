"""Shared fixtures: tiny SD-architecture models built from configs (no downloads), saved and reloaded for real."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.support import make_steel_like

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark tests by room, so `-m "not browser and not subprocess"` is the fast inner loop."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "browser" in parts:
            item.add_marker(pytest.mark.browser)
        if "hardening" in parts or "distributed" in parts:
            item.add_marker(pytest.mark.subprocess)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny untrained SD-architecture img2img model folder."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from engine.quiet import quiet_libraries
    from engine.training.prior import PriorSize, build_components

    quiet_libraries()
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    components = build_components(PriorSize.tiny(), folder / "tokenizer-src", seed=0)
    StableDiffusionImg2ImgPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(str(folder / "model"))
    return folder / "model"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """An ImageFolder tree with two classes of 4 synthetic 48 px images each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny-dataset")
    rng = np.random.default_rng(0)
    for kind in ("scratches", "inclusion"):
        (root / kind).mkdir()
        for i in range(4):
            Image.fromarray(make_steel_like(rng, 48, kind)[..., 0]).save(root / kind / f"{kind}_{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model, tiny_dataset, tmp_path_factory) -> Path:
    """A finished TI + LoRA adapter for both tiny classes (4 steps)."""
    from engine.batch import finetune_folder

    out = tmp_path_factory.mktemp("tiny-adapter") / "run"
    result = finetune_folder(tiny_dataset, out, model=str(tiny_model), steps=4, batch_size=4)
    assert result.status == "completed"
    return out


@pytest.fixture
def slab_png():
    """PNG bytes of a grey steel-like slab of a given size (different seeds give different images)."""
    from PIL import Image

    from tests.support import encode

    def make(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
        rng = np.random.default_rng(seed)
        pixels = rng.normal(128, 12, (height, width)).clip(0, 255).astype(np.uint8)
        return encode(Image.fromarray(pixels, mode="L"))

    return make


@pytest.fixture
def service(tmp_path, tiny_model, tiny_adapter):
    """A studio on the tiny model whose classes (scratches, inclusion) use the tiny adapter as version 1."""
    from webapp.studio import StudioService

    studio = StudioService(tmp_path / "data", model=str(tiny_model))
    studio.preview_steps = 2
    studio.register_adapter(tiny_adapter)
    try:
        yield studio
    finally:
        studio.close()
