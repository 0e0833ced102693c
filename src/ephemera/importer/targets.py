"""Where imported files go: the store in this process, or a server over HTTP.

A target is a small Protocol; the importer uses nothing else, so the in-process and remote
paths are the same code above it. Each call is one ledger operation and independent of the
others: targets are shared by the upload threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from ephemera.client import Client
from ephemera.models import FollowUp, Imported, ImportEntry, ImportOrigin
from ephemera.store import Store


class Target(Protocol):
    def check(self, session_id: str | None, then: FollowUp | None) -> None:
        """Raise NotFound (or Unauthenticated) unless the session (if given) is reachable,
        and NotFound unless ``then``'s processor is enabled: before anything is stored."""

    def entries(self, session_id: str, source: str) -> Iterator[ImportEntry]:
        """The ledger of ``source`` in the session, oldest first (fetched page by page)."""

    def put(
        self,
        session_id: str,
        data: Iterable[bytes],
        *,
        origin: ImportOrigin,
        name: str,
        kind: str,
        sha256: str | None,
        then: FollowUp | None,
    ) -> Imported:
        """Import one file version. Iterates ``data`` only when the ledger lacks ``origin``;
        an exception raised by ``data`` aborts the upload and stores nothing."""

    def follow_up(self, session_id: str, artifact_id: str, then: FollowUp) -> ImportEntry:
        """Submit ``then`` for an entry without a task (a crash came between the two)."""


class StoreTarget:
    """The store of this process; each call takes its own pooled database connection."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def check(self, session_id: str | None, then: FollowUp | None) -> None:
        if session_id is not None:
            self.store.get_session(session_id)
        if then is not None:
            self.store.get_processor_info(then.processor)

    def entries(self, session_id: str, source: str) -> Iterator[ImportEntry]:
        cursor: str | None = None
        while True:
            page = self.store.list_imports(session_id, source=source, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def put(
        self,
        session_id: str,
        data: Iterable[bytes],
        *,
        origin: ImportOrigin,
        name: str,
        kind: str,
        sha256: str | None,
        then: FollowUp | None,
    ) -> Imported:
        return self.store.import_file(
            session_id, data, origin=origin, name=name, kind=kind, sha256=sha256, then=then
        )

    def follow_up(self, session_id: str, artifact_id: str, then: FollowUp) -> ImportEntry:
        return self.store.follow_up_import(session_id, artifact_id, then)


class HttpTarget:
    """A remote ``ephemera serve``, through :class:`~ephemera.client.Client`."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def check(self, session_id: str | None, then: FollowUp | None) -> None:
        if session_id is not None:
            self.client.get_session(session_id)
        if then is not None:
            self.client.get_processor(then.processor)

    def entries(self, session_id: str, source: str) -> Iterator[ImportEntry]:
        return self.client.list_imports(session_id, source)

    def put(
        self,
        session_id: str,
        data: Iterable[bytes],
        *,
        origin: ImportOrigin,
        name: str,
        kind: str,
        sha256: str | None,
        then: FollowUp | None,
    ) -> Imported:
        return self.client.import_file(
            session_id, data, origin=origin, name=name, kind=kind, sha256=sha256, then=then
        )

    def follow_up(self, session_id: str, artifact_id: str, then: FollowUp) -> ImportEntry:
        return self.client.follow_up_import(session_id, artifact_id, then)
