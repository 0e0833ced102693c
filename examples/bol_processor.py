"""Recipe: a bill-of-lading processor working under its callers' job IDs, several at once.

For each job: clear any session under the caller's ID, create it with that ID, upload a form
template and the shipments CSV, fill one BOL per row (``pdf-form-fill``), extract them
(``pdf-extract``), reconcile them against the CSV (``bol-reconcile``), download the report and
close. Jobs run concurrently; each must see its own documents only. See
docs/recipes/bol-processor.md.

    python examples/bol_processor.py --server http://127.0.0.1:8000 --admin-key "$KEY" [--jobs 3]

The template is built here with reportlab (a test dependency; pypdf and pdfplumber are the
``documents`` extra's). One row of each job's CSV is changed after filling, so the
reconciliation must report exactly that one mismatch. Prints one line of JSON, or exits with
a message.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx
from reportlab.pdfgen import canvas

FIELDS = ["bol_number", "consignee", "weight_kg"]


def fail(message: str) -> SystemExit:
    return SystemExit(f"bol processor: {message}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def check(response: httpx.Response, status: int, doing: str) -> Any:
    if response.status_code != status:
        raise fail(f"{doing}: expected {status}, got {response.status_code}: {response.text}")
    return response.json() if response.content else None


def template_pdf() -> bytes:
    """A one-page AcroForm with a labelled text field per column."""
    out = io.BytesIO()
    page = canvas.Canvas(out, invariant=True)
    page.drawString(72, 780, "BILL OF LADING")
    for index, name in enumerate(FIELDS):
        y = 720 - 40 * index
        page.drawString(72, y + 6, name.replace("_", " ").title() + ":")
        page.acroForm.textfield(name=name, x=200, y=y, width=250, height=20, borderWidth=0)
    page.save()
    return out.getvalue()


def shipments_csv(job: str, rows: int) -> list[dict[str, str]]:
    return [
        {"bol_number": f"{job}-{n:03d}", "consignee": f"Depot {n}", "weight_kg": str(100 + n)}
        for n in range(1, rows + 1)
    ]


def as_csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def upload(http: httpx.Client, sid: str, token: str, name: str, data: bytes, kind: str) -> str:
    params = {"name": name, "kind": kind, "sha256": hashlib.sha256(data).hexdigest()}
    answer = http.post(
        f"/sessions/{sid}/artifacts", params=params, content=data, headers=bearer(token)
    )
    return str(check(answer, 201, f"upload {name}")["id"])


def run_task(
    http: httpx.Client, sid: str, token: str, processor: str, inputs: list[str], params: Any
) -> dict[str, Any]:
    body = {"processor": processor, "inputs": inputs, "params": params}
    task = check(
        http.post(f"/sessions/{sid}/tasks", json=body, headers=bearer(token)), 201, processor
    )
    deadline = time.monotonic() + 120
    while task["state"] not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise fail(f"{sid}: {processor} did not finish within 120 s")
        time.sleep(0.2)
        answer = http.get(f"/sessions/{sid}/tasks/{task['id']}", headers=bearer(token))
        task = check(answer, 200, processor)
    if task["state"] != "succeeded":
        raise fail(f"{sid}: {processor} {task['state']}: {task['error']}")
    return dict(task)


def process_job(server: str, admin_key: str, job: str, rows: int) -> dict[str, Any]:
    """One caller's job, start to end, on its own connection."""
    with httpx.Client(base_url=f"{server}/api/v1", timeout=60) as http:
        # Clear: whatever a previous attempt under this ID left goes first (404: nothing).
        cleared = http.delete(
            f"/sessions/{job}", params={"force": "true"}, headers=bearer(admin_key)
        )
        if cleared.status_code not in (200, 404):
            raise fail(f"clear {job}: {cleared.status_code} {cleared.text}")
        created = check(
            http.post("/sessions", json={"id": job, "label": "bol"}, headers=bearer(admin_key)),
            201,
            f"create {job}",
        )
        token = created["token"]
        try:
            expected = shipments_csv(job, rows)
            template = upload(http, job, token, "template.pdf", template_pdf(), "template")
            filled_rows = upload(http, job, token, "shipments.csv", as_csv(expected), "input")
            fill = run_task(
                http,
                job,
                token,
                "pdf-form-fill",
                [template, filled_rows],
                {"template": template, "rows": filled_rows, "flatten": True},
            )
            pdfs = [o["artifact_id"] for o in fill["outputs"] if o["name"].endswith(".pdf")]
            if len(pdfs) != rows:
                raise fail(f"{job}: {len(pdfs)} PDFs filled from {rows} rows")
            extract = run_task(http, job, token, "pdf-extract", pdfs, {"tables": False})
            extracted = [
                o["artifact_id"] for o in extract["outputs"] if o["name"].endswith(".extract.json")
            ]
            # The shipper corrects one weight after the BOLs were printed: one mismatch.
            expected[0]["weight_kg"] = "999"
            corrected = upload(http, job, token, "expected.csv", as_csv(expected), "input")
            reconcile = run_task(
                http,
                job,
                token,
                "bol-reconcile",
                [corrected, *extracted],
                {"expected": corrected, "key_column": "bol_number"},
            )
            report_id = next(
                o["artifact_id"] for o in reconcile["outputs"] if o["name"] == "reconcile.json"
            )
            answer = http.get(
                f"/sessions/{job}/artifacts/{report_id}/content", headers=bearer(token)
            )
            if hashlib.sha256(answer.content).hexdigest() != answer.headers["etag"].strip('"'):
                raise fail(f"{job}: the report does not match its ETag")
            report = answer.json()
            mismatches = [
                (d["key"], field)
                for d in report["documents"]
                for field, value in d["fields"].items()
                if value["status"] != "match"
            ]
            # Another job's keys in this report would be cross-contamination.
            foreign = [d["key"] for d in report["documents"] if not d["key"].startswith(job)]
            if foreign or mismatches != [(f"{job}-001", "weight_kg")]:
                raise fail(f"{job}: mismatches {mismatches}, foreign documents {foreign}")
        finally:
            closed = http.delete(
                f"/sessions/{job}", params={"force": "true"}, headers=bearer(token)
            )
            check(closed, 200, f"close {job}")
    return {"documents": len(pdfs), "mismatches": len(mismatches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("EPHEMERA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--admin-key", default=os.environ.get("EPHEMERA_ADMIN_KEY"))
    parser.add_argument("--jobs", type=int, default=3, help="jobs run at once")
    parser.add_argument("--rows", type=int, default=5, help="shipments per job")
    args = parser.parse_args()
    if not args.admin_key:
        raise fail("give --admin-key or EPHEMERA_ADMIN_KEY")

    run = secrets.token_hex(3)
    jobs = [f"job-{run}-{n}" for n in range(1, args.jobs + 1)]  # the callers' IDs
    server = args.server.rstrip("/")
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {j: pool.submit(process_job, server, args.admin_key, j, args.rows) for j in jobs}
        outcomes = {job: future.result() for job, future in futures.items()}
    print(json.dumps({"workflow": "bol-processor", "jobs": outcomes}))


if __name__ == "__main__":
    main()
