"""``ephemera sessions``: list, show and close sessions."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ephemera.cli.app import sessions_app
from ephemera.cli.common import ACTOR, AsJson, DataDir, fail, jsonable, open_store, out
from ephemera.errors import EphemeraError


@sessions_app.command("list")
def sessions_list(
    data_dir: DataDir = None,
    as_json: AsJson = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    cursor: Annotated[str | None, typer.Option(help="Start after this session ID")] = None,
) -> None:
    """Every session with its state, activity, artifact count and bytes."""
    with open_store(data_dir) as store:
        page = store.list_sessions(cursor, limit)
    if as_json:
        print(json.dumps({"items": jsonable(page.items), "next_cursor": page.next_cursor}))
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
    with open_store(data_dir) as store:
        try:
            session = store.get_session(session_id)
            artifacts = store.list_artifacts(session_id, limit=1000).items
        except EphemeraError as exc:
            raise fail(exc) from None
    print(json.dumps({"session": jsonable(session), "artifacts": jsonable(artifacts)}, indent=2))


@sessions_app.command("close")
def sessions_close(
    session_id: str,
    data_dir: DataDir = None,
    force: Annotated[bool, typer.Option(help="Close even while leased")] = False,
) -> None:
    """Close a session now: its bytes and records are removed."""
    with open_store(data_dir) as store:
        try:
            report = store.close_session(session_id, force=force)
        except EphemeraError as exc:
            raise fail(exc) from None
        store.audit(ACTOR, "session.close", session_id, {"force": force})
    print(json.dumps(jsonable(report)))
