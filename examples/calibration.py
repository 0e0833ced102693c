"""Recipe: camera calibration with a reset button.

A calibration tool (a desktop app beside a camera, a page in a setup wizard) collects views of
a printed chessboard, asks for the camera matrix and lens distortion, shows an undistorted
preview, and starts again from nothing when the operator presses "reset". Each camera's
attempt is one session named after the camera; reset closes it, and nothing of the attempt
remains: not on disk, not under the session's ID. See docs/recipes/calibration.md.

    python examples/calibration.py --server http://127.0.0.1:8000 --admin-key "$KEY" \
        [--data-dir ephemera-data]

The views are rendered here through a known camera (numpy, OpenCV: the ``vision`` extra),
so the script can check the answer. With ``--data-dir`` (the server's, on this machine) it
also checks that no file of the closed session is left there. It prints one line of JSON and
exits 0, or exits with a message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

import cv2
import httpx2 as httpx
import numpy as np

SIZE = (640, 480)
FOCAL = 600.0  # the camera the views are rendered through: fx = fy = FOCAL, centred
BOARD = {"columns": 9, "rows": 6}  # inner corners
SQUARE_MM = 25.0
VIEWS = 6


def fail(message: str) -> SystemExit:
    return SystemExit(f"calibration: {message}")


# -- views of a chessboard --------------------------------------------------------------------


def board_texture(pixels: int = 40) -> Any:
    """The printed board: (columns+1) x (rows+1) squares inside a white margin of one square."""
    squares_x, squares_y = BOARD["columns"] + 1, BOARD["rows"] + 1
    texture = np.full(((squares_y + 2) * pixels, (squares_x + 2) * pixels), 255, np.uint8)
    for j in range(squares_y):
        for i in range(squares_x):
            if (i + j) % 2 == 0:
                x, y = (i + 1) * pixels, (j + 1) * pixels
                texture[y : y + pixels, x : x + pixels] = 0
    return texture


def rotation(tilt_x: float, tilt_y: float, roll: float) -> Any:
    rx, _ = cv2.Rodrigues(np.array([tilt_x, 0.0, 0.0]))
    ry, _ = cv2.Rodrigues(np.array([0.0, tilt_y, 0.0]))
    rz, _ = cv2.Rodrigues(np.array([0.0, 0.0, roll]))
    return rz @ ry @ rx


def render_views(count: int, seed: int = 1) -> list[bytes]:
    """PNG views of the board in varied poses, anti-aliased (rendered at twice the size)."""
    texture = board_texture()
    pixels = texture.shape[1] / (BOARD["columns"] + 3)
    width, height = SIZE
    camera = np.array([[FOCAL, 0, width / 2], [0, FOCAL, height / 2], [0, 0, 1]])
    # Texture pixels to board units (squares), the first inner corner at the origin.
    to_board = np.array([[1 / pixels, 0, -2.0], [0, 1 / pixels, -2.0], [0, 0, 1]])
    twice = np.array([[2, 0, 0.5], [0, 2, 0.5], [0, 0, 1]])
    centre = np.array([(BOARD["columns"] - 1) / 2, (BOARD["rows"] - 1) / 2, 0.0])
    outline = np.array(
        [
            [-2, -2],
            [BOARD["columns"] + 1, -2],
            [BOARD["columns"] + 1, BOARD["rows"] + 1],
            [-2, BOARD["rows"] + 1],
        ],
        np.float64,
    )
    rng = np.random.default_rng(seed)
    views: list[bytes] = []
    while len(views) < count:
        signs = rng.choice([-1.0, 1.0], size=2)
        tilts = signs * rng.uniform(math.radians(10), math.radians(30), size=2)
        r = rotation(tilts[0], tilts[1], rng.uniform(math.radians(-15), math.radians(15)))
        distance = FOCAL * (BOARD["columns"] + 3) / (rng.uniform(0.45, 0.65) * width)
        t = np.array([rng.uniform(-2, 2), rng.uniform(-1.5, 1.5), distance]) - r @ centre
        board_to_image = camera @ np.column_stack([r[:, 0], r[:, 1], t])
        corners = _project(board_to_image, outline)
        if not (
            (corners >= 5).all()
            and (corners[:, 0] < width - 5).all()
            and (corners[:, 1] < height - 5).all()
        ):
            continue  # the whole board must be in the frame
        big = cv2.warpPerspective(
            texture,
            twice @ board_to_image @ to_board,
            (2 * width, 2 * height),
            flags=cv2.INTER_LINEAR,
            borderValue=110,
        )
        view = cv2.resize(big, SIZE, interpolation=cv2.INTER_AREA).astype(np.float64)
        view += rng.normal(0, 1.5, view.shape)
        views.append(png(np.clip(view, 0, 255).astype(np.uint8)))
    return views


def _project(homography: Any, points: Any) -> Any:
    flat = np.column_stack([points, np.ones(len(points))]) @ homography.T
    return flat[:, :2] / flat[:, 2:]


def png(image: Any) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise fail("could not encode a PNG")
    return bytes(encoded.tobytes())


# -- the API ----------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def check(response: httpx.Response, status: int, doing: str) -> Any:
    if response.status_code != status:
        raise fail(f"{doing}: expected {status}, got {response.status_code}: {response.text}")
    return response.json() if response.content else None


def start_attempt(http: httpx.Client, admin_key: str, sid: str) -> str:
    """A calibration attempt is one session, named after the camera; the answer holds its token."""
    body = {"id": sid, "label": "calibration", "metadata": {"camera": sid}, "idle_timeout_s": 3600}
    created = check(http.post("/sessions", json=body, headers=bearer(admin_key)), 201, "create")
    return str(created["token"])


def upload_views(http: httpx.Client, sid: str, token: str, views: list[bytes]) -> list[str]:
    ids = []
    for index, data in enumerate(views, 1):
        params = {
            "name": f"view-{index:02d}.png",
            "kind": "input",
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        answer = http.post(
            f"/sessions/{sid}/artifacts", params=params, content=data, headers=bearer(token)
        )
        ids.append(check(answer, 201, f"upload view {index}")["id"])
    return ids


def calibrate(http: httpx.Client, sid: str, token: str, view_ids: list[str]) -> dict[str, Any]:
    body = {
        "processor": "camera-calibration",
        "inputs": view_ids,
        "params": {"board": BOARD, "square_size": SQUARE_MM, "min_images": 3, "preview": True},
    }
    task = check(
        http.post(f"/sessions/{sid}/tasks", json=body, headers=bearer(token)), 201, "submit"
    )
    deadline = time.monotonic() + 120
    while task["state"] not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise fail(f"task {task['id']} did not finish within 120 s")
        time.sleep(0.2)
        task = check(
            http.get(f"/sessions/{sid}/tasks/{task['id']}", headers=bearer(token)), 200, "task"
        )
    if task["state"] != "succeeded":
        raise fail(f"calibration {task['state']}: {task['error']}")
    return dict(task)


def check_calibration(result: dict[str, Any], blank_name: str) -> None:
    """The camera the views were rendered through is the one found."""
    width, height = SIZE
    if abs(result["fx"] - FOCAL) > 0.03 * FOCAL or abs(result["fy"] - FOCAL) > 0.03 * FOCAL:
        raise fail(f"focal length {result['fx']:.1f}, {result['fy']:.1f}; the camera has {FOCAL}")
    if abs(result["cx"] - width / 2) > 15 or abs(result["cy"] - height / 2) > 15:
        raise fail(f"principal point {result['cx']:.1f}, {result['cy']:.1f}; expected the centre")
    if result["rms"] > 0.5:
        raise fail(f"reprojection error {result['rms']:.3f} px is too large")
    # A view without the board (the lens cap was on) is reported, not fatal.
    missed = [i["name"] for i in result["images"] if not i["found"]]
    if missed != [blank_name] or result["used"] != VIEWS:
        raise fail(f"views without the board: {missed}; used {result['used']} of {VIEWS + 1}")


def fetch_preview(http: httpx.Client, sid: str, token: str, task: dict[str, Any]) -> int:
    """The undistorted preview the operator looks at, checked against its ETag."""
    preview = task["result"]["preview"]
    if preview is None:
        raise fail("no preview was stored")
    answer = http.get(
        f"/sessions/{sid}/artifacts/{preview['artifact_id']}/content", headers=bearer(token)
    )
    if answer.status_code != 200:
        raise fail(f"download the preview: {answer.status_code} {answer.text}")
    if hashlib.sha256(answer.content).hexdigest() != answer.headers["etag"].strip('"'):
        raise fail("the preview's bytes do not match its ETag")
    image = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.shape[:2] != (SIZE[1], SIZE[0]):
        raise fail("the preview is not an image of the views' size")
    return len(answer.content)


def reset(
    http: httpx.Client, sid: str, token: str, stored: set[str], data_dir: Path | None
) -> dict[str, Any]:
    """Reset = close: when the answer comes, every byte and record of the attempt is gone."""
    report = check(http.delete(f"/sessions/{sid}", headers=bearer(token)), 200, "close")
    if not report["closed"] or report["artifact_count"] != len(stored):
        raise fail(f"close removed {report['artifact_count']} artifacts of {len(stored)}: {report}")
    # The old token opens nothing: the session answers 404 like one that never existed.
    gone = http.get(f"/sessions/{sid}", headers=bearer(token))
    if gone.status_code != 404:
        raise fail(f"the closed session answers {gone.status_code}, not 404")
    if data_dir is not None:
        # Blob files are named by session and artifact IDs: none may remain.
        names = {sid, *stored}
        left = [str(p) for p in data_dir.rglob("*") if names & set(p.parts)]
        if left:
            raise fail(f"files of the closed session remain: {left[:5]}")
    return dict(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("EPHEMERA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--admin-key", default=os.environ.get("EPHEMERA_ADMIN_KEY"))
    parser.add_argument(
        "--data-dir", type=Path, help="the server's data dir, to check nothing is left"
    )
    args = parser.parse_args()
    if not args.admin_key:
        raise fail("give --admin-key or EPHEMERA_ADMIN_KEY")
    if args.data_dir is not None and not (args.data_dir / "blobs").is_dir():
        raise fail(f"{args.data_dir} has no blobs folder: is it the server's data dir?")

    sid = f"cam-{secrets.token_hex(3)}"  # the camera's serial number, in a real tool
    views = render_views(VIEWS)
    blank = (
        np.random.default_rng(9).normal(110, 3, (SIZE[1], SIZE[0])).clip(0, 255).astype(np.uint8)
    )
    views.append(png(blank))
    blank_name = f"view-{len(views):02d}.png"
    with httpx.Client(base_url=f"{args.server.rstrip('/')}/api/v1", timeout=60) as http:
        token = start_attempt(http, args.admin_key, sid)
        try:
            view_ids = upload_views(http, sid, token, views)
            task = calibrate(http, sid, token, view_ids)
            check_calibration(task["result"], blank_name)
            preview_bytes = fetch_preview(http, sid, token, task)
            stored = {*view_ids, *(o["artifact_id"] for o in task["outputs"])}
            report = reset(http, sid, token, stored, args.data_dir)
            # Start again under the same ID: a new, empty session, nothing of the old one in it.
            token = start_attempt(http, args.admin_key, sid)
            again = check(http.get(f"/sessions/{sid}", headers=bearer(token)), 200, "reopen")
            if again["artifact_count"] != 0:
                raise fail(f"the new session under {sid} holds {again['artifact_count']} artifacts")
            reset(http, sid, token, set(), args.data_dir)
        except BaseException:
            # Whatever went wrong, the attempt leaves nothing behind (an admin key may force).
            http.delete(
                f"/sessions/{sid}", params={"force": "true"}, headers=bearer(args.admin_key)
            )
            raise

    result = task["result"]
    print(
        json.dumps(
            {
                "workflow": "calibration",
                "session": sid,
                "views": len(views),
                "used": result["used"],
                "fx": round(result["fx"], 2),
                "fy": round(result["fy"], 2),
                "rms": round(result["rms"], 4),
                "preview_bytes": preview_bytes,
                "closed_artifacts": report["artifact_count"],
                "disk_checked": args.data_dir is not None,
            }
        )
    )


if __name__ == "__main__":
    main()
