"""Serving an artifact's bytes: ETag, If-None-Match, one byte range, verified whole bodies.

Every face that hands out bytes (the API, signed links, the worker API, the console) answers
through :func:`serve_artifact`, so all of them decide alike.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from ephemera.errors import StorageError
from ephemera.http.accel import accel_redirect
from ephemera.http.errors import RangeNotSatisfiable
from ephemera.models import Artifact
from ephemera.store import Store


def content_disposition(name: str, disposition: str = "attachment") -> str:
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in name)
    return f"{disposition}; filename=\"{fallback or 'download'}\"; filename*=UTF-8''{quote(name)}"


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return etag in tags


def serve_artifact(
    store: Store, artifact: Artifact, request: Request, disposition: str = "attachment"
) -> Response:
    """The stored bytes, exactly: ETag is the sha256; Range and If-None-Match work."""
    # Before any answer that carries the ETag, a 304 included: the sha256 no longer vouches.
    store.check_intact(artifact)
    etag = f'"{artifact.sha256}"'
    headers = _download_headers(artifact, etag, disposition)
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    wanted = _byte_range(request, etag, artifact.size)
    path = store.artifact_path(artifact.session_id, artifact.id)
    redirect = accel_redirect(
        store.settings.accel_redirect_prefix, artifact, path, request, headers
    )
    if redirect is not None:
        return redirect
    if wanted is None or wanted == (0, artifact.size - 1):
        # The whole body is hashed as it streams; on a mismatch the connection is cut before
        # the last chunk, so no client ever completes wrong bytes under the recorded ETag. A
        # range that covers the whole body (bytes=0-) is the whole body and goes the same way.
        headers["accept-ranges"] = "bytes"
        headers["content-length"] = str(artifact.size)
        status = 200
        if wanted is not None:
            status = 206
            headers["content-range"] = f"bytes 0-{artifact.size - 1}/{artifact.size}"
        return StreamingResponse(
            store.iter_verified(artifact),
            status_code=status,
            media_type=artifact.content_type,
            headers=headers,
        )
    # A part cannot be checked against the whole body's hash without reading all of it (every
    # small range a full read): parts go out as stored, under the ETag RFC 9110 requires on a
    # 206, which names the whole body; verification and the scrub flag corrupt bytes for every
    # reader, and a client that joins parts checks the whole against the sha256 (the ETag).
    if path is not None:
        if not path.is_file():
            raise StorageError(f"artifact {artifact.id} has lost its bytes")
        return _RangedFile(path, wanted, media_type=artifact.content_type, headers=headers)
    # No file to hand over (an object store): stream the one byte range.
    headers["accept-ranges"] = "bytes"
    start, end = wanted
    status = 206
    headers["content-range"] = f"bytes {start}-{end}/{artifact.size}"
    stream = store.open_artifact_range(artifact, start, end)
    remaining = end - start + 1

    def chunks() -> Any:
        left = remaining
        with stream:
            while left > 0 and (chunk := stream.read(min(left, 1024 * 1024))):
                left -= len(chunk)
                yield chunk

    headers["content-length"] = str(remaining)
    return StreamingResponse(
        chunks(), status_code=status, media_type=artifact.content_type, headers=headers
    )


# first-last, first- or -suffix_length (RFC 9110 §14.1.2), digits in ASCII only.
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
_RANGE_FORMS = "use bytes=first-last, bytes=first- or bytes=-length"


def _byte_range(request: Request, etag: str, size: int) -> tuple[int, int] | None:
    """The one byte range a request asks for (first and last, inclusive), or None for all.

    Decided here for every blob store, so all answer alike. Another unit, several ranges, or
    an If-Range that does not match get the whole body, as RFC 9110 allows (several ranges
    would need multipart/byteranges, which overlapping ranges turn into an amplifier). A
    malformed bytes range, or one outside the body, is RangeNotSatisfiable.
    """
    header = request.headers.get("range")
    if header is None:
        return None
    unit, equals, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        return None
    if "," in spec:
        return None
    match = _RANGE_SPEC.fullmatch(spec.strip())
    if not equals or match is None or match[0] == "-":
        raise RangeNotSatisfiable(f"malformed Range header: {_RANGE_FORMS}", size)
    first, last = match.groups()
    if not first:  # a suffix: the last N bytes
        if size == 0:
            raise RangeNotSatisfiable("the artifact is empty: no range of it exists", size)
        if int(last) == 0:
            raise RangeNotSatisfiable("a suffix range of 0 bytes selects nothing", size)
        return max(size - int(last), 0), size - 1
    start = int(first)
    if last and int(last) < start:
        raise RangeNotSatisfiable(f"malformed Range header: last < first; {_RANGE_FORMS}", size)
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at byte {start} of {size} bytes", size)
    return start, min(int(last), size - 1) if last else size - 1


class _RangedFile(FileResponse):
    """Starlette's file serving, shown only the range decided by :func:`_byte_range`.

    On its own it would parse Range again, answer errors as text/plain, and serve several
    ranges as multipart/byteranges.
    """

    def __init__(self, path: Path, wanted: tuple[int, int] | None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._wanted = wanted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
        if self._wanted is not None:
            headers.append((b"range", "bytes={}-{}".format(*self._wanted).encode()))
        await super().__call__({**scope, "headers": headers}, receive, send)


def _download_headers(artifact: Artifact, etag: str, disposition: str) -> dict[str, str]:
    return {
        "etag": etag,
        "content-disposition": content_disposition(artifact.name, disposition),
        "x-content-type-options": "nosniff",
        # Stored content is the client's, not ours: never let a browser run it as a page.
        "content-security-policy": "sandbox",
        "cache-control": "private, no-cache",
    }
