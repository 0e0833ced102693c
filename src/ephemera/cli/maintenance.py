"""Cleanup on demand, stats and the audit log."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ephemera.cli import render
from ephemera.cli.app import app
from ephemera.cli.common import (
    ACTOR,
    AsJson,
    BlobUrl,
    DatabaseUrl,
    DataDir,
    err,
    fail,
    jsonable,
    open_store,
    out,
    store_for,
)
from ephemera.errors import EphemeraError

if TYPE_CHECKING:
    from rich.progress import TaskID


@contextmanager
def _cleanup_progress(operation: str, enabled: bool) -> Iterator[Callable[[str, int], None]]:
    """A bar over the operations of ``all`` (their number is known: total and ETA), and a
    spinner with the count examined by the running one (no operation knows its total
    without a second pass over the store, which would double the cost of cleanup)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ephemera.cleanup.records import ALL_ORDER

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not enabled,
    ) as progress:
        overall = (
            progress.add_task("operations", total=len(ALL_ORDER)) if operation == "all" else None
        )
        current: dict[str, TaskID] = {}

        def advance(op: str, examined: int) -> None:
            if op not in current:
                for task in current.values():
                    progress.remove_task(task)
                if overall is not None and op in ALL_ORDER:
                    progress.update(overall, completed=ALL_ORDER.index(op))
                current.clear()
                current[op] = progress.add_task(f"{op}: examined", total=None)
            progress.advance(current[op], examined)

        yield advance
        if overall is not None:
            progress.update(overall, completed=len(ALL_ORDER))


@app.command()
def cleanup(
    operation: Annotated[
        str,
        typer.Argument(
            help="expired, idle-sessions, old-results, orphaned, quota, all, or session/ID"
        ),
    ],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
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
    session_id = None
    if operation.startswith("session/"):
        operation, session_id = "session", operation.split("/", 1)[1]
    with (
        open_store(data_dir, database_url=database_url, blob_url=blob_url) as store,
        _cleanup_progress(operation, not as_json and err.is_terminal) as advance,
    ):
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
            raise fail(exc) from None
    if as_json:
        print(json.dumps(report.as_dict(details)))
        return
    # A dry run deletes nothing: its columns say what a real run would do.
    deleted, freed = ("would delete", "would free") if dry_run else ("deleted", "freed")
    table = Table(
        "operation",
        deleted,
        freed,
        "protected",
        "errors",
        "seconds",
        title=f"cleanup {operation}" + (" (dry run)" if dry_run else ""),
    )
    for part in [*report.reports, report]:
        table.add_row(
            part.operation if part is not report or not report.reports else "total",
            str(part.deleted_count),
            render.size(part.deleted_size_bytes),
            str(part.skipped_protected),
            str(len(part.errors)),
            f"{part.duration_s:.3f}",
        )
    out.print(table)
    if details:
        items = Table("rule", "kind", "size", "id", title=deleted)
        for item in report.items or [i for r in report.reports for i in r.items]:
            items.add_row(item.rule, item.kind, render.size(item.size), item.id)
        out.print(items)
    for error in report.errors[:20]:
        err.print(f"[yellow]{escape(error['target'])}[/yellow]: {escape(error['error'])}")
    if report.errors:
        raise typer.Exit(1)


@app.command()
def stats(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    orphaned: Annotated[bool, typer.Option("--orphaned", help="Also walk for orphans")] = False,
    as_json: AsJson = False,
) -> None:
    """Storage by state and class, what each cleanup would delete now, leases, last runs."""
    with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
        numbers = store.cleanup_stats(include_orphaned=orphaned)
    if as_json:
        print(json.dumps(jsonable(numbers), default=str))
        return
    out.print(_counts("sessions", numbers["sessions"]))
    out.print(_counts("tasks", numbers["tasks"]))
    leased = Table("under a valid lease", "count", title="leased now")
    for what, n in numbers["leased"].items():
        leased.add_row(what.replace("_", " "), str(n))
    out.print(leased)
    usage = numbers["usage"]
    volume = Table("stored", "high-water mark", "low-water mark", title="usage")
    volume.add_row(
        render.size(usage["stored_bytes"]),
        render.size(usage["high_water_bytes"]),
        render.size(usage["low_water_bytes"]),
    )
    out.print(volume)
    flagged = numbers["integrity"]
    integrity = Table("corrupt", "missing", "never verified", title="integrity")
    integrity.add_row(
        str(flagged["corrupt"]), str(flagged["missing"]), str(flagged["never_verified"])
    )
    out.print(integrity)
    stored = Table("storage class", "state", "artifacts", "size", title="stored")
    for row in numbers["artifacts"]:
        stored.add_row(
            row["storage_class"], row["state"], str(row["count"]), render.size(row["bytes"])
        )
    out.print(stored)
    cleanable = Table("operation", "would delete", "would free", "protected", title="cleanable now")
    for op, n in numbers["cleanable"].items():
        cleanable.add_row(op, str(n["count"]), render.size(n["bytes"]), str(n["skipped_protected"]))
    out.print(cleanable)
    runs = Table("operation", "at", "actor", "run", "deleted", "freed", "errors", title="last runs")
    for op, run in numbers["last_runs"].items():
        result = run["result"]
        runs.add_row(
            op,
            render.instant(run["at"]),
            run["actor"],
            "dry" if run["params"].get("dry_run") else "real",
            str(result.get("deleted_count", "-")),
            render.size(result.get("deleted_size_bytes")),
            str(result.get("errors", "-")),
        )
    out.print(runs)


def _counts(what: str, counts: dict[str, int]) -> Table:
    table = Table("state", what, title=what)
    for state, n in sorted(counts.items()):
        table.add_row(state, str(n))
    if not counts:
        table.add_row("-", "0")
    return table


@app.command()
def audit(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    cursor: Annotated[int | None, typer.Option(help="Entries older than this ID")] = None,
    action: Annotated[str | None, typer.Option(help="Only actions starting with this")] = None,
    as_json: AsJson = False,
) -> None:
    """The audit log, newest first."""
    with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
        page = store.audit_log(before=cursor, limit=limit, action=action)
    if as_json:
        print(json.dumps({"items": jsonable(page.items), "next_cursor": page.next_cursor}))
        return
    table = Table("id", "at", "actor", "action", "target", "params", "result")
    for e in page.items:
        table.add_row(
            str(e.id),
            render.instant(e.at),
            e.actor,
            e.action,
            e.target or "",
            json.dumps(e.params),
            json.dumps({k: v for k, v in e.result.items() if k != "first_errors"}),
        )
    out.print(table)
    if page.next_cursor:
        out.print(f"older: --cursor {page.next_cursor}")
