"""Small raw uploads that arrive whole with their headers: stored in one step."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, MutableMapping
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from ephemera import Store
from ephemera.http import create_app
from ephemera.http.slots import upload_slots
from tests.asgi import http_scope
from tests.conftest import bearer

API = "/api/v1"


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


def test_a_small_upload_is_stored_and_answered_like_a_streamed_one(
    client: TestClient, store: Store
) -> None:
    token = store.create_session("s1").token
    body = b"small body"
    answer = client.post(
        f"{API}/sessions/s1/artifacts",
        params={"name": "a.txt", "sha256": hashlib.sha256(body).hexdigest()},
        content=body,
        headers={**bearer(token), "Content-Type": "text/plain"},
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["size"] == len(body)
    assert created["content_type"] == "text/plain"
    assert store.read_artifact("s1", created["id"]) == body


def test_a_small_upload_with_a_wrong_checksum_stores_nothing(
    client: TestClient, store: Store
) -> None:
    token = store.create_session("s1").token
    answer = client.post(
        f"{API}/sessions/s1/artifacts",
        params={"name": "a.bin", "sha256": "0" * 64},
        content=b"abc",
        headers=bearer(token),
    )
    assert answer.status_code == 400, answer.text
    assert store.catalog.table_row_counts()["artifacts"] == 0
    assert list(store.blobs.list("sessions/")) == []
    assert list(store.blobs.list_staged()) == []


def test_a_session_with_no_free_slot_is_still_a_404_to_a_wrong_token(
    client: TestClient, store: Store
) -> None:
    """The token is checked before a slot is taken: a 429 would tell a guesser that the
    session exists."""
    token = store.create_session("s1").token
    slots = upload_slots(store)
    url = f"{API}/sessions/s1/artifacts"
    with contextlib.ExitStack() as held:
        for _ in range(slots.per_session):
            held.enter_context(slots.hold("s1"))
        wrong = client.post(url, params={"name": "a"}, content=b"abc", headers=bearer("eps_x"))
        busy = client.post(url, params={"name": "a"}, content=b"abc", headers=bearer(token))
    assert wrong.status_code == 404
    assert busy.status_code == 429
    assert store.catalog.table_row_counts()["artifacts"] == 0
    ok = client.post(url, params={"name": "a"}, content=b"abc", headers=bearer(token))
    assert ok.status_code == 201


def test_a_small_upload_is_authenticated_and_stored_in_one_thread_trip(
    client: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each trip to a worker thread is two hand-offs between the event loop and a thread:
    a small body that came whole with its headers takes one trip, its credentials checked
    in it (the credential dependency is async: FastAPI would send a plain def to a thread)."""
    token = store.create_session("s1").token
    trips: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(func, "__name__", repr(func)))
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    answer = client.post(
        f"{API}/sessions/s1/artifacts",
        params={"name": "a.bin"},
        content=b"x" * 4096,
        headers={**bearer(token), "Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 201, answer.text
    assert len(trips) == 1, trips
    assert store.read_artifact("s1", answer.json()["id"]) == b"x" * 4096


def test_a_wrong_token_is_refused_before_a_late_small_body_arrives(store: Store) -> None:
    """The credentials still come first: a small body that is not all here when the route
    runs does not hold back the answer to a wrong token (nor would a stalled one)."""
    store.create_session("s1")
    app = create_app(store)
    sent: list[MutableMapping[str, Any]] = []
    body_wanted = False

    async def receive() -> dict[str, Any]:
        nonlocal body_wanted
        body_wanted = True
        await anyio.sleep_forever()  # the body never comes
        raise AssertionError

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = http_scope(
        "POST",
        f"{API}/sessions/s1/artifacts",
        [
            (b"authorization", b"Bearer eps_wrong"),
            (b"content-type", b"application/octet-stream"),
            (b"content-length", b"4096"),
        ],
        query=b"name=a.bin",
    )

    async def call() -> None:
        with anyio.fail_after(10):  # the body idle timeout is far longer
            await app(scope, receive, send)

    anyio.run(call)
    assert body_wanted  # the route did look for the body first
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 404, sent
    assert store.catalog.table_row_counts()["artifacts"] == 0
