"""Scriptable curation: `generate` into the studio, `review list|accept|reject|undo`, `export` with a split."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import launch


def generate_into_studio(data: list[str], adapter: Path, dataset: Path, num: int) -> list[str]:
    """`generate` of `num` scratches from the tiny dataset into the studio of `data` (no --out)."""
    return [
        "generate", *data, "--adapter", str(adapter), "--token", "scratches",
        "--init", str(dataset / "scratches"), "--num", str(num), "--steps", "3", "--realism-threshold", "off",
    ]  # fmt: skip


def test_a_batch_generated_into_the_studio_is_reviewed_and_exported_from_the_command_line(
    tmp_path: Path, tiny_model: Path, tiny_adapter: Path, tiny_dataset: Path, capsys
) -> None:
    data = ["--data-dir", str(tmp_path / "data"), "--model", str(tiny_model)]
    generate = generate_into_studio(data, tiny_adapter, tiny_dataset, 4)
    assert launch.main(generate) == 0
    out = capsys.readouterr().out
    assert "Stored 4 pending samples (ids 1-4)" in out

    assert launch.main(["review", "list", *data, "--json"]) == 0
    queue = json.loads(capsys.readouterr().out)
    assert [row["id"] for row in queue] == [1, 2, 3, 4]
    assert {row["status"] for row in queue} == {"pending"} and {row["class_name"] for row in queue} == {"scratches"}

    # The same seeds make the same images again: nothing is stored twice.
    assert launch.main(generate) == 0
    assert "Stored 0 pending samples (ids none); 4 identical to stored samples skipped" in capsys.readouterr().out

    assert launch.main(["review", "accept", *data, "1", "2", "3"]) == 0
    assert launch.main(["review", "reject", *data, "4", "--reason", "seam visible"]) == 0
    assert launch.main(["review", "undo", *data, "3"]) == 0
    capsys.readouterr()
    assert launch.main(["review", "list", *data, "--status", "all", "--json"]) == 0
    statuses = {row["id"]: (row["status"], row["reject_reason"]) for row in json.loads(capsys.readouterr().out)}
    assert statuses == {
        1: ("accepted", None),
        2: ("accepted", None),
        3: ("pending", None),
        4: ("rejected", "seam visible"),
    }
    assert launch.main(["review", "accept", *data, "99"]) == 2
    assert "no sample with id 99" in capsys.readouterr().err

    # The init images became the samples' sources, as real defects of the class.
    assert launch.main(["review", "list", *data, "--status", "accepted", "--class", "inclusion"]) == 0
    assert "0 sample(s)" in capsys.readouterr().out

    zip_path = tmp_path / "out.zip"
    export = ["export", *data, "--out", str(zip_path), "--val-fraction", "0.5", "--classes", "scratches"]
    assert launch.main(export) == 0
    printed = capsys.readouterr().out
    with zipfile.ZipFile(zip_path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    kinds = sorted(item["kind"] for item in manifest["items"])
    assert kinds == ["real"] * 4 + ["synthetic"] * 2
    assert manifest["split"] == {"val_fraction": 0.5, "test_fraction": 0.0, "seed": 0}
    splits = [item["split"] for item in manifest["items"]]
    assert f"train {splits.count('train')}" in printed and "6 images" in printed
    by_source = {}
    for item in manifest["items"]:
        by_source.setdefault(item["lineage"]["source_image_sha256"], set()).add(item["split"])
    assert all(len(sides) == 1 for sides in by_source.values()), "a source and its samples share a split"
    for item in manifest["items"]:
        if item["kind"] == "synthetic":
            assert item["params"]["source_sha256"] == item["lineage"]["source_image_sha256"], "one hash per source"


def test_export_and_review_refuse_a_folder_without_a_studio(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "not-a-studio"
    assert launch.main(["export", "--data-dir", str(missing), "--out", str(tmp_path / "x.zip")]) == 2
    assert launch.main(["review", "list", "--data-dir", str(missing)]) == 2
    assert "No studio in" in capsys.readouterr().err
    assert not missing.exists(), "nothing is created by a mistyped --data-dir"


def test_the_review_queue_filters_by_batch_across_the_command_line_and_the_studio(
    tmp_path: Path, tiny_model: Path, tiny_adapter: Path, tiny_dataset: Path, slab_png, capsys
) -> None:
    from engine.config import GenerationConfig
    from webapp.studio import StudioService

    data = ["--data-dir", str(tmp_path / "data"), "--model", str(tiny_model)]
    generate = generate_into_studio(data, tiny_adapter, tiny_dataset, 2)
    assert launch.main([*generate, "--seed", "0"]) == 0
    assert launch.main([*generate, "--seed", "100"]) == 0
    service = StudioService(tmp_path / "data", str(tiny_model))
    try:
        service.register_adapter(tiny_adapter)
        slab = service.upload_images([("slab.png", slab_png(48, 40))], "clean", None, "alice").sources[0]
        outcome = service.generate_candidates(slab.id, GenerationConfig("scratches", 3, 0.6, 2), "alice")
        service.decide(outcome.sample_ids[0], "accepted", None, "alice")
        capsys.readouterr()

        assert launch.main(["review", "batches", *data, "--json"]) == 0
        batches = json.loads(capsys.readouterr().out)
        assert [(b["pending"], b["total"]) for b in batches] == [(2, 3), (2, 2), (2, 2)], "newest first"
        studio_batch, second, first = (b["name"] for b in batches)
        assert "scratches on slab" in studio_batch and second.startswith("command line ") and second != first

        assert launch.main(["review", "list", *data, "--batch", first, "--json"]) == 0
        assert [row["id"] for row in json.loads(capsys.readouterr().out)] == [1, 2]
        assert [row.id for row in service.review_queue("pending", batch=studio_batch)] == outcome.sample_ids[1:]
        view = service.dataset_view(batch=studio_batch)
        assert [row.id for row in view.rows] == outcome.sample_ids[::-1]
        assert {row.batch for row in view.rows} == {studio_batch}
    finally:
        service.close()


def test_a_batch_the_realism_gate_ends_is_stored_with_its_flagged_candidates(
    tmp_path: Path, tiny_model: Path, tiny_adapter: Path, tiny_dataset: Path, capsys
) -> None:
    data = ["--data-dir", str(tmp_path / "data"), "--model", str(tiny_model)]
    generate = generate_into_studio(data, tiny_adapter, tiny_dataset, 2)
    gated = [*generate[:-2], "--realism-threshold", "1.0", "--strength-floor", "off"]
    assert launch.main(gated) == 2
    printed = capsys.readouterr()
    assert "Wrote 0 images" in printed.out and "2 below the realism threshold" in printed.out
    assert "error: 2 candidates fell below the realism threshold 1.0 for 0 kept" in printed.err
    assert launch.main(["review", "list", *data, "--status", "all", "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)
    # Flagged, not dropped: pending for a person to decide, their realism under the threshold.
    assert [row["status"] for row in stored] == ["pending", "pending"]
    assert all(row["realism_score"] < 1.0 for row in stored)
