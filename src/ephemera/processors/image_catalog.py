"""image-catalog: a thumbnail, EXIF, a perceptual hash and honest tags per image; near-duplicates.

Each image input is decoded once by Pillow (EXIF orientation applied first), and yields a
lossless thumbnail and a catalog entry (JSON) as outputs. Inputs that are catalog entries of
earlier image-catalog tasks are read, not decoded again, so one task over a session's entries
groups the whole session. Groups are the connected components of "perceptual hashes within
``duplicate_distance`` bits".

An input that cannot be catalogued (not an image, truncated, too large) fails alone, named in
the result with the reason; the task fails only when every image input does.

The tags are what the pixels show without a model: orientation, aspect, grayscale,
transparency, brightness (mean luminance), blur (variance of the Laplacian) and dominant
colours (the share of each colour of a fixed palette, nearest in CIELAB).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

import imagehash
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError, features
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ephemera.errors import EphemeraError, InvalidInput
from ephemera.models import Artifact
from ephemera.processors import TaskCancelled, TaskContext, TaskFailed
from ephemera.processors.image_exif import exif_fields
from ephemera.processors.near_duplicates import HashedImage, group_duplicates

Floats = npt.NDArray[np.float64]

ENTRY_SCHEMA = "ephemera.image-catalog/1"
ENTRY_SUFFIX = ".catalog.json"
# Task outputs are of the kinds old-results cleanup knows; the names tell entries apart.
ENTRY_KIND = "result"
THUMBNAIL_KIND = "output"

# Formats Pillow may open. Others it knows (EPS through Ghostscript, PSD, ICNS, ...) are
# refused: every input is hostile until read, and these cover what cameras and apps write.
FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "TIFF", "BMP", "PPM")
MAX_INPUT_BYTES = 256 * 1024 * 1024
MAX_ENTRY_BYTES = 1024 * 1024
# max_pixels may be lowered per task, never raised past this: a 100 MP RGBA image already
# takes 400 MB decoded.
MAX_PIXELS_CEILING = 100_000_000
DEFAULT_MAX_PIXELS = 64_000_000

# Blur and brightness are measured on the image scaled to this longest side (never scaled
# up), so a score means the same whatever the resolution; colours on a smaller copy.
ANALYSIS_SIDE = 512
COLOUR_SIDE = 64
# Variance of the 4-neighbour Laplacian of the luminance (0-255) at ANALYSIS_SIDE: a sharp
# photo scores in the hundreds or more, a visibly soft one (a Gaussian blur of 2 px at this
# size) under 50.
BLURRY_BELOW = 50.0
# Mean luminance (Rec. 601, 0-255) below DARK_BELOW is dark, above BRIGHT_ABOVE bright.
DARK_BELOW = 70.0
BRIGHT_ABOVE = 185.0
# An RGB image whose channels differ by at most this in 99% of its pixels shows no colour
# (JPEG leaves a little chroma noise in grey pictures).
GRAY_SPREAD = 6
# Colours covering at least this share of the (opaque) pixels are reported, at most
# MAX_COLOURS of them; the ones covering COLOUR_TAG_SHARE become tags too.
COLOUR_MIN_SHARE = 0.05
MAX_COLOURS = 5
COLOUR_TAG_SHARE = 0.25
# Aspect ratios are named when the longer side over the shorter is within 3% of one.
ASPECTS = (("1:1", 1.0), ("4:3", 4 / 3), ("3:2", 1.5), ("16:9", 16 / 9))
ASPECT_TOLERANCE = 0.03
PANORAMA_FROM = 2.0

PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "white": (255, 255, 255),
    "red": (210, 30, 30),
    "orange": (240, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 160, 50),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 220),
    "purple": (130, 50, 180),
    "pink": (240, 130, 180),
    "brown": (120, 75, 35),
}

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_TO_RGB_MODES = frozenset({"RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
# 16-bit images are narrowed to 8 bits this many pixels at a time (512 KB of them).
_NARROW_BAND_PIXELS = 1 << 18
# What a decoded image can make analysis or encoding raise. StorageError is an OSError too:
# it is re-raised first, the store failing is not the image's fault.
_IMAGE_ERRORS = (OSError, ValueError, ArithmeticError, MemoryError, Image.DecompressionBombError)


class ImageCatalogParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thumbnail_size: int = Field(
        default=256, ge=16, le=1024, description="longest edge of a thumbnail, in pixels"
    )
    thumbnail_format: Literal["png", "webp"] = Field(
        default="png", description="thumbnail encoding, lossless either way"
    )
    gps: bool = Field(
        default=False, description="report EXIF GPS latitude and longitude (off: never stored)"
    )
    hash: Literal["phash", "dhash"] = Field(
        default="phash", description="perceptual hash (64 bits) used to find near-duplicates"
    )
    duplicate_distance: int = Field(
        default=8,
        ge=0,
        le=32,
        description="most differing hash bits for two images to count as near-duplicates",
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=1,
        le=MAX_PIXELS_CEILING,
        description="larger images fail (decompression-bomb guard)",
    )


class ItemFailed(Exception):
    """One input cannot be catalogued; the message says why, for the user."""


class _EntryHash(BaseModel):
    algorithm: Literal["phash", "dhash"]
    value: str = Field(pattern=r"^[0-9a-f]{16}$")


class _GivenEntry(BaseModel):
    """What grouping needs of an earlier catalog entry; the rest is carried through."""

    schema_: Literal["ephemera.image-catalog/1"] = Field(alias="schema")
    artifact_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=1024)
    hash: _EntryHash


class ImageCatalog:
    name = "image-catalog"
    description = (
        "A catalogue of images: per image a lossless thumbnail (EXIF orientation honoured), "
        "dimensions, format, EXIF (camera, lens, exposure, taken-at; GPS only when asked), a "
        "perceptual hash and tags computed from the pixels (orientation, aspect, grayscale, "
        "alpha, brightness, blur, dominant colours), stored as a catalog entry; near-duplicates "
        "grouped by hash distance, across earlier tasks when their catalog entries are inputs. "
        "An image that cannot be read fails alone, named with the reason."
    )
    params_model = ImageCatalogParams

    def check_inputs(self, params: ImageCatalogParams, inputs: Sequence[Artifact]) -> None:
        if not inputs:
            raise InvalidInput("image-catalog needs at least one image or catalog entry")
        if params.thumbnail_format == "webp" and not features.check("webp"):
            raise InvalidInput("thumbnail_format 'webp' is not available here (no WebP support)")

    def run(self, ctx: TaskContext, params: ImageCatalogParams) -> dict[str, Any]:
        total = len(ctx.inputs)
        ctx.progress(0, total)
        items: list[dict[str, Any]] = []
        given: list[dict[str, str]] = []
        failed: list[dict[str, str]] = []
        new_nodes: list[HashedImage] = []
        given_nodes: list[HashedImage] = []
        stems: set[str] = set()
        images = 0
        for index, artifact in enumerate(ctx.inputs):
            try:
                if is_entry(artifact):
                    node = _read_entry(ctx, artifact, params)
                    given_nodes.append(node)
                    given.append(
                        {
                            "catalog_id": artifact.id,
                            "artifact_id": node.artifact_id,
                            "name": node.name,
                        }
                    )
                else:
                    images += 1
                    item, node = _catalogue(ctx, artifact, params, stems)
                    new_nodes.append(node)
                    items.append(item)
            except ItemFailed as exc:
                failed.append(
                    {
                        "artifact_id": artifact.id,
                        "name": artifact.name,
                        "error": f"{artifact.name}: {exc}",
                    }
                )
            ctx.check_cancelled()
            ctx.progress(index + 1, total)

        if (images and not items) or (not images and not given):
            raise TaskFailed(_all_failed(failed))
        return {
            "items": items,
            "given": given,
            "failed": failed,
            "groups": group_duplicates(_unique(new_nodes + given_nodes), params.duplicate_distance),
            "hash": params.hash,
            "duplicate_distance": params.duplicate_distance,
        }


def is_entry(artifact: Artifact) -> bool:
    return artifact.name.endswith(ENTRY_SUFFIX)


def _all_failed(failed: list[dict[str, str]]) -> str:
    shown = "; ".join(f["error"] for f in failed[:10])
    more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
    return f"no input could be catalogued: {shown}{more}"


def _unique(nodes: list[HashedImage]) -> list[HashedImage]:
    # One image catalogued again, or given twice, is one member: the first (newest) counts.
    seen: dict[str, HashedImage] = {}
    for node in nodes:
        seen.setdefault(node.artifact_id, node)
    return list(seen.values())


# -- one image ---------------------------------------------------------------------------------


def _catalogue(
    ctx: TaskContext, artifact: Artifact, params: ImageCatalogParams, stems: set[str]
) -> tuple[dict[str, Any], HashedImage]:
    """Decode, analyse and store one image; nothing is written unless all of it succeeds."""
    if artifact.size > MAX_INPUT_BYTES:
        raise ItemFailed(f"is {artifact.size} bytes, above the {MAX_INPUT_BYTES} bytes read")
    need = max(params.thumbnail_size, ANALYSIS_SIDE)
    with ctx.open_input(artifact.id) as stream:
        decoded = decode(stream, params.max_pixels, need, gps=params.gps)
    image = decoded.image
    try:
        analysis = analyse(image, decoded.mode)
        hash_value = perceptual_hash(image, params.hash)
        thumbnail, content_type = encode_thumbnail(
            image, params.thumbnail_size, params.thumbnail_format
        )
    except EphemeraError:
        raise
    except _IMAGE_ERRORS as exc:
        raise ItemFailed(_analysis_error(exc)) from None

    stem = _unique_stem(PurePosixPath(artifact.name).stem or "image", stems)
    thumb = ctx.write_output(
        f"{stem}.thumb.{params.thumbnail_format}",
        thumbnail.data,
        kind=THUMBNAIL_KIND,
        content_type=content_type,
    )
    entry: dict[str, Any] = {
        "schema": ENTRY_SCHEMA,
        "artifact_id": artifact.id,
        "name": artifact.name,
        "sha256": artifact.sha256,
        "size": artifact.size,
        "task_id": ctx.task_id,
        "format": decoded.format,
        "mode": decoded.mode,
        "frames": decoded.frames,
        "width": decoded.width,
        "height": decoded.height,
        "exif": decoded.exif,
        "hash": {"algorithm": params.hash, "value": f"{hash_value:016x}"},
        **analysis,
        "thumbnail": {
            "artifact_id": thumb.id,
            "name": thumb.name,
            "width": thumbnail.width,
            "height": thumbnail.height,
        },
    }
    catalog = ctx.write_output(
        f"{stem}{ENTRY_SUFFIX}",
        json.dumps(entry, indent=2, allow_nan=False).encode(),
        kind=ENTRY_KIND,
        content_type="application/json",
    )
    item = {
        "artifact_id": artifact.id,
        "name": artifact.name,
        "format": decoded.format,
        "width": decoded.width,
        "height": decoded.height,
        "hash": entry["hash"]["value"],
        "tags": analysis["tags"],
        "thumbnail": {"artifact_id": thumb.id, "name": thumb.name},
        "catalog": {"artifact_id": catalog.id, "name": catalog.name},
    }
    return item, HashedImage(artifact.id, artifact.name, hash_value)


def _unique_stem(stem: str, used: set[str]) -> str:
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


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


def _analysis_error(exc: Exception) -> str:
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


# -- what the pixels show ----------------------------------------------------------------------


def analyse(image: Image.Image, stored_mode: str) -> dict[str, Any]:
    """Orientation, aspect, grayscale, alpha, brightness, blur and colours, with the tags."""
    width, height = image.size
    small = _fit(image, ANALYSIS_SIDE)
    alpha = np.asarray(small.getchannel("A")) if small.mode in ("LA", "RGBA") else None
    has_alpha = alpha is not None and bool((alpha < 255).any())
    opaque = alpha >= 128 if alpha is not None and bool((alpha >= 128).any()) else None

    luminance = np.asarray(small.convert("L"), np.float64)
    brightness = float(luminance[opaque].mean() if opaque is not None else luminance.mean())
    blur = blur_score(luminance)

    rgb = np.asarray(small.convert("RGB"), np.int16)
    if stored_mode in _GRAY_MODES:
        grayscale = True
    else:
        spread = rgb.max(axis=2) - rgb.min(axis=2)
        pixels = spread[opaque] if opaque is not None else spread
        grayscale = float(np.percentile(pixels, 99)) <= GRAY_SPREAD

    colours = dominant_colours(_fit(image, COLOUR_SIDE))
    orientation = "square" if width == height else "landscape" if width > height else "portrait"
    aspect = aspect_name(width, height)
    level = (
        "dark" if brightness < DARK_BELOW else "bright" if brightness > BRIGHT_ABOVE else "normal"
    )
    tags = [orientation]
    if aspect is not None:
        tags.append(aspect)
    if grayscale:
        tags.append("grayscale")
    if has_alpha:
        tags.append("has-alpha")
    tags.append(level)
    if blur < BLURRY_BELOW:
        tags.append("blurry")
    tags += [c["name"] for c in colours if c["share"] >= COLOUR_TAG_SHARE]
    return {
        "orientation": orientation,
        "aspect": aspect,
        "grayscale": grayscale,
        "has_alpha": has_alpha,
        "brightness": {"mean": round(brightness, 2), "level": level},
        "blur": {"score": round(blur, 2), "blurry": blur < BLURRY_BELOW, "threshold": BLURRY_BELOW},
        "colours": colours,
        "tags": tags,
    }


def _fit(image: Image.Image, side: int) -> Image.Image:
    if max(image.size) <= side:
        return image
    copy = image.copy()
    copy.thumbnail((side, side), Image.Resampling.BOX)
    return copy


def blur_score(luminance: Floats) -> float:
    """Variance of the 4-neighbour Laplacian: low when edges are soft. 0 for tiny images."""
    if luminance.shape[0] < 3 or luminance.shape[1] < 3:
        return 0.0
    c = luminance[1:-1, 1:-1]
    laplacian = (
        luminance[:-2, 1:-1]
        + luminance[2:, 1:-1]
        + luminance[1:-1, :-2]
        + luminance[1:-1, 2:]
        - 4 * c
    )
    return float(laplacian.var())


def aspect_name(width: int, height: int) -> str | None:
    ratio = max(width, height) / max(1, min(width, height))
    if ratio >= PANORAMA_FROM:
        return "panorama"
    for name, value in ASPECTS:
        if abs(ratio - value) <= ASPECT_TOLERANCE * value:
            return name
    return None


def _lab(rgb: Floats) -> Floats:
    """CIELAB (D65) of sRGB values in [0, 255], shape (..., 3)."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    )
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


_PALETTE_NAMES = list(PALETTE)
_PALETTE_LAB = _lab(np.array(list(PALETTE.values()), np.float64))


def dominant_colours(image: Image.Image) -> list[dict[str, Any]]:
    """Each palette colour's share of the opaque pixels, largest first, from COLOUR_MIN_SHARE."""
    rgb = np.asarray(image.convert("RGB"), np.float64).reshape(-1, 3)
    if image.mode in ("LA", "RGBA"):
        opaque = np.asarray(image.getchannel("A")).reshape(-1) >= 128
        if opaque.any():
            rgb = rgb[opaque]
    distances = ((_lab(rgb)[:, None, :] - _PALETTE_LAB[None, :, :]) ** 2).sum(axis=2)
    counts = np.bincount(distances.argmin(axis=1), minlength=len(_PALETTE_NAMES))
    shares = counts / max(1, len(rgb))
    order = sorted(range(len(shares)), key=lambda i: (-shares[i], i))
    return [
        {"name": _PALETTE_NAMES[i], "share": round(float(shares[i]), 3)}
        for i in order[:MAX_COLOURS]
        if shares[i] >= COLOUR_MIN_SHARE
    ]


def perceptual_hash(image: Image.Image, algorithm: str) -> int:
    """The 64-bit hash of the image as shown (alpha ignored), as an integer."""
    rgb = image.convert("RGB") if image.mode in ("LA", "RGBA") else image
    hashed = imagehash.phash(rgb) if algorithm == "phash" else imagehash.dhash(rgb)
    return int(str(hashed), 16)


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


# -- earlier entries and groups ----------------------------------------------------------------


def _read_entry(ctx: TaskContext, artifact: Artifact, params: ImageCatalogParams) -> HashedImage:
    if artifact.size > MAX_ENTRY_BYTES:
        raise ItemFailed(f"is {artifact.size} bytes; a catalog entry is at most {MAX_ENTRY_BYTES}")
    try:
        entry = _GivenEntry.model_validate_json(ctx.read_input(artifact.id))
    except ValidationError:
        raise ItemFailed("is not a catalog entry of image-catalog") from None
    if entry.hash.algorithm != params.hash:
        raise ItemFailed(
            f"holds a {entry.hash.algorithm} hash; this task compares {params.hash} hashes"
        )
    return HashedImage(entry.artifact_id, entry.name, int(entry.hash.value, 16))
