"""Content-addressed file store: every file is named by the sha256 of its bytes."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
SUFFIX_PATTERN = re.compile(r"(\.[A-Za-z0-9]{1,10})?")
UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_LENGTH = 120


class CorruptFileError(RuntimeError):
    """A stored file's bytes no longer match the sha256 it is stored under."""


def sha256_hex(data: bytes) -> str:
    """The sha256 of `data` as 64 lowercase hex characters."""
    return hashlib.sha256(data).hexdigest()


def check_sha256(sha256: str) -> str:
    """Return `sha256` if it is 64 lowercase hex characters; raise ValueError otherwise."""
    if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256):
        raise ValueError(f"Not a sha256 hex digest (64 lowercase hex characters): {sha256!r}")
    return sha256


def safe_file_name(name: str, fallback: str = "unnamed") -> str:
    """A file name made only of [A-Za-z0-9._-], without directories or leading dots, at most 120 characters."""
    cleaned = UNSAFE_NAME_CHARACTERS.sub("_", re.split(r"[\\/]", name or "")[-1]).lstrip(".")
    if len(cleaned) > MAX_NAME_LENGTH:
        stem, suffix = os.path.splitext(cleaned)
        suffix = suffix if len(suffix) <= 11 else ""
        cleaned = stem[: MAX_NAME_LENGTH - len(suffix)] + suffix
    return cleaned if re.search(r"[A-Za-z0-9]", cleaned) else fallback


def write_atomically(target: Path, data: bytes) -> None:
    """Write `data` to `target` through a temporary file in the same folder, so `target` is never partial."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


class FileStore:
    """Files under `root`, sharded as `ab/abcdef….png` by the sha256 of their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, data: bytes, suffix: str = ".png") -> str:
        """Store `data` (once; storing the same bytes again does nothing) and return its sha256."""
        if not SUFFIX_PATTERN.fullmatch(suffix):
            raise ValueError(f"File suffix must be a dot and 1-10 letters or digits, got {suffix!r}")
        sha256 = sha256_hex(data)
        if not self.exists(sha256):
            write_atomically(self._shard(sha256) / f"{sha256}{suffix.lower()}", data)
        return sha256

    def path(self, sha256: str) -> Path:
        """The path of a stored file; raises FileNotFoundError if it is not stored."""
        found = self._find(sha256)
        if found is None:
            raise FileNotFoundError(f"No stored file with sha256 {sha256}")
        return found

    def read(self, sha256: str) -> bytes:
        """The bytes of a stored file, checked against its sha256 (CorruptFileError if they differ)."""
        data = self.path(sha256).read_bytes()
        if sha256_hex(data) != sha256:
            raise CorruptFileError(f"Stored file {sha256} is corrupt: its content hash differs.")
        return data

    def exists(self, sha256: str) -> bool:
        """Whether a file with this sha256 is stored."""
        return self._find(sha256) is not None

    def _shard(self, sha256: str) -> Path:
        return self.root / check_sha256(sha256)[:2]

    def _find(self, sha256: str) -> Path | None:
        shard = self._shard(sha256)
        png = shard / f"{sha256}.png"
        if png.is_file():
            return png
        if not shard.is_dir():
            return None
        return next((p for p in sorted(shard.glob(f"{sha256}*")) if p.is_file() and p.stem == sha256), None)
