"""Importing files into a session exactly once: the import ledger's side of the store.

Import (each file version at most once per session, even across a crash of the importer)::

    origin in the ledger? --yes--> the entry, the data never read
        |no
    pending artifact --bytes streamed, synced--> [one transaction: artifact ready + ledger
    entry] --then?--> submit the follow-up task --> record it on the entry (compare-and-set)

    A crash before the transaction leaves neither artifact nor entry; after it, both. A
    crash between the commit and the follow-up leaves an entry without a task, which
    ``follow_up`` submits later; the compare-and-set keeps it to one task however many
    callers race.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from ephemera.store.limits import MAX_TASK_JSON_BYTES, check_limit
from ephemera.store.paging import page
from ephemera.store.sessions import require_live, session_not_found
from ephemera.store.tasks import Processors
from ephemera.store.uploads import Upload, artifact_values, begin, check_sha256, chunks

SOURCE_MAX = 1024
PATH_MAX = 4096
# C0 and C1 control characters and DEL: they hide in names shown in terminals and logs.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Submit = Callable[[str, str, Sequence[str], Mapping[str, Any]], Task]
Cancel = Callable[[str, str], object]


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
    require_live(ctx, session_id)
    known = ctx.catalog.find_import(session_id, origin)
    if known is not None:
        return known
    return begin(ctx, session_id, values, now, declared_size)


def finish_import(
    ctx: Context,
    submit: Submit,
    cancel: Cancel,
    upload: Upload,
    *,
    origin: ImportOrigin,
    sha256: str | None,
    then: FollowUp | None,
) -> Imported:
    """Commit the streamed upload with its ledger entry, then submit the follow-up."""
    try:
        artifact = upload.commit(sha256, ledger=origin)
    except Conflict:
        # Another import of this origin committed first: its entry is the answer.
        winner = ctx.catalog.find_import(upload.session_id, origin)
        if winner is None:
            raise
        return Imported(winner, created=False)
    entry = ctx.catalog.import_of_artifact(upload.session_id, artifact.id)
    if entry is None:  # the session was closed right after the commit
        raise session_not_found(upload.session_id)
    if then is not None:
        entry = _follow_up(ctx, submit, cancel, entry, then)
    return Imported(entry, created=True)


def import_file(
    ctx: Context,
    processors: Processors,
    submit: Submit,
    cancel: Cancel,
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
        return finish_import(ctx, submit, cancel, started, origin=origin, sha256=sha256, then=then)


def follow_up(
    ctx: Context,
    processors: Processors,
    submit: Submit,
    cancel: Cancel,
    session_id: str,
    artifact_id: str,
    then: FollowUp,
) -> ImportEntry:
    """Submit the follow-up of an entry still without one (see :meth:`Store.follow_up_import`)."""
    check_follow_up(ctx, processors, then)
    entry = _entry_of(ctx, session_id, artifact_id)
    if entry.task_id is not None:
        return entry
    return _follow_up(ctx, submit, cancel, entry, then)


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


def _follow_up(
    ctx: Context, submit: Submit, cancel: Cancel, entry: ImportEntry, then: FollowUp
) -> ImportEntry:
    """Submit ``then`` for the entry and record it, unless another caller recorded one first:
    then this call's task is cancelled and the entry names the winner's."""
    task = submit(entry.session_id, then.processor, [entry.artifact_id], dict(then.params))
    if not ctx.catalog.set_import_task(entry.session_id, entry.artifact_id, task.id):
        with contextlib.suppress(Conflict):  # it ended already: nothing left to stop
            cancel(entry.session_id, task.id)
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
