"""Which library error a server's error answer becomes: a busy or briefly failing server is
Unavailable (worth another try, after its Retry-After), a lasting error keeps its type."""

from __future__ import annotations

import httpx2
import pytest

from ephemera.client import error_of
from ephemera.errors import (
    ArtifactCorrupt,
    EphemeraError,
    InsufficientStorage,
    NotFound,
    SchemaOutOfDate,
    StorageError,
    TooLarge,
    Unavailable,
)


def answer(status: int, code: str | None = None, **headers: str) -> httpx2.Response:
    if code is None:
        return httpx2.Response(status, text="<html>Bad Gateway</html>", headers=headers)
    body = {"error": {"code": code, "message": f"{code} said the server"}}
    return httpx2.Response(status, json=body, headers=headers)


def test_too_many_uploads_is_unavailable_with_the_servers_retry_after() -> None:
    error = error_of(answer(429, "rate_limited", **{"Retry-After": "1"}))
    assert isinstance(error, Unavailable)
    assert error.retry_after_s == 1.0
    assert error.message == "rate_limited said the server"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_failing_server_or_proxy_is_unavailable(status: int) -> None:
    bare = error_of(answer(status))
    assert isinstance(bare, Unavailable)
    assert bare.retry_after_s is None
    assert bare.message.startswith(f"HTTP {status}: ")
    assert isinstance(error_of(answer(status, "storage_error")), Unavailable)
    assert isinstance(error_of(answer(status, "internal_error")), Unavailable)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (500, "artifact_corrupt", ArtifactCorrupt),
        (503, "schema_out_of_date", SchemaOutOfDate),
        (507, "insufficient_storage", InsufficientStorage),
        (404, "not_found", NotFound),
        (413, None, TooLarge),
        (418, None, EphemeraError),
    ],
)
def test_lasting_errors_keep_their_type(
    status: int, code: str | None, kind: type[EphemeraError]
) -> None:
    error = error_of(answer(status, code))
    assert type(error) is kind
    assert not isinstance(error, Unavailable)


def test_unavailable_is_a_storage_error_for_callers_that_catch_those() -> None:
    assert issubclass(Unavailable, StorageError)
