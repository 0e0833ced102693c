"""The running service against its own OpenAPI schema: no 5xx, responses as documented."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Server, bearer

pytestmark = pytest.mark.slow

LIVE_SESSION = "fuzz"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Fuzzed requests fail authentication on purpose (e.g. inputs of other sessions without
    # their tokens): the fuzzing is about the schema, so the address must not be throttled.
    env = {"EPHEMERA_AUTH_FAILURES_PER_MINUTE": "1000000"}
    server = Server(Path(tmp_path_factory.mktemp("fuzz")) / "data", env=env).start()
    try:
        yield server
    finally:
        server.stop()


def live_artifact(server: Server) -> str:
    """Make sure the live session exists with an artifact; return the artifact's ID."""
    with httpx.Client(base_url=server.api, headers=server.admin(), timeout=10) as http:
        http.post("/sessions", json={"id": LIVE_SESSION})
        listed = http.get(f"/sessions/{LIVE_SESSION}/artifacts").json()["items"]
        if listed:
            return str(listed[0]["id"])
        created = http.post(
            f"/sessions/{LIVE_SESSION}/artifacts", params={"name": "seed.bin"}, content=b"seed"
        )
        return str(created.json()["id"])


def test_the_api_keeps_its_schema(fuzz_server: Server) -> None:
    api = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    operations = [result.ok() for result in api.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def exercise(case: Any) -> None:
            # Random IDs only ever meet 404s: half the cases aim at a live session and artifact.
            path = case.path_parameters or {}
            if "session_id" in path and zlib.crc32(repr(case).encode()) % 2:
                artifact_id = live_artifact(fuzz_server)
                path["session_id"] = LIVE_SESSION
                if "artifact_id" in path:
                    path["artifact_id"] = artifact_id
            if case.query:
                # A long poll of an empty queue only waits: keep the run short.
                case.query.pop("wait_s", None)
            case.call_and_validate(
                base_url=fuzz_server.url, headers=bearer(fuzz_server.admin_key), checks=checks
            )

        exercise()
