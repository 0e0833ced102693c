"""Download links against a real `ephemera serve`, fetched as a browser fetches `<img src>`:
no Authorization header, ranges, revalidation by ETag; keys rotated and revoked with the
`ephemera link-key` command beside the running server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2 as httpx
import numpy as np
import pytest

from tests.cli import ephemera
from tests.conftest import Server, bearer
from tests.images import png

# What a browser sends for an image on a page of another origin.
IMG_HEADERS = {
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "accept": "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    "accept-language": "en-US,en;q=0.5",
    "referer": "https://inspection.example/line-3",
    "sec-fetch-dest": "image",
    "sec-fetch-mode": "no-cors",
    "sec-fetch-site": "cross-site",
}


def no_credentials(request: httpx.Request) -> None:
    assert "authorization" not in request.headers
    assert "cookie" not in request.headers


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    hooks = {"request": [no_credentials]}
    with httpx.Client(headers=IMG_HEADERS, timeout=10, event_hooks=hooks) as client:
        yield client


class Picture:
    """A session with one PNG in it, made over the API with the admin key."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api
        created = self.api.post("/sessions", json={"label": "line 3"})
        assert created.status_code == 201, created.text
        self.sid = created.json()["id"]
        self.token = created.json()["token"]
        # Noise: a PNG of some kilobytes, so that ranges fall inside it.
        pixels = np.random.default_rng(17).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        self.data = png(pixels)
        uploaded = self.api.post(
            f"/sessions/{self.sid}/artifacts",
            params={"name": "part 17.png"},
            content=self.data,
            headers=bearer(self.token),
        )
        assert uploaded.status_code == 201, uploaded.text
        self.artifact: dict[str, Any] = uploaded.json()

    def link(self, **body: Any) -> dict[str, Any]:
        response = self.api.post(
            f"/sessions/{self.sid}/artifacts/{self.artifact['id']}/links",
            json={"expires_in_s": 600, "disposition": "inline", **body},
            headers=bearer(self.token),
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert isinstance(body, dict)
        return body


@pytest.fixture
def picture(server: Server) -> Iterator[Picture]:
    with httpx.Client(base_url=server.api, headers=server.admin(), timeout=10) as api:
        yield Picture(api)


def key_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["key"]


def test_an_img_src_fetch_works_with_ranges_and_revalidation(
    server: Server, picture: Picture, browser: httpx.Client
) -> None:
    url = picture.link()["url"]
    assert url.startswith(f"{server.api}/links/")

    shown = browser.get(url)
    assert shown.status_code == 200
    assert shown.content == picture.data
    assert shown.headers["content-type"] == "image/png"
    assert shown.headers["content-disposition"].startswith('inline; filename="part 17.png"')
    assert shown.headers["accept-ranges"] == "bytes"
    etag = shown.headers["etag"]
    assert etag == f'"{picture.artifact["sha256"]}"'

    # Ranges, as a browser asks for them (an open range first, then the rest).
    opened = browser.get(url, headers={"range": "bytes=0-"})
    assert (opened.status_code, opened.content) == (206, picture.data)
    middle = browser.get(url, headers={"range": "bytes=100-299", "if-range": etag})
    assert middle.status_code == 206
    assert middle.content == picture.data[100:300]
    assert middle.headers["content-range"] == f"bytes 100-299/{len(picture.data)}"
    beyond = browser.get(url, headers={"range": f"bytes={len(picture.data)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(picture.data)}"

    # Revalidation of the cached image: 304, no body; another ETag gets the image again.
    assert shown.headers["cache-control"] == "private, no-cache"
    again = browser.get(url, headers={"if-none-match": etag})
    assert (again.status_code, again.content) == (304, b"")
    assert browser.get(url, headers={"if-none-match": '"stale"'}).content == picture.data

    head = browser.head(url)
    assert (head.status_code, head.headers["etag"]) == (200, etag)
    assert head.headers["content-length"] == str(len(picture.data))


def test_a_short_link_expires_and_a_closed_session_takes_its_links(
    picture: Picture, browser: httpx.Client
) -> None:
    short = picture.link(expires_in_s=1)
    kept = picture.link()
    assert browser.get(short["url"]).status_code == 200
    expires_at = datetime.fromisoformat(short["expires_at"])
    time.sleep(max((expires_at - datetime.now(UTC)).total_seconds(), 0) + 0.1)
    expired = browser.get(short["url"])
    assert expired.status_code == 403
    assert expired.json()["error"]["code"] == "link_refused"
    assert browser.get(kept["url"]).status_code == 200

    closed = picture.api.delete(f"/sessions/{picture.sid}", headers=bearer(picture.token))
    assert closed.status_code == 200
    assert browser.get(kept["url"]).status_code == 404


def test_links_of_a_rotated_key_work_until_the_command_revokes_it(
    server: Server, picture: Picture, browser: httpx.Client
) -> None:
    old = picture.link()["url"]

    rotated = ephemera("link-key", "rotate", data_dir=server.data_dir)
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    new = picture.link()["url"]
    assert key_of(new) == new_key != key_of(old)
    assert browser.get(old).status_code == 200  # rotated out, not revoked
    assert browser.get(new).status_code == 200

    revoked = ephemera("link-key", "revoke", key_of(old), data_dir=server.data_dir)
    assert revoked.returncode == 0, revoked.stderr
    refused = browser.get(old)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "link_refused"
    assert browser.get(new).status_code == 200

    listed = ephemera("link-key", "list", "--json", data_dir=server.data_dir)
    keys = json.loads(listed.stdout)
    assert [(k["id"], k["revoked_at"] is None) for k in keys] == [
        (new_key, True),
        (key_of(old), False),
    ]
    assert all("secret" not in k for k in keys)
    again = ephemera("link-key", "revoke", key_of(old), data_dir=server.data_dir)
    assert again.returncode == 1
    assert again.stderr.splitlines()[-1].startswith("error: ")
    assert "Traceback" not in again.stderr
    audit = picture.api.get("/admin/audit", params={"action": "link-key"}).json()["items"]
    assert [(e["action"], e["actor"].split(":")[0]) for e in audit] == [
        ("link-key.revoke", "cli"),
        ("link-key.rotate", "cli"),
    ]
