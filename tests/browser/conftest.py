"""A real Chromium (Debian's, at /usr/bin/chromium) driven by Playwright against a real
``ephemera serve``. Playwright's own browser download is never used.

Outside CI a missing browser skips these tests with the reason; under ``CI=true`` it fails
them, so a CI run never passes without having run them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.cli import ephemera
from tests.conftest import Server, serving

CHROMIUM = Path(os.environ.get("EPHEMERA_TEST_CHROMIUM", "/usr/bin/chromium"))
# What a headless Chromium needs on a machine without a network or a screen (and as root).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module: Playwright's synchronous API keeps an event loop running in this thread
    while it is started, which other test files' ``asyncio.run`` must not find."""
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM} (apt install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser tests cannot run under CI: {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a module's tests: each test works in sessions of its own."""
    with serving(tmp_path_factory.mktemp("console") / "data") as running:
        yield running


@pytest.fixture
def context(browser: Browser, console_server: Server) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) against the module's server."""
    opened = browser.new_context(base_url=console_server.url)
    opened.set_default_timeout(15_000)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def sign_in(page: Page, key: str) -> None:
    """Sign in on the console's form, as a person would; returns once the answer (the page
    signed in to, or the form again with its error) has loaded."""
    page.goto("/console/sign-in")
    page.get_by_label("Key").fill(key)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def open_workspace(page: Page, sid: str, token: str) -> None:
    """Sign in on the "A session's workspace" form, as the person at a station would."""
    page.goto("/console/sign-in")
    page.get_by_label("Session ID").fill(sid)
    page.get_by_label("Token").fill(token)
    with page.expect_navigation():
        page.get_by_role("button", name="Open the workspace").click()


def create_key(server: Server, name: str, role: str) -> str:
    """A new key of ``role``, made with the CLI beside the running server."""
    command = {"admin": "admin-key", "worker": "worker-key", "client": "client-key"}[role]
    done = ephemera(command, "create", name, data_dir=server.data_dir)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def open_session(server: Server, sid: str, **fields: object) -> str:
    """A session made through the API; its token."""
    answer = httpx.post(
        f"{server.api}/sessions", headers=server.admin(), json={"id": sid, **fields}
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])
