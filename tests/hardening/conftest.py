"""Fixtures for the hardening tests: image bytes of every awkward kind and a studio on the tiny model."""

from __future__ import annotations

import io
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webapp.service import StudioService


def encode(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    """`image` saved in `fmt` as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that claims width×height 8-bit grey pixels but holds one tiny IDAT (a bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def stored_files(studio: StudioService) -> list[Path]:
    """Every file in the studio's file store."""
    return sorted(p for p in studio.files.root.rglob("*") if p.is_file()) if studio.files.root.exists() else []
