"""One server, one credential: the requests every part of the sync client makes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx2

from ephemera.client.common import Endpoint, answer_of, headers_for, query, unreachable
from ephemera.client.errors import error_of
from ephemera.client.retry import RETRIES, idempotency_headers, retried
from ephemera.client.transfer import (
    Outgoing,
    PartFile,
    PathLike,
    Verifier,
    etag_sha256,
    into_file,
    link_sha256,
    mismatch,
    verified,
)


class Connection:
    """A connection pool to one server with one credential (a session token or a key).

    Thread-safe (httpx's pool is); a context manager, or call :meth:`close`. Transport
    failures raise :class:`~ephemera.client.ServerUnreachable`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx2.BaseTransport | None = None,
        retries: int = RETRIES,
    ) -> None:
        self.endpoint = Endpoint.of(base_url)
        self.base_url = self.endpoint.api
        self._timeout = timeout
        self._retries = retries
        self._http = httpx2.Client(
            base_url=self.endpoint.api,
            headers=headers_for(token),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx2.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        return answer_of(response)

    def _idempotent(self, key: str | None, method: str, path: str, **kwargs: Any) -> Any:
        """A creating request: sent once, or under ``key`` retried while that is safe."""
        if key is None:
            return self._call(method, path, **kwargs)
        headers = idempotency_headers(key)
        return retried(lambda: self._call(method, path, headers=headers, **kwargs), self._retries)

    @contextmanager
    def _stream(self, path: str, **kwargs: Any) -> Iterator[httpx2.Response]:
        """A GET whose body is read as it arrives; error answers raise before it is."""
        try:
            with self._http.stream("GET", path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_of(response)
                yield response
        except httpx2.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

    def _pages(self, path: str, page_size: int, **filters: Any) -> Iterator[dict[str, Any]]:
        """The items of a paginated list, one page at a time, following its cursors."""
        cursor: str | None = None
        while True:
            answer = self._call(
                "GET", path, params=query(**filters, cursor=cursor, limit=page_size)
            )
            yield from answer["items"]
            cursor = answer.get("next_cursor")
            if not cursor:
                return

    def _send(
        self,
        path: str,
        body: Outgoing,
        params: Mapping[str, Any],
        recorded: Callable[[Any], str | None] = lambda answer: answer["sha256"],
        discard: Callable[[Any], object] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Stream an upload; bytes hashed on the way must be what the server ``recorded``,
        else what it stored is ``discard``-ed (where the API allows) and ChecksumMismatch
        raised."""
        answer = self._call(
            "POST",
            path,
            params=query(**params, sha256=body.sha256),
            content=body.chunks,
            **kwargs,
        )
        sent, stored = body.sent_sha256(), recorded(answer)
        if sent is not None and stored is not None and stored != sent:
            if discard is not None:
                discard(answer)
            raise mismatch(sent, stored, f"upload to {path}")
        return answer

    def _link_chunks(self, url: str) -> Iterator[bytes]:
        """A signed link's bytes, sent no credential (a link needs none, and a redirect
        to the blob store must not carry one), checked against the link's own sha256."""
        request = self._http.build_request("GET", url)
        request.headers.pop("Authorization", None)
        try:
            response = self._http.send(request, stream=True, follow_redirects=True)
        except httpx2.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        try:
            if response.status_code >= 400:
                response.read()
                raise error_of(response)
            expected = link_sha256(url) or etag_sha256(response.headers.get("etag"))
            verifier = Verifier(expected, f"link {response.url.path}")
            yield from verified(response.iter_bytes(), verifier)
        except httpx2.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        finally:
            response.close()

    def _verified_chunks(
        self, path: str, what: str, headers: Mapping[str, str] | None = None
    ) -> Iterator[bytes]:
        with self._stream(path, headers=headers) as response:
            verifier = Verifier(etag_sha256(response.headers.get("etag")), what)
            try:
                yield from verified(response.iter_bytes(), verifier)
            except httpx2.TransportError as exc:
                raise unreachable(self.base_url, exc) from exc


def write_verified(dest: PathLike, chunks: Iterator[bytes]) -> Path:
    def write_all(part: PartFile) -> None:
        try:
            for chunk in chunks:
                part.write(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    return into_file(dest, write_all)
