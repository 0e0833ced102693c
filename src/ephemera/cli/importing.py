"""``ephemera import``: the files of a folder into a session, exactly once each."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from ephemera.cli import render
from ephemera.cli.app import app
from ephemera.cli.common import (
    BlobUrl,
    DatabaseUrl,
    DataDir,
    err,
    fail,
    open_store,
    out,
    usage_error,
)
from ephemera.errors import EphemeraError, Forbidden, InvalidInput, NotFound, Unauthenticated
from ephemera.models import CreatedSession, FollowUp

if TYPE_CHECKING:
    from ephemera.importer import Progress as ImportProgress
    from ephemera.importer import Summary, Target

EXIT_INTERRUPTED = 130  # the shell's code for a command ended by SIGINT


def _then(processor: str | None, params: str | None) -> FollowUp | None:
    if processor is None:
        if params is not None:
            raise usage_error("--params goes with --then PROCESSOR")
        return None
    try:
        value = json.loads(params) if params is not None else {}
    except ValueError as exc:
        raise usage_error(f"--params is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise usage_error("--params must be a JSON object")
    return FollowUp(processor, value)


@contextmanager
def _signals(stop: threading.Event, abort: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM: the first stops (in-flight files finish), a second aborts them, a
    third ends the process at once, even in a server call that hangs (the ledger stays
    consistent: its line commits with its artifact, or neither does)."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            abort.set()
            for s in previous:
                signal.signal(s, signal.SIG_DFL)
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def _token_on_failure(created: CreatedSession | None, as_json: bool) -> Iterator[None]:
    """A new session's token goes in the JSON summary; if the run ends without one, the
    token is printed on standard error instead, or nobody could ever open the session."""
    try:
        yield
    except BaseException:
        if created is not None and as_json:
            token = escape(created.token)
            err.print(f"session {created.session.id} token: {token}", highlight=False)
        raise


@contextmanager
def _progress_bar(enabled: bool, watch: bool) -> Iterator[Callable[[ImportProgress], None]]:
    """Files done of those found so far, bytes and their rate, ETA (one-shot only: a watch
    has no end)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    started = time.monotonic()
    columns: list[Any] = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[bytes]}"),
        TimeElapsedColumn(),
    ]
    if not watch:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not enabled) as bar:
        task = bar.add_task("watching" if watch else "importing", total=None, bytes="")

        def update(p: ImportProgress) -> None:
            rate = p.bytes / max(time.monotonic() - started, 1e-3)
            shown = f"{render.size(p.bytes)} ({render.size(int(rate))}/s)"
            if p.failed:
                shown += f", {p.failed} failed"
            bar.update(task, completed=p.done, total=max(p.found, p.done), bytes=shown)

        yield update


@app.command("import")
def import_files(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="The folder to import", show_default=False)
    ],
    session: Annotated[
        str | None, typer.Option("--session", metavar="SID", help="Import into this session")
    ] = None,
    new_session: Annotated[
        bool, typer.Option("--new-session", help="Create a session and import into it")
    ] = False,
    label: Annotated[
        str | None,
        typer.Option(
            "--label", metavar="LABEL", help="The new session's label (with --new-session)"
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep importing files that appear or change")
    ] = False,
    poll: Annotated[
        bool, typer.Option("--poll", help="Watch by polling (network mounts), not inotify")
    ] = False,
    settle: Annotated[
        float,
        typer.Option(
            "--settle",
            min=0.05,
            max=3600,
            metavar="SECONDS",
            help="With --watch: how long a file's size and mtime must stay the same",
        ),
    ] = 1.0,
    kind: Annotated[
        str, typer.Option("--kind", metavar="KIND", help="Kind of the artifacts")
    ] = "input",
    pattern: Annotated[
        list[str] | None,
        typer.Option(
            "--pattern", metavar="GLOB", help="Only matching files (path or name; repeatable)"
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            metavar="NAME",
            help="Name of the folder in the ledger [default: host:/absolute/path; so a "
            "renamed or moved folder, another host, or a changed --source is a new source "
            "whose files are all imported again]",
        ),
    ] = None,
    server: Annotated[
        str | None, typer.Option(metavar="URL", help="Import into a remote ephemera serve")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            envvar="EPHEMERA_TOKEN",
            show_envvar=True,
            help="With --server: the session's token or a key (a client or admin key to "
            "create a session)",
        ),
    ] = None,
    then: Annotated[
        str | None,
        typer.Option(metavar="PROCESSOR", help="Submit a task per imported file"),
    ] = None,
    params: Annotated[
        str | None, typer.Option(metavar="JSON", help="The task's params (with --then)")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, metavar="N", help="Upload threads")
    ] = 4,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON summary on standard output")
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
) -> None:
    """Import every matching file under PATH into a session, once each: a rerun skips what
    the session's import ledger holds, a changed file becomes a new artifact. With --watch,
    keep importing until SIGINT/SIGTERM, then print the summary.

    Hidden files and folders and partial downloads (*.part, *.partial, *.tmp, *.temp,
    *.crdownload, *.download, *.swp, *~) are skipped; symbolic links are not followed.
    Exit codes: 0 every file imported or skipped (with --watch: until stopped); 1 some failed
    (listed); 2 bad flags, path, session, token or processor, or a watch that cannot start
    (nothing imported); 3 a backend is unreachable; 130 stopped by SIGINT/SIGTERM before the
    end of a run without --watch.
    """
    from ephemera import ids
    from ephemera.client import Client
    from ephemera.importer import HttpTarget, Importer, Plan, StoreTarget

    if (session is None) == (not new_session):
        raise usage_error("give exactly one of --session SID and --new-session")
    if label is not None and not new_session:
        raise usage_error("--label goes with --new-session")
    if (poll or settle != 1.0) and not watch:
        raise usage_error("--poll and --settle go with --watch")
    if server is None and token is not None and not _from_env("EPHEMERA_TOKEN", token):
        raise usage_error("--token goes with --server")
    if server is not None and not token:
        raise usage_error("--server needs --token (or EPHEMERA_TOKEN)")
    follow_up = _then(then, params)
    try:
        ids.check_kind(kind)
    except InvalidInput as exc:
        raise usage_error(f"--kind: {exc.message}") from None
    if not path.is_dir():
        raise usage_error(f"not a folder: {path}")
    root = path.resolve()
    plan_source = source or f"{socket.gethostname()}:{root}"
    if not 1 <= len(plan_source) <= 1024:
        raise usage_error("--source must be 1-1024 characters")

    with ExitStack() as stack:
        created: CreatedSession | None = None
        target: Target
        try:
            if server is not None:
                assert token is not None
                client = stack.enter_context(Client(server, token))
                if new_session:
                    HttpTarget(client).check(None, follow_up)  # before a session is made
                    created = client.create_session(label=label)
                    # The new session's own token opens it (a client key cannot).
                    client = stack.enter_context(Client(server, created.token))
                target = HttpTarget(client)
            else:
                store = stack.enter_context(
                    open_store(data_dir, database_url=database_url, blob_url=blob_url)
                )
                if new_session:
                    StoreTarget(store).check(None, follow_up)
                    created = store.create_session(label=label)
                target = StoreTarget(store)
        except (NotFound, Unauthenticated, Forbidden) as exc:
            raise fail(exc, 2) from None
        except EphemeraError as exc:
            raise fail(exc) from None
        session_id = created.session.id if created else session
        assert session_id is not None
        if created is not None and not as_json:
            out.print(session_id)
            err.print(f"session token (shown once): {escape(created.token)}", highlight=False)
        plan = Plan(
            root=root,
            session_id=session_id,
            source=plan_source,
            kind=kind,
            patterns=tuple(pattern or ()),
            then=follow_up,
            workers=workers,
            watch=watch,
            poll=poll,
            settle_s=settle,
        )
        stop, abort = threading.Event(), threading.Event()
        try:
            with (
                _signals(stop, abort),
                _progress_bar(err.is_terminal, watch) as progress,
                _token_on_failure(created, as_json),
            ):
                summary = Importer(target, plan, progress=progress, stop=stop, abort=abort).run()
        except (NotFound, Unauthenticated, Forbidden) as exc:
            raise fail(exc, 2) from None
        except EphemeraError as exc:
            raise fail(exc) from None
        except OSError as exc:  # the watch could not start (e.g. the inotify watch limit)
            hint = "; --poll watches without inotify" if watch and not poll else ""
            raise usage_error(f"cannot watch {root}: {exc.strerror or exc}{hint}") from None
    _print(summary, as_json, created)
    if summary.failed:
        raise typer.Exit(1)
    if stop.is_set() and not watch:  # stopped before the end: not every file was looked at
        raise typer.Exit(EXIT_INTERRUPTED)


def _from_env(name: str, value: str) -> bool:
    return os.environ.get(name) == value


def _print(summary: Summary, as_json: bool, created: CreatedSession | None) -> None:
    if as_json:
        body: dict[str, Any] = {
            "session_id": summary.session_id,
            "source": summary.source,
            "found": summary.found,
            "imported": summary.imported,
            "skipped": summary.skipped,
            "failed": summary.failed,
            "bytes": summary.bytes,
            "errors": [{"path": e.path, "error": e.error} for e in summary.errors],
            "tasks": summary.tasks,
            "duration_s": summary.duration_s,
        }
        if created is not None:
            body["token"] = created.token
        print(json.dumps(body))
        return
    for problem in summary.errors:
        err.print(f"[red]failed:[/red] {escape(problem.path)}: {escape(problem.error)}")
    out.print(
        f"{summary.imported} imported, {summary.skipped} skipped, {summary.failed} failed "
        f"of {summary.found} found ({render.size(summary.bytes)}) in {summary.duration_s:.1f} s"
        + (f"; {len(summary.tasks)} tasks submitted" if summary.tasks else "")
    )
