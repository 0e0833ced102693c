"""Signing in to the console: keys, tokens, refusals, the cookie, signing out."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from ephemera.console.auth import safe_next
from tests.browser.conftest import create_key, sign_in
from tests.conftest import Server, serving

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def audit_actions(server: Server, action: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{server.api}/admin/audit", headers=server.admin(), params={"limit": 500})
    answer.raise_for_status()
    return [e for e in answer.json()["items"] if e["action"] == action]


def test_the_root_leads_to_sign_in_and_the_admin_key_opens_the_overview(
    page: Page, console_server: Server
) -> None:
    page.goto("/")
    expect(page).to_have_url(f"{console_server.url}/console/sign-in?next=%2Fconsole%2F")
    expect(page).to_have_title("Sign in · ephemera")
    sign_in(page, console_server.admin_key)
    expect(page).to_have_url(f"{console_server.url}/console/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_text("default", exact=True)).to_be_visible()


def test_the_sign_in_cookie_is_http_only_strict_and_scoped_to_the_console(
    page: Page, context: BrowserContext, console_server: Server
) -> None:
    sign_in(page, console_server.admin_key)
    [cookie] = [c for c in context.cookies() if c["name"] == "ephemera_console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    assert cookie["expires"] > 0  # a lasting cookie with an expiry, not a browser session's
    # The cookie is no credential for the API.
    answer = httpx.get(
        f"{console_server.api}/admin/sessions", cookies={"ephemera_console": cookie["value"]}
    )
    assert answer.status_code == 401


def test_a_wrong_key_is_refused_and_audited(page: Page, console_server: Server) -> None:
    before = len(audit_actions(console_server, "console.sign_in_failed"))
    sign_in(page, "eph_admin_" + "x" * 43)
    expect(page.get_by_role("alert")).to_have_text("That key does not open the console.")
    expect(page).to_have_url(f"{console_server.url}/console/sign-in")
    page.goto("/console/")
    expect(page).to_have_title("Sign in · ephemera")
    assert len(audit_actions(console_server, "console.sign_in_failed")) == before + 1


def test_signing_out_ends_the_sign_in_on_the_server(
    page: Page, context: BrowserContext, console_server: Server
) -> None:
    sign_in(page, console_server.admin_key)
    [cookie] = [c for c in context.cookies() if c["name"] == "ephemera_console"]
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_title("Sign in · ephemera")
    # The old cookie, replayed, opens nothing: the sign-in was revoked server-side.
    answer = httpx.get(
        f"{console_server.url}/console/",
        cookies={"ephemera_console": cookie["value"]},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/console/sign-in")


def test_revoking_the_key_signs_its_browsers_out(page: Page, console_server: Server) -> None:
    key = create_key(console_server, "short-lived", "admin")
    sign_in(page, key)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    from tests.cli import ephemera

    done = ephemera("admin-key", "revoke", "short-lived", data_dir=console_server.data_dir)
    assert done.returncode == 0, done.stderr
    page.reload()
    expect(page).to_have_title("Sign in · ephemera")


def test_pages_carry_a_strict_content_security_policy(page: Page, console_server: Server) -> None:
    answer = page.goto("/console/sign-in")
    assert answer is not None
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy
    assert answer.headers["x-content-type-options"] == "nosniff"
    # No inline script anywhere: every <script> has a src.
    assert page.locator("script:not([src])").count() == 0


def test_a_sign_in_posted_from_another_site_is_refused(console_server: Server) -> None:
    answer = httpx.post(
        f"{console_server.url}/console/sign-in",
        data={"key": console_server.admin_key, "csrf": "x"},
        headers={"Origin": "https://evil.example"},
        cookies={"ephemera_console_pre": "x"},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert "ephemera_console" not in answer.cookies


def test_a_form_too_large_or_of_unknown_length_is_refused_before_it_is_read(
    console_server: Server,
) -> None:
    """No sign-in needed to try: the body is refused by its declared length, unread."""
    url = f"{console_server.url}/console/sign-in"
    big = httpx.post(url, content=b"key=" + b"x" * (2 * 1024 * 1024), headers=FORM)
    assert big.status_code == 413
    chunked = httpx.post(url, content=iter([b"key=", b"x" * 10]), headers=FORM)
    assert chunked.status_code == 411


@pytest.mark.parametrize(
    ("asked", "led_to"),
    [
        ("/console/sessions?q=a", "/console/sessions?q=a"),
        ("//evil.example/console/", "/console/"),
        ("https://evil.example/console/", "/console/"),
        ("/console//evil.example", "/console/"),
        ("/console/\\evil.example", "/console/"),
        ("/api/v1/admin/sessions", "/console/"),
        (None, "/console/"),
    ],
)
def test_signing_in_leads_back_only_within_the_console(asked: str | None, led_to: str) -> None:
    assert safe_next(asked) == led_to


def test_failed_sign_ins_are_throttled_per_address(tmp_path: Path) -> None:
    """Guessing stops at the limit: the next try answers 429 even with the right key."""
    env = {"EPHEMERA_AUTH_FAILURES_PER_MINUTE": "3"}
    with (
        serving(tmp_path / "data", env) as server,
        httpx.Client(base_url=server.url, follow_redirects=False) as browser,
    ):
        form = browser.get("/console/sign-in")
        pre = form.cookies["ephemera_console_pre"]
        for _ in range(3):
            refused = browser.post("/console/sign-in", data={"key": "eph_admin_wrong", "csrf": pre})
            assert refused.status_code == 401
        throttled = browser.post("/console/sign-in", data={"key": server.admin_key, "csrf": pre})
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) >= 1
        assert "ephemera_console" not in throttled.cookies
