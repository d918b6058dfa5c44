"""Helpers shared by the tests."""

from __future__ import annotations

import ast
import io
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from engine.boxes import Box

if TYPE_CHECKING:
    from webapp.studio import StudioService


def encode(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    """`image` saved in `fmt` as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def voc_xml(*boxes: tuple[str, int, int, int, int]) -> str:
    """A Pascal VOC annotation with one object per (label, xmin, ymin, xmax, ymax) box."""
    objects = "".join(
        f"<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for label, x0, y0, x1, y1 in boxes
    )
    return f"<annotation>{objects}</annotation>"


def stored_files(studio: StudioService) -> list[Path]:
    """Every file in the studio's file store."""
    return sorted(p for p in studio.files.root.rglob("*") if p.is_file()) if studio.files.root.exists() else []


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def top_level_imports(path: Path) -> set[str]:
    """The top-level package of every absolute import in a Python source file."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


@contextmanager
def served_client(studio: StudioService) -> Iterator:
    """The studio's Gradio app launched on a free loopback port and a gradio_client connected to it."""
    from gradio_client import Client

    from webapp.app import build_app, served_folders

    app = build_app(studio)
    app.queue()
    client = None
    try:
        _, url, _ = app.launch(
            prevent_thread_lock=True, server_port=free_port(), allowed_paths=served_folders(studio), quiet=True
        )
        client = Client(url, verbose=False)
        yield client
    finally:
        if client is not None:
            client.close()
        app.close()


def make_steel_like(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A grey uint8 H×W×3 image: noise texture plus a class-specific mark (lines, blobs or flat)."""
    base = rng.normal(128, 12, (size, size)).clip(0, 255)
    if kind == "scratches":
        for _ in range(2):
            x = rng.integers(2, size - 2)
            base[:, x - 1 : x + 1] = 40
    elif kind == "inclusion":
        for _ in range(3):
            y, x = rng.integers(3, size - 3, 2)
            base[y - 2 : y + 2, x - 2 : x + 2] = 220
    image = base.astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=2)


def slab(width: int, height: int, seed: int = 0) -> Image.Image:
    """A grey noise slab of the given size."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.normal(128, 15, (height, width)).clip(0, 255).astype(np.uint8))


def textured(seed: int, size: tuple[int, int] = (120, 160)) -> tuple[np.ndarray, Box]:
    """A smooth steel with a coarse, bright-grained texture over most of it (as crazing or a pitted surface covers
    its image), at a place of its own."""
    rng = np.random.default_rng(seed)
    height, width = size
    pixels = rng.normal(120, 4, size)
    box_width, box_height = int(width * rng.uniform(0.81, 0.91)), int(height * rng.uniform(0.77, 0.88))
    x0, y0 = int(rng.integers(0, width - box_width)), int(rng.integers(0, height - box_height))
    box = Box(x0, y0, x0 + box_width, y0 + box_height)
    grain = rng.normal(0, 35, ((box.height + 2) // 3, (box.width + 2) // 3))
    pixels[box.ymin : box.ymax, box.xmin : box.xmax] += np.kron(grain, np.ones((3, 3)))[: box.height, : box.width]
    grey = pixels.clip(0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), box
