"""normalise_upload: readable refusals for unusable files, 8-bit upright L/RGB PNG for everything else."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from webapp.validation import MIN_SIDE_PX, UploadError, normalise_upload


def encode(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()
        return image.copy()


def test_a_grey_png_passes_unchanged() -> None:
    original = Image.fromarray(np.arange(40 * 32, dtype=np.uint8).reshape(40, 32) % 251, mode="L")
    result = normalise_upload("slab.png", encode(original))
    assert (result.width, result.height, result.mode, result.changes) == (32, 40, "L", [])
    assert np.array_equal(np.asarray(decoded(result.png_bytes)), np.asarray(original))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"this is plain text, not pixels", "not an image"),
        (b"GIF89a" + b"\0" * 40, "not an image"),
    ],
)
def test_unusable_bytes_are_refused_with_one_sentence(data: bytes, message: str) -> None:
    with pytest.raises(UploadError, match=message) as error:
        normalise_upload("upload.bin", data)
    assert str(error.value).startswith("upload.bin ")


def test_a_truncated_png_is_refused() -> None:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    with pytest.raises(UploadError, match="damaged or truncated"):
        normalise_upload("cut.png", data[: len(data) // 2])


def test_a_gif_is_refused_by_format() -> None:
    with pytest.raises(UploadError, match="GIF file"):
        normalise_upload("anim.gif", encode(Image.new("L", (32, 32)), "GIF"))


def test_too_small_and_too_many_pixels_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UploadError, match=f"at least {MIN_SIDE_PX} px"):
        normalise_upload("tiny.png", encode(Image.new("L", (8, 64))))
    monkeypatch.setattr("webapp.validation.MAX_PIXELS", 1000)
    with pytest.raises(UploadError, match="megapixels"):
        normalise_upload("huge.png", encode(Image.new("L", (40, 40))))


def test_palette_with_transparency_becomes_rgb_flattened_on_black() -> None:
    image = Image.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 16, 32))
    result = normalise_upload("palette.png", encode(image, transparency=0))
    pixels = np.asarray(decoded(result.png_bytes))
    assert result.mode == "RGB"
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, 31].tolist() == [200, 100, 50]
    assert any("palette" in change for change in result.changes)


def test_rgba_and_cmyk_become_rgb() -> None:
    assert normalise_upload("a.png", encode(Image.new("RGBA", (20, 20), (9, 9, 9, 255)))).mode == "RGB"
    assert normalise_upload("c.jpg", encode(Image.new("CMYK", (20, 20)), "JPEG")).mode == "RGB"


def test_sixteen_bit_is_stretched_to_eight_bit_grey() -> None:
    values = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    result = normalise_upload("deep.png", encode(Image.fromarray(values)))
    pixels = np.asarray(decoded(result.png_bytes))
    assert result.mode == "L" and pixels.dtype == np.uint8
    assert (pixels.min(), pixels.max()) == (0, 255)
    assert any("8 bits" in change for change in result.changes)


def test_exif_rotated_jpeg_is_turned_upright() -> None:
    wide = Image.new("RGB", (60, 30), (128, 128, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90° clockwise
    result = normalise_upload("phone.jpg", encode(wide, "JPEG", exif=exif.tobytes()))
    assert (result.width, result.height) == (30, 60)
    assert any("EXIF" in change for change in result.changes)
