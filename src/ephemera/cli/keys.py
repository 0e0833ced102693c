"""``ephemera admin-key``, ``worker-key`` and ``client-key``: create, list and revoke keys."""

from __future__ import annotations

import json
import re
from typing import Annotated

import typer
from rich.table import Table

from ephemera.cli import render
from ephemera.cli.app import client_keys_app, keys_app, worker_keys_app
from ephemera.cli.common import (
    ACTOR,
    AsJson,
    BlobUrl,
    DatabaseUrl,
    DataDir,
    err,
    jsonable,
    out,
    store_for,
)
from ephemera.models import KeyRole

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_RE = re.compile(r"([1-9][0-9]{0,8})([smhdw])")


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` in seconds."""
    match = DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(
            "a number and a unit: s, m, h, d or w (e.g. 30d, 12h)", param_hint="--expires-in"
        )
    return int(match[1]) * UNITS[match[2]]


ExpiresIn = Annotated[
    str | None,
    typer.Option(
        "--expires-in",
        help="The key stops working after this long (e.g. 30d, 12h) [default: never]",
    ),
]


def _key_commands(group: typer.Typer, role: KeyRole) -> None:
    """create, list and revoke for one role of key."""

    @group.command("create")
    def create(
        name: str,
        expires_in: ExpiresIn = None,
        data_dir: DataDir = None,
        database_url: DatabaseUrl = None,
        blob_url: BlobUrl = None,
    ) -> None:
        """Create a key; the key alone is printed on standard output, once."""
        seconds = None if expires_in is None else parse_duration(expires_in)
        with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
            key = store.create_key(name, role, expires_in_s=seconds)
            store.audit(ACTOR, f"{role}-key.create", name, {"expires_in_s": seconds})
        print(key)

    @group.command("list")
    def list_keys(
        data_dir: DataDir = None,
        database_url: DatabaseUrl = None,
        blob_url: BlobUrl = None,
        as_json: AsJson = False,
    ) -> None:
        """Key names, roles and times (the keys themselves are stored only as hashes)."""
        with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
            keys = store.list_keys(role)
        if as_json:
            print(json.dumps(jsonable(keys)))
            return
        table = Table("name", "role", "created", "last used", "expires")
        for k in keys:
            table.add_row(
                k.name,
                k.role,
                render.instant(k.created_at),
                render.instant(k.last_used_at),
                render.instant(k.expires_at),
            )
        out.print(table)

    @group.command("revoke")
    def revoke(
        name: str,
        data_dir: DataDir = None,
        database_url: DatabaseUrl = None,
        blob_url: BlobUrl = None,
    ) -> None:
        """Revoke a key: it stops working at once."""
        with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
            store.revoke_key(name, role)
            store.audit(ACTOR, f"{role}-key.revoke", name)
        err.print(f"revoked {name}", markup=False)


_key_commands(keys_app, KeyRole.ADMIN)
_key_commands(worker_keys_app, KeyRole.WORKER)
_key_commands(client_keys_app, KeyRole.CLIENT)
