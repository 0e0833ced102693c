"""Recipe: a batch service with temporary inputs, retained results and previewed cleanup.

A batch service (a nightly conversion job, a report generator) receives input files, works
on them and publishes results. The inputs are worth nothing once the batch is done, so they
are uploaded as temporary: they expire on their own. The results must outlive that, so each is
retained until a date. The operator runs cleanup on a schedule and, before trusting it,
previews it with a dry run: the dry run names exactly what the real run then deletes. See
docs/recipes/batch-service.md.

    python examples/batch_service.py --server http://127.0.0.1:8000 --admin-key "$KEY"

The inputs here expire after one second (``expires_in_s=1``), so the script waits a moment
and then runs the cleanup operation ``expired`` itself, dry then real, as a cron job would.
Run it against a server of its own: on a shared one, other sessions' expired artifacts
appear in the reports too (the script only asserts its own are among them, and that dry and
real runs agree). It prints one line of JSON and exits 0, or exits with a message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx

INPUT_LIFE_S = 1  # seconds: long enough to process, short enough for the demonstration


def fail(message: str) -> SystemExit:
    return SystemExit(f"batch service: {message}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def check(response: httpx.Response, status: int, doing: str) -> Any:
    if response.status_code != status:
        raise fail(f"{doing}: expected {status}, got {response.status_code}: {response.text}")
    return response.json() if response.content else None


def make_inputs(count: int) -> dict[str, bytes]:
    """The batch: CSV files of readings (generated here; a real service receives them)."""
    inputs = {}
    for index in range(1, count + 1):
        rows = [f"{t},{(t * 37 + index * 11) % 100}" for t in range(200 * index)]
        inputs[f"readings-{index:02d}.csv"] = ("t,value\n" + "\n".join(rows) + "\n").encode()
    return inputs


def process(data: bytes) -> bytes:
    """The service's own work: a summary of one input."""
    values = [int(line.split(b",")[1]) for line in data.splitlines()[1:]]
    summary = {"count": len(values), "mean": sum(values) / len(values), "max": max(values)}
    return json.dumps(summary, sort_keys=True).encode()


def upload(
    http: httpx.Client, sid: str, token: str, name: str, data: bytes, **params: Any
) -> dict[str, Any]:
    query = {"name": name, "sha256": hashlib.sha256(data).hexdigest(), **params}
    answer = http.post(
        f"/sessions/{sid}/artifacts", params=query, content=data, headers=bearer(token)
    )
    return dict(check(answer, 201, f"upload {name}"))


def run_batch(
    http: httpx.Client, sid: str, token: str, count: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs in as temporary; results out, each retained for a week."""
    inputs, results = [], []
    retain_until = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    for name, data in make_inputs(count).items():
        # expires_in_s makes the artifact temporary: it expires even while the session lives.
        inputs.append(upload(http, sid, token, name, data, kind="input", expires_in_s=INPUT_LIFE_S))
        result = upload(
            http,
            sid,
            token,
            name.replace(".csv", ".summary.json"),
            process(data),
            kind="result",
            storage="temporary",
            expires_in_s=INPUT_LIFE_S,
        )
        # The results expire just as soon, but retention keeps them past expiry (and past the
        # result retention) until the date given: only closing the session removes them sooner.
        retained = http.put(
            f"/sessions/{sid}/artifacts/{result['id']}/retention",
            json={"retain_until": retain_until},
            headers=bearer(token),
        )
        results.append(check(retained, 200, f"retain {result['name']}"))
    return inputs, results


def cleanup(http: httpx.Client, admin_key: str, dry_run: bool) -> dict[str, Any]:
    """What `ephemera cleanup expired [--dry-run] --details` does, over HTTP."""
    params = {"dry_run": str(dry_run).lower(), "details": "true"}
    answer = http.post("/admin/cleanup/expired", params=params, headers=bearer(admin_key))
    return dict(check(answer, 200, f"cleanup expired (dry run: {dry_run})"))


def compare_runs(
    dry: dict[str, Any],
    real: dict[str, Any],
    inputs: list[dict[str, Any]],
    results: list[dict[str, Any]],
) -> None:
    """The dry run's promise: the same items, counts and bytes as the real run."""
    dry_items = {(i["id"], i["size"], i["rule"]) for i in dry["items"]}
    real_items = {(i["id"], i["size"], i["rule"]) for i in real["items"]}
    if dry_items != real_items:
        raise fail(
            f"the dry run named {sorted(dry_items)}, the real run deleted {sorted(real_items)}"
        )
    for key in ("deleted_count", "deleted_size_bytes"):
        if dry[key] != real[key]:
            raise fail(f"{key}: dry run {dry[key]}, real run {real[key]}")
    deleted = {i["id"] for i in real["items"]}
    missing = {a["id"] for a in inputs} - deleted
    if missing:
        raise fail(f"expired inputs not deleted: {sorted(missing)}")
    taken = {a["id"] for a in results} & deleted
    if taken:
        raise fail(f"retained results were deleted: {sorted(taken)}")


def check_after(
    http: httpx.Client,
    sid: str,
    token: str,
    inputs: list[dict[str, Any]],
    results: list[dict[str, Any]],
) -> None:
    for artifact in inputs:
        gone = http.get(f"/sessions/{sid}/artifacts/{artifact['id']}", headers=bearer(token))
        if gone.status_code != 404:
            raise fail(f"input {artifact['name']} answers {gone.status_code} after cleanup")
    for artifact in results:
        answer = http.get(
            f"/sessions/{sid}/artifacts/{artifact['id']}/content", headers=bearer(token)
        )
        if (
            answer.status_code != 200
            or hashlib.sha256(answer.content).hexdigest() != artifact["sha256"]
        ):
            raise fail(f"result {artifact['name']} did not survive intact: {answer.status_code}")


def check_audit(
    http: httpx.Client, admin_key: str, dry: dict[str, Any], real: dict[str, Any]
) -> int:
    """Both runs are in the audit log, with who ran them and their totals."""
    answer = http.get(
        "/admin/audit", params={"action": "cleanup.expired", "limit": 20}, headers=bearer(admin_key)
    )
    entries = check(answer, 200, "read the audit log")["items"]
    runs = {e["params"].get("dry_run"): e for e in entries[:2]}  # newest first: ours
    for dry_run, report in ((True, dry), (False, real)):
        entry = runs.get(dry_run)
        if entry is None or entry["result"]["deleted_count"] != report["deleted_count"]:
            raise fail(f"no audit entry for the {'dry' if dry_run else 'real'} run: {entries[:2]}")
        if not entry["actor"].startswith("admin:"):
            raise fail(f"the audit entry names {entry['actor']}, not the admin key")
    return len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("EPHEMERA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--admin-key", default=os.environ.get("EPHEMERA_ADMIN_KEY"))
    parser.add_argument("--inputs", type=int, default=5, help="files in the batch")
    parser.add_argument(
        "--wait",
        type=float,
        default=INPUT_LIFE_S + 0.5,
        help="seconds between the uploads and the dry run (long enough for the inputs to expire)",
    )
    args = parser.parse_args()
    if not args.admin_key:
        raise fail("give --admin-key or EPHEMERA_ADMIN_KEY")

    sid = f"batch-{secrets.token_hex(3)}"
    with httpx.Client(base_url=f"{args.server.rstrip('/')}/api/v1", timeout=60) as http:
        body = {"id": sid, "label": "nightly batch"}
        token = check(
            http.post("/sessions", json=body, headers=bearer(args.admin_key)), 201, "create"
        )["token"]
        try:
            inputs, results = run_batch(http, sid, token, args.inputs)
            time.sleep(args.wait)  # the inputs (and, but for retention, results) expire
            dry = cleanup(http, args.admin_key, dry_run=True)
            real = cleanup(http, args.admin_key, dry_run=False)
            compare_runs(dry, real, inputs, results)
            check_after(http, sid, token, inputs, results)
            audited = check_audit(http, args.admin_key, dry, real)
        except BaseException:
            http.delete(
                f"/sessions/{sid}", params={"force": "true"}, headers=bearer(args.admin_key)
            )
            raise

        # The batch is published elsewhere; closing the session removes the results too.
        closed = check(http.delete(f"/sessions/{sid}", headers=bearer(token)), 200, "close")
        if closed["artifact_count"] != len(results):
            raise fail(
                f"closing removed {closed['artifact_count']} artifacts, expected {len(results)}"
            )

    print(
        json.dumps(
            {
                "workflow": "batch-service",
                "session": sid,
                "inputs": len(inputs),
                "results_retained": len(results),
                "dry_run": {"count": dry["deleted_count"], "bytes": dry["deleted_size_bytes"]},
                "real_run": {"count": real["deleted_count"], "bytes": real["deleted_size_bytes"]},
                "input_bytes": sum(a["size"] for a in inputs),
                "audited_runs": audited,
                "closed_artifacts": closed["artifact_count"],
            }
        )
    )


if __name__ == "__main__":
    main()
