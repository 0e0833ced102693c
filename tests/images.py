"""Synthetic images for the image processors' tests: chessboards, inspection scenes, photos.

Everything is rendered from a seed, so a failing test fails the same way every time, and
nothing is stored in the repository.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from PIL import ExifTags
from PIL import Image as PilImage

Image = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float64]


def png(arr: npt.NDArray[Any]) -> bytes:
    ok, encoded = cv2.imencode(".png", arr)
    assert ok
    return encoded.tobytes()


def jpeg(arr: npt.NDArray[Any], quality: int = 95) -> bytes:
    ok, encoded = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def camera_matrix(fx: float, fy: float, cx: float, cy: float) -> Floats:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# --- chessboard views ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChessboardView:
    image: Image  # BGR
    rvec: Floats  # board to camera, as for cv2.projectPoints
    tvec: Floats
    corners: Floats  # (N, 2): where the inner corners truly are, row by row

    def png(self) -> bytes:
        return png(self.image)


def _rotation(tilt_x: float, tilt_y: float, roll: float) -> Floats:
    cx, sx = math.cos(tilt_x), math.sin(tilt_x)
    cy, sy = math.cos(tilt_y), math.sin(tilt_y)
    cz, sz = math.cos(roll), math.sin(roll)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, np.float64)


def render_chessboard_views(
    camera: Floats,
    dist: Floats | None = None,
    *,
    columns: int,
    rows: int,
    square: float = 1.0,
    size: tuple[int, int] = (1280, 960),
    count: int,
    seed: int,
    supersample: int = 4,
    noise: float = 1.0,
) -> list[ChessboardView]:
    """Views of a chessboard with ``columns`` x ``rows`` inner corners and a white margin.

    Poses vary (tilts up to 30 degrees about both axes, rolls up to 20 degrees, the board
    filling 40-70% of the width) and keep the whole board inside the frame. Each view is
    rendered at ``supersample`` times the resolution by warping a sharp board texture through
    the homography K [r1 r2 t] S, then box-filtered down, so edges are anti-aliased and the
    corners lie where the camera model puts them. With ``dist``, the pinhole rendering is
    then distorted by a remap.
    """
    width, height = size
    fx = float(camera[0, 0])
    rng = np.random.default_rng(seed)
    texture, board_from_texture = _board_texture(columns, rows)
    board_from_texture = np.diag([square, square, 1.0]) @ board_from_texture
    margin_squares = 2.0  # from an outer inner corner to the edge: a square, then the margin
    board_w = (columns - 1 + 2 * margin_squares) * square
    board_h = (rows - 1 + 2 * margin_squares) * square
    centre = np.array([(columns - 1) * square / 2, (rows - 1) * square / 2, 0.0])
    outline = np.array(
        [
            [-margin_squares * square, -margin_squares * square, 0.0],
            [board_w - margin_squares * square, -margin_squares * square, 0.0],
            [board_w - margin_squares * square, board_h - margin_squares * square, 0.0],
            [-margin_squares * square, board_h - margin_squares * square, 0.0],
        ]
    )
    inner = np.zeros((columns * rows, 3))
    inner[:, :2] = np.mgrid[0:columns, 0:rows].T.reshape(-1, 2) * square
    distortion = np.zeros(5) if dist is None else np.asarray(dist, np.float64)

    # Where each pixel of the distorted frame comes from in the pinhole image, and how far
    # past the frame that pinhole image must reach.
    undistort_map: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
    pad = 0
    if dist is not None:
        grid = np.mgrid[0:height, 0:width][::-1].reshape(2, -1).T.astype(np.float64)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
        ideal = cv2.undistortImagePoints(
            grid.reshape(-1, 1, 2), camera, distortion, None, criteria
        ).reshape(height, width, 2)
        overshoot = max(
            -ideal[..., 0].min(),
            -ideal[..., 1].min(),
            ideal[..., 0].max() - (width - 1),
            ideal[..., 1].max() - (height - 1),
            0.0,
        )
        pad = math.ceil(overshoot) + 2
        undistort_map = (
            (ideal[..., 0] + pad).astype(np.float32),
            (ideal[..., 1] + pad).astype(np.float32),
        )

    f = supersample
    to_supersampled = np.array([[f, 0, (f - 1) / 2], [0, f, (f - 1) / 2], [0, 0, 1.0]])
    to_canvas = np.array([[1, 0, pad], [0, 1, pad], [0, 0, 1.0]])
    canvas = (width + 2 * pad, height + 2 * pad)
    background = 110
    views: list[ChessboardView] = []
    for _ in range(1000 * count):
        if len(views) == count:
            break
        signs = rng.choice([-1.0, 1.0], size=2)
        tilt_x, tilt_y = signs * rng.uniform(math.radians(8), math.radians(30), size=2)
        rotation = _rotation(tilt_x, tilt_y, rng.uniform(math.radians(-20), math.radians(20)))
        distance = fx * board_w / (rng.uniform(0.4, 0.7) * width)
        u, v = rng.uniform(0.35, 0.65) * width, rng.uniform(0.35, 0.65) * height
        target = np.array([(u - camera[0, 2]) / fx, (v - camera[1, 2]) / camera[1, 1], 1.0])
        tvec = target * distance - rotation @ centre
        rvec = cv2.Rodrigues(rotation)[0].ravel()
        corners_out, _ = cv2.projectPoints(outline, rvec, tvec, camera, distortion)
        corners_out = corners_out.reshape(-1, 2)
        if not (
            (corners_out >= 4).all()
            and (corners_out[:, 0] <= width - 5).all()
            and (corners_out[:, 1] <= height - 5).all()
        ):
            continue
        board_to_image = camera @ np.column_stack([rotation[:, 0], rotation[:, 1], tvec])
        homography = to_supersampled @ to_canvas @ board_to_image @ board_from_texture
        big = cv2.warpPerspective(
            texture,
            homography,
            (canvas[0] * f, canvas[1] * f),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=background,
        )
        pinhole = np.asarray(cv2.resize(big, canvas, interpolation=cv2.INTER_AREA), np.float32)
        if undistort_map is not None:
            pinhole = np.asarray(cv2.remap(pinhole, *undistort_map, cv2.INTER_LINEAR), np.float32)
        pinhole += noise * rng.standard_normal(pinhole.shape, dtype=np.float32)
        gray = np.clip(np.rint(pinhole), 0, 255).astype(np.uint8)
        truth, _ = cv2.projectPoints(inner, rvec, tvec, camera, distortion)
        views.append(
            ChessboardView(
                image=np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), np.uint8),
                rvec=np.asarray(rvec, np.float64),
                tvec=np.asarray(tvec, np.float64),
                corners=np.asarray(truth, np.float64).reshape(-1, 2),
            )
        )
    if len(views) < count:
        raise ValueError("the board does not fit the frame; use a smaller board or wider lens")
    return views


def _board_texture(columns: int, rows: int, pixels: int = 64) -> tuple[Image, Floats]:
    """The board as a texture, and the map from texture pixels to board units (squares).

    Board unit (0, 0) is the first inner corner; squares are ``pixels`` wide and the board
    has one white square of margin.
    """
    squares_x, squares_y = columns + 1, rows + 1
    texture = np.full(((squares_y + 2) * pixels, (squares_x + 2) * pixels), 235, np.uint8)
    for j in range(squares_y):
        for i in range(squares_x):
            if (i + j) % 2 == 0:
                y0, x0 = (j + 1) * pixels, (i + 1) * pixels
                texture[y0 : y0 + pixels, x0 : x0 + pixels] = 20
    # Pixel centres sit at integers, so the edge between pixels k-1 and k is at k - 0.5.
    origin = 2 * pixels - 0.5
    texture_from_board = np.array([[pixels, 0, origin], [0, pixels, origin], [0, 0, 1.0]])
    return texture, np.linalg.inv(texture_from_board)


# --- inspection scenes -----------------------------------------------------------------------

BOARD_GREEN = (40, 105, 30)
COPPER = (80, 170, 215)
SILK = (235, 235, 235)


@dataclass
class InspectionScene:
    """A printed-circuit-board-like capture with one component per named region."""

    clean: Image  # the board as designed, no sensor noise
    image: Image  # the capture: the clean board plus sensor noise
    boxes: dict[str, tuple[int, int, int, int]]  # region -> (x, y, width, height)
    bodies: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    seed: int = 0

    def box(self, name: str) -> dict[str, int]:
        x, y, w, h = self.boxes[name]
        return {"x": x, "y": y, "width": w, "height": h}

    def golden(
        self, name: str, *, scale: float = 1.0, gain: float = 1.0, offset: float = 0.0
    ) -> Image:
        """The region cut from the clean board, resized by ``scale``, lit by gain and offset."""
        x, y, w, h = self.boxes[name]
        golden: Image = self.clean[y : y + h, x : x + w]
        if scale != 1.0:
            size = (round(w * scale), round(h * scale))
            interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
            golden = np.asarray(cv2.resize(golden, size, interpolation=interpolation), np.uint8)
        lit: npt.NDArray[np.float32] = golden.astype(np.float32) * np.float32(gain)
        lit += np.float32(offset)
        return np.clip(np.rint(lit), 0, 255).astype(np.uint8)

    def with_defect(self, name: str, kind: str = "missing") -> Image:
        """A copy of the capture with a defect in the region: a missing part or a scratch."""
        image = self.image.copy()
        x, y, w, h = self.boxes[name]
        if kind == "missing":
            bx, by, bw, bh = self.bodies[name]
            rng = np.random.default_rng(self.seed + 1)
            patch = np.full((bh, bw, 3), BOARD_GREEN, np.float32)
            patch += 3.0 * rng.standard_normal(patch.shape, dtype=np.float32)
            image[by : by + bh, bx : bx + bw] = np.clip(patch, 0, 255).astype(np.uint8)
        elif kind == "scratch":
            cv2.line(image, (x + w // 6, y + h // 5), (x + 5 * w // 6, y + 4 * h // 5), SILK, 5)
        else:
            raise ValueError(f"unknown defect {kind!r}")
        return image


def inspection_scene(
    *,
    size: tuple[int, int] = (960, 640),
    grid: tuple[int, int] = (3, 2),
    region_size: tuple[int, int] = (200, 160),
    seed: int = 0,
    noise: float = 2.0,
) -> InspectionScene:
    """A board with traces and vias and, in each region of a grid, a distinct component.

    Regions are named ``r0``, ``r1``, ... row by row.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    # Solder mask: slow shading plus a fine grain, so flat-looking areas still have texture.
    shade = cv2.resize(6.0 * rng.standard_normal((8, 8)), size, interpolation=cv2.INTER_CUBIC)
    grain = 4.0 * rng.standard_normal((height, width), dtype=np.float32)
    texture = shade.astype(np.float32) + cv2.GaussianBlur(grain, (0, 0), 1.2)
    board = np.empty((height, width, 3), np.float32)
    board[:] = BOARD_GREEN
    board += texture[..., None]
    clean = np.clip(board, 0, 255).astype(np.uint8)

    for _ in range(40):
        points = [(int(rng.integers(0, width)), int(rng.integers(0, height)))]
        for _ in range(3):
            x, y = points[-1]
            if rng.random() < 0.5:
                points.append((int(rng.integers(0, width)), y))
            else:
                points.append((x, int(rng.integers(0, height))))
        thickness = int(rng.integers(2, 6))
        cv2.polylines(clean, [np.array(points, np.int32)], False, COPPER, thickness, cv2.LINE_AA)
    for _ in range(80):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(clean, centre, 5, COPPER, -1, cv2.LINE_AA)
        cv2.circle(clean, centre, 2, (20, 20, 20), -1, cv2.LINE_AA)

    cols, rws = grid
    rw, rh = region_size
    gap_x = (width - cols * rw) // (cols + 1)
    gap_y = (height - rws * rh) // (rws + 1)
    boxes: dict[str, tuple[int, int, int, int]] = {}
    bodies: dict[str, tuple[int, int, int, int]] = {}
    for index in range(cols * rws):
        row, col = divmod(index, cols)
        x = gap_x + col * (rw + gap_x)
        y = gap_y + row * (rh + gap_y)
        name = f"r{index}"
        boxes[name] = (x, y, rw, rh)
        bodies[name] = _component(clean, (x, y, rw, rh), index, rng)

    sensor = noise * rng.standard_normal(clean.shape, dtype=np.float32)
    image = np.clip(np.rint(clean + sensor), 0, 255).astype(np.uint8)
    return InspectionScene(clean=clean, image=image, boxes=boxes, bodies=bodies, seed=seed)


def _component(
    image: Image, box: tuple[int, int, int, int], index: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Draw a component inside the box; returns its body (x, y, width, height)."""
    x, y, w, h = box
    kind = index % 3
    bw = int(w * rng.uniform(0.45, 0.6))
    bh = int(h * rng.uniform(0.4, 0.55))
    bx = x + int(rng.integers(w // 8, w - bw - w // 8))
    by = y + int(rng.integers(h // 6, h - bh - h // 6))
    font = cv2.FONT_HERSHEY_SIMPLEX
    if kind == 0:  # an integrated circuit: pins on two sides, a label, a pin-1 dot
        pins = int(rng.integers(4, 8))
        for p in range(pins):
            px = bx + 4 + p * (bw - 8) // pins
            cv2.rectangle(image, (px, by - 8), (px + 5, by), COPPER, -1)
            cv2.rectangle(image, (px, by + bh), (px + 5, by + bh + 8), COPPER, -1)
        cv2.rectangle(image, (bx, by), (bx + bw, by + bh), (35, 35, 38), -1)
        cv2.circle(image, (bx + 8, by + 8), 3, (150, 150, 150), -1, cv2.LINE_AA)
        cv2.putText(image, f"U{index + 1}", (bx + 12, by + bh - 12), font, 0.8, SILK, 2)
    elif kind == 1:  # a resistor: end caps and colour bands
        cv2.rectangle(image, (bx - 10, by), (bx + 2, by + bh), COPPER, -1)
        cv2.rectangle(image, (bx + bw - 2, by), (bx + bw + 10, by + bh), COPPER, -1)
        cv2.rectangle(image, (bx, by + 3), (bx + bw, by + bh - 3), (140, 190, 215), -1)
        colours = [(0, 0, 200), (0, 140, 255), (30, 30, 30), (200, 60, 60), (0, 200, 200)]
        for band in range(4):
            colour = colours[int(rng.integers(0, len(colours)))]
            bx0 = bx + (band + 1) * bw // 6
            cv2.rectangle(image, (bx0, by + 3), (bx0 + bw // 14, by + bh - 3), colour, -1)
    else:  # an electrolytic capacitor seen from above, with its polarity stripe
        radius = min(bw, bh) // 2
        centre = (bx + bw // 2, by + bh // 2)
        cv2.rectangle(image, (bx, by), (bx + bw, by + bh), SILK, 2)
        cv2.circle(image, centre, radius, (170, 165, 160), -1, cv2.LINE_AA)
        cv2.ellipse(image, centre, (radius, radius), 0, 120, 240, (40, 40, 40), -1, cv2.LINE_AA)
        cv2.line(image, (centre[0] - 6, centre[1]), (centre[0] + 6, centre[1]), (40, 40, 40), 2)
    label = f"{'URC'[kind]}{index + 10}"
    cv2.putText(image, label, (x + 6, y + h - 8), font, 0.5, SILK, 1, cv2.LINE_AA)
    return bx, by, bw, bh


# --- photos for the image catalogue ----------------------------------------------------------


def photo(seed: int, size: tuple[int, int] = (800, 600)) -> Image:
    """A photo-like RGB picture: a lit gradient, a textured ground and shapes of a few colours.

    Different seeds give clearly different pictures (their perceptual hashes differ widely);
    the texture keeps the picture sharp for a blur measure.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * x / width + np.sin(angle) * y / height + 1) / 2
    sky = np.array(rng.uniform(40, 220, 3), np.float32)
    ground = np.array(rng.uniform(40, 220, 3), np.float32)
    image = sky * ramp[..., None] + ground * (1 - ramp[..., None])
    image += rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    canvas = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(12):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(height // 12, height // 4))
        if rng.random() < 0.5:
            cv2.circle(canvas, (cx, cy), r, colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas, (cx - r, cy - r // 2), (cx + r, cy + r // 2), colour, -1)
    return np.ascontiguousarray(canvas[:, :, ::-1])  # drawn as RGB, stored as BGR like cv2


def rgb(arr: Image) -> PilImage.Image:
    """A BGR array (cv2's order) as a Pillow RGB image."""
    return PilImage.fromarray(np.ascontiguousarray(arr[:, :, ::-1]), "RGB")


def encoded(image: PilImage.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_jpeg(
    image: PilImage.Image,
    *,
    orientation: int | None = None,
    camera: tuple[str, str] | None = None,
    gps: tuple[float, float] | None = None,
    taken_at: str | None = None,
) -> bytes:
    """A JPEG with the EXIF fields given: orientation, make and model, GPS position (decimal
    degrees), DateTimeOriginal (EXIF's "YYYY:MM:DD HH:MM:SS")."""
    exif = PilImage.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    if camera is not None:
        exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = camera
    if taken_at is not None:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = taken_at
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.ExposureTime] = 1 / 250
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FNumber] = 2.8
    if gps is not None:
        info = exif.get_ifd(ExifTags.IFD.GPSInfo)
        for value, ref, hemispheres in (
            (gps[0], ExifTags.GPS.GPSLatitudeRef, "NS"),
            (gps[1], ExifTags.GPS.GPSLongitudeRef, "EW"),
        ):
            degrees = abs(value)
            d = int(degrees)
            m = int((degrees - d) * 60)
            s = round((degrees - d - m / 60) * 3600, 4)
            info[ref] = hemispheres[value < 0]
            info[ref + 1] = (d, m, s)
    return encoded(image, "JPEG", quality=92, exif=exif)


def strip_jpeg_segment(data: bytes, marker: int) -> bytes:
    """The JPEG without its segments of one marker (e.g. 0xEE, Adobe's APP14)."""
    out = bytearray(data[:2])
    at = 2
    while at < len(data):
        assert data[at] == 0xFF
        if data[at + 1] == 0xDA:  # start of scan: the rest is image data
            out += data[at:]
            break
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if data[at + 1] != marker:
            out += data[at : at + 2 + length]
        at += 2 + length
    return bytes(out)
