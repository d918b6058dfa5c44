"""Dataset export zips: layout, manifest, hashes, atomic writing and verification."""

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storage.db import Database
from storage.export import (
    ExportItem,
    export_item_for_sample,
    export_item_for_source,
    unsafe_path_problem,
    verify_export,
    write_export,
)
from storage.files import FileStore
from storage.repository import add_sample, add_source_image, decide, get_sample, get_source_image


def make_items(file_store: FileStore) -> list[ExportItem]:
    clean_sha = file_store.put(b"clean slab")
    return [
        ExportItem(
            class_name="crazing",
            image_sha256=file_store.put(b"synthetic crazing 1"),
            kind="synthetic",
            sample_id=1,
            source_image_id=10,
            params={"prompt": "a photo of <crazing>", "steps": 4},
            lineage={"source_image_sha256": clean_sha, "model_hash": "abc", "token": "<crazing>", "seed": 1},
            mask_sha256=file_store.put(b"mask 1"),
            boxes=[{"label": "crazing", "xmin": 0, "ymin": 0, "xmax": 9, "ymax": 9}],
        ),
        ExportItem(
            class_name="crazing",
            image_sha256=file_store.put(b"synthetic crazing 2"),
            kind="synthetic",
            sample_id=2,
            source_image_id=10,
            lineage={"source_image_sha256": clean_sha, "seed": 2},
        ),
        ExportItem(
            class_name="pitted surface",
            image_sha256=file_store.put(b"real pitted", suffix=".jpg"),
            kind="real",
            source_image_id=11,
        ),
        ExportItem(
            class_name="pitted_surface",
            image_sha256=file_store.put(b"real pitted 2"),
            kind="real",
            source_image_id=12,
        ),
    ]


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zip_file:
        return {name: zip_file.read(name) for name in zip_file.namelist()}


def rewrite_zip(source: Path, target: Path, change: Callable[[str, bytes], tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(target, "w") as out:
        for name, data in read_zip(source).items():
            out.writestr(*change(name, data))


@pytest.fixture
def export_zip(tmp_path: Path, file_store: FileStore) -> Path:
    summary = write_export(tmp_path / "out" / "export.zip", make_items(file_store), file_store, {"note": "test"})
    return summary.path


def test_export_layout_manifest_and_hashes(tmp_path: Path, file_store: FileStore) -> None:
    items = make_items(file_store)
    summary = write_export(tmp_path / "export.zip", items, file_store, {"exported_by": "alice"})
    files = read_zip(summary.path)
    manifest = json.loads(files["manifest.json"])

    assert summary.sha256 == hashlib.sha256(summary.path.read_bytes()).hexdigest()
    assert (summary.n_items, summary.n_files) == (4, len(files))
    assert summary.counts == {"crazing": {"synthetic": 2}, "pitted surface": {"real": 1}, "pitted_surface": {"real": 1}}
    assert sorted(files) == sorted(
        [
            f"images/crazing/synthetic-000001-{items[0].image_sha256[:12]}.png",
            f"images/crazing/synthetic-000002-{items[1].image_sha256[:12]}.png",
            f"images/pitted_surface/real-000011-{items[2].image_sha256[:12]}.jpg",
            f"images/pitted_surface-2/real-000012-{items[3].image_sha256[:12]}.png",
            f"masks/crazing/synthetic-000001-{items[0].image_sha256[:12]}.png",
            "manifest.json",
            "manifest.csv",
            "sources.csv",
        ]
    )
    assert all(unsafe_path_problem(name) is None for name in files)
    assert manifest["extra"] == {"exported_by": "alice"}
    assert manifest["files"] == {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in files.items()
        if name != "manifest.json"
    }
    first = manifest["items"][0]
    assert first["params"] == items[0].params
    assert first["lineage"] == items[0].lineage
    assert first["boxes"] == items[0].boxes
    assert files[first["mask_path"]] == b"mask 1"
    assert files[first["path"]] == b"synthetic crazing 1"
    assert [entry["class_name"] for entry in manifest["items"]] == [item.class_name for item in items]

    rows = list(csv.DictReader(io.StringIO(files["manifest.csv"].decode())))
    assert [row["path"] for row in rows] == [entry["path"] for entry in manifest["items"]]
    assert rows[0]["model_hash"] == "abc"
    assert json.loads(rows[0]["params_json"]) == items[0].params
    sources = list(csv.DictReader(io.StringIO(files["sources.csv"].decode())))
    assert {(row["source_sha256"], row["used_as"], row["n_items"]) for row in sources} == {
        (items[0].lineage["source_image_sha256"], "clean_background", "2"),
        (items[2].image_sha256, "real_defect", "1"),
        (items[3].image_sha256, "real_defect", "1"),
    }
    assert verify_export(summary.path) == []
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["export.zip"]


def test_tampered_exports_fail_verification(export_zip: Path, tmp_path: Path) -> None:
    image = next(name for name in read_zip(export_zip) if name.startswith("images/"))

    changed_image = tmp_path / "changed_image.zip"
    rewrite_zip(export_zip, changed_image, lambda n, d: (n, d + b"!" if n == image else d))
    assert verify_export(changed_image) == [f"sha256 mismatch: {image}"]

    extra_file = tmp_path / "extra_file.zip"
    rewrite_zip(export_zip, extra_file, lambda n, d: (n, d))
    with zipfile.ZipFile(extra_file, "a") as zip_file:
        zip_file.writestr("../escape.png", b"x")
    problems = verify_export(extra_file)
    assert any("Unsafe path" in p for p in problems)
    assert any("not listed" in p for p in problems)

    missing_image = tmp_path / "missing_image.zip"
    with zipfile.ZipFile(missing_image, "w") as zip_file:
        for name, data in read_zip(export_zip).items():
            if name != image:
                zip_file.writestr(name, data)
    assert any("missing" in p for p in verify_export(missing_image))

    broken = tmp_path / "broken.zip"
    broken.write_bytes(export_zip.read_bytes()[:100])
    assert verify_export(broken) != []


def test_export_refuses_to_overwrite_and_reports_missing_files(
    export_zip: Path, tmp_path: Path, file_store: FileStore
) -> None:
    items = make_items(file_store)
    with pytest.raises(FileExistsError):
        write_export(export_zip, items, file_store, {})
    absent = ExportItem(class_name="crazing", image_sha256="f" * 64, kind="synthetic", sample_id=9)
    with pytest.raises(FileNotFoundError, match="missing"):
        write_export(tmp_path / "missing.zip", [*items, absent], file_store, {})
    with pytest.raises(ValueError, match="kind"):
        write_export(tmp_path / "bad.zip", [ExportItem("crazing", items[0].image_sha256, "fake")], file_store, {})
    assert not (tmp_path / "missing.zip").exists()


def test_an_export_interrupted_midway_leaves_nothing_behind(
    tmp_path: Path, file_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = make_items(file_store)
    real_read = FileStore.read
    calls = {"n": 0}

    def read_then_fail(self: FileStore, sha256: str) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_read(self, sha256)

    monkeypatch.setattr(FileStore, "read", read_then_fail)
    out_dir = tmp_path / "exports"
    with pytest.raises(KeyboardInterrupt):
        write_export(out_dir / "export.zip", items, file_store, {})
    assert list(out_dir.iterdir()) == []


def test_items_built_from_database_rows_carry_full_lineage(
    db: Database, file_store: FileStore, tmp_path: Path, sample_fields: Callable[..., dict[str, Any]]
) -> None:
    clean_sha = file_store.put(b"clean")
    real_sha = file_store.put(b"real")
    sample_sha = file_store.put(b"generated")
    with db.transaction() as s:
        clean = add_source_image(s, clean_sha, "clean", None, "clean.png", 400, 300, [], "alice")
        real = add_source_image(s, real_sha, "defect", "crazing", "real.png", 200, 200, [], "bob")
        sample = add_sample(s, **sample_fields(clean.id, sha256=sample_sha, adapter_version=3, realism_score=0.9))
        decide(s, sample.id, "accepted", None, "carol")
    with db.session() as s:
        sample = get_sample(s, sample.id)
        items = [export_item_for_sample(sample, get_source_image(s, clean.id), 7), export_item_for_source(real)]
        with pytest.raises(ValueError):
            export_item_for_source(get_source_image(s, clean.id))
    summary = write_export(tmp_path / "db.zip", items, file_store, {})
    manifest = json.loads(read_zip(summary.path)["manifest.json"])
    lineage = manifest["items"][0]["lineage"]
    assert lineage["source_image_sha256"] == clean_sha
    assert (lineage["adapter_version"], lineage["adapter_run_id"], lineage["decided_by"]) == (3, 7, "carol")
    assert manifest["items"][0]["params"]["scheduler"] == "euler"
    assert manifest["items"][0]["params"]["window"] == {"x": 10, "y": 20, "w": 200, "h": 200}
    assert manifest["items"][1]["kind"] == "real"
    assert verify_export(summary.path) == []
