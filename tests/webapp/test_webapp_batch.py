"""A batch from a class's real images in the studio: the command line's batch path, stored as one pending batch."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from tests.support import served_client
from webapp.studio import StudioService


def test_a_batch_starts_from_the_class_real_images_and_is_stored_pending_with_its_lineage(
    service: StudioService, slab_png
) -> None:
    reals = service.upload_images(
        [(f"scratch {i}.png", slab_png(32, 24, 200 + i)) for i in range(3)], "defect", "scratches", "alice"
    ).sources
    service.upload_images([("slab.png", slab_png(48, 40, 0))], "clean", None, "alice")
    service.upload_images([("other.png", slab_png(40, 40, 300))], "defect", "inclusion", "alice")
    heard: list[tuple[int, int]] = []

    stored = service.generate_batch(
        "scratches", 4, 0, "bob", lambda done, total, _: heard.append((done, total)), realism_threshold=None
    )

    assert len(stored.sample_ids) == 4 and not stored.pre_rejected and stored.ended_early is None
    assert heard[-1] == (4, 4) and [done for done, _ in heard] == sorted(done for done, _ in heard)
    real_ids = {info.id: info for info in reals}
    for sample_id in stored.sample_ids:
        details = service.sample_details(sample_id)
        assert (details.class_name, details.status) == ("scratches", "pending")
        # Each sample starts from the class's own uploads (never the clean slab or another class's image), at
        # their size, and names the upload it started from.
        assert details.source_image_id in real_ids
        assert details.params.adapter_version == 1 and details.params.adapter_folder == "run"
        assert details.params.init["sources"][0].startswith(f"{details.source_image_id}-")
        with Image.open(details.path) as image:
            assert image.size == (32, 24)
    (batch,) = [b for b in service.batches() if "from 3 real images" in b.name]
    assert (batch.pending, batch.total) == (len(stored.sample_ids), len(stored.sample_ids))
    assert "pending samples" in stored.summary

    # At the default gate the tiny untrained model's noise is flagged at every strength down to the floor: the
    # batch ends, and what it made is stored pre-rejected for a person to judge, with the gate's reason.
    gated = service.generate_batch("scratches", 2, 1, "bob")
    assert gated.sample_ids and gated.pre_rejected == gated.sample_ids
    assert not set(gated.sample_ids) & set(stored.sample_ids)
    assert "The realism gate ended the batch" in gated.summary and "0 kept" in gated.summary
    assert {service.sample_details(i).status for i in gated.sample_ids} == {"pending"}

    # A stop after the first init keeps what that init made and says so.
    asked: list[int] = []
    stopped = service.generate_batch(
        "scratches", 6, 20, "bob", realism_threshold=None, should_stop=lambda: asked.append(1) or True
    )
    assert len(stopped.sample_ids) == 2 and len(asked) == 1
    assert "Stopped with 2 of 6 kept" in stopped.summary


def test_a_batch_needs_the_class_real_images_and_an_adapter(service: StudioService, slab_png) -> None:
    with pytest.raises(ValueError, match="no uploaded real defect images"):
        service.generate_batch("inclusion", 2, 0, "bob")
    service.upload_images([("new.png", slab_png(32, 32, 1))], "defect", "rust inclusion", "alice")
    with pytest.raises(ValueError, match="no trained adapter yet"):
        service.generate_batch("rust inclusion", 2, 0, "bob")


def test_the_stop_button_ends_a_running_batch_keeping_what_it_made(service: StudioService, slab_png) -> None:
    service.upload_images(
        [(f"scratch {i}.png", slab_png(32, 24, 200 + i)) for i in range(3)], "defect", "scratches", "alice"
    )
    with served_client(service) as client:
        client.predict(None, None, None, api_name="/generate_refresh")  # as the browser does on opening the tab
        job = client.submit(["scratches"], 400, 0, 0, api_name="/generate_batch")
        # Stop once the batch has made its first samples (written under the data folder's batches/ as it goes).
        deadline = time.monotonic() + 120
        while not any((service.ctx.data_dir / "batches").rglob("*.png")) and time.monotonic() < deadline:
            assert not job.done(), job.result()
            time.sleep(0.2)
        said = client.predict(api_name="/stop_batch")
        message, _, next_seed = job.result(timeout=120)

    stored = service.review_queue(limit=500)
    assert said.startswith("Stopping") and next_seed == 1
    assert "Stopped with" in message and 0 < len(stored) < 400


def test_a_preview_takes_its_turn_between_a_batch_inits(service: StudioService, slab_png) -> None:
    import threading

    from engine.config import GenerationConfig

    service.upload_images(
        [(f"scratch {i}.png", slab_png(32, 24, 400 + i)) for i in range(2)], "defect", "scratches", "a"
    )
    slab = service.upload_images([("slab.png", slab_png(48, 40, 1))], "clean", None, "a").sources[0]
    previewed = threading.Event()
    waited: list[bool] = []

    def preview() -> None:
        service.generate_candidates(slab.id, GenerationConfig("scratches", 1, 1.0, 2), "b")
        previewed.set()

    def after_an_init(done: int, total: int, _: str) -> None:
        if not waited:  # the batch is between its first init and its next: the model is free for a preview
            threading.Thread(target=preview, daemon=True).start()
            waited.append(previewed.wait(timeout=120))

    stored = service.generate_batch("scratches", 6, 0, "a", after_an_init, realism_threshold=None)
    assert waited == [True], "the preview ran while the batch was still going"
    assert len(stored.sample_ids) == 6
    assert len(service.dataset_view().rows) == 7
