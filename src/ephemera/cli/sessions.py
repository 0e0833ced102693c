"""``ephemera sessions``: list, show and close sessions."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ephemera.cli import render
from ephemera.cli.app import sessions_app
from ephemera.cli.common import (
    ACTOR,
    AsJson,
    BlobUrl,
    DatabaseUrl,
    DataDir,
    jsonable,
    out,
    store_for,
)


@sessions_app.command("list")
def sessions_list(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    as_json: AsJson = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    cursor: Annotated[str | None, typer.Option(help="Start after this session ID")] = None,
) -> None:
    """Every session with its state, activity, artifact count and bytes."""
    with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
        page = store.list_sessions_with_leases(cursor, limit)
        now = store.clock.now()
    if as_json:
        items = [
            {**jsonable(s), "state": render.session_state(s, now, leases), "leases": leases}
            for s, leases in page.items
        ]
        print(json.dumps({"items": items, "next_cursor": page.next_cursor}))
        return
    table = Table("id", "label", "state", "last activity", "expires", "artifacts", "size")
    for s, leases in page.items:
        table.add_row(
            s.id,
            s.label or "",
            render.session_state(s, now, leases),
            render.instant(s.last_activity_at),
            render.instant(s.expires_at),
            str(s.artifact_count),
            render.size(s.total_bytes),
        )
    out.print(table)
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}")


@sessions_app.command("show")
def sessions_show(
    session_id: str,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    as_json: AsJson = False,
) -> None:
    """One session, with its artifacts."""
    with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
        session, leases, artifacts = store.inspect_session(session_id)
        state = render.session_state(session, store.clock.now(), leases)
    if as_json:
        shown = {**jsonable(session), "state": state, "leases": leases}
        print(json.dumps({"session": shown, "artifacts": jsonable(artifacts)}, indent=2))
        return
    about = Table.grid(padding=(0, 2))
    about.add_column(style="bold")
    about.add_column()
    for name, value in (
        ("session", session.id),
        ("label", session.label or ""),
        ("state", state),
        ("created", render.instant(session.created_at)),
        ("last activity", render.instant(session.last_activity_at)),
        ("expires", render.instant(session.expires_at)),
        ("idle timeout", _seconds(session.idle_timeout_s)),
        ("max age", _seconds(session.max_age_s)),
        ("leases", str(leases)),
        ("artifacts", f"{session.artifact_count} ({render.size(session.total_bytes)})"),
        ("metadata", json.dumps(session.metadata) if session.metadata else ""),
    ):
        about.add_row(name, value)
    out.print(about)
    table = Table("id", "name", "kind", "class", "state", "size", "created", "expires")
    for a in artifacts:
        table.add_row(
            a.id,
            a.name,
            a.kind,
            a.storage_class.value,
            a.state.value,
            render.size(a.size),
            render.instant(a.created_at),
            render.instant(a.expires_at),
        )
    out.print(table)


@sessions_app.command("close")
def sessions_close(
    session_id: str,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    force: Annotated[bool, typer.Option("--force", help="Close even while leased")] = False,
) -> None:
    """Close a session now: its bytes and records are removed."""
    with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
        report = store.close_session(session_id, force=force)
        store.audit(ACTOR, "session.close", session_id, {"force": force})
    print(json.dumps(jsonable(report)))


def _seconds(value: int | None) -> str:
    return "never" if value is None else f"{value} s"
