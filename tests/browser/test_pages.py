"""What every console page owes its users, checked on each page in Chromium: no script or
style refused by the Content-Security-Policy (the pages need none inline), a title, a label
on every control, focus that shows, a layout that fits 1280 px and a phone, and reading that
works without JavaScript."""

from __future__ import annotations

import httpx2 as httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.browser.conftest import open_session, open_workspace, sign_in
from tests.conftest import Server
from tests.images import png

SID = "pages"
OPERATOR_PAGES = (
    "/console/",
    "/console/sessions",
    f"/console/sessions/{SID}",
    f"/console/sessions/{SID}/close",
    "/console/cleanup",
    "/console/audit",
    "/console/keys",
)


@pytest.fixture(scope="module")
def seeded(console_server: Server) -> str:
    """A session with a picture in it, so that pages have rows to show; its token."""
    token = open_session(console_server, SID, label="<b>label</b> & more")
    uploaded = httpx.post(
        f"{console_server.api}/sessions/{SID}/artifacts",
        params={"name": "picture.png", "kind": "input"},
        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
        content=png(np.full((48, 64, 3), 128, dtype=np.uint8)),
    )
    assert uploaded.status_code == 201, uploaded.text
    return token


def unlabelled(page: Page) -> list[str]:
    """The form controls no label names."""
    found: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
              .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label')
                           && !c.getAttribute('aria-labelledby'))
              .map(c => c.outerHTML)"""
    )
    return found


def overflow(page: Page) -> int:
    """How much wider than the screen the page is."""
    wider: int = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return wider


def refusals(page: Page) -> list[str]:
    """What the browser refused under the page's policy, as it reports it."""
    refused: list[str] = []

    def seen(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            refused.append(message.text)

    page.on("console", seen)
    return refused


@pytest.mark.parametrize("path", OPERATOR_PAGES)
def test_an_operator_page_runs_under_its_policy_with_a_title_and_labels(
    page: Page, console_server: Server, seeded: str, path: str
) -> None:
    refused = refusals(page)
    sign_in(page, console_server.admin_key)
    answer = page.goto(path)
    assert answer is not None
    assert answer.status == 200, path
    page.wait_for_load_state("networkidle")
    assert refused == []
    assert page.title().endswith(" · ephemera")
    assert page.locator("h1").count() == 1
    assert unlabelled(page) == []


def test_the_workspace_runs_under_its_policy_with_a_title_and_labels_and_fits_a_phone(
    page: Page, console_server: Server, seeded: str
) -> None:
    refused = refusals(page)
    page.set_viewport_size({"width": 375, "height": 800})
    open_workspace(page, SID, seeded)
    expect(page).to_have_url(f"{console_server.url}/console/workspace/{SID}")
    for path in (f"/console/workspace/{SID}", f"/console/workspace/{SID}/reset"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        assert page.title().endswith(" · ephemera")
        assert page.locator("h1").count() == 1
        assert unlabelled(page) == [], path
        assert overflow(page) <= 0, path
    assert refused == []


def test_the_sign_in_page_labels_its_controls_and_fits_a_phone(page: Page) -> None:
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/console/sign-in")
    assert unlabelled(page) == []
    assert overflow(page) <= 0


@pytest.mark.parametrize("width", [1280, 375])
def test_pages_fit_the_screen_from_a_desktop_to_a_phone(
    page: Page, console_server: Server, seeded: str, width: int
) -> None:
    page.set_viewport_size({"width": width, "height": 800})
    sign_in(page, console_server.admin_key)
    for path in OPERATOR_PAGES:
        page.goto(path)
        wider = overflow(page)
        assert wider <= 0, f"{path} is {wider} px wider than a {width} px screen"


def test_the_keyboard_reaches_the_content_with_a_visible_focus(
    page: Page, console_server: Server, seeded: str
) -> None:
    sign_in(page, console_server.admin_key)
    page.goto("/console/sessions")
    page.keyboard.press("Tab")
    focused = page.evaluate("() => document.activeElement.textContent")
    assert focused == "Skip to the content"
    # The console's own ring, not only the browser's default one.
    style = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, s.outlineWidth]; }"
    )
    assert style == ["solid", "3px"]


def test_pages_read_without_javascript(
    browser: Browser, console_server: Server, seeded: str
) -> None:
    context = browser.new_context(base_url=console_server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, console_server.admin_key)
        page.goto("/console/sessions")
        expect(page.get_by_role("link", name=SID, exact=True)).to_be_visible()
        page.goto(f"/console/sessions/{SID}")
        expect(page.get_by_role("link", name="Download picture.png")).to_be_visible()
        # A label is text, never markup.
        expect(page.get_by_text("<b>label</b> & more")).to_be_visible()
        page.goto("/console/audit")
        expect(page.get_by_role("heading", name="Audit")).to_be_visible()
    finally:
        context.close()
