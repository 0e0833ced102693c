"""Cleanup on demand, stats and the audit log."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ephemera.cli.app import app
from ephemera.cli.common import ACTOR, AsJson, DataDir, err, fail, jsonable, open_store, out
from ephemera.errors import EphemeraError


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
        open_store(data_dir) as store,
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
            raise fail(exc) from None
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
    with open_store(data_dir) as store:
        numbers = store.cleanup_stats(include_orphaned=orphaned)
    if as_json:
        print(json.dumps(jsonable(numbers), default=str))
        return
    out.print(f"sessions: {numbers['sessions']}   leased: {numbers['leased']}")
    out.print(f"tasks: {numbers['tasks']}")
    out.print(f"usage: {numbers['usage']}")
    flagged = numbers["integrity"]
    out.print(
        f"integrity: {flagged['corrupt']} corrupt, {flagged['missing']} missing, "
        f"{flagged['never_verified']} never verified"
    )
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
    with open_store(data_dir) as store:
        page = store.audit_log(before=cursor, limit=limit, action=action)
    if as_json:
        print(json.dumps({"items": jsonable(page.items), "next_cursor": page.next_cursor}))
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
