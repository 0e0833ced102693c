"""Small raw uploads that arrive whole with their headers: stored in one step."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from ephemera import Store
from ephemera.http import create_app
from ephemera.http.slots import upload_slots
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
