"""The studio in a real browser: Debian's headless Chromium, driven by Playwright, uploads, generates, accepts, exports.

Playwright's own browser download is never used (`playwright install` needs the network): it drives
/usr/bin/chromium, which `.ci/run` installs from Debian's `chromium` package.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage.export import unsafe_path_problem, verify_export
from tests.support import free_port, textured
from webapp.app import build_app, served_folders
from webapp.cli import queue_app
from webapp.studio import StudioService, parse_box_text

CHROMIUM = Path("/usr/bin/chromium")
# Headless on a machine with no network beyond loopback: no GPU, no background fetches, no first-run UI.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Generous: a loaded 2-core machine (a training run beside the suite) took over 60 s to show a finished upload.
STEP_TIMEOUT_MS = 120_000
SLAB_SIZE = (48, 40)

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent (apt-get install chromium)")


@contextmanager
def chromium_pages(url: str, tmp_path: Path, count: int = 1, **context_options) -> Iterator[list]:
    """`count` pages of one headless Chromium context, opened at `url`; when the test fails inside, a screenshot of
    the first page and the browser console's last lines are kept for the report."""
    from playwright.sync_api import sync_playwright

    console: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(**context_options)
            pages = [context.new_page() for _ in range(count)]
            for page in pages:
                page.set_default_timeout(STEP_TIMEOUT_MS)
                page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
                page.goto(url)
            try:
                yield pages
            except Exception:
                pages[0].screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                print(f"Screenshot: {tmp_path / 'failure.png'}\nBrowser console:\n" + "\n".join(console[-30:]))
                raise
        finally:
            browser.close()


@pytest.fixture
def studio_url(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> Iterator[tuple[StudioService, str]]:
    """The studio on the tiny model with the tiny adapter, served on a free loopback port."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    service = StudioService(tmp_path / "data", model=str(tiny_model))
    service.register_adapter(tiny_adapter)
    app = queue_app(build_app(service))
    try:
        _, url, _ = app.launch(
            prevent_thread_lock=True, server_port=free_port(), allowed_paths=served_folders(service), quiet=True
        )
        yield service, url
    finally:
        app.close()
        service.close()
        torch.set_num_threads(threads)


def test_upload_generate_accept_and_download_the_export_in_chromium(
    studio_url: tuple[StudioService, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    service, url = studio_url
    slab = tmp_path / "slab.png"
    pixels = np.random.default_rng(0).normal(128, 12, SLAB_SIZE[::-1]).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(slab)

    with chromium_pages(url, tmp_path, accept_downloads=True, viewport={"width": 1280, "height": 900}) as (page,):
        # 1. Upload a clean slab
        page.get_by_role("button", name="Upload and store").wait_for()
        page.locator("input[type=file]").set_input_files(str(slab))
        page.get_by_text("slab.png").filter(visible=True).first.wait_for()
        page.get_by_role("button", name="Upload and store").click()
        page.get_by_text("Stored 1 image(s)").wait_for()
        (source,) = service.list_sources(role="clean")
        assert (source.name, source.uploaded_by) == ("slab.png", "local")

        # 2. Two candidates of 2 steps at full strength on it
        page.get_by_role("tab", name="Generate & review").click()
        expect(page.get_by_role("combobox", name="Clean slab", exact=True)).to_have_value(
            f"#{source.id} slab.png (48×40)"
        )
        for label, value in (
            ("Strength (how much the model repaints)", "1"),
            ("Candidates", "2"),
            ("Steps", "2"),
        ):
            box = page.get_by_label(f"number input for {label}", exact=True)
            box.fill(value)
            box.press("Enter")
        # On a clean slab auto-place is on by default: a whole window would re-texture the steel, not add a defect.
        expect(page.get_by_role("checkbox", name=re.compile("^Auto-place"))).to_be_checked()
        page.get_by_role("button", name="Generate candidates").click()
        page.get_by_text(re.compile(r"^2 candidates in [0-9.]+ s; judge each one\.")).wait_for()
        first, second = sorted(row.id for row in service.dataset_view().rows)
        assert all(row.mask_change is not None for row in service.dataset_view().rows), "masked repaints"
        # Choosing a window to redraw means a whole window: it unticks auto-place.
        page.get_by_text("Window on a large slab (click to choose where it goes) and typed boxes").click()
        picker_label = page.get_by_text("Whole-window generation repaints the outlined window; click to centre a")
        picker = page.locator(".block", has=picker_label).last
        picker.locator(".image-frame img").click()
        expect(page.get_by_role("checkbox", name=re.compile("^Auto-place"))).not_to_be_checked()

        # 3. Accept the selected (first) candidate
        candidate = page.get_by_role("combobox", name="Candidate to judge (click an image or pick here)")
        expect(candidate).to_have_value(re.compile(rf"^#{first} "))
        page.get_by_role("button", name="Accept candidate").click()
        page.get_by_text(f"Sample {first} is now accepted.").wait_for()
        statuses = {row.id: (row.status, row.decided_by) for row in service.dataset_view().rows}
        assert statuses == {first: ("accepted", "local"), second: ("pending", None)}

        # 4. Export and download the zip through the page's link
        page.get_by_role("tab", name="Export").click()
        page.get_by_role("button", name="Export accepted dataset (zip)").click()
        page.get_by_text(re.compile(r"^Export \d+: 1 images")).wait_for()
        with page.expect_download() as download_info:
            page.locator('a[download$=".zip"]').click()
        downloaded = tmp_path / "downloaded.zip"
        download_info.value.save_as(downloaded)

    # 5. The downloaded file is the export: intact, safe paths, the accepted candidate with its parameters
    assert verify_export(downloaded) == []
    with zipfile.ZipFile(downloaded) as archive:
        names = archive.namelist()
        manifest = json.loads(archive.read("manifest.json"))
        (item,) = manifest["items"]
        image = Image.open(io.BytesIO(archive.read(item["path"])))
    assert all(unsafe_path_problem(name) is None for name in names)
    assert (item["kind"], item["sample_id"], item["lineage"]["decided_by"]) == ("synthetic", first, "local")
    assert (item["params"]["steps"], item["params"]["strength"]) == (2, 1.0)
    assert image.size == SLAB_SIZE


def test_the_review_queue_across_batches_reloads_and_tabs_and_a_wide_slab_up_close(
    studio_url: tuple[StudioService, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    from engine.config import GenerationConfig

    service, url = studio_url
    rng = np.random.default_rng(1)
    slabs = []
    for name, size in (("slab.png", SLAB_SIZE), ("wide.png", (1600, 256))):
        buffer = io.BytesIO()
        Image.fromarray(rng.normal(128, 12, size[::-1]).clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
        slabs.append(service.upload_images([(name, buffer.getvalue())], "clean", None, "setup").sources[0])
    fast = {"strength": 1.0, "steps": 2, "num_candidates": 2}
    earlier = service.generate_candidates(slabs[0].id, GenerationConfig("scratches", seed=0, **fast), "setup")
    service.generate_candidates(slabs[0].id, GenerationConfig("scratches", seed=10, **fast), "setup")
    wide_config = GenerationConfig("scratches", seed=20, **fast).centred_on(1500, 100, 1600, 256)
    (wide_sample, _) = service.generate_candidates(slabs[1].id, wide_config, "setup").sample_ids
    first, second = earlier.sample_ids

    with chromium_pages(url, tmp_path, 2, viewport={"width": 1280, "height": 1000}) as (page, other):
        for tab in (page, other):
            tab.get_by_role("tab", name="Dataset and review queue").click()
        sample_id = page.get_by_label("Sample id")

        # 1. A sample of an earlier batch, decided after a reload: typed id, then A on the keyboard
        page.reload()
        page.get_by_role("tab", name="Dataset and review queue").click()
        sample_id.fill(str(first))
        sample_id.press("Enter")
        page.get_by_text("Parameters and review history").wait_for()
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("a")
        page.get_by_text(f"Sample {first} is now accepted.").wait_for()

        # 2. The other tab sees it without a reload (the queue refreshes itself)
        expect(other.locator("table").get_by_text("accepted").first).to_be_visible(timeout=STEP_TIMEOUT_MS)

        # 3. Next pending from the queue, rejected with a reason, from the other tab
        other.get_by_role("button", name="Next pending (→)").click()
        expect(other.get_by_label("Sample id")).to_have_value(str(second))
        other.get_by_label("Reject reason (optional)").fill("seam visible")
        other.get_by_role("button", name="Reject (R)").click()
        other.get_by_text(f"Sample {second} is now rejected.").wait_for()
        assert {r.id: r.status for r in service.dataset_view().rows}[second] == "rejected"

        # 4. A sample on a wide slab is judged on its window, not the 1600 px slab
        sample_id.fill(str(wide_sample))
        sample_id.press("Enter")
        page.get_by_text("candidate, region 1344,0–1600,256").first.wait_for()
        # The caption can arrive before the close-up image has loaded; wait for the image itself.
        page.wait_for_function(
            "() => [...document.images].some(i => i.naturalWidth === 256 && i.naturalHeight === 256)"
        )
        sizes = page.evaluate("() => [...document.images].map(i => [i.naturalWidth, i.naturalHeight])")
        assert [256, 256] in sizes and not any(w >= 1600 for w, _ in sizes), sizes


def test_a_batch_from_the_class_real_images_in_chromium(studio_url: tuple[StudioService, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    service, url = studio_url
    rng = np.random.default_rng(2)
    reals = []
    for index in range(2):
        buffer = io.BytesIO()
        Image.fromarray(rng.normal(128, 12, (24, 32)).clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
        reals.append((f"scratch {index}.png", buffer.getvalue()))
    real_ids = {info.id for info in service.upload_images(reals, "defect", "scratches", "setup").sources}

    with chromium_pages(url, tmp_path, viewport={"width": 1280, "height": 1000}) as (page,):
        page.get_by_role("tab", name="Generate & review").click()
        # The classes with real images are chosen: scratches (inclusion has an adapter but no uploads).
        page.get_by_text("A batch from a class's real defect images").first.wait_for()
        chosen = page.locator(".token").filter(has_text="scratches")
        expect(chosen).to_have_count(1)
        expect(page.locator(".token").filter(has_text="inclusion")).to_have_count(0)
        page.get_by_label("Samples per class", exact=True).fill("2")
        # The tiny untrained model's samples would all be flagged; with the gate off the batch keeps them.
        page.get_by_label("Realism gate (0: off)").fill("0")
        page.get_by_role("button", name="Generate batch").click()
        page.get_by_text(re.compile(r"Stored 2 pending samples")).first.wait_for()
        expect(page.get_by_label("Batch seed")).to_have_value("1")

    rows = service.review_queue()
    assert len(rows) == 2 and {service.sample_details(r.id).source_image_id for r in rows} <= real_ids
    (batch,) = [b for b in service.batches() if "from 2 real images" in b.name]
    assert (batch.pending, batch.total) == (2, 2)


def upload_real_defect(service: StudioService, pixels: np.ndarray, name: str, class_name: str):
    """A grey real defect image stored as if uploaded; its SourceInfo."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return service.upload_images([(name, buffer.getvalue())], "defect", class_name, "setup").sources[0]


def open_in_upload_editor(page, source_id: int):
    """Click the newest stored image in the Upload tab's gallery (its editor opens); the gallery's block."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Upload and store").wait_for()
    page.get_by_role("tab", name="Upload").click()
    gallery = page.locator(".block", has=page.get_by_text("Stored images (click one to edit it)")).last
    gallery.locator("img").first.click()
    expect(page.get_by_label("Image id")).to_have_value(str(source_id))
    return gallery


def test_boxes_suggested_for_a_real_defect_are_corrected_and_saved_in_chromium(
    studio_url: tuple[StudioService, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    service, url = studio_url
    pixels = np.random.default_rng(5).normal(128, 10, (96, 120))
    pixels[30:46, 70:90] -= 70
    source = upload_real_defect(service, pixels, "spot.png", "rust spot")

    with chromium_pages(url, tmp_path, viewport={"width": 1280, "height": 1000}) as (page,):
        gallery = open_in_upload_editor(page, source.id)
        expect(gallery.get_by_text("rust spot · spot.png · no boxes yet").first).to_be_visible()
        boxes = page.get_by_role("textbox", name=re.compile("^Defect boxes"))
        expect(boxes).to_have_value("")
        page.get_by_role("button", name="Suggest boxes from the image").click()
        page.get_by_text(re.compile(r"^1 box\(es\) suggested")).wait_for()
        expect(page.get_by_role("checkbox", name="Show where it departs from its steel")).to_be_checked()
        view = page.locator(".block", has=page.get_by_text("The image with its boxes as typed")).last
        expect(view.get_by_text("estimated defect")).to_be_visible()
        expect(view.get_by_text("box 1", exact=True)).to_be_visible()
        suggested = boxes.input_value()
        assert re.fullmatch(r"\d+,\d+,\d+,\d+", suggested)
        # The engineer adds a box the estimate did not find and saves both.
        boxes.fill(suggested + "\n2,2,20,20")
        page.get_by_role("button", name="Save class and boxes").click()
        page.get_by_text(f"Image {source.id} saved (rust spot).").wait_for()
        expect(gallery.get_by_text("rust spot · spot.png · 2 box(es)").first).to_be_visible()

    saved = service.source_boxes(source.id)
    assert len(saved) == 2 and saved[1] == {"label": "rust spot", "xmin": 2, "ymin": 2, "xmax": 20, "ymax": 20}
    assert saved[0]["xmin"] <= 70 and saved[0]["xmax"] >= 90, "the suggested box holds the spot"


def test_a_texture_is_suggested_from_the_classs_boxed_images_in_chromium(
    studio_url: tuple[StudioService, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    from engine.boxes import Box

    service, url = studio_url
    images = [textured(seed) for seed in range(5)]
    stored = [upload_real_defect(service, pixels, f"pitted {n}.png", "pitted") for n, (pixels, _) in enumerate(images)]
    for source, (_, box) in zip(stored[:3], images, strict=False):
        service.update_source(source.id, None, ",".join(map(str, box.corners)))

    with chromium_pages(url, tmp_path, viewport={"width": 1280, "height": 1000}) as (page,):
        open_in_upload_editor(page, stored[4].id)
        page.get_by_role("button", name="Suggest boxes from the image").click()
        page.get_by_text(re.compile(r"^1 box\(es\) suggested, learnt from the boxes of 3 image\(s\)")).wait_for()
        expect(page.get_by_role("checkbox", name="Show where it departs from its steel")).not_to_be_checked()
        boxes = page.get_by_role("textbox", name=re.compile("^Defect boxes"))
        suggested = boxes.input_value()
        # Saved as suggested, the next bare image opens with its boxes learnt from the four boxed ones.
        page.get_by_role("button", name="Save, then the next without boxes").click()
        page.get_by_text(
            re.compile(rf"Next without boxes: image {stored[3].id} .* learnt from the boxes of 4")
        ).wait_for()
        expect(page.get_by_label("Image id")).to_have_value(str(stored[3].id))
        following = boxes.input_value()

    (saved,) = service.source_boxes(stored[4].id)
    assert Box.of(saved).iou(images[4][1]) >= 0.7 and suggested == ",".join(map(str, Box.of(saved).corners))
    assert Box.of(parse_box_text(following)[0]).iou(images[3][1]) >= 0.7


def test_boxes_drawn_with_the_mouse_are_saved_and_the_next_bare_image_opens_in_chromium(
    studio_url: tuple[StudioService, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    service, url = studio_url
    older = upload_real_defect(service, np.random.default_rng(7).normal(128, 10, (64, 64)), "older.png", "craze")
    source = upload_real_defect(service, np.random.default_rng(6).normal(128, 10, (200, 300)), "crazing.png", "craze")

    with chromium_pages(url, tmp_path, viewport={"width": 1280, "height": 1100}) as (page,):
        open_in_upload_editor(page, source.id)
        page.get_by_text("Draw boxes with the mouse").click()
        pad = page.locator(".block", has=page.get_by_text("Paint over or round each defect")).last
        canvas = pad.locator("canvas").first
        canvas.scroll_into_view_if_needed()
        area = canvas.bounding_box()
        # An outline drawn round a third of the image, from its centre's left to right.
        left, top = area["x"] + area["width"] * 0.3, area["y"] + area["height"] * 0.3
        right, bottom = area["x"] + area["width"] * 0.7, area["y"] + area["height"] * 0.7
        page.mouse.move(left, top)
        page.mouse.down()
        for x, y in ((right, top), (right, bottom), (left, bottom), (left, top)):
            page.mouse.move(x, y, steps=8)
        page.mouse.up()
        page.get_by_role("button", name="Add the painted boxes").click()
        page.get_by_text(re.compile(r"^1 painted box\(es\) added")).wait_for()
        boxes = page.get_by_role("textbox", name=re.compile("^Defect boxes"))
        drawn = boxes.input_value()
        view = page.locator(".block", has=page.get_by_text("The image with its boxes as typed")).last
        expect(view.get_by_text("box 1", exact=True)).to_be_visible()
        # Saved, the editor moves on to the next image still without boxes (here without suggestions).
        page.get_by_role("checkbox", name="Suggest boxes on the next").uncheck()
        page.get_by_role("button", name="Save, then the next without boxes").click()
        page.get_by_text(
            f"Image {source.id} saved (craze). Next without boxes: image {older.id} (older.png)."
        ).wait_for()
        expect(page.get_by_label("Image id")).to_have_value(str(older.id))
        expect(boxes).to_have_value("")

    ((x0, y0, x1, y1),) = [tuple(map(int, line.split(","))) for line in drawn.splitlines()]
    (saved,) = service.source_boxes(source.id)
    assert saved == {"label": "craze", "xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}
    # The outline was drawn round the pad's centre, where the image is centred at the pad's zoom: its box lies round
    # the image's centre, in the image's pixels, within the image.
    assert abs((x0 + x1) / 2 - 150) <= 6 and abs((y0 + y1) / 2 - 100) <= 6, drawn
    assert 0 <= x0 < 150 - 30 and 150 + 30 < x1 <= 300 and 0 <= y0 < 100 - 20 and 100 + 20 < y1 <= 200, drawn
