"""A candidate's parameters: the typed record, its JSON form (PNG metadata, database row, export) and old files."""

from __future__ import annotations

from PIL import Image

from engine.boxes import Box
from engine.generation.parameters import (
    CandidateParameters,
    MaskedRepaint,
    Realism,
    SlabWindow,
    Window,
    repainted_region,
)

# The keys every candidate has carried since the first release.
CORE = {
    "class_name": "scratches",
    "token": "<scratches>",
    "prompt": "a grayscale photo of a steel surface with <scratches>",
    "strength": 0.6,
    "steps": 20,
    "guidance_scale": 3.0,
    "seed": 4,
    "width": 300,
    "height": 100,
}


def test_a_window_candidate_round_trips_through_its_json() -> None:
    params = CandidateParameters(**CORE, window=Window(10, 0, 100), init={"kind": "mosaic", "sources": ["a.bmp"]})
    params.realism = Realism(0.8, 0.9, reference="NEU training pool (shipped features)", untouched_source_score=0.1)
    params.realism_threshold, params.pre_rejected = 0.3, False
    data = params.as_dict()
    assert data["window"] == {"x": 10, "y": 0, "size": 100} and "windows" not in data and "boxes" not in data
    assert data["realism"] == {
        "score": 0.8,
        "class_probability": 0.9,
        "reference": "NEU training pool (shipped features)",
        "untouched_source_score": 0.1,
    }
    assert data["pre_rejected"] is False and "source_image_id" not in data
    assert CandidateParameters.from_dict(data) == params
    assert params.boxes == [] and params.init_kind == "mosaic" and not params.init_is_source


def test_a_source_init_turned_a_quarter_is_not_the_source_itself() -> None:
    plain = CandidateParameters(**CORE, init={"kind": "source", "sources": ["a.png"]})
    turned = CandidateParameters(**CORE, init={"kind": "source", "sources": ["a.png"], "turn": 90})
    assert plain.init_is_source and turned.init_kind == "source" and not turned.init_is_source
    assert CandidateParameters(**CORE).init_is_source


def test_a_masked_candidate_keeps_its_windows_boxes_and_quality() -> None:
    box = Box(100, 20, 150, 40, "scratches")
    quality = {"background_psnr": 40.0}
    masked = MaskedRepaint([SlabWindow(0, 0, 300, 100)], "drawn", "ab" * 32, 4, 1.5625, [box], quality)
    params = CandidateParameters(**CORE, masked=masked)
    data = params.as_dict()
    assert data["window"] is None and data["windows"] == [{"x": 0, "y": 0, "width": 300, "height": 100}]
    assert data["boxes"] == [{"label": "scratches", "xmin": 100, "ymin": 20, "xmax": 150, "ymax": 40}]
    assert data["quality"] == {"background_psnr": 40.0} and data["mask_source"] == "drawn"
    assert CandidateParameters.from_dict(data) == params and params.boxes == [box]


def test_an_old_file_reads_with_defaults_and_keeps_keys_this_version_does_not_know() -> None:
    old = {**CORE, "window": {"x": 0, "y": 0, "size": 100}, "realism": {"score": 0.5}, "scheduler": "euler"}
    params = CandidateParameters.from_dict(old)
    assert params.window == Window(0, 0, 100) and params.realism == Realism(0.5)
    assert params.detail_restore == 0.0 and params.resolution is None and params.init_kind == "source"
    assert params.extra == {"scheduler": "euler"} and params.as_dict()["scheduler"] == "euler"


def test_the_repainted_region_is_the_window_or_the_masked_crop() -> None:
    image = Image.new("L", (300, 100))
    window = CandidateParameters.from_dict({**CORE, "window": {"x": 10, "y": 0, "size": 100}})
    assert repainted_region(image, window).size == (100, 100)
    boxes = [
        {"label": "scratches", "xmin": 100, "ymin": 20, "xmax": 150, "ymax": 40},
        {"label": "scratches", "xmin": 160, "ymin": 30, "xmax": 200, "ymax": 60},
    ]
    # The boxes' union (100..200 × 20..60) grown by a tenth of its larger side on every side.
    masked = {**CORE, "window": None, "windows": [{"x": 0, "y": 0, "width": 300, "height": 100}], "boxes": boxes}
    assert repainted_region(image, CandidateParameters.from_dict(masked)).size == (120, 60)
    # A masked repaint without boxes (specks only): the extent of its windows.
    no_boxes = {**masked, "boxes": [], "windows": [{"x": 20, "y": 10, "width": 40, "height": 30}]}
    assert CandidateParameters.from_dict(no_boxes).repainted_box() == Box(20, 10, 60, 40)
    assert repainted_region(image, CandidateParameters.from_dict(CORE)).size == (300, 100)
