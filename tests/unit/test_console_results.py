"""A finished task's result as the workspace shows it, for each processor's result shape."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from ephemera.console import results
from ephemera.console.artifacts import content_url, image_url
from ephemera.console.templating import env
from ephemera.models import Task, TaskOutput, TaskState

SID = "station-1"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def output(aid: str, name: str, content_type: str = "image/png", **extra: Any) -> TaskOutput:
    return TaskOutput(aid, name, "output", content_type, 10, "ab" * 32, **extra)


def task(processor: str, result: dict[str, Any] | None, *outputs: TaskOutput) -> Task:
    return Task(
        id="t1",
        session_id=SID,
        processor=processor,
        params={},
        inputs=(),
        state=TaskState.SUCCEEDED,
        progress_done=1,
        progress_total=1,
        result=result,
        error=None,
        outputs=outputs,
        attempts=1,
        max_attempts=3,
        worker="w",
        created_at=NOW,
        started_at=NOW,
        finished_at=NOW,
    )


def shown(t: Task) -> str:
    return env.get_template("workspace/task_status.html").render(
        session_id=SID,
        task=t,
        finished=True,
        result=results.view(SID, t),
        login=SimpleNamespace(csrf="x"),
        can_change=True,
    )


def roi_region(name: str, passed: bool, crop: str, golden: str) -> dict[str, Any]:
    return {
        "name": name,
        "box": {"x": 0, "y": 0, "width": 4, "height": 4},
        "method": "ncc",
        "threshold": 0.9,
        "score": 0.95 if passed else 0.2,
        "passed": passed,
        "best_golden": "g",
        "crop": {"artifact_id": crop, "name": f"{name}.crop.png"},
        "goldens": [{"golden": "g", "artifact_id": golden, "name": "x", "score": 0.5}],
    }


def test_roi_compare_shows_each_regions_crop_beside_its_golden_with_the_verdict() -> None:
    t = task(
        "roi-compare",
        {
            "passed": False,
            "regions": [roi_region("r0", True, "c0", "g0"), roi_region("r1", False, "c1", "g1")],
        },
        output("c0", "r0.crop.png"),
        output("g0", "r0.golden-0.png"),
        output("c1", "r1.crop.png"),
        output("g1", "r1.golden-0.png"),
    )
    page = shown(t)
    assert results.view(SID, t).kind == "roi"
    assert "Overall: FAIL" in page
    assert 'Region r0: <span class="pass">pass</span>' in page
    assert 'Region r1: <span class="fail">fail</span>' in page
    for aid in ("c0", "g0", "c1", "g1"):
        assert f'src="{image_url(SID, aid)}"' in page
    assert "Score <strong>0.9500</strong> against threshold 0.9000 (ncc)" in page


def test_calibration_shows_the_undistorted_preview_and_the_numbers() -> None:
    t = task(
        "camera-calibration",
        {
            "image_size": {"width": 640, "height": 480},
            "rms": 0.25,
            "camera_matrix": [[700, 0, 320], [0, 701, 240], [0, 0, 1]],
            "fx": 700.0,
            "fy": 701.0,
            "cx": 320.0,
            "cy": 240.0,
            "dist_coeffs": [-0.2, 0.05, 0, 0, 0],
            "images": [
                {"artifact_id": "i1", "name": "v1.png", "found": True, "reprojection_error": 0.2},
                {"artifact_id": "i2", "name": "v2.png", "found": False, "reprojection_error": None},
            ],
            "used": 1,
            "preview": {"artifact_id": "p1", "name": "undistorted-preview.png"},
        },
        output("p1", "undistorted-preview.png"),
    )
    page = shown(t)
    assert f'src="{image_url(SID, "p1")}"' in page
    assert "0.2500 px" in page
    assert "700.000, 701.000" in page
    assert "640 \u00d7 480" in page
    assert "1 of 2" in page


def test_the_image_catalogue_shows_each_images_thumbnail() -> None:
    t = task(
        "image-catalog",
        {
            "items": [
                {
                    "artifact_id": "a1",
                    "name": "cat.jpg",
                    "width": 800,
                    "height": 600,
                    "tags": ["landscape"],
                    "thumbnail": {"artifact_id": "t1", "name": "cat.thumb.png"},
                    "catalog": {"artifact_id": "j1", "name": "cat.catalog.json"},
                }
            ],
            "given": [],
            "failed": [],
            "groups": [],
        },
        output("t1", "cat.thumb.png"),
        output("j1", "cat.catalog.json", "application/json"),
    )
    page = shown(t)
    assert f'<img src="{image_url(SID, "t1")}" alt="Thumbnail of cat.jpg"' in page
    assert "800 \u00d7 600" in page
    assert f'href="{content_url(SID, "j1")}"' in page  # the JSON is a link, not a picture
    assert f'src="{image_url(SID, "j1")}"' not in page


def test_documents_are_links_and_removed_outputs_say_so() -> None:
    t = task(
        "pdf-form-fill",
        {"rows": 2},
        output("d1", "row-0001.pdf", "application/pdf"),
        output("d2", "row-0002.pdf", "application/pdf", removed=True),
    )
    page = shown(t)
    assert f'<a href="{content_url(SID, "d1")}" download>row-0001.pdf</a>' in page
    assert 'row-0002.pdf <span class="muted">(removed)</span>' in page
    assert content_url(SID, "d2") not in page
    assert "<img" not in page


def test_an_unknown_or_misshapen_result_falls_back_to_its_escaped_json() -> None:
    hostile = {"note": "<script>alert(1)</script>"}
    for t in (task("someone-elses", hostile), task("roi-compare", {"regions": "nonsense"})):
        view = results.view(SID, t)
        assert view.kind == "generic"
        page = shown(t)
        assert "The result as JSON" in page
        assert "<script>" not in page
    assert "&lt;script&gt;" in shown(task("someone-elses", hostile))
