"""Importing files into a session exactly once: the import ledger's side of the store.

Import (each file version at most once per session, even across a crash of the importer)::

    origin in the ledger? --yes--> the entry, the data never read
        |no
    pending artifact --bytes streamed, synced--> [one transaction: artifact ready + ledger
    entry] --then?--> [one transaction: entry's task compare-and-set + the task inserted]

    A crash before the first transaction leaves neither artifact nor entry; after it, both.
    A crash between the two leaves an entry without a task, which ``follow_up`` submits
    later. The task's ID is recorded on the entry before the task is inserted, in the same
    transaction: a caller that loses the race inserts nothing, so however many callers race,
    exactly one task ever exists.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO

from pydantic import ValidationError

from ephemera import ids
from ephemera.context import Context
from ephemera.errors import Conflict, InvalidInput, NotFound
from ephemera.jsonvalues import check_json
from ephemera.models import (
    INT64_MAX,
    FollowUp,
    Imported,
    ImportEntry,
    ImportOrigin,
    Page,
    StorageClass,
    Task,
)
from ephemera.store.access import ActivityWrites
from ephemera.store.limits import MAX_TASK_JSON_BYTES, check_limit
from ephemera.store.paging import page
from ephemera.store.sessions import require_live, session_not_found
from ephemera.store.tasks import Processors, submit_follow_up
from ephemera.store.uploads import Upload, artifact_values, begin, check_sha256, chunks

SOURCE_MAX = 1024
PATH_MAX = 4096
# C0 and C1 control characters and DEL: they hide in names shown in terminals and logs.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# (session ID, artifact ID, follow-up): the task queued and recorded on the entry, or None
# when the entry had one already (see tasks.submit_follow_up).
Submit = Callable[[str, str, FollowUp], Task | None]


def check_origin(origin: ImportOrigin) -> ImportOrigin:
    """The origin, or InvalidInput saying what is wrong with it."""
    source, path = origin.source, origin.path
    if not isinstance(source, str) or not 1 <= len(source) <= SOURCE_MAX:
        raise InvalidInput(f"import source must be 1 to {SOURCE_MAX} characters")
    if CONTROL_RE.search(source):
        raise InvalidInput("import source must not contain control characters")
    if not isinstance(path, str) or not 1 <= len(path) <= PATH_MAX:
        raise InvalidInput(f"import path must be 1 to {PATH_MAX} characters")
    if CONTROL_RE.search(path):
        raise InvalidInput("import path must not contain control characters")
    if "\\" in path:
        raise InvalidInput("import path must use '/' as separator, not '\\'")
    if path.startswith("/"):
        raise InvalidInput("import path must be relative to its source, not start with '/'")
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        raise InvalidInput(f"import path {path[:200]!r} has an empty, '.' or '..' segment")
    if not _is_int(origin.size) or origin.size < 0 or origin.size > INT64_MAX:
        raise InvalidInput("import size must be a whole number of bytes, 0 or more")
    if not _is_int(origin.mtime_ns) or not 0 <= origin.mtime_ns <= INT64_MAX:
        raise InvalidInput(f"import mtime_ns must be between 0 and {INT64_MAX}")
    return origin


def check_follow_up(ctx: Context, processors: Processors, then: FollowUp) -> None:
    """Refuse a follow-up whose processor is not enabled or whose params are invalid, before
    anything is stored. Checks that need the input itself happen when it is submitted."""
    if not isinstance(then.processor, str) or not isinstance(then.params, Mapping):
        raise InvalidInput("a follow-up is a processor name and a JSON object of params")
    params = dict(then.params)
    check_json(params, "params", max_bytes=MAX_TASK_JSON_BYTES)
    if then.processor in ctx.settings.external_processors:
        return  # run by an external worker, which checks its own params
    processor = processors.registry.get_processor(then.processor)
    try:
        processor.params_model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid params for {then.processor}: {problems}") from None


def begin_import(
    ctx: Context,
    processors: Processors,
    session_id: str,
    *,
    origin: ImportOrigin,
    name: str,
    kind: str,
    content_type: str | None,
    storage: StorageClass | str | None,
    expires_in_s: int | None,
    sha256: str | None,
    then: FollowUp | None,
    declared_size: int | None,
) -> ImportEntry | Upload:
    """Check everything, then: the entry when the ledger holds the origin already, or the
    upload to stream its bytes into (then ``finish_import``)."""
    check_origin(origin)
    if sha256 is not None:
        check_sha256(sha256)
    now = ctx.clock.now()
    values = artifact_values(ctx.settings, name, kind, content_type, storage, expires_in_s, now)
    if then is not None:
        check_follow_up(ctx, processors, then)
    live, known = ctx.catalog.find_live_import(session_id, origin, now)
    if not live:
        raise session_not_found(session_id)
    if known is not None:
        return known
    return begin(ctx, session_id, values, now, declared_size)


def finish_import(
    ctx: Context,
    submit: Submit,
    upload: Upload,
    *,
    origin: ImportOrigin,
    sha256: str | None,
    then: FollowUp | None,
) -> Imported:
    """Commit the streamed upload with its ledger entry, then submit the follow-up."""
    try:
        _, entry = upload.commit_import(origin, sha256)
    except Conflict:
        # Another import of this origin committed first: its entry is the answer.
        winner = ctx.catalog.find_import(upload.session_id, origin)
        if winner is None:
            raise
        return Imported(winner, created=False)
    if then is not None:
        entry = _follow_up(ctx, submit, entry, then)
    return Imported(entry, created=True)


def import_file(
    ctx: Context,
    processors: Processors,
    submit: Submit,
    session_id: str,
    data: bytes | BinaryIO | Iterable[bytes],
    *,
    origin: ImportOrigin,
    name: str,
    kind: str,
    content_type: str | None,
    storage: StorageClass | str | None,
    expires_in_s: int | None,
    sha256: str | None,
    then: FollowUp | None,
    chunk_size: int,
) -> Imported:
    """Import one file version (see :meth:`Store.import_file`)."""
    started = begin_import(
        ctx,
        processors,
        session_id,
        origin=origin,
        name=name,
        kind=kind,
        content_type=content_type,
        storage=storage,
        expires_in_s=expires_in_s,
        sha256=sha256,
        then=then,
        declared_size=len(data) if isinstance(data, bytes) else None,
    )
    if isinstance(started, ImportEntry):
        return Imported(started, created=False)
    with started:
        for chunk in chunks(data, chunk_size):
            started.write(chunk)
        return finish_import(ctx, submit, started, origin=origin, sha256=sha256, then=then)


def follow_up(
    ctx: Context,
    processors: Processors,
    submit: Submit,
    session_id: str,
    artifact_id: str,
    then: FollowUp,
) -> ImportEntry:
    """Submit the follow-up of an entry still without one (see :meth:`Store.follow_up_import`)."""
    check_follow_up(ctx, processors, then)
    entry = _entry_of(ctx, session_id, artifact_id)
    if entry.task_id is not None:
        return entry
    return _follow_up(ctx, submit, entry, then)


def find(ctx: Context, session_id: str, origin: ImportOrigin) -> ImportEntry | None:
    check_origin(origin)
    require_live(ctx, session_id)
    return ctx.catalog.find_import(session_id, origin)


def list_imports(
    ctx: Context, session_id: str, source: str | None, cursor: str | None, limit: int
) -> Page[ImportEntry]:
    require_live(ctx, session_id)
    limit = check_limit(limit)
    if source is not None and not (isinstance(source, str) and 1 <= len(source) <= SOURCE_MAX):
        raise InvalidInput(f"import source must be 1 to {SOURCE_MAX} characters")
    after = None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 19):
            raise InvalidInput("invalid cursor")
        after = int(cursor)
    rows = ctx.catalog.list_imports(session_id, source, after, limit + 1)
    listed = page(rows, limit, lambda row: str(row[0]))
    return Page([entry for _, entry in listed.items], listed.next_cursor)


def _follow_up(ctx: Context, submit: Submit, entry: ImportEntry, then: FollowUp) -> ImportEntry:
    """Submit ``then`` for the entry unless another caller recorded a task first; the entry
    as it is now, naming the one task."""
    task = submit(entry.session_id, entry.artifact_id, then)
    if task is not None:  # recorded on the entry in the task's own transaction
        return dataclasses.replace(entry, task_id=task.id)
    return _entry_of(ctx, entry.session_id, entry.artifact_id)


def _entry_of(ctx: Context, session_id: str, artifact_id: str) -> ImportEntry:
    require_live(ctx, session_id)
    entry = (
        ctx.catalog.import_of_artifact(session_id, artifact_id)
        if ids.is_artifact_id(artifact_id)
        else None
    )
    if entry is None:
        raise NotFound(f"no import of artifact {artifact_id[:40]} in session {session_id}")
    return entry


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ImportMethods:
    """The import ledger's part of :class:`~ephemera.store.Store` (its base class)."""

    context: Context
    _processors: Processors
    _activity: ActivityWrites

    def import_file(
        self,
        session_id: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        origin: ImportOrigin,
        name: str,
        kind: str = "input",
        content_type: str | None = None,
        storage: StorageClass | str | None = None,
        expires_in_s: int | None = None,
        sha256: str | None = None,
        then: FollowUp | None = None,
        chunk_size: int = 1024 * 1024,
    ) -> Imported:
        """Import one version of a file (``origin``) into a session, at most once.

        When the session's ledger holds the origin already, its entry is returned
        (``created=False``) and ``data`` is never read. Otherwise the bytes are streamed and
        the artifact and its ledger entry committed together; its ``replaces`` is the
        artifact of the latest earlier version of the same path. Of concurrent imports of
        one origin the first to commit wins; the others return its entry. With ``then``,
        validated before anything is stored, the follow-up task is submitted after the
        commit with the artifact as its only input and recorded on the entry; a refused
        task raises its InvalidInput and the import stays, without a task.
        """
        return import_file(
            self.context,
            self._processors,
            self._submit_follow_up,
            session_id,
            data,
            origin=origin,
            name=name,
            kind=kind,
            content_type=content_type,
            storage=storage,
            expires_in_s=expires_in_s,
            sha256=sha256,
            then=then,
            chunk_size=chunk_size,
        )

    def begin_import(
        self,
        session_id: str,
        *,
        origin: ImportOrigin,
        name: str,
        kind: str = "input",
        content_type: str | None = None,
        storage: StorageClass | str | None = None,
        expires_in_s: int | None = None,
        sha256: str | None = None,
        then: FollowUp | None = None,
        declared_size: int | None = None,
    ) -> ImportEntry | Upload:
        """The first half of ``import_file``, for bytes that arrive elsewhere (an HTTP body):
        everything checked, then the ledger's entry if it holds the origin, or the upload to
        write the bytes to and hand to ``finish_import``."""
        return begin_import(
            self.context,
            self._processors,
            session_id,
            origin=origin,
            name=name,
            kind=kind,
            content_type=content_type,
            storage=storage,
            expires_in_s=expires_in_s,
            sha256=sha256,
            then=then,
            declared_size=declared_size,
        )

    def finish_import(
        self,
        upload: Upload,
        *,
        origin: ImportOrigin,
        sha256: str | None = None,
        then: FollowUp | None = None,
    ) -> Imported:
        """The second half of ``import_file``: commit with the ledger entry, then follow up."""
        return finish_import(
            self.context, self._submit_follow_up, upload, origin=origin, sha256=sha256, then=then
        )

    def follow_up_import(self, session_id: str, artifact_id: str, then: FollowUp) -> ImportEntry:
        """Submit ``then`` for the import of ``artifact_id`` if it has no task yet (what a
        crash between commit and submission left); exactly one task ever exists however many
        callers race. An entry with a task is returned as it is."""
        return follow_up(
            self.context, self._processors, self._submit_follow_up, session_id, artifact_id, then
        )

    def find_import(self, session_id: str, origin: ImportOrigin) -> ImportEntry | None:
        return find(self.context, session_id, origin)

    def list_imports(
        self,
        session_id: str,
        *,
        source: str | None = None,
        cursor: str | None = None,
        limit: int = 1000,
    ) -> Page[ImportEntry]:
        """A session's ledger (of one ``source``) in import order, a page at a time."""
        return list_imports(self.context, session_id, source, cursor, limit)

    def _submit_follow_up(self, session_id: str, artifact_id: str, then: FollowUp) -> Task | None:
        return submit_follow_up(
            self.context,
            self._processors,
            self._activity,
            session_id,
            artifact_id,
            then.processor,
            then.params,
        )
