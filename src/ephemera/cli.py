"""The ``ephemera`` command: a thin face over the library."""

from __future__ import annotations

import getpass
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ephemera.config import Settings
from ephemera.errors import EphemeraError
from ephemera.store import Store

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
sessions_app = typer.Typer(no_args_is_help=True, help="Inspect and close sessions.")
keys_app = typer.Typer(no_args_is_help=True, help="Manage admin keys.")
worker_keys_app = typer.Typer(no_args_is_help=True, help="Manage keys of external workers.")
app.add_typer(sessions_app, name="sessions")
app.add_typer(keys_app, name="admin-key")
app.add_typer(worker_keys_app, name="worker-key")

out = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory [default: $EPHEMERA_DATA_DIR or ./ephemera-data]"
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
ADMIN_KEY_FILE = "admin.key"
ACTOR = f"cli:{getpass.getuser()}"


def _settings(data_dir: Path | None) -> Settings:
    return Settings(data_dir=data_dir) if data_dir is not None else Settings()


def _open(data_dir: Path | None) -> Store:
    try:
        return Store.open(_settings(data_dir))
    except EphemeraError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None


def _fail(exc: EphemeraError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc.message}")
    return typer.Exit(1)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__slots__"):
        return {k: _jsonable(getattr(obj, k)) for k in obj.__slots__}
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if isinstance(obj, list):
        return [_jsonable(x) for x in obj]
    return obj


def _write_secret(path: Path, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: DataDir = None,
) -> None:
    """Run the HTTP API on the configured backends (SQLite + a local directory by default)."""
    import uvicorn

    from ephemera.http import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from ephemera.scheduler import CleanupScheduler
    from ephemera.worker import Worker

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = _open(data_dir)
    closed, deleted = store.recover()
    if closed or deleted:
        err.print(f"recovered: finished closing {closed} sessions, deleting {deleted} artifacts")
    if not store.has_admin_key():
        key = store.create_admin_key("default")
        key_file = settings.data_dir / ADMIN_KEY_FILE
        key_file.unlink(missing_ok=True)
        _write_secret(key_file, key)
        err.print(f"Created admin key 'default' (shown once; also saved to {key_file}):")
        print(key, flush=True)
    scheduler = CleanupScheduler(store) if settings.scheduled_cleanup else None
    if scheduler is not None:
        scheduler.start()
    workers = Worker(store, concurrency=settings.workers) if settings.workers else None
    if workers is not None:
        workers.start()
    try:
        uvicorn.run(
            create_app(store),
            host=host,
            port=port,
            loop="uvloop" if os.name != "nt" else "asyncio",
            http="httptools",
            log_level="info",
            timeout_graceful_shutdown=10,
        )
    finally:
        if workers is not None:
            workers.stop()
        if scheduler is not None:
            scheduler.stop()
        store.close()


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks run at once")] = 1,
    name: Annotated[str | None, typer.Option(help="Worker name [default: host:pid:random]")] = None,
    poll_interval: Annotated[
        float, typer.Option(min=0.01, help="Seconds between looks at an empty queue")
    ] = 0.5,
    data_dir: DataDir = None,
) -> None:
    """Run tasks from the queue on this machine until interrupted (as many at once as wanted)."""
    import signal
    import threading

    from ephemera.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    store = _open(data_dir)
    runner = Worker(store, concurrency=concurrency, name=name, poll_interval_s=poll_interval)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner.start()
    try:
        stop.wait()
    finally:
        runner.stop()
        store.close()


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Bring the database schema up to date."""
    from ephemera.catalog import Catalog

    settings = _settings(data_dir)
    catalog = Catalog(settings.resolved_database_url())
    try:
        before, head = catalog.revisions()
        catalog.migrate()
    except EphemeraError as exc:
        raise _fail(exc) from None
    finally:
        catalog.dispose()
    out.print(f"schema at {head}" + (" (was up to date)" if before == head else f" (was {before})"))


@sessions_app.command("list")
def sessions_list(
    data_dir: DataDir = None,
    as_json: AsJson = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    cursor: Annotated[str | None, typer.Option(help="Start after this session ID")] = None,
) -> None:
    """Every session with its state, activity, artifact count and bytes."""
    with _open(data_dir) as store:
        page = store.list_sessions(cursor, limit)
    if as_json:
        print(json.dumps({"items": _jsonable(page.items), "next_cursor": page.next_cursor}))
        return
    table = Table("id", "label", "state", "last activity", "expires", "artifacts", "bytes")
    for s in page.items:
        table.add_row(
            s.id,
            s.label or "",
            s.state.value,
            s.last_activity_at.isoformat(timespec="seconds"),
            s.expires_at.isoformat(timespec="seconds") if s.expires_at else "never",
            str(s.artifact_count),
            str(s.total_bytes),
        )
    out.print(table)
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}")


@sessions_app.command("show")
def sessions_show(session_id: str, data_dir: DataDir = None) -> None:
    """One session, with its artifacts."""
    with _open(data_dir) as store:
        try:
            session = store.get_session(session_id)
            artifacts = store.list_artifacts(session_id, limit=1000).items
        except EphemeraError as exc:
            raise _fail(exc) from None
    print(json.dumps({"session": _jsonable(session), "artifacts": _jsonable(artifacts)}, indent=2))


@sessions_app.command("close")
def sessions_close(
    session_id: str,
    data_dir: DataDir = None,
    force: Annotated[bool, typer.Option(help="Close even while leased")] = False,
) -> None:
    """Close a session now: its bytes and records are removed."""
    with _open(data_dir) as store:
        try:
            report = store.close_session(session_id, force=force)
        except EphemeraError as exc:
            raise _fail(exc) from None
        store.audit(ACTOR, "session.close", session_id, {"force": force})
    print(json.dumps(_jsonable(report)))


def _key_commands(group: typer.Typer, role: str) -> None:
    """create, list and revoke for one kind of key: admin keys and worker keys alike."""

    @group.command("create")
    def create(name: str, data_dir: DataDir = None) -> None:
        """Create a key; the key alone is printed on standard output, once."""
        with _open(data_dir) as store:
            try:
                key = store.create_key(name, role)
            except EphemeraError as exc:
                raise _fail(exc) from None
            store.audit(ACTOR, f"{role}-key.create", name)
        print(key)

    @group.command("list")
    def list_keys(data_dir: DataDir = None, as_json: AsJson = False) -> None:
        """Key names (the keys themselves are stored only as hashes)."""
        with _open(data_dir) as store:
            keys = store.list_keys(role)
        if as_json:
            print(json.dumps(_jsonable(keys)))
            return
        table = Table("name", "created")
        for k in keys:
            table.add_row(k.name, k.created_at.isoformat(timespec="seconds"))
        out.print(table)

    @group.command("revoke")
    def revoke(name: str, data_dir: DataDir = None) -> None:
        """Revoke a key: it stops working at once."""
        with _open(data_dir) as store:
            try:
                store.revoke_key(name, role)
            except EphemeraError as exc:
                raise _fail(exc) from None
            store.audit(ACTOR, f"{role}-key.revoke", name)
        err.print(f"revoked {name}")


_key_commands(keys_app, "admin")
_key_commands(worker_keys_app, "worker")


@app.command()
def cleanup(
    operation: Annotated[
        str,
        typer.Argument(
            help="expired, idle-sessions, old-results, orphaned, quota, all, or session/ID"
        ),
    ],
    data_dir: DataDir = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, delete nothing")] = False,
    hours: Annotated[float | None, typer.Option(help="Idle threshold override")] = None,
    days: Annotated[float | None, typer.Option(help="Result retention override")] = None,
    purge_missing: Annotated[
        bool, typer.Option("--purge-missing", help="orphaned: drop records whose bytes are lost")
    ] = False,
    details: Annotated[bool, typer.Option("--details", help="List every item")] = False,
    as_json: AsJson = False,
) -> None:
    """Run a cleanup operation now (also fit for cron); it is recorded in the audit log."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    session_id = None
    if operation.startswith("session/"):
        operation, session_id = "session", operation.split("/", 1)[1]
    with (
        _open(data_dir) as store,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed} examined"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=as_json or not err.is_terminal,
        ) as progress,
    ):
        tasks: dict[str, Any] = {}

        def advance(op: str, done: int) -> None:
            if op not in tasks:
                tasks[op] = progress.add_task(op, total=None)
            progress.advance(tasks[op], done)

        try:
            report = store.cleanup(
                operation,
                dry_run=dry_run,
                hours_old=hours,
                days_old=days,
                session_id=session_id,
                purge_missing=purge_missing,
                details=details,
                actor=ACTOR,
                progress=advance,
            )
        except EphemeraError as exc:
            raise _fail(exc) from None
    if as_json:
        print(json.dumps(report.as_dict(details)))
        return
    table = Table(
        "operation",
        "deleted",
        "bytes",
        "protected",
        "errors",
        "seconds",
        title=f"cleanup {operation}" + (" (dry run)" if dry_run else ""),
    )
    for part in [*report.reports, report]:
        table.add_row(
            part.operation,
            str(part.deleted_count),
            f"{part.deleted_size_bytes} ({part.deleted_size_mb} MB)",
            str(part.skipped_protected),
            str(len(part.errors)),
            f"{part.duration_s:.3f}",
        )
    out.print(table)
    if details:
        for item in report.items or [i for r in report.reports for i in r.items]:
            out.print(f"{item.rule:20} {item.kind:9} {item.size:>12} {item.id}")
    for error in report.errors[:20]:
        err.print(f"[yellow]{error['target']}[/yellow]: {error['error']}")
    if report.errors:
        raise typer.Exit(1)


@app.command()
def stats(
    data_dir: DataDir = None,
    orphaned: Annotated[bool, typer.Option("--orphaned", help="Also walk for orphans")] = False,
    as_json: AsJson = False,
) -> None:
    """Storage by state and class, what each cleanup would delete now, leases, last runs."""
    with _open(data_dir) as store:
        numbers = store.cleanup_stats(include_orphaned=orphaned)
    if as_json:
        print(json.dumps(_jsonable(numbers), default=str))
        return
    out.print(f"sessions: {numbers['sessions']}   leased: {numbers['leased']}")
    out.print(f"tasks: {numbers['tasks']}")
    out.print(f"usage: {numbers['usage']}")
    stored = Table("storage class", "state", "artifacts", "bytes", title="stored")
    for row in numbers["artifacts"]:
        stored.add_row(row["storage_class"], row["state"], str(row["count"]), str(row["bytes"]))
    out.print(stored)
    cleanable = Table("operation", "would delete", "bytes", "protected", title="cleanable now")
    for op, n in numbers["cleanable"].items():
        cleanable.add_row(op, str(n["count"]), str(n["bytes"]), str(n["skipped_protected"]))
    out.print(cleanable)
    runs = Table("operation", "at", "actor", "deleted", "bytes", "errors", title="last runs")
    for op, run in numbers["last_runs"].items():
        result = run["result"]
        runs.add_row(
            op,
            run["at"].isoformat(timespec="seconds"),
            run["actor"],
            str(result.get("deleted_count")),
            str(result.get("deleted_size_bytes")),
            str(result.get("errors")),
        )
    out.print(runs)


@app.command()
def audit(
    data_dir: DataDir = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    cursor: Annotated[int | None, typer.Option(help="Entries older than this ID")] = None,
    action: Annotated[str | None, typer.Option(help="Only actions starting with this")] = None,
    as_json: AsJson = False,
) -> None:
    """The audit log, newest first."""
    with _open(data_dir) as store:
        page = store.audit_log(before=cursor, limit=limit, action=action)
    if as_json:
        print(json.dumps({"items": _jsonable(page.items), "next_cursor": page.next_cursor}))
        return
    table = Table("id", "at", "actor", "action", "target", "params", "result")
    for e in page.items:
        table.add_row(
            str(e.id),
            e.at.isoformat(timespec="seconds"),
            e.actor,
            e.action,
            e.target or "",
            json.dumps(e.params),
            json.dumps({k: v for k, v in e.result.items() if k != "first_errors"}),
        )
    out.print(table)
    if page.next_cursor:
        out.print(f"older: --cursor {page.next_cursor}")


def main() -> None:
    app()
