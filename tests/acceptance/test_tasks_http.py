"""Tasks over real HTTP: an inspection end to end, and an external worker with a plain client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx2 as httpx
import numpy as np
import pytest

from ephemera.processors.roi_compare import pixel_sha256, score
from tests.conftest import Server, bearer, serving
from tests.images import inspection_scene, png

pytestmark = pytest.mark.slow


def create_session(server: Server, session_id: str) -> str:
    answer = httpx.post(f"{server.api}/sessions", json={"id": session_id}, headers=server.admin())
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


def upload(server: Server, session_id: str, token: str, name: str, data: bytes, **q: str) -> str:
    answer = httpx.post(
        f"{server.api}/sessions/{session_id}/artifacts",
        params={"name": name, **q},
        content=data,
        headers=bearer(token),
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def wait_for_task(server: Server, session_id: str, token: str, task_id: str) -> dict[str, Any]:
    url = f"{server.api}/sessions/{session_id}/tasks/{task_id}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        task: dict[str, Any] = httpx.get(url, headers=bearer(token)).json()
        if task["state"] not in ("pending", "running"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task still {task['state']} after 60 s")


def download(server: Server, session_id: str, token: str, artifact_id: str) -> bytes:
    answer = httpx.get(
        f"{server.api}/sessions/{session_id}/artifacts/{artifact_id}/content",
        headers=bearer(token),
    )
    assert answer.status_code == 200, answer.text
    return answer.content


def decode(data: bytes) -> Any:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_an_inspection_end_to_end_records_exactly_what_it_compared(server: Server) -> None:
    scene = inspection_scene(seed=3)
    library = create_session(server, "golden-library")
    station = create_session(server, "station-1")
    goldens = {
        name: upload(
            server,
            "golden-library",
            library,
            f"golden-{name}.png",
            png(scene.golden(name, scale=1.25, gain=1.1, offset=-5)),
            kind="golden",
        )
        for name in scene.boxes
    }
    capture = upload(server, "station-1", station, "capture.png", png(scene.with_defect("r1")))
    methods = ["ncc", "ssim", "hist-cosine"]
    thresholds = {"ncc": 0.95, "ssim": 0.9, "hist-cosine": 0.93}
    regions = [
        {
            "name": name,
            "box": scene.box(name),
            "goldens": [goldens[name]],
            "method": methods[i % 3],
            "threshold": thresholds[methods[i % 3]],
        }
        for i, name in enumerate(scene.boxes)
    ]
    submitted = httpx.post(
        f"{server.api}/sessions/station-1/tasks",
        json={
            "processor": "roi-compare",
            "inputs": [capture]
            + [{"session_id": "golden-library", "artifact_id": g} for g in goldens.values()],
            "params": {"capture": capture, "regions": regions},
            "reference_tokens": {"golden-library": library},
        },
        headers=bearer(station),
    )
    assert submitted.status_code == 201, submitted.text
    task = wait_for_task(server, "station-1", station, submitted.json()["id"])

    assert task["state"] == "succeeded", task["error"]
    assert task["progress"] == {"done": len(regions), "total": len(regions)}
    result = task["result"]
    assert {r["name"]: r["passed"] for r in result["regions"]} == {
        name: name != "r1" for name in scene.boxes
    }
    assert result["passed"] is False
    outputs = {o["artifact_id"]: o for o in task["outputs"]}
    for region in result["regions"]:
        crop = decode(download(server, "station-1", station, region["crop"]["artifact_id"]))
        (compared,) = region["goldens"]
        golden = decode(download(server, "station-1", station, compared["artifact_id"]))
        # Scoring the stored pixels again gives exactly the recorded similarity.
        assert score(crop, golden, region["method"]) == region["score"] == compared["score"]
        assert pixel_sha256(crop) == region["crop"]["pixel_sha256"]
        assert pixel_sha256(golden) == compared["pixel_sha256"]
        x, y, w, h = scene.boxes[region["name"]]
        assert np.array_equal(crop, scene.with_defect("r1")[y : y + h, x : x + w])
        assert {region["crop"]["artifact_id"], compared["artifact_id"]} <= set(outputs)
        assert outputs[compared["artifact_id"]]["content_type"] == "image/png"

    # Without the library's token, its goldens are out of reach (and look absent).
    refused = httpx.post(
        f"{server.api}/sessions/station-1/tasks",
        json={
            "processor": "roi-compare",
            "inputs": [capture, {"session_id": "golden-library", "artifact_id": goldens["r0"]}],
            "params": {"capture": capture, "regions": regions[:1]},
        },
        headers=bearer(station),
    )
    assert refused.status_code == 404
    invalid = httpx.post(
        f"{server.api}/sessions/station-1/tasks",
        json={"processor": "roi-compare", "inputs": [capture], "params": {"capture": capture}},
        headers=bearer(station),
    )
    assert invalid.status_code == 422
    assert "regions" in invalid.json()["error"]["message"]


@pytest.fixture
def external_server(tmp_path: Path) -> Iterator[Server]:
    env = {"EPHEMERA_EXTERNAL_PROCESSORS": json.dumps(["thumbnail-go"])}
    with serving(tmp_path / "data", env) as running:
        yield running


def test_an_external_worker_claims_heartbeats_and_completes_over_http(
    external_server: Server,
) -> None:
    server = external_server
    command = [sys.executable, "-m", "ephemera", "worker-key", "create", "line-pc"]
    worker_key = subprocess.run(
        [*command, "--data-dir", str(server.data_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    token = create_session(server, "s1")
    photo = upload(server, "s1", token, "photo.jpg", b"\xff\xd8 not really a jpeg")
    submitted = httpx.post(
        f"{server.api}/sessions/s1/tasks",
        json={"processor": "thumbnail-go", "inputs": [photo], "params": {"width": 64}},
        headers=bearer(token),
    )
    assert submitted.status_code == 201, submitted.text
    task_id = submitted.json()["id"]

    # All a worker in another language has: an HTTP client and its key.
    worker = httpx.Client(base_url=f"{server.api}/worker", headers=bearer(worker_key))
    assert (
        worker.post("/claim", json={"worker": "go-1", "processors": ["other"]}).status_code == 204
    )
    claimed = worker.post("/claim", json={"worker": "go-1", "processors": ["thumbnail-go"]})
    assert claimed.status_code == 200, claimed.text
    body = claimed.json()
    assert body["task"]["id"] == task_id
    assert body["task"]["params"] == {"width": 64}
    assert [a["id"] for a in body["inputs"]] == [photo]
    held = {"Ephemera-Claim": body["claim_id"]}

    data = worker.get(f"/tasks/{task_id}/inputs/{photo}/content", headers=held)
    assert data.content == b"\xff\xd8 not really a jpeg"
    beat = worker.post(
        f"/tasks/{task_id}/heartbeat", json={"progress": {"done": 1, "total": 2}}, headers=held
    )
    assert beat.status_code == 200, beat.text
    seen = httpx.get(f"{server.api}/sessions/s1/tasks/{task_id}", headers=bearer(token)).json()
    assert (seen["state"], seen["progress"], seen["worker"]) == (
        "running",
        {"done": 1, "total": 2},
        "go-1",
    )
    output = worker.post(
        f"/tasks/{task_id}/outputs",
        params={"name": "thumb.png", "content_type": "image/png"},
        content=b"thumbnail bytes",
        headers=held,
    )
    assert output.status_code == 201, output.text
    stale = {"Ephemera-Claim": "not-the-claim"}
    assert worker.post(f"/tasks/{task_id}/complete", json={}, headers=stale).status_code == 409
    done = worker.post(f"/tasks/{task_id}/complete", json={"result": {"w": 64}}, headers=held)
    assert done.status_code == 200, done.text
    assert worker.post(f"/tasks/{task_id}/complete", json={}, headers=held).status_code == 409

    task = httpx.get(f"{server.api}/sessions/s1/tasks/{task_id}", headers=bearer(token)).json()
    assert (task["state"], task["result"]) == ("succeeded", {"w": 64})
    assert [o["name"] for o in task["outputs"]] == ["thumb.png"]
    thumb = download(server, "s1", token, task["outputs"][0]["artifact_id"])
    assert thumb == b"thumbnail bytes"

    # The worker key opens the worker API only; a session token does not open it.
    assert httpx.get(f"{server.api}/sessions/s1", headers=bearer(worker_key)).status_code == 403
    assert (
        httpx.post(
            f"{server.api}/worker/claim",
            json={"worker": "x", "processors": ["thumbnail-go"]},
            headers=bearer(token),
        ).status_code
        == 403
    )
    worker.close()
