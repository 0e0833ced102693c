"""The console's sessions list and a session's page, in a real browser against a real server:
figures, search, order and pages; pictures, hashes and downloads; live task progress;
closing; what a worker key's sign-in may not do; hostile text shown as text."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from playwright.sync_api import Dialog, Page, expect

from tests.browser.conftest import create_key, open_session, sign_in
from tests.conftest import WITH_SAMPLES_ENV, Server, bearer, serving
from tests.images import png


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The module's server, with the sample processors (a slow task reports progress)."""
    env = {**WITH_SAMPLES_ENV, "EPHEMERA_EVENT_PING_S": "1"}
    with serving(tmp_path_factory.mktemp("sessions") / "data", env) as running:
        yield running


def upload(
    server: Server, sid: str, token: str, name: str, data: bytes, content_type: str
) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.api}/sessions/{sid}/artifacts",
        params={"name": name},
        content=data,
        headers={**bearer(token), "Content-Type": content_type},
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def picture() -> bytes:
    pixels = np.zeros((24, 40, 3), np.uint8)
    pixels[:, :20] = (40, 120, 220)
    pixels[6:18, 24:36] = (250, 250, 250)
    return png(pixels)


def row(page: Page, sid: str) -> Any:
    return page.locator(f'#sessions tr[data-session="{sid}"]')


# -- the list ------------------------------------------------------------------------------


def test_a_session_made_through_the_api_is_listed_with_its_counts_and_bytes(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "list-figures", label="line 4")
    upload(console_server, "list-figures", token, "a.bin", b"x" * 1000, "application/octet-stream")
    upload(console_server, "list-figures", token, "b.bin", b"y" * 24, "application/octet-stream")
    httpx.post(
        f"{console_server.api}/sessions/list-figures/leases",
        headers=bearer(token),
        json={"ttl_s": 600},
    ).raise_for_status()
    sign_in(page, console_server.admin_key)
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Sessions").click()
    expect(page).to_have_title("Sessions · ephemera")
    listed = row(page, "list-figures")
    expect(listed).to_contain_text("line 4")
    expect(listed.locator("[data-artifacts]")).to_have_text("2")
    expect(listed.locator("[data-bytes]")).to_have_attribute("data-bytes", "1024")
    expect(listed.locator("[data-bytes]")).to_have_text("1.0 KiB")
    expect(listed.locator("[data-leases]")).to_have_text("1")
    # The API agrees.
    info = httpx.get(
        f"{console_server.api}/sessions/list-figures", headers=console_server.admin()
    ).json()
    assert (info["artifact_count"], info["total_bytes"]) == (2, 1024)


def test_search_finds_sessions_by_id_prefix_or_label_and_the_state_filter_narrows(
    page: Page, console_server: Server
) -> None:
    open_session(console_server, "find-me-1", label="Kiln North")
    open_session(console_server, "find-me-2", label="press")
    open_session(console_server, "other-3", label="kiln south")
    sign_in(page, console_server.admin_key)
    page.goto("/console/sessions")
    page.get_by_label("Search").fill("KILN")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"q=KILN"))
    ids = page.locator("#sessions tbody tr[data-session]")
    expect(ids).to_have_count(2)
    expect(row(page, "find-me-1")).to_be_visible()
    expect(row(page, "other-3")).to_be_visible()
    page.get_by_label("Search").fill("find-me")
    page.get_by_role("button", name="Show").click()
    expect(ids).to_have_count(2)
    expect(row(page, "find-me-2")).to_be_visible()
    page.get_by_label("State").select_option("closing")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_text("No session matches.")).to_be_visible()


def test_the_order_sorts_and_pages_move_by_cursor(page: Page, console_server: Server) -> None:
    for n in range(3):
        open_session(console_server, f"order-{n}", label="ordered")
    sign_in(page, console_server.admin_key)
    # Last activity, most recent first: the newest comes first.
    page.goto("/console/sessions?q=order-&order=activity")
    listed = page.locator("#sessions tbody tr[data-session]")
    expect(listed).to_have_count(3)
    assert listed.evaluate_all("rows => rows.map(r => r.dataset.session)") == [
        "order-2",
        "order-1",
        "order-0",
    ]
    page.get_by_label("Order").select_option("id")
    page.get_by_role("button", name="Show").click()
    expect(listed.first).to_have_attribute("data-session", "order-0")
    # A page is 50 sessions: more than that moves to the next page by its cursor.
    for n in range(52):
        open_session(console_server, f"paged-{n:02d}")
    page.goto("/console/sessions?q=paged-&order=id")
    expect(listed).to_have_count(50)
    expect(listed.last).to_have_attribute("data-session", "paged-49")
    page.get_by_role("link", name="Next page").click()
    expect(page).to_have_url(re.compile(r"cursor="))
    expect(listed).to_have_count(2)
    assert listed.evaluate_all("rows => rows.map(r => r.dataset.session)") == [
        "paged-50",
        "paged-51",
    ]
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    page.get_by_role("link", name="First page").click()
    expect(listed.first).to_have_attribute("data-session", "paged-00")


# -- a session's page ----------------------------------------------------------------------


def test_the_session_page_shows_a_png_thumbnail_its_hash_and_size_and_downloads_exact_bytes(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "pictures", metadata={"camera": "north"})
    data = picture()
    made = upload(console_server, "pictures", token, "shot.png", data, "image/png")
    sign_in(page, console_server.admin_key)
    page.goto("/console/sessions")
    row(page, "pictures").get_by_role("link", name="pictures", exact=True).click()
    expect(page).to_have_title("Session pictures · ephemera")
    listed = page.locator(f'#artifacts tr[data-artifact="{made["id"]}"]')
    thumb = listed.get_by_role("img", name="shot.png")
    expect(thumb).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    assert thumb.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [40, 24]
    digest = hashlib.sha256(data).hexdigest()
    expect(listed.locator("[data-sha256]")).to_have_text(digest)
    expect(listed.locator("[data-size]")).to_have_attribute("data-size", str(len(data)))
    expect(page.locator("#metadata")).to_contain_text('"camera": "north"')
    with page.expect_download() as download_info:
        listed.get_by_role("link", name="Download shot.png").click()
    saved = download_info.value.path()
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest


def test_a_session_past_its_deadline_is_shown_until_cleanup_without_its_bytes(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "lapsed", idle_timeout_s=2)
    upload(console_server, "lapsed", token, "shot.png", picture(), "image/png")
    time.sleep(2.5)
    gone = httpx.get(f"{console_server.api}/sessions/lapsed", headers=console_server.admin())
    assert gone.status_code == 404  # the API treats it as gone already
    sign_in(page, console_server.admin_key)
    page.goto("/console/sessions?q=lapsed")
    expect(row(page, "lapsed")).to_contain_text("open, past its deadline")
    page.goto("/console/sessions/lapsed")
    expect(page.locator("#state")).to_have_text("open, past its deadline")
    expect(page.locator("#artifacts")).to_contain_text("shot.png")
    expect(page.locator("#artifacts")).to_contain_text("its bytes are no longer served")
    expect(page.locator("#artifacts img")).to_have_count(0)
    expect(page.get_by_role("link", name=re.compile("Download"))).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Delete"))).to_have_count(0)


def test_a_tasks_progress_moves_on_the_page_without_a_reload(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "progress")
    sign_in(page, console_server.admin_key)
    page.goto("/console/sessions/progress")
    expect(page.locator("#tasks")).to_contain_text("No task.")
    page.evaluate("window.notReloaded = true")
    submitted = httpx.post(
        f"{console_server.api}/sessions/progress/tasks",
        headers=bearer(token),
        json={"processor": "sample-sleep", "params": {"seconds": 6}},
    )
    assert submitted.status_code in (201, 202), submitted.text
    task_id = submitted.json()["id"]
    task = page.locator(f'#tasks tr[data-task="{task_id}"]')
    expect(task.locator("[data-state]")).to_have_text("running", timeout=30_000)
    first = int(task.locator("[data-progress]").get_attribute("data-progress") or 0)
    page.wait_for_function(
        f"""() => {{
            const cell = document.querySelector('#tasks tr[data-task="{task_id}"] [data-progress]');
            return cell && Number(cell.dataset.progress) > {first};
        }}""",
        timeout=30_000,
    )
    expect(task.locator("[data-state]")).to_have_text("succeeded", timeout=15_000)
    expect(task).to_contain_text('"pid"')
    expect(task.get_by_role("link", name="ran-by.txt")).to_be_visible()
    assert page.evaluate("window.notReloaded") is True


def test_closing_from_the_page_with_confirmation_makes_the_api_answer_404(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "to-close", label="doomed")
    upload(console_server, "to-close", token, "a.bin", b"z" * 300, "application/octet-stream")
    sign_in(page, console_server.admin_key)
    page.goto("/console/sessions/to-close")
    page.get_by_role("link", name="Close this session…").click()
    expect(page).to_have_title("Close session to-close · ephemera")
    removes = page.locator("#removes")
    expect(removes).to_contain_text("1 artifact, 300 B (300 bytes)")
    expect(removes).to_contain_text("0 valid leases")
    expect(page.get_by_label(re.compile("Close it anyway"))).to_have_count(0)
    page.get_by_role("button", name="Close the session").click()
    expect(page).to_have_url(re.compile(r"/console/sessions\?closed=to-close"))
    expect(page.get_by_role("status")).to_contain_text("Session to-close was closed: 1 artifact")
    answer = httpx.get(f"{console_server.api}/sessions/to-close", headers=console_server.admin())
    assert answer.status_code == 404
    audit = httpx.get(
        f"{console_server.api}/admin/audit", headers=console_server.admin(), params={"limit": 500}
    ).json()["items"]
    [entry] = [e for e in audit if e["action"] == "session.close" and e["target"] == "to-close"]
    assert entry["actor"] == "admin:default"
    assert entry["params"]["force"] is False


def test_a_leased_session_closes_only_with_force(page: Page, console_server: Server) -> None:
    token = open_session(console_server, "leased")
    httpx.post(
        f"{console_server.api}/sessions/leased/leases", headers=bearer(token), json={"ttl_s": 600}
    ).raise_for_status()
    sign_in(page, console_server.admin_key)
    page.goto("/console/sessions/leased/close")
    expect(page.locator("#removes")).to_contain_text("1 valid lease")
    force = page.get_by_label(re.compile("Close it anyway"))
    expect(force).to_be_visible()
    page.get_by_role("button", name="Close the session").click()
    expect(page.get_by_role("alert")).to_contain_text("leased")
    still = httpx.get(f"{console_server.api}/sessions/leased", headers=console_server.admin())
    assert still.status_code == 200
    page.get_by_label(re.compile("Close it anyway")).check()
    page.get_by_role("button", name="Close the session").click()
    expect(page.get_by_role("status")).to_contain_text("Session leased was closed")
    gone = httpx.get(f"{console_server.api}/sessions/leased", headers=console_server.admin())
    assert gone.status_code == 404


def test_an_admin_deletes_an_artifact_from_the_page(page: Page, console_server: Server) -> None:
    token = open_session(console_server, "deleting")
    made = upload(console_server, "deleting", token, "old.txt", b"old", "text/plain")
    upload(console_server, "deleting", token, "keep.txt", b"keep", "text/plain")
    sign_in(page, console_server.admin_key)
    page.goto("/console/sessions/deleting")
    page.get_by_role("button", name="Delete old.txt").click()
    expect(page.get_by_role("status")).to_have_text("Artifact “old.txt” was deleted.")
    expect(page.locator(f'#artifacts tr[data-artifact="{made["id"]}"]')).to_have_count(0)
    answer = httpx.get(
        f"{console_server.api}/sessions/deleting/artifacts/{made['id']}", headers=bearer(token)
    )
    assert answer.status_code == 404
    left = httpx.get(f"{console_server.api}/sessions/deleting/artifacts", headers=bearer(token))
    assert [a["name"] for a in left.json()["items"]] == ["keep.txt"]
    audit = httpx.get(
        f"{console_server.api}/admin/audit", headers=console_server.admin(), params={"limit": 500}
    ).json()["items"]
    target = f"deleting/{made['id']}"
    [entry] = [e for e in audit if e["action"] == "artifact.delete" and e["target"] == target]
    assert entry["actor"] == "admin:default"


# -- a worker key's sign-in ----------------------------------------------------------------


def test_a_worker_key_sees_the_list_and_the_page_but_cannot_close_or_delete(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "watched", label="watched")
    made = upload(console_server, "watched", token, "w.txt", b"w", "text/plain")
    sign_in(page, create_key(console_server, "watcher", "worker"))
    page.goto("/console/sessions?q=watched")
    expect(row(page, "watched")).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("Close"))).to_have_count(0)
    page.goto("/console/sessions/watched")
    expect(page.locator(f'#artifacts tr[data-artifact="{made["id"]}"]')).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Delete"))).to_have_count(0)
    expect(page.get_by_role("link", name=re.compile("Close"))).to_have_count(0)
    expect(page.locator("form[method=post]")).to_have_count(1)  # signing out, only
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    assert csrf
    # Forged requests with the worker's own form token: refused, and nothing changes.
    forged: list[tuple[str, dict[str, str | float | bool]]] = [
        ("/console/sessions/watched/close", {"csrf": csrf, "force": "true"}),
        (f"/console/sessions/watched/artifacts/{made['id']}/delete", {"csrf": csrf}),
    ]
    for path, form in forged:
        answer = page.request.post(path, form=form)
        assert answer.status == 403, path
    assert page.request.get("/console/sessions/watched/close").status == 403
    still = httpx.get(f"{console_server.api}/sessions/watched/artifacts", headers=bearer(token))
    assert [a["id"] for a in still.json()["items"]] == [made["id"]]


# -- hostile text --------------------------------------------------------------------------


def test_hostile_labels_metadata_and_names_are_shown_as_text(
    page: Page, console_server: Server
) -> None:
    hostile = "<script>alert(1)</script>"
    token = open_session(
        console_server, "hostile", label=hostile, metadata={"note": f"<img src=x>{hostile}"}
    )
    name = "<img src=x onerror=alert(2)>.txt"  # a file name holds no slash
    upload(console_server, "hostile", token, name, b"h", "text/plain")
    dialogs: list[str] = []

    def seen(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", seen)
    sign_in(page, console_server.admin_key)
    page.goto("/console/sessions?q=hostile")
    expect(row(page, "hostile")).to_contain_text(hostile)
    page.goto("/console/sessions/hostile")
    expect(page.locator("#label")).to_have_text(hostile)
    expect(page.locator("#metadata")).to_contain_text(f"<img src=x>{hostile}")
    expect(page.locator("#artifacts")).to_contain_text(name)
    page.goto("/console/sessions/hostile/close")
    expect(page.locator("#removes")).to_contain_text(hostile)
    assert page.locator("main script").count() == 0
    assert page.locator("main img[src=x]").count() == 0
    assert dialogs == []
