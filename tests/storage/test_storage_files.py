"""The content-addressed file store."""

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.files import CorruptFileError, FileStore, safe_file_name


def test_put_stores_sharded_by_sha256_and_reads_back(file_store: FileStore) -> None:
    data = b"\x89PNG fake image bytes"
    sha256 = file_store.put(data)
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert file_store.path(sha256) == file_store.root / sha256[:2] / f"{sha256}.png"
    assert file_store.exists(sha256)
    assert file_store.read(sha256) == data


def test_put_is_idempotent(file_store: FileStore) -> None:
    first = file_store.put(b"same bytes")
    stat = file_store.path(first).stat()
    second = file_store.put(b"same bytes", suffix=".jpg")
    assert first == second
    assert file_store.path(first).stat().st_mtime_ns == stat.st_mtime_ns
    assert [p.name for p in file_store.path(first).parent.iterdir()] == [f"{first}.png"]


def test_other_suffixes_are_found_by_hash(file_store: FileStore) -> None:
    sha256 = file_store.put(b"json bytes", suffix=".json")
    assert file_store.path(sha256).name == f"{sha256}.json"
    assert file_store.read(sha256) == b"json bytes"


def test_a_failed_write_leaves_no_file(file_store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_replace(source: str, target: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        file_store.put(b"never stored")
    monkeypatch.undo()
    assert [p for p in file_store.root.rglob("*") if p.is_file()] == []
    assert not file_store.exists(hashlib.sha256(b"never stored").hexdigest())


@pytest.mark.parametrize(
    "bad_hash",
    ["", "abc", "../" + "a" * 61, "A" * 64, "g" * 64, "a" * 63 + "/", "a" * 65, "/etc/passwd"],
)
def test_refuses_anything_but_a_sha256(file_store: FileStore, bad_hash: str) -> None:
    for operation in (file_store.path, file_store.read, file_store.exists):
        with pytest.raises(ValueError, match="sha256"):
            operation(bad_hash)


@pytest.mark.parametrize("bad_suffix", ["png", ".p/ng", "./../x", ".a.b", ".toolongsuffix"])
def test_refuses_odd_suffixes(file_store: FileStore, bad_suffix: str) -> None:
    with pytest.raises(ValueError, match="suffix"):
        file_store.put(b"x", suffix=bad_suffix)


def test_missing_and_corrupt_files_raise(file_store: FileStore) -> None:
    with pytest.raises(FileNotFoundError):
        file_store.read("0" * 64)
    sha256 = file_store.put(b"original")
    file_store.path(sha256).write_bytes(b"bit rot")
    with pytest.raises(CorruptFileError):
        file_store.read(sha256)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scan 01.png", "scan_01.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\qa\\défaut.jpg", "d_faut.jpg"),
        ("..", "unnamed"),
        (".hidden.png", "hidden.png"),
    ],
)
def test_safe_file_name_examples(name: str, expected: str) -> None:
    assert safe_file_name(name) == expected


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_safe_file_name_is_always_a_plain_safe_name(name: str) -> None:
    cleaned = safe_file_name(name)
    assert 0 < len(cleaned) <= 120
    assert set(cleaned) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert not cleaned.startswith(".")
    assert Path(cleaned).name == cleaned
