"""A finished task's result as a page shows it, by processor.

roi-compare: each region's crop beside the golden(s) it was scored against, with the score,
threshold and pass/fail; camera-calibration: the undistorted preview and the numbers; the
image catalogue: each image's thumbnail; the document processors: links to their outputs.
Every result also shows its outputs and its JSON (escaped like everything else). A result
that does not have the shape its processor writes (or a processor this module does not know)
falls back to that generic view, never to an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ephemera.console.artifacts import content_url, image_url, shown_inline
from ephemera.models import Task, TaskOutput


@dataclass(frozen=True)
class Output:
    id: str
    name: str
    kind: str
    size: int
    sha256: str
    removed: bool
    download: str | None
    image: str | None


@dataclass(frozen=True)
class ResultView:
    """Which template shows the result (``workspace/result_<kind>.html``) and with what."""

    kind: str
    outputs: list[Output]
    json: str | None
    data: dict[str, Any] = field(default_factory=dict)


def _output(session_id: str, o: TaskOutput) -> Output:
    here = not o.removed
    return Output(
        o.artifact_id,
        o.name,
        o.kind,
        o.size,
        o.sha256,
        o.removed,
        content_url(session_id, o.artifact_id) if here else None,
        image_url(session_id, o.artifact_id) if here and shown_inline(o.content_type) else None,
    )


def view(session_id: str, task: Task) -> ResultView:
    outputs = [_output(session_id, o) for o in task.outputs]
    text = None if task.result is None else json.dumps(task.result, indent=2, sort_keys=True)
    known = SHAPES.get(task.processor)
    if task.result is not None and known is not None:
        name, shape = known
        try:
            data = shape(task.result, {o.id: o for o in outputs})
        except (KeyError, TypeError, ValueError, AttributeError):
            data = None  # not the shape this processor writes: the generic view
        if data is not None:
            return ResultView(name, outputs, text, data)
    return ResultView("generic", outputs, text)


def _picture(by_id: Mapping[str, Output], artifact_id: Any) -> Output | None:
    return by_id.get(artifact_id) if isinstance(artifact_id, str) else None


def _roi(result: Mapping[str, Any], by_id: Mapping[str, Output]) -> dict[str, Any]:
    regions = []
    for region in result["regions"]:
        goldens = [
            {
                "output": _picture(by_id, g.get("artifact_id")),
                "name": str(g.get("name", "")),
                "score": float(g["score"]),
                "best": g.get("golden") == region.get("best_golden"),
            }
            for g in region["goldens"]
        ]
        regions.append(
            {
                "name": str(region["name"]),
                "passed": bool(region["passed"]),
                "score": float(region["score"]),
                "threshold": float(region["threshold"]),
                "method": str(region.get("method", "")),
                "crop": _picture(by_id, region["crop"].get("artifact_id")),
                "goldens": goldens,
            }
        )
    return {"passed": bool(result["passed"]), "regions": regions}


def _calibration(result: Mapping[str, Any], by_id: Mapping[str, Output]) -> dict[str, Any]:
    preview = result.get("preview")
    return {
        "preview": _picture(by_id, preview.get("artifact_id")) if preview else None,
        "rms": float(result["rms"]),
        "fx": float(result["fx"]),
        "fy": float(result["fy"]),
        "cx": float(result["cx"]),
        "cy": float(result["cy"]),
        "dist_coeffs": [float(v) for v in result["dist_coeffs"]],
        "size": result["image_size"],
        "used": int(result["used"]),
        "images": [
            {
                "name": str(i["name"]),
                "found": bool(i["found"]),
                "error": None
                if i["reprojection_error"] is None
                else float(i["reprojection_error"]),
            }
            for i in result["images"]
        ],
    }


def _number_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _catalog(result: Mapping[str, Any], by_id: Mapping[str, Output]) -> dict[str, Any]:
    return {
        "items": [
            {
                "name": str(item["name"]),
                "width": item.get("width"),
                "height": item.get("height"),
                "tags": [str(t) for t in item.get("tags") or ()],
                "thumbnail": _picture(by_id, (item.get("thumbnail") or {}).get("artifact_id")),
            }
            for item in result["items"]
        ],
        "failed": result.get("failed") or [],
        "groups": result.get("groups") or [],
    }


def _documents(result: Mapping[str, Any], by_id: Mapping[str, Output]) -> dict[str, Any]:
    return {}  # the outputs are the result: the template lists them as links


Shape = Callable[[Mapping[str, Any], Mapping[str, Output]], dict[str, Any]]
# processor -> (its view's name, what the view needs of the result)
SHAPES: dict[str, tuple[str, Shape]] = {
    "roi-compare": ("roi", _roi),
    "camera-calibration": ("calibration", _calibration),
    "image-catalog": ("catalog", _catalog),
    "pdf-form-fill": ("documents", _documents),
    "pdf-extract": ("documents", _documents),
    "bol-reconcile": ("documents", _documents),
}
