"""Recipe: a photo library fed from a watched folder, catalogued, duplicates found.

``ephemera import --watch`` takes every picture of a folder into a session, each exactly once,
and submits an ``image-catalog`` task per picture; one more ``image-catalog`` task over the
session's catalog entries groups near-duplicates. See docs/recipes/photo-library.md.

    python examples/photo_library.py --server http://127.0.0.1:8000 --admin-key "$KEY"

The pictures are rendered here (numpy, OpenCV): two re-encodings of one picture and a
different picture; the duplicates must share a group and the other must not. Prints one line
of JSON, or exits with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import httpx2 as httpx
import numpy as np


def fail(message: str) -> SystemExit:
    return SystemExit(f"photo library: {message}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def check(response: httpx.Response, status: int, doing: str) -> Any:
    if response.status_code != status:
        raise fail(f"{doing}: expected {status}, got {response.status_code}: {response.text}")
    return response.json() if response.content else None


def picture(seed: int) -> Any:
    """Gradients and shapes, so perceptual hashes have something to hold on to."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:360, 0:480]
    image = np.dstack([x * 255 // 480, y * 255 // 360, (x + y) * 255 // 840]).astype(np.uint8)
    for _ in range(8):
        centre = (int(rng.integers(0, 480)), int(rng.integers(0, 360)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, centre, int(rng.integers(20, 90)), colour, -1)
    return image


def write_pictures(folder: Path) -> dict[str, str]:
    """File name -> which picture it shows."""
    same, other = picture(1), picture(2)
    files = {
        "beach.jpg": (same, [cv2.IMWRITE_JPEG_QUALITY, 95], "beach"),
        "beach-copy.jpg": (same, [cv2.IMWRITE_JPEG_QUALITY, 70], "beach"),
        "forest.jpg": (other, [cv2.IMWRITE_JPEG_QUALITY, 90], "forest"),
    }
    for name, (image, params, _) in files.items():
        cv2.imwrite(str(folder / name), image, params)
    return {name: shows for name, (_, _, shows) in files.items()}


def import_folder(server: str, admin_key: str, folder: Path, expected: int) -> dict[str, Any]:
    """Run the importer in watch mode until every picture is in, then stop it (SIGINT)."""
    command = [
        sys.executable,
        "-m",
        "ephemera",
        "import",
        str(folder),
        "--new-session",
        "--label",
        "photos",
        "--pattern",
        "*.jpg",
        "--watch",
        "--then",
        "image-catalog",
        "--params",
        json.dumps({"thumbnail_size": 128}),
        "--server",
        server,
        "--token",
        admin_key,
        "--json",
    ]
    importer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(5)  # the initial scan; a real library keeps the importer running
    finally:
        importer.send_signal(signal.SIGINT)
        out, err = importer.communicate(timeout=60)
    if importer.returncode != 0:
        raise fail(f"ephemera import exited {importer.returncode}: {err.strip()}")
    summary: dict[str, Any] = json.loads(out)
    if summary["imported"] != expected or summary["failed"]:
        raise fail(f"imported {summary['imported']} of {expected}: {summary['errors']}")
    return summary


def wait_for_tasks(http: httpx.Client, sid: str, token: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = http.get(f"/sessions/{sid}/tasks", headers=bearer(token))
        tasks = check(answer, 200, "list tasks")["items"]
        if tasks and all(t["state"] in ("succeeded", "failed", "cancelled") for t in tasks):
            failed = [t["error"] for t in tasks if t["state"] != "succeeded"]
            if failed:
                raise fail(f"cataloguing failed: {failed}")
            return
        time.sleep(0.3)
    raise fail("the catalog tasks did not finish within 120 s")


def find_duplicates(http: httpx.Client, sid: str, token: str) -> list[list[str]]:
    """One image-catalog task over the session's catalog entries groups the whole session."""
    answer = http.get(
        f"/sessions/{sid}/artifacts", params={"kind": "catalog"}, headers=bearer(token)
    )
    entries = [a["id"] for a in check(answer, 200, "list catalog")["items"]]
    body = {"processor": "image-catalog", "inputs": entries, "params": {}}
    task = check(
        http.post(f"/sessions/{sid}/tasks", json=body, headers=bearer(token)), 201, "group"
    )
    while task["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.3)
        answer = http.get(f"/sessions/{sid}/tasks/{task['id']}", headers=bearer(token))
        task = check(answer, 200, "group")
    if task["state"] != "succeeded":
        raise fail(f"grouping {task['state']}: {task['error']}")
    return [list(g["artifact_ids"]) for g in task["result"]["groups"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("EPHEMERA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--admin-key", default=os.environ.get("EPHEMERA_ADMIN_KEY"))
    args = parser.parse_args()
    if not args.admin_key:
        raise fail("give --admin-key or EPHEMERA_ADMIN_KEY")

    server = args.server.rstrip("/")
    with tempfile.TemporaryDirectory() as folder:
        shows = write_pictures(Path(folder))
        summary = import_folder(server, args.admin_key, Path(folder), len(shows))
    sid, token = summary["session_id"], summary["token"]
    with httpx.Client(base_url=f"{server}/api/v1", timeout=60) as http:
        try:
            wait_for_tasks(http, sid, token)
            groups = find_duplicates(http, sid, token)
            answer = http.get(
                f"/sessions/{sid}/artifacts", params={"kind": "input"}, headers=bearer(token)
            )
            names = {a["id"]: a["name"] for a in check(answer, 200, "list pictures")["items"]}
            named = [sorted(names.get(i, i) for i in group) for group in groups]
            if named != [["beach-copy.jpg", "beach.jpg"]]:
                raise fail(f"duplicate groups {named}; expected the two beach pictures alone")
        finally:
            check(
                http.delete(f"/sessions/{sid}", params={"force": "true"}, headers=bearer(token)),
                200,
                "close",
            )

    print(json.dumps({"workflow": "photo-library", "pictures": len(shows), "groups": named}))


if __name__ == "__main__":
    main()
