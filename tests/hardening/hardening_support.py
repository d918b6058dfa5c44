"""Helpers for the hardening tests: image bytes of awkward kinds, a free port, the file store's contents."""

from __future__ import annotations

import socket
import struct
import zlib

from tests.support import encode, stored_files

__all__ = ["encode", "stored_files", "png_header_only", "free_port"]


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

