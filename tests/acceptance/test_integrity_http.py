"""Verification's faces: POST /admin/verify, `ephemera verify`, downloads of flagged artifacts,
and the scrub inside a real `ephemera serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from ephemera import Settings, Store
from ephemera.http import create_app
from ephemera.testing import ManualClock
from tests.conftest import Server, bearer, database_dump, snapshot

API = "/api/v1"


@pytest.fixture
def admin_store(data_dir: Path, clock: ManualClock) -> Iterator[Store]:
    with Store.open(Settings(data_dir=data_dir), clock=clock) as store:
        yield store


@pytest.fixture
def client(admin_store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(admin_store)) as test_client:
        yield test_client


@pytest.fixture
def admin(admin_store: Store) -> dict[str, str]:
    return bearer(admin_store.create_key("ops"))


def blob_path(data_dir: Path, sid: str, aid: str) -> Path:
    return data_dir / "blobs" / "sessions" / sid / aid


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x80
    path.write_bytes(bytes(data))


def populate(http: Any, admin: dict[str, str]) -> tuple[str, dict[str, str], dict[str, str]]:
    """A session with good.bin, corrupt.bin and missing.bin; returns (sid, auth, ids by name)."""
    created = http.post(f"{API}/sessions", json={}, headers=admin).json()
    sid, auth = created["id"], bearer(created["token"])
    ids = {}
    for name in ("good.bin", "corrupt.bin", "missing.bin"):
        response = http.post(
            f"{API}/sessions/{sid}/artifacts",
            params={"name": name},
            content=name.encode() * 1000,
            headers=auth,
        )
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]
    return sid, auth, ids


def damage(data_dir: Path, sid: str, ids: dict[str, str]) -> None:
    flip_a_byte(blob_path(data_dir, sid, ids["corrupt.bin"]))
    blob_path(data_dir, sid, ids["missing.bin"]).unlink()


def test_admin_verify_reports_flags_and_downloads_refuse_the_flagged(
    client: TestClient, admin: dict[str, str], data_dir: Path
) -> None:
    sid, auth, ids = populate(client, admin)
    corrupt_url = f"{API}/sessions/{sid}/artifacts/{ids['corrupt.bin']}"
    etag = client.get(f"{corrupt_url}/content", headers=auth).headers["etag"]
    damage(data_dir, sid, ids)

    response = client.post(f"{API}/admin/verify", headers=admin)

    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["checked_count"], report["missing_count"], report["corrupt_count"]) == (3, 1, 1)
    assert {(p["name"], p["integrity"]) for p in report["problems"]} == {
        ("corrupt.bin", "corrupt"),
        ("missing.bin", "missing"),
    }
    for name, integrity in (("corrupt.bin", "corrupt"), ("missing.bin", "missing")):
        url = f"{API}/sessions/{sid}/artifacts/{ids[name]}"
        assert client.get(url, headers=auth).json()["integrity"] == integrity
        for headers in ({}, {"If-None-Match": etag}, {"Range": "bytes=0-9"}):
            got = client.get(f"{url}/content", headers={**auth, **headers})
            assert got.status_code == 500
            assert "etag" not in got.headers
            assert got.json()["error"]["code"] == "artifact_corrupt"
            assert integrity in got.json()["error"]["message"]
    good = client.get(f"{API}/sessions/{sid}/artifacts/{ids['good.bin']}/content", headers=auth)
    assert good.status_code == 200
    assert good.content == b"good.bin" * 1000


def test_stats_and_metrics_count_flagged_artifacts(
    client: TestClient, admin: dict[str, str], data_dir: Path
) -> None:
    sid, _, ids = populate(client, admin)
    damage(data_dir, sid, ids)
    client.post(f"{API}/admin/verify", headers=admin)

    stats = client.get(f"{API}/admin/cleanup/stats", headers=admin).json()["integrity"]
    assert (stats["corrupt"], stats["missing"]) == (1, 1)
    assert stats["last_run"]["actor"] == "admin:ops"
    metrics = client.get("/metrics", headers=admin).text
    assert 'ephemera_artifacts_flagged{integrity="corrupt"} 1.0' in metrics
    assert 'ephemera_artifacts_flagged{integrity="missing"} 1.0' in metrics
    assert 'ephemera_verify_items_total{outcome="missing"} 1.0' in metrics


def test_admin_verify_can_drop_what_it_finds(
    client: TestClient, admin: dict[str, str], data_dir: Path
) -> None:
    sid, auth, ids = populate(client, admin)
    damage(data_dir, sid, ids)
    report = client.post(f"{API}/admin/verify?repair=drop&session_id={sid}", headers=admin).json()
    assert report["repaired_count"] == 2
    listed = client.get(f"{API}/sessions/{sid}/artifacts", headers=auth).json()["items"]
    assert [a["name"] for a in listed] == ["good.bin"]
    assert not blob_path(data_dir, sid, ids["corrupt.bin"]).exists()


@pytest.mark.parametrize(
    "query",
    [
        "rate_mb_s=-1",
        "rate_mb_s=0",
        "rate_mb_s=nan",
        "rate_mb_s=inf",
        "rate_mb_s=fast",
        "rate_mb_s=1e9",
        "session_id=..%2F..%2Fetc",
        "session_id=" + "a" * 65,
        "session_id=%00",
        "session_id=a%20b",
        "repair=shred",
        "repair=",
    ],
)
def test_bad_verify_parameters_are_refused_and_change_nothing(
    client: TestClient, admin_store: Store, admin: dict[str, str], data_dir: Path, query: str
) -> None:
    sid, _, ids = populate(client, admin)
    damage(data_dir, sid, ids)
    before, rows = snapshot(admin_store), database_dump(admin_store)
    response = client.post(f"{API}/admin/verify?{query}", headers=admin)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert snapshot(admin_store) == before
    assert database_dump(admin_store) == rows


def test_verify_of_an_unknown_session_is_404_and_changes_nothing(
    client: TestClient, admin_store: Store, admin: dict[str, str]
) -> None:
    # The key's first use is recorded (last_used_at); that is not what this test is about.
    assert client.get(f"{API}/admin/audit", headers=admin).status_code == 200
    rows = database_dump(admin_store)
    response = client.post(f"{API}/admin/verify?session_id=nobody", headers=admin)
    assert response.status_code == 404
    assert database_dump(admin_store) == rows


def test_verify_takes_an_admin_key_and_is_rate_limited(data_dir: Path, clock: ManualClock) -> None:
    settings = Settings(data_dir=data_dir, cleanup_requests_per_minute=2)
    with Store.open(settings, clock=clock) as store, TestClient(create_app(store)) as client:
        admin = bearer(store.create_key("ops"))
        session = client.post(f"{API}/sessions", json={}, headers=admin).json()
        rows = database_dump(store)
        assert client.post(f"{API}/admin/verify").status_code == 401
        token = bearer(session["token"])
        assert client.post(f"{API}/admin/verify", headers=token).status_code == 403
        assert database_dump(store) == rows
        assert client.post(f"{API}/admin/verify", headers=admin).status_code == 200
        assert client.post(f"{API}/admin/verify", headers=admin).status_code == 200
        limited = client.post(f"{API}/admin/verify", headers=admin)
        assert limited.status_code == 429
        assert "retry-after" in limited.headers
        assert len(store.audit_log(action="verify").items) == 2


def test_a_task_worker_cannot_download_a_flagged_input(data_dir: Path, clock: ManualClock) -> None:
    settings = Settings(data_dir=data_dir, external_processors=["external"])
    with Store.open(settings, clock=clock) as store, TestClient(create_app(store)) as client:
        admin = bearer(store.create_key("ops"))
        sid, _, ids = populate(client, admin)
        task = store.submit_task(sid, "external", [ids["corrupt.bin"]])
        damage(data_dir, sid, ids)
        store.verify()
        worker = bearer(store.create_key("w", "worker"))
        claimed = client.post(
            f"{API}/worker/claim", json={"worker": "w1", "processors": ["external"]}, headers=worker
        )
        assert claimed.status_code == 200, claimed.text
        claim = claimed.json()
        assert claim["task"]["id"] == task.id
        got = client.get(
            f"{API}/worker/tasks/{task.id}/inputs/{ids['corrupt.bin']}/content",
            headers={**worker, "Ephemera-Claim": claim["claim_id"]},
        )
        assert got.status_code == 500
        assert got.json()["error"]["code"] == "artifact_corrupt"


def test_a_download_of_a_vanished_file_flags_it_missing(
    client: TestClient, admin: dict[str, str], data_dir: Path
) -> None:
    sid, auth, ids = populate(client, admin)
    blob_path(data_dir, sid, ids["missing.bin"]).unlink()
    url = f"{API}/sessions/{sid}/artifacts/{ids['missing.bin']}"
    got = client.get(f"{url}/content", headers=auth)
    assert got.status_code == 500
    assert got.json()["error"]["code"] == "artifact_corrupt"
    assert client.get(url, headers=auth).json()["integrity"] == "missing"


@pytest.mark.parametrize("whole", ["bytes=0-", "bytes=0-7999", "bytes=0-99999", "bytes=-8000"])
def test_a_range_of_the_whole_body_is_verified_like_a_full_download(
    admin_store: Store, admin: dict[str, str], data_dir: Path, whole: str
) -> None:
    with TestClient(create_app(admin_store), raise_server_exceptions=False) as client:
        sid, auth, ids = populate(client, admin)
        url = f"{API}/sessions/{sid}/artifacts/{ids['good.bin']}"
        intact = client.get(f"{url}/content", headers={**auth, "Range": whole})
        assert intact.status_code == 206
        assert intact.headers["content-range"] == "bytes 0-7999/8000"
        assert intact.content == b"good.bin" * 1000
        flip_a_byte(blob_path(data_dir, sid, ids["good.bin"]))

        # Cut before the last chunk: the server fails the response, the client never has it all.
        cut = client.get(f"{url}/content", headers={**auth, "Range": whole})
        assert len(cut.content) < 8000

        assert client.get(url, headers=auth).json()["integrity"] == "corrupt"
        refused = client.get(f"{url}/content", headers={**auth, "Range": whole})
        assert refused.status_code == 500
        assert "etag" not in refused.headers


# -- the command line and the real server -------------------------------------------------


def ephemera(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ephemera", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.slow
def test_flip_a_byte_and_delete_a_file_verify_exits_non_zero_naming_both(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        sid, auth, ids = populate(http, server.admin())
        content = f"{API}/sessions/{sid}/artifacts/{ids['corrupt.bin']}/content"
        etag = http.get(content, headers=auth).headers["etag"]
        damage(server.data_dir, sid, ids)

        run = ephemera("verify", data_dir=server.data_dir)

        assert run.returncode == 1, run.stdout + run.stderr
        assert "1 missing, 1 corrupt" in run.stdout
        assert f"corrupt {sid}/{ids['corrupt.bin']} (corrupt.bin): sha256 " in run.stderr
        assert "recorded; flagged" in run.stderr
        assert (
            f"missing {sid}/{ids['missing.bin']} (missing.bin): no stored bytes; flagged"
            in run.stderr
        )
        assert "good.bin" not in run.stderr
        refused = http.get(content, headers=auth)
        assert refused.status_code != 200
        assert refused.headers.get("etag") != etag
        assert http.get(content, headers={**auth, "If-None-Match": etag}).status_code == 500
        stats = http.get(f"{API}/admin/cleanup/stats", headers=server.admin()).json()
        assert (stats["integrity"]["corrupt"], stats["integrity"]["missing"]) == (1, 1)
        metrics = http.get("/metrics", headers=server.admin()).text
        assert 'ephemera_artifacts_flagged{integrity="corrupt"} 1.0' in metrics

    stats = ephemera("stats", data_dir=server.data_dir)
    lines = stats.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "never verified" in line)
    corrupt, missing = (cell.strip() for cell in lines[header + 2].split("│")[1:3])
    assert (corrupt, missing) == ("1", "1"), stats.stdout
    as_json = ephemera("verify", "--json", "--session", sid, data_dir=server.data_dir)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert (report["missing_count"], report["corrupt_count"]) == (1, 1)


def read_into(http: httpx.Client, url: str, headers: dict[str, str], into: bytearray) -> None:
    with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            into += chunk


@pytest.mark.slow
def test_a_full_download_of_corrupt_bytes_is_cut_before_its_end_and_then_refused(
    server: Server,
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        created = http.post(f"{API}/sessions", json={}, headers=server.admin()).json()
        sid, auth = created["id"], bearer(created["token"])
        data = bytes(range(256)) * 16 * 1024  # 4 MiB: several chunks
        artifact = http.post(
            f"{API}/sessions/{sid}/artifacts",
            params={"name": "big.bin"},
            content=data,
            headers=auth,
        ).json()
        flip_a_byte(blob_path(server.data_dir, sid, artifact["id"]))
        url = f"{API}/sessions/{sid}/artifacts/{artifact['id']}/content"

        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            read_into(http, url, auth, received)
        assert 0 < len(received) < len(data)

        refused = http.get(url, headers=auth)
        assert refused.status_code == 500
        assert refused.json()["error"]["code"] == "artifact_corrupt"
        meta = http.get(f"{API}/sessions/{sid}/artifacts/{artifact['id']}", headers=auth).json()
        assert meta["integrity"] == "corrupt"


@pytest.mark.slow
def test_verify_exits_zero_when_everything_hashes_right(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        populate(http, server.admin())
    run = ephemera("verify", "--rate", "50", data_dir=server.data_dir)
    assert run.returncode == 0, run.stderr
    assert "verified 3 artifacts" in run.stdout
    assert "0 missing, 0 corrupt" in run.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        # 2: bad flags (1 would read as "corruption found"); 1: the session is not found.
        (("--rate", "-1"), 2, "rate"),
        (("--rate", "0"), 2, "rate"),
        (("--rate", "nan"), 2, "rate"),
        (("--session", "../../etc/passwd"), 2, "invalid session ID"),
        (("--session", "bad id!"), 2, "invalid session ID"),
        (("--session", "nobody"), 1, "not found"),
        (("--repair", "shred"), 2, "shred"),
    ],
)
def test_bad_verify_flags_are_refused_and_change_nothing(
    data_dir: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    with Store.open(Settings(data_dir=data_dir)) as store:
        sid = store.create_session().session.id
        store.put_artifact(sid, b"x" * 10, name="x.bin")
        rows = database_dump(store)
    run = ephemera("verify", *args, data_dir=data_dir)
    assert run.returncode == code, run.stderr
    assert message in run.stderr
    with Store.open(Settings(data_dir=data_dir)) as store:
        assert database_dump(store) == rows


@pytest.mark.slow
def test_the_scrub_in_a_running_server_finds_corruption_on_its_own(tmp_path: Path) -> None:
    env = {"EPHEMERA_SCRUB_PERIOD_S": "3", "EPHEMERA_SCRUB_RATE_MB_S": "100"}
    server = Server(tmp_path / "data", env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            sid, auth, ids = populate(http, server.admin())
            damage(server.data_dir, sid, ids)
            url = f"{API}/sessions/{sid}/artifacts"
            deadline = time.monotonic() + 30
            while True:
                found = {
                    a["name"]: a["integrity"] for a in http.get(url, headers=auth).json()["items"]
                }
                if found == {"good.bin": None, "corrupt.bin": "corrupt", "missing.bin": "missing"}:
                    break
                assert time.monotonic() < deadline, f"the scrub never found them: {found}"
                time.sleep(0.2)
            audit = http.get(f"{API}/admin/audit?action=verify", headers=server.admin()).json()
            assert {e["actor"] for e in audit["items"]} == {"scrub"}
    finally:
        server.stop()
