"""What the pixels of one decoded image show, without a model: orientation, aspect,
grayscale, transparency, brightness (mean luminance), blur (variance of the Laplacian),
dominant colours (the share of each colour of a fixed palette, nearest in CIELAB), and a
perceptual hash for near-duplicates."""

from __future__ import annotations

from typing import Any

import imagehash
import numpy as np
import numpy.typing as npt
from PIL import Image

Floats = npt.NDArray[np.float64]

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
