"""Helpers shared by the web app and hardening tests."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from webapp.service import StudioService


def encode(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    """`image` saved in `fmt` as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def stored_files(studio: StudioService) -> list[Path]:
    """Every file in the studio's file store."""
    return sorted(p for p in studio.files.root.rglob("*") if p.is_file()) if studio.files.root.exists() else []
