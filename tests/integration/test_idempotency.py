"""Idempotency-Key on the creating routes, in process, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from ephemera import Settings, Store
from ephemera.catalog.schema import idempotency_keys
from ephemera.errors import Conflict, IdempotencyKeyInUse
from ephemera.http import create_app
from ephemera.http import idempotency as http_idempotency
from ephemera.http.idempotency import scope_of
from ephemera.store.idempotency import HOLD_S, Answer, KeyRecord, Reservation, digest
from ephemera.testing import ManualClock
from tests.conftest import WITH_SAMPLES, bearer, database_dump, snapshot

CONTRACT = True  # on SQLite and PostgreSQL (the blob store is the local one)

API = "/api/v1"
KEY = "Idempotency-Key"


@pytest.fixture
def settings(data_dir: Path, database: str | None) -> Settings:
    return Settings(data_dir=data_dir, database_url=database, processors=WITH_SAMPLES)


@pytest.fixture
def admin_key(store: Store) -> str:
    return store.create_key("test")


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


@pytest.fixture
def session(client: TestClient, admin_key: str) -> tuple[str, str]:
    answer = client.post(f"{API}/sessions", json={"id": "s1"}, headers=bearer(admin_key))
    assert answer.status_code == 201, answer.text
    return "s1", answer.json()["token"]


def keyed(credential: str, key: str) -> dict[str, str]:
    return {**bearer(credential), KEY: key}


def upload(client: TestClient, sid: str, token: str, key: str, data: bytes, **query: str) -> Any:
    return client.post(
        f"{API}/sessions/{sid}/artifacts",
        params={"name": "a.bin", **query},
        content=data,
        headers=keyed(token, key),
    )


def key_rows(store: Store) -> int:
    with store.catalog.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(idempotency_keys)) or 0)


def artifact_ids(client: TestClient, sid: str, token: str) -> list[str]:
    page = client.get(f"{API}/sessions/{sid}/artifacts", headers=bearer(token)).json()
    return [a["id"] for a in page["items"]]


def test_a_retried_upload_answers_the_first_answer_and_stores_nothing(
    client: TestClient, store: Store, session: tuple[str, str]
) -> None:
    sid, token = session
    first = upload(client, sid, token, "up-1", b"the bytes")
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    before = snapshot(store)
    again = upload(client, sid, token, "up-1", b"the bytes")
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert snapshot(store) == before
    assert artifact_ids(client, sid, token) == [first.json()["id"]]


def test_a_retried_upload_with_its_sha256_is_answered_without_hashing_the_body(
    client: TestClient, store: Store, session: tuple[str, str]
) -> None:
    sid, token = session
    data = b"x" * 5000
    sha = hashlib.sha256(data).hexdigest()
    first = upload(client, sid, token, "up-sha", data, sha256=sha)
    before = snapshot(store)
    again = upload(client, sid, token, "up-sha", data, sha256=sha)
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert snapshot(store) == before


@pytest.mark.parametrize("form", ["multipart", "json"])
def test_multipart_and_json_uploads_replay_by_their_content(
    client: TestClient, store: Store, session: tuple[str, str], form: str
) -> None:
    sid, token = session
    url = f"{API}/sessions/{sid}/artifacts"

    def send(data: bytes, boundary: str) -> Any:
        if form == "json":
            body = {"name": "f.txt", "data_base64": base64.b64encode(data).decode()}
            return client.post(url, json=body, headers=keyed(token, "form-1"))
        # A retry's multipart body has its own boundary: it is the same request still.
        content_type = f"multipart/form-data; boundary={boundary}"
        return client.post(
            url,
            content=_multipart(data, boundary),
            headers={**keyed(token, "form-1"), "content-type": content_type},
        )

    first = send(b"content", "AAAA")
    assert first.status_code == 201, first.text
    before = snapshot(store)
    again = send(b"content", "BBBBBB")
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    other = send(b"other content", "CCCC")
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert snapshot(store) == before


def _multipart(data: bytes, boundary: str) -> bytes:
    return (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="kind"\r\n\r\ngolden\r\n'
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="f.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_another_upload_under_the_same_key_is_422_and_stores_nothing(
    client: TestClient, store: Store, session: tuple[str, str]
) -> None:
    sid, token = session
    first = upload(client, sid, token, "up-2", b"one")
    before = snapshot(store)
    other_bytes = upload(client, sid, token, "up-2", b"two")
    other_name = upload(client, sid, token, "up-2", b"one", kind="golden")
    for answer in (other_bytes, other_name):
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "idempotency_key_reused"
    assert snapshot(store) == before
    assert artifact_ids(client, sid, token) == [first.json()["id"]]


def test_a_retried_task_submission_queues_one_task(
    client: TestClient, store: Store, session: tuple[str, str]
) -> None:
    sid, token = session
    aid = upload(client, sid, token, "in", b"text").json()["id"]
    url = f"{API}/sessions/{sid}/tasks"
    body = {"processor": "sample-upper", "inputs": [aid], "params": {"suffix": ".up"}}
    first = client.post(url, json=body, headers=keyed(token, "task-1"))
    assert first.status_code == 201, first.text
    before = database_dump(store)
    again = client.post(url, json=body, headers=keyed(token, "task-1"))
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    other = client.post(
        url, json={**body, "params": {"suffix": ".x"}}, headers=keyed(token, "task-1")
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert database_dump(store) == before
    tasks = client.get(url, headers=bearer(token)).json()["items"]
    assert [t["id"] for t in tasks] == [first.json()["id"]]


def test_a_retried_session_creation_gives_the_same_session_and_its_token_to_the_same_key(
    client: TestClient, store: Store, admin_key: str
) -> None:
    body = {"id": "cam-1", "label": "camera"}
    first = client.post(f"{API}/sessions", json=body, headers=keyed(admin_key, "new-cam-1"))
    assert first.status_code == 201, first.text
    token = first.json()["token"]
    before = database_dump(store)
    # The token is stored only hashed and sealed: never as it is.
    assert token not in before
    again = client.post(f"{API}/sessions", json=body, headers=keyed(admin_key, "new-cam-1"))
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert database_dump(store) == before
    # The replayed token opens the session.
    assert client.get(f"{API}/sessions/cam-1", headers=bearer(token)).status_code == 200
    other = client.post(
        f"{API}/sessions", json={**body, "label": "other"}, headers=keyed(admin_key, "new-cam-1")
    )
    assert other.status_code == 422
    assert database_dump(store) == before


def test_keys_belong_to_their_caller(client: TestClient, store: Store, admin_key: str) -> None:
    client_key = store.create_key("station", "client")
    a = client.post(f"{API}/sessions", json={}, headers=keyed(admin_key, "same"))
    b = client.post(f"{API}/sessions", json={}, headers=keyed(client_key, "same"))
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]
    assert "idempotent-replayed" not in b.headers
    # Two sessions' tokens, the same key on the "same" route shape: two artifacts.
    for answer in (a, b):
        sid, token = answer.json()["id"], answer.json()["token"]
        up = upload(client, sid, token, "same", b"bytes")
        assert up.status_code == 201
        assert "idempotent-replayed" not in up.headers


def test_a_request_that_fails_releases_its_key(
    client: TestClient, session: tuple[str, str]
) -> None:
    sid, token = session
    url = f"{API}/sessions/{sid}/tasks"
    bad = client.post(
        url, json={"processor": "sample-upper", "inputs": ["nope"]}, headers=keyed(token, "t")
    )
    assert bad.status_code == 404
    good = client.post(url, json={"processor": "sample-upper"}, headers=keyed(token, "t"))
    assert good.status_code == 201, good.text
    assert "idempotent-replayed" not in good.headers
    wrong = upload(client, sid, token, "u", b"abc", sha256="0" * 64)
    assert wrong.status_code == 400
    right = upload(client, sid, token, "u", b"abc", sha256=hashlib.sha256(b"abc").hexdigest())
    assert right.status_code == 201, right.text


def test_a_key_held_by_a_running_request_is_409_until_its_hold_lapses(
    client: TestClient, store: Store, session: tuple[str, str], clock: ManualClock
) -> None:
    sid, token = session
    url = f"{API}/sessions/{sid}/artifacts"
    # A request that holds the key and never finishes (its process crashed), reserved as
    # the route reserves: the caller's scope, the route, the request's hash.
    request_hash = digest({"query": [["name", "a.bin"]], "content_type": ""})
    held = store.reserve_key(scope_of(token), f"POST {url}", "crash", request_hash, session_id=sid)
    assert isinstance(held, Reservation)
    busy = upload(client, sid, token, "crash", b"z")
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "idempotency_key_in_use"
    assert busy.headers["retry-after"] == "1"
    assert artifact_ids(client, sid, token) == []
    clock.advance(HOLD_S + 1)
    done = upload(client, sid, token, "crash", b"z")
    assert done.status_code == 201, done.text
    assert "idempotent-replayed" not in done.headers


def test_keys_expire_and_cleanup_forgets_them(
    client: TestClient, store: Store, admin_key: str, clock: ManualClock
) -> None:
    created = client.post(
        f"{API}/sessions", json={"idle_timeout_s": None}, headers=bearer(admin_key)
    ).json()
    sid, token = created["id"], created["token"]
    first = upload(client, sid, token, "old", b"data")
    clock.advance(timedelta(seconds=store.settings.idempotency_ttl_s + 1).total_seconds())
    assert key_rows(store) == 1
    store.cleanup("orphaned", dry_run=True)
    assert key_rows(store) == 1
    store.cleanup("orphaned")
    assert key_rows(store) == 0
    again = upload(client, sid, token, "old", b"data")
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]


@pytest.mark.parametrize("value", [b"", "é".encode(), b"a" * 256, b"tab\there"])
def test_a_malformed_key_is_400_and_creates_nothing(
    client: TestClient, store: Store, admin_key: str, value: bytes
) -> None:
    before = snapshot(store)
    headers = {b"authorization": f"Bearer {admin_key}".encode(), KEY.encode(): value}
    answer = client.post(f"{API}/sessions", json={}, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_header"
    assert snapshot(store) == before


def test_a_quoted_key_is_the_same_key(client: TestClient, admin_key: str) -> None:
    first = client.post(f"{API}/sessions", json={}, headers=keyed(admin_key, '"k-1"'))
    again = client.post(f"{API}/sessions", json={}, headers=keyed(admin_key, "k-1"))
    assert again.json() == first.json()


def test_anonymous_creation_refuses_a_key(
    data_dir: Path, database: str | None, clock: ManualClock
) -> None:
    settings = Settings(data_dir=data_dir, database_url=database, anonymous_sessions=True)
    with Store.open(settings, clock=clock) as store, TestClient(create_app(store)) as client:
        answer = client.post(f"{API}/sessions", json={}, headers={KEY: "anon"})
        assert answer.status_code == 400
        assert store.totals()[0] == 0


def test_an_upload_keeps_its_key_while_its_body_streams_and_frees_it_if_it_fails(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renew every 0.1 s of real time; the hold itself is counted on the test's clock.
    monkeypatch.setattr(http_idempotency, "HOLD_S", 0.3)
    held = store.reserve_key("caller", "POST /x", "k", "h")
    assert isinstance(held, Reservation)

    async def stream_slowly() -> None:
        async with http_idempotency.holding(store, held):
            clock.advance(HOLD_S + 1)  # the first hold is over by the clock...
            await asyncio.sleep(0.5)  # ...but the request renewed it meanwhile
            with pytest.raises(IdempotencyKeyInUse):
                store.reserve_key("caller", "POST /x", "k", "h")
            raise RuntimeError("the client went away")

    with pytest.raises(RuntimeError):
        anyio.run(stream_slowly)
    # The failed request let the key go: a retry proceeds at once.
    assert isinstance(store.reserve_key("caller", "POST /x", "k", "h"), Reservation)


def test_a_creation_whose_hold_was_taken_over_creates_nothing(
    store: Store, clock: ManualClock
) -> None:
    late = store.reserve_key("caller", "POST /sessions", "k", "h")
    assert isinstance(late, Reservation)
    clock.advance(HOLD_S + 1)
    taker = store.reserve_key("caller", "POST /sessions", "k", "h")
    assert isinstance(taker, Reservation)
    with pytest.raises(Conflict):
        store.create_session("late", idempotency=late.completion(lambda _: Answer(201, "{}")))
    assert store.totals()[0] == 0
    # The request that holds the key now is the one whose answer is recorded.
    store.create_session("taker", idempotency=taker.completion(lambda _: Answer(201, "{}")))
    record = store.reserve_key("caller", "POST /sessions", "k", "h")
    assert isinstance(record, KeyRecord)
    assert record.answer == Answer(201, "{}")


def test_a_new_session_under_an_old_id_never_sees_the_old_ones_keys(
    client: TestClient, admin_key: str, session: tuple[str, str]
) -> None:
    sid, token = session
    first = upload(client, sid, token, "k", b"old bytes")
    assert client.delete(f"{API}/sessions/{sid}", headers=bearer(token)).status_code == 200
    again = client.post(f"{API}/sessions", json={"id": sid}, headers=bearer(admin_key))
    new_token = again.json()["token"]
    fresh = upload(client, sid, new_token, "k", b"old bytes")
    assert fresh.status_code == 201
    assert "idempotent-replayed" not in fresh.headers
    assert fresh.json()["id"] != first.json()["id"]


def test_a_key_used_over_an_admin_key_never_replays_a_closed_sessions_answer(
    client: TestClient, store: Store, admin_key: str, session: tuple[str, str], clock: ManualClock
) -> None:
    # The key outlives the session: only the session's incarnation tells the two apart.
    sid, _ = session
    aid = upload(client, sid, admin_key, "k", b"old bytes").json()["id"]
    tasks = f"{API}/sessions/{sid}/tasks"
    task = {"processor": "sample-upper", "inputs": [aid]}
    old_task = client.post(tasks, json=task, headers=keyed(admin_key, "t")).json()["id"]
    closed = client.delete(
        f"{API}/sessions/{sid}", params={"force": True}, headers=bearer(admin_key)
    )
    assert closed.status_code == 200, closed.text
    # Not even a tick of the clock between the two: the new session has the old created_at.
    again = client.post(f"{API}/sessions", json={"id": sid}, headers=bearer(admin_key))
    assert again.status_code == 201, again.text
    fresh = upload(client, sid, admin_key, "k", b"old bytes")
    assert fresh.status_code == 201, fresh.text
    assert "idempotent-replayed" not in fresh.headers
    assert fresh.json()["id"] != aid
    got = client.get(
        f"{API}/sessions/{sid}/artifacts/{fresh.json()['id']}", headers=bearer(admin_key)
    )
    assert got.status_code == 200, got.text
    task = {"processor": "sample-upper", "inputs": [fresh.json()["id"]]}
    new_task = client.post(tasks, json=task, headers=keyed(admin_key, "t"))
    assert new_task.status_code == 201, new_task.text
    assert "idempotent-replayed" not in new_task.headers
    assert new_task.json()["id"] != old_task
    # Within the new incarnation the key replays as ever.
    replayed = upload(client, sid, admin_key, "k", b"old bytes")
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == fresh.json()


@pytest.mark.parametrize("form", ["raw", "multipart", "json"])
def test_a_retried_upload_is_only_hashed_so_a_full_volume_still_answers_it(
    client: TestClient,
    store: Store,
    settings: Settings,
    session: tuple[str, str],
    clock: ManualClock,
    form: str,
) -> None:
    sid, token = session
    url = f"{API}/sessions/{sid}/artifacts"

    def send(to: TestClient, data: bytes, key: str) -> Any:
        if form == "json":
            body = {"name": "f.txt", "data_base64": base64.b64encode(data).decode()}
            return to.post(url, json=body, headers=keyed(token, key))
        if form == "multipart":
            content_type = "multipart/form-data; boundary=XYZ"
            headers = {**keyed(token, key), "content-type": content_type}
            return to.post(url, content=_multipart(data, "XYZ"), headers=headers)
        return to.post(url, params={"name": "f.txt"}, content=data, headers=keyed(token, key))

    first = send(client, b"the bytes", "full")
    assert first.status_code == 201, first.text
    # The same catalog and data dir, served where no byte may be stored any more.
    full = settings.model_copy(update={"reserve_bytes": 2**62})
    with Store.open(full, clock=clock) as full_store, TestClient(create_app(full_store)) as later:
        refused = send(later, b"new bytes", "new")
        assert refused.status_code == 507, refused.text
        before = snapshot(store)
        # A retry takes no room, no record and no blob: its body is only hashed.
        again = send(later, b"the bytes", "full")
        assert (again.status_code, again.json()) == (201, first.json())
        assert again.headers["idempotent-replayed"] == "true"
        other = send(later, b"other bytes", "full")
        assert other.status_code == 422, other.text
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        assert snapshot(store) == before


def test_an_upload_whose_hold_was_taken_over_stops_at_once(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_idempotency, "HOLD_S", 0.3)  # a renewal every 0.1 s
    held = store.reserve_key("caller", "POST /x", "k", "h")
    assert isinstance(held, Reservation)
    # The hold lapsed (the request stalled) and a retry took the key over.
    clock.advance(HOLD_S + 1)
    assert isinstance(store.reserve_key("caller", "POST /x", "k", "h"), Reservation)
    streamed: list[float] = []

    async def stream_slowly() -> None:
        started = time.monotonic()
        try:
            async with http_idempotency.holding(store, held):
                await anyio.sleep(3)  # a body still arriving: its commit could only fail
        finally:
            streamed.append(time.monotonic() - started)

    with pytest.raises(Conflict, match="lapsed"):
        anyio.run(stream_slowly)
    assert streamed[0] < 1.5


def test_a_request_that_completed_its_key_stands_though_the_next_renewal_finds_it_gone(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_idempotency, "HOLD_S", 0.3)  # a renewal every 0.1 s
    held = store.reserve_key("caller", "POST /sessions", "k", "h")
    assert isinstance(held, Reservation)

    def commit() -> None:
        store.create_session("s1", idempotency=held.completion(lambda _: Answer(201, "{}")))
        # The key is answered, so no longer held: renewals meanwhile find it "lost".
        time.sleep(0.5)

    async def create() -> None:
        async with http_idempotency.holding(store, held):
            # As an upload commits: in a worker thread, and nothing awaited after it.
            await anyio.to_thread.run_sync(commit)

    anyio.run(create)
    assert store.totals()[0] == 1
    record = store.reserve_key("caller", "POST /sessions", "k", "h")
    assert isinstance(record, KeyRecord)
    assert record.answer == Answer(201, "{}")
