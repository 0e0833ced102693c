"""Download links on PostgreSQL and S3 (moto over HTTP): served through the server, or, with
``link_redirect``, by a redirect to a presigned URL of the bucket."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from ephemera import Settings, Store
from ephemera.http import create_app
from ephemera.store.links import REDIRECT_MAX_S
from ephemera.testing import ManualClock
from tests.conftest import bearer
from tests.databases import PostgresDatabases
from tests.s3server import S3Server

API = "/api/v1"
DATA = bytes(range(256)) * 64 + b"the end"

# An app in process, and an admin key of its store.
Opened = tuple[TestClient, dict[str, str]]
OpenClient = Callable[..., Opened]


@pytest.fixture
def open_client(
    tmp_path: Path,
    postgres_databases: PostgresDatabases,
    s3_url: str,
    clock: ManualClock,
) -> Iterator[OpenClient]:
    """An in-process app over a store on a fresh PostgreSQL database and a fresh bucket."""
    database_url = postgres_databases.fresh()
    stores: list[Store] = []
    clients: list[TestClient] = []

    def open_client(**settings: Any) -> Opened:
        store = Store.open(
            Settings(
                data_dir=tmp_path / "data", database_url=database_url, blob_url=s3_url, **settings
            ),
            clock=clock,
        )
        stores.append(store)
        clock.catch_up()
        client = TestClient(create_app(store), follow_redirects=False).__enter__()
        clients.append(client)
        return client, bearer(store.create_key(f"admin{len(stores)}"))

    yield open_client
    for client in clients:
        client.__exit__(None, None, None)
    for store in stores:
        store.close()
    postgres_databases.drop(database_url)


def upload_and_link(opened: Opened, **body: Any) -> tuple[str, dict[str, Any], str]:
    """A new session with one artifact, and a link to it: (token, artifact, link)."""
    client, admin = opened
    created = client.post(f"{API}/sessions", json={}, headers=admin)
    sid, token = created.json()["id"], created.json()["token"]
    artifact = client.post(
        f"{API}/sessions/{sid}/artifacts",
        params={"name": "scan 7.png", "content_type": "image/png"},
        content=DATA,
        headers=bearer(token),
    ).json()
    linked = client.post(
        f"{API}/sessions/{sid}/artifacts/{artifact['id']}/links",
        json={"expires_in_s": 600, **body},
        headers=bearer(token),
    )
    assert linked.status_code == 201, linked.text
    url = urlsplit(linked.json()["url"])
    return token, artifact, f"{url.path}?{url.query}"


def test_a_plain_link_streams_the_bytes_through_the_server(open_client: OpenClient) -> None:
    opened = open_client()
    client = opened[0]
    _, artifact, link = upload_and_link(opened)
    served = client.get(link)
    assert served.status_code == 200
    assert served.content == DATA
    assert served.headers["etag"] == f'"{artifact["sha256"]}"'
    ranged = client.get(link, headers={"range": "bytes=1000-1999"})
    assert (ranged.status_code, ranged.content) == (206, DATA[1000:2000])
    assert client.get(link, headers={"if-none-match": served.headers["etag"]}).status_code == 304


def test_the_redirect_mode_answers_a_presigned_url_of_the_exact_bytes(
    open_client: OpenClient, s3_server: S3Server
) -> None:
    # Clients reach the bucket under another name than the server does.
    public = s3_server.endpoint.replace("127.0.0.1", "localhost")
    opened = open_client(link_redirect=True, s3_public_endpoint=public)
    client = opened[0]
    token, artifact, link = upload_and_link(opened, expires_in_s=120)

    redirected = client.get(link)
    assert redirected.status_code == 307
    assert redirected.headers["cache-control"] == "no-store"
    location = redirected.headers["location"]
    assert location.startswith(public + "/")
    # No longer than the link, whatever the cap.
    assert 0 < int(parse_qs(urlsplit(location).query)["X-Amz-Expires"][0]) <= 120
    assert token not in location

    with httpx.Client(timeout=10) as anyone:
        fetched = anyone.get(location)
        assert fetched.status_code == 200
        assert fetched.content == DATA
        assert fetched.headers["content-type"] == "image/png"
        disposition = fetched.headers["content-disposition"]
        assert disposition.startswith('attachment; filename="scan 7.png"')
        ranged = anyone.get(location, headers={"range": "bytes=10-19"})
        assert (ranged.status_code, ranged.content) == (206, DATA[10:20])

    # HEAD cannot follow a URL presigned for GET: the server answers it itself.
    head = client.head(link)
    assert head.status_code == 200
    assert head.headers["etag"] == f'"{artifact["sha256"]}"'

    # A long link still redirects to a short-lived URL.
    _, _, long_link = upload_and_link(opened, expires_in_s=7 * 86400)
    long_location = client.get(long_link).headers["location"]
    assert int(parse_qs(urlsplit(long_location).query)["X-Amz-Expires"][0]) == REDIRECT_MAX_S


def test_the_redirect_mode_serves_an_inline_link_itself_under_the_sandbox(
    open_client: OpenClient,
) -> None:
    # A presigned answer of the bucket cannot carry the sandbox: a page shown inline would run
    # its script on the bucket's origin. The server answers inline links itself.
    client, admin = open_client(link_redirect=True)
    sid = client.post(f"{API}/sessions", json={}, headers=admin).json()["id"]
    page = b"<html><script>alert(document.domain)</script></html>"
    for name, content_type, data in [
        ("page.html", "text/html", page),
        ("scan.png", "image/png", DATA),
    ]:
        artifact = client.post(
            f"{API}/sessions/{sid}/artifacts",
            params={"name": name, "content_type": content_type},
            content=data,
            headers=admin,
        ).json()
        route = f"{API}/sessions/{sid}/artifacts/{artifact['id']}/links"
        url = client.post(
            route, json={"expires_in_s": 600, "disposition": "inline"}, headers=admin
        ).json()["url"]
        served = client.get(url)
        assert served.status_code == 200, name
        assert served.content == data
        assert served.headers["content-security-policy"] == "sandbox"
        assert served.headers["x-content-type-options"] == "nosniff"
        assert served.headers["content-disposition"].startswith(f'inline; filename="{name}"')
        # The same artifact as an attachment is still redirected.
        attachment = client.post(route, json={"expires_in_s": 600}, headers=admin).json()["url"]
        assert client.get(attachment).status_code == 307


def test_the_redirect_mode_refuses_what_a_plain_link_refuses(
    open_client: OpenClient, clock: ManualClock
) -> None:
    opened = open_client(link_redirect=True)
    client = opened[0]
    token, artifact, link = upload_and_link(opened)
    assert client.get(link).status_code == 307
    assert client.get(link[:-1] + ("A" if link[-1] != "A" else "B")).status_code == 403
    sid = artifact["session_id"]
    deleted = client.delete(
        f"{API}/sessions/{sid}/artifacts/{artifact['id']}", headers=bearer(token)
    )
    assert deleted.is_success
    assert client.get(link).status_code == 404
    _, _, expiring = upload_and_link(opened)
    clock.advance(601)
    assert client.get(expiring).status_code == 403


def test_the_redirect_mode_serves_directly_where_the_store_cannot_presign(
    tmp_path: Path, clock: ManualClock
) -> None:
    settings = Settings(data_dir=tmp_path / "local", link_redirect=True)
    with Store.open(settings, clock=clock) as store, TestClient(create_app(store)) as client:
        _, _, link = upload_and_link((client, bearer(store.create_key("admin"))))
        served = client.get(link, follow_redirects=False)
        assert (served.status_code, served.content) == (200, DATA)
