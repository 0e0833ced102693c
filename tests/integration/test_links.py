"""Signed download links, in process, on every backend: what a link opens, for how long, and
what refuses it."""

from __future__ import annotations

import string
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from ephemera import Store
from ephemera.catalog.schema import artifacts
from ephemera.http import create_app
from ephemera.testing import ManualClock
from tests.conftest import MakeSettings, bearer, snapshot

CONTRACT = True

API = "/api/v1"
LINK_PREFIX = f"{API}/links/"
DATA = bytes(range(256)) * 40
NAME = 'Prüf "bericht";é.pdf'
REFUSED = {
    "error": {
        "code": "link_refused",
        "message": "this link is not valid: it was changed, has expired, or its key was revoked",
    }
}


@pytest.fixture
def store(make_settings: MakeSettings, clock: ManualClock) -> Iterator[Store]:
    # Many refused links in a row: the address must not be throttled in the middle of them
    # (the limit itself has a test of its own).
    with Store.open(make_settings(link_refusals_per_minute=100_000), clock=clock) as opened:
        clock.catch_up()
        yield opened


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


class Stored:
    """A session (client-chosen ID, so every kind of character is in the link) and one
    artifact in it."""

    def __init__(self, client: TestClient, store: Store, sid: str = "Links_demo-7") -> None:
        self.client = client
        self.admin = bearer(store.create_key(f"admin-{sid}"))
        created = client.post(f"{API}/sessions", json={"id": sid}, headers=self.admin)
        assert created.status_code == 201, created.text
        self.sid = sid
        self.token = bearer(created.json()["token"])
        uploaded = client.post(
            f"{API}/sessions/{sid}/artifacts",
            params={"name": NAME},
            content=DATA,
            headers=self.token,
        )
        assert uploaded.status_code == 201, uploaded.text
        self.artifact: dict[str, Any] = uploaded.json()
        self.aid = str(self.artifact["id"])
        self.content = f"{API}/sessions/{sid}/artifacts/{self.aid}/content"

    def link(self, **body: Any) -> str:
        """The link's path and query, as a client would follow it."""
        response = self.client.post(
            f"{API}/sessions/{self.sid}/artifacts/{self.aid}/links",
            json={"expires_in_s": 600, **body},
            headers=self.token,
        )
        assert response.status_code == 201, response.text
        url = urlsplit(response.json()["url"])
        return f"{url.path}?{url.query}"


@pytest.fixture
def stored(client: TestClient, store: Store) -> Stored:
    return Stored(client, store)


def test_a_link_downloads_without_credentials_until_it_expires(
    client: TestClient, stored: Stored, clock: ManualClock
) -> None:
    response = client.post(
        f"{API}/sessions/{stored.sid}/artifacts/{stored.aid}/links",
        json={"expires_in_s": 60},
        headers=stored.token,
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"url", "expires_at"}
    url = urlsplit(body["url"])
    link = f"{url.path}?{url.query}"
    # The link carries no credential: neither the session's token nor a key.
    for secret in (stored.token, stored.admin):
        assert secret["Authorization"].removeprefix("Bearer ") not in body["url"]

    served = client.get(link)
    assert served.status_code == 200
    assert served.content == DATA
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert timedelta(seconds=60) <= expires_at - clock.now() < timedelta(seconds=61)
    clock.advance((expires_at - clock.now()).total_seconds() - 0.001)
    assert client.get(link).status_code == 200
    clock.advance(0.001)
    expired = client.get(link)
    assert expired.status_code == 403
    assert expired.json() == REFUSED
    # The session and its artifact are as they were: only the link is dead.
    assert client.get(stored.content, headers=stored.token).content == DATA


def test_a_link_is_404_once_its_artifact_is_deleted(client: TestClient, stored: Stored) -> None:
    link = stored.link()
    assert client.get(link).status_code == 200
    assert client.delete(stored.content.removesuffix("/content"), headers=stored.token).is_success
    gone = client.get(link)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"


def test_a_link_is_404_once_its_session_is_closed(client: TestClient, stored: Stored) -> None:
    link = stored.link()
    assert client.get(link).status_code == 200
    assert client.delete(f"{API}/sessions/{stored.sid}", headers=stored.token).is_success
    assert client.get(link).status_code == 404


def test_a_link_is_404_once_its_session_expires_and_never_keeps_it_alive(
    client: TestClient, store: Store, stored: Stored, clock: ManualClock
) -> None:
    link = stored.link(expires_in_s=7 * 86400)
    before = store.get_session(stored.sid).last_activity_at
    for _ in range(5):  # an hour of fetches, well past the activity write interval
        clock.advance(600)
        assert client.get(link).status_code == 200
    assert store.get_session(stored.sid).last_activity_at == before
    clock.advance(601)  # idle for over an hour: the session is past its deadline
    assert client.get(link).status_code == 404


def test_a_link_dies_when_its_bytes_change(
    client: TestClient, store: Store, stored: Stored
) -> None:
    link = stored.link()
    assert client.get(link).status_code == 200
    # Bytes recorded anew under the same artifact ID (as a repair or a future rewrite would).
    with store.catalog.engine.begin() as conn:
        conn.execute(update(artifacts).where(artifacts.c.id == stored.aid).values(sha256="0" * 64))
    assert client.get(link).status_code == 404


def _changed(c: str) -> str:
    """Another character of the same kind, so that the link stays well formed and only its
    signature can tell."""
    for alphabet in (string.digits, string.ascii_lowercase, string.ascii_uppercase):
        if c in alphabet:
            return alphabet[(alphabet.index(c) + 1) % len(alphabet)]
    return {"-": "_", "_": "-"}.get(c, "-")


def test_changing_any_character_of_a_link_refuses_it(client: TestClient, stored: Stored) -> None:
    link = stored.link()
    assert client.get(link).status_code == 200
    assert link.startswith(LINK_PREFIX)
    for i in range(len(LINK_PREFIX), len(link)):
        tampered = link[:i] + _changed(link[i]) + link[i + 1 :]
        response = client.get(tampered)
        assert response.status_code == 403, (i, tampered)
        assert response.json() == REFUSED, (i, tampered)
    # The route's own prefix names no link at all: another path is simply not there.
    for i in range(len(LINK_PREFIX)):
        tampered = link[:i] + _changed(link[i]) + link[i + 1 :]
        assert client.get(tampered).status_code in (404, 405), tampered


def test_a_link_with_a_field_missing_doubled_or_added_is_refused(
    client: TestClient, stored: Stored
) -> None:
    link = stored.link()
    path, query = link.split("?")
    fields = parse_qsl(query)
    variants = [
        path,
        link[:-1],
        link + "A",
        link + "&expires=1",
        link + "&extra=1",
        link + "&" + query,
        path + "?" + "&".join(f"{k}={v}" for k, v in fields[:-1]),
        path + "?" + "&".join(f"{k}={v}" for k, v in reversed(fields)),  # order is free
    ]
    answers = [client.get(v) for v in variants]
    assert [a.status_code for a in answers] == [403] * 7 + [200]
    assert all(a.json() == REFUSED for a in answers[:7])


def test_a_link_opens_nothing_but_its_artifact(
    client: TestClient, store: Store, stored: Stored
) -> None:
    other = Stored(client, store, sid="other-session")
    link = stored.link()
    query = link.split("?")[1]
    # Another artifact, another session, or both: the signature names the one it was made for.
    for sid, aid in [
        (stored.sid, other.aid),
        (other.sid, stored.aid),
        (other.sid, other.aid),
    ]:
        assert client.get(f"{LINK_PREFIX}{sid}/{aid}?{query}").status_code == 403
    # Another route: its query is no credential anywhere else.
    assert client.get(f"{stored.content}?{query}").status_code == 401
    assert client.get(f"{API}/sessions/{stored.sid}?{query}").status_code == 401


def test_a_link_serves_as_the_authenticated_download_does(
    client: TestClient, stored: Stored
) -> None:
    link = stored.link()
    inline = stored.link(disposition="inline")
    same = [
        *("etag", "content-type", "content-length", "content-range", "accept-ranges"),
        *("content-disposition", "cache-control", "x-content-type-options"),
        "content-security-policy",
    ]
    for request in (
        {},
        {"range": "bytes=100-199"},
        {"range": "bytes=-5"},
        {"range": "bytes=0-"},
        {"range": "bytes=999999-"},
        {"range": "bytes=20-10"},
        {"if-none-match": f'"{stored.artifact["sha256"]}"'},
        {"range": "bytes=1-2", "if-range": '"other"'},
    ):
        through_link = client.get(link, headers=request)
        authenticated = client.get(stored.content, headers={**stored.token, **request})
        assert through_link.status_code == authenticated.status_code, request
        assert through_link.content == authenticated.content, request
        for name in same:
            assert through_link.headers.get(name) == authenticated.headers.get(name), name
    ranged = client.get(link, headers={"range": "bytes=100-199"})
    assert (ranged.status_code, ranged.content) == (206, DATA[100:200])
    assert client.get(link, headers={"range": "bytes=999999-"}).status_code == 416
    assert client.get(link, headers={"if-none-match": ranged.headers["etag"]}).status_code == 304

    shown = client.get(inline)
    assert shown.headers["content-disposition"] == (
        "inline; filename=\"Pr_f _bericht___.pdf\"; filename*=UTF-8''"
        "Pr%C3%BCf%20%22bericht%22%3B%C3%A9.pdf"
    )
    assert shown.content == DATA
    head = client.head(inline)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == shown.headers["etag"]
    assert head.headers["content-length"] == str(len(DATA))


def test_old_keys_verify_until_revoked_and_the_newest_signs(
    client: TestClient, store: Store, stored: Stored
) -> None:
    first = stored.link()
    first_key = dict(parse_qsl(first.split("?")[1]))["key"]
    rotated = client.post(f"{API}/admin/link-keys", headers=stored.admin)
    assert rotated.status_code == 201
    second_key = rotated.json()["id"]
    assert second_key != first_key
    second = stored.link()
    assert dict(parse_qsl(second.split("?")[1]))["key"] == second_key

    assert client.get(first).status_code == 200  # rotated out, not revoked: still verifies
    assert client.get(second).status_code == 200
    listed = client.get(f"{API}/admin/link-keys", headers=stored.admin).json()["items"]
    assert [(k["id"], k["revoked_at"]) for k in listed] == [(second_key, None), (first_key, None)]

    revoked = client.delete(f"{API}/admin/link-keys/{first_key}", headers=stored.admin)
    assert revoked.status_code == 204
    refused = client.get(first)
    assert refused.status_code == 403
    assert refused.json() == REFUSED
    assert client.get(second).status_code == 200
    assert client.delete(
        f"{API}/admin/link-keys/{first_key}", headers=stored.admin
    ).status_code == (404)
    listed = client.get(f"{API}/admin/link-keys", headers=stored.admin).json()["items"]
    assert listed[1]["id"] == first_key
    assert listed[1]["revoked_at"] is not None
    actions = [(e.action, e.target) for e in store.audit_log(action="link-key").items]
    assert actions == [("link-key.revoke", first_key), ("link-key.rotate", second_key)]

    # Revoking the key that signs leaves none: the next link makes a new one.
    assert client.delete(f"{API}/admin/link-keys/{second_key}", headers=stored.admin).is_success
    assert client.get(second).status_code == 403
    third = stored.link()
    assert dict(parse_qsl(third.split("?")[1]))["key"] not in (first_key, second_key)
    assert client.get(third).status_code == 200


def test_only_an_admin_key_manages_link_keys(client: TestClient, stored: Stored) -> None:
    for method, path in [
        ("POST", f"{API}/admin/link-keys"),
        ("GET", f"{API}/admin/link-keys"),
        ("DELETE", f"{API}/admin/link-keys/whatever"),
    ]:
        assert client.request(method, path, headers=stored.token).status_code == 403
        assert client.request(method, path).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in_s": 0},
        {"expires_in_s": 7 * 86400 + 1},
        {"expires_in_s": "soon"},
        {"expires_in_s": 1.5},
        {},
        {"expires_in_s": 60, "disposition": "evil"},
        {"expires_in_s": 60, "token": "x"},
    ],
)
def test_a_bad_link_request_is_422_and_changes_nothing(
    client: TestClient, store: Store, stored: Stored, body: dict[str, Any]
) -> None:
    before = snapshot(store)
    response = client.post(
        f"{API}/sessions/{stored.sid}/artifacts/{stored.aid}/links", json=body, headers=stored.token
    )
    assert response.status_code == 422, response.text
    assert snapshot(store) == before


def test_a_link_is_signed_only_for_what_the_credential_opens(
    client: TestClient, store: Store, stored: Stored
) -> None:
    other = Stored(client, store, sid="other-session")
    before = snapshot(store)
    route = f"{API}/sessions/{stored.sid}/artifacts/{stored.aid}/links"
    missing = f"{API}/sessions/{stored.sid}/artifacts/{other.aid}/links"
    body = {"expires_in_s": 60}
    assert client.post(route, json=body).status_code == 401
    assert client.post(route, json=body, headers=other.token).status_code == 404
    assert client.post(missing, json=body, headers=stored.token).status_code == 404
    assert snapshot(store) == before
    # An admin key may sign one, and that is audited.
    assert client.post(route, json=body, headers=stored.admin).status_code == 201
    [entry] = store.audit_log(action="artifact.link").items
    assert entry.target == f"{stored.sid}/{stored.aid}"


def test_the_longest_link_is_the_setting(make_settings: MakeSettings, clock: ManualClock) -> None:
    with (
        Store.open(make_settings(link_max_ttl_s=120), clock=clock) as store,
        TestClient(create_app(store)) as client,
    ):
        stored = Stored(client, store)
        route = f"{API}/sessions/{stored.sid}/artifacts/{stored.aid}/links"
        too_long = client.post(route, json={"expires_in_s": 121}, headers=stored.token)
        assert too_long.status_code == 422
        assert "link_max_ttl_s" in too_long.json()["error"]["message"]
        assert client.post(route, json={"expires_in_s": 120}, headers=stored.token).is_success


def test_lowering_the_longest_link_shortens_the_links_already_out(
    make_settings: MakeSettings, clock: ManualClock, client: TestClient, stored: Stored
) -> None:
    link = stored.link(expires_in_s=600)
    lowered = make_settings(link_max_ttl_s=120, link_refusals_per_minute=100_000)
    with Store.open(lowered, clock=clock) as store, TestClient(create_app(store)) as capped:
        assert capped.get(link).status_code == 200
        clock.advance(119)
        assert capped.get(link).status_code == 200
        clock.advance(2)
        refused = capped.get(link)
        assert (refused.status_code, refused.json()) == (403, REFUSED)
        assert client.get(link).status_code == 200  # where the setting was not lowered
        # Dead for good: not alive again once less than the setting is left of its expiry.
        clock.advance(400)
        assert capped.get(link).status_code == 403
        assert client.get(link).status_code == 200


def test_changed_links_throttle_the_address_s_links_but_never_its_credentialed_calls(
    make_settings: MakeSettings, clock: ManualClock
) -> None:
    settings = make_settings(auth_failures_per_minute=3, link_refusals_per_minute=3)
    with Store.open(settings, clock=clock) as store, TestClient(create_app(store)) as client:
        stored = Stored(client, store)
        # Links that were genuine are refused but are no guess, however many a page holds:
        # expired ones, and those of a revoked key.
        expired = stored.link(expires_in_s=1)
        revoked_key = dict(parse_qsl(stored.link().split("?")[1]))["key"]
        of_revoked_key = stored.link()
        assert client.post(f"{API}/admin/link-keys", headers=stored.admin).is_success
        link = stored.link()
        assert client.delete(f"{API}/admin/link-keys/{revoked_key}", headers=stored.admin)
        clock.advance(2)
        for _ in range(10):
            assert client.get(expired).json() == REFUSED
            assert client.get(of_revoked_key).json() == REFUSED
        assert client.get(link).status_code == 200

        # Changed links are guesses: past the limit, the address's links answer 429 ...
        for _ in range(3):
            assert client.get(link[:-1] + _changed(link[-1])).json() == REFUSED
        throttled = client.get(link)
        assert throttled.status_code == 429
        assert "retry-after" in throttled.headers
        assert [e.action for e in store.audit_log(action="link.throttled").items] == [
            "link.throttled"
        ]
        # ... and its credentialed calls, an admin key's included, go on as before.
        assert client.get(stored.content, headers=stored.token).content == DATA
        assert client.get(f"{API}/admin/sessions", headers=stored.admin).status_code == 200
        assert client.post(
            f"{API}/sessions/{stored.sid}/artifacts/{stored.aid}/links",
            json={"expires_in_s": 60},
            headers=stored.token,
        ).is_success
        assert store.audit_log(action="auth.throttled").items == []


def test_a_link_made_by_a_mounted_api_carries_the_mount_path(store: Store) -> None:
    host = FastAPI()
    host.mount("/files", create_app(store))
    with TestClient(host) as client:
        admin = bearer(store.create_key("mounted"))
        sid = client.post("/files/api/v1/sessions", json={}, headers=admin).json()["id"]
        artifact = client.post(
            f"/files/api/v1/sessions/{sid}/artifacts",
            params={"name": "a.bin"},
            content=DATA,
            headers=admin,
        ).json()
        url = client.post(
            f"/files/api/v1/sessions/{sid}/artifacts/{artifact['id']}/links",
            json={"expires_in_s": 60},
            headers=admin,
        ).json()["url"]
        assert urlsplit(url).path.startswith("/files/api/v1/links/")
        assert client.get(url).content == DATA
