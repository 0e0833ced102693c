"""A session's workspace in the console: what its token opens, uploads over tus, running
roi-compare from the generated form, its result, and Reset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx2 as httpx
import pytest
from playwright.sync_api import Browser, FilePayload, Page, expect

from tests.browser.conftest import create_key, open_session, open_workspace, sign_in
from tests.conftest import WITH_SAMPLES_ENV, Server, serving
from tests.images import inspection_scene, png

KEPT = (".db", ".db-wal", ".db-shm", ".log", ".key")


def stored_files(server: Server) -> set[Path]:
    """Every file and folder under the data directory but the database and the keys."""
    return {
        path.relative_to(server.data_dir)
        for path in server.data_dir.rglob("*")
        if not path.name.endswith(KEPT)
    }


def artifacts_by_name(server: Server, sid: str) -> dict[str, dict[str, object]]:
    answer = httpx.get(f"{server.api}/sessions/{sid}/artifacts", headers=server.admin())
    answer.raise_for_status()
    return {str(a["name"]): a for a in answer.json()["items"]}


def test_a_session_token_opens_only_that_sessions_workspace(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "ws-own")
    open_session(console_server, "ws-other")
    open_workspace(page, "ws-own", token)
    expect(page).to_have_url(f"{console_server.url}/console/workspace/ws-own")
    expect(page).to_have_title("Workspace ws-own · ephemera")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    assert csrf

    # Another session's workspace is as absent as a missing one.
    answer = page.goto("/console/workspace/ws-other")
    assert answer is not None
    assert answer.status == 404
    missing = page.goto("/console/workspace/no-such-session")
    assert missing is not None
    assert missing.status == 404
    # Nor does the sign-in upload into it over tus, even with the form's token.
    refused = page.request.post(
        "/console/sessions/ws-other/uploads",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "3",
            "Upload-Metadata": "filename YS50eHQ=",
            "X-CSRF-Token": csrf,
        },
    )
    assert refused.status == 404
    assert artifacts_by_name(console_server, "ws-other") == {}

    # The console's home leads the token holder to their own workspace.
    page.goto("/console/")
    expect(page).to_have_url(f"{console_server.url}/console/workspace/ws-own")


def test_a_worker_keys_sign_in_sees_a_workspace_but_cannot_upload_into_it(
    page: Page, console_server: Server
) -> None:
    open_session(console_server, "ws-watched")
    sign_in(page, create_key(console_server, "watcher", "worker"))
    answer = page.goto("/console/workspace/ws-watched")
    assert answer is not None
    assert answer.status == 200
    expect(page.get_by_role("heading", name="Artifacts")).to_be_visible()
    expect(page.get_by_label("Files")).to_have_count(0)
    expect(page.get_by_role("link", name="Reset…")).to_have_count(0)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    assert csrf
    refused = page.request.post(
        "/console/sessions/ws-watched/uploads",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "3",
            "Upload-Metadata": "filename YS50eHQ=",
            "X-CSRF-Token": csrf,
        },
    )
    assert refused.status == 403
    assert artifacts_by_name(console_server, "ws-watched") == {}


def test_a_run_form_the_schema_or_the_processor_refuses_comes_back_with_the_reasons(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "ws-typo")
    capture = httpx.post(
        f"{console_server.api}/sessions/ws-typo/artifacts",
        params={"name": "capture.png"},
        content=png(inspection_scene(size=(64, 48), grid=(1, 1), region_size=(16, 16)).image),
        headers=console_server.admin(),
    ).json()["id"]
    open_workspace(page, "ws-typo", token)
    page.goto("/console/workspace/ws-typo/run?processor=roi-compare")
    page.get_by_label("Capture (required)").select_option(capture)
    regions = page.get_by_label("Regions (required)")
    regions.fill('[{"name": "r0",')
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Run roi-compare").click()
    assert posted.value.status == 422
    expect(page.get_by_role("alert")).to_contain_text("Regions: not valid JSON")
    expect(regions).to_have_value('[{"name": "r0",')  # what was typed stays
    expect(regions).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Capture (required)")).to_have_value(capture)
    # Valid JSON, but not what roi-compare takes: its own model's words.
    box = {"x": 0, "y": 0, "width": 8, "height": 8}
    regions.fill(json.dumps([{"name": "r0", "box": box, "goldens": [capture]}]))
    page.get_by_role("button", name="Run roi-compare").click()
    expect(page.get_by_role("alert")).to_contain_text("regions.0.threshold: Field required")
    tasks = httpx.get(
        f"{console_server.api}/sessions/ws-typo/tasks", headers=console_server.admin()
    ).json()
    assert tasks["items"] == []


def test_a_station_uploads_runs_roi_compare_downloads_an_output_and_resets(
    page: Page, console_server: Server, tmp_path: Path
) -> None:
    before = stored_files(console_server)
    scene = inspection_scene(size=(360, 240), grid=(2, 1), region_size=(120, 100), seed=5)
    files = {
        "capture.png": png(scene.with_defect("r1")),
        "golden-r0.png": png(scene.golden("r0")),
        "golden-r1.png": png(scene.golden("r1")),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    token = open_session(console_server, "station-7")
    open_workspace(page, "station-7", token)

    # Three images through the file input: each goes over tus, with its own progress bar.
    page.get_by_label("Files").set_input_files([tmp_path / name for name in files])
    expect(page.locator("#upload-list progress")).to_have_count(3)
    expect(page.locator("#upload-list li.done")).to_have_count(3)
    expect(page.locator("#artifacts tbody tr")).to_have_count(3)
    stored = artifacts_by_name(console_server, "station-7")
    assert set(stored) == set(files)
    for name, data in files.items():
        assert stored[name]["sha256"] == hashlib.sha256(data).hexdigest()
    ids = {name: str(a["id"]) for name, a in stored.items()}

    # roi-compare, from the form its schema generates.
    page.get_by_label("Processor", exact=True).select_option("roi-compare")
    page.get_by_role("button", name="Choose").click()
    expect(page).to_have_title("Run roi-compare · ephemera")
    page.get_by_label("Capture (required)").select_option(ids["capture.png"])
    regions = [
        {
            "name": name,
            "box": scene.box(name),
            "goldens": [ids[f"golden-{name}.png"]],
            "method": "ncc",
            "threshold": 0.9,
        }
        for name in ("r0", "r1")
    ]
    page.get_by_label("Regions (required)").fill(json.dumps(regions))
    page.get_by_role("button", name="Run roi-compare").click()

    # The task's page follows it to its end and shows each region's verdict.
    expect(page.locator("#task-state")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator('[data-region="r0"] h3')).to_have_text("Region r0: pass")
    expect(page.locator('[data-region="r1"] h3')).to_have_text("Region r1: fail")
    expect(page.locator("#verdict")).to_have_text("Overall: FAIL")
    for region in ("r0", "r1"):
        pictures = page.locator(f'[data-region="{region}"] img')
        expect(pictures).to_have_count(2)  # the crop and its golden, side by side
        expect(pictures.nth(0)).to_have_attribute("alt", f"Crop of region {region}")
        expect(pictures.nth(1)).to_have_attribute("alt", f"Golden 1 of region {region}")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.region img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )

    # One output, downloaded: the bytes the API records.
    task_id = page.url.rsplit("/", 1)[-1]
    task = httpx.get(
        f"{console_server.api}/sessions/station-7/tasks/{task_id}", headers=console_server.admin()
    ).json()
    crop = next(r["crop"] for r in task["result"]["regions"] if r["name"] == "r1")
    with page.expect_download() as download:
        page.locator('[data-region="r1"] figcaption a').first.click()
    assert download.value.suggested_filename == "r1.crop.png"
    saved = Path(download.value.path())
    recorded = httpx.get(
        f"{console_server.api}/sessions/station-7/artifacts/{crop['artifact_id']}",
        headers=console_server.admin(),
    ).json()
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == recorded["sha256"]

    # Reset, confirmed: nothing of the session is left, on disk or in the API.
    page.get_by_role("link", name="Back to the workspace").click()
    page.get_by_role("link", name="Reset…").click()
    expect(page.get_by_role("heading", name="Reset the session")).to_be_visible()
    page.get_by_role("button", name="Reset the session").click()
    expect(page.get_by_role("heading", name="Session reset")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Nothing of it is kept")
    assert stored_files(console_server) == before
    gone = httpx.get(f"{console_server.api}/sessions/station-7", headers=console_server.admin())
    assert gone.status_code == 404
    # The browser's sign-in ended with the session.
    page.goto("/console/workspace/station-7")
    expect(page).to_have_title("Sign in · ephemera")


def test_files_dropped_on_the_drop_zone_upload_with_the_chosen_kind(
    page: Page, console_server: Server
) -> None:
    token = open_session(console_server, "ws-drop")
    open_workspace(page, "ws-drop", token)
    page.get_by_label("Kind").select_option("template")
    page.evaluate(
        """() => {
            const files = new DataTransfer();
            files.items.add(new File(["first"], "one.txt", {type: "text/plain"}));
            files.items.add(new File(["second"], "two.txt", {type: "text/plain"}));
            const zone = document.getElementById("dropzone");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: files, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: files, cancelable: true}));
        }"""
    )
    expect(page.locator("#upload-list li.done")).to_have_count(2)
    expect(page.locator("#artifacts tbody tr")).to_have_count(2)
    stored = artifacts_by_name(console_server, "ws-drop")
    assert {name: a["kind"] for name, a in stored.items()} == {
        "one.txt": "template",
        "two.txt": "template",
    }
    assert stored["two.txt"]["sha256"] == hashlib.sha256(b"second").hexdigest()


def test_without_javascript_the_upload_form_stores_one_file(
    browser: Browser, console_server: Server, tmp_path: Path
) -> None:
    token = open_session(console_server, "ws-plain")
    data = png(inspection_scene(size=(64, 48), grid=(1, 1), region_size=(16, 16)).image)
    (tmp_path / "plain.png").write_bytes(data)
    context = browser.new_context(base_url=console_server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        open_workspace(page, "ws-plain", token)
        page.get_by_label("Files").set_input_files(tmp_path / "plain.png")
        page.get_by_label("Kind").select_option("golden")
        page.get_by_role("button", name="Upload").click()
        expect(page).to_have_url(f"{console_server.url}/console/workspace/ws-plain")
        expect(page.locator("#artifacts tbody tr")).to_have_count(1)
    finally:
        context.close()
    stored = artifacts_by_name(console_server, "ws-plain")
    assert stored["plain.png"]["kind"] == "golden"
    assert stored["plain.png"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_the_upload_forms_url_token_opens_that_sessions_uploads_alone(
    page: Page, console_server: Server
) -> None:
    """The plain form's token travels in its URL (access logs keep URLs): it is one made for
    this session's uploads, and the sign-in's own form token is not accepted there."""
    token = open_session(console_server, "ws-url-token")
    open_workspace(page, "ws-url-token", token)
    action = page.locator("form[enctype='multipart/form-data']").get_attribute("action") or ""
    url_token = action.split("csrf=", 1)[1]
    sign_in_token = page.locator("form.sign-out input[name=csrf]").get_attribute("value")
    assert url_token != sign_in_token
    upload: dict[str, str | float | bool | bytes | FilePayload] = {
        "file": {"name": "a.txt", "mimeType": "text/plain", "buffer": b"abc"}
    }
    refused = page.request.post(
        f"/console/workspace/ws-url-token/artifacts?csrf={sign_in_token}",
        multipart=upload,
        max_redirects=0,
    )
    assert refused.status == 403
    assert artifacts_by_name(console_server, "ws-url-token") == {}
    stored = page.request.post(action, multipart=upload, max_redirects=0)
    assert stored.status == 303
    assert set(artifacts_by_name(console_server, "ws-url-token")) == {"a.txt"}


def test_a_task_page_follows_the_task_live_to_its_result(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with serving(tmp_path_factory.mktemp("samples") / "data", WITH_SAMPLES_ENV) as server:
        token = open_session(server, "ws-live")
        context = browser.new_context(base_url=server.url)
        context.set_default_timeout(15_000)
        try:
            page = context.new_page()
            open_workspace(page, "ws-live", token)
            page.get_by_label("Processor", exact=True).select_option("sample-sleep")
            page.get_by_role("button", name="Choose").click()
            page.get_by_label("Seconds").fill("3")
            page.get_by_role("button", name="Run sample-sleep").click()
            state = page.locator("#task-state")
            expect(state).not_to_have_text("succeeded")
            # No reload: the session's events refresh the task's part of the page.
            expect(state).to_have_text("succeeded", timeout=30_000)
            expect(page.get_by_role("link", name="ran-by.txt")).to_be_visible()
            expect(page.locator(".result-json pre")).to_contain_text('"pid"')
        finally:
            context.close()


def test_reset_says_which_leases_it_releases(page: Page, console_server: Server) -> None:
    token = open_session(console_server, "ws-leased")
    taken = httpx.post(
        f"{console_server.api}/sessions/ws-leased/leases",
        headers={"Authorization": f"Bearer {token}"},
        json={"holder": "celery-worker-3", "ttl_s": 600},
    )
    assert taken.status_code == 201, taken.text
    open_workspace(page, "ws-leased", token)
    page.goto("/console/workspace/ws-leased/reset")
    expect(page.locator("#reset-leases")).to_contain_text("1 lease(s)")
    expect(page.get_by_text("celery-worker-3")).to_be_visible()
