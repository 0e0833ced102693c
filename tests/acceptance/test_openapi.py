"""The OpenAPI document is a contract clients generate code from: valid, complete, stable."""

from __future__ import annotations

import importlib
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from ephemera import Store
from ephemera.http import API_PREFIX, api_router, create_app, install_openapi
from tests.conftest import Server

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
CAMEL_CASE = re.compile(r"^[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)*$")
UPLOAD = f"{API_PREFIX}/sessions/{{session_id}}/artifacts"
DOWNLOAD = f"{API_PREFIX}/sessions/{{session_id}}/artifacts/{{artifact_id}}/content"


@pytest.fixture
def document(store: Store) -> dict[str, Any]:
    with TestClient(create_app(store)) as client:
        response = client.get("/openapi.json")
        assert response.status_code == 200
        return dict(response.json())


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref} does not resolve"
        assert part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)


def test_every_reference_resolves_inside_the_document(document: dict[str, Any]) -> None:
    refs = set(references(document))
    assert "#/components/schemas/JsonUpload" in refs
    for ref in refs:
        resolve(document, ref)


def test_every_operation_has_a_short_unique_camel_case_id_and_a_tag(
    document: dict[str, Any],
) -> None:
    seen: dict[str, str] = {}
    for method, path, operation in operations(document):
        where = f"{method.upper()} {path}"
        op_id = operation.get("operationId", "")
        assert CAMEL_CASE.match(op_id), f"{where}: {op_id!r} is not camelCase"
        assert len(op_id) <= 32, f"{where}: {op_id!r} is too long"
        assert op_id not in seen, f"{where} and {seen.get(op_id)} share the id {op_id}"
        seen[op_id] = where
        assert operation.get("tags"), f"{where} has no tag"
    assert len(seen) >= 30


def test_operation_ids_are_the_route_functions_in_camel_case(document: dict[str, Any]) -> None:
    ids = {
        f"{method.upper()} {path}": op["operationId"] for method, path, op in operations(document)
    }
    assert ids["POST /api/v1/sessions"] == "createSession"
    assert ids[f"POST {UPLOAD}"] == "uploadArtifact"
    assert ids[f"GET {DOWNLOAD}"] == "downloadArtifact"
    assert ids["POST /api/v1/admin/cleanup/{operation}"] == "runCleanup"
    assert ids["POST /api/v1/worker/claim"] == "claimTask"
    assert ids["GET /metrics"] == "getMetrics"


def test_the_three_upload_bodies_are_described(document: dict[str, Any]) -> None:
    body = document["paths"][UPLOAD]["post"]["requestBody"]
    assert body["required"] is True
    content = body["content"]
    assert set(content) == {"application/octet-stream", "multipart/form-data", "application/json"}
    assert content["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    form = resolve(document, content["multipart/form-data"]["schema"]["$ref"])
    assert form["required"] == ["file"]
    assert form["properties"]["file"]["format"] == "binary"
    assert {"name", "kind", "storage", "expires_in_s", "sha256"} <= set(form["properties"])
    json_body = resolve(document, content["application/json"]["schema"]["$ref"])
    assert set(json_body["required"]) == {"name", "data_base64"}
    assert {"kind", "storage", "expires_in_s", "sha256"} <= set(json_body["properties"])


def test_the_raw_download_is_described(document: dict[str, Any]) -> None:
    for path in (DOWNLOAD, f"{API_PREFIX}/worker/tasks/{{task_id}}/inputs/{{artifact_id}}/content"):
        operation = document["paths"][path]["get"]
        responses = operation["responses"]
        for status in ("200", "206"):
            schema = responses[status]["content"]["application/octet-stream"]["schema"]
            assert schema == {"type": "string", "format": "binary"}
            assert "ETag" in responses[status]["headers"]
        assert "Content-Range" in responses["206"]["headers"]
        assert "content" not in responses["304"]
        assert responses["416"]["headers"]["Content-Range"]["required"] is True
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert {"Range", "If-Range", "If-None-Match"} <= headers


def test_the_docs_and_the_document_need_no_credentials(store: Store) -> None:
    # They describe the API, never data: public, like the README.
    with TestClient(create_app(store)) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_a_router_included_in_another_app_keeps_its_ids_and_components(store: Store) -> None:
    host = FastAPI(title="host", version="1")
    host.include_router(api_router(store), prefix="/files")
    install_openapi(host)
    document = host.openapi()
    validate(document)
    for ref in set(references(document)):
        resolve(document, ref)
    upload = document["paths"]["/files/sessions/{session_id}/artifacts"]["post"]
    assert upload["operationId"] == "uploadArtifact"


@pytest.mark.slow
def test_a_generated_client_has_no_warnings_and_speaks_the_api(
    tmp_path: Path, server: Server
) -> None:
    spec = tmp_path / "openapi.json"
    spec.write_bytes(httpx.get(f"{server.url}/openapi.json", timeout=10).content)
    bin_dir = Path(sys.executable).parent
    generated = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(tmp_path / "ephemera_generated"),
            "--meta",
            "none",
        ],
        # The generator formats its output with ruff, found on PATH.
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = generated.stdout + generated.stderr
    assert generated.returncode == 0, output
    assert "warning" not in output.lower(), output

    sys.path.insert(0, str(tmp_path))
    try:
        speak_through_the_generated_client(server)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("ephemera_generated")]:
            del sys.modules[name]


def speak_through_the_generated_client(server: Server) -> None:
    package = "ephemera_generated"
    client_module = importlib.import_module(f"{package}.client")
    models = importlib.import_module(f"{package}.models")
    types = importlib.import_module(f"{package}.types")
    create_session = importlib.import_module(f"{package}.api.sessions.create_session")
    upload = importlib.import_module(f"{package}.api.artifacts.upload_artifact")
    download = importlib.import_module(f"{package}.api.artifacts.download_artifact")

    with client_module.AuthenticatedClient(base_url=server.url, token=server.admin_key) as admin:
        created = create_session.sync(client=admin, body=models.SessionCreate(id="generated"))
    assert created.id == "generated"
    with client_module.AuthenticatedClient(base_url=server.url, token=created.token) as session:
        as_json = upload.sync(
            "generated",
            client=session,
            body=models.JsonUpload(name="a.txt", data_base64="aGVsbG8="),  # hello
        )
        as_form = upload.sync(
            "generated",
            client=session,
            body=models.MultipartUpload(
                file=types.File(payload=io.BytesIO(b"form bytes"), file_name="b.txt"),
                kind="golden",
            ),
        )
        as_raw = upload.sync(
            "generated", client=session, body=types.File(payload=io.BytesIO(b"raw")), name="c"
        )
        assert (as_json.name, as_form.name, as_form.kind, as_raw.name) == (
            "a.txt",
            "b.txt",
            "golden",
            "c",
        )

        whole = download.sync_detailed("generated", as_raw.id, client=session)
        assert (whole.status_code, whole.content) == (200, b"raw")
        part = download.sync_detailed("generated", as_json.id, client=session, range_="bytes=1-3")
        assert (part.status_code, part.content) == (206, b"ell")
        same = download.sync_detailed(
            "generated", as_form.id, client=session, if_none_match=f'"{as_form.sha256}"'
        )
        assert same.status_code == 304
