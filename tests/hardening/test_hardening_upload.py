"""Bad uploads: property-based tests of normalise_upload, awkward real formats, and refusals that store nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hardening_support import encode, png_header_only, stored_files
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from sqlalchemy import func, select

from storage.files import safe_file_name
from storage.tables import SourceImage
from webapp.studio import StudioService
from webapp.validation import UploadError, normalise_upload

# Small images keep each example ~1 ms; the decoders' code paths do not depend on size.
SIDES = st.integers(16, 48)
SAVE_FORMATS = ["PNG", "JPEG", "BMP", "TIFF", "WEBP"]
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
EXIF_ORIENTATION = 0x0112
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def image_of_mode(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """A noisy image in `mode` with values spanning the mode's range."""
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        values = rng.integers(0, 65535, (height, width)).astype(np.uint16)
        image = Image.fromarray(values)
        return image if mode == "I;16" else image.convert(mode)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")
    return image.convert(mode, palette=Image.Palette.ADAPTIVE) if mode in ("P",) else image.convert(mode)


def decoded(result_png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(result_png)) as image:
        assert image.format == "PNG"
        image.load()
        return image.copy()


def check_refusal(error: UploadError, name: str) -> None:
    """A refusal is one readable line that names the file."""
    message = str(error)
    assert message.isprintable() and message.endswith("."), message
    assert len(message) < 400, message
    assert "/" not in message.split(" ")[0], f"the file name in {message!r} keeps a folder of {name!r}"


def normalise_or_refuse(name: str, data: bytes):
    """normalise_upload's result, or None after checking its UploadError; any other exception fails the test."""
    try:
        result = normalise_upload(name, data)
    except UploadError as error:
        check_refusal(error, name)
        return None
    assert result.mode in ("L", "RGB")
    image = decoded(result.png_bytes)
    assert image.mode == result.mode and (image.width, image.height) == (result.width, result.height)
    assert np.asarray(image).dtype == np.uint8
    return result


# Random and mutated bytes never crash the validator


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=4096), name=st.text(max_size=40))
@example(data=b"\x89PNG\r\n\x1a\n", name="header-only.png")
@example(data=b"II*\x00" + b"\x00" * 12, name="tiff-stub.tif")
@example(data=b"\xff\xd8\xff\xe0", name="jpeg-stub.jpg")
def test_random_bytes_are_refused_or_normalised_never_crash(data: bytes, name: str) -> None:
    normalise_or_refuse(name or "upload", data)


@PROPERTY_SETTINGS
@given(
    fmt=st.sampled_from(SAVE_FORMATS),
    mode=st.sampled_from(["L", "RGB"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), max_size=6),
)
def test_truncated_or_corrupted_files_are_refused_or_normalised(
    fmt: str, mode: str, cut: float, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(encode(image_of_mode(mode, 32, 24, 0), fmt))
    for position, xor in flips:
        data[int(position * len(data))] ^= xor
    normalise_or_refuse(f"damaged.{fmt.lower()}", bytes(data[: max(1, int(cut * len(data)))]))


# Valid images of every mode and format come out as 8-bit L or RGB of the same size


@PROPERTY_SETTINGS
@given(
    mode=st.sampled_from(MODES), fmt=st.sampled_from(SAVE_FORMATS), width=SIDES, height=SIDES, seed=st.integers(0, 9)
)
def test_valid_images_of_any_mode_normalise_to_8_bit_l_or_rgb(
    mode: str, fmt: str, width: int, height: int, seed: int
) -> None:
    image = image_of_mode(mode, width, height, seed)
    try:
        data = encode(image, fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # Pillow cannot write this mode in this format
    result = normalise_upload(f"camera.{fmt.lower()}", data)
    assert result.mode in ("L", "RGB")
    assert (result.width, result.height) == (width, height)
    assert np.asarray(decoded(result.png_bytes)).dtype == np.uint8
    again = normalise_upload("again.png", result.png_bytes)
    assert again.png_bytes == result.png_bytes and again.changes == []


@PROPERTY_SETTINGS
@given(orientation=st.integers(1, 8), width=st.integers(16, 40), height=st.integers(16, 40))
def test_every_exif_orientation_is_turned_upright(orientation: int, width: int, height: int) -> None:
    stored = image_of_mode("RGB", width, height, orientation)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    result = normalise_upload("phone.png", encode(stored, "PNG", exif=exif.tobytes()))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(encode(stored, "PNG", exif=exif.tobytes()))))
    assert np.array_equal(np.asarray(decoded(result.png_bytes)), np.asarray(expected))
    assert (orientation != 1) == any("EXIF" in change for change in result.changes)
    if orientation >= 5:
        assert (result.width, result.height) == (height, width)


# The awkward files named in the issue


def test_a_decompression_bomb_header_is_refused_before_decoding() -> None:
    with pytest.raises(UploadError) as error:
        normalise_upload("bomb.png", png_header_only(30000, 30000))
    check_refusal(error.value, "bomb.png")
    assert str(error.value).startswith("bomb.png ") and str(error.value).endswith(".")
    with pytest.raises(UploadError, match="megapixels"):
        normalise_upload("big.png", png_header_only(8000, 8000))


def test_a_16_bit_tiff_is_stretched_to_8_bit_grey() -> None:
    values = np.linspace(1000, 40000, 32 * 24).reshape(24, 32).astype(np.uint16)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    result = normalise_upload("linescan.tif", data)
    pixels = np.asarray(decoded(result.png_bytes))
    assert (result.mode, result.original_format) == ("L", "TIFF")
    assert (pixels.min(), pixels.max()) == (0, 255)
    assert np.all(np.diff(pixels.astype(int), axis=1) >= 0), "the stretch keeps the order of grey values"


def test_a_cmyk_jpeg_becomes_rgb_with_its_colours() -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    result = normalise_upload("press.jpg", data)
    red, green, blue = np.asarray(decoded(result.png_bytes)).reshape(-1, 3).mean(axis=0)
    assert result.mode == "RGB" and red > 200 and green < 60 and blue < 60


def test_palette_and_alpha_pngs_are_flattened_onto_black() -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:, 10:] = (200, 150, 100, 255)
    rgba[:, :10] = (255, 255, 255, 0)
    result = normalise_upload("alpha.png", encode(Image.fromarray(rgba, mode="RGBA")))
    pixels = np.asarray(decoded(result.png_bytes))
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, 19].tolist() == [200, 150, 100]
    grey_alpha = normalise_upload("la.png", encode(Image.new("LA", (20, 20), (90, 255))))
    assert grey_alpha.mode == "L" and np.asarray(decoded(grey_alpha.png_bytes)).max() == 90


@pytest.mark.parametrize(
    ("name", "shown"),
    [("../../etc/passwd.png", "passwd.png"), ("C:\\Users\\x\\..\\slab.png", "slab.png"), ("a\nb\x00.png", "a?b?.png")],
)
def test_file_names_lose_folders_and_control_characters(name: str, shown: str) -> None:
    with pytest.raises(UploadError) as error:
        normalise_upload(name, b"")
    assert str(error.value) == f"{shown} is empty (0 bytes)."


# Through the service: a refusal anywhere in a batch stores nothing


@pytest.mark.parametrize(
    ("bad_name", "bad_data", "message"),
    [
        ("text.png", b"not pixels at all", "not an image"),
        ("bomb.png", png_header_only(30000, 30000), "too large"),
        ("cut.png", None, "damaged or truncated"),
        ("tiny.png", encode(Image.new("L", (4, 4))), "at least 16 px"),
    ],
    ids=["not-an-image", "bomb", "truncated", "too-small"],
)
def test_a_batch_with_one_bad_file_stores_nothing(
    service: StudioService, slab_png, bad_name: str, bad_data: bytes | None, message: str
) -> None:
    if bad_data is None:
        good = slab_png(64, 64, 9)
        bad_data = good[: len(good) // 2]
    batch = [("ok1.png", slab_png(48, 40, 1)), (bad_name, bad_data), ("ok2.png", slab_png(48, 40, 2))]
    with pytest.raises(UploadError, match=message):
        service.upload_images(batch, "defect", "scratches", "alice")
    assert service.list_sources() == [] and stored_files(service) == []
    with service.database.session() as s:
        assert s.scalar(select(func.count()).select_from(SourceImage)) == 0


def test_a_batch_over_the_size_limit_is_refused_before_decoding(
    service: StudioService, slab_png, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("webapp.studio.sources.MAX_BATCH_FILES", 3)
    batch = [(f"slab{i}.png", slab_png(32, 32, i)) for i in range(4)]
    with pytest.raises(ValueError, match="4 files at once; the limit is 3") as error:
        service.upload_images(batch, "clean", None, "alice")
    assert "\n" not in str(error.value)
    monkeypatch.setattr("webapp.studio.sources.MAX_BATCH_BYTES", sum(len(d) for _, d in batch[:3]) - 1)
    with pytest.raises(ValueError, match="MB in one batch"):
        service.upload_images(batch[:3], "clean", None, "alice")
    assert service.list_sources() == [] and stored_files(service) == []


def test_odd_file_names_are_stored_as_plain_names_inside_the_store(service: StudioService, slab_png) -> None:
    names = ["../../../etc/cron.d/evil.png", "..\\..\\win.png", "slab 01 (ß).png", "\x00\n.png", "." * 300]
    files = [(name, slab_png(32, 32, i)) for i, name in enumerate(names)]
    result = service.upload_images(files, "clean", None, "alice")
    stored = [source.name for source in result.sources]
    assert stored == [safe_file_name(name) for name in names]
    assert stored[:2] == ["evil.png", "win.png"]
    for name in stored:
        assert "/" not in name and "\\" not in name and not name.startswith(".") and name.isprintable()
    root = service.files.root.resolve()
    assert all(path.resolve().is_relative_to(root) for path in stored_files(service))
    assert all(source.path.resolve().is_relative_to(root) for source in result.sources)
