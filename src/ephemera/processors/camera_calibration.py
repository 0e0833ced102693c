"""camera-calibration: intrinsics and lens distortion from views of a planar chessboard.

The board is described by its inner corners (``columns`` along a row, ``rows`` down a
column) and the side of a square in the unit the caller wants the extrinsics in. Views where
the board is not found are reported, not fatal, as long as enough views remain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from ephemera.errors import InvalidInput
from ephemera.models import Artifact
from ephemera.processors import TaskContext, TaskFailed

Image = npt.NDArray[Any]

# Boards are found on a copy no larger than this (long side): detection time grows quickly
# with size, and the corners are refined on the full-resolution image anyway.
DETECT_MAX_SIDE = 1600
_FIND_FLAGS = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK
_SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-4)
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]


class Board(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: int = Field(ge=2, description="inner corners along a row")
    rows: int = Field(ge=2, description="inner corners down a column")


class CameraCalibrationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    board: Board = Field(description="the chessboard, by its inner corners")
    square_size: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="side of a square, in the unit wanted for the extrinsics",
    )
    images: list[str] | None = Field(default=None, description="artifact IDs; default: all inputs")
    min_images: int = Field(
        default=3,
        ge=3,
        description="fewest views with the board found that still calibrate; fewer views is "
        "a 422 at submission, fewer boards found a failed task",
    )
    preview: bool = Field(
        default=True, description="store an undistorted copy of the first view with the board"
    )


def _decode(data: bytes, label: str, flags: int) -> Image:
    image: Image | None = None
    if data:
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error:
            image = None
    if image is None or image.size == 0:
        raise TaskFailed(f"input {label} is not a decodable image")
    return image


def _find_corners(gray: Image, pattern: tuple[int, int]) -> npt.NDArray[np.float32] | None:
    """The inner corners, refined to sub-pixel accuracy, in OpenCV's (N, 1, 2) layout."""
    height, width = gray.shape
    scale = min(1.0, DETECT_MAX_SIDE / max(width, height))
    small = gray
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    found, corners = cv2.findChessboardCorners(small, pattern, flags=_FIND_FLAGS)
    if not found or corners is None:
        return None
    corners = np.asarray(corners, dtype=np.float32).reshape(-1, 1, 2)
    if scale < 1.0:
        sx, sy = width / small.shape[1], height / small.shape[0]
        # Pixel centres sit at integers: map through the pixel edges, not the origin.
        corners = ((corners + 0.5) * np.array([sx, sy], np.float32) - 0.5).astype(np.float32)
    # The search window must stay inside the four squares around a corner.
    grid = corners.reshape(pattern[1], pattern[0], 2)
    spacing = min(
        float(np.linalg.norm(np.diff(grid, axis=1), axis=2).min()),
        float(np.linalg.norm(np.diff(grid, axis=0), axis=2).min()),
    )
    half = int(np.clip(round(spacing * 0.4), 2, 11))
    refined = cv2.cornerSubPix(gray, corners, (half, half), (-1, -1), _SUBPIX_CRITERIA)
    return np.asarray(refined, dtype=np.float32).reshape(-1, 1, 2)


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


class CameraCalibration:
    name = "camera-calibration"
    description = (
        "Chessboard views in; camera matrix, distortion coefficients, per-image corner detection "
        "and reprojection error out, plus an undistorted preview. Views where the board is not "
        "found are reported, not fatal, unless fewer than min_images remain."
    )
    params_model = CameraCalibrationParams

    def check_inputs(self, params: CameraCalibrationParams, inputs: Sequence[Artifact]) -> None:
        if params.images is None:
            count = len(inputs)
        else:
            ids = {artifact.id for artifact in inputs}
            for artifact_id in params.images:
                if artifact_id not in ids:
                    raise InvalidInput(f"image {artifact_id!r} is not among the task's inputs")
            count = len(params.images)
        if count < params.min_images:
            raise InvalidInput(
                f"{count} images given; at least {params.min_images} needed (min_images)"
            )

    def run(self, ctx: TaskContext, params: CameraCalibrationParams) -> dict[str, Any]:
        ids = (
            list(params.images)
            if params.images is not None
            else [artifact.id for artifact in ctx.inputs]
        )
        total = len(ids)
        if total < params.min_images:
            raise TaskFailed(f"{total} images given; at least {params.min_images} needed")
        ctx.progress(0, total)

        pattern = (params.board.columns, params.board.rows)
        object_points = np.zeros((pattern[0] * pattern[1], 3), np.float32)
        object_points[:, :2] = np.mgrid[0 : pattern[0], 0 : pattern[1]].T.reshape(-1, 2)
        object_points *= np.float32(params.square_size)

        size: tuple[int, int] | None = None
        first_label = ""
        preview_source: bytes | None = None
        views: list[tuple[int, npt.NDArray[np.float32]]] = []
        images: list[dict[str, Any]] = []
        for index, artifact_id in enumerate(ids):
            artifact = ctx.input(artifact_id)
            label = f"{artifact.name} ({artifact_id})"
            data = ctx.read_input(artifact_id)
            gray = _decode(data, label, cv2.IMREAD_GRAYSCALE)
            height, width = gray.shape[:2]
            if size is None:
                size, first_label = (width, height), label
            elif (width, height) != size:
                raise TaskFailed(
                    f"input {label} is {width}x{height} but {first_label} is "
                    f"{size[0]}x{size[1]}; all images must have the same size"
                )
            corners = _find_corners(gray, pattern)
            if corners is not None:
                views.append((index, corners))
                if preview_source is None:
                    preview_source = data
            images.append(
                {
                    "artifact_id": artifact_id,
                    "name": artifact.name,
                    "found": corners is not None,
                    "reprojection_error": None,
                }
            )
            ctx.check_cancelled()
            ctx.progress(index + 1, total)

        assert size is not None  # total >= min_images >= 3
        if len(views) < params.min_images:
            raise TaskFailed(
                f"chessboard found in only {len(views)} of {total} images; "
                f"at least {params.min_images} needed"
            )
        try:
            rms, camera_matrix, dist_coeffs, rvecs, tvecs = cv2.calibrateCamera(
                [object_points] * len(views), [c for _, c in views], size, None, None
            )
        except cv2.error as exc:
            raise TaskFailed(f"calibration failed: {str(exc).strip()}") from None
        camera = np.asarray(camera_matrix, dtype=np.float64)
        dist = np.asarray(dist_coeffs, dtype=np.float64)
        if not (np.isfinite(rms) and np.isfinite(camera).all() and np.isfinite(dist).all()):
            raise TaskFailed("calibration failed: the solution is not finite")

        for (index, corners), rvec, tvec in zip(views, rvecs, tvecs, strict=True):
            projected, _ = cv2.projectPoints(object_points, rvec, tvec, camera, dist)
            residuals = np.asarray(projected, np.float64).reshape(-1, 2) - corners.reshape(-1, 2)
            error = float(np.sqrt(np.mean(np.sum(residuals * residuals, axis=1))))
            images[index]["reprojection_error"] = error

        preview: dict[str, str] | None = None
        if params.preview and preview_source is not None:
            colour = _decode(preview_source, "preview", cv2.IMREAD_COLOR)
            undistorted = cv2.undistort(colour, camera, dist)
            ok, encoded = cv2.imencode(".png", undistorted, _PNG_PARAMS)
            if not ok:
                raise RuntimeError("could not encode the undistorted preview as PNG")
            artifact = ctx.write_output(
                "undistorted-preview.png",
                encoded.tobytes(),
                kind="output",
                content_type="image/png",
            )
            preview = {"artifact_id": artifact.id, "name": artifact.name}

        return {
            "image_size": {"width": size[0], "height": size[1]},
            "rms": float(rms),
            "camera_matrix": [_floats(row) for row in camera],
            "fx": float(camera[0, 0]),
            "fy": float(camera[1, 1]),
            "cx": float(camera[0, 2]),
            "cy": float(camera[1, 2]),
            "dist_coeffs": _floats(dist),
            "images": images,
            "used": len(views),
            "preview": preview,
        }
