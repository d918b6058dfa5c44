"""Masks and boxes through the service, the CLI and the UI: generate with a mask, import VOC boxes, export formats."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import launch
from engine.boxes import Box
from engine.config import GenerationConfig
from engine.data import parse_voc
from engine.generation.parameters import CandidateParameters, Window
from tests.support import encode, served_client, voc_xml
from webapp.studio import StudioService, parse_box_text
from webapp.tabs.common import painted_mask

FAST = {"strength": 1.0, "steps": 2}


def upload_slab(service: StudioService, slab_png, width: int = 64, height: int = 48) -> int:
    return service.upload_images([("slab.png", slab_png(width, height, 3))], "clean", None, "alice").sources[0].id


def test_a_masked_generation_stores_each_sample_with_its_mask_and_boxes(service: StudioService, slab_png) -> None:
    source_id = upload_slab(service, slab_png)
    mask = service.box_mask(source_id, "10,8,20,30\n40, 30, 60, 36")
    outcome = service.generate_candidates(
        source_id, GenerationConfig("inclusion", num_candidates=2, **FAST), "alice", mask=mask
    )
    for sample_id in outcome.sample_ids:
        details = service.sample_details(sample_id)
        assert details.boxes == [
            {"label": "inclusion", "xmin": 10, "ymin": 8, "xmax": 20, "ymax": 30},
            {"label": "inclusion", "xmin": 40, "ymin": 30, "xmax": 60, "ymax": 36},
        ]
        assert details.mask_path is not None
        assert hashlib.sha256(details.mask_path.read_bytes()).hexdigest() == details.params.masked.mask_sha256
        assert np.array_equal(np.asarray(Image.open(details.mask_path)), np.asarray(mask))
        assert details.params.masked.quality["background_ssim"] > 0.5
    # The dataset table shows each masked sample's background PSNR and change inside the mask.
    rows = {row.id: row for row in service.dataset_view().rows}
    for sample_id in outcome.sample_ids:
        quality = service.sample_details(sample_id).params.masked.quality
        assert (rows[sample_id].background_psnr, rows[sample_id].mask_change) == (
            quality["background_psnr"],
            quality["mask_change"],
        )
        assert rows[sample_id].mask_change > 0


def test_auto_place_gives_every_sample_its_own_mask(service: StudioService, slab_png) -> None:
    source_id = upload_slab(service, slab_png)
    config = GenerationConfig("scratches", num_candidates=2, auto_place=True, **FAST)
    first, second = (service.sample_details(i) for i in service.generate_candidates(source_id, config, "a").sample_ids)
    assert first.params.masked.mask_source == "auto-place" and first.boxes and second.boxes
    assert first.mask_path != second.mask_path


def test_auto_place_starts_from_the_class_s_boxed_real_defects_when_asked(service: StudioService, slab_png) -> None:
    pixels = np.full((48, 64), 50, dtype=np.uint8)
    pixels[20:28, 10:30] = 240
    defect = service.upload_images([("bright.png", encode(Image.fromarray(pixels)))], "defect", "scratches", "a")
    defect_id = defect.sources[0].id
    source_id = upload_slab(service, slab_png, 96, 64)
    config = GenerationConfig("scratches", num_candidates=2, auto_place=True, strength=0.5, steps=4)
    unboxed = service.generate_candidates(source_id, config, "a", paste_real_defects=True)
    assert unboxed.pasted_defects == 0, "no boxed image yet: the model paints alone"
    service.update_source(defect_id, box_text="10,20,30,28")
    outcome = service.generate_candidates(source_id, replace(config, seed=7), "a", paste_real_defects=True)
    assert outcome.pasted_defects == 1
    for sample_id in outcome.sample_ids:
        details = service.sample_details(sample_id)
        pasted = details.params.masked.pasted
        assert {paste["source"] for paste in pasted} == {f"{defect_id}:bright.png"}
        assert sorted(Box.of(b).corners for b in details.boxes) == sorted(Box.of(p["at"]).corners for p in pasted)
        mask = np.asarray(Image.open(details.mask_path)) > 0
        image = np.asarray(Image.open(details.path).convert("L"), dtype=float)
        assert image[mask].mean() > image[~mask].mean() + 40, "the bright real defect is in the sample"
    drawn_alone = service.generate_candidates(source_id, replace(config, seed=20), "a")
    assert drawn_alone.pasted_defects == 0 and all(
        not service.sample_details(i).params.masked.pasted for i in drawn_alone.sample_ids
    )


def test_box_text_is_parsed_and_checked(service: StudioService, slab_png) -> None:
    assert parse_box_text("1,2,3,4; 5,6,7,8\n") == [
        {"label": "", "xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4},
        {"label": "", "xmin": 5, "ymin": 6, "xmax": 7, "ymax": 8},
    ]
    with pytest.raises(ValueError, match="not x0,y0,x1,y1"):
        parse_box_text("1,2,3")
    with pytest.raises(ValueError, match="at least one box"):
        parse_box_text(" ")
    source_id = upload_slab(service, slab_png)
    with pytest.raises(ValueError, match="outside the 64×48 image"):
        service.box_mask(source_id, "10,10,70,20")


def test_painted_editor_layers_become_the_mask() -> None:
    layer = Image.new("RGBA", (32, 24), (0, 0, 0, 0))
    layer.paste((255, 0, 0, 128), (4, 5, 10, 9))
    mask = painted_mask({"background": None, "layers": [layer], "composite": None}, (64, 48))
    assert mask.size == (64, 48) and mask.getbbox() == (8, 10, 20, 18)
    assert painted_mask({"layers": [Image.new("RGBA", (32, 24))]}, (32, 24)) is None
    assert painted_mask(None, (32, 24)) is None


def test_export_formats_hold_synthetic_masks_and_imported_voc_boxes(
    service: StudioService, slab_png, tmp_path: Path
) -> None:
    source_id = upload_slab(service, slab_png)
    mask = service.box_mask(source_id, "10,8,20,30")
    (kept,) = service.generate_candidates(
        source_id, GenerationConfig("scratches", num_candidates=1, **FAST), "alice", mask=mask
    ).sample_ids
    service.decide(kept, "accepted", None, "alice")
    images, annotations = tmp_path / "real", tmp_path / "xml"
    images.mkdir()
    annotations.mkdir()
    (images / "s1.png").write_bytes(slab_png(48, 40, 11))
    (annotations / "s1.xml").write_text(voc_xml(("scratches", 1, 2, 30, 20)))
    service.import_folder(images, "defect", "scratches", annotations, "cli")

    export = service.export_dataset("carol", tmp_path / "all.zip")
    assert service.verify_export(export.path) == []
    with zipfile.ZipFile(export.path) as archive:
        archive.extractall(tmp_path / "all")
        names = set(archive.namelist())
    assert {"coco/instances.json", "data.yaml", "yolo-train.txt"} <= names
    assert sum(n.startswith("masks/") for n in names) == sum(n.startswith("voc/") for n in names) == 2
    coco = COCO(str(tmp_path / "all" / "coco" / "instances.json"))
    boxes = sorted(tuple(a["bbox"]) for a in coco.loadAnns(coco.getAnnIds()))
    # The VOC box 1..30 × 2..20 (1-based, inclusive) is COCO's x 0, y 1, 30 × 19 pixels.
    assert boxes == [(0, 1, 30, 19), (10, 8, 10, 22)]
    # Exported VOC files read back (engine.data.parse_voc) as the boxes that were imported and painted.
    read_back = sorted(
        (b.xmin, b.ymin, b.xmax, b.ymax) for n in names if n.startswith("voc/") for b in parse_voc(tmp_path / "all" / n)
    )
    assert read_back == [(0, 1, 30, 20), (10, 8, 20, 30)]

    launch.main(["export", "--data-dir", str(service.data_dir), "--model", str(service.model),
                 "--out", str(tmp_path / "yolo.zip"), "--formats", "yolo"])  # fmt: skip
    with zipfile.ZipFile(tmp_path / "yolo.zip") as archive:
        names = set(archive.namelist())
        assert json.loads(archive.read("manifest.json"))["formats"] == ["imagefolder", "yolo"]
    assert "data.yaml" in names and not any(n.startswith(("masks/", "coco/", "voc/")) for n in names)
    with pytest.raises(ValueError, match="Unknown export format"):
        service.export_dataset("carol", tmp_path / "bad.zip", ["tfrecord"])


def test_the_ui_generates_from_typed_boxes_and_shows_the_overlay(service: StudioService, slab_png) -> None:
    source_id = upload_slab(service, slab_png)
    with served_client(service) as client:
        client.predict(None, None, api_name="/generate_refresh")
        job = client.submit(source_id, "scratches", 1.0, 1, 2, 0, None, "5,5,25,20", False, api_name="/generate")
        _, _, message = job.result(timeout=120)
        assert message.startswith("1 candidates")
        (sample_id,) = [row.id for row in service.dataset_view().rows]
        shown, side_by_side = client.predict(sample_id, api_name="/candidate_overlay")
        labels = sorted(annotation["label"] for annotation in shown["annotations"])
        assert labels == ["mask", "scratches box"]
        views = service.review_views(service.sample_details(sample_id))
        x0, y0, x1, y1 = views.region
        assert (x0, y0) <= (5, 5) and (x1, y1) >= (25, 20) and (x1 - x0, y1 - y0) < (64, 48), "a close-up"
        with Image.open(shown["image"]) as image:
            assert image.size == (x1 - x0, y1 - y0)
        captions = [item["caption"] for item in side_by_side]
        assert captions[0].startswith("candidate, region") and captions[1:] == ["source, same region", "difference ×16"]
        job = client.submit(source_id, "scratches", 1.0, 1, 2, 1, None, "", True, api_name="/generate")
        assert job.result(timeout=120)[2].startswith("1 candidates")


def test_review_views_of_a_wide_slab_are_downscaled_close_ups(tmp_path: Path) -> None:
    from webapp.previews import review_views, thumbnail

    rng = np.random.default_rng(0)
    source = rng.integers(0, 255, (256, 1600), dtype=np.uint8)
    candidate = source.copy()
    candidate[100:140, 900:1000] = 255
    Image.fromarray(source).save(tmp_path / "source.png")
    Image.fromarray(candidate).save(tmp_path / "candidate.png")
    params = CandidateParameters("scratches", "<scratches>", "", 0.6, 4, 3.0, 0, 1600, 256, window=Window(800, 0, 256))
    boxes = [
        {"label": "scratches", "xmin": 900, "ymin": 100, "xmax": 1000, "ymax": 140},
        {"label": "", "xmin": 1000, "ymin": 200, "xmax": 1200, "ymax": 250},
        {"label": "scratches", "xmin": 100, "ymin": 10, "xmax": 150, "ymax": 40},
    ]
    views = review_views(
        "s1", tmp_path / "candidate.png", tmp_path / "source.png", params, tmp_path / "views", boxes=boxes, max_side=128
    )
    assert views.region == (800, 0, 1056, 256) and views.scale == 0.5
    assert views.annotations == [((50, 50, 100, 70), "scratches box"), ((100, 100, 128, 125), "defect box")], (
        "boxes in the close-up's pixels, cut at its edge; one outside the region is left out"
    )
    with Image.open(views.candidate) as close_up, Image.open(views.difference) as difference:
        assert close_up.size == difference.size == (128, 128)
        changed = np.asarray(difference) > 0
    assert changed[50:70, 50:100].all() and not changed[:40].any(), "the difference shows where the defect went"
    preview = thumbnail(tmp_path / "candidate.png", tmp_path / "views", 400)
    with Image.open(preview) as small:
        assert small.size == (400, 64)
    assert thumbnail(tmp_path / "candidate.png", tmp_path / "views", 4000) == tmp_path / "candidate.png"


def test_a_click_on_a_wide_slab_moves_the_window_there(service: StudioService, slab_png, tmp_path: Path) -> None:
    from engine.config import GenerationConfig

    wide = service.upload_images([("wide.png", slab_png(1600, 256, 4))], "clean", None, "a").sources[0]
    config = GenerationConfig("scratches", **FAST).centred_on(1500, 10, wide.width, wide.height)
    assert (config.window_x, config.window_y, config.window_side(wide.width, wide.height)) == (1344, 0, 256)
    with served_client(service) as client:
        client.predict(None, None, api_name="/generate_refresh")
        editor, picker = client.predict(wide.id, api_name="/show_source")
        with Image.open(editor["background"]) as shown, Image.open(picker) as outlined:
            assert max(shown.size) <= 768 and outlined.size == shown.size, "a downscaled slab reaches the browser"
            scale = shown.width / wide.width
        restored = client.predict(wide.id, api_name="/restore_slab")
        assert restored["layers"] == [] and Path(restored["background"]).name == Path(editor["background"]).name, (
            "clearing the painted mask keeps the slab"
        )
        boxed = client.predict(wide.id, "1400,100,1500,150", api_name="/show_boxes")
        with Image.open(boxed) as drawn:
            pixels = np.asarray(drawn.convert("RGB")).astype(int)
        cyan = (pixels[..., 0] < 40) & (pixels[..., 1] > 150) & (pixels[..., 2] > 200)
        rows, cols = np.nonzero(cyan)
        assert cyan.any() and abs(cols.min() - 1400 * scale) <= 2 and abs(rows.min() - 100 * scale) <= 2
        outcome = service.generate_candidates(wide.id, config, "a")
        params = service.sample_details(outcome.sample_ids[0]).params
        assert params.window == Window(1344, 0, 256)
        views = service.review_views(service.sample_details(outcome.sample_ids[0]))
        assert views.region == (1344, 0, 1600, 256), "the close-up is the chosen window"


def test_boxes_are_suggested_from_a_defect_image_and_shown_as_typed(
    service: StudioService, slab_png, tmp_path: Path
) -> None:
    from gradio_client import handle_file

    from tests.support import encode

    rng = np.random.default_rng(4)
    pixels = rng.normal(128, 10, (96, 120))
    pixels[30:46, 70:90] -= 70
    defect = encode(Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L"))
    source_id = service.upload_images([("spot.png", defect)], "defect", "rust spot", "alice").sources[0].id
    suggestion = service.suggest_boxes(source_id)
    assert suggestion.method == "estimate" and suggestion.boxed_images == 0 and not suggestion.compared
    (box,) = suggestion.boxes
    assert box["label"] == "rust spot"
    assert box["xmin"] <= 70 and box["ymin"] <= 30 and box["xmax"] >= 90 and box["ymax"] >= 46, "it holds the spot"
    assert (box["xmax"] - box["xmin"]) * (box["ymax"] - box["ymin"]) < 4 * 16 * 20, "and little else"

    image, annotations = service.source_view(source_id, "10,10,30,30\n5,5,")
    assert [label for _, label in annotations] == ["box 1"], "a line still being typed is left out"
    assert annotations[0][0] == (10, 10, 30, 30)
    with Image.open(image) as view:
        assert view.size == (120, 96)
    _, annotations = service.source_view(source_id, "", show_estimate=True)
    ((mask, label),) = annotations
    assert label == "estimated defect" and mask.shape == (96, 120) and mask[38, 80] == 1 and mask[80, 10] == 0

    slab_id = upload_slab(service, slab_png)
    with pytest.raises(ValueError, match="clean slab"):
        service.suggest_boxes(slab_id)
    with served_client(service) as client:
        text, shown, message = client.predict(source_id, api_name="/source_suggest_boxes")
        assert parse_box_text(text) == [{**box, "label": ""}] and shown is True and message.startswith("1 box(es)")
        _, _, refused = client.predict(slab_id, api_name="/source_suggest_boxes")
        assert refused.startswith("⚠️") and "clean slab" in refused
        another = tmp_path / "another spot.png"
        another.write_bytes(slab_png(40, 32, 9))
        uploaded, *_ = client.predict([handle_file(str(another))], "defect", "rust spot", api_name="/upload")
        assert uploaded.startswith("Stored 1 image(s)") and "Suggest boxes from the image" in uploaded


def test_suggestions_learn_a_texture_from_the_boxes_of_a_classs_images(service: StudioService) -> None:
    from tests.support import encode, textured

    images = [textured(seed) for seed in range(5)]
    files = [(f"pitted {n}.png", encode(Image.fromarray(pixels))) for n, (pixels, _) in enumerate(images)]
    stored = service.upload_images(files, "defect", "pitted surface", "alice").sources
    first = service.suggest_boxes(stored[4].id)
    assert first.method == "estimate" and not any(Box.of(b).iou(images[4][1]) >= 0.5 for b in first.boxes), (
        "the texture covers the image: nothing departs from it"
    )
    for source, (_, box) in zip(stored[:3], images, strict=False):
        service.update_source(source.id, None, ",".join(map(str, box.corners)))

    learnt = service.suggest_boxes(stored[4].id)
    assert (learnt.method, learnt.boxed_images, learnt.compared) == ("learnt", 3, True)
    (box,) = learnt.boxes
    assert box["label"] == "pitted surface" and Box.of(box).iou(images[4][1]) >= 0.7
    with served_client(service) as client:
        text, shaded, message = client.predict(stored[4].id, api_name="/source_suggest_boxes")
        assert Box.of(parse_box_text(text)[0]).iou(images[4][1]) >= 0.7 and shaded is False
        assert message.startswith("1 box(es) suggested, learnt from the boxes of 3 image(s) of this class")
        # Saved with its box, the next bare image opens with the boxes learnt from four.
        message, _, next_id, _, text, _, shaded = client.predict(
            stored[3].id, "pitted surface", ",".join(map(str, images[3][1].corners)), True, api_name="/source_save_next"
        )
        assert next_id == stored[4].id and shaded is False
        assert "Next without boxes" in message and "learnt from the boxes of 4 image(s)" in message
        assert Box.of(parse_box_text(text)[0]).iou(images[4][1]) >= 0.7

    for source in stored[:2]:
        service.update_source(source.id, None, "")
    assert service.suggest_boxes(stored[4].id).method == "estimate", "two boxed images are too few to learn from"


def test_strokes_painted_over_a_defect_image_become_its_boxes(service: StudioService, slab_png, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from PIL import ImageDraw

    defect = service.upload_images([("wide.png", slab_png(400, 200, 3))], "defect", "rust spot", "alice").sources[0]
    # Painted over a half-size view: an outline drawn round one defect, a patch painted over another.
    painted = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    draw = ImageDraw.Draw(painted)
    draw.rectangle((10, 20, 49, 59), outline=(0, 200, 255, 255), width=3)
    draw.rectangle((120, 30, 159, 69), fill=(0, 200, 255, 128))
    assert service.painted_boxes(defect.id, painted.getchannel("A")) == [
        {"label": "rust spot", "xmin": 20, "ymin": 40, "xmax": 100, "ymax": 120},
        {"label": "rust spot", "xmin": 240, "ymin": 60, "xmax": 320, "ymax": 140},
    ]
    slab_id = upload_slab(service, slab_png)
    with pytest.raises(ValueError, match="clean slab"):
        service.painted_boxes(slab_id, painted.getchannel("A"))

    # Through the served app: the pad shows the picked defect image (not a clean slab), and the painted boxes are
    # added below the typed ones in the image's pixels; nothing painted is refused in words.
    background, stroke, blank = tmp_path / "view.png", tmp_path / "stroke.png", tmp_path / "blank.png"
    Image.new("RGB", (400, 200), (120, 120, 120)).save(background)
    full_size = Image.new("RGBA", (400, 200), (0, 0, 0, 0))
    ImageDraw.Draw(full_size).rectangle((300, 50, 339, 79), fill=(0, 200, 255, 255))
    full_size.save(stroke)
    Image.new("RGBA", (400, 200), (0, 0, 0, 0)).save(blank)

    def editor(layer: Path) -> dict:
        return {"background": handle_file(str(background)), "layers": [handle_file(str(layer))], "composite": None}

    with served_client(service) as client:
        pad = client.predict(defect.id, api_name="/source_draw_pad")
        with Image.open(pad["background"]) as shown:
            assert shown.size == (400, 200)
        assert client.predict(slab_id, api_name="/source_draw_pad") is None
        text, message, cleared = client.predict(
            defect.id, "1,1,5,5", editor(stroke), api_name="/source_add_painted_boxes"
        )
        assert text == "1,1,5,5\n300,50,340,80" and message.startswith("1 painted box(es) added")
        assert cleared["layers"] == [], "the pad is cleared for the next defect"
        _, refused, _ = client.predict(defect.id, "", editor(blank), api_name="/source_add_painted_boxes")
        assert refused.startswith("⚠️") and "Paint over or round a defect" in refused


def test_one_view_made_by_many_requests_at_once(tmp_path: Path) -> None:
    """The gallery and an editor ask for the same view at once: each request gets the whole view, none an error."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from webapp.previews import thumbnail

    source = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1200), dtype=np.uint8)).save(source)
    for attempt in range(3):
        start = threading.Barrier(8)

        def make(_: int, start: threading.Barrier = start, cache: Path = tmp_path / f"views{attempt}") -> Path:
            start.wait()
            return thumbnail(source, cache, 256)

        with ThreadPoolExecutor(8) as pool:
            views = set(pool.map(make, range(8)))
        (view,) = views
        with Image.open(view) as shown:
            assert shown.size == (256, 192)
        assert [p.name for p in view.parent.iterdir()] == [view.name], "no partial file is left behind"


def upload_three_defects_and_a_slab(service: StudioService, slab_png) -> list:
    """Real defects first.png, second.png and third.png of class "rust spot", then a clean slab; the defects'
    SourceInfos, oldest first."""
    names = ("first", "second", "third")
    files = [(f"{name}.png", slab_png(40, 32, seed)) for seed, name in enumerate(names)]
    defects = service.upload_images(files, "defect", "rust spot", "alice").sources
    upload_slab(service, slab_png)
    return defects


def test_saving_boxes_opens_the_next_real_defect_without_boxes(service: StudioService, slab_png) -> None:
    first, second, third = upload_three_defects_and_a_slab(service, slab_png)
    service.update_source(first.id, None, "1,1,5,5")
    with served_client(service) as client:
        # The gallery shows the newest first: the slab, third, second, first.
        message, _, next_id, _, boxes, pad, _ = client.predict(
            third.id, "rust spot", "2,2,9,9", False, api_name="/source_save_next"
        )
        assert message == f"Image {third.id} saved (rust spot). Next without boxes: image {second.id} (second.png)."
        assert (next_id, boxes) == (second.id, "") and pad["layers"] == []
        message, *_ = client.predict(second.id, "rust spot", "", False, api_name="/source_save_next")
        assert message == f"Image {second.id} saved (rust spot). No other real defect image is without boxes."
        refused, *_ = client.predict(None, "rust spot", "", False, api_name="/source_save_next")
        assert refused.startswith("⚠️")
    assert service.source_boxes(third.id) == [{"label": "rust spot", "xmin": 2, "ymin": 2, "xmax": 9, "ymax": 9}]


def test_the_upload_gallery_shows_what_is_asked_and_the_newest_first(
    service: StudioService, slab_png, monkeypatch
) -> None:
    import webapp.tabs.upload

    first, second, third = upload_three_defects_and_a_slab(service, slab_png)
    service.update_source(second.id, None, "1,1,5,5")

    def captions(gallery: dict) -> list[str]:
        return [item["caption"] for item in gallery["value"]]

    with served_client(service) as client:
        unboxed = captions(client.predict("unboxed", api_name="/upload_show"))
        assert unboxed == [
            f"#{third.id} rust spot · third.png · no boxes yet",
            f"#{first.id} rust spot · first.png · no boxes yet",
        ]
        assert [c.split(" ")[0] for c in captions(client.predict("all", api_name="/upload_show"))] == [
            "#4",
            f"#{third.id}",
            f"#{second.id}",
            f"#{first.id}",
        ]
        assert captions(client.predict("clean", api_name="/upload_show")) == ["#4 clean · slab.png"]
        monkeypatch.setattr(webapp.tabs.upload, "GALLERY_LIMIT", 2)
        capped = client.predict("defect", api_name="/upload_show")
        assert len(capped["value"]) == 2 and capped["label"].endswith("the newest 2 of 3"), capped["label"]
