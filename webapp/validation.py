"""Checking and normalising uploaded images before anything is stored: one pure function, no I/O."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Limits: a 100 MB file or a 50 Mpx image is far beyond any line-scan tile we expect, and decoding one
# costs ~150 MB of RAM per 8-bit RGB image; larger uploads are refused rather than slowing everyone down.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
MAX_PIXELS = 50_000_000
# The generator needs a 16 px window at least (engine.generation.generate.choose_window).
MIN_SIDE_PX = 16
ACCEPTED_FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "WEBP"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
# Transparent pixels have no steel in them; they are composited onto black, the camera's "no signal".
ALPHA_BACKGROUND = 0
EXIF_ORIENTATION_TAG = 0x0112
# File names in messages: long enough to recognise, short enough for one line of a toast.
MAX_SHOWN_NAME = 120


class UploadError(ValueError):
    """An upload that cannot be used; the message is one readable sentence naming the file."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class NormalisedImage:
    """An accepted upload as 8-bit L or RGB PNG bytes, with what was changed to get there."""

    name: str
    png_bytes: bytes
    width: int
    height: int
    mode: str
    original_format: str
    changes: list[str] = field(default_factory=list)


def normalise_upload(name: str, data: bytes) -> NormalisedImage:
    """Check an uploaded file and return it upright as an 8-bit L or RGB PNG; raise UploadError otherwise."""
    # 1. Check the bytes (the browser or camera chose the name: show it without folders or control characters)
    name = display_name(name)
    if not data:
        raise UploadError(f"{name} is empty (0 bytes).")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB.")

    # 2. Identify the format and check the size before decoding any pixel
    image = _open_checked(name, data)
    original_format = image.format or "unknown"

    # 3. Decode fully (catches truncated files that `verify` lets through)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadError(f"{name} is damaged or truncated ({error}).") from error

    # 4. Upright, 8-bit, L or RGB
    changes: list[str] = []
    orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
        changes.append(f"turned upright (EXIF orientation {orientation})")
    image = _to_8bit_l_or_rgb(image, changes)

    # 5. Re-encode as PNG (drops EXIF and any other metadata)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return NormalisedImage(name, buffer.getvalue(), image.width, image.height, image.mode, original_format, changes)


def display_name(name: str) -> str:
    """A file name as messages show it: no folders, no control characters, at most MAX_SHOWN_NAME characters."""
    shown = "".join(c if c.isprintable() else "?" for c in re.split(r"[\\/]", name or "")[-1]).strip()
    if len(shown) > MAX_SHOWN_NAME:
        shown = shown[: MAX_SHOWN_NAME - 1] + "…"
    return shown or "upload"


def _open_checked(name: str, data: bytes) -> Image.Image:
    """Open lazily, verify the structure, and refuse unknown formats and oversized or tiny images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        if isinstance(error, UnidentifiedImageError):
            raise UploadError(f"{name} is not an image file that can be read.") from error
        raise UploadError(f"{name} is too large to decode safely.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadError(f"{name} is damaged or truncated ({error}).") from error
    if image.format not in ACCEPTED_FORMATS:
        raise UploadError(f"{name} is a {image.format} file; upload PNG, JPEG, BMP, TIFF or WebP.")
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise UploadError(f"{name} is {width}×{height} px; the limit is {MAX_PIXELS // 1_000_000} megapixels.")
    if min(width, height) < MIN_SIDE_PX:
        raise UploadError(f"{name} is {width}×{height} px; each side needs at least {MIN_SIDE_PX} px.")
    return image


def _to_8bit_l_or_rgb(image: Image.Image, changes: list[str]) -> Image.Image:
    """Convert 16-bit, float, 1-bit, palette, CMYK and alpha images to 8-bit L or RGB, noting each change."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / max(high - low, 1e-12) * 255
        changes.append(f"{image.mode} pixels stretched from [{low:g}, {high:g}] to 8 bits")
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("L", "RGB"):
        return image
    if image.mode == "1":
        changes.append("1-bit converted to 8-bit grayscale")
        return image.convert("L")
    if image.mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
        changes.append("palette expanded")
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        image = _flatten_alpha(image, changes)
    if image.mode not in ("L", "RGB"):
        changes.append(f"{image.mode} converted to RGB")
        image = image.convert("RGB")
    return image


def _flatten_alpha(image: Image.Image, changes: list[str]) -> Image.Image:
    """Drop the alpha channel, compositing transparent pixels onto ALPHA_BACKGROUND."""
    gray = image.mode in ("LA", "La")
    image = image.convert("LA" if gray else "RGBA")
    alpha = image.getchannel("A")
    target_mode = "L" if gray else "RGB"
    if alpha.getextrema()[0] == 255:
        changes.append("opaque alpha channel removed")
        return image.convert(target_mode)
    background = Image.new(target_mode, image.size, ALPHA_BACKGROUND if gray else (ALPHA_BACKGROUND,) * 3)
    background.paste(image.convert(target_mode), mask=alpha)
    changes.append("transparent pixels flattened onto black")
    return background
