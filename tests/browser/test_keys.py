"""The keys page: every key listed; an admin creates one (shown once) and revokes one after
confirming; a worker key's sign-in sees the list and changes nothing."""

from __future__ import annotations

import httpx2 as httpx
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import create_key, sign_in
from tests.conftest import Server


def audited(server: Server, action: str, target: str) -> list[dict[str, object]]:
    answer = httpx.get(
        f"{server.api}/admin/audit",
        headers=server.admin(),
        params={"action": action, "limit": 500},
    )
    answer.raise_for_status()
    return [e for e in answer.json()["items"] if e["target"] == target]


def fresh_page(browser: Browser, server: Server) -> Page:
    return browser.new_context(base_url=server.url).new_page()


def csrf_of(page: Page) -> str:
    return page.locator("form.sign-out input[name=csrf]").get_attribute("value") or ""


def test_every_key_is_listed_with_its_role(page: Page, console_server: Server) -> None:
    create_key(console_server, "listed-worker", "worker")
    create_key(console_server, "listed-client", "client")
    sign_in(page, console_server.admin_key)
    page.goto("/console/keys")
    expect(page).to_have_title("Keys · ephemera")
    for name, role in (
        ("default", "admin"),
        ("listed-worker", "worker"),
        ("listed-client", "client"),
    ):
        row = page.locator(f"#key-{role}-{name}")
        expect(row.locator("td").nth(0)).to_contain_text(name)
        expect(row.locator("td").nth(1)).to_have_text(role)
    expect(page.locator("#key-admin-default td").first).to_have_text("default (you)")


def test_a_created_worker_key_is_shown_once_signs_in_read_only_and_stops_when_revoked(
    page: Page, browser: Browser, console_server: Server
) -> None:
    sign_in(page, console_server.admin_key)
    page.goto("/console/keys")
    page.get_by_label("Name").fill("made-on-page")
    page.get_by_label("Role").select_option("worker")
    page.get_by_label("Expires in").fill("30d")
    page.get_by_role("button", name="Create the key").click()
    expect(page.get_by_role("alert")).to_contain_text("shown this once")
    key = page.get_by_label("The worker key made-on-page").input_value()
    expect(page.get_by_text("It stops working at")).to_be_visible()
    assert len(key) > 40
    [entry] = audited(console_server, "worker-key.create", "made-on-page")
    assert entry["actor"] == "admin:default"
    assert entry["params"] == {"expires_in_s": 30 * 86400}
    # Shown once: the same page again does not show it.
    answer = page.reload()
    assert answer is not None
    assert answer.status == 404
    assert key not in page.content()

    worker = fresh_page(browser, console_server)
    try:
        sign_in(worker, key)
        expect(worker.get_by_text("made-on-page (read-only)")).to_be_visible()
        worker.goto("/console/keys")
        expect(worker.locator("#key-worker-made-on-page td").first).to_have_text(
            "made-on-page (you)"
        )
        expect(worker.get_by_role("button", name="Create the key")).to_have_count(0)
        expect(worker.get_by_role("link", name="Revoke…")).to_have_count(0)

        page.goto("/console/keys")
        page.get_by_role("link", name="Revoke worker key made-on-page").click()
        expect(
            page.get_by_role("heading", name="Revoke the worker key made-on-page?")
        ).to_be_visible()
        page.get_by_role("button", name="Revoke made-on-page").click()
        expect(page.get_by_role("status")).to_have_text(
            "Revoked made-on-page: it no longer opens anything."
        )
        expect(page.locator("#key-worker-made-on-page")).to_have_count(0)
        assert audited(console_server, "worker-key.revoke", "made-on-page")

        worker.reload()
        expect(worker).to_have_title("Sign in · ephemera")
        sign_in(worker, key)
        expect(worker.get_by_role("alert")).to_have_text("That key does not open the console.")
    finally:
        worker.context.close()


def test_a_worker_key_cannot_create_or_revoke_keys(page: Page, console_server: Server) -> None:
    key = create_key(console_server, "keys-watcher", "worker")
    create_key(console_server, "keys-target", "worker")
    sign_in(page, key)
    page.goto("/console/keys")
    csrf = csrf_of(page)
    made = page.request.post(
        "/console/keys",
        form={"csrf": csrf, "name": "by-a-worker", "role": "admin"},
        max_redirects=0,
    )
    assert made.status == 403
    revoked = page.request.post(
        "/console/keys/worker/keys-target/revoke", form={"csrf": csrf}, max_redirects=0
    )
    assert revoked.status == 403
    confirm = page.request.get("/console/keys/worker/keys-target/revoke")
    assert confirm.status == 403
    page.reload()
    expect(page.locator("#key-worker-keys-target")).to_be_visible()
    expect(page.locator("#key-admin-by-a-worker")).to_have_count(0)


def test_a_key_change_without_the_form_token_is_refused(page: Page, console_server: Server) -> None:
    sign_in(page, console_server.admin_key)
    answer = page.request.post("/console/keys", form={"name": "forged", "role": "admin"})
    assert answer.status == 403
    assert not audited(console_server, "admin-key.create", "forged")


def test_the_revocation_notice_echoes_only_a_key_name(page: Page, console_server: Server) -> None:
    sign_in(page, console_server.admin_key)
    page.goto("/console/keys?revoked=everything%20is%20fine")
    expect(page.get_by_role("status")).to_have_count(0)
    page.goto("/console/keys?revoked=some-key")
    expect(page.get_by_role("status")).to_have_text(
        "Revoked some-key: it no longer opens anything."
    )


def test_a_bad_key_name_is_refused_with_the_reason(page: Page, console_server: Server) -> None:
    sign_in(page, console_server.admin_key)
    answer = page.request.post(
        "/console/keys", form={"csrf": csrf_of(page), "name": "no spaces", "role": "worker"}
    )
    assert answer.status == 422
    assert "key name must be" in answer.text()
