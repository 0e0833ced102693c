"""roi-compare: regions of a capture scored against goldens, outputs that re-score exactly."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from ephemera import InvalidInput
from ephemera.processors import Registry, TaskCancelled, TaskFailed
from ephemera.processors.roi_compare import (
    RoiCompare,
    RoiCompareParams,
    decode_image,
    pixel_sha256,
    score,
)
from ephemera.testing import MemoryTaskContext
from tests.images import InspectionScene, inspection_scene, jpeg, png

# Between the scene's clean scores and its defect scores, for goldens resized and relit...
THRESHOLDS = {"ncc": 0.95, "ssim": 0.9, "hist-cosine": 0.93}
# ...and for goldens only relit, against which a thin scratch must show.
STRICT_THRESHOLDS = {"ncc": 0.98, "ssim": 0.96, "hist-cosine": 0.985}
METHODS = list(THRESHOLDS)


@pytest.fixture(scope="module")
def scene() -> InspectionScene:
    return inspection_scene(seed=7)


def validated(params: dict[str, Any], ctx: MemoryTaskContext) -> RoiCompareParams:
    """The params as the service checks them at submission."""
    model = Registry([RoiCompare()]).validate("roi-compare", params, ctx.inputs)
    assert isinstance(model, RoiCompareParams)
    return model


def run(
    inputs: dict[str, tuple[str, bytes]], params: dict[str, Any]
) -> tuple[MemoryTaskContext, dict[str, Any]]:
    ctx = MemoryTaskContext(inputs)
    return ctx, RoiCompare().run(ctx, validated(params, ctx))


def inspect_all(
    scene: InspectionScene,
    capture: npt.NDArray[np.uint8],
    method: str,
    *,
    resized: bool = True,
) -> tuple[MemoryTaskContext, dict[str, Any]]:
    """Every region against its own golden: relit, and with ``resized`` alternately smaller
    and brighter, larger and darker."""
    inputs = {"cap": ("capture.png", png(capture))}
    for index, name in enumerate(scene.boxes):
        if not resized:
            golden = scene.golden(name, gain=1.15, offset=-10)
        elif index % 2:
            golden = scene.golden(name, scale=1.5, gain=0.75, offset=-4)
        else:
            golden = scene.golden(name, scale=0.75, gain=1.2, offset=6)
        inputs[f"g-{name}"] = (f"golden-{name}.png", png(golden))
    threshold = (THRESHOLDS if resized else STRICT_THRESHOLDS)[method]
    regions = [
        {
            "name": name,
            "box": scene.box(name),
            "goldens": [f"g-{name}"],
            "method": method,
            "threshold": threshold,
        }
        for name in scene.boxes
    ]
    return run(inputs, {"capture": "cap", "regions": regions})


@pytest.mark.parametrize("method", METHODS)
def test_clean_regions_pass_against_resized_relit_goldens_and_a_missing_part_fails(
    scene: InspectionScene, method: str
) -> None:
    ctx, result = inspect_all(scene, scene.with_defect("r4", "missing"), method)
    verdicts = {r["name"]: r["passed"] for r in result["regions"]}
    assert verdicts == {"r0": True, "r1": True, "r2": True, "r3": True, "r4": False, "r5": True}
    assert result["passed"] is False
    for region in result["regions"]:
        assert region["method"] == method
        assert region["threshold"] == THRESHOLDS[method]
        assert region["passed"] is (region["score"] >= THRESHOLDS[method])
    assert ctx.progress_log == [(i, 6) for i in range(7)]


@pytest.mark.parametrize("method", METHODS)
def test_a_thin_scratch_across_a_region_fails_it(scene: InspectionScene, method: str) -> None:
    _, result = inspect_all(scene, scene.with_defect("r1", "scratch"), method, resized=False)
    assert [r["name"] for r in result["regions"] if not r["passed"]] == ["r1"]
    assert result["passed"] is False


def test_the_capture_passes_when_every_region_passes(scene: InspectionScene) -> None:
    _, result = inspect_all(scene, scene.image, "ssim")
    assert result["passed"] is True
    assert all(r["passed"] for r in result["regions"])
    assert result["image"] == {"width": 960, "height": 640, "channels": 3}


def test_rescoring_the_stored_crop_and_goldens_gives_exactly_the_recorded_scores(
    scene: InspectionScene,
) -> None:
    goldens = {
        "small": scene.golden("r0", scale=0.6, gain=1.1),
        "large": scene.golden("r0", scale=1.7, gain=0.9),
        "other": scene.golden("r3", scale=0.9),
    }
    inputs = {"cap": ("capture.jpg", jpeg(scene.image))}
    inputs |= {gid: (f"{gid}.png", png(g)) for gid, g in goldens.items()}
    regions = [
        {"name": f"{method}-r0", "box": scene.box("r0"), "goldens": list(goldens), "method": method}
        | {"threshold": 0.5}
        for method in METHODS
    ]
    ctx, result = run(inputs, {"capture": "cap", "regions": regions})

    capture = decode_image(inputs["cap"][1], "capture")
    x, y, w, h = scene.boxes["r0"]
    names = set()
    for region in result["regions"]:
        crop_ref = region["crop"]
        crop = decode_image(ctx.outputs[crop_ref["name"]], "crop")
        assert crop_ref["name"] == f"{region['name']}.crop.png"
        assert crop_ref["artifact_id"] == ctx.output_artifacts[crop_ref["name"]].id
        assert ctx.output_artifacts[crop_ref["name"]].content_type == "image/png"
        assert np.array_equal(crop, capture[y : y + h, x : x + w])
        assert crop_ref["pixel_sha256"] == pixel_sha256(crop)
        assert crop_ref["shape"] == [h, w, 3]
        names.add(crop_ref["name"])
        for index, (golden_ref, (gid, original)) in enumerate(
            zip(region["goldens"], goldens.items(), strict=True)
        ):
            stored = decode_image(ctx.outputs[golden_ref["name"]], "golden")
            assert golden_ref["golden"] == gid
            assert golden_ref["name"] == f"{region['name']}.golden-{index}.png"
            assert golden_ref["artifact_id"] == ctx.output_artifacts[golden_ref["name"]].id
            expected = cv2.resize(original, (w, h), interpolation=cv2.INTER_AREA)
            assert np.array_equal(stored, expected)
            assert golden_ref["pixel_sha256"] == pixel_sha256(stored)
            assert golden_ref["shape"] == [h, w, 3]
            assert type(golden_ref["score"]) is float
            assert score(crop, stored, region["method"]) == golden_ref["score"]
            names.add(golden_ref["name"])
        best = max(region["goldens"], key=lambda g: g["score"])
        assert region["score"] == best["score"]
        assert region["best_golden"] == best["golden"]
        assert region["best_golden"] in ("small", "large")
    assert names == set(ctx.outputs)
    assert len(names) == 3 * 4
    assert json.loads(json.dumps(result)) == result


def test_the_best_of_several_goldens_decides_the_region(scene: InspectionScene) -> None:
    inputs = {
        "cap": ("capture.png", png(scene.image)),
        "g0": ("g0.png", png(scene.golden("r0"))),
        "g2": ("g2.png", png(scene.golden("r2", scale=0.8, gain=1.1))),
        "g5": ("g5.png", png(scene.golden("r5"))),
    }
    regions = [
        {"name": "right", "box": scene.box("r2"), "goldens": ["g0", "g2", "g5"], "threshold": 0.9},
        {"name": "wrong", "box": scene.box("r2"), "goldens": ["g0", "g5"], "threshold": 0.9},
    ]
    _, result = run(inputs, {"capture": "cap", "regions": regions})
    right, wrong = result["regions"]
    assert right["best_golden"] == "g2"
    assert right["score"] == right["goldens"][1]["score"] > 0.95
    assert right["passed"] is True
    assert wrong["passed"] is False
    assert wrong["score"] < 0.5
    assert result["passed"] is False


class CountingContext(MemoryTaskContext):
    """Counts reads, and is cancelled once ``cancel_after`` regions have reported progress."""

    def __init__(self, inputs: dict[str, tuple[str, bytes]], cancel_after: int = -1) -> None:
        super().__init__(inputs)
        self.reads: list[str] = []
        self.cancel_after = cancel_after

    def read_input(self, artifact_id: str) -> bytes:
        self.reads.append(artifact_id)
        return super().read_input(artifact_id)

    def progress(self, done: int, total: int) -> None:
        if done == self.cancel_after:
            self.cancelled = True
        super().progress(done, total)


def test_each_input_is_read_once_however_many_regions_use_it(scene: InspectionScene) -> None:
    inputs = {"cap": ("capture.png", png(scene.image))}
    inputs |= {"g0": ("g0.png", png(scene.golden("r0"))), "g1": ("g1.png", png(scene.golden("r1")))}
    regions = [
        {"name": name, "box": scene.box(name), "goldens": ["g1", "g0"], "threshold": 0.5}
        for name in scene.boxes
    ]
    ctx = CountingContext(inputs)
    model = validated({"capture": "cap", "regions": regions}, ctx)
    result = RoiCompare().run(ctx, model)
    assert ctx.reads == ["cap", "g1", "g0"]
    assert [r["best_golden"] for r in result["regions"][:2]] == ["g0", "g1"]


def test_a_cancelled_task_stops_after_the_region_in_hand(scene: InspectionScene) -> None:
    inputs = {"cap": ("capture.png", png(scene.image)), "g": ("g.png", png(scene.golden("r0")))}
    regions = [
        {"name": name, "box": scene.box(name), "goldens": ["g"], "threshold": 0.5}
        for name in scene.boxes
    ]
    ctx = CountingContext(inputs, cancel_after=2)
    model = validated({"capture": "cap", "regions": regions}, ctx)
    with pytest.raises(TaskCancelled):
        RoiCompare().run(ctx, model)
    assert sorted(ctx.outputs) == [
        "r0.crop.png",
        "r0.golden-0.png",
        "r1.crop.png",
        "r1.golden-0.png",
    ]


def test_a_grayscale_capture_stays_one_channel_and_alpha_is_dropped(
    scene: InspectionScene,
) -> None:
    gray = cv2.cvtColor(scene.image, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(scene.image, cv2.COLOR_BGR2BGRA)
    bgra[..., 3] = 77
    golden = {"g": ("g.png", png(scene.golden("r1")))}
    region = {"name": "r1", "box": scene.box("r1"), "goldens": ["g"], "threshold": 0.95}
    x, y, w, h = scene.boxes["r1"]

    ctx, result = run(
        {"cap": ("gray.png", png(gray))} | golden, {"capture": "cap", "regions": [region]}
    )
    assert result["image"]["channels"] == 1
    assert result["regions"][0]["crop"]["shape"] == [h, w]
    assert np.array_equal(
        decode_image(ctx.outputs["r1.crop.png"], "crop"), gray[y : y + h, x : x + w]
    )
    assert result["passed"] is True

    ctx, result = run(
        {"cap": ("bgra.png", png(bgra))} | golden, {"capture": "cap", "regions": [region]}
    )
    assert result["image"]["channels"] == 3
    stored = decode_image(ctx.outputs["r1.crop.png"], "crop")
    assert np.array_equal(stored, scene.image[y : y + h, x : x + w])
    assert result["passed"] is True


def truncated_png(scene: InspectionScene) -> bytes:
    data = png(scene.golden("r5"))
    return data[: len(data) - 1]


def sixteen_bit_png(scene: InspectionScene) -> bytes:
    return png(scene.golden("r5")[..., 0].astype(np.uint16) * 257)


@pytest.mark.parametrize(
    ("bad_golden", "message"),
    [
        (lambda s: b"GIF89a but not really", "input bad.png (bad) is not a decodable image"),
        (lambda s: b"", "input bad.png (bad) is not a decodable image"),
        (truncated_png, "input bad.png (bad) is not a decodable image"),
        (
            sixteen_bit_png,
            "input bad.png (bad) has uint16 pixels (16-bit); only 8-bit images are supported",
        ),
    ],
    ids=["not-an-image", "empty", "truncated-png", "16-bit"],
)
def test_an_undecodable_input_fails_the_task_before_any_output(
    scene: InspectionScene, bad_golden: Any, message: str
) -> None:
    inputs = {
        "cap": ("capture.png", png(scene.image)),
        "good": ("good.png", png(scene.golden("r0"))),
        "bad": ("bad.png", bad_golden(scene)),
    }
    regions = [
        {"name": "first", "box": scene.box("r0"), "goldens": ["good"], "threshold": 0.5},
        {"name": "last", "box": scene.box("r5"), "goldens": ["good", "bad"], "threshold": 0.5},
    ]
    with pytest.raises(TaskFailed) as failure:
        run(inputs, {"capture": "cap", "regions": regions})
    assert failure.value.message == message
    assert str(failure.value) == message


def test_a_capture_that_is_not_an_image_fails_naming_it(scene: InspectionScene) -> None:
    inputs = {"cap": ("capture.png", b"\x89PNG\r\n\x1a\n" + bytes(100))}
    inputs |= {"g": ("g.png", png(scene.golden("r0")))}
    region = {"name": "r0", "box": scene.box("r0"), "goldens": ["g"], "threshold": 0.5}
    with pytest.raises(TaskFailed, match=r"^input capture\.png \(cap\) is not a decodable image$"):
        run(inputs, {"capture": "cap", "regions": [region]})


def test_a_box_outside_the_capture_fails_the_task_before_any_output(
    scene: InspectionScene,
) -> None:
    inputs = {"cap": ("capture.png", png(scene.image)), "g": ("g.png", png(scene.golden("r0")))}
    regions = [
        {"name": "r0", "box": scene.box("r0"), "goldens": ["g"], "threshold": 0.5},
        {
            "name": "r3",
            "box": {"x": 900, "y": 10, "width": 61, "height": 50},
            "goldens": ["g"],
            "threshold": 0.5,
        },
    ]
    ctx = MemoryTaskContext(inputs)
    model = validated({"capture": "cap", "regions": regions}, ctx)
    with pytest.raises(TaskFailed) as failure:
        RoiCompare().run(ctx, model)
    assert failure.value.message == (
        "region 'r3': box x=900 y=10 width=61 height=50 lies outside the 960x640 image"
    )
    assert ctx.outputs == {}


def test_a_box_touching_the_far_edges_is_inside(scene: InspectionScene) -> None:
    inputs = {"cap": ("capture.png", png(scene.image)), "g": ("g.png", png(scene.golden("r0")))}
    box = {"x": 900, "y": 600, "width": 60, "height": 40}
    region = {"name": "corner", "box": box, "goldens": ["g"], "threshold": -1}
    ctx, result = run(inputs, {"capture": "cap", "regions": [region]})
    crop = decode_image(ctx.outputs["corner.crop.png"], "crop")
    assert np.array_equal(crop, scene.image[600:640, 900:960])
    assert result["passed"] is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p["regions"][1]["goldens"].append("missing"),
            "region 'r1': golden 'missing' is not among the task's inputs",
        ),
        (lambda p: p.update(capture="nope"), "capture 'nope' is not among the task's inputs"),
        (
            lambda p: p["regions"][1].update(name="r0"),
            "regions: Value error, region names must be unique; 'r0' is used twice",
        ),
        (
            lambda p: p["regions"][0].update(threshold=1.5),
            "regions.0.threshold: Input should be less than or equal to 1",
        ),
        (
            lambda p: p["regions"][0].update(threshold=-2),
            "regions.0.threshold: Input should be greater than or equal to -1",
        ),
        (lambda p: p["regions"][0].pop("threshold"), "regions.0.threshold: Field required"),
        (lambda p: p.update(colour="red"), "colour: Extra inputs are not permitted"),
        (
            lambda p: p["regions"][0]["box"].update(depth=3),
            "regions.0.box.depth: Extra inputs are not permitted",
        ),
        (
            lambda p: p["regions"][0]["box"].update(width=0),
            "regions.0.box.width: Input should be greater than or equal to 1",
        ),
        (
            lambda p: p["regions"][0]["box"].update(x=-1),
            "regions.0.box.x: Input should be greater than or equal to 0",
        ),
        (lambda p: p["regions"][0].update(method="sad"), "regions.0.method: Input should be"),
        (lambda p: p["regions"][0].update(name="../r0"), "regions.0.name: String should match"),
        (lambda p: p["regions"][0].update(goldens=[]), "regions.0.goldens: List should have at"),
        (lambda p: p.update(regions=[]), "regions: List should have at least 1 item"),
    ],
    ids=[
        "golden-not-an-input",
        "capture-not-an-input",
        "duplicate-names",
        "threshold-above-1",
        "threshold-below-minus-1",
        "threshold-missing",
        "unknown-field",
        "unknown-box-field",
        "empty-box",
        "negative-x",
        "unknown-method",
        "bad-name",
        "no-goldens",
        "no-regions",
    ],
)
def test_params_that_do_not_fit_are_refused_at_submission(change: Any, message: str) -> None:
    params: dict[str, Any] = {
        "capture": "cap",
        "regions": [
            {"name": "r0", "box": {"x": 0, "y": 0, "width": 8, "height": 8}, "goldens": ["g"]}
            | {"threshold": 0.9},
            {"name": "r1", "box": {"x": 8, "y": 0, "width": 8, "height": 8}, "goldens": ["g"]}
            | {"threshold": 0.9},
        ],
    }
    change(params)
    inputs = MemoryTaskContext({"cap": ("c.png", b""), "g": ("g.png", b"")}).inputs
    with pytest.raises(InvalidInput) as refused:
        Registry([RoiCompare()]).validate("roi-compare", params, inputs)
    assert message in refused.value.message


def test_the_builtin_registry_offers_roi_compare() -> None:
    assert isinstance(Registry.load()["roi-compare"], RoiCompare)


# --- score and pixel_sha256 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def patch(scene: InspectionScene) -> npt.NDArray[np.uint8]:
    x, y, w, h = scene.boxes["r0"]
    return scene.clean[y : y + h, x : x + w].copy()


@pytest.mark.parametrize("method", METHODS)
def test_an_image_scores_1_against_itself(patch: npt.NDArray[np.uint8], method: str) -> None:
    assert score(patch, patch, method) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_a_change_of_gain_and_offset_hardly_changes_the_score(
    patch: npt.NDArray[np.uint8], method: str
) -> None:
    relit = np.clip(np.rint(patch * 0.6 + 40.0), 0, 255).astype(np.uint8)
    assert score(patch, relit, method) > 0.99


def test_ncc_of_a_negative_is_minus_1(patch: npt.NDArray[np.uint8]) -> None:
    assert score(patch, 255 - patch, "ncc") == pytest.approx(-1.0, abs=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_flat_images_match_only_flat_images_of_about_the_same_grey(
    patch: npt.NDArray[np.uint8], method: str
) -> None:
    grey = np.full(patch.shape, 120, np.uint8)
    assert score(grey, grey, method) == 1.0
    assert score(grey, grey + 10, method) == 1.0
    assert score(grey, grey + 40, method) == 0.0
    assert score(grey, patch, method) == 0.0
    assert score(patch, grey, method) == 0.0


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (3, 3), (2, 2, 3)])
def test_regions_as_small_as_a_pixel_score_within_range(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = rng.integers(0, 256, shape, dtype=np.uint8)
    for method in METHODS:
        assert score(a, a, method) == pytest.approx(1.0, abs=1e-12)
        assert -1.0 <= score(a, b, method) <= 1.0


def test_score_refuses_images_of_different_sizes_and_unknown_methods(
    patch: npt.NDArray[np.uint8],
) -> None:
    with pytest.raises(ValueError, match="differ in size"):
        score(patch, patch[1:], "ncc")
    with pytest.raises(ValueError, match="unknown method 'sad'"):
        score(patch, patch, "sad")


def test_a_colour_crop_and_its_grayscale_golden_compare_alike(
    patch: npt.NDArray[np.uint8],
) -> None:
    gray = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
    for method in METHODS:
        assert score(patch, gray, method) == score(gray, gray, method)


def test_pixel_sha256_covers_the_shape_as_well_as_the_bytes() -> None:
    pixels = np.arange(24, dtype=np.uint8)
    header = b"2x4x3:uint8\n"
    assert (
        pixel_sha256(pixels.reshape(2, 4, 3))
        == hashlib.sha256(header + pixels.tobytes()).hexdigest()
    )
    assert pixel_sha256(pixels.reshape(4, 2, 3)) != pixel_sha256(pixels.reshape(2, 4, 3))
    assert (
        pixel_sha256(pixels.reshape(4, 6))
        == hashlib.sha256(b"4x6x1:uint8\n" + pixels.tobytes()).hexdigest()
    )
    strided = np.arange(48, dtype=np.uint8).reshape(4, 12)[:, ::2]
    assert pixel_sha256(strided) == pixel_sha256(strided.copy())
