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

FINISHED = ("succeeded", "failed", "cancelled")


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


def start_importer(server: str, sid: str, token: str, folder: Path) -> subprocess.Popen[str]:
    """``ephemera import --watch`` of the folder into the session, a catalog task per picture."""
    command = [
        sys.executable,
        "-m",
        "ephemera",
        "import",
        str(folder),
        "--session",
        sid,
        "--pattern",
        "*.jpg",
        "--watch",
        "--settle",
        "0.5",
        "--then",
        "image-catalog",
        "--params",
        json.dumps({"thumbnail_size": 128}),
        "--server",
        server,
        "--json",
    ]
    # The session's own token, from the environment: it opens this session and nothing else.
    env = {**os.environ, "EPHEMERA_TOKEN": token}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def stop_importer(importer: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGTERM: the importer finishes what is in flight and prints its JSON summary."""
    importer.send_signal(signal.SIGTERM)
    try:
        out, err = importer.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        importer.kill()
        importer.communicate()
        raise fail("ephemera import did not stop within 60 s of SIGTERM") from None
    if importer.returncode != 0:
        raise fail(f"ephemera import exited {importer.returncode}: {err.strip()}")
    summary: dict[str, Any] = json.loads(out)
    return summary


def wait_for_catalog(
    http: httpx.Client, sid: str, token: str, importer: subprocess.Popen[str], expected: int
) -> None:
    """Until the ledger holds every picture and each one's image-catalog task has finished."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if importer.poll() is not None:  # it stopped by itself: its stderr says why
            _, err = importer.communicate()
            raise fail(f"ephemera import stopped (exit {importer.returncode}): {err.strip()}")
        answer = http.get(f"/sessions/{sid}/imports", headers=bearer(token))
        entries = check(answer, 200, "list imports")["items"]
        task_ids = [e["task_id"] for e in entries if e.get("task_id")]
        if len(entries) == expected and len(task_ids) == expected:
            tasks = [
                check(http.get(f"/sessions/{sid}/tasks/{t}", headers=bearer(token)), 200, "task")
                for t in task_ids
            ]
            if all(t["state"] in FINISHED for t in tasks):
                failed = [t["error"] for t in tasks if t["state"] != "succeeded"]
                if failed:
                    raise fail(f"cataloguing failed: {failed}")
                return
        time.sleep(0.3)
    raise fail(f"{expected} pictures were not imported and catalogued within 120 s")


def find_duplicates(http: httpx.Client, sid: str, token: str) -> list[list[str]]:
    """One image-catalog task over the session's catalog entries groups the whole session;
    a group names the source pictures (their artifact IDs and names)."""
    answer = http.get(
        f"/sessions/{sid}/artifacts", params={"kind": "result"}, headers=bearer(token)
    )
    items = check(answer, 200, "list catalog entries")["items"]
    entries = [a["id"] for a in items if a["name"].endswith(".catalog.json")]
    body = {"processor": "image-catalog", "inputs": entries, "params": {}}
    task = check(
        http.post(f"/sessions/{sid}/tasks", json=body, headers=bearer(token)), 201, "group"
    )
    deadline = time.monotonic() + 60
    while task["state"] not in FINISHED:
        if time.monotonic() > deadline:
            raise fail("the grouping task did not finish within 60 s")
        time.sleep(0.3)
        answer = http.get(f"/sessions/{sid}/tasks/{task['id']}", headers=bearer(token))
        task = check(answer, 200, "group")
    if task["state"] != "succeeded":
        raise fail(f"grouping {task['state']}: {task['error']}")
    return [sorted(g["names"]) for g in task["result"]["groups"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("EPHEMERA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--admin-key", default=os.environ.get("EPHEMERA_ADMIN_KEY"))
    args = parser.parse_args()
    if not args.admin_key:
        raise fail("give --admin-key or EPHEMERA_ADMIN_KEY")

    server = args.server.rstrip("/")
    with httpx.Client(base_url=f"{server}/api/v1", timeout=60) as http:
        created = check(
            http.post("/sessions", json={"label": "photos"}, headers=bearer(args.admin_key)),
            201,
            "create the session",
        )
        sid, token = created["id"], created["token"]
        try:
            with tempfile.TemporaryDirectory() as folder:
                importer = start_importer(server, sid, token, Path(folder))
                try:
                    time.sleep(1)  # the importer is watching the (empty) folder
                    shows = write_pictures(Path(folder))
                    wait_for_catalog(http, sid, token, importer, len(shows))
                    groups = find_duplicates(http, sid, token)
                finally:
                    if importer.returncode is None:
                        summary = stop_importer(importer)
            if (summary["imported"], summary["failed"]) != (len(shows), 0):
                raise fail(f"imported {summary['imported']} of {len(shows)}: {summary['errors']}")
            if groups != [["beach-copy.jpg", "beach.jpg"]]:
                raise fail(f"duplicate groups {groups}; expected the two beach pictures alone")
        finally:
            closed = check(
                http.delete(f"/sessions/{sid}", params={"force": "true"}, headers=bearer(token)),
                200,
                "close",
            )

    print(
        json.dumps(
            {
                "workflow": "photo-library",
                "session": sid,
                "pictures": len(shows),
                "imported": summary["imported"],
                "catalog_tasks": len(summary["tasks"]),
                "groups": groups,
                "closed_artifacts": closed["artifact_count"],
            }
        )
    )


if __name__ == "__main__":
    main()
