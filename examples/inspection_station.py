"""Recipe: an inspection station (automated optical inspection of circuit boards).

A line camera photographs each board; the station compares regions of the photo (the chips,
the connector) with golden images kept once, in a long-lived golden library session, and
decides pass or fail per region. Each board gets a session of its own, named after its serial
number, so a board's photos and crops never mix with another's and disappear when the board
is done. See docs/recipes/inspection-station.md.

    python examples/inspection_station.py --server http://127.0.0.1:8000 --admin-key "$KEY"

The boards are rendered here (numpy, OpenCV: the ``vision`` extra); the last one has a chip
missing. The script checks that exactly that region fails, that every crop downloaded is
byte for byte what the server recorded, and that each recorded score can be recomputed from
the downloaded pixels. It prints one line of JSON and exits 0, or exits with a message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import time
from typing import Any

import cv2
import httpx2 as httpx
import numpy as np

# The library's own scoring: anyone holding the stored crops can recompute a verdict.
from ephemera.processors.roi_compare import pixel_sha256, score

# Where each component sits on the board (x, y, width, height), as the station's CAD says.
COMPONENTS = {
    "u1": (60, 60, 140, 100),
    "u7": (300, 80, 180, 130),
    "c12": (90, 280, 70, 40),
    "j2": (380, 300, 200, 70),
}
MARGIN = 12  # pixels of board around each component in its region of interest
THRESHOLD = 0.9  # ncc after illumination normalisation; a good board scores about 0.99
SIZE = (640, 480)


def fail(message: str) -> SystemExit:
    return SystemExit(f"inspection station: {message}")


# -- images -----------------------------------------------------------------------------------


def render_board(
    missing: str | None = None, gain: float = 1.0, noise_seed: int | None = None
) -> Any:
    """A board: green solder mask, traces, dark chips with pins and markings.

    ``missing`` leaves one component's pads bare (the defect); ``gain`` and the sensor noise
    make every photo slightly different, as on a real line.
    """
    layout = np.random.default_rng(7)  # the same layout on every board
    width, height = SIZE
    image = np.full((height, width, 3), (40, 110, 30), np.uint8)
    for _ in range(40):
        x1, y1 = int(layout.integers(0, width)), int(layout.integers(0, height))
        x2, y2 = x1 + int(layout.integers(-200, 200)), y1
        if layout.random() < 0.5:
            x2, y2 = x1, y1 + int(layout.integers(-200, 200))
        cv2.line(image, (x1, y1), (x2, y2), (60, 160, 70), 3)
    for name, (x, y, w, h) in COMPONENTS.items():
        pads = (170, 190, 200)
        for px in range(x + 8, x + w - 8, 16):  # pins along the top and bottom edges
            cv2.rectangle(image, (px, y - 6), (px + 8, y + 4), pads, -1)
            cv2.rectangle(image, (px, y + h - 4), (px + 8, y + h + 6), pads, -1)
        if name == missing:
            cv2.rectangle(image, (x + 6, y + 6), (x + w - 6, y + h - 6), (150, 170, 180), 2)
            continue
        cv2.rectangle(image, (x, y), (x + w, y + h), (35, 35, 38), -1)
        cv2.circle(image, (x + 12, y + 12), 5, (90, 90, 95), -1)  # pin-1 mark
        cv2.putText(
            image,
            name.upper(),
            (x + 18, y + h // 2 + 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.8,
            (220, 220, 220),
            2,
        )
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        photo = image.astype(np.float64) * gain + rng.normal(0.0, 2.0, image.shape)
        image = np.clip(photo, 0, 255).astype(np.uint8)
    return image


def region_box(name: str) -> dict[str, int]:
    x, y, w, h = COMPONENTS[name]
    return {"x": x - MARGIN, "y": y - MARGIN, "width": w + 2 * MARGIN, "height": h + 2 * MARGIN}


def png(image: Any) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise fail("could not encode a PNG")
    return bytes(encoded.tobytes())


def decode(data: bytes) -> Any:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


# -- the API ----------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def check(response: httpx.Response, status: int, doing: str) -> Any:
    if response.status_code != status:
        raise fail(f"{doing}: expected {status}, got {response.status_code}: {response.text}")
    return response.json() if response.content else None


def create_session(http: httpx.Client, admin_key: str, body: dict[str, Any]) -> str:
    """Create a session with the caller's ID; return its token (shown only this once)."""
    created = check(
        http.post("/sessions", json=body, headers=bearer(admin_key)), 201, f"create {body['id']}"
    )
    return str(created["token"])


def upload(
    http: httpx.Client, sid: str, token: str, name: str, data: bytes, kind: str
) -> dict[str, Any]:
    # Sending our own sha256 makes the server refuse the upload if a byte changed in transit.
    params = {"name": name, "kind": kind, "sha256": hashlib.sha256(data).hexdigest()}
    answer = http.post(
        f"/sessions/{sid}/artifacts", params=params, content=data, headers=bearer(token)
    )
    return dict(check(answer, 201, f"upload {name} to {sid}"))


def wait_for_task(http: httpx.Client, sid: str, token: str, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        task = check(
            http.get(f"/sessions/{sid}/tasks/{task_id}", headers=bearer(token)), 200, "task"
        )
        if task["state"] in ("succeeded", "failed", "cancelled"):
            return dict(task)
        time.sleep(0.2)  # a few polls a second: the workers share the server's interpreter
    raise fail(f"task {task_id} of {sid} did not finish within 120 s")


def download(http: httpx.Client, sid: str, token: str, artifact_id: str) -> tuple[bytes, str]:
    answer = http.get(f"/sessions/{sid}/artifacts/{artifact_id}/content", headers=bearer(token))
    if answer.status_code != 200:
        raise fail(f"download {artifact_id} of {sid}: {answer.status_code} {answer.text}")
    return answer.content, answer.headers["etag"].strip('"')


# -- the workflow -----------------------------------------------------------------------------


def open_golden_library(http: httpx.Client, admin_key: str, sid: str) -> tuple[str, dict[str, str]]:
    """The reference images, uploaded once (kind ``golden``) to a session that lives for weeks.

    A golden is the component as it should look: here, the region cut from a clean render.
    """
    token = create_session(
        http,
        admin_key,
        {"id": sid, "label": "golden library", "idle_timeout_s": 30 * 24 * 3600},
    )
    reference = render_board()
    goldens: dict[str, str] = {}
    for name in COMPONENTS:
        box = region_box(name)
        x, y, w, h = box["x"], box["y"], box["width"], box["height"]
        artifact = upload(
            http, sid, token, f"{name}.png", png(reference[y : y + h, x : x + w]), "golden"
        )
        goldens[name] = artifact["id"]
    return token, goldens


def inspect_board(
    http: httpx.Client,
    admin_key: str,
    board_id: str,
    photo: Any,
    library: tuple[str, str, dict[str, str]],
) -> dict[str, Any]:
    """One board: its own session, the photo, one roi-compare task, the verdicts checked."""
    token = create_session(
        http, admin_key, {"id": board_id, "label": "board", "idle_timeout_s": 900}
    )
    try:
        return run_inspection(http, board_id, token, photo, library)
    finally:
        # The board is done: its session goes, photo, crops and records with it.
        close(http, board_id, token)


def run_inspection(
    http: httpx.Client,
    board_id: str,
    token: str,
    photo: Any,
    library: tuple[str, str, dict[str, str]],
) -> dict[str, Any]:
    library_sid, library_token, goldens = library
    capture = upload(http, board_id, token, "capture.png", png(photo), "input")
    body = {
        "processor": "roi-compare",
        # The goldens stay in the library: the task reads them there, proving access with the
        # library's token, and they are protected from cleanup while the task runs.
        "inputs": [capture["id"]]
        + [{"session_id": library_sid, "artifact_id": g} for g in goldens.values()],
        "reference_tokens": {library_sid: library_token},
        "params": {
            "capture": capture["id"],
            "regions": [
                {
                    "name": name,
                    "box": region_box(name),
                    "goldens": [goldens[name]],
                    "method": "ncc",
                    "threshold": THRESHOLD,
                }
                for name in COMPONENTS
            ],
        },
    }
    submitted = check(
        http.post(f"/sessions/{board_id}/tasks", json=body, headers=bearer(token)), 201, "submit"
    )
    task = wait_for_task(http, board_id, token, submitted["id"])
    if task["state"] != "succeeded":
        raise fail(f"{board_id}: task {task['state']}: {task['error']}")
    verified = verify_outputs(http, board_id, token, photo, task)
    failed = [r["name"] for r in task["result"]["regions"] if not r["passed"]]
    return {"passed": task["result"]["passed"], "failed_regions": failed, "verified": verified}


def verify_outputs(
    http: httpx.Client, sid: str, token: str, photo: Any, task: dict[str, Any]
) -> int:
    """Every crop is the exact pixels of the photo, and its recorded score can be recomputed."""
    recorded = {o["artifact_id"]: o["sha256"] for o in task["outputs"]}
    verified = 0
    for region in task["result"]["regions"]:
        crop_bytes, etag = download(http, sid, token, region["crop"]["artifact_id"])
        # The ETag is the sha256 recorded when the bytes were stored: check both.
        if (
            hashlib.sha256(crop_bytes).hexdigest() != etag
            or etag != recorded[region["crop"]["artifact_id"]]
        ):
            raise fail(f"{sid}: crop of {region['name']} does not match its ETag")
        crop = decode(crop_bytes)
        box = region["box"]
        expected = photo[box["y"] : box["y"] + box["height"], box["x"] : box["x"] + box["width"]]
        if crop.shape != expected.shape or not np.array_equal(crop, expected):
            raise fail(f"{sid}: crop of {region['name']} is not the exact pixels of the photo")
        if pixel_sha256(crop) != region["crop"]["pixel_sha256"]:
            raise fail(f"{sid}: crop of {region['name']} does not match its recorded pixel hash")
        best = next(g for g in region["goldens"] if g["golden"] == region["best_golden"])
        golden_bytes, golden_etag = download(http, sid, token, best["artifact_id"])
        if hashlib.sha256(golden_bytes).hexdigest() != golden_etag:
            raise fail(f"{sid}: resized golden of {region['name']} does not match its ETag")
        again = score(crop, decode(golden_bytes), region["method"])
        if again != region["score"]:
            raise fail(f"{sid}: {region['name']} scores {again}, recorded {region['score']}")
        verified += 1
    return verified


def close(http: httpx.Client, sid: str, token: str) -> dict[str, Any]:
    report = check(http.delete(f"/sessions/{sid}", headers=bearer(token)), 200, f"close {sid}")
    if not report["closed"]:
        raise fail(f"{sid} did not close: {report}")
    return dict(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("EPHEMERA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--admin-key", default=os.environ.get("EPHEMERA_ADMIN_KEY"))
    parser.add_argument(
        "--boards", type=int, default=3, help="boards to inspect (the last is defective)"
    )
    parser.add_argument(
        "--defect", default="u7", choices=sorted(COMPONENTS), help="the missing chip"
    )
    args = parser.parse_args()
    if not args.admin_key:
        raise fail("give --admin-key or EPHEMERA_ADMIN_KEY")
    if args.boards < 2:
        raise fail("--boards must be at least 2: a good board and a defective one")

    run = secrets.token_hex(3)  # one run's IDs never collide with another's on the same server
    library_sid = f"goldens-{run}"
    with httpx.Client(base_url=f"{args.server.rstrip('/')}/api/v1", timeout=60) as http:
        library_token, goldens = open_golden_library(http, args.admin_key, library_sid)
        library = (library_sid, library_token, goldens)
        boards: dict[str, dict[str, Any]] = {}
        try:
            for number in range(1, args.boards + 1):
                board_id = f"board-{run}-{number:04d}"
                defective = number == args.boards
                photo = render_board(
                    missing=args.defect if defective else None,
                    gain=0.9 + 0.05 * number,
                    noise_seed=number,
                )
                boards[board_id] = inspect_board(http, args.admin_key, board_id, photo, library)
                outcome = boards[board_id]
                wanted = [args.defect] if defective else []
                if outcome["failed_regions"] != wanted or outcome["passed"] != (not defective):
                    raise fail(
                        f"{board_id}: failed regions {outcome['failed_regions']}, expected {wanted}"
                    )
        finally:
            # A real station keeps its golden library for weeks; this run removes its own.
            close(http, library_sid, library_token)

    print(
        json.dumps(
            {
                "workflow": "inspection-station",
                "boards": len(boards),
                "passed": sorted(b for b, o in boards.items() if o["passed"]),
                "failed": {b: o["failed_regions"] for b, o in boards.items() if not o["passed"]},
                "crops_verified": sum(o["verified"] for o in boards.values()),
                "sessions_closed": len(boards) + 1,
            }
        )
    )


if __name__ == "__main__":
    main()
