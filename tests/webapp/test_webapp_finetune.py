"""Fine-tuning from the curated dataset in the background: progress, stop, resume, new adapter version."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.adapters import read_adapter
from engine.config import GenerationConfig
from engine.data import list_images
from engine.generation.generate import AUTO_PLACE_OWN, read_png_parameters
from tests.support import voc_xml
from webapp.studio import MASKED_LOSS_BACKGROUND_WEIGHT, StudioService
from webapp.tabs.finetune import counts_message

RUN_TIMEOUT_S = 240


def upload_training_data(service: StudioService, slab_png, class_name: str) -> None:
    service.upload_images([("slab.png", slab_png(48, 40, 0))], "clean", None, "alice")
    reals = [(f"{class_name}{i}.png", slab_png(32, 32, 100 + i)) for i in range(2)]
    service.upload_images(reals, "defect", class_name, "alice")


def test_a_finished_run_becomes_the_active_adapter_with_previews(service: StudioService, slab_png) -> None:
    upload_training_data(service, slab_png, "scratches")
    with pytest.raises(ValueError, match="No real defect images or accepted samples for inclusion"):
        service.start_finetune(["inclusion"], "cpu-quick", 2, "alice")

    run_id = service.start_finetune(["scratches"], "cpu-quick", 2, "alice")
    status = service.wait_for_run(run_id, RUN_TIMEOUT_S)

    assert status.status == "completed", status.message
    assert (status.step, status.total) == (2, 2)
    assert len(status.previews) == 3 and all(p.is_file() for p in status.previews)
    # The previews are what a batch from the class's own images makes: at their size, from their pixels.
    for preview in status.previews:
        params = read_png_parameters(preview.read_bytes())
        assert Image.open(preview).size == (32, 32) and params.init["sources"][0].startswith("source-")
    classes = {c.name: c for c in service.list_classes()}
    assert classes["scratches"].adapter_version == 2
    assert classes["scratches"].adapter_path.endswith("run-0001")
    assert classes["inclusion"].adapter_version == 1
    source_id = service.list_sources(role="clean")[0].id
    outcome = service.generate_candidates(source_id, GenerationConfig("scratches", steps=2, strength=1.0), "bob")
    assert service.sample_details(outcome.sample_ids[0]).params.adapter_version == 2
    assert status.elapsed_s > 0 and status.eta_s is None and status.fraction == 1.0
    assert service.training_counts(["scratches", "inclusion"]) == {
        "scratches": {"real": 2, "boxed": 0, "accepted": 0},
        "inclusion": {"real": 0, "boxed": 0, "accepted": 0},
    }

    # Roll back to the shipped adapter, then forward again.
    versions = service.adapter_versions("scratches")
    assert [(v.version, v.is_active) for v in versions] == [(1, False), (2, True)]
    assert service.activate_adapter_version("scratches", 1).is_active
    classes = {c.name: c for c in service.list_classes()}
    assert classes["scratches"].adapter_version == 1
    rolled_back = service.generate_candidates(source_id, GenerationConfig("scratches", steps=2, strength=1.0), "bob")
    assert service.sample_details(rolled_back.sample_ids[0]).params.adapter_version == 1
    with pytest.raises(ValueError, match="no adapter version 7"):
        service.activate_adapter_version("scratches", 7)
    service.activate_adapter_version("scratches", 2)
    assert [v.is_active for v in service.adapter_versions("scratches")] == [False, True]


def test_a_stopped_run_resumes_from_its_checkpoint(service: StudioService, slab_png) -> None:
    upload_training_data(service, slab_png, "inclusion")
    run_id = service.start_finetune(["inclusion"], "cpu-quick", 3, "alice")
    with pytest.raises(ValueError, match=f"run {run_id} is still training"):
        service.start_finetune(["inclusion"], "cpu-quick", 3, "alice")
    service.stop_finetune(run_id)

    stopped = service.wait_for_run(run_id, RUN_TIMEOUT_S)
    assert (stopped.status, stopped.step) == ("stopped", 1), stopped.message
    assert service.list_classes()[0].adapter_version == 1

    resumed_id = service.resume_finetune(run_id, "bob")
    resumed = service.wait_for_run(resumed_id, RUN_TIMEOUT_S)
    assert (resumed.status, resumed.step, resumed.resumed_from) == ("completed", 3, run_id), resumed.message
    assert {c.name: c.adapter_version for c in service.list_classes()}["inclusion"] == 2
    with pytest.raises(ValueError, match="resumed before"):
        service.resume_finetune(run_id, "bob")


def test_the_training_snapshot_carries_each_image_defect_mask(service: StudioService, slab_png, tmp_path) -> None:
    # A real defect imported with its NEU-DET box (Sc_7.png pairs with scratches_7.xml) and an accepted masked sample.
    images, annotations = tmp_path / "images", tmp_path / "xml"
    images.mkdir()
    annotations.mkdir()
    (images / "Sc_7.png").write_bytes(slab_png(40, 32, 7))
    (annotations / "scratches_7.xml").write_text(voc_xml(("scratches", 3, 1, 10, 32)))
    service.import_folder(images, "defect", "scratches", annotations, "alice")
    source_id = service.upload_images([("slab.png", slab_png(48, 40, 0))], "clean", None, "alice").sources[0].id
    drawn = service.box_mask(source_id, "20,10,30,30")
    (sample_id,) = service.generate_candidates(
        source_id, GenerationConfig("scratches", num_candidates=1, strength=1.0, steps=2), "alice", mask=drawn
    ).sample_ids
    service.decide(sample_id, "accepted", None, "alice")

    run_id = service.start_finetune(["scratches"], "cpu-quick", 2, "alice", masked_loss=True)
    status = service.wait_for_run(run_id, RUN_TIMEOUT_S)
    assert status.status == "completed", status.message
    config = json.loads((service.runs_dir / "run-0001" / "config.json").read_text())
    assert config["background_loss_weight"] == MASKED_LOSS_BACKGROUND_WEIGHT < 1
    dataset = service.runs_dir / "run-0001" / "dataset" / "scratches"
    (real_mask,) = dataset.glob("source-*_mask.png")
    expected = np.zeros((32, 40), dtype=bool)
    expected[0:32, 2:10] = True
    assert np.array_equal(np.asarray(Image.open(real_mask)) > 0, expected)
    (sample_mask,) = dataset.glob("sample-*_mask.png")
    assert np.array_equal(np.asarray(Image.open(sample_mask)) > 0, np.asarray(drawn) > 0)
    # The masks sit beside the images without being taken for training images themselves.
    assert len(list_images(dataset)) == 2
    # The class's own defects, in their images' pixels, size the masks auto-place draws with the new adapter.
    placement = read_adapter(service.runs_dir / "run-0001").tokens["scratches"].placement
    assert np.allclose(placement["classes"]["_own"]["boxes"], [[8, 32], [10, 20]], atol=1), "read at 128 px"
    config = GenerationConfig("scratches", num_candidates=1, strength=1.0, steps=2, auto_place=True)
    (auto_id,) = service.generate_candidates(source_id, config, "alice").sample_ids
    assert service.sample_details(auto_id).params.masked.mask_source == AUTO_PLACE_OWN
    (version,) = [v for v in service.adapter_versions("scratches") if v.path.endswith("run-0001")]
    assert version.learnt.startswith("Auto-place from its own 2 defects in 2 images (median")


def test_the_counts_say_how_many_real_images_have_boxes(service: StudioService, slab_png) -> None:
    upload_training_data(service, slab_png, "rust spot")
    service.upload_images([(f"pitted{i}.png", slab_png(32, 32, 200 + i)) for i in range(2)], "defect", "pitted", "a")
    first, _ = service.list_sources(role="defect", class_name="rust spot")
    service.update_source(first.id, None, "2,2,20,20")
    assert service.training_counts(["rust spot", "pitted"]) == {
        "rust spot": {"real": 2, "boxed": 1, "accepted": 0},
        "pitted": {"real": 2, "boxed": 0, "accepted": 0},
    }
    shown = counts_message(service.training_counts(["rust spot", "pitted"]))
    assert "- **rust spot**: 2 real (1 with boxes), 0 accepted samples" in shown
    assert "pitted: no real image has boxes" in shown and "rust spot: no real" not in shown
