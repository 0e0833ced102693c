"""Decoding one image for image-catalog: only the formats it knows, within a pixel budget,
oriented as it should be shown and in a display mode; and its lossless thumbnail.

Every input is hostile until read: what cannot be decoded fails that item alone
(``ItemFailed``, with the reason for the user), never the task.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from ephemera.errors import EphemeraError
from ephemera.processors import TaskCancelled
from ephemera.processors.image_exif import exif_fields

# Formats Pillow may open. Others it knows (EPS through Ghostscript, PSD, ICNS, ...) are
# refused: every input is hostile until read, and these cover what cameras and apps write.
FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "TIFF", "BMP", "PPM")
# max_pixels may be lowered per task, never raised past this: a 100 MP RGBA image already
# takes 400 MB decoded.
MAX_PIXELS_CEILING = 100_000_000
DEFAULT_MAX_PIXELS = 64_000_000

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_TO_RGB_MODES = frozenset({"RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
# 16-bit images are narrowed to 8 bits this many pixels at a time (512 KB of them).
_NARROW_BAND_PIXELS = 1 << 18
# What a decoded image can make analysis or encoding raise. StorageError is an OSError too:
# it is re-raised first, the store failing is not the image's fault.
IMAGE_ERRORS = (OSError, ValueError, ArithmeticError, MemoryError, Image.DecompressionBombError)


class ItemFailed(Exception):
    """One input cannot be catalogued; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class Decoded:
    image: Image.Image  # oriented as it should be shown; mode L, LA, RGB or RGBA
    format: str
    mode: str  # as stored, before any conversion
    width: int  # after orientation, at full resolution
    height: int
    frames: int
    exif: dict[str, Any]


def decode(stream: Any, max_pixels: int, need: int, *, gps: bool) -> Decoded:
    """The first frame, fully loaded (so truncation is found), oriented, in a display mode.

    JPEGs are decoded at the smallest 1/2^k scale whose shorter side still covers ``need``:
    what is computed from the pixels needs no more, and memory stays far below a full decode.

    ``max_pixels`` decides what is too large, not Pillow's warning (from 89.5 MP, below
    MAX_PIXELS_CEILING): it is silenced, so an image passes or fails the same whatever the
    process's warning filters. Pillow's error (from 179 MP) still stops what is far larger
    before its size is checked here. (Before Python 3.14 the filters are process-wide: a
    decode in another thread at that moment may keep or lose this one filter, nothing else.)
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _read(stream, max_pixels, need, gps=gps)
    except (ItemFailed, TaskCancelled, EphemeraError):
        raise  # the store failing to read is not the image's fault
    except UnidentifiedImageError:
        raise ItemFailed(
            f"not an image Pillow can read (supported: {', '.join(FORMATS)})"
        ) from None
    except Image.DecompressionBombError:
        raise ItemFailed(f"is too large to decode safely (max_pixels {max_pixels})") from None
    except Exception as exc:  # Pillow raises many types for malformed files
        raise ItemFailed(_decode_error(exc)) from None


def _read(stream: Any, max_pixels: int, need: int, *, gps: bool) -> Decoded:
    with Image.open(stream, formats=FORMATS) as opened:
        width, height = opened.size
        if width * height > max_pixels:
            raise ItemFailed(_too_large(width, height, max_pixels))
        fmt = str(opened.format)
        mode = opened.mode
        frames = int(getattr(opened, "n_frames", 1))
        # Read while the file is open: a TIFF's sub-IFDs are read from it on demand.
        exif = exif_fields(opened.getexif(), gps=gps)
        if fmt in ("JPEG", "MPO"):
            opened.draft(None, (need, need))
        opened.load()
        oriented = ImageOps.exif_transpose(opened)
        if oriented.size != opened.size:  # a quarter turn
            width, height = height, width
        if oriented.mode == "CMYK" and fmt in ("JPEG", "MPO") and "adobe" not in opened.info:
            # Pillow reads every CMYK JPEG as Adobe's (inverted); without Adobe's marker
            # the values are plain, so undo that inversion.
            oriented = ImageChops.invert(oriented)
        image = _display(oriented)
    return Decoded(image, fmt, mode, width, height, frames, exif)


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (
        f"is {width}x{height} pixels ({width * height / 1e6:.1f} MP), above max_pixels "
        f"({max_pixels / 1e6:g} MP)"
    )


def _decode_error(exc: Exception) -> str:
    text = str(exc).strip()
    if isinstance(exc, MemoryError):
        return "needs more memory than is available to decode"
    if "truncated" in text or isinstance(exc, EOFError):
        return "image file is truncated"
    return f"not a decodable image ({type(exc).__name__}: {text[:200]})"


def analysis_error(exc: Exception) -> str:
    if isinstance(exc, MemoryError):
        return "needs more memory than is available to analyse"
    return f"cannot be analysed ({type(exc).__name__}: {str(exc).strip()[:200]})"


def _display(image: Image.Image) -> Image.Image:
    """The image in L, LA, RGB or RGBA, 8 bits per channel, with its colours right.

    16-bit grey keeps its full range (Pillow's own conversion clips it to white); CMYK and
    the other colour spaces go through Pillow's conversions (which already undid the inverted
    CMYK of Adobe JPEGs while decoding).
    """
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode == "La":
        return image.convert("LA")
    if mode == "RGBa":
        return image.convert("RGBA")
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or image.has_transparency_data else "RGB")
    if mode in _TO_RGB_MODES:
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        return _narrow(image)
    raise ItemFailed(f"has pixels of mode {mode}, which this processor does not read")


def _narrow(image: Image.Image) -> Image.Image:
    """16-bit grey as 8-bit, band by band, each shifted straight into the uint8 result.

    Memory stays at the result (1 byte a pixel) and one band: a copy of the whole image as
    an array (2 bytes a pixel, twice that while Pillow builds it) or wider integers would
    take hundreds of MB at MAX_PIXELS_CEILING.
    """
    width, height = image.size
    narrow = np.empty((height, width), np.uint8)
    rows = max(1, _NARROW_BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        band = np.asarray(image.crop((0, top, width, min(height, top + rows))))
        if band.dtype.itemsize > 2:  # mode I: signed 32-bit, clipped to the 16-bit range
            band = np.clip(band, 0, 65535)
        np.right_shift(band, 8, out=narrow[top : top + rows], casting="unsafe")
    return Image.fromarray(narrow, "L")


@dataclass(frozen=True, slots=True)
class Thumbnail:
    data: bytes
    width: int
    height: int


def encode_thumbnail(image: Image.Image, size: int, fmt: str) -> tuple[Thumbnail, str]:
    """A lossless thumbnail whose longest side is at most ``size``; no metadata is copied."""
    thumb = image.copy()
    # The copy carries the source's info (EXIF with its GPS, XMP, ICC, comments); encoders
    # may write some of it. None of it goes: no encoder is given any either.
    thumb.info.clear()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    if fmt == "webp":
        thumb.save(buffer, "WEBP", lossless=True, quality=80, method=4)
        content_type = "image/webp"
    else:
        thumb.save(buffer, "PNG", compress_level=6)
        content_type = "image/png"
    return Thumbnail(buffer.getvalue(), thumb.width, thumb.height), content_type
