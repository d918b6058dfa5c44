"""Helpers for the hardening tests: image bytes of awkward kinds, a free port, the file store's contents."""

from __future__ import annotations

import struct
import zlib

from tests.support import encode, free_port, stored_files

__all__ = ["encode", "stored_files", "png_header_only", "free_port"]


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that claims width×height 8-bit grey pixels but holds one tiny IDAT (a bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
