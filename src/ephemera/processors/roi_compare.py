"""roi-compare: automated optical inspection of regions of a captured image against goldens.

Each region of the capture is cropped, every golden named for it is resized to the crop, and
the pair is scored; the region passes when its best score reaches its threshold. The exact
arrays that were scored are stored as lossless PNG outputs, so anyone can download them and
get the recorded score again with :func:`score`.

Scoring normalises illumination: both images go to grayscale and then to zero mean and unit
standard deviation, so a brighter or darker golden (a linear change of gain and offset)
scores as if it had been taken under the capture's lighting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ephemera.errors import InvalidInput
from ephemera.models import Artifact
from ephemera.processors import TaskContext, TaskFailed

Image = npt.NDArray[Any]
Method = Literal["ncc", "ssim", "hist-cosine"]
METHODS: tuple[str, ...] = ("ncc", "ssim", "hist-cosine")

# A grayscale image whose standard deviation is below this (in grey levels) is flat: it has
# no structure to normalise. Two flat images match (1.0) when their grey levels agree within
# FLAT_MEAN_TOLERANCE, more than sensor noise but less than a dark body against a bright pad;
# a flat image never matches a textured one (0.0).
FLAT_STD = 1e-3
FLAT_MEAN_TOLERANCE = 16.0

# SSIM on normalised images: Gaussian window as in Wang et al. (11x11, sigma 1.5). The usual
# constants are (0.01 L)^2 and (0.03 L)^2 for a dynamic range L; a normalised image spans
# about +-3 standard deviations, so L = 6.
SSIM_WINDOW = (11, 11)
SSIM_SIGMA = 1.5
SSIM_RANGE = 6.0
SSIM_C1 = (0.01 * SSIM_RANGE) ** 2
SSIM_C2 = (0.03 * SSIM_RANGE) ** 2

# hist-cosine features: a histogram of normalised intensities (HIST_BINS bins over
# +-HIST_RANGE, outliers in the end bins) and a HOG-like histogram of unsigned gradient
# orientations (ORIENTATION_BINS over 180 degrees, weighted by magnitude; Sobel 3x3) in each
# cell of a GRID x GRID grid, so a local defect changes its own cell. Both are soft-binned.
# Each part is scaled to unit length, so the score is the mean of the two parts' cosines.
HIST_BINS = 32
HIST_RANGE = 3.0
GRID = 4
ORIENTATION_BINS = 9

_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]


class Box(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: int = Field(ge=0, description="left edge, in pixels of the capture")
    y: int = Field(ge=0, description="top edge, in pixels of the capture")
    width: int = Field(ge=1, description="in pixels; the box must lie inside the capture")
    height: int = Field(ge=1, description="in pixels; the box must lie inside the capture")


class Region(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="unique among the regions; names the region's outputs and result",
    )
    box: Box = Field(description="the region of the capture to crop")
    goldens: list[str] = Field(
        min_length=1,
        max_length=16,
        description="artifact IDs among the task's inputs; the best-scoring golden counts",
    )
    method: Method = Field(
        "ncc",
        description="how the crop and a golden are scored: ncc and ssim in [-1, 1], "
        "hist-cosine in [0, 1]",
    )
    threshold: float = Field(ge=-1.0, le=1.0, description="the lowest score that passes")


class RoiCompareParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capture: str = Field(
        min_length=1, description="artifact ID, among the task's inputs, of the image to inspect"
    )
    regions: list[Region] = Field(
        min_length=1, max_length=1000, description="the regions of interest, by unique names"
    )

    @field_validator("regions")
    @classmethod
    def _names_are_unique(cls, regions: list[Region]) -> list[Region]:
        seen: set[str] = set()
        for region in regions:
            if region.name in seen:
                raise ValueError(f"region names must be unique; {region.name!r} is used twice")
            seen.add(region.name)
        return regions


def pixel_sha256(arr: Image) -> str:
    """A digest of the pixels, their shape and type (not of any file encoding them)."""
    h, w = arr.shape[:2]
    c = arr.shape[2] if arr.ndim == 3 else 1
    digest = hashlib.sha256(f"{h}x{w}x{c}:{arr.dtype}\n".encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def decode_image(data: bytes, label: str) -> Image:
    """An 8-bit image, grayscale (2-D) or BGR, decoded as stored; alpha is dropped.

    ``label`` names the input in messages, e.g. ``"board.png (01J...)"``.
    """
    image: Image | None = None
    if data:
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            image = None
    if image is None or image.size == 0:
        raise TaskFailed(f"input {label} is not a decodable image")
    if image.dtype != np.uint8:
        raise TaskFailed(
            f"input {label} has {image.dtype} pixels ({image.dtype.itemsize * 8}-bit); "
            "only 8-bit images are supported"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return image
    raise TaskFailed(
        f"input {label} has shape {image.shape}; only images with 1, 3 or 4 channels are supported"
    )


def score(crop: Image, golden: Image, method: str) -> float:
    """How alike two images of the same size are, after illumination normalisation.

    ``ncc`` and ``ssim`` lie in [-1, 1], ``hist-cosine`` in [0, 1]; 1 means alike. The result
    depends only on the pixels, so re-scoring stored outputs gives exactly the recorded value.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    a = _gray(crop)
    b = _gray(golden)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} and {b.shape}")
    mean_a, std_a = float(a.mean()), float(a.std())
    mean_b, std_b = float(b.mean()), float(b.std())
    flat_a, flat_b = std_a < FLAT_STD, std_b < FLAT_STD
    if flat_a or flat_b:
        alike = flat_a and flat_b and abs(mean_a - mean_b) <= FLAT_MEAN_TOLERANCE
        return 1.0 if alike else 0.0
    za = (a - mean_a) / std_a
    zb = (b - mean_b) / std_b
    if method == "ncc":
        value = float(np.mean(za * zb))
    elif method == "ssim":
        value = _ssim(za, zb)
    else:
        value = _cosine(_features(za), _features(zb))
    return min(1.0, max(-1.0, value))


def _gray(image: Image) -> npt.NDArray[np.float64]:
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim != 2:
        raise ValueError(f"not an image: shape {image.shape}")
    return image.astype(np.float64)


def _ssim(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    def blur(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.asarray(cv2.GaussianBlur(m, SSIM_WINDOW, SSIM_SIGMA), np.float64)

    mu_a, mu_b = blur(a), blur(b)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = blur(a * a) - mu_aa
    var_b = blur(b * b) - mu_bb
    cov = blur(a * b) - mu_ab
    numerator = (2.0 * mu_ab + SSIM_C1) * (2.0 * cov + SSIM_C2)
    denominator = (mu_aa + mu_bb + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return float(np.mean(numerator / denominator))


def _features(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    h, w = z.shape
    levels = np.clip((z + HIST_RANGE) * (HIST_BINS / (2.0 * HIST_RANGE)), 0.0, HIST_BINS)
    intensity = _soft_histogram(levels, HIST_BINS)

    gx = cv2.Sobel(z, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(z, cv2.CV_64F, 0, 1, ksize=3)
    magnitude, angle = cv2.cartToPolar(gx, gy, angleInDegrees=True)
    orientation = np.fmod(np.asarray(angle, np.float64), 180.0) * (ORIENTATION_BINS / 180.0)
    cell_rows = np.arange(h, dtype=np.intp) * GRID // h
    cell_cols = np.arange(w, dtype=np.intp) * GRID // w
    cell = cell_rows[:, None] * GRID + cell_cols[None, :]
    gradients = _soft_histogram(
        orientation,
        ORIENTATION_BINS,
        weights=np.asarray(magnitude, np.float64),
        circular=True,
        group=cell,
        groups=GRID**2,
    )
    return np.concatenate([_unit(intensity), _unit(gradients)])


def _soft_histogram(
    values: npt.NDArray[np.float64],
    bins: int,
    *,
    weights: npt.NDArray[np.float64] | None = None,
    circular: bool = False,
    group: npt.NDArray[np.intp] | None = None,
    groups: int = 1,
) -> npt.NDArray[np.float64]:
    """Histograms of values in [0, bins], each shared linearly between its two nearest bins.

    Hard bins would let a slight blur or shift move mass across a bin edge and change the
    score out of proportion. With ``group``, one histogram per group, concatenated.
    """
    position = values - 0.5  # bin k is centred on k + 0.5
    low_f = np.floor(position)
    upper = position - low_f
    low = low_f.astype(np.intp)
    high = low + 1
    if circular:
        low %= bins
        high %= bins
    else:
        np.clip(low, 0, bins - 1, out=low)
        np.clip(high, 0, bins - 1, out=high)
    if group is not None:
        offset = group * bins
        low += offset
        high += offset
    weight = np.ones_like(values) if weights is None else weights
    size = bins * groups
    lower_part = np.bincount(low.ravel(), weights=(weight * (1.0 - upper)).ravel(), minlength=size)
    upper_part = np.bincount(high.ravel(), weights=(weight * upper).ravel(), minlength=size)
    return np.asarray(lower_part + upper_part, np.float64)


def _unit(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0.0 else v


def _cosine(u: npt.NDArray[np.float64], v: npt.NDArray[np.float64]) -> float:
    norms = float(np.linalg.norm(u)) * float(np.linalg.norm(v))
    return float(np.dot(u, v)) / norms if norms > 0.0 else 0.0


def _png(image: Image) -> bytes:
    ok, encoded = cv2.imencode(".png", image, _PNG_PARAMS)
    if not ok:
        raise RuntimeError(f"could not encode a {image.shape} {image.dtype} image as PNG")
    return encoded.tobytes()


def _channels(image: Image) -> int:
    return int(image.shape[2]) if image.ndim == 3 else 1


class RoiCompare:
    name = "roi-compare"
    description = (
        "Automated optical inspection: per region of interest of a captured image, crops, "
        "resizes each golden to the crop, normalises illumination and scores the pair (ncc, "
        "ssim or hist-cosine) against the region's threshold; pass/fail per region and overall. "
        "The exact crop and resized golden compared are stored as lossless PNG outputs, and the "
        "result records a hash of their pixels."
    )
    params_model = RoiCompareParams

    def check_inputs(self, params: RoiCompareParams, inputs: Sequence[Artifact]) -> None:
        ids = {artifact.id for artifact in inputs}
        if params.capture not in ids:
            raise InvalidInput(f"capture {params.capture!r} is not among the task's inputs")
        for region in params.regions:
            for golden in region.goldens:
                if golden not in ids:
                    raise InvalidInput(
                        f"region {region.name!r}: golden {golden!r} is not among the task's inputs"
                    )

    def run(self, ctx: TaskContext, params: RoiCompareParams) -> dict[str, Any]:
        total = len(params.regions)
        ctx.progress(0, total)

        # Everything is decoded and checked before the first output, so a bad input leaves
        # nothing behind.
        capture = self._decode(ctx, params.capture)
        decoded: dict[str, Image] = {params.capture: capture}
        for region in params.regions:
            for golden_id in region.goldens:
                if golden_id not in decoded:
                    decoded[golden_id] = self._decode(ctx, golden_id)
        height, width = capture.shape[:2]
        for region in params.regions:
            box = region.box
            if box.x + box.width > width or box.y + box.height > height:
                raise TaskFailed(
                    f"region {region.name!r}: box x={box.x} y={box.y} width={box.width} "
                    f"height={box.height} lies outside the {width}x{height} image"
                )

        resized: dict[tuple[str, int, int], Image] = {}
        results: list[dict[str, Any]] = []
        for index, region in enumerate(params.regions):
            results.append(self._inspect(ctx, capture, region, decoded, resized))
            ctx.check_cancelled()
            ctx.progress(index + 1, total)

        return {
            "passed": all(r["passed"] for r in results),
            "image": {"width": width, "height": height, "channels": _channels(capture)},
            "regions": results,
        }

    @staticmethod
    def _decode(ctx: TaskContext, artifact_id: str) -> Image:
        artifact = ctx.input(artifact_id)
        return decode_image(ctx.read_input(artifact_id), f"{artifact.name} ({artifact_id})")

    @staticmethod
    def _inspect(
        ctx: TaskContext,
        capture: Image,
        region: Region,
        decoded: dict[str, Image],
        resized: dict[tuple[str, int, int], Image],
    ) -> dict[str, Any]:
        box = region.box
        w, h = box.width, box.height
        crop = np.ascontiguousarray(capture[box.y : box.y + h, box.x : box.x + w])
        crop_artifact = ctx.write_output(
            f"{region.name}.crop.png", _png(crop), kind="output", content_type="image/png"
        )
        goldens: list[dict[str, Any]] = []
        for index, golden_id in enumerate(region.goldens):
            key = (golden_id, w, h)
            golden = resized.get(key)
            if golden is None:
                golden = cv2.resize(decoded[golden_id], (w, h), interpolation=cv2.INTER_AREA)
                resized[key] = golden
            value = score(crop, golden, region.method)
            artifact = ctx.write_output(
                f"{region.name}.golden-{index}.png",
                _png(golden),
                kind="output",
                content_type="image/png",
            )
            goldens.append(
                {
                    "golden": golden_id,
                    "artifact_id": artifact.id,
                    "name": artifact.name,
                    "pixel_sha256": pixel_sha256(golden),
                    "shape": list(golden.shape),
                    "score": value,
                }
            )
        # The first of equal bests wins, so the choice does not depend on dict or set order.
        best = max(goldens, key=lambda g: float(g["score"]))
        best_score = float(best["score"])
        return {
            "name": region.name,
            "box": box.model_dump(),
            "method": region.method,
            "threshold": region.threshold,
            "score": best_score,
            "passed": best_score >= region.threshold,
            "best_golden": best["golden"],
            "crop": {
                "artifact_id": crop_artifact.id,
                "name": crop_artifact.name,
                "pixel_sha256": pixel_sha256(crop),
                "shape": list(crop.shape),
            },
            "goldens": goldens,
        }
