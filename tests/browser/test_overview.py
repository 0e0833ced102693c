"""The console's overview: the figures are the API's, the lists lead to the sessions, the
charts draw every usage sample, and it reads the same without JavaScript, for a worker key,
and on a phone."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx2 as httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from ephemera.console.overview import STATS_TTL_S
from tests.browser.conftest import create_key, open_session, open_workspace, sign_in
from tests.conftest import Server, bearer, serving
from tests.waiting import wait_for

OPERATIONS = ("expired", "idle-sessions", "old-results", "quota")


def upload(server: Server, sid: str, token: str, size: int, **params: Any) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.api}/sessions/{sid}/artifacts",
        params={"name": f"{size}.bin", **params},
        content=b"x" * size,
        headers=bearer(token),
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def api(server: Server, path: str, **params: Any) -> dict[str, Any]:
    answer = httpx.get(f"{server.api}{path}", headers=server.admin(), params=params)
    answer.raise_for_status()
    return dict(answer.json())


def count_of(page: Page, selector: str) -> int:
    return int(page.locator(selector).inner_text().replace(",", ""))


def bytes_of(page: Page, selector: str) -> int:
    """The exact byte count behind a size shown for people (``<data value>``)."""
    return int(page.locator(f"{selector} data").get_attribute("value") or "-1")


@pytest.fixture(scope="module")
def cleanable(console_server: Server) -> dict[str, Any]:
    """Something for each of two operations to clean: a temporary artifact past its
    expiry, and a session past its idle timeout (the scheduler's next tick is 15 min away)."""
    token = open_session(console_server, "ov-temporary")
    upload(console_server, "ov-temporary", token, 700, storage="temporary", expires_in_s=1)
    upload(console_server, "ov-temporary", token, 300)
    idle = open_session(console_server, "ov-idle", idle_timeout_s=1)
    upload(console_server, "ov-idle", idle, 1200)

    def both_due() -> dict[str, Any]:
        stats = api(console_server, "/admin/cleanup/stats")
        due = stats["cleanable"]
        return stats if due["expired"]["count"] and due["idle-sessions"]["count"] else {}

    return wait_for(both_due, 15, "an expired artifact and an idle session", interval_s=0.5)


def test_the_figures_are_the_apis_storage_cleanable_counts_and_totals(
    page: Page, console_server: Server, cleanable: dict[str, Any]
) -> None:
    sign_in(page, console_server.admin_key)
    expect(page).to_have_title("Overview · ephemera")
    stats = api(console_server, "/admin/cleanup/stats")
    totals = api(console_server, "/admin/sessions", limit=1)["totals"]
    # Something is cleanable, so the comparison below compares something.
    assert stats["cleanable"]["expired"]["count"] >= 1
    assert stats["cleanable"]["idle-sessions"]["count"] >= 1

    for entry in stats["artifacts"]:
        row = f"#artifacts-{entry['storage_class']}-{entry['state']}"
        assert count_of(page, f"{row} .count") == entry["count"], row
        assert bytes_of(page, f"{row} .bytes") == entry["bytes"], row
    expect(page.locator("#artifacts-by-class tbody tr")).to_have_count(len(stats["artifacts"]))
    for state, count in stats["sessions"].items():
        assert count_of(page, f"#sessions-{state} .count") == count, state
    for operation in OPERATIONS:
        row = f"#cleanable-{operation}"
        assert count_of(page, f"{row} .count") == stats["cleanable"][operation]["count"]
        assert bytes_of(page, f"{row} .bytes") == stats["cleanable"][operation]["bytes"]
        link = page.locator(row).get_by_role("link", name=f"Review {operation}")
        expect(link).to_have_attribute("href", f"/console/cleanup?operation={operation}")
    for state, count in stats["tasks"].items():
        assert count_of(page, f"#tasks-{state} .count") == count, state
    assert count_of(page, "#total-sessions") == totals["sessions"]
    assert count_of(page, "#total-artifacts") == totals["artifacts"]
    assert bytes_of(page, "#total-bytes") == totals["bytes"]


def test_the_last_run_of_each_operation_and_the_next_scheduled_one_are_shown(
    page: Page, console_server: Server
) -> None:
    sign_in(page, console_server.admin_key)
    runs = api(console_server, "/admin/cleanup/stats")["last_runs"]
    # The scheduler ran `all` at start-up: every operation has a last run.
    assert {"all", *OPERATIONS} <= set(runs)
    for operation, run in runs.items():
        row = page.locator(f"#last-run-{operation}")
        expect(row.locator("td").nth(1)).to_have_text(run["actor"])
        assert count_of(page, f"#last-run-{operation} .count") == run["result"]["deleted_count"]
        assert (
            bytes_of(page, f"#last-run-{operation} .bytes") == (run["result"]["deleted_size_bytes"])
        )
    expect(page.locator("#next-tick")).to_contain_text("Next scheduled cleanup:")
    expect(page.locator("#next-tick")).to_contain_text("every 15 min")


def shown_once_fresh(page: Page, table: str, expected: list[tuple[str, int]]) -> None:
    """The overview's figures are shared for STATS_TTL_S and dropped at once only by cleanup
    and verification runs: a change of another kind shows within that time."""

    def shown() -> bool:
        page.goto("/console/")
        return listed_sessions(page, table) == expected

    wait_for(shown, STATS_TTL_S * 3, lambda: f"{table}: {listed_sessions(page, table)}")


def listed_sessions(page: Page, table: str) -> list[tuple[str, int]]:
    """(ID, bytes) of each row of one of the overview's session tables, in order."""
    rows = page.locator(f"#{table} tbody tr")
    return [
        (
            rows.nth(i).get_by_role("link").inner_text(),
            int(rows.nth(i).locator(".bytes data").get_attribute("value") or -1),
        )
        for i in range(rows.count())
    ]


def test_the_largest_sessions_come_largest_first_and_lead_to_their_pages(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "ov-largest", label="<b>biggest</b>")
    upload(console_server, "ov-largest", token, 40_000)
    upload(console_server, "ov-largest", token, 25_000)
    upload(console_server, "ov-smaller", open_session(console_server, "ov-smaller"), 20_000)
    listed = api(console_server, "/admin/sessions", limit=1000)["items"]
    by_size = sorted(
        (s for s in listed if s["artifact_count"]), key=lambda s: (-s["total_bytes"], s["id"])
    )
    assert by_size[0]["id"] == "ov-largest"

    sign_in(page, console_server.admin_key)
    shown_once_fresh(page, "largest", [(s["id"], s["total_bytes"]) for s in by_size[:10]])
    first = page.locator("#largest tbody tr").first
    link = first.get_by_role("link", name="ov-largest")
    expect(link).to_have_attribute("href", "/console/sessions/ov-largest")
    expect(first).to_contain_text("<b>biggest</b>")  # a label is text, never markup
    assert int(first.locator(".count").inner_text()) == 2


def test_the_idlest_open_sessions_come_oldest_activity_first(
    page: Page, console_server: Server
) -> None:
    for number in range(11):  # more than are listed: the ten idlest are chosen
        open_session(console_server, f"ov-idle-{number}")
    listed = api(console_server, "/admin/sessions", limit=1000)["items"]
    idlest = sorted(
        (s for s in listed if s["state"] == "open"),
        key=lambda s: datetime.fromisoformat(s["last_activity_at"]),
    )

    sign_in(page, console_server.admin_key)
    shown_once_fresh(page, "idlest", [(s["id"], s["total_bytes"]) for s in idlest[:10]])
    first = page.locator("#idlest tbody tr").first
    expect(first.get_by_role("link")).to_have_attribute(
        "href", f"/console/sessions/{idlest[0]['id']}"
    )


def test_the_figures_refresh_in_place(page: Page, console_server: Server) -> None:
    token = open_session(console_server, "ov-refresh")
    complaints: list[str] = []
    # (The browser's own /favicon.ico request is not the page's: only its requests count.)
    page.on("console", lambda m: complaints.append(m.text) if "Policy" in m.text else None)
    page.on("response", lambda r: complaints.append(r.url) if r.status >= 400 else None)
    sign_in(page, console_server.admin_key)
    before = count_of(page, "#total-artifacts")
    upload(console_server, "ov-refresh", token, 10)

    # The figures may be a few seconds old: ask again (as the 30 s timer would) until the
    # new artifact shows, without reloading the page.
    page.evaluate("window.overviewLoaded = true")

    def refreshed() -> bool:
        page.evaluate("htmx.trigger('#overview-figures', 'refresh')")
        page.wait_for_timeout(300)
        return count_of(page, "#total-artifacts") == before + 1

    wait_for(refreshed, 15, "the new artifact in the figures")
    assert page.evaluate("window.overviewLoaded") is True  # the same page, not reloaded
    assert complaints == []  # nothing refused by the Content Security Policy, no failed request


def test_a_worker_keys_sign_in_sees_the_overview_and_can_change_nothing(
    page: Page, console_server: Server
) -> None:
    key = create_key(console_server, "overview-watcher", "worker")
    sign_in(page, key)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_text("overview-watcher (read-only)")).to_be_visible()
    expect(page.locator("#cleanable-expired")).to_be_visible()
    # Its only form is signing out.
    expect(page.locator("main form")).to_have_count(0)
    assert page.request.get("/console/overview/figures").status == 200


def test_a_session_token_is_led_to_its_workspace_not_the_overview(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "ov-own")
    open_workspace(page, "ov-own", token)
    page.goto("/console/")
    expect(page).to_have_url(f"{console_server.url}/console/workspace/ov-own")
    answer = page.request.get("/console/overview/figures")
    assert answer.status == 403


def test_the_overview_reads_without_javascript_and_fits_a_phone(
    browser: Browser, console_server: Server
) -> None:
    context = browser.new_context(
        base_url=console_server.url,
        java_script_enabled=False,
        viewport={"width": 360, "height": 740},
    )
    try:
        page = context.new_page()
        sign_in(page, console_server.admin_key)
        expect(page.get_by_role("heading", name="Cleanable now")).to_be_visible()
        expect(page.locator("#total-sessions")).not_to_be_empty()
        expect(page.locator("#chart-bytes")).to_be_visible()
        # Nothing wider than the screen: wide tables scroll inside their own box.
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
    finally:
        context.close()


# -- the usage charts, on a server whose scheduler ticks every 2 s ----------------------------


@pytest.fixture(scope="module")
def ticking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("ticking") / "data"
    with serving(data, {"EPHEMERA_CLEANUP_INTERVAL_S": "2"}) as running:
        yield running


def recorded_samples(server: Server) -> int:
    """The usage samples in the server's database (SQLite, read beside it)."""
    database = server.data_dir / "ephemera.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        (count,) = conn.execute("SELECT count(*) FROM usage_samples").fetchone()
    return int(count)


def points_of(page: Page, chart: str) -> int:
    points = page.locator(f"{chart} polyline").get_attribute("points") or ""
    return len(points.split())


def test_the_charts_draw_every_sample_the_scheduler_recorded(
    browser: Browser, ticking_server: Server
) -> None:
    token = open_session(ticking_server, "ov-chart")
    upload(ticking_server, "ov-chart", token, 5000)
    wait_for(lambda: recorded_samples(ticking_server) >= 4, 30, "four usage samples")
    context = browser.new_context(base_url=ticking_server.url)
    try:
        page = context.new_page()
        sign_in(page, ticking_server.admin_key)
        for _ in range(5):
            # A tick may land while the page renders: count again until none did.
            before = recorded_samples(ticking_server)
            page.goto("/console/?span=1h")
            drawn = {c: points_of(page, f"#chart-{c}") for c in ("bytes", "artifacts", "sessions")}
            if recorded_samples(ticking_server) == before:
                break
        assert drawn == {"bytes": before, "artifacts": before, "sessions": before}
        assert before >= 4
        chart = page.get_by_role("img", name="Bytes stored, last 1h")
        expect(chart.locator("desc")).to_contain_text(f"{before} samples from")
        expect(chart.locator("desc")).to_contain_text("latest 4.9 KiB")
        expect(page.locator("#next-tick")).to_contain_text("every 2 s")
    finally:
        context.close()
