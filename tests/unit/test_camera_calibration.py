"""camera-calibration: a known camera recovered from rendered chessboard views."""

from __future__ import annotations

import json
from itertools import chain
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from ephemera import InvalidInput
from ephemera.processors import Registry, TaskFailed
from ephemera.processors.camera_calibration import CameraCalibration, CameraCalibrationParams
from ephemera.testing import MemoryTaskContext
from tests.images import ChessboardView, camera_matrix, jpeg, png, render_chessboard_views

WIDTH, HEIGHT = 1280, 960
TRUE_K = camera_matrix(1000.0, 1000.0, 652.0, 471.0)  # principal point off centre on purpose
TRUE_DIST = np.array([-0.12, 0.05, 0.0008, -0.0005, 0.0])
BOARD = {"columns": 9, "rows": 6}
SQUARE = 0.025


@pytest.fixture(scope="module")
def views() -> list[ChessboardView]:
    return render_chessboard_views(
        TRUE_K,
        TRUE_DIST,
        columns=9,
        rows=6,
        square=SQUARE,
        size=(WIDTH, HEIGHT),
        count=10,
        seed=11,
        supersample=2,
    )


@pytest.fixture(scope="module")
def pngs(views: list[ChessboardView]) -> list[bytes]:
    return [view.png() for view in views]


def blank(grey: int = 128) -> bytes:
    return png(np.full((HEIGHT, WIDTH, 3), grey, np.uint8))


def noise() -> bytes:
    rng = np.random.default_rng(5)
    return png(rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8))


def run(
    inputs: dict[str, tuple[str, bytes]], params: dict[str, Any]
) -> tuple[MemoryTaskContext, dict[str, Any]]:
    ctx = MemoryTaskContext(inputs)
    model = Registry([CameraCalibration()]).validate("camera-calibration", params, ctx.inputs)
    assert isinstance(model, CameraCalibrationParams)
    return ctx, CameraCalibration().run(ctx, model)


def decode(data: bytes) -> npt.NDArray[Any]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return np.asarray(image)


def test_a_known_camera_is_recovered_from_rendered_views(
    views: list[ChessboardView], pngs: list[bytes]
) -> None:
    inputs = {f"v{i}": (f"view-{i}.png", data) for i, data in enumerate(pngs)}
    ctx, result = run(inputs, {"board": BOARD, "square_size": SQUARE})

    assert result["image_size"] == {"width": WIDTH, "height": HEIGHT}
    for key, truth in [("fx", 1000.0), ("fy", 1000.0), ("cx", 652.0), ("cy", 471.0)]:
        assert result[key] == pytest.approx(truth, rel=0.01), key
    assert result["camera_matrix"] == [
        [result["fx"], 0.0, result["cx"]],
        [0.0, result["fy"], result["cy"]],
        [0.0, 0.0, 1.0],
    ]
    assert result["rms"] < 0.5
    assert len(result["dist_coeffs"]) == 5
    assert result["dist_coeffs"][0] < -0.05  # barrel distortion, as rendered
    assert result["used"] == 10
    assert [image["artifact_id"] for image in result["images"]] == list(inputs)
    assert [image["name"] for image in result["images"]] == [name for name, _ in inputs.values()]
    for image in result["images"]:
        assert image["found"] is True
        assert 0.0 < image["reprojection_error"] < 0.5
    assert ctx.progress_log == [(i, 10) for i in range(11)]

    numbers = [result["rms"], *result["dist_coeffs"], *chain(*result["camera_matrix"])]
    assert all(type(n) is float for n in numbers)
    assert json.loads(json.dumps(result)) == result

    preview = result["preview"]
    assert preview == {
        "artifact_id": ctx.output_artifacts["undistorted-preview.png"].id,
        "name": "undistorted-preview.png",
    }
    assert list(ctx.outputs) == ["undistorted-preview.png"]
    assert ctx.output_artifacts["undistorted-preview.png"].content_type == "image/png"
    undistorted = decode(ctx.outputs["undistorted-preview.png"])
    assert undistorted.shape == (HEIGHT, WIDTH, 3)
    expected = cv2.undistort(views[0].image, TRUE_K, TRUE_DIST)
    assert np.mean(np.abs(undistorted.astype(int) - expected)) < 2.0
    assert np.mean(np.abs(undistorted.astype(int) - views[0].image)) > 2.0


def test_images_without_a_board_are_reported_and_the_rest_calibrate(
    views: list[ChessboardView],
    pngs: list[bytes],
) -> None:
    inputs = {
        "blank": ("blank.png", blank()),
        "a": ("a.jpg", jpeg(views[0].image)),
        "b": ("b.png", pngs[1]),
        "noise": ("noise.png", noise()),
        "c": ("c.png", pngs[2]),
        "d": ("d.png", pngs[3]),
        "unused": ("unused.png", b"not even an image"),
    }
    params = {
        "board": BOARD,
        "images": ["blank", "a", "b", "noise", "c", "d"],
        "preview": False,
    }
    ctx, result = run(inputs, params)
    found = {image["artifact_id"]: image["found"] for image in result["images"]}
    assert found == {"blank": False, "a": True, "b": True, "noise": False, "c": True, "d": True}
    assert list(found) == params["images"]
    errors = {image["artifact_id"]: image["reprojection_error"] for image in result["images"]}
    assert errors["blank"] is None
    assert errors["noise"] is None
    assert all(errors[aid] < 0.5 for aid in "abcd")
    assert result["used"] == 4
    assert result["rms"] < 0.5
    assert result["preview"] is None
    assert ctx.outputs == {}
    assert ctx.progress_log == [(i, 6) for i in range(7)]


def test_the_preview_comes_from_the_first_image_with_a_board(
    views: list[ChessboardView],
    pngs: list[bytes],
) -> None:
    inputs = {"blank": ("blank.png", blank())}
    inputs |= {f"v{i}": (f"v{i}.png", pngs[i]) for i in range(4)}
    ctx, result = run(inputs, {"board": BOARD})
    assert result["images"][0]["found"] is False
    undistorted = decode(ctx.outputs["undistorted-preview.png"])
    expected = cv2.undistort(views[0].image, TRUE_K, TRUE_DIST)
    assert np.mean(np.abs(undistorted.astype(int) - expected)) < 3.0


def test_too_few_boards_found_fails_the_task(pngs: list[bytes]) -> None:
    inputs = {
        "a": ("a.png", pngs[0]),
        "blank": ("blank.png", blank()),
        "b": ("b.png", pngs[1]),
        "dark": ("dark.png", blank(30)),
    }
    ctx = MemoryTaskContext(inputs)
    with pytest.raises(TaskFailed) as failure:
        CameraCalibration().run(ctx, CameraCalibrationParams.model_validate({"board": BOARD}))
    assert failure.value.message == "chessboard found in only 2 of 4 images; at least 3 needed"
    assert ctx.outputs == {}


def test_min_images_raises_the_number_of_boards_needed(pngs: list[bytes]) -> None:
    inputs = {f"v{i}": (f"v{i}.png", pngs[i]) for i in range(4)}
    inputs["blank"] = ("blank.png", blank())
    with pytest.raises(TaskFailed, match=r"^chessboard found in only 4 of 5 images; at least 5"):
        run(inputs, {"board": BOARD, "min_images": 5})


@pytest.mark.parametrize(
    "bad",
    [b"", b"\xff\xd8\xff\xe0 not really a jpeg", b"\x89PNG\r\n\x1a\n" + bytes(64)],
    ids=["empty", "not-an-image", "broken-png"],
)
def test_a_corrupt_image_fails_the_task_naming_it(pngs: list[bytes], bad: bytes) -> None:
    inputs = {f"v{i}": (f"v{i}.png", pngs[i]) for i in range(3)}
    inputs["bad"] = ("bad.png", bad)
    ctx = MemoryTaskContext(inputs)
    with pytest.raises(TaskFailed) as failure:
        CameraCalibration().run(ctx, CameraCalibrationParams.model_validate({"board": BOARD}))
    assert failure.value.message == "input bad.png (bad) is not a decodable image"
    assert ctx.outputs == {}


def test_images_of_different_sizes_fail_the_task_naming_the_odd_one(
    views: list[ChessboardView],
    pngs: list[bytes],
) -> None:
    small = cv2.resize(views[2].image, (640, 480), interpolation=cv2.INTER_AREA)
    inputs = {
        "v0": ("v0.png", pngs[0]),
        "v1": ("v1.png", pngs[1]),
        "small": ("small.png", png(small)),
        "v3": ("v3.png", pngs[3]),
    }
    with pytest.raises(TaskFailed) as failure:
        run(inputs, {"board": BOARD})
    assert failure.value.message == (
        "input small.png (small) is 640x480 but v0.png (v0) is 1280x960; "
        "all images must have the same size"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"board": BOARD, "images": ["a", "b", "zz"]},
            "image 'zz' is not among the task's inputs",
        ),
        ({"board": BOARD, "images": ["a", "b"]}, "2 images given; at least 3 needed"),
        ({"board": BOARD, "min_images": 4}, "3 images given; at least 4 needed"),
        ({"board": BOARD, "min_images": 2}, "min_images: Input should be greater than or equal"),
        ({"board": {"columns": 1, "rows": 6}}, "board.columns: Input should be greater than"),
        ({"board": {"columns": 9}}, "board.rows: Field required"),
        ({"board": BOARD, "square_size": 0}, "square_size: Input should be greater than 0"),
        ({"board": BOARD, "flags": 3}, "flags: Extra inputs are not permitted"),
        ({}, "board: Field required"),
    ],
    ids=[
        "unknown-image",
        "too-few-named",
        "too-few-inputs",
        "min-images-below-3",
        "board-too-narrow",
        "rows-missing",
        "square-size-zero",
        "unknown-field",
        "board-missing",
    ],
)
def test_params_that_do_not_fit_are_refused_at_submission(
    params: dict[str, Any], message: str
) -> None:
    inputs = MemoryTaskContext({aid: (f"{aid}.png", b"") for aid in "abc"}).inputs
    with pytest.raises(InvalidInput) as refused:
        Registry([CameraCalibration()]).validate("camera-calibration", params, inputs)
    assert message in refused.value.message


def test_the_builtin_registry_offers_camera_calibration() -> None:
    assert isinstance(Registry.load()["camera-calibration"], CameraCalibration)
