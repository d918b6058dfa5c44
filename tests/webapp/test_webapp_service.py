"""StudioService use cases on the tiny model: upload, generate, review, dataset, export, import."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from engine.adapters import EMBEDDED_TOKENS, read_adapter
from engine.config import GenerationConfig
from engine.data import NEU_CLASSES
from engine.generation.generate import read_png_parameters
from tests.support import stored_files, voc_xml
from webapp.studio import StudioService
from webapp.validation import UploadError

# Two denoising steps keep generation fast; steps × strength must be at least 1.
FAST = {"steps": 2, "strength": 1.0}


def upload_slab(service: StudioService, slab_png, seed: int = 0) -> int:
    return service.upload_images([(f"slab{seed}.png", slab_png(48, 40, seed))], "clean", None, "alice").sources[0].id


def test_the_adapter_registers_its_classes_as_active_version_1(service: StudioService) -> None:
    classes = {c.name: c for c in service.list_classes()}
    assert set(classes) == {"scratches", "inclusion"}
    assert classes["scratches"].token == "<scratches>"
    assert classes["scratches"].adapter_version == 1
    assert classes["scratches"].default_strength == pytest.approx(GenerationConfig.strength)


def test_a_studio_on_the_embedded_prior_starts_with_its_six_shipped_classes(tmp_path: Path) -> None:
    studio = StudioService(tmp_path / "data")
    try:
        classes = {c.name: c for c in studio.list_classes()}
        assert set(classes) == set(NEU_CLASSES)
        assert {c.adapter_version for c in classes.values()} == {1}
        assert classes["scratches"].token == "<scratches>"
        shipped = read_adapter(EMBEDDED_TOKENS).tokens
        for name, info in classes.items():
            assert info.masked_strength == shipped[name].proposed_strength(masked=True)
    finally:
        studio.close()


def test_upload_stores_png_and_row(service: StudioService, slab_png) -> None:
    result = service.upload_images([("a.png", slab_png(48, 40, 1))], "defect", "scratches", "alice")
    (source,) = result.sources
    assert (source.role, source.class_name, source.width, source.height, source.uploaded_by) == (
        "defect",
        "scratches",
        48,
        40,
        "alice",
    )
    assert source.path.is_file()
    assert [s.id for s in service.list_sources(role="defect")] == [source.id]


def test_a_refused_upload_writes_nothing(service: StudioService, slab_png) -> None:
    good = ("good.png", slab_png(48, 40, 2))
    with pytest.raises(UploadError, match="bad.png is empty"):
        service.upload_images([good, ("bad.png", b"")], "clean", None, "alice")
    with pytest.raises(ValueError, match="Class name"):
        service.upload_images([good], "defect", "no/slashes allowed", "alice")
    with pytest.raises(ValueError, match="clean slab has no defect class"):
        service.upload_images([good], "clean", "scratches", "alice")
    assert service.list_sources() == []
    assert stored_files(service) == []


def test_the_same_image_cannot_be_clean_and_a_defect(service: StudioService, slab_png) -> None:
    upload_slab(service, slab_png, seed=3)
    with pytest.raises(ValueError, match="already stored as a clean slab"):
        service.upload_images([("again.png", slab_png(48, 40, 3))], "defect", "scratches", "bob")
    assert len(service.list_sources()) == 1


def test_generate_stores_pending_samples_with_png_metadata(service: StudioService, slab_png) -> None:
    source_id = upload_slab(service, slab_png)
    steps_seen = []
    outcome = service.generate_candidates(
        source_id,
        GenerationConfig("scratches", num_candidates=2, seed=5, **FAST),
        "alice",
        progress=lambda step, total, message: steps_seen.append((step, total)),
    )
    assert [c.seed for c in outcome.candidates] == [5, 6]
    assert steps_seen[-1] == (2, 2)
    details = service.sample_details(outcome.sample_ids[0])
    assert (details.status, details.revision, details.source_image_id) == ("pending", 0, source_id)
    params = read_png_parameters(details.path.read_bytes())
    assert params.token == "<scratches>"
    assert params.seed == 5 and params.strength == 1.0
    assert params.adapter_version == 1 and params.source_image_id == source_id
    assert (params.width, params.height) == (48, 40)
    assert details.params == params


def test_generate_refuses_bad_requests(service: StudioService, slab_png) -> None:
    source_id = upload_slab(service, slab_png)
    defect_id = service.upload_images([("d.png", slab_png(48, 40, 9))], "defect", "inclusion", "alice").sources[0].id
    with pytest.raises(ValueError, match="Unknown defect class 'crazing'"):
        service.generate_candidates(source_id, GenerationConfig("crazing", **FAST), "alice")
    with pytest.raises(ValueError, match="generate on a clean slab"):
        service.generate_candidates(defect_id, GenerationConfig("scratches", **FAST), "alice")
    with pytest.raises(ValueError, match="no uploaded image with id 999"):
        service.generate_candidates(999, GenerationConfig("scratches", **FAST), "alice")


def test_accept_reject_undo_and_a_stale_decision(service: StudioService, slab_png) -> None:
    source_id = upload_slab(service, slab_png)
    first, second = service.generate_candidates(
        source_id, GenerationConfig("inclusion", num_candidates=2, **FAST), "alice"
    ).sample_ids

    accepted = service.decide(first, "accepted", None, "alice", expected_revision=0)
    rejected = service.decide(second, "rejected", "  looks painted  ", "bob", expected_revision=0)
    assert (accepted.applied, accepted.status, accepted.revision) == (True, "accepted", 1)
    assert rejected.status == "rejected"

    stale = service.decide(first, "rejected", None, "bob", expected_revision=0)
    assert not stale.applied and stale.status == "accepted" and "changed meanwhile" in stale.message

    undone = service.undo(first, "alice")
    assert (undone.applied, undone.status) == (True, "pending")
    with pytest.raises(ValueError, match="no decision to undo"):
        service.undo(first, "alice")

    details = service.sample_details(second)
    assert details.decisions[-1] | {"at": None} == {
        "status": "rejected",
        "reason": "looks painted",
        "user": "bob",
        "at": None,
        "outcome": "applied",
    }
    view = service.dataset_view()
    (counts,) = view.counts
    assert (counts.class_name, counts.pending, counts.accepted, counts.rejected) == ("inclusion", 1, 0, 1)
    assert [row.id for row in service.dataset_view(status="rejected").rows] == [second]


def test_export_zip_holds_accepted_samples_and_real_defects(service: StudioService, slab_png) -> None:
    with pytest.raises(ValueError, match="Nothing to export"):
        service.export_dataset("alice")
    source_id = upload_slab(service, slab_png)
    service.upload_images([("real.png", slab_png(48, 40, 7))], "defect", "scratches", "alice")
    kept, dropped = service.generate_candidates(
        source_id, GenerationConfig("scratches", num_candidates=2, **FAST), "alice"
    ).sample_ids
    service.decide(kept, "accepted", None, "alice")
    service.decide(dropped, "rejected", "blurry", "alice")

    export = service.export_dataset("carol")

    assert export.n_items == 2 and export.path.is_file()
    assert service.verify_export(export.path) == []
    with zipfile.ZipFile(export.path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        images = sorted(name for name in archive.namelist() if name.startswith("images/"))
    assert [name.split("/")[1] for name in images] == ["scratches", "scratches"]
    kinds = {item["kind"]: item for item in manifest["items"]}
    assert set(kinds) == {"synthetic", "real"}
    assert kinds["synthetic"]["sample_id"] == kept
    assert kinds["synthetic"]["lineage"]["source_image_id"] == source_id
    assert kinds["synthetic"]["lineage"]["decided_by"] == "alice"
    assert manifest["extra"]["exported_by"] == "carol"


def test_import_folder_reads_class_subfolders_and_voc_boxes(service: StudioService, slab_png, tmp_path: Path) -> None:
    images = tmp_path / "import"
    (images / "scratches").mkdir(parents=True)
    (images / "scratches" / "s1.png").write_bytes(slab_png(48, 40, 11))
    (images / "inclusion").mkdir()
    (images / "inclusion" / "i1.png").write_bytes(slab_png(48, 40, 12))
    annotations = tmp_path / "xml"
    annotations.mkdir()
    (annotations / "s1.xml").write_text(voc_xml(("scratches", 1, 2, 30, 20)))

    result = service.import_folder(images, "defect", annotations_dir=annotations, user="cli")

    assert sorted((s.class_name, s.name) for s in result.sources) == [("inclusion", "i1.png"), ("scratches", "s1.png")]
    assert service.trainable_classes() == ["inclusion", "scratches"]
    with pytest.raises(ValueError, match="class name"):
        service.import_folder(images / "scratches", "defect", user="cli")


def test_an_adapter_of_another_base_model_is_refused(service: StudioService, tiny_adapter: Path, tmp_path: Path):
    foreign = tmp_path / "foreign-adapter"
    shutil.copytree(tiny_adapter, foreign, ignore=shutil.ignore_patterns("checkpoint-*", "latents.pt"))
    index = json.loads((foreign / "tokens.json").read_text())
    (foreign / "tokens.json").write_text(json.dumps({**index, "base_model_hash": "0" * 12}))
    with pytest.raises(ValueError, match="trained on another base model"):
        service.register_adapter(foreign)
    assert {c.adapter_version for c in service.list_classes()} == {1}


def test_a_candidate_identical_to_a_stored_sample_is_skipped(service: StudioService, slab_png) -> None:
    source_id = upload_slab(service, slab_png)
    first = service.generate_candidates(source_id, GenerationConfig("scratches", num_candidates=2, seed=5, **FAST), "a")
    assert first.duplicate_seeds == [] and len(first.sample_ids) == 2
    again = service.generate_candidates(source_id, GenerationConfig("scratches", num_candidates=3, seed=6, **FAST), "b")
    assert again.duplicate_seeds == [6], "seed 6 made the same image as before"
    assert [c.seed for c in again.candidates] == [7, 8]
    assert len(service.dataset_view().rows) == 4


def test_sources_are_re_classed_boxed_and_deleted_with_their_samples(service: StudioService, slab_png) -> None:
    (real,) = service.upload_images([("real.png", slab_png(40, 30, 9))], "defect", "scratches", "a").sources
    again = service.upload_images([("real.png", slab_png(40, 30, 9))], "defect", "scratches", "a")
    assert again.summary.startswith(f"No new image stored. 1 already stored (ids {real.id})")

    moved = service.update_source(real.id, "rolled in scale", "2,3,20,10\n5,5,9,9")
    assert moved.class_name == "rolled in scale"
    assert service.source_boxes(real.id) == [
        {"label": "rolled in scale", "xmin": 2, "ymin": 3, "xmax": 20, "ymax": 10},
        {"label": "rolled in scale", "xmin": 5, "ymin": 5, "xmax": 9, "ymax": 9},
    ]
    assert service.list_sources(role="defect", class_name="rolled in scale")[0].id == real.id
    with pytest.raises(ValueError, match="outside"):
        service.update_source(real.id, box_text="0,0,41,10")
    assert service.update_source(real.id, box_text="").class_name == "rolled in scale"
    assert service.source_boxes(real.id) == []

    source_id = upload_slab(service, slab_png)
    outcome = service.generate_candidates(source_id, GenerationConfig("scratches", num_candidates=2, **FAST), "a")
    first, second = outcome.sample_ids
    service.decide(first, "accepted", None, "a")
    with pytest.raises(ValueError, match="1 accepted sample"):
        service.delete_source(source_id)
    assert service.delete_source(source_id, with_samples=True) == 2
    assert service.dataset_view().rows == [] and service.list_sources(role="clean") == []
    assert service.delete_source(real.id) == 0
    with pytest.raises(ValueError, match="no uploaded image"):
        service.delete_source(real.id)
