"""The cleanup page: a preview lists what the API's dry run lists, by rule and in total; running
it deletes exactly that, reports it, and is audited."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import httpx2 as httpx
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import create_key, open_session, sign_in
from tests.conftest import Server


def upload(server: Server, sid: str, name: str, data: bytes, **query: str | int) -> str:
    answer = httpx.post(
        f"{server.api}/sessions/{sid}/artifacts",
        params={"name": name, **query},
        headers=server.admin(),
        content=data,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def expired_artifacts(server: Server, sid: str, sizes: list[int]) -> list[str]:
    """Temporary artifacts of ``sizes`` that have expired by the time this returns."""
    made = [
        upload(server, sid, f"t{i}.bin", b"x" * size, storage="temporary", expires_in_s=1)
        for i, size in enumerate(sizes)
    ]
    time.sleep(1.5)
    return made


def api_dry_run(server: Server) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.api}/admin/cleanup/expired",
        params={"dry_run": "true", "details": "true"},
        headers=server.admin(),
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def artifact_status(server: Server, sid: str, aid: str) -> int:
    return httpx.get(
        f"{server.api}/sessions/{sid}/artifacts/{aid}", headers=server.admin()
    ).status_code


def preview(page: Page, operation: str) -> None:
    page.goto("/console/cleanup")
    page.get_by_label("Operation").select_option(operation)
    page.get_by_role("button", name="Preview").click()
    expect(page.get_by_role("heading", name=f"Preview of {operation}")).to_be_visible()


def column(page: Page, table: str, index: int) -> list[str]:
    return page.locator(f"#{table} tbody tr td:nth-child({index})").all_inner_texts()


def test_the_preview_lists_what_the_api_dry_run_lists_and_the_run_deletes_exactly_that(
    page: Page, console_server: Server
) -> None:
    open_session(console_server, "cleanup-exact")
    doomed = expired_artifacts(console_server, "cleanup-exact", [100, 2000, 30])
    kept = upload(console_server, "cleanup-exact", "keep.bin", b"k" * 50)
    sign_in(page, console_server.admin_key)

    preview(page, "expired")
    expected = api_dry_run(console_server)
    listed = column(page, "preview-items", 2)
    assert sorted(listed) == sorted(i["id"] for i in expected["items"])
    assert set(doomed) <= set(listed)
    assert kept not in listed
    assert set(column(page, "preview-items", 4)) == {"expired"}
    expect(page.locator("#preview-count")).to_have_text(str(expected["deleted_count"]))
    expect(page.locator("#preview-bytes")).to_have_text(str(expected["deleted_size_bytes"]))
    groups = page.locator("#preview-groups tbody tr")
    expect(groups).to_have_count(1)
    expect(groups.locator("td").nth(1)).to_have_text("expired")
    expect(groups.locator("td").nth(3)).to_have_text(str(expected["deleted_count"]))
    expect(page.locator("#preview-groups .total-bytes")).to_contain_text(
        str(expected["deleted_size_bytes"])
    )

    page.get_by_role("button", name="Run this cleanup").click()
    expect(page.get_by_role("heading", name="Report")).to_be_visible()
    expect(page.locator("#run-count")).to_have_text(str(expected["deleted_count"]))
    expect(page.locator("#run-bytes")).to_have_text(str(expected["deleted_size_bytes"]))
    expect(page.locator("#difference")).to_have_text(
        f"Exactly the {expected['deleted_count']} previewed items were deleted."
    )
    assert sorted(column(page, "run-items", 2)) == sorted(listed)
    for aid in doomed:
        assert artifact_status(console_server, "cleanup-exact", aid) == 404
    assert artifact_status(console_server, "cleanup-exact", kept) == 200

    page.goto("/console/audit")
    page.get_by_label("Action").fill("cleanup.expired")
    page.get_by_role("button", name="Filter").click()
    newest = page.locator("#audit tbody tr").first
    expect(newest.locator("td").nth(1)).to_have_text("admin:default")
    expect(newest.locator("td").nth(2)).to_have_text("cleanup.expired")
    expect(newest.locator("td").nth(4)).to_have_text('{"dry_run":false}')
    expect(newest.locator("td").nth(5)).to_contain_text(
        f'"deleted_count":{expected["deleted_count"]},'
        f'"deleted_size_bytes":{expected["deleted_size_bytes"]}'
    )


def test_the_report_shows_what_the_run_deleted_beyond_the_preview(
    page: Page, console_server: Server
) -> None:
    open_session(console_server, "cleanup-drift")
    [first] = expired_artifacts(console_server, "cleanup-drift", [10])
    sign_in(page, console_server.admin_key)
    preview(page, "expired")
    previewed = int(page.locator("#preview-bytes").inner_text())
    # The store changes between the preview and the run.
    [late] = expired_artifacts(console_server, "cleanup-drift", [20])
    page.get_by_role("button", name="Run this cleanup").click()
    expect(page.get_by_role("heading", name="Report")).to_be_visible()
    expect(page.locator("#difference")).to_contain_text(
        "1 deleted item was not previewed, 0 previewed items were not deleted"
    )
    assert column(page, "run-unexpected", 2) == [late]
    assert first in column(page, "run-items", 2)
    expect(page.locator("#run-bytes")).to_have_text(str(previewed + 20))


def test_a_session_preview_lists_the_leased_session_as_spared_and_the_run_spares_it(
    page: Page, console_server: Server
) -> None:
    open_session(console_server, "cleanup-leased")
    upload(console_server, "cleanup-leased", "in.bin", b"i" * 64)
    lease = httpx.post(
        f"{console_server.api}/sessions/cleanup-leased/leases",
        headers=console_server.admin(),
        json={"ttl_s": 600},
    )
    assert lease.status_code == 201, lease.text
    sign_in(page, console_server.admin_key)
    page.goto("/console/cleanup")
    page.get_by_label("Operation").select_option("session")
    page.get_by_label("Session ID").fill("cleanup-leased")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#preview-count")).to_have_text("0")
    expect(page.locator("#protected .protected-count")).to_have_text("1")
    spared = page.locator("#preview-protected-items tbody tr")
    expect(spared).to_have_count(1)
    expect(spared.locator("td").nth(0)).to_have_text("session")
    expect(spared.locator("td").nth(1)).to_have_text("cleanup-leased")
    expect(spared.get_by_role("link", name="cleanup-leased")).to_have_attribute(
        "href", "/console/sessions/cleanup-leased"
    )
    expect(spared.locator("td").nth(3)).to_have_text("one")
    expect(spared.locator("td").nth(4)).to_contain_text("64")
    expect(spared.locator("td").nth(5)).to_have_text(
        "a valid lease names the session or one of its artifacts (leased)"
    )
    page.get_by_role("button", name="Run this cleanup").click()
    expect(page.locator("#run-protected")).to_have_text("1")
    expect(page.locator("#run-protected-items tbody tr td").nth(1)).to_have_text("cleanup-leased")
    expect(page.locator("#run-count")).to_have_text("0")
    session = httpx.get(
        f"{console_server.api}/sessions/cleanup-leased", headers=console_server.admin()
    )
    assert session.status_code == 200


def test_a_worker_key_neither_previews_nor_runs_a_cleanup(
    page: Page, console_server: Server
) -> None:
    """As in the API: a dry run is an audited cleanup run, and takes an admin key."""
    key = create_key(console_server, "cleanup-watcher", "worker")
    open_session(console_server, "cleanup-worker")
    [doomed] = expired_artifacts(console_server, "cleanup-worker", [5])
    sign_in(page, key)
    page.goto("/console/cleanup")
    expect(page.get_by_role("heading", name="Cleanup")).to_be_visible()
    expect(page.get_by_role("button", name="Preview")).to_have_count(0)
    csrf = page.locator("form.sign-out input[name=csrf]").get_attribute("value")
    for path in ("/console/cleanup/previews", "/console/cleanup/runs"):
        answer = page.request.post(
            path, form={"csrf": csrf or "", "operation": "expired"}, max_redirects=0
        )
        assert answer.status == 403, path
    time.sleep(0.5)
    assert artifact_status(console_server, "cleanup-worker", doomed) == 200


def test_preview_run_and_report_work_without_javascript(
    browser: Browser, console_server: Server
) -> None:
    context = browser.new_context(base_url=console_server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        open_session(console_server, "cleanup-nojs")
        [doomed] = expired_artifacts(console_server, "cleanup-nojs", [7])
        sign_in(page, console_server.admin_key)
        preview(page, "expired")
        assert doomed in column(page, "preview-items", 2)
        page.get_by_role("button", name="Run this cleanup").click()
        # The run goes on in the background; its page, reloaded, shows how far it got.
        for _ in range(50):
            if page.get_by_role("heading", name="Report").count():
                break
            time.sleep(0.2)
            page.reload()
        assert doomed in column(page, "run-items", 2)
        assert artifact_status(console_server, "cleanup-nojs", doomed) == 404
    finally:
        context.close()


def test_a_running_cleanup_shows_its_progress_then_its_report_without_a_reload(
    page: Page, console_server: Server
) -> None:
    open_session(console_server, "cleanup-live")
    doomed = expired_artifacts(console_server, "cleanup-live", [11, 22])
    sign_in(page, console_server.admin_key)
    preview(page, "expired")
    previewed = page.locator("#preview-count").inner_text()
    assert int(previewed) >= len(doomed)
    # Another writer holds the database: the run waits at its first delete, still running.
    blocker = sqlite3.connect(console_server.data_dir / "ephemera.db", timeout=30)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        page.get_by_role("button", name="Run this cleanup").click()
        expect(page.get_by_role("heading", name="Running")).to_be_visible()
        expect(page.locator("#run-status")).to_contain_text("The preview listed")
        page.evaluate("window.sameDocument = true")
    finally:
        blocker.rollback()
        blocker.close()
    expect(page.get_by_role("heading", name="Report")).to_be_visible()
    assert page.evaluate("window.sameDocument") is True
    expect(page.locator("#run-count")).to_have_text(previewed)
    for aid in doomed:
        assert aid in column(page, "run-items", 2)


def test_the_form_shows_only_the_parameters_the_operation_reads(
    page: Page, console_server: Server
) -> None:
    sign_in(page, console_server.admin_key)
    page.goto("/console/cleanup")
    hours = page.get_by_label("Idle for at least (hours)")
    session = page.get_by_label("Session ID")
    expect(hours).to_be_hidden()
    expect(session).to_be_hidden()
    page.get_by_label("Operation").select_option("idle-sessions")
    expect(hours).to_be_visible()
    expect(session).to_be_hidden()
    page.get_by_label("Operation").select_option("session")
    expect(hours).to_be_hidden()
    expect(session).to_be_visible()
    # A value left in a parameter the operation does not read is not sent.
    page.get_by_label("Operation").select_option("idle-sessions")
    hours.fill("-5")
    page.get_by_label("Operation").select_option("expired")
    page.get_by_role("button", name="Preview").click()
    expect(page.get_by_role("heading", name="Preview of expired")).to_be_visible()
