"""Verification on demand: re-hash stored bytes, name what is missing or corrupt."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer
from rich.markup import escape

from ephemera.cli import render
from ephemera.cli.app import app
from ephemera.cli.common import (
    ACTOR,
    EXIT_USAGE,
    AsJson,
    BlobUrl,
    DatabaseUrl,
    DataDir,
    err,
    fail,
    open_store,
    out,
)
from ephemera.errors import EphemeraError, InvalidInput
from ephemera.integrity import Repair, VerifyProgress


@app.command()
def verify(
    data_dir: DataDir = None,
    session: Annotated[
        str | None, typer.Option("--session", help="Only this session's artifacts")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Read at most this many MB/s [default: no limit]")
    ] = None,
    repair: Annotated[
        Repair | None,
        typer.Option(
            "--repair",
            help="flag: keep missing/corrupt artifacts flagged (downloads refuse them; the "
            "default); drop: delete them through the delete path (leased ones stay flagged)",
        ),
    ] = None,
    as_json: AsJson = False,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
) -> None:
    """Re-hash every stored artifact (on the configured database and blob store); exit 1
    naming each one missing or corrupt. Recorded in the audit log."""
    # Each problem is printed below; the library's log warnings would only repeat them.
    logging.getLogger("ephemera.integrity").addHandler(logging.NullHandler())
    logging.getLogger("ephemera.integrity").propagate = False
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with (
        open_store(data_dir, database_url=database_url, blob_url=blob_url) as store,
        Progress(
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=as_json or not err.is_terminal,
        ) as bar,
    ):
        task = bar.add_task("verify", total=None)

        def advance(p: VerifyProgress) -> None:
            bar.update(task, completed=p.done_bytes, total=p.total_bytes)

        try:
            report = store.verify(
                session_id=session,
                rate_mb_s=rate,
                repair=repair or Repair.FLAG,
                actor=ACTOR,
                progress=advance,
            )
        except InvalidInput as exc:
            raise fail(exc, EXIT_USAGE) from None
        except EphemeraError as exc:
            raise fail(exc) from None
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        out.print(
            f"verified {report.checked_count} artifacts, {render.size(report.checked_bytes)} in "
            f"{report.duration_s:.1f} s: {report.missing_count} missing, "
            f"{report.corrupt_count} corrupt, {report.restored_count} restored, "
            f"{report.repaired_count} dropped, {report.skipped_protected} kept (leased)",
            soft_wrap=True,
        )
        for p in report.problems:
            action = "dropped" if p.dropped else "flagged"
            # Names are the clients': shown as text, never as markup.
            err.print(
                f"[red]{p.integrity.value}[/red] {p.session_id}/{p.artifact_id} "
                f"({escape(p.name)}): {escape(p.error)}; {action}",
                highlight=False,
                soft_wrap=True,
            )
        listed = len(report.problems)
        if report.missing_count + report.corrupt_count > listed:
            err.print(f"... and {report.missing_count + report.corrupt_count - listed} more")
        for e in report.errors[:20]:
            err.print(f"[yellow]unreadable[/yellow] {e['artifact_id']}: {escape(e['error'])}")
    if not report.ok:
        raise typer.Exit(1)
