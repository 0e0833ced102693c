"""A resumable upload's life: expiry is a cleanup rule (dry and real alike), a close takes it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ephemera import Settings, Store
from ephemera.blobs.resumable import ResumableBlobs
from ephemera.http import create_app
from ephemera.testing import ManualClock
from tests.conftest import bearer

API = "/api/v1"
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(params=["local", "memory", "s3"])
def tus(
    request: pytest.FixtureRequest, data_dir: Path, clock: ManualClock
) -> Iterator[tuple[TestClient, Store, dict[str, str]]]:
    blob_url = {"local": None, "memory": "memory://"}.get(request.param)
    if request.param == "s3":
        blob_url = str(request.getfixturevalue("s3_url"))
    settings = Settings(
        data_dir=data_dir, blob_url=blob_url, tus_upload_ttl_s=600, scheduled_cleanup=False
    )
    with Store.open(settings, clock=clock) as store, TestClient(create_app(store)) as client:
        admin = bearer(store.create_key("test"))
        body = {"id": "s1", "idle_timeout_s": 86400}
        auth = bearer(client.post(f"{API}/sessions", json=body, headers=admin).json()["token"])
        yield client, store, auth


def started_upload(client: TestClient, auth: dict[str, str], sent: int) -> str:
    name = base64.b64encode(b"part.bin").decode()
    created = client.post(
        f"{API}/sessions/s1/uploads",
        headers={**auth, **TUS, "Upload-Length": "100000", "Upload-Metadata": f"filename {name}"},
    )
    url = str(created.headers["Location"])
    headers = {
        **auth,
        **TUS,
        "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream",
    }
    assert client.patch(url, headers=headers, content=b"x" * sent).status_code == 204
    return url


def staged(store: Store) -> list[str]:
    """The uploads whose bytes are staged."""
    blobs = store.blobs
    assert isinstance(blobs, ResumableBlobs)
    return sorted({u for s in blobs.list_staged() if (u := blobs.upload_of_staged(s.name))})


def test_an_expired_upload_is_removed_by_cleanup_counted_alike_in_a_dry_run(
    tus: tuple[TestClient, Store, dict[str, str]], clock: ManualClock
) -> None:
    client, store, auth = tus
    url = started_upload(client, auth, 1234)
    upload_id = url.rsplit("/", 1)[1]
    assert staged(store) == [upload_id]
    clock.advance(601)
    assert client.head(url, headers={**auth, **TUS}).status_code == 410

    dry = store.cleanup("all", dry_run=True, details=True)
    items = [i for r in dry.reports for i in r.items if i.rule == "expired-upload"]
    assert [(i.id, i.size) for i in items] == [(upload_id, 1234)]
    assert staged(store) == [upload_id]  # a dry run removes nothing

    real = store.cleanup("all", details=True)
    items = [i for r in real.reports for i in r.items if i.rule == "expired-upload"]
    assert [(i.id, i.size) for i in items] == [(upload_id, 1234)]
    assert staged(store) == []
    assert client.head(url, headers={**auth, **TUS}).status_code == 404
    audit = [e.action for e in store.audit_log().items]
    assert "cleanup.expired" in audit


def test_orphan_reconciliation_spares_an_open_upload_however_old(
    tus: tuple[TestClient, Store, dict[str, str]], clock: ManualClock
) -> None:
    client, store, auth = tus
    url = started_upload(client, auth, 10)
    store.settings.orphan_grace_s = 60
    clock.advance(61)  # its staged bytes are older than the grace; the upload is not expired
    report = store.cleanup("orphaned", details=True)
    assert [i for i in report.items if i.kind == "staged"] == []
    assert staged(store) == [url.rsplit("/", 1)[1]]


def test_closing_a_session_removes_its_incomplete_uploads(
    tus: tuple[TestClient, Store, dict[str, str]],
) -> None:
    client, store, auth = tus
    url = started_upload(client, auth, 500)
    assert staged(store) != []
    store.close_session("s1")
    assert staged(store) == []
    assert client.head(url, headers={**auth, **TUS}).status_code == 404


def test_an_expired_upload_a_live_writer_holds_is_spared_by_dry_and_real_runs_alike(
    tus: tuple[TestClient, Store, dict[str, str]], clock: ManualClock
) -> None:
    """A writer that began before the expiry and keeps sending holds its upload: the real
    run spares it, so the dry run must not count it either."""
    _client, store, _auth = tus
    upload = store.resumable.create("s1", 100, {"filename": "late.bin"})
    clock.advance(599)
    writer = store.resumable.begin_append("s1", upload.id, 0)
    writer.write([b"w" * 10])
    clock.advance(2)  # expired now; the writer's claim is live

    def expired(dry_run: bool) -> list[str]:
        report = store.cleanup("expired", dry_run=dry_run, details=True)
        return [i.id for i in report.items if i.rule == "expired-upload"]

    assert expired(dry_run=True) == expired(dry_run=False) == []
    writer.close()


def test_terminating_with_an_admin_key_is_audited(
    tus: tuple[TestClient, Store, dict[str, str]],
) -> None:
    client, store, auth = tus
    url = started_upload(client, auth, 10)
    assert client.delete(url, headers={**auth, **TUS}).status_code == 204  # the session's own
    assert store.audit_log(action="upload.terminate").items == []

    url = started_upload(client, auth, 10)
    upload_id = url.rsplit("/", 1)[1]
    admin = bearer(store.create_key("ops"))
    assert client.delete(url, headers={**admin, **TUS}).status_code == 204
    entries = store.audit_log(action="upload.terminate").items
    assert [(e.actor, e.target) for e in entries] == [("admin:ops", f"s1/{upload_id}")]
