"""The audit page: the log filtered by actor, action and time, older pages, escaped values."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import httpx2 as httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import create_key, sign_in
from tests.conftest import Server, bearer


def make_session(server: Server, key: str, sid: str, label: str = "") -> None:
    answer = httpx.post(
        f"{server.api}/sessions", headers=bearer(key), json={"id": sid, "label": label}
    )
    assert answer.status_code == 201, answer.text


def cells(page: Page, index: int) -> list[str]:
    return page.locator(f"#audit tbody tr td:nth-child({index})").all_inner_texts()


def filter_by(page: Page, **fields: str) -> None:
    page.goto("/console/audit")
    labels = {"actor": "Actor", "action": "Action", "since": "From (UTC)", "until": "Until (UTC)"}
    for name, value in fields.items():
        page.get_by_label(labels[name]).fill(value)
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_title("Audit log · ephemera")


def test_the_actor_filter_shows_that_actor_alone(page: Page, console_server: Server) -> None:
    client = create_key(console_server, "audit-actor", "client")
    make_session(console_server, client, "audit-by-client")
    make_session(console_server, console_server.admin_key, "audit-by-admin")
    sign_in(page, console_server.admin_key)
    filter_by(page, actor="client:audit-actor")
    assert cells(page, 2) == ["client:audit-actor"]
    assert cells(page, 3) == ["session.create"]
    assert cells(page, 4) == ["audit-by-client"]
    # Bookmarkable: the filter is in the address.
    assert "actor=client%3Aaudit-actor" in page.url


def test_the_action_filter_takes_a_prefix(page: Page, console_server: Server) -> None:
    create_key(console_server, "audit-action", "worker")
    make_session(console_server, console_server.admin_key, "audit-action-session")
    sign_in(page, console_server.admin_key)
    filter_by(page, action="worker-key.")
    actions = cells(page, 3)
    assert actions
    assert set(actions) == {"worker-key.create"}
    assert "audit-action" in cells(page, 4)
    filter_by(page, action="session.create")
    assert "audit-action-session" in cells(page, 4)
    assert set(cells(page, 3)) == {"session.create"}


def test_the_time_filter_splits_the_log_at_an_instant(page: Page, console_server: Server) -> None:
    client = create_key(console_server, "audit-time", "client")
    make_session(console_server, client, "audit-early")
    # The next whole second, after the first entry and before the second.
    boundary = datetime.fromtimestamp(math.floor(time.time()) + 1, UTC)
    time.sleep(max(0.0, boundary.timestamp() - time.time()) + 0.05)
    make_session(console_server, client, "audit-late")
    stamp = boundary.strftime("%Y-%m-%dT%H:%M:%S")
    sign_in(page, console_server.admin_key)
    filter_by(page, actor="client:audit-time", since=stamp)
    assert cells(page, 4) == ["audit-late"]
    filter_by(page, actor="client:audit-time", until=stamp)
    assert cells(page, 4) == ["audit-early"]
    filter_by(page, actor="client:audit-time", since=stamp, until=stamp)
    expect(page.get_by_text("No entries match these filters.")).to_be_visible()


def test_older_pages_keep_the_filters(page: Page, console_server: Server) -> None:
    client = create_key(console_server, "audit-pager", "client")
    for n in range(52):
        make_session(console_server, client, f"audit-page-{n:02d}")
    sign_in(page, console_server.admin_key)
    filter_by(page, actor="client:audit-pager")
    first = cells(page, 4)
    assert first == [f"audit-page-{n:02d}" for n in range(51, 1, -1)]
    page.get_by_role("link", name="Older").click()
    assert cells(page, 4) == ["audit-page-01", "audit-page-00"]
    expect(page.get_by_role("link", name="Older")).to_have_count(0)
    page.get_by_role("link", name="Newest").click()
    assert cells(page, 4) == first


def test_recorded_values_are_shown_as_text_never_as_markup(
    page: Page, console_server: Server
) -> None:
    make_session(console_server, console_server.admin_key, "audit-markup", label="<b>bold</b>")
    sign_in(page, console_server.admin_key)
    filter_by(page, action="session.create")
    row = page.locator("#audit tbody tr", has_text="audit-markup")
    expect(row.locator("td").nth(4)).to_have_text('{"label":"<b>bold</b>"}')
    expect(row.locator("b")).to_have_count(0)


def test_a_worker_key_reads_the_audit_log(page: Page, console_server: Server) -> None:
    key = create_key(console_server, "audit-reader", "worker")
    sign_in(page, key)
    filter_by(page, action="worker-key.create")
    assert "audit-reader" in cells(page, 4)
