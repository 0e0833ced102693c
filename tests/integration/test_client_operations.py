"""Every operation of the served OpenAPI document has a client method, and the method speaks
that operation: its method and path, only the query parameters and body fields the document
declares, and the headers it requires.

The map below names, for each operationId, the call that performs it. An operation added to
the API without a client method fails the first test; a method that drifts from its
operation (a renamed parameter, a moved path) fails the second.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient

from ephemera import Store
from ephemera.client import Client
from ephemera.errors import NotFound
from ephemera.http import create_app
from ephemera.models import FollowUp, ImportOrigin

ORIGIN = ImportOrigin("host:/cam", "d/a.png", 1, 2)
WHEN = datetime(2030, 1, 1, tzinfo=UTC)
# A signed link's query is made by createLink and read whole by downloadLink: the document
# does not declare its fields one by one, so the check below leaves that query alone.
LINK = "http://ephemera.test/api/v1/links/s1/a1?sha256=" + "0" * 64 + "&expires=1&signature=x"
OPAQUE_QUERY = {"downloadLink"}

# operationId -> the client call that performs it (path values: s1, a1, l1, t1, c1, p1).
OPERATIONS: dict[str, Callable[[Client, Path], object]] = {
    "createSession": lambda c, _: c.create_session(
        "s1", label="x", idle_timeout_s=60, idempotency_key="k"
    ),
    "getSession": lambda c, _: c.get_session("s1"),
    "updateSession": lambda c, _: c.update_session("s1", label="y", max_age_s=None),
    "closeSession": lambda c, _: c.close_session("s1", force=True),
    "uploadArtifact": lambda c, _: c.upload_artifact(
        "s1",
        b"data",
        name="a.txt",
        kind="input",
        storage="temporary",
        expires_in_s=60,
        idempotency_key="k",
    ),
    "listArtifacts": lambda c, _: list(c.list_artifacts("s1", kind="input")),
    "getArtifact": lambda c, _: c.get_artifact("s1", "a1"),
    "deleteArtifact": lambda c, _: c.delete_artifact("s1", "a1"),
    "downloadArtifact": lambda c, tmp: c.download_artifact("s1", "a1", tmp / "out"),
    "createLink": lambda c, _: c.link("s1", "a1", 60, disposition="inline"),
    "downloadLink": lambda c, tmp: c.download_link(LINK, tmp / "out"),
    "retainArtifact": lambda c, _: c.retain_artifact("s1", "a1", WHEN),
    "takeLease": lambda c, _: c.take_lease("s1", ttl_s=30, artifact_ids=["a1"], holder="h"),
    "listLeases": lambda c, _: c.list_leases("s1"),
    "getLease": lambda c, _: c.get_lease("s1", "l1"),
    "releaseLease": lambda c, _: c.release_lease("s1", "l1"),
    "renewLease": lambda c, _: c.renew_lease("s1", "l1", ttl_s=30),
    "submitTask": lambda c, _: c.submit_task(
        "s1",
        "roi-compare",
        ["a1", ("s2", "a2")],
        {"k": 1},
        max_attempts=2,
        reference_tokens={"s2": "t"},
        idempotency_key="k",
    ),
    "listTasks": lambda c, _: list(c.list_tasks("s1", state="running")),
    "getTask": lambda c, _: c.get_task("s1", "t1"),
    "cancelTask": lambda c, _: c.cancel_task("s1", "t1"),
    "importFile": lambda c, _: c.import_file(
        "s1", b"x", origin=ORIGIN, name="a.png", then=FollowUp("p1", {"k": 1})
    ),
    "listImports": lambda c, _: list(c.list_imports("s1", "host:/cam")),
    "followUpImport": lambda c, _: c.follow_up_import("s1", "a1", FollowUp("p1")),
    "cleanupSession": lambda c, _: c.cleanup_session("s1", dry_run=True, details=True),
    "runCleanup": lambda c, _: c.cleanup(
        "all", dry_run=True, hours_old=1, days_old=2, details=True, purge_missing=True
    ),
    "rotateLinkKey": lambda c, _: c.rotate_link_key(),
    "listLinkKeys": lambda c, _: c.list_link_keys(),
    "revokeLinkKey": lambda c, _: c.revoke_link_key("k1"),
    "streamEvents": lambda c, _: list(c.events("s1", last_event_id=7)),
    "verify": lambda c, _: c.verify(session_id="s1", rate_mb_s=5, repair="flag"),
    "cleanupStats": lambda c, _: c.cleanup_stats(include_orphaned=True),
    "listAuditEntries": lambda c, _: list(c.audit_log(action="cleanup.all")),
    "listAllSessions": lambda c, _: list(c.list_all_sessions()),
    "claimTask": lambda c, _: c.claim_task("w", ["p1"], wait_s=1, ttl_s=5),
    "sendHeartbeat": lambda c, _: c.heartbeat("t1", "c1", progress=(1, 2), ttl_s=5),
    "downloadTaskInput": lambda c, tmp: c.download_task_input("t1", "c1", "a1", tmp / "in"),
    "uploadTaskOutput": lambda c, _: c.upload_task_output(
        "t1", "c1", b"x", name="o.txt", kind="result", content_type="text/plain"
    ),
    "completeTask": lambda c, _: c.complete_task("t1", "c1", {"ok": True}),
    "failTask": lambda c, _: c.fail_task("t1", "c1", "broken", retry=True),
    "listProcessors": lambda c, _: c.list_processors(),
    "getProcessor": lambda c, _: c.get_processor("p1"),
    "getMetrics": lambda c, _: c.metrics(),
    "healthz": lambda c, _: c.health(),
    "readyz": lambda c, _: c.ready(),
}

METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
def document(store: Store) -> dict[str, Any]:
    with TestClient(create_app(store)) as http:
        return dict(http.get("/openapi.json").json())


def operations(document: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        op["operationId"]: (method.upper(), path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def test_every_operation_has_a_client_method_and_no_method_names_a_gone_one(
    document: dict[str, Any],
) -> None:
    served = set(operations(document))
    assert sorted(served - OPERATIONS.keys()) == [], "operations without a client method"
    assert sorted(OPERATIONS.keys() - served) == [], "client methods of operations not served"


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        found: Any = document
        for part in node["$ref"][2:].split("/"):
            found = found[part]
        node = found
    return node


def recording(sent: list[httpx2.Request]) -> httpx2.MockTransport:
    """Keeps each request, and answers it 404."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        request.read()
        sent.append(request)
        return httpx2.Response(404, json={"error": {"code": "not_found", "message": "kept"}})

    return httpx2.MockTransport(answer)


def test_each_method_sends_its_operation_with_declared_parameters_only(
    document: dict[str, Any], tmp_path: Path
) -> None:
    served = operations(document)
    for operation_id, call in OPERATIONS.items():
        method, template, operation = served[operation_id]
        sent: list[httpx2.Request] = []
        client = Client("http://ephemera.test", "epa_key", transport=recording(sent), retries=0)
        with client, pytest.raises(NotFound):
            call(client, tmp_path)

        assert len(sent) == 1, operation_id
        [request] = sent
        if operation_id in OPAQUE_QUERY:
            # No credential: a link is one, and is meant for hands that hold no other.
            assert "authorization" not in request.headers, operation_id
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[a-z0-9]+", re.escape(template))
        assert request.method == method, operation_id
        assert re.fullmatch(pattern, request.url.path), (operation_id, request.url.path)

        declared = {p["name"].lower(): p for p in operation.get("parameters", [])}
        for name in request.url.params if operation_id not in OPAQUE_QUERY else ():
            assert declared.get(name.lower(), {}).get("in") == "query", (operation_id, name)
        for name, p in declared.items():
            if p["in"] == "header" and p.get("required"):
                assert name in request.headers, (operation_id, name)

        body = operation.get("requestBody", {}).get("content", {})
        if request.headers.get("content-type") == "application/json":
            schema = resolve(document, body["application/json"]["schema"])
            fields = set(json.loads(request.content))
            assert fields <= set(schema["properties"]), (operation_id, fields)
        elif request.content:
            assert "application/octet-stream" in body, operation_id
